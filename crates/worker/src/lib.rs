//! The push-dispatch worker: wires the streams of `crates/subscriber` to the
//! policy of [`pipeline`], and owns the process lifecycle of SPEC §5.7.
//!
//! [`run`] provisions nothing (the binary does that first); it checks that
//! the subscription exists, opens the streams, marks the process ready, and on
//! shutdown: readiness goes false, pulling stops, messages not yet started
//! are nacked at once, in-flight work drains within `shutdown_grace`
//! (publishes confirmed before acks), and whatever is left is nacked.

pub mod circuit;
pub mod guard;
pub mod health;
pub mod metrics;
pub mod pipeline;
pub mod probe;
pub mod rate_limit;

use std::sync::Arc;
use std::time::Duration;

use push_dispatch_config::{Config, FeedbackEncoding};
use push_dispatch_dispatch::apns::token::ProviderTokens;
use push_dispatch_dispatch::apns::{ApnsClient, ApnsSettings};
use push_dispatch_dispatch::fcm::{FcmClient, FcmSettings};
use push_dispatch_dispatch::stub::StubDispatcher;
use push_dispatch_dispatch::{AppDispatchers, Dispatcher};
use push_dispatch_feedback::FeedbackPublisher;
use push_dispatch_proto::Encoding;
use push_dispatch_proto::v1::Platform;
use push_dispatch_subscriber::stream::{StreamExit, StreamSettings, StreamStates, spawn_streams};
use push_dispatch_subscriber::{Clients, ConnectError, Names, is_not_found};
use tokio_util::sync::CancellationToken;

use crate::health::Readiness;
use crate::metrics::Metrics;
use crate::pipeline::{AppRuntime, Outputs, Worker, WorkerSettings};

/// How long one publish of ours (dead letter, feedback, republish) may keep
/// retrying before the message is nacked instead.
const PUBLISH_RETRY_LIMIT: Duration = Duration::from_secs(30);
/// Batching delay of our publishers: small, since a message's ack waits on it.
const PUBLISH_BATCH_DELAY: Duration = Duration::from_millis(5);
/// After the grace period, how long we still wait for tasks to hand back
/// their messages before exiting anyway.
const HARD_STOP_SLACK: Duration = Duration::from_secs(5);

/// The worker could not start or stopped on an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A dispatcher could not be built from the config.
    #[error("config key `{key}`: {problem}")]
    Dispatcher {
        /// The config key at fault.
        key: String,
        /// What is wrong and how to fix it.
        problem: String,
    },
    /// A Pub/Sub client could not be built.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The dispatch subscription does not exist.
    #[error(
        "subscription {0} does not exist; run `push-dispatch provision` or set pubsub.provision: true"
    )]
    NoSubscription(String),
    /// Pub/Sub could not be reached.
    #[error(
        "cannot read subscription {name}: {source}; is Pub/Sub (or PUBSUB_EMULATOR_HOST) reachable?"
    )]
    Pubsub {
        /// The subscription's name.
        name: String,
        /// The SDK's error.
        #[source]
        source: push_dispatch_subscriber::pubsub::Error,
    },
    /// A stream ended, or its task panicked, without a shutdown request.
    #[error(
        "a streaming pull ended without a shutdown request; the worker drained and stops so that it is restarted (see the log above for why)"
    )]
    StreamEnded,
    /// A stream failed permanently (e.g. the subscription was deleted).
    #[error("streaming pull {stream} failed: {source}")]
    StreamFailed {
        /// The stream's index.
        stream: usize,
        /// The SDK's error.
        #[source]
        source: push_dispatch_subscriber::pubsub::Error,
    },
}

/// Endpoints with this prefix select the in-process stub (e.g. `stub:latency=50ms`).
const STUB_SCHEME: &str = "stub:";

/// How often gauges that only traffic updates are brought up to date.
const GAUGE_REFRESH: Duration = Duration::from_secs(5);

