//! What the worker knows of a message besides its body: ids, attempts,
//! first publish time, encoding ([`MessageContext`]), and when its request
//! stops being deliverable ([`Deadline`]). Read from the message alone: no
//! clock, no I/O.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use push_dispatch_proto::Encoding;
use push_dispatch_proto::attributes as attr;
use push_dispatch_proto::v1::PushRequest;
use push_dispatch_subscriber::pubsub::model::Message;
use push_dispatch_subscriber::wkt::Timestamp;

/// What we know of a message besides its body.
#[derive(Clone, Debug)]
pub struct MessageContext<'a> {
    /// Pub/Sub's id of this message.
    pub message_id: &'a str,
    /// Its body, as received.
    pub data: &'a [u8],
    /// Its attributes, as received.
    pub attributes: &'a HashMap<String, String>,
    /// How its body is encoded.
    pub encoding: Encoding,
    /// The id of the original request (this message's, unless republished).
    pub source_message_id: String,
    /// When the original request was first published (for the ttl and the
    /// end-to-end latency), if known.
    pub first_publish_time: Option<SystemTime>,
    /// How many times the request was (re)published: 1 for the original.
    pub push_attempt: u32,
    /// Pub/Sub's delivery attempt (None without a DeadLetterPolicy).
    pub delivery_attempt: Option<i32>,
    /// `push_not_before`: not to be sent before this time (a wait carried
    /// across a republish).
    pub not_before: Option<SystemTime>,
    /// `push_deferrals`: how often the request was put off only to wait.
    pub deferrals: u32,
}

impl<'a> MessageContext<'a> {
    /// Reads the context of `message`, received at `delivery_attempt`.
    pub fn of(message: &'a Message, delivery_attempt: Option<i32>) -> MessageContext<'a> {
        let attrs = &message.attributes;
        let publish_time = message.publish_time.and_then(to_system_time);
        let first_publish_time = attrs
            .get(attr::FIRST_PUBLISH_TIME)
            .and_then(|v| Timestamp::try_from(v.as_str()).ok())
            .and_then(to_system_time)
            .or(publish_time);
        MessageContext {
            message_id: &message.message_id,
            data: &message.data,
            attributes: attrs,
            encoding: Encoding::from_attributes(attrs),
            source_message_id: attrs
                .get(attr::SOURCE_MESSAGE_ID)
                .filter(|v| !v.is_empty())
                .cloned()
                .unwrap_or_else(|| message.message_id.clone()),
            first_publish_time,
            push_attempt: attrs
                .get(attr::PUSH_ATTEMPT)
                .map_or(1, |v| parse_push_attempt(v.as_str())),
            delivery_attempt,
            not_before: attrs
                .get(attr::NOT_BEFORE)
                .and_then(|v| Timestamp::try_from(v.as_str()).ok())
                .and_then(to_system_time),
            deferrals: attrs
                .get(attr::DEFERRALS)
                .map_or(0, |v| parse_count(v.as_str())),
        }
    }

    /// Whether this is the request's first delivery: the original publish
    /// (not a republished remainder) delivered for the first time. A `ttl`
    /// of zero ("now or never") is sent only then.
    pub fn is_first_delivery(&self) -> bool {
        self.push_attempt <= 1 && self.deferrals == 0 && self.delivery_attempt.unwrap_or(1) <= 1
    }

    /// `push_first_publish_time` as written on what we publish (RFC 3339).
    pub fn first_publish_attribute(&self) -> Option<String> {
        self.first_publish_time
            .and_then(|t| Timestamp::try_from(t).ok())
            .map(String::from)
    }

    /// Whether this is the message's last delivery attempt under
    /// `max_delivery_attempts`: a nack now makes Pub/Sub's DeadLetterPolicy
    /// forward it without a `push_error`.
    pub fn is_last_attempt(&self, max_delivery_attempts: i32) -> bool {
        self.delivery_attempt
            .is_some_and(|a| a >= max_delivery_attempts)
    }
}

/// `push_attempt` as a producer (or a replay) may have written it: digits
/// beyond `u32` saturate instead of reading as 1 (which would restart the
/// republish count), and 0 or garbage read as 1, the original.
fn parse_push_attempt(value: &str) -> u32 {
    parse_count(value).max(1)
}

/// A count attribute: digits beyond `u32` saturate; garbage reads as 0.
fn parse_count(value: &str) -> u32 {
    let digits = value.trim();
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        digits.parse::<u32>().unwrap_or(u32::MAX)
    } else {
        0
    }
}

/// A Pub/Sub timestamp as wall-clock time.
pub fn to_system_time(t: Timestamp) -> Option<SystemTime> {
    SystemTime::try_from(t).ok()
}

/// When a request stops being deliverable (SPEC §5.6): first publish + `ttl`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deadline {
    /// First publish + `ttl`, for the providers' own expiry (`apns-expiration`,
    /// FCM `ttl`); `None` without a ttl.
    pub expires_at: Option<SystemTime>,
    /// Whether a passed `expires_at` makes the request expired: not for a
    /// zero ttl, which means "now or never" to APNs, nor without a known
    /// first publish time.
    enforced: bool,
    /// A `ttl` of zero: sent only during the first delivery, expired after.
    now_or_never: bool,
}

