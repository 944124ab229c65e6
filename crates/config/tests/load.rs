//! Loading the config: file, environment overrides, and errors that name the key.

use std::path::PathBuf;
use std::time::Duration;

use push_dispatch_config::{Config, ConfigError, FeedbackEncoding};

const MINIMAL: &str = r#"
project_id: test-project
apps:
  - name: main
    fcm:
      project_id: fb-project
"#;

fn write(dir: &tempfile::TempDir, text: &str) -> PathBuf {
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, text).expect("write config");
    path
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
        .collect()
}

#[test]
fn the_repository_config_yaml_is_valid() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../config.yaml");
    let config = Config::load(&path, env(&[])).expect("config.yaml loads");
    assert_eq!(config.pubsub.subscription, "push-requests-dispatch");
    assert_eq!(
        config.pubsub.max_outstanding_bytes.as_u64(),
        64 * 1024 * 1024
    );
    assert_eq!(config.pubsub.retry_max_backoff, Duration::from_secs(600));
    assert_eq!(config.feedback.guard.min_samples, 200);
    assert_eq!(config.apps[0].name, "default");
}

#[test]
fn defaults_fill_what_the_file_leaves_out() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = Config::load(&write(&dir, MINIMAL), env(&[])).expect("loads");
    assert_eq!(config.pubsub.streams, 4);
    assert_eq!(config.pubsub.max_delivery_attempts, 20);
    assert_eq!(config.shutdown_grace, Duration::from_secs(30));
    assert_eq!(config.feedback.encoding, FeedbackEncoding::Json);
    let fcm = config.apps[0].fcm.as_ref().expect("fcm block");
    assert_eq!(fcm.endpoint, "https://fcm.googleapis.com");
    assert_eq!(config.dispatch.quota_wait, Duration::from_secs(60));
}

#[test]
fn quota_wait_is_a_duration_of_at_least_a_second() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = Config::load(
        &write(&dir, MINIMAL),
        env(&[("PUSH_DISPATCH_DISPATCH__QUOTA_WAIT", "2m")]),
    )
    .expect("loads");
    assert_eq!(config.dispatch.quota_wait, Duration::from_secs(120));
    let text = format!("{MINIMAL}dispatch:\n  quota_wait: 500ms\n");
    let issues = issues_of(&text);
    assert!(
        issues
            .iter()
            .any(|i| i.contains("dispatch.quota_wait") && i.contains("between 1s and 1h")),
        "{issues:?}"
    );
}

#[test]
fn environment_overrides_nest_with_double_underscores() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = Config::load(
        &write(&dir, MINIMAL),
        env(&[
            ("PUSH_DISPATCH_PUBSUB__STREAMS", "9"),
            ("PUSH_DISPATCH_PUBSUB__ACK_DEADLINE", "2m"),
            ("PUSH_DISPATCH_FEEDBACK__GUARD__RATIO", "0.75"),
            ("PUSH_DISPATCH_PROJECT_ID", "other-project"),
            ("PUSH_DISPATCH_CONFIG", "ignored.yaml"),
            ("UNRELATED", "x"),
        ]),
    )
    .expect("loads");
    assert_eq!(config.pubsub.streams, 9);
    assert_eq!(config.pubsub.ack_deadline, Duration::from_secs(120));
    assert!((config.feedback.guard.ratio - 0.75).abs() < f64::EPSILON);
    assert_eq!(config.project_id, "other-project");
    assert_eq!(config.pubsub.subscription, "push-requests-dispatch");
}

#[test]
fn pubsub_emulator_host_is_honoured() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = Config::load(
        &write(&dir, MINIMAL),
        env(&[("PUBSUB_EMULATOR_HOST", "127.0.0.1:8085")]),
    )
    .expect("loads");
    assert_eq!(
        config.pubsub.emulator_host.as_deref(),
        Some("127.0.0.1:8085")
    );
}

