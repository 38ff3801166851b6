#!/usr/bin/env bash
# Installs what the project needs from the OS packages when it is missing:
# redis-server, prometheus (for promtool and the tests' Prometheus), and a
# Python >= 3.11 with venv; for `test` (the default) also docker-compose (1.29
# parses and checks docker-compose.yml without a Docker engine) and
# prometheus-alertmanager (for amtool, which checks the compose stack's
# Alertmanager config), and rabbitmq-server when nothing answers on 127.0.0.1:5672,
# which it starts, with its management plugin enabled (the RabbitMQ tests need
# both). `base` (`make demo`, `make run`) needs only the first three.
# Installs as root on Debian/Ubuntu; otherwise says exactly what to install and fails.
#
#   scripts/ensure-system-deps.sh [test|base]
set -euo pipefail

purpose=${1:-test}  # test, or base: what the demo and `make run` need
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
{ command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; } || missing+=(prometheus)
if [ "$purpose" = test ]; then
  # tests/test_compose.py validates docker-compose.yml and compose/alertmanager.yml with these.
  command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
  command -v amtool >/dev/null 2>&1 || missing+=(prometheus-alertmanager)
  if ! (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; then
    command -v rabbitmq-server >/dev/null 2>&1 || missing+=(rabbitmq-server)
  fi
fi

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

# The RabbitMQ reader's management mode, and its tests, need the management
# plugin. Enabling is idempotent, but rabbitmq-plugins takes seconds to start, so
# the plugins file is looked at first.
enable_rabbitmq_management() {
  command -v rabbitmq-plugins >/dev/null 2>&1 || return 0
  [ "$(id -u)" -eq 0 ] || return 0
  local plugins_file=${RABBITMQ_ENABLED_PLUGINS_FILE:-/etc/rabbitmq/enabled_plugins}
  grep -qs rabbitmq_management "$plugins_file" && return 0
  local enabled
  enabled=$(rabbitmq-plugins -q list -E -m 2>/dev/null || true)
  grep -qx rabbitmq_management <<<"$enabled" && return 0
  if rabbitmq-plugins -q enable rabbitmq_management >/dev/null 2>&1; then
    echo "enabled the RabbitMQ management plugin (rabbitmq_management)" >&2
  else
    echo "note: could not enable rabbitmq_management (is RabbitMQ running?); the RabbitMQ" \
      "tests need it" >&2
  fi
}
# The machine's RabbitMQ serves the RabbitMQ tests; start it if it is installed but down.
start_rabbitmq() {
  command -v rabbitmq-server >/dev/null 2>&1 || return 0
  [ "$(id -u)" -eq 0 ] || return 0
  (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null && return 0
  echo "starting rabbitmq-server" >&2
  rabbitmq-server -detached >/dev/null 2>&1 || true
  for _ in $(seq 1 60); do
    (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null && return 0
    sleep 0.5
  done
  echo "note: rabbitmq-server did not start; the RabbitMQ tests need it" >&2
}
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing from the OS packages: ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # Only the binaries are needed: the tests and the demo start their own redis-server
    # and prometheus; RabbitMQ is started below.
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "missing: ${missing[*]}" >&2
    echo "install them with: sudo apt-get install ${missing[*]}  (Python must be 3.11 or newer)" >&2
    exit 1
  fi
fi

if [ "$purpose" = test ]; then
  start_rabbitmq
  enable_rabbitmq_management
fi
