//! FCM HTTP v1 and OAuth stand-ins: issued bearer tokens only, message shape,
//! project check, scripted prefixes, and gcp_auth as the real client.

use gcp_auth::TokenProvider;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::{FCM_SCOPE, PROJECT, start};

fn message(token: &str) -> Value {
    json!({
        "message": {
            "token": token,
            "notification": {"title": "hi", "body": "there"},
            "data": {"k": "v"},
            "android": {"priority": "HIGH", "ttl": "3600s"},
        }
    })
}

#[tokio::test]
async fn oauth_assertion_buys_a_token_that_fcm_accepts() {
    let fx = start().await;
    let a = fx.token_request(&fx.assertion(json!({}))).await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    assert_eq!(a.body["token_type"], "Bearer");
    assert_eq!(a.body["expires_in"], 3599);
    let token = a.body["access_token"].as_str().unwrap();

    let a = fx.fcm_send(PROJECT, Some(token), message("device-1")).await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    let name = a.body["name"].as_str().unwrap();
    assert!(
        name.starts_with(&format!("projects/{PROJECT}/messages/")),
        "{name}"
    );

    let d = fx.sandbox.deliveries();
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].platform, push_dispatch_sandbox::Platform::Fcm);
    assert_eq!(d[0].token, "device-1");
    assert_eq!(d[0].id, name);
    assert_eq!(d[0].payload["data"]["k"], "v");
    let stats = fx.sandbox.stats();
    assert_eq!(stats.oauth_tokens_issued, 1);
    assert_eq!(stats.fcm_count("200"), 1);
}

#[tokio::test]
async fn gcp_auth_custom_service_account_works_against_the_sandbox() {
    let fx = start().await;
    // The service account's token_uri points at the sandbox (http://), as `make run` writes it.
    let sa = gcp_auth::CustomServiceAccount::from_file(&fx.creds.service_account_file).unwrap();
    let token = sa.token(&[FCM_SCOPE]).await.unwrap();
    let a = fx
        .fcm_send(PROJECT, Some(token.as_str()), message("device-2"))
        .await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    assert_eq!(fx.sandbox.stats().oauth_tokens_issued, 1);
}

#[tokio::test]
async fn only_issued_unexpired_tokens_are_accepted() {
    let fx = start().await;
    let a = fx.fcm_send(PROJECT, None, message("d")).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(a.body["error"]["status"], "UNAUTHENTICATED");
    assert!(
        a.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("missing")
    );

    let a = fx
        .fcm_send(PROJECT, Some("ya29.made-up"), message("d"))
        .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(a.body["error"]["code"], 401);

    // A token without an FCM scope is valid but not enough.
    let no_scope = fx
        .token_request(&fx.assertion(json!({"scope": "https://www.googleapis.com/auth/pubsub"})))
        .await;
    let t = no_scope.body["access_token"].as_str().unwrap();
    let a = fx.fcm_send(PROJECT, Some(t), message("d")).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert_eq!(a.body["error"]["status"], "PERMISSION_DENIED");

    // cloud-platform also grants FCM, as at Google.
    let broad = fx
        .token_request(
            &fx.assertion(json!({"scope": "https://www.googleapis.com/auth/cloud-platform"})),
        )
        .await;
    let t = broad.body["access_token"].as_str().unwrap();
    assert_eq!(
        fx.fcm_send(PROJECT, Some(t), message("d")).await.status,
        StatusCode::OK
    );
    assert_eq!(fx.sandbox.stats().fcm_count("401 UNAUTHENTICATED"), 2);
}