impl Deadline {
    /// The deadline of `request`, first published at `first_publish`.
    pub fn of(request: &PushRequest, first_publish: Option<SystemTime>) -> Deadline {
        let none = Deadline {
            expires_at: None,
            enforced: false,
            now_or_never: false,
        };
        let Some(ttl) = &request.ttl else {
            return none;
        };
        let ttl = Duration::new(
            u64::try_from(ttl.seconds).unwrap_or(0),
            u32::try_from(ttl.nanos).unwrap_or(0).min(999_999_999),
        );
        // Validation caps the ttl; an unrepresentable deadline still means "no deadline", not a panic.
        let Some(expires_at) = first_publish
            .unwrap_or_else(SystemTime::now)
            .checked_add(ttl)
        else {
            return none;
        };
        Deadline {
            expires_at: Some(expires_at),
            enforced: !ttl.is_zero() && first_publish.is_some(),
            now_or_never: ttl.is_zero(),
        }
    }

    /// Whether the `ttl` is zero: now or never (SPEC §9). What is not final
    /// during the first delivery is expired.
    pub fn is_now_or_never(&self) -> bool {
        self.now_or_never
    }

    /// Whether waiting `wait` from `now` would take the request past its ttl.
    pub fn passes_during(&self, now: SystemTime, wait: std::time::Duration) -> bool {
        self.now_or_never
            || now
                .checked_add(wait)
                .is_some_and(|then| self.has_passed_at(then))
    }

    /// Whether the ttl has run out now.
    pub fn has_passed(&self) -> bool {
        self.has_passed_at(SystemTime::now())
    }

    /// Whether the ttl has run out at `now`.
    pub fn has_passed_at(&self, now: SystemTime) -> bool {
        self.enforced
            && self
                .expires_at
                .is_some_and(|t| now.duration_since(t).is_ok_and(|d| !d.is_zero()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ttl(seconds: i64) -> Option<push_dispatch_proto::pbjson_types::Duration> {
        Some(push_dispatch_proto::pbjson_types::Duration { seconds, nanos: 0 })
    }

    #[test]
    fn expiry_counts_from_the_first_publish() {
        let mut req = PushRequest::default();
        let long_ago = SystemTime::now() - Duration::from_secs(120);
        let expired = |req: &PushRequest, first| Deadline::of(req, first).has_passed();
        assert!(!expired(&req, Some(long_ago)), "no ttl never expires");
        req.ttl = ttl(60);
        assert!(expired(&req, Some(long_ago)));
        assert!(!expired(&req, Some(SystemTime::now())));
        assert!(!expired(&req, None), "no first publish time: not enforced");
        assert_eq!(
            Deadline::of(&req, Some(long_ago)).expires_at,
            Some(long_ago + Duration::from_secs(60))
        );
        req.ttl = ttl(0);
        assert!(
            !expired(&req, Some(long_ago)),
            "ttl 0 is now-or-never, not expired"
        );
        assert_eq!(
            Deadline::of(&req, Some(long_ago)).expires_at,
            Some(long_ago)
        );
    }

    #[test]
    fn a_ttl_beyond_any_clock_is_no_deadline_rather_than_a_panic() {
        let req = PushRequest {
            ttl: Some(push_dispatch_proto::pbjson_types::Duration {
                seconds: i64::MAX,
                nanos: 999_999_999,
            }),
            ..PushRequest::default()
        };
        let d = Deadline::of(&req, Some(SystemTime::now()));
        assert_eq!(d.expires_at, None);
        assert!(!d.has_passed());
    }

    #[test]
    fn the_context_reads_ids_attempts_and_the_first_publish_from_attributes() {
        let message = Message::new().set_message_id("m2").set_attributes([
            (attr::SOURCE_MESSAGE_ID, "m1"),
            (attr::PUSH_ATTEMPT, "3"),
            (attr::FIRST_PUBLISH_TIME, "2026-12-01T00:00:00Z"),
            (attr::CONTENT_TYPE, "application/x-protobuf"),
        ]);
        let ctx = MessageContext::of(&message, Some(5));
        assert_eq!(ctx.source_message_id, "m1");
        assert_eq!(ctx.push_attempt, 3);
        assert_eq!(ctx.encoding, Encoding::Binary);
        assert_eq!(
            ctx.first_publish_attribute().as_deref(),
            Some("2026-12-01T00:00:00Z")
        );
        assert!(ctx.is_last_attempt(5) && !ctx.is_last_attempt(6));
        for (value, attempt) in [
            ("0", 1),
            ("x", 1),
            ("", 1),
            ("99999999999", u32::MAX),
            (" 7 ", 7),
        ] {
            assert_eq!(parse_push_attempt(value), attempt, "{value:?}");
        }
        let plain = Message::new().set_message_id("m9");
        let ctx = MessageContext::of(&plain, None);
        assert_eq!(
            (ctx.source_message_id.as_str(), ctx.push_attempt),
            ("m9", 1)
        );
        assert!(
            !ctx.is_last_attempt(5),
            "no DeadLetterPolicy: never the last"
        );
    }
}
