// End-to-end check of the booking page in headless Chromium, as two front desks see it: a nurse
// (page A) and an admin (page B), each signed in through the form in a browser context of their
// own, open #/book, choose the same doctor, day and free time and each a patient, and press "Book"
// at the same moment. The hub must take exactly one booking: one page shows data-outcome="booked",
// the other data-outcome="conflict" ("This slot was just taken"), and the time disappears from
// both pages' lists of free times (the loser's from the 409, the winner's from its own booking,
// and both from the live schedule topic).
//
// The two patients are this test's own ("Racecheck"), registered through the API on the first
// run and found again on later ones; the appointment booked is cancelled at the end, so the run
// can be repeated against the same hub.
//
// Run by tests/browser_booking.rs against a fresh `hub demo`; by hand, against a running hub (e.g.
// `hub demo --listen 127.0.0.1:18124`), after `npm ci --prefix tests/browser`:
//   MEDHUB_URL=http://127.0.0.1:18124 node tests/browser/booking_race.mjs
// Environment: MEDHUB_URL (required), MEDHUB_TENANT (demo), MEDHUB_PASSWORD (medhub-demo-2026),
// MEDHUB_EMAIL_A (nurse@demo.medhub), MEDHUB_EMAIL_B (admin@demo.medhub), CHROMIUM_PATH
// (/usr/bin/chromium). Exits 0 when every check passes, 1 with a message naming the failed check.
// The helpers every story shares (the API, the sign-in form, the watchdog, …) are in ./lib.mjs.

import { api, apiLogin, baseConfig, dayIn, fail, RENDER_TIMEOUT_MS, runStory, signInThroughForm, stepper, watchForProblems, withChromium } from './lib.mjs';

const config = {
  ...baseConfig,
  emailA: process.env.MEDHUB_EMAIL_A || 'nurse@demo.medhub',
  emailB: process.env.MEDHUB_EMAIL_B || 'admin@demo.medhub',
};

/** How long a change may take to reach a page. */
const LIVE_TIMEOUT_MS = 10_000;
/** The whole run; a hung browser or hub must not hang CI. */
const RUN_TIMEOUT_MS = 120_000;
/** A slot this close to now could pass while the test runs; it takes a later one. */
const SLOT_LEAD_MS = 10 * 60 * 1000;
const TEST_FAMILY_NAME = 'Racecheck';
const TEST_PATIENTS = [
  { given_name: 'Ruth', family_name: TEST_FAMILY_NAME, birth_date: '1990-04-01', sex: 'female' },
  { given_name: 'Rashid', family_name: TEST_FAMILY_NAME, birth_date: '1985-09-17', sex: 'male' },
];

const step = stepper('booking-race');

// ---- The hub's HTTP API, used directly (not through the pages) -------------------------------

/** This test's two patients: found by name, registered if missing. */
async function testPatients(token) {
  const found = (await api('GET', '/api/patients', { token, query: { q: TEST_FAMILY_NAME } })).patients || [];
  const patients = [];
  for (const wanted of TEST_PATIENTS) {
    let patient = found.find((p) => p.given_name === wanted.given_name && p.family_name === wanted.family_name);
    if (!patient) {
      patient = await api('POST', '/api/patients', { token, body: wanted });
      step(`  registered test patient ${wanted.given_name} ${wanted.family_name} (${patient.id})`);
    }
    patients.push(patient);
  }
  return patients;
}

function addDays(day, count) {
  const [year, month, date] = day.split('-').map(Number);
  return new Date(Date.UTC(year, month - 1, date + count)).toISOString().slice(0, 10);
}

/**
 * A doctor with a free slot well ahead of now, the day of that slot (the doctor's calendar) and
 * the slot exactly as the availability API gives it (the pages carry that string).
 */
