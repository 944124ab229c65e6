//! Unit tests of request and target validation.

use super::*;
use crate::v1::{Notification, Target};

const APNS_OK: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";

fn apps() -> Vec<AppPlatforms> {
    vec![
        AppPlatforms {
            name: "main".into(),
            apns: true,
            fcm: true,
        },
        AppPlatforms {
            name: "android-only".into(),
            apns: false,
            fcm: true,
        },
    ]
}

fn target(platform: Platform, token: &str) -> Target {
    Target {
        platform: platform as i32,
        token: token.into(),
    }
}

fn request(targets: Vec<Target>) -> PushRequest {
    PushRequest {
        request_id: "r".into(),
        targets,
        ..Default::default()
    }
}

#[test]
fn valid_request_is_all_sendable_on_the_default_app() {
    let req = request(vec![
        target(Platform::Apns, APNS_OK),
        target(Platform::Fcm, "fcm-token:APA91b_x.y"),
    ]);
    let checked = check(&req, &apps()).expect("valid");
    assert_eq!(checked.app_index, 0);
    assert_eq!(checked.sendable, vec![0, 1]);
    assert!(checked.rejected.is_empty());
}

#[test]
fn no_targets_is_rejected() {
    assert_eq!(
        check(&request(vec![]), &apps()),
        Err(RequestError::NoTargets)
    );
    assert_eq!(RequestError::NoTargets.code().as_str(), "no_targets");
}

#[test]
fn too_many_targets_is_rejected() {
    let req = request(vec![target(Platform::Fcm, "t"); MAX_TARGETS + 1]);
    let err = check(&req, &apps()).expect_err("too many");
    assert_eq!(
        err,
        RequestError::TooManyTargets {
            count: MAX_TARGETS + 1,
            max: MAX_TARGETS
        }
    );
    let at_cap = request(vec![target(Platform::Fcm, "t"); MAX_TARGETS]);
    assert!(check(&at_cap, &apps()).is_ok());
}

#[test]
fn unknown_app_is_rejected_and_names_the_known_ones() {
    let mut req = request(vec![target(Platform::Fcm, "t")]);
    req.app = "nope".into();
    let err = check(&req, &apps()).expect_err("unknown");
    assert_eq!(err.code().as_str(), "unknown_app");
    let text = err.to_string();
    assert!(
        text.contains("nope") && text.contains("main, android-only"),
        "{text}"
    );
    req.app = "android-only".into();
    assert_eq!(check(&req, &apps()).expect("known").app_index, 1);
    assert_eq!(check::<AppPlatforms>(&req, &[]), Err(RequestError::NoApps));
}

#[test]
fn unspecified_platform_rejects_only_that_target() {
    let req = request(vec![
        target(Platform::Unspecified, "x"),
        target(Platform::Fcm, "ok"),
    ]);
    let checked = check(&req, &apps()).expect("request ok");
    assert_eq!(checked.sendable, vec![1]);
    assert_eq!(
        checked.rejected,
        vec![TargetError::UnspecifiedPlatform { index: 0 }]
    );
    let mut unknown = request(vec![target(Platform::Fcm, "ok")]);
    unknown.targets[0].platform = 42;
    assert_eq!(
        check(&unknown, &apps()).expect("ok").rejected[0]
            .code()
            .as_str(),
        "unspecified_platform"
    );
}

#[test]
fn apns_token_shapes() {
    assert_eq!(apns_token_problem(APNS_OK), None);
    assert_eq!(apns_token_problem(&APNS_OK.to_uppercase()), None);
    assert_eq!(apns_token_problem(""), Some(TokenProblem::Empty));
    assert_eq!(
        apns_token_problem(&"g".repeat(64)),
        Some(TokenProblem::NotHex)
    );
    assert_eq!(
        apns_token_problem(&"a".repeat(65)),
        Some(TokenProblem::OddLength)
    );
    assert_eq!(
        apns_token_problem(&"a".repeat(62)),
        Some(TokenProblem::BadLength)
    );
    assert_eq!(apns_token_problem(&"a".repeat(200)), None);
    assert_eq!(
        apns_token_problem(&"a".repeat(202)),
        Some(TokenProblem::BadLength)
    );
}

