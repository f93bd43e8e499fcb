'use strict';
// 13. GET /metrics read by a Prometheus text-format parser
// (parse-prometheus-text-format), not by regular expressions: every family
// has HELP and TYPE, names follow the conventions, and the values are
// exactly what this test did: publishes and their events (a duplicate
// among them), stream and group consumes and the events they returned, a
// group's pending, dead and lag counts, a WebSocket subscriber and what it
// was sent, per-partition counts and offsets, and request histograms whose
// buckets are cumulative and whose _count is the number of requests made.
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const parsePrometheusTextFormat = require('parse-prometheus-text-format');
const h = require('./harness');

let server;
before(async () => {
  server = await new h.Server().start();
});
after(async () => {
  if (server) await server.cleanup();
});

// Requests made by this test, by the route family the server reports.
const made = { publish: 0, consume: 0, streams: 0, groups: 0, group_consume: 0, group_ack: 0, metrics: 0, websocket: 0 };

async function call(family, method, path, body, expect) {
  made[family]++;
  return server.ok(method, path, body, expect);
}

// Series of a histogram family: parse-prometheus-text-format folds a
// histogram's samples into one series and drops the labels that tell its
// series apart (it expects a single unlabelled series), so the family's
// sample lines are parsed again on their own, as untyped samples, by the
// same parser, and grouped into series by their labels without `le`.
function histogramSeries(text, name) {
  const own = text.split('\n').filter((l) => [`${name}_bucket`, `${name}_sum`, `${name}_count`]
    .some((n) => l.startsWith(`${n}{`) || l.startsWith(`${n} `)));
  const series = new Map();
  for (const f of parsePrometheusTextFormat(`${own.join('\n')}\n`)) {
    assert.equal(f.type, 'UNTYPED');
    for (const m of f.metrics) {
      const labels = { ...(m.labels || {}) };
      const le = labels.le;
      delete labels.le;
      const key = JSON.stringify(Object.entries(labels).sort());
      if (!series.has(key)) series.set(key, { labels, buckets: {} });
      const x = series.get(key);
      if (f.name === `${name}_bucket`) {
        assert.ok(le !== undefined, `${name}_bucket without le`);
        assert.ok(!(le in x.buckets), `${name}: bucket le=${le} twice in ${key}`);
        x.buckets[le] = m.value;
      } else if (f.name === `${name}_sum`) {
        x.sum = m.value;
      } else {
        x.count = m.value;
      }
    }
  }
  return { lines: own.length, metrics: [...series.values()] };
}

// Scrapes /metrics and parses it; returns {families: Map name -> family, text}.
async function scrape() {
  const r = await server.request('GET', '/metrics');
  made.metrics++;
  assert.equal(r.status, 200, r.text);
  assert.match(r.headers['content-type'], /^text\/plain; version=0\.0\.4/);
  const parsed = parsePrometheusTextFormat(r.text);
  const families = new Map(parsed.map((f) => [f.name, f]));
  assert.equal(families.size, parsed.length, 'a family appears twice (its samples are not together)');
  // Every sample line belongs to a parsed family: nothing was skipped.
  const sampleLines = r.text.split('\n').filter((l) => l && !l.startsWith('#'));
  let parsedSamples = 0;
  for (const f of parsed) {
    if (f.type === 'HISTOGRAM') {
      const hs = histogramSeries(r.text, f.name);
      f.metrics = hs.metrics;
      for (const m of f.metrics) {
        assert.ok(m.count !== undefined && m.sum !== undefined, `${f.name} ${JSON.stringify(m.labels)}: no _count/_sum`);
        parsedSamples += Object.keys(m.buckets).length + 2;
      }
    } else {
      parsedSamples += f.metrics.length;
    }
  }
  assert.equal(parsedSamples, sampleLines.length, 'the parser did not account for every sample line');
  return { families, text: r.text };
}

function labelsMatch(m, want) {
  return Object.entries(want).every(([k, v]) => (m.labels || {})[k] === v);
}

// The value of the one sample of family name whose labels include want.
function value(families, name, want = {}) {
  const f = families.get(name);
  assert.ok(f, `family ${name} missing`);
  const ms = f.metrics.filter((m) => labelsMatch(m, want));
  assert.equal(ms.length, 1, `${name} ${JSON.stringify(want)}: ${ms.length} samples`);
  return Number(ms[0].value);
}

