//! `push-dispatch-bench-e2e`: the whole path, Pub/Sub emulator → worker →
//! sandbox, against the emulator's own ceiling in the same run.
//!
//! 1. Start the sandbox in process (h2c) and the worker binary with N streams.
//! 2. Publish N requests (one target each, APNs and FCM alternating) and time
//!    from the first publish to the last push the sandbox accepted.
//! 3. On a fresh subscription holding the same number of messages, time the
//!    emulator handing them out to the same number of streams that only ack
//!    (its pull+ack ceiling).
//! 4. Print both rates and their ratio (target: ≥ 90 % of the ceiling).
//!
//! Needs `PUBSUB_EMULATOR_HOST` (`make bench` starts an emulator).

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use push_dispatch_sandbox::{Sandbox, SandboxConfig, devkeys};
use push_dispatch_subscriber::publish::build_message;
use push_dispatch_subscriber::pubsub::model::Subscription;
use push_dispatch_subscriber::{Clients, subscription_name, topic_name};

/// End-to-end benchmark against the emulator's ceiling.
#[derive(Debug, Parser)]
#[command(name = "push-dispatch-bench-e2e", version)]
struct Args {
    /// Requests to push through.
    #[arg(long, default_value_t = 20_000)]
    requests: usize,
    /// Streaming pulls, for the worker and for the ceiling.
    #[arg(long, default_value_t = 4)]
    streams: u32,
    /// Targets per request (APNs and FCM alternating).
    #[arg(long, default_value_t = 1)]
    targets: usize,
    /// The worker binary.
    #[arg(long, default_value = "target/release/push-dispatch")]
    worker_bin: PathBuf,
    /// Give up after this long.
    #[arg(long, default_value = "300s", value_parser = humantime_parse)]
    timeout: Duration,
}

fn humantime_parse(s: &str) -> Result<Duration, String> {
    let secs = s
        .trim_end_matches('s')
        .parse::<u64>()
        .map_err(|e| e.to_string())?;
    Ok(Duration::from_secs(secs))
}

