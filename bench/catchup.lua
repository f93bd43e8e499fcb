-- wrk script: read a whole partition from offset 0, page by page, on one
-- keep-alive connection, each request starting where the last page ended.
--   wrk -t1 -c1 -d120s -s bench/catchup.lua http://127.0.0.1:PORT
-- Environment:
--   CATCHUP_PATH    consume path  (default /stream/catchup/consume/bench-reader)
--   CATCHUP_LIMIT   page size     (default 1000)
--   CATCHUP_EVENTS  events to read; 0 = until an empty page (default 0)
--
-- Timing is taken here with clock_gettime (LuaJIT FFI), from the first
-- request to the last response, because wrk itself always sleeps for the
-- whole -d. Once the end is reached the script stops its thread and sends
-- SIGINT to wrk, which wakes wrk's main thread so that it exits at once.
-- Use -t1 -c1: the offset walk is sequential by nature.

local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec_t;
int clock_gettime(int clk_id, bench_timespec_t *tp);
int kill(int pid, int sig);
int getpid(void);
]]
local ts = ffi.new("bench_timespec_t")
local function now()
  ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
end

local base = os.getenv("CATCHUP_PATH") or "/stream/catchup/consume/bench-reader"
local limit = tonumber(os.getenv("CATCHUP_LIMIT") or "1000")
local expected = tonumber(os.getenv("CATCHUP_EVENTS") or "0")

-- Globals: read back from the main state in done() through thread:get().
offset, events, pages, bad, finished = 0, 0, 0, 0, 0
t0, t1 = 0, 0
bad_status, bad_body = 0, ""

function request()
  -- wrk calls request() once before the run to validate it: t0 is reset on
  -- every call until the first response arrives.
  if pages == 0 then t0 = now() end
  return wrk.format("GET", base .. "?from_offset=" .. offset .. "&limit=" .. limit)
end

local function finish()
  finished = 1
  wrk.thread:stop()
  ffi.C.kill(ffi.C.getpid(), 2) -- SIGINT: wrk's handler ends its sleep()
end

function response(status, headers, body)
  t1 = now()
  pages = pages + 1
  if status ~= 200 then
    bad, bad_status, bad_body = bad + 1, status, body:sub(1, 300)
    return finish()
  end
  -- The last "offset": in the page is the last event's offset. Look at the
  -- tail first (cheap), then at the whole body.
  local last = body:sub(-4096):match('.*"offset"%s*:%s*(%d+)')
                 or body:match('.*"offset"%s*:%s*(%d+)')
  if not last then
    if body:match("^%s*%[%s*%]%s*$") then return finish() end -- end reached
    bad, bad_status, bad_body = bad + 1, status, body:sub(1, 300)
    return finish()
  end
  last = tonumber(last)
  if last < offset then -- would loop forever
    bad, bad_status, bad_body = bad + 1, status, body:sub(1, 300)
    return finish()
  end
  events = events + (last - offset + 1) -- offsets are dense in a partition
  offset = last + 1
  if expected > 0 and offset >= expected then return finish() end
end

threads = {}
function setup(thread) table.insert(threads, thread) end

function done(summary, latency, requests)
  local t = threads[1]
  local ev, a, b = t:get("events"), t:get("t0"), t:get("t1")
  local secs = (b > a) and (b - a) or (summary.duration / 1e6)
  io.write(string.format(
    "BENCH_RESULT ops=%d seconds=%.6f rate=%.2f pages=%d finished=%d status_errors=%d socket_errors=%d\n",
    ev, secs, secs > 0 and ev / secs or 0, t:get("pages"), t:get("finished"),
    t:get("bad"), summary.errors.connect + summary.errors.read +
    summary.errors.write + summary.errors.timeout))
  if t:get("bad") > 0 then
    io.write(string.format("BENCH_BAD status=%d body=%s\n", t:get("bad_status"), t:get("bad_body")))
  end
end