#[test]
fn a_wrong_type_names_the_key_and_the_fix() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = format!("{MINIMAL}pubsub:\n  streams: many\n");
    let err = Config::load(&write(&dir, &text), env(&[])).expect_err("bad type");
    let msg = err.to_string();
    assert!(matches!(err, ConfigError::Parse(_)));
    assert!(msg.contains("`pubsub.streams`"), "{msg}");
    assert!(msg.contains("PUSH_DISPATCH_PUBSUB__STREAMS"), "{msg}");
}

#[test]
fn a_bad_environment_value_says_it_came_from_the_environment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = Config::load(
        &write(&dir, MINIMAL),
        env(&[("PUSH_DISPATCH_PUBSUB__ACK_DEADLINE", "soon")]),
    )
    .expect_err("bad duration");
    let msg = err.to_string();
    assert!(
        msg.contains("`pubsub.ack_deadline`") && msg.contains("environment"),
        "{msg}"
    );
}

#[test]
fn an_unknown_key_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = format!("{MINIMAL}pubsub:\n  stream: 4\n");
    let msg = Config::load(&write(&dir, &text), env(&[]))
        .expect_err("typo")
        .to_string();
    assert!(msg.contains("stream"), "{msg}");
}

#[test]
fn out_of_range_values_are_all_reported_with_their_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = r#"
project_id: test-project
pubsub:
  max_delivery_attempts: 3
  retry_min_backoff: 700s
  streams: 0
  requests_topic: goog-topic
apps:
  - name: main
    apns:
      endpoint: ftp://apple
      key_file: /nope.p8
      key_id: SHORT
      team_id: DEF123GHIJ
      topic: ""
"#;
    let Err(ConfigError::Invalid(issues)) = Config::load(&write(&dir, text), env(&[])) else {
        panic!("expected validation issues");
    };
    let keys: Vec<&str> = issues.iter().map(|i| i.key.as_str()).collect();
    for key in [
        "pubsub.max_delivery_attempts",
        "pubsub.retry_min_backoff",
        "pubsub.streams",
        "pubsub.requests_topic",
        "apps[0].apns.endpoint",
        "apps[0].apns.key_id",
        "apps[0].apns.topic",
    ] {
        assert!(keys.contains(&key), "missing {key} in {keys:?}");
    }
    let text = issues
        .iter()
        .find(|i| i.key == "pubsub.max_delivery_attempts")
        .expect("issue")
        .to_string();
    assert!(text.contains("between 5 and 100"), "{text}");
}

#[test]
fn no_apps_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Err(ConfigError::Invalid(issues)) =
        Config::load(&write(&dir, "project_id: p-1\n"), env(&[]))
    else {
        panic!("expected validation issues");
    };
    assert_eq!(issues[0].key, "apps");
}

#[test]
fn duplicate_app_names_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = format!("{MINIMAL}  - name: main\n    fcm:\n      project_id: x\n");
    let Err(ConfigError::Invalid(issues)) = Config::load(&write(&dir, &text), env(&[])) else {
        panic!("expected validation issues");
    };
    assert!(issues.iter().any(|i| i.key == "apps[1].name"), "{issues:?}");
}

#[test]
fn missing_key_files_name_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = r#"
project_id: p-1
apps:
  - name: main
    apns:
      endpoint: https://api.push.apple.com
      key_file: /definitely/missing/AuthKey.p8
      key_id: ABC123DEFG
      team_id: DEF123GHIJ
      topic: com.example.app
    fcm:
      project_id: fb
      credentials_file: /definitely/missing/sa.json
"#;
    let config = Config::load(&write(&dir, text), env(&[])).expect("values are valid");
    let issues = config.check_files();
    let keys: Vec<&str> = issues.iter().map(|i| i.key.as_str()).collect();
    assert_eq!(
        keys,
        ["apps[0].apns.key_file", "apps[0].fcm.credentials_file"]
    );
    assert!(issues[0].problem.contains("no such file"));
}

