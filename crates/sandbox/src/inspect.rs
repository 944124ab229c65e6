//! What the sandbox saw: the ring of accepted pushes, counters per outcome, the
//! per-token counters behind the scripted `f1a0`/`flaky-` answers, and the
//! `/sandbox/*` endpoints that expose and reset them.
//!
//! Everything here is bounded (deliveries: the newest 10,000; flaky counters:
//! 100,000 tokens, then forgotten) and cheap to update: counters are atomics,
//! a delivery keeps the request's bytes and is parsed only when listed.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, PoisonError};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::apns::Reason as ApnsReason;
use crate::faults::Faults;
use crate::fcm::Failure as FcmFailure;
use crate::http_util::{self, Body};
use crate::router::State;

/// How many accepted pushes `/sandbox/deliveries` keeps (newest last).
pub(crate) const DELIVERY_CAPACITY: usize = 10_000;
/// How many tokens the flaky counters remember before starting over.
const FLAKY_CAPACITY: usize = 100_000;
/// How many times a flaky token fails before it is accepted.
const FLAKY_FAILURES: u8 = 2;
/// Largest `POST /sandbox/faults` body.
const FAULTS_BODY_LIMIT: usize = 64 * 1024;

/// The provider a push was sent to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Platform {
    /// Apple Push Notification service.
    Apns,
    /// Firebase Cloud Messaging HTTP v1.
    Fcm,
}

/// One accepted push, as listed by `GET /sandbox/deliveries`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    /// `apns` or `fcm`.
    pub platform: Platform,
    /// APNs: the device token from the path. FCM: `message.token`, or
    /// `topic:NAME` / `condition:EXPR` for the other targets.
    pub token: String,
    /// APNs: the `apns-id` answered. FCM: the message `name` answered.
    pub id: String,
    /// APNs: `apns-topic`, `apns-push-type`, `apns-priority`,
    /// `apns-expiration`, `apns-collapse-id` as sent (absent ones left out).
    /// FCM: empty.
    pub headers: BTreeMap<String, String>,
    /// APNs: the JSON payload. FCM: the `message` object.
    pub payload: Value,
    /// When the sandbox accepted it (ms since the Unix epoch).
    pub received_at_ms: u64,
}

/// Counters since start or the last reset, as `GET /sandbox/stats` shows them.
///
/// Outcome labels are `"200"` or `"<status> <reason>"`: APNs
/// `"410 Unregistered"`, `"403 InvalidProviderToken"`…; FCM
/// `"404 UNREGISTERED"`, `"400 INVALID_ARGUMENT"` (payload),
/// `"400 INVALID_ARGUMENT (token)"`, `"401 UNAUTHENTICATED"`…
/// Outcomes never seen are left out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Stats {
    /// APNs answers per outcome label.
    pub apns: BTreeMap<String, u64>,
    /// FCM answers per outcome label.
    pub fcm: BTreeMap<String, u64>,
    /// Access tokens issued by `/token`.
    pub oauth_tokens_issued: u64,
    /// `/token` requests refused.
    pub oauth_rejected: u64,
    /// ES256 signature checks done for APNs provider tokens (cache misses).
    pub jwt_verifications: u64,
    /// Distinct valid APNs provider tokens seen (a client sharing one token
    /// generation across its connections shows 1 per refresh).
    pub apns_token_generations: u64,
    /// APNs provider tokens expired by the `expire_provider_tokens` fault.
    pub provider_tokens_expired: u64,
    /// Connections accepted (h2c, HTTP/1.1 and TLS).
    pub connections: u64,
    /// GOAWAYs sent by the `goaway_every` fault.
    pub goaways: u64,
}

impl Stats {
    /// The APNs count for one label (`"200"`, `"410 Unregistered"`, …), 0 if unseen.
    pub fn apns_count(&self, label: &str) -> u64 {
        self.apns.get(label).copied().unwrap_or(0)
    }

