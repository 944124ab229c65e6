//! The results topic's settings (`results`): where one `PushResult` per
//! settlement of a request is published, in which encoding, with what
//! retention. Off (`topic: null`) by default.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::Config;
use crate::FeedbackEncoding;
use crate::validate::Issues;

/// The results topic.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ResultsConfig {
    /// Topic that receives `PushResult`s; null = results off (no publish, no cost).
    pub topic: Option<String>,
    /// `json` or `binary` (as `feedback.encoding`).
    pub encoding: FeedbackEncoding,
    /// Message retention on the results topic (10m..31d); 0 = not managed
    /// (never set nor cleared by provision).
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
}

impl Default for ResultsConfig {
    fn default() -> Self {
        ResultsConfig {
            topic: None,
            encoding: FeedbackEncoding::Json,
            retention: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// Longest message retention Pub/Sub allows on a topic.
const MAX_TOPIC_RETENTION: Duration = Duration::from_secs(31 * 24 * 3600);
/// Shortest message retention Pub/Sub allows.
const MIN_RETENTION: Duration = Duration::from_secs(600);

/// The results section: the topic's name (distinct from every topic we
/// read or write) and its retention.
pub(crate) fn validate(config: &Config, v: &mut Issues) {
    let r = &config.results;
    if let Some(topic) = &r.topic {
        if topic.is_empty() {
            v.add(
                "results.topic",
                "is empty; name the Pub/Sub topic, or null to publish no results",
            );
        } else {
            v.resource_name("results.topic", topic);
        }
        let p = &config.pubsub;
        for (key, other) in [
            ("pubsub.requests_topic", &p.requests_topic),
            ("pubsub.dead_letter_topic", &p.dead_letter_topic),
            ("feedback.topic", &config.feedback.topic),
        ] {
            if topic == other {
                v.add(
                    "results.topic",
                    format!("is the same as {key}; give the results their own topic"),
                );
            }
        }
    }
    if !r.retention.is_zero() {
        v.duration(
            "results.retention",
            r.retention,
            MIN_RETENTION,
            MAX_TOPIC_RETENTION,
            " (Pub/Sub's topic retention limits), or 0 to leave retention unmanaged",
        );
    }
}
