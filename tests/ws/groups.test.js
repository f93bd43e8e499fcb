'use strict';
// 12. Consumer-group WebSocket consumers (GET /stream/{s}/group/{g}/ws/{c}):
// prefetch, acks as text frames (single, range, array), redelivery after
// ack_timeout_ms, close codes (1007 malformed ack, 4404 group/stream
// deleted), and a concurrent drain by WebSocket and HTTP consumers with one
// WebSocket consumer killed, in shared and partitioned mode.
//
// STREAMD_GROUP_WS_EVENTS: events of the mixed drain (default 4000).
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const h = require('./harness');

const N_MIXED = Number(process.env.STREAMD_GROUP_WS_EVENTS || 4000);
const QUIET = h.scaled(500); // how long "no more frames" is watched

let server;
before(async () => {
  server = await new h.Server().start();
});
after(async () => {
  if (server) await server.cleanup();
});

// ---- helpers ----------------------------------------------------------------

const groupPath = (s, g) => `/stream/${s}/group/${g}`;

function createGroup(s, g, cfg) {
  return server.ok('POST', groupPath(s, g), cfg, 201);
}

function info(s, g) {
  return server.ok('GET', `${groupPath(s, g)}/info`, null, 200);
}

function groupWs(s, g, consumer, prefetch) {
  const q = prefetch === undefined ? '' : `?prefetch=${prefetch}`;
  return h.openClient(`${server.wsBase}${groupPath(s, g)}/ws/${consumer}${q}`);
}

function wsAck(c, ack) {
  c.ws.send(JSON.stringify({ ack }));
}

function poll(s, g, consumer, limit, waitMs = 0) {
  const q = new URLSearchParams({ limit, wait_ms: waitMs });
  if (consumer) q.set('consumer', consumer);
  return server.ok('GET', `${groupPath(s, g)}/consume?${q}`, null, 200);
}

function httpAck(s, g, consumer, acks) {
  return server.ok('POST', `${groupPath(s, g)}/ack`, { consumer, acks }, 200);
}

// Publishes n events (batches of 500); returns each partition's end.
async function publishMany(s, n, make, ends) {
  for (let i = 0; i < n; i += 500) {
    const batch = [];
    for (let j = i; j < Math.min(n, i + 500); j++) batch.push(make(j));
    const r = await server.publish(s, batch);
    for (const x of r.results) ends[x.partition] = Math.max(ends[x.partition] || 0, x.offset + 1);
  }
  return ends;
}

const pos = (m) => `${m.partition}:${m.offset}`;
const offsets = (c) => c.msgs.map((m) => m.offset);

// Watches a client for QUIET ms and asserts it still holds n frames.
async function assertQuiet(c, n, who) {
  await h.sleep(QUIET);
  assert.equal(c.msgs.length, n, `${who}: expected exactly ${n} frames, got ${c.msgs.length}: ${h.short(c.msgs.map(pos))}`);
  assert.deepEqual(c.errors, [], who);
  assert.equal(c.closeInfo, null, `${who} was closed: ${h.short(c.closeInfo)}`);
}

function withTimeout(p, ms, what) {
  let t;
  return Promise.race([p, new Promise((_, rej) => {
    t = setTimeout(() => rej(h.annotate(new Error(`timed out after ${ms} ms: ${what}`))), ms);
  })]).finally(() => clearTimeout(t));
}

// ---- 1. prefetch ----------------------------------------------------------------

