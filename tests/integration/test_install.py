"""`cmake --install` layout and the systemd unit it installs.

The build directory is the one holding STREAMD_BIN.  The test installs
into a temporary prefix, checks the files and the unit's settings, then
runs the service: through systemd when it runs here (as root), otherwise
as the unit would, with the ExecStart command line read from the
installed unit and NOTIFY_SOCKET naming a datagram socket the test binds,
and checks the readiness protocol: READY=1 once the port accepts
connections, STOPPING=1 on SIGTERM, exit status 0.
"""

import os
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import unittest

import harness

SRC = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD = os.path.dirname(os.path.abspath(harness.BIN))


def parse_unit(path):
    """{section: [(key, value), ...]} of a systemd unit file (keys repeat)."""
    sections, cur = {}, None
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line or line[0] in "#;":
                continue
            if line.startswith("[") and line.endswith("]"):
                cur = sections.setdefault(line[1:-1], [])
                continue
            key, _, value = line.partition("=")
            cur.append((key.strip(), value.strip()))
    return sections


def unit_value(sections, section, key):
    values = [v for k, v in sections.get(section, []) if k == key]
    return values[-1] if values else None


def systemd_running():
    if os.geteuid() != 0 or shutil.which("systemctl") is None:
        return False
    p = subprocess.run(["systemctl", "is-system-running"], capture_output=True, text=True)
    return p.stdout.strip() in ("running", "degraded")


def notifications(sock, until, timeout):
    """Datagrams received until one contains `until` (a line) or timeout."""
    got = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            msg = sock.recv(4096).decode()
        except socket.timeout:
            break
        got.append(msg)
        if until in msg.split("\n"):
            return got
    raise AssertionError("no %s within %.1f s; received %r" % (until, timeout, got))


@unittest.skipUnless(os.path.exists(os.path.join(BUILD, "CMakeCache.txt")) and shutil.which("cmake"),
                     "STREAMD_BIN is not in a CMake build directory")
class InstallTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="streamd-install-")
        cls.prefix = os.path.join(cls.tmp, "prefix")
        p = subprocess.run(["cmake", "--install", BUILD, "--prefix", cls.prefix], capture_output=True, text=True,
                           timeout=harness.scaled(120))
        if p.returncode != 0:
            raise AssertionError("cmake --install failed:\n%s%s" % (p.stdout, p.stderr))
        cls.unit_path = os.path.join(cls.prefix, "lib", "systemd", "system", "streamd.service")
        cls.unit = parse_unit(cls.unit_path)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def exec_start(self):
        return shlex.split(unit_value(self.unit, "Service", "ExecStart"))

    def test_layout(self):
        binary = os.path.join(self.prefix, "bin", "streamd")
        self.assertTrue(os.access(binary, os.X_OK), binary)
        conf = os.path.join(self.prefix, "etc", "streamd", "streamd.conf")
        with open(conf) as a, open(os.path.join(SRC, "config", "streamd.conf")) as b:
            self.assertEqual(a.read(), b.read())
        self.assertTrue(os.path.isfile(self.unit_path))
        for doc in ("operations.md", "configuration.md", "streamd.conf.example"):
            self.assertTrue(os.path.isfile(os.path.join(self.prefix, "share", "doc", "streamd", doc)), doc)
        p = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=harness.scaled(10))
        self.assertEqual(p.returncode, 0, p)

    def test_unit_settings(self):
        s = self.unit
        self.assertEqual(unit_value(s, "Service", "Type"), "notify")
        self.assertTrue(unit_value(s, "Service", "DynamicUser") == "yes" or unit_value(s, "Service", "User"))
        self.assertEqual(unit_value(s, "Service", "StateDirectory"), "streamd")
        for key, want in (("ProtectSystem", "strict"), ("NoNewPrivileges", "yes"), ("PrivateTmp", "yes"),
                          ("ProtectHome", "yes"), ("PrivateDevices", "yes")):
            self.assertEqual(unit_value(s, "Service", key), want, key)
        self.assertGreaterEqual(int(unit_value(s, "Service", "LimitNOFILE")), 65536)
        self.assertIn("multi-user.target", unit_value(s, "Install", "WantedBy"))
        # ExecStart names the installed binary and config, and the state directory.
        argv = self.exec_start()
        self.assertEqual(argv[0], os.path.join(self.prefix, "bin", "streamd"))
        self.assertEqual(argv[argv.index("--config") + 1], os.path.join(self.prefix, "etc", "streamd", "streamd.conf"))
        self.assertEqual(argv[argv.index("--data-dir") + 1], "%S/streamd")
        if shutil.which("systemd-analyze"):
            p = subprocess.run(["systemd-analyze", "verify", self.unit_path], capture_output=True, text=True,
                               timeout=harness.scaled(30))
            self.assertEqual(p.returncode, 0, p.stdout + p.stderr)

    def test_reinstall_keeps_local_config(self):
        prefix = os.path.join(self.tmp, "upgrade")
        conf = os.path.join(prefix, "etc", "streamd", "streamd.conf")
        for i in range(2):
            p = subprocess.run(["cmake", "--install", BUILD, "--prefix", prefix], capture_output=True, text=True,
                               timeout=harness.scaled(120))
            self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
            if i == 0:
                with open(conf, "a") as f:
                    f.write("port = 15999\n")
        with open(conf) as f:
            self.assertIn("port = 15999", f.read())

    def test_service_readiness(self):
        if systemd_running():
            self.run_under_systemd()
        else:
            self.run_as_the_unit_would()

    def run_as_the_unit_would(self):
        state = os.path.join(self.tmp, "state")  # what %S is under systemd (/var/lib)
        os.makedirs(state, exist_ok=True)
        port = harness.free_port()
        argv = [a.replace("%S", state) for a in self.exec_start()] + ["--port", str(port)]
        for name in (os.path.join(self.tmp, "notify.sock"), "@streamd-test-notify-%d" % os.getpid()):
            with self.subTest(notify_socket=name):
                self.run_with_notify_socket(argv, name, port)
        self.assertTrue(os.path.isdir(os.path.join(state, "streamd")), "the data directory under the state directory")

    def run_with_notify_socket(self, argv, name, port):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind("\0" + name[1:] if name.startswith("@") else name)
        log = open(os.path.join(self.tmp, "server.log"), "wb")
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                env=dict(os.environ, NOTIFY_SOCKET=name))
        try:
            got = notifications(sock, "READY=1", harness.scaled(20))
            # READY=1 means listening: the port accepts at once, no retry.
            with socket.create_connection(("127.0.0.1", port), timeout=harness.scaled(5)) as c:
                c.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                resp = harness.read_response(c, timeout=harness.scaled(5))
                self.assertEqual(resp.status, 200)
            self.assertIn("STATUS=listening on 127.0.0.1:%d" % port, got[-1].split("\n"))
            self.assertFalse([m for m in got if "STOPPING=1" in m], got)
            proc.send_signal(signal.SIGTERM)
            got = notifications(sock, "STOPPING=1", harness.scaled(20))
            self.assertEqual(proc.wait(timeout=harness.scaled(30)), 0)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
            sock.close()
            if not name.startswith("@"):
                os.unlink(name)

    def run_under_systemd(self):
        """A copy of the unit under a unique name, on a free port, started and stopped by systemd."""
        name = "streamd-itest-%d.service" % os.getpid()
        path = os.path.join("/run/systemd/system", name)
        port = harness.free_port()
        with open(self.unit_path) as f:
            text = f.read()
        text = text.replace("--data-dir %S/streamd", "--data-dir %S/streamd --port " + str(port))
        text = text.replace("StateDirectory=streamd", "StateDirectory=" + name[:-len(".service")])
        text = text.replace("%S/streamd", "%S/" + name[:-len(".service")])
        with open(path, "w") as f:
            f.write(text)
        try:
            subprocess.run(["systemctl", "daemon-reload"], check=True)
            # Type=notify: start returns once the server said READY=1.
            subprocess.run(["systemctl", "start", name], check=True, timeout=harness.scaled(60))
            with socket.create_connection(("127.0.0.1", port), timeout=harness.scaled(5)):
                pass
            subprocess.run(["systemctl", "stop", name], check=True, timeout=harness.scaled(90))
            p = subprocess.run(["systemctl", "show", "-p", "Result", "--value", name], capture_output=True, text=True)
            self.assertEqual(p.stdout.strip(), "success")
        finally:
            subprocess.run(["systemctl", "stop", name], capture_output=True)
            os.unlink(path)
            subprocess.run(["systemctl", "daemon-reload"], capture_output=True)


if __name__ == "__main__":
    unittest.main()
