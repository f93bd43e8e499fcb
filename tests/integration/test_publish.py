"""Publishing: single, batches, validation, partitioning, limits, idempotency."""

import collections
import json
import time
import unittest

import harness
from harness import Server, ServerTestCase


class PublishTest(ServerTestCase):

    def test_single_publish(self):
        s = self.sname()
        self.server.create(s)
        for i in range(3):
            _, body = self.server.publish(s, {"event": "e%d" % i, "data": "d%d" % i})
            self.assertEqual((body["success"], body["offset"], body["partition"]), (True, i, 0))
            self.assertFalse(body.get("duplicate", False))
        _, ev = self.server.consume(s)
        self.assertEqual([(e["offset"], e["event"], e["data"]) for e in ev],
                         [(0, "e0", "d0"), (1, "e1", "d1"), (2, "e2", "d2")])
        for e in ev:
            self.assertNotIn("headers", e)
            self.assertNotIn("id", e)
            self.assertNotIn("key", e)

    def _check_batch(self, body_of):
        s = self.sname()
        self.server.create(s, partitions=2)
        events = [{"event": "b%d" % i, "data": {"i": i}, "partition": i % 2} for i in range(5)]
        st, body = self.server.post("/stream/%s/publish" % s, body_of(events))
        self.assertEqual(st, 200, body)
        self.assertEqual(body["success"], True)
        self.assertEqual([(r["partition"], r["offset"]) for r in body["results"]],
                         [(0, 0), (1, 0), (0, 1), (1, 1), (0, 2)])
        _, p0 = self.server.consume(s, partition=0)
        _, p1 = self.server.consume(s, partition=1)
        self.assertEqual([(e["offset"], e["event"], e["data"]) for e in p0],
                         [(0, "b0", {"i": 0}), (1, "b2", {"i": 2}), (2, "b4", {"i": 4})])
        self.assertEqual([(e["offset"], e["event"]) for e in p1], [(0, "b1"), (1, "b3")])
        # A second batch continues the offsets, in request order.
        st, body = self.server.post("/stream/%s/publish" % s,
                                    body_of([{"event": "x", "data": n, "partition": 1} for n in range(3)]))
        self.assertEqual(st, 200, body)
        self.assertEqual([(r["partition"], r["offset"]) for r in body["results"]], [(1, 2), (1, 3), (1, 4)])
        _, p1 = self.server.consume(s, partition=1, from_offset=2)
        self.assertEqual([e["data"] for e in p1], [0, 1, 2])

    def test_batch_as_array(self):
        self._check_batch(lambda evs: evs)

    def test_batch_as_events_object(self):
        self._check_batch(lambda evs: {"events": evs})

    def test_batch_results_in_order_on_one_partition(self):
        s = self.sname()
        self.server.create(s)
        n = 200
        st, body = self.server.post("/stream/%s/publish" % s, [{"event": "e", "data": i} for i in range(n)])
        self.assertEqual(st, 200, body)
        self.assertEqual([r["offset"] for r in body["results"]], list(range(n)))
        _, ev = self.server.consume(s, limit=1000)
        self.assertEqual([e["data"] for e in ev], list(range(n)))

    def test_invalid_batch_rejected_whole(self):
        s = self.sname()
        self.server.create(s, partitions=2)
        self.server.publish(s, {"event": "first", "data": 0, "partition": 0})
        bad_batches = [
            [{"event": "ok", "data": 1}, {"event": "missing-data"}, {"event": "ok", "data": 2}],
            {"events": [{"event": "ok", "data": 1}, {"data": 2}]},
            [{"event": "ok", "data": 1}, {"event": "ok", "data": 2, "partition": 2}],
            [{"event": "ok", "data": 1}, {"event": "", "data": 2}],
            [{"event": "ok", "data": 1}, "not-an-object"],
            [{"event": "ok", "data": 1}, {"event": "ok", "data": 1, "headers": {"a": 1}}],
        ]
        for batch in bad_batches:
            st, body = self.server.post("/stream/%s/publish" % s, batch)
            self.assertEqual(st, 400, (batch, body))
            self.assertIn(body.get("error"), ("invalid_event", "invalid_json", "invalid_parameter"), body)
        info = self.server.info(s)
        self.assertEqual(info["message_count"], 1, info)
        _, ev = self.server.consume(s, limit=100)
        self.assertEqual([e["event"] for e in ev], ["first"])
        # Empty batch: nothing to append; it must not crash or append.
        for empty in ([], {"events": []}):
            st, body = self.server.post("/stream/%s/publish" % s, empty)
            self.assertIn(st, (200, 400), body)
        self.assertEqual(self.server.info(s)["message_count"], 1)
        # The stream still takes writes at the next offset.
        _, body = self.server.publish(s, {"event": "next", "data": 1, "partition": 0})
        self.assertEqual(body["offset"], 1)

    def test_data_json_values_round_trip(self):
        s = self.sname()
        self.server.create(s)
        values = [
            {"order_id": 123, "items": [{"sku": "a", "qty": 2}], "paid": True, "note": None},
            [1, "two", 3.5, None, False, {"x": []}],
            "plain string",
            "unicode h\u00e9llo \u2603 \U0001F600 and escapes \n\t\"\\ /",
            42,
            -7.25,
            2 ** 63 - 1,
            -2 ** 63,
            0.1,
            True,
            False,
            {},
            [],
            "",
            '{"looks":"like json"}',
        ]
        for v in values:
            self.server.publish(s, {"event": "v", "data": v})
        _, ev = self.server.consume(s, limit=100)
        self.assertEqual(len(ev), len(values))
        for e, v in zip(ev, values):
            self.assertEqual(e["data"], v)
            self.assertEqual(type(e["data"]), type(v), (e["data"], v))

    def test_data_null_is_a_value_or_rejected_cleanly(self):
        s = self.sname()
        self.server.create(s)
        st, body = self.server.post("/stream/%s/publish" % s, {"event": "n", "data": None})
        if st == 200:
            _, ev = self.server.consume(s)
            self.assertIn("data", ev[0])
            self.assertIsNone(ev[0]["data"])
        else:
            self.assertFieldError((st, body), "data")

    def test_number_spellings_keep_their_value(self):
        s = self.sname()
        self.server.create(s)
        raw = b'{"event":"raw","data":{"n":1.50,"e":1E+2,"neg":-0.0,"x":12.5e-1}}'
        st, _, body = self.server.request_raw("POST", "/stream/%s/publish" % s, raw)
        self.assertEqual(st, 200, body)
        st, _, body = self.server.request_raw("GET", "/stream/%s/consume/c" % s)
        self.assertEqual(st, 200)
        self.assertEqual(json.loads(body)[0]["data"], {"n": 1.5, "e": 100, "neg": 0, "x": 1.25})

    def test_data_bytes_kept_as_received(self):
        # Records are stored as received and read back byte for byte:
        # number spelling, big integers and key order survive.
        s = self.sname()
        self.server.create(s)
        data = rb'{"z":1.50,"a":1E+2,"m":[0.10,-0,12345678901234567890123],"\u00e9":"\u00e9\n"}'
        st, _, body = self.server.request_raw("POST", "/stream/%s/publish" % s, b'{"event":"raw","data":' + data + b'}')
        self.assertEqual(st, 200, body)
        st, _, body = self.server.request_raw("GET", "/stream/%s/consume/c" % s)
        self.assertEqual(st, 200)
        self.assertIn(b'"data":' + data, body)

    def test_big_integer_data(self):
        # Any JSON value: integers beyond 64 bits are valid JSON.
        s = self.sname()
        self.server.create(s)
        big = 123456789012345678901234567890
        st, body = self.server.publish(s, {"event": "big", "data": {"n": big, "l": [2 ** 64]}}, expect=None)
        self.assertEqual(st, 200, body)
        _, ev = self.server.consume(s)
        self.assertEqual(ev[0]["data"], {"n": big, "l": [2 ** 64]})

    def test_event_near_default_max_event_bytes(self):
        s = self.sname()
        self.server.create(s)
        limit = 1048576
        shell = len(json.dumps({"event": "big", "data": ""}))
        ok = {"event": "big", "data": "q" * (limit - shell - 10)}
        self.server.publish(s, ok)
        too_big = {"event": "big", "data": "q" * (limit - shell + 10)}
        self.assertError(self.server.publish(s, too_big, expect=None), 413, "event_too_large")
        _, ev = self.server.consume(s)
        self.assertEqual(len(ev), 1)
        self.assertEqual(ev[0]["data"], ok["data"])

    def test_headers_and_id_returned(self):
        s = self.sname()
        self.server.create(s)
        hdrs = {"trace-id": "abc-123", "content-kind": "text/plain", "empty": "", "uni": "\u00e9"}
        self.server.publish(s, {"event": "h", "data": 1, "headers": hdrs, "id": "msg-1"})
        _, ev = self.server.consume(s)
        self.assertEqual(ev[0]["headers"], hdrs)
        self.assertEqual(ev[0]["id"], "msg-1")
        self.assertEqual(ev[0]["event"], "h")
        for bad in ({"a": 1}, ["a", "b"], "str", {"a": {"b": "c"}}, {"a": None}):
            self.assertFieldError(self.server.publish(s, {"event": "h", "data": 1, "headers": bad}, expect=None),
                                  "headers")
        self.assertEqual(self.server.info(s)["message_count"], 1)

    def test_partition_key_affinity_and_order(self):
        s = self.sname()
        self.server.create(s, partitions=4)
        keys = ["user-%d" % i for i in range(12)]
        where = {}
        for rnd in range(5):
            for k in keys:
                _, body = self.server.publish(s, {"event": "k", "data": {"key": k, "seq": rnd}, "partition_key": k})
                where.setdefault(k, set()).add(body["partition"])
        for k, parts in where.items():
            self.assertEqual(len(parts), 1, "key %s landed in partitions %s" % (k, parts))
        self.assertGreater(len({next(iter(p)) for p in where.values()}), 1,
                           "12 keys all hashed to one partition of 4")
        for p in range(4):
            _, ev = self.server.consume(s, partition=p, limit=1000)
            seqs = collections.defaultdict(list)
            for e in ev:
                self.assertEqual(e["key"], e["data"]["key"])
                seqs[e["key"]].append(e["data"]["seq"])
                self.assertEqual(where[e["key"]], {p})
            for k, sq in seqs.items():
                self.assertEqual(sq, list(range(5)), k)
        # A batch with keys follows the same mapping.
        st, body = self.server.post("/stream/%s/publish" % s,
                                    [{"event": "k", "data": 0, "partition_key": k} for k in keys])
        self.assertEqual(st, 200, body)
        for k, r in zip(keys, body["results"]):
            self.assertEqual({r["partition"]}, where[k], k)

    def test_round_robin_without_key(self):
        s = self.sname()
        self.server.create(s, partitions=4)
        parts = [self.server.publish(s, {"event": "r", "data": i})[1]["partition"] for i in range(8)]
        self.assertEqual(collections.Counter(parts), {0: 2, 1: 2, 2: 2, 3: 2}, parts)
        st, body = self.server.post("/stream/%s/publish" % s, [{"event": "r", "data": i} for i in range(8)])
        self.assertEqual(collections.Counter(r["partition"] for r in body["results"]), {0: 2, 1: 2, 2: 2, 3: 2})
        stats = self.server.stats(s)
        self.assertEqual(sorted(p["message_count"] for p in stats["partitions"]), [4, 4, 4, 4])

    def test_explicit_partition(self):
        s = self.sname()
        self.server.create(s, partitions=2)
        _, body = self.server.publish(s, {"event": "p", "data": 1, "partition": 1})
        self.assertEqual((body["partition"], body["offset"]), (1, 0))
        for bad in (2, 1000, -1, "1", 1.5):
            st, body = self.server.publish(s, {"event": "p", "data": 1, "partition": bad}, expect=None)
            self.assertEqual(st, 400, (bad, body))
            self.assertIn("partition", body.get("message", ""), body)
        self.assertEqual(self.server.info(s)["message_count"], 1)

    def test_missing_and_invalid_fields(self):
        s = self.sname()
        self.server.create(s)
        P = lambda ev: self.server.publish(s, ev, expect=None)
        self.assertFieldError(P({"data": 1}), "event")
        self.assertFieldError(P({"event": "e"}), "data")
        self.assertFieldError(P({"event": 5, "data": 1}), "event")
        self.assertFieldError(P({"event": None, "data": 1}), "event")
        self.assertFieldError(P({"event": "", "data": 1}), "event")
        self.assertFieldError(P({"event": "x" * 256, "data": 1}), "event")
        self.assertFieldError(P({"event": "e", "data": 1, "id": ""}), "id")
        self.assertFieldError(P({"event": "e", "data": 1, "id": "i" * 129}), "id")
        self.assertFieldError(P({"event": "e", "data": 1, "id": 7}), "id")
        self.assertEqual(self.server.info(s)["message_count"], 0)
        # Boundaries that are fine.
        _, body = P({"event": "x" * 255, "data": 1, "id": "i" * 128})
        self.assertEqual(body["offset"], 0)
        _, ev = self.server.consume(s)
        self.assertEqual(ev[0]["event"], "x" * 255)
        # 255 bytes of UTF-8 (not characters) is the limit.
        self.assertFieldError(P({"event": "\u00e9" * 128, "data": 1}), "event")  # 256 bytes
        self.assertEqual(P({"event": "\u00e9" * 127 + "a", "data": 1})[0], 200)  # 255 bytes

    def test_malformed_and_wrong_type_bodies(self):
        s = self.sname()
        self.server.create(s)
        path = "/stream/%s/publish" % s
        for raw in (b'{"event": "a", "data": ', b'{"event": "a" "data": 1}', b"{'event': 'a', 'data': 1}",
                    b'{"event":"a","data":1}}', b'{"event":"a","data":1} x', b'{"event":"a","data":tru}',
                    b'{"event":"a","data":"unterminated}', b'{"event":"a","data":01}',
                    b'{"event":"a","data":[1,2,]}', b"", b"   "):
            st, body = self.server.post(path, raw)
            self.assertEqual(st, 400, (raw, body))
            self.assertIn(body.get("error"), ("invalid_json", "invalid_event"), (raw, body))
        for raw in (b'"just a string"', b"42", b"null", b"true"):
            st, body = self.server.post(path, raw)
            self.assertEqual(st, 400, (raw, body))
        self.assertEqual(self.server.info(s)["message_count"], 0)

    def test_publish_auto_creates_stream(self):
        s = self.sname()
        _, body = self.server.publish(s, {"event": "auto", "data": 1})
        self.assertEqual((body["offset"], body["partition"]), (0, 0))
        info = self.server.info(s)
        self.assertEqual(info["partitions"], 1)
        self.assertEqual(info["message_count"], 1)
        self.assertIn(s, self.server.get("/stream/list")[1]["streams"])
        # A batch auto-creates too.
        s2 = self.sname()
        st, body = self.server.post("/stream/%s/publish" % s2, [{"event": "a", "data": 1}, {"event": "b", "data": 2}])
        self.assertEqual(st, 200, body)
        self.assertEqual(self.server.info(s2)["message_count"], 2)
        # An invalid publish does not create the stream.
        s3 = self.sname()
        self.server.publish(s3, {"event": "a"}, expect=400)
        self.assertError(self.server.get("/stream/%s/info" % s3), 404, "stream_not_found")

    def test_idempotent_id(self):
        s = self.sname()
        self.server.create(s, partitions=3)
        _, first = self.server.publish(s, {"event": "pay", "data": {"amount": 5}, "id": "pay-1"})
        self.assertFalse(first.get("duplicate", False))
        for retry in range(3):
            # Same id, even with other content / another partition requested.
            _, again = self.server.publish(s, {"event": "pay", "data": {"amount": 5 + retry}, "id": "pay-1",
                                               "partition": (first["partition"] + 1) % 3})
            self.assertEqual((again["partition"], again["offset"]), (first["partition"], first["offset"]))
            self.assertIs(again.get("duplicate"), True, again)
            self.assertEqual(again["success"], True)
        self.assertEqual(self.server.info(s)["message_count"], 1)
        _, other = self.server.publish(s, {"event": "pay", "data": {"amount": 6}, "id": "pay-2"})
        self.assertFalse(other.get("duplicate", False))
        self.assertEqual(self.server.info(s)["message_count"], 2)
        # Ids are per stream.
        s2 = self.sname()
        _, body = self.server.publish(s2, {"event": "pay", "data": 1, "id": "pay-1"})
        self.assertFalse(body.get("duplicate", False))
        # In a batch: the duplicate entry reports the first copy.
        st, body = self.server.post("/stream/%s/publish" % s, [{"event": "n", "data": 1, "id": "pay-3"},
                                                               {"event": "n", "data": 1, "id": "pay-1"}])
        self.assertEqual(st, 200, body)
        r0, r1 = body["results"]
        self.assertEqual((r1["partition"], r1["offset"]), (first["partition"], first["offset"]))
        self.assertIs(r1.get("duplicate"), True, body)
        self.assertEqual(self.server.info(s)["message_count"], 3)
        _, ev = self.server.consume(s, partition=first["partition"], limit=100)
        self.assertEqual([e["data"] for e in ev if e.get("id") == "pay-1"], [{"amount": 5}])
        # The same id twice in one batch: one copy.
        st, body = self.server.post("/stream/%s/publish" % s, [{"event": "n", "data": 1, "id": "pay-4"},
                                                               {"event": "n", "data": 2, "id": "pay-4"}])
        self.assertEqual(st, 200, body)
        r0, r1 = body["results"]
        self.assertEqual((r1["partition"], r1["offset"]), (r0["partition"], r0["offset"]))
        self.assertIs(r1.get("duplicate"), True, body)
        self.assertEqual(self.server.info(s)["message_count"], 4)


