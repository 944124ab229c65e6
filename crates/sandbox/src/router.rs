//! The routing of one request to the APNs, FCM, OAuth or control handler,
//! with the per-request fault hooks (added latency, GOAWAY after N streams,
//! and `blackhole_streams`: APNs and FCM streams left unanswered).
//! Each service handler is given the parts of the [`State`] it uses.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio_util::either::Either;

use crate::faults::Faults;
use crate::http_util::{self, Body};
use crate::state::{ConnState, State};
use crate::{apns, fcm, inspect, oauth};

/// The future answering one request: the APNs handler inline (the hot path),
/// everything else boxed, so that the future every stream carries stays small.
pub(crate) type Routed<'a, A> =
    Either<A, Pin<Box<dyn Future<Output = Response<Body>> + Send + 'a>>>;

/// Answers one request.
pub(crate) fn route<'a>(
    state: &'a State,
    conn: &'a ConnState,
    req: Request<Incoming>,
) -> Routed<'a, impl Future<Output = Response<Body>> + Send + 'a> {
    let faults = state.faults.current();
    if let Some(every) = faults.goaway_every {
        conn.count_stream(every, &state.recorder);
    }
    let path = req.uri().path();
    if (state.blackhole_streams || faults.blackhole_streams)
        && (path.starts_with("/3/") || path.starts_with("/v1/"))
    {
        // Never answered; the stream ends with its connection.
        state.recorder.blackholed.fetch_add(1, Ordering::Relaxed);
        return Either::Right(Box::pin(std::future::pending()));
    }
    if path.starts_with("/3/") {
        return Either::Left(async move {
            delay(&faults).await;
            apns::handle(&state.apns, &state.recorder, &conn.apns, &faults, req).await
        });
    }
    Either::Right(if path.starts_with("/v1/") {
        Box::pin(async move {
            delay(&faults).await;
            fcm::handle(&state.fcm, &state.oauth, &state.recorder, &faults, req).await
        })
    } else if path == "/token" {
        Box::pin(async move {
            if faults.oauth_hang {
                // A hung identity provider: the request is read and never
                // answered, until the sandbox stops.
                state.stopping.cancelled().await;
                return http_util::json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    Bytes::from_static(br#"{"error":"shutting down"}"#),
                );
            }
            delay(&faults).await;
            oauth::handle(&state.oauth, &state.recorder, req).await
        })
    } else if path.starts_with("/sandbox/") {
        Box::pin(inspect::handle(state, req))
    } else {
        Box::pin(std::future::ready(http_util::json(
            StatusCode::NOT_FOUND,
            Bytes::from_static(br#"{"error":"not found"}"#),
        )))
    })
}

async fn delay(faults: &Faults) {
    if !faults.latency.is_zero() {
        Box::pin(tokio::time::sleep(faults.latency)).await;
    }
}
