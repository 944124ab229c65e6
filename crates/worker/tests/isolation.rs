//! Provider isolation and waits, in process (issue 13): the real
//! [`Worker`] with several apps, stub providers and providers that hang or
//! are stuck in a backoff, the in-memory Outbox, no Pub/Sub, no network.
//!
//! - a provider that never answers holds only its bulkhead: another app's
//!   targets on both platforms are delivered meanwhile;
//! - a stuck provider (connections or credential in a failure backoff) is
//!   handed back without queueing for a send slot;
//! - a Retry-After is honoured across a redelivery (the message is parked,
//!   then nacked) and across a republish (`push_not_before`), and a wait
//!   uses up no attempt (`push_deferrals`);
//! - a parked message is handed back at once on drain;
//! - `ttl: 0` is now or never.
//!
//! Waits run on tokio's paused clock where the test has no I/O, so a 30 s
//! Retry-After costs nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use prometheus_client::registry::Registry;
use push_dispatch_config::{CircuitConfig, GuardConfig};
use push_dispatch_dispatch::stub::StubDispatcher;
use push_dispatch_dispatch::{Dispatcher, Outcome, Push, RetryCause};
use push_dispatch_feedback::Sender;
use push_dispatch_proto::attributes as attr;
use push_dispatch_proto::v1::{Platform, PushRequest, Target};
use push_dispatch_proto::{Encoding, encode_message};
use push_dispatch_subscriber::pubsub::model::Message;
use push_dispatch_subscriber::wkt::Timestamp;
use push_dispatch_worker::metrics::{Metrics, render};
use push_dispatch_worker::outbox::MemoryOutbox;
use push_dispatch_worker::plan::Policy;
use push_dispatch_worker::provider::{App, Provider, ProviderSettings};
use push_dispatch_worker::{MessageResult, Settle, Shutdown, Worker, WorkerSettings};

const POLICY: Policy = Policy {
    max_delivery_attempts: 5,
    max_republish: 3,
    max_park: Duration::from_secs(60),
    max_deferrals: 10,
};

/// A provider that accepts every request and never answers (a black hole):
/// each send waits until the worker gives up on it (drain) or an hour.
#[derive(Debug, Default)]
struct BlackHole {
    in_flight: AtomicUsize,
    most: AtomicUsize,
    calls: AtomicUsize,
}

#[async_trait::async_trait]
impl Dispatcher for BlackHole {
    fn platform(&self) -> Platform {
        Platform::Apns
    }

    async fn send(&self, push: Push<'_>) -> Outcome {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
        let hang = tokio::time::sleep(Duration::from_secs(3600));
        match push.give_up {
            Some(give_up) => tokio::select! {
                () = hang => {}
                () = give_up.cancelled() => {}
            },
            None => hang.await,
        }
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        Outcome::Retryable {
            after: None,
            cause: RetryCause::Timeout,
        }
    }
}

/// A provider whose connections are all in a failure backoff.
#[derive(Debug, Default)]
struct Stuck {
    calls: AtomicUsize,
}

#[async_trait::async_trait]
impl Dispatcher for Stuck {
    fn platform(&self) -> Platform {
        Platform::Apns
    }

    fn backoff(&self) -> Option<Duration> {
        Some(Duration::from_secs(4))
    }

    async fn send(&self, _push: Push<'_>) -> Outcome {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Outcome::Retryable {
            after: None,
            cause: RetryCause::Connect {
                problem: "in backoff".into(),
            },
        }
    }
}

struct Fleet {
    worker: Arc<Worker<MemoryOutbox>>,
    shutdown: Shutdown,
    registry: Registry,
    apns: Arc<StubDispatcher>,
    fcm: Arc<StubDispatcher>,
}

fn settings(sender: Sender, bulkhead: usize) -> ProviderSettings {
    ProviderSettings {
        sender,
        rate_limit: None,
        circuit: CircuitConfig {
            failure_ratio: 0.5,
            min_requests: 1000,
            open_for: Duration::from_secs(30),
        },
        guard: GuardConfig {
            ratio: 0.5,
            min_samples: 1000,
            window: Duration::from_secs(60),
        },
        bulkhead,
        max_parked: 2,
    }
}

fn apns_sender() -> Sender {
    Sender::Apns {
        topic: "com.example.app".into(),
        environment: "sandbox".into(),
    }
}

/// App `healthy` (APNs and FCM stubs) and app `broken` (APNs through
/// `broken`), `concurrency` sends process-wide, bulkheads of `bulkhead`.
fn fleet(broken: Arc<dyn Dispatcher>, concurrency: usize, bulkhead: usize) -> Fleet {
    fleet_with(broken, concurrency, bulkhead, None)
}

