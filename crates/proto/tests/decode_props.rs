//! Property tests: no byte string or attribute set makes decoding or
//! validation panic, and whatever decodes re-encodes to the same request.

use std::collections::HashMap;

use proptest::prelude::*;
use push_dispatch_proto::{
    AppPlatforms, Encoding, check, decode_request, encode_message, v1::PushRequest,
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
}
