// Item list: GET /items, one card per item.
import { $, api, el, itemImage, money, renderNav, showResult, STATUS_LABEL } from './app.js';

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

let nextOffset = null;
const shown = new Set();
const more = $('#items-more');

// One page of the item list after the cards already shown; `next_offset`
// names the page after it.
async function loadPage() {
  more.disabled = true;
  try {
    const page = await api(nextOffset === null ? 'items' : `items?offset=${nextOffset}`);
    // Sales move items up the list meanwhile: skip a card shown already.
    const fresh = page.items.filter((it) => !shown.has(it.id));
    fresh.forEach((it) => shown.add(it.id));
    $('#items').append(...fresh.map(card));
    nextOffset = page.next_offset ?? null;
    $('#items-loading').textContent = shown.size ? '' : 'No items yet.';
    $('#items-loading').hidden = shown.size > 0;
    more.hidden = nextOffset === null;
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