#[test]
fn a_key_file_that_is_not_a_p8_key_is_refused_without_printing_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("AuthKey.p8");
    std::fs::write(&key, "super-secret-material").expect("write");
    let text = format!(
        "project_id: p-1\napps:\n  - name: main\n    apns:\n      endpoint: https://api.push.apple.com\n      key_file: {}\n      key_id: ABC123DEFG\n      team_id: DEF123GHIJ\n      topic: com.example.app\n",
        key.display()
    );
    let config = Config::load(&write(&dir, &text), env(&[])).expect("values are valid");
    let issues = config.check_files();
    assert_eq!(issues.len(), 1);
    assert!(!issues[0].to_string().contains("super-secret"));
    assert!(!config.to_redacted_yaml().contains("super-secret"));
}

#[test]
fn a_missing_file_says_how_to_fix_it() {
    let err =
        Config::load(std::path::Path::new("/no/such/config.yaml"), env(&[])).expect_err("missing");
    assert!(err.to_string().contains("--config"), "{err}");
}

#[test]
fn a_key_file_named_for_another_key_id_names_key_id_and_the_fix() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("AuthKey_ZZZ999YYY8.p8");
    std::fs::write(
        &key,
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .expect("write");
    let app = |key_id: &str| {
        format!(
            "project_id: p-1\napps:\n  - name: main\n    apns:\n      endpoint: https://api.push.apple.com\n      key_file: {}\n      key_id: {key_id}\n      team_id: DEF123GHIJ\n      topic: com.example.app\n",
            key.display()
        )
    };
    let config = Config::load(&write(&dir, &app("ABC123DEFG")), env(&[])).expect("valid");
    let issues = config.check_files();
    assert_eq!(issues.len(), 1, "{issues:?}");
    assert_eq!(issues[0].key, "apps[0].apns.key_id");
    assert!(
        issues[0].problem.contains("key_id: ZZZ999YYY8"),
        "{}",
        issues[0].problem
    );
    let config = Config::load(&write(&dir, &app("ZZZ999YYY8")), env(&[])).expect("valid");
    assert!(config.check_files().is_empty(), "the names agree");
}

#[test]
fn an_indexed_environment_variable_changes_one_key_of_one_app() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = format!("{MINIMAL}  - name: second\n    fcm:\n      project_id: fb-second\n");
    let config = Config::load(
        &write(&dir, &text),
        env(&[
            ("PUSH_DISPATCH_APPS__1__FCM__RATE_LIMIT", "250"),
            ("PUSH_DISPATCH_APPS__0__FCM__PROJECT_ID", "fb-override"),
            ("PUSH_DISPATCH_PUBSUB__STREAMS", "7"),
        ]),
    )
    .expect("valid");
    assert_eq!(config.apps.len(), 2, "the list is kept, not replaced");
    assert_eq!(config.apps[0].name, "main");
    let fcm = |i: usize| config.apps[i].fcm.as_ref().expect("fcm");
    assert_eq!(fcm(0).project_id, "fb-override");
    assert_eq!(fcm(0).rate_limit, None);
    assert_eq!(fcm(1).project_id, "fb-second");
    assert_eq!(
        fcm(1).rate_limit,
        Some(push_dispatch_config::RateLimit::per_pod(250.0))
    );
    assert_eq!(config.pubsub.streams, 7, "plain overrides still apply");

    let err = Config::load(
        &write(&dir, MINIMAL),
        env(&[("PUSH_DISPATCH_APPS__3__FCM__RATE_LIMIT", "1")]),
    )
    .expect_err("no such app");
    let text = err.to_string();
    assert!(
        text.contains("PUSH_DISPATCH_APPS__3__FCM__RATE_LIMIT") && text.contains("no apps[3]"),
        "{text}"
    );
}

fn issues_of(text: &str) -> Vec<String> {
    let dir = tempfile::tempdir().expect("tempdir");
    match Config::load(&write(&dir, text), env(&[])) {
        Ok(_) => Vec::new(),
        Err(ConfigError::Invalid(issues)) => issues.iter().map(ToString::to_string).collect(),
        Err(e) => panic!("not a validation error: {e}"),
    }
}

