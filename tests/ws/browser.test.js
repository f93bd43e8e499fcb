'use strict';
// 11. The API's Quick start browser client, unchanged, in a real Chromium:
// the page is served from another loopback port; events are published
// continuously while the server is restarted (SIGTERM, then started again
// on the same port and data directory); the page must end up with every
// published offset exactly once, in order.
//
// Needs /usr/bin/chromium (Debian package "chromium").
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const http = require('node:http');
const h = require('./harness');

const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
const API_MD = process.env.STREAMD_API_MD || '/work/shared/API.md';

// Verbatim from API.md, "Quick start" (only the port is replaced below).
const QUICK_START = `let next = 0;
function connect() {
  const ws = new WebSocket(\`ws://localhost:15500/stream/notifications/ws/user-1?from_offset=\${next}\`);
  ws.onmessage = (e) => {
    const msg = JSON.parse(e.data);
    next = msg.offset + 1;
    show(msg.offset, msg.event, msg.data);
  };
  ws.onclose = () => setTimeout(connect, 1000);
}
connect();
`;

function page(port) {
  const client = QUICK_START.replace('ws://localhost:15500/', `ws://localhost:${port}/`);
  assert.notEqual(client, QUICK_START);
  return `<!doctype html>
<html><head><meta charset="utf-8"><title>streamd quick start</title></head>
<body>
<ol id="log"></ol>
<script>
window.received = [];
function show(offset, event, data) {
  window.received.push(offset);
  const li = document.createElement('li');
  li.textContent = offset + ' ' + event + ' ' + JSON.stringify(data);
  document.getElementById('log').appendChild(li);
}
</script>
<script>
${client}</script>
</body></html>
`;
}

let server;
let web;
let browser;
before(async () => {
  server = await new h.Server().start();
  server.fixedPort = server.port; // restarts reuse the port
  await server.create('notifications');
});
after(async () => {
  if (browser) await browser.close().catch(() => {});
  if (web) web.close();
  if (server) await server.cleanup();
});

test('the page holds API.md\'s Quick start client verbatim', { skip: !fs.existsSync(API_MD) && `${API_MD} not found` }, () => {
  const md = fs.readFileSync(API_MD, 'utf8');
  const m = md.match(/```javascript\n([\s\S]*?)```/);
  assert.ok(m, 'no javascript block in API.md');
  assert.equal(m[1], QUICK_START, 'API.md\'s Quick start client changed: update QUICK_START');
});

test('Quick start client in Chromium: every offset exactly once, in order, across a server restart', { timeout: h.scaled(90000) }, async (t) => {
  assert.ok(fs.existsSync(CHROMIUM), `${CHROMIUM} is missing: apt-get install -y chromium`);
  const { chromium } = require('playwright-core');
  const html = page(server.port);
  web = http.createServer((req, res) => {
    res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8', 'Cache-Control': 'no-store' });
    res.end(html);
  });
  await new Promise((r) => web.listen(0, '127.0.0.1', r));
  const pageUrl = `http://localhost:${web.address().port}/`;

  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--no-sandbox', '--headless', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  const tab = await browser.newPage();
  const problems = [];
  let sockets = 0;
  tab.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  tab.on('websocket', () => sockets++);
  await tab.goto(pageUrl);

  // Publisher: one event at a time, each with an idempotency id so that a
  // retry after a connection lost to the restart cannot add a copy.
  let published = 0;
  let stop = false;
  let retries = 0;
  const publisher = (async () => {
    while (!stop) {
      const i = published;
      let r;
      const giveUp = Date.now() + h.scaled(20000);
      for (;;) {
        try {
          r = await server.request('POST', '/stream/notifications/publish', { event: 'tick', data: `event ${i}`, id: `tick-${i}` });
          if (r.status === 200) break;
        } catch {
          // the server is restarting
        }
        if (stop) return;
        if (Date.now() > giveUp) throw new Error(`publish ${i} failed for ${h.scaled(20000)} ms: ${r ? `${r.status} ${r.text}` : 'no answer'}`);
        retries++;
        await h.sleep(50);
      }
      assert.equal(r.json.offset, i, `publish ${i}: ${h.short(r.json)}`);
      published++;
      await h.sleep(5);
    }
  })();
  publisher.catch(() => {}); // handled below

  let beforeRestart;
  try {
    await h.waitFor(async () => (await tab.evaluate(() => window.received.length)) > 0, h.scaled(10000), 'the page to receive events');
    await h.sleep(h.scaled(1500));
    beforeRestart = published;
    await server.stop(); // SIGTERM, exit 0, no sanitizer report
    await h.sleep(300);
    await server.start();
    assert.equal(server.port, server.fixedPort);
    await h.sleep(h.scaled(2500));
  } finally {
    stop = true;
    await publisher.catch((e) => problems.push(String(e)));
  }
  assert.deepEqual(problems, []);
  assert.ok(published > beforeRestart + 10, `only ${published - beforeRestart} events published after the restart`);

  let got;
  try {
    await h.waitFor(async () => (await tab.evaluate(() => window.received.length)) >= published, h.scaled(15000),
      `the page to hold ${published} events`);
  } finally {
    got = await tab.evaluate(() => window.received);
    t.diagnostic(`published ${published} (${beforeRestart} before the restart, ${retries} retries); ` +
      `page got ${got.length}; ${sockets} WebSocket connections`);
  }
  await h.sleep(h.scaled(300));
  got = await tab.evaluate(() => window.received);
  assert.deepEqual(problems, []);
  h.assertDense(got, 0, published, 'the page');
  assert.equal(await tab.locator('#log li').count(), published, 'DOM entries');
  assert.equal(await tab.locator('#log li').last().textContent(), `${published - 1} tick "event ${published - 1}"`);
  assert.ok(sockets >= 2, `expected a reconnect, saw ${sockets} WebSocket connection(s)`);
  await browser.close();
  browser = null;
});

test('server exits 0 on SIGTERM with no sanitizer report', { timeout: h.scaled(30000) }, async () => {
  await server.stop();
});
