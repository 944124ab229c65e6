//! Making one HTTP/2 connection: where to connect, TCP + TLS (or h2c) and
//! the HTTP/2 handshake under one timeout, and the task that drives it.
//!
//! A [`Target`] is parsed once from the configured endpoint (scheme, host,
//! port, base path, and for `https://` the rustls connector with ALPN `h2`,
//! the platform's roots and an optional extra CA). [`Target::connect`] dials
//! it: TCP with `TCP_NODELAY`, the TLS handshake (which must agree on `h2`),
//! the HTTP/2 preface and the server's SETTINGS, all within one timeout
//! (the pool's: [`CONNECT_TIMEOUT`] or the request timeout if shorter). The
//! server's SETTINGS are awaited through a PING: a server sends its SETTINGS
//! first, so its PONG proves the HTTP/2 connection is up (a peer that
//! accepts TCP and never answers fails here, not on the first request). A
//! failure is a message for `SendError::Connect`, since nothing was sent.
//! The spawned driver task runs the connection, pings it every
//! [`KEEPALIVE_INTERVAL`] (idle or busy) and drops it when a ping goes
//! unanswered for [`KEEPALIVE_TIMEOUT`] (below Cloud NAT's idle timeout);
//! when the connection ends it calls back so that the pool dials anew.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use http::Uri;
use http::uri::{Authority, PathAndQuery, Scheme};
use rustls::pki_types::ServerName;
use rustls::pki_types::pem::PemObject;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// Keepalive ping interval.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// How long a keepalive ping may go unanswered before the connection is dropped.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// TCP connect plus TLS and HTTP/2 handshake timeout (at most: the pool
/// uses the request timeout when that is shorter).
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

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

/// Where a pool connects to, parsed once from the endpoint.
#[derive(Debug)]
pub(super) struct Target {
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

impl Target {
    /// Parses `endpoint` (`http://` = h2c, `https://` = TLS with the
    /// platform's roots plus `ca_file`).
    pub(super) fn parse(endpoint: &str, ca_file: Option<&Path>) -> Result<Target, TransportError> {
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
        Ok(Target {
            scheme,
            authority,
            base_path: uri.path().trim_end_matches('/').to_string(),
            host,
            port,
            tls,
        })
    }

    /// The URI of `path` (which starts with `/`) on this endpoint.
    pub(super) fn uri(&self, path: &str) -> Result<Uri, http::Error> {
        let path_and_query = if self.base_path.is_empty() {
            PathAndQuery::try_from(path)?
        } else {
            PathAndQuery::try_from(format!("{}{path}", self.base_path))?
        };
        Ok(Uri::from_parts({
            let mut parts = http::uri::Parts::default();
            parts.scheme = Some(self.scheme.clone());
            parts.authority = Some(self.authority.clone());
            parts.path_and_query = Some(path_and_query);
            parts
        })?)
    }

