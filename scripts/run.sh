#!/usr/bin/env bash
# Installs what is missing, builds, and starts streamd on 127.0.0.1:15500
# with its data in ./streamd-data.  Extra arguments go to streamd.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh
exec build/streamd --config config/streamd.conf "$@"
