'use strict';
// 8. subscriber_count in stats (and the metrics gauge), and the
// subscriber's consumer name in GET /stream/s/consumers while connected.
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const h = require('./harness');

let server;
before(async () => {
  server = await new h.Server().start();
  await server.create('s');
  await server.create('other');
  for (let i = 0; i < 10; i++) await server.publish('s', { event: 'e', data: i });
});
after(async () => {
  if (server) await server.cleanup();
});

async function consumers(stream) {
  const r = await server.ok('GET', `/stream/${stream}/consumers`, null, 200);
  assert.ok(Array.isArray(r.consumers), h.short(r));
  return r.consumers;
}

async function gauge(stream) {
  const r = await server.request('GET', '/metrics');
  assert.equal(r.status, 200);
  const m = r.text.match(new RegExp(`^streamd_stream_subscribers\\{stream="${stream}"\\} (\\d+)$`, 'm'));
  return m ? Number(m[1]) : null;
}

test('subscriber_count and consumers while connected', { timeout: h.scaled(20000) }, async () => {
  assert.equal((await server.stats('s')).subscriber_count, 0);
  const t0 = Date.now();
  const names = ['sub-alpha', 'sub.beta', 'sub:gamma'];
  const cs = [];
  for (const [i, n] of names.entries()) {
    cs.push(await h.openClient(`${server.wsBase}/stream/s/ws/${n}?from_offset=${i * 3}`));
    await h.waitFor(async () => (await server.stats('s')).subscriber_count === i + 1, h.scaled(3000), `subscriber_count ${i + 1}`);
  }
  await h.waitFor(() => cs.every((c, i) => c.msgs.length === 10 - i * 3), h.scaled(5000), 'the replays');
  assert.equal((await server.stats('other')).subscriber_count, 0, 'another stream counts these subscribers');
  assert.equal(await gauge('s'), 3, 'streamd_stream_subscribers gauge');
  // Each consumer name appears with its position.
  let list = await consumers('s');
  for (const n of names) {
    const e = list.find((x) => x.consumer === n);
    assert.ok(e, `consumer ${n} missing from ${h.short(list)}`);
    assert.equal(e.partition, 0);
    assert.equal(e.offset, 9, `consumer ${n}: ${h.short(e)}`);
    assert.equal(e.lag, 0, `consumer ${n}: ${h.short(e)}`);
    assert.ok(e.last_seen >= t0 - 1000 && e.last_seen <= Date.now() + 1000, `last_seen ${e.last_seen}`);
  }
  // Live events move the position.
  await server.publish('s', { event: 'e', data: 10 });
  await h.waitFor(() => cs.every((c) => c.msgs.at(-1).offset === 10), h.scaled(5000), 'the live event');
  list = await consumers('s');
  for (const n of names) assert.equal(list.find((x) => x.consumer === n).offset, 10, h.short(list));
  // Leaving lowers the count, one by one.
  for (const [i, c] of cs.entries()) {
    c.ws.close();
    await c.closed;
    await h.waitFor(async () => (await server.stats('s')).subscriber_count === names.length - i - 1, h.scaled(3000),
      `subscriber_count ${names.length - i - 1}`);
  }
  assert.equal(await gauge('s'), 0);
});

test('server exits 0 on SIGTERM with no sanitizer report', { timeout: h.scaled(30000) }, async () => {
  await server.stop();
});
