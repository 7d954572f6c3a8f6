// Screenshot of the admin's live dashboard while a drill runs (for the
// README): waits for the newest promo whose name starts with "Drill",
// watches it, and takes a picture every few seconds into SHOTS_DIR.
//   BASE_URL=… ADMIN_TOKEN=… SHOTS_DIR=… node tests/browser/shot-dashboard.mjs
import { chromium } from 'playwright-core';

const base = process.env.BASE_URL;
const shots = process.env.SHOTS_DIR || '.';
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--disable-background-networking',
    '--disable-component-update', '--no-first-run', '--disable-sync'],
});
const page = await (await browser.newContext({ viewport: { width: 1280, height: 900 } })).newPage();
await page.goto(`${base}/admin.html`);
await page.fill('#admin-token', process.env.ADMIN_TOKEN);
await page.click('#admin-token-save');
const deadline = Date.now() + 120000;
let row;
while (Date.now() < deadline) {
  await page.click('#promos-refresh');
  await page.waitForTimeout(1000);
  const rows = page.locator('#promos-body tr', { hasText: 'Drill' });
  if (await rows.count()) { row = rows.first(); break; }
}
if (!row) throw new Error('no drill promo appeared');
await row.locator('.watch-button').click();
for (let i = 0; i < Number(process.env.SHOTS || 8); i++) {
  await page.waitForTimeout(3000);
  await page.locator('#watch-panel').screenshot({ path: `${shots}/dashboard-${i}.png` });
}
await page.screenshot({ path: `${shots}/admin-full.png`, fullPage: true });
await browser.close();
