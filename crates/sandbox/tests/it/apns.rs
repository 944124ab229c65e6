//! APNs stand-in: provider-token auth, header and payload checks, scripted
//! token prefixes, per-connection token updates.

use reqwest::StatusCode;
use serde_json::json;

use crate::common::{TOPIC, answer, h2c, now, start};

const TOKEN: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";

#[tokio::test]
async fn valid_provider_token_is_accepted_and_recorded() {
    let fx = start().await;
    let jwt = fx.jwt();
    let resp = fx
        .apns_request(&fx.client, TOKEN, &jwt)
        .header("apns-id", "123e4567-e89b-12d3-a456-426655440000")
        .header("apns-priority", "10")
        .header("apns-expiration", "0")
        .header("apns-collapse-id", "group-1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    let a = answer(resp).await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    assert_eq!(a.headers["apns-id"], "123e4567-e89b-12d3-a456-426655440000");

    let d = fx.sandbox.deliveries();
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].token, TOKEN);
    assert_eq!(d[0].id, "123e4567-e89b-12d3-a456-426655440000");
    assert_eq!(d[0].headers["apns-topic"], TOPIC);
    assert_eq!(d[0].headers["apns-push-type"], "alert");
    assert_eq!(d[0].headers["apns-priority"], "10");
    assert_eq!(d[0].headers["apns-collapse-id"], "group-1");
    assert_eq!(d[0].payload["aps"]["alert"]["title"], "hi");
    assert_eq!(fx.sandbox.stats().apns_count("200"), 1);
}

#[tokio::test]
async fn apns_id_is_generated_when_absent() {
    let fx = start().await;
    let a = fx.push(TOKEN).await;
    let id = a.headers["apns-id"].to_str().unwrap();
    assert_eq!(id.len(), 36);
    assert_eq!(id.matches('-').count(), 4);
    let b = fx.push(TOKEN).await;
    assert_ne!(b.headers["apns-id"], a.headers["apns-id"]);
}

