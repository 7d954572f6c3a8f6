// Item detail and the purchase flow: captcha → seckill token → order.
// Every phase decision uses the server clock (serverNow), never the raw local one.
import {
  $, API, api, clearResult, el, fmtDuration, fmtTime, goLogin, itemImage, money, parseTime,
  promoPhase, renderNav, retryAfterMs, serverNow, showResult, sleep, startClock, STATUS_LABEL, syncClock, tryAgainIn,
} from './app.js';

const MAX_TRIES = 8; // attempts per call when the server answers 429 or 503
const LONG_WAIT_MS = 10_000; // a Retry-After longer than this is told to the buyer, not waited
const itemId = Number(new URLSearchParams(location.search).get('id'));
const S = { item: null, promoId: null, blocked: null, busy: false, imageKey: null };
const result = $('#result');
const buy = $('#buy-button');
const dialog = $('#captcha-dialog');
const cImg = $('#captcha-img');
const cInput = $('#captcha-input');
const cErr = $('#captcha-error');

const userReady = renderNav();
const captchaReady = api('config').then((c) => c?.captcha_enabled !== false).catch(() => true);

const FAILURE = {
  SOLD_OUT: 'Sold out: every unit has been taken.',
  ALREADY_BOUGHT: 'You already have an order in this sale (one per person; a cancelled order counts too).',
  PROMO_NOT_STARTED: 'The sale has not started yet.',
  PROMO_ENDED: 'The sale has ended.',
  PROMO_NOT_PUBLISHED: 'This sale is not open yet.',
  WRONG_CAPTCHA: 'Wrong captcha, please try again.',
  INVALID_TOKEN: 'Your purchase token expired or was already used. Please try again.',
  UNAUTHENTICATED: 'Please log in first. Redirecting…',
  RATE_LIMITED: 'Still too busy after several retries. Please try again in a moment.',
  // The server's own words for a 503 are shown: "nothing was written", or "the
  // order's outcome is not known yet" (see My orders before trying again).
  NETWORK_ERROR: 'Network error; please check your connection and try again.',
};

/** A retry's wait: the back-off, or the server's Retry-After when longer, spread out. */
const retryWait = (backoffMs, retryAfter) => Math.max(backoffMs, (retryAfter ?? 0) * (1 + Math.random() / 2));

async function loadItem() {
  try {
    S.item = await api(`items/${itemId}`);
    render();
  } catch (e) {
    if (S.item) return; // keep showing the last copy; the next poll may succeed
    const box = $('#item-missing');
    box.hidden = false;
    box.dataset.code = e.code;
    box.textContent = e.code === 'NOT_FOUND' ? 'No such item.' : `Could not load the item: ${e.message}`;
  }
}

function render() {
  const it = S.item;
  const p = it.promo;
  if ((p?.id ?? null) !== S.promoId) { // a different promo: earlier answers no longer apply
    S.promoId = p?.id ?? null;
    S.blocked = null;
    if (p) checkOwned(p.id);
  } else if (S.blocked === 'SOLD_OUT' && it.stock > 0) {
    S.blocked = null; // units given back (a cancelled or unpaid order): for sale again
  }
  $('#item').hidden = false;
  $('#item-missing').hidden = true;
  document.title = `${it.title} · Seckill 秒杀`;
  $('#item-title').textContent = it.title;
  const key = `${it.image_url}\n${it.title}`;
  if (key !== S.imageKey) {
    S.imageKey = key;
    $('#item-image').replaceChildren(itemImage(it.image_url, it.title));
  }
  $('#item-description').textContent = it.description || '';
  $('#stock').textContent = it.stock;
  $('#sales').textContent = it.sales;
  $('#price').textContent = money(it.price_cents);
  $('#sale').hidden = !p;
  $('#plain-price-line').hidden = !!p;
  if (p) {
    $('#promo-name').textContent = p.name;
    $('#promo-price').textContent = money(p.price_cents);
    $('#normal-price').textContent = money(it.price_cents);
    $('#promo-start').textContent = fmtTime(p.start_at);
    $('#promo-end').textContent = fmtTime(p.end_at);
  }
  tick();
}

