//! The connection slots of one endpoint, used round robin, and everything a
//! request may queue for before it is written.
//!
//! A [`Pool`] has a fixed number of slots; each holds at most one live HTTP/2
//! connection. A request takes the next slot (one atomic add) and runs its
//! exchange on the slot's connection. A request the provider provably never
//! saw ([`SendError::Unsent`]: a refused stream, above a GOAWAY, a connection
//! gone before the stream opened) is resent once, at once, and a slot whose
//! connection is gone or going away is emptied so that the next request
//! dials anew; so is a slot whose driver task saw the connection end.
//!
//! **Dials.** An empty slot is dialled by a task the slot owns (aborted by
//! [`Pool::close`] and when the pool is dropped), one dial per slot at a
//! time: every request that finds the slot dialling waits for that dial's
//! result, and a failed dial fails all of them at once
//! ([`SendError::Connect`]); a request whose deadline passes first, or that
//! is given up, stops waiting, the dial goes on for the others. Connection
//! setup (TCP, TLS, the HTTP/2 preface and the server's SETTINGS) has one
//! timeout: [`CONNECT_TIMEOUT`], or the request timeout when shorter. After a
//! failed dial the slot backs off (1 s, doubling to 60 s, each jittered to
//! between half and all of it; a successful dial resets it): a request that
//! picks it tries the next slot not backing off (round robin), and when
//! every slot backs off it fails at once with the last error and the time to
//! the next dial ([`Pool::backoff`] says so beforehand). A failed dial is
//! never "resent once": no request waits behind a second dial.
//!
//! **One deadline.** [`Pool::post`] takes the request's deadline (set by the
//! client when the send began, credential wait included) and an optional
//! give-up token (the worker drains). Everything a request queues for
//! locally counts inside the deadline and ends at once when it is given up:
//! the dial, the warm-up of a cold connection and a free stream (the pool
//! keeps each connection's streams within the server's
//! `SETTINGS_MAX_CONCURRENT_STREAMS`, so that `h2` never holds a request it
//! might write later). A request that ends while still queued was never
//! written: [`SendError::Queued`] (or `Connect` while waiting on a dial),
//! never a timeout. Once `h2` has its headers, a give-up is ignored and the
//! remaining time is a real [`SendError::Timeout`].
//!
//! A new connection carries one request alone until an answer arrived that
//! the caller accepts (`warms`): APNs allows one stream on a new connection
//! until a request with a valid token succeeded, and a cold burst would
//! otherwise be refused.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use http::{HeaderMap, HeaderValue, Method, Request, Uri};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::connect::{CONNECT_TIMEOUT, Target, TransportError};
use super::exchange::{RawAnswer, SendError, exchange, given_up};

/// How long [`Pool::close`] waits for connections to say goodbye.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Sent on every request.
const USER_AGENT: &str = concat!("push-dispatch/", env!("CARGO_PKG_VERSION"));
/// The backoff after a slot's first failed dial.
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
/// The longest backoff between dials of a slot.
const BACKOFF_MAX: Duration = Duration::from_secs(60);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One live HTTP/2 connection, as requests see it.
#[derive(Clone, Debug)]
struct Live {
    send: SendRequest<Bytes>,
    state: Arc<ConnState>,
}

/// Per-connection state: which dial it came from, whether it is warm, and
/// the streams our requests hold on it.
#[derive(Debug)]
struct ConnState {
    id: u64,
    warm: AtomicBool,
    warming: tokio::sync::Mutex<()>,
    /// Streams handed to `h2` and not finished.
    streams: AtomicUsize,
    /// Notified when one of them finished.
    freed: Notify,
}

impl ConnState {
    fn new(id: u64) -> ConnState {
        ConnState {
            id,
            warm: AtomicBool::new(false),
            warming: tokio::sync::Mutex::new(()),
            streams: AtomicUsize::new(0),
            freed: Notify::new(),
        }
    }

