//! APNs credentials: the provider token, an ES256 JWT (`kid`, `iss`, `iat`)
//! signed with the team's `.p8` key and shared by every connection of a key.
//! [`ProviderToken`] is what [`super::ApnsClient::new`] takes, as the FCM
//! client takes its OAuth bearer (`crate::fcm::credentials`); a local failure
//! to sign one is reported as [`crate::RetryCause::Credentials`].
//!
//! Apple wants the token refreshed between 20 and 60 minutes; refreshing more
//! often trips `TooManyProviderTokenUpdates`. So one generation is signed at a
//! time and reused until it is [`REFRESH_AFTER`] old (single-flight: one
//! caller signs, the others wait on the lock and reuse its result), and never
//! replaced sooner than [`MIN_AGE`] — except that an `ExpiredProviderToken`
//! answer replaces the generation it rejected, once: later answers that
//! name the same (already replaced) generation change nothing. A generation
//! that was itself such an early replacement is not replaced early again
//! before [`MIN_AGE`]: if Apple keeps rejecting fresh tokens (a skewed
//! clock, a revoked key), pushes fail as retryable instead of minting a new
//! token per push.
//!
//! A key that cannot sign fails the push at once as
//! [`crate::RetryCause::Credentials`], and puts the key in a backoff (1 s
//! doubling to 60 s, reset by a successful signature) during which no new
//! signature is tried: a burst of sends does not re-sign per request.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

/// Age after which a generation is replaced on next use.
pub const REFRESH_AFTER: Duration = Duration::from_secs(50 * 60);
/// Youngest age at which a generation may be replaced for age reasons.
pub const MIN_AGE: Duration = Duration::from_secs(20 * 60);
/// First backoff after a signing failure; doubles per failure in a row.
pub const MIN_SIGN_BACKOFF: Duration = Duration::from_secs(1);
/// Longest backoff after signing failures.
pub const MAX_SIGN_BACKOFF: Duration = Duration::from_secs(60);

/// The key could not be loaded or a token signed.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// The `.p8` file could not be read.
    #[error("cannot read the APNs key {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not an ES256 (P-256, PKCS#8 PEM) key.
    #[error("{path} is not an APNs .p8 key (PKCS#8 PEM, P-256): {source}")]
    Key {
        /// The file.
        path: String,
        /// jsonwebtoken's complaint.
        #[source]
        source: jsonwebtoken::errors::Error,
    },
    /// Signing failed.
    #[error("cannot sign the APNs provider token: {0}")]
    Sign(#[source] jsonwebtoken::errors::Error),
    /// Signing failed recently: no new try before the backoff ends.
    #[error("cannot sign the APNs provider token ({problem}); next try in {retry_in:?}")]
    Backoff {
        /// The last signing failure.
        problem: String,
        /// Until the next try.
        retry_in: Duration,
    },
}

/// The last signing failure and when the next try may be.
struct SignFailure {
    problem: String,
    until: Instant,
    in_row: u32,
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    iat: u64,
}

/// One signed token and when it was made.
#[derive(Clone)]
pub struct Generation {
    /// `bearer` value.
    pub jwt: Arc<str>,
    /// The ready-made `authorization` header value (`bearer <jwt>`).
    pub authorization: http::HeaderValue,
    /// Increases by one per new token.
    pub id: u64,
    issued: Instant,
    /// Signed early, because APNs rejected the generation before it.
    early: bool,
}

impl std::fmt::Debug for Generation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the token: it is a bearer credential.
        f.debug_struct("Generation")
            .field("id", &self.id)
            .field("age", &self.issued.elapsed())
            .field("early", &self.early)
            .finish_non_exhaustive()
    }
}

/// The provider token of one key.
pub struct ProviderToken {
    key: EncodingKey,
    header: Header,
    team_id: String,
    current: RwLock<Option<Generation>>,
    refreshes: std::sync::atomic::AtomicU64,
    failures: std::sync::atomic::AtomicU64,
    /// When the generation in use was signed.
    last: std::sync::Mutex<Option<SystemTime>>,
    /// The signing backoff, after a failure.
    failure: std::sync::Mutex<Option<SignFailure>>,
    /// Tests: make every signature fail.
    #[cfg(test)]
    fail_signing: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for ProviderToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("ProviderToken")
            .field("kid", &self.header.kid)
            .field("team_id", &self.team_id)
            .finish_non_exhaustive()
    }
}

