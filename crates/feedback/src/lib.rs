//! `TokenInvalidated` events: building them and publishing them to the
//! `push-feedback` topic so that the routing service can delete dead tokens.
//!
//! [`token_invalidated`] builds one event from a dead-token answer and what
//! the worker knows of the request and of the sender ([`Sender`]: APNs topic
//! and environment, or Firebase project). It is pure, so the worker's plan
//! (which decides *whether* an event is emitted) stays pure too.
//!
//! Events are delivered at least once; `event_id` is derived from the source
//! message id, platform and token, so a redelivered source message produces
//! the same ids and consumers can deduplicate. [`FeedbackPublisher::publish_all`]
//! returns only once Pub/Sub confirmed every event: the worker acks the
//! source message after that, never before (SPEC §5.5).
//!
//! Each event carries the attributes `event_type`, `platform`, `app` and
//! `reason` so that subscribers can filter on them.

use std::collections::HashMap;
use std::time::SystemTime;

use push_dispatch_proto::attributes as attr;
use push_dispatch_proto::pbjson_types::Timestamp;
use push_dispatch_proto::v1::{Platform, PushRequest, Reason, TokenInvalidated};
use push_dispatch_proto::{Encoding, encode_message};
use push_dispatch_subscriber::publish::{PublishError, publish_confirmed};
use push_dispatch_subscriber::pubsub::client::Publisher;
use sha2::{Digest, Sha256};

/// The `event_type` attribute of every feedback event.
pub const EVENT_TYPE: &str = "push.v1.TokenInvalidated";

/// Publishing feedback failed; the source message must not be acked.
#[derive(Debug, thiserror::Error)]
pub enum FeedbackError {
    /// An event could not be encoded.
    #[error("cannot encode a TokenInvalidated event: {0}")]
    Encode(#[from] push_dispatch_proto::EncodeError),
    /// Pub/Sub did not confirm an event.
    #[error("feedback event not confirmed: {0}")]
    Publish(#[from] PublishError),
}

/// Who sent a push, as feedback events name it: what the routing service
/// needs to know which registration a dead token belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sender {
    /// Apple: the app's topic (bundle id) and the APNs environment.
    Apns {
        /// `apps[].apns.topic`.
        topic: String,
        /// `production` or `sandbox`.
        environment: String,
    },
    /// Firebase: the project.
    Fcm {
        /// `apps[].fcm.project_id`.
        project: String,
    },
}

impl Sender {
    /// The platform this sender pushes to.
    pub fn platform(&self) -> Platform {
        match self {
            Sender::Apns { .. } => Platform::Apns,
            Sender::Fcm { .. } => Platform::Fcm,
        }
    }
}

/// A provider's word that a token is dead.
#[derive(Clone, Copy, Debug)]
pub struct DeadToken<'a> {
    /// The device token.
    pub token: &'a str,
    /// Normalised reason.
    pub reason: Reason,
    /// The provider's own reason string, e.g. `Unregistered`.
    pub provider_reason: &'a str,
    /// When the provider says the token stopped being valid, if it says.
    pub invalidated_at: Option<SystemTime>,
}

/// Builds the `TokenInvalidated` event for one dead token of `request`, sent
/// by `app` through `sender`, found in the message `source_message_id` (the
/// original request's id, which keeps `event_id` stable across republishes)
/// and observed at `observed`.
pub fn token_invalidated(
    app: &str,
    sender: &Sender,
    dead: DeadToken<'_>,
    request: &PushRequest,
    source_message_id: &str,
    observed: SystemTime,
) -> TokenInvalidated {
    let platform = sender.platform();
    let (apns_topic, fcm_project, environment) = match sender {
        Sender::Apns { topic, environment } => (topic.clone(), String::new(), environment.clone()),
        // FCM has one environment.
        Sender::Fcm { project } => (String::new(), project.clone(), "production".to_string()),
    };
    TokenInvalidated {
        event_id: event_id(source_message_id, platform, dead.token),
        platform: platform as i32,
        token: dead.token.to_string(),
        app: app.to_string(),
        environment,
        apns_topic,
        fcm_project,
        reason: dead.reason as i32,
        provider_reason: dead.provider_reason.to_string(),
        invalidated_at: Some(timestamp(dead.invalidated_at.unwrap_or(observed))),
        observed_at: Some(timestamp(observed)),
        recipient: request.recipient.clone(),
        request_id: request.request_id.clone(),
        source_message_id: source_message_id.to_string(),
    }
}

