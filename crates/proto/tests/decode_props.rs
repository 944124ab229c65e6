//! Property tests: no byte string or attribute set makes decoding or
//! validation panic, whatever decodes re-encodes to the same request, and a
//! subset cut from the bytes decodes to the decoded request's subset (the
//! splice counts targets as the decoders do).

use std::collections::HashMap;

use proptest::prelude::*;
use prost::encoding::{WireType, encode_key, encode_varint};
use push_dispatch_proto::{
    AppPlatforms, Encoding, check, decode_as, decode_request, encode_message, subset,
    v1::PushRequest,
};

fn apps() -> Vec<AppPlatforms> {
    vec![AppPlatforms {
        name: "default".into(),
        apns: true,
        fcm: false,
    }]
}

fn attrs(binary: bool) -> HashMap<String, String> {
    let mut a = HashMap::new();
    if binary {
        a.insert("content-type".into(), "application/x-protobuf".into());
    }
    a
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512), binary in any::<bool>()) {
        if let Ok(req) = decode_request(&data, &attrs(binary)) {
            let _ = check(&req, &apps());
        }
    }

    #[test]
    fn arbitrary_json_text_never_panics(text in ".{0,256}") {
        if let Ok(req) = decode_request(text.as_bytes(), &attrs(false)) {
            let _ = check(&req, &apps());
        }
    }

    #[test]
    fn json_shaped_input_never_panics(
        platform in prop_oneof![Just("\"PLATFORM_APNS\""), Just("\"PLATFORM_FCM\""), Just("7"), Just("null"), Just("\"x\"")],
        token in "[ -~]{0,80}",
        ttl in prop_oneof![Just("\"10s\""), Just("\"-5s\""), Just("\"1.5s\""), Just("\"x\""), Just("3")],
        badge in any::<i64>(),
    ) {
        let body = format!(
            r#"{{"targets":[{{"platform":{platform},"token":{token:?}}}],"ttl":{ttl},"notification":{{"badge":{badge}}}}}"#
        );
        if let Ok(req) = decode_request(body.as_bytes(), &attrs(false)) {
            let _ = check(&req, &apps());
        }
    }

    #[test]
    fn decoded_binary_reencodes_identically(data in proptest::collection::vec(any::<u8>(), 0..256)) {
        if let Ok(req) = decode_request(&data, &attrs(true)) {
            let bytes = encode_message(&req, Encoding::Binary).expect("encodes");
            let again: PushRequest = decode_request(&bytes, &attrs(true)).expect("re-decodes");
            prop_assert_eq!(again, req);
        }
    }

    #[test]
    fn a_binary_splice_decodes_to_the_decoded_subset(
        fields in proptest::collection::vec(binary_field(), 0..12),
        mask in any::<u16>(),
    ) {
        let data = fields.concat();
        if let Ok(req) = decode_as(&data, Encoding::Binary) {
            let chosen: Vec<usize> = (0..req.targets.len()).filter(|i| mask & (1 << (i % 16)) != 0).collect();
            let cut = subset(&data, Encoding::Binary, &chosen).expect("a decodable body splices");
            prop_assert_eq!(decode_as(&cut, Encoding::Binary).expect("decodes"), req.with_targets(&chosen));
        }
    }

    #[test]
    fn a_json_edit_decodes_to_the_decoded_subset(
        targets in proptest::collection::vec(json_target(), 0..8),
        extra in prop_oneof![Just(""), Just(r#""future":{"x":[1,2.5,null]},"#), Just(r#""request_id":"r","collapseKey":"c","#)],
        mask in any::<u8>(),
    ) {
        let body = format!(r#"{{{extra}"targets":[{}]}}"#, targets.join(","));
        if let Ok(req) = decode_as(body.as_bytes(), Encoding::Json) {
            let chosen: Vec<usize> = (0..req.targets.len()).filter(|i| mask & (1 << (i % 8)) != 0).collect();
            let cut = subset(body.as_bytes(), Encoding::Json, &chosen).expect("a decodable body edits");
            prop_assert_eq!(decode_as(&cut, Encoding::Json).expect("decodes"), req.with_targets(&chosen));
        }
    }
}

/// One top-level field of a binary `PushRequest`, known or not, well-formed or not.
fn binary_field() -> impl Strategy<Value = Vec<u8>> {
    let key = |tag: u32, wire_type: WireType| {
        let mut out = Vec::new();
        encode_key(tag, wire_type, &mut out);
        out
    };
    let length_delimited = move |tag: u32, payload: Vec<u8>| {
        let mut out = key(tag, WireType::LengthDelimited);
        encode_varint(payload.len() as u64, &mut out);
        out.extend(payload);
        out
    };
    prop_oneof![
        // A target: platform (any number) and token.
        (0u64..10, "[a-f0-9]{0,8}").prop_map(move |(platform, token)| {
            let mut inner = key(1, WireType::Varint);
            encode_varint(platform, &mut inner);
            inner.extend(length_delimited(2, token.into_bytes()));
            length_delimited(4, inner)
        }),
        "[a-z]{0,6}".prop_map(move |id| length_delimited(1, id.into_bytes())),
        (16u32..200, any::<u64>()).prop_map(move |(tag, v)| {
            let mut out = key(tag, WireType::Varint);
            encode_varint(v, &mut out);
            out
        }),
        (16u32..200, proptest::collection::vec(any::<u8>(), 0..6))
            .prop_map(move |(tag, payload)| length_delimited(tag, payload)),
        // Anything: mostly not decodable, which is skipped.
        proptest::collection::vec(any::<u8>(), 0..4),
    ]
}

/// One JSON target, with known or unknown platform names and keys.
fn json_target() -> impl Strategy<Value = String> {
    (
        prop_oneof![
            Just(r#""PLATFORM_APNS""#),
            Just(r#""PLATFORM_FCM""#),
            Just(r#""PLATFORM_PIGEON""#),
            Just("2")
        ],
        "[a-z0-9-]{0,8}",
        prop_oneof![Just(""), Just(r#","weight":3"#)],
    )
        .prop_map(|(platform, token, extra)| {
            format!(r#"{{"platform":{platform},"token":"{token}"{extra}}}"#)
        })
}
