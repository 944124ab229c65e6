#!/usr/bin/env bash
# `make test`: every test of the workspace, with its own Pub/Sub emulator when
# PUBSUB_EMULATOR_HOST is unset (scripts/with-emulator.sh) and its own
# redis-server when PUSH_DISPATCH_TEST_REDIS_URL is unset (scripts/with-redis.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

run_tests() {
  # The contract test's pinned Python packages (tests/contract/requirements.txt),
  # installed once into .tools/contract-py. Exit 3 = python3 or pip missing
  # outside CI: the contract tests then skip, saying so; under CI=true it fails.
  scripts/contract-tools.sh >/dev/null || [[ $? -eq 3 ]]
  # Doc tests first: nextest does not run them, and its summary should close the run.
  cargo test --workspace --doc --quiet
  if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --no-fail-fast "$@"
  else
    cargo test --workspace --no-fail-fast "$@"
  fi
}

if [[ "${1:-}" == "--inner" ]]; then
  shift
  run_tests "$@"
else
  exec scripts/with-emulator.sh scripts/with-redis.sh scripts/test.sh --inner "$@"
fi
