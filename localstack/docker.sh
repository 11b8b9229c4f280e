# Docker for the functions' containers (sam local, LocalStack's Lambda),
# sourced by sam-local/start.sh and localstack/start.sh. Expects STACK_DIR,
# FLASHSALE_HOME and a log function.
#
# - docker_engine: the engine that answers, else dockerd started here
#   (docker.io from apt; vfs storage, no iptables), its PID in
#   $STACK_DIR/dockerd.pid for stop.sh.
# - lambda_image: sets LAMBDA_BASE (real|stand-in) and LAMBDA_IMAGE:
#   public.ecr.aws/lambda/provided:al2023 when it is there or can be
#   pulled; else a stand-in built once from this machine's glibc, libgcc,
#   CA bundle and busybox (about 15 MB), cached as a tarball.
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
  # -r3: only what the functions run on (r2 was a 211 MB debootstrap
  # minbase, which vfs copied for every container: 5.4 s a cold start, so
  # the after-sale's burst of them outlasted LocalStack's 20 s startup
  # timeout in CI).
  LAMBDA_IMAGE="flashsale/lambda-stand-in:$suite-r3"
  LAMBDA_BASE=stand-in
  docker image inspect "$LAMBDA_IMAGE" >/dev/null 2>&1 && return 0
  cache="$FLASHSALE_HOME/lambda-stand-in-$suite-r3-$arch.tar"
  if [ -f "$cache" ]; then
    docker load -q -i "$cache" >/dev/null
    return 0
  fi
  log "public.ecr.aws/lambda/provided cannot be pulled; building a stand-in from this machine's Debian $suite packages (once, cached in $cache)"
  [ -f /etc/ssl/certs/ca-certificates.crt ] || apt_install ca-certificates
  # A shell for sam local's image build (its RUN mv && chmod).
  command -v busybox >/dev/null 2>&1 || apt_install busybox-static
  rootfs="$(mktemp -d -t flashsale-rootfs.XXXXXX)"
  # mktemp makes it 0700, which would become the image's / : a function's
  # sandbox user could not then read /proc.
  chmod 755 "$rootfs"
  # glibc and libgcc (what `ldd` lists for every bootstrap), as installed
  # here: the same files the binaries were linked against.
  dpkg -L libc6 libgcc-s1 | while read -r f; do
    [ -f "$f" ] && [ "${f#/usr/share/}" = "$f" ] && printf '%s\n' "${f#/}"
  done | tar -C / -c --no-recursion -T - | tar -C "$rootfs" -x
  mkdir -p "$rootfs/bin" "$rootfs/etc/ssl/certs" "$rootfs/tmp" "$rootfs/var/task" "$rootfs/var/runtime" "$rootfs/opt"
  chmod 1777 "$rootfs/tmp"
  cp "$(command -v busybox)" "$rootfs/bin/busybox"
  for applet in sh mv chmod cp rm cat ls mkdir env true; do ln -s busybox "$rootfs/bin/$applet"; done
  cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/"
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/sh\n' >"$rootfs/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$rootfs/etc/group"
  tar -C "$rootfs" -c . | docker import \
    --change 'ENV LAMBDA_TASK_ROOT=/var/task' --change 'ENV LAMBDA_RUNTIME_DIR=/var/runtime' \
    --change 'ENV PATH=/usr/local/bin:/usr/bin:/bin' \
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
