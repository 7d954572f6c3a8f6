#!/usr/bin/env node
// The whole flash-sale journey in a real browser (headless Debian Chromium
// driven by playwright-core), through the pages only:
//   a. admin: token, item (stock 1), promo starting soon, publish, watch
//   b. buyer 1: sign up (one-time code from the server log), countdown,
//      buy when the sale opens (captcha answer from the server log), order
//      listed under My orders
//   c. buyer 2: sign up, the item is sold out
//   d. the admin's live dashboard shows sold 1
//   e. the item page on a 375 px phone
//   f. the admin ends the sale early; the item page says it ended
// Any step that does not happen in time, any uncaught page error and any
// console error fails the run (exit 1) with failure-*.png screenshots.
//
// Environment:
//   BASE_URL            e.g. http://127.0.0.1:18080 (required)
//   ADMIN_TOKEN         the server's SECKILL_ADMIN_TOKEN (required)
//   LOG_FILES           colon-separated server log files (required); the server
//                       runs with SECKILL_CAPTCHA_LOG_ANSWERS=true
//   SHOTS_DIR           screenshot folder (default ./screenshots)
//   CHROMIUM            browser binary (default /usr/bin/chromium)
//   PROMO_LEAD_SECONDS  how far ahead the sale starts (default 20)
//   STEP_TIMEOUT_MS     default wait for one UI action (default 15000)
//   ITEM_LIST_PAGE_MAX  the server's SECKILL_ITEM_LIST_PAGE_MAX; at 1 the
//                       journey checks the item list's "Show more" brought
//                       the sale's item (a filler item is listed first)
import { chromium } from 'playwright-core';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';

// ---- settings ---------------------------------------------------------------------

function need(name) {
  const v = process.env[name];
  if (!v) {
    console.error(`journey: ${name} is not set`);
    process.exit(2);
  }
  return v;
}

const BASE = need('BASE_URL').replace(/\/+$/, '');
const ADMIN_TOKEN = need('ADMIN_TOKEN');
const LOG_FILES = need('LOG_FILES').split(':').filter(Boolean);
const SHOTS = path.resolve(process.env.SHOTS_DIR || 'screenshots');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const LEAD_S = Number(process.env.PROMO_LEAD_SECONDS || 20);
const T = Number(process.env.STEP_TIMEOUT_MS || 15000);
const SALE_MINUTES = 10;

const RUN = `${Date.now().toString(36)}${Math.floor(Math.random() * 1e4)}`;
const t0 = Date.now();
const since = () => `${((Date.now() - t0) / 1000).toFixed(1)}s`;

// ---- failure plumbing ---------------------------------------------------------------

const pages = []; // { label, page } of every page opened, for failure screenshots
const problems = []; // page errors and console errors, with the page label
let currentStep = 'start-up';
let pagesFollowed = 0; // "Show more" clicks on the item list

class JourneyError extends Error {}
const fail = (msg) => { throw new JourneyError(msg); };

/**
 * Network "errors" the API contract makes normal: every page asks GET /me
 * for the header, which answers 401 to a visitor (Chromium reports each
 * non-2xx fetch as a console error "Failed to load resource"). A step may
 * allow more (the sold-out answer) with `allowNet`.
 */
const allowedNet = [{ path: /^\/api\/v1\/me$/, status: 401 }];
function allowNet(rule) {
  allowedNet.push(rule);
  return () => allowedNet.splice(allowedNet.indexOf(rule), 1);
}

function track(page, label) {
  pages.push({ label, page });
  page.on('pageerror', (err) => problems.push(`[${label}] uncaught page error: ${err.stack || err}`));
  page.on('console', (msg) => {
    if (msg.type() !== 'error') return;
    const text = msg.text();
    const url = msg.location()?.url || '';
    if (/favicon\.ico/.test(url) && /\b404\b/.test(text)) return;
    const net = text.match(/^Failed to load resource: the server responded with a status of (\d{3})/);
    if (net && url) {
      const { pathname } = new URL(url, BASE);
      const status = Number(net[1]);
      if (allowedNet.some((r) => r.path.test(pathname) && r.status === status)) return;
    }
    problems.push(`[${label}] console error: ${text}${url ? ` (${url})` : ''}`);
  });
  return page;
}

