#!/usr/bin/env bash
# Installs the Debian 12 packages streamd needs to build, when missing;
# with --test also what the tests need.
set -euo pipefail
PKGS=(build-essential cmake pkg-config libuv1-dev libmicrohttpd-dev libwslay-dev libjansson-dev
      libisal-dev nettle-dev libcmocka-dev)
if [ "${1:-}" = "--test" ]; then
  PKGS+=(python3 curl openssl chromium)
  # libFuzzer (clang's runtime) for scripts/fuzz.sh.
  PKGS+=(clang libclang-rt-14-dev)
  # Node.js runs the WebSocket and browser tests; any installed version >= 18 will do.
  command -v node >/dev/null 2>&1 || PKGS+=(nodejs)
  command -v npm >/dev/null 2>&1 || PKGS+=(npm)
fi
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
