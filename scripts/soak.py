#!/usr/bin/env python3
"""`make soak`: the worker at a steady rate for a long time, watched for drift.

The real worker binary (release build) runs against the Pub/Sub emulator and
the sandbox (with a sprinkle of faults: 1 % 5xx, 0.5 % 429, a GOAWAY every
5,000 streams) while this script publishes requests at a steady rate
(SOAK_RATE messages/s, one target each, APNs and FCM alternating) for
SOAK_DURATION seconds (default 1800). Every SOAK_INTERVAL seconds (10) it
samples the worker:

  rss_mib          resident memory (/proc/PID/status VmRSS)
  sockets          open sockets (/proc/PID/fd), i.e. connections
  inflight         push_dispatch_inflight_messages
  p50_ms, p99_ms   end-to-end latency over the interval, from the deltas of
                   push_dispatch_end_to_end_seconds' buckets
  cpu_us_per_msg   the worker's CPU (utime + stime) over the interval per
                   message settled in it
  rate             messages settled per second

and writes them to SOAK_DIR/soak.csv, then draws SOAK_DIR/soak.png. After
the warm-up (SOAK_WARMUP, default 10 % of the run, at least 60 s) it compares
the median of the first and of the last three samples: it fails (exit 1) if
RSS grew more than 10 % or p99 more than 50 %.
"""

import csv
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = REPO / os.environ.get("SOAK_BIN", "target/release/push-dispatch")
DURATION = float(os.environ.get("SOAK_DURATION", "1800"))
RATE = float(os.environ.get("SOAK_RATE", "1000"))
INTERVAL = float(os.environ.get("SOAK_INTERVAL", "10"))
WARMUP = float(os.environ.get("SOAK_WARMUP", str(max(60.0, DURATION * 0.1))))
OUT = Path(os.environ.get("SOAK_DIR", str(REPO / ".bench" / "soak")))
RSS_LIMIT, P99_LIMIT = 1.10, 1.50


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def http(url, body=None, timeout=10):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="POST" if data else "GET",
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.read().decode()


def wait_for(what, check, deadline=60):
    start = time.time()
    while time.time() - start < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.1)
    sys.exit(f"soak: {what} did not come up within {deadline} s")


def metric(text, name, labels=None):
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        series, _, value = line.rpartition(" ")
        m = re.match(r"([^{]+)(?:\{(.*)\})?$", series)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        if all(got.get(k) == v for k, v in (labels or {}).items()):
            total += float(value)
    return total


def buckets(text, name):
    out = {}
    for line in text.splitlines():
        m = re.match(rf'{name}_bucket\{{le="([^"]+)"\}} (\S+)', line)
        if m:
            out[float("inf") if m.group(1) == "+Inf" else float(m.group(1))] = float(m.group(2))
    return out


def quantile(before, after, q):
    """The q-quantile of the observations between two histogram scrapes."""
    edges = sorted(after)
    deltas = [after[e] - before.get(e, 0.0) for e in edges]
    total = deltas[-1] if deltas else 0.0
    if total <= 0:
        return float("nan")
    want = q * total
    prev_edge, prev_count = 0.0, 0.0
    for edge, count in zip(edges, deltas):
        if count >= want:
            if edge == float("inf"):
                return prev_edge
            span = count - prev_count
            frac = 0.0 if span <= 0 else (want - prev_count) / span
            return prev_edge + (edge - prev_edge) * frac
        prev_edge, prev_count = edge, count
    return prev_edge


def proc(pid):
    status = Path(f"/proc/{pid}/status").read_text()
    rss = int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
    sockets = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            sockets += os.readlink(fd).startswith("socket:")
        except OSError:
            pass
    return rss, cpu, sockets


