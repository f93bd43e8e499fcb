"""HTTPS: a self-signed certificate made with the openssl command; requests
with Python's ssl module and with curl; start-up errors."""

import hashlib
import json
import os
import secrets
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import unittest
import http.client

import harness
from harness import Server


def make_cert(d, name="cert"):
    cert, key = os.path.join(d, name + ".pem"), os.path.join(d, name + ".key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "2", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    return cert, key


class TlsTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="streamd-tls-")
        cls.cert, cls.keyfile = make_cert(cls.tmp)
        cls.key = secrets.token_hex(32)
        line = "t sha256:%s read+write+admin:*" % hashlib.sha256(cls.key.encode()).hexdigest()
        cls.srv = Server(["--tls-cert-file", cls.cert, "--tls-key-file", cls.keyfile, "--key", line])
        cls.srv.start()
        cls.ctx = ssl.create_default_context(cafile=cls.cert)

    @classmethod
    def tearDownClass(cls):
        cls.srv.stop()
        cls.srv.cleanup()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def conn(self):
        return http.client.HTTPSConnection("127.0.0.1", self.srv.port, context=self.ctx,
                                           timeout=harness.REQUEST_TIMEOUT)

    def call(self, conn, method, path, body=None, key=True):
        headers = {"Authorization": "Bearer " + self.key} if key else {}
        if body is not None:
            body = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        conn.request(method, path, body=body, headers=headers)
        r = conn.getresponse()
        data = r.read()
        return r.status, json.loads(data) if data else None

    def test_https_round_trip_on_one_connection(self):
        c = self.conn()
        try:
            self.assertEqual(self.call(c, "GET", "/health", key=False)[0], 200)
            self.assertEqual(self.call(c, "POST", "/stream/tls")[0], 201)
            self.assertEqual(self.call(c, "GET", "/stream/tls/info", key=False)[0], 401)
            big = "x" * (512 * 1024)
            for i in range(5):
                st, b = self.call(c, "POST", "/stream/tls/publish", {"event": "e", "data": "%d%s" % (i, big)})
                self.assertEqual(st, 200, b)
                self.assertEqual(b["offset"], i)
            st, events = self.call(c, "GET", "/stream/tls/consume/r?from_offset=0&limit=10")
            self.assertEqual(st, 200)
            self.assertEqual([e["data"][0] for e in events], list("01234"))
            self.assertEqual(len(events[4]["data"]), len(big) + 1)
            sock = c.sock
            self.assertEqual(self.call(c, "GET", "/stream/tls/stats")[0], 200)
            self.assertIs(c.sock, sock, "the TLS connection was not kept alive")
        finally:
            c.close()

    def test_long_poll_woken_over_tls(self):
        c = self.conn()
        try:
            self.assertEqual(self.call(c, "POST", "/stream/lp")[0], 201)
            out = {}

            def poll():
                p = self.conn()
                try:
                    out["r"] = self.call(p, "GET", "/stream/lp/consume/r?from_offset=0&wait_ms=%d"
                                         % int(harness.scaled(20000)))
                finally:
                    p.close()

            t = threading.Thread(target=poll)
            t.start()
            harness.poll_until(lambda: b"streamd_http_requests_waiting 1" in
                               self.srv_metrics(c), harness.scaled(10), what="the long poll to wait")
            self.assertEqual(self.call(c, "POST", "/stream/lp/publish", {"event": "e", "data": "woke"})[0], 200)
            t.join(harness.scaled(20))
            self.assertFalse(t.is_alive())
            st, events = out["r"]
            self.assertEqual((st, [e["data"] for e in events]), (200, ["woke"]))
        finally:
            c.close()

    def srv_metrics(self, c):
        c.request("GET", "/metrics", headers={"Authorization": "Bearer " + self.key})
        return c.getresponse().read()

    def test_curl_https(self):
        url = "https://127.0.0.1:%d/health" % self.srv.port
        p = subprocess.run(["curl", "-sS", "--cacert", self.cert, url], capture_output=True, timeout=30)
        self.assertEqual(p.returncode, 0, p)
        self.assertEqual(json.loads(p.stdout)["status"], "healthy")
        p = subprocess.run(["curl", "-sS", "--cacert", self.cert, "-o", "/dev/null", "-w", "%{http_code}",
                            "-H", "Authorization: Bearer " + self.key, "-X", "POST",
                            "https://127.0.0.1:%d/stream/curl" % self.srv.port], capture_output=True, timeout=30)
        self.assertEqual(p.stdout, b"201", p)
        # Without the certificate as a trust anchor curl refuses it (it is self-signed).
        p = subprocess.run(["curl", "-sS", url], capture_output=True, timeout=30)
        self.assertEqual(p.returncode, 60, p)

    def test_plain_http_is_not_served(self):
        with socket.create_connection(("127.0.0.1", self.srv.port), timeout=harness.scaled(10)) as s:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            try:
                data = s.recv(4096)
            except ConnectionResetError:
                data = b""
            self.assertFalse(data.startswith(b"HTTP/1.1 200"), data)


class TlsStartupTest(unittest.TestCase):

    def run_bin(self, *args):
        return subprocess.run([harness.BIN] + list(args), capture_output=True, timeout=harness.scaled(30),
                              stdin=subprocess.DEVNULL)

    def test_bad_tls_settings_refuse_to_start(self):
        with tempfile.TemporaryDirectory() as d:
            cert, key = make_cert(d)
            cert2, key2 = make_cert(d, "other")
            data = os.path.join(d, "data")
            for args, word in ((["--tls-cert-file", cert], "tls_key_file"),
                               (["--tls-key-file", key], "tls_cert_file"),
                               (["--tls-cert-file", os.path.join(d, "none.pem"), "--tls-key-file", key], "none.pem"),
                               (["--tls-cert-file", cert, "--tls-key-file", key2], "TLS"),
                               (["--tls-cert-file", key, "--tls-key-file", cert], "TLS")):
                p = self.run_bin("--port", str(harness.free_port()), "--data-dir", data, *args)
                self.assertEqual(p.returncode, 1, (args, p))
                self.assertIn(word, p.stderr.decode(), args)


if __name__ == "__main__":
    unittest.main()
