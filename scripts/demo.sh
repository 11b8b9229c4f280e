#!/usr/bin/env bash
# The demo sale: provisions queues and table, starts the local runner in the
# background, runs `flashsale loadtest --summary` against it. Expects the stack's env
# (run through localstack/with-stack.sh). The last line is the SUMMARY.
# CHAOS=1 injects faults into every port (the lifecycle's writes lose their
# answers, releases crash between their DynamoDB and Redis steps), pays
# within 50 ms of deadlines, and runs the sale on a real Redis Cluster whose
# product primary fails over mid-sale to a replica that missed its last
# writes; the books must still balance.
# After the sale (RUNTIME=process, CROWD=0 skips it), a crowd meets the
# waiting room at a throttled local edge: its `crowd:` line.
# RUNTIME=sam runs the same sale through the real bootstraps: HTTP through
# `sam local start-api`, queues and schedules invoked through `sam local
# start-lambda` by the runner (sam-local/start.sh).
# RUNTIME=localstack deploys template.yaml into LocalStack
# (localstack/deploy.sh): its Lambda runs the functions, its event source
# mappings feed them the queues and its rules the schedules; `flashsale
# gateway` stands in for the HTTP API. Beside the sale, two messages take
# LocalStack's failure path: a poison one (parked, redriven, parked again)
# and an admitted order of a product whose placements the consumer is made
# to fail (compensated, its unit back on sale).
set -euo pipefail
bin="${CARGO_TARGET_DIR:-target}/debug/flashsale"
addr="${FLASHSALE_HTTP_ADDR:-127.0.0.1:3000}"
export FLASHSALE_HTTP_ADDR="$addr"
export FLASHSALE_INSECURE_USER_FROM_BODY=1
export FLASHSALE_ADMIN_TOKEN="${FLASHSALE_ADMIN_TOKEN:-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')}"
export FLASHSALE_SWEEP_EVERY_MS="${FLASHSALE_SWEEP_EVERY_MS:-1000}"
export FLASHSALE_EXPIRE_EVERY_MS="${FLASHSALE_EXPIRE_EVERY_MS:-500}"
export FLASHSALE_PAYMENT_WEBHOOK_SECRET="${FLASHSALE_PAYMENT_WEBHOOK_SECRET:-whsec_$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')}"
visibility=30
# The whole lifecycle: a 5 s payment window; winners pay, cancel or walk
# away, and later waves of the losers buy what comes back.
payment_window=5
args=(--base-url "http://$addr" --after-sale)
runtime="${RUNTIME:-process}"
case "$runtime" in
  process|sam|localstack) ;;
  *) echo "RUNTIME must be process, sam or localstack, not $runtime" >&2; exit 2 ;;
esac
if [ "$runtime" != process ] && [ "${CHAOS:-0}" = 1 ]; then
  # Its nodes announce loopback addresses, which the containers cannot reach.
  echo "CHAOS=1 runs in process only (RUNTIME=process): the demo's Redis Cluster is not reachable from the functions' containers" >&2
  exit 2
fi
if [ "${CHAOS:-0}" = 1 ]; then
  export FLASHSALE_FAULTS="${FLASHSALE_FAULTS:-store.put:0.05,queue.send:0.02,consumer.crash_after_write:0.01,store.lifecycle_reply_lost:0.05,release.crash_mid:0.1}"
  export FLASHSALE_SWEEP_AFTER_MS="${FLASHSALE_SWEEP_AFTER_MS:-3000}"
  # Beyond 2 s visibility x 5 receives.
  export FLASHSALE_RESEND_AFTER_MS="${FLASHSALE_RESEND_AFTER_MS:-15000}"
  visibility=2
  eval "$("$bin" cluster-up --dir "$STACK_DIR")"
  # DynamoDB's per-item limits, scaled to the emulator (tools::capacity):
  # 40 WCU/s per item, transactions holding their items 20 ms. The sale's
  # ledger is 4 shards, so conflicts and throttles hit placements, payments
  # and releases alike.
  export FLASHSALE_DYNAMODB_CAPACITY="${FLASHSALE_DYNAMODB_CAPACITY:-wcu=40,hold_ms=20}"
  # The rush spread over 3 s; the product's primary stops replicating once
  # a tenth of the stock is admitted (admissions still being acknowledged)
  # and fails over 700 ms later, losing what it acknowledged meanwhile; a
  # failover that loses nothing fails the demo.
  args+=(--ramp-ms 3000 --failover-after-ms 0 --failover-after-admitted "$(( ${DEMO_STOCK:-100} / 10 ))"
    --pay-near-deadline-ms 50 --ledger-shards 4)
  echo "chaos: FLASHSALE_FAULTS=$FLASHSALE_FAULTS, Redis Cluster failover losing acknowledged writes mid-sale" >&2
