//! What the sandbox saw: the ring of accepted pushes, counters per outcome,
//! and the per-token counters behind the scripted `f1a0`/`flaky-` answers.
//! The `/sandbox/*` endpoints that expose them are in `inspect`.
//!
//! Everything here is bounded (deliveries: the newest 10,000; flaky counters:
//! 100,000 tokens, then forgotten) and cheap to update: counters are atomics,
//! a delivery keeps the request's bytes and is parsed only when listed. The
//! recorder knows nothing of the stand-ins that write to it: each hands it
//! its own outcome labels ([`Tally`]).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, PoisonError};

use bytes::Bytes;
use http::HeaderValue;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// How many accepted pushes `/sandbox/deliveries` keeps (newest last).
pub(crate) const DELIVERY_CAPACITY: usize = 10_000;
/// How many tokens the flaky counters remember before starting over.
const FLAKY_CAPACITY: usize = 100_000;
/// How many times a flaky token fails before it is accepted.
const FLAKY_FAILURES: u8 = 2;

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
    /// APNs and FCM requests left unanswered by `blackhole_streams`.
    pub blackholed: u64,
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

/// Answers counted per outcome label. `labels[0]` is `"200"`; the others
/// are a stand-in's refusals in its own order (APNs `apns::LABELS`, FCM
/// `fcm::LABELS`), so that the recorder needs to know nothing of them.
pub(crate) struct Tally {
    labels: &'static [&'static str],
    counts: Box<[AtomicU64]>,
}

impl Tally {
    /// One counter per label.
    pub(crate) fn new(labels: &'static [&'static str]) -> Self {
        Self {
            labels,
            counts: labels.iter().map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Counts a 200.
    pub(crate) fn accepted(&self) {
        self.counts[0].fetch_add(1, Relaxed);
    }

    /// Counts the refusal labelled `labels[index]`.
    pub(crate) fn refused(&self, index: usize) {
        if let Some(count) = self.counts.get(index) {
            count.fetch_add(1, Relaxed);
        }
    }

    fn reset(&self) {
        for c in &self.counts {
            c.store(0, Relaxed);
        }
    }

    /// Label → count, leaving out what was never seen.
    fn snapshot(&self) -> BTreeMap<String, u64> {
        self.labels
            .iter()
            .zip(&self.counts)
            .filter_map(|(label, c)| {
                let n = c.load(Relaxed);
                (n > 0).then(|| ((*label).to_string(), n))
            })
            .collect()
    }
}

/// Counters, deliveries and flaky counters.
pub(crate) struct Recorder {
    /// APNs answers per label.
    pub apns: Tally,
    /// FCM answers per label.
    pub fcm: Tally,
    pub oauth_tokens_issued: AtomicU64,
    pub oauth_rejected: AtomicU64,
    pub jwt_verifications: AtomicU64,
    pub apns_token_generations: AtomicU64,
    pub provider_tokens_expired: AtomicU64,
    pub connections: AtomicU64,
    pub goaways: AtomicU64,
    pub blackholed: AtomicU64,
    deliveries: Mutex<VecDeque<RawDelivery>>,
    flaky: Mutex<HashMap<(Platform, Box<str>), u8>>,
}

impl Recorder {
    /// A recorder counting APNs and FCM answers under these labels (each
    /// list starts with `"200"`).
    pub(crate) fn new(
        apns_labels: &'static [&'static str],
        fcm_labels: &'static [&'static str],
    ) -> Self {
        Self {
            apns: Tally::new(apns_labels),
            fcm: Tally::new(fcm_labels),
            oauth_tokens_issued: AtomicU64::new(0),
            oauth_rejected: AtomicU64::new(0),
            jwt_verifications: AtomicU64::new(0),
            apns_token_generations: AtomicU64::new(0),
            provider_tokens_expired: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            goaways: AtomicU64::new(0),
            blackholed: AtomicU64::new(0),
            deliveries: Mutex::new(VecDeque::with_capacity(1024)),
            flaky: Mutex::new(HashMap::new()),
        }
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
        self.apns.reset();
        self.fcm.reset();
        for c in [
            &self.oauth_tokens_issued,
            &self.oauth_rejected,
            &self.jwt_verifications,
            &self.apns_token_generations,
            &self.provider_tokens_expired,
            &self.connections,
            &self.goaways,
            &self.blackholed,
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
        Stats {
            apns: self.apns.snapshot(),
            fcm: self.fcm.snapshot(),
            oauth_tokens_issued: self.oauth_tokens_issued.load(Relaxed),
            oauth_rejected: self.oauth_rejected.load(Relaxed),
            jwt_verifications: self.jwt_verifications.load(Relaxed),
            apns_token_generations: self.apns_token_generations.load(Relaxed),
            provider_tokens_expired: self.provider_tokens_expired.load(Relaxed),
            connections: self.connections.load(Relaxed),
            goaways: self.goaways.load(Relaxed),
            blackholed: self.blackholed.load(Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flaky_fails_twice_then_passes() {
        let r = Recorder::new(&["200"], &["200"]);
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
        let r = Recorder::new(&["200"], &["200"]);
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
    fn tallies_count_by_label_and_leave_out_the_unseen() {
        const LABELS: &[&str] = &["200", "400 Bad", "503 Down"];
        let t = Tally::new(LABELS);
        t.accepted();
        t.accepted();
        t.refused(2);
        t.refused(99);
        let seen = t.snapshot();
        assert_eq!(seen.get("200"), Some(&2));
        assert_eq!(seen.get("503 Down"), Some(&1));
        assert_eq!(seen.len(), 2, "{seen:?}");
        t.reset();
        assert!(t.snapshot().is_empty());
    }
}
