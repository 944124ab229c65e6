//! Decoding and encoding of `push.v1` messages as they travel on Pub/Sub.
//!
//! The encoding is chosen from the message attributes, as SPEC §2 fixes:
//! binary protobuf when `googclient_schemaencoding` is `BINARY` (what Pub/Sub
//! sets on schema topics) or `content-type` is `application/x-protobuf`, the
//! proto3 JSON mapping otherwise.

use std::collections::HashMap;

use prost::Message;
use serde::Serialize;

use crate::attributes::{CONTENT_TYPE as ATTR_CONTENT_TYPE, PushError, SCHEMA_ENCODING};
use crate::v1::PushRequest;

/// Pub/Sub's own cap on a message body; larger bodies cannot have been published.
pub const MAX_MESSAGE_BYTES: usize = 10 * 1024 * 1024;

/// Content type of binary protobuf bodies.
pub const CONTENT_TYPE_PROTOBUF: &str = "application/x-protobuf";
/// Content type of proto3 JSON bodies.
pub const CONTENT_TYPE_JSON: &str = "application/json";

/// How a message body is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// The proto3 JSON mapping (the default).
    Json,
    /// Binary protobuf.
    Binary,
}

impl Encoding {
    /// Picks the encoding from Pub/Sub message attributes (SPEC §2).
    pub fn from_attributes(attributes: &HashMap<String, String>) -> Encoding {
        let schema_binary = attributes
            .get(SCHEMA_ENCODING)
            .is_some_and(|v| v.eq_ignore_ascii_case("BINARY"));
        let content_binary = attributes.get(ATTR_CONTENT_TYPE).is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case(CONTENT_TYPE_PROTOBUF))
        });
        if schema_binary || content_binary {
            Encoding::Binary
        } else {
            Encoding::Json
        }
    }

    /// The `content-type` attribute value that announces this encoding.
    pub fn content_type(self) -> &'static str {
        match self {
            Encoding::Json => CONTENT_TYPE_JSON,
            Encoding::Binary => CONTENT_TYPE_PROTOBUF,
        }
    }
}

/// Why a message body is not a `PushRequest`.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The body is not valid proto3 JSON for `push.v1.PushRequest`.
    #[error(
        "body is not a proto3 JSON push.v1.PushRequest: {detail}; publish JSON, or set the attribute content-type=application/x-protobuf for binary protobuf"
    )]
    Json {
        /// The parser's complaint, with line and column, and every quoted
        /// value in it cut to 8 characters: it goes into logs and
        /// `push_error_detail`, and a device token in a wrong-typed field
        /// must not (the parser quotes the values it could not take).
        detail: String,
    },
    /// The body is not a valid binary protobuf `push.v1.PushRequest`.
    #[error(
        "body is not a binary protobuf push.v1.PushRequest: {source}; check the producer's schema, or drop the content-type attribute for JSON"
    )]
    Binary {
        /// prost's complaint.
        #[source]
        source: prost::DecodeError,
    },
    /// The body is larger than any Pub/Sub message can be.
    #[error("body is {len} bytes, over the {max}-byte limit of a Pub/Sub message")]
    TooLarge {
        /// The body's length.
        len: usize,
        /// The limit.
        max: usize,
    },
}

impl DecodeError {
    /// Short machine-readable code for the `push_error` attribute.
    pub fn code(&self) -> PushError {
        match self {
            DecodeError::Json { .. } => PushError::DecodeJson,
            DecodeError::Binary { .. } => PushError::DecodeBinary,
            DecodeError::TooLarge { .. } => PushError::TooLarge,
        }
    }
}

/// Decodes a Pub/Sub message body as a `PushRequest`, choosing the encoding
/// from the attributes.
pub fn decode_request(
    data: &[u8],
    attributes: &HashMap<String, String>,
) -> Result<PushRequest, DecodeError> {
    decode_as(data, Encoding::from_attributes(attributes))
}

/// Decodes a message body as a `PushRequest` in a known encoding (what
/// [`decode_request`] does once it has read the attributes).
pub fn decode_as(data: &[u8], encoding: Encoding) -> Result<PushRequest, DecodeError> {
    if data.len() > MAX_MESSAGE_BYTES {
        return Err(DecodeError::TooLarge {
            len: data.len(),
            max: MAX_MESSAGE_BYTES,
        });
    }
    match encoding {
        Encoding::Binary => {
            PushRequest::decode(data).map_err(|source| DecodeError::Binary { source })
        }
        Encoding::Json => serde_json::from_slice(data).map_err(|e| DecodeError::Json {
            detail: redact_quoted(&e.to_string()),
        }),
    }
}