    /// Takes a stream if fewer than `max` are in use.
    fn try_stream(&self, max: usize) -> Option<StreamPermit<'_>> {
        let mut n = self.streams.load(Ordering::Acquire);
        while n < max {
            match self
                .streams
                .compare_exchange_weak(n, n + 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Some(StreamPermit(self)),
                Err(now) => n = now,
            }
        }
        None
    }

    /// Waits for a stream within the server's concurrency limit, until
    /// `deadline` or `give_up`.
    async fn stream(
        &self,
        send: &SendRequest<Bytes>,
        deadline: Instant,
        give_up: Option<&CancellationToken>,
    ) -> Result<StreamPermit<'_>, SendError> {
        let mut woken = false;
        loop {
            let max = send.current_max_send_streams().max(1);
            if let Some(permit) = self.try_stream(max) {
                if woken && self.streams.load(Ordering::Acquire) < max {
                    // The server may have raised its limit (APNs does once a
                    // connection is warm): wake the next waiter too.
                    self.freed.notify_one();
                }
                return Ok(permit);
            }
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(permit) = self.try_stream(max) {
                return Ok(permit);
            }
            let why = tokio::select! {
                biased;
                () = given_up(give_up) => "given up while waiting for a free stream",
                () = tokio::time::sleep_until(deadline) => {
                    "the request's time ran out while waiting for a free stream"
                }
                () = &mut freed => {
                    woken = true;
                    continue;
                }
            };
            // Pass on a wake-up this waiter may have taken.
            self.freed.notify_one();
            return Err(SendError::Queued(why.into()));
        }
    }
}

/// One stream of a connection, held until the exchange ends.
struct StreamPermit<'a>(&'a ConnState);

impl Drop for StreamPermit<'_> {
    fn drop(&mut self) {
        self.0.streams.fetch_sub(1, Ordering::AcqRel);
        self.0.freed.notify_one();
    }
}

/// What a dial publishes to the requests waiting on it: nothing yet, the
/// connection, or why there is none.
type DialResult = Option<Result<Live, String>>;

/// The failure backoff of one slot's dials.
#[derive(Debug, Default, Clone)]
struct Backoff {
    /// Failed dials in a row.
    failures: u32,
    /// No dial before this.
    next_dial: Option<Instant>,
    /// Why the last dial failed.
    last_error: String,
}

impl Backoff {
    /// Records a failed dial at `now`; returns the wait before the next one.
    fn failed(&mut self, now: Instant, error: String, jitter: f64) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let wait = backoff_delay(self.failures, jitter);
        self.next_dial = Some(now + wait);
        self.last_error = error;
        wait
    }

    /// Records a successful dial: the backoff starts over.
    fn succeeded(&mut self) {
        *self = Backoff::default();
    }

    /// The time left before the next dial, if the slot is backing off.
    fn remaining(&self, now: Instant) -> Option<Duration> {
        self.next_dial
            .filter(|at| *at > now)
            .map(|at| at.duration_since(now))
    }
}

/// The backoff after `failures` failed dials in a row (at least one):
/// 1 s doubling up to 60 s, scaled to between half and all of it by
/// `jitter` (0..=1).
fn backoff_delay(failures: u32, jitter: f64) -> Duration {
    let doublings = failures.saturating_sub(1).min(6);
    let full = (BACKOFF_FIRST * (1u32 << doublings)).min(BACKOFF_MAX);
    let jitter = if jitter.is_nan() {
        1.0
    } else {
        jitter.clamp(0.0, 1.0)
    };
    full.mul_f64(0.5 + 0.5 * jitter)
}

/// A random number in 0..1, good enough for jitter (a fresh SipHash key).
fn jitter() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let bits = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

/// What a slot holds: a connection, a dial under way, its backoff.
#[derive(Debug, Default)]
struct SlotState {
    live: Option<Live>,
    /// The dial under way: its result, for every request waiting on it.
    dialing: Option<watch::Receiver<DialResult>>,
    /// The task of the last dial (finished unless `dialing`).
    dial_task: Option<JoinHandle<()>>,
    backoff: Backoff,
}

/// One place in the pool.
#[derive(Debug, Default)]
struct Slot {
    state: Mutex<SlotState>,
    drivers: Mutex<Vec<JoinHandle<()>>>,
}

impl Slot {
    /// Forgets connection `id` if it is still the current one.
    fn forget(&self, id: u64) {
        let mut state = lock(&self.state);
        if state.live.as_ref().is_some_and(|l| l.state.id == id) {
            state.live = None;
        }
    }
}

#[derive(Debug)]
struct Inner {
    target: Arc<Target>,
    slots: Box<[Slot]>,
    next: AtomicUsize,
    dials: AtomicU64,
    connect_timeout: Duration,
}

/// Several HTTP/2 connections to one endpoint, used round robin.
#[derive(Debug, Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

/// What a request found in a slot.
enum Found {
    Live(Live),
    Dial(watch::Receiver<DialResult>),
}

