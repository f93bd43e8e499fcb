"""Consumer groups (API.md "Consumer groups"): the quick start, shared and
partitioned delivery, explicit acks, redelivery, dead events, long polls,
deletion and retention.  Crash tests and the large exactly-the-set runs are
in test_groups_crash.py.

Timing: ack_timeout_ms and session_timeout_ms are kept small; the API says
timeouts are honoured within 100 ms, so checks allow 100 ms plus a slack
for the round trips, multiplied by STREAMD_TIME_SCALE.
"""

import json
import os
import subprocess
import time
import unittest

import harness
from harness import ServerTestCase, poll_until, qs, scaled, short

API_MD = "/work/shared/API.md"
SLACK = 0.15  # seconds of round trips and scheduling allowed past "within 100 ms" (scaled)


class G:
    """One consumer group of one stream on a harness Server."""

    def __init__(self, test, srv, stream, group):
        self.t, self.srv, self.stream, self.group = test, srv, stream, group

    def path(self, tail=""):
        return "/stream/%s/group/%s%s" % (self.stream, self.group, tail)

    def create(self, expect=201, **cfg):
        st, body = self.srv.post(self.path(), cfg if cfg else None)
        if expect is not None:
            self.t.assertEqual(st, expect, "create group %s %s -> %d %s" % (self.group, cfg, st, short(body)))
            if expect == 201:
                self.t.assertEqual(body, {"success": True, "group": self.group})
        return self

    def consume_raw(self, consumer=None, limit=None, wait_ms=None, conn=None, timeout=None):
        params = {}
        if consumer is not None:
            params["consumer"] = consumer
        if limit is not None:
            params["limit"] = limit
        if wait_ms is not None:
            params["wait_ms"] = wait_ms
        path = self.path("/consume") + ("?" + qs(**params) if params else "")
        kw = {"conn": conn}
        if timeout is not None:
            kw["timeout"] = timeout
        return self.srv.get(path, **kw)

    def consume(self, consumer=None, limit=10, wait_ms=None, conn=None):
        st, body = self.consume_raw(consumer, limit, wait_ms, conn)
        self.t.assertEqual(st, 200, "group consume %s/%s consumer=%s -> %d %s"
                           % (self.stream, self.group, consumer, st, short(body)))
        self.t.assertIsInstance(body, list, body)
        for e in body:
            for k in ("offset", "partition", "event", "data", "timestamp", "deliveries"):
                self.t.assertIn(k, e, "group event without %r: %r" % (k, e))
            self.t.assertIsInstance(e["deliveries"], int)
            self.t.assertGreaterEqual(e["deliveries"], 1, e)
        return body

    def ack_raw(self, body):
        return self.srv.post(self.path("/ack"), body)

    def ack(self, acks, consumer=None):
        """acks: a list of {"partition","offset"} / {"partition","from","to"},
        or one such dict (sent as the single-ack form).  Returns "acked"."""
        if isinstance(acks, dict):
            body = dict(acks)
        else:
            body = {"acks": acks}
        if consumer is not None:
            body["consumer"] = consumer
        st, resp = self.ack_raw(body)
        self.t.assertEqual(st, 200, "ack %s -> %d %s" % (short(body), st, short(resp)))
        self.t.assertEqual(resp.get("success"), True, resp)
        self.t.assertIsInstance(resp.get("acked"), int, resp)
        return resp["acked"]

    def info(self):
        st, body = self.srv.get(self.path("/info"))
        self.t.assertEqual(st, 200, "group info -> %d %s" % (st, short(body)))
        return body

    def dead(self, limit=None):
        st, body = self.srv.get(self.path("/dead") + ("?limit=%d" % limit if limit else ""))
        self.t.assertEqual(st, 200, "dead -> %d %s" % (st, short(body)))
        return body["events"]

    def leave(self, consumer):
        return self.srv.delete(self.path("/consumer/" + consumer))

    def delete(self):
        return self.srv.delete(self.path())


def po(events):
    return [(e["partition"], e["offset"]) for e in events]


def committed(info):
    return {p["partition"]: p["committed_offset"] for p in info["partitions"]}


def lags(info):
    return {p["partition"]: p["lag"] for p in info["partitions"]}


def publish_batch(t, srv, stream, events):
    st, body = srv.post("/stream/%s/publish" % stream, events)
    t.assertEqual(st, 200, "batch publish -> %d %s" % (st, short(body)))
    return [(r["partition"], r["offset"]) for r in body["results"]]


