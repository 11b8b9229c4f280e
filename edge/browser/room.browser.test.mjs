// The waiting room in a real browser: headless Debian chromium, driven by
// playwright-core, against the local edge (edge/local/server.mjs running
// the very function file) with a KeyValueStore view and an origin served
// here. A visitor waits before the start, is moved on by the page's own
// refresh (no script), buys with the admission it was given; a visitor
// without one is refused at the edge; another sees "sold out" at the edge
// while the origin hears nothing.
//
//   PLAYWRIGHT_DIR=~/.cache/flashsale/playwright node --test edge/browser/
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import http from 'node:http';
import { createRequire } from 'node:module';

const { chromium } = createRequire(`${process.env.PLAYWRIGHT_DIR}/`)('playwright-core');
const SERVER = new URL('../local/server.mjs', import.meta.url).pathname;

/// A local HTTP server on a free loopback port; resolves to its base URL.
function serve(handler) {
  const server = http.createServer(handler);
  return new Promise((resolve) => {
    server.listen(0, '127.0.0.1', () => resolve({ server, url: `http://127.0.0.1:${server.address().port}` }));
  });
}

/// The local edge in front of `origin`, reading `kvs`; stopped by its PID.
function edge(origin, kvs) {
  const child = spawn(process.execPath, [
    '--experimental-vm-modules', SERVER, '--listen', '127.0.0.1:0', '--origin', origin, '--kvs', kvs,
  ], { stdio: ['ignore', 'pipe', 'inherit'] });
  return new Promise((resolve, reject) => {
    child.on('exit', (code) => reject(new Error(`the local edge exited (${code})`)));
    child.stdout.on('data', (line) => {
      const m = /listening on (http:\/\/\S+)/.exec(String(line));
      if (m) {
        resolve({ child, url: m[1] });
      }
    });
  });
}

test('a visitor waits, is let in, buys; no admission, no buy; sold out is told at the edge', async () => {
  const start = Date.now() + 3_000;
  const end = start + 3_600_000;
  const keys = 'k1:browser-test-secret-0123456789abcdef';
  // p1 starts in 3 s, its room's 10 s early window let in at 20 s a second;
  // p2 is sold out.
  const view = {
    p1: `upcoming|${start}|${end}|1`,
    'p1#room': `1|${start}|${start - 10_000}|20000|0|10000|120|5000`,
    p2: `sold_out|${start - 60_000}|${end}|1`,
    'p2#room': `1|${start - 60_000}|${start - 60_000}|20000|0|10000|120|5000`,
    '#room-keys': keys,
  };
  const kvs = await serve((req, res) => {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify(view));
  });
  const seen = [];
  const origin = await serve((req, res) => {
    seen.push({ method: req.method, url: req.url, cookie: req.headers.cookie ?? '' });
    req.resume();
    if (req.method === 'POST') {
      res.writeHead(202, { 'content-type': 'application/json' });
      res.end('{"status":"pending"}');
    } else {
      res.writeHead(200, { 'content-type': 'text/html' });
      res.end('<!doctype html><title>shop</title><h1>The shop</h1>');
    }
  });
  const local = await edge(origin.url, kvs.url);
  let browser;
  try {
    // A fresh profile of its own (launch makes one per browser).
    browser = await chromium.launch({ executablePath: '/usr/bin/chromium', headless: true, args: ['--no-sandbox'] });
    const visitor = await browser.newContext({ javaScriptEnabled: false });
    const page = await visitor.newPage();
    await page.goto(`${local.url}/room?product_id=p1&return=/shop`);
    assert.equal(await page.textContent('h1'), 'You are in line');
    assert.match(await page.textContent('body'), /The sale starts at .* people ahead of you/s);
    // No script runs: the page's refresh alone moves the visitor on.
    await page.waitForURL(`${local.url}/shop`, { timeout: 20_000 });
    assert.equal(await page.textContent('h1'), 'The shop');
    const cookies = await visitor.cookies();
    const admission = cookies.find((c) => c.name === 'fs_admit_p1');
    assert.ok(admission, 'the admission cookie is set');
    assert.ok(admission.httpOnly);
    // The buy, with scripts on (a shop's page), carries the admission.
    const shop = await browser.newContext();
    await shop.addCookies(cookies);
    const buyer = await shop.newPage();
    await buyer.goto(`${local.url}/shop`);
    const buy = () => fetch('/api/flash-sale/buy', {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-flashsale-product': 'p1' },
      body: JSON.stringify({ product_id: 'p1', user_id: 'u1', quantity: 1 }),
    }).then(async (r) => [r.status, await r.text()]);
    assert.deepEqual(await buyer.evaluate(buy), [202, '{"status":"pending"}']);
    const bought = seen.filter((r) => r.method === 'POST');
    assert.equal(bought.length, 1);
    assert.match(bought[0].cookie, /fs_admit_p1=a1\.p1\./);
    // Without the admission: refused at the edge, the origin hears nothing.
    const stranger = await (await browser.newContext()).newPage();
    await stranger.goto(`${local.url}/shop`);
    const [status, body] = await stranger.evaluate(buy);
    assert.equal(status, 403);
    assert.equal(JSON.parse(body).error, 'admission_required');
    assert.equal(seen.filter((r) => r.method === 'POST').length, 1);
    // Sold out: said by the edge's page, nothing reaches the origin.
    const before = seen.length;
    const late = await (await browser.newContext({ javaScriptEnabled: false })).newPage();
    await late.goto(`${local.url}/room?product_id=p2`);
    assert.equal(await late.textContent('h1'), 'Sold out');
    // (The browser's own favicon fetch is the shop's, not the sale's.)
    assert.deepEqual(seen.slice(before).filter((r) => r.url !== '/favicon.ico'), []);
  } finally {
    await browser?.close();
    local.child.removeAllListeners('exit');
    local.child.kill();
    for (const { server } of [kvs, origin]) {
      server.closeAllConnections();
      server.close();
    }
  }
});
