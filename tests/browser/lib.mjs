// What the browser stories in this directory (bed_board.mjs, booking_race.mjs, stock_dispense.mjs,
// map.mjs, consult.mjs) share: the settings every story reads from the environment, failing and
// logging steps, the hub's HTTP API used directly, signing in through the console's form, watching a
// page for what would be a bug (uncaught errors, CSP violations), starting Chromium under a
// watchdog, and running a story to its PASS or FAIL line and exit code. Not a story itself: each
// story imports it and keeps its own checks, timeouts and clean-up.
//
// Environment read here: MEDHUB_URL (the hub; each story requires it), MEDHUB_TENANT (demo),
// MEDHUB_PASSWORD (medhub-demo-2026), CHROMIUM_PATH (/usr/bin/chromium).

import { chromium } from 'playwright-core';

/** The settings every story shares; a story spreads them into its own `config`. */
export const baseConfig = {
  url: (process.env.MEDHUB_URL || '').replace(/\/+$/, ''),
  tenant: process.env.MEDHUB_TENANT || 'demo',
  password: process.env.MEDHUB_PASSWORD || 'medhub-demo-2026',
  chromium: process.env.CHROMIUM_PATH || '/usr/bin/chromium',
};

/** How long the console may take to sign in and draw a page. */
export const RENDER_TIMEOUT_MS = 20_000;

/** A failed check: the story prints its message (no stack) and exits 1. */
export class CheckFailed extends Error {}

export function fail(message) {
  throw new CheckFailed(message);
}

/** The story's step logger: `stepper('map')('…')` prints `[map] …`. */
export function stepper(tag) {
  return (message) => console.log(`[${tag}] ${message}`);
}

// ---- The hub's HTTP API, used directly (not through the pages) -------------------------------