async function pickDoctorDaySlot(token) {
  const { doctors } = await api('GET', '/api/doctors', { token, query: { limit: 100 } });
  if (!doctors || doctors.length === 0) fail('the tenant has no doctors; run against `hub demo` (its seed registers three)');
  for (const doctor of doctors.filter((d) => d.next_free_slot)) {
    let day = dayIn(doctor.next_free_slot.start, doctor.timezone);
    for (let tries = 0; tries < 7; tries += 1, day = addDays(day, 1)) {
      const { slots } = await api('GET', `/api/doctors/${doctor.id}/availability`, { token, query: { from: day, to: day } });
      // The middle of the day's free slots: clear of now, and of the seeded appointments at its start.
      const ahead = slots.filter((slot) => Date.parse(slot.start) - Date.now() > SLOT_LEAD_MS);
      if (ahead.length) return { doctor, day, slot: ahead[Math.floor(ahead.length / 2)] };
    }
  }
  return fail('no doctor has a free slot more than 10 minutes ahead within a week; run against a fresh `hub demo`');
}

// ---- The pages ------------------------------------------------------------------------------

/** Signs in, opens #/book and chooses the doctor, the day, the slot and the patient. */
async function prepareBooking(browser, { email, label, doctor, day, slot, patient }) {
  const context = await browser.newContext();
  const page = await context.newPage();
  // The losing page's 409 is logged by Chromium as a failed resource; that is the expected answer.
  const problems = watchForProblems(page, { step, label, expected: /status of 409/ });
  const bookEntry = page.locator('.nav__link[data-page="book"]');
  await signInThroughForm(page, { email, ready: bookEntry, missing: (within) => `${label}: no "Book" entry in the navigation ${within} as ${email}` });
  await bookEntry.click();
  const doctorButton = page.locator(`.doctor-option[data-doctor-id="${doctor.id}"]`);
  await doctorButton.waitFor({ timeout: RENDER_TIMEOUT_MS })
    .catch(() => fail(`${label}: the booking page lists no doctor ${doctor.display_name} (${doctor.id})`));
  await doctorButton.click();
  await page.locator('#booking-day').fill(day);
  const slotButton = page.locator(`[data-slot-start="${slot.start}"]`);
  await slotButton.waitFor({ timeout: RENDER_TIMEOUT_MS }).catch(async () => {
    const shown = await page.locator('[data-slot-start]').evaluateAll((buttons) => buttons.map((b) => b.dataset.slotStart));
    fail(`${label}: no button with data-slot-start="${slot.start}" on ${day}; the page shows ${shown.length ? shown.join(', ') : 'no free times'}`);
  });
  await slotButton.click();
  await page.locator('#patient-search').fill(TEST_FAMILY_NAME);
  const patientButton = page.locator(`[data-patient-id="${patient.id}"]`);
  await patientButton.waitFor({ timeout: RENDER_TIMEOUT_MS })
    .catch(() => fail(`${label}: searching "${TEST_FAMILY_NAME}" shows no result with data-patient-id="${patient.id}"`));
  await patientButton.click();
  const book = page.locator('#book-slot');
  await page.waitForFunction(() => document.getElementById('book-slot')?.disabled === false, null, { timeout: LIVE_TIMEOUT_MS })
    .catch(() => fail(`${label}: #book-slot stays disabled with a doctor, a slot and a patient chosen`));
  step(`  ${label} (${email}): ${doctor.display_name}, ${day}, slot ${slot.start}, patient ${patient.given_name} ${patient.family_name}; #book-slot enabled`);
  return { context, page, problems, book, label, email };
}

async function outcomeOf(side) {
  try {
    await side.page.waitForFunction(() => document.getElementById('booking-result')?.dataset.outcome, null, { timeout: LIVE_TIMEOUT_MS });
  } catch {
    fail(`${side.label}: #booking-result has no data-outcome ${LIVE_TIMEOUT_MS / 1000} s after clicking #book-slot`);
  }
  const result = side.page.locator('#booking-result');
  return { outcome: await result.getAttribute('data-outcome'), text: (await result.innerText()).replace(/\s+/g, ' ').trim() };
}

async function waitForSlotGone(side, slot) {
  try {
    await side.page.waitForFunction((start) => !document.querySelector(`[data-slot-start="${start}"]`), slot.start, { timeout: LIVE_TIMEOUT_MS });
  } catch {
    fail(`${side.label}: the slot button data-slot-start="${slot.start}" is still on the page ${LIVE_TIMEOUT_MS / 1000} s after the race`);
  }
}

