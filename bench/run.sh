#!/usr/bin/env bash
# bench/run.sh: streamd benchmarks, each figure a ratio against a peer
# (nginx, Redis) measured in the same run, on the same machine, interleaved.
# Not part of CI. See bench/README.md.
#
#   bench/run.sh                      all scenarios
#   bench/run.sh publish              one scenario (publish, catchup, fanout, batch,
#                                     groups, memory)
#   bench/run.sh --dry                peers only: no build, no streamd
#
# Environment (defaults in brackets):
#   BENCH_RUNS [3]            measured runs per target
#   BENCH_DURATION [5]        seconds per measured run (publish, Redis runs)
#   BENCH_WARMUP [1]          unmeasured warm-up seconds per target, 0 = none
#   BENCH_SCENARIOS           default list of scenarios ["publish catchup fanout batch groups memory"]
#   BENCH_DRY [0]             1 = same as --dry
#   BENCH_KEEP [0]            1 = keep the temp dir (data, logs, configs)
#   BENCH_CONNECTIONS [50]    wrk/redis-benchmark connections for publish
#   BENCH_THREADS [2]         wrk/redis-benchmark client threads for publish
#   BENCH_DATA_BYTES [100]    size of each event's data
#   BENCH_NGINX_WORKERS [auto]
#   CATCHUP_EVENTS [1000000]  events preloaded for the catch-up read
#   CATCHUP_LIMIT [1000]      page size of the catch-up read
#   CATCHUP_MAX_SECS [120]    cap on one catch-up read
#   BENCH_FAN_SUBS [100]      fanout: WebSocket / XREAD subscribers
#   BENCH_FAN_RATE [5000]     fanout: events/s published
#   BENCH_FAN_SECS [10]       fanout: seconds of publishing per run
#   BENCH_FAN_PUB_CONNS [64]  fanout: publisher connections (one request in flight each)
#   BENCH_FAN_BIG [10000]     fanout: subscribers of the streamd-only line, 0 = skip it
#   BENCH_FAN_BIG_RATE [100]  fanout: events/s of that line
#   BENCH_FAN_BIG_PUB_CONNS [16] fanout: publisher connections of that line
#   BENCH_BATCH [100]         batch: events per publish request
#   BENCH_BATCH_PIPELINE [16] batch: redis-benchmark -P (XADDs in flight per connection)
#   BENCH_GROUP_EVENTS [200000] groups: events preloaded and acked per run
#   BENCH_GROUP_PARTITIONS [4] groups: partitions of the stream
#   BENCH_GROUP_CONSUMERS [4] groups: consumer loops
#   BENCH_GROUP_LIMIT [100]   groups: events per fetch (limit, COUNT)
#   BENCH_MEM_EVENTS [1000000] memory: events stored for the RSS figures
#   BENCH_MEM_STREAMS [10]    memory: streams they are spread over
#   BENCH_MEM_CONNS [10000]   memory: idle keep-alive connections held open
#   BENCH_START_EVENTS [1000000] memory: events of the start-up data set
#   BENCH_START_DATA_BYTES [1000] memory: data bytes per start-up event (~1 GiB in all)
#   BENCH_START_COLD [1]      memory: 1 = one cold start-up after drop_caches, if permitted
#   STREAMD_BIN               use this binary instead of building one
#   STREAMD_ARGS              extra streamd flags, e.g. "--segment-bytes 67108864"
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$BENCH_DIR/.." && pwd)
BUILD_DIR="$REPO/build-bench"

RUNS=${BENCH_RUNS:-3}
DURATION=${BENCH_DURATION:-5}
WARMUP=${BENCH_WARMUP:-1}
SCENARIOS=${BENCH_SCENARIOS:-"publish catchup fanout batch groups memory"}
DRY=${BENCH_DRY:-0}
KEEP=${BENCH_KEEP:-0}
CONNS=${BENCH_CONNECTIONS:-50}
THREADS=${BENCH_THREADS:-2}
DATA_BYTES=${BENCH_DATA_BYTES:-100}
NGINX_WORKERS=${BENCH_NGINX_WORKERS:-auto}
CATCHUP_EVENTS=${CATCHUP_EVENTS:-1000000}
CATCHUP_LIMIT=${CATCHUP_LIMIT:-1000}
CATCHUP_MAX_SECS=${CATCHUP_MAX_SECS:-120}
FAN_SUBS=${BENCH_FAN_SUBS:-100}
FAN_RATE=${BENCH_FAN_RATE:-5000}
FAN_SECS=${BENCH_FAN_SECS:-10}
FAN_PUB_CONNS=${BENCH_FAN_PUB_CONNS:-64}
FAN_BIG=${BENCH_FAN_BIG:-10000}
FAN_BIG_RATE=${BENCH_FAN_BIG_RATE:-100}
FAN_BIG_PUB_CONNS=${BENCH_FAN_BIG_PUB_CONNS:-16}
BATCH_SIZE=${BENCH_BATCH:-100}
BATCH_PIPELINE=${BENCH_BATCH_PIPELINE:-16}
GROUP_EVENTS=${BENCH_GROUP_EVENTS:-200000}
GROUP_PARTITIONS=${BENCH_GROUP_PARTITIONS:-4}
GROUP_CONSUMERS=${BENCH_GROUP_CONSUMERS:-4}
GROUP_LIMIT=${BENCH_GROUP_LIMIT:-100}
MEM_EVENTS=${BENCH_MEM_EVENTS:-1000000}
MEM_STREAMS=${BENCH_MEM_STREAMS:-10}
MEM_CONNS=${BENCH_MEM_CONNS:-10000}
START_EVENTS=${BENCH_START_EVENTS:-1000000}
START_DATA_BYTES=${BENCH_START_DATA_BYTES:-1000}
START_COLD=${BENCH_START_COLD:-1}
# the project's targets for the memory scenario
MEM_TARGET_MB=100      # RSS, MB (10^6 bytes)
START_TARGET_MS=2000   # exec to the first 200 of GET /health, ~1 GiB of data
STREAMD_BIN=${STREAMD_BIN:-}
STREAMD_ARGS=${STREAMD_ARGS:-}

args=()
for a in "$@"; do
  case $a in
    --dry) DRY=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) echo "unknown option: $a" >&2; exit 2 ;;
    *) args+=("$a") ;;
  esac