fi
serve=(serve)
# EDGE=1: the sale's buyers go through the local edge (issue 32): the edge
# function in front of the runner, reading the local KeyValueStore the
# edge publisher writes. The summary says edge=on and what it answered.
edge_addr=
if [ "${EDGE:-0}" = 1 ]; then
  if [ "$runtime" = sam ]; then
    echo "EDGE=1 runs with RUNTIME=process or localstack (the edge sits in front of the local runner or flashsale gateway)" >&2
    exit 2
  fi
  edge_addr="${FLASHSALE_EDGE_ADDR:-127.0.0.1:3100}"
fi
if [ "$runtime" = localstack ]; then
  # shellcheck source=localstack/env.sh
  . "$(dirname "$0")/../localstack/env.sh"
  VISIBILITY_TIMEOUT=2 "$(dirname "$0")/../localstack/deploy.sh"
  # shellcheck disable=SC1091
  . "$STACK_DIR/deployed.env"
  serve=(gateway --targets "$STACK_DIR/deploy/targets.json")
  # The placement-failure drill's product: the deployed consumer fails
  # every placement of it (shared::faults), so its one order takes the
  # orders queue's redrive to the DLQ and compensation.
  drill_product="drill-$(date +%s)"
  aws=("$LOCALSTACK_VENV/bin/aws" --region "$AWS_REGION" --endpoint-url "$AWS_ENDPOINT_URL")
  consumer_env=$("${aws[@]}" lambda get-function-configuration --function-name "$FLASHSALE_FUNCTION_ORDER_CONSUMER" \
    --query Environment --output json | python3 -c 'import json, sys
env = json.load(sys.stdin) or {"Variables": {}}
env["Variables"]["FLASHSALE_FAULTS"] = "place.fail_product:" + sys.argv[1]
print(json.dumps(env))' "$drill_product")
  "${aws[@]}" lambda update-function-configuration --function-name "$FLASHSALE_FUNCTION_ORDER_CONSUMER" \
    --environment "$consumer_env" >/dev/null
  "${aws[@]}" lambda wait function-updated --function-name "$FLASHSALE_FUNCTION_ORDER_CONSUMER"
  # Each call crosses LocalStack and a container: a 5 s window would expire
  # orders whose payments are on their way (refund_due), and the expirer's
  # schedule is a minute there anyway.
  payment_window=20
else
  eval "$("$bin" provision --visibility-timeout "$visibility")"
fi
if [ "$runtime" = sam ]; then
  "$(dirname "$0")/../sam-local/start.sh"
  # shellcheck disable=SC1091
  . "$STACK_DIR/sam.env"
  serve+=(--invoke "$SAM_LAMBDA_URL")
  args[1]="$SAM_API_URL"
fi
"$bin" "${serve[@]}" ${edge_addr:+--edge "$edge_addr"} >"$STACK_DIR/runner.log" 2>&1 &
echo $! >"$STACK_DIR/runner.pid"
for _ in $(seq 1 100); do
  if [ "$runtime" = localstack ]; then
    # The gateway answers 404 there: listening is enough.
    curl -sS -o /dev/null "http://$addr/health" >/dev/null 2>&1 && break
  else
    curl -fsS "http://$addr/health" >/dev/null 2>&1 && break
  fi
  kill -0 "$(cat "$STACK_DIR/runner.pid")" 2>/dev/null || { tail -n 20 "$STACK_DIR/runner.log" >&2; exit 1; }
  sleep 0.1
done
if [ -n "$edge_addr" ]; then
  for _ in $(seq 1 100); do
    curl -fsS "http://$edge_addr/_edge/stats" >/dev/null 2>&1 && break
    kill -0 "$(cat "$STACK_DIR/runner.pid")" 2>/dev/null || { tail -n 20 "$STACK_DIR/runner.log" >&2; exit 1; }
    sleep 0.1
  done
  args[1]="http://$edge_addr"
fi
[ "${DEMO_BUYERS:-}" ] && args+=(--buyers "$DEMO_BUYERS")
[ "${DEMO_STOCK:-}" ] && args+=(--stock "$DEMO_STOCK")
echo "runner log: $STACK_DIR/runner.log" >&2
parked() { "$bin" parked 2>&1 >/dev/null | awk '/parked message/ {print $1}'; }
wait_parked() { # count, seconds
  for _ in $(seq 1 "$2"); do [ "$(parked)" = "$1" ] && return 0; sleep 1; done
  echo "the parking lot holds $(parked) message(s), not $1, after $2 s" >&2
  return 1
}
if [ "$runtime" = localstack ]; then
  # The failure path, all of it LocalStack's: a message nobody can read
  # fails in order-consumer until the orders queue's redrive policy moves
  # it to the DLQ, fails in compensation until the DLQ's moves it to the
  # parking lot; checked after the sale (it runs meanwhile).
  poison_sent=$(date +%s)
  "${aws[@]}" sqs send-message --queue-url "$FLASHSALE_ORDERS_QUEUE_URL" --message-body "not an order" >/dev/null
  # ... and an admitted order whose placement fails, during the sale.
  "$bin" compensation-drill --base-url "http://$addr" --product "$drill_product" >"$STACK_DIR/drill.txt" 2>&1 &
  drill_pid=$!
  # Not left polling a stopped stack when the sale fails.
  trap 'kill "$drill_pid" 2>/dev/null || true' EXIT
fi
"$bin" loadtest --summary --payment-window-secs "$payment_window" --report "$STACK_DIR/loadtest.json" --chart "$STACK_DIR/loadtest.png" "${args[@]}" \
  | tee "$STACK_DIR/summary.txt"
# Balanced books alone would also hold for a sale in which nothing got
# through (every admission compensated): the demo must have sold.
case " $(grep '^SUMMARY' "$STACK_DIR/summary.txt" | tail -n 1) " in
  *" placed=0 "* | *" paid=0 "*)
    echo "the sale placed or paid nothing: see $STACK_DIR/runner.log${SAM_API_URL:+ and sam-*.log}" >&2
    exit 1 ;;
