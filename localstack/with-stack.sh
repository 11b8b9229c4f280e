#!/usr/bin/env bash
# Runs a command against a fresh local stack: starts it (free ports, its own
# state dir), exports its endpoints, runs "$@", and stops it by PID whatever
# happens. Used by `make test` and `make demo`.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
export STACK_DIR="${STACK_DIR:-$(mktemp -d -t flashsale-stack.XXXXXX)}"
trap '"$here/stop.sh"' EXIT INT TERM
"$here/start.sh"
# shellcheck disable=SC1091
. "$STACK_DIR/env"
"$@"
