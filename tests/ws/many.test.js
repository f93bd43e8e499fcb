'use strict';
// 10. 1000 concurrent subscribers of one stream each receive all 50 events
// published after they joined, in order.
//
// File descriptors: the server raises its own limit.  This test process
// holds one descriptor per client, so it needs a soft RLIMIT_NOFILE above
// ~1100; it checks /proc/self/limits and fails with a clear message when
// the limit is lower (raise it with `ulimit -n 4096` before running).
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const h = require('./harness');

const CLIENTS = 1000;
const EVENTS = 50;
let server;
let clients = [];
before(async () => {
  server = await new h.Server().start();
  await server.create('crowd');
});
after(async () => {
  for (const c of clients) c.ws.terminate();
  if (server) await server.cleanup();
});

function softNofile() {
  const m = fs.readFileSync('/proc/self/limits', 'utf8').match(/^Max open files\s+(\S+)/m);
  return m && m[1] !== 'unlimited' ? Number(m[1]) : Infinity;
}

test(`${CLIENTS} concurrent subscribers each get all ${EVENTS} events in order`, { timeout: h.scaled(60000) }, async (t) => {
  const limit = softNofile();
  assert.ok(limit >= CLIENTS + 100, `this process may open only ${limit} files; run \`ulimit -n 4096\` first`);
  const t0 = Date.now();
  for (let i = 0; i < CLIENTS; i += 100) {
    const batch = [];
    for (let j = i; j < Math.min(CLIENTS, i + 100); j++) {
      batch.push(h.openClient(`${server.wsBase}/stream/crowd/ws/c${j}`, { perMessageDeflate: false }));
    }
    clients.push(...(await Promise.all(batch)));
  }
  const opened = Date.now() - t0;
  await h.waitFor(async () => (await server.stats('crowd')).subscriber_count === CLIENTS, h.scaled(10000),
    `subscriber_count ${CLIENTS}`);
  const t1 = Date.now();
  for (let i = 0; i < EVENTS; i++) {
    const r = await server.publish('crowd', { event: 'crowd', data: { i } });
    assert.equal(r.offset, i);
  }
  await h.waitFor(() => clients.every((c) => c.msgs.length >= EVENTS), h.scaled(20000), `all clients to get ${EVENTS} events`)
    .catch((e) => {
      const short = clients.filter((c) => c.msgs.length < EVENTS);
      e.message += ` (${short.length} clients short; e.g. ${short.slice(0, 5).map((c) => c.msgs.length).join(',')})`;
      throw e;
    });
  const delivered = Date.now() - t1;
  await h.sleep(h.scaled(200));
  t.diagnostic(`${CLIENTS} clients opened in ${opened} ms; ${EVENTS} events delivered to all in ${delivered} ms`);
  for (const [k, c] of clients.entries()) {
    if (c.errors.length) assert.fail(`client ${k}: ${h.short(c.errors)}`);
    if (c.closeInfo) assert.fail(`client ${k} was closed: ${h.short(c.closeInfo)}`);
    h.assertDense(c.msgs.map((m) => m.offset), 0, EVENTS, `client ${k}`);
    for (let i = 0; i < EVENTS; i++) if (c.msgs[i].data.i !== i) assert.fail(`client ${k}: offset ${i} holds ${h.short(c.msgs[i])}`);
  }
  const health = await server.request('GET', '/health');
  assert.equal(health.status, 200);
  // Leave all at once; the count returns to 0.
  for (const c of clients) c.ws.close();
  await Promise.all(clients.map((c) => c.closed));
  clients = [];
  await h.waitFor(async () => (await server.stats('crowd')).subscriber_count === 0, h.scaled(10000), 'subscriber_count 0');
});

test('server exits 0 on SIGTERM with no sanitizer report', { timeout: h.scaled(30000) }, async () => {
  await server.stop();
});