impl ProviderToken {
    /// Loads the `.p8` key and checks that it can sign.
    pub fn from_file(
        path: &std::path::Path,
        key_id: &str,
        team_id: &str,
    ) -> Result<ProviderToken, CredentialsError> {
        let pem = std::fs::read(path).map_err(|source| CredentialsError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_pem(&pem, key_id, team_id).map_err(|e| match e {
            CredentialsError::Key { source, .. } => CredentialsError::Key {
                path: path.display().to_string(),
                source,
            },
            other => other,
        })
    }

    /// Like [`ProviderToken::from_file`], from PEM bytes.
    pub fn from_pem(
        pem: &[u8],
        key_id: &str,
        team_id: &str,
    ) -> Result<ProviderToken, CredentialsError> {
        let key = EncodingKey::from_ec_pem(pem).map_err(|source| CredentialsError::Key {
            path: "(in memory)".into(),
            source,
        })?;
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(key_id.to_string());
        let token = ProviderToken {
            key,
            header,
            team_id: team_id.to_string(),
            current: RwLock::new(None),
            refreshes: std::sync::atomic::AtomicU64::new(0),
            failures: std::sync::atomic::AtomicU64::new(0),
            last: std::sync::Mutex::new(None),
            failure: std::sync::Mutex::new(None),
            #[cfg(test)]
            fail_signing: std::sync::atomic::AtomicBool::new(false),
        };
        // Sign once now so that a bad key fails at startup, not on the first push.
        token.sign(0)?;
        Ok(token)
    }

    fn failure(&self) -> std::sync::MutexGuard<'_, Option<SignFailure>> {
        self.failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Signs a generation, unless a recent failure's backoff is running.
    fn sign(&self, id: u64) -> Result<Generation, CredentialsError> {
        let mut failure = self.failure();
        let now = Instant::now();
        if let Some(f) = failure.as_ref()
            && f.until > now
        {
            return Err(CredentialsError::Backoff {
                problem: f.problem.clone(),
                retry_in: f.until - now,
            });
        }
        let signed = self.sign_inner(id);
        match &signed {
            Ok(_) => *failure = None,
            Err(e) => {
                self.failures
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let in_row = failure.as_ref().map_or(0, |f| f.in_row).saturating_add(1);
                let delay = MIN_SIGN_BACKOFF
                    .saturating_mul(1 << in_row.saturating_sub(1).min(16))
                    .min(MAX_SIGN_BACKOFF);
                tracing::error!(error = %e, retry_in = ?delay, "cannot sign the APNs provider token");
                *failure = Some(SignFailure {
                    problem: e.to_string(),
                    until: now + delay,
                    in_row,
                });
            }
        }
        signed
    }

    /// `Some(remaining)` while signing is in its failure backoff and no
    /// usable generation is at hand: a send now fails at once.
    pub fn backoff(&self) -> Option<Duration> {
        if self
            .read()
            .is_some_and(|g| g.issued.elapsed() < REFRESH_AFTER)
        {
            return None;
        }
        let now = Instant::now();
        self.failure()
            .as_ref()
            .filter(|f| f.until > now)
            .map(|f| f.until - now)
    }

    fn sign_inner(&self, id: u64) -> Result<Generation, CredentialsError> {
        #[cfg(test)]
        if self.fail_signing.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(CredentialsError::Sign(
                jsonwebtoken::errors::ErrorKind::InvalidKeyFormat.into(),
            ));
        }
        let iat = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let jwt = jsonwebtoken::encode(
            &self.header,
            &Claims {
                iss: &self.team_id,
                iat,
            },
            &self.key,
        )
        .map_err(CredentialsError::Sign)?;
        // Built once per generation and cloned per request (a refcount, no
        // copy). h2 never puts `authorization` into the HPACK dynamic table,
        // sensitive or not: its encoder skips value indexing for that name
        // (h2 0.4 `hpack::Header::skip_value_index`, a list taken from
        // nghttp2), so every request carries static name index 23 and the
        // ~200-byte value as a Huffman-encoded literal "without indexing".
        // Marking the value sensitive would only switch that literal to
        // "never indexed" (which tells proxies not to index it either);
        // the bytes encoded per request stay the same. It is not marked.
        let authorization =
            http::HeaderValue::from_str(&format!("bearer {jwt}")).map_err(|_| {
                CredentialsError::Sign(jsonwebtoken::errors::ErrorKind::InvalidToken.into())
            })?;
        Ok(Generation {
            authorization,
            jwt: jwt.into(),
            id,
            issued: Instant::now(),
            early: false,
        })
    }