test('prefetch=5 and no acks: exactly 5 frames; 2 acks release exactly 2 more', { timeout: h.scaled(20000) }, async () => {
  await server.create('pf');
  await publishMany('pf', 50, (i) => ({ event: 'e', data: i }), []);
  await createGroup('pf', 'g', { ack: 'explicit', ack_timeout_ms: 60000 });
  const c = await groupWs('pf', 'g', 'w', 5);
  await h.waitFor(() => c.msgs.length >= 5, h.scaled(5000), '5 frames');
  await assertQuiet(c, 5, 'prefetch 5, no acks');
  assert.deepEqual(offsets(c), [0, 1, 2, 3, 4]);
  assert.ok(c.msgs.every((m) => m.deliveries === 1 && m.partition === 0), h.short(c.msgs));
  let gi = await info('pf', 'g');
  assert.equal(gi.pending_messages, 5, h.short(gi));
  assert.equal(gi.partitions[0].committed_offset, 0, h.short(gi));
  assert.deepEqual(gi.consumers, ['w'], h.short(gi));

  // New events while the prefetch is used up wake the consumer: still 5.
  await publishMany('pf', 5, (i) => ({ event: 'late', data: 50 + i }), []);
  await assertQuiet(c, 5, 'prefetch 5 after more publishes');

  wsAck(c, { partition: 0, offset: 0 });
  wsAck(c, { partition: 0, offset: 1 });
  await h.waitFor(() => c.msgs.length >= 7, h.scaled(5000), '2 more frames after 2 acks');
  await assertQuiet(c, 7, 'after 2 acks');
  assert.deepEqual(offsets(c), [0, 1, 2, 3, 4, 5, 6]);
  gi = await info('pf', 'g');
  assert.equal(gi.pending_messages, 5, h.short(gi));
  assert.equal(gi.partitions[0].committed_offset, 2, h.short(gi));
  assert.equal(gi.partitions[0].lag, 55 - 2, h.short(gi));
  c.ws.close();
  await c.closed;
});

test('acks over HTTP of events a WebSocket consumer holds free its prefetch slots', { timeout: h.scaled(20000) }, async () => {
  await server.create('pfh');
  await publishMany('pfh', 20, (i) => ({ event: 'e', data: i }), []);
  await createGroup('pfh', 'g', { ack: 'explicit', ack_timeout_ms: 60000 });
  const c = await groupWs('pfh', 'g', 'w', 3);
  await h.waitFor(() => c.msgs.length >= 3, h.scaled(5000), '3 frames');
  await assertQuiet(c, 3, 'prefetch 3, no acks');
  const r = await httpAck('pfh', 'g', 'w', [{ partition: 0, from: 0, to: 1 }]);
  assert.equal(r.acked, 2);
  // No publish, no timeout due: only the settlement can wake the consumer.
  await h.waitFor(() => c.msgs.length >= 5, h.scaled(3000), '2 more frames after an HTTP ack of 2 (the consumer stalls)');
  await assertQuiet(c, 5, 'after an HTTP ack of 2');
  assert.deepEqual(offsets(c), [0, 1, 2, 3, 4]);
  c.ws.close();
  await c.closed;
});

// ---- 2. acks settle ---------------------------------------------------------------

