'use strict';
// A subscriber that falls behind retention is closed with 4416 and a
// reason, after every event it could still be given, in order.
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const h = require('./harness');

const BATCHES = 30;
const PER_BATCH = 1000;
const PAD = 'r'.repeat(1000); // ~1 KB per event: ~30 MB, more than the socket buffers hold

let server;
before(async () => {
  server = await new h.Server({
    args: ['--segment-bytes', '65536', '--retention-check-ms', '50', '--ws-window-bytes', '16384',
      '--ws-ping-interval-ms', '3600000'],
  }).start();
  await server.create('behind', { max_events: 1000 });
});
after(async () => {
  if (server) await server.cleanup();
});

test('a subscriber behind retention is closed with 4416', { timeout: h.scaled(60000) }, async () => {
  const r = await h.rawHandshake(server.port, '/stream/behind/ws/laggard?from_offset=0');
  assert.equal(r.status, 101);
  const sock = r.socket; // paused: reads nothing until resumed
  sock.on('error', () => {});
  for (let b = 0; b < BATCHES; b++) {
    await server.publish('behind', Array.from({ length: PER_BATCH }, (_, j) => ({ event: 'e', data: `${b * PER_BATCH + j} ${PAD}` })));
  }
  await h.waitFor(async () => (await server.stats('behind')).min_offset > 10000, h.scaled(10000), 'retention to remove old events');

  const parser = new h.FrameParser();
  let next = 0;
  let bad = null;
  let close = null;
  const take = (buf) => {
    for (const f of parser.push(buf)) {
      if (f.opcode === 8) {
        close = { code: f.payload.readUInt16BE(0), reason: f.payload.subarray(2).toString() };
        continue;
      }
      if (f.opcode !== 1 || bad) continue;
      const ev = JSON.parse(f.payload.toString('utf8'));
      if (ev.offset !== next) bad = `expected offset ${next}, got ${ev.offset}`;
      next++;
    }
  };
  const done = new Promise((resolve) => {
    sock.on('data', (d) => {
      take(d);
      if (close || bad) resolve();
    });
    sock.on('close', resolve);
  });
  take(r.rest);
  sock.resume();
  await Promise.race([done, new Promise((res) => setTimeout(res, h.scaled(15000)))]);
  sock.destroy();
  assert.equal(bad, null, bad);
  assert.ok(close, `no close frame after ${next} events`);
  assert.equal(close.code, 4416, `close code ${close.code} (${close.reason})`);
  assert.ok(close.reason.length > 0, 'the close has a reason');
  assert.ok(next > 0 && next < BATCHES * PER_BATCH, `got ${next} events before the close`);
  const health = await server.request('GET', '/health');
  assert.equal(health.status, 200);
});
