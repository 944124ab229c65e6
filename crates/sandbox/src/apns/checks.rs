//! The syntax checks of an APNs request, each answering Apple's reason: the
//! `apns-*` headers (push type, topic, priority, expiration, collapse id),
//! the payload (a JSON object with an `aps` object, within the size limit),
//! the device token, the topic against the configured bundle id, and
//! `apns-id`. The payload is validated without building a JSON tree.

use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderName};
use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

use super::reason::Reason;

/// Payload limit for every push type but voip.
pub(super) const PAYLOAD_LIMIT: usize = 4096;
/// Payload limit for voip pushes.
pub(super) const VOIP_PAYLOAD_LIMIT: usize = 5120;
/// Longest `apns-collapse-id`.
const COLLAPSE_ID_LIMIT: usize = 64;
/// Longest device token, in hex digits.
const DEVICE_TOKEN_MAX_HEX: usize = 200;

pub(super) const APNS_ID: HeaderName = HeaderName::from_static("apns-id");
pub(super) const APNS_TOPIC: HeaderName = HeaderName::from_static("apns-topic");
pub(super) const APNS_PUSH_TYPE: HeaderName = HeaderName::from_static("apns-push-type");
pub(super) const APNS_PRIORITY: HeaderName = HeaderName::from_static("apns-priority");
pub(super) const APNS_EXPIRATION: HeaderName = HeaderName::from_static("apns-expiration");
pub(super) const APNS_COLLAPSE_ID: HeaderName = HeaderName::from_static("apns-collapse-id");

/// Headers that must not be repeated.
pub(super) const SINGLE_HEADERS: [HeaderName; 7] = [
    AUTHORIZATION,
    APNS_ID,
    APNS_TOPIC,
    APNS_PUSH_TYPE,
    APNS_PRIORITY,
    APNS_EXPIRATION,
    APNS_COLLAPSE_ID,
];

/// `apns-push-type` values and the topic suffix each needs.
const PUSH_TYPES: [(&str, &str); 9] = [
    ("alert", ""),
    ("background", ""),
    ("voip", ".voip"),
    ("complication", ".complication"),
    ("fileprovider", ".pushkit.fileprovider"),
    ("mdm", ""),
    ("liveactivity", ".push-type.liveactivity"),
    ("location", ".location-query"),
    ("pushtotalk", ".voip-ptt"),
];

/// What a request asked for, once its headers are checked.
pub(super) struct Checked<'a> {
    pub push_type: &'static str,
    pub topic: &'a str,
}

fn header_str<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Result<Option<&'a str>, ()> {
    headers
        .get(name)
        .map(|v| v.to_str().map_err(|_| ()))
        .transpose()
}

pub(super) fn check_headers(headers: &HeaderMap) -> Result<Checked<'_>, Reason> {
    let push_type = match header_str(headers, &APNS_PUSH_TYPE) {
        Ok(None) => "alert",
        Ok(Some(v)) => PUSH_TYPES
            .iter()
            .find(|(name, _)| *name == v)
            .map(|(name, _)| *name)
            .ok_or(Reason::InvalidPushType)?,
        Err(()) => return Err(Reason::InvalidPushType),
    };
    let topic = match header_str(headers, &APNS_TOPIC) {
        Ok(None) => return Err(Reason::MissingTopic),
        Ok(Some("")) => return Err(Reason::MissingTopic),
        Ok(Some(t)) if is_bundle_id(t) => t,
        _ => return Err(Reason::BadTopic),
    };
    let priority = match header_str(headers, &APNS_PRIORITY) {
        Ok(None) => 10,
        Ok(Some("10")) => 10,
        Ok(Some("5")) => 5,
        Ok(Some("1")) => 1,
        _ => return Err(Reason::BadPriority),
    };
    if push_type == "background" && priority != 5 {
        return Err(Reason::BadPriority);
    }
    match header_str(headers, &APNS_EXPIRATION) {
        Ok(None) => {}
        Ok(Some(v)) if !v.is_empty() && v.len() <= 19 && v.bytes().all(|b| b.is_ascii_digit()) => {}
        _ => return Err(Reason::BadExpirationDate),
    }
    if headers
        .get(&APNS_COLLAPSE_ID)
        .is_some_and(|v| v.len() > COLLAPSE_ID_LIMIT)
    {
        return Err(Reason::BadCollapseId);
    }
    Ok(Checked { push_type, topic })
}

/// True when `topic` is `configured` plus `push_type`'s suffix.
pub(super) fn topic_matches(configured: &str, topic: &str, push_type: &str) -> bool {
    let suffix = PUSH_TYPES
        .iter()
        .find(|(name, _)| *name == push_type)
        .map_or("", |(_, suffix)| *suffix);
    topic
        .strip_prefix(configured)
        .is_some_and(|rest| rest == suffix)
}

