//! Errors that reach Google Cloud Error Reporting.
//!
//! Error Reporting groups log entries whose JSON carries `@type` =
//! [`REPORTED_ERROR_EVENT`], a `serviceContext` (service and version) and,
//! for languages whose stack traces it cannot parse (Rust among them),
//! `context.reportLocation` (file, line, function). Two kinds of lines get
//! that shape:
//!
//! * every ERROR-level log event (the logging discipline: ERROR means a bug
//!   or an outage, such as a stream that ended by itself), through
//!   [`crate::logging::CloudLogging`];
//! * a panic, through [`install_panic_hook`]: one JSON line with the panic
//!   message, its location and the backtrace, instead of the default
//!   plain-text report that Cloud Logging would split into lines.
//!
//! Release builds keep their symbol names (`strip = "debuginfo"`), so that
//! backtraces name functions.

use std::backtrace::Backtrace;
use std::io::Write;
use std::panic::PanicHookInfo;
use std::time::SystemTime;

use serde_json::{Map, Value, json};

/// The `@type` Error Reporting looks for.
pub const REPORTED_ERROR_EVENT: &str =
    "type.googleapis.com/google.devtools.clouderrorreporting.v1beta1.ReportedErrorEvent";

/// Which service and version an error belongs to (Error Reporting groups by them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceContext {
    /// E.g. `push-dispatch`.
    pub service: String,
    /// E.g. the crate version.
    pub version: String,
}

/// Where an error was reported from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportLocation {
    /// Source file.
    pub file: String,
    /// Line in it.
    pub line: u32,
    /// Function or module.
    pub function: String,
}

/// Adds the Error Reporting fields to a log entry's JSON object.
pub fn annotate(entry: &mut Map<String, Value>, service: &ServiceContext, at: &ReportLocation) {
    entry.insert("@type".into(), Value::from(REPORTED_ERROR_EVENT));
    entry.insert(
        "serviceContext".into(),
        json!({"service": service.service, "version": service.version}),
    );
    entry.insert(
        "context".into(),
        json!({"reportLocation": {
            "filePath": at.file,
            "lineNumber": at.line,
            "functionName": at.function,
        }}),
    );
}

/// The log entry of a panic: severity, message (with the backtrace), time,
/// and the Error Reporting fields.
pub fn panic_entry(
    info: &PanicHookInfo<'_>,
    backtrace: &Backtrace,
    service: &ServiceContext,
) -> Value {
    let payload = info
        .payload()
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| info.payload().downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "Box<dyn Any>".to_string());
    let thread = std::thread::current();
    let thread = thread.name().unwrap_or("unnamed");
    let (file, line) = info.location().map_or(("unknown".to_string(), 0), |l| {
        (l.file().to_string(), l.line())
    });
    let mut entry = Map::new();
    entry.insert("severity".into(), Value::from("CRITICAL"));
    entry.insert(
        "message".into(),
        Value::from(format!(
            "thread '{thread}' panicked at {file}:{line}:\n{payload}\nstack backtrace:\n{backtrace}"
        )),
    );
    entry.insert(
        "time".into(),
        Value::from(humantime::format_rfc3339_nanos(SystemTime::now()).to_string()),
    );
    annotate(
        &mut entry,
        service,
        &ReportLocation {
            file,
            line,
            function: format!("thread {thread}"),
        },
    );
    Value::Object(entry)
}

/// Replaces the panic hook: every panic is written to `out` (standard
/// error in the binary) as one Cloud Logging JSON line that Error Reporting
/// picks up, with a backtrace whatever `RUST_BACKTRACE` says.
pub fn install_panic_hook<W>(service: ServiceContext, out: W)
where
    W: Fn() -> Box<dyn Write> + Send + Sync + 'static,
{
    std::panic::set_hook(Box::new(move |info| {
        let entry = panic_entry(info, &Backtrace::force_capture(), &service);
        let mut writer = out();
        // A panic while reporting a panic would abort: write what we can.
        let _ = writeln!(writer, "{entry}");
        let _ = writer.flush();
    }));
}
