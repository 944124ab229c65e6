//! A scripted h2c server for the transport's tests: each request is answered,
//! refused, dropped with its connection, or ignored, as the script says.

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
}

/// An h2c server that plays `script` (the last entry repeats) and counts
/// the requests it saw. Returns its `http://` endpoint and the count.
pub(super) async fn server(script: Vec<Play>) -> (String, Arc<AtomicUsize>) {
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
