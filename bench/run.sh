#!/usr/bin/env bash
# bench/run.sh: streamd benchmarks, each figure a ratio against a peer
# (nginx, Redis) measured in the same run, on the same machine, interleaved.
# Not part of CI. See bench/README.md.
#
#   bench/run.sh                      all scenarios
#   bench/run.sh publish              one scenario (publish, catchup, fanout)
#   bench/run.sh --dry                peers only: no build, no streamd
#
# Environment (defaults in brackets):
#   BENCH_RUNS [3]            measured runs per target
#   BENCH_DURATION [5]        seconds per measured run (publish, Redis runs)
#   BENCH_WARMUP [1]          unmeasured warm-up seconds per target, 0 = none
#   BENCH_SCENARIOS           default list of scenarios ["publish catchup"]
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
#   STREAMD_BIN               use this binary instead of building one
#   STREAMD_ARGS              extra streamd flags, e.g. "--segment-bytes 67108864"
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$BENCH_DIR/.." && pwd)
BUILD_DIR="$REPO/build-bench"

RUNS=${BENCH_RUNS:-3}
DURATION=${BENCH_DURATION:-5}
WARMUP=${BENCH_WARMUP:-1}
SCENARIOS=${BENCH_SCENARIOS:-"publish catchup fanout"}
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
  if [[ " $SCENARIOS " == *" fanout "* ]]; then
    # the fan-out clients (bench/wsfan.c, bench/redisfan.c), built with gcc
    command -v gcc >/dev/null || missing+=(gcc libc6-dev)
    [ -e /usr/include/uv.h ] || missing+=(libuv1-dev)
    [ -e /usr/include/wslay/wslay.h ] || missing+=(libwslay-dev)
    [ -e /usr/include/nettle/sha1.h ] || missing+=(nettle-dev)
    [ -e /usr/include/hiredis/adapters/libuv.h ] || missing+=(libhiredis-dev)
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
declare -A SD_PORT=() SD_PID=()
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

# ensure_streamd MODE: one instance per durability mode, each with its own
# data dir; both stay up (idle when not measured) so that runs interleave.
ensure_streamd() {
  local mode=$1 port dir logf pid
  [ -n "${SD_PID[$mode]:-}" ] && return 0
  port=$(freeport)
  dir="$WORK/streamd-$mode"
  logf="$WORK/streamd-$mode.log"
  mkdir -p "$dir"
  local extra=() maxc=$((FAN_BIG + FAN_SUBS + 1000))
  # fanout's FAN_BIG subscribers and the publishers may not fit in the
  # default max_connections (10000); at the limit new connections hang
  if [[ " $SCENARIOS " == *" fanout "* ]] && [ "$maxc" -gt 10000 ]; then
    extra=(--max-connections "$maxc")
  fi
  # shellcheck disable=SC2086
  "$STREAMD_BIN" --host 127.0.0.1 --port "$port" --data-dir "$dir" \
    --durability "$mode" ${extra[@]+"${extra[@]}"} $STREAMD_ARGS >"$logf" 2>&1 &
  pid=$!
  PIDS+=("$pid"); PROC_NAME[$pid]="streamd ($mode)"
  wait_until 30 "streamd ($mode)" "$pid" grep -q "listening on" "$logf"
  wait_until 10 "streamd ($mode) /health" "$pid" http_ok "http://127.0.0.1:$port/health"
  SD_PORT[$mode]=$port; SD_PID[$mode]=$pid
  log "streamd --durability $mode: pid $pid, port $port, data $dir"
}

# restart_streamd MODE: a fresh process on the same data dir (the fan-out
# runs measure the server's RSS, which a previous run's freed heap inflates)
restart_streamd() {
  local mode=$1 pid=${SD_PID[$1]:-} p keep=()
  if [ -n "$pid" ]; then
    stop_proc "$pid"
    for p in "${PIDS[@]}"; do [ "$p" = "$pid" ] || keep+=("$p"); done
    PIDS=(${keep[@]+"${keep[@]}"})
    unset 'SD_PID[$mode]' 'SD_PORT[$mode]'
  fi
  ensure_streamd "$mode"
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

vmrss_kib() { awk '/^VmRSS:/ { print $2 }' /proc/"$1"/status 2>/dev/null || echo 0; }

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

# ---------------------------------------------------------------- scenarios
# Each scenario_NAME starts what it needs (ensure_*), measures each target
# BENCH_RUNS times, interleaving targets within a round, and declares its
# table rows with add_row. Add a scenario: write scenario_NAME, add NAME to
# the default list and to bench/README.md.
KNOWN_SCENARIOS="publish catchup fanout"

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
scenario_catchup() {
  local stream=catchup out r
  ensure_redis
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
  local wrk_env=(CATCHUP_PATH="/stream/$stream/consume/bench-reader"
                 CATCHUP_LIMIT="$CATCHUP_LIMIT" CATCHUP_EVENTS="$CATCHUP_EVENTS")
  log "catchup: calibrating redis-benchmark -n"
  measure_redis "" 1 200 "$CATCHUP_LIMIT" "${xrange[@]}"
  local n; n=$(redis_n "$LAST_RATE" 200)
  if [ "$DRY" = 0 ] && [ "$WARMUP" != 0 ]; then
    log "catchup: one unmeasured read of the whole stream (warm-up)"
    measure_wrk "" "${SD_PID[interval]}" "http://127.0.0.1:${SD_PORT[interval]}" \
      "$BENCH_DIR/catchup.lua" 1 1 "$CATCHUP_MAX_SECS" "${wrk_env[@]}"
  fi

  local run
  for run in $(seq 1 "$RUNS"); do
    log "catchup: round $run/$RUNS"
    if [ "$DRY" = 0 ]; then
      measure_wrk sd.catchup "${SD_PID[interval]}" "http://127.0.0.1:${SD_PORT[interval]}" \
        "$BENCH_DIR/catchup.lua" 1 1 "$CATCHUP_MAX_SECS" "${wrk_env[@]}"
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
  echo "ratio: streamd median / peer median; req/s, events/s, deliv/s: higher = streamd faster;"
  echo "       latency rows (us (lat): publish to delivery): LOWER = streamd better"
  echo
  {
    echo "scenario|streamd min/med/max|cpu us/op|peer|peer min/med/max|cpu us/op|ratio"
    for row in "${ROWS[@]}"; do
      IFS='|' read -r scen sd pdesc peer unit <<<"$row"
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
  if [[ " $SCENARIOS " == *" fanout "* ]]; then
    # thousands of sockets: the soft limit up to the hard one, for the
    # servers started from here and for the clients
    local hard need=$((FAN_BIG + FAN_SUBS + 256))
    hard=$(ulimit -Hn)
    ulimit -n "$hard" || die "ulimit -n $hard failed"
    [ "$hard" = unlimited ] || [ "$hard" -ge "$need" ] ||
      die "ulimit -Hn is $hard, fanout needs $need descriptors: lower BENCH_FAN_BIG or raise the hard limit"
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
