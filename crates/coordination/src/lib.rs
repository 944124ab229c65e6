//! The shared state of a push-dispatch fleet (issue 16, SPEC §9 "Dedup",
//! "Fleet guard", "Fleet rate limit"): dedup claims, the guard's window
//! counts, a rate-limit bucket and a pod roster, kept either in this process
//! (the default: one replica, local runs) or in Redis (Memorystore for Redis
//! or Valkey, standalone or HA, never cluster).
//!
//! [`Coordinator`] is an enum over the two backends with the same inherent
//! async methods; `coordination.redis_url: null` selects
//! [`Coordinator::in_process`], a URL selects [`Coordinator::redis`].
//!
//! # What is stored (Redis), under `coordination.prefix` (`P`)
//!
//! | key | type | holds | expiry | written by |
//! |---|---|---|---|---|
//! | `P:dedup:<sha256 hex>` | string | `p:<claimer>` (pending) or `d:delivered` / `d:dead` / `d:dead_lettered` | `dedup.pending`, then `dedup.window` | [`Coordinator::claim`], [`Coordinator::record`] |
//! | `P:guard:<app>:<platform>` | hash | `<bucket>:s` sends, `<bucket>:x` suspicious answers, one pair per window/10 | window + one bucket, renewed on write | [`Coordinator::guard_record`] |
//! | `P:rate:<rate key>` | hash | `tokens`, `ts` (server time, s) of a token bucket | time to refill + 1 s | [`Coordinator::reserve`] |
//! | `P:pods` | sorted set | pod name → expiry (server ms) | 2 × heartbeat ttl | [`Coordinator::heartbeat`] |
//!
//! The dedup key is the SHA-256 of (app, request_id, platform, token), each
//! length-prefixed: a device token never reaches Redis. Every method is **one
//! round trip** (one `EVALSHA` of a small Lua script, whatever the number of
//! targets; a script unknown to the server costs one extra `SCRIPT LOAD`
//! once per connection). Scripts read the server's clock (`TIME`), so pods'
//! clocks need not agree.
//!
//! # Failure
//!
//! [`Coordinator::redis`] never blocks nor fails because Redis is down: it
//! connects in the background and calls fail fast with
//! [`CoordError::Unavailable`] until the server answers. Every call is bounded
//! by `coordination.timeout` (default 250 ms); a failed call marks the backend
//! [`BackendState::Down`] and a background probe (every 500 ms while down,
//! every 5 s while up) reconnects. The backend logs each transition once
//! (warn when down, info when up, error when refused); the worker watches
//! [`Coordinator::watch_state`] for its metric and falls back to per-pod
//! behaviour while the backend is not up. A cluster-mode server (a
//! `redis+cluster://` URL, `cluster_enabled:1`, a `MOVED` answer) is refused
//! with [`CoordError::ClusterRefused`].

mod memory;
mod redis_backend;
#[cfg(feature = "test-support")]
pub mod test_support;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

pub use redis_backend::redact_url;

/// Default of `coordination.prefix`.
pub const DEFAULT_PREFIX: &str = "push-dispatch";
/// Default of `coordination.timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(250);
/// Buckets of the guard's shared window: counts are kept per window/10.
pub const GUARD_BUCKETS: u32 = 10;

/// One target of one request, as dedup knows it.
///
/// A request without `request_id` (empty) is never deduplicated: callers
/// skip its targets (SPEC §9 "Dedup"); [`Coordinator::claim`] answers
/// [`Claim::Mine`] for such a key without storing anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DedupKey<'a> {
    /// The app name (`apps[].name`).
    pub app: &'a str,
    /// The producer's idempotency key.
    pub request_id: &'a str,
    /// `apns` or `fcm`.
    pub platform: &'a str,
    /// The device token (hashed, never stored).
    pub token: &'a str,
}

