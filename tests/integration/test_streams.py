"""Stream management: create, get-or-create, info, stats, list, delete, names."""

import http.client
import json
import os
import threading
import unittest

import harness
from harness import Server, ServerTestCase, poll_until


class StreamsTest(ServerTestCase):

    # ---- create -------------------------------------------------------------

    def test_post_create_response_and_conflict(self):
        s = self.sname()
        st, body = self.server.post("/stream/" + s, {"partitions": 3, "retention_hours": 48})
        self.assertEqual(st, 201, body)
        self.assertEqual(body["success"], True)
        self.assertEqual(body["stream"], s)
        self.assertEqual(body["partitions"], 3)
        self.assertEqual(body["retention_hours"], 48)
        self.assertError(self.server.post("/stream/" + s, {"partitions": 3, "retention_hours": 48}),
                         409, "stream_exists")
        self.assertError(self.server.post("/stream/" + s), 409, "stream_exists")
        info = self.server.info(s)
        self.assertEqual(info["partitions"], 3)
        self.assertEqual(info["retention_hours"], 48)

    def test_put_get_or_create(self):
        s = self.sname()
        cfg = {"partitions": 2, "retention_hours": 5, "retention_bytes": 100000, "max_events": 1000}
        st, body = self.server.put("/stream/" + s, cfg)
        self.assertEqual(st, 201, body)
        self.assertEqual(body["success"], True)
        self.assertEqual(body["stream"], s)
        self.assertIs(body["created"], True)
        gen = self.server.stats(s)["generation"]

        st, body = self.server.put("/stream/" + s, cfg)
        self.assertEqual(st, 200, body)
        self.assertIs(body["created"], False)
        self.assertEqual(body["stream"], s)

        # No body: nothing to differ from.
        st, body = self.server.put("/stream/" + s)
        self.assertEqual(st, 200, body)
        self.assertIs(body["created"], False)

        # Only some settings given, all equal to the stream's.
        st, body = self.server.put("/stream/" + s, {"partitions": 2})
        self.assertEqual(st, 200, body)
        self.assertIs(body["created"], False)

        for diff in ({"partitions": 3}, {"retention_hours": 6}, {"retention_bytes": 1},
                     {"max_events": 7}, dict(cfg, partitions=1)):
            self.assertError(self.server.put("/stream/" + s, diff), 409, "stream_config_mismatch")

        info = self.server.info(s)
        self.assertEqual((info["partitions"], info["retention_hours"], info["retention_bytes"], info["max_events"]),
                         (2, 5, 100000, 1000))
        self.assertEqual(self.server.stats(s)["generation"], gen, "get-or-create must not recreate")

    def test_put_without_body_creates_with_defaults(self):
        s = self.sname()
        st, body = self.server.put("/stream/" + s)
        self.assertEqual(st, 201, body)
        self.assertIs(body["created"], True)
        self.assertEqual(self.server.info(s)["partitions"], 1)

    def test_partitions_bounds(self):
        def check(resp, field):
            st, body = resp
            self.assertEqual(st, 400, (field, body))
            self.assertIn(body.get("error"), ("invalid_parameter", "invalid_json"), body)
            self.assertIn(field, body.get("message", ""), body)

        for bad in (0, 1025, -1, 100000, "2", 1.5, True):
            check(self.server.post("/stream/" + self.sname(), {"partitions": bad}), "partitions")
        for bad in ({"retention_hours": -1}, {"retention_bytes": "x"}, {"max_events": -5}):
            field = list(bad)[0]
            check(self.server.post("/stream/" + self.sname(), bad), field)
        check(self.server.put("/stream/" + self.sname(), {"partitions": 0}), "partitions")
        # None of these was created.
        streams = self.server.get("/stream/list")[1]["streams"]
        self.assertFalse([n for n in streams if n.startswith("test-partitions-bounds")], streams)
        s1 = self.sname()
        self.server.create(s1, partitions=1)
        self.assertEqual(self.server.info(s1)["partitions"], 1)
        big = self.sname()
        self.server.create(big, partitions=1024)
        stats = self.server.stats(big)
        self.assertEqual(stats["partition_count"], 1024)
        self.assertEqual([p["partition"] for p in stats["partitions"]], list(range(1024)))
        self.server.publish(big, {"event": "e", "data": 1, "partition": 1023})
        _, ev = self.server.consume(big, partition=1023)
        self.assertEqual([(e["partition"], e["offset"]) for e in ev], [(1023, 0)])
        st, _ = self.server.delete("/stream/" + big)
        self.assertEqual(st, 200)

    def test_malformed_create_body(self):
        self.assertError(self.server.post("/stream/" + self.sname(), '{"partitions": '), 400, "invalid_json")
        st, body = self.server.post("/stream/" + self.sname(), "[1,2]")
        self.assertEqual(st, 400, body)

    # ---- info / stats -----------------------------------------------------

    def test_info_and_stats_fields(self):
        s = self.sname()
        t0 = harness.now_ms()
        self.server.create(s, partitions=2, retention_hours=0, retention_bytes=0, max_events=0)
        t1 = harness.now_ms()
        info = self.server.info(s)
        expect_keys = {"name", "partitions", "retention_hours", "retention_bytes", "max_events", "message_count",
                       "min_offset", "max_offset", "created_at"}
        self.assertTrue(expect_keys <= set(info), info)
        self.assertEqual(info["name"], s)
        self.assertEqual(info["partitions"], 2)
        self.assertEqual((info["retention_hours"], info["retention_bytes"], info["max_events"]), (0, 0, 0))
        # Empty stream: max -1, min = next offset (0).
        self.assertEqual((info["message_count"], info["min_offset"], info["max_offset"]), (0, 0, -1))
        self.assertIsInstance(info["created_at"], int)
        self.assertTrue(t0 - 2000 <= info["created_at"] <= t1 + 2000, (t0, info["created_at"], t1))

        stats = self.server.stats(s)
        for p in stats["partitions"]:
            self.assertEqual((p["message_count"], p["min_offset"], p["max_offset"]), (0, 0, -1), p)

        for i in range(3):
            self.server.publish(s, {"event": "a", "data": i, "partition": 0})
        self.server.publish(s, {"event": "b", "data": "x", "partition": 1})
        info = self.server.info(s)
        self.assertEqual((info["message_count"], info["min_offset"], info["max_offset"]), (4, 0, 2))

        _, ev = self.server.consume(s, partition=0, limit=2)
        self.assertEqual(len(ev), 2)

        stats = self.server.stats(s)
        keys = {"name", "message_count", "min_offset", "max_offset", "subscriber_count", "total_published",
                "total_consumed", "dropped", "created_at", "generation", "partition_count", "partitions"}
        self.assertTrue(keys <= set(stats), stats)
        self.assertEqual(stats["name"], s)
        self.assertEqual(stats["message_count"], 4)
        self.assertEqual((stats["min_offset"], stats["max_offset"]), (0, 2))
        self.assertEqual(stats["total_published"], 4)
        self.assertEqual(stats["total_consumed"], 2)
        self.assertEqual(stats["subscriber_count"], 0)
        self.assertEqual(stats["dropped"], 0)
        self.assertEqual(stats["created_at"], info["created_at"])
        self.assertIsInstance(stats["generation"], int)
        self.assertEqual(stats["partition_count"], 2)
        self.assertIsInstance(stats["partitions"], list)
        parts = sorted(stats["partitions"], key=lambda p: p["partition"])
        self.assertEqual([p["partition"] for p in parts], [0, 1])
        self.assertEqual((parts[0]["message_count"], parts[0]["min_offset"], parts[0]["max_offset"]), (3, 0, 2))
        self.assertEqual((parts[1]["message_count"], parts[1]["min_offset"], parts[1]["max_offset"]), (1, 0, 0))
        for p in parts:
            self.assertIsInstance(p["bytes"], int)
            self.assertGreater(p["bytes"], 0)
        self.assertGreater(parts[0]["bytes"], parts[1]["bytes"])

    def test_missing_stream_is_404(self):
        s = self.sname()
        for method, path in (("GET", "/stream/%s/info"), ("GET", "/stream/%s/stats"), ("DELETE", "/stream/%s"),
                             ("GET", "/stream/%s/consume/c1"), ("GET", "/stream/%s/consumers")):
            self.assertError(self.server.request(method, path % s), 404, "stream_not_found")

    # ---- list / delete ------------------------------------------------------

    def test_list_sorted(self):
        names = ["zz-" + self.sname(), "AA-" + self.sname(), "mm-" + self.sname(), "m.m-" + self.sname(),
                 "0-" + self.sname()]
        for n in names:
            self.server.create(n)
        st, body = self.server.get("/stream/list")
        self.assertEqual(st, 200)
        streams = body["streams"]
        for n in names:
            self.assertIn(n, streams)
        self.assertEqual(streams, sorted(streams, key=lambda x: x.encode()))
        self.assertEqual(len(streams), len(set(streams)))

    def _files(self):
        out = set()
        for root, dirs, files in os.walk(self.server.data_dir):
            for name in files:
                out.add(os.path.join(root, name))
        return out

    def test_delete_removes_data_from_disk(self):
        s = self.sname("-gone")
        self.server.create(self.sname("-warm-up"))  # global metadata files exist from here on
        before = self._files()
        self.server.create(s, partitions=2)
        for i in range(5):
            self.server.publish(s, {"event": "e", "data": "x" * 100})
        mine = self._files() - before
        self.assertTrue(mine, "the stream created no files under the data dir")
        st, body = self.server.delete("/stream/" + s)
        self.assertEqual(st, 200, body)
        self.assertEqual(body.get("success"), True)
        self.assertError(self.server.get("/stream/%s/info" % s), 404, "stream_not_found")
        self.assertNotIn(s, self.server.get("/stream/list")[1]["streams"])
        self.assertError(self.server.delete("/stream/" + s), 404, "stream_not_found")
        poll_until(lambda: not (mine & self._files()), harness.scaled(10),
                   what="stream files removed from disk")

        # Recreated: empty, offsets start again at 0, newer generation.
        self.server.create(s)
        self.assertEqual(self.server.info(s)["message_count"], 0)
        _, body = self.server.publish(s, {"event": "e", "data": 1})
        self.assertEqual(body["offset"], 0)
        self.assertEqual(self.server.consume(s)[1][0]["data"], 1)

    # ---- names --------------------------------------------------------------

    def test_invalid_names(self):
        bad = ["a%20b", "a%2Fb", "..", ".", ".hidden", "a%24b", "a%00b", "%2E%2E", "caf%C3%A9", "a*b",
               "a%25b", "x" * 256, "a+b", "a,b", "a@b"]
        for name in bad:
            self.assertError(self.server.post("/stream/" + name), 400, "invalid_name")
            self.assertError(self.server.put("/stream/" + name), 400, "invalid_name")
            self.assertError(self.server.post("/stream/%s/publish" % name, {"event": "e", "data": 1}),
                             400, "invalid_name")
            self.assertError(self.server.get("/stream/%s/info" % name), 400, "invalid_name")
        # Empty name segment.
        self.assertError(self.server.post("/stream//publish", {"event": "e", "data": 1}), 400, "invalid_name")
        # Bad consumer names.
        s = self.sname()
        self.server.create(s)
        for name in (".c", "c%20d", "c%2Fd", "y" * 256):
            self.assertError(self.server.get("/stream/%s/consume/%s" % (s, name)), 400, "invalid_name")
        # Nothing was created by any of this.
        streams = self.server.get("/stream/list")[1]["streams"]
        for n in streams:
            self.assertRegex(n, r"^[A-Za-z0-9_:\-][A-Za-z0-9._:\-]*$")

    def test_valid_names(self):
        n255 = ("n" * 240 + self.sname())[-255:]
        self.assertEqual(len(n255), 255)
        for name in (n255, "A.b_c:d-9" + self.sname(), "x:" + self.sname(), "9" + self.sname()):
            st, body = self.server.post("/stream/" + name)
            self.assertEqual(st, 201, (name, body))
            self.assertEqual(body["stream"], name)
            self.server.publish(name, {"event": "e", "data": 1})
            self.assertEqual(self.server.info(name)["name"], name)
            self.assertIn(name, self.server.get("/stream/list")[1]["streams"])
        # A percent-encoded allowed character is the same name.
        s = self.sname()
        st, body = self.server.post("/stream/%41" + s)
        self.assertEqual(st, 201, body)
        self.assertEqual(body["stream"], "A" + s)
        self.assertEqual(self.server.info("A" + s)["name"], "A" + s)

    def test_list_is_not_a_stream_name(self):
        st, body = self.server.post("/stream/list")
        self.assertIn(st, (400, 405), body)
        if st == 400:
            self.assertEqual(body["error"], "invalid_name")
        st, body = self.server.put("/stream/list")
        self.assertIn(st, (400, 405), body)
        self.assertError(self.server.post("/stream/list/publish", {"event": "e", "data": 1}), 400, "invalid_name")
        st, body = self.server.get("/stream/list")
        self.assertEqual(st, 200)
        self.assertNotIn("list", body["streams"])

    # ---- routing --------------------------------------------------------------

    def test_unknown_route_and_wrong_method(self):
        s = self.sname()
        self.server.create(s)
        for path in ("/nope", "/stream", "/stream/%s/bogus" % s, "/stream/%s/consume" % s, "/health/x"):
            self.assertError(self.server.get(path), 404, "not_found")
        for method, path in (("DELETE", "/health"), ("POST", "/health"), ("GET", "/stream/%s/publish" % s),
                             ("PATCH", "/stream/%s" % s), ("DELETE", "/stream/%s/info" % s),
                             ("POST", "/stream/%s/consume/c1" % s)):
            self.assertError(self.server.request(method, path), 405, "method_not_allowed")
        self.assertEqual(self.server.info(s)["name"], s)

    def test_delete_and_recreate_under_load(self):
        s = self.sname()
        self.server.create(s, partitions=2)
        stop = threading.Event()
        statuses = []

        def load():
            conn = self.server.connection(timeout=harness.scaled(10))
            try:
                while not stop.is_set():
                    try:
                        st, _ = self.server.request("POST", "/stream/%s/publish" % s,
                                                    [{"event": "e", "data": "x" * 50}] * 5, conn=conn)
                        statuses.append(st)
                        st, _ = self.server.request("GET", "/stream/%s/consume/c?from_offset=-20&wait_ms=50" % s,
                                                    conn=conn)
                        statuses.append(st)
                    except (OSError, http.client.HTTPException):
                        conn.close()
                        conn = self.server.connection(timeout=harness.scaled(10))
            finally:
                conn.close()

        threads = [harness.thread(load) for _ in range(3)]
        for i in range(15):
            self.assertIn(self.server.delete("/stream/" + s)[0], (200, 404))
            self.assertIn(self.server.post("/stream/" + s, {"partitions": 2})[0], (201, 409))
        stop.set()
        for t in threads:
            t.join(harness.scaled(20))
        self.assertTrue(statuses)
        self.assertFalse([x for x in statuses if x >= 500 and x != 503], "server errors under delete/recreate")
        self.assertEqual(self.server.get("/health")[0], 200)
        info = self.server.info(s)
        ev = []
        for p in range(info["partitions"]):  # 1 when a publish auto-created it first
            ev += self.server.consume_all(s, partition=p)
        self.assertEqual(len(ev), info["message_count"])

    def test_metrics_is_prometheus_text(self):
        s = self.sname()
        self.server.create(s)
        self.server.publish(s, {"event": "e", "data": 1})
        st, headers, body = self.server.request_raw("GET", "/metrics")
        self.assertEqual(st, 200)
        self.assertTrue(headers.get("content-type", "").startswith("text/plain"), headers)
        text = body.decode()
        self.assertIn("# TYPE", text)
        self.assertIn(s, text)

    def test_health(self):
        st, headers, raw = self.server.request_raw("GET", "/health")
        self.assertEqual(st, 200)
        self.assertIn("application/json", headers.get("content-type", ""))
        body = json.loads(raw)
        self.assertEqual(body["status"], "healthy")
        self.assertIsInstance(body["uptime_secs"], int)
        self.assertGreaterEqual(body["uptime_secs"], 0)

    def test_ready_line_logged(self):
        needle = "listening on 127.0.0.1:%d" % self.server.port
        poll_until(lambda: needle in self.server.log_tail(10 ** 7), harness.scaled(5), what=repr(needle))


