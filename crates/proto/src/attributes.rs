//! Pub/Sub attributes of push-dispatch, in one place: their names, the
//! `push_error` codes, and the rules for which attributes travel onto what we
//! publish (dead letters, republished remainders) and which a `dlq replay`
//! clears.
//!
//! Every crate that reads or writes one of these attributes names it through
//! this module, so that a typo is a compile error and a reader finds the
//! whole set here. Pure functions over maps: no I/O.

use std::collections::HashMap;

/// Producers may set it to say how the body is encoded (SPEC §2).
pub const CONTENT_TYPE: &str = "content-type";
/// Pub/Sub sets it on messages of topics with a schema (`JSON` or `BINARY`).
pub const SCHEMA_ENCODING: &str = "googclient_schemaencoding";
/// Prefix of the attribute keys Pub/Sub reserves for Google (`goog…`: its
/// own `googclient_schemaencoding`, the client libraries' `googclient_`
/// trace context, and whatever it adds later).
pub const RESERVED_PREFIX: &str = "goog";
/// Prefix of the attributes Pub/Sub's DeadLetterPolicy adds to dead letters.
pub const DEAD_LETTER_PREFIX: &str = "CloudPubSubDeadLetter";
/// How many deliveries Pub/Sub made before its DeadLetterPolicy forwarded a message.
pub const DEAD_LETTER_DELIVERY_COUNT: &str = "CloudPubSubDeadLetterSourceDeliveryCount";

/// Short error code on dead-lettered messages ([`PushError`]).
pub const PUSH_ERROR: &str = "push_error";
/// Human-readable error detail (≤ [`MAX_DETAIL_BYTES`]) on dead-lettered messages.
pub const PUSH_ERROR_DETAIL: &str = "push_error_detail";
/// Id of the message a dead letter or republished request came from.
pub const SOURCE_MESSAGE_ID: &str = "source_message_id";
/// How many times this request was (re)published; absent = 1.
pub const PUSH_ATTEMPT: &str = "push_attempt";
/// RFC 3339 publish time of the first publish of this request.
pub const FIRST_PUBLISH_TIME: &str = "push_first_publish_time";
/// Pub/Sub delivery attempt at which we dead-lettered.
pub const DELIVERY_ATTEMPT: &str = "push_delivery_attempt";
/// RFC 3339 time before which a republished request must not be sent (a
/// Retry-After, a rate limit or an open circuit that outlasted the worker's
/// park); the worker honours it on receipt.
pub const NOT_BEFORE: &str = "push_not_before";
/// How many times this request was put off only to wait (not failures);
/// absent = 0. Past `dispatch.max_deferrals` it is dead-lettered.
pub const DEFERRALS: &str = "push_deferrals";
/// A replayed request carries the id of the dead letter it came from.
pub const REPLAYED_FROM: &str = "push_replayed_from";

/// Feedback events: always `push.v1.TokenInvalidated`; results: `push.v1.PushResult`.
pub const EVENT_TYPE: &str = "event_type";
/// Feedback events: `apns` or `fcm`.
pub const PLATFORM: &str = "platform";
/// Feedback events and results: the configured app name.
pub const APP: &str = "app";
/// Feedback events: the `Reason` enum name.
pub const REASON: &str = "reason";
/// Results: `delivered` (every listed target), `partial` or `failed` (none).
pub const OUTCOME: &str = "outcome";
/// Results: the request's `request_id`.
pub const REQUEST_ID: &str = "request_id";
/// Results: `true` when nothing of the request was carried forward.
pub const COMPLETE: &str = "complete";
/// Longest attribute value Pub/Sub accepts, in bytes.
pub const MAX_ATTRIBUTE_BYTES: usize = 1024;

/// Longest `push_error_detail`, in bytes (Pub/Sub caps values at 1,024).
pub const MAX_DETAIL_BYTES: usize = 1024;

