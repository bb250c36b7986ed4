// A patient's own appointments (`#/my`): what is coming up, with whom, where and when (on the
// clock of the doctor's facility), kept current from the patient's own feed
// `tenant/{slug}/user/{user_id}`, and cancelling one with a reason.
//
// The feed's snapshot lists the active appointments without names; after it the page reads
// `GET /api/appointments` (which, for a patient, returns only their own) for the rest: finished
// and cancelled ones still to come, and doctors' names. Doctors' facilities and time zones come
// from `GET /api/doctors`. Events update a card in place; a reminder is shown at the top. An
// active video appointment links to its consult room (`#/consult/{appointment_id}`, consult.js).
//
// For automated tests: every card carries `data-appointment-id` and `data-status`.

import { request } from './api.js';
import { h, replaceChildren } from './dom.js';
import {
  KIND_LABELS, isActive, appointmentStatusBadge, specialtiesText, dayOf, relativeDay, formatDayLong, timeRange, clock,
  mergeAppointment, appointmentFromEvent, staleNotice, subscriptionProblem, createCancelDialog,
} from './appointments.js';

const SNAPSHOT_GRACE_MS = 2_000;
/** An appointment stays on the list until this long after it ended (the day's visit). */
const KEEP_AFTER_END_MS = 60 * 60 * 1000;

