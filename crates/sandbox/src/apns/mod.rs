//! APNs stand-in: `POST /3/device/{token}`, token-based auth only.
//!
//! Checks, in this order (every failure answers Apple's status and
//! `{"reason": …}`, with `apns-id`):
//! 1. method (`405 MethodNotAllowed`), path (`404 BadPath`), body within 64 KiB
//!    (`413 PayloadTooLarge`), no repeated `apns-*`/`authorization` header
//!    (`400 DuplicateHeaders`);
//! 2. the provider token: `authorization: bearer <JWT>`, ES256, header `kid` =
//!    the configured key id, claim `iss` = the team id, signature verified with
//!    the public half of the configured `.p8`; `iat` older than one hour →
//!    `403 ExpiredProviderToken`, more than 5 minutes ahead →
//!    `403 InvalidProviderToken`; missing → `403 MissingProviderToken`;
//! 3. a new, newer token on a connection less than 20 minutes (by `iat`) after
//!    the one it replaces → `429 TooManyProviderTokenUpdates`, unless the
//!    replaced token was expired by the `expire_provider_tokens` fault;
//! 4. headers: `apns-id` a UUID (`BadMessageId`), `apns-push-type` one of
//!    Apple's types (`InvalidPushType`; absent = alert), `apns-topic` present
//!    (`MissingTopic`) and a well-formed bundle id (`BadTopic`), `apns-priority`
//!    1, 5 or 10 and 5 for background pushes, where an absent header means 10
//!    (`BadPriority`), `apns-expiration` a non-negative integer
//!    (`BadExpirationDate`), `apns-collapse-id` ≤ 64 bytes (`BadCollapseId`);
//! 5. payload: empty → `PayloadEmpty`; over 4096 bytes (5120 for voip) →
//!    `413 PayloadTooLarge`; not a JSON object with an `aps` object →
//!    `400 BadPayload` (Apple documents no reason for this; the name is the
//!    sandbox's own);
//! 6. device token: empty → `MissingDeviceToken`; not an even number (≤ 200) of
//!    hex digits → `BadDeviceToken`; a well-formed topic that is not the
//!    configured one plus the push type's suffix → `400 DeviceTokenNotForTopic`
//!    (what a wrong bundle id does at Apple: every token looks dead);
//! 7. scripted prefixes (SPEC §7): `dead` 410 Unregistered (+ timestamp),
//!    `bad0` 400 BadDeviceToken, `0429` 429 TooManyRequests, `0500` 500,
//!    `0503` 503, `f1a0` 503 twice per token then accepted;
//! 8. random faults, then 200 with `apns-id` (echoed, or a new UUID).
//!
//! One stream per new connection: APNs advertises a single stream until a
//! request with a valid provider token succeeds. hyper cannot change
//! SETTINGS_MAX_CONCURRENT_STREAMS mid-connection, so the sandbox advertises
//! its full limit and instead *serializes* the APNs requests of a connection
//! (one at a time, in arrival order) until one carried a valid token; a client
//! that opens with a burst sees it answered one by one, and a burst with a
//! bad token costs it sequential round trips as at Apple.
//!
//! One concern per file: [`reason`] (the answers), [`provider_token`] (the
//! JWT check, its cache, the per-connection token rule), [`checks`] (headers,
//! payload, device token, topic); this file holds the service and the
//! handler that runs the checks in the order above.

mod checks;
mod provider_token;
mod reason;

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::{HeaderName, HeaderValue, Method, Request, Response};
use hyper::body::Incoming;

