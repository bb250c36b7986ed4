// The doctor's day (`#/schedule`): one doctor's appointments on one calendar day of their
// facility, in time order and on the facility's clock, with each patient's name and the
// appointment's status, and the next step for it (check in, no-show, complete, cancel with a
// reason) for the roles the hub allows. A doctor sees their own day; nurses and admins pick the
// doctor. Previous day, next day, today, or any date. A doctor's active video appointments link
// to their consult room (`#/consult/{appointment_id}`, consult.js).
//
// Live: the page watches `tenant/{slug}/schedule/{doctor}`. After its snapshot the day is read
// through `GET /api/appointments` (the only source of patient names, and of finished appointments,
// which the topic's snapshot leaves out); every `appointment.*` event then updates its row in
// place, or adds or removes it when an appointment moves into or out of the day. An event naming a
// patient the page has no name for re-reads the day, so a UUID is never shown in place of a name.
//
// For automated tests: the root carries `data-doctor-id` and `data-day`; every row
// `data-appointment-id` and `data-status`, kept current.

import { request } from './api.js';
import { h, replaceChildren, formatTime, timeElement } from './dom.js';
import {
  APPOINTMENT_STATUS_LABELS, KIND_LABELS, isActive, appointmentStatusBadge, specialtiesText, dayOf, today, dayRange, addDays,
  weekdayOf, formatDayLong, relativeDay, timeRange, clock, fullTime, mergeAppointment, appointmentFromEvent, staleNotice,
  subscriptionProblem, createCancelDialog, overlaps,
} from './appointments.js';

/** Who may do what to an appointment (the hub's rules; it checks them again). */
const FRONT_DESK = ['admin', 'nurse', 'doctor'];
const COMPLETERS = ['admin', 'doctor'];
/** The doctor a nurse or admin last looked at, for coming back to the page. */
const CHOSEN_DOCTOR_KEY = 'medhub.schedule.doctor';
/** Whether cancelled appointments are listed (they are counted either way). */
const SHOW_CANCELLED_KEY = 'medhub.schedule.showCancelled';
/** How long the page waits for the live snapshot before reading the day anyway. */
const SNAPSHOT_GRACE_MS = 2_000;

const ACTIONS = {
  'check-in': { label: 'Check in', busy: 'Checking in…', done: 'checked in' },
  'no-show': { label: 'No-show', busy: 'Marking…', done: 'marked as a no-show' },
  complete: { label: 'Complete', busy: 'Completing…', done: 'completed' },
};

