//! End-to-end tests of the pipeline: the real binary, the real Pub/Sub
//! emulator, and the in-process `stub:` providers (token-prefix script of
//! SPEC §7). One test per guarantee of SPEC §5 that this stage covers,
//! named after it.

use std::time::Duration;

use crate::common::{self, Settings, TestEnv, apns_token};
use push_dispatch_proto::v1::{Platform, PushRequest, Reason, Target, TokenInvalidated};
use push_dispatch_proto::{Encoding, encode_message};

fn json_request(targets: &[(&str, &str)]) -> String {
    let targets: Vec<String> = targets
        .iter()
        .map(|(p, t)| format!(r#"{{"platform":"{p}","token":"{t}"}}"#))
        .collect();
    format!(
        r#"{{"requestId":"req-1","recipient":"user-1","targets":[{}],"notification":{{"title":"Hi"}}}}"#,
        targets.join(",")
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn valid_requests_are_delivered_and_acked() {
    let env = TestEnv::new("delivered", Settings::default()).await;
    env.provision();
    let _worker = env.start_worker().await;
    let good = apns_token("a1b2");
    env.publish_json(&json_request(&[
        ("PLATFORM_APNS", &good),
        ("PLATFORM_FCM", "fcm-token-1"),
    ]))
    .await;
    env.wait_metric("push_dispatch_messages_total", &[("result", "acked")], 1.0)
        .await;
    let m = env.metrics().await;
    assert_eq!(
        common::metric_value(&m, "push_dispatch_sends_total", &[("outcome", "delivered")]),
        2.0
    );
    assert_eq!(
        common::metric_value(
            &m,
            "push_dispatch_sends_total",
            &[("platform", "apns"), ("app", "default")]
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn binary_protobuf_requests_are_decoded() {
    let env = TestEnv::new("binary", Settings::default()).await;
    env.provision();
    let _worker = env.start_worker().await;
    let request = PushRequest {
        request_id: "bin-1".into(),
        app: "second".into(),
        targets: vec![Target {
            platform: Platform::Fcm as i32,
            token: "fcm-bin".into(),
        }],
        ..Default::default()
    };
    let body = encode_message(&request, Encoding::Binary).expect("encode");
    env.publish(
        "push-requests",
        body.clone(),
        &[("content-type", "application/x-protobuf")],
    )
    .await;
    env.publish(
        "push-requests",
        body,
        &[("googclient_schemaencoding", "BINARY")],
    )
    .await;
    env.wait_metric(
        "push_dispatch_sends_total",
        &[("app", "second"), ("outcome", "delivered")],
        2.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn poison_messages_are_dead_lettered_at_once_with_a_reason() {
    let env = TestEnv::new("poison", Settings::default()).await;
    env.provision();
    let mut dlq = env.collect("push-requests-dlq-inspect");
    let _worker = env.start_worker().await;

    let garbage = env
        .publish("push-requests", b"{not json".to_vec(), &[("trace", "t1")])
        .await;
    let empty = env.publish_json(r#"{"requestId":"r-empty"}"#).await;
    let unknown = env
        .publish_json(r#"{"app":"nope","targets":[{"platform":"PLATFORM_FCM","token":"x"}]}"#)
        .await;

    let mut got = dlq.take(3).await;
    got.sort_by_key(|m| m.attributes["source_message_id"].clone());
    let by_source = |id: &str| {
        got.iter()
            .find(|m| m.attributes["source_message_id"] == id)
            .unwrap_or_else(|| panic!("no dead letter for {id}: {got:?}"))
    };
    let g = by_source(&garbage);
    assert_eq!(g.attributes["push_error"], "decode_json");
    assert!(g.attributes["push_error_detail"].contains("proto3 JSON"));
    assert_eq!(g.attributes["trace"], "t1", "producer attributes are kept");
    assert_eq!(&g.data[..], b"{not json", "the body is kept as published");
    assert!(
        g.attributes["push_first_publish_time"].ends_with('Z'),
        "a replay keeps the request's age: {:?}",
        g.attributes
    );
    assert_eq!(by_source(&empty).attributes["push_error"], "no_targets");
    let u = by_source(&unknown);
    assert_eq!(u.attributes["push_error"], "unknown_app");
    assert!(u.attributes["push_error_detail"].contains("nope"));
    env.wait_metric(
        "push_dispatch_messages_total",
        &[("result", "dead_lettered")],
        3.0,
    )
    .await;
    assert_eq!(
        env.metric("push_dispatch_sends_total", &[]).await,
        0.0,
        "nothing was sent"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_invalid_target_is_dead_lettered_alone_while_its_siblings_are_sent() {
    let env = TestEnv::new("invalid-target", Settings::default()).await;
    env.provision();
    let mut dlq = env.collect("push-requests-dlq-inspect");
    let _worker = env.start_worker().await;
    let good = apns_token("a1b2");
    let id = env
        .publish_json(&json_request(&[
            ("PLATFORM_APNS", &good),
            ("PLATFORM_APNS", "not-a-hex-token"),
            ("PLATFORM_FCM", "fcm-ok"),
            ("PLATFORM_UNSPECIFIED", "whatever"),
        ]))
        .await;
    // Two codes, two dead letters, each holding only its own targets.
    let got = dlq.take(2).await;
    let mut codes: Vec<&str> = got
        .iter()
        .map(|m| m.attributes["push_error"].as_str())
        .collect();
    codes.sort_unstable();
    assert_eq!(codes, ["malformed_token", "unspecified_platform"]);
    for m in &got {
        assert_eq!(m.attributes["source_message_id"], id);
        let part: PushRequest = serde_json::from_slice(&m.data).expect("dead letter is a request");
        assert_eq!(part.targets.len(), 1);
        assert_eq!(part.request_id, "req-1");
        assert_ne!(part.targets[0].token, good);
    }
    env.wait_metric("push_dispatch_messages_total", &[("result", "acked")], 1.0)
        .await;
    assert_eq!(
        env.metric("push_dispatch_sends_total", &[("outcome", "delivered")])
            .await,
        2.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn dead_tokens_are_reported_on_the_feedback_topic_before_the_ack() {
    let env = TestEnv::new("feedback", Settings::default()).await;
    env.provision();
    env.create_subscription("push-feedback", "feedback-watch")
        .await;
    let mut feedback = env.collect("feedback-watch");
    let _worker = env.start_worker().await;
    let dead = apns_token("dead");
    let id = env
        .publish_json(&json_request(&[
            ("PLATFORM_APNS", &dead),
            ("PLATFORM_FCM", "unregistered-abc"),
            ("PLATFORM_FCM", "unregistered-abc"),
            ("PLATFORM_FCM", "alive-1"),
        ]))
        .await;
    let events = feedback.take(2).await;
    for m in &events {
        assert_eq!(m.attributes["event_type"], "push.v1.TokenInvalidated");
        assert_eq!(m.attributes["app"], "default");
        assert_eq!(m.attributes["reason"], "REASON_UNREGISTERED");
        let e: TokenInvalidated = serde_json::from_slice(&m.data).expect("event JSON");
        assert_eq!(e.source_message_id, id);
        assert_eq!(e.request_id, "req-1");
        assert_eq!(e.recipient, "user-1");
        assert_eq!(e.reason(), Reason::Unregistered);
        assert_eq!(
            e.event_id,
            push_dispatch_feedback::event_id(&id, e.platform(), &e.token)
        );
        match e.platform() {
            Platform::Apns => {
                assert_eq!(m.attributes["platform"], "apns");
                assert_eq!(e.token, dead);
                assert_eq!(e.apns_topic, "com.example.app");
                assert_eq!(e.environment, "sandbox");
                assert_eq!(e.provider_reason, "Unregistered");
            }
            Platform::Fcm => {
                assert_eq!(
                    e.token, "unregistered-abc",
                    "reported once though listed twice"
                );
                assert_eq!(e.fcm_project, "example-firebase");
            }
            Platform::Unspecified => panic!("bad platform"),
        }
    }
    env.wait_metric("push_dispatch_messages_total", &[("result", "acked")], 1.0)
        .await;
    assert_eq!(
        env.metric("push_dispatch_feedback_events_total", &[]).await,
        2.0
    );
    feedback.expect_nothing(Duration::from_millis(500)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn transient_failures_are_nacked_then_dead_lettered_on_the_last_attempt() {
    let env = TestEnv::new("exhausted", Settings::default()).await;
    env.provision();
    let mut dlq = env.collect("push-requests-dlq-inspect");
    let _worker = env.start_worker().await;
    let id = env
        .publish_json(&json_request(&[("PLATFORM_APNS", &apns_token("0503"))]))
        .await;
    let got = dlq.take(1).await;
    let m = &got[0];
    assert_eq!(m.attributes["push_error"], "retries_exhausted");
    assert_eq!(m.attributes["source_message_id"], id);
    assert_eq!(m.attributes["push_delivery_attempt"], "5");
    assert!(
        !m.attributes
            .contains_key("CloudPubSubDeadLetterSourceDeliveryCount"),
        "dead-lettered by us with a reason, not by Pub/Sub's policy"
    );
    env.wait_metric("push_dispatch_messages_total", &[("result", "nacked")], 4.0)
        .await;
    assert_eq!(
        env.metric("push_dispatch_sends_total", &[("outcome", "retryable")])
            .await,
        5.0
    );
    assert_eq!(
        env.metric("push_dispatch_redeliveries_total", &[]).await,
        4.0,
        "attempts 2 to 5 are redeliveries"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn retryable_targets_are_republished_without_resending_delivered_siblings() {
    let env = TestEnv::new("republish", Settings::default()).await;
    env.provision();
    let _worker = env.start_worker().await;
    let good = apns_token("a1b2");
    // f1a0: 503 twice per token, then 200. With no in-process wait, the first
    // delivery sends both, the good one is delivered and the flaky one is
    // republished; the republished request fails once more (nack) and then
    // succeeds on redelivery.
    env.publish_json(&json_request(&[
        ("PLATFORM_APNS", &good),
        ("PLATFORM_APNS", &apns_token("f1a0")),
    ]))
    .await;
    env.wait_metric(
        "push_dispatch_sends_total",
        &[("outcome", "delivered")],
        2.0,
    )
    .await;
    env.wait_metric("push_dispatch_messages_total", &[("result", "acked")], 1.0)
        .await;
    let m = env.metrics().await;
    assert_eq!(
        common::metric_value(
            &m,
            "push_dispatch_messages_total",
            &[("result", "republished")]
        ),
        1.0
    );
    assert_eq!(
        common::metric_value(&m, "push_dispatch_sends_total", &[("outcome", "delivered")]),
        2.0,
        "the good token was sent exactly once"
    );
    assert_eq!(
        common::metric_value(&m, "push_dispatch_sends_total", &[("outcome", "retryable")]),
        2.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn republishing_past_max_republish_dead_letters_the_remainder() {
    let env = TestEnv::new(
        "max-republish",
        Settings {
            max_republish: 1,
            ..Settings::default()
        },
    )
    .await;
    env.provision();
    let mut dlq = env.collect("push-requests-dlq-inspect");
    let _worker = env.start_worker().await;
    let stuck = apns_token("0500");
    let id = env
        .publish_json(&json_request(&[
            ("PLATFORM_FCM", "fcm-good"),
            ("PLATFORM_APNS", &stuck),
        ]))
        .await;
    let got = dlq.take(1).await;
    assert_eq!(got[0].attributes["push_error"], "retries_exhausted");
    assert_eq!(got[0].attributes["source_message_id"], id);
    let part: PushRequest = serde_json::from_slice(&got[0].data).expect("request");
    assert_eq!(part.targets.len(), 1);
    assert_eq!(part.targets[0].token, stuck);
    env.wait_metric("push_dispatch_messages_total", &[("result", "acked")], 1.0)
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn in_process_retries_recover_flaky_targets_without_pubsub() {
    let env = TestEnv::new(
        "in-process",
        Settings {
            max_in_process_wait: "5s",
            ..Settings::default()
        },
    )
    .await;
    env.provision();
    let _worker = env.start_worker().await;
    env.publish_json(&json_request(&[("PLATFORM_FCM", "flaky-1")]))
        .await;
    env.wait_metric("push_dispatch_messages_total", &[("result", "acked")], 1.0)
        .await;
    let m = env.metrics().await;
    assert_eq!(
        common::metric_value(&m, "push_dispatch_sends_total", &[("outcome", "retryable")]),
        2.0
    );
    assert_eq!(
        common::metric_value(&m, "push_dispatch_messages_total", &[("result", "nacked")]),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_requests_are_not_sent() {
    let env = TestEnv::new("expired", Settings::default()).await;
    env.provision();
    let _worker = env.start_worker().await;
    let body = r#"{"ttl":"60s","targets":[{"platform":"PLATFORM_FCM","token":"late"}]}"#;
    env.publish(
        "push-requests",
        body.as_bytes().to_vec(),
        &[("push_first_publish_time", "2020-01-01T00:00:00Z")],
    )
    .await;
    env.wait_metric(
        "push_dispatch_messages_total",
        &[("result", "expired")],
        1.0,
    )
    .await;
    let m = env.metrics().await;
    assert_eq!(
        common::metric_value(&m, "push_dispatch_sends_total", &[("outcome", "expired")]),
        1.0
    );
    assert_eq!(
        common::metric_value(&m, "push_dispatch_sends_total", &[("outcome", "delivered")]),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_ttl_that_runs_out_during_in_process_retries_stops_them() {
    let env = TestEnv::new(
        "expire-retrying",
        Settings {
            max_in_process_wait: "5s",
            ..Settings::default()
        },
    )
    .await;
    env.provision();
    let _worker = env.start_worker().await;
    // The APNs target fails (503) on every try; its backoff passes the 1 s
    // ttl long before the 5 s in-process budget is spent.
    let body = format!(
        r#"{{"ttl":"1s","targets":[{{"platform":"PLATFORM_APNS","token":"{}"}},{{"platform":"PLATFORM_FCM","token":"ok-1"}}]}}"#,
        apns_token("0503")
    );
    env.publish_json(&body).await;
    env.wait_metric("push_dispatch_messages_total", &[("result", "acked")], 1.0)
        .await;
    let m = env.metrics().await;
    assert_eq!(
        common::metric_value(&m, "push_dispatch_sends_total", &[("outcome", "expired")]),
        1.0,
        "the failing target expired in process:\n{m}"
    );
    assert!(
        common::metric_value(&m, "push_dispatch_sends_total", &[("outcome", "retryable")]) >= 1.0
    );
    assert_eq!(
        common::metric_value(&m, "push_dispatch_sends_total", &[("outcome", "delivered")]),
        1.0
    );
    for result in ["republished", "nacked", "dead_lettered"] {
        assert_eq!(
            common::metric_value(&m, "push_dispatch_messages_total", &[("result", result)]),
            0.0,
            "{result}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_listed_twice_in_a_request_is_sent_once() {
    let env = TestEnv::new("duplicate-target", Settings::default()).await;
    env.provision();
    let _worker = env.start_worker().await;
    let good = apns_token("a1b2");
    env.publish_json(&json_request(&[
        ("PLATFORM_APNS", &good),
        ("PLATFORM_FCM", "twice-1"),
        ("PLATFORM_APNS", &good),
        ("PLATFORM_FCM", "twice-1"),
    ]))
    .await;
    env.wait_metric("push_dispatch_messages_total", &[("result", "acked")], 1.0)
        .await;
    assert_eq!(
        env.metric("push_dispatch_sends_total", &[]).await,
        2.0,
        "one send per distinct device"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rate_limit_wait_beyond_the_in_process_budget_hands_targets_back() {
    let env = TestEnv::new(
        "rate-limited",
        Settings {
            max_in_process_wait: "2s",
            apps_yaml: Some(
                r#"  - name: default
    fcm:
      endpoint: "stub:"
      project_id: example-firebase
      rate_limit: 10
"#
                .to_string(),
            ),
            ..Settings::default()
        },
    )
    .await;
    env.provision();
    let _worker = env.start_worker().await;
    // 10 go at once (a second's burst), the next ones wait 0.1 s, 0.2 s, …
    // within the 2 s budget; the last ten would wait 2.1 s to 3 s: they are
    // handed back (republished) instead of holding the message, and sent later.
    let targets: Vec<(&str, String)> = (0..40)
        .map(|i| ("PLATFORM_FCM", format!("rl-{i}")))
        .collect();
    let refs: Vec<(&str, &str)> = targets.iter().map(|(p, t)| (*p, t.as_str())).collect();
    env.publish_json(&json_request(&refs)).await;
    env.wait_metric(
        "push_dispatch_sends_total",
        &[("outcome", "delivered")],
        40.0,
    )
    .await;
    let m = env.metrics().await;
    assert!(
        common::metric_value(
            &m,
            "push_dispatch_sends_total",
            &[("outcome", "rate_limited")]
        ) >= 1.0,
        "{m}"
    );
    assert!(
        common::metric_value(
            &m,
            "push_dispatch_messages_total",
            &[("result", "republished")]
        ) >= 1.0,
        "{m}"
    );
    assert_eq!(
        common::metric_value(&m, "push_dispatch_sends_total", &[("outcome", "delivered")]),
        40.0,
        "every device once, none twice"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_and_exits_cleanly() {
    let env = TestEnv::new("sigterm", Settings::default()).await;
    env.provision();
    let mut worker = env.start_worker().await;
    let (status, _) = common::http_get(env.port, "/healthz")
        .await
        .expect("healthz");
    assert_eq!(status, 200);
    for i in 0..20 {
        env.publish_json(&json_request(&[("PLATFORM_FCM", &format!("tok-{i}"))]))
            .await;
    }
    env.wait_metric("push_dispatch_messages_total", &[("result", "acked")], 20.0)
        .await;
    let status = worker.terminate().await;
    assert!(
        status.success(),
        "exit status {status}:\n{}",
        worker.log_text()
    );
    let log = worker.log_text();
    assert!(log.contains("SIGTERM received"), "{log}");
    assert!(log.contains("worker stopped"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_cuts_in_process_retries_short_and_nacks_the_message() {
    let env = TestEnv::new(
        "sigterm-retrying",
        Settings {
            max_in_process_wait: "60s",
            shutdown_grace: "60s",
            ..Settings::default()
        },
    )
    .await;
    env.provision();
    let mut worker = env.start_worker().await;
    let id = env
        .publish_json(&json_request(&[("PLATFORM_FCM", "unavailable-1")]))
        .await;
    // The message is now in flight, backing off between in-process retries.
    env.wait_metric(
        "push_dispatch_sends_total",
        &[("outcome", "retryable")],
        1.0,
    )
    .await;
    let started = std::time::Instant::now();
    let status = worker.terminate().await;
    assert!(status.success(), "{}", worker.log_text());
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "draining stops retries instead of waiting out max_in_process_wait"
    );
    let log = worker.log_text();
    let settled = log
        .lines()
        .find(|l| l.contains("settled") && l.contains(&id))
        .unwrap_or_else(|| panic!("no settle line for {id}:\n{log}"));
    assert!(settled.contains("Nack"), "{settled}");
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_grace_elapsed_nacks_what_is_still_in_flight() {
    let env = TestEnv::new(
        "grace",
        Settings {
            stub_options: "latency=60s",
            shutdown_grace: "1s",
            ..Settings::default()
        },
    )
    .await;
    env.provision();
    let mut worker = env.start_worker().await;
    let id = env
        .publish_json(&json_request(&[("PLATFORM_FCM", "slow-1")]))
        .await;
    env.wait_metric("push_dispatch_inflight_messages", &[], 1.0)
        .await;
    let status = worker.terminate().await;
    assert!(status.success(), "{}", worker.log_text());
    let log = worker.log_text();
    assert!(log.contains("shutdown grace elapsed"), "{log}");
    assert!(
        log.lines()
            .any(|l| l.contains("settled") && l.contains(&id) && l.contains("Nack")),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unconfirmed_feedback_carries_dead_tokens_forward_without_resending_siblings() {
    let env = TestEnv::new(
        "feedback-down",
        Settings {
            max_republish: 2,
            ..Settings::default()
        },
    )
    .await;
    env.provision();
    env.delete_topic("push-feedback").await;
    let mut dlq = env.collect("push-requests-dlq-inspect");
    // No provisioning at start: it would create the feedback topic again.
    let _worker = env
        .start_worker_with(&[("PUSH_DISPATCH_PUBSUB__PROVISION", "false")])
        .await;
    env.publish_json(&json_request(&[
        ("PLATFORM_FCM", "fcm-good"),
        ("PLATFORM_FCM", "unregistered-x"),
    ]))
    .await;
    // The dead token keeps failing to be reported: carried forward once, then
    // nacked until the last delivery attempt, then dead-lettered with a reason.
    let got = dlq.take(1).await;
    assert_eq!(got[0].attributes["push_error"], "retries_exhausted");
    assert_eq!(got[0].attributes["push_attempt"], "2");
    let part: PushRequest = serde_json::from_slice(&got[0].data).expect("request");
    let tokens: Vec<&str> = part.targets.iter().map(|t| t.token.as_str()).collect();
    assert_eq!(tokens, ["unregistered-x"]);
    let m = env.metrics().await;
    assert_eq!(
        common::metric_value(&m, "push_dispatch_sends_total", &[("outcome", "delivered")]),
        1.0,
        "the delivered sibling was never sent again"
    );
    assert!(
        common::metric_value(
            &m,
            "push_dispatch_publish_failures_total",
            &[("reason", "feedback")]
        ) >= 2.0
    );
    assert_eq!(
        common::metric_value(&m, "push_dispatch_feedback_events_total", &[]),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn exactly_once_subscriptions_get_confirmed_acks() {
    let env = TestEnv::new("exactly-once", Settings::default()).await;
    let eo = [("PUSH_DISPATCH_PUBSUB__EXACTLY_ONCE", "true")];
    let out = env.run(&["provision"], &eo);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        env.get_subscription("push-requests-dispatch")
            .await
            .enable_exactly_once_delivery
    );
    let _worker = env.start_worker_with(&eo).await;
    for i in 0..5 {
        env.publish_json(&json_request(&[("PLATFORM_FCM", &format!("eo-{i}"))]))
            .await;
    }
    env.wait_metric("push_dispatch_acks_total", &[("kind", "confirmed")], 5.0)
        .await;
    let m = env.metrics().await;
    assert_eq!(
        common::metric_value(&m, "push_dispatch_acks_total", &[("kind", "sent")]),
        0.0
    );
    assert_eq!(
        common::metric_value(&m, "push_dispatch_ack_failures_total", &[]),
        0.0
    );
}
