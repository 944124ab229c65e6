//! Idempotent requests (`dedup.window`, issue 16), in process: the real
//! [`Worker`] with stub providers and the in-process coordination backend
//! (the default of one replica), or a store that cannot be reached. The
//! Redis backend and two worker processes are tested end to end in
//! `tests/it/fleet.rs`.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use push_dispatch_config::{CircuitConfig, GuardConfig};
use push_dispatch_dispatch::stub::StubDispatcher;
use push_dispatch_feedback::Sender;
use push_dispatch_proto::v1::{Platform, PushRequest, Target};
use push_dispatch_proto::{Encoding, encode_message};
use push_dispatch_subscriber::pubsub::model::Message;
use push_dispatch_subscriber::wkt::Timestamp;
use push_dispatch_worker::coordinated::Coordinated;
use push_dispatch_worker::dedup::{Claim, Dedup, DedupStore, Final, Key, Unavailable};
use push_dispatch_worker::metrics::{Metrics, render};
use push_dispatch_worker::outbox::MemoryOutbox;
use push_dispatch_worker::plan::Policy;
use push_dispatch_worker::provider::{App, Provider, ProviderSettings};
use push_dispatch_worker::{MessageResult, Settle, Shutdown, Worker, WorkerSettings};

/// A store that cannot be reached.
#[derive(Debug)]
struct Down;

impl DedupStore for Down {
    fn claim<'a>(
        &'a self,
        _keys: &'a [Key<'a>],
        _pending: Duration,
    ) -> BoxFuture<'a, Result<Vec<Claim>, Unavailable>> {
        Box::pin(async { Err(Unavailable("connection refused".into())) })
    }

    fn record<'a>(
        &'a self,
        _finals: &'a [(Key<'a>, Final)],
        _window: Duration,
        _release: &'a [Key<'a>],
    ) -> BoxFuture<'a, Result<(), Unavailable>> {
        Box::pin(async { Err(Unavailable("connection refused".into())) })
    }
}

struct World {
    worker: Arc<Worker<MemoryOutbox>>,
    apns: Arc<StubDispatcher>,
    registry: Registry,
}

fn world(latency: Duration) -> World {
    world_with(latency, Arc::new(Coordinated::in_process(10_000)))
}

fn world_with(latency: Duration, store: Arc<dyn DedupStore>) -> World {
    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::new(&mut registry));
    let apns = Arc::new(StubDispatcher::new(Platform::Apns).with_latency(latency));
    let settings = ProviderSettings {
        sender: Sender::Apns {
            topic: "com.example.app".into(),
            environment: "sandbox".into(),
        },
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
        bulkhead: 16,
        max_parked: 16,
    };
    let app = App {
        name: "main".into(),
        apns: Some(Provider::new(
            "main",
            apns.clone(),
            settings,
            metrics.clone(),
        )),
        fcm: None,
    };
    let unavailable = Counter::default();
    registry.register(
        "dedup_unavailable",
        "messages sent without dedup",
        unavailable.clone(),
    );
    let worker = Worker::new(
        vec![app],
        MemoryOutbox::new(),
        WorkerSettings {
            policy: Policy {
                max_delivery_attempts: 5,
                max_republish: 5,
                max_park: Duration::from_secs(60),
                max_deferrals: 10,
            },
            max_in_process_wait: Duration::ZERO,
            concurrency: 16,
            results: true,
        },
        metrics,
        Shutdown::new(),
    )
    .with_dedup(Dedup::new(
        store,
        Duration::from_secs(24 * 3600),
        Duration::from_secs(30),
        unavailable,
    ));
    World {
        worker: Arc::new(worker),
        apns,
        registry,
    }
}

fn apns_token(prefix: &str) -> String {
    format!("{prefix}{}", &"0123456789abcdef".repeat(4)[prefix.len()..])
}

fn request(request_id: &str, tokens: &[String]) -> PushRequest {
    PushRequest {
        request_id: request_id.into(),
        targets: tokens
            .iter()
            .map(|t| Target {
                platform: Platform::Apns as i32,
                token: t.clone(),
            })
            .collect(),
        ..Default::default()
    }
}

fn message(id: &str, request: &PushRequest) -> Message {
    Message::new()
        .set_message_id(id)
        .set_data(encode_message(request, Encoding::Json).expect("encodes"))
        .set_publish_time(Timestamp::try_from(SystemTime::now()).expect("time"))
}