impl DedupKey<'_> {
    /// The SHA-256 of the four fields, each length-prefixed.
    pub fn digest(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        for part in [self.app, self.request_id, self.platform, self.token] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        h.finalize().into()
    }

    /// Whether this key takes part in dedup (a non-empty `request_id`).
    pub fn is_deduplicated(&self) -> bool {
        !self.request_id.is_empty()
    }
}

/// A final outcome recorded for a target: a later copy is suppressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DoneAs {
    /// The provider accepted the push.
    Delivered,
    /// The token was reported dead (a `TokenInvalidated` event was published).
    ReportedDead,
    /// The target was dead-lettered.
    DeadLettered,
}

impl DoneAs {
    fn stored(self) -> &'static str {
        match self {
            DoneAs::Delivered => "d:delivered",
            DoneAs::ReportedDead => "d:dead",
            DoneAs::DeadLettered => "d:dead_lettered",
        }
    }

    fn from_stored(v: &str) -> Option<DoneAs> {
        match v {
            "d:delivered" => Some(DoneAs::Delivered),
            "d:dead" => Some(DoneAs::ReportedDead),
            "d:dead_lettered" => Some(DoneAs::DeadLettered),
            _ => None,
        }
    }
}

/// The answer of [`Coordinator::claim`] for one key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// Claimed now by this call: send it, then [`Coordinator::record`] the
    /// final outcome or release the claim.
    Mine,
    /// A final outcome was recorded within the window: do not send again.
    Done(DoneAs),
    /// Another copy holds a pending claim: carry the target forward (retry
    /// later), never suppress it.
    PendingElsewhere {
        /// When that claim lapses unless its holder records an outcome.
        expires_in: Duration,
    },
}

/// Which guard window: one per app and platform.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GuardScope<'a> {
    /// The app name.
    pub app: &'a str,
    /// `apns` or `fcm`.
    pub platform: &'a str,
}

/// The guard window's totals after a [`Coordinator::guard_record`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuardCounts {
    /// Final answers in the window, fleet-wide.
    pub sends: u64,
    /// Of which carried a suspicious dead-token reason.
    pub suspicious: u64,
}

/// What a fleet rate limit is keyed by: the provider's quota holder.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RateKey(String);

impl RateKey {
    /// FCM quotas are per Firebase project.
    pub fn fcm(project_id: &str) -> RateKey {
        RateKey(format!("fcm:{project_id}"))
    }

    /// APNs, per team and topic (bundle id).
    pub fn apns(team_id: &str, topic: &str) -> RateKey {
        RateKey(format!("apns:{team_id}:{topic}"))
    }

    /// The key's text, e.g. `fcm:my-project`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The answer of [`Coordinator::reserve`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reservation {
    /// Tokens granted now (0..=want): spend them locally.
    pub granted: u32,
    /// When less than asked was granted: how long until the next token.
    /// Zero when everything was granted.
    pub retry_in: Duration,
}

/// The backend's health, for the worker's log line and metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendState {
    /// The in-process store: always available.
    InProcess,
    /// Redis configured, not yet reached since start.
    Connecting,
    /// Redis answers.
    Up,
    /// Redis failed; calls fail fast with [`CoordError::Unavailable`] and a
    /// background probe reconnects.
    Down,
    /// The server is a cluster; every call fails with [`CoordError::ClusterRefused`].
    Refused,
}

impl BackendState {
    /// A metric label: `in_process`, `connecting`, `up`, `down`, `refused`.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendState::InProcess => "in_process",
            BackendState::Connecting => "connecting",
            BackendState::Up => "up",
            BackendState::Down => "down",
            BackendState::Refused => "refused",
        }
    }
}

/// How to reach Redis (`coordination.*`). `Debug` redacts the password.
#[derive(Clone)]
pub struct RedisSettings {
    /// `redis://[user:password@]host:port[/db]` or `rediss://…` (TLS). Secret.
    pub url: String,
    /// The CA that signed the server's certificate (Memorystore's server CA),
    /// for `rediss://`; none = the system roots.
    pub ca_file: Option<PathBuf>,
    /// Prefix of every key, so that deployments can share a server.
    pub prefix: String,
    /// Bound of every call.
    pub timeout: Duration,
}

