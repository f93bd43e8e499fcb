'use strict';
// Shared helpers of the WebSocket tests: start/stop the real streamd binary,
// plain HTTP (keep-alive), raw WebSocket handshakes on net.Socket, a tiny
// parser of server frames, and ws-client helpers.
//
// Environment:
//   STREAMD_BIN         server binary (default ../../build/streamd)
//   STREAMD_TEST_SCALE  multiply every timeout (default 3 when the binary's
//                       path contains "asan", else 1)
//   STREAMD_KEEP_LOGS   print the server's output when it stops

const assert = require('node:assert/strict');
const { spawn } = require('node:child_process');
const crypto = require('node:crypto');
const fs = require('node:fs');
const http = require('node:http');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');
const WebSocket = require('ws');

const BIN = process.env.STREAMD_BIN || path.resolve(__dirname, '../../build/streamd');
const SCALE = Number(process.env.STREAMD_TEST_SCALE || (BIN.includes('asan') ? 3 : 1));
const SANITIZER_MARKERS = ['AddressSanitizer', 'LeakSanitizer', 'runtime error'];

const scaled = (ms) => Math.round(ms * SCALE);
const servers = new Set(); // started in this process, for error messages

// Appends to an error what explains it when a server died under the test
// (e.g. a sanitizer abort shows up as ECONNRESET in the client).
function annotate(err) {
  const notes = [...servers].map((s) => s.deathNote()).filter(Boolean);
  if (notes.length && err && typeof err.message === 'string' && !err.message.includes('exited unexpectedly')) {
    err.message += notes.join('');
  }
  return err;
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function waitFor(fn, timeoutMs, what) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      last = await fn();
    } catch (e) {
      throw annotate(e);
    }
    if (last) return last;
    if (Date.now() > deadline) {
      throw annotate(new assert.AssertionError({
        message: `timed out after ${timeoutMs} ms waiting for ${what} (last value: ${short(last)})`,
      }));
    }
    await sleep(20);
  }
}

function short(x, n = 300) {
  let s;
  try {
    s = typeof x === 'string' ? x : JSON.stringify(x);
  } catch {
    s = String(x);
  }
  if (s === undefined) s = String(x);
  return s.length <= n ? s : `${s.slice(0, n)}...(${s.length} chars)`;
}

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

// ---- the server ---------------------------------------------------------------

