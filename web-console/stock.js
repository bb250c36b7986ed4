// The pharmacy's live stock board (`#/stock`): one pharmacy's medications, each with its batches
// (batch number, expiry, location, on hand, reserved, available, status), the medications at or
// below their reorder point, the open stock alerts, and, for pharmacists and admins, the batch
// actions (adjust with a reason, recall, remove), reorder points, alert acknowledgement and the
// CSV upload that receives many batches at once. Doctors see the board read-only.
//
// Live: the page watches `tenant/{slug}/stock/{pharmacy}`. Its snapshot is the board; every
// `batch.*` event carries the batch's numbers after the change, so one row is updated in place;
// `stock.alert` and `stock.alert_acknowledged` add and remove alerts. A bulk upload announces many
// `batch.received` at once: new rows are drawn together, once the burst settles. An event naming a
// batch (or a medication) this page does not know asks the hub for a fresh snapshot, once per burst.
// Upload progress (`upload.progress`) arrives on the uploader's own topic `tenant/{slug}/user/{id}`.
//
// Expiry follows the hub's rule: a batch is expired from its expiry date on (judged on the UTC
// date, as the hub judges it), and expired or recalled units are never available.
//
// For automated tests: the board root (`#stock-board`) carries `data-seq` (the last seq applied)
// and `data-pharmacy-id`; every batch row `data-batch-id`, `data-on-hand`, `data-reserved`,
// `data-available` and `data-status`; every medication group `data-medication-id` and
// `data-low-stock`; every alert `data-alert-id`. The upload input is `#stock-upload`, its button
// `#stock-upload-submit`, and the outcome `#stock-upload-result` (`data-outcome` "applied",
// "partial", "rejected" or "error"; rejected rows carry `data-line`). All kept current.
//
// Pieces the dispensing page shares (the pharmacy picker, the action dialog, expiry and count
// wording) are exported from here.

import { request, freshAccessToken, refresh, ApiError } from './api.js';
import { h, replaceChildren, formatTime, shortId, timeElement } from './dom.js';
import { staleNotice, subscriptionProblem } from './appointments.js';

/** Roles the hub lets change stock (adjust, recall, remove, upload, reorder points, alerts). */
export const STOCK_KEEPERS = ['pharmacist', 'admin'];
/** The pharmacy last chosen, shared by the stock and dispensing pages. */
const PHARMACY_KEY = 'medhub.pharmacy';
const FILTER_KEY = 'medhub.stock.show';
/** The hub's limit for one upload. */
const MAX_UPLOAD_BYTES = 16 * 1024 * 1024;
/** An unknown batch or medication in a burst asks for one fresh snapshot after this long. */
const RESYNC_DELAY_MS = 400;
/** New rows in a burst are drawn together after this long. */
const REDRAW_DELAY_MS = 60;

export const BATCH_STATUS_LABELS = { active: 'Active', recalled: 'Recalled', removed: 'Removed' };
const ADJUST_REASONS = {
  count: 'Stock count', damage: 'Damaged', theft: 'Theft or loss', expired: 'Expired (written off)', correction: 'Correction',
};
const ALERT_KINDS = { low_stock: 'Low stock', expiry: 'Expiry', recall: 'Recall' };
const SHOW_OPTIONS = {
  all: 'All medications',
  attention: 'Needs attention',
  low: 'Low stock only',
};

// ---------------------------------------------------------------------------------------------
// Shared wording

const countFormat = new Intl.NumberFormat();
const expiryFormat = new Intl.DateTimeFormat(undefined, { day: '2-digit', month: 'short', year: 'numeric', timeZone: 'UTC' });

/** "1,250" */
export function formatCount(value) {
  return countFormat.format(Number(value) || 0);
}

/** "1 capsule", "21 capsules" (every unit in the formulary takes an s). */
export function plural(count, unit) {
  return `${formatCount(count)} ${unit}${Number(count) === 1 ? '' : 's'}`;
}

/** Today's date as the hub judges expiry (UTC), "2026-11-25". */
export function todayUtc() {
  return new Date().toISOString().slice(0, 10);
}

function dayNumber(date) {
  const [year, month, day] = String(date).split('-').map(Number);
  return Date.UTC(year, month - 1, day) / 86_400_000;
}

/** Whole days from today (UTC) to `date` (YYYY-MM-DD); 0 on the date itself, negative after. */
export function daysUntil(date, today = todayUtc()) {
  return Math.round(dayNumber(date) - dayNumber(today));
}

/**
 * How close a batch is to its expiry date, as a level (expired, critical ≤ 7 days, soon ≤ 30,
 * watch ≤ 90, ok) and words ("Expires in 12 days"), so the colour is never the only sign.
 */
export function expiryInfo(date, today = todayUtc()) {
  const days = daysUntil(date, today);
  if (days <= 0) return { level: 'expired', days, text: days === 0 ? 'Expired today' : `Expired ${plural(-days, 'day')} ago` };
  const level = days <= 7 ? 'critical' : days <= 30 ? 'soon' : days <= 90 ? 'watch' : 'ok';
  if (days === 1) return { level, days, text: 'Expires tomorrow' };
  if (days <= 90) return { level, days, text: `Expires in ${days} days` };
  const months = Math.round(days / 30.44);
  return { level, days, text: months < 24 ? `Expires in ${months} months` : `Expires in ${Math.floor(days / 365.25)} years` };
}

/** "1 batch", "3 batches": a count with the right form of a word. */
export function countOf(count, singular, pluralForm = `${singular}s`) {
  return `${formatCount(count)} ${Number(count) === 1 ? singular : pluralForm}`;
}

/** "15 Dec 2026" for a date (YYYY-MM-DD). */
export function formatExpiryDate(date) {
  const parsed = new Date(`${date}T00:00:00Z`);
  return Number.isNaN(parsed.getTime()) ? String(date) : expiryFormat.format(parsed);
}

/** Units that can still be reserved or dispensed: none once expired, recalled or removed. */
export function batchAvailable(batch, today = todayUtc()) {
  if (batch.status !== 'active' || daysUntil(batch.expiry_date, today) <= 0) return 0;
  return Math.max(0, batch.on_hand - batch.reserved);
}

const shortDateFormat = new Intl.DateTimeFormat(undefined, { day: 'numeric', month: 'short' });

/** "14:05" today, "24 Nov 14:05" on another day (local time); the full time is in the title. */
export function shortWhen(iso) {
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return '';
  return date.toDateString() === new Date().toDateString() ? formatTime(iso) : `${shortDateFormat.format(date)} ${formatTime(iso)}`;
}

/** A medication's full name, or a short id while it is not known. */
export function medicationName(medication, id) {
  return medication ? medication.name : `Medication ${shortId(id)}`;
}

/** "amoxicillin · capsule · J01CA04" */
function medicationMeta(medication) {
  return [medication.generic_name, medication.form, medication.atc_code].filter(Boolean).join(' · ');
}

/** Orders ISO 8601 instants exactly (to the microsecond), which `Date.parse` cannot. */
export function instantKey(iso) {
  const match = /^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(\d+))?Z$/.exec(iso || '');
  if (match) return `${match[1]}.${(match[2] || '').padEnd(9, '0')}`;
  const parsed = new Date(iso || 0);
  return Number.isNaN(parsed.getTime()) ? '' : parsed.toISOString().replace('Z', '000000');
}

// ---------------------------------------------------------------------------------------------
// The pharmacy picker

/**
 * A `<select>` of the tenant's facilities (every facility keeps a pharmacy), remembering the
 * choice across the stock and dispensing pages. `load()` resolves to the facilities and calls
 * `onChoose(facility)` with the remembered or first one; changes call it again.
 */