class ServerLimitsTest(ServerTestCase):
    SERVER_ARGS = ["--max-streams", "3", "--default-partitions", "4", "--max-wait-ms", "300",
                   "--default-retention-hours", "5"]

    def test_defaults_and_stream_limit(self):
        st, body = self.server.post("/stream/lim-a")
        self.assertEqual((st, body["partitions"], body["retention_hours"]), (201, 4, 5))
        self.server.publish("lim-b", {"event": "e", "data": 1})  # auto-created with the defaults
        self.assertEqual(self.server.info("lim-b")["partitions"], 4)
        self.server.create("lim-c", partitions=1)
        self.assertError(self.server.post("/stream/lim-d"), 507, "too_many_streams")
        self.assertError(self.server.put("/stream/lim-d"), 507, "too_many_streams")
        self.assertError(self.server.post("/stream/lim-d/publish", {"event": "e", "data": 1}),
                         507, "too_many_streams")
        self.assertEqual(self.server.get("/stream/list")[1]["streams"], ["lim-a", "lim-b", "lim-c"])
        # Deleting frees a slot.
        self.assertEqual(self.server.delete("/stream/lim-a")[0], 200)
        self.server.create("lim-d")
        self.assertError(self.server.post("/stream/lim-e"), 507, "too_many_streams")

    def test_max_wait_ms_caps_long_polls(self):
        self.server.put("/stream/lim-c", {"partitions": 1})
        import time
        t0 = time.monotonic()
        st, ev = self.server.consume("lim-c", from_offset=10 ** 6, wait_ms=20000)
        elapsed = time.monotonic() - t0
        self.assertEqual((st, ev), (200, []))
        self.assertLess(elapsed, harness.scaled(3), "wait_ms not capped by --max-wait-ms 300")