/**
 * A returning buyer who already has an order in this promo sees "Already
 * bought" up front instead of solving a captcha only to be told so. Any order
 * counts, cancelled ones too: the server keeps one order per user and promo
 * (a cancelled order still answers ALREADY_BOUGHT), and this page buys one
 * unit at a time.
 */
async function checkOwned(promoId) {
  if (!(await userReady)) return;
  try {
    const { orders } = await api('orders');
    if (orders.some((o) => o.promo_id === promoId) && S.promoId === promoId && S.blocked === null) {
      S.blocked = 'ALREADY_BOUGHT';
      tick();
    }
  } catch { /* a nicety: the order call still answers ALREADY_BOUGHT */ }
}

/** Countdown, status badge and buy button; runs 4× a second. */
function tick() {
  const it = S.item;
  if (!it) return;
  const p = it.promo;
  let state = 'no_promo';
  let label = 'Not on flash sale';
  if (p) {
    const now = serverNow();
    const phase = promoPhase(p, now);
    const badge = $('#promo-status');
    badge.textContent = STATUS_LABEL[phase] || phase;
    badge.dataset.status = phase;
    const cd = $('#countdown');
    cd.dataset.phase = phase;
    cd.textContent = phase === 'not_started' ? `Starts in ${fmtDuration(parseTime(p.start_at) - now)}`
      : phase === 'ongoing' ? `Ends in ${fmtDuration(parseTime(p.end_at) - now)}` : 'This sale has ended';
    [state, label] = S.busy ? ['busy', 'Processing…']
      : phase === 'ended' ? ['ended', 'Sale ended']
      : !p.published ? ['not_published', 'Not open yet']
      : phase === 'not_started' ? ['not_started', 'Starts soon']
      : S.blocked === 'BOUGHT' ? ['bought', 'Bought ✓']
      : S.blocked === 'ALREADY_BOUGHT' ? ['already_bought', 'Already bought']
      : S.blocked === 'SOLD_OUT' || it.stock <= 0 ? ['sold_out', 'Sold out']
      : ['ready', `Buy now · ${money(p.price_cents)}`];
  }
  buy.disabled = state !== 'ready';
  buy.dataset.state = state;
  if (buy.textContent !== label) buy.textContent = label;
}

// ---- captcha dialog -------------------------------------------------------------

// A crowd drawing captchas at the start may be told to retry (429, 503):
// the image is asked again a few times, backing off, before the buyer is.
// Fetched (not an <img src>) so the page sees why an image did not come.
const CAPTCHA_BUSY = 'Busy, loading the captcha again…';
let captchaLoad = 0;

async function reloadCaptcha() {
  const mine = ++captchaLoad;
  const current = () => mine === captchaLoad && dialog.open;
  // The old image is no longer the one to solve.
  if (cImg.src.startsWith('blob:')) URL.revokeObjectURL(cImg.src);
  cImg.removeAttribute('src');
  const url = `${API}/promos/${encodeURIComponent(S.item.promo.id)}/captcha`;
  for (let attempt = 0; ; attempt += 1) {
    let res = null;
    let blob = null;
    try {
      res = await fetch(url, { credentials: 'same-origin', cache: 'no-store' });
      if (res.ok) blob = await res.blob();
    } catch {
      res = null;
    }
    // A newer load, or the dialog closed: this one's answer is nobody's.
    if (!current()) return;
    if (blob) {
      cImg.src = URL.createObjectURL(blob);
      if (cErr.textContent === CAPTCHA_BUSY) cErr.textContent = '';
      return;
    }
    if (res?.status === 401) return goLogin();
    // A long Retry-After (a limit per minute set low) is shown, not waited out.
    const wait = retryAfterMs(res);
    const long = wait > LONG_WAIT_MS;
    const busy = (!res || res.status === 429 || res.status === 503) && !long;
    if (!busy || attempt >= 4) {
      const body = res ? await res.json().catch(() => null) : null;
      if (!current()) return;
      cErr.textContent = res?.status === 429 && long
        ? `Too many captchas drawn, ${tryAgainIn(wait)}.`
        : body?.message || 'The captcha image could not be loaded. Try "Refresh".';
      return;
    }
    // The reason the buyer is back in the dialog, if any, stays shown.
    if (!cErr.textContent) cErr.textContent = CAPTCHA_BUSY;
    await sleep(retryWait(400 * 2 ** attempt * (0.5 + Math.random()), wait));
    if (!current()) return;
  }
}

