//! Provisioning: make the Pub/Sub resources match the config, idempotently.
//!
//! [`provision`] reads each resource, compares it with what the config asks
//! for, and creates or updates it (or, with `dry_run`, only says what it would
//! do). A second run reports everything up to date and changes nothing. What
//! Pub/Sub cannot update in place (the topic a subscription is attached to)
//! is reported as [`ProvisionError::Immutable`] with both values, so that the
//! operator can decide.
//!
//! Resources we create never expire (SPEC §5.10): the expiration policy has
//! no TTL, and the dead-letter inspection subscription retains 7 days.

use std::fmt;
use std::time::Duration;

use google_cloud_pubsub::model::{
    DeadLetterPolicy, ExpirationPolicy, RetryPolicy, Subscription, Topic,
};
use google_cloud_wkt::{Duration as WktDuration, FieldMask};
use push_dispatch_config::Config;

use crate::{Clients, Names, is_already_exists, is_not_found};

/// How long the dead-letter inspection subscription keeps messages.
pub const DEAD_LETTER_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// Ack deadline of the dead-letter inspection subscription.
const DEAD_LETTER_ACK_DEADLINE_SECS: i32 = 60;

/// What provisioning did (or, in a dry run, would do) to one resource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// The resource was created.
    Created,
    /// The resource already matched the config.
    UpToDate,
    /// These fields were updated.
    Updated(Vec<&'static str>),
    /// Dry run: the resource does not exist and would be created.
    WouldCreate,
    /// Dry run: these fields differ and would be updated.
    WouldUpdate(Vec<&'static str>),
}

/// A kind of Pub/Sub resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResourceKind {
    /// A topic.
    Topic,
    /// A subscription.
    Subscription,
}

/// One line of the provisioning report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceChange {
    /// Topic or subscription.
    pub kind: ResourceKind,
    /// Full resource name.
    pub name: String,
    /// What happened.
    pub change: Change,
}

/// What provisioning did to every resource.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// One entry per resource, in the order they were handled.
    pub resources: Vec<ResourceChange>,
}

impl Report {
    /// True when nothing was (or would be) created or updated.
    pub fn is_up_to_date(&self) -> bool {
        self.resources.iter().all(|r| r.change == Change::UpToDate)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for r in &self.resources {
            let kind = match r.kind {
                ResourceKind::Topic => "topic",
                ResourceKind::Subscription => "subscription",
            };
            let what = match &r.change {
                Change::Created => "created".to_string(),
                Change::UpToDate => "up to date".to_string(),
                Change::Updated(fields) => format!("updated {}", fields.join(", ")),
                Change::WouldCreate => "would create (dry run)".to_string(),
                Change::WouldUpdate(fields) => {
                    format!("would update {} (dry run)", fields.join(", "))
                }
            };
            writeln!(f, "{kind:<12} {:<60} {what}", r.name)?;
        }
        Ok(())
    }
}

/// Provisioning failed.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// A Pub/Sub call failed.
    #[error("cannot {action} {resource}: {source}")]
    Api {
        /// What we tried: `read`, `create`, `update`.
        action: &'static str,
        /// The resource's full name.
        resource: String,
        /// The SDK's error.
        #[source]
        source: google_cloud_pubsub::Error,
    },
    /// A setting differs and Pub/Sub cannot change it in place.
    #[error(
        "subscription {subscription}: {field} is `{actual}` but the config wants `{wanted}`, and Pub/Sub cannot change it in place; delete the subscription (its backlog is lost) or configure another name"
    )]
    Immutable {
        /// The subscription's full name.
        subscription: String,
        /// The setting.
        field: &'static str,
        /// What Pub/Sub has.
        actual: String,
        /// What the config asks for.
        wanted: String,
    },
    /// Pub/Sub refused to update settings that drifted.
    #[error(
        "subscription {subscription} differs from the config in {fields} and the update was refused: {source}; change the config to match, or update the subscription by hand"
    )]
    UpdateRefused {
        /// The subscription's full name.
        subscription: String,
        /// The fields that differ, comma separated.
        fields: String,
        /// The SDK's error.
        #[source]
        source: google_cloud_pubsub::Error,
    },
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

/// Makes the Pub/Sub resources match the config; with `dry_run`, only reports.
pub async fn provision(
    clients: &Clients,
    config: &Config,
    dry_run: bool,
) -> Result<Report, ProvisionError> {
    let names = Names::from_config(config);
    let mut report = Report::default();
    for topic in [
        &names.requests_topic,
        &names.dead_letter_topic,
        &names.feedback_topic,
    ] {
        let change = ensure_topic(clients, topic, dry_run).await?;
        report.resources.push(ResourceChange {
            kind: ResourceKind::Topic,
            name: topic.clone(),
            change,
        });
    }
    for wanted in [
        desired_dead_letter_subscription(&names),
        desired_dispatch_subscription(config, &names),
    ] {
        let name = wanted.name.clone();
        let change = ensure_subscription(clients, wanted, dry_run).await?;
        report.resources.push(ResourceChange {
            kind: ResourceKind::Subscription,
            name,
            change,
        });
    }
    Ok(report)
}

