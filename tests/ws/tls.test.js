'use strict';
// WSS: WebSocket over TLS, which libmicrohttpd relays between the TLS
// socket and the server's end of a socketpair.  Subscriber and group
// consumer round trips with large events, a server-side close, and a
// shutdown with WSS connections open.  The certificate is self-signed,
// made with the openssl command.
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { execFileSync } = require('node:child_process');
const crypto = require('node:crypto');
const fs = require('node:fs');
const https = require('node:https');
const path = require('node:path');
const h = require('./harness');

const KEY = crypto.randomBytes(32).toString('hex');
const HASH = crypto.createHash('sha256').update(KEY).digest('hex');
let server;
let ca;

before(async () => {
  server = new h.Server();
  const cert = path.join(server.tmp, 'cert.pem');
  const key = path.join(server.tmp, 'key.pem');
  execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', key, '-out', cert, '-days', '2',
    '-subj', '/CN=localhost', '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1'], { stdio: 'ignore' });
  ca = fs.readFileSync(cert);
  server.args = ['--tls-cert-file', cert, '--tls-key-file', key, '--key', `t sha256:${HASH} read+write+admin:*`,
    '--ws-window-bytes', '65536'];
  await server.start();
});
after(async () => {
  if (server) await server.cleanup();
});

const agent = new https.Agent({ keepAlive: true, ca });
function request(method, p, body) {
  return new Promise((resolve, reject) => {
    const data = body == null ? null : Buffer.from(JSON.stringify(body));
    const headers = { Authorization: `Bearer ${KEY}` };
    if (data) Object.assign(headers, { 'Content-Type': 'application/json', 'Content-Length': data.length });
    const rq = https.request({ host: '127.0.0.1', port: server.port, method, path: p, headers, agent }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString();
        resolve({ status: res.statusCode, json: text ? JSON.parse(text) : undefined, text });
      });
    });
    rq.on('error', (e) => reject(h.annotate(e)));
    rq.end(data);
  });
}
async function ok(method, p, body, status) {
  const r = await request(method, p, body);
  assert.equal(r.status, status, `${method} ${p}: ${r.status} ${h.short(r.text)}`);
  return r.json;
}
const wss = (p, opts = {}) => h.openClient(`wss://127.0.0.1:${server.port}${p}`, { ca, headers: { Authorization: `Bearer ${KEY}` }, ...opts });

test('WSS subscriber: events in order, live and replayed, through the TLS relay', { timeout: h.scaled(60000) }, async () => {
  await ok('POST', '/stream/big', null, 201);
  const data = (i) => `${i}:${'y'.repeat(1000 + (i % 7) * 300)}`;
  for (let i = 0; i < 40; i++) await ok('POST', '/stream/big/publish', { event: 'e', data: data(i) }, 200);
  const c = await wss('/stream/big/ws/r?from_offset=0');
  // Live events while the replay is still going out.
  for (let i = 40; i < 80; i++) await ok('POST', '/stream/big/publish', { event: 'e', data: data(i) }, 200);
  await h.waitFor(() => c.msgs.length >= 80, h.scaled(30000), '80 events over WSS');
  assert.deepEqual(c.errors, []);
  h.assertDense(c.msgs.map((m) => m.offset), 0, 80, 'wss subscriber');
  for (const m of c.msgs) assert.equal(m.data, data(m.offset));
  // The client's close is answered and the TCP connection closed by the
  // server promptly (not left to the client's 30 s close timeout).
  const t0 = Date.now();
  c.ws.close(1000);
  const info = await c.closed;
  assert.equal(info.code, 1000);
  assert.ok(Date.now() - t0 < h.scaled(5000), `close took ${Date.now() - t0} ms`);
});

test('WSS group consumer: deliveries and acks both ways; deleting the group closes it with 4404', { timeout: h.scaled(30000) }, async () => {
  await ok('POST', '/stream/gs', null, 201);
  await ok('POST', '/stream/gs/group/g', { ack: 'explicit' }, 201);
  const c = await wss('/stream/gs/group/g/ws/c1?prefetch=5');
  for (let i = 0; i < 20; i++) await ok('POST', '/stream/gs/publish', { event: 'e', data: i }, 200);
  // With prefetch 5 the consumer only gets more by acking over the socket.
  let acked = 0;
  await h.waitFor(() => {
    while (acked < c.msgs.length) {
      const m = c.msgs[acked++];
      c.ws.send(JSON.stringify({ ack: { partition: m.partition || 0, offset: m.offset } }));
    }
    return c.msgs.length >= 20;
  }, h.scaled(15000), '20 deliveries, acked one by one');
  assert.deepEqual(c.msgs.map((m) => m.data), Array.from({ length: 20 }, (_, i) => i));
  await h.waitFor(async () => (await ok('GET', '/stream/gs/group/g/info', null, 200)).partitions[0].committed_offset === 20,
    h.scaled(10000), 'every ack settled');
  await ok('DELETE', '/stream/gs/group/g', null, 200);
  const info = await c.closed;
  assert.equal(info.code, 4404, h.short(info));
});

test('plain ws:// to the TLS port does not upgrade', { timeout: h.scaled(20000) }, async () => {
  await assert.rejects(h.openClient(`ws://127.0.0.1:${server.port}/stream/big/ws/p?from_offset=0`));
});

test('SIGTERM with WSS connections open: they get 1001, the server exits 0', { timeout: h.scaled(30000) }, async () => {
  const a = await wss('/stream/big/ws/s1?from_offset=0');
  const b = await wss('/stream/big/ws/s2?from_offset=0');
  await h.waitFor(() => a.msgs.length >= 1 && b.msgs.length >= 1, h.scaled(10000), 'both subscribers to start');
  await server.stop(); // asserts exit 0 and no sanitizer report
  for (const c of [a, b]) {
    const info = await c.closed;
    assert.ok(info.code === 1001 || info.code === 1006, `close code ${info.code}`);
  }
  assert.ok([a, b].some((c) => c.closeInfo.code === 1001), 'no close frame came through the TLS relay');
});
