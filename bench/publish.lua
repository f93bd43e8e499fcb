-- wrk script: one event per POST, on every keep-alive connection.
--   wrk -t2 -c50 -d5s -s bench/publish.lua http://127.0.0.1:PORT
-- Environment:
--   BENCH_PATH        request path       (default /stream/bench/publish)
--   BENCH_DATA_BYTES  size of "data"     (default 100)
-- The request is static (no request() function), so wrk builds it once and
-- the client costs as little as possible. The same request goes to nginx,
-- which answers it with a fixed 200.

local path = os.getenv("BENCH_PATH") or "/stream/bench/publish"
local size = tonumber(os.getenv("BENCH_DATA_BYTES") or "100")
local data = string.rep("0123456789", math.ceil(size / 10)):sub(1, size)

wrk.method = "POST"
wrk.path = path
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"event":"bench","data":"' .. data .. '"}'

-- One machine-readable line for bench/run.sh. Status errors are responses
-- >= 400; socket errors are connect/read/write/timeout.
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH_RESULT ops=%d seconds=%.6f rate=%.2f status_errors=%d socket_errors=%d p50_us=%d p99_us=%d\n",
    summary.requests, summary.duration / 1e6,
    summary.requests / (summary.duration / 1e6),
    e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
