#!/usr/bin/env python3
"""Soak test of streamd (Python standard library only; run by bench/soak.sh).

Starts the server on a free port with a temporary data directory on disk,
drives a mixed load for --minutes, samples the server once a second and
decides whether anything grows without bound.  See bench/README.md.

Load (all at once, for the whole run):
  - publishers: keep-alive connections publishing single events and
    batches of 10 (every 7th with an idempotency id) to a 4-partition stream
    and a 1-partition stream, both with retention so the disk stays bounded;
  - readers: consume by offset, following the tail with long polls;
  - WebSocket subscribers on both streams, one of which reconnects every
    few seconds (opening and closing connections is where leaks hide);
  - a consumer group (shared, explicit acks) with two consumers that fetch
    and ack everything;
  - churn: a short-lived stream is created, published to, subscribed to and
    deleted every 2 s, and a fresh connection is used for a request.

Samples (one CSV row a second): RSS (VmRSS), open descriptors
(/proc/PID/fd), threads, and the latency of a probe publish and a probe
read made on their own connection once a second, plus the load's own
publish latency (median and p99 of the second) and event rates.

Verdict, per metric (RSS, fds, probe publish latency): it GROWS when both
  (a) the median of the last minute exceeds the median of the second
      minute (the first is warm-up) by more than the tolerance, and
  (b) a least-squares line through every sample after the first minute
      rises by more than the tolerance over that span.
A lasting step up larger than the tolerance counts as growth (a short run
cannot tell it from a slow leak); short spikes and noise fail one of the
two at most.  Tolerances: RSS 20 % + 8 MiB, fds 16, latency 100 % + 5 ms.
For runs under 3 minutes, "minutes" are thirds of the run.
Exit status: 0 all bounded, 1 something grows, 2 the run itself failed
(server died, errors above 1 % of requests, a subscriber lost events).
"""

import argparse
import csv
import http.client
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "integration"))
from wsclient import Closed as WSClosed, WsClient  # noqa: E402

HOST = "127.0.0.1"


def free_port():
    s = socket.socket()
    s.bind((HOST, 0))
    p = s.getsockname()[1]
    s.close()
    return p


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.pub_lat = []
        self.counts = {}
        self.errors = []

    def count(self, k, n=1):
        with self.lock:
            self.counts[k] = self.counts.get(k, 0) + n

    def error(self, what):
        with self.lock:
            self.counts["errors"] = self.counts.get("errors", 0) + 1
            if len(self.errors) < 20:
                self.errors.append(what)

    def take(self):
        with self.lock:
            lat, self.pub_lat = self.pub_lat, []
            c, self.counts = self.counts, {}
        return lat, c