fn fleet_with(
    broken: Arc<dyn Dispatcher>,
    concurrency: usize,
    bulkhead: usize,
    fcm_rate: Option<f64>,
) -> Fleet {
    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::new(&mut registry));
    let apns = Arc::new(StubDispatcher::new(Platform::Apns));
    let fcm = Arc::new(StubDispatcher::new(Platform::Fcm));
    let healthy = App {
        name: "healthy".into(),
        apns: Some(Provider::new(
            "healthy",
            apns.clone(),
            settings(apns_sender(), bulkhead),
            metrics.clone(),
        )),
        fcm: Some(Provider::new(
            "healthy",
            fcm.clone(),
            ProviderSettings {
                rate_limit: fcm_rate,
                ..settings(
                    Sender::Fcm {
                        project: "example-project".into(),
                    },
                    bulkhead,
                )
            },
            metrics.clone(),
        )),
    };
    let broken = App {
        name: "broken".into(),
        apns: Some(Provider::new(
            "broken",
            broken,
            settings(apns_sender(), bulkhead),
            metrics.clone(),
        )),
        fcm: None,
    };
    let shutdown = Shutdown::new();
    let worker = Worker::new(
        vec![healthy, broken],
        MemoryOutbox::new(),
        WorkerSettings {
            policy: POLICY,
            max_in_process_wait: Duration::ZERO,
            concurrency,
            results: false,
        },
        metrics,
        shutdown.clone(),
    );
    Fleet {
        worker: Arc::new(worker),
        shutdown,
        registry,
        apns,
        fcm,
    }
}

fn apns_token(prefix: &str) -> String {
    format!("{prefix}{}", &"0123456789abcdef".repeat(4)[prefix.len()..])
}

fn request(app: &str, targets: &[(Platform, &str)]) -> PushRequest {
    PushRequest {
        request_id: format!("req-{app}"),
        app: app.into(),
        targets: targets
            .iter()
            .map(|(p, t)| Target {
                platform: *p as i32,
                token: t.to_string(),
            })
            .collect(),
        ..Default::default()
    }
}

fn message(id: &str, request: &PushRequest, attributes: &[(&str, String)]) -> Message {
    Message::new()
        .set_message_id(id)
        .set_data(encode_message(request, Encoding::Json).expect("encodes"))
        .set_publish_time(Timestamp::try_from(SystemTime::now()).expect("time"))
        .set_attributes(attributes.iter().map(|(k, v)| (k.to_string(), v.clone())))
}

fn as_message(id: &str, out: &push_dispatch_worker::letters::Outgoing) -> Message {
    Message::new()
        .set_message_id(id)
        .set_data(out.data.clone())
        .set_publish_time(Timestamp::try_from(SystemTime::now()).expect("time"))
        .set_attributes(out.attributes.clone())
}

fn rfc3339(t: SystemTime) -> String {
    String::from(Timestamp::try_from(t).expect("time"))
}

fn parse_time(v: &str) -> SystemTime {
    Timestamp::try_from(v)
        .ok()
        .and_then(|t| SystemTime::try_from(t).ok())
        .expect("an RFC 3339 time")
}

/// Polls `check` until it holds or 10 s pass.
async fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_provider_that_never_answers_holds_only_its_bulkhead_and_other_apps_deliver() {
    let hole = Arc::new(BlackHole::default());
    let f = fleet(hole.clone(), 16, 8);
    // 40 messages to the black hole, more than the whole process's 16 send slots.
    let mut stuck = tokio::task::JoinSet::new();
    for i in 0..40 {
        let w = f.worker.clone();
        let m = message(
            &format!("b{i}"),
            &request(
                "broken",
                &[(Platform::Apns, &apns_token(&format!("{i:04x}")))],
            ),
            &[],
        );
        stuck.spawn(async move { w.process(&m, Some(1)).await });
    }
    eventually("the black hole holds its bulkhead", || {
        hole.in_flight.load(Ordering::SeqCst) == 8
    })
    .await;
    // The healthy app's targets on both platforms go through at once.
    let healthy = message(
        "h1",
        &request(
            "healthy",
            &[
                (Platform::Apns, &apns_token("ab12")),
                (Platform::Fcm, "fcm-token-1"),
            ],
        ),
        &[],
    );
    let settled = tokio::time::timeout(Duration::from_secs(5), f.worker.process(&healthy, Some(1)))
        .await
        .expect("the healthy app is not stalled by the black hole");
    assert_eq!(settled, Settle::Ack(MessageResult::Acked));
    assert_eq!(f.apns.delivered() + f.fcm.delivered(), 2);
    assert_eq!(
        hole.most.load(Ordering::SeqCst),
        8,
        "the black hole never held more than its bulkhead"
    );
    // Draining ends the hung sends; every stuck message is handed back.
    f.shutdown.drain();
    while let Some(done) = stuck.join_next().await {
        assert_eq!(done.expect("task"), Settle::Nack);
    }
}

