"""Retention by count and by bytes with small segments."""

import time
import unittest

import harness
from harness import ServerTestCase, poll_until

SEGMENT = 4096
PAD = "r" * 150  # ~200-byte records: about 20 per 4 KiB segment


class RetentionTest(ServerTestCase):
    SERVER_ARGS = ["--segment-bytes", str(SEGMENT), "--retention-check-ms", "100"]

    def fill(self, s, n, partition=None):
        for start in range(0, n, 100):
            batch = []
            for i in range(start, min(n, start + 100)):
                ev = {"event": "r", "data": {"i": i, "pad": PAD}}
                if partition is not None:
                    ev["partition"] = partition
                batch.append(ev)
            st, body = self.server.post("/stream/%s/publish" % s, batch)
            self.assertEqual(st, 200, body)

    def settled(self, s, cond, what):
        """Poll until cond(stats) holds and the stream's stats stay the same
        for several retention periods (retention has converged).  Returns
        the stats."""
        history = []

        def step():
            st = self.server.stats(s)
            key = [(p["min_offset"], p["max_offset"], p["message_count"]) for p in st["partitions"]]
            history.append((time.monotonic(), key))
            if not cond(st):
                return None
            same = [t for t, k in history if k == key]
            return st if same and history[-1][0] - same[0] >= 0.4 and all(
                k == key for t, k in history if t >= same[0]) else None
        return poll_until(step, harness.scaled(20), interval=0.05, what=what)

    def check_consistent(self, s, expect_max):
        info = self.server.info(s)
        mn, mx = info["min_offset"], info["max_offset"]
        self.assertGreater(mn, 0, "retention removed nothing: %r" % info)
        self.assertEqual(mx, expect_max)
        self.assertEqual(info["message_count"], mx - mn + 1, info)
        # Reading below the first retained offset is refused, not skipped.
        for below in (0, mn - 1):
            st, body = self.server.consume(s, from_offset=below, expect=None)
            self.assertEqual(st, 416, body)
            self.assertEqual(body["error"], "offset_out_of_range")
            self.assertEqual((body["min_offset"], body["max_offset"]), (mn, mx), body)
            self.assertTrue(body.get("message"))
        # Reading from min_offset gives everything, densely, with the right content.
        ev = self.server.consume_all(s, start=mn)
        self.assertEqual([e["offset"] for e in ev], list(range(mn, mx + 1)))
        self.assertEqual([e["data"]["i"] for e in ev], list(range(mn, mx + 1)))
        # -N larger than what is left starts at min_offset.
        _, ev = self.server.consume(s, from_offset=-(mx + 10), limit=1)
        self.assertEqual([e["offset"] for e in ev], [mn])
        return info

    def test_retention_by_max_events(self):
        s = self.sname()
        self.server.create(s, max_events=50)
        n = 600
        self.fill(s, n)
        self.settled(s, lambda st: st["min_offset"] >= n - 200, "retention by count to run and settle")
        info = self.check_consistent(s, n - 1)
        # Never removes the newest 50.
        self.assertGreaterEqual(info["message_count"], 50, info)
        stats = self.server.stats(s)
        self.assertEqual(stats["partitions"][0]["min_offset"], info["min_offset"])
        self.assertGreaterEqual(stats["partitions"][0]["message_count"], 50)
        # New events keep flowing and retention keeps up.
        self.fill(s, 300)
        poll_until(lambda: self.server.info(s)["min_offset"] >= n + 300 - 250, harness.scaled(15),
                   what="retention after more writes")
        info = self.server.info(s)
        self.assertEqual(info["max_offset"], n + 300 - 1)
        self.assertGreaterEqual(info["message_count"], 50)

    def test_retention_by_bytes(self):
        s = self.sname()
        limit = 3 * SEGMENT
        self.server.create(s, retention_bytes=limit)
        n = 500  # ~100 KB
        self.fill(s, n)
        self.settled(s, lambda st: st["partitions"][0]["bytes"] <= limit + 3 * SEGMENT,
                     "retention by bytes to run and settle")
        info = self.check_consistent(s, n - 1)
        self.assertGreater(info["min_offset"], 0)
        p = self.server.stats(s)["partitions"][0]
        # The newest events within the limit are kept: at least limit minus
        # one record's worth of bytes remains.
        self.assertGreaterEqual(p["bytes"], limit - 512, p)
        self.assertGreaterEqual(info["message_count"], limit // 400, info)

    def test_retention_per_partition(self):
        s = self.sname()
        self.server.create(s, partitions=2, max_events=30)
        self.fill(s, 400, partition=0)
        self.fill(s, 10, partition=1)
        stats = self.settled(s, lambda st: st["partitions"][0]["min_offset"] > 0, "retention on partition 0")
        parts = sorted(stats["partitions"], key=lambda p: p["partition"])
        self.assertEqual((parts[1]["min_offset"], parts[1]["max_offset"], parts[1]["message_count"]), (0, 9, 10))
        self.assertEqual(parts[0]["max_offset"], 399)
        self.assertGreaterEqual(parts[0]["message_count"], 30)
        st, body = self.server.consume(s, partition=0, from_offset=0, expect=None)
        self.assertEqual(st, 416, body)
        self.assertEqual(body["min_offset"], parts[0]["min_offset"])
        self.assertEqual(body["max_offset"], 399)
        _, ev = self.server.consume(s, partition=1, from_offset=0, limit=100)
        self.assertEqual(len(ev), 10)
        # The stream-level min is the minimum over partitions.
        self.assertEqual(self.server.info(s)["min_offset"], 0)

    def test_event_larger_than_a_segment(self):
        s = self.sname()
        self.server.create(s, max_events=5)
        sizes = [100, 10000, 50, 300000, 5000, 20, 9000]
        for i, n in enumerate(sizes):
            _, body = self.server.publish(s, {"event": "big", "data": {"i": i, "pad": "w" * n}})
            self.assertEqual(body["offset"], i)
        self.settled(s, lambda st: st["min_offset"] > 0, "retention")
        info = self.server.info(s)
        self.assertEqual(info["max_offset"], len(sizes) - 1)
        self.assertGreaterEqual(info["message_count"], 5)
        ev = self.server.consume_all(s, start=info["min_offset"])
        for e in ev:
            self.assertEqual(len(e["data"]["pad"]), sizes[e["offset"]])
        self.server.restart()
        self.assertEqual(self.server.consume_all(s, start=info["min_offset"]), ev)

    def test_unlimited_stream_keeps_everything(self):
        s = self.sname()
        self.server.create(s, retention_hours=0, retention_bytes=0, max_events=0)
        self.fill(s, 300)
        other = self.sname()
        self.server.create(other, max_events=10)
        self.fill(other, 300)
        # Wait until retention has visibly run (on the other stream) ...
        poll_until(lambda: self.server.info(other)["min_offset"] > 0, harness.scaled(15), what="retention pass")
        # ... then the unlimited stream must be untouched.
        info = self.server.info(s)
        self.assertEqual((info["min_offset"], info["max_offset"], info["message_count"]), (0, 299, 300))
        self.assertEqual(len(self.server.consume_all(s)), 300)

    def test_retention_state_survives_restart(self):
        s = self.sname()
        self.server.create(s, max_events=40)
        self.fill(s, 400)
        self.settled(s, lambda st: st["min_offset"] > 0, "retention")
        before = self.server.info(s)
        events = self.server.consume_all(s, start=before["min_offset"])
        self.server.restart()
        after = self.server.info(s)
        self.assertEqual(after["max_offset"], before["max_offset"])
        self.assertGreaterEqual(after["min_offset"], before["min_offset"])
        self.assertGreaterEqual(after["message_count"], 40)
        mine = [e for e in events if e["offset"] >= after["min_offset"]]
        self.assertEqual(self.server.consume_all(s, start=after["min_offset"]), mine)
        _, body = self.server.publish(s, {"event": "r", "data": {"i": 400, "pad": ""}})
        self.assertEqual(body["offset"], 400)


if __name__ == "__main__":
    unittest.main()