function openCaptcha(message = '') {
  cErr.textContent = message;
  cInput.value = '';
  reloadCaptcha();
  if (!dialog.open) dialog.showModal();
  cInput.focus();
}

$('#captcha-refresh').addEventListener('click', (e) => {
  e.preventDefault();
  reloadCaptcha();
  cInput.focus();
});
$('#captcha-cancel').addEventListener('click', () => dialog.close());
$('#captcha-form').addEventListener('submit', (e) => {
  e.preventDefault();
  const answer = cInput.value.trim();
  if (!answer) {
    cErr.textContent = 'Type the characters shown in the image.';
    return;
  }
  dialog.close();
  purchase(answer);
});

// ---- purchase ---------------------------------------------------------------------

buy.addEventListener('click', async () => {
  if (buy.disabled || S.busy) return;
  // Busy from the first moment: a second click while this one asks the
  // server (who is logged in, whether a captcha is needed) starts nothing.
  S.busy = true;
  tick();
  let buying = false;
  try {
    if (!(await userReady)) {
      // Only a 401 means logged out: the page's first /me may have met a busy
      // server (503, 429, the network); ask again now.
      try {
        await api('me');
      } catch (e) {
        if (e.status === 401) {
          showResult(result, 'UNAUTHENTICATED', 'info', FAILURE.UNAUTHENTICATED);
          goLogin();
          return;
        }
      }
    }
    clearResult(result);
    if (await captchaReady) {
      openCaptcha(); // modal: no second click until it closes
    } else {
      buying = true;
      purchase(undefined); // busy until it ends
    }
  } finally {
    if (!buying) {
      S.busy = false;
      tick();
    }
  }
});

/**
 * Calls fn again on 429 or 503 with capped exponential back-off (200 ms doubling
 * to 3 s) and jitter, waiting at least what the answer's Retry-After asks: the
 * server keeps the captcha answer and the seckill token good for a retry after
 * either. `onRetry(e)` hears of each failure retried.
 */
async function withRetry(fn, onRetry = () => {}) {
  for (let attempt = 1; ; attempt++) {
    try {
      return await fn();
    } catch (e) {
      if (!['RATE_LIMITED', 'UNAVAILABLE'].includes(e.code) || attempt >= MAX_TRIES || e.retryAfterMs > LONG_WAIT_MS) throw e;
      onRetry(e);
      const cap = Math.min(3000, 200 * 2 ** (attempt - 1));
      const why = e.code === 'RATE_LIMITED' ? 'Queue full' : 'Service busy';
      showResult(result, e.code, 'info', `${why}, retrying… (attempt ${attempt + 1} of ${MAX_TRIES})`);
      await sleep(retryWait(cap / 2 + Math.random() * (cap / 2), e.retryAfterMs));
    }
  }
}

/**
 * The caller's order in promo `promoId` (one order a buyer a promo), if
 * any and not cancelled: after a 503 whose outcome was not known, the
 * retry is refused (its token spent, or "already bought") because of an
 * order that did commit.
 */
async function orderIn(promoId) {
  try {
    const { orders } = await api('orders?limit=20'); // newest first: it is the newest
    return orders.find((o) => o.promo_id === promoId && o.status !== 'cancelled') ?? null;
  } catch {
    return null;
  }
}