function checkProblems() {
  if (problems.length) fail(`errors in the page(s):\n  ${problems.join('\n  ')}`);
}

async function step(name, fn) {
  currentStep = name;
  const started = Date.now();
  const out = await fn();
  checkProblems();
  console.log(`ok   ${name} (${((Date.now() - started) / 1000).toFixed(1)}s, at ${since()})`);
  return out;
}

const slug = (s) => s.toLowerCase().replace(/[^a-z0-9]+/g, '-').replace(/^-|-$/g, '').slice(0, 60);

async function shot(page, name) {
  const file = path.join(SHOTS, `${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  console.log(`     screenshot ${path.relative(process.cwd(), file) || file}`);
}

async function failureShots() {
  for (const { label, page } of pages) {
    if (page.isClosed()) continue;
    const file = path.join(SHOTS, `failure-${slug(currentStep)}-${slug(label)}.png`);
    try {
      await page.screenshot({ path: file, fullPage: true, timeout: 5000 });
      console.error(`     failure screenshot ${file}`);
    } catch (e) {
      console.error(`     (no screenshot of ${label}: ${e.message.split('\n')[0]})`);
    }
  }
}

// ---- server log ---------------------------------------------------------------------

// tracing-subscriber's fmt layer: "<RFC 3339 time>  INFO <message> k=v k=v",
// with ANSI colours when not told otherwise; string fields are quoted.
const ANSI = /\x1b\[[0-9;]*m/g;
const field = (line, name) => line.match(new RegExp(`(?:^|\\s)${name}="?([^"\\s]+)"?`))?.[1];
const stamp = (line) => line.match(/^\s*(\d{4}-\d\d-\d\dT[\d:.]+Z?)/)?.[1] || '';

async function logLines(marker) {
  const lines = [];
  for (const f of LOG_FILES) {
    let text;
    try { text = await readFile(f, 'utf8'); } catch { continue; }
    for (const raw of text.split('\n')) {
      if (raw.includes(marker)) lines.push(raw.replace(ANSI, ''));
    }
  }
  return lines;
}

/** Newest log line with `marker` whose fields match `want` and that `accept` takes; polls. */
async function newestLogLine(marker, want, what, accept = () => true, timeout = 10000) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const hits = (await logLines(marker))
      .map((line, i) => ({ line, i, at: stamp(line) }))
      .filter(({ line }) => Object.entries(want).every(([k, v]) => field(line, k) === String(v)))
      .filter(({ line }) => accept(line))
      .sort((a, b) => (a.at === b.at ? a.i - b.i : a.at < b.at ? -1 : 1));
    if (hits.length) return hits[hits.length - 1].line;
    if (Date.now() > deadline) {
      fail(`no "${marker}" line for ${what} in ${LOG_FILES.join(', ')} after ${timeout / 1000} s`);
    }
    await new Promise((r) => setTimeout(r, 200));
  }
}

// ---- page helpers --------------------------------------------------------------------

async function waitResult(page, sel, what, timeout = T) {
  // A result box is final once its data-code is neither PENDING nor a 429 retry.
  try {
    await page.waitForFunction((s) => {
      const r = document.querySelector(s);
      return r && !r.hidden && r.dataset.code && !['PENDING', 'RATE_LIMITED'].includes(r.dataset.code);
    }, sel, { timeout });
  } catch {
    fail(`${what}: no result in ${sel} within ${timeout / 1000} s`);
  }
  const r = page.locator(sel);
  return { code: await r.getAttribute('data-code'), text: (await r.textContent()).trim() };
}

async function expectOk(page, sel, what, timeout = T) {
  const r = await waitResult(page, sel, what, timeout);
  if (r.code !== 'OK') fail(`${what}: ${sel} says ${r.code}: ${r.text}`);
  return r.text;
}

