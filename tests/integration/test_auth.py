"""API keys: every route with a key that holds its permission, one that
does not, no key and a wrong key; key reload by SIGHUP; protected mode;
--hash-key."""

import hashlib
import http.client
import os
import secrets
import signal
import subprocess
import tempfile
import unittest

import harness
from harness import Server


def run(*args, stdin=None, timeout=20):
    return subprocess.run([harness.BIN] + list(args), capture_output=True, timeout=harness.scaled(timeout),
                          input=stdin)


def new_key():
    return secrets.token_hex(32)


def key_line(name, key, *grants):
    return "%s sha256:%s %s" % (name, hashlib.sha256(key.encode()).hexdigest(), " ".join(grants))


def bearer(key):
    return {"Authorization": "Bearer " + key}


class HashKeyTest(unittest.TestCase):

    def test_hash_key_prints_sha256_line(self):
        key = new_key()
        p = run("--hash-key", key)
        self.assertEqual(p.returncode, 0, p)
        self.assertEqual(p.stdout.decode().strip(), "sha256:" + hashlib.sha256(key.encode()).hexdigest())
        # From standard input, so that the key stays out of the process list and shell history.
        p = run("--hash-key", "-", stdin=(key + "\n").encode())
        self.assertEqual(p.returncode, 0, p)
        self.assertEqual(p.stdout.decode().strip(), "sha256:" + hashlib.sha256(key.encode()).hexdigest())

    def test_hash_key_refuses_weak_or_unusable_keys(self):
        for bad in ("short", "has space in it 0123456789", "slash/and=equals+0123456789"):
            p = run("--hash-key", bad)
            self.assertEqual(p.returncode, 2, (bad, p))
            self.assertEqual(p.stdout, b"", bad)
            self.assertIn(b"key", p.stderr)


# Keys of the permission matrix.
KEYS = {name: new_key() for name in ("root", "reader", "writer", "admin", "other", "metrics")}
GRANTS = {
    "root": ["read+write+admin:*"],
    "reader": ["read:orders.*"],
    "writer": ["write:orders.*"],
    "admin": ["admin:orders.*"],
    "other": ["read+write+admin:billing.*"],  # every permission, on other streams
    "metrics": ["read:*"],
}
PERM_KEY = {"read": "reader", "write": "writer", "admin": "admin"}


