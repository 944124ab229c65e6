//! The Redis backend: one Lua script per call (one round trip), a
//! `ConnectionManager` (one multiplexed connection, reconnected by the
//! crate), a timeout around every call, and a background probe that owns the
//! up/down state.
//!
//! The probe (`INFO cluster`) runs every 500 ms while the backend is not up
//! and every 5 s while it is; a failed call wakes it at once. Its first
//! answer also tells a cluster-mode server, which is refused for good.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ErrorKind, RedisError, Script, ServerErrorKind};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::{
    BackendState, Claim, CoordError, DedupKey, DoneAs, GUARD_BUCKETS, GuardCounts, GuardScope,
    RateKey, RedisSettings, Reservation,
};

const PROBE_WHILE_DOWN: Duration = Duration::from_millis(500);
const PROBE_WHILE_UP: Duration = Duration::from_secs(5);

/// `KEYS`: dedup keys; `ARGV[1]`: our pending value, `ARGV[2]`: its expiry (ms).
/// Per key: `M` (claimed), `d:…` (final), or `p:<pttl ms>` (pending elsewhere).
const CLAIM: &str = r#"
local out = {}
for i, k in ipairs(KEYS) do
  if redis.call('SET', k, ARGV[1], 'NX', 'PX', ARGV[2]) then
    out[i] = 'M'
  else
    local v = redis.call('GET', k)
    if not v then
      redis.call('SET', k, ARGV[1], 'PX', ARGV[2])
      out[i] = 'M'
    elseif string.sub(v, 1, 2) == 'd:' then
      out[i] = v
    else
      out[i] = 'p:' .. redis.call('PTTL', k)
    end
  end
end
return out
"#;

/// `KEYS`: finals then releases; `ARGV`: number of finals, window (ms), our
/// pending value, then one final value per final key.
const RECORD: &str = r#"
local n = tonumber(ARGV[1])
for i = 1, n do
  redis.call('SET', KEYS[i], ARGV[3 + i], 'PX', ARGV[2])
end
local released = 0
for i = n + 1, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[3] then
    redis.call('DEL', KEYS[i])
    released = released + 1
  end
end
return released
"#;

/// `KEYS[1]`: the guard hash; `ARGV`: bucket (ms), buckets, sends,
/// suspicious, expiry (ms). Returns the window's {sends, suspicious}.
const GUARD: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local bms, nb = tonumber(ARGV[1]), tonumber(ARGV[2])
local s, x = tonumber(ARGV[3]), tonumber(ARGV[4])
local b = math.floor(now / bms)
local bs = string.format('%d', b)
if s > 0 then redis.call('HINCRBY', KEYS[1], bs .. ':s', s) end
if x > 0 then redis.call('HINCRBY', KEYS[1], bs .. ':x', x) end
local all = redis.call('HGETALL', KEYS[1])
local ts, tx = 0, 0
for i = 1, #all, 2 do
  local f = all[i]
  local sep = string.find(f, ':', 1, true)
  local fb = sep and tonumber(string.sub(f, 1, sep - 1))
  if not fb or fb <= b - nb then
    redis.call('HDEL', KEYS[1], f)
  elseif string.sub(f, sep + 1) == 's' then
    ts = ts + tonumber(all[i + 1])
  else
    tx = tx + tonumber(all[i + 1])
  end
end
if s > 0 or x > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[5]) end
return {ts, tx}
"#;

/// `KEYS[1]`: the bucket hash; `ARGV`: rate (/s), burst, want. Returns
/// {granted, µs until the next token (0 when all was granted)}.
const RESERVE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rate, burst, want = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local v = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens, ts = tonumber(v[1]), tonumber(v[2])
if not tokens or not ts then tokens, ts = burst, now end
if now > ts then tokens = math.min(burst, tokens + (now - ts) * rate) end
local granted = math.floor(tokens)
if granted > want then granted = want end
if granted < 0 then granted = 0 end
tokens = tokens - granted
local retry = 0
if granted < want and tokens < 1 then retry = math.ceil((1 - tokens) / rate * 1000000) end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.6f', tokens), 'ts', string.format('%.6f', now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {granted, retry}
"#;

