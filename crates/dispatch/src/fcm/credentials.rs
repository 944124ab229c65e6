//! FCM credentials: the OAuth 2.0 bearer token (scope `firebase.messaging`).
//! [`BearerCache`] is what [`super::FcmClient::new`] takes, as the APNs
//! client takes its provider token (`crate::apns::credentials`); a local
//! failure to get a token is reported as [`crate::RetryCause::Credentials`].
//!
//! Where tokens come from (SPEC §9, "OAuth"):
//! - **A service-account file**: our own JWT-bearer exchange (RFC 7523, as
//!   Google documents it for service accounts): an RS256 assertion (`kid` =
//!   the key's `private_key_id`; `iss` = `client_email`, `aud` = the key's
//!   `token_uri`, `scope` = [`FCM_SCOPE`], `iat`, `exp` = `iat` + 1 h),
//!   signed by gcp_auth's `CustomServiceAccount::signer()`, is posted as
//!   `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer&assertion=…`
//!   to the `token_uri` with the app's own HTTP client: the platform's roots
//!   plus the app's `ca_file`, a connect timeout and an overall timeout
//!   ([`TokenSettings`]). Every fetch is a real exchange, never a cached copy.
//! - **Application Default Credentials** (Workload Identity, the metadata
//!   server, `GOOGLE_APPLICATION_CREDENTIALS`): gcp_auth, whose discovery
//!   at start-up is bounded by [`TokenSettings::discovery_timeout`] and
//!   each fetch by [`TokenSettings::fetch_timeout`]. gcp_auth takes no CA
//!   and caches tokens; after a 401 the provider is discovered anew (a fresh
//!   provider has an empty cache). The metadata server itself caches tokens
//!   until about 5 minutes before their expiry, so on GKE a "new" token may
//!   be the same value: that is counted as no refresh.
//!
//! Fail fast, single flight: one fetch at a time, run as its own task
//! (aborted when the cache is dropped), which every caller that needs a
//! token waits on. A caller's wait ends at its deadline or when its
//! `give_up` is cancelled; the fetch goes on for the others, bounded by the
//! fetch timeout. A failed fetch fails every waiter at once, and puts the
//! credential in a jittered exponential backoff (1 s doubling to 60 s, reset
//! by a success) during which [`BearerCache::token`] fails at once, naming
//! the last failure and the time to the next try ([`BearerCache::backoff`]).
//!
//! A refresh is counted ([`BearerCache::fetches`]) only when the token value
//! changed; failed fetches are counted ([`BearerCache::failures`]).
//!
//! A service-account file is read again before each fetch (about hourly, and
//! after a 401): when its content changed — a rotated key, as Secret Manager
//! CSI or a Kubernetes Secret update writes it — the new key is used from
//! then on, without a restart. A file that does not load keeps the old key.
//!
//! Secrets (the private key, the assertion, access tokens) never appear in
//! errors, logs or `Debug` output; a refusal names the HTTP status and the
//! OAuth `error` code only.

use std::hash::BuildHasher;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use gcp_auth::TokenProvider;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The scope FCM HTTP v1 needs.
pub const FCM_SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";

/// Default longest wait for one token fetch (the exchange or an ADC fetch).
/// Every FCM send of the app waits on that one fetch, so a hung endpoint
/// must not hold them long.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Default longest wait for the TCP and TLS setup to the token endpoint.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default longest wait for Application Default Credentials discovery.
pub const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(10);
/// Default first backoff after a failed fetch.
pub const MIN_BACKOFF: Duration = Duration::from_secs(1);
/// Default longest backoff after failed fetches.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// The form prefix of a JWT-bearer token request (`grant_type`
/// form-encoded; the assertion, base64url and dots, needs no escaping).
const JWT_BEARER_FORM: &str =
    "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion=";
/// Lifetime of an assertion (Google's maximum).
const ASSERTION_LIFETIME_SECS: u64 = 3600;
/// Lifetime assumed when the token endpoint gives no `expires_in`.
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);
/// A token is replaced this long before its end (or at half its life, if shorter).
const REFRESH_MARGIN: Duration = Duration::from_secs(60);

/// How tokens are fetched: the token endpoint's CA, timeouts and backoff.
#[derive(Clone, Debug)]
pub struct TokenSettings {
    /// Extra root CA for the token endpoint (the app's `ca_file`); used by
    /// the service-account exchange (gcp_auth's ADC cannot take one).
    pub ca_file: Option<PathBuf>,
    /// TCP + TLS setup to the token endpoint.
    pub connect_timeout: Duration,
    /// One whole fetch (connect, request, answer; or an ADC fetch).
    pub fetch_timeout: Duration,
    /// Application Default Credentials discovery (start-up, and after a 401).
    pub discovery_timeout: Duration,
    /// First backoff after a failed fetch; doubles per failure.
    pub min_backoff: Duration,
    /// Longest backoff.
    pub max_backoff: Duration,
}

