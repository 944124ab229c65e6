//! One request followed through the logs, in process: every line written
//! while a message is handled carries its `request_id`, its `app` and its
//! message id, and a circuit opening or a guard tripping is one line with
//! the app, the platform and the numbers that decided it. The worker runs
//! with stub providers and the in-memory outbox under the Cloud Logging
//! formatter, its output captured.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use prometheus_client::registry::Registry;
use push_dispatch_config::{CircuitConfig, GuardConfig};
use push_dispatch_dispatch::stub::StubDispatcher;
use push_dispatch_feedback::Sender;
use push_dispatch_proto::v1::{Platform, PushRequest, Target};
use push_dispatch_proto::{Encoding, encode_message};
use push_dispatch_subscriber::pubsub::model::Message;
use push_dispatch_subscriber::wkt::Timestamp;
use push_dispatch_telemetry::capture::Capture;
use push_dispatch_telemetry::logging::CloudLogging;
use push_dispatch_worker::metrics::Metrics;
use push_dispatch_worker::outbox::MemoryOutbox;
use push_dispatch_worker::plan::Policy;
use push_dispatch_worker::provider::{App, Provider, ProviderSettings};
use push_dispatch_worker::{Shutdown, Worker, WorkerSettings};
use serde_json::Value;
use tracing_subscriber::layer::SubscriberExt;

fn worker() -> Worker<MemoryOutbox> {
    let metrics = Arc::new(Metrics::new(&mut Registry::default()));
    let settings = |sender| ProviderSettings {
        sender,
        rate_limit: None,
        circuit: CircuitConfig {
            failure_ratio: 0.5,
            min_requests: 2,
            open_for: Duration::from_secs(30),
        },
        guard: GuardConfig {
            ratio: 0.5,
            min_samples: 2,
            window: Duration::from_secs(60),
        },
        bulkhead: 8,
        max_parked: 4,
    };
    let apns = Provider::new(
        "shop",
        Arc::new(StubDispatcher::new(Platform::Apns)),
        settings(Sender::Apns {
            topic: "com.example.shop".into(),
            environment: "production".into(),
        }),
        metrics.clone(),
    );
    let fcm = Provider::new(
        "shop",
        Arc::new(StubDispatcher::new(Platform::Fcm)),
        settings(Sender::Fcm {
            project: "shop-firebase".into(),
        }),
        metrics.clone(),
    );
    Worker::new(
        vec![App {
            name: "shop".into(),
            apns: Some(apns),
            fcm: Some(fcm),
        }],
        MemoryOutbox::new(),
        WorkerSettings {
            policy: Policy {
                max_delivery_attempts: 5,
                max_republish: 3,
                max_park: Duration::from_secs(60),
                max_deferrals: 10,
            },
            max_in_process_wait: Duration::ZERO,
            concurrency: 16,
            results: false,
        },
        metrics,
        Shutdown::new(),
    )
}

fn message(id: &str, request_id: &str, targets: &[(Platform, &str)]) -> Message {
    let request = PushRequest {
        request_id: request_id.into(),
        app: "shop".into(),
        targets: targets
            .iter()
            .map(|(p, t)| Target {
                platform: *p as i32,
                token: t.to_string(),
            })
            .collect(),
        ..Default::default()
    };
    Message::new()
        .set_message_id(id)
        .set_data(encode_message(&request, Encoding::Json).expect("encodes"))
        .set_publish_time(Timestamp::try_from(SystemTime::now()).expect("time"))
}

#[tokio::test]
async fn every_line_of_a_failing_request_carries_its_request_id_and_app() {
    let capture = Capture::default();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_subscriber::filter::LevelFilter::DEBUG)
        .with(
            tracing_subscriber::fmt::layer()
                .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
                .event_format(CloudLogging::new("p"))
                .with_writer(capture.clone()),
        );
    let _default = tracing::subscriber::set_default(subscriber);
    let worker = worker();
    let failing = format!("0500{}", "ab".repeat(30));
    // Provider failures: the first message is nacked, the second (on its
    // last attempt) dead-lettered; the circuit opens after two failures.
    for (id, attempt) in [("m-1", 1), ("m-2", 5)] {
        let m = message(
            id,
            "order-42",
            &[(Platform::Apns, &failing), (Platform::Fcm, "mismatch-1")],
        );
        worker.process(&m, Some(attempt)).await;
    }
    let lines = capture.json_lines().unwrap_or_else(|e| panic!("{e}"));
    let ours: Vec<&Value> = lines
        .iter()
        .filter(|l| l["messaging.message.id"].is_string())
        .collect();
    assert!(
        ours.len() >= 6,
        "decoded, sent ×2, circuit, guard, dead letter…: {lines:#?}"
    );
    for line in &ours {
        assert_eq!(line["request_id"], "order-42", "{line}");
        assert_eq!(line["app"], "shop", "{line}");
    }
    assert_eq!(
        ours.len(),
        lines.len(),
        "no line of the message's handling lacks its span: {lines:#?}"
    );
    let circuit = lines
        .iter()
        .find(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("circuit opened"))
        })
        .unwrap_or_else(|| panic!("no circuit line: {lines:#?}"));
    assert_eq!(circuit["platform"], "apns");
    assert_eq!(
        (circuit["requests"].as_u64(), circuit["failures"].as_u64()),
        (Some(2), Some(2))
    );
    assert_eq!(circuit["failure_ratio"], 0.5);
    let guard = lines
        .iter()
        .find(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("invalidation guard tripped"))
        })
        .unwrap_or_else(|| panic!("no guard line: {lines:#?}"));
    assert_eq!(guard["platform"], "fcm");
    assert_eq!(
        (guard["sends"].as_u64(), guard["suspicious"].as_u64()),
        (Some(2), Some(2))
    );
    assert_eq!(guard["app"], "shop");
}
