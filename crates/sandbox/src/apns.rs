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
//! Verified provider tokens are cached (bounded: 4,096 tokens; when full,
//! tokens older than an hour are dropped, then everything), so the ES256 check
//! runs once per token, not per request.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair,
    UnparsedPublicKey,
};
use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use rustls::pki_types::PrivatePkcs8KeyDer;
use rustls::pki_types::pem::PemObject;
use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

use crate::faults::{Faults, InjectedFault};
use crate::http_util::{self, Body, BodyError};
use crate::inspect::{Platform, RawDelivery};
use crate::jws;
use crate::router::State;
use crate::{ApnsSandboxConfig, SandboxError};

/// Provider tokens older than this are expired (Apple: one hour).
const TOKEN_MAX_AGE_SECS: i64 = 3600;
/// Provider tokens issued further ahead than this are refused.
const TOKEN_MAX_SKEW_SECS: i64 = 300;
/// A connection may switch to a newer token only this long after the previous one.
const TOKEN_MIN_REFRESH_SECS: i64 = 20 * 60;
/// Verified tokens kept.
const TOKEN_CACHE_CAPACITY: usize = 4096;
/// Payload limit for every push type but voip.
const PAYLOAD_LIMIT: usize = 4096;
/// Payload limit for voip pushes.
const VOIP_PAYLOAD_LIMIT: usize = 5120;
/// Largest body read at all; beyond it the answer is 413 without reading on.
const BODY_READ_LIMIT: usize = 64 * 1024;
/// Longest `apns-collapse-id`.
const COLLAPSE_ID_LIMIT: usize = 64;
/// Longest device token, in hex digits.
const DEVICE_TOKEN_MAX_HEX: usize = 200;

const APNS_ID: HeaderName = HeaderName::from_static("apns-id");
const APNS_TOPIC: HeaderName = HeaderName::from_static("apns-topic");
const APNS_PUSH_TYPE: HeaderName = HeaderName::from_static("apns-push-type");
const APNS_PRIORITY: HeaderName = HeaderName::from_static("apns-priority");
const APNS_EXPIRATION: HeaderName = HeaderName::from_static("apns-expiration");
const APNS_COLLAPSE_ID: HeaderName = HeaderName::from_static("apns-collapse-id");

/// Headers that must not be repeated.
const SINGLE_HEADERS: [HeaderName; 7] = [
    AUTHORIZATION,
    APNS_ID,
    APNS_TOPIC,
    APNS_PUSH_TYPE,
    APNS_PRIORITY,
    APNS_EXPIRATION,
    APNS_COLLAPSE_ID,
];

macro_rules! reasons {
    ($($name:ident => $status:ident $code:literal,)*) => {
        /// Apple's error reasons the sandbox answers (plus `BadPayload`).
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub(crate) enum Reason { $($name,)* }

        impl Reason {
            /// Every reason, in discriminant order (indexes the counters).
            pub(crate) const ALL: &'static [Reason] = &[$(Reason::$name,)*];

            pub(crate) fn status(self) -> StatusCode {
                match self { $(Reason::$name => StatusCode::$status,)* }
            }

            /// `"<status> <reason>"`, the stats label.
            pub(crate) fn label(self) -> &'static str {
                match self { $(Reason::$name => concat!($code, " ", stringify!($name)),)* }
            }

            fn body(self) -> &'static str {
                match self { $(Reason::$name => concat!("{\"reason\":\"", stringify!($name), "\"}"),)* }
            }
        }
    };
}

reasons! {
    BadCollapseId => BAD_REQUEST "400",
    BadDeviceToken => BAD_REQUEST "400",
    BadExpirationDate => BAD_REQUEST "400",
    BadMessageId => BAD_REQUEST "400",
    BadPriority => BAD_REQUEST "400",
    BadTopic => BAD_REQUEST "400",
    DeviceTokenNotForTopic => BAD_REQUEST "400",
    DuplicateHeaders => BAD_REQUEST "400",
    InvalidPushType => BAD_REQUEST "400",
    MissingDeviceToken => BAD_REQUEST "400",
    MissingTopic => BAD_REQUEST "400",
    PayloadEmpty => BAD_REQUEST "400",
    BadPayload => BAD_REQUEST "400",
    ExpiredProviderToken => FORBIDDEN "403",
    InvalidProviderToken => FORBIDDEN "403",
    MissingProviderToken => FORBIDDEN "403",
    BadPath => NOT_FOUND "404",
    MethodNotAllowed => METHOD_NOT_ALLOWED "405",
    Unregistered => GONE "410",
    PayloadTooLarge => PAYLOAD_TOO_LARGE "413",
    TooManyProviderTokenUpdates => TOO_MANY_REQUESTS "429",
    TooManyRequests => TOO_MANY_REQUESTS "429",
    InternalServerError => INTERNAL_SERVER_ERROR "500",
    ServiceUnavailable => SERVICE_UNAVAILABLE "503",
}

