#!/usr/bin/env python3
"""Chart tests for deploy/helm/push-dispatch, run by `make helm-lint`.

These tests render the chart with helm for the default values, every file in
deploy/helm/ci/ and targeted --set variations, and assert what schemas
cannot: the security context and probes, the grace period against
shutdown_grace, that the rendered config has the keys of the repository's
config.yaml (and that values.yaml and values.schema.json stay in step with it
and with each other), NetworkPolicy DNS and both Google API egress modes,
autoscaling (KEDA's prometheus and gcp-pubsub triggers, the HPA on CPU or
the backlog), the alert rules rendered from the one rules file and scoped to
the release (promtool runs two releases side by side when it is available;
under CI=true it must be), the dashboard ConfigMap, every custom resource
against the vendored schemas (schemas/, validate_crs.py) and that broken
ones fail, rollouts (maxSurge, the upgrade timeout in NOTES, Spot), the
Dockerfile's dependency layer, the chart's metadata against Cargo.toml, that
no example host is linked, and, when target/debug/push-dispatch exists, that
the binary accepts every rendered config except for the key files that only
exist in a pod.

Usage: test_chart.py [--helm PATH] [--promtool PATH] [--binary PATH]
Prints one line per test and `test_chart: N passed, M failed[, K skipped]`;
exits 1 on failure.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import validate_crs  # noqa: E402

REPO = Path(__file__).resolve().parents[3]
HELM_DIR = REPO / "deploy" / "helm"
CHART = HELM_DIR / "push-dispatch"
CI_VALUES = sorted((HELM_DIR / "ci").glob("*.yaml"))
RELEASE = "pd"
NAMESPACE = "push"
CONFIG_PATH = "/etc/push-dispatch/config.yaml"
CLUSTER_SCOPED = {"GlobalRules"}

HELM = "helm"
BINARY = None
TESTS = []
_renders = {}


def test(fn):
    TESTS.append(fn)
    return fn


class RenderError(Exception):
    pass


class Skip(Exception):
    pass


def helm_template(values=None, sets=(), release=RELEASE):
    """Renders the chart; returns the list of objects. Cached per arguments."""
    key = (str(values), tuple(sets), release)
    if key in _renders:
        return _renders[key]
    cmd = [HELM, "template", release, str(CHART), "--namespace", NAMESPACE]
    if values:
        cmd += ["--values", str(values)]
    for s in sets:
        cmd += ["--set", s]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RenderError(proc.stderr.strip() or proc.stdout.strip())
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    _renders[key] = docs
    return docs


def helm_fails(values=None, sets=()):
    """Renders expecting failure; returns helm's error text."""
    try:
        helm_template(values, sets)
    except RenderError as err:
        return str(err)
    raise AssertionError(f"helm template succeeded with values={values} sets={list(sets)}; expected a failure")


def find(docs, kind, name=None, required=True):
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    if required:
        assert found, f"no {kind}{' ' + name if name else ''} rendered (kinds: {sorted({d['kind'] for d in docs})})"
    return found


def one(docs, kind, name=None):
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def deployment(docs):
    return one(docs, "Deployment")


def rendered_config(docs):
    cm = one(docs, "ConfigMap", f"{RELEASE}-push-dispatch")
    return yaml.safe_load(cm["data"]["config.yaml"])


def values_file(values):
    base = yaml.safe_load((CHART / "values.yaml").read_text())
    if values:
        merge(base, yaml.safe_load(Path(values).read_text()))
    return base


def merge(dst, src):
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            merge(dst[k], v)
        else:
            dst[k] = v


def repo_config():
    return yaml.safe_load((REPO / "config.yaml").read_text())


def key_paths(node, prefix=""):
    """Every key path of a YAML tree; list items are merged under `[]`."""
    paths = set()
    if isinstance(node, dict):
        for k, v in node.items():
            p = f"{prefix}.{k}" if prefix else k
            paths.add(p)
            paths |= key_paths(v, p)
    elif isinstance(node, list):
        for item in node:
            paths |= key_paths(item, f"{prefix}[]")
    return paths


def lookup(node, path):
    """The value at a dotted key path without list items (None when absent)."""
    for part in path.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


def schema_paths(schema, prefix=""):
    """Key paths a JSON schema declares (properties, array items as `[]`)."""
    paths = set()
    if schema.get("type") == "array" or "items" in schema:
        return schema_paths(schema.get("items", {}), f"{prefix}[]")
    for k, sub in schema.get("properties", {}).items():
        p = f"{prefix}.{k}" if prefix else k
        paths.add(p)
        paths |= schema_paths(sub, p)
    return paths


def duration_seconds(text):
    units = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "sec": 1, "m": 60, "min": 60,
             "h": 3600, "hr": 3600, "d": 86400}
    parts = re.findall(r"([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Zµ]+)", str(text))
    assert parts, f"cannot read duration {text!r}"
    return sum(float(n) * units[u] for n, u in parts)


def all_renders():
    """(label, values file or None, objects) for the default values and every ci/ file."""
    out = [("default values", None, helm_template())]
    for f in CI_VALUES:
        out.append((f"ci/{f.name}", f, helm_template(f)))
    return out


def pod_labels(dep):
    return dep["spec"]["template"]["metadata"]["labels"]


def selects(selector, labels):
    match = selector.get("matchLabels", selector)
    return all(labels.get(k) == v for k, v in match.items())


# ---------------------------------------------------------------- config


RATE_LIMIT_MAP_KEYS = {f"apps[].{platform}.rate_limit.{k}" for platform in ("apns", "fcm")
                       for k in ("per_second", "scope", "fallback_per_second")}


@test
def config_keys_match_repo_config_yaml():
    """The ConfigMap's config.yaml parses and has exactly the keys of config.yaml."""
    want_top = set(repo_config())
    want_all = key_paths(repo_config())
    for label, _, docs in all_renders():
        cfg = rendered_config(docs)
        assert isinstance(cfg, dict), f"{label}: config.yaml is not a mapping"
        assert set(cfg) == want_top, (
            f"{label}: top-level keys {sorted(cfg)} differ from config.yaml's {sorted(want_top)}")
        # `rate_limit: N` may also be written as a map (config.yaml shows null).
        extra = {p for p in key_paths(cfg) - want_all if p not in RATE_LIMIT_MAP_KEYS}
        assert not extra, f"{label}: keys not in config.yaml (the binary refuses them): {sorted(extra)}"


@test
def values_yaml_mirrors_config_yaml():
    """values.yaml `config:` declares every key of config.yaml and no other."""
    want = key_paths(repo_config())
    have = key_paths(yaml.safe_load((CHART / "values.yaml").read_text())["config"])
    assert have == want, (f"values.yaml config: missing {sorted(want - have)}, "
                          f"unknown {sorted(have - want)}; keep the chart in step with config.yaml")


