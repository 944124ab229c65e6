//! The HTTP server for probes and metrics: `/healthz` (the process is alive),
//! `/readyz` (the streams are up and we are not draining), `/metrics`
//! (Prometheus text) and `/statusz` (JSON for the on-call engineer: each
//! app and platform with its circuit, guard, rate limit, credential
//! refreshes and last error). `/readyz` stays about Pub/Sub: a provider in
//! trouble degrades its own targets, not the pod.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

/// What `/statusz` lists, provided by the running worker.
pub type StatusSource = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

/// Readiness and status, shared by the worker and the server.
#[derive(Default)]
pub struct Readiness {
    streams_up: AtomicBool,
    draining: AtomicBool,
    status: std::sync::RwLock<Option<StatusSource>>,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readiness")
            .field("streams_up", &self.streams_up)
            .field("draining", &self.draining)
            .finish_non_exhaustive()
    }
}

impl Readiness {
    /// Marks the streams as running (or not).
    pub fn set_streams_up(&self, up: bool) {
        self.streams_up.store(up, Ordering::SeqCst);
    }

    /// Marks the process as draining: readiness goes false for good.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Ready when the streams are up and we are not draining.
    pub fn is_ready(&self) -> bool {
        self.streams_up.load(Ordering::SeqCst) && !self.draining.load(Ordering::SeqCst)
    }

    /// Where `/statusz` reads the providers from, once the worker runs.
    pub fn set_status(&self, source: StatusSource) {
        *self
            .status
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(source);
    }

    /// The `/statusz` document.
    pub fn status(&self) -> serde_json::Value {
        let source = self
            .status
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        serde_json::json!({
            "ready": self.is_ready(),
            "draining": self.draining.load(Ordering::SeqCst),
            "providers": source.map_or(serde_json::Value::Array(Vec::new()), |s| s()),
        })
    }
}

#[derive(Clone)]
struct ServerState {
    readiness: Arc<Readiness>,
    registry: Arc<Registry>,
}

/// The router, for tests and for [`serve`].
pub fn router(readiness: Arc<Readiness>, registry: Arc<Registry>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/statusz", get(statusz))
        .with_state(ServerState {
            readiness,
            registry,
        })
}

async fn readyz(State(state): State<ServerState>) -> impl IntoResponse {
    if state.readiness.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

async fn statusz(State(state): State<ServerState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        format!("{:#}\n", state.readiness.status()),
    )
}

async fn metrics(State(state): State<ServerState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        crate::metrics::render(&state.registry),
    )
}

/// The server could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} (config key `server.listen`): {source}; pick a free address")]
pub struct ServeError {
    /// The address.
    pub addr: SocketAddr,
    /// The OS error.
    #[source]
    pub source: std::io::Error,
}

/// Binds `addr` now (so that errors surface at startup) and returns the
/// server future, which runs until `cancel` fires.
pub async fn serve(
    addr: SocketAddr,
    router: Router,
    cancel: CancellationToken,
) -> Result<(SocketAddr, impl Future<Output = std::io::Result<()>>), ServeError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| ServeError { addr, source })?;
    let fut = async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move { cancel.cancelled().await })
            .await
    };
    Ok((local, fut))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        out
    }

    #[tokio::test]
    async fn readiness_follows_the_streams_and_goes_false_when_draining() {
        let readiness = Arc::new(Readiness::default());
        let cancel = CancellationToken::new();
        let (addr, server) = serve(
            "127.0.0.1:0".parse().expect("addr"),
            router(readiness.clone(), Arc::new(Registry::default())),
            cancel.clone(),
        )
        .await
        .expect("bind");
        let server = tokio::spawn(server);

        assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
        assert!(
            get(addr, "/readyz").await.starts_with("HTTP/1.1 503"),
            "not ready before the streams"
        );
        readiness.set_streams_up(true);
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 200"));
        readiness.set_draining();
        assert!(
            get(addr, "/readyz").await.starts_with("HTTP/1.1 503"),
            "draining is not ready"
        );
        assert!(
            get(addr, "/healthz").await.starts_with("HTTP/1.1 200"),
            "still alive while draining"
        );
        assert!(get(addr, "/metrics").await.contains("# EOF"));

        cancel.cancel();
        server.await.expect("join").expect("server");
    }

    #[tokio::test]
    async fn a_busy_address_names_the_config_key() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = taken.local_addr().expect("addr");
        let Err(err) = serve(
            addr,
            router(
                Arc::new(Readiness::default()),
                Arc::new(Registry::default()),
            ),
            CancellationToken::new(),
        )
        .await
        else {
            panic!("bound a busy address");
        };
        assert!(err.to_string().contains("server.listen"));
    }
}
