// A headless Chromium for the Rust end-to-end tests (e2e/tests/dashboard.rs): one JSON
// request per line on stdin, one JSON answer per line on stdout. Debian's own chromium,
// never a downloaded one; names other than loopback (and the test namespaces' 10.x
// addresses) do not resolve, so the browser reaches nothing but the control plane under test.

import { chromium } from 'playwright-core';
import { createInterface } from 'node:readline';

const executablePath = process.env.CHROMIUM ?? '/usr/bin/chromium';
const browser = await chromium.launch({
  executablePath,
  args: [
    '--no-sandbox', '--disable-gpu', '--disable-quic', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--no-first-run',
    // Loopback, and the 10.x addresses of the network namespaces tests make.
    '--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1, EXCLUDE 10.*',
  ],
});

let context;
let page;
/** Every URL the page asked for, to show that nothing came from elsewhere. */
let requests = [];

async function fresh({ width = 1280, height = 800, colorScheme = 'light' } = {}) {
  await context?.close();
  context = await browser.newContext({ viewport: { width, height }, colorScheme, ignoreHTTPSErrors: true });
  page = await context.newPage();
  requests = [];
  page.on('request', r => requests.push(r.url()));
  page.setDefaultTimeout(15000);
}

const ops = {
  fresh,
  goto: async ({ url }) => {
    // Tests beside this one make and remove network interfaces (the node-add hosts'
    // namespaces); Chromium aborts a request that sees one change. The page itself may
    // fail (ERR_NETWORK_CHANGED, or a navigation cut short by its error page), or only a
    // script it loads, leaving a page that never draws: either way, load it again.
    const changed = text => /ERR_NETWORK_CHANGED|interrupted by another navigation to "chrome-error:/.test(text);
    for (let attempt = 1; ; attempt++) {
      let lost = null;
      const onFailed = r => { if (changed(r.failure()?.errorText ?? '')) lost = r.url(); };
      page.on('requestfailed', onFailed);
      try {
        await page.goto(url);
        if (page.url().startsWith('chrome-error:')) lost = url;
        if (!lost) return;
        if (attempt >= 5) throw new Error(`${lost} failed on every try: the network kept changing`);
      } catch (e) {
        if (attempt >= 5 || !changed(String(e))) throw e;
      } finally {
        page.off('requestfailed', onFailed);
      }
    }
  },
  fill: async ({ selector, value }) => { await page.fill(selector, value); },
  select: async ({ selector, value }) => { await page.selectOption(selector, value); },
  click: async ({ selector }) => { await page.click(selector); },
  press: async ({ selector, key }) => { await page.press(selector, key); },
  /** Types `text` key by key into the focused element under `selector`. */
  type: async ({ selector, text }) => { await page.locator(selector).pressSequentially(text); },
  /** Waits until the expression is true in the page (asked again every 50 ms: the page's
   *  policy forbids evaluating strings inside it, as waitForFunction would). */
  waitFor: async ({ js }) => {
    const deadline = Date.now() + 15000;
    while (!(await page.evaluate(js))) {
      if (Date.now() > deadline) throw new Error(`still false after 15 s: ${js}`);
      await new Promise(resolve => setTimeout(resolve, 50));
    }
  },
  viewport: async ({ width, height }) => { await page.setViewportSize({ width, height }); },
  wait: async ({ selector, state = 'visible' }) => { await page.waitForSelector(selector, { state }); },
  /** Waits until the selector's text contains `text`; returns that text. */
  waitText: async ({ selector, text }) => {
    await page.waitForFunction(([s, t]) => document.querySelector(s)?.textContent.includes(t), [selector, text]);
    return page.textContent(selector);
  },
  text: async ({ selector }) => page.textContent(selector),
  count: async ({ selector }) => page.locator(selector).count(),
  url: async () => page.url(),
  eval: async ({ js }) => page.evaluate(js),
  cookies: async () => context.cookies(),
  requests: async () => requests,
  screenshot: async ({ path, fullPage = false }) => { await page.screenshot({ path, fullPage }); },
  focused: async () => page.evaluate(() => document.activeElement?.id || document.activeElement?.tagName),
};

const lines = createInterface({ input: process.stdin });
for await (const line of lines) {
  if (!line.trim()) continue;
  const { op, ...args } = JSON.parse(line);
  if (op === 'quit') break;
  try {
    if (!ops[op]) throw new Error(`no such operation ${op}`);
    if (op !== 'fresh' && !page) await fresh();
    const value = await ops[op](args);
    process.stdout.write(JSON.stringify({ ok: true, value: value ?? null }) + '\n');
  } catch (e) {
    process.stdout.write(JSON.stringify({ ok: false, error: String(e?.message ?? e) }) + '\n');
  }
}
await browser.close();
