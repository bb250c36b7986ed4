// What the appointment pages (the doctor's day, booking, a patient's own appointments) share:
// calendar days and clock times in a doctor's facility time zone (appointments are UTC instants,
// a doctor's day is local to their facility), appointment statuses in words and shapes, merging
// an appointment seen twice (from the HTTP API with names, from a live event without), the
// "paused" notice for a dropped live connection, and the dialog that cancels with a reason.

import { request } from './api.js';
import { h, replaceChildren } from './dom.js';

export const APPOINTMENT_STATUS_LABELS = {
  booked: 'Booked',
  checked_in: 'Checked in',
  completed: 'Completed',
  cancelled: 'Cancelled',
  no_show: 'No-show',
};

export const KIND_LABELS = { in_person: 'In person', video: 'Video' };

/** Booked and checked-in appointments hold their time; the others released it. */
export function isActive(appointment) {
  return appointment.status === 'booked' || appointment.status === 'checked_in';
}

export function appointmentStatusBadge(status) {
  return h('span', { class: ['status', `status--appt-${status}`] },
    h('span', { class: 'status__mark', 'aria-hidden': 'true' }),
    APPOINTMENT_STATUS_LABELS[status] || status);
}

/** "General practice, Internal medicine" */
export function specialtiesText(specialties) {
  return (specialties || []).map((s) => s.charAt(0).toUpperCase() + s.slice(1)).join(', ');
}

// ---------------------------------------------------------------------------------------------
// Days and times in a time zone. A day is "YYYY-MM-DD", a calendar day where the doctor works.

const pad = (n) => String(n).padStart(2, '0');
const cached = new Map();

function formatter(key, make) {
  let found = cached.get(key);
  if (!found) {
    found = make();
    cached.set(key, found);
  }
  return found;
}

function toMs(instant) {
  return typeof instant === 'number' ? instant : Date.parse(instant);
}

/** The wall-clock reading of `ms` in `timeZone`. */
function wallClock(ms, timeZone) {
  const parts = {};
  const format = formatter(`parts|${timeZone}`, () => new Intl.DateTimeFormat('en-US', {
    timeZone, hourCycle: 'h23', year: 'numeric', month: '2-digit', day: '2-digit', hour: '2-digit', minute: '2-digit', second: '2-digit',
  }));
  for (const { type, value } of format.formatToParts(new Date(ms))) parts[type] = value;
  return {
    year: Number(parts.year), month: Number(parts.month), day: Number(parts.day),
    hour: Number(parts.hour) % 24, minute: Number(parts.minute), second: Number(parts.second),
  };
}

/** The calendar day (in `timeZone`) that `instant` falls on. */
export function dayOf(instant, timeZone) {
  const w = wallClock(toMs(instant), timeZone);
  return `${w.year}-${pad(w.month)}-${pad(w.day)}`;
}

export function today(timeZone) {
  return dayOf(Date.now(), timeZone);
}

/** How far `timeZone`'s clock is ahead of UTC at `ms`. */
function offsetMs(ms, timeZone) {
  const w = wallClock(ms, timeZone);
  return Date.UTC(w.year, w.month - 1, w.day, w.hour, w.minute, w.second) - Math.floor(ms / 1000) * 1000;
}

/** The first instant (ms) of `day` in `timeZone`. */
export function startOfDay(day, timeZone) {
  const [year, month, date] = day.split('-').map(Number);
  const naive = Date.UTC(year, month - 1, date);
  // The offset at midnight may differ from the one a few hours off it (a DST change that day):
  // a second pass settles on the offset in force at the instant found.
  const first = naive - offsetMs(naive, timeZone);
  const second = naive - offsetMs(first, timeZone);
  return second;
}

/** The UTC instants `[from, to)` that make up `day` in `timeZone`, as ISO strings. */
export function dayRange(day, timeZone) {
  return {
    from: new Date(startOfDay(day, timeZone)).toISOString(),
    to: new Date(startOfDay(addDays(day, 1), timeZone)).toISOString(),
  };
}

export function addDays(day, count) {
  const [year, month, date] = day.split('-').map(Number);
  return new Date(Date.UTC(year, month - 1, date + count)).toISOString().slice(0, 10);
}

/** "monday" ... "sunday", as the hub names working-hour days. */
export function weekdayOf(day) {
  const [year, month, date] = day.split('-').map(Number);
  return ['sunday', 'monday', 'tuesday', 'wednesday', 'thursday', 'friday', 'saturday'][new Date(Date.UTC(year, month - 1, date)).getUTCDay()];
}

