'use strict';
// 1. The upgrade: a correct 101, and requests refused before the upgrade
// with the right status and JSON error.
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const WebSocket = require('ws');
const h = require('./harness');

let server;
before(async () => {
  server = await new h.Server({ args: ['--segment-bytes', '4096', '--retention-check-ms', '50'] }).start();
  await server.create('s');
  await server.publish('s', { event: 'e', data: 'first' });
});
after(async () => {
  if (server) await server.cleanup();
});

function assertRefused(r, status, code, what) {
  assert.equal(r.status, status, `${what}: expected ${status} ${code} before any upgrade, got ${r.status} ${h.short(r.body)}`);
  assert.ok(r.json && typeof r.json === 'object', `${what}: error body is not a JSON object: ${h.short(r.body)}`);
  assert.equal(r.json.error, code, `${what}: ${h.short(r.body)}`);
  assert.equal(typeof r.json.message, 'string', `${what}: ${h.short(r.body)}`);
  assert.ok(r.json.message.length > 0, `${what}: empty message`);
  assert.ok(!('sec-websocket-accept' in r.headers), `${what}: refused response carries Sec-WebSocket-Accept`);
  assert.match(r.headers['content-type'] || '', /application\/json/, `${what}: content-type`);
}

test('101 with the RFC 6455 Sec-WebSocket-Accept', { timeout: h.scaled(20000) }, async () => {
  // The RFC's own example key, checked by hand.
  const key = 'dGhlIHNhbXBsZSBub25jZQ==';
  const r = await h.rawHandshake(server.port, '/stream/s/ws/hs?from_offset=0', { 'Sec-WebSocket-Key': key });
  try {
    assert.equal(r.status, 101, `status ${r.status} ${h.short(r.body)}`);
    assert.equal(r.headers['sec-websocket-accept'], 's3pPLMBiTxaQ9kYGzzhZRbK+xOo=');
    assert.equal((r.headers.upgrade || '').toLowerCase(), 'websocket');
    assert.match(r.headers.connection || '', /upgrade/i);
    // And the first frame is the replayed event.
    const p = new h.FrameParser();
    let msgs = p.push(r.rest);
    if (msgs.length === 0) {
      msgs = await new Promise((resolve, reject) => {
        const t = setTimeout(() => reject(new Error('no frame after the 101')), h.scaled(5000));
        r.socket.on('data', (d) => {
          const m = p.push(d);
          if (m.length) {
            clearTimeout(t);
            resolve(m);
          }
        });
        r.socket.resume();
      });
    }
    assert.equal(msgs[0].opcode, 1, 'text frame');
    assert.equal(JSON.parse(msgs[0].payload.toString()).data, 'first');
  } finally {
    r.socket.destroy();
  }
  // A random key through the ws client, which checks the accept value itself.
  const c = await h.openClient(`${server.wsBase}/stream/s/ws/hs2?from_offset=0`);
  await h.waitFor(() => c.msgs.length === 1, h.scaled(5000), 'the replayed event');
  c.ws.close();
  await c.closed;
});

test('missing or invalid Sec-WebSocket-Key: 400 before the upgrade', { timeout: h.scaled(20000) }, async () => {
  const p = '/stream/s/ws/hs?from_offset=0';
  assertRefused(await h.rawHandshake(server.port, p, { 'Sec-WebSocket-Key': null }), 400, 'invalid_handshake', 'no key');
  for (const bad of ['', 'abc', 'not base64 at all!!!!!!!', 'dGhlIHNhbXBsZSBub25jZQ', 'dGhlIHNhbXBsZSBub25jZQ==AA', 'AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA']) {
    assertRefused(await h.rawHandshake(server.port, p, { 'Sec-WebSocket-Key': bad }), 400, 'invalid_handshake', `key ${JSON.stringify(bad)}`);
  }
  assertRefused(await h.rawHandshake(server.port, p, { 'Sec-WebSocket-Version': '8' }), 400, 'invalid_handshake', 'version 8');
  assertRefused(await h.rawHandshake(server.port, p, { Upgrade: null, Connection: null }), 400, 'invalid_handshake', 'plain GET');
});

test('unknown stream: 404 stream_not_found before the upgrade', { timeout: h.scaled(20000) }, async () => {
  assertRefused(await h.rawHandshake(server.port, '/stream/no-such-stream/ws/hs?from_offset=0'), 404, 'stream_not_found', 'unknown stream');
  assertRefused(await h.rawHandshake(server.port, '/stream/no-such-stream/ws/hs'), 404, 'stream_not_found', 'unknown stream, no offset');
  // The ws client sees the refusal as an unexpected response, not an open.
  const ws = new WebSocket(`${server.wsBase}/stream/no-such-stream/ws/hs`);
  const status = await new Promise((resolve) => {
    ws.on('unexpected-response', (req, res) => {
      resolve(res.statusCode);
      req.destroy();
    });
    ws.on('open', () => resolve('open'));
    ws.on('error', () => {});
  });
  assert.equal(status, 404);
});

