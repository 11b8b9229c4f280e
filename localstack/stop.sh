#!/usr/bin/env bash
# Stops what localstack/start.sh started, by the PIDs it recorded, and the
# demo's Redis Cluster nodes (redis-cluster-<port>.pid, flashsale cluster-up).
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
STACK_DIR="${STACK_DIR:-$here/../.stack}"
[ -d "$STACK_DIR" ] || exit 0
for f in "$STACK_DIR"/runner.pid "$STACK_DIR"/localstack.pid "$STACK_DIR"/dynamodb.pid \
         "$STACK_DIR"/redis.pid "$STACK_DIR"/redis-cluster-*.pid; do
  [ -f "$f" ] || continue
  pid="$(cat "$f")"
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
done
rm -f "$STACK_DIR/env" "$STACK_DIR/cluster.nodes"
rm -rf "$STACK_DIR/cluster"
