#!/usr/bin/env python3
"""Small helpers for bench/run.sh (Python standard library only).

  benchutil.py freeport
      print a free TCP port on 127.0.0.1
  benchutil.py http METHOD URL [BODY]
      one request; print "<status> <body>" ("000 <error>" if none); exit 0
  benchutil.py preload-streamd HOST PORT STREAM EVENTS BATCH DATA_BYTES [CONNS [PARTITIONS]]
      create STREAM (PARTITIONS partitions, default 1, no retention) and append
      EVENTS events (round-robin over the partitions) with batch publishes of
      BATCH events each over CONNS keep-alive connections; the stream must
      hold EVENTS events afterwards (it must be new or empty)
  benchutil.py group-check HOST PORT STREAM GROUP EVENTS
      GET the group's info; print "ok" if nothing is pending, no partition
      lags and the committed offsets add up to EVENTS, else what is wrong
  benchutil.py hold-conns HOST PORT CONNS HOLD_SECONDS [PARALLEL]
      open CONNS keep-alive connections (at most PARALLEL connecting at
      once), send one GET /health on each and read its answer, print
      "READY ok=N failed=N seconds=S", keep them open and idle for
      HOLD_SECONDS, then print "DONE open=N closed=N" (closed: by the
      server meanwhile) and close them; raises its RLIMIT_NOFILE to the hard
      limit
  benchutil.py redis-resp STREAM EVENTS DATA_BYTES
      write to stdout, for `redis-cli --pipe`, DEL STREAM and then EVENTS
      XADD STREAM <i>-0 data <payload> commands, i = 1..EVENTS
"""
import http.client
import json
import socket
import sys
import threading
import time


