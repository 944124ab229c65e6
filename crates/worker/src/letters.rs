//! Turns a [`Letter`] of the plan into the Pub/Sub message to publish: its
//! body and its attributes, by the rules of
//! [`push_dispatch_proto::attributes`]. Pure.
//!
//! Dead letters and republished remainders keep what the producer wrote
//! (SPEC §9 "Dead letters"), so that a request a newer producer wrote (an
//! unknown field, an unknown platform name) can still be replayed after an
//! upgrade:
//!
//! * a letter of the whole message, or of every one of its targets, is the
//!   original body, unchanged;
//! * a letter of some targets is cut from the original body by
//!   [`push_dispatch_proto::subset()`]: every other field as written, only
//!   the chosen `targets` kept;
//! * the attributes are the original ones minus Pub/Sub's (`goog*`,
//!   `CloudPubSubDeadLetter*`) and our stale error attributes, plus ours;
//!   `content-type` is added only where the body would otherwise be read in
//!   another encoding (a binary body whose `googclient_schemaencoding` was
//!   dropped).

use std::collections::HashMap;
use std::time::SystemTime;

use std::collections::BTreeSet;

use push_dispatch_proto::attributes::{self as attr, MAX_DETAIL_BYTES};
use push_dispatch_proto::v1::PushRequest;
use push_dispatch_proto::{Encoding, PushError, decode_as, encode_message};
use push_dispatch_subscriber::publish::truncate_utf8;

use crate::context::MessageContext;
use crate::plan::{DeadLetter, Letter, Targets};

/// A message ready to publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outgoing {
    /// The body.
    pub data: Vec<u8>,
    /// The attributes.
    pub attributes: HashMap<String, String>,
}

/// Builds the message for `letter`. `request` is the decoded request: a
/// letter that holds only some targets exists only once a request was
/// decoded (without one it holds nothing).
pub fn compose(
    letter: &Letter,
    ctx: &MessageContext<'_>,
    request: Option<&PushRequest>,
) -> Outgoing {
    let (mut attributes, dropped) = attr::carried(ctx.attributes);
    if dropped > 0 {
        tracing::warn!(
            dropped,
            kept = attr::MAX_CARRIED,
            "source message has more attributes than fit beside ours; dropping the last by key"
        );
    }
    match letter {
        Letter::DeadLetter(DeadLetter {
            code,
            targets,
            detail,
        }) => {
            attributes.extend(error_attributes(ctx, *code, detail));
            let data = match targets {
                Targets::All => whole(ctx, &mut attributes),
                Targets::Only(indices) => subset(ctx, request, indices, &mut attributes),
            };
            Outgoing { data, attributes }
        }
        Letter::Republish {
            indices,
            push_attempt,
            wait,
            deferrals,
        } => {
            let data = subset(ctx, request, indices, &mut attributes);
            attributes.insert(attr::PUSH_ATTEMPT.into(), push_attempt.to_string());
            // Fresh scheduling: what the source carried does not apply.
            attributes.remove(attr::NOT_BEFORE);
            attributes.remove(attr::DEFERRALS);
            if let Some(at) = wait.and_then(|w| SystemTime::now().checked_add(w))
                && let Ok(t) = push_dispatch_subscriber::wkt::Timestamp::try_from(at)
            {
                attributes.insert(attr::NOT_BEFORE.into(), String::from(t));
            }
            if *deferrals > 0 {
                attributes.insert(attr::DEFERRALS.into(), deferrals.to_string());
            }
            attributes.insert(
                attr::SOURCE_MESSAGE_ID.into(),
                ctx.source_message_id.clone(),
            );
            if let Some(t) = ctx.first_publish_attribute() {
                attributes.insert(attr::FIRST_PUBLISH_TIME.into(), t);
            }
            Outgoing { data, attributes }
        }
        // A result is not cut from the source message: the worker builds it
        // (`crate::results::push_result`) and the Outbox encodes it.
        Letter::Result(_) => Outgoing {
            data: Vec::new(),
            attributes,
        },
    }
}

/// The original body, unchanged.
fn whole(ctx: &MessageContext<'_>, attributes: &mut HashMap<String, String>) -> Vec<u8> {
    announce(attributes, ctx.encoding);
    ctx.data.to_vec()
}

