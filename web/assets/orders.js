// The caller's orders, with Pay / Cancel for pending ones.
import { $, api, el, fmtTime, goLogin, money, parseTime, renderNav, showResult } from './app.js';

const STATUS = { pending_payment: 'Pending payment', paid: 'Paid', cancelled: 'Cancelled' };
const result = $('#result');
const body = $('#orders-body');
let titles = new Map();

function row(o) {
  const td = (label, cls, ...children) => el('td', { 'data-label': label, class: cls }, ...children);
  const actions = el('div', { class: 'actions' });
  if (o.status === 'pending_payment') {
    actions.append(
      el('button', { type: 'button', class: 'small primary pay-button', dataset: { testid: 'pay' }, onclick: () => act(o, 'pay') }, 'Pay'),
      el('button', { type: 'button', class: 'small cancel-button', dataset: { testid: 'cancel' }, onclick: () => act(o, 'cancel') }, 'Cancel'));
  }
  const title = titles.get(o.item_id);
  return el('tr', { dataset: { orderNo: o.order_no, status: o.status } },
    td('Order no.', 'order-no', o.order_no),
    td('Item', 'item', title ? el('a', { href: `item.html?id=${encodeURIComponent(o.item_id)}` }, title) : `#${o.item_id}`),
    td('Amount', 'num amount', o.amount),
    td('Total', 'num total', money(o.total_cents)),
    td('Status', null, el('span', { class: 'badge status', dataset: { status: o.status } }, STATUS[o.status] || o.status)),
    td('Created', 'created', fmtTime(o.created_at)),
    td('', 'actions-cell', actions));
}

async function act(order, action) {
  if (action === 'cancel' && !window.confirm(`Cancel order ${order.order_no}? The item goes back on sale.`)) return;
  const tr = body.querySelector(`tr[data-order-no="${CSS.escape(order.order_no)}"]`);
  tr?.querySelectorAll('button').forEach((b) => { b.disabled = true; });
  try {
    const updated = await api(`orders/${encodeURIComponent(order.order_no)}/${action}`, { method: 'POST' });
    tr?.replaceWith(row(updated));
    showResult(result, 'OK', 'ok', action === 'pay' ? `Order ${updated.order_no} paid.` : `Order ${updated.order_no} cancelled.`);
  } catch (e) {
    if (e.code === 'UNAUTHENTICATED') return goLogin();
    showResult(result, e.code, 'error', e.code === 'CONFLICT' ? `Cannot ${action} this order: ${e.message}` : e.message);
    try { // show the order's real state
      const fresh = await api(`orders/${encodeURIComponent(order.order_no)}`);
      tr?.replaceWith(row(fresh));
    } catch {
      tr?.querySelectorAll('button').forEach((b) => { b.disabled = false; });
    }
  }
  return undefined;
}

async function load() {
  const itemsReady = api('items')
    .then(({ items }) => { titles = new Map(items.map((i) => [i.id, i.title])); })
    .catch(() => {}); // titles are a nicety; fall back to ids
  try {
    const [{ orders }] = await Promise.all([api('orders'), itemsReady]);
    orders.sort((a, b) => parseTime(b.created_at) - parseTime(a.created_at));
    body.replaceChildren(...orders.map(row));
    $('#orders-table').hidden = orders.length === 0;
    $('#orders-empty').hidden = orders.length > 0;
  } catch (e) {
    if (e.code === 'UNAUTHENTICATED') return goLogin();
    showResult(result, e.code, 'error', `Could not load your orders: ${e.message}`);
  }
  return undefined;
}

renderNav();
load();
