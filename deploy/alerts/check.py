#!/usr/bin/env python3
"""Offline checks of the alert rules and the Grafana dashboard (issue 5), run by
deploy/alerts/check.sh next to promtool.

promtool knows PromQL but not this project; these checks know the project:

  rules       deploy/alerts/push-dispatch.rules.yaml: the structure of every
              group and rule; the alerts are exactly the runbook's sections in
              docs/operations.md; each alert has `for`, labels.severity (page or
              ticket), annotations summary/description/runbook_url, and its
              runbook_url points at the anchor GitHub generates for that
              section's heading; every metric an expression reads is one the
              worker exports (METRICS below, kept equal to README, Metrics), a
              recording rule of the file, `up`, or a Pub/Sub metric of Google
              Managed Prometheus; label matchers on worker metrics name labels
              the metric has and values those labels take; the latency SLI's
              1 s bucket exists in the worker's bucket layout of
              push_dispatch_send_duration_seconds (read from
              crates/worker/src/metrics.rs; a layout it cannot read is a note).
  dashboard   deploy/grafana/push-dispatch.json: parses, schemaVersion 39, the
              datasource/job/platform/app/subscription variables, unique panel
              ids, panels inside the 24-column grid without overlaps, every panel
              with a description, the ${datasource} datasource and targets,
              every variable it uses defined, the same metric and label checks
              as the rules, and every worker metric shown somewhere.
  dashboard-rules
              prints the dashboard's queries as a Prometheus rules file (Grafana
              variables replaced by plain values) so that `promtool check rules`
              can parse them.

Prints one line per check (`ok   ...` / `FAIL ...` with the reasons) and exits
1 when a check failed. Usage: check.py rules|dashboard|dashboard-rules
"""

import json
import re
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "deploy" / "alerts" / "push-dispatch.rules.yaml"
DASHBOARD = REPO / "deploy" / "grafana" / "push-dispatch.json"
OPERATIONS = REPO / "docs" / "operations.md"
METRICS_RS = REPO / "crates" / "worker" / "src" / "metrics.rs"
README = REPO / "docs" / "reference.md"
# The runbook link of every alert: a placeholder, not a host. The chart
# replaces it with the value runbookBaseUrl; by hand, envsubst does.
RUNBOOK_BASE = "${RUNBOOK_BASE_URL}#"
# Scope markers (see the rules file's header): the chart replaces exactly
# these matchers with its release's namespace, job, pods, autoscaler and
# subscriptions. Every selector of the metric family on the left must carry
# the marker on the right, or two releases would read each other's series.
JOB_MARKER = ("job", "=~", ".*push-dispatch.*")
POD_MARKER = ("pod", "=~", ".*push-dispatch.*")
HPA_MARKER = ("horizontalpodautoscaler", "=~", ".*push-dispatch.*")
SUBSCRIPTION_MARKERS = {("subscription_id", "=~", "push-requests.*-dispatch"),
                        ("subscription_id", "=~", "push-requests.*-dlq-inspect")}

