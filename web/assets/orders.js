// The caller's orders, with Pay / Cancel for pending ones.
import { $, api, el, fmtTime, goLogin, money, pages, renderNav, showResult } from './app.js';

const STATUS = { pending_payment: 'Pending payment', paid: 'Paid', cancelled: 'Cancelled' };
const result = $('#result');
const body = $('#orders-body');
const titles = new Map();

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

// Titles of the items the shown orders are for: the first page of the item
// list in one request, then each item not on it by its own detail request, a
// few at a time (a title is a nicety; an item that cannot be read shows its id).
async function learnTitles(orders, listed) {
  await listed;
  const missing = [...new Set(orders.map((o) => o.item_id))].filter((id) => !titles.has(id));
  const next = async () => {
    for (let id = missing.pop(); id !== undefined; id = missing.pop()) {
      const item = await api(`items/${encodeURIComponent(id)}`).catch(() => null);
      titles.set(id, item?.title ?? null);
    }
  };
  await Promise.all(Array.from({ length: Math.min(4, missing.length) }, next));
}

const list = pages('orders', 'orders', (o) => o.order_no);
let listed = null;
const more = $('#orders-more');

// My orders' next page (newest first, as the server sends them), after the
// rows already shown.
async function loadPage() {
  more.disabled = true;
  try {
    const fresh = await list.next();
    await learnTitles(fresh, listed);
    body.append(...fresh.map(row));
    $('#orders-table').hidden = list.seen === 0;
    $('#orders-empty').hidden = list.seen > 0;
    more.hidden = !list.more;
  } catch (e) {
    if (e.code === 'UNAUTHENTICATED') return goLogin();
    showResult(result, e.code, 'error', `Could not load your orders: ${e.message}`);
  } finally {
    more.disabled = false;
  }
  return undefined;
}

function load() {
  listed = api('items')
    .then(({ items }) => { items.forEach((i) => titles.set(i.id, i.title)); })
    .catch(() => {}); // titles are a nicety; fall back to ids
  more.addEventListener('click', loadPage);
  return loadPage();
}

renderNav();
load();
