// End-to-end check of the dispatcher's live emergency map in headless Chromium: an admin registers
// an ambulance unit and a device for it through the API; a dispatcher signs in through the form and
// opens #/map; the device connects to the hub's MQTT endpoint and publishes a GPS fix; the unit's
// marker must move to that fix on the open page (no reload), and again for a second fix. Then the
// dispatcher selects the unit (keyboard): its track is drawn through both fixes; the unit's monitor
// publishes vital signs and the unit panel shows them with their NEWS2 score and band.
//
// Run by tests/browser_map.rs against a fresh `hub demo` with its MQTT endpoint; by hand, against a
// running hub (e.g. `hub demo --listen 127.0.0.1:18126 --mqtt-listen 127.0.0.1:18830`), after
// `npm ci --prefix tests/browser`:
//   MEDHUB_URL=http://127.0.0.1:18126 MEDHUB_MQTT=127.0.0.1:18830 node tests/browser/map.mjs
// Environment: MEDHUB_URL and MEDHUB_MQTT (host:port) required; MEDHUB_TENANT (demo),
// MEDHUB_ADMIN_EMAIL (admin@demo.medhub), MEDHUB_EMAIL (dispatcher@demo.medhub),
// MEDHUB_PASSWORD (medhub-demo-2026), CHROMIUM_PATH (/usr/bin/chromium), MEDHUB_SCREENSHOT (a
// path: save a picture of the page at the end).
// Exits 0 when every check passes, 1 with a message naming the failed check otherwise.
// The helpers every story shares (the API, the sign-in form, the watchdog, …) are in ./lib.mjs.

import mqtt from 'mqtt';

import { api, apiLogin, baseConfig, CheckFailed, fail, markDocument, RENDER_TIMEOUT_MS, runStory, signInThroughForm, stepper, watchForProblems, withChromium } from './lib.mjs';

const config = {
  ...baseConfig,
  mqtt: process.env.MEDHUB_MQTT || '',
  adminEmail: process.env.MEDHUB_ADMIN_EMAIL || 'admin@demo.medhub',
  email: process.env.MEDHUB_EMAIL || 'dispatcher@demo.medhub',
  screenshot: process.env.MEDHUB_SCREENSHOT || '',
};

/** How long a fix may take from MQTT publish to the marker. */
const LIVE_TIMEOUT_MS = 10_000;
const MQTT_TIMEOUT_MS = 10_000;
/** The whole run; a hung browser, broker or hub must not hang CI. */
const RUN_TIMEOUT_MS = 120_000;

const step = stepper('map');

// ---- The device: an MQTT client ---------------------------------------------------------------

function connectDevice(credentials) {
  const [host, port] = [config.mqtt.slice(0, config.mqtt.lastIndexOf(':')), config.mqtt.slice(config.mqtt.lastIndexOf(':') + 1)];
  const client = mqtt.connect(`mqtt://${host}:${port}`, {
    username: credentials.username,
    password: credentials.password,
    clientId: `map-test-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`,
    protocolVersion: 4,
    reconnectPeriod: 0,
    connectTimeout: MQTT_TIMEOUT_MS,
    clean: true,
  });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => { client.end(true); reject(new CheckFailed(`the device could not connect to mqtt://${host}:${port} within ${MQTT_TIMEOUT_MS / 1000} s`)); }, MQTT_TIMEOUT_MS);
    client.once('connect', () => { clearTimeout(timer); resolve(client); });
    client.once('error', (error) => { clearTimeout(timer); client.end(true); reject(new CheckFailed(`the device's MQTT connection to ${host}:${port} failed: ${error.message}`)); });
  });
}

function publish(client, topic, payload) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new CheckFailed(`no PUBACK for ${topic} within ${MQTT_TIMEOUT_MS / 1000} s`)), MQTT_TIMEOUT_MS);
    client.publish(topic, JSON.stringify(payload), { qos: 1 }, (error) => {
      clearTimeout(timer);
      if (error) reject(new CheckFailed(`publishing to ${topic} failed: ${error.message}`));
      else resolve();
    });
  });
}

function closeDevice(client) {
  return new Promise((resolve) => {
    if (!client) return resolve();
    const timer = setTimeout(resolve, 2_000);
    client.end(false, {}, () => { clearTimeout(timer); resolve(); });
  });
}

// ---- The page -------------------------------------------------------------------------------

async function signInAndOpenMap(page, unitId) {
  await signInThroughForm(page, {
    email: config.email,
    path: '/#/map',
    ready: page.locator('#emergency-map:not([data-seq=""])'),
    missing: (within) => `the map did not load its snapshot ${within} (address ${page.url()})`,
  });
  if (!page.url().endsWith('#/map')) fail(`after signing in the dispatcher is at ${page.url()}, not #/map`);
  const marker = page.locator(`[data-unit-id="${unitId}"]`);
  await marker.waitFor({ state: 'attached', timeout: RENDER_TIMEOUT_MS })
    .catch(() => fail(`the map has no marker with data-unit-id="${unitId}" for the unit registered before the page opened`));
  const facilities = await page.locator('[data-facility-id]').count();
  if (facilities === 0) fail('the map shows no facilities; the demo tenant has three');
  return { facilities, seq: await page.locator('#emergency-map').getAttribute('data-seq') };
}

