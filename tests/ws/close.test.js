'use strict';
// 5. Close codes: deleting the stream closes its subscribers with 4404 and
// a reason; SIGTERM closes them with 1001 and a reason, and the server
// exits 0.
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

function withTimeout(p, ms, what) {
  let t;
  return Promise.race([p, new Promise((_, rej) => {
    t = setTimeout(() => rej(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  })]).finally(() => clearTimeout(t));
}

test('DELETE /stream/s closes its subscribers with 4404 and a reason', { timeout: h.scaled(20000) }, async () => {
  await server.create('doomed');
  await server.create('kept');
  await server.publish('doomed', { event: 'e', data: 1 });
  await server.publish('kept', { event: 'e', data: 1 });
  // Idle (caught up), default-start, and single-partition subscribers.
  const cs = await Promise.all([
    h.openClient(`${server.wsBase}/stream/doomed/ws/d1?from_offset=0`),
    h.openClient(`${server.wsBase}/stream/doomed/ws/d2`),
    h.openClient(`${server.wsBase}/stream/doomed/ws/d3?partition=0&from_offset=0`),
  ]);
  const other = await h.openClient(`${server.wsBase}/stream/kept/ws/k1?from_offset=0`);
  await h.waitFor(() => cs[0].msgs.length === 1 && other.msgs.length === 1, h.scaled(5000), 'replays');
  await h.waitFor(async () => (await server.stats('doomed')).subscriber_count === 3, h.scaled(5000), '3 subscribers');
  await server.ok('DELETE', '/stream/doomed', null, 200);
  const infos = await withTimeout(Promise.all(cs.map((c) => c.closed)), h.scaled(5000), 'subscribers closed after DELETE');
  for (const [i, info] of infos.entries()) {
    assert.equal(info.code, 4404, `subscriber ${i}: ${h.short(info)}`);
    assert.ok(info.reason.length > 0, `subscriber ${i}: empty close reason`);
  }
  // The other stream's subscriber is untouched.
  await h.sleep(h.scaled(100));
  assert.equal(other.closeInfo, null, 'a subscriber of another stream was closed');
  await server.publish('kept', { event: 'e', data: 2 });
  await h.waitFor(() => other.msgs.length === 2, h.scaled(5000), 'the other stream still live');
  // A new stream of the same name is a new stream; the old subscribers are gone.
  await server.create('doomed');
  const r = await h.rawHandshake(server.port, '/stream/doomed/ws/d4?from_offset=0');
  r.socket.destroy();
  assert.equal(r.status, 101);
  other.ws.close();
  await other.closed;
});

test('SIGTERM closes subscribers with 1001 and a reason; the server exits 0', { timeout: h.scaled(30000) }, async () => {
  await server.create('t');
  for (let i = 0; i < 5; i++) await server.publish('t', { event: 'e', data: i });
  const cs = await Promise.all([
    h.openClient(`${server.wsBase}/stream/t/ws/t1?from_offset=0`),
    h.openClient(`${server.wsBase}/stream/t/ws/t2`),
    h.openClient(`${server.wsBase}/stream/t/ws/t3?from_offset=-1`),
  ]);
  await h.waitFor(() => cs[0].msgs.length === 5 && cs[2].msgs.length === 1, h.scaled(5000), 'replays');
  const stopping = server.stop(); // SIGTERM, asserts exit 0 and no sanitizer report
  const infos = await withTimeout(Promise.all(cs.map((c) => c.closed)), h.scaled(10000), 'subscribers closed on SIGTERM');
  for (const [i, info] of infos.entries()) {
    assert.equal(info.code, 1001, `subscriber ${i}: ${h.short(info)}`);
    assert.ok(info.reason.length > 0, `subscriber ${i}: empty close reason`);
  }
  await stopping;
});
