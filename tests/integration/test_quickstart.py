"""The Quick start of API.md, run literally with curl (port replaced)."""

import json
import os
import subprocess
import unittest

import harness

# Verbatim from API.md "Quick start: these must work exactly as written"
# (the WebSocket and consumer-group lines are covered elsewhere).
QUICKSTART = r"""
curl -X POST http://localhost:15500/stream/notifications
curl -X POST http://localhost:15500/stream/notifications \
  -H "Content-Type: application/json" -d '{"partitions": 1, "retention_hours": 24}'   # 409: exists
curl -X POST http://localhost:15500/stream/notifications/publish \
  -H "Content-Type: application/json" \
  -d '{"event": "user.signup", "data": "New user registered"}'        # {"success":true,"offset":0,...}
curl -X POST http://localhost:15500/stream/notifications/publish \
  -H "Content-Type: application/json" \
  -d '{"event": "order.created", "data": "{\"order_id\":123}", "partition_key": "user-123"}'
curl "http://localhost:15500/stream/notifications/consume/user-1?from_offset=0&limit=10"
curl http://localhost:15500/stream/list
curl http://localhost:15500/stream/notifications/info
curl http://localhost:15500/stream/notifications/stats
curl -X DELETE http://localhost:15500/stream/notifications
"""

API_MD = "/work/shared/API.md"


def split_commands(text):
    cmds, cur = [], ""
    for line in text.strip("\n").split("\n"):
        if line.endswith("\\"):
            cur += line + "\n"
        else:
            cmds.append(cur + line)
            cur = ""
    return cmds


class QuickStartTest(harness.ServerTestCase):
    def curl(self, command):
        """Run one documented curl command through bash; returns (status, json)."""
        command = command.replace("15500", str(self.server.port))
        self.assertTrue(command.startswith("curl "))
        # Only add output options: silent, and the status code on a last line.
        command = "curl -sS -w '\\n%{http_code}' " + command[len("curl "):]
        p = subprocess.run(["bash", "-c", command], capture_output=True, timeout=harness.scaled(30))
        self.assertEqual(p.returncode, 0, "curl failed: %s\n%s" % (command, p.stderr.decode()))
        out = p.stdout.decode("utf-8")
        body, _, code = out.rpartition("\n")
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            self.fail("non-JSON response to %s: %r" % (command, body))
        return int(code), parsed

    def test_commands_match_api_md(self):
        if not os.path.exists(API_MD):
            self.skipTest("API.md not available")
        with open(API_MD) as f:
            doc = f.read()
        for cmd in split_commands(QUICKSTART):
            self.assertIn(cmd, doc, "the quick start text here must be copied verbatim from API.md")

    def test_quickstart(self):
        cmds = split_commands(QUICKSTART)
        self.assertEqual(len(cmds), 9)
        t0 = harness.now_ms()

        st, body = self.curl(cmds[0])
        self.assertEqual(st, 201, body)
        self.assertEqual(body["success"], True)
        self.assertEqual(body["stream"], "notifications")
        self.assertEqual(body["partitions"], 1)
        self.assertIsInstance(body["retention_hours"], int)

        st, body = self.curl(cmds[1])
        self.assertError((st, body), 409, "stream_exists")

        st, body = self.curl(cmds[2])
        self.assertEqual(st, 200, body)
        self.assertEqual((body["success"], body["offset"], body["partition"]), (True, 0, 0))

        st, body = self.curl(cmds[3])
        self.assertEqual(st, 200, body)
        self.assertEqual((body["success"], body["offset"], body["partition"]), (True, 1, 0))

        st, events = self.curl(cmds[4])
        self.assertEqual(st, 200, events)
        self.assertIsInstance(events, list)
        self.assertEqual(len(events), 2, events)
        e0, e1 = events
        self.assertEqual((e0["offset"], e0["partition"], e0["event"], e0["data"]),
                         (0, 0, "user.signup", "New user registered"))
        self.assertEqual((e1["offset"], e1["partition"], e1["event"], e1["data"]),
                         (1, 0, "order.created", '{"order_id":123}'))
        self.assertEqual(e1.get("key"), "user-123", e1)
        self.assertNotIn("key", e0)
        for e in events:
            self.assertIsInstance(e["timestamp"], int)
            self.assertTrue(t0 - 5000 <= e["timestamp"] <= harness.now_ms() + 5000, e)
        self.assertLessEqual(e0["timestamp"], e1["timestamp"])

        st, body = self.curl(cmds[5])
        self.assertEqual(st, 200, body)
        self.assertIn("notifications", body["streams"])

        st, info = self.curl(cmds[6])
        self.assertEqual(st, 200, info)
        self.assertEqual(info["name"], "notifications")
        self.assertEqual(info["partitions"], 1)
        self.assertEqual(info["message_count"], 2)
        self.assertEqual(info["min_offset"], 0)
        self.assertEqual(info["max_offset"], 1)
        for k in ("retention_hours", "retention_bytes", "max_events", "created_at"):
            self.assertIsInstance(info[k], int, k)

        st, stats = self.curl(cmds[7])
        self.assertEqual(st, 200, stats)
        for k in ("name", "message_count", "min_offset", "max_offset", "subscriber_count", "total_published",
                  "total_consumed", "dropped", "created_at", "generation", "partition_count", "partitions"):
            self.assertIn(k, stats)
        self.assertEqual(stats["name"], "notifications")
        self.assertEqual(stats["message_count"], 2)
        self.assertEqual(stats["total_published"], 2)
        self.assertEqual(stats["total_consumed"], 2)
        self.assertEqual(stats["partition_count"], 1)
        self.assertEqual(stats["subscriber_count"], 0)
        self.assertEqual(stats["dropped"], 0)
        self.assertIsInstance(stats["partitions"], list)
        self.assertEqual(len(stats["partitions"]), 1)
        p0 = stats["partitions"][0]
        self.assertEqual((p0["partition"], p0["message_count"], p0["min_offset"], p0["max_offset"]), (0, 2, 0, 1))
        self.assertGreater(p0["bytes"], 0)

        st, body = self.curl(cmds[8])
        self.assertEqual(st, 200, body)
        self.assertEqual(body.get("success"), True, body)

        st, body = self.curl(cmds[6])
        self.assertError((st, body), 404, "stream_not_found")
        st, body = self.curl(cmds[5])
        self.assertNotIn("notifications", body["streams"])


if __name__ == "__main__":
    unittest.main()
