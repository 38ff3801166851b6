#!/usr/bin/env bash
# Installs what the project needs from the OS packages when it is missing:
# redis-server, prometheus (for promtool and the tests' Prometheus), and a
# Python >= 3.11 with venv. Installs as root on Debian/Ubuntu; otherwise says
# exactly what to install and fails.
set -euo pipefail

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
{ command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; } || missing+=(prometheus)

python=""
for candidate in python3 python3.13 python3.12 python3.11; do
  if command -v "$candidate" >/dev/null 2>&1 &&
     "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    python=$candidate
    break
  fi
done
if [ -z "$python" ]; then
  missing+=(python3)
elif ! "$python" -c 'import ensurepip, venv' >/dev/null 2>&1; then
  missing+=(python3-venv)
fi

[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing from the OS packages: ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # Only the binaries are needed: services we need are started by the tests and the demo.
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  exit 0
fi

echo "missing: ${missing[*]}" >&2
echo "install them with: sudo apt-get install ${missing[*]}  (Python must be 3.11 or newer)" >&2
exit 1
