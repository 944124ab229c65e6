//! The Pub/Sub resources the config asks for, and how an existing one
//! differs from them ([`drift`], [`topic_drift`]). Pure: [`crate::provision`]
//! reads, compares and writes.
//!
//! Resources we create never expire (SPEC §5.10): subscriptions get an
//! expiration policy without a TTL, the dead-letter inspection subscription
//! retains 7 days, and so may consumer subscriptions on the feedback topic
//! (`feedback.subscriptions[].retention`). The feedback topic keeps its
//! messages for `feedback.retention` (0 = not managed), so that events
//! published before any consumer subscribed can be read by seeking back;
//! likewise the results topic (when `results.topic` is set) for
//! `results.retention`.

use std::time::Duration;

use google_cloud_pubsub::model::{
    DeadLetterPolicy, ExpirationPolicy, RetryPolicy, Subscription, Topic,
};
use google_cloud_wkt::Duration as WktDuration;
use push_dispatch_config::{Config, ConsumerSubscription};

use crate::{Names, subscription_name, topic_name};

/// How long the dead-letter inspection subscription keeps messages.
pub const DEAD_LETTER_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// Ack deadline of the dead-letter inspection subscription.
const DEAD_LETTER_ACK_DEADLINE_SECS: i32 = 60;
/// Deliveries before a consumer subscription dead-letters an event.
pub const CONSUMER_MAX_DELIVERY_ATTEMPTS: i32 = 10;

/// One topic as the config wants it, and which of its settings provision manages.
#[derive(Clone, Debug, PartialEq)]
pub struct DesiredTopic {
    /// The topic (name and managed settings).
    pub topic: Topic,
    /// Whether its `message_retention_duration` is managed (`feedback.retention`
    /// above 0); unmanaged retention is never set nor cleared.
    pub manages_retention: bool,
}

/// Every topic: requests, dead letters, feedback, the consumers' dead-letter
/// topics, and the results topic when `results.topic` is set.
pub fn desired_topics(config: &Config, names: &Names) -> Vec<DesiredTopic> {
    let with_kms = |name: &str| {
        let topic = Topic::new().set_name(name);
        match &config.pubsub.kms_key_name {
            Some(key) => topic.set_kms_key_name(key.clone()),
            None => topic,
        }
    };
    let plain = |name: &str| DesiredTopic {
        topic: with_kms(name),
        manages_retention: false,
    };
    let retained = |name: &str, retention: Duration| {
        let mut topic = plain(name);
        if !retention.is_zero() {
            topic.topic = topic.topic.set_message_retention_duration(wkt(retention));
            topic.manages_retention = true;
        }
        topic
    };
    let feedback = retained(&names.feedback_topic, config.feedback.retention);
    let mut topics = vec![
        plain(&names.requests_topic),
        plain(&names.dead_letter_topic),
        feedback,
    ];
    for s in &config.feedback.subscriptions {
        if let Some(dlq) = &s.dead_letter_topic {
            let name = topic_name(&config.project_id, dlq);
            if topics.iter().all(|t| t.topic.name != name) {
                topics.push(plain(&name));
            }
        }
    }
    if let Some(results) = &names.results_topic {
        topics.push(retained(results, config.results.retention));
    }
    topics
}

/// The update-mask paths of `actual` that differ from what is managed in `wanted`.
pub fn topic_drift(actual: &Topic, wanted: &DesiredTopic) -> Vec<&'static str> {
    let mut fields = Vec::new();
    if wanted.manages_retention
        && secs(actual.message_retention_duration.as_ref())
            != secs(wanted.topic.message_retention_duration.as_ref())
    {
        fields.push("message_retention_duration");
    }
    if !wanted.topic.kms_key_name.is_empty() && actual.kms_key_name != wanted.topic.kms_key_name {
        fields.push("kms_key_name");
    }
    fields
}

/// The dispatch subscription the config asks for.
pub fn desired_dispatch_subscription(config: &Config, names: &Names) -> Subscription {
    let p = &config.pubsub;
    Subscription::new()
        .set_name(names.subscription.clone())
        .set_topic(names.requests_topic.clone())
        .set_ack_deadline_seconds(secs_i32(p.ack_deadline))
        .set_dead_letter_policy(
            DeadLetterPolicy::new()
                .set_dead_letter_topic(names.dead_letter_topic.clone())
                .set_max_delivery_attempts(i32::try_from(p.max_delivery_attempts).unwrap_or(100)),
        )
        .set_retry_policy(
            RetryPolicy::new()
                .set_minimum_backoff(wkt(p.retry_min_backoff))
                .set_maximum_backoff(wkt(p.retry_max_backoff)),
        )
        .set_enable_exactly_once_delivery(p.exactly_once)
        .set_expiration_policy(ExpirationPolicy::new())
}