/// Cuts every `"quoted"` value in `text` to its first 8 characters
/// ([`crate::redact_token`]).
fn redact_quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find('"') {
        out.push_str(&rest[..=open]);
        rest = &rest[open + 1..];
        match rest.find('"') {
            Some(close) => {
                out.push_str(&crate::redact_token(&rest[..close]));
                out.push('"');
                rest = &rest[close + 1..];
            }
            None => {
                out.push_str(&crate::redact_token(rest));
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// A message could not be encoded as JSON (in practice: never for generated types).
#[derive(Debug, thiserror::Error)]
#[error("cannot encode message as proto3 JSON: {0}")]
pub struct EncodeError(#[from] serde_json::Error);

/// Encodes any generated message (a `PushRequest` or `TokenInvalidated`) for Pub/Sub.
pub fn encode_message<M: Message + Serialize>(
    message: &M,
    encoding: Encoding,
) -> Result<Vec<u8>, EncodeError> {
    match encoding {
        Encoding::Binary => Ok(message.encode_to_vec()),
        Encoding::Json => Ok(serde_json::to_vec(message)?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{Platform, Priority, Target};

    fn attrs(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect()
    }

    #[test]
    fn encoding_defaults_to_json() {
        assert_eq!(Encoding::from_attributes(&attrs(&[])), Encoding::Json);
        assert_eq!(
            Encoding::from_attributes(&attrs(&[("googclient_schemaencoding", "JSON")])),
            Encoding::Json
        );
    }

    #[test]
    fn encoding_is_binary_for_schema_topics_and_content_type() {
        assert_eq!(
            Encoding::from_attributes(&attrs(&[("googclient_schemaencoding", "BINARY")])),
            Encoding::Binary
        );
        assert_eq!(
            Encoding::from_attributes(&attrs(&[(
                "content-type",
                "application/x-protobuf; proto=push.v1.PushRequest"
            )])),
            Encoding::Binary
        );
    }

    #[test]
    fn json_uses_the_proto3_mapping() {
        let body = br#"{
            "requestId": "r-1",
            "targets": [{"platform": "PLATFORM_APNS", "token": "ab"}],
            "notification": {"title": "Hi", "badge": 3},
            "data": {"k": "v"},
            "priority": "PRIORITY_HIGH",
            "ttl": "3600s",
            "content_available": true
        }"#;
        let req = decode_request(body, &attrs(&[])).expect("valid JSON");
        assert_eq!(req.request_id, "r-1");
        assert_eq!(req.targets[0].platform(), Platform::Apns);
        assert_eq!(req.notification.as_ref().and_then(|n| n.badge), Some(3));
        assert_eq!(req.priority(), Priority::High);
        assert_eq!(req.ttl.as_ref().map(|d| d.seconds), Some(3600));
        assert!(req.content_available, "snake_case names are accepted too");
    }

    #[test]
    fn binary_round_trips() {
        let req = PushRequest {
            request_id: "r-2".into(),
            targets: vec![Target {
                platform: Platform::Fcm as i32,
                token: "tok".into(),
            }],
            ..Default::default()
        };
        let body = encode_message(&req, Encoding::Binary).expect("encodes");
        let back = decode_request(&body, &attrs(&[("content-type", CONTENT_TYPE_PROTOBUF)]))
            .expect("binary decodes");
        assert_eq!(back, req);
    }

    #[test]
    fn json_round_trips_with_value_names() {
        let req = PushRequest {
            request_id: "r-3".into(),
            targets: vec![Target {
                platform: Platform::Fcm as i32,
                token: "tok".into(),
            }],
            ..Default::default()
        };
        let body = encode_message(&req, Encoding::Json).expect("encodes");
        let text = String::from_utf8(body.clone()).expect("utf-8");
        assert!(text.contains("PLATFORM_FCM"), "{text}");
        assert_eq!(decode_request(&body, &attrs(&[])).expect("decodes"), req);
    }

    #[test]
    fn a_value_quoted_by_the_parser_is_cut_to_eight_characters() {
        // A device token where an object belongs: the parser quotes the value.
        let token = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";
        let body = format!(r#"{{"notification": "{token}", "targets": []}}"#);
        let err = decode_request(body.as_bytes(), &attrs(&[])).expect_err("wrong type");
        let text = err.to_string();
        assert!(!text.contains(token), "{text}");
        assert!(text.contains(r#""a1b2c3d4…""#), "{text}");
        assert_eq!(
            redact_quoted(r#"invalid type: string "0123456789abcdef", expected i32"#),
            r#"invalid type: string "01234567…", expected i32"#
        );
        assert_eq!(
            redact_quoted(r#"a "short" b "unclosed-value"#),
            r#"a "short" b "unclosed…"#
        );
    }

    #[test]
    fn garbage_is_a_typed_error() {
        let err = decode_request(b"not json", &attrs(&[])).expect_err("garbage");
        assert_eq!(err.code().as_str(), "decode_json");
        assert!(err.to_string().contains("proto3 JSON"));
        let err = decode_request(
            &[0xff, 0xff, 0xff],
            &attrs(&[("content-type", CONTENT_TYPE_PROTOBUF)]),
        )
        .expect_err("garbage");
        assert_eq!(err.code().as_str(), "decode_binary");
    }

    #[test]
    fn a_newer_producers_fields_and_enum_names_do_not_make_poison() {
        let body = br#"{"requestId": "r-9", "futureField": {"a": [1, 2]},
            "targets": [{"platform": "PLATFORM_PIGEON", "token": "x"},
                        {"platform": "PLATFORM_FCM", "token": "y", "weight": 3}]}"#;
        let req = decode_request(body, &attrs(&[])).expect("forward compatible");
        assert_eq!(req.request_id, "r-9");
        assert_eq!(req.targets.len(), 2);
        assert_eq!(
            req.targets[0].platform(),
            Platform::Unspecified,
            "an unknown platform reads as unspecified: that target alone is refused"
        );
        assert_eq!(req.targets[1].platform(), Platform::Fcm);
        // Still strict where it matters: a known field of the wrong type is poison.
        let body = br#"{"targets": "not a list"}"#;
        assert_eq!(
            decode_request(body, &attrs(&[]))
                .expect_err("wrong type")
                .code()
                .as_str(),
            "decode_json"
        );
    }
}
