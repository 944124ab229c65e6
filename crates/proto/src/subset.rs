//! Copies of a request that hold only some of its targets, cut from the bytes
//! the producer wrote rather than re-encoded from the decoded struct (SPEC §9
//! "Dead letters"): a dead letter or a republished remainder keeps every
//! field, unknown field and unknown enum value a newer producer wrote, so that
//! it can be replayed after an upgrade that learns them.
//!
//! * Binary protobuf: a wire-level splice. The top-level fields of the body
//!   are walked with prost's own key and skip helpers; every field is copied
//!   byte for byte, in the order written, except the occurrences of
//!   `targets` (field 4), of which only the chosen ones are kept.
//! * proto3 JSON: the body is parsed as a [`serde_json::Value`], the `targets`
//!   array loses the elements not chosen, and the value is written back.
//!   Every other key stays as the producer wrote it: unknown keys, enum value
//!   names (also unknown ones), and the spelling of field names (proto3 JSON
//!   accepts both `requestId` and `request_id`). What does not survive is
//!   formatting: whitespace, the order of keys (`serde_json` sorts them), and
//!   how a number was spelt (`1e2` is written `100.0`): none of which carries
//!   meaning in proto3 JSON.
//!
//! # Positions
//!
//! A target is chosen by its position in the decoded `PushRequest.targets`,
//! and the splice counts the same way the decoders do:
//!
//! * binary: prost appends one `Target` per top-level occurrence of field 4,
//!   wherever it appears among the other fields, and refuses field 4 with any
//!   wire type but length-delimited (a message field cannot be packed). So
//!   the n-th occurrence of field 4 is `targets[n]`; an occurrence with
//!   another wire type is an error here as it is there. Unknown fields,
//!   groups included, are skipped by prost's own `skip_field`, so they never
//!   count as targets.
//! * JSON: pbjson reads `targets` (its proto name and its JSON name are the
//!   same) as an array, one `Target` per element, in order; a duplicate key is
//!   refused by the decoder, so there is one array at most.
//!
//! The caller passes the body it decoded, with the [`Encoding`] it decoded it
//! with ([`Encoding::from_attributes`], as [`crate::decode_request`] does).

use std::collections::BTreeSet;

use prost::encoding::{DecodeContext, WireType, decode_key, skip_field};

use crate::decode::Encoding;

/// Field number of `PushRequest.targets` in `push.proto`.
pub const TARGETS_FIELD: u32 = 4;
/// Key of `PushRequest.targets` in proto3 JSON (its JSON name and its proto
/// name are the same word).
pub const TARGETS_KEY: &str = "targets";

/// Why a subset could not be cut from the body. The body decoded as a
/// request, so in practice these mean a caller's mistake (the wrong body or
/// encoding, a position past the end); the caller then re-encodes the
/// decoded request instead.
#[derive(Debug, thiserror::Error)]
pub enum SubsetError {
    /// The binary body is not a sequence of well-formed protobuf fields.
    #[error(
        "cannot splice the targets of a binary push.v1.PushRequest: malformed field at byte {offset}: {source}"
    )]
    Binary {
        /// Where the field that could not be read starts.
        offset: usize,
        /// prost's complaint.
        #[source]
        source: prost::DecodeError,
    },
    /// Field 4 (`targets`) is not length-delimited, as no decodable request has it.
    #[error(
        "cannot splice the targets of a binary push.v1.PushRequest: field 4 (targets) at byte {offset} has wire type {wire_type:?}, not length-delimited"
    )]
    TargetsWireType {
        /// Where the field starts.
        offset: usize,
        /// Its wire type.
        wire_type: WireType,
    },
    /// The JSON body does not parse.
    #[error("cannot splice the targets of a proto3 JSON push.v1.PushRequest: {0}")]
    Json(#[source] serde_json::Error),
    /// The JSON body is not an object.
    #[error(
        "cannot splice the targets of a proto3 JSON push.v1.PushRequest: the body is not a JSON object"
    )]
    NotAnObject,
    /// The JSON body's `targets` is neither an array nor absent (or null).
    #[error(
        "cannot splice the targets of a proto3 JSON push.v1.PushRequest: `targets` is not an array"
    )]
    TargetsNotAnArray,
    /// A chosen position is past the request's last target.
    #[error("target {index} was chosen, but the body holds {count} targets")]
    IndexOutOfRange {
        /// The first chosen position that does not exist.
        index: usize,
        /// How many targets the body holds.
        count: usize,
    },
}

