//! Rate limits per app and provider, for this pod.
//!
//! [`RateLimit`] is a token bucket (`apps[].apns.rate_limit`,
//! `apps[].fcm.rate_limit`, pushes per second). FCM's quota (600k
//! messages/minute per project by default) is per project, not per pod:
//! give each replica `quota ÷ replicas`, with headroom (see
//! docs/operations.md). The bucket holds one second's worth of tokens, so a
//! short burst goes through at once and a sustained rate is smoothed.
//!
//! [`AdaptiveRate`] wraps the same bucket in AIMD (issue 13, SPEC §9 "Fleet
//! rate limit"): FCM's project-quota `QUOTA_EXCEEDED` halves this pod's send
//! rate, at most once per second, and the rate then grows back additively,
//! so that replicas converge on the project's quota without talking to each
//! other:
//! - **Cut** ([`AdaptiveRate::on_quota`]): `r = max(floor, r / 2)`; a
//!   quota answer within 1 s of the last cut is ignored (the answers to
//!   requests already in flight at the old rate). With `rate_limit: null`
//!   there is no limit at all until the first cut, which starts from the
//!   pod's recent send rate (sends admitted over the last
//!   [`MEASURE_WINDOW`]), so that the first cut halves what the pod really
//!   sent, not an arbitrary number.
//! - **Increase** ([`AdaptiveRate::on_success`]): `+ ceiling / 60` per
//!   second of successful sending (at most one second is credited per
//!   success, so an idle minute earns nothing): from half the ceiling back
//!   to it in 30 s, from the floor in about a minute.
//! - **Ceiling**: the configured `rate_limit`. With `rate_limit: null`, the
//!   ceiling of an episode is the send rate measured at its first cut; when
//!   the rate climbs back to it, the limit is lifted (unlimited again, as
//!   before the first cut), and the next `QUOTA_EXCEEDED` measures afresh.
//!   There is no ceiling beyond that: FCM's answer is the only signal of
//!   the project's quota.
//! - **Floor**: [`DEFAULT_FLOOR`] (1 push/s), or the configured rate if
//!   lower: a pod never stops sending, so it keeps learning.
//!
//! Everything takes the time as an argument: the type is deterministic and
//! its tests need no sleeps.

use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use prometheus_client::metrics::gauge::Gauge;

/// Lowest rate a cut goes to, pushes per second.
pub const DEFAULT_FLOOR: f64 = 1.0;
/// Cuts closer together than this are one cut.
pub const CUT_INTERVAL: Duration = Duration::from_secs(1);
/// The additive increase: `ceiling / RECOVERY_SECONDS` per second.
pub const RECOVERY_SECONDS: f64 = 60.0;
/// How far back the pod's own send rate is measured (`rate_limit: null`).
pub const MEASURE_WINDOW: Duration = Duration::from_secs(5);
/// Seconds in [`MEASURE_WINDOW`], as the ring of per-second counters.
const WINDOW_SECONDS: usize = 5;

/// The token bucket itself, without a lock.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// `rate` pushes per second; the bucket starts full.
    pub(crate) fn new(rate: f64, now: Instant) -> Bucket {
        let burst = rate.max(1.0);
        Bucket {
            rate,
            burst,
            tokens: burst,
            at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.at = self.at.max(now);
    }

    /// Changes the rate from `now` on: tokens earned so far at the old rate
    /// are kept, up to the new burst.
    pub(crate) fn set_rate(&mut self, now: Instant, rate: f64) {
        self.refill(now);
        self.rate = rate;
        self.burst = rate.max(1.0);
        self.tokens = self.tokens.min(self.burst);
    }

    pub(crate) fn reserve_within(
        &mut self,
        now: Instant,
        max_wait: Duration,
    ) -> Result<Duration, Duration> {
        self.refill(now);
        let after = self.tokens - 1.0;
        let wait = if after >= 0.0 {
            Duration::ZERO
        } else {
            // A tiny rate can make this huge: saturate rather than panic.
            Duration::try_from_secs_f64(-after / self.rate).unwrap_or(Duration::MAX)
        };
        if wait > max_wait {
            return Err(wait);
        }
        self.tokens = after;
        Ok(wait)
    }
}

/// A token bucket.
#[derive(Debug)]
pub struct RateLimit {
    state: Mutex<Bucket>,
}

