'use strict';
// API keys on the WebSocket routes: the key in an Authorization header, in
// a Sec-WebSocket-Protocol value, in ?token; 401/403 before any upgrade;
// the subprotocol echoed in the 101 (browsers require it); Origin refused
// whatever the key; open connections survive a key rotation by SIGHUP;
// the same in a real Chromium.
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const fs = require('node:fs');
const http = require('node:http');
const path = require('node:path');
const WebSocket = require('ws');
const h = require('./harness');

const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
const newKey = () => crypto.randomBytes(32).toString('hex');
const line = (name, key, ...grants) => `${name} sha256:${crypto.createHash('sha256').update(key).digest('hex')} ${grants.join(' ')}`;
const KEYS = { root: newKey(), reader: newKey(), writer: newKey(), admin: newKey() };
const bearer = (k) => ({ Authorization: `Bearer ${k}` });

let server;
before(async () => {
  server = await new h.Server({
    args: [
      '--key', line('root', KEYS.root, 'read+write+admin:*'),
      '--key', line('reader', KEYS.reader, 'read:orders.*'),
      '--key', line('writer', KEYS.writer, 'write:orders.*'),
      '--key', line('admin', KEYS.admin, 'admin:orders.*'),
    ],
  }).start();
  await req(server, 'POST', '/stream/orders.a', null, KEYS.root, 201);
  await req(server, 'POST', '/stream/orders.a/group/g', { ack: 'explicit' }, KEYS.root, 201);
  await req(server, 'POST', '/stream/orders.a/group/g2', { ack: 'explicit' }, KEYS.root, 201);
  await req(server, 'POST', '/stream/orders.a/publish', { event: 'e', data: 'first' }, KEYS.root, 200);
});
after(async () => {
  if (server) await server.cleanup();
});

async function req(srv, method, p, body, key, expect) {
  const r = await srv.request(method, p, body, key ? bearer(key) : {});
  if (expect !== undefined) assert.equal(r.status, expect, `${method} ${p} -> ${r.status} ${h.short(r.text)}`);
  return r;
}

function assertRefused(r, status, code, what) {
  assert.equal(r.status, status, `${what}: expected ${status} ${code}, got ${r.status} ${h.short(r.body)}`);
  assert.equal(r.json && r.json.error, code, `${what}: ${h.short(r.body)}`);
  assert.ok(!('sec-websocket-accept' in r.headers), `${what}: refused response carries Sec-WebSocket-Accept`);
  if (status === 401) assert.match(r.headers['www-authenticate'] || '', /^Bearer/, `${what}: WWW-Authenticate`);
}

// The three ways a key can travel on an upgrade request.
const carriers = {
  header: (p, k) => [p, { Authorization: `Bearer ${k}` }],
  subprotocol: (p, k) => [p, { 'Sec-WebSocket-Protocol': `streamd, streamd.key.${k}` }],
  token: (p, k) => [`${p}${p.includes('?') ? '&' : '?'}token=${k}`, {}],
};
const ROUTES = ['/stream/orders.a/ws/c1?from_offset=0', '/stream/orders.a/group/g/ws/c1'];

test('upgrade routes: 401 without a valid key, 403 without read, by header, subprotocol and token', { timeout: h.scaled(30000) }, async () => {
  for (const route of ROUTES) {
    assertRefused(await h.rawHandshake(server.port, route), 401, 'unauthorized', `${route} without a key`);
    for (const [how, carry] of Object.entries(carriers)) {
      const what = `${route} by ${how}`;
      const [p1, h1] = carry(route, newKey());
      assertRefused(await h.rawHandshake(server.port, p1, h1), 401, 'unauthorized', `${what}, unknown key`);
      for (const k of ['writer', 'admin']) {
        const [p2, h2] = carry(route, KEYS[k]);
        assertRefused(await h.rawHandshake(server.port, p2, h2), 403, 'forbidden', `${what}, ${k} key`);
      }
      const [p3, h3] = carry(route, KEYS.reader);
      const r = await h.rawHandshake(server.port, p3, h3);
      r.socket.destroy();
      assert.equal(r.status, 101, `${what}, reader key: ${r.status} ${h.short(r.body)}`);
      assert.equal(r.headers['sec-websocket-protocol'], how === 'subprotocol' ? 'streamd' : undefined, `${what}: chosen subprotocol`);
    }
  }
  // A reader of orders.* cannot open a stream outside its pattern.
  await req(server, 'POST', '/stream/billing', null, KEYS.root, 201);
  const [p, hd] = carriers.header('/stream/billing/ws/c1', KEYS.reader);
  assertRefused(await h.rawHandshake(server.port, p, hd), 403, 'forbidden', 'reader on billing');
});

