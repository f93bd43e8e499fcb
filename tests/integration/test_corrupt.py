"""Torn and corrupt data files, with seeded randomness (env
STREAMD_CORRUPT_SEEDS: how many seeds, default 3; STREAMD_CORRUPT_SEED: the
first one, printed).  Extends test_recovery.py, which covers one flipped
byte at fixed places.

With a small segment_bytes there are several segments per partition.  The
server is stopped (or killed) and its files are damaged:

- the newest segment cut at a random byte, and random bytes flipped in its
  last records (the patterns a crash or a torn write can leave);
- a sealed segment cut at a random byte, an index cut at a random byte, an
  index deleted, a new segment file with a partial header;
- a byte flipped in the middle of a sealed, older segment (not a crash
  pattern: media damage).

Every time the server must start, serve every record before the damage,
byte for byte, never serve a record that was not published as it was,
log what it cut, and, for damage in old data, log an error and show it in
the partition's `damage` member of GET /stream/{s}/stats.

A model of the file format (docs/storage.md) written here in Python
decides which records are valid, so the test also checks the server keeps
exactly the valid prefix the specification defines.
"""

import json
import os
import random
import re
import struct
import sys
import unittest

from harness import Server, poll_until, scaled, short
from wsclient import Closed, WsClient

N_SEEDS = int(os.environ.get("STREAMD_CORRUPT_SEEDS", "3"))
FIRST_SEED = int(os.environ.get("STREAMD_CORRUPT_SEED", str(random.SystemRandom().randrange(1 << 31))))
SEG_BYTES = 4096
STREAM = "c"


# ---- the file format, as docs/storage.md specifies it ------------------------------------

def _crc_table():
    t = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        t.append(c)
    return t


_T = _crc_table()