class StreamsRestartTest(unittest.TestCase):
    def test_long_and_case_distinct_names_across_restart(self):
        srv = Server()
        self.addCleanup(srv.cleanup)
        srv.start()
        long_name = "L" * 250 + "-name"
        self.assertEqual(len(long_name), 255)
        names = [long_name, "CaseX", "casex", "a..b", "x:y", "-rf"]
        for i, n in enumerate(names):
            srv.create(n, partitions=2)
            srv.publish(n, {"event": "e", "data": i, "partition": 1})
        srv.restart()
        self.assertEqual(srv.get("/stream/list")[1]["streams"], sorted(names, key=str.encode))
        for i, n in enumerate(names):
            _, ev = srv.consume(n, partition=1)
            self.assertEqual([e["data"] for e in ev], [i], n)
        # Deleting the 255-byte name works, and it stays deleted after a restart.
        st, body = srv.delete("/stream/" + long_name)
        self.assertEqual(st, 200, body)

        def leftovers():
            return [os.path.join(r, f) for r, d, fs in os.walk(srv.data_dir) for f in fs + d if "LLLLLLLLLL" in f]
        poll_until(lambda: not leftovers(), harness.scaled(10), what="files of the deleted stream removed")
        srv.restart()
        self.assertNotIn(long_name, srv.get("/stream/list")[1]["streams"])
        self.assertEqual(len(srv.get("/stream/list")[1]["streams"]), len(names) - 1)
        srv.stop()

    def test_many_streams_recovered(self):
        srv = Server()
        self.addCleanup(srv.cleanup)
        srv.start()
        names = ["many-%03d" % i for i in range(150)]
        for i, n in enumerate(names):
            srv.publish(n, {"event": "e", "data": i})
        srv.kill()
        srv.start()
        self.assertEqual(srv.get("/stream/list")[1]["streams"], names)
        for i in (0, 77, 149):
            self.assertEqual(srv.consume(names[i])[1][0]["data"], i)
        srv.stop()

    def test_generation_and_created_at_across_delete_and_restart(self):
        srv = Server()
        self.addCleanup(srv.cleanup)
        srv.start()
        srv.create("gen-a")
        g1 = srv.stats("gen-a")["generation"]
        srv.create("gen-b", partitions=2)
        g2 = srv.stats("gen-b")["generation"]
        self.assertGreater(g2, g1)
        self.assertEqual(srv.delete("/stream/gen-a")[0], 200)
        srv.create("gen-a")
        g3 = srv.stats("gen-a")["generation"]
        self.assertGreater(g3, g2)
        # PUT of an existing stream is not a creation.
        srv.put("/stream/gen-a")
        self.assertEqual(srv.stats("gen-a")["generation"], g3)
        srv.publish("gen-b", {"event": "e", "data": {"k": 1}, "partition": 1})
        before = {n: (srv.info(n), srv.stats(n)["generation"]) for n in ("gen-a", "gen-b")}

        srv.restart()
        for n in ("gen-a", "gen-b"):
            info, gen = before[n]
            after = srv.info(n)
            self.assertEqual(after["created_at"], info["created_at"], n)
            self.assertEqual(after, info, "info must survive a restart")
            self.assertEqual(srv.stats(n)["generation"], gen)
        self.assertEqual(srv.get("/stream/list")[1]["streams"], ["gen-a", "gen-b"])
        srv.create("gen-c")
        g4 = srv.stats("gen-c")["generation"]
        self.assertGreater(g4, g3)
        srv.delete("/stream/gen-c")
        srv.create("gen-c")
        self.assertGreater(srv.stats("gen-c")["generation"], g4)
        # Delete then recreate at once: the old stream's deferred removal
        # must not take the new stream's data with it.
        srv.publish("gen-c", {"event": "old", "data": 0})
        srv.delete("/stream/gen-c")
        srv.create("gen-c")
        srv.publish("gen-c", {"event": "new", "data": 1})
        srv.restart()
        _, ev = srv.consume("gen-c")
        self.assertEqual([(e["offset"], e["event"]) for e in ev], [(0, "new")])

        # Also after a crash (kill -9): no generation is handed out twice.
        g5 = srv.stats("gen-c")["generation"]
        srv.kill()
        srv.start()
        srv.create("gen-d")
        self.assertGreater(srv.stats("gen-d")["generation"], g5)
        self.assertEqual(srv.stats("gen-c")["generation"], g5)
        srv.stop()


if __name__ == "__main__":
    unittest.main()