/// The body of a request holding only the targets at `indices` (positions
/// in `request.targets`, a set), cut from the original body; the original
/// body itself when they are all of its targets.
fn subset(
    ctx: &MessageContext<'_>,
    request: Option<&PushRequest>,
    indices: &[usize],
    attributes: &mut HashMap<String, String>,
) -> Vec<u8> {
    let Some(request) = request else {
        // Without a decoded request there are no targets to choose from (the
        // plan makes no such letter): an empty request, as before.
        return reencode(&PushRequest::default(), ctx.encoding, attributes);
    };
    let chosen: Vec<usize> = indices
        .iter()
        .copied()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if chosen.iter().copied().eq(0..request.targets.len()) {
        return whole(ctx, attributes);
    }
    let part = request.with_targets(&chosen);
    match push_dispatch_proto::subset(ctx.data, ctx.encoding, &chosen) {
        // The splice must read back as exactly the targets the plan chose:
        // that is what makes its positions the decoder's positions.
        Ok(body) if decode_as(&body, ctx.encoding).is_ok_and(|cut| cut == part) => {
            announce(attributes, ctx.encoding);
            body
        }
        // The fallbacks: re-encoding the decoded request keeps every chosen
        // target, losing only what the struct cannot hold (unknown fields,
        // unknown enum names, field name spellings). A body that decoded
        // always splices (the splice walks it as the decoder did); the
        // read-back can differ only where a decoded value is not equal to
        // itself (a double that is NaN) or does not survive serde_json's
        // float formatting.
        Ok(_) => {
            tracing::warn!(
                message_id = %ctx.message_id,
                "the targets cut from the original body do not read back as the chosen ones; re-encoding the request instead"
            );
            reencode(&part, ctx.encoding, attributes)
        }
        Err(e) => {
            tracing::error!(
                message_id = %ctx.message_id,
                error = %e,
                "cannot cut the chosen targets from the original body; re-encoding the request instead"
            );
            reencode(&part, ctx.encoding, attributes)
        }
    }
}

/// `request` encoded in the source's encoding (binary should JSON fail).
fn reencode(
    request: &PushRequest,
    encoding: Encoding,
    attributes: &mut HashMap<String, String>,
) -> Vec<u8> {
    let (body, encoding) = encode_or_binary(request, encoding);
    announce(attributes, encoding);
    body
}

/// Makes the attributes announce the body's `encoding`, as
/// [`Encoding::from_attributes`] reads them (which the replayed or
/// republished message is decoded by): adds `content-type` only when they
/// would not, e.g. for a binary body whose `googclient_schemaencoding` was
/// not carried. A producer's own `content-type` is otherwise kept as written.
fn announce(attributes: &mut HashMap<String, String>, encoding: Encoding) {
    if Encoding::from_attributes(attributes) != encoding {
        attributes.insert(attr::CONTENT_TYPE.into(), encoding.content_type().into());
    }
}

fn error_attributes(
    ctx: &MessageContext<'_>,
    code: PushError,
    detail: &str,
) -> Vec<(String, String)> {
    let mut attrs = vec![
        (attr::PUSH_ERROR.to_string(), code.as_str().to_string()),
        (
            attr::PUSH_ERROR_DETAIL.to_string(),
            truncate_utf8(detail, MAX_DETAIL_BYTES).to_string(),
        ),
        (
            attr::SOURCE_MESSAGE_ID.to_string(),
            ctx.source_message_id.clone(),
        ),
    ];
    if let Some(a) = ctx.delivery_attempt {
        attrs.push((attr::DELIVERY_ATTEMPT.to_string(), a.to_string()));
    }
    // A replay keeps the request's age: its ttl still counts from the first publish.
    if let Some(t) = ctx.first_publish_attribute() {
        attrs.push((attr::FIRST_PUBLISH_TIME.to_string(), t));
    }
    attrs
}

