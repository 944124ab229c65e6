#!/usr/bin/env bash
# Runs a command with PUBSUB_EMULATOR_HOST set: an emulator on a free port is
# started for it when the variable is unset, and stopped afterwards.
#   scripts/with-emulator.sh COMMAND [ARGS...]
set -euo pipefail
cd "$(dirname "$0")/.."

state=$(mktemp -d "${TMPDIR:-/tmp}/push-dispatch-emulator.XXXXXX")
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
"$@"