/// `apns-push-type` values and the topic suffix each needs.
const PUSH_TYPES: [(&str, &str); 9] = [
    ("alert", ""),
    ("background", ""),
    ("voip", ".voip"),
    ("complication", ".complication"),
    ("fileprovider", ".pushkit.fileprovider"),
    ("mdm", ""),
    ("liveactivity", ".push-type.liveactivity"),
    ("location", ".location-query"),
    ("pushtotalk", ".voip-ptt"),
];

/// The APNs service: its key, topic and the cache of verified provider tokens.
pub(crate) struct Apns {
    topic: String,
    key_id: String,
    team_id: String,
    public_key: UnparsedPublicKey<Vec<u8>>,
    tokens: RwLock<HashMap<Box<str>, Arc<ProviderToken>>>,
    /// Bumped by reset, so generations are counted again afterwards.
    epoch: AtomicU64,
    /// Per-process random prefix of generated `apns-id`s.
    id_prefix: u64,
    id_counter: AtomicU64,
}

/// A provider token whose signature was verified.
#[derive(Debug)]
pub(crate) struct ProviderToken {
    iat: i64,
    fault_expired: AtomicBool,
    counted_in_epoch: AtomicU64,
}

/// What one connection remembers about APNs auth.
#[derive(Debug, Default)]
pub(crate) struct ConnAuth {
    /// A request with a valid provider token was answered on this connection.
    authed: AtomicBool,
    /// Serializes requests until `authed`.
    gate: tokio::sync::Mutex<()>,
    /// The newest provider token used on this connection.
    current: Mutex<Option<Arc<ProviderToken>>>,
}