impl Pool {
    /// A pool of `connections` connections (at least one) to `endpoint`,
    /// dialled on first use. `request_timeout` caps the connection setup
    /// timeout (5 s otherwise); each request brings its own deadline.
    pub fn new(
        endpoint: &str,
        connections: usize,
        ca_file: Option<&Path>,
        request_timeout: Duration,
    ) -> Result<Pool, TransportError> {
        let target = Target::parse(endpoint, ca_file)?;
        let slots = (0..connections.max(1)).map(|_| Slot::default()).collect();
        Ok(Pool {
            inner: Arc::new(Inner {
                target: Arc::new(target),
                slots,
                next: AtomicUsize::new(0),
                dials: AtomicU64::new(0),
                connect_timeout: CONNECT_TIMEOUT.min(request_timeout),
            }),
        })
    }

    /// How many connections the pool holds.
    pub fn len(&self) -> usize {
        self.inner.slots.len()
    }

    /// Never true: a pool holds at least one connection.
    pub fn is_empty(&self) -> bool {
        self.inner.slots.is_empty()
    }

    /// Connections dialled since start (reconnects and failed dials included).
    pub fn dials(&self) -> u64 {
        self.inner.dials.load(Ordering::Relaxed)
    }

    /// The URI of `path` (which starts with `/`) on this endpoint.
    pub fn uri(&self, path: &str) -> Result<Uri, http::Error> {
        self.inner.target.uri(path)
    }

    /// `Some(time to the next dial)`, the shortest over the slots, when
    /// every slot is backing off after a failed dial: a request now would
    /// fail at once with [`SendError::Connect`]. `None` when a slot has a
    /// connection, is dialling, or may dial.
    pub fn backoff(&self) -> Option<Duration> {
        let now = Instant::now();
        let mut shortest: Option<Duration> = None;
        for slot in &self.inner.slots {
            let state = lock(&slot.state);
            if state.live.is_some() || state.dialing.is_some() {
                return None;
            }
            let left = state.backoff.remaining(now)?;
            shortest = Some(shortest.map_or(left, |s| s.min(left)));
        }
        shortest
    }

    /// POSTs `body` to `uri` with `headers` and reads the answer, all
    /// before `deadline`. A request the provider provably never saw is
    /// resent once on a fresh connection. `warms` says whether an answer
    /// proves the connection may carry many streams (see the module doc).
    /// While the request is still queued locally it ends at once when
    /// `give_up` is cancelled ([`SendError::Queued`]); once written, it runs
    /// to its answer or the deadline.
    pub async fn post(
        &self,
        uri: &Uri,
        headers: impl Fn() -> HeaderMap,
        body: &Bytes,
        warms: impl Fn(&RawAnswer) -> bool,
        deadline: Instant,
        give_up: Option<&CancellationToken>,
    ) -> Result<RawAnswer, SendError> {
        let request = || {
            let mut request = Request::new(());
            *request.method_mut() = Method::POST;
            *request.uri_mut() = uri.clone();
            *request.headers_mut() = headers();
            request.headers_mut().insert(
                http::header::USER_AGENT,
                HeaderValue::from_static(USER_AGENT),
            );
            request
        };
        match self
            .post_once(request(), body.clone(), &warms, deadline, give_up)
            .await
        {
            Err(SendError::Unsent(why)) => {
                tracing::debug!(%why, "request not sent; resending on a fresh connection");
                self.post_once(request(), body.clone(), &warms, deadline, give_up)
                    .await
            }
            other => other,
        }
    }

    async fn post_once(
        &self,
        request: Request<()>,
        body: Bytes,
        warms: &impl Fn(&RawAnswer) -> bool,
        deadline: Instant,
        give_up: Option<&CancellationToken>,
    ) -> Result<RawAnswer, SendError> {
        if give_up.is_some_and(CancellationToken::is_cancelled) {
            return Err(SendError::Queued("given up before it was sent".into()));
        }
        let (i, live) = self.connection(deadline, give_up).await?;
        let result = if live.state.warm.load(Ordering::Acquire) {
            send_on(&live, request, body, deadline, give_up).await
        } else {
            let alone = tokio::select! {
                biased;
                () = given_up(give_up) => {
                    return Err(SendError::Queued(
                        "given up while waiting for the warm-up of a new connection".into(),
                    ));
                }
                () = tokio::time::sleep_until(deadline) => {
                    return Err(SendError::Queued(
                        "the request's time ran out while waiting for the warm-up of a new connection"
                            .into(),
                    ));
                }
                alone = live.state.warming.lock() => alone,
            };
            if live.state.warm.load(Ordering::Acquire) {
                // Warmed while we waited: go at once, side by side with the others.
                drop(alone);
                send_on(&live, request, body, deadline, give_up).await
            } else {
                let result = send_on(&live, request, body, deadline, give_up).await;
                if result.as_ref().is_ok_and(warms) {
                    live.state.warm.store(true, Ordering::Release);
                }
                result
            }
        };
        if let Err(SendError::Unsent(_) | SendError::Lost(_)) = &result
            && gone(&live.send)
        {
            // The connection is gone or going away: dial anew next time.
            self.inner.slots[i].forget(live.state.id);
        }
        result
    }