/// The dead-letter inspection subscription the config asks for.
pub fn desired_dead_letter_subscription(names: &Names) -> Subscription {
    Subscription::new()
        .set_name(names.dead_letter_subscription.clone())
        .set_topic(names.dead_letter_topic.clone())
        .set_ack_deadline_seconds(DEAD_LETTER_ACK_DEADLINE_SECS)
        .set_message_retention_duration(wkt(DEAD_LETTER_RETENTION))
        .set_expiration_policy(ExpirationPolicy::new())
}

/// A consumer's subscription on the feedback topic.
pub fn desired_consumer_subscription(
    config: &Config,
    names: &Names,
    consumer: &ConsumerSubscription,
) -> Subscription {
    let mut s = Subscription::new()
        .set_name(subscription_name(&config.project_id, &consumer.name))
        .set_topic(names.feedback_topic.clone())
        .set_ack_deadline_seconds(secs_i32(consumer.ack_deadline))
        .set_expiration_policy(ExpirationPolicy::new());
    if let Some(filter) = &consumer.filter {
        s = s.set_filter(filter.clone());
    }
    if let Some(dlq) = &consumer.dead_letter_topic {
        s = s.set_dead_letter_policy(
            DeadLetterPolicy::new()
                .set_dead_letter_topic(topic_name(&config.project_id, dlq))
                .set_max_delivery_attempts(CONSUMER_MAX_DELIVERY_ATTEMPTS),
        );
    }
    if let Some(retention) = consumer.retention {
        s = s.set_message_retention_duration(wkt(retention));
    }
    s
}

/// Every subscription: the inspection one, the dispatch one, the consumers'.
pub fn desired_subscriptions(config: &Config, names: &Names) -> Vec<Subscription> {
    let mut subs = vec![
        desired_dead_letter_subscription(names),
        desired_dispatch_subscription(config, names),
    ];
    subs.extend(
        config
            .feedback
            .subscriptions
            .iter()
            .map(|c| desired_consumer_subscription(config, names, c)),
    );
    subs
}

fn secs_i32(d: Duration) -> i32 {
    i32::try_from(d.as_secs()).unwrap_or(i32::MAX)
}

fn wkt(d: Duration) -> WktDuration {
    WktDuration::clamp(i64::try_from(d.as_secs()).unwrap_or(i64::MAX), 0)
}

fn secs(d: Option<&WktDuration>) -> Option<i64> {
    d.map(WktDuration::seconds)
}

