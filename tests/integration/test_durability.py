"""Durability: clean restarts, crashes (kill -9) under concurrent load, and
shutdown with requests in flight."""

import http.client
import json
import threading
import time
import unittest

import harness
from harness import Server


def snapshot(srv, stream):
    parts = srv.info(stream)["partitions"]
    return {p: srv.consume_all(stream, partition=p) for p in range(parts)}


class Publisher(threading.Thread):
    """Publishes until told to stop or the server goes away; records every
    acknowledged (partition, offset, event object)."""

    def __init__(self, srv, stream, tid, acks, lock, stop):
        super().__init__(daemon=True)
        self.srv, self.stream, self.tid = srv, stream, tid
        self.acks, self.lock, self.stop_ev = acks, lock, stop
        self.seq = 0
        self.errors = 0

    def make(self, sub=0):
        self.seq += 1
        ev = {"event": "t%d" % self.tid,
              "data": {"tid": self.tid, "seq": self.seq, "pad": "p" * (self.seq * 7 % 300)}}
        if self.seq % 3 == 0:
            ev["partition_key"] = "key-%d" % (self.seq % 5)
        if self.seq % 4 == 0:
            ev["headers"] = {"h": str(self.seq)}
        return ev

    def run(self):
        conn = http.client.HTTPConnection("127.0.0.1", self.srv.port, timeout=harness.scaled(20))
        try:
            self.loop(conn)
        finally:
            conn.close()

    def loop(self, conn):
        path = "/stream/%s/publish" % self.stream
        while not self.stop_ev.is_set():
            batch = self.seq % 5 == 4
            evs = [self.make() for _ in range(3)] if batch else [self.make()]
            payload = json.dumps(evs if batch else evs[0])
            try:
                conn.request("POST", path, body=payload, headers={"Content-Type": "application/json"})
                resp = conn.getresponse()
                body = json.loads(resp.read())
            except Exception:
                self.errors += 1
                return  # the server is gone
            if resp.status != 200:
                with self.lock:
                    self.acks.append(("error", resp.status, body))
                return
            results = body["results"] if batch else [body]
            with self.lock:
                for ev, r in zip(evs, results):
                    self.acks.append((r["partition"], r["offset"], ev))


