//! Observability end to end: traces exported over OTLP continue the
//! producer's trace, JSON logs follow Cloud Logging's format and never hold a
//! whole device token, and metrics equal what happened with bounded labels.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::{self, Settings, TestEnv, apns_token};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::trace::v1::Span;

/// An in-test OTLP/gRPC receiver that keeps every span.
#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Span>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().expect("lock");
        for rs in request.into_inner().resource_spans {
            for ss in rs.scope_spans {
                spans.extend(ss.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

async fn start_receiver() -> (Receiver, u16, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let receiver = Receiver::default();
    let service = TraceServiceServer::new(receiver.clone());
    let task = tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream_listener(listener))
            .await;
    });
    (receiver, port, task)
}

fn tokio_stream_listener(
    listener: tokio::net::TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures::stream::unfold(listener, |l| async move {
        let next = l.accept().await.map(|(s, _)| s);
        Some((next, l))
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attr<'a>(
    span: &'a Span,
    key: &str,
) -> Option<&'a opentelemetry_proto::tonic::common::v1::AnyValue> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
}

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_SPAN: &str = "00f067aa0ba902b7";

#[tokio::test(flavor = "multi_thread")]
async fn a_message_trace_continues_the_producers_trace_with_one_span_per_target() {
    let (receiver, port, _task) = start_receiver().await;
    let env = TestEnv::new("traces", Settings::default()).await;
    env.provision();
    env.create_subscription("push-feedback", "feedback-watch")
        .await;
    let mut feedback = env.collect("feedback-watch");
    let endpoint = format!("http://127.0.0.1:{port}");
    let _worker = env
        .start_worker_with(&[
            ("PUSH_DISPATCH_TELEMETRY__OTLP_ENDPOINT", endpoint.as_str()),
            // Root traces are never sampled: the producer's sampled flag decides.
            ("PUSH_DISPATCH_TELEMETRY__SAMPLE_RATIO", "0"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ])
        .await;
    let dead = apns_token("dead");
    let body = format!(
        r#"{{"requestId":"traced","targets":[{{"platform":"PLATFORM_APNS","token":"{}"}},{{"platform":"PLATFORM_FCM","token":"ok-1"}},{{"platform":"PLATFORM_APNS","token":"{dead}"}}]}}"#,
        apns_token("a1b2")
    );
    let traceparent = format!("00-{TRACE_ID}-{PARENT_SPAN}-01");
    env.publish(
        "push-requests",
        body.into_bytes(),
        &[("traceparent", traceparent.as_str())],
    )
    .await;
    // An unsampled producer trace is not exported.
    env.publish(
        "push-requests",
        br#"{"targets":[{"platform":"PLATFORM_FCM","token":"ok-2"}]}"#.to_vec(),
        &[(
            "traceparent",
            "00-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-00f067aa0ba902b7-00",
        )],
    )
    .await;

    // The feedback event continues the trace.
    let event = &feedback.take(1).await[0];
    let carried = event
        .attributes
        .get("traceparent")
        .expect("traceparent injected");
    assert!(carried.contains(TRACE_ID), "{carried}");
    assert!(
        !carried.contains(PARENT_SPAN),
        "the parent is our span, not the producer's"
    );

    let start = Instant::now();
    let spans = loop {
        let spans: Vec<Span> = receiver.spans.lock().expect("lock").clone();
        let ours: Vec<Span> = spans
            .into_iter()
            .filter(|s| hex(&s.trace_id) == TRACE_ID)
            .collect();
        if ours.iter().filter(|s| s.name.ends_with(" send")).count() >= 3
            && ours.iter().any(|s| s.name == "push-dispatch process")
        {
            break ours;
        }
        assert!(start.elapsed() < common::DEADLINE, "spans: {ours:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let process = spans
        .iter()
        .find(|s| s.name == "push-dispatch process")
        .expect("message span");
    assert_eq!(
        hex(&process.parent_span_id),
        PARENT_SPAN,
        "child of the producer's span"
    );
    let sends: Vec<&Span> = spans.iter().filter(|s| s.name.ends_with(" send")).collect();
    assert_eq!(sends.len(), 3, "one span per target");
    for s in &sends {
        assert_eq!(s.parent_span_id, process.span_id);
        assert!(attr(s, "push.outcome").is_some(), "{s:?}");
        assert!(attr(s, "push.app").is_some());
    }
    let all = receiver.spans.lock().expect("lock").clone();
    assert!(
        !all.iter().any(|s| hex(&s.trace_id).starts_with("aaaa")),
        "unsampled traces are not exported"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn json_logs_follow_cloud_logging_and_never_hold_a_whole_token() {
    let env = TestEnv::new("json-logs", Settings::default()).await;
    env.provision();
    let worker = env
        .start_worker_with(&[
            ("PUSH_DISPATCH_TELEMETRY__LOG_FORMAT", "json"),
            ("PUSH_DISPATCH_TELEMETRY__LOG_LEVEL", "debug"),
        ])
        .await;
    let token = apns_token("a1b2");
    let id = env
        .publish_json(&format!(
            r#"{{"requestId":"order-42","targets":[{{"platform":"PLATFORM_APNS","token":"{token}"}},{{"platform":"PLATFORM_APNS","token":"not-hex"}}]}}"#
        ))
        .await;
    env.wait_metric("push_dispatch_messages_total", &[], 1.0)
        .await;
    let log = worker.log_text();
    let mut severities = HashSet::new();
    let mut of_the_message = 0;
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        // One request followed through the logs: every line written while
        // its message was handled carries its request_id and app.
        if v["messaging.message.id"] == id.as_str() {
            of_the_message += 1;
            assert_eq!(v["request_id"], "order-42", "{line}");
            assert_eq!(v["app"], "default", "{line}");
        }
        severities.insert(v["severity"].as_str().expect("severity").to_string());
        assert!(v["message"].is_string(), "{line}");
        assert!(
            v["time"].as_str().is_some_and(|t| t.ends_with('Z')),
            "{line}"
        );
    }
    assert!(
        severities.contains("INFO") && severities.contains("DEBUG"),
        "{severities:?}"
    );
    assert!(
        severities.contains("WARNING"),
        "the dead letter is a warning: {severities:?}"
    );
    assert!(of_the_message >= 2, "sent and dead-lettered lines: {log}");
    assert!(!log.contains(&token), "a whole device token was logged");
    // /statusz: each app and platform, for the on-call engineer.
    let (code, body) = crate::common::http_get(env.port, "/statusz")
        .await
        .expect("statusz");
    assert_eq!(code, 200, "{body}");
    let status: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(status["ready"], true, "{status}");
    let providers = status["providers"].as_array().expect("providers");
    let names: Vec<(String, String)> = providers
        .iter()
        .map(|p| {
            (
                p["app"].as_str().unwrap_or("").to_string(),
                p["platform"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert!(
        names.contains(&("default".into(), "apns".into())),
        "{status}"
    );
    assert!(names.contains(&("second".into(), "fcm".into())), "{status}");
    assert!(
        providers.iter().all(|p| p["circuit"] == "closed"),
        "{status}"
    );
    assert!(
        log.contains(&token[..8]),
        "its prefix is logged for correlation"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_equal_what_happened_and_labels_stay_bounded() {
    let env = TestEnv::new("metrics", Settings::default()).await;
    env.provision();
    let _worker = env.start_worker().await;
    // 4 good (2 APNs, 2 FCM), 2 dead, 1 malformed, 1 poison, 1 unknown app, 1 for the second app.
    let mut ids = Vec::new();
    for i in 0..2 {
        ids.push(
            env.publish_json(&format!(
                r#"{{"requestId":"req-{i}","targets":[{{"platform":"PLATFORM_APNS","token":"{}"}},{{"platform":"PLATFORM_FCM","token":"good-{i}"}}]}}"#,
                apns_token(&format!("a1b{i}"))
            ))
            .await,
        );
    }
    ids.push(
        env.publish_json(&format!(
            r#"{{"requestId":"req-dead","targets":[{{"platform":"PLATFORM_APNS","token":"{}"}},{{"platform":"PLATFORM_FCM","token":"unregistered-9"}},{{"platform":"PLATFORM_APNS","token":"nothex"}}]}}"#,
            apns_token("dead")
        ))
        .await,
    );
    ids.push(env.publish("push-requests", b"garbage".to_vec(), &[]).await);
    ids.push(
        env.publish_json(r#"{"requestId":"req-x","app":"nope","targets":[{"platform":"PLATFORM_FCM","token":"t"}]}"#)
            .await,
    );
    ids.push(
        env.publish_json(r#"{"requestId":"req-2nd","app":"second","targets":[{"platform":"PLATFORM_FCM","token":"second-1"}]}"#)
            .await,
    );
    env.wait_metric("push_dispatch_messages_total", &[], 6.0)
        .await;
    let m = env.metrics().await;
    let v = |name: &str, labels: &[(&str, &str)]| common::metric_value(&m, name, labels);
    assert_eq!(
        v("push_dispatch_messages_total", &[("result", "acked")]),
        4.0
    );
    assert_eq!(
        v(
            "push_dispatch_messages_total",
            &[("result", "dead_lettered")]
        ),
        2.0
    );
    assert_eq!(
        v("push_dispatch_messages_total", &[("result", "nacked")]),
        0.0
    );
    assert_eq!(
        v("push_dispatch_sends_total", &[("outcome", "delivered")]),
        5.0
    );
    assert_eq!(
        v(
            "push_dispatch_sends_total",
            &[("outcome", "delivered"), ("app", "second")]
        ),
        1.0
    );
    assert_eq!(
        v("push_dispatch_sends_total", &[("outcome", "token_invalid")]),
        2.0
    );
    assert_eq!(
        v(
            "push_dispatch_feedback_events_total",
            &[("platform", "apns")]
        ),
        1.0
    );
    assert_eq!(
        v(
            "push_dispatch_feedback_events_total",
            &[("platform", "fcm"), ("reason", "REASON_UNREGISTERED")]
        ),
        1.0
    );
    assert_eq!(
        v(
            "push_dispatch_dead_letters_total",
            &[("reason", "malformed_token")]
        ),
        1.0
    );
    assert_eq!(
        v(
            "push_dispatch_dead_letters_total",
            &[("reason", "decode_json")]
        ),
        1.0
    );
    assert_eq!(
        v(
            "push_dispatch_dead_letters_total",
            &[("reason", "unknown_app")]
        ),
        1.0
    );
    assert_eq!(v("push_dispatch_send_duration_seconds_count", &[]), 7.0);
    assert_eq!(v("push_dispatch_inflight_messages", &[]), 0.0);
    assert_eq!(v("push_dispatch_max_outstanding_messages", &[]), 200.0);

    // Bounded labels: no token, request id or message id is a label value,
    // and every label value comes from a closed set.
    let forbidden: Vec<String> = ids
        .iter()
        .cloned()
        .chain(
            [
                "req-0",
                "req-1",
                "req-dead",
                "req-x",
                "req-2nd",
                "good-0",
                "unregistered-9",
                "nothex",
            ]
            .map(String::from),
        )
        .chain([apns_token("dead"), apns_token("a1b0")])
        .collect();
    let allowed: HashMap<&str, HashSet<&str>> = HashMap::from([
        ("platform", HashSet::from(["apns", "fcm"])),
        ("app", HashSet::from(["default", "second"])),
        (
            "outcome",
            HashSet::from([
                "delivered",
                "token_invalid",
                "retryable",
                "rejected",
                "expired",
                "circuit_open",
                "rate_limited",
                "provider_backoff",
                "duplicate_suppressed",
                "claimed_elsewhere",
            ]),
        ),
        (
            "result",
            HashSet::from([
                "acked",
                "nacked",
                "dead_lettered",
                "expired",
                "republished",
                "ok",
                "error",
            ]),
        ),
        ("kind", HashSet::from(["confirmed", "sent"])),
    ]);
    let mut series = 0;
    for line in m.lines().filter(|l| !l.starts_with('#') && l.contains('{')) {
        series += 1;
        let labels = &line[line.find('{').expect("{") + 1..line.rfind('}').expect("}")];
        for kv in labels.split(',') {
            let (k, v) = kv.split_once('=').expect("k=v");
            let v = v.trim_matches('"');
            // Stream indices are small numbers, as the emulator's message ids can be.
            if k == "stream" {
                assert!(v.parse::<u32>().is_ok_and(|i| i < 64), "stream={v}");
                continue;
            }
            assert!(
                !forbidden
                    .iter()
                    .any(|f| v == f || (f.len() > 8 && v.contains(f.as_str()))),
                "unbounded label value {k}={v}"
            );
            if let Some(set) = allowed.get(k) {
                assert!(set.contains(v), "unexpected {k}={v}");
            }
        }
    }
    assert!(series < 200, "{series} labelled series after a small run");
}

#[tokio::test(flavor = "multi_thread")]
async fn traces_can_be_exported_over_otlp_http() {
    use prost::Message;
    let spans: Arc<Mutex<Vec<Span>>> = Arc::default();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post({
            let spans = spans.clone();
            move |body: axum::body::Bytes| {
                let spans = spans.clone();
                async move {
                    let request = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
                    let mut all = spans.lock().expect("lock");
                    for rs in request.resource_spans {
                        for ss in rs.scope_spans {
                            all.extend(ss.spans);
                        }
                    }
                    ExportTraceServiceResponse::default().encode_to_vec()
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let _server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let env = TestEnv::new("otlp-http", Settings::default()).await;
    env.provision();
    let endpoint = format!("http://127.0.0.1:{port}");
    let _worker = env
        .start_worker_with(&[
            ("PUSH_DISPATCH_TELEMETRY__OTLP_ENDPOINT", endpoint.as_str()),
            ("PUSH_DISPATCH_TELEMETRY__OTLP_PROTOCOL", "http"),
            ("PUSH_DISPATCH_TELEMETRY__SAMPLE_RATIO", "1"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ])
        .await;
    env.publish_json(r#"{"targets":[{"platform":"PLATFORM_FCM","token":"ok-http"}]}"#)
        .await;
    let start = Instant::now();
    loop {
        let names: Vec<String> = spans
            .lock()
            .expect("lock")
            .iter()
            .map(|s| s.name.clone())
            .collect();
        if names.iter().any(|n| n == "push-dispatch process")
            && names.iter().any(|n| n == "fcm send")
        {
            break;
        }
        assert!(
            start.elapsed() < common::DEADLINE,
            "spans so far: {names:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