# The worker's metrics: name -> (type, labels). Keep equal to docs/reference.md (Metrics).
METRICS = {
    "push_dispatch_messages_total": ("counter", {"result"}),
    "push_dispatch_sends_total": ("counter", {"platform", "app", "outcome"}),
    "push_dispatch_send_duration_seconds": ("histogram", {"platform"}),
    "push_dispatch_end_to_end_seconds": ("histogram", set()),
    "push_dispatch_pull_lag_seconds": ("histogram", set()),
    "push_dispatch_feedback_events_total": ("counter", {"platform", "reason"}),
    "push_dispatch_dead_letters_total": ("counter", {"reason"}),
    "push_dispatch_publish_failures_total": ("counter", {"reason"}),
    "push_dispatch_inflight_messages": ("gauge", set()),
    "push_dispatch_parked_messages": ("gauge", set()),
    "push_dispatch_coordination_up": ("gauge", set()),
    "push_dispatch_dedup_unavailable_total": ("counter", set()),
    "push_dispatch_streams_running": ("gauge", set()),
    "push_dispatch_outstanding_messages": ("gauge", set()),
    "push_dispatch_max_outstanding_messages": ("gauge", set()),
    "push_dispatch_ack_failures_total": ("counter", set()),
    "push_dispatch_acks_total": ("counter", {"kind"}),
    "push_dispatch_circuit_open": ("gauge", {"platform", "app"}),
    "push_dispatch_invalidation_guard_tripped": ("gauge", {"platform", "app"}),
    "push_dispatch_send_rate_limit": ("gauge", {"platform", "app"}),
    "push_dispatch_invalidation_guard_held_total": ("counter", {"platform", "app"}),
    "push_dispatch_duplicate_risk_total": ("counter", {"window"}),
    "push_dispatch_token_refreshes_total": ("counter", {"platform", "app", "result"}),
    "push_dispatch_stream_up": ("gauge", {"stream"}),
    "push_dispatch_redeliveries_total": ("counter", set()),
    "push_dispatch_feedback_subscriptions": ("gauge", set()),
    "push_dispatch_feedback_retention_seconds": ("gauge", set()),
}
# Closed label value sets (SPEC §8, README).
LABEL_VALUES = {
    ("push_dispatch_sends_total", "outcome"): {
        "delivered", "token_invalid", "retryable", "rejected", "expired", "circuit_open",
        "rate_limited", "provider_backoff",
        "duplicate_suppressed", "claimed_elsewhere"},
    ("push_dispatch_sends_total", "platform"): {"apns", "fcm"},
    ("push_dispatch_messages_total", "result"): {
        "acked", "nacked", "dead_lettered", "expired", "republished"},
    ("push_dispatch_publish_failures_total", "reason"): {"feedback", "dead_letter", "republish"},
    ("push_dispatch_acks_total", "kind"): {"confirmed", "sent"},
    ("push_dispatch_duplicate_risk_total", "window"): {
        "answer_lost", "republish_failed", "grace_exceeded", "ack_unconfirmed"},
    ("push_dispatch_token_refreshes_total", "result"): {"ok", "error"},
}
# kube-state-metrics (v2 names, as GKE's managed package exports them too):
# name -> labels an expression may match on.
KSM = {
    "kube_pod_container_status_waiting_reason": {"namespace", "pod", "container", "reason", "uid"},
    "kube_pod_container_status_last_terminated_reason": {"namespace", "pod", "container", "reason", "uid"},
    "kube_pod_container_status_restarts_total": {"namespace", "pod", "container", "uid"},
    "kube_horizontalpodautoscaler_status_current_replicas": {"namespace", "horizontalpodautoscaler"},
    "kube_horizontalpodautoscaler_spec_max_replicas": {"namespace", "horizontalpodautoscaler"},
}
KSM_HPA = {n for n in KSM if n.startswith("kube_horizontalpodautoscaler_")}
# Labels the scrape adds (Prometheus, Prometheus Operator, GMP PodMonitoring).
TARGET_LABELS = {"job", "instance", "namespace", "cluster", "pod", "container", "service",
                 "endpoint", "project_id", "location", "release"}
# Pub/Sub metrics from Cloud Monitoring as Google Managed Prometheus names them.
GMP_PUBSUB = {
    "pubsub_googleapis_com:subscription_num_undelivered_messages",
    "pubsub_googleapis_com:subscription_oldest_unacked_message_age",
    "pubsub_googleapis_com:subscription_dead_letter_message_count",
}
GMP_LABELS = {"project_id", "subscription_id", "monitored_resource", "location"}
SEVERITIES = {"page", "ticket"}
PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
    "offset", "bool", "inf", "nan", "atan2", "start", "end",
}
GRAFANA_BUILTINS = {"__rate_interval", "__range", "__interval", "__interval_ms", "__range_s",
                    "__range_ms", "__from", "__to", "__dashboard"}
DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")