/// Most producer attributes carried onto what we publish: Pub/Sub allows 100
/// per message, and ours (error, attempt, first publish, content type, trace
/// context) take up to 11. Without this cap a producer's message with many
/// attributes could never be dead-lettered or republished, and would be
/// redelivered (and its delivered targets resent) until Pub/Sub gave up.
pub const MAX_CARRIED: usize = 100 - 16;

/// Why a message (or some of its targets) went to the dead-letter topic:
/// the value of [`PUSH_ERROR`]. A closed set: dashboards, alerts and
/// `dlq replay --push-error` rely on these exact codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PushError {
    /// The body is not proto3 JSON for `PushRequest`.
    DecodeJson,
    /// The body is not binary protobuf for `PushRequest`.
    DecodeBinary,
    /// The body is larger than a Pub/Sub message can be.
    TooLarge,
    /// The request names no target.
    NoTargets,
    /// The request names more targets than allowed.
    TooManyTargets,
    /// The request names an app that is not configured.
    UnknownApp,
    /// A field is longer than its limit.
    FieldTooLong,
    /// `ttl` is negative or malformed.
    InvalidTtl,
    /// A target has no (known) platform.
    UnspecifiedPlatform,
    /// A target's token does not have the shape its platform issues.
    MalformedToken,
    /// The app has no block for a target's platform.
    PlatformNotConfigured,
    /// The payload is over the provider's limit.
    PayloadTooLarge,
    /// The provider refused the push for good.
    ProviderRejected,
    /// Retries ran out (delivery attempts or `dispatch.max_republish`).
    RetriesExhausted,
    /// Dead-token reports held by the mass-invalidation guard.
    InvalidationGuard,
}

impl PushError {
    /// Every code, in declaration order.
    pub const ALL: [PushError; 15] = [
        PushError::DecodeJson,
        PushError::DecodeBinary,
        PushError::TooLarge,
        PushError::NoTargets,
        PushError::TooManyTargets,
        PushError::UnknownApp,
        PushError::FieldTooLong,
        PushError::InvalidTtl,
        PushError::UnspecifiedPlatform,
        PushError::MalformedToken,
        PushError::PlatformNotConfigured,
        PushError::PayloadTooLarge,
        PushError::ProviderRejected,
        PushError::RetriesExhausted,
        PushError::InvalidationGuard,
    ];

    /// The attribute value (and metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            PushError::DecodeJson => "decode_json",
            PushError::DecodeBinary => "decode_binary",
            PushError::TooLarge => "too_large",
            PushError::NoTargets => "no_targets",
            PushError::TooManyTargets => "too_many_targets",
            PushError::UnknownApp => "unknown_app",
            PushError::FieldTooLong => "field_too_long",
            PushError::InvalidTtl => "invalid_ttl",
            PushError::UnspecifiedPlatform => "unspecified_platform",
            PushError::MalformedToken => "malformed_token",
            PushError::PlatformNotConfigured => "platform_not_configured",
            PushError::PayloadTooLarge => "payload_too_large",
            PushError::ProviderRejected => "provider_rejected",
            PushError::RetriesExhausted => "retries_exhausted",
            PushError::InvalidationGuard => "invalidation_guard",
        }
    }

    /// The code an attribute value names, if it is one of ours.
    pub fn parse(value: &str) -> Option<PushError> {
        PushError::ALL.into_iter().find(|c| c.as_str() == value)
    }
}

