#!/usr/bin/env bash
# Runs a command against a fresh local stack: starts it (free ports, its own
# state dir), exports its endpoints, runs "$@", and stops it by PID whatever
# happens. Used by `make test` and `make demo`.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
own_dir=""
if [ -z "${STACK_DIR:-}" ]; then
  STACK_DIR="$(mktemp -d -t flashsale-stack.XXXXXX)"
  own_dir="$STACK_DIR"
fi
export STACK_DIR
# A temporary state dir is removed after a run that succeeded (each holds
# logs, emulator state and, after sam local, copies of the bootstraps: runs
# would otherwise fill the disk); after a failure it stays for its logs.
finish() {
  local rc=$?
  "$here/stop.sh"
  if [ -n "$own_dir" ]; then
    if [ "$rc" -eq 0 ]; then rm -rf "$own_dir"; else echo "[stack] logs kept in $own_dir" >&2; fi
  fi
  return "$rc"
}
trap finish EXIT
trap 'exit 130' INT TERM
"$here/start.sh"
# shellcheck disable=SC1091
. "$STACK_DIR/env"
"$@"
