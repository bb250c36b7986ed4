// The pharmacist's dispensing queue (`#/dispense`): the open prescriptions of one pharmacy (active
// and partly dispensed), oldest first, each with its medication, directions, patient (pharmacists
// may not read patient records, so a patient is shown by a short id), prescriber, the quantity,
// what is reserved for it and what was already given, and whether the pharmacy can serve it now.
// Dispense gives the rest of the fill, or a part of it; Cancel (with a reason) releases what it holds.
//
// Live: the page watches the pharmacy's stock topic `tenant/{slug}/stock/{pharmacy}`. After its
// snapshot the queue is read through `GET /api/prescriptions`; `prescription.created`, `.dispensed`,
// `.cancelled` and `.refilled` carry the whole prescription and update, add or remove its row.
// Reservations change without a prescription event (a new prescription reserves after it is
// announced; a recall releases): a `batch.reserved`, `.released` or `.recalled` naming a queued
// prescription re-reads that one prescription. Batch events also keep the free stock per
// medication current (from the snapshot's batches and their numbers after each change).
//
// For automated tests: the root (`#dispensing`) carries `data-pharmacy-id` and `data-loaded`;
// every row `data-prescription-id`, `data-status`, `data-quantity`, `data-reserved` and
// `data-dispensed`; its buttons `data-action` "dispense" (the whole rest), "dispense-part" and
// "cancel". The last outcome is shown in `#dispense-result` (`data-outcome`, and
// `data-last-prescription-id` naming the prescription it concerns).

import { request } from './api.js';
import { h, replaceChildren, formatTime, shortId, timeElement } from './dom.js';
import { staleNotice, subscriptionProblem } from './appointments.js';
import {
  createPharmacyPicker, createActionDialog, dialogField, readReason, batchAvailable, formatCount, plural, countOf,
  medicationName, instantKey, todayUtc, shortWhen,
} from './stock.js';

const OPEN = ['active', 'partially_dispensed'];
export const PRESCRIPTION_STATUS_LABELS = {
  active: 'Waiting', partially_dispensed: 'Partly dispensed', dispensed: 'Dispensed', cancelled: 'Cancelled',
};
/** How long the page waits for the live snapshot before reading the queue anyway. */
const SNAPSHOT_GRACE_MS = 2_000;
/** Reservation changes in a burst re-read a prescription once, this long after the first. */
const REREAD_DELAY_MS = 300;

