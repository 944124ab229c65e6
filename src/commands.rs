//! The subcommands: each loads the config, calls into the crates, and sorts
//! failures into config errors (exit 2) and runtime failures (exit 1).

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, anyhow};
use prometheus_client::registry::Registry;
use push_dispatch_config::{Config, ConfigError};
use push_dispatch_proto::v1::{Notification, Platform, Priority, PushRequest, Target};
use push_dispatch_proto::{Encoding, encode_message};
use push_dispatch_subscriber::publish::publish_confirmed;
use push_dispatch_subscriber::{Clients, Names, provision as prov};
use push_dispatch_worker::health::{self, Readiness};
use push_dispatch_worker::metrics::Metrics;
use push_dispatch_worker::{RunError, build_apps};

/// Builds the apps' providers; a config problem is a config failure.
async fn apps_of(
    config: &Config,
    metrics: &Arc<Metrics>,
) -> Result<Vec<push_dispatch_worker::App>, Failure> {
    build_apps(config, metrics).await.map_err(|e| match e {
        RunError::Dispatcher { .. } => Failure::Config(e.into()),
        other => runtime(other),
    })
}
use tokio_util::sync::CancellationToken;

use crate::cli::{DlqCommand, PlatformArg, PriorityArg, SandboxArgs, SendArgs};

/// Why a command failed, which decides the exit code.
#[derive(Debug)]
pub enum Failure {
    /// Usage or config error: exit 2.
    Config(anyhow::Error),
    /// Runtime failure: exit 1.
    Runtime(anyhow::Error),
}

impl From<ConfigError> for Failure {
    fn from(e: ConfigError) -> Self {
        Failure::Config(e.into())
    }
}

fn runtime(e: impl Into<anyhow::Error>) -> Failure {
    Failure::Runtime(e.into())
}

fn load(path: &Path) -> Result<Config, Failure> {
    Ok(Config::load(path, std::env::vars())?)
}

/// `check-config`: every problem at once, then the effective config.
pub async fn check_config(path: &Path, online: bool) -> Result<(), Failure> {
    let config = Config::load_unvalidated(path, std::env::vars())?;
    let mut issues = config.validate();
    issues.extend(config.check_files());
    let yaml = config.to_redacted_yaml();
    print!("{yaml}");
    if !yaml.ends_with('\n') {
        println!();
    }
    if !issues.is_empty() {
        return Err(Failure::Config(ConfigError::Invalid(issues).into()));
    }
    // The files are there and look right: load them as `run` would.
    match push_dispatch_worker::check_credentials(&config) {
        Ok(checks) => {
            for check in checks {
                println!("# {check}");
            }
        }
        Err(issues) => return Err(Failure::Config(ConfigError::Invalid(issues).into())),
    }
    if online {
        check_providers(&config).await?;
    }
    println!("# config OK: {}", path.display());
    Ok(())
}

/// `check-config --online`: one probe push per app and platform.
async fn check_providers(config: &Config) -> Result<(), Failure> {
    // The probes' metrics are not served: a registry of their own.
    let metrics = Arc::new(Metrics::new(&mut Registry::default()));
    let apps = apps_of(config, &metrics).await?;
    let probes = push_dispatch_worker::preflight::probe_providers(&apps).await;
    for provider in apps.iter().flat_map(push_dispatch_worker::App::providers) {
        provider.dispatcher().close().await;
    }
    for p in &probes {
        println!("# {p}");
    }
    let failed: Vec<push_dispatch_config::ConfigIssue> = probes
        .iter()
        .filter(|p| !p.verdict.is_ok())
        .map(|p| push_dispatch_config::ConfigIssue {
            key: p.key.clone(),
            problem: p.detail(),
        })
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(Failure::Config(ConfigError::Invalid(failed).into()))
    }
}

/// `provision [--dry-run]`.
pub async fn provision(path: &Path, dry_run: bool) -> Result<(), Failure> {
    let config = load(path)?;
    let clients = Clients::connect(config.pubsub.emulator_host.as_deref())
        .await
        .map_err(runtime)?;
    let report = prov::provision(&clients, &config, dry_run)
        .await
        .map_err(runtime)?;
    print!("{report}");
    if report.is_up_to_date() {
        println!("everything up to date");
    }
    if config.pubsub.emulator_host.is_none() {
        println!();
        print!("{}", prov::iam_bindings_help(&config));
    }
    Ok(())
}