# --------------------------------------------------------------------------- results
class Results:
    def __init__(self):
        self.failed = 0

    def check(self, name, problems):
        if problems:
            self.failed += 1
            print(f"FAIL {name}")
            for p in problems:
                print(f"     - {p}")
        else:
            print(f"ok   {name}")


# --------------------------------------------------------------------------- runbook
def github_slug(heading, seen):
    """The anchor GitHub gives a Markdown heading (lower case, punctuation other
    than - and _ removed, spaces to -, -1, -2 ... for repeats)."""
    s = heading.strip().lower()
    s = re.sub(r"[^\w\- ]", "", s)
    s = s.replace(" ", "-")
    n = seen.get(s, 0)
    seen[s] = n + 1
    return s if n == 0 else f"{s}-{n}"


def runbook_sections():
    """(all anchors of operations.md, {anchor: heading} of the Runbook's ### sections)."""
    anchors, runbook, seen = set(), {}, {}
    in_runbook, fence = False, False
    for line in OPERATIONS.read_text().splitlines():
        if line.startswith("```"):
            fence = not fence
            continue
        if fence:
            continue
        m = re.match(r"^(#{1,6})\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        level, text = len(m.group(1)), m.group(2)
        slug = github_slug(text, seen)
        anchors.add(slug)
        if level == 2:
            in_runbook = text.strip() == "Runbook"
        elif level == 3 and in_runbook:
            runbook[slug] = text.strip()
    return anchors, runbook


# --------------------------------------------------------------------------- PromQL
def strip_strings(expr):
    return re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)


def selectors(expr):
    """[(metric or None, [(label, op, value)])] for every {...} in expr."""
    out = []
    for m in re.finditer(r"([a-zA-Z_:][a-zA-Z0-9_:]*)?\s*\{([^{}]*)\}", expr):
        name = m.group(1)
        if name in PROMQL_WORDS:
            name = None
        matchers = re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"', m.group(2))
        out.append((name, matchers))
    return out


def metric_names(expr):
    """Metric names an expression reads: identifiers that are neither functions,
    keywords, label names nor durations."""
    e = strip_strings(expr)
    e = re.sub(r"\{[^{}]*\}", " ", e)                 # label matchers
    e = re.sub(r"\[[^\]]*\]", " ", e)                 # ranges and subqueries
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    e = re.sub(r"\boffset\s+-?\w+", " ", e)
    names = set()
    for m in re.finditer(r"(?<![\w.:])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", e):
        word, call = m.group(1), m.group(2)
        if call or word in PROMQL_WORDS:
            continue
        names.add(word)
    return names


def base_metric(name):
    for suffix in ("_bucket", "_count", "_sum"):
        if name.endswith(suffix) and METRICS.get(name[: -len(suffix)], ("",))[0] == "histogram":
            return name[: -len(suffix)], suffix
    return name, ""


def scope_problems(expr, where, recorded):
    """Every selector of a worker metric, recording rule, kube-state-metrics
    or Pub/Sub metric carries its scope marker, and every metric read at all
    is read through a selector (a bare name would escape the chart's scoping)."""
    problems = []
    bare = strip_strings(expr)
    bare = re.sub(r"\{[^{}]*\}", "{}", bare)
    for m in re.finditer(r"(?<![\w:])([a-zA-Z_:][a-zA-Z0-9_:]*)(?!\s*\()(\s*\{)?", bare):
        name, braced = m.group(1), m.group(2)
        scoped = base_metric(name)[0] in METRICS or name in recorded or name in GMP_PUBSUB or name in KSM \
            or name == "up"
        if scoped and not braced:
            problems.append(f"{where}: {name} is read without a selector, so without its scope marker")
    for name, matchers in selectors(expr):
        if name is None:
            continue
        have = set(matchers)
        if base_metric(name)[0] in METRICS or name in recorded or name == "up":
            want, label = {JOB_MARKER}, 'job=~".*push-dispatch.*"'
        elif name in KSM_HPA:
            want, label = {HPA_MARKER}, 'horizontalpodautoscaler=~".*push-dispatch.*"'
        elif name in KSM:
            want, label = {POD_MARKER}, 'pod=~".*push-dispatch.*"'
        elif name in GMP_PUBSUB:
            want, label = SUBSCRIPTION_MARKERS, 'subscription_id=~"push-requests.*-dispatch" (or -dlq-inspect)'
        else:
            continue
        if not have & want:
            problems.append(f"{where}: {name} has no scope marker {label}")
    return problems


