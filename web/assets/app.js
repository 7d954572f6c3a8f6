// Shared code for every page: the API helper, money and time formatting,
// the server clock, small DOM helpers and the header navigation.
// Server text is only ever inserted with textContent / text nodes.

export const API = '/api/v1';
const ADMIN_KEY = 'seckill_admin_token';

/** An API failure: HTTP status (0 = network), API code and message, raw body. */
export class ApiError extends Error {
  constructor(status, code, message, body = null, retryAfterMs = null) {
    super(message || code);
    this.name = 'ApiError';
    this.status = status;
    this.code = code;
    this.body = body;
    /** The wait a 429 or 503 asked for (its Retry-After), in ms; null if none. */
    this.retryAfterMs = retryAfterMs;
  }
}

/**
 * A list the API serves a page at a time (`?offset=`, `next_offset`):
 * `next()` answers the next page's rows not seen on an earlier one (sales
 * move items up the list, a new order shifts the pages by one); `more`
 * while pages follow; `seen` how many rows were answered in all.
 */
export function pages(path, key, idOf) {
  const ids = new Set();
  let offset = null;
  return {
    more: true,
    get seen() { return ids.size; },
    async next() {
      const page = await api(offset === null ? path : `${path}?offset=${offset}`);
      offset = page?.next_offset ?? null;
      this.more = offset !== null;
      const fresh = (page?.[key] ?? []).filter((row) => !ids.has(idOf(row)));
      fresh.forEach((row) => ids.add(idOf(row)));
      return fresh;
    },
  };
}

/** A Retry-After header (seconds, or an HTTP date) in ms; null if absent or unreadable. */
export function retryAfterMs(res) {
  const v = res?.headers?.get('Retry-After');
  if (!v) return null;
  if (/^\d+$/.test(v.trim())) return Number(v.trim()) * 1000;
  const at = Date.parse(v);
  return Number.isNaN(at) ? null : Math.max(0, at - Date.now());
}

/** "try again in 12 minutes": when a refusal's Retry-After says; a plain "try again later" without one. */
export function tryAgainIn(retryAfter) {
  if (!(retryAfter > 0)) return 'try again later';
  const s = Math.ceil(retryAfter / 1000);
  if (s < 90) return `try again in ${s} second${s === 1 ? '' : 's'}`;
  const m = Math.ceil(s / 60);
  return m < 90 ? `try again in ${m} minutes` : `try again in ${Math.ceil(m / 60)} hours`;
}

const CODE_BY_STATUS = {
  400: 'BAD_REQUEST', 401: 'UNAUTHENTICATED', 403: 'FORBIDDEN', 404: 'NOT_FOUND',
  409: 'CONFLICT', 422: 'INVALID_ARGUMENT', 429: 'RATE_LIMITED', 500: 'INTERNAL',
};

/**
 * fetch + JSON. `path` is relative to /api/v1 unless it starts with "/".
 * The session cookie authenticates (credentials: same-origin); `admin: true`
 * adds the admin bearer token from sessionStorage. Throws ApiError.
 */