impl RedisSettings {
    /// Settings with the default prefix and timeout.
    pub fn new(url: impl Into<String>) -> RedisSettings {
        RedisSettings {
            url: url.into(),
            ca_file: None,
            prefix: DEFAULT_PREFIX.to_string(),
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

impl std::fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSettings")
            .field("url", &redact_url(&self.url))
            .field("ca_file", &self.ca_file)
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// A coordination call failed. Messages never hold the Redis password.
#[derive(Debug, thiserror::Error)]
pub enum CoordError {
    /// Redis cannot be reached now (down, timed out, not yet connected): fall
    /// back to per-pod behaviour and skip dedup.
    #[error("Redis unavailable: {reason}")]
    Unavailable {
        /// What failed.
        reason: String,
    },
    /// The server runs in cluster mode.
    #[error(
        "config key `coordination.redis_url`: the server is a Redis Cluster (Memorystore Cluster); it is not supported: use a standalone or HA (Standard tier) instance"
    )]
    ClusterRefused,
    /// The settings are unusable.
    #[error("config key `{key}`: {problem}")]
    Config {
        /// The config key at fault.
        key: &'static str,
        /// What is wrong and how to fix it.
        problem: String,
    },
    /// Redis answered something the scripts never return (a bug or a foreign
    /// key under our prefix).
    #[error("unexpected answer from Redis to {call}: {detail}")]
    Reply {
        /// The call.
        call: &'static str,
        /// The answer.
        detail: String,
    },
}

/// The coordination backend: in-process or Redis. Cheap to clone (shared).
#[derive(Clone, Debug)]
pub enum Coordinator {
    /// State in this process only (one replica, local runs).
    InProcess(Arc<memory::Memory>),
    /// State in Redis, shared by the fleet.
    Redis(Arc<redis_backend::RedisBackend>),
}

impl Coordinator {
    /// The in-process backend; the dedup store keeps at most `max_entries`
    /// keys (the oldest inserted go first).
    pub fn in_process(max_entries: usize) -> Coordinator {
        Coordinator::InProcess(Arc::new(memory::Memory::new(max_entries)))
    }

    /// The Redis backend. Returns at once: it connects in the background,
    /// and calls fail with [`CoordError::Unavailable`] until Redis answers.
    /// Fails only on unusable settings (a bad URL, a cluster URL, an
    /// unreadable `ca_file`) or outside a tokio runtime.
    pub fn redis(settings: &RedisSettings) -> Result<Coordinator, CoordError> {
        Ok(Coordinator::Redis(Arc::new(
            redis_backend::RedisBackend::new(settings)?,
        )))
    }