    /// The token to send now; signs a new generation when the current one is
    /// [`REFRESH_AFTER`] old (or none exists).
    pub fn current(&self) -> Result<Generation, CredentialsError> {
        if let Some(g) = self.read()
            && g.issued.elapsed() < REFRESH_AFTER
        {
            return Ok(g);
        }
        let mut slot = self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Single flight: someone may have refreshed while we waited.
        if let Some(g) = slot.as_ref()
            && g.issued.elapsed() < REFRESH_AFTER
        {
            return Ok(g.clone());
        }
        let next_id = slot.as_ref().map_or(1, |g| g.id + 1);
        let generation = self.sign(next_id)?;
        *slot = Some(generation.clone());
        self.refreshed();
        Ok(generation)
    }

    /// APNs answered `ExpiredProviderToken` to generation `id`: replace it,
    /// unless it was already replaced. Returns the generation to use now, or
    /// `None` when the rejected generation was itself an early replacement
    /// younger than [`MIN_AGE`]: replacing it again so soon would trip
    /// `TooManyProviderTokenUpdates`, so the push fails as it is.
    pub fn rejected(&self, id: u64) -> Result<Option<Generation>, CredentialsError> {
        let mut slot = self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match slot.as_ref() {
            Some(g) if g.id != id => Ok(Some(g.clone())),
            Some(g) if g.early && g.issued.elapsed() < MIN_AGE => Ok(None),
            _ => {
                let mut generation = self.sign(id + 1)?;
                generation.early = true;
                *slot = Some(generation.clone());
                self.refreshed();
                Ok(Some(generation))
            }
        }
    }

