'use strict';
// 3. Live push after the replay, and the seam between the two: clients that
// join at random moments of a continuous publish each see every offset once.
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const h = require('./harness');

let server;
before(async () => {
  server = await new h.Server().start();
});
after(async () => {
  if (server) await server.cleanup();
});

test('live events are pushed after the replay', { timeout: h.scaled(20000) }, async () => {
  await server.create('live');
  for (let i = 0; i < 10; i++) await server.publish('live', { event: 'old', data: i });
  const c = await h.openClient(`${server.wsBase}/stream/live/ws/l1?from_offset=0`);
  await h.waitFor(() => c.msgs.length >= 10, h.scaled(5000), 'the replay');
  for (let i = 10; i < 20; i++) {
    await server.publish('live', { event: 'new', data: i });
    // Pushed promptly, one by one.
    await h.waitFor(() => c.msgs.length >= i + 1, h.scaled(3000), `live event ${i}`);
  }
  h.assertDense(c.msgs.map((m) => m.offset), 0, 20, 'live client');
  assert.deepEqual(c.msgs.map((m) => m.data), Array.from({ length: 20 }, (_, i) => i));
  c.ws.close();
  await c.closed;
});

test('the seam: 20 clients joining during a continuous publish see 0..N-1 once each', { timeout: h.scaled(90000) }, async () => {
  const N = 2000;
  const CLIENTS = 20;
  await server.create('seam');
  // Each client joins when the publisher has reached a random point.
  const joinAt = Array.from({ length: CLIENTS }, () => Math.floor(Math.random() * N)).sort((a, b) => a - b);
  const clients = [];
  const opening = [];
  let next = 0;
  for (let i = 0; i < N; i++) {
    while (next < CLIENTS && joinAt[next] <= i) {
      const k = next++;
      // Open without waiting: the handshake races the publishes.
      opening.push(h.openClient(`${server.wsBase}/stream/seam/ws/seam-${k}?from_offset=0`).then((c) => {
        c.joinedAt = joinAt[k];
        clients.push(c);
      }));
    }
    // Keep-alive publisher; a few events are published in a small batch.
    if (i % 97 === 0 && i + 3 <= N && !(next < CLIENTS && joinAt[next] <= i + 2)) {
      const r = await server.publish('seam', [0, 1, 2].map((j) => ({ event: 'seam', data: i + j })));
      assert.deepEqual(r.results.map((x) => x.offset), [i, i + 1, i + 2]);
      i += 2;
    } else {
      const r = await server.publish('seam', { event: 'seam', data: i });
      assert.equal(r.offset, i);
    }
  }
  await Promise.all(opening);
  assert.equal(clients.length, CLIENTS);
  await h.waitFor(() => clients.every((c) => c.msgs.length >= N), h.scaled(30000),
    `every client to get ${N} events (counts: ${clients.map((c) => c.msgs.length).join(',')})`).catch((e) => {
    e.message += ` counts: ${clients.map((c) => c.msgs.length).join(',')}`;
    throw e;
  });
  await h.sleep(h.scaled(300)); // a duplicate would arrive now
  for (const c of clients) {
    const who = `client joined at ${c.joinedAt}`;
    assert.deepEqual(c.errors, [], who);
    h.assertDense(c.msgs.map((m) => m.offset), 0, N, who);
    for (let i = 0; i < N; i++) if (c.msgs[i].data !== i) assert.fail(`${who}: offset ${i} holds data ${h.short(c.msgs[i].data)}`);
    assert.equal(c.closeInfo, null, `${who} was closed: ${h.short(c.closeInfo)}`);
  }
  for (const c of clients) c.ws.close();
  await Promise.all(clients.map((c) => c.closed));
});

test('server exits 0 on SIGTERM with no sanitizer report', { timeout: h.scaled(30000) }, async () => {
  await server.stop();
});