export function mountMyAppointments(container, { user, live, announce }) {
  const topic = `tenant/${user.tenant.slug}/user/${user.id}`;
  let mounted = true;
  /** doctor id → doctor (name, facility, time zone) */
  const doctors = new Map();
  const appointments = new Map();
  let loaded = false;
  let snapshotTimer = null;
  let loadSerial = 0;

  const problem = h('div', { class: 'board__problem', role: 'alert' });
  const stale = staleNotice(live, 'this list');
  const reminders = h('div', { class: 'reminders', 'aria-live': 'polite' });
  const body = h('div', { class: 'my__body', 'aria-busy': 'true' }, h('p', { class: 'placeholder' }, 'Loading your appointments…'));
  const zoneNote = h('p', { class: 'hint my__zone', hidden: true });
  const root = h('section', { class: 'my-appointments', id: 'my-appointments', 'aria-labelledby': 'page-title' },
    h('header', { class: 'page-header' },
      h('div', {},
        h('h1', { id: 'page-title', tabindex: '-1' }, 'My appointments'),
        h('p', { class: 'muted' }, 'Your upcoming appointments. Changes made by the clinic show here as they happen.'))),
    problem,
    stale.element,
    reminders,
    zoneNote,
    body);
  replaceChildren(container, root);
  const dialog = createCancelDialog();
  root.append(dialog.element);

  const unsubscribe = live.subscribe(topic, onMessage);
  // The feed's snapshot comes first when the line is up; a slow line does not hold the list back.
  snapshotTimer = setTimeout(load, SNAPSHOT_GRACE_MS);
  const clockTimer = setInterval(() => { if (loaded) render(); }, 60_000);

  async function loadDoctors() {
    const answer = await request('GET', '/api/doctors', { query: { limit: 100 } });
    for (const doctor of answer.doctors || []) doctors.set(doctor.id, doctor);
  }

  async function load() {
    clearTimeout(snapshotTimer);
    const serial = ++loadSerial;
    try {
      const [answer] = await Promise.all([
        request('GET', '/api/appointments', { query: { from: new Date(Date.now() - KEEP_AFTER_END_MS).toISOString(), limit: 200 } }),
        doctors.size ? null : loadDoctors(),
      ]);
      if (!mounted || serial !== loadSerial) return;
      for (const appointment of answer.appointments || []) {
        appointments.set(appointment.id, mergeAppointment(appointments.get(appointment.id), appointment));
      }
      loaded = true;
      problem.replaceChildren();
      render();
    } catch (failure) {
      if (!mounted || serial !== loadSerial) return;
      body.setAttribute('aria-busy', 'false');
      replaceChildren(loaded ? problem : body, h('div', { class: 'notice notice--error' },
        h('strong', {}, 'Your appointments could not be read. '), failure.detail || failure.message));
    }
  }

  function onMessage(message) {
    if (message.type === 'snapshot') {
      problem.replaceChildren();
      load();
      return;
    }
    if (message.type === 'error') {
      replaceChildren(problem, subscriptionProblem(message, 'your appointments'));
      if (!loaded) load();
      return;
    }
    const appointment = appointmentFromEvent(message);
    if (!appointment) return;
    const known = appointments.get(appointment.id);
    const merged = mergeAppointment(known, appointment);
    appointments.set(merged.id, merged);
    dialog.appointmentChanged(merged);
    if (!doctors.has(merged.doctor_id)) loadDoctors().then(render).catch(() => {});
    if (!loaded) return;
    render(merged.id);
    const doctor = doctors.get(merged.doctor_id);
    const zone = doctor ? doctor.timezone : undefined;
    const when = zone ? `${relativeDay(dayOf(merged.start, zone), zone)} at ${clock(merged.start, zone)}` : 'soon';
    const withWhom = doctor ? ` with ${doctor.display_name}` : '';
    const said = {
      'appointment.booked': `New appointment${withWhom}, ${when.charAt(0).toLowerCase()}${when.slice(1)}.`,
      'appointment.rescheduled': `Your appointment${withWhom} moved to ${when.charAt(0).toLowerCase()}${when.slice(1)}.`,
      'appointment.cancelled': `Your appointment${withWhom} was cancelled.`,
      'appointment.checked_in': 'You are checked in.',
    }[message.type];
    if (said) announce(said);
    if (message.type === 'appointment.reminder') showReminder(merged, doctor);
  }

  function showReminder(appointment, doctor) {
    const zone = doctor ? doctor.timezone : 'UTC';
    const note = h('div', { class: 'notice notice--info', role: 'status', dataset: { reminderFor: appointment.id } },
      h('strong', {}, 'Reminder: '),
      `your appointment${doctor ? ` with ${doctor.display_name}` : ''} is ${relativeDay(dayOf(appointment.start, zone), zone).toLowerCase()} at `,
      h('time', { datetime: appointment.start }, clock(appointment.start, zone)),
      doctor ? `, ${doctor.facility_name}.` : '.',
      ' ',
      h('button', { type: 'button', class: 'link-button', onclick: () => note.remove() }, 'Dismiss'));
    reminders.querySelector(`[data-reminder-for="${appointment.id}"]`)?.remove();
    reminders.append(note);
  }

  function upcoming() {
    const cutoff = Date.now() - KEEP_AFTER_END_MS;
    return [...appointments.values()]
      .filter((a) => Date.parse(a.end) > cutoff)
      .sort((a, b) => Date.parse(a.start) - Date.parse(b.start) || (a.id < b.id ? -1 : 1));
  }

  function render(highlightId) {
    body.setAttribute('aria-busy', 'false');
    const list = upcoming();
    if (list.length === 0) {
      zoneNote.hidden = true;
      replaceChildren(body, h('div', { class: 'empty-state' },
        h('strong', {}, 'You have no upcoming appointments.'),
        h('p', {}, 'Appointments the clinic books for you appear here as soon as they are made.')));
      return;
    }
    const focusedId = document.activeElement?.closest?.('[data-appointment-id]')?.dataset.appointmentId;
    replaceChildren(body, h('ol', { class: 'my-list', 'aria-label': 'Upcoming appointments' }, list.map(card)));
    // Times are on the clinic's clock; say so once when that is not this device's clock.
    const zones = new Set(list.map((a) => doctors.get(a.doctor_id)?.timezone).filter(Boolean));
    const here = Intl.DateTimeFormat().resolvedOptions().timeZone;
    zoneNote.hidden = zones.size === 0 || (zones.size === 1 && zones.has(here));
    zoneNote.textContent = zones.size === 1 ? `Times are on your clinic's clock (${[...zones][0]}).` : 'Times are on each clinic\'s own clock.';
    if (focusedId) body.querySelector(`[data-appointment-id="${focusedId}"]`)?.focus();
    if (highlightId) {
      const element = body.querySelector(`[data-appointment-id="${highlightId}"]`);
      element?.classList.add('appt--changed');
    }
  }

  function card(appointment) {
    const doctor = doctors.get(appointment.doctor_id);
    const zone = doctor ? doctor.timezone : Intl.DateTimeFormat().resolvedOptions().timeZone;
    const dayText = dayOf(appointment.start, zone);
    const doctorName = appointment.doctor_name || (doctor && doctor.display_name) || 'Your doctor';
    const cancel = appointment.status === 'booked'
      ? h('button', {
        type: 'button', class: 'button button--small button--danger-quiet', dataset: { action: 'cancel' },
        'aria-label': `Cancel the appointment with ${doctorName}, ${relativeDay(dayText, zone)} ${clock(appointment.start, zone)}`,
        onclick: () => openCancel(appointment.id),
      }, 'Cancel')
      : null;
    const join = appointment.kind === 'video' && isActive(appointment)
      ? h('a', {
        href: `#/consult/${appointment.id}`, class: 'button button--small button--primary', dataset: { action: 'consult' },
        'aria-label': `Join the video consult with ${doctorName}, ${relativeDay(dayText, zone)} ${clock(appointment.start, zone)}`,
      }, 'Join video consult')
      : null;
    return h('li', { class: ['my-card', 'card', isActive(appointment) ? null : 'appt--inactive'], tabindex: '-1', dataset: { appointmentId: appointment.id, status: appointment.status } },
      h('div', { class: 'my-card__when' },
        h('span', { class: 'my-card__day' }, relativeDay(dayText, zone)),
        h('span', { class: 'my-card__date' }, formatDayLong(dayText)),
        h('span', { class: 'my-card__time' }, timeRange(appointment.start, appointment.end, zone))),
      h('div', { class: 'my-card__what' },
        h('strong', { class: 'my-card__doctor' }, doctorName),
        doctor ? h('span', { class: 'muted' }, [specialtiesText(doctor.specialties), doctor.facility_name].filter(Boolean).join(' · ')) : null,
        h('span', { class: 'muted' }, [KIND_LABELS[appointment.kind] || appointment.kind, appointment.reason].filter(Boolean).join(' · ')),
        appointment.status === 'cancelled' && appointment.cancel_reason ? h('span', { class: 'muted' }, `Cancelled: ${appointment.cancel_reason}`) : null,
),
      h('div', { class: 'my-card__status' }, appointmentStatusBadge(appointment.status), join, cancel));
  }

  function openCancel(id) {
    const appointment = appointments.get(id);
    if (!appointment) return;
    const doctor = doctors.get(appointment.doctor_id);
    const zone = doctor ? doctor.timezone : 'UTC';
    dialog.open(appointment, {
      summary: [h('strong', {}, appointment.doctor_name || (doctor && doctor.display_name) || 'Your appointment'), ' · ',
        relativeDay(dayOf(appointment.start, zone), zone), ' ', timeRange(appointment.start, appointment.end, zone)],
      onCancelled: (answer, reason) => {
        if (!mounted || !answer || !answer.appointment) return;
        appointments.set(id, mergeAppointment(appointments.get(id), { ...answer.appointment, cancel_reason: reason }));
        render(id);
        announce('Your appointment is cancelled.');
      },
      returnFocus: () => {
        const element = body.querySelector(`[data-appointment-id="${id}"]`);
        (element?.querySelector('[data-action="cancel"]') || element || document.getElementById('page-title'))?.focus();
      },
    });
  }

  return () => {
    mounted = false;
    unsubscribe();
    stale.stop();
    clearTimeout(snapshotTimer);
    clearInterval(clockTimer);
    dialog.close();
  };
}