/// Encodes in the source's encoding; falls back to binary if JSON fails (it cannot in practice).
fn encode_or_binary(request: &PushRequest, encoding: Encoding) -> (Vec<u8>, Encoding) {
    match encode_message(request, encoding) {
        Ok(body) => (body, encoding),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode request as JSON; using binary protobuf");
            (
                encode_message(request, Encoding::Binary).unwrap_or_default(),
                Encoding::Binary,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use push_dispatch_proto::v1::{Platform, Target};
    use push_dispatch_subscriber::pubsub::model::Message;

    fn request() -> PushRequest {
        PushRequest {
            request_id: "r1".into(),
            targets: ["a", "b", "c"]
                .map(|t| Target {
                    platform: Platform::Fcm as i32,
                    token: t.into(),
                })
                .to_vec(),
            ..Default::default()
        }
    }

    /// `request()` as a newer producer might write it: unknown keys, an
    /// unknown enum name, both spellings of field names.
    const JSON_BODY: &str = r#"{"requestId": "r1", "thread_id": "t", "future": [1],
        "priority": "PRIORITY_LATER",
        "targets": [{"platform": "PLATFORM_FCM", "token": "a"},
                    {"platform": "PLATFORM_FCM", "token": "b"},
                    {"platform": "PLATFORM_FCM", "token": "c", "weight": 2}]}"#;

    fn dead_letter(code: PushError, targets: Targets) -> Letter {
        Letter::DeadLetter(DeadLetter {
            code,
            targets,
            detail: "d".into(),
        })
    }

    #[test]
    fn a_subset_dead_letter_is_cut_from_the_original_body_and_names_its_reason() {
        let message = Message::new()
            .set_message_id("m1")
            .set_data(JSON_BODY.as_bytes().to_vec())
            .set_attributes([
                ("trace", "keep"),
                ("googclient_schemaencoding", "JSON"),
                ("CloudPubSubDeadLetterSourceDeliveryCount", "4"),
                (attr::PUSH_ERROR, "old"),
            ]);
        let ctx = MessageContext::of(&message, Some(3));
        let decoded = push_dispatch_proto::decode_as(ctx.data, ctx.encoding).expect("decodes");
        let letter = Letter::DeadLetter(DeadLetter {
            code: PushError::ProviderRejected,
            targets: Targets::Only(vec![2]),
            detail: "x".repeat(3000),
        });
        let out = compose(&letter, &ctx, Some(&decoded));
        assert_eq!(
            out.data,
            push_dispatch_proto::subset(JSON_BODY.as_bytes(), Encoding::Json, &[2])
                .expect("splices")
        );
        let text = String::from_utf8(out.data.clone()).expect("utf-8");
        for kept in [
            r#""future":[1]"#,
            r#""thread_id":"t""#,
            "PRIORITY_LATER",
            r#""weight":2"#,
        ] {
            assert!(text.contains(kept), "{kept} in {text}");
        }
        let body =
            push_dispatch_proto::decode_request(&out.data, &out.attributes).expect("decodes");
        assert_eq!(body, decoded.with_targets(&[2]));
        let a = &out.attributes;
        let mut keys: Vec<&str> = a.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                attr::DELIVERY_ATTEMPT,
                attr::PUSH_ERROR,
                attr::PUSH_ERROR_DETAIL,
                attr::SOURCE_MESSAGE_ID,
                "trace"
            ],
            "the original attributes minus Pub/Sub's, plus ours; JSON needs no content-type"
        );
        assert_eq!(a[attr::PUSH_ERROR], "provider_rejected");
        assert_eq!(a[attr::PUSH_ERROR_DETAIL].len(), MAX_DETAIL_BYTES);
        assert_eq!(a[attr::SOURCE_MESSAGE_ID], "m1");
        assert_eq!(a[attr::DELIVERY_ATTEMPT], "3");
        assert_eq!(a["trace"], "keep");
    }

    #[test]
    fn a_letter_of_every_target_is_the_original_body() {
        let message = Message::new()
            .set_message_id("m1")
            .set_data(JSON_BODY.as_bytes().to_vec());
        let ctx = MessageContext::of(&message, None);
        let decoded = push_dispatch_proto::decode_as(ctx.data, ctx.encoding).expect("decodes");
        let letter = dead_letter(PushError::RetriesExhausted, Targets::Only(vec![2, 0, 1]));
        let out = compose(&letter, &ctx, Some(&decoded));
        assert_eq!(out.data, JSON_BODY.as_bytes(), "whitespace and all");
    }

    #[test]
    fn a_whole_binary_dead_letter_keeps_the_bytes_and_says_binary() {
        let message = Message::new()
            .set_message_id("m1")
            .set_data(vec![1, 2, 3])
            .set_attributes([("googclient_schemaencoding", "BINARY")]);
        let ctx = MessageContext::of(&message, None);
        let out = compose(
            &dead_letter(PushError::DecodeBinary, Targets::All),
            &ctx,
            None,
        );
        assert_eq!(out.data, vec![1, 2, 3]);
        assert_eq!(out.attributes[attr::CONTENT_TYPE], "application/x-protobuf");
        assert!(!out.attributes.contains_key(attr::DELIVERY_ATTEMPT));
        assert!(!out.attributes.contains_key("googclient_schemaencoding"));

        // A producer's own content-type already says binary: kept as written.
        let written = "application/x-protobuf; proto=push.v1.PushRequest";
        let message = Message::new()
            .set_message_id("m2")
            .set_data(vec![1, 2, 3])
            .set_attributes([(attr::CONTENT_TYPE, written)]);
        let ctx = MessageContext::of(&message, None);
        let out = compose(
            &dead_letter(PushError::DecodeBinary, Targets::All),
            &ctx,
            None,
        );
        assert_eq!(out.attributes[attr::CONTENT_TYPE], written);
    }

    #[test]
    fn a_binary_subset_is_a_splice_and_says_binary() {
        // request() with an unknown field (99) before its targets.
        let mut data = vec![0x98, 0x06, 0x01];
        data.extend(encode_message(&request(), Encoding::Binary).expect("encodes"));
        let message = Message::new()
            .set_message_id("m1")
            .set_data(data.clone())
            .set_attributes([("googclient_schemaencoding", "BINARY")]);
        let ctx = MessageContext::of(&message, None);
        let decoded = push_dispatch_proto::decode_as(ctx.data, ctx.encoding).expect("decodes");
        let out = compose(
            &dead_letter(PushError::MalformedToken, Targets::Only(vec![0, 2])),
            &ctx,
            Some(&decoded),
        );
        assert_eq!(
            out.data,
            push_dispatch_proto::subset(&data, Encoding::Binary, &[0, 2]).expect("splices")
        );
        assert_eq!(
            &out.data[..3],
            &[0x98, 0x06, 0x01],
            "the unknown field kept"
        );
        assert_eq!(out.attributes[attr::CONTENT_TYPE], "application/x-protobuf");
        let body =
            push_dispatch_proto::decode_request(&out.data, &out.attributes).expect("decodes");
        assert_eq!(body, request().with_targets(&[0, 2]));
    }

    #[test]
    fn a_body_the_targets_cannot_be_cut_from_falls_back_to_re_encoding() {
        // Cannot happen to a body that decoded as `request`; here the body
        // holds no targets at all, so the splice refuses position 2 and the
        // decoded request is re-encoded: the chosen target is still there.
        let message = Message::new().set_message_id("m1").set_data(b"{}".to_vec());
        let ctx = MessageContext::of(&message, Some(1));
        let out = compose(
            &dead_letter(PushError::ProviderRejected, Targets::Only(vec![2])),
            &ctx,
            Some(&request()),
        );
        let body =
            push_dispatch_proto::decode_request(&out.data, &out.attributes).expect("decodes");
        assert_eq!(body, request().with_targets(&[2]));
        assert_eq!(
            out.data,
            encode_message(&body, Encoding::Json).expect("encodes")
        );
    }

    #[test]
    fn a_republished_remainder_carries_its_attempt_source_and_first_publish() {
        let message = Message::new()
            .set_message_id("m2")
            .set_data(JSON_BODY.as_bytes().to_vec())
            .set_attributes([
                (attr::SOURCE_MESSAGE_ID, "m1"),
                (attr::PUSH_ATTEMPT, "2"),
                (attr::FIRST_PUBLISH_TIME, "2026-12-01T00:00:00Z"),
            ]);
        let ctx = MessageContext::of(&message, Some(1));
        let decoded = push_dispatch_proto::decode_as(ctx.data, ctx.encoding).expect("decodes");
        let out = compose(
            &Letter::Republish {
                indices: vec![1, 2],
                push_attempt: 3,
                wait: Some(std::time::Duration::from_secs(30)),
                deferrals: 2,
            },
            &ctx,
            Some(&decoded),
        );
        let a = &out.attributes;
        assert_eq!(a[attr::PUSH_ATTEMPT], "3");
        assert_eq!(a[attr::DEFERRALS], "2");
        let not_before =
            push_dispatch_subscriber::wkt::Timestamp::try_from(a[attr::NOT_BEFORE].as_str())
                .ok()
                .and_then(|t| SystemTime::try_from(t).ok())
                .expect("push_not_before is RFC 3339");
        let ahead = not_before
            .duration_since(SystemTime::now())
            .expect("in the future");
        assert!(ahead > std::time::Duration::from_secs(25), "{ahead:?}");
        assert_eq!(a[attr::SOURCE_MESSAGE_ID], "m1");
        assert_eq!(a[attr::FIRST_PUBLISH_TIME], "2026-12-01T00:00:00Z");
        assert!(!a.contains_key(attr::PUSH_ERROR));
        assert_eq!(
            out.data,
            push_dispatch_proto::subset(JSON_BODY.as_bytes(), Encoding::Json, &[1, 2])
                .expect("splices"),
            "unknown keys and enum names travel on"
        );
        let body =
            push_dispatch_proto::decode_request(&out.data, &out.attributes).expect("decodes");
        assert_eq!(body.targets.len(), 2);
    }

    #[test]
    fn a_crowd_of_producer_attributes_leaves_room_for_ours() {
        let crowd: Vec<(String, String)> = (0..100)
            .map(|i| (format!("k{i:03}"), "v".to_string()))
            .collect();
        let message = Message::new().set_message_id("m1").set_attributes(crowd);
        let ctx = MessageContext::of(&message, Some(5));
        let mut out = compose(
            &dead_letter(PushError::RetriesExhausted, Targets::Only(vec![0])),
            &ctx,
            Some(&request()),
        );
        // Trace context is added at publish time: leave room for it too.
        for k in [
            "traceparent",
            "tracestate",
            "googclient_traceparent",
            "googclient_tracestate",
        ] {
            out.attributes.insert(k.into(), "x".into());
        }
        assert!(
            push_dispatch_subscriber::publish::build_message(out.data, out.attributes).is_ok(),
            "fits Pub/Sub's 100 attributes"
        );
    }
}