/// `run`: the worker, with the health server, until SIGTERM or SIGINT.
pub async fn run(path: &Path) -> Result<(), Failure> {
    let config = load(path)?;
    let file_issues = config.check_files();
    if !file_issues.is_empty() {
        return Err(Failure::Config(ConfigError::Invalid(file_issues).into()));
    }
    let telemetry = push_dispatch_telemetry::init(&config.telemetry, &config.project_id)
        .map_err(|e| Failure::Config(e.into()))?;
    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::new(&mut registry));
    let apps = apps_of(&config, &metrics).await?;
    let readiness = Arc::new(Readiness::default());
    let server_stop = CancellationToken::new();
    let (addr, server) = health::serve(
        config.server.listen,
        health::router(readiness.clone(), Arc::new(registry)),
        server_stop.clone(),
    )
    .await
    .map_err(|e| Failure::Config(e.into()))?;
    tracing::info!(%addr, "serving /healthz /readyz /metrics");

    // The health server answers from here on: `/healthz` during the Pub/Sub
    // connection and provisioning below (which retry for a while), `/readyz`
    // false until the streams are up.
    let shutdown = CancellationToken::new();
    let worker = async {
        let result = async {
            let clients = Clients::connect(config.pubsub.emulator_host.as_deref())
                .await
                .map_err(runtime)?;
            if config.pubsub.provision {
                let report = prov::provision(&clients, &config, false)
                    .await
                    .map_err(runtime)?;
                for r in &report.resources {
                    tracing::info!(resource = %r.name, change = ?r.change, "provisioned");
                }
            }
            push_dispatch_worker::run(
                &config,
                &clients,
                apps,
                metrics,
                readiness,
                shutdown.clone(),
            )
            .await
            .map_err(runtime)
        }
        .await;
        shutdown.cancel();
        server_stop.cancel();
        result
    };
    let signals = async {
        tokio::select! {
            () = wait_for_signal() => shutdown.cancel(),
            () = shutdown.cancelled() => {}
        }
    };
    let (result, (), served) = tokio::join!(worker, signals, server);
    if let Err(e) = served {
        tracing::error!(error = %e, "health server failed");
    }
    // The exporter's flush blocks its thread until the last batch is sent:
    // on a blocking thread, not one of the runtime's workers.
    if let Err(e) = tokio::task::spawn_blocking(move || telemetry.shutdown()).await {
        eprintln!("telemetry: span exporter shutdown failed: {e}");
    }
    result
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM received"),
                    _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only SIGINT stops the worker");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// `send`: builds a PushRequest from the flags (or `--json`) and publishes it.
pub async fn send(path: &Path, args: SendArgs) -> Result<(), Failure> {
    let config = load(path)?;
    let request = build_request(&args).map_err(Failure::Config)?;
    if !args.no_check {
        refuse_what_would_be_dead_lettered(&request, &config).map_err(Failure::Config)?;
    }
    let encoding = if args.binary {
        Encoding::Binary
    } else {
        Encoding::Json
    };
    let body = encode_message(&request, encoding).map_err(runtime)?;
    let clients = Clients::connect(config.pubsub.emulator_host.as_deref())
        .await
        .map_err(runtime)?;
    let topic = Names::from_config(&config).requests_topic;
    let publisher = clients
        .publisher(
            &topic,
            std::time::Duration::from_secs(15),
            std::time::Duration::ZERO,
        )
        .await
        .map_err(runtime)?;
    let attrs = HashMap::from([(
        push_dispatch_proto::attributes::CONTENT_TYPE.to_string(),
        encoding.content_type().to_string(),
    )]);
    let id = publish_confirmed(&publisher, &topic, body, attrs)
        .await
        .with_context(|| {
            format!("is the topic provisioned? try `push-dispatch provision` ({topic})")
        })
        .map_err(runtime)?;
    println!("{id}");
    Ok(())
}

/// Checks the request as the worker will, against this config's apps, so
/// that a typo is an error here rather than a dead letter later.
fn refuse_what_would_be_dead_lettered(
    request: &PushRequest,
    config: &Config,
) -> anyhow::Result<()> {
    let apps: Vec<push_dispatch_proto::AppPlatforms> = config
        .apps
        .iter()
        .map(|a| push_dispatch_proto::AppPlatforms {
            name: a.name.clone(),
            apns: a.apns.is_some(),
            fcm: a.fcm.is_some(),
        })
        .collect();
    let hint = "fix it, or pass --no-check to publish it anyway";
    let checked = push_dispatch_proto::check(request, &apps).map_err(|e| {
        anyhow!(
            "the worker would dead-letter this request (push_error={}): {e}; {hint}",
            e.code()
        )
    })?;
    if let Some(first) = checked.rejected.first() {
        return Err(anyhow!(
            "the worker would dead-letter {} of {} targets, first (push_error={}): {first}; {hint}",
            checked.rejected.len(),
            request.targets.len(),
            first.code()
        ));
    }
    Ok(())
}