class GroupsTest(ServerTestCase):

    def group(self, stream, name="g", **cfg):
        return G(self, self.server, stream, name).create(**cfg)

    def stream(self, n=0, partitions=1, **cfg):
        s = self.sname()
        self.server.create(s, partitions=partitions, **cfg)
        if n:
            publish_batch(self, self.server, s, [{"event": "e", "data": {"i": i}} for i in range(n)])
        return s

    # ---- 1. quick start --------------------------------------------------------------

    QUICKSTART = [
        'curl -X POST http://localhost:15500/stream/notifications',
        'curl -X POST http://localhost:15500/stream/notifications/publish \\\n'
        '  -H "Content-Type: application/json" \\\n'
        '  -d \'{"event": "user.signup", "data": "New user registered"}\'',
        'curl -X POST http://localhost:15500/stream/notifications/publish \\\n'
        '  -H "Content-Type: application/json" \\\n'
        '  -d \'{"event": "order.created", "data": "{\\"order_id\\":123}", "partition_key": "user-123"}\'',
        'curl -X POST http://localhost:15500/stream/notifications/group/email-service',
        'curl "http://localhost:15500/stream/notifications/group/email-service/consume?limit=10"',
        'curl http://localhost:15500/stream/notifications/groups',
        'curl http://localhost:15500/stream/notifications/group/email-service/info',
        'curl -X DELETE http://localhost:15500/stream/notifications',
    ]

    def curl(self, command):
        command = command.replace("15500", str(self.server.port))
        command = "curl -sS -w '\\n%{http_code}' " + command[len("curl "):]
        p = subprocess.run(["bash", "-c", command], capture_output=True, timeout=scaled(30))
        self.assertEqual(p.returncode, 0, "curl failed: %s\n%s" % (command, p.stderr.decode()))
        body, _, code = p.stdout.decode("utf-8").rpartition("\n")
        return int(code), (json.loads(body) if body else None)

    def test_01_quickstart_group_commands(self):
        if os.path.exists(API_MD):
            with open(API_MD) as f:
                doc = f.read()
            for cmd in self.QUICKSTART:
                self.assertIn(cmd, doc, "the command must be verbatim from API.md")
        create, pub1, pub2, gcreate, gconsume, glist, ginfo, sdelete = self.QUICKSTART
        self.assertEqual(self.curl(create)[0], 201)
        self.assertEqual(self.curl(pub1)[1]["offset"], 0)
        self.assertEqual(self.curl(pub2)[1]["offset"], 1)

        st, body = self.curl(gcreate)
        self.assertEqual((st, body), (201, {"success": True, "group": "email-service"}))
        st, body = self.curl(gcreate)
        self.assertError((st, body), 409, "group_exists")

        st, events = self.curl(gconsume)
        self.assertEqual(st, 200, events)
        self.assertEqual(len(events), 2, events)
        e0, e1 = events
        self.assertEqual((e0["partition"], e0["offset"], e0["event"], e0["data"], e0["deliveries"]),
                         (0, 0, "user.signup", "New user registered", 1))
        self.assertEqual((e1["partition"], e1["offset"], e1["event"], e1["data"], e1["deliveries"]),
                         (0, 1, "order.created", '{"order_id":123}', 1))
        self.assertEqual(e1.get("key"), "user-123")
        # The same event objects as the stream's, plus "deliveries".
        _, plain = self.server.consume("notifications", from_offset=0, limit=10)
        self.assertEqual([{k: v for k, v in e.items() if k != "deliveries"} for e in events], plain)
        # Auto ack (the default): done on delivery, not handed out again.
        st, again = self.curl(gconsume)
        self.assertEqual((st, again), (200, []))

        st, body = self.curl(glist)
        self.assertEqual((st, body), (200, {"groups": ["email-service"]}))

        st, info = self.curl(ginfo)
        self.assertEqual(st, 200, info)
        self.assertEqual(info["group"], "email-service")
        self.assertEqual((info["mode"], info["ack"]), ("shared", "auto"))
        self.assertEqual(info["consumers"], [])  # only anonymous polls so far
        self.assertEqual((info["pending_messages"], info["dead_messages"]), (0, 0))
        self.assertEqual(info["partitions"], [{"partition": 0, "committed_offset": 2, "lag": 0}])
        self.assertEqual(info["assignments"], {})

        self.assertEqual(self.curl(sdelete)[0], 200)

    # ---- 2. shared split --------------------------------------------------------------

    def test_02_shared_consumers_split_the_events(self):
        s = self.stream(100)
        g = self.group(s)
        got = {"a": [], "b": []}
        empty = 0
        turn = 0
        while empty < 2:
            c = "ab"[turn % 2]
            turn += 1
            batch = g.consume(c, limit=7)
            self.assertLessEqual(len(batch), 7)
            if not batch:
                empty += 1
                continue
            empty = 0
            if sum(len(v) for v in got.values()) + len(batch) < 100:
                self.assertEqual(len(batch), 7, "a short batch before the end: %s" % po(batch))
            for e in batch:
                self.assertEqual(e["deliveries"], 1, e)
                self.assertEqual(e["data"], {"i": e["offset"]}, e)
            got[c].extend(e["offset"] for e in batch)
            self.assertLess(turn, 100, "too many polls")
        a, b = got["a"], got["b"]
        self.assertTrue(a and b, "both consumers should have received events: a=%d b=%d" % (len(a), len(b)))
        self.assertFalse(set(a) & set(b), "events given to both consumers: %s" % sorted(set(a) & set(b)))
        self.assertEqual(len(a), len(set(a)), "a got duplicates")
        self.assertEqual(len(b), len(set(b)), "b got duplicates")
        self.assertEqual(sorted(a + b), list(range(100)))
        self.assertEqual(a, sorted(a))
        self.assertEqual(b, sorted(b))
        info = g.info()
        self.assertEqual(info["consumers"], ["a", "b"])
        self.assertEqual(info["partitions"], [{"partition": 0, "committed_offset": 100, "lag": 0}])

    # ---- 3. explicit acks ---------------------------------------------------------------

    def check_counts(self, g, pending, committed_offset, end):
        info = g.info()
        self.assertEqual(info["pending_messages"], pending, info)
        self.assertEqual(info["partitions"][0]["committed_offset"], committed_offset, info)
        self.assertEqual(info["partitions"][0]["lag"], end - committed_offset, info)
        return info

    def test_03_explicit_ack_settles_and_counts(self):
        s = self.stream(20)
        g = self.group(s, ack="explicit", ack_timeout_ms=60000)
        self.check_counts(g, 0, 0, 20)
        batch = g.consume("a", limit=10)
        self.assertEqual(po(batch), [(0, i) for i in range(10)])
        self.assertTrue(all(e["deliveries"] == 1 for e in batch))
        info = self.check_counts(g, 10, 0, 20)
        self.assertEqual(info["ack"], "explicit")
        self.assertEqual(info["dead_messages"], 0)

        self.assertEqual(g.ack({"partition": 0, "offset": 0}, consumer="a"), 1)
        self.check_counts(g, 9, 1, 20)
        self.assertEqual(g.ack({"partition": 0, "offset": 0}, consumer="a"), 0, "acking again settles nothing")
        self.check_counts(g, 9, 1, 20)
        # A range, inclusive; committed stays at the first unacked offset (1).
        self.assertEqual(g.ack([{"partition": 0, "from": 2, "to": 5}], consumer="a"), 4)
        self.check_counts(g, 5, 1, 20)
        # Acked entries above the committed offset count 0 too.
        self.assertEqual(g.ack({"partition": 0, "offset": 3}, consumer="a"), 0)
        self.assertEqual(g.ack([{"partition": 0, "from": 2, "to": 6}], consumer="a"), 1)
        self.check_counts(g, 4, 1, 20)
        # The single form without a consumer name.
        self.assertEqual(g.ack({"partition": 0, "offset": 1}), 1)
        self.check_counts(g, 3, 7, 20)
        # Never delivered offsets count nothing.
        self.assertEqual(g.ack({"partition": 0, "offset": 15}, consumer="a"), 0)
        self.assertEqual(g.ack([{"partition": 0, "from": 10, "to": 19}], consumer="a"), 0)
        self.check_counts(g, 3, 7, 20)
        # A range over acked, pending and undelivered offsets counts the pending ones.
        self.assertEqual(g.ack([{"partition": 0, "from": 0, "to": 19}], consumer="a"), 3)
        self.check_counts(g, 0, 10, 20)
        # Acked events are not handed out again; the undelivered ones are next.
        batch = g.consume("a", limit=100)
        self.assertEqual(po(batch), [(0, i) for i in range(10, 20)])
        self.check_counts(g, 10, 10, 20)
        # Several acks in one request, mixing forms; duplicates inside count once.
        n = g.ack([{"partition": 0, "offset": 10}, {"partition": 0, "from": 11, "to": 19},
                   {"partition": 0, "offset": 12}], consumer="a")
        self.assertEqual(n, 10)
        self.check_counts(g, 0, 20, 20)
        self.assertEqual(g.consume("a"), [])
        # Lag follows the end of the stream.
        publish_batch(self, self.server, s, [{"event": "e", "data": {"i": 20 + i}} for i in range(3)])
        self.check_counts(g, 0, 20, 23)

    def test_03b_ack_errors_and_auto_mode(self):
        s = self.stream(5, partitions=2)
        g = self.group(s, ack="explicit", ack_timeout_ms=60000)
        st, body = g.ack_raw({"partition": 2, "offset": 0})
        self.assertEqual((st, body.get("error")), (400, "invalid_parameter"), body)
        st, body = g.ack_raw({"partition": 0})
        self.assertEqual(st, 400, body)
        st, body = G(self, self.server, s, "nope").ack_raw({"partition": 0, "offset": 0})
        self.assertError((st, body), 404, "group_not_found")
        # Auto mode: an ack is accepted and settles nothing.
        ga = self.group(s, "auto")
        self.assertEqual(len(ga.consume("a", limit=10)), 5)
        self.assertEqual(ga.ack({"partition": 0, "offset": 0}, consumer="a"), 0)
        self.assertEqual(ga.info()["pending_messages"], 0)

    # ---- 4. redelivery ------------------------------------------------------------------

    def test_04_redelivery_after_ack_timeout(self):
        ato = 300
        s = self.stream(5)
        g = self.group(s, ack="explicit", ack_timeout_ms=ato, session_timeout_ms=60000)
        t_send = time.monotonic()
        first = g.consume("a", limit=5)
        t_recv = time.monotonic()
        self.assertEqual(po(first), [(0, i) for i in range(5)])
        self.assertEqual(g.ack([{"partition": 0, "from": 0, "to": 1}], consumer="a"), 2)
        # Another consumer long-polls: it gets 2, 3, 4 again once the timeout passes.
        again = g.consume("b", limit=10, wait_ms=5000)
        t_again = time.monotonic()
        self.assertEqual(po(again), [(0, 2), (0, 3), (0, 4)], "redelivery after the ack timeout")
        self.assertTrue(all(e["deliveries"] == 2 for e in again), again)
        self.assertGreaterEqual(t_again - t_send, ato / 1000.0 - 0.005, "redelivered before ack_timeout_ms")
        self.assertLessEqual(t_again - t_recv, ato / 1000.0 + 0.1 + scaled(SLACK),
                             "redelivery later than ack_timeout_ms + 100 ms")
        for e in again:
            orig = first[e["offset"]]
            self.assertEqual({k: v for k, v in e.items() if k != "deliveries"},
                             {k: v for k, v in orig.items() if k != "deliveries"})
        info = g.info()
        self.assertEqual(info["pending_messages"], 3)
        self.assertEqual(committed(info), {0: 2})

        # New events exist, and 2..4 become due again: the due ones come first.
        publish_batch(self, self.server, s, [{"event": "e", "data": {"i": 5 + i}} for i in range(5)])
        time.sleep(ato / 1000.0 + 0.1 + scaled(SLACK))  # let the redelivery deadline pass (not observable)
        batch = g.consume("c", limit=10)
        self.assertEqual(po(batch), [(0, i) for i in (2, 3, 4, 5, 6, 7, 8, 9)],
                         "events due for redelivery must come before new ones")
        self.assertEqual([e["deliveries"] for e in batch], [3, 3, 3, 1, 1, 1, 1, 1])
        self.assertEqual(g.ack([{"partition": 0, "from": 0, "to": 9}], consumer="c"), 8)
        info = g.info()
        self.assertEqual((info["pending_messages"], committed(info)), (0, {0: 10}))
        # Nothing acked comes back, even after the timeout.
        t0 = time.monotonic()
        self.assertEqual(g.consume("a", wait_ms=int(ato * 2.5)), [])
        self.assertGreaterEqual(time.monotonic() - t0, ato * 2.5 / 1000.0 - 0.005)

    # ---- 5. max_deliveries / dead ------------------------------------------------------

    def test_05_max_deliveries_sets_events_aside(self):
        ato = 300
        s = self.stream(3)
        g = self.group(s, ack="explicit", ack_timeout_ms=ato, max_deliveries=2, session_timeout_ms=60000)
        self.assertEqual(po(g.consume("a", limit=10)), [(0, 0), (0, 1), (0, 2)])
        self.assertEqual(g.ack({"partition": 0, "offset": 1}, consumer="a"), 1)
        again = g.consume("b", limit=10, wait_ms=5000)
        self.assertEqual([(e["offset"], e["deliveries"]) for e in again], [(0, 2), (2, 2)])
        # The group moves on: a new event is delivered while 0 and 2 wait.
        publish_batch(self, self.server, s, [{"event": "e", "data": {"i": 3}}])
        got = g.consume("b", limit=10)
        self.assertEqual([(e["offset"], e["deliveries"]) for e in got], [(3, 1)])
        self.assertEqual(g.ack({"partition": 0, "offset": 3}, consumer="b"), 1)
        # After the second timeout, 0 and 2 have had their 2 deliveries: dead, not delivered again.
        seen = []

        def dead_counted():
            seen.extend(g.consume("c", limit=10))
            return g.info()["dead_messages"] == 2

        poll_until(dead_counted, ato / 1000.0 + scaled(3), what="dead_messages == 2")
        # Past any further redelivery deadline, still nothing.
        seen.extend(g.consume("c", limit=10, wait_ms=int(ato * 2)))
        self.assertEqual(seen, [], "dead events delivered again: %s" % short(seen))
        info = g.info()
        self.assertEqual(info["dead_messages"], 2, info)
        self.assertEqual(info["pending_messages"], 0, info)
        self.assertEqual(committed(info), {0: 4}, "dead events must not block the committed offset")
        self.assertEqual(lags(info), {0: 0})
        dead = g.dead()
        self.assertEqual([(e["partition"], e["offset"], e["deliveries"]) for e in dead], [(0, 0, 2), (0, 2, 2)])
        self.assertEqual([e["data"] for e in dead], [{"i": 0}, {"i": 2}])
        self.assertEqual(len(g.dead(limit=1)), 1)
        # Later events flow as usual.
        publish_batch(self, self.server, s, [{"event": "e", "data": {"i": 4}}])
        self.assertEqual([(e["offset"], e["deliveries"]) for e in g.consume("c")], [(4, 1)])

    # ---- 6. partitioned mode ------------------------------------------------------------

    def check_assignments(self, info, consumers, nparts=4):
        a = info["assignments"]
        self.assertEqual(sorted(a), sorted(consumers), info)
        self.assertEqual(info["consumers"], sorted(consumers), info)
        allp = [p for c in a for p in a[c]]
        self.assertEqual(sorted(allp), list(range(nparts)), "assignments must cover each partition once: %r" % a)
        for c in consumers:
            self.assertTrue(a[c], "consumer %s has no partition: %r" % (c, a))
        return {c: set(v) for c, v in a.items()}

    def drain(self, g, consumers, assign, log, limit=7):
        """Consumers poll in turn until each gets [] twice in a row; checks
        that each event comes from a partition of its consumer."""
        empty = {c: 0 for c in consumers}
        rounds = 0
        while min(empty.values()) < 2:
            rounds += 1
            self.assertLess(rounds, 500)
            for c in consumers:
                batch = g.consume(c, limit=limit)
                empty[c] = 0 if batch else empty[c] + 1
                for e in batch:
                    self.assertIn(e["partition"], assign[c],
                                  "consumer %s got partition %d, assigned %r" % (c, e["partition"], assign))
                    log.append((c, e))

    def publish_keyed(self, s, keys, per_key, tag):
        events = [{"event": tag, "data": {"k": k, "n": n}, "partition_key": k}
                  for n in range(per_key) for k in keys]
        res = publish_batch(self, self.server, s, events)
        return {r: ev["data"]["k"] for r, ev in zip(res, events)}

    def check_key_order(self, log, keyof):
        """Per consumer and key, offsets arrive in increasing order; each
        key lives in one partition."""
        seen = {}
        parts = {}
        for c, e in log:
            k = keyof[(e["partition"], e["offset"])]
            self.assertEqual(e["data"]["k"], k)
            parts.setdefault(k, set()).add(e["partition"])
            prev = seen.get((c, k), -1)
            self.assertGreater(e["offset"], prev, "key %s out of order for consumer %s" % (k, c))
            seen[(c, k)] = e["offset"]
        for k, ps in parts.items():
            self.assertEqual(len(ps), 1, "key %s in several partitions %r" % (k, ps))

    def test_06a_partitioned_assignment_rebalance_leave_timeout(self):
        sto = int(scaled(800))
        s = self.stream(partitions=4)
        g = self.group(s, mode="partitioned", session_timeout_ms=sto)
        self.assertEqual(g.info()["mode"], "partitioned")
        self.assertError(g.consume_raw(limit=5), 400, "consumer_required")
        self.assertEqual(g.consume("a"), [])
        self.assertEqual(g.consume("b"), [])
        assign = self.check_assignments(g.info(), ["a", "b"])

        keys = ["user-%d" % i for i in range(40)]
        keyof = self.publish_keyed(s, keys, 3, "one")
        self.assertEqual({p for p, _ in keyof}, {0, 1, 2, 3}, "keys should spread over the 4 partitions")
        log = []
        self.drain(g, ["a", "b"], assign, log)
        self.assertEqual(sorted(po(e for _, e in log)), sorted(keyof), "a and b together get every event once")
        self.check_key_order(log, keyof)

        # A third consumer joins: rebalance.
        self.assertEqual(g.consume("c"), [])
        assign = self.check_assignments(g.info(), ["a", "b", "c"])
        more = self.publish_keyed(s, keys, 2, "two")
        keyof.update(more)
        log2 = []
        self.drain(g, ["a", "b", "c"], assign, log2)
        self.assertEqual(sorted(po(e for _, e in log2)), sorted(more))
        self.assertTrue(any(c == "c" for c, _ in log2), "c got nothing after joining")
        log += log2

        # c leaves: its partitions go back to a and b.
        st, body = g.leave("c")
        self.assertEqual((st, body), (200, {"success": True}))
        assign = self.check_assignments(g.info(), ["a", "b"])
        self.assertError(g.leave("c"), 404, "consumer_not_found")
        self.assertError(g.leave("nobody"), 404, "consumer_not_found")
        more = self.publish_keyed(s, keys, 1, "three")
        keyof.update(more)
        log3 = []
        self.drain(g, ["a", "b"], assign, log3)
        self.assertEqual(sorted(po(e for _, e in log3)), sorted(more))
        log += log3
        self.check_key_order(log, keyof)

        # b stops polling: after session_timeout_ms it loses its partitions.
        t_b_send = time.monotonic()
        self.assertEqual(g.consume("b"), [])
        t_b_recv = time.monotonic()

        def b_gone():
            g.consume("a")  # a stays live
            info = g.info()
            return info if info["consumers"] == ["a"] else None

        info = poll_until(b_gone, sto / 1000.0 + scaled(3), interval=0.01, what="b to time out")
        t_gone = time.monotonic()
        self.assertGreaterEqual(t_gone - t_b_send, sto / 1000.0 - 0.005, "b timed out too early")
        self.assertLessEqual(t_gone - t_b_recv, sto / 1000.0 + 0.1 + scaled(SLACK), "b timed out too late")
        self.assertEqual(info["assignments"], {"a": [0, 1, 2, 3]})
        more = self.publish_keyed(s, keys, 1, "four")
        got = []
        while True:
            batch = g.consume("a", limit=100)
            if not batch:
                break
            got += batch
        self.assertEqual(sorted(po(got)), sorted(more))

    def test_06b_partition_moves_only_after_the_old_owner_acks(self):
        s = self.stream(partitions=4)
        g = self.group(s, mode="partitioned", ack="explicit", ack_timeout_ms=60000, session_timeout_ms=60000)
        self.assertEqual(g.consume("a"), [])
        publish_batch(self, self.server, s, [{"event": "e", "data": {"n": n}, "partition": p}
                                             for n in range(2) for p in range(4)])
        first = g.consume("a", limit=100)
        self.assertEqual(sorted(po(first)), [(p, o) for p in range(4) for o in range(2)])
        self.assertEqual(g.info()["pending_messages"], 8)
        # b joins while a holds unacked events in every partition: b gets nothing.
        self.assertEqual(g.consume("b"), [])
        info = g.info()
        self.assertEqual(info["consumers"], ["a", "b"])
        self.assertEqual(info["assignments"].get("b", []), [],
                         "a partition was handed to b while a has unacked events in it: %r" % info)
        publish_batch(self, self.server, s, [{"event": "e", "data": {"n": 2}, "partition": p} for p in range(4)])
        self.assertEqual(g.consume("b", limit=100), [], "b got events of partitions with a's pending events")
        # a acks partition by partition; a partition moves to b only after its ack.
        b_got = []
        for p in range(4):
            before = g.consume("b", limit=100)
            self.assertEqual(before, [], "b got %s before a acked partition %d" % (po(before), p))
            self.assertEqual(g.ack([{"partition": p, "from": 0, "to": 1}], consumer="a"), 2)
            info = g.info()
            mine = info["assignments"].get("b", [])
            batch = g.consume("b", limit=100)
            self.assertTrue(all(e["partition"] <= p for e in batch), "b got %s after acks up to %d" % (po(batch), p))
            if p in mine:
                self.assertEqual(po(batch), [(p, 2)], "b owns %d after the ack: it gets its new event" % p)
            b_got += batch
        info = g.info()
        assign = self.check_assignments(info, ["a", "b"])
        self.assertEqual(sorted(po(b_got)), [(p, 2) for p in sorted(assign["b"])])
        a_got = g.consume("a", limit=100)
        self.assertEqual(sorted(po(a_got)), [(p, 2) for p in sorted(assign["a"])])
        self.assertTrue(all(e["deliveries"] == 1 for e in a_got + b_got))

    def test_06c_partition_moves_after_the_old_owners_ack_timeout(self):
        ato = 300
        s = self.stream(partitions=4)
        g = self.group(s, mode="partitioned", ack="explicit", ack_timeout_ms=ato, session_timeout_ms=60000)
        self.assertEqual(g.consume("a"), [])
        publish_batch(self, self.server, s, [{"event": "e", "data": {"p": p}, "partition": p} for p in range(4)])
        t_send = time.monotonic()
        first = g.consume("a", limit=100)
        t_recv = time.monotonic()
        self.assertEqual(sorted(po(first)), [(p, 0) for p in range(4)])
        self.assertEqual(g.consume("b"), [])
        # a stays live (keeps polling) but never acks.  Once the ack timeout
        # passes, b's share of the partitions must reach b (redelivered).
        log = []

        def b_served():
            for c in ("a", "b"):
                for e in g.consume(c, limit=100):
                    log.append((time.monotonic(), c, e))
            return any(c == "b" for _, c, _ in log)

        try:
            poll_until(b_served, ato / 1000.0 + scaled(3), interval=0.01,
                       what="b to get its partitions after a's ack timeout")
        except AssertionError as ex:
            info = g.info()
            self.fail("%s; a (live, never acking) keeps the partitions forever: redeliveries seen %s, "
                      "info %s" % (ex, [(c, po([e])) for _, c, e in log], short(info, 600)))
        t_b, _, _ = next(x for x in log if x[1] == "b")
        self.assertGreaterEqual(t_b - t_send, ato / 1000.0 - 0.005, "b got a's unacked events before the timeout")
        self.assertLessEqual(t_b - t_recv, ato / 1000.0 + 0.1 + scaled(SLACK) + 0.05)
        b_events = [e for _, c, e in log if c == "b"]
        self.assertTrue(all(e["offset"] == 0 and e["deliveries"] >= 2 for e in b_events), b_events)
        info = g.info()
        self.assertTrue(info["assignments"].get("b"), info)
        for e in b_events:
            self.assertIn(e["partition"], info["assignments"]["b"], info)

    # ---- 7. long poll --------------------------------------------------------------------

    def check_long_poll(self, **cfg):
        s = self.stream()
        g = self.group(s, **cfg)
        self.assertEqual(g.consume("lp"), [])
        out = {}

        def poll():
            out["t0"] = time.monotonic()
            try:
                out["r"] = g.consume_raw("lp", limit=10, wait_ms=5000)
            except Exception as ex:  # the server went away
                out["r"] = (None, repr(ex))
            out["t1"] = time.monotonic()

        th = harness.thread(poll)
        time.sleep(scaled(0.3))  # the poll is in flight (nothing observable to poll for)
        self.assertTrue(th.is_alive(), "the long poll answered before any event: %r" % (out,))
        try:
            publish_batch(self, self.server, s, [{"event": "wake", "data": 1}])
        except Exception as ex:
            try:
                self.server.proc.wait(scaled(2))
            except Exception:
                pass
            self.fail("publish while a group long poll %s waits -> %r; server %s" %
                      (cfg, ex, "running" if self.server.running() else "DIED:\n" + self.server.log_tail(400)))
        t_pub = time.monotonic()
        th.join(scaled(10))
        st, body = out["r"]
        self.assertEqual(st, 200, "long poll %s woken by a publish -> %r; server %s" %
                         (cfg, body, "running" if self.server.running() else "DIED:\n" + self.server.log_tail(600)))
        self.assertEqual(po(body), [(0, 0)])
        self.assertLess(out["t1"] - t_pub, scaled(0.5), "long poll slow to wake")
        self.assertLess(out["t1"] - out["t0"], 2.5)
        # Nothing comes: [] at the deadline.
        if cfg.get("ack") == "explicit":
            self.assertEqual(g.ack({"partition": 0, "offset": 0}, "lp"), 1)
        t0 = time.monotonic()
        self.assertEqual(g.consume("lp", wait_ms=700), [])
        el = time.monotonic() - t0
        self.assertGreaterEqual(el, 0.695)
        self.assertLess(el, 0.7 + scaled(0.5))

    def test_07a_long_poll_explicit_shared(self):
        self.check_long_poll(ack="explicit", ack_timeout_ms=60000)

    def test_07b_long_poll_explicit_partitioned(self):
        self.check_long_poll(ack="explicit", mode="partitioned", ack_timeout_ms=60000)

    def test_07c_long_poll_auto_shared(self):
        self.check_long_poll()

    def test_07d_long_poll_auto_partitioned(self):
        self.check_long_poll(mode="partitioned")

    def test_07e_one_event_two_waiting_consumers(self):
        s = self.stream()
        g = self.group(s, ack="explicit", ack_timeout_ms=60000)
        res = {}

        def poll(c):
            res[c] = (g.consume_raw(c, limit=10, wait_ms=1500), time.monotonic())

        ths = [harness.thread(poll, c) for c in ("a", "b")]
        time.sleep(scaled(0.3))  # both in flight
        publish_batch(self, self.server, s, [{"event": "only", "data": 1}])
        t_pub = time.monotonic()
        for th in ths:
            th.join(scaled(10))
        got = {c: res[c][0][1] for c in res}
        self.assertEqual(sorted(len(v) for v in got.values()), [0, 1], "exactly one consumer gets it: %r" % got)
        winner = next(c for c in got if got[c])
        self.assertLess(res[winner][1] - t_pub, scaled(0.5))

    # ---- 9. deletion ---------------------------------------------------------------------

    def test_09_group_delete_and_stream_delete(self):
        s = self.stream(3)
        g = self.group(s)
        g2 = self.group(s, "g2", ack="explicit")
        st, body = self.server.get("/stream/%s/groups" % s)
        self.assertEqual((st, body), (200, {"groups": ["g", "g2"]}))
        # A long poll on the group is answered when the group is deleted.
        self.assertEqual(len(g.consume("a", limit=10)), 3)
        out = {}
        th = harness.thread(lambda: out.update(r=g.consume_raw("a", wait_ms=10000), t=time.monotonic()))
        time.sleep(scaled(0.2))
        self.assertEqual(g.delete(), (200, {"success": True}))
        t_del = time.monotonic()
        th.join(scaled(10))
        self.assertError(out["r"], 404, "group_not_found")
        self.assertLess(out["t"] - t_del, scaled(1.0))
        self.assertError(self.server.get(g.path("/info")), 404, "group_not_found")
        self.assertError(g.consume_raw("a"), 404, "group_not_found")
        self.assertError(g.ack_raw({"partition": 0, "offset": 0}), 404, "group_not_found")
        self.assertError(self.server.get(g.path("/dead")), 404, "group_not_found")
        self.assertError(g.leave("a"), 404, "group_not_found")
        self.assertError(g.delete(), 404, "group_not_found")
        self.assertEqual(self.server.get("/stream/%s/groups" % s)[1], {"groups": ["g2"]})
        # Re-created under the same name: a new group from the start.
        g.create()
        self.assertEqual(po(g.consume("a", limit=10)), [(0, 0), (0, 1), (0, 2)])

        # Deleting the stream removes its groups.
        self.assertEqual(len(g2.consume("x", limit=10)), 3)
        self.assertEqual(self.server.delete("/stream/" + s)[0], 200)
        self.assertError(self.server.get(g2.path("/info")), 404, "stream_not_found")
        self.server.create(s)
        self.assertEqual(self.server.get("/stream/%s/groups" % s), (200, {"groups": []}))
        self.assertError(self.server.get(g2.path("/info")), 404, "group_not_found")
        self.assertError(g.consume_raw("a"), 404, "group_not_found")
        g2.create(ack="explicit")
        self.assertEqual(g2.info()["pending_messages"], 0)
        # Groups of a missing stream.
        self.assertError(self.server.get("/stream/no-such-stream/groups"), 404, "stream_not_found")
        self.assertError(self.server.post("/stream/no-such-stream/group/g"), 404, "stream_not_found")

    def test_09b_bad_group_requests(self):
        s = self.stream(1)
        bad = [({"mode": "fanout"}, "mode"), ({"ack": "manual"}, "ack"), ({"start": 0}, "start"),
               ({"ack_timeout_ms": -1}, "ack_timeout_ms"), ({"max_deliveries": "x"}, "max_deliveries")]
        for body, field in bad:
            st, resp = self.server.post("/stream/%s/group/g" % s, body)
            self.assertEqual(st, 400, (body, resp))
            self.assertIn(field, resp.get("message", ""), resp)
        self.assertEqual(self.server.get("/stream/%s/groups" % s)[1], {"groups": []})
        st, resp = self.server.post("/stream/%s/group/bad%%20name" % s)
        self.assertError((st, resp), 400, "invalid_name")
        g = self.group(s, start="latest")
        self.assertEqual(g.consume("a"), [])
        publish_batch(self, self.server, s, [{"event": "e", "data": 1}])
        self.assertEqual(po(g.consume("a")), [(0, 1)])
        self.assertParamError(g.consume_raw("a", limit=0), "limit")
        self.assertParamError(g.consume_raw("a", wait_ms=-1), "wait_ms")


