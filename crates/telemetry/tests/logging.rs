//! The Cloud Logging formatter, captured: JSON with `severity`, `message`,
//! `time`, fields, and trace links inside a traced span.

use std::collections::HashMap;

use opentelemetry::trace::TracerProvider as _;
use push_dispatch_telemetry::capture::Capture;
use push_dispatch_telemetry::logging::CloudLogging;
use push_dispatch_telemetry::propagation;
use serde_json::Value;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;

fn lines(capture: &Capture) -> Vec<Value> {
    capture.json_lines().unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn events_are_cloud_logging_json_with_redacted_tokens() {
    let capture = Capture::default();
    let subscriber = tracing_subscriber::registry().with(
        tracing_subscriber::fmt::layer()
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .event_format(CloudLogging::new("my-project"))
            .with_writer(capture.clone()),
    );
    let token = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";
    tracing::subscriber::with_default(subscriber, || {
        let span = tracing::info_span!("push.message", message_id = "m-1");
        let _g = span.enter();
        tracing::warn!(token = %push_dispatch_proto_redact(token), attempts = 3u64, "sent");
        tracing::error!("boom");
    });
    let out = lines(&capture);
    assert_eq!(out.len(), 2);
    assert_eq!(out[0]["severity"], "WARNING");
    assert_eq!(out[0]["message"], "sent");
    assert_eq!(out[0]["attempts"], 3);
    assert_eq!(out[0]["message_id"], "m-1", "span fields are merged in");
    assert!(out[0]["time"].as_str().expect("time").ends_with('Z'));
    assert_eq!(out[1]["severity"], "ERROR");
    let text = serde_json::to_string(&out).expect("json");
    assert!(!text.contains(token), "the full token never appears");
    assert!(text.contains("a1b2c3d4"), "its first 8 characters do");
    assert!(
        out[0].get("logging.googleapis.com/trace").is_none(),
        "no trace without OTel"
    );
}

fn push_dispatch_proto_redact(token: &str) -> String {
    format!("{}…", &token[..8])
}

#[test]
fn lines_inside_a_traced_span_link_to_the_trace() {
    let capture = Capture::default();
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    let format = CloudLogging::new("my-project");
    let subscriber = tracing::Dispatch::new(
        tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")))
            .with(
                tracing_subscriber::fmt::layer()
                    .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
                    .event_format(format.clone())
                    .with_writer(capture.clone()),
            ),
    );
    format.bind(&subscriber);
    let parent = HashMap::from([(
        "traceparent".to_string(),
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_string(),
    )]);
    tracing::dispatcher::with_default(&subscriber, || {
        let span = tracing::info_span!("push.message");
        let _ = span.set_parent(propagation::extract(&parent));
        let _g = span.enter();
        tracing::info!("inside");
    });
    let out = lines(&capture);
    assert_eq!(
        out[0]["logging.googleapis.com/trace"],
        "projects/my-project/traces/4bf92f3577b34da6a3ce929d0e0e4736"
    );
    let span_id = out[0]["logging.googleapis.com/spanId"]
        .as_str()
        .expect("span id");
    assert_eq!(span_id.len(), 16);
    assert_ne!(
        span_id, "00f067aa0ba902b7",
        "our own span, child of the producer's"
    );
    assert_eq!(out[0]["logging.googleapis.com/trace_sampled"], true);
}

#[test]
fn error_events_are_shaped_for_error_reporting() {
    use push_dispatch_telemetry::error_reporting::{REPORTED_ERROR_EVENT, ServiceContext};
    let capture = Capture::default();
    let service = ServiceContext {
        service: "push-dispatch".into(),
        version: "9.9.9".into(),
    };
    let subscriber = tracing_subscriber::registry().with(
        tracing_subscriber::fmt::layer()
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .event_format(CloudLogging::new("my-project").with_service(service))
            .with_writer(capture.clone()),
    );
    tracing::subscriber::with_default(subscriber, || {
        tracing::warn!("only a warning");
        tracing::error!(stream = 2u64, "a streaming pull ended by itself");
    });
    let out = lines(&capture);
    assert!(
        out[0].get("@type").is_none(),
        "warnings are not errors: {}",
        out[0]
    );
    let e = &out[1];
    assert_eq!(e["@type"], REPORTED_ERROR_EVENT);
    assert_eq!(e["serviceContext"]["service"], "push-dispatch");
    assert_eq!(e["serviceContext"]["version"], "9.9.9");
    let at = &e["context"]["reportLocation"];
    assert!(
        at["filePath"]
            .as_str()
            .is_some_and(|f| f.ends_with("logging.rs")),
        "{e}"
    );
    assert!(at["lineNumber"].as_u64().is_some_and(|l| l > 0), "{e}");
    assert_eq!(e["message"], "a streaming pull ended by itself");
    assert_eq!(e["stream"], 2);
}
