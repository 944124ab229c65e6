//! The shared state of a sandbox and the routing of one request to the APNs,
//! FCM, OAuth or inspection handler, with the per-request fault hooks
//! (added latency, GOAWAY after N streams).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio_util::either::Either;

use crate::apns::Apns;
use crate::faults::{FaultSwitch, Faults};
use crate::fcm::Fcm;
use crate::http_util::{self, Body};
use crate::inspect::{Recorder, Stats};
use crate::oauth::OAuth;
use crate::server::ConnState;
use crate::{apns, fcm, inspect, oauth};

/// Everything the handlers share.
pub(crate) struct State {
    pub apns: Apns,
    pub fcm: Fcm,
    pub oauth: OAuth,
    pub recorder: Recorder,
    pub faults: FaultSwitch,
}

impl State {
    pub(crate) fn new(apns: Apns, fcm: Fcm, oauth: OAuth) -> Self {
        Self {
            apns,
            fcm,
            oauth,
            recorder: Recorder::new(),
            faults: FaultSwitch::default(),
        }
    }

    /// Stores new flags; fires the one-shot `expire_provider_tokens` trigger.
    pub(crate) fn apply_faults(&self, mut faults: Faults) {
        if faults.expire_provider_tokens {
            let n = self.apns.expire_current_tokens();
            self.recorder
                .provider_tokens_expired
                .fetch_add(n, Ordering::Relaxed);
            faults.expire_provider_tokens = false;
        }
        self.faults.store(faults);
    }

    pub(crate) fn reset(&self) {
        self.recorder.reset();
        self.apns.reset();
    }

    pub(crate) fn stats(&self) -> Stats {
        self.recorder.stats()
    }
}

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
        conn.count_stream(every, state);
    }
    let path = req.uri().path();
    if path.starts_with("/3/") {
        return Either::Left(async move {
            delay(&faults).await;
            apns::handle(state, &conn.apns, &faults, req).await
        });
    }
    Either::Right(if path.starts_with("/v1/") {
        Box::pin(async move {
            delay(&faults).await;
            fcm::handle(state, &faults, req).await
        })
    } else if path == "/token" {
        Box::pin(async move {
            delay(&faults).await;
            oauth::handle(state, req).await
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
