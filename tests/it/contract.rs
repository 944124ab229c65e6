//! Contract tests: what the real worker publishes on the feedback topic, read
//! by an **independent** proto3 implementation, Google's protobuf runtime for
//! Python, on descriptors that protoc (grpcio-tools) builds from
//! `proto/push/v1/push.proto` (`tests/contract/contract.py`). It checks that
//! every field parses with `ignore_unknown_fields=False`, enum values are
//! names, timestamps are RFC 3339 in UTC, attributes match the body, and that
//! `feedback.encoding: binary` parses with `ParseFromString` to the same
//! fields. The documented examples (docs/feedback.md, docs/producers.md) are
//! checked the same way, and the producers' REST publish example is run
//! against the emulator.
//!
//! The Python packages are pinned in `tests/contract/requirements.txt` and
//! installed into `.tools/contract-py` by `scripts/contract-tools.sh` (which
//! `make test` runs first). Under `CI=true` a missing tool fails these tests;
//! elsewhere a missing python3 or pip skips them with a message.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::common::{Settings, TestEnv, apns_token};
use prost::Message as _;
use push_dispatch_proto::Encoding;
use push_dispatch_proto::v1::{PushRequest, TokenInvalidated};
use push_dispatch_subscriber::pubsub::model::Message;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The directory holding the pinned Python packages, or `None` when python3 or
/// pip is missing outside CI (the caller skips, and says so).
fn python_tools() -> Option<PathBuf> {
    let out = Command::new(repo().join("scripts/contract-tools.sh"))
        .output()
        .expect("run scripts/contract-tools.sh");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    match out.status.code() {
        Some(0) => Some(PathBuf::from(
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
        )),
        Some(3) if !ci => {
            eprintln!("SKIPPED (contract test): {}", stderr.trim());
            None
        }
        _ => panic!(
            "scripts/contract-tools.sh failed ({}): {stderr}",
            out.status
        ),
    }
}

