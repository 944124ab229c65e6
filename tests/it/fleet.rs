//! A fleet of workers coordinating through one Redis (issue 16): two worker
//! processes on one subscription and one `redis-server` (started by
//! `make test`, `PUSH_DISPATCH_TEST_REDIS_URL`; a key prefix per test), or
//! a private one the test kills and restarts.
//!
//! - a request published twice reaches each device once;
//! - the mass-invalidation guard trips on the fleet's first `min_samples`
//!   answers, not on each pod's;
//! - killing Redis mid-run loses nothing: dedup is skipped (metric), the
//!   worker keeps sending and reconnects when Redis returns.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use push_dispatch_coordination::test_support::{RedisServer, TestRedis, require_redis_server};
use push_dispatch_sandbox::Faults;

use crate::common::{
    self, DEADLINE, Settings, TestEnv, WorkerProcess, apns_token, http_get, sandbox_app_yaml,
    start_sandbox,
};

/// Sums a metric over the workers.
async fn total(workers: &[&WorkerProcess], name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut sum = 0.0;
    for w in workers {
        if let Ok((_, text)) = http_get(w.port, "/metrics").await {
            sum += common::metric_value(&text, name, labels);
        }
    }
    sum
}

async fn wait_total(
    workers: &[&WorkerProcess],
    name: &str,
    labels: &[(&str, &str)],
    at_least: f64,
) {
    let start = Instant::now();
    loop {
        let v = total(workers, name, labels).await;
        if v >= at_least {
            return;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "{name}{labels:?} stayed at {v} (< {at_least})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn deliveries_per_token(sandbox: &push_dispatch_sandbox::Sandbox) -> HashMap<String, usize> {
    let mut per = HashMap::new();
    for d in sandbox.deliveries() {
        *per.entry(d.token).or_default() += 1;
    }
    per
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_published_twice_to_two_workers_is_sent_once() {
    let Some(redis) = TestRedis::get("dedup-two-workers") else {
        return;
    };
    let dir = tempfile::tempdir().expect("dir");
    let (sandbox, creds) =
        start_sandbox(dir.path(), "com.example.app", "dedup-fb", Faults::default()).await;
    let env = TestEnv::new(
        "dedup",
        Settings {
            apps_yaml: Some(sandbox_app_yaml(
                "default",
                &sandbox,
                &creds,
                "com.example.app",
                "dedup-fb",
            )),
            request_timeout: "2s",
            ..Settings::default()
        },
    )
    .await;
    env.provision();
    let coordination = [
        ("PUSH_DISPATCH_COORDINATION__REDIS_URL", redis.url.as_str()),
        ("PUSH_DISPATCH_COORDINATION__PREFIX", redis.prefix.as_str()),
        ("PUSH_DISPATCH_DEDUP__WINDOW", "1h"),
        ("PUSH_DISPATCH_DEDUP__PENDING", "4s"),
    ];
    let a = env.start_another_worker("a", &coordination).await;
    let b = env.start_another_worker("b", &coordination).await;
    let n = 20;
    // Each request twice, back to back: the two copies reach the two workers
    // at about the same moment.
    for i in 0..n {
        let body = format!(
            r#"{{"requestId":"order-{i}","targets":[{{"platform":"PLATFORM_APNS","token":"{}"}},{{"platform":"PLATFORM_FCM","token":"ok-{i}"}}]}}"#,
            apns_token(&format!("{i:04x}"))
        );
        env.publish_json(&body).await;
        env.publish_json(&body).await;
    }
    let workers = [&a, &b];
    // Every second copy ends suppressed (at once, or after the first copy's
    // claim was recorded and it came back).
    wait_total(
        &workers,
        "push_dispatch_sends_total",
        &[("outcome", "duplicate_suppressed")],
        f64::from(2 * n),
    )
    .await;
    let per = deliveries_per_token(&sandbox);
    assert_eq!(per.len(), 2 * n as usize, "every target delivered: {per:?}");
    assert!(
        per.values().all(|&c| c == 1),
        "a target delivered twice: {per:?}"
    );
    let suppressed = total(
        &workers,
        "push_dispatch_sends_total",
        &[("outcome", "duplicate_suppressed")],
    )
    .await;
    assert_eq!(suppressed, f64::from(2 * n));
    assert_eq!(
        total(&workers, "push_dispatch_coordination_up", &[]).await,
        2.0,
        "both workers reach Redis"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_guard_trips_on_the_fleets_first_min_samples_answers() {
    let Some(redis) = TestRedis::get("fleet-guard") else {
        return;
    };
    let dir = tempfile::tempdir().expect("dir");
    let (sandbox, creds) =
        start_sandbox(dir.path(), "com.example.app", "fleet-fb", Faults::default()).await;
    // The wrong bundle id: every APNs answer is DeviceTokenNotForTopic.
    let env = TestEnv::new(
        "fleet-guard",
        Settings {
            apps_yaml: Some(sandbox_app_yaml(
                "default",
                &sandbox,
                &creds,
                "com.example.wrong",
                "fleet-fb",
            )),
            ..Settings::default()
        },
    )
    .await;
    env.provision();
    let coordination = [
        ("PUSH_DISPATCH_COORDINATION__REDIS_URL", redis.url.as_str()),
        ("PUSH_DISPATCH_COORDINATION__PREFIX", redis.prefix.as_str()),
        ("PUSH_DISPATCH_FEEDBACK__GUARD__MIN_SAMPLES", "10"),
        ("PUSH_DISPATCH_FEEDBACK__GUARD__WINDOW", "60s"),
    ];
    let a = env.start_another_worker("a", &coordination).await;
    let b = env.start_another_worker("b", &coordination).await;
    let n = 40u64;
    for i in 0..n {
        env.publish_json(&format!(
            r#"{{"requestId":"g-{i}","targets":[{{"platform":"PLATFORM_APNS","token":"{:064x}"}}]}}"#,
            0xbad0_0000_u64 + i
        ))
        .await;
    }
    let workers = [&a, &b];
    wait_total(
        &workers,
        "push_dispatch_messages_total",
        &[("result", "acked")],
        n as f64,
    )
    .await;
    let held = total(&workers, "push_dispatch_invalidation_guard_held_total", &[]).await as u64;
    let reported = total(&workers, "push_dispatch_feedback_events_total", &[]).await as u64;
    assert_eq!(held + reported, n);
    // Each answer is counted in the fleet's window and the verdict read back
    // in the same round trip: at most min_samples − 1 reports pass
    // fleet-wide (two pods judging alone could pass up to twice that).
    assert!(
        reported < 10,
        "{reported} suspicious reports passed across two workers; the fleet's first 10 answers must decide"
    );
    let tripped_on = total(&workers, "push_dispatch_invalidation_guard_held_total", &[]).await;
    assert!(tripped_on > 0.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn killing_redis_mid_run_loses_nothing_and_the_worker_reconnects() {
    if !require_redis_server("killing_redis_mid_run") {
        return;
    }
    let mut redis = RedisServer::start().expect("redis-server");
    let url = redis.url();
    let dir = tempfile::tempdir().expect("dir");
    let (sandbox, creds) =
        start_sandbox(dir.path(), "com.example.app", "kill-fb", Faults::default()).await;
    let env = TestEnv::new(
        "redis-kill",
        Settings {
            apps_yaml: Some(sandbox_app_yaml(
                "default",
                &sandbox,
                &creds,
                "com.example.app",
                "kill-fb",
            )),
            request_timeout: "2s",
            ..Settings::default()
        },
    )
    .await;
    env.provision();
    let w = env
        .start_another_worker(
            "w",
            &[
                ("PUSH_DISPATCH_COORDINATION__REDIS_URL", url.as_str()),
                ("PUSH_DISPATCH_DEDUP__WINDOW", "1h"),
                ("PUSH_DISPATCH_DEDUP__PENDING", "4s"),
            ],
        )
        .await;
    let workers = [&w];
    let publish = |from: usize, to: usize| {
        let env = &env;
        async move {
            for i in from..to {
                env.publish_json(&format!(
                    r#"{{"requestId":"k-{i}","targets":[{{"platform":"PLATFORM_FCM","token":"ok-{i}"}}]}}"#
                ))
                .await;
            }
        }
    };
    wait_total(&workers, "push_dispatch_coordination_up", &[], 1.0).await;
    publish(0, 10).await;
    wait_total(
        &workers,
        "push_dispatch_messages_total",
        &[("result", "acked")],
        10.0,
    )
    .await;

    // Redis dies: nothing is held back, dedup is skipped and counted.
    redis.kill();
    publish(10, 20).await;
    wait_total(
        &workers,
        "push_dispatch_messages_total",
        &[("result", "acked")],
        20.0,
    )
    .await;
    assert!(total(&workers, "push_dispatch_dedup_unavailable_total", &[]).await > 0.0);
    assert_eq!(
        total(&workers, "push_dispatch_coordination_up", &[]).await,
        0.0
    );

    // Redis is back: the worker reconnects and dedup works again.
    redis.restart().expect("restart redis-server");
    wait_total(&workers, "push_dispatch_coordination_up", &[], 1.0).await;
    publish(20, 30).await;
    wait_total(
        &workers,
        "push_dispatch_messages_total",
        &[("result", "acked")],
        30.0,
    )
    .await;
    publish(25, 26).await; // a producer's retry of a request sent after the restart
    wait_total(
        &workers,
        "push_dispatch_sends_total",
        &[("outcome", "duplicate_suppressed")],
        1.0,
    )
    .await;
    let per = deliveries_per_token(&sandbox);
    assert_eq!(per.len(), 30, "every target delivered: {per:?}");
    assert!(per.values().all(|&c| c == 1), "{per:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fleet_rate_limit_is_shared_by_two_workers() {
    let Some(redis) = TestRedis::get("fleet-rate") else {
        return;
    };
    let dir = tempfile::tempdir().expect("dir");
    let (sandbox, creds) =
        start_sandbox(dir.path(), "com.example.app", "rate-fb", Faults::default()).await;
    let app = sandbox_app_yaml("default", &sandbox, &creds, "com.example.app", "rate-fb")
        + "      rate_limit: {per_second: 20, scope: fleet}\n";
    let coordination = [
        ("PUSH_DISPATCH_COORDINATION__REDIS_URL", redis.url.as_str()),
        ("PUSH_DISPATCH_COORDINATION__PREFIX", redis.prefix.as_str()),
    ];
    // Two deployments' worth of work: each worker has its own subscription
    // and 50 requests, so both are busy; they share the Firebase project,
    // hence the fleet limit.
    let mut envs = Vec::new();
    let mut workers = Vec::new();
    for name in ["fleet-rate-a", "fleet-rate-b"] {
        let env = TestEnv::new(
            name,
            Settings {
                apps_yaml: Some(app.clone()),
                max_in_process_wait: "5s",
                ..Settings::default()
            },
        )
        .await;
        env.provision();
        workers.push(env.start_another_worker(name, &coordination).await);
        envs.push(env);
    }
    let n = 50;
    for (e, env) in envs.iter().enumerate() {
        for i in 0..n {
            env.publish_json(&format!(
                r#"{{"targets":[{{"platform":"PLATFORM_FCM","token":"ok-{e}-{i}"}}]}}"#
            ))
            .await;
        }
    }
    let refs: Vec<&WorkerProcess> = workers.iter().collect();
    wait_total(
        &refs,
        "push_dispatch_messages_total",
        &[("result", "acked")],
        f64::from(2 * n),
    )
    .await;
    // The span of the sends, as the provider saw them. 20/s for the fleet
    // with one second of burst: the last of 100 cannot go before
    // (100 − 20) / 20 = 4 s. Two pods limited alone (20/s each, 50 each)
    // would be done in (50 − 20) / 20 = 1.5 s.
    let at: Vec<u64> = sandbox
        .deliveries()
        .iter()
        .map(|d| d.received_at_ms)
        .collect();
    let span = at.iter().max().copied().unwrap_or(0) - at.iter().min().copied().unwrap_or(0);
    assert!(
        span >= 3000,
        "100 sends took {span} ms across two workers: the fleet rate of 20/s was not shared"
    );
    assert_eq!(sandbox.deliveries().len(), 2 * n as usize);
}
