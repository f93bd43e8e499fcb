"""Structured logs: text and JSON lines, and the access log.

Each request is sent on its own connection, so that its access line is
found by the peer address (the client's port) and counted: exactly one
line per request, with its method, path, status, body bytes and duration.
"""

import json
import re
import socket
import subprocess
import tempfile
import os
import unittest

import harness
from harness import Server, poll_until

TS = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"


def send(server, raw):
    """Sends raw request bytes on a new connection; returns (client port, response)."""
    with server.raw_socket() as s:
        port = s.getsockname()[1]
        s.sendall(raw)
        resp = harness.read_response(s, timeout=harness.scaled(10))
    return port, resp


def get(path, extra=b""):
    return b"GET " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n" + extra + b"\r\n"


def post(path, body):
    return (b"POST " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)


class LogTestBase(unittest.TestCase):
    ARGS = ()

    @classmethod
    def setUpClass(cls):
        cls.server = Server(list(cls.ARGS))
        cls.addClassCleanup(cls.server.cleanup)
        cls.server.start()

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()

    def lines(self):
        text = self.server.log_since_start()
        return [l for l in text.split("\n") if l]


class JsonLogTest(LogTestBase):
    ARGS = ("--log-format", "json", "--access-log", "on")

    def access(self, port, timeout=5):
        """The access lines of the connection from client port `port`."""
        peer = "127.0.0.1:%d" % port
        found = []

        def seen():
            found[:] = [r for r in map(json.loads, self.lines()) if r.get("msg") == "access" and r.get("peer") == peer]
            return found
        poll_until(seen, harness.scaled(timeout), what="access line of " + peer)
        return found

    def test_every_line_is_a_json_object(self):
        send(self.server, get(b"/health"))
        lines = self.lines()
        self.assertGreater(len(lines), 2)
        for line in lines:
            rec = json.loads(line)
            self.assertRegex(rec["ts"], "^" + TS + "$")
            self.assertIn(rec["level"], ("debug", "info", "warn", "error"))
            self.assertIsInstance(rec["msg"], str)
        msgs = [json.loads(l)["msg"] for l in lines]
        self.assertTrue([m for m in msgs if "listening on 127.0.0.1:%d" % self.server.port in m], msgs)

    def test_access_line_per_request(self):
        s = "logs-json"
        cases = [
            (post(b"/stream/%s/publish" % s.encode(), b'{"event":"e","data":1}'), "POST", "/stream/%s/publish" % s, 200),
            (get(b"/stream/%s/consume/c?from_offset=0" % s.encode()), "GET", "/stream/%s/consume/c" % s, 200),
            (get(b"/stream/%s/info" % s.encode()), "GET", "/stream/%s/info" % s, 200),
            (get(b"/no/such/route"), "GET", "/no/such/route", 404),
            (b"DELETE /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", "DELETE", "/health", 405),
        ]
        for raw, method, path, status in cases:
            port, resp = send(self.server, raw)
            self.assertEqual(resp.status, status, (path, resp))
            recs = self.access(port)
            self.assertEqual(len(recs), 1, recs)
            rec = recs[0]
            self.assertEqual(rec["level"], "info")
            self.assertEqual(rec["method"], method)
            self.assertEqual(rec["path"], path)
            self.assertEqual(rec["status"], status)
            self.assertEqual(rec["bytes"], len(resp.body))
            self.assertEqual(rec["bytes"], int(resp.headers["content-length"]))
            self.assertIsInstance(rec["duration_ms"], float)
            self.assertGreaterEqual(rec["duration_ms"], 0)
            self.assertLess(rec["duration_ms"], harness.scaled(10) * 1000)

    def test_odd_path_bytes_stay_on_one_line(self):
        # %0A, %22 and %5C decode to a newline, a quote and a backslash in the path.
        port, resp = send(self.server, get(b"/a%0Ab%22c%5Cd%20e%C3%A9"))
        self.assertEqual(resp.status, 404)
        rec = self.access(port)[0]
        self.assertEqual(rec["path"], "/a\nb\"c\\d e\u00c3\u00a9")  # bytes outside ASCII escaped one by one

    def test_long_poll_duration(self):
        s = "logs-wait"
        self.server.create(s)
        port, resp = send(self.server, get(b"/stream/%s/consume/c?from_offset=0&wait_ms=300" % s.encode()))
        self.assertEqual(resp.status, 200)
        self.assertGreaterEqual(self.access(port)[0]["duration_ms"], 250)

    def test_websocket_upgrade(self):
        s = "logs-ws"
        self.server.create(s)
        with self.server.raw_socket() as c:
            port = c.getsockname()[1]
            c.sendall(b"GET /stream/%s/ws/watcher HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                      b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                      b"Sec-WebSocket-Version: 13\r\n\r\n" % s.encode())
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = c.recv(4096)
                self.assertTrue(chunk, head)
                head += chunk
            self.assertTrue(head.startswith(b"HTTP/1.1 101"), head)
            rec = self.access(port)[0]  # logged at the handshake, while the session goes on
        self.assertEqual((rec["method"], rec["path"], rec["status"], rec["bytes"]), ("GET", "/stream/%s/ws/watcher" % s, 101, 0))

    def test_client_gone_before_the_answer(self):
        # Half a body, then the client closes: no response, status 0.
        with self.server.raw_socket() as c:
            port = c.getsockname()[1]
            c.sendall(b"POST /stream/logs-gone/publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 100\r\n\r\n{\"event\":")
        rec = self.access(port, timeout=15)[0]
        self.assertEqual((rec["method"], rec["path"], rec["status"], rec["bytes"]), ("POST", "/stream/logs-gone/publish", 0, 0))


class TextLogTest(LogTestBase):
    ARGS = ("--access-log", "on")

    def test_text_lines_and_access_fields(self):
        port, resp = send(self.server, get(b"/x%20y%0Az"))
        self.assertEqual(resp.status, 404)
        peer = "peer=127.0.0.1:%d" % port
        poll_until(lambda: [l for l in self.lines() if l.endswith(peer)], harness.scaled(5), what=peer)
        for line in self.lines():
            self.assertRegex(line, "^" + TS + " (DEBUG|INFO |WARN |ERROR) ")
        line = [l for l in self.lines() if l.endswith(peer)]
        self.assertEqual(len(line), 1)
        fields = dict(f.split("=", 1) for f in line[0].split()[3:])
        self.assertEqual(line[0].split()[2], "access")
        self.assertEqual(fields, {"method": "GET", "path": "/x\\x20y\\x0az", "status": "404",
                                  "bytes": str(len(resp.body)), "duration_ms": fields["duration_ms"],
                                  "peer": "127.0.0.1:%d" % port})
        self.assertRegex(fields["duration_ms"], r"^\d+\.\d{3}$")


class AccessLogOffTest(LogTestBase):
    ARGS = ()

    def test_off_by_default(self):
        for _ in range(3):
            send(self.server, get(b"/health"))
        self.server.publish("logs-off", {"event": "e", "data": 1})
        self.assertFalse([l for l in self.lines() if " access " in l], self.lines())


class BadLogSettingsTest(unittest.TestCase):

    def test_rejected(self):
        with tempfile.TemporaryDirectory() as d:
            for args, word in ((["--log-format", "xml"], "log_format"), (["--access-log", "maybe"], "access_log")):
                p = subprocess.run([harness.BIN] + args + ["--data-dir", os.path.join(d, "data")], capture_output=True,
                                   text=True, stdin=subprocess.DEVNULL, timeout=harness.scaled(20))
                self.assertEqual(p.returncode, 2, p)
                self.assertIn(word, p.stderr)


if __name__ == "__main__":
    unittest.main()
