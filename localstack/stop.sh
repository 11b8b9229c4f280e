#!/usr/bin/env bash
# Stops what localstack/start.sh started, by the PIDs it recorded, the
# demo's Redis Cluster nodes (redis-cluster-<port>.pid, flashsale cluster-up)
# and what sam-local/start.sh started (sam local, its containers, dockerd),
# and the containers of LocalStack's Lambda.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
STACK_DIR="${STACK_DIR:-$here/../.stack}"
[ -d "$STACK_DIR" ] || exit 0
stop() { # pid files
  local f pid
  for f in "$@"; do
    [ -f "$f" ] || continue
    pid="$(cat "$f")"
    if kill -0 "$pid" 2>/dev/null; then
      kill "$pid" 2>/dev/null
      for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
      kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$f"
  done
}
stop "$STACK_DIR"/runner.pid "$STACK_DIR"/sam-api.pid "$STACK_DIR"/sam-lambda.pid
# The warm containers of those sam local processes: they mount its bootstraps.
if [ -d "$STACK_DIR/sam/bootstraps" ] && docker info >/dev/null 2>&1; then
  for d in "$STACK_DIR"/sam/bootstraps/*/; do
    ids="$(docker ps -aq --filter "volume=${d%/}")"
    [ -z "$ids" ] || docker rm -f $ids >/dev/null 2>&1
  done
fi
stop "$STACK_DIR"/localstack.pid
# LocalStack's Lambda containers (labelled by start.sh), if it left any.
if [ -f "$STACK_DIR/docker-cmd" ] && docker info >/dev/null 2>&1; then
  ids="$(docker ps -aq --filter "label=flashsale.stack=$STACK_DIR")"
  [ -z "$ids" ] || docker rm -f $ids >/dev/null 2>&1
fi
stop "$STACK_DIR"/dockerd.pid "$STACK_DIR"/dynamodb.pid \
     "$STACK_DIR"/redis.pid "$STACK_DIR"/redis-cluster-*.pid
rm -f "$STACK_DIR/env" "$STACK_DIR/sam.env" "$STACK_DIR/local.env" "$STACK_DIR/cluster.nodes"
rm -rf "$STACK_DIR/cluster"
