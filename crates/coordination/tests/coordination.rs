//! The coordination guarantees, against the in-process backend and a real
//! `redis-server` (the run's shared one, `PUSH_DISPATCH_TEST_REDIS_URL`, with
//! a key prefix per test; or a private one). Without redis-server the Redis
//! tests skip outside CI and fail under `CI=true`.

use std::time::{Duration, Instant};

use push_dispatch_coordination::test_support::{RedisServer, TestRedis, require_redis_server};
use push_dispatch_coordination::{
    BackendState, Claim, CoordError, Coordinator, DedupKey, DoneAs, GuardCounts, GuardScope,
    RateKey, RedisSettings,
};

fn key<'a>(request_id: &'a str, token: &'a str) -> DedupKey<'a> {
    DedupKey {
        app: "main",
        request_id,
        platform: "fcm",
        token,
    }
}

const PENDING: Duration = Duration::from_secs(30);
const WINDOW: Duration = Duration::from_secs(60);

/// Polls `check` every 10 ms until it holds or `within` passes.
async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{what} within {within:?}");
}

async fn up(c: &Coordinator) {
    eventually(Duration::from_secs(10), "the coordinator is up", || async {
        c.is_up()
    })
    .await;
}

/// Two coordinators on the test's Redis (two pods), or None to skip.
async fn redis_pair(test: &str) -> Option<(TestRedis, Coordinator, Coordinator)> {
    let redis = TestRedis::get(test)?;
    let a = Coordinator::redis(&redis.settings()).expect("settings");
    let b = Coordinator::redis(&redis.settings()).expect("settings");
    up(&a).await;
    up(&b).await;
    Some((redis, a, b))
}

fn memory_pair() -> (Coordinator, Coordinator) {
    let a = Coordinator::in_process(1000);
    (a.clone(), a)
}

// ---- the shared semantics, run against both backends ----

async fn concurrent_claimers_get_exactly_one_mine(a: Coordinator, b: Coordinator) {
    for i in 0..20 {
        let id = format!("req-{i}");
        let k = [key(&id, "tok")];
        let (x, y) = tokio::join!(a.claim(&k, PENDING), b.claim(&k, PENDING));
        let answers = [x.expect("claim")[0], y.expect("claim")[0]];
        let mine = answers.iter().filter(|c| **c == Claim::Mine).count();
        assert_eq!(mine, 1, "{answers:?}");
        assert!(
            answers.iter().any(|c| matches!(c, Claim::PendingElsewhere { expires_in } if *expires_in <= PENDING && *expires_in > PENDING / 2)),
            "{answers:?}"
        );
    }
}

async fn a_recorded_final_suppresses_and_a_release_lets_the_next_claim_win(
    a: Coordinator,
    b: Coordinator,
) {
    let (delivered, dead, dlq, retry) = (
        key("r1", "t1"),
        key("r1", "t2"),
        key("r1", "t3"),
        key("r1", "t4"),
    );
    let all = [delivered, dead, dlq, retry];
    assert_eq!(
        a.claim(&all, PENDING).await.expect("claim"),
        vec![Claim::Mine; 4]
    );
    a.record(
        &[
            (delivered, DoneAs::Delivered),
            (dead, DoneAs::ReportedDead),
            (dlq, DoneAs::DeadLettered),
        ],
        WINDOW,
        &[retry],
    )
    .await
    .expect("record");
    let again = b.claim(&all, PENDING).await.expect("claim");
    assert_eq!(
        again,
        vec![
            Claim::Done(DoneAs::Delivered),
            Claim::Done(DoneAs::ReportedDead),
            Claim::Done(DoneAs::DeadLettered),
            Claim::Mine,
        ],
        "finals suppress; the released target is claimed by the next copy"
    );
    // A release of a final is ignored.
    b.record(&[], WINDOW, &[delivered]).await.expect("record");
    assert_eq!(
        a.claim(&[delivered], PENDING).await.expect("claim"),
        vec![Claim::Done(DoneAs::Delivered)]
    );
}

