//! Prometheus metrics of the worker (SPEC §8), on prometheus-client.
//!
//! Labels are bounded: platform, app (from the config), outcome, result and
//! error codes are closed sets; tokens, request ids and message ids never
//! become labels.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

pub use crate::labels::MessageResult;
use crate::labels::{
    AckKind, DuplicateWindow, ErrorCode, PublishPurpose, RefreshResult, SendOutcome,
};

/// `result` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// How the message was settled.
    pub result: MessageResult,
}

/// `platform, app, outcome` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SendLabels {
    /// `apns` or `fcm`.
    pub platform: &'static str,
    /// Configured app name.
    pub app: String,
    /// The provider's answer, or why the worker did not ask.
    pub outcome: SendOutcome,
}

/// `platform` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PlatformLabels {
    /// `apns` or `fcm`.
    pub platform: &'static str,
}

/// `platform, reason` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FeedbackLabels {
    /// `apns` or `fcm`.
    pub platform: &'static str,
    /// Reason enum name.
    pub reason: &'static str,
}

/// `platform, app` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AppPlatformLabels {
    /// `apns` or `fcm`.
    pub platform: &'static str,
    /// Configured app name.
    pub app: String,
}

/// `window` label: which duplicate window of SPEC §5.4 a risk falls in.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WindowLabels {
    /// The window.
    pub window: DuplicateWindow,
}

/// `platform, app, result` labels of token refreshes.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefreshLabels {
    /// `apns` or `fcm`.
    pub platform: &'static str,
    /// Configured app name.
    pub app: String,
    /// Signed or fetched, or failed.
    pub result: RefreshResult,
}

/// `stream` label: the index of a streaming pull (bounded by `pubsub.streams`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StreamLabels {
    /// 0-based index.
    pub stream: String,
}

/// `kind` label of acks.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AckLabels {
    /// Confirmed (exactly-once) or sent (at-least-once, unconfirmed by design).
    pub kind: AckKind,
}

/// `reason` label of dead letters: a `push_error` code.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// The `push_error` code.
    pub reason: ErrorCode,
}

/// `reason` label of publish failures: what the publish was for.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PurposeLabels {
    /// What the publish was for.
    pub reason: PublishPurpose,
}

/// Every metric of the worker.
#[derive(Debug)]
pub struct Metrics {
    /// `push_dispatch_messages_total{result}`.
    pub messages: Family<ResultLabels, Counter>,
    /// `push_dispatch_sends_total{platform,app,outcome}`.
    pub sends: Family<SendLabels, Counter>,
    /// `push_dispatch_send_duration_seconds{platform}`.
    pub send_duration: Family<PlatformLabels, Histogram>,
    /// `push_dispatch_end_to_end_seconds`: publish time to final outcome.
    pub end_to_end: Histogram,
    /// `push_dispatch_pull_lag_seconds`: publish time to receive.
    pub pull_lag: Histogram,
    /// `push_dispatch_feedback_events_total{platform,reason}`.
    pub feedback_events: Family<FeedbackLabels, Counter>,
    /// `push_dispatch_dead_letters_total{reason}`: messages we published to the dead-letter topic.
    pub dead_letters: Family<ReasonLabels, Counter>,
    /// `push_dispatch_publish_failures_total{reason}`: publishes that Pub/Sub did not confirm.
    pub publish_failures: Family<PurposeLabels, Counter>,
    /// `push_dispatch_inflight_messages`.
    pub inflight: Gauge,
    /// `push_dispatch_parked_messages`: messages waiting out a known wait
    /// (Retry-After, rate limit, open circuit, `push_not_before`) with their
    /// lease kept.
    pub parked: Gauge,
    /// `push_dispatch_streams_running`.
    pub streams_running: Gauge,
    /// `push_dispatch_coordination_up`: 1 while the shared store (Redis)
    /// answers, 0 while it does not, −1 in process.
    pub coordination_up: Gauge,
    /// `push_dispatch_dedup_unavailable_total`: messages sent without dedup
    /// (or whose finals were not recorded) because the store was down.
    pub dedup_unavailable: Counter,
    /// `push_dispatch_ack_failures_total`: exactly-once acks not confirmed.
    pub ack_failures: Counter,
    /// `push_dispatch_circuit_open{platform,app}`: 1 while open or probing.
    pub circuit_open: Family<AppPlatformLabels, Gauge>,
    /// `push_dispatch_invalidation_guard_tripped{platform,app}`: 1 while tripped.
    pub guard_tripped: Family<AppPlatformLabels, Gauge>,
    /// `push_dispatch_send_rate_limit{platform,app}`: the pushes per second
    /// this pod may send now (the configured `rate_limit`, or less while
    /// FCM's project quota is exceeded); −1 when unlimited.
    pub send_rate_limit: Family<AppPlatformLabels, Gauge<f64, AtomicU64>>,
    /// `push_dispatch_invalidation_guard_held_total{platform,app}`: dead tokens held back.
    pub guard_held: Family<AppPlatformLabels, Counter>,
    /// `push_dispatch_duplicate_risk_total{window}`: events that may cause a resend.
    pub duplicate_risk: Family<WindowLabels, Counter>,
    /// `push_dispatch_acks_total{kind}`.
    pub acks: Family<AckLabels, Counter>,
    /// `push_dispatch_token_refreshes_total{platform,app,result}`.
    pub token_refreshes: Family<RefreshLabels, Counter>,
    /// `push_dispatch_max_outstanding_messages`: the flow-control budget.
    pub max_outstanding: Gauge,
    /// `push_dispatch_stream_up{stream}`: 1 while that streaming pull runs.
    pub stream_up: Family<StreamLabels, Gauge>,
    /// `push_dispatch_redeliveries_total`: messages received with a
    /// delivery attempt above 1. Minus our own nacks
    /// (`messages_total{result="nacked"}`), it measures the duplicate
    /// windows the worker cannot see: lost acks, expired leases, killed pods.
    pub redeliveries: Counter,
    /// `push_dispatch_feedback_subscriptions`: subscriptions on the feedback
    /// topic, −1 when the worker may not see them.
    pub feedback_subscriptions: Gauge,
    /// `push_dispatch_feedback_retention_seconds`: the feedback topic's
    /// message retention, 0 without, −1 when the worker may not see it.
    pub feedback_retention: Gauge,
}

