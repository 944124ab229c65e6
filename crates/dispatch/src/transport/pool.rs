//! The connection slots of one endpoint, used round robin.
//!
//! A [`Pool`] has a fixed number of slots; each holds at most one live HTTP/2
//! connection. A request takes the next slot (one atomic add), dials it when
//! it is empty (one dial per slot at a time; others wait for it), and runs
//! its exchange on the slot's connection. A request the provider provably
//! never saw ([`SendError::Unsent`]) is resent once, at once, and a slot whose
//! connection is gone or going away is emptied so that the next request
//! dials anew; so is a slot whose driver task saw the connection end.
//!
//! A new connection carries one request alone until an answer arrived that
//! the caller accepts (`warms`): APNs allows one stream on a new connection
//! until a request with a valid token succeeded, and a cold burst would
//! otherwise be refused.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use http::{HeaderMap, HeaderValue, Method, Request, Uri};
use tokio::task::JoinHandle;

use super::connect::{Target, TransportError};
use super::exchange::{RawAnswer, SendError, exchange};

/// How long [`Pool::close`] waits for connections to say goodbye.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Sent on every request.
const USER_AGENT: &str = concat!("push-dispatch/", env!("CARGO_PKG_VERSION"));

/// One live HTTP/2 connection, as requests see it.
#[derive(Clone, Debug)]
struct Live {
    send: SendRequest<Bytes>,
    state: Arc<ConnState>,
}

/// Per-connection state: which dial it came from and whether it is warm.
#[derive(Debug)]
struct ConnState {
    id: u64,
    warm: AtomicBool,
    warming: tokio::sync::Mutex<()>,
}

/// One place in the pool: the current connection, if any.
#[derive(Debug, Default)]
struct Slot {
    live: Mutex<Option<Live>>,
    dialing: tokio::sync::Mutex<()>,
    drivers: Mutex<Vec<JoinHandle<()>>>,
}

impl Slot {
    fn current(&self) -> Option<Live> {
        self.live.lock().ok().and_then(|l| l.clone())
    }

    /// Forgets connection `id` if it is still the current one.
    fn forget(&self, id: u64) {
        if let Ok(mut live) = self.live.lock()
            && live.as_ref().is_some_and(|l| l.state.id == id)
        {
            *live = None;
        }
    }
}

#[derive(Debug)]
struct Inner {
    target: Target,
    slots: Box<[Slot]>,
    next: AtomicUsize,
    dials: AtomicU64,
    request_timeout: Duration,
}

/// Several HTTP/2 connections to one endpoint, used round robin.
#[derive(Debug, Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

impl Pool {
    /// A pool of `connections` connections (at least one) to `endpoint`,
    /// dialled on first use.
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
                target,
                slots,
                next: AtomicUsize::new(0),
                dials: AtomicU64::new(0),
                request_timeout,
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

    /// Connections dialled since start (reconnects included).
    pub fn dials(&self) -> u64 {
        self.inner.dials.load(Ordering::Relaxed)
    }

    /// The URI of `path` (which starts with `/`) on this endpoint.
    pub fn uri(&self, path: &str) -> Result<Uri, http::Error> {
        self.inner.target.uri(path)
    }

    /// POSTs `body` to `uri` with `headers` and reads the answer. A request
    /// the provider provably never saw is resent once on a fresh connection.
    /// `warms` says whether an answer proves the connection may carry many
    /// streams (see the module doc).
    pub async fn post(
        &self,
        uri: &Uri,
        headers: impl Fn() -> HeaderMap,
        body: &Bytes,
        warms: impl Fn(&RawAnswer) -> bool,
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
        match self.post_once(request(), body.clone(), &warms).await {
            Err(SendError::Unsent(why)) => {
                tracing::debug!(%why, "request not sent; resending on a fresh connection");
                self.post_once(request(), body.clone(), &warms).await
            }
            other => other,
        }
    }

    async fn post_once(
        &self,
        request: Request<()>,
        body: Bytes,
        warms: &impl Fn(&RawAnswer) -> bool,
    ) -> Result<RawAnswer, SendError> {
        let i = self.inner.next.fetch_add(1, Ordering::Relaxed) % self.inner.slots.len();
        let slot = &self.inner.slots[i];
        let live = match slot.current() {
            Some(live) => live,
            None => self.dial(i).await?,
        };
        let timeout = self.inner.request_timeout;
        let result = if live.state.warm.load(Ordering::Acquire) {
            exchange(live.send.clone(), request, body, timeout).await
        } else {
            let alone = live.state.warming.lock().await;
            if live.state.warm.load(Ordering::Acquire) {
                // Warmed while we waited: go at once, side by side with the others.
                drop(alone);
                exchange(live.send.clone(), request, body, timeout).await
            } else {
                let result = exchange(live.send.clone(), request, body, timeout).await;
                if result.as_ref().is_ok_and(warms) {
                    live.state.warm.store(true, Ordering::Release);
                }
                result
            }
        };
        if let Err(SendError::Unsent(_) | SendError::Lost(_)) = &result
            && live.send.clone().ready().await.is_err()
        {
            // The connection is gone or going away: dial anew next time.
            slot.forget(live.state.id);
        }
        result
    }

