"""Crash loop: a mixed load against the real binary in `always` mode (env
STREAMD_CRASH_DURABILITY for another mode) while the server is killed with
SIGKILL at random moments and restarted, many times (env
STREAMD_CRASH_CYCLES, default 30; STREAMD_CRASH_SEED picks the seed, which
is printed).  Segments are small (STREAMD_CRASH_SEGMENT_BYTES, default
16 KiB), so kills also land in segment rolls; now and then a start is
killed too, while the server recovers.

The load:
- publisher threads give every event an `id` (single events, small
  batches, now and then a batch larger than a segment) and retry every
  request whose answer they did not get (refused, reset, timeout, 5xx), with the same
  body, across restarts, until it is answered;
- offset readers consume every partition from 0 and check that offsets are
  dense and that no offset ever changes content;
- WebSocket subscribers (one on partition 0, one on the whole stream) that
  reconnect after each restart from where they were;
- a shared consumer group with explicit acks, consumed and acked over HTTP
  by two consumers, retrying each ack until it is answered and recording
  every answered ack.

After every restart: the server was ready in bounded time (measured and
printed); every acknowledged publish is readable at its partition and
offset with its exact content; offsets are dense in every partition; each
id is in the stream exactly once; every record anyone was served is still
there with the same content; every served record is one that was
published.  At all times: no event is delivered to the group after an ack
of it was answered.  At the end the group drains: every record is acked,
and the server log holds no sanitizer report.
"""

import http.client
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import threading
import time
import unittest

import harness
from harness import Server, scaled, short
from wsclient import Closed, HandshakeError, ProtocolError, WsClient

CYCLES = int(os.environ.get("STREAMD_CRASH_CYCLES", "30"))
SEED = int(os.environ.get("STREAMD_CRASH_SEED", str(random.SystemRandom().randrange(1 << 31))))
STREAM = "crash"
PARTITIONS = 3
PUBLISHERS = 3
DURABILITY = os.environ.get("STREAMD_CRASH_DURABILITY", "always")  # a process crash loses nothing in any mode
SEGMENT_BYTES = int(os.environ.get("STREAMD_CRASH_SEGMENT_BYTES", "16384"))  # small: many segment rolls
STARTUP_BOUND = scaled(10.0)  # seconds from spawn to ready, at most


class Retry(Exception):
    """No answer (the server is down or went down): send it again."""


class Load:
    """State shared by the load threads and the test."""

    def __init__(self, srv):
        self.srv = srv
        self.lock = threading.Lock()
        self.up = threading.Event()
        self.stop = threading.Event()
        self.failures = []
        self.sent = {}        # id -> the event object as published
        self.acked = {}       # id -> (partition, offset)
        self.seen = {}        # (partition, offset) -> canonical JSON served
        self.group_acked = set()
        self.group_delivered = 0
        self.retries = 0
        self.duplicates = 0
        self.ws_reconnects = 0

    def fail(self, msg):
        with self.lock:
            self.failures.append(msg)
        self.stop.set()

    def port(self):
        """Port of the running server; waits while it is down."""
        while not self.up.wait(0.05):
            if self.stop.is_set():
                raise Retry()
        return self.srv.port

    def call(self, method, path, body=None, timeout=None):
        """One request on a new connection.  Returns (status, parsed body);
        raises Retry when no answer came."""
        port = self.port()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout or scaled(10))
        try:
            data = None if body is None else json.dumps(body).encode()
            hdrs = {"Content-Type": "application/json"} if data is not None else {}
            conn.request(method, path, body=data, headers=hdrs)
            resp = conn.getresponse()
            raw = resp.read()
        except (OSError, http.client.HTTPException):
            raise Retry()
        finally:
            conn.close()
        try:
            return resp.status, (json.loads(raw) if raw else None)
        except ValueError:
            self.fail("%s %s -> %d with a non-JSON body %r" % (method, path, resp.status, raw[:200]))
            raise Retry()

    def observe(self, ev, who):
        """Checks one served event: it is one that was published, byte for
        byte, and its offset never served other content."""
        key = (ev.get("partition"), ev.get("offset"))
        canon = json.dumps(ev, sort_keys=True)
        with self.lock:
            prev = self.seen.setdefault(key, canon)
            sent = self.sent.get(ev.get("id"))
        if prev != canon:
            self.fail("%s: offset %r served with other content: before %s, now %s" % (who, key, prev, canon))
        elif sent is None:
            self.fail("%s: served an event that was never published: %s" % (who, short(ev)))
        elif expected(sent) != served_members(ev):
            self.fail("%s: event %s served as %s" % (who, short(sent), short(ev)))