test('acks over the WebSocket (single, range, array) settle events for good', { timeout: h.scaled(30000) }, async () => {
  const ATO = h.scaled(1000);
  await server.create('ack', { partitions: 2 });
  const ends = await publishMany('ack', 40, (i) => ({ event: 'e', data: { i }, partition: i % 2 }), []);
  assert.deepEqual(ends, [20, 20]);
  await createGroup('ack', 'g', { ack: 'explicit', ack_timeout_ms: ATO, session_timeout_ms: 3 * ATO });
  const c = await groupWs('ack', 'g', 'w');
  await h.waitFor(() => c.msgs.length >= 40, h.scaled(5000), '40 frames');
  await assertQuiet(c, 40, 'default prefetch (100)');
  // Frames are the stored events plus "deliveries": 1.
  for (const p of [0, 1]) {
    const stored = await server.consume('ack', { partition: p, from_offset: 0, limit: 100 });
    const got = c.msgs.filter((m) => m.partition === p).sort((a, b) => a.offset - b.offset);
    assert.equal(got.length, 20, `partition ${p}`);
    for (const [i, m] of got.entries()) {
      const { deliveries, ...ev } = m;
      assert.equal(deliveries, 1, h.short(m));
      assert.deepEqual(ev, stored[i], `partition ${p} offset ${i}`);
    }
  }
  // Partition 0: singles 0..4, a range 5..12, an array of singles 13..19.
  for (let o = 0; o < 5; o++) wsAck(c, { partition: 0, offset: o });
  wsAck(c, { partition: 0, from: 5, to: 12 });
  wsAck(c, Array.from({ length: 7 }, (_, k) => ({ partition: 0, offset: 13 + k })));
  // Partition 1: an array mixing ranges and singles, then the rest as a range.
  wsAck(c, [{ partition: 1, from: 0, to: 3 }, { partition: 1, offset: 4 }, { partition: 1, from: 5, to: 9 }]);
  wsAck(c, { partition: 1, from: 10, to: 19 });
  const gi = await h.waitFor(async () => {
    const x = await info('ack', 'g');
    return x.pending_messages === 0 && x.partitions.every((p) => p.committed_offset === 20) ? x : null;
  }, h.scaled(5000), 'committed_offset 20 in both partitions and pending 0');
  assert.deepEqual(gi.partitions.map((p) => p.lag), [0, 0], h.short(gi));
  assert.equal(gi.dead_messages, 0, h.short(gi));
  // Past the ack timeout: nothing comes back, here or to another consumer.
  await h.sleep(ATO + h.scaled(300));
  assert.equal(c.msgs.length, 40, `frames after the acks and the ack timeout: ${h.short(c.msgs.slice(40))}`);
  assert.deepEqual(await poll('ack', 'g', 'http', 100), []);
  c.ws.close();
  await c.closed;
  // Reconnected (same name), and a new name: nothing, until a new event.
  const c2 = await groupWs('ack', 'g', 'w');
  const c3 = await groupWs('ack', 'g', 'w-new');
  await assertQuiet(c2, 0, 'reconnected consumer');
  assert.equal(c3.msgs.length, 0, `new consumer: ${h.short(c3.msgs)}`);
  const r = await server.publish('ack', { event: 'fresh', data: 1, partition: 1 });
  assert.equal(r.offset, 20);
  await h.waitFor(() => c2.msgs.length + c3.msgs.length >= 1, h.scaled(5000), 'the new event');
  await h.sleep(QUIET);
  const all = [...c2.msgs, ...c3.msgs];
  assert.equal(all.length, 1, h.short(all));
  assert.deepEqual([all[0].partition, all[0].offset, all[0].deliveries, all[0].event], [1, 20, 1, 'fresh']);
  for (const x of [c2, c3]) x.ws.close();
  await Promise.all([c2.closed, c3.closed]);
});

// ---- 3. redelivery ----------------------------------------------------------------

test('unacked frames of a gone WebSocket consumer are redelivered after ack_timeout_ms', { timeout: h.scaled(30000) }, async () => {
  const ATO = h.scaled(1000);
  await server.create('rd');
  await publishMany('rd', 10, (i) => ({ event: 'e', data: i }), []);
  await createGroup('rd', 'g', { ack: 'explicit', ack_timeout_ms: ATO, session_timeout_ms: 3 * ATO });

  // (a) closed cleanly without acking; an HTTP consumer gets them again.
  const w1 = await groupWs('rd', 'g', 'w1', 100);
  await h.waitFor(() => w1.msgs.length >= 10, h.scaled(5000), '10 frames');
  const t1 = Date.now();
  w1.ws.close();
  await w1.closed;
  const got = [];
  await h.waitFor(async () => {
    got.push(...await poll('rd', 'g', 'h1', 100, 200));
    return got.length >= 10;
  }, ATO + h.scaled(5000), '10 redeliveries over HTTP');
  const waited = Date.now() - t1;
  assert.ok(waited >= ATO - 100, `redelivered after ${waited} ms, ack_timeout_ms is ${ATO}`);
  assert.deepEqual(got.map((m) => m.offset), Array.from({ length: 10 }, (_, i) => i));
  assert.ok(got.every((m) => m.deliveries === 2), h.short(got.map((m) => m.deliveries)));
  assert.equal((await httpAck('rd', 'g', 'h1', [{ partition: 0, from: 0, to: 9 }])).acked, 10);

  // (b) killed (socket destroyed) without acking; another WebSocket consumer gets them.
  await publishMany('rd', 5, (i) => ({ event: 'e', data: 10 + i }), []);
  const w2 = await groupWs('rd', 'g', 'w2', 100);
  await h.waitFor(() => w2.msgs.length >= 5, h.scaled(5000), '5 frames');
  assert.deepEqual(offsets(w2), [10, 11, 12, 13, 14]);
  const t2 = Date.now();
  w2.ws.terminate();
  const w3 = await groupWs('rd', 'g', 'w3', 100);
  await h.waitFor(() => w3.msgs.length >= 5, ATO + h.scaled(5000), '5 redeliveries over the WebSocket');
  const waited2 = Date.now() - t2;
  assert.ok(waited2 >= ATO - 100, `redelivered after ${waited2} ms, ack_timeout_ms is ${ATO}`);
  await assertQuiet(w3, 5, 'w3');
  assert.deepEqual(offsets(w3), [10, 11, 12, 13, 14]);
  assert.ok(w3.msgs.every((m) => m.deliveries === 2), h.short(w3.msgs.map((m) => m.deliveries)));
  wsAck(w3, { partition: 0, from: 10, to: 14 });
  const gi = await h.waitFor(async () => {
    const x = await info('rd', 'g');
    return x.pending_messages === 0 && x.partitions[0].committed_offset === 15 ? x : null;
  }, h.scaled(5000), 'all settled');
  assert.equal(gi.dead_messages, 0);
  w3.ws.close();
  await w3.closed;
});

