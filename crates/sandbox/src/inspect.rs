//! The `/sandbox/*` control endpoints: `GET deliveries`, `GET stats`,
//! `POST reset`, `GET|POST faults` (a POST merges the given flags into the
//! current ones) and `GET healthz`.
//!
//! This is the sandbox's control plane: resetting and changing fault flags
//! act on the whole sandbox, so the handler takes the shared [`State`].

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::Value;

use crate::faults::Faults;
use crate::http_util::{self, Body};
use crate::state::State;

/// Largest `POST /sandbox/faults` body.
const FAULTS_BODY_LIMIT: usize = 64 * 1024;

/// `/sandbox/deliveries`, `/sandbox/stats`, `/sandbox/reset`, `/sandbox/faults`, `/sandbox/healthz`.
pub(crate) async fn handle(state: &State, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path();
    match (req.method(), path) {
        (&Method::GET, "/sandbox/deliveries") => {
            http_util::json_value(StatusCode::OK, &state.recorder.deliveries())
        }
        (&Method::GET, "/sandbox/stats") => http_util::json_value(StatusCode::OK, &state.stats()),
        (&Method::POST, "/sandbox/reset") => {
            state.reset();
            http_util::json(StatusCode::OK, Bytes::from_static(br#"{"reset":true}"#))
        }
        (&Method::GET, "/sandbox/faults") => {
            http_util::json_value(StatusCode::OK, &state.faults.current())
        }
        (&Method::POST, "/sandbox/faults") => {
            let body = match http_util::read_body(req.into_body(), FAULTS_BODY_LIMIT).await {
                Ok(b) => b,
                Err(_) => return bad_request("body missing or larger than 64 KiB"),
            };
            match merge_faults(state.faults.current(), &body) {
                Ok(faults) => {
                    state.apply_faults(faults);
                    http_util::json_value(StatusCode::OK, &state.faults.current())
                }
                Err(msg) => bad_request(&msg),
            }
        }
        (&Method::GET, "/sandbox/healthz") => {
            http_util::json(StatusCode::OK, Bytes::from_static(br#"{"ok":true}"#))
        }
        (_, "/sandbox/deliveries" | "/sandbox/stats" | "/sandbox/reset" | "/sandbox/faults") => {
            http_util::json(
                StatusCode::METHOD_NOT_ALLOWED,
                Bytes::from_static(br#"{"error":"method not allowed"}"#),
            )
        }
        _ => http_util::json(
            StatusCode::NOT_FOUND,
            Bytes::from_static(br#"{"error":"not found"}"#),
        ),
    }
}

fn bad_request(msg: &str) -> Response<Body> {
    http_util::json_value(
        StatusCode::BAD_REQUEST,
        &serde_json::json!({ "error": msg }),
    )
}

/// Overlays the keys of a JSON object on the current flags, so that
/// `{"latency":"20ms"}` changes the latency and nothing else.
fn merge_faults(current: Faults, body: &[u8]) -> Result<Faults, String> {
    let patch: Value = serde_json::from_slice(body).map_err(|e| format!("invalid JSON: {e}"))?;
    let Value::Object(patch) = patch else {
        return Err("expected a JSON object of fault flags".into());
    };
    let mut merged = serde_json::to_value(current).map_err(|e| e.to_string())?;
    if let Value::Object(map) = &mut merged {
        map.extend(patch);
    }
    let faults: Faults = serde_json::from_value(merged).map_err(|e| e.to_string())?;
    faults.validate().map_err(|e| e.to_string())?;
    Ok(faults)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_merge_keeps_other_flags() {
        let current = Faults {
            failure_rate: 0.5,
            ..Faults::default()
        };
        let merged = merge_faults(current, br#"{"latency":"5ms"}"#).unwrap();
        assert_eq!(merged.failure_rate, 0.5);
        assert_eq!(merged.latency, std::time::Duration::from_millis(5));
        assert!(merge_faults(current, br#"{"failure_rate":2}"#).is_err());
        assert!(merge_faults(current, br#"[1]"#).is_err());
    }
}