#[test]
fn fcm_token_shapes() {
    assert_eq!(fcm_token_problem("dAbc-_:APA91b.x"), None);
    assert_eq!(fcm_token_problem(""), Some(TokenProblem::Empty));
    assert_eq!(
        fcm_token_problem("has space"),
        Some(TokenProblem::BadCharacter)
    );
    assert_eq!(
        fcm_token_problem("ünïcode"),
        Some(TokenProblem::BadCharacter)
    );
    assert_eq!(
        fcm_token_problem(&"a".repeat(FCM_TOKEN_MAX_CHARS + 1)),
        Some(TokenProblem::BadLength)
    );
}

#[test]
fn malformed_token_rejects_only_that_target_and_never_prints_it() {
    let req = request(vec![
        target(Platform::Apns, "zz-secret-token"),
        target(Platform::Apns, APNS_OK),
    ]);
    let checked = check(&req, &apps()).expect("request ok");
    assert_eq!(checked.sendable, vec![1]);
    let err = &checked.rejected[0];
    assert_eq!(err.code().as_str(), "malformed_token");
    assert_eq!(err.index(), 0);
    assert!(!err.to_string().contains("secret"), "{err}");
}

#[test]
fn platform_missing_for_the_app_rejects_only_that_target() {
    let mut req = request(vec![
        target(Platform::Apns, APNS_OK),
        target(Platform::Fcm, "ok"),
    ]);
    req.app = "android-only".into();
    let checked = check(&req, &apps()).expect("request ok");
    assert_eq!(checked.sendable, vec![1]);
    assert_eq!(
        checked.rejected[0].code().as_str(),
        "platform_not_configured"
    );
    assert!(checked.rejected[0].to_string().contains("apps[].apns"));
}

#[test]
fn oversized_fields_are_rejected() {
    let mut req = request(vec![target(Platform::Fcm, "t")]);
    req.request_id = "x".repeat(MAX_ID_BYTES + 1);
    assert!(matches!(
        check(&req, &apps()),
        Err(RequestError::FieldTooLong {
            field: "request_id",
            ..
        })
    ));

    let mut req = request(vec![target(Platform::Fcm, "t")]);
    req.collapse_key = "x".repeat(MAX_COLLAPSE_KEY_BYTES + 1);
    assert!(matches!(
        check(&req, &apps()),
        Err(RequestError::FieldTooLong {
            field: "collapse_key",
            ..
        })
    ));

    let mut req = request(vec![target(Platform::Fcm, "t")]);
    req.notification = Some(Notification {
        body: "x".repeat(MAX_TEXT_BYTES + 1),
        ..Default::default()
    });
    let err = check(&req, &apps()).expect_err("too long");
    assert_eq!(err.code().as_str(), "field_too_long");
    assert!(err.to_string().contains("notification.body"));

    let mut req = request(vec![target(Platform::Fcm, "t")]);
    req.data.insert("k".into(), "v".repeat(MAX_DATA_BYTES));
    assert!(matches!(
        check(&req, &apps()),
        Err(RequestError::FieldTooLong { field: "data", .. })
    ));
}

#[test]
fn negative_ttl_is_rejected() {
    let mut req = request(vec![target(Platform::Fcm, "t")]);
    req.ttl = Some(pbjson_types::Duration {
        seconds: -1,
        nanos: 0,
    });
    assert_eq!(check(&req, &apps()), Err(RequestError::InvalidTtl));
    req.ttl = Some(pbjson_types::Duration {
        seconds: i64::MAX,
        nanos: 0,
    });
    assert_eq!(
        check(&req, &apps()),
        Err(RequestError::InvalidTtl),
        "a ttl no clock can hold"
    );
    req.ttl = Some(pbjson_types::Duration {
        seconds: MAX_TTL_SECONDS,
        nanos: 0,
    });
    assert!(check(&req, &apps()).is_ok());
}

#[test]
fn a_token_listed_twice_is_sent_once() {
    let token = "a".repeat(64);
    let req = request(vec![
        target(Platform::Apns, &token),
        target(Platform::Fcm, "t"),
        target(Platform::Apns, &token),
        target(Platform::Fcm, "t"),
        target(Platform::Fcm, "u"),
    ]);
    let checked = check(&req, &apps()).expect("valid");
    assert_eq!(checked.sendable, vec![0, 1, 4]);
    assert_eq!(checked.duplicates, vec![2, 3]);
    assert!(checked.rejected.is_empty());
}
