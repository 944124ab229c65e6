//! Day one on Google Cloud, as far as the emulator can show it: feedback
//! kept on the topic until a consumer subscribes late and seeks back,
//! consumer subscriptions provisioned, a feedback topic nobody reads
//! reported at start-up and by `check-config --online`, and the IAM check
//! skipped (not failed) where IAM is not implemented.
//!
//! What the emulator cannot show (IAM itself, retention added to an existing
//! topic taking effect) is tested at the client boundary: unit tests of
//! `push_dispatch_subscriber::iam` and of the worker's start-up check.

use std::time::{Duration, Instant, SystemTime};

use push_dispatch_proto::v1::TokenInvalidated;
use push_dispatch_subscriber::wkt::Timestamp;

use crate::common::{DEADLINE, Settings, TestEnv, apns_token};

fn two_dead_tokens() -> String {
    format!(
        r#"{{"requestId": "late-1", "targets": [
            {{"platform": "PLATFORM_APNS", "token": "{}"}},
            {{"platform": "PLATFORM_FCM", "token": "unregistered-late"}}]}}"#,
        apns_token("dead")
    )
}

async fn seek(env: &TestEnv, subscription: &str, to: SystemTime) {
    // The other tests seek through the CLI; this one through the client.
    env.clients
        .subscriptions
        .seek()
        .set_subscription(env.subscription(subscription))
        .set_time(Timestamp::try_from(to).expect("time"))
        .send()
        .await
        .expect("seek");
}

async fn topic_retention(env: &TestEnv, topic: &str) -> Option<i64> {
    env.clients
        .topics
        .get_topic()
        .set_topic(env.topic(topic))
        .send()
        .await
        .expect("get topic")
        .message_retention_duration
        .map(|d| d.seconds())
}