@test
def schema_mirrors_config_yaml():
    """values.schema.json describes exactly config.yaml's keys, closed to others."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema.get("$schema", "").startswith("http://json-schema.org/draft-07/"), "schema is not draft-07"
    cfg = schema["properties"]["config"]
    want = key_paths(repo_config())
    # Lists that config.yaml leaves empty (e.g. feedback.subscriptions) show
    # no item keys there; the schema still describes their items.
    empty = [p for p in want if lookup(repo_config(), p) == []]
    have = {p for p in schema_paths(cfg) if not any(p.startswith(f"{e}[]") for e in empty)}
    assert have == want, (f"values.schema.json config: missing {sorted(want - have)}, "
                          f"unknown {sorted(have - want)}")

    def closed(node, path):
        if node.get("type") == "object" or "properties" in node:
            assert node.get("additionalProperties") is False, f"schema {path or 'config'} accepts unknown keys"
            for k, sub in node.get("properties", {}).items():
                closed(sub, f"{path}.{k}" if path else k)
        if "items" in node:
            closed(node["items"], f"{path}[]")

    closed(cfg, "")


@test
def schema_refuses_typos_and_wrong_types():
    for sets, needle in [
        (["config.pubsub.streamz=4"], "streamz"),
        (["config.pubsub.streams=four"], "streams"),
        (["config.shutdown_grace=thirty"], "shutdown_grace"),
        (["config.telemetry.log_format=xml"], "log_format"),
        (["keda.mode=Whatever"], "mode"),
        (["secrets.source=vault"], "source"),
    ]:
        err = helm_fails(sets=sets)
        assert needle in err, f"--set {sets}: error does not name {needle!r}: {err}"


@test
def local_stand_ins_are_refused_unless_allowed():
    def values_with(platform, field, value, allow=False):
        config = values_file(None)["config"]
        config["apps"][0][platform][field] = value
        config["allow_insecure_endpoints"] = allow
        path = Path(tempfile.mkdtemp()) / "values.yaml"
        path.write_text(yaml.safe_dump({"config": config}))
        return str(path)

    for platform, endpoint in [("fcm", "stub:"), ("apns", "http://127.0.0.1:9443")]:
        err = helm_fails(values=values_with(platform, "endpoint", endpoint))
        assert "endpoint" in err, f"{platform} {endpoint}: {err}"
        # The same flag as the worker's own check lets them through.
        helm_template(values=values_with(platform, "endpoint", endpoint, allow=True))
    helm_template(values=values_with("apns", "environment", "production"))
    err = helm_fails(values=values_with("apns", "environment", "staging"))
    assert "environment" in err, err


@test
def production_defaults():
    cfg = rendered_config(helm_template())
    assert cfg["telemetry"]["log_format"] == "json", "log_format should be json for Cloud Logging"
    assert cfg["server"]["listen"] == "0.0.0.0:8080"
    app = cfg["apps"][0]
    assert app["apns"]["endpoint"] == "https://api.push.apple.com"
    assert app["apns"]["key_file"].startswith("/secrets/apns/")
    assert app["fcm"]["endpoint"] == "https://fcm.googleapis.com"
    assert app["fcm"]["credentials_file"] is None, "FCM should default to Workload Identity"


# ---------------------------------------------------------------- Deployment


@test
def security_context_is_hardened():
    for label, _, docs in all_renders():
        pods = [deployment(docs)["spec"]["template"]["spec"]]
        pods += [j["spec"]["template"]["spec"] for j in find(docs, "Job", required=False)]
        for pod in pods:
            psc = pod["securityContext"]
            assert psc.get("runAsNonRoot") is True, f"{label}: pod runAsNonRoot"
            assert psc.get("runAsUser") == 65532, f"{label}: pod runAsUser"
            assert psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{label}: pod seccomp"
            assert pod.get("automountServiceAccountToken") is False, f"{label}: service account token mounted"
            for c in pod["containers"]:
                sc = c["securityContext"]
                assert sc.get("runAsNonRoot") is True, f"{label}/{c['name']}: runAsNonRoot"
                assert sc.get("runAsUser") == 65532, f"{label}/{c['name']}: runAsUser"
                assert sc.get("readOnlyRootFilesystem") is True, f"{label}/{c['name']}: readOnlyRootFilesystem"
                assert sc.get("allowPrivilegeEscalation") is False, f"{label}/{c['name']}: allowPrivilegeEscalation"
                assert sc.get("capabilities", {}).get("drop") == ["ALL"], f"{label}/{c['name']}: drop ALL"
                assert sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{label}/{c['name']}: seccomp"


@test
def probes_resources_and_port():
    for label, _, docs in all_renders():
        cfg = rendered_config(docs)
        port = int(cfg["server"]["listen"].rsplit(":", 1)[1])
        c = deployment(docs)["spec"]["template"]["spec"]["containers"][0]
        assert c["args"] == ["run", "--config", CONFIG_PATH], f"{label}: args {c['args']}"
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert ports.get("http") == port, f"{label}: container port {ports} != listen port {port}"
        for probe, path in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"), ("startupProbe", "/healthz")]:
            get = c.get(probe, {}).get("httpGet")
            assert get, f"{label}: {probe} missing"
            assert get["path"] == path and get["port"] in ("http", port), f"{label}: {probe} {get}"
        res = c.get("resources", {})
        assert res.get("requests", {}).get("cpu") and res.get("requests", {}).get("memory"), f"{label}: requests"
        assert res.get("limits", {}).get("memory"), f"{label}: memory limit"
        mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
        assert CONFIG_PATH.rsplit("/", 1)[0] in mounts, f"{label}: config not mounted"


@test
def termination_grace_exceeds_shutdown_grace():
    for label, _, docs in all_renders():
        grace = duration_seconds(rendered_config(docs)["shutdown_grace"])
        tgps = deployment(docs)["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert tgps > grace, f"{label}: terminationGracePeriodSeconds {tgps} <= shutdown_grace {grace}s"
    docs = helm_template(sets=["config.shutdown_grace=2m"])
    assert deployment(docs)["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 135
    err = helm_fails(sets=["terminationGracePeriodSeconds=30"])
    assert "must exceed config.shutdown_grace" in err, err


@test
def config_change_rolls_the_pods():
    def checksum(docs):
        return deployment(docs)["spec"]["template"]["metadata"]["annotations"]["checksum/config"]

    a = checksum(helm_template())
    b = checksum(helm_template(sets=["config.dispatch.concurrency=256"]))
    assert re.fullmatch(r"[0-9a-f]{64}", a), f"checksum/config {a!r}"
    assert a != b, "checksum/config did not change with the config"


@test
def topology_spread_and_pdb_select_the_workers():
    for label, _, docs in all_renders():
        dep = deployment(docs)
        labels = pod_labels(dep)
        assert selects(dep["spec"]["selector"], labels), f"{label}: Deployment selector"
        tsc = dep["spec"]["template"]["spec"]["topologySpreadConstraints"]
        keys = {t["topologyKey"] for t in tsc}
        assert keys == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}, f"{label}: spread keys {keys}"
        for t in tsc:
            assert selects(t["labelSelector"], labels), f"{label}: spread selector"
        pdb = one(docs, "PodDisruptionBudget")
        assert selects(pdb["spec"]["selector"], labels), f"{label}: PDB selector"
        assert ("minAvailable" in pdb["spec"]) != ("maxUnavailable" in pdb["spec"]), f"{label}: PDB {pdb['spec']}"
        # At the fewest replicas, the PDB must still allow one eviction, or node drains hang.
        fewest = min([dep["spec"].get("replicas", 10**6)]
                     + [h["spec"]["minReplicas"] for h in find(docs, "HorizontalPodAutoscaler", required=False)]
                     + [s["spec"]["minReplicaCount"] for s in find(docs, "ScaledObject", required=False)])
        if isinstance(pdb["spec"].get("minAvailable"), int):
            assert fewest > pdb["spec"]["minAvailable"], f"{label}: PDB minAvailable blocks drains at {fewest} pods"
        if isinstance(pdb["spec"].get("maxUnavailable"), int):
            assert pdb["spec"]["maxUnavailable"] >= 1, f"{label}: PDB maxUnavailable 0 blocks drains"


@test
def every_configured_file_is_mounted():
    """key_file, credentials_file and ca_file of every app lie under a volume mount."""
    for label, _, docs in all_renders():
        c = deployment(docs)["spec"]["template"]["spec"]["containers"][0]
        mounts = [m["mountPath"].rstrip("/") + "/" for m in c["volumeMounts"]]
        for app in rendered_config(docs)["apps"]:
            for platform, key in [("apns", "key_file"), ("apns", "ca_file"), ("fcm", "credentials_file"),
                                  ("fcm", "ca_file")]:
                path = (app.get(platform) or {}).get(key)
                if path:
                    assert any(path.startswith(m) for m in mounts), (
                        f"{label}: apps[{app['name']}].{platform}.{key} {path} is under no mount {mounts}")


@test
def labels_and_namespace_on_every_object():
    for label, _, docs in all_renders():
        for d in docs:
            md = d["metadata"]
            for k in ["app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/managed-by",
                      "helm.sh/chart", "app.kubernetes.io/version"]:
                assert k in md.get("labels", {}), f"{label}: {d['kind']} {md['name']} lacks label {k}"
            if d["kind"] in CLUSTER_SCOPED:
                assert "namespace" not in md, f"{label}: cluster-scoped {d['kind']} {md['name']} has a namespace"
            else:
                assert md.get("namespace") == NAMESPACE, f"{label}: {d['kind']} {md['name']} namespace"


# ---------------------------------------------------------------- service account


@test
def workload_identity_annotation():
    sa = one(helm_template(), "ServiceAccount")
    assert sa["metadata"]["annotations"]["iam.gke.io/gcp-service-account"] == \
        "push-dispatch@local-project.iam.gserviceaccount.com"
    dep = deployment(helm_template())
    assert dep["spec"]["template"]["spec"]["serviceAccountName"] == sa["metadata"]["name"]
    docs = helm_template(HELM_DIR / "ci" / "all-features.yaml")
    sa = one(docs, "ServiceAccount", f"{RELEASE}-push-dispatch")
    assert sa["metadata"]["annotations"]["iam.gke.io/gcp-service-account"] == \
        "push-dispatch-otp@acme-push-prod.iam.gserviceaccount.com"
    sa = one(helm_template(HELM_DIR / "ci" / "keda.yaml"), "ServiceAccount")
    assert "iam.gke.io/gcp-service-account" not in (sa["metadata"].get("annotations") or {}), \
        "workloadIdentity.enabled=false still annotates"


# ---------------------------------------------------------------- autoscaling


@test
def hpa_and_keda_together_are_refused():
    err = helm_fails(sets=["autoscaling.enabled=true", "keda.enabled=true"])
    assert "autoscaling.enabled and keda.enabled are both true" in err, err


@test
def default_has_fixed_replicas_and_no_autoscaler():
    docs = helm_template()
    assert deployment(docs)["spec"]["replicas"] == 2
    assert not find(docs, "HorizontalPodAutoscaler", required=False)
    assert not find(docs, "ScaledObject", required=False)


@test
def hpa_scales_the_deployment_slowly_down_on_cpu_or_the_backlog():
    docs = helm_template(HELM_DIR / "ci" / "all-features.yaml")
    values = values_file(HELM_DIR / "ci" / "all-features.yaml")
    dep = deployment(docs)
    assert "replicas" not in dep["spec"], "an autoscaled Deployment must not pin replicas"
    hpa = one(docs, "HorizontalPodAutoscaler")
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["kind"], ref["name"]) == ("Deployment", dep["metadata"]["name"]), ref
    metrics = {m["type"]: m for m in hpa["spec"]["metrics"]}
    assert set(metrics) == {"External", "Resource"}, metrics
    ext = metrics["External"]["external"]
    assert ext["metric"]["name"] == "pubsub.googleapis.com|subscription|num_undelivered_messages", ext
    assert ext["metric"]["selector"]["matchLabels"] == {
        "resource.labels.subscription_id": values["config"]["pubsub"]["subscription"]}, ext
    assert ext["target"] == {"type": "AverageValue", "averageValue": "2000"}, ext
    assert metrics["Resource"]["resource"]["name"] == "cpu"
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 300
    assert not find(docs, "ScaledObject", required=False)
    # CPU only (the default), backlog only, and neither (refused).
    cpu = one(helm_template(sets=["autoscaling.enabled=true"]), "HorizontalPodAutoscaler")
    assert [m["type"] for m in cpu["spec"]["metrics"]] == ["Resource"], cpu["spec"]["metrics"]
    backlog = one(helm_template(sets=["autoscaling.enabled=true", "autoscaling.pubsubBacklog.enabled=true",
                                      "autoscaling.targetCPUUtilizationPercentage=null"]), "HorizontalPodAutoscaler")
    assert [m["type"] for m in backlog["spec"]["metrics"]] == ["External"], backlog["spec"]["metrics"]
    err = helm_fails(sets=["autoscaling.enabled=true", "autoscaling.targetCPUUtilizationPercentage=null"])
    assert "give the HPA a metric" in err, err


def check_scaled_object(docs, values):
    dep = deployment(docs)
    assert "replicas" not in dep["spec"], "a KEDA-scaled Deployment must not pin replicas"
    assert not find(docs, "HorizontalPodAutoscaler", required=False), "KEDA and an HPA rendered together"
    so = one(docs, "ScaledObject")
    assert so["apiVersion"] == "keda.sh/v1alpha1"
    ref = so["spec"]["scaleTargetRef"]
    assert ref["name"] == dep["metadata"]["name"] and ref.get("kind", "Deployment") == "Deployment", ref
    assert so["spec"]["minReplicaCount"] >= 1, "scaling to zero delays one-time codes"
    assert so["spec"]["maxReplicaCount"] >= so["spec"]["minReplicaCount"]
    behavior = so["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] >= 300, "scale-down must be slow (APNs churn)"
    trigger = so["spec"]["triggers"][0]
    cfg = values["config"]
    if values["keda"]["trigger"] == "prometheus":
        assert trigger["type"] == "prometheus", trigger
        md = trigger["metadata"]
        assert md["serverAddress"] == (f"https://monitoring.googleapis.com/v1/projects/{cfg['project_id']}"
                                       "/location/global/prometheus"), md
        sel = f'project_id="{cfg["project_id"]}", subscription_id="{cfg["pubsub"]["subscription"]}"'
        assert sel in md["query"], md["query"]
        metric = ("subscription_oldest_unacked_message_age" if values["keda"]["mode"] == "OldestUnackedMessageAge"
                  else "subscription_num_undelivered_messages")
        assert f"pubsub_googleapis_com:{metric}{{" in md["query"], md["query"]
        assert md["ignoreNullValues"] == "false", "an unreadable backlog must count towards the fallback"
        assert trigger.get("metricType", "AverageValue") == "AverageValue", "fallback needs AverageValue"
        keys = ("threshold", "activationThreshold")
    else:
        assert trigger["type"] == "gcp-pubsub", trigger
        want = f"projects/{cfg['project_id']}/subscriptions/{cfg['pubsub']['subscription']}"
        assert trigger["metadata"]["subscriptionName"] == want, trigger["metadata"]
        assert trigger["metadata"]["mode"] == values["keda"]["mode"]
        keys = ("value", "activationValue")
    for k in keys:
        assert isinstance(trigger["metadata"][k], str), f"KEDA metadata {k} must be a string"
    return so, trigger


@test
def keda_scaled_object_on_the_subscription_backlog():
    """Default trigger: prometheus against Cloud Monitoring's PromQL API, GMP's authentication."""
    f = HELM_DIR / "ci" / "keda.yaml"
    docs = helm_template(f)
    so, trigger = check_scaled_object(docs, values_file(f))
    assert trigger["metadata"]["threshold"] == "10000"
    auth = one(docs, "TriggerAuthentication")
    assert auth["spec"] == {"podIdentity": {"provider": "gcp"}}, auth["spec"]
    assert trigger["authenticationRef"] == {"name": auth["metadata"]["name"], "kind": "TriggerAuthentication"}
    assert "authModes" not in trigger["metadata"], "GMP takes no other auth mode than the GCP identity"
    fallback = so["spec"]["fallback"]
    assert fallback["replicas"] >= 1 and fallback["behavior"] == "currentReplicasIfHigher", fallback
    assert [t["type"] for t in so["spec"]["triggers"]] == ["prometheus", "cpu"], "extraTriggers not appended"
    age = one(helm_template(f, sets=["keda.mode=OldestUnackedMessageAge"]), "ScaledObject")["spec"]["triggers"][0]
    assert age["metadata"]["query"].startswith("max(pubsub_googleapis_com:subscription_oldest_unacked_message_age{")
    custom = one(helm_template(f, sets=["keda.prometheus.query=sum(x)", "keda.fallback.behavior=static"]),
                 "ScaledObject")
    assert custom["spec"]["triggers"][0]["metadata"]["query"] == "sum(x)"
    assert custom["spec"]["fallback"]["behavior"] == "static"
    err = helm_fails(f, sets=["keda.fallback.behavior=sometimes"])
    assert "behavior" in err, err


@test
def keda_deprecated_gcp_pubsub_trigger_with_existing_cluster_trigger_authentication():
    f = HELM_DIR / "ci" / "secret-manager-gcp.yaml"
    docs = helm_template(f)
    so, trigger = check_scaled_object(docs, values_file(f))
    assert trigger["metadata"]["mode"] == "OldestUnackedMessageAge"
    assert trigger["authenticationRef"] == {"name": "keda-gcp-workload-identity",
                                            "kind": "ClusterTriggerAuthentication"}
    assert not find(docs, "TriggerAuthentication", required=False)
    assert "fallback" not in so["spec"]
    cmd = [HELM, "install", "--dry-run=client", RELEASE, str(CHART), "--namespace", NAMESPACE, "--values", str(f)]
    notes = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.split("NOTES:", 1)[1]
    assert "gcp-pubsub scaler is deprecated" in notes, notes


# ---------------------------------------------------------------- metrics


@test
def pod_monitoring_scrapes_metrics():
    docs = helm_template(HELM_DIR / "ci" / "all-features.yaml")
    dep = deployment(docs)
    pm = one(docs, "PodMonitoring")
    assert pm["apiVersion"] == "monitoring.googleapis.com/v1"
    assert selects(pm["spec"]["selector"], pod_labels(dep)), "PodMonitoring selects no worker pod"
    (ep,) = pm["spec"]["endpoints"]
    port_names = {p["name"] for p in dep["spec"]["template"]["spec"]["containers"][0]["ports"]}
    assert ep["path"] == "/metrics" and ep["port"] in port_names, ep
    assert duration_seconds(ep["timeout"]) <= duration_seconds(ep["interval"])


@test
def service_monitor_scrapes_metrics_through_the_service():
    docs = helm_template(HELM_DIR / "ci" / "all-features.yaml")
    dep = deployment(docs)
    svc = one(docs, "Service")
    assert selects(svc["spec"]["selector"], pod_labels(dep)), "Service selects no worker pod"
    (sp,) = svc["spec"]["ports"]
    assert sp["name"] == "http" and sp["targetPort"] == "http"
    sm = one(docs, "ServiceMonitor")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert selects(sm["spec"]["selector"], svc["metadata"]["labels"]), "ServiceMonitor selects no Service"
    assert sm["metadata"]["labels"].get("release") == "kube-prometheus-stack"
    (ep,) = sm["spec"]["endpoints"]
    assert ep["port"] == sp["name"] and ep["path"] == "/metrics", ep
    assert NAMESPACE in sm["spec"]["namespaceSelector"]["matchNames"]


# ---------------------------------------------------------------- alerts and dashboard

RUNBOOK = "https://docs.acme.internal/push-dispatch/operations.md"
RULES_SOURCE = CHART / "files" / "push-dispatch.rules.yaml"
DASHBOARD_SOURCE = CHART / "files" / "push-dispatch.dashboard.json"
PROMTOOL = None
ALERT_SETS = [f"runbookBaseUrl={RUNBOOK}", "alerts.prometheusRule.enabled=true", "alerts.gmp.enabled=true",
              "grafanaDashboard.enabled=true"]


def rule_selectors(expr):
    """[(metric, {label: (op, value)})] of every selector in a PromQL expression."""
    out = []
    for m in re.finditer(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^{}]*)\}", expr):
        matchers = re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"', m.group(2))
        out.append((m.group(1), {k: (op, v) for k, op, v in matchers}))
    return out


def scoped_rules(docs, kind):
    return [r for obj in find(docs, kind) for g in obj["spec"]["groups"] for r in g["rules"]]


@test
def alerts_are_rendered_from_the_one_rules_file():
    """PrometheusRule and GMP Rules/GlobalRules hold the source file's rules, nothing more or less."""
    source = yaml.safe_load(RULES_SOURCE.read_text())["groups"]
    assert (REPO / "deploy" / "alerts" / "push-dispatch.rules.yaml").resolve() == RULES_SOURCE.resolve(), \
        "deploy/alerts/push-dispatch.rules.yaml must be the chart's file (a link), not a copy"
    docs = helm_template(sets=ALERT_SETS)

    def names(groups):
        return [(g["name"], [r.get("alert") or r.get("record") for r in g["rules"]]) for g in groups]

    pr = one(docs, "PrometheusRule")
    assert names(pr["spec"]["groups"]) == names(source), "PrometheusRule differs from the rules file"
    rules = one(docs, "Rules")
    glob = one(docs, "GlobalRules")
    assert names(rules["spec"]["groups"]) == [n for n in names(source) if n[0] != "push-dispatch.pubsub"]
    assert names(glob["spec"]["groups"]) == [n for n in names(source) if n[0] == "push-dispatch.pubsub"]
    assert "namespace" not in glob["metadata"] and NAMESPACE in glob["metadata"]["name"], glob["metadata"]
    for g in pr["spec"]["groups"] + rules["spec"]["groups"] + glob["spec"]["groups"]:
        assert g.get("interval"), f"group {g['name']} has no interval (GMP requires one)"
    # Same expressions as the source once the markers are replaced: one source, no copy.
    src = {(r.get("alert") or r.get("record"), r.get("labels", {}).get("severity")): r for g in source
           for r in g["rules"]}
    for r in scoped_rules(docs, "PrometheusRule"):
        s = src[(r.get("alert") or r.get("record"), r.get("labels", {}).get("severity"))]
        assert r.get("for") == s.get("for") and len(r["expr"]) >= len(s["expr"]), r.get("alert")
        if "annotations" in s:
            assert r["annotations"]["runbook_url"] == s["annotations"]["runbook_url"].replace(
                "${RUNBOOK_BASE_URL}", RUNBOOK), r["annotations"]["runbook_url"]
            assert r["annotations"]["description"] == s["annotations"]["description"]
    off = helm_template(sets=[f"runbookBaseUrl={RUNBOOK}", "alerts.prometheusRule.enabled=true",
                              "alerts.pubsub=false", "alerts.kubeStateMetrics=false"])
    assert [g["name"] for g in one(off, "PrometheusRule")["spec"]["groups"]] == \
        ["push-dispatch.sli", "push-dispatch.alerts", "push-dispatch.slo"]
    assert not find(helm_template(), "PrometheusRule", required=False), "alerts are optional (off by default)"


