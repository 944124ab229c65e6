#!/usr/bin/env bash
# The wire contract's checks, run by `make lint`:
#   1. `buf lint` of proto/ (buf's STANDARD rules, proto/buf.yaml);
#   2. `buf breaking` of proto/ against the committed baseline image
#      proto/baseline.binpb (the last released contract): a removed or
#      renamed field, a changed number, type or language option fails;
#   3. a self-test of step 2: a copy of proto/ with one field renamed
#      (TokenInvalidated.token -> device_token) must FAIL `buf breaking`,
#      so a check that silently passes everything is caught.
#
# buf comes from PyPI (`pip install buf-bin`, offline once installed). Under
# CI=true a missing buf is an error; elsewhere the checks are skipped with a
# message saying how to install it.
#
#   scripts/buf-check.sh            # all three
#   scripts/buf-check.sh baseline   # rewrite proto/baseline.binpb from proto/ (at a release)
set -euo pipefail
cd "$(dirname "$0")/../proto"

if ! command -v buf >/dev/null 2>&1; then
  if [[ "${CI:-}" == "true" ]]; then
    echo "error: buf is not installed and CI=true: the contract checks cannot be skipped (pip install buf-bin)" >&2
    exit 1
  fi
  echo "buf not installed (pip install buf-bin): skipping buf lint and buf breaking"
  exit 0
fi

if [[ "${1:-}" == "baseline" ]]; then
  buf build --exclude-source-info -o baseline.binpb
  echo "proto/baseline.binpb rewritten from proto/: commit it with the release"
  exit 0
fi

buf lint
echo "buf lint: clean"

if [[ ! -f baseline.binpb ]]; then
  echo "error: proto/baseline.binpb is missing: the breaking check has nothing to compare with (scripts/buf-check.sh baseline)" >&2
  exit 1
fi
buf breaking --against baseline.binpb
echo "buf breaking: no breaking change against proto/baseline.binpb"

# Self-test: a renamed field must be reported as breaking.
scratch=$(mktemp -d "${TMPDIR:-/tmp}/buf-breaking-selftest.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
cp -R buf.yaml push "$scratch/"
sed -i 's/^  string token = 3;$/  string device_token = 3;/' "$scratch/push/v1/push.proto"
if ! grep -q '^  string device_token = 3;$' "$scratch/push/v1/push.proto"; then
  echo "error: buf breaking self-test: TokenInvalidated.token (field 3) not found to rename; update scripts/buf-check.sh" >&2
  exit 1
fi
set +e
baseline="$PWD/baseline.binpb"
out=$(cd "$scratch" && buf breaking --against "$baseline" 2>&1)
rc=$?
set -e
if [[ $rc -eq 0 ]] || ! grep -q 'changed name from "token" to "device_token"' <<<"$out"; then
  echo "error: buf breaking self-test: renaming TokenInvalidated.token was not reported as breaking (exit $rc):" >&2
  echo "$out" >&2
  exit 1
fi
echo "buf breaking self-test: a renamed field fails the check, as it must"