class Server {
  // args: extra flags (--KEY VALUE); port: fixed port (default: a free one);
  // dataDir: reuse a data directory (default: a fresh temp dir).
  // env: extra environment variables of the server process.
  constructor({ args = [], port = null, dataDir = null, env = {} } = {}) {
    this.args = args;
    this.env = env;
    this.fixedPort = port;
    this.tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'streamd-ws-'));
    this.dataDir = dataDir || path.join(this.tmp, 'data');
    this.proc = null;
    this.port = null;
    this.output = ''; // stdout + stderr of every run
    this.stderr = ''; // stderr of every run
    this.agent = new http.Agent({ keepAlive: true, maxSockets: 64 });
  }

  get base() {
    return `http://127.0.0.1:${this.port}`;
  }

  get wsBase() {
    return `ws://127.0.0.1:${this.port}`;
  }

  get pid() {
    return this.proc && this.proc.pid;
  }

  async start({ timeoutMs = scaled(20000) } = {}) {
    assert.ok(fs.existsSync(BIN), `server binary ${BIN} does not exist (set STREAMD_BIN)`);
    for (let attempt = 0; ; attempt++) {
      this.port = this.fixedPort || this.port || (await freePort());
      try {
        await this._spawn(timeoutMs);
        return this;
      } catch (e) {
        const inUse = /in use|EADDRINUSE/i.test(this.runOutput);
        if (inUse && attempt < 20) {
          // A fixed port may still be held for a moment; a free one may have been taken.
          if (!this.fixedPort) this.port = null;
          await sleep(100);
          continue;
        }
        throw e;
      }
    }
  }

  _spawn(timeoutMs) {
    const argv = ['--host', '127.0.0.1', '--port', String(this.port), '--data-dir', this.dataDir, ...this.args];
    const proc = spawn(BIN, argv, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...this.env } });
    this.proc = proc;
    this.runOutput = '';
    this.stopping = false;
    this.crashed = null;
    servers.add(this);
    this.exit = new Promise((resolve) => proc.on('exit', (code, signal) => {
      if (!this.stopping && this.proc === proc) this.crashed = { code, signal };
      resolve({ code, signal });
    }));
    proc.stdout.setEncoding('utf8');
    proc.stderr.setEncoding('utf8');
    proc.stdout.on('data', (d) => {
      this.output += d;
      this.runOutput += d;
    });
    return new Promise((resolve, reject) => {
      let done = false;
      const finish = (err) => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        if (err) reject(err);
        else resolve();
      };
      const timer = setTimeout(() => {
        proc.kill('SIGKILL');
        finish(new Error(`server not ready after ${timeoutMs} ms:\n${this.tail()}`));
      }, timeoutMs);
      proc.stderr.on('data', (d) => {
        this.output += d;
        this.stderr += d;
        this.runOutput += d;
        if (this.runOutput.includes('listening on')) finish();
      });
      this.exit.then(({ code, signal }) => {
        if (!done && this.proc === proc) this.proc = null;
        finish(new Error(`server exited (${code}, ${signal}) during start-up:\n${this.tail()}`));
      });
    });
  }

  tail(n = 4000) {
    return this.output.slice(-n);
  }

  // A sentence when the server exited without being asked to, else ''.
  deathNote() {
    if (!this.crashed) return '';
    const i = this.stderr.search(/SUMMARY: |ERROR: AddressSanitizer|runtime error/);
    const why = i >= 0 ? this.stderr.slice(i, i + 600) : this.tail(600);
    return ` [the server on port ${this.port} exited unexpectedly (code ${this.crashed.code}, signal ${this.crashed.signal}): ${why}]`;
  }

  running() {
    return this.proc !== null && this.proc.exitCode === null && this.proc.signalCode === null;
  }

  // SIGTERM and wait: asserts exit code 0 and no sanitizer report.
  async stop({ timeoutMs = scaled(20000) } = {}) {
    assert.ok(this.proc, 'server is not running (it was stopped before, or never started)');
    const proc = this.proc;
    if (!this.running()) {
      this.proc = null;
      this.assertNoSanitizerReport();
      assert.fail(`server had already exited (code ${proc.exitCode}, signal ${proc.signalCode}) before SIGTERM:\n${this.tail()}`);
    }
    this.stopping = true;
    proc.kill('SIGTERM');
    let timer;
    const res = await Promise.race([
      this.exit,
      new Promise((r) => {
        timer = setTimeout(() => r(null), timeoutMs);
      }),
    ]);
    clearTimeout(timer);
    if (res === null) {
      proc.kill('SIGKILL');
      await this.exit;
      this.proc = null;
      assert.fail(`server did not exit within ${timeoutMs} ms of SIGTERM:\n${this.tail()}`);
    }
    this.proc = null;
    if (process.env.STREAMD_KEEP_LOGS) process.stderr.write(this.output);
    assert.deepEqual(res, { code: 0, signal: null }, `server exit after SIGTERM:\n${this.tail()}`);
    this.assertNoSanitizerReport();
  }

  assertNoSanitizerReport() {
    for (const m of SANITIZER_MARKERS) {
      const i = this.stderr.indexOf(m);
      assert.ok(i < 0, `server stderr holds a sanitizer report ("${m}"):\n${this.stderr.slice(Math.max(0, i - 2000), i + 6000)}`);
    }
  }

  async cleanup() {
    servers.delete(this);
    if (this.running()) {
      this.proc.kill('SIGKILL');
      await this.exit;
    }
    this.proc = null;
    this.agent.destroy();
    fs.rmSync(this.tmp, { recursive: true, force: true });
  }

  // ---- HTTP -----------------------------------------------------------------

  // One request on the keep-alive agent: {status, headers, text, json}.
  request(method, p, body, headers = {}) {
    return new Promise((resolve, reject) => {
      let data = null;
      const hdrs = { ...headers };
      if (body !== undefined && body !== null) {
        data = Buffer.from(typeof body === 'string' ? body : JSON.stringify(body));
        hdrs['Content-Type'] = 'application/json';
        hdrs['Content-Length'] = data.length;
      }
      const req = http.request(
        { host: '127.0.0.1', port: this.port, method, path: p, headers: hdrs, agent: this.agent },
        (res) => {
          const chunks = [];
          res.on('data', (c) => chunks.push(c));
          res.on('end', () => {
            const text = Buffer.concat(chunks).toString('utf8');
            let json;
            try {
              json = text ? JSON.parse(text) : undefined;
            } catch {
              json = undefined;
            }
            resolve({ status: res.statusCode, headers: res.headers, text, json });
          });
          res.on('error', reject);
        },
      );
      req.setTimeout(scaled(30000), () => req.destroy(new Error(`${method} ${p}: timeout`)));
      req.on('error', (e) => reject(annotate(e)));
      req.end(data);
    });
  }

  async ok(method, p, body, expect = [200, 201]) {
    const r = await this.request(method, p, body);
    const codes = Array.isArray(expect) ? expect : [expect];
    assert.ok(codes.includes(r.status), `${method} ${p} ${short(body)} -> ${r.status} ${short(r.text)}`);
    return r.json;
  }

  create(stream, cfg) {
    return this.ok('POST', `/stream/${stream}`, cfg || null, 201);
  }

  publish(stream, ev) {
    return this.ok('POST', `/stream/${stream}/publish`, ev, 200);
  }

  stats(stream) {
    return this.ok('GET', `/stream/${stream}/stats`, null, 200);
  }

  consume(stream, params) {
    const q = new URLSearchParams(params).toString();
    return this.ok('GET', `/stream/${stream}/consume/ws-test-reader?${q}`, null, 200);
  }

  // Every event of one partition (or of a one-partition stream) from `start`.
  async consumeAll(stream, { partition, start = 0 } = {}) {
    const out = [];
    let next = start;
    for (;;) {
      const params = { from_offset: next, limit: 10000 };
      if (partition !== undefined) params.partition = partition;
      const page = await this.consume(stream, params);
      if (page.length === 0) return out;
      out.push(...page);
      next = page[page.length - 1].offset + 1;
    }
  }

  // VmRSS and RssAnon of the server, in KiB.
  memory() {
    const txt = fs.readFileSync(`/proc/${this.pid}/status`, 'utf8');
    const kb = (k) => Number((txt.match(new RegExp(`^${k}:\\s+(\\d+) kB`, 'm')) || [])[1]);
    return { rss: kb('VmRSS'), anon: kb('RssAnon'), file: kb('RssFile') };
  }
}

