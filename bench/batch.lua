-- wrk script: batch publish, BENCH_BATCH events per POST (a JSON array), on
-- every keep-alive connection.
--   wrk -t2 -c50 -d5s -s bench/batch.lua http://127.0.0.1:PORT
-- Environment:
--   BENCH_PATH        request path            (default /stream/batch/publish)
--   BENCH_BATCH       events per request      (default 100)
--   BENCH_DATA_BYTES  size of each "data"     (default 100)
-- The request is static (no request() function), so wrk builds it once and
-- the client costs as little as possible. The figure is in events:
-- ops = requests x BENCH_BATCH, rate = events/s.

local path = os.getenv("BENCH_PATH") or "/stream/batch/publish"
local batch = tonumber(os.getenv("BENCH_BATCH") or "100")
local size = tonumber(os.getenv("BENCH_DATA_BYTES") or "100")
local data = string.rep("0123456789", math.ceil(size / 10)):sub(1, size)

local one = '{"event":"bench","data":"' .. data .. '"}'
local events = {}
for i = 1, batch do events[i] = one end

wrk.method = "POST"
wrk.path = path
wrk.headers["Content-Type"] = "application/json"
wrk.body = "[" .. table.concat(events, ",") .. "]"

-- One machine-readable line for bench/run.sh. Status errors are responses
-- >= 400; socket errors are connect/read/write/timeout.
function done(summary, latency, requests)
  local e = summary.errors
  local secs = summary.duration / 1e6
  io.write(string.format(
    "BENCH_RESULT ops=%d seconds=%.6f rate=%.2f requests=%d req_rate=%.2f batch=%d status_errors=%d socket_errors=%d p50_us=%d p99_us=%d\n",
    summary.requests * batch, secs, summary.requests * batch / secs,
    summary.requests, summary.requests / secs, batch,
    e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