/// `KEYS[1]`: the pod set; `ARGV`: pod, ttl (ms). Returns the live pods.
const HEARTBEAT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('PEXPIRE', KEYS[1], ttl * 2)
return redis.call('ZCARD', KEYS[1])
"#;

/// `url` with its password replaced by `***` (for logs and check-config).
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or("", |(u, _)| u);
            format!("{scheme}://{user}:***@{host}{path}")
        }
        None => url.to_string(),
    }
}

struct Scripts {
    claim: Script,
    record: Script,
    guard: Script,
    reserve: Script,
    heartbeat: Script,
}

struct Shared {
    conn: ConnectionManager,
    prefix: String,
    timeout: Duration,
    /// Stored in pending claims: releases delete only claims holding it.
    pending_value: String,
    state: watch::Sender<BackendState>,
    wake_probe: Notify,
    failures: AtomicU64,
    round_trips: AtomicU64,
    scripts: Scripts,
    /// `host:port` for log lines (never the password).
    target: String,
}

/// The Redis backend; dropping it stops its probe.
pub struct RedisBackend {
    shared: Arc<Shared>,
    probe: JoinHandle<()>,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("target", &self.shared.target)
            .field("prefix", &self.shared.prefix)
            .field("state", &*self.shared.state.borrow())
            .finish()
    }
}

impl Drop for RedisBackend {
    fn drop(&mut self) {
        self.probe.abort();
    }
}

fn config_error(problem: impl Into<String>) -> CoordError {
    CoordError::Config {
        key: "coordination.redis_url",
        problem: problem.into(),
    }
}

