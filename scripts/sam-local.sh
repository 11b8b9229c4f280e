#!/usr/bin/env bash
# `make sam-local`: the local stack, the real bootstraps under `sam local`
# (start-api for HTTP, start-lambda for queues and schedules) and the runner
# invoking the latter, left running in $STACK_DIR for manual work.
# `make stack-down` stops all of it.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
export STACK_DIR="${STACK_DIR:-$root/.stack}"
bin="${CARGO_TARGET_DIR:-$HOME/.cache/flashsale-target}/debug/flashsale"
"$root/localstack/start.sh"
# shellcheck disable=SC1091
. "$STACK_DIR/env"
# Generated once per stack dir, then reused: the functions and you share them.
if [ ! -f "$STACK_DIR/local.env" ]; then
  {
    echo "export FLASHSALE_ADMIN_TOKEN=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
    echo "export FLASHSALE_PAYMENT_WEBHOOK_SECRET=whsec_$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
    echo "export FLASHSALE_INSECURE_USER_FROM_BODY=1"
    "$bin" provision
  } >"$STACK_DIR/local.env"
fi
# shellcheck disable=SC1091
. "$STACK_DIR/local.env"
if [ -f "$STACK_DIR/sam.env" ] && kill -0 "$(cat "$STACK_DIR/sam-api.pid" 2>/dev/null)" 2>/dev/null; then
  echo "[sam-local] already running" >&2
else
  "$root/sam-local/start.sh"
fi
# shellcheck disable=SC1091
. "$STACK_DIR/sam.env"
if ! kill -0 "$(cat "$STACK_DIR/runner.pid" 2>/dev/null)" 2>/dev/null; then
  FLASHSALE_HTTP_ADDR=127.0.0.1:0 "$bin" serve --invoke "$SAM_LAMBDA_URL" >"$STACK_DIR/runner.log" 2>&1 &
  echo $! >"$STACK_DIR/runner.pid"
fi
cat <<INFO
sam local is up; the runner invokes the queue and schedule functions.
  API:      $SAM_API_URL   (buyer from the body: FLASHSALE_INSECURE_USER_FROM_BODY=1)
  Lambda:   $SAM_LAMBDA_URL   (aws lambda invoke --endpoint-url ...)
  env:      for f in env local.env sam.env; do . $STACK_DIR/\$f; done
  try:      flashsale loadtest --base-url \$SAM_API_URL --buyers 100 --stock 20
  logs:     $STACK_DIR/sam-api.log, sam-lambda.log, runner.log
  stop:     make stack-down
INFO
