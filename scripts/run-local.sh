#!/usr/bin/env bash
# `make run`: the worker on this machine against the Pub/Sub emulator.
# Starts an emulator when PUBSUB_EMULATOR_HOST is unset, generates a
# development APNs key under .dev/ (git-ignored), and runs
# `push-dispatch run` with config.yaml until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
dev=.dev
mkdir -p "$dev"
bin=target/debug/push-dispatch

if [[ ! -f "$dev/AuthKey_DEVKEY0001.p8" ]]; then
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$dev/AuthKey_DEVKEY0001.p8" 2>/dev/null
  echo "generated development APNs key $dev/AuthKey_DEVKEY0001.p8"
fi

started=""
cleanup() {
  if [[ -n "$started" ]]; then scripts/emulator.sh stop "$dev"; fi
}
trap cleanup EXIT
if [[ -z "${PUBSUB_EMULATOR_HOST:-}" ]]; then
  PUBSUB_EMULATOR_HOST=$(scripts/emulator.sh start "$dev")
  export PUBSUB_EMULATOR_HOST
  started=1
fi

cat <<EOT

  Pub/Sub emulator:  $PUBSUB_EMULATOR_HOST   (log: $dev/emulator.log)
  Health & metrics:  http://127.0.0.1:8080/healthz  /readyz  /metrics

  In another shell, send a push:
    export PUBSUB_EMULATOR_HOST=$PUBSUB_EMULATOR_HOST
    $bin send --platform apns --token a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90 --title Hello --body World
    $bin send --platform fcm --token unregistered-demo --title Bye      # a dead token -> push-feedback
  and watch:  curl -s localhost:8080/metrics | grep push_dispatch_sends_total

  Ctrl-C stops the worker (graceful drain) and the emulator.

EOT
"$bin" run --config config.yaml
