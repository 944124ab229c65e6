//! The worker's lifecycle (SPEC §5.7): [`run`] checks that the subscription
//! exists, assembles the outbox and the [`Worker`], opens the streams, marks
//! the process ready, and on shutdown: readiness goes false, pulling stops,
//! messages not yet started are nacked at once, in-flight work drains within
//! `shutdown_grace` (publishes confirmed before acks), and whatever is left
//! is nacked. It provisions nothing (the binary does that first).

use std::sync::Arc;
use std::time::Duration;

use push_dispatch_config::Config;
use push_dispatch_subscriber::iam::{FeedbackReaders, feedback_readers, is_permission_denied};
use push_dispatch_subscriber::stream::{StreamExit, StreamSettings, StreamStates, spawn_streams};
use push_dispatch_subscriber::{Clients, ConnectError, Names, is_not_found};
use tokio_util::sync::CancellationToken;

use crate::assemble::pubsub_outbox;
use crate::coordinated::Coordinated;
use crate::health::Readiness;
use crate::metrics::{self, Metrics};
use crate::pipeline::{Worker, WorkerSettings};
use crate::plan::Policy;
use crate::provider::App;
use crate::shutdown::Shutdown;

/// After the grace period, how long we still wait for tasks to hand back
/// their messages before exiting anyway.
const HARD_STOP_SLACK: Duration = Duration::from_secs(5);
/// How often gauges that only traffic updates are brought up to date.
const GAUGE_REFRESH: Duration = Duration::from_secs(5);

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

/// Runs the worker until `stop` fires (or a stream fails), then drains.
pub async fn run(
    config: &Config,
    clients: &Clients,
    apps: Vec<App>,
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
    stop: CancellationToken,
) -> Result<(), RunError> {
    let names = Names::from_config(config);
    check_subscription(clients, &names.subscription).await?;
    let outbox = pubsub_outbox(config, clients).await?;
    let shutdown = Shutdown::new();
    let coordinated = Coordinated::from_config(config).map_err(|e| RunError::Dispatcher {
        key: "coordination".into(),
        problem: e.to_string(),
    })?;
    let apps = coordinated.attach(apps, config);
    let dedup = coordinated.dedup(config, &metrics);
    let worker = Worker::new(
        apps,
        outbox,
        WorkerSettings {
            policy: Policy {
                max_delivery_attempts: i32::try_from(config.pubsub.max_delivery_attempts)
                    .unwrap_or(i32::MAX),
                max_republish: config.dispatch.max_republish,
                max_park: config.dispatch.max_park,
                max_deferrals: config.dispatch.max_deferrals,
            },
            max_in_process_wait: config.dispatch.max_in_process_wait,
            concurrency: config.dispatch.concurrency as usize,
            results: config.results.topic.is_some(),
        },
        metrics.clone(),
        shutdown.clone(),
    );
    let worker = Arc::new(match dedup {
        Some(dedup) => worker.with_dedup(dedup),
        None => worker,
    });

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
        shutdown.draining_token(),
        states.clone(),
        move |received| {
            let worker = handler.clone();
            async move { worker.handle(received).await }
        },
    );
    streams_started(&metrics, config);
    readiness.set_status({
        let worker = worker.clone();
        Arc::new(move || worker.status())
    });
    // Gauges that only traffic would update otherwise (guard release,
    // circuit past open_for), refreshed until the drain ends.
    let refresher_stop = CancellationToken::new();
    let refresher = tokio::spawn(refresh_gauges(worker.clone(), refresher_stop.clone()));
    let coordination = tokio::spawn(coordinated.watch(metrics.clone(), refresher_stop.clone()));
    let watcher = tokio::spawn(watch_feedback_readers(
        clients.clone(),
        names.feedback_topic.clone(),
        metrics.clone(),
        refresher_stop.clone(),
    ));
    readiness.set_streams_up(true);
    tracing::info!(subscription = %names.subscription, streams = config.pubsub.streams, "pulling");

    // Run until asked to stop, or until a stream ends by itself.
    let mut failure = None;
    tokio::select! {
        () = stop.cancelled() => {
            tracing::info!("shutdown requested; draining");
        }
        Some(ended) = streams.join_next() => {
            // Nobody asked it to stop: whatever ended it, the worker is
            // degraded, drains, and exits non-zero so that it is restarted.
            failure = Some(stream_failure(&metrics, ended).unwrap_or(RunError::StreamEnded));
            metrics.streams_running.dec();
        }
    }
    readiness.set_draining();
    shutdown.drain();
    let drained = drain(&mut streams, &shutdown, &metrics, config.shutdown_grace).await;
    failure = failure.or(drained);

    readiness.set_streams_up(false);
    refresher_stop.cancel();
    for (task, what) in [
        (refresher, "gauge refresher"),
        (coordination, "coordination watcher"),
        (watcher, "feedback watcher"),
    ] {
        if let Err(e) = task.await {
            tracing::error!(error = %e, "{what} panicked");
        }
    }
    worker.close_dispatchers().await;
    tracing::info!(received = states.received(), "worker stopped");
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// What the start-up check of the dispatch subscription found.
#[derive(Debug, PartialEq, Eq)]
pub enum SubscriptionCheck {
    /// It exists.
    Exists,
    /// The worker may not read it (`pubsub.subscriptions.get` is not in
    /// roles/pubsub.subscriber): the check is skipped; the streams would
    /// fail if it did not exist.
    NotVisible,
}

