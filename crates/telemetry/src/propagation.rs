//! W3C trace context carried in Pub/Sub message attributes.
//!
//! Producers put `traceparent`/`tracestate` in the attributes; Google's
//! Pub/Sub client libraries write the same values under `googclient_`-prefixed
//! keys. [`extract`] reads either (the plain key wins); [`inject`] writes both
//! onto what we publish (feedback events, republished requests, dead letters)
//! so that their consumers continue the trace.

use std::collections::HashMap;

use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry_sdk::propagation::TraceContextPropagator;

/// Prefix Google's client libraries give trace attributes.
pub const GOOGLE_PREFIX: &str = "googclient_";

struct AttributesExtractor<'a>(&'a HashMap<String, String>);

impl Extractor for AttributesExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .get(key)
            .or_else(|| self.0.get(&format!("{GOOGLE_PREFIX}{key}")))
            .map(String::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

struct AttributesInjector<'a>(&'a mut HashMap<String, String>);

impl Injector for AttributesInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0
            .insert(format!("{GOOGLE_PREFIX}{key}"), value.clone());
        self.0.insert(key.to_string(), value);
    }
}

/// The remote parent context in `attributes`, if any (else the current
/// context, as the propagator itself answers).
pub fn extract(attributes: &HashMap<String, String>) -> Context {
    // Most messages carry no trace context: two lookups instead of the
    // propagator's allocations (about 1,000 instructions a message).
    if !attributes.contains_key("traceparent")
        && !attributes.contains_key(concat!("googclient_", "traceparent"))
    {
        return Context::current();
    }
    TraceContextPropagator::new().extract(&AttributesExtractor(attributes))
}

/// Writes `context`'s span into `attributes` (`traceparent`, `tracestate`
/// and their `googclient_` twins). Writes nothing for an invalid span.
pub fn inject(context: &Context, attributes: &mut HashMap<String, String>) {
    TraceContextPropagator::new().inject_context(context, &mut AttributesInjector(attributes));
}

/// Injects the context of the current `tracing` span.
pub fn inject_current(attributes: &mut HashMap<String, String>) {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    inject(&tracing::Span::current().context(), attributes);
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::TraceContextExt;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn extracts_the_plain_and_the_google_keys() {
        for key in ["traceparent", "googclient_traceparent"] {
            let attrs = HashMap::from([(key.to_string(), PARENT.to_string())]);
            let cx = extract(&attrs);
            let span = cx.span();
            let sc = span.span_context();
            assert!(sc.is_remote(), "{key}");
            assert_eq!(
                sc.trace_id().to_string(),
                "4bf92f3577b34da6a3ce929d0e0e4736"
            );
            assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");
        }
    }

    #[test]
    fn injects_both_keys_and_round_trips() {
        let attrs = HashMap::from([("traceparent".to_string(), PARENT.to_string())]);
        let cx = extract(&attrs);
        let mut out = HashMap::new();
        inject(&cx, &mut out);
        assert_eq!(out["traceparent"], PARENT);
        assert_eq!(out["googclient_traceparent"], PARENT);
    }

    #[test]
    fn no_context_injects_nothing() {
        let mut out = HashMap::new();
        inject(&Context::new(), &mut out);
        assert!(out.is_empty());
        assert!(!extract(&HashMap::new()).span().span_context().is_valid());
    }
}
