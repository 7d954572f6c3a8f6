// Admin console: items, promos, publish, live promo stats and health.
// The admin token lives in sessionStorage only and goes out as a bearer header.
import {
  $, api, clearResult, el, fmtTime, getAdminToken, money, parseYuan, promoPhase, renderNav,
  setAdminToken, showResult, startClock, STATUS_LABEL, toLocalInput, toRfc3339,
} from './app.js';

let items = new Map(); // id → ItemView
let promos = [];
let watch = null; // { promo, prev, samples, total, timer }

const tokenInput = $('#admin-token');
const promosResult = $('#promos-result');
const watchResult = $('#watch-result');

function adminError(node, e) {
  const msg = e.status === 401 || e.status === 403
    ? (getAdminToken() ? `Refused (${e.code}): wrong admin token, or the admin API is closed (SECKILL_ADMIN_TOKEN unset).`
      : 'Enter the admin token first.')
    : e.message;
  showResult(node, e.code, 'error', msg);
}

// ---- token -------------------------------------------------------------------------

tokenInput.value = getAdminToken();
$('#token-form').addEventListener('submit', (e) => {
  e.preventDefault();
  setAdminToken(tokenInput.value.trim());
  loadPromos();
});
$('#admin-token-clear').addEventListener('click', () => {
  setAdminToken('');
  tokenInput.value = '';
  stopWatch();
  promos = [];
  renderPromos();
});

// ---- health ------------------------------------------------------------------------

function flatten(v, prefix = '') {
  if (v === null || typeof v !== 'object') return [[prefix || 'body', String(v)]];
  return Object.entries(v).flatMap(([k, x]) => flatten(x, prefix ? `${prefix}.${k}` : k));
}

async function pollHealth() {
  let ok = false;
  let body;
  let status = 0;
  try {
    body = await api('/readyz');
    ok = true;
    status = 200;
  } catch (e) {
    body = e.body;
    status = e.status;
  }
  const h = $('#health');
  h.dataset.status = ok ? 'ok' : 'down';
  h.textContent = ok ? 'ready' : status ? `not ready (${status})` : 'unreachable';
  $('#health-details').replaceChildren(...(body == null ? [] : flatten(body)).map(([k, v]) => el('li', {}, `${k}: ${v}`)));
  setTimeout(pollHealth, 5000);
}

// ---- items -------------------------------------------------------------------------

function fillSelect(sel, want) {
  const keep = want ?? Number(sel.value);
  sel.replaceChildren(...[...items.values()].sort((a, b) => a.id - b.id)
    .map((i) => el('option', { value: i.id }, `#${i.id} ${i.title}`)));
  if (items.has(keep)) sel.value = String(keep);
}

function fillEdit() {
  const it = items.get(Number($('#edit-item-select').value));
  $('#edit-title').value = it?.title ?? '';
  $('#edit-price').value = it ? (it.price_cents / 100).toFixed(2) : '';
  $('#edit-description').value = it?.description ?? '';
  $('#edit-image-url').value = it?.image_url ?? '';
}

function refreshSelects(editId, promoItemId) {
  fillSelect($('#edit-item-select'), editId);
  fillSelect($('#promo-item-select'), promoItemId);
  fillEdit();
}

/**
 * Every page of a list: `key` names its rows, `next` the answer's field naming
 * the next page, `param` the query parameter that asks for it; at most about
 * `cap` rows.
 */
async function allPages(path, { key, next, param, cap, admin = false }) {
  const rows = [];
  let at = null;
  do {
    const page = await api(at === null ? path : `${path}?${param}=${at}`, { admin });
    rows.push(...(page?.[key] ?? []));
    at = page?.[next] ?? null;
  } while (at !== null && rows.length < cap);
  return rows;
}

async function loadItems() {
  try {
    // Every item (the dropdowns name them all).
    const list = await allPages('items', { key: 'items', next: 'next_offset', param: 'offset', cap: 100000 });
    items = new Map(list.map((i) => [i.id, i]));
    refreshSelects();
    renderPromos();
  } catch (e) {
    showResult($('#edit-item-result'), e.code, 'error', `Could not load items: ${e.message}`);
  }
}

$('#edit-item-select').addEventListener('change', fillEdit);

/** Runs a form's request with its submit button disabled: a double click sends one. */
async function submitting(form, request) {
  const button = form.querySelector('button[type="submit"], button:not([type])');
  if (button?.disabled) return;
  if (button) button.disabled = true;
  try {
    await request();
  } finally {
    if (button) button.disabled = false;
  }
}

