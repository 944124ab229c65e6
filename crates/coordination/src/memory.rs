//! The in-process backend: the same semantics as Redis, for one replica.
//!
//! Dedup entries live in a map capped at `max_entries` (the oldest inserted
//! are evicted first; expired entries count until they are looked up or
//! evicted), with an insertion queue beside it. Short critical sections under
//! std mutexes: no await while a lock is held.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::{
    Claim, DedupKey, DoneAs, GUARD_BUCKETS, GuardCounts, GuardScope, RateKey, Reservation,
};

#[derive(Clone, Copy, Debug)]
enum Value {
    Pending,
    Done(DoneAs),
}

#[derive(Debug)]
struct Entry {
    value: Value,
    expires: Instant,
    generation: u64,
}

#[derive(Debug, Default)]
struct DedupMap {
    map: HashMap<[u8; 32], Entry>,
    /// Insertion order: (key, generation); stale when the generation differs.
    order: VecDeque<([u8; 32], u64)>,
    next_generation: u64,
}

impl DedupMap {
    fn live(&mut self, key: &[u8; 32], now: Instant) -> Option<&Entry> {
        if self.map.get(key).is_some_and(|e| e.expires <= now) {
            self.map.remove(key);
        }
        self.map.get(key)
    }

    fn insert(&mut self, key: [u8; 32], value: Value, expires: Instant, cap: usize) {
        if let Some(e) = self.map.get_mut(&key) {
            e.value = value;
            e.expires = expires;
            return;
        }
        let generation = self.next_generation;
        self.next_generation += 1;
        self.map.insert(
            key,
            Entry {
                value,
                expires,
                generation,
            },
        );
        self.order.push_back((key, generation));
        while self.map.len() > cap {
            let Some((old, g)) = self.order.pop_front() else {
                break;
            };
            if self.map.get(&old).is_some_and(|e| e.generation == g) {
                self.map.remove(&old);
            }
        }
        // Released keys leave stale queue entries: compact now and then.
        if self.order.len() > 2 * cap + 1024 {
            let map = &self.map;
            self.order
                .retain(|(k, g)| map.get(k).is_some_and(|e| e.generation == *g));
        }
    }
}

/// Buckets (index, sends, suspicious), oldest first.
type GuardWindow = VecDeque<(u64, u64, u64)>;

#[derive(Debug)]
struct TokenBucket {
    tokens: f64,
    at: Instant,
}

/// The in-process store.
#[derive(Debug)]
pub struct Memory {
    max_entries: usize,
    dedup: Mutex<DedupMap>,
    /// (app, platform) → its window.
    guards: Mutex<HashMap<(String, String), GuardWindow>>,
    buckets: Mutex<HashMap<RateKey, TokenBucket>>,
    pods: Mutex<HashMap<String, Instant>>,
    epoch: Instant,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves consistent data (no
    // multi-step invariants across an unwind point): keep going.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Memory {
    pub(crate) fn new(max_entries: usize) -> Memory {
        Memory {
            max_entries: max_entries.max(1),
            dedup: Mutex::new(DedupMap::default()),
            guards: Mutex::new(HashMap::new()),
            buckets: Mutex::new(HashMap::new()),
            pods: Mutex::new(HashMap::new()),
            epoch: Instant::now(),
        }
    }

    /// Dedup entries held now (expired ones included until evicted).
    pub fn dedup_len(&self) -> usize {
        lock(&self.dedup).map.len()
    }

    pub(crate) fn claim(&self, keys: &[DedupKey<'_>], pending_for: Duration) -> Vec<Claim> {
        let now = Instant::now();
        let mut d = lock(&self.dedup);
        keys.iter()
            .map(|k| {
                if !k.is_deduplicated() {
                    return Claim::Mine;
                }
                let digest = k.digest();
                match d.live(&digest, now) {
                    Some(Entry {
                        value: Value::Done(done),
                        ..
                    }) => Claim::Done(*done),
                    Some(Entry {
                        value: Value::Pending,
                        expires,
                        ..
                    }) => Claim::PendingElsewhere {
                        expires_in: expires.saturating_duration_since(now),
                    },
                    None => {
                        d.insert(digest, Value::Pending, now + pending_for, self.max_entries);
                        Claim::Mine
                    }
                }
            })
            .collect()
    }

    pub(crate) fn record(
        &self,
        finals: &[(DedupKey<'_>, DoneAs)],
        window: Duration,
        release: &[DedupKey<'_>],
    ) {
        let now = Instant::now();
        let mut d = lock(&self.dedup);
        for (k, done) in finals.iter().filter(|(k, _)| k.is_deduplicated()) {
            d.insert(
                k.digest(),
                Value::Done(*done),
                now + window,
                self.max_entries,
            );
        }
        for k in release.iter().filter(|k| k.is_deduplicated()) {
            let digest = k.digest();
            if matches!(
                d.live(&digest, now),
                Some(Entry {
                    value: Value::Pending,
                    ..
                })
            ) {
                d.map.remove(&digest);
            }
        }
    }

    pub(crate) fn guard_record(
        &self,
        scope: &GuardScope<'_>,
        window: Duration,
        sends: u64,
        suspicious: u64,
    ) -> GuardCounts {
        let bucket_ms = (window.as_millis() / u128::from(GUARD_BUCKETS)).max(1);
        let index = (self.epoch.elapsed().as_millis() / bucket_ms) as u64;
        let mut guards = lock(&self.guards);
        let buckets = guards
            .entry((scope.app.to_string(), scope.platform.to_string()))
            .or_default();
        while buckets
            .front()
            .is_some_and(|b| b.0 + u64::from(GUARD_BUCKETS) <= index)
        {
            buckets.pop_front();
        }
        if sends > 0 || suspicious > 0 {
            match buckets.back_mut() {
                Some(b) if b.0 == index => {
                    b.1 += sends;
                    b.2 += suspicious;
                }
                _ => buckets.push_back((index, sends, suspicious)),
            }
        }
        buckets
            .iter()
            .fold(GuardCounts::default(), |c, b| GuardCounts {
                sends: c.sends + b.1,
                suspicious: c.suspicious + b.2,
            })
    }

    pub(crate) fn reserve(
        &self,
        key: &RateKey,
        per_second: f64,
        burst: f64,
        want: u32,
    ) -> Reservation {
        let now = Instant::now();
        let mut buckets = lock(&self.buckets);
        let b = buckets.entry(key.clone()).or_insert(TokenBucket {
            tokens: burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * per_second).min(burst);
        b.at = now;
        take(&mut b.tokens, per_second, want)
    }

    pub(crate) fn heartbeat(&self, pod: &str, ttl: Duration) -> u32 {
        let now = Instant::now();
        let mut pods = lock(&self.pods);
        pods.insert(pod.to_string(), now + ttl);
        pods.retain(|_, until| *until > now);
        u32::try_from(pods.len()).unwrap_or(u32::MAX)
    }
}

/// Grants up to `want` whole tokens from `tokens` and says when the next one comes.
fn take(tokens: &mut f64, per_second: f64, want: u32) -> Reservation {
    let granted = tokens.floor().clamp(0.0, f64::from(want)) as u32;
    *tokens -= f64::from(granted);
    let retry_in = if granted < want && *tokens < 1.0 {
        Duration::try_from_secs_f64((1.0 - *tokens) / per_second).unwrap_or(Duration::MAX)
    } else {
        Duration::ZERO
    };
    Reservation { granted, retry_in }
}
