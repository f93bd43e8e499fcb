#!/usr/bin/env python3
"""Small helpers for bench/run.sh (Python standard library only).

  benchutil.py freeport
      print a free TCP port on 127.0.0.1
  benchutil.py http METHOD URL [BODY]
      one request; print "<status> <body>" ("000 <error>" if none); exit 0
  benchutil.py preload-streamd HOST PORT STREAM EVENTS BATCH DATA_BYTES [CONNS]
      create STREAM (1 partition, no retention) and append EVENTS events with
      batch publishes of BATCH events each over CONNS keep-alive connections
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


def preload_streamd(host, port, stream, events, batch, data_bytes, conns=2):
    port, events, batch, data_bytes, conns = (
        int(port), int(events), int(batch), int(data_bytes), int(conns))
    c = http.client.HTTPConnection(host, port, timeout=60)
    c.request("POST", f"/stream/{stream}",
              body=json.dumps({"partitions": 1, "retention_hours": 0}),
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
    elif cmd == "redis-resp":
        redis_resp(*args)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    try:
        main(sys.argv)
    except (OSError, http.client.HTTPException, ValueError) as e:
        sys.exit(f"benchutil {' '.join(sys.argv[1:3])}: {type(e).__name__}: {e}")