$('#create-item-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  const out = $('#create-item-result');
  const priceCents = parseYuan($('#item-price').value);
  const stockText = $('#item-stock').value.trim();
  if (priceCents === null) return showResult(out, 'INVALID_ARGUMENT', 'error', 'Price: a number like 99 or 99.90.');
  if (!/^\d+$/.test(stockText)) return showResult(out, 'INVALID_ARGUMENT', 'error', 'Stock: a whole number ≥ 0.');
  const body = {
    title: $('#item-title').value.trim(),
    price_cents: priceCents,
    stock: Number(stockText),
    description: $('#item-description').value.trim(),
    image_url: $('#item-image-url').value.trim(),
  };
  await submitting(e.target, async () => {
    try {
      const it = await api('admin/items', { method: 'POST', body, admin: true });
      items.set(it.id, it);
      refreshSelects(it.id, it.id); // the next step is usually a promo for this new item
      e.target.reset();
      showResult(out, 'OK', 'ok', `Created item #${it.id} “${it.title}”.`);
    } catch (err) {
      adminError(out, err);
    }
  });
  return undefined;
});

$('#edit-item-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  const out = $('#edit-item-result');
  const it = items.get(Number($('#edit-item-select').value));
  if (!it) return showResult(out, 'INVALID_ARGUMENT', 'error', 'Pick an item.');
  const cents = parseYuan($('#edit-price').value);
  if (cents === null) return showResult(out, 'INVALID_ARGUMENT', 'error', 'Price: a number like 99 or 99.90.');
  const patch = {};
  const title = $('#edit-title').value.trim();
  const description = $('#edit-description').value.trim();
  const imageUrl = $('#edit-image-url').value.trim();
  if (title !== it.title) patch.title = title;
  if (cents !== it.price_cents) patch.price_cents = cents;
  if (description !== (it.description ?? '')) patch.description = description;
  if (imageUrl !== (it.image_url ?? '')) patch.image_url = imageUrl;
  if (!Object.keys(patch).length) return showResult(out, 'NOOP', 'info', 'Nothing changed.');
  await submitting(e.target, async () => {
    try {
      const updated = await api(`admin/items/${it.id}`, { method: 'PATCH', body: patch, admin: true });
      items.set(updated.id, updated);
      refreshSelects(updated.id);
      showResult(out, 'OK', 'ok', `Saved item #${updated.id}: ${Object.keys(patch).join(', ')}.`);
    } catch (err) {
      adminError(out, err);
    }
  });
  return undefined;
});

// ---- promos ------------------------------------------------------------------------

function defaultPromoTimes() {
  const start = new Date(Date.now() + 5 * 60000);
  start.setSeconds(0, 0);
  $('#promo-start').value = toLocalInput(start);
  $('#promo-end').value = toLocalInput(new Date(start.getTime() + 3600000));
}

$('#create-promo-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  const out = $('#create-promo-result');
  const cents = parseYuan($('#promo-price').value);
  // A datetime-local value has no offset, so Date reads it as local time.
  const start = new Date($('#promo-start').value);
  const end = new Date($('#promo-end').value);
  if (cents === null) return showResult(out, 'INVALID_ARGUMENT', 'error', 'Promo price: a number like 9.90.');
  if (Number.isNaN(start.getTime()) || Number.isNaN(end.getTime())) return showResult(out, 'INVALID_ARGUMENT', 'error', 'Set a start and an end.');
  if (end <= start) return showResult(out, 'INVALID_ARGUMENT', 'error', 'The end must be after the start.');
  const body = {
    item_id: Number($('#promo-item-select').value),
    name: $('#promo-name').value.trim(),
    price_cents: cents,
    start_at: toRfc3339(start),
    end_at: toRfc3339(end),
  };
  await submitting(e.target, async () => {
    try {
      const p = await api('admin/promos', { method: 'POST', body, admin: true });
      promos = [p, ...promos.filter((x) => x.id !== p.id)];
      renderPromos();
      showResult(out, 'OK', 'ok', `Created promo #${p.id} (not published yet: publish it below).`);
    } catch (err) {
      adminError(out, err);
    }
  });
  return undefined;
});

async function loadPromos() {
  if (!getAdminToken()) {
    showResult(promosResult, 'UNAUTHENTICATED', 'info', 'Enter the admin token to list promos.');
    return;
  }
  try {
    // Newest first (the last few thousand at most).
    promos = await allPages('admin/promos', {
      key: 'promos', next: 'next_before', param: 'before', cap: 5000, admin: true,
    });
    clearResult(promosResult);
  } catch (e) {
    adminError(promosResult, e);
  }
  renderPromos();
}

