#!/usr/bin/env bash
# `make chaos`: the full chaos run (CHAOS_REQUESTS, default 3000; phases of
# CHAOS_PHASE_SECS, default 10) with its own
# Pub/Sub emulator, printing the reconciliation table.
set -euo pipefail
cd "$(dirname "$0")/.."
export CHAOS_REQUESTS="${CHAOS_REQUESTS:-3000}"
# How long the third app's OAuth-hang and black-hole phases last (make test: 3 s).
export CHAOS_PHASE_SECS="${CHAOS_PHASE_SECS:-10}"
exec scripts/with-emulator.sh cargo nextest run --test it --no-capture -E 'test(/^chaos::/)'