// ---- 4. close codes ---------------------------------------------------------------

test('a malformed ack closes with 1007', { timeout: h.scaled(30000) }, async () => {
  await server.create('bad', { partitions: 2 });
  await publishMany('bad', 4, (i) => ({ event: 'e', data: i, partition: i % 2 }), []);
  await createGroup('bad', 'g', { ack: 'explicit', ack_timeout_ms: 60000 });
  const bad = [
    'not json',
    '{"ack":',
    '{}',
    '{"akc":{"partition":0,"offset":0}}',
    '{"ack":5}',
    '{"ack":"0:0"}',
    '{"ack":{"partition":0}}',
    '{"ack":{"partition":0,"from":1}}',
    '{"ack":{"partition":"0","offset":0}}',
    '{"ack":{"partition":0,"offset":"0"}}',
    '{"ack":{"partition":0,"offset":-1}}',
    '{"ack":{"partition":-1,"offset":0}}',
    '{"ack":{"partition":0,"from":3,"to":2}}',
    '{"ack":{"partition":2,"offset":0}}', // the stream has partitions 0 and 1
    '{"ack":[{"partition":0,"offset":0},"x"]}',
    '[{"partition":0,"offset":0}]',
  ];
  for (const [i, text] of bad.entries()) {
    const c = await groupWs('bad', 'g', `b${i}`, 1);
    c.ws.send(text);
    const ci = await withTimeout(c.closed, h.scaled(5000), `close after ${text}`);
    assert.equal(ci.code, 1007, `${text} -> ${h.short(ci)}`);
    assert.ok(ci.reason.length > 0, `${text}: empty close reason`);
  }
  // An empty ack array is an ack of nothing; the group still serves.
  const ok = await groupWs('bad', 'g', 'fine', 100);
  ok.ws.send(JSON.stringify({ ack: [] }));
  const r = await server.publish('bad', { event: 'e', data: 4, partition: 1 });
  await h.waitFor(() => ok.msgs.length >= 1, h.scaled(5000), 'a new event for a later consumer');
  await assertQuiet(ok, 1, 'after an empty ack array');
  assert.deepEqual([ok.msgs[0].partition, ok.msgs[0].offset], [1, r.offset]);
  ok.ws.close();
  await ok.closed;
});