/** A promo's phase by the server clock; "ended" as the server said it is final (an early end). */
const phaseOf = (p) => (p.status === 'ended' ? 'ended' : promoPhase(p));

function renderPromos() {
  const rows = [...promos].sort((a, b) => b.id - a.id).map((p) => {
    const td = (label, cls, ...c) => el('td', { 'data-label': label, class: cls }, ...c);
    const actions = el('div', { class: 'actions' },
      p.published || phaseOf(p) === 'ended' ? null : el('button', {
        type: 'button', class: 'small primary publish-button', dataset: { testid: 'publish' }, onclick: () => publish(p),
      }, 'Publish'),
      phaseOf(p) === 'ended' ? null : el('button', {
        type: 'button', class: 'small end-button', dataset: { testid: 'end' }, onclick: (e) => endNow(p, e.target),
      }, 'End now'),
      el('button', { type: 'button', class: 'small watch-button', dataset: { testid: 'watch' }, onclick: () => startWatch(p) }, 'Watch'));
    return el('tr', { dataset: { promoId: p.id } },
      td('Id', null, p.id),
      td('Item', null, items.get(p.item_id)?.title ?? `#${p.item_id}`),
      td('Name', null, p.name),
      td('Price', 'num', money(p.price_cents)),
      td('Start', null, fmtTime(p.start_at)),
      td('End', null, fmtTime(p.end_at)),
      td('Status', null, el('span', { class: 'badge promo-phase', dataset: { status: phaseOf(p) } }, STATUS_LABEL[phaseOf(p)] || phaseOf(p))),
      td('Published', 'published', el('span', { class: p.published ? 'badge ok' : 'badge' }, p.published ? 'yes' : 'no')),
      td('', null, actions));
  });
  $('#promos-body').replaceChildren(...rows);
}

async function publish(p) {
  try {
    const updated = await api(`admin/promos/${p.id}/publish`, { method: 'POST', admin: true });
    promos = promos.map((x) => (x.id === updated.id ? updated : x));
    renderPromos();
    showResult(promosResult, 'OK', 'ok', `Published promo #${updated.id}; its stock is warmed up.`);
  } catch (e) {
    adminError(promosResult, e);
  }
}

async function endNow(p, button) {
  if (!window.confirm(`End promo #${p.id} “${p.name}” now? Its tokens and orders are refused from now on; orders placed stand.`)) return;
  button.disabled = true;
  try {
    const updated = await api(`admin/promos/${p.id}/end`, { method: 'POST', admin: true });
    promos = promos.map((x) => (x.id === updated.id ? updated : x));
    renderPromos();
    showResult(promosResult, 'OK', 'ok', `Promo #${updated.id} ended at ${fmtTime(updated.end_at)}.`);
  } catch (e) {
    button.disabled = false;
    adminError(promosResult, e);
  }
}

$('#promos-refresh').addEventListener('click', () => { loadItems(); loadPromos(); });

// ---- watch panel -------------------------------------------------------------------

function startWatch(p) {
  stopWatch();
  watch = { promo: p, prev: null, samples: [], total: 0, timer: 0 };
  $('#watch-panel').hidden = false;
  $('#watch-title').textContent = `Watching promo #${p.id} · ${p.name}`;
  clearResult(watchResult);
  pollStats(watch);
  $('#watch-panel').scrollIntoView({ behavior: 'smooth', block: 'start' });
}

function stopWatch() {
  if (watch) clearTimeout(watch.timer);
  watch = null;
  $('#watch-panel').hidden = true;
}
$('#watch-stop').addEventListener('click', stopWatch);

async function pollStats(w) {
  const started = Date.now();
  try {
    const s = await api(`admin/promos/${w.promo.id}/stats`, { admin: true });
    if (watch !== w) return;
    showStats(w, s);
    clearResult(watchResult);
  } catch (e) {
    if (watch !== w) return;
    adminError(watchResult, e);
  }
  w.timer = setTimeout(() => pollStats(w), Math.max(0, 1000 - (Date.now() - started)));
}

const show = (v) => (v == null ? '—' : String(v));