def payload(n):
    return ("0123456789" * (n // 10 + 1))[:n]


def freeport():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    print(port)


def http_once(method, url, body=None):
    assert url.startswith("http://")
    hostport, _, path = url[len("http://"):].partition("/")
    host, _, port = hostport.partition(":")
    c = http.client.HTTPConnection(host, int(port or 80), timeout=15)
    headers = {"Content-Type": "application/json"} if body is not None else {}
    try:
        c.request(method, "/" + path, body=body, headers=headers)
        r = c.getresponse()
        print(r.status, r.read().decode("utf-8", "replace"))
    except (OSError, http.client.HTTPException) as e:
        print("000", f"{method} {url}: {type(e).__name__}: {e}")


def preload_streamd(host, port, stream, events, batch, data_bytes, conns=2, partitions=1):
    port, events, batch, data_bytes, conns, partitions = (
        int(port), int(events), int(batch), int(data_bytes), int(conns), int(partitions))
    c = http.client.HTTPConnection(host, port, timeout=60)
    c.request("POST", f"/stream/{stream}",
              body=json.dumps({"partitions": partitions, "retention_hours": 0}),
              headers={"Content-Type": "application/json"})
    r = c.getresponse()
    r.read()
    if r.status not in (200, 201, 409):
        sys.exit(f"create stream {stream}: HTTP {r.status}")
    c.close()

    data = payload(data_bytes)
    full = json.dumps([{"event": "bench", "data": data}] * batch).encode()
    nreq, rest = divmod(events, batch)
    jobs = [full] * nreq
    if rest:
        jobs.append(json.dumps([{"event": "bench", "data": data}] * rest).encode())
    lock = threading.Lock()
    errors = []

    def worker():
        try:
            work()
        except (OSError, http.client.HTTPException) as e:
            with lock:
                errors.append(f"{type(e).__name__}: {e}")

    def work():
        conn = http.client.HTTPConnection(host, port, timeout=120)
        while True:
            with lock:
                if not jobs or errors:
                    return
                body = jobs.pop()
            conn.request("POST", f"/stream/{stream}/publish", body=body,
                         headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            text = resp.read()
            if resp.status != 200:
                with lock:
                    errors.append(f"HTTP {resp.status}: {text[:300]!r}")
                return

    t0 = time.monotonic()
    ts = [threading.Thread(target=worker) for _ in range(conns)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errors:
        sys.exit("preload failed: " + errors[0])
    secs = time.monotonic() - t0

    c = http.client.HTTPConnection(host, port, timeout=60)
    c.request("GET", f"/stream/{stream}/info")
    r = c.getresponse()
    info = json.loads(r.read() or b"{}")
    count = info.get("message_count")
    if count != events:
        sys.exit(f"preload: {stream} has message_count={count}, expected {events}")
    print(f"preloaded {events} events in {secs:.1f}s ({events / secs:.0f} events/s)")


def group_check(host, port, stream, group, events):
    c = http.client.HTTPConnection(host, int(port), timeout=60)
    c.request("GET", f"/stream/{stream}/group/{group}/info")
    r = c.getresponse()
    text = r.read()
    if r.status != 200:
        print(f"info: HTTP {r.status} {text[:200]!r}")
        return
    info = json.loads(text)
    parts = info.get("partitions") or []
    committed = sum(p.get("committed_offset", 0) for p in parts)
    lag = sum(p.get("lag", 0) for p in parts)
    problems = []
    if info.get("pending_messages") != 0:
        problems.append(f"pending_messages={info.get('pending_messages')}")
    if info.get("dead_messages") != 0:
        problems.append(f"dead_messages={info.get('dead_messages')}")
    if lag != 0:
        problems.append(f"lag={lag}")
    if committed != int(events):
        problems.append(f"committed offsets add up to {committed}, expected {events}")
    print("ok" if not problems else "; ".join(problems))


def hold_conns(host, port, conns, hold_secs, parallel=256):
    import errno
    import resource
    import selectors
    port, conns, hold_secs, parallel = int(port), int(conns), float(hold_secs), int(parallel)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    if soft != resource.RLIM_INFINITY and soft < conns + 64:
        sys.exit(f"hold-conns: RLIMIT_NOFILE {soft} < {conns + 64}: raise ulimit -Hn")
    req = f"GET /health HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
    sel = selectors.DefaultSelector()
    idle, failed, errors = [], 0, {}
    todo, inflight = conns, 0
    t0 = time.monotonic()

    def fail(s, why):
        nonlocal failed, inflight
        failed += 1
        inflight -= 1
        errors[why] = errors.get(why, 0) + 1
        sel.unregister(s)
        s.close()

    while (todo or inflight) and time.monotonic() - t0 < 120:
        while todo and inflight < parallel:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            rc = s.connect_ex((host, port))
            todo -= 1
            inflight += 1
            sel.register(s, selectors.EVENT_WRITE, [b""])
            if rc not in (0, errno.EINPROGRESS):
                fail(s, f"connect: {errno.errorcode.get(rc, rc)}")
        for key, ev in sel.select(timeout=1):
            s, buf = key.fileobj, key.data
            if ev & selectors.EVENT_WRITE:
                err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    fail(s, f"connect: {errno.errorcode.get(err, err)}")
                    continue
                try:
                    s.send(req)  # a few dozen bytes: fits in the empty send buffer
                except OSError as e:
                    fail(s, f"send: {e.strerror}")
                    continue
                sel.modify(s, selectors.EVENT_READ, buf)
                continue
            try:
                chunk = s.recv(65536)
            except OSError as e:
                fail(s, f"recv: {e.strerror}")
                continue
            if not chunk:
                fail(s, "closed before the answer")
                continue
            buf[0] += chunk
            head, sep, body = buf[0].partition(b"\r\n\r\n")
            if not sep:
                continue
            clen = 0
            for line in head.split(b"\r\n")[1:]:
                k, _, v = line.partition(b":")
                if k.strip().lower() == b"content-length":
                    clen = int(v)
            if len(body) < clen:
                continue
            if not head.startswith(b"HTTP/1.1 200"):
                fail(s, "answer " + head.split(b"\r\n")[0].decode("latin-1"))
                continue
            sel.unregister(s)
            inflight -= 1
            idle.append(s)
    failed += todo + inflight
    if todo or inflight:
        errors["not ready in 120s"] = todo + inflight
    secs = time.monotonic() - t0
    why = ",".join(f"{k}:{v}" for k, v in errors.items()).replace(" ", "_")
    print(f"READY ok={len(idle)} failed={failed} seconds={secs:.2f}" + (f" errors={why}" if why else ""), flush=True)

    for s in idle:
        sel.register(s, selectors.EVENT_READ)
    closed, unexpected, end = 0, 0, time.monotonic() + hold_secs
    while time.monotonic() < end:
        for key, _ in sel.select(timeout=max(0.0, end - time.monotonic())):
            s = key.fileobj
            try:
                chunk = s.recv(65536)
            except OSError:
                chunk = b""
            if chunk:
                unexpected += 1  # an idle connection got bytes: counted, kept
                continue
            closed += 1
            sel.unregister(s)
    print(f"DONE open={len(idle) - closed} closed={closed} unexpected={unexpected}", flush=True)
    for s in idle:
        s.close()


def redis_resp(stream, events, data_bytes):
    events, data_bytes = int(events), int(data_bytes)
    out = sys.stdout.buffer

    def cmd(*args):
        parts = [b"*%d\r\n" % len(args)]
        for a in args:
            a = a if isinstance(a, bytes) else str(a).encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(a), a))
        return b"".join(parts)

    data = payload(data_bytes).encode()
    out.write(cmd(b"DEL", stream))
    chunk = []
    for i in range(1, events + 1):
        chunk.append(cmd(b"XADD", stream, b"%d-0" % i, b"data", data))
        if len(chunk) == 10000:
            out.write(b"".join(chunk))
            chunk = []
    out.write(b"".join(chunk))
    out.flush()


def main(argv):
    if len(argv) < 2:
        sys.exit(__doc__)
    cmd, args = argv[1], argv[2:]
    if cmd == "freeport":
        freeport()
    elif cmd == "http":
        http_once(*args)
    elif cmd == "preload-streamd":
        preload_streamd(*args)
    elif cmd == "group-check":
        group_check(*args)
    elif cmd == "hold-conns":
        hold_conns(*args)
    elif cmd == "redis-resp":
        redis_resp(*args)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    try:
        main(sys.argv)
    except (OSError, http.client.HTTPException, ValueError) as e:
        sys.exit(f"benchutil {' '.join(sys.argv[1:3])}: {type(e).__name__}: {e}")