test('ws client: each carrier delivers events; the key-only subprotocol is echoed back', { timeout: h.scaled(30000) }, async () => {
  const opened = [];
  opened.push(await h.openClient(`${server.wsBase}/stream/orders.a/ws/h?from_offset=0`, { headers: bearer(KEYS.reader) }));
  // The ws client checks the server's choice against what it offered.
  const sp = new WebSocket(`${server.wsBase}/stream/orders.a/ws/p2?from_offset=0`, ['streamd', `streamd.key.${KEYS.reader}`]);
  const only = new WebSocket(`${server.wsBase}/stream/orders.a/ws/p3?from_offset=0`, [`streamd.key.${KEYS.reader}`]);
  for (const ws of [sp, only]) {
    await new Promise((resolve, reject) => {
      ws.once('open', resolve);
      ws.once('error', reject);
    });
  }
  assert.equal(sp.protocol, 'streamd');
  assert.equal(only.protocol, `streamd.key.${KEYS.reader}`);
  opened.push(await h.openClient(`${server.wsBase}/stream/orders.a/ws/t?from_offset=0&token=${KEYS.reader}`));
  for (const c of opened) {
    await h.waitFor(() => c.msgs.length >= 1, h.scaled(5000), 'the first event');
    assert.equal(c.msgs[0].data, 'first');
    c.ws.close();
    await c.closed;
  }
  sp.close();
  only.close();
  // Group consumer with read: receives and acks over the socket.
  const g = await h.openClient(`${server.wsBase}/stream/orders.a/group/g2/ws/gc`, { headers: bearer(KEYS.reader) });
  await h.waitFor(() => g.msgs.length >= 1, h.scaled(5000), 'the group delivery');
  g.ws.send(JSON.stringify({ ack: { partition: g.msgs[0].partition || 0, offset: g.msgs[0].offset } }));
  await h.waitFor(async () => {
    const info = (await req(server, 'GET', '/stream/orders.a/group/g2/info', null, KEYS.reader, 200)).json;
    return info.pending_messages === 0 && info.partitions[0].committed_offset === 1 ? info : null;
  }, h.scaled(5000), 'the ack to settle the event');
  g.ws.close();
  await g.closed;
});

test('a foreign Origin is refused on both upgrade routes, even with a valid key', { timeout: h.scaled(20000) }, async () => {
  for (const route of ROUTES) {
    for (const [origin, status] of [['http://evil.example', 403], ['http://127.0.0.1.evil.example', 403], [`http://127.0.0.1:${server.port + 1}`, 101]]) {
      const r = await h.rawHandshake(server.port, route, { Origin: origin, ...bearer(KEYS.root) });
      if (status === 403) assertRefused(r, 403, 'forbidden_origin', `${route} from ${origin}`);
      else {
        r.socket.destroy();
        assert.equal(r.status, 101, `${route} from ${origin}: ${r.status} ${h.short(r.body)}`);
      }
    }
  }
});

test('open mode: the streamd subprotocol is echoed, the token ignored', { timeout: h.scaled(20000) }, async () => {
  const open = await new h.Server().start();
  try {
    await open.create('s');
    const ws = new WebSocket(`${open.wsBase}/stream/s/ws/c?from_offset=0`, ['streamd']);
    await new Promise((resolve, reject) => {
      ws.once('open', resolve);
      ws.once('error', reject);
    });
    assert.equal(ws.protocol, 'streamd');
    ws.close();
    await open.stop();
  } finally {
    await open.cleanup();
  }
});

test('SIGHUP: open WebSockets survive a key rotation; new handshakes need the new key', { timeout: h.scaled(40000) }, async () => {
  const a = newKey();
  const b = newKey();
  const srv = new h.Server();
  const keysFile = path.join(srv.tmp, 'keys');
  fs.writeFileSync(keysFile, `${line('a', a, 'read+write+admin:*')}\n`);
  srv.args = ['--keys-file', keysFile];
  try {
    await srv.start();
    await req(srv, 'POST', '/stream/r', null, a, 201);
    await req(srv, 'POST', '/stream/r/group/g', null, a, 201);
    const sub = await h.openClient(`${srv.wsBase}/stream/r/ws/c?from_offset=0`, { headers: bearer(a) });
    const grp = await h.openClient(`${srv.wsBase}/stream/r/group/g/ws/c`, { headers: bearer(a) });
    await req(srv, 'POST', '/stream/r/publish', { event: 'e', data: 0 }, a, 200);
    await h.waitFor(() => sub.msgs.length === 1 && grp.msgs.length === 1, h.scaled(5000), 'event 0 on both');

    fs.writeFileSync(keysFile, `${line('b', b, 'read+write:r')}\n`);
    const before = (srv.output.match(/SIGHUP/g) || []).length;
    process.kill(srv.pid, 'SIGHUP');
    await h.waitFor(() => (srv.output.match(/SIGHUP/g) || []).length > before, h.scaled(10000), 'the reload log line');
    assert.match(srv.output.split('SIGHUP').pop(), /1 API key\(s\) in force/);

    await req(srv, 'POST', '/stream/r/publish', { event: 'e', data: 1 }, a, 401);
    await req(srv, 'POST', '/stream/r/publish', { event: 'e', data: 1 }, b, 200);
    await h.waitFor(() => sub.msgs.length === 2 && grp.msgs.length === 2, h.scaled(5000), 'event 1 on both open sockets');
    assert.equal(sub.closeInfo, null, 'the subscriber was closed');
    assert.equal(grp.closeInfo, null, 'the group consumer was closed');
    assertRefused(await h.rawHandshake(srv.port, '/stream/r/ws/c2', bearer(a)), 401, 'unauthorized', 'old key after rotation');
    const c2 = await h.openClient(`${srv.wsBase}/stream/r/ws/c2?from_offset=0&token=${b}`);
    await h.waitFor(() => c2.msgs.length === 2, h.scaled(5000), 'both events with the new key');
    for (const c of [sub, grp, c2]) c.ws.close();
    await Promise.all([sub.closed, grp.closed, c2.closed]);
    await srv.stop();
  } finally {
    await srv.cleanup();
  }
});