def crc32c(data, crc=0):
    crc ^= 0xFFFFFFFF
    for b in data:
        crc = _T[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


assert crc32c(b"123456789") == 0xE3069283


def scan(img, base):
    """Valid prefix of a segment image: list of (offset, position, size)."""
    out = []
    pos = 64
    while pos + 32 <= len(img):
        jl, crc, off, _ts, il, flags, zero = struct.unpack_from("<IIQQHHI", img, pos)
        if jl == 0 or il > 128 or flags or zero or off != base + len(out):
            break
        size = (32 + il + jl + 7) & ~7
        if size > len(img) - pos or crc32c(img[pos + 8:pos + 32 + il + jl]) != crc:
            break
        out.append((off, pos, size))
        pos += size
    return out


def seg_files(part_dir):
    """[(base, path)] of the partition's segments, oldest first."""
    out = []
    for n in os.listdir(part_dir):
        m = re.fullmatch(r"(\d{20})\.seg", n)
        if m:
            out.append((int(m.group(1)), os.path.join(part_dir, n)))
    return sorted(out)


def read(path):
    with open(path, "rb") as f:
        return f.read()


def flip(path, pos, rng):
    with open(path, "r+b") as f:
        f.seek(pos)
        b = f.read(1)[0]
        f.seek(pos)
        f.write(bytes([b ^ (1 << rng.randrange(8))]))


def cut(path, length):
    os.truncate(path, length)


class CorruptTest(unittest.TestCase):

    seeds = [FIRST_SEED + i for i in range(N_SEEDS)]

    @classmethod
    def setUpClass(cls):
        print("\ncorrupt: seeds %s (STREAMD_CORRUPT_SEED=%d STREAMD_CORRUPT_SEEDS=%d to repeat)"
              % (cls.seeds, FIRST_SEED, N_SEEDS), file=sys.stderr, flush=True)

    # ---- helpers ------------------------------------------------------------------------

    def fresh(self, rng, partitions=2, n=240):
        """A server with `n` events published over `partitions` partitions,
        with ids and varied sizes; returns (server, {(p, o): event})."""
        srv = Server(["--segment-bytes", str(SEG_BYTES), "--dedup-window-ms", "86400000"])
        self.addCleanup(srv.cleanup)
        srv.start()
        srv.create(STREAM, partitions=partitions)
        events = []
        for i in range(n):
            ev = {"event": "e%d" % (i % 5), "id": "id-%d" % i, "partition": i % partitions,
                  "data": {"i": i, "pad": "v%d-" % i + "q" * rng.randrange(0, 300)}}
            if rng.random() < 0.3:
                ev["headers"] = {"k": "h%d" % i}
            events.append(ev)
        for at in range(0, n, 40):
            st, body = srv.post("/stream/%s/publish" % STREAM, events[at:at + 40])
            self.assertEqual(st, 200, body)
        published = {}
        for p in range(partitions):
            for e in srv.consume_all(STREAM, partition=p):
                published[(p, e["offset"])] = e
        self.assertEqual(len(published), n)
        return srv, published

    def part_dir(self, srv, p):
        return os.path.join(srv.data_dir, "streams", STREAM, str(p))

    def served(self, srv, p):
        """Every record of partition p the server serves, walking past
        refusals: {offset: event}, and the offsets refused (500)."""
        info = srv.stats(STREAM)["partitions"][p]
        out, refused = {}, []
        nxt = info["min_offset"]
        while nxt <= info["max_offset"]:
            st, page = srv.consume(STREAM, partition=p, from_offset=nxt, limit=1000, expect=None)
            if st != 200:
                self.assertEqual((st, page.get("error")), (500, "corrupt_record"), page)
                refused.append(nxt)
                nxt += 1
                continue
            self.assertTrue(page, "empty page at %d below max_offset %d" % (nxt, info["max_offset"]))
            for i, e in enumerate(page):
                self.assertEqual(e["offset"], nxt + i, "offsets not dense in a page: %s" % short(page))
                out[e["offset"]] = e
            nxt = page[-1]["offset"] + 1
        return out, refused

    def check(self, srv, published, keep, ctx):
        """keep: {p: offsets that must be served as published}.  Every record
        served anywhere must be one that was published, at its offset."""
        for p in keep:
            got, refused = self.served(srv, p)
            for o, e in got.items():
                self.assertEqual(e, published.get((p, o)),
                                 "%s: partition %d offset %d served as %s" % (ctx, p, o, short(e)))
            missing = sorted(set(keep[p]) - set(got))
            self.assertFalse(missing, "%s: partition %d lost records before the damage: %s (refused %s)"
                             % (ctx, p, missing[:20], refused[:20]))
        # Still writable, and the new records read back.
        st, body = srv.publish(STREAM, {"event": "after", "data": "after", "partition": 0})
        self.assertEqual(st, 200)
        _, page = srv.consume(STREAM, partition=0, from_offset=body["offset"])
        self.assertEqual(page[0]["data"], "after", ctx)
        published[(0, body["offset"])] = page[0]

    def expect_log(self, srv, pattern, ctx):
        log = srv.log_since_start()
        self.assertRegex(log, pattern, "%s: the log should say what was cut:\n%s" % (ctx, log[-3000:]))

    def restart_after(self, srv, damage, kill=False):
        """Stops (or kills) the server, applies damage(), starts it again."""
        if kill:
            srv.kill()
        else:
            srv.stop()
        damage()
        srv.start()

    # ---- crash patterns: the newest segment ---------------------------------------------

    def test_newest_segment_cut_at_random_byte(self):
        for seed in self.seeds:
            rng = random.Random(seed)
            srv, published = self.fresh(rng)
            p = rng.randrange(2)
            base, path = seg_files(self.part_dir(srv, p))[-1]
            recs = scan(read(path), base)
            self.assertTrue(recs)
            # Now and then inside the header: the file is set aside.
            at = rng.randrange(0, 64) if rng.random() < 0.2 else rng.randrange(64, recs[-1][1] + recs[-1][2] + 1)
            kept = [o for o, pos, size in recs if pos + size <= at]
            self.restart_after(srv, lambda: cut(path, at), kill=seed % 2 == 0)
            ctx = "seed %d: newest segment %s of partition %d cut at %d" % (seed, path, p, at)
            keep = {q: [o for (pp, o) in published if pp == q] for q in range(2)}
            keep[p] = [o for o in keep[p] if o < base] + kept
            self.assertEqual(srv.stats(STREAM)["partitions"][p]["max_offset"], (base + len(kept) - 1), ctx)
            self.check(srv, published, keep, ctx)
            if at < 64:
                self.expect_log(srv, r"%020d\.seg has a bad header" % base, ctx)
                self.assertIn("damage", srv.stats(STREAM)["partitions"][p], ctx)
            elif not any(pos == at for _, pos, _ in recs) and at < recs[-1][1] + recs[-1][2]:
                self.expect_log(srv, r"torn tail of \S+%020d\.seg cut" % base, ctx)
            srv.stop()

    def test_newest_segment_tail_bytes_flipped(self):
        for seed in self.seeds:
            rng = random.Random(seed)
            srv, published = self.fresh(rng)
            p = rng.randrange(2)
            base, path = seg_files(self.part_dir(srv, p))[-1]
            img = read(path)
            recs = scan(img, base)
            tail = recs[-min(len(recs), 4):]  # the last few records
            lo, hi = tail[0][1], tail[-1][1] + tail[-1][2]
            spots = sorted(rng.randrange(lo, hi) for _ in range(rng.randrange(1, 4)))

            def damage():
                for s in spots:
                    flip(path, s, rng)
            self.restart_after(srv, damage, kill=seed % 2 == 1)
            # The model decides what stays valid (a flip in padding is harmless).
            valid = [o for o, _, _ in scan(read(path), base)]
            ctx = "seed %d: bytes %s flipped in newest segment %s" % (seed, spots, path)
            keep = {q: [o for (pp, o) in published if pp == q and (q != p or o < base)] for q in range(2)}
            keep[p] += valid
            self.assertEqual(srv.stats(STREAM)["partitions"][p]["max_offset"], base + len(valid) - 1, ctx)
            self.check(srv, published, keep, ctx)
            if len(valid) < len(recs):
                self.expect_log(srv, r"torn tail of \S+%020d\.seg cut; the next offset is %d" % (base, base + len(valid)),
                                ctx)
            srv.stop()

    def test_partial_header_of_a_new_segment(self):
        for seed in self.seeds:
            rng = random.Random(seed)
            srv, published = self.fresh(rng)
            p = rng.randrange(2)
            base, path = seg_files(self.part_dir(srv, p))[-1]
            nxt = base + len(scan(read(path), base))
            head = read(path)[:64]
            new = os.path.join(self.part_dir(srv, p), "%020d.seg" % nxt)
            n = rng.randrange(0, 64)
            full = rng.random() < 0.5  # a full-size file (a renamed reservation) or a short one

            def damage():
                with open(new, "wb") as f:
                    f.write(struct.pack("<8sIIQ", head[:8], 1, p, nxt)[:n] if n <= 24 else
                            (struct.pack("<8sIIQQ", head[:8], 1, p, nxt, 0) + b"\0" * 32)[:n])
                    if full:
                        f.truncate(SEG_BYTES)
            self.restart_after(srv, damage, kill=True)
            ctx = "seed %d: %s with %d header bytes (%s)" % (seed, new, n, "full size" if full else "short")
            keep = {q: [o for (pp, o) in published if pp == q] for q in range(2)}
            self.check(srv, published, keep, ctx)
            self.expect_log(srv, r"%020d\.seg has a bad header" % nxt, ctx)
            # A second restart finds everything again, the new record too.
            srv.stop()
            srv.start()
            got, refused = self.served(srv, 0)
            self.assertFalse(refused, ctx)
            self.assertEqual(got[max(got)]["data"], "after", ctx)
            srv.stop()

    def test_empty_newest_segment_past_the_end(self):
        """What a kill during a segment roll leaves in `always` mode: the new
        segment exists (its header written) while the last records of the
        older one were still waiting in memory for their sync.  Nothing is
        lost that was ever written, so the partition must go on from the
        older segment's end, with no gap to stop readers."""
        for seed in self.seeds:
            rng = random.Random(seed)
            srv, published = self.fresh(rng, partitions=1, n=100)
            base, path = seg_files(self.part_dir(srv, 0))[-1]
            end = base + len(scan(read(path), base))
            new_base = end + rng.randrange(1, 4)
            new = os.path.join(self.part_dir(srv, 0), "%020d.seg" % new_base)

            def damage():
                head = struct.pack("<8sIIQQ", b"SDSEG\0v1", 1, 0, new_base, 1)
                with open(new, "wb") as f:
                    f.write(head + struct.pack("<I", crc32c(head)) + b"\0" * 28)
                    f.truncate(SEG_BYTES)
            self.restart_after(srv, damage, kill=True)
            ctx = "seed %d: empty segment %d after the end %d" % (seed, new_base, end)
            self.expect_log(srv, r"offsets %d\.\.%d were never written before the empty segment" % (end, new_base - 1),
                            ctx)
            self.assertEqual(srv.stats(STREAM)["partitions"][0]["max_offset"], end - 1, ctx)
            self.check(srv, published, {0: [o for (_, o) in published]}, ctx)
            got, refused = self.served(srv, 0)
            self.assertEqual((sorted(got), refused), (list(range(end + 1)), []), ctx)
            self.assertNotIn("damage", srv.stats(STREAM)["partitions"][0], ctx)
            srv.stop()
            srv.start()
            self.assertEqual(self.served(srv, 0)[0][end]["data"], "after", ctx)
            srv.stop()

    # ---- sealed segments and index files ---------------------------------------------------

    def test_index_cut_or_deleted(self):
        for seed in self.seeds:
            rng = random.Random(seed)
            srv, published = self.fresh(rng)
            victims = []
            for p in range(2):
                for base, path in seg_files(self.part_dir(srv, p))[:-1]:
                    idx = path[:-4] + ".idx"
                    if os.path.exists(idx) and rng.random() < 0.6:
                        victims.append((idx, rng.choice(("delete", rng.randrange(0, os.path.getsize(idx))))))
            self.assertTrue(victims or True)

            def damage():
                for idx, how in victims:
                    if how == "delete":
                        os.unlink(idx)
                    else:
                        cut(idx, how)
            self.restart_after(srv, damage, kill=seed % 2 == 0)
            ctx = "seed %d: indexes damaged: %s" % (seed, victims)
            keep = {q: [o for (pp, o) in published if pp == q] for q in range(2)}
            self.check(srv, published, keep, ctx)  # an index only costs a scan
            for q in range(2):
                self.assertNotIn("damage", srv.stats(STREAM)["partitions"][q], ctx)
            # The indexes are written again and are valid.
            srv.stop()
            for idx, _ in victims:
                self.assertTrue(os.path.exists(idx), "%s: %s not written again" % (ctx, idx))
            srv.start()
            self.check(srv, published, keep, ctx + ", restarted")
            srv.stop()

    def test_sealed_segment_cut_at_random_byte(self):
        for seed in self.seeds:
            rng = random.Random(seed)
            srv, published = self.fresh(rng)
            p = rng.randrange(2)
            segs = seg_files(self.part_dir(srv, p))
            self.assertGreaterEqual(len(segs), 3)
            k = rng.randrange(len(segs) - 1)
            base, path = segs[k]
            recs = scan(read(path), base)
            # Now and then inside the segment header: the whole file is set aside.
            at = rng.randrange(0, 64) if rng.random() < 0.2 else rng.randrange(64, recs[-1][1] + recs[-1][2])
            kept = [o for o, pos, size in recs if pos + size <= at]
            self.restart_after(srv, lambda: cut(path, at), kill=seed % 2 == 1)
            ctx = "seed %d: sealed segment %s (%d of %d) of partition %d cut at %d" % (seed, path, k, len(segs), p, at)
            lost = [o for o, _, _ in recs if o not in kept]
            keep = {q: [o for (pp, o) in published if pp == q and (q != p or o not in lost)] for q in range(2)}
            self.check(srv, published, keep, ctx)
            got, refused = self.served(srv, p)
            if at < 64:
                self.expect_log(srv, r"%020d\.seg has a bad header" % base, ctx)
            if at < 64 and k == 0:
                # The partition now starts after the lost segment: reads
                # below are refused as out of range, and the loss is shown.
                self.assertEqual(srv.stats(STREAM)["partitions"][p]["min_offset"], lost[-1] + 1, ctx)
                st, body = srv.consume(STREAM, partition=p, from_offset=0, expect=None)
                self.assertEqual(st, 416, body)
            else:
                self.assertEqual(refused, [o for o in lost], ctx + ": the lost offsets must be refused")
                self.expect_log(srv, r"offsets %d\.\.%d are missing before segment" % (lost[0], lost[-1]), ctx)
            self.assertIn("damage", srv.stats(STREAM)["partitions"][p], ctx)
            srv.stop()

    def test_set_aside_first_segment_stays_reported(self):
        rng = random.Random(self.seeds[0])
        srv, published = self.fresh(rng, partitions=1, n=120)
        base, path = seg_files(self.part_dir(srv, 0))[0]
        n0 = len(scan(read(path), base))
        self.restart_after(srv, lambda: cut(path, rng.randrange(0, 64)))
        for restart in range(2):
            poll_until(lambda: "start-up check:" in srv.log_since_start(), scaled(20), what="the start-up check")
            part = srv.stats(STREAM)["partitions"][0]
            self.assertEqual(part["min_offset"], n0, part)
            self.assertIn("%020d.seg" % base, part.get("damage", ""), "restart %d: %s" % (restart, part))
            srv.stop()
            srv.start()
        srv.stop()

    # ---- repeated crashes with damage, and the idempotency window ----------------------

    def test_repeated_kills_with_torn_tails_keep_ids_unique(self):
        for seed in self.seeds:
            rng = random.Random(seed)
            srv, published = self.fresh(rng, partitions=1, n=60)
            ids = {e["id"]: e["offset"] for e in published.values()}
            nxt_id = 1000
            for rnd in range(4):
                # More events, some of them again (answered as duplicates).
                evs = []
                for _ in range(rng.randrange(5, 30)):
                    if ids and rng.random() < 0.2:
                        i = rng.choice(sorted(ids))
                    else:
                        nxt_id += 1
                        i = "id-%d" % nxt_id
                    evs.append({"event": "r", "id": i, "data": {"id": i, "pad": "w" * rng.randrange(200)}})
                st, body = srv.post("/stream/%s/publish" % STREAM, evs)
                self.assertEqual(st, 200, body)
                for ev, r in zip(evs, body["results"]):
                    if ev["id"] in ids:
                        self.assertEqual((r.get("duplicate"), r["offset"]), (True, ids[ev["id"]]),
                                         "seed %d round %d: %s published again: %s" % (seed, rnd, ev["id"], r))
                    else:
                        ids[ev["id"]] = r["offset"]
                base, path = seg_files(self.part_dir(srv, 0))[-1]
                recs = scan(read(path), base)
                end = recs[-1][1] + recs[-1][2] if recs else 64
                how = rng.choice(("cut", "flip", "none"))
                at = rng.randrange(64, end + 1)
                if how == "cut":
                    damage = lambda: cut(path, at)  # noqa: E731
                elif how == "flip":
                    damage = lambda: flip(path, min(at, end - 1), rng)  # noqa: E731
                else:
                    damage = lambda: None  # noqa: E731
                self.restart_after(srv, damage, kill=True)
                valid = scan(read(path), base)
                ctx = "seed %d round %d: newest segment %s %s at %d" % (seed, rnd, path, how, at)
                lost = {o for o, _, _ in recs} - {o for o, _, _ in valid}
                ids = {i: o for i, o in ids.items() if o not in lost}
                got, refused = self.served(srv, 0)
                self.assertFalse(refused, ctx)
                self.assertEqual(sorted(got), list(range(len(got))), ctx)
                self.assertEqual({e["id"]: o for o, e in got.items()}, ids, ctx + ": ids and offsets after recovery")
            srv.stop()

    # ---- media damage in old data: reported, never skipped silently ---------------------

    def readers_stop_at(self, srv, p, off, published, ctx):
        """A WebSocket subscriber and a consumer group reading partition p
        from 0 get every record before `off` and are then stopped with an
        error at `off`, never moved past it."""
        first = srv.stats(STREAM)["partitions"][p]["min_offset"]
        ws = WsClient.connect("127.0.0.1", srv.port, "/stream/%s/ws/w?partition=%d&from_offset=%d"
                              % (STREAM, p, first), timeout=scaled(10))
        got = []
        try:
            while True:
                _, payload = ws.recv(timeout=scaled(10))
                got.append(json.loads(payload))
        except Closed as c:
            self.assertEqual(c.code, 1011, ctx)
            self.assertTrue(c.reason, ctx)
        finally:
            ws.close()
        self.assertEqual([e["offset"] for e in got], list(range(first, off)), ctx + ": WebSocket")
        for e in got:
            self.assertEqual(e, published[(p, e["offset"])], ctx)
        g = "g%d" % p
        st, body = srv.post("/stream/%s/group/%s" % (STREAM, g), {"ack": "explicit"})
        self.assertEqual(st, 201, body)
        taken = []
        for _ in range(100):
            st, evs = srv.get("/stream/%s/group/%s/consume?consumer=c&limit=1000" % (STREAM, g))
            if st != 200:
                self.assertEqual((st, evs.get("error")), (500, "corrupt_record"), ctx)
                break
            taken += [(e["partition"], e["offset"]) for e in evs]
            if evs:
                st, _ = srv.post("/stream/%s/group/%s/ack" % (STREAM, g),
                                 {"consumer": "c", "acks": [{"partition": e["partition"], "offset": e["offset"]}
                                                           for e in evs]})
                self.assertEqual(st, 200)
        else:
            self.fail(ctx + ": the group never met the damaged record")
        mine = [o for (q, o) in taken if q == p]
        self.assertEqual(mine, list(range(first, off)), ctx + ": group")

    def test_flipped_byte_in_old_segment_is_reported(self):
        for seed in self.seeds:
            rng = random.Random(seed)
            srv, published = self.fresh(rng)
            p = rng.randrange(2)
            segs = seg_files(self.part_dir(srv, p))
            k = rng.randrange(len(segs) - 1)
            base, path = segs[k]
            recs = scan(read(path), base)
            off, pos, size = rng.choice(recs)
            il = struct.unpack_from("<H", read(path), pos + 24)[0]
            jl = struct.unpack_from("<I", read(path), pos)[0]
            spot = pos + 4 + rng.randrange(28 + il + jl)  # a checked byte: not the length, not padding
            if rng.random() < 0.2:
                spot = rng.randrange(0, 36)  # in the segment header: the whole segment is set aside
                off = base
            drop_index = rng.random() < 0.5
            idx = path[:-4] + ".idx"

            def damage():
                flip(path, spot, rng)
                if drop_index and os.path.exists(idx):
                    os.unlink(idx)
            self.restart_after(srv, damage)
            ctx = "seed %d: byte %d of record %d in sealed segment %s flipped%s" % (
                seed, spot, off, path, " and its index deleted" if drop_index else "")
            # Found without any read: by recovery (a scan, a bad header) or by
            # the check of indexed segments that runs after start-up.
            poll_until(lambda: "start-up check:" in srv.log_since_start(), scaled(20), what="the start-up check")
            if spot >= 64 and not drop_index and off != base + len(recs) - 1:  # else recovery scans it
                self.assertRegex(srv.log_since_start(), r"ERROR.*start-up check: \d+ records checked in \d+ ms, [1-9]",
                                 ctx)
                self.assertRegex(srv.log_since_start(), r"ERROR stream %s partition %d: offset %d: checksum mismatch"
                                 % (STREAM, p, off), ctx)
            self.assertIn("damage", srv.stats(STREAM)["partitions"][p], ctx + ": before any read")
            _, _, metrics = srv.request_raw("GET", "/metrics")
            m = re.search(r'^streamd_partition_damage_found\{stream="%s",partition="%d"\} (\d+)$' % (STREAM, p),
                          metrics.decode(), re.M)
            self.assertTrue(m and int(m.group(1)) >= 1, ctx + ": /metrics must count the damage")
            keep = {q: [o for (pp, o) in published if pp == q and (q != p or o < off or o >= base + len(recs))]
                    for q in range(2)}
            self.check(srv, published, keep, ctx)
            got, refused = self.served(srv, p)
            self.assertNotIn(off, got, ctx)
            if spot < 64 and k == 0:
                self.assertEqual(srv.stats(STREAM)["partitions"][p]["min_offset"], base + len(recs), ctx)
            else:
                self.assertIn(off, refused, ctx + ": the damaged record must be refused, not skipped")
            self.assertRegex(srv.log_since_start(), r"(?i)error.*%s.*partition %d" % (STREAM, p), ctx)
            dmg = srv.stats(STREAM)["partitions"][p].get("damage")
            self.assertIsInstance(dmg, str, ctx + ": stats must show the damage: %s" % srv.stats(STREAM))
            self.assertIn("%020d.seg" % base if spot < 64 else str(off), dmg, ctx)
            if not (spot < 64 and k == 0):
                self.readers_stop_at(srv, p, off, published, ctx)
            # The damage stays reported after another restart, before any read.
            srv.stop()
            srv.start()
            poll_until(lambda: "start-up check:" in srv.log_since_start(), scaled(20), what="the start-up check")
            self.assertIn("damage", srv.stats(STREAM)["partitions"][p], ctx + ", restarted")
            srv.stop()


if __name__ == "__main__":
    unittest.main()