class Soak:
    def __init__(self, args):
        self.a = args
        self.stop = threading.Event()
        self.st = Stats()
        self.totals = {}
        self.ws_lost = []

    # ---- server ------------------------------------------------------------

    def start_server(self):
        self.tmp = tempfile.mkdtemp(prefix="streamd-soak-", dir=self.a.tmpdir)
        self.port = free_port()
        self.log = open(os.path.join(self.tmp, "server.log"), "wb")
        cmd = [self.a.bin, "--host", HOST, "--port", str(self.port), "--data-dir", os.path.join(self.tmp, "data"),
               "--segment-bytes", str(1 << 20), "--retention-check-ms", "1000"]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=self.log, stdin=subprocess.DEVNULL)
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                if self.req("GET", "/health")[0] == 200:
                    return
            except OSError:
                time.sleep(0.05)
        raise SystemExit("streamd did not start; log in %s" % self.tmp)

    def req(self, method, path, body=None, conn=None, timeout=30):
        own = conn is None
        c = conn or http.client.HTTPConnection(HOST, self.port, timeout=timeout)
        try:
            data = json.dumps(body) if body is not None else None
            c.request(method, path, body=data, headers={"Content-Type": "application/json"} if data else {})
            r = c.getresponse()
            raw = r.read()
            return r.status, (json.loads(raw) if raw else None)
        finally:
            if own:
                c.close()

    # ---- load ---------------------------------------------------------------

    def loop(self, fn, *args):
        """Runs fn until the end, reconnecting after socket errors."""
        while not self.stop.is_set():
            try:
                fn(*args)
            except (OSError, http.client.HTTPException, ValueError, WSClosed) as e:
                if self.stop.is_set():
                    return
                self.st.error("%s: %r" % (fn.__name__, e))
                time.sleep(0.2)

    def publisher(self, n):
        conn = http.client.HTTPConnection(HOST, self.port, timeout=30)
        seq = 0
        try:
            while not self.stop.is_set():
                seq += 1
                stream = "soak-a" if seq % 4 else "soak-b"
                ev = {"event": "p%d" % n, "data": {"seq": seq, "pad": "x" * random.randint(50, 400)}}
                if seq % 5 == 0:
                    body = {"events": [ev] * 10}
                else:
                    body = ev
                    if seq % 7 == 0:
                        ev["id"] = "p%d-%d" % (n, seq)  # the duplicate window is exercised too
                t0 = time.monotonic()
                st, resp = self.req("POST", "/stream/%s/publish" % stream, body, conn=conn)
                dt = (time.monotonic() - t0) * 1000
                if st != 200:
                    self.st.error("publish %d %r" % (st, resp))
                    continue
                with self.st.lock:
                    self.st.pub_lat.append(dt)
                self.st.count("published", 10 if seq % 5 == 0 else 1)
                if self.a.rate:
                    time.sleep(1.0 / self.a.rate)
        finally:
            conn.close()

    def reader(self, n):
        conn = http.client.HTTPConnection(HOST, self.port, timeout=30)
        part = n % 4
        st, _ = self.req("GET", "/stream/soak-a/info", conn=conn)
        nxt = -1
        try:
            while not self.stop.is_set():
                q = "partition=%d&limit=200&wait_ms=500" % part + ("&from_offset=%d" % nxt)
                st, page = self.req("GET", "/stream/soak-a/consume/r%d?%s" % (n, q), conn=conn)
                if st == 416:  # fell behind retention: start at the oldest
                    nxt = page.get("min_offset", 0)
                    continue
                if st != 200:
                    self.st.error("consume %d %r" % (st, page))
                    continue
                if page:
                    if nxt >= 0 and page[0]["offset"] != nxt:
                        self.st.error("reader gap: wanted %d got %d" % (nxt, page[0]["offset"]))
                    nxt = page[-1]["offset"] + 1
                    self.st.count("read", len(page))
        finally:
            conn.close()

    def subscriber(self, n, stream, reconnect_s):
        ws = WsClient.connect(HOST, self.port, "/stream/%s/ws/w%d" % (stream, n))
        last = {}
        t_end = time.monotonic() + reconnect_s if reconnect_s else None
        try:
            while not self.stop.is_set():
                if t_end and time.monotonic() > t_end:
                    self.st.count("ws_reconnects")
                    return
                m = ws.recv_text(timeout=0.5)
                if m is None:
                    continue
                ev = json.loads(m)
                p, o = ev["partition"], ev["offset"]
                if p in last and o != last[p] + 1:
                    self.ws_lost.append((stream, n, p, last[p], o))
                last[p] = o
                self.st.count("ws_events")
        finally:
            ws.close()

    def group_consumer(self, n):
        conn = http.client.HTTPConnection(HOST, self.port, timeout=30)
        try:
            while not self.stop.is_set():
                st, evs = self.req("GET", "/stream/soak-a/group/g/consume?consumer=c%d&limit=100&wait_ms=500" % n,
                                   conn=conn)
                if st != 200:
                    self.st.error("group consume %d %r" % (st, evs))
                    continue
                if not evs:
                    continue
                acks = [{"partition": e["partition"], "offset": e["offset"]} for e in evs]
                st, resp = self.req("POST", "/stream/soak-a/group/g/ack", {"consumer": "c%d" % n, "acks": acks},
                                    conn=conn)
                if st != 200:
                    self.st.error("ack %d %r" % (st, resp))
                    continue
                self.st.count("acked", resp.get("acked", 0))
        finally:
            conn.close()

    def churn(self):
        i = 0
        while not self.stop.is_set():
            i += 1
            name = "churn-%d" % i
            st, _ = self.req("POST", "/stream/" + name, {"partitions": 2})
            if st != 201:
                self.st.error("churn create %d" % st)
            ws = WsClient.connect(HOST, self.port, "/stream/%s/ws/x?from_offset=0" % name)
            for k in range(20):
                self.req("POST", "/stream/%s/publish" % name, {"event": "c", "data": k})
            got = 0
            while got < 20:
                if ws.recv_text(timeout=5) is None:
                    self.st.error("churn subscriber got %d of 20" % got)
                    break
                got += 1
            st, _ = self.req("DELETE", "/stream/" + name)
            if st != 200:
                self.st.error("churn delete %d" % st)
            try:
                while ws.recv_text(timeout=5) is not None:
                    pass
            except WSClosed as e:
                if e.code != 4404:
                    self.st.error("churn close code %r" % e.code)
            except OSError:
                pass
            ws.close()
            self.st.count("churned")
            self.stop.wait(2)

    # ---- sampling --------------------------------------------------------------

    def proc_sample(self):
        pid = self.proc.pid
        rss = threads = 0
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
                elif line.startswith("Threads:"):
                    threads = int(line.split()[1])
        fds = len(os.listdir("/proc/%d/fd" % pid))
        return rss, fds, threads

    def probe(self, conn):
        t0 = time.monotonic()
        st, _ = self.req("POST", "/stream/soak-probe/publish", {"event": "probe", "data": "x" * 100}, conn=conn)
        t1 = time.monotonic()
        st2, _ = self.req("GET", "/stream/soak-probe/consume/probe?from_offset=-10&limit=10", conn=conn)
        t2 = time.monotonic()
        if st != 200 or st2 != 200:
            self.st.error("probe %d %d" % (st, st2))
        return (t1 - t0) * 1000, (t2 - t1) * 1000

    def run(self):
        a = self.a
        self.start_server()
        for name, parts in (("soak-a", 4), ("soak-b", 1), ("soak-probe", 1)):
            self.req("POST", "/stream/" + name, {"partitions": parts, "retention_bytes": 4 << 20})
        self.req("POST", "/stream/soak-a/group/g", {"ack": "explicit", "ack_timeout_ms": 10000})
        threads = []

        def spawn(fn, *args):
            t = threading.Thread(target=self.loop, args=(fn,) + args, daemon=True)
            t.start()
            threads.append(t)

        for i in range(a.publishers):
            spawn(self.publisher, i)
        for i in range(a.readers):
            spawn(self.reader, i)
        for i in range(a.subscribers):
            spawn(self.subscriber, i, "soak-a" if i % 2 == 0 else "soak-b", 5 if i == 0 else 0)
        for i in range(2):
            spawn(self.group_consumer, i)
        spawn(self.churn)

        rows = []
        probe_conn = http.client.HTTPConnection(HOST, self.port, timeout=30)
        t_start = time.monotonic()
        end = t_start + a.minutes * 60
        out = open(a.csv, "w", newline="")
        w = csv.writer(out)
        cols = ["t_s", "rss_kb", "fds", "threads", "probe_publish_ms", "probe_read_ms", "load_publish_p50_ms",
                "load_publish_p99_ms", "published_per_s", "read_per_s", "ws_events_per_s", "acked_per_s", "errors"]
        w.writerow(cols)
        failed = None
        next_t = t_start + 1
        while time.monotonic() < end:
            time.sleep(max(0.0, next_t - time.monotonic()))
            next_t += 1
            if self.proc.poll() is not None:
                failed = "streamd exited with %d during the run" % self.proc.returncode
                break
            try:
                rss, fds, nthreads = self.proc_sample()
                pp, pr = self.probe(probe_conn)
            except (OSError, http.client.HTTPException) as e:
                failed = "sampling failed: %r" % e
                break
            lat, c = self.st.take()
            for k, v in c.items():
                self.totals[k] = self.totals.get(k, 0) + v
            lat.sort()
            p50 = lat[len(lat) // 2] if lat else 0.0
            p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else 0.0
            row = [round(time.monotonic() - t_start, 1), rss, fds, nthreads, round(pp, 2), round(pr, 2), round(p50, 2),
                   round(p99, 2), c.get("published", 0), c.get("read", 0), c.get("ws_events", 0), c.get("acked", 0),
                   c.get("errors", 0)]
            w.writerow(row)
            out.flush()
            rows.append(dict(zip(cols, row)))
            if a.verbose and len(rows) % 10 == 0:
                print("t=%4ds rss=%6d kB fds=%4d pub=%6.2f ms p99=%7.2f ms rate=%d/s" %
                      (row[0], rss, fds, pp, p99, c.get("published", 0)), flush=True)
        self.stop.set()
        probe_conn.close()
        for t in threads:
            t.join(5)
        out.close()
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = "killed after 30 s"
        self.log.close()
        return rows, failed, code


# ---- analysis -------------------------------------------------------------------

def slope(xs, ys):
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    return 0.0 if sxx == 0 else sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx


METRICS = [
    # column, label, unit, tolerance(base) -> allowed rise
    ("rss_kb", "RSS", "kB", lambda b: 0.20 * b + 8192),
    ("fds", "open fds", "", lambda b: 16),
    ("probe_publish_ms", "probe publish latency", "ms", lambda b: 1.0 * b + 5),
    ("probe_read_ms", "probe read latency", "ms", lambda b: 1.0 * b + 5),
    ("load_publish_p50_ms", "load publish p50", "ms", lambda b: 1.0 * b + 5),
]
VERDICT_METRICS = ("rss_kb", "fds", "probe_publish_ms")


def analyse(rows, minutes):
    span = 60 if minutes >= 3 else max(1, len(rows) // 3)
    first = rows[:span]
    second = rows[span:2 * span]
    last = rows[-span:]
    rest = rows[span:]
    report, growing = [], []
    for col, label, unit, tol in METRICS:
        allv = [r[col] for r in rows]
        f = statistics.median(r[col] for r in first)
        s2 = statistics.median(r[col] for r in second)
        l = statistics.median(r[col] for r in last)
        xs = [r["t_s"] for r in rest]
        ys = [r[col] for r in rest]
        k = slope(xs, ys) if len(rest) > 1 else 0.0
        rise = k * (xs[-1] - xs[0]) if len(rest) > 1 else 0.0
        allowed = tol(s2)
        grows = (l - s2 > allowed) and (rise > allowed)
        if grows and col in VERDICT_METRICS:
            growing.append(label)
        report.append("%-22s min %9.2f  median %9.2f  max %9.2f %-3s | first %9.2f  second %9.2f  last %9.2f"
                      " | fitted rise %+9.2f (allowed %.2f, slope %+.4f/s)%s"
                      % (label, min(allv), statistics.median(allv), max(allv), unit, f, s2, l, rise, allowed, k,
                         "  GROWS" if grows else ""))
    return report, growing


def main():
    root = os.path.normpath(os.path.join(HERE, ".."))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--bin", default=os.environ.get("STREAMD_BIN", os.path.join(root, "build", "streamd")))
    ap.add_argument("--csv", default=None, help="output CSV (default soak-<time>.csv in the current directory)")
    ap.add_argument("--publishers", type=int, default=4)
    ap.add_argument("--readers", type=int, default=2)
    ap.add_argument("--subscribers", type=int, default=4)
    ap.add_argument("--rate", type=float, default=0, help="per publisher, requests/s (0 = as fast as it goes)")
    ap.add_argument("--tmpdir", default=os.environ.get("TMPDIR", "/var/tmp"), help="where the data directory goes")
    ap.add_argument("--keep", action="store_true", help="keep the data directory and server log")
    ap.add_argument("-v", "--verbose", action="store_true")
    a = ap.parse_args()
    if not os.path.exists(a.bin):
        raise SystemExit("%s does not exist: run scripts/build.sh or pass --bin" % a.bin)
    if a.csv is None:
        a.csv = "soak-%s.csv" % time.strftime("%Y%m%d-%H%M%S")
    s = Soak(a)
    try:
        rows, failed, code = s.run()
    finally:
        if s.__dict__.get("proc") and s.proc.poll() is None:
            s.proc.kill()
    print("streamd soak: %.1f min, %d samples, binary %s, csv %s" % (a.minutes, len(rows), a.bin, a.csv))
    print("totals: " + ", ".join("%s=%d" % kv for kv in sorted(s.totals.items())))
    status = 0
    if len(rows) >= 6:
        report, growing = analyse(rows, a.minutes)
        print("\n".join(report))
        if growing:
            print("VERDICT: GROWS without bound: " + ", ".join(growing))
            status = 1
        else:
            print("VERDICT: bounded (RSS, fds and probe latency)")
    else:
        failed = failed or "too few samples"
    requests = s.totals.get("published", 0) + s.totals.get("read", 0) + 1
    if s.totals.get("errors", 0) > 0.01 * requests:
        failed = failed or "%d errors" % s.totals["errors"]
    if s.st.errors:
        print("first errors: %s" % s.st.errors[:5])
    if s.ws_lost:
        failed = failed or "websocket subscribers saw gaps: %r" % s.ws_lost[:5]
    if code != 0:
        failed = failed or "streamd exited with %r after SIGTERM" % code
    if failed:
        print("RUN FAILED: %s (server log: %s)" % (failed, os.path.join(s.tmp, "server.log")))
        a.keep = True
        status = 2
    if not a.keep:
        shutil.rmtree(s.tmp, ignore_errors=True)
    else:
        print("kept %s" % s.tmp)
    sys.exit(status)


if __name__ == "__main__":
    main()
