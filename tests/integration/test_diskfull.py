"""Disk full, end to end: the data directory is a small tmpfs that the test
fills.  Publishes (single and batch), stream creation, group creation and
acks are refused with 507 and a JSON error; reads and WebSocket subscribers
go on; nothing stored is damaged (checked byte for byte after a restart);
writes resume once space is freed, by deleting a stream and by retention.

Needs root (mount -t tmpfs); skipped with the reason otherwise."""

import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
import unittest

import harness
from harness import Server
from wsclient import Closed as WSClosed, WsClient

TMPFS_KB = 2048
SEG = 65536
PAD = "x" * 1900  # ~2 KiB records: about 31 per 64 KiB segment


def mount_tmpfs(test, kb):
    """Mounts a tmpfs of kb KiB on a new directory; unmounted and removed at
    the end of the test.  Skips the test when mounting is not allowed."""
    if os.geteuid() != 0:
        test.skipTest("disk-full tests mount a tmpfs and need root (euid %d)" % os.geteuid())
    mnt = tempfile.mkdtemp(prefix="streamd-full-")
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%dk" % kb, "tmpfs", mnt],
                       capture_output=True, text=True)
    if p.returncode != 0:
        os.rmdir(mnt)
        test.skipTest("mount -t tmpfs refused (%s): cannot make a small file system to fill"
                      % (p.stderr.strip() or "exit %d" % p.returncode))

    def unmount():
        if subprocess.run(["umount", mnt], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", mnt], capture_output=True)
        shutil.rmtree(mnt, ignore_errors=True)

    test.addCleanup(unmount)
    return mnt


def fill_file(path):
    """Writes zeros to path until the file system is full; returns bytes written."""
    n = 0
    with open(path, "wb", buffering=0) as f:
        for size in (65536, 4096, 512, 64, 8, 1):
            block = b"\0" * size
            while True:
                try:
                    n += f.write(block)
                except OSError:
                    break
    return n


def free_kb(path):
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize // 1024


class DiskFullTest(unittest.TestCase):

    # tmpfs size per test (KiB), when not TMPFS_KB
    SIZES = {"test_restart_on_full_disk_with_large_groups_log": 12288}

    def setUp(self):
        self.mnt = mount_tmpfs(self, self.SIZES.get(self._testMethodName, TMPFS_KB))
        self.srv = Server(["--segment-bytes", str(SEG), "--retention-check-ms", "100"],
                          data_dir=os.path.join(self.mnt, "data"))
        self.addCleanup(self.srv.cleanup)  # runs before the unmount
        self.srv.start()
        self.acked = {}   # stream -> {offset: (event, data)} of every 200
        self.seq = 0

    # ---- helpers --------------------------------------------------------

    def ev(self, stream, pad=PAD):
        self.seq += 1
        return {"event": "e%d" % self.seq, "data": {"n": self.seq, "s": stream, "pad": pad}}

    def publish(self, stream, ev):
        """One publish: 200 (recorded as acknowledged) or 507 (checked)."""
        st, body = self.srv.publish(stream, ev, expect=None)
        if st == 200:
            self.acked.setdefault(stream, {})[body["offset"]] = (ev["event"], ev["data"])
            return True
        self.assertFull((st, body))
        return False

    def fill(self, stream, pad=PAD, limit=2000):
        """Publishes until the first 507; returns how many succeeded."""
        for i in range(limit):
            if not self.publish(stream, self.ev(stream, pad)):
                return i
        self.fail("%s: still accepting publishes after %d events of %d bytes on a %d KiB disk"
                  % (stream, limit, len(pad), TMPFS_KB))

    def assertFull(self, resp):
        st, body = resp
        self.assertEqual(st, 507, "expected 507 insufficient_storage, got %d %r" % (st, body))
        self.assertIsInstance(body, dict, body)
        self.assertEqual(body.get("error"), "insufficient_storage", body)
        self.assertIn("disk", body.get("message", "").lower(), body)
        return body

    def segs(self, stream, part=0):
        d = os.path.join(self.srv.data_dir, "streams", stream, str(part))
        return sorted(f for f in os.listdir(d) if f.endswith(".seg"))

    def max_offset(self, stream):
        return self.srv.info(stream)["max_offset"]

    def raw_pages(self, stream):
        """The raw bytes of a full read of partition 0, page by page."""
        out, nxt = [], self.srv.info(stream)["min_offset"]
        while True:
            st, _, body = self.srv.request_raw(
                "GET", "/stream/%s/consume/check?partition=0&from_offset=%d&limit=100" % (stream, nxt))
            self.assertEqual(st, 200, body[:300])
            page = json.loads(body)
            if not page:
                return out
            out.append(body)
            nxt = page[-1]["offset"] + 1

    def check_stored(self, stream):
        """Every acknowledged event is served with its content, at its offset."""
        got = {e["offset"]: e for e in self.srv.consume_all(stream, partition=0)}
        for off, (name, data) in sorted(self.acked.get(stream, {}).items()):
            self.assertIn(off, got, "%s: acknowledged offset %d is missing" % (stream, off))
            self.assertEqual((got[off]["event"], got[off]["data"]), (name, data), "%s offset %d" % (stream, off))
        return got

    def group_ack(self, stream, group, consumer, part, off):
        return self.srv.post("/stream/%s/group/%s/ack" % (stream, group),
                             {"consumer": consumer, "acks": [{"partition": part, "offset": off}]})

    def group_consume(self, stream, group, consumer, limit=5):
        st, body = self.srv.get("/stream/%s/group/%s/consume?consumer=%s&limit=%d" % (stream, group, consumer, limit))
        self.assertEqual(st, 200, body)
        return body

    # ---- the test ---------------------------------------------------------

    def test_disk_full_refuses_writes_keeps_reads_and_recovers(self):
        srv = self.srv
        srv.create("keep")
        srv.create("victim")
        # One sealed segment, removed once 24 newer events exist.
        srv.create("trimmed", max_events=24)
        st, body = srv.post("/stream/keep/group/workers", {"ack": "explicit"})
        self.assertEqual(st, 201, body)
        self.assertEqual(srv.post("/stream/keep/group/auto")[0], 201)  # ack: auto

        # A subscriber from the start, reading while the disk fills.
        ws = WsClient.connect("127.0.0.1", srv.port, "/stream/keep/ws/sub?from_offset=0", timeout=harness.scaled(10))
        self.addCleanup(ws.close)
        received = []
        ws_err = []

        def reader():
            try:
                while True:
                    m = ws.recv_text(timeout=harness.scaled(60))
                    if m is None:
                        return
                    received.append(m)
            except (WSClosed, OSError) as e:
                ws_err.append(e)

        t = threading.Thread(target=reader, daemon=True)
        t.start()

        # trimmed: one roll, so its first segment waits for retention.
        while len(self.segs("trimmed")) < 2:
            self.assertTrue(self.publish("trimmed", self.ev("trimmed")), "trimmed filled before its first roll")
        trimmed_base = int(self.segs("trimmed")[1].split(".")[0])
        self.assertGreater(trimmed_base, 1)

        # Fill the disk: victim, then keep (its reserved room too), then the
        # last pages with a ballast file outside the data directory.
        self.assertGreater(self.fill("victim"), 10)
        self.fill("keep")
        fill_file(os.path.join(self.mnt, "ballast"))
        self.assertEqual(free_kb(self.mnt), 0)

        # -- writes are refused with 507, nothing half-done ------------------
        before = self.max_offset("keep")
        self.assertFull(srv.publish("keep", self.ev("keep"), expect=None))
        self.assertFull(srv.publish("victim", self.ev("victim"), expect=None))
        # A batch whose small events fit in the segment's reserved room but
        # whose last needs a new segment: refused whole.
        batch = [self.ev("keep", pad="s"), self.ev("keep", pad="s"), self.ev("keep", pad=PAD * 20)]
        self.assertFull(srv.publish("keep", {"events": batch}, expect=None))
        self.assertEqual(self.max_offset("keep"), before, "a refused batch left events behind")
        # Offsets are not used up by refused publishes.
        small = self.ev("keep", pad="")
        if self.publish("keep", small):
            self.assertIn(before + 1, self.acked["keep"], "a refused publish used an offset")
        # Stream creation (explicit and by publish) is refused and leaves nothing.
        self.assertFull(srv.post("/stream/newstream", {"partitions": 2}))
        self.assertEqual(srv.get("/stream/newstream/info")[0], 404)
        self.assertFull(srv.publish("autostream", self.ev("autostream"), expect=None))
        self.assertEqual(srv.get("/stream/autostream/info")[0], 404)
        self.assertFalse(os.path.exists(os.path.join(srv.data_dir, "streams", "newstream")))

        # Group creation and acks: each either succeeds or is refused with
        # 507; the log fills within a page or so.
        created, refused = [], 0
        for i in range(200):
            st, body = srv.post("/stream/keep/group/g%d" % i, {"ack": "explicit"})
            if st == 201:
                created.append("g%d" % i)
                continue
            self.assertFull((st, body))
            refused += 1
            if refused == 3:
                break
        self.assertEqual(refused, 3, "group creation never ran out of space")
        acked_ok, ack_refused = [], 0
        while ack_refused < 3:
            evs = self.group_consume("keep", "workers", "c1")
            self.assertTrue(evs, "the group ran dry before an ack was refused")
            for e in evs:
                st, body = self.group_ack("keep", "workers", "c1", e["partition"], e["offset"])
                if st == 200:
                    self.assertEqual(body.get("acked"), 1, body)
                    acked_ok.append(e["offset"])
                else:
                    self.assertFull((st, body))
                    ack_refused += 1
        # Over WebSocket, a refused ack closes the connection with 1011 and
        # the reason (the client has no other way to learn it).
        gws = WsClient.connect("127.0.0.1", srv.port, "/stream/keep/group/workers/ws/c2?prefetch=1",
                       timeout=harness.scaled(10))
        self.addCleanup(gws.close)
        ev = gws.recv_json(timeout=harness.scaled(10))
        self.assertIsNotNone(ev, "no event pushed to the group's WebSocket consumer")
        gws.send_text(json.dumps({"ack": {"partition": ev["partition"], "offset": ev["offset"]}}))
        with self.assertRaises(WSClosed) as cm:
            while gws.recv_text(timeout=harness.scaled(10)) is not None:
                pass
            self.fail("the WebSocket stayed open after a refused ack")
        self.assertEqual(cm.exception.code, 1011, cm.exception.reason)
        self.assertIn("disk is full", cm.exception.reason)
        # An auto-ack group hands out events only once their new position is
        # logged: on a full log its consumes are refused.
        auto_seen = -1
        for i in range(200):
            st, body = srv.get("/stream/keep/group/auto/consume?limit=1")
            if st != 200:
                self.assertFull((st, body))
                break
            self.assertEqual(len(body), 1, body)
            self.assertEqual(body[0]["offset"], auto_seen + 1, body)
            auto_seen = body[0]["offset"]
        else:
            self.fail("auto-ack consumes never refused on a full disk")
        # A consumer leaving is refused the same way, and stays.
        self.assertFull(srv.delete("/stream/keep/group/workers/consumer/c1"))
        # A refused ack settled nothing: the event is still pending.
        st, info = srv.get("/stream/keep/group/workers/info")
        self.assertEqual(st, 200, info)
        self.assertGreater(info["pending_messages"], 0, info)
        self.assertIn("c1", info["consumers"], info)

        # -- reads go on ---------------------------------------------------
        self.check_stored("keep")
        self.check_stored("victim")
        st, stats = srv.get("/stream/keep/stats")
        self.assertEqual(st, 200, stats)
        self.assertNotIn("read_only", stats["partitions"][0], "a full disk must not make a partition read-only")
        n_keep = len(self.acked["keep"])
        harness.poll_until(lambda: len(received) >= n_keep or ws_err, harness.scaled(20), what="websocket catch-up")
        self.assertFalse(ws_err, ws_err)

        # -- space freed by deleting a stream: writes resume ---------------
        self.assertEqual(srv.delete("/stream/victim")[0], 200)
        self.acked.pop("victim")
        harness.poll_until(lambda: self.publish("keep", self.ev("keep")), harness.scaled(20),
                           interval=0.1, what="a publish to succeed after the deletion freed space")
        st, body = srv.post("/stream/keep/group/after-delete", {"ack": "explicit"})
        self.assertEqual(st, 201, body)
        created.append("after-delete")
        # Acks after the refused ones are kept (the log was not left torn).
        for e in self.group_consume("keep", "workers", "c1", limit=3):
            st, body = self.group_ack("keep", "workers", "c1", e["partition"], e["offset"])
            self.assertEqual(st, 200, body)
            acked_ok.append(e["offset"])

        # -- full again; then retention frees space -------------------------
        fill_file(os.path.join(self.mnt, "ballast2"))
        self.fill("keep")
        full_at = self.max_offset("keep")
        # trimmed's active segment has reserved room: these fit, and make
        # its first segment old enough for retention (max_events 24).
        for _ in range(24):
            self.assertTrue(self.publish("trimmed", self.ev("trimmed", pad="r" * 200)))
        harness.poll_until(lambda: len(self.segs("trimmed")) == 1, harness.scaled(20),
                           what="retention to remove trimmed's first segment")
        self.assertEqual(srv.info("trimmed")["min_offset"], trimmed_base)
        harness.poll_until(lambda: self.publish("keep", self.ev("keep")), harness.scaled(20),
                           interval=0.1, what="a publish to succeed after retention freed space")
        self.assertGreater(self.max_offset("keep"), full_at)

        # The subscriber saw every keep event, in order, and is still open.
        n_keep = len(self.acked["keep"])
        harness.poll_until(lambda: len(received) >= n_keep or ws_err, harness.scaled(20), what="websocket events")
        self.assertFalse(ws_err, ws_err)
        offs = [json.loads(m)["offset"] for m in received]
        self.assertEqual(offs, sorted(self.acked["keep"]), "websocket events differ from the acknowledged ones")

        # -- restart on the still-full disk: nothing damaged ----------------
        before_raw = {s: self.raw_pages(s) for s in ("keep", "trimmed")}
        st, ginfo = srv.get("/stream/keep/group/workers/info")
        self.assertEqual(st, 200)
        ws.close()
        srv.stop()
        srv.start()
        self.check_stored("keep")
        for s in ("keep", "trimmed"):
            self.assertEqual(self.raw_pages(s), before_raw[s], "%s: stored bytes changed across the restart" % s)
        st, groups = srv.get("/stream/keep/groups")
        self.assertEqual(st, 200, groups)
        for g in created + ["workers"]:
            self.assertIn(g, groups["groups"], "group %s was created (201) but is gone after the restart" % g)
        st, ginfo2 = srv.get("/stream/keep/group/workers/info")
        self.assertEqual(st, 200, ginfo2)
        committed = ginfo2["partitions"][0]["committed_offset"]
        self.assertGreaterEqual(committed, ginfo["partitions"][0]["committed_offset"],
                                "acks acknowledged before the restart were lost: %r -> %r" % (ginfo, ginfo2))
        self.assertNotIn("cut after", srv.log_since_start(), "a log was torn on the full disk:\n" + srv.log_tail())
        # Nothing the auto-ack group handed out comes back.
        st, body = srv.get("/stream/keep/group/auto/consume?limit=1")
        self.assertEqual(st, 200, body)
        self.assertEqual(body[0]["offset"], auto_seen + 1, "auto-ack group after the restart: %r" % body)
        # Writes work once the disk has room again.
        os.unlink(os.path.join(self.mnt, "ballast"))
        os.unlink(os.path.join(self.mnt, "ballast2"))
        self.assertTrue(self.publish("keep", self.ev("keep")))
        srv.stop()

    def test_stream_created_when_only_meta_json_does_not_fit(self):
        """Room for a new stream's segment and stream.json, none for the
        rewrite of meta.json by its sync: that is retried later, it does not
        make the new stream read-only or fail its creation."""
        srv = self.srv
        srv.create("first")
        ballast = os.path.join(self.mnt, "ballast")
        fill_file(ballast)
        self.assertEqual(free_kb(self.mnt), 0)
        # The segment's reserved chunk (64 KiB) and stream.json (one page).
        size = os.path.getsize(ballast)
        os.truncate(ballast, size - SEG - 4096)
        self.assertEqual(free_kb(self.mnt), (SEG + 4096) // 1024)
        st, body = srv.post("/stream/edge")
        self.assertEqual(st, 201, "creation failed although only meta.json did not fit: %r" % (body,))
        harness.poll_until(lambda: "meta.json not rewritten" in srv.log_since_start(), harness.scaled(10),
                           what="the meta.json rewrite to fail for lack of space")
        self.assertTrue(self.publish("edge", self.ev("edge", pad="small")))
        stats = srv.stats("edge")
        self.assertNotIn("read_only", stats["partitions"][0], stats)
        # Space back: the rewrite is retried with the next sync.
        os.unlink(ballast)
        self.assertTrue(self.publish("edge", self.ev("edge", pad="small")))
        with open(os.path.join(srv.data_dir, "meta.json")) as f:
            meta = json.load(f)
        gen = stats["generation"]
        self.assertGreater(meta["next_generation"], gen, "meta.json was not rewritten once space was back: %r" % meta)
        srv.kill()
        srv.start()
        self.check_stored("edge")
        srv.stop()

    def test_restart_on_full_disk_with_large_groups_log(self):
        """A groups.log large enough to be compacted at start-up, on a full
        disk: the snapshot does not fit, the server starts anyway with the
        log as it is, and compacts once there is room."""
        srv = self.srv
        srv.create("g")
        # 20,000 pending events: the snapshot (one entry per pending event,
        # ~340 KB) is larger than what start-up itself frees (the unused
        # reserved tail of the active segment and prealloc.tmp).
        n = 20000
        for b in range(4):
            st, body = srv.post("/stream/g/publish", [{"event": "e", "data": b * 5000 + i} for i in range(5000)])
            self.assertEqual(st, 200, body)
        self.assertEqual(srv.post("/stream/g/group/w", {"ack": "explicit"})[0], 201)
        got = 0
        while got < n:
            evs = self.group_consume("g", "w", "c1", limit=10000)
            self.assertTrue(evs)
            got += len(evs)
        self.assertEqual(self.group_ack("g", "w", "c1", 0, 0)[0], 200)
        srv.stop()
        # Grow the log past the compaction threshold (4 MiB) with copies of
        # the ack line, which replay as no-ops.
        log = os.path.join(srv.data_dir, "streams", "g", "groups.log")
        with open(log, "rb") as f:
            ack = [l for l in f.read().splitlines(keepends=True) if b'"t":"ack"' in l][0]
        with open(log, "ab") as f:
            f.write(ack * ((4 << 20) // len(ack) + 100))
        big = os.path.getsize(log)
        fill_file(os.path.join(self.mnt, "ballast"))
        srv.start()
        self.assertIn("groups.log not compacted", srv.log_since_start())
        st, info = srv.get("/stream/g/group/w/info")
        self.assertEqual(st, 200, info)
        self.assertEqual(info["partitions"][0]["committed_offset"], 1, info)
        self.assertEqual(info["pending_messages"], n - 1, info)
        self.assertEqual(srv.info("g")["message_count"], n)
        # Room again: acks are kept, and the next start-up compacts the log.
        os.unlink(os.path.join(self.mnt, "ballast"))
        self.assertEqual(self.group_ack("g", "w", "c1", 0, 1)[0], 200)
        srv.stop()
        srv.start()
        self.assertLess(os.path.getsize(log), big // 4, "groups.log was not compacted once there was room")
        st, info = srv.get("/stream/g/group/w/info")
        self.assertEqual(info["partitions"][0]["committed_offset"], 2, info)
        srv.stop()


if __name__ == "__main__":
    unittest.main()