/** Calls the hub's API as `token` (if any); answers the JSON body, or fails naming the status. */
export async function api(method, path, { token, body, query } = {}) {
  const headers = { Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (token) headers.Authorization = `Bearer ${token}`;
  const search = query ? `?${new URLSearchParams(query)}` : '';
  let response;
  try {
    response = await fetch(`${baseConfig.url}${path}${search}`, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (error) {
    fail(`cannot reach the hub at ${baseConfig.url} (${error.cause?.code || error.cause?.message || error.message}); is it running?`);
  }
  const text = await response.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    // reported below with the raw text
  }
  if (!response.ok) {
    const detail = json ? `${json.error}: ${json.detail}` : text.slice(0, 200);
    fail(`${method} ${path} answered ${response.status} (${detail})`);
  }
  return json;
}

/** Signs `email` in through the API; answers the whole login answer (`access_token`, `user`, …). */
export async function apiSession(email) {
  return api('POST', '/api/auth/login', { body: { tenant: baseConfig.tenant, email, password: baseConfig.password } });
}

/** Signs `email` in through the API; answers its access token. */
export async function apiLogin(email) {
  return (await apiSession(email)).access_token;
}

/** The calendar day (YYYY-MM-DD) of `instant` in `timeZone`. */
export function dayIn(instant, timeZone) {
  const parts = Object.fromEntries(new Intl.DateTimeFormat('en-US', { timeZone, year: 'numeric', month: '2-digit', day: '2-digit' })
    .formatToParts(new Date(instant)).map(({ type, value }) => [type, value]));
  return `${parts.year}-${parts.month}-${parts.day}`;
}

// ---- The pages ------------------------------------------------------------------------------

/**
 * Records what would be a bug in the console: uncaught errors and CSP violations (answered as a
 * list that fills as they happen). Other console messages of the `logged` types are printed as
 * steps (`  (<label> console error: …)`), except those matching `expected`.
 */
export function watchForProblems(page, { step, label = '', logged = ['error'], expected = null }) {
  const prefix = label ? `${label}: ` : '';
  const problems = [];
  page.on('pageerror', (error) => problems.push(`${prefix}uncaught error: ${error.message}`));
  page.on('console', (message) => {
    const text = message.text();
    if (message.type() === 'error' && /Content Security Policy|Refused to/i.test(text)) problems.push(`${prefix}CSP violation: ${text}`);
    else if (logged.includes(message.type()) && !expected?.test(text)) step(`  (${label ? `${label} ` : ''}console ${message.type()}: ${text})`);
  });
  return problems;
}

/**
 * Opens `path` on the hub, signs `email` in through the console's form and waits for `ready` (a
 * locator) to show. Otherwise fails with `missing("within 20 s of signing in")` and whatever the
 * page's alert says.
 */
export async function signInThroughForm(page, { email, ready, missing, path = '/' }) {
  await page.goto(`${baseConfig.url}${path}`);
  await page.locator('input[name="tenant"]').waitFor({ timeout: RENDER_TIMEOUT_MS });
  await page.locator('input[name="tenant"]').fill(baseConfig.tenant);
  await page.locator('input[name="email"]').fill(email);
  await page.locator('input[name="password"]').fill(baseConfig.password);
  await page.locator('form button[type="submit"]').click();
  try {
    await ready.waitFor({ timeout: RENDER_TIMEOUT_MS });
  } catch {
    const shown = (await page.locator('[role="alert"]').allTextContents().catch(() => [])).map((t) => t.trim()).filter(Boolean).join(' | ');
    fail(`${missing(`within ${RENDER_TIMEOUT_MS / 1000} s of signing in`)}${shown ? `; the page says: ${shown}` : ''}`);
  }
}

/**
 * Marks the document, so that a reload (which would hide a broken live update) is detected; answers
 * a check that fails with `reloaded` if the page was reloaded since.
 */
export async function markDocument(page, reloaded) {
  const marker = `no-reload-${Date.now()}-${Math.random().toString(36).slice(2)}`;
  await page.evaluate((value) => { window.__medhubTestMarker = value; }, marker);
  let loads = 0;
  page.on('load', () => { loads += 1; });
  return async () => {
    const still = await page.evaluate(() => window.__medhubTestMarker).catch(() => undefined);
    if (still !== marker || loads > 0) fail(reloaded);
  };
}

/** The `data-seq` of the live board at `selector`, or null while it has none. */
export async function dataSeq(page, selector) {
  const value = await page.locator(selector).getAttribute('data-seq');
  return value === null || value === '' ? null : Number(value);
}

// ---- The browser and the run ----------------------------------------------------------------

/**
 * Starts Chromium (`--no-sandbox` and `args`) and hands it to `use`, all under a watchdog: after
 * `runTimeoutMs` the run prints FAIL, closes the browser (and calls `abort`), and exits 1, so a
 * hung browser or hub cannot hang CI. Afterwards, pass or fail, it awaits `cleanUp` (its errors
 * ignored) and closes the browser.
 */
export async function withChromium({ runTimeoutMs, args = [], abort = () => {}, cleanUp = async () => {} }, use) {
  let browser;
  const watchdog = setTimeout(async () => {
    console.error(`FAIL: the run took longer than ${runTimeoutMs / 1000} s`);
    process.exitCode = 1;
    await Promise.race([Promise.all([browser?.close(), abort()]), new Promise((resolve) => setTimeout(resolve, 5_000))]);
    process.exit(1);
  }, runTimeoutMs);
  try {
    try {
      browser = await chromium.launch({ executablePath: baseConfig.chromium, args: ['--no-sandbox', ...args] });
    } catch (error) {
      fail(`cannot start Chromium at ${baseConfig.chromium}: ${error.message.split('\n')[0]}`);
    }
    return await use(browser);
  } finally {
    clearTimeout(watchdog);
    await cleanUp().catch(() => {});
    if (browser) await browser.close();
  }
}

/**
 * Runs a story's `main`: prints `passed` (a string, or a function answering it) as its last step,
 * or `FAIL: …` (a failed check's message, anything else's stack) and sets the exit code to 1.
 */
export async function runStory(step, main, passed) {
  try {
    await main();
    step(typeof passed === 'function' ? passed() : passed);
  } catch (error) {
    console.error(`FAIL: ${error instanceof CheckFailed ? error.message : error.stack || error}`);
    process.exitCode = 1;
  }
}