impl Metrics {
    /// Creates the metrics and registers them in `registry` (prefix `push_dispatch`).
    pub fn new(registry: &mut Registry) -> Metrics {
        let m = Metrics {
            messages: Family::default(),
            sends: Family::default(),
            send_duration: Family::new_with_constructor(latency_histogram),
            end_to_end: Histogram::new(exponential_buckets(0.005, 2.0, 18)),
            pull_lag: Histogram::new(exponential_buckets(0.005, 2.0, 18)),
            feedback_events: Family::default(),
            dead_letters: Family::default(),
            publish_failures: Family::default(),
            inflight: Gauge::default(),
            parked: Gauge::default(),
            coordination_up: Gauge::default(),
            dedup_unavailable: Counter::default(),
            streams_running: Gauge::default(),
            ack_failures: Counter::default(),
            circuit_open: Family::default(),
            guard_tripped: Family::default(),
            send_rate_limit: Family::default(),
            guard_held: Family::default(),
            duplicate_risk: Family::default(),
            acks: Family::default(),
            token_refreshes: Family::default(),
            max_outstanding: Gauge::default(),
            stream_up: Family::default(),
            redeliveries: Counter::default(),
            feedback_subscriptions: Gauge::default(),
            feedback_retention: Gauge::default(),
        };
        m.coordination_up.set(-1);
        // Unknown until first looked at.
        m.feedback_subscriptions.set(-1);
        m.feedback_retention.set(-1);
        let r = registry.sub_registry_with_prefix("push_dispatch");
        r.register(
            "messages",
            "Messages settled, by result",
            m.messages.clone(),
        );
        r.register("sends", "Sends to providers, by outcome", m.sends.clone());
        r.register(
            "send_duration_seconds",
            "Duration of one provider request",
            m.send_duration.clone(),
        );
        r.register(
            "end_to_end_seconds",
            "From first publish to the message's final outcome",
            m.end_to_end.clone(),
        );
        r.register(
            "pull_lag_seconds",
            "From publish to receipt by the worker",
            m.pull_lag.clone(),
        );
        r.register(
            "feedback_events",
            "TokenInvalidated events confirmed by Pub/Sub",
            m.feedback_events.clone(),
        );
        r.register(
            "dead_letters",
            "Messages published to the dead-letter topic, by push_error",
            m.dead_letters.clone(),
        );
        r.register(
            "publish_failures",
            "Publishes Pub/Sub did not confirm, by purpose",
            m.publish_failures.clone(),
        );
        r.register(
            "inflight_messages",
            "Messages being processed",
            m.inflight.clone(),
        );
        r.register(
            "coordination_up",
            "1 while the shared coordination store (Redis) answers, 0 while not, -1 in process",
            m.coordination_up.clone(),
        );
        r.register(
            "dedup_unavailable",
            "Messages sent without dedup, or whose final outcomes were not recorded, because the store was down",
            m.dedup_unavailable.clone(),
        );
        r.register(
            "parked_messages",
            "Messages waiting out a known wait (Retry-After, rate limit, open circuit, push_not_before) with their lease kept",
            m.parked.clone(),
        );
        r.register(
            "streams_running",
            "Streaming pulls running",
            m.streams_running.clone(),
        );
        r.register(
            "ack_failures",
            "Exactly-once acks that Pub/Sub did not confirm",
            m.ack_failures.clone(),
        );
        r.register(
            "circuit_open",
            "1 while the circuit of a provider and app is open",
            m.circuit_open.clone(),
        );
        r.register(
            "invalidation_guard_tripped",
            "1 while the mass-invalidation guard holds dead-token reports",
            m.guard_tripped.clone(),
        );
        r.register(
            "send_rate_limit",
            "Pushes per second this pod may send now, cut while FCM's project quota is exceeded (-1: unlimited)",
            m.send_rate_limit.clone(),
        );
        r.register(
            "invalidation_guard_held",
            "Dead-token reports held back by the guard and dead-lettered",
            m.guard_held.clone(),
        );
        r.register(
            "duplicate_risk",
            "Events after which a device may get a push twice, by window",
            m.duplicate_risk.clone(),
        );
        r.register(
            "token_refreshes",
            "APNs provider tokens signed and FCM OAuth tokens fetched, by result",
            m.token_refreshes.clone(),
        );
        r.register(
            "outstanding_messages",
            "Messages leased from Pub/Sub and not yet settled (flow control)",
            m.inflight.clone(),
        );
        r.register(
            "max_outstanding_messages",
            "The flow-control budget (pubsub.max_outstanding_messages)",
            m.max_outstanding.clone(),
        );
        r.register(
            "stream_up",
            "1 while a streaming pull runs, per stream",
            m.stream_up.clone(),
        );
        r.register(
            "redeliveries",
            "Messages received again (delivery attempt above 1), whatever the cause",
            m.redeliveries.clone(),
        );
        r.register(
            "feedback_subscriptions",
            "Subscriptions on the feedback topic (-1: not visible to the worker)",
            m.feedback_subscriptions.clone(),
        );
        r.register(
            "feedback_retention_seconds",
            "Message retention of the feedback topic (0: none, -1: not visible to the worker)",
            m.feedback_retention.clone(),
        );
        r.register(
            "acks",
            "Acks sent, by kind (confirmed on exactly-once subscriptions)",
            m.acks.clone(),
        );
        m
    }

