//! `push-dispatch-bench`: drives the real dispatch path — payload mapping,
//! provider token (ES256 JWT or OAuth bearer), the HTTP/2 client,
//! classification and the worker's metrics — against any HTTP/2 endpoint,
//! without Pub/Sub, and prints what a user would compare: pushes/s,
//! latency percentiles, CPU per push, peak RSS and errors, next to the
//! targets and the peers measured on these machines (NOTES).
//!
//! ```text
//! push-dispatch-bench --platform apns --endpoint https://127.0.0.1:9444 \
//!     --ca-file .bench/sandbox-cert.pem --key-file .bench/AuthKey_SANDBOXK01.p8 \
//!     --key-id SANDBOXK01 --team-id SANDBOXT01 --requests 200000 --concurrency 512
//! ```
//!
//! Without a key or credentials it makes throwaway ones (accepted by stand-ins
//! that do not verify them). `make bench` runs it against the sandbox over TLS.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use push_dispatch_dispatch::apns::credentials::ProviderToken;
use push_dispatch_dispatch::apns::{ApnsClient, ApnsSettings};
use push_dispatch_dispatch::fcm::credentials::{BearerCache, TokenSettings};
use push_dispatch_dispatch::fcm::{FcmClient, FcmSettings};
use push_dispatch_dispatch::{Dispatcher, Outcome, Push};
use push_dispatch_proto::v1::{Notification, PushRequest};
use push_dispatch_worker::metrics::Metrics;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Platform {
    Apns,
    Fcm,
}

/// Benchmark the dispatch path against an HTTP/2 endpoint.
#[derive(Debug, Parser)]
#[command(name = "push-dispatch-bench", version)]
struct Args {
    /// Which client.
    #[arg(long, value_enum)]
    platform: Platform,
    /// The provider endpoint (https:// for TLS, http:// for h2c).
    #[arg(long)]
    endpoint: String,
    /// Extra root CA for TLS.
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// APNs `.p8` key (else a throwaway one).
    #[arg(long)]
    key_file: Option<PathBuf>,
    /// APNs key id.
    #[arg(long, default_value = "SANDBOXK01")]
    key_id: String,
    /// APNs team id.
    #[arg(long, default_value = "SANDBOXT01")]
    team_id: String,
    /// APNs topic.
    #[arg(long, default_value = "com.example.app")]
    topic: String,
    /// FCM service account (else a throwaway one whose token_uri is ENDPOINT/token).
    #[arg(long)]
    credentials_file: Option<PathBuf>,
    /// FCM project.
    #[arg(long, default_value = "example-firebase-project")]
    project: String,
    /// Pushes to send.
    #[arg(long, default_value_t = 100_000)]
    requests: usize,
    /// Pushes in flight.
    #[arg(long, default_value_t = 512)]
    concurrency: usize,
    /// HTTP/2 connections.
    #[arg(long, default_value_t = 2)]
    connections: usize,
    /// Extra custom data in each push, in bytes (payload size sweep).
    #[arg(long, default_value_t = 0)]
    payload_bytes: usize,
    /// Measured runs (after one warm-up); figures are the median run's, by
    /// pushes/s, with the spread of all runs beside them.
    #[arg(long, default_value_t = 3)]
    runs: usize,
}

/// The figures of one measured run.
#[derive(Debug, Clone)]
struct Run {
    rate: f64,
    cpu_per_push_us: f64,
    p50: f64,
    p99: f64,
    p999: f64,
    errors: usize,
}

/// CPU seconds (user + system) of this process.
fn cpu_seconds() -> f64 {
    push_dispatch_bench::cpu_seconds("/proc/self/stat")
}

/// Peak resident set size in MiB, from /proc/self/status.
fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<f64>().ok())
            })
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i]) / 1000.0
}

