#!/usr/bin/env bash
# Prints the first Python >= 3.11 on PATH.
for candidate in python3 python3.13 python3.12 python3.11; do
  if command -v "$candidate" >/dev/null 2>&1 &&
     "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "$candidate"
    exit 0
  fi
done
echo "no Python 3.11 or newer found: run scripts/ensure-system-deps.sh" >&2
exit 1