impl TokenSettings {
    /// The defaults ([`FETCH_TIMEOUT`], [`CONNECT_TIMEOUT`],
    /// [`DISCOVERY_TIMEOUT`], [`MIN_BACKOFF`]…[`MAX_BACKOFF`]) with this CA.
    pub fn new(ca_file: Option<PathBuf>) -> TokenSettings {
        TokenSettings {
            ca_file,
            connect_timeout: CONNECT_TIMEOUT,
            fetch_timeout: FETCH_TIMEOUT,
            discovery_timeout: DISCOVERY_TIMEOUT,
            min_backoff: MIN_BACKOFF,
            max_backoff: MAX_BACKOFF,
        }
    }
}

impl Default for TokenSettings {
    fn default() -> TokenSettings {
        TokenSettings::new(None)
    }
}

/// A bearer token could not be had.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// The credentials could not be loaded.
    #[error("cannot load FCM credentials {source_name}: {source}")]
    Load {
        /// The file, or "Application Default Credentials".
        source_name: String,
        /// gcp_auth's error.
        #[source]
        source: gcp_auth::Error,
    },
    /// A service-account file lacks a field the exchange needs.
    #[error("cannot load FCM credentials {path}: {problem}")]
    KeyFile {
        /// The file.
        path: String,
        /// What is wrong (never the key).
        problem: String,
    },
    /// The `ca_file` cannot be used.
    #[error("cannot use the CA file {path} for the OAuth token endpoint: {problem}")]
    CaFile {
        /// The file.
        path: String,
        /// Why.
        problem: String,
    },
    /// The HTTP client for the token endpoint could not be built.
    #[error("cannot build the HTTP client for the OAuth token endpoint: {0}")]
    HttpClient(#[source] reqwest::Error),
    /// Application Default Credentials discovery did not finish in time.
    #[error(
        "finding Application Default Credentials took longer than {0:?} (no metadata server reachable?); set credentials_file to a service-account key, or check the network"
    )]
    Discovery(Duration),
    /// The fetch this caller waited on failed.
    #[error("cannot get an FCM access token: {0}")]
    Fetch(#[source] Arc<FetchError>),
    /// A recent fetch failed: no new fetch before the backoff ends.
    #[error("no FCM access token: the last fetch failed ({last}); next try in {retry_in:?}")]
    Backoff {
        /// The last failure.
        #[source]
        last: Arc<FetchError>,
        /// Until the next fetch may start.
        retry_in: Duration,
    },
    /// The caller's deadline came first (the fetch goes on for others).
    #[error("no FCM access token before the send's deadline (a token fetch is under way)")]
    Deadline,
    /// The caller gave up waiting (`give_up` was cancelled).
    #[error("gave up waiting for an FCM access token")]
    GaveUp,
}

/// Why one token fetch failed. Shared by every caller that waited on it.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// No answer within the fetch timeout.
    #[error("the OAuth token endpoint did not answer within {0:?}")]
    Timeout(Duration),
    /// The request could not be made (connect, TLS, I/O).
    #[error("the token request to {token_uri} failed: {detail}")]
    Request {
        /// The key's `token_uri`.
        token_uri: String,
        /// What failed (reqwest's error and its causes).
        detail: String,
    },
    /// The token endpoint refused (non-2xx).
    #[error("the token endpoint {token_uri} answered {status}{}", error.as_ref().map(|e| format!(" ({e})")).unwrap_or_default())]
    Refused {
        /// The key's `token_uri`.
        token_uri: String,
        /// HTTP status.
        status: u16,
        /// The OAuth `error` code (e.g. `invalid_grant`), if the body had one.
        error: Option<String>,
    },
    /// A 2xx answer that is not an OAuth token response.
    #[error("the token endpoint's answer is not an OAuth token response: {0}")]
    Answer(String),
    /// The service-account key could not sign the assertion.
    #[error("cannot sign the token request with the service-account key: {0}")]
    Sign(#[source] gcp_auth::Error),
    /// Application Default Credentials gave no token.
    #[error("Application Default Credentials gave no token: {0}")]
    Adc(#[source] gcp_auth::Error),
    /// Application Default Credentials discovery (after a 401) took too long.
    #[error("finding Application Default Credentials took longer than {0:?}")]
    Discovery(Duration),
    /// The token holds characters not allowed in an HTTP header.
    #[error("the FCM access token holds characters not allowed in an HTTP header")]
    Unusable,
    /// The fetch task ended without a result (the cache was dropped).
    #[error("the token fetch ended without a result")]
    Aborted,
}

/// A bearer token with its ready-made `authorization` header value.
#[derive(Clone)]
pub struct Bearer {
    authorization: http::HeaderValue,
    /// When it should be replaced (before its end).
    refresh_at: Instant,
}

impl Bearer {
    fn new(token: &str, lifetime: Duration) -> Result<Bearer, FetchError> {
        // Built once per token and cloned per request (a refcount, no copy).
        // h2 never puts `authorization` into the HPACK dynamic table,
        // sensitive or not (see `crate::apns::credentials`): each request
        // carries the value as a Huffman-encoded literal. Marking it
        // sensitive would change only that literal's "never indexed" flag,
        // not its cost. It is not marked.
        let authorization = http::HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| FetchError::Unusable)?;
        let margin = REFRESH_MARGIN.min(lifetime / 2);
        Ok(Bearer {
            authorization,
            refresh_at: Instant::now() + lifetime.saturating_sub(margin),
        })
    }

    /// A token from a gcp_auth provider (ADC or a given one).
    fn from_gcp(token: &gcp_auth::Token) -> Result<Bearer, FetchError> {
        let lifetime = SystemTime::from(token.expires_at())
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        Bearer::new(token.as_str(), lifetime)
    }

    fn fresh(&self, now: Instant) -> bool {
        now < self.refresh_at
    }

    /// `Bearer <token>`, for the `authorization` header.
    pub fn authorization(&self) -> &http::HeaderValue {
        &self.authorization
    }
}

