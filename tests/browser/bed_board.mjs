// End-to-end check of the web console's live bed board in headless Chromium, as a nurse sees it:
// sign in through the form, watch the board, and see a bed change made elsewhere (straight through
// the HTTP API, not through the page) appear on its tile without reloading. A second pass drops
// the page's WebSocket while a change happens and checks that the console resubscribes with
// `since` and catches up on exactly what it missed.
//
// Run by tests/browser.rs against a fresh `hub demo`; by hand, against a running hub (e.g.
// `hub demo --listen 127.0.0.1:18123`), after `npm ci --prefix tests/browser`:
//   MEDHUB_URL=http://127.0.0.1:18123 node tests/browser/bed_board.mjs
// Environment: MEDHUB_URL (required), MEDHUB_TENANT (demo), MEDHUB_EMAIL (nurse@demo.medhub),
// MEDHUB_PASSWORD (medhub-demo-2026), CHROMIUM_PATH (/usr/bin/chromium).
// Exits 0 when every check passes, 1 with a message naming the failed check otherwise.
// The helpers every story shares (the API, the sign-in form, the watchdog, …) are in ./lib.mjs.

import { api, apiLogin, baseConfig, dataSeq, fail, markDocument, runStory, signInThroughForm, stepper, watchForProblems, withChromium } from './lib.mjs';

const config = {
  ...baseConfig,
  email: process.env.MEDHUB_EMAIL || 'nurse@demo.medhub',
};

/** How long a change may take to reach the page. */
const LIVE_TIMEOUT_MS = 10_000;
/** The whole run; a hung browser or hub must not hang CI. */
const RUN_TIMEOUT_MS = 120_000;

const step = stepper('bed-board');

// ---- The hub's HTTP API, used directly (not through the page) --------------------------------

/** The facility holding `bedId`, and the bed, from `GET /api/beds`. */
async function findBed(token, bedId) {
  const board = await api('GET', '/api/beds', { token });
  for (const facility of board.facilities) {
    for (const ward of facility.wards) {
      const bed = ward.beds.find((b) => b.id === bedId);
      if (bed) return { facility, ward, bed };
    }
  }
  return fail(`bed ${bedId} is on the page but not in GET /api/beds`);
}

async function setBedStatus(token, facilityId, bedId, status) {
  return api('PUT', `/api/facilities/${facilityId}/beds/${bedId}/status`, { token, body: { status } });
}

// ---- The page -------------------------------------------------------------------------------

async function signIn(page) {
  await signInThroughForm(page, { email: config.email, ready: page.locator('[data-bed-id]').first(), missing: (within) => `no bed tiles ${within}` });
  const tiles = await page.locator('[data-bed-id]').count();
  const seq = await boardSeq(page);
  if (seq === null) fail('the board root has no data-seq after rendering');
  return { tiles, seq };
}

function boardSeq(page) {
  return dataSeq(page, '#bed-board');
}

async function pickFreeBed(page) {
  const bedId = await page.locator('[data-bed-id][data-status="free"]').first().getAttribute('data-bed-id', { timeout: 2_000 }).catch(() => null);
  if (!bedId) fail('no bed tile has data-status="free"; free a bed (or restart `hub demo` on a fresh data dir) and run again');
  return bedId;
}

function markBoard(page) {
  return markDocument(page, 'the page was reloaded; the board must update in place');
}

async function waitForTileStatus(page, bedId, status, what) {
  const started = Date.now();
  try {
    await page.waitForFunction(
      ([id, wanted]) => document.querySelector(`[data-bed-id="${id}"]`)?.getAttribute('data-status') === wanted,
      [bedId, status],
      { timeout: LIVE_TIMEOUT_MS },
    );
  } catch {
    const now = await page.locator(`[data-bed-id="${bedId}"]`).getAttribute('data-status').catch(() => 'missing');
    fail(`${what}: tile ${bedId} still shows data-status="${now}" ${LIVE_TIMEOUT_MS / 1000} s after the change to "${status}"`);
  }
  return Date.now() - started;
}

// ---- The checks -----------------------------------------------------------------------------

/** Beds this run changed, put back to free at the end so the run can be repeated. */
const changedBeds = [];