async function waitForMarkerAt(page, unitId, lat, lon, what) {
  const started = Date.now();
  try {
    await page.waitForFunction(
      ([id, wantLat, wantLon]) => {
        const element = document.querySelector(`[data-unit-id="${id}"]`);
        if (!element || element.getAttribute('data-lat') === null) return false;
        return Math.abs(Number(element.getAttribute('data-lat')) - wantLat) < 1e-9
          && Math.abs(Number(element.getAttribute('data-lon')) - wantLon) < 1e-9;
      },
      [unitId, lat, lon],
      { timeout: LIVE_TIMEOUT_MS },
    );
  } catch {
    const element = page.locator(`[data-unit-id="${unitId}"]`);
    const now = await element.evaluate((e) => `data-lat=${e.getAttribute('data-lat')} data-lon=${e.getAttribute('data-lon')} data-status=${e.getAttribute('data-status')}`).catch(() => 'no marker');
    fail(`${what}: the marker of unit ${unitId} shows ${now} ${LIVE_TIMEOUT_MS / 1000} s after the fix at ${lat}, ${lon} was published`);
  }
  return Date.now() - started;
}

function vitals() {
  // Every parameter in a red zone: NEWS2 17, high.
  return { respiration_rate: 27, spo2: 90, on_oxygen: false, systolic_bp: 88, pulse: 135, consciousness: 'voice', temperature: 39.5,
    measured_at: new Date().toISOString() };
}

function fix(lat, lon, heading) {
  return { lat, lon, speed: 12.5, heading, accuracy: 5, fix_time: new Date().toISOString() };
}

// ---- The run ----------------------------------------------------------------------------------