    /// Counts one event of a duplicate window.
    pub fn duplicate_risk(&self, window: DuplicateWindow) {
        self.duplicate_risk
            .get_or_create(&WindowLabels { window })
            .inc();
    }

    /// Sets the feedback-topic gauges from what was seen (None: not visible).
    pub fn feedback_readers(&self, seen: Option<&push_dispatch_subscriber::iam::FeedbackReaders>) {
        let (subs, retention) = match seen {
            Some(s) => (
                i64::try_from(s.subscriptions).unwrap_or(i64::MAX),
                s.retention
                    .map_or(0, |r| i64::try_from(r.as_secs()).unwrap_or(i64::MAX)),
            ),
            None => (-1, -1),
        };
        self.feedback_subscriptions.set(subs);
        self.feedback_retention.set(retention);
    }

    /// Counts one settled message.
    pub fn message(&self, result: MessageResult) {
        self.messages.get_or_create(&ResultLabels { result }).inc();
    }

    /// Counts one message published to the dead-letter topic.
    pub fn dead_letter(&self, code: push_dispatch_proto::PushError) {
        self.dead_letters
            .get_or_create(&ReasonLabels {
                reason: ErrorCode(code),
            })
            .inc();
    }

    /// Counts one publish that Pub/Sub did not confirm.
    pub fn publish_failure(&self, reason: PublishPurpose) {
        self.publish_failures
            .get_or_create(&PurposeLabels { reason })
            .inc();
    }

    /// Counts token refreshes of one app and platform.
    pub fn token_refreshes(
        &self,
        platform: &'static str,
        app: &str,
        result: RefreshResult,
        n: u64,
    ) {
        self.token_refreshes
            .get_or_create(&RefreshLabels {
                platform,
                app: app.to_string(),
                result,
            })
            .inc_by(n);
    }
}