done
[ ${#args[@]} -gt 0 ] && SCENARIOS="${args[*]}"

log()  { printf '[bench %s] %s\n' "$(date +%T)" "$*" >&2; }
die()  { log "ERROR: $*"; exit 1; }
WARNINGS=()
warn() { log "WARNING: $*"; WARNINGS+=("$*"); }

PY=python3
UTIL="$BENCH_DIR/benchutil.py"

# ---------------------------------------------------------------- packages
ensure_packages() {
  local missing=()
  command -v wrk >/dev/null || missing+=(wrk)
  command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
  { command -v redis-server && command -v redis-benchmark && command -v redis-cli; } \
    >/dev/null || missing+=(redis-server redis-tools)
  command -v python3 >/dev/null || missing+=(python3)
  if [ "$DRY" = 0 ] && [ -z "$STREAMD_BIN" ]; then
    command -v cmake >/dev/null || missing+=(cmake)
    command -v cc >/dev/null || missing+=(build-essential)
  fi
  if [[ " $SCENARIOS " == *" fanout "* ]] || [[ " $SCENARIOS " == *" groups "* ]]; then
    # the C clients (bench/wsfan.c, bench/redisfan.c, bench/groupbench.c,
    # bench/redisgroup.c), built with gcc
    command -v gcc >/dev/null || missing+=(gcc libc6-dev)
    [ -e /usr/include/uv.h ] || missing+=(libuv1-dev)
    [ -e /usr/include/hiredis/adapters/libuv.h ] || missing+=(libhiredis-dev)
  fi
  if [[ " $SCENARIOS " == *" fanout "* ]]; then
    [ -e /usr/include/wslay/wslay.h ] || missing+=(libwslay-dev)
    [ -e /usr/include/nettle/sha1.h ] || missing+=(nettle-dev)
  fi
  [ ${#missing[@]} -eq 0 ] && return 0

  local sudo=""
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || die "missing packages (${missing[*]}) and not root"
    sudo=sudo
  fi
  log "installing: ${missing[*]}"
  # Keep Debian's maintainer scripts from starting system nginx/redis services.
  local policy=0 rc=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
    $sudo chmod +x /usr/sbin/policy-rc.d
    policy=1
  fi
  $sudo apt-get update -qq || rc=$?
  [ $rc = 0 ] && { $sudo env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "${missing[@]}" || rc=$?; }
  [ $policy = 1 ] && $sudo rm -f /usr/sbin/policy-rc.d
  [ $rc = 0 ] || die "apt-get failed (exit $rc)"
}

# ---------------------------------------------------------------- temp dir and cleanup
WORK=""
PIDS=()
declare -A PROC_NAME=()

stop_proc() {
  local pid=$1 i
  kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "${PROC_NAME[$pid]:-pid $pid} ignored SIGTERM for 10s, SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  local rc=$? pid f
  set +e
  trap - EXIT INT TERM
  for pid in ${PIDS[@]+"${PIDS[@]}"}; do stop_proc "$pid"; done
  if [ -n "$WORK" ] && [ -d "$WORK" ]; then
    if [ $rc != 0 ]; then
      for f in "$WORK"/*.log "$WORK"/nginx/error.log "$WORK"/redis/redis.log; do
        [ -s "$f" ] || continue
        log "--- last lines of $f"
        tail -n 15 "$f" >&2
      done
    fi
    if [ "$KEEP" = 1 ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
  fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

pick_workdir() {
  local base fstype
  mkdir -p "$BUILD_DIR"
  for base in "$BUILD_DIR" "${TMPDIR:-}" /var/tmp; do
    [ -n "$base" ] && [ -d "$base" ] && [ -w "$base" ] || continue
    fstype=$(stat -f -c %T "$base")
    case $fstype in
      tmpfs|ramfs) log "$base is on $fstype, not on a disk: not used"; continue ;;
    esac
    WORK=$(mktemp -d "$base/streamd-bench.XXXXXX")
    WORK_FS=$fstype
    return 0
  done
  die "no writable on-disk directory for the data (build-bench/, \$TMPDIR, /var/tmp are tmpfs)"
}

freeport() { "$PY" "$UTIL" freeport; }
http() { "$PY" "$UTIL" http "$@"; }   # prints "<status> <body>"

# ---------------------------------------------------------------- CPU time of a server
CLK_TCK=$(getconf CLK_TCK)
# utime+stime (clock ticks) of a process and its direct children (nginx
# workers). /proc/PID/stat of a process covers all of its threads.
proc_ticks() {
  local total=0 p line rest
  for p in "$1" $(cat /proc/"$1"/task/*/children 2>/dev/null); do
    { read -r line < /proc/"$p"/stat; } 2>/dev/null || continue
    rest=${line##*) }
    # shellcheck disable=SC2086
    set -- $rest
    total=$(( total + ${12} + ${13} ))
  done
  echo "$total"
}
ticks_to_s() { awk -v t="$1" -v hz="$CLK_TCK" 'BEGIN { printf "%.2f", t / hz }'; }

# ---------------------------------------------------------------- servers
declare -A SD_PORT=() SD_PID=() SD_MODE=() SD_FLAGS=()
NGINX_PORT="" NGINX_PID="" REDIS_PORT="" REDIS_PID=""

wait_until() { # SECONDS DESCRIPTION PID COMMAND...
  local secs=$1 what=$2 pid=$3 i; shift 3
  for i in $(seq 1 $((secs * 10))); do
    "$@" >/dev/null 2>&1 && return 0
    kill -0 "$pid" 2>/dev/null || die "$what exited during startup"
    sleep 0.1
  done
  die "$what not ready after ${secs}s"
}
http_ok() { local r; r=$(http GET "$1") && [ "${r%% *}" = 200 ]; }

build_streamd() {
  if [ -n "$STREAMD_BIN" ]; then
    [ -x "$STREAMD_BIN" ] || die "STREAMD_BIN=$STREAMD_BIN is not executable"
    return 0
  fi
  local blog="$BUILD_DIR/bench-build.log"
  log "building streamd (Release) in build-bench/ (log: $blog)"
  if ! { cmake -S "$REPO" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release &&
         cmake --build "$BUILD_DIR" -j2; } >"$blog" 2>&1; then
    tail -n 30 "$blog" >&2
    die "build failed; 'bench/run.sh --dry' measures the peers alone"
  fi
  STREAMD_BIN="$BUILD_DIR/streamd"
  [ -x "$STREAMD_BIN" ] ||
    STREAMD_BIN=$(find "$BUILD_DIR" -name streamd -type f -perm -u+x -print -quit)
  [ -n "$STREAMD_BIN" ] && [ -x "$STREAMD_BIN" ] || die "no streamd binary under build-bench/"
}

# ensure_streamd KEY [MODE [FLAGS...]]: one instance per KEY, with its own
# data dir ($WORK/streamd-KEY) and log; MODE (durability) defaults to KEY,
# so that "ensure_streamd always" is the durability=always instance. All
# stay up (idle when not measured) so that runs interleave. MODE and FLAGS
# are remembered for restart_streamd.
ensure_streamd() {
  local key=$1 mode=${2:-${SD_MODE[$1]:-$1}} port dir logf pid
  [ -n "${SD_PID[$key]:-}" ] && return 0
  [ $# -gt 2 ] && SD_FLAGS[$key]="${*:3}"
  SD_MODE[$key]=$mode
  port=$(freeport)
  dir="$WORK/streamd-$key"
  logf="$WORK/streamd-$key.log"
  mkdir -p "$dir"
  local extra=() maxc=$((FAN_BIG + FAN_SUBS + 1000))
  # fanout's FAN_BIG subscribers and the publishers may not fit in the
  # default max_connections (10000); at the limit new connections hang
  if [[ " $SCENARIOS " == *" fanout "* ]] && [ "$maxc" -gt 10000 ]; then
    extra=(--max-connections "$maxc")
  fi
  # shellcheck disable=SC2086
  "$STREAMD_BIN" --host 127.0.0.1 --port "$port" --data-dir "$dir" \
    --durability "$mode" ${extra[@]+"${extra[@]}"} ${SD_FLAGS[$key]:-} $STREAMD_ARGS >"$logf" 2>&1 &
  pid=$!
  PIDS+=("$pid"); PROC_NAME[$pid]="streamd ($key)"
  wait_until 30 "streamd ($key)" "$pid" grep -q "listening on" "$logf"
  wait_until 10 "streamd ($key) /health" "$pid" http_ok "http://127.0.0.1:$port/health"
  SD_PORT[$key]=$port; SD_PID[$key]=$pid
  log "streamd $key --durability $mode ${SD_FLAGS[$key]:-}: pid $pid, port $port, data $dir"
}

# stop_streamd KEY: SIGTERM (SIGKILL after 10 s) and forget the instance
stop_streamd() {
  local key=$1 pid=${SD_PID[$1]:-} p keep=()
  [ -n "$pid" ] || return 0
  stop_proc "$pid"
  for p in "${PIDS[@]}"; do [ "$p" = "$pid" ] || keep+=("$p"); done
  PIDS=(${keep[@]+"${keep[@]}"})
  unset 'SD_PID[$key]' 'SD_PORT[$key]'
}

# restart_streamd KEY: a fresh process on the same data dir (the fan-out
# and memory runs measure the server's RSS, which a previous run's freed
# heap inflates)
restart_streamd() {
  stop_streamd "$1"
  ensure_streamd "$1"
}

ensure_nginx() {
  [ -n "$NGINX_PID" ] && return 0
  local nginx d port m user="" elog=()
  nginx=$(command -v nginx || echo /usr/sbin/nginx)
  d="$WORK/nginx"; mkdir -p "$d"
  port=$(freeport)
  [ "$(id -u)" = 0 ] && user="user root;"
  {
    echo "$user"
    echo "worker_processes $NGINX_WORKERS;"
    echo "pid $d/nginx.pid;"
    echo "error_log $d/error.log warn;"
    echo "events { worker_connections 4096; }"
    echo "http {"
    echo "  access_log off;"
    echo "  keepalive_requests 1000000000;"
    echo "  keepalive_timeout 75s;"
    echo "  client_body_temp_path $d/client_body;"
    # only the temp paths of modules this nginx has
    for m in proxy fastcgi uwsgi scgi; do
      "$nginx" -V 2>&1 | grep -q -- "--without-http_${m}_module" ||
        echo "  ${m}_temp_path $d/$m;"
    done
    echo "  server {"
    echo "    listen 127.0.0.1:$port;"
    echo "    location / { default_type application/json; return 200 '{\"success\":true}'; }"
    echo "  }"
    echo "}"
  } >"$d/nginx.conf"
  "$nginx" -h 2>&1 | grep -q -- '-e filename' && elog=(-e "$d/error.log")
  "$nginx" -p "$d" ${elog[@]+"${elog[@]}"} -c "$d/nginx.conf" -g 'daemon off;' \
    >"$WORK/nginx.log" 2>&1 &
  NGINX_PID=$!
  PIDS+=("$NGINX_PID"); PROC_NAME[$NGINX_PID]=nginx
  wait_until 10 nginx "$NGINX_PID" http_ok "http://127.0.0.1:$port/"
  NGINX_PORT=$port
  log "nginx: pid $NGINX_PID, port $port, $NGINX_WORKERS worker(s)"
}

ensure_redis() {
  [ -n "$REDIS_PID" ] && return 0
  local d="$WORK/redis" port
  mkdir -p "$d"
  port=$(freeport)
  cat >"$d/redis.conf" <<EOF
bind 127.0.0.1
port $port
protected-mode yes
daemonize no
dir $d
logfile $d/redis.log
save ""
appendonly yes
appendfsync always
auto-aof-rewrite-percentage 0
EOF
  redis-server "$d/redis.conf" &
  REDIS_PID=$!
  PIDS+=("$REDIS_PID"); PROC_NAME[$REDIS_PID]=redis-server
  REDIS_PORT=$port
  wait_until 10 redis "$REDIS_PID" rcli ping
  log "redis: pid $REDIS_PID, port $port, data $d (appendonly yes)"
}
rcli() { redis-cli -h 127.0.0.1 -p "$REDIS_PORT" "$@"; }
redis_fsync() { [ "$(rcli CONFIG SET appendfsync "$1")" = OK ] || die "CONFIG SET appendfsync $1"; }

# ---------------------------------------------------------------- results
declare -A R_RATE=() R_OPS=() R_CPU=()
ROWS=()   # "scenario|streamd label|peer description|peer label|unit"

# record LABEL RATE OPS CPU_SECONDS
record() {
  R_RATE[$1]+="$2 "; R_OPS[$1]+="$3 "; R_CPU[$1]+="$4 "
  log "$(printf '  %-22s %12.0f /s   cpu %6ss  (%s us/op)' "$1" "$2" "$4" \
        "$(awk -v c="$4" -v o="$3" 'BEGIN { printf (o > 0 ? "%.1f" : "-"), c * 1e6 / o }')")"
}
add_row() { ROWS+=("$1|$2|$3|$4|$5"); }
# record_value LABEL VALUE UNIT: a figure that is not a rate and has no CPU
# cost per op (RSS, start-up time)
record_value() { R_RATE[$1]+="$2 "; log "$(printf '  %-22s %12s %s' "$1" "$2" "$3")"; }
# add_target_row SCENARIO LABEL DESCRIPTION LIMIT LIMIT_UNIT UNIT: a row
# without a peer; the median is held against the project's target (lower
# is better), LIMIT in LIMIT_UNIT (MB = 10^6 bytes, or the row's UNIT)
add_target_row() {
  local lim=$4
  [ "$5" = MB ] && [ "$6" = MiB ] && lim=$(awk -v m="$4" 'BEGIN { printf "%.1f", m * 1e6 / 1048576 }')
  ROWS+=("$1|$2|$3|target:$lim:$4 $5|$6")
}

kv() { sed -n "s/.* $2=\([^ ]*\).*/\1/p" <<<" $1" | head -n 1; }

# measure_wrk LABEL SERVER_PID URL SCRIPT THREADS CONNS SECONDS [VAR=VALUE...]
# Runs wrk with one of the bench/*.lua scripts (which print BENCH_RESULT);
# LABEL "" = warm-up, not recorded.
measure_wrk() {
  local label=$1 pid=$2 url=$3 script=$4 t=$5 c=$6 secs=$7 out line c0 c1
  shift 7
  out="$WORK/wrk.out"
  c0=$(proc_ticks "$pid")
  env "$@" wrk -t"$t" -c"$c" -d"${secs}s" --timeout 10s -s "$script" "$url" >"$out" 2>&1 ||
    { cat "$out" >&2; die "wrk failed against $url"; }
  c1=$(proc_ticks "$pid")
  line=$(grep '^BENCH_RESULT' "$out" || true)
  [ -n "$line" ] || { cat "$out" >&2; die "wrk gave no result against $url"; }
  local ops rate se ke
  ops=$(kv "$line" ops); rate=$(kv "$line" rate)
  se=$(kv "$line" status_errors); ke=$(kv "$line" socket_errors)
  if [ "$se" != 0 ] || [ "$ke" != 0 ]; then
    warn "${label:-warm-up} ($url): $se error responses, $ke socket errors; $(grep '^BENCH_BAD' "$out" || true)"
  fi
  if [ "$(kv "$line" finished)" = 0 ]; then
    warn "${label:-warm-up}: stopped by the ${secs}s cap before the end, after $ops events"
  fi
  LAST_OPS=$ops
  [ -n "$label" ] && record "$label" "$rate" "$ops" "$(ticks_to_s $((c1 - c0)))"
  return 0
}

# measure_redis LABEL CONNS REQUESTS OPS_PER_REQUEST redis-benchmark-args...
# LABEL "" = calibration/warm-up: sets LAST_RATE only.
measure_redis() {
  local label=$1 c=$2 n=$3 per=$4 c0 c1 out rate thr=()
  shift 4
  [ "$c" -gt 1 ] && thr=(--threads "$THREADS")
  c0=$(proc_ticks "$REDIS_PID")
  out=$(redis-benchmark -h 127.0.0.1 -p "$REDIS_PORT" -c "$c" -n "$n" ${thr[@]+"${thr[@]}"} \
        --csv "$@" 2>&1) || { echo "$out" >&2; die "redis-benchmark failed"; }
  c1=$(proc_ticks "$REDIS_PID")
  rate=$(awk -F'"' 'NR == 2 { print $4 }' <<<"$out")
  [ -n "$rate" ] || { echo "$out" >&2; die "no rps in redis-benchmark output"; }
  LAST_RATE=$rate
  [ -n "$label" ] && record "$label" "$(awk -v r="$rate" -v p="$per" 'BEGIN { print r * p }')" \
    $((n * per)) "$(ticks_to_s $((c1 - c0)))"
  return 0
}

# requests for a redis-benchmark run of about DURATION seconds at RATE req/s
redis_n() { awk -v r="$1" -v d="$DURATION" -v m="$2" 'BEGIN { n = int(r * d); print (n < m ? m : n) }'; }

# The fan-out clients: plain gcc, no build system (bench/wsfan.c, bench/redisfan.c).
build_fan_clients() {
  [ -n "${FAN_BUILT:-}" ] && return 0
  local blog="$BUILD_DIR/bench-fan-build.log"
  mkdir -p "$BUILD_DIR"
  log "building bench/wsfan.c and bench/redisfan.c into build-bench/ (log: $blog)"
  if ! { gcc -O2 -Wall -o "$BUILD_DIR/wsfan" "$BENCH_DIR/wsfan.c" -luv -lwslay -lnettle &&
         gcc -O2 -Wall -o "$BUILD_DIR/redisfan" "$BENCH_DIR/redisfan.c" -lhiredis -luv; } >"$blog" 2>&1; then
    cat "$blog" >&2
    die "building the fan-out clients failed"
  fi
  FAN_BUILT=1
}

# The consumer-group clients: plain gcc, as the fan-out ones
# (bench/groupbench.c, bench/redisgroup.c).
build_group_clients() {
  [ -n "${GROUP_BUILT:-}" ] && return 0
  local blog="$BUILD_DIR/bench-group-build.log"
  mkdir -p "$BUILD_DIR"
  log "building bench/groupbench.c and bench/redisgroup.c into build-bench/ (log: $blog)"
  if ! { gcc -O2 -Wall -o "$BUILD_DIR/groupbench" "$BENCH_DIR/groupbench.c" -luv &&
         gcc -O2 -Wall -o "$BUILD_DIR/redisgroup" "$BENCH_DIR/redisgroup.c" -lhiredis -luv; } >"$blog" 2>&1; then
    cat "$blog" >&2
    die "building the consumer-group clients failed"
  fi
  GROUP_BUILT=1
}

vmrss_kib() { awk '/^VmRSS:/ { print $2 }' /proc/"$1"/status 2>/dev/null || echo 0; }
# "VmRSS RssAnon RssFile" in KiB
rss_parts() { awk '/^VmRSS:/ { r = $2 } /^RssAnon:/ { a = $2 } /^RssFile:/ { f = $2 }
                   END { print r + 0, a + 0, f + 0 }' /proc/"$1"/status 2>/dev/null || echo "0 0 0"; }

declare -A R_CCPU=()   # client CPU seconds per run, by label
FAN_LINES=()

# measure_fan LABEL SERVER_PID CLIENT RATE CLIENT-ARGS...
# Runs build-bench/CLIENT (wsfan or redisfan, which print one BENCH_FAN
# line), samples the server's VmRSS every 0.2 s meanwhile, and records
# LABEL.deliv (deliveries/s, server CPU), LABEL.p50/.p99/.max (latency, us),
# the client's CPU seconds and the server's peak RSS. LABEL "" = warm-up.
measure_fan() {
  local label=$1 pid=$2 client=$3 rate=$4 out err line c0 c1 cpid rc=0 rss peak=0 rss0
  shift 4
  out="$WORK/fan.out"; err="$WORK/fan.err"
  rss0=$(vmrss_kib "$pid")
  c0=$(proc_ticks "$pid")
  "$BUILD_DIR/$client" -q -r "$rate" "$@" >"$out" 2>"$err" &
  cpid=$!
  PIDS+=("$cpid"); PROC_NAME[$cpid]=$client
  while kill -0 "$cpid" 2>/dev/null; do
    rss=$(vmrss_kib "$pid")
    [ "${rss:-0}" -gt "$peak" ] && peak=$rss
    sleep 0.2
  done
  wait "$cpid" || rc=$?
  local p keep=()
  for p in "${PIDS[@]}"; do [ "$p" = "$cpid" ] || keep+=("$p"); done
  PIDS=(${keep[@]+"${keep[@]}"})
  c1=$(proc_ticks "$pid")
  line=$(grep '^BENCH_FAN' "$out" || true)
  [ -n "$line" ] || { cat "$out" "$err" >&2; die "$client gave no result (exit $rc)"; }
  local what=${label:-"warm-up ($client)"} f
  declare -A v=()
  for f in subs subs_failed subs_closed published pub_errors pub_rate pub_p99_us expected deliveries \
           missing dups bad rate p50_us p99_us max_us client_cpu_s error; do
    v[$f]=$(kv "$line" "$f")
  done
  [ "$rc" = 0 ] || warn "$what: $client exited with status $rc"
  [ -z "${v[error]}" ] || warn "$what: $client: ${v[error]//_/ }"
  [ "${v[subs_failed]}" = 0 ] || warn "$what: ${v[subs_failed]} of $((v[subs] + v[subs_failed])) subscribers could not subscribe"
  [ "${v[subs_closed]}" = 0 ] || warn "$what: ${v[subs_closed]} subscribers were disconnected during the run"
  [ "${v[pub_errors]}" = 0 ] || warn "$what: ${v[pub_errors]} publishes failed"
  [ "${v[missing]}" = 0 ] || warn "$what: MISSING DELIVERIES: ${v[missing]} of ${v[expected]} expected (${v[deliveries]} delivered)"
  [ "${v[dups]}" = 0 ] || warn "$what: ${v[dups]} duplicate deliveries"
  [ "${v[bad]}" = 0 ] || warn "$what: ${v[bad]} deliveries without t/s in their data"
  [ -z "$label" ] || ! awk -v a="${v[pub_rate]}" -v r="$rate" 'BEGIN { exit !(a < 0.95 * r) }' ||
    warn "$what: the publisher did not hold $rate events/s: $(printf '%.0f' "${v[pub_rate]}")/s (publish p99 ${v[pub_p99_us]} us)"
  LAST_OPS=${v[deliveries]}
  local sec; sec=$(ticks_to_s $((c1 - c0)))
  line=$(printf '  %-14s %s/%s delivered, missing %s; published %.0f/s; p50/p99/max %s/%s/%s us; client cpu %ss; server cpu %ss; server RSS %s -> peak %s MiB' \
    "$what" "${v[deliveries]}" "${v[expected]}" "${v[missing]}" "${v[pub_rate]}" "${v[p50_us]}" "${v[p99_us]}" \
    "${v[max_us]}" "${v[client_cpu_s]}" "$sec" "$((rss0 / 1024))" "$((peak / 1024))")
  log "${line# }"
  [ -n "$label" ] || return 0
  FAN_LINES+=("$line")
  record "$label.deliv" "${v[rate]}" "${v[deliveries]}" "$sec"
  R_RATE[$label.p50]+="${v[p50_us]} "; R_RATE[$label.p99]+="${v[p99_us]} "; R_RATE[$label.max]+="${v[max_us]} "
  R_RATE[$label.rss]+="$(awk -v k="$peak" 'BEGIN { printf "%.1f", k / 1024 }') "
  R_CCPU[$label]+="${v[client_cpu_s]} "
  return 0
}

GROUP_LINES=()

# measure_group LABEL SERVER_PID CLIENT CLIENT-ARGS...
# Runs build-bench/CLIENT (groupbench or redisgroup, which print one
# BENCH_GROUP line) and records LABEL: events acked per second, the acked
# count, the server's CPU seconds; the client's CPU in GROUP_LINES.
# LABEL "" = warm-up (fewer events than the stream holds: only the errors
# count).
measure_group() {
  local label=$1 pid=$2 client=$3 out err line c0 c1 cpid rc=0 f p keep=()
  shift 3
  out="$WORK/group.out"; err="$WORK/group.err"
  c0=$(proc_ticks "$pid")
  "$BUILD_DIR/$client" -q "$@" >"$out" 2>"$err" &
  cpid=$!
  PIDS+=("$cpid"); PROC_NAME[$cpid]=$client
  wait "$cpid" || rc=$?
  for p in "${PIDS[@]}"; do [ "$p" = "$cpid" ] || keep+=("$p"); done
  PIDS=(${keep[@]+"${keep[@]}"})
  c1=$(proc_ticks "$pid")
  line=$(grep '^BENCH_GROUP' "$out" || true)
  [ -n "$line" ] || { cat "$out" "$err" >&2; die "$client gave no result (exit $rc)"; }
  local what=${label:-"warm-up ($client)"}
  declare -A v=()
  for f in expected acked delivered dups redelivered gaps bad ack_short fetches acks ranges empty \
           seconds rate cycle_p50_us cycle_p99_us client_cpu_s per_consumer error; do
    v[$f]=$(kv "$line" "$f")
  done
  [ "$rc" = 0 ] || warn "$what: $client exited with status $rc"
  [ -z "${v[error]}" ] || warn "$what: $client: ${v[error]//_/ }"
  [ -z "$label" ] || [ "${v[acked]}" = "${v[expected]}" ] ||
    warn "$what: the acks settled ${v[acked]} events, expected exactly ${v[expected]}"
  [ "${v[dups]}" = 0 ] || warn "$what: ${v[dups]} events delivered twice"
  [ "${v[redelivered]}" = 0 ] || warn "$what: ${v[redelivered]} events came with deliveries > 1"
  [ "${v[gaps]}" = 0 ] || warn "$what: ${v[gaps]} offsets skipped (never delivered)"
  [ "${v[bad]}" = 0 ] || warn "$what: ${v[bad]} deliveries outside the preloaded offsets"
  [ "${v[ack_short]}" = 0 ] || warn "$what: acks settled ${v[ack_short]} fewer events than they named"
  local sec; sec=$(ticks_to_s $((c1 - c0)))
  line=$(printf '  %-14s %s/%s acked in %ss, %s fetches (%s empty), %s acks naming %s ranges/ids; fetch-to-ack p50/p99 %s/%s us; per consumer %s; client cpu %ss; server cpu %ss' \
    "$what" "${v[acked]}" "${v[expected]}" "${v[seconds]}" "${v[fetches]}" "${v[empty]}" "${v[acks]}" \
    "${v[ranges]}" "${v[cycle_p50_us]}" "${v[cycle_p99_us]}" "${v[per_consumer]}" "${v[client_cpu_s]}" "$sec")
  log "${line# }"
  [ -n "$label" ] || return 0
  GROUP_LINES+=("$line")
  record "$label" "${v[rate]}" "${v[acked]}" "$sec"
}

# ---------------------------------------------------------------- scenarios
# Each scenario_NAME starts what it needs (ensure_*), measures each target
# BENCH_RUNS times, interleaving targets within a round, and declares its
# table rows with add_row. Add a scenario: write scenario_NAME, add NAME to
# the default list and to bench/README.md.
KNOWN_SCENARIOS="publish catchup fanout batch groups memory"

# a. single-event publish, CONNS keep-alive connections
scenario_publish() {
  local path=/stream/bench/publish payload r mode
  payload=$("$PY" -c "print(('0123456789' * ($DATA_BYTES // 10 + 1))[:$DATA_BYTES])")
  ensure_nginx
  ensure_redis
  if [ "$DRY" = 0 ]; then
    for mode in always interval; do
      ensure_streamd "$mode"
      r=$(http POST "http://127.0.0.1:${SD_PORT[$mode]}/stream/bench" \
          '{"partitions":1,"retention_hours":0}')
      case ${r%% *} in 200|201|409) ;; *) die "create stream on streamd ($mode): $r" ;; esac
      r=$(http POST "http://127.0.0.1:${SD_PORT[$mode]}$path" '{"event":"bench","data":"check"}')
      [ "${r%% *}" = 200 ] || die "publish check on streamd ($mode): $r"
    done
  fi
  r=$(http POST "http://127.0.0.1:$NGINX_PORT$path" '{"event":"bench","data":"check"}')
  [ "${r%% *}" = 200 ] || die "nginx POST check: $r"

  local wrk_env=(BENCH_PATH="$path" BENCH_DATA_BYTES="$DATA_BYTES")
  local xadd=(XADD bench '*' data "$payload")
  log "publish: calibrating redis-benchmark -n for ~${DURATION}s runs"
  local n_always n_everysec
  redis_fsync always;   measure_redis "" "$CONNS" 10000 1 "${xadd[@]}"; n_always=$(redis_n "$LAST_RATE" 10000)
  redis_fsync everysec; measure_redis "" "$CONNS" 20000 1 "${xadd[@]}"; n_everysec=$(redis_n "$LAST_RATE" 20000)
  if [ "$WARMUP" != 0 ]; then
    log "publish: ${WARMUP}s warm-up per wrk target"
    if [ "$DRY" = 0 ]; then
      for mode in always interval; do
        measure_wrk "" "${SD_PID[$mode]}" "http://127.0.0.1:${SD_PORT[$mode]}" \
          "$BENCH_DIR/publish.lua" "$THREADS" "$CONNS" "$WARMUP" "${wrk_env[@]}"
      done
    fi
    measure_wrk "" "$NGINX_PID" "http://127.0.0.1:$NGINX_PORT" \
      "$BENCH_DIR/publish.lua" "$THREADS" "$CONNS" "$WARMUP" "${wrk_env[@]}"
  fi

  local run
  for run in $(seq 1 "$RUNS"); do
    log "publish: round $run/$RUNS"
    if [ "$DRY" = 0 ]; then
      measure_wrk sd.publish.always "${SD_PID[always]}" \
        "http://127.0.0.1:${SD_PORT[always]}" "$BENCH_DIR/publish.lua" \
        "$THREADS" "$CONNS" "$DURATION" "${wrk_env[@]}"
    fi
    measure_wrk nginx.return200 "$NGINX_PID" "http://127.0.0.1:$NGINX_PORT" \
      "$BENCH_DIR/publish.lua" "$THREADS" "$CONNS" "$DURATION" "${wrk_env[@]}"
    redis_fsync always
    measure_redis redis.xadd.always "$CONNS" "$n_always" 1 "${xadd[@]}"
    if [ "$DRY" = 0 ]; then
      measure_wrk sd.publish.interval "${SD_PID[interval]}" \
        "http://127.0.0.1:${SD_PORT[interval]}" "$BENCH_DIR/publish.lua" \
        "$THREADS" "$CONNS" "$DURATION" "${wrk_env[@]}"
    fi
    redis_fsync everysec
    measure_redis redis.xadd.everysec "$CONNS" "$n_everysec" 1 "${xadd[@]}"
  done
  redis_fsync always

  local s="publish, ${CONNS} conns"
  add_row "$s, durability=always"   sd.publish.always   "nginx return 200"             nginx.return200     req/s
  add_row "$s, durability=always"   sd.publish.always   "redis XADD, fsync always"     redis.xadd.always   req/s
  add_row "$s, durability=interval" sd.publish.interval "nginx return 200"             nginx.return200     req/s
  add_row "$s, durability=interval" sd.publish.interval "redis XADD, fsync everysec"   redis.xadd.everysec req/s
}

# b. catch-up read of CATCHUP_EVENTS events, CATCHUP_LIMIT per request
# measure_catchup LABEL PID PORT PATH: one read of the whole stream with
# bench/catchup.c (a blocking C client; wrk's Lua response() callback caps
# the read near 1,200 pages/s, well below what the server sends).
measure_catchup() {
  local label=$1 pid=$2 port=$3 path=$4 c0 c1 out line
  c0=$(proc_ticks "$pid")
  out=$("$BUILD_DIR/catchup" "$port" "$path" "$CATCHUP_LIMIT" "$CATCHUP_EVENTS" 2>&1) ||
    warn "${label:-warm-up}: catch-up client reported errors: $out"
  c1=$(proc_ticks "$pid")
  line=$(grep '^BENCH_RESULT' <<<"$out" || true)
  [ -n "$line" ] || die "catch-up client gave no result: $out"
  LAST_OPS=$(kv "$line" ops)
  [ -n "$label" ] && record "$label" "$(kv "$line" rate)" "$LAST_OPS" "$(ticks_to_s $((c1 - c0)))"
  return 0
}

scenario_catchup() {
  local stream=catchup out r
  ensure_redis
  if [ "$DRY" = 0 ]; then
    gcc -O2 -Wall -o "$BUILD_DIR/catchup" "$BENCH_DIR/catchup.c" || die "building bench/catchup.c failed"
  fi
  if [ "$DRY" = 0 ]; then
    ensure_streamd interval
    log "catchup: preloading $CATCHUP_EVENTS events into streamd (batches of 1000)"
    "$PY" "$UTIL" preload-streamd 127.0.0.1 "${SD_PORT[interval]}" "$stream" \
      "$CATCHUP_EVENTS" 1000 "$DATA_BYTES" 2 >&2
  fi
  log "catchup: preloading $CATCHUP_EVENTS entries into redis (redis-cli --pipe)"
  redis_fsync no
  out=$("$PY" "$UTIL" redis-resp "$stream" "$CATCHUP_EVENTS" "$DATA_BYTES" |
        rcli --pipe 2>&1) || { echo "$out" >&2; die "redis preload failed"; }
  grep -q 'errors: 0' <<<"$out" || { echo "$out" >&2; die "redis preload had errors"; }
  r=$(rcli XLEN "$stream")
  [ "$r" = "$CATCHUP_EVENTS" ] || die "redis XLEN $stream = $r, expected $CATCHUP_EVENTS"
  redis_fsync everysec

  local xrange=(-r $((CATCHUP_EVENTS > CATCHUP_LIMIT ? CATCHUP_EVENTS - CATCHUP_LIMIT : 1))
                XRANGE "$stream" __rand_int__ + COUNT "$CATCHUP_LIMIT")
  log "catchup: calibrating redis-benchmark -n"
  measure_redis "" 1 200 "$CATCHUP_LIMIT" "${xrange[@]}"
  local n; n=$(redis_n "$LAST_RATE" 200)
  if [ "$DRY" = 0 ] && [ "$WARMUP" != 0 ]; then
    log "catchup: one unmeasured read of the whole stream (warm-up)"
    measure_catchup "" "${SD_PID[interval]}" "${SD_PORT[interval]}" "/stream/$stream/consume/bench-reader"
  fi

  local run
  for run in $(seq 1 "$RUNS"); do
    log "catchup: round $run/$RUNS"
    if [ "$DRY" = 0 ]; then
      measure_catchup sd.catchup "${SD_PID[interval]}" "${SD_PORT[interval]}" "/stream/$stream/consume/bench-reader"
      [ "$LAST_OPS" = "$CATCHUP_EVENTS" ] ||
        warn "catch-up read $LAST_OPS events, expected $CATCHUP_EVENTS"
    fi
    measure_redis redis.xrange 1 "$n" "$CATCHUP_LIMIT" "${xrange[@]}"
  done
  redis_fsync always
  rcli DEL "$stream" >/dev/null

  add_row "catch-up read, limit=$CATCHUP_LIMIT, 1 conn" sd.catchup \
    "redis XRANGE COUNT $CATCHUP_LIMIT" redis.xrange events/s
}

# streamd (always) restarted before each fan-out run, so that its RSS is
# that run's alone; the streams stay on disk (409 = already there)
fresh_streamd() {
  local st r
  restart_streamd always
  for st in fan fanbig; do
    r=$(http POST "http://127.0.0.1:${SD_PORT[always]}/stream/$st" '{"partitions":1,"retention_hours":0}')
    case ${r%% *} in 200|201|409) ;; *) die "create stream $st on streamd (always): $r" ;; esac
  done
}

# c. fan-out: FAN_SUBS subscribers, FAN_RATE events/s for FAN_SECS s; then
# FAN_BIG WebSocket subscribers at FAN_BIG_RATE events/s (streamd only)
scenario_fanout() {
  local r run fa=(-s fan -n "$FAN_SUBS" -c "$FAN_PUB_CONNS" -b "$DATA_BYTES")
  local big=(-s fanbig -n "$FAN_BIG" -c "$FAN_BIG_PUB_CONNS" -b "$DATA_BYTES" -d "$FAN_SECS")
  build_fan_clients
  ensure_redis
  [ "$DRY" = 1 ] || fresh_streamd
  redis_fsync always
  if [ "$WARMUP" != 0 ]; then
    log "fanout: ${WARMUP}s warm-up per target"
    [ "$DRY" = 1 ] || measure_fan "" "${SD_PID[always]}" wsfan "$FAN_RATE" -p "${SD_PORT[always]}" "${fa[@]}" -d "$WARMUP"
    measure_fan "" "$REDIS_PID" redisfan "$FAN_RATE" -p "$REDIS_PORT" "${fa[@]}" -d "$WARMUP"
  fi
  for run in $(seq 1 "$RUNS"); do
    log "fanout: round $run/$RUNS"
    if [ "$DRY" = 0 ]; then
      fresh_streamd
      measure_fan sd.fan "${SD_PID[always]}" wsfan "$FAN_RATE" -p "${SD_PORT[always]}" "${fa[@]}" -d "$FAN_SECS"
    fi
    measure_fan redis.fan "$REDIS_PID" redisfan "$FAN_RATE" -p "$REDIS_PORT" "${fa[@]}" -d "$FAN_SECS"
    if [ "$DRY" = 0 ] && [ "$FAN_BIG" -gt 0 ]; then
      fresh_streamd
      measure_fan sd.fanbig "${SD_PID[always]}" wsfan "$FAN_BIG_RATE" -p "${SD_PORT[always]}" "${big[@]}"
    fi
  done
  rcli DEL fan >/dev/null

  local s="fanout, $FAN_SUBS subs, $FAN_RATE ev/s, always" p="redis XREAD BLOCK, fsync always"
  add_row "$s"         sd.fan.deliv "$p" redis.fan.deliv deliv/s
  add_row "$s, p50"    sd.fan.p50   "$p" redis.fan.p50   "us (lat)"
  add_row "$s, p99"    sd.fan.p99   "$p" redis.fan.p99   "us (lat)"
  add_row "$s, max"    sd.fan.max   "$p" redis.fan.max   "us (lat)"
  if [ "$FAN_BIG" -gt 0 ]; then
    s="fanout, $FAN_BIG subs, $FAN_BIG_RATE ev/s, always"
    add_row "$s"             sd.fanbig.deliv "(streamd only)" none deliv/s
    add_row "$s, p99"        sd.fanbig.p99   "(streamd only)" none "us (lat)"
    add_row "$s, server RSS" sd.fanbig.rss   "(streamd only)" none MiB
  fi
}

# message_count of a streamd stream ("" if the info cannot be read)
sd_count() {
  local r; r=$(http GET "http://127.0.0.1:$1/stream/$2/info")
  [ "${r%% *}" = 200 ] || return 0
  sed -n 's/.*"message_count":\([0-9]*\).*/\1/p' <<<"$r"
}

# d. batch publish: BATCH_SIZE events per request, CONNS keep-alive connections
scenario_batch() {
  local stream=batch path=/stream/batch/publish payload r run n before after one
  payload=$("$PY" -c "print(('0123456789' * ($DATA_BYTES // 10 + 1))[:$DATA_BYTES])")
  ensure_redis
  if [ "$DRY" = 0 ]; then
    ensure_streamd always
    r=$(http POST "http://127.0.0.1:${SD_PORT[always]}/stream/$stream" '{"partitions":1,"retention_hours":0}')
    case ${r%% *} in 200|201|409) ;; *) die "create stream $stream on streamd (always): $r" ;; esac
    one='{"event":"bench","data":"check"}'
    r=$(http POST "http://127.0.0.1:${SD_PORT[always]}$path" "[$one,$one]")
    [ "${r%% *}" = 200 ] && [[ $r == *'"results":'* ]] || die "batch publish check on streamd: $r"
  fi
  rcli DEL "$stream" >/dev/null
  redis_fsync always

  local wrk_env=(BENCH_PATH="$path" BENCH_BATCH="$BATCH_SIZE" BENCH_DATA_BYTES="$DATA_BYTES")
  local xadd=(-P "$BATCH_PIPELINE" XADD "$stream" '*' data "$payload")
  log "batch: calibrating redis-benchmark -n for ~${DURATION}s runs"
  measure_redis "" "$CONNS" 100000 1 "${xadd[@]}"; n=$(redis_n "$LAST_RATE" 100000)
  if [ "$DRY" = 0 ] && [ "$WARMUP" != 0 ]; then
    log "batch: ${WARMUP}s warm-up"
    measure_wrk "" "${SD_PID[always]}" "http://127.0.0.1:${SD_PORT[always]}" \
      "$BENCH_DIR/batch.lua" "$THREADS" "$CONNS" "$WARMUP" "${wrk_env[@]}"
  fi

  for run in $(seq 1 "$RUNS"); do
    log "batch: round $run/$RUNS"
    if [ "$DRY" = 0 ]; then
      before=$(sd_count "${SD_PORT[always]}" "$stream")
      measure_wrk sd.batch.always "${SD_PID[always]}" "http://127.0.0.1:${SD_PORT[always]}" \
        "$BENCH_DIR/batch.lua" "$THREADS" "$CONNS" "$DURATION" "${wrk_env[@]}"
      after=$(sd_count "${SD_PORT[always]}" "$stream")
      # answered batches are in the stream; batches still in flight when
      # wrk stopped may be too (at most one per connection)
      if [ -z "$before" ] || [ -z "$after" ] || [ $((after - before)) -lt "$LAST_OPS" ] ||
         [ $((after - before)) -gt $((LAST_OPS + CONNS * BATCH_SIZE)) ]; then
        warn "batch: the stream grew by $((${after:-0} - ${before:-0})) events during a run that had $LAST_OPS acknowledged"
      fi
    fi
    measure_redis redis.xadd.batch "$CONNS" "$n" 1 "${xadd[@]}"
  done
  rcli DEL "$stream" >/dev/null

  add_row "batch publish, $BATCH_SIZE ev/req, $CONNS conns, durability=always" sd.batch.always \
    "redis XADD -P $BATCH_PIPELINE, fsync always" redis.xadd.batch events/s
}