impl std::fmt::Debug for Bearer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the token.
        f.debug_struct("Bearer").finish_non_exhaustive()
    }
}

/// What the exchange needs from a service-account key file.
struct ServiceAccount {
    client_email: String,
    token_uri: String,
    private_key_id: Option<String>,
    /// gcp_auth's parse of the key: used for its signer only.
    key: gcp_auth::CustomServiceAccount,
}

impl ServiceAccount {
    /// Parses a service-account JSON (never echoing the key).
    fn parse(path: &Path, content: &[u8]) -> Result<ServiceAccount, CredentialsError> {
        #[derive(serde::Deserialize)]
        struct Fields {
            client_email: Option<String>,
            token_uri: Option<String>,
            private_key_id: Option<String>,
        }
        let load = |source| CredentialsError::Load {
            source_name: path.display().to_string(),
            source,
        };
        let text = std::str::from_utf8(content).map_err(|_| {
            load(gcp_auth::Error::Str(
                "the service-account file is not UTF-8 JSON",
            ))
        })?;
        let key = gcp_auth::CustomServiceAccount::from_json(text).map_err(load)?;
        let fields: Fields = serde_json::from_str(text).map_err(|_| CredentialsError::KeyFile {
            path: path.display().to_string(),
            problem: "not a service-account JSON".into(),
        })?;
        let missing = |field: &str| CredentialsError::KeyFile {
            path: path.display().to_string(),
            problem: format!("`{field}` is missing"),
        };
        Ok(ServiceAccount {
            client_email: fields.client_email.ok_or_else(|| missing("client_email"))?,
            token_uri: fields.token_uri.ok_or_else(|| missing("token_uri"))?,
            private_key_id: fields.private_key_id,
            key,
        })
    }

    /// The signed JWT-bearer assertion (RS256, unpadded base64url).
    fn assertion(&self) -> Result<String, FetchError> {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header = match &self.private_key_id {
            Some(kid) => serde_json::json!({"alg": "RS256", "typ": "JWT", "kid": kid}),
            None => serde_json::json!({"alg": "RS256", "typ": "JWT"}),
        };
        let iat = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let claims = serde_json::json!({
            "iss": self.client_email,
            "scope": FCM_SCOPE,
            "aud": self.token_uri,
            "iat": iat,
            "exp": iat + ASSERTION_LIFETIME_SECS,
        });
        let mut jwt = b64.encode(header.to_string());
        jwt.push('.');
        b64.encode_string(claims.to_string(), &mut jwt);
        let signature = self
            .key
            .signer()
            .sign(jwt.as_bytes())
            .map_err(FetchError::Sign)?;
        jwt.push('.');
        b64.encode_string(signature, &mut jwt);
        Ok(jwt)
    }
}

/// A service-account file, its parsed key, and the content it was parsed from.
struct KeyFile {
    path: PathBuf,
    content: Vec<u8>,
    account: ServiceAccount,
}

impl KeyFile {
    fn load(path: &Path) -> Result<KeyFile, CredentialsError> {
        let content = std::fs::read(path).map_err(|e| CredentialsError::Load {
            source_name: path.display().to_string(),
            source: gcp_auth::Error::Io("cannot read the service-account file", e),
        })?;
        let account = ServiceAccount::parse(path, &content)?;
        Ok(KeyFile {
            path: path.to_path_buf(),
            content,
            account,
        })
    }

