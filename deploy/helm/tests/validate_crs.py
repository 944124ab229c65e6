#!/usr/bin/env python3
"""Validates the custom resources of rendered manifests against the vendored
JSON schemas in deploy/helm/tests/schemas/ (see SOURCES.md there), the check
kubernetes-validate cannot do: it knows the built-in kinds only.

Every document whose API group is not a built-in Kubernetes group must have a
schema file GROUP_VERSION_KIND.json; a custom kind without one fails, so a new
custom resource cannot slip past unchecked. Built-in kinds are left to
kubernetes-validate.

Usage: validate_crs.py RENDERED.yaml...   Prints one line per custom resource
and `validate_crs: N passed, M failed`; exits 1 when one failed.
"""

import json
import sys
from pathlib import Path

import jsonschema
import yaml

SCHEMAS = Path(__file__).resolve().parent / "schemas"
BUILTIN_GROUPS = {
    "", "apps", "batch", "policy", "autoscaling", "networking.k8s.io", "rbac.authorization.k8s.io",
    "storage.k8s.io", "scheduling.k8s.io", "coordination.k8s.io", "discovery.k8s.io", "node.k8s.io",
    "admissionregistration.k8s.io", "apiextensions.k8s.io", "certificates.k8s.io", "events.k8s.io",
    "flowcontrol.apiserver.k8s.io",
}


def schema_for(api_version, kind, cache={}):  # noqa: B006 - a deliberate per-process cache
    group, _, version = api_version.rpartition("/")
    path = SCHEMAS / f"{group}_{version}_{kind}.json"
    if path not in cache:
        cache[path] = json.loads(path.read_text()) if path.exists() else None
    return path, cache[path]


def main(files):
    passed = failed = 0
    for f in files:
        for doc in yaml.safe_load_all(Path(f).read_text()):
            if not doc:
                continue
            api, kind = doc.get("apiVersion", ""), doc.get("kind", "")
            group = api.rpartition("/")[0]
            if group in BUILTIN_GROUPS:
                continue
            name = f"{kind} {doc.get('metadata', {}).get('name')} ({api}, {Path(f).name})"
            path, schema = schema_for(api, kind)
            if schema is None:
                failed += 1
                print(f"FAIL {name}: no schema {path.name} in {SCHEMAS}; add it (SOURCES.md) before rendering it")
                continue
            validator = jsonschema.Draft7Validator(schema)
            errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
            if errors:
                failed += 1
                print(f"FAIL {name}: against {path.name}")
                for e in errors[:20]:
                    where = "/".join(str(p) for p in e.absolute_path) or "(root)"
                    print(f"     - {where}: {e.message[:300]}")
            else:
                passed += 1
                print(f"ok   {name}")
    print(f"validate_crs: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    if len(sys.argv) < 2:
        print(__doc__.strip().splitlines()[-2], file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1:]))
