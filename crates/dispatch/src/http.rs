//! The HTTP/2 transport shared by the APNs and FCM clients.
//!
//! One `reqwest::Client` holds one HTTP/2 connection per host (NOTES), capped
//! by the server's stream limit, so a [`Pool`] holds several clients and
//! spreads requests over them. Each connection is warmed with a single
//! request before others may use it: APNs allows one stream on a new
//! connection until a request with a valid token succeeded, and a cold burst
//! over TLS would otherwise dial many sockets. `http://` endpoints use h2c
//! (prior knowledge, local stand-ins only); `https://` uses rustls with ALPN
//! h2, plus an optional extra root CA.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

/// Keepalive ping interval on idle connections (below Cloud NAT's idle timeout).
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// How long a keepalive ping may go unanswered before the connection is dropped.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// TCP connect timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
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
    #[error("CA file {path} holds no PEM certificate: {source}")]
    CaPem {
        /// The file.
        path: String,
        /// reqwest's complaint.
        #[source]
        source: reqwest::Error,
    },
    /// reqwest could not build a client.
    #[error("cannot build the HTTP/2 client: {0}")]
    Build(#[source] reqwest::Error),
}

/// One connection: a client and whether it has been warmed.
#[derive(Debug)]
pub struct Connection {
    client: reqwest::Client,
    warm: AtomicBool,
    warming: tokio::sync::Mutex<()>,
}

impl Connection {
    /// The client of this connection.
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// Runs `send` alone on this connection until one answer arrived, then
    /// lets every request through. `answered` says whether a result counts.
    pub async fn send<F, Fut, T>(&self, send: F, answered: impl Fn(&T) -> bool) -> T
    where
        F: FnOnce(reqwest::Client) -> Fut,
        Fut: Future<Output = T>,
    {
        if self.warm.load(Ordering::Acquire) {
            return send(self.client.clone()).await;
        }
        let _guard = self.warming.lock().await;
        let result = send(self.client.clone()).await;
        if answered(&result) {
            self.warm.store(true, Ordering::Release);
        }
        result
    }
}

/// Several HTTP/2 connections to one endpoint, used round robin.
#[derive(Debug, Clone)]
pub struct Pool {
    connections: Arc<Vec<Connection>>,
    next: Arc<AtomicUsize>,
}

impl Pool {
    /// Builds `connections` clients (HTTP/2 only: h2c for `http://`, ALPN h2 for `https://`).
    pub fn new(
        connections: usize,
        ca_file: Option<&Path>,
        request_timeout: Duration,
    ) -> Result<Pool, TransportError> {
        let ca = match ca_file {
            Some(path) => {
                let pem = std::fs::read(path).map_err(|source| TransportError::CaFile {
                    path: path.display().to_string(),
                    source,
                })?;
                Some(reqwest::Certificate::from_pem(&pem).map_err(|source| {
                    TransportError::CaPem {
                        path: path.display().to_string(),
                        source,
                    }
                })?)
            }
            None => None,
        };
        let mut list = Vec::with_capacity(connections.max(1));
        for _ in 0..connections.max(1) {
            let mut builder = reqwest::Client::builder()
                .http2_prior_knowledge()
                .timeout(request_timeout)
                .connect_timeout(CONNECT_TIMEOUT)
                .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
                .http2_keep_alive_timeout(KEEPALIVE_TIMEOUT)
                .http2_keep_alive_while_idle(true)
                .http2_adaptive_window(true)
                .pool_idle_timeout(None)
                .tcp_nodelay(true)
                .user_agent(concat!("push-dispatch/", env!("CARGO_PKG_VERSION")));
            if let Some(ca) = &ca {
                builder = builder.add_root_certificate(ca.clone());
            }
            list.push(Connection {
                client: builder.build().map_err(TransportError::Build)?,
                warm: AtomicBool::new(false),
                warming: tokio::sync::Mutex::new(()),
            });
        }
        Ok(Pool {
            connections: Arc::new(list),
            next: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// The next connection, round robin.
    pub fn pick(&self) -> &Connection {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.connections.len();
        &self.connections[i]
    }

    /// How many connections the pool holds.
    pub fn len(&self) -> usize {
        self.connections.len()
    }

    /// Never true: a pool holds at least one connection.
    pub fn is_empty(&self) -> bool {
        self.connections.is_empty()
    }
}

/// What came back from a provider: status, parsed `Retry-After`, body.
pub struct RawAnswer {
    /// HTTP status.
    pub status: u16,
    /// `Retry-After`, seconds or HTTP date.
    pub retry_after: Option<std::time::Duration>,
    /// The body.
    pub body: bytes::Bytes,
}

/// Reads a response into a [`RawAnswer`].
pub async fn read_answer(response: reqwest::Response) -> Result<RawAnswer, reqwest::Error> {
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| crate::retry_after::parse_retry_after(v, std::time::SystemTime::now()));
    let body = response.bytes().await?;
    Ok(RawAnswer {
        status,
        retry_after,
        body,
    })
}

/// How a transport error is retried.
pub fn transport_cause(e: &reqwest::Error) -> crate::RetryCause {
    if e.is_timeout() {
        crate::RetryCause::Timeout
    } else {
        crate::RetryCause::Connection
    }
}