def expected(sent):
    """The members a served event must carry for this published event."""
    out = {"event": sent["event"], "data": sent["data"], "id": sent["id"]}
    if "partition_key" in sent:
        out["key"] = sent["partition_key"]
    if "headers" in sent:
        out["headers"] = sent["headers"]
    return out


def served_members(ev):
    return {k: v for k, v in ev.items() if k not in ("offset", "partition", "timestamp")}


class Publisher(threading.Thread):

    def __init__(self, load, tid, rng):
        super().__init__(daemon=True, name="publisher-%d" % tid)
        self.load, self.tid, self.rng = load, tid, rng
        self.seq = 0

    def make(self):
        self.seq += 1
        ev = {"event": "t%d" % self.tid, "id": "p%d-%d" % (self.tid, self.seq),
              "data": {"tid": self.tid, "seq": self.seq, "pad": "x" * self.rng.randrange(0, 400)}}
        r = self.rng.random()
        if r < 0.3:
            ev["partition_key"] = "key-%d" % self.rng.randrange(7)
        elif r < 0.4:
            ev["partition"] = self.rng.randrange(PARTITIONS)
        if self.rng.random() < 0.25:
            ev["headers"] = {"h": str(self.seq)}
        return ev

    def run(self):
        try:
            self.loop()
        except Exception as e:  # report, do not die silently
            self.load.fail("%s crashed: %r" % (self.name, e))

    def loop(self):
        L = self.load
        path = "/stream/%s/publish" % STREAM
        while not L.stop.is_set():
            # Now and then a batch larger than a segment: it rolls more than once.
            n = 80 if self.rng.random() < 0.04 else self.rng.choice((1, 1, 1, 3))
            evs = [self.make() for _ in range(n)]
            with L.lock:
                for ev in evs:
                    L.sent[ev["id"]] = ev
            body = evs[0] if len(evs) == 1 else evs
            while True:  # the same body until it is answered
                try:
                    st, ans = L.call("POST", path, body)
                except Retry:
                    if L.stop.is_set():
                        return  # not answered: not acknowledged
                    L.retries += 1
                    continue
                if st >= 500:
                    L.retries += 1
                    time.sleep(0.05)
                    continue
                break
            if st != 200:
                L.fail("publish %s -> %d %s" % (short(body), st, short(ans)))
                return
            results = ans["results"] if len(evs) > 1 else [ans]
            if len(results) != len(evs):
                L.fail("publish of %d events answered with %d results: %s" % (len(evs), len(results), short(ans)))
                return
            with L.lock:
                for ev, r in zip(evs, results):
                    L.acked[ev["id"]] = (r["partition"], r["offset"])
                    if r.get("duplicate"):
                        L.duplicates += 1


class OffsetReader(threading.Thread):
    """Reads its partitions from offset 0 on, checking density and content."""

    def __init__(self, load, n, partitions):
        super().__init__(daemon=True, name="reader-%d" % n)
        self.load, self.n = load, n
        self.next = {p: 0 for p in partitions}

    def run(self):
        L = self.load
        try:
            while not L.stop.is_set():
                for p in self.next:
                    path = "/stream/%s/consume/reader-%d?partition=%d&from_offset=%d&limit=500&wait_ms=100" % (
                        STREAM, self.n, p, self.next[p])
                    try:
                        st, page = L.call("GET", path)
                    except Retry:
                        continue
                    if st >= 500:
                        time.sleep(0.05)
                        continue
                    if st != 200:
                        L.fail("%s: GET %s -> %d %s" % (self.name, path, st, short(page)))
                        return
                    for i, ev in enumerate(page):
                        if ev.get("partition") != p or ev.get("offset") != self.next[p] + i:
                            L.fail("%s: partition %d from %d: item %d is %s (offsets not dense)"
                                   % (self.name, p, self.next[p], i, short(ev)))
                            return
                        L.observe(ev, self.name)
                    self.next[p] += len(page)
        except Exception as e:
            L.fail("%s crashed: %r" % (self.name, e))


