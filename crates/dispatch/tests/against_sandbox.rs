//! The real APNs and FCM clients against the strict sandbox (HTTP/2, ES256
//! provider tokens, OAuth bearer tokens issued after an RS256 assertion),
//! and against black-holed sandboxes (`blackhole`: TCP accepted, never a
//! byte; `blackhole_streams`: HTTP/2 up, never an answer).

use std::sync::Arc;
use std::time::Duration;

use push_dispatch_dispatch::apns::credentials::ProviderToken;
use push_dispatch_dispatch::apns::{ApnsClient, ApnsSettings};
use push_dispatch_dispatch::fcm::credentials::{
    BearerCache, CredentialsError, FCM_SCOPE, FetchError, TokenSettings,
};
use push_dispatch_dispatch::fcm::{FcmClient, FcmSettings};
use push_dispatch_dispatch::{Dispatcher, Outcome, Push, RejectReason, RetryCause};
use push_dispatch_proto::v1::{Notification, PushRequest, Reason};
use push_dispatch_sandbox::{Faults, Sandbox, SandboxConfig, devkeys};

const TOPIC: &str = "com.example.app";
const PROJECT: &str = "sandbox-project";

struct World {
    sandbox: Sandbox,
    creds: devkeys::DevCredentials,
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port")
}

async fn world(tls: bool, faults: Faults) -> World {
    world_with(tls, |c| c.faults = faults).await
}

async fn world_with(tls: bool, adjust: impl FnOnce(&mut SandboxConfig)) -> World {
    let dir = tempfile::tempdir().expect("dir");
    let port = free_port();
    let creds = devkeys::ensure(
        dir.path(),
        &format!("http://127.0.0.1:{port}/token"),
        PROJECT,
    )
    .expect("dev credentials");
    let mut config = SandboxConfig::local(creds.apns_config(TOPIC), creds.fcm_config(PROJECT));
    config.listen = format!("127.0.0.1:{port}").parse().expect("addr");
    if tls {
        config.tls_listen = Some("127.0.0.1:0".parse().expect("addr"));
        config.cert_file = Some(dir.path().join("sandbox-cert.pem"));
    }
    adjust(&mut config);
    let sandbox = Sandbox::start(config).await.expect("sandbox");
    World {
        sandbox,
        creds,
        _dir: dir,
    }
}

impl World {
    fn apns(&self, tls: bool) -> ApnsClient {
        self.apns_timing_out(tls, Duration::from_secs(10))
    }

    fn apns_timing_out(&self, tls: bool, request_timeout: Duration) -> ApnsClient {
        let (endpoint, ca_file) = if tls {
            (
                self.sandbox.tls_base_url().expect("tls url"),
                Some(self._dir.path().join("sandbox-cert.pem")),
            )
        } else {
            (self.sandbox.base_url(), None)
        };
        apns_client(ApnsSettings {
            endpoint,
            key_file: self.creds.apns_key_file.clone(),
            key_id: self.creds.key_id.clone(),
            team_id: self.creds.team_id.clone(),
            topic: TOPIC.into(),
            connections: 2,
            ca_file,
            request_timeout,
        })
    }

    async fn fcm(&self, tls: bool) -> FcmClient {
        self.fcm_timing_out(tls, Duration::from_secs(10)).await
    }

    async fn fcm_timing_out(&self, tls: bool, request_timeout: Duration) -> FcmClient {
        let (endpoint, ca_file) = if tls {
            (
                self.sandbox.tls_base_url().expect("tls url"),
                Some(self._dir.path().join("sandbox-cert.pem")),
            )
        } else {
            (self.sandbox.base_url(), None)
        };
        fcm_client(FcmSettings {
            endpoint,
            project_id: PROJECT.into(),
            credentials_file: Some(self.creds.service_account_file.clone()),
            ca_file,
            connections: 2,
            request_timeout,
            quota_wait: push_dispatch_dispatch::fcm::DEFAULT_QUOTA_WAIT,
        })
        .await
    }
}

/// An APNs client with the key its settings name, as the worker builds one.
fn apns_client(settings: ApnsSettings) -> ApnsClient {
    let credentials =
        ProviderToken::from_file(&settings.key_file, &settings.key_id, &settings.team_id)
            .expect("apns key");
    ApnsClient::new(settings, Arc::new(credentials)).expect("apns client")
}