/// Deterministic event id: the same source message and token give the same id.
pub fn event_id(source_message_id: &str, platform: Platform, token: &str) -> String {
    let mut h = Sha256::new();
    h.update(source_message_id.as_bytes());
    h.update([0]);
    h.update(platform.label().as_bytes());
    h.update([0]);
    h.update(token.as_bytes());
    hex::encode(&h.finalize()[..16])
}

/// Converts a wall-clock time to a protobuf timestamp.
pub fn timestamp(t: SystemTime) -> Timestamp {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => Timestamp {
            seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
        },
        Err(_) => Timestamp::default(),
    }
}

/// Encodes an event. JSON timestamps are written `Z`-normalized, as the
/// proto3 JSON mapping requires of generated output (pbjson writes
/// `+00:00`, which strict parsers and string comparisons downstream trip on).
pub fn encode_event(
    event: &TokenInvalidated,
    encoding: Encoding,
) -> Result<Vec<u8>, push_dispatch_proto::EncodeError> {
    if encoding == Encoding::Binary {
        return encode_message(event, encoding);
    }
    let mut json = serde_json::to_value(event)?;
    for field in ["invalidatedAt", "observedAt"] {
        if let Some(serde_json::Value::String(t)) = json.get_mut(field)
            && let Some(utc) = t.strip_suffix("+00:00")
        {
            *t = format!("{utc}Z");
        }
    }
    Ok(serde_json::to_vec(&json)?)
}

/// Pub/Sub attributes of an event, for subscription filters.
pub fn attributes(event: &TokenInvalidated, encoding: Encoding) -> HashMap<String, String> {
    HashMap::from([
        (attr::EVENT_TYPE.to_string(), EVENT_TYPE.to_string()),
        (
            attr::PLATFORM.to_string(),
            event.platform().label().to_string(),
        ),
        (attr::APP.to_string(), event.app.clone()),
        (
            attr::REASON.to_string(),
            event.reason().as_str_name().to_string(),
        ),
        (
            attr::CONTENT_TYPE.to_string(),
            encoding.content_type().to_string(),
        ),
    ])
}

/// Publishes feedback events to the feedback topic.
#[derive(Clone, Debug)]
pub struct FeedbackPublisher {
    publisher: Publisher,
    topic: String,
    encoding: Encoding,
}

impl FeedbackPublisher {
    /// A publisher for `topic` (full name) with the given body encoding.
    pub fn new(publisher: Publisher, topic: String, encoding: Encoding) -> FeedbackPublisher {
        FeedbackPublisher {
            publisher,
            topic,
            encoding,
        }
    }

    /// Publishes every event (batched by the client) and waits until Pub/Sub
    /// confirmed all of them. Fails if any one failed.
    pub async fn publish_all(&self, events: &[TokenInvalidated]) -> Result<(), FeedbackError> {
        let mut pending = Vec::with_capacity(events.len());
        for event in events {
            let body = encode_event(event, self.encoding)?;
            let mut attrs = attributes(event, self.encoding);
            push_dispatch_telemetry::propagation::inject_current(&mut attrs);
            pending.push(publish_confirmed(&self.publisher, &self.topic, body, attrs));
        }
        for result in futures::future::join_all(pending).await {
            result?;
        }
        Ok(())
    }
}