    /// Reads the file again (off the async threads); if its content changed
    /// and loads, the new key is used from now on.
    async fn reload_if_rotated(&mut self) {
        let path = self.path.clone();
        let read = tokio::task::spawn_blocking(move || std::fs::read(&path)).await;
        let content = match read {
            Ok(Ok(content)) => content,
            Ok(Err(e)) => {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot read the FCM service-account file; keeping the loaded key");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading the FCM service-account file failed");
                return;
            }
        };
        if content == self.content {
            return;
        }
        match ServiceAccount::parse(&self.path, &content) {
            Ok(account) => {
                self.account = account;
                tracing::info!(path = %self.path.display(), "FCM service-account file changed; using the new key");
            }
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "FCM service-account file changed but does not load; keeping the loaded key")
            }
        }
        self.content = content;
    }
}

/// Where tokens come from.
enum Source {
    /// Our own exchange with the key of a service-account file.
    File {
        file: Box<KeyFile>,
        http: reqwest::Client,
    },
    /// gcp_auth's Application Default Credentials; `None` = discover anew.
    Adc(Option<Arc<dyn TokenProvider>>),
    /// A given gcp_auth provider (tests).
    Given(Arc<dyn TokenProvider>),
}

impl Source {
    /// One fetch. `refused`: the last token was refused (401), so a provider
    /// that caches (ADC) is rebuilt.
    async fn fetch(
        &mut self,
        settings: &TokenSettings,
        refused: bool,
    ) -> Result<Bearer, FetchError> {
        match self {
            Source::File { file, http } => {
                file.reload_if_rotated().await;
                exchange(http, &file.account).await
            }
            Source::Adc(provider) => {
                if refused {
                    *provider = None;
                }
                let p = match provider {
                    Some(p) => p.clone(),
                    None => {
                        let p =
                            discover(settings.discovery_timeout)
                                .await
                                .map_err(|e| match e {
                                    Discovery::Timeout(t) => FetchError::Discovery(t),
                                    Discovery::Failed(e) => FetchError::Adc(e),
                                })?;
                        *provider = Some(p.clone());
                        p
                    }
                };
                let token = p.token(&[FCM_SCOPE]).await.map_err(FetchError::Adc)?;
                Bearer::from_gcp(&token)
            }
            Source::Given(p) => {
                let token = p.token(&[FCM_SCOPE]).await.map_err(FetchError::Adc)?;
                Bearer::from_gcp(&token)
            }
        }
    }
}

enum Discovery {
    Timeout(Duration),
    Failed(gcp_auth::Error),
}

/// gcp_auth's ADC discovery, bounded.
async fn discover(timeout: Duration) -> Result<Arc<dyn TokenProvider>, Discovery> {
    match tokio::time::timeout(timeout, gcp_auth::provider()).await {
        Err(_) => Err(Discovery::Timeout(timeout)),
        Ok(r) => r.map_err(Discovery::Failed),
    }
}