// ---- The check ------------------------------------------------------------------------------

/** Appointments this run booked, cancelled at the end so the run can be repeated. */
const booked = [];

async function raceForOneSlot(browser, token) {
  const patients = await testPatients(token);
  const { doctor, day, slot } = await pickDoctorDaySlot(token);
  step(`racing for ${doctor.display_name}'s slot ${slot.start}–${slot.end} on ${day} (${doctor.timezone})`);

  const sides = [];
  try {
    sides.push(await prepareBooking(browser, { email: config.emailA, label: 'page A', doctor, day, slot, patient: patients[0] }));
    sides.push(await prepareBooking(browser, { email: config.emailB, label: 'page B', doctor, day, slot, patient: patients[1] }));

    step('  clicking #book-slot in both pages at once');
    // force: should the other page's booking reach this page first, its button is already
    // disabled and the page shows the conflict; the click must not wait for it to be enabled.
    await Promise.all(sides.map((side) => side.book.click({ force: true, timeout: 5_000 })));
    const outcomes = await Promise.all(sides.map(outcomeOf));
    sides.forEach((side, i) => step(`  ${side.label}: data-outcome="${outcomes[i].outcome}": ${outcomes[i].text}`));

    // Whatever the pages say, the hub must hold exactly one appointment in that slot.
    const { appointments } = await api('GET', '/api/appointments', { token, query: { doctor_id: doctor.id, from: slot.start, to: slot.end } });
    const holding = appointments.filter((a) => a.status === 'booked' || a.status === 'checked_in');
    booked.push(...holding.filter((a) => patients.some((p) => p.id === a.patient_id)));
    if (holding.length !== 1) fail(`the hub holds ${holding.length} active appointments in the slot; expected exactly 1`);

    const winners = sides.filter((_, i) => outcomes[i].outcome === 'booked');
    const losers = sides.filter((_, i) => outcomes[i].outcome === 'conflict');
    if (winners.length !== 1 || losers.length !== 1) {
      fail(`expected one page with data-outcome="booked" and one with "conflict"; got ${outcomes.map((o, i) => `${sides[i].label}: "${o.outcome}"`).join(', ')}`);
    }
    const [winner] = winners;
    const [loser] = losers;
    const loserText = outcomes[sides.indexOf(loser)].text;
    if (!/This slot was just taken/i.test(loserText)) fail(`${loser.label} shows the conflict as "${loserText}"; expected "This slot was just taken"`);
    const winnerPatient = patients[sides.indexOf(winner)];
    if (holding[0].patient_id !== winnerPatient.id) {
      fail(`${winner.label} says booked, but the hub's appointment is for patient ${holding[0].patient_id}, not ${winnerPatient.id}`);
    }
    step(`  ${winner.label} won; ${loser.label} was told the slot was just taken`);

    await Promise.all([waitForSlotGone(loser, slot), waitForSlotGone(winner, slot)]);
    step('  the slot button is gone from both pages');
    const problems = sides.flatMap((side) => side.problems);
    if (problems.length) fail(problems.join('\n'));
  } finally {
    for (const side of sides) await side.context.close().catch(() => {});
  }
}

async function cancelBooked(token) {
  for (const appointment of booked) {
    try {
      await api('POST', `/api/appointments/${appointment.id}/cancel`, { token, body: { reason: 'browser test: booking race cleanup' } });
    } catch (error) {
      step(`  (could not cancel appointment ${appointment.id}: ${error.message})`);
    }
  }
}

async function main() {
  if (!config.url) fail('set MEDHUB_URL to the hub, e.g. MEDHUB_URL=http://127.0.0.1:18124');
  step(`hub ${config.url}, tenant ${config.tenant}, page A ${config.emailA}, page B ${config.emailB}, chromium ${config.chromium}`);
  const token = await apiLogin(config.emailB);
  await withChromium({ runTimeoutMs: RUN_TIMEOUT_MS, cleanUp: () => cancelBooked(token) }, (browser) => raceForOneSlot(browser, token));
}

await runStory(step, main, 'PASS: two front desks raced for one slot; the hub took one booking, the other page showed the conflict, and both dropped the slot');