function showStats(w, s) {
  const now = performance.now();
  const refused = s.refused || {};
  if (w.prev) {
    const dt = (now - w.prev.t) / 1000;
    const per = (a, b) => (dt > 0 ? Math.max(0, (a - b) / dt) : 0);
    const reasons = {};
    for (const [k, v] of Object.entries(refused)) reasons[k] = per(v, w.prev.refused[k] || 0);
    w.samples.push({ t: now, rate: per(s.orders, w.prev.orders), refused: reasons });
  }
  w.prev = { t: now, orders: s.orders, refused };
  w.samples = w.samples.filter((x) => x.t >= now - 60000);

  // Initial stock ≈ sold + what is left (the cache leads the DB in write-behind mode).
  w.total = Math.max(w.total, (s.sold ?? 0) + (s.stock_cache ?? s.stock_db ?? 0));
  const pct = w.total ? Math.min(100, (100 * (s.sold ?? 0)) / w.total) : 0;
  $('#stats-sold').textContent = show(s.sold);
  $('#stats-initial').textContent = show(w.total);
  $('#stats-bar').style.width = `${pct}%`;
  $('#stats-progress').setAttribute('aria-valuenow', String(Math.round(pct)));

  $('#stats-stock-db').textContent = show(s.stock_db);
  $('#stats-stock-cache').textContent = show(s.stock_cache);
  const differ = s.stock_cache != null && s.stock_db !== s.stock_cache;
  for (const id of ['#stats-db-box', '#stats-cache-box']) {
    $(id).classList.toggle('mismatch', differ);
    $(id).dataset.mismatch = String(differ);
  }
  $('#stats-orders').textContent = show(s.orders);
  const last = w.samples[w.samples.length - 1];
  $('#stats-rate').textContent = last ? last.rate.toFixed(1) : '—';
  $('#stats-log-init').textContent = show(s.stock_log?.init);
  $('#stats-log-committed').textContent = show(s.stock_log?.committed);
  $('#stats-log-rolled-back').textContent = show(s.stock_log?.rolled_back);
  const totalRefused = Object.values(refused).reduce((a, b) => a + b, 0);
  const lastRefused = last ? Object.values(last.refused).reduce((a, b) => a + b, 0) : null;
  $('#stats-refused').textContent = show(totalRefused);
  $('#stats-refused-rate').textContent = lastRefused == null ? '—' : lastRefused.toFixed(1);
  $('#refusals-body').replaceChildren(...Object.entries(refused)
    .sort((a, b) => b[1] - a[1])
    .map(([k, v]) => el('tr', { 'data-reason': k },
      el('td', { 'data-label': 'Reason' }, REASON_LABEL[k] || k),
      el('td', { class: 'num', 'data-label': 'Total' }, String(v)),
      el('td', { class: 'num', 'data-label': 'Per second' }, last && last.refused[k] != null ? last.refused[k].toFixed(1) : '—'))));
  drawChart(w.samples, now);
}

const REASON_LABEL = {
  sold_out: 'sold out',
  already_bought: 'already bought',
  rate_limited: 'queue full / rate limited',
  promo_not_started: 'not started',
  promo_ended: 'ended',
  invalid_token: 'bad or used token',
  wrong_captcha: 'wrong captcha',
  unavailable: 'unavailable (503)',
};

/** Series colours: orders first, then refusal reasons in a fixed order. */
const PALETTE = ['#e4393c', '#2563eb', '#16a34a', '#9333ea', '#d97706', '#0891b2', '#db2777', '#4b5563', '#65a30d'];

function chartSeries(samples) {
  const reasons = [...new Set(samples.flatMap((x) => Object.keys(x.refused || {})))].sort();
  return [
    { name: 'orders/s', color: PALETTE[0], value: (x) => x.rate, fill: true },
    ...reasons.map((r, i) => ({
      name: `refused: ${REASON_LABEL[r] || r}`,
      color: PALETTE[1 + (i % (PALETTE.length - 1))],
      value: (x) => (x.refused && x.refused[r]) || 0,
    })),
  ];
}

function niceMax(v) {
  const p = 10 ** Math.floor(Math.log10(v));
  return [1, 2, 5, 10].map((m) => m * p).find((x) => x >= v);
}

