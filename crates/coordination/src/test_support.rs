//! Redis for tests (feature `test-support`): a private `redis-server` on a
//! free port, killed on drop, and [`TestRedis`], the shared server of a
//! test run with a key prefix per test.
//!
//! `make test` (scripts/test.sh → scripts/with-redis.sh) starts one server
//! and exports [`TEST_REDIS_ENV`]; without it each test starts its own.
//! Without `redis-server` on the PATH, tests skip with a message, except
//! under `CI=true`, where they fail.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The variable `make test` sets to the run's shared Redis URL.
pub const TEST_REDIS_ENV: &str = "PUSH_DISPATCH_TEST_REDIS_URL";

static NEXT: AtomicU64 = AtomicU64::new(0);

/// Whether `redis-server` can be run here.
pub fn redis_server_available() -> bool {
    Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Under CI a missing tool fails; elsewhere the test skips, saying so.
/// Returns whether to go on.
pub fn require_redis_server(test: &str) -> bool {
    if redis_server_available() {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!(
            "{test}: redis-server is missing under CI=true; install it: apt-get install -y redis-server"
        );
    }
    eprintln!("SKIP {test}: redis-server is not installed (apt-get install -y redis-server)");
    false
}

/// A private `redis-server` on 127.0.0.1; killed (and its directory removed) on drop.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    args: Vec<String>,
    tls: bool,
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl RedisServer {
    /// A plain server (`--save '' --appendonly no`).
    pub fn start() -> Result<RedisServer, String> {
        RedisServer::start_with(&[])
    }

    /// A server with extra arguments, e.g. `["--cluster-enabled", "yes"]`.
    pub fn start_with(extra: &[&str]) -> Result<RedisServer, String> {
        RedisServer::launch(extra.iter().map(|s| s.to_string()).collect(), false)
    }

    /// A TLS-only server presenting `cert`/`key` (PEM files), clients not
    /// authenticated.
    pub fn start_tls(cert: &Path, key: &Path, ca: &Path) -> Result<RedisServer, String> {
        let args = vec![
            "--tls-cert-file".into(),
            cert.display().to_string(),
            "--tls-key-file".into(),
            key.display().to_string(),
            "--tls-ca-cert-file".into(),
            ca.display().to_string(),
            "--tls-auth-clients".into(),
            "no".into(),
        ];
        RedisServer::launch(args, true)
    }

    fn launch(args: Vec<String>, tls: bool) -> Result<RedisServer, String> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "push-dispatch-redis-{}-{n}-{:x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port().map_err(|e| format!("free port: {e}"))?;
            let mut server = RedisServer {
                child: None,
                port,
                dir: dir.clone(),
                args: args.clone(),
                tls,
            };
            match server.spawn() {
                Ok(()) => return Ok(server),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn spawn(&mut self) -> Result<(), String> {
        let port = self.port.to_string();
        std::fs::create_dir_all(&self.dir).map_err(|e| format!("{}: {e}", self.dir.display()))?;
        let mut cmd = Command::new("redis-server");
        cmd.args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir);
        if self.tls {
            cmd.args(["--port", "0", "--tls-port", &port]);
        } else {
            cmd.args(["--port", &port]);
        }
        let log = std::fs::File::create(self.dir.join("redis.log"))
            .map_err(|e| format!("{}: {e}", self.dir.display()))?;
        let log2 = log.try_clone().map_err(|e| format!("redis.log: {e}"))?;
        cmd.args(&self.args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        let child = cmd.spawn().map_err(|e| format!("redis-server: {e}"))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                let log = std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                return Err(format!(
                    "redis-server on port {port} exited: {status}: {}",
                    tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
                ));
            }
            if self.answers() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        Err(format!(
            "redis-server on port {port} did not answer within 10 s"
        ))
    }

    fn answers(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        if self.tls {
            return true;
        }
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        let mut buf = [0u8; 16];
        s.write_all(b"PING\r\n").is_ok()
            && s.read(&mut buf).is_ok_and(|n| {
                // `-NOAUTH` from a server started with `--requirepass`.
                buf[..n].starts_with(b"+PONG") || buf[..n].starts_with(b"-NOAUTH")
            })
    }

    /// `redis://127.0.0.1:PORT` (or `rediss://localhost:PORT` for TLS).
    pub fn url(&self) -> String {
        if self.tls {
            format!("rediss://localhost:{}", self.port)
        } else {
            format!("redis://127.0.0.1:{}", self.port)
        }
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server (SIGKILL) and waits for it to go.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, with the same arguments (empty).
    pub fn restart(&mut self) -> Result<(), String> {
        self.kill();
        self.spawn()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The Redis a test uses: the run's shared server ([`TEST_REDIS_ENV`]) or a
/// private one, and a key prefix unique to the test.
#[derive(Debug)]
pub struct TestRedis {
    /// The server's URL.
    pub url: String,
    /// A prefix for this test's keys.
    pub prefix: String,
    _own: Option<RedisServer>,
}

impl TestRedis {
    /// The shared server if `make test` started one, else a private one;
    /// `None` (skip) when redis-server is missing outside CI.
    pub fn get(test: &str) -> Option<TestRedis> {
        let prefix = format!(
            "test-{test}-{}-{:x}",
            std::process::id(),
            rand::random::<u32>()
        );
        if let Ok(url) = std::env::var(TEST_REDIS_ENV)
            && !url.is_empty()
        {
            return Some(TestRedis {
                url,
                prefix,
                _own: None,
            });
        }
        if !require_redis_server(test) {
            return None;
        }
        let server = match RedisServer::start() {
            Ok(s) => s,
            Err(e) => panic!("{test}: cannot start redis-server: {e}"),
        };
        Some(TestRedis {
            url: server.url(),
            prefix,
            _own: Some(server),
        })
    }

    /// Settings for a coordinator on this server and prefix.
    pub fn settings(&self) -> crate::RedisSettings {
        crate::RedisSettings {
            prefix: self.prefix.clone(),
            ..crate::RedisSettings::new(self.url.clone())
        }
    }
}
