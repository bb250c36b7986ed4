// The front desk's booking page (`#/book`): pick a doctor (with their specialties and next free
// time), a day on their facility's calendar, one of that day's free times, and the patient (by
// the start of a name, an MRN or a phone number), then book.
//
// Live: the page watches the chosen doctor's `tenant/{slug}/schedule/{doctor}` topic and keeps the
// doctor's active appointments from it. A free time disappears as soon as an appointment anywhere
// overlaps it (booked or moved there by someone else), and the day's free times are read again
// when one is released (cancelled, no-show, completed, moved away) or the hours change, so it comes
// back. A booking that loses a race is answered 409 by the hub: the page says "This slot was just
// taken", with the appointment in the way, and drops the time.
//
// For automated tests: every free time is a button with `data-slot-start` (the instant exactly as
// the availability API gave it); doctors carry `data-doctor-id` (the page root, `#booking`, names
// the chosen one in `data-chosen-doctor` and the day in `data-day`); the day input is `#booking-day`;
// the patient search input is `#patient-search` and its results carry `data-patient-id`; the book
// button is `#book-slot`; the outcome is shown in `#booking-result`, whose `data-outcome` is
// "booked", "conflict" or "error" after a try.

import { request, freshAccessToken, ApiError } from './api.js';
import { h, replaceChildren } from './dom.js';
import {
  isActive, specialtiesText, dayOf, today, addDays, formatDayLong, relativeDay, clock, fullTime, timeRange, overlaps,
  staleNotice, subscriptionProblem, KIND_LABELS,
} from './appointments.js';

/** How long the page waits for the live snapshot before reading the free times anyway. */
const SNAPSHOT_GRACE_MS = 2_000;
const SEARCH_DELAY_MS = 250;
const CHOSEN_DOCTOR_KEY = 'medhub.booking.doctor';

/**
 * `POST /api/appointments` straight through `fetch`: `api.request` keeps only `{error, field,
 * detail}` of an error body, and a 409 here must show the `conflicting_appointment` it names.
 * Resolves to `{status, body}`; a 401 (an access token revoked under us) goes through
 * `api.request`, which refreshes or ends the session (nothing was booked, so the retry is safe).
 */
async function postBooking(body) {
  const { token } = await freshAccessToken(5_000);
  let response;
  try {
    response = await fetch('/api/appointments', {
      method: 'POST',
      headers: { Accept: 'application/json', 'Content-Type': 'application/json', Authorization: `Bearer ${token}` },
      body: JSON.stringify(body),
      cache: 'no-store',
      credentials: 'same-origin',
    });
  } catch {
    throw new ApiError(0, { error: 'network', detail: 'The hub cannot be reached, so the booking may not have been made. Check the schedule before trying again.' });
  }
  if (response.status === 401) return { status: 201, body: await request('POST', '/api/appointments', { body }) };
  const text = await response.text();
  let parsed = null;
  try {
    parsed = text ? JSON.parse(text) : null;
  } catch {
    // Not JSON (a proxy's page): said in words below.
  }
  if (response.ok) return { status: response.status, body: parsed };
  if (parsed && parsed.error) {
    const error = new ApiError(response.status, parsed);
    error.body = parsed;
    throw error;
  }
  throw new ApiError(response.status, { error: `http_${response.status}`, detail: `The hub answered ${response.status}; try again shortly.` });
}

function patientName(patient) {
  return `${patient.given_name} ${patient.family_name}`;
}

function ageOf(birthDate) {
  const born = new Date(`${birthDate}T00:00:00Z`);
  if (Number.isNaN(born.getTime())) return null;
  const now = new Date();
  let age = now.getUTCFullYear() - born.getUTCFullYear();
  if (now.getUTCMonth() < born.getUTCMonth() || (now.getUTCMonth() === born.getUTCMonth() && now.getUTCDate() < born.getUTCDate())) age -= 1;
  return age;
}

/** What the search box holds: a phone number, an MRN, or the start of a name. */
function searchQuery(text) {
  const value = text.trim();
  if (/^\+?[\d\s-]{6,}$/.test(value)) return { phone: value.replace(/[\s-]/g, '') };
  if (/\d/.test(value) && /^[A-Za-z0-9-]+$/.test(value)) return { mrn: value };
  return { q: value };
}

