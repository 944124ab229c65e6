//! FCM credentials: the OAuth2 bearer token (scope `firebase.messaging`).
//! [`BearerCache`] is what [`super::FcmClient::new`] takes, as the APNs
//! client takes its provider token (`crate::apns::credentials`); a local
//! failure to get a token is reported as [`crate::RetryCause::Credentials`].
//!
//! gcp_auth fetches it: from a service-account file (whose `token_uri` may
//! point at a local stand-in), or from Application Default Credentials
//! (Workload Identity on GKE). gcp_auth caches tokens but lets every caller
//! that sees an expired one fetch anew; [`BearerCache`] adds single flight,
//! so a burst of sends at expiry costs one fetch.
//!
//! A service-account file is read again before each fetch (about hourly, and
//! after a 401): when its content changed — a rotated key, as Secret Manager
//! CSI or a Kubernetes Secret update writes it — the new key is used from
//! then on, without a restart. A file that does not load keeps the old key.

use std::sync::Arc;

use gcp_auth::{Token, TokenProvider};

/// The scope FCM HTTP v1 needs.
pub const FCM_SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";

/// A service-account file and the content its provider was loaded from.
struct LoadedFile {
    path: std::path::PathBuf,
    content: Vec<u8>,
}

/// Reads a service-account file and makes its token provider; returns the
/// content too, to tell a rotation later.
fn load_service_account(
    path: &std::path::Path,
) -> Result<(Vec<u8>, Arc<dyn TokenProvider>), CredentialsError> {
    let load = |source| CredentialsError::Load {
        source_name: path.display().to_string(),
        source,
    };
    let content = std::fs::read(path).map_err(|e| {
        load(gcp_auth::Error::Io(
            "cannot read the service-account file",
            e,
        ))
    })?;
    let provider = service_account(&content).map_err(load)?;
    Ok((content, provider))
}

/// A token provider for a service-account key (JSON).
fn service_account(content: &[u8]) -> Result<Arc<dyn TokenProvider>, gcp_auth::Error> {
    let text = std::str::from_utf8(content)
        .map_err(|_| gcp_auth::Error::Str("the service-account file is not UTF-8 JSON"))?;
    Ok(Arc::new(gcp_auth::CustomServiceAccount::from_json(text)?))
}

/// Longest wait for the token endpoint. Every FCM send waits on one fetch
/// (single flight), so a hung endpoint must not hold them all.
pub const FETCH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

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
    /// The token endpoint refused or failed.
    #[error("cannot get an FCM access token: {0}")]
    Fetch(#[source] gcp_auth::Error),
    /// The token endpoint did not answer within [`FETCH_TIMEOUT`].
    #[error("the OAuth token endpoint did not answer within {0:?}")]
    Timeout(std::time::Duration),
    /// The token endpoint gave a token that cannot be sent in a header.
    #[error("the FCM access token holds characters not allowed in an HTTP header")]
    Unusable,
}

/// A bearer token with its ready-made `authorization` header value.
#[derive(Clone)]
pub struct Bearer {
    token: Arc<Token>,
    authorization: http::HeaderValue,
}

impl Bearer {
    fn new(token: Arc<Token>) -> Result<Bearer, CredentialsError> {
        // Built once per token and cloned per request (a refcount, no copy).
        // h2 never puts `authorization` into the HPACK dynamic table,
        // sensitive or not (see `crate::apns::credentials`): each request
        // carries the value as a Huffman-encoded literal. Marking it
        // sensitive would change only that literal's "never indexed" flag,
        // not its cost. It is not marked.
        let authorization = http::HeaderValue::from_str(&format!("Bearer {}", token.as_str()))
            .map_err(|_| CredentialsError::Unusable)?;
        Ok(Bearer {
            token,
            authorization,
        })
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

/// Caches the bearer token of one set of credentials.
pub struct BearerCache {
    provider: std::sync::RwLock<Arc<dyn TokenProvider>>,
    current: tokio::sync::RwLock<Option<Bearer>>,
    /// Single flight; holds the service-account file and the content its
    /// provider was loaded from (none for ADC or a given provider).
    refresh: tokio::sync::Mutex<Option<LoadedFile>>,
    fetches: std::sync::atomic::AtomicU64,
    failures: std::sync::atomic::AtomicU64,
    /// When the token in use was fetched.
    last: std::sync::Mutex<Option<std::time::SystemTime>>,
}

impl std::fmt::Debug for BearerCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the token.
        f.debug_struct("BearerCache").finish_non_exhaustive()
    }
}

impl BearerCache {
    /// From a service-account file, or ADC when `file` is `None`.
    pub async fn new(file: Option<&std::path::Path>) -> Result<BearerCache, CredentialsError> {
        match file {
            Some(path) => {
                let (content, provider) = load_service_account(path)?;
                let cache = BearerCache::with_provider(provider);
                *cache.refresh.lock().await = Some(LoadedFile {
                    path: path.to_path_buf(),
                    content,
                });
                Ok(cache)
            }
            None => Ok(BearerCache::with_provider(
                gcp_auth::provider()
                    .await
                    .map_err(|source| CredentialsError::Load {
                        source_name: "Application Default Credentials".into(),
                        source,
                    })?,
            )),
        }
    }

