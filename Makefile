# Two entry points: `make demo` (a sale on the local stack) and `make test`
# (everything CI checks). Both install what is missing first.
SHELL := /bin/bash
CHAOS ?= 0
CARGO_TARGET_DIR ?= $(HOME)/.cache/flashsale-target
export CARGO_TARGET_DIR
NEXTEST := $(shell cargo nextest --version >/dev/null 2>&1 && echo "nextest run" || echo test)

.PHONY: setup build demo test lint unit stack-up stack-down

setup:
	@localstack/install.sh

build:
	@cargo build -q --workspace --bins

demo: setup build
	@CHAOS=$(CHAOS) STACK_DIR=$(CURDIR)/.stack localstack/with-stack.sh scripts/demo.sh

lint:
	cargo fmt --all --check
	cargo clippy -q --workspace --all-targets -- -D warnings

# Handler and domain unit tests only: no stack needed.
unit:
	cargo $(NEXTEST) --workspace --lib --bins

test: setup lint
	localstack/with-stack.sh cargo $(NEXTEST) --workspace

# A stack left running for manual work: `source .stack/env` afterwards.
stack-up: setup
	@STACK_DIR=$(CURDIR)/.stack localstack/start.sh

stack-down:
	@STACK_DIR=$(CURDIR)/.stack localstack/stop.sh
