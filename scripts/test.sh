#!/usr/bin/env bash
# `make test`: every test of the workspace, with its own Pub/Sub emulator when
# PUBSUB_EMULATOR_HOST is unset (scripts/with-emulator.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

run_tests() {
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
  exec scripts/with-emulator.sh scripts/test.sh --inner "$@"
fi
