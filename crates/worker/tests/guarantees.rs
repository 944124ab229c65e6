//! Every processing guarantee of SPEC §5, in process: the real [`Worker`]
//! with in-process stub providers (the sandbox's token script) and the
//! in-memory Outbox, no Pub/Sub and no network. Each test is named after
//! its guarantee and runs in milliseconds; the end-to-end tests in the
//! root `tests/` show the same through the emulator and the real binary.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use prometheus_client::registry::Registry;
use push_dispatch_config::{CircuitConfig, GuardConfig};
use push_dispatch_dispatch::stub::StubDispatcher;
use push_dispatch_feedback::Sender;
use push_dispatch_proto::attributes as attr;
use push_dispatch_proto::v1::{Platform, PushRequest, PushResult, Reason, Target, TargetOutcome};
use push_dispatch_proto::{Encoding, decode_request, encode_message};
use push_dispatch_subscriber::pubsub::model::Message;
use push_dispatch_subscriber::wkt::Timestamp;
use push_dispatch_worker::labels::PublishPurpose;
use push_dispatch_worker::metrics::{Metrics, render};
use push_dispatch_worker::outbox::MemoryOutbox;
use push_dispatch_worker::plan::Policy;
use push_dispatch_worker::provider::{App, Provider, ProviderSettings};
use push_dispatch_worker::{MessageResult, Settle, Shutdown, Worker, WorkerSettings};

/// A 64-hex APNs token with a scripted prefix (`dead`, `bad0`, `0503`, …).
fn apns_token(prefix: &str) -> String {
    format!("{prefix}{}", &"0123456789abcdef".repeat(4)[prefix.len()..])
}

/// One worker with one app (`main`, APNs and FCM stubs) and its outbox.
struct Harness {
    worker: Worker<MemoryOutbox>,
    apns: Arc<StubDispatcher>,
    fcm: Arc<StubDispatcher>,
    shutdown: Shutdown,
    registry: Registry,
    next_id: std::cell::Cell<u32>,
}

/// What a test may change.
struct Options {
    max_in_process_wait: Duration,
    circuit: CircuitConfig,
    guard: GuardConfig,
    /// `results.topic` set.
    results: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_in_process_wait: Duration::ZERO,
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
            results: false,
        }
    }
}

const POLICY: Policy = Policy {
    max_delivery_attempts: 5,
    max_republish: 3,
    max_park: Duration::from_secs(60),
    max_deferrals: 10,
};

impl Harness {
    fn new() -> Harness {
        Harness::with(Options::default())
    }

    fn with(options: Options) -> Harness {
        let mut registry = Registry::default();
        let metrics = Arc::new(Metrics::new(&mut registry));
        let apns = Arc::new(StubDispatcher::new(Platform::Apns));
        let fcm = Arc::new(StubDispatcher::new(Platform::Fcm));
        let settings = |sender| ProviderSettings {
            sender,
            rate_limit: None,
            circuit: options.circuit.clone(),
            guard: options.guard.clone(),
            bulkhead: 16,
            max_parked: 4,
        };
        let app = App {
            name: "main".into(),
            apns: Some(Provider::new(
                "main",
                apns.clone(),
                settings(Sender::Apns {
                    topic: "com.example.app".into(),
                    environment: "sandbox".into(),
                }),
                metrics.clone(),
            )),
            fcm: Some(Provider::new(
                "main",
                fcm.clone(),
                settings(Sender::Fcm {
                    project: "example-project".into(),
                }),
                metrics.clone(),
            )),
        };
        let shutdown = Shutdown::new();
        let worker = Worker::new(
            vec![app],
            MemoryOutbox::new(),
            WorkerSettings {
                policy: POLICY,
                max_in_process_wait: options.max_in_process_wait,
                concurrency: 64,
                results: options.results,
            },
            metrics,
            shutdown.clone(),
        );
        Harness {
            worker,
            apns,
            fcm,
            shutdown,
            registry,
            next_id: std::cell::Cell::new(0),
        }
    }

    /// A JSON message holding `request`, published now.
    fn message(&self, request: &PushRequest) -> Message {
        self.message_with(request, SystemTime::now(), &[])
    }

    fn message_with(
        &self,
        request: &PushRequest,
        published: SystemTime,
        attributes: &[(&str, &str)],
    ) -> Message {
        let body = encode_message(request, Encoding::Json).expect("encodes");
        self.raw(body, published, attributes)
    }