async fn claims_and_finals_expire(a: Coordinator, b: Coordinator) {
    let (p, f) = (key("r2", "pending"), key("r2", "final"));
    let short = Duration::from_millis(300);
    assert_eq!(
        a.claim(&[p, f], short).await.expect("claim"),
        vec![Claim::Mine; 2]
    );
    a.record(&[(f, DoneAs::Delivered)], short, &[])
        .await
        .expect("record");
    assert!(matches!(
        b.claim(&[p], PENDING).await.expect("claim")[0],
        Claim::PendingElsewhere { .. }
    ));
    eventually(Duration::from_secs(5), "both keys expire", || async {
        b.claim(&[p, f], PENDING).await.expect("claim") == vec![Claim::Mine; 2]
    })
    .await;
}

async fn an_empty_request_id_is_never_deduplicated(a: Coordinator, b: Coordinator) {
    let k = key("", "tok");
    for c in [&a, &b, &a] {
        assert_eq!(
            c.claim(&[k], PENDING).await.expect("claim"),
            vec![Claim::Mine]
        );
        c.record(&[(k, DoneAs::Delivered)], WINDOW, &[])
            .await
            .expect("record");
    }
}

async fn guard_counts_are_shared_and_expire_with_the_window(a: Coordinator, b: Coordinator) {
    let scope = GuardScope {
        app: "main",
        platform: "apns",
    };
    let other = GuardScope {
        app: "main",
        platform: "fcm",
    };
    let window = Duration::from_millis(1000);
    let first = a.guard_record(&scope, window, 10, 2).await.expect("guard");
    assert_eq!(
        first,
        GuardCounts {
            sends: 10,
            suspicious: 2
        }
    );
    let both = b.guard_record(&scope, window, 5, 1).await.expect("guard");
    assert_eq!(
        both,
        GuardCounts {
            sends: 15,
            suspicious: 3
        },
        "both pods' counts"
    );
    let read = a.guard_record(&scope, window, 0, 0).await.expect("guard");
    assert_eq!(read, both, "recording nothing reads the totals");
    assert_eq!(
        a.guard_record(&other, window, 0, 0).await.expect("guard"),
        GuardCounts::default(),
        "scopes are apart"
    );
    eventually(Duration::from_secs(5), "the window empties", || async {
        b.guard_record(&scope, window, 0, 0).await.expect("guard") == GuardCounts::default()
    })
    .await;
}

async fn the_rate_limit_grants_the_rate_across_pods(a: Coordinator, b: Coordinator) {
    let k = RateKey::fcm("project-1");
    let (rate, burst) = (200.0, 20.0);
    let start = Instant::now();
    let mut granted = 0u64;
    let mut turn = 0;
    while start.elapsed() < Duration::from_millis(1000) {
        let c = if turn % 2 == 0 { &a } else { &b };
        turn += 1;
        let r = c.reserve(&k, rate, burst, 10).await.expect("reserve");
        granted += u64::from(r.granted);
        if r.granted < 10 {
            assert!(r.retry_in > Duration::ZERO && r.retry_in <= Duration::from_millis(5));
            tokio::time::sleep(r.retry_in).await;
        } else {
            assert_eq!(r.retry_in, Duration::ZERO);
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let expected = burst + rate * elapsed;
    assert!(
        (granted as f64) <= expected + 1.0 && (granted as f64) >= expected * 0.85,
        "granted {granted}, expected about {expected:.0} ({elapsed:.2} s)"
    );
    let other = a
        .reserve(&RateKey::apns("TEAM", "com.example"), rate, burst, 20)
        .await
        .expect("reserve");
    assert_eq!(other.granted, 20, "another key has its own full bucket");
}

async fn heartbeats_count_live_pods(a: Coordinator, b: Coordinator) {
    let ttl = Duration::from_millis(400);
    assert_eq!(a.heartbeat("pod-a", ttl).await.expect("hb"), 1);
    assert_eq!(b.heartbeat("pod-b", ttl).await.expect("hb"), 2);
    assert_eq!(
        a.heartbeat("pod-a", ttl).await.expect("hb"),
        2,
        "a renewal is one pod"
    );
    eventually(Duration::from_secs(5), "pod-b lapses", || async {
        a.heartbeat("pod-a", ttl).await.expect("hb") == 1
    })
    .await;
}

macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod in_process {
            $(
                #[tokio::test]
                async fn $name() {
                    let (a, b) = super::memory_pair();
                    super::$name(a, b).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test]
                async fn $name() {
                    let Some((_redis, a, b)) = super::redis_pair(stringify!($name)).await else {
                        return;
                    };
                    super::$name(a, b).await;
                }
            )*
        }
    };
}