impl RateLimit {
    /// `rate` pushes per second; the bucket starts full.
    pub fn new(rate: f64) -> RateLimit {
        RateLimit {
            state: Mutex::new(Bucket::new(rate, Instant::now())),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Bucket> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Pushes per second.
    pub fn rate(&self) -> f64 {
        self.lock().rate
    }

    /// Changes the rate from now on (the burst follows: one second's worth).
    pub fn set_rate(&self, rate: f64) {
        self.lock().set_rate(Instant::now(), rate);
    }

    /// Takes one token when the wait for it is at most `max_wait`:
    /// `Ok(wait)` with the token reserved (zero: send now; callers that wait
    /// and then send keep the rate), or `Err(wait)` with nothing taken, so
    /// that a caller whose budget is shorter hands the push back instead of
    /// holding its lease through a long wait.
    pub fn reserve_within(&self, max_wait: Duration) -> Result<Duration, Duration> {
        self.reserve_within_at(Instant::now(), max_wait)
    }

    fn reserve_within_at(&self, now: Instant, max_wait: Duration) -> Result<Duration, Duration> {
        self.lock().reserve_within(now, max_wait)
    }

    #[cfg(test)]
    fn reserve_at(&self, now: Instant) -> Duration {
        match self.reserve_within_at(now, Duration::MAX) {
            Ok(wait) | Err(wait) => wait,
        }
    }
}

/// Sends admitted in the last [`WINDOW_SECONDS`] whole seconds, one counter
/// per second since `origin`.
#[derive(Debug)]
struct SendWindow {
    origin: Instant,
    seconds: [u64; WINDOW_SECONDS],
    counts: [u64; WINDOW_SECONDS],
}

impl SendWindow {
    fn new(origin: Instant) -> SendWindow {
        SendWindow {
            origin,
            seconds: [u64::MAX; WINDOW_SECONDS],
            counts: [0; WINDOW_SECONDS],
        }
    }

    fn second(&self, now: Instant) -> (u64, f64) {
        let since = now.saturating_duration_since(self.origin);
        (since.as_secs(), since.as_secs_f64())
    }

    fn record(&mut self, now: Instant) {
        let (second, _) = self.second(now);
        let slot = (second % WINDOW_SECONDS as u64) as usize;
        if self.seconds[slot] != second {
            self.seconds[slot] = second;
            self.counts[slot] = 0;
        }
        self.counts[slot] += 1;
    }

    /// Sends per second over the window (or since `origin`, when younger).
    fn rate(&self, now: Instant) -> f64 {
        let (second, elapsed) = self.second(now);
        let total: u64 = self
            .seconds
            .iter()
            .zip(self.counts)
            .filter(|&(&s, _)| s <= second && second - s < WINDOW_SECONDS as u64)
            .map(|(_, c)| c)
            .sum();
        // The ring covers the current (partial) second and the whole ones before it.
        let covered = ((WINDOW_SECONDS - 1) as f64 + elapsed.fract()).min(elapsed);
        total as f64 / covered.max(1.0)
    }
}

#[derive(Debug)]
struct Aimd {
    /// The bucket while limited; `None`: no limit (`rate_limit: null`,
    /// before the first cut or after a full recovery).
    bucket: Option<Bucket>,
    /// Where the increase stops: the configured rate, or the rate measured
    /// at the first cut of an episode (`rate_limit: null`).
    ceiling: Option<f64>,
    last_cut: Option<Instant>,
    last_increase: Instant,
    window: SendWindow,
}

/// What [`AdaptiveRate::on_quota`] did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Cut {
    /// The rate was cut from `from` to `to` pushes per second.
    Cut {
        /// Before (the measured send rate when there was no limit).
        from: f64,
        /// After.
        to: f64,
    },
    /// Within [`CUT_INTERVAL`] of the last cut: ignored.
    TooSoon,
}

/// This pod's send rate for one app and provider, cut on a project quota
/// answer and grown back additively (AIMD; see the module docs). It is the
/// token bucket too: [`AdaptiveRate::reserve_within`] as
/// [`RateLimit::reserve_within`].
#[derive(Debug)]
pub struct AdaptiveRate {
    configured: Option<f64>,
    floor: f64,
    state: Mutex<Aimd>,
    gauge: Option<Gauge<f64, AtomicU64>>,
}

impl AdaptiveRate {
    /// From the configured `rate_limit` (`None` = null: unlimited until the
    /// first cut), at `now`.
    pub fn new(rate_limit: Option<f64>, now: Instant) -> AdaptiveRate {
        AdaptiveRate {
            configured: rate_limit,
            floor: rate_limit.map_or(DEFAULT_FLOOR, |r| r.min(DEFAULT_FLOOR)),
            state: Mutex::new(Aimd {
                bucket: rate_limit.map(|r| Bucket::new(r, now)),
                ceiling: rate_limit,
                last_cut: None,
                last_increase: now,
                window: SendWindow::new(now),
            }),
            gauge: None,
        }
    }