    /// `host:port`, for messages.
    pub(super) fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// Dials connection `id`: TCP, TLS when `https://`, and the HTTP/2
    /// handshake up to the server's SETTINGS, within `timeout`. Spawns the
    /// task driving the connection, which calls `on_end` once the
    /// connection is gone. The error says what failed (nothing was sent).
    pub(super) async fn connect(
        &self,
        id: u64,
        on_end: impl FnOnce() + Send + 'static,
        timeout: Duration,
    ) -> Result<(SendRequest<Bytes>, JoinHandle<()>), String> {
        let handshake = async {
            let tcp = TcpStream::connect((self.host.as_str(), self.port))
                .await
                .map_err(|e| format!("cannot connect to {}:{}: {e}", self.host, self.port))?;
            tcp.set_nodelay(true)
                .map_err(|e| format!("cannot set TCP_NODELAY: {e}"))?;
            match &self.tls {
                None => start(tcp, id, on_end).await,
                Some(tls) => {
                    let stream = tls
                        .connector
                        .connect(tls.server_name.clone(), tcp)
                        .await
                        .map_err(|e| format!("TLS handshake with {} failed: {e}", self.host))?;
                    if stream.get_ref().1.alpn_protocol() != Some(b"h2") {
                        return Err(format!(
                            "{} did not agree to HTTP/2 (ALPN h2); it must speak HTTP/2",
                            self.host
                        ));
                    }
                    start(stream, id, on_end).await
                }
            }
        };
        let connected = match tokio::time::timeout(timeout, handshake).await {
            Ok(Ok(pair)) => pair,
            Ok(Err(why)) => return Err(why),
            Err(_) => {
                return Err(format!(
                    "no HTTP/2 connection to {}:{} within {timeout:?} (TCP, TLS and the server's SETTINGS)",
                    self.host, self.port
                ));
            }
        };
        tracing::debug!(host = %self.host, port = self.port, connection = id, "HTTP/2 connection up");
        Ok(connected)
    }
}

/// Performs the HTTP/2 handshake on `io` and spawns the task that drives the
/// connection, answers keepalive and calls `on_end` when the connection ends.
async fn start<T>(
    io: T,
    id: u64,
    on_end: impl FnOnce() + Send + 'static,
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
    // `handshake` only wrote our preface. The server's preface is its
    // SETTINGS, sent before anything else: its answer to a PING proves the
    // connection is up.
    let mut ping_pong = connection.ping_pong();
    if let Some(pinger) = ping_pong.as_mut() {
        tokio::select! {
            biased;
            ended = &mut connection => {
                return Err(match ended {
                    Ok(()) => "the server closed the connection during the HTTP/2 handshake".to_string(),
                    Err(e) => format!("HTTP/2 handshake failed: {e}"),
                });
            }
            pong = pinger.ping(h2::Ping::opaque()) => {
                pong.map_err(|e| format!("HTTP/2 handshake failed: {e}"))?;
            }
        }
    }
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
        on_end();
    });
    Ok((send, driver))
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

    #[test]
    fn endpoints_are_checked() {
        for bad in ["not a url", "ftp://host", "/3/device", "https://host/?q=1"] {
            let e = Target::parse(bad, None).expect_err(bad).to_string();
            assert!(e.contains(bad) && e.contains("https://host"), "{e}");
        }
    }

    #[test]
    fn uris_keep_scheme_authority_and_base_path() {
        let t = Target::parse("http://127.0.0.1:9443", None).expect("target");
        assert_eq!(
            t.uri("/3/device/abc").expect("uri").to_string(),
            "http://127.0.0.1:9443/3/device/abc"
        );
        let t = Target::parse("https://gw.example/apns/", None).expect("target");
        assert_eq!(
            t.uri("/3/device/abc").expect("uri").to_string(),
            "https://gw.example/apns/3/device/abc"
        );
        assert!(t.uri("/3/device/a b").is_err());
    }

    #[test]
    fn ca_file_errors_name_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("missing.pem");
        let e = Target::parse("https://h", Some(&missing)).expect_err("missing");
        assert!(e.to_string().contains("missing.pem"), "{e}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no certificate here").expect("write");
        let e = Target::parse("https://h", Some(&empty)).expect_err("empty");
        assert!(e.to_string().contains("holds no PEM certificate"), "{e}");
    }

    #[tokio::test]
    async fn a_refused_dial_fails_and_never_calls_back() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        let t = Target::parse(&format!("http://127.0.0.1:{port}"), None).expect("target");
        let ended = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = ended.clone();
        let e = t
            .connect(
                1,
                move || flag.store(true, std::sync::atomic::Ordering::SeqCst),
                CONNECT_TIMEOUT,
            )
            .await
            .expect_err("nobody listens");
        assert!(e.contains("cannot connect"), "{e}");
        assert!(!ended.load(std::sync::atomic::Ordering::SeqCst));
    }
}
