#!/usr/bin/env bash
# Stops what localstack/start.sh started, by the PIDs it recorded.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
STACK_DIR="${STACK_DIR:-$here/../.stack}"
[ -d "$STACK_DIR" ] || exit 0
for name in runner localstack dynamodb redis; do
  f="$STACK_DIR/$name.pid"
  [ -f "$f" ] || continue
  pid="$(cat "$f")"
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
done
rm -f "$STACK_DIR/env"
