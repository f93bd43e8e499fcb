"""Consumer groups across kill -9, and the exactly-the-set runs: N events
(env STREAMD_GROUP_EVENTS, default 100000) on 4 partitions consumed by 4
keep-alive consumer threads with range acks, one of which stops abruptly,
in partitioned and shared mode, without and with a crash of the server."""

import http.client
import json
import os
import threading
import time
import unittest

import harness
from harness import Server, poll_until, scaled, short
from test_groups import G, committed, lags, po, publish_batch, SLACK

N_EVENTS = int(os.environ.get("STREAMD_GROUP_EVENTS", "100000"))


class CrashBase(unittest.TestCase):

    def new_server(self, *args, **kw):
        srv = Server(*args, **kw)
        self.addCleanup(srv.cleanup)
        return srv.start()


class GroupDurabilityTest(CrashBase):

    # ---- 8. durability --------------------------------------------------------------------

    def test_08a_explicit_acks_survive_kill_9(self):
        ato = int(scaled(1500))
        srv = self.new_server()
        srv.create("d", partitions=2)
        publish_batch(self, srv, "d", [{"event": "e", "data": {"p": p, "n": n}, "partition": p}
                                       for n in range(10) for p in range(2)])
        g = G(self, srv, "d", "g").create(ack="explicit", ack_timeout_ms=ato, session_timeout_ms=60000)
        got = g.consume("a", limit=100)
        self.assertEqual(sorted(po(got)), [(p, o) for p in range(2) for o in range(10)])
        self.assertEqual(g.ack([{"partition": 0, "from": 0, "to": 5}], consumer="a"), 6)
        self.assertEqual(g.ack({"partition": 0, "offset": 7}, consumer="a"), 1)
        self.assertEqual(g.ack([{"partition": 1, "from": 0, "to": 9}], consumer="a"), 10)
        before = g.info()
        self.assertEqual(before["pending_messages"], 3)
        self.assertEqual(committed(before), {0: 6, 1: 10})
        srv.kill()
        srv.start()
        t_up = time.monotonic()
        after = g.info()
        self.assertEqual(after["pending_messages"], 3, after)
        self.assertEqual(committed(after), {0: 6, 1: 10}, after)
        self.assertEqual(lags(after), {0: 4, 1: 0}, after)
        self.assertEqual((after["mode"], after["ack"], after["ack_timeout_ms"]), ("shared", "explicit", ato))
        # The unacked ones (0:6, 0:8, 0:9) come back (at the latest once their
        # ack timeout passes); nothing acked does.  The consumer keeps polling.
        seen = []

        def redelivered():
            seen.extend(g.consume("a", limit=100))
            return len(seen) >= 3

        try:
            poll_until(redelivered, ato / 1000.0 + scaled(3), interval=0.02,
                       what="redelivery of the unacked events after the restart")
        except AssertionError as ex:
            self.fail("%s: got %s; info %s" % (ex, po(seen), short(g.info(), 500)))
        t_re = time.monotonic()
        self.assertEqual(sorted(po(seen)), [(0, 6), (0, 8), (0, 9)], "acked events delivered again after restart")
        self.assertTrue(all(e["deliveries"] >= 2 for e in seen), seen)
        self.assertLessEqual(t_re - t_up, ato / 1000.0 + 0.1 + scaled(SLACK) + 0.05)
        self.assertEqual(g.ack([{"partition": 0, "from": 0, "to": 9}], consumer="a"), 3)
        self.assertEqual(g.consume("a", limit=100), [])
        info = g.info()
        self.assertEqual((info["pending_messages"], committed(info)), (0, {0: 10, 1: 10}))

    def test_08b_unacked_redelivered_after_restart_to_anonymous_consumer(self):
        ato = int(scaled(500))
        srv = self.new_server()
        srv.create("d")
        publish_batch(self, srv, "d", [{"event": "e", "data": n} for n in range(4)])
        g = G(self, srv, "d", "g").create(ack="explicit", ack_timeout_ms=ato)
        self.assertEqual(len(g.consume(limit=100)), 4)
        self.assertEqual(g.ack([{"partition": 0, "from": 0, "to": 1}]), 2)
        srv.kill()
        srv.start()
        seen = []
        try:
            poll_until(lambda: seen.extend(g.consume(limit=100)) or seen, ato / 1000.0 + scaled(3),
                       what="redelivery of 2 and 3 after the restart")
        except AssertionError as ex:
            self.fail("%s; info %s" % (ex, short(g.info(), 500)))
        self.assertEqual(po(seen), [(0, 2), (0, 3)])

    def test_08d_partitioned_key_order_kept_across_kill_9(self):
        """One partition, one consumer: events pending at the crash must be
        processed again before later events of the same key."""
        ato = int(scaled(1500))
        srv = self.new_server()
        srv.create("o")
        g = G(self, srv, "o", "g").create(mode="partitioned", ack="explicit", ack_timeout_ms=ato,
                                           session_timeout_ms=60000)
        self.assertEqual(g.consume("a"), [])
        publish_batch(self, srv, "o", [{"event": "e", "data": n, "partition_key": "k"} for n in range(5)])
        self.assertEqual(po(g.consume("a", limit=5)), [(0, o) for o in range(5)])
        self.assertEqual(g.ack({"partition": 0, "offset": 0}, consumer="a"), 1)  # answered after a sync
        publish_batch(self, srv, "o", [{"event": "e", "data": n, "partition_key": "k"} for n in range(5, 10)])
        srv.kill()
        srv.start()
        order = []

        def all_seen():
            batch = g.consume("a", limit=100)
            order.extend(e["offset"] for e in batch)
            if batch:
                g.ack([{"partition": 0, "offset": e["offset"]} for e in batch], consumer="a")
            return set(order) >= set(range(1, 10))

        poll_until(all_seen, ato / 1000.0 + scaled(3), what="offsets 1..9 after the restart")
        self.assertNotIn(0, order, "offset 0 was acked before the crash")
        self.assertEqual(order, list(range(1, 10)),
                         "key 'k' processed out of offset order after kill -9 (1..4 were pending at the crash)")

    def test_08c_auto_mode_and_group_lifecycle_survive_kill_9(self):
        srv = self.new_server()
        srv.create("a1")
        srv.create("a4", partitions=4)
        publish_batch(self, srv, "a1", [{"event": "e", "data": n} for n in range(30)])
        publish_batch(self, srv, "a4", [{"event": "e", "data": n, "partition": n % 4} for n in range(40)])
        g1 = G(self, srv, "a1", "g").create()
        g4 = G(self, srv, "a4", "g").create(mode="partitioned", session_timeout_ms=60000)
        gone = G(self, srv, "a1", "gone").create()
        kept = G(self, srv, "a1", "kept").create(ack="explicit", mode="partitioned", start="latest",
                                                  ack_timeout_ms=1234, max_deliveries=7, session_timeout_ms=4321)
        self.assertEqual(gone.delete(), (200, {"success": True}))
        self.assertEqual(po(g1.consume("x", limit=10)), [(0, i) for i in range(10)])
        self.assertEqual(po(g1.consume(limit=10)), [(0, i) for i in range(10, 20)])
        first4 = g4.consume("x", limit=25)
        self.assertEqual(len(first4), 25)
        srv.kill()
        srv.start()
        self.assertEqual(srv.get("/stream/a1/groups")[1], {"groups": ["g", "kept"]})
        info = kept.info()
        self.assertEqual((info["mode"], info["ack"], info["ack_timeout_ms"], info["max_deliveries"],
                          info["session_timeout_ms"]), ("partitioned", "explicit", 1234, 7, 4321))
        self.assertEqual(committed(info), {0: 30}, "start=latest kept")
        self.assertEqual(committed(g1.info()), {0: 20})
        rest = g1.consume("y", limit=100)
        self.assertEqual(po(rest), [(0, i) for i in range(20, 30)], "auto mode delivered events again after kill -9")
        rest4 = []
        while True:
            b = g4.consume("x", limit=100)
            if not b:
                break
            rest4 += b
        self.assertFalse(set(po(first4)) & set(po(rest4)), "auto mode delivered events again after kill -9")
        self.assertEqual(sorted(po(first4 + rest4)), sorted((n % 4, n // 4) for n in range(40)))


# ---- 11. exactly the set ----------------------------------------------------------------


class Run:
    """Shared state of one exactly-the-set run."""

    def __init__(self, test, srv, stream, group, partitioned, abandon_at, wait_ms):
        self.t, self.srv, self.stream, self.group = test, srv, stream, group
        self.partitioned = partitioned
        self.abandon_at = abandon_at
        self.wait_ms = wait_ms
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.up = threading.Event()
        self.up.set()
        self.base = srv.starts       # epoch = starts since the run began (0: before the crash)
        self.acked_total = 0         # sum of "acked" of answered acks
        self.deliveries = []         # (epoch, consumer, partition, offset, deliveries)
        self.acks_ok = []            # (epoch, consumer, [(p, o), ...]) answered 200
        self.acks_uncertain = []     # (epoch, consumer, [(p, o), ...]) no answer (server killed)
        self.abandoned = []          # the (p, o) the stopped consumer never acked
        # Crash runs: one consumer holds a batch unacked across the crash
        # (as if it crashed too), so that pending events exist at the kill.
        self.hold = threading.Event()
        self.held = None
        self.held_ev = threading.Event()
        self.restarted = threading.Event()
        self.errors = []


def ranges(batch):
    """Contiguous runs per partition: [{"partition","from","to"}]."""
    by = {}
    for e in batch:
        by.setdefault(e["partition"], []).append(e["offset"])
    out = []
    for p, offs in sorted(by.items()):
        offs.sort()
        lo = prev = offs[0]
        for o in offs[1:]:
            if o != prev + 1:
                out.append({"partition": p, "from": lo, "to": prev})
                lo = o
            prev = o
        out.append({"partition": p, "from": lo, "to": prev})
    return out


class Worker(threading.Thread):
    def __init__(self, run, name, abandon=False):
        super().__init__(daemon=True)
        self.run_, self.name_, self.abandon = run, name, abandon
        self.conn, self.conn_epoch = None, None

    def call(self, method, path, body=None):
        if self.conn is None:
            self.conn_epoch = self.run_.srv.starts - self.run_.base
            self.conn = http.client.HTTPConnection("127.0.0.1", self.run_.srv.port, timeout=harness.scaled(30))
        hdrs = {"Content-Type": "application/json"} if body is not None else {}
        self.conn.request(method, path, body=None if body is None else json.dumps(body), headers=hdrs)
        r = self.conn.getresponse()
        data = r.read()
        return r.status, json.loads(data)

    def drop(self):
        if self.conn is not None:
            self.conn.close()
        self.conn = None
        # Wait until the server is back (the main thread restarts it).
        self.run_.up.wait(harness.scaled(60))

    def run(self):
        try:
            self.loop()
        except Exception as ex:  # reported by the main thread
            with self.run_.lock:
                self.run_.errors.append("%s: %r" % (self.name_, ex))
        finally:
            if self.conn is not None:
                self.conn.close()

    def loop(self):
        r = self.run_
        gpath = "/stream/%s/group/%s" % (r.stream, r.group)
        cpath = gpath + "/consume?consumer=%s&limit=200&wait_ms=%d" % (self.name_, r.wait_ms)
        while not r.stop.is_set():
            try:
                st, batch = self.call("GET", cpath)
            except (OSError, http.client.HTTPException):
                self.drop()
                continue
            if st != 200:
                raise AssertionError("consume -> %d %s" % (st, short(batch)))
            epoch = self.conn_epoch
            with r.lock:
                for e in batch:
                    r.deliveries.append((epoch, self.name_, e["partition"], e["offset"], e["deliveries"], e["data"]))
            if not batch:
                continue
            if self.abandon and r.acked_total >= r.abandon_at:
                with r.lock:
                    r.abandoned = po(batch)
                return  # stops polling, never acks this batch
            items = po(batch)
            if r.hold.is_set() and not self.abandon:
                with r.lock:
                    take = r.held is None
                    if take:
                        r.held = (self.name_, items)
                if take:
                    r.held_ev.set()
                    r.restarted.wait(harness.scaled(60))  # forgets the batch: never acks it
                    self.drop()
                    continue
            try:
                st, body = self.call("POST", gpath + "/ack", {"consumer": self.name_, "acks": ranges(batch)})
            except (OSError, http.client.HTTPException):
                with r.lock:
                    r.acks_uncertain.append((epoch, self.name_, items))
                self.drop()
                continue
            if st != 200:
                raise AssertionError("ack -> %d %s" % (st, short(body)))
            with r.lock:
                r.acked_total += body["acked"]
                r.acks_ok.append((self.conn_epoch, self.name_, items))


class ExactlyTheSetTest(CrashBase):
    PARTITIONS = 4
    KEYS = 64

    def publish_all(self, srv, stream):
        keyof = {}
        for start in range(0, N_EVENTS, 1000):
            evs = []
            for i in range(start, min(N_EVENTS, start + 1000)):
                k = "k%d" % (i % self.KEYS)
                evs.append({"event": "x", "data": {"i": i, "k": k}, "partition_key": k})
            for (p, o), ev in zip(publish_batch(self, srv, stream, evs), evs):
                keyof[(p, o)] = ev["data"]["k"]
        self.assertEqual(len(keyof), N_EVENTS)
        self.assertEqual({p for p, _ in keyof}, set(range(self.PARTITIONS)))
        return keyof

    def exactly_the_set(self, mode, crash):
        srv = self.new_server()
        stream, group = "ets", "g"
        srv.create(stream, partitions=self.PARTITIONS)
        keyof = self.publish_all(srv, stream)
        ato, sto = int(scaled(4000)), int(scaled(1000))
        g = G(self, srv, stream, group).create(mode=mode, ack="explicit", ack_timeout_ms=ato, session_timeout_ms=sto)
        run = Run(self, srv, stream, group, mode == "partitioned", abandon_at=N_EVENTS // 4, wait_ms=100)
        workers = [Worker(run, "c%d" % i, abandon=(i == 3)) for i in range(4)]
        for w in workers:
            w.start()
        t_start = time.monotonic()
        budget = scaled(120) * max(1, N_EVENTS / 20000)
        if crash:
            poll_until(lambda: run.acked_total >= N_EVENTS // 2 or run.errors, budget,
                       what="half of the events acked")
            run.hold.set()
            poll_until(lambda: run.held_ev.is_set() or run.errors, budget, what="a consumer to hold a batch")
            # A durable answer (a group create waits for the stream's sync):
            # the held batch's delivery is in the synced groups.log too.
            G(self, srv, stream, "sync-probe").create()
            run.up.clear()
            srv.kill()  # other requests in flight
            srv.start()
            run.restarted.set()
            run.up.set()

        def done():
            if run.errors:
                return True
            info = g.info()
            ends = {p["partition"]: p["committed_offset"] + p["lag"] for p in info["partitions"]}
            return info["pending_messages"] == 0 and all(p["lag"] == 0 for p in info["partitions"]) and \
                sum(ends.values()) == N_EVENTS

        try:
            poll_until(done, budget, interval=0.05, what="every event acked")
        finally:
            run.stop.set()
            for w in workers:
                w.join(scaled(30))
        self.assertEqual(run.errors, [])
        self.assertFalse(any(w.is_alive() for w in workers))
        elapsed = time.monotonic() - t_start
        info = g.info()
        self.assertEqual(info["pending_messages"], 0, info)
        self.assertEqual(info["dead_messages"], 0, info)
        self.verify(run, keyof, crash, info, elapsed)
        srv.stop()

    def verify(self, run, keyof, crash, info, elapsed):
        allset = set(keyof)
        delivered = {}
        for epoch, c, p, o, n, data in run.deliveries:
            delivered.setdefault((p, o), []).append((epoch, c, n))
            self.assertEqual(data["k"], keyof[(p, o)], "wrong event at %d:%d" % (p, o))
        self.assertEqual(set(delivered) - allset, set(), "delivered offsets that were never published")
        missing = allset - set(delivered)
        self.assertEqual(missing, set(), "%d events never delivered, e.g. %s" % (len(missing), sorted(missing)[:10]))
        self.assertTrue(run.abandoned, "the abrupt consumer never stopped (no batch after %d acks)" % run.abandon_at)
        abandoned = set(run.abandoned)
        # Redelivered: the abandoned batch, and with a crash what was not
        # acked (answered) before it.
        acked_before = set()
        if crash:
            for epoch, c, items in run.acks_ok:
                if epoch == 0:
                    acked_before.update(items)
        allowed_dups = set(abandoned)
        if run.held:
            # (redelivered before the crash if the holder's session ran out first)
            allowed_dups |= set(run.held[1])
        if crash:
            allowed_dups |= {po_ for po_, ds in delivered.items() if any(d[0] == 0 for d in ds)} - acked_before
        dups = {k: v for k, v in delivered.items() if len(v) > 1}
        bad = {k: v for k, v in dups.items() if k not in allowed_dups}
        self.assertEqual(bad, {}, "%d events delivered more than once without a reason, e.g. %s"
                         % (len(bad), short(sorted(bad.items())[:5], 600)))
        if crash:
            again = sorted(k for k, ds in delivered.items() if k in acked_before and any(d[0] >= 1 for d in ds))
            self.assertEqual(again, [], "%d events acked (200) before the crash were delivered again after it, "
                             "e.g. %s" % (len(again), again[:10]))
        if crash:
            self.assertTrue(run.held, "no consumer held a batch across the crash")
            for k in run.held[1]:
                self.assertGreater(len(delivered[k]), 1,
                                   "%s, delivered before the crash and never acked, was not redelivered" % (k,))
        for k in abandoned:
            later = delivered[k][1:]
            self.assertTrue(later, "abandoned event %s never redelivered" % (k,))
            self.assertGreaterEqual(max(n for _, _, n in later), 2, (k, delivered[k]))
        # Settlements counted with "acked": exactly N (minus, after a
        # crash, events whose unanswered ack took effect: those never came back).
        settled_unanswered = set()
        if crash:
            for epoch, c, items in run.acks_uncertain:
                for k in items:
                    if not any(d[0] >= 1 for d in delivered[k]) and k not in acked_before:
                        settled_unanswered.add(k)
        self.assertEqual(run.acked_total + len(settled_unanswered), N_EVENTS,
                         "sum of acked %d (+%d settled by unanswered acks) != %d events"
                         % (run.acked_total, len(settled_unanswered), N_EVENTS))
        ends = {p["partition"]: p["committed_offset"] for p in info["partitions"]}
        counts = {}
        for p, _ in keyof:
            counts[p] = counts.get(p, 0) + 1
        self.assertEqual(ends, counts, info)
        if run.partitioned:
            # Each consumer processed (acked, answered) each key's events in offset order.
            last = {}
            for epoch, c, items in run.acks_ok:
                for (p, o) in items:
                    key = (c, keyof[(p, o)])
                    self.assertGreater(o, last.get(key, -1),
                                       "consumer %s processed key %s out of order: %d:%d after offset %d"
                                       % (c, keyof[(p, o)], p, o, last.get(key, -1)))
                    last[key] = o
            # And each event was delivered to the owner of its partition
            # only: no two consumers held one partition at once (checked
            # by the order above per consumer; here: per epoch, a key's
            # deliveries by consumer never interleave).
            for k in set(keyof.values()):
                seq = [(c, o) for epoch, c, p, o, n, data in run.deliveries if keyof[(p, o)] == k]
                owners = [c for c, _ in seq]
                switches = sum(1 for a, b in zip(owners, owners[1:]) if a != b)
                self.assertLessEqual(switches, 8, "key %s bounced between consumers: %s" % (k, short(owners, 400)))

    def test_11a_partitioned(self):
        self.exactly_the_set("partitioned", crash=False)

    def test_11b_shared(self):
        self.exactly_the_set("shared", crash=False)

    def test_11c_partitioned_with_kill_9(self):
        self.exactly_the_set("partitioned", crash=True)

    def test_11d_shared_with_kill_9(self):
        self.exactly_the_set("shared", crash=True)


if __name__ == "__main__":
    unittest.main()
