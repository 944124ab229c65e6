//! The `push.v1` wire contract of push-dispatch: generated types, decoding and
//! validation.
//!
//! * [`v1`] holds the prost structs generated at build time from
//!   `proto/push/v1/push.proto`, with serde impls that follow the proto3 JSON
//!   mapping (via pbjson).
//! * [`decode`] turns a Pub/Sub message body into a [`v1::PushRequest`], choosing
//!   JSON or binary protobuf from the message attributes (SPEC §2), and encodes
//!   requests and events the other way.
//! * [`attributes`] names every Pub/Sub attribute we read or write, the
//!   `push_error` codes, and which attributes travel onto what we publish.
//! * [`subset`](mod@subset) cuts a copy of a request holding only some of its targets
//!   from the bytes the producer wrote (dead letters, republished
//!   remainders), keeping every other field as written.
//! * [`validate`] checks a decoded request against the configured apps and
//!   splits its targets into sendable ones and ones that alone are invalid.
//!
//! This crate does no I/O: it is pure functions over bytes and structs, so the
//! property tests can throw arbitrary input at it.

pub mod attributes;
pub mod decode;
pub mod subset;
pub mod validate;

/// Generated `push.v1` types (prost + pbjson).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/push.v1.rs"));
    include!(concat!(env!("OUT_DIR"), "/push.v1.serde.rs"));
}

pub use attributes::PushError;
pub use decode::{DecodeError, EncodeError, Encoding, decode_as, decode_request, encode_message};
pub use subset::{SubsetError, subset};
pub use validate::{
    AppPlatforms, Checked, ConfiguredApp, RequestError, TargetError, TokenProblem, check,
};

/// Re-exported so that users can build `ttl` and timestamps without another dependency.
pub use pbjson_types;

impl v1::Platform {
    /// The lower-case label used in metrics and Pub/Sub attributes (`apns`, `fcm`).
    pub fn label(self) -> &'static str {
        match self {
            v1::Platform::Apns => "apns",
            v1::Platform::Fcm => "fcm",
            v1::Platform::Unspecified => "unspecified",
        }
    }
}

impl v1::PushRequest {
    /// A copy of this request that holds only the targets at `indices`, in
    /// the order of `indices`. Dead letters and republished remainders are
    /// cut from the original bytes instead ([`subset()`]), which keeps what
    /// this struct cannot hold (unknown fields); this is their fallback.
    pub fn with_targets(&self, indices: &[usize]) -> v1::PushRequest {
        let mut copy = v1::PushRequest {
            targets: Vec::with_capacity(indices.len()),
            ..self.clone()
        };
        for &i in indices {
            if let Some(t) = self.targets.get(i) {
                copy.targets.push(t.clone());
            }
        }
        copy
    }
}

/// Redacts a device token for logs: its first 8 characters and an ellipsis.
///
/// Tokens are credentials of a sort (they let anyone holding a provider key
/// push to that device), so only a prefix long enough to correlate is logged.
pub fn redact_token(token: &str) -> String {
    let prefix: String = token.chars().take(8).collect();
    if prefix.len() < token.len() {
        format!("{prefix}…")
    } else {
        prefix
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_token_keeps_eight_characters() {
        assert_eq!(redact_token("0123456789abcdef"), "01234567…");
        assert_eq!(redact_token("short"), "short");
        assert_eq!(redact_token("ééééééééé"), "éééééééé…");
    }

    #[test]
    fn with_targets_keeps_only_the_chosen_targets() {
        let req = v1::PushRequest {
            request_id: "r1".into(),
            targets: vec![
                v1::Target {
                    platform: v1::Platform::Apns as i32,
                    token: "a".into(),
                },
                v1::Target {
                    platform: v1::Platform::Fcm as i32,
                    token: "b".into(),
                },
            ],
            ..Default::default()
        };
        let part = req.with_targets(&[1, 7]);
        assert_eq!(part.request_id, "r1");
        assert_eq!(part.targets.len(), 1);
        assert_eq!(part.targets[0].token, "b");
    }
}
