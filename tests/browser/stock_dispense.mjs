// End-to-end check of the pharmacy pages in headless Chromium, as two pharmacists at one counter
// see them: each signs in through the form in a browser context of their own; page A opens the
// dispensing queue (#/dispense), page B the stock board (#/stock), both on the same pharmacy
// (Central General Hospital, where the demo seed keeps stock and two waiting prescriptions).
// Page A dispenses one prescription; page B's numbers must move without a reload: every batch the
// dispense drew on shows exactly that many fewer units on hand and reserved (as the dispense
// answer reports them, read from the page's own request). Then page B uploads a small CSV file
// (three good rows, one bad): the result names the rejected line, and the three new batches appear
// on the board live.
//
// The demo's waiting prescriptions are used up by earlier runs; the script then prescribes what it
// needs through the API (as the demo doctor, for a demo patient). The batches it uploads are
// removed again at the end (they stay listed as removed for a day), so runs can be repeated.
//
// Run by tests/browser_pharmacy.rs against a fresh `hub demo`; by hand, against a running hub (e.g.
// `hub demo --listen 127.0.0.1:18125`), after `npm ci --prefix tests/browser`:
//   MEDHUB_URL=http://127.0.0.1:18125 node tests/browser/stock_dispense.mjs
// Environment: MEDHUB_URL (required), MEDHUB_TENANT (demo), MEDHUB_PASSWORD (medhub-demo-2026),
// MEDHUB_EMAIL (pharmacist@demo.medhub), MEDHUB_DOCTOR_EMAIL (doctor@demo.medhub),
// MEDHUB_PHARMACY (Central General Hospital), CHROMIUM_PATH (/usr/bin/chromium).
// Exits 0 when every check passes, 1 with a message naming the failed check otherwise.
// The helpers every story shares (the API, the sign-in form, the watchdog, …) are in ./lib.mjs.

import { api, apiLogin, baseConfig, dataSeq, fail, markDocument, RENDER_TIMEOUT_MS, runStory, signInThroughForm, stepper, watchForProblems, withChromium } from './lib.mjs';

const config = {
  ...baseConfig,
  email: process.env.MEDHUB_EMAIL || 'pharmacist@demo.medhub',
  doctorEmail: process.env.MEDHUB_DOCTOR_EMAIL || 'doctor@demo.medhub',
  pharmacy: process.env.MEDHUB_PHARMACY || 'Central General Hospital',
};

/** How long a change may take to reach a page. */
const LIVE_TIMEOUT_MS = 10_000;
/** The whole run; a hung browser or hub must not hang CI. */
const RUN_TIMEOUT_MS = 150_000;
/** What the script prescribes when the demo's prescriptions are used up. */
const FALLBACK_MEDICATION = 'Amoxicillin 500 mg capsule';
const FALLBACK_QUANTITY = 14;
/** What the upload receives. */
const UPLOAD_MEDICATION = 'Paracetamol 500 mg tablet';

const step = stepper('stock-dispense');

// ---- The hub's HTTP API, used directly (not through the pages) -------------------------------

async function findPharmacy(token) {
  const facilities = await api('GET', '/api/facilities', { token });
  const pharmacy = facilities.find((f) => f.name === config.pharmacy);
  if (!pharmacy) fail(`no facility named "${config.pharmacy}" (found: ${facilities.map((f) => f.name).join(', ')}); run against \`hub demo\``);
  return pharmacy;
}

async function medicationNamed(token, name) {
  const answer = await api('GET', '/api/medications', { token, query: { q: name.split(' ')[0] } });
  const medication = answer.medications.find((m) => m.name === name);
  if (!medication) fail(`the formulary has no "${name}"`);
  return medication;
}

