//! Log lines in Cloud Logging's structured format.
//!
//! One JSON object per line with `severity`, `message`, `time` and the
//! event's fields, plus `logging.googleapis.com/trace`, `…/spanId` and
//! `…/trace_sampled` when the event happens inside a traced span, so that
//! Cloud Logging links each line to its trace in Cloud Trace. Fields of the
//! enclosing spans are merged in (the innermost wins).
//!
//! With a service context ([`CloudLogging::with_service`]), ERROR events
//! also carry what Error Reporting needs to group them (see
//! [`crate::error_reporting`]).
//!
//! Device tokens are redacted by the code that logs them (first 8
//! characters), and no secret is ever a field, so nothing here filters.

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use tracing::Dispatch;
use tracing::dispatcher::WeakDispatch;

use opentelemetry::trace::TraceContextExt;
use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

use crate::error_reporting::{ReportLocation, ServiceContext, annotate};

/// The Cloud Logging formatter; `project_id` names the trace resource.
#[derive(Clone, Debug)]
pub struct CloudLogging {
    project_id: String,
    dispatch: Arc<OnceLock<WeakDispatch>>,
    service: Option<ServiceContext>,
}

impl CloudLogging {
    /// A formatter for traces of `project_id`.
    pub fn new(project_id: &str) -> CloudLogging {
        CloudLogging {
            project_id: project_id.to_string(),
            dispatch: Arc::new(OnceLock::new()),
            service: None,
        }
    }

    /// ERROR events also become Error Reporting events of `service`.
    pub fn with_service(mut self, service: ServiceContext) -> CloudLogging {
        self.service = Some(service);
        self
    }

    /// Tells the formatter which subscriber it runs in, so that it can read
    /// the OpenTelemetry context of spans. Without it, lines carry no trace.
    pub fn bind(&self, dispatch: &Dispatch) {
        let _ = self.dispatch.set(dispatch.downgrade());
    }
}

/// Cloud Logging's severity names.
pub fn severity(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "ERROR",
        Level::WARN => "WARNING",
        Level::INFO => "INFO",
        Level::DEBUG | Level::TRACE => "DEBUG",
    }
}

#[derive(Default)]
struct JsonVisitor {
    fields: Map<String, Value>,
}

impl Visit for JsonVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.fields
            .insert(field.name().to_string(), Value::String(value.to_string()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.fields
            .insert(field.name().to_string(), Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.fields
            .insert(field.name().to_string(), Value::from(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.fields
            .insert(field.name().to_string(), Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.fields
            .insert(field.name().to_string(), Value::from(value));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.fields
            .insert(field.name().to_string(), Value::String(value.to_string()));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.fields.insert(
            field.name().to_string(),
            Value::String(format!("{value:?}")),
        );
    }
}

impl<S, N> FormatEvent<S, N> for CloudLogging
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut out = Map::new();
        // The OpenTelemetry context of the innermost span, read before any
        // span extensions are borrowed below (it locks them itself).
        // (`tracing`'s current dispatcher is a no-op while an event is being
        // dispatched, so the formatter keeps its own handle to the subscriber.)
        let otel_context = ctx.lookup_current().and_then(|span| {
            let dispatch = self.dispatch.get()?.upgrade()?;
            tracing_opentelemetry::get_otel_context(&span.id(), &dispatch)
        });
        // Span fields, outermost first, so that inner spans override.
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let extensions = span.extensions();
                if let Some(fields) = extensions.get::<FormattedFields<N>>()
                    && let Ok(Value::Object(map)) = serde_json::from_str::<Value>(fields)
                {
                    out.extend(map);
                }
            }
        }
        let mut visitor = JsonVisitor::default();
        event.record(&mut visitor);
        let message = visitor
            .fields
            .remove("message")
            .unwrap_or(Value::String(String::new()));
        out.extend(visitor.fields);
        let meta = event.metadata();
        out.insert("severity".into(), Value::from(severity(meta.level())));
        out.insert("message".into(), message);
        out.insert(
            "time".into(),
            Value::from(humantime::format_rfc3339_nanos(SystemTime::now()).to_string()),
        );
        out.insert("target".into(), Value::from(meta.target()));
        if *meta.level() == Level::ERROR
            && let Some(service) = &self.service
        {
            let at = ReportLocation {
                file: meta.file().unwrap_or("unknown").to_string(),
                line: meta.line().unwrap_or(0),
                function: meta.module_path().unwrap_or(meta.target()).to_string(),
            };
            annotate(&mut out, service, &at);
        }

        let context = otel_context.unwrap_or_default();
        let span = context.span();
        let sc = span.span_context();
        if sc.is_valid() {
            out.insert(
                "logging.googleapis.com/trace".into(),
                Value::from(format!(
                    "projects/{}/traces/{}",
                    self.project_id,
                    sc.trace_id()
                )),
            );
            out.insert(
                "logging.googleapis.com/spanId".into(),
                Value::from(sc.span_id().to_string()),
            );
            out.insert(
                "logging.googleapis.com/trace_sampled".into(),
                Value::from(sc.is_sampled()),
            );
        }
        let line = serde_json::to_string(&Value::Object(out)).map_err(|_| fmt::Error)?;
        writeln!(writer, "{line}")
    }
}