// ---- raw WebSocket -----------------------------------------------------------

function wsKey() {
  return crypto.randomBytes(16).toString('base64');
}

function acceptFor(key) {
  return crypto.createHash('sha1').update(key + '258EAFA5-E914-47DA-95CA-C5AB0DC85B11').digest('base64');
}

// Sends a handshake request by hand.  headers: extra or overriding headers
// (a value of null removes a default one).  Resolves with
// {status, headers (lower-case), body, json, socket, rest}; for a 101 the
// socket stays open, paused (call socket.resume() after adding a 'data'
// listener), and `rest` holds bytes read past the headers.
function rawHandshake(port, p, headers = {}, { host = `127.0.0.1:${port}` } = {}) {
  const defaults = {
    Host: host,
    Upgrade: 'websocket',
    Connection: 'Upgrade',
    'Sec-WebSocket-Key': wsKey(),
    'Sec-WebSocket-Version': '13',
  };
  const all = { ...defaults, ...headers };
  let req = `GET ${p} HTTP/1.1\r\n`;
  for (const [k, v] of Object.entries(all)) if (v !== null && v !== undefined) req += `${k}: ${v}\r\n`;
  req += '\r\n';
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1');
    let buf = Buffer.alloc(0);
    let head = null;
    const timer = setTimeout(() => {
      socket.destroy();
      reject(annotate(new Error(`no handshake response for ${p} within ${scaled(10000)} ms; got ${short(buf.toString('latin1'))}`)));
    }, scaled(10000));
    const done = (v) => {
      clearTimeout(timer);
      socket.removeAllListeners('data');
      socket.removeAllListeners('end');
      resolve(v);
    };
    socket.on('error', (e) => {
      clearTimeout(timer);
      reject(annotate(e));
    });
    socket.on('connect', () => socket.write(req));
    const tryParse = (ended) => {
      if (!head) {
        const i = buf.indexOf('\r\n\r\n');
        if (i < 0) {
          if (ended) {
            clearTimeout(timer);
            reject(annotate(new Error(`connection closed inside the response headers: ${short(buf.toString('latin1'))}`)));
          }
          return;
        }
        const lines = buf.subarray(0, i).toString('latin1').split('\r\n');
        const m = lines[0].match(/^HTTP\/1\.[01] (\d{3})/);
        if (!m) {
          clearTimeout(timer);
          reject(annotate(new Error(`bad status line ${short(lines[0])}`)));
          return;
        }
        const hdrs = {};
        for (const l of lines.slice(1)) {
          const c = l.indexOf(':');
          hdrs[l.slice(0, c).trim().toLowerCase()] = l.slice(c + 1).trim();
        }
        head = { status: Number(m[1]), headers: hdrs };
        buf = buf.subarray(i + 4);
        if (head.status === 101) {
          // Paused: the caller resumes it once it listens for 'data'.
          socket.pause();
          done({ ...head, body: '', json: undefined, socket, rest: buf });
          return;
        }
      }
      const len = head.headers['content-length'];
      if (len !== undefined ? buf.length >= Number(len) : ended) {
        const body = (len !== undefined ? buf.subarray(0, Number(len)) : buf).toString('utf8');
        let json;
        try {
          json = JSON.parse(body);
        } catch {
          json = undefined;
        }
        socket.destroy();
        done({ ...head, body, json, socket, rest: Buffer.alloc(0) });
      }
    };
    socket.on('data', (d) => {
      buf = Buffer.concat([buf, d]);
      tryParse(false);
    });
    socket.on('end', () => tryParse(true));
  });
}