impl std::fmt::Display for PushError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether an attribute belongs to Pub/Sub (reserved `goog…` keys,
/// DeadLetterPolicy bookkeeping): never copied onto what we publish (SPEC §9
/// "Dead letters": the original attributes minus `goog*` and
/// `CloudPubSubDeadLetter*`).
pub fn is_pubsub_own(key: &str) -> bool {
    key.starts_with(RESERVED_PREFIX) || key.starts_with(DEAD_LETTER_PREFIX)
}

/// Whether an attribute is ours and describes one dead-lettering: not
/// carried onto a new dead letter or republished request (they get fresh
/// values), and dropped by a replay.
fn is_error_attribute(key: &str) -> bool {
    matches!(key, PUSH_ERROR | PUSH_ERROR_DETAIL | DELIVERY_ATTEMPT)
}

/// Attributes copied from a source message onto what we publish from it
/// (dead letters, republished remainders): all but Pub/Sub's own and our
/// error attributes, at most [`MAX_CARRIED`] of them (the first by key).
/// Returns the carried map and how many were dropped for room.
pub fn carried(attributes: &HashMap<String, String>) -> (HashMap<String, String>, usize) {
    let mut carried: Vec<(&String, &String)> = attributes
        .iter()
        .filter(|(k, _)| !is_pubsub_own(k) && !is_error_attribute(k))
        .collect();
    let mut dropped = 0;
    if carried.len() > MAX_CARRIED {
        carried.sort_unstable_by_key(|(k, _)| *k);
        dropped = carried.len() - MAX_CARRIED;
        carried.truncate(MAX_CARRIED);
    }
    let map = carried
        .into_iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    (map, dropped)
}

/// Attributes a `dlq replay` drops: our error, attempt and deferral attributes,
/// Pub/Sub's dead-letter bookkeeping and its reserved keys.
/// [`FIRST_PUBLISH_TIME`] stays, so that the request's ttl still counts from
/// its first publish.
pub fn is_cleared_on_replay(key: &str) -> bool {
    is_error_attribute(key)
        || matches!(key, PUSH_ATTEMPT | NOT_BEFORE | DEFERRALS)
        || is_pubsub_own(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn codes_round_trip_and_are_distinct() {
        let mut seen = std::collections::HashSet::new();
        for code in PushError::ALL {
            assert_eq!(PushError::parse(code.as_str()), Some(code));
            assert!(seen.insert(code.as_str()), "{code} twice");
        }
        assert_eq!(PushError::parse("nope"), None);
        assert_eq!(PushError::RetriesExhausted.to_string(), "retries_exhausted");
    }

    #[test]
    fn reserved_and_error_attributes_are_not_carried() {
        let attrs = map(&[
            ("googclient_schemaencoding", "BINARY"),
            ("push_error", "x"),
            ("CloudPubSubDeadLetterSourceDeliveryCount", "5"),
            ("googclient_traceparent", "00-x"),
            ("google_future", "x"),
            ("trace", "keep"),
            ("content-type", "application/x-protobuf"),
        ]);
        let (carried, dropped) = carried(&attrs);
        assert_eq!(carried.len(), 2);
        assert_eq!(carried["trace"], "keep");
        assert_eq!(carried[CONTENT_TYPE], "application/x-protobuf");
        assert_eq!(dropped, 0);
    }

    #[test]
    fn a_crowd_of_producer_attributes_is_cut_to_leave_room_for_ours() {
        let attrs: HashMap<String, String> = (0..100)
            .map(|i| (format!("k{i:03}"), "v".to_string()))
            .collect();
        let (carried, dropped) = carried(&attrs);
        assert_eq!(carried.len(), MAX_CARRIED);
        assert_eq!(dropped, 100 - MAX_CARRIED);
        assert!(carried.contains_key("k000") && !carried.contains_key("k099"));
    }

    #[test]
    fn a_replay_clears_our_error_and_attempt_attributes_but_keeps_the_first_publish() {
        for key in [
            PUSH_ERROR,
            PUSH_ERROR_DETAIL,
            PUSH_ATTEMPT,
            DELIVERY_ATTEMPT,
            "CloudPubSubDeadLetterSourceSubscription",
            "googclient_schemaencoding",
            "goog_anything",
        ] {
            assert!(is_cleared_on_replay(key), "{key}");
        }
        for key in [
            FIRST_PUBLISH_TIME,
            SOURCE_MESSAGE_ID,
            CONTENT_TYPE,
            "traceparent",
        ] {
            assert!(!is_cleared_on_replay(key), "{key}");
        }
    }
}
