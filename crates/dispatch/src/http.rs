//! The HTTP/2 transport shared by the APNs and FCM clients.
//!
//! A [`Pool`] holds a fixed number of HTTP/2 connections to one endpoint and
//! spreads requests over them round robin. Each connection is an `h2` client
//! connection driven by its own task: there is no per-request pool lookup,
//! no generic body machinery, and errors keep the HTTP/2 facts a dispatcher
//! needs to decide whether a resend can duplicate a push:
//!
//! - no connection could be made, the stream was never opened, the server
//!   refused it (`REFUSED_STREAM`), or it was above the last stream id of a
//!   `GOAWAY`: the provider never saw it ([`SendError::Unsent`]); the pool
//!   resends it once, at once, on a fresh connection;
//! - the connection broke while the stream was in flight: the answer is lost
//!   and the push may have been delivered ([`SendError::Lost`]);
//! - no answer within the request timeout ([`SendError::Timeout`]).
//!
//! Connections are dialled on first use and again after they close. A new
//! connection carries one request alone until an answer arrived that the
//! caller accepts: APNs allows one stream on a new connection until a request
//! with a valid token succeeded, and a cold burst would otherwise be refused.
//! Idle or busy, each connection is pinged every 30 s and dropped when a ping
//! goes unanswered for 10 s (below Cloud NAT's idle timeout).
//!
//! `http://` endpoints use h2c with prior knowledge (local stand-ins only);
//! `https://` uses rustls with ALPN `h2`, the platform's roots and an optional
//! extra root CA.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use h2::client::SendRequest;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, HeaderValue, Method, Request, Uri};
use rustls::pki_types::ServerName;
use rustls::pki_types::pem::PemObject;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// Keepalive ping interval.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// How long a keepalive ping may go unanswered before the connection is dropped.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// TCP connect plus TLS and HTTP/2 handshake timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long [`Pool::close`] waits for connections to say goodbye.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Sent on every request.
const USER_AGENT: &str = concat!("push-dispatch/", env!("CARGO_PKG_VERSION"));