async fn dispatcher(args: &Args, dir: &std::path::Path) -> anyhow::Result<Arc<dyn Dispatcher>> {
    let timeout = Duration::from_secs(10);
    let creds = || {
        push_dispatch_sandbox::devkeys::ensure(
            dir,
            &format!("{}/token", args.endpoint.trim_end_matches('/')),
            &args.project,
        )
        .context("cannot make throwaway credentials")
    };
    Ok(match args.platform {
        Platform::Apns => {
            let key_file = match &args.key_file {
                Some(k) => k.clone(),
                None => creds()?.apns_key_file,
            };
            let credentials = ProviderToken::from_file(&key_file, &args.key_id, &args.team_id)?;
            Arc::new(ApnsClient::new(
                ApnsSettings {
                    endpoint: args.endpoint.trim_end_matches('/').to_string(),
                    key_file,
                    key_id: args.key_id.clone(),
                    team_id: args.team_id.clone(),
                    topic: args.topic.clone(),
                    connections: args.connections,
                    ca_file: args.ca_file.clone(),
                    request_timeout: timeout,
                },
                Arc::new(credentials),
            )?)
        }
        Platform::Fcm => {
            let credentials_file = match &args.credentials_file {
                Some(c) => c.clone(),
                None => creds()?.service_account_file,
            };
            let credentials = BearerCache::new(
                Some(&credentials_file),
                &TokenSettings::new(args.ca_file.clone()),
            )
            .await?;
            Arc::new(FcmClient::new(
                FcmSettings {
                    endpoint: args.endpoint.trim_end_matches('/').to_string(),
                    project_id: args.project.clone(),
                    credentials_file: Some(credentials_file),
                    ca_file: args.ca_file.clone(),
                    connections: args.connections,
                    request_timeout: timeout,
                    quota_wait: push_dispatch_dispatch::fcm::DEFAULT_QUOTA_WAIT,
                },
                Arc::new(credentials),
            )?)
        }
    })
}