def expr_problems(expr, where, recorded):
    problems = []
    if expr.count("(") != expr.count(")"):
        problems.append(f"{where}: unbalanced parentheses")
    for name in sorted(metric_names(expr)):
        base, _ = base_metric(name)
        if base in METRICS or name in recorded or name in GMP_PUBSUB or name in KSM or name == "up":
            continue
        problems.append(f"{where}: unknown metric {name!r} (not in docs/reference.md Metrics, not a recording rule "
                        f"of the rules file, not a GMP Pub/Sub metric)")
    for name, matchers in selectors(expr):
        if name is None:
            continue
        base, suffix = base_metric(name)
        if base in METRICS:
            allowed = METRICS[base][1] | TARGET_LABELS | ({"le"} if suffix == "_bucket" else set())
        elif name in GMP_PUBSUB:
            allowed = GMP_LABELS
        elif name in KSM:
            allowed = KSM[name] | {"cluster", "job", "instance"}
        else:
            continue
        for label, _op, value in matchers:
            if label not in allowed:
                problems.append(f"{where}: {name} has no label {label!r}")
                continue
            known = LABEL_VALUES.get((base, label))
            if known and not value.startswith("$"):
                for alt in value.split("|"):
                    if re.fullmatch(r"[a-z_]+", alt) and alt not in known:
                        problems.append(f"{where}: {name}{{{label}}} never has the value {alt!r}")
    return problems


# --------------------------------------------------------------------------- buckets
def send_duration_buckets():
    """The upper bounds of push_dispatch_send_duration_seconds as metrics.rs
    builds them, or None when the source has a form this does not read."""
    try:
        src = METRICS_RS.read_text()
    except OSError:
        return None
    m = re.search(r"send_duration:\s*Family::new_with_constructor\((\w+)\)", src)
    if not m:
        return None
    body = re.search(rf"fn {m.group(1)}\(\)[^{{]*\{{(.*?)\n\}}", src, re.S)
    if not body:
        return None
    code = re.sub(r"//[^\n]*", "", body.group(1))
    num = r"(\d+(?:\.\d*)?(?:e-?\d+)?)"
    exp = re.fullmatch(rf"\s*Histogram::new\(exponential_buckets\({num},\s*{num},\s*(\d+)\)\)\s*", code)
    if exp:
        start, factor, n = float(exp.group(1)), float(exp.group(2)), int(exp.group(3))
        return [start * factor ** i for i in range(n)]
    lin = re.fullmatch(rf"\s*Histogram::new\(linear_buckets\({num},\s*{num},\s*(\d+)\)\)\s*", code)
    if lin:
        start, width, n = float(lin.group(1)), float(lin.group(2)), int(lin.group(3))
        return [start + width * i for i in range(n)]
    listed = re.fullmatch(r"\s*Histogram::new\(\s*(?:vec!)?\[([^\]]*)\]\s*(?:\.(?:into_iter|iter)\(\)(?:\.copied\(\))?)?\s*\)\s*",
                          code)
    if listed:
        try:
            return [float(x.strip().rstrip("_f64")) for x in listed.group(1).split(",") if x.strip()]
        except ValueError:
            return None
    return None


