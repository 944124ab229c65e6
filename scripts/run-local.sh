#!/usr/bin/env bash
# `make run`: the whole thing on this machine. Starts the Pub/Sub emulator
# (unless PUBSUB_EMULATOR_HOST is set) and the APNs/FCM/OAuth sandbox (which
# generates development keys under .dev/, git-ignored), then runs
# `push-dispatch run` with config.yaml until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
dev=.dev
mkdir -p "$dev"
bin=target/debug/push-dispatch
sandbox_addr=127.0.0.1:9443

started=""
sandbox_pid=""
cleanup() {
  if [[ -n "$sandbox_pid" ]]; then kill "$sandbox_pid" 2>/dev/null || true; wait "$sandbox_pid" 2>/dev/null || true; fi
  if [[ -n "$started" ]]; then scripts/emulator.sh stop "$dev"; fi
}
trap cleanup EXIT

if [[ -z "${PUBSUB_EMULATOR_HOST:-}" ]]; then
  PUBSUB_EMULATOR_HOST=$(scripts/emulator.sh start "$dev")
  export PUBSUB_EMULATOR_HOST
  started=1
fi

"$bin" sandbox --listen "$sandbox_addr" --dir "$dev" >"$dev/sandbox.log" 2>&1 &
sandbox_pid=$!
for _ in $(seq 1 100); do
  if curl -sf "http://$sandbox_addr/sandbox/stats" >/dev/null 2>&1; then break; fi
  if ! kill -0 "$sandbox_pid" 2>/dev/null; then
    echo "error: the sandbox exited; see $dev/sandbox.log" >&2
    cat "$dev/sandbox.log" >&2
    exit 1
  fi
  sleep 0.1
done

cat <<EOT

  Pub/Sub emulator:  $PUBSUB_EMULATOR_HOST   (log: $dev/emulator.log)
  APNs/FCM sandbox:  http://$sandbox_addr    (log: $dev/sandbox.log)
  Health & metrics:  http://127.0.0.1:8080/healthz  /readyz  /metrics

  In another shell, send a push:
    export PUBSUB_EMULATOR_HOST=$PUBSUB_EMULATOR_HOST
    $bin send --platform apns --token a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90 --title Hello --body World
    $bin send --platform fcm --token unregistered-demo --title Bye      # a dead token -> push-feedback
  and see it arrive:
    curl -s http://$sandbox_addr/sandbox/deliveries
    curl -s localhost:8080/metrics | grep push_dispatch_sends_total
  Feedback events go to the topic push-feedback (subscribe to it to read them).

  Ctrl-C stops the worker (graceful drain), the sandbox and the emulator.

EOT
"$bin" run --config config.yaml