fn build_request(args: &SendArgs) -> anyhow::Result<PushRequest> {
    let mut request = match &args.json {
        Some(file) => {
            let text = if file.as_os_str() == "-" {
                let mut s = String::new();
                std::io::stdin()
                    .read_to_string(&mut s)
                    .context("cannot read the request from standard input")?;
                s
            } else {
                std::fs::read_to_string(file)
                    .with_context(|| format!("cannot read --json {}", file.display()))?
            };
            serde_json::from_str::<PushRequest>(&text).with_context(|| {
                format!(
                    "--json {}: not a proto3 JSON push.v1.PushRequest",
                    file.display()
                )
            })?
        }
        None => PushRequest::default(),
    };
    if !args.tokens.is_empty() {
        let platform = match args.platform {
            Some(PlatformArg::Apns) => Platform::Apns,
            Some(PlatformArg::Fcm) => Platform::Fcm,
            None => return Err(anyhow!("--token needs --platform apns|fcm")),
        };
        request.targets.extend(args.tokens.iter().map(|t| Target {
            platform: platform as i32,
            token: t.clone(),
        }));
    }
    if request.targets.is_empty() {
        return Err(anyhow!(
            "no targets: give --platform apns|fcm --token TOKEN, or --json FILE with `targets`"
        ));
    }
    if args.title.is_some() || args.body.is_some() {
        let n = request
            .notification
            .get_or_insert_with(Notification::default);
        if let Some(t) = &args.title {
            n.title.clone_from(t);
        }
        if let Some(b) = &args.body {
            n.body.clone_from(b);
        }
    }
    for pair in &args.data {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| anyhow!("--data `{pair}`: write KEY=VALUE"))?;
        request.data.insert(k.to_string(), v.to_string());
    }
    if let Some(app) = &args.app {
        request.app.clone_from(app);
    }
    if let Some(r) = &args.recipient {
        request.recipient.clone_from(r);
    }
    if let Some(id) = &args.request_id {
        request.request_id.clone_from(id);
    }
    if let Some(ttl) = args.ttl {
        request.ttl = Some(push_dispatch_proto::pbjson_types::Duration {
            seconds: i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX),
            nanos: i32::try_from(ttl.subsec_nanos()).unwrap_or(0),
        });
    }
    if let Some(p) = args.priority {
        request.priority = match p {
            PriorityArg::High => Priority::High,
            PriorityArg::Normal => Priority::Normal,
        } as i32;
    }
    if let Some(key) = &args.collapse_key {
        request.collapse_key.clone_from(key);
    }
    if request.request_id.is_empty() {
        request.request_id = format!("cli-{:016x}", rand::random::<u64>());
    }
    Ok(request)
}

/// `sandbox`: the local APNs/FCM/OAuth stand-ins until SIGTERM or SIGINT.
pub async fn sandbox(args: SandboxArgs) -> Result<(), Failure> {
    use push_dispatch_sandbox::{Faults, Sandbox, SandboxConfig, devkeys};
    let token_uri = format!("http://{}/token", args.listen);
    let creds = devkeys::ensure(&args.dir, &token_uri, &args.fcm_project).map_err(runtime)?;
    let mut config = SandboxConfig::local(
        creds.apns_config(&args.topic),
        creds.fcm_config(&args.fcm_project),
    );
    config.listen = args.listen;
    config.tls_listen = args.tls_listen;
    let cert_file = args.dir.join("sandbox-cert.pem");
    if args.tls_listen.is_some() {
        config.cert_file = Some(cert_file.clone());
    }
    config.faults = Faults {
        failure_rate: args.failure_rate,
        retry_after_rate: args.retry_after_rate,
        latency: args.latency.unwrap_or_default(),
        goaway_every: args.goaway_every,
        retry_after_secs: args.retry_after_secs,
        ..Faults::default()
    };
    config
        .faults
        .validate()
        .map_err(|e| Failure::Config(e.into()))?;
    let sandbox = Sandbox::start(config).await.map_err(runtime)?;
    println!("sandbox listening on {} (h2c)", sandbox.base_url());
    if let Some(url) = sandbox.tls_base_url() {
        println!(
            "                 and {url} (TLS, CA file {})",
            cert_file.display()
        );
    }
    println!(
        "  APNs key  {} (key_id {}, team_id {}, topic {})",
        creds.apns_key_file.display(),
        creds.key_id,
        creds.team_id,
        args.topic
    );
    println!(
        "  FCM       project {}, service account {}",
        args.fcm_project,
        creds.service_account_file.display()
    );
    println!(
        "  inspect   {0}/sandbox/deliveries  {0}/sandbox/stats",
        sandbox.base_url()
    );
    match args.expire_provider_tokens_every {
        None => wait_for_signal().await,
        Some(every) => {
            let every = every.max(std::time::Duration::from_millis(100));
            println!("  faults    APNs provider tokens expire every {every:?}");
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            let signal = wait_for_signal();
            tokio::pin!(signal);
            loop {
                tokio::select! {
                    () = &mut signal => break,
                    _ = tick.tick() => sandbox.set_faults(Faults {
                        expire_provider_tokens: true,
                        ..sandbox.faults()
                    }),
                }
            }
        }
    }
    sandbox.shutdown().await;
    Ok(())
}