function histogram(families, name, want = {}) {
  const f = families.get(name);
  assert.ok(f, `family ${name} missing`);
  assert.equal(f.type, 'HISTOGRAM');
  const ms = f.metrics.filter((m) => labelsMatch(m, want));
  assert.ok(ms.length <= 1, `${name} ${JSON.stringify(want)}: ${ms.length} series`);
  return ms[0] || null;
}

// Cumulative buckets: non-decreasing in `le` order, +Inf equal to _count.
function checkBuckets(name, m) {
  const bounds = Object.keys(m.buckets).sort((a, b) => (a === '+Inf' ? 1 : b === '+Inf' ? -1 : Number(a) - Number(b)));
  assert.equal(bounds.at(-1), '+Inf', `${name}: no +Inf bucket`);
  let prev = 0;
  for (const b of bounds) {
    const v = Number(m.buckets[b]);
    assert.ok(Number.isInteger(v) && v >= prev, `${name}: bucket le=${b} is ${v} after ${prev}`);
    prev = v;
  }
  assert.equal(prev, Number(m.count), `${name}: +Inf bucket differs from _count`);
  assert.ok(Number(m.sum) >= 0, `${name}: _sum ${m.sum}`);
}

test('every family has HELP and TYPE and a conventional name', { timeout: h.scaled(20000) }, async () => {
  const { families, text } = await scrape();
  assert.ok(families.size >= 20, `only ${families.size} families`);
  for (const f of families.values()) {
    assert.match(f.name, /^streamd_[a-z0-9_]+$/, f.name);
    assert.ok(f.help && f.help.length > 5, `${f.name}: no HELP`);
    assert.ok(['COUNTER', 'GAUGE', 'HISTOGRAM'].includes(f.type), `${f.name}: TYPE ${f.type}`);
    if (f.type === 'COUNTER') assert.match(f.name, /_total$/, `${f.name}: a counter must end in _total`);
    else assert.doesNotMatch(f.name, /_total$/, `${f.name}: only counters end in _total`);
    if (f.type === 'HISTOGRAM') assert.match(f.name, /_seconds$/, `${f.name}: durations are in seconds`);
    assert.ok(text.includes(`# TYPE ${f.name} ${f.type.toLowerCase()}\n`), `${f.name}: TYPE line`);
  }
  for (const name of ['streamd_http_request_duration_seconds', 'streamd_fsync_duration_seconds',
    'streamd_http_connections', 'streamd_websocket_connections', 'streamd_publish_requests_total',
    'streamd_published_events_total', 'streamd_consume_requests_total', 'streamd_consumed_events_total',
    'streamd_partition_events', 'streamd_partition_bytes', 'streamd_partition_min_offset',
    'streamd_partition_max_offset', 'streamd_group_lag_events', 'streamd_group_pending_events',
    'streamd_group_dead_events', 'streamd_stream_subscribers']) {
    assert.ok(families.has(name), `family ${name} missing`);
  }
});

