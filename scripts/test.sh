#!/usr/bin/env bash
# `make test`: every test of the workspace. Starts its own Pub/Sub emulator on
# a free port when PUBSUB_EMULATOR_HOST is unset, and stops it afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."

state=$(mktemp -d "${TMPDIR:-/tmp}/push-dispatch-test.XXXXXX")
started=""
cleanup() {
  if [[ -n "$started" ]]; then scripts/emulator.sh stop "$state"; fi
  rm -rf "$state"
}
trap cleanup EXIT

if [[ -z "${PUBSUB_EMULATOR_HOST:-}" ]]; then
  PUBSUB_EMULATOR_HOST=$(scripts/emulator.sh start "$state")
  export PUBSUB_EMULATOR_HOST
  started=1
  echo "Pub/Sub emulator on $PUBSUB_EMULATOR_HOST"
fi

# Doc tests first: nextest does not run them, and its summary should close the run.
cargo test --workspace --doc --quiet
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@"
else
  cargo test --workspace --no-fail-fast "$@"
fi
