# push-dispatch — developer commands. `make run` and `make test` are the quick start.
.PHONY: run test lint fmt build release buf-lint clean-dev

CARGO ?= cargo
DEV := .dev

## run: start the Pub/Sub emulator (if PUBSUB_EMULATOR_HOST is unset) and the worker with config.yaml
run: build
	@scripts/run-local.sh

## test: every test (starts its own emulator when PUBSUB_EMULATOR_HOST is unset)
test:
	@scripts/test.sh

## lint: rustfmt check, clippy with warnings as errors, buf lint of the contract
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	@if command -v buf >/dev/null 2>&1; then cd proto && buf lint && echo "buf lint: clean"; else echo "buf not installed (pip install buf-bin): skipping buf lint"; fi

## fmt: format the code
fmt:
	$(CARGO) fmt --all

build:
	$(CARGO) build

release:
	$(CARGO) build --release --locked

clean-dev:
	rm -rf $(DEV)
