"""Test harness for the streamd integration tests.

Starts the real binary (env STREAMD_BIN, default /work/main/build/streamd) on a
free loopback port with a temporary data directory, talks real HTTP to it and
stops it.  Python standard library only.

Run from the repository root:
    python3 -m unittest discover -s tests/integration -t tests/integration -v

Environment:
    STREAMD_BIN            path of the server binary
    STREAMD_TIME_SCALE     multiply every timeout (e.g. 3 for an ASan build)
    STREAMD_KEEP_LOGS      if set, server logs are printed when a server stops
"""

import atexit
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import unittest
import urllib.parse
import weakref

BIN = os.environ.get("STREAMD_BIN", "/work/main/build/streamd")
TIME_SCALE = float(os.environ.get("STREAMD_TIME_SCALE", "1"))
START_TIMEOUT = 20.0 * TIME_SCALE
STOP_TIMEOUT = 20.0 * TIME_SCALE
REQUEST_TIMEOUT = 30.0 * TIME_SCALE


def scaled(seconds):
    return seconds * TIME_SCALE


def free_port():
    """A loopback TCP port that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def now_ms():
    return int(time.time() * 1000)


def poll_until(fn, timeout, interval=0.02, what="condition"):
    """Call fn() until it returns a truthy value; return that value.
    Raises AssertionError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = fn()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %.1fs waiting for %s (last value: %r)" % (timeout, what, last))
        time.sleep(interval)


def short(obj, n=300):
    """repr() cut to n characters, for assertion messages."""
    r = repr(obj)
    return r if len(r) <= n else r[:n] + "...(%d chars)" % len(r)


def qs(**params):
    return urllib.parse.urlencode(params)


class Response:
    """A raw HTTP response read from a socket."""

    def __init__(self, status, reason, headers, body):
        self.status = status
        self.reason = reason
        self.headers = headers  # dict, lower-case names
        self.body = body

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return "Response(%d %s, %r, %r)" % (self.status, self.reason, self.headers, self.body[:300])


_leftover = weakref.WeakKeyDictionary()  # bytes read past one response (pipelining)


def read_response(sock, timeout=None):
    """Read exactly one HTTP/1.x response from a socket.
    Returns a Response, or None when the peer closed (or reset) the
    connection before sending anything.  Raises socket.timeout, or
    ConnectionError for a malformed or cut response."""
    if timeout is not None:
        sock.settimeout(timeout)
    buf = _leftover.pop(sock, b"")
    try:
        while b"\r\n\r\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                if not buf:
                    return None
                raise ConnectionError("connection closed inside response headers: %r" % buf[:200])
            buf += chunk
    except ConnectionResetError:
        if not buf:
            return None
        raise
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if not parts[0].startswith("HTTP/1.") or len(parts) < 2 or not parts[1].isdigit():
        raise ConnectionError("malformed status line: %r" % lines[0][:200])
    status = int(parts[1])
    reason = parts[2] if len(parts) > 2 else ""
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()

    def recv_more():
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed inside response body")
        return chunk

    if "content-length" in headers:
        n = int(headers["content-length"])
        while len(rest) < n:
            rest += recv_more()
        body, rest = rest[:n], rest[n:]
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            while b"\r\n" not in rest:
                rest += recv_more()
            line, _, rest = rest.partition(b"\r\n")
            size = int(line.split(b";")[0], 16)
            while len(rest) < size + 2:
                rest += recv_more()
            body += rest[:size]
            rest = rest[size + 2:]
            if size == 0:
                break
    elif status in (204, 304) or 100 <= status < 200:
        body = b""
    else:  # read to EOF
        body, rest = rest, b""
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            body += chunk
    if rest:
        _leftover[sock] = rest
    return Response(status, reason, headers, body)


class ServerError(Exception):
    pass


_live = set()  # every Server not yet cleaned up: killed at exit, whatever happened


@atexit.register
def _kill_leftovers():
    for srv in list(_live):
        srv.cleanup()