/// The device token of push `i`: 64 hex digits for APNs, a short name for
/// FCM. Built without `format!` padding, which cost the harness about
/// 4,000 instructions per push under callgrind, billed to the client.
fn token(platform: Platform, i: usize) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut hex = [b'0'; 16];
    for (k, d) in hex.iter_mut().rev().enumerate() {
        *d = DIGITS[(i >> (4 * k)) & 15];
    }
    let hex = std::str::from_utf8(&hex).unwrap_or_default();
    let prefix = match platform {
        Platform::Apns => "a10000000000000000000000000000000000000000000000",
        Platform::Fcm => "bench-",
    };
    let mut token = String::with_capacity(prefix.len() + hex.len());
    token.push_str(prefix);
    token.push_str(hex);
    token
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.requests == 0 || args.concurrency == 0 || args.runs == 0 {
        bail!("--requests, --concurrency and --runs must be above 0");
    }
    let dir = tempfile::tempdir()?;
    let dispatcher = dispatcher(&args, dir.path()).await?;
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Arc::new(Metrics::new(&mut registry));
    let mut request = PushRequest {
        request_id: "bench".into(),
        notification: Some(Notification {
            title: "Benchmark".into(),
            body: "A push of typical size for a one-time code or a chat message.".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    if args.payload_bytes > 0 {
        request
            .data
            .insert("blob".into(), "x".repeat(args.payload_bytes));
    }
    let request = Arc::new(request);
    let label = match args.platform {
        Platform::Apns => "apns",
        Platform::Fcm => "fcm",
    };

    // Warm up: connections, provider token, OAuth token.
    for i in 0..args.connections.max(1) * 2 {
        let outcome = dispatcher
            .send(Push {
                request: &request,
                token: &token(args.platform, usize::MAX - i),
                expires_at: None,
                give_up: None,
            })
            .await;
        if outcome != Outcome::Delivered {
            bail!(
                "warm-up push was not delivered: {outcome:?}; check the endpoint and credentials"
            );
        }
    }

    let mut runs = Vec::with_capacity(args.runs);
    for _ in 0..args.runs {
        runs.push(measure(&args, &dispatcher, &request, &metrics, label).await?);
    }
    let mut by_rate = runs.clone();
    by_rate.sort_by(|a, b| a.rate.total_cmp(&b.rate));
    let median = by_rate[by_rate.len() / 2].clone();
    let errors: usize = runs.iter().map(|r| r.errors).sum();
    let spread = |f: fn(&Run) -> f64| {
        let lo = runs.iter().map(f).fold(f64::INFINITY, f64::min);
        let hi = runs.iter().map(f).fold(0.0, f64::max);
        (lo, hi)
    };
    let (rate_lo, rate_hi) = spread(|r| r.rate);
    let (cpu_lo, cpu_hi) = spread(|r| r.cpu_per_push_us);
    let Run {
        rate,
        cpu_per_push_us,
        p50,
        p99,
        p999,
        ..
    } = median;
    let (target_rate, peer) = match args.platform {
        Platform::Apns => (60_000.0, "node-apn ≈ 30k/s, apns2 ≈ 14k/s, Sygnal ≈ 2.3k/s"),
        Platform::Fcm => (40_000.0, "firebase-admin ≈ 19k/s, Sygnal ≈ 0.85k/s"),
    };
    let transport = if args.endpoint.starts_with("https://") {
        "TLS"
    } else {
        "h2c"
    };
    println!(
        "dispatch benchmark: {label} over {transport} ({}), {} pushes, concurrency {}, {} connections, +{} payload bytes",
        args.endpoint, args.requests, args.concurrency, args.connections, args.payload_bytes
    );
    println!(
        "  pushes/s              {rate:>10.0}   target ≥ {target_rate:.0} ({peer})  {}",
        if rate >= target_rate {
            "MET"
        } else {
            "NOT MET"
        }
    );
    println!("  latency ms p50/p99/p999 {p50:.2} / {p99:.2} / {p999:.2}");
    println!(
        "  CPU per push          {cpu_per_push_us:>10.1} µs  target ≤ 12 µs (node-apn ≈ 36 µs)  {}",
        if cpu_per_push_us <= 12.0 {
            "MET"
        } else {
            "NOT MET"
        }
    );
    println!("  CPU s per 10k pushes  {:>10.3}", cpu_per_push_us / 100.0);
    println!(
        "  {} runs, median shown; range {rate_lo:.0}–{rate_hi:.0} pushes/s, {cpu_lo:.1}–{cpu_hi:.1} µs per push",
        runs.len()
    );
    println!(
        "  peak RSS              {:>10.1} MiB (target ≤ 64 MiB with 1,000 in flight)",
        peak_rss_mib()
    );
    println!("  errors                {errors:>10}");
    if errors > 0 {
        bail!("{errors} pushes were not delivered");
    }
    Ok(())
}

/// One measured run of `args.requests` pushes at `args.concurrency`.
async fn measure(
    args: &Args,
    dispatcher: &Arc<dyn Dispatcher>,
    request: &Arc<PushRequest>,
    metrics: &Arc<Metrics>,
    label: &'static str,
) -> anyhow::Result<Run> {
    let next = Arc::new(AtomicUsize::new(0));
    let cpu0 = cpu_seconds();
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..args.concurrency {
        let (dispatcher, request, metrics, next) = (
            dispatcher.clone(),
            request.clone(),
            metrics.clone(),
            next.clone(),
        );
        let (n, platform) = (args.requests, args.platform);
        // As the worker does: metric handles resolved once per app and platform.
        let handles = metrics.send_handles(label, "bench");
        tasks.spawn(async move {
            let mut latencies = Vec::with_capacity(n / 64 + 1);
            let mut errors = 0usize;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let t = token(platform, i);
                let t0 = Instant::now();
                let outcome = dispatcher
                    .send(Push {
                        request: &request,
                        token: &t,
                        expires_at: None,
                        give_up: None,
                    })
                    .await;
                let elapsed = t0.elapsed();
                handles.send_duration.observe(elapsed.as_secs_f64());
                handles.count(push_dispatch_worker::target::outcome_label(&outcome));
                if outcome != Outcome::Delivered {
                    errors += 1;
                }
                latencies.push(u32::try_from(elapsed.as_micros()).unwrap_or(u32::MAX));
            }
            (latencies, errors)
        });
    }
    let mut latencies = Vec::with_capacity(args.requests);
    let mut errors = 0;
    while let Some(done) = tasks.join_next().await {
        let (l, e) = done?;
        latencies.extend(l);
        errors += e;
    }
    let wall = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    latencies.sort_unstable();
    Ok(Run {
        rate: args.requests as f64 / wall,
        cpu_per_push_us: cpu / args.requests as f64 * 1e6,
        p50: percentile(&latencies, 0.50),
        p99: percentile(&latencies, 0.99),
        p999: percentile(&latencies, 0.999),
        errors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_distinct_and_apns_ones_are_64_hex_digits() {
        let a = token(Platform::Apns, 0x2a);
        assert_eq!(a.len(), 64);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert!(a.ends_with("000000000000002a"));
        assert_ne!(token(Platform::Apns, usize::MAX), token(Platform::Apns, 0));
        assert_eq!(token(Platform::Fcm, 255), "bench-00000000000000ff");
    }
}