export function mountBooking(container, { user, live, announce }) {
  const slug = user.tenant.slug;
  let mounted = true;
  let doctors = [];
  let doctor = null;
  let day = null;
  /** The day's free slots as the availability API gave them (before live removals). */
  let slots = [];
  let slotsLoaded = false;
  /** The doctor's active appointments (id → {id, start, end, status}), from the topic. */
  const active = new Map();
  /** The chosen slot's start, exactly as the API gave it. */
  let chosenSlot = null;
  let chosenPatient = null;
  let booking = false;
  let unsubscribe = null;
  let topic = null;
  let snapshotSeen = false;
  let snapshotTimer = null;
  let availabilitySerial = 0;
  let availabilityTimer = null;
  let searchSerial = 0;
  let searchTimer = null;
  /** slot start → its button, so that removals leave focus and the other buttons alone */
  const slotButtons = new Map();

  // ---- Step 1: the doctor ------------------------------------------------------------------
  const specialtySelect = h('select', { id: 'booking-specialty', onchange: renderDoctors });
  const doctorList = h('ul', { class: 'doctor-list', 'aria-label': 'Doctors' }, h('li', { class: 'placeholder' }, 'Loading doctors…'));

  // ---- Step 2: the day and time ------------------------------------------------------------
  const dayInput = h('input', {
    type: 'date', id: 'booking-day', name: 'day',
    onchange: () => { if (/^\d{4}-\d{2}-\d{2}$/.test(dayInput.value)) showDay(dayInput.value); },
  });
  const previousDay = h('button', { type: 'button', class: 'button', 'aria-label': 'Previous day', onclick: () => showDay(addDays(day, -1)) }, '‹');
  const nextDay = h('button', { type: 'button', class: 'button', 'aria-label': 'Next day', onclick: () => showDay(addDays(day, 1)) }, '›');
  const todayButton = h('button', { type: 'button', class: 'button', onclick: () => showDay(today(doctor.timezone)) }, 'Today');
  const dayLabel = h('p', { class: 'slots__day', id: 'booking-day-label' });
  const zoneNote = h('p', { class: 'hint' });
  const slotGrid = h('div', { class: 'slots', role: 'group', 'aria-labelledby': 'booking-day-label' });
  const slotStatus = h('p', { class: 'placeholder' }, 'Choose a doctor first.');
  const slotProblem = h('div', { role: 'alert' });

  // ---- Step 3: the patient -----------------------------------------------------------------
  const search = h('input', {
    type: 'search', id: 'patient-search', name: 'patient-search', autocomplete: 'off', spellcheck: 'false',
    placeholder: 'e.g. Kariuki, Wanj, MH12345678', 'aria-describedby': 'patient-search-hint', 'aria-controls': 'patient-results',
    oninput: () => searchSoon(),
    onkeydown: (event) => { if (event.key === 'Enter') { event.preventDefault(); runSearch(); } },
  });
  const results = h('ul', { class: 'patient-results', id: 'patient-results', 'aria-label': 'Patients found' });
  const searchStatus = h('p', { class: 'muted search-status', 'aria-live': 'polite' });

  // ---- Step 4: the booking -----------------------------------------------------------------
  const summary = h('dl', { class: 'booking-summary' });
  const kindInputs = Object.keys(KIND_LABELS).map((kind) => h('input', {
    type: 'radio', name: 'booking-kind', value: kind, id: `booking-kind-${kind}`, checked: kind === 'in_person',
  }));
  const reasonInput = h('input', { type: 'text', id: 'booking-reason', name: 'reason', maxlength: '500', autocomplete: 'off', placeholder: 'e.g. follow-up' });
  const bookButton = h('button', { type: 'submit', id: 'book-slot', class: 'button button--primary button--block', disabled: true }, 'Book appointment');
  const result = h('div', { id: 'booking-result', class: 'booking-result', 'aria-live': 'polite' });
  const problem = h('div', { class: 'board__problem', role: 'alert' });
  const stale = staleNotice(live, 'the list of free times');

  const root = h('section', { class: 'booking', id: 'booking', 'aria-labelledby': 'page-title', dataset: { chosenDoctor: '', day: '' } },
    h('header', { class: 'page-header' },
      h('div', {},
        h('h1', { id: 'page-title', tabindex: '-1' }, 'Book an appointment'),
        h('p', { class: 'muted' }, 'Pick a doctor, a free time and the patient. Times taken meanwhile disappear as it happens.'))),
    problem,
    stale.element,
    h('div', { class: 'booking__layout' },
      h('div', { class: 'booking__steps' },
        h('section', { class: 'card step', 'aria-labelledby': 'step-doctor' },
          h('header', { class: 'step__header' },
            h('h2', { id: 'step-doctor' }, h('span', { class: 'step__number', 'aria-hidden': 'true' }, '1'), 'Doctor'),
            h('div', { class: 'field field--inline' }, h('label', { for: 'booking-specialty' }, 'Specialty'), specialtySelect)),
          doctorList),
        h('section', { class: 'card step', 'aria-labelledby': 'step-time' },
          h('header', { class: 'step__header' },
            h('h2', { id: 'step-time' }, h('span', { class: 'step__number', 'aria-hidden': 'true' }, '2'), 'Day and time'),
            h('div', { class: 'day-nav day-nav--compact' },
              previousDay, h('label', { for: 'booking-day', class: 'sr-only' }, 'Day'), dayInput, nextDay, todayButton)),
          dayLabel, zoneNote, slotProblem, slotStatus, slotGrid),
        h('section', { class: 'card step', 'aria-labelledby': 'step-patient' },
          h('header', { class: 'step__header' },
            h('h2', { id: 'step-patient' }, h('span', { class: 'step__number', 'aria-hidden': 'true' }, '3'), 'Patient')),
          h('div', { class: 'field' },
            h('label', { for: 'patient-search' }, 'Find a patient'),
            search,
            h('p', { class: 'hint', id: 'patient-search-hint' }, 'The start of a given or family name (at least 2 letters), an MRN, or a phone number.')),
          searchStatus,
          results)),
      h('aside', { class: 'booking__aside' },
        h('form', { class: 'card step booking-form', novalidate: true, 'aria-labelledby': 'step-book', onsubmit: (event) => { event.preventDefault(); book(); } },
          h('h2', { id: 'step-book' }, 'Appointment'),
          summary,
          h('fieldset', { class: 'kind-choice' },
            h('legend', {}, 'Kind'),
            kindInputs.map((input) => h('label', { class: 'kind-choice__option', for: input.id }, input, KIND_LABELS[input.value]))),
          h('div', { class: 'field' }, h('label', { for: 'booking-reason' }, 'Reason ', h('span', { class: 'muted' }, '(optional)')), reasonInput),
          bookButton,
          result))));
  replaceChildren(container, root);
  renderSummary();

  // Past times cannot be booked: drop them as the clock passes them.
  const clockTimer = setInterval(() => { if (slotsLoaded) renderSlots(); }, 30_000);

  loadDoctors();

  // ---- Doctors -----------------------------------------------------------------------------

  async function loadDoctors({ keepChoice = false } = {}) {
    try {
      const answer = await request('GET', '/api/doctors', { query: { limit: 100 } });
      if (!mounted) return;
      doctors = answer.doctors || [];
    } catch (failure) {
      if (!mounted) return;
      replaceChildren(doctorList, h('li', {}, h('div', { class: 'notice notice--error' }, h('strong', {}, 'The list of doctors could not be read. '), failure.detail || failure.message)));
      return;
    }
    const specialties = [...new Set(doctors.flatMap((d) => d.specialties || []))].sort();
    const wanted = specialtySelect.value;
    replaceChildren(specialtySelect, h('option', { value: '' }, 'All'),
      specialties.map((s) => h('option', { value: s }, specialtiesText([s]))));
    specialtySelect.value = specialties.includes(wanted) ? wanted : '';
    if (doctors.length === 0) {
      replaceChildren(doctorList, h('li', { class: 'placeholder' }, 'No doctors yet. An admin registers doctors with their working hours.'));
      return;
    }
    if (keepChoice && doctor) {
      doctor = doctors.find((d) => d.id === doctor.id) || doctor;
      renderDoctors();
      return;
    }
    renderDoctors();
    const own = doctors.find((d) => d.user_id === user.id);
    const remembered = sessionStorage.getItem(CHOSEN_DOCTOR_KEY);
    const initial = doctors.find((d) => d.id === remembered) || own;
    if (initial) chooseDoctor(initial.id, { focus: false });
  }

  function renderDoctors() {
    const specialty = specialtySelect.value;
    const shown = doctors.filter((d) => !specialty || (d.specialties || []).includes(specialty));
    replaceChildren(doctorList, shown.length === 0
      ? h('li', { class: 'placeholder' }, 'No doctor has this specialty.')
      : shown.map((d) => {
        const next = d.next_free_slot;
        return h('li', {}, h('button', {
          type: 'button', class: 'doctor-option', 'aria-pressed': String(Boolean(doctor && doctor.id === d.id)),
          dataset: { doctorId: d.id }, onclick: () => chooseDoctor(d.id),
        },
        h('span', { class: 'doctor-option__name' }, d.display_name, d.user_id === user.id ? h('span', { class: 'muted' }, ' (you)') : null),
        h('span', { class: 'doctor-option__meta' }, specialtiesText(d.specialties) || 'No specialty listed'),
        h('span', { class: 'doctor-option__meta' }, `${d.facility_name} · ${d.consult_minutes} min`),
        h('span', { class: ['doctor-option__next', next ? null : 'doctor-option__next--none'] },
          next
            ? ['Next free ', h('time', { datetime: next.start, title: fullTime(next.start, d.timezone) },
              `${relativeDay(dayOf(next.start, d.timezone), d.timezone)} ${clock(next.start, d.timezone)}`)]
            : 'No free time in the next two weeks')));
      }));
  }

  function chooseDoctor(id, { focus = true } = {}) {
    const summaryOf = doctors.find((d) => d.id === id);
    if (!summaryOf) return;
    const changed = !doctor || doctor.id !== id;
    doctor = summaryOf;
    sessionStorage.setItem(CHOSEN_DOCTOR_KEY, id);
    root.dataset.chosenDoctor = id;
    for (const button of doctorList.querySelectorAll('[data-doctor-id]')) {
      button.setAttribute('aria-pressed', String(button.dataset.doctorId === id));
    }
    zoneNote.textContent = `Times are on the clock of ${doctor.facility_name} (${doctor.timezone}).`;
    if (!changed) return;
    chosenSlot = null;
    clearResult();
    active.clear();
    slotsLoaded = false;
    watch();
    // Start on the day of the doctor's next free time: that is where the front desk looks first.
    const first = doctor.next_free_slot ? dayOf(doctor.next_free_slot.start, doctor.timezone) : today(doctor.timezone);
    showDay(first);
    if (focus) dayInput.focus();
  }

  function watch() {
    if (unsubscribe) unsubscribe();
    topic = `tenant/${slug}/schedule/${doctor.id}`;
    snapshotSeen = false;
    unsubscribe = live.subscribe(topic, onMessage);
  }

  // ---- Day and free times --------------------------------------------------------------------

  function showDay(value) {
    if (!doctor) return;
    const first = today(doctor.timezone);
    day = value < first ? first : value;
    root.dataset.day = day;
    dayInput.value = day;
    dayInput.min = first;
    previousDay.disabled = day <= first;
    todayButton.disabled = day === first;
    dayLabel.replaceChildren(h('strong', {}, relativeDay(day, doctor.timezone)), ` · ${formatDayLong(day)}`);
    if (chosenSlot && dayOf(chosenSlot, doctor.timezone) !== day) chosenSlot = null;
    slots = [];
    slotsLoaded = false;
    slotButtons.clear();
    slotGrid.replaceChildren();
    slotProblem.replaceChildren();
    slotStatus.hidden = false;
    slotStatus.textContent = 'Loading free times…';
    renderSummary();
    clearTimeout(snapshotTimer);
    // The first read for a new subscription waits (briefly) for its snapshot, so that the
    // appointments it knows and the free times read after it fit together.
    if (snapshotSeen) loadAvailability();
    else snapshotTimer = setTimeout(loadAvailability, SNAPSHOT_GRACE_MS);
  }

  async function loadAvailability() {
    clearTimeout(snapshotTimer);
    clearTimeout(availabilityTimer);
    if (!doctor || !day) return;
    const serial = ++availabilitySerial;
    const forDoctor = doctor.id;
    const forDay = day;
    try {
      const answer = await request('GET', `/api/doctors/${forDoctor}/availability`, { query: { from: forDay, to: forDay } });
      if (!mounted || serial !== availabilitySerial || !doctor || doctor.id !== forDoctor || day !== forDay) return;
      slots = answer.slots || [];
      slotsLoaded = true;
      slotProblem.replaceChildren();
      renderSlots();
    } catch (failure) {
      if (!mounted || serial !== availabilitySerial) return;
      slotStatus.hidden = true;
      replaceChildren(slotProblem, h('div', { class: 'notice notice--error' }, h('strong', {}, 'Free times could not be read. '), failure.detail || failure.message));
    }
  }

  /** Reads the free times again soon (a burst of events causes one read). */
  function reloadAvailabilitySoon() {
    clearTimeout(availabilityTimer);
    availabilityTimer = setTimeout(loadAvailability, 100);
  }

  function isFree(slot) {
    if (Date.parse(slot.start) <= Date.now()) return false;
    for (const appointment of active.values()) if (overlaps(appointment, slot)) return false;
    return true;
  }

  /** Brings the buttons in line with the free slots, touching only those that change. */
  function renderSlots() {
    if (!slotsLoaded) return;
    const free = slots.filter(isFree);
    const wanted = new Set(free.map((slot) => slot.start));
    for (const [start, button] of slotButtons) {
      if (!wanted.has(start)) {
        button.remove();
        slotButtons.delete(start);
      }
    }
    let previous = null;
    for (const slot of free) {
      let button = slotButtons.get(slot.start);
      if (!button) {
        button = h('button', {
          type: 'button', class: 'slot', dataset: { slotStart: slot.start, slotEnd: slot.end },
          title: `${fullTime(slot.start, doctor.timezone)} to ${clock(slot.end, doctor.timezone)}`,
          onclick: () => chooseSlot(slot.start),
        }, h('time', { datetime: slot.start }, clock(slot.start, doctor.timezone)));
        slotButtons.set(slot.start, button);
        if (previous) previous.after(button);
        else slotGrid.prepend(button);
      }
      button.setAttribute('aria-pressed', String(chosenSlot === slot.start));
      previous = button;
    }
    slotStatus.hidden = free.length > 0;
    if (free.length === 0) {
      const next = addDays(day, 1);
      replaceChildren(slotStatus, `No free times ${relativeDay(day, doctor.timezone) === 'Today' ? 'left today' : 'on this day'}. `,
        h('button', { type: 'button', class: 'link-button', onclick: () => showDay(next) }, `Try ${relativeDay(next, doctor.timezone).toLowerCase()}`), '.');
    }
    if (chosenSlot && !wanted.has(chosenSlot)) chosenSlot = null;
    renderSummary();
  }

  function chooseSlot(start) {
    chosenSlot = start;
    if (result.dataset.outcome && result.dataset.outcome !== 'booked') clearResult();
    for (const [slotStart, button] of slotButtons) button.setAttribute('aria-pressed', String(slotStart === start));
    renderSummary();
  }

  function slotOf(start) {
    return slots.find((slot) => slot.start === start) || null;
  }

  // ---- Live --------------------------------------------------------------------------------

  function onMessage(message) {
    if (message.topic !== topic) return;
    if (message.type === 'snapshot') {
      snapshotSeen = true;
      problem.replaceChildren();
      active.clear();
      for (const appointment of message.data.appointments || []) if (isActive(appointment)) active.set(appointment.id, appointment);
      loadAvailability();
      return;
    }
    if (message.type === 'error') {
      replaceChildren(problem, subscriptionProblem(message, 'this doctor\'s schedule'));
      if (!slotsLoaded) loadAvailability();
      return;
    }
    const appointment = message.data && message.data.appointment;
    if (message.type.startsWith('appointment.') && appointment && appointment.id) {
      const before = active.get(appointment.id);
      if (isActive(appointment)) active.set(appointment.id, appointment);
      else active.delete(appointment.id);
      const released = before && (!isActive(appointment) || before.start !== appointment.start || before.end !== appointment.end);
      takenUnderUs(appointment);
      renderSlots();
      // A released time may be free again; only the hub knows (working hours, time off, other bookings).
      if (released) reloadAvailabilitySoon();
      return;
    }
    if (message.type.startsWith('doctor.')) {
      reloadAvailabilitySoon();
      if (message.type === 'doctor.hours_changed') loadDoctors({ keepChoice: true });
    }
  }

  /** Someone else took the time this page had chosen (this page's own booking is not "someone else"). */
  function takenUnderUs(appointment) {
    if (booking || !chosenSlot || !isActive(appointment)) return;
    const slot = slotOf(chosenSlot);
    if (!slot || !overlaps(slot, appointment)) return;
    showConflict(slot, appointment, 'Someone else took it a moment ago.');
  }

  // ---- Patients ----------------------------------------------------------------------------

  function searchSoon() {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(runSearch, SEARCH_DELAY_MS);
  }

  async function runSearch() {
    clearTimeout(searchTimer);
    const text = search.value.trim();
    const serial = ++searchSerial;
    const query = searchQuery(text);
    if (!text || (query.q !== undefined && text.length < 2)) {
      results.replaceChildren();
      searchStatus.textContent = text ? 'Type at least 2 letters.' : '';
      return;
    }
    searchStatus.textContent = 'Searching…';
    try {
      const answer = await request('GET', '/api/patients', { query });
      if (!mounted || serial !== searchSerial) return;
      const found = answer.patients || [];
      searchStatus.textContent = found.length === 0
        ? 'No patient matches.'
        : `${found.length} patient${found.length === 1 ? '' : 's'} found${answer.more ? '; type more to narrow it down' : ''}.`;
      replaceChildren(results, found.map((patient) => h('li', {}, h('button', {
        type: 'button', class: 'patient-option', dataset: { patientId: patient.id },
        'aria-pressed': String(Boolean(chosenPatient && chosenPatient.id === patient.id)),
        onclick: () => choosePatient(patient),
      },
      h('span', { class: 'patient-option__name' }, patient.family_name, ', ', patient.given_name),
      h('span', { class: 'patient-option__meta' },
        [`MRN ${patient.mrn}`, patient.birth_date ? `born ${patient.birth_date}${ageOf(patient.birth_date) !== null ? ` (${ageOf(patient.birth_date)})` : ''}` : null, patient.phone]
          .filter(Boolean).join(' · '))))));
    } catch (failure) {
      if (!mounted || serial !== searchSerial) return;
      results.replaceChildren();
      searchStatus.textContent = `The search failed: ${failure.detail || failure.message}`;
    }
  }

  function choosePatient(patient) {
    chosenPatient = patient;
    for (const button of results.querySelectorAll('[data-patient-id]')) {
      button.setAttribute('aria-pressed', String(button.dataset.patientId === patient.id));
    }
    if (result.dataset.outcome && result.dataset.outcome !== 'booked') clearResult();
    renderSummary();
  }

  // ---- Booking -----------------------------------------------------------------------------

  function renderSummary() {
    const slot = chosenSlot ? slotOf(chosenSlot) : null;
    const missing = (text) => h('span', { class: 'muted' }, text);
    replaceChildren(summary,
      h('dt', {}, 'Doctor'), h('dd', {}, doctor ? doctor.display_name : missing('Not chosen')),
      h('dt', {}, 'When'), h('dd', {}, slot
        ? [relativeDay(dayOf(slot.start, doctor.timezone), doctor.timezone), ' ', timeRange(slot.start, slot.end, doctor.timezone)]
        : missing('Choose a free time')),
      h('dt', {}, 'Patient'), h('dd', {}, chosenPatient ? patientName(chosenPatient) : missing('Search and choose')));
    bookButton.disabled = booking || !doctor || !slot || !chosenPatient;
  }

  function clearResult() {
    delete result.dataset.outcome;
    result.replaceChildren();
  }

  function setResult(outcome, ...content) {
    result.dataset.outcome = outcome;
    replaceChildren(result, h('div', { class: ['notice', outcome === 'booked' ? 'notice--success' : outcome === 'conflict' ? 'notice--warning' : 'notice--error'], role: outcome === 'booked' ? 'status' : 'alert' }, ...content));
  }

  function showConflict(slot, conflicting, why) {
    const sameDoctor = !conflicting || !conflicting.doctor_id || conflicting.doctor_id === doctor.id;
    if (sameDoctor) {
      if (conflicting && conflicting.id && conflicting.start && conflicting.end) {
        active.set(conflicting.id, { id: conflicting.id, start: conflicting.start, end: conflicting.end, status: 'booked' });
      }
      // The slot goes even when the hub did not name the appointment in the way.
      slots = slots.filter((s) => s.start !== slot.start);
    }
    chosenSlot = null;
    const zone = doctor.timezone;
    const wanted = [relativeDay(dayOf(slot.start, zone), zone), ' ', timeRange(slot.start, slot.end, zone)];
    const holder = conflicting && conflicting.start && conflicting.end
      ? [relativeDay(dayOf(conflicting.start, zone), zone).toLowerCase(), ' ', timeRange(conflicting.start, conflicting.end, zone)]
      : null;
    if (sameDoctor) {
      setResult('conflict',
        h('strong', {}, 'This slot was just taken.'),
        h('p', {}, wanted,
          !holder ? ' is no longer free.'
            : conflicting.start === slot.start && conflicting.end === slot.end ? ' now holds another appointment.'
              : [' overlaps another appointment, ', holder, '.'],
          why ? ` ${why}` : null),
        h('p', {}, 'Choose another time.'));
    } else {
      setResult('conflict',
        h('strong', {}, 'The patient already has an appointment then.'),
        h('p', {}, holder ? ['With another doctor, ', holder, '.'] : 'With another doctor.'),
        h('p', {}, 'Choose another time, or another patient.'));
    }
    renderSlots();
    announce(sameDoctor ? `This slot was just taken: ${clock(slot.start, zone)}. Choose another time.` : 'The patient already has an appointment at that time.');
  }

  async function book() {
    const slot = chosenSlot ? slotOf(chosenSlot) : null;
    if (booking || !doctor || !slot || !chosenPatient) return;
    const patient = chosenPatient;
    const forDoctor = doctor;
    booking = true;
    clearResult();
    bookButton.textContent = 'Booking…';
    renderSummary();
    const kind = (kindInputs.find((input) => input.checked) || kindInputs[0]).value;
    const reason = reasonInput.value.trim();
    try {
      const { body } = await postBooking({
        doctor_id: forDoctor.id, patient_id: patient.id, start: slot.start, end: slot.end, kind, ...(reason ? { reason } : {}),
      });
      if (!mounted) return;
      const appointment = body.appointment;
      if (forDoctor.id === doctor.id) {
        active.set(appointment.id, appointment);
        chosenSlot = null;
        renderSlots();
      }
      reasonInput.value = '';
      setResult('booked',
        h('strong', {}, 'Booked.'),
        h('p', {}, `${patientName(patient)} with ${forDoctor.display_name}, ${relativeDay(dayOf(appointment.start, forDoctor.timezone), forDoctor.timezone).toLowerCase()} `,
          timeRange(appointment.start, appointment.end, forDoctor.timezone), ` (${KIND_LABELS[appointment.kind] || appointment.kind}).`),
        h('p', {}, h('a', { href: '#/schedule' }, 'Open the schedule')));
      announce(`Booked ${patientName(patient)} at ${clock(appointment.start, forDoctor.timezone)}.`);
      // The doctor's "next free" may have moved on.
      loadDoctors({ keepChoice: true });
    } catch (failure) {
      if (!mounted) return;
      if (failure.status === 409) {
        showConflict(slot, (failure.body && failure.body.conflicting_appointment) || null, null);
      } else {
        setResult('error', h('strong', {}, 'Not booked. '), failure.detail || failure.message);
        // A time that went by (or hours that changed) shows in a fresh read.
        if (failure.status === 400) reloadAvailabilitySoon();
      }
    } finally {
      booking = false;
      bookButton.textContent = 'Book appointment';
      renderSummary();
    }
  }

  return () => {
    mounted = false;
    if (unsubscribe) unsubscribe();
    stale.stop();
    clearTimeout(snapshotTimer);
    clearTimeout(availabilityTimer);
    clearTimeout(searchTimer);
    clearInterval(clockTimer);
  };
}
