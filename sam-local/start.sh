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
# - A Docker engine: the one that answers, else dockerd started here
#   (docker.io from apt; vfs storage, no iptables) and stopped by stop.sh.
# - The base image: public.ecr.aws/lambda/provided:al2023 when it is there
#   or can be pulled; else a stand-in built once from Debian packages
#   (debootstrap bookworm + ca-certificates), cached as a tarball.
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
apt_install() {
  log "installing $* from apt"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
target="${CARGO_TARGET_DIR:-$HOME/.cache/flashsale-target}"
sam="$TOOLS_VENV/bin/sam"
export SAM_CLI_TELEMETRY=0
case "$(uname -m)" in
  x86_64) arch=x86_64 ;;
  aarch64) arch=arm64 ;;
  *) log "sam local runs x86_64 or arm64 bootstraps, not $(uname -m)"; exit 1 ;;
esac

running() { [ -f "$STACK_DIR/$1.pid" ] && kill -0 "$(cat "$STACK_DIR/$1.pid")" 2>/dev/null; }
if running sam-api || running sam-lambda; then
  log "sam local already runs for $STACK_DIR (make stack-down first)"
  exit 1
fi

# The engine. Its own session: a Ctrl-C must leave it to stop.sh, which
# removes the containers first.
command -v dockerd >/dev/null 2>&1 || apt_install docker.io
if ! docker info >/dev/null 2>&1; then
  log "starting dockerd (vfs storage, no iptables); log: $STACK_DIR/dockerd.log"
  setsid dockerd --storage-driver=vfs --iptables=false >"$STACK_DIR/dockerd.log" 2>&1 &
  echo $! >"$STACK_DIR/dockerd.pid"
  for _ in $(seq 1 120); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
  docker info >/dev/null 2>&1 || { log "dockerd did not answer in 60 s:"; tail -n 20 "$STACK_DIR/dockerd.log" >&2; exit 1; }
fi

# The base image.
real="public.ecr.aws/lambda/provided:al2023-$arch"
# This machine's Debian release, so host-built binaries find their glibc.
suite="$( . /etc/os-release 2>/dev/null; [ "${ID:-}" = debian ] && echo "${VERSION_CODENAME:-}" )"
suite="${suite:-bookworm}"
# -r2: / is 0755 (r1 images had 0700).
stand_in="flashsale/lambda-stand-in:$suite-r2"
invoke_image=()
if docker image inspect "$real" >/dev/null 2>&1 || timeout 120 docker pull -q "$real" >/dev/null 2>&1; then
  base=real
else
  base=stand-in
  invoke_image=(--invoke-image "$stand_in")
  if ! docker image inspect "$stand_in" >/dev/null 2>&1; then
    cache="$FLASHSALE_HOME/lambda-stand-in-$suite-r2-$arch.tar"
    if [ ! -f "$cache" ]; then
      command -v debootstrap >/dev/null 2>&1 || apt_install debootstrap
      log "$real cannot be pulled; building a stand-in from Debian $suite (once, cached in $cache)"
      rootfs="$(mktemp -d -t flashsale-rootfs.XXXXXX)"
      # mktemp makes it 0700, which would become the image's / : a
      # function's sandbox user could not then read /proc.
      chmod 755 "$rootfs"
      debootstrap --variant=minbase --include=ca-certificates "$suite" "$rootfs" \
        http://deb.debian.org/debian >"$STACK_DIR/debootstrap.log" 2>&1 \
        || { tail -n 20 "$STACK_DIR/debootstrap.log" >&2; rm -rf "$rootfs"; exit 1; }
      tar -C "$rootfs" -c . | docker import \
        --change 'ENV LAMBDA_TASK_ROOT=/var/task' --change 'ENV LAMBDA_RUNTIME_DIR=/var/runtime' \
        --change 'WORKDIR /var/task' --change "LABEL flashsale.stand-in=debian-$suite" \
        - "$stand_in" >/dev/null
      rm -rf "$rootfs"
      docker save -o "$cache.tmp" "$stand_in" && mv "$cache.tmp" "$cache"
    else
      docker load -q -i "$cache" >/dev/null
    fi
  fi
fi

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
gw="$(docker network inspect bridge --format '{{range .IPAM.Config}}{{.Gateway}} {{end}}' 2>/dev/null \
  | tr ' ' '\n' | grep -m1 -E '^[0-9.]+$' || true)"
[ -n "$gw" ] || gw="$(ip -4 -o addr show docker0 2>/dev/null | awk '{print $4}' | cut -d/ -f1 || true)"
[ -n "$gw" ] || { log "no Docker bridge gateway found (docker network inspect bridge; ip addr show docker0)"; exit 1; }
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