use self::checks::{
    APNS_COLLAPSE_ID, APNS_EXPIRATION, APNS_ID, APNS_PRIORITY, APNS_PUSH_TYPE, APNS_TOPIC,
    PAYLOAD_LIMIT, SINGLE_HEADERS, VOIP_PAYLOAD_LIMIT, check_headers, check_payload, is_bundle_id,
    is_device_token, is_uuid, topic_matches,
};
pub(crate) use self::provider_token::ConnAuth;
use self::provider_token::ProviderTokens;
pub(crate) use self::reason::LABELS;
use self::reason::Reason;
use crate::config::ApnsSandboxConfig;
use crate::error::SandboxError;
use crate::faults::{Faults, InjectedFault};
use crate::http_util::{self, Body, BodyError};
use crate::recorder::{Platform, RawDelivery, Recorder};

/// Largest body read at all; beyond it the answer is 413 without reading on.
const BODY_READ_LIMIT: usize = 64 * 1024;

/// The APNs service: its topic, the provider tokens it accepts and the
/// `apns-id`s it hands out.
pub(crate) struct Apns {
    topic: String,
    tokens: ProviderTokens,
    /// Per-process random prefix of generated `apns-id`s.
    id_prefix: u64,
    id_counter: AtomicU64,
}

impl Apns {
    pub(crate) fn from_config(config: &ApnsSandboxConfig) -> Result<Self, SandboxError> {
        let tokens = ProviderTokens::load(config)?;
        if !is_bundle_id(&config.topic) {
            return Err(SandboxError::Config {
                key: "apns.topic",
                reason: "must be a bundle id such as com.example.app".to_string(),
            });
        }
        Ok(Self {
            topic: config.topic.clone(),
            tokens,
            id_prefix: rand::random(),
            id_counter: AtomicU64::new(0),
        })
    }

    /// Starts counting token generations afresh.
    pub(crate) fn reset(&self) {
        self.tokens.reset();
    }

    /// Marks every token verified so far as expired; returns how many were still valid.
    pub(crate) fn expire_current_tokens(&self) -> u64 {
        self.tokens.expire_current_tokens()
    }

    /// A new UUID-shaped `apns-id` (random per process, then a counter).
    fn new_apns_id(&self) -> HeaderValue {
        const HEX: &[u8; 16] = b"0123456789ABCDEF";
        let n = self.id_counter.fetch_add(1, Ordering::Relaxed);
        let value = (u128::from(self.id_prefix) << 64) | u128::from(n);
        let mut out = [0u8; 36];
        let mut nibble = 32;
        for (i, slot) in out.iter_mut().enumerate() {
            if matches!(i, 8 | 13 | 18 | 23) {
                *slot = b'-';
            } else {
                nibble -= 1;
                *slot = HEX[((value >> (nibble * 4)) & 0xF) as usize];
            }
        }
        HeaderValue::from_bytes(&out).unwrap_or(HeaderValue::from_static(
            "00000000-0000-0000-0000-000000000000",
        ))
    }
}