def check_latency_bucket(res):
    bounds = send_duration_buckets()
    name = "latency SLI: push_dispatch_send_duration_seconds has a 1 s bucket (metrics.rs)"
    if bounds is None:
        print("note: cannot read the bucket layout of push_dispatch_send_duration_seconds from "
              "crates/worker/src/metrics.rs; the latency SLI needs a bucket with le=1")
        return
    if any(abs(b - 1.0) < 1e-9 for b in bounds):
        res.check(name, [])
    else:
        near = ", ".join(f"{b:g}" for b in bounds if 0.1 <= b <= 10)
        res.check(name, [f"its upper bounds ({near}, ...) have no 1: the le=\"1\" ratio is empty and "
                         f"PushDispatchLatencySLOBurn can never fire; give the histogram a 1.0 boundary"])


# --------------------------------------------------------------------------- rules
def check_rules(res):
    try:
        doc = yaml.safe_load(RULES.read_text())
    except (OSError, yaml.YAMLError) as e:
        res.check("rules file parses", [str(e)])
        return
    res.check("rules file parses", [])

    problems = []
    if not isinstance(doc, dict) or set(doc) != {"groups"} or not isinstance(doc["groups"], list):
        res.check("rules file is a plain `groups:` file", ["top level must be exactly `groups:` (a list)"])
        return
    names = [g.get("name") for g in doc["groups"]]
    if len(set(names)) != len(names) or None in names:
        problems.append(f"group names missing or repeated: {names}")
    rules = []
    for g in doc["groups"]:
        extra = set(g) - {"name", "interval", "rules", "limit", "query_offset"}
        if extra:
            problems.append(f"group {g.get('name')}: unknown keys {sorted(extra)}")
        if not g.get("rules"):
            problems.append(f"group {g.get('name')}: no rules")
        for r in g.get("rules") or []:
            rules.append((g.get("name"), r))
            kinds = [k for k in ("alert", "record") if k in r]
            if len(kinds) != 1:
                problems.append(f"group {g.get('name')}: a rule needs exactly one of alert/record: {r}")
            if not isinstance(r.get("expr"), str) or not r["expr"].strip():
                problems.append(f"{r.get('alert') or r.get('record')}: no expr")
    res.check(f"rules structure ({len(doc['groups'])} groups, {len(rules)} rules)", problems)

    recorded = {r["record"] for _, r in rules if "record" in r}
    problems = [f"recording rule {n!r} is not level:metric:operations"
                for n in sorted(recorded) if n.count(":") != 2]
    for _, r in rules:
        if "record" in r:
            problems += expr_problems(r["expr"], r["record"], recorded)
            problems += scope_problems(r["expr"], r["record"], recorded)
    res.check(f"recording rules ({len(recorded)}): names, metrics, labels", problems)

    anchors, runbook = runbook_sections()
    alerts = [r for _, r in rules if "alert" in r]
    problems = []
    for r in alerts:
        a = r["alert"]
        if not re.fullmatch(r"[A-Z][A-Za-z0-9]+", a):
            problems.append(f"{a}: alert names are UpperCamelCase")
        if "for" not in r:
            problems.append(f"{a}: no `for`")
        elif not DURATION.match(str(r["for"])):
            problems.append(f"{a}: `for: {r['for']}` is not a duration")
        labels = r.get("labels") or {}
        if labels.get("severity") not in SEVERITIES:
            problems.append(f"{a}: labels.severity must be one of {sorted(SEVERITIES)}")
        ann = r.get("annotations") or {}
        for key in ("summary", "description", "runbook_url"):
            if not isinstance(ann.get(key), str) or not ann[key].strip():
                problems.append(f"{a}: no annotations.{key}")
        for key, text in ann.items():
            if str(text).count("{{") != str(text).count("}}"):
                problems.append(f"{a}: annotations.{key} has unbalanced {{{{ }}}}")
        url = ann.get("runbook_url", "")
        if not url.startswith(RUNBOOK_BASE):
            problems.append(f"{a}: runbook_url must start with {RUNBOOK_BASE}")
        else:
            anchor = url[len(RUNBOOK_BASE):]
            if anchor not in anchors:
                problems.append(f"{a}: runbook anchor #{anchor} is no heading of docs/operations.md")
            elif anchor not in runbook:
                problems.append(f"{a}: #{anchor} is not a section of the Runbook")
            elif runbook[anchor] != a:
                problems.append(f"{a}: links to the runbook section of {runbook[anchor]}")
        problems += expr_problems(r["expr"], a, recorded)
        problems += scope_problems(r["expr"], a, recorded)
    res.check(f"alerts ({len(alerts)}): for, severity, summary, description, runbook_url, metrics, "
              f"scope markers", problems)

    alert_names = {r["alert"] for r in alerts}
    sections = set(runbook.values())
    problems = [f"alert {n} has no Runbook section in docs/operations.md" for n in sorted(alert_names - sections)]
    problems += [f"Runbook section {n} has no alert rule" for n in sorted(sections - alert_names)]
    res.check(f"alerts match the runbook sections ({len(sections)})", problems)