@test
def alert_selectors_are_scoped_to_the_release():
    """namespace and job on every worker metric, the release's pods and autoscaler, its project and subscriptions."""
    docs = helm_template(HELM_DIR / "ci" / "all-features.yaml", sets=ALERT_SETS)
    values = values_file(HELM_DIR / "ci" / "all-features.yaml")
    fullname = f"{RELEASE}-push-dispatch"
    project = values["config"]["project_id"]
    subs = {values["config"]["pubsub"]["subscription"], values["config"]["pubsub"]["dead_letter_subscription"]}
    absent = 0
    for r in scoped_rules(docs, "PrometheusRule") + scoped_rules(docs, "Rules") + scoped_rules(docs, "GlobalRules"):
        where = r.get("alert") or r.get("record")
        assert "push-dispatch.*" not in r["expr"] and "push-requests.*" not in r["expr"], f"{where}: marker left"
        absent += "absent(" in r["expr"]
        for metric, m in rule_selectors(r["expr"]):
            if metric.startswith("push_dispatch") or metric == "up":
                assert m.get("namespace") == ("=", NAMESPACE) and m.get("job") == ("=", fullname), (where, metric, m)
            elif metric.startswith("kube_pod_"):
                assert m.get("namespace") == ("=", NAMESPACE), (where, metric, m)
                assert m["pod"][0] == "=~" and re.fullmatch(m["pod"][1], f"{fullname}-7d9f8c6b5-x7k2q"), m
                assert not re.fullmatch(m["pod"][1], f"{fullname}-provision-x7k2q"), m
                assert not re.fullmatch(m["pod"][1], f"{fullname}-canary-7d9f8c6b5-x7k2q"), m
            elif metric.startswith("kube_horizontalpodautoscaler_"):
                assert m.get("namespace") == ("=", NAMESPACE), (where, metric, m)
                for hpa in (fullname, f"keda-hpa-{fullname}"):
                    assert re.fullmatch(m["horizontalpodautoscaler"][1], hpa), (hpa, m)
            elif metric.startswith("pubsub_googleapis_com:"):
                assert m.get("project_id") == ("=", project), (where, metric, m)
                assert m["subscription_id"][0] == "=" and m["subscription_id"][1] in subs, (where, metric, m)
    assert absent >= 2, "PushDispatchAbsent's absent() is not rendered (PrometheusRule and Rules)"
    add = helm_template(sets=ALERT_SETS + ["alerts.additionalLabels.team=messaging"])
    for r in scoped_rules(add, "PrometheusRule"):
        if "alert" in r:
            assert r["labels"]["team"] == "messaging" and r["labels"]["severity"] in ("page", "ticket"), r["labels"]