# e. consumer groups: GROUP_CONSUMERS loops fetch GROUP_LIMIT events and ack
# them until the GROUP_EVENTS preloaded events are all acked; one new group
# per run on the same stream (both sides)
scenario_groups() {
  local stream=grp r run out g n_warm
  local ga=(-s "$stream" -n "$GROUP_CONSUMERS" -l "$GROUP_LIMIT" -o "$GROUP_EVENTS")
  build_group_clients
  ensure_redis
  if [ "$DRY" = 0 ]; then
    ensure_streamd always
    r=$(http GET "http://127.0.0.1:${SD_PORT[always]}/stream/$stream/info")
    [ "${r%% *}" = 404 ] || die "groups: stream $stream already exists on streamd: $r"
    log "groups: preloading $GROUP_EVENTS events into streamd ($GROUP_PARTITIONS partitions, batches of 1000)"
    "$PY" "$UTIL" preload-streamd 127.0.0.1 "${SD_PORT[always]}" "$stream" \
      "$GROUP_EVENTS" 1000 "$DATA_BYTES" 2 "$GROUP_PARTITIONS" >&2
  fi
  log "groups: preloading $GROUP_EVENTS entries into redis (redis-cli --pipe)"
  redis_fsync no
  out=$("$PY" "$UTIL" redis-resp "$stream" "$GROUP_EVENTS" "$DATA_BYTES" |
        rcli --pipe 2>&1) || { echo "$out" >&2; die "redis preload failed"; }
  grep -q 'errors: 0' <<<"$out" || { echo "$out" >&2; die "redis preload had errors"; }
  r=$(rcli XLEN "$stream")
  [ "$r" = "$GROUP_EVENTS" ] || die "redis XLEN $stream = $r, expected $GROUP_EVENTS"
  redis_fsync always

  # sd_group NAME: create an explicit-ack shared group reading from the start
  sd_group() {
    local r; r=$(http POST "http://127.0.0.1:${SD_PORT[always]}/stream/$stream/group/$1" \
      '{"start":"earliest","mode":"shared","ack":"explicit"}')
    [ "${r%% *}" = 201 ] || die "create group $1 on streamd: $r"
  }
  sd_group_del() { http DELETE "http://127.0.0.1:${SD_PORT[always]}/stream/$stream/group/$1" >/dev/null; }
  redis_group() { [ "$(rcli XGROUP CREATE "$stream" "$1" 0)" = OK ] || die "XGROUP CREATE $stream $1 0 failed"; }

  if [ "$WARMUP" != 0 ]; then
    n_warm=$((GROUP_EVENTS / 10 > 0 ? GROUP_EVENTS / 10 : 1))
    log "groups: warm-up, $n_warm events acked per target"
    if [ "$DRY" = 0 ]; then
      sd_group gw
      measure_group "" "${SD_PID[always]}" groupbench -p "${SD_PORT[always]}" "${ga[@]}" -g gw -e "$n_warm"
      sd_group_del gw
    fi
    redis_group gw
    measure_group "" "$REDIS_PID" redisgroup -p "$REDIS_PORT" "${ga[@]}" -g gw -e "$n_warm"
    rcli XGROUP DESTROY "$stream" gw >/dev/null
  fi

  for run in $(seq 1 "$RUNS"); do
    log "groups: round $run/$RUNS"
    g="g$run"
    if [ "$DRY" = 0 ]; then
      sd_group "$g"
      measure_group sd.groups "${SD_PID[always]}" groupbench -p "${SD_PORT[always]}" "${ga[@]}" -g "$g" -e "$GROUP_EVENTS"
      r=$("$PY" "$UTIL" group-check 127.0.0.1 "${SD_PORT[always]}" "$stream" "$g" "$GROUP_EVENTS")
      [ "$r" = ok ] || warn "groups: streamd group $g after the run: $r"
      sd_group_del "$g"
    fi
    redis_group "$g"
    measure_group redis.groups "$REDIS_PID" redisgroup -p "$REDIS_PORT" "${ga[@]}" -g "$g" -e "$GROUP_EVENTS"
    r=$(rcli XPENDING "$stream" "$g" | head -n 1)
    [ "$r" = 0 ] || warn "groups: redis group $g has $r pending entries after the run"
    rcli XGROUP DESTROY "$stream" "$g" >/dev/null
  done
  rcli DEL "$stream" >/dev/null
  [ "$DRY" = 1 ] || http DELETE "http://127.0.0.1:${SD_PORT[always]}/stream/$stream" >/dev/null

  add_row "groups, $GROUP_CONSUMERS consumers, limit $GROUP_LIMIT, explicit ack, always" sd.groups \
    "redis XREADGROUP + XACK, fsync always" redis.groups "acked/s"
}

