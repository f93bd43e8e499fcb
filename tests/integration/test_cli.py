"""Command line and config file."""

import os
import subprocess
import tempfile
import unittest

import harness
from harness import Server


def run(*args, timeout=20):
    return subprocess.run([harness.BIN] + list(args), capture_output=True, timeout=harness.scaled(timeout),
                          stdin=subprocess.DEVNULL)


class CliTest(unittest.TestCase):

    def test_help_and_version(self):
        p = run("--help")
        self.assertEqual(p.returncode, 0, p)
        out = (p.stdout + p.stderr).decode()
        for flag in ("--config", "--host", "--port", "--data-dir", "--durability", "--segment-bytes",
                     "--retention-check-ms", "--max-event-bytes", "--auto-create-streams"):
            self.assertIn(flag, out)
        p = run("--version")
        self.assertEqual(p.returncode, 0, p)
        self.assertRegex((p.stdout + p.stderr).decode(), r"\d+\.\d+")

    def test_bad_arguments_exit_nonzero(self):
        with tempfile.TemporaryDirectory() as d:
            for args, word in ((["--bogus-flag", "1"], "bogus"), (["--port", "abc"], "port"),
                               (["--port", "70000"], "port"), (["--durability", "sometimes"], "durability"),
                               (["--segment-bytes", "10"], "segment"), (["--config", os.path.join(d, "none.conf")],
                                                                         "none.conf"),
                               (["stray"], "stray"), (["--port"], "port")):
                if args != ["--port"]:  # a flag without its value must stay last
                    args = args + ["--data-dir", os.path.join(d, "data")]
                p = run(*args)
                self.assertNotEqual(p.returncode, 0, (args, p))
                self.assertIn(word, (p.stdout + p.stderr).decode(), args)

    def test_config_file_and_flag_precedence(self):
        with tempfile.TemporaryDirectory() as d:
            port = harness.free_port()
            conf = os.path.join(d, "streamd.conf")
            with open(conf, "w") as f:
                f.write("# streamd test config\n"
                        "host = 127.0.0.1\n"
                        "port = %d\n"
                        "data_dir = %s\n"
                        "\n"
                        "max_batch_events = 2   # a comment after a value\n"
                        "max_event_bytes = 100\n"
                        "durability = never\n" % (port, os.path.join(d, "data")))
            srv = Server(["--config", conf, "--max-event-bytes", "4096"], auto_args=False, port=port)
            self.addCleanup(srv.cleanup)
            srv.start()
            srv.create("cfg")
            # From the file: batches of at most 2.
            self.assertEqual(srv.post("/stream/cfg/publish", [{"event": "e", "data": 1}] * 3)[0], 413)
            # The flag wins over the file: a 1000-byte event is fine.
            srv.publish("cfg", {"event": "e", "data": "x" * 1000})
            srv.stop()
            self.assertTrue(os.path.isdir(os.path.join(d, "data")), "data_dir from the config file not used")

    def test_bad_config_file_line(self):
        with tempfile.TemporaryDirectory() as d:
            conf = os.path.join(d, "bad.conf")
            with open(conf, "w") as f:
                f.write("port = 1234\nthis is not a setting\n")
            p = run("--config", conf, "--data-dir", os.path.join(d, "data"))
            self.assertNotEqual(p.returncode, 0)
            self.assertIn("2", (p.stdout + p.stderr).decode(), "the error should give the line number")
            with open(conf, "w") as f:
                f.write("no_such_key = 1\n")
            p = run("--config", conf, "--data-dir", os.path.join(d, "data"))
            self.assertNotEqual(p.returncode, 0)
            self.assertIn("no_such_key", (p.stdout + p.stderr).decode())

    def test_port_in_use_fails(self):
        srv = Server()
        self.addCleanup(srv.cleanup)
        srv.start()
        with tempfile.TemporaryDirectory() as d:
            p = subprocess.Popen([harness.BIN, "--host", "127.0.0.1", "--port", str(srv.port), "--data-dir",
                                  os.path.join(d, "data")], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT)
            try:
                code = p.wait(harness.scaled(3))
            except subprocess.TimeoutExpired:
                code = None
                p.kill()
                p.wait()
            out = p.stdout.read().decode()
            p.stdout.close()
        self.assertIsNotNone(code, "a second server on a port already in use kept running (SO_REUSEPORT? the "
                                   "kernel then splits connections between two servers):\n" + out)
        self.assertNotEqual(code, 0, out)
        srv.stop()

    def test_data_dir_locked_against_second_server(self):
        # Two servers writing the same log would corrupt it.
        srv = Server()
        self.addCleanup(srv.cleanup)
        srv.start()
        srv.create("lock")
        other = Server(data_dir=srv.data_dir)
        self.addCleanup(other.cleanup)
        try:
            other.start(timeout=harness.scaled(5))
            started = True
        except harness.ServerError:
            started = False
        if started:
            other.kill()
        self.assertFalse(started, "a second server opened a data directory that is in use")
        srv.publish("lock", {"event": "e", "data": 1})
        srv.stop()


if __name__ == "__main__":
    unittest.main()