/** An open prescription at the pharmacy whose whole remaining fill is reserved, prescribing one if needed. */
async function waitingPrescription(pharmacistToken, pharmacy) {
  const open = await api('GET', '/api/prescriptions', { token: pharmacistToken, query: { pharmacy_id: pharmacy.id, status: 'active,partially_dispensed' } });
  const ready = open.prescriptions
    .filter((p) => p.reserved > 0 && p.reserved === p.quantity - p.dispensed_in_fill)
    .sort((a, b) => a.created_at.localeCompare(b.created_at));
  if (ready.length > 0) {
    step(`  using a waiting prescription from the demo: ${ready[0].quantity} units, ${ready[0].reserved} reserved (${ready[0].id})`);
    return ready[0];
  }
  step('  no fully reserved prescription is waiting (earlier runs dispensed them); prescribing one as the demo doctor');
  const doctorToken = await apiLogin(config.doctorEmail);
  const medication = await medicationNamed(doctorToken, FALLBACK_MEDICATION);
  const found = await api('GET', '/api/patients', { token: doctorToken, query: { q: 'Otieno' } });
  const patient = found.patients[0];
  if (!patient) fail('the demo patient Otieno Odhiambo is missing; restart `hub demo` on a fresh data dir');
  const availability = await api('GET', `/api/pharmacies/${pharmacy.id}/availability`, { token: pharmacistToken, query: { medication_id: medication.id, quantity: FALLBACK_QUANTITY } });
  if (availability.available < FALLBACK_QUANTITY) {
    step(`  only ${availability.available} units in stock; receiving a batch first`);
    await api('POST', '/api/inventory', {
      token: pharmacistToken,
      body: { pharmacy_id: pharmacy.id, medication_id: medication.id, batch_number: `RX-${Date.now().toString(36).toUpperCase()}`, expiry_date: dateInDays(300), quantity: 200, location: 'Browser test' },
    });
  }
  const prescribed = await api('POST', '/api/prescriptions', {
    token: doctorToken,
    body: { patient_id: patient.id, medication_id: medication.id, pharmacy_id: pharmacy.id, dose: '500 mg', frequency: 'twice a day', duration_days: 7, quantity: FALLBACK_QUANTITY },
  });
  if (prescribed.reserved !== FALLBACK_QUANTITY) fail(`prescribing reserved ${prescribed.reserved} of ${FALLBACK_QUANTITY} units`);
  return prescribed.prescription;
}

function dateInDays(days) {
  return new Date(Date.now() + days * 86_400_000).toISOString().slice(0, 10);
}

// ---- The pages ------------------------------------------------------------------------------

async function signIn(page, label) {
  // The pharmacist's home is the stock board.
  await signInThroughForm(page, { email: config.email, ready: page.locator('#stock-board'), missing: (within) => `${label}: no stock board ${within}` });
}

/** Chooses the pharmacy in a page's picker (it may be chosen already). */
async function choosePharmacy(page, selectId, pharmacy) {
  const select = page.locator(`#${selectId}`);
  await page.waitForFunction((id) => { const s = document.getElementById(id); return s && !s.disabled && s.options.length > 0; }, selectId, { timeout: RENDER_TIMEOUT_MS })
    .catch(() => fail(`#${selectId} never listed the pharmacies`));
  if (await select.inputValue() !== pharmacy.id) await select.selectOption(pharmacy.id);
}

function markPage(page, label) {
  return markDocument(page, `${label} was reloaded; it must update in place`);
}

function boardSeq(page) {
  return dataSeq(page, '#stock-board');
}

/** Every batch row on the board: id → {onHand, reserved}. */
async function batchNumbers(page) {
  return page.evaluate(() => Object.fromEntries([...document.querySelectorAll('#stock-board [data-batch-id]')]
    .map((row) => [row.dataset.batchId, { onHand: Number(row.dataset.onHand), reserved: Number(row.dataset.reserved) }])));
}

// ---- The checks -----------------------------------------------------------------------------

