//! Provisioning: make the Pub/Sub resources match the config, idempotently.
//!
//! [`provision`] reads each resource, compares it with what the config asks
//! for, and creates or updates it (or, with `dry_run`, only says what it would
//! do). A second run reports everything up to date and changes nothing. What
//! Pub/Sub cannot update in place (the topic a subscription is attached to)
//! is reported as [`ProvisionError::Immutable`] with both values, so that the
//! operator can decide.
//!
//! What the config asks for is [`crate::desired`]'s; provision never deletes
//! or recreates a topic, and reports (rather than changes) what Pub/Sub
//! cannot update in place: a subscription's topic or filter.

use std::fmt;

use google_cloud_pubsub::model::Subscription;
use google_cloud_wkt::FieldMask;
use push_dispatch_config::Config;

use crate::desired::{DesiredTopic, desired_subscriptions, desired_topics, drift, topic_drift};
use crate::{Clients, Names, is_already_exists, is_not_found};

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
        "{resource} differs from the config in {fields} and the update was refused: {source}; change the config to match, or update it by hand"
    )]
    UpdateRefused {
        /// The topic's or subscription's full name.
        resource: String,
        /// The fields that differ, comma separated.
        fields: String,
        /// The SDK's error.
        #[source]
        source: google_cloud_pubsub::Error,
    },
}

/// Makes the Pub/Sub resources match the config; with `dry_run`, only reports.
pub async fn provision(
    clients: &Clients,
    config: &Config,
    dry_run: bool,
) -> Result<Report, ProvisionError> {
    let names = Names::from_config(config);
    let mut report = Report::default();
    for wanted in desired_topics(config, &names) {
        let name = wanted.topic.name.clone();
        let change = ensure_topic(clients, wanted, dry_run).await?;
        report.resources.push(ResourceChange {
            kind: ResourceKind::Topic,
            name,
            change,
        });
    }
    for wanted in desired_subscriptions(config, &names) {
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
    wanted: DesiredTopic,
    dry_run: bool,
) -> Result<Change, ProvisionError> {
    let name = wanted.topic.name.clone();
    let api = |action: &'static str| {
        let resource = name.clone();
        move |source| ProvisionError::Api {
            action,
            resource,
            source,
        }
    };
    let actual = match clients.topics.get_topic().set_topic(&name).send().await {
        Ok(actual) => actual,
        Err(e) if is_not_found(&e) => {
            if dry_run {
                return Ok(Change::WouldCreate);
            }
            return match clients
                .topics
                .create_topic()
                .with_request(wanted.topic)
                .send()
                .await
            {
                Ok(_) => Ok(Change::Created),
                // Another replica (or a retried attempt of ours) won the race.
                Err(e) if is_already_exists(&e) => Ok(Change::UpToDate),
                Err(e) => Err(api("create topic")(e)),
            };
        }
        Err(e) => return Err(api("read topic")(e)),
    };
    let fields = topic_drift(&actual, &wanted);
    if fields.is_empty() {
        return Ok(Change::UpToDate);
    }
    if dry_run {
        return Ok(Change::WouldUpdate(fields));
    }
    let mask = FieldMask::default().set_paths(fields.iter().copied());
    match clients
        .topics
        .update_topic()
        .set_topic(wanted.topic)
        .set_update_mask(mask)
        .send()
        .await
    {
        Ok(_) => Ok(Change::Updated(fields)),
        Err(source) => Err(ProvisionError::UpdateRefused {
            resource: name,
            fields: fields.join(", "),
            source,
        }),
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
    if actual.filter != wanted.filter {
        return Err(ProvisionError::Immutable {
            subscription: name,
            field: "filter",
            actual: actual.filter,
            wanted: wanted.filter,
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
            resource: name,
            fields: fields.join(", "),
            source,
        }),
    }
}