#[tokio::test]
async fn oauth_refuses_bad_assertions() {
    let fx = start().await;
    let refused = |a: &crate::common::Answer, error: &str| {
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{:?}", a.body);
        assert_eq!(a.body["error"], error, "{:?}", a.body);
    };
    // Signed by another key.
    let other_dir = tempfile::tempdir().unwrap();
    let other =
        push_dispatch_sandbox::devkeys::ensure(other_dir.path(), "http://x/token", "p").unwrap();
    let other_sa: Value =
        serde_json::from_slice(&std::fs::read(&other.service_account_file).unwrap()).unwrap();
    let sa: Value =
        serde_json::from_slice(&std::fs::read(&fx.creds.service_account_file).unwrap()).unwrap();
    let claims = json!({
        "iss": sa["client_email"], "aud": sa["token_uri"], "scope": FCM_SCOPE,
        "iat": crate::common::now(), "exp": crate::common::now() + 3000,
    });
    let forged =
        crate::common::sign_rs256(other_sa["private_key"].as_str().unwrap(), &claims, true);
    refused(&fx.token_request(&forged).await, "invalid_grant");

    // Unpadded base64url is fine too.
    let unpadded = crate::common::sign_rs256(sa["private_key"].as_str().unwrap(), &claims, false);
    assert_eq!(fx.token_request(&unpadded).await.status, StatusCode::OK);

    refused(
        &fx.token_request(&fx.assertion(json!({"iss": "someone@else.iam.gserviceaccount.com"})))
            .await,
        "invalid_grant",
    );
    let a = fx
        .token_request(&fx.assertion(json!({"aud": "https://oauth2.example.com/token"})))
        .await;
    refused(&a, "invalid_grant");
    assert!(
        a.body["error_description"]
            .as_str()
            .unwrap()
            .contains("audience")
    );
    refused(
        &fx.token_request(&fx.assertion(json!({"scope": ""}))).await,
        "invalid_scope",
    );
    let now = crate::common::now();
    refused(
        &fx.token_request(&fx.assertion(json!({"iat": now - 7200, "exp": now - 3600})))
            .await,
        "invalid_grant",
    );
    refused(
        &fx.token_request(&fx.assertion(json!({"exp": now + 7200})))
            .await,
        "invalid_grant",
    );
    refused(&fx.token_request("not.a.jwt").await, "invalid_grant");

    let a = crate::common::answer(
        fx.client
            .post(fx.url("/token"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body("grant_type=client_credentials&assertion=x")
            .send()
            .await
            .unwrap(),
    )
    .await;
    refused(&a, "unsupported_grant_type");
    let stats = fx.sandbox.stats();
    assert_eq!(stats.oauth_tokens_issued, 1);
    assert_eq!(stats.oauth_rejected, 8);
}

#[tokio::test]
async fn a_wrong_project_makes_tokens_look_dead() {
    let fx = start().await;
    let t = fx.access_token().await;
    let a = fx.fcm_send("other-project", Some(&t), message("d")).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert_eq!(a.fcm_code(), "SENDER_ID_MISMATCH");
    assert_eq!(a.body["error"]["status"], "PERMISSION_DENIED");
}

#[tokio::test]
async fn message_shape_is_checked_and_the_field_named() {
    let fx = start().await;
    let t = fx.access_token().await;
    let check = |body: Value, field: &'static str| {
        let fut = fx.fcm_send(PROJECT, Some(&t), body);
        async move {
            let a = fut.await;
            assert_eq!(a.status, StatusCode::BAD_REQUEST, "{field}: {:?}", a.body);
            assert_eq!(a.body["error"]["status"], "INVALID_ARGUMENT");
            let msg = a.body["error"]["message"].as_str().unwrap().to_string();
            assert!(msg.contains(field), "expected {field} in {msg}");
        }
    };
    check(
        json!({"message": {"token": "d", "data": {"n": 1}}}),
        "message.data[0].value",
    )
    .await;
    check(
        json!({"message": {"token": "d", "android": {"priority": "URGENT"}}}),
        "message.android.priority",
    )
    .await;
    check(
        json!({"message": {"token": "d", "android": {"ttl": "1h"}}}),
        "message.android.ttl",
    )
    .await;
    check(json!({"message": {"token": "d", "badge": 1}}), "badge").await;
    check(json!({"message": {"token": "d", "topic": "news"}}), "oneof").await;
    check(json!({"message": {"data": {}}}), "Recipient").await;
    check(json!({"msg": {}}), "msg").await;
    check(
        json!({"message": {"token": "d", "apns": {"headers": {"apns-priority": 10}}}}),
        "message.apns.headers[0].value",
    )
    .await;
    let a = fx
        .fcm_send(
            PROJECT,
            Some(&t),
            json!({"message": {"token": "has space"}}),
        )
        .await;
    assert_eq!(
        a.body["error"]["message"],
        "The registration token is not a valid FCM registration token"
    );

    // Not JSON at all.
    let a = crate::common::answer(
        fx.client
            .post(fx.url(&format!("/v1/projects/{PROJECT}/messages:send")))
            .bearer_auth(&t)
            .body("{")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(fx.sandbox.deliveries().len(), 0);
}

#[tokio::test]
async fn validate_only_checks_without_delivering() {
    let fx = start().await;
    let t = fx.access_token().await;
    let mut body = message("device-3");
    body["validate_only"] = json!(true);
    let a = fx.fcm_send(PROJECT, Some(&t), body).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(
        a.body["name"],
        format!("projects/{PROJECT}/messages/fake_message_id")
    );
    assert!(fx.sandbox.deliveries().is_empty());
}

#[tokio::test]
async fn scripted_token_prefixes() {
    let fx = start().await;
    let t = fx.access_token().await;
    for (token, status, code) in [
        ("unregistered-1", StatusCode::NOT_FOUND, "UNREGISTERED"),
        ("invalid-1", StatusCode::BAD_REQUEST, "INVALID_ARGUMENT"),
        ("mismatch-1", StatusCode::FORBIDDEN, "SENDER_ID_MISMATCH"),
        ("quota-1", StatusCode::TOO_MANY_REQUESTS, "QUOTA_EXCEEDED"),
        (
            "quota-device-1",
            StatusCode::TOO_MANY_REQUESTS,
            "QUOTA_EXCEEDED",
        ),
        (
            "unavailable-1",
            StatusCode::SERVICE_UNAVAILABLE,
            "UNAVAILABLE",
        ),
    ] {
        let a = fx.fcm_send(PROJECT, Some(&t), message(token)).await;
        assert_eq!(
            (a.status, a.fcm_code()),
            (status, code),
            "{token}: {:?}",
            a.body
        );
        assert_eq!(
            a.body["error"]["details"][0]["@type"],
            "type.googleapis.com/google.firebase.fcm.v1.FcmError"
        );
        if token.starts_with("quota-device-") {
            assert!(a.headers.get("retry-after").is_none(), "{:?}", a.headers);
            assert_eq!(a.body["error"]["message"], "Device message rate exceeded.");
            assert_eq!(a.body["error"]["status"], "RESOURCE_EXHAUSTED");
            assert_eq!(
                a.body["error"]["details"][1]["@type"],
                "type.googleapis.com/google.rpc.QuotaFailure"
            );
            assert_eq!(
                a.body["error"]["details"][1]["violations"][0]["subject"],
                "device"
            );
        } else if token.starts_with("quota-") {
            assert_eq!(a.headers["retry-after"], "30");
        }
        if token.starts_with("unregistered-") {
            assert_eq!(
                a.body["error"]["message"],
                "Requested entity was not found."
            );
        }
        if token.starts_with("invalid-") {
            assert_eq!(
                a.body["error"]["message"],
                "The registration token is not a valid FCM registration token"
            );
        }
    }
    for _ in 0..2 {
        let a = fx.fcm_send(PROJECT, Some(&t), message("flaky-1")).await;
        assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    }
    assert_eq!(
        fx.fcm_send(PROJECT, Some(&t), message("flaky-1"))
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        fx.fcm_send(PROJECT, Some(&t), message("flaky-2"))
            .await
            .status,
        StatusCode::SERVICE_UNAVAILABLE
    );

    // Retry-After is configurable.
    fx.sandbox.set_faults(push_dispatch_sandbox::Faults {
        retry_after_secs: 2,
        ..Default::default()
    });
    let a = fx.fcm_send(PROJECT, Some(&t), message("quota-2")).await;
    assert_eq!(a.headers["retry-after"], "2");

    let stats = fx.sandbox.stats();
    assert_eq!(stats.fcm_count("404 UNREGISTERED"), 1);
    assert_eq!(stats.fcm_count("400 INVALID_ARGUMENT (token)"), 1);
    assert_eq!(stats.fcm_count("403 SENDER_ID_MISMATCH"), 1);
    assert_eq!(stats.fcm_count("429 QUOTA_EXCEEDED"), 2);
    assert_eq!(stats.fcm_count("429 QUOTA_EXCEEDED (device)"), 1);
    assert_eq!(stats.fcm_count("503 UNAVAILABLE"), 4);
    assert_eq!(stats.fcm_count("200"), 1);
}