def median(values):
    values = sorted(values)
    return values[len(values) // 2]


def plot(rows, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("soak: matplotlib is missing (pip install matplotlib): no plot drawn", file=sys.stderr)
        return False
    t = [r["t_s"] / 60 for r in rows]
    fig, axes = plt.subplots(5, 1, figsize=(9, 11), sharex=True)
    series = [
        ("rss_mib", "RSS (MiB)"),
        ("sockets", "open sockets"),
        ("inflight", "messages in flight"),
        (("p50_ms", "p99_ms"), "end to end (ms)"),
        ("cpu_us_per_msg", "CPU per message (µs)"),
    ]
    for ax, (key, label) in zip(axes, series):
        for k in (key if isinstance(key, tuple) else (key,)):
            ax.plot(t, [r[k] for r in rows], label=k)
        ax.set_ylabel(label)
        ax.axvline(WARMUP / 60, color="grey", linestyle=":", linewidth=1)
        ax.grid(alpha=0.3)
        if isinstance(key, tuple):
            ax.legend(loc="upper right")
    axes[-1].set_xlabel("minutes (dotted: end of warm-up)")
    fig.suptitle(f"push-dispatch soak: {RATE:.0f} msg/s for {DURATION / 60:.0f} min")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return True


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    procs = []

    def stop_all(*_):
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(procs):
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()

    signal.signal(signal.SIGTERM, lambda *_: (stop_all(), sys.exit(1)))
    emulator = os.environ.get("PUBSUB_EMULATOR_HOST")
    started_emulator = False
    if not emulator:
        emulator = subprocess.check_output([str(REPO / "scripts/emulator.sh"), "start", str(OUT)], text=True).strip()
        started_emulator = True
    try:
        sandbox_port, metrics_port = free_port(), free_port()
        procs.append(subprocess.Popen(
            [str(BIN), "sandbox", "--listen", f"127.0.0.1:{sandbox_port}", "--dir", str(OUT),
             "--failure-rate", "0.01", "--retry-after-rate", "0.005", "--retry-after-secs", "1",
             "--goaway-every", "5000"],
            stdout=open(OUT / "sandbox.log", "w"), stderr=subprocess.STDOUT))
        wait_for("the sandbox", lambda: http(f"http://127.0.0.1:{sandbox_port}/sandbox/stats") is not None)
        project = f"soak-{int(time.time())}"
        url = f"http://127.0.0.1:{sandbox_port}"
        (OUT / "config.yaml").write_text(f"""project_id: {project}
allow_insecure_endpoints: true
pubsub: {{ streams: 4, max_outstanding_messages: 2000 }}
dispatch: {{ max_in_process_wait: 2s, request_timeout: 2s }}
telemetry: {{ log_format: json, log_level: warn }}
server: {{ listen: 127.0.0.1:{metrics_port} }}
apps:
  - name: default
    apns: {{ endpoint: "{url}", key_file: {OUT}/AuthKey_SANDBOXK01.p8, key_id: SANDBOXK01, team_id: SANDBOXT01, topic: com.example.app }}
    fcm: {{ endpoint: "{url}", project_id: example-firebase-project, credentials_file: {OUT}/service-account.json }}
""")
        env = dict(os.environ, PUBSUB_EMULATOR_HOST=emulator)
        subprocess.run([str(BIN), "--config", str(OUT / "config.yaml"), "provision"], env=env,
                       check=True, stdout=subprocess.DEVNULL)
        worker = subprocess.Popen([str(BIN), "--config", str(OUT / "config.yaml"), "run"], env=env,
                                  stdout=open(OUT / "worker.log", "w"), stderr=subprocess.STDOUT)
        procs.append(worker)
        wait_for("the worker", lambda: "ready" in http(f"http://127.0.0.1:{metrics_port}/readyz"))
        return run(emulator, project, metrics_port, worker)
    finally:
        stop_all()
        if started_emulator:
            subprocess.run([str(REPO / "scripts/emulator.sh"), "stop", str(OUT)], check=False)


def run(emulator, project, metrics_port, worker):
    publish = f"http://{emulator}/v1/projects/{project}/topics/push-requests:publish"
    token_apns = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90"
    import base64

    def body(i):
        target = ({"platform": "PLATFORM_APNS", "token": token_apns} if i % 2 == 0
                  else {"platform": "PLATFORM_FCM", "token": f"soak-{i % 1000}"})
        req = {"requestId": f"soak-{i}", "targets": [target],
               "notification": {"title": "soak", "body": "steady"}}
        return {"data": base64.b64encode(json.dumps(req).encode()).decode()}

    rows, sent, start = [], 0, time.time()
    publish_errors = 0
    batch = max(1, int(RATE / 20))  # 20 publishes per second
    next_sample = start + INTERVAL
    scrape = http(f"http://127.0.0.1:{metrics_port}/metrics")
    _, cpu0, _ = proc(worker.pid)
    prev = (scrape, cpu0, metric(scrape, "push_dispatch_messages_total"), start)
    while time.time() - start < DURATION:
        now = time.time()
        due = int((now - start) * RATE)
        behind = due - sent
        if behind > 0:
            # One batch per turn, so that sampling goes on even when the
            # publisher cannot keep up (the samples then show the real rate).
            n = min(batch, behind)
            try:
                http(publish, {"messages": [body(sent + k) for k in range(n)]})
                sent += n
            except OSError as e:
                # The emulator's REST front end drops a connection now and
                # then: count it, try again on the next turn.
                publish_errors += 1
                if publish_errors % 10 == 1:
                    print(f"soak: publish failed ({e}); retrying", file=sys.stderr, flush=True)
                time.sleep(0.05)
        if worker.poll() is not None:
            sys.exit(f"soak: the worker exited ({worker.returncode}); see {OUT}/worker.log")
        if now >= next_sample:
            try:
                text = http(f"http://127.0.0.1:{metrics_port}/metrics")
            except OSError:
                next_sample += INTERVAL
                continue
            rss, cpu, sockets = proc(worker.pid)
            settled = metric(text, "push_dispatch_messages_total")
            p_text, p_cpu, p_settled, p_t = prev
            done = max(settled - p_settled, 1.0)
            hb, ha = buckets(p_text, "push_dispatch_end_to_end_seconds"), buckets(text, "push_dispatch_end_to_end_seconds")
            row = {
                "t_s": round(now - start, 1),
                "rss_mib": round(rss, 1),
                "sockets": sockets,
                "inflight": metric(text, "push_dispatch_inflight_messages"),
                "p50_ms": round(1000 * quantile(hb, ha, 0.50), 2),
                "p99_ms": round(1000 * quantile(hb, ha, 0.99), 2),
                "cpu_us_per_msg": round(1e6 * (cpu - p_cpu) / done, 1),
                "rate": round((settled - p_settled) / (now - p_t), 1),
            }
            rows.append(row)
            print(",".join(f"{k}={v}" for k, v in row.items()), flush=True)
            prev = (text, cpu, settled, now)
            next_sample += INTERVAL
        if behind <= 0:
            time.sleep(0.01)
    print(f"soak: {publish_errors} publish calls failed and were retried", flush=True)
    return judge(rows, sent)


def judge(rows, sent):
    path = OUT / "soak.csv"
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    drawn = plot(rows, OUT / "soak.png")
    steady = [r for r in rows if r["t_s"] >= WARMUP and r["p99_ms"] == r["p99_ms"]]
    if len(steady) < 6:
        sys.exit(f"soak: only {len(steady)} samples after the {WARMUP:.0f} s warm-up; run longer")
    first, last = steady[:3], steady[-3:]
    rss0, rss1 = median([r["rss_mib"] for r in first]), median([r["rss_mib"] for r in last])
    p990, p991 = median([r["p99_ms"] for r in first]), median([r["p99_ms"] for r in last])
    cpu = median([r["cpu_us_per_msg"] for r in steady])
    rate = median([r["rate"] for r in steady])
    print(f"\nsoak: {sent} requests published at {RATE:.0f}/s over {DURATION / 60:.1f} min; "
          f"settled {rate:.0f}/s (median after warm-up)")
    print(f"  RSS        {rss0:.1f} -> {rss1:.1f} MiB  ({(rss1 / rss0 - 1) * 100:+.1f} %, limit +{(RSS_LIMIT - 1) * 100:.0f} %)")
    print(f"  p99        {p990:.1f} -> {p991:.1f} ms   ({(p991 / p990 - 1) * 100:+.1f} %, limit +{(P99_LIMIT - 1) * 100:.0f} %)")
    print(f"  p50        {median([r['p50_ms'] for r in first]):.1f} -> {median([r['p50_ms'] for r in last]):.1f} ms")
    print(f"  sockets    {median([r['sockets'] for r in first])} -> {median([r['sockets'] for r in last])}")
    print(f"  CPU        {cpu:.0f} µs per message (median)")
    print(f"  samples    {path}" + (f", plot {OUT / 'soak.png'}" if drawn else ""))
    failed = []
    if rss1 > rss0 * RSS_LIMIT:
        failed.append("RSS grew more than 10 %")
    if p991 > p990 * P99_LIMIT:
        failed.append("p99 grew more than 50 %")
    if failed:
        print("soak: FAILED: " + "; ".join(failed))
        return 1
    print("soak: passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
