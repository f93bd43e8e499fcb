"""Consume by offset: paging, negative offsets, partitions, merging, long
polls, parameter validation, consumer positions."""

import threading
import time
import unittest

import harness
from harness import ServerTestCase


def wait_clock_tick(ms=3):
    """Let the wall clock move on by `ms` milliseconds so that the next
    event gets a strictly later timestamp."""
    end = harness.now_ms() + ms
    while harness.now_ms() < end:
        time.sleep(0.001)


class ConsumeTest(ServerTestCase):

    def _stream(self, n, partitions=1):
        s = self.sname()
        self.server.create(s, partitions=partitions)
        if n:
            st, body = self.server.post("/stream/%s/publish" % s,
                                        [{"event": "e", "data": i} for i in range(n)])
            self.assertEqual(st, 200, body)
        return s

    def offsets(self, events):
        return [e["offset"] for e in events]

    def test_from_offset_and_limit(self):
        s = self._stream(25)
        _, ev = self.server.consume(s)
        self.assertEqual(self.offsets(ev), list(range(10)), "default limit is 10, from 0")
        self.assertEqual([e["data"] for e in ev], list(range(10)))
        for e in ev:
            self.assertEqual(set(e) >= {"offset", "partition", "event", "data", "timestamp"}, True, e)
            self.assertEqual(e["partition"], 0)
        _, ev = self.server.consume(s, from_offset=20)
        self.assertEqual(self.offsets(ev), [20, 21, 22, 23, 24])
        _, ev = self.server.consume(s, from_offset=5, limit=3)
        self.assertEqual(self.offsets(ev), [5, 6, 7])
        _, ev = self.server.consume(s, limit=1)
        self.assertEqual(self.offsets(ev), [0])
        _, ev = self.server.consume(s, from_offset=24, limit=100)
        self.assertEqual(self.offsets(ev), [24])
        _, ev = self.server.consume(s, partition=0, limit=100)
        self.assertEqual(self.offsets(ev), list(range(25)))
        ts = [e["timestamp"] for e in ev]
        self.assertEqual(ts, sorted(ts))

    def test_offset_past_end_is_empty(self):
        s = self._stream(3)
        for off in (3, 4, 1000, 2 ** 53):
            st, ev = self.server.consume(s, from_offset=off)
            self.assertEqual((st, ev), (200, []), off)
        e = self._stream(0)
        self.assertEqual(self.server.consume(e)[1], [])
        self.assertEqual(self.server.consume(e, from_offset=-5)[1], [])

    def test_negative_from_offset(self):
        s = self._stream(25)
        _, ev = self.server.consume(s, from_offset=-3)
        self.assertEqual(self.offsets(ev), [22, 23, 24])
        _, ev = self.server.consume(s, from_offset=-1)
        self.assertEqual(self.offsets(ev), [24])
        _, ev = self.server.consume(s, from_offset=-100, limit=100)
        self.assertEqual(self.offsets(ev), list(range(25)))
        _, ev = self.server.consume(s, from_offset=-3, limit=2)
        self.assertEqual(self.offsets(ev), [22, 23])

    def test_limit_clamped_to_10000(self):
        s = self.sname()
        self.server.create(s)
        st, body = self.server.post("/stream/%s/publish" % s, [{"event": "e", "data": i} for i in range(10000)])
        self.assertEqual(st, 200, body)
        st, body = self.server.post("/stream/%s/publish" % s, [{"event": "e", "data": i} for i in range(5)])
        self.assertEqual(st, 200, body)
        _, ev = self.server.consume(s, limit=20000)
        self.assertEqual(len(ev), 10000)
        self.assertEqual(self.offsets(ev), list(range(10000)))
        _, ev = self.server.consume(s, limit=10 ** 12)
        self.assertEqual(len(ev), 10000)
        _, ev = self.server.consume(s, from_offset=10000, limit=10000)
        self.assertEqual(self.offsets(ev), list(range(10000, 10005)))

    def test_partition_param(self):
        s = self.sname()
        self.server.create(s, partitions=2)
        for i in range(6):
            self.server.publish(s, {"event": "e", "data": i, "partition": 1 if i % 3 else 0})
        _, p0 = self.server.consume(s, partition=0)
        _, p1 = self.server.consume(s, partition=1)
        self.assertEqual([(e["partition"], e["offset"], e["data"]) for e in p0], [(0, 0, 0), (0, 1, 3)])
        self.assertEqual([(e["partition"], e["offset"], e["data"]) for e in p1],
                         [(1, 0, 1), (1, 1, 2), (1, 2, 4), (1, 3, 5)])
        _, p1 = self.server.consume(s, partition=1, from_offset=2)
        self.assertEqual([e["data"] for e in p1], [4, 5])
        _, p1 = self.server.consume(s, partition=1, from_offset=-1)
        self.assertEqual([e["data"] for e in p1], [5])
        # A one-partition stream accepts partition=0.
        one = self._stream(2)
        self.assertEqual(self.offsets(self.server.consume(one, partition=0)[1]), [0, 1])

    def test_merged_read_in_timestamp_order(self):
        s = self.sname()
        self.server.create(s, partitions=3)
        # Partition order differs from time order.
        order = [2, 0, 1, 1, 2, 0]
        for i, p in enumerate(order):
            self.server.publish(s, {"event": "m", "data": i, "partition": p})
            wait_clock_tick()
        _, ev = self.server.consume(s, limit=100)
        self.assertEqual([e["data"] for e in ev], list(range(6)))
        self.assertEqual([e["partition"] for e in ev], order)
        # from_offset applies to each partition.
        _, ev = self.server.consume(s, from_offset=1, limit=100)
        self.assertEqual([e["data"] for e in ev], [3, 4, 5])
        # limit cuts the merged sequence.
        _, ev = self.server.consume(s, limit=2)
        self.assertEqual([e["data"] for e in ev], [0, 1])
        # -N: the N most recent events of the whole stream, oldest first.
        _, ev = self.server.consume(s, from_offset=-4, limit=100)
        self.assertEqual([e["data"] for e in ev], [2, 3, 4, 5])
        _, ev = self.server.consume(s, from_offset=-1)
        self.assertEqual([e["data"] for e in ev], [5])

    def test_merged_read_many_events_with_ties(self):
        s = self.sname()
        self.server.create(s, partitions=3)
        for chunk in range(4):
            st, body = self.server.post("/stream/%s/publish" % s, [{"event": "t", "data": [chunk, i]}
                                                                   for i in range(15)])
            self.assertEqual(st, 200, body)
        _, ev = self.server.consume(s, limit=1000)
        self.assertEqual(len(ev), 60)
        keys = [(e["timestamp"], e["partition"]) for e in ev]
        self.assertEqual(keys, sorted(keys), "merged read must be in (timestamp, partition) order")
        for p in range(3):
            offs = [e["offset"] for e in ev if e["partition"] == p]
            self.assertEqual(offs, list(range(20)), p)
        self.assertEqual(sorted(tuple(e["data"]) for e in ev), sorted((c, i) for c in range(4) for i in range(15)))

    def test_invalid_parameters(self):
        s = self._stream(3, partitions=2)
        cases = [("limit", "0"), ("limit", "-1"), ("limit", "abc"), ("limit", "1.5"), ("limit", ""),
                 ("limit", "10x"), ("from_offset", "abc"), ("from_offset", "1.5"), ("from_offset", "--1"),
                 ("from_offset", ""), ("wait_ms", "-1"), ("wait_ms", "abc"), ("wait_ms", "2.5"),
                 ("partition", "5"), ("partition", "2"), ("partition", "-1"), ("partition", "abc"),
                 ("partition", "")]
        for name, value in cases:
            resp = self.server.get("/stream/%s/consume/c?%s=%s" % (s, name, value))
            with self.subTest(param=name, value=value):
                self.assertParamError(resp, name)
        one = self._stream(1)
        self.assertParamError(self.server.get("/stream/%s/consume/c?partition=1" % one), "partition")
        # A huge number must not wrap around into something valid-looking.
        for name in ("from_offset", "limit", "wait_ms", "partition"):
            st, body = self.server.get("/stream/%s/consume/c?%s=99999999999999999999999" % (one, name))
            self.assertIn(st, (200, 400), body)
            if name == "partition":
                self.assertEqual(st, 400, body)
            if name == "from_offset" and st == 200:
                self.assertEqual(body, [])

    def test_unknown_stream(self):
        self.assertError(self.server.get("/stream/%s/consume/c" % self.sname()), 404, "stream_not_found")
        self.assertError(self.server.get("/stream/%s/consume/c?wait_ms=100" % self.sname()),
                         404, "stream_not_found")

    # ---- long poll ------------------------------------------------------------

    def test_long_poll_wakes_on_publish(self):
        s = self._stream(2)
        def publish_later():
            time.sleep(0.3)  # let the poll park first; it would also pass (trivially fast) if it had not
            self.server.publish(s, {"event": "late", "data": "hello"})
        t = harness.thread(publish_later)
        t0 = time.monotonic()
        st, ev = self.server.consume(s, from_offset=2, wait_ms=10000)
        elapsed = time.monotonic() - t0
        t.join()
        self.assertEqual(st, 200)
        self.assertEqual([(e["offset"], e["event"], e["data"]) for e in ev], [(2, "late", "hello")])
        self.assertGreaterEqual(elapsed, 0.25)
        self.assertLess(elapsed, 5.0, "long poll answered only after %.2fs" % elapsed)

    def test_long_poll_deadline_returns_empty(self):
        s = self._stream(1)
        t0 = time.monotonic()
        st, ev = self.server.consume(s, from_offset=1, wait_ms=500)
        elapsed = time.monotonic() - t0
        self.assertEqual((st, ev), (200, []))
        self.assertGreaterEqual(elapsed, 0.45)
        self.assertLess(elapsed, 0.5 + harness.scaled(3))

    def test_long_poll_returns_at_once_when_data_exists(self):
        s = self._stream(3)
        t0 = time.monotonic()
        _, ev = self.server.consume(s, from_offset=1, wait_ms=30000)
        self.assertEqual(self.offsets(ev), [1, 2])
        self.assertLess(time.monotonic() - t0, harness.scaled(3))
        # wait_ms above the 60000 cap is clamped, not refused.
        _, ev = self.server.consume(s, from_offset=0, wait_ms=600000)
        self.assertEqual(self.offsets(ev), [0, 1, 2])

    def test_long_poll_partition_filter(self):
        s = self._stream(0, partitions=2)
        def publish_later():
            time.sleep(0.2)
            self.server.publish(s, {"event": "p0", "data": 0, "partition": 0})
            time.sleep(0.4)
            self.server.publish(s, {"event": "p1", "data": 1, "partition": 1})
        t = harness.thread(publish_later)
        t0 = time.monotonic()
        _, ev = self.server.consume(s, partition=1, wait_ms=10000)
        elapsed = time.monotonic() - t0
        t.join()
        self.assertEqual([(e["partition"], e["event"]) for e in ev], [(1, "p1")],
                         "a publish to partition 0 must not end a poll on partition 1 with other data")
        self.assertGreaterEqual(elapsed, 0.5)
        self.assertLess(elapsed, 5.0)

    def test_long_poll_merged_wakes_on_any_partition(self):
        s = self._stream(0, partitions=3)
        t = harness.thread(lambda: (time.sleep(0.3), self.server.publish(s, {"event": "x", "data": 1, "partition": 2})))
        t0 = time.monotonic()
        _, ev = self.server.consume(s, wait_ms=10000)
        elapsed = time.monotonic() - t0
        t.join()
        self.assertEqual([(e["partition"], e["offset"]) for e in ev], [(2, 0)])
        self.assertLess(elapsed, 5.0)

    def test_many_concurrent_long_polls(self):
        s = self._stream(0)
        results = [None] * 20
        def poll(i):
            results[i] = self.server.consume(s, wait_ms=10000)
        threads = [harness.thread(poll, i) for i in range(20)]
        time.sleep(0.3)
        t0 = time.monotonic()
        self.server.publish(s, {"event": "all", "data": 1})
        for t in threads:
            t.join(harness.scaled(10))
        self.assertLess(time.monotonic() - t0, 5.0)
        for r in results:
            self.assertEqual(r[0], 200)
            self.assertEqual([e["event"] for e in r[1]], ["all"])

    def test_long_poll_ends_when_stream_deleted(self):
        s = self._stream(0)
        t = harness.thread(lambda: (time.sleep(0.3), self.server.delete("/stream/" + s)))
        t0 = time.monotonic()
        st, body = self.server.get("/stream/%s/consume/c?wait_ms=20000" % s)
        elapsed = time.monotonic() - t0
        t.join()
        self.assertLess(elapsed, 5.0, "a poll on a deleted stream must end")
        self.assertIn(st, (404, 410), body)
        self.assertIn(body["error"], ("stream_not_found", "stream_deleted"))

    # ---- consumers ------------------------------------------------------------

    def test_consumers_positions(self):
        s = self._stream(5)
        st, body = self.server.get("/stream/%s/consumers" % s)
        self.assertEqual((st, body), (200, {"consumers": []}))
        t0 = harness.now_ms()
        self.server.consume(s, consumer="reader-1", limit=3)
        self.server.consume(s, consumer="reader-2", limit=100)
        t1 = harness.now_ms()
        _, body = self.server.get("/stream/%s/consumers" % s)
        got = {c["consumer"]: c for c in body["consumers"]}
        self.assertEqual(set(got), {"reader-1", "reader-2"}, body)
        r1, r2 = got["reader-1"], got["reader-2"]
        self.assertEqual((r1["partition"], r1["offset"], r1["lag"]), (0, 2, 2), r1)
        self.assertEqual((r2["partition"], r2["offset"], r2["lag"]), (0, 4, 0), r2)
        for c in (r1, r2):
            self.assertIsInstance(c["last_seen"], int)
            self.assertTrue(t0 - 1000 <= c["last_seen"] <= t1 + 1000, (t0, c, t1))
        # Reading on moves the position; a publish grows the lag.
        self.server.consume(s, consumer="reader-1", from_offset=3, limit=1)
        self.server.publish(s, {"event": "e", "data": 5})
        _, body = self.server.get("/stream/%s/consumers" % s)
        got = {c["consumer"]: c for c in body["consumers"]}
        self.assertEqual((got["reader-1"]["offset"], got["reader-1"]["lag"]), (3, 2))
        self.assertEqual((got["reader-2"]["offset"], got["reader-2"]["lag"]), (4, 1))
        self.assertGreaterEqual(got["reader-1"]["last_seen"], r1["last_seen"])

    def test_consumers_per_partition(self):
        s = self.sname()
        self.server.create(s, partitions=2)
        for i in range(4):
            self.server.publish(s, {"event": "e", "data": i, "partition": i % 2})
        self.server.consume(s, consumer="only-p1", partition=1, limit=1)
        self.server.consume(s, consumer="merged", limit=100)
        _, body = self.server.get("/stream/%s/consumers" % s)
        rows = sorted((c["consumer"], c["partition"], c["offset"], c["lag"]) for c in body["consumers"])
        self.assertEqual(rows, [("merged", 0, 1, 0), ("merged", 1, 1, 0), ("only-p1", 1, 0, 1)])


if __name__ == "__main__":
    unittest.main()
