//! Telemetry of push-dispatch: logs and traces.
//!
//! * [`logging`]: Cloud Logging's structured JSON (`severity`, `message`,
//!   `time`, trace links) or readable text, filtered by `telemetry.log_level`.
//! * [`otel`]: OpenTelemetry traces over OTLP, parent-based sampling.
//! * [`propagation`]: W3C trace context in Pub/Sub attributes, in and out.
//! * [`error_reporting`]: ERROR events and panics shaped for Error Reporting.
//! * [`capture`]: a writer that keeps what is logged, for tests.
//!
//! [`init`] installs both as the global `tracing` subscriber; keep the
//! returned [`Telemetry`] and call [`Telemetry::shutdown`] before exiting so
//! that the last spans are exported.

pub mod capture;
pub mod error_reporting;
pub mod logging;
pub mod otel;
pub mod propagation;

use std::io::IsTerminal;

use push_dispatch_config::{LogFormat, TelemetryConfig};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;

/// Telemetry could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The log filter is not valid.
    #[error(
        "config key `telemetry.log_level`: `{value}` is not a log filter ({source}); use info, debug, warn, error or e.g. push_dispatch=debug,info"
    )]
    Filter {
        /// The value.
        value: String,
        /// Why.
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
    /// The OTLP exporter could not be built.
    #[error(transparent)]
    Otel(#[from] otel::OtelError),
    /// A global subscriber was already installed.
    #[error("cannot install the logger: {0}")]
    Install(String),
}

/// Installed telemetry; shut it down to flush spans.
#[derive(Debug)]
pub struct Telemetry {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Telemetry {
    /// Flushes and stops the span exporter.
    pub fn shutdown(self) {
        if let Some(p) = self.provider
            && let Err(e) = p.shutdown()
        {
            eprintln!("telemetry: span exporter shutdown: {e}");
        }
    }
}

/// Installs logging (and tracing when `otlp_endpoint` is set) globally.
/// Logs go to standard error. Call inside the tokio runtime. With JSON logs,
/// ERROR events and panics (a panic hook is installed) carry `service`'s
/// Error Reporting fields.
pub fn init(
    config: &TelemetryConfig,
    project_id: &str,
    service: &error_reporting::ServiceContext,
) -> Result<Telemetry, TelemetryError> {
    let filter =
        EnvFilter::try_new(&config.log_level).map_err(|source| TelemetryError::Filter {
            value: config.log_level.clone(),
            source,
        })?;
    let provider = match &config.otlp_endpoint {
        Some(endpoint) => Some(otel::provider(
            endpoint,
            config.otlp_protocol,
            config.otlp_auth,
            config.sample_ratio,
            project_id,
        )?),
        None => None,
    };
    let otel_layer = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(otel::tracer(p)));
    let registry = tracing_subscriber::registry().with(filter).with(otel_layer);
    let dispatch = match config.log_format {
        LogFormat::Json => {
            error_reporting::install_panic_hook(service.clone(), || Box::new(std::io::stderr()));
            let format = logging::CloudLogging::new(project_id).with_service(service.clone());
            let dispatch = tracing::Dispatch::new(
                registry.with(
                    tracing_subscriber::fmt::layer()
                        .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
                        .event_format(format.clone())
                        .with_writer(std::io::stderr),
                ),
            );
            format.bind(&dispatch);
            dispatch
        }
        LogFormat::Text => tracing::Dispatch::new(
            registry.with(
                tracing_subscriber::fmt::layer()
                    .with_target(false)
                    .with_ansi(std::io::stderr().is_terminal())
                    .with_writer(std::io::stderr),
            ),
        ),
    };
    tracing::dispatcher::set_global_default(dispatch)
        .map_err(|e| TelemetryError::Install(e.to_string()))?;
    // `log` records (from dependencies) are not bridged: they stay silent.
    Ok(Telemetry { provider })
}