class PermissionMatrixTest(unittest.TestCase):
    """Each route: allowed with the key that holds its permission on the
    stream, 403 with every key that does not, 401 with no key or a wrong
    one."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="streamd-auth-")
        keys_file = os.path.join(cls.tmp, "keys")
        with open(keys_file, "w") as f:
            f.write("# keys of the test\n\n")
            for name in ("writer", "admin", "other", "metrics"):
                f.write(key_line(name, KEYS[name], *GRANTS[name]) + "   # trailing comment\n")
        conf = os.path.join(cls.tmp, "streamd.conf")
        with open(conf, "w") as f:
            f.write("key = %s\n" % key_line("root", KEYS["root"], *GRANTS["root"]))
            f.write("keys_file = %s\n" % keys_file)
        cls.srv = Server(["--config", conf, "--key", key_line("reader", KEYS["reader"], *GRANTS["reader"])])
        cls.srv.start()
        r = bearer(KEYS["root"])
        for s in ("orders.a", "orders.del", "billing.a"):
            st, body = cls.srv.post("/stream/" + s, headers=r)
            assert st == 201, (s, st, body)
        st, body = cls.srv.post("/stream/orders.a/publish", {"event": "e", "data": "d"}, headers=r)
        assert st == 200, body
        st, body = cls.srv.post("/stream/orders.a/group/g", {"ack": "explicit"}, headers=r)
        assert st in (200, 201), body

    @classmethod
    def tearDownClass(cls):
        cls.srv.stop()
        cls.srv.cleanup()

    def req(self, method, path, body=None, key=None, headers=None):
        h = dict(headers or {})
        if key is not None:
            h.update(bearer(KEYS.get(key, key)))
        return self.srv.request(method, path, body, headers=h)

    def assert_denied(self, method, path, body, key, status, code, what):
        st, b = self.req(method, path, body, key)
        self.assertEqual(st, status, "%s %s with %s: %s" % (method, path, what, b))
        self.assertEqual(b.get("error"), code, "%s %s with %s: %s" % (method, path, what, b))
        self.assertTrue(b.get("message"), b)

    def check_route(self, method, path, body, perm, ok_status, stream="orders.a"):
        """perm: read, write or admin on `stream` (an orders.* name)."""
        what = "%s %s" % (method, path)
        # No key at all, and a key nobody configured: 401 with a Bearer challenge.
        st, hdrs, raw = self.srv.request_raw(method, path, body)
        self.assertEqual(st, 401, "%s without a key: %r" % (what, raw))
        self.assertTrue(hdrs.get("www-authenticate", "").startswith("Bearer"), hdrs)
        st, hdrs, raw = self.srv.request_raw(method, path, body, headers=bearer(new_key()))
        self.assertEqual(st, 401, "%s with an unknown key: %r" % (what, raw))
        self.assertIn('error="invalid_token"', hdrs.get("www-authenticate", ""))
        st, hdrs, raw = self.srv.request_raw(method, path, body, headers={"Authorization": "Basic dXNlcjpwYXNz"})
        self.assertEqual(st, 401, "%s with Basic credentials: %r" % (what, raw))
        # A token query parameter is for WebSocket upgrades only.
        sep = "&" if "?" in path else "?"
        st, _, raw = self.srv.request_raw(method, path + sep + "token=" + KEYS["root"], body)
        self.assertEqual(st, 401, "%s with ?token=: %r" % (what, raw))
        # Keys without the permission on this stream: 403.
        for other in ("reader", "writer", "admin"):
            if other != PERM_KEY[perm]:
                self.assert_denied(method, path, body, other, 403, "forbidden", other)
        self.assert_denied(method, path, body, "other", 403, "forbidden", "a key for other streams")
        # The key with it.
        st, b = self.req(method, path, body, PERM_KEY[perm])
        self.assertEqual(st, ok_status, "%s with %s: %s" % (what, PERM_KEY[perm], b))
        return b

    def test_read_routes(self):
        for path in ("/stream/orders.a/info", "/stream/orders.a/stats", "/stream/orders.a/consumers",
                     "/stream/orders.a/consume/c1?from_offset=0", "/stream/orders.a/groups",
                     "/stream/orders.a/group/g/info", "/stream/orders.a/group/g/dead"):
            with self.subTest(path=path):
                self.check_route("GET", path, None, "read", 200)
        b = self.check_route("GET", "/stream/orders.a/group/g/consume?consumer=c1&limit=1", None, "read", 200)
        self.assertEqual(len(b), 1, b)
        ack = {"consumer": "c1", "partition": b[0].get("partition", 0), "offset": b[0]["offset"]}
        b = self.check_route("POST", "/stream/orders.a/group/g/ack", ack, "read", 200)
        self.assertEqual(b.get("acked"), 1, b)
        self.check_route("DELETE", "/stream/orders.a/group/g/consumer/c1", None, "read", 200)

    def test_write_route(self):
        self.check_route("POST", "/stream/orders.a/publish", {"event": "e", "data": "w"}, "write", 200)
        # Publishing creates a missing stream with write alone, within the key's pattern.
        st, b = self.req("POST", "/stream/orders.auto/publish", {"event": "e", "data": "w"}, "writer")
        self.assertEqual(st, 200, b)
        self.assert_denied("POST", "/stream/billing.auto/publish", {"event": "e"}, "writer", 403, "forbidden",
                           "writer outside its pattern")

    def test_admin_routes(self):
        self.check_route("POST", "/stream/orders.new", None, "admin", 201, stream="orders.new")
        self.check_route("PUT", "/stream/orders.new", None, "admin", 200, stream="orders.new")
        self.check_route("POST", "/stream/orders.new/group/g2", None, "admin", 201)
        self.check_route("DELETE", "/stream/orders.new/group/g2", None, "admin", 200)
        self.check_route("DELETE", "/stream/orders.del", None, "admin", 200, stream="orders.del")

    def test_denied_before_existence_is_told(self):
        # A key without rights learns nothing of which streams exist.
        self.assert_denied("GET", "/stream/orders.missing/info", None, "writer", 403, "forbidden", "writer")
        self.assert_denied("GET", "/stream/orders.missing/info", None, None, 401, "unauthorized", "no key")
        st, b = self.req("GET", "/stream/orders.missing/info", None, "reader")
        self.assertEqual(st, 404, b)

    def test_open_routes(self):
        st, b = self.srv.get("/health")
        self.assertEqual(st, 200, b)
        st, hdrs, _ = self.srv.request_raw("OPTIONS", "/stream/orders.a/publish",
                                           headers={"Origin": "http://127.0.0.1:9",
                                                    "Access-Control-Request-Method": "POST",
                                                    "Access-Control-Request-Headers": "authorization, content-type"})
        self.assertEqual(st, 204)
        self.assertIn("Authorization", hdrs.get("access-control-allow-headers", ""))

    def test_metrics_needs_read_on_every_stream(self):
        for key in ("reader", "writer", "admin", "other"):
            self.assert_denied("GET", "/metrics", None, key, 403, "forbidden", key)
        st, _, _ = self.srv.request_raw("GET", "/metrics")
        self.assertEqual(st, 401)
        for key in ("metrics", "root"):
            st, hdrs, raw = self.srv.request_raw("GET", "/metrics", headers=bearer(KEYS[key]))
            self.assertEqual(st, 200, raw)
            self.assertIn(b"streamd_streams", raw)

    def test_list_shows_the_streams_a_key_may_use(self):
        st, _, _ = self.srv.request_raw("GET", "/stream/list")
        self.assertEqual(st, 401)
        st, b = self.req("GET", "/stream/list", key="root")
        self.assertTrue({"orders.a", "billing.a"} <= set(b["streams"]), b)
        for key in ("reader", "writer", "admin"):
            st, b = self.req("GET", "/stream/list", key=key)
            self.assertEqual(st, 200, b)
            self.assertIn("orders.a", b["streams"], (key, b))
            self.assertTrue(all(s.startswith("orders.") for s in b["streams"]), (key, b))
        st, b = self.req("GET", "/stream/list", key="other")
        self.assertEqual(b["streams"], ["billing.a"], b)

    def test_401_keeps_the_connection(self):
        conn = self.srv.connection()
        try:
            st, _ = self.srv.get("/stream/orders.a/info", conn=conn)
            self.assertEqual(st, 401)
            st, _ = self.srv.get("/stream/orders.a/info", conn=conn, headers=bearer(KEYS["reader"]))
            self.assertEqual(st, 200)
        finally:
            conn.close()

    def test_body_refused_before_it_is_read(self):
        # A request without a key that announces a body larger than max_body_bytes is told 401, not 413.
        conn = self.srv.connection()
        try:
            conn.putrequest("POST", "/stream/orders.a/publish")
            conn.putheader("Content-Type", "application/json")
            conn.putheader("Content-Length", str(64 << 20))
            conn.endheaders()
            resp = conn.getresponse()
            self.assertEqual(resp.status, 401)
        finally:
            conn.close()


class ConfigErrorsTest(unittest.TestCase):

    def test_bad_key_lines_refuse_to_start(self):
        k = new_key()
        h = "sha256:" + hashlib.sha256(k.encode()).hexdigest()
        with tempfile.TemporaryDirectory() as d:
            for line, word in (("ops sha256:abc read:*", "hash"),
                               ("ops %s" % h, "grant"),
                               ("ops %s delete:*" % h, "delete"),
                               ("ops %s read:" % h, "pattern"),
                               ("ops %s read:a/b" % h, "pattern"),
                               ("ops %s" % k, "hash")):
                p = run("--data-dir", os.path.join(d, "data"), "--port", str(harness.free_port()), "--key", line)
                self.assertEqual(p.returncode, 2, (line, p))
                self.assertIn(word, p.stderr.decode(), line)
                self.assertNotIn(k, p.stderr.decode(), "the error shows a key")
            # Two definitions of one name, and a keys_file that is missing.
            p = run("--data-dir", os.path.join(d, "data"), "--key", "a %s read:*" % h, "--key", "a %s write:*" % h)
            self.assertEqual(p.returncode, 2, p)
            p = run("--data-dir", os.path.join(d, "data"), "--keys-file", os.path.join(d, "nope"))
            self.assertEqual(p.returncode, 2, p)
            self.assertIn("nope", p.stderr.decode())


class ProtectedModeTest(unittest.TestCase):

    def test_no_keys_on_a_public_address_refuses_to_start(self):
        with tempfile.TemporaryDirectory() as d:
            for host in ("0.0.0.0", "::"):
                p = run("--host", host, "--port", str(harness.free_port()), "--data-dir", os.path.join(d, "data"))
                self.assertEqual(p.returncode, 2, p)
                err = p.stderr.decode()
                self.assertIn("protected mode", err)
                self.assertIn("protected_mode = false", err)
                self.assertFalse(os.path.exists(os.path.join(d, "data")), "refused after opening the data directory")

    def test_override_and_keys_allow_other_addresses(self):
        srv = Server(["--host", "0.0.0.0", "--protected-mode", "false"])
        self.addCleanup(srv.cleanup)
        srv.start()
        st, b = srv.post("/stream/open")
        self.assertEqual(st, 201, b)
        srv.stop()
        key = new_key()
        keys_file = os.path.join(srv._tmp, "keys")
        with open(keys_file, "w") as f:
            f.write(key_line("k", key, "read+write+admin:*") + "\n")
        srv = Server(["--host", "0.0.0.0", "--keys-file", keys_file])
        self.addCleanup(srv.cleanup)
        srv.start()
        self.assertEqual(srv.post("/stream/x")[0], 401)
        self.assertEqual(srv.post("/stream/x", headers=bearer(key))[0], 201)
        # Removing every key by SIGHUP would open it to everyone: refused, the keys stay.
        with open(keys_file, "w") as f:
            f.write("")
        srv.proc.send_signal(signal.SIGHUP)
        harness.poll_until(lambda: "keys unchanged" in srv.log_since_start(), harness.scaled(10), what="reload refusal")
        self.assertIn("protected mode", srv.log_since_start())
        self.assertEqual(srv.get("/stream/x/info")[0], 401)
        self.assertEqual(srv.get("/stream/x/info", headers=bearer(key))[0], 200)
        srv.stop()



class ReloadTest(unittest.TestCase):

    def test_sighup_applies_live_settings_and_names_the_others(self):
        with tempfile.TemporaryDirectory() as d:
            conf = os.path.join(d, "streamd.conf")
            with open(conf, "w") as f:
                f.write("access_log = off\nmax_body_bytes = 1048576\nlog_format = text\n")
            srv = Server(["--config", conf])
            self.addCleanup(srv.cleanup)
            srv.start()
            conn = srv.connection()
            self.addCleanup(conn.close)
            big = {"event": "e", "data": "x" * 4000}
            self.assertEqual(srv.post("/stream/live/publish", big, conn=conn)[0], 200)
            self.assertNotIn("/stream/live/publish", srv.log_since_start())
            with open(conf, "w") as f:
                f.write("access_log = on\nmax_body_bytes = 2048\nlog_format = text\ndurability = interval\n")
            n = srv.log_since_start().count("SIGHUP")
            srv.proc.send_signal(signal.SIGHUP)
            harness.poll_until(lambda: "next start" in srv.log_since_start().split("SIGHUP")[-1] and
                               srv.log_since_start().count("SIGHUP") > n, harness.scaled(10),
                               what="the reload log lines")
            self.assertIn("take effect at the next start: durability", srv.log_since_start())
            # Live on the same keep-alive connection: the new body limit and the access log.
            st, body = srv.post("/stream/live/publish", big, conn=conn)
            self.assertEqual(st, 413, body)
            self.assertEqual(srv.post("/stream/live/publish", {"event": "e", "data": 1}, conn=conn)[0], 200)
            harness.poll_until(lambda: "/stream/live/publish" in srv.log_since_start(), harness.scaled(5),
                               what="an access log line")
            # A bad value changes nothing and says why.
            with open(conf, "w") as f:
                f.write("access_log = off\nmax_body_bytes = 1048576\nlog_format = yaml\n")
            srv.proc.send_signal(signal.SIGHUP)
            harness.poll_until(lambda: "configuration and keys unchanged" in srv.log_since_start(), harness.scaled(10),
                               what="the refused reload")
            self.assertEqual(srv.post("/stream/live/publish", big, conn=conn)[0], 413)
            srv.stop()


    def test_sighup_rotates_keys_without_dropping_connections(self):
        a, b = new_key(), new_key()
        with tempfile.TemporaryDirectory() as d:
            keys_file = os.path.join(d, "keys")
            with open(keys_file, "w") as f:
                f.write(key_line("a", a, "read+write+admin:*") + "\n")
            srv = Server(["--keys-file", keys_file])
            self.addCleanup(srv.cleanup)
            srv.start()
            conn = srv.connection()
            self.addCleanup(conn.close)
            self.assertEqual(srv.post("/stream/r", conn=conn, headers=bearer(a))[0], 201)
            self.assertEqual(srv.get("/stream/r/info", conn=conn, headers=bearer(b))[0], 401)

            def reload(expect):
                n = srv.log_since_start().count("SIGHUP")
                srv.proc.send_signal(signal.SIGHUP)
                harness.poll_until(lambda: srv.log_since_start().count("SIGHUP") > n, harness.scaled(10),
                                   what="the reload log line")
                self.assertIn(expect, srv.log_since_start().split("SIGHUP")[-1])

            # Rotate: b replaces a.  The same keep-alive connection goes on.
            with open(keys_file, "w") as f:
                f.write(key_line("b", b, "read:r") + "\n")
            reload("1 API key(s) in force")
            sock = conn.sock
            self.assertEqual(srv.get("/stream/r/info", conn=conn, headers=bearer(a))[0], 401)
            self.assertEqual(srv.get("/stream/r/info", conn=conn, headers=bearer(b))[0], 200)
            self.assertIs(conn.sock, sock, "the connection was reopened")
            self.assertEqual(srv.post("/stream/r/publish", {"event": "e"}, headers=bearer(b))[0], 403)

            # A broken file keeps the keys in force and says why.
            with open(keys_file, "w") as f:
                f.write("b sha256:nothex read:r\n")
            reload("keys unchanged")
            self.assertIn(keys_file, srv.log_since_start().split("SIGHUP")[-1])
            self.assertEqual(srv.get("/stream/r/info", conn=conn, headers=bearer(b))[0], 200)
            os.unlink(keys_file)
            reload("keys unchanged")
            self.assertEqual(srv.get("/stream/r/info", conn=conn, headers=bearer(b))[0], 200)

            # No keys at all on loopback: open again.
            with open(keys_file, "w") as f:
                f.write("# none\n")
            reload("0 API key(s) in force")
            self.assertEqual(srv.get("/stream/r/info", conn=conn)[0], 200)
            self.assertIs(conn.sock, sock, "the connection was reopened")
            srv.stop()


if __name__ == "__main__":
    unittest.main()