impl RedisBackend {
    pub(crate) fn new(settings: &RedisSettings) -> Result<RedisBackend, CoordError> {
        let url = settings.url.as_str();
        let scheme = url.split_once("://").map(|(s, _)| s).unwrap_or("");
        if scheme.contains("cluster") {
            return Err(CoordError::ClusterRefused);
        }
        let tls = match scheme {
            "redis" => false,
            "rediss" => true,
            _ => {
                return Err(config_error(format!(
                    "`{}` is not a Redis URL; write redis://host:6379 or rediss://host:6378 (TLS)",
                    redact_url(url)
                )));
            }
        };
        if settings.ca_file.is_some() && !tls {
            return Err(CoordError::Config {
                key: "coordination.ca_file",
                problem: "is set but coordination.redis_url is not rediss://; use rediss:// (TLS) or remove ca_file".into(),
            });
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| CoordError::Config {
            key: "coordination.redis_url",
            problem: "the Redis backend must be created inside a tokio runtime".into(),
        })?;
        let bad_url = |e: RedisError| {
            // The crate's message names the problem, not the URL.
            config_error(format!("`{}` is not usable: {e}", redact_url(url)))
        };
        let client = match (&settings.ca_file, tls) {
            (Some(ca), true) => {
                let pem = std::fs::read(ca).map_err(|e| CoordError::Config {
                    key: "coordination.ca_file",
                    problem: format!("cannot read {}: {e}", ca.display()),
                })?;
                // One TLS stack (rustls with aws-lc-rs); installing twice is harmless.
                let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
                redis::Client::build_with_tls(
                    url,
                    redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(pem),
                    },
                )
                .map_err(bad_url)?
            }
            (None, true) => {
                let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
                redis::Client::open(url).map_err(bad_url)?
            }
            _ => redis::Client::open(url).map_err(bad_url)?,
        };
        let target = client.get_connection_info().addr().to_string();
        let connect_timeout = (settings.timeout * 4).max(Duration::from_secs(1));
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(connect_timeout))
            .set_response_timeout(Some(settings.timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(100))
            .set_max_delay(Duration::from_secs(1));
        let _enter = runtime.enter();
        let conn = ConnectionManager::new_lazy_with_config(client, config).map_err(bad_url)?;
        let (state, _) = watch::channel(BackendState::Connecting);
        let token: u128 = rand::random();
        let shared = Arc::new(Shared {
            conn,
            prefix: settings.prefix.clone(),
            timeout: settings.timeout,
            pending_value: format!("p:{token:032x}"),
            state,
            wake_probe: Notify::new(),
            failures: AtomicU64::new(0),
            round_trips: AtomicU64::new(0),
            scripts: Scripts {
                claim: Script::new(CLAIM),
                record: Script::new(RECORD),
                guard: Script::new(GUARD),
                reserve: Script::new(RESERVE),
                heartbeat: Script::new(HEARTBEAT),
            },
            target,
        });
        let probe = runtime.spawn(probe(Arc::clone(&shared), connect_timeout));
        Ok(RedisBackend { shared, probe })
    }

    pub(crate) fn state(&self) -> BackendState {
        *self.shared.state.borrow()
    }

    pub(crate) fn watch_state(&self) -> watch::Receiver<BackendState> {
        self.shared.state.subscribe()
    }

    pub(crate) fn failures(&self) -> u64 {
        self.shared.failures.load(Ordering::Relaxed)
    }

    pub(crate) fn round_trips(&self) -> u64 {
        self.shared.round_trips.load(Ordering::Relaxed)
    }

    fn dedup_key(&self, k: &DedupKey<'_>) -> String {
        format!("{}:dedup:{}", self.shared.prefix, hex::encode(k.digest()))
    }

    pub(crate) async fn claim(
        &self,
        keys: &[DedupKey<'_>],
        pending_for: Duration,
    ) -> Result<Vec<Claim>, CoordError> {
        let mut out = vec![Claim::Mine; keys.len()];
        let wanted: Vec<usize> = (0..keys.len())
            .filter(|&i| keys[i].is_deduplicated())
            .collect();
        if wanted.is_empty() {
            return Ok(out);
        }
        let mut inv = self.shared.scripts.claim.prepare_invoke();
        for &i in &wanted {
            inv.key(self.dedup_key(&keys[i]));
        }
        inv.arg(&self.shared.pending_value).arg(millis(pending_for));
        let answers: Vec<String> = self
            .shared
            .call(
                "claim",
                |mut c| async move { inv.invoke_async(&mut c).await },
            )
            .await?;
        if answers.len() != wanted.len() {
            return Err(CoordError::Reply {
                call: "claim",
                detail: format!("{} answers for {} keys", answers.len(), wanted.len()),
            });
        }
        for (&i, answer) in wanted.iter().zip(answers) {
            out[i] = if answer == "M" {
                Claim::Mine
            } else if let Some(done) = DoneAs::from_stored(&answer) {
                Claim::Done(done)
            } else if let Some(ms) = answer
                .strip_prefix("p:")
                .and_then(|t| t.parse::<i64>().ok())
            {
                Claim::PendingElsewhere {
                    expires_in: Duration::from_millis(ms.max(0).unsigned_abs()),
                }
            } else {
                return Err(CoordError::Reply {
                    call: "claim",
                    detail: format!("`{answer}`"),
                });
            };
        }
        Ok(out)
    }

    pub(crate) async fn record(
        &self,
        finals: &[(DedupKey<'_>, DoneAs)],
        window: Duration,
        release: &[DedupKey<'_>],
    ) -> Result<(), CoordError> {
        let finals: Vec<_> = finals.iter().filter(|(k, _)| k.is_deduplicated()).collect();
        let release: Vec<_> = release.iter().filter(|k| k.is_deduplicated()).collect();
        if finals.is_empty() && release.is_empty() {
            return Ok(());
        }
        let mut inv = self.shared.scripts.record.prepare_invoke();
        for (k, _) in &finals {
            inv.key(self.dedup_key(k));
        }
        for k in &release {
            inv.key(self.dedup_key(k));
        }
        inv.arg(finals.len())
            .arg(millis(window))
            .arg(&self.shared.pending_value);
        for (_, done) in &finals {
            inv.arg(done.stored());
        }
        let _released: i64 = self
            .shared
            .call(
                "record",
                |mut c| async move { inv.invoke_async(&mut c).await },
            )
            .await?;
        Ok(())
    }

    pub(crate) async fn guard_record(
        &self,
        scope: &GuardScope<'_>,
        window: Duration,
        sends: u64,
        suspicious: u64,
    ) -> Result<GuardCounts, CoordError> {
        let bucket = (millis(window) / u64::from(GUARD_BUCKETS)).max(1);
        let mut inv = self.shared.scripts.guard.prepare_invoke();
        inv.key(format!(
            "{}:guard:{}:{}",
            self.shared.prefix, scope.app, scope.platform
        ))
        .arg(bucket)
        .arg(GUARD_BUCKETS)
        .arg(sends)
        .arg(suspicious)
        .arg(millis(window) + bucket);
        let (s, x): (i64, i64) = self
            .shared
            .call("guard_record", |mut c| async move {
                inv.invoke_async(&mut c).await
            })
            .await?;
        Ok(GuardCounts {
            sends: s.max(0).unsigned_abs(),
            suspicious: x.max(0).unsigned_abs(),
        })
    }

    pub(crate) async fn reserve(
        &self,
        key: &RateKey,
        per_second: f64,
        burst: f64,
        want: u32,
    ) -> Result<Reservation, CoordError> {
        let mut inv = self.shared.scripts.reserve.prepare_invoke();
        inv.key(format!("{}:rate:{}", self.shared.prefix, key.as_str()))
            .arg(per_second)
            .arg(burst)
            .arg(want);
        let (granted, retry_us): (i64, i64) = self
            .shared
            .call(
                "reserve",
                |mut c| async move { inv.invoke_async(&mut c).await },
            )
            .await?;
        Ok(Reservation {
            granted: u32::try_from(granted.clamp(0, i64::from(want))).unwrap_or(0),
            retry_in: Duration::from_micros(retry_us.max(0).unsigned_abs()),
        })
    }

    pub(crate) async fn heartbeat(&self, pod: &str, ttl: Duration) -> Result<u32, CoordError> {
        let mut inv = self.shared.scripts.heartbeat.prepare_invoke();
        inv.key(format!("{}:pods", self.shared.prefix))
            .arg(pod)
            .arg(millis(ttl).max(1));
        let live: i64 = self
            .shared
            .call("heartbeat", |mut c| async move {
                inv.invoke_async(&mut c).await
            })
            .await?;
        Ok(u32::try_from(live.max(0)).unwrap_or(u32::MAX))
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn is_cluster_answer(e: &RedisError) -> bool {
    matches!(
        e.kind(),
        ErrorKind::Server(
            ServerErrorKind::Moved
                | ServerErrorKind::Ask
                | ServerErrorKind::ClusterDown
                | ServerErrorKind::CrossSlot
        )
    )
}

/// Whether an error says the server or the link failed (as opposed to a
/// script bug): only those mark the backend down.
fn is_link_failure(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_unrecoverable_error()
        || matches!(
            e.kind(),
            ErrorKind::AuthenticationFailed | ErrorKind::Client | ErrorKind::Parse
        )
        || matches!(
            e.kind(),
            ErrorKind::Server(ServerErrorKind::BusyLoading | ServerErrorKind::TryAgain)
        )
}

impl Shared {
    /// Runs one request under the timeout, unless the backend is not up.
    async fn call<T, F, Fut>(&self, what: &'static str, f: F) -> Result<T, CoordError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        match *self.state.borrow() {
            BackendState::Up => {}
            BackendState::Refused => return Err(CoordError::ClusterRefused),
            BackendState::Connecting | BackendState::Down | BackendState::InProcess => {
                return Err(CoordError::Unavailable {
                    reason: format!("not connected to {}", self.target),
                });
            }
        }
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        match tokio::time::timeout(self.timeout, f(self.conn.clone())).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) if is_cluster_answer(&e) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                self.set_state(BackendState::Refused, None);
                Err(CoordError::ClusterRefused)
            }
            Ok(Err(e)) if is_link_failure(&e) => {
                let reason = format!("{what} on {}: {e}", self.target);
                self.mark_down(&reason);
                Err(CoordError::Unavailable { reason })
            }
            Ok(Err(e)) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                Err(CoordError::Reply {
                    call: what,
                    detail: e.to_string(),
                })
            }
            Err(_) => {
                let reason = format!(
                    "{what} on {} timed out after {:?} (coordination.timeout)",
                    self.target, self.timeout
                );
                self.mark_down(&reason);
                Err(CoordError::Unavailable { reason })
            }
        }
    }

    fn mark_down(&self, reason: &str) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        self.set_state(BackendState::Down, Some(reason));
        self.wake_probe.notify_one();
    }

    /// Sets the state and logs a change once.
    fn set_state(&self, to: BackendState, reason: Option<&str>) {
        let changed = self.state.send_if_modified(|s| {
            // Refused is final.
            if *s == to || *s == BackendState::Refused {
                return false;
            }
            *s = to;
            true
        });
        if !changed {
            return;
        }
        let target = &self.target;
        match to {
            BackendState::Up => tracing::info!(
                redis = %target,
                "coordination: Redis is up; dedup, the fleet guard and the fleet rate limit are shared"
            ),
            BackendState::Down => tracing::warn!(
                redis = %target,
                reason = reason.unwrap_or("unknown"),
                "coordination: Redis is unavailable; dedup is skipped, the guard and the rate limit fall back to this pod until it returns"
            ),
            BackendState::Refused => tracing::error!(
                redis = %target,
                "{}",
                CoordError::ClusterRefused
            ),
            BackendState::Connecting | BackendState::InProcess => {}
        }
    }
}