class DurabilityTest(unittest.TestCase):

    def new_server(self, *args, **kw):
        srv = Server(*args, **kw)
        self.addCleanup(srv.cleanup)
        return srv.start()

    def test_clean_restart_preserves_everything(self):
        srv = self.new_server()
        srv.create("dur", partitions=3, retention_hours=0)
        srv.create("dur-1")
        for i in range(60):
            ev = {"event": "e%d" % (i % 4), "data": {"i": i, "s": "x" * (i % 17), "l": [i, str(i)]}}
            if i % 2:
                ev["partition_key"] = "k%d" % (i % 6)
            if i % 5 == 0:
                ev["headers"] = {"n": str(i)}
            if i % 7 == 0:
                ev["id"] = "id-%d" % i
            srv.publish("dur", ev)
        st, body = srv.post("/stream/dur/publish", [{"event": "b", "data": i} for i in range(140)])
        self.assertEqual(st, 200, body)
        srv.publish("dur-1", {"event": "single", "data": "only"})
        before = snapshot(srv, "dur")
        info = srv.info("dur")
        self.assertEqual(sum(len(v) for v in before.values()), 200)
        streams = srv.get("/stream/list")[1]
        srv.stop()  # asserts exit code 0

        srv.start()
        self.assertEqual(srv.get("/stream/list")[1], streams)
        self.assertEqual(srv.info("dur"), info)
        self.assertEqual(snapshot(srv, "dur"), before)
        self.assertEqual(srv.consume("dur-1")[1][0]["data"], "only")
        # Appends continue at the next offset of each partition.
        for p in range(3):
            _, body = srv.publish("dur", {"event": "after", "data": p, "partition": p})
            self.assertEqual(body["offset"], len(before[p]))
        srv.stop()

    def check_acks(self, srv, stream, acks, partitions):
        errors = [a for a in acks if a[0] == "error"]
        self.assertEqual(errors, [], "publishes answered with errors")
        stored = snapshot(srv, stream)
        seen = set()
        for p in range(partitions):
            evs = stored[p]
            self.assertEqual([e["offset"] for e in evs], list(range(len(evs))),
                             "partition %d: offsets must be dense from 0" % p)
            ts = [e["timestamp"] for e in evs]
            self.assertEqual(ts, sorted(ts), "partition %d: timestamps go backwards along offsets" % p)
            for e in evs:
                self.assertEqual(e["partition"], p)
                ident = (e["data"]["tid"], e["data"]["seq"])
                self.assertNotIn(ident, seen, "event stored twice: %r" % (e,))
                seen.add(ident)
        for p, off, ev in acks:
            evs = stored[p]
            self.assertLess(off, len(evs), "acknowledged event lost: partition %d offset %d %r" % (p, off, ev))
            got = evs[off]
            self.assertEqual(got["event"], ev["event"])
            self.assertEqual(got["data"], ev["data"], "partition %d offset %d" % (p, off))
            self.assertEqual(got.get("headers"), ev.get("headers"))
            self.assertEqual(got.get("key"), ev.get("partition_key"))
        return stored

    def run_load(self, srv, stream, acks, min_acks, threads=4):
        lock, stop = threading.Lock(), threading.Event()
        pubs = [Publisher(srv, stream, tid + 100 * srv.starts, acks, lock, stop) for tid in range(threads)]
        start = len(acks)
        for p in pubs:
            p.start()
        harness.poll_until(lambda: len(acks) - start >= min_acks or not any(p.is_alive() for p in pubs),
                           harness.scaled(30), what="%d acknowledged publishes" % min_acks)
        return pubs, stop

    def test_crash_under_load_loses_no_acknowledged_event(self):
        srv = self.new_server(durability="always")
        stream = "crash"
        srv.create(stream, partitions=3)
        acks = []
        for rnd in range(2):
            pubs, stop = self.run_load(srv, stream, acks, min_acks=150)
            srv.kill()  # in the middle of the load
            stop.set()
            for p in pubs:
                p.join(harness.scaled(20))
                self.assertFalse(p.is_alive())
            self.assertGreaterEqual(len(acks), 150 * (rnd + 1))
            srv.start()
            self.check_acks(srv, stream, acks, 3)
        srv.stop()

    def test_sigterm_under_load_exits_0_and_keeps_acknowledged_events(self):
        srv = self.new_server(durability="always")
        stream = "term"
        srv.create(stream, partitions=2)
        acks = []
        pubs, stop = self.run_load(srv, stream, acks, min_acks=100)
        code = srv.terminate()
        stop.set()
        for p in pubs:
            p.join(harness.scaled(20))
        self.assertEqual(code, 0, srv.log_tail())
        # Requests caught by the shutdown may get 503 shutting_down; that is fine.
        acks[:] = [a for a in acks if not (a[0] == "error" and a[1] == 503)]
        srv.start()
        self.check_acks(srv, stream, acks, 2)
        srv.stop()

    def test_other_modes_survive_process_crash_and_restart(self):
        for mode, extra in (("interval", ["--sync-interval-ms", "50"]), ("never", [])):
            with self.subTest(mode=mode):
                srv = self.new_server(extra, durability=mode)
                srv.create("m", partitions=2)
                st, body = srv.post("/stream/m/publish", [{"event": "e", "data": i} for i in range(30)])
                self.assertEqual(st, 200, body)
                for i in range(30, 40):
                    srv.publish("m", {"event": "e", "data": i})
                before = snapshot(srv, "m")
                srv.kill()  # a process crash: the OS still has the data
                srv.start()
                self.assertEqual(snapshot(srv, "m"), before)
                srv.publish("m", {"event": "e", "data": 40})
                before = snapshot(srv, "m")
                srv.stop()  # syncs, exit 0
                srv.start()
                self.assertEqual(snapshot(srv, "m"), before)
                self.assertEqual(sum(len(v) for v in before.values()), 41)
                srv.stop()

    def test_sigterm_with_long_polls_in_flight(self):
        srv = self.new_server()
        srv.create("lp", partitions=2)
        results = []
        lock = threading.Lock()

        def poll(path):
            try:
                r = srv.request("GET", path, timeout=harness.scaled(40))
            except Exception as e:  # connection closed by the shutdown
                r = e
            with lock:
                results.append(r)

        paths = ["/stream/lp/consume/c%d?wait_ms=30000" % i for i in range(4)] + \
                ["/stream/lp/consume/p?partition=1&wait_ms=30000"]
        threads = [harness.thread(poll, p) for p in paths]
        time.sleep(0.3)  # let the polls park
        t0 = time.monotonic()
        code = srv.terminate()
        elapsed = time.monotonic() - t0
        self.assertEqual(code, 0, srv.log_tail())
        self.assertLess(elapsed, harness.scaled(10), "shutdown waited for the long polls")
        for t in threads:
            t.join(harness.scaled(10))
            self.assertFalse(t.is_alive(), "a long poll was left hanging after shutdown")
        for r in results:
            if isinstance(r, tuple):
                self.assertIn(r[0], (200, 503), r)
                if r[0] == 200:
                    self.assertEqual(r[1], [])
                else:
                    self.assertEqual(r[1]["error"], "shutting_down")


if __name__ == "__main__":
    unittest.main()
