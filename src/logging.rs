//! Log output: JSON lines for Cloud Logging (`severity`, `message`, `time`)
//! or readable text, filtered by `telemetry.log_level`.

use std::io::IsTerminal;

use push_dispatch_config::{LogFormat, TelemetryConfig};
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber; logs go to standard error.
pub fn init(telemetry: &TelemetryConfig) -> Result<(), String> {
    let filter = EnvFilter::try_new(&telemetry.log_level).map_err(|e| {
        format!(
            "config key `telemetry.log_level`: `{}` is not a log filter ({e}); use info, debug, warn, error or e.g. push_dispatch=debug,info",
            telemetry.log_level
        )
    })?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match telemetry.log_format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text => builder
            .with_target(false)
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
    };
    result.map_err(|e| format!("cannot install the logger: {e}"))
}
