"""A failed fsync, end to end: the real server runs with libfailsync.so
preloaded (tests/faults/failsync.c), which makes fdatasync/fsync fail with
EIO on one partition's files once a trigger file exists.

The publish in flight gets an error, the partition then refuses writes with
503 partition_read_only naming the reason, stats and /metrics show it,
reads and the other partition go on, and after a restart without the fault
every acknowledged event is there, byte for byte.

The shim is found next to the binary (<build>/tests/faults/libfailsync.so)
or at STREAMD_FAILSYNC.  Under ASan the ASan runtime is put first in
LD_PRELOAD (ASan refuses to start otherwise); the shim itself is built
without sanitizers."""

import contextlib
import os
import re
import subprocess
import unittest

import harness
from harness import Server

STREAM = "fs"


def shim_path():
    p = os.environ.get("STREAMD_FAILSYNC") or os.path.join(os.path.dirname(harness.BIN), "tests", "faults",
                                                           "libfailsync.so")
    return os.path.abspath(p)


def preload_list():
    """LD_PRELOAD for the server: the sanitizer runtime first when the
    binary links one, then the shim."""
    out = subprocess.run(["ldd", harness.BIN], capture_output=True, text=True).stdout
    libs = []
    m = re.search(r"(\S*libasan\.so\S*) => (\S+)", out)
    if m:
        libs.append(m.group(2))
    libs.append(shim_path())
    return ":".join(libs)