class Server:
    """One streamd process on a free loopback port.

    server = Server(extra_args=["--segment-bytes", "4096"]).start()
    status, body = server.get("/health")
    server.stop()           # SIGTERM, asserts exit code 0
    server.start()          # same data dir, new port
    server.kill()           # SIGKILL
    server.cleanup()        # kill if running, remove temp dir
    """

    def __init__(self, extra_args=(), data_dir=None, durability=None, auto_args=True, port=None):
        """auto_args=False: pass no --host/--port/--data-dir; the caller's
        args (e.g. a --config file) must put the server on `port`."""
        self.auto_args = auto_args
        self.fixed_port = port
        self.extra_args = list(extra_args)
        if durability is not None:
            self.extra_args += ["--durability", durability]
        self._tmp = tempfile.mkdtemp(prefix="streamd-it-")
        self.data_dir = data_dir or os.path.join(self._tmp, "data")
        self.log_path = os.path.join(self._tmp, "server.log")
        self.proc = None
        self.port = None
        self.starts = 0
        self.last_exit_code = None
        _live.add(self)

    # ---- lifecycle ------------------------------------------------------

    def start(self, extra_args=None, timeout=START_TIMEOUT):
        """Start (or restart) the server on a new free port, keeping the data
        dir.  Waits for the ready line and a healthy /health."""
        if self.proc is not None and self.proc.poll() is None:
            raise ServerError("server already running")
        if not os.path.exists(BIN):
            raise ServerError("server binary %s does not exist (set STREAMD_BIN)" % BIN)
        args = self.extra_args if extra_args is None else list(extra_args)
        for attempt in range(5):
            self.port = self.fixed_port or free_port()
            self.starts += 1
            with open(self.log_path, "ab") as f:
                f.write(("\n===== start #%d port %d args %r =====\n" % (self.starts, self.port, args)).encode())
            self._log_offset = os.path.getsize(self.log_path)
            log = open(self.log_path, "ab")
            cmd = [BIN] + args
            if self.auto_args:
                cmd[1:1] = ["--host", "127.0.0.1", "--port", str(self.port), "--data-dir", self.data_dir]
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
            log.close()
            try:
                self._wait_ready(timeout)
                return self
            except ServerError:
                if (self.proc.poll() is not None and self._port_in_use_in_log() and attempt < 4
                        and not self.fixed_port):
                    continue
                raise
        raise ServerError("could not start server")

    def _port_in_use_in_log(self):
        text = self.log_since_start().lower()
        return "in use" in text or "eaddrinuse" in text

    def _wait_ready(self, timeout):
        """Ready when the ready line is logged or /health answers 200."""
        needle = "listening on 127.0.0.1:%d" % self.port
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code = self.proc.poll()
            if code is not None:
                raise ServerError("server exited with %d during start-up:\n%s" % (code, self.log_tail()))
            if needle in self.log_since_start():
                return
            try:
                status, _, _ = self.request_raw("GET", "/health", timeout=2)
                if status == 200:
                    return
            except (OSError, http.client.HTTPException):
                pass
            time.sleep(0.01)
        self.kill()
        raise ServerError("server not ready after %.1fs:\n%s" % (timeout, self.log_tail()))

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def terminate(self, timeout=STOP_TIMEOUT):
        """SIGTERM and wait; returns the exit code (kills -9 on timeout and
        raises)."""
        if self.proc is None:
            return self.last_exit_code
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            self.proc = None
            raise AssertionError("server did not exit within %.1fs of SIGTERM:\n%s" % (timeout, self.log_tail()))
        self.proc = None
        self.last_exit_code = code
        if os.environ.get("STREAMD_KEEP_LOGS"):
            print(self.log_tail(200000))
        return code

    def stop(self, timeout=STOP_TIMEOUT):
        """SIGTERM; asserts a clean exit with code 0."""
        if self.proc is not None and self.proc.poll() is not None:
            code = self.proc.returncode
            self.proc = None
            raise AssertionError("server had already exited with %d before stop:\n%s" % (code, self.log_tail()))
        code = self.terminate(timeout)
        if code != 0:
            raise AssertionError("server exited with %r after SIGTERM (expected 0):\n%s" % (code, self.log_tail()))

    def kill(self):
        """SIGKILL (a crash)."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            self.proc = None

    def restart(self, extra_args=None):
        self.stop()
        return self.start(extra_args)

    def cleanup(self):
        self.kill()
        shutil.rmtree(self._tmp, ignore_errors=True)
        _live.discard(self)

    def log_since_start(self):
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._log_offset)
                return f.read().decode("utf-8", "replace")
        except (OSError, AttributeError):
            return ""

    def log_tail(self, n=4000):
        try:
            with open(self.log_path, "rb") as f:
                data = f.read()
            return data[-n:].decode("utf-8", "replace")
        except OSError:
            return "(no log)"

    # ---- HTTP -----------------------------------------------------------

    def connection(self, timeout=REQUEST_TIMEOUT):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def request_raw(self, method, path, body=None, headers=None, timeout=REQUEST_TIMEOUT, conn=None):
        """One request; returns (status, headers dict lower-case, body bytes).
        body: bytes/str sent as is, anything else JSON-encoded."""
        hdrs = {}
        if body is not None and not isinstance(body, (bytes, str)):
            body = json.dumps(body)
        if isinstance(body, str):
            body = body.encode("utf-8")
        if body is not None:
            hdrs["Content-Type"] = "application/json"
        if headers:
            hdrs.update(headers)
        own = conn is None
        if own:
            conn = self.connection(timeout)
        try:
            conn.request(method, path, body=body, headers=hdrs)
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
        except socket.timeout:
            raise AssertionError("%s %s: no response within %.0fs (server %s); server log:\n%s"
                                 % (method, short(path, 120), timeout, "running" if self.running() else "exited",
                                    self.log_tail(3000)))
        finally:
            if own:
                conn.close()

    def request(self, method, path, body=None, headers=None, timeout=REQUEST_TIMEOUT, conn=None):
        """One request; returns (status, parsed JSON body or None when empty).
        A non-empty body that is not JSON raises AssertionError (every
        response of the API is JSON)."""
        status, _, data = self.request_raw(method, path, body, headers, timeout, conn)
        if not data:
            return status, None
        try:
            return status, json.loads(data)
        except ValueError:
            raise AssertionError("%s %s -> %d with a non-JSON body: %r" % (method, path, status, data[:500]))

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, body=None, **kw):
        return self.request("POST", path, body, **kw)

    def put(self, path, body=None, **kw):
        return self.request("PUT", path, body, **kw)

    def delete(self, path, **kw):
        return self.request("DELETE", path, **kw)

    # ---- API helpers ----------------------------------------------------

    def create(self, stream, expect=201, **cfg):
        status, body = self.post("/stream/" + stream, cfg if cfg else None)
        if expect is not None and status != expect:
            raise AssertionError("create %s %s -> %d %s" % (stream, short(cfg), status, short(body)))
        return status, body

    def publish(self, stream, event, expect=200):
        status, body = self.post("/stream/%s/publish" % stream, event)
        if expect is not None and status != expect:
            raise AssertionError("publish %s %s -> %d %s" % (stream, short(event), status, short(body)))
        return status, body

    def consume(self, stream, consumer="it-reader", expect=200, **params):
        path = "/stream/%s/consume/%s" % (stream, consumer)
        if params:
            path += "?" + qs(**params)
        status, body = self.get(path)
        if expect is not None and status != expect:
            raise AssertionError("GET %s -> %d %s" % (path, status, short(body)))
        return status, body

    def consume_all(self, stream, partition=None, start=0):
        """Every event of one partition (or of a one-partition stream) from
        `start`, paging with limit 10000."""
        out = []
        nxt = start
        while True:
            params = {"from_offset": nxt, "limit": 10000}
            if partition is not None:
                params["partition"] = partition
            _, page = self.consume(stream, **params)
            if not page:
                return out
            out.extend(page)
            nxt = page[-1]["offset"] + 1

    def info(self, stream):
        status, body = self.get("/stream/%s/info" % stream)
        if status != 200:
            raise AssertionError("info %s -> %d %r" % (stream, status, body))
        return body

    def stats(self, stream):
        status, body = self.get("/stream/%s/stats" % stream)
        if status != 200:
            raise AssertionError("stats %s -> %d %r" % (stream, status, body))
        return body

    def raw_socket(self, timeout=10.0):
        s = socket.create_connection(("127.0.0.1", self.port), timeout=scaled(timeout))
        return s


class ServerTestCase(unittest.TestCase):
    """One server per test class (started in setUpClass with SERVER_ARGS,
    stopped in tearDownClass, which asserts exit code 0).  Every test checks
    the server is still alive afterwards."""

    SERVER_ARGS = ()
    server = None

    @classmethod
    def setUpClass(cls):
        cls.server = Server(cls.SERVER_ARGS)
        # Runs even when a subclass's setUpClass fails after this point.
        cls.addClassCleanup(cls.server.cleanup)
        cls.server.start()

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()

    def setUp(self):
        self._name_counter = 0

    def tearDown(self):
        if self.server is not None and self.server.proc is not None and self.server.proc.poll() is not None:
            code = self.server.proc.returncode
            log = self.server.log_tail()
            # Restart so the remaining tests of the class can run.
            self.server.proc = None
            try:
                self.server.start()
            except Exception:
                pass
            self.fail("server died during the test (exit %r):\n%s" % (code, log))

    # ---- helpers for tests ------------------------------------------------

    def sname(self, suffix=""):
        """A stream name unique to this test method (valid characters only)."""
        self._name_counter += 1
        base = self._testMethodName.replace("_", "-")
        return "%s-%d%s" % (base, self._name_counter, suffix)

    def assertError(self, resp, status, code, mentions=None):
        """resp = (status, body).  Checks the error JSON contract."""
        st, body = resp
        self.assertEqual(st, status, "expected %d %s, got %d %r" % (status, code, st, body))
        self.assertIsInstance(body, dict, "error body must be a JSON object: %r" % (body,))
        self.assertEqual(body.get("error"), code, "wrong machine code: %r" % (body,))
        self.assertIsInstance(body.get("message"), str, "error without message: %r" % (body,))
        self.assertTrue(body["message"], "empty error message: %r" % (body,))
        if mentions is not None:
            self.assertIn(mentions, body["message"], "error message should name %r: %r" % (mentions, body))
        return body

    def assertParamError(self, resp, param):
        body = self.assertError(resp, 400, "invalid_parameter", mentions=param)
        self.assertEqual(body.get("parameter"), param, "invalid_parameter should carry \"parameter\": %r" % (body,))
        return body

    def assertFieldError(self, resp, field, codes=("invalid_event", "invalid_json")):
        st, body = resp
        self.assertEqual(st, 400, "expected 400 naming %r, got %d %r" % (field, st, body))
        self.assertIn(body.get("error"), codes, body)
        self.assertIn(field, body.get("message", ""), "message should name the field %r: %r" % (field, body))
        if "field" in body:
            self.assertEqual(body["field"], field, body)
        return body


def thread(fn, *args):
    t = threading.Thread(target=fn, args=args, daemon=True)
    t.start()
    return t