@test
def two_releases_in_one_namespace_never_mix():
    """promtool runs tests/alerts/two-releases.test.yaml against the rules of releases pd and bulk."""
    if PROMTOOL is None:
        if os.environ.get("CI") == "true":
            raise AssertionError("promtool not found (PATH or TOOLS_DIR/bin) and CI=true: it must not skip")
        raise Skip("no promtool (deploy/alerts/check.sh fetches it into .tools/bin)")
    with tempfile.TemporaryDirectory() as tmp:
        for release, sub in (("pd", "push-requests-dispatch"), ("bulk", "push-requests-bulk-dispatch")):
            docs = helm_template(sets=[f"runbookBaseUrl={RUNBOOK}", "alerts.prometheusRule.enabled=true",
                                       "config.project_id=acme-push-prod", f"config.pubsub.subscription={sub}"],
                                 release=release)
            groups = one(docs, "PrometheusRule")["spec"]["groups"]
            (Path(tmp) / f"{release}.rules.yaml").write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
        test_file = Path(tmp) / "two-releases.test.yaml"
        test_file.write_text((HELM_DIR / "tests" / "alerts" / "two-releases.test.yaml").read_text())
        proc = subprocess.run([PROMTOOL, "test", "rules", str(test_file)], capture_output=True, text=True,
                              check=False, timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr


@test
def runbook_base_url_is_required_and_used():
    for s in ("alerts.prometheusRule.enabled=true", "alerts.gmp.enabled=true", "grafanaDashboard.enabled=true"):
        err = helm_fails(sets=[s])
        assert "runbookBaseUrl is empty" in err, err
    err = helm_fails(sets=["runbookBaseUrl=docs/operations.md", "alerts.gmp.enabled=true"])
    assert "runbookBaseUrl" in err, err
    docs = helm_template(sets=ALERT_SETS)
    urls = [r["annotations"]["runbook_url"] for r in scoped_rules(docs, "PrometheusRule") if "alert" in r]
    assert urls and all(u.startswith(RUNBOOK + "#") for u in urls), urls


@test
def grafana_dashboard_configmap_for_the_sidecar():
    docs = helm_template(sets=ALERT_SETS + ["grafanaDashboard.label=my_dashboards",
                                           "grafanaDashboard.labelValue=push"])
    cm = one(docs, "ConfigMap", f"{RELEASE}-push-dispatch-dashboard")
    assert cm["metadata"]["labels"]["my_dashboards"] == "push", cm["metadata"]["labels"]
    assert "grafana_dashboard" not in cm["metadata"]["labels"]
    (body,) = cm["data"].values()
    dash = json.loads(body)
    source = json.loads(DASHBOARD_SOURCE.read_text())
    assert len(dash["panels"]) == len(source["panels"])
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    for name in ("cluster", "namespace", "job"):
        assert name in variables, f"no {name} variable"
    assert variables["namespace"]["current"]["value"] == [NAMESPACE]
    assert variables["job"]["current"]["value"] == [f"{RELEASE}-push-dispatch"]
    assert [l["url"] for l in dash["links"]] == [RUNBOOK + "#runbook"], dash["links"]
    assert "${RUNBOOK_BASE_URL}" not in body
    other = one(helm_template(sets=ALERT_SETS, release="bulk"), "ConfigMap", "bulk-push-dispatch-dashboard")
    assert json.loads(next(iter(other["data"].values())))["uid"] != dash["uid"], "two releases share a uid"
    assert len(dash["uid"]) <= 40, dash["uid"]
    default = one(helm_template(sets=ALERT_SETS), "ConfigMap", f"{RELEASE}-push-dispatch-dashboard")
    assert default["metadata"]["labels"]["grafana_dashboard"] == "1"


# ---------------------------------------------------------------- custom resource schemas


def cr_errors(doc):
    """Schema errors of one custom resource against deploy/helm/tests/schemas/ (validate_crs.py)."""
    import jsonschema
    path, schema = validate_crs.schema_for(doc["apiVersion"], doc["kind"])
    assert schema is not None, f"no schema {path.name} for {doc['kind']}"
    return [e.message for e in jsonschema.Draft7Validator(schema).iter_errors(doc)]


@test
def every_custom_resource_has_a_schema_and_matches_it():
    """Each custom kind the chart can render is validated; a typo or a wrong type in one fails."""
    kinds = set()
    for label, values, docs in all_renders() + [("alerts", None, helm_template(sets=ALERT_SETS))]:
        for d in docs:
            if d["apiVersion"].rpartition("/")[0] in validate_crs.BUILTIN_GROUPS:
                continue
            kinds.add(d["kind"])
            errors = cr_errors(d)
            assert not errors, f"{label}: {d['kind']} {d['metadata']['name']}: {errors[:5]}"
    want = {"ScaledObject", "TriggerAuthentication", "PodMonitoring", "ServiceMonitor", "SecretProviderClass",
            "PrometheusRule", "Rules", "GlobalRules"}
    assert want <= kinds, f"CI renders no {sorted(want - kinds)}: add them to a deploy/helm/ci/ values file"
    cta = {"apiVersion": "keda.sh/v1alpha1", "kind": "ClusterTriggerAuthentication", "metadata": {"name": "x"},
           "spec": {"podIdentity": {"provider": "gcp"}}}
    assert not cr_errors(cta)

    # Each mutation is one a reviewer could miss; each schema must refuse it.
    docs = {d["kind"]: d for d in helm_template(HELM_DIR / "ci" / "all-features.yaml", sets=ALERT_SETS)}
    docs.update({d["kind"]: d for d in helm_template(HELM_DIR / "ci" / "keda.yaml")})
    mutations = [
        ("ScaledObject", lambda d: d["spec"].__setitem__("minReplicaCont", 2)),
        ("ScaledObject", lambda d: d["spec"]["fallback"].__setitem__("behavior", "sometimes")),
        ("ScaledObject", lambda d: d["spec"]["triggers"][0]["metadata"].__setitem__("threshold", 10000)),
        ("TriggerAuthentication", lambda d: d["spec"].__setitem__("podIdentty", {"provider": "gcp"})),
        ("PodMonitoring", lambda d: d["spec"]["endpoints"][0].__setitem__("interval", "30 seconds")),
        ("PodMonitoring", lambda d: d["spec"]["endpoints"][0].__setitem__("intervall", "30s")),
        ("ServiceMonitor", lambda d: d["spec"]["endpoints"][0].__setitem__("scrapeTimout", "10s")),
        ("SecretProviderClass", lambda d: d["spec"].__setitem__("providr", "gke")),
        ("PrometheusRule", lambda d: d["spec"]["groups"][0]["rules"][0].__setitem__("expr", ["up"])),
        ("Rules", lambda d: d["spec"]["groups"][0].pop("interval")),
        ("GlobalRules", lambda d: d["metadata"].__setitem__("namespace", NAMESPACE)),
    ]
    for kind, mutate in mutations:
        doc = json.loads(json.dumps(docs[kind]))
        mutate(doc)
        assert cr_errors(doc), f"{kind}: the schema accepts a broken object: {doc['spec']}"


# ---------------------------------------------------------------- secrets


@test
def apns_key_from_kubernetes_secret_by_default():
    docs = helm_template()
    pod = deployment(docs)["spec"]["template"]["spec"]
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols["apns"]["secret"]["secretName"] == "push-dispatch-apns"
    assert "fcm" not in vols, "FCM defaults to Workload Identity: no key to mount"
    assert not find(docs, "SecretProviderClass", required=False)


def check_secret_provider_classes(docs, values, provider, driver):
    pod = deployment(docs)["spec"]["template"]["spec"]
    vols = {v["name"]: v for v in pod["volumes"]}
    spcs = {s["metadata"]["name"]: s for s in find(docs, "SecretProviderClass")}
    for set_name in ("apns", "fcm"):
        if not values["secrets"][set_name]["enabled"]:
            continue
        csi = vols[set_name]["csi"]
        assert csi["driver"] == driver, csi
        spc = spcs[csi["volumeAttributes"]["secretProviderClass"]]
        assert spc["apiVersion"] == "secrets-store.csi.x-k8s.io/v1"
        assert spc["spec"]["provider"] == provider
        entries = yaml.safe_load(spc["spec"]["parameters"]["secrets"])
        want = values["secrets"][set_name]["secretManager"]
        assert len(entries) == len(want)
        for e, w in zip(entries, want):
            project = w.get("project") or values["config"]["project_id"]
            version = str(w.get("version") or "latest")
            assert e["resourceName"] == f"projects/{project}/secrets/{w['secret']}/versions/{version}", e
            assert e["path"] == w["path"]


@test
def secret_manager_through_the_gke_addon():
    f = HELM_DIR / "ci" / "all-features.yaml"
    docs = helm_template(f)
    values = values_file(f)
    check_secret_provider_classes(docs, values, "gke", "secrets-store-gke.csi.k8s.io")
    cfg = rendered_config(docs)
    apns_files = {e["path"] for e in values["secrets"]["apns"]["secretManager"]}
    assert os.path.basename(cfg["apps"][0]["apns"]["key_file"]) in apns_files, "key_file names no mounted secret"


@test
def secret_manager_through_the_open_source_provider():
    f = HELM_DIR / "ci" / "secret-manager-gcp.yaml"
    check_secret_provider_classes(helm_template(f), values_file(f), "gcp", "secrets-store.csi.k8s.io")


# ---------------------------------------------------------------- network policy


def egress_rules(np):
    """[(set of (port, protocol), [peer, ...])] of a NetworkPolicy's egress."""
    out = []
    for rule in np["spec"]["egress"]:
        assert rule.get("ports"), f"egress rule without ports: {rule}"
        assert rule.get("to"), f"egress rule to anywhere: {rule}"
        out.append(({(p["port"], p.get("protocol", "TCP")) for p in rule["ports"]}, rule["to"]))
    return out


def peers_for(np, port, protocol="TCP"):
    """Every peer the policy lets reach (port, protocol)."""
    return [peer for ports, to in egress_rules(np) if (port, protocol) in ports for peer in to]


def cidr_blocks(peers):
    return {p["ipBlock"]["cidr"]: tuple(p["ipBlock"].get("except", ())) for p in peers if "ipBlock" in p}


@test
def network_policy_allows_only_what_the_worker_needs():
    docs = helm_template(HELM_DIR / "ci" / "all-features.yaml")
    np = one(docs, "NetworkPolicy")
    dep = deployment(docs)
    assert selects(np["spec"]["podSelector"], pod_labels(dep)), "NetworkPolicy does not select the workers"
    for job in find(docs, "Job"):
        assert selects(np["spec"]["podSelector"], job["spec"]["template"]["metadata"]["labels"]), \
            "NetworkPolicy does not select the provisioning Job"
    assert set(np["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    (ing,) = np["spec"]["ingress"]
    assert [p["port"] for p in ing["ports"]] == ["http"], ing
    ports = set().union(*(p for p, _ in egress_rules(np)))
    assert ports == {(53, "UDP"), (53, "TCP"), (80, "TCP"), (988, "TCP"), (443, "TCP"), (2197, "TCP"),
                     (4317, "TCP"), (6378, "TCP")}, ports
    # privateGoogleAccess: 443 only to the VIPs and Apple, nothing wider.
    assert set(cidr_blocks(peers_for(np, 443))) == {"199.36.153.8/30", "199.36.153.4/30", "17.0.0.0/8"}
    assert set(cidr_blocks(peers_for(np, 80))) == {"169.254.169.254/32"}
    assert set(cidr_blocks(peers_for(np, 988))) == {"169.254.169.252/32"}
    docs = helm_template(HELM_DIR / "ci" / "secret-manager-gcp.yaml")
    assert one(docs, "NetworkPolicy")["spec"]["ingress"] == [], "no metricsFrom must deny all ingress"


@test
def redis_url_comes_from_a_secret_and_the_policy_reaches_redis():
    """coordination.redisUrlSecret → env PUSH_DISPATCH_COORDINATION__REDIS_URL; networkPolicy.redis → one egress rule."""
    docs = helm_template(HELM_DIR / "ci" / "all-features.yaml")
    for pod, label in [(deployment(docs)["spec"]["template"]["spec"], "Deployment"),
                       (one(docs, "Pod")["spec"], "helm test Pod")]:
        env = {e["name"]: e for e in pod["containers"][0]["env"]}
        ref = env["PUSH_DISPATCH_COORDINATION__REDIS_URL"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "push-dispatch-redis", "key": "redis-url"}, f"{label}: {ref}"
        assert "PUSH_DISPATCH_DISPATCH__CONCURRENCY" in env, f"{label}: values env kept"
    assert rendered_config(docs)["coordination"]["redis_url"] is None, "the URL never lands in the ConfigMap"
    np = one(docs, "NetworkPolicy")
    assert set(cidr_blocks(peers_for(np, 6378))) == {"10.10.0.0/29"}
    assert not peers_for(np, 6379), "only the configured ports"
    default = helm_template(sets=["networkPolicy.enabled=true"])
    assert not peers_for(one(default, "NetworkPolicy"), 6379), "no Redis rule without cidrs"
    assert "env" not in deployment(default)["spec"]["template"]["spec"]["containers"][0], "no env by default"


@test
def network_policy_dns_reaches_kube_dns_nodelocal_and_cloud_dns():
    """Cloud DNS for GKE answers on 169.254.169.254:53; kube-dns and NodeLocal DNSCache as before."""
    docs = helm_template(sets=["networkPolicy.enabled=true"])
    np = one(docs, "NetworkPolicy")
    for proto in ("UDP", "TCP"):
        peers = peers_for(np, 53, proto)
        assert "169.254.169.254/32" in cidr_blocks(peers), f"Cloud DNS for GKE (53/{proto}) missing: {peers}"
        assert "169.254.20.10/32" in cidr_blocks(peers), f"NodeLocal DNSCache (53/{proto}) missing: {peers}"
        assert any(p.get("podSelector", {}).get("matchLabels") == {"k8s-app": "kube-dns"} for p in peers), \
            f"kube-dns (53/{proto}) missing: {peers}"
    # Each resolver can be switched off on its own.
    np = one(helm_template(sets=["networkPolicy.enabled=true", "networkPolicy.dns.cloudDns=false",
                                 "networkPolicy.dns.nodeLocalDNSCache=null"]), "NetworkPolicy")
    assert set(cidr_blocks(peers_for(np, 53, "UDP"))) == set(), peers_for(np, 53, "UDP")
    # Port 80 of the metadata server stays what it was: no wider.
    assert set(cidr_blocks(peers_for(np, 80))) == {"169.254.169.254/32"}


@test
def network_policy_google_apis_in_both_modes():
    """public (the default): 443 to anything outside the cluster's ranges; privateGoogleAccess: the VIPs."""
    default = one(helm_template(sets=["networkPolicy.enabled=true"]), "NetworkPolicy")
    blocks = cidr_blocks(peers_for(default, 443))
    assert "0.0.0.0/0" in blocks, f"default mode does not reach public Google addresses: {blocks}"
    excepted = set(blocks["0.0.0.0/0"])
    assert {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16"} <= excepted, excepted
    for ports, to in egress_rules(default):
        if "0.0.0.0/0" in cidr_blocks(to):
            assert ports == {(443, "TCP")}, f"the public rule opens more than 443: {ports}"
    pga = one(helm_template(sets=["networkPolicy.enabled=true",
                                  "networkPolicy.googleApis.mode=privateGoogleAccess"]), "NetworkPolicy")
    blocks = cidr_blocks(peers_for(pga, 443))
    assert "0.0.0.0/0" not in blocks, blocks
    assert {"199.36.153.8/30", "199.36.153.4/30"} <= set(blocks), blocks
    err = helm_fails(sets=["networkPolicy.enabled=true", "networkPolicy.googleApis.mode=vpc"])
    assert "mode" in err, err

    def notes(*sets):
        cmd = [HELM, "install", "--dry-run=client", RELEASE, str(CHART), "--namespace", NAMESPACE]
        for s in sets:
            cmd += ["--set", s]
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.split("NOTES:", 1)[1]

    assert "Google APIs in mode public" in notes("networkPolicy.enabled=true")
    assert "Google APIs in mode privateGoogleAccess" in notes(
        "networkPolicy.enabled=true", "networkPolicy.googleApis.mode=privateGoogleAccess")


# ---------------------------------------------------------------- provisioning hook


@test
def provisioning_job_is_a_pre_install_hook():
    docs = helm_template(HELM_DIR / "ci" / "all-features.yaml")
    job = one(docs, "Job")
    ann = job["metadata"]["annotations"]
    assert set(ann["helm.sh/hook"].split(",")) == {"pre-install", "pre-upgrade"}, ann
    pod = job["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["args"][0] == "provision" and "--config" in c["args"], c["args"]
    assert pod["restartPolicy"] == "Never"
    # Its config and service account exist before it: hooks with a lower weight.
    weight = int(ann["helm.sh/hook-weight"])
    cm_name = next(v["configMap"]["name"] for v in pod["volumes"] if "configMap" in v)
    cm = one(docs, "ConfigMap", cm_name)
    sa = one(docs, "ServiceAccount", pod["serviceAccountName"])
    for obj in (cm, sa):
        a = obj["metadata"]["annotations"]
        assert "pre-install" in a["helm.sh/hook"], f"{obj['kind']} {obj['metadata']['name']} is not a hook"
        assert int(a["helm.sh/hook-weight"]) < weight
    assert sa["metadata"]["annotations"]["iam.gke.io/gcp-service-account"] == \
        "push-dispatch-provisioner@acme-push-prod.iam.gserviceaccount.com"
    assert yaml.safe_load(cm["data"]["config.yaml"]) == rendered_config(docs), "the Job provisions another config"
    assert not find(helm_template(), "Job", required=False), "the Job is optional (off by default)"


@test
def helm_test_checks_the_config_online_as_the_worker_would():
    docs = helm_template(HELM_DIR / "ci" / "all-features.yaml")
    pod = one(docs, "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    spec = pod["spec"]
    c = spec["containers"][0]
    assert c["args"][:2] == ["check-config", "--online"], c["args"]
    worker = deployment(docs)["spec"]["template"]["spec"]
    # The worker's identity, config and secrets: what it checks is what runs.
    assert spec["serviceAccountName"] == worker["serviceAccountName"]
    assert spec["volumes"] == worker["volumes"]
    assert c["volumeMounts"] == worker["containers"][0]["volumeMounts"]
    assert c["securityContext"] == worker["containers"][0]["securityContext"]
    # Not a worker: no Deployment, PDB or HPA selects it.
    assert not selects(deployment(docs)["spec"]["selector"], pod["metadata"]["labels"])
    off = helm_template(sets=["helmTest.enabled=false"])
    assert not find(off, "Pod", required=False)


# ---------------------------------------------------------------- NOTES.txt


@test
def notes_warn_about_example_values():
    def notes(values=None):
        cmd = [HELM, "install", "--dry-run=client", RELEASE, str(CHART), "--namespace", NAMESPACE]
        if values:
            cmd += ["--values", str(values)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        return out.split("NOTES:", 1)[1]

    default = notes()
    assert "rollout status deployment/pd-push-dispatch" in default
    assert "config.project_id is still the example" in default
    assert "WARNINGS" not in notes(HELM_DIR / "ci" / "all-features.yaml"), "all-features.yaml still warns"


# ---------------------------------------------------------------- rollouts


@test
def rollouts_surge_a_quarter_and_notes_give_a_timeout_that_scales():
    strategy = deployment(helm_template())["spec"]["strategy"]
    assert strategy["rollingUpdate"] == {"maxSurge": "25%", "maxUnavailable": 0}, strategy

    def notes(*sets):
        cmd = [HELM, "install", "--dry-run=client", RELEASE, str(CHART), "--namespace", NAMESPACE]
        for x in sets:
            cmd += ["--set", x]
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.split("NOTES:", 1)[1]

    def timeout(*sets):
        m = re.search(r"--wait --timeout (\d+)s", notes(*sets))
        assert m, "NOTES give no helm upgrade --timeout"
        return int(m.group(1))

    small, big = timeout(), timeout("keda.enabled=true", "keda.maxReplicaCount=40")
    one_by_one = timeout("keda.enabled=true", "keda.maxReplicaCount=40", "updateStrategy.rollingUpdate.maxSurge=1")
    assert 300 <= small < big < one_by_one, (small, big, one_by_one)
    # 40 replicas, 25% surge: 4 waves of (2 s x 60 startup + 5 s readiness + 10 s minReady + 30 s) + 60 s.
    assert big == 4 * (120 + 5 + 10 + 30) + 60, big
    spot = notes("tolerations[0].key=cloud.google.com/gke-spot", "tolerations[0].operator=Exists")
    assert "Spot nodes" in spot and "shutdown_grace is 30s" in spot, spot
    assert "Spot nodes" not in notes("tolerations[0].key=cloud.google.com/gke-spot",
                                      "tolerations[0].operator=Exists", "config.shutdown_grace=10s")


# ---------------------------------------------------------------- repository


def cargo_package_field(field):
    m = re.search(rf'^{field} = "([^"]*)"', (REPO / "Cargo.toml").read_text(), re.M)
    assert m, f"Cargo.toml has no {field}"
    return m.group(1)


@test
def chart_metadata_follows_cargo_toml():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    version = cargo_package_field("version")
    assert chart["version"] == version and chart["appVersion"] == version, (chart["version"], version)
    repository = cargo_package_field("repository")
    assert chart.get("home") == repository and chart.get("sources") == [repository], (chart.get("home"), repository)
    assert chart.get("maintainers") and all(m.get("name") for m in chart["maintainers"]), chart.get("maintainers")
    for f in ("LICENSE", "SECURITY.md", "deny.toml"):
        assert (REPO / f).is_file(), f"{f} missing"
    assert "Apache License" in (REPO / "LICENSE").read_text()[:200]


EXAMPLE_HOSTS = re.compile(r"(?:[\w.-]+\.)?example\.(?:com|org|net|invalid)\b|github\.com/example\b", re.I)


@test
def nothing_points_at_an_example_host():
    """deploy/, docs/ and the build files link no example host, except where they mirror Cargo.toml."""
    repository = cargo_package_field("repository")
    files = [REPO / "Makefile", REPO / "SECURITY.md", REPO / "deny.toml", REPO / ".dockerignore"]
    files += [p for d in ("deploy", "docs", "scripts") for p in (REPO / d).rglob("*")
              if p.is_file() and not p.is_symlink() and p.suffix in {".yaml", ".yml", ".json", ".md", ".sh", ".py",
                                                                       ".tpl", ".txt", ""}]
    hits = []
    for f in files:
        for n, line in enumerate(f.read_text(errors="replace").splitlines(), 1):
            for m in EXAMPLE_HOSTS.finditer(line):
                if f.name == "Chart.yaml" and repository in line:
                    continue  # home/sources mirror Cargo.toml (chart_metadata_follows_cargo_toml)
                hits.append(f"{f.relative_to(REPO)}:{n}: {m.group(0)}")
    assert not hits, "example hosts: " + "; ".join(hits[:20])
    if EXAMPLE_HOSTS.search(repository):
        print(f"note: Cargo.toml's repository is still the placeholder {repository}; Chart.yaml follows it")


def value_paths(node, prefix=""):
    """Key paths of values.yaml, stopping at free-form maps and lists."""
    paths = set()
    if isinstance(node, dict):
        for k, v in node.items():
            p = f"{prefix}.{k}" if prefix else k
            paths.add(p)
            paths |= value_paths(v, p)
    return paths


@test
def values_yaml_and_schema_declare_the_same_keys():
    """Outside `config:` (config_keys tests), values.yaml and values.schema.json stay in step."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema.get("additionalProperties") is False, "the schema's top level accepts unknown keys"

    def declared(node, prefix=""):
        out = set()
        for k, sub in (node.get("properties") or {}).items():
            p = f"{prefix}.{k}" if prefix else k
            out.add(p)
            if sub.get("additionalProperties") is False:
                out |= declared(sub, p)
        return out

    have = {p for p in declared(schema) if not p.startswith("config.") and p != "config"}
    want = {p for p in value_paths(values) if not p.startswith("config.") and p != "config"}
    # Free-form maps (labels, annotations, selectors, resources, ...) are not closed in the schema.
    want = {p for p in want if any(p == h or p.startswith(h + ".") for h in have)}
    missing = sorted(p for p in want if p not in have and not any(p.startswith(h + ".") and
                     not _closed(schema, h) for h in have))
    # Optional Kubernetes fields the schema types but values.yaml need not set.
    passthrough = re.compile(r"^(probes\.\w+\.\w+|(\w+\.)?resources\.claims)$")
    unknown = sorted(p for p in have if p not in value_paths(values) and p != "global" and not passthrough.match(p))
    assert not missing, f"values.yaml keys the schema does not declare: {missing}"
    assert not unknown, f"schema keys values.yaml does not have: {unknown}"


def _closed(schema, path):
    node = schema
    for part in path.split("."):
        node = (node.get("properties") or {}).get(part, {})
    return node.get("additionalProperties") is False


@test
def image_builds_dependencies_in_their_own_layer():
    lines = [l.strip() for l in (REPO / "deploy" / "Dockerfile").read_text().splitlines()
             if l.strip() and not l.strip().startswith("#")]
    stages = {}
    current = None
    for l in lines:
        m = re.match(r"FROM \S+(?: AS (\w+))?", l)
        if m:
            current = m.group(1) or "runtime"
            stages[current] = []
        elif current:
            stages[current].append(l)
    builder = stages["builder"]
    cook = next(i for i, l in enumerate(builder) if "cargo chef cook" in l)
    first_source = next(i for i, l in enumerate(builder) if re.match(r"COPY (src|crates)\b", l))
    assert cook < first_source, "cargo chef cook must run before the sources are copied"
    assert any("--from=planner" in l and "recipe.json" in l for l in builder[:cook]), "cook needs the recipe"
    assert not any("--mount=type=cache" in l for l in builder), "cache mounts do not reach a cold CI builder"
    ignored = {l.strip() for l in (REPO / ".dockerignore").read_text().splitlines()
               if l.strip() and not l.startswith("#")}
    for must in ("target/", ".dev/", ".bench/", ".tools/", ".git", "*.p8"):
        assert must in ignored, f".dockerignore does not cover {must}"


# ---------------------------------------------------------------- the real binary


@test
def binary_accepts_every_rendered_config():
    """`push-dispatch check-config` refuses a rendered config only for the files mounted in the pod."""
    if BINARY is None:
        raise Skip("no push-dispatch binary (target/debug/push-dispatch); `make test` builds it")
    file_keys = ("key_file", "credentials_file", "ca_file")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PUSH_DISPATCH_")}
    with tempfile.TemporaryDirectory() as tmp:
        for label, _, docs in all_renders():
            path = Path(tmp) / "config.yaml"
            path.write_text(one(docs, "ConfigMap", f"{RELEASE}-push-dispatch")["data"]["config.yaml"])
            proc = subprocess.run([str(BINARY), "check-config", "--config", str(path)], capture_output=True,
                                  text=True, env=env, cwd=tmp, timeout=60, check=False)
            out = proc.stdout + proc.stderr
            if proc.returncode == 0:
                continue
            assert proc.returncode == 2, f"{label}: check-config exit {proc.returncode}: {out}"
            assert "unknown field" not in out and "invalid type" not in out, f"{label}: {out}"
            keys = re.findall(r"config key `([^`]+)`", out)
            assert keys, f"{label}: check-config failed without naming a key: {out}"
            bad = [k for k in keys if not k.endswith(file_keys)]
            assert not bad, f"{label}: check-config refused {bad}, not just the pod's files: {out}"


def main():
    global HELM, BINARY, PROMTOOL
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--helm", default=os.environ.get("HELM", "helm"))
    ap.add_argument("--promtool", default=os.environ.get("PROMTOOL"))
    ap.add_argument("--binary", default=os.environ.get("PUSH_DISPATCH_BIN", str(REPO / "target/debug/push-dispatch")))
    args = ap.parse_args()
    HELM = args.helm
    tools_bin = Path(os.environ.get("TOOLS_DIR", REPO / ".tools")) / "bin"
    PROMTOOL = args.promtool if args.promtool and args.promtool != "skip" else (
        shutil.which("promtool") or (str(tools_bin / "promtool") if (tools_bin / "promtool").exists() else None))
    if Path(args.binary).is_file() and os.access(args.binary, os.X_OK):
        BINARY = Path(args.binary)

    passed = failed = skipped = 0
    for fn in TESTS:
        try:
            fn()
        except Skip as why:
            skipped += 1
            print(f"skip {fn.__name__}: {why}")
        except Exception as err:  # noqa: BLE001 - report every failure, then go on
            failed += 1
            print(f"FAIL {fn.__name__}: {err}")
            if not isinstance(err, (AssertionError, RenderError)):
                traceback.print_exc()
        else:
            passed += 1
            print(f"ok   {fn.__name__}")
    print(f"test_chart: {passed} passed, {failed} failed" + (f", {skipped} skipped" if skipped else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