function dayAsDate(day) {
  const [year, month, date] = day.split('-').map(Number);
  return new Date(Date.UTC(year, month - 1, date, 12));
}

/** "Thursday 26 November 2026" (in the reader's language). */
export function formatDayLong(day) {
  return formatter('day-long', () => new Intl.DateTimeFormat(undefined, {
    weekday: 'long', day: 'numeric', month: 'long', year: 'numeric', timeZone: 'UTC',
  })).format(dayAsDate(day));
}

/** "Thu 26 Nov" */
export function formatDayShort(day) {
  return formatter('day-short', () => new Intl.DateTimeFormat(undefined, {
    weekday: 'short', day: 'numeric', month: 'short', timeZone: 'UTC',
  })).format(dayAsDate(day));
}

/** "Today", "Tomorrow", "Yesterday", or "Thu 26 Nov", relative to today in `timeZone`. */
export function relativeDay(day, timeZone) {
  const now = today(timeZone);
  if (day === now) return 'Today';
  if (day === addDays(now, 1)) return 'Tomorrow';
  if (day === addDays(now, -1)) return 'Yesterday';
  return formatDayShort(day);
}

/** "09:30" for `instant` on the clock of `timeZone`. */
export function clock(instant, timeZone) {
  return formatter(`clock|${timeZone}`, () => new Intl.DateTimeFormat(undefined, {
    hour: '2-digit', minute: '2-digit', timeZone,
  })).format(new Date(toMs(instant)));
}

/** "Thu 26 Nov 2026, 09:30 (Africa/Nairobi)", for titles. */
export function fullTime(instant, timeZone) {
  const text = formatter(`full|${timeZone}`, () => new Intl.DateTimeFormat(undefined, {
    weekday: 'short', day: 'numeric', month: 'short', year: 'numeric', hour: '2-digit', minute: '2-digit', timeZone,
  })).format(new Date(toMs(instant)));
  return `${text} (${timeZone})`;
}

/** `<time>` elements for "09:00–09:30" in `timeZone`. */
export function timeRange(start, end, timeZone) {
  return [
    h('time', { datetime: start, title: fullTime(start, timeZone) }, clock(start, timeZone)),
    '–',
    h('time', { datetime: end, title: fullTime(end, timeZone) }, clock(end, timeZone)),
  ];
}

export function overlaps(a, b) {
  return toMs(a.start) < toMs(b.end) && toMs(b.start) < toMs(a.end);
}

// ---------------------------------------------------------------------------------------------
// One appointment, seen from two sides

/**
 * `incoming` merged over `known` (the same appointment): the newer state wins (by `updated_at`),
 * and names and the cancel reason, which live events do not carry, are kept.
 */
export function mergeAppointment(known, incoming) {
  if (!known) return { ...incoming };
  const newer = Date.parse(incoming.updated_at || 0) >= Date.parse(known.updated_at || 0);
  const base = newer ? { ...known, ...incoming } : { ...incoming, ...known };
  for (const key of ['patient_name', 'doctor_name', 'cancel_reason']) {
    if (base[key] === undefined || base[key] === null) base[key] = known[key] ?? incoming[key] ?? null;
  }
  return base;
}

/** The appointment an `appointment.*` event carries, with the cancel reason where it has one. */
export function appointmentFromEvent(message) {
  const appointment = message.data && message.data.appointment;
  if (!appointment || !appointment.id) return null;
  const result = { ...appointment };
  if (message.type === 'appointment.cancelled' && message.data.reason) result.cancel_reason = message.data.reason;
  return result;
}

// ---------------------------------------------------------------------------------------------
// Shared page pieces

/**
 * A warning shown while the live connection is down (after a short grace, so a quick reconnect
 * does not flash it). Returns `{element, stop}`.
 */
export function staleNotice(live, what) {
  const element = h('div', { class: 'notice notice--warning', role: 'status', hidden: true });
  let timer = null;
  const stop = live.onStatus((status) => {
    clearTimeout(timer);
    if (status === 'connected' || status === 'idle' || status === 'connecting') {
      element.hidden = true;
      return;
    }
    timer = setTimeout(() => {
      replaceChildren(element, h('strong', {}, 'Live updates paused. '),
        status === 'closed'
          ? 'The connection to the hub is closed; sign in again to resume.'
          : `Reconnecting to the hub; ${what} shows the last known state and catches up automatically once connected.`);
      element.hidden = false;
    }, 2_000);
  });
  return { element, stop: () => { clearTimeout(timer); stop(); } };
}

