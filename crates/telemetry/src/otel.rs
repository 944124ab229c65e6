//! OpenTelemetry traces exported over OTLP/gRPC.
//!
//! With `telemetry.otlp_endpoint` set (e.g. `http://otel-collector:4317`),
//! spans go through a batch processor on the tokio runtime to the OTLP
//! exporter; sampling is parent-based with `telemetry.sample_ratio` for root
//! traces, so a producer's sampling decision carried in `traceparent` is kept.
//! Cloud Trace takes OTLP through an OpenTelemetry Collector (see
//! docs/operations.md); opentelemetry-stackdriver is deprecated and is not used.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};

/// The exporter could not be built.
#[derive(Debug, thiserror::Error)]
#[error(
    "config key `telemetry.otlp_endpoint`: cannot build the OTLP exporter for {endpoint}: {source}"
)]
pub struct OtelError {
    /// The endpoint.
    pub endpoint: String,
    /// The SDK's error.
    #[source]
    pub source: opentelemetry_otlp::ExporterBuildError,
}

/// Builds the tracer provider for `endpoint`.
pub fn provider(endpoint: &str, sample_ratio: f64) -> Result<SdkTracerProvider, OtelError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .map_err(|source| OtelError {
            endpoint: endpoint.to_string(),
            source,
        })?;
    let processor =
        opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
            exporter,
            opentelemetry_sdk::runtime::Tokio,
        )
        .build();
    Ok(SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            sample_ratio,
        ))))
        .with_resource(
            Resource::builder()
                .with_service_name("push-dispatch")
                .with_attribute(opentelemetry::KeyValue::new(
                    "service.version",
                    env!("CARGO_PKG_VERSION"),
                ))
                .build(),
        )
        .build())
}

/// A tracer from `provider`.
pub fn tracer(provider: &SdkTracerProvider) -> opentelemetry_sdk::trace::SdkTracer {
    provider.tracer("push-dispatch")
}