async function checkDispenseMovesTheBoard(pageA, pageB, pharmacy, prescription) {
  step('check 1: a dispense on page A moves page B\'s stock numbers live');
  await pageA.evaluate(() => { location.hash = '#/dispense'; });
  await pageA.locator('#dispensing').waitFor({ timeout: RENDER_TIMEOUT_MS });
  await choosePharmacy(pageA, 'dispense-pharmacy', pharmacy);
  await choosePharmacy(pageB, 'stock-pharmacy', pharmacy);
  const row = pageA.locator(`#dispensing li[data-prescription-id="${prescription.id}"]`);
  await row.waitFor({ timeout: RENDER_TIMEOUT_MS })
    .catch(() => fail(`page A's queue does not list prescription ${prescription.id}`));
  await pageB.locator('#stock-board [data-batch-id]').first().waitFor({ timeout: RENDER_TIMEOUT_MS })
    .catch(() => fail('page B shows no batch rows'));
  await pageB.waitForFunction((id) => document.querySelector('#stock-board')?.dataset.pharmacyId === id && document.querySelector('#stock-board')?.dataset.seq !== '', pharmacy.id);
  const before = await batchNumbers(pageB);
  const seqBefore = await boardSeq(pageB);
  const reservedShown = Number(await row.getAttribute('data-reserved'));
  step(`  page A lists the prescription (${prescription.quantity} units, ${reservedShown} reserved); page B shows ${Object.keys(before).length} batch rows at seq ${seqBefore}`);
  const assertANotReloaded = await markPage(pageA, 'page A');
  const assertBNotReloaded = await markPage(pageB, 'page B');

  const answered = pageA.waitForResponse((response) => response.url().includes(`/api/prescriptions/${prescription.id}/dispense`) && response.request().method() === 'POST', { timeout: LIVE_TIMEOUT_MS });
  await row.locator('[data-action="dispense"]').click();
  const response = await answered.catch(() => fail('pressing Dispense on page A sent no dispense request'));
  const answer = await response.json().catch(() => null);
  if (response.status() !== 200 || !answer) fail(`the dispense answered ${response.status()}: ${JSON.stringify(answer)}`);
  const fromBatches = answer.from_batches || [];
  const total = fromBatches.reduce((sum, [, units]) => sum + units, 0);
  if (answer.dispensed <= 0 || total !== answer.dispensed) fail(`the dispense answer does not add up: ${JSON.stringify(answer)}`);
  step(`  page A dispensed ${answer.dispensed} units from ${fromBatches.map(([id, units]) => `${id.slice(0, 8)} × ${units}`).join(', ')}`);

  const started = Date.now();
  for (const [batchId, units] of fromBatches) {
    const was = before[batchId];
    if (!was) fail(`the dispense drew on batch ${batchId}, which page B does not show`);
    const expected = { onHand: was.onHand - units, reserved: was.reserved - units };
    try {
      await pageB.waitForFunction(([id, wanted]) => {
        const element = document.querySelector(`#stock-board [data-batch-id="${id}"]`);
        return element && Number(element.dataset.onHand) === wanted.onHand && Number(element.dataset.reserved) === wanted.reserved;
      }, [batchId, expected], { timeout: LIVE_TIMEOUT_MS });
    } catch {
      const now = (await batchNumbers(pageB))[batchId];
      fail(`page B's row for batch ${batchId} shows on hand ${now?.onHand} / reserved ${now?.reserved} ${LIVE_TIMEOUT_MS / 1000} s after the dispense; expected ${expected.onHand} / ${expected.reserved} (before: ${was.onHand} / ${was.reserved}, dispensed ${units})`);
    }
    step(`  page B: batch ${batchId.slice(0, 8)} on hand ${was.onHand} → ${expected.onHand}, reserved ${was.reserved} → ${expected.reserved}`);
  }
  step(`  page B caught up ${Date.now() - started} ms after the answer`);
  const seqAfter = await boardSeq(pageB);
  if (seqAfter === null || seqAfter <= seqBefore) fail(`page B's data-seq went from ${seqBefore} to ${seqAfter}; expected it to advance`);

  // Page A: the whole fill was given, so the prescription leaves the queue, and the outcome says so.
  await pageA.locator('#dispense-result[data-outcome="dispensed"]').waitFor({ timeout: LIVE_TIMEOUT_MS })
    .catch(() => fail('page A does not show the dispense outcome'));
  if (answer.prescription.status === 'dispensed') {
    await row.waitFor({ state: 'detached', timeout: LIVE_TIMEOUT_MS })
      .catch(() => fail('the fully dispensed prescription is still in page A\'s queue'));
  }
  await assertANotReloaded();
  await assertBNotReloaded();
  step(`  no reloads; page B's data-seq advanced from ${seqBefore} to ${seqAfter}`);
}

/** Batches the upload received, removed again at the end. */
const uploadedBatches = [];