#[tokio::test]
async fn feedback_published_before_any_consumer_subscribed_is_read_by_seeking_back() {
    let env = TestEnv::new("late-consumer", Settings::default()).await;
    env.provision();
    assert_eq!(
        topic_retention(&env, "push-feedback").await,
        Some(7 * 86_400),
        "feedback.retention defaults to 7 days"
    );
    let before = SystemTime::now() - Duration::from_secs(1);
    let worker = env.start_worker().await;
    env.publish_json(&two_dead_tokens()).await;
    // Both events confirmed and the message acked, with nobody subscribed.
    env.wait_metric("push_dispatch_feedback_events_total", &[], 2.0)
        .await;
    env.wait_metric("push_dispatch_messages_total", &[("result", "acked")], 1.0)
        .await;
    drop(worker);

    // The routing service subscribes a day late and seeks back.
    env.create_subscription("push-feedback", "routing-late")
        .await;
    // As docs/operations.md says to: `snapshot seek --time` on its subscription.
    let time = humantime::format_rfc3339_seconds(before).to_string();
    let out = env.run(
        &[
            "snapshot",
            "seek",
            "--time",
            &time,
            "--subscription",
            "routing-late",
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut feedback = env.collect("routing-late");
    let events = feedback.take(2).await;
    let mut tokens: Vec<String> = events
        .iter()
        .map(|m| {
            serde_json::from_slice::<TokenInvalidated>(&m.data)
                .expect("event")
                .token
        })
        .collect();
    tokens.sort();
    assert_eq!(
        tokens,
        vec![apns_token("dead"), "unregistered-late".to_string()]
    );
}

#[tokio::test]
async fn a_snapshot_taken_before_a_bad_deploy_brings_back_what_it_acked() {
    let env = TestEnv::new("snapshot", Settings::default()).await;
    env.provision();
    let mut ids = Vec::new();
    for i in 0..3 {
        let json = format!(
            r#"{{"requestId": "dr-{i}", "targets": [{{"platform": "PLATFORM_FCM", "token": "ok-{i}"}}]}}"#
        );
        ids.push(env.publish_json(&json).await);
    }
    let run = |args: &[&str]| {
        let out = env.run(args, &[]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{args:?}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    };
    assert!(run(&["snapshot", "create", "before-deploy"]).contains("created"));
    assert!(run(&["snapshot", "list"]).contains("snapshots/before-deploy"));
    // The "bad deploy" takes and acks every message.
    let mut pulled = env.collect("push-requests-dispatch");
    let mut first: Vec<String> = pulled
        .take(3)
        .await
        .into_iter()
        .map(|m| m.message_id)
        .collect();
    first.sort();
    ids.sort();
    assert_eq!(first, ids);
    run(&["snapshot", "seek", "before-deploy"]);
    let mut again: Vec<String> = pulled
        .take(3)
        .await
        .into_iter()
        .map(|m| m.message_id)
        .collect();
    again.sort();
    assert_eq!(
        again, ids,
        "every message acked after the snapshot is delivered again"
    );
    run(&["snapshot", "delete", "before-deploy"]);
    assert!(!run(&["snapshot", "list"]).contains("before-deploy"));
}

#[tokio::test]
async fn without_retention_feedback_nobody_reads_is_gone_and_start_up_says_so() {
    let env = TestEnv::new(
        "no-readers",
        Settings {
            feedback_yaml: Some("  retention: 0s".into()),
            ..Settings::default()
        },
    )
    .await;
    env.provision();
    assert_eq!(topic_retention(&env, "push-feedback").await, None);
    let before = SystemTime::now() - Duration::from_secs(1);
    let worker = env.start_worker().await;
    // At start-up: a warning and the gauges.
    let start = Instant::now();
    while !worker
        .log_text()
        .contains("the feedback topic has no subscription and no message retention")
    {
        assert!(
            start.elapsed() < DEADLINE,
            "no warning:\n{}",
            worker.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        env.metric("push_dispatch_feedback_subscriptions", &[])
            .await,
        0.0
    );
    assert_eq!(
        env.metric("push_dispatch_feedback_retention_seconds", &[])
            .await,
        0.0
    );

    env.publish_json(&two_dead_tokens()).await;
    env.wait_metric("push_dispatch_feedback_events_total", &[], 2.0)
        .await;
    env.create_subscription("push-feedback", "routing-late")
        .await;
    seek(&env, "routing-late", before).await;
    let mut feedback = env.collect("routing-late");
    // Absence can only be shown by waiting: what Pub/Sub confirmed is gone.
    feedback.expect_nothing(Duration::from_secs(2)).await;
}

#[tokio::test]
async fn provision_sets_feedback_retention_and_creates_consumer_subscriptions_once() {
    let env = TestEnv::new(
        "consumers",
        Settings {
            feedback_yaml: Some(
                r#"  retention: 2d
  subscriptions:
    - name: routing-cleanup
      filter: 'attributes.app = "default"'
      ack_deadline: 30s
      dead_letter_topic: routing-cleanup-dlq
      retention: 1d"#
                    .into(),
            ),
            ..Settings::default()
        },
    )
    .await;
    let first = env.provision();
    assert!(first.contains("routing-cleanup-dlq"), "{first}");
    assert_eq!(
        topic_retention(&env, "push-feedback").await,
        Some(2 * 86_400)
    );
    let sub = env.get_subscription("routing-cleanup").await;
    assert_eq!(sub.topic, env.topic("push-feedback"));
    assert_eq!(sub.filter, r#"attributes.app = "default""#);
    assert_eq!(sub.ack_deadline_seconds, 30);
    assert_eq!(
        sub.dead_letter_policy
            .as_ref()
            .map(|d| d.dead_letter_topic.clone()),
        Some(env.topic("routing-cleanup-dlq"))
    );
    assert_eq!(
        sub.message_retention_duration.map(|d| d.seconds()),
        Some(86_400)
    );
    assert!(
        sub.expiration_policy
            .as_ref()
            .is_some_and(|e| e.ttl.is_none()),
        "consumer subscriptions never expire"
    );
    assert!(env.provision().contains("everything up to date"));

    // A changed retention is updated in place (the emulator stores it).
    let out = env.run(
        &["provision"],
        &[("PUSH_DISPATCH_FEEDBACK__RETENTION", "3d")],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("updated message_retention_duration"),
        "{text}"
    );
    assert_eq!(
        topic_retention(&env, "push-feedback").await,
        Some(3 * 86_400)
    );
}

#[tokio::test]
async fn check_config_online_reports_pubsub_permissions_and_feedback_readers() {
    let env = TestEnv::new(
        "online-pubsub",
        Settings {
            feedback_yaml: Some("  retention: 0s".into()),
            ..Settings::default()
        },
    )
    .await;
    let stdout = |out: &std::process::Output| String::from_utf8_lossy(&out.stdout).into_owned();
    let missing = env.run(&["check-config", "--online"], &[]);
    assert!(missing.status.success(), "{}", stdout(&missing));
    assert!(
        stdout(&missing).contains("IAM check skipped"),
        "{}",
        stdout(&missing)
    );
    assert!(
        stdout(&missing).contains("does not exist; run `push-dispatch provision`"),
        "{}",
        stdout(&missing)
    );
    env.provision();
    let unread = env.run(&["check-config", "--online"], &[]);
    assert!(
        stdout(&unread).contains("WARNING feedback.topic")
            && stdout(&unread).contains("no subscription and no message retention"),
        "{}",
        stdout(&unread)
    );
    env.create_subscription("push-feedback", "routing").await;
    let read = env.run(&["check-config", "--online"], &[]);
    assert!(
        stdout(&read).contains("1 subscription(s), retention none"),
        "{}",
        stdout(&read)
    );
    assert!(
        stdout(&read).contains("apps[0].apns.environment: sandbox (from the endpoint host)"),
        "{}",
        stdout(&read)
    );
}
