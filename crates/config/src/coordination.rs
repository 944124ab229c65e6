//! Fleet settings (issue 16): the coordination backend (`coordination`),
//! idempotent requests (`dedup`), and the two forms of `rate_limit`.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::Config;
use crate::validate::Issues;

/// Where the fleet's shared state lives.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CoordinationConfig {
    /// null = in-process (one replica); `redis://host:6379` or
    /// `rediss://:password@host:6378` (Memorystore with TLS and AUTH).
    /// Secret: check-config prints it with the password redacted.
    pub redis_url: Option<String>,
    /// The CA of the server's certificate (Memorystore's server CA), for `rediss://`.
    pub ca_file: Option<PathBuf>,
    /// Prefix of every Redis key, so that deployments can share a server.
    pub prefix: String,
    /// Bound of every Redis call; a slower answer counts as Redis down.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for CoordinationConfig {
    fn default() -> Self {
        CoordinationConfig {
            redis_url: None,
            ca_file: None,
            prefix: "push-dispatch".into(),
            timeout: Duration::from_millis(250),
        }
    }
}

/// Idempotent requests: a target already delivered is not sent again.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DedupConfig {
    /// How long a final outcome of (app, request_id, platform, token) is
    /// remembered; null disables dedup.
    #[serde(with = "humantime_serde")]
    pub window: Option<Duration>,
    /// Entries the in-process store keeps (the oldest go first).
    pub max_entries: usize,
    /// Expiry of a claim while its send is in flight; at least 2 ×
    /// `dispatch.request_timeout`.
    #[serde(with = "humantime_serde")]
    pub pending: Duration,
}

impl Default for DedupConfig {
    fn default() -> Self {
        DedupConfig {
            window: None,
            max_entries: 1_000_000,
            pending: Duration::from_secs(60),
        }
    }
}

/// Who a rate limit binds.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RateScope {
    /// This pod alone.
    #[default]
    Pod,
    /// The whole fleet, through the coordination backend.
    Fleet,
}

/// `apps[].apns.rate_limit` / `apps[].fcm.rate_limit`: `N` (pushes per
/// second for this pod) or `{ per_second: N, scope: pod | fleet,
/// fallback_per_second: M }`.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq)]
#[serde(from = "RateLimitRepr", into = "RateLimitRepr")]
pub struct RateLimit {
    /// Pushes per second (for the pod or the fleet).
    pub per_second: f64,
    /// `pod` or `fleet`.
    pub scope: RateScope,
    /// A fleet limit's per-pod rate while Redis is unreachable; null = the
    /// fleet rate ÷ the pods last seen alive.
    pub fallback_per_second: Option<f64>,
}

impl RateLimit {
    /// `N` pushes per second for this pod.
    pub fn per_pod(per_second: f64) -> RateLimit {
        RateLimit {
            per_second,
            scope: RateScope::Pod,
            fallback_per_second: None,
        }
    }

    /// The rate this pod enforces without the fleet limiter: `per_second`
    /// for a pod limit; for a fleet limit `fallback_per_second`, else
    /// `per_second` (one replica).
    pub fn pod_rate(&self) -> f64 {
        match self.scope {
            RateScope::Pod => self.per_second,
            RateScope::Fleet => self.fallback_per_second.unwrap_or(self.per_second),
        }
    }
}

#[derive(Deserialize, Serialize)]
#[serde(untagged)]
enum RateLimitRepr {
    PerSecond(f64),
    Detailed {
        per_second: f64,
        #[serde(default)]
        scope: RateScope,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fallback_per_second: Option<f64>,
    },
}

impl From<RateLimitRepr> for RateLimit {
    fn from(r: RateLimitRepr) -> RateLimit {
        match r {
            RateLimitRepr::PerSecond(n) => RateLimit::per_pod(n),
            RateLimitRepr::Detailed {
                per_second,
                scope,
                fallback_per_second,
            } => RateLimit {
                per_second,
                scope,
                fallback_per_second,
            },
        }
    }
}

impl From<RateLimit> for RateLimitRepr {
    fn from(r: RateLimit) -> RateLimitRepr {
        if r.scope == RateScope::Pod && r.fallback_per_second.is_none() {
            RateLimitRepr::PerSecond(r.per_second)
        } else {
            RateLimitRepr::Detailed {
                per_second: r.per_second,
                scope: r.scope,
                fallback_per_second: r.fallback_per_second,
            }
        }
    }
}

/// `url` with its password replaced by `***`.
pub fn redact_redis_url(url: &str) -> String {
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

pub(crate) fn validate_rate(v: &mut Issues, key: &str, rate: Option<&RateLimit>) {
    let Some(r) = rate else { return };
    let positive = |x: f64| x.is_finite() && x > 0.0;
    if !positive(r.per_second) {
        v.add(
            key,
            format!(
                "{} is not a rate; give pushes per second above 0, or null for unlimited",
                r.per_second
            ),
        );
    }
    if let Some(f) = r.fallback_per_second {
        if r.scope != RateScope::Fleet {
            v.add(
                format!("{key}.fallback_per_second"),
                "applies only to scope: fleet; remove it or set scope: fleet",
            );
        } else if !positive(f) {
            v.add(
                format!("{key}.fallback_per_second"),
                format!("{f} is not a rate; give pushes per second above 0, or null for the fleet rate ÷ live pods"),
            );
        }
    }
}

pub(crate) fn validate(c: &Config, v: &mut Issues) {
    let co = &c.coordination;
    if let Some(url) = &co.redis_url {
        let scheme = url.split_once("://").map(|(s, _)| s);
        match scheme {
            Some(s) if s.contains("cluster") => v.add(
                "coordination.redis_url",
                "is a Redis Cluster URL; Memorystore Cluster is not supported: use a standalone or HA (Standard tier) instance",
            ),
            Some("redis") | Some("rediss") => {}
            _ => v.add(
                "coordination.redis_url",
                format!(
                    "`{}` is not a Redis URL; write redis://host:6379, rediss://:PASSWORD@host:6378 (TLS), or null for in-process",
                    redact_redis_url(url)
                ),
            ),
        }
        if co.ca_file.is_some() && scheme != Some("rediss") {
            v.add(
                "coordination.ca_file",
                "is set but coordination.redis_url is not rediss://; use rediss:// (TLS) or remove ca_file",
            );
        }
    }
    if co.prefix.is_empty()
        || !co
            .prefix
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || "-_.:".contains(ch))
    {
        v.add(
            "coordination.prefix",
            format!("`{}` must be non-empty letters, digits, - _ . :", co.prefix),
        );
    }
    v.duration(
        "coordination.timeout",
        co.timeout,
        Duration::from_millis(10),
        Duration::from_secs(5),
        " (a slow Redis must never stall sends)",
    );

    let d = &c.dedup;
    v.range("dedup.max_entries", d.max_entries, 1_000, 100_000_000, "");
    let min_pending = c.dispatch.request_timeout * 2;
    if d.pending < min_pending {
        v.add(
            "dedup.pending",
            format!(
                "{} is shorter than 2 × dispatch.request_timeout ({}); a claim would lapse while its send is in flight",
                humantime::format_duration(d.pending),
                humantime::format_duration(min_pending)
            ),
        );
    }
    if let Some(w) = d.window {
        v.duration(
            "dedup.window",
            w,
            Duration::from_secs(60),
            Duration::from_secs(30 * 86_400),
            "",
        );
        if w < d.pending {
            v.add(
                "dedup.window",
                "is shorter than dedup.pending; a final outcome must outlive the claim",
            );
        }
    }
}
