#!/usr/bin/env bash
# `make alerts-lint` (and the last step of `make helm-lint`): offline checks of
# the alert rules and the Grafana dashboard (issue 5):
#   yamllint          the rules file and its unit tests (deploy/alerts/.yamllint.yaml)
#   check.py rules    structure; alerts = the Runbook sections of docs/operations.md,
#                     each with for, severity, summary, description and a runbook_url
#                     whose anchor exists; metrics and labels the worker exports
#   check.py dashboard  schemaVersion 39, variables, unique panel ids, grid, every
#                     panel with description, ${datasource} and targets, known metrics
#   promtool check rules / test rules (tests/*.test.yaml) / check of the dashboard's
#                     queries, when promtool is available: on PATH, in TOOLS_DIR/bin
#                     (default .tools/bin), or taken from Debian's `prometheus`
#                     package (apt-get download + dpkg-deb, nothing is installed
#                     system-wide; about 20 MB, a few seconds). PROMTOOL=/path uses
#                     that binary; PROMTOOL=skip runs the Python checks only.
#                     Under CI=true a promtool that cannot be had fails the run.
# Prints one line per check and a closing `alerts-check: N passed, M failed`
# (`, K skipped` when promtool was not available); exits 1 when a check failed.
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
cd "$repo"
tools=${TOOLS_DIR:-$repo/.tools}
# The pinned tools of deploy/helm/tests/tools.sh when installed (its venv has
# yamllint and PyYAML), else whatever the machine has.
scripts_dir=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
export PATH="$tools/venv/bin:$tools/bin:$scripts_dir:$PATH"

rules=deploy/alerts/push-dispatch.rules.yaml
tests=deploy/alerts/tests/push-dispatch.rules.test.yaml

work=$(mktemp -d "${TMPDIR:-/tmp}/alerts-check.XXXXXX")
trap 'rm -rf "$work"' EXIT

passed=0
failed=0
skipped=0
failures=()

# step NAME COMMAND...: runs COMMAND, prints ok/FAIL, and its output on failure.
step() {
  local name=$1
  shift
  if "$@" >"$work/step.log" 2>&1; then
    passed=$((passed + 1))
    printf 'ok   %s\n' "$name"
  else
    failed=$((failed + 1))
    failures+=("$name")
    printf 'FAIL %s\n' "$name"
    sed 's/^/     /' "$work/step.log"
  fi
}

# python_checks WHAT: check.py prints its own ok/FAIL lines; count them.
python_checks() {
  local status=0 ok bad
  python3 deploy/alerts/check.py "$1" >"$work/py.log" 2>&1 || status=$?
  cat "$work/py.log"
  ok=$(grep -c '^ok ' "$work/py.log" || true)
  bad=$(grep -c '^FAIL ' "$work/py.log" || true)
  passed=$((passed + ok))
  if ((status != 0 && bad == 0)); then bad=1; fi
  failed=$((failed + bad))
  if ((bad)); then failures+=("check.py $1"); fi
}

# fetch_promtool DIR: promtool from Debian's prometheus package into DIR.
fetch_promtool() {
  local dest=$1 deb
  command -v apt-get >/dev/null 2>&1 && command -v dpkg-deb >/dev/null 2>&1 || return 1
  mkdir -p "$work/deb" "$dest"
  if ! (cd "$work/deb" && timeout 60 apt-get download -q prometheus) >"$work/apt.log" 2>&1; then
    # A machine whose package lists were never fetched: fetch them once (root only).
    [[ $(id -u) == 0 ]] || return 1
    timeout 120 apt-get update -qq >>"$work/apt.log" 2>&1 || return 1
    (cd "$work/deb" && timeout 60 apt-get download -q prometheus) >>"$work/apt.log" 2>&1 || return 1
  fi
  deb=$(find "$work/deb" -name 'prometheus_*.deb' | head -n 1)
  [[ -n "$deb" ]] || return 1
  dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$work/deb" ./usr/bin/promtool || return 1
  install -m 0755 "$work/deb/usr/bin/promtool" "$dest/promtool"
  echo "installed $("$dest/promtool" --version 2>&1 | head -n 1) (Debian package prometheus) into $dest"
}

promtool=${PROMTOOL:-}
if [[ -z "$promtool" ]]; then
  if command -v promtool >/dev/null 2>&1; then
    promtool=$(command -v promtool)
  elif fetch_promtool "$tools/bin"; then
    promtool="$tools/bin/promtool"
  elif [[ "${CI:-}" == true ]]; then
    echo "FAIL promtool is not available (not on PATH, and Debian's prometheus package could not be fetched)"
    echo "     CI=true: a missing tool fails, it is never skipped"
    exit 1
  else
    promtool=skip
    echo "note: promtool is not available (not on PATH, and Debian's prometheus package could not be fetched);"
    echo "      PromQL is not parsed and the rule unit tests do not run: structural checks only"
  fi
fi
if [[ "$promtool" != skip ]]; then
  echo "tools: $("$promtool" --version 2>&1 | head -n 1)"
fi

if command -v yamllint >/dev/null 2>&1; then
  step "yamllint deploy/alerts" \
    yamllint --strict -c deploy/alerts/.yamllint.yaml "$rules" deploy/alerts/tests/ deploy/alerts/.yamllint.yaml \
    deploy/helm/tests/alerts/
elif [[ "${CI:-}" == true ]]; then
  failed=$((failed + 1))
  failures+=("yamllint")
  echo "FAIL yamllint is not installed (CI=true: a missing tool fails)"
else
  skipped=$((skipped + 1))
  echo "skip yamllint deploy/alerts (yamllint not installed: pip install yamllint)"
fi

python_checks rules
python_checks dashboard

if [[ "$promtool" != skip ]]; then
  step "promtool check rules $rules" "$promtool" check rules "$rules"
  step "promtool test rules $tests" "$promtool" test rules "$tests"
  python3 deploy/alerts/check.py dashboard-rules >"$work/dashboard-queries.rules.yaml"
  step "promtool parses every dashboard query" "$promtool" check rules "$work/dashboard-queries.rules.yaml"
else
  skipped=$((skipped + 3))
fi

if ((failed)); then
  printf 'failed: %s\n' "${failures[@]}"
fi
if ((skipped)); then
  echo "alerts-check: $passed passed, $failed failed, $skipped skipped"
else
  echo "alerts-check: $passed passed, $failed failed"
fi
((failed == 0))