class PublishLimitsTest(ServerTestCase):
    SERVER_ARGS = ["--max-event-bytes", "1024", "--max-batch-events", "5", "--dedup-window-ms", "300"]

    def test_max_event_bytes(self):
        s = self.sname()
        self.server.create(s)
        ok = {"event": "e", "data": "a" * 900}
        self.assertLess(len(json.dumps(ok)), 1024)
        self.server.publish(s, ok)
        big = {"event": "e", "data": "a" * 1100}
        self.assertError(self.server.publish(s, big, expect=None), 413, "event_too_large")
        st, body = self.server.post("/stream/%s/publish" % s, [ok, big])
        self.assertEqual(st, 413, body)
        self.assertEqual(body["error"], "event_too_large")
        self.assertEqual(self.server.info(s)["message_count"], 1)

    def test_max_batch_events(self):
        s = self.sname()
        self.server.create(s)
        st, body = self.server.post("/stream/%s/publish" % s, [{"event": "e", "data": i} for i in range(5)])
        self.assertEqual(st, 200, body)
        self.assertError(self.server.post("/stream/%s/publish" % s, [{"event": "e", "data": i} for i in range(6)]),
                         413, "batch_too_large")
        self.assertError(self.server.post("/stream/%s/publish" % s,
                                          {"events": [{"event": "e", "data": i} for i in range(6)]}),
                         413, "batch_too_large")
        self.assertEqual(self.server.info(s)["message_count"], 5)

    def test_dedup_window_expires(self):
        s = self.sname()
        self.server.create(s)
        _, a = self.server.publish(s, {"event": "e", "data": 1, "id": "w-1"})
        _, b = self.server.publish(s, {"event": "e", "data": 1, "id": "w-1"})
        self.assertIs(b.get("duplicate"), True, b)
        self.assertEqual(b["offset"], a["offset"])
        time.sleep(0.6)  # the configured window is 300 ms: time must pass, there is nothing to poll
        _, c = self.server.publish(s, {"event": "e", "data": 1, "id": "w-1"})
        self.assertFalse(c.get("duplicate", False), c)
        self.assertEqual(c["offset"], a["offset"] + 1)