export function mountDispensing(container, { user, live, announce }) {
  const slug = user.tenant.slug;
  let mounted = true;
  let pharmacy = null;
  let topic = null;
  let unsubscribe = null;
  let snapshotSeen = false;
  let snapshotTimer = null;
  let loaded = false;
  let loadSerial = 0;
  /** prescription id → open prescription */
  const prescriptions = new Map();
  /** prescription id → updated_at of its closing event (so an older read does not bring it back) */
  const closed = new Map();
  const rows = new Map();
  /** prescription id → the action under way */
  const pending = new Map();
  const rowErrors = new Map();
  /** batch id → {medication_id, batch_number, expiry_date, on_hand, reserved, status}: free stock */
  const batches = new Map();
  const medications = new Map();
  const medicationLookups = new Map();
  /** prescriber user id → display name */
  const prescribers = new Map();
  const rereadTimers = new Map();
  const rereadSerials = new Map();
  /** Where focus goes once the cancel dialog closes over a row that is gone. */
  let dialogReturn = null;

  const picker = createPharmacyPicker('dispense-pharmacy', choosePharmacy);
  const subtitle = h('p', { class: 'muted' }, 'Open prescriptions at one pharmacy, oldest first, live.');
  const updated = h('p', { class: 'board__updated muted', 'aria-live': 'off' });
  const problem = h('div', { class: 'board__problem', role: 'alert' });
  const stale = staleNotice(live, 'the queue');
  const counts = h('p', { class: 'queue__counts muted', 'aria-live': 'polite' });
  const result = h('div', { id: 'dispense-result', class: 'dispense-result', role: 'status' });
  const list = h('ol', { class: 'rx-list', 'aria-label': 'Open prescriptions' });
  const body = h('div', { class: 'queue__body', 'aria-busy': 'true' }, h('p', { class: 'placeholder' }, 'Loading the queue…'));

  const root = h('section', { class: 'queue', id: 'dispensing', 'aria-labelledby': 'page-title', dataset: { pharmacyId: '', loaded: 'false' } },
    h('header', { class: 'page-header' },
      h('div', {}, h('h1', { id: 'page-title', tabindex: '-1' }, 'Dispensing'), subtitle),
      updated),
    problem,
    stale.element,
    h('div', { class: 'stock__toolbar' }, picker.element, counts),
    result,
    h('div', { class: 'card queue__card' }, body));
  replaceChildren(container, root);

  const dialog = createActionDialog('dispense-action');
  root.append(dialog.element);

  // The queue's "ready" and "short" wording moves with the calendar (expired batches stop counting).
  const dayTimer = setInterval(() => { if (loaded) renderAll(); }, 10 * 60_000);

  request('GET', '/api/doctors', { query: { limit: 100 } }).then((answer) => {
    if (!mounted) return;
    for (const doctor of answer?.doctors || []) prescribers.set(doctor.user_id, doctor.display_name);
    if (loaded) renderAll();
  }).catch(() => {}); // names are a nicety; ids stand in

  picker.load().then((facilities) => {
    if (mounted && facilities.length === 0) showBodyMessage('No pharmacies yet.', 'An admin adds facilities; each keeps its own pharmacy.');
  }).catch((failure) => {
    if (mounted) showBodyMessage('The list of pharmacies could not be read.', failure.detail || failure.message, true);
  });

  function showBodyMessage(title, text, isError = false) {
    body.setAttribute('aria-busy', 'false');
    replaceChildren(body, h('div', { class: isError ? 'notice notice--error' : 'empty-state' },
      h('strong', {}, title), text ? h('p', {}, text) : null));
  }

  function choosePharmacy(facility) {
    if (pharmacy && pharmacy.id === facility.id) return;
    pharmacy = facility;
    root.dataset.pharmacyId = facility.id;
    root.dataset.loaded = 'false';
    subtitle.textContent = `${facility.name} · open prescriptions, oldest first, live`;
    loaded = false;
    snapshotSeen = false;
    prescriptions.clear();
    closed.clear();
    rows.clear();
    rowErrors.clear();
    batches.clear();
    for (const timer of rereadTimers.values()) clearTimeout(timer);
    rereadTimers.clear();
    result.replaceChildren();
    counts.textContent = '';
    body.setAttribute('aria-busy', 'true');
    replaceChildren(body, h('p', { class: 'placeholder' }, `Loading the queue of ${facility.name}…`));
    if (unsubscribe) unsubscribe();
    topic = `tenant/${slug}/stock/${facility.id}`;
    unsubscribe = live.subscribe(topic, onMessage);
    // The first read waits for the snapshot (so nothing between them is missed), but not for long.
    clearTimeout(snapshotTimer);
    snapshotTimer = setTimeout(loadQueue, SNAPSHOT_GRACE_MS);
  }

  // ---- Reading ------------------------------------------------------------------------------

  async function loadQueue() {
    clearTimeout(snapshotTimer);
    const serial = ++loadSerial;
    const forPharmacy = pharmacy.id;
    try {
      const answer = await request('GET', '/api/prescriptions', {
        query: { pharmacy_id: forPharmacy, status: OPEN.join(','), limit: 500 },
      });
      if (!mounted || serial !== loadSerial || forPharmacy !== pharmacy.id) return;
      const seen = new Set();
      for (const prescription of answer?.prescriptions || []) {
        seen.add(prescription.id);
        const closedAt = closed.get(prescription.id);
        if (closedAt && instantKey(closedAt) >= instantKey(prescription.updated_at)) continue;
        const known = prescriptions.get(prescription.id);
        if (known && instantKey(known.updated_at) > instantKey(prescription.updated_at)) continue;
        prescriptions.set(prescription.id, prescription);
      }
      // A reload (after a reconnect too long to replay) drops what closed meanwhile.
      if (loaded) for (const id of [...prescriptions.keys()]) if (!seen.has(id)) prescriptions.delete(id);
      loaded = true;
      root.dataset.loaded = 'true';
      problem.replaceChildren();
      for (const prescription of prescriptions.values()) lookUpMedication(prescription.medication_id);
      renderAll();
      setUpdated();
    } catch (failure) {
      if (!mounted || serial !== loadSerial) return;
      if (!loaded) showBodyMessage('The queue could not be read.', failure.detail || failure.message, true);
      else replaceChildren(problem, h('div', { class: 'notice notice--error' }, h('strong', {}, 'The queue could not be refreshed. '), failure.detail || failure.message));
    }
  }

  /** The medication's name and unit, from the stock snapshot or (once) from the formulary. */
  function lookUpMedication(id) {
    if (medications.has(id) || medicationLookups.has(id)) return;
    medicationLookups.set(id, request('GET', `/api/medications/${id}`).then((medication) => {
      if (!mounted || !medication) return;
      medications.set(id, medication);
      for (const prescription of prescriptions.values()) if (prescription.medication_id === id) renderRow(prescription.id);
    }).catch(() => { medicationLookups.delete(id); }));
  }

  /** Re-reads one prescription soon (its reservation changed without a prescription event). */
  function rereadSoon(id) {
    if (rereadTimers.has(id)) return;
    rereadTimers.set(id, setTimeout(async () => {
      rereadTimers.delete(id);
      const serial = (rereadSerials.get(id) || 0) + 1;
      rereadSerials.set(id, serial);
      try {
        const prescription = await request('GET', `/api/prescriptions/${id}`);
        if (!mounted || rereadSerials.get(id) !== serial) return;
        applyPrescription(prescription, { own: true, reread: true });
      } catch {
        // The next event or reload shows it; the row keeps its last known numbers meanwhile.
      }
    }, REREAD_DELAY_MS));
  }

  function cancelReread(id) {
    clearTimeout(rereadTimers.get(id));
    rereadTimers.delete(id);
    // A read already on its way is older than the event that cancels it.
    rereadSerials.set(id, (rereadSerials.get(id) || 0) + 1);
  }

  // ---- Live ---------------------------------------------------------------------------------

  function onMessage(message) {
    if (message.topic !== topic) return;
    if (message.type === 'snapshot') {
      const first = !snapshotSeen;
      snapshotSeen = true;
      batches.clear();
      for (const row of message.data?.batches || []) {
        medications.set(row.medication.id, row.medication);
        batches.set(row.id, { medication_id: row.medication.id, batch_number: row.batch_number, expiry_date: row.expiry_date, on_hand: row.on_hand, reserved: row.reserved, status: row.status });
      }
      problem.replaceChildren();
      // Read the queue now: the first time, and after a reconnect whose gap was too long to replay.
      loadQueue();
      if (!first) renderAll();
      return;
    }
    if (message.type === 'error') {
      replaceChildren(problem, subscriptionProblem(message, 'this pharmacy'));
      if (!loaded) loadQueue();
      return;
    }
    const data = message.data || {};
    if (message.type.startsWith('prescription.')) {
      if (data.medication && data.medication.id) medications.set(data.medication.id, data.medication);
      if (data.prescription) applyPrescription(data.prescription, { event: message.type });
      setUpdated(message.ts);
      return;
    }
    if (message.type === 'batch.received' && data.batch) {
      const batch = data.batch;
      const reserved = Object.values(batch.reservations || {}).reduce((sum, n) => sum + Number(n), 0);
      batches.set(batch.id, { medication_id: batch.medication_id, batch_number: batch.batch_number, expiry_date: batch.expiry_date, on_hand: batch.on_hand, reserved, status: batch.status });
      refreshMedication(batch.medication_id);
      return;
    }
    if (message.type.startsWith('batch.') && data.batch_id) {
      batches.set(data.batch_id, { medication_id: data.medication_id, batch_number: data.batch_number, expiry_date: data.expiry_date, on_hand: data.on_hand, reserved: data.reserved, status: data.status });
      const change = data.change || {};
      if ((change.change === 'reserved' || change.change === 'released') && prescriptions.has(change.prescription_id)) rereadSoon(change.prescription_id);
      if (change.change === 'recalled') for (const id of Object.keys(change.released || {})) if (prescriptions.has(id)) rereadSoon(id);
      refreshMedication(data.medication_id);
    }
    // Stock alerts belong to the stock board.
  }

  function setUpdated(ts) {
    const at = ts || new Date().toISOString();
    replaceChildren(updated, ts ? 'Last change ' : 'Loaded ', timeElement(at, formatTime(at)));
  }

  /** Free stock changed for a medication: redraw the rows that need it. */
  function refreshMedication(medicationId) {
    if (!loaded) return;
    for (const prescription of prescriptions.values()) if (prescription.medication_id === medicationId) renderRow(prescription.id);
  }

  /** Puts a prescription's newer state into the queue: updates, adds or removes its row. */
  function applyPrescription(incoming, { event = null, own = false } = {}) {
    if (!incoming || incoming.pharmacy_id !== pharmacy?.id) return;
    if (event) cancelReread(incoming.id);
    const known = prescriptions.get(incoming.id);
    if (known && instantKey(incoming.updated_at) < instantKey(known.updated_at)) return;
    const closedAt = closed.get(incoming.id);
    if (closedAt && instantKey(incoming.updated_at) <= instantKey(closedAt)) return;
    const label = `${medicationName(medications.get(incoming.medication_id), incoming.medication_id)} for patient ${shortId(incoming.patient_id)}`;
    if (OPEN.includes(incoming.status)) {
      closed.delete(incoming.id);
      prescriptions.set(incoming.id, incoming);
      lookUpMedication(incoming.medication_id);
      if (!loaded) return;
      if (!known) {
        renderAll();
        if (!own) announce(event === 'prescription.refilled' ? `Refill waiting: ${label}.` : `New prescription: ${label}.`);
      } else {
        renderRow(incoming.id, { highlight: !own || event !== null });
        renderCounts();
      }
      return;
    }
    closed.set(incoming.id, incoming.updated_at);
    if (!known) return;
    prescriptions.delete(incoming.id);
    rowErrors.delete(incoming.id);
    if (!loaded) return;
    const focusNext = rows.get(incoming.id)?.contains(document.activeElement) ? nextFocusAfter(incoming.id) : null;
    renderAll();
    if (focusNext) focusNext();
    if (!own && !pending.has(incoming.id)) announce(`${label} was ${(PRESCRIPTION_STATUS_LABELS[incoming.status] || incoming.status).toLowerCase()} elsewhere.`);
  }

  // ---- Rendering ----------------------------------------------------------------------------

  function sorted() {
    return [...prescriptions.values()].sort((a, b) => instantKey(a.created_at).localeCompare(instantKey(b.created_at)) || (a.id < b.id ? -1 : 1));
  }

  function renderAll() {
    if (!loaded) return;
    body.setAttribute('aria-busy', 'false');
    const ordered = sorted();
    for (const id of [...rows.keys()]) if (!prescriptions.has(id)) rows.delete(id);
    if (ordered.length === 0) {
      replaceChildren(body, h('div', { class: 'empty-state' },
        h('strong', {}, `No prescriptions waiting at ${pharmacy.name}.`),
        h('p', {}, 'New prescriptions for this pharmacy appear here as doctors write them.')));
      renderCounts();
      return;
    }
    const focused = document.activeElement?.closest?.('[data-prescription-id]');
    const focusKey = focused && { id: focused.dataset.prescriptionId, action: document.activeElement.dataset.action };
    for (const prescription of ordered) {
      if (!rows.has(prescription.id)) rows.set(prescription.id, h('li', { class: 'rx', tabindex: '-1', dataset: { prescriptionId: prescription.id } }));
      fillRow(rows.get(prescription.id), prescription);
    }
    replaceChildren(list, ordered.map((p) => rows.get(p.id)));
    if (list.parentNode !== body) replaceChildren(body, list);
    renderCounts();
    if (focusKey && rows.has(focusKey.id) && !rows.get(focusKey.id).contains(document.activeElement)) {
      const row = rows.get(focusKey.id);
      (focusKey.action && row.querySelector(`[data-action="${focusKey.action}"]:not(:disabled)`) || row).focus();
    }
  }

  function renderRow(id, { highlight = false } = {}) {
    const element = rows.get(id);
    const prescription = prescriptions.get(id);
    if (!element || !prescription) return renderAll();
    const focusedAction = element.contains(document.activeElement) ? document.activeElement.dataset.action : null;
    const hadFocus = element.contains(document.activeElement);
    fillRow(element, prescription);
    if (hadFocus) (focusedAction && element.querySelector(`[data-action="${focusedAction}"]:not(:disabled)`) || element).focus();
    if (highlight) {
      element.classList.remove('rx--changed');
      void element.offsetWidth; // restart the highlight
      element.classList.add('rx--changed');
    }
    return undefined;
  }

  function renderCounts() {
    const all = [...prescriptions.values()];
    const partly = all.filter((p) => p.status === 'partially_dispensed').length;
    counts.textContent = all.length === 0 ? '' : `${countOf(all.length, 'open prescription')}: ${formatCount(all.length - partly)} waiting, ${formatCount(partly)} partly dispensed`;
  }

  /** Units of a medication free to reserve now (active, unexpired, not reserved). */
  function freeStock(medicationId) {
    const today = todayUtc();
    let free = 0;
    for (const batch of batches.values()) if (batch.medication_id === medicationId) free += batchAvailable(batch, today);
    return free;
  }

  function readiness(prescription) {
    const remaining = prescription.quantity - prescription.dispensed_in_fill;
    const reserved = Number(prescription.reserved);
    const free = snapshotSeen ? freeStock(prescription.medication_id) : null;
    if (reserved >= remaining) return { level: 'ready', text: `Ready: all ${formatCount(remaining)} reserved` };
    if (free === null) return { level: 'unknown', text: `${formatCount(reserved)} of ${formatCount(remaining)} reserved` };
    if (reserved + free >= remaining) return { level: 'ready', text: `Ready: ${formatCount(reserved)} reserved, ${formatCount(remaining - reserved)} more in stock` };
    if (reserved + free > 0) return { level: 'short', text: `Short: ${formatCount(reserved + free)} of ${formatCount(remaining)} can be given now` };
    return { level: 'out', text: 'Out of stock here' };
  }

  function fillRow(element, prescription) {
    const medication = medications.get(prescription.medication_id);
    const unit = medication?.unit || 'unit';
    const remaining = prescription.quantity - prescription.dispensed_in_fill;
    const ready = readiness(prescription);
    Object.assign(element.dataset, {
      status: prescription.status, quantity: String(prescription.quantity), reserved: String(prescription.reserved),
      dispensed: String(prescription.dispensed_in_fill), remaining: String(remaining), ready: ready.level,
    });
    const prescriber = prescribers.get(prescription.prescriber_id) || `Prescriber ${shortId(prescription.prescriber_id)}`;
    const fill = prescription.refills > 0 ? `Fill ${prescription.refills_used + 1} of ${prescription.refills + 1}` : null;
    const busy = pending.get(prescription.id);
    const who = `${medicationName(medication, prescription.medication_id)} for patient ${shortId(prescription.patient_id)}`;
    replaceChildren(element,
      h('div', { class: 'rx__main' },
        h('span', { class: 'rx__med' }, medicationName(medication, prescription.medication_id)),
        h('span', { class: 'rx__sig' }, [prescription.dose, prescription.frequency, countOf(prescription.duration_days, 'day')].join(' · ')),
        h('span', { class: 'rx__who' },
          h('span', { title: `Patient ${prescription.patient_id}` }, `Patient ${shortId(prescription.patient_id)}`),
          ` · ${prescriber} · `,
          'written ', timeElement(prescription.created_at, shortWhen(prescription.created_at)),
          fill ? ` · ${fill}` : null),
        prescription.notes ? h('span', { class: 'rx__notes' }, `Note: ${prescription.notes}`) : null,
        rowErrors.has(prescription.id) ? h('span', { class: 'rx__error', role: 'alert' }, rowErrors.get(prescription.id)) : null),
      h('dl', { class: 'rx__numbers' },
        h('div', {}, h('dt', {}, 'Prescribed'), h('dd', {}, plural(prescription.quantity, unit))),
        h('div', {}, h('dt', {}, 'Reserved'), h('dd', { dataset: { field: 'reserved' } }, formatCount(prescription.reserved))),
        h('div', {}, h('dt', {}, 'Given'), h('dd', { dataset: { field: 'dispensed' } }, formatCount(prescription.dispensed_in_fill)))),
      h('div', { class: 'rx__state' },
        h('span', { class: ['status', `status--rx-${prescription.status}`] },
          h('span', { class: 'status__mark', 'aria-hidden': 'true' }), PRESCRIPTION_STATUS_LABELS[prescription.status] || prescription.status),
        h('span', { class: ['readiness', `readiness--${ready.level}`] }, ready.text)),
      h('div', { class: 'rx__actions' },
        h('button', {
          type: 'button', class: 'button button--small button--primary', dataset: { action: 'dispense' }, disabled: Boolean(busy),
          'aria-label': `Dispense ${plural(remaining, unit)} of ${who}`,
          onclick: () => dispense(prescription.id, null),
        }, busy === 'dispense' ? 'Dispensing…' : `Dispense ${formatCount(remaining)}`),
        remaining > 1 ? h('button', {
          type: 'button', class: 'button button--small', dataset: { action: 'dispense-part' }, disabled: Boolean(busy),
          'aria-label': `Dispense part of ${who}`, onclick: () => openPartial(prescription.id),
        }, 'Part…') : null,
        h('button', {
          type: 'button', class: 'button button--small button--danger-quiet', dataset: { action: 'cancel' }, disabled: Boolean(busy),
          'aria-label': `Cancel ${who}`, onclick: () => openCancel(prescription.id),
        }, 'Cancel')));
  }

  function nextFocusAfter(id) {
    const ordered = sorted().map((p) => p.id);
    const index = ordered.indexOf(id);
    const nextId = ordered[index + 1] || ordered[index - 1];
    return () => {
      const row = nextId && rows.get(nextId);
      (row?.querySelector('[data-action="dispense"]') || row || document.getElementById('page-title'))?.focus();
    };
  }

  // ---- Actions ------------------------------------------------------------------------------

  function batchLabel(batchId) {
    return batches.get(batchId)?.batch_number || shortId(batchId);
  }

  function showDispensed(answer) {
    const prescription = answer.prescription;
    const medication = medications.get(prescription.medication_id);
    const unit = medication?.unit || 'unit';
    const from = (answer.from_batches || []).map(([batchId, units]) => `batch ${batchLabel(batchId)} × ${formatCount(units)}`).join(', ');
    const left = prescription.quantity - prescription.dispensed_in_fill;
    Object.assign(result.dataset, { outcome: 'dispensed', lastPrescriptionId: prescription.id, dispensed: String(answer.dispensed) });
    replaceChildren(result, h('div', { class: 'notice notice--success' },
      h('strong', {}, `Dispensed ${plural(answer.dispensed, unit)} of ${medicationName(medication, prescription.medication_id)} for patient ${shortId(prescription.patient_id)}.`),
      h('p', {}, from ? `From ${from}. ` : '', left > 0 ? `${plural(left, unit)} of this fill still to give.` : 'This fill is complete.')));
    announce(`Dispensed ${plural(answer.dispensed, unit)} of ${medicationName(medication, prescription.medication_id)}.${left > 0 ? ` ${formatCount(left)} still to give.` : ''}`);
  }

  /**
   * Dispenses `quantity` units (null: the rest of the fill). From a row, a refusal is shown on the
   * row; from the dialog (`inDialog`), it is thrown for the dialog to show.
   */
  async function dispense(id, quantity, { inDialog = false } = {}) {
    const prescription = prescriptions.get(id);
    if (!prescription || pending.has(id)) return;
    const hadFocus = rows.get(id)?.contains(document.activeElement);
    const focusNext = hadFocus ? nextFocusAfter(id) : null;
    pending.set(id, 'dispense');
    rowErrors.delete(id);
    renderRow(id);
    try {
      const answer = await request('POST', `/api/prescriptions/${id}/dispense`, { body: quantity ? { quantity } : {} });
      pending.delete(id);
      if (!mounted) return;
      applyPrescription(answer.prescription, { own: true });
      showDispensed(answer);
      if (!prescriptions.has(id) && focusNext) focusNext();
    } catch (failure) {
      pending.delete(id);
      if (!mounted) return;
      Object.assign(result.dataset, { outcome: 'refused', lastPrescriptionId: id });
      // Refused because the prescription or the stock changed: show it as it is now.
      if (failure.status === 409) rereadSoon(id);
      if (inDialog) throw failure;
      rowErrors.set(id, `Not dispensed: ${failure.detail || failure.message}`);
    } finally {
      if (mounted && prescriptions.has(id)) {
        renderRow(id);
        if (hadFocus) rows.get(id)?.querySelector('[data-action="dispense"]')?.focus();
      }
    }
  }

  function describe(id) {
    const prescription = prescriptions.get(id);
    if (!prescription) return h('p', {}, 'This prescription is no longer open.');
    const medication = medications.get(prescription.medication_id);
    const unit = medication?.unit || 'unit';
    const remaining = prescription.quantity - prescription.dispensed_in_fill;
    return [
      h('p', {}, h('strong', {}, medicationName(medication, prescription.medication_id)), ` for patient ${shortId(prescription.patient_id)}`),
      h('p', { class: 'muted' }, `${prescription.dose} · ${prescription.frequency} · ${countOf(prescription.duration_days, 'day')}`),
      h('p', {}, `${plural(remaining, unit)} of ${formatCount(prescription.quantity)} still to give; ${formatCount(prescription.reserved)} reserved. `,
        h('span', { class: 'muted' }, readiness(prescription).text), '.'),
    ];
  }

  function openPartial(id) {
    const prescription = prescriptions.get(id);
    if (!prescription) return;
    const remaining = prescription.quantity - prescription.dispensed_in_fill;
    const canGive = Math.min(remaining, Number(prescription.reserved) + (snapshotSeen ? freeStock(prescription.medication_id) : 0));
    const quantity = h('input', {
      type: 'number', id: 'dispense-quantity', name: 'quantity', min: '1', max: String(remaining), step: '1', inputmode: 'numeric', required: true,
      value: String(Math.max(1, Math.min(canGive || remaining, remaining - 1))),
    });
    dialog.open({
      key: id,
      title: 'Dispense part of the fill',
      describe: () => describe(id),
      fields: [dialogField('dispense-quantity', 'Units to give now', quantity, `From 1 to ${formatCount(remaining)}. The rest stays open (and reserved) for later.`)],
      submitLabel: 'Dispense',
      busyLabel: 'Dispensing…',
      failed: 'Not dispensed.',
      read: () => {
        const text = quantity.value.trim();
        const value = Number(text);
        const current = prescriptions.get(id);
        const left = current ? current.quantity - current.dispensed_in_fill : remaining;
        if (!/^\d+$/.test(text) || value < 1 || value > left) {
          const problem = new Error(`Enter a whole number of units from 1 to ${formatCount(left)}.`);
          problem.input = quantity;
          throw problem;
        }
        return { quantity: value };
      },
      submit: async (values) => {
        await dispense(id, values.quantity, { inDialog: true });
        return null;
      },
      returnFocus: () => {
        const row = rows.get(id);
        (row?.querySelector('[data-action="dispense-part"]') || row?.querySelector('[data-action="dispense"]') || list.querySelector('[data-action="dispense"]') || document.getElementById('page-title'))?.focus();
      },
    });
  }

  function openCancel(id) {
    const prescription = prescriptions.get(id);
    if (!prescription) return;
    const reason = h('textarea', { id: 'prescription-cancel-reason', name: 'reason', rows: '3', maxlength: '300', required: true });
    dialog.open({
      key: id,
      title: 'Cancel prescription',
      describe: () => [describe(id), h('p', { class: 'notice notice--warning action-dialog__warning' },
        'Units reserved for it are released to stock. The prescriber and the patient are told.')],
      fields: [dialogField('prescription-cancel-reason', 'Reason', reason, 'e.g. "patient declined", "allergy noted". Up to 300 characters.')],
      submitLabel: 'Cancel prescription',
      busyLabel: 'Cancelling…',
      dismissLabel: 'Keep it',
      failed: 'Not cancelled.',
      danger: true,
      read: () => ({ reason: readReason(reason, 'cancelling') }),
      submit: async (values) => {
        const focusNext = nextFocusAfter(id);
        pending.set(id, 'cancel');
        try {
          const answer = await request('POST', `/api/prescriptions/${id}/cancel`, { body: values });
          if (!mounted) return null;
          applyPrescription(answer, { own: true });
          Object.assign(result.dataset, { outcome: 'cancelled', lastPrescriptionId: id });
          const medication = medications.get(prescription.medication_id);
          replaceChildren(result, h('div', { class: 'notice notice--info' },
            h('strong', {}, `Cancelled: ${medicationName(medication, prescription.medication_id)} for patient ${shortId(prescription.patient_id)}.`),
            prescription.reserved > 0 ? h('p', {}, `${formatCount(prescription.reserved)} reserved units went back to stock.`) : null));
          announce('Prescription cancelled.');
          dialogReturn = focusNext;
          return null;
        } finally {
          pending.delete(id);
        }
      },
      returnFocus: () => {
        if (dialogReturn) {
          const next = dialogReturn;
          dialogReturn = null;
          next();
          return;
        }
        (rows.get(id)?.querySelector('[data-action="cancel"]') || document.getElementById('page-title'))?.focus();
      },
    });
  }

  return () => {
    mounted = false;
    if (unsubscribe) unsubscribe();
    stale.stop();
    clearTimeout(snapshotTimer);
    clearInterval(dayTimer);
    for (const timer of rereadTimers.values()) clearTimeout(timer);
    dialog.close();
  };
}