export async function api(path, { method = 'GET', body, admin = false } = {}) {
  const headers = { Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (admin) {
    const token = getAdminToken();
    if (token) headers.Authorization = `Bearer ${token}`;
  }
  let res;
  try {
    res = await fetch(path.startsWith('/') ? path : `${API}/${path}`, {
      method, headers, credentials: 'same-origin', cache: 'no-store',
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch {
    throw new ApiError(0, 'NETWORK_ERROR', 'Network error: the server cannot be reached.');
  }
  const text = await res.text().catch(() => '');
  let data = null;
  if (text) {
    try { data = JSON.parse(text); } catch { data = null; }
  }
  if (!res.ok) {
    const code = typeof data?.code === 'string' ? data.code
      : CODE_BY_STATUS[res.status] || (res.status >= 500 ? 'UNAVAILABLE' : `HTTP_${res.status}`);
    const message = typeof data?.message === 'string' ? data.message : `${res.status} ${res.statusText}`.trim();
    throw new ApiError(res.status, code, message, data, retryAfterMs(res));
  }
  return data;
}

export const getAdminToken = () => sessionStorage.getItem(ADMIN_KEY) || '';
export function setAdminToken(token) {
  if (token) sessionStorage.setItem(ADMIN_KEY, token);
  else sessionStorage.removeItem(ADMIN_KEY);
}

// ---- money -----------------------------------------------------------------

/** 1234 → "¥12.34" (integer arithmetic, no float rounding surprises). */
export function money(cents) {
  const n = Number(cents);
  if (cents == null || !Number.isFinite(n)) return '—';
  const a = Math.abs(Math.round(n));
  return `${n < 0 ? '-' : ''}¥${Math.floor(a / 100)}.${String(a % 100).padStart(2, '0')}`;
}

/** "12.3" → 1230; null when not a non-negative amount with at most 2 decimals. */
export function parseYuan(text) {
  const m = String(text).trim().match(/^(\d+)(?:\.(\d{0,2}))?$/);
  return m ? Number(m[1]) * 100 + Number((m[2] || '').padEnd(2, '0')) : null;
}

// ---- time ------------------------------------------------------------------

/** RFC 3339 → epoch ms (NaN if bad). Trims sub-millisecond digits first. */
export function parseTime(s) {
  if (typeof s !== 'string') return NaN;
  return Date.parse(s.trim()
    .replace(/^(\d{4}-\d\d-\d\d)[ t]/, '$1T')
    .replace(/(\.\d{3})\d+/, '$1')
    .replace(/z$/, 'Z'));
}

export function fmtTime(s) {
  const t = parseTime(s);
  return Number.isNaN(t) ? '—' : new Date(t).toLocaleString();
}

const pad = (n) => String(n).padStart(2, '0');

/** ms → "1d 02:03:04" / "02:03:04". */
export function fmtDuration(ms) {
  let s = Math.max(0, Math.ceil(ms / 1000));
  const d = Math.floor(s / 86400);
  s %= 86400;
  const hms = `${pad(Math.floor(s / 3600))}:${pad(Math.floor((s % 3600) / 60))}:${pad(s % 60)}`;
  return d ? `${d}d ${hms}` : hms;
}

/** A Date → RFC 3339 in the browser's local offset, e.g. 2024-06-18T20:00:00+08:00. */
export function toRfc3339(date) {
  const off = -date.getTimezoneOffset();
  const a = Math.abs(off);
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}`
    + `T${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}`
    + `${off >= 0 ? '+' : '-'}${pad(Math.floor(a / 60))}:${pad(a % 60)}`;
}

/** A Date → the value format of <input type="datetime-local">. */
export const toLocalInput = (d) =>
  `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;

// ---- server clock ------------------------------------------------------------

let clockOffset = 0;
let clockTimer = null;

/** The server's "now" in epoch ms: local clock + measured offset. */
export const serverNow = () => Date.now() + clockOffset;

/** One sample of GET /time; the server read its clock about mid-way through the round trip. */
export async function syncClock() {
  const t0 = Date.now();
  try {
    const res = await fetch(`${API}/time`, { credentials: 'same-origin', cache: 'no-store', headers: { Accept: 'application/json' } });
    const t1 = Date.now();
    let server = NaN;
    if (res.ok) server = parseTime((await res.json().catch(() => null))?.now);
    // Fallback: the Date header (1 s resolution, so aim at the middle of that second).
    if (Number.isNaN(server) && res.headers.get('Date')) server = Date.parse(res.headers.get('Date')) + 500;
    if (!Number.isNaN(server)) clockOffset = server - (t0 + t1) / 2;
  } catch { /* keep the previous offset */ }
  return clockOffset;
}

/** Sync now and every `everyMs` afterwards. */
export function startClock(everyMs = 30000) {
  if (!clockTimer) clockTimer = setInterval(syncClock, everyMs);
  return syncClock();
}

/** The promo's phase by the server clock (live, unlike the status field of a fetched copy). */
export function promoPhase(promo, now = serverNow()) {
  const start = parseTime(promo.start_at);
  const end = parseTime(promo.end_at);
  if (Number.isNaN(start) || Number.isNaN(end)) return promo.status;
  return now < start ? 'not_started' : now >= end ? 'ended' : 'ongoing';
}

export const STATUS_LABEL = { not_started: 'Upcoming', ongoing: 'On sale now', ended: 'Ended' };

// ---- DOM helpers -----------------------------------------------------------------

export const $ = (sel, root = document) => root.querySelector(sel);
export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** el('a', {href, class, dataset, onclick}, 'text', childNode…). Strings become text nodes. */
export function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v == null || v === false) continue;
    if (k === 'class') e.className = v;
    else if (k === 'dataset') Object.assign(e.dataset, v);
    else if (k.startsWith('on') && typeof v === 'function') e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c != null && c !== false) e.append(c instanceof Node ? c : String(c));
  }
  return e;
}

