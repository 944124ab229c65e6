# push-dispatch — developer commands. `make run` and `make test` are the quick start.
.PHONY: run test chaos soak bench bench-scaling callgrind lint deny fmt build release buf-lint proto-baseline clean-dev docker helm-lint alerts-lint chart

CARGO ?= cargo
DEV := .dev

## run: start the Pub/Sub emulator (if PUBSUB_EMULATOR_HOST is unset) and the worker with config.yaml
run: build
	@scripts/run-local.sh

## test: every test (starts its own emulator when PUBSUB_EMULATOR_HOST is unset)
test:
	@scripts/test.sh

## chaos: the full chaos run (3,000 requests, kills and restarts, sandbox faults) and its reconciliation table
chaos:
	@scripts/chaos.sh

## bench: the dispatch path (APNs and FCM over TLS) against the sandbox, release build
bench:
	@scripts/bench.sh

## bench-scaling: the scaling tables of BENCHMARKS.md (in flight, payload size, targets per request, streams)
bench-scaling:
	@scripts/bench-scaling.sh

## soak: the release worker at a steady rate for SOAK_DURATION s (default 30 min) with sandbox faults; fails on RSS or p99 drift; CSV and PNG under .bench/soak (never in CI)
soak:
	@scripts/soak.sh

## callgrind: instructions per push (APNs, FCM) and per message (the worker process) under callgrind, profiling build
callgrind:
	@scripts/callgrind.sh

## lint: rustfmt check, clippy with warnings as errors, buf lint and buf breaking of the contract (scripts/buf-check.sh), cargo-deny (deny.toml)
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	@scripts/buf-check.sh
	@scripts/deny.sh

## deny: cargo-deny alone: licenses, bans, sources; advisories when the RustSec database can be fetched
deny:
	@scripts/deny.sh

## buf-lint: only the contract's checks: buf lint, buf breaking against proto/baseline.binpb, and the breaking check's self-test
buf-lint:
	@scripts/buf-check.sh

## proto-baseline: rewrite proto/baseline.binpb from proto/ (when a contract is released; commit it)
proto-baseline:
	@scripts/buf-check.sh baseline

## fmt: format the code
fmt:
	$(CARGO) fmt --all

build:
	$(CARGO) build

release:
	$(CARGO) build --release --locked

clean-dev:
	rm -rf $(DEV)

## docker: build the container image from deploy/Dockerfile (needs a BuildKit engine: docker, or DOCKER=podman)
DOCKER ?= docker
IMAGE ?= push-dispatch
VERSION ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
REPOSITORY ?= $(shell sed -n 's/^repository = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
docker:
	@command -v $(DOCKER) >/dev/null 2>&1 || { echo "$(DOCKER) not found: make docker needs a container engine (DOCKER=podman works too)"; exit 1; }
	DOCKER_BUILDKIT=1 $(DOCKER) build -f deploy/Dockerfile -t $(IMAGE):$(VERSION) \
		--build-arg VERSION=$(VERSION) \
		--build-arg SOURCE=$(REPOSITORY) \
		--build-arg REVISION=$$(git rev-parse HEAD 2>/dev/null || echo unknown) \
		--build-arg CREATED=$$(date -u +%Y-%m-%dT%H:%M:%SZ) .

## helm-lint: hadolint, yamllint, helm lint, kubernetes-validate, the chart tests and alerts-lint (installs its tools into .tools/)
helm-lint:
	@deploy/helm/tests/helm-lint.sh

## alerts-lint: the alert rules and the Grafana dashboard: project checks, and promtool check/test rules (promtool from Debian's prometheus package)
alerts-lint:
	@deploy/alerts/check.sh

## chart: package the Helm chart as dist/push-dispatch-VERSION.tgz, chart version and appVersion from Cargo.toml
chart:
	@deploy/helm/tests/tools.sh
	@mkdir -p dist
	.tools/bin/helm lint --strict deploy/helm/push-dispatch
	.tools/bin/helm package deploy/helm/push-dispatch --version $(VERSION) --app-version $(VERSION) --destination dist
	@case "$(REPOSITORY)" in *example*|*.invalid*|"") echo "note: Cargo.toml's repository ($(REPOSITORY)) is a placeholder: Chart.yaml home/sources and the image's source label follow it; set the real URL in both";; esac
