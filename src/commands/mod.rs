//! The subcommands: each loads the config, calls into the crates, and sorts
//! failures into config errors (exit 2) and runtime failures (exit 1).
//! `run` is wiring only: the worker's assembly and lifecycle are in
//! `push_dispatch_worker`.

mod dlq;
mod send;
mod snapshot;

pub use dlq::dlq;
pub use send::send;
pub use snapshot::snapshot;

use std::path::Path;
use std::sync::Arc;

use prometheus_client::registry::Registry;
use push_dispatch_config::{Config, ConfigError};
use push_dispatch_subscriber::{Clients, provision as prov};
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

use crate::cli::SandboxArgs;

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
    for (i, app) in config.apps.iter().enumerate() {
        if let Some(a) = &app.apns {
            let how = if a.environment.is_some() {
                "set"
            } else {
                "from the endpoint host"
            };
            println!(
                "# apps[{i}].apns.environment: {} ({how}); feedback events name it",
                a.effective_environment().as_str()
            );
        }
    }
    if online {
        let providers = check_providers(&config).await;
        let pubsub = check_pubsub(&config).await;
        let mut failed = Vec::new();
        for result in [providers, pubsub] {
            match result {
                Ok(()) => {}
                Err(Checked::Issues(issues)) => failed.extend(issues),
                Err(Checked::Failed(f)) => return Err(f),
            }
        }
        if !failed.is_empty() {
            return Err(Failure::Config(ConfigError::Invalid(failed).into()));
        }
    }
    println!("# config OK: {}", path.display());
    Ok(())
}

/// Why an online check did not pass.
enum Checked {
    /// Problems to fix in the config or in IAM, each naming its key.
    Issues(Vec<push_dispatch_config::ConfigIssue>),
    /// The check itself could not run.
    Failed(Failure),
}

/// `check-config --online`: one probe push per app and platform.
async fn check_providers(config: &Config) -> Result<(), Checked> {
    // The probes' metrics are not served: a registry of their own.
    let metrics = Arc::new(Metrics::new(&mut Registry::default()));
    let apps = apps_of(config, &metrics).await.map_err(Checked::Failed)?;
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
        Err(Checked::Issues(failed))
    }
}

/// `check-config --online` on Pub/Sub: the worker's permissions
/// (testIamPermissions), and whether anyone reads the feedback topic.
async fn check_pubsub(config: &Config) -> Result<(), Checked> {
    use push_dispatch_subscriber::iam::{self, IamCheck};
    let clients = Clients::connect(config.pubsub.emulator_host.as_deref())
        .await
        .map_err(|e| Checked::Failed(runtime(e)))?;
    let names = push_dispatch_subscriber::Names::from_config(config);
    let mut issues = Vec::new();
    match iam::preflight(&clients, &names)
        .await
        .map_err(|e| Checked::Failed(runtime(e)))?
    {
        IamCheck::Skipped => println!(
            "# pubsub: IAM check skipped: this Pub/Sub (the emulator) does not implement IAM"
        ),
        IamCheck::Granted { resources } => println!(
            "# pubsub: every permission the worker needs is granted ({resources} resources: consume on the subscription, publish on three topics)"
        ),
        IamCheck::Missing(missing) => {
            for m in missing {
                let key = if m.resource == names.subscription {
                    "pubsub.subscription"
                } else if m.resource == names.dead_letter_topic {
                    "pubsub.dead_letter_topic"
                } else if m.resource == names.requests_topic {
                    "pubsub.requests_topic"
                } else {
                    "feedback.topic"
                };
                issues.push(push_dispatch_config::ConfigIssue {
                    key: key.to_string(),
                    problem: m.to_string(),
                });
            }
        }
    }
    match iam::feedback_readers(&clients, &names.feedback_topic).await {
        Ok(Some(readers)) if readers.drops_events() => println!(
            "# WARNING feedback.topic: {} has no subscription and no message retention: Pub/Sub confirms TokenInvalidated events and drops them. Subscribe the routing service, or set feedback.retention and run provision",
            names.feedback_topic
        ),
        Ok(Some(readers)) => println!(
            "# feedback.topic: {} subscription(s), retention {}",
            readers.subscriptions,
            readers
                .retention
                .map_or("none".to_string(), |r| humantime::format_duration(r)
                    .to_string())
        ),
        Ok(None) => println!(
            "# feedback.topic: its subscriptions are not visible (no pubsub.topics.get; roles/pubsub.viewer grants it)"
        ),
        Err(e) if push_dispatch_subscriber::is_not_found(&e) => println!(
            "# WARNING feedback.topic: {} does not exist; run `push-dispatch provision`",
            names.feedback_topic
        ),
        Err(e) => return Err(Checked::Failed(runtime(e))),
    }
    if issues.is_empty() {
        Ok(())
    } else {
        Err(Checked::Issues(issues))
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
        print!("{}", push_dispatch_subscriber::iam::bindings_help(&config));
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
    let service = push_dispatch_telemetry::error_reporting::ServiceContext {
        service: "push-dispatch".to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
    };
    let telemetry = push_dispatch_telemetry::init(&config.telemetry, &config.project_id, &service)
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
    config.blackhole = args.blackhole;
    config.blackhole_streams = args.blackhole_streams;
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
        oauth_hang: args.oauth_hang,
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