MEM_LINES=()

# start_timed KEY: starts streamd KEY (the instance's data dir, mode and
# flags) and sets LAST_START_MS to the milliseconds from the fork/exec to
# the first 200 answer of GET /health (polled every ~5 ms with bash's
# /dev/tcp, no process started per try); LAST_START_CPU: the server's CPU
# seconds at that point.
start_timed() {
  local key=$1 port dir logf pid t0 t1 line ok=0
  port=$(freeport)
  dir="$WORK/streamd-$key"; logf="$WORK/streamd-$key.log"
  t0=$EPOCHREALTIME
  # shellcheck disable=SC2086
  "$STREAMD_BIN" --host 127.0.0.1 --port "$port" --data-dir "$dir" \
    --durability "${SD_MODE[$key]}" ${SD_FLAGS[$key]:-} $STREAMD_ARGS >"$logf" 2>&1 &
  pid=$!
  PIDS+=("$pid"); PROC_NAME[$pid]="streamd ($key)"
  SD_PID[$key]=$pid; SD_PORT[$key]=$port
  while :; do
    if { exec 3<>"/dev/tcp/127.0.0.1/$port"; } 2>/dev/null; then
      printf 'GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' >&3
      line=""
      read -r -t 10 line <&3 || true
      exec 3>&-
      [[ $line == "HTTP/1.1 200"* ]] && { ok=1; break; }
    fi
    kill -0 "$pid" 2>/dev/null || break
    awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { exit !(b - a > 120) }' && break
    sleep 0.005
  done
  t1=$EPOCHREALTIME
  [ "$ok" = 1 ] || { tail -n 20 "$logf" >&2; die "streamd ($key) not healthy within 120s of its start"; }
  LAST_START_MS=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", (b - a) * 1000 }')
  LAST_START_CPU=$(ticks_to_s "$(proc_ticks "$pid")")
}