/// The JWT-bearer exchange: one POST to the key's `token_uri`.
async fn exchange(http: &reqwest::Client, account: &ServiceAccount) -> Result<Bearer, FetchError> {
    #[derive(serde::Deserialize)]
    struct Granted {
        access_token: String,
        expires_in: Option<u64>,
    }
    #[derive(serde::Deserialize)]
    struct Refusal {
        error: Option<String>,
    }
    let request_failed = |e: reqwest::Error| FetchError::Request {
        token_uri: account.token_uri.clone(),
        detail: chain(&e),
    };
    let mut form = String::from(JWT_BEARER_FORM);
    form.push_str(&account.assertion()?);
    let answer = http
        .post(&account.token_uri)
        .header(
            http::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .body(form)
        .send()
        .await
        .map_err(request_failed)?;
    let status = answer.status();
    let body = answer.bytes().await.map_err(request_failed)?;
    if !status.is_success() {
        let error = serde_json::from_slice::<Refusal>(&body)
            .ok()
            .and_then(|r| r.error)
            // An OAuth error code is a short token; anything else is not echoed.
            .filter(|e| {
                e.len() <= 64
                    && e.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            });
        return Err(FetchError::Refused {
            token_uri: account.token_uri.clone(),
            status: status.as_u16(),
            error,
        });
    }
    // serde's message could quote the token: only its category and position.
    let granted: Granted =
        serde_json::from_slice(&body).map_err(|e| FetchError::Answer(serde_problem(&e)))?;
    let lifetime = granted
        .expires_in
        .map_or(DEFAULT_TOKEN_LIFETIME, Duration::from_secs);
    Bearer::new(&granted.access_token, lifetime)
}

/// A JSON error without echoing input: its category and position.
fn serde_problem(e: &serde_json::Error) -> String {
    let what = match e.classify() {
        serde_json::error::Category::Io => "I/O error",
        serde_json::error::Category::Syntax => "not JSON",
        serde_json::error::Category::Data => {
            "no string `access_token` (or `expires_in` not a number)"
        }
        serde_json::error::Category::Eof => "truncated JSON",
    };
    format!("{what} (line {}, column {})", e.line(), e.column())
}

/// An error and its causes, on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

/// The HTTP client of the exchange: platform roots plus `ca_file`, the
/// connect timeout. The overall timeout is [`Shared::fetch`]'s, around the
/// whole fetch (a second timer here would race it and blur the error).
fn http_client(settings: &TokenSettings) -> Result<reqwest::Client, CredentialsError> {
    let mut builder = reqwest::Client::builder().connect_timeout(settings.connect_timeout);
    if let Some(path) = &settings.ca_file {
        let ca_error = |problem: String| CredentialsError::CaFile {
            path: path.display().to_string(),
            problem,
        };
        let pem = std::fs::read(path).map_err(|e| ca_error(e.to_string()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| ca_error(format!("not PEM certificates: {e}")))?;
        if certs.is_empty() {
            return Err(ca_error("holds no PEM certificate".into()));
        }
        builder = builder.tls_certs_merge(certs);
    }
    builder.build().map_err(CredentialsError::HttpClient)
}

/// A failed fetch and when the next may start.
struct Failure {
    error: Arc<FetchError>,
    until: Instant,
}

/// The result every waiter of one fetch gets.
type FlightResult = Option<Result<Bearer, Arc<FetchError>>>;

/// The fetch under way.
struct Flight {
    done: watch::Receiver<FlightResult>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct State {
    /// The token in use.
    current: Option<Bearer>,
    /// The last token value fetched (to count only changed tokens).
    last_value: Option<http::HeaderValue>,
    /// When a new token value was last fetched.
    last_at: Option<SystemTime>,
    flight: Option<Flight>,
    failure: Option<Failure>,
    /// Failed fetches in a row (the backoff's exponent).
    failures_in_row: u32,
    /// The provider refused the token in use (401): rebuild a caching provider.
    refused: bool,
}

struct Shared {
    settings: TokenSettings,
    /// Only the fetch task locks it, one at a time.
    source: tokio::sync::Mutex<Source>,
    state: std::sync::Mutex<State>,
    fetches: AtomicU64,
    failures: AtomicU64,
}

impl Shared {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// One fetch, bounded by the fetch timeout.
    async fn fetch(&self) -> Result<Bearer, FetchError> {
        let refused = std::mem::take(&mut self.state().refused);
        let timeout = self.settings.fetch_timeout;
        let fetch = async {
            let mut source = self.source.lock().await;
            source.fetch(&self.settings, refused).await
        };
        match tokio::time::timeout(timeout, fetch).await {
            Ok(r) => r,
            Err(_) => Err(FetchError::Timeout(timeout)),
        }
    }

    /// Records a fetch's result: the token, or the failure and its backoff.
    fn settle(&self, result: Result<Bearer, FetchError>) -> Result<Bearer, Arc<FetchError>> {
        let mut state = self.state();
        state.flight = None;
        match result {
            Ok(bearer) => {
                if state.last_value.as_ref() != Some(&bearer.authorization) {
                    self.fetches.fetch_add(1, Ordering::Relaxed);
                    state.last_value = Some(bearer.authorization.clone());
                    state.last_at = Some(SystemTime::now());
                } else {
                    tracing::debug!("the token endpoint gave the same FCM access token again");
                }
                state.current = Some(bearer.clone());
                state.failure = None;
                state.failures_in_row = 0;
                Ok(bearer)
            }
            Err(error) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                state.failures_in_row = state.failures_in_row.saturating_add(1);
                let delay = backoff_delay(&self.settings, state.failures_in_row);
                tracing::warn!(%error, retry_in = ?delay, "FCM access token fetch failed");
                let error = Arc::new(error);
                state.failure = Some(Failure {
                    error: error.clone(),
                    until: Instant::now() + delay,
                });
                Err(error)
            }
        }
    }
}

/// The backoff after `n` failures in a row: `min` doubling to `max`,
/// jittered down by up to half.
fn backoff_delay(settings: &TokenSettings, n: u32) -> Duration {
    let doublings = n.saturating_sub(1).min(16);
    let full = settings
        .min_backoff
        .saturating_mul(1 << doublings)
        .min(settings.max_backoff);
    // A random fraction in [0, 1) from std's randomly keyed hasher.
    let random = std::collections::hash_map::RandomState::new().hash_one(std::time::Instant::now());
    let fraction = (random >> 11) as f64 / (1u64 << 53) as f64;
    full.mul_f64(1.0 - fraction / 2.0)
}

/// Caches the bearer token of one set of credentials (see the module doc).
pub struct BearerCache {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for BearerCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the token.
        f.debug_struct("BearerCache").finish_non_exhaustive()
    }
}

impl Drop for BearerCache {
    fn drop(&mut self) {
        if let Some(flight) = self.shared.state().flight.take() {
            flight.task.abort();
        }
    }
}

impl BearerCache {
    /// From a service-account file (our own exchange), or Application
    /// Default Credentials when `file` is `None` (discovery bounded by
    /// `settings.discovery_timeout`). Fetches no token yet.
    pub async fn new(
        file: Option<&Path>,
        settings: &TokenSettings,
    ) -> Result<BearerCache, CredentialsError> {
        let source = match file {
            Some(path) => {
                let owned = path.to_path_buf();
                let file = tokio::task::spawn_blocking(move || KeyFile::load(&owned))
                    .await
                    .map_err(|e| CredentialsError::Load {
                        source_name: path.display().to_string(),
                        source: gcp_auth::Error::Io(
                            "reading the service-account file failed",
                            std::io::Error::other(e.to_string()),
                        ),
                    })??;
                Source::File {
                    file: Box::new(file),
                    http: http_client(settings)?,
                }
            }
            None => Source::Adc(Some(discover(settings.discovery_timeout).await.map_err(
                |e| match e {
                    Discovery::Timeout(t) => CredentialsError::Discovery(t),
                    Discovery::Failed(source) => CredentialsError::Load {
                        source_name: "Application Default Credentials".into(),
                        source,
                    },
                },
            )?)),
        };
        Ok(BearerCache::with_source(source, settings))
    }

    /// Loads a service-account file as [`BearerCache::new`] does (its JSON
    /// and private key), without fetching a token: for `check-config`.
    pub fn check_file(path: &Path) -> Result<(), CredentialsError> {
        KeyFile::load(path).map(drop)
    }

    /// Around any gcp_auth token provider (tests), with these settings.
    pub fn with_provider(
        provider: Arc<dyn TokenProvider>,
        settings: &TokenSettings,
    ) -> BearerCache {
        BearerCache::with_source(Source::Given(provider), settings)
    }

    fn with_source(source: Source, settings: &TokenSettings) -> BearerCache {
        BearerCache {
            shared: Arc::new(Shared {
                settings: settings.clone(),
                source: tokio::sync::Mutex::new(source),
                state: std::sync::Mutex::new(State::default()),
                fetches: AtomicU64::new(0),
                failures: AtomicU64::new(0),
            }),
        }
    }

    /// A valid bearer token. Without a fresh one, waits on the fetch under
    /// way (or starts one) until `deadline`, or until `give_up` is
    /// cancelled; the fetch itself goes on for the other callers. During
    /// the backoff after a failed fetch, fails at once.
    pub async fn token(
        &self,
        deadline: Instant,
        give_up: Option<&CancellationToken>,
    ) -> Result<Bearer, CredentialsError> {
        let mut done = {
            let mut state = self.shared.state();
            let now = Instant::now();
            if let Some(b) = &state.current
                && b.fresh(now)
            {
                return Ok(b.clone());
            }
            if let Some(f) = &state.failure
                && f.until > now
            {
                return Err(CredentialsError::Backoff {
                    last: f.error.clone(),
                    retry_in: f.until - now,
                });
            }
            match &state.flight {
                Some(flight) => flight.done.clone(),
                None => self.start(&mut state),
            }
        };
        let given_up = async {
            match give_up {
                Some(t) => t.cancelled().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            r = done.wait_for(Option::is_some) => match r.map(|v| v.clone()) {
                Ok(Some(Ok(bearer))) => Ok(bearer),
                Ok(Some(Err(e))) => Err(CredentialsError::Fetch(e)),
                Ok(None) | Err(_) => Err(CredentialsError::Fetch(Arc::new(FetchError::Aborted))),
            },
            () = given_up => Err(CredentialsError::GaveUp),
            () = tokio::time::sleep_until(deadline) => Err(CredentialsError::Deadline),
        }
    }

    /// Starts the fetch task; the caller holds the state lock.
    fn start(&self, state: &mut State) -> watch::Receiver<FlightResult> {
        let (tx, done) = watch::channel(None);
        let shared = self.shared.clone();
        let task = tokio::spawn(async move {
            let result = shared.fetch().await;
            let result = shared.settle(result);
            tx.send_replace(Some(result));
        });
        state.flight = Some(Flight {
            done: done.clone(),
            task,
        });
        done
    }

    /// `Some(remaining)` while the credential is in its failure backoff
    /// (and no fresh token is at hand): a send now fails at once.
    pub fn backoff(&self) -> Option<Duration> {
        let state = self.shared.state();
        let now = Instant::now();
        if state.current.as_ref().is_some_and(|b| b.fresh(now)) {
            return None;
        }
        state
            .failure
            .as_ref()
            .filter(|f| f.until > now)
            .map(|f| f.until - now)
    }

    /// FCM refused `stale` (401): it is dropped, and the next
    /// [`BearerCache::token`] makes a real fetch (for ADC, with a
    /// rediscovered provider, whose cache is empty).
    pub fn invalidate(&self, stale: &Bearer) {
        let mut state = self.shared.state();
        if state
            .current
            .as_ref()
            .is_some_and(|t| t.authorization == stale.authorization)
        {
            state.current = None;
            state.refused = true;
        }
    }

    /// Failed fetches since start (for metrics).
    pub fn failures(&self) -> u64 {
        self.shared.failures.load(Ordering::Relaxed)
    }

    /// When the token in use was fetched (its value last changed).
    pub fn last_refresh(&self) -> Option<SystemTime> {
        self.shared.state().last_at
    }

    /// Fetches since start that gave a new token value (for metrics).
    pub fn fetches(&self) -> u64 {
        self.shared.fetches.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    /// A token endpoint that never answers.
    struct Hangs;

    #[async_trait::async_trait]
    impl TokenProvider for Hangs {
        async fn token(&self, _scopes: &[&str]) -> Result<Arc<gcp_auth::Token>, gcp_auth::Error> {
            std::future::pending().await
        }

        async fn project_id(&self) -> Result<Arc<str>, gcp_auth::Error> {
            std::future::pending().await
        }
    }

    /// A provider that fails while `failing`, else gives `ya29.<n>` where n
    /// counts fetches (or always `ya29.same` when `same`).
    #[derive(Default)]
    struct Scripted {
        failing: AtomicBool,
        same: AtomicBool,
        calls: AtomicU64,
    }

    #[async_trait::async_trait]
    impl TokenProvider for Scripted {
        async fn token(&self, _scopes: &[&str]) -> Result<Arc<gcp_auth::Token>, gcp_auth::Error> {
            let n = self.calls.fetch_add(1, Ordering::Relaxed);
            if self.failing.load(Ordering::Relaxed) {
                return Err(gcp_auth::Error::Str("refused"));
            }
            let value = if self.same.load(Ordering::Relaxed) {
                "ya29.same".to_string()
            } else {
                format!("ya29.{n}")
            };
            let token: gcp_auth::Token = serde_json::from_value(
                serde_json::json!({"access_token": value, "expires_in": 3600}),
            )
            .expect("token");
            Ok(Arc::new(token))
        }

        async fn project_id(&self) -> Result<Arc<str>, gcp_auth::Error> {
            Err(gcp_auth::Error::Str("none"))
        }
    }

    fn later() -> Instant {
        Instant::now() + Duration::from_secs(3600)
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_waiters_share_one_hung_fetch_and_fail_together_then_back_off() {
        let cache = Arc::new(BearerCache::with_provider(
            Arc::new(Hangs),
            &TokenSettings::default(),
        ));
        let started = Instant::now();
        let mut waiters = tokio::task::JoinSet::new();
        for _ in 0..50 {
            let cache = cache.clone();
            waiters.spawn(async move { (cache.token(later(), None).await, Instant::now()) });
        }
        while let Some(joined) = waiters.join_next().await {
            let (result, ended) = joined.expect("waiter");
            let err = result.expect_err("no token from a hung endpoint");
            assert!(
                matches!(&err, CredentialsError::Fetch(e) if matches!(**e, FetchError::Timeout(t) if t == FETCH_TIMEOUT)),
                "{err}"
            );
            assert_eq!(
                ended - started,
                FETCH_TIMEOUT,
                "all at once, not one after another"
            );
        }
        assert_eq!(cache.failures(), 1, "one fetch for 50 waiters");
        assert_eq!(cache.fetches(), 0);

        // The backoff: fails at once, naming the failure and the next try.
        let backoff = cache.backoff().expect("in backoff");
        assert!(
            backoff >= MIN_BACKOFF / 2 && backoff <= MIN_BACKOFF,
            "{backoff:?}"
        );
        let before = Instant::now();
        let err = cache.token(later(), None).await.expect_err("in backoff");
        assert_eq!(Instant::now(), before, "at once");
        let text = err.to_string();
        assert!(matches!(err, CredentialsError::Backoff { .. }), "{text}");
        assert!(
            text.contains("did not answer within") && text.contains("next try in"),
            "{text}"
        );
        assert_eq!(cache.failures(), 1);

        // Once it ends, the next caller fetches again; the backoff doubles.
        tokio::time::advance(backoff).await;
        assert!(cache.backoff().is_none());
        assert!(cache.token(later(), None).await.is_err());
        assert_eq!(cache.failures(), 2);
        let second = cache.backoff().expect("in backoff");
        assert!(
            second >= MIN_BACKOFF && second <= 2 * MIN_BACKOFF,
            "{second:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_leaves_at_its_deadline_or_when_it_gives_up_and_the_fetch_goes_on() {
        let cache = Arc::new(BearerCache::with_provider(
            Arc::new(Hangs),
            &TokenSettings::default(),
        ));
        let patient = {
            let cache = cache.clone();
            tokio::spawn(async move { cache.token(later(), None).await })
        };
        let started = Instant::now();
        let short = Duration::from_millis(300);
        let err = cache
            .token(started + short, None)
            .await
            .expect_err("deadline first");
        assert!(matches!(err, CredentialsError::Deadline), "{err}");
        assert_eq!(started.elapsed(), short);

        let give_up = CancellationToken::new();
        give_up.cancel();
        let err = cache
            .token(later(), Some(&give_up))
            .await
            .expect_err("gave up");
        assert!(matches!(err, CredentialsError::GaveUp), "{err}");
        assert_eq!(started.elapsed(), short, "at once");

        // The fetch was not cancelled by those who left: it ends at its timeout.
        let err = patient.await.expect("task").expect_err("hung");
        assert!(matches!(err, CredentialsError::Fetch(_)), "{err}");
        assert_eq!(started.elapsed(), FETCH_TIMEOUT);
        assert_eq!(cache.failures(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_resets_the_backoff_and_only_a_changed_token_counts_as_a_refresh() {
        let provider = Arc::new(Scripted::default());
        let cache = BearerCache::with_provider(provider.clone(), &TokenSettings::default());
        provider.failing.store(true, Ordering::Relaxed);
        assert!(cache.token(later(), None).await.is_err());
        tokio::time::advance(cache.backoff().expect("backoff")).await;
        assert!(cache.token(later(), None).await.is_err());
        assert_eq!(cache.failures(), 2);
        tokio::time::advance(cache.backoff().expect("backoff")).await;
        provider.failing.store(false, Ordering::Relaxed);
        let first = cache.token(later(), None).await.expect("token");
        assert_eq!(cache.fetches(), 1);
        assert!(cache.backoff().is_none());
        // Cached: no fetch.
        cache.token(later(), None).await.expect("token");
        assert_eq!(provider.calls.load(Ordering::Relaxed), 3);

        // A 401: the refused token is dropped and a real fetch is made.
        cache.invalidate(&first);
        let second = cache.token(later(), None).await.expect("token");
        assert_ne!(first.authorization(), second.authorization());
        assert_eq!(cache.fetches(), 2);

        // A fetch that returns the same value again is no refresh.
        provider.same.store(true, Ordering::Relaxed);
        cache.invalidate(&second);
        let third = cache.token(later(), None).await.expect("token");
        cache.invalidate(&third);
        let fourth = cache.token(later(), None).await.expect("token");
        assert_eq!(third.authorization(), fourth.authorization());
        assert_eq!(
            provider.calls.load(Ordering::Relaxed),
            6,
            "every 401 fetched"
        );
        assert_eq!(cache.fetches(), 3, "the repeated token was not counted");

        // After a failure, the next success resets the backoff to its start.
        provider.failing.store(true, Ordering::Relaxed);
        cache.invalidate(&fourth);
        assert!(cache.token(later(), None).await.is_err());
        let backoff = cache.backoff().expect("backoff");
        assert!(backoff <= MIN_BACKOFF, "reset by the success: {backoff:?}");
    }

    #[test]
    fn debug_and_errors_never_show_the_token() {
        let bearer = Bearer::new("ya29.secret", Duration::from_secs(60)).expect("bearer");
        assert!(!format!("{bearer:?}").contains("secret"));
        let refused = FetchError::Refused {
            token_uri: "https://oauth2.googleapis.com/token".into(),
            status: 400,
            error: Some("invalid_grant".into()),
        };
        assert_eq!(
            refused.to_string(),
            "the token endpoint https://oauth2.googleapis.com/token answered 400 (invalid_grant)"
        );
    }

    #[test]
    fn backoff_doubles_to_its_cap_with_jitter() {
        let s = TokenSettings::default();
        for (n, full) in [(1, 1), (2, 2), (3, 4), (7, 60), (40, 60)] {
            let d = backoff_delay(&s, n);
            let full = Duration::from_secs(full);
            assert!(d >= full / 2 && d <= full, "{n}: {d:?}");
        }
    }
}
