#!/usr/bin/env bash
# `make callgrind`: instructions per push and per message under callgrind,
# the measure the host's load does not move (BENCHMARKS.md, "Method").
#
#   per push     (Ir(30,000 pushes) − Ir(10,000 pushes)) / 20,000 of the
#                dispatch benchmark (512 in flight, TLS, one run each), so
#                that start-up cancels out; APNs and FCM.
#   per message  (Ir(worker, 12,000 requests) − Ir(worker, 4,000 requests))
#                / 8,000 of the worker process itself, run by the end-to-end
#                benchmark through a valgrind wrapper (4 streams, h2c to an
#                in-process sandbox, 2,000 warm-up requests in both runs).
#
# BIN_DIR (default target/profiling, built here with `--profile profiling`)
# holds push-dispatch, push-dispatch-bench and push-dispatch-bench-e2e; point
# it at another build (e.g. an older commit's) to compare two builds with the
# same method. CALLGRIND_SKIP_E2E=1 measures per push only,
# CALLGRIND_SKIP_PUSH=1 per message only.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v valgrind >/dev/null || { echo "callgrind.sh: valgrind not found (apt install valgrind)" >&2; exit 1; }
bin=${BIN_DIR:-target/profiling}
if [[ -z "${BIN_DIR:-}" ]]; then
  cargo build --profile profiling --quiet -p push-dispatch -p push-dispatch-bench
fi
bin=$(cd "$bin" && pwd)
dir=$(mktemp -d "${TMPDIR:-/tmp}/callgrind.XXXXXX")
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')
tls=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')
"$bin/push-dispatch" sandbox --listen "127.0.0.1:$port" --tls-listen "127.0.0.1:$tls" --dir "$dir" >"$dir/sandbox.log" 2>&1 &
sandbox=$!
emulator_started=""
cleanup() {
  kill "$sandbox" 2>/dev/null || true
  wait "$sandbox" 2>/dev/null || true
  if [[ -n "$emulator_started" ]]; then scripts/emulator.sh stop "$dir"; fi
  rm -rf "$dir"
}
trap cleanup EXIT
for _ in $(seq 1 100); do
  curl -sf "http://127.0.0.1:$port/sandbox/stats" >/dev/null 2>&1 && break
  sleep 0.1
done

# Total instructions of a callgrind output file.
total() { sed -n 's/^summary: //p; s/^totals: //p' "$1" | head -n 1 | awk '{print $1}'; }

push_ir() {
  local platform=$1 requests=$2 out="$dir/push-$1-$2.out"
  local creds=(--key-file "$dir/AuthKey_SANDBOXK01.p8" --key-id SANDBOXK01 --team-id SANDBOXT01)
  [[ $platform == fcm ]] && creds=(--credentials-file "$dir/service-account.json")
  valgrind --tool=callgrind --callgrind-out-file="$out" "$bin/push-dispatch-bench" \
    --platform "$platform" --endpoint "https://127.0.0.1:$tls" --ca-file "$dir/sandbox-cert.pem" \
    --requests "$requests" --concurrency 512 --runs 1 "${creds[@]}" >/dev/null 2>"$dir/valgrind.log"
  total "$out"
}

if [[ -z "${CALLGRIND_SKIP_PUSH:-}" ]]; then
  echo "instructions per push (callgrind, (Ir(30,000) - Ir(10,000)) / 20,000, 512 in flight, TLS):"
  for platform in apns fcm; do
    small=$(push_ir "$platform" 10000)
    large=$(push_ir "$platform" 30000)
    echo "  $platform: $(( (large - small) / 20000 ))   (Ir $small at 10,000, $large at 30,000)"
  done
fi

[[ -n "${CALLGRIND_SKIP_E2E:-}" ]] && exit 0
if [[ -z "${PUBSUB_EMULATOR_HOST:-}" ]]; then
  PUBSUB_EMULATOR_HOST=$(scripts/emulator.sh start "$dir")
  export PUBSUB_EMULATOR_HOST
  emulator_started=1
fi
worker_ir() {
  local requests=$1 out="$dir/worker-$1.out"
  cat >"$dir/worker.sh" <<EOF
#!/usr/bin/env bash
# provision runs natively; run runs under callgrind.
if [[ " \$* " == *" run "* ]]; then
  exec valgrind --tool=callgrind --callgrind-out-file=$out "$bin/push-dispatch" "\$@" 2>>"$dir/valgrind.log"
fi
exec "$bin/push-dispatch" "\$@"
EOF
  chmod +x "$dir/worker.sh"
  "$bin/push-dispatch-bench-e2e" --requests "$requests" --streams 4 --worker-bin "$dir/worker.sh" \
    --timeout 1200s >"$dir/e2e-$requests.log" 2>&1 || { cat "$dir/e2e-$requests.log" >&2; exit 1; }
  # callgrind writes its file when the worker exits (the benchmark stops it).
  for _ in $(seq 1 600); do [[ -s "$out" ]] && grep -q '^totals:\|^summary:' "$out" && break; sleep 0.1; done
  total "$out"
}
small=$(worker_ir 4000)
large=$(worker_ir 12000)
echo "instructions per message, worker process (callgrind, (Ir(12,000) - Ir(4,000)) / 8,000, 4 streams, h2c):"
echo "  $(( (large - small) / 8000 ))   (Ir $small at 4,000, $large at 12,000)"
