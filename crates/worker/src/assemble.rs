//! Assembly: from the config to the parts the worker is made of: each app's
//! providers (the HTTP/2 APNs and FCM clients, or the in-process stub for
//! `stub:` endpoints, with their circuits, guards, rate limits and metric
//! handles) and the Pub/Sub outbox (publishers on the dead-letter, requests
//! and feedback topics, and the results topic when set).

use std::sync::Arc;
use std::time::Duration;

use push_dispatch_config::{Config, FeedbackEncoding};
use push_dispatch_dispatch::Dispatcher;
use push_dispatch_dispatch::apns::credentials::ProviderTokens;
use push_dispatch_dispatch::apns::{ApnsClient, ApnsSettings};
use push_dispatch_dispatch::fcm::credentials::BearerCache;
use push_dispatch_dispatch::fcm::{FcmClient, FcmSettings};
use push_dispatch_dispatch::stub::StubDispatcher;
use push_dispatch_feedback::{FeedbackPublisher, Sender};
use push_dispatch_proto::Encoding;
use push_dispatch_proto::v1::Platform;
use push_dispatch_subscriber::{Clients, Names};

use crate::RunError;
use crate::metrics::Metrics;
use crate::outbox::{PubsubOutbox, ResultsTopic};
use crate::provider::{App, Provider, ProviderSettings};

/// How long one publish of ours (dead letter, feedback, republish) may keep
/// retrying before the message is nacked instead.
const PUBLISH_RETRY_LIMIT: Duration = Duration::from_secs(30);
/// Batching delay of our publishers: small, since a message's ack waits on it.
const PUBLISH_BATCH_DELAY: Duration = Duration::from_millis(5);

/// This pod's own limit: a `scope: pod` rate. A fleet rate is enforced by
/// the fleet limiter (`crate::coordinated`), which falls back to the pod's
/// share by itself; locally only AIMD applies to it.
fn pod_limit(limit: Option<push_dispatch_config::RateLimit>) -> Option<f64> {
    limit
        .filter(|l| l.scope == push_dispatch_config::RateScope::Pod)
        .map(|l| l.per_second)
}

/// Builds each app's providers from the config, in config order.
pub async fn build_apps(config: &Config, metrics: &Arc<Metrics>) -> Result<Vec<App>, RunError> {
    let timeout = config.dispatch.request_timeout;
    let mut apps = Vec::with_capacity(config.apps.len());
    // One provider token per key (SPEC §6), shared by the apps of one team.
    let mut tokens = ProviderTokens::default();
    for (i, app) in config.apps.iter().enumerate() {
        let settings = |sender: Sender, rate_limit: Option<f64>| ProviderSettings {
            sender,
            rate_limit,
            circuit: config.dispatch.circuit.clone(),
            guard: config.feedback.guard.clone(),
            bulkhead: ProviderSettings::share_of(
                config.dispatch.concurrency,
                config.dispatch.provider_share,
                config.dispatch.provider_min,
            ),
            // Parked messages hold flow-control budget: each app and
            // platform may park its share of it.
            max_parked: ProviderSettings::share_of(
                config.pubsub.max_outstanding_messages,
                config.dispatch.provider_share,
                1,
            ),
        };
        let apns = match &app.apns {
            None => None,
            Some(a) => {
                let key = format!("apps[{i}].apns");
                let problem = |e: &dyn std::fmt::Display| RunError::Dispatcher {
                    key: key.clone(),
                    problem: e.to_string(),
                };
                let dispatcher: Arc<dyn Dispatcher> =
                    match StubDispatcher::from_endpoint(&a.endpoint, Platform::Apns) {
                        Some(stub) => Arc::new(stub.map_err(|e| RunError::Dispatcher {
                            key: format!("{key}.endpoint"),
                            problem: e.to_string(),
                        })?),
                        None => {
                            let token = tokens
                                .get(&a.key_file, &a.key_id, &a.team_id)
                                .map_err(|e| problem(&e))?;
                            Arc::new(
                                ApnsClient::new(ApnsSettings::from_config(a, timeout), token)
                                    .map_err(|e| problem(&e))?,
                            )
                        }
                    };
                let sender = Sender::Apns {
                    topic: a.topic.clone(),
                    environment: a.effective_environment().as_str().to_string(),
                };
                Some(Provider::new(
                    &app.name,
                    dispatcher,
                    settings(sender, pod_limit(a.rate_limit)),
                    metrics.clone(),
                ))
            }
        };
        let fcm = match &app.fcm {
            None => None,
            Some(f) => {
                let key = format!("apps[{i}].fcm");
                let problem = |e: &dyn std::fmt::Display| RunError::Dispatcher {
                    key: key.clone(),
                    problem: e.to_string(),
                };
                let dispatcher: Arc<dyn Dispatcher> =
                    match StubDispatcher::from_endpoint(&f.endpoint, Platform::Fcm) {
                        Some(stub) => Arc::new(
                            stub.map_err(|e| RunError::Dispatcher {
                                key: format!("{key}.endpoint"),
                                problem: e.to_string(),
                            })?
                            .with_quota_wait(config.dispatch.quota_wait),
                        ),
                        None => {
                            let settings =
                                FcmSettings::from_config(f, timeout, config.dispatch.quota_wait);
                            let credentials = BearerCache::new(
                                f.credentials_file.as_deref(),
                                &settings.token_settings(),
                            )
                            .await
                            .map_err(|e| problem(&e))?;
                            Arc::new(
                                FcmClient::new(settings, Arc::new(credentials))
                                    .map_err(|e| problem(&e))?,
                            )
                        }
                    };
                let sender = Sender::Fcm {
                    project: f.project_id.clone(),
                };
                Some(Provider::new(
                    &app.name,
                    dispatcher,
                    settings(sender, pod_limit(f.rate_limit)),
                    metrics.clone(),
                ))
            }
        };
        apps.push(App {
            name: app.name.clone(),
            apns,
            fcm,
        });
    }
    Ok(apps)
}

/// The Pub/Sub outbox: a publisher on each topic we write to.
pub async fn pubsub_outbox(config: &Config, clients: &Clients) -> Result<PubsubOutbox, RunError> {
    let names = Names::from_config(config);
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
    let results = match &names.results_topic {
        None => None,
        Some(topic) => {
            let (publisher, topic) = publisher(topic.clone()).await?;
            Some(ResultsTopic {
                publisher,
                topic,
                encoding: match config.results.encoding {
                    FeedbackEncoding::Json => Encoding::Json,
                    FeedbackEncoding::Binary => Encoding::Binary,
                },
            })
        }
    };
    Ok(PubsubOutbox {
        dead_letter,
        requests,
        feedback: FeedbackPublisher::new(feedback, feedback_topic, encoding),
        results,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_bad_credentials_file_is_refused_with_the_key_named() {
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = Arc::new(Metrics::new(&mut registry));
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
        let err = build_apps(&config, &metrics)
            .await
            .expect_err("missing file");
        assert!(err.to_string().contains("apps[0].fcm"), "{err}");
        config.apps[0].fcm.as_mut().expect("fcm").endpoint = "stub:latency=1ms".into();
        let apps = build_apps(&config, &metrics).await.expect("stub");
        assert!(apps[0].fcm.is_some() && apps[0].apns.is_none());
        config.apps[0].fcm.as_mut().expect("fcm").endpoint = "stub:latency=soon".into();
        let err = build_apps(&config, &metrics).await.expect_err("bad stub");
        assert!(err.to_string().contains("apps[0].fcm.endpoint"), "{err}");
    }
}