/** Show an outcome: data-code holds the API code or "OK"; kind = ok | info | error. */
export function showResult(node, code, kind, ...parts) {
  node.hidden = false;
  node.dataset.code = code;
  node.className = `result ${kind}`;
  node.replaceChildren(...parts.map((p) => (p instanceof Node ? p : document.createTextNode(String(p)))));
}

export function clearResult(node) {
  node.hidden = true;
  node.removeAttribute('data-code');
  node.replaceChildren();
}

/** Item image, or a lettered placeholder when the URL is empty or broken. */
export function itemImage(url, title, cls = 'thumb') {
  const placeholder = () => el('div', { class: `${cls} placeholder`, 'aria-hidden': 'true' }, (title || '?').trim().charAt(0) || '?');
  if (!url) return placeholder();
  const img = el('img', { class: cls, src: url, alt: title || '', loading: 'lazy' });
  img.addEventListener('error', () => img.replaceWith(placeholder()), { once: true });
  return img;
}

// ---- navigation --------------------------------------------------------------------

const here = () => location.pathname.split('/').pop() || 'index.html';

export function loginHref() {
  const page = here();
  if (page === 'login.html' || page === 'signup.html') return 'login.html';
  return `login.html?next=${encodeURIComponent(location.pathname + location.search)}`;
}
export const goLogin = () => { location.href = loginHref(); };

/** The ?next= target if it stays on this origin, else the fallback. */
export function safeNext(fallback = 'index.html') {
  const next = new URLSearchParams(location.search).get('next');
  if (!next) return fallback;
  try {
    const u = new URL(next, location.href);
    // The whole URL, not its path: `/.//evil.example/x` keeps this origin
    // but its path `//evil.example/x` would be read as another host's.
    if (u.origin === location.origin) return u.href;
  } catch { /* fall through */ }
  return fallback;
}

/** Fill <nav id="nav">; resolves to the logged-in user or null. */
export async function renderNav() {
  const nav = $('#nav');
  const page = here();
  const link = (href, text, id) =>
    el('a', { href, id, class: href.split('?')[0] === page ? 'active' : null }, text);
  const auth = el('span', { class: 'nav-auth', id: 'nav-auth' });
  nav.replaceChildren(link('index.html', 'Items', 'nav-items'), link('orders.html', 'My orders', 'nav-orders'),
    auth, link('admin.html', 'Admin', 'nav-admin'));
  let user = null;
  try {
    user = await api('me');
  } catch (e) {
    if (e.status !== 401) console.warn('GET /me failed', e);
  }
  if (user) {
    const out = el('button', { type: 'button', class: 'linkish', id: 'logout' }, 'Log out');
    out.addEventListener('click', async () => {
      try { await api('sessions/current', { method: 'DELETE' }); } catch { /* the cookie may be gone already */ }
      location.href = 'index.html';
    });
    auth.append(el('span', { id: 'nav-user', class: 'hi' }, `Hi, ${user.name}`), out);
  } else {
    auth.append(link(loginHref(), 'Log in', 'nav-login'), link('signup.html', 'Sign up', 'nav-signup'));
  }
  return user;
}