/// Start-up: the dispatch subscription must exist, when we may see it.
async fn check_subscription(clients: &Clients, subscription: &str) -> Result<(), RunError> {
    let answer = clients
        .subscriptions
        .get_subscription()
        .set_subscription(subscription)
        .send()
        .await
        .map(drop);
    if judge_subscription(subscription, answer)? == SubscriptionCheck::NotVisible {
        tracing::warn!(
            subscription,
            "cannot read the subscription (no pubsub.subscriptions.get, which roles/pubsub.subscriber does not grant); skipped the check that it exists: pulling will fail if it does not. Grant roles/pubsub.viewer on it to keep the check"
        );
    }
    Ok(())
}

/// Sorts the answer to GetSubscription: NOT_FOUND is the clear "run
/// provision" error, PERMISSION_DENIED skips the check, anything else fails.
pub fn judge_subscription(
    subscription: &str,
    answer: Result<(), push_dispatch_subscriber::pubsub::Error>,
) -> Result<SubscriptionCheck, RunError> {
    match answer {
        Ok(()) => Ok(SubscriptionCheck::Exists),
        Err(e) if is_not_found(&e) => Err(RunError::NoSubscription(subscription.to_string())),
        Err(e) if is_permission_denied(&e) => Ok(SubscriptionCheck::NotVisible),
        Err(source) => Err(RunError::Pubsub {
            name: subscription.to_string(),
            source,
        }),
    }
}

/// How often the feedback topic's readers are looked at again.
const FEEDBACK_READERS_EVERY: Duration = Duration::from_secs(300);

/// Watches who reads the feedback topic until `stop`: a topic with no
/// subscription and no retention drops every event it confirms. Sets the
/// gauges (−1 when the worker may not see it) and warns on a change.
async fn watch_feedback_readers(
    clients: Clients,
    topic: String,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(FEEDBACK_READERS_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last: Option<Option<bool>> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => break,
        }
        let seen = match feedback_readers(&clients, &topic).await {
            Ok(seen) => seen,
            Err(e) => {
                tracing::debug!(topic = %topic, error = %e, "cannot read the feedback topic's subscriptions");
                continue;
            }
        };
        metrics.feedback_readers(seen.as_ref());
        let drops = seen.as_ref().map(FeedbackReaders::drops_events);
        if last != Some(drops) {
            match drops {
                Some(true) => {
                    tracing::warn!(topic = %topic, "the feedback topic has no subscription and no message retention: Pub/Sub confirms TokenInvalidated events and drops them. Subscribe the routing service, or set feedback.retention and run provision")
                }
                Some(false) => {
                    tracing::info!(topic = %topic, subscriptions = seen.as_ref().map_or(0, |s| s.subscriptions), "the feedback topic is read or retained")
                }
                None => {
                    tracing::info!(topic = %topic, "cannot see the feedback topic's subscriptions (no pubsub.topics.get: grant roles/pubsub.viewer on it to be warned when nobody reads it)")
                }
            }
        }
        last = Some(drops);
    }
}

fn streams_started(metrics: &Metrics, config: &Config) {
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
}

/// Refreshes the worker's gauges, and adds the guards' batched answers to
/// the fleet's windows, every [`GAUGE_REFRESH`] until `stop`.
async fn refresh_gauges<O: crate::outbox::Outbox>(worker: Arc<Worker<O>>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(GAUGE_REFRESH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                worker.refresh_gauges();
                worker.flush_shared().await;
            }
            () = stop.cancelled() => break,
        }
    }
}

/// Waits for the streams to drain within `grace`; then forces the
/// shutdown (every message still handled is nacked) and waits a little
/// more before aborting them. Returns the first stream failure seen.
async fn drain(
    streams: &mut tokio::task::JoinSet<(usize, StreamExit)>,
    shutdown: &Shutdown,
    metrics: &Metrics,
    grace: Duration,
) -> Option<RunError> {
    let mut failure = None;
    let grace_timer = tokio::time::sleep(grace);
    tokio::pin!(grace_timer);
    let mut hard_deadline = None;
    loop {
        tokio::select! {
            ended = streams.join_next() => match ended {
                Some(ended) => {
                    metrics.streams_running.dec();
                    if failure.is_none() {
                        failure = stream_failure(metrics, ended);
                    }
                }
                None => break,
            },
            () = &mut grace_timer, if hard_deadline.is_none() => {
                tracing::warn!(grace = ?grace, "shutdown grace elapsed; nacking in-flight messages");
                shutdown.force();
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
    failure
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
    use google_cloud_gax::error::rpc::{Code, Status};

    fn error(code: Code) -> push_dispatch_subscriber::pubsub::Error {
        push_dispatch_subscriber::pubsub::Error::service(Status::default().set_code(code))
    }

    #[test]
    fn start_up_needs_no_get_permission_but_a_missing_subscription_still_stops_it() {
        let sub = "projects/p/subscriptions/s";
        assert_eq!(
            judge_subscription(sub, Ok(())).expect("exists"),
            SubscriptionCheck::Exists
        );
        assert_eq!(
            judge_subscription(sub, Err(error(Code::PermissionDenied))).expect("skipped"),
            SubscriptionCheck::NotVisible,
            "roles/pubsub.subscriber alone must not crash-loop the worker"
        );
        let missing = judge_subscription(sub, Err(error(Code::NotFound))).expect_err("missing");
        assert!(
            missing.to_string().contains("push-dispatch provision"),
            "{missing}"
        );
        let down = judge_subscription(sub, Err(error(Code::Unavailable))).expect_err("down");
        assert!(matches!(down, RunError::Pubsub { .. }), "{down}");
    }
}