    /// Loads a service-account file as [`BearerCache::new`] does (its JSON
    /// and private key), without fetching a token: for `check-config`.
    pub fn check_file(path: &std::path::Path) -> Result<(), CredentialsError> {
        load_service_account(path).map(drop)
    }

    /// Around any token provider (tests).
    pub fn with_provider(provider: Arc<dyn TokenProvider>) -> BearerCache {
        BearerCache {
            provider: std::sync::RwLock::new(provider),
            current: tokio::sync::RwLock::new(None),
            refresh: tokio::sync::Mutex::new(None),
            fetches: std::sync::atomic::AtomicU64::new(0),
            failures: std::sync::atomic::AtomicU64::new(0),
            last: std::sync::Mutex::new(None),
        }
    }

    fn fresh(bearer: &Bearer) -> bool {
        // gcp_auth counts a token expired 20 s before its end.
        !bearer.token.has_expired()
    }

    /// A valid bearer token; fetches (single flight) when needed.
    pub async fn token(&self) -> Result<Bearer, CredentialsError> {
        if let Some(t) = self.current.read().await.as_ref()
            && Self::fresh(t)
        {
            return Ok(t.clone());
        }
        let mut flight = self.refresh.lock().await;
        if let Some(t) = self.current.read().await.as_ref()
            && Self::fresh(t)
        {
            return Ok(t.clone());
        }
        if let Some(file) = flight.as_mut() {
            self.reload_if_rotated(file).await;
        }
        let provider = self
            .provider
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let fetched = tokio::time::timeout(FETCH_TIMEOUT, provider.token(&[FCM_SCOPE])).await;
        let token = match fetched
            .map_err(|_| CredentialsError::Timeout(FETCH_TIMEOUT))
            .and_then(|t| t.map_err(CredentialsError::Fetch))
            .and_then(Bearer::new)
        {
            Ok(t) => t,
            Err(e) => {
                self.failures
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return Err(e);
            }
        };
        self.fetches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        *self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some(std::time::SystemTime::now());
        *self.current.write().await = Some(token.clone());
        Ok(token)
    }

    /// Reads the service-account file again (off the async threads); if its
    /// content changed and loads, fetches go through the new key from now on.
    async fn reload_if_rotated(&self, file: &mut LoadedFile) {
        let path = file.path.clone();
        let read = tokio::task::spawn_blocking(move || std::fs::read(&path)).await;
        let content = match read {
            Ok(Ok(content)) => content,
            Ok(Err(e)) => {
                tracing::warn!(path = %file.path.display(), error = %e, "cannot read the FCM service-account file; keeping the loaded key");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading the FCM service-account file failed");
                return;
            }
        };
        if content == file.content {
            return;
        }
        match service_account(&content) {
            Ok(provider) => {
                *self
                    .provider
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = provider;
                tracing::info!(path = %file.path.display(), "FCM service-account file changed; using the new key");
            }
            Err(e) => {
                tracing::warn!(path = %file.path.display(), error = %e, "FCM service-account file changed but does not load; keeping the loaded key")
            }
        }
        file.content = content;
    }

    /// Forgets the cached token (FCM answered 401).
    pub async fn invalidate(&self, stale: &Bearer) {
        let mut slot = self.current.write().await;
        if slot
            .as_ref()
            .is_some_and(|t| t.token.as_str() == stale.token.as_str())
        {
            *slot = None;
        }
    }

    /// Failed fetches since start (for metrics).
    pub fn failures(&self) -> u64 {
        self.failures.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// When the token in use was fetched.
    pub fn last_refresh(&self) -> Option<std::time::SystemTime> {
        *self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Tokens fetched since start (for metrics).
    pub fn fetches(&self) -> u64 {
        self.fetches.load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A token endpoint that never answers.
    struct Hangs;

    #[async_trait::async_trait]
    impl TokenProvider for Hangs {
        async fn token(&self, _scopes: &[&str]) -> Result<Arc<Token>, gcp_auth::Error> {
            std::future::pending().await
        }

        async fn project_id(&self) -> Result<Arc<str>, gcp_auth::Error> {
            std::future::pending().await
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_token_endpoint_fails_after_the_fetch_timeout() {
        let cache = BearerCache::with_provider(Arc::new(Hangs));
        let started = tokio::time::Instant::now();
        let err = cache
            .token()
            .await
            .expect_err("no token from a hung endpoint");
        assert!(
            matches!(err, CredentialsError::Timeout(t) if t == FETCH_TIMEOUT),
            "{err}"
        );
        assert_eq!(started.elapsed(), FETCH_TIMEOUT);
        assert_eq!(cache.failures(), 1);
        assert_eq!(cache.fetches(), 0);
    }
}