    /// Signing failures since start (for metrics).
    pub fn failures(&self) -> u64 {
        self.failures.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// When the generation in use was signed.
    pub fn last_refresh(&self) -> Option<SystemTime> {
        *self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn refreshed(&self) {
        self.refreshes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        *self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(SystemTime::now());
    }

    /// Tokens signed since start (for metrics).
    pub fn refreshes(&self) -> u64 {
        self.refreshes.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn read(&self) -> Option<Generation> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    #[cfg(test)]
    fn age_current_by(&self, by: Duration) {
        let mut slot = self.current.write().expect("lock");
        if let Some(g) = slot.as_mut() {
            g.issued = g.issued.checked_sub(by).expect("instant");
        }
    }
}

/// The provider tokens of a process, one per key (file, key id, team id):
/// apps of one Apple team that share a `.p8` key share its generation, its
/// refreshes and its `ExpiredProviderToken` replacement (SPEC §6).
#[derive(Debug, Default)]
pub struct ProviderTokens {
    by_key: std::collections::HashMap<(std::path::PathBuf, String, String), Arc<ProviderToken>>,
}

impl ProviderTokens {
    /// The token of this key, loading it on first use.
    pub fn get(
        &mut self,
        path: &std::path::Path,
        key_id: &str,
        team_id: &str,
    ) -> Result<Arc<ProviderToken>, CredentialsError> {
        let id = (path.to_path_buf(), key_id.to_string(), team_id.to_string());
        if let Some(token) = self.by_key.get(&id) {
            return Ok(token.clone());
        }
        let token = Arc::new(ProviderToken::from_file(path, key_id, team_id)?);
        self.by_key.insert(id, token.clone());
        Ok(token)
    }
}

/// A throwaway P-256 key for tests (PKCS#8 PEM).
#[cfg(test)]
pub(crate) const TEST_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgBKPcXQYlx9gN0YuY
TgGcJGRJTa02caWBfKmwsySBFJShRANCAATTQuzZrcLi01wuvZZsyhVF3sgF+aDN
lMteR4mEpiwtq53ioDVrCjYSggnE35ezsBEQIDFCHi//u0KkFL8fD6AC
-----END PRIVATE KEY-----
";

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> ProviderToken {
        ProviderToken::from_pem(TEST_KEY.as_bytes(), "ABC123DEFG", "DEF123GHIJ").expect("key")
    }

    #[test]
    fn the_jwt_carries_kid_iss_and_iat() {
        let g = token().current().expect("sign");
        let header = jsonwebtoken::decode_header(g.jwt.as_bytes()).expect("header");
        assert_eq!(header.alg, Algorithm::ES256);
        assert_eq!(header.kid.as_deref(), Some("ABC123DEFG"));
        let payload = g.jwt.split('.').nth(1).expect("payload");
        use base64::Engine;
        let claims: serde_json::Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .expect("b64"),
        )
        .expect("json");
        assert_eq!(claims["iss"], "DEF123GHIJ");
        assert!(claims["iat"].as_u64().expect("iat") > 1_700_000_000);
    }

    #[test]
    fn one_generation_is_shared_until_it_is_old() {
        let t = token();
        let a = t.current().expect("sign");
        let b = t.current().expect("sign");
        assert_eq!(a.id, b.id);
        assert_eq!(a.jwt, b.jwt);
        t.age_current_by(MIN_AGE);
        assert_eq!(
            t.current().expect("sign").id,
            a.id,
            "20 minutes is too young"
        );
        t.age_current_by(REFRESH_AFTER);
        assert_eq!(t.current().expect("sign").id, a.id + 1);
    }

    #[test]
    fn expired_provider_token_replaces_the_rejected_generation_once() {
        let t = token();
        let g1 = t.current().expect("sign");
        let g2 = t.rejected(g1.id).expect("sign").expect("replaced");
        assert_eq!(g2.id, g1.id + 1);
        // Many in-flight requests of g1 are rejected too: no further change.
        for _ in 0..10 {
            let same = t.rejected(g1.id).expect("sign").expect("the newer one");
            assert_eq!(same.id, g2.id);
        }
        assert_eq!(t.current().expect("current").id, g2.id);
        assert_eq!(t.refreshes(), 2);
    }

    #[test]
    fn an_early_replacement_is_not_replaced_again_before_min_age() {
        let t = token();
        let g1 = t.current().expect("sign");
        let g2 = t.rejected(g1.id).expect("sign").expect("replaced");
        // Apple rejects the fresh token too (e.g. our clock is off): no new
        // token per push, which would trip TooManyProviderTokenUpdates.
        for _ in 0..10 {
            assert!(t.rejected(g2.id).expect("sign").is_none());
        }
        assert_eq!(t.refreshes(), 2);
        assert_eq!(t.current().expect("current").id, g2.id);
        // Once MIN_AGE old, a rejection may replace it again.
        t.age_current_by(MIN_AGE);
        let g3 = t.rejected(g2.id).expect("sign").expect("replaced");
        assert_eq!(g3.id, g2.id + 1);
    }

    #[test]
    fn debug_never_prints_the_token() {
        let g = token().current().expect("sign");
        let shown = format!("{g:?}");
        assert!(!shown.contains(&*g.jwt), "{shown}");
        assert!(shown.contains("id"), "{shown}");
    }

    #[test]
    fn apps_of_one_key_share_one_token() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("AuthKey_ABC123DEFG.p8");
        std::fs::write(&path, TEST_KEY).expect("write key");
        let mut tokens = ProviderTokens::default();
        let a = tokens.get(&path, "ABC123DEFG", "DEF123GHIJ").expect("load");
        let b = tokens.get(&path, "ABC123DEFG", "DEF123GHIJ").expect("load");
        assert!(Arc::ptr_eq(&a, &b), "same key, same token");
        assert_eq!(a.current().expect("sign").id, b.current().expect("sign").id);
        let other_team = tokens.get(&path, "ABC123DEFG", "OTHERTEAM1").expect("load");
        assert!(
            !Arc::ptr_eq(&a, &other_team),
            "another iss is another token"
        );
    }

    #[test]
    fn a_key_that_cannot_sign_backs_off_instead_of_signing_per_request() {
        let t = token();
        t.fail_signing
            .store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(matches!(t.current(), Err(CredentialsError::Sign(_))));
        assert_eq!(t.failures(), 1);
        assert!(t.backoff().is_some_and(|d| d <= MIN_SIGN_BACKOFF));
        // A burst during the backoff fails at once, without signing.
        for _ in 0..100 {
            let err = t.current().expect_err("in backoff");
            assert!(matches!(err, CredentialsError::Backoff { .. }), "{err}");
            assert!(err.to_string().contains("next try in"), "{err}");
        }
        assert_eq!(t.failures(), 1, "no signature was tried during the backoff");
    }

    #[test]
    fn a_bad_key_fails_at_load() {
        let err = ProviderToken::from_pem(b"not a key", "K", "T").expect_err("bad key");
        assert!(matches!(err, CredentialsError::Key { .. }));
    }
}
