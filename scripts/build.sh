#!/usr/bin/env bash
# Builds streamd into build/ (or build-asan/ with "asan": ASan + UBSan).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "asan" ]; then
  cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DSTREAMD_SANITIZE=ON >/dev/null
  cmake --build build-asan -j"$(nproc)"
else
  cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
  cmake --build build -j"$(nproc)"
fi