class WsSubscriber(threading.Thread):
    """A WebSocket subscriber that reconnects after every restart, from its
    lowest next offset, skipping what it already had (a whole-stream
    subscription applies from_offset to every partition)."""

    def __init__(self, load, n, partition=None):
        super().__init__(daemon=True, name="ws-%d" % n)
        self.load, self.n, self.partition = load, n, partition
        parts = range(PARTITIONS) if partition is None else [partition]
        self.next = {p: 0 for p in parts}
        self.received = 0

    def run(self):
        L = self.load
        try:
            while not L.stop.is_set():
                try:
                    port = L.port()
                except Retry:
                    return
                path = "/stream/%s/ws/ws-%d?from_offset=%d" % (STREAM, self.n, min(self.next.values()))
                if self.partition is not None:
                    path += "&partition=%d" % self.partition
                try:
                    ws = WsClient.connect("127.0.0.1", port, path, timeout=scaled(5))
                except HandshakeError as e:
                    if e.status >= 500:
                        time.sleep(0.05)
                        continue
                    L.fail("%s: upgrade refused: %d %r" % (self.name, e.status, e.body[:200]))
                    return
                except (OSError, ConnectionError):
                    time.sleep(0.02)
                    continue
                L.ws_reconnects += 1
                try:
                    self.receive(ws)
                finally:
                    ws.close()
        except Exception as e:
            L.fail("%s crashed: %r" % (self.name, e))

    def receive(self, ws):
        L = self.load
        while not L.stop.is_set():
            try:
                op, payload = ws.recv(timeout=0.5)
            except socket.timeout:
                continue
            except Closed as c:
                if c.code not in (None, 1001, 1006):
                    L.fail("%s: closed with %r %r" % (self.name, c.code, c.reason))
                return
            except (OSError, ConnectionError):
                return
            except ProtocolError as e:
                L.fail("%s: %s" % (self.name, e))
                return
            ev = json.loads(payload)
            p, o = ev.get("partition"), ev.get("offset")
            if p not in self.next:
                L.fail("%s: event of partition %r: %s" % (self.name, p, short(ev)))
                return
            if o > self.next[p]:
                L.fail("%s: partition %d: expected offset %d, got %d (gap)" % (self.name, p, self.next[p], o))
                return
            L.observe(ev, self.name)
            if o == self.next[p]:
                self.next[p] += 1
                self.received += 1


class GroupConsumer(threading.Thread):
    """Consumes the group over HTTP and acks every batch.  An event whose
    ack was answered before a consume request was sent must never be in that
    request's answer."""

    def __init__(self, load, name):
        super().__init__(daemon=True, name="group-" + name)
        self.load, self.consumer = load, name

    def run(self):
        L = self.load
        try:
            while not L.stop.is_set():
                self.once(50, 100)
        except Exception as e:
            L.fail("%s crashed: %r" % (self.name, e))

    def once(self, limit, wait_ms):
        L = self.load
        with L.lock:
            acked_before = set(L.group_acked)
        path = "/stream/%s/group/g/consume?consumer=%s&limit=%d&wait_ms=%d" % (STREAM, self.consumer, limit, wait_ms)
        try:
            st, evs = L.call("GET", path)
        except Retry:
            return 0
        if st >= 500:
            time.sleep(0.05)
            return 0
        if st != 200:
            L.fail("%s: GET %s -> %d %s" % (self.name, path, st, short(evs)))
            return 0
        for ev in evs:
            po = (ev["partition"], ev["offset"])
            if po in acked_before:
                L.fail("%s: %r delivered again (deliveries %r) after its ack was answered"
                       % (self.name, po, ev.get("deliveries")))
                return 0
            ev = {k: v for k, v in ev.items() if k != "deliveries"}
            L.observe(ev, self.name)
        if not evs:
            return 0
        L.group_delivered += len(evs)
        acks = [{"partition": ev["partition"], "offset": ev["offset"]} for ev in evs]
        while True:  # acks are idempotent: the same one until it is answered
            try:
                st, ans = L.call("POST", "/stream/%s/group/g/ack" % STREAM, {"consumer": self.consumer, "acks": acks})
            except Retry:
                if L.stop.is_set():
                    return len(evs)  # unknown whether it was applied: may be delivered again
                continue
            if st < 500:
                break
            time.sleep(0.05)
        if st == 200:
            with L.lock:
                L.group_acked.update((a["partition"], a["offset"]) for a in acks)
        elif st < 500:
            L.fail("%s: ack -> %d %s" % (self.name, st, short(ans)))
        return len(evs)