#[test]
fn local_stand_ins_are_refused_unless_allowed() {
    let app = |endpoint: &str| {
        format!(
            "project_id: p-1\n{{allow}}apps:\n  - name: main\n    fcm:\n      endpoint: \"{endpoint}\"\n      project_id: fb\n"
        )
    };
    for endpoint in ["stub:", "http://127.0.0.1:9443"] {
        let refused = issues_of(&app(endpoint).replace("{allow}", ""));
        assert_eq!(refused.len(), 1, "{refused:?}");
        assert!(
            refused[0].contains("apps[0].fcm.endpoint")
                && refused[0].contains("allow_insecure_endpoints: true"),
            "{refused:?}"
        );
        let allowed = app(endpoint).replace("{allow}", "allow_insecure_endpoints: true\n");
        assert!(issues_of(&allowed).is_empty(), "{endpoint}");
    }
    assert!(issues_of(&app("https://fcm.googleapis.com").replace("{allow}", "")).is_empty());
}

#[test]
fn a_service_account_with_a_local_token_uri_is_refused_unless_allowed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sa = dir.path().join("sa.json");
    std::fs::write(
        &sa,
        r#"{"type": "service_account", "token_uri": "http://127.0.0.1:9443/token", "private_key": "x"}"#,
    )
    .expect("write");
    let text = |allow: &str| {
        format!(
            "project_id: p-1\n{allow}apps:\n  - name: main\n    fcm:\n      project_id: fb\n      credentials_file: {}\n",
            sa.display()
        )
    };
    let config = Config::load(&write(&dir, &text("")), env(&[])).expect("values are valid");
    let issues = config.check_files();
    assert_eq!(issues.len(), 1, "{issues:?}");
    assert_eq!(issues[0].key, "apps[0].fcm.credentials_file");
    assert!(issues[0].problem.contains("token_uri"), "{issues:?}");
    let allowed = Config::load(
        &write(&dir, &text("allow_insecure_endpoints: true\n")),
        env(&[]),
    )
    .expect("loads");
    assert!(allowed.check_files().is_empty());
}

#[test]
fn feedback_retention_and_consumer_subscriptions_are_checked_with_their_keys() {
    let ok = "project_id: p-1\nfeedback:\n  retention: 3d\n  subscriptions:\n    - { name: routing-cleanup, filter: 'attributes.app = \"main\"', dead_letter_topic: routing-cleanup-dlq, retention: 2d }\napps:\n  - name: main\n    fcm:\n      project_id: fb\n";
    assert!(issues_of(ok).is_empty(), "{:?}", issues_of(ok));
    let dir = tempfile::tempdir().expect("tempdir");
    let config = Config::load(&write(&dir, ok), env(&[])).expect("loads");
    assert_eq!(config.feedback.retention, Duration::from_secs(3 * 86_400));
    let sub = &config.feedback.subscriptions[0];
    assert_eq!(sub.ack_deadline, Duration::from_secs(60), "default");
    assert_eq!(sub.retention, Some(Duration::from_secs(2 * 86_400)));
    let unmanaged = ok.replace("retention: 3d", "retention: 0s");
    assert!(issues_of(&unmanaged).is_empty(), "0 disables");

    let bad = ok
        .replace("retention: 3d", "retention: 40d")
        .replace("retention: 2d", "retention: 8d")
        .replace("routing-cleanup-dlq", "push-feedback")
        .replace("name: routing-cleanup", "name: push-requests-dispatch");
    let issues = issues_of(&bad);
    for key in [
        "feedback.retention",
        "feedback.subscriptions[0].retention",
        "feedback.subscriptions[0].dead_letter_topic",
        "feedback.subscriptions[0].name",
    ] {
        assert!(
            issues.iter().any(|i| i.contains(&format!("`{key}`"))),
            "{key}: {issues:?}"
        );
    }
}