async fn ensure_topic(
    clients: &Clients,
    name: &str,
    dry_run: bool,
) -> Result<Change, ProvisionError> {
    let api = |action: &'static str| {
        let resource = name.to_string();
        move |source| ProvisionError::Api {
            action,
            resource,
            source,
        }
    };
    match clients.topics.get_topic().set_topic(name).send().await {
        Ok(_) => Ok(Change::UpToDate),
        Err(e) if is_not_found(&e) => {
            if dry_run {
                return Ok(Change::WouldCreate);
            }
            match clients
                .topics
                .create_topic()
                .with_request(Topic::new().set_name(name))
                .send()
                .await
            {
                Ok(_) => Ok(Change::Created),
                // Another replica (or a retried attempt of ours) won the race.
                Err(e) if is_already_exists(&e) => Ok(Change::UpToDate),
                Err(e) => Err(api("create topic")(e)),
            }
        }
        Err(e) => Err(api("read topic")(e)),
    }
}

async fn ensure_subscription(
    clients: &Clients,
    wanted: Subscription,
    dry_run: bool,
) -> Result<Change, ProvisionError> {
    let name = wanted.name.clone();
    let api = |action: &'static str| {
        let resource = name.clone();
        move |source| ProvisionError::Api {
            action,
            resource,
            source,
        }
    };
    let actual = match clients
        .subscriptions
        .get_subscription()
        .set_subscription(&name)
        .send()
        .await
    {
        Ok(s) => s,
        Err(e) if is_not_found(&e) => {
            if dry_run {
                return Ok(Change::WouldCreate);
            }
            return match clients
                .subscriptions
                .create_subscription()
                .with_request(wanted)
                .send()
                .await
            {
                Ok(_) => Ok(Change::Created),
                Err(e) if is_already_exists(&e) => Ok(Change::UpToDate),
                Err(e) => Err(api("create subscription")(e)),
            };
        }
        Err(e) => return Err(api("read subscription")(e)),
    };
    if actual.topic != wanted.topic {
        return Err(ProvisionError::Immutable {
            subscription: name,
            field: "topic",
            actual: actual.topic,
            wanted: wanted.topic,
        });
    }
    let fields = drift(&actual, &wanted);
    if fields.is_empty() {
        return Ok(Change::UpToDate);
    }
    if dry_run {
        return Ok(Change::WouldUpdate(fields));
    }
    let mask = FieldMask::default().set_paths(fields.iter().copied());
    match clients
        .subscriptions
        .update_subscription()
        .set_subscription(wanted)
        .set_update_mask(mask)
        .send()
        .await
    {
        Ok(_) => Ok(Change::Updated(fields)),
        Err(source) => Err(ProvisionError::UpdateRefused {
            subscription: name,
            fields: fields.join(", "),
            source,
        }),
    }
}

/// The IAM bindings dead-lettering needs on real Google Cloud, as gcloud commands.
///
/// Pub/Sub forwards dead letters as its own service agent, which needs
/// publisher on the dead-letter topic and subscriber on the dispatch
/// subscription. The emulator has no IAM, so this cannot be checked locally.
pub fn iam_bindings_help(config: &Config) -> String {
    let p = &config.pubsub;
    let agent = "serviceAccount:service-PROJECT_NUMBER@gcp-sa-pubsub.iam.gserviceaccount.com";
    format!(
        "Dead-lettering on Google Cloud needs these IAM bindings for the Pub/Sub service agent\n\
         (PROJECT_NUMBER: `gcloud projects describe {project} --format='value(projectNumber)'`):\n\
         \x20 gcloud pubsub topics add-iam-policy-binding {dlq} --project={project} \\\n\
         \x20     --member={agent} --role=roles/pubsub.publisher\n\
         \x20 gcloud pubsub subscriptions add-iam-policy-binding {sub} --project={project} \\\n\
         \x20     --member={agent} --role=roles/pubsub.subscriber\n\
         The worker's own service account needs roles/pubsub.subscriber on {sub} and\n\
         roles/pubsub.publisher on {dlq}, {requests} and {feedback}\n\
         (plus roles/pubsub.editor if it provisions: pubsub.provision: true).\n",
        project = config.project_id,
        dlq = p.dead_letter_topic,
        sub = p.subscription,
        requests = p.requests_topic,
        feedback = config.feedback.topic,
    )
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
    fn iam_help_names_the_service_agent_roles() {
        let text = iam_bindings_help(&config());
        assert!(text.contains("roles/pubsub.publisher"));
        assert!(text.contains("push-requests-dlq"));
        assert!(text.contains("gcp-sa-pubsub"));
    }
}
