# Two entry points: `make demo` (a sale on the local stack) and `make test`
# (everything CI checks). Both install what is missing first.
SHELL := /bin/bash
CHAOS ?= 0
# EDGE=1: the demo's buyers go through the local edge (edge/, issue 32).
EDGE ?= 0
# CROWD=0: the demo skips its waiting-room crowd (issue 33).
CROWD ?= 1
# process: the handlers in the local runner; sam: the real bootstraps under
# sam local; localstack: template.yaml deployed into LocalStack's Lambda.
RUNTIME ?= process
CARGO_TARGET_DIR ?= $(HOME)/.cache/flashsale-target
export CARGO_TARGET_DIR
# CI builds once per clone: incremental artefacts would only pile up in the
# shared target dir (they once filled the disk).
ifeq ($(CI),true)
export CARGO_INCREMENTAL := 0
endif
NEXTEST := $(shell cargo nextest --version >/dev/null 2>&1 && echo "nextest run" || echo test)
# Tests ignored by default, run on their own stack (`make localstack-esm`).
RUN_IGNORED := $(if $(findstring nextest,$(NEXTEST)),--run-ignored only,-- --ignored)

TOOLS_BIN := $(HOME)/.cache/flashsale/tools-venv/bin
PLAYWRIGHT_DIR := $(HOME)/.cache/flashsale/playwright
export SAM_CLI_TELEMETRY := 0
FUNCTIONS := deduct order-consumer order-status admin compensation outbox-sweeper payment-webhook order-expirer edge-publisher
BIN_FLAGS := $(foreach f,$(FUNCTIONS),--bin $(f))
LAMBDA_ARCH := $(if $(filter aarch64,$(shell uname -m)),arm64,x86_64)

.PHONY: setup build build-arm64 build-x86_64 bench dev-build demo test lint template-lint unit stack-up stack-down sam-build sam-local sam-sale localstack-sale localstack-esm deploy-localstack test-embedded

setup:
	@localstack/install.sh

dev-build:
	@cargo build -q --workspace --bins

# The deployable bootstraps: $(CARGO_TARGET_DIR)/lambda/<arch>/<function>/bootstrap.
build: build-arm64 build-x86_64

build-arm64: setup
	PATH="$(TOOLS_BIN):$$PATH" cargo lambda build --release --arm64 $(BIN_FLAGS) --lambda-dir $(CARGO_TARGET_DIR)/lambda/arm64

build-x86_64: setup
	PATH="$(TOOLS_BIN):$$PATH" cargo lambda build --release --x86-64 $(BIN_FLAGS) --lambda-dir $(CARGO_TARGET_DIR)/lambda/x86_64

# Every figure of docs/benchmarks.md, on a fresh local stack (FIGURES=1,3
# prints only those, the document left alone). Size, cold start and the
# first request run the x86_64 release bootstraps (rebuilt when stale; the
# arm64 ones too once `make build-arm64` made them: their sizes are reported).
bench: setup dev-build
	$(MAKE) build-x86_64
	test ! -d $(CARGO_TARGET_DIR)/lambda/arm64 || $(MAKE) build-arm64
	cargo build -q --profile fast -p flashsale-tools --bin bench --bin flashsale
	localstack/with-stack.sh $(CARGO_TARGET_DIR)/fast/bench --lambda-dir $(CARGO_TARGET_DIR)/lambda/x86_64 \
	  --client $(CARGO_TARGET_DIR)/fast/flashsale \
	  $$(test -d $(CARGO_TARGET_DIR)/lambda/arm64 && echo --arm64-dir $(CARGO_TARGET_DIR)/lambda/arm64) \
	  $${FIGURES:+--figures $$FIGURES} --command "make bench"

# SAM builds every function with cargo-lambda, no Docker.
sam-build: setup
	PATH="$(TOOLS_BIN):$$PATH" $(TOOLS_BIN)/sam build --beta-features

demo: setup dev-build
	@RUNTIME=$(RUNTIME) CHAOS=$(CHAOS) EDGE=$(EDGE) CROWD=$(CROWD) LOCALSTACK_LAMBDA=$(if $(filter localstack,$(RUNTIME)),1,0) \
	  STACK_DIR=$(CURDIR)/.stack localstack/with-stack.sh scripts/demo.sh

# The real bootstraps under sam local (Docker) on a stack left running for
# manual work; `make stack-down` stops it all.
sam-local: setup dev-build
	@STACK_DIR=$(CURDIR)/.stack scripts/sam-local.sh

# A small sale through the real bootstraps; fails unless the books balance.
sam-sale: setup dev-build
	RUNTIME=sam SAM_BOOTSTRAPS=host DEMO_BUYERS=100 DEMO_STOCK=20 localstack/with-stack.sh scripts/demo.sh

# LocalStack in Docker, for machines with the network: `docker compose -f
# localstack/docker-compose.yml up -d` first (README, "LocalStack"); then
# template.yaml deployed into it as `make demo RUNTIME=localstack` does.
deploy-localstack: setup dev-build build-$(LAMBDA_ARCH)
	@. localstack/compose.env && localstack/deploy.sh

# The same small sale with template.yaml deployed into LocalStack's Lambda.
localstack-sale: setup dev-build
	RUNTIME=localstack LOCALSTACK_LAMBDA=1 BOOTSTRAPS=host DEMO_BUYERS=60 DEMO_STOCK=12 localstack/with-stack.sh scripts/demo.sh

# The runner's event source mapping checked against LocalStack's on the same
# messages (tools/tests/event_source_mapping.rs).
localstack-esm: setup dev-build
	LOCALSTACK_LAMBDA=1 localstack/with-stack.sh cargo $(NEXTEST) -p flashsale-tools \
	  --test event_source_mapping $(RUN_IGNORED)

lint: template-lint
	cargo fmt --all --check
	cargo clippy -q --workspace --all-targets -- -D warnings

template-lint:
	$(TOOLS_BIN)/cfn-lint template.yaml
	$(TOOLS_BIN)/sam validate --lint --region eu-west-1 >/dev/null

# The stack tests that drive DynamoDB again, on dynoxide embedded in the test
# process (tools::embedded) instead of DynamoDB Local: both must agree.
test-embedded: setup dev-build
	FLASHSALE_TEST_DYNAMODB=embedded localstack/with-stack.sh cargo $(NEXTEST) -p flashsale-tools \
	  --test purchase_path --test ledger_shards --test lifecycle --test failure_path --test controls --test secrets

# Handler and domain unit tests only: no stack needed.
unit:
	node --experimental-vm-modules --test edge/test/
	cargo $(NEXTEST) --workspace --lib --bins

test: setup lint dev-build
	node --experimental-vm-modules --test edge/test/
	PLAYWRIGHT_DIR=$(PLAYWRIGHT_DIR) node --test edge/browser/
	localstack/with-stack.sh cargo $(NEXTEST) --workspace
	@$(MAKE) --no-print-directory test-embedded
	@$(MAKE) --no-print-directory sam-sale
	@$(MAKE) --no-print-directory localstack-sale
	@$(MAKE) --no-print-directory localstack-esm

# A stack left running for manual work: `source .stack/env` afterwards.
stack-up: setup
	@STACK_DIR=$(CURDIR)/.stack localstack/start.sh

stack-down:
	@STACK_DIR=$(CURDIR)/.stack localstack/stop.sh