test('from_offset removed by retention: 416 offset_out_of_range', { timeout: h.scaled(30000) }, async () => {
  await server.create('ret', { max_events: 10 });
  const data = 'x'.repeat(200);
  for (let i = 0; i < 10; i++) {
    await server.publish('ret', Array.from({ length: 20 }, (_, j) => ({ event: 'e', data: `${i}-${j}-${data}` })));
  }
  const st = await h.waitFor(async () => {
    const s = await server.stats('ret');
    return s.min_offset > 0 ? s : null;
  }, h.scaled(10000), 'retention to remove old segments (stats min_offset > 0)');
  // Retention removes a segment per pass, each once synced: wait until it
  // has stopped (min_offset unchanged for 20 passes), so that min_offset
  // read below still holds when the last client connects.
  let last = -1;
  let since = Date.now();
  await h.waitFor(async () => {
    const s = await server.stats('ret');
    if (s.min_offset !== last) {
      last = s.min_offset;
      since = Date.now();
    }
    return Date.now() - since >= h.scaled(1000);
  }, h.scaled(15000), 'retention to settle');
  const r = await h.rawHandshake(server.port, '/stream/ret/ws/hs?from_offset=0');
  assertRefused(r, 416, 'offset_out_of_range', 'from_offset=0 after retention');
  assert.equal(typeof r.json.min_offset, 'number', h.short(r.body));
  assert.ok(r.json.min_offset >= st.min_offset, h.short(r.body));
  assert.equal(r.json.max_offset, 199, h.short(r.body));
  // One below min_offset is refused too; min_offset itself is accepted.
  const s2 = await server.stats('ret');
  assertRefused(await h.rawHandshake(server.port, `/stream/ret/ws/hs?from_offset=${s2.min_offset - 1}`), 416, 'offset_out_of_range', 'min_offset - 1');
  const c = await h.openClient(`${server.wsBase}/stream/ret/ws/hs?from_offset=${s2.min_offset}`);
  await h.waitFor(() => c.msgs.length > 0, h.scaled(5000), 'replay from min_offset');
  assert.equal(c.msgs[0].offset, s2.min_offset);
  c.ws.close();
  await c.closed;
});

test('Origin: foreign refused with 403, same host / none / configured allowed', { timeout: h.scaled(30000) }, async () => {
  const p = '/stream/s/ws/hs?from_offset=0';
  const evil = await h.rawHandshake(server.port, p, { Origin: 'http://evil.example' });
  assertRefused(evil, 403, 'forbidden_origin', 'Origin http://evil.example');
  // A look-alike host is not the same host.
  assertRefused(await h.rawHandshake(server.port, p, { Origin: 'http://127.0.0.1.evil.example' }), 403, 'forbidden_origin', 'look-alike origin');
  for (const [what, hdrs] of [
    ['no Origin', {}],
    ['same host, other port', { Origin: 'http://127.0.0.1:1' }],
    ['same host, no port', { Origin: 'http://127.0.0.1' }],
  ]) {
    const r = await h.rawHandshake(server.port, p, hdrs);
    r.socket.destroy();
    assert.equal(r.status, 101, `${what}: ${r.status} ${h.short(r.body)}`);
  }
  // With allowed_origins the foreign origin is accepted.
  const other = new h.Server({ args: ['--allowed-origins', 'http://evil.example'] });
  try {
    await other.start();
    await other.create('s');
    const r = await h.rawHandshake(other.port, p, { Origin: 'http://evil.example' });
    r.socket.destroy();
    assert.equal(r.status, 101, `allowed origin: ${r.status} ${h.short(r.body)}`);
    assertRefused(await h.rawHandshake(other.port, p, { Origin: 'http://evil2.example' }), 403, 'forbidden_origin', 'unlisted origin');
    await other.stop();
  } finally {
    await other.cleanup();
  }
});

test('bad partition or from_offset: 400 invalid_parameter', { timeout: h.scaled(20000) }, async () => {
  for (const q of ['partition=1', 'partition=5', 'partition=-1', 'partition=abc', 'partition=', 'partition=0x1']) {
    const r = await h.rawHandshake(server.port, `/stream/s/ws/hs?${q}`);
    assertRefused(r, 400, 'invalid_parameter', q);
    assert.equal(r.json.parameter, 'partition', `${q}: ${h.short(r.body)}`);
  }
  for (const q of ['from_offset=abc', 'from_offset=1.5', 'from_offset=']) {
    const r = await h.rawHandshake(server.port, `/stream/s/ws/hs?${q}`);
    assertRefused(r, 400, 'invalid_parameter', q);
    assert.equal(r.json.parameter, 'from_offset', `${q}: ${h.short(r.body)}`);
  }
  // partition=0 of a one-partition stream is fine.
  const ok = await h.rawHandshake(server.port, '/stream/s/ws/hs?partition=0&from_offset=0');
  ok.socket.destroy();
  assert.equal(ok.status, 101);
});

test('server exits 0 on SIGTERM with no sanitizer report', { timeout: h.scaled(30000) }, async () => {
  await server.stop();
});
