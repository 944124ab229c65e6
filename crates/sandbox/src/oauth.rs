//! Google OAuth 2.0 token endpoint stand-in: `POST /token` with a JWT-bearer
//! assertion signed by the configured service account, as gcp_auth's
//! `CustomServiceAccount` sends it to the `token_uri` of its JSON.
//!
//! The assertion is verified by hand (RS256 = RSASSA-PKCS1-v1_5 with SHA-256)
//! because gcp_auth pads its base64url. Checked: header `alg: RS256` (and `kid`
//! = `private_key_id` when present), the signature against the public half of
//! the service account's `private_key`, `iss` = `client_email`, `aud` = this
//! endpoint (the JSON's `token_uri`, or any URL of this sandbox ending in
//! `/token`), a non-empty `scope`, and `iat`/`exp` at most one hour apart,
//! not expired and not more than 5 minutes ahead. Refusals answer 400 with
//! Google's `{"error": "invalid_grant", "error_description": …}`.
//!
//! Issued access tokens (`ya29.sandbox.…`, 3599 s, a new random value per
//! request) are remembered (bounded: 10,000, oldest dropped first) with
//! whether their scopes allow FCM (`firebase.messaging` or `cloud-platform`).
//!
//! Faults: `oauth_hang` (the router) reads each request and never answers
//! until the sandbox stops; `revoke_oauth_tokens` forgets every token issued
//! so far, so FCM answers 401 `UNAUTHENTICATED` to them.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::{PoisonError, RwLock};
use std::time::{Duration, Instant};

use aws_lc_rs::signature::{KeyPair, RSA_PKCS1_2048_8192_SHA256, RsaKeyPair, UnparsedPublicKey};
use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, HOST};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use rustls::pki_types::PrivatePkcs8KeyDer;
use rustls::pki_types::pem::PemObject;
use serde::Deserialize;
use serde_json::json;

use crate::error::SandboxError;
use crate::http_util::{self, Body};
use crate::jws;
use crate::recorder::Recorder;

/// `grant_type` of a JWT-bearer token request.
const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// Scopes that allow FCM sends.
const FCM_SCOPES: [&str; 2] = [
    "https://www.googleapis.com/auth/firebase.messaging",
    "https://www.googleapis.com/auth/cloud-platform",
];
/// Lifetime of issued access tokens, as Google's.
const TOKEN_LIFETIME_SECS: u64 = 3599;
/// Issued tokens remembered.
const ISSUED_CAPACITY: usize = 10_000;
/// Largest token request body.
const BODY_LIMIT: usize = 64 * 1024;
/// Longest allowed assertion lifetime.
const MAX_ASSERTION_LIFETIME_SECS: i64 = 3600;
/// Allowed clock skew for `iat`.
const MAX_SKEW_SECS: i64 = 300;

/// The service account whose assertions are accepted.
pub(crate) struct ServiceAccount {
    client_email: String,
    private_key_id: Option<String>,
    token_uri: String,
    /// DER `RSAPublicKey`.
    public_key: Vec<u8>,
}

impl ServiceAccount {
    /// Reads a service-account JSON and derives the public key of its `private_key`.
    pub(crate) fn load(path: &Path) -> Result<Self, SandboxError> {
        #[derive(Deserialize)]
        struct File {
            #[serde(rename = "type")]
            kind: Option<String>,
            client_email: String,
            private_key: String,
            private_key_id: Option<String>,
            token_uri: String,
        }
        let err = |reason: String| SandboxError::ServiceAccount {
            path: path.to_path_buf(),
            reason,
        };
        let text = std::fs::read(path).map_err(|e| err(format!("cannot read: {e}")))?;
        let file: File = serde_json::from_slice(&text).map_err(|e| {
            err(format!(
                "not a service-account JSON (needs client_email, private_key, token_uri): {e}"
            ))
        })?;
        if file.kind.as_deref().is_some_and(|k| k != "service_account") {
            return Err(err("`type` must be \"service_account\"".into()));
        }
        let der = PrivatePkcs8KeyDer::from_pem_slice(file.private_key.as_bytes())
            .map_err(|e| err(format!("`private_key` is not a PKCS#8 PEM key: {e}")))?;
        let pair = RsaKeyPair::from_pkcs8(der.secret_pkcs8_der())
            .map_err(|e| err(format!("`private_key` is not an RSA key: {e}")))?;
        Ok(Self {
            client_email: file.client_email,
            private_key_id: file.private_key_id,
            token_uri: file.token_uri,
            public_key: pair.public_key().as_ref().to_vec(),
        })
    }
}