/// `production` for Apple's production endpoint, `sandbox` otherwise.
pub fn apns_environment(endpoint: &str) -> &'static str {
    let host = endpoint
        .split("://")
        .nth(1)
        .unwrap_or(endpoint)
        .split(['/', ':'])
        .next()
        .unwrap_or("");
    if host == "api.push.apple.com" {
        "production"
    } else {
        "sandbox"
    }
}

fn stub_for(
    key: &str,
    endpoint: &str,
    platform: Platform,
) -> Option<Result<Arc<dyn Dispatcher>, RunError>> {
    let options = endpoint.strip_prefix(STUB_SCHEME)?;
    let mut stub = StubDispatcher::new(platform);
    for option in options.split(',').filter(|o| !o.is_empty()) {
        match option.split_once('=') {
            Some(("latency", value)) => match humantime::parse_duration(value) {
                Ok(latency) => stub = stub.with_latency(latency),
                Err(e) => {
                    return Some(Err(RunError::Dispatcher {
                        key: key.to_string(),
                        problem: format!(
                            "`{endpoint}`: latency `{value}` is not a duration ({e}); write e.g. stub:latency=200ms"
                        ),
                    }));
                }
            },
            _ => {
                return Some(Err(RunError::Dispatcher {
                    key: key.to_string(),
                    problem: format!(
                        "`{endpoint}`: unknown stub option `{option}`; the only option is latency=DURATION"
                    ),
                }));
            }
        }
    }
    Some(Ok(Arc::new(stub)))
}

/// What [`check_credentials`] verified of one app's platform.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CredentialCheck {
    /// The APNs key loaded and signed an ES256 provider token.
    ApnsKeySigns {
        /// `apps[i].apns`.
        key: String,
        /// The key id the token carries.
        key_id: String,
    },
    /// The FCM service-account file loaded (JSON and private key).
    ServiceAccountLoads {
        /// `apps[i].fcm`.
        key: String,
    },
    /// FCM uses Application Default Credentials, resolved only at run time
    /// (they need the metadata server or a gcloud login).
    ApplicationDefault {
        /// `apps[i].fcm`.
        key: String,
    },
    /// An in-process `stub:` endpoint: no credentials are used.
    Stub {
        /// `apps[i].apns` or `apps[i].fcm`.
        key: String,
    },
}

impl std::fmt::Display for CredentialCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CredentialCheck::ApnsKeySigns { key, key_id } => {
                write!(
                    f,
                    "{key}: the key signs an ES256 provider token (kid {key_id})"
                )
            }
            CredentialCheck::ServiceAccountLoads { key } => {
                write!(f, "{key}: the service-account key loads")
            }
            CredentialCheck::ApplicationDefault { key } => write!(
                f,
                "{key}: Application Default Credentials, resolved at run time (not checked here)"
            ),
            CredentialCheck::Stub { key } => write!(f, "{key}: stub endpoint, no credentials"),
        }
    }
}

