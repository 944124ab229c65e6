//! What the worker may do on Pub/Sub, asked of Pub/Sub itself, and who
//! reads the feedback topic.
//!
//! * [`preflight`] calls `testIamPermissions` on the dispatch subscription
//!   (`pubsub.subscriptions.consume`) and on the three topics the worker
//!   publishes to (`pubsub.topics.publish`), and names every missing
//!   permission with the role that grants it. It goes through the
//!   SchemaService client (the IAM client defaults to another host); the
//!   call needs no permission of its own. The emulator has no IAM (501):
//!   the check is then [`IamCheck::Skipped`].
//! * [`feedback_readers`] counts the feedback topic's subscriptions and reads
//!   its retention: a topic with neither drops every event it confirms.
//!   It needs `pubsub.topics.get` (roles/pubsub.viewer), which the worker may
//!   lack: then it is unknown, not an error.
//! * [`is_permission_denied`], [`is_unimplemented`]: sorting SDK errors.

use std::fmt;
use std::time::Duration;

use google_cloud_gax::error::rpc::Code;

use crate::{Clients, Names};

/// A permission the worker needs, and the role that grants it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Needed {
    /// E.g. `pubsub.topics.publish`.
    pub permission: &'static str,
    /// The narrowest predefined role that grants it.
    pub role: &'static str,
}

/// Consuming the dispatch subscription.
pub const CONSUME: Needed = Needed {
    permission: "pubsub.subscriptions.consume",
    role: "roles/pubsub.subscriber",
};
/// Publishing to a topic.
pub const PUBLISH: Needed = Needed {
    permission: "pubsub.topics.publish",
    role: "roles/pubsub.publisher",
};

/// One resource's missing permission.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Missing {
    /// The resource's full name.
    pub resource: String,
    /// What is missing.
    pub needed: Needed,
    /// Why the worker needs it.
    pub purpose: &'static str,
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: missing or not visible: {} ({}); grant {} on it to the worker's service account",
            self.resource, self.needed.permission, self.purpose, self.needed.role
        )
    }
}

/// What the IAM preflight found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IamCheck {
    /// Every permission is granted.
    Granted {
        /// How many resources were checked.
        resources: usize,
    },
    /// Some are missing.
    Missing(Vec<Missing>),
    /// Pub/Sub does not implement IAM here (the emulator).
    Skipped,
}

/// The preflight could not ask.
#[derive(Debug, thiserror::Error)]
#[error("cannot test IAM permissions on {resource}: {source}")]
pub struct IamError {
    /// The resource asked about.
    pub resource: String,
    /// The SDK's error.
    #[source]
    pub source: google_cloud_pubsub::Error,
}

/// What the worker needs, resource by resource (publish on the results
/// topic only when `results.topic` is set).
pub fn needs(names: &Names) -> Vec<(String, Needed, &'static str)> {
    let mut needs = vec![
        (names.subscription.clone(), CONSUME, "pulling push requests"),
        (
            names.dead_letter_topic.clone(),
            PUBLISH,
            "dead-lettering with a reason",
        ),
        (
            names.requests_topic.clone(),
            PUBLISH,
            "republishing retryable remainders",
        ),
        (
            names.feedback_topic.clone(),
            PUBLISH,
            "reporting dead tokens",
        ),
    ];
    if let Some(results) = &names.results_topic {
        needs.push((results.clone(), PUBLISH, "publishing delivery results"));
    }
    needs
}