/** Orders per second over the last 60 s, drawn by hand. */
function drawChart(samples, now) {
  const c = $('#stats-chart');
  const dpr = window.devicePixelRatio || 1;
  const w = c.clientWidth || 600;
  const h = c.clientHeight || 160;
  if (c.width !== Math.round(w * dpr) || c.height !== Math.round(h * dpr)) {
    c.width = Math.round(w * dpr);
    c.height = Math.round(h * dpr);
  }
  const ctx = c.getContext('2d');
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, h);
  const L = 40; const R = 8; const T = 10; const B = 18;
  const series = chartSeries(samples);
  const max = niceMax(Math.max(1, ...samples.flatMap((s) => series.map((f) => f.value(s)))));
  const x = (t) => L + (1 - (now - t) / 60000) * (w - L - R);
  const y = (v) => h - B - (v / max) * (h - T - B);
  ctx.font = '11px system-ui, sans-serif';
  ctx.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const v = (max * i) / 4;
    const yy = Math.round(y(v)) + 0.5;
    ctx.strokeStyle = '#e5e7eb';
    ctx.beginPath();
    ctx.moveTo(L, yy);
    ctx.lineTo(w - R, yy);
    ctx.stroke();
    ctx.fillStyle = '#6b7280';
    ctx.textAlign = 'right';
    ctx.textBaseline = 'middle';
    ctx.fillText(String(+v.toFixed(2)), L - 6, yy);
  }
  ctx.textBaseline = 'bottom';
  ctx.textAlign = 'left';
  ctx.fillText('−60 s', L, h);
  ctx.textAlign = 'right';
  ctx.fillText('now', w - R, h);
  $('#stats-legend').replaceChildren(...series.map((f) =>
    el('li', { style: `--swatch: ${f.color}` }, f.name)));
  if (!samples.length) return;
  for (const f of series.slice().reverse()) {
    ctx.beginPath();
    samples.forEach((s, i) => (i ? ctx.lineTo(x(s.t), y(f.value(s))) : ctx.moveTo(x(s.t), y(f.value(s)))));
    ctx.strokeStyle = f.color;
    ctx.lineWidth = 2;
    ctx.lineJoin = 'round';
    ctx.stroke();
    if (f.fill) {
      ctx.lineTo(x(samples[samples.length - 1].t), y(0));
      ctx.lineTo(x(samples[0].t), y(0));
      ctx.closePath();
      ctx.fillStyle = 'rgba(255, 106, 0, 0.15)';
      ctx.fill();
    }
  }
}

// ---- instances ---------------------------------------------------------------------

const since = (iso) => {
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? '—' : d.toLocaleString();
};

function checkCell(label, v) {
  const ok = v === 'ok';
  return el('td', { 'data-label': label, class: ok ? 'ok' : 'bad', title: v || '' }, ok ? 'ok' : (v ? 'down' : '—'));
}

async function pollInstances() {
  let next = 2000;
  try {
    if (getAdminToken()) {
      const r = await api('admin/instances', { admin: true });
      const list = r.instances || [];
      $('#instances-body').replaceChildren(...list.map((i) => el('tr', { 'data-node': String(i.node_id), 'data-stale': String(i.stale) },
        el('td', { 'data-label': 'Node' }, String(i.node_id)),
        el('td', { 'data-label': 'Address' }, i.http_addr),
        el('td', { 'data-label': 'Up since' }, since(i.started_at)),
        el('td', { 'data-label': 'Last heartbeat', class: i.stale ? 'bad' : '' }, i.stale ? `${since(i.seen_at)} (silent)` : since(i.seen_at)),
        checkCell('Database', i.checks?.database),
        checkCell('Cache', i.checks?.cache),
        checkCell('Message bus', i.checks?.message_bus))));
      const live = list.filter((i) => !i.stale).length;
      $('#instances-summary').textContent = `${live} live of ${list.length}`;
    }
  } catch (e) {
    const denied = e.status === 401 || e.status === 403;
    $('#instances-summary').textContent = denied ? 'admin token needed' : 'unavailable';
    if (denied) next = 10000; // a wrong token: do not keep knocking
  }
  setTimeout(pollInstances, next);
}

/** The status column follows the server clock, not the copy fetched when the list loaded. */
function updatePhases() {
  for (const p of promos) {
    const row = $(`#promos-body tr[data-promo-id="${p.id}"]`);
    const badge = row?.querySelector('.promo-phase');
    const phase = phaseOf(p);
    if (badge && badge.dataset.status !== phase) {
      badge.dataset.status = phase;
      badge.textContent = STATUS_LABEL[phase] || phase;
    }
    if (phase === 'ended') row?.querySelector('.end-button')?.remove(); // nothing left to end
  }
}

window.addEventListener('resize', () => { if (watch) drawChart(watch.samples, performance.now()); });

// ---- start -------------------------------------------------------------------------

renderNav();
defaultPromoTimes();
startClock(30000).then(updatePhases);
setInterval(updatePhases, 1000);
pollHealth();
pollInstances();
loadItems();
loadPromos();