test('counters, gauges and histograms match what the client did', { timeout: h.scaled(60000) }, async () => {
  const base = await scrape();
  const before = (name, labels) => value(base.families, name, labels);

  // Publishes: 6 single events round-robin over 2 partitions, 2 batches of
  // 3, and the first event's id again (a duplicate).
  await call('streams', 'POST', '/stream/m', { partitions: 2 }, 201);
  let events = 0;
  for (let i = 0; i < 6; i++) {
    await call('publish', 'POST', '/stream/m/publish', { event: 'e', data: i, ...(i === 0 ? { id: 'first' } : {}) }, 200);
    events++;
  }
  for (let b = 0; b < 2; b++) {
    await call('publish', 'POST', '/stream/m/publish', [0, 1, 2].map((j) => ({ event: 'b', data: j })), 200);
    events += 3;
  }
  const dup = await call('publish', 'POST', '/stream/m/publish', { event: 'e', data: 0, id: 'first' }, 200);
  assert.equal(dup.duplicate, true);
  // A request that fails counts in the histogram, not in the publish counter.
  await call('publish', 'POST', '/stream/m/publish', { event: 'e', data: 1, partition: 7 }, 400);

  // Stream consumes: K = 3 requests (a whole partition, 5 events, none).
  let consumed = 0;
  for (const [p, from, limit] of [[0, 0, 100], [1, 0, 5], [1, 100, 10]]) {
    const r = await call('consume', 'GET', `/stream/m/consume/reader?partition=${p}&from_offset=${from}&limit=${limit}`,
      null, 200);
    consumed += r.length;
  }
  // A group with explicit acks: 5 delivered, 2 acked -> 3 pending.
  assert.equal(made.publish, 10);
  await call('groups', 'POST', '/stream/m/group/g', { ack: 'explicit' }, 201);
  const got = await call('group_consume', 'GET', '/stream/m/group/g/consume?limit=5', null, 200);
  assert.equal(got.length, 5);
  for (const ev of got.slice(0, 2)) {
    await call('group_ack', 'POST', '/stream/m/group/g/ack', { partition: ev.partition, offset: ev.offset }, 200);
  }
  // A group of another stream of 4 events whose deliveries time out once
  // and are set aside as dead (at the next fetch after the timeout).
  await call('streams', 'POST', '/stream/dd', null, 201);
  await call('publish', 'POST', '/stream/dd/publish', [1, 2, 3, 4].map((j) => ({ event: 'x', data: j })), 200);
  await call('groups', 'POST', '/stream/dd/group/d', { ack: 'explicit', ack_timeout_ms: 50, max_deliveries: 1 }, 201);
  const gotDead = await call('group_consume', 'GET', '/stream/dd/group/d/consume?limit=10', null, 200);
  assert.equal(gotDead.length, 4);
  await h.waitFor(async () => {
    await h.sleep(60);
    assert.deepEqual(await call('group_consume', 'GET', '/stream/dd/group/d/consume?limit=10', null, 200), []);
    return (await call('groups', 'GET', '/stream/dd/group/d/info', null, 200)).dead_messages === 4;
  }, h.scaled(10000), 'four dead events');

  // A WebSocket subscriber from the start of every partition.
  const sub = await h.openClient(`${server.wsBase}/stream/m/ws/watcher?from_offset=0`);
  made.websocket++;
  await h.waitFor(() => sub.msgs.length === events, h.scaled(10000), `${events} events on the WebSocket`);

  // A group consumer over WebSocket (auto acks) gets every event of m.
  const gsub = await h.openClient(`${server.wsBase}/stream/m/group/w/ws/worker`).catch(async () => null);
  assert.equal(gsub, null, 'the group does not exist yet');
  await call('groups', 'POST', '/stream/m/group/w', {}, 201);
  const gws = await h.openClient(`${server.wsBase}/stream/m/group/w/ws/worker`);
  made.websocket += 2;
  await h.waitFor(() => gws.msgs.length === events, h.scaled(10000), `${events} events on the group WebSocket`);

  const { families } = await scrape();
  const delta = (name, labels) => value(families, name, labels) - before(name, labels);

  assert.equal(delta('streamd_publish_requests_total'), 10);
  assert.equal(delta('streamd_published_events_total'), events + 4);
  assert.equal(delta('streamd_publish_duplicate_events_total'), 1);
  assert.equal(delta('streamd_consume_requests_total', { kind: 'stream' }), 3);
  assert.equal(delta('streamd_consume_requests_total', { kind: 'group' }), made.group_consume);
  assert.ok(consumed >= 5 + 1, `consumed ${consumed}`);
  assert.equal(delta('streamd_consumed_events_total', { kind: 'stream', transport: 'http' }), consumed);
  assert.equal(delta('streamd_consumed_events_total', { kind: 'group', transport: 'http' }), 5 + 4);
  assert.equal(delta('streamd_consumed_events_total', { kind: 'stream', transport: 'websocket' }), events);
  assert.equal(delta('streamd_consumed_events_total', { kind: 'group', transport: 'websocket' }), events);
  assert.equal(value(families, 'streamd_stream_published_events_total', { stream: 'm' }), events);
  assert.equal(value(families, 'streamd_stream_consumed_events_total', { stream: 'm' }), consumed + 5 + 2 * events);
  assert.equal(value(families, 'streamd_stream_published_events_total', { stream: 'dd' }), 4);

  // WebSocket subscriber and connections.
  assert.equal(value(families, 'streamd_stream_subscribers', { stream: 'm' }), 2, 'the subscriber and the group consumer');
  assert.equal(value(families, 'streamd_websocket_connections'), 2);
  assert.ok(value(families, 'streamd_http_connections') >= 3, 'the HTTP client and the WebSockets');

  // Partitions: counts, offsets and bytes add up to what was published.
  let held = 0;
  for (const p of ['0', '1']) {
    const n = value(families, 'streamd_partition_events', { stream: 'm', partition: p });
    held += n;
    assert.equal(value(families, 'streamd_partition_min_offset', { stream: 'm', partition: p }), 0);
    assert.equal(value(families, 'streamd_partition_max_offset', { stream: 'm', partition: p }), n - 1);
    assert.ok(value(families, 'streamd_partition_bytes', { stream: 'm', partition: p }) > n * 40);
    assert.equal(value(families, 'streamd_partition_read_only', { stream: 'm', partition: p }), 0);
  }
  assert.equal(held, events);

  // Groups: pending, dead, lag (events after the committed offsets).
  assert.equal(value(families, 'streamd_group_pending_events', { stream: 'm', group: 'g' }), 3);
  assert.equal(value(families, 'streamd_group_dead_events', { stream: 'm', group: 'g' }), 0);
  assert.equal(value(families, 'streamd_group_pending_events', { stream: 'dd', group: 'd' }), 0);
  assert.equal(value(families, 'streamd_group_dead_events', { stream: 'dd', group: 'd' }), 4);
  assert.equal(value(families, 'streamd_group_lag_events', { stream: 'dd', group: 'd' }), 0, 'dead events are settled');
  const info = await server.ok('GET', '/stream/m/group/g/info', null, 200);
  made.groups++;
  const lag = info.partitions.reduce((a, p) => a + p.lag, 0);
  assert.ok(lag >= events - 5 && lag <= events, `lag ${lag}`);
  assert.equal(value(families, 'streamd_group_lag_events', { stream: 'm', group: 'g' }), lag);

  // Request histograms: bounded labels, cumulative buckets, _count equal to
  // the requests made (the scrape in progress is not complete yet).
  const reqs = families.get('streamd_http_request_duration_seconds');
  for (const m of reqs.metrics) {
    assert.deepEqual(Object.keys(m.labels).sort(), ['route', 'status']);
    assert.match(m.labels.status, /^(none|[1-5]xx)$/);
    checkBuckets(`requests ${JSON.stringify(m.labels)}`, m);
  }
  const count = (fams, route, status) => {
    const m = histogram(fams, 'streamd_http_request_duration_seconds', { route, status });
    return m ? Number(m.count) : 0;
  };
  const diff = (route, status) => count(families, route, status) - count(base.families, route, status);
  assert.equal(diff('publish', '2xx'), 10);
  assert.equal(diff('publish', '4xx'), 1);
  assert.equal(diff('consume', '2xx'), 3);
  assert.equal(diff('streams', '2xx'), 2);
  assert.equal(diff('group_consume', '2xx'), made.group_consume);
  assert.equal(diff('group_ack', '2xx'), 2);
  assert.equal(diff('websocket', '1xx'), 2);
  assert.equal(diff('websocket', '4xx'), 1, 'the upgrade to a group that did not exist');
  assert.equal(diff('groups', '2xx'), made.groups - 1, 'group creations and info reads (the last one came after)');
  assert.equal(diff('metrics', '2xx'), 1, 'the baseline scrape');
  assert.equal(count(families, 'metrics', '2xx'), made.metrics - 1, 'every scrape but this one');

  // fsync: durability `always` synced every publish; each sync job counts once.
  const fs = histogram(families, 'streamd_fsync_duration_seconds');
  checkBuckets('fsync', fs);
  assert.ok(Number(fs.count) >= 1, 'no sync job counted');
  assert.ok(Number(fs.count) > Number(histogram(base.families, 'streamd_fsync_duration_seconds').count));

  sub.ws.close();
  gws.ws.close();
  await sub.closed;
  await gws.closed;
  await h.waitFor(async () => value((await scrape()).families, 'streamd_stream_subscribers', { stream: 'm' }) === 0,
    h.scaled(5000), 'the subscriber gone');
});

test('server exits 0 on SIGTERM with no sanitizer report', { timeout: h.scaled(30000) }, async () => {
  await server.stop();
});