/// Stops the worker with SIGTERM, as Kubernetes does, so that a wrapper
/// such as valgrind writes its output; SIGKILL if it has not exited within
/// a minute.
async fn stop(worker: &mut tokio::process::Child) {
    if let Some(pid) = worker.id() {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        if tokio::time::timeout(Duration::from_secs(60), worker.wait())
            .await
            .is_ok()
        {
            return;
        }
    }
    let _ = worker.kill().await;
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn publish_all(clients: &Clients, topic: &str, bodies: Vec<Vec<u8>>) -> anyhow::Result<()> {
    let publisher = clients
        .publisher(topic, Duration::from_secs(30), Duration::from_millis(5))
        .await?;
    let mut pending = Vec::with_capacity(bodies.len());
    for body in bodies {
        let message = build_message(body, HashMap::new())?;
        pending.push(publisher.publish(message));
    }
    for p in pending {
        p.await.context("publish")?;
    }
    Ok(())
}

/// The emulator's own pull + ack rate for `bodies` on `streams` streams of
/// a fresh subscription `name`: streams open first, then timed from the
/// first publish to the last message handed out, exactly as the worker is.
async fn ceiling(
    clients: &Clients,
    project: &str,
    name: &str,
    bodies: Vec<Vec<u8>>,
    streams: u32,
    timeout: Duration,
) -> anyhow::Result<Duration> {
    let n_all = bodies.len();
    let topic = topic_name(project, name);
    clients
        .topics
        .create_topic()
        .set_name(topic.clone())
        .send()
        .await?;
    let sub = subscription_name(project, name);
    clients
        .subscriptions
        .create_subscription()
        .with_request(
            Subscription::new()
                .set_name(sub.clone())
                .set_topic(topic.clone())
                .set_ack_deadline_seconds(60),
        )
        .send()
        .await?;
    let received = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..streams {
        let mut stream = clients
            .subscriber
            .subscribe(sub.clone())
            .set_max_outstanding_messages(4000 / i64::from(streams))
            .build();
        let received = received.clone();
        let n = n_all;
        tasks.spawn(async move {
            while received.load(Ordering::Relaxed) < n {
                match stream.next().await {
                    Some(Ok((_, handler))) => {
                        handler.ack();
                        received.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => break,
                }
            }
        });
    }
    // Timed like the worker: streams open first, then from the first publish
    // to the last message handed out.
    let t1 = Instant::now();
    publish_all(clients, &topic, bodies).await?;
    while received.load(Ordering::Relaxed) < n_all && t1.elapsed() < timeout {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tasks.abort_all();
    Ok(t1.elapsed())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let emulator = std::env::var("PUBSUB_EMULATOR_HOST")
        .context("PUBSUB_EMULATOR_HOST is not set; run through `make bench`")?;
    let dir = tempfile::tempdir()?;
    let project = format!("bench-{:08x}", rand::random::<u32>());

    // The sandbox, in process.
    let port = free_port()?;
    let creds = devkeys::ensure(
        dir.path(),
        &format!("http://127.0.0.1:{port}/token"),
        "bench-fb",
    )?;
    let mut config = SandboxConfig::local(
        creds.apns_config("com.example.app"),
        creds.fcm_config("bench-fb"),
    );
    config.listen = format!("127.0.0.1:{port}").parse()?;
    let sandbox = Sandbox::start(config).await?;

    // The worker.
    let metrics_port = free_port()?;
    let config_path = dir.path().join("config.yaml");
    std::fs::write(
        &config_path,
        format!(
            r#"project_id: {project}
allow_insecure_endpoints: true
pubsub:
  streams: {streams}
  max_outstanding_messages: 4000
  ack_deadline: 60s
dispatch:
  concurrency: 1024
telemetry:
  log_format: text
  log_level: warn
server:
  listen: 127.0.0.1:{metrics_port}
apps:
  - name: default
    apns:
      endpoint: {url}
      key_file: {key}
      key_id: {kid}
      team_id: {team}
      topic: com.example.app
    fcm:
      endpoint: {url}
      project_id: bench-fb
      credentials_file: {sa}
"#,
            streams = args.streams,
            url = sandbox.base_url(),
            key = creds.apns_key_file.display(),
            kid = creds.key_id,
            team = creds.team_id,
            sa = creds.service_account_file.display(),
        ),
    )?;
    let status = std::process::Command::new(&args.worker_bin)
        .args(["--config"])
        .arg(&config_path)
        .arg("provision")
        .env("PUBSUB_EMULATOR_HOST", &emulator)
        .stdout(Stdio::null())
        .status()
        .with_context(|| format!("cannot run {}", args.worker_bin.display()))?;
    if !status.success() {
        bail!("provision failed");
    }
    let mut worker = tokio::process::Command::new(&args.worker_bin)
        .args(["--config"])
        .arg(&config_path)
        .arg("run")
        .env("PUBSUB_EMULATOR_HOST", &emulator)
        .kill_on_drop(true)
        .spawn()?;
    let http = reqwest::Client::new();
    let ready_url = format!("http://127.0.0.1:{metrics_port}/readyz");
    let start = Instant::now();
    while !http
        .get(&ready_url)
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        if start.elapsed() > Duration::from_secs(30) {
            bail!("worker not ready");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ready_after = start.elapsed();

    let targets = args.targets.max(1);
    let make = |prefix: &str, count: usize| -> Vec<Vec<u8>> {
        (0..count)
            .map(|i| {
                let list: Vec<String> = (0..targets)
                    .map(|j| {
                        let n = i * targets + j;
                        if n % 2 == 0 {
                            format!(r#"{{"platform":"PLATFORM_APNS","token":"a1{n:062x}"}}"#)
                        } else {
                            format!(r#"{{"platform":"PLATFORM_FCM","token":"bench-{n}"}}"#)
                        }
                    })
                    .collect();
                format!(
                    r#"{{"requestId":"{prefix}-{i}","targets":[{}],"notification":{{"title":"bench"}}}}"#,
                    list.join(",")
                )
                .into_bytes()
            })
            .collect()
    };
    let bodies = make("b", args.requests);
    let clients = Clients::connect(Some(&emulator)).await?;
    let delivered = |s: &Sandbox| {
        let st = s.stats();
        (st.apns_count("200") + st.fcm_count("200")) as usize
    };

    // Warm-up, not timed: the emulator's JIT and the worker's connections
    // get going on the worker's own streams, so neither measurement below
    // pays for a cold start (and no extra streams are left behind).
    let warm = make("w", args.requests.min(2_000));
    let warm_pushes = warm.len() * targets;
    publish_all(&clients, &topic_name(&project, "push-requests"), warm).await?;
    let w0 = Instant::now();
    while delivered(&sandbox) < warm_pushes {
        if w0.elapsed() > args.timeout {
            bail!(
                "warm-up: only {} of {warm_pushes} delivered",
                delivered(&sandbox)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let expected_pushes = warm_pushes + args.requests * targets;
    let worker_stat = worker
        .id()
        .map(|pid| format!("/proc/{pid}/stat"))
        .unwrap_or_default();
    let cpu0 = push_dispatch_bench::cpu_seconds(&worker_stat);
    let t0 = Instant::now();
    publish_all(
        &clients,
        &topic_name(&project, "push-requests"),
        bodies.clone(),
    )
    .await?;
    let published = t0.elapsed();
    while delivered(&sandbox) < expected_pushes {
        if t0.elapsed() > args.timeout {
            bail!(
                "only {} of {} delivered after {:?}",
                delivered(&sandbox),
                expected_pushes,
                args.timeout
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let worker_time = t0.elapsed();
    let worker_cpu = push_dispatch_bench::cpu_seconds(&worker_stat) - cpu0;
    stop(&mut worker).await;

    // The emulator's ceiling: same messages, same streams, ack only.
    let ceiling_time = ceiling(
        &clients,
        &project,
        "ceiling",
        bodies,
        args.streams,
        args.timeout,
    )
    .await?;

    let worker_rate = args.requests as f64 / worker_time.as_secs_f64();
    let push_rate = (args.requests * targets) as f64 / worker_time.as_secs_f64();
    let ceiling_rate = args.requests as f64 / ceiling_time.as_secs_f64();
    println!(
        "end-to-end benchmark: {} requests × {targets} targets, {} streams (emulator at {emulator})",
        args.requests, args.streams
    );
    println!(
        "  publish                {:>8.0} msg/s ({:.2} s)",
        args.requests as f64 / published.as_secs_f64(),
        published.as_secs_f64()
    );
    println!(
        "  worker: first publish → last delivery {:>8.0} requests/s, {:.0} pushes/s ({:.2} s)",
        worker_rate,
        push_rate,
        worker_time.as_secs_f64()
    );
    println!(
        "  worker CPU             {:>8.1} µs per request, {:.2} cores busy (pull, decode, send, ack; the emulator and sandbox use the rest)",
        worker_cpu / args.requests as f64 * 1e6,
        worker_cpu / worker_time.as_secs_f64()
    );
    println!(
        "  emulator ceiling (pull + ack only, first publish → last message) {:>8.0} msg/s ({:.2} s)",
        ceiling_rate,
        ceiling_time.as_secs_f64()
    );
    println!(
        "  worker start → /readyz 200             {:>8.2} s (subscription check, publishers, streams; polled every 10 ms)   target ≤ 1 s  {}",
        ready_after.as_secs_f64(),
        if ready_after <= Duration::from_secs(1) {
            "MET"
        } else {
            "NOT MET"
        }
    );
    let ratio = worker_rate / ceiling_rate;
    println!(
        "  ratio                  {:>8.1} %   target ≥ 90 %  {}",
        ratio * 100.0,
        if ratio >= 0.9 { "MET" } else { "NOT MET" }
    );
    sandbox.shutdown().await;
    Ok(())
}