/// The probe: owns reconnection and the up state.
async fn probe(shared: Arc<Shared>, probe_timeout: Duration) {
    let mut first = true;
    loop {
        let state = *shared.state.borrow();
        if state == BackendState::Refused {
            return;
        }
        if !first {
            let every = if state == BackendState::Up {
                PROBE_WHILE_UP
            } else {
                PROBE_WHILE_DOWN
            };
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                () = shared.wake_probe.notified() => {}
            }
        }
        first = false;
        let mut conn = shared.conn.clone();
        let info = tokio::time::timeout(
            probe_timeout,
            redis::cmd("INFO")
                .arg("cluster")
                .query_async::<String>(&mut conn),
        )
        .await;
        match info {
            Ok(Ok(text)) if text.contains("cluster_enabled:1") => {
                shared.set_state(BackendState::Refused, None);
                return;
            }
            Ok(Ok(_)) => shared.set_state(BackendState::Up, None),
            Ok(Err(e)) if is_cluster_answer(&e) => {
                shared.set_state(BackendState::Refused, None);
                return;
            }
            Ok(Err(e)) => {
                if state != BackendState::Down {
                    shared.failures.fetch_add(1, Ordering::Relaxed);
                }
                shared.set_state(
                    BackendState::Down,
                    Some(&format!("probe of {}: {e}", shared.target)),
                );
            }
            Err(_) => shared.set_state(
                BackendState::Down,
                Some(&format!(
                    "probe of {} timed out after {probe_timeout:?}",
                    shared.target
                )),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn redaction_hides_only_the_password() {
        assert_eq!(
            redact_url("rediss://:s3cret@10.1.2.3:6378"),
            "rediss://:***@10.1.2.3:6378"
        );
        assert_eq!(
            redact_url("redis://default:pw@host:6379/2"),
            "redis://default:***@host:6379/2"
        );
        assert_eq!(redact_url("redis://host:6379"), "redis://host:6379");
        assert_eq!(redact_url("redis://u:p@ss@host/0"), "redis://u:***@host/0");
    }
}