/// An FCM client with the credentials its settings name, as the worker builds one.
async fn fcm_client(settings: FcmSettings) -> FcmClient {
    let credentials = BearerCache::new(
        settings.credentials_file.as_deref(),
        &settings.token_settings(),
    )
    .await
    .expect("fcm credentials");
    FcmClient::new(settings, Arc::new(credentials)).expect("fcm client")
}

/// A deadline for one token wait in these tests.
fn soon() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(2)
}

/// Token settings with test-sized timeouts and backoff.
fn short_timeouts(ca_file: Option<std::path::PathBuf>) -> TokenSettings {
    TokenSettings {
        connect_timeout: Duration::from_millis(500),
        fetch_timeout: Duration::from_millis(800),
        discovery_timeout: Duration::from_millis(500),
        min_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(200),
        ..TokenSettings::new(ca_file)
    }
}

fn apns_token(prefix: &str) -> String {
    format!("{prefix}{}", &"0123456789abcdef".repeat(4)[prefix.len()..])
}

fn alert() -> PushRequest {
    PushRequest {
        request_id: "r".into(),
        notification: Some(Notification {
            title: "Hello".into(),
            body: "World".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn send(d: &dyn Dispatcher, request: &PushRequest, token: &str) -> Outcome {
    d.send(Push {
        request,
        token,
        expires_at: None,
        give_up: None,
    })
    .await
}

fn dead(o: &Outcome) -> Option<Reason> {
    match o {
        Outcome::TokenInvalid { reason, .. } => Some(*reason),
        _ => None,
    }
}

fn retry_status(o: &Outcome) -> Option<u16> {
    match o {
        Outcome::Retryable {
            cause: RetryCause::Status { status, .. },
            ..
        } => Some(*status),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn apns_delivers_and_classifies_every_scripted_answer() {
    let w = world(false, Faults::default()).await;
    let apns = w.apns(false);
    let req = alert();
    assert_eq!(
        send(&apns, &req, &apns_token("a1b2")).await,
        Outcome::Delivered
    );
    let unregistered = send(&apns, &req, &apns_token("dead")).await;
    assert_eq!(dead(&unregistered), Some(Reason::Unregistered));
    assert!(
        matches!(&unregistered, Outcome::TokenInvalid { invalidated_at: Some(_), provider_reason, .. } if provider_reason == "Unregistered"),
        "{unregistered:?}"
    );
    assert_eq!(
        dead(&send(&apns, &req, &apns_token("bad0")).await),
        Some(Reason::BadDeviceToken)
    );
    assert_eq!(
        retry_status(&send(&apns, &req, &apns_token("0429")).await),
        Some(429)
    );
    assert_eq!(
        retry_status(&send(&apns, &req, &apns_token("0500")).await),
        Some(500)
    );
    assert_eq!(
        retry_status(&send(&apns, &req, &apns_token("0503")).await),
        Some(503)
    );
    let flaky = apns_token("f1a0");
    assert_eq!(retry_status(&send(&apns, &req, &flaky).await), Some(503));
    assert_eq!(retry_status(&send(&apns, &req, &flaky).await), Some(503));
    assert_eq!(send(&apns, &req, &flaky).await, Outcome::Delivered);

    let deliveries = w.sandbox.deliveries();
    let first = deliveries
        .iter()
        .find(|d| d.token == apns_token("a1b2"))
        .expect("delivery recorded");
    assert_eq!(
        first.headers.get("apns-topic").map(String::as_str),
        Some(TOPIC)
    );
    assert_eq!(
        first.headers.get("apns-push-type").map(String::as_str),
        Some("alert")
    );
    // Priority 10 is APNs' default: the header is left out.
    assert_eq!(first.headers.get("apns-priority"), None);
    assert_eq!(first.payload["aps"]["alert"]["title"], "Hello");

    let mut normal = req.clone();
    normal.priority = push_dispatch_proto::v1::Priority::Normal as i32;
    assert_eq!(
        send(&apns, &normal, &apns_token("a1b3")).await,
        Outcome::Delivered
    );
    let deliveries = w.sandbox.deliveries();
    let sent = deliveries
        .iter()
        .find(|d| d.token == apns_token("a1b3"))
        .expect("delivery recorded");
    assert_eq!(
        sent.headers.get("apns-priority").map(String::as_str),
        Some("5")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_topic_makes_tokens_look_dead() {
    let w = world(false, Faults::default()).await;
    // Same key, another bundle id: what a misconfigured deployment does.
    let misconfigured = apns_client(ApnsSettings {
        endpoint: w.sandbox.base_url(),
        key_file: w.creds.apns_key_file.clone(),
        key_id: w.creds.key_id.clone(),
        team_id: w.creds.team_id.clone(),
        topic: "com.example.other".into(),
        connections: 1,
        ca_file: None,
        request_timeout: Duration::from_secs(10),
    });
    assert_eq!(
        dead(&send(&misconfigured, &alert(), &apns_token("a1b2")).await),
        Some(Reason::DeviceTokenNotForTopic)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn fcm_delivers_and_classifies_every_scripted_answer_with_one_oauth_token() {
    let w = world(false, Faults::default()).await;
    let fcm = w.fcm(false).await;
    let req = alert();
    for i in 0..20 {
        assert_eq!(
            send(&fcm, &req, &format!("ok-{i}")).await,
            Outcome::Delivered
        );
    }
    assert_eq!(
        dead(&send(&fcm, &req, "unregistered-1").await),
        Some(Reason::Unregistered)
    );
    assert_eq!(
        dead(&send(&fcm, &req, "invalid-1").await),
        Some(Reason::InvalidRegistration)
    );
    assert_eq!(
        dead(&send(&fcm, &req, "mismatch-1").await),
        Some(Reason::SenderIdMismatch)
    );
    let quota = send(&fcm, &req, "quota-1").await;
    assert!(
        matches!(quota, Outcome::Retryable { after: Some(d), .. } if d == Duration::from_secs(30)),
        "Retry-After is read: {quota:?}"
    );
    assert_eq!(
        retry_status(&send(&fcm, &req, "unavailable-1").await),
        Some(503)
    );
    assert_eq!(retry_status(&send(&fcm, &req, "flaky-1").await), Some(503));
    assert_eq!(retry_status(&send(&fcm, &req, "flaky-1").await), Some(503));
    assert_eq!(send(&fcm, &req, "flaky-1").await, Outcome::Delivered);
    assert_eq!(
        w.sandbox.stats().oauth_tokens_issued,
        1,
        "the bearer token is cached"
    );
    assert_eq!(fcm.token_refreshes().ok, 1);
    let fetched = fcm
        .token_refreshes()
        .last
        .expect("when the token in use was fetched");
    assert!(
        fetched
            .elapsed()
            .is_ok_and(|age| age < std::time::Duration::from_secs(60))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_service_account_key_is_used_without_a_restart() {
    let w = world(false, Faults::default()).await;
    // A service account of the same shape whose key the OAuth endpoint does
    // not know: what a pod holds after the key was rotated and the old one
    // deleted, until the new file arrives.
    let other = tempfile::tempdir().expect("dir");
    let token_uri = format!("{}/token", w.sandbox.base_url());
    let stale = devkeys::ensure(other.path(), &token_uri, PROJECT).expect("other key");
    let mounted = w._dir.path().join("mounted-sa.json");
    std::fs::copy(&stale.service_account_file, &mounted).expect("copy stale key");
    let cache = BearerCache::new(Some(&mounted), &short_timeouts(None))
        .await
        .expect("loads");
    assert!(
        cache.token(soon(), None).await.is_err(),
        "the endpoint refuses the stale key"
    );
    assert_eq!(w.sandbox.stats().oauth_tokens_issued, 0);
    // A failed fetch puts the credential in a backoff: wait it out.
    while let Some(left) = cache.backoff() {
        tokio::time::sleep(left).await;
    }

    // The rotated key lands in the same file (Secret Manager CSI, a Secret update).
    std::fs::copy(&w.creds.service_account_file, &mounted).expect("rotate");
    let bearer = cache
        .token(soon(), None)
        .await
        .expect("the new key is used");
    assert!(
        bearer
            .authorization()
            .to_str()
            .is_ok_and(|v| v.starts_with("Bearer "))
    );
    assert_eq!(w.sandbox.stats().oauth_tokens_issued, 1);

    // A file that no longer loads keeps the key that works.
    std::fs::write(&mounted, "{ not json").expect("break the file");
    cache.invalidate(&bearer);
    cache
        .token(soon(), None)
        .await
        .expect("still the loaded key");
}

#[tokio::test(flavor = "multi_thread")]
async fn apns_replaces_an_expired_provider_token_once_and_loses_no_send() {
    let w = world(false, Faults::default()).await;
    let apns = Arc::new(w.apns(false));
    let req = alert();
    assert_eq!(
        send(apns.as_ref(), &req, &apns_token("a1b2")).await,
        Outcome::Delivered
    );
    assert_eq!(apns.token_refreshes().ok, 1);
    assert!(
        apns.token_refreshes().last.is_some(),
        "when the token in use was signed"
    );

    w.sandbox.set_faults(Faults {
        expire_provider_tokens: true,
        ..Faults::default()
    });
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..100 {
        let apns = apns.clone();
        let req = req.clone();
        tasks.spawn(async move {
            let token = format!("{:064x}", 0xabc0_0000_u64 + i);
            send(apns.as_ref(), &req, &token).await
        });
    }
    while let Some(outcome) = tasks.join_next().await {
        assert_eq!(outcome.expect("task"), Outcome::Delivered);
    }
    assert_eq!(
        apns.token_refreshes().ok,
        2,
        "one new generation for all 100 sends"
    );
    let stats = w.sandbox.stats();
    assert_eq!(
        stats.apns_count("429 TooManyProviderTokenUpdates"),
        0,
        "{stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_payload_over_4kib_is_rejected_without_a_request() {
    let w = world(false, Faults::default()).await;
    let apns = w.apns(false);
    let mut req = alert();
    req.data.insert("blob".into(), "x".repeat(5000));
    let outcome = send(&apns, &req, &apns_token("a1b2")).await;
    assert!(
        matches!(
            outcome,
            Outcome::Rejected {
                reason: RejectReason::PayloadTooLarge { max: 4096, .. }
            }
        ),
        "{outcome:?}"
    );
    let stats = w.sandbox.stats();
    assert_eq!(
        stats.apns.values().sum::<u64>(),
        0,
        "no request was made: {stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_with_the_sandbox_certificate_as_ca_file() {
    let w = world(true, Faults::default()).await;
    let apns = w.apns(true);
    let fcm = w.fcm(true).await;
    assert_eq!(
        send(&apns, &alert(), &apns_token("a1b2")).await,
        Outcome::Delivered
    );
    assert_eq!(send(&fcm, &alert(), "ok-tls").await, Outcome::Delivered);
}

#[tokio::test(flavor = "multi_thread")]
async fn goaway_mid_burst_is_a_retryable_connection_answer_never_a_lost_send() {
    let w = world(
        false,
        Faults {
            goaway_every: Some(7),
            ..Faults::default()
        },
    )
    .await;
    let fcm = Arc::new(w.fcm(false).await);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..300 {
        let fcm = fcm.clone();
        tasks.spawn(async move {
            let token = format!("burst-{i}");
            // What the worker does: retry what is retryable.
            for _ in 0..20 {
                match send(fcm.as_ref(), &alert(), &token).await {
                    Outcome::Delivered => return true,
                    Outcome::Retryable { .. } => {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    other => panic!("{token}: {other:?}"),
                }
            }
            false
        });
    }
    let mut delivered = 0;
    while let Some(ok) = tasks.join_next().await {
        if ok.expect("task") {
            delivered += 1;
        }
    }
    assert_eq!(delivered, 300);
    let stats = w.sandbox.stats();
    assert!(stats.goaways > 0, "the fault fired: {stats:?}");
    let unique: std::collections::HashSet<String> = w
        .sandbox
        .deliveries()
        .into_iter()
        .map(|d| d.token)
        .collect();
    assert_eq!(unique.len(), 300);
}

/// Slack on top of the time bounds below, for CI noise.
const SLACK: Duration = Duration::from_millis(500);

fn cause(o: &Outcome) -> &RetryCause {
    match o {
        Outcome::Retryable { cause, .. } => cause,
        other => panic!("not retryable: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_endpoint_fails_every_send_fast_and_then_at_once() {
    let w = world_with(false, |c| c.blackhole = true).await;
    let timeout = Duration::from_secs(1);
    let apns = Arc::new(w.apns_timing_out(false, timeout));
    let started = tokio::time::Instant::now();
    let mut sends = tokio::task::JoinSet::new();
    for i in 0..50 {
        let apns = apns.clone();
        sends.spawn(async move {
            let sent = tokio::time::Instant::now();
            let o = send(apns.as_ref(), &alert(), &apns_token(&format!("{i:04}"))).await;
            (o, sent.elapsed())
        });
    }
    while let Some(done) = sends.join_next().await {
        let (o, took) = done.expect("task");
        assert!(matches!(cause(&o), RetryCause::Connect { .. }), "{o:?}");
        assert!(
            took < timeout.mul_f64(1.5) + SLACK,
            "one send took {took:?}"
        );
    }
    assert!(started.elapsed() < timeout.mul_f64(1.5) + SLACK);
    // Every slot is backing off (poll: the last dial may end a moment later).
    let end = tokio::time::Instant::now() + timeout + SLACK;
    while apns.backoff().is_none() {
        assert!(
            tokio::time::Instant::now() < end,
            "the client never backed off"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let again = tokio::time::Instant::now();
    let o = send(apns.as_ref(), &alert(), &apns_token("a1b2")).await;
    assert!(
        again.elapsed() < Duration::from_millis(100),
        "{:?}",
        again.elapsed()
    );
    match cause(&o) {
        RetryCause::Connect { problem } => assert!(problem.contains("next dial in"), "{problem}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        w.sandbox.stats().connections,
        2,
        "one dial per connection slot"
    );
    apns.close().await;
}

#[tokio::test]
async fn a_send_given_up_while_waiting_for_a_connection_ends_at_once() {
    let w = world_with(false, |c| c.blackhole = true).await;
    let apns = Arc::new(w.apns_timing_out(false, Duration::from_secs(2)));
    let give_up = push_dispatch_dispatch::CancellationToken::new();
    let sending = {
        let (apns, give_up) = (apns.clone(), give_up.clone());
        tokio::spawn(async move {
            let request = alert();
            let token = apns_token("a1b2");
            apns.send(Push {
                request: &request,
                token: &token,
                expires_at: None,
                give_up: Some(&give_up),
            })
            .await
        })
    };
    let end = tokio::time::Instant::now() + Duration::from_secs(2);
    while w.sandbox.stats().connections == 0 {
        assert!(tokio::time::Instant::now() < end, "no dial");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let cancelled = tokio::time::Instant::now();
    give_up.cancel();
    let o = sending.await.expect("task");
    assert!(cancelled.elapsed() < Duration::from_millis(100));
    assert_eq!(
        cause(&o),
        &RetryCause::Unsent,
        "not sent, never Timeout/Connection"
    );
    apns.close().await;
}

#[tokio::test]
async fn unanswered_streams_time_out_at_the_deadline() {
    let w = world_with(false, |c| c.blackhole_streams = true).await;
    let timeout = Duration::from_millis(500);
    let apns = w.apns_timing_out(false, timeout);
    let fcm = w.fcm_timing_out(false, timeout).await;
    for d in [&apns as &dyn Dispatcher, &fcm] {
        let started = tokio::time::Instant::now();
        let o = send(d, &alert(), &apns_token("a1b2")).await;
        let took = started.elapsed();
        // Written, then no answer: this one may have been delivered.
        assert_eq!(cause(&o), &RetryCause::Timeout, "{o:?}");
        assert!(took >= timeout && took < timeout + SLACK, "{took:?}");
        assert_eq!(d.backoff(), None, "the connection is up");
    }
    assert_eq!(w.sandbox.stats().blackholed, 2);
}

#[tokio::test]
async fn a_silent_tls_endpoint_fails_the_handshake_within_the_timeout() {
    let w = world_with(true, |c| c.blackhole = true).await;
    let timeout = Duration::from_millis(500);
    let apns = w.apns_timing_out(true, timeout);
    let started = tokio::time::Instant::now();
    let o = send(&apns, &alert(), &apns_token("a1b2")).await;
    let took = started.elapsed();
    assert!(matches!(cause(&o), RetryCause::Connect { .. }), "{o:?}");
    assert!(took < timeout.mul_f64(1.5) + SLACK, "{took:?}");
}

/// A sandbox whose OAuth endpoint is also served over TLS: the service
/// account's `token_uri` is the TLS listener's (its dev certificate is a
/// private CA, written to `sandbox-cert.pem`).
async fn tls_token_world(faults: Faults) -> World {
    let dir = tempfile::tempdir().expect("dir");
    let (port, tls_port) = (free_port(), free_port());
    let creds = devkeys::ensure(
        dir.path(),
        &format!("https://127.0.0.1:{tls_port}/token"),
        PROJECT,
    )
    .expect("dev credentials");
    let mut config = SandboxConfig::local(creds.apns_config(TOPIC), creds.fcm_config(PROJECT));
    config.listen = format!("127.0.0.1:{port}").parse().expect("addr");
    config.tls_listen = Some(format!("127.0.0.1:{tls_port}").parse().expect("addr"));
    config.cert_file = Some(dir.path().join("sandbox-cert.pem"));
    config.faults = faults;
    let sandbox = Sandbox::start(config).await.expect("sandbox");
    World {
        sandbox,
        creds,
        _dir: dir,
    }
}

fn fetch_error(e: &CredentialsError) -> Option<&FetchError> {
    match e {
        CredentialsError::Fetch(f) => Some(f),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn fifty_waiters_on_a_hung_token_endpoint_fail_within_one_fetch_timeout_then_fail_fast() {
    let w = world(
        false,
        Faults {
            oauth_hang: true,
            ..Faults::default()
        },
    )
    .await;
    let settings = short_timeouts(None);
    let cache = Arc::new(
        BearerCache::new(Some(&w.creds.service_account_file), &settings)
            .await
            .expect("loads"),
    );
    let started = std::time::Instant::now();
    let mut waiters = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let cache = cache.clone();
        waiters.spawn(async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            cache.token(deadline, None).await
        });
    }
    while let Some(joined) = waiters.join_next().await {
        let err = joined.expect("waiter").expect_err("hung endpoint");
        assert!(
            matches!(fetch_error(&err), Some(FetchError::Timeout(t)) if *t == settings.fetch_timeout),
            "{err}"
        );
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed < settings.fetch_timeout + Duration::from_millis(700),
        "one fetch timeout for all 50, not one each: {elapsed:?}"
    );
    assert_eq!(cache.failures(), 1, "one fetch");

    // During the backoff every call fails at once, naming the failure.
    let fcm = FcmClient::new(
        FcmSettings {
            endpoint: w.sandbox.base_url(),
            project_id: PROJECT.into(),
            credentials_file: Some(w.creds.service_account_file.clone()),
            ca_file: None,
            connections: 1,
            request_timeout: Duration::from_secs(2),
            quota_wait: push_dispatch_dispatch::fcm::DEFAULT_QUOTA_WAIT,
        },
        cache.clone(),
    )
    .expect("fcm client");
    assert!(fcm.backoff().is_some(), "the dispatcher says it is stuck");
    let at = std::time::Instant::now();
    let outcome = send(&fcm, &alert(), "ok-1").await;
    assert!(at.elapsed() < Duration::from_millis(100), "at once");
    assert!(
        matches!(&outcome, Outcome::Retryable { cause: RetryCause::Credentials { problem }, .. }
            if problem.contains("did not answer within") && problem.contains("next try in")),
        "{outcome:?}"
    );
    assert_eq!(cache.failures(), 1, "no fetch during the backoff");
    assert_eq!(
        w.sandbox.stats().fcm.values().sum::<u64>(),
        0,
        "nothing sent"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_waiter_leaves_at_its_deadline_or_at_give_up_while_the_fetch_goes_on() {
    let w = world(
        false,
        Faults {
            oauth_hang: true,
            ..Faults::default()
        },
    )
    .await;
    let settings = short_timeouts(None);
    let cache = Arc::new(
        BearerCache::new(Some(&w.creds.service_account_file), &settings)
            .await
            .expect("loads"),
    );
    let patient = {
        let cache = cache.clone();
        tokio::spawn(async move { cache.token(soon(), None).await })
    };
    let started = std::time::Instant::now();
    let short = Duration::from_millis(150);
    let err = cache
        .token(tokio::time::Instant::now() + short, None)
        .await
        .expect_err("deadline first");
    assert!(matches!(err, CredentialsError::Deadline), "{err}");
    let left = started.elapsed();
    assert!(
        left >= short && left < settings.fetch_timeout,
        "left at its deadline: {left:?}"
    );

    let give_up = tokio_util::sync::CancellationToken::new();
    let waiting = {
        let cache = cache.clone();
        let give_up = give_up.clone();
        tokio::spawn(async move { cache.token(soon(), Some(&give_up)).await })
    };
    give_up.cancel();
    let at = std::time::Instant::now();
    let err = waiting.await.expect("task").expect_err("gave up");
    assert!(matches!(err, CredentialsError::GaveUp), "{err}");
    assert!(at.elapsed() < Duration::from_millis(100), "at once");

    // The fetch was not cancelled by those who left.
    let err = patient.await.expect("task").expect_err("hung");
    assert!(
        matches!(fetch_error(&err), Some(FetchError::Timeout(_))),
        "{err}"
    );
    assert_eq!(cache.failures(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_endpoint_behind_a_private_ca_works_only_with_ca_file() {
    let w = tls_token_world(Faults::default()).await;
    let ca = w._dir.path().join("sandbox-cert.pem");

    let without = BearerCache::new(Some(&w.creds.service_account_file), &short_timeouts(None))
        .await
        .expect("loads");
    let err = without
        .token(soon(), None)
        .await
        .expect_err("the private CA is not trusted");
    assert!(
        matches!(fetch_error(&err), Some(FetchError::Request { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("certificate"), "{err}");

    let with = BearerCache::new(
        Some(&w.creds.service_account_file),
        &short_timeouts(Some(ca.clone())),
    )
    .await
    .expect("loads");
    with.token(soon(), None).await.expect("token over TLS");
    assert_eq!(w.sandbox.stats().oauth_tokens_issued, 1);

    // The whole client: FCM and its token endpoint behind the same CA.
    let fcm = fcm_client(FcmSettings {
        endpoint: w.sandbox.tls_base_url().expect("tls url"),
        project_id: PROJECT.into(),
        credentials_file: Some(w.creds.service_account_file.clone()),
        ca_file: Some(ca),
        connections: 1,
        request_timeout: Duration::from_secs(2),
        quota_wait: push_dispatch_dispatch::fcm::DEFAULT_QUOTA_WAIT,
    })
    .await;
    assert_eq!(send(&fcm, &alert(), "ok-tls").await, Outcome::Delivered);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_401_fetches_a_new_token_and_counts_the_refresh() {
    let w = world(false, Faults::default()).await;
    let fcm = w.fcm(false).await;
    assert_eq!(send(&fcm, &alert(), "ok-1").await, Outcome::Delivered);
    assert_eq!(fcm.token_refreshes().ok, 1);
    assert_eq!(w.sandbox.stats().oauth_tokens_issued, 1);

    // The sandbox forgets the token: FCM answers 401 UNAUTHENTICATED.
    w.sandbox.set_faults(Faults {
        revoke_oauth_tokens: true,
        ..Faults::default()
    });
    assert_eq!(send(&fcm, &alert(), "ok-2").await, Outcome::Delivered);
    let stats = w.sandbox.stats();
    assert_eq!(stats.oauth_tokens_issued, 2, "a real exchange: {stats:?}");
    assert_eq!(stats.fcm_count("401 UNAUTHENTICATED"), 1, "{stats:?}");
    let refreshes = fcm.token_refreshes();
    assert_eq!(refreshes.ok, 2, "a new token value: {refreshes:?}");
    assert_eq!(refreshes.failed, 0);
    // The new token is cached.
    assert_eq!(send(&fcm, &alert(), "ok-3").await, Outcome::Delivered);
    assert_eq!(w.sandbox.stats().oauth_tokens_issued, 2);
}

/// Percent-decodes a form value (the test's own, minimal).
fn form_decode(v: &str) -> String {
    let bytes = v.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).expect("hex");
                out.push(u8::from_str_radix(hex, 16).expect("hex"));
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).expect("utf-8")
}

/// Accepts one HTTP/1.1 request, answers `answer`, returns (head, body).
async fn capture_one(listener: tokio::net::TcpListener, answer: &'static str) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut stream, _) = listener.accept().await.expect("accept");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let (head, body_start, length) = loop {
        let n = stream.read(&mut chunk).await.expect("read");
        assert!(n > 0, "request cut short");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8(buf[..end].to_vec()).expect("head");
            let length = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().expect("length"))
                })
                .expect("content-length");
            break (head, end + 4, length);
        }
    };
    while buf.len() < body_start + length {
        let n = stream.read(&mut chunk).await.expect("read");
        assert!(n > 0, "body cut short");
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = String::from_utf8(buf[body_start..body_start + length].to_vec()).expect("body");
    let response = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
        answer.len()
    );
    stream.write_all(response.as_bytes()).await.expect("write");
    stream.shutdown().await.expect("shutdown");
    (head, body)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_exchange_is_the_jwt_bearer_request_google_documents() {
    use base64::Engine;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let token_uri = format!("http://{}/token", listener.local_addr().expect("addr"));
    let dir = tempfile::tempdir().expect("dir");
    let creds = devkeys::ensure(dir.path(), &token_uri, PROJECT).expect("dev credentials");
    let key: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&creds.service_account_file).expect("read key"))
            .expect("json");
    let server = tokio::spawn(capture_one(
        listener,
        r#"{"access_token":"ya29.captured","expires_in":3599,"token_type":"Bearer"}"#,
    ));
    let cache = BearerCache::new(Some(&creds.service_account_file), &short_timeouts(None))
        .await
        .expect("loads");
    let bearer = cache.token(soon(), None).await.expect("token");
    assert_eq!(bearer.authorization(), "Bearer ya29.captured");
    assert_eq!(cache.fetches(), 1);
    let (head, body) = server.await.expect("server");

    let request_line = head.lines().next().expect("request line");
    assert!(
        request_line.starts_with("POST /token HTTP/1.1"),
        "{request_line}"
    );
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/x-www-form-urlencoded"),
        "{head}"
    );
    let form: std::collections::HashMap<String, String> = body
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (form_decode(k), form_decode(v)))
        .collect();
    assert_eq!(form.len(), 2, "{form:?}");
    assert_eq!(
        form["grant_type"],
        "urn:ietf:params:oauth:grant-type:jwt-bearer"
    );
    let assertion = &form["assertion"];
    let parts: Vec<&str> = assertion.split('.').collect();
    assert_eq!(parts.len(), 3);
    let decode = |part: &str| -> serde_json::Value {
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(part)
                .expect("base64url"),
        )
        .expect("json")
    };
    let header = decode(parts[0]);
    assert_eq!(header["alg"], "RS256");
    assert_eq!(header["typ"], "JWT");
    assert_eq!(header["kid"], key["private_key_id"]);
    let claims = decode(parts[1]);
    assert_eq!(claims["iss"], key["client_email"]);
    assert_eq!(claims["aud"], token_uri.as_str());
    assert_eq!(claims["scope"], FCM_SCOPE);
    let iat = claims["iat"].as_i64().expect("iat");
    let exp = claims["exp"].as_i64().expect("exp");
    assert_eq!(exp - iat, 3600);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    assert!((iat - now).abs() < 60, "iat is now");

    // The signature: the sandbox's token endpoint, which verifies RS256
    // against the key's public half (and the kid), accepts this assertion.
    let mut config = SandboxConfig::local(creds.apns_config(TOPIC), creds.fcm_config(PROJECT));
    config.listen = "127.0.0.1:0".parse().expect("addr");
    let sandbox = Sandbox::start(config).await.expect("sandbox");
    let answer = reqwest::Client::new()
        .post(format!("{}/token", sandbox.base_url()))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .expect("post");
    assert_eq!(answer.status(), 200, "the sandbox verified the assertion");
    sandbox.shutdown().await;
}