#[tokio::test(start_paused = true)]
async fn a_stuck_provider_is_handed_back_without_queueing_and_not_before_its_backoff() {
    let stuck = Arc::new(Stuck::default());
    let f = fleet(stuck.clone(), 4, 4);
    let m = message(
        "s1",
        &request("broken", &[(Platform::Apns, &apns_token("ab12"))]),
        &[],
    );
    let started = tokio::time::Instant::now();
    assert_eq!(f.worker.process(&m, Some(1)).await, Settle::Nack);
    assert_eq!(
        stuck.calls.load(Ordering::SeqCst),
        0,
        "nothing queued or sent"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "parked for the backoff: {:?}",
        started.elapsed()
    );
    assert!(render(&f.registry).contains(
        r#"push_dispatch_sends_total{platform="apns",app="broken",outcome="provider_backoff"} 1"#
    ));
}

#[tokio::test(start_paused = true)]
async fn a_retry_after_is_honoured_across_a_redelivery() {
    let f = fleet(Arc::new(BlackHole::default()), 16, 8);
    // FCM answers 429 QUOTA_EXCEEDED with Retry-After: 30.
    let m = message(
        "q1",
        &request("healthy", &[(Platform::Fcm, "quota-1")]),
        &[],
    );
    let started = tokio::time::Instant::now();
    assert_eq!(f.worker.process(&m, Some(1)).await, Settle::Nack);
    assert!(
        started.elapsed() >= Duration::from_secs(30),
        "parked for the Retry-After before the nack: {:?}",
        started.elapsed()
    );
    assert!(render(&f.registry).contains("push_dispatch_parked_messages 0"));
}

#[tokio::test(start_paused = true)]
async fn a_retry_after_is_honoured_across_a_republish_and_uses_up_no_attempt() {
    let f = fleet(Arc::new(BlackHole::default()), 16, 8);
    let m = message(
        "q2",
        &request(
            "healthy",
            &[
                (Platform::Apns, &apns_token("ab12")),
                (Platform::Fcm, "quota-2"),
            ],
        ),
        &[],
    );
    let before = SystemTime::now();
    assert_eq!(
        f.worker.process(&m, Some(1)).await,
        Settle::Ack(MessageResult::Republished)
    );
    let out = f.worker.outbox().published().republished[0].clone();
    let not_before = parse_time(&out.attributes[attr::NOT_BEFORE]);
    let ahead = not_before.duration_since(before).expect("later");
    assert!(
        ahead >= Duration::from_secs(29) && ahead <= Duration::from_secs(32),
        "{ahead:?}"
    );
    assert_eq!(
        out.attributes[attr::PUSH_ATTEMPT],
        "1",
        "a wait is no failure"
    );
    assert_eq!(out.attributes[attr::DEFERRALS], "1");

    // The republished remainder is not sent before push_not_before.
    // Sent again only after it (and still told to wait: parked again, nacked).
    let started = tokio::time::Instant::now();
    let again = as_message("q2-again", &out);
    assert_eq!(f.worker.process(&again, Some(1)).await, Settle::Nack);
    assert!(
        started.elapsed() >= Duration::from_secs(59),
        "waited for push_not_before, then for the new Retry-After: {:?}",
        started.elapsed()
    );
    assert!(render(&f.registry).contains(
        r#"push_dispatch_sends_total{platform="fcm",app="healthy",outcome="retryable"} 2"#
    ));
}

#[tokio::test(start_paused = true)]
async fn a_not_before_beyond_max_park_is_handed_back_and_put_off_on_the_last_attempt() {
    let f = fleet(Arc::new(BlackHole::default()), 16, 8);
    let later = SystemTime::now() + Duration::from_secs(600);
    let m = message(
        "n1",
        &request("healthy", &[(Platform::Apns, &apns_token("ab12"))]),
        &[(attr::NOT_BEFORE, rfc3339(later))],
    );
    let started = tokio::time::Instant::now();
    assert_eq!(f.worker.process(&m, Some(1)).await, Settle::Nack);
    assert!(started.elapsed() < Duration::from_secs(1), "not parked");
    assert_eq!(f.apns.delivered(), 0);
    // On the last delivery attempt it is put off, never dead-lettered for a wait.
    assert_eq!(
        f.worker.process(&m, Some(5)).await,
        Settle::Ack(MessageResult::Republished)
    );
    let p = f.worker.outbox().published();
    assert!(p.dead_letters.is_empty());
    let out = &p.republished[0];
    assert_eq!(out.attributes[attr::DEFERRALS], "1");
    let kept = parse_time(&out.attributes[attr::NOT_BEFORE]);
    let drift = kept.duration_since(later).unwrap_or_else(|e| e.duration());
    assert!(drift < Duration::from_secs(2), "{drift:?}");
}