/// The update-mask paths whose values differ between `actual` and `wanted`.
///
/// Only fields the config sets are compared; a missing expiration policy and
/// one without a TTL both mean "never expires" for this purpose only when the
/// server reports no TTL.
pub fn drift(actual: &Subscription, wanted: &Subscription) -> Vec<&'static str> {
    let mut fields = Vec::new();
    if actual.ack_deadline_seconds != wanted.ack_deadline_seconds {
        fields.push("ack_deadline_seconds");
    }
    let dlp = |s: &Subscription| {
        s.dead_letter_policy
            .as_ref()
            .map(|d| (d.dead_letter_topic.clone(), d.max_delivery_attempts))
    };
    if dlp(actual) != dlp(wanted) {
        fields.push("dead_letter_policy");
    }
    let rp = |s: &Subscription| {
        s.retry_policy.as_ref().map(|r| {
            (
                secs(r.minimum_backoff.as_ref()),
                secs(r.maximum_backoff.as_ref()),
            )
        })
    };
    if rp(actual) != rp(wanted) {
        fields.push("retry_policy");
    }
    if actual.enable_exactly_once_delivery != wanted.enable_exactly_once_delivery {
        fields.push("enable_exactly_once_delivery");
    }
    let ttl = |s: &Subscription| {
        s.expiration_policy
            .as_ref()
            .and_then(|e| secs(e.ttl.as_ref()))
    };
    if ttl(actual) != ttl(wanted) {
        fields.push("expiration_policy");
    }
    if wanted.message_retention_duration.is_some()
        && secs(actual.message_retention_duration.as_ref())
            != secs(wanted.message_retention_duration.as_ref())
    {
        fields.push("message_retention_duration");
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::default()
    }

    #[test]
    fn desired_subscription_carries_every_policy() {
        let config = config();
        let names = Names::from_config(&config);
        let s = desired_dispatch_subscription(&config, &names);
        assert_eq!(s.topic, "projects/local-project/topics/push-requests");
        assert_eq!(s.ack_deadline_seconds, 60);
        let dlp = s.dead_letter_policy.as_ref().expect("dead letter policy");
        assert_eq!(dlp.max_delivery_attempts, 20);
        assert_eq!(
            dlp.dead_letter_topic,
            "projects/local-project/topics/push-requests-dlq"
        );
        let rp = s.retry_policy.as_ref().expect("retry policy");
        assert_eq!(secs(rp.minimum_backoff.as_ref()), Some(10));
        assert_eq!(secs(rp.maximum_backoff.as_ref()), Some(600));
        let exp = s.expiration_policy.as_ref().expect("expiration policy");
        assert!(exp.ttl.is_none(), "never expires");
    }

    #[test]
    fn drift_lists_exactly_the_changed_fields() {
        let mut config = config();
        let names = Names::from_config(&config);
        let before = desired_dispatch_subscription(&config, &names);
        assert!(drift(&before, &before).is_empty());
        config.pubsub.max_delivery_attempts = 7;
        config.pubsub.retry_max_backoff = Duration::from_secs(300);
        let after = desired_dispatch_subscription(&config, &names);
        assert_eq!(
            drift(&before, &after),
            ["dead_letter_policy", "retry_policy"]
        );
    }

    #[test]
    fn a_default_ttl_counts_as_drift() {
        let config = config();
        let names = Names::from_config(&config);
        let wanted = desired_dispatch_subscription(&config, &names);
        let actual = wanted.clone().set_expiration_policy(
            ExpirationPolicy::new().set_ttl(WktDuration::clamp(31 * 86_400, 0)),
        );
        assert_eq!(drift(&actual, &wanted), ["expiration_policy"]);
    }

    #[test]
    fn the_results_topic_is_provisioned_with_its_retention_only_when_set() {
        let mut config = config();
        let names = Names::from_config(&config);
        assert_eq!(names.results_topic, None);
        assert_eq!(desired_topics(&config, &names).len(), 3, "off: no topic");

        config.results.topic = Some("push-results".into());
        config.results.retention = Duration::from_secs(2 * 86_400);
        let names = Names::from_config(&config);
        let topics = desired_topics(&config, &names);
        let results = topics.last().expect("a topic");
        assert_eq!(
            results.topic.name,
            "projects/local-project/topics/push-results"
        );
        assert!(results.manages_retention);
        assert_eq!(
            secs(results.topic.message_retention_duration.as_ref()),
            Some(2 * 86_400)
        );
        // Updated in place when it drifts.
        let bare = Topic::new().set_name(results.topic.name.clone());
        assert_eq!(topic_drift(&bare, results), ["message_retention_duration"]);
        // 0 = not managed: never set, never cleared.
        config.results.retention = Duration::ZERO;
        let unmanaged = desired_topics(&config, &names);
        let unmanaged = unmanaged.last().expect("a topic");
        assert!(!unmanaged.manages_retention);
        assert!(topic_drift(&results.topic, unmanaged).is_empty());
    }

    #[test]
    fn the_feedback_topic_keeps_its_events_and_topics_carry_the_kms_key() {
        let mut config = config();
        config.pubsub.kms_key_name = Some("projects/p/locations/l/keyRings/r/cryptoKeys/k".into());
        config.feedback.subscriptions.push(ConsumerSubscription {
            name: "routing".into(),
            filter: Some("attributes.app = \"main\"".into()),
            ack_deadline: Duration::from_secs(30),
            dead_letter_topic: Some("routing-dlq".into()),
            retention: Some(Duration::from_secs(86_400)),
        });
        let names = Names::from_config(&config);
        let topics = desired_topics(&config, &names);
        assert_eq!(
            topics.len(),
            4,
            "requests, dlq, feedback, the consumer's dlq"
        );
        assert!(
            topics
                .iter()
                .all(|t| t.topic.kms_key_name.ends_with("cryptoKeys/k"))
        );
        let feedback = &topics[2];
        assert!(feedback.manages_retention);
        assert_eq!(
            secs(feedback.topic.message_retention_duration.as_ref()),
            Some(7 * 86_400)
        );
        assert!(
            !topics[0].manages_retention,
            "only the feedback topic's is managed"
        );
        // Drift: a topic created before retention was configured.
        let bare = Topic::new().set_name(names.feedback_topic.clone());
        assert_eq!(
            topic_drift(&bare, feedback),
            ["message_retention_duration", "kms_key_name"]
        );
        assert!(topic_drift(&feedback.topic, feedback).is_empty());
        // 0 = not managed: never set, never cleared.
        config.feedback.retention = Duration::ZERO;
        config.pubsub.kms_key_name = None;
        let unmanaged = &desired_topics(&config, &names)[2];
        assert!(topic_drift(&feedback.topic, unmanaged).is_empty());

        let subs = desired_subscriptions(&config, &names);
        let consumer = &subs[2];
        assert_eq!(
            consumer.name,
            "projects/local-project/subscriptions/routing"
        );
        assert_eq!(consumer.topic, names.feedback_topic);
        assert_eq!(consumer.filter, "attributes.app = \"main\"");
        assert_eq!(consumer.ack_deadline_seconds, 30);
        let dlp = consumer.dead_letter_policy.as_ref().expect("dead letters");
        assert_eq!(
            dlp.dead_letter_topic,
            "projects/local-project/topics/routing-dlq"
        );
        assert!(
            consumer
                .expiration_policy
                .as_ref()
                .is_some_and(|e| e.ttl.is_none())
        );
        assert_eq!(
            secs(consumer.message_retention_duration.as_ref()),
            Some(86_400)
        );
    }
}
