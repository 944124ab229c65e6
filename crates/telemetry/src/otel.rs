//! OpenTelemetry traces exported over OTLP (gRPC or HTTP).
//!
//! With `telemetry.otlp_endpoint` set (e.g. `http://otel-collector:4317`),
//! spans go through a batch processor on the tokio runtime to the OTLP
//! exporter; sampling is parent-based with `telemetry.sample_ratio` for root
//! traces, so a producer's sampling decision carried in `traceparent` is kept.
//! Cloud Trace takes OTLP through an OpenTelemetry Collector, or directly at
//! `https://telemetry.googleapis.com` over HTTP with `otlp_auth: google`
//! (a gcp_auth bearer per export). opentelemetry-stackdriver is deprecated and
//! is not used.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use push_dispatch_config::{OtlpAuth, OtlpProtocol};

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

/// The scope Cloud Trace's OTLP endpoint needs.
pub const TRACE_APPEND_SCOPE: &str = "https://www.googleapis.com/auth/trace.append";

/// An OTLP/HTTP client that adds a Google OAuth bearer (Application Default
/// Credentials) to every export, for `https://telemetry.googleapis.com`.
#[derive(Clone)]
pub struct GoogleAuthClient {
    inner: reqwest::Client,
    auth: std::sync::Arc<tokio::sync::OnceCell<std::sync::Arc<dyn gcp_auth::TokenProvider>>>,
}

impl std::fmt::Debug for GoogleAuthClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GoogleAuthClient").finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for GoogleAuthClient {
    async fn send_bytes(
        &self,
        mut request: opentelemetry_http::Request<opentelemetry_http::Bytes>,
    ) -> Result<
        opentelemetry_http::Response<opentelemetry_http::Bytes>,
        opentelemetry_http::HttpError,
    > {
        let provider = self
            .auth
            .get_or_try_init(gcp_auth::provider)
            .await
            .map_err(|e| Box::new(e) as opentelemetry_http::HttpError)?;
        let token = provider
            .token(&[TRACE_APPEND_SCOPE])
            .await
            .map_err(|e| Box::new(e) as opentelemetry_http::HttpError)?;
        let value = format!("Bearer {}", token.as_str()).parse().map_err(
            |e: reqwest::header::InvalidHeaderValue| Box::new(e) as opentelemetry_http::HttpError,
        )?;
        request.headers_mut().insert("authorization", value);
        self.inner.send_bytes(request).await
    }
}

/// Builds the tracer provider for `endpoint`.
pub fn provider(
    endpoint: &str,
    protocol: OtlpProtocol,
    auth: OtlpAuth,
    sample_ratio: f64,
    project_id: &str,
) -> Result<SdkTracerProvider, OtelError> {
    let error = |source| OtelError {
        endpoint: endpoint.to_string(),
        source,
    };
    let exporter = match protocol {
        OtlpProtocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .build()
            .map_err(error)?,
        OtlpProtocol::Http => {
            let url = if endpoint.trim_end_matches('/').ends_with("/v1/traces") {
                endpoint.to_string()
            } else {
                format!("{}/v1/traces", endpoint.trim_end_matches('/'))
            };
            let builder = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_endpoint(url);
            match auth {
                OtlpAuth::None => builder.with_http_client(reqwest::Client::new()).build(),
                OtlpAuth::Google => builder
                    .with_http_client(GoogleAuthClient {
                        inner: reqwest::Client::new(),
                        auth: std::sync::Arc::new(tokio::sync::OnceCell::new()),
                    })
                    .build(),
            }
            .map_err(error)?
        }
    };
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
                .with_attribute(opentelemetry::KeyValue::new(
                    "gcp.project_id",
                    project_id.to_string(),
                ))
                .build(),
        )
        .build())
}

/// A tracer from `provider`.
pub fn tracer(provider: &SdkTracerProvider) -> opentelemetry_sdk::trace::SdkTracer {
    provider.tracer("push-dispatch")
}
