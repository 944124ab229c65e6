#!/usr/bin/env bash
# Makes the contract test's Python tools ready: the pinned packages of
# tests/contract/requirements.txt (protobuf, grpcio-tools) in .tools/contract-py,
# installed with `pip install --quiet --target` when missing or of another
# version. Prints that directory (for PYTHONPATH) on success. Idempotent and
# safe to run concurrently (a lock serialises installs). Called by
# scripts/test.sh before the tests, and by the contract test itself.
#
# Exit codes: 0 ready; 3 python3 or pip missing outside CI (the test skips,
# saying so); 1 anything else, and anything missing under CI=true.
set -euo pipefail
cd "$(dirname "$0")/.."

dir="$PWD/.tools/contract-py"
req="$PWD/tests/contract/requirements.txt"

missing() {
  if [[ "${CI:-}" == "true" ]]; then
    echo "error: $1 and CI=true: the contract test cannot run (it must not be skipped in CI)" >&2
    exit 1
  fi
  echo "$1: the contract test is skipped (install python3 and pip to run it)" >&2
  exit 3
}

command -v python3 >/dev/null 2>&1 || missing "python3 is not installed"

# True when every pinned distribution is importable from $dir at its pinned version.
ready() {
  PYTHONPATH="$dir" python3 - "$req" "$dir" <<'EOF' >/dev/null 2>&1
import sys
from importlib import metadata
want = {}
for line in open(sys.argv[1]):
    line = line.split("#", 1)[0].strip()
    if line:
        name, version = line.split("==")
        want[name] = version
dists = {d.metadata["Name"].lower(): d.version for d in metadata.distributions(path=[sys.argv[2]])}
sys.exit(0 if all(dists.get(n.lower()) == v for n, v in want.items()) else 1)
EOF
}

if ! ready; then
  python3 -m pip --version >/dev/null 2>&1 || missing "pip is not installed (python3 -m pip)"
  mkdir -p "$(dirname "$dir")"
  (
    flock 9
    if ! ready; then
      echo "installing the contract test's Python packages into $dir" >&2
      rm -rf "$dir"
      python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location --root-user-action=ignore \
        --target "$dir" -r "$req" >&2
    fi
  ) 9>"$dir.lock"
  ready || { echo "error: $dir does not hold the packages of $req after pip install" >&2; exit 1; }
fi
echo "$dir"