both_backends!(
    concurrent_claimers_get_exactly_one_mine,
    a_recorded_final_suppresses_and_a_release_lets_the_next_claim_win,
    claims_and_finals_expire,
    an_empty_request_id_is_never_deduplicated,
    guard_counts_are_shared_and_expire_with_the_window,
    the_rate_limit_grants_the_rate_across_pods,
    heartbeats_count_live_pods,
);

// ---- in-process only ----

#[tokio::test]
async fn the_in_process_store_is_capped_at_max_entries() {
    let c = Coordinator::in_process(100);
    let ids: Vec<String> = (0..250).map(|i| format!("r{i}")).collect();
    for id in &ids {
        let k = key(id, "tok");
        c.claim(&[k], PENDING).await.expect("claim");
        c.record(&[(k, DoneAs::Delivered)], WINDOW, &[])
            .await
            .expect("record");
    }
    let Coordinator::InProcess(m) = &c else {
        panic!("in-process")
    };
    assert_eq!(m.dedup_len(), 100);
    assert_eq!(
        c.claim(&[key(&ids[249], "tok")], PENDING)
            .await
            .expect("claim"),
        vec![Claim::Done(DoneAs::Delivered)],
        "the newest entries are kept"
    );
    assert_eq!(
        c.claim(&[key(&ids[0], "tok")], PENDING)
            .await
            .expect("claim"),
        vec![Claim::Mine],
        "the oldest were evicted"
    );
    assert_eq!(c.state(), BackendState::InProcess);
    assert!(c.is_up());
}

// ---- Redis only ----

/// `INFO commandstats` as (command, calls), without `info` itself.
fn commandstats(port: u16) -> Vec<(String, u64)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.write_all(b"INFO commandstats\r\n").expect("write");
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let mut text = String::new();
    let mut buf = [0u8; 8192];
    // A bulk reply: `$len\r\n<body>\r\n`; read until the body is complete.
    loop {
        let n = s.read(&mut buf).expect("read");
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
        if let Some((head, body)) = text.split_once("\r\n")
            && let Ok(len) = head.trim_start_matches('$').parse::<usize>()
            && body.len() >= len
        {
            break;
        }
        assert!(n > 0, "connection closed");
    }
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("cmdstat_")?;
            let (name, stats) = rest.split_once(':')?;
            let calls = stats
                .strip_prefix("calls=")?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            (name != "info").then(|| (name.to_string(), calls))
        })
        .collect()
}