impl Apns {
    pub(crate) fn from_config(config: &ApnsSandboxConfig) -> Result<Self, SandboxError> {
        let key_err = |reason: String| SandboxError::ApnsKey {
            path: config.key_file.clone(),
            reason,
        };
        let der = PrivatePkcs8KeyDer::from_pem_file(&config.key_file)
            .map_err(|e| key_err(format!("not a PKCS#8 PEM private key: {e}")))?;
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der.secret_pkcs8_der())
                .map_err(|e| key_err(format!("not a P-256 key: {e}")))?;
        let public_key = pair.public_key().as_ref().to_vec();
        let config_err = |key, reason: &str| SandboxError::Config {
            key,
            reason: reason.to_string(),
        };
        if config.key_id.trim().is_empty() {
            return Err(config_err("apns.key_id", "must not be empty"));
        }
        if config.team_id.trim().is_empty() {
            return Err(config_err("apns.team_id", "must not be empty"));
        }
        if !is_bundle_id(&config.topic) {
            return Err(config_err(
                "apns.topic",
                "must be a bundle id such as com.example.app",
            ));
        }
        Ok(Self {
            topic: config.topic.clone(),
            key_id: config.key_id.clone(),
            team_id: config.team_id.clone(),
            public_key: UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, public_key),
            tokens: RwLock::new(HashMap::new()),
            epoch: AtomicU64::new(0),
            id_prefix: rand::random(),
            id_counter: AtomicU64::new(0),
        })
    }

    /// Starts counting token generations afresh.
    pub(crate) fn reset(&self) {
        self.epoch.fetch_add(1, Ordering::Relaxed);
    }

    /// Marks every token verified so far as expired; returns how many were still valid.
    pub(crate) fn expire_current_tokens(&self) -> u64 {
        let now = http_util::unix_now();
        let tokens = self.tokens.read().unwrap_or_else(PoisonError::into_inner);
        let mut expired = 0;
        for token in tokens.values() {
            let was = token.fault_expired.swap(true, Ordering::AcqRel);
            if !was && now - token.iat <= TOKEN_MAX_AGE_SECS {
                expired += 1;
            }
        }
        expired
    }

    /// Checks the `authorization` header; returns the verified token.
    fn authenticate(
        &self,
        header: Option<&HeaderValue>,
        state: &State,
    ) -> Result<Arc<ProviderToken>, Reason> {
        let header = header.ok_or(Reason::MissingProviderToken)?;
        let jwt = http_util::bearer(header).ok_or(Reason::InvalidProviderToken)?;
        if jwt.is_empty() {
            return Err(Reason::MissingProviderToken);
        }
        let now = http_util::unix_now();
        let epoch = self.epoch.load(Ordering::Relaxed);
        let cached = self
            .tokens
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(jwt)
            .cloned();
        let token = match cached {
            Some(token) => {
                if token.counted_in_epoch.load(Ordering::Relaxed) != epoch
                    && token.counted_in_epoch.swap(epoch, Ordering::Relaxed) != epoch
                {
                    state
                        .recorder
                        .apns_token_generations
                        .fetch_add(1, Ordering::Relaxed);
                }
                token
            }
            None => {
                let iat = self.verify(jwt, state)?;
                if iat > now + TOKEN_MAX_SKEW_SECS {
                    return Err(Reason::InvalidProviderToken);
                }
                if now - iat > TOKEN_MAX_AGE_SECS {
                    return Err(Reason::ExpiredProviderToken);
                }
                self.remember(jwt, iat, now, epoch, state)
            }
        };
        if token.fault_expired.load(Ordering::Acquire) || now - token.iat > TOKEN_MAX_AGE_SECS {
            return Err(Reason::ExpiredProviderToken);
        }
        Ok(token)
    }

    fn remember(
        &self,
        jwt: &str,
        iat: i64,
        now: i64,
        epoch: u64,
        state: &State,
    ) -> Arc<ProviderToken> {
        let mut tokens = self.tokens.write().unwrap_or_else(PoisonError::into_inner);
        if tokens.len() >= TOKEN_CACHE_CAPACITY && !tokens.contains_key(jwt) {
            tokens.retain(|_, t| now - t.iat <= TOKEN_MAX_AGE_SECS);
            if tokens.len() >= TOKEN_CACHE_CAPACITY {
                tokens.clear();
            }
        }
        match tokens.entry(jwt.into()) {
            Entry::Occupied(e) => e.get().clone(),
            Entry::Vacant(e) => {
                state
                    .recorder
                    .apns_token_generations
                    .fetch_add(1, Ordering::Relaxed);
                e.insert(Arc::new(ProviderToken {
                    iat,
                    fault_expired: AtomicBool::new(false),
                    counted_in_epoch: AtomicU64::new(epoch),
                }))
                .clone()
            }
        }
    }

    /// Verifies an ES256 provider token; returns its `iat`.
    fn verify(&self, jwt: &str, state: &State) -> Result<i64, Reason> {
        #[derive(Deserialize)]
        struct Claims {
            iss: Option<String>,
            iat: Option<i64>,
        }
        let parts = jws::split(jwt).ok_or(Reason::InvalidProviderToken)?;
        let header: jws::Header =
            jws::decode_json(parts.header).ok_or(Reason::InvalidProviderToken)?;
        if header.alg != "ES256" || header.kid.as_deref() != Some(self.key_id.as_str()) {
            return Err(Reason::InvalidProviderToken);
        }
        let claims: Claims = jws::decode_json(parts.claims).ok_or(Reason::InvalidProviderToken)?;
        if claims.iss.as_deref() != Some(self.team_id.as_str()) {
            return Err(Reason::InvalidProviderToken);
        }
        let iat = claims.iat.ok_or(Reason::InvalidProviderToken)?;
        let signature = jws::decode(parts.signature).ok_or(Reason::InvalidProviderToken)?;
        state
            .recorder
            .jwt_verifications
            .fetch_add(1, Ordering::Relaxed);
        self.public_key
            .verify(parts.signing_input.as_bytes(), &signature)
            .map_err(|_| Reason::InvalidProviderToken)?;
        Ok(iat)
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

impl ConnAuth {
    /// Applies the too-frequent-update rule to `token` on this connection.
    fn accept_token(&self, token: &Arc<ProviderToken>) -> Result<(), Reason> {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        match current.as_ref() {
            Some(cur) if Arc::ptr_eq(cur, token) => Ok(()),
            Some(cur) if token.iat > cur.iat => {
                let replaced_expired = cur.fault_expired.load(Ordering::Acquire);
                if token.iat - cur.iat < TOKEN_MIN_REFRESH_SECS && !replaced_expired {
                    return Err(Reason::TooManyProviderTokenUpdates);
                }
                *current = Some(token.clone());
                Ok(())
            }
            // An older token that is still valid: a request from before a refresh.
            Some(_) => Ok(()),
            None => {
                *current = Some(token.clone());
                Ok(())
            }
        }
    }
}

/// What a request asked for, once its headers are checked.
struct Checked<'a> {
    push_type: &'static str,
    topic: &'a str,
}