/// The send metrics of one app and platform, resolved once. Counting a send
/// through them takes no label building, allocation or map lookup, which a
/// `Family::get_or_create` with an owned `app` label costs on every push.
/// Every series exists from the start, at zero, so `rate()` sees them before
/// the first event.
#[derive(Clone, Debug)]
pub struct SendHandles {
    /// By [`SendOutcome`], in `SendOutcome::ALL` order.
    outcomes: Vec<Counter>,
    /// `push_dispatch_circuit_open{platform,app}`.
    pub circuit_open: Gauge,
    /// `push_dispatch_send_duration_seconds{platform}`.
    pub send_duration: Histogram,
    /// `push_dispatch_invalidation_guard_tripped{platform,app}`.
    pub guard_tripped: Gauge,
    /// `push_dispatch_invalidation_guard_held_total{platform,app}`.
    pub guard_held: Counter,
    /// `push_dispatch_send_rate_limit{platform,app}`: −1 (unlimited) until
    /// set; `crate::rate_limit::AdaptiveRate::with_gauge` keeps it current.
    pub send_rate_limit: Gauge<f64, AtomicU64>,
}

impl SendHandles {
    /// Counts one send with this `outcome`.
    pub fn count(&self, outcome: SendOutcome) {
        // `ALL` lists the variants in declaration order.
        self.outcomes[outcome as usize].inc();
    }
}

impl Metrics {
    /// Resolves the send metrics of one app and platform (see [`SendHandles`]).
    pub fn send_handles(&self, platform: &'static str, app: &str) -> SendHandles {
        let labels = |outcome| SendLabels {
            platform,
            app: app.to_string(),
            outcome,
        };
        SendHandles {
            outcomes: SendOutcome::ALL
                .iter()
                .map(|&o| self.sends.get_or_create(&labels(o)).clone())
                .collect(),
            circuit_open: self
                .circuit_open
                .get_or_create(&AppPlatformLabels {
                    platform,
                    app: app.to_string(),
                })
                .clone(),
            send_duration: self
                .send_duration
                .get_or_create(&PlatformLabels { platform })
                .clone(),
            guard_tripped: self
                .guard_tripped
                .get_or_create(&AppPlatformLabels {
                    platform,
                    app: app.to_string(),
                })
                .clone(),
            guard_held: self
                .guard_held
                .get_or_create(&AppPlatformLabels {
                    platform,
                    app: app.to_string(),
                })
                .clone(),
            send_rate_limit: {
                let gauge = self
                    .send_rate_limit
                    .get_or_create(&AppPlatformLabels {
                        platform,
                        app: app.to_string(),
                    })
                    .clone();
                gauge.set(-1.0);
                gauge
            },
        }
    }
}

fn latency_histogram() -> Histogram {
    // Provider answers are typically 5–300 ms; 1 s is the latency SLO's
    // threshold (deploy/alerts), so it must be a bucket bound.
    Histogram::new([
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ])
}

/// Renders the registry in the Prometheus text format.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, registry) {
        tracing::error!(error = %e, "cannot encode metrics");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_send_outcome_has_its_own_handle() {
        for (i, o) in SendOutcome::ALL.iter().enumerate() {
            assert_eq!(*o as usize, i, "ALL is in declaration order");
        }
    }

    #[test]
    fn handles_count_into_the_labelled_series() {
        let mut registry = Registry::default();
        let m = Metrics::new(&mut registry);
        let h = m.send_handles("apns", "main");
        h.count(SendOutcome::Delivered);
        h.count(SendOutcome::Delivered);
        h.count(SendOutcome::RateLimited);
        h.circuit_open.set(1);
        assert_eq!(h.send_rate_limit.get(), -1.0, "unlimited until set");
        h.send_rate_limit.set(250.5);
        m.dead_letter(push_dispatch_proto::PushError::RetriesExhausted);
        m.message(MessageResult::DeadLettered);
        let text = render(&registry);
        assert!(
            text.contains(
                r#"push_dispatch_sends_total{platform="apns",app="main",outcome="delivered"} 2"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"push_dispatch_sends_total{platform="apns",app="main",outcome="rate_limited"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"push_dispatch_sends_total{platform="apns",app="main",outcome="token_invalid"} 0"#
            ),
            "series exist from the start: {text}"
        );
        assert!(
            text.contains(r#"push_dispatch_circuit_open{platform="apns",app="main"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"push_dispatch_send_rate_limit{platform="apns",app="main"} 250.5"#),
            "{text}"
        );
        assert!(
            text.contains(r#"push_dispatch_dead_letters_total{reason="retries_exhausted"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"push_dispatch_messages_total{result="dead_lettered"} 1"#),
            "{text}"
        );
    }
}
