'use strict';
// 2. Replay from 0, from the end (the default) and from -N; every frame is
// the JSON object that the consume route returns for that offset.
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const h = require('./harness');

const N = 40;
let server;
let expected; // the consume route's events 0..N-1

before(async () => {
  server = await new h.Server().start();
  await server.create('s');
  for (let i = 0; i < N; i++) {
    const ev = { event: `ev.${i % 3}`, data: `data ${i} "quoted" \\ é ✓` };
    if (i % 4 === 1) ev.data = { n: i, nested: { list: [1, 'two', null, true], f: 1.5 } };
    if (i % 4 === 2) ev.data = [i, { k: 'v' }];
    if (i % 5 === 3) ev.partition_key = `user-${i}`;
    if (i % 6 === 4) ev.headers = { 'x-trace': `t${i}`, 'content-kind': 'test' };
    if (i % 7 === 5) ev.data = i; // a number is a JSON value too
    await server.publish('s', ev);
  }
  expected = await server.consumeAll('s');
  assert.equal(expected.length, N);
});
after(async () => {
  if (server) await server.cleanup();
});

function checkFrames(c, from, count, who) {
  assert.deepEqual(c.errors, [], `${who}: client errors`);
  h.assertDense(c.msgs.map((m) => m.offset), from, count, who);
}

test('from_offset=0 replays everything, each frame equal to the consume route', { timeout: h.scaled(20000) }, async () => {
  const c = await h.openClient(`${server.wsBase}/stream/s/ws/r0?from_offset=0`);
  await h.waitFor(() => c.msgs.length >= N, h.scaled(5000), `${N} replayed events`);
  await h.sleep(h.scaled(200)); // nothing more may come
  checkFrames(c, 0, N, 'from 0');
  for (let i = 0; i < N; i++) {
    assert.deepEqual(c.msgs[i], expected[i], `frame ${i} differs from GET consume`);
    // Per offset, as the brief asks: the consume route at exactly that offset.
  }
  for (const i of [0, 1, 2, 4, 5, 17, N - 1]) {
    const one = await server.consume('s', { from_offset: i, limit: 1 });
    assert.deepEqual(c.msgs[i], one[0], `frame ${i} vs consume?from_offset=${i}&limit=1`);
  }
  // The data keeps its JSON type (an object is not re-encoded as a string).
  assert.deepEqual(c.msgs[1].data, { n: 1, nested: { list: [1, 'two', null, true], f: 1.5 } });
  assert.equal(typeof c.msgs[0].timestamp, 'number');
  c.ws.close();
  await c.closed;
});

test('from_offset=K replays from K, then live events follow', { timeout: h.scaled(20000) }, async () => {
  const c = await h.openClient(`${server.wsBase}/stream/s/ws/rk?from_offset=25`);
  await h.waitFor(() => c.msgs.length >= N - 25, h.scaled(5000), 'replay from 25');
  checkFrames(c, 25, N - 25, 'from 25');
  c.msgs.forEach((m, i) => assert.deepEqual(m, expected[25 + i]));
  c.ws.close();
  await c.closed;
  // Past the end: nothing, and then the next events when they come.
  const far = await h.openClient(`${server.wsBase}/stream/s/ws/rk2?from_offset=1000`);
  await h.sleep(h.scaled(200));
  assert.equal(far.msgs.length, 0, `from_offset past the end sent ${h.short(far.msgs)}`);
  far.ws.close();
  await far.closed;
});

test('without from_offset: only new events', { timeout: h.scaled(20000) }, async () => {
  const before = (await server.stats('s')).max_offset;
  const c = await h.openClient(`${server.wsBase}/stream/s/ws/rend`);
  await h.sleep(h.scaled(200));
  assert.equal(c.msgs.length, 0, `a default subscription replayed old events: ${h.short(c.msgs)}`);
  const offs = [];
  for (let i = 0; i < 3; i++) offs.push((await server.publish('s', { event: 'new', data: `new ${i}` })).offset);
  assert.deepEqual(offs, [before + 1, before + 2, before + 3]);
  await h.waitFor(() => c.msgs.length >= 3, h.scaled(5000), '3 new events');
  await h.sleep(h.scaled(100));
  checkFrames(c, before + 1, 3, 'default start');
  const got = await server.consume('s', { from_offset: before + 1, limit: 3 });
  assert.deepEqual(c.msgs, got);
  c.ws.close();
  await c.closed;
});

test('from_offset=-N replays the last N events, then live', { timeout: h.scaled(20000) }, async () => {
  const last = (await server.stats('s')).max_offset;
  const c = await h.openClient(`${server.wsBase}/stream/s/ws/rneg?from_offset=-5`);
  await h.waitFor(() => c.msgs.length >= 5, h.scaled(5000), 'last 5 events');
  await h.sleep(h.scaled(200));
  checkFrames(c, last - 4, 5, 'from -5');
  assert.deepEqual(c.msgs, await server.consume('s', { from_offset: last - 4, limit: 5 }));
  assert.deepEqual(c.msgs, await server.consume('s', { from_offset: -5, limit: 10 }));
  const p = await server.publish('s', { event: 'after', data: 'after -5' });
  await h.waitFor(() => c.msgs.length >= 6, h.scaled(5000), 'the live event');
  assert.equal(c.msgs[5].offset, p.offset);
  // -N larger than the stream: everything.
  const all = await h.openClient(`${server.wsBase}/stream/s/ws/rneg2?from_offset=-100000`);
  await h.waitFor(() => all.msgs.length >= p.offset + 1, h.scaled(5000), 'everything');
  checkFrames(all, 0, p.offset + 1, 'from -100000');
  c.ws.close();
  all.ws.close();
  await Promise.all([c.closed, all.closed]);
});

test('a replay larger than ws_window_bytes (default 256 KiB) arrives whole', { timeout: h.scaled(30000) }, async () => {
  // 2000 events of ~1 KB: about 8 windows.  The server must resume reading
  // the log each time the socket drains.
  await server.create('big');
  const pad = 'b'.repeat(1000);
  for (let i = 0; i < 2000; i += 500) {
    await server.publish('big', Array.from({ length: 500 }, (_, j) => ({ event: 'big', data: `${i + j} ${pad}` })));
  }
  const c = await h.openClient(`${server.wsBase}/stream/big/ws/big?from_offset=0`);
  try {
    await h.waitFor(() => c.msgs.length >= 2000, h.scaled(5000), '2000 replayed events').catch((e) => {
      e.message += ` (received ${c.msgs.length}; the server sent no more after the first window)`;
      throw e;
    });
    checkFrames(c, 0, 2000, 'big replay');
  } finally {
    c.ws.close();
    await c.closed;
  }
});

test('server exits 0 on SIGTERM with no sanitizer report', { timeout: h.scaled(30000) }, async () => {
  await server.stop();
});