    /// The connection of the next slot not backing off: its live connection,
    /// or the result of its dial (started here if none is under way).
    async fn connection(
        &self,
        deadline: Instant,
        give_up: Option<&CancellationToken>,
    ) -> Result<(usize, Live), SendError> {
        let n = self.inner.slots.len();
        let first = self.inner.next.fetch_add(1, Ordering::Relaxed) % n;
        let now = Instant::now();
        let mut stuck: Option<(Duration, String)> = None;
        for k in 0..n {
            let i = (first + k) % n;
            let found = {
                let mut state = lock(&self.inner.slots[i].state);
                if let Some(live) = &state.live {
                    Found::Live(live.clone())
                } else if let Some(dial) = &state.dialing {
                    Found::Dial(dial.clone())
                } else if let Some(left) = state.backoff.remaining(now) {
                    if stuck.as_ref().is_none_or(|(l, _)| left < *l) {
                        stuck = Some((left, state.backoff.last_error.clone()));
                    }
                    continue;
                } else {
                    Found::Dial(self.start_dial(i, &mut state))
                }
            };
            return match found {
                Found::Live(live) => Ok((i, live)),
                Found::Dial(dial) => wait_for_dial(dial, deadline, give_up)
                    .await
                    .map(|live| (i, live)),
            };
        }
        let (left, error) = stuck.unwrap_or_default();
        Err(SendError::Connect(format!(
            "every connection to {} is backing off after a failed dial ({error}); next dial in {left:.1?}",
            self.inner.target.addr()
        )))
    }

    /// Starts the dial of slot `i` as a task the slot owns; returns where
    /// its result will be published.
    fn start_dial(&self, i: usize, state: &mut SlotState) -> watch::Receiver<DialResult> {
        let (publish, result) = watch::channel(None);
        let id = self.inner.dials.fetch_add(1, Ordering::Relaxed) + 1;
        let target = self.inner.target.clone();
        let timeout = self.inner.connect_timeout;
        let pool = Arc::downgrade(&self.inner);
        let forget = {
            let pool = pool.clone();
            move || {
                if let Some(pool) = pool.upgrade() {
                    pool.slots[i].forget(id);
                }
            }
        };
        let task = tokio::spawn(async move {
            let dialled = target.connect(id, forget, timeout).await;
            let Some(pool) = pool.upgrade() else {
                if let Ok((_, driver)) = dialled {
                    driver.abort();
                }
                return;
            };
            let slot = &pool.slots[i];
            let result = match dialled {
                Ok((send, driver)) => {
                    let mut drivers = lock(&slot.drivers);
                    drivers.retain(|d| !d.is_finished());
                    drivers.push(driver);
                    Ok(Live {
                        send,
                        state: Arc::new(ConnState::new(id)),
                    })
                }
                Err(why) => Err(why),
            };
            {
                let mut state = lock(&slot.state);
                state.dialing = None;
                match &result {
                    Ok(live) => {
                        state.live = Some(live.clone());
                        state.backoff.succeeded();
                    }
                    Err(why) => {
                        let wait = state.backoff.failed(Instant::now(), why.clone(), jitter());
                        tracing::warn!(
                            connection = id,
                            error = %why,
                            failures = state.backoff.failures,
                            next_dial_in = ?wait,
                            "HTTP/2 connection setup failed; the slot backs off"
                        );
                    }
                }
            }
            publish.send_replace(Some(result));
        });
        state.dialing = Some(result.clone());
        // The previous dial task, if any, has finished (no dial was under way).
        state.dial_task = Some(task);
        result
    }

    /// Drops every connection (each sends GOAWAY once its streams are done)
    /// and waits for their tasks, aborting those still running after 2 s.
    /// A dial under way is aborted (its waiters fail with `Connect`).
    pub async fn close(&self) {
        let mut dials = Vec::new();
        for slot in &self.inner.slots {
            let mut state = lock(&slot.state);
            state.dialing = None;
            if let Some(task) = state.dial_task.take() {
                task.abort();
                dials.push(task);
            }
        }
        for dial in dials {
            let _ = dial.await;
        }
        let mut drivers = Vec::new();
        for slot in &self.inner.slots {
            lock(&slot.state).live = None;
            drivers.append(&mut lock(&slot.drivers));
        }
        for mut driver in drivers {
            if tokio::time::timeout(CLOSE_TIMEOUT, &mut driver)
                .await
                .is_err()
            {
                driver.abort();
            }
        }
    }
}

