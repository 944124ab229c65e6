#!/usr/bin/env bash
# `make bench-scaling`: how the cost of a push grows with pushes in flight,
# payload size, targets per request and streaming pulls (the tables of
# BENCHMARKS.md).
# Same setup as `make bench`: release build, sandbox on core 0, the
# dispatch benchmark on core 1; the end-to-end runs share both cores.
#   SCALING_REQUESTS (default 100000) pushes per dispatch run,
#   SCALING_E2E_REQUESTS (default 10000) requests per end-to-end run.
set -euo pipefail
cd "$(dirname "$0")/.."

requests="${SCALING_REQUESTS:-100000}"
dir=.bench
mkdir -p "$dir"
cargo build --release --quiet -p push-dispatch -p push-dispatch-bench

pin() {
  local core=$1
  shift
  local run=()
  if command -v taskset >/dev/null 2>&1 && [[ "$(nproc)" -ge 2 ]]; then
    run=(taskset -c "$core")
  fi
  # As a background job (`pin 0 cmd &`) this runs in a subshell: exec, so that
  # `$!` is the command itself and the cleanup's kill stops it.
  if [[ $BASHPID != "$$" ]]; then
    exec "${run[@]}" "$@"
  fi
  "${run[@]}" "$@"
}
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

port_h2c=$(free_port)
port_tls=$(free_port)
pin 0 target/release/push-dispatch sandbox --listen "127.0.0.1:$port_h2c" \
  --tls-listen "127.0.0.1:$port_tls" --dir "$dir" >"$dir/sandbox.log" 2>&1 &
sandbox=$!
emulator_started=""
cleanup() {
  kill "$sandbox" 2>/dev/null || true
  wait "$sandbox" 2>/dev/null || true
  if [[ -n "$emulator_started" ]]; then scripts/emulator.sh stop "$dir"; fi
}
trap cleanup EXIT
for _ in $(seq 1 100); do
  curl -sf "http://127.0.0.1:$port_h2c/sandbox/stats" >/dev/null 2>&1 && break
  sleep 0.1
done

apns() {
  pin 1 target/release/push-dispatch-bench --platform apns \
    --endpoint "https://127.0.0.1:$port_tls" --ca-file "$dir/sandbox-cert.pem" \
    --key-file "$dir/AuthKey_SANDBOXK01.p8" --key-id SANDBOXK01 --team-id SANDBOXT01 \
    --requests "$requests" "$@"
}
# One table row from a benchmark's output: pushes/s, µs per push, latency, RSS.
row() {
  awk -v first="$1" '
    /pushes\/s/ && !rate { rate = $2 }
    /latency ms/ { lat = $4 " / " $6 }
    /CPU per push/ { cpu = $4 }
    /peak RSS/ { rss = $3 }
    END { printf "| %s | %s | %s µs | %s ms | %s MiB |\n", first, rate, cpu, lat, rss }'
}

echo "APNs over TLS, $requests pushes per run, median of 3 runs"
echo
echo "| in flight | pushes/s | CPU per push | p50 / p99 latency | peak RSS |"
echo "|---:|---:|---:|---:|---:|"
for c in 64 512 1000; do
  apns --concurrency "$c" | row "$c"
done
echo
echo "| payload (custom data) | pushes/s | CPU per push | p50 / p99 latency | peak RSS |"
echo "|---:|---:|---:|---:|---:|"
for b in 0 1000 3500; do
  apns --concurrency 512 --payload-bytes "$b" | row "+$b B"
done

echo
if [[ -z "${PUBSUB_EMULATOR_HOST:-}" ]]; then
  PUBSUB_EMULATOR_HOST=$(scripts/emulator.sh start "$dir")
  export PUBSUB_EMULATOR_HOST
  emulator_started=1
fi
echo "End to end, 4 streams, worker + in-process sandbox + emulator on 2 cores"
echo
echo "| targets per request | requests/s | pushes/s | emulator ceiling (msg/s) | share of ceiling |"
echo "|---:|---:|---:|---:|---:|"
for t in 1 5 20; do
  target/release/push-dispatch-bench-e2e --requests "${SCALING_E2E_REQUESTS:-10000}" \
    --targets "$t" --streams 4 --worker-bin target/release/push-dispatch |
    awk -v t="$t" '
      /worker: first publish/ { for (i = 1; i <= NF; i++) { if ($i == "requests/s,") req = $(i-1); if ($i == "pushes/s") push = $(i-1) } }
      /emulator ceiling/ { for (i = 1; i <= NF; i++) if ($i == "msg/s") ceil = $(i-1) }
      /ratio/ { ratio = $2 }
      END { printf "| %s | %s | %s | %s | %s %% |\n", t, req, push, ceil, ratio }'
done

echo
echo "End to end by streaming pulls, 1 target per request (worker + in-process sandbox + emulator on 2 cores)"
echo
echo "| streams | requests/s | emulator ceiling (msg/s) | share of ceiling |"
echo "|---:|---:|---:|---:|"
for n in 1 4 8 16; do
  target/release/push-dispatch-bench-e2e --requests "${SCALING_E2E_REQUESTS:-10000}" \
    --targets 1 --streams "$n" --worker-bin target/release/push-dispatch |
    awk -v n="$n" '
      /worker: first publish/ { for (i = 1; i <= NF; i++) if ($i == "requests/s,") req = $(i-1) }
      /emulator ceiling/ { for (i = 1; i <= NF; i++) if ($i == "msg/s") ceil = $(i-1) }
      /ratio/ { ratio = $2 }
      END { printf "| %s | %s | %s | %s %% |\n", n, req, ceil, ratio }'
done