#[tokio::test]
async fn each_call_is_one_round_trip_whatever_the_number_of_targets() {
    if !require_redis_server("each_call_is_one_round_trip") {
        return;
    }
    // Its own server: commandstats of a shared one would count other tests.
    let server = RedisServer::start().expect("redis-server");
    let c = Coordinator::redis(&RedisSettings::new(server.url())).expect("settings");
    up(&c).await;
    let tokens: Vec<String> = (0..50).map(|i| format!("token-{i}")).collect();
    let keys: Vec<DedupKey<'_>> = tokens.iter().map(|t| key("req", t)).collect();
    let warm = [key("warm", "up")];
    // Loads the scripts once (EVALSHA, NOSCRIPT, SCRIPT LOAD, EVALSHA).
    c.claim(&warm, PENDING).await.expect("claim");
    c.record(&[(warm[0], DoneAs::Delivered)], WINDOW, &[])
        .await
        .expect("record");
    let trips = c.round_trips();
    let calls = |stats: &[(String, u64)], name: &str| {
        stats.iter().find(|(n, _)| n == name).map_or(0, |(_, c)| *c)
    };
    let before = commandstats(server.port());
    let claims = c.claim(&keys, PENDING).await.expect("claim");
    assert_eq!(claims.len(), 50);
    let finals: Vec<_> = keys[..40].iter().map(|k| (*k, DoneAs::Delivered)).collect();
    c.record(&finals, WINDOW, &keys[40..])
        .await
        .expect("record");
    let after = commandstats(server.port());
    assert_eq!(c.round_trips() - trips, 2, "one request per call");
    // Commands run inside a script are counted too: count what the client sent.
    assert_eq!(
        calls(&after, "evalsha") - calls(&before, "evalsha"),
        2,
        "one EVALSHA for 50 claims, one for 40 finals and 10 releases: {after:?}"
    );
    assert_eq!(calls(&after, "script|load"), calls(&before, "script|load"));
    assert_eq!(calls(&after, "eval"), calls(&before, "eval"));
}

#[tokio::test]
async fn a_killed_server_fails_calls_fast_and_the_backend_recovers_on_the_same_port() {
    if !require_redis_server("a_killed_server") {
        return;
    }
    let mut server = RedisServer::start().expect("redis-server");
    let c = Coordinator::redis(&RedisSettings::new(server.url())).expect("settings");
    let mut states = c.watch_state();
    up(&c).await;
    let k = [key("kill", "tok")];
    assert_eq!(
        c.claim(&k, PENDING).await.expect("claim"),
        vec![Claim::Mine]
    );

    server.kill();
    for i in 0..5 {
        let started = Instant::now();
        let err = c.claim(&k, PENDING).await.expect_err("Redis is down");
        assert!(
            matches!(err, CoordError::Unavailable { .. }),
            "call {i}: {err}"
        );
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "call {i} took {:?}",
            started.elapsed()
        );
    }
    assert_eq!(c.state(), BackendState::Down);
    assert!(c.failures() >= 1);
    assert!(states.has_changed().expect("watch"), "the change is seen");
    assert_eq!(*states.borrow_and_update(), BackendState::Down);
    let r = c
        .reserve(&RateKey::fcm("p"), 10.0, 10.0, 5)
        .await
        .expect_err("down");
    assert!(matches!(r, CoordError::Unavailable { .. }));

    server.restart().expect("restart on the same port");
    eventually(
        Duration::from_secs(10),
        "the backend reconnects",
        || async { c.is_up() },
    )
    .await;
    // The new server is empty: the key is claimable again.
    assert_eq!(
        c.claim(&k, PENDING).await.expect("claim"),
        vec![Claim::Mine]
    );
}

#[tokio::test]
async fn a_server_that_is_down_at_start_neither_blocks_nor_fails_creation() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let started = Instant::now();
    let c = Coordinator::redis(&RedisSettings::new(format!("redis://127.0.0.1:{port}")))
        .expect("created while Redis is down");
    assert!(started.elapsed() < Duration::from_millis(100));
    let err = c.claim(&[key("r", "t")], PENDING).await.expect_err("down");
    assert!(matches!(err, CoordError::Unavailable { .. }), "{err}");
    eventually(
        Duration::from_secs(5),
        "the probe marks it down",
        || async { c.state() == BackendState::Down },
    )
    .await;
}