    /// The FCM count for one label (`"200"`, `"404 UNREGISTERED"`, …), 0 if unseen.
    pub fn fcm_count(&self, label: &str) -> u64 {
        self.fcm.get(label).copied().unwrap_or(0)
    }
}

/// The APNs headers a delivery keeps, in [`Delivery::headers`] order.
pub(crate) const APNS_DELIVERY_HEADERS: [&str; 5] = [
    "apns-topic",
    "apns-push-type",
    "apns-priority",
    "apns-expiration",
    "apns-collapse-id",
];

/// An accepted push as stored: the request's own bytes, parsed only when listed.
pub(crate) struct RawDelivery {
    pub platform: Platform,
    pub token: Box<str>,
    pub id: HeaderValue,
    pub headers: [Option<HeaderValue>; 5],
    pub body: Bytes,
    pub received_at_ms: u64,
}

impl RawDelivery {
    fn to_delivery(&self) -> Delivery {
        let mut headers = BTreeMap::new();
        for (name, value) in APNS_DELIVERY_HEADERS.iter().zip(&self.headers) {
            if let Some(v) = value {
                headers.insert(
                    (*name).to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                );
            }
        }
        let parsed: Value = serde_json::from_slice(&self.body).unwrap_or(Value::Null);
        let payload = match self.platform {
            Platform::Apns => parsed,
            Platform::Fcm => parsed.get("message").cloned().unwrap_or(Value::Null),
        };
        Delivery {
            platform: self.platform,
            token: self.token.to_string(),
            id: String::from_utf8_lossy(self.id.as_bytes()).into_owned(),
            headers,
            payload,
            received_at_ms: self.received_at_ms,
        }
    }
}

/// Counters, deliveries and flaky counters.
pub(crate) struct Recorder {
    /// `[0]` counts 200s, `[1 + i]` counts `ApnsReason::ALL[i]`.
    apns: Box<[AtomicU64]>,
    /// `[0]` counts 200s, `[1 + i]` counts `FcmFailure::ALL[i]`.
    fcm: Box<[AtomicU64]>,
    pub oauth_tokens_issued: AtomicU64,
    pub oauth_rejected: AtomicU64,
    pub jwt_verifications: AtomicU64,
    pub apns_token_generations: AtomicU64,
    pub provider_tokens_expired: AtomicU64,
    pub connections: AtomicU64,
    pub goaways: AtomicU64,
    deliveries: Mutex<VecDeque<RawDelivery>>,
    flaky: Mutex<HashMap<(Platform, Box<str>), u8>>,
}

fn counters(n: usize) -> Box<[AtomicU64]> {
    (0..n).map(|_| AtomicU64::new(0)).collect()
}