// Incremental parser of server-to-client frames (RFC 6455 5.2: unmasked).
// push(buf) returns the complete messages: {opcode, payload (Buffer)}.
// Control frames are returned as they come; fragmented data messages are
// joined.
class FrameParser {
  constructor() {
    this.chunks = [];
    this.len = 0;
    this.frag = null;
  }

  push(data) {
    this.chunks.push(data);
    this.len += data.length;
    const out = [];
    if (this.len < 2) return out;
    let buf = this.chunks.length === 1 ? this.chunks[0] : Buffer.concat(this.chunks, this.len);
    let off = 0;
    for (;;) {
      if (buf.length - off < 2) break;
      const b0 = buf[off];
      const b1 = buf[off + 1];
      if (b1 & 0x80) throw new Error('server sent a masked frame');
      if (b0 & 0x70) throw new Error(`server frame with RSV bits set: 0x${b0.toString(16)}`);
      let plen = b1 & 0x7f;
      let hl = 2;
      if (plen === 126) {
        if (buf.length - off < 4) break;
        plen = buf.readUInt16BE(off + 2);
        hl = 4;
      } else if (plen === 127) {
        if (buf.length - off < 10) break;
        plen = Number(buf.readBigUInt64BE(off + 2));
        hl = 10;
      }
      if (buf.length - off < hl + plen) break;
      const fin = (b0 & 0x80) !== 0;
      const opcode = b0 & 0x0f;
      const payload = Buffer.from(buf.subarray(off + hl, off + hl + plen));
      off += hl + plen;
      if (opcode >= 8) {
        out.push({ opcode, payload });
      } else if (opcode === 0) {
        if (!this.frag) throw new Error('continuation frame without a first frame');
        this.frag.parts.push(payload);
        if (fin) {
          out.push({ opcode: this.frag.opcode, payload: Buffer.concat(this.frag.parts) });
          this.frag = null;
        }
      } else if (fin) {
        out.push({ opcode, payload });
      } else {
        this.frag = { opcode, parts: [payload] };
      }
    }
    const left = buf.subarray(off);
    this.chunks = left.length ? [Buffer.from(left)] : [];
    this.len = left.length;
    return out;
  }
}

