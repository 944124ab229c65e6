#!/usr/bin/env bash
# `make bench`: the dispatch path against the local sandbox over TLS, release
# build. The sandbox runs on core 0 and the benchmark on core 1 (taskset),
# since the two share this 2-core machine. Figures go to standard output
# together with the targets and peer rates they are compared to.
# Then the end-to-end benchmark against the Pub/Sub emulator's own ceiling.
#   BENCH_REQUESTS (default 200000), BENCH_CONCURRENCY (default 512),
#   BENCH_E2E_REQUESTS (default 20000), BENCH_STREAMS (default 4)
set -euo pipefail
cd "$(dirname "$0")/.."

requests="${BENCH_REQUESTS:-200000}"
concurrency="${BENCH_CONCURRENCY:-512}"
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

port_h2c=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')
port_tls=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')
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

common=(--endpoint "https://127.0.0.1:$port_tls" --ca-file "$dir/sandbox-cert.pem"
  --requests "$requests" --concurrency "$concurrency")
pin 1 target/release/push-dispatch-bench --platform apns "${common[@]}" \
  --key-file "$dir/AuthKey_SANDBOXK01.p8" --key-id SANDBOXK01 --team-id SANDBOXT01
echo
pin 1 target/release/push-dispatch-bench --platform fcm "${common[@]}" \
  --credentials-file "$dir/service-account.json"

echo
if [[ -z "${PUBSUB_EMULATOR_HOST:-}" ]]; then
  PUBSUB_EMULATOR_HOST=$(scripts/emulator.sh start "$dir")
  export PUBSUB_EMULATOR_HOST
  emulator_started=1
fi
target/release/push-dispatch-bench-e2e --requests "${BENCH_E2E_REQUESTS:-20000}" \
  --streams "${BENCH_STREAMS:-4}" --worker-bin target/release/push-dispatch

# Issue 16: the same end-to-end run with Redis coordination and dedup on,
# beside one with it off, in the same sitting: the added worker CPU per
# request (one target = one push), Redis round trips per message, and the
# throughput ratio (target: on ≥ 80 % of off).
if [[ "${BENCH_SKIP_REDIS:-}" != "1" ]]; then
  redis_url=$(scripts/redis.sh start "$dir/redis")
  trap 'scripts/redis.sh stop "$dir/redis"; cleanup' EXIT
  e2e_requests="${BENCH_E2E_REQUESTS:-20000}"
  run_e2e() {
    target/release/push-dispatch-bench-e2e --requests "$e2e_requests" \
      --streams "${BENCH_STREAMS:-4}" --worker-bin target/release/push-dispatch
  }
  field() { # the number after "$2" on the line matching "$1"
    grep -m1 "$1" | sed -E "s/.*$2[^0-9]*([0-9.]+).*/\1/"
  }
  echo
  echo "== end to end, dedup off (same sitting)"
  off=$(run_e2e) && echo "$off"
  evalsha() { redis-cli -u "$redis_url" INFO commandstats | tr -d '\r' | sed -nE 's/^cmdstat_evalsha:calls=([0-9]+).*/\1/p'; }
  before=$(evalsha); before=${before:-0}
  echo
  echo "== end to end, Redis coordination and dedup.window on"
  on=$(PUSH_DISPATCH_COORDINATION__REDIS_URL="$redis_url" \
       PUSH_DISPATCH_COORDINATION__PREFIX="bench-$RANDOM" \
       PUSH_DISPATCH_DEDUP__WINDOW=1h run_e2e) && echo "$on"
  after=$(evalsha); after=${after:-0}
  rate_off=$(echo "$off" | field "first publish" "delivery")
  rate_on=$(echo "$on" | field "first publish" "delivery")
  cpu_off=$(echo "$off" | field "worker CPU" "CPU")
  cpu_on=$(echo "$on" | field "worker CPU" "CPU")
  python3 - "$rate_off" "$rate_on" "$cpu_off" "$cpu_on" "$before" "$after" "$e2e_requests" <<'PY'
import sys
rate_off, rate_on, cpu_off, cpu_on = map(float, sys.argv[1:5])
before, after, requests = int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7])
ratio = rate_on / rate_off
print()
print("dedup + Redis coordination vs off (one target per request):")
print(f"  throughput        {rate_on:8.0f} vs {rate_off:8.0f} requests/s = {ratio*100:5.1f} %   target >= 80 %  {'MET' if ratio >= 0.8 else 'NOT MET'}")
print(f"  worker CPU        {cpu_on:8.1f} vs {cpu_off:8.1f} us per request: {cpu_on - cpu_off:+.1f} us per push")
print(f"  Redis round trips {(after - before) / requests:8.2f} per message (EVALSHA: one claim + one record; the guard and rate limit batch)")
PY
fi
