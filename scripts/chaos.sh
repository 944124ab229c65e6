#!/usr/bin/env bash
# `make chaos`: the full chaos run (CHAOS_REQUESTS, default 3000) with its own
# Pub/Sub emulator, printing the reconciliation table.
set -euo pipefail
cd "$(dirname "$0")/.."
export CHAOS_REQUESTS="${CHAOS_REQUESTS:-3000}"
exec scripts/with-emulator.sh cargo nextest run --test it --no-capture -E 'test(/^chaos::/)'