/// A transport could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The endpoint is not an `http://` or `https://` URL with a host.
    #[error("endpoint `{endpoint}` is not usable: {problem}; give it as https://host[:port]")]
    Endpoint {
        /// The endpoint.
        endpoint: String,
        /// Why.
        problem: String,
    },
    /// The CA file could not be read.
    #[error("cannot read CA file {path}: {source}")]
    CaFile {
        /// The file.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The CA file holds no usable certificate.
    #[error("CA file {path} holds no PEM certificate{detail}")]
    CaPem {
        /// The file.
        path: String,
        /// What the parser said, if anything.
        detail: String,
    },
    /// rustls refused the TLS setup.
    #[error("cannot set up TLS: {0}")]
    Tls(#[source] rustls::Error),
}

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The provider never saw the request: resending cannot duplicate it.
    #[error("request not sent: {0}")]
    Unsent(String),
    /// The connection broke while the request was in flight: it may have
    /// been delivered.
    #[error("answer lost: {0}")]
    Lost(String),
    /// No answer within the request timeout: it may have been delivered.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

impl SendError {
    /// How the dispatcher reports it.
    pub fn cause(&self) -> crate::RetryCause {
        match self {
            SendError::Unsent(_) => crate::RetryCause::Unsent,
            SendError::Lost(_) => crate::RetryCause::Connection,
            SendError::Timeout(_) => crate::RetryCause::Timeout,
        }
    }

    /// Sorts an `h2` error on an opened stream: only a refusal, or a stream
    /// above the last id of the server's GOAWAY, proves the server did not
    /// process it (RFC 9113 §8.7).
    fn on_stream(e: h2::Error) -> SendError {
        let refused = e.is_remote()
            && ((e.is_reset() && e.reason() == Some(h2::Reason::REFUSED_STREAM)) || e.is_go_away());
        if refused {
            SendError::Unsent(e.to_string())
        } else {
            SendError::Lost(e.to_string())
        }
    }
}

/// What came back from a provider: status, parsed `Retry-After`, body.
#[derive(Debug)]
pub struct RawAnswer {
    /// HTTP status.
    pub status: u16,
    /// `Retry-After`, seconds or HTTP date.
    pub retry_after: Option<Duration>,
    /// The body.
    pub body: Bytes,
}

/// Where the pool connects to.
#[derive(Debug)]
struct Target {
    scheme: Scheme,
    authority: Authority,
    /// Path of the endpoint URL without a trailing `/` (usually empty).
    base_path: String,
    host: String,
    port: u16,
    tls: Option<Tls>,
}

struct Tls {
    connector: tokio_rustls::TlsConnector,
    server_name: ServerName<'static>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

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
        let bad = |problem: &str| TransportError::Endpoint {
            endpoint: endpoint.to_string(),
            problem: problem.to_string(),
        };
        let uri: Uri = endpoint.parse().map_err(|_| bad("not a URL"))?;
        let scheme = uri.scheme().cloned().ok_or_else(|| bad("no scheme"))?;
        let authority = uri.authority().cloned().ok_or_else(|| bad("no host"))?;
        let tls = if scheme == Scheme::HTTPS {
            true
        } else if scheme == Scheme::HTTP {
            false
        } else {
            return Err(bad("the scheme is neither http nor https"));
        };
        if uri.query().is_some() {
            return Err(bad("it has a query"));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let tls = if tls {
            let server_name = ServerName::try_from(host.clone())
                .map_err(|_| bad("the host is not a valid TLS server name"))?;
            Some(Tls {
                connector: tokio_rustls::TlsConnector::from(Arc::new(tls_config(ca_file)?)),
                server_name,
            })
        } else {
            None
        };
        let slots = (0..connections.max(1)).map(|_| Slot::default()).collect();
        Ok(Pool {
            inner: Arc::new(Inner {
                target: Target {
                    scheme,
                    authority,
                    base_path: uri.path().trim_end_matches('/').to_string(),
                    host,
                    port,
                    tls,
                },
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
        let t = &self.inner.target;
        let path_and_query = if t.base_path.is_empty() {
            PathAndQuery::try_from(path)?
        } else {
            PathAndQuery::try_from(format!("{}{path}", t.base_path))?
        };
        Ok(Uri::from_parts({
            let mut parts = http::uri::Parts::default();
            parts.scheme = Some(t.scheme.clone());
            parts.authority = Some(t.authority.clone());
            parts.path_and_query = Some(path_and_query);
            parts
        })?)
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
        let t = &self.inner.target;
        let id = self.inner.dials.fetch_add(1, Ordering::Relaxed) + 1;
        let handshake = async {
            let tcp = TcpStream::connect((t.host.as_str(), t.port))
                .await
                .map_err(|e| format!("cannot connect to {}:{}: {e}", t.host, t.port))?;
            tcp.set_nodelay(true)
                .map_err(|e| format!("cannot set TCP_NODELAY: {e}"))?;
            let weak = Arc::downgrade(&self.inner);
            match &t.tls {
                None => start(tcp, weak, i, id).await,
                Some(tls) => {
                    let stream = tls
                        .connector
                        .connect(tls.server_name.clone(), tcp)
                        .await
                        .map_err(|e| format!("TLS handshake with {} failed: {e}", t.host))?;
                    if stream.get_ref().1.alpn_protocol() != Some(b"h2") {
                        return Err(format!(
                            "{} did not agree to HTTP/2 (ALPN h2); it must speak HTTP/2",
                            t.host
                        ));
                    }
                    start(stream, weak, i, id).await
                }
            }
        };
        let (send, driver) = match tokio::time::timeout(CONNECT_TIMEOUT, handshake).await {
            Ok(Ok(pair)) => pair,
            Ok(Err(why)) => return Err(SendError::Unsent(why)),
            Err(_) => {
                return Err(SendError::Unsent(format!(
                    "no HTTP/2 connection to {}:{} within {CONNECT_TIMEOUT:?}",
                    t.host, t.port
                )));
            }
        };
        tracing::debug!(host = %t.host, port = t.port, connection = id, "HTTP/2 connection up");
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

/// Performs the HTTP/2 handshake on `io` and spawns the task that drives the
/// connection, answers keepalive and forgets the connection when it ends.
async fn start<T>(
    io: T,
    pool: Weak<Inner>,
    slot: usize,
    id: u64,
) -> Result<(SendRequest<Bytes>, JoinHandle<()>), String>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (send, mut connection) = h2::client::Builder::new()
        .enable_push(false)
        .initial_window_size(1 << 20)
        .initial_connection_window_size(4 << 20)
        .handshake::<_, Bytes>(io)
        .await
        .map_err(|e| format!("HTTP/2 handshake failed: {e}"))?;
    let ping_pong = connection.ping_pong();
    let driver = tokio::spawn(async move {
        let keepalive = async move {
            let Some(mut ping_pong) = ping_pong else {
                return std::future::pending::<&'static str>().await;
            };
            loop {
                tokio::time::sleep(KEEPALIVE_INTERVAL).await;
                match tokio::time::timeout(KEEPALIVE_TIMEOUT, ping_pong.ping(h2::Ping::opaque()))
                    .await
                {
                    Ok(Ok(_)) => {}
                    Ok(Err(_)) => return "keepalive ping failed",
                    Err(_) => return "keepalive ping unanswered",
                }
            }
        };
        tokio::select! {
            ended = &mut connection => match ended {
                Ok(()) => tracing::debug!(connection = id, "HTTP/2 connection closed"),
                Err(e) => tracing::debug!(connection = id, error = %e, "HTTP/2 connection ended"),
            },
            why = keepalive => tracing::warn!(connection = id, why, "dropping the HTTP/2 connection"),
        }
        if let Some(pool) = pool.upgrade() {
            pool.slots[slot].forget(id);
        }
    });
    Ok((send, driver))
}

/// One request and its answer, within `timeout`.
async fn exchange(
    send: SendRequest<Bytes>,
    request: Request<()>,
    body: Bytes,
    timeout: Duration,
) -> Result<RawAnswer, SendError> {
    let exchange = async {
        let mut send = send
            .ready()
            .await
            .map_err(|e| SendError::Unsent(e.to_string()))?;
        let (response, mut stream) = send
            .send_request(request, body.is_empty())
            .map_err(|e| SendError::Unsent(e.to_string()))?;
        if !body.is_empty() {
            stream.send_data(body, true).map_err(SendError::on_stream)?;
        }
        let response = response.await.map_err(SendError::on_stream)?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| crate::retry_after::parse_retry_after(v, std::time::SystemTime::now()));
        let mut recv = response.into_body();
        let mut body = Bytes::new();
        let mut more: Option<BytesMut> = None;
        while !recv.is_end_stream() {
            let Some(chunk) = recv.data().await else {
                break;
            };
            let chunk = chunk.map_err(SendError::on_stream)?;
            // Give the window back at once: answers are small.
            let _ = recv.flow_control().release_capacity(chunk.len());
            if body.is_empty() && more.is_none() {
                body = chunk;
            } else {
                more.get_or_insert_with(|| BytesMut::from(&body[..]))
                    .extend_from_slice(&chunk);
            }
        }
        if let Some(all) = more {
            body = all.freeze();
        }
        Ok(RawAnswer {
            status,
            retry_after,
            body,
        })
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .unwrap_or(Err(SendError::Timeout(timeout)))
}

/// The client TLS setup: ALPN `h2` only, the platform's roots plus `ca_file`.
fn tls_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, TransportError> {
    let extra = match ca_file {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|source| TransportError::CaFile {
                path: path.display().to_string(),
                source,
            })?;
            let certs = rustls::pki_types::CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| TransportError::CaPem {
                    path: path.display().to_string(),
                    detail: format!(": {e}"),
                })?;
            if certs.is_empty() {
                return Err(TransportError::CaPem {
                    path: path.display().to_string(),
                    detail: String::new(),
                });
            }
            certs
        }
        None => Vec::new(),
    };
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()));
    let verifier = if extra.is_empty() {
        rustls_platform_verifier::Verifier::new(provider.clone())
    } else {
        rustls_platform_verifier::Verifier::new_with_extra_roots(extra, provider.clone())
    }
    .map_err(TransportError::Tls)?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TransportError::Tls)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(endpoint: &str) -> Result<Pool, TransportError> {
        Pool::new(endpoint, 2, None, Duration::from_secs(1))
    }

    #[test]
    fn endpoints_are_checked() {
        for bad in ["not a url", "ftp://host", "/3/device", "https://host/?q=1"] {
            let e = pool(bad).expect_err(bad).to_string();
            assert!(e.contains(bad) && e.contains("https://host"), "{e}");
        }
    }

    #[test]
    fn uris_keep_scheme_authority_and_base_path() {
        let p = pool("http://127.0.0.1:9443").expect("pool");
        assert_eq!(
            p.uri("/3/device/abc").expect("uri").to_string(),
            "http://127.0.0.1:9443/3/device/abc"
        );
        let p = pool("https://gw.example/apns/").expect("pool");
        assert_eq!(
            p.uri("/3/device/abc").expect("uri").to_string(),
            "https://gw.example/apns/3/device/abc"
        );
        assert!(p.uri("/3/device/a b").is_err());
    }

    #[test]
    fn ca_file_errors_name_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("missing.pem");
        let e =
            Pool::new("https://h", 1, Some(&missing), Duration::from_secs(1)).expect_err("missing");
        assert!(e.to_string().contains("missing.pem"), "{e}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no certificate here").expect("write");
        let e = Pool::new("https://h", 1, Some(&empty), Duration::from_secs(1)).expect_err("empty");
        assert!(e.to_string().contains("holds no PEM certificate"), "{e}");
    }

    #[test]
    fn a_local_reason_is_not_a_refusal() {
        let refused = h2::Error::from(h2::Reason::REFUSED_STREAM);
        // A locally made reason is not the server's refusal.
        assert!(matches!(SendError::on_stream(refused), SendError::Lost(_)));
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

    /// What the test server does with the n-th request (0-based).
    #[derive(Clone, Copy, Debug)]
    enum Play {
        Answer(u16),
        Refuse,
        DropConnection,
        Ignore,
    }

    /// An h2c server that plays `script` (the last entry repeats) and counts
    /// the requests it saw.
    async fn server(script: Vec<Play>) -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
        let seen = Arc::new(AtomicUsize::new(0));
        let count = seen.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let (script, count) = (script.clone(), count.clone());
                tokio::spawn(async move {
                    let Ok(mut conn) = h2::server::handshake(socket).await else {
                        return;
                    };
                    let mut parked = Vec::new();
                    while let Some(Ok((request, mut respond))) = conn.accept().await {
                        let n = count.fetch_add(1, Ordering::SeqCst);
                        let play = script[n.min(script.len() - 1)];
                        let _body = request.into_body();
                        match play {
                            Play::Answer(status) => {
                                let response = http::Response::builder()
                                    .status(status)
                                    .header("retry-after", "7")
                                    .body(())
                                    .expect("response");
                                let mut out = respond.send_response(response, false).expect("send");
                                out.send_data(Bytes::from_static(b"{}"), true)
                                    .expect("data");
                            }
                            Play::Refuse => respond.send_reset(h2::Reason::REFUSED_STREAM),
                            Play::DropConnection => return,
                            Play::Ignore => parked.push(respond),
                        }
                    }
                });
            }
        });
        (endpoint, seen)
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
