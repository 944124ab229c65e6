#!/usr/bin/env bash
# `make soak`: the release worker at a steady rate against the emulator and
# the sandbox for SOAK_DURATION seconds (default 1800), sampled every 10 s;
# fails if RSS grows over 10 % or p99 over 50 % after the warm-up. Writes
# .bench/soak/soak.csv and soak.png (scripts/soak.py says how). Never in CI.
#   SOAK_RATE (default 1000 messages/s), SOAK_DURATION, SOAK_INTERVAL, SOAK_DIR, SOAK_BIN
set -euo pipefail
cd "$(dirname "$0")/.."
# SOAK_BIN=path runs that binary (e.g. target/profiling/push-dispatch) as is.
if [[ -z "${SOAK_BIN:-}" ]]; then
  cargo build --release --quiet -p push-dispatch
fi
# matplotlib for the plot, pinned, in its own folder (no system install).
py=${TOOLS_DIR:-.tools}/soak-py
if ! PYTHONPATH="$py" python3 -c 'import matplotlib' 2>/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check --target "$py" 'matplotlib==3.10.7' \
    || echo "soak: matplotlib could not be installed; the samples are written, the plot is not" >&2
fi
# The emulator keeps what it handed out: at 1,000 msg/s for 30 minutes it
# needs more than the 512 MiB it gets in tests (it runs out of direct buffers).
export EMULATOR_JAVA_OPTS=${EMULATOR_JAVA_OPTS:--Xmx4g}
PYTHONPATH="$py" exec python3 scripts/soak.py
