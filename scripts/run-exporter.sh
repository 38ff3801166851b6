#!/usr/bin/env bash
# `make run`: the exporter against a local Redis. Uses BROKER_URL (or the
# exporter's own TASKQUEUE_EXPORTER_BROKER_URL) when set; otherwise the Redis on
# 127.0.0.1:6379, starting one (no persistence) for as long as the exporter runs
# if none answers there. PORT= sets the port; EXPORTER_ARGS and the exporter's
# TASKQUEUE_EXPORTER_* variables work as they do for the exporter. Where it
# listens is printed by the exporter itself (at any --log-level), which alone knows.
set -euo pipefail
cd "$(dirname "$0")/.."

url=${BROKER_URL:-${TASKQUEUE_EXPORTER_BROKER_URL:-}}
redis_pid=""
cleanup() { [ -n "$redis_pid" ] && kill "$redis_pid" 2>/dev/null && wait "$redis_pid" 2>/dev/null; return 0; }
trap cleanup EXIT

if [ -z "$url" ]; then
  url=redis://127.0.0.1:6379/0
  if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
    mkdir -p .run
    echo "no Redis on 127.0.0.1:6379: starting one (stops with the exporter)" >&2
    redis-server --port 6379 --bind 127.0.0.1 --save "" --appendonly no \
      --dir .run --logfile "$PWD/.run/redis.log" &
    redis_pid=$!
    for _ in $(seq 100); do
      redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break
      sleep 0.1
    done
  fi
fi

# The URL reaches the exporter in its environment, not on its command line, which
# every user of the machine can read (ps): it may hold a password.
export TASKQUEUE_EXPORTER_BROKER_URL=$url
args=()
# Only when set: otherwise TASKQUEUE_EXPORTER_PORT, or the exporter's default.
[ -n "${PORT:-}" ] && args+=(--port "$PORT")
# The publish line is run in another terminal, where BROKER_URL may not be set: it
# names the URL itself, unless the URL holds a password, which is never printed
# (the URL goes to Python on stdin: printf is a builtin, off every command line).
shown=$(printf '%s' "$url" | .venv/bin/python -c \
  'import sys; from exporter.redaction import redact_url; print(redact_url(sys.stdin.read()))')
publish=".venv/bin/python scripts/publish-sample-tasks.py"
if [ "$shown" = "$url" ]; then
  publish+=" $(printf '%q' "$url")"
else
  publish+="   # reads \$BROKER_URL: set it to $shown, with the password (not shown here)"
fi
echo "try:     $publish" >&2
echo "Ctrl-C stops the exporter" >&2
# Not exec: the trap must outlive the exporter to stop the Redis it started.
# shellcheck disable=SC2086  # EXPORTER_ARGS is a list of flags
.venv/bin/taskqueue-exporter ${args[@]+"${args[@]}"} ${EXPORTER_ARGS:-} &
exporter_pid=$!
trap 'kill -TERM $exporter_pid 2>/dev/null' INT TERM
wait "$exporter_pid" || true
wait "$exporter_pid" 2>/dev/null || true
