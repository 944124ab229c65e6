#!/usr/bin/env bash
# `make chaos`: the full chaos run (CHAOS_REQUESTS, default 3000) against its
# own Pub/Sub emulator, printing the reconciliation table.
set -euo pipefail
cd "$(dirname "$0")/.."

state=$(mktemp -d "${TMPDIR:-/tmp}/push-dispatch-chaos.XXXXXX")
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
fi
export CHAOS_REQUESTS="${CHAOS_REQUESTS:-3000}"
cargo nextest run --test chaos --no-capture
