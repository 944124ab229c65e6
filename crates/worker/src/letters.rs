//! Turns a [`Letter`] of the plan into the Pub/Sub message to publish: its
//! body (the original bytes, or a request holding only some targets, in the
//! source's encoding) and its attributes, by the rules of
//! [`push_dispatch_proto::attributes`]. Pure.

use std::collections::HashMap;
use std::time::SystemTime;

use push_dispatch_proto::attributes::{self as attr, MAX_DETAIL_BYTES};
use push_dispatch_proto::v1::PushRequest;
use push_dispatch_proto::{Encoding, PushError, encode_message};
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
                Targets::All => {
                    if ctx.encoding == Encoding::Binary {
                        // `googclient_schemaencoding` is not carried: say it another way.
                        attributes.insert(
                            attr::CONTENT_TYPE.into(),
                            Encoding::Binary.content_type().into(),
                        );
                    }
                    ctx.data.to_vec()
                }
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
    }
}

/// The body of a request holding only `indices`, in the source's encoding;
/// sets `content-type` to match.
fn subset(
    ctx: &MessageContext<'_>,
    request: Option<&PushRequest>,
    indices: &[usize],
    attributes: &mut HashMap<String, String>,
) -> Vec<u8> {
    let part = request.map(|r| r.with_targets(indices)).unwrap_or_default();
    let (body, encoding) = encode_or_binary(&part, ctx.encoding);
    attributes.insert(attr::CONTENT_TYPE.into(), encoding.content_type().into());
    body
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

    #[test]
    fn a_subset_dead_letter_holds_only_its_targets_and_names_its_reason() {
        let message = Message::new()
            .set_message_id("m1")
            .set_data(b"{}".to_vec())
            .set_attributes([
                ("trace", "keep"),
                ("googclient_schemaencoding", "JSON"),
                (attr::PUSH_ERROR, "old"),
            ]);
        let ctx = MessageContext::of(&message, Some(3));
        let letter = Letter::DeadLetter(DeadLetter {
            code: PushError::ProviderRejected,
            targets: Targets::Only(vec![2]),
            detail: "x".repeat(3000),
        });
        let out = compose(&letter, &ctx, Some(&request()));
        let body =
            push_dispatch_proto::decode_request(&out.data, &out.attributes).expect("decodes");
        assert_eq!(body.targets.len(), 1);
        assert_eq!(body.targets[0].token, "c");
        let a = &out.attributes;
        assert_eq!(a[attr::PUSH_ERROR], "provider_rejected");
        assert_eq!(a[attr::PUSH_ERROR_DETAIL].len(), MAX_DETAIL_BYTES);
        assert_eq!(a[attr::SOURCE_MESSAGE_ID], "m1");
        assert_eq!(a[attr::DELIVERY_ATTEMPT], "3");
        assert_eq!(a[attr::CONTENT_TYPE], "application/json");
        assert_eq!(a["trace"], "keep");
        assert!(!a.contains_key("googclient_schemaencoding"));
    }

    #[test]
    fn a_whole_binary_dead_letter_keeps_the_bytes_and_says_binary() {
        let message = Message::new()
            .set_message_id("m1")
            .set_data(vec![1, 2, 3])
            .set_attributes([("googclient_schemaencoding", "BINARY")]);
        let ctx = MessageContext::of(&message, None);
        let out = compose(
            &Letter::DeadLetter(DeadLetter {
                code: PushError::DecodeBinary,
                targets: Targets::All,
                detail: "bad".into(),
            }),
            &ctx,
            None,
        );
        assert_eq!(out.data, vec![1, 2, 3]);
        assert_eq!(out.attributes[attr::CONTENT_TYPE], "application/x-protobuf");
        assert!(!out.attributes.contains_key(attr::DELIVERY_ATTEMPT));
    }

    #[test]
    fn a_republished_remainder_carries_its_attempt_source_and_first_publish() {
        let message = Message::new().set_message_id("m2").set_attributes([
            (attr::SOURCE_MESSAGE_ID, "m1"),
            (attr::PUSH_ATTEMPT, "2"),
            (attr::FIRST_PUBLISH_TIME, "2026-12-01T00:00:00Z"),
        ]);
        let ctx = MessageContext::of(&message, Some(1));
        let out = compose(
            &Letter::Republish {
                indices: vec![0, 1],
                push_attempt: 3,
                wait: Some(std::time::Duration::from_secs(30)),
                deferrals: 2,
            },
            &ctx,
            Some(&request()),
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
            &Letter::DeadLetter(DeadLetter {
                code: PushError::RetriesExhausted,
                targets: Targets::Only(vec![0]),
                detail: "d".into(),
            }),
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
