//! Everything push-dispatch does with Pub/Sub itself, on Google's official
//! `google-cloud-pubsub` crate:
//!
//! * [`client`]: connecting, to real Pub/Sub (Application Default
//!   Credentials) or to the emulator named by `PUBSUB_EMULATOR_HOST`, which
//!   the official crate does not read by itself.
//! * [`desired`]: the resources the config asks for, and their drift.
//! * [`provision`]: creating or updating the requests topic, the dead-letter
//!   topic and its inspection subscription, the feedback topic and the
//!   dispatch subscription (DeadLetterPolicy, RetryPolicy, expiration never).
//! * [`stream`]: several streaming pulls sharing the process's flow-control
//!   budget, each message handed out with a [`stream::Lease`] to ack or nack.
//! * [`publish`]: publishing with Pub/Sub's limits enforced on our side
//!   (the emulator enforces none of them).
//! * [`iam`]: the worker's permissions asked of Pub/Sub (`testIamPermissions`),
//!   and who reads the feedback topic.
//! * [`snapshot`]: snapshots and seeks of a subscription, for disaster recovery.
//! * [`dlq`]: unary pull, ack and release over Pub/Sub's REST API, for
//!   `dlq peek` and `dlq replay` (the official crate exposes only streaming
//!   pull, which suits a worker but not a one-shot inspection).
//!
//! It knows nothing of push requests: the policy lives in the worker crate.

pub mod client;
pub mod desired;
pub mod dlq;
pub mod iam;
pub mod provision;
pub mod publish;
pub mod snapshot;
pub mod stream;

pub use client::{Clients, ConnectError};
/// The official crate, re-exported so that dependants use the same version.
pub use google_cloud_pubsub as pubsub;
pub use google_cloud_wkt as wkt;

/// Fully qualified resource names (`projects/P/topics/T`, `projects/P/subscriptions/S`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Names {
    /// `projects/P/topics/{requests_topic}`.
    pub requests_topic: String,
    /// `projects/P/subscriptions/{subscription}`.
    pub subscription: String,
    /// `projects/P/topics/{dead_letter_topic}`.
    pub dead_letter_topic: String,
    /// `projects/P/subscriptions/{dead_letter_subscription}`.
    pub dead_letter_subscription: String,
    /// `projects/P/topics/{feedback.topic}`.
    pub feedback_topic: String,
    /// `projects/P/topics/{results.topic}`, when results are on.
    pub results_topic: Option<String>,
}

impl Names {
    /// The names the config fixes.
    pub fn from_config(config: &push_dispatch_config::Config) -> Names {
        let p = &config.project_id;
        let c = &config.pubsub;
        Names {
            requests_topic: topic_name(p, &c.requests_topic),
            subscription: subscription_name(p, &c.subscription),
            dead_letter_topic: topic_name(p, &c.dead_letter_topic),
            dead_letter_subscription: subscription_name(p, &c.dead_letter_subscription),
            feedback_topic: topic_name(p, &config.feedback.topic),
            results_topic: config.results.topic.as_ref().map(|t| topic_name(p, t)),
        }
    }
}

/// `projects/{project}/topics/{topic}`.
pub fn topic_name(project: &str, topic: &str) -> String {
    format!("projects/{project}/topics/{topic}")
}

/// `projects/{project}/subscriptions/{subscription}`.
pub fn subscription_name(project: &str, subscription: &str) -> String {
    format!("projects/{project}/subscriptions/{subscription}")
}

/// Whether a Pub/Sub error is NOT_FOUND (gRPC code or HTTP 404).
pub fn is_not_found(e: &google_cloud_pubsub::Error) -> bool {
    use google_cloud_gax::error::rpc::Code;
    e.status().map(|s| s.code) == Some(Code::NotFound) || e.http_status_code() == Some(404)
}

/// Whether a Pub/Sub error is ALREADY_EXISTS (gRPC code or HTTP 409).
pub fn is_already_exists(e: &google_cloud_pubsub::Error) -> bool {
    use google_cloud_gax::error::rpc::Code;
    e.status().map(|s| s.code) == Some(Code::AlreadyExists) || e.http_status_code() == Some(409)
}