/// The body of a request that holds only the targets at `indices` (positions
/// in the decoded `targets`), cut from `data`, the body of the whole request
/// as received in `encoding`. `indices` is a set: order and repetition do
/// not matter, and the targets kept stay in the order the producer wrote
/// them. Everything but the targets not chosen is kept (see the module
/// docs for what that means for JSON).
pub fn subset(data: &[u8], encoding: Encoding, indices: &[usize]) -> Result<Vec<u8>, SubsetError> {
    let chosen: BTreeSet<usize> = indices.iter().copied().collect();
    match encoding {
        Encoding::Binary => splice_binary(data, &chosen),
        Encoding::Json => edit_json(data, &chosen),
    }
}

/// The first chosen position at or past `count`, as an error.
fn check_range(chosen: &BTreeSet<usize>, count: usize) -> Result<(), SubsetError> {
    match chosen.range(count..).next() {
        Some(&index) => Err(SubsetError::IndexOutOfRange { index, count }),
        None => Ok(()),
    }
}

fn splice_binary(data: &[u8], chosen: &BTreeSet<usize>) -> Result<Vec<u8>, SubsetError> {
    let mut out = Vec::with_capacity(data.len());
    let mut rest: &[u8] = data;
    let mut position = 0;
    while !rest.is_empty() {
        let start = data.len() - rest.len();
        let malformed = |source| SubsetError::Binary {
            offset: start,
            source,
        };
        let (tag, wire_type) = decode_key(&mut rest).map_err(malformed)?;
        // The same skip (and the same limits) prost applies to unknown fields.
        skip_field(wire_type, tag, &mut rest, DecodeContext::default()).map_err(malformed)?;
        let field = &data[start..data.len() - rest.len()];
        if tag == TARGETS_FIELD {
            if wire_type != WireType::LengthDelimited {
                return Err(SubsetError::TargetsWireType {
                    offset: start,
                    wire_type,
                });
            }
            if chosen.contains(&position) {
                out.extend_from_slice(field);
            }
            position += 1;
        } else {
            out.extend_from_slice(field);
        }
    }
    check_range(chosen, position)?;
    Ok(out)
}

fn edit_json(data: &[u8], chosen: &BTreeSet<usize>) -> Result<Vec<u8>, SubsetError> {
    let mut value: serde_json::Value = serde_json::from_slice(data).map_err(SubsetError::Json)?;
    let object = value.as_object_mut().ok_or(SubsetError::NotAnObject)?;
    match object.get_mut(TARGETS_KEY) {
        // No targets (absent, or null: the default): nothing to choose from.
        None | Some(serde_json::Value::Null) => check_range(chosen, 0)?,
        Some(serde_json::Value::Array(targets)) => {
            check_range(chosen, targets.len())?;
            let mut position = 0;
            targets.retain(|_| {
                let keep = chosen.contains(&position);
                position += 1;
                keep
            });
        }
        Some(_) => return Err(SubsetError::TargetsNotAnArray),
    }
    serde_json::to_vec(&value).map_err(SubsetError::Json)
}

#[cfg(test)]
mod tests {
    use prost::Message;
    use prost::encoding::{encode_key, encode_varint};

    use super::*;
    use crate::v1::{Platform, PushRequest, Target};
    use crate::{decode_request, encode_message};

    /// One binary field: key, then the payload as the wire type wants it.
    fn field(tag: u32, wire_type: WireType, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_key(tag, wire_type, &mut out);
        if wire_type == WireType::LengthDelimited {
            encode_varint(payload.len() as u64, &mut out);
        }
        out.extend_from_slice(payload);
        out
    }

    fn bytes_field(tag: u32, payload: &[u8]) -> Vec<u8> {
        field(tag, WireType::LengthDelimited, payload)
    }

    fn varint_field(tag: u32, value: u64) -> Vec<u8> {
        let mut v = Vec::new();
        encode_varint(value, &mut v);
        field(tag, WireType::Varint, &v)
    }

    /// A `Target` occurrence (field 4) with a raw platform number.
    fn target(platform: u64, token: &str) -> Vec<u8> {
        let inner = [varint_field(1, platform), bytes_field(2, token.as_bytes())].concat();
        bytes_field(TARGETS_FIELD, &inner)
    }

    fn binary(data: &[u8]) -> PushRequest {
        PushRequest::decode(data).expect("a binary request")
    }

    fn json(data: &[u8]) -> PushRequest {
        decode_request(data, &std::collections::HashMap::new()).expect("a JSON request")
    }

