// The live bed board: every facility of the tenant, its wards and their beds, kept current from
// the `tenant/{slug}/beds` topic. The snapshot draws the board; `bed.status_changed` updates one
// tile in place; `facility.created` and `ward.added` redraw that facility. Nurses and admins
// change a bed's status from its tile, through the HTTP API; the change comes back as an event.
//
// A `reserved` bed is an emergency bed dispatch holds for an incoming ambulance patient (its
// `reserved_for` names the incident). It counts apart from free beds. Staff cannot reserve by hand;
// admitting the incoming patient ends the hold, anything else must say so (`release_reservation`).
//
// For automated tests (and anyone inspecting the page) every tile carries `data-bed-id` and
// `data-status`, and the board root carries `data-seq`, the last seq applied; all kept current.

import { request } from './api.js';
import { staleNotice } from './appointments.js';
import { h, replaceChildren, formatTime, formatDateTime, shortId, isUuid, timeElement } from './dom.js';

export const STATUSES = ['free', 'reserved', 'occupied', 'cleaning', 'out_of_service'];

/** What staff may set a bed to: beds are reserved only by dispatch. */
const STAFF_STATUSES = STATUSES.filter((status) => status !== 'reserved');

export const STATUS_LABELS = {
  free: 'Free',
  reserved: 'Reserved',
  occupied: 'Occupied',
  cleaning: 'Cleaning',
  out_of_service: 'Out of service',
};

// The look of `reserved` (violet, a dashed ring), next to the other statuses' in style.css; kept
// here with the status until it moves there. Added once per page as a constructed style sheet
// (the hub's Content-Security-Policy refuses inline <style>, not the CSS object model).
const RESERVED_STYLE = `
:root { --reserved: #7a3e9d; --reserved-text: #5a2a77; --reserved-tint: #f4ecfa; }
.status--reserved, .count--reserved, .total--reserved { color: var(--reserved-text); }
.status--reserved .status__mark, .count--reserved .status__mark, .total--reserved .status__mark { border-style: dashed; }
.count--reserved { background: var(--reserved-tint); border-color: #dcc6ea; }
.bed[data-status="reserved"] .bed__body { border-left-color: var(--reserved); background: var(--reserved-tint); }
.board[data-show="reserved"] .bed:not([data-status="reserved"]) { display: none; }
.totals { grid-template-columns: repeat(auto-fit, minmax(8.5rem, 1fr)); }
.bed-dialog__hold { margin: 0 0 1rem; }
.bed-dialog__hold label { display: flex; gap: 0.5rem; align-items: flex-start; font-weight: 600; }
.bed-dialog__hold input { min-height: 0; margin-top: 0.2rem; accent-color: var(--reserved); }
`;

let reservedSheet = null;

function addReservedStyle() {
  if (reservedSheet || typeof CSSStyleSheet !== 'function' || !('adoptedStyleSheets' in document)) return;
  reservedSheet = new CSSStyleSheet();
  reservedSheet.replaceSync(RESERVED_STYLE);
  document.adoptedStyleSheets = [...document.adoptedStyleSheets, reservedSheet];
}

const FACILITY_KINDS = { hospital: 'Hospital', clinic: 'Clinic', health_centre: 'Health centre' };
const WARD_KINDS = {
  emergency: 'Emergency', icu: 'Intensive care', general: 'General', maternity: 'Maternity',
  paediatric: 'Paediatric', surgical: 'Surgical',
};

/** Roles the hub lets change a bed (`PUT .../beds/{id}/status`). */
const BED_WRITERS = ['nurse', 'admin'];

function countBeds(beds) {
  const counts = Object.fromEntries(STATUSES.map((status) => [status, 0]));
  for (const bed of beds) counts[bed.status] = (counts[bed.status] || 0) + 1;
  return counts;
}

function sameWords(a, b) {
  return String(a).trim().toLowerCase() === String(b).trim().toLowerCase();
}