test('Chromium: keys as subprotocol or token, and a page from another host refused', { timeout: h.scaled(60000) }, async () => {
  assert.ok(fs.existsSync(CHROMIUM), `${CHROMIUM} is missing: apt-get install -y chromium`);
  const { chromium } = require('playwright-core');
  const html = `<!doctype html><meta charset="utf-8"><script>
window.results = {};
function open(name, url, protocols) {
  const ws = protocols ? new WebSocket(url, protocols) : new WebSocket(url);
  const r = window.results[name] = { messages: [], protocol: null, closed: null };
  ws.onopen = () => { r.protocol = ws.protocol; };
  ws.onmessage = (e) => { r.messages.push(JSON.parse(e.data).data); ws.close(); };
  ws.onclose = (e) => { r.closed = e.code; };
}
const base = new URLSearchParams(location.search).get('ws');
const key = new URLSearchParams(location.search).get('key');
open('both', base + '/stream/orders.a/ws/b1?from_offset=0', ['streamd', 'streamd.key.' + key]);
open('keyonly', base + '/stream/orders.a/ws/b2?from_offset=0', ['streamd.key.' + key]);
open('token', base + '/stream/orders.a/ws/b3?from_offset=0&token=' + key);
open('nokey', base + '/stream/orders.a/ws/b4?from_offset=0');
</script>`;
  const web = http.createServer((rq, res) => {
    res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8' });
    res.end(html);
  });
  await new Promise((r) => web.listen(0, '127.0.0.1', r));
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--no-sandbox', '--headless', '--disable-gpu', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync'],
  });
  try {
    const tab = await browser.newPage();
    // Same host name as the server, another port: allowed.
    await tab.goto(`http://localhost:${web.address().port}/?ws=ws://localhost:${server.port}&key=${KEYS.reader}`);
    const res = await h.waitFor(async () => {
      const r = await tab.evaluate(() => window.results);
      return Object.values(r).every((x) => x.closed !== null) ? r : null;
    }, h.scaled(15000), 'the four sockets to close');
    assert.deepEqual(res.both.messages, ['first'], h.short(res));
    assert.equal(res.both.protocol, 'streamd');
    assert.deepEqual(res.keyonly.messages, ['first'], h.short(res));
    assert.equal(res.keyonly.protocol, `streamd.key.${KEYS.reader}`);
    assert.deepEqual(res.token.messages, ['first'], h.short(res));
    assert.deepEqual(res.nokey.messages, [], h.short(res));
    assert.equal(res.nokey.closed, 1006, 'a refused handshake closes with 1006');
    // A page from another host name (127.0.0.1 against localhost): refused even with the key.
    const tab2 = await browser.newPage();
    await tab2.goto(`http://127.0.0.1:${web.address().port}/?ws=ws://localhost:${server.port}&key=${KEYS.reader}`);
    const res2 = await h.waitFor(async () => {
      const r = await tab2.evaluate(() => window.results);
      return Object.values(r).every((x) => x.closed !== null) ? r : null;
    }, h.scaled(15000), 'the four sockets to close');
    for (const [name, r] of Object.entries(res2)) {
      assert.deepEqual(r.messages, [], `${name} from a foreign origin: ${h.short(r)}`);
      assert.equal(r.closed, 1006, name);
    }
  } finally {
    await browser.close().catch(() => {});
    web.close();
  }
});

test('SIGTERM: exit 0, no sanitizer report', { timeout: h.scaled(30000) }, async () => {
  await server.stop();
});