async function checkUpload(pageB, pharmacy) {
  step('check 2: a CSV upload on page B reports the rejected line and the new batches appear live');
  const tag = Date.now().toString(36).toUpperCase();
  const expiry = dateInDays(400);
  const good = [1, 2, 3].map((n) => `BT-${tag}-${n}`);
  const csv = [
    'medication,batch_number,expiry_date,quantity,location',
    `${UPLOAD_MEDICATION},${good[0]},${expiry},100,Browser test shelf`,
    `${UPLOAD_MEDICATION},${good[1]},${expiry},50,Browser test shelf`,
    `Unobtainium 5 mg tablet,BT-${tag}-X,${expiry},10,Browser test shelf`,
    `"${UPLOAD_MEDICATION}",${good[2]},${expiry},25,`,
  ].join('\n');
  const rejectedLine = 4;
  await pageB.locator('#stock-upload').setInputFiles({ name: `intake-${tag}.csv`, mimeType: 'text/csv', buffer: Buffer.from(`${csv}\n`) });
  const sent = pageB.waitForRequest((request) => request.url().includes('/api/inventory/upload') && request.method() === 'POST', { timeout: LIVE_TIMEOUT_MS });
  const answered = pageB.waitForResponse((response) => response.url().includes('/api/inventory/upload'), { timeout: LIVE_TIMEOUT_MS });
  await pageB.locator('#stock-upload-submit').click();
  const request = await sent.catch(() => fail('pressing Upload sent no request to /api/inventory/upload'));
  const contentType = (await request.allHeaders())['content-type'] || '';
  if (!contentType.startsWith('text/csv')) fail(`the upload was sent as ${contentType || 'no content type'}; expected text/csv`);
  if (!request.url().includes(`pharmacy_id=${pharmacy.id}`)) fail(`the upload went to ${request.url()}; expected pharmacy_id=${pharmacy.id}`);
  const answer = await (await answered).json().catch(() => null);
  if (!answer || answer.applied !== 3) fail(`the hub applied ${answer?.applied} rows; expected 3 (${JSON.stringify(answer)})`);

  const result = pageB.locator('#stock-upload-result');
  await pageB.locator('#stock-upload-result[data-outcome]').waitFor({ timeout: LIVE_TIMEOUT_MS })
    .catch(() => fail('page B shows no upload outcome'));
  const outcome = await result.getAttribute('data-outcome');
  const applied = await result.getAttribute('data-applied');
  if (outcome !== 'partial' || applied !== '3') fail(`the upload result says outcome=${outcome}, applied=${applied}; expected partial, 3`);
  const rejectedRow = result.locator(`[data-line="${rejectedLine}"]`);
  if (await rejectedRow.count() !== 1) {
    fail(`the rejected rows table does not list line ${rejectedLine}: ${(await result.innerText()).replace(/\s+/g, ' ')}`);
  }
  const reason = (await rejectedRow.innerText()).replace(/\s+/g, ' ').trim();
  if (!/unknown medication/i.test(reason)) fail(`line ${rejectedLine} is rejected for "${reason}"; expected an unknown medication`);
  if (await result.locator('[data-line]').count() !== 1) fail('the result lists more than the one bad row as rejected');
  step(`  the result shows 3 applied and rejects line ${rejectedLine} (${reason})`);

  for (const number of good) {
    await pageB.waitForFunction((wanted) => [...document.querySelectorAll('#stock-board tr[data-batch-id]')]
      .some((row) => row.querySelector('.batch__number')?.textContent === wanted), number, { timeout: LIVE_TIMEOUT_MS })
      .catch(() => fail(`batch ${number} does not appear on page B's board after the upload`));
  }
  const ids = await pageB.evaluate((numbers) => [...document.querySelectorAll('#stock-board tr[data-batch-id]')]
    .filter((row) => numbers.includes(row.querySelector('.batch__number')?.textContent))
    .map((row) => ({ id: row.dataset.batchId, onHand: Number(row.dataset.onHand) })), good);
  uploadedBatches.push(...ids.map((b) => b.id));
  const onHand = ids.map((b) => b.onHand).sort((a, b) => a - b).join(',');
  if (onHand !== '25,50,100') fail(`the uploaded batches show on hand ${onHand}; expected 25, 50 and 100`);
  step(`  the 3 new batches appeared on the board live (${good.join(', ')})`);
}

async function removeUploaded(token) {
  for (const id of uploadedBatches) {
    try {
      await api('DELETE', `/api/inventory/${id}`, { token, body: { reason: 'browser test clean-up' } });
    } catch (error) {
      step(`  (could not remove uploaded batch ${id}: ${error.message})`);
    }
  }
}

async function main() {
  if (!config.url) fail('set MEDHUB_URL to the hub, e.g. MEDHUB_URL=http://127.0.0.1:18125');
  step(`hub ${config.url}, tenant ${config.tenant}, user ${config.email}, pharmacy ${config.pharmacy}, chromium ${config.chromium}`);
  const token = await apiLogin(config.email);
  const pharmacy = await findPharmacy(token);
  const prescription = await waitingPrescription(token, pharmacy);
  await withChromium({ runTimeoutMs: RUN_TIMEOUT_MS, cleanUp: () => removeUploaded(token) }, async (browser) => {
    const contextA = await browser.newContext({ viewport: { width: 1400, height: 1000 } });
    const contextB = await browser.newContext({ viewport: { width: 1400, height: 1000 } });
    const pageA = await contextA.newPage();
    const pageB = await contextB.newPage();
    const problemsA = watchForProblems(pageA, { step, label: 'page A' });
    const problemsB = watchForProblems(pageB, { step, label: 'page B' });
    await Promise.all([signIn(pageA, 'page A'), signIn(pageB, 'page B')]);
    step(`  both pages signed in as ${config.email}`);
    await checkDispenseMovesTheBoard(pageA, pageB, pharmacy, prescription);
    await checkUpload(pageB, pharmacy);
    const found = [...problemsA, ...problemsB];
    if (found.length) fail(found.join('\n'));
  });
}

await runStory(step, main, 'PASS: a dispense moves the stock board live, and the upload reports its rejected line');
