// End-to-end check of the video consult room in headless Chromium with a fake camera and
// microphone, as a doctor and their patient live it, each signed in through the form in a browser
// context of their own:
//   1. the patient opens "My appointments", presses "Join video consult" on the video appointment
//      and waits (the doctor has not opened the consult yet);
//   2. the doctor opens their schedule on the appointment's day and presses "Join video consult";
//   3. both pages join the consult through the hub: each page's remote video (the other's fake
//      camera, relayed by the hub) has frames (videoWidth > 0) and plays (currentTime advances over
//      a couple of seconds), and the doctor's page shows the patient's media statistics;
//   4. the patient's live connection drops: their page closes its peer connection, and once the
//      connection is back it joins again; the doctor's page saw them reconnecting, and each page
//      plays the other's video again;
//   5. the patient sends a chat message and the doctor's page shows it, and the doctor's answer
//      reaches the patient;
//   6. the patient presses "Leave consult": the doctor's page shows them as left and drops their
//      video;
//   7. the doctor writes the consult record and presses "End consult": both pages show the consult
//      ended, the doctor's with the appointment completed, and the patient's own appointments show
//      it completed.
//
// Run by tests/browser_consult.rs against a hub it set up; by hand (after
// `npm ci --prefix tests/browser`):
//   MEDHUB_URL=http://127.0.0.1:18124 MEDHUB_TENANT=alpha MEDHUB_PASSWORD=... \
//   MEDHUB_DOCTOR_EMAIL=doctor@alpha.test MEDHUB_PATIENT_EMAIL=patient@alpha.test \
//   MEDHUB_APPOINTMENT=<a booked video appointment of that doctor and patient> node tests/browser/consult.mjs
// MEDHUB_TENANT (demo), MEDHUB_PASSWORD (medhub-demo-2026) and CHROMIUM_PATH (/usr/bin/chromium)
// have defaults; MEDHUB_SCREENSHOTS=<dir> also saves each page as a PNG at the main steps (to look
// at the room). Exits 0 when every check passes, 1 with a message naming the failed check.
// The helpers every story shares (the API, the sign-in form, the watchdog, …) are in ./lib.mjs.

import { api, apiSession, baseConfig, dayIn, fail, RENDER_TIMEOUT_MS, runStory, signInThroughForm, stepper, watchForProblems, withChromium } from './lib.mjs';

const config = {
  ...baseConfig,
  doctorEmail: process.env.MEDHUB_DOCTOR_EMAIL || '',
  patientEmail: process.env.MEDHUB_PATIENT_EMAIL || '',
  appointment: process.env.MEDHUB_APPOINTMENT || '',
  screenshots: process.env.MEDHUB_SCREENSHOTS || '',
};

/** How long a change may take to reach a page. */
const LIVE_TIMEOUT_MS = 15_000;
/** How long media may take to flow once both are in the room (ICE, DTLS, a keyframe). */
const MEDIA_TIMEOUT_MS = 30_000;
/** The whole run; a hung browser or hub must not hang CI. */
const RUN_TIMEOUT_MS = 180_000;

const PATIENT_MESSAGE = 'Hello doctor, can you hear me?';
const DOCTOR_MESSAGE = 'Yes, loud and clear. Tell me about the cough.';
const RECORD = {
  chief_complaint: 'Persistent dry cough for three weeks',
  assessment: 'Likely post-viral cough; chest clear on history, no red flags',
  plan: 'Chest X-ray; salbutamol inhaler as needed',
  follow_up: 'Video review in two weeks',
};

const step = stepper('consult');

// ---- The pages ------------------------------------------------------------------------------

async function signIn(browser, email, label, navEntry) {
  const context = await browser.newContext({ permissions: ['camera', 'microphone'] });
  // Keeps the page's WebSockets within reach, so the test can drop its live connection.
  await context.addInitScript(() => {
    const Native = window.WebSocket;
    window.medhubTestSockets = [];
    window.WebSocket = class extends Native {
      constructor(...args) {
        super(...args);
        window.medhubTestSockets.push(this);
      }
    };
  });
  const page = await context.newPage();
  // Warnings are printed too. The patient's page asks for the consult before the doctor opened it:
  // those 404s are expected.
  const problems = watchForProblems(page, { step, label, logged: ['error', 'warning'], expected: /status of 404/ });
  const link = page.locator(`.nav__link[data-page="${navEntry}"]`);
  await signInThroughForm(page, { email, ready: link, missing: (within) => `${label}: no "${navEntry}" entry in the navigation ${within} as ${email}` });
  await link.click();
  return { context, page, problems, label };
}