# f. memory: (a) the RSS of streamd holding MEM_EVENTS events in MEM_STREAMS
# streams, before and with MEM_CONNS idle keep-alive connections; (b) the
# time from exec to the first successful GET /health with ~1 GiB of data,
# page cache warm, and once cold. streamd only: each row's peer is a target.
scenario_memory() {
  if [ "$DRY" = 1 ]; then
    log "memory: streamd only, nothing to measure with --dry"
    return 0
  fi
  local run i r per rss0 rss1 a0 f0 a1 f1 hold_out hpid maxc=() bytes line t_load0 t_load1 ages p keep
  local per_stream=$((MEM_EVENTS / MEM_STREAMS))
  mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
  # the connections, plus room: at max_connections new ones would get 503
  [ $((MEM_CONNS + 1000)) -gt 10000 ] && maxc=(--max-connections $((MEM_CONNS + 1000)))
  ensure_streamd mem always ${maxc[@]+"${maxc[@]}"}
  log "memory: loading $MEM_EVENTS events into $MEM_STREAMS streams ($per_stream each, batches of 1000)"
  for i in $(seq 1 "$MEM_STREAMS"); do
    "$PY" "$UTIL" preload-streamd 127.0.0.1 "${SD_PORT[mem]}" "mem$i" "$per_stream" 1000 "$DATA_BYTES" 2 >&2
  done
  read -r rss0 a0 f0 <<<"$(rss_parts "${SD_PID[mem]}")"
  MEM_LINES+=("$(printf '  %-8s RSS %s MiB (anon %s, file %s) in the process that loaded the events' \
    loaded "$(mib "$rss0")" "$(mib "$a0")" "$(mib "$f0")")")

  ensure_streamd start never
  log "memory: loading $START_EVENTS events of ${START_DATA_BYTES}-byte data for the start-up runs (durability never)"
  t_load0=$EPOCHREALTIME
  "$PY" "$UTIL" preload-streamd 127.0.0.1 "${SD_PORT[start]}" big "$START_EVENTS" 1000 "$START_DATA_BYTES" 2 >&2
  t_load1=$EPOCHREALTIME
  stop_streamd start
  SD_MODE[start]=always   # timed starts: the default durability
  bytes=$(du -sb "$WORK/streamd-start" | cut -f1)
  START_GIB=$(awk -v b="$bytes" 'BEGIN { printf "%.2f", b / 1073741824 }')
  log "memory: start-up data set: $START_GIB GiB on disk; SIGTERM exit: $(tail -n 1 "$WORK/streamd-start.log")"
  # the age of the data set at a start: streamd rebuilds its idempotency
  # window (dedup_window_ms, 2 min by default) from the records younger than
  # it, so a start-up within 2 min of the load reads all of them
  ages() { awk -v a="$t_load0" -v b="$t_load1" -v n="$EPOCHREALTIME" 'BEGIN { printf "%.0f-%.0f", n - b, n - a }'; }

  for run in $(seq 1 "$RUNS"); do
    log "memory: round $run/$RUNS"
    # (a) RSS: a fresh process on the loaded data dir, then MEM_CONNS idle
    # keep-alive connections (one GET /health each, then nothing)
    restart_streamd mem
    sleep 1
    read -r rss0 a0 f0 <<<"$(rss_parts "${SD_PID[mem]}")"
    hold_out="$WORK/hold.out"
    "$PY" "$UTIL" hold-conns 127.0.0.1 "${SD_PORT[mem]}" "$MEM_CONNS" 4 >"$hold_out" 2>&1 &
    hpid=$!
    PIDS+=("$hpid"); PROC_NAME[$hpid]=hold-conns
    for i in $(seq 1 1300); do
      grep -q '^READY' "$hold_out" && break
      kill -0 "$hpid" 2>/dev/null || break
      sleep 0.1
    done
    line=$(grep '^READY' "$hold_out" || true)
    [ -n "$line" ] || { cat "$hold_out" >&2; die "hold-conns did not get its connections ready"; }
    sleep 1
    read -r rss1 a1 f1 <<<"$(rss_parts "${SD_PID[mem]}")"
    r=0; wait "$hpid" || r=$?
    [ "$r" = 0 ] || warn "memory: hold-conns exited with status $r"
    keep=()
    for p in "${PIDS[@]}"; do [ "$p" = "$hpid" ] || keep+=("$p"); done
    PIDS=(${keep[@]+"${keep[@]}"})
    [ "$(kv "$line" failed)" = 0 ] || warn "memory: $(kv "$line" failed) of $MEM_CONNS connections failed: $(kv "$line" errors)"
    r=$(grep '^DONE' "$hold_out" || true)
    [ "$(kv "$r" closed)" = 0 ] ||
      warn "memory: the server closed $(kv "$r" closed) of the idle connections while they were held (${r:-no DONE line})"
    record_value sd.mem.idle "$(mib "$rss0")" MiB
    record_value sd.mem.conns "$(mib "$rss1")" MiB
    record_value sd.mem.idle.anon "$(mib "$a0")" MiB
    record_value sd.mem.conns.anon "$(mib "$a1")" MiB
    per=$(awk -v a="$rss0" -v b="$rss1" -v n="$(kv "$line" ok)" 'BEGIN { printf "%.1f", (n > 0 ? (b - a) / n : 0) }')
    MEM_LINES+=("$(printf '  %-8s RSS %s MiB (anon %s, file %s) -> with %s idle conns %s MiB (anon %s, file %s): +%s KiB per connection; connected in %ss' \
      "run $run" "$(mib "$rss0")" "$(mib "$a0")" "$(mib "$f0")" "$(kv "$line" ok)" "$(mib "$rss1")" "$(mib "$a1")" \
      "$(mib "$f1")" "$per" "$(kv "$line" seconds)")")
    # (b) start-up, page cache warm (the data set was written just before)
    ages=$(ages)
    start_timed start
    record_value sd.start.warm "$LAST_START_MS" ms
    read -r rss1 a1 f1 <<<"$(rss_parts "${SD_PID[start]}")"
    MEM_LINES+=("$(printf '  %-8s start-up, warm cache: %s ms, server cpu %ss; data age %s s; RSS when ready %s MiB (anon %s, file %s)' \
      "run $run" "$LAST_START_MS" "$LAST_START_CPU" "$ages" "$(mib "$rss1")" "$(mib "$a1")" "$(mib "$f1")")")
    stop_streamd start
  done
  stop_streamd mem

  if [ "$START_COLD" = 1 ]; then
    if sync && { echo 3 >/proc/sys/vm/drop_caches; } 2>/dev/null; then
      log "memory: page cache dropped (echo 3 > /proc/sys/vm/drop_caches): one cold start-up"
      ages=$(ages)
      start_timed start
      record_value sd.start.cold "$LAST_START_MS" ms
      read -r rss1 a1 f1 <<<"$(rss_parts "${SD_PID[start]}")"
      MEM_LINES+=("$(printf '  %-8s start-up after drop_caches: %s ms, server cpu %ss; data age %s s; RSS when ready %s MiB (anon %s, file %s)' \
        cold "$LAST_START_MS" "$LAST_START_CPU" "$ages" "$(mib "$rss1")" "$(mib "$a1")" "$(mib "$f1")")")
      stop_streamd start
    else
      log "memory: /proc/sys/vm/drop_caches is not writable here: no cold start-up"
      MEM_LINES+=("  cold start-up not measured: /proc/sys/vm/drop_caches is not writable")
    fi
  fi
  # every start-up should see the whole data set inside the idempotency window
  awk -v a="$t_load0" -v n="$EPOCHREALTIME" 'BEGIN { exit !(n - a > 120) }' &&
    warn "memory: the last start-up came more than 120 s after the start of the load: part of the data set had left the default 2-minute idempotency window, whose rebuild reads every record in it, so the start-up runs are not comparable"

  local s="memory, $((MEM_EVENTS / 1000))k events in $MEM_STREAMS streams" t="target RSS"
  add_target_row "$s, RSS"                           sd.mem.idle       "$t" "$MEM_TARGET_MB" MB MiB
  add_target_row "$s, RSS + $MEM_CONNS idle conns"  sd.mem.conns      "$t" "$MEM_TARGET_MB" MB MiB
  add_target_row "$s, RssAnon"                       sd.mem.idle.anon  "$t" "$MEM_TARGET_MB" MB MiB
  add_target_row "$s, RssAnon + $MEM_CONNS idle conns" sd.mem.conns.anon "$t" "$MEM_TARGET_MB" MB MiB
  s="start-up to /health, $START_GIB GiB"
  add_target_row "$s, page cache warm" sd.start.warm "target" "$START_TARGET_MS" ms ms
  [ -z "${R_RATE[sd.start.cold]:-}" ] ||
    add_target_row "$s, cold (drop_caches)" sd.start.cold "target" "$START_TARGET_MS" ms ms
}