impl Recorder {
    pub(crate) fn new() -> Self {
        Self {
            apns: counters(ApnsReason::ALL.len() + 1),
            fcm: counters(FcmFailure::ALL.len() + 1),
            oauth_tokens_issued: AtomicU64::new(0),
            oauth_rejected: AtomicU64::new(0),
            jwt_verifications: AtomicU64::new(0),
            apns_token_generations: AtomicU64::new(0),
            provider_tokens_expired: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            goaways: AtomicU64::new(0),
            deliveries: Mutex::new(VecDeque::with_capacity(1024)),
            flaky: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn apns_accepted(&self) {
        self.apns[0].fetch_add(1, Relaxed);
    }

    pub(crate) fn apns_rejected(&self, reason: ApnsReason) {
        self.apns[1 + reason as usize].fetch_add(1, Relaxed);
    }

    pub(crate) fn fcm_accepted(&self) {
        self.fcm[0].fetch_add(1, Relaxed);
    }

    pub(crate) fn fcm_rejected(&self, failure: FcmFailure) {
        self.fcm[1 + failure as usize].fetch_add(1, Relaxed);
    }

    pub(crate) fn record(&self, delivery: RawDelivery) {
        let mut ring = self
            .deliveries
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if ring.len() >= DELIVERY_CAPACITY {
            ring.pop_front();
        }
        ring.push_back(delivery);
    }

    pub(crate) fn deliveries(&self) -> Vec<Delivery> {
        // Copy the cheap handles out first so the lock is not held while parsing.
        let raw: Vec<RawDelivery> = self
            .deliveries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|d| RawDelivery {
                platform: d.platform,
                token: d.token.clone(),
                id: d.id.clone(),
                headers: d.headers.clone(),
                body: d.body.clone(),
                received_at_ms: d.received_at_ms,
            })
            .collect();
        raw.iter().map(RawDelivery::to_delivery).collect()
    }

    /// True while `token` has failed fewer than two times (and counts this failure).
    pub(crate) fn flaky_fails(&self, platform: Platform, token: &str) -> bool {
        let mut map = self.flaky.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = map.get_mut(&(platform, Box::<str>::from(token))) {
            if *n >= FLAKY_FAILURES {
                return false;
            }
            *n += 1;
            return true;
        }
        if map.len() >= FLAKY_CAPACITY {
            map.clear();
        }
        map.insert((platform, token.into()), 1);
        true
    }

    pub(crate) fn reset(&self) {
        for c in self.apns.iter().chain(self.fcm.iter()) {
            c.store(0, Relaxed);
        }
        for c in [
            &self.oauth_tokens_issued,
            &self.oauth_rejected,
            &self.jwt_verifications,
            &self.apns_token_generations,
            &self.provider_tokens_expired,
            &self.connections,
            &self.goaways,
        ] {
            c.store(0, Relaxed);
        }
        self.deliveries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        self.flaky
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    pub(crate) fn stats(&self) -> Stats {
        let labelled = |counters: &[AtomicU64], label: &dyn Fn(usize) -> &'static str| {
            counters
                .iter()
                .enumerate()
                .filter_map(|(i, c)| {
                    let n = c.load(Relaxed);
                    (n > 0).then(|| (label(i).to_string(), n))
                })
                .collect::<BTreeMap<_, _>>()
        };
        Stats {
            apns: labelled(&self.apns, &|i| match i {
                0 => "200",
                i => ApnsReason::ALL[i - 1].label(),
            }),
            fcm: labelled(&self.fcm, &|i| match i {
                0 => "200",
                i => FcmFailure::ALL[i - 1].label(),
            }),
            oauth_tokens_issued: self.oauth_tokens_issued.load(Relaxed),
            oauth_rejected: self.oauth_rejected.load(Relaxed),
            jwt_verifications: self.jwt_verifications.load(Relaxed),
            apns_token_generations: self.apns_token_generations.load(Relaxed),
            provider_tokens_expired: self.provider_tokens_expired.load(Relaxed),
            connections: self.connections.load(Relaxed),
            goaways: self.goaways.load(Relaxed),
        }
    }
}

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
    fn flaky_fails_twice_then_passes() {
        let r = Recorder::new();
        assert!(r.flaky_fails(Platform::Apns, "f1a0aa"));
        assert!(r.flaky_fails(Platform::Apns, "f1a0aa"));
        assert!(!r.flaky_fails(Platform::Apns, "f1a0aa"));
        assert!(!r.flaky_fails(Platform::Apns, "f1a0aa"));
        assert!(r.flaky_fails(Platform::Fcm, "f1a0aa"));
        r.reset();
        assert!(r.flaky_fails(Platform::Apns, "f1a0aa"));
    }

    #[test]
    fn ring_keeps_the_newest() {
        let r = Recorder::new();
        for i in 0..DELIVERY_CAPACITY + 5 {
            r.record(RawDelivery {
                platform: Platform::Apns,
                token: i.to_string().into(),
                id: HeaderValue::from_static("x"),
                headers: Default::default(),
                body: Bytes::from_static(b"{}"),
                received_at_ms: 0,
            });
        }
        let d = r.deliveries();
        assert_eq!(d.len(), DELIVERY_CAPACITY);
        assert_eq!(d[0].token, "5");
        assert_eq!(d.last().unwrap().token, (DELIVERY_CAPACITY + 4).to_string());
    }

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