class GroupRetentionTest(ServerTestCase):
    SERVER_ARGS = ["--segment-bytes", "4096", "--retention-check-ms", "50"]

    def test_10_retention_skips_what_the_group_never_consumed(self):
        s = "ret"
        self.server.create(s, max_events=50)
        ga = G(self, self.server, s, "auto").create()
        ge = G(self, self.server, s, "expl").create(ack="explicit", ack_timeout_ms=60000)
        n = 600
        for start in range(0, n, 100):
            publish_batch(self, self.server, s, [{"event": "r", "data": {"i": i, "pad": "r" * 150}}
                                                 for i in range(start, start + 100)])
        poll_until(lambda: self.server.info(s)["min_offset"] >= n - 200, scaled(15), what="retention to run")
        # Retention removes a sealed segment only once its sync is done, so
        # it can still be moving: wait until min_offset holds still for a
        # while (20 retention passes), or the groups' reads race with it.
        last = [None, time.monotonic()]

        def settled():
            mn = self.server.info(s)["min_offset"]
            if mn != last[0]:
                last[0], last[1] = mn, time.monotonic()
            return time.monotonic() - last[1] >= scaled(1.0)
        poll_until(settled, scaled(20), what="retention to settle")
        for g in (ga, ge):
            mn = self.server.info(s)["min_offset"]
            got = []
            while True:
                batch = g.consume("c", limit=1000)
                if not batch:
                    break
                got += batch
            self.assertTrue(got, "%s: the group stalled after retention" % g.group)
            offs = [e["offset"] for e in got]
            self.assertGreaterEqual(offs[0], mn, "%s delivered a removed offset" % g.group)
            self.assertEqual(offs, list(range(offs[0], n)), "%s: not dense up to the end" % g.group)
            self.assertEqual([e["data"]["i"] for e in got], offs)
            info = g.info()
            self.assertEqual(info["skipped_messages"], offs[0], info)
            self.assertGreater(info["skipped_messages"], 0)
            if g is ge:
                self.assertEqual(info["pending_messages"], n - offs[0])
                self.assertEqual(g.ack([{"partition": 0, "from": 0, "to": n - 1}], "c"), n - offs[0])
            info = g.info()
            self.assertEqual(info["partitions"], [{"partition": 0, "committed_offset": n, "lag": 0}])


if __name__ == "__main__":
    unittest.main()