export function createPharmacyPicker(id, onChoose) {
  let facilities = [];
  const select = h('select', {
    id, disabled: true,
    onchange: () => {
      const chosen = facilities.find((f) => f.id === select.value);
      if (!chosen) return;
      sessionStorage.setItem(PHARMACY_KEY, chosen.id);
      onChoose(chosen);
    },
  }, h('option', { value: '' }, 'Loading pharmacies…'));
  const element = h('div', { class: 'field field--inline' }, h('label', { for: id }, 'Pharmacy'), select);
  return {
    element,
    select,
    async load() {
      const answer = await request('GET', '/api/facilities');
      facilities = [...(answer || [])].sort((a, b) => a.name.localeCompare(b.name));
      replaceChildren(select, facilities.map((f) => h('option', { value: f.id }, f.name)));
      select.disabled = facilities.length === 0;
      if (facilities.length === 0) return facilities;
      const remembered = sessionStorage.getItem(PHARMACY_KEY);
      const chosen = facilities.find((f) => f.id === remembered) || facilities[0];
      select.value = chosen.id;
      onChoose(chosen);
      return facilities;
    },
    set disabled(value) {
      select.disabled = value || facilities.length === 0;
    },
  };
}

// ---------------------------------------------------------------------------------------------
// The action dialog

/**
 * One modal form for an action with a few fields: `open({title, summary, fields, submitLabel,
 * busyLabel, failed, danger, dismissLabel, read, submit, returnFocus, key, describe})`. `read()`
 * returns the values or throws `{message, input}`; `submit(values)` does the work and may return
 * nodes to show in the dialog afterwards (then it stays open with a Close button). `describe()`
 * redraws the summary; `refresh(key)` calls it when the thing the dialog is about changed.
 */
export function createActionDialog(prefix) {
  let current = null;
  let busy = false;
  const title = h('h2', { id: `${prefix}-title` });
  const summary = h('div', { class: 'action-dialog__summary' });
  const body = h('div', { class: 'action-dialog__body' });
  const error = h('div', { class: 'form-error', role: 'alert' });
  const outcome = h('div', { class: 'action-dialog__outcome', role: 'status' });
  const submit = h('button', { type: 'submit', class: 'button button--primary', id: `${prefix}-submit` });
  const dismiss = h('button', { type: 'button', class: 'button', onclick: () => element.close() }, 'Cancel');
  const form = h('form', { class: 'action-dialog__form', novalidate: true, onsubmit: onSubmit },
    title, summary, body, error, outcome, h('div', { class: 'dialog-actions' }, dismiss, submit));
  const element = h('dialog', { class: 'action-dialog', id: `${prefix}-dialog`, 'aria-labelledby': `${prefix}-title` }, form);

  async function onSubmit(event) {
    event.preventDefault();
    if (busy || !current || current.finished) return;
    error.replaceChildren();
    for (const input of body.querySelectorAll('[aria-invalid]')) input.removeAttribute('aria-invalid');
    let values;
    try {
      values = current.read ? current.read() : {};
    } catch (problem) {
      error.textContent = problem.message;
      if (problem.input) {
        problem.input.setAttribute('aria-invalid', 'true');
        problem.input.focus();
      }
      return;
    }
    const target = current;
    busy = true;
    submit.disabled = true;
    submit.textContent = target.busyLabel || 'Saving…';
    try {
      const shown = await target.submit(values);
      if (current !== target) return;
      if (shown) {
        target.finished = true;
        // Warnings about what the action would do are history now.
        for (const warning of summary.querySelectorAll('.action-dialog__warning')) warning.hidden = true;
        replaceChildren(outcome, shown);
        body.hidden = true;
        submit.hidden = true;
        dismiss.textContent = 'Close';
        dismiss.focus();
      } else {
        element.close();
      }
    } catch (failure) {
      if (current !== target) return;
      error.replaceChildren(h('strong', {}, `${target.failed || 'Not saved.'} `), failure.detail || failure.message);
      const input = failure.field ? body.querySelector(`[name="${failure.field}"]`) : null;
      if (input) {
        input.setAttribute('aria-invalid', 'true');
        input.focus();
      }
    } finally {
      busy = false;
      submit.disabled = false;
      submit.textContent = target.submitLabel;
    }
  }

  element.addEventListener('close', () => {
    const target = current;
    current = null;
    if (target && target.returnFocus) target.returnFocus(target.finished);
  });

  return {
    element,
    open(options) {
      current = { ...options, finished: false };
      title.textContent = options.title;
      replaceChildren(summary, options.describe ? options.describe() : options.summary || '');
      replaceChildren(body, options.fields || []);
      body.hidden = false;
      error.replaceChildren();
      outcome.replaceChildren();
      submit.hidden = false;
      submit.disabled = false;
      submit.textContent = options.submitLabel;
      submit.className = `button ${options.danger ? 'button--danger' : 'button--primary'}`;
      dismiss.textContent = options.dismissLabel || 'Cancel';
      element.showModal();
      (body.querySelector('input, select, textarea') || submit).focus();
    },
    /** The thing with `key` changed: redraw the open dialog's summary. */
    refresh(key) {
      if (current && element.open && current.key === key && current.describe && !current.finished) {
        replaceChildren(summary, current.describe());
      }
    },
    close() {
      if (element.open) element.close();
    },
  };
}

/** A labelled field for the action dialog. */
export function dialogField(id, label, input, hint) {
  if (hint) input.setAttribute('aria-describedby', `${id}-hint`);
  return h('div', { class: 'field' }, h('label', { for: id }, label), input, hint ? h('p', { class: 'hint', id: `${id}-hint` }, hint) : null);
}

function invalidInput(message, input) {
  const problem = new Error(message);
  problem.input = input;
  return problem;
}

/** A reason of 1 to 300 characters, as the hub wants for recalls, removals and cancellations. */
export function readReason(input, what) {
  const text = input.value.trim();
  if (!text) throw invalidInput(`Give a reason for ${what}.`, input);
  if (text.length > 300) throw invalidInput('The reason is at most 300 characters.', input);
  return text;
}

// ---------------------------------------------------------------------------------------------
// The upload (raw fetch: the body is the CSV file itself)

/**
 * `POST /api/inventory/upload?pharmacy_id=` with `file` as `text/csv`. Resolves to the hub's
 * answer; rejects with an ApiError. Uploading again is safe (batches already received are
 * skipped), so a 401 is retried once after a token refresh.
 */
async function postUpload(pharmacyId, file) {
  const url = `/api/inventory/upload?pharmacy_id=${encodeURIComponent(pharmacyId)}`;
  const attempt = async () => {
    const { token } = await freshAccessToken(30_000);
    try {
      return await fetch(url, {
        method: 'POST',
        headers: { Accept: 'application/json', 'Content-Type': 'text/csv', Authorization: `Bearer ${token}` },
        body: file,
        cache: 'no-store',
        credentials: 'same-origin',
      });
    } catch {
      throw new ApiError(0, {
        error: 'network',
        detail: 'The hub cannot be reached, so the file may or may not have been applied. Uploading it again is safe: batches already received are skipped.',
      });
    }
  };
  let response = await attempt();
  if (response.status === 401) {
    await refresh();
    response = await attempt();
  }
  const text = await response.text();
  let parsed = null;
  try {
    parsed = text ? JSON.parse(text) : null;
  } catch {
    // Not JSON (a proxy's page): said in words below.
  }
  if (response.ok && parsed) return parsed;
  if (parsed && parsed.error) throw new ApiError(response.status, parsed);
  if (response.status === 413) throw new ApiError(413, { error: 'too_large', detail: 'The file is larger than the hub accepts (16 MB); split it into smaller files.' });
  throw new ApiError(response.status, { error: `http_${response.status}`, detail: `The hub answered ${response.status}; try again shortly.` });
}

function formatBytes(bytes) {
  if (bytes < 1024) return `${bytes} bytes`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
}

// ---------------------------------------------------------------------------------------------
// The page