async function signUp(ctx, label) {
  const page = track(await ctx.newPage(), label);
  const phone = `139${String(Math.floor(Math.random() * 1e8)).padStart(8, '0')}`;
  const password = `pw-${RUN}-${label}`;
  await page.goto(`${BASE}/signup.html`);
  await page.locator('#phone').fill(phone);
  await page.locator('#send-otp').click();
  await expectOk(page, '#result', `${label}: sending the one-time code`);
  const line = await newestLogLine('one-time code', { phone }, `phone ${phone}`);
  const code = field(line, 'code');
  if (!/^\d+$/.test(code || '')) fail(`${label}: no numeric code= in the log line: ${line}`);
  await page.locator('#otp').fill(code);
  await page.locator('#name').fill(`${label} ${RUN}`);
  await page.locator('#password').fill(password);
  await page.locator('#signup-submit').click();
  // Sign-up logs in and goes to the list; a failure shows in #result.
  // (Each wait settles to a word, so the loser of the race never rejects later.)
  const landed = page.waitForURL(/\/index\.html$/, { timeout: T }).then(() => 'landed', () => 'timeout');
  const refused = page.locator('#result[data-code]:not([data-code="OK"])').waitFor({ timeout: T }).then(() => 'refused', () => 'timeout');
  const outcome = await Promise.race([landed, refused]);
  let needLogin = false;
  if (outcome === 'refused') {
    const r = page.locator('#result');
    const text = (await r.textContent()).trim();
    // "Account created, but logging in failed": log in through the login page.
    if (!/^Account created/.test(text)) fail(`${label}: sign-up refused: ${await r.getAttribute('data-code')}: ${text}`);
    needLogin = true;
  } else if (outcome !== 'landed' && (await landed) !== 'landed') {
    fail(`${label}: sign-up did not land on index.html within ${T / 1000} s (at ${page.url()})`);
  } else {
    await page.locator('#nav-user, #nav-login').first().waitFor({ timeout: T });
    needLogin = !(await page.locator('#nav-user').isVisible());
  }
  if (needLogin) {
    console.log(`     ${label}: sign-up did not log in; logging in at login.html`);
    await page.goto(`${BASE}/login.html`);
    await page.locator('#phone').fill(phone);
    await page.locator('#password').fill(password);
    await page.locator('#login-submit').click();
    await page.waitForURL(/\/index\.html$/, { timeout: T })
      .catch(async () => fail(`${label}: logging in failed: ${await page.locator('#result').textContent()}`));
  }
  await page.locator('#nav-user').waitFor({ timeout: T });
  const me = await ctx.request.get(`${BASE}/api/v1/me`);
  if (!me.ok()) fail(`${label}: GET /api/v1/me answered ${me.status()} after logging in`);
  const user = await me.json();
  return { page, phone, user };
}

async function openItemFromList(page, itemId, title) {
  const card = page.locator(`a.item-card[data-item-id="${itemId}"]`);
  const more = page.locator('#items-more');
  // The list comes a page at a time (most sales first): "Show more" until
  // the card is there.
  for (let pages = 1; ; pages += 1) {
    await page.waitForFunction(() => {
      const loading = document.querySelector('#items-loading');
      const button = document.querySelector('#items-more');
      return loading.hidden && !button.disabled;
    }, null, { timeout: T }).catch(() => fail('the item list did not load'));
    if (await card.count()) break;
    if (!(await more.isVisible())) fail(`the item list has no card for item #${itemId} (${pages} page(s) shown)`);
    await more.click();
    pagesFollowed += 1;
  }
  const text = await card.textContent();
  if (!text.includes(title)) fail(`item card #${itemId} does not show the title "${title}": ${text}`);
  await card.click();
  await page.waitForURL(new RegExp(`/item\\.html\\?id=${itemId}$`), { timeout: T });
  await page.locator('#item').waitFor({ timeout: T });
  const shown = (await page.locator('#item-title').textContent()).trim();
  if (shown !== title) fail(`item page title is "${shown}", want "${title}"`);
}

