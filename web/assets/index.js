// Item list: GET /items, one card per item.
import { $, el, itemImage, money, pages, renderNav, showResult, STATUS_LABEL } from './app.js';

function card(it) {
  const p = it.promo;
  const prices = p
    ? [el('span', { class: 'promo-price' }, money(p.price_cents)), el('span', { class: 'orig' }, money(it.price_cents))]
    : [el('span', { class: 'price' }, money(it.price_cents))];
  const badges = p
    ? [el('span', { class: 'badge promo-status', dataset: { status: p.status } }, STATUS_LABEL[p.status] || p.status),
      p.published ? null : el('span', { class: 'badge' }, 'not published'),
      p.status === 'ongoing' && it.stock <= 0 ? el('span', { class: 'badge sold-out' }, 'Sold out') : null]
    : [];
  return el('a', { class: 'item-card', href: `item.html?id=${encodeURIComponent(it.id)}`, dataset: { itemId: it.id, testid: 'item-card' } },
    itemImage(it.image_url, it.title),
    el('div', { class: 'body' },
      el('h2', { class: 'title' }, it.title),
      el('div', { class: 'prices' }, ...prices, ...badges),
      el('div', { class: 'meta' }, `Stock ${it.stock} · Sold ${it.sales}`)));
}

const list = pages('items', 'items', (it) => it.id);
const more = $('#items-more');

// The item list's next page, after the cards already shown.
async function loadPage() {
  more.disabled = true;
  try {
    $('#items').append(...(await list.next()).map(card));
    $('#items-loading').textContent = list.seen ? '' : 'No items yet.';
    $('#items-loading').hidden = list.seen > 0;
    more.hidden = !list.more;
  } catch (e) {
    $('#items-loading').hidden = true;
    showResult($('#result'), e.code, 'error', `Could not load items: ${e.message}`);
  } finally {
    more.disabled = false;
  }
}

more.addEventListener('click', loadPage);
renderNav();
loadPage();