#[test]
fn the_apns_environment_comes_from_the_endpoint_unless_set() {
    use push_dispatch_config::ApnsEnvironment;
    assert_eq!(
        ApnsEnvironment::of_endpoint("https://api.push.apple.com"),
        ApnsEnvironment::Production
    );
    assert_eq!(
        ApnsEnvironment::of_endpoint("https://api.push.apple.com:443/"),
        ApnsEnvironment::Production
    );
    assert_eq!(
        ApnsEnvironment::of_endpoint("https://api.sandbox.push.apple.com"),
        ApnsEnvironment::Sandbox
    );
    assert_eq!(
        ApnsEnvironment::of_endpoint("https://apns-proxy.internal"),
        ApnsEnvironment::Sandbox
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let text = "project_id: p-1\napps:\n  - name: main\n    apns:\n      endpoint: https://apns-proxy.internal\n      key_file: /k.p8\n      key_id: ABC123DEFG\n      team_id: DEF123GHIJ\n      topic: com.example.app\n      environment: production\n";
    let config = Config::load(&write(&dir, text), env(&[])).expect("loads");
    let apns = config.apps[0].apns.as_ref().expect("apns");
    assert_eq!(apns.effective_environment(), ApnsEnvironment::Production);
    let wrong = text.replace("environment: production", "environment: staging");
    let err = Config::load(&write(&dir, &wrong), env(&[])).expect_err("not an environment");
    assert!(err.to_string().contains("environment"), "{err}");
}

#[test]
fn a_kms_key_must_be_a_full_key_name() {
    let text = |kms: &str| {
        format!(
            "project_id: p-1\npubsub:\n  kms_key_name: {kms}\napps:\n  - name: main\n    fcm:\n      project_id: fb\n"
        )
    };
    assert!(
        issues_of(&text(
            "projects/p/locations/europe-west1/keyRings/r/cryptoKeys/k"
        ))
        .is_empty()
    );
    let issues = issues_of(&text("my-key"));
    assert!(
        issues.iter().any(|i| i.contains("pubsub.kms_key_name")),
        "{issues:?}"
    );
}

#[test]
fn results_are_off_by_default_and_checked_with_their_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = Config::load(&write(&dir, MINIMAL), env(&[])).expect("loads");
    assert_eq!(config.results.topic, None, "off by default");
    assert_eq!(config.results.encoding, FeedbackEncoding::Json);
    assert_eq!(config.results.retention, Duration::from_secs(7 * 86_400));

    let ok =
        format!("{MINIMAL}results:\n  topic: push-results\n  encoding: binary\n  retention: 2d\n");
    assert!(issues_of(&ok).is_empty(), "{:?}", issues_of(&ok));
    let config = Config::load(&write(&dir, &ok), env(&[])).expect("loads");
    assert_eq!(config.results.topic.as_deref(), Some("push-results"));
    assert_eq!(config.results.encoding, FeedbackEncoding::Binary);
    let from_env = Config::load(
        &write(&dir, MINIMAL),
        env(&[("PUSH_DISPATCH_RESULTS__TOPIC", "from-env")]),
    )
    .expect("loads");
    assert_eq!(from_env.results.topic.as_deref(), Some("from-env"));
    assert!(
        issues_of(&ok.replace("retention: 2d", "retention: 0s")).is_empty(),
        "0 = unmanaged"
    );

    for (bad, key) in [
        (
            ok.replace("retention: 2d", "retention: 40d"),
            "results.retention",
        ),
        (
            ok.replace("retention: 2d", "retention: 1m"),
            "results.retention",
        ),
        (ok.replace("push-results", "push-feedback"), "results.topic"),
        (ok.replace("push-results", "x"), "results.topic"),
    ] {
        let issues = issues_of(&bad);
        assert!(
            issues.iter().any(|i| i.contains(&format!("`{key}`"))),
            "{key}: {issues:?}"
        );
    }
}