# ---------------------------------------------------------------- report
stats3() { # "v1 v2 ..." -> "min median max"
  tr ' ' '\n' <<<"$1" | grep -v '^$' | sort -g | awk '{ a[NR] = $1 }
    END { if (NR == 0) { print "- - -"; exit }
          m = (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2
          print a[1], m, a[NR] }'
}
human() { awk -v x="$1" 'BEGIN {
  if (x == "-") { print "-"; exit }
  if (x >= 1e6) printf "%.2fM", x / 1e6; else if (x >= 1e4) printf "%.1fk", x / 1e3;
  else printf "%.0f", x }'; }
per_op() { # label -> "v v v" of cpu microseconds per op, per run
  local c o i out=""
  read -r -a c <<<"${R_CPU[$1]:-}"; read -r -a o <<<"${R_OPS[$1]:-}"
  for i in "${!c[@]}"; do
    out+="$(awk -v c="${c[$i]}" -v o="${o[$i]}" 'BEGIN { printf "%.2f", (o > 0 ? c * 1e6 / o : 0) }') "
  done
  echo "$out"
}
mmm() { # label -> "min/med/max"
  local s; read -r -a s <<<"$(stats3 "${R_RATE[$1]:-}")"
  [ "${s[0]}" = - ] && { echo "-"; return; }
  echo "$(human "${s[0]}")/$(human "${s[1]}")/$(human "${s[2]}")"
}
med() { local s; read -r -a s <<<"$(stats3 "$1")"; echo "${s[1]}"; }
fmt_cpu() { awk -v x="$1" 'BEGIN { if (x == "-") print "-"; else if (x >= 10) printf "%.0f", x; else if (x >= 1) printf "%.1f", x; else printf "%.2f", x }'; }

report() {
  local row scen sd pdesc peer unit sdm pm ratio sdcpu pcpu sdfig pfig label
  echo
  echo "streamd benchmark  $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "commit $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo none)  host $(nproc) cores, $(uname -r)"
  echo "data dir fs: $WORK_FS   runs: $RUNS x ${DURATION}s (publish, redis)   dry: $DRY"
  [[ " $SCENARIOS " == *" fanout "* ]] &&
    echo "fanout: ${FAN_SECS}s of publishing per run, $FAN_PUB_CONNS publisher conns ($FAN_BIG_PUB_CONNS for $FAN_BIG subs), ${DATA_BYTES}-byte data"
  echo "figures: min/median/max over runs; cpu: server CPU (utime+stime) per op (fanout: per delivery), us, median"
  echo "ratio: streamd median / peer median; req/s, events/s, deliv/s, acked/s: higher = streamd faster;"
  echo "       latency rows (us (lat): publish to delivery): LOWER = streamd better"
  [[ " $SCENARIOS " == *" batch "* ]] &&
    echo "batch: $BATCH_SIZE events of ${DATA_BYTES}-byte data per request; redis-benchmark -P $BATCH_PIPELINE; events/s"
  [[ " $SCENARIOS " == *" groups "* ]] &&
    echo "groups: $GROUP_EVENTS events in $GROUP_PARTITIONS partitions, acked/s = events acked per second until all are, one new group per run"
  [[ " $SCENARIOS " == *" memory "* ]] && [ "$DRY" = 0 ] &&
    echo "memory: no peer: medians held against the project's targets (MB = 10^6 bytes); RSS = VmRSS, which counts the file pages the server maps (page cache); RssAnon = what is beyond the page cache; start-up: exec to the first 200 of GET /health"
  echo
  {
    echo "scenario|streamd min/med/max|cpu us/op|peer|peer min/med/max|cpu us/op|ratio"
    for row in "${ROWS[@]}"; do
      IFS='|' read -r scen sd pdesc peer unit <<<"$row"
      if [[ $peer == target:* ]]; then # no peer: the median against a target
        local lim=${peer#target:} shown
        shown=${lim#*:}; lim=${lim%%:*}
        sdm=$(med "${R_RATE[$sd]:-}")
        ratio=$(awk -v a="$sdm" -v l="$lim" 'BEGIN { if (a == "-") print "-"; else if (a < l) print "target met"; else print "target MISSED" }')
        sdfig=$(mmm "$sd"); [ "$sdfig" = - ] || sdfig="$sdfig $unit"
        echo "$scen|$sdfig|-|$pdesc|< $shown|-|$ratio"
        continue
      fi
      sdm=$(med "${R_RATE[$sd]:-}"); pm=$(med "${R_RATE[$peer]:-}")
      ratio=$(awk -v a="$sdm" -v b="$pm" 'BEGIN { if (a == "-" || b == "-" || b == 0) print "-"; else printf (a / b < 0.1 ? "%.3fx" : "%.2fx"), a / b }')
      sdcpu=$(fmt_cpu "$(med "$(per_op "$sd")")"); pcpu=$(fmt_cpu "$(med "$(per_op "$peer")")")
      sdfig=$(mmm "$sd"); [ "$sdfig" = - ] || sdfig="$sdfig $unit"
      pfig=$(mmm "$peer"); [ "$pfig" = - ] || pfig="$pfig $unit"
      echo "$scen|$sdfig|$sdcpu|$pdesc|$pfig|$pcpu|$ratio"
    done
  } | awk -F'|' '
      { for (i = 1; i <= NF; i++) { c[NR, i] = $i; if (length($i) > w[i]) w[i] = length($i) } n = NF }
      END { for (r = 1; r <= NR; r++) {
              line = ""
              for (i = 1; i <= n; i++) line = line sprintf("%-*s", w[i], c[r, i]) (i < n ? " | " : "")
              print line
              if (r == 1) { t = 0; for (i = 1; i <= n; i++) t += w[i] + 3; s = ""; for (i = 1; i < t - 2; i++) s = s "-"; print s }
            } }'
  echo
  if [ ${#FAN_LINES[@]} -gt 0 ]; then
    echo "fanout runs (latency = delivery time - publish send time; client cpu = the client process, getrusage):"
    printf '%s\n' "${FAN_LINES[@]}"
    for label in $(printf '%s\n' "${!R_CCPU[@]}" | sort); do
      printf '  %-14s client cpu min/med/max %s s, server cpu %s s, server RSS peak %s MiB\n' "$label" \
        "$(stats3 "${R_CCPU[$label]}" | tr ' ' /)" "$(stats3 "${R_CPU[$label.deliv]:-}" | tr ' ' /)" \
        "$(stats3 "${R_RATE[$label.rss]:-}" | tr ' ' /)"
    done
    echo
  fi
  if [ ${#GROUP_LINES[@]} -gt 0 ]; then
    echo "consumer-group runs (fetch-to-ack: a fetch sent to its ack answered; client cpu = the client process):"
    printf '%s\n' "${GROUP_LINES[@]}"
    echo
  fi
  if [ ${#MEM_LINES[@]} -gt 0 ]; then
    echo "memory runs (RSS = VmRSS = RssAnon + RssFile + RssShmem of /proc/PID/status; file = mapped files, i.e. page cache mapped by the server):"
    printf '%s\n' "${MEM_LINES[@]}"
    echo
  fi
  echo "per run (figure, server cpu seconds):"
  local label r c i
  for label in $(printf '%s\n' "${!R_RATE[@]}" | sort); do
    read -r -a r <<<"${R_RATE[$label]}"; read -r -a c <<<"${R_CPU[$label]:-}"
    printf '  %-22s' "$label"
    for i in "${!r[@]}"; do
      if [ -n "${c[$i]:-}" ]; then printf '  %s (cpu %ss)' "$(human "${r[$i]}")" "${c[$i]}"
      else printf '  %s' "$(human "${r[$i]}")"; fi
    done
    echo
  done
  if [ ${#WARNINGS[@]} -gt 0 ]; then
    echo
    echo "WARNINGS (figures above may be invalid):"
    printf '  %s\n' "${WARNINGS[@]}"
  fi
}

# ---------------------------------------------------------------- main
main() {
  local s
  for s in $SCENARIOS; do
    case " $KNOWN_SCENARIOS " in *" $s "*) ;; *) die "unknown scenario '$s' (known: $KNOWN_SCENARIOS)" ;; esac
  done
  ensure_packages
  if [[ " $SCENARIOS " == *" fanout "* ]] || [[ " $SCENARIOS " == *" memory "* ]]; then
    # thousands of sockets: the soft limit up to the hard one, for the
    # servers started from here and for the clients
    local hard need=0 what=""
    [[ " $SCENARIOS " == *" fanout "* ]] && need=$((FAN_BIG + FAN_SUBS + 256)) what="fanout (BENCH_FAN_BIG)"
    [[ " $SCENARIOS " == *" memory "* ]] && [ $((MEM_CONNS + 256)) -gt "$need" ] &&
      need=$((MEM_CONNS + 256)) what="memory (BENCH_MEM_CONNS)"
    hard=$(ulimit -Hn)
    ulimit -n "$hard" || die "ulimit -n $hard failed"
    [ "$hard" = unlimited ] || [ "$hard" -ge "$need" ] ||
      die "ulimit -Hn is $hard, $what needs $need descriptors: lower it or raise the hard limit"
  fi
  [ "$DRY" = 1 ] || build_streamd
  pick_workdir
  log "work dir $WORK ($WORK_FS); scenarios: $SCENARIOS; $RUNS runs each"
  for s in $SCENARIOS; do
    log "=== scenario $s"
    "scenario_$s"
  done
  report | tee "$BUILD_DIR/bench-results.txt"
  log "table saved to build-bench/bench-results.txt"
}

main