class PublishBodyLimitTest(ServerTestCase):
    SERVER_ARGS = ["--max-body-bytes", "65536", "--auto-create-streams", "false"]

    def test_body_larger_than_max_body_bytes(self):
        s = self.sname()
        self.server.create(s)
        ok = {"event": "e", "data": "b" * 60000}
        self.server.publish(s, ok)
        big = json.dumps({"event": "e", "data": "b" * 100000}).encode()
        sock = self.server.raw_socket()
        try:
            req = (b"POST /stream/%s/publish HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                   b"Content-Length: %d\r\n\r\n" % (s.encode(), len(big)))
            try:
                sock.sendall(req + big)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the server may answer and close before reading it all
            resp = harness.read_response(sock, timeout=harness.scaled(10))
        finally:
            sock.close()
        self.assertIsNotNone(resp, "connection closed without a 413 response")
        self.assertEqual(resp.status, 413, resp)
        self.assertEqual(resp.json()["error"], "payload_too_large")
        self.assertEqual(self.server.info(s)["message_count"], 1)
        # Also through http.client with a batch of small events.
        batch = [{"event": "e", "data": "c" * 500} for _ in range(200)]
        try:
            st, body = self.server.post("/stream/%s/publish" % s, batch)
            self.assertEqual(st, 413, body)
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.assertEqual(self.server.info(s)["message_count"], 1)

    def test_auto_create_disabled(self):
        s = self.sname()
        self.assertError(self.server.publish(s, {"event": "e", "data": 1}, expect=None), 404, "stream_not_found")
        self.assertError(self.server.post("/stream/%s/publish" % s, [{"event": "e", "data": 1}]),
                         404, "stream_not_found")
        self.assertNotIn(s, self.server.get("/stream/list")[1]["streams"])
        self.assertError(self.server.get("/stream/%s/info" % s), 404, "stream_not_found")
        # Explicit creation still works.
        self.server.create(s)
        self.server.publish(s, {"event": "e", "data": 1})


class IdempotencyRestartTest(unittest.TestCase):
    def test_duplicate_detected_after_restart_and_crash(self):
        srv = Server()
        self.addCleanup(srv.cleanup)
        srv.start()
        srv.create("idem", partitions=2)
        _, a = srv.publish("idem", {"event": "e", "data": 1, "id": "once-a"})
        _, b = srv.publish("idem", {"event": "e", "data": 2, "id": "once-b"})
        srv.restart()
        _, a2 = srv.publish("idem", {"event": "e", "data": 1, "id": "once-a"})
        self.assertIs(a2.get("duplicate"), True, a2)
        self.assertEqual((a2["partition"], a2["offset"]), (a["partition"], a["offset"]))
        _, c = srv.publish("idem", {"event": "e", "data": 3, "id": "once-c"})
        self.assertFalse(c.get("duplicate", False))
        srv.kill()  # acknowledged in `always` mode: survives a crash, and so does its id
        srv.start()
        for first, ident in ((b, "once-b"), (c, "once-c")):
            _, again = srv.publish("idem", {"event": "e", "data": 0, "id": ident})
            self.assertIs(again.get("duplicate"), True, (ident, again))
            self.assertEqual((again["partition"], again["offset"]), (first["partition"], first["offset"]))
        self.assertEqual(srv.info("idem")["message_count"], 3)
        srv.stop()


if __name__ == "__main__":
    unittest.main()