fn suppressed(w: &World, n: u32) -> bool {
    render(&w.registry).contains(&format!(
        r#"push_dispatch_sends_total{{platform="apns",app="main",outcome="duplicate_suppressed"}} {n}"#
    ))
}

#[tokio::test]
async fn a_request_published_twice_is_sent_once() {
    let w = world(Duration::ZERO);
    let req = request("order-1", &[apns_token("a1b2"), apns_token("dead")]);
    assert_eq!(
        w.worker.process(&message("m1", &req), Some(1)).await,
        Settle::Ack(MessageResult::Acked)
    );
    assert_eq!(w.apns.delivered(), 1);
    // The producer's retry: a second message with the same request.
    assert_eq!(
        w.worker.process(&message("m2", &req), Some(1)).await,
        Settle::Ack(MessageResult::Acked)
    );
    assert_eq!(w.apns.delivered(), 1, "not delivered twice");
    assert!(suppressed(&w, 2));
    // The dead token was recorded as reported: not reported twice either.
    assert_eq!(w.worker.outbox().published().feedback.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn two_copies_at_the_same_moment_send_once_and_the_other_is_carried_not_suppressed() {
    let w = world(Duration::from_millis(200));
    let req = request("order-2", &[apns_token("a1b2")]);
    let (a, b) = (message("m1", &req), message("m2", &req));
    let (wa, wb) = (w.worker.clone(), w.worker.clone());
    let first = tokio::spawn(async move { wa.process(&a, Some(1)).await });
    // Let the first claim before the second arrives.
    tokio::task::yield_now().await;
    let second = tokio::spawn(async move { wb.process(&b, Some(1)).await });
    assert_eq!(
        first.await.expect("task"),
        Settle::Ack(MessageResult::Acked)
    );
    // The second copy found a pending claim: carried forward as a wait (parked, then nacked).
    assert_eq!(second.await.expect("task"), Settle::Nack);
    assert_eq!(w.apns.delivered(), 1);
    assert!(render(&w.registry).contains(
        r#"push_dispatch_sends_total{platform="apns",app="main",outcome="claimed_elsewhere"} 1"#
    ));
    // Redelivered later, it is suppressed: the first copy delivered it.
    let again = message("m2", &req);
    assert_eq!(
        w.worker.process(&again, Some(2)).await,
        Settle::Ack(MessageResult::Acked)
    );
    assert_eq!(w.apns.delivered(), 1);
    assert!(suppressed(&w, 1));
}

#[tokio::test]
async fn a_retryable_failure_releases_the_claim_so_the_retry_is_sent() {
    let w = world(Duration::ZERO);
    let req = request("order-3", &[apns_token("0503")]);
    assert_eq!(
        w.worker.process(&message("m1", &req), Some(1)).await,
        Settle::Nack
    );
    // The claim was released: the redelivery is claimed and sent again (and
    // fails again), neither suppressed nor held as claimed elsewhere.
    assert_eq!(
        w.worker.process(&message("m1", &req), Some(2)).await,
        Settle::Nack
    );
    let m = render(&w.registry);
    assert!(
        m.contains(
            r#"push_dispatch_sends_total{platform="apns",app="main",outcome="retryable"} 2"#
        ),
        "{m}"
    );
    assert!(!suppressed(&w, 1));
    assert!(!m.contains(r#"outcome="claimed_elsewhere"} 1"#), "{m}");
}

#[tokio::test]
async fn without_a_request_id_or_with_the_store_down_nothing_is_held_back() {
    let w = world(Duration::ZERO);
    let anonymous = request("", &[apns_token("a1b2")]);
    for id in ["m1", "m2"] {
        w.worker.process(&message(id, &anonymous), Some(1)).await;
    }
    assert_eq!(w.apns.delivered(), 2, "no request_id: never deduplicated");
    let w = world_with(Duration::ZERO, Arc::new(Down));
    let req = request("order-4", &[apns_token("a1b2")]);
    for id in ["m3", "m4"] {
        assert_eq!(
            w.worker.process(&message(id, &req), Some(1)).await,
            Settle::Ack(MessageResult::Acked)
        );
    }
    assert_eq!(
        w.apns.delivered(),
        2,
        "sent without dedup while the store is down"
    );
    assert!(render(&w.registry).contains("dedup_unavailable_total 2"));
}