    /// Claims every key at once (one round trip), each with a pending expiry
    /// of `pending_for`. Keys with an empty `request_id` answer
    /// [`Claim::Mine`] and are not stored.
    pub async fn claim(
        &self,
        keys: &[DedupKey<'_>],
        pending_for: Duration,
    ) -> Result<Vec<Claim>, CoordError> {
        match self {
            Coordinator::InProcess(m) => Ok(m.claim(keys, pending_for)),
            Coordinator::Redis(r) => r.claim(keys, pending_for).await,
        }
    }

    /// Records final outcomes (overwriting the claim, expiry `window`) and
    /// releases this pod's still-pending claims of `release` (retryable
    /// failures), in one round trip. A claim that is no longer ours (lapsed
    /// and taken by another pod, or already final) is left alone.
    pub async fn record(
        &self,
        finals: &[(DedupKey<'_>, DoneAs)],
        window: Duration,
        release: &[DedupKey<'_>],
    ) -> Result<(), CoordError> {
        match self {
            Coordinator::InProcess(m) => {
                m.record(finals, window, release);
                Ok(())
            }
            Coordinator::Redis(r) => r.record(finals, window, release).await,
        }
    }

    /// Adds `sends` final answers and `suspicious` ones to the guard window
    /// of `scope` and returns the window's fleet-wide totals, in one round
    /// trip. The window is kept in [`GUARD_BUCKETS`] buckets of window/10:
    /// the totals cover the current bucket and the 9 before it, so between
    /// 0.9 × and 1 × `window` of history.
    pub async fn guard_record(
        &self,
        scope: &GuardScope<'_>,
        window: Duration,
        sends: u64,
        suspicious: u64,
    ) -> Result<GuardCounts, CoordError> {
        match self {
            Coordinator::InProcess(m) => Ok(m.guard_record(scope, window, sends, suspicious)),
            Coordinator::Redis(r) => r.guard_record(scope, window, sends, suspicious).await,
        }
    }

    /// Takes up to `want` tokens from the shared bucket of `key` (refilled at
    /// `per_second`, holding at most `burst`, full when new), in one round
    /// trip. Ask for a batch and spend it locally; never call per push.
    pub async fn reserve(
        &self,
        key: &RateKey,
        per_second: f64,
        burst: f64,
        want: u32,
    ) -> Result<Reservation, CoordError> {
        if !(per_second.is_finite() && per_second > 0.0 && burst.is_finite() && burst > 0.0) {
            return Err(CoordError::Config {
                key: "rate_limit.per_second",
                problem: format!("{per_second}/s with burst {burst} is not a rate"),
            });
        }
        match self {
            Coordinator::InProcess(m) => Ok(m.reserve(key, per_second, burst, want)),
            Coordinator::Redis(r) => r.reserve(key, per_second, burst, want).await,
        }
    }

    /// Marks `pod` alive for `ttl` and returns how many pods are alive
    /// (this one included): the fallback share of a fleet rate is
    /// `per_second ÷ live pods`. Call it every ttl/3 or so.
    pub async fn heartbeat(&self, pod: &str, ttl: Duration) -> Result<u32, CoordError> {
        match self {
            Coordinator::InProcess(m) => Ok(m.heartbeat(pod, ttl)),
            Coordinator::Redis(r) => r.heartbeat(pod, ttl).await,
        }
    }

    /// The backend's state now.
    pub fn state(&self) -> BackendState {
        match self {
            Coordinator::InProcess(_) => BackendState::InProcess,
            Coordinator::Redis(r) => r.state(),
        }
    }

    /// Whether calls are expected to succeed (in-process, or Redis up).
    pub fn is_up(&self) -> bool {
        matches!(self.state(), BackendState::InProcess | BackendState::Up)
    }

    /// A receiver that sees every state change (for a gauge; the backend
    /// already logs each change once).
    pub fn watch_state(&self) -> tokio::sync::watch::Receiver<BackendState> {
        match self {
            Coordinator::InProcess(_) => tokio::sync::watch::channel(BackendState::InProcess).1,
            Coordinator::Redis(r) => r.watch_state(),
        }
    }

    /// Calls that failed so far (timeouts, lost connections, refusals), for
    /// a counter.
    pub fn failures(&self) -> u64 {
        match self {
            Coordinator::InProcess(_) => 0,
            Coordinator::Redis(r) => r.failures(),
        }
    }

    /// Requests sent to Redis so far (0 in-process): one per call.
    pub fn round_trips(&self) -> u64 {
        match self {
            Coordinator::InProcess(_) => 0,
            Coordinator::Redis(r) => r.round_trips(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_digest_separates_fields() {
        let a = DedupKey {
            app: "ab",
            request_id: "c",
            platform: "fcm",
            token: "t",
        };
        let b = DedupKey {
            app: "a",
            request_id: "bc",
            ..a
        };
        assert_ne!(a.digest(), b.digest());
        assert_eq!(a.digest(), a.digest());
    }

    #[test]
    fn debug_of_the_settings_hides_the_password() {
        let s = RedisSettings::new("rediss://:hunter2@10.0.0.3:6378");
        let shown = format!("{s:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("10.0.0.3:6378"), "{shown}");
    }
}