export function mountSchedule(container, { user, live, announce }) {
  const slug = user.tenant.slug;
  const picksDoctor = user.role !== 'doctor';
  let mounted = true;
  /** Doctors from `GET /api/doctors` (the picker). */
  let doctors = [];
  /** The doctor shown: their profile (`GET /api/doctors/{id}`) merged over their summary. */
  let doctor = null;
  let day = null;
  /** appointment id → appointment (with names once known) on the day shown */
  const appointments = new Map();
  /** appointment id → the row element */
  const rows = new Map();
  /** appointment id → a refusal to show on its row */
  const rowErrors = new Map();
  /** appointment id → the action under way */
  const pending = new Map();
  let unsubscribe = null;
  let snapshotTimer = null;
  let loadSerial = 0;
  let loaded = false;
  let refreshTimer = null;
  let topic = null;
  /** Whether the current subscription has had its snapshot (reads of the day wait for it). */
  let snapshotSeen = false;

  const subtitle = h('p', { class: 'muted' }, picksDoctor ? 'A doctor\'s appointments for one day, live.' : 'Your appointments for one day, live.');
  const updated = h('p', { class: 'board__updated muted', 'aria-live': 'off' });
  const problem = h('div', { class: 'board__problem', role: 'alert' });
  const stale = staleNotice(live, 'the schedule');
  const doctorSelect = h('select', { id: 'schedule-doctor', onchange: () => chooseDoctor(doctorSelect.value) });
  const dayTitle = h('h2', { class: 'day-nav__title', id: 'schedule-day-title', 'aria-live': 'polite' });
  const previous = h('button', { type: 'button', class: 'button', onclick: () => showDay(addDays(day, -1)) },
    h('span', { 'aria-hidden': 'true' }, '‹ '), 'Previous day');
  const next = h('button', { type: 'button', class: 'button', onclick: () => showDay(addDays(day, 1)) },
    'Next day', h('span', { 'aria-hidden': 'true' }, ' ›'));
  const todayButton = h('button', { type: 'button', class: 'button', onclick: () => showDay(today(doctor.timezone)) }, 'Today');
  const dateInput = h('input', {
    type: 'date', id: 'schedule-date', 'aria-label': 'Go to date',
    onchange: () => { if (/^\d{4}-\d{2}-\d{2}$/.test(dateInput.value)) showDay(dateInput.value); },
  });
  const dayMeta = h('div', { class: 'day-meta' });
  const showCancelled = h('input', {
    type: 'checkbox', id: 'schedule-show-cancelled', checked: sessionStorage.getItem(SHOW_CANCELLED_KEY) === 'true',
    onchange: () => {
      sessionStorage.setItem(SHOW_CANCELLED_KEY, String(showCancelled.checked));
      root.dataset.showCancelled = String(showCancelled.checked);
      renderCounts();
    },
  });
  const hiddenNote = h('p', { class: 'placeholder schedule__hidden', hidden: true });
  const list = h('ol', { class: 'appointments', 'aria-labelledby': 'schedule-day-title' });
  const body = h('div', { class: 'schedule__body', 'aria-busy': 'true' }, h('p', { class: 'placeholder' }, 'Loading the schedule…'));
  const toolbar = h('div', { class: 'schedule__toolbar', hidden: true },
    picksDoctor ? h('div', { class: 'field field--inline' }, h('label', { for: 'schedule-doctor' }, 'Doctor'), doctorSelect) : null,
    h('div', { class: 'day-nav' }, previous, todayButton, next, dateInput),
    h('div', { class: 'field field--inline' }, showCancelled, h('label', { for: 'schedule-show-cancelled' }, 'Show cancelled')));

  const root = h('section', { class: 'schedule', id: 'schedule', 'aria-labelledby': 'page-title', dataset: { doctorId: '', day: '', showCancelled: String(showCancelled.checked) } },
    h('header', { class: 'page-header' },
      h('div', {}, h('h1', { id: 'page-title', tabindex: '-1' }, picksDoctor ? 'Schedule' : 'My schedule'), subtitle),
      updated),
    problem,
    stale.element,
    toolbar,
    h('div', { class: 'day-card card' },
      h('header', { class: 'day-card__header' }, dayTitle, dayMeta),
      body));
  replaceChildren(container, root);

  const dialog = createCancelDialog();
  root.append(dialog.element);

  // Rows change with the clock too: a no-show can be marked only once the appointment started.
  const clockTimer = setInterval(() => { if (loaded) renderAllRows(); }, 30_000);

  start();

  async function start() {
    try {
      const answer = await request('GET', '/api/doctors', { query: { limit: 100 } });
      if (!mounted) return;
      doctors = answer.doctors || [];
    } catch (failure) {
      if (!mounted) return;
      showBodyMessage('The list of doctors could not be read.', failure.detail || failure.message, true);
      return;
    }
    if (!picksDoctor) {
      const own = doctors.find((d) => d.user_id === user.id);
      if (!own) {
        showBodyMessage('You have no schedule yet.', 'An admin registers you as a doctor, with your facility and working hours; your appointments then appear here.');
        return;
      }
      chooseDoctor(own.id);
      return;
    }
    if (doctors.length === 0) {
      showBodyMessage('No doctors yet.', 'An admin registers doctors, with their facility and working hours.');
      return;
    }
    replaceChildren(doctorSelect, doctors.map((d) => h('option', { value: d.id },
      `${d.display_name} — ${specialtiesText(d.specialties) || 'no specialty'} (${d.facility_name})`)));
    const remembered = sessionStorage.getItem(CHOSEN_DOCTOR_KEY);
    chooseDoctor(doctors.some((d) => d.id === remembered) ? remembered : doctors[0].id);
  }

  function showBodyMessage(title, text, isError = false) {
    body.setAttribute('aria-busy', 'false');
    replaceChildren(body, h('div', { class: isError ? 'notice notice--error' : 'empty-state' },
      h('strong', {}, title), text ? h('p', {}, text) : null));
  }

  async function chooseDoctor(id) {
    const summary = doctors.find((d) => d.id === id);
    if (!summary) return;
    if (picksDoctor) {
      sessionStorage.setItem(CHOSEN_DOCTOR_KEY, id);
      doctorSelect.value = id;
    }
    doctor = { ...summary };
    root.dataset.doctorId = id;
    subtitle.textContent = `${doctor.display_name} · ${doctor.facility_name} · times in ${doctor.timezone}`;
    toolbar.hidden = false;
    day = today(doctor.timezone);
    // The profile adds working hours and time off; the day shows without them meanwhile.
    request('GET', `/api/doctors/${id}`).then((profile) => {
      if (mounted && doctor && doctor.id === profile.id) {
        doctor = { ...doctor, ...profile };
        renderDayMeta();
      }
    }).catch(() => {});
    watch();
    showDay(day);
  }

  function watch() {
    if (unsubscribe) unsubscribe();
    topic = `tenant/${slug}/schedule/${doctor.id}`;
    snapshotSeen = false;
    unsubscribe = live.subscribe(topic, onMessage);
  }

  function showDay(value) {
    day = value;
    root.dataset.day = day;
    dateInput.value = day;
    todayButton.disabled = day === today(doctor.timezone);
    dayTitle.replaceChildren(
      h('span', { class: 'day-nav__relative' }, relativeDay(day, doctor.timezone)),
      ' ', h('span', {}, formatDayLong(day)));
    appointments.clear();
    rows.clear();
    rowErrors.clear();
    loaded = false;
    body.setAttribute('aria-busy', 'true');
    replaceChildren(body, h('p', { class: 'placeholder' }, 'Loading the day…'));
    renderDayMeta();
    // A new day reads at once; the first read of a new subscription waits for its snapshot (so
    // that nothing between the read and the snapshot is missed), but not for long.
    clearTimeout(snapshotTimer);
    if (snapshotSeen) loadDay();
    else snapshotTimer = setTimeout(loadDay, SNAPSHOT_GRACE_MS);
  }

  async function loadDay() {
    clearTimeout(snapshotTimer);
    const serial = ++loadSerial;
    const forDay = day;
    const forDoctor = doctor.id;
    try {
      const answer = await request('GET', '/api/appointments', { query: { doctor_id: forDoctor, ...dayRange(forDay, doctor.timezone), limit: 500 } });
      if (!mounted || serial !== loadSerial || forDay !== day || forDoctor !== doctor.id) return;
      for (const appointment of answer.appointments || []) {
        if (dayOf(appointment.start, doctor.timezone) !== day) continue;
        appointments.set(appointment.id, mergeAppointment(appointments.get(appointment.id), appointment));
      }
      loaded = true;
      problem.replaceChildren();
      renderAll();
      setUpdated();
    } catch (failure) {
      if (!mounted || serial !== loadSerial) return;
      if (!loaded) showBodyMessage('The day could not be read.', failure.detail || failure.message, true);
      else replaceChildren(problem, h('div', { class: 'notice notice--error' }, h('strong', {}, 'Names could not be refreshed. '), failure.detail || failure.message));
    }
  }

  /** Re-reads the day soon (several events in a burst cause one read). */
  function refreshSoon() {
    clearTimeout(refreshTimer);
    refreshTimer = setTimeout(loadDay, 150);
  }

  function onMessage(message) {
    if (message.topic !== topic) return;
    if (message.type === 'snapshot') {
      snapshotSeen = true;
      problem.replaceChildren();
      // Read the day now: the first time, and after a reconnect whose gap was too long to replay.
      loadDay();
      return;
    }
    if (message.type === 'error') {
      replaceChildren(problem, subscriptionProblem(message, 'this schedule'));
      if (!loaded) loadDay();
      return;
    }
    if (message.type.startsWith('appointment.')) {
      const appointment = appointmentFromEvent(message);
      if (appointment) applyAppointment(appointment, message);
      setUpdated(message.ts);
      return;
    }
    switch (message.type) {
      case 'doctor.hours_changed':
        doctor = { ...doctor, working_hours: message.data.working_hours, consult_minutes: message.data.consult_minutes };
        renderDayMeta();
        break;
      case 'doctor.time_off_added':
        doctor = { ...doctor, time_off: [...(doctor.time_off || []).filter((off) => off.id !== message.data.id), message.data] };
        renderDayMeta();
        break;
      case 'doctor.time_off_removed':
        doctor = { ...doctor, time_off: (doctor.time_off || []).filter((off) => off.id !== message.data.id) };
        renderDayMeta();
        break;
      default:
        // Newer than this console: the day as the hub has it now shows its effect.
        console.info(`medhub schedule: unknown event ${message.type}; re-reading the day`);
        refreshSoon();
    }
    setUpdated(message.ts);
  }

  function applyAppointment(incoming, message) {
    if (!loaded) {
      // The read on its way (or due) includes this change or is older; merge by updated_at either way.
      if (dayOf(incoming.start, doctor.timezone) === day) appointments.set(incoming.id, mergeAppointment(appointments.get(incoming.id), incoming));
      return;
    }
    const known = appointments.get(incoming.id);
    const onDay = dayOf(incoming.start, doctor.timezone) === day;
    if (!onDay) {
      if (known) {
        // Moved to another day.
        appointments.delete(incoming.id);
        rowErrors.delete(incoming.id);
        renderAll();
        announce(`${known.patient_name || 'An appointment'} moved to ${relativeDay(dayOf(incoming.start, doctor.timezone), doctor.timezone)} ${clock(incoming.start, doctor.timezone)}.`);
      }
      return;
    }
    const merged = mergeAppointment(known, incoming);
    if (!merged.patient_name) {
      const sameName = [...appointments.values()].find((a) => a.patient_id === merged.patient_id && a.patient_name);
      if (sameName) merged.patient_name = sameName.patient_name;
    }
    appointments.set(merged.id, merged);
    rowErrors.delete(merged.id);
    dialog.appointmentChanged(merged);
    if (!merged.patient_name) refreshSoon();
    const moved = known && known.start !== merged.start;
    if (!known || moved) renderAll();
    else renderRow(merged.id, { highlight: true });
    if (message.type !== 'appointment.reminder' && !pending.has(merged.id)) {
      const who = merged.patient_name || 'A patient';
      const at = clock(merged.start, doctor.timezone);
      const said = {
        'appointment.booked': `${who} booked at ${at}.`,
        'appointment.rescheduled': `${who} moved to ${at}.`,
        'appointment.cancelled': `${who}'s ${at} appointment was cancelled.`,
        'appointment.checked_in': `${who} checked in.`,
        'appointment.no_show': `${who} marked as a no-show.`,
        'appointment.completed': `${who}'s ${at} appointment completed.`,
      }[message.type];
      if (said) announce(said);
    }
    renderCounts();
  }

  function setUpdated(ts) {
    const at = ts || new Date().toISOString();
    replaceChildren(updated, ts ? 'Last change ' : 'Loaded ', timeElement(at, formatTime(at)));
  }

  // ---- Rendering ---------------------------------------------------------------------------

  function sorted() {
    return [...appointments.values()].sort((a, b) => Date.parse(a.start) - Date.parse(b.start) || (a.id < b.id ? -1 : 1));
  }

  function renderAll() {
    if (!loaded) return;
    body.setAttribute('aria-busy', 'false');
    const focusedId = document.activeElement?.closest?.('[data-appointment-id]')?.dataset.appointmentId;
    const ordered = sorted();
    if (ordered.length === 0) {
      rows.clear();
      replaceChildren(body, h('div', { class: 'empty-state' },
        h('strong', {}, `No appointments ${relativeDay(day, doctor.timezone) === 'Today' ? 'today' : 'on this day'}.`),
        h('p', {}, 'Book one on the ', h('a', { href: '#/book' }, 'booking page'), '.')));
      renderCounts();
      return;
    }
    for (const id of [...rows.keys()]) if (!appointments.has(id)) rows.delete(id);
    for (const appointment of ordered) {
      if (!rows.has(appointment.id)) rows.set(appointment.id, h('li', { class: 'appt', tabindex: '-1', dataset: { appointmentId: appointment.id } }));
      fillRow(rows.get(appointment.id), appointment);
    }
    replaceChildren(list, ordered.map((a) => rows.get(a.id)));
    if (list.parentNode !== body) replaceChildren(body, list, hiddenNote);
    renderCounts();
    if (focusedId && rows.has(focusedId) && !rows.get(focusedId).contains(document.activeElement)) rows.get(focusedId).focus();
  }

  function renderAllRows() {
    for (const id of rows.keys()) renderRow(id);
    renderCounts();
  }

  function renderRow(id, { highlight = false } = {}) {
    const element = rows.get(id);
    const appointment = appointments.get(id);
    if (!element || !appointment) return renderAll();
    const hadFocus = element.contains(document.activeElement) && element !== document.activeElement;
    fillRow(element, appointment);
    if (hadFocus) element.focus();
    if (highlight) {
      element.classList.remove('appt--changed');
      void element.offsetWidth; // restart the animation
      element.classList.add('appt--changed');
    }
    return undefined;
  }

  function fillRow(element, appointment) {
    const now = Date.now();
    const started = Date.parse(appointment.start) <= now;
    const over = Date.parse(appointment.end) <= now;
    element.dataset.status = appointment.status;
    element.classList.toggle('appt--now', isActive(appointment) && started && !over);
    element.classList.toggle('appt--inactive', !isActive(appointment));
    const name = appointment.patient_name
      ? h('span', { class: 'appt__patient' }, appointment.patient_name)
      : h('span', { class: 'appt__patient appt__patient--loading' }, 'Patient name loading…');
    const details = [KIND_LABELS[appointment.kind] || appointment.kind, appointment.reason].filter(Boolean).join(' · ');
    replaceChildren(element,
      h('div', { class: 'appt__time' },
        h('time', { class: 'appt__start', datetime: appointment.start, title: fullTime(appointment.start, doctor.timezone) }, clock(appointment.start, doctor.timezone)),
        h('span', { class: 'appt__until' }, 'until ',
          h('time', { datetime: appointment.end, title: fullTime(appointment.end, doctor.timezone) }, clock(appointment.end, doctor.timezone)))),
      h('div', { class: 'appt__main' },
        name,
        details ? h('span', { class: 'appt__details' }, details) : null,
        appointment.status === 'cancelled' && appointment.cancel_reason
          ? h('span', { class: 'appt__details' }, `Cancelled: ${appointment.cancel_reason}`) : null,
        rowErrors.has(appointment.id) ? h('span', { class: 'appt__error', role: 'alert' }, rowErrors.get(appointment.id)) : null),
      h('div', { class: 'appt__status' }, appointmentStatusBadge(appointment.status)),
      h('div', { class: 'appt__actions' }, actionsFor(appointment, started)));
  }

  function actionsFor(appointment, started) {
    if (!FRONT_DESK.includes(user.role) || !isActive(appointment)) return null;
    const busy = pending.get(appointment.id);
    const who = appointment.patient_name || 'this patient';
    const button = (action, extra = {}) => h('button', {
      type: 'button', class: ['button', 'button--small', extra.primary ? 'button--primary' : null, extra.danger ? 'button--danger-quiet' : null],
      disabled: Boolean(busy), dataset: { action },
      'aria-label': `${extra.label || ACTIONS[action]?.label}: ${who}, ${clock(appointment.start, doctor.timezone)}`,
      onclick: extra.onclick || (() => advance(appointment.id, action)),
    }, busy === action ? ACTIONS[action]?.busy || '…' : extra.label || ACTIONS[action].label);
    const buttons = [];
    // Only the appointment's own doctor opens its consult: the doctor looking at their own day.
    if (!picksDoctor && appointment.kind === 'video') {
      buttons.push(h('a', {
        href: `#/consult/${appointment.id}`, class: 'button button--small button--primary', dataset: { action: 'consult' },
        'aria-label': `Join video consult: ${who}, ${clock(appointment.start, doctor.timezone)}`,
      }, 'Join video consult'));
    }
    if (appointment.status === 'booked') buttons.push(button('check-in', { primary: !buttons.length }));
    if (COMPLETERS.includes(user.role)) buttons.push(button('complete', { primary: appointment.status === 'checked_in' }));
    // The hub accepts a no-show only once the appointment has started.
    if (appointment.status === 'booked' && started) buttons.push(button('no-show'));
    buttons.push(button('cancel', { label: 'Cancel', danger: true, onclick: () => openCancel(appointment.id) }));
    return buttons;
  }

  function renderCounts() {
    const counts = {};
    for (const appointment of appointments.values()) counts[appointment.status] = (counts[appointment.status] || 0) + 1;
    const shown = ['booked', 'checked_in', 'completed', 'no_show', 'cancelled'].filter((status) => counts[status]);
    const existing = dayMeta.querySelector('.day-counts');
    const element = h('ul', { class: 'counts day-counts', 'aria-label': 'Appointments by status' },
      shown.map((status) => h('li', { class: ['count', `count--appt-${status}`] },
        h('span', { class: 'status__mark', 'aria-hidden': 'true' }),
        h('span', { class: 'count__label' }, APPOINTMENT_STATUS_LABELS[status]),
        h('strong', { class: 'count__value' }, String(counts[status])))));
    if (existing) existing.replaceWith(element);
    else dayMeta.append(element);
    // Hidden cancelled rows are said, so an empty-looking day is not mistaken for a free one.
    const hidden = showCancelled.checked ? 0 : counts.cancelled || 0;
    hiddenNote.hidden = hidden === 0;
    hiddenNote.textContent = hidden === 0 ? ''
      : `${hidden} cancelled appointment${hidden === 1 ? ' is' : 's are'} hidden; tick "Show cancelled" to list ${hidden === 1 ? 'it' : 'them'}.`;
  }

  function renderDayMeta() {
    if (!doctor || !day) return;
    const hours = (doctor.working_hours || []).filter((block) => block.weekday === weekdayOf(day))
      .sort((a, b) => (a.start < b.start ? -1 : 1));
    const range = dayRange(day, doctor.timezone);
    const away = (doctor.time_off || []).filter((off) => overlaps(off, { start: range.from, end: range.to }));
    replaceChildren(dayMeta,
      h('p', { class: 'day-meta__hours' },
        doctor.working_hours === undefined ? null
          : hours.length ? `Working ${hours.map((b) => `${b.start}–${b.end}`).join(', ')}` : 'Not working this day',
        doctor.consult_minutes ? h('span', { class: 'muted' }, ` · ${doctor.consult_minutes}-minute consults`) : null),
      away.map((off) => h('p', { class: 'day-meta__away' },
        h('strong', {}, 'Away '), timeRange(off.start, off.end, doctor.timezone),
        dayOf(off.start, doctor.timezone) !== day || dayOf(off.end, doctor.timezone) !== day ? ' (spans days)' : null,
        off.reason ? `: ${off.reason}` : null)));
    renderCounts();
  }

  // ---- Actions -----------------------------------------------------------------------------

  async function advance(id, action) {
    const appointment = appointments.get(id);
    if (!appointment || pending.has(id)) return;
    pending.set(id, action);
    rowErrors.delete(id);
    renderRow(id);
    try {
      const answer = await request('POST', `/api/appointments/${id}/${action}`);
      pending.delete(id);
      if (!mounted) return;
      if (answer && answer.appointment) applyOwn(answer.appointment);
      announce(`${appointment.patient_name || 'The patient'} ${ACTIONS[action].done}.`);
    } catch (failure) {
      pending.delete(id);
      if (!mounted) return;
      rowErrors.set(id, `Not ${ACTIONS[action].done}: ${failure.detail || failure.message}`);
      // Refused because it changed elsewhere: the day as it is now explains why.
      if (failure.status === 409) refreshSoon();
    }
    renderRow(id);
    rows.get(id)?.focus();
  }

  /** Shows what the hub answered to this page's own change (its event may still be on its way). */
  function applyOwn(appointment) {
    if (dayOf(appointment.start, doctor.timezone) !== day) return;
    appointments.set(appointment.id, mergeAppointment(appointments.get(appointment.id), appointment));
    renderRow(appointment.id, { highlight: true });
    renderCounts();
  }

  function openCancel(id) {
    const appointment = appointments.get(id);
    if (!appointment) return;
    dialog.open(appointment, {
      summary: [h('strong', {}, appointment.patient_name || 'Patient'), ' · ', relativeDay(day, doctor.timezone), ' ',
        timeRange(appointment.start, appointment.end, doctor.timezone), ` · ${doctor.display_name}`],
      onCancelled: (answer, reason) => {
        if (!mounted) return;
        if (answer && answer.appointment) applyOwn({ ...answer.appointment, cancel_reason: reason });
        announce(`${appointment.patient_name || 'The appointment'} at ${clock(appointment.start, doctor.timezone)} cancelled.`);
      },
      returnFocus: () => {
        const row = rows.get(id);
        const again = row && row.querySelector('[data-action="cancel"]');
        (again || row || document.getElementById('page-title'))?.focus();
      },
    });
  }

  return () => {
    mounted = false;
    if (unsubscribe) unsubscribe();
    stale.stop();
    clearTimeout(snapshotTimer);
    clearTimeout(refreshTimer);
    clearInterval(clockTimer);
    dialog.close();
  };
}
