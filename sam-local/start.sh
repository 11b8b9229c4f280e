#!/usr/bin/env bash
# Runs the real bootstraps under `sam local` against the local stack:
# `sam local start-api` (the HTTP routes) and `sam local start-lambda` (the
# queue consumers and scheduled functions, invoked by `flashsale serve
# --invoke`), each with warm containers.
#
# Expects the stack's env, the provision exports and the secrets
# (FLASHSALE_ADMIN_TOKEN, FLASHSALE_PAYMENT_WEBHOOK_SECRET) in the
# environment, and STACK_DIR. Writes $STACK_DIR/sam.env (SAM_API_URL,
# SAM_LAMBDA_URL); localstack/stop.sh stops what this started, by PID.
#
# - Docker and the base image: localstack/docker.sh.
# - The bootstraps: with the real image, cargo-lambda's x86_64/arm64 release
#   builds (make build-<arch>); with the stand-in, this machine's debug build
#   (same glibc). SAM_BOOTSTRAPS=lambda|host overrides.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
# shellcheck source=localstack/env.sh
. "$root/localstack/env.sh"
: "${STACK_DIR:?run through localstack/with-stack.sh or set STACK_DIR}"
log() { printf '[sam-local] %s\n' "$*" >&2; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# shellcheck source=localstack/docker.sh
. "$root/localstack/docker.sh"
target="${CARGO_TARGET_DIR:-$HOME/.cache/flashsale-target}"
sam="$TOOLS_VENV/bin/sam"
export SAM_CLI_TELEMETRY=0
arch="$(lambda_arch)"

running() { [ -f "$STACK_DIR/$1.pid" ] && kill -0 "$(cat "$STACK_DIR/$1.pid")" 2>/dev/null; }
if running sam-api || running sam-lambda; then
  log "sam local already runs for $STACK_DIR (make stack-down first)"
  exit 1
fi

docker_engine
lambda_image
base="$LAMBDA_BASE"
invoke_image=()
[ "$base" = real ] || invoke_image=(--invoke-image "$LAMBDA_IMAGE")

mode="${SAM_BOOTSTRAPS:-$([ "$base" = real ] && echo lambda || echo host)}"
case "$mode" in
  host) binaries="$target/debug" ;;
  lambda)
    binaries="$target/lambda/$arch"
    [ -x "$binaries/deduct/bootstrap" ] || make -C "$root" "build-$arch" >&2 ;;
  *) log "SAM_BOOTSTRAPS must be host or lambda, not $mode"; exit 1 ;;
esac

# The containers reach the host at the bridge's gateway, not at loopback:
# sam local leaves them on the default bridge whatever --docker-network says.
gw="$(bridge_gateway)"
# Redis listens there too, for the containers (LocalStack's gateway and
# DynamoDB Local listen on every address already: ss -ltnp), behind the
# stack's password (in FLASHSALE_REDIS_URL; REDISCLI_AUTH for redis-cli).
redis-cli -p "$REDIS_PORT" config set bind "127.0.0.1 $gw" >/dev/null
(
  for v in FLASHSALE_REDIS_URL AWS_ENDPOINT_URL_SQS AWS_ENDPOINT_URL_DYNAMODB \
           AWS_ENDPOINT_URL_SSM FLASHSALE_ORDERS_QUEUE_URL; do
    export "$v=${!v//127.0.0.1/$gw}"
  done
  rm -rf "$STACK_DIR/sam"
  "$target/debug/flashsale" sam-local-files --template "$root/template.yaml" \
    --env-file "$here/env.json" --binaries "$binaries" --layout "$mode" --out "$STACK_DIR/sam"
)

api_port="${SAM_API_PORT:-$(free_port)}"
lambda_port="${SAM_LAMBDA_PORT:-$(free_port)}"
common=(--env-vars "$STACK_DIR/sam/env.json" --warm-containers EAGER --host 127.0.0.1
        --skip-pull-image "${invoke_image[@]}")
log "bootstraps: $mode ($binaries); base image: $base; starting sam local (logs: $STACK_DIR/sam-api.log, sam-lambda.log)"
started=$(date +%s%N)
"$sam" local start-api -t "$STACK_DIR/sam/api.json" --port "$api_port" "${common[@]}" \
  >"$STACK_DIR/sam-api.log" 2>&1 &
echo $! >"$STACK_DIR/sam-api.pid"
"$sam" local start-lambda -t "$STACK_DIR/sam/events.json" --port "$lambda_port" "${common[@]}" \
  >"$STACK_DIR/sam-lambda.log" 2>&1 &
echo $! >"$STACK_DIR/sam-lambda.pid"

# Up when a function answers through start-api (a 404 from the product
# page) and start-lambda answers at all (its own 404 for an unknown function;
# it listens once its containers are warm).
for _ in $(seq 1 600); do
  api="$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$api_port/api/flash-sale/products/none" || true)"
  lam="$(curl -s -o /dev/null -w '%{http_code}' -X POST -d '{}' \
    "http://127.0.0.1:$lambda_port/2015-03-31/functions/none/invocations" || true)"
  [ "$api" = 404 ] && [ "$lam" = 404 ] && break
  for p in sam-api sam-lambda; do
    kill -0 "$(cat "$STACK_DIR/$p.pid")" 2>/dev/null || { log "$p exited:"; tail -n 20 "$STACK_DIR/$p.log" >&2; exit 1; }
  done
  sleep 0.5
done
[ "$api" = 404 ] && [ "$lam" = 404 ] || { log "sam local did not come up in 300 s (api: $api, lambda: $lam)"; exit 1; }
up_ms=$(( ($(date +%s%N) - started) / 1000000 ))
cat >"$STACK_DIR/sam.env" <<ENV
export SAM_API_URL=http://127.0.0.1:$api_port
export SAM_LAMBDA_URL=http://127.0.0.1:$lambda_port
export SAM_UP_MS=$up_ms
ENV
log "up in $up_ms ms: API http://127.0.0.1:$api_port, Lambda http://127.0.0.1:$lambda_port"