/// Attributes a replay removes: our error attributes, Pub/Sub's dead-letter
/// bookkeeping and reserved keys; `push_attempt` restarts at 1.
/// `dlq peek`, `dlq replay` and `dlq purge`: the work is in
/// `push_dispatch_subscriber::dlq`; this prints what it did.
pub async fn dlq(path: &Path, cmd: DlqCommand) -> Result<(), Failure> {
    use push_dispatch_subscriber::dlq::{RestSubscriber, describe};
    let config = load(path)?;
    let names = Names::from_config(&config);
    let rest = RestSubscriber::new(config.pubsub.emulator_host.as_deref()).map_err(runtime)?;
    let sub = &names.dead_letter_subscription;
    match cmd {
        DlqCommand::Peek { max } => {
            let messages = rest.pull_up_to(sub, max).await.map_err(runtime)?;
            for m in &messages {
                print!("{}", describe(m));
            }
            println!(
                "{} message(s) shown from {sub}; none removed",
                messages.len()
            );
            let ids: Vec<String> = messages.into_iter().map(|m| m.ack_id).collect();
            rest.release(sub, &ids).await.map_err(runtime)?;
            Ok(())
        }
        DlqCommand::Purge {
            max,
            push_error,
            all: _,
            dry_run,
        } => {
            let chosen = rest
                .pull_chosen(sub, max, push_error.as_deref())
                .await
                .map_err(runtime)?;
            let verb = if dry_run { "would delete" } else { "deleting" };
            for m in &chosen {
                print!("{verb} {}", describe(m));
            }
            if dry_run {
                let ids: Vec<String> = chosen.into_iter().map(|m| m.ack_id).collect();
                rest.release(sub, &ids).await.map_err(runtime)?;
                println!(
                    "{} message(s) would be deleted (dry run); none removed",
                    ids.len()
                );
            } else {
                let n = rest.purge(sub, chosen).await.map_err(runtime)?;
                println!("{n} message(s) deleted from {sub}");
            }
            Ok(())
        }
        DlqCommand::Replay {
            max,
            push_error,
            dry_run,
        } => {
            let chosen = rest
                .pull_chosen(sub, max, push_error.as_deref())
                .await
                .map_err(runtime)?;
            if dry_run {
                for m in &chosen {
                    print!("would replay {}", describe(m));
                }
                println!(
                    "{} message(s) would be replayed (dry run); none removed",
                    chosen.len()
                );
                let ids: Vec<String> = chosen.into_iter().map(|m| m.ack_id).collect();
                rest.release(sub, &ids).await.map_err(runtime)?;
                return Ok(());
            }
            let clients = Clients::connect(config.pubsub.emulator_host.as_deref())
                .await
                .map_err(runtime)?;
            let publisher = clients
                .publisher(
                    &names.requests_topic,
                    std::time::Duration::from_secs(30),
                    std::time::Duration::from_millis(5),
                )
                .await
                .map_err(runtime)?;
            let report = rest
                .replay(sub, chosen, &publisher, &names.requests_topic)
                .await
                .map_err(runtime)?;
            for (from, to) in &report.replayed {
                println!("replayed {from} as {to}");
            }
            for (from, e) in &report.failed {
                eprintln!("could not replay {from}: {e}");
            }
            println!(
                "{} message(s) replayed onto {}",
                report.replayed.len(),
                names.requests_topic
            );
            if report.failed.is_empty() {
                Ok(())
            } else {
                Err(runtime(anyhow!(
                    "{} message(s) could not be replayed and stay in {sub}",
                    report.failed.len()
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    fn send_args(args: &[&str]) -> SendArgs {
        let cli =
            Cli::try_parse_from([&["push-dispatch", "send"], args].concat()).expect("valid flags");
        match cli.command {
            Some(Command::Send(a)) => a,
            other => panic!("not send: {other:?}"),
        }
    }

    #[test]
    fn send_flags_fill_the_delivery_options() {
        let args = send_args(&[
            "--platform",
            "fcm",
            "--token",
            "t1",
            "--ttl",
            "90m",
            "--priority",
            "high",
            "--collapse-key",
            "score",
        ]);
        let r = build_request(&args).expect("request");
        assert_eq!(r.ttl.map(|d| d.seconds), Some(5400));
        assert_eq!(r.priority(), Priority::High);
        assert_eq!(r.collapse_key, "score");
        assert_eq!(r.targets.len(), 1);
    }
}