# --------------------------------------------------------------------------- dashboard
def dashboard_queries(dash):
    for p in all_panels(dash):
        for t in p.get("targets") or []:
            yield p, t


def all_panels(dash):
    for p in dash.get("panels", []):
        yield p
        for inner in p.get("panels", []) or []:
            yield inner


def check_dashboard(res):
    try:
        dash = json.loads(DASHBOARD.read_text())
    except (OSError, ValueError) as e:
        res.check("dashboard JSON parses", [str(e)])
        return
    res.check("dashboard JSON parses", [])

    problems = []
    if dash.get("schemaVersion") != 39:
        problems.append(f"schemaVersion is {dash.get('schemaVersion')}, not 39")
    for key in ("uid", "title", "description"):
        if not dash.get(key):
            problems.append(f"dashboard has no {key}")
    variables = {v.get("name"): v for v in dash.get("templating", {}).get("list", [])}
    ds = variables.get("datasource")
    if not ds or ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        problems.append("no `datasource` variable of type datasource for prometheus")
    for name, label in (("cluster", "cluster"), ("namespace", "namespace"), ("job", "job"),
                        ("platform", "platform"), ("app", "app"), ("subscription", "subscription_id")):
        v = variables.get(name)
        q = v and (v.get("query") if isinstance(v.get("query"), str) else v.get("query", {}).get("query"))
        if not v or v.get("type") != "query" or not q or not re.match(rf"label_values\(.*,\s*{label}\)$", q):
            problems.append(f"no `{name}` variable from label_values(..., {label})")
        elif v.get("datasource", {}).get("uid") != "${datasource}":
            problems.append(f"variable {name} does not use ${{datasource}}")
    for link in dash.get("links", []):
        if link.get("url") and not link["url"].startswith(RUNBOOK_BASE):
            problems.append(f"link {link.get('title')!r} is {link['url']}, not {RUNBOOK_BASE}... (runbookBaseUrl)")
    res.check("dashboard: schemaVersion 39, description, variables, runbook link", problems)

    problems = []
    panels = list(all_panels(dash))
    ids = [p.get("id") for p in panels]
    dupes = sorted({i for i in ids if ids.count(i) > 1 or i is None}, key=str)
    if dupes:
        problems.append(f"panel ids missing or repeated: {dupes}")
    cells = {}
    for p in panels:
        g = p.get("gridPos") or {}
        if not all(isinstance(g.get(k), int) for k in "hwxy"):
            problems.append(f"panel {p.get('id')} {p.get('title')!r}: no gridPos")
            continue
        if g["x"] < 0 or g["x"] + g["w"] > 24:
            problems.append(f"panel {p.get('id')} {p.get('title')!r}: outside the 24 columns")
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                if (x, y) in cells:
                    problems.append(f"panel {p.get('id')} overlaps panel {cells[(x, y)]}")
                    break
                cells[(x, y)] = p.get("id")
            else:
                continue
            break
    res.check(f"dashboard: {len(panels)} panels with unique ids in the grid", problems)

    problems = []
    shown = set()
    used_vars = set()
    content = [p for p in panels if p.get("type") != "row"]
    for p in content:
        where = f"panel {p.get('id')} {p.get('title')!r}"
        if not str(p.get("description", "")).strip():
            problems.append(f"{where}: no description")
        if (p.get("datasource") or {}).get("uid") != "${datasource}":
            problems.append(f"{where}: datasource is not ${{datasource}}")
        targets = p.get("targets") or []
        if not targets:
            problems.append(f"{where}: no targets")
        refs = [t.get("refId") for t in targets]
        if len(set(refs)) != len(refs) or None in refs:
            problems.append(f"{where}: refIds missing or repeated")
        for t in targets:
            expr = t.get("expr", "")
            if not expr.strip():
                problems.append(f"{where} {t.get('refId')}: no expr")
                continue
            if (t.get("datasource") or {}).get("uid") not in (None, "${datasource}"):
                problems.append(f"{where} {t.get('refId')}: target datasource is not ${{datasource}}")
            used_vars |= set(re.findall(r"\$\{?(\w+)", expr))
            for bare in re.findall(r"(?<![\w:])(push_dispatch_\w+)(?![\w{])(?!\s*\{)", strip_strings(expr)):
                problems.append(f"{where} {t.get('refId')}: {bare} without a selector (cluster, namespace, job)")
            for name, matchers in selectors(expr):
                if name and base_metric(name)[0] in METRICS:
                    have = {(label, op, value) for label, op, value in matchers}
                    for want in (("cluster", "=~", "$cluster"), ("namespace", "=~", "$namespace"),
                                 ("job", "=~", "$job")):
                        if want not in have:
                            problems.append(f"{where} {t.get('refId')}: {name} is not scoped by "
                                            f'{want[0]}=~"{want[2]}"')

            problems += expr_problems(grafana_to_promql(expr), f"{where} {t.get('refId')}", set())
            shown |= {base_metric(n)[0] for n in metric_names(grafana_to_promql(expr))}
    undefined = sorted(v for v in used_vars if v not in variables and v not in GRAFANA_BUILTINS)
    if undefined:
        problems.append(f"undefined variables: {undefined}")
    missing = sorted(set(METRICS) - shown)
    if missing:
        problems.append(f"worker metrics on no panel: {missing}")
    missing = sorted(GMP_PUBSUB - shown)
    if missing:
        problems.append(f"Pub/Sub metrics on no panel: {missing}")
    res.check(f"dashboard: {len(content)} panels have a description, ${{datasource}}, targets "
              f"and known metrics; every worker metric is shown", problems)


