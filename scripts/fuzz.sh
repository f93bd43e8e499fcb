#!/usr/bin/env bash
# Builds the libFuzzer harnesses of tests/fuzz into build-fuzz/ (clang,
# ASan + UBSan) and runs each for a bounded time, one after the other.
# Each starts from a scratch copy of its committed corpus
# (tests/fuzz/corpus/<harness>/) and extends that copy; set
# FUZZ_CORPUS_OUT=DIR to keep the extended corpora.  Crashing inputs are
# copied to build-fuzz/crashes/.
#   scripts/fuzz.sh [seconds-per-harness] [harness ...]   (default 60 s, all)
#   scripts/fuzz.sh 3600                                   (nightly)
set -uo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
shift || true
harnesses=("$@")
[ ${#harnesses[@]} -gt 0 ] || harnesses=(fuzz_http fuzz_publish fuzz_segment fuzz_ws fuzz_jcheck)
declare -A max_len=([fuzz_http]=4096 [fuzz_publish]=8192 [fuzz_segment]=12288 [fuzz_ws]=4096 [fuzz_jcheck]=4096)

CC=clang cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSTREAMD_FUZZ=ON -DSTREAMD_TESTS=OFF >/dev/null || exit 1
cmake --build build-fuzz -j"$(nproc)" >/dev/null || { cmake --build build-fuzz 2>&1 | tail -n 30; exit 1; }

# Segment files and data directories go to memory when it can be had:
# the harnesses sync files, which a tmpfs (of 1 GiB free or more) makes cheap.
root=${TMPDIR:-/tmp}
if [ -d /dev/shm ] && [ -w /dev/shm ] && [ "$(df -Pk /dev/shm | awk 'NR == 2 { print $4 }')" -ge 1048576 ]; then
  root=/dev/shm
fi
scratch=$(mktemp -d "$root/streamd-fuzz.XXXXXX") || exit 1
trap 'rm -rf "$scratch"' EXIT
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"

failed=0
for h in "${harnesses[@]}"; do
  bin="$PWD/build-fuzz/tests/fuzz/$h"
  dict=()
  [ -f "tests/fuzz/$h.dict" ] && dict=(-dict="$PWD/tests/fuzz/$h.dict")
  w="$scratch/$h"
  mkdir -p "$w/corpus" "$w/tmp"
  cp tests/fuzz/corpus/"$h"/* "$w/corpus/"
  seeds=$(ls "$w/corpus" | wc -l)
  start=$(date +%s)
  # One fuzzing process at a time; the harness's own data lives in $w/tmp.
  (cd "$w" && TMPDIR="$w/tmp" "$bin" -max_total_time="$secs" -max_len="${max_len[$h]:-4096}" -timeout=30 \
    -rss_limit_mb=2560 -print_final_stats=1 "${dict[@]}" corpus >"$w/log" 2>&1)
  rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$w/log")
  echo "$h: ${execs:-?} executions in $(( $(date +%s) - start )) s, corpus $seeds -> $(ls "$w/corpus" | wc -l) inputs"
  if [ -n "${FUZZ_CORPUS_OUT:-}" ]; then
    mkdir -p "$FUZZ_CORPUS_OUT/$h" && cp "$w/corpus/"* "$FUZZ_CORPUS_OUT/$h/"
  fi
  if [ $rc -ne 0 ]; then
    failed=1
    mkdir -p build-fuzz/crashes
    cp "$w"/crash-* "$w"/leak-* "$w"/timeout-* "$w"/oom-* build-fuzz/crashes/ 2>/dev/null
    echo "FAILED: $h (exit $rc); inputs in build-fuzz/crashes/:"
    ls build-fuzz/crashes/
    grep -v 'sync of directory' "$w/log" | tail -n 60
  fi
done
exit $failed
