"""Hostile and malformed input.  After every test the server must still
answer /health and the data stored at the start must be intact."""

import collections
import json
import select
import socket
import time
import unittest

import harness
from harness import ServerTestCase, read_response

ALLOWED_ORIGIN = "http://app.example.com"


class BadInputTest(ServerTestCase):
    SERVER_ARGS = ["--allowed-origins", ALLOWED_ORIGIN + ",http://other.example.org:8080"]

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        srv = cls.server
        srv.create("intact", partitions=2)
        for i in range(10):
            srv.publish("intact", {"event": "keep", "data": {"i": i}, "headers": {"n": str(i)}})
        cls.snapshot = [srv.consume_all("intact", partition=p) for p in range(2)]

    def tearDown(self):
        super().tearDown()
        st, body = self.server.get("/health", timeout=harness.scaled(10))
        self.assertEqual(st, 200)
        self.assertEqual(body["status"], "healthy")
        now = [self.server.consume_all("intact", partition=p) for p in range(2)]
        self.assertEqual(now, self.snapshot, "stored data changed")

    # ---- raw socket helpers ------------------------------------------------

    def exchange(self, data, timeout=5.0):
        """Send raw bytes; return the Response, or None if the server closed
        the connection without answering."""
        s = self.server.raw_socket()
        try:
            try:
                s.sendall(data)
            except (BrokenPipeError, ConnectionResetError):
                pass
            try:
                return read_response(s, timeout=harness.scaled(timeout))
            except socket.timeout:
                self.fail("server neither answered nor closed within %.0fs for %r" % (timeout, data[:80]))
        finally:
            s.close()

    def assertRejected(self, resp, allowed=(400, 411, 413, 414, 431, 501, 505)):
        if resp is not None:
            self.assertIn(resp.status, allowed, resp)

    # ---- tests ------------------------------------------------------------

    def test_garbage_bytes(self):
        for junk in (b"\xff\xfe garbage \x01\x02\r\n\r\n",
                     b"HELLO\r\n\r\n",
                     b"GET\r\n\r\n",
                     b"GET / HTTP/9.9\r\n\r\n",
                     b"GET /health HTTP/1.1\r\nHost: x\r\nBad Header Line\r\n\r\n",
                     bytes(range(256)) * 8 + b"\r\n\r\n"):
            resp = self.exchange(junk)
            self.assertRejected(resp, allowed=(400, 404, 405, 501, 505))
        # A TLS client hello (no line end at all), then the client gives up.
        s = self.server.raw_socket()
        try:
            s.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64)
            s.shutdown(socket.SHUT_WR)
            try:
                self.assertRejected(read_response(s, timeout=harness.scaled(5)))
            except socket.timeout:
                self.fail("no answer or close after a TLS hello and EOF")
        finally:
            s.close()

    def test_request_line_starting_with_nul(self):
        # libmicrohttpd neither answers nor closes when the request line
        # starts with a NUL byte; header_timeout_s must then close it.
        srv = harness.Server(["--header-timeout-s", "1"])
        self.addCleanup(srv.cleanup)
        srv.start()
        for junk in (b"\x00 garbage\r\n\r\n", b"\x00\xff\xfe garbage \x01\x02\r\n\r\n", b"\x00"):
            s = srv.raw_socket()
            try:
                s.sendall(junk)
                t0 = time.monotonic()
                try:
                    resp = read_response(s, timeout=harness.scaled(4))
                except socket.timeout:
                    self.fail("connection held past header_timeout_s for %r" % junk)
                self.assertRejected(resp)
                self.assertLess(time.monotonic() - t0, harness.scaled(4))
            finally:
                s.close()
        self.assertEqual(srv.get("/health")[0], 200)
        srv.stop()

    def test_connect_and_close(self):
        for _ in range(50):
            s = self.server.raw_socket()
            s.close()
        s = self.server.raw_socket()
        s.sendall(b"GET /hea")
        s.close()
        s = self.server.raw_socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.sendall(b"POST /stream/intact/publish HTTP/1.1\r\nHost: x\r\nContent-Length: 30\r\n\r\n{")
        s.close()  # RST

    def test_truncated_body(self):
        for body in (b'{"event":"x","data"', b'{"event":"cut","data":1}'):
            s = self.server.raw_socket()
            s.sendall(b"POST /stream/intact/publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 100\r\n\r\n" + body)
            s.shutdown(socket.SHUT_WR)
            try:
                resp = read_response(s, timeout=harness.scaled(1))
            except socket.timeout:
                resp = None  # checked by test_eof_after_partial_request_closes_connection
            finally:
                s.close()
            if resp is not None:
                self.assertGreaterEqual(resp.status, 400, resp)
        # Truncated without closing: the connection is held, others are served.
        s = self.server.raw_socket()
        try:
            s.sendall(b"POST /stream/intact/publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 100\r\n\r\n" + b'{"event":"cut","data":1}')
            t0 = time.monotonic()
            self.assertEqual(self.server.get("/health")[0], 200)
            self.assertLess(time.monotonic() - t0, harness.scaled(5), "a held connection blocked others")
        finally:
            s.close()

    def test_eof_after_partial_request_closes_connection(self):
        # A client sends part of a request and then closes its side: the server
        # must notice the EOF and close, not hold the connection until the
        # idle timeouts (header_timeout_s, connection_timeout_s).  The miss
        # seen so far is intermittent (about 1% of connections), so try many,
        # one after the other, and wait at the end for the slow ones.
        partial = [
            b"POST /stream/intact/publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n" + b'{"event":"x","data"',
            b"GET /health HTTP/1.1\r\nHost: x\r\n",  # headers not finished
            b"GET /hea",  # request line not finished
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64,  # a TLS client hello
        ]
        n = 300
        suspects = []
        kind_of = {}
        try:
            for i in range(n):
                s = self.server.raw_socket()
                s.sendall(partial[i % len(partial)])
                s.shutdown(socket.SHUT_WR)
                s.settimeout(0.02)
                try:
                    while s.recv(65536):
                        pass
                    s.close()
                except socket.timeout:
                    suspects.append(s)
                    kind_of[s] = partial[i % len(partial)][:20]
                except ConnectionResetError:
                    s.close()
            deadline = time.monotonic() + harness.scaled(5)
            left = list(suspects)
            while left and time.monotonic() < deadline:
                r, _, _ = select.select(left, [], [], 0.1)
                for s in r:
                    try:
                        data = s.recv(65536)
                    except (ConnectionResetError, BlockingIOError, socket.timeout):
                        data = b""
                    if not data:
                        left.remove(s)
            kinds = sorted(collections.Counter(kind_of[s] for s in left).items())
            self.assertEqual(len(left), 0, "%d of %d connections were still open %.0fs after the client's EOF "
                             "(closed only by the idle timeouts); by request start: %r"
                             % (len(left), n, harness.scaled(5), kinds))
        finally:
            for s in suspects:
                s.close()

    def test_slow_client(self):
        body = json.dumps({"event": "slow", "data": 1}).encode()
        req = (b"POST /stream/slow-x/publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               b"Content-Length: %d\r\n\r\n" % len(body)) + body
        s = self.server.raw_socket()
        try:
            for i in range(len(req)):
                s.sendall(req[i:i + 1])
                if i % 8 == 0:
                    time.sleep(0.005)
            resp = read_response(s, timeout=harness.scaled(5))
        finally:
            s.close()
        self.assertIsNotNone(resp)
        self.assertEqual(resp.status, 200, resp)
        self.assertEqual(resp.json()["offset"], 0)
        self.assertEqual(self.server.consume("slow-x")[1][0]["event"], "slow")

    def test_slowloris_does_not_block_others(self):
        socks = []
        try:
            for i in range(30):
                s = self.server.raw_socket()
                s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: ")
                socks.append(s)
            t0 = time.monotonic()
            for _ in range(5):
                self.assertEqual(self.server.get("/health")[0], 200)
            self.assertLess(time.monotonic() - t0, harness.scaled(2))
            # The held connections still work when they finish.
            socks[0].sendall(b"1\r\n\r\n")
            resp = read_response(socks[0], timeout=harness.scaled(5))
            self.assertIsNotNone(resp)
            self.assertEqual(resp.status, 200)
        finally:
            for s in socks:
                s.close()

    def test_huge_headers(self):
        resp = self.exchange(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 200000 + b"\r\n\r\n")
        self.assertRejected(resp)
        many = b"".join(b"X-H%d: v\r\n" % i for i in range(5000))
        resp = self.exchange(b"GET /health HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n")
        self.assertRejected(resp, allowed=(200, 400, 413, 431))
        resp = self.exchange(b"GET /" + b"a" * 100000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertRejected(resp, allowed=(400, 404, 414, 431))

    def test_header_capacity_follows_connection_memory_bytes(self):
        # The default pool (8192 bytes) holds a request head of 7.5 KB; a
        # head past it is refused or cut off, and the connection's neighbours
        # go on being served.
        pad = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: %s\r\n\r\n"
        resp = self.exchange(pad % (b"a" * 7500))
        self.assertIsNotNone(resp)
        self.assertEqual(resp.status, 200, resp)
        self.assertRejected(self.exchange(pad % (b"a" * 9000)))
        small = harness.Server(["--connection-memory-bytes", "4096"])
        self.addCleanup(small.cleanup)
        small.start()
        st, _ = small.get("/health")
        self.assertEqual(st, 200)
        s = small.raw_socket()
        try:
            try:
                s.sendall(pad % (b"a" * 5000))
            except (BrokenPipeError, ConnectionResetError):
                pass
            try:
                resp = read_response(s, timeout=harness.scaled(5))
            except ConnectionResetError:
                resp = None
            if resp is not None:
                self.assertIn(resp.status, (400, 413, 431), resp)
        finally:
            s.close()
        st, _ = small.get("/health")
        self.assertEqual(st, 200)
        small.stop()

    def test_bad_content_length(self):
        for cl in (b"-1", b"abc", b"99999999999999999999999", b"1, 2"):
            resp = self.exchange(b"POST /stream/intact/publish HTTP/1.1\r\nHost: x\r\nContent-Type: "
                                 b"application/json\r\nContent-Length: " + cl + b"\r\n\r\n{}")
            self.assertRejected(resp, allowed=(400, 413))
        # Both framings at once (request smuggling shape).
        resp = self.exchange(b"POST /stream/intact/publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                             b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        self.assertRejected(resp)

    def test_deep_json_nesting(self):
        s = "deep-x"
        self.server.create(s)
        ok = "[" * 20 + "1" + "]" * 20
        st, body = self.server.post("/stream/%s/publish" % s, '{"event":"d","data":%s}' % ok)
        self.assertEqual(st, 200, body)
        self.assertEqual(self.server.consume(s)[1][0]["data"], json.loads(ok))
        # Default max_json_depth 32, counting the request's own object: 1 + 31 arrays is the deepest.
        st, body = self.server.post("/stream/%s/publish" % s, '{"event":"d","data":%s}' % ("[" * 31 + "]" * 31))
        self.assertEqual(st, 200, body)
        st, body = self.server.post("/stream/%s/publish" % s, '{"event":"d","data":%s}' % ("[" * 32 + "]" * 32))
        self.assertEqual(st, 400, body)
        for depth in (40, 100, 100000):
            for opener, closer in (("[", "]"), ('{"a":', "}")):
                data = opener * depth + "1" + closer * depth
                st, body = self.server.post("/stream/%s/publish" % s, '{"event":"d","data":%s}' % data)
                self.assertEqual(st, 400, (depth, opener, body))
                self.assertIn(body["error"], ("invalid_json", "invalid_event"), body)
            # Also in a create body and unterminated.
            st, body = self.server.post("/stream/deep-y", "[" * depth)
            self.assertEqual(st, 400, body)
        self.assertEqual(self.server.info(s)["message_count"], 2)

    def test_non_json_content(self):
        path = "/stream/intact/publish"
        st, body = self.server.post(path, "event=x&data=y",
                                    headers={"Content-Type": "application/x-www-form-urlencoded"})
        self.assertIn(st, (400, 415), body)
        self.assertIn(body["error"], ("invalid_json", "unsupported_media_type"))
        st, body = self.server.post(path, "hello world", headers={"Content-Type": "text/plain"})
        self.assertIn(st, (400, 415), body)
        st, body = self.server.post(path, "hello world")
        self.assertError((st, body), 400, "invalid_json")
        for raw in (b'{"event":"x","data":"\xff\xfe"}', b'{"event":"\xc3","data":1}',
                    b'{"event":"x","data":"a\x00b"}', b'{"event":"x","data":1}\x00'):
            st, body = self.server.post(path, raw)
            self.assertEqual(st, 400, (raw, body))
        st, _, raw = self.server.request_raw("POST", path, b'\xef\xbb\xbf{"event": 1}')
        self.assertEqual(st, 400)

    def test_invalid_utf8_never_served(self):
        # Whatever the server decides, what it serves back must be valid JSON.
        s = "utf-x"
        self.server.create(s)
        self.server.post("/stream/%s/publish" % s, b'{"event":"x","data":"\\ud800"}')
        self.server.post("/stream/%s/publish" % s, '{"event":"x","data":"ok \u00e9"}')
        st, _, raw = self.server.request_raw("GET", "/stream/%s/consume/c" % s)
        self.assertEqual(st, 200)
        json.loads(raw.decode("utf-8"))

    def test_pipelined_and_keepalive_requests(self):
        s = self.server.raw_socket()
        try:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n" * 3 +
                      b"GET /stream/intact/info HTTP/1.1\r\nHost: x\r\n\r\n")
            for _ in range(3):
                r = read_response(s, timeout=harness.scaled(5))
                self.assertEqual(r.status, 200)
                self.assertEqual(r.json()["status"], "healthy")
            r = read_response(s, timeout=harness.scaled(5))
            self.assertEqual(r.json()["name"], "intact")
        finally:
            s.close()
        conn = self.server.connection()
        try:
            for i in range(20):
                st, body = self.server.request("GET", "/stream/intact/info", conn=conn)
                self.assertEqual(st, 200)
                st, body = self.server.request("POST", "/stream/keepalive-x/publish", {"event": "k", "data": i},
                                               conn=conn)
                self.assertEqual((st, body["offset"]), (200, i))
                st, body = self.server.request("GET", "/nope", conn=conn)
                self.assertEqual(st, 404)
        finally:
            conn.close()

    def test_http_1_0(self):
        resp = self.exchange(b"GET /health HTTP/1.0\r\n\r\n")
        self.assertIsNotNone(resp)
        self.assertEqual(resp.status, 200)
        self.assertEqual(resp.json()["status"], "healthy")

    def test_websocket_upgrade_over_http_1_0(self):
        # libmicrohttpd cannot upgrade an HTTP/1.0 connection: the request
        # must still be answered (it once got nothing while the server spun
        # on the connection), and the connection must end.
        for route in (b"/stream/intact/ws/c1?from_offset=0", b"/stream/intact/ws/c1"):
            s = self.server.raw_socket()
            try:
                s.sendall(b"GET " + route + b" HTTP/1.0\r\nHost: x\r\nUpgrade: websocket\r\n"
                          b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                          b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
                s.shutdown(socket.SHUT_WR)
                try:
                    resp = read_response(s, timeout=harness.scaled(5))
                    rest = s.recv(1)
                except socket.timeout:
                    self.fail("no answer to a WebSocket upgrade over HTTP/1.0")
                self.assertIsNotNone(resp)
                self.assertEqual(resp.status, 400, resp)
                self.assertEqual(resp.json()["error"], "invalid_handshake")
                self.assertEqual(rest, b"", "the connection stays open")
            finally:
                s.close()

    def test_expect_100_continue(self):
        # curl sends this for bodies over 1 KiB.
        body = json.dumps({"event": "big", "data": "y" * 5000}).encode()
        s = self.server.raw_socket()
        try:
            s.sendall(b"POST /stream/expect-x/publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body))
            r = read_response(s, timeout=harness.scaled(5))
            if r is not None and r.status == 100:
                s.sendall(body)
                r = read_response(s, timeout=harness.scaled(5))
            else:
                self.fail("no 100 Continue: %r" % (r,))
            self.assertEqual(r.status, 200, r)
        finally:
            s.close()
        self.assertEqual(self.server.consume("expect-x")[1][0]["data"], "y" * 5000)
        # And curl itself.
        import subprocess
        p = subprocess.run(["curl", "-sS", "-X", "POST", "http://127.0.0.1:%d/stream/expect-x/publish" % self.server.port,
                            "-H", "Content-Type: application/json", "-d", body.decode()],
                           capture_output=True, timeout=harness.scaled(20))
        self.assertEqual(json.loads(p.stdout)["offset"], 1, p)

    def test_chunked_request_body(self):
        body = json.dumps({"event": "chunked", "data": {"k": "v" * 100}}).encode()
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 40]), body[i:i + 40]) for i in range(0, len(body), 40))
        resp = self.exchange(b"POST /stream/chunked-x/publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                             b"Transfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n")
        self.assertIsNotNone(resp)
        self.assertEqual(resp.status, 200, resp)
        self.assertEqual(self.server.consume("chunked-x")[1][0]["data"], {"k": "v" * 100})

    def test_many_connections(self):
        socks = [self.server.raw_socket() for _ in range(100)]
        try:
            for s in socks[:50]:
                s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            for s in socks[:50]:
                r = read_response(s, timeout=harness.scaled(10))
                self.assertIsNotNone(r)
                self.assertEqual(r.status, 200)
        finally:
            for s in socks:
                s.close()

    def test_error_responses_are_json(self):
        for method, path, body in (("GET", "/nope", None), ("GET", "/stream/none-x/info", None),
                                   ("POST", "/stream/intact/publish", b"{bad"), ("DELETE", "/health", None)):
            st, headers, raw = self.server.request_raw(method, path, body)
            self.assertGreaterEqual(st, 400)
            self.assertIn("application/json", headers.get("content-type", ""), (path, headers))
            obj = json.loads(raw)
            self.assertIsInstance(obj["error"], str)
            self.assertIsInstance(obj["message"], str)

    # ---- CORS -------------------------------------------------------------

    def test_cors_preflight(self):
        for origin in (ALLOWED_ORIGIN, "http://other.example.org:8080"):
            st, headers, _ = self.server.request_raw("OPTIONS", "/stream/intact/publish", headers={
                "Origin": origin, "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type"})
            self.assertIn(st, (200, 204), headers)
            self.assertIn(headers.get("access-control-allow-origin"), (origin, "*"), headers)
            methods = headers.get("access-control-allow-methods", "").upper()
            self.assertIn("POST", methods, headers)
            self.assertIn("content-type", headers.get("access-control-allow-headers", "").lower(), headers)
        st, headers, _ = self.server.request_raw("OPTIONS", "/stream/intact", headers={
            "Origin": ALLOWED_ORIGIN, "Access-Control-Request-Method": "DELETE"})
        self.assertIn(st, (200, 204))
        self.assertIn("DELETE", headers.get("access-control-allow-methods", "").upper(), headers)

    def test_cors_on_actual_requests(self):
        st, headers, _ = self.server.request_raw("GET", "/stream/intact/info", headers={"Origin": ALLOWED_ORIGIN})
        self.assertEqual(st, 200)
        self.assertIn(headers.get("access-control-allow-origin"), (ALLOWED_ORIGIN, "*"), headers)
        # Errors carry it too, or the page cannot read the error.
        st, headers, _ = self.server.request_raw("GET", "/stream/none-x/info", headers={"Origin": ALLOWED_ORIGIN})
        self.assertEqual(st, 404)
        self.assertIn(headers.get("access-control-allow-origin"), (ALLOWED_ORIGIN, "*"), headers)

    def test_cors_unlisted_origin_not_allowed(self):
        evil = "http://evil.example.net"
        st, headers, _ = self.server.request_raw("OPTIONS", "/stream/intact/publish", headers={
            "Origin": evil, "Access-Control-Request-Method": "POST"})
        self.assertNotIn(headers.get("access-control-allow-origin"), (evil, "*"), headers)
        st, headers, _ = self.server.request_raw("GET", "/stream/intact/info", headers={"Origin": evil})
        self.assertNotIn(headers.get("access-control-allow-origin"), (evil, "*"), headers)

    def test_health(self):
        st, body = self.server.get("/health")
        self.assertEqual(st, 200)
        self.assertEqual(set(body), {"status", "uptime_secs"})
        self.assertEqual(body["status"], "healthy")
        self.assertIsInstance(body["uptime_secs"], int)
        self.assertGreaterEqual(body["uptime_secs"], 0)


if __name__ == "__main__":
    unittest.main()