/** Captcha dialog open: wait for its image, read its answer from the log, type, submit. */
async function solveCaptcha(page, userId, promoId, used) {
  const dialog = page.locator('#captcha-dialog');
  try {
    await page.waitForFunction(() => {
      const d = document.querySelector('#captcha-dialog');
      const i = document.querySelector('#captcha-img');
      return d.open && i.complete && i.naturalWidth > 0;
    }, null, { timeout: T });
  } catch {
    fail(`the captcha dialog did not open with a loaded image within ${T / 1000} s (error shown: "${await page.locator('#captcha-error').textContent()}")`);
  }
  const line = await newestLogLine('captcha drawn', { user_id: userId, promo_id: promoId },
    `user ${userId}, promo ${promoId} (is the server run with SECKILL_CAPTCHA_LOG_ANSWERS=true?)`, (l) => !used.has(l));
  used.add(line);
  const answer = field(line, 'answer');
  if (!answer) fail(`no answer= in the captcha log line: ${line}`);
  await page.locator('#captcha-input').fill(answer);
  await page.locator('#captcha-submit').click();
  await dialog.waitFor({ state: 'hidden', timeout: T });
}

/** Click "Buy", solve the captcha (new image on a wrong answer, up to 3 tries); the final result. */
async function buy(page, userId, promoId, what) {
  await page.locator('#buy-button').click();
  const used = new Set();
  for (let tries = 1; ; tries++) {
    await solveCaptcha(page, userId, promoId, used);
    const r = await waitResult(page, '#result', what, 30000);
    if (r.code !== 'WRONG_CAPTCHA' || tries >= 3) return r;
    console.log(`     captcha refused (try ${tries}), the page shows a new one`);
  }
}

// ---- the journey -----------------------------------------------------------------------

async function main() {
  await mkdir(SHOTS, { recursive: true });
  console.log(`journey ${RUN} against ${BASE}; screenshots in ${SHOTS}`);
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    // launch() gives the browser a fresh temporary --user-data-dir of its own.
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--disable-background-networking',
      '--disable-component-update', '--no-first-run', '--disable-sync'],
  });
  try {
    await journey(browser);
  } catch (e) {
    process.exitCode = 1;
    report(e);
    await failureShots();
  } finally {
    await browser.close().catch(() => {});
  }
}

function report(e) {
  const msg = e instanceof JourneyError ? e.message : (e.stack || String(e));
  console.error(`FAIL ${currentStep}: ${msg}`);
  if (problems.length && !msg.startsWith('errors in the page')) {
    console.error(`page errors seen:\n  ${problems.join('\n  ')}`);
  }
}

async function newContext(browser, opts = {}) {
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 900 }, ...opts });
  ctx.setDefaultTimeout(T);
  ctx.setDefaultNavigationTimeout(T);
  return ctx;
}