    #[test]
    fn binary_keeps_every_other_field_byte_for_byte_in_the_order_written() {
        // Unknown fields of every wire type (a group too), an unknown platform
        // (7), a target with an unknown field of its own, the targets spread
        // among the other fields, request_id written twice (the last wins),
        // and one target repeated.
        let unknown_varint = varint_field(99, 150);
        let unknown_fixed32 = field(100, WireType::ThirtyTwoBit, &[1, 2, 3, 4]);
        let unknown_fixed64 = field(101, WireType::SixtyFourBit, &[1, 2, 3, 4, 5, 6, 7, 8]);
        let unknown_bytes = bytes_field(102, b"future");
        let mut group = Vec::new();
        encode_key(103, WireType::StartGroup, &mut group);
        group.extend(varint_field(1, 5));
        group.extend(target(1, "inside-a-group-not-a-target"));
        encode_key(103, WireType::EndGroup, &mut group);
        let pigeon = target(7, "pigeon");
        let fcm = bytes_field(
            TARGETS_FIELD,
            &[
                varint_field(1, 2),
                bytes_field(2, b"fcm-1"),
                varint_field(9, 3),
            ]
            .concat(),
        );
        let apns = target(1, "abcd");
        let notification = bytes_field(5, &bytes_field(1, b"Hi"));
        let parts: Vec<Vec<u8>> = vec![
            apns.clone(),             // target 0
            bytes_field(1, b"r-old"), // request_id
            unknown_varint,
            pigeon,       // target 1
            notification, // a known message field
            unknown_fixed32,
            fcm.clone(), // target 2
            group,
            bytes_field(1, b"r-1"), // request_id again
            unknown_fixed64,
            apns, // target 3, the same as target 0
            unknown_bytes,
            varint_field(7, 9), // priority: an unknown value
        ];
        let data = parts.concat();
        let whole = binary(&data);
        assert_eq!(whole.targets.len(), 4, "the group holds no target");
        assert_eq!(whole.request_id, "r-1");

        let cut = subset(&data, Encoding::Binary, &[1, 3]).expect("splices");
        // Targets 0 and 2 go; everything else stays where it was.
        let spelled: Vec<u8> = [
            &parts[1], &parts[2], &parts[3], &parts[4], &parts[5], &parts[7], &parts[8], &parts[9],
            &parts[10], &parts[11], &parts[12],
        ]
        .into_iter()
        .flat_map(|p| p.iter().copied())
        .collect();
        assert_eq!(cut, spelled, "byte for byte");
        assert_eq!(binary(&cut), whole.with_targets(&[1, 3]));
        assert_eq!(binary(&cut).targets[0].platform, 7, "unknown platform kept");

        let cut = subset(&data, Encoding::Binary, &[2]).expect("splices");
        assert!(
            cut.windows(fcm.len()).any(|w| w == fcm.as_slice()),
            "the target's own unknown field is kept"
        );
        assert_eq!(binary(&cut), whole.with_targets(&[2]));
    }

    #[test]
    fn binary_of_every_target_is_the_original_and_of_none_has_no_targets() {
        let data = [
            bytes_field(1, b"r-1"),
            target(1, "a"),
            varint_field(50, 1),
            target(2, "b"),
        ]
        .concat();
        assert_eq!(
            subset(&data, Encoding::Binary, &[1, 0]).expect("splices"),
            data
        );
        let none = subset(&data, Encoding::Binary, &[]).expect("splices");
        assert_eq!(none, [bytes_field(1, b"r-1"), varint_field(50, 1)].concat());
    }

    #[test]
    fn binary_keeps_what_the_producer_wrote_where_re_encoding_would_not() {
        // An over-long varint length (0x85 0x00 is 5) and a string field set
        // to its default: prost would write neither this way.
        let mut odd_target = Vec::new();
        encode_key(TARGETS_FIELD, WireType::LengthDelimited, &mut odd_target);
        odd_target.extend([0x85, 0x00]);
        odd_target.extend(bytes_field(2, b"tok"));
        let data = [bytes_field(3, b""), odd_target.clone(), target(2, "x")].concat();
        let whole = binary(&data);
        let cut = subset(&data, Encoding::Binary, &[0]).expect("splices");
        assert_eq!(cut, [bytes_field(3, b""), odd_target].concat());
        assert_ne!(cut, whole.with_targets(&[0]).encode_to_vec());
        assert_eq!(binary(&cut), whole.with_targets(&[0]));
    }

    #[test]
    fn indices_are_a_set_and_targets_keep_their_order() {
        let req = PushRequest {
            targets: ["a", "b", "c"]
                .map(|t| Target {
                    platform: Platform::Fcm as i32,
                    token: t.into(),
                })
                .to_vec(),
            ..Default::default()
        };
        for encoding in [Encoding::Binary, Encoding::Json] {
            let data = encode_message(&req, encoding).expect("encodes");
            let cut = subset(&data, encoding, &[2, 0, 2]).expect("splices");
            let attrs = std::collections::HashMap::from([(
                crate::attributes::CONTENT_TYPE.to_string(),
                encoding.content_type().to_string(),
            )]);
            let tokens: Vec<String> = decode_request(&cut, &attrs)
                .expect("decodes")
                .targets
                .into_iter()
                .map(|t| t.token)
                .collect();
            assert_eq!(tokens, ["a", "c"], "{encoding:?}");
        }
    }