async function main() {
  if (!config.url) fail('set MEDHUB_URL to the hub, e.g. MEDHUB_URL=http://127.0.0.1:18126');
  if (!/^[^:]+:\d+$/.test(config.mqtt) && !/^\[.*\]:\d+$/.test(config.mqtt)) fail('set MEDHUB_MQTT to the hub\'s MQTT endpoint as host:port, e.g. MEDHUB_MQTT=127.0.0.1:18830');
  step(`hub ${config.url}, MQTT ${config.mqtt}, tenant ${config.tenant}, dispatcher ${config.email}, chromium ${config.chromium}`);

  const admin = await apiLogin(config.adminEmail);
  const callSign = `MAP-${Date.now().toString(36).toUpperCase()}`;
  const unit = await api('POST', '/api/ambulances', { token: admin, body: { call_sign: callSign } });
  const device = await api('POST', '/api/devices', { token: admin, body: { unit_id: unit.id, kind: 'ambulance', name: `map test ${callSign}` } });
  if (!device?.username || !device?.password) fail(`POST /api/devices answered ${JSON.stringify(device)}; expected a username and password`);
  step(`registered unit ${callSign} (${unit.id}) and its device ${device.username}`);

  let client;
  await withChromium({ runTimeoutMs: RUN_TIMEOUT_MS, abort: () => client?.end(true), cleanUp: () => closeDevice(client) }, async (browser) => {
    const context = await browser.newContext({ viewport: { width: 1440, height: 960 } });
    const page = await context.newPage();
    const problems = watchForProblems(page, { step });
    const { facilities, seq } = await signInAndOpenMap(page, unit.id);
    step(`signed in as ${config.email}; #/map shows ${facilities} facilities and the new unit's marker at seq ${seq}`);
    const assertNotReloaded = await markDocument(page, 'the page was reloaded; the map must update in place');

    client = await connectDevice(device);
    const topic = `medhub/${config.tenant}/ambulance/${unit.id}/gps`;
    step(`device connected over MQTT; publishing to ${topic}`);

    const first = fix(-1.2921 + Math.round(Math.random() * 1000) / 1e5, 36.8219 + Math.round(Math.random() * 1000) / 1e5, 45);
    await publish(client, topic, first);
    const took1 = await waitForMarkerAt(page, unit.id, first.lat, first.lon, 'first fix');
    step(`check 1: the marker shows the first fix (${first.lat}, ${first.lon}) ${took1} ms after its PUBACK`);
    const transform1 = await page.locator(`[data-unit-id="${unit.id}"]`).getAttribute('transform');

    const second = fix(first.lat + 0.0123, first.lon - 0.0087, 315);
    await publish(client, topic, second);
    const took2 = await waitForMarkerAt(page, unit.id, second.lat, second.lon, 'second fix');
    const transform2 = await page.locator(`[data-unit-id="${unit.id}"]`).getAttribute('transform');
    if (transform1 === transform2) fail(`the marker's data moved but it is still drawn at ${transform2}`);
    step(`check 2: the marker moved to the second fix (${second.lat}, ${second.lon}) ${took2} ms after its PUBACK (drawn ${transform1} → ${transform2})`);

    // Selecting the unit draws its track (once the hub has written both fixes) and shows its vitals
    // as they arrive.
    const trackDeadline = Date.now() + LIVE_TIMEOUT_MS;
    while ((await api('GET', `/api/ambulances/${unit.id}/track`, { token: admin })).points.length < 2) {
      if (Date.now() > trackDeadline) fail(`the hub did not write the unit's two fixes to its track within ${LIVE_TIMEOUT_MS / 1000} s`);
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    await page.locator(`[data-unit-id="${unit.id}"]`).focus();
    await page.keyboard.press('Enter');
    await page.locator(`.map-track__line[data-track-unit-id="${unit.id}"][data-points="2"]`).waitFor({ state: 'attached', timeout: LIVE_TIMEOUT_MS })
      .catch(async () => {
        const drawn = await page.locator('.map-track__line').evaluateAll((lines) => lines.map((l) => `${l.dataset.trackUnitId}: ${l.dataset.points} points`)).catch(() => []);
        fail(`after selecting unit ${unit.id} its track of two fixes is not drawn (drawn: ${drawn.join(', ') || 'nothing'})`);
      });
    step('check 3: selecting the unit draws its track through both fixes');
    const reading = vitals();
    await publish(client, `medhub/${config.tenant}/ambulance/${unit.id}/vitals`, reading);
    const panel = page.locator(`#unit-detail[data-selected-unit-id="${unit.id}"][data-news2-band="high"]`);
    await panel.waitFor({ timeout: LIVE_TIMEOUT_MS }).catch(async () => {
      const shown = await page.locator('#unit-detail').evaluate((e) => `${JSON.stringify({ ...e.dataset })} ${e.textContent}`).catch(() => 'no panel');
      fail(`the unit panel does not show the high NEWS2 band ${LIVE_TIMEOUT_MS / 1000} s after the vitals were published; it shows ${shown}`);
    });
    const score = await panel.getAttribute('data-news2-score');
    const text = await panel.textContent();
    if (score !== '17' || !text.includes('NEWS2 17') || !text.includes('135')) fail(`the unit panel shows score ${score} and "${text}"; expected NEWS2 17 and a pulse of 135`);
    step(`check 4: the unit panel shows the vitals with NEWS2 ${score}, high`);

    // The dispatcher reports an incident where the unit stands, asking for a proposal: nothing is
    // sent until they press "Dispatch unit" for the proposed unit.
    await page.locator('#incident-lat').fill(String(second.lat));
    await page.locator('#incident-lon').fill(String(second.lon));
    await page.locator('#incident-description').fill('Fall at the market (browser story)');
    await page.locator('#incident-propose').check();
    await page.getByRole('button', { name: 'Report and dispatch' }).click();
    const head = page.locator('.incident-detail .incident-detail__head strong');
    await page.locator('.incident-detail .incident-detail__head', { hasText: 'Awaiting dispatch' }).waitFor({ timeout: LIVE_TIMEOUT_MS }).catch(async () => {
      fail(`after reporting with "propose" the incident shows "${await head.textContent().catch(() => 'nothing')}", not "Awaiting dispatch"`);
    });
    const proposed = page.locator('#incident-dispatch-unit option').first();
    await proposed.waitFor({ state: 'attached', timeout: LIVE_TIMEOUT_MS });
    const proposedText = await proposed.textContent();
    if (!proposedText.includes(callSign) || !proposedText.includes('proposed')) fail(`the first unit offered is "${proposedText}"; expected ${callSign}, proposed`);
    step(`check 5: reported with a proposal; the page offers "${proposedText.trim()}" and nothing is dispatched yet`);
    await page.getByRole('button', { name: 'Dispatch unit' }).click();
    const shown = async () => (await page.locator('.incident-detail').textContent({ timeout: 1000 }).catch(() => 'no incident panel')).replace(/\s+/g, ' ');
    const dispatchDeadline = Date.now() + LIVE_TIMEOUT_MS;
    let sent = await api('GET', `/api/ambulances/${unit.id}`, { token: admin });
    while (sent.status !== 'dispatched') {
      if (Date.now() > dispatchDeadline) fail(`after "Dispatch unit" the proposed unit ${callSign} is ${sent.status}, not dispatched; the incident panel shows: ${await shown()}`);
      await new Promise((resolve) => setTimeout(resolve, 200));
      sent = await api('GET', `/api/ambulances/${unit.id}`, { token: admin });
    }
    await page.locator('.incident-detail .incident-detail__head', { hasText: 'Dispatched' }).waitFor({ timeout: LIVE_TIMEOUT_MS }).catch(async () => {
      fail(`${callSign} was dispatched but the incident panel shows: ${await shown()}`);
    });
    step(`check 6: the dispatcher's confirmation sent ${callSign} (its status is now ${sent.status})`);

    await assertNotReloaded();
    step('  no reload');
    if (config.screenshot) {
      await page.screenshot({ path: config.screenshot, fullPage: true });
      step(`  screenshot: ${config.screenshot}`);
    }
    if (problems.length) fail(problems.join('\n'));
    await context.close();
  });
}

await runStory(step, main, 'PASS: GPS fixes published over MQTT move the unit on the open map; its track and vitals are shown; a proposed dispatch waits for the dispatcher');
