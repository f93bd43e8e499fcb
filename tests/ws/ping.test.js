'use strict';
// 6. Ping/pong: the server answers a client's ping, sends its own every
// ws_ping_interval_ms, and drops a peer that does not answer within about
// two intervals while a normal client stays connected.
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const h = require('./harness');

const INTERVAL = 300;
let server;
before(async () => {
  server = await new h.Server({ args: ['--ws-ping-interval-ms', String(INTERVAL)] }).start();
  await server.create('s');
});
after(async () => {
  if (server) await server.cleanup();
});

test('a client ping gets a pong with the same payload', { timeout: h.scaled(20000) }, async () => {
  const c = await h.openClient(`${server.wsBase}/stream/s/ws/pinger`);
  for (const payload of ['', 'hello', 'x'.repeat(125)]) {
    const pong = new Promise((resolve) => c.ws.once('pong', (d) => resolve(d.toString())));
    c.ws.ping(payload);
    const got = await Promise.race([pong, h.sleep(h.scaled(3000)).then(() => null)]);
    assert.equal(got, payload, `pong for ping ${JSON.stringify(payload.slice(0, 10))}`);
  }
  c.ws.close();
  await c.closed;
});

test(`with --ws-ping-interval-ms ${INTERVAL}: a silent peer is dropped, a normal one stays`, { timeout: h.scaled(30000) }, async () => {
  const normal = await h.openClient(`${server.wsBase}/stream/s/ws/normal`);
  let pings = 0;
  normal.ws.on('ping', () => pings++);

  // ws@8 (>= 8.16) can turn off its automatic pong.
  const t0 = Date.now();
  const silent = await h.openClient(`${server.wsBase}/stream/s/ws/silent`, { autoPong: false });
  let silentPings = 0;
  silent.ws.on('ping', () => silentPings++);
  // And a raw socket that does the handshake by hand and then stays silent.
  const raw = await h.rawHandshake(server.port, '/stream/s/ws/raw-silent');
  assert.equal(raw.status, 101);
  const rawClosed = new Promise((resolve) => raw.socket.on('close', () => resolve(Date.now())));
  raw.socket.on('error', () => {});
  raw.socket.on('data', () => {});
  raw.socket.resume();

  await h.waitFor(async () => (await server.stats('s')).subscriber_count === 3, h.scaled(3000), '3 subscribers');
  // Dropped at the second tick after connecting: at most 2 intervals, plus slack.
  const limit = 2 * INTERVAL + h.scaled(500);
  const info = await Promise.race([silent.closed, h.sleep(limit + 2000).then(() => null)]);
  const silentAfter = Date.now() - t0;
  assert.ok(info !== null, `the silent ws client was not dropped within ${limit + 2000} ms`);
  assert.ok(silentAfter <= limit, `the silent client was dropped after ${silentAfter} ms (limit ${limit})`);
  assert.ok(silentPings >= 1, 'the silent client never got a ping');
  const rawAt = await Promise.race([rawClosed, h.sleep(limit + 2000).then(() => null)]);
  assert.ok(rawAt !== null, 'the raw silent socket was not dropped');
  assert.ok(rawAt - t0 <= limit + 200, `the raw silent socket was dropped after ${rawAt - t0} ms (limit ${limit})`);

  // The normal client survives several more intervals and keeps receiving.
  await h.sleep(4 * INTERVAL);
  assert.equal(normal.closeInfo, null, `the normal client was dropped: ${h.short(normal.closeInfo)}`);
  assert.ok(pings >= 4, `the normal client got only ${pings} pings in ${Date.now() - t0} ms`);
  const st = await server.stats('s');
  assert.equal(st.subscriber_count, 1, `subscriber_count after the drops: ${st.subscriber_count}`);
  const p = await server.publish('s', { event: 'e', data: 'still here' });
  await h.waitFor(() => normal.msgs.length === 1, h.scaled(3000), 'the normal client to get the event');
  assert.equal(normal.msgs[0].offset, p.offset);
  normal.ws.close();
  await normal.closed;
});

test('server exits 0 on SIGTERM with no sanitizer report', { timeout: h.scaled(30000) }, async () => {
  await server.stop();
});