    #[test]
    fn a_position_past_the_end_is_an_error_not_a_shorter_copy() {
        let data = [target(1, "a"), target(2, "b")].concat();
        let err = subset(&data, Encoding::Binary, &[1, 2, 5]).expect_err("out of range");
        assert!(
            matches!(err, SubsetError::IndexOutOfRange { index: 2, count: 2 }),
            "{err}"
        );
        let body = br#"{"targets":[{"token":"a"}]}"#;
        let err = subset(body, Encoding::Json, &[1]).expect_err("out of range");
        assert_eq!(
            err.to_string(),
            "target 1 was chosen, but the body holds 1 targets"
        );
        let err = subset(br#"{"requestId":"r"}"#, Encoding::Json, &[0]).expect_err("none");
        assert!(matches!(
            err,
            SubsetError::IndexOutOfRange { index: 0, count: 0 }
        ));
    }

    #[test]
    fn malformed_input_is_a_typed_error() {
        // Truncated: a length past the end.
        let err = subset(&[0x22, 0x05, b'a'], Encoding::Binary, &[0]).expect_err("truncated");
        assert!(
            matches!(err, SubsetError::Binary { offset: 0, .. }),
            "{err}"
        );
        // Field 4 as a varint: prost refuses that request as well.
        let data = [bytes_field(1, b"r"), varint_field(TARGETS_FIELD, 1)].concat();
        assert!(PushRequest::decode(data.as_slice()).is_err());
        let err = subset(&data, Encoding::Binary, &[0]).expect_err("wire type");
        assert!(
            matches!(
                err,
                SubsetError::TargetsWireType {
                    offset: 3,
                    wire_type: WireType::Varint
                }
            ),
            "{err}"
        );
        assert!(matches!(
            subset(b"{nope", Encoding::Json, &[0]),
            Err(SubsetError::Json(_))
        ));
        assert!(matches!(
            subset(b"[1]", Encoding::Json, &[0]),
            Err(SubsetError::NotAnObject)
        ));
        assert!(matches!(
            subset(br#"{"targets":{"a":1}}"#, Encoding::Json, &[0]),
            Err(SubsetError::TargetsNotAnArray)
        ));
    }

    #[test]
    fn json_keeps_unknown_keys_enum_names_and_both_spellings_of_field_names() {
        let body = br#"{
            "requestId": "r-9",
            "collapse_key": "c",
            "futureField": {"a": [1, 2], "b": null},
            "priority": "PRIORITY_URGENT",
            "notification": {"title": "Hi", "title_loc_args": ["x"], "futureNote": true},
            "data": {"k": "v"},
            "targets": [
                {"platform": "PLATFORM_PIGEON", "token": "p"},
                {"platform": "PLATFORM_FCM", "token": "f", "weight": 3},
                {"platform": 1, "token": "a"}
            ]
        }"#;
        let whole = json(body);
        assert_eq!(whole.targets.len(), 3);
        let cut = subset(body, Encoding::Json, &[0, 2]).expect("edits");
        let text = String::from_utf8(cut.clone()).expect("utf-8");
        let expected = concat!(
            r#"{"collapse_key":"c","data":{"k":"v"},"futureField":{"a":[1,2],"b":null},"#,
            r#""notification":{"futureNote":true,"title":"Hi","title_loc_args":["x"]},"#,
            r#""priority":"PRIORITY_URGENT","requestId":"r-9","#,
            r#""targets":[{"platform":"PLATFORM_PIGEON","token":"p"},{"platform":1,"token":"a"}]}"#
        );
        assert_eq!(text, expected);
        assert_eq!(json(&cut), whole.with_targets(&[0, 2]));

        let cut = subset(body, Encoding::Json, &[1]).expect("edits");
        let value: serde_json::Value = serde_json::from_slice(&cut).expect("JSON");
        assert_eq!(
            value["targets"],
            serde_json::json!([{"platform": "PLATFORM_FCM", "token": "f", "weight": 3}]),
            "a target's unknown key is kept"
        );
        let mut original: serde_json::Value = serde_json::from_slice(body).expect("JSON");
        original["targets"] = value["targets"].clone();
        assert_eq!(value, original, "every other key exactly as written");
    }

    #[test]
    fn json_of_every_target_holds_every_target() {
        let body = br#"{"app":"a","targets":[{"token":"x"},{"token":"y"}],"z":1e2}"#;
        let cut = subset(body, Encoding::Json, &[0, 1]).expect("edits");
        // Only the formatting of the number changes: the same value.
        assert_eq!(
            String::from_utf8(cut).expect("utf-8"),
            r#"{"app":"a","targets":[{"token":"x"},{"token":"y"}],"z":100.0}"#
        );
        let null = subset(br#"{"targets":null,"app":"a"}"#, Encoding::Json, &[]).expect("edits");
        assert_eq!(null, br#"{"app":"a","targets":null}"#);
    }
}