/** What a page's consult room looks like now, for failure messages. */
async function describeRoom(side) {
  return side.page.evaluate(() => {
    const root = document.getElementById('consult');
    if (!root) return `not on the consult page (${location.hash}): ${document.querySelector('main')?.innerText.slice(0, 300)}`;
    const videos = [...document.querySelectorAll('video.consult-remote-video')].map((v) => `${v.dataset.participantId}: ${v.videoWidth}x${v.videoHeight} t=${v.currentTime.toFixed(2)} paused=${v.paused}`);
    const people = [...document.querySelectorAll('.consult-participant')].map((li) => `${li.dataset.role}=${li.dataset.connection}`);
    return `state=${root.dataset.state} media=${root.dataset.media} status="${document.getElementById('consult-media-status')?.textContent || ''}" `
      + `participants=[${people.join(', ')}] remote videos=[${videos.join('; ')}] problem="${document.querySelector('.board__problem')?.innerText || ''}"`;
  });
}

async function screenshot(side, name) {
  if (!config.screenshots) return;
  const path = `${config.screenshots}/consult-${name}-${side.label.replace(/\s+/g, '-')}.png`;
  await side.page.screenshot({ path, fullPage: true }).catch((error) => step(`  (no screenshot ${path}: ${error.message})`));
}

async function waitOn(side, what, predicate, arg, timeout = LIVE_TIMEOUT_MS) {
  try {
    await side.page.waitForFunction(predicate, arg, { timeout, polling: 200 });
  } catch {
    fail(`${side.label}: ${what} within ${timeout / 1000} s; the page shows ${await describeRoom(side)}`);
  }
}

/** The remote video of `participant` has frames and its playback time moves on. */
async function checkRemoteVideoPlays(side, participant, video) {
  const selector = `video.consult-remote-video[data-participant-id="${participant}"]`;
  await waitOn(side, `${video} does not play (no ${selector} with videoWidth > 0)`,
    (css) => { const v = document.querySelector(css); return Boolean(v && v.videoWidth > 0 && !v.paused); }, selector, MEDIA_TIMEOUT_MS);
  const first = await side.page.locator(selector).evaluate((v) => ({ time: v.currentTime, width: v.videoWidth, height: v.videoHeight, frames: v.getVideoPlaybackQuality?.().totalVideoFrames ?? null }));
  await side.page.waitForTimeout(2_500);
  const second = await side.page.locator(selector).evaluate((v) => ({ time: v.currentTime, frames: v.getVideoPlaybackQuality?.().totalVideoFrames ?? null }));
  if (!(second.time > first.time + 1)) {
    fail(`${side.label}: ${video} does not play: currentTime went from ${first.time} to ${second.time} in 2.5 s`);
  }
  if (first.frames !== null && second.frames !== null && !(second.frames > first.frames)) {
    fail(`${side.label}: ${video} shows no new frames (${first.frames} then ${second.frames})`);
  }
  step(`  ${side.label}: ${video} plays at ${first.width}x${first.height}; currentTime ${first.time.toFixed(2)} → ${second.time.toFixed(2)} s`
    + (first.frames !== null ? `, frames ${first.frames} → ${second.frames}` : ''));
}

// ---- The story ------------------------------------------------------------------------------

