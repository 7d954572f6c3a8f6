// Log in: POST /sessions. The server sets the HttpOnly session cookie; no token is stored here.
import { $, api, el, renderNav, safeNext, showResult, tryAgainIn } from './app.js';

renderNav();
const form = $('#login-form');
const result = $('#result');
const next = new URLSearchParams(location.search).get('next');
if (next) $('#signup-link').href = `signup.html?next=${encodeURIComponent(next)}`;

form.addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const phone = $('#phone').value.trim();
  const password = $('#password').value;
  if (!phone || !password) {
    showResult(result, 'INVALID_ARGUMENT', 'error', 'Enter your phone number and password.');
    return;
  }
  const btn = $('#login-submit');
  btn.disabled = true;
  try {
    await api('sessions', { method: 'POST', body: { phone, password } });
    showResult(result, 'OK', 'ok', 'Logged in, redirecting…');
    location.href = safeNext();
  } catch (e) {
    const msg = e.status === 401 || e.code === 'UNAUTHENTICATED' ? 'Wrong phone number or password.'
      : e.code === 'RATE_LIMITED' ? `Too many attempts, ${tryAgainIn(e.retryAfterMs)}.` : e.message;
    const extra = e.status === 401 ? [' ', el('a', { href: $('#signup-link').href }, 'Sign up?')] : [];
    showResult(result, e.code, 'error', msg, ...extra);
    btn.disabled = false;
  }
});