test('an ack naming partition 2^32 is malformed (not partition 0)', { timeout: h.scaled(20000) }, async () => {
  await server.create('bad32');
  await publishMany('bad32', 2, (i) => ({ event: 'e', data: i }), []);
  await createGroup('bad32', 'g', { ack: 'explicit', ack_timeout_ms: 60000 });
  const c = await groupWs('bad32', 'g', 'w', 100);
  await h.waitFor(() => c.msgs.length >= 2, h.scaled(5000), '2 frames');
  c.ws.send('{"ack":{"partition":4294967296,"offset":0}}');
  const ci = await withTimeout(c.closed, h.scaled(3000), 'close after an ack of partition 4294967296').catch(async (e) => {
    const gi = await info('bad32', 'g');
    e.message += `; group info: pending ${gi.pending_messages}, committed_offset ${gi.partitions[0].committed_offset}`;
    throw e;
  });
  assert.equal(ci.code, 1007, h.short(ci));
  const gi = await info('bad32', 'g');
  assert.equal(gi.partitions[0].committed_offset, 0, `partition 0 was acked: ${h.short(gi)}`);
});

test('a binary frame is not an ack: 1007', { timeout: h.scaled(20000) }, async () => {
  await server.create('bin');
  await createGroup('bin', 'g', { ack: 'explicit' });
  const c = await groupWs('bin', 'g', 'w', 10);
  c.ws.send(Buffer.from(JSON.stringify({ ack: { partition: 0, offset: 0 } })), { binary: true });
  const ci = await withTimeout(c.closed, h.scaled(3000), 'close after a binary frame').catch((e) => {
    c.ws.terminate();
    throw e;
  });
  assert.equal(ci.code, 1007, h.short(ci));
});

test('handshake: unknown group 404, prefetch 0 or not a number 400', { timeout: h.scaled(20000) }, async () => {
  await server.create('hs');
  await createGroup('hs', 'g', {});
  for (const [p, status] of [
    ['/stream/hs/group/nope/ws/c', 404],
    ['/stream/nope/group/g/ws/c', 404],
    ['/stream/hs/group/g/ws/c?prefetch=0', 400],
    ['/stream/hs/group/g/ws/c?prefetch=x', 400],
    ['/stream/hs/group/g/ws/c?prefetch=-3', 400],
    ['/stream/hs/group/g/ws/c?prefetch=1', 101],
  ]) {
    const r = await h.rawHandshake(server.port, p);
    r.socket.destroy();
    assert.equal(r.status, status, `${p}: ${r.status} ${h.short(r.body)}`);
  }
});

test('group DELETE closes its consumers with 4404 and a reason; stream DELETE too', { timeout: h.scaled(30000) }, async () => {
  await server.create('del');
  await publishMany('del', 10, (i) => ({ event: 'e', data: i }), []);
  await createGroup('del', 'g', { ack: 'explicit', ack_timeout_ms: 60000 });
  await createGroup('del', 'other', { ack: 'explicit', ack_timeout_ms: 60000 });
  // One with its prefetch used up, one caught up (idle), one of another group.
  const full = await groupWs('del', 'g', 'full', 2);
  await h.waitFor(() => full.msgs.length >= 2, h.scaled(5000), '2 frames');
  const idle = await groupWs('del', 'g', 'idle', 100);
  await h.waitFor(() => idle.msgs.length >= 8, h.scaled(5000), '8 frames');
  const other = await groupWs('del', 'other', 'o', 100);
  await h.waitFor(() => other.msgs.length >= 10, h.scaled(5000), '10 frames of the other group');
  await server.ok('DELETE', groupPath('del', 'g'), null, 200);
  const infos = await withTimeout(Promise.all([full.closed, idle.closed]), h.scaled(5000), 'consumers closed after the group DELETE');
  for (const ci of infos) {
    assert.equal(ci.code, 4404, h.short(ci));
    assert.ok(ci.reason.length > 0, 'empty close reason');
  }
  await h.sleep(h.scaled(200));
  assert.equal(other.closeInfo, null, `the other group's consumer was closed: ${h.short(other.closeInfo)}`);
  await server.publish('del', { event: 'e', data: 10 });
  await h.waitFor(() => other.msgs.length >= 11, h.scaled(5000), 'the other group still live');

  await server.ok('DELETE', '/stream/del', null, 200);
  const oi = await withTimeout(other.closed, h.scaled(5000), 'consumer closed after the stream DELETE');
  assert.equal(oi.code, 4404, h.short(oi));
  assert.ok(oi.reason.length > 0, 'empty close reason');
  // The handshake of a deleted group or stream is 404.
  const r = await h.rawHandshake(server.port, '/stream/del/group/other/ws/o');
  r.socket.destroy();
  assert.equal(r.status, 404);
});

