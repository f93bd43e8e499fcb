#!/usr/bin/env bash
# bench/soak.sh: run streamd under a mixed load for a set time and check
# that RSS, open descriptors and latency stay bounded.  Not part of CI.
#
#   bench/soak.sh                    10 minutes, binary build/streamd
#   bench/soak.sh --minutes 3 -v     shorter, with a line every 10 s
#   bench/soak.sh --bin build-asan/streamd --csv /tmp/soak.csv
#
# Options are those of bench/soak.py (--help).  Exit status: 0 bounded,
# 1 a metric grows without bound, 2 the run failed.  See bench/README.md.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
if [ -z "${STREAMD_BIN:-}" ] && [ ! -x "$root/build/streamd" ]; then
  echo "soak: $root/build/streamd is missing; building it (scripts/build.sh)" >&2
  "$root/scripts/build.sh" >&2
fi
exec python3 "$here/soak.py" "$@"
