//! The feedback topic's settings: encoding, the mass-invalidation guard,
//! retention, and the consumer subscriptions provision creates.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::Config;
use crate::validate::Issues;

/// Wire encoding of published feedback events.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FeedbackEncoding {
    /// proto3 JSON (default).
    Json,
    /// Binary protobuf.
    Binary,
}

/// The feedback topic.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct FeedbackConfig {
    /// Topic that receives `TokenInvalidated` events.
    pub topic: String,
    /// `json` or `binary`.
    pub encoding: FeedbackEncoding,
    /// Mass-invalidation guard.
    pub guard: GuardConfig,
    /// Message retention on the feedback topic, so that events published
    /// before any consumer subscribed can be read by seeking back; 0 = not
    /// managed (never set nor cleared by provision). 10m..31d.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// Consumer subscriptions on the feedback topic that provision creates.
    pub subscriptions: Vec<ConsumerSubscription>,
}

/// A consumer's subscription on the feedback topic, provisioned for it.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConsumerSubscription {
    /// The subscription's short name.
    pub name: String,
    /// A Pub/Sub filter on the event attributes, e.g. `attributes.app = "shop"`.
    #[serde(default)]
    pub filter: Option<String>,
    /// Its ack deadline (10s..600s).
    #[serde(default = "default_consumer_ack_deadline", with = "humantime_serde")]
    pub ack_deadline: Duration,
    /// A dead-letter topic for what the consumer cannot handle (short name).
    #[serde(default)]
    pub dead_letter_topic: Option<String>,
    /// How long it keeps unacked (and acked, for seek) messages (10m..7d).
    #[serde(default, with = "humantime_serde")]
    pub retention: Option<Duration>,
}

fn default_consumer_ack_deadline() -> Duration {
    Duration::from_secs(60)
}

/// Mass-invalidation guard settings (SPEC §5.9).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct GuardConfig {
    /// Share of sends whose answer is a suspicious dead-token reason that trips the guard.
    pub ratio: f64,
    /// Sends needed in the window before the guard may trip.
    pub min_samples: u32,
    /// The sliding window.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
}

impl Default for FeedbackConfig {
    fn default() -> Self {
        FeedbackConfig {
            topic: "push-feedback".into(),
            encoding: FeedbackEncoding::Json,
            guard: GuardConfig::default(),
            retention: Duration::from_secs(7 * 24 * 3600),
            subscriptions: Vec::new(),
        }
    }
}

impl Default for GuardConfig {
    fn default() -> Self {
        GuardConfig {
            ratio: 0.5,
            min_samples: 200,
            window: Duration::from_secs(60),
        }
    }
}

/// Longest message retention Pub/Sub allows on a topic.
const MAX_TOPIC_RETENTION: Duration = Duration::from_secs(31 * 24 * 3600);
/// Longest message retention Pub/Sub allows on a subscription.
const MAX_SUBSCRIPTION_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// Shortest message retention Pub/Sub allows.
const MIN_RETENTION: Duration = Duration::from_secs(600);
/// Longest subscription filter Pub/Sub accepts, in bytes.
const MAX_FILTER_BYTES: usize = 256;

/// The feedback section's values: retention, consumer subscriptions.
pub(crate) fn validate(config: &Config, v: &mut Issues) {
    let f = &config.feedback;
    if !f.retention.is_zero() {
        v.duration(
            "feedback.retention",
            f.retention,
            MIN_RETENTION,
            MAX_TOPIC_RETENTION,
            " (Pub/Sub's topic retention limits), or 0 to leave retention unmanaged",
        );
    }
    let p = &config.pubsub;
    let ours = [&p.subscription, &p.dead_letter_subscription];
    let mut seen = std::collections::HashSet::new();
    for (i, s) in f.subscriptions.iter().enumerate() {
        let key = format!("feedback.subscriptions[{i}]");
        if s.name.is_empty() {
            v.add(
                format!("{key}.name"),
                "is empty; name the consumer's subscription",
            );
        } else {
            v.resource_name(&format!("{key}.name"), &s.name);
        }
        if ours.contains(&&s.name) || !seen.insert(s.name.as_str()) {
            v.add(
                format!("{key}.name"),
                format!("`{}` is already used by another subscription of this config; give each consumer its own", s.name),
            );
        }
        if let Some(filter) = &s.filter
            && (filter.trim().is_empty() || filter.len() > MAX_FILTER_BYTES)
        {
            v.add(
                format!("{key}.filter"),
                format!("must be a Pub/Sub filter of 1 to {MAX_FILTER_BYTES} bytes, e.g. attributes.app = \"shop\", or null"),
            );
        }
        v.duration(
            &format!("{key}.ack_deadline"),
            s.ack_deadline,
            Duration::from_secs(10),
            Duration::from_secs(600),
            " (Pub/Sub's limits)",
        );
        if let Some(topic) = &s.dead_letter_topic {
            v.resource_name(&format!("{key}.dead_letter_topic"), topic);
            if topic == &f.topic {
                v.add(
                    format!("{key}.dead_letter_topic"),
                    "is the feedback topic itself; dead letters would be delivered again: use another topic",
                );
            }
        }
        if let Some(retention) = s.retention {
            v.duration(
                &format!("{key}.retention"),
                retention,
                MIN_RETENTION,
                MAX_SUBSCRIPTION_RETENTION,
                " (Pub/Sub's subscription retention limits)",
            );
        }
    }
}