function facilityBeds(facility) {
  return facility.wards.flatMap((ward) => ward.beds);
}

function statusBadge(status) {
  return h('span', { class: ['status', `status--${status}`] },
    h('span', { class: 'status__mark', 'aria-hidden': 'true' }),
    STATUS_LABELS[status] || status);
}

/** One count per status, colour-coded and labelled: "Free 12", "Occupied 3", ... */
function countList(counts, className) {
  return h('ul', { class: ['counts', className], 'aria-label': 'Beds by status' },
    STATUSES.map((status) => h('li', { class: ['count', `count--${status}`] },
      h('span', { class: 'status__mark', 'aria-hidden': 'true' }),
      h('span', { class: 'count__label' }, STATUS_LABELS[status]),
      h('strong', { class: 'count__value' }, String(counts[status])))));
}

/**
 * Mounts the board into `container` for `user`, fed by `live`. Returns a function that unmounts
 * it (unsubscribes and closes any open dialog).
 */
export function mountBedBoard(container, { user, live, announce }) {
  addReservedStyle();
  const topic = `tenant/${user.tenant.slug}/beds`;
  const canChange = BED_WRITERS.includes(user.role);
  /** Facilities in display order (by name, as the hub sends them). */
  let facilities = [];
  let seq = null;
  /** bed id → {element, bed, ward, facility} */
  const tiles = new Map();
  let filterFacility = '';
  let filterStatus = 'all';

  const totals = h('div', { class: 'board__totals' });
  const body = h('div', { class: 'board__body', 'aria-busy': 'true' },
    h('p', { class: 'placeholder' }, 'Loading the bed board…'));
  const updated = h('p', { class: 'board__updated muted', 'aria-live': 'off' });
  const facilitySelect = h('select', { id: 'board-facility', onchange: () => { filterFacility = facilitySelect.value; applyFilters(); renderTotals(); } });
  const statusSelect = h('select', { id: 'board-status', onchange: () => { filterStatus = statusSelect.value; applyFilters(); } },
    h('option', { value: 'all' }, 'All statuses'),
    STATUSES.map((status) => h('option', { value: status }, STATUS_LABELS[status])));
  const problem = h('div', { class: 'board__problem', role: 'alert' });
  // A view that silently stops updating is worse than none: say so while the line is down.
  const stale = staleNotice(live, 'the board');

  const root = h('section', { class: 'board', id: 'bed-board', 'aria-labelledby': 'page-title', dataset: { seq: '', show: 'all' } },
    h('header', { class: 'page-header' },
      h('div', {},
        h('h1', { id: 'page-title', tabindex: '-1' }, 'Bed board'),
        h('p', { class: 'muted' }, canChange
          ? 'Live status of every bed. Select a bed to change its status.'
          : 'Live status of every bed in your hospital group.')),
      updated),
    problem,
    stale.element,
    totals,
    h('div', { class: 'board__filters' },
      h('div', { class: 'field field--inline' }, h('label', { for: 'board-facility' }, 'Facility'), facilitySelect),
      h('div', { class: 'field field--inline' }, h('label', { for: 'board-status' }, 'Show'), statusSelect)),
    body);
  replaceChildren(container, root);

  const dialog = canChange ? createChangeDialog() : null;
  if (dialog) root.append(dialog.element);

  const unsubscribe = live.subscribe(topic, onMessage);


  function onMessage(message) {
    switch (message.type) {
      case 'snapshot':
        problem.replaceChildren();
        facilities = [...message.data.facilities];
        setSeq(message.seq);
        renderAll();
        break;
      case 'bed.status_changed':
        applyBedChange(message.data);
        setSeq(message.seq, message.ts);
        break;
      case 'facility.created':
      case 'ward.added':
        upsertFacility(message.data);
        setSeq(message.seq, message.ts);
        break;
      case 'error':
        showProblem(message);
        break;
      default:
        // Another event type on this topic, newer than this console: the snapshot after a
        // resync shows its effect.
        console.info(`medhub beds: unknown event ${message.type}; resyncing`);
        live.resync(topic);
    }
  }

  function setSeq(value, ts) {
    seq = value;
    root.dataset.seq = String(value);
    // After a snapshot the board is current as of now; after an event, as of that event.
    replaceChildren(updated, ts ? 'Last change ' : 'Loaded ', timeElement(ts || new Date().toISOString(), formatTime(ts || new Date().toISOString())));
  }

  function showProblem(message) {
    body.setAttribute('aria-busy', 'false');
    const text = message.error === 'forbidden'
      ? 'Your role may not watch the bed board.'
      : message.error === 'unavailable'
        ? 'The hub cannot read the bed board right now; retrying…'
        : `The bed board is not available (${message.error}).`;
    replaceChildren(problem, h('div', { class: 'notice notice--error' },
      h('strong', {}, text), message.detail ? h('p', {}, message.detail) : null));
  }

  function renderAll() {
    tiles.clear();
    body.setAttribute('aria-busy', 'false');
    renderFacilityOptions();
    if (facilities.length === 0) {
      replaceChildren(body, h('p', { class: 'placeholder' }, 'No facilities yet. An admin adds them through the API.'));
    } else {
      replaceChildren(body, facilities.map(renderFacility));
    }
    renderTotals();
    applyFilters();
  }

  function renderFacilityOptions() {
    const chosen = facilities.some((f) => f.id === filterFacility) ? filterFacility : '';
    filterFacility = chosen;
    replaceChildren(facilitySelect,
      h('option', { value: '' }, 'All facilities'),
      facilities.map((facility) => h('option', { value: facility.id }, facility.name)));
    facilitySelect.value = chosen;
  }

  /** Totals follow the facility filter: a charge nurse watching one hospital counts its beds. */
  function renderTotals() {
    const shown = filterFacility ? facilities.filter((f) => f.id === filterFacility) : facilities;
    const counts = countBeds(shown.flatMap(facilityBeds));
    const scope = filterFacility && shown[0] ? shown[0].name : 'All facilities';
    replaceChildren(totals,
      h('h2', { class: 'sr-only' }, `Totals: ${scope}`),
      h('ul', { class: 'totals', 'aria-label': `Beds by status, ${scope}` },
        STATUSES.map((status) => h('li', { class: ['total', `total--${status}`] },
          h('span', { class: 'total__value' }, String(counts[status])),
          h('span', { class: 'total__label' },
            h('span', { class: 'status__mark', 'aria-hidden': 'true' }), STATUS_LABELS[status])))));
  }

  function renderFacility(facility) {
    const section = h('section', { class: 'facility', dataset: { facilityId: facility.id }, 'aria-labelledby': `facility-${facility.id}` },
      h('header', { class: 'facility__header' },
        h('div', {},
          h('h2', { id: `facility-${facility.id}` }, facility.name),
          h('p', { class: 'muted' }, `${FACILITY_KINDS[facility.kind] || facility.kind} · ${facility.wards.length} ward${facility.wards.length === 1 ? '' : 's'} · ${facility.timezone}`)),
        h('div', { class: 'facility__counts' }, countList(countBeds(facilityBeds(facility)), 'counts--facility'))),
      facility.wards.length === 0
        ? h('p', { class: 'placeholder' }, 'No wards yet.')
        : h('div', { class: 'wards' }, facility.wards.map((ward) => renderWard(facility, ward))));
    return section;
  }

  function renderWard(facility, ward) {
    const counts = countBeds(ward.beds);
    return h('section', { class: 'ward', dataset: { wardId: ward.id }, 'aria-labelledby': `ward-${ward.id}` },
      h('header', { class: 'ward__header' },
        h('h3', { id: `ward-${ward.id}` }, ward.name,
          // The kind says something only when the name does not already say it.
          sameWords(ward.name, WARD_KINDS[ward.kind] || ward.kind) ? null : h('span', { class: 'ward__kind' }, WARD_KINDS[ward.kind] || ward.kind)),
        h('p', { class: 'ward__summary' }, wardSummary(counts, ward.beds.length))),
      ward.beds.length === 0
        ? h('p', { class: 'placeholder' }, 'No beds in this ward.')
        : h('ul', { class: 'beds', 'aria-label': `Beds in ${ward.name}` },
          ward.beds.map((bed) => renderTile(facility, ward, bed))));
  }

  function wardSummary(counts, total) {
    return `${counts.free} of ${total} free`;
  }

  function renderTile(facility, ward, bed) {
    const element = h('li', { class: 'bed', dataset: { bedId: bed.id, status: bed.status } });
    const entry = { element, bed, ward, facility };
    tiles.set(bed.id, entry);
    fillTile(entry);
    return element;
  }

  function fillTile(entry) {
    const { element, bed } = entry;
    element.dataset.status = bed.status;
    const content = [
      h('span', { class: 'bed__label' }, bed.label),
      statusBadge(bed.status),
      bed.status === 'occupied' && bed.patient_id
        ? h('span', { class: 'bed__meta', title: `Patient ${bed.patient_id}` }, `Patient ${shortId(bed.patient_id)}`)
        : null,
      bed.status === 'reserved' && bed.reserved_for
        ? h('span', { class: 'bed__meta', title: `Held for the incoming patient of incident ${bed.reserved_for}` }, `Incoming · incident ${shortId(bed.reserved_for)}`)
        : null,
      bed.updated_at ? h('span', { class: 'bed__meta' }, 'since ', timeElement(bed.updated_at, formatTime(bed.updated_at))) : null,
    ];
    if (canChange) {
      replaceChildren(element, h('button', {
        type: 'button',
        class: 'bed__body',
        'aria-haspopup': 'dialog',
        onclick: () => dialog.open(entry),
      }, h('span', { class: 'sr-only' }, 'Bed '), content, h('span', { class: 'sr-only' }, ', change status')));
    } else {
      replaceChildren(element, h('div', { class: 'bed__body' }, content));
    }
  }

  function applyBedChange(change) {
    const entry = tiles.get(change.bed_id);
    if (!entry || entry.facility.id !== change.facility_id) {
      console.warn('medhub beds: an event names a bed this board does not show; resyncing');
      live.resync(topic);
      return;
    }
    updateBed(entry, {
      ...entry.bed,
      status: change.to,
      patient_id: change.patient_id,
      reserved_for: change.reserved_for || null,
      reserved_patient_id: change.reserved_patient_id || null,
      updated_at: change.at || entry.bed.updated_at,
    });
  }

  /** Puts `bed` (a new state of a bed on the board) into the model and onto its tile. */
  function updateBed(entry, bed) {
    const index = entry.ward.beds.findIndex((b) => b.id === bed.id);
    if (index >= 0) entry.ward.beds[index] = bed;
    entry.bed = bed;
    fillTile(entry);
    entry.element.classList.remove('bed--changed');
    // Restart the highlight animation: reading offsetWidth forces the removal to apply first.
    void entry.element.offsetWidth;
    entry.element.classList.add('bed--changed');
    refreshCounts(entry.facility, entry.ward);
    if (dialog) dialog.bedUpdated(entry);
  }

  function refreshCounts(facility, ward) {
    const section = body.querySelector(`[data-facility-id="${facility.id}"]`);
    if (section) {
      const counts = section.querySelector('.facility__counts');
      replaceChildren(counts, countList(countBeds(facilityBeds(facility)), 'counts--facility'));
      const wardSummaryElement = section.querySelector(`[data-ward-id="${ward.id}"] .ward__summary`);
      if (wardSummaryElement) wardSummaryElement.textContent = wardSummary(countBeds(ward.beds), ward.beds.length);
    }
    renderTotals();
  }

  function upsertFacility(detail) {
    const index = facilities.findIndex((f) => f.id === detail.id);
    if (index >= 0) facilities[index] = detail;
    else {
      facilities.push(detail);
      facilities.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : a.id < b.id ? -1 : 1));
    }
    for (const [id, entry] of tiles) if (entry.facility.id === detail.id) tiles.delete(id);
    const section = renderFacility(detail);
    const existing = body.querySelector(`[data-facility-id="${detail.id}"]`);
    if (existing) existing.replaceWith(section);
    else if (facilities.length === 1) replaceChildren(body, section);
    else {
      const next = facilities[facilities.indexOf(detail) + 1];
      const nextSection = next ? body.querySelector(`[data-facility-id="${next.id}"]`) : null;
      body.insertBefore(section, nextSection);
    }
    renderFacilityOptions();
    renderTotals();
    applyFilters();
  }

  function applyFilters() {
    root.dataset.show = filterStatus;
    for (const section of body.querySelectorAll('.facility')) {
      section.hidden = Boolean(filterFacility) && section.dataset.facilityId !== filterFacility;
    }
  }

  /** The one dialog for changing a bed: status choice, patient id for "occupied", inline errors. */
  function createChangeDialog() {
    let entry = null;
    let busy = false;
    const title = h('h2', { id: 'bed-dialog-title' });
    const place = h('p', { class: 'muted' });
    const now = h('p', { class: 'bed-dialog__now' });
    const radios = STAFF_STATUSES.map((status) => h('input', { type: 'radio', name: 'bed-status', value: status, id: `bed-status-${status}` }));
    const patient = h('input', {
      type: 'text', id: 'bed-patient', name: 'patient_id', autocomplete: 'off', spellcheck: 'false',
      inputmode: 'text', placeholder: '00000000-0000-0000-0000-000000000000', 'aria-describedby': 'bed-patient-hint',
    });
    const patientField = h('div', { class: 'field', hidden: true },
      h('label', { for: 'bed-patient' }, 'Patient id'),
      patient,
      h('p', { class: 'hint', id: 'bed-patient-hint' }, 'The UUID of the patient taking this bed.'));
    // Shown for a reserved bed: admitting the incoming patient ends the hold by itself; anything
    // else ends it only when the nurse says so here.
    const release = h('input', { type: 'checkbox', id: 'bed-release', name: 'release_reservation' });
    const holdNote = h('p', { class: 'hint', id: 'bed-hold-hint' });
    const holdField = h('div', { class: 'bed-dialog__hold', hidden: true },
      holdNote,
      h('label', { for: 'bed-release' }, release, 'End the hold for the incoming ambulance patient'));
    const error = h('div', { class: 'form-error', role: 'alert' });
    const save = h('button', { type: 'submit', class: 'button button--primary' }, 'Save');
    const cancel = h('button', { type: 'button', class: 'button', onclick: () => element.close() }, 'Cancel');
    const form = h('form', { class: 'bed-dialog__form', novalidate: true, onsubmit: submit },
      title, place, now,
      h('fieldset', { class: 'status-choice' },
        h('legend', {}, 'New status'),
        STAFF_STATUSES.map((status, i) => h('label', { class: ['status-choice__option', `status-choice__option--${status}`], for: `bed-status-${status}` },
          radios[i], statusBadge(status)))),
      patientField,
      holdField,
      error,
      h('div', { class: 'dialog-actions' }, cancel, save));
    const element = h('dialog', { class: 'bed-dialog', 'aria-labelledby': 'bed-dialog-title' }, form);
    for (const radio of radios) radio.addEventListener('change', syncPatientField);

    function chosen() {
      const radio = radios.find((r) => r.checked);
      return radio ? radio.value : null;
    }

    function syncPatientField() {
      patientField.hidden = chosen() !== 'occupied';
    }

    function describe() {
      const { bed, ward, facility } = entry;
      title.textContent = `Bed ${bed.label}`;
      place.textContent = `${facility.name} · ${ward.name}`;
      replaceChildren(now, 'Now: ', statusBadge(bed.status),
        bed.status === 'occupied' && bed.patient_id ? h('span', { class: 'muted', title: bed.patient_id }, ` patient ${shortId(bed.patient_id)}`) : null,
        bed.status === 'reserved' && bed.reserved_for ? h('span', { class: 'muted', title: bed.reserved_for }, ` for incident ${shortId(bed.reserved_for)}`) : null,
        bed.updated_at ? h('span', { class: 'muted' }, ` since ${formatDateTime(bed.updated_at)}`) : null);
      for (const radio of radios) {
        radio.disabled = radio.value === bed.status;
        if (radio.disabled && radio.checked) radio.checked = false;
      }
      const held = bed.status === 'reserved';
      holdField.hidden = !held;
      if (!held) release.checked = false;
      holdNote.textContent = held
        ? (bed.reserved_patient_id
          ? `Held for patient ${bed.reserved_patient_id}, on the way by ambulance. Admitting them ends the hold.`
          : 'Held for a patient on the way by ambulance. Admitting them ends the hold.')
        : '';
      if (held && bed.reserved_patient_id && !patient.value) patient.value = bed.reserved_patient_id;
    }

    async function submit(event) {
      event.preventDefault();
      if (busy || !entry) return;
      const status = chosen();
      error.replaceChildren();
      if (!status) {
        error.textContent = 'Choose the new status.';
        return;
      }
      const body = { status };
      if (status === 'occupied') {
        const id = patient.value.trim();
        if (!isUuid(id)) {
          error.textContent = 'Enter the patient id as a UUID, e.g. 3f2b6c1e-8d4a-4c55-9a1e-2b7f0c9d4e11.';
          patient.setAttribute('aria-invalid', 'true');
          patient.focus();
          return;
        }
        patient.removeAttribute('aria-invalid');
        body.patient_id = id;
      }
      if (entry.bed.status === 'reserved' && release.checked) body.release_reservation = true;
      busy = true;
      save.disabled = true;
      save.textContent = 'Saving…';
      const target = entry;
      try {
        const answer = await request('PUT', `/api/facilities/${target.facility.id}/beds/${target.bed.id}/status`, { body });
        // The event follows on the live topic; showing the answer now keeps the tile in step
        // even if that event is still on its way (never older state: only if it is newer).
        if (answer && answer.bed && typeof answer.seq === 'number' && (seq === null || answer.seq > seq)) {
          const current = tiles.get(target.bed.id);
          if (current) updateBed(current, answer.bed);
        }
        element.close();
        announce(`Bed ${target.bed.label} is now ${STATUS_LABELS[status].toLowerCase()}.`);
      } catch (failure) {
        error.replaceChildren(h('strong', {}, 'Not changed. '), failure.detail || failure.message);
        if (failure.field === 'patient_id') patient.setAttribute('aria-invalid', 'true');
      } finally {
        busy = false;
        save.disabled = false;
        save.textContent = 'Save';
      }
    }

    element.addEventListener('close', () => {
      const returnTo = entry && tiles.get(entry.bed.id);
      entry = null;
      if (returnTo) returnTo.element.querySelector('button')?.focus();
    });

    return {
      element,
      open(tileEntry) {
        entry = tileEntry;
        for (const radio of radios) radio.checked = false;
        patient.value = '';
        release.checked = false;
        patient.removeAttribute('aria-invalid');
        error.replaceChildren();
        describe();
        syncPatientField();
        element.showModal();
        (radios.find((r) => !r.disabled) || cancel).focus();
      },
      /** Someone changed the bed this dialog is about: show its new current status. */
      bedUpdated(updatedEntry) {
        if (entry && element.open && updatedEntry.bed.id === entry.bed.id) {
          entry = updatedEntry;
          describe();
          syncPatientField();
        }
      },
      close() {
        if (element.open) element.close();
      },
    };
  }

  return () => {
    unsubscribe();
    stale.stop();
    if (dialog) dialog.close();
  };
}