async function consult(browser) {
  const doctorLogin = await apiSession(config.doctorEmail);
  const patientLogin = await apiSession(config.patientEmail);
  const doctorUser = doctorLogin.user.id;
  const patientUser = patientLogin.user.id;
  const answer = await api('GET', `/api/appointments/${config.appointment}`, { token: doctorLogin.access_token });
  const appointment = answer.appointment || answer;
  if (appointment.kind !== 'video') fail(`appointment ${config.appointment} is ${appointment.kind}, not a video appointment`);
  const doctor = await api('GET', `/api/doctors/${appointment.doctor_id}`, { token: doctorLogin.access_token });
  const day = dayIn(appointment.start, doctor.timezone);
  step(`appointment ${appointment.id}: ${appointment.start} (${day} in ${doctor.timezone}), doctor ${config.doctorEmail}, patient ${config.patientEmail}`);

  const sides = [];
  try {
    // 1. The patient comes first and waits for the doctor.
    const patient = await signIn(browser, config.patientEmail, 'patient page', 'my');
    sides.push(patient);
    const card = patient.page.locator(`[data-appointment-id="${appointment.id}"]`);
    await card.waitFor({ timeout: RENDER_TIMEOUT_MS }).catch(() => fail(`patient page: "My appointments" lists no card for appointment ${appointment.id}`));
    await card.locator('[data-action="consult"]').click({ timeout: RENDER_TIMEOUT_MS })
      .catch(() => fail('patient page: the video appointment\'s card has no "Join video consult" link'));
    await waitOn(patient, 'no "waiting for your doctor" notice', () => Boolean(document.querySelector('.consult-waiting')));
    step('  patient page: on the consult page, waiting for the doctor to open the room');

    // 2. The doctor opens the room from their schedule.
    const doctorSide = await signIn(browser, config.doctorEmail, 'doctor page', 'schedule');
    sides.push(doctorSide);
    await doctorSide.page.locator('#schedule-date').waitFor({ timeout: RENDER_TIMEOUT_MS });
    await waitOn(doctorSide, 'the schedule never shows the doctor', () => Boolean(document.getElementById('schedule')?.dataset.doctorId));
    await doctorSide.page.locator('#schedule-date').fill(day);
    const row = doctorSide.page.locator(`.appt[data-appointment-id="${appointment.id}"]`);
    await row.waitFor({ timeout: RENDER_TIMEOUT_MS }).catch(() => fail(`doctor page: the schedule of ${day} has no row for appointment ${appointment.id}`));
    await row.locator('[data-action="consult"]').click({ timeout: RENDER_TIMEOUT_MS })
      .catch(() => fail('doctor page: the video appointment\'s row has no "Join video consult" link'));
    step(`  doctor page: opened the consult from the schedule of ${day}`);

    // 3. Both in the room, each seeing the other.
    for (const side of [doctorSide, patient]) {
      await waitOn(side, 'not in the room (data-media="in")', () => document.getElementById('consult')?.dataset.media === 'in', null, MEDIA_TIMEOUT_MS);
      await waitOn(side, 'the own camera does not show', () => (document.getElementById('consult-local-video')?.videoWidth || 0) > 0, null, MEDIA_TIMEOUT_MS);
    }
    step('  both pages joined the room and show their own camera');
    await waitOn(doctorSide, 'the consult is not in progress', () => document.getElementById('consult')?.dataset.state === 'in_progress');
    await checkRemoteVideoPlays(doctorSide, patientUser, 'the patient\'s video');
    await checkRemoteVideoPlays(patient, doctorUser, 'the doctor\'s video');
    await waitOn(doctorSide, 'no media statistics for the patient',
      (id) => Number(document.querySelector(`.consult-participant[data-participant-id="${id}"] .consult-participant__stats`)?.dataset.packetsReceived || 0) > 0,
      patientUser);
    const statsText = await doctorSide.page.locator(`.consult-participant[data-participant-id="${patientUser}"] .consult-participant__stats`).innerText();
    step(`  doctor page: the patient's media: ${statsText}`);
    await screenshot(doctorSide, 'in-room');
    await screenshot(patient, 'in-room');

    // 4. The patient's live connection drops and comes back.
    await doctorSide.page.evaluate((id) => {
      // Presence rows are redrawn on every change: note every state the patient's row showed.
      window.medhubSeenConnections = [];
      const list = document.getElementById('consult-participants');
      new MutationObserver(() => {
        const row = list.querySelector(`[data-participant-id="${id}"]`);
        if (row) window.medhubSeenConnections.push(row.dataset.connection);
      }).observe(list, { childList: true, subtree: true, attributes: true });
    }, patientUser);
    const dropped = await patient.page.evaluate(() => {
      const open = window.medhubTestSockets.filter((socket) => socket.readyState === WebSocket.OPEN);
      for (const socket of open) socket.close(4001, 'the test drops the line');
      return open.length;
    });
    if (dropped !== 1) fail(`patient page: expected one open live connection to drop, found ${dropped}`);
    await waitOn(patient, 'the page does not notice the dropped connection',
      () => ['reconnecting', 'joining', 'in'].includes(document.getElementById('consult')?.dataset.media) && window.medhubTestSockets.length > 1);
    await waitOn(patient, 'not back in the room after the connection came back', () => document.getElementById('consult')?.dataset.media === 'in'
      && window.medhubTestSockets.at(-1).readyState === WebSocket.OPEN, null, MEDIA_TIMEOUT_MS);
    await waitOn(doctorSide, 'the patient was never shown reconnecting, then connected again',
      () => window.medhubSeenConnections.includes('reconnecting') && window.medhubSeenConnections.at(-1) === 'connected');
    step('  the patient\'s live connection dropped; the doctor\'s page showed them reconnecting, and they joined again');
    await checkRemoteVideoPlays(doctorSide, patientUser, 'the patient\'s video, after they joined again,');
    await checkRemoteVideoPlays(patient, doctorUser, 'the doctor\'s video, after joining again,');

    // 5. Chat both ways.
    await patient.page.locator('#consult-chat-input').fill(PATIENT_MESSAGE);
    await patient.page.locator('#consult-chat-send').click();
    await waitOn(doctorSide, `the patient's message "${PATIENT_MESSAGE}" does not show`,
      (text) => [...document.querySelectorAll('.chat-message__body')].some((p) => p.textContent === text), PATIENT_MESSAGE);
    await doctorSide.page.locator('#consult-chat-input').fill(DOCTOR_MESSAGE);
    await doctorSide.page.locator('#consult-chat-send').click();
    await waitOn(patient, `the doctor's message "${DOCTOR_MESSAGE}" does not show`,
      (text) => [...document.querySelectorAll('.chat-message__body')].some((p) => p.textContent === text), DOCTOR_MESSAGE);
    step('  chat: the patient\'s message reached the doctor and the answer reached the patient');

    // 6. The patient leaves.
    await patient.page.locator('#consult-leave').click();
    await waitOn(patient, 'the patient page does not say it left', () => document.getElementById('consult')?.dataset.media === 'left');
    await waitOn(doctorSide, 'the patient is not shown as left',
      (id) => document.querySelector(`.consult-participant[data-participant-id="${id}"]`)?.dataset.connection === 'left', patientUser);
    await waitOn(doctorSide, 'the patient\'s video is still on the page',
      (id) => !document.querySelector(`video.consult-remote-video[data-participant-id="${id}"]`), patientUser);
    step('  the patient left; the doctor\'s page shows them as left and their video is gone');

    // 7. The doctor ends the consult with its record.
    await doctorSide.page.locator('#consult-chief-complaint').fill(RECORD.chief_complaint);
    await doctorSide.page.locator('#consult-assessment').fill(RECORD.assessment);
    await doctorSide.page.locator('#consult-plan').fill(RECORD.plan);
    await doctorSide.page.locator('#consult-follow-up').fill(RECORD.follow_up);
    await doctorSide.page.locator('#consult-end').click();
    await waitOn(doctorSide, 'the consult is not shown ended with the appointment completed',
      () => { const root = document.getElementById('consult'); return root?.dataset.state === 'ended' && root.dataset.appointmentStatus === 'completed'; });
    await waitOn(doctorSide, 'the doctor\'s page still holds media', () => document.getElementById('consult')?.dataset.media === 'out'
      && !document.querySelector('video.consult-remote-video') && !document.getElementById('consult-local-video')?.srcObject);
    const endedText = (await doctorSide.page.locator('#consult-ended').innerText()).replace(/\s+/g, ' ').trim();
    if (!endedText.includes(RECORD.plan)) fail(`doctor page: the ended notice does not show the record: "${endedText}"`);
    await waitOn(patient, 'the consult is not shown ended', () => document.getElementById('consult')?.dataset.state === 'ended');
    step(`  the doctor ended the consult: "${endedText.slice(0, 120)}…"; the patient's page shows it ended`);
    await screenshot(doctorSide, 'ended');
    await screenshot(patient, 'ended');

    await patient.page.locator('.nav__link[data-page="my"]').click();
    await waitOn(patient, 'the appointment is not shown completed in "My appointments"',
      (id) => document.querySelector(`.my-card[data-appointment-id="${id}"]`)?.dataset.status === 'completed', appointment.id);
    const joinLeft = await patient.page.locator(`.my-card[data-appointment-id="${appointment.id}"] [data-action="consult"]`).count();
    if (joinLeft) fail('patient page: the completed appointment still offers "Join video consult"');
    step('  patient page: "My appointments" shows the appointment completed, without a join link');

    const problems = sides.flatMap((side) => side.problems);
    if (problems.length) fail(problems.join('\n'));
  } finally {
    for (const side of sides) await side.context.close().catch(() => {});
  }
}