/// Asks Pub/Sub which of the worker's permissions its caller holds.
pub async fn preflight(clients: &Clients, names: &Names) -> Result<IamCheck, IamError> {
    let needs = needs(names);
    let mut missing = Vec::new();
    for (resource, needed, purpose) in &needs {
        let answer = clients
            .schemas
            .test_iam_permissions()
            .set_resource(resource.clone())
            .set_permissions([needed.permission])
            .send()
            .await;
        match answer {
            Ok(granted) => {
                if !granted.permissions.iter().any(|p| p == needed.permission) {
                    missing.push(Missing {
                        resource: resource.clone(),
                        needed: *needed,
                        purpose,
                    });
                }
            }
            Err(e) if is_unimplemented(&e) => return Ok(IamCheck::Skipped),
            Err(source) => {
                return Err(IamError {
                    resource: resource.clone(),
                    source,
                });
            }
        }
    }
    Ok(if missing.is_empty() {
        IamCheck::Granted {
            resources: needs.len(),
        }
    } else {
        IamCheck::Missing(missing)
    })
}

/// Who can read what is published to the feedback topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeedbackReaders {
    /// Subscriptions attached to the topic.
    pub subscriptions: usize,
    /// The topic's message retention, if any.
    pub retention: Option<Duration>,
}

impl FeedbackReaders {
    /// Whether events published now would be lost: no subscription reads
    /// them, and the topic keeps nothing for a later one to seek back to.
    pub fn drops_events(&self) -> bool {
        self.subscriptions == 0 && self.retention.is_none_or(|r| r.is_zero())
    }
}