/// Answers one APNs request.
pub(crate) async fn handle(
    state: &State,
    conn: &ConnAuth,
    faults: &Faults,
    req: Request<Incoming>,
) -> Response<Body> {
    let apns = &state.apns;
    let (parts, body) = req.into_parts();
    let requested_id = parts.headers.get(APNS_ID);
    let id = match requested_id {
        Some(v) if is_uuid(v.as_bytes()) => v.clone(),
        _ => apns.new_apns_id(),
    };
    let reject = |reason: Reason| error_response(state, reason, id.clone());

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
    let provider_token = match apns.authenticate(parts.headers.get(AUTHORIZATION), state) {
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
    if !apns.topic_matches(checked.topic, checked.push_type) {
        return reject(Reason::DeviceTokenNotForTopic);
    }
    if let Some(reason) = scripted(state, token) {
        return reject(reason);
    }
    match faults.roll() {
        Some(InjectedFault::Internal) => return reject(Reason::InternalServerError),
        Some(InjectedFault::Unavailable) => return reject(Reason::ServiceUnavailable),
        Some(InjectedFault::TooManyRequests) => return reject(Reason::TooManyRequests),
        None => {}
    }

    state.recorder.apns_accepted();
    let header = |name: &HeaderName| parts.headers.get(name).cloned();
    state.recorder.record(RawDelivery {
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

fn error_response(state: &State, reason: Reason, id: HeaderValue) -> Response<Body> {
    state.recorder.apns_rejected(reason);
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
fn scripted(state: &State, token: &str) -> Option<Reason> {
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
        state
            .recorder
            .flaky_fails(Platform::Apns, &token.to_ascii_lowercase())
            .then_some(Reason::ServiceUnavailable)
    } else {
        None
    }
}

fn header_str<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Result<Option<&'a str>, ()> {
    headers
        .get(name)
        .map(|v| v.to_str().map_err(|_| ()))
        .transpose()
}

fn check_headers(headers: &HeaderMap) -> Result<Checked<'_>, Reason> {
    let push_type = match header_str(headers, &APNS_PUSH_TYPE) {
        Ok(None) => "alert",
        Ok(Some(v)) => PUSH_TYPES
            .iter()
            .find(|(name, _)| *name == v)
            .map(|(name, _)| *name)
            .ok_or(Reason::InvalidPushType)?,
        Err(()) => return Err(Reason::InvalidPushType),
    };
    let topic = match header_str(headers, &APNS_TOPIC) {
        Ok(None) => return Err(Reason::MissingTopic),
        Ok(Some("")) => return Err(Reason::MissingTopic),
        Ok(Some(t)) if is_bundle_id(t) => t,
        _ => return Err(Reason::BadTopic),
    };
    let priority = match header_str(headers, &APNS_PRIORITY) {
        Ok(None) => 10,
        Ok(Some("10")) => 10,
        Ok(Some("5")) => 5,
        Ok(Some("1")) => 1,
        _ => return Err(Reason::BadPriority),
    };
    if push_type == "background" && priority != 5 {
        return Err(Reason::BadPriority);
    }
    match header_str(headers, &APNS_EXPIRATION) {
        Ok(None) => {}
        Ok(Some(v)) if !v.is_empty() && v.len() <= 19 && v.bytes().all(|b| b.is_ascii_digit()) => {}
        _ => return Err(Reason::BadExpirationDate),
    }
    if headers
        .get(&APNS_COLLAPSE_ID)
        .is_some_and(|v| v.len() > COLLAPSE_ID_LIMIT)
    {
        return Err(Reason::BadCollapseId);
    }
    Ok(Checked { push_type, topic })
}

impl Apns {
    /// True when `topic` is the configured topic plus `push_type`'s suffix.
    fn topic_matches(&self, topic: &str, push_type: &str) -> bool {
        let suffix = PUSH_TYPES
            .iter()
            .find(|(name, _)| *name == push_type)
            .map_or("", |(_, suffix)| *suffix);
        topic
            .strip_prefix(self.topic.as_str())
            .is_some_and(|rest| rest == suffix)
    }
}

/// A plausible bundle id (with or without a push-type suffix).
fn is_bundle_id(topic: &str) -> bool {
    !topic.is_empty()
        && topic.len() <= 255
        && topic.split('.').all(|segment| {
            !segment.is_empty()
                && segment
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// An even number of hex digits, at most 200.
fn is_device_token(token: &str) -> bool {
    token.len().is_multiple_of(2)
        && token.len() <= DEVICE_TOKEN_MAX_HEX
        && token.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A canonical 8-4-4-4-12 UUID.
fn is_uuid(v: &[u8]) -> bool {
    v.len() == 36
        && v.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

fn check_payload(body: &[u8], limit: usize) -> Result<(), Reason> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(Reason::PayloadEmpty);
    }
    if body.len() > limit {
        return Err(Reason::PayloadTooLarge);
    }
    match serde_json::from_slice::<ApsPayload>(body) {
        Ok(ApsPayload { has_aps: true }) => Ok(()),
        _ => Err(Reason::BadPayload),
    }
}

/// Validates a payload without building it: a JSON object whose `aps` is an object.
struct ApsPayload {
    has_aps: bool,
}

impl<'de> Deserialize<'de> for ApsPayload {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PayloadVisitor;
        impl<'de> Visitor<'de> for PayloadVisitor {
            type Value = ApsPayload;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object with an `aps` object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ApsPayload, A::Error> {
                let mut has_aps = false;
                while let Some(key) = map.next_key::<Key>()? {
                    if key.is_aps {
                        map.next_value::<ObjectOnly>()?;
                        has_aps = true;
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(ApsPayload { has_aps })
            }
        }
        deserializer.deserialize_map(PayloadVisitor)
    }
}

/// An object key, only compared with `aps` (no allocation for plain keys).
struct Key {
    is_aps: bool,
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
                Ok(Key { is_aps: v == "aps" })
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// Any JSON object, contents ignored; anything else is an error.
struct ObjectOnly;

impl<'de> Deserialize<'de> for ObjectOnly {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor;
        impl<'de> Visitor<'de> for ObjectVisitor {
            type Value = ObjectOnly;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ObjectOnly, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(ObjectOnly)
            }
        }
        deserializer.deserialize_map(ObjectVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_needs_an_aps_object() {
        assert_eq!(check_payload(br#"{"aps":{}}"#, 4096), Ok(()));
        assert_eq!(
            check_payload(br#"{"x":[1,{"a":"b"}],"aps":{"alert":"hi"}}"#, 4096),
            Ok(())
        );
        assert_eq!(check_payload(b"", 4096), Err(Reason::PayloadEmpty));
        assert_eq!(check_payload(b"  \n", 4096), Err(Reason::PayloadEmpty));
        assert_eq!(
            check_payload(br#"{"aps":1}"#, 4096),
            Err(Reason::BadPayload)
        );
        assert_eq!(check_payload(br#"{"x":1}"#, 4096), Err(Reason::BadPayload));
        assert_eq!(check_payload(br#"[1]"#, 4096), Err(Reason::BadPayload));
        assert_eq!(
            check_payload(br#"{"aps":{}} x"#, 4096),
            Err(Reason::BadPayload)
        );
        assert_eq!(
            check_payload(br#"{"\u0061ps":{}}"#, 4096),
            Ok(()),
            "escaped keys are compared decoded"
        );
        let big = format!(r#"{{"aps":{{}},"x":"{}"}}"#, "a".repeat(5000));
        assert_eq!(
            check_payload(big.as_bytes(), 4096),
            Err(Reason::PayloadTooLarge)
        );
    }

    #[test]
    fn token_topic_and_id_syntax() {
        assert!(is_device_token("deadbeef"));
        assert!(!is_device_token("deadbee"));
        assert!(!is_device_token("zz"));
        assert!(is_bundle_id("com.example.app.voip"));
        assert!(!is_bundle_id("com..example"));
        assert!(!is_bundle_id("com example"));
        assert!(is_uuid(b"123e4567-e89b-12d3-a456-426655440000"));
        assert!(!is_uuid(b"123e4567e89b12d3a456426655440000"));
    }

    #[test]
    fn labels_carry_status_and_reason() {
        assert_eq!(Reason::Unregistered.label(), "410 Unregistered");
        assert_eq!(Reason::Unregistered.status(), StatusCode::GONE);
        assert_eq!(Reason::BadTopic.body(), r#"{"reason":"BadTopic"}"#);
        assert_eq!(
            Reason::ALL[Reason::ServiceUnavailable as usize],
            Reason::ServiceUnavailable
        );
    }
}
