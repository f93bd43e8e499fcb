'use strict';
// 4. A two-partition stream: without `partition` both partitions arrive,
// each in dense order; with partition=1 only partition 1.
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const h = require('./harness');

let server;
const PER = 30; // events per partition published before the clients join
before(async () => {
  server = await new h.Server().start();
  const r = await server.create('p2', { partitions: 2 });
  assert.equal(r.partitions, 2);
  for (let i = 0; i < PER; i++) {
    await server.publish('p2', { event: 'e', data: `p0-${i}`, partition: 0 });
    await server.publish('p2', { event: 'e', data: `p1-${i}`, partition: 1 });
  }
});
after(async () => {
  if (server) await server.cleanup();
});

function byPartition(msgs) {
  const out = { 0: [], 1: [] };
  for (const m of msgs) {
    assert.ok(m.partition === 0 || m.partition === 1, `bad partition in ${h.short(m)}`);
    out[m.partition].push(m);
  }
  return out;
}

async function publishLive(n) {
  const res = [];
  for (let i = 0; i < n; i++) {
    res.push(await server.publish('p2', { event: 'live', data: `live-${i}` })); // round-robin
  }
  const counts = [0, 0];
  for (const r of res) counts[r.partition]++;
  assert.ok(counts[0] > 0 && counts[1] > 0, `round-robin publish used one partition only: ${h.short(res)}`);
  return counts;
}

test('without partition: every partition is sent, each dense and in order', { timeout: h.scaled(20000) }, async () => {
  const c = await h.openClient(`${server.wsBase}/stream/p2/ws/all?from_offset=0`);
  await h.waitFor(() => c.msgs.length >= 2 * PER, h.scaled(5000), 'both partitions replayed');
  await h.sleep(h.scaled(150));
  let parts = byPartition(c.msgs);
  h.assertDense(parts[0].map((m) => m.offset), 0, PER, 'partition 0 (replay)');
  h.assertDense(parts[1].map((m) => m.offset), 0, PER, 'partition 1 (replay)');
  assert.deepEqual(parts[0].map((m) => m.data), Array.from({ length: PER }, (_, i) => `p0-${i}`));
  assert.deepEqual(parts[1].map((m) => m.data), Array.from({ length: PER }, (_, i) => `p1-${i}`));
  // Each frame equals the consume route's event of its partition and offset.
  const ref0 = await server.consumeAll('p2', { partition: 0 });
  const ref1 = await server.consumeAll('p2', { partition: 1 });
  assert.deepEqual(parts[0], ref0.slice(0, PER));
  assert.deepEqual(parts[1], ref1.slice(0, PER));
  // Live: both partitions keep arriving.
  const counts = await publishLive(20);
  await h.waitFor(() => c.msgs.length >= 2 * PER + 20, h.scaled(5000), 'live events of both partitions');
  await h.sleep(h.scaled(150));
  parts = byPartition(c.msgs);
  h.assertDense(parts[0].map((m) => m.offset), 0, PER + counts[0], 'partition 0 (live)');
  h.assertDense(parts[1].map((m) => m.offset), 0, PER + counts[1], 'partition 1 (live)');
  c.ws.close();
  await c.closed;
});

test('partition=1: only partition 1', { timeout: h.scaled(20000) }, async () => {
  const st = await server.stats('p2');
  const n1 = st.partitions.find((p) => p.partition === 1).message_count;
  const c = await h.openClient(`${server.wsBase}/stream/p2/ws/one?from_offset=0&partition=1`);
  await h.waitFor(() => c.msgs.length >= n1, h.scaled(5000), `${n1} events of partition 1`);
  const counts = await publishLive(10);
  await h.waitFor(() => c.msgs.length >= n1 + counts[1], h.scaled(5000), 'live events of partition 1');
  await h.sleep(h.scaled(200));
  const wrong = c.msgs.filter((m) => m.partition !== 1);
  assert.deepEqual(wrong, [], 'events of another partition were sent');
  h.assertDense(c.msgs.map((m) => m.offset), 0, n1 + counts[1], 'partition 1 only');
  assert.deepEqual(c.msgs, await server.consumeAll('p2', { partition: 1 }));
  // partition=0 with from_offset=-3: the last 3 of partition 0.
  const c0 = await h.openClient(`${server.wsBase}/stream/p2/ws/zero?from_offset=-3&partition=0`);
  const n0 = (await server.stats('p2')).partitions.find((p) => p.partition === 0).message_count;
  await h.waitFor(() => c0.msgs.length >= 3, h.scaled(5000), 'last 3 of partition 0');
  await h.sleep(h.scaled(150));
  h.assertDense(c0.msgs.map((m) => m.offset), n0 - 3, 3, 'partition 0, -3');
  assert.ok(c0.msgs.every((m) => m.partition === 0));
  c.ws.close();
  c0.ws.close();
  await Promise.all([c.closed, c0.closed]);
});

test('server exits 0 on SIGTERM with no sanitizer report', { timeout: h.scaled(30000) }, async () => {
  await server.stop();
});
