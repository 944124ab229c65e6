//! Local, strict stand-ins for Apple APNs, Firebase Cloud Messaging HTTP v1 and
//! Google's OAuth 2.0 token endpoint (SPEC §7), for tests, benchmarks and
//! `make run`.
//!
//! What it is: one HTTP server (h2c with HTTP/1.1 fallback, and optionally TLS
//! with ALPN `h2`/`http/1.1`) that answers
//! - `POST /3/device/{token}` like APNs: the ES256 provider token is verified
//!   against the configured `.p8`, then the headers, the topic, the payload,
//!   and outcomes are scripted by token prefix;
//! - `POST /v1/projects/{project}/messages:send` like FCM HTTP v1: bearer tokens
//!   must come from this sandbox's `/token`, the message shape is checked;
//! - `POST /token` like `oauth2.googleapis.com/token`: RS256 JWT-bearer
//!   assertions verified against the configured service account (the fault
//!   `oauth_hang` — `--oauth-hang` of `push-dispatch sandbox`, or
//!   `faults.oauth_hang` of [`SandboxConfig`] in process — makes it accept
//!   each request and never answer, until shutdown; `revoke_oauth_tokens`
//!   forgets the tokens issued so far, so FCM answers them 401);
//! - `/sandbox/*` for inspection: `GET deliveries`, `GET stats`, `POST reset`,
//!   `GET|POST faults` (a POST merges the given flags into the current ones),
//!   `GET healthz`.
//!
//! Each handler module documents its checks in order; the scripted token
//! prefixes are those of SPEC §7.
//!
//! Black holes, for the whole instance (start a separate sandbox for a
//! black-holed app), set in [`SandboxConfig`] (`push-dispatch sandbox
//! --blackhole` / `--blackhole-streams`):
//! - `blackhole`: every listener accepts TCP connections and holds them
//!   open without ever sending a byte (no TLS handshake, no HTTP/2
//!   preface), like a firewall that drops packets or an exhausted Cloud
//!   NAT; the `/sandbox/*` endpoints are unreachable too (use
//!   [`Sandbox::stats`] in process, which counts the connections);
//! - `blackhole_streams`: TLS and HTTP/2 complete normally (SETTINGS,
//!   PINGs answered), but no APNs or FCM request stream is ever answered
//!   (counted in [`Stats::blackholed`]); `/token` and `/sandbox/*` still
//!   answer.
//!
//! ```no_run
//! # async fn demo(config: push_dispatch_sandbox::SandboxConfig) -> Result<(), Box<dyn std::error::Error>> {
//! use push_dispatch_sandbox::{Sandbox, SandboxConfig};
//! let silent = Sandbox::start(SandboxConfig { blackhole: true, ..config }).await?;
//! // point a client's endpoint at silent.base_url(): its dials time out.
//! # silent.shutdown().await; Ok(()) }
//! ```
//!
//! What it is not: a model of delivery to devices, of APNs certificates, of FCM
//! topics fan-out or of any rate limit beyond what SPEC §7 scripts. It is strict
//! where a lenient fake would hide a client bug, and cheap on the accepted path
//! so that it can be benchmarked against (≥ 100k APNs pushes/s on one core).
//!
//! Module map, each module using only modules listed after it (no import
//! circles): `server` (listeners, connections, GOAWAY, one task per
//! connection), `router` (paths to handlers, latency; each handler is given
//! only the parts it uses), `inspect` (the `/sandbox/*` control plane),
//! `state` (the sandbox's shared state and each connection's), `apns`, `fcm`,
//! `oauth` (the three services), `recorder` (deliveries ring, counters per
//! outcome label, flaky counters), `jws` (compact JWS parsing shared by APNs
//! and OAuth), `http_util` (bodies, JSON answers, the clock), [`devkeys`]
//! (development credentials without openssl), `tls` (self-signed leaf
//! certificate), `config` (what [`Sandbox::start`] takes), `faults` (chaos
//! flags), `error` (why it fails).
//!
//! Throughput: the server runs on the caller's tokio runtime, one task per
//! connection that also polls the connection's streams (see `server`), so a
//! batch of pushes read together is answered with one write. Measured with
//! h2load on this project's 2-core machines (server on one tokio worker pinned
//! to one core, h2load on the other, 4 connections × 100 streams, 60-byte
//! payload): 128,000–146,000 accepted APNs pushes/s over h2c.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use push_dispatch_sandbox::{devkeys, Sandbox, SandboxConfig};
//! let dir = std::path::Path::new("target/sandbox-creds");
//! let creds = devkeys::ensure(dir, "http://127.0.0.1:0/token", "local-firebase")?;
//! let config = SandboxConfig::local(creds.apns_config("com.example.app"), creds.fcm_config("local-firebase"));
//! let sandbox = Sandbox::start(config).await?;
//! println!("APNs/FCM/OAuth at {}", sandbox.base_url());
//! sandbox.shutdown().await;
//! # Ok(()) }
//! ```

mod apns;
mod config;
pub mod devkeys;
mod error;
mod faults;
mod fcm;
mod http_util;
mod inspect;
mod jws;
mod oauth;
mod recorder;
mod router;
mod server;
mod state;
mod tls;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;

pub use config::{ApnsSandboxConfig, FcmSandboxConfig, SandboxConfig};
pub use error::SandboxError;
pub use faults::{Faults, FaultsError};
pub use recorder::{Delivery, Platform, Stats};