/// Keeps the first item per event (platform, token): a token listed twice in
/// one request is reported once. `event` finds the event in an item.
pub fn dedup<T>(items: Vec<T>, event: impl Fn(&T) -> &TokenInvalidated) -> Vec<T> {
    let mut seen = std::collections::HashSet::new();
    items
        .into_iter()
        .filter(|item| {
            let e = event(item);
            seen.insert((e.platform, e.token.clone()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_are_deterministic_and_distinct() {
        let a = event_id("m1", Platform::Apns, "tok");
        assert_eq!(a, event_id("m1", Platform::Apns, "tok"));
        assert_eq!(a.len(), 32);
        assert_ne!(a, event_id("m2", Platform::Apns, "tok"));
        assert_ne!(a, event_id("m1", Platform::Fcm, "tok"));
        assert_ne!(a, event_id("m1", Platform::Apns, "tok2"));
    }

    #[test]
    fn attributes_allow_subscription_filters() {
        let event = TokenInvalidated {
            platform: Platform::Apns as i32,
            app: "main".into(),
            reason: Reason::Unregistered as i32,
            ..Default::default()
        };
        let attrs = attributes(&event, Encoding::Json);
        assert_eq!(attrs["event_type"], "push.v1.TokenInvalidated");
        assert_eq!(attrs["platform"], "apns");
        assert_eq!(attrs["app"], "main");
        assert_eq!(attrs["reason"], "REASON_UNREGISTERED");
    }

    #[test]
    fn json_events_carry_enum_names() {
        let event = TokenInvalidated {
            platform: Platform::Fcm as i32,
            reason: Reason::SenderIdMismatch as i32,
            observed_at: Some(timestamp(
                SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1),
            )),
            ..Default::default()
        };
        let json: serde_json::Value =
            serde_json::from_slice(&encode_event(&event, Encoding::Json).expect("encodes"))
                .expect("json");
        assert_eq!(json["platform"], "PLATFORM_FCM");
        assert_eq!(json["reason"], "REASON_SENDER_ID_MISMATCH");
        assert_eq!(json["observedAt"], "1970-01-01T00:00:01Z", "Z-normalized");
        let back: TokenInvalidated = serde_json::from_value(json).expect("round trip");
        assert_eq!(back.observed_at, event.observed_at);
    }

    #[test]
    fn an_event_names_the_sender_and_echoes_the_request() {
        let request = PushRequest {
            request_id: "order-42".into(),
            recipient: "user-7".into(),
            ..Default::default()
        };
        let observed = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(100);
        let apns = Sender::Apns {
            topic: "com.example.app".into(),
            environment: "sandbox".into(),
        };
        let dead = DeadToken {
            token: "dead0000",
            reason: Reason::Unregistered,
            provider_reason: "Unregistered",
            invalidated_at: Some(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(50)),
        };
        let e = token_invalidated("main", &apns, dead, &request, "m1", observed);
        assert_eq!(e.event_id, event_id("m1", Platform::Apns, "dead0000"));
        assert_eq!((e.platform(), e.app.as_str()), (Platform::Apns, "main"));
        assert_eq!(
            (e.apns_topic.as_str(), e.environment.as_str()),
            ("com.example.app", "sandbox")
        );
        assert!(e.fcm_project.is_empty());
        assert_eq!(
            e.invalidated_at,
            Some(Timestamp {
                seconds: 50,
                nanos: 0
            })
        );
        assert_eq!(
            e.observed_at,
            Some(Timestamp {
                seconds: 100,
                nanos: 0
            })
        );
        assert_eq!(
            (e.request_id.as_str(), e.recipient.as_str()),
            ("order-42", "user-7")
        );
        assert_eq!(e.source_message_id, "m1");
        let fcm = Sender::Fcm {
            project: "p".into(),
        };
        let e = token_invalidated(
            "main",
            &fcm,
            DeadToken {
                invalidated_at: None,
                ..dead
            },
            &request,
            "m1",
            observed,
        );
        assert_eq!(
            (e.fcm_project.as_str(), e.environment.as_str()),
            ("p", "production")
        );
        assert_eq!(
            e.invalidated_at, e.observed_at,
            "observed time when the provider gives none"
        );
    }

    #[test]
    fn dedup_keeps_one_event_per_token() {
        let e = |t: &str| TokenInvalidated {
            token: t.into(),
            platform: 1,
            ..Default::default()
        };
        assert_eq!(dedup(vec![e("a"), e("b"), e("a")], |e| e).len(), 2);
    }
}