/// Loads every app's credentials as `run` would, without a network call:
/// each APNs key signs a provider token, each FCM service-account file is
/// parsed with its private key. Returns what was verified, or the problems,
/// each naming its config key. Key material never appears in either.
pub fn check_credentials(
    config: &Config,
) -> Result<Vec<CredentialCheck>, Vec<push_dispatch_config::ConfigIssue>> {
    use push_dispatch_config::ConfigIssue;
    use push_dispatch_dispatch::apns::token::ProviderToken;
    use push_dispatch_dispatch::fcm::auth::BearerCache;
    let mut checks = Vec::new();
    let mut issues = Vec::new();
    for (i, app) in config.apps.iter().enumerate() {
        if let Some(a) = &app.apns {
            let key = format!("apps[{i}].apns");
            if a.endpoint.starts_with(STUB_SCHEME) {
                checks.push(CredentialCheck::Stub { key });
            } else {
                match ProviderToken::from_file(&a.key_file, &a.key_id, &a.team_id) {
                    Ok(_) => checks.push(CredentialCheck::ApnsKeySigns {
                        key,
                        key_id: a.key_id.clone(),
                    }),
                    Err(e) => issues.push(ConfigIssue {
                        key: format!("{key}.key_file"),
                        problem: format!(
                            "{e}; use the AuthKey_XXXXXXXXXX.p8 file downloaded from Apple"
                        ),
                    }),
                }
            }
        }
        if let Some(f) = &app.fcm {
            let key = format!("apps[{i}].fcm");
            if f.endpoint.starts_with(STUB_SCHEME) {
                checks.push(CredentialCheck::Stub { key });
            } else if let Some(path) = &f.credentials_file {
                match BearerCache::check_file(path) {
                    Ok(()) => checks.push(CredentialCheck::ServiceAccountLoads { key }),
                    Err(e) => issues.push(ConfigIssue {
                        key: format!("{key}.credentials_file"),
                        problem: format!("{e}; download a service-account key from the Firebase console, or set null for Application Default Credentials"),
                    }),
                }
            } else {
                checks.push(CredentialCheck::ApplicationDefault { key });
            }
        }
    }
    if issues.is_empty() {
        Ok(checks)
    } else {
        Err(issues)
    }
}

/// Builds each app's dispatchers from the config, in config order: the HTTP/2
/// APNs and FCM clients, or the in-process stub for `stub:` endpoints.
pub async fn build_apps(config: &Config) -> Result<Vec<AppRuntime>, RunError> {
    let timeout = config.dispatch.request_timeout;
    let mut apps = Vec::with_capacity(config.apps.len());
    // One provider token per key (SPEC §6), shared by the apps of one team.
    let mut tokens = ProviderTokens::default();
    for (i, app) in config.apps.iter().enumerate() {
        let apns: Option<Arc<dyn Dispatcher>> = match &app.apns {
            None => None,
            Some(a) => {
                let key = format!("apps[{i}].apns");
                Some(
                    match stub_for(&format!("{key}.endpoint"), &a.endpoint, Platform::Apns) {
                        Some(stub) => stub?,
                        None => {
                            let problem = |e: &dyn std::fmt::Display| RunError::Dispatcher {
                                key: key.clone(),
                                problem: e.to_string(),
                            };
                            let token = tokens
                                .get(&a.key_file, &a.key_id, &a.team_id)
                                .map_err(|e| problem(&e))?;
                            Arc::new(
                                ApnsClient::with_token(
                                    ApnsSettings::from_config(a, timeout),
                                    token,
                                )
                                .map_err(|e| problem(&e))?,
                            )
                        }
                    },
                )
            }
        };
        let fcm: Option<Arc<dyn Dispatcher>> = match &app.fcm {
            None => None,
            Some(f) => {
                let key = format!("apps[{i}].fcm");
                Some(
                    match stub_for(&format!("{key}.endpoint"), &f.endpoint, Platform::Fcm) {
                        Some(stub) => stub?,
                        None => Arc::new(
                            FcmClient::new(FcmSettings::from_config(f, timeout))
                                .await
                                .map_err(|e| RunError::Dispatcher {
                                    key: key.clone(),
                                    problem: e.to_string(),
                                })?,
                        ),
                    },
                )
            }
        };
        apps.push(AppRuntime {
            dispatchers: AppDispatchers {
                name: app.name.clone(),
                apns,
                fcm,
            },
            apns_topic: app
                .apns
                .as_ref()
                .map(|a| a.topic.clone())
                .unwrap_or_default(),
            apns_environment: app
                .apns
                .as_ref()
                .map(|a| apns_environment(&a.endpoint).to_string())
                .unwrap_or_default(),
            fcm_project: app
                .fcm
                .as_ref()
                .map(|f| f.project_id.clone())
                .unwrap_or_default(),
            apns_rate_limit: app.apns.as_ref().and_then(|a| a.rate_limit),
            fcm_rate_limit: app.fcm.as_ref().and_then(|f| f.rate_limit),
        });
    }
    Ok(apps)
}