export function mountStock(container, { user, live, announce }) {
  const slug = user.tenant.slug;
  const canKeep = STOCK_KEEPERS.includes(user.role);
  let mounted = true;
  let pharmacy = null;
  let topic = null;
  let unsubscribe = null;
  let loaded = false;
  /** batch id → {id, medication_id, batch_number, expiry_date, on_hand, reserved, status, location, updated_at} */
  const batches = new Map();
  /** medication id → medication info */
  const medications = new Map();
  /** medication id → reorder point */
  const reorderPoints = new Map();
  /** alert id → open alert */
  const alerts = new Map();
  /** batch id → its row; medication id → its row group */
  const rows = new Map();
  const groups = new Map();
  let filterText = '';
  let filterShow = SHOW_OPTIONS[sessionStorage.getItem(FILTER_KEY)] ? sessionStorage.getItem(FILTER_KEY) : 'all';
  let redrawTimer = null;
  /** Medication groups to redraw at the next flush; `redrawAll` when the set of groups changes. */
  const dirtyGroups = new Set();
  let redrawAll = false;
  let resyncTimer = null;
  let uploading = null;

  const picker = createPharmacyPicker('stock-pharmacy', choosePharmacy);
  const subtitle = h('p', { class: 'muted' }, canKeep
    ? 'Live stock of one pharmacy: batches, expiry, reservations and alerts.'
    : 'Live stock of one pharmacy (read-only).');
  const updated = h('p', { class: 'board__updated muted', 'aria-live': 'off' });
  const problem = h('div', { class: 'board__problem', role: 'alert' });
  const stale = staleNotice(live, 'the stock board');
  const summary = h('div', { class: 'stock-summary' });
  const search = h('input', {
    type: 'search', id: 'stock-search', placeholder: 'Medication or batch number', autocomplete: 'off', spellcheck: 'false',
    oninput: () => { filterText = search.value.trim().toLowerCase(); applyFilters(); },
  });
  const showSelect = h('select', {
    id: 'stock-show',
    onchange: () => { filterShow = showSelect.value; sessionStorage.setItem(FILTER_KEY, filterShow); applyFilters(); },
  }, Object.entries(SHOW_OPTIONS).map(([value, label]) => h('option', { value }, label)));
  showSelect.value = filterShow;
  const filterNote = h('p', { class: 'placeholder stock__filtered', hidden: true });
  const boardBody = h('div', { class: 'stock-table-wrap', 'aria-busy': 'true' }, h('p', { class: 'placeholder' }, 'Loading the stock board…'));
  const alertList = h('ul', { class: 'alert-list', 'aria-labelledby': 'stock-alerts-title' });
  const alertCount = h('span', { class: 'alert-count' });
  const alertsCard = h('section', { class: 'card stock-side__card', 'aria-labelledby': 'stock-alerts-title' },
    h('h2', { id: 'stock-alerts-title', tabindex: '-1' }, 'Open alerts ', alertCount),
    alertList);
  const upload = canKeep ? createUploadCard() : null;

  const root = h('section', { class: 'stock', id: 'stock-board', 'aria-labelledby': 'page-title', dataset: { seq: '', pharmacyId: '' } },
    h('header', { class: 'page-header' },
      h('div', {}, h('h1', { id: 'page-title', tabindex: '-1' }, 'Stock'), subtitle),
      updated),
    problem,
    stale.element,
    h('div', { class: 'stock__toolbar' },
      picker.element,
      h('div', { class: 'field field--inline' }, h('label', { for: 'stock-search' }, 'Find'), search),
      h('div', { class: 'field field--inline' }, h('label', { for: 'stock-show' }, 'Show'), showSelect)),
    summary,
    h('div', { class: ['stock-side', upload ? null : 'stock-side--single'], 'aria-label': 'Alerts and stock intake', role: 'region' },
      alertsCard, upload ? upload.element : null),
    h('div', { class: 'stock__main card' }, boardBody, filterNote));
  replaceChildren(container, root);

  const dialog = createActionDialog('stock-action');
  root.append(dialog.element);

  // Upload progress comes on the uploader's own topic; watched for the page's life, so nothing
  // is missed between pressing Upload and the first report.
  const stopUserFeed = canKeep ? live.subscribe(`tenant/${slug}/user/${user.id}`, onUserMessage) : null;
  // Expiry wording moves with the calendar.
  const dayTimer = setInterval(() => { if (loaded) redrawNow(); }, 10 * 60_000);

  picker.load().then((facilities) => {
    if (!mounted) return;
    if (facilities.length === 0) showBodyMessage('No pharmacies yet.', 'An admin adds facilities; each keeps its own pharmacy stock.');
  }).catch((failure) => {
    if (mounted) showBodyMessage('The list of pharmacies could not be read.', failure.detail || failure.message, true);
  });

  function showBodyMessage(title, text, isError = false) {
    boardBody.setAttribute('aria-busy', 'false');
    replaceChildren(boardBody, h('div', { class: isError ? 'notice notice--error' : 'empty-state' },
      h('strong', {}, title), text ? h('p', {}, text) : null));
  }

  function choosePharmacy(facility) {
    if (pharmacy && pharmacy.id === facility.id) return;
    pharmacy = facility;
    root.dataset.pharmacyId = facility.id;
    root.dataset.seq = '';
    subtitle.textContent = `${facility.name} · ${canKeep ? 'live stock, batches, expiry and alerts' : 'live stock (read-only)'}`;
    loaded = false;
    clear();
    problem.replaceChildren();
    boardBody.setAttribute('aria-busy', 'true');
    replaceChildren(boardBody, h('p', { class: 'placeholder' }, `Loading the stock of ${facility.name}…`));
    replaceChildren(alertList);
    alertCount.textContent = '';
    summary.replaceChildren();
    if (upload) upload.pharmacyChanged();
    if (unsubscribe) unsubscribe();
    topic = `tenant/${slug}/stock/${facility.id}`;
    unsubscribe = live.subscribe(topic, onMessage);
  }

  function clear() {
    batches.clear();
    medications.clear();
    reorderPoints.clear();
    alerts.clear();
    rows.clear();
    groups.clear();
    clearTimeout(redrawTimer);
    clearTimeout(resyncTimer);
    redrawTimer = resyncTimer = null;
    dirtyGroups.clear();
    redrawAll = false;
  }

  // ---- Live --------------------------------------------------------------------------------

  function onMessage(message) {
    if (message.topic !== topic) return;
    if (message.type === 'snapshot') {
      loadBoard(message.data);
      setSeq(message.seq);
      return;
    }
    if (message.type === 'error') {
      replaceChildren(problem, subscriptionProblem(message, 'this pharmacy\'s stock'));
      if (!loaded) showBodyMessage('The stock board is not available.', message.detail || '', true);
      return;
    }
    if (!loaded) return; // the snapshot on its way includes it
    const data = message.data || {};
    switch (message.type) {
      case 'batch.received':
        receiveBatch(data.batch, data.at);
        break;
      case 'batch.adjusted':
      case 'batch.reserved':
      case 'batch.released':
      case 'batch.dispensed':
      case 'batch.removed':
        changeBatch(data);
        break;
      case 'batch.recalled':
        changeBatch(data);
        // The hub raises a recall alert with the recall but announces it with no event of its
        // own: a fresh snapshot brings it onto the alert list.
        resyncSoon();
        break;
      case 'stock.alert':
        addAlert({ ...data, status: 'open', raised_at: message.ts });
        break;
      case 'stock.alert_acknowledged':
        removeAlert(data.id);
        break;
      default:
        // Prescriptions move stock through the batch events above; their own events are the
        // dispensing queue's. Anything else is newer than this console: a snapshot shows it.
        if (!message.type.startsWith('prescription.')) {
          console.info(`medhub stock: unknown event ${message.type}; asking for a fresh snapshot`);
          resyncSoon();
        }
    }
    setSeq(message.seq, message.ts);
  }

  function setSeq(value, ts) {
    root.dataset.seq = String(value);
    const at = ts || new Date().toISOString();
    replaceChildren(updated, ts ? 'Last change ' : 'Loaded ', timeElement(at, formatTime(at)));
  }

  /** Asks the hub for a fresh snapshot, once for a whole burst of events. */
  function resyncSoon() {
    if (resyncTimer) return;
    resyncTimer = setTimeout(() => {
      resyncTimer = null;
      if (mounted && topic) live.resync(topic);
    }, RESYNC_DELAY_MS);
  }

  function loadBoard(board) {
    clear();
    problem.replaceChildren();
    for (const row of board.batches || []) {
      medications.set(row.medication.id, row.medication);
      batches.set(row.id, {
        id: row.id, medication_id: row.medication.id, batch_number: row.batch_number, expiry_date: row.expiry_date,
        on_hand: row.on_hand, reserved: row.reserved, status: row.status, location: row.location, updated_at: row.updated_at,
      });
    }
    for (const [medicationId, point] of Object.entries(board.reorder_points || {})) reorderPoints.set(medicationId, point);
    for (const alert of board.alerts || []) if (alert.status === 'open') alerts.set(alert.id, alert);
    loaded = true;
    redrawNow();
    renderAlerts();
  }

  function receiveBatch(batch, at) {
    if (!batch || !batch.id) return;
    if (!medications.has(batch.medication_id)) {
      // A medication new to this pharmacy: its name comes with the next snapshot.
      resyncSoon();
      return;
    }
    const reserved = Object.values(batch.reservations || {}).reduce((sum, n) => sum + Number(n), 0);
    batches.set(batch.id, {
      id: batch.id, medication_id: batch.medication_id, batch_number: batch.batch_number, expiry_date: batch.expiry_date,
      on_hand: batch.on_hand, reserved, status: batch.status, location: batch.location, updated_at: at || batch.updated_at,
    });
    redrawSoon(batch.medication_id);
  }

  function changeBatch(change) {
    const known = batches.get(change.batch_id);
    if (!known) {
      resyncSoon();
      return;
    }
    putBatch({
      ...known,
      batch_number: change.batch_number ?? known.batch_number,
      expiry_date: change.expiry_date ?? known.expiry_date,
      on_hand: change.on_hand,
      reserved: change.reserved,
      status: change.status,
      updated_at: change.at || known.updated_at,
    });
  }

  /** Puts a newer state of a known batch into the model and onto its row. */
  function putBatch(batch) {
    batches.set(batch.id, batch);
    const row = rows.get(batch.id);
    if (!row) {
      redrawSoon(batch.medication_id);
      return;
    }
    fillBatchRow(row, batch);
    highlight(row);
    fillGroupHeader(batch.medication_id);
    renderSummary();
    applyFilters(batch.medication_id);
    dialog.refresh(batch.id);
  }

  /**
   * Restarts a row's highlight. The class comes back two frames later rather than after a forced
   * layout, which on a board of thousands of rows would stall every live update.
   */
  function highlight(row) {
    row.classList.remove('batch--changed');
    requestAnimationFrame(() => requestAnimationFrame(() => row.classList.add('batch--changed')));
  }

  /** Applies what the hub answered to this page's own change, unless an event was newer. */
  function applyOwnAnswer(answer) {
    const known = answer && batches.get(answer.id);
    if (!known || instantKey(answer.updated_at) <= instantKey(known.updated_at)) return;
    putBatch({ ...known, on_hand: answer.on_hand, reserved: answer.reserved, status: answer.status, updated_at: answer.updated_at });
  }

  function addAlert(alert) {
    if (!alert.id) return;
    const isNew = !alerts.has(alert.id);
    alerts.set(alert.id, alert);
    renderAlerts();
    renderSummary();
    if (isNew) announce(`${ALERT_KINDS[alert.kind] || 'Stock'} alert: ${medicationName(medications.get(alert.medication_id), alert.medication_id)}.`);
  }

  function removeAlert(id) {
    if (!alerts.delete(id)) return;
    renderAlerts();
    renderSummary();
  }

  function onUserMessage(message) {
    if (message.type === 'upload.progress' && upload) upload.progress(message.data);
  }

  // ---- Rendering the board -----------------------------------------------------------------

  /** Redraws a medication's group (or, without one, the whole board) once a burst settles. */
  function redrawSoon(medicationId) {
    if (medicationId && groups.has(medicationId)) dirtyGroups.add(medicationId);
    else redrawAll = true;
    if (redrawTimer) return;
    redrawTimer = setTimeout(flushRedraw, REDRAW_DELAY_MS);
  }

  function flushRedraw() {
    redrawTimer = null;
    if (!loaded) return;
    if (redrawAll) {
      redrawNow();
      return;
    }
    const focus = rememberFocus();
    for (const medicationId of dirtyGroups) {
      const old = groups.get(medicationId);
      if (!old) continue;
      for (const row of old.tbody.querySelectorAll('tr[data-batch-id]')) rows.delete(row.dataset.batchId);
      old.tbody.replaceWith(renderGroup(medicationId, old.columns));
    }
    dirtyGroups.clear();
    renderSummary();
    applyFilters();
    restoreFocus(focus);
  }

  /** Where keyboard focus is on the board, to put it back after a redraw. */
  function rememberFocus() {
    const focus = document.activeElement?.closest?.('[data-batch-id], [data-medication-id]');
    return focus && boardBody.contains(focus)
      ? { batch: focus.dataset.batchId, medication: focus.dataset.medicationId, action: document.activeElement.dataset.action }
      : null;
  }

  function restoreFocus(focusKey) {
    if (!focusKey || boardBody.contains(document.activeElement)) return;
    const selector = focusKey.batch ? `[data-batch-id="${focusKey.batch}"]` : `[data-medication-id="${focusKey.medication}"]`;
    const scope = boardBody.querySelector(selector);
    const again = scope && (focusKey.action ? scope.querySelector(`[data-action="${focusKey.action}"]`) : scope);
    if (again && !again.disabled) again.focus();
  }

  function medicationOrder(a, b) {
    const ma = medications.get(a);
    const mb = medications.get(b);
    return (ma?.generic_name || '').localeCompare(mb?.generic_name || '') || (ma?.name || '').localeCompare(mb?.name || '') || (a < b ? -1 : 1);
  }

  function batchOrder(a, b) {
    return a.expiry_date.localeCompare(b.expiry_date) || a.batch_number.localeCompare(b.batch_number) || (a.id < b.id ? -1 : 1);
  }

  function batchesOf(medicationId) {
    return [...batches.values()].filter((b) => b.medication_id === medicationId).sort(batchOrder);
  }

  function redrawNow() {
    clearTimeout(redrawTimer);
    redrawTimer = null;
    dirtyGroups.clear();
    redrawAll = false;
    if (!loaded) return;
    const focusKey = rememberFocus();
    rows.clear();
    groups.clear();
    boardBody.setAttribute('aria-busy', 'false');
    const byMedication = new Map();
    for (const batch of batches.values()) {
      if (!byMedication.has(batch.medication_id)) byMedication.set(batch.medication_id, []);
      byMedication.get(batch.medication_id).push(batch);
    }
    if (byMedication.size === 0) {
      replaceChildren(boardBody, h('div', { class: 'empty-state' },
        h('strong', {}, `No stock at ${pharmacy.name} yet.`),
        h('p', {}, canKeep ? 'Receive batches by uploading a CSV file.' : 'Pharmacists receive stock here.')));
    } else {
      const columns = canKeep ? 8 : 7;
      replaceChildren(boardBody, h('table', { class: 'stock-table' },
        h('caption', { class: 'sr-only' }, `Stock at ${pharmacy.name}, by medication, earliest expiry first`),
        h('thead', {}, h('tr', {},
          h('th', { scope: 'col' }, 'Batch'),
          h('th', { scope: 'col' }, 'Expiry'),
          h('th', { scope: 'col' }, 'Location'),
          h('th', { scope: 'col', class: 'num' }, 'On hand'),
          h('th', { scope: 'col', class: 'num' }, 'Reserved'),
          h('th', { scope: 'col', class: 'num' }, 'Available'),
          h('th', { scope: 'col' }, 'Status'),
          canKeep ? h('th', { scope: 'col' }, h('span', { class: 'sr-only' }, 'Actions')) : null)),
        [...byMedication.keys()].sort(medicationOrder).map((id) => renderGroup(id, columns))));
    }
    renderSummary();
    applyFilters();
    restoreFocus(focusKey);
  }

  function renderGroup(medicationId, columns) {
    const header = h('tr', { class: 'med-group__header' });
    const tbody = h('tbody', { class: 'med-group', dataset: { medicationId } }, header);
    groups.set(medicationId, { tbody, header, columns });
    fillGroupHeader(medicationId);
    for (const batch of batchesOf(medicationId)) {
      const row = h('tr', { class: 'batch', dataset: { batchId: batch.id } });
      rows.set(batch.id, row);
      fillBatchRow(row, batch);
      tbody.append(row);
    }
    return tbody;
  }

  /**
   * Each medication's totals (one pass over the batches), or one medication's; "low" when a
   * reorder point is set and available units are at or below it (the hub's rule for its alert).
   */
  function totalsBy(onlyMedicationId = null) {
    const today = todayUtc();
    const all = new Map();
    for (const batch of batches.values()) {
      if (onlyMedicationId && batch.medication_id !== onlyMedicationId) continue;
      if (!all.has(batch.medication_id)) all.set(batch.medication_id, { onHand: 0, reserved: 0, available: 0, batches: 0 });
      const totals = all.get(batch.medication_id);
      totals.batches += 1;
      totals.onHand += batch.status === 'removed' ? 0 : batch.on_hand;
      totals.reserved += batch.reserved;
      totals.available += batchAvailable(batch, today);
    }
    if (onlyMedicationId && !all.has(onlyMedicationId)) all.set(onlyMedicationId, { onHand: 0, reserved: 0, available: 0, batches: 0 });
    for (const [medicationId, totals] of all) {
      totals.reorderPoint = reorderPoints.has(medicationId) ? reorderPoints.get(medicationId) : null;
      totals.low = totals.reorderPoint !== null && totals.available <= totals.reorderPoint;
    }
    return all;
  }

  function totalsOf(medicationId) {
    return totalsBy(medicationId).get(medicationId);
  }

  function fillGroupHeader(medicationId) {
    const group = groups.get(medicationId);
    if (!group) return;
    const medication = medications.get(medicationId);
    const totals = totalsOf(medicationId);
    group.tbody.dataset.lowStock = String(totals.low);
    group.tbody.dataset.available = String(totals.available);
    group.tbody.classList.toggle('med-group--low', totals.low);
    const unit = medication?.unit || 'unit';
    replaceChildren(group.header,
      h('th', { scope: 'rowgroup', colspan: '3', class: 'med-head' },
        h('span', { class: 'med-head__name' }, medicationName(medication, medicationId)),
        h('span', { class: 'med-head__meta' }, [medication ? medicationMeta(medication) : null, countOf(totals.batches, 'batch', 'batches')].filter(Boolean).join(' · '))),
      h('td', { class: 'num med-head__total' }, h('span', { class: 'sr-only' }, 'On hand in total: '), formatCount(totals.onHand)),
      h('td', { class: 'num med-head__total' }, h('span', { class: 'sr-only' }, 'Reserved in total: '), formatCount(totals.reserved)),
      h('td', { class: 'num med-head__total med-head__available' }, h('span', { class: 'sr-only' }, 'Available in total: '), formatCount(totals.available)),
      h('td', { class: 'med-head__reorder' },
        totals.low
          ? h('span', { class: 'flag flag--low' }, h('span', { class: 'flag__mark', 'aria-hidden': 'true' }), 'Low stock')
          : null,
        h('span', { class: 'med-head__point' }, totals.reorderPoint === null
          ? 'No reorder point'
          : `Reorder at ${plural(totals.reorderPoint, unit)}`)),
      canKeep ? h('td', { class: 'row-actions' }, h('button', {
        type: 'button', class: 'button button--small button--quiet', dataset: { action: 'reorder-point' },
        'aria-label': `Set the reorder point of ${medicationName(medication, medicationId)}`,
        onclick: () => openReorderPoint(medicationId),
      }, 'Reorder point')) : null);
  }

  function fillBatchRow(row, batch) {
    const available = batchAvailable(batch);
    const expiry = expiryInfo(batch.expiry_date);
    row.dataset.onHand = String(batch.on_hand);
    row.dataset.reserved = String(batch.reserved);
    row.dataset.available = String(available);
    row.dataset.status = batch.status;
    row.dataset.expiry = expiry.level;
    row.classList.toggle('batch--inactive', batch.status !== 'active');
    const medication = medications.get(batch.medication_id);
    const about = `batch ${batch.batch_number} of ${medicationName(medication, batch.medication_id)}`;
    replaceChildren(row,
      h('td', { class: 'batch__number' }, batch.batch_number),
      h('td', { class: 'batch__expiry' },
        h('time', { datetime: batch.expiry_date }, formatExpiryDate(batch.expiry_date)),
        h('span', { class: ['expiry', `expiry--${expiry.level}`] }, h('span', { class: 'expiry__mark', 'aria-hidden': 'true' }), expiry.text)),
      h('td', { class: 'batch__location' }, batch.location || h('span', { class: 'muted' }, '—')),
      h('td', { class: 'num' }, formatCount(batch.on_hand)),
      h('td', { class: 'num' }, formatCount(batch.reserved)),
      h('td', { class: 'num batch__available' }, formatCount(available)),
      h('td', {}, batchStatusBadge(batch.status)),
      canKeep ? h('td', { class: 'row-actions' }, batch.status === 'removed' ? null : [
        h('button', {
          type: 'button', class: 'button button--small', dataset: { action: 'adjust' },
          'aria-label': `Adjust the count of ${about}`, onclick: () => openAdjust(batch.id),
        }, 'Adjust'),
        batch.status === 'active' ? h('button', {
          type: 'button', class: 'button button--small button--danger-quiet', dataset: { action: 'recall' },
          'aria-label': `Recall ${about}`, onclick: () => openRecall(batch.id),
        }, 'Recall') : null,
        h('button', {
          type: 'button', class: 'button button--small button--danger-quiet', dataset: { action: 'remove' },
          'aria-label': `Remove ${about} from stock`, onclick: () => openRemove(batch.id),
        }, 'Remove'),
      ]) : null);
  }

  function batchStatusBadge(status) {
    return h('span', { class: ['status', `status--batch-${status}`] },
      h('span', { class: 'status__mark', 'aria-hidden': 'true' }), BATCH_STATUS_LABELS[status] || status);
  }

  function needsAttention(batch) {
    if (batch.status === 'recalled') return true;
    if (batch.status !== 'active' || batch.on_hand <= 0) return false;
    return expiryInfo(batch.expiry_date).days <= 30;
  }

  /** Shows the rows the filter lets through: of every group, or (after a change) of one. */
  function applyFilters(onlyMedicationId = null) {
    const filtering = Boolean(filterText) || filterShow !== 'all';
    for (const [medicationId, group] of groups) {
      if (onlyMedicationId && medicationId !== onlyMedicationId) continue;
      if (!filtering && !group.filtered) continue; // nothing hidden, nothing to show again
      group.filtered = filtering;
      const medication = medications.get(medicationId);
      const nameMatches = !filterText || [medication?.name, medication?.generic_name, medication?.atc_code]
        .some((text) => text && text.toLowerCase().includes(filterText));
      const low = group.tbody.dataset.lowStock === 'true';
      let visibleRows = 0;
      for (const row of group.tbody.querySelectorAll('tr.batch')) {
        const batch = batches.get(row.dataset.batchId);
        let visible = Boolean(batch);
        if (visible && filterText && !nameMatches) visible = batch.batch_number.toLowerCase().includes(filterText);
        if (visible && filterShow === 'low') visible = low;
        if (visible && filterShow === 'attention') visible = low || needsAttention(batch);
        if (row.hidden === visible) row.hidden = !visible;
        if (visible) visibleRows += 1;
      }
      if (group.tbody.hidden !== (visibleRows === 0)) group.tbody.hidden = visibleRows === 0;
    }
    const shown = [...groups.values()].some((group) => !group.tbody.hidden);
    filterNote.hidden = !filtering || shown || groups.size === 0;
    filterNote.textContent = filterNote.hidden ? '' : 'Nothing matches the filter.';
  }

  function renderSummary() {
    if (!loaded) return;
    const totals = totalsBy();
    const medicationIds = new Set(totals.keys());
    let low = 0;
    for (const entry of totals.values()) if (entry.low) low += 1;
    const live = [...batches.values()].filter((b) => b.status === 'active' && b.on_hand > 0);
    const expiring = live.filter((b) => expiryInfo(b.expiry_date).days <= 30).length;
    const recalled = [...batches.values()].filter((b) => b.status === 'recalled' && b.on_hand > 0).length;
    const tile = (kind, value, label, hint) => h('li', { class: ['stock-total', `stock-total--${kind}`], dataset: { total: kind } },
      h('span', { class: 'stock-total__value' }, formatCount(value)),
      h('span', { class: 'stock-total__label' }, label),
      hint ? h('span', { class: 'stock-total__hint' }, hint) : null);
    replaceChildren(summary, h('ul', { class: 'stock-totals', 'aria-label': `Stock at ${pharmacy.name} in numbers` },
      tile('medications', medicationIds.size, medicationIds.size === 1 ? 'Medication' : 'Medications', `${formatCount(live.length)} batches in stock`),
      tile('low', low, 'Low stock', 'at or below reorder point'),
      tile('expiring', expiring, 'Expiring soon', 'batches within 30 days or expired'),
      tile('alerts', alerts.size, alerts.size === 1 ? 'Open alert' : 'Open alerts', recalled ? `${recalled} recalled batch${recalled === 1 ? '' : 'es'} on the shelf` : null)));
  }

  // ---- Alerts ------------------------------------------------------------------------------

  function alertDetail(alert) {
    const detail = alert.detail || {};
    const medication = medications.get(alert.medication_id);
    const unit = medication?.unit || 'unit';
    switch (alert.kind) {
      case 'low_stock':
        return `${plural(detail.available ?? 0, unit)} available; reorder point ${formatCount(detail.reorder_point ?? 0)}.`;
      case 'expiry': {
        const batch = alert.batch_id ? batches.get(alert.batch_id) : null;
        const date = detail.expiry_date || batch?.expiry_date;
        const when = date ? expiryInfo(date).text.toLowerCase() : 'expires soon';
        return `Batch ${detail.batch_number || batch?.batch_number || shortId(alert.batch_id)} ${when}${date ? ` (${formatExpiryDate(date)})` : ''}`
          + `${detail.on_hand !== undefined ? `; ${plural(detail.on_hand, unit)} on hand when raised` : ''}.`
          + `${alert.horizon_days ? ` ${alert.horizon_days}-day warning.` : ''}`;
      }
      case 'recall':
        return `Batch ${detail.batch_number || shortId(alert.batch_id)} recalled${detail.reason ? `: ${detail.reason}` : ''}.`;
      default:
        return typeof detail === 'object' ? Object.entries(detail).map(([k, v]) => `${k}: ${v}`).join(', ') : String(detail);
    }
  }

  function renderAlerts() {
    const ordered = [...alerts.values()].sort((a, b) => instantKey(b.raised_at).localeCompare(instantKey(a.raised_at)));
    alertCount.textContent = ordered.length ? `(${ordered.length})` : '';
    const focusedId = document.activeElement?.closest?.('[data-alert-id]')?.dataset.alertId;
    if (ordered.length === 0) {
      replaceChildren(alertList, h('li', { class: 'alert-list__empty muted' }, 'No open alerts.'));
      return;
    }
    replaceChildren(alertList, ordered.map((alert) => {
      const medication = medications.get(alert.medication_id);
      return h('li', { class: ['alert-item', `alert-item--${alert.kind}`], dataset: { alertId: alert.id, kind: alert.kind } },
        h('div', { class: 'alert-item__head' },
          h('span', { class: ['alert-kind', `alert-kind--${alert.kind}`] },
            h('span', { class: 'alert-kind__mark', 'aria-hidden': 'true' }), ALERT_KINDS[alert.kind] || alert.kind),
          alert.raised_at ? h('span', { class: 'alert-item__time muted' }, timeElement(alert.raised_at, shortWhen(alert.raised_at))) : null),
        h('p', { class: 'alert-item__what' }, medicationName(medication, alert.medication_id)),
        h('p', { class: 'alert-item__detail' }, alertDetail(alert)),
        canKeep ? h('button', {
          type: 'button', class: 'button button--small', dataset: { action: 'acknowledge' },
          'aria-label': `Acknowledge the ${(ALERT_KINDS[alert.kind] || '').toLowerCase()} alert for ${medicationName(medication, alert.medication_id)}`,
          onclick: (event) => acknowledge(alert.id, event.currentTarget),
        }, 'Acknowledge') : null);
    }));
    if (focusedId) alertList.querySelector(`[data-alert-id="${focusedId}"] button`)?.focus();
  }

  async function acknowledge(id, button) {
    button.disabled = true;
    button.textContent = 'Acknowledging…';
    const alert = alerts.get(id);
    const next = button.closest('li')?.nextElementSibling?.querySelector('button') || button.closest('li')?.previousElementSibling?.querySelector('button');
    try {
      await request('POST', `/api/stock-alerts/${id}/acknowledge`);
    } catch (failure) {
      if (failure.status !== 404) {
        button.disabled = false;
        button.textContent = 'Acknowledge';
        replaceChildren(problem, h('div', { class: 'notice notice--error' }, h('strong', {}, 'Not acknowledged. '), failure.detail || failure.message));
        return;
      }
      // 404: someone acknowledged it already.
    }
    if (!mounted) return;
    removeAlert(id);
    if (alert) announce(`${ALERT_KINDS[alert.kind] || 'Stock'} alert for ${medicationName(medications.get(alert.medication_id), alert.medication_id)} acknowledged.`);
    (next && document.contains(next) ? next : document.getElementById('stock-alerts-title'))?.focus?.();
  }

  // ---- Batch actions -----------------------------------------------------------------------

  function returnTo(batchId, action) {
    return () => {
      const row = rows.get(batchId);
      const again = row && row.querySelector(`[data-action="${action}"]`);
      (again || row?.querySelector('button') || document.getElementById('page-title'))?.focus();
    };
  }

  function batchSummary(batchId) {
    const batch = batches.get(batchId);
    if (!batch) return 'This batch is no longer on the board.';
    const medication = medications.get(batch.medication_id);
    const unit = medication?.unit || 'unit';
    return [
      h('p', {}, h('strong', {}, medicationName(medication, batch.medication_id)), ` · batch ${batch.batch_number}`),
      h('p', { class: 'muted' }, `${formatExpiryDate(batch.expiry_date)} (${expiryInfo(batch.expiry_date).text.toLowerCase()}) · ${batch.location || 'no location'}`),
      h('p', {}, `${plural(batch.on_hand, unit)} on hand, ${formatCount(batch.reserved)} reserved for prescriptions, `,
        h('strong', {}, `${formatCount(Math.max(0, batch.on_hand - batch.reserved))} not reserved`), '.'),
    ];
  }

  function openAdjust(batchId) {
    const batch = batches.get(batchId);
    if (!batch) return;
    const delta = h('input', { type: 'number', id: 'adjust-delta', name: 'delta', step: '1', inputmode: 'numeric', required: true });
    const reason = h('select', { id: 'adjust-reason', name: 'reason', required: true },
      h('option', { value: '' }, 'Choose a reason'),
      Object.entries(ADJUST_REASONS).map(([value, label]) => h('option', { value }, label)));
    const note = h('input', { type: 'text', id: 'adjust-note', name: 'note', maxlength: '300', autocomplete: 'off' });
    dialog.open({
      key: batchId,
      title: 'Adjust the count',
      describe: () => batchSummary(batchId),
      fields: [
        dialogField('adjust-delta', 'Change in units', delta, 'Positive adds units (a count found more); negative takes them away. Reserved units cannot be taken away.'),
        dialogField('adjust-reason', 'Reason', reason),
        dialogField('adjust-note', 'Note (optional)', note, 'e.g. "shelf count 25 Nov", "box crushed in delivery".'),
      ],
      submitLabel: 'Save adjustment',
      busyLabel: 'Saving…',
      failed: 'Not adjusted.',
      read: () => {
        const text = delta.value.trim();
        const value = Number(text);
        if (!/^[+-]?\d+$/.test(text) || value === 0) throw invalidInput('Enter the change as a whole number of units other than 0, e.g. -3 or 12.', delta);
        const current = batches.get(batchId);
        if (current && value < 0 && -value > current.on_hand - current.reserved) {
          throw invalidInput(`Only ${formatCount(current.on_hand - current.reserved)} units are not reserved; at most that many can be taken away.`, delta);
        }
        if (current && value > 0 && current.status !== 'active') throw invalidInput(`The batch is ${current.status}; units cannot be added.`, delta);
        if (!reason.value) throw invalidInput('Choose the reason for the adjustment.', reason);
        return { delta: value, reason: reason.value, note: note.value.trim() || undefined };
      },
      submit: async (values) => {
        const answer = await request('PUT', `/api/inventory/${batchId}`, { body: values });
        applyOwnAnswer(answer);
        announce(`Batch ${batch.batch_number} adjusted by ${values.delta > 0 ? '+' : ''}${values.delta}; ${formatCount(answer.on_hand)} on hand.`);
        return null;
      },
      returnFocus: returnTo(batchId, 'adjust'),
    });
  }

  function openRecall(batchId) {
    const batch = batches.get(batchId);
    if (!batch) return;
    const reason = h('textarea', { id: 'recall-reason', name: 'reason', rows: '3', maxlength: '300', required: true });
    dialog.open({
      key: batchId,
      title: 'Recall this batch',
      describe: () => [batchSummary(batchId),
        h('p', { class: 'notice notice--warning action-dialog__warning' },
          'No unit of a recalled batch can be reserved or dispensed again. Prescriptions holding units of it are released; they are served from other batches when dispensed.')],
      fields: [dialogField('recall-reason', 'Reason', reason, 'e.g. the manufacturer\'s recall notice. Up to 300 characters.')],
      submitLabel: 'Recall batch',
      busyLabel: 'Recalling…',
      failed: 'Not recalled.',
      danger: true,
      read: () => ({ reason: readReason(reason, 'the recall') }),
      submit: async (values) => {
        const answer = await request('POST', `/api/inventory/${batchId}/recall`, { body: values });
        if (answer?.batch) applyOwnAnswer(answer.batch);
        const affected = answer?.affected_prescriptions || [];
        announce(`Batch ${batch.batch_number} recalled; ${affected.length} prescription${affected.length === 1 ? '' : 's'} affected.`);
        return recallOutcome(batch, affected);
      },
      returnFocus: returnTo(batchId, 'adjust'),
    });
  }

  function recallOutcome(batch, affected) {
    const medication = medications.get(batch.medication_id);
    const unit = medication?.unit || 'unit';
    if (affected.length === 0) {
      return h('div', { class: 'notice notice--success', dataset: { affected: '0' } },
        h('strong', {}, `Batch ${batch.batch_number} is recalled.`), h('p', {}, 'No open prescription held units of it.'));
    }
    const released = affected.reduce((sum, a) => sum + Number(a.released_units || 0), 0);
    return h('div', { class: 'recall-outcome', dataset: { affected: String(affected.length) } },
      h('div', { class: 'notice notice--warning' },
        h('strong', {}, `Batch ${batch.batch_number} is recalled.`),
        h('p', {}, `${affected.length} open prescription${affected.length === 1 ? '' : 's'} held ${plural(released, unit)} of it; `
          + 'those units are released, and the prescriptions will draw on other batches when dispensed.')),
      h('div', { class: 'table-scroll' }, h('table', { class: 'data-table' },
        h('caption', { class: 'sr-only' }, 'Prescriptions affected by the recall'),
        h('thead', {}, h('tr', {},
          h('th', { scope: 'col' }, 'Prescription'), h('th', { scope: 'col' }, 'Patient'),
          h('th', { scope: 'col', class: 'num' }, 'Quantity'), h('th', { scope: 'col', class: 'num' }, 'Released'),
          h('th', { scope: 'col' }, 'Status'))),
        h('tbody', {}, affected.map(({ prescription, released_units: units }) => h('tr', { dataset: { affectedPrescriptionId: prescription.id } },
          h('td', { title: prescription.id }, shortId(prescription.id)),
          h('td', { title: prescription.patient_id }, `Patient ${shortId(prescription.patient_id)}`),
          h('td', { class: 'num' }, formatCount(prescription.quantity)),
          h('td', { class: 'num' }, formatCount(units)),
          h('td', {}, String(prescription.status || '').replace(/_/g, ' '))))))),
      user.role === 'pharmacist' ? h('p', { class: 'hint' }, 'They stay in the ', h('a', { href: '#/dispense' }, 'dispensing queue'), '.') : null);
  }

  function openRemove(batchId) {
    const batch = batches.get(batchId);
    if (!batch) return;
    const reason = h('textarea', { id: 'remove-reason', name: 'reason', rows: '3', maxlength: '300', required: true });
    dialog.open({
      key: batchId,
      title: 'Remove this batch from stock',
      describe: () => {
        const current = batches.get(batchId);
        return [batchSummary(batchId),
          h('p', { class: 'notice notice--warning action-dialog__warning' },
            current && current.reserved > 0
              ? `${formatCount(current.reserved)} units are reserved for prescriptions; the hub refuses a removal until they are dispensed or released (a recall releases them).`
              : 'Everything left of the batch leaves stock (disposal, return to the supplier). This cannot be undone.')];
      },
      fields: [dialogField('remove-reason', 'Reason', reason, 'e.g. "expired, sent for disposal". Up to 300 characters.')],
      submitLabel: 'Remove batch',
      busyLabel: 'Removing…',
      failed: 'Not removed.',
      danger: true,
      read: () => ({ reason: readReason(reason, 'the removal') }),
      submit: async (values) => {
        const answer = await request('DELETE', `/api/inventory/${batchId}`, { body: values });
        applyOwnAnswer(answer);
        announce(`Batch ${batch.batch_number} removed from stock.`);
        return null;
      },
      returnFocus: () => {
        const row = rows.get(batchId);
        (row?.querySelector('button') || document.getElementById('page-title'))?.focus();
      },
    });
  }

  function openReorderPoint(medicationId) {
    const medication = medications.get(medicationId);
    const current = reorderPoints.get(medicationId);
    const point = h('input', { type: 'number', id: 'reorder-point', name: 'reorder_point', min: '0', max: '1000000', step: '1', inputmode: 'numeric', required: true, value: current ?? '' });
    dialog.open({
      key: `medication:${medicationId}`,
      title: 'Reorder point',
      describe: () => {
        const totals = totalsOf(medicationId);
        return [h('p', {}, h('strong', {}, medicationName(medication, medicationId)), ` at ${pharmacy.name}`),
          h('p', { class: 'muted' }, `${plural(totals.available, medication?.unit || 'unit')} available now.`)];
      },
      fields: [dialogField('reorder-point', 'Flag as low stock at or below', point, 'Units available (not reserved, not expired). 0 flags only when none is left.')],
      submitLabel: 'Save',
      failed: 'Not saved.',
      read: () => {
        const text = point.value.trim();
        const value = Number(text);
        if (!/^\d+$/.test(text) || value > 1_000_000) throw invalidInput('Enter a whole number from 0 to 1,000,000.', point);
        return { reorder_point: value };
      },
      submit: async (values) => {
        await request('PUT', `/api/pharmacies/${pharmacy.id}/reorder-points/${medicationId}`, { body: values });
        // No event carries reorder points: show the new one here at once.
        reorderPoints.set(medicationId, values.reorder_point);
        fillGroupHeader(medicationId);
        renderSummary();
        applyFilters();
        announce(`Reorder point of ${medicationName(medication, medicationId)} set to ${values.reorder_point}.`);
        return null;
      },
      returnFocus: () => groups.get(medicationId)?.header.querySelector('[data-action="reorder-point"]')?.focus(),
    });
  }

  // ---- The upload --------------------------------------------------------------------------

  function createUploadCard() {
    const input = h('input', { type: 'file', id: 'stock-upload', name: 'file', accept: '.csv,text/csv', 'aria-describedby': 'stock-upload-hint' });
    const submit = h('button', { type: 'submit', id: 'stock-upload-submit', class: 'button button--primary' }, 'Upload');
    const error = h('div', { class: 'form-error', role: 'alert' });
    const bar = h('progress', { id: 'stock-upload-bar', max: '1', 'aria-labelledby': 'stock-upload-progress-text' });
    const progressText = h('p', { id: 'stock-upload-progress-text', class: 'muted' });
    const progressBox = h('div', { class: 'upload-progress', id: 'stock-upload-progress', hidden: true }, progressText, bar);
    const result = h('div', { id: 'stock-upload-result', class: 'upload-result', 'aria-live': 'polite' });
    const form = h('form', { class: 'upload-form', novalidate: true, onsubmit: start },
      h('div', { class: 'field' }, h('label', { for: 'stock-upload' }, 'CSV file'), input),
      error,
      submit);
    const element = h('section', { class: 'card stock-side__card', 'aria-labelledby': 'stock-upload-title' },
      h('h2', { id: 'stock-upload-title' }, 'Receive stock from a file'),
      h('p', { class: 'hint', id: 'stock-upload-hint' },
        'A CSV file with a header row naming ', h('code', {}, 'medication, batch_number, expiry_date, quantity, location'),
        ' (location optional; medication by its formulary name, expiry as YYYY-MM-DD). A batch already received is skipped, so sending a file twice is safe.'),
      form, progressBox, result);

    function label() {
      submit.textContent = pharmacy ? `Upload to ${pharmacy.name}` : 'Upload';
    }

    async function start(event) {
      event.preventDefault();
      if (uploading || !pharmacy) return;
      error.replaceChildren();
      input.removeAttribute('aria-invalid');
      const file = input.files && input.files[0];
      if (!file) {
        error.textContent = 'Choose a CSV file first.';
        input.setAttribute('aria-invalid', 'true');
        input.focus();
        return;
      }
      if (file.size > MAX_UPLOAD_BYTES) {
        error.textContent = `The file is ${formatBytes(file.size)}; the hub takes at most 16 MB at once. Split it into smaller files.`;
        input.setAttribute('aria-invalid', 'true');
        input.focus();
        return;
      }
      const target = pharmacy;
      uploading = { file, pharmacy: target };
      submit.disabled = true;
      input.disabled = true;
      picker.disabled = true;
      submit.textContent = 'Uploading…';
      result.replaceChildren();
      delete result.dataset.outcome;
      progressBox.hidden = false;
      bar.removeAttribute('value'); // indeterminate until the hub reports progress
      progressText.textContent = `Sending ${file.name} (${formatBytes(file.size)}) to ${target.name}…`;
      try {
        const answer = await postUpload(target.id, file);
        if (!mounted) return;
        showResult(answer, file, target);
        input.value = '';
      } catch (failure) {
        if (!mounted) return;
        result.dataset.outcome = 'error';
        replaceChildren(result, h('div', { class: 'notice notice--error' },
          h('strong', {}, 'The file was not applied. '), failure.detail || failure.message,
          failure.field ? h('p', {}, `Column: ${failure.field}.`) : null));
      } finally {
        uploading = null;
        if (mounted) {
          progressBox.hidden = true;
          submit.disabled = false;
          input.disabled = false;
          picker.disabled = false;
          label();
        }
      }
    }

    function showResult(answer, file, target) {
      const applied = Number(answer.applied || 0);
      const already = answer.already_received || [];
      const rejected = answer.rejected || [];
      const outcome = rejected.length === 0 ? 'applied' : applied > 0 || already.length > 0 ? 'partial' : 'rejected';
      Object.assign(result.dataset, { outcome, applied: String(applied), alreadyReceived: String(already.length), rejected: String(rejected.length), uploadId: answer.upload_id || '' });
      const lines = (numbers) => {
        const shown = numbers.slice(0, 30).join(', ');
        return numbers.length > 30 ? `${shown} and ${numbers.length - 30} more` : shown;
      };
      replaceChildren(result,
        h('div', { class: ['notice', rejected.length ? 'notice--warning' : 'notice--success'] },
          h('strong', {}, `${file.name} → ${target.name}`),
          h('ul', { class: 'upload-counts' },
            h('li', { dataset: { count: 'applied' } }, h('strong', {}, formatCount(applied)), ` new batch${applied === 1 ? '' : 'es'} received`),
            h('li', { dataset: { count: 'already-received' } }, h('strong', {}, formatCount(already.length)), ' already received (skipped)',
              already.length ? h('span', { class: 'muted' }, `: line${already.length === 1 ? '' : 's'} ${lines(already)}`) : null),
            h('li', { dataset: { count: 'rejected' } }, h('strong', {}, formatCount(rejected.length)), ` row${rejected.length === 1 ? '' : 's'} rejected`))),
        rejected.length ? h('div', { class: 'table-scroll upload-rejected' }, h('table', { class: 'data-table' },
          h('caption', {}, 'Rejected rows: correct them and upload the file again (rows already received are skipped).'),
          h('thead', {}, h('tr', {}, h('th', { scope: 'col', class: 'num' }, 'Line'), h('th', { scope: 'col' }, 'Reason'))),
          h('tbody', {}, rejected.map((row) => h('tr', { dataset: { line: String(row.line) } },
            h('td', { class: 'num' }, String(row.line)), h('td', {}, row.reason)))))) : null);
      announce(`Upload finished: ${applied} new batches, ${already.length} already received, ${rejected.length} rejected.`);
    }

    return {
      element,
      pharmacyChanged: label,
      progress(data) {
        if (!uploading || !data || !data.total) return;
        bar.max = String(data.total);
        bar.value = String(Math.min(data.processed, data.total));
        progressText.textContent = `Applied ${formatCount(data.processed)} of ${formatCount(data.total)} valid rows…`;
        progressBox.dataset.processed = String(data.processed);
        progressBox.dataset.total = String(data.total);
      },
    };
  }

  return () => {
    mounted = false;
    if (unsubscribe) unsubscribe();
    if (stopUserFeed) stopUserFeed();
    stale.stop();
    clearTimeout(redrawTimer);
    clearTimeout(resyncTimer);
    clearInterval(dayTimer);
    dialog.close();
  };
}
