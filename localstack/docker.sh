# Docker for the functions' containers (sam local, LocalStack's Lambda),
# sourced by sam-local/start.sh and localstack/start.sh. Expects STACK_DIR,
# FLASHSALE_HOME and a log function.
#
# - docker_engine: the engine that answers, else dockerd started here
#   (docker.io from apt; vfs storage, no iptables), its PID in
#   $STACK_DIR/dockerd.pid for stop.sh.
# - lambda_image: sets LAMBDA_BASE (real|stand-in) and LAMBDA_IMAGE:
#   public.ecr.aws/lambda/provided:al2023 when it is there or can be
#   pulled; else a stand-in built once from Debian packages (debootstrap +
#   ca-certificates), cached as a tarball.
# - bridge_gateway: the address containers reach the host at.

apt_install() {
  log "installing $* from apt"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

lambda_arch() {
  case "$(uname -m)" in
    x86_64) echo x86_64 ;;
    aarch64) echo arm64 ;;
    *) log "functions run as x86_64 or arm64, not $(uname -m)"; return 1 ;;
  esac
}

docker_engine() {
  command -v dockerd >/dev/null 2>&1 || apt_install docker.io
  docker info >/dev/null 2>&1 && return 0
  log "starting dockerd (vfs storage, no iptables); log: $STACK_DIR/dockerd.log"
  # Its own session: a Ctrl-C must leave it to stop.sh, which removes the
  # containers first.
  setsid dockerd --storage-driver=vfs --iptables=false >"$STACK_DIR/dockerd.log" 2>&1 &
  echo $! >"$STACK_DIR/dockerd.pid"
  for _ in $(seq 1 120); do docker info >/dev/null 2>&1 && return 0; sleep 0.5; done
  log "dockerd did not answer in 60 s:"; tail -n 20 "$STACK_DIR/dockerd.log" >&2
  return 1
}

lambda_image() {
  local arch suite cache rootfs
  arch="$(lambda_arch)"
  LAMBDA_IMAGE="public.ecr.aws/lambda/provided:al2023-$arch"
  LAMBDA_BASE=real
  if docker image inspect "$LAMBDA_IMAGE" >/dev/null 2>&1 \
     || timeout 120 docker pull -q "$LAMBDA_IMAGE" >/dev/null 2>&1; then
    return 0
  fi
  # This machine's Debian release, so host-built binaries find their glibc.
  suite="$( . /etc/os-release 2>/dev/null; [ "${ID:-}" = debian ] && echo "${VERSION_CODENAME:-}" )"
  suite="${suite:-bookworm}"
  # -r2: / is 0755 (r1 images had 0700).
  LAMBDA_IMAGE="flashsale/lambda-stand-in:$suite-r2"
  LAMBDA_BASE=stand-in
  docker image inspect "$LAMBDA_IMAGE" >/dev/null 2>&1 && return 0
  cache="$FLASHSALE_HOME/lambda-stand-in-$suite-r2-$arch.tar"
  if [ -f "$cache" ]; then
    docker load -q -i "$cache" >/dev/null
    return 0
  fi
  command -v debootstrap >/dev/null 2>&1 || apt_install debootstrap
  log "public.ecr.aws/lambda/provided cannot be pulled; building a stand-in from Debian $suite (once, cached in $cache)"
  rootfs="$(mktemp -d -t flashsale-rootfs.XXXXXX)"
  # mktemp makes it 0700, which would become the image's / : a function's
  # sandbox user could not then read /proc.
  chmod 755 "$rootfs"
  debootstrap --variant=minbase --include=ca-certificates "$suite" "$rootfs" \
    http://deb.debian.org/debian >"$STACK_DIR/debootstrap.log" 2>&1 \
    || { tail -n 20 "$STACK_DIR/debootstrap.log" >&2; rm -rf "$rootfs"; return 1; }
  tar -C "$rootfs" -c . | docker import \
    --change 'ENV LAMBDA_TASK_ROOT=/var/task' --change 'ENV LAMBDA_RUNTIME_DIR=/var/runtime' \
    --change 'WORKDIR /var/task' --change "LABEL flashsale.stand-in=debian-$suite" \
    - "$LAMBDA_IMAGE" >/dev/null
  rm -rf "$rootfs"
  docker save -o "$cache.tmp" "$LAMBDA_IMAGE" && mv "$cache.tmp" "$cache"
}

bridge_gateway() {
  local gw
  gw="$(docker network inspect bridge --format '{{range .IPAM.Config}}{{.Gateway}} {{end}}' 2>/dev/null \
    | tr ' ' '\n' | grep -m1 -E '^[0-9.]+$' || true)"
  [ -n "$gw" ] || gw="$(ip -4 -o addr show docker0 2>/dev/null | awk '{print $4}' | cut -d/ -f1 || true)"
  [ -n "$gw" ] || { log "no Docker bridge gateway found (docker network inspect bridge; ip addr show docker0)"; return 1; }
  echo "$gw"
}
