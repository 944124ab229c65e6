//! A scripted h2c server for the transport's tests: each request is answered,
//! refused, dropped with its connection, or ignored, as the script says; and
//! a black hole that accepts TCP connections and never sends a byte.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;

/// What the test server does with the n-th request (0-based).
#[derive(Clone, Copy, Debug)]
pub(super) enum Play {
    /// Answers this status with `retry-after: 7` and the body `{}`.
    Answer(u16),
    /// Resets the stream with `REFUSED_STREAM`.
    Refuse,
    /// Drops the whole connection.
    DropConnection,
    /// Never answers.
    Ignore,
    /// Sends this status and 2 bytes of body, and resets the stream when
    /// the next request arrives (so that what came before was flushed).
    AnswerThenReset(u16),
    /// Sends this status and never the body.
    HeadersOnly(u16),
    /// Answers this status with a body of this many bytes.
    Big(u16, usize),
}

/// An h2c server that plays `script` (the last entry repeats) and counts
/// the requests it saw. Returns its `http://` endpoint and the count.
pub(super) async fn server(script: Vec<Play>) -> (String, Arc<AtomicUsize>) {
    server_with(script, None).await
}

/// [`server`], advertising `max_streams` concurrent streams when given.
pub(super) async fn server_with(
    script: Vec<Play>,
    max_streams: Option<u32>,
) -> (String, Arc<AtomicUsize>) {
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
                let mut builder = h2::server::Builder::new();
                if let Some(max) = max_streams {
                    builder.max_concurrent_streams(max);
                }
                let Ok(mut conn) = builder.handshake::<_, Bytes>(socket).await else {
                    return;
                };
                let mut parked = Vec::new();
                let mut to_reset: Vec<h2::SendStream<Bytes>> = Vec::new();
                while let Some(Ok((request, mut respond))) = conn.accept().await {
                    for mut out in to_reset.drain(..) {
                        out.send_reset(h2::Reason::INTERNAL_ERROR);
                    }
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
                        Play::Ignore => parked.push((respond, None)),
                        Play::AnswerThenReset(status) => {
                            let response = http::Response::builder()
                                .status(status)
                                .body(())
                                .expect("response");
                            let mut out = respond.send_response(response, false).expect("send");
                            out.send_data(Bytes::from_static(b"{\""), false)
                                .expect("data");
                            to_reset.push(out);
                        }
                        Play::HeadersOnly(status) => {
                            let response = http::Response::builder()
                                .status(status)
                                .body(())
                                .expect("response");
                            let out = respond.send_response(response, false).expect("send");
                            parked.push((respond, Some(out)));
                        }
                        Play::Big(status, size) => {
                            let response = http::Response::builder()
                                .status(status)
                                .body(())
                                .expect("response");
                            let mut out = respond.send_response(response, false).expect("send");
                            out.send_data(Bytes::from(vec![b'x'; size]), true)
                                .expect("data");
                        }
                    }
                }
            });
        }
    });
    (endpoint, seen)
}

/// A listener that accepts TCP connections and holds them without ever
/// sending a byte (a firewall, an exhausted NAT). Returns its `http://`
/// endpoint and the number of connections it accepted.
pub(super) async fn black_hole() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            held.push(socket);
        }
    });
    (endpoint, accepted)
}