#[tokio::test]
async fn cluster_mode_is_refused_clearly() {
    let err = Coordinator::redis(&RedisSettings::new("redis+cluster://10.0.0.1:6379"))
        .expect_err("cluster URL");
    let text = err.to_string();
    assert!(matches!(err, CoordError::ClusterRefused));
    assert!(
        text.contains("coordination.redis_url")
            && text.contains("not supported")
            && text.contains("standalone"),
        "{text}"
    );

    if !require_redis_server("cluster_mode_is_refused_clearly") {
        return;
    }
    let server = RedisServer::start_with(&["--cluster-enabled", "yes"]).expect("redis-server");
    let c = Coordinator::redis(&RedisSettings::new(server.url())).expect("settings");
    eventually(
        Duration::from_secs(10),
        "the cluster is refused",
        || async { c.state() == BackendState::Refused },
    )
    .await;
    let err = c
        .claim(&[key("r", "t")], PENDING)
        .await
        .expect_err("refused");
    assert!(matches!(err, CoordError::ClusterRefused), "{err}");
}

#[tokio::test]
async fn auth_comes_from_the_url_and_the_password_never_shows() {
    if !require_redis_server("auth_comes_from_the_url") {
        return;
    }
    let server = RedisServer::start_with(&["--requirepass", "s3cret-pw"]).expect("redis-server");
    let port = server.port();
    let good = Coordinator::redis(&RedisSettings::new(format!(
        "redis://default:s3cret-pw@127.0.0.1:{port}"
    )))
    .expect("settings");
    up(&good).await;
    assert_eq!(
        good.claim(&[key("auth", "t")], PENDING)
            .await
            .expect("claim"),
        vec![Claim::Mine]
    );
    let shown = format!("{good:?}");
    assert!(!shown.contains("s3cret-pw"), "{shown}");

    let bad = Coordinator::redis(&RedisSettings::new(format!(
        "redis://:wrong-pw@127.0.0.1:{port}"
    )))
    .expect("settings");
    eventually(
        Duration::from_secs(5),
        "a wrong password is down",
        || async { bad.state() == BackendState::Down },
    )
    .await;
    let err = bad
        .claim(&[key("auth", "t")], PENDING)
        .await
        .expect_err("down");
    assert!(!err.to_string().contains("wrong-pw"), "{err}");
}

/// A CA and a leaf it signed for localhost / 127.0.0.1, as PEM files.
fn tls_material(
    dir: &std::path::Path,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate().expect("key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.distinguished_name
        .push(DnType::CommonName, "test Redis CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).expect("CA");
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().expect("key");
    let mut leaf = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .expect("params");
    leaf.is_ca = IsCa::ExplicitNoCa;
    let cert = leaf.signed_by(&key, &issuer).expect("leaf");
    let paths = (
        dir.join("server.crt"),
        dir.join("server.key"),
        dir.join("ca.crt"),
    );
    std::fs::write(&paths.0, cert.pem()).expect("write");
    std::fs::write(&paths.1, key.serialize_pem()).expect("write");
    std::fs::write(&paths.2, ca_cert.pem()).expect("write");
    paths
}

#[tokio::test]
async fn rediss_trusts_the_ca_file() {
    if !require_redis_server("rediss_trusts_the_ca_file") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key_file, ca) = tls_material(dir.path());
    let server = RedisServer::start_tls(&cert, &key_file, &ca).expect("redis-server with TLS");
    let settings = RedisSettings {
        ca_file: Some(ca.clone()),
        ..RedisSettings::new(server.url())
    };
    let c = Coordinator::redis(&settings).expect("settings");
    up(&c).await;
    assert_eq!(
        c.claim(&[key("tls", "t")], PENDING).await.expect("claim"),
        vec![Claim::Mine]
    );

    // Without the CA, the server's certificate is not trusted.
    let untrusted = Coordinator::redis(&RedisSettings::new(server.url())).expect("settings");
    eventually(
        Duration::from_secs(5),
        "an untrusted server is down",
        || async { untrusted.state() == BackendState::Down },
    )
    .await;

    // ca_file without rediss:// is a config error naming the key.
    let err = Coordinator::redis(&RedisSettings {
        ca_file: Some(ca),
        ..RedisSettings::new("redis://127.0.0.1:6379")
    })
    .expect_err("ca_file needs rediss");
    assert!(err.to_string().contains("coordination.ca_file"), "{err}");
}