/// What an access token allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// Issued here, not expired, scoped for FCM.
    Granted,
    /// Issued here and valid, but without an FCM scope.
    InsufficientScope,
    /// Unknown or expired.
    Invalid,
}

struct Issued {
    expires: Instant,
    fcm_scope: bool,
}

#[derive(Default)]
struct IssuedTokens {
    tokens: HashMap<Box<str>, Issued>,
    order: VecDeque<Box<str>>,
}

/// The token endpoint: the accepted service account and the tokens it issued.
pub(crate) struct OAuth {
    account: ServiceAccount,
    verifier: UnparsedPublicKey<Vec<u8>>,
    /// Audiences accepted besides the JSON's `token_uri`: this sandbox's own URLs.
    own_token_uris: Vec<String>,
    issued: RwLock<IssuedTokens>,
}

/// A refused token request: the OAuth `error` and its description.
struct Refusal(&'static str, String);

impl OAuth {
    pub(crate) fn new(account: ServiceAccount, own_token_uris: Vec<String>) -> Self {
        let verifier =
            UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, account.public_key.clone());
        Self {
            account,
            verifier,
            own_token_uris,
            issued: RwLock::new(IssuedTokens::default()),
        }
    }

    /// What `token` allows (for FCM's `authorization: Bearer`).
    pub(crate) fn access(&self, token: &str) -> Access {
        let issued = self.issued.read().unwrap_or_else(PoisonError::into_inner);
        match issued.tokens.get(token) {
            Some(t) if t.expires > Instant::now() => {
                if t.fcm_scope {
                    Access::Granted
                } else {
                    Access::InsufficientScope
                }
            }
            _ => Access::Invalid,
        }
    }

    /// Forgets every token issued so far (the `revoke_oauth_tokens` fault).
    pub(crate) fn revoke_all(&self) {
        *self.issued.write().unwrap_or_else(PoisonError::into_inner) = IssuedTokens::default();
    }

    fn issue(&self, fcm_scope: bool) -> String {
        let token = format!("ya29.sandbox.{}", jws::encode(&rand::random::<[u8; 32]>()));
        let now = Instant::now();
        let mut issued = self.issued.write().unwrap_or_else(PoisonError::into_inner);
        if issued.tokens.len() >= ISSUED_CAPACITY {
            issued.tokens.retain(|_, t| t.expires > now);
            let IssuedTokens { tokens, order } = &mut *issued;
            order.retain(|t| tokens.contains_key(t));
            while tokens.len() >= ISSUED_CAPACITY {
                match order.pop_front() {
                    Some(oldest) => {
                        tokens.remove(&oldest);
                    }
                    None => break,
                }
            }
        }
        let key: Box<str> = token.as_str().into();
        issued.order.push_back(key.clone());
        issued.tokens.insert(
            key,
            Issued {
                expires: now + Duration::from_secs(TOKEN_LIFETIME_SECS),
                fcm_scope,
            },
        );
        token
    }

    /// Verifies a JWT-bearer assertion; returns whether it asks for an FCM scope.
    fn verify(&self, assertion: &str, authority: Option<&str>) -> Result<bool, Refusal> {
        #[derive(Deserialize)]
        struct Claims {
            iss: Option<String>,
            aud: Option<String>,
            scope: Option<String>,
            iat: Option<i64>,
            exp: Option<i64>,
        }
        let bad_signature = || Refusal("invalid_grant", "Invalid JWT Signature.".into());
        let parts = jws::split(assertion).ok_or_else(bad_signature)?;
        let header: jws::Header = jws::decode_json(parts.header).ok_or_else(bad_signature)?;
        if header.alg != "RS256" {
            return Err(bad_signature());
        }
        if let (Some(kid), Some(expected)) = (&header.kid, &self.account.private_key_id)
            && kid != expected
        {
            return Err(bad_signature());
        }
        let signature = jws::decode(parts.signature).ok_or_else(bad_signature)?;
        self.verifier
            .verify(parts.signing_input.as_bytes(), &signature)
            .map_err(|_| bad_signature())?;
        let claims: Claims = jws::decode_json(parts.claims).ok_or_else(|| {
            Refusal(
                "invalid_grant",
                "Invalid JWT: the claim set is not a JSON object.".into(),
            )
        })?;
        if claims.iss.as_deref() != Some(self.account.client_email.as_str()) {
            return Err(Refusal(
                "invalid_grant",
                "Invalid grant: account not found".into(),
            ));
        }
        let aud = claims.aud.unwrap_or_default();
        if !self.audience_ok(&aud, authority) {
            return Err(Refusal(
                "invalid_grant",
                format!(
                    "Invalid JWT: Failed audience check. The right audience is {}",
                    self.account.token_uri
                ),
            ));
        }
        let (Some(iat), Some(exp)) = (claims.iat, claims.exp) else {
            return Err(timeframe());
        };
        let now = http_util::unix_now();
        if exp <= now
            || iat > now + MAX_SKEW_SECS
            || exp < iat
            || exp - iat > MAX_ASSERTION_LIFETIME_SECS
        {
            return Err(timeframe());
        }
        let scope = claims.scope.unwrap_or_default();
        if scope.split_whitespace().next().is_none() {
            return Err(Refusal(
                "invalid_scope",
                "Invalid OAuth scope or ID token audience provided.".into(),
            ));
        }
        Ok(scope.split_whitespace().any(|s| FCM_SCOPES.contains(&s)))
    }

    fn audience_ok(&self, aud: &str, authority: Option<&str>) -> bool {
        if aud.is_empty() {
            return false;
        }
        if aud == self.account.token_uri || self.own_token_uris.iter().any(|u| u == aud) {
            return true;
        }
        // The URL the client actually posted to, whichever name it used for us.
        authority.is_some_and(|host| {
            ["http://", "https://"].iter().any(|scheme| {
                aud.strip_prefix(scheme)
                    .and_then(|rest| rest.strip_prefix(host))
                    .is_some_and(|path| path == "/token")
            })
        })
    }
}

