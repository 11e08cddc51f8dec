# maestro-relay — `make demo` runs the whole job on local stand-ins, `make test` the tests.
SHELL := /bin/bash
export CARGO_TARGET_DIR ?= $(CURDIR)/target
BIN := $(CARGO_TARGET_DIR)/debug

.PHONY: demo test build bootstrap stack-up stack-down lint fmt clean bench bench-conversion bench-webhook bench-sftp bench-e2e bench-scale bench-lambda package

build:
	cargo build --workspace --bins --features maestro-relay/tool

bootstrap:
	scripts/bootstrap.sh

stack-up: build
	scripts/stack.sh up

stack-down:
	scripts/stack.sh down

## The main job end to end: stack up, signed webhook → webhook → S3 → SQS → worker →
## Kinaxis simulator → CSV → S3 → SFTP (PF2), then stack down.
demo: build bootstrap
	@scripts/stack.sh down >/dev/null
	@trap 'scripts/stack.sh down >/dev/null' EXIT; \
	  scripts/stack.sh up && \
	  .venv/bin/python scripts/demo.py $(BIN)

## Unit tests and the integration tests; the tests start moto_server, sshd and the
## simulator themselves and stop them when they end.
test: bootstrap
	python3 scripts/module_graph.py
	cargo build -p kinaxis-sim
	cargo test --workspace

## Benchmarks (release build; they print figures and ratios, they assert no speed).
bench: bench-conversion bench-webhook bench-sftp bench-e2e

bench-conversion: bootstrap
	cargo build --release -p kinaxis-sim
	cargo bench --bench conversion --features bench-sonic

bench-webhook: bootstrap
	cargo build --release --workspace --bins
	cargo bench --bench webhook | grep -v '"_aws"'

bench-sftp: bootstrap
	cargo build --release -p kinaxis-sim
	cargo bench --bench sftp

## The whole job, release binaries through the Lambda Runtime API stand-in, against a plain
## Python pipeline on the same simulator: 1M rows, 5000-row pages, 0 and 20 ms per call.
bench-e2e: bootstrap
	cargo build --release --workspace --bins
	.venv/bin/python benches/e2e.py $(CARGO_TARGET_DIR)/release $(E2E_ARGS)

## The largest exports: 100k, 1M and 10M rows, worksheet and bulk mode, at 0 and 20 ms per call.
bench-scale: bootstrap
	cargo build --release --workspace --bins
	.venv/bin/python benches/e2e.py $(CARGO_TARGET_DIR)/release --scale 100000,1000000,10000000 $(E2E_ARGS)

## The whole job Lambda-shaped (issue 24): the worker and the Python pipeline each held to
## 0.6 of a core by a cgroup, S3 2 ms and SFTP 30 ms round trip away through relays.
bench-lambda: bootstrap
	cargo build --release --workspace --bins
	.venv/bin/python benches/e2e.py $(CARGO_TARGET_DIR)/release --lambda-shape --latencies 0 $(E2E_ARGS)

## Release zips of both functions for Lambda (provided.al2023), OpenSSL and zlib linked in
## statically: ARCH=x86_64 (default here: these machines have no aarch64 Rust std) or arm64.
ARCH ?= x86_64
package:
	scripts/bootstrap.sh package
	PATH="$(CURDIR)/.venv-pkg/bin:$$PATH" LIBZ_SYS_STATIC=1 cargo lambda build --release --features vendored \
	  --bin webhook --bin worker $(if $(filter arm64,$(ARCH)),--arm64,--x86-64) --output-format zip
	@for f in $(CARGO_TARGET_DIR)/lambda/*/bootstrap.zip; do ls -l "$$f"; done

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

fmt:
	cargo fmt --all

clean:
	scripts/stack.sh down
	cargo clean

## What is deployed, built and tested here. `sam build` runs cargo lambda, which reads the
## vendored-OpenSSL/static-zlib settings from Cargo.toml, so it makes the very bytes
## `make package` zips; a target directory of its own keeps release builds out of the
## debug one `make test` uses.
.PHONY: sam-build smoke-built security-lint
LAMBDA_TARGET_DIR ?= $(CARGO_TARGET_DIR)-lambda

sam-build:
	scripts/bootstrap.sh ci package
	SAM_CLI_BETA_RUST_CARGO_LAMBDA=1 SAM_CLI_TELEMETRY=0 PATH="$(CURDIR)/.venv-pkg/bin:$$PATH" \
	  CARGO_TARGET_DIR="$(LAMBDA_TARGET_DIR)" .venv-ci/bin/sam build --parameter-overrides Architecture=$(ARCH)

## The bootstraps from `sam build`: only glibc linked, the same bytes as `make package`,
## and one job delivered through them on the local stack.
smoke-built: sam-build
	cargo build -p kinaxis-sim
	$(MAKE) package CARGO_TARGET_DIR="$(LAMBDA_TARGET_DIR)" ARCH=$(ARCH)
	PACKAGE_DIR="$(LAMBDA_TARGET_DIR)/lambda" scripts/smoke_built.sh

## Dependencies checked offline: RustSec advisories (../shared/advisory-db), licences, sources.
.PHONY: deny mutants
deny:
	scripts/bootstrap.sh deny
	scripts/deny.sh

## Mutation testing of the rules that decide who gets in (not in CI: tens of minutes on two
## cores). Every mutant left alive is a rule no test pins down.
mutants: bootstrap
	scripts/bootstrap.sh mutants
	$(HOME)/.cache/maestro-relay/tools/bin/cargo-mutants mutants -f src/webhook/auth.rs -f src/webhook/policy.rs -- --lib

## Security findings in the template; each suppression in template.yaml says why.
security-lint:
	scripts/bootstrap.sh security
	.venv-sec/bin/checkov --file template.yaml --framework cloudformation --skip-download --compact --quiet