esac
# Through the edge, a sale that sells out must have been refused there too:
# an edge that answered nothing proves nothing.
case " $(grep '^SUMMARY' "$STACK_DIR/summary.txt" | tail -n 1) " in
  *" edge=on answered_at_edge=0 "*)
    echo "the edge answered no buy itself (is the publisher writing? see $STACK_DIR/runner.log)" >&2
    exit 1 ;;
esac
if [ "$runtime" = localstack ]; then
  wait "$drill_pid" || { cat "$STACK_DIR/drill.txt" >&2; exit 1; }
  echo "failure path: $(tail -n 1 "$STACK_DIR/drill.txt") (an admitted order whose placement always fails: orders queue, DLQ, compensation)" >&2
  wait_parked 1 120
  parked_after=$(( $(date +%s) - poison_sent ))
  # ... and `flashsale redrive` (StartMessageMoveTask) gives it back to
  # compensation, which parks it again.
  "$bin" redrive 2>/dev/null
  redriven=$(date +%s)
  wait_parked 0 30
  wait_parked 1 120
  echo "failure path: poison parked ${parked_after} s after it was sent (orders queue, DLQ, compensation); redriven and parked again in $(( $(date +%s) - redriven )) s" >&2
fi
if [ "${CHAOS:-0}" = 1 ]; then
  # What the capacity decorator refused (the runner's counters).
  curl -fsS "http://$addr/metrics" | grep '^flashsale_capacity_refused_total' >&2 || true
fi
# The waiting room (issue 33): a crowd of ten times what a throttled origin
# takes, through the room and then without it, on its own runner and edge
# beside this one's (docs/benchmarks.md, figure 15). Fails if the crowd
# oversold or its books do not balance.
if [ "$runtime" = process ] && [ "${CHAOS:-0}" != 1 ] && [ "${CROWD:-1}" = 1 ]; then
  "$bin" crowd | tee -a "$STACK_DIR/summary.txt"
fi