/** A live subscription's refusal, in words. */
export function subscriptionProblem(message, what) {
  const text = message.error === 'forbidden'
    ? `Your role may not watch ${what}.`
    : message.error === 'unavailable'
      ? `The hub cannot read ${what} right now; retrying…`
      : `Live updates for ${what} are not available (${message.error}).`;
  return h('div', { class: 'notice notice--error' }, h('strong', {}, text), message.detail ? h('p', {}, message.detail) : null);
}

/**
 * The dialog that cancels an appointment with a reason (`POST /api/appointments/{id}/cancel`).
 * `open(appointment, {summary, onCancelled, returnFocus})`: `summary` describes it (text or
 * nodes); `onCancelled(answer, reason)` gets the hub's `{appointment, seq}` and the reason given.
 */
export function createCancelDialog() {
  let current = null;
  let busy = false;
  const title = h('h2', { id: 'cancel-dialog-title' }, 'Cancel appointment');
  const summary = h('p', { class: 'cancel-dialog__summary' });
  const reason = h('textarea', {
    id: 'cancel-reason', name: 'reason', rows: '3', maxlength: '500', required: true, 'aria-describedby': 'cancel-reason-hint',
  });
  const error = h('div', { class: 'form-error', role: 'alert' });
  const confirm = h('button', { type: 'submit', class: 'button button--danger' }, 'Cancel appointment');
  const keep = h('button', { type: 'button', class: 'button', onclick: () => element.close() }, 'Keep it');
  const form = h('form', { class: 'cancel-dialog__form', novalidate: true, onsubmit: submit },
    title, summary,
    h('div', { class: 'field' },
      h('label', { for: 'cancel-reason' }, 'Reason'),
      reason,
      h('p', { class: 'hint', id: 'cancel-reason-hint' }, 'Kept with the appointment and shown to the patient and the clinic. Up to 500 characters.')),
    error,
    h('div', { class: 'dialog-actions' }, keep, confirm));
  const element = h('dialog', { class: 'cancel-dialog', 'aria-labelledby': 'cancel-dialog-title' }, form);

  async function submit(event) {
    event.preventDefault();
    if (busy || !current) return;
    error.replaceChildren();
    const text = reason.value.trim();
    if (!text) {
      error.textContent = 'Give a reason for cancelling.';
      reason.setAttribute('aria-invalid', 'true');
      reason.focus();
      return;
    }
    reason.removeAttribute('aria-invalid');
    busy = true;
    confirm.disabled = true;
    confirm.textContent = 'Cancelling…';
    const target = current;
    try {
      const answer = await request('POST', `/api/appointments/${target.appointment.id}/cancel`, { body: { reason: text } });
      target.done = true;
      element.close();
      if (target.onCancelled) target.onCancelled(answer, text);
    } catch (failure) {
      error.replaceChildren(h('strong', {}, 'Not cancelled. '), failure.detail || failure.message);
      if (failure.field === 'reason') reason.setAttribute('aria-invalid', 'true');
    } finally {
      busy = false;
      confirm.disabled = Boolean(current && !isActive(current.appointment));
      confirm.textContent = 'Cancel appointment';
    }
  }

  element.addEventListener('close', () => {
    const target = current;
    current = null;
    if (target && target.returnFocus) target.returnFocus(target.done);
  });

  return {
    element,
    open(appointment, { summary: text, onCancelled, returnFocus } = {}) {
      current = { appointment, onCancelled, returnFocus, done: false };
      confirm.disabled = false;
      replaceChildren(summary, text || '');
      reason.value = '';
      reason.removeAttribute('aria-invalid');
      error.replaceChildren();
      element.showModal();
      reason.focus();
    },
    /** The appointment changed elsewhere while the dialog is open: say so if it is over. */
    appointmentChanged(appointment) {
      if (current && element.open && current.appointment.id === appointment.id && !isActive(appointment)) {
        current.appointment = appointment;
        error.replaceChildren(h('strong', {}, 'Nothing to cancel. '),
          `This appointment was just marked ${(APPOINTMENT_STATUS_LABELS[appointment.status] || appointment.status).toLowerCase()} elsewhere.`);
        confirm.disabled = true;
        keep.focus();
      }
    },
    close() {
      if (element.open) element.close();
    },
  };
}