@contextlib.contextmanager
def server_env(**env):
    """Environment for a server started inside the block (Popen inherits it)."""
    old = {k: os.environ.get(k) for k in env}
    os.environ.update({k: str(v) for k, v in env.items()})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class FsyncFailureTest(unittest.TestCase):

    def setUp(self):
        if not os.path.exists(shim_path()):
            self.skipTest("%s is missing (built by CMake with the tests; set STREAMD_FAILSYNC)" % shim_path())
        self.srv = Server()
        self.addCleanup(self.srv.cleanup)
        self.trigger = os.path.join(self.srv._tmp, "fail-now")

    def start_faulty(self, durability):
        # Only partition 1's files: its segments and its directory.
        with server_env(LD_PRELOAD=preload_list(), FAILSYNC_TRIGGER=self.trigger,
                        FAILSYNC_MATCH="/streams/%s/1" % STREAM):
            self.srv.start(["--durability", durability])

    def publish(self, part, n, acked):
        for i in range(n):
            ev = {"event": "e", "data": {"p": part, "i": len(acked)}, "partition": part}
            st, body = self.srv.publish(STREAM, ev)
            acked[(part, body["offset"])] = ev["data"]

    def read_all(self):
        return {p: self.srv.consume_all(STREAM, partition=p) for p in (0, 1)}

    def check_acked(self, acked, got):
        for (p, off), data in acked.items():
            evs = [e for e in got[p] if e["offset"] == off]
            self.assertEqual(len(evs), 1, "acknowledged event %d/%d missing" % (p, off))
            self.assertEqual(evs[0]["data"], data)

    def run_failure(self, durability):
        srv = self.srv
        self.start_faulty(durability)
        srv.create(STREAM, partitions=2)
        acked = {}
        self.publish(0, 5, acked)
        self.publish(1, 5, acked)

        open(self.trigger, "w").close()
        st, body = srv.post("/stream/%s/publish" % STREAM, {"event": "e", "data": "in flight", "partition": 1})
        if durability == "always":
            # Answered only after its sync, which failed.
            self.assertEqual(st, 500, "the publish whose sync failed must not get 200: %d %r" % (st, body))
            self.assertEqual(body.get("error"), "io_error", body)
            self.assertIn("could not be synced", body.get("message", ""), body)
            self.assertIn("Input/output error", body.get("message", ""), body)
        else:
            # Answered before any sync: the failure comes with the next one.
            self.assertEqual(st, 200, body)
            acked[(1, body["offset"])] = "in flight"

        def refused():
            st, body = srv.post("/stream/%s/publish" % STREAM, {"event": "e", "data": "after", "partition": 1})
            if st == 200:
                acked[(1, body["offset"])] = "after"
                return None
            return st, body

        st, body = harness.poll_until(refused, harness.scaled(10), interval=0.1, what="partition 1 to refuse writes")
        self.assertEqual(st, 503, body)
        self.assertEqual(body.get("error"), "partition_read_only", body)
        self.assertIn("fdatasync failed (Input/output error)", body["message"], body)
        self.assertIn("restart", body["message"], body)
        self.assertIn("failsync: fdatasync(", srv.log_since_start())

        stats = srv.stats(STREAM)
        self.assertIn("fdatasync failed", stats["partitions"][1].get("read_only", ""), stats)
        self.assertNotIn("read_only", stats["partitions"][0], stats)
        st, _, metrics = srv.request_raw("GET", "/metrics")
        self.assertEqual(st, 200)
        self.assertRegex(metrics.decode(), r'streamd_partition_read_only\{stream="fs",partition="1"\} 1')
        self.assertRegex(metrics.decode(), r'streamd_partition_read_only\{stream="fs",partition="0"\} 0')

        # Reads go on, and serve what was acknowledged; the other partition
        # still takes writes.
        got = self.read_all()
        self.check_acked(acked, got)
        if durability == "always":
            self.assertEqual(len(got[1]), 5, "a record whose sync failed was served: %r" % got[1][-1])
        # Later durable operations wait for a later sync, not for the failed one.
        st, body = srv.post("/stream/%s/group/after-failure" % STREAM, {"ack": "explicit"})
        self.assertEqual(st, 201, body)
        self.publish(0, 3, acked)
        # The error was reported once; it is not retried into a success.
        os.path.exists(self.trigger) and os.unlink(self.trigger)
        self.assertEqual(srv.publish(STREAM, {"event": "e", "data": 1, "partition": 1}, expect=None)[0], 503)

        before = self.read_all()
        srv.kill()
        srv.start(["--durability", durability])  # no fault
        after = self.read_all()
        self.check_acked(acked, after)
        for p in (0, 1):
            n = len(before[p])
            self.assertEqual(after[p][:n], before[p], "partition %d changed across the restart" % p)
        st, body = srv.publish(STREAM, {"event": "e", "data": "again", "partition": 1})
        self.assertEqual(st, 200, body)
        self.assertNotIn("read_only", srv.stats(STREAM)["partitions"][1])
        srv.stop()

    def test_creation_whose_directory_sync_fails(self):
        """A new stream's first sync fails: its creation is not answered 201."""
        with server_env(LD_PRELOAD=preload_list(), FAILSYNC_TRIGGER=self.trigger, FAILSYNC_MATCH="/streams/newone"):
            self.srv.start()
        open(self.trigger, "w").close()
        st, body = self.srv.post("/stream/newone")
        self.assertEqual(st, 500, "creation answered although its sync failed: %d %r" % (st, body))
        self.assertEqual(body.get("error"), "io_error", body)
        self.assertIn("could not be synced", body.get("message", ""), body)
        st, body = self.srv.publish("newone", {"event": "e", "data": 1}, expect=None)
        self.assertEqual(st, 503, body)
        self.assertEqual(body.get("error"), "partition_read_only", body)
        self.assertIn("sync failed (Input/output error)", body["message"], body)
        # Other streams are not affected.
        self.srv.create("other")
        self.srv.publish("other", {"event": "e", "data": 1})
        # The final sync fails too (the fault is still there): exit status 1.
        self.assertEqual(self.srv.terminate(), 1)
        self.assertIn("final sync failed", self.srv.log_since_start())

    def test_fsync_failure_always(self):
        self.run_failure("always")

    def test_fsync_failure_interval(self):
        self.run_failure("interval")


if __name__ == "__main__":
    unittest.main()