// ---- session: a connected consumer is live -------------------------------------------

test('a connected WebSocket consumer stays live past session_timeout_ms (its events are not released)', { timeout: h.scaled(20000) }, async () => {
  const STO = h.scaled(500);
  await server.create('live', { partitions: 2 });
  await publishMany('live', 20, (i) => ({ event: 'e', data: i, partition: i % 2 }), []);
  await createGroup('live', 'g', { ack: 'explicit', mode: 'partitioned', ack_timeout_ms: 60000, session_timeout_ms: STO });
  const c = await groupWs('live', 'g', 'w', 4);
  await h.waitFor(() => c.msgs.length >= 4, h.scaled(5000), '4 frames');
  await h.sleep(3 * STO + h.scaled(300));
  const gi = await info('live', 'g');
  assert.equal(c.msgs.length, 4, `prefetch 4, no acks, ack timeout 60 s, yet got ${h.short(c.msgs.map((m) => `${pos(m)}#${m.deliveries}`))}; info ${h.short(gi)}`);
  assert.deepEqual(gi.consumers, ['w'], h.short(gi));
  assert.deepEqual(gi.assignments, { w: [0, 1] }, h.short(gi));
  assert.equal(gi.pending_messages, 4, h.short(gi));
  c.ws.close();
  await c.closed;
});

// ---- 5. mixed drain --------------------------------------------------------------------

// 2 WebSocket consumers (prefetch 50, ack per frame) and 2 HTTP consumers
// (limit 100, range acks) drain N events of 4 partitions; one WebSocket
// consumer is killed mid-way with frames unacked.
async function mixedDrain(mode) {
  const N = N_MIXED;
  const KEYS = 64;
  const PREFETCH = 50;
  const ATO = h.scaled(1000);
  const s = `mix-${mode}`;
  await server.create(s, { partitions: 4 });
  await createGroup(s, 'g', { ack: 'explicit', mode, ack_timeout_ms: ATO, session_timeout_ms: Math.round(2.5 * ATO) });
  const ends = [];
  const keyOf = new Map(); // "p:o" -> key
  const make = (i) => ({ event: 'mix', data: { i }, partition_key: `k${i % KEYS}` });
  const record = async (from, n) => {
    for (let i = from; i < from + n; i += 250) {
      const batch = Array.from({ length: Math.min(250, from + n - i) }, (_, j) => make(i + j));
      const r = await server.publish(s, batch);
      for (const [j, x] of r.results.entries()) {
        ends[x.partition] = Math.max(ends[x.partition] || 0, x.offset + 1);
        keyOf.set(`${x.partition}:${x.offset}`, batch[j].partition_key);
      }
    }
  };
  await record(0, N / 2);

  let stop = false;
  const failures = [];
  // Every delivery per consumer: {p, o, d, key}.
  const log = new Map();
  const deliver = (name, m) => log.get(name).push({ p: m.partition, o: m.offset, d: m.deliveries, key: m.key });

  // WebSocket consumers: ack each frame as it comes, unless told to stop.
  const wsNames = ['c1-ws', 'c2-ws'];
  const ws = {};
  for (const name of wsNames) {
    log.set(name, []);
    const c = await groupWs(s, 'g', name, PREFETCH);
    c.acking = true;
    c.acked = new Set();
    c.done = 0;
    const drain = () => {
      for (; c.done < c.msgs.length; c.done++) {
        const m = c.msgs[c.done];
        deliver(name, m);
        if (c.acking) {
          wsAck(c, { partition: m.partition, offset: m.offset });
          c.acked.add(pos(m));
        }
      }
    };
    c.ws.on('message', drain);
    drain();
    ws[name] = c;
  }
  // HTTP consumers: poll, then ack each contiguous run of a partition.
  const httpNames = ['c3-http', 'c4-http'];
  const httpAcked = { 'c3-http': 0, 'c4-http': 0 };
  const httpLoop = async (name) => {
    log.set(name, []);
    while (!stop) {
      const evs = await poll(s, 'g', name, 100, 100);
      if (evs.length === 0) continue;
      for (const m of evs) deliver(name, m);
      const byPart = new Map();
      for (const m of evs) {
        if (!byPart.has(m.partition)) byPart.set(m.partition, []);
        byPart.get(m.partition).push(m.offset);
      }
      const acks = [];
      for (const [p, os] of byPart) {
        os.sort((a, b) => a - b);
        let from = os[0];
        for (let k = 1; k <= os.length; k++) {
          if (k === os.length || os[k] !== os[k - 1] + 1) {
            acks.push(from === os[k - 1] ? { partition: p, offset: from } : { partition: p, from, to: os[k - 1] });
            from = os[k];
          }
        }
      }
      const r = await httpAck(s, 'g', name, acks);
      httpAcked[name] += r.acked;
      if (r.acked !== evs.length) failures.push(`${name}: acked ${r.acked} of the ${evs.length} events just polled`);
    }
  };
  const loops = httpNames.map((n) => httpLoop(n).catch((e) => {
    failures.push(`${n}: ${e.message}`);
  }));

  // The rest is published while they drain; c2-ws dies after its first quarter.
  const killAt = Math.max(1, Math.floor(N / 16));
  const victim = ws['c2-ws'];
  const killing = (async () => {
    await h.waitFor(() => victim.msgs.length >= killAt || stop, h.scaled(30000), `c2-ws to get ${killAt} frames (has ${victim.msgs.length})`);
    victim.acking = false; // from here its frames stay unacked
    await h.sleep(h.scaled(300)); // the acks already sent reach the server
    victim.ws.terminate(); // socket.destroy(): no close frame
    victim.killedAt = victim.msgs.length;
  })();
  await record(N / 2, N / 2);
  await killing;

  const total = ends.reduce((a, b) => a + b, 0);
  assert.equal(total, N);
  let gi;
  try {
    gi = await h.waitFor(async () => {
      if (failures.length) return true;
      const x = await info(s, 'g');
      return x.pending_messages === 0 && x.partitions.every((p) => p.committed_offset === ends[p.partition]) ? x : null;
    }, h.scaled(30000), `every partition committed to its end ${h.short(ends)} and pending 0`);
  } catch (e) {
    const x = await info(s, 'g');
    e.message += `; info ${h.short(x, 1500)}; delivered per consumer ${h.short([...log].map(([k, v]) => `${k}:${v.length}`))}`;
    throw e;
  } finally {
    stop = true;
    await Promise.all(loops);
  }
  assert.deepEqual(failures, []);
  await h.sleep(QUIET); // a stray redelivery would show up now
  assert.deepEqual(ws['c1-ws'].errors, []);
  assert.equal(ws['c1-ws'].closeInfo, null, `c1-ws was closed: ${h.short(ws['c1-ws'].closeInfo)}`);
  ws['c1-ws'].ws.close();
  await ws['c1-ws'].closed;

  gi = await info(s, 'g');
  assert.equal(gi.pending_messages, 0, h.short(gi));
  assert.equal(gi.dead_messages, 0, h.short(gi));
  assert.deepEqual(gi.partitions.map((p) => p.committed_offset), ends, h.short(gi));
  assert.deepEqual(gi.partitions.map((p) => p.lag), [0, 0, 0, 0], h.short(gi));

  // Settlements: WebSocket acks (counted by the client; the server does not
  // answer them) + HTTP "acked" answers = N, each event settled once.
  const survivors = ['c1-ws', 'c3-http', 'c4-http'];
  const wsSettled = ws['c1-ws'].acked.size + victim.acked.size;
  const httpSettled = httpAcked['c3-http'] + httpAcked['c4-http'];
  assert.equal(wsSettled + httpSettled, N,
    `settled: WebSocket ${wsSettled} (c1 ${ws['c1-ws'].acked.size}, c2 ${victim.acked.size}) + HTTP ${httpSettled} (${h.short(httpAcked)})`);
  const httpGot = new Set([...log.get('c3-http'), ...log.get('c4-http')].map((x) => `${x.p}:${x.o}`));
  assert.equal(httpSettled, httpGot.size, 'HTTP acked answers vs distinct events the HTTP consumers got');

  // Coverage: the union of deliveries is every (partition, offset).
  const seen = new Map(); // pos -> [{name, d}]
  for (const [name, evs] of log) {
    for (const x of evs) {
      const k = `${x.p}:${x.o}`;
      if (!seen.has(k)) seen.set(k, []);
      seen.get(k).push({ name, d: x.d });
      const want = keyOf.get(k);
      if (want === undefined) assert.fail(`${name} got ${k}, which was never published`);
      if (x.key !== want) assert.fail(`${name} got ${k} with key ${x.key}, published with ${want}`);
    }
  }
  const missing = [];
  for (let p = 0; p < 4; p++) for (let o = 0; o < ends[p]; o++) if (!seen.has(`${p}:${o}`)) missing.push(`${p}:${o}`);
  assert.deepEqual(missing, [], `${missing.length} events never delivered`);
  assert.equal(seen.size, N);

  // Redeliveries: only of what the killed consumer held (got and did not
  // ack, or had on the wire), each once, to a survivor, with deliveries 2.
  const held = new Set(log.get('c2-ws').filter((x) => !victim.acked.has(`${x.p}:${x.o}`)).map((x) => `${x.p}:${x.o}`));
  const redelivered = [];
  for (const [k, ds] of seen) {
    const bySurvivors = ds.filter((x) => survivors.includes(x.name));
    const byVictim = ds.filter((x) => x.name === 'c2-ws');
    if (byVictim.length > 1) assert.fail(`${k} delivered to c2-ws twice: ${h.short(ds)}`);
    if (victim.acked.has(k)) {
      assert.deepEqual(bySurvivors, [], `${k} was acked by c2-ws before it died, yet delivered again`);
      continue;
    }
    assert.equal(bySurvivors.length, 1, `${k}: deliveries to the survivors ${h.short(ds)}`);
    const d = bySurvivors[0].d;
    if (held.has(k)) {
      assert.equal(d, 2, `${k} held by c2-ws, redelivered with ${h.short(ds)}`);
      redelivered.push(k);
    } else if (d !== 1) {
      // Only the frames in flight to c2-ws when it died may come with 2.
      assert.equal(d, 2, `${k}: ${h.short(ds)}`);
      redelivered.push(k);
    }
  }
  for (const k of held) assert.ok(redelivered.includes(k), `${k} held by c2-ws was not redelivered`);
  assert.ok(held.size > 0, `c2-ws held no unacked frame when it died (got ${victim.killedAt}, acked ${victim.acked.size})`);
  assert.ok(redelivered.length <= PREFETCH,
    `${redelivered.length} redeliveries, but c2-ws (prefetch ${PREFETCH}) could hold at most ${PREFETCH}: ${h.short(redelivered)}`);

  // Partitioned: every key lives in one partition, and each consumer sees
  // each key's offsets in increasing order.
  if (mode === 'partitioned') {
    for (const [name, evs] of log) {
      const last = new Map();
      for (const x of evs) {
        const prev = last.get(x.key);
        if (prev !== undefined && !(x.o > prev.o && x.p === prev.p)) {
          assert.fail(`${name}: key ${x.key} went from ${prev.p}:${prev.o} to ${x.p}:${x.o}`);
        }
        last.set(x.key, x);
      }
    }
  }
  return { redelivered: redelivered.length, held: held.size, httpSettled, wsSettled };
}

test('shared mode: 2 WebSocket + 2 HTTP consumers drain 4 partitions exactly, one killed', { timeout: h.scaled(60000) }, async (t) => {
  t.diagnostic(JSON.stringify(await mixedDrain('shared')));
});

test('partitioned mode: 2 WebSocket + 2 HTTP consumers drain 4 partitions exactly, one killed, keys in order', { timeout: h.scaled(60000) }, async (t) => {
  t.diagnostic(JSON.stringify(await mixedDrain('partitioned')));
});

test('server exits 0 on SIGTERM with no sanitizer report', { timeout: h.scaled(30000) }, async () => {
  await server.stop();
});