def grafana_to_promql(expr):
    """Grafana variables to plain values, so the query is PromQL."""
    e = expr.replace("$__rate_interval", "5m").replace("$__range", "1h").replace("$__interval", "1m")
    return re.sub(r"\$\{?(\w+)\}?", ".*", e)


def dashboard_rules():
    dash = json.loads(DASHBOARD.read_text())
    rules = []
    for p, t in dashboard_queries(dash):
        rules.append({"record": f"dashboard:panel_{p['id']}:{t['refId'].lower()}",
                      "expr": grafana_to_promql(t["expr"])})
    print(yaml.safe_dump({"groups": [{"name": "dashboard-queries", "rules": rules}]}, sort_keys=False))


# --------------------------------------------------------------------------- main
def readme_note():
    """Names METRICS has that docs/reference.md (Metrics) does not mention yet: a note, not a failure."""
    text = README.read_text()
    section = text.split("## Metrics", 1)[-1].split("\n## ", 1)[0]
    missing = [m for m in METRICS if m not in section]
    if missing:
        print(f"note: docs/reference.md (Metrics) does not list {', '.join(missing)} yet")


def main():
    what = sys.argv[1] if len(sys.argv) == 2 else ""
    if what == "dashboard-rules":
        dashboard_rules()
        return 0
    res = Results()
    if what == "rules":
        check_rules(res)
        check_latency_bucket(res)
        readme_note()
    elif what == "dashboard":
        check_dashboard(res)
    else:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    return 1 if res.failed else 0


if __name__ == "__main__":
    sys.exit(main())