/// Counts the feedback topic's subscriptions and reads its retention.
/// `Ok(None)` when the caller may not see them (no `pubsub.topics.get`).
pub async fn feedback_readers(
    clients: &Clients,
    topic: &str,
) -> Result<Option<FeedbackReaders>, google_cloud_pubsub::Error> {
    let t = match clients.topics.get_topic().set_topic(topic).send().await {
        Ok(t) => t,
        Err(e) if is_permission_denied(&e) => return Ok(None),
        Err(e) => return Err(e),
    };
    let retention = t
        .message_retention_duration
        .as_ref()
        .map(|d| Duration::from_secs(u64::try_from(d.seconds()).unwrap_or(0)));
    let mut subscriptions = 0;
    let mut page = String::new();
    loop {
        let listed = match clients
            .topics
            .list_topic_subscriptions()
            .set_topic(topic)
            .set_page_token(page.clone())
            .send()
            .await
        {
            Ok(l) => l,
            Err(e) if is_permission_denied(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        subscriptions += listed.subscriptions.len();
        if listed.next_page_token.is_empty() {
            break;
        }
        page = listed.next_page_token;
    }
    Ok(Some(FeedbackReaders {
        subscriptions,
        retention,
    }))
}

/// The IAM bindings a deployment needs, as gcloud commands, for everyone
/// involved: the worker, the Pub/Sub service agent (which forwards dead
/// letters, and encrypts with a CMEK key), producers and consumers. The
/// emulator has no IAM, so `provision` prints this for real Google Cloud.
pub fn bindings_help(config: &push_dispatch_config::Config) -> String {
    use std::fmt::Write;
    let project = &config.project_id;
    let p = &config.pubsub;
    let agent = "serviceAccount:service-PROJECT_NUMBER@gcp-sa-pubsub.iam.gserviceaccount.com";
    let topic = |t: &str, member: &str, role: &str| {
        format!(
            "  gcloud pubsub topics add-iam-policy-binding {t} --project={project} --member={member} --role={role}\n"
        )
    };
    let sub = |s: &str, member: &str, role: &str| {
        format!(
            "  gcloud pubsub subscriptions add-iam-policy-binding {s} --project={project} --member={member} --role={role}\n"
        )
    };
    let worker = "serviceAccount:WORKER_SA";
    let mut out = String::new();
    out.push_str(
        "IAM bindings on Google Cloud (the emulator has no IAM). WORKER_SA is the worker's\n",
    );
    out.push_str("service account (Workload Identity on GKE); PROJECT_NUMBER comes from\n");
    let _ = writeln!(
        out,
        "`gcloud projects describe {project} --format='value(projectNumber)'`."
    );
    let topics = if config.results.topic.is_some() {
        "four topics"
    } else {
        "three topics"
    };
    let _ = writeln!(
        out,
        "\nThe worker: consume its subscription, publish to the {topics}"
    );
    out.push_str(
        "(no pubsub.subscriptions.get needed; roles/pubsub.viewer on the feedback topic\n",
    );
    out.push_str("lets it warn when nobody reads the feedback; roles/pubsub.editor only if it provisions):\n");
    out.push_str(&sub(&p.subscription, worker, "roles/pubsub.subscriber"));
    for t in [
        Some(&p.dead_letter_topic),
        Some(&p.requests_topic),
        Some(&config.feedback.topic),
        config.results.topic.as_ref(),
    ]
    .into_iter()
    .flatten()
    {
        out.push_str(&topic(t, worker, "roles/pubsub.publisher"));
    }
    out.push_str(&topic(
        &config.feedback.topic,
        worker,
        "roles/pubsub.viewer",
    ));
    out.push_str("\nThe Pub/Sub service agent, which forwards dead letters:\n");
    out.push_str(&topic(
        &p.dead_letter_topic,
        agent,
        "roles/pubsub.publisher",
    ));
    out.push_str(&sub(&p.subscription, agent, "roles/pubsub.subscriber"));
    for c in &config.feedback.subscriptions {
        if let Some(dlq) = &c.dead_letter_topic {
            out.push_str(&topic(dlq, agent, "roles/pubsub.publisher"));
            out.push_str(&sub(&c.name, agent, "roles/pubsub.subscriber"));
        }
    }
    if let Some(key) = &p.kms_key_name {
        out.push_str("and, for the CMEK key of the topics:\n");
        let _ = writeln!(
            out,
            "  gcloud kms keys add-iam-policy-binding {key} --member={agent} --role=roles/cloudkms.cryptoKeyEncrypterDecrypter"
        );
    }
    out.push_str("\nProducers (PRODUCER_SA), which publish push requests:\n");
    out.push_str(&topic(
        &p.requests_topic,
        "serviceAccount:PRODUCER_SA",
        "roles/pubsub.publisher",
    ));
    out.push_str("\nConsumers of the feedback (CONSUMER_SA, e.g. the routing service), on their subscription:\n");
    if config.feedback.subscriptions.is_empty() {
        out.push_str(&sub(
            "CONSUMER_SUBSCRIPTION",
            "serviceAccount:CONSUMER_SA",
            "roles/pubsub.subscriber",
        ));
    }
    for c in &config.feedback.subscriptions {
        out.push_str(&sub(
            &c.name,
            "serviceAccount:CONSUMER_SA",
            "roles/pubsub.subscriber",
        ));
    }
    out
}

/// Whether a Pub/Sub error is PERMISSION_DENIED (gRPC code or HTTP 403).
pub fn is_permission_denied(e: &google_cloud_pubsub::Error) -> bool {
    e.status().map(|s| s.code) == Some(Code::PermissionDenied) || e.http_status_code() == Some(403)
}

/// Whether a Pub/Sub error is UNIMPLEMENTED (gRPC code or HTTP 501), as the
/// emulator answers IAM calls.
pub fn is_unimplemented(e: &google_cloud_pubsub::Error) -> bool {
    e.status().map(|s| s.code) == Some(Code::Unimplemented) || e.http_status_code() == Some(501)
}

#[cfg(test)]
mod tests {
    use super::*;
    use google_cloud_gax::error::rpc::Status;

    fn error(code: Code) -> google_cloud_pubsub::Error {
        google_cloud_pubsub::Error::service(Status::default().set_code(code))
    }

    #[test]
    fn errors_are_sorted_by_code() {
        assert!(is_permission_denied(&error(Code::PermissionDenied)));
        assert!(!is_permission_denied(&error(Code::NotFound)));
        assert!(is_unimplemented(&error(Code::Unimplemented)));
        let http_501 =
            google_cloud_pubsub::Error::http(501, Default::default(), Default::default());
        assert!(is_unimplemented(&http_501));
    }

    #[test]
    fn the_worker_needs_consume_on_its_subscription_and_publish_on_three_topics() {
        let names = Names::from_config(&push_dispatch_config::Config::default());
        let needs = needs(&names);
        assert_eq!(needs.len(), 4);
        assert_eq!(needs[0].1, CONSUME);
        assert!(needs[1..].iter().all(|(_, n, _)| *n == PUBLISH));
        let missing = Missing {
            resource: names.feedback_topic.clone(),
            needed: PUBLISH,
            purpose: "reporting dead tokens",
        };
        let text = missing.to_string();
        assert!(
            text.contains("roles/pubsub.publisher") && text.contains("push-feedback"),
            "{text}"
        );
    }

    #[test]
    fn the_bindings_cover_worker_service_agent_producers_and_consumers() {
        let mut config = push_dispatch_config::Config::default();
        config.pubsub.kms_key_name = Some("projects/p/locations/l/keyRings/r/cryptoKeys/k".into());
        config
            .feedback
            .subscriptions
            .push(push_dispatch_config::ConsumerSubscription {
                name: "routing".into(),
                filter: None,
                ack_deadline: Duration::from_secs(60),
                dead_letter_topic: Some("routing-dlq".into()),
                retention: None,
            });
        let text = bindings_help(&config);
        for line in [
            "subscriptions add-iam-policy-binding push-requests-dispatch --project=local-project --member=serviceAccount:WORKER_SA --role=roles/pubsub.subscriber",
            "topics add-iam-policy-binding push-feedback --project=local-project --member=serviceAccount:WORKER_SA --role=roles/pubsub.publisher",
            "topics add-iam-policy-binding push-requests-dlq --project=local-project --member=serviceAccount:service-PROJECT_NUMBER@gcp-sa-pubsub.iam.gserviceaccount.com --role=roles/pubsub.publisher",
            "topics add-iam-policy-binding routing-dlq",
            "roles/cloudkms.cryptoKeyEncrypterDecrypter",
            "topics add-iam-policy-binding push-requests --project=local-project --member=serviceAccount:PRODUCER_SA --role=roles/pubsub.publisher",
            "subscriptions add-iam-policy-binding routing --project=local-project --member=serviceAccount:CONSUMER_SA --role=roles/pubsub.subscriber",
        ] {
            assert!(text.contains(line), "{line}\n{text}");
        }
        assert!(
            !text.contains("roles/pubsub.editor --"),
            "provisioning rights are a note, not a binding"
        );
        assert!(!text.contains("push-results"), "results off: no binding");
        config.results.topic = Some("push-results".into());
        let text = bindings_help(&config);
        assert!(
            text.contains("topics add-iam-policy-binding push-results --project=local-project --member=serviceAccount:WORKER_SA --role=roles/pubsub.publisher"),
            "{text}"
        );
    }

    #[test]
    fn the_worker_needs_publish_on_the_results_topic_when_set() {
        let mut config = push_dispatch_config::Config::default();
        config.results.topic = Some("push-results".into());
        let needs = needs(&Names::from_config(&config));
        assert_eq!(needs.len(), 5);
        let last = needs.last().expect("a need");
        assert_eq!(last.0, "projects/local-project/topics/push-results");
        assert_eq!(last.1, PUBLISH);
    }

    #[test]
    fn a_topic_without_subscriptions_or_retention_drops_events() {
        let none = FeedbackReaders {
            subscriptions: 0,
            retention: None,
        };
        assert!(none.drops_events());
        let retained = FeedbackReaders {
            retention: Some(Duration::from_secs(600)),
            ..none.clone()
        };
        assert!(!retained.drops_events());
        let read = FeedbackReaders {
            subscriptions: 1,
            ..none
        };
        assert!(!read.drops_events());
    }
}
