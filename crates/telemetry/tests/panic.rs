//! A panic becomes one Cloud Logging JSON line that Error Reporting picks
//! up (its own test binary: the panic hook is process-wide).

use push_dispatch_telemetry::capture::Capture;
use push_dispatch_telemetry::error_reporting::{
    REPORTED_ERROR_EVENT, ServiceContext, install_panic_hook,
};

#[test]
fn a_panic_is_one_json_line_for_error_reporting() {
    let capture = Capture::default();
    let out = capture.clone();
    install_panic_hook(
        ServiceContext {
            service: "push-dispatch".into(),
            version: "1.2.3".into(),
        },
        move || Box::new(out.clone()),
    );
    let worker = std::thread::Builder::new()
        .name("gauge-refresher".into())
        .spawn(|| panic!("the refresher fell over"))
        .expect("thread");
    assert!(worker.join().is_err(), "it panicked");
    let _ = std::panic::take_hook();
    let text = capture.text();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "one line, not a multi-line report: {text}");
    let entry: serde_json::Value = serde_json::from_str(lines[0]).expect("JSON");
    assert_eq!(entry["@type"], REPORTED_ERROR_EVENT);
    assert_eq!(entry["severity"], "CRITICAL");
    assert_eq!(entry["serviceContext"]["service"], "push-dispatch");
    assert_eq!(entry["serviceContext"]["version"], "1.2.3");
    let message = entry["message"].as_str().expect("message");
    assert!(
        message.contains("thread 'gauge-refresher' panicked at"),
        "{message}"
    );
    assert!(message.contains("the refresher fell over"), "{message}");
    assert!(message.contains("stack backtrace:"), "{message}");
    let at = &entry["context"]["reportLocation"];
    assert!(
        at["filePath"]
            .as_str()
            .is_some_and(|f| f.ends_with("panic.rs")),
        "{entry}"
    );
    assert!(at["lineNumber"].as_u64().is_some_and(|l| l > 0), "{entry}");
}