/// Waits for a slot's dial, until `deadline` or `give_up`.
async fn wait_for_dial(
    mut dial: watch::Receiver<DialResult>,
    deadline: Instant,
    give_up: Option<&CancellationToken>,
) -> Result<Live, SendError> {
    let result = tokio::select! {
        biased;
        () = given_up(give_up) => {
            return Err(SendError::Queued("given up while waiting for a connection".into()));
        }
        done = dial.wait_for(Option::is_some) => done.ok().and_then(|r| (*r).clone()),
        () = tokio::time::sleep_until(deadline) => {
            return Err(SendError::Connect(
                "no connection before the request's deadline (connection setup still under way)"
                    .into(),
            ));
        }
    };
    match result {
        Some(Ok(live)) => Ok(live),
        Some(Err(why)) => Err(SendError::Connect(why)),
        None => Err(SendError::Connect(
            "connection setup abandoned: the pool was closed".into(),
        )),
    }
}

/// One exchange on `live`, once it has a free stream.
async fn send_on(
    live: &Live,
    request: Request<()>,
    body: Bytes,
    deadline: Instant,
    give_up: Option<&CancellationToken>,
) -> Result<RawAnswer, SendError> {
    let _stream = live.state.stream(&live.send, deadline, give_up).await?;
    exchange(live.send.clone(), request, body, deadline).await
}

