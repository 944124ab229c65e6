//! APNs provider tokens as the stand-in checks them: the ES256 JWT in
//! `authorization: bearer …` is verified against the public half of the
//! configured `.p8` key (header `kid` = the key id, claim `iss` = the team
//! id, `iat` neither older than an hour nor more than 5 minutes ahead), and
//! each connection remembers the newest token it used, so that a newer one
//! within 20 minutes is `TooManyProviderTokenUpdates`.
//!
//! Verified tokens are cached (bounded: 4,096 tokens; when full, tokens older
//! than an hour are dropped, then everything), so the ES256 check runs once
//! per token, not per request. The `expire_provider_tokens` fault marks every
//! cached token expired.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair,
    UnparsedPublicKey,
};
use http::HeaderValue;
use rustls::pki_types::PrivatePkcs8KeyDer;
use rustls::pki_types::pem::PemObject;
use serde::Deserialize;

use super::reason::Reason;
use crate::config::ApnsSandboxConfig;
use crate::error::SandboxError;
use crate::http_util;
use crate::jws;
use crate::recorder::Recorder;

/// Provider tokens older than this are expired (Apple: one hour).
const TOKEN_MAX_AGE_SECS: i64 = 3600;
/// Provider tokens issued further ahead than this are refused.
const TOKEN_MAX_SKEW_SECS: i64 = 300;
/// A connection may switch to a newer token only this long after the previous one.
const TOKEN_MIN_REFRESH_SECS: i64 = 20 * 60;
/// Verified tokens kept.
const TOKEN_CACHE_CAPACITY: usize = 4096;

/// The key that verifies provider tokens, and the tokens it verified.
pub(super) struct ProviderTokens {
    key_id: String,
    team_id: String,
    public_key: UnparsedPublicKey<Vec<u8>>,
    verified: RwLock<HashMap<Box<str>, Arc<ProviderToken>>>,
    /// Bumped by reset, so generations are counted again afterwards.
    epoch: AtomicU64,
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
    pub(super) authed: AtomicBool,
    /// Serializes requests until `authed`.
    pub(super) gate: tokio::sync::Mutex<()>,
    /// The newest provider token used on this connection.
    current: Mutex<Option<Arc<ProviderToken>>>,
}

impl ProviderTokens {
    /// Loads the `.p8` key of `config` and checks its key id and team id.
    pub(super) fn load(config: &ApnsSandboxConfig) -> Result<Self, SandboxError> {
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
        Ok(Self {
            key_id: config.key_id.clone(),
            team_id: config.team_id.clone(),
            public_key: UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, public_key),
            verified: RwLock::new(HashMap::new()),
            epoch: AtomicU64::new(0),
        })
    }

    /// Starts counting token generations afresh.
    pub(super) fn reset(&self) {
        self.epoch.fetch_add(1, Ordering::Relaxed);
    }

    /// Marks every token verified so far as expired; returns how many were still valid.
    pub(super) fn expire_current_tokens(&self) -> u64 {
        let now = http_util::unix_now();
        let tokens = self.verified.read().unwrap_or_else(PoisonError::into_inner);
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
    pub(super) fn authenticate(
        &self,
        header: Option<&HeaderValue>,
        recorder: &Recorder,
    ) -> Result<Arc<ProviderToken>, Reason> {
        let header = header.ok_or(Reason::MissingProviderToken)?;
        let jwt = http_util::bearer(header).ok_or(Reason::InvalidProviderToken)?;
        if jwt.is_empty() {
            return Err(Reason::MissingProviderToken);
        }
        let now = http_util::unix_now();
        let epoch = self.epoch.load(Ordering::Relaxed);
        let cached = self
            .verified
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(jwt)
            .cloned();
        let token = match cached {
            Some(token) => {
                if token.counted_in_epoch.load(Ordering::Relaxed) != epoch
                    && token.counted_in_epoch.swap(epoch, Ordering::Relaxed) != epoch
                {
                    recorder
                        .apns_token_generations
                        .fetch_add(1, Ordering::Relaxed);
                }
                token
            }
            None => {
                let iat = self.verify(jwt, recorder)?;
                if iat > now + TOKEN_MAX_SKEW_SECS {
                    return Err(Reason::InvalidProviderToken);
                }
                if now - iat > TOKEN_MAX_AGE_SECS {
                    return Err(Reason::ExpiredProviderToken);
                }
                self.remember(jwt, iat, now, epoch, recorder)
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
        recorder: &Recorder,
    ) -> Arc<ProviderToken> {
        let mut tokens = self
            .verified
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if tokens.len() >= TOKEN_CACHE_CAPACITY && !tokens.contains_key(jwt) {
            tokens.retain(|_, t| now - t.iat <= TOKEN_MAX_AGE_SECS);
            if tokens.len() >= TOKEN_CACHE_CAPACITY {
                tokens.clear();
            }
        }
        match tokens.entry(jwt.into()) {
            Entry::Occupied(e) => e.get().clone(),
            Entry::Vacant(e) => {
                recorder
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
    fn verify(&self, jwt: &str, recorder: &Recorder) -> Result<i64, Reason> {
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
        recorder.jwt_verifications.fetch_add(1, Ordering::Relaxed);
        self.public_key
            .verify(parts.signing_input.as_bytes(), &signature)
            .map_err(|_| Reason::InvalidProviderToken)?;
        Ok(iat)
    }
}

impl ConnAuth {
    /// Applies the too-frequent-update rule to `token` on this connection.
    pub(super) fn accept_token(&self, token: &Arc<ProviderToken>) -> Result<(), Reason> {
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