/** Token then order; the order call retries 429s with the same token (a 429 does not consume it). */
async function attempt(captcha) {
  const it = S.item;
  const p = it.promo;
  const body = captcha === undefined ? { item_id: it.id } : { item_id: it.id, captcha };
  showResult(result, 'PENDING', 'info', 'Getting your purchase token…');
  const { token } = await withRetry(() => api(`promos/${p.id}/tokens`, { method: 'POST', body }));
  showResult(result, 'PENDING', 'info', 'Placing your order…');
  let unknown = false; // a 503 may stand for an order that committed
  const order = await withRetry(() => api('orders', {
    method: 'POST', body: { promo_id: p.id, item_id: it.id, amount: 1, token },
  }), (e) => { if (e.code === 'UNAVAILABLE') unknown = true; }).catch(async (e) => {
    // Refused after a 503: because of the order the 503 did not confirm?
    const placed = unknown && ['INVALID_TOKEN', 'ALREADY_BOUGHT'].includes(e.code) ? await orderIn(p.id) : null;
    if (placed) return placed;
    throw e;
  });
  S.blocked = 'BOUGHT';
  showResult(result, 'OK', 'ok', `Success! Order ${order.order_no}, total ${money(order.total_cents)}. `,
    el('a', { href: 'orders.html', id: 'orders-link' }, 'Pay in My orders →'));
  result.dataset.orderNo = order.order_no;
  loadItem();
}

async function purchase(captcha) {
  S.busy = true;
  tick();
  try {
    for (let renewed = false; ; renewed = true) {
      try {
        await attempt(captcha);
        return;
      } catch (e) {
        // Without a captcha a fresh token needs no user input: get one once, automatically.
        if (e.code === 'INVALID_TOKEN' && captcha === undefined && !renewed) continue;
        failed(e, captcha !== undefined);
        return;
      }
    }
  } finally {
    S.busy = false;
    tick();
  }
}

function failed(e, withCaptcha) {
  const code = e.code || 'ERROR';
  const msg = FAILURE[code] || e.message || 'Something went wrong.';
  const ordersLink = () => el('a', { href: 'orders.html' }, 'See my orders');
  switch (code) {
    case 'WRONG_CAPTCHA':
      showResult(result, code, 'error', msg);
      openCaptcha('That was not right. Here is a new image.');
      return;
    case 'INVALID_TOKEN':
      if (!withCaptcha) break; // one automatic renewal already failed: let the user click again
      showResult(result, code, 'error', 'Your purchase token expired or was already used. Solve a new captcha to get a new one.');
      openCaptcha('Your token expired. Please solve a new captcha.');
      return;
    case 'SOLD_OUT':
    case 'ALREADY_BOUGHT':
      S.blocked = code;
      showResult(result, code, 'error', msg, ' ', code === 'ALREADY_BOUGHT' ? ordersLink() : '');
      loadItem();
      return;
    case 'UNAUTHENTICATED':
      showResult(result, code, 'info', msg);
      goLogin();
      return;
    case 'UNAVAILABLE':
    case 'NETWORK_ERROR':
      // The order may have gone through: say where to look before a retry.
      showResult(result, code, 'info', `${msg} `, ordersLink());
      return;
    case 'PROMO_NOT_STARTED':
      syncClock().then(tick);
      break;
    case 'PROMO_ENDED':
    case 'PROMO_NOT_PUBLISHED':
    case 'NOT_FOUND':
      loadItem();
      break;
    default:
  }
  showResult(result, code, code === 'RATE_LIMITED' || code === 'UNAVAILABLE' ? 'info' : 'error', msg);
}

// ---- start ------------------------------------------------------------------------

if (!Number.isInteger(itemId) || itemId <= 0) {
  const box = $('#item-missing');
  box.hidden = false;
  box.dataset.code = 'NOT_FOUND';
  box.textContent = 'No item selected. Go back to the list and pick one.';
} else {
  startClock(30000).then(tick);
  loadItem();
  setInterval(() => { if (!document.hidden && !S.busy) loadItem(); }, 3000);
  setInterval(tick, 250);
}