fn timeframe() -> Refusal {
    Refusal(
        "invalid_grant",
        "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable \
         timeframe. Check your iat and exp values in the JWT claim."
            .into(),
    )
}

/// Answers `POST /token`.
pub(crate) async fn handle(
    oauth: &OAuth,
    recorder: &Recorder,
    req: Request<Incoming>,
) -> Response<Body> {
    let (parts, body) = req.into_parts();
    if parts.method != Method::POST {
        return refuse(
            recorder,
            StatusCode::METHOD_NOT_ALLOWED,
            Refusal("invalid_request", "Only POST is supported.".into()),
        );
    }
    let form = parts
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/x-www-form-urlencoded"));
    if !form {
        return refuse(
            recorder,
            StatusCode::BAD_REQUEST,
            Refusal(
                "invalid_request",
                "Content-Type must be application/x-www-form-urlencoded.".into(),
            ),
        );
    }
    let Ok(body) = http_util::read_body(body, BODY_LIMIT).await else {
        return refuse(
            recorder,
            StatusCode::BAD_REQUEST,
            Refusal("invalid_request", "Request body too large.".into()),
        );
    };
    let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(&body).unwrap_or_default();
    let get = |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    match get("grant_type") {
        Some(JWT_BEARER) => {}
        Some(other) => {
            let desc = format!("Invalid grant_type: {other}");
            return refuse(
                recorder,
                StatusCode::BAD_REQUEST,
                Refusal("unsupported_grant_type", desc),
            );
        }
        None => {
            return refuse(
                recorder,
                StatusCode::BAD_REQUEST,
                Refusal(
                    "invalid_request",
                    "Missing required parameter: grant_type".into(),
                ),
            );
        }
    }
    let Some(assertion) = get("assertion") else {
        return refuse(
            recorder,
            StatusCode::BAD_REQUEST,
            Refusal(
                "invalid_request",
                "Missing required parameter: assertion".into(),
            ),
        );
    };
    let authority = parts
        .uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| parts.headers.get(HOST).and_then(|h| h.to_str().ok()));
    match oauth.verify(assertion, authority) {
        Ok(fcm_scope) => {
            let token = oauth.issue(fcm_scope);
            recorder
                .oauth_tokens_issued
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut resp = http_util::json_value(
                StatusCode::OK,
                &json!({
                    "access_token": token,
                    "expires_in": TOKEN_LIFETIME_SECS,
                    "token_type": "Bearer",
                }),
            );
            resp.headers_mut()
                .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
            resp
        }
        Err(refusal) => refuse(recorder, StatusCode::BAD_REQUEST, refusal),
    }
}

fn refuse(
    recorder: &Recorder,
    status: StatusCode,
    Refusal(error, description): Refusal,
) -> Response<Body> {
    recorder
        .oauth_rejected
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let body = json!({ "error": error, "error_description": description });
    match serde_json::to_vec(&body) {
        Ok(b) => http_util::json(status, b),
        Err(_) => http_util::json(status, Bytes::from_static(b"{}")),
    }
}