async function main() {
  for (const [name, value] of Object.entries({ MEDHUB_URL: config.url, MEDHUB_DOCTOR_EMAIL: config.doctorEmail, MEDHUB_PATIENT_EMAIL: config.patientEmail, MEDHUB_APPOINTMENT: config.appointment })) {
    if (!value) fail(`set ${name} (see the head of this file)`);
  }
  step(`hub ${config.url}, tenant ${config.tenant}, chromium ${config.chromium}`);
  await withChromium({
    runTimeoutMs: RUN_TIMEOUT_MS,
    args: [
      // A test pattern and a beep instead of a real camera and microphone, allowed without asking.
      '--use-fake-device-for-media-stream',
      '--use-fake-ui-for-media-stream',
      // The hub offers 127.0.0.1 among its candidates; let Chromium use loopback too, and show
      // its own addresses rather than mDNS names, so the two meet on any machine.
      '--allow-loopback-in-peer-connection',
      '--disable-features=WebRtcHideLocalIpsWithMdns',
    ],
  }, consult);
}

const started = Date.now();
await runStory(step, main, () => `PASS in ${((Date.now() - started) / 1000).toFixed(1)} s: the doctor and the patient saw each other through the hub, the patient's page rejoined after a dropped connection, they chatted, the patient left, and the doctor ended the consult with its record`);