    /// Keeps `gauge` (`push_dispatch_send_rate_limit{app,platform}`, see
    /// [`crate::metrics::SendHandles::send_rate_limit`]) equal to
    /// [`AdaptiveRate::gauge_value`] from now on.
    pub fn with_gauge(mut self, gauge: Gauge<f64, AtomicU64>) -> AdaptiveRate {
        gauge.set(self.gauge_value());
        self.gauge = Some(gauge);
        self
    }

    /// Overrides the floor (pushes per second, above zero).
    pub fn with_floor(mut self, floor: f64) -> AdaptiveRate {
        self.floor = floor;
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Aimd> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The configured `rate_limit`.
    pub fn configured(&self) -> Option<f64> {
        self.configured
    }

    /// The allowed pushes per second now; `None` = unlimited.
    pub fn current(&self) -> Option<f64> {
        self.lock().bucket.map(|b| b.rate)
    }

    /// The gauge's value: [`AdaptiveRate::current`], −1 when unlimited.
    pub fn gauge_value(&self) -> f64 {
        self.current().unwrap_or(-1.0)
    }

    fn publish(&self, rate: Option<f64>) {
        if let Some(g) = &self.gauge {
            g.set(rate.unwrap_or(-1.0));
        }
    }

    /// As [`RateLimit::reserve_within`], at `now`; always `Ok(ZERO)` while
    /// unlimited. Every push it admits counts as a send of the pod (the
    /// measured rate a first cut starts from).
    pub fn reserve_within(&self, now: Instant, max_wait: Duration) -> Result<Duration, Duration> {
        let mut s = self.lock();
        let wait = match &mut s.bucket {
            None => Duration::ZERO,
            Some(b) => b.reserve_within(now, max_wait)?,
        };
        s.window.record(now);
        Ok(wait)
    }

    /// A project-quota answer (`RetryCause::Quota { scope: Project }`) at
    /// `now`: halves the rate, down to the floor, unless the last cut was
    /// less than [`CUT_INTERVAL`] ago.
    pub fn on_quota(&self, now: Instant) -> Cut {
        let mut s = self.lock();
        if s.last_cut
            .is_some_and(|t| now.saturating_duration_since(t) < CUT_INTERVAL)
        {
            return Cut::TooSoon;
        }
        let from = match s.bucket {
            Some(b) => b.rate,
            None => {
                // The first cut of an episode without a configured rate:
                // halve what the pod was sending, and come back up to it.
                let measured = s.window.rate(now).max(self.floor);
                s.ceiling = Some(measured);
                measured
            }
        };
        let to = (from / 2.0).max(self.floor);
        match &mut s.bucket {
            Some(b) => b.set_rate(now, to),
            None => s.bucket = Some(Bucket::new(to, now)),
        }
        s.last_cut = Some(now);
        s.last_increase = now;
        drop(s);
        self.publish(Some(to));
        Cut::Cut { from, to }
    }

    /// A delivered answer at `now`: grows the rate by `ceiling / 60` per
    /// second since the last increase (at most one second's worth), up to
    /// the ceiling; with `rate_limit: null`, reaching it lifts the limit.
    pub fn on_success(&self, now: Instant) {
        let mut s = self.lock();
        let Some(rate) = s.bucket.map(|b| b.rate) else {
            return;
        };
        let ceiling = s.ceiling.unwrap_or(rate);
        let credited = now
            .saturating_duration_since(s.last_increase)
            .min(Duration::from_secs(1));
        s.last_increase = s.last_increase.max(now);
        if rate >= ceiling || credited.is_zero() {
            return;
        }
        let grown = rate + ceiling / RECOVERY_SECONDS * credited.as_secs_f64();
        let next = if grown < ceiling {
            Some(grown)
        } else if self.configured.is_some() {
            Some(ceiling)
        } else {
            None
        };
        match next {
            Some(r) => {
                if let Some(b) = &mut s.bucket {
                    b.set_rate(now, r);
                }
            }
            None => {
                s.bucket = None;
                s.ceiling = None;
            }
        }
        drop(s);
        self.publish(next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_one_second_then_the_rate() {
        let r = RateLimit::new(10.0);
        let t = Instant::now();
        for _ in 0..10 {
            assert_eq!(r.reserve_at(t), Duration::ZERO);
        }
        let wait = r.reserve_at(t);
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-6, "{wait:?}");
        let wait = r.reserve_at(t);
        assert!((wait.as_secs_f64() - 0.2).abs() < 1e-6, "{wait:?}");
        // After a second the bucket has refilled what was used beyond the burst.
        assert_eq!(
            r.reserve_at(t + Duration::from_millis(1300)),
            Duration::ZERO
        );
    }

    #[test]
    fn slow_rates_still_allow_one_push() {
        let r = RateLimit::new(0.5);
        let t = Instant::now();
        assert_eq!(r.reserve_at(t), Duration::ZERO);
        assert!((r.reserve_at(t).as_secs_f64() - 2.0).abs() < 1e-6);
    }

    #[test]
    fn a_wait_longer_than_the_budget_takes_nothing() {
        let r = RateLimit::new(2.0);
        let t = Instant::now();
        assert_eq!(r.reserve_within_at(t, Duration::ZERO), Ok(Duration::ZERO));
        assert_eq!(r.reserve_within_at(t, Duration::ZERO), Ok(Duration::ZERO));
        // The third push would wait 0.5 s: refused with a budget of 0.1 s ...
        let refused = r.reserve_within_at(t, Duration::from_millis(100));
        assert!(
            matches!(refused, Err(w) if (w.as_secs_f64() - 0.5).abs() < 1e-6),
            "{refused:?}"
        );
        // ... and nothing was taken: the same wait is offered again.
        let again = r.reserve_within_at(t, Duration::from_secs(1));
        assert!(
            matches!(again, Ok(w) if (w.as_secs_f64() - 0.5).abs() < 1e-6),
            "{again:?}"
        );
    }

    #[test]
    fn a_tiny_rate_saturates_instead_of_panicking() {
        let r = RateLimit::new(1e-300);
        let t = Instant::now();
        assert_eq!(r.reserve_at(t), Duration::ZERO);
        assert_eq!(r.reserve_at(t), Duration::MAX);
    }

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    fn close(a: Option<f64>, b: f64) -> bool {
        a.is_some_and(|a| (a - b).abs() < 1e-6)
    }

    #[test]
    fn set_rate_changes_the_bucket_from_now_on() {
        let r = RateLimit::new(10.0);
        r.set_rate(2.0);
        assert_eq!(r.rate(), 2.0);
    }

    #[test]
    fn a_project_quota_answer_halves_the_rate_down_to_the_floor() {
        let t = Instant::now();
        let a = AdaptiveRate::new(Some(100.0), t);
        assert!(close(a.current(), 100.0));
        assert_eq!(
            a.on_quota(t),
            Cut::Cut {
                from: 100.0,
                to: 50.0
            }
        );
        assert!(close(a.current(), 50.0));
        for i in 1..20 {
            a.on_quota(t + secs(f64::from(i) * 1.5));
        }
        assert!(close(a.current(), DEFAULT_FLOOR), "{:?}", a.current());
    }

    #[test]
    fn at_most_one_cut_per_second() {
        let t = Instant::now();
        let a = AdaptiveRate::new(Some(100.0), t);
        assert!(matches!(a.on_quota(t), Cut::Cut { .. }));
        // The answers to requests already in flight at the old rate.
        for ms in [1, 10, 500, 999] {
            assert_eq!(a.on_quota(t + Duration::from_millis(ms)), Cut::TooSoon);
        }
        assert!(close(a.current(), 50.0));
        assert_eq!(
            a.on_quota(t + secs(1.0)),
            Cut::Cut {
                from: 50.0,
                to: 25.0
            }
        );
    }

    #[test]
    fn the_floor_is_the_configured_rate_when_lower() {
        let t = Instant::now();
        let a = AdaptiveRate::new(Some(0.5), t);
        assert_eq!(a.on_quota(t), Cut::Cut { from: 0.5, to: 0.5 });
        let a = AdaptiveRate::new(Some(100.0), t).with_floor(40.0);
        a.on_quota(t);
        assert!(close(a.current(), 50.0));
        a.on_quota(t + secs(2.0));
        assert!(close(a.current(), 40.0));
    }

    #[test]
    fn successes_grow_it_back_additively_to_the_ceiling() {
        let t = Instant::now();
        let a = AdaptiveRate::new(Some(120.0), t);
        a.on_quota(t);
        // + 120/60 = 2 pushes/s per second of successful sending.
        a.on_success(t + secs(1.0));
        assert!(close(a.current(), 62.0), "{:?}", a.current());
        // An idle stretch earns one second, not ten.
        a.on_success(t + secs(11.0));
        assert!(close(a.current(), 64.0), "{:?}", a.current());
        // Steady sending: back at the ceiling within 30 s, and no higher.
        let mut now = t + secs(11.0);
        for _ in 0..400 {
            now += Duration::from_millis(100);
            a.on_success(now);
        }
        assert!(close(a.current(), 120.0), "{:?}", a.current());
        // From the floor it takes about a minute (and it is never unlimited).
        let b = AdaptiveRate::new(Some(120.0), t);
        for i in 0..10 {
            b.on_quota(t + secs(f64::from(i)));
        }
        assert!(close(b.current(), DEFAULT_FLOOR));
        let start = t + secs(10.0);
        for i in 1..=60 {
            b.on_success(start + secs(f64::from(i)));
        }
        assert!(close(b.current(), 120.0), "{:?}", b.current());
    }

    #[test]
    fn the_cut_rate_is_what_the_bucket_lets_through() {
        let t = Instant::now();
        let a = AdaptiveRate::new(Some(10.0), t);
        a.on_quota(t);
        // 5/s now, a burst of at most 5 (what was left of 10, capped).
        let admitted = (0..10)
            .filter(|_| a.reserve_within(t, Duration::ZERO).is_ok())
            .count();
        assert_eq!(admitted, 5);
        let wait = a.reserve_within(t, Duration::MAX).expect("within");
        assert!((wait.as_secs_f64() - 0.2).abs() < 1e-6, "{wait:?}");
    }

    #[test]
    fn without_a_rate_limit_it_is_unlimited_until_the_first_cut_which_starts_from_the_measured_rate()
     {
        let t = Instant::now();
        let a = AdaptiveRate::new(None, t);
        assert_eq!(a.current(), None);
        assert_eq!(a.gauge_value(), -1.0);
        // 200 pushes/s for 10 s: all admitted at once.
        for i in 0..2000 {
            let now = t + secs(f64::from(i) / 200.0);
            assert_eq!(a.reserve_within(now, Duration::ZERO), Ok(Duration::ZERO));
        }
        let now = t + secs(10.0);
        let Cut::Cut { from, to } = a.on_quota(now) else {
            panic!("cut");
        };
        assert!((from - 200.0).abs() < 10.0, "measured {from}");
        assert!(close(a.current(), to) && (to - from / 2.0).abs() < 1e-9);
        // It grows back at measured/60 per second, and reaching the measured
        // rate lifts the limit again.
        let mut later = now;
        for _ in 0..29 {
            later += secs(1.0);
            a.on_success(later);
        }
        assert!(a.current().is_some_and(|r| r < from), "{:?}", a.current());
        for _ in 0..2 {
            later += secs(1.0);
            a.on_success(later);
        }
        assert_eq!(a.current(), None, "recovered: unlimited again");
        // The next episode measures afresh (nothing sent since: the floor).
        assert_eq!(
            a.on_quota(later + secs(10.0)),
            Cut::Cut {
                from: DEFAULT_FLOOR,
                to: DEFAULT_FLOOR
            }
        );
    }

    #[test]
    fn the_gauge_follows_the_rate() {
        let t = Instant::now();
        let gauge = Gauge::<f64, AtomicU64>::default();
        let a = AdaptiveRate::new(Some(100.0), t).with_gauge(gauge.clone());
        assert_eq!(gauge.get(), 100.0);
        a.on_quota(t);
        assert_eq!(gauge.get(), 50.0);
        a.on_success(t + secs(1.0));
        assert!((gauge.get() - (50.0 + 100.0 / 60.0)).abs() < 1e-9);
        let unlimited = Gauge::<f64, AtomicU64>::default();
        let _u = AdaptiveRate::new(None, t).with_gauge(unlimited.clone());
        assert_eq!(unlimited.get(), -1.0);
    }
}