/// A running sandbox: its listeners and every task it spawned.
///
/// Dropping it cancels the tasks without waiting; [`Sandbox::shutdown`] waits
/// for them (connections get a GOAWAY and a bounded drain).
pub struct Sandbox {
    addr: SocketAddr,
    tls_addr: Option<SocketAddr>,
    cert_pem: Option<String>,
    state: Arc<state::State>,
    cancel: CancellationToken,
    tasks: TaskTracker,
    _cancel_on_drop: DropGuard,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("addr", &self.addr)
            .field("tls_addr", &self.tls_addr)
            .finish_non_exhaustive()
    }
}

impl Sandbox {
    /// Reads the credentials, binds the listeners and spawns the accept loops
    /// on the current tokio runtime.
    pub async fn start(config: SandboxConfig) -> Result<Sandbox, SandboxError> {
        config.faults.validate().map_err(|e| SandboxError::Config {
            key: "faults",
            reason: e.to_string(),
        })?;
        let apns = apns::Apns::from_config(&config.apns)?;
        let sa = oauth::ServiceAccount::load(&config.fcm.service_account_file)?;
        if config.fcm.project_id.trim().is_empty() {
            return Err(SandboxError::Config {
                key: "fcm.project_id",
                reason: "must not be empty".into(),
            });
        }

        let listener = bind(config.listen).await?;
        let addr = local_addr(&listener, config.listen)?;
        let (tls_listener, tls_material) = match config.tls_listen {
            Some(tls_addr) => {
                let material = tls::self_signed()?;
                if let Some(path) = &config.cert_file {
                    write_cert(path, &material.cert_pem)?;
                }
                (Some(bind(tls_addr).await?), Some(material))
            }
            None => (None, None),
        };
        let tls_addr = match (&tls_listener, config.tls_listen) {
            (Some(l), Some(asked)) => Some(local_addr(l, asked)?),
            _ => None,
        };

        let mut own_token_uris = vec![format!("http://{addr}/token")];
        own_token_uris.push(format!("http://localhost:{}/token", addr.port()));
        if let Some(t) = tls_addr {
            own_token_uris.push(format!("https://{t}/token"));
            own_token_uris.push(format!("https://localhost:{}/token", t.port()));
        }
        let cancel = CancellationToken::new();
        let state = Arc::new(state::State::new(
            apns,
            fcm::Fcm::new(config.fcm.project_id.clone()),
            oauth::OAuth::new(sa, own_token_uris),
            config.blackhole_streams,
            cancel.clone(),
        ));
        state.apply_faults(config.faults);

        let tasks = TaskTracker::new();
        let serve = |tls| {
            if config.blackhole {
                server::Serve::BlackHole
            } else {
                server::Serve::Http(tls)
            }
        };
        server::spawn_listener(
            listener,
            serve(None),
            state.clone(),
            cancel.clone(),
            tasks.clone(),
        );
        let cert_pem = match (tls_listener, tls_material) {
            (Some(listener), Some(material)) => {
                server::spawn_listener(
                    listener,
                    serve(Some(material.acceptor)),
                    state.clone(),
                    cancel.clone(),
                    tasks.clone(),
                );
                Some(material.cert_pem)
            }
            _ => None,
        };
        tasks.close();
        tracing::info!(
            %addr,
            ?tls_addr,
            blackhole = config.blackhole,
            blackhole_streams = config.blackhole_streams,
            "sandbox listening"
        );
        Ok(Sandbox {
            addr,
            tls_addr,
            cert_pem,
            state,
            _cancel_on_drop: cancel.clone().drop_guard(),
            cancel,
            tasks,
        })
    }

    /// The h2c / HTTP/1.1 address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The TLS address, when `tls_listen` was set.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    /// `http://IP:PORT` of the h2c listener (use as APNs/FCM endpoint; `/token` is the OAuth endpoint).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `https://IP:PORT` of the TLS listener, when there is one.
    pub fn tls_base_url(&self) -> Option<String> {
        self.tls_addr.map(|a| format!("https://{a}"))
    }

    /// The self-signed certificate (PEM) the TLS listener presents, when there is one.
    pub fn tls_cert_pem(&self) -> Option<&str> {
        self.cert_pem.as_deref()
    }

    /// Counts per outcome since start or the last reset.
    pub fn stats(&self) -> Stats {
        self.state.stats()
    }

    /// Accepted pushes, oldest first (a bounded ring of the most recent ones).
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.state.recorder.deliveries()
    }

    /// Clears deliveries, counters and the per-token flaky counters.
    pub fn reset(&self) {
        self.state.reset();
    }

    /// Replaces the fault flags. Out-of-range values are clamped (rates to 0..=1,
    /// latency to 30 s, `goaway_every: Some(0)` to none); `expire_provider_tokens`
    /// is a one-shot trigger (see [`Faults`]).
    pub fn set_faults(&self, faults: Faults) {
        self.state.apply_faults(faults.clamped());
    }

    /// The fault flags in force.
    pub fn faults(&self) -> Faults {
        self.state.faults.current()
    }

    /// Stops accepting, sends GOAWAY on every connection, lets in-flight requests
    /// finish (bounded) and joins every task.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        self.tasks.wait().await;
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, SandboxError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| SandboxError::Bind { addr, source })
}

fn local_addr(listener: &TcpListener, asked: SocketAddr) -> Result<SocketAddr, SandboxError> {
    listener.local_addr().map_err(|source| SandboxError::Bind {
        addr: asked,
        source,
    })
}

fn write_cert(path: &std::path::Path, pem: &str) -> Result<(), SandboxError> {
    let err = |source| SandboxError::WriteCert {
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(err)?;
    }
    std::fs::write(path, pem).map_err(err)
}
