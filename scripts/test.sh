#!/usr/bin/env bash
# Installs what is missing, builds twice (plain, and ASan + UBSan), and runs
# every test against each build: the cmocka unit tests and the integration
# tests that drive the real binary over real sockets; then a bounded
# libFuzzer run of each harness in tests/fuzz (scripts/fuzz.sh).
set -uo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test || exit 1
passed=0
failed=0
run() {
  local name=$1
  shift
  echo "=== $name"
  if "$@"; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
    echo "FAILED: $name"
  fi
}
websocket() {
  (cd tests/ws && npm ci --silent --no-audit --no-fund >/dev/null && STREAMD_BIN="$OLDPWD/$1/streamd" node --test --test-concurrency=1 . 2>&1 | tail -n "${STREAMD_TEST_TAIL:-60}"; exit "${PIPESTATUS[0]}")
}
integration() {
  STREAMD_BIN="$1/streamd" python3 -m unittest discover -s tests/integration -t tests/integration -v 2>&1 | tail -n "${STREAMD_TEST_TAIL:-60}"
  return "${PIPESTATUS[0]}"
}

run "build" scripts/build.sh
run "unit tests" ctest --test-dir build --output-on-failure
run "integration tests" integration build
run "websocket and browser tests" websocket build

export ASAN_OPTIONS="abort_on_error=1:detect_leaks=1:strict_string_checks=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
run "build (asan+ubsan)" scripts/build.sh asan
run "unit tests (asan+ubsan)" ctest --test-dir build-asan --output-on-failure
run "integration tests (asan+ubsan)" integration build-asan
run "websocket and browser tests (asan+ubsan)" websocket build-asan
# libFuzzer, one harness at a time (4 x STREAMD_FUZZ_SECONDS, default 45 s).
run "fuzzing" scripts/fuzz.sh "${STREAMD_FUZZ_SECONDS:-45}"

echo "summary: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