/// Runs the worker until `shutdown` fires (or a stream fails), then drains.
pub async fn run(
    config: &Config,
    clients: &Clients,
    apps: Vec<AppRuntime>,
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let names = Names::from_config(config);
    match clients
        .subscriptions
        .get_subscription()
        .set_subscription(&names.subscription)
        .send()
        .await
    {
        Ok(_) => {}
        Err(e) if is_not_found(&e) => return Err(RunError::NoSubscription(names.subscription)),
        Err(source) => {
            return Err(RunError::Pubsub {
                name: names.subscription,
                source,
            });
        }
    }

    let publisher = |topic: String| async move {
        clients
            .publisher(&topic, PUBLISH_RETRY_LIMIT, PUBLISH_BATCH_DELAY)
            .await
            .map(|p| (p, topic))
    };
    let dead_letter = publisher(names.dead_letter_topic.clone()).await?;
    let requests = publisher(names.requests_topic.clone()).await?;
    let (feedback, feedback_topic) = publisher(names.feedback_topic.clone()).await?;
    let encoding = match config.feedback.encoding {
        FeedbackEncoding::Json => Encoding::Json,
        FeedbackEncoding::Binary => Encoding::Binary,
    };
    let outputs = Outputs {
        dead_letter,
        requests,
        feedback: FeedbackPublisher::new(feedback, feedback_topic, encoding),
    };

    let draining = CancellationToken::new();
    let hard_stop = CancellationToken::new();
    let worker = Arc::new(Worker::new(
        apps,
        outputs,
        WorkerSettings {
            max_delivery_attempts: i32::try_from(config.pubsub.max_delivery_attempts)
                .unwrap_or(i32::MAX),
            max_in_process_wait: config.dispatch.max_in_process_wait,
            max_republish: config.dispatch.max_republish,
            concurrency: config.dispatch.concurrency as usize,
            circuit: config.dispatch.circuit.clone(),
            guard: config.feedback.guard.clone(),
        },
        metrics.clone(),
        draining.clone(),
        hard_stop.clone(),
    ));

    let settings = StreamSettings {
        subscription: names.subscription.clone(),
        streams: config.pubsub.streams,
        max_outstanding_messages: config.pubsub.max_outstanding_messages,
        max_outstanding_bytes: config.pubsub.max_outstanding_bytes.as_u64(),
        ack_deadline: config.pubsub.ack_deadline,
    };
    let states = Arc::new(StreamStates::default());
    let handler = worker.clone();
    let mut streams = spawn_streams(
        &clients.subscriber,
        &settings,
        draining.clone(),
        states.clone(),
        move |received| {
            let worker = handler.clone();
            async move { worker.handle(received).await }
        },
    );
    metrics
        .streams_running
        .set(i64::from(config.pubsub.streams));
    metrics
        .max_outstanding
        .set(i64::from(config.pubsub.max_outstanding_messages));
    for stream in 0..config.pubsub.streams.max(1) {
        metrics
            .stream_up
            .get_or_create(&metrics::StreamLabels {
                stream: stream.to_string(),
            })
            .set(1);
    }
    // Gauges that only traffic would update otherwise (guard release,
    // circuit past open_for), refreshed until the drain ends.
    let refresher_stop = CancellationToken::new();
    let refresher = {
        let (worker, stop) = (worker.clone(), refresher_stop.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(GAUGE_REFRESH);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => worker.refresh_gauges(),
                    () = stop.cancelled() => break,
                }
            }
        })
    };
    readiness.set_streams_up(true);
    tracing::info!(
        subscription = %names.subscription,
        streams = config.pubsub.streams,
        "pulling"
    );

    // Run until asked to stop, or until a stream ends by itself.
    let mut failure = None;
    tokio::select! {
        () = shutdown.cancelled() => {
            tracing::info!("shutdown requested; draining");
        }
        Some(ended) = streams.join_next() => {
            // Nobody asked it to stop: whatever ended it, the worker is
            // degraded, drains, and exits non-zero so that it is restarted.
            failure = Some(stream_failure(&metrics, ended).unwrap_or_else(|| {
                RunError::StreamEnded
            }));
            metrics.streams_running.dec();
        }
    }
    readiness.set_draining();
    draining.cancel();

    // Drain within the grace period; then nack whatever is still running.
    let grace = tokio::time::sleep(config.shutdown_grace);
    tokio::pin!(grace);
    let mut hard_deadline = None;
    loop {
        tokio::select! {
            ended = streams.join_next() => match ended {
                Some(ended) => {
                    metrics.streams_running.dec();
                    if failure.is_none() {
                        failure = stream_failure(&metrics, ended);
                    }
                }
                None => break,
            },
            () = &mut grace, if hard_deadline.is_none() => {
                tracing::warn!(grace = ?config.shutdown_grace, "shutdown grace elapsed; nacking in-flight messages");
                hard_stop.cancel();
                hard_deadline = Some(Box::pin(tokio::time::sleep(HARD_STOP_SLACK)));
            }
            () = async { if let Some(d) = hard_deadline.as_mut() { d.await } else { std::future::pending().await } } => {
                tracing::error!("streams did not close after the grace period; exiting anyway");
                streams.abort_all();
                while streams.join_next().await.is_some() {}
                break;
            }
        }
    }
    readiness.set_streams_up(false);
    refresher_stop.cancel();
    if let Err(e) = refresher.await {
        tracing::error!(error = %e, "gauge refresher panicked");
    }
    worker.close_dispatchers().await;
    tracing::info!(received = states.received(), "worker stopped");
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn stream_failure(
    metrics: &Metrics,
    ended: Result<(usize, StreamExit), tokio::task::JoinError>,
) -> Option<RunError> {
    if let Ok((stream, _)) = &ended {
        metrics
            .stream_up
            .get_or_create(&metrics::StreamLabels {
                stream: stream.to_string(),
            })
            .set(0);
    }
    match ended {
        Ok((stream, StreamExit::Failed(source))) => Some(RunError::StreamFailed { stream, source }),
        Ok((_, StreamExit::Closed)) => None,
        Err(e) => {
            tracing::error!(error = %e, "stream task panicked");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_comes_from_the_endpoint() {
        assert_eq!(apns_environment("https://api.push.apple.com"), "production");
        assert_eq!(
            apns_environment("https://api.push.apple.com:443/"),
            "production"
        );
        assert_eq!(
            apns_environment("https://api.sandbox.push.apple.com"),
            "sandbox"
        );
        assert_eq!(apns_environment("http://127.0.0.1:8443"), "sandbox");
    }

    #[tokio::test]
    async fn a_bad_credentials_file_is_refused_with_the_key_named() {
        let mut config = Config::default();
        config.apps.push(push_dispatch_config::AppConfig {
            name: "main".into(),
            apns: None,
            fcm: Some(push_dispatch_config::FcmConfig {
                endpoint: "https://fcm.googleapis.com".into(),
                project_id: "p".into(),
                credentials_file: Some("/definitely/missing.json".into()),
                connections: 2,
                ca_file: None,
                rate_limit: None,
            }),
        });
        let err = build_apps(&config).await.expect_err("missing file");
        assert!(err.to_string().contains("apps[0].fcm"), "{err}");
        config.apps[0].fcm.as_mut().expect("fcm").endpoint = "stub:latency=1ms".into();
        let apps = build_apps(&config).await.expect("stub");
        assert!(apps[0].dispatchers.fcm.is_some() && apps[0].dispatchers.apns.is_none());
    }
}
