//! End-to-end tests of the command line: `provision` (idempotence, drift,
//! dry run), `check-config` (exit codes, keys named, secrets redacted),
//! `send`, and readiness of `run`.

use std::time::Duration;

use crate::common::{self, Settings, TestEnv};

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn provision_creates_everything_once_and_is_idempotent() {
    let env = TestEnv::new("provision", Settings::default()).await;
    let dry = env.run(&["provision", "--dry-run"], &[]);
    assert!(dry.status.success(), "{}", stderr(&dry));
    assert_eq!(
        stdout(&dry).matches("would create").count(),
        5,
        "{}",
        stdout(&dry)
    );

    let first = env.provision();
    assert_eq!(first.matches("created").count(), 5, "{first}");
    let second = env.provision();
    assert!(second.contains("everything up to date"), "{second}");
    assert!(
        !second.contains("created") && !second.contains("updated"),
        "{second}"
    );

    let sub = env.get_subscription("push-requests-dispatch").await;
    assert_eq!(sub.topic, env.topic("push-requests"));
    assert_eq!(sub.ack_deadline_seconds, 10);
    let dlp = sub.dead_letter_policy.expect("dead letter policy");
    assert_eq!(dlp.dead_letter_topic, env.topic("push-requests-dlq"));
    assert_eq!(dlp.max_delivery_attempts, 5);
    let rp = sub.retry_policy.expect("retry policy");
    assert_eq!(rp.maximum_backoff.map(|d| d.seconds()), Some(1));
    assert!(
        sub.expiration_policy.and_then(|e| e.ttl).is_none(),
        "the subscription never expires"
    );
    let inspect = env.get_subscription("push-requests-dlq-inspect").await;
    assert_eq!(inspect.topic, env.topic("push-requests-dlq"));
    assert_eq!(
        inspect.message_retention_duration.map(|d| d.seconds()),
        Some(7 * 24 * 3600)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn provision_updates_a_drifted_subscription_and_dry_run_changes_nothing() {
    let env = TestEnv::new("drift", Settings::default()).await;
    env.provision();
    let drift = [
        ("PUSH_DISPATCH_PUBSUB__MAX_DELIVERY_ATTEMPTS", "9"),
        ("PUSH_DISPATCH_PUBSUB__EXACTLY_ONCE", "true"),
    ];
    let dry = env.run(&["provision", "--dry-run"], &drift);
    assert!(
        stdout(&dry).contains("would update dead_letter_policy, enable_exactly_once_delivery"),
        "{}",
        stdout(&dry)
    );
    assert_eq!(
        env.get_subscription("push-requests-dispatch")
            .await
            .dead_letter_policy
            .map(|d| d.max_delivery_attempts),
        Some(5),
        "a dry run changes nothing"
    );
    let applied = env.run(&["provision"], &drift);
    assert!(applied.status.success(), "{}", stderr(&applied));
    assert!(
        stdout(&applied).contains("updated dead_letter_policy, enable_exactly_once_delivery"),
        "{}",
        stdout(&applied)
    );
    let sub = env.get_subscription("push-requests-dispatch").await;
    assert_eq!(
        sub.dead_letter_policy.map(|d| d.max_delivery_attempts),
        Some(9)
    );
    assert!(sub.enable_exactly_once_delivery);
    let again = env.run(&["provision"], &drift);
    assert!(
        stdout(&again).contains("everything up to date"),
        "{}",
        stdout(&again)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn provision_refuses_to_move_a_subscription_to_another_topic() {
    let env = TestEnv::new("immutable", Settings::default()).await;
    env.provision();
    let out = env.run(
        &["provision"],
        &[("PUSH_DISPATCH_PUBSUB__REQUESTS_TOPIC", "elsewhere")],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("cannot change it in place") && err.contains("elsewhere"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn check_config_prints_the_effective_config_and_names_bad_keys() {
    let env = TestEnv::new("check-config", Settings::default()).await;
    let ok = env.run(&["check-config"], &[]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    assert!(
        stdout(&ok).contains("project_id: e2e-check-config"),
        "{}",
        stdout(&ok)
    );
    assert!(
        !stdout(&ok).contains("BEGIN PRIVATE KEY"),
        "key material never printed"
    );

    let bad = env.run(
        &["check-config"],
        &[("PUSH_DISPATCH_PUBSUB__MAX_DELIVERY_ATTEMPTS", "2")],
    );
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        stderr(&bad).contains("config key `pubsub.max_delivery_attempts`"),
        "{}",
        stderr(&bad)
    );

    let wrong_type = env.run(&["run"], &[("PUSH_DISPATCH_DISPATCH__CONCURRENCY", "lots")]);
    assert_eq!(wrong_type.status.code(), Some(2));
    assert!(
        stderr(&wrong_type).contains("`dispatch.concurrency`"),
        "{}",
        stderr(&wrong_type)
    );

    let missing = env.run(&["--config", "/nonexistent.yaml", "check-config"], &[]);
    assert_eq!(missing.status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread")]
async fn check_config_loads_the_credentials_as_run_would() {
    // Real endpoints (check-config makes no network call); the key of the
    // test env, and a service-account file with a private key that is not one.
    let probe = TestEnv::new("check-creds-probe", Settings::default()).await;
    let key = probe.dir.path().join("AuthKey_TESTKEY001.p8");
    let sa = probe.dir.path().join("sa.json");
    std::fs::write(
        &sa,
        r#"{"type":"service_account","project_id":"fb","private_key_id":"k1","private_key":"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n","client_email":"x@fb.iam.gserviceaccount.com","client_id":"1","token_uri":"https://oauth2.googleapis.com/token"}"#,
    )
    .expect("write sa");
    let apps = |fcm_credentials: &str| {
        format!(
            r#"  - name: default
    apns:
      endpoint: https://api.sandbox.push.apple.com
      key_file: {key}
      key_id: TESTKEY001
      team_id: TESTTEAM01
      topic: com.example.app
    fcm:
      endpoint: https://fcm.googleapis.com
      project_id: fb
      credentials_file: {fcm_credentials}
"#,
            key = key.display()
        )
    };
    let env = TestEnv::new(
        "check-creds",
        Settings {
            apps_yaml: Some(apps("null")),
            ..Settings::default()
        },
    )
    .await;
    let ok = env.run(&["check-config"], &[]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    let text = stdout(&ok);
    assert!(
        text.contains("apps[0].apns: the key signs an ES256 provider token (kid TESTKEY001)"),
        "{text}"
    );
    assert!(
        text.contains("apps[0].fcm: Application Default Credentials"),
        "{text}"
    );

    let env = TestEnv::new(
        "check-creds-bad",
        Settings {
            apps_yaml: Some(apps(&sa.display().to_string())),
            ..Settings::default()
        },
    )
    .await;
    let bad = env.run(&["check-config"], &[]);
    assert_eq!(bad.status.code(), Some(2), "{}", stdout(&bad));
    let err = stderr(&bad);
    assert!(
        err.contains("config key `apps[0].fcm.credentials_file`"),
        "{err}"
    );
    assert!(!err.contains("AAAA"), "key material never printed: {err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn run_refuses_a_missing_apns_key_file_naming_the_key() {
    let env = TestEnv::new("missing-key", Settings::default()).await;
    std::fs::remove_file(env.dir.path().join("AuthKey_TESTKEY001.p8")).expect("remove key");
    let out = env.run(&["run"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("apps[0].apns.key_file"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn run_without_a_subscription_says_how_to_provision() {
    let env = TestEnv::new("no-sub", Settings::default()).await;
    let out = env.run(&["run"], &[("PUSH_DISPATCH_PUBSUB__PROVISION", "false")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("push-dispatch provision"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn send_publishes_from_flags_and_from_json() {
    let env = TestEnv::new("send", Settings::default()).await;
    env.provision();
    let _worker = env.start_worker().await;
    let token = common::apns_token("a1b2");
    let out = env.run(
        &[
            "send",
            "--platform",
            "apns",
            "--token",
            &token,
            "--title",
            "Hello",
            "--body",
            "World",
            "--data",
            "k=v",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stdout(&out).trim().is_empty(), "prints the message id");

    let json = env.dir.path().join("req.json");
    std::fs::write(
        &json,
        r#"{"app":"second","targets":[{"platform":"PLATFORM_FCM","token":"fcm-json"}]}"#,
    )
    .expect("write json");
    let json_arg = json.display().to_string();
    let out = env.run(&["send", "--json", &json_arg, "--binary"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));

    env.wait_metric(
        "push_dispatch_sends_total",
        &[("outcome", "delivered")],
        2.0,
    )
    .await;
    assert_eq!(
        env.metric(
            "push_dispatch_sends_total",
            &[("app", "second"), ("outcome", "delivered")]
        )
        .await,
        1.0
    );

    let usage = env.run(&["send", "--token", "x"], &[]);
    assert_eq!(usage.status.code(), Some(2));
    assert!(stderr(&usage).contains("--platform"), "{}", stderr(&usage));

    // What the worker would dead-letter is refused here, naming why.
    let typo = env.run(&["send", "--platform", "apns", "--token", "not-hex"], &[]);
    assert_eq!(typo.status.code(), Some(2), "{}", stdout(&typo));
    let err = stderr(&typo);
    assert!(
        err.contains("push_error=malformed_token") && err.contains("--no-check"),
        "{err}"
    );
    let unknown = env.run(
        &["send", "--platform", "fcm", "--token", "t", "--app", "nope"],
        &[],
    );
    assert_eq!(unknown.status.code(), Some(2));
    assert!(
        stderr(&unknown).contains("push_error=unknown_app"),
        "{}",
        stderr(&unknown)
    );
    // ... unless asked to publish it anyway, e.g. to test the dead-letter path.
    let mut dlq = env.collect("push-requests-dlq-inspect");
    let forced = env.run(
        &[
            "send",
            "--platform",
            "apns",
            "--token",
            "not-hex",
            "--no-check",
        ],
        &[],
    );
    assert!(forced.status.success(), "{}", stderr(&forced));
    let dead = dlq.take(1).await;
    assert_eq!(dead[0].attributes["push_error"], "malformed_token");

    // Delivery options go onto the request.
    let out = env.run(
        &[
            "send",
            "--platform",
            "fcm",
            "--token",
            "with-options",
            "--ttl",
            "1h",
            "--priority",
            "high",
            "--collapse-key",
            "score",
            "--binary",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    env.wait_metric(
        "push_dispatch_sends_total",
        &[("outcome", "delivered")],
        3.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_health_server_stops_with_the_worker() {
    let env = TestEnv::new(
        "readiness",
        Settings {
            shutdown_grace: "5s",
            ..Settings::default()
        },
    )
    .await;
    env.provision();
    let mut worker = env.start_worker().await;
    let (ready, _) = common::http_get(env.port, "/readyz").await.expect("readyz");
    assert_eq!(ready, 200);
    let status = worker.terminate().await;
    assert!(status.success());
    assert!(
        common::http_get(env.port, "/readyz").await.is_err(),
        "the server is gone after exit"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn dlq_peek_shows_reasons_replay_moves_only_the_chosen_messages_back_and_purge_deletes() {
    let env = TestEnv::new("dlq", Settings::default()).await;
    env.provision();
    env.create_subscription("push-requests", "requests-watch")
        .await;
    let mut requests = env.collect("requests-watch");
    let held = env
        .publish(
            "push-requests-dlq",
            br#"{"requestId":"held-1","targets":[{"platform":"PLATFORM_FCM","token":"t1"}]}"#
                .to_vec(),
            &[
                ("push_error", "invalidation_guard"),
                ("push_error_detail", "held by the guard"),
                ("push_attempt", "3"),
                ("push_delivery_attempt", "1"),
                ("source_message_id", "orig-1"),
                ("trace", "keep-me"),
            ],
        )
        .await;
    env.publish(
        "push-requests-dlq",
        b"{garbage".to_vec(),
        &[
            ("push_error", "decode_json"),
            ("source_message_id", "orig-2"),
        ],
    )
    .await;

    let peek = env.run(&["dlq", "peek"], &[]);
    assert!(peek.status.success(), "{}", stderr(&peek));
    let text = stdout(&peek);
    assert!(text.contains("push_error=invalidation_guard"), "{text}");
    assert!(text.contains("push_error=decode_json"), "{text}");
    assert!(text.contains("request_id=held-1"), "{text}");
    assert!(text.contains("2 message(s) shown"), "{text}");
    let again = stdout(&env.run(&["dlq", "peek"], &[]));
    assert!(
        again.contains("2 message(s) shown"),
        "peek removes nothing: {again}"
    );

    let dry = stdout(&env.run(
        &[
            "dlq",
            "replay",
            "--push-error",
            "invalidation_guard",
            "--dry-run",
        ],
        &[],
    ));
    assert!(dry.contains("1 message(s) would be replayed"), "{dry}");
    requests.expect_nothing(Duration::from_millis(300)).await;

    let replay = env.run(
        &["dlq", "replay", "--push-error", "invalidation_guard"],
        &[],
    );
    assert!(replay.status.success(), "{}", stderr(&replay));
    assert!(
        stdout(&replay).contains("1 message(s) replayed"),
        "{}",
        stdout(&replay)
    );
    let back = &requests.take(1).await[0];
    assert_eq!(back.attributes.get("push_replayed_from"), Some(&held));
    assert_eq!(
        back.attributes.get("trace").map(String::as_str),
        Some("keep-me")
    );
    assert_eq!(
        back.attributes.get("source_message_id").map(String::as_str),
        Some("orig-1")
    );
    for cleared in [
        "push_error",
        "push_error_detail",
        "push_attempt",
        "push_delivery_attempt",
    ] {
        assert!(
            !back.attributes.contains_key(cleared),
            "{cleared} not cleared: {back:?}"
        );
    }
    let left = stdout(&env.run(&["dlq", "peek"], &[]));
    assert!(
        left.contains("1 message(s) shown") && left.contains("decode_json"),
        "{left}"
    );

    // Purge needs a code or --all, so that nothing is deleted by accident.
    let unbounded = env.run(&["dlq", "purge"], &[]);
    assert_eq!(unbounded.status.code(), Some(2));
    let other_code = stdout(&env.run(&["dlq", "purge", "--push-error", "no_targets"], &[]));
    assert!(other_code.contains("0 message(s) deleted"), "{other_code}");
    let dry = stdout(&env.run(&["dlq", "purge", "--all", "--dry-run"], &[]));
    assert!(dry.contains("1 message(s) would be deleted"), "{dry}");
    let purge = env.run(&["dlq", "purge", "--push-error", "decode_json"], &[]);
    assert!(purge.status.success(), "{}", stderr(&purge));
    assert!(
        stdout(&purge).contains("1 message(s) deleted"),
        "{}",
        stdout(&purge)
    );
    let empty = stdout(&env.run(&["dlq", "peek"], &[]));
    assert!(empty.contains("0 message(s) shown"), "{empty}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sandbox_expires_provider_tokens_on_the_schedule_it_is_given() {
    use push_dispatch_sandbox::devkeys;
    let dir = tempfile::tempdir().expect("dir");
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
        l.local_addr().expect("addr")
    };
    let mut sandbox = tokio::process::Command::new(env!("CARGO_BIN_EXE_push-dispatch"))
        .args(["sandbox", "--listen", &addr.to_string(), "--dir"])
        .arg(dir.path())
        .args(["--expire-provider-tokens-every", "300ms"])
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("sandbox starts");
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .expect("client");
    let base = format!("http://{addr}");
    let deadline = std::time::Instant::now() + common::DEADLINE;
    while client
        .get(format!("{base}/sandbox/stats"))
        .send()
        .await
        .is_err()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "sandbox never answered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The sandbox made the development key in `dir`; sign one token with it.
    let creds = devkeys::ensure(
        dir.path(),
        &format!("{base}/token"),
        "example-firebase-project",
    )
    .expect("the sandbox's credentials");
    let iat = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let jwt =
        devkeys::apns_provider_token(&creds.apns_key_file, &creds.key_id, &creds.team_id, iat)
            .expect("jwt");
    let push = || {
        client
            .post(format!("{base}/3/device/{}", common::apns_token("a1b2")))
            .header("authorization", format!("bearer {jwt}"))
            .header("apns-topic", "com.example.app")
            .header("apns-push-type", "alert")
            .body(r#"{"aps":{"alert":"hi"}}"#)
            .send()
    };
    assert_eq!(
        push().await.expect("answer").status(),
        200,
        "a fresh token is accepted"
    );
    // Within a few periods the same token is expired, as Apple does.
    loop {
        let answer = push().await.expect("answer");
        if answer.status() == 403 {
            let body = answer.text().await.expect("body");
            assert!(body.contains("ExpiredProviderToken"), "{body}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the token never expired"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sandbox.kill().await.expect("stop the sandbox");
}

#[tokio::test(flavor = "multi_thread")]
async fn check_config_online_asks_each_provider_with_a_token_of_no_device() {
    use push_dispatch_sandbox::{Faults, devkeys};
    let dir = tempfile::tempdir().expect("dir");
    let (sandbox, creds) =
        common::start_sandbox(dir.path(), "com.example.app", "probe-fb", Faults::default()).await;
    let settings = |apps: String| Settings {
        apps_yaml: Some(apps),
        ..Settings::default()
    };
    let good = common::sandbox_app_yaml("default", &sandbox, &creds, "com.example.app", "probe-fb");
    let env = TestEnv::new("online-ok", settings(good.clone())).await;
    let ok = env.run(&["check-config", "--online"], &[]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    let text = stdout(&ok);
    for key in ["apps[0].apns", "apps[0].fcm"] {
        assert!(
            text.contains(&format!("{key}: reachable, credentials accepted")),
            "{text}"
        );
    }
    assert!(
        sandbox.deliveries().is_empty(),
        "the probe delivers nothing"
    );

    // A key Apple does not know for this key id, and a project the
    // credentials may not send for: both refused, each naming its app.
    let other = tempfile::tempdir().expect("dir");
    let stranger =
        devkeys::ensure(other.path(), "http://127.0.0.1:9/token", "probe-fb").expect("another key");
    let bad = good
        .replace(
            &creds.apns_key_file.display().to_string(),
            &stranger.apns_key_file.display().to_string(),
        )
        .replace("project_id: probe-fb", "project_id: someone-elses-project");
    let env = TestEnv::new("online-bad", settings(bad)).await;
    let refused = env.run(&["check-config", "--online"], &[]);
    assert_eq!(refused.status.code(), Some(2), "{}", stdout(&refused));
    let err = stderr(&refused);
    assert!(
        err.contains("config key `apps[0].apns`") && err.contains("key_id"),
        "{err}"
    );
    assert!(err.contains("config key `apps[0].fcm`"), "{err}");
}