// A masked client frame (for raw sockets that must answer, e.g. pong or close).
function clientFrame(opcode, payload = Buffer.alloc(0)) {
  const mask = crypto.randomBytes(4);
  const len = payload.length;
  const head = len < 126 ? Buffer.from([0x80 | opcode, 0x80 | len]) : Buffer.from([0x80 | opcode, 0x80 | 126, len >> 8, len & 255]);
  const body = Buffer.alloc(len);
  for (let i = 0; i < len; i++) body[i] = payload[i] ^ mask[i & 3];
  return Buffer.concat([head, mask, body]);
}

// ---- ws clients ---------------------------------------------------------------

// Opens a ws client and records what it receives.  Resolves once open.
// c.msgs: parsed JSON messages; c.texts: raw texts; c.closed: promise of
// {code, reason}.
function openClient(url, opts = {}) {
  const ws = new WebSocket(url, { handshakeTimeout: scaled(10000), ...opts });
  const c = { ws, msgs: [], texts: [], errors: [], closeInfo: null };
  c.closed = new Promise((resolve) => {
    ws.on('close', (code, reason) => {
      c.closeInfo = { code, reason: reason.toString('utf8') };
      resolve(c.closeInfo);
    });
  });
  ws.on('message', (data, isBinary) => {
    const text = data.toString('utf8');
    c.texts.push(text);
    if (isBinary) c.errors.push(`binary frame: ${short(text)}`);
    try {
      c.msgs.push(JSON.parse(text));
    } catch {
      c.errors.push(`not JSON: ${short(text)}`);
    }
  });
  ws.on('error', (e) => c.errors.push(String(e && e.message)));
  return new Promise((resolve, reject) => {
    ws.once('open', () => resolve(c));
    ws.once('unexpected-response', (req, res) => {
      reject(new Error(`${url}: unexpected response ${res.statusCode}`));
      req.destroy();
    });
    ws.once('error', (e) => reject(annotate(e)));
  });
}

// Asserts a list of events is offsets start..start+n-1 dense (one partition).
function assertDense(offsets, start, n, who) {
  assert.equal(offsets.length, n, `${who}: expected ${n} events from ${start}, got ${offsets.length}; first problem: ${firstGap(offsets, start)}`);
  for (let i = 0; i < n; i++) {
    if (offsets[i] !== start + i) {
      assert.fail(`${who}: position ${i} holds offset ${offsets[i]}, expected ${start + i} (${firstGap(offsets, start)})`);
    }
  }
}

function firstGap(offsets, start) {
  for (let i = 0; i < offsets.length; i++) {
    if (offsets[i] !== start + i) {
      return `at index ${i}: ${short(offsets.slice(Math.max(0, i - 3), i + 4))}`;
    }
  }
  return 'none';
}

module.exports = {
  BIN,
  SCALE,
  scaled,
  sleep,
  waitFor,
  annotate,
  short,
  freePort,
  Server,
  wsKey,
  acceptFor,
  rawHandshake,
  FrameParser,
  clientFrame,
  openClient,
  assertDense,
};
