//! Listeners and connections: accept loops, optional TLS handshakes, HTTP/2
//! (prior knowledge or ALPN) with HTTP/1.1 fallback, the GOAWAY asked for by
//! the `goaway_every` fault (counted in `state::ConnState`) and graceful
//! shutdown. With `blackhole` ([`Serve::BlackHole`]) a listener only accepts:
//! each connection is held by a task that reads and drops what the client
//! sends and never writes a byte, until the client closes it or the sandbox
//! stops. With `blackhole_streams` the APNs and FCM streams never finish, so
//! a stopping sandbox drops such connections without the drain.
//!
//! One task per connection drives both the connection and its streams: hyper
//! hands each HTTP/2 stream to an executor, and the executor here
//! ([`StreamQueue`]) queues it for the connection's own task instead of
//! spawning a task per stream. A batch of requests read in one go is then
//! answered in one go and flushed with one write; with a task per stream, the
//! scheduler runs the connection right after each finished stream and the
//! server spends its time in one `writev` per response (measured: ~25% more
//! CPU per push).
//!
//! Every task is owned: accept loops and connections run on the sandbox's
//! `TaskTracker`, streams inside their connection's task. A
//! `CancellationToken` stops the accept loops and sends GOAWAY on every
//! connection, which then gets [`DRAIN`] to finish its streams.

use std::convert::Infallible;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::router;
use crate::state::{ConnState, State};

/// Streams per connection advertised in SETTINGS (APNs was observed at 1,000–1,500).
pub(crate) const MAX_CONCURRENT_STREAMS: u32 = 1000;
/// How long a connection may drain after GOAWAY before it is dropped.
const DRAIN: Duration = Duration::from_secs(5);
/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Rounds of "poll the connection, then its streams" per wake-up before yielding.
const ROUNDS_PER_POLL: usize = 16;

type StreamFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// hyper's executor for one connection: queues the connection's HTTP/2
/// streams for the connection task, which polls them itself.
#[derive(Clone, Default)]
struct StreamQueue(Arc<Mutex<Vec<StreamFuture>>>);

impl<F> hyper::rt::Executor<F> for StreamQueue
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, fut: F) {
        // Called from within the connection's poll, on the connection task:
        // `Streams::poll` drains the queue right after.
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Box::pin(fut));
    }
}

/// The streams of one connection, polled by the connection task.
#[derive(Default)]
struct Streams {
    queue: StreamQueue,
    running: FuturesUnordered<StreamFuture>,
}

impl Streams {
    /// Moves queued streams into the running set; true if there were any.
    fn adopt(&mut self) -> bool {
        let mut queue = self.queue.0.lock().unwrap_or_else(PoisonError::into_inner);
        let any = !queue.is_empty();
        self.running.extend(queue.drain(..));
        any
    }

    /// Polls every ready stream; true if one finished.
    fn poll_running(&mut self, cx: &mut Context<'_>) -> bool {
        let mut finished = false;
        while let Poll::Ready(Some(())) = self.running.poll_next_unpin(cx) {
            finished = true;
        }
        finished
    }
}

/// Drives a connection and its streams until the connection ends and every
/// stream finished.
async fn serve_streams<C>(mut conn: Pin<&mut C>, streams: &mut Streams, conn_done: &mut bool)
where
    C: Future,
{
    poll_fn(|cx| {
        for _ in 0..ROUNDS_PER_POLL {
            if !*conn_done && conn.as_mut().poll(cx).is_ready() {
                *conn_done = true;
            }
            let adopted = streams.adopt();
            // Streams answer here; their responses wake the connection, which
            // the next round writes out (in one batch) and flushes.
            let progressed = streams.poll_running(cx);
            if *conn_done && streams.running.is_empty() {
                return Poll::Ready(());
            }
            if !adopted && !progressed {
                return Poll::Pending;
            }
        }
        // Busy: let other connections run, come back at once.
        cx.waker().wake_by_ref();
        Poll::Pending
    })
    .await;
}

/// What a listener does with the connections it accepts.
pub(crate) enum Serve {
    /// Serve HTTP/2 and HTTP/1.1, over TLS with this acceptor.
    Http(Option<TlsAcceptor>),
    /// Hold the connection and never send a byte.
    BlackHole,
}

/// Spawns the accept loop of one listener.
pub(crate) fn spawn_listener(
    listener: TcpListener,
    serve_as: Serve,
    state: Arc<State>,
    cancel: CancellationToken,
    tasks: TaskTracker,
) {
    tasks.clone().spawn(async move {
        loop {
            let accepted = tokio::select! {
                () = cancel.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, _peer)) => {
                    // Nagle would hold back small HTTP/2 frames.
                    let _ = stream.set_nodelay(true);
                    state.recorder.connections.fetch_add(1, Ordering::Relaxed);
                    match &serve_as {
                        // The run-time black hole (`Faults::blackhole`).
                        Serve::Http(_) if state.faults.current().blackhole => {
                            tasks.spawn(hold(stream, cancel.clone()));
                        }
                        Serve::Http(tls) => {
                            tasks.spawn(serve(stream, tls.clone(), state.clone(), cancel.clone()));
                        }
                        Serve::BlackHole => {
                            tasks.spawn(hold(stream, cancel.clone()));
                        }
                    }
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %e, "sandbox accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    });
}

/// Holds a black-holed connection: reads and drops whatever comes, never
/// writes, until the client closes it or the sandbox stops.
async fn hold(mut stream: TcpStream, cancel: CancellationToken) {
    use tokio::io::AsyncReadExt;
    let mut sink = [0u8; 4096];
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            read = stream.read(&mut sink) => match read {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            },
        }
    }
}

async fn serve(
    stream: TcpStream,
    tls: Option<TlsAcceptor>,
    state: Arc<State>,
    cancel: CancellationToken,
) {
    match tls {
        None => drive(TokioIo::new(stream), state, cancel).await,
        Some(acceptor) => {
            let handshake = tokio::select! {
                () = cancel.cancelled() => return,
                r = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)) => r,
            };
            match handshake {
                Ok(Ok(tls_stream)) => drive(TokioIo::new(tls_stream), state, cancel).await,
                Ok(Err(e)) => tracing::debug!(error = %e, "sandbox TLS handshake failed"),
                Err(_) => tracing::debug!("sandbox TLS handshake timed out"),
            }
        }
    }
}

async fn drive<I>(io: I, state: Arc<State>, cancel: CancellationToken)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let mut streams = Streams::default();
    let mut builder = auto::Builder::new(streams.queue.clone());
    builder.http1().timer(TokioTimer::new()).keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS);

    let blackhole_streams = state.blackhole_streams || state.faults.current().blackhole_streams;
    let conn_state = Arc::new(ConnState::default());
    let service = {
        let conn_state = conn_state.clone();
        service_fn(move |req| {
            let state = state.clone();
            let conn_state = conn_state.clone();
            async move { Ok::<_, Infallible>(router::route(&state, &conn_state, req).await) }
        })
    };
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let mut conn_done = false;
    tokio::select! {
        () = serve_streams(conn.as_mut(), &mut streams, &mut conn_done) => return,
        () = conn_state.goaway.notified() => {}
        () = cancel.cancelled() => {}
    }
    if blackhole_streams && cancel.is_cancelled() {
        // Its APNs and FCM streams never finish: no drain.
        return;
    }
    if !conn_done {
        conn.as_mut().graceful_shutdown();
    }
    let _ = tokio::time::timeout(DRAIN, serve_streams(conn, &mut streams, &mut conn_done)).await;
}