/// Runs `tests/contract/contract.py ARGS`; returns (success, stdout, stderr).
fn contract_py(tools: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new("python3")
        .arg(repo().join("tests/contract/contract.py"))
        .args(args)
        .env("PYTHONPATH", tools)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("run python3");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn from_hex(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect()
}

/// What the Python side made of one message.
struct PyEvent {
    /// `json_format.MessageToDict` of the parsed event.
    json: serde_json::Value,
    /// `SerializeToString` of the parsed event.
    binary: Vec<u8>,
}

/// Feeds published messages to the Python check; panics with its reasons if
/// the contract is violated.
fn check_feedback(tools: &Path, dir: &Path, messages: &[Message]) -> Vec<PyEvent> {
    let lines: Vec<String> = messages
        .iter()
        .map(|m| {
            serde_json::json!({"data_hex": to_hex(&m.data), "attributes": m.attributes}).to_string()
        })
        .collect();
    let input = dir.join("feedback.jsonl");
    std::fs::write(&input, lines.join("\n")).expect("write messages");
    let (ok, stdout, stderr) = contract_py(tools, &["feedback", input.to_str().expect("path")]);
    assert!(
        ok,
        "the independent decoder refused the worker's events:\n{stderr}"
    );
    let parsed: Vec<serde_json::Value> = serde_json::from_str(&stdout).expect("checker output");
    parsed
        .into_iter()
        .map(|v| PyEvent {
            binary: from_hex(v["binary_hex"].as_str().expect("binary_hex")),
            json: v["json"].clone(),
        })
        .collect()
}

/// Dead tokens of every reason the stub can answer (SPEC §7), and a live one.
fn dead_tokens_request() -> (String, usize) {
    let targets = [
        ("PLATFORM_APNS", apns_token("dead")), // 410 Unregistered + timestamp
        ("PLATFORM_APNS", apns_token("bad0")), // 400 BadDeviceToken
        ("PLATFORM_FCM", "unregistered-c1".into()), // 404 UNREGISTERED
        ("PLATFORM_FCM", "invalid-c1".into()), // 400 INVALID_ARGUMENT (token)
        ("PLATFORM_FCM", "mismatch-c1".into()), // 403 SENDER_ID_MISMATCH
        ("PLATFORM_FCM", "alive-c1".into()),   // delivered
    ];
    let json: Vec<String> = targets
        .iter()
        .map(|(p, t)| format!(r#"{{"platform":"{p}","token":"{t}"}}"#))
        .collect();
    (
        format!(
            r#"{{"requestId":"order-42-shipped","recipient":"user-123","targets":[{}],"notification":{{"title":"Shipped"}}}}"#,
            json.join(",")
        ),
        targets.len() - 1,
    )
}

/// Runs the real worker with `env` on a request full of dead tokens and
/// returns the feedback messages it published, and the request's message id.
async fn published_feedback(
    test: &str,
    worker_env: &[(&str, &str)],
) -> (TestEnv, Vec<Message>, String) {
    let env = TestEnv::new(test, Settings::default()).await;
    env.provision();
    env.create_subscription("push-feedback", "contract-watch")
        .await;
    let mut feedback = env.collect("contract-watch");
    let _worker = env.start_worker_with(worker_env).await;
    let (request, dead) = dead_tokens_request();
    let id = env.publish_json(&request).await;
    let messages = feedback.take(dead).await;
    env.wait_metric("push_dispatch_messages_total", &[("result", "acked")], 1.0)
        .await;
    feedback.expect_nothing(Duration::from_millis(300)).await;
    (env, messages, id)
}

fn reasons(events: &[TokenInvalidated]) -> BTreeSet<&'static str> {
    events.iter().map(|e| e.reason().as_str_name()).collect()
}

/// The reasons `dead_tokens_request` produces (UNREGISTERED from both platforms).
fn expected_reasons() -> BTreeSet<&'static str> {
    [
        "REASON_BAD_DEVICE_TOKEN",
        "REASON_INVALID_REGISTRATION",
        "REASON_SENDER_ID_MISMATCH",
        "REASON_UNREGISTERED",
    ]
    .into_iter()
    .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn json_feedback_events_parse_with_googles_protobuf_runtime() {
    let Some(tools) = python_tools() else { return };
    let (env, messages, source) = published_feedback("contract-json", &[]).await;
    let py = check_feedback(&tools, env.dir.path(), &messages);

    let mut events = Vec::new();
    for (m, p) in messages.iter().zip(&py) {
        assert_eq!(m.attributes["content-type"], "application/json");
        let ours: TokenInvalidated = serde_json::from_slice(&m.data).expect("event JSON");
        // Python parsed our JSON; its binary and its JSON read back the same here.
        let theirs_binary = TokenInvalidated::decode(p.binary.as_slice()).expect("python's binary");
        assert_eq!(
            ours, theirs_binary,
            "JSON parsed by Python, re-encoded in binary"
        );
        let theirs_json: TokenInvalidated =
            serde_json::from_value(p.json.clone()).expect("python's JSON");
        assert_eq!(ours, theirs_json);
        assert_eq!(ours.source_message_id, source);
        assert_eq!(
            ours.event_id,
            push_dispatch_feedback::event_id(&source, ours.platform(), &ours.token)
        );
        events.push(ours);
    }
    assert_eq!(reasons(&events), expected_reasons());

    // `PUSH_DISPATCH_CONTRACT_CAPTURE=DIR` keeps the events as published, for
    // the example of docs/feedback.md.
    if let Ok(dir) = std::env::var("PUSH_DISPATCH_CONTRACT_CAPTURE") {
        std::fs::create_dir_all(&dir).expect("capture dir");
        for (i, m) in messages.iter().enumerate() {
            let attrs: HashMap<&String, &String> = m.attributes.iter().collect();
            std::fs::write(
                Path::new(&dir).join(format!("event-{i}.json")),
                format!(
                    "{}\n{}\n",
                    String::from_utf8_lossy(&m.data),
                    serde_json::to_string(&attrs).expect("attrs")
                ),
            )
            .expect("capture");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn binary_feedback_events_parse_with_googles_protobuf_runtime_to_the_same_fields() {
    let Some(tools) = python_tools() else { return };
    let (env, messages, source) = published_feedback(
        "contract-binary",
        &[("PUSH_DISPATCH_FEEDBACK__ENCODING", "binary")],
    )
    .await;
    let py = check_feedback(&tools, env.dir.path(), &messages);

    let mut events = Vec::new();
    for (m, p) in messages.iter().zip(&py) {
        assert_eq!(m.attributes["content-type"], "application/x-protobuf");
        assert!(
            serde_json::from_slice::<serde_json::Value>(&m.data).is_err(),
            "feedback.encoding: binary publishes protobuf, not JSON"
        );
        let ours = TokenInvalidated::decode(m.data.as_ref()).expect("binary event");
        // Python's ParseFromString saw the same fields: its JSON and its
        // re-encoding read back equal to our decoding.
        let theirs_json: TokenInvalidated =
            serde_json::from_value(p.json.clone()).expect("python's JSON");
        assert_eq!(
            ours, theirs_json,
            "binary parsed by Python, written as JSON"
        );
        assert_eq!(
            ours,
            TokenInvalidated::decode(p.binary.as_slice()).expect("python's binary")
        );
        // And the JSON form of the same event is what Python wrote.
        let as_json: serde_json::Value = serde_json::from_slice(
            &push_dispatch_feedback::encode_event(&ours, Encoding::Json).expect("encode"),
        )
        .expect("json");
        assert_eq!(as_json, p.json, "Rust and Python JSON of one event");
        assert_eq!(ours.source_message_id, source);
        events.push(ours);
    }
    assert_eq!(reasons(&events), expected_reasons());
}

#[test]
fn the_contract_check_rejects_what_breaks_the_contract() {
    let Some(tools) = python_tools() else { return };
    let dir = tempfile::tempdir().expect("dir");
    let good = serde_json::json!({
        "eventId": "5f2b", "platform": "PLATFORM_FCM", "token": "unregistered-x",
        "app": "shop", "environment": "production", "fcmProject": "p",
        "reason": "REASON_UNREGISTERED", "providerReason": "UNREGISTERED",
        "invalidatedAt": "2026-12-03T12:00:00.250Z", "observedAt": "2026-12-03T12:00:00.250Z",
        "recipient": "u", "requestId": "r", "sourceMessageId": "1", "apnsTopic": "t"
    });
    let attrs = serde_json::json!({
        "event_type": "push.v1.TokenInvalidated", "platform": "fcm", "app": "shop",
        "reason": "REASON_UNREGISTERED", "content-type": "application/json"
    });
    let run = |body: &[u8], attrs: &serde_json::Value| {
        let input = dir.path().join("in.jsonl");
        let line = serde_json::json!({"data_hex": to_hex(body), "attributes": attrs});
        std::fs::write(&input, line.to_string()).expect("write");
        contract_py(&tools, &["feedback", input.to_str().expect("path")])
    };
    let (ok, _, stderr) = run(good.to_string().as_bytes(), &attrs);
    assert!(ok, "a valid event passes: {stderr}");

    let broken = |key: &str, value: serde_json::Value| {
        let mut v = good.clone();
        v[key] = value;
        v.to_string().into_bytes()
    };
    for (body, attrs, why) in [
        (
            broken("platform", 2.into()),
            attrs.clone(),
            "must be written as a value name",
        ),
        (
            broken("observedAt", "2026-12-03T12:00:00+01:00".into()),
            attrs.clone(),
            "RFC 3339 in UTC",
        ),
        (
            broken("deviceToken", "x".into()),
            attrs.clone(),
            "not a field of push.v1.TokenInvalidated",
        ),
        (
            broken("event_id", "x".into()),
            attrs.clone(),
            "the proto name",
        ),
        (
            good.to_string().into_bytes(),
            {
                let mut a = attrs.clone();
                a["reason"] = "REASON_EXPIRED_TOKEN".into();
                a
            },
            "attribute reason",
        ),
        // Field 15 is not in push.proto: an unknown field in the binary form.
        (
            [
                TokenInvalidated {
                    token: "t".into(),
                    ..Default::default()
                }
                .encode_to_vec(),
                vec![0x7a, 0x01, b'x'],
            ]
            .concat(),
            {
                let mut a = attrs.clone();
                a["content-type"] = "application/x-protobuf".into();
                a
            },
            "field numbers [15] are not in push.proto",
        ),
    ] {
        let (ok, _, stderr) = run(&body, &attrs);
        assert!(!ok, "{why}: the check must fail");
        assert!(stderr.contains(why), "expected {why:?} in:\n{stderr}");
    }
}

/// The ```json block after `<!-- contract: push.v1.NAME -->` in a doc.
fn doc_example(doc: &str, name: &str) -> String {
    let text = std::fs::read_to_string(repo().join(doc)).expect("read doc");
    let marker = format!("<!-- contract: push.v1.{name} -->");
    let start = text
        .find(&marker)
        .unwrap_or_else(|| panic!("{doc}: no {marker}"));
    let rest = &text[start..];
    let body = &rest[rest.find("```json\n").expect("json block") + 8..];
    body[..body.find("\n```").expect("block end")].to_string()
}

#[test]
fn the_documented_examples_follow_the_contract() {
    let Some(tools) = python_tools() else { return };
    let (ok, stdout, stderr) =
        contract_py(&tools, &["docs", "docs/feedback.md", "docs/producers.md"]);
    assert!(ok, "a documented example breaks the contract:\n{stderr}");
    let counts: HashMap<String, u32> = serde_json::from_str(&stdout).expect("counts");
    assert!(
        counts.get("TokenInvalidated").is_some_and(|n| *n >= 1),
        "{counts:?}"
    );
    assert!(
        counts.get("PushRequest").is_some_and(|n| *n >= 1),
        "{counts:?}"
    );
    assert!(
        counts.get("PushResult").is_some_and(|n| *n >= 1),
        "{counts:?}"
    );

    // The feedback example is exactly what the worker writes for that event.
    let example: serde_json::Value =
        serde_json::from_str(&doc_example("docs/feedback.md", "TokenInvalidated")).expect("json");
    let event: TokenInvalidated = serde_json::from_value(example.clone()).expect("event");
    let written: serde_json::Value = serde_json::from_slice(
        &push_dispatch_feedback::encode_event(&event, Encoding::Json).expect("encode"),
    )
    .expect("json");
    assert_eq!(
        written, example,
        "docs/feedback.md's example is not the worker's output"
    );
    assert_eq!(event.event_id.len(), 32);
    assert!(expected_reasons().contains(event.reason().as_str_name()));

    // The producers' example is a request (the_documented_rest_publish_is_delivered
    // sends it through the worker).
    let request: PushRequest =
        serde_json::from_str(&doc_example("docs/producers.md", "PushRequest")).expect("request");
    assert!(!request.targets.is_empty() && !request.request_id.is_empty());
}

/// The shell block after `<!-- contract: NAME -->` in a doc.
fn doc_shell(doc: &str, name: &str) -> String {
    let text = std::fs::read_to_string(repo().join(doc)).expect("read doc");
    let marker = format!("<!-- contract: {name} -->");
    let start = text
        .find(&marker)
        .unwrap_or_else(|| panic!("{doc}: no {marker}"));
    let rest = &text[start..];
    let body = &rest[rest.find("```sh\n").expect("sh block") + 6..];
    body[..body.find("\n```").expect("block end")].to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_documented_rest_publish_is_delivered() {
    let env = TestEnv::new("contract-rest", Settings::default()).await;
    env.provision();
    let _worker = env.start_worker().await;
    let request = doc_example("docs/producers.md", "PushRequest");
    let targets = serde_json::from_str::<PushRequest>(&request)
        .expect("request")
        .targets
        .len();
    std::fs::write(env.dir.path().join("request.json"), &request).expect("write");
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c"])
        .arg(doc_shell("docs/producers.md", "rest-publish"))
        .current_dir(env.dir.path())
        // What the doc's variables stand for, here: the emulator takes any token.
        .env("PUBSUB_API", format!("http://{}", env.emulator))
        .env("PROJECT", &env.project)
        .env("TOPIC", "push-requests")
        .env("ACCESS_TOKEN", "emulator-ignores-it")
        .output()
        .expect("run the documented curl");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("messageIds"),
        "the documented REST publish failed ({}): {stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    env.wait_metric(
        "push_dispatch_sends_total",
        &[("outcome", "delivered")],
        targets as f64,
    )
    .await;
    env.wait_metric("push_dispatch_messages_total", &[("result", "acked")], 1.0)
        .await;
    assert_eq!(
        env.metric(
            "push_dispatch_messages_total",
            &[("result", "dead_lettered")]
        )
        .await,
        0.0
    );
}

/// Feeds published results to the Python check; panics with its reasons if
/// the contract is violated. Returns `MessageToDict` of each.
fn check_results(tools: &Path, dir: &Path, messages: &[Message]) -> Vec<serde_json::Value> {
    let lines: Vec<String> = messages
        .iter()
        .map(|m| {
            serde_json::json!({"data_hex": to_hex(&m.data), "attributes": m.attributes}).to_string()
        })
        .collect();
    let input = dir.join("results.jsonl");
    std::fs::write(&input, lines.join("\n")).expect("write messages");
    let (ok, stdout, stderr) = contract_py(tools, &["results", input.to_str().expect("path")]);
    assert!(
        ok,
        "the independent decoder refused the worker's results:\n{stderr}"
    );
    let parsed: Vec<serde_json::Value> = serde_json::from_str(&stdout).expect("checker output");
    parsed.into_iter().map(|v| v["json"].clone()).collect()
}

#[tokio::test]
async fn results_reach_a_subscription_filtered_on_the_app_and_parse_with_googles_protobuf_runtime()
{
    let env = TestEnv::new(
        "results-filter",
        Settings {
            results_yaml: Some("  topic: push-results\n  retention: 2d".into()),
            ..Settings::default()
        },
    )
    .await;
    env.provision();
    // Provision created the results topic with its retention.
    let topic = env
        .clients
        .topics
        .get_topic()
        .set_topic(env.topic("push-results"))
        .send()
        .await
        .expect("provision created the results topic");
    assert_eq!(
        topic.message_retention_duration.map(|d| d.seconds()),
        Some(2 * 86_400)
    );
    // The filter of docs/producers.md. The emulator stores it but does not
    // apply it (it delivers every message), so what it would select is
    // checked on the attributes below; on Google Cloud, Pub/Sub applies it.
    let filter = r#"attributes.app = "default""#;
    let sub = env
        .create_filtered_subscription("push-results", "results-default", filter)
        .await;
    let stored = env
        .clients
        .subscriptions
        .get_subscription()
        .set_subscription(sub)
        .send()
        .await
        .expect("get subscription");
    assert_eq!(stored.filter, filter);
    let mut all = env.collect("results-default");
    let _worker = env.start_worker().await;

    let ok = apns_token("ab12");
    let to_default = format!(
        r#"{{"requestId":"order-42-shipped","recipient":"user-123","targets":[{{"platform":"PLATFORM_APNS","token":"{ok}"}},{{"platform":"PLATFORM_FCM","token":"unregistered-r1"}}],"notification":{{"title":"Shipped"}}}}"#
    );
    let to_second = r#"{"requestId":"second-1","app":"second","recipient":"user-9","targets":[{"platform":"PLATFORM_FCM","token":"alive-r2"}]}"#;
    let source = env.publish_json(&to_default).await;
    env.publish_json(to_second).await;

    let everything = all.take(2).await;
    all.expect_nothing(Duration::from_millis(300)).await;
    let mut apps: Vec<&str> = everything
        .iter()
        .map(|m| m.attributes["app"].as_str())
        .collect();
    apps.sort_unstable();
    assert_eq!(apps, ["default", "second"], "one result per request");
    // What the filter selects: exactly the default app's result.
    let filtered: Vec<&Message> = everything
        .iter()
        .filter(|m| m.attributes.get("app").is_some_and(|a| a == "default"))
        .collect();
    assert_eq!(filtered.len(), 1);
    let m = filtered[0];
    assert_eq!(m.attributes["app"], "default");
    assert_eq!(m.attributes["outcome"], "partial");
    assert_eq!(m.attributes["request_id"], "order-42-shipped");
    assert_eq!(m.attributes["complete"], "true");
    assert_eq!(m.attributes["event_type"], "push.v1.PushResult");

    // Ours, read back.
    let ours: push_dispatch_proto::v1::PushResult =
        serde_json::from_slice(&m.data).expect("proto3 JSON");
    assert_eq!(ours.source_message_id, source);
    assert_eq!(ours.push_attempt, 1);
    let targets: Vec<(&str, &str, &str)> = ours
        .targets
        .iter()
        .map(|t| {
            (
                t.token.as_str(),
                t.outcome().as_str_name(),
                t.reason.as_str(),
            )
        })
        .collect();
    assert_eq!(
        targets,
        [
            (ok.as_str(), "TARGET_OUTCOME_DELIVERED", ""),
            (
                "unregistered-r1",
                "TARGET_OUTCOME_TOKEN_INVALID",
                "UNREGISTERED"
            ),
        ]
    );

    // Google's runtime, from push.proto: the same fields, attributes consistent.
    let Some(tools) = python_tools() else { return };
    let py = check_results(&tools, env.dir.path(), &everything);
    let theirs = py
        .iter()
        .find(|v| v["app"] == "default")
        .expect("the default app's result");
    assert_eq!(theirs["requestId"], "order-42-shipped");
    assert_eq!(theirs["complete"], true);
    assert_eq!(
        theirs["targets"][1]["outcome"],
        "TARGET_OUTCOME_TOKEN_INVALID"
    );
    assert_eq!(theirs["targets"][0]["attempts"], 1);
    eprintln!(
        "captured result (docs/producers.md): {}",
        String::from_utf8_lossy(&m.data)
    );
}