/// Whether the connection behind `send` can take no new stream (closed, or
/// going away). Never waits.
fn gone(send: &SendRequest<Bytes>) -> bool {
    let mut send = send.clone();
    let waker = std::task::Waker::noop();
    matches!(
        send.poll_ready(&mut std::task::Context::from_waker(waker)),
        std::task::Poll::Ready(Err(_))
    )
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Connections close by themselves once their last handle is gone;
        // a dial under way, or a driver left running (a peer that never
        // answers), is stopped here.
        for slot in &self.slots {
            if let Some(task) = lock(&slot.state).dial_task.take() {
                task.abort();
            }
            for d in lock(&slot.drivers).iter() {
                if !d.is_finished() {
                    d.abort();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::exchange::MAX_BODY;
    use super::super::test_server::{Play, black_hole, server, server_with};
    use super::*;

    /// Generous slack for CI noise on top of the bounds asserted.
    const SLACK: Duration = Duration::from_millis(500);

    fn in_(timeout: Duration) -> Instant {
        Instant::now() + timeout
    }

    async fn post(p: &Pool, timeout: Duration) -> Result<RawAnswer, SendError> {
        post_giving_up(p, timeout, None).await
    }

    async fn post_giving_up(
        p: &Pool,
        timeout: Duration,
        give_up: Option<&CancellationToken>,
    ) -> Result<RawAnswer, SendError> {
        let uri = p.uri("/x").expect("uri");
        p.post(
            &uri,
            HeaderMap::new,
            &Bytes::from_static(b"{}"),
            |_| true,
            in_(timeout),
            give_up,
        )
        .await
    }

    /// Polls `cond` until it holds, failing the test after `within`.
    async fn until(within: Duration, what: &str, mut cond: impl FnMut() -> bool) {
        let end = Instant::now() + within;
        while !cond() {
            assert!(Instant::now() < end, "timed out waiting for {what}");
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn an_unreachable_endpoint_fails_to_connect_and_backs_off() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        let p = Pool::new(
            &format!("http://127.0.0.1:{port}"),
            2,
            None,
            Duration::from_secs(1),
        )
        .expect("pool");
        let e = post(&p, Duration::from_secs(1))
            .await
            .expect_err("nobody listens");
        assert!(matches!(e, SendError::Connect(_)), "{e:?}");
        assert!(matches!(e.cause(), crate::RetryCause::Connect { .. }));
        assert_eq!(p.dials(), 1, "a failed dial is not resent");
        // The other slot may still dial: it fails too.
        let e = post(&p, Duration::from_secs(1))
            .await
            .expect_err("nobody listens");
        assert!(matches!(e, SendError::Connect(_)), "{e:?}");
        assert_eq!(p.dials(), 2);
        let left = p.backoff().expect("every slot backs off");
        assert!(left <= BACKOFF_FIRST, "{left:?}");
        // Now every slot backs off: a send fails at once, naming the error.
        let started = Instant::now();
        let e = post(&p, Duration::from_secs(1))
            .await
            .expect_err("backing off");
        assert!(started.elapsed() < Duration::from_millis(100));
        let text = e.to_string();
        assert!(
            text.contains("cannot connect") && text.contains("next dial in"),
            "{text}"
        );
        assert_eq!(p.dials(), 2, "no dial while backing off");
    }

    async fn fifty_sends_fail_fast(endpoint: &str) {
        let timeout = Duration::from_secs(1);
        let p = Pool::new(endpoint, 2, None, timeout).expect("pool");
        let started = Instant::now();
        let mut sends = tokio::task::JoinSet::new();
        for _ in 0..50 {
            let p = p.clone();
            sends.spawn(async move {
                let sent = Instant::now();
                let r = post(&p, timeout).await;
                (r, sent.elapsed())
            });
        }
        while let Some(done) = sends.join_next().await {
            let (r, took) = done.expect("task");
            let e = r.expect_err("nothing answers");
            assert!(
                matches!(e.cause(), crate::RetryCause::Connect { .. }),
                "{e:?}"
            );
            assert!(
                took < timeout.mul_f64(1.5) + SLACK,
                "one send took {took:?}"
            );
        }
        assert!(
            started.elapsed() < timeout.mul_f64(1.5) + SLACK,
            "all 50 took {:?}",
            started.elapsed()
        );
        assert_eq!(p.dials(), 2, "one dial per slot, shared by its waiters");
        until(timeout + SLACK, "every slot to back off", || {
            p.backoff().is_some()
        })
        .await;
        let again = Instant::now();
        let e = post(&p, timeout).await.expect_err("backing off");
        assert!(matches!(e, SendError::Connect(_)), "{e:?}");
        assert!(
            again.elapsed() < Duration::from_millis(100),
            "{:?}",
            again.elapsed()
        );
        assert_eq!(p.dials(), 2);
        p.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fifty_sends_to_a_silent_endpoint_fail_together_within_the_timeout() {
        let (endpoint, accepted) = black_hole().await;
        fifty_sends_fail_fast(&endpoint).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_send_given_up_while_waiting_on_a_dial_ends_at_once_and_the_dial_goes_on() {
        let (endpoint, _accepted) = black_hole().await;
        let timeout = Duration::from_secs(2);
        let p = Pool::new(&endpoint, 1, None, timeout).expect("pool");
        let give_up = CancellationToken::new();
        let first = {
            let (p, give_up) = (p.clone(), give_up.clone());
            tokio::spawn(async move { post_giving_up(&p, timeout, Some(&give_up)).await })
        };
        until(timeout, "the dial to start", || p.dials() == 1).await;
        let cancelled = Instant::now();
        give_up.cancel();
        let e = first.await.expect("task").expect_err("given up");
        assert!(cancelled.elapsed() < Duration::from_millis(100));
        assert!(matches!(e, SendError::Queued(_)), "{e:?}");
        assert_eq!(e.cause(), crate::RetryCause::Unsent);
        // The dial was not cancelled with it: the next send waits on the
        // same dial, and fails with it.
        let e = post(&p, timeout).await.expect_err("silent");
        assert!(matches!(e, SendError::Connect(_)), "{e:?}");
        assert_eq!(p.dials(), 1);
        // A send already given up does not even start.
        let e = post_giving_up(&p, timeout, Some(&give_up))
            .await
            .expect_err("given up");
        assert!(matches!(e, SendError::Queued(_)), "{e:?}");
    }

    #[tokio::test]
    async fn a_send_waiting_for_a_free_stream_is_queued_not_timed_out() {
        let (endpoint, seen) = server_with(vec![Play::Answer(200), Play::Ignore], Some(1)).await;
        let p = Pool::new(&endpoint, 1, None, Duration::from_secs(2)).expect("pool");
        post(&p, Duration::from_secs(2))
            .await
            .expect("warm-up answered");
        let stuck = {
            let p = p.clone();
            tokio::spawn(async move { post(&p, Duration::from_secs(2)).await })
        };
        until(Duration::from_secs(2), "the ignored request", || {
            seen.load(Ordering::SeqCst) == 2
        })
        .await;
        let e = post(&p, Duration::from_millis(300))
            .await
            .expect_err("no stream");
        assert!(matches!(e, SendError::Queued(_)), "{e:?}");
        assert_eq!(e.cause(), crate::RetryCause::Unsent);
        let give_up = CancellationToken::new();
        let waiting = {
            let (p, give_up) = (p.clone(), give_up.clone());
            tokio::spawn(
                async move { post_giving_up(&p, Duration::from_secs(2), Some(&give_up)).await },
            )
        };
        tokio::task::yield_now().await;
        give_up.cancel();
        let e = waiting.await.expect("task").expect_err("given up");
        assert!(matches!(e, SendError::Queued(_)), "{e:?}");
        assert_eq!(seen.load(Ordering::SeqCst), 2, "neither was written");
        let e = stuck.await.expect("task").expect_err("ignored");
        assert!(matches!(e, SendError::Timeout(_)), "{e:?}");
    }

    /// A request whose answer's headers and first body bytes arrive, and
    /// whose stream is then reset (the server resets it when the next
    /// request comes in).
    async fn body_reset_after(status: u16) -> Result<RawAnswer, SendError> {
        let script = vec![
            Play::Answer(200),
            Play::AnswerThenReset(status),
            Play::Answer(200),
        ];
        let (endpoint, seen) = server(script).await;
        let p = Pool::new(&endpoint, 1, None, Duration::from_secs(2)).expect("pool");
        post(&p, Duration::from_secs(2))
            .await
            .expect("warm-up answered");
        let first = {
            let p = p.clone();
            tokio::spawn(async move { post(&p, Duration::from_secs(2)).await })
        };
        until(Duration::from_secs(2), "the second request", || {
            seen.load(Ordering::SeqCst) == 2
        })
        .await;
        post(&p, Duration::from_secs(2))
            .await
            .expect("third answered");
        first.await.expect("task")
    }

    #[tokio::test]
    async fn a_2xx_whose_body_is_lost_is_delivered_and_a_4xx_is_not() {
        let answer = body_reset_after(200).await.expect("delivered");
        assert_eq!(answer.status, 200);
        assert_eq!(&answer.body[..], b"{\"", "the part read");
        assert!(!answer.body_complete);

        let e = body_reset_after(400).await.expect_err("lost");
        assert!(matches!(e, SendError::Lost(_)), "{e:?}");
    }

    #[tokio::test]
    async fn a_2xx_whose_body_never_comes_is_delivered_at_the_deadline() {
        let (endpoint, _seen) = server(vec![Play::HeadersOnly(200)]).await;
        let p = Pool::new(&endpoint, 1, None, Duration::from_secs(2)).expect("pool");
        let answer = post(&p, Duration::from_millis(300))
            .await
            .expect("delivered");
        assert_eq!((answer.status, answer.body_complete), (200, false));

        let (endpoint, _seen) = server(vec![Play::HeadersOnly(500)]).await;
        let p = Pool::new(&endpoint, 1, None, Duration::from_secs(2)).expect("pool");
        let e = post(&p, Duration::from_millis(300))
            .await
            .expect_err("timeout");
        assert!(matches!(e, SendError::Timeout(_)), "{e:?}");
    }

    #[tokio::test]
    async fn a_body_over_the_cap_is_cut_and_the_connection_goes_on() {
        let (endpoint, seen) = server(vec![Play::Big(400, 4 * MAX_BODY), Play::Answer(200)]).await;
        let p = Pool::new(&endpoint, 1, None, Duration::from_secs(2)).expect("pool");
        let answer = post(&p, Duration::from_secs(2)).await.expect("answered");
        assert_eq!(answer.status, 400);
        assert_eq!(answer.body.len(), MAX_BODY);
        assert!(!answer.body_complete);
        for _ in 0..20 {
            let answer = post(&p, Duration::from_secs(2)).await.expect("answered");
            assert_eq!(answer.status, 200);
        }
        assert_eq!(p.dials(), 1, "the same connection");
        assert_eq!(seen.load(Ordering::SeqCst), 21);
    }

    #[test]
    fn the_backoff_doubles_to_a_minute_within_its_jitter() {
        let full = |n| backoff_delay(n, 1.0);
        let half = |n| backoff_delay(n, 0.0);
        let secs = |s| Duration::from_secs(s);
        assert_eq!(
            (1..=8).map(full).collect::<Vec<_>>(),
            [1, 2, 4, 8, 16, 32, 60, 60].map(secs)
        );
        assert_eq!(half(1), Duration::from_millis(500));
        assert_eq!(half(7), secs(30));
        assert_eq!(full(u32::MAX), secs(60));
        for _ in 0..100 {
            let d = backoff_delay(3, jitter());
            assert!(d >= secs(2) && d <= secs(4), "{d:?}");
        }
    }

    #[test]
    fn the_backoff_resets_after_a_successful_dial() {
        let now = Instant::now();
        let mut b = Backoff::default();
        assert_eq!(b.remaining(now), None);
        let waits: Vec<_> = (0..3).map(|_| b.failed(now, "boom".into(), 1.0)).collect();
        assert_eq!(waits, [1, 2, 4].map(Duration::from_secs));
        assert_eq!(b.remaining(now), Some(Duration::from_secs(4)));
        assert_eq!(b.remaining(now + Duration::from_secs(4)), None);
        assert_eq!(b.last_error, "boom");
        b.succeeded();
        assert_eq!(b.remaining(now), None);
        assert_eq!(b.failed(now, "again".into(), 1.0), Duration::from_secs(1));
    }

    async fn post_to(endpoint: &str, timeout: Duration) -> Result<RawAnswer, SendError> {
        let p = Pool::new(endpoint, 1, None, timeout).expect("pool");
        post(&p, timeout).await
    }
    #[tokio::test]
    async fn a_refused_stream_is_resent_once_and_answered() {
        let (endpoint, seen) = server(vec![Play::Refuse, Play::Answer(200)]).await;
        let answer = post_to(&endpoint, Duration::from_secs(5))
            .await
            .expect("answered");
        assert_eq!(answer.status, 200);
        assert_eq!(answer.retry_after, Some(Duration::from_secs(7)));
        assert_eq!(&answer.body[..], b"{}");
        assert_eq!(seen.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_stream_refused_twice_is_unsent() {
        let (endpoint, seen) = server(vec![Play::Refuse]).await;
        let e = post_to(&endpoint, Duration::from_secs(5))
            .await
            .expect_err("refused");
        assert!(matches!(e, SendError::Unsent(_)), "{e:?}");
        assert_eq!(e.cause(), crate::RetryCause::Unsent);
        assert_eq!(seen.load(Ordering::SeqCst), 2, "resent exactly once");
    }

    #[tokio::test]
    async fn a_connection_dropped_in_flight_loses_the_answer_and_is_not_resent() {
        let (endpoint, seen) = server(vec![Play::DropConnection]).await;
        let e = post_to(&endpoint, Duration::from_secs(5))
            .await
            .expect_err("dropped");
        assert!(matches!(e, SendError::Lost(_)), "{e:?}");
        assert_eq!(e.cause(), crate::RetryCause::Connection);
        assert_eq!(
            seen.load(Ordering::SeqCst),
            1,
            "a maybe-delivered push is not resent"
        );
    }

    #[tokio::test]
    async fn close_ends_the_connections_and_a_later_send_dials_anew() {
        let (endpoint, _seen) = server(vec![Play::Answer(200)]).await;
        let p = Pool::new(&endpoint, 2, None, Duration::from_secs(5)).expect("pool");
        for _ in 0..4 {
            post(&p, Duration::from_secs(5)).await.expect("answered");
        }
        assert_eq!(p.dials(), 2, "one dial per connection");
        p.close().await;
        let drivers: usize = p.inner.slots.iter().map(|s| lock(&s.drivers).len()).sum();
        assert_eq!(drivers, 0, "every connection task was joined");
        post(&p, Duration::from_secs(5))
            .await
            .expect("answered after close");
        assert_eq!(p.dials(), 3);
    }

    #[tokio::test]
    async fn no_answer_is_a_timeout() {
        let (endpoint, _seen) = server(vec![Play::Ignore]).await;
        let e = post_to(&endpoint, Duration::from_millis(200))
            .await
            .expect_err("ignored");
        assert!(matches!(e, SendError::Timeout(_)), "{e:?}");
        assert_eq!(e.cause(), crate::RetryCause::Timeout);
    }

    #[tokio::test]
    async fn a_closed_connection_is_redialled() {
        let (endpoint, seen) = server(vec![Play::DropConnection, Play::Answer(200)]).await;
        let p = Pool::new(&endpoint, 1, None, Duration::from_secs(5)).expect("pool");
        let first = post(&p, Duration::from_secs(5)).await;
        assert!(matches!(first, Err(SendError::Lost(_))), "{first:?}");
        let second = post(&p, Duration::from_secs(5))
            .await
            .expect("answered on a new connection");
        assert_eq!(second.status, 200);
        assert_eq!(p.dials(), 2);
        assert_eq!(seen.load(Ordering::SeqCst), 2);
        p.close().await;
    }
}