/// Answers one APNs request.
pub(crate) async fn handle(
    apns: &Apns,
    recorder: &Recorder,
    conn: &ConnAuth,
    faults: &Faults,
    req: Request<Incoming>,
) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let requested_id = parts.headers.get(APNS_ID);
    let id = match requested_id {
        Some(v) if is_uuid(v.as_bytes()) => v.clone(),
        _ => apns.new_apns_id(),
    };
    let reject = |reason: Reason| error_response(recorder, reason, id.clone());

    if parts.method != Method::POST {
        return reject(Reason::MethodNotAllowed);
    }
    let Some(token) = parts.uri.path().strip_prefix("/3/device/") else {
        return reject(Reason::BadPath);
    };
    if token.contains('/') {
        return reject(Reason::BadPath);
    }
    let body = match http_util::read_body(body, BODY_READ_LIMIT).await {
        Ok(body) => body,
        Err(BodyError::TooLarge) => return reject(Reason::PayloadTooLarge),
        Err(BodyError::Broken) => return reject(Reason::BadPayload),
    };
    if SINGLE_HEADERS
        .iter()
        .any(|name| parts.headers.get_all(name).iter().nth(1).is_some())
    {
        return reject(Reason::DuplicateHeaders);
    }

    // One stream at a time until a valid provider token went through.
    let one_stream = if conn.authed.load(Ordering::Acquire) {
        None
    } else {
        let guard = Box::pin(conn.gate.lock()).await;
        (!conn.authed.load(Ordering::Acquire)).then_some(guard)
    };
    let provider_token = match apns
        .tokens
        .authenticate(parts.headers.get(AUTHORIZATION), recorder)
    {
        Ok(t) => t,
        Err(reason) => return reject(reason),
    };
    if let Err(reason) = conn.accept_token(&provider_token) {
        return reject(reason);
    }
    conn.authed.store(true, Ordering::Release);
    drop(one_stream);

    if requested_id.is_some_and(|v| !is_uuid(v.as_bytes())) {
        return reject(Reason::BadMessageId);
    }
    let checked = match check_headers(&parts.headers) {
        Ok(c) => c,
        Err(reason) => return reject(reason),
    };
    let limit = if checked.push_type == "voip" {
        VOIP_PAYLOAD_LIMIT
    } else {
        PAYLOAD_LIMIT
    };
    if let Err(reason) = check_payload(&body, limit) {
        return reject(reason);
    }
    if token.is_empty() {
        return reject(Reason::MissingDeviceToken);
    }
    if !is_device_token(token) {
        return reject(Reason::BadDeviceToken);
    }
    if !topic_matches(&apns.topic, checked.topic, checked.push_type) {
        return reject(Reason::DeviceTokenNotForTopic);
    }
    if let Some(reason) = scripted(recorder, token) {
        return reject(reason);
    }
    match faults.roll() {
        Some(InjectedFault::Internal) => return reject(Reason::InternalServerError),
        Some(InjectedFault::Unavailable) => return reject(Reason::ServiceUnavailable),
        Some(InjectedFault::TooManyRequests) => return reject(Reason::TooManyRequests),
        None => {}
    }

    recorder.apns.accepted();
    let header = |name: &HeaderName| parts.headers.get(name).cloned();
    recorder.record(RawDelivery {
        platform: Platform::Apns,
        token: token.into(),
        id: id.clone(),
        headers: [
            header(&APNS_TOPIC),
            header(&APNS_PUSH_TYPE),
            header(&APNS_PRIORITY),
            header(&APNS_EXPIRATION),
            header(&APNS_COLLAPSE_ID),
        ],
        body,
        received_at_ms: http_util::unix_now_ms(),
    });
    let mut resp = Response::new(Body::default());
    resp.headers_mut().insert(APNS_ID, id);
    resp
}

fn error_response(recorder: &Recorder, reason: Reason, id: HeaderValue) -> Response<Body> {
    recorder.apns.refused(reason.index());
    let body = if reason == Reason::Unregistered {
        Bytes::from(format!(
            "{{\"reason\":\"Unregistered\",\"timestamp\":{}}}",
            http_util::unix_now_ms()
        ))
    } else {
        Bytes::from_static(reason.body().as_bytes())
    };
    let mut resp = http_util::json(reason.status(), body);
    resp.headers_mut().insert(APNS_ID, id);
    resp
}

/// The scripted answer for a token prefix (SPEC §7), if any.
fn scripted(recorder: &Recorder, token: &str) -> Option<Reason> {
    let prefix = token.as_bytes().get(..4)?;
    let is = |p: &[u8]| prefix.eq_ignore_ascii_case(p);
    if is(b"dead") {
        Some(Reason::Unregistered)
    } else if is(b"bad0") {
        Some(Reason::BadDeviceToken)
    } else if is(b"0429") {
        Some(Reason::TooManyRequests)
    } else if is(b"0500") {
        Some(Reason::InternalServerError)
    } else if is(b"0503") {
        Some(Reason::ServiceUnavailable)
    } else if is(b"f1a0") {
        recorder
            .flaky_fails(Platform::Apns, &token.to_ascii_lowercase())
            .then_some(Reason::ServiceUnavailable)
    } else {
        None
    }
}
