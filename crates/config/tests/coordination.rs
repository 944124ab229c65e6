//! The fleet keys (issue 16): `coordination`, `dedup`, and both forms of `rate_limit`.

use std::time::Duration;

use push_dispatch_config::{Config, ConfigError, RateLimit, RateScope};

fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, text).expect("write config");
    Config::load(
        &path,
        env.iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string())),
    )
}

fn issues(text: &str) -> Vec<String> {
    match load(text, &[]) {
        Err(ConfigError::Invalid(issues)) => issues.iter().map(|i| i.to_string()).collect(),
        other => panic!("expected invalid, got {other:?}"),
    }
}

const APP: &str = "apps:\n  - name: main\n    fcm:\n      project_id: fb-project\n";

#[test]
fn the_defaults_are_in_process_without_dedup() {
    let c = load(APP, &[]).expect("valid");
    assert_eq!(c.coordination.redis_url, None);
    assert_eq!(c.coordination.prefix, "push-dispatch");
    assert_eq!(c.coordination.timeout, Duration::from_millis(250));
    assert_eq!(c.dedup.window, None);
    assert_eq!(c.dedup.max_entries, 1_000_000);
    assert_eq!(c.dedup.pending, Duration::from_secs(60));
}

#[test]
fn the_fleet_keys_load_from_the_file_and_the_environment() {
    let text = format!(
        "{APP}      rate_limit: {{ per_second: 9000, scope: fleet, fallback_per_second: 1500 }}\n    apns:\n      endpoint: https://api.push.apple.com\n      key_file: /k.p8\n      key_id: ABC123DEFG\n      team_id: DEF123GHIJ\n      topic: com.example\n      rate_limit: 300\ncoordination:\n  prefix: prod-eu\n  timeout: 100ms\ndedup:\n  window: 24h\n  max_entries: 5000\n"
    );
    let c = load(
        &text,
        &[(
            "PUSH_DISPATCH_COORDINATION__REDIS_URL",
            "rediss://:hunter2@10.0.0.3:6378",
        )],
    )
    .expect("valid");
    assert_eq!(
        c.coordination.redis_url.as_deref(),
        Some("rediss://:hunter2@10.0.0.3:6378")
    );
    assert_eq!(c.coordination.prefix, "prod-eu");
    assert_eq!(c.coordination.timeout, Duration::from_millis(100));
    assert_eq!(c.dedup.window, Some(Duration::from_secs(86_400)));
    assert_eq!(c.dedup.max_entries, 5000);
    let fcm = c.apps[0]
        .fcm
        .as_ref()
        .expect("fcm")
        .rate_limit
        .expect("limit");
    assert_eq!(
        fcm,
        RateLimit {
            per_second: 9000.0,
            scope: RateScope::Fleet,
            fallback_per_second: Some(1500.0)
        }
    );
    assert_eq!(fcm.pod_rate(), 1500.0);
    let apns = c.apps[0]
        .apns
        .as_ref()
        .expect("apns")
        .rate_limit
        .expect("limit");
    assert_eq!(apns, RateLimit::per_pod(300.0));

    let shown = c.to_redacted_yaml();
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(shown.contains("rediss://:***@10.0.0.3:6378"), "{shown}");
    assert!(
        shown.contains("rate_limit: 300"),
        "a pod limit prints as a number: {shown}"
    );
    assert!(shown.contains("scope: fleet"), "{shown}");
}

#[test]
fn a_pod_limit_in_map_form_equals_the_number() {
    let text = format!("{APP}      rate_limit: {{ per_second: 250 }}\n");
    let c = load(&text, &[]).expect("valid");
    let r = c.apps[0].fcm.as_ref().expect("fcm").rate_limit;
    assert_eq!(r, Some(RateLimit::per_pod(250.0)));
}

#[test]
fn bad_fleet_values_name_their_keys() {
    let text = format!(
        "{APP}      rate_limit: {{ per_second: 0, fallback_per_second: 10 }}\ncoordination:\n  redis_url: redis+cluster://10.0.0.1:6379\n  ca_file: /ca.pem\n  prefix: 'has space'\n  timeout: 10s\ndedup:\n  window: 10s\n  pending: 5s\n  max_entries: 10\n"
    );
    let all = issues(&text).join("\n");
    for needle in [
        "`apps[0].fcm.rate_limit`: 0 is not a rate",
        "`apps[0].fcm.rate_limit.fallback_per_second`: applies only to scope: fleet",
        "`coordination.redis_url`: is a Redis Cluster URL; Memorystore Cluster is not supported",
        "`coordination.ca_file`: is set but coordination.redis_url is not rediss://",
        "`coordination.prefix`",
        "`coordination.timeout`",
        "`dedup.window`",
        "`dedup.pending`: 5s is shorter than 2 × dispatch.request_timeout (20s)",
        "`dedup.max_entries`",
    ] {
        assert!(all.contains(needle), "missing {needle} in:\n{all}");
    }
    let not_a_url = issues(&format!(
        "{APP}coordination:\n  redis_url: 'http://u:pw@host'\n"
    ))
    .join("\n");
    assert!(not_a_url.contains("is not a Redis URL"), "{not_a_url}");
    assert!(
        !not_a_url.contains(":pw@"),
        "the password is redacted: {not_a_url}"
    );
}

#[test]
fn a_wrong_scope_is_refused() {
    let text = format!("{APP}      rate_limit: {{ per_second: 10, scope: galaxy }}\n");
    match load(&text, &[]) {
        Err(ConfigError::Parse(e)) => assert!(e.contains("rate_limit"), "{e}"),
        other => panic!("expected a parse error, got {other:?}"),
    }
}

#[test]
fn check_files_reads_the_redis_ca() {
    let text = format!(
        "{APP}coordination:\n  redis_url: rediss://10.0.0.3:6378\n  ca_file: /nonexistent/server-ca.pem\n"
    );
    let c = load(&text, &[]).expect("valid");
    let problems: Vec<String> = c.check_files().iter().map(|i| i.to_string()).collect();
    assert!(
        problems
            .iter()
            .any(|p| p.contains("coordination.ca_file") && p.contains("no such file")),
        "{problems:?}"
    );
}

#[test]
fn the_test_harness_variables_are_not_config_keys() {
    let c = load(
        APP,
        &[("PUSH_DISPATCH_TEST_REDIS_URL", "redis://127.0.0.1:6379")],
    )
    .expect("PUSH_DISPATCH_TEST_… is ignored");
    assert_eq!(c.coordination.redis_url, None);
}