#[tokio::test]
async fn jsonwebtoken_signed_provider_token_is_accepted() {
    // What the dispatch client uses: jsonwebtoken with the .p8 as written by devkeys.
    let fx = start().await;
    let pem = std::fs::read(&fx.creds.apns_key_file).unwrap();
    let key = jsonwebtoken::EncodingKey::from_ec_pem(&pem).unwrap();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some(fx.creds.key_id.clone());
    let jwt = jsonwebtoken::encode(
        &header,
        &json!({"iss": fx.creds.team_id, "iat": now()}),
        &key,
    )
    .unwrap();
    let a = answer(
        fx.apns_request(&fx.client, TOKEN, &jwt)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
}

#[tokio::test]
async fn provider_token_problems_answer_403_with_apples_reasons() {
    let fx = start().await;
    let send = |auth: Option<String>| {
        let mut req = fx
            .client
            .post(fx.url(&format!("/3/device/{TOKEN}")))
            .header("apns-topic", TOPIC)
            .body(r#"{"aps":{}}"#);
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        async move { answer(req.send().await.unwrap()).await }
    };
    let a = send(None).await;
    assert_eq!(
        (a.status, a.reason()),
        (StatusCode::FORBIDDEN, "MissingProviderToken")
    );

    let a = send(Some("bearer ".into())).await;
    assert_eq!(a.reason(), "MissingProviderToken");

    // Signature of another key.
    let other_dir = tempfile::tempdir().unwrap();
    let other =
        push_dispatch_sandbox::devkeys::ensure(other_dir.path(), "http://x/token", "p").unwrap();
    let forged = other.apns_provider_token(now()).unwrap();
    let a = send(Some(format!("bearer {forged}"))).await;
    assert_eq!(
        (a.status, a.reason()),
        (StatusCode::FORBIDDEN, "InvalidProviderToken")
    );

    // Tampered claims with the original signature.
    let jwt = fx.jwt();
    let parts: Vec<&str> = jwt.split('.').collect();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64.encode(json!({"iss": fx.creds.team_id, "iat": now() - 1}).to_string()),
        parts[2]
    );
    let a = send(Some(format!("bearer {tampered}"))).await;
    assert_eq!(a.reason(), "InvalidProviderToken");

    // Wrong kid, wrong iss (validly signed).
    let wrong_kid = push_dispatch_sandbox::devkeys::apns_provider_token(
        &fx.creds.apns_key_file,
        "OTHERKEY01",
        &fx.creds.team_id,
        now(),
    )
    .unwrap();
    let a = send(Some(format!("bearer {wrong_kid}"))).await;
    assert_eq!(a.reason(), "InvalidProviderToken");
    let wrong_iss = push_dispatch_sandbox::devkeys::apns_provider_token(
        &fx.creds.apns_key_file,
        &fx.creds.key_id,
        "OTHERTEAM1",
        now(),
    )
    .unwrap();
    let a = send(Some(format!("bearer {wrong_iss}"))).await;
    assert_eq!(a.reason(), "InvalidProviderToken");

    // Not a JWT at all.
    let a = send(Some("bearer abc".into())).await;
    assert_eq!(a.reason(), "InvalidProviderToken");

    // Too old, and from the future.
    let a = send(Some(format!("bearer {}", fx.jwt_at(now() - 2 * 3600)))).await;
    assert_eq!(
        (a.status, a.reason()),
        (StatusCode::FORBIDDEN, "ExpiredProviderToken")
    );
    let a = send(Some(format!("bearer {}", fx.jwt_at(now() + 600)))).await;
    assert_eq!(a.reason(), "InvalidProviderToken");

    let stats = fx.sandbox.stats();
    assert_eq!(stats.apns_count("403 InvalidProviderToken"), 6);
    assert_eq!(stats.apns_count("403 MissingProviderToken"), 2);
    assert_eq!(stats.apns_token_generations, 0);
}

#[tokio::test]
async fn verified_tokens_are_cached() {
    let fx = start().await;
    let jwt = fx.jwt();
    for _ in 0..50 {
        let a = answer(
            fx.apns_request(&fx.client, TOKEN, &jwt)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(a.status, StatusCode::OK);
    }
    let stats = fx.sandbox.stats();
    assert_eq!(stats.jwt_verifications, 1);
    assert_eq!(stats.apns_token_generations, 1);
}

#[tokio::test]
async fn topic_is_checked_against_the_push_type() {
    let fx = start().await;
    let jwt = fx.jwt();
    let send = |topic: Option<&'static str>, push_type: &'static str| {
        let mut req = fx
            .client
            .post(fx.url(&format!("/3/device/{TOKEN}")))
            .header("authorization", format!("bearer {jwt}"))
            .header("apns-push-type", push_type)
            .body(r#"{"aps":{}}"#);
        if push_type == "background" {
            req = req.header("apns-priority", "5");
        }
        if let Some(t) = topic {
            req = req.header("apns-topic", t);
        }
        async move { answer(req.send().await.unwrap()).await }
    };
    assert_eq!(send(None, "alert").await.reason(), "MissingTopic");
    assert_eq!(
        send(Some("not a topic"), "alert").await.reason(),
        "BadTopic"
    );
    assert_eq!(send(Some("com..x"), "alert").await.reason(), "BadTopic");
    // A well-formed but different bundle id: every token looks dead, as at Apple.
    let a = send(Some("com.other.app"), "alert").await;
    assert_eq!(
        (a.status, a.reason()),
        (StatusCode::BAD_REQUEST, "DeviceTokenNotForTopic")
    );
    assert_eq!(
        send(Some(TOPIC), "voip").await.reason(),
        "DeviceTokenNotForTopic"
    );
    assert_eq!(
        send(Some("com.example.app.voip"), "alert").await.reason(),
        "DeviceTokenNotForTopic"
    );

    for (topic, push_type) in [
        ("com.example.app", "alert"),
        ("com.example.app", "background"),
        ("com.example.app", "mdm"),
        ("com.example.app.voip", "voip"),
        ("com.example.app.complication", "complication"),
        ("com.example.app.pushkit.fileprovider", "fileprovider"),
        ("com.example.app.push-type.liveactivity", "liveactivity"),
        ("com.example.app.location-query", "location"),
        ("com.example.app.voip-ptt", "pushtotalk"),
    ] {
        let a = send(Some(topic), push_type).await;
        assert_eq!(
            a.status,
            StatusCode::OK,
            "{push_type} {topic}: {:?}",
            a.body
        );
    }
    assert_eq!(
        send(Some(TOPIC), "banner").await.reason(),
        "InvalidPushType"
    );
}

#[tokio::test]
async fn headers_are_validated() {
    let fx = start().await;
    let jwt = fx.jwt();
    let send = |headers: &'static [(&'static str, &'static str)]| {
        let mut req = fx.apns_request(&fx.client, TOKEN, &jwt);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        async move { answer(req.send().await.unwrap()).await }
    };
    assert_eq!(
        send(&[("apns-priority", "7")]).await.reason(),
        "BadPriority"
    );
    assert_eq!(send(&[("apns-priority", "1")]).await.status, StatusCode::OK);
    assert_eq!(send(&[("apns-priority", "5")]).await.status, StatusCode::OK);
    assert_eq!(
        send(&[("apns-expiration", "soon")]).await.reason(),
        "BadExpirationDate"
    );
    assert_eq!(
        send(&[("apns-expiration", "-1")]).await.reason(),
        "BadExpirationDate"
    );
    assert_eq!(
        send(&[("apns-expiration", "1900000000")]).await.status,
        StatusCode::OK
    );
    let long_collapse: &'static str = Box::leak("c".repeat(65).into_boxed_str());
    let headers: &'static [(&str, &str)] =
        Box::leak(Box::new([("apns-collapse-id", long_collapse)]));
    assert_eq!(send(headers).await.reason(), "BadCollapseId");
    assert_eq!(
        send(&[("apns-id", "not-a-uuid")]).await.reason(),
        "BadMessageId"
    );
    assert_eq!(
        send(&[("apns-topic", TOPIC)]).await.reason(),
        "DuplicateHeaders"
    );

    // Background pushes must use priority 5; no header means 10.
    let bg = |priority: Option<&'static str>| {
        let mut req = fx
            .client
            .post(fx.url(&format!("/3/device/{TOKEN}")))
            .header("authorization", format!("bearer {jwt}"))
            .header("apns-topic", TOPIC)
            .header("apns-push-type", "background")
            .body(r#"{"aps":{"content-available":1}}"#);
        if let Some(p) = priority {
            req = req.header("apns-priority", p);
        }
        async move { answer(req.send().await.unwrap()).await }
    };
    assert_eq!(bg(Some("10")).await.reason(), "BadPriority");
    assert_eq!(bg(None).await.reason(), "BadPriority");
    assert_eq!(bg(Some("5")).await.status, StatusCode::OK);
}

#[tokio::test]
async fn payload_size_and_shape_are_checked() {
    let fx = start().await;
    let jwt = fx.jwt();
    let send = |push_type: &'static str, topic: &'static str, body: String| {
        let req = fx
            .client
            .post(fx.url(&format!("/3/device/{TOKEN}")))
            .header("authorization", format!("bearer {jwt}"))
            .header("apns-topic", topic)
            .header("apns-push-type", push_type)
            .body(body);
        async move { answer(req.send().await.unwrap()).await }
    };
    let sized = |n: usize| {
        let skeleton = r#"{"aps":{},"p":""}"#.len();
        format!(r#"{{"aps":{{}},"p":"{}"}}"#, "x".repeat(n - skeleton))
    };
    assert_eq!(
        send("alert", TOPIC, sized(4096)).await.status,
        StatusCode::OK
    );
    let a = send("alert", TOPIC, sized(4097)).await;
    assert_eq!(
        (a.status, a.reason()),
        (StatusCode::PAYLOAD_TOO_LARGE, "PayloadTooLarge")
    );
    assert_eq!(
        send("voip", "com.example.app.voip", sized(5120))
            .await
            .status,
        StatusCode::OK
    );
    let a = send("voip", "com.example.app.voip", sized(5121)).await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    let a = send("alert", TOPIC, sized(200_000)).await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);

    assert_eq!(
        send("alert", TOPIC, String::new()).await.reason(),
        "PayloadEmpty"
    );
    assert_eq!(
        send("alert", TOPIC, "{not json".into()).await.reason(),
        "BadPayload"
    );
    assert_eq!(
        send("alert", TOPIC, r#"{"data":1}"#.into()).await.reason(),
        "BadPayload"
    );
    assert_eq!(
        send("alert", TOPIC, r#"{"aps":"x"}"#.into()).await.reason(),
        "BadPayload"
    );
    assert_eq!(
        send("alert", TOPIC, "[]".into()).await.reason(),
        "BadPayload"
    );
}

#[tokio::test]
async fn device_token_and_path_are_checked() {
    let fx = start().await;
    assert_eq!(fx.push("xyz0").await.reason(), "BadDeviceToken");
    assert_eq!(fx.push("abc").await.reason(), "BadDeviceToken");
    let a = fx.push("").await;
    assert_eq!(
        (a.status, a.reason()),
        (StatusCode::BAD_REQUEST, "MissingDeviceToken")
    );
    let a = answer(
        fx.client
            .get(fx.url(&format!("/3/device/{TOKEN}")))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (a.status, a.reason()),
        (StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed")
    );
    let a = answer(
        fx.client
            .post(fx.url("/3/devices/abcd"))
            .body("{}")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((a.status, a.reason()), (StatusCode::NOT_FOUND, "BadPath"));
}

#[tokio::test]
async fn scripted_token_prefixes() {
    let fx = start().await;
    let before = crate::common::now() * 1000;
    let a = fx.push("dead0001").await;
    assert_eq!((a.status, a.reason()), (StatusCode::GONE, "Unregistered"));
    let ts = a.body["timestamp"].as_i64().unwrap();
    assert!(
        ts >= before - 1000,
        "timestamp {ts} is in ms since the epoch"
    );

    for (token, status, reason) in [
        ("bad00001", StatusCode::BAD_REQUEST, "BadDeviceToken"),
        ("04290001", StatusCode::TOO_MANY_REQUESTS, "TooManyRequests"),
        (
            "05000001",
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalServerError",
        ),
        (
            "05030001",
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
        ),
        ("DEAD0002", StatusCode::GONE, "Unregistered"),
    ] {
        let a = fx.push(token).await;
        assert_eq!((a.status, a.reason()), (status, reason), "{token}");
        assert!(a.headers.contains_key("apns-id"));
    }

    // f1a0: 503 twice per token, then accepted; another token starts over.
    for _ in 0..2 {
        assert_eq!(
            fx.push("f1a00001").await.status,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
    assert_eq!(fx.push("f1a00001").await.status, StatusCode::OK);
    assert_eq!(fx.push("f1a00001").await.status, StatusCode::OK);
    assert_eq!(
        fx.push("f1a00002").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );

    let stats = fx.sandbox.stats();
    assert_eq!(stats.apns_count("410 Unregistered"), 2);
    assert_eq!(stats.apns_count("503 ServiceUnavailable"), 4);
    assert_eq!(stats.apns_count("200"), 2);
    // Scripted failures are not deliveries.
    assert_eq!(fx.sandbox.deliveries().len(), 2);
}

#[tokio::test]
async fn token_updates_more_often_than_every_20_minutes_are_refused_per_connection() {
    let fx = start().await;
    let old = fx.jwt_at(now() - 60);
    let new = fx.jwt();
    let send = |client: &reqwest::Client, jwt: &str| {
        let req = fx.apns_request(client, TOKEN, jwt);
        async move { answer(req.send().await.unwrap()).await }
    };
    assert_eq!(send(&fx.client, &old).await.status, StatusCode::OK);
    let a = send(&fx.client, &new).await;
    assert_eq!(
        (a.status, a.reason()),
        (StatusCode::TOO_MANY_REQUESTS, "TooManyProviderTokenUpdates")
    );
    // The connection keeps working with its token.
    assert_eq!(send(&fx.client, &old).await.status, StatusCode::OK);
    // Another connection (a restarted worker, another replica) may use the new one.
    let other = h2c();
    assert_eq!(send(&other, &new).await.status, StatusCode::OK);

    // A refresh 25 minutes (by iat) after the previous token is fine.
    let third = h2c();
    assert_eq!(
        send(&third, &fx.jwt_at(now() - 25 * 60)).await.status,
        StatusCode::OK
    );
    assert_eq!(send(&third, &new).await.status, StatusCode::OK);
    assert_eq!(fx.sandbox.stats().apns_token_generations, 3);
}

#[tokio::test]
async fn a_burst_on_a_new_connection_is_served() {
    // Requests are serialized until a valid token went through; nothing deadlocks.
    let fx = start().await;
    let jwt = fx.jwt();
    let mut burst = Vec::new();
    for _ in 0..50 {
        burst.push(fx.apns_request(&fx.client, TOKEN, &jwt).send());
    }
    for r in futures_join(burst).await {
        assert_eq!(r.unwrap().status(), StatusCode::OK);
    }
    // And a burst with a bad token is answered, one by one.
    let client = h2c();
    let mut burst = Vec::new();
    for _ in 0..20 {
        burst.push(fx.apns_request(&client, TOKEN, "x.y.z").send());
    }
    for r in futures_join(burst).await {
        assert_eq!(r.unwrap().status(), StatusCode::FORBIDDEN);
    }
    assert_eq!(fx.sandbox.stats().jwt_verifications, 1);
}

async fn futures_join<F: std::future::Future + Send + 'static>(futs: Vec<F>) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futs.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test]
async fn http1_is_accepted_for_curl_convenience() {
    let fx = start().await;
    let client = reqwest::Client::builder().http1_only().build().unwrap();
    let jwt = fx.jwt();
    let resp = fx.apns_request(&client, TOKEN, &jwt).send().await.unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_11);
    assert_eq!(resp.status(), StatusCode::OK);
}