    /// Dials slot `i` unless another request did meanwhile.
    async fn dial(&self, i: usize) -> Result<Live, SendError> {
        let slot = &self.inner.slots[i];
        let _one = slot.dialing.lock().await;
        if let Some(live) = slot.current() {
            return Ok(live);
        }
        let id = self.inner.dials.fetch_add(1, Ordering::Relaxed) + 1;
        let pool = Arc::downgrade(&self.inner);
        let forget = move || {
            if let Some(pool) = pool.upgrade() {
                pool.slots[i].forget(id);
            }
        };
        let (send, driver) = self.inner.target.connect(id, forget).await?;
        let live = Live {
            send,
            state: Arc::new(ConnState {
                id,
                warm: AtomicBool::new(false),
                warming: tokio::sync::Mutex::new(()),
            }),
        };
        if let Ok(mut current) = slot.live.lock() {
            *current = Some(live.clone());
        }
        if let Ok(mut drivers) = slot.drivers.lock() {
            drivers.retain(|d| !d.is_finished());
            drivers.push(driver);
        }
        Ok(live)
    }

    /// Drops every connection (each sends GOAWAY once its streams are done)
    /// and waits for their tasks, aborting those still running after 2 s.
    pub async fn close(&self) {
        let mut drivers = Vec::new();
        for slot in &self.inner.slots {
            if let Ok(mut live) = slot.live.lock() {
                *live = None;
            }
            if let Ok(mut d) = slot.drivers.lock() {
                drivers.append(&mut d);
            }
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

impl Drop for Inner {
    fn drop(&mut self) {
        // Connections close by themselves once their last handle is gone;
        // a driver left running (a peer that never answers) is stopped here.
        for slot in &self.slots {
            if let Ok(drivers) = slot.drivers.lock() {
                for d in drivers.iter() {
                    if !d.is_finished() {
                        d.abort();
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_server::{Play, server};
    use super::*;

    fn pool(endpoint: &str) -> Result<Pool, TransportError> {
        Pool::new(endpoint, 2, None, Duration::from_secs(1))
    }

    #[tokio::test]
    async fn an_unreachable_endpoint_is_unsent() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        let p = pool(&format!("http://127.0.0.1:{port}")).expect("pool");
        let uri = p.uri("/x").expect("uri");
        let e = p
            .post(&uri, HeaderMap::new, &Bytes::from_static(b"{}"), |_| true)
            .await
            .expect_err("nobody listens");
        assert!(matches!(e, SendError::Unsent(_)), "{e:?}");
        assert_eq!(p.dials(), 2, "resent once on a fresh dial");
    }

    async fn post_to(endpoint: &str, timeout: Duration) -> Result<RawAnswer, SendError> {
        let p = Pool::new(endpoint, 1, None, timeout).expect("pool");
        let uri = p.uri("/x").expect("uri");
        p.post(&uri, HeaderMap::new, &Bytes::from_static(b"{}"), |_| true)
            .await
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
        let uri = p.uri("/x").expect("uri");
        for _ in 0..4 {
            p.post(&uri, HeaderMap::new, &Bytes::new(), |_| true)
                .await
                .expect("answered");
        }
        assert_eq!(p.dials(), 2, "one dial per connection");
        p.close().await;
        let drivers: usize = p
            .inner
            .slots
            .iter()
            .map(|s| s.drivers.lock().map_or(0, |d| d.len()))
            .sum();
        assert_eq!(drivers, 0, "every connection task was joined");
        p.post(&uri, HeaderMap::new, &Bytes::new(), |_| true)
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
        let uri = p.uri("/x").expect("uri");
        let first = p.post(&uri, HeaderMap::new, &Bytes::new(), |_| true).await;
        assert!(matches!(first, Err(SendError::Lost(_))), "{first:?}");
        let second = p
            .post(&uri, HeaderMap::new, &Bytes::new(), |_| true)
            .await
            .expect("answered on a new connection");
        assert_eq!(second.status, 200);
        assert_eq!(p.dials(), 2);
        assert_eq!(seen.load(Ordering::SeqCst), 2);
        p.close().await;
    }
}
