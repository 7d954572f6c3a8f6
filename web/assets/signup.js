// Sign up: OTP → POST /users → POST /sessions (auto log-in) → next page.
import { $, api, renderNav, safeNext, showResult, tryAgainIn } from './app.js';

renderNav();
const result = $('#result');
const otpBtn = $('#send-otp');
let otpTimer = null;

function otpCooldown(seconds) {
  clearInterval(otpTimer);
  let left = seconds;
  otpBtn.disabled = true;
  const step = () => {
    if (left <= 0) {
      clearInterval(otpTimer);
      otpBtn.disabled = false;
      otpBtn.textContent = 'Resend code';
      return;
    }
    otpBtn.textContent = `Resend in ${left--} s`;
  };
  step();
  otpTimer = setInterval(step, 1000);
}

otpBtn.addEventListener('click', async () => {
  const phone = $('#phone').value.trim();
  if (!phone) {
    showResult(result, 'INVALID_ARGUMENT', 'error', 'Enter your phone number first.');
    return;
  }
  otpBtn.disabled = true;
  try {
    await api('otp', { method: 'POST', body: { phone } });
    showResult(result, 'OK', 'ok', 'Code sent. (Development: see the server log.)');
    otpCooldown(60);
    $('#otp').focus();
  } catch (e) {
    showResult(result, e.code, 'error', e.code === 'RATE_LIMITED' ? `Too many codes requested, ${tryAgainIn(e.retryAfterMs)}.` : e.message);
    otpBtn.disabled = false;
  }
});

$('#signup-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const body = {
    phone: $('#phone').value.trim(),
    otp: $('#otp').value.trim(),
    name: $('#name').value.trim(),
    password: $('#password').value,
  };
  const gender = $('#gender').value;
  const ageText = $('#age').value.trim();
  if (!body.phone || !body.otp || !body.name) {
    showResult(result, 'INVALID_ARGUMENT', 'error', 'Phone, code and name are required.');
    return;
  }
  if (body.password.length < 8) {
    showResult(result, 'INVALID_ARGUMENT', 'error', 'The password needs at least 8 characters.');
    return;
  }
  if (gender) body.gender = gender;
  if (ageText) {
    if (!/^\d{1,3}$/.test(ageText)) {
      showResult(result, 'INVALID_ARGUMENT', 'error', 'Age must be a whole number.');
      return;
    }
    body.age = Number(ageText);
  }
  const btn = $('#signup-submit');
  btn.disabled = true;
  try {
    await api('users', { method: 'POST', body });
  } catch (e) {
    const msg = e.code === 'CONFLICT' ? 'This phone number is already registered, log in instead.' : e.message;
    showResult(result, e.code, 'error', msg);
    btn.disabled = false;
    return;
  }
  try {
    await api('sessions', { method: 'POST', body: { phone: body.phone, password: body.password } });
    showResult(result, 'OK', 'ok', 'Account created, redirecting…');
    location.href = safeNext();
  } catch (e) {
    showResult(result, e.code, 'error', `Account created, but logging in failed: ${e.message}`);
    btn.disabled = false;
  }
});