#[tokio::test]
async fn a_parked_message_is_handed_back_at_once_on_drain() {
    let f = fleet(Arc::new(BlackHole::default()), 16, 8);
    let w = f.worker.clone();
    let m = message(
        "p1",
        &request("healthy", &[(Platform::Fcm, "quota-3")]),
        &[],
    );
    let parked = tokio::spawn(async move { w.process(&m, Some(1)).await });
    eventually("the message is parked", || {
        render(&f.registry).contains("push_dispatch_parked_messages 1")
    })
    .await;
    let started = tokio::time::Instant::now();
    f.shutdown.drain();
    assert_eq!(parked.await.expect("task"), Settle::Nack);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn ttl_zero_is_now_or_never() {
    let f = fleet(Arc::new(BlackHole::default()), 16, 8);
    let mut now_or_never = request(
        "healthy",
        &[
            (Platform::Apns, &apns_token("ab12")),
            (Platform::Apns, &apns_token("0503")),
        ],
    );
    now_or_never.ttl = Some(push_dispatch_proto::pbjson_types::Duration {
        seconds: 0,
        nanos: 0,
    });
    // The failing target is expired, not carried forward.
    let m = message("z1", &now_or_never, &[]);
    assert_eq!(
        f.worker.process(&m, Some(1)).await,
        Settle::Ack(MessageResult::Acked)
    );
    let p = f.worker.outbox().published();
    assert!(p.republished.is_empty() && p.dead_letters.is_empty());
    assert!(render(&f.registry).contains(
        r#"push_dispatch_sends_total{platform="apns",app="healthy",outcome="expired"} 1"#
    ));
    // Delivered again (a redelivery), it is not sent at all.
    let delivered = f.apns.delivered();
    assert_eq!(
        f.worker.process(&m, Some(2)).await,
        Settle::Ack(MessageResult::Expired)
    );
    assert_eq!(f.apns.delivered(), delivered);
}

#[tokio::test(start_paused = true)]
async fn a_project_quota_halves_the_pods_fcm_rate_and_a_device_quota_does_not() {
    let f = fleet_with(Arc::new(BlackHole::default()), 16, 8, Some(100.0));
    let gauge = |r: &Registry| {
        let text = render(r);
        text.lines()
            .find(|l| {
                l.starts_with("push_dispatch_send_rate_limit{")
                    && l.contains(r#"platform="fcm""#)
                    && l.contains(r#"app="healthy""#)
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .expect("the gauge")
    };
    assert_eq!(gauge(&f.registry), 100.0);
    let device = message(
        "d1",
        &request("healthy", &[(Platform::Fcm, "quota-device-1")]),
        &[],
    );
    f.worker.process(&device, Some(1)).await;
    assert_eq!(
        gauge(&f.registry),
        100.0,
        "one device's quota is not the project's"
    );
    let project = message(
        "p1",
        &request("healthy", &[(Platform::Fcm, "quota-1")]),
        &[],
    );
    f.worker.process(&project, Some(1)).await;
    assert_eq!(gauge(&f.registry), 50.0, "halved (AIMD)");
}

#[tokio::test]
async fn a_push_attempt_above_max_republish_is_dead_lettered_with_the_reason() {
    let f = fleet(Arc::new(BlackHole::default()), 16, 8);
    let m = message(
        "a1",
        &request("healthy", &[(Platform::Apns, &apns_token("ab12"))]),
        &[(attr::PUSH_ATTEMPT, "99999999999999999999".to_string())],
    );
    assert_eq!(
        f.worker.process(&m, Some(1)).await,
        Settle::Ack(MessageResult::DeadLettered)
    );
    assert_eq!(f.apns.delivered(), 0);
    let dl = &f.worker.outbox().published().dead_letters[0];
    assert_eq!(dl.attributes[attr::PUSH_ERROR], "retries_exhausted");
    assert!(
        dl.attributes[attr::PUSH_ERROR_DETAIL]
            .contains("push_attempt 4294967295 is above dispatch.max_republish 3"),
        "{}",
        dl.attributes[attr::PUSH_ERROR_DETAIL]
    );
}