class CrashLoopTest(unittest.TestCase):

    def test_crash_loop(self):
        rng = random.Random(SEED)
        print("\ncrash loop: seed %d (STREAMD_CRASH_SEED=%d to repeat), %d cycles, durability %s"
              % (SEED, SEED, CYCLES, DURABILITY),
              file=sys.stderr, flush=True)
        srv = Server(["--segment-bytes", str(SEGMENT_BYTES), "--dedup-window-ms", "86400000"], durability=DURABILITY)
        self.addCleanup(srv.cleanup)
        srv.start()
        srv.create(STREAM, partitions=PARTITIONS, retention_hours=0)
        ack_timeout = int(scaled(2000))
        st, body = srv.post("/stream/%s/group/g" % STREAM, {"ack": "explicit", "ack_timeout_ms": ack_timeout,
                                                            "session_timeout_ms": 600000})
        self.assertEqual(st, 201, body)

        L = Load(srv)
        self.load = L
        threads = [Publisher(L, t, random.Random(rng.random())) for t in range(PUBLISHERS)]
        threads += [OffsetReader(L, 0, [0, 2]), OffsetReader(L, 1, [1])]
        threads += [WsSubscriber(L, 0, partition=0), WsSubscriber(L, 1)]
        threads += [GroupConsumer(L, "a"), GroupConsumer(L, "b")]
        self.addCleanup(L.stop.set)
        L.up.set()
        for t in threads:
            t.start()

        startups = []
        t0 = time.monotonic()
        checked_total = 0
        for cycle in range(CYCLES):
            delay = rng.choice((rng.uniform(0.0, 0.05), rng.uniform(0.1, 1.2), rng.uniform(0.1, 1.2)))
            if L.stop.wait(delay):
                break
            if not srv.running():
                L.stop.set()
                self.fail("seed %d, cycle %d: the server died by itself (exit %r):\n%s"
                          % (SEED, cycle + 1, srv.proc.poll(), srv.log_tail()))
            L.up.clear()
            srv.kill()
            if rng.random() < 0.25:
                self.kill_during_startup(srv, rng.uniform(0.0, scaled(0.03)))
            t_spawn = time.monotonic()
            try:
                srv.start(timeout=STARTUP_BOUND)
            except harness.ServerError as e:
                L.stop.set()
                self.fail("cycle %d (seed %d): the server did not come back: %s" % (cycle, SEED, e))
            startups.append(time.monotonic() - t_spawn)
            L.up.set()
            checked_total = self.check(srv, L, "after restart %d" % (cycle + 1))
            self.assertFalse(L.failures, "seed %d, cycle %d:\n%s" % (SEED, cycle + 1, "\n".join(L.failures[:10])))
        run_s = time.monotonic() - t0

        # Stop the load; every thread notices within a request timeout.
        L.stop.set()
        for t in threads:
            t.join(scaled(15))
            self.assertFalse(t.is_alive(), "%s did not stop" % t.name)
        self.assertFalse(L.failures, "seed %d:\n%s" % (SEED, "\n".join(L.failures[:10])))
        checked_total = self.check(srv, L, "at the end")

        # The group drains: every record is acked once the redeliveries of
        # events pending at the crashes have come back.
        L.stop.clear()
        every = set()
        for p in range(PARTITIONS):
            every.update((p, e["offset"]) for e in srv.consume_all(STREAM, partition=p))
        drainer = GroupConsumer(L, "a")
        deadline = time.monotonic() + ack_timeout / 1000.0 + scaled(30)
        while time.monotonic() < deadline:
            with L.lock:
                if L.group_acked >= every:
                    break
            drainer.once(500, 200)
        self.assertFalse(L.failures, "seed %d:\n%s" % (SEED, "\n".join(L.failures[:10])))
        missing = every - L.group_acked
        self.assertFalse(missing, "seed %d: %d records never acked by the group, e.g. %s; group info %s"
                         % (SEED, len(missing), sorted(missing)[:10], short(srv.get("/stream/%s/group/g/info"
                                                                                        % STREAM)[1], 600)))
        info = srv.get("/stream/%s/group/g/info" % STREAM)[1]
        self.assertEqual(info["pending_messages"], 0, info)
        srv.stop()
        with open(srv.log_path, "rb") as f:
            log = f.read().decode("utf-8", "replace")
        for bad in ("AddressSanitizer", "runtime error:", "LeakSanitizer"):
            self.assertNotIn(bad, log, "seed %d: sanitizer report in the server log:\n%s"
                             % (SEED, log[log.find(bad) - 2000:log.find(bad) + 3000]))

        ws_got = sum(t.received for t in threads if isinstance(t, WsSubscriber))
        print("crash loop: seed %d, %d kill -9 cycles survived in %.1fs; %d events acknowledged (%d checked), "
              "%d retries, %d duplicate answers, %d ws events over %d connections, %d group deliveries, "
              "%d group acks" % (SEED, len(startups), run_s, len(L.acked), checked_total, L.retries, L.duplicates,
                                 ws_got, L.ws_reconnects, L.group_delivered, len(L.group_acked)),
              file=sys.stderr)
        print("crash loop: start-up (spawn to ready) min %.3fs median %.3fs max %.3fs"
              % (min(startups), statistics.median(startups), max(startups)), file=sys.stderr, flush=True)

    def kill_during_startup(self, srv, delay):
        """Starts the server on the same data and kills it after `delay`
        seconds, most likely while it recovers."""
        with open(srv.log_path, "ab") as log:
            log.write(b"\n===== start to be killed during start-up =====\n")
            log.flush()
            proc = subprocess.Popen([harness.BIN, "--host", "127.0.0.1", "--port", str(harness.free_port()),
                                     "--data-dir", srv.data_dir] + srv.extra_args,
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        time.sleep(delay)
        proc.kill()
        proc.wait()

    def check(self, srv, L, when):
        """Reads the whole stream and checks it against everything that was
        acknowledged or served before the read started."""
        with L.lock:
            acked = dict(L.acked)
            seen = dict(L.seen)
        log = []
        ids = {}
        for p in range(PARTITIONS):
            try:
                evs = srv.consume_all(STREAM, partition=p)
            except AssertionError as e:
                with open(srv.log_path, "rb") as f:
                    notes = [ln for ln in f.read().decode("utf-8", "replace").splitlines()
                             if " ERROR " in ln or " WARN " in ln or ln.startswith("=====")]
                self.fail("seed %d, %s: %s\nserver log (warnings, errors, starts):\n%s"
                          % (SEED, when, e, "\n".join(notes[-60:])))
            offs = [e["offset"] for e in evs]
            self.assertEqual(offs, list(range(len(evs))),
                             "seed %d, %s: partition %d offsets not dense from 0" % (SEED, when, p))
            for e in evs:
                if e["partition"] != p:
                    self.fail("seed %d, %s: partition %d served %s" % (SEED, when, p, short(e)))
                i = e.get("id")
                if i in ids:
                    self.fail("seed %d, %s: id %r stored twice: at %r and %r"
                              % (SEED, when, i, ids[i], (p, e["offset"])))
                ids[i] = (p, e["offset"])
                log.append(e)
        with L.lock:  # events are entered before they are sent
            sent = dict(L.sent)
        for e in log:
            i = e.get("id")
            if i not in sent or expected(sent[i]) != served_members(e):
                self.fail("seed %d, %s: record %r is not a published event: %s (published: %s)"
                          % (SEED, when, (e["partition"], e["offset"]), short(e), short(sent.get(i))))
        stored = {(e["partition"], e["offset"]): e for e in log}
        for i, po in acked.items():
            if ids.get(i) != po:
                self.fail("seed %d, %s: acknowledged %s at %r is %s; stored at %r"
                          % (SEED, when, i, po, short(stored.get(po)), ids.get(i)))
        for po, canon in seen.items():
            if po not in stored or json.dumps(stored[po], sort_keys=True) != canon:
                self.fail("seed %d, %s: %r was served as %s and is now %s"
                          % (SEED, when, po, canon[:300], short(stored.get(po))))
        return len(acked)


class StartupTimeTest(unittest.TestCase):
    """Start-up after kill -9 with many segments (env STREAMD_STARTUP_EVENTS,
    default 20000 on 2 partitions in 4 KiB segments: about 1,700 segments).
    Recovery opens every segment; a sealed one with a valid index is neither
    scanned nor synced again, so the time stays small."""

    def test_startup_with_many_segments(self):
        n = int(os.environ.get("STREAMD_STARTUP_EVENTS", "20000"))
        srv = Server(["--segment-bytes", "4096"])
        self.addCleanup(srv.cleanup)
        srv.start()
        srv.create("many", partitions=2)
        for at in range(0, n, 1000):
            st, body = srv.post("/stream/many/publish", [{"event": "e", "id": "i%d" % i, "data": "x" * 200}
                                                         for i in range(at, min(n, at + 1000))])
            self.assertEqual(st, 200, body)
        segs = sum(1 for _, _, fs in os.walk(srv.data_dir) for f in fs if f.endswith(".seg"))
        times = []
        for _ in range(3):
            srv.kill()
            t = time.monotonic()
            srv.start(timeout=STARTUP_BOUND)
            times.append(time.monotonic() - t)
            self.assertEqual(srv.info("many")["message_count"], n)
        print("\nstart-up after kill -9 with %d events in %d segments: %s s"
              % (n, segs, " ".join("%.3f" % x for x in times)), file=sys.stderr, flush=True)
        srv.stop()


if __name__ == "__main__":
    unittest.main()