async function journey(browser) {
  const title = `Browser test ${RUN}`;
  let itemId;
  let promoId;

  // a. admin ---------------------------------------------------------------------------
  const adminCtx = await newContext(browser);
  const admin = track(await adminCtx.newPage(), 'admin');

  await step('admin: token accepted', async () => {
    await admin.goto(`${BASE}/admin.html`);
    await admin.locator('#admin-token').fill(ADMIN_TOKEN);
    await admin.locator('#admin-token-save').click();
    // With a good token the promo list loads and its result box is cleared.
    await admin.waitForFunction(() => {
      const r = document.querySelector('#promos-result');
      return r.hidden && !r.dataset.code;
    }, null, { timeout: T }).catch(async () => {
      fail(`the admin token was not accepted: ${await admin.locator('#promos-result').textContent()}`);
    });
    await admin.locator('#health[data-status="ok"]').waitFor({ timeout: T })
      .catch(() => fail('the admin page does not show health "ready"'));
  });

  await step('admin: an item listed before the sale\'s (the list comes in pages)', async () => {
    // Same sales (0), lower id: listed first, so with SECKILL_ITEM_LIST_PAGE_MAX=1
    // the buyer's list shows the sale's item only on its second page.
    const r = await adminCtx.request.post(`${BASE}/api/v1/admin/items`, {
      headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
      data: { title: `Filler ${RUN}`, price_cents: 100, stock: 0, description: 'listed before the sale', image_url: '' },
    });
    if (r.status() !== 201) fail(`creating the filler item answered ${r.status()}: ${await r.text()}`);
  });

  await step('admin: item created (stock 1)', async () => {
    await admin.locator('#item-title').fill(title);
    await admin.locator('#item-price').fill('99.00');
    await admin.locator('#item-stock').fill('1');
    await admin.locator('#item-description').fill('Created by tests/browser/journey.mjs');
    await admin.locator('#item-submit').click();
    const text = await expectOk(admin, '#create-item-result', 'creating the item');
    itemId = Number(text.match(/#(\d+)/)?.[1]);
    if (!itemId) fail(`no item id in "${text}"`);
  });

  await step(`admin: promo created (item #${itemId}, starts in ${LEAD_S} s)`, async () => {
    await admin.locator(`#promo-item-select option[value="${itemId}"]`).waitFor({ state: 'attached' });
    await admin.locator('#promo-item-select').selectOption(String(itemId));
    await admin.locator('#promo-name').fill(`Flash ${RUN}`);
    await admin.locator('#promo-price').fill('9.90');
    // datetime-local values in the browser's own time zone, to the second
    // (Chromium drops ":00" seconds from the value, so do the same).
    const [start, end] = await admin.evaluate(([lead, minutes]) => {
      const p = (n) => String(n).padStart(2, '0');
      const fmt = (d) => `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}T${p(d.getHours())}:${p(d.getMinutes())}${
        d.getSeconds() ? `:${p(d.getSeconds())}` : ''}`;
      const s = new Date(Date.now() + lead * 1000);
      s.setMilliseconds(0);
      return [fmt(s), fmt(new Date(s.getTime() + minutes * 60000))];
    }, [LEAD_S, SALE_MINUTES]);
    await admin.locator('#promo-start').fill(start);
    await admin.locator('#promo-end').fill(end);
    await admin.locator('#promo-submit').click();
    const text = await expectOk(admin, '#create-promo-result', 'creating the promo');
    promoId = Number(text.match(/#(\d+)/)?.[1]);
    if (!promoId) fail(`no promo id in "${text}"`);
  });

  await step(`admin: promo #${promoId} published`, async () => {
    const row = admin.locator(`#promos-body tr[data-promo-id="${promoId}"]`);
    await row.locator('.publish-button').click();
    await expectOk(admin, '#promos-result', 'publishing the promo');
    const published = (await row.locator('td.published').textContent()).trim();
    if (published !== 'yes') fail(`promo row says published "${published}"`);
  });

  await step('admin: watching the live dashboard', async () => {
    const row = admin.locator(`#promos-body tr[data-promo-id="${promoId}"]`);
    await row.locator('.watch-button').click();
    await admin.locator('#watch-panel').waitFor({ state: 'visible' });
    const heading = await admin.locator('#watch-title').textContent();
    if (!heading.includes(`#${promoId}`)) fail(`the watch panel watches "${heading}", not promo #${promoId}`);
    await admin.waitForFunction(() => document.querySelector('#stats-initial').textContent === '1', null, { timeout: T })
      .catch(() => fail('the dashboard does not show the initial stock 1'));
    const sold = await admin.locator('#stats-sold').textContent();
    if (sold !== '0') fail(`the dashboard shows sold ${sold} before the sale`);
    await admin.locator('#watch-panel').scrollIntoViewIfNeeded();
    await shot(admin, 'admin-watch');
  });

  // b. buyer 1 ---------------------------------------------------------------------------
  const b1Ctx = await newContext(browser);
  const b1 = await step('buyer 1: signed up and logged in', async () => {
    const r = await signUp(b1Ctx, 'buyer 1');
    console.log(`     phone ${r.phone}, user #${r.user.id}`);
    return r;
  });
  const page1 = b1.page;

  await step('buyer 1: item page counts down', async () => {
    await openItemFromList(page1, itemId, title);
    if (process.env.ITEM_LIST_PAGE_MAX === '1' && pagesFollowed === 0) {
      fail('with one item a page, the sale\'s item was on the list\'s first page: the filler item should come first');
    }
    await page1.locator('#countdown[data-phase="not_started"]').waitFor({ timeout: T }).catch(async () => {
      fail(`no countdown: the countdown shows "${await page1.locator('#countdown').textContent()}" `
        + `(phase ${await page1.locator('#countdown').getAttribute('data-phase')}); raise PROMO_LEAD_SECONDS if the sale started already`);
    });
    const cd = await page1.locator('#countdown').textContent();
    if (!/^Starts in \d\d:\d\d:\d\d$/.test(cd)) fail(`countdown text "${cd}"`);
    const state = await page1.locator('#buy-button').getAttribute('data-state');
    if (state !== 'not_started' || !(await page1.locator('#buy-button').isDisabled())) {
      fail(`before the sale the buy button is in state ${state} (enabled: ${!(await page1.locator('#buy-button').isDisabled())})`);
    }
    await shot(page1, 'item-countdown');
  });

  await step('buyer 1: sale opens, buy button enabled', async () => {
    await page1.locator('#buy-button[data-state="ready"]:enabled').waitFor({ timeout: (LEAD_S + 30) * 1000 })
      .catch(async () => fail(`the buy button did not become ready (state ${await page1.locator('#buy-button').getAttribute('data-state')}, `
        + `countdown "${await page1.locator('#countdown').textContent()}")`));
    const phase = await page1.locator('#countdown').getAttribute('data-phase');
    if (phase !== 'ongoing') fail(`the button is ready but the countdown phase is ${phase}`);
  });

  let orderNo;
  await step('buyer 1: bought through the captcha', async () => {
    const r = await buy(page1, b1.user.id, promoId, 'buyer 1 buying');
    if (r.code !== 'OK') fail(`buyer 1's purchase failed: ${r.code}: ${r.text}`);
    orderNo = await page1.locator('#result').getAttribute('data-order-no');
    if (!orderNo) fail('the success result has no data-order-no');
    await page1.locator('#buy-button[data-state="bought"]').waitFor({ timeout: T })
      .catch(() => fail('after buying, the button does not say "Bought"'));
    console.log(`     order ${orderNo}`);
    await shot(page1, 'purchase-success');
  });

  await step('buyer 1: order listed under My orders', async () => {
    await page1.locator('#orders-link').click();
    await page1.waitForURL(/\/orders\.html$/);
    const row = page1.locator(`#orders-body tr[data-order-no="${orderNo}"]`);
    await row.waitFor({ timeout: T }).catch(() => fail(`order ${orderNo} is not listed on orders.html`));
    const status = await row.getAttribute('data-status');
    if (status !== 'pending_payment') fail(`order ${orderNo} has status ${status}`);
    const item = (await row.locator('td.item').textContent()).trim();
    if (item !== title) fail(`order ${orderNo} shows item "${item}"`);
    const total = (await row.locator('td.total').textContent()).trim();
    if (total !== '¥9.90') fail(`order ${orderNo} shows total ${total}`);
    await shot(page1, 'orders');
  });

  // c. buyer 2 ---------------------------------------------------------------------------
  const b2Ctx = await newContext(browser);
  const b2 = await step('buyer 2: signed up and logged in', async () => {
    const r = await signUp(b2Ctx, 'buyer 2');
    console.log(`     phone ${r.phone}, user #${r.user.id}`);
    return r;
  });
  const page2 = b2.page;

  await step('buyer 2: the item is sold out', async () => {
    // Trying to buy the last unit's item: the server answers 409 SOLD_OUT.
    const undo = [
      allowNet({ path: /^\/api\/v1\/promos\/\d+\/tokens$/, status: 409 }),
      allowNet({ path: /^\/api\/v1\/orders$/, status: 409 }),
    ];
    try {
      await openItemFromList(page2, itemId, title);
      const btn = page2.locator('#buy-button');
      await page2.locator('#buy-button[data-state="ready"], #buy-button[data-state="sold_out"]').waitFor({ timeout: T })
        .catch(async () => fail(`buyer 2's buy button is in state ${await btn.getAttribute('data-state')}`));
      let how;
      if ((await btn.getAttribute('data-state')) === 'ready') {
        // The page does not know yet (stock shown before the DB caught up): try.
        const r = await buy(page2, b2.user.id, promoId, 'buyer 2 buying');
        if (r.code !== 'SOLD_OUT') fail(`buyer 2 wanted SOLD_OUT, got ${r.code}: ${r.text}`);
        if (!/sold out/i.test(r.text)) fail(`the SOLD_OUT result reads "${r.text}"`);
        how = `answered SOLD_OUT: "${r.text}"`;
      } else {
        how = 'button already disabled';
      }
      await page2.locator('#buy-button[data-state="sold_out"]:disabled').waitFor({ timeout: T })
        .catch(async () => fail(`the buy button is not a disabled "Sold out" (state ${await btn.getAttribute('data-state')})`));
      const label = (await btn.textContent()).trim();
      if (label !== 'Sold out') fail(`the disabled button reads "${label}"`);
      console.log(`     ${how}`);
      await shot(page2, 'sold-out');
    } finally {
      undo.forEach((f) => f());
    }
  });

  // d. admin dashboard ----------------------------------------------------------------------
  await step('admin: dashboard shows sold 1', async () => {
    await admin.bringToFront();
    await admin.waitForFunction(() => document.querySelector('#stats-sold').textContent === '1', null, { timeout: 10000 })
      .catch(async () => fail(`the dashboard still shows sold ${await admin.locator('#stats-sold').textContent()} after 10 s`));
    await admin.waitForFunction(() => document.querySelector('#stats-orders').textContent === '1', null, { timeout: 10000 })
      .catch(async () => fail(`the dashboard shows ${await admin.locator('#stats-orders').textContent()} orders`));
    await admin.locator('#watch-panel').scrollIntoViewIfNeeded();
    await shot(admin, 'admin-dashboard');
  });

  // e. phone ------------------------------------------------------------------------------
  await step('phone (375 px): item page', async () => {
    const ctx = await newContext(browser, {
      viewport: { width: 375, height: 812 }, deviceScaleFactor: 2, isMobile: true, hasTouch: true,
    });
    const page = track(await ctx.newPage(), 'phone');
    await page.goto(`${BASE}/item.html?id=${itemId}`);
    await page.locator('#item').waitFor();
    await page.locator('#buy-button[data-state="sold_out"]').waitFor()
      .catch(async () => fail(`on the phone the button is in state ${await page.locator('#buy-button').getAttribute('data-state')}`));
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
    if (overflow > 0) fail(`the item page is ${overflow} px wider than the 375 px screen`);
    await shot(page, 'mobile-item');
    await ctx.close();
  });

  // f. the admin ends the sale -------------------------------------------------------------
  await step(`admin: promo #${promoId} ended now`, async () => {
    await admin.bringToFront();
    const row = admin.locator(`#promos-body tr[data-promo-id="${promoId}"]`);
    admin.once('dialog', (d) => d.accept());
    await row.locator('.end-button').click();
    // (The box still shows the publish's OK: wait for this answer's words.)
    await admin.waitForFunction((id) => {
      const r = document.querySelector('#promos-result');
      return !r.hidden && (r.dataset.code !== 'OK' || r.textContent.includes(`Promo #${id} ended`));
    }, promoId, { timeout: T }).catch(() => fail('no answer to "End now"'));
    await expectOk(admin, '#promos-result', 'ending the promo');
    await admin.locator(`#promos-body tr[data-promo-id="${promoId}"] .promo-phase[data-status="ended"]`).waitFor()
      .catch(() => fail('the promo row does not show "ended"'));
    if (await admin.locator(`#promos-body tr[data-promo-id="${promoId}"] .end-button`).count()) {
      fail('an ended promo still offers "End now"');
    }
    // The buyer's page follows (it reads the item every 3 s).
    await page1.goto(`${BASE}/item.html?id=${itemId}`);
    await page1.locator('#countdown[data-phase="ended"]').waitFor()
      .catch(async () => fail(`the item page shows phase ${await page1.locator('#countdown').getAttribute('data-phase')} after the end`));
  });

  await writeFile(path.join(SHOTS, 'journey.json'), `${JSON.stringify({
    run: RUN, base_url: BASE, item_id: itemId, promo_id: promoId, order_no: orderNo,
    buyers: [b1.user.id, b2.user.id], seconds: (Date.now() - t0) / 1000,
  }, null, 2)}\n`);
  console.log(`PASS journey ${RUN} in ${since()}`);
}

// A last guard: every wait above has its own timeout, but never hang CI.
const WATCHDOG_S = Number(process.env.JOURNEY_TIMEOUT_S || 300);
setTimeout(async () => {
  console.error(`FAIL ${currentStep}: the journey did not finish within ${WATCHDOG_S} s`);
  await failureShots().catch(() => {});
  process.exit(1);
}, WATCHDOG_S * 1000).unref();

main().catch((e) => {
  process.exitCode = 1;
  report(e);
});
