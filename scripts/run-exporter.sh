#!/usr/bin/env bash
# `make run`: the exporter against a local Redis. Uses BROKER_URL when set;
# otherwise the Redis on 127.0.0.1:6379, starting one (no persistence) for as
# long as the exporter runs if none answers there.
set -euo pipefail
cd "$(dirname "$0")/.."

port=${PORT:-9808}
url=${BROKER_URL:-}
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

echo "metrics: http://127.0.0.1:$port/metrics   (Ctrl-C stops)" >&2
echo "try:     .venv/bin/python scripts/publish-sample-tasks.py $url" >&2
# Not exec: the trap must outlive the exporter to stop the Redis it started.
.venv/bin/taskqueue-exporter --broker-url "$url" --port "$port" ${EXPORTER_ARGS:-} &
exporter_pid=$!
trap 'kill -TERM $exporter_pid 2>/dev/null' INT TERM
wait "$exporter_pid" || true
wait "$exporter_pid" 2>/dev/null || true