    fn raw(&self, body: Vec<u8>, published: SystemTime, attributes: &[(&str, &str)]) -> Message {
        self.next_id.set(self.next_id.get() + 1);
        Message::new()
            .set_message_id(format!("m{}", self.next_id.get()))
            .set_data(body)
            .set_publish_time(Timestamp::try_from(published).expect("time"))
            .set_attributes(
                attributes
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string())),
            )
    }

    async fn process(&self, message: &Message, attempt: i32) -> Settle {
        self.worker.process(message, Some(attempt)).await
    }

    fn published(&self) -> push_dispatch_worker::outbox::Published {
        self.worker.outbox().published()
    }

    fn metrics(&self) -> String {
        render(&self.registry)
    }

    fn delivered(&self) -> u64 {
        self.apns.delivered() + self.fcm.delivered()
    }
}

fn request(targets: &[(Platform, &str)]) -> PushRequest {
    PushRequest {
        request_id: "order-42".into(),
        recipient: "user-7".into(),
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

fn tokens(body: &[u8], attributes: &HashMap<String, String>) -> Vec<String> {
    decode_request(body, attributes)
        .expect("a request")
        .targets
        .into_iter()
        .map(|t| t.token)
        .collect()
}

#[tokio::test]
async fn nothing_is_lost_every_target_ends_delivered_reported_dead_lettered_or_carried() {
    let h = Harness::new();
    let (ok, dead, failing) = (apns_token("ab12"), "unregistered-1", apns_token("0503"));
    let req = request(&[
        (Platform::Apns, &ok),
        (Platform::Fcm, dead),
        (Platform::Apns, "not-hex"),
        (Platform::Apns, &failing),
    ]);
    let settle = h.process(&h.message(&req), 1).await;
    assert_eq!(settle, Settle::Ack(MessageResult::Republished));
    let p = h.published();
    assert_eq!(h.delivered(), 1, "the good token");
    assert_eq!(p.feedback.len(), 1);
    assert_eq!(p.feedback[0].token, dead);
    assert_eq!(p.dead_letters.len(), 1);
    let dl = &p.dead_letters[0];
    assert_eq!(dl.attributes[attr::PUSH_ERROR], "malformed_token");
    assert_eq!(tokens(&dl.data, &dl.attributes), vec!["not-hex"]);
    assert_eq!(p.republished.len(), 1);
    let re = &p.republished[0];
    assert_eq!(tokens(&re.data, &re.attributes), vec![failing]);
}

#[tokio::test]
async fn poison_goes_to_the_dead_letter_topic_at_once_with_its_reason() {
    let h = Harness::new();
    let garbage = h.raw(b"{not json".to_vec(), SystemTime::now(), &[("trace", "t1")]);
    assert_eq!(
        h.process(&garbage, 1).await,
        Settle::Ack(MessageResult::DeadLettered)
    );
    let unknown_app = PushRequest {
        app: "nope".into(),
        ..request(&[(Platform::Fcm, "tok")])
    };
    let no_targets = request(&[]);
    for m in [h.message(&unknown_app), h.message(&no_targets)] {
        assert_eq!(
            h.process(&m, 1).await,
            Settle::Ack(MessageResult::DeadLettered)
        );
    }
    let p = h.published();
    let codes: Vec<&str> = p
        .dead_letters
        .iter()
        .map(|d| d.attributes[attr::PUSH_ERROR].as_str())
        .collect();
    assert_eq!(codes, vec!["decode_json", "unknown_app", "no_targets"]);
    let first = &p.dead_letters[0];
    assert_eq!(first.data, b"{not json", "the original bytes");
    assert_eq!(first.attributes[attr::SOURCE_MESSAGE_ID], "m1");
    assert_eq!(first.attributes["trace"], "t1", "producer attributes kept");
    assert!(first.attributes[attr::PUSH_ERROR_DETAIL].contains("proto3 JSON"));
    assert_eq!(h.delivered(), 0);

    // If that publish is not confirmed: nack, the DeadLetterPolicy catches it.
    h.worker.outbox().refuse(PublishPurpose::DeadLetter);
    assert_eq!(h.process(&garbage, 2).await, Settle::Nack);
}

#[tokio::test]
async fn an_invalid_target_alone_is_dead_lettered_and_its_siblings_are_sent() {
    let h = Harness::new();
    let ok = apns_token("ab12");
    let req = request(&[(Platform::Apns, &ok), (Platform::Unspecified, "x")]);
    assert_eq!(
        h.process(&h.message(&req), 1).await,
        Settle::Ack(MessageResult::Acked)
    );
    assert_eq!(h.delivered(), 1);
    let p = h.published();
    assert_eq!(p.dead_letters.len(), 1);
    assert_eq!(
        p.dead_letters[0].attributes[attr::PUSH_ERROR],
        "unspecified_platform"
    );
}

#[tokio::test]
async fn transient_failures_are_retried_in_process_within_the_wait_budget() {
    let h = Harness::with(Options {
        max_in_process_wait: Duration::from_secs(5),
        ..Options::default()
    });
    // 503 twice, then 200: retried in process, never handed back.
    let req = request(&[
        (Platform::Fcm, "flaky-1"),
        (Platform::Apns, &apns_token("f1a0")),
    ]);
    assert_eq!(
        h.process(&h.message(&req), 1).await,
        Settle::Ack(MessageResult::Acked)
    );
    assert_eq!(h.delivered(), 2);
    assert!(h.published().republished.is_empty());
}

#[tokio::test]
async fn transient_failures_are_nacked_and_dead_lettered_with_a_reason_on_the_last_attempt() {
    let h = Harness::new();
    let req = request(&[
        (Platform::Apns, &apns_token("0503")),
        (Platform::Fcm, "unavailable-1"),
    ]);
    let m = h.message(&req);
    assert_eq!(h.process(&m, 4).await, Settle::Nack);
    assert!(h.published().dead_letters.is_empty());
    assert_eq!(
        h.process(&m, 5).await,
        Settle::Ack(MessageResult::DeadLettered)
    );
    let p = h.published();
    assert_eq!(
        p.dead_letters[0].attributes[attr::PUSH_ERROR],
        "retries_exhausted"
    );
    assert_eq!(p.dead_letters[0].attributes[attr::DELIVERY_ATTEMPT], "5");
}

#[tokio::test]
async fn a_delivered_target_is_not_sent_again_because_a_sibling_failed() {
    let h = Harness::new();
    let (ok, failing) = (apns_token("ab12"), apns_token("0503"));
    let req = request(&[(Platform::Apns, &ok), (Platform::Apns, &failing)]);
    let first = h.message(&req);
    assert_eq!(
        h.process(&first, 1).await,
        Settle::Ack(MessageResult::Republished)
    );
    let re = h.published().republished[0].clone();
    assert_eq!(re.attributes[attr::PUSH_ATTEMPT], "2");
    assert_eq!(re.attributes[attr::SOURCE_MESSAGE_ID], "m1");
    assert!(re.attributes.contains_key(attr::FIRST_PUBLISH_TIME));
    // The remainder, received as a new message, holds only the failing target.
    let attrs: Vec<(&str, &str)> = re
        .attributes
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let second = h.raw(re.data.clone(), SystemTime::now(), &attrs);
    assert_eq!(h.process(&second, 1).await, Settle::Nack, "nothing final");
    assert_eq!(h.delivered(), 1, "the delivered target was sent once");

    // Past dispatch.max_republish, what is left is dead-lettered.
    let last = h.message_with(&req, SystemTime::now(), &[(attr::PUSH_ATTEMPT, "3")]);
    assert_eq!(h.process(&last, 1).await, Settle::Ack(MessageResult::Acked));
    let p = h.published();
    let dl = p.dead_letters.last().expect("a dead letter");
    assert_eq!(dl.attributes[attr::PUSH_ERROR], "retries_exhausted");
    assert_eq!(tokens(&dl.data, &dl.attributes), vec![failing]);
}

#[tokio::test]
async fn an_unconfirmed_republish_is_nacked_and_counted_as_a_duplicate_risk() {
    let h = Harness::new();
    h.worker.outbox().refuse(PublishPurpose::Republish);
    let req = request(&[
        (Platform::Apns, &apns_token("ab12")),
        (Platform::Apns, &apns_token("0503")),
    ]);
    let m = h.message(&req);
    assert_eq!(h.process(&m, 1).await, Settle::Nack);
    assert!(
        h.metrics()
            .contains(r#"push_dispatch_duplicate_risk_total{window="republish_failed"} 1"#),
        "{}",
        h.metrics()
    );
    // On the last attempt the remainder is dead-lettered instead of nacked.
    assert_eq!(h.process(&m, 5).await, Settle::Ack(MessageResult::Acked));
    let p = h.published();
    assert_eq!(
        p.dead_letters[0].attributes[attr::PUSH_ERROR],
        "retries_exhausted"
    );
}

#[tokio::test]
async fn feedback_is_confirmed_before_the_ack() {
    let h = Harness::new();
    let req = request(&[
        (Platform::Apns, &apns_token("dead")),
        (Platform::Apns, &apns_token("ab12")),
    ]);
    let m = h.message(&req);
    assert_eq!(h.process(&m, 1).await, Settle::Ack(MessageResult::Acked));
    let event = &h.published().feedback[0];
    assert_eq!(event.reason(), Reason::Unregistered);
    assert_eq!(
        (event.request_id.as_str(), event.recipient.as_str()),
        ("order-42", "user-7")
    );
    assert_eq!(event.apns_topic, "com.example.app");
    assert_eq!(event.source_message_id, "m1");

    // Unconfirmed: the dead token is carried forward, never the delivered one.
    h.worker.outbox().refuse(PublishPurpose::Feedback);
    assert_eq!(
        h.process(&h.message(&req), 1).await,
        Settle::Ack(MessageResult::Republished)
    );
    let re = &h.published().republished[0];
    assert_eq!(tokens(&re.data, &re.attributes), vec![apns_token("dead")]);
    // Only dead tokens and no confirmation: nothing is final, nack.
    let only_dead = request(&[(Platform::Fcm, "unregistered-2")]);
    assert_eq!(h.process(&h.message(&only_dead), 1).await, Settle::Nack);
}

#[tokio::test]
async fn expired_requests_are_not_sent_and_are_counted() {
    let h = Harness::new();
    let mut req = request(&[(Platform::Apns, &apns_token("ab12"))]);
    req.ttl = Some(push_dispatch_proto::pbjson_types::Duration {
        seconds: 60,
        nanos: 0,
    });
    let old = h.message_with(&req, SystemTime::now() - Duration::from_secs(120), &[]);
    assert_eq!(
        h.process(&old, 1).await,
        Settle::Ack(MessageResult::Expired)
    );
    assert_eq!(h.delivered(), 0);
    assert!(
        h.metrics().contains(
            r#"push_dispatch_sends_total{platform="apns",app="main",outcome="expired"} 1"#
        )
    );
    // The first publish of a republished remainder counts, not its own.
    let first = Timestamp::try_from(SystemTime::now() - Duration::from_secs(120)).expect("time");
    let first = String::from(first);
    let re = h.message_with(
        &req,
        SystemTime::now(),
        &[(attr::FIRST_PUBLISH_TIME, &first)],
    );
    assert_eq!(h.process(&re, 1).await, Settle::Ack(MessageResult::Expired));
    let fresh = h.message(&req);
    assert_eq!(
        h.process(&fresh, 1).await,
        Settle::Ack(MessageResult::Acked)
    );
}

#[tokio::test]
async fn draining_hands_back_what_has_not_started() {
    let h = Harness::new();
    h.shutdown.drain();
    let m = h.message(&request(&[(Platform::Apns, &apns_token("ab12"))]));
    assert_eq!(h.process(&m, 1).await, Settle::Nack);
    assert_eq!(h.delivered(), 0);
    // On the last attempt it is dead-lettered with a reason instead.
    assert_eq!(
        h.process(&m, 5).await,
        Settle::Ack(MessageResult::DeadLettered)
    );
    let dl = &h.published().dead_letters[0];
    assert!(dl.attributes[attr::PUSH_ERROR_DETAIL].contains("shutting down"));
}

#[tokio::test]
async fn an_outage_opens_the_circuit_and_later_targets_are_carried_forward_unsent() {
    let h = Harness::with(Options {
        circuit: CircuitConfig {
            failure_ratio: 0.5,
            min_requests: 4,
            open_for: Duration::from_secs(30),
        },
        ..Options::default()
    });
    for _ in 0..4 {
        let m = h.message(&request(&[(Platform::Apns, &apns_token("0500"))]));
        assert_eq!(h.process(&m, 1).await, Settle::Nack);
    }
    let good = h.message(&request(&[
        (Platform::Apns, &apns_token("ab12")),
        (Platform::Fcm, "ok-1"),
    ]));
    assert_eq!(
        h.process(&good, 1).await,
        Settle::Ack(MessageResult::Republished),
        "FCM is another circuit: delivered; APNs carried forward"
    );
    assert_eq!(h.apns.delivered(), 0, "nothing sent while open");
    assert_eq!(h.fcm.delivered(), 1);
    let text = h.metrics();
    assert!(
        text.contains(
            r#"push_dispatch_sends_total{platform="apns",app="main",outcome="circuit_open"} 1"#
        ),
        "{text}"
    );
    assert!(
        text.contains(r#"push_dispatch_circuit_open{platform="apns",app="main"} 1"#),
        "{text}"
    );
    // A device's 429 is not the provider's failure: it never opens a circuit.
    assert!(
        text.contains(r#"push_dispatch_circuit_open{platform="fcm",app="main"} 0"#),
        "{text}"
    );
}

#[tokio::test]
async fn a_wrong_firebase_project_trips_the_guard_and_reports_are_held_but_unregistered_flows() {
    let h = Harness::with(Options {
        guard: GuardConfig {
            ratio: 0.5,
            min_samples: 4,
            window: Duration::from_secs(60),
        },
        ..Options::default()
    });
    for i in 0..6 {
        let token = format!("mismatch-{i}");
        let m = h.message(&request(&[(Platform::Fcm, &token)]));
        assert_eq!(h.process(&m, 1).await, Settle::Ack(MessageResult::Acked));
    }
    let p = h.published();
    assert_eq!(
        p.feedback.len(),
        3,
        "below min_samples the guard does not judge"
    );
    let held: Vec<_> = p
        .dead_letters
        .iter()
        .filter(|d| d.attributes[attr::PUSH_ERROR] == "invalidation_guard")
        .collect();
    assert_eq!(held.len(), 3, "from min_samples on, every report is held");
    let m = h.message(&request(&[(Platform::Fcm, "unregistered-9")]));
    assert_eq!(h.process(&m, 1).await, Settle::Ack(MessageResult::Acked));
    assert_eq!(h.published().feedback.len(), 4, "Unregistered still flows");
    let text = h.metrics();
    assert!(
        text.contains(r#"push_dispatch_invalidation_guard_tripped{platform="fcm",app="main"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(
            r#"push_dispatch_invalidation_guard_held_total{platform="fcm",app="main"} 3"#
        ),
        "{text}"
    );
    assert!(
        text.contains(r#"push_dispatch_invalidation_guard_tripped{platform="apns",app="main"} 0"#),
        "{text}"
    );
}

/// Dead letters keep what the producer wrote (SPEC §9 "Dead letters").
mod dead_letters_keep_what_the_producer_wrote {
    use super::*;

    /// Unknown field 99 (varint 1).
    const UNKNOWN_VARINT: [u8; 3] = [0x98, 0x06, 0x01];
    /// Unknown field 100 (bytes "new").
    const UNKNOWN_BYTES: [u8; 6] = [0xa2, 0x06, 0x03, b'n', b'e', b'w'];

    fn binary(request: &PushRequest) -> Vec<u8> {
        encode_message(request, Encoding::Binary).expect("encodes")
    }

    /// A request holding only `targets` (concatenated binary requests merge).
    fn targets_only(targets: &[(i32, &str)]) -> Vec<u8> {
        binary(&PushRequest {
            targets: targets
                .iter()
                .map(|(platform, token)| Target {
                    platform: *platform,
                    token: token.to_string(),
                })
                .collect(),
            ..Default::default()
        })
    }

    /// The original attributes minus `goog*` and `CloudPubSubDeadLetter*`.
    fn producer_attributes(encoding: &'static str) -> Vec<(&'static str, &'static str)> {
        vec![
            ("trace", "t1"),
            ("googclient_schemaencoding", encoding),
            ("goog_future", "x"),
            ("CloudPubSubDeadLetterSourceDeliveryCount", "1"),
        ]
    }

    fn keys(attributes: &HashMap<String, String>) -> Vec<&str> {
        let mut keys: Vec<&str> = attributes.keys().map(String::as_str).collect();
        keys.sort_unstable();
        keys
    }

    #[tokio::test]
    async fn a_request_whose_only_target_has_an_unknown_platform_is_dead_lettered_as_written() {
        let h = Harness::new();
        let json = br#"{"requestId": "r-1", "futureField": {"x": 1},
            "targets": [{"platform": "PLATFORM_PIGEON", "token": "p1"}]}"#
            .to_vec();
        let json_message = h.raw(
            json.clone(),
            SystemTime::now(),
            &producer_attributes("JSON"),
        );
        let bin = [
            binary(&PushRequest {
                request_id: "r-2".into(),
                ..Default::default()
            }),
            UNKNOWN_VARINT.to_vec(),
            targets_only(&[(7, "p2")]),
        ]
        .concat();
        let bin_message = h.raw(
            bin.clone(),
            SystemTime::now(),
            &producer_attributes("BINARY"),
        );
        for m in [&json_message, &bin_message] {
            assert_eq!(h.process(m, 2).await, Settle::Ack(MessageResult::Acked));
        }
        let p = h.published();
        assert_eq!(p.dead_letters.len(), 2);
        let (j, b) = (&p.dead_letters[0], &p.dead_letters[1]);
        assert_eq!(j.data, json, "the original JSON, whitespace and all");
        assert_eq!(b.data, bin, "the original binary");
        let ours = [
            attr::DELIVERY_ATTEMPT,
            attr::PUSH_ERROR,
            attr::PUSH_ERROR_DETAIL,
            attr::FIRST_PUBLISH_TIME,
            attr::SOURCE_MESSAGE_ID,
            "trace",
        ];
        assert_eq!(keys(&j.attributes), ours);
        let mut with_content_type = ours.to_vec();
        with_content_type.insert(0, attr::CONTENT_TYPE);
        assert_eq!(
            keys(&b.attributes),
            with_content_type,
            "binary without googclient_schemaencoding says so by content-type"
        );
        assert_eq!(b.attributes[attr::CONTENT_TYPE], "application/x-protobuf");
        for d in [j, b] {
            assert_eq!(d.attributes[attr::PUSH_ERROR], "unspecified_platform");
            assert_eq!(d.attributes["trace"], "t1");
            assert_eq!(d.attributes[attr::DELIVERY_ATTEMPT], "2");
        }
        assert_eq!(b.attributes[attr::SOURCE_MESSAGE_ID], "m2");

        // `dlq replay` clears our error attributes and Pub/Sub's, and the
        // replayed message reads as the producer's request again.
        let replayed: Vec<(&str, &str)> = b
            .attributes
            .iter()
            .filter(|(k, _)| !attr::is_cleared_on_replay(k))
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let mut replayed_keys: Vec<&str> = replayed.iter().map(|(k, _)| *k).collect();
        replayed_keys.sort_unstable();
        assert_eq!(
            replayed_keys,
            [
                attr::CONTENT_TYPE,
                attr::FIRST_PUBLISH_TIME,
                attr::SOURCE_MESSAGE_ID,
                "trace"
            ]
        );
        let again = h.raw(b.data.clone(), SystemTime::now(), &replayed);
        let decoded = decode_request(&again.data, &again.attributes).expect("decodes");
        assert_eq!(decoded.request_id, "r-2");
        assert_eq!(decoded.targets[0].platform, 7, "the unknown platform kept");
    }

    #[tokio::test]
    async fn a_dead_lettered_target_beside_a_delivered_one_is_a_splice_of_the_original() {
        let h = Harness::new();
        let ok = apns_token("ab12");
        // Binary, fields out of canonical order, unknown fields around.
        let apns = Platform::Apns as i32;
        let ok_target = targets_only(&[(apns, &ok)]);
        let rest = [
            UNKNOWN_VARINT.to_vec(),
            binary(&PushRequest {
                request_id: "r-3".into(),
                recipient: "user-7".into(),
                ..Default::default()
            }),
            targets_only(&[(apns, "not-hex")]),
            UNKNOWN_BYTES.to_vec(),
        ]
        .concat();
        let bin = [ok_target, rest.clone()].concat();
        let m = h.raw(
            bin,
            SystemTime::now(),
            &[(attr::CONTENT_TYPE, "application/x-protobuf")],
        );
        assert_eq!(h.process(&m, 1).await, Settle::Ack(MessageResult::Acked));
        // JSON, with unknown keys, an unknown enum name and both spellings.
        let json = format!(
            r#"{{"request_id": "r-4", "collapseKey": "c", "priority": "PRIORITY_LATER",
                "future": {{"a": [1, 2]}},
                "targets": [{{"platform": "PLATFORM_APNS", "token": "{ok}"}},
                            {{"platform": "PLATFORM_APNS", "token": "not-hex", "weight": 1}}]}}"#
        );
        let m = h.raw(json.clone().into_bytes(), SystemTime::now(), &[]);
        assert_eq!(h.process(&m, 1).await, Settle::Ack(MessageResult::Acked));
        assert_eq!(h.delivered(), 2, "the good targets");

        let p = h.published();
        assert_eq!(p.dead_letters.len(), 2);
        let (b, j) = (&p.dead_letters[0], &p.dead_letters[1]);
        assert_eq!(b.attributes[attr::PUSH_ERROR], "malformed_token");
        assert_eq!(b.data, rest, "every other field byte for byte, in order");
        assert_eq!(b.attributes[attr::CONTENT_TYPE], "application/x-protobuf");

        assert_eq!(j.attributes[attr::PUSH_ERROR], "malformed_token");
        assert!(!j.attributes.contains_key(attr::CONTENT_TYPE));
        let got: serde_json::Value = serde_json::from_slice(&j.data).expect("JSON");
        let mut expected: serde_json::Value = serde_json::from_str(&json).expect("JSON");
        expected["targets"]
            .as_array_mut()
            .expect("targets")
            .remove(0);
        assert_eq!(got, expected, "every other key as the producer wrote it");
        assert_eq!(tokens(&j.data, &j.attributes), vec!["not-hex"]);
    }

    #[tokio::test]
    async fn a_republished_remainder_keeps_unknown_fields() {
        let h = Harness::new();
        let (ok, failing) = (apns_token("ab12"), apns_token("0503"));
        let json = format!(
            r#"{{"requestId": "r-5", "future": true, "priority": "PRIORITY_LATER",
                "targets": [{{"platform": "PLATFORM_APNS", "token": "{ok}"}},
                            {{"platform": "PLATFORM_APNS", "token": "{failing}", "weight": 1}}]}}"#
        );
        let m = h.raw(
            json.clone().into_bytes(),
            SystemTime::now(),
            &[("trace", "t")],
        );
        assert_eq!(
            h.process(&m, 1).await,
            Settle::Ack(MessageResult::Republished)
        );
        let apns = Platform::Apns as i32;
        let rest = [
            UNKNOWN_VARINT.to_vec(),
            targets_only(&[(apns, &failing)]),
            UNKNOWN_BYTES.to_vec(),
        ]
        .concat();
        let bin = [targets_only(&[(apns, &ok)]), rest.clone()].concat();
        let m = h.raw(
            bin,
            SystemTime::now(),
            &[("googclient_schemaencoding", "BINARY")],
        );
        assert_eq!(
            h.process(&m, 1).await,
            Settle::Ack(MessageResult::Republished)
        );

        let p = h.published();
        let (j, b) = (&p.republished[0], &p.republished[1]);
        let got: serde_json::Value = serde_json::from_slice(&j.data).expect("JSON");
        let mut expected: serde_json::Value = serde_json::from_str(&json).expect("JSON");
        expected["targets"]
            .as_array_mut()
            .expect("targets")
            .remove(0);
        assert_eq!(got, expected, "unknown keys and enum names travel on");
        assert_eq!(j.attributes["trace"], "t");
        assert_eq!(b.data, rest, "unknown fields travel on, byte for byte");
        assert_eq!(b.attributes[attr::CONTENT_TYPE], "application/x-protobuf");
        assert_eq!(b.attributes[attr::PUSH_ATTEMPT], "2");

        // Received again, the remainder holds only the failing target.
        let attrs: Vec<(&str, &str)> = b
            .attributes
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let again = h.raw(b.data.clone(), SystemTime::now(), &attrs);
        assert_eq!(h.process(&again, 1).await, Settle::Nack, "nothing final");
        assert_eq!(h.delivered(), 2, "each delivered target was sent once");
    }
}

// ── Delivery results (`results.topic`) ───────────────────────────────────

fn with_results() -> Harness {
    Harness::with(Options {
        results: true,
        ..Options::default()
    })
}

/// (token, outcome, reason) of each target of a result.
fn outcomes(result: &PushResult) -> Vec<(String, TargetOutcome, String)> {
    result
        .targets
        .iter()
        .map(|t| (t.token.clone(), t.outcome(), t.reason.clone()))
        .collect()
}

#[tokio::test]
async fn results_count_every_request_made_to_the_provider_retries_included() {
    // `f1a0` answers 503 twice per token, then 200: delivered on the third try.
    let h = Harness::with(Options {
        results: true,
        max_in_process_wait: Duration::from_secs(5),
        ..Options::default()
    });
    let req = request(&[(Platform::Apns, &apns_token("f1a0"))]);
    assert_eq!(
        h.process(&h.message(&req), 1).await,
        Settle::Ack(MessageResult::Acked)
    );
    let r = &h.published().results[0];
    assert_eq!(r.targets[0].outcome(), TargetOutcome::Delivered);
    assert_eq!(r.targets[0].attempts, 3, "two 503s in process, then 200");
}

#[tokio::test]
async fn results_one_per_settlement_lists_delivered_dead_and_rejected_targets_before_the_ack() {
    let h = with_results();
    let ok = apns_token("ab12");
    let req = request(&[
        (Platform::Apns, &ok),
        (Platform::Fcm, "unregistered-1"),
        (Platform::Apns, "not-hex"),
    ]);
    let message = h.message(&req);
    assert_eq!(
        h.process(&message, 1).await,
        Settle::Ack(MessageResult::Acked)
    );
    let p = h.published();
    assert_eq!(p.results.len(), 1, "one result per settlement");
    let r = &p.results[0];
    assert_eq!(
        (r.request_id.as_str(), r.app.as_str(), r.recipient.as_str()),
        ("order-42", "main", "user-7")
    );
    assert_eq!(r.source_message_id, message.message_id);
    assert_eq!(r.push_attempt, 1);
    assert!(r.complete);
    assert!(r.settled_time.is_some());
    assert_eq!(
        outcomes(r),
        vec![
            (ok, TargetOutcome::Delivered, String::new()),
            (
                "unregistered-1".into(),
                TargetOutcome::TokenInvalid,
                "UNREGISTERED".into()
            ),
            (
                "not-hex".into(),
                TargetOutcome::Rejected,
                "malformed_token".into()
            ),
        ]
    );
    assert_eq!(r.targets[0].platform(), Platform::Apns);
    assert_eq!(
        r.targets.iter().map(|t| t.attempts).collect::<Vec<_>>(),
        [1, 1, 0]
    );
    assert!(r.targets.iter().all(|t| t.final_time.is_some()));

    // Invalid as a whole (unknown app): every target dead-lettered, the
    // request's app as written; undecodable poison: no result.
    let unknown = PushRequest {
        app: "nope".into(),
        ..request(&[
            (Platform::Fcm, "tok"),
            (Platform::Apns, &apns_token("ab12")),
        ])
    };
    h.process(&h.message(&unknown), 1).await;
    let garbage = h.raw(b"{not json".to_vec(), SystemTime::now(), &[]);
    h.process(&garbage, 1).await;
    let p = h.published();
    assert_eq!(p.results.len(), 2, "poison has no result");
    let r = &p.results[1];
    assert_eq!(r.app, "nope");
    assert!(
        r.targets
            .iter()
            .all(|t| t.outcome() == TargetOutcome::DeadLettered && t.reason == "unknown_app"),
        "{r:?}"
    );
    assert_eq!(r.targets.len(), 2);
}

#[tokio::test]
async fn results_a_carried_remainder_yields_an_incomplete_result_and_its_settlement_a_complete_one()
{
    let h = with_results();
    let (ok, flaky) = (apns_token("ab12"), apns_token("f1a0"));
    let req = request(&[(Platform::Apns, &ok), (Platform::Apns, &flaky)]);
    assert_eq!(
        h.process(&h.message(&req), 1).await,
        Settle::Ack(MessageResult::Republished)
    );
    let p = h.published();
    assert_eq!(p.results.len(), 1);
    assert!(
        !p.results[0].complete,
        "the flaky target was carried forward"
    );
    assert_eq!(
        outcomes(&p.results[0]),
        vec![(ok, TargetOutcome::Delivered, String::new())]
    );
    // The remainder: 503 once more (nothing final: nacked, no result), then 200.
    let re = &p.republished[0];
    let attributes: Vec<(&str, &str)> = re
        .attributes
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let remainder = h.raw(re.data.clone(), SystemTime::now(), &attributes);
    assert_eq!(h.process(&remainder, 1).await, Settle::Nack);
    assert_eq!(h.published().results.len(), 1, "a nack publishes no result");
    assert_eq!(
        h.process(&remainder, 2).await,
        Settle::Ack(MessageResult::Acked)
    );
    let p = h.published();
    assert_eq!(p.results.len(), 2);
    let last = &p.results[1];
    assert!(last.complete);
    assert_eq!(last.push_attempt, 2);
    assert_eq!(last.source_message_id, p.results[0].source_message_id);
    assert_eq!(
        outcomes(last),
        vec![(flaky, TargetOutcome::Delivered, String::new())]
    );
}

#[tokio::test]
async fn results_an_unconfirmed_result_acks_when_something_was_delivered_and_nacks_otherwise() {
    let h = with_results();
    h.worker.outbox().refuse(PublishPurpose::Result);
    let delivered = request(&[
        (Platform::Apns, &apns_token("ab12")),
        (Platform::Fcm, "unregistered-1"),
    ]);
    assert_eq!(
        h.process(&h.message(&delivered), 1).await,
        Settle::Ack(MessageResult::Acked),
        "delivered: never resent because of a result"
    );
    assert!(
        h.metrics()
            .contains("push_dispatch_publish_failures_total{reason=\"result\"} 1"),
        "{}",
        h.metrics()
    );
    let nothing_delivered = request(&[(Platform::Fcm, "unregistered-2")]);
    assert_eq!(
        h.process(&h.message(&nothing_delivered), 1).await,
        Settle::Nack,
        "nothing delivered: a retry costs no duplicate"
    );
    assert_eq!(
        h.process(&h.message(&nothing_delivered), POLICY.max_delivery_attempts)
            .await,
        Settle::Ack(MessageResult::Acked),
        "on the last delivery attempt a nack would dead-letter it without a reason"
    );
    let p = h.published();
    assert!(p.results.is_empty());
    assert_eq!(p.refused, vec![PublishPurpose::Result; 3]);
}

#[tokio::test]
async fn results_are_off_by_default() {
    let h = Harness::new();
    h.worker.outbox().refuse(PublishPurpose::Result);
    let req = request(&[
        (Platform::Apns, &apns_token("ab12")),
        (Platform::Fcm, "unregistered-1"),
    ]);
    assert_eq!(
        h.process(&h.message(&req), 1).await,
        Settle::Ack(MessageResult::Acked)
    );
    let p = h.published();
    assert!(p.results.is_empty() && p.refused.is_empty(), "{p:?}");
    assert!(!h.metrics().contains("reason=\"result\""));
}