/// A plausible bundle id (with or without a push-type suffix).
pub(super) fn is_bundle_id(topic: &str) -> bool {
    !topic.is_empty()
        && topic.len() <= 255
        && topic.split('.').all(|segment| {
            !segment.is_empty()
                && segment
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// An even number of hex digits, at most 200.
pub(super) fn is_device_token(token: &str) -> bool {
    token.len().is_multiple_of(2)
        && token.len() <= DEVICE_TOKEN_MAX_HEX
        && token.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A canonical 8-4-4-4-12 UUID.
pub(super) fn is_uuid(v: &[u8]) -> bool {
    v.len() == 36
        && v.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

pub(super) fn check_payload(body: &[u8], limit: usize) -> Result<(), Reason> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(Reason::PayloadEmpty);
    }
    if body.len() > limit {
        return Err(Reason::PayloadTooLarge);
    }
    match serde_json::from_slice::<ApsPayload>(body) {
        Ok(ApsPayload { has_aps: true }) => Ok(()),
        _ => Err(Reason::BadPayload),
    }
}

/// Validates a payload without building it: a JSON object whose `aps` is an object.
struct ApsPayload {
    has_aps: bool,
}

impl<'de> Deserialize<'de> for ApsPayload {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PayloadVisitor;
        impl<'de> Visitor<'de> for PayloadVisitor {
            type Value = ApsPayload;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object with an `aps` object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ApsPayload, A::Error> {
                let mut has_aps = false;
                while let Some(key) = map.next_key::<Key>()? {
                    if key.is_aps {
                        map.next_value::<ObjectOnly>()?;
                        has_aps = true;
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(ApsPayload { has_aps })
            }
        }
        deserializer.deserialize_map(PayloadVisitor)
    }
}

/// An object key, only compared with `aps` (no allocation for plain keys).
struct Key {
    is_aps: bool,
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
                Ok(Key { is_aps: v == "aps" })
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// Any JSON object, contents ignored; anything else is an error.
struct ObjectOnly;

impl<'de> Deserialize<'de> for ObjectOnly {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor;
        impl<'de> Visitor<'de> for ObjectVisitor {
            type Value = ObjectOnly;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ObjectOnly, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(ObjectOnly)
            }
        }
        deserializer.deserialize_map(ObjectVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_needs_an_aps_object() {
        assert_eq!(check_payload(br#"{"aps":{}}"#, 4096), Ok(()));
        assert_eq!(
            check_payload(br#"{"x":[1,{"a":"b"}],"aps":{"alert":"hi"}}"#, 4096),
            Ok(())
        );
        assert_eq!(check_payload(b"", 4096), Err(Reason::PayloadEmpty));
        assert_eq!(check_payload(b"  \n", 4096), Err(Reason::PayloadEmpty));
        assert_eq!(
            check_payload(br#"{"aps":1}"#, 4096),
            Err(Reason::BadPayload)
        );
        assert_eq!(check_payload(br#"{"x":1}"#, 4096), Err(Reason::BadPayload));
        assert_eq!(check_payload(br#"[1]"#, 4096), Err(Reason::BadPayload));
        assert_eq!(
            check_payload(br#"{"aps":{}} x"#, 4096),
            Err(Reason::BadPayload)
        );
        assert_eq!(
            check_payload(br#"{"\u0061ps":{}}"#, 4096),
            Ok(()),
            "escaped keys are compared decoded"
        );
        let big = format!(r#"{{"aps":{{}},"x":"{}"}}"#, "a".repeat(5000));
        assert_eq!(
            check_payload(big.as_bytes(), 4096),
            Err(Reason::PayloadTooLarge)
        );
    }

    #[test]
    fn token_topic_and_id_syntax() {
        assert!(is_device_token("deadbeef"));
        assert!(!is_device_token("deadbee"));
        assert!(!is_device_token("zz"));
        assert!(is_bundle_id("com.example.app.voip"));
        assert!(!is_bundle_id("com..example"));
        assert!(!is_bundle_id("com example"));
        assert!(is_uuid(b"123e4567-e89b-12d3-a456-426655440000"));
        assert!(!is_uuid(b"123e4567e89b12d3a456426655440000"));
    }

    #[test]
    fn topics_carry_the_push_types_suffix() {
        assert!(topic_matches("com.example.app", "com.example.app", "alert"));
        assert!(topic_matches(
            "com.example.app",
            "com.example.app.voip",
            "voip"
        ));
        assert!(!topic_matches("com.example.app", "com.example.app", "voip"));
        assert!(!topic_matches(
            "com.example.app",
            "com.example.other",
            "alert"
        ));
    }
}
