'use strict';
// 7. Abrupt disconnects (sockets destroyed mid-stream, before and right
// after the upgrade, while idle; FIN and RST) leave the server healthy.
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const net = require('node:net');
const h = require('./harness');

const N = 3000;
const LIVE = 3;
let server;
before(async () => {
  // A window larger than the whole stream keeps this test independent of
  // the window-refill path (tested in replay.test.js and slow.test.js):
  // here only the disconnects matter.  Mid-stream kills still leave up to
  // 1.5 MB queued in the server.
  server = await new h.Server({ args: ['--ws-window-bytes', String(8 << 20)] }).start();
  await server.create('s');
  const pad = 'p'.repeat(500);
  for (let i = 0; i < N; i += 500) {
    await server.publish('s', Array.from({ length: 500 }, (_, j) => ({ event: 'e', data: `${i + j} ${pad}` })));
  }
});
after(async () => {
  if (server) await server.cleanup();
});

function kill(sock, k) {
  if (k % 2 === 0) sock.destroy();
  else sock.resetAndDestroy(); // RST
}

// One abrupt client; `kind` picks the moment it vanishes.
async function abrupt(kind, k) {
  if (kind === 'before-upgrade') {
    // Handshake sent, socket gone before the 101 is read.
    await new Promise((resolve) => {
      const s = net.connect(server.port, '127.0.0.1', () => {
        s.write(`GET /stream/s/ws/gone-${k}?from_offset=0 HTTP/1.1\r\nHost: 127.0.0.1:${server.port}\r\n` +
          `Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ${h.wsKey()}\r\nSec-WebSocket-Version: 13\r\n\r\n`);
        kill(s, k);
        resolve();
      });
      s.on('error', resolve);
    });
    return;
  }
  const path = kind === 'idle' ? `/stream/s/ws/gone-${k}` : `/stream/s/ws/gone-${k}?from_offset=0`;
  const r = await h.rawHandshake(server.port, path);
  assert.equal(r.status, 101);
  r.socket.on('error', () => {});
  if (kind === 'after-upgrade' || kind === 'idle') {
    kill(r.socket, k);
    return;
  }
  // mid-stream: read some of the replay, then vanish with frames in flight.
  const want = 2000 + ((k * 7919) % 200000);
  let got = r.rest.length;
  await new Promise((resolve) => {
    if (got >= want) return resolve();
    r.socket.on('data', (d) => {
      got += d.length;
      if (got >= want) resolve();
    });
    r.socket.on('close', resolve);
    r.socket.resume();
  });
  kill(r.socket, k);
}

test('50 abrupt disconnects leave the server healthy and the other subscribers whole', { timeout: h.scaled(60000) }, async () => {
  const live = await Promise.all(Array.from({ length: LIVE }, (_, i) => h.openClient(`${server.wsBase}/stream/s/ws/live-${i}?from_offset=0`)));
  await h.waitFor(() => live.every((c) => c.msgs.length >= N), h.scaled(10000), 'the live clients\' replay');
  const kinds = ['mid-stream', 'mid-stream', 'after-upgrade', 'idle', 'before-upgrade'];
  let published = N;
  for (let batch = 0; batch < 5; batch++) {
    const jobs = [];
    for (let j = 0; j < 10; j++) {
      const k = batch * 10 + j;
      jobs.push(abrupt(kinds[k % kinds.length], k));
    }
    // Publishing meanwhile wakes idle subscribers (and dead ones).
    for (let i = 0; i < 5; i++) {
      await server.publish('s', { event: 'during', data: `${published} during` });
      published++;
    }
    await Promise.all(jobs);
  }
  const health = await server.request('GET', '/health');
  assert.equal(health.status, 200);
  assert.equal(health.json.status, 'healthy');
  // The dead are counted out.
  await h.waitFor(async () => (await server.stats('s')).subscriber_count === LIVE, h.scaled(10000),
    `subscriber_count to return to ${LIVE}`).catch(async (e) => {
    e.message += ` (now ${(await server.stats('s')).subscriber_count})`;
    throw e;
  });
  // The live clients got every event, once, in order.
  for (let i = 0; i < 10; i++) {
    await server.publish('s', { event: 'after', data: `${published} after` });
    published++;
  }
  await h.waitFor(() => live.every((c) => c.msgs.length >= published), h.scaled(10000), 'live clients to catch up');
  await h.sleep(h.scaled(200));
  for (const [i, c] of live.entries()) {
    assert.equal(c.closeInfo, null, `live client ${i} was closed`);
    h.assertDense(c.msgs.map((m) => m.offset), 0, published, `live client ${i}`);
  }
  // A new subscriber still gets everything.
  const fresh = await h.openClient(`${server.wsBase}/stream/s/ws/fresh?from_offset=0`);
  await h.waitFor(() => fresh.msgs.length >= published, h.scaled(10000), 'the new subscriber\'s replay');
  await h.sleep(h.scaled(200));
  h.assertDense(fresh.msgs.map((m) => m.offset), 0, published, 'new subscriber');
  assert.equal((await server.stats('s')).subscriber_count, LIVE + 1);
  for (const c of [...live, fresh]) c.ws.close();
  await Promise.all([...live, fresh].map((c) => c.closed));
  await h.waitFor(async () => (await server.stats('s')).subscriber_count === 0, h.scaled(5000), 'subscriber_count 0');
});

test('server exits 0 on SIGTERM with no sanitizer report', { timeout: h.scaled(30000) }, async () => {
  await server.stop();
});