async function checkLiveUpdate(browser, token) {
  step('check 1: a change made through the API appears on the open board without a reload');
  const context = await browser.newContext();
  try {
    const page = await context.newPage();
    const problems = watchForProblems(page, { step, label: 'check 1' });
    const { tiles, seq } = await signIn(page);
    step(`  signed in as ${config.email}; the board shows ${tiles} bed tiles at seq ${seq}`);
    const assertNotReloaded = await markBoard(page);

    const bedId = await pickFreeBed(page);
    const { facility, ward, bed } = await findBed(token, bedId);
    if (bed.status !== 'free') fail(`tile ${bedId} says free but the API says ${bed.status}`);
    step(`  changing bed ${bed.label} (${ward.name}, ${facility.name}) from free to cleaning through the API`);
    const answer = await setBedStatus(token, facility.id, bedId, 'cleaning');
    changedBeds.push({ facilityId: facility.id, bedId, label: bed.label });
    if (answer.bed?.status !== 'cleaning' || typeof answer.seq !== 'number') {
      fail(`PUT status answered ${JSON.stringify(answer)}; expected the bed as cleaning and the event's seq`);
    }

    const took = await waitForTileStatus(page, bedId, 'cleaning', 'live update');
    step(`  the tile shows "cleaning" after ${took} ms`);
    await assertNotReloaded();
    const after = await boardSeq(page);
    if (after === null || after < answer.seq) fail(`the board's data-seq is ${after}, behind the change's seq ${answer.seq}`);
    step(`  no reload; data-seq advanced from ${seq} to ${after}`);
    if (problems.length) fail(problems.join('\n'));
  } finally {
    await context.close();
  }
}

async function checkResumeAfterReconnect(browser, token) {
  step('check 2: after losing its connection, the board resumes with `since` and catches up');
  const context = await browser.newContext();
  try {
    const page = await context.newPage();
    const problems = watchForProblems(page, { step, label: 'check 2' });
    // Stand between the page and the hub, so the test can hold back messages and cut the line.
    const links = [];
    await page.routeWebSocket((url) => url.pathname === '/ws', (ws) => {
      const server = ws.connectToServer();
      const link = { ws, sentByPage: [], holdBack: false };
      links.push(link);
      ws.onMessage((message) => {
        link.sentByPage.push(String(message));
        server.send(message);
      });
      server.onMessage((message) => {
        if (!link.holdBack) ws.send(message);
      });
    });
    await signIn(page);
    const assertNotReloaded = await markBoard(page);
    const bedId = await pickFreeBed(page);
    const { facility, bed } = await findBed(token, bedId);
    const seqBefore = await boardSeq(page);

    const first = links.at(-1);
    if (!first) fail('the page opened no WebSocket to /ws');
    first.holdBack = true;
    step(`  holding back the hub's messages; changing bed ${bed.label} from free to out_of_service through the API`);
    const answer = await setBedStatus(token, facility.id, bedId, 'out_of_service');
    changedBeds.push({ facilityId: facility.id, bedId, label: bed.label });
    await page.waitForTimeout(1_000);
    const meanwhile = await page.locator(`[data-bed-id="${bedId}"]`).getAttribute('data-status');
    if (meanwhile !== 'free') fail(`the tile changed to ${meanwhile} although the hub's messages were held back`);

    step('  cutting the page\'s WebSocket');
    await first.ws.close({ code: 4001, reason: 'test: connection lost' });
    const took = await waitForTileStatus(page, bedId, 'out_of_service', 'catch-up after reconnect');
    const resubscribe = links.slice(1).flatMap((link) => link.sentByPage)
      .map((text) => { try { return JSON.parse(text); } catch { return {}; } })
      .find((message) => message.type === 'subscribe');
    if (!resubscribe) fail('the page reconnected but never resubscribed');
    if (resubscribe.since !== seqBefore) {
      fail(`the page resubscribed with since=${resubscribe.since}; expected its last seq ${seqBefore}`);
    }
    step(`  reconnected, resubscribed with since=${resubscribe.since}; the missed change (seq ${answer.seq}) arrived ${took} ms after the cut`);
    await page.locator('[data-connection="connected"]').waitFor({ timeout: LIVE_TIMEOUT_MS })
      .catch(() => fail('the connection indicator does not show connected after the reconnect'));
    await assertNotReloaded();
    if (problems.length) fail(problems.join('\n'));
  } finally {
    await context.close();
  }
}

async function restoreBeds(token) {
  for (const { facilityId, bedId, label } of changedBeds) {
    try {
      await setBedStatus(token, facilityId, bedId, 'free');
    } catch (error) {
      step(`  (could not set bed ${label} back to free: ${error.message})`);
    }
  }
}

async function main() {
  if (!config.url) fail('set MEDHUB_URL to the hub, e.g. MEDHUB_URL=http://127.0.0.1:18123');
  step(`hub ${config.url}, tenant ${config.tenant}, user ${config.email}, chromium ${config.chromium}`);
  const token = await apiLogin(config.email);
  await withChromium({ runTimeoutMs: RUN_TIMEOUT_MS, cleanUp: () => restoreBeds(token) }, async (browser) => {
    await checkLiveUpdate(browser, token);
    await checkResumeAfterReconnect(browser, token);
  });
}

await runStory(step, main, 'PASS: the bed board follows the hub live and catches up after a reconnect');
