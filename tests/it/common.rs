//! End-to-end test harness: the real `push-dispatch` binary against the real
//! Pub/Sub emulator (`PUBSUB_EMULATOR_HOST`, started by `make test`).
//!
//! Every test gets its own Google Cloud project id on the emulator, so topic
//! and subscription names never collide between tests running in parallel,
//! and the emulator's zombie-stream bug (a closed streaming pull keeps eating
//! that subscription's messages, see NOTES) cannot reach across tests. For
//! the same reason a test opens at most one stream per subscription
//! ([`Collector`]) and keeps it for its whole life.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use push_dispatch_subscriber::publish::publish_confirmed;
use push_dispatch_subscriber::pubsub::model::{Message, Subscription};
use push_dispatch_subscriber::{Clients, subscription_name, topic_name};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A throwaway P-256 key in PKCS#8 PEM, as Apple's `.p8` files are.
pub const TEST_APNS_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgBKPcXQYlx9gN0YuY
TgGcJGRJTa02caWBfKmwsySBFJShRANCAATTQuzZrcLi01wuvZZsyhVF3sgF+aDN
lMteR4mEpiwtq53ioDVrCjYSggnE35ezsBEQIDFCHi//u0KkFL8fD6AC
-----END PRIVATE KEY-----
";

/// A valid APNs token (64 hex digits) with a given 4-character prefix.
pub fn apns_token(prefix: &str) -> String {
    format!("{prefix}{}", &"0123456789abcdef".repeat(4)[prefix.len()..])
}

/// A sandbox (APNs, FCM, OAuth) with its own development credentials in `dir`.
pub async fn start_sandbox(
    dir: &std::path::Path,
    topic: &str,
    project: &str,
    faults: push_dispatch_sandbox::Faults,
) -> (
    push_dispatch_sandbox::Sandbox,
    push_dispatch_sandbox::devkeys::DevCredentials,
) {
    start_sandbox_with(dir, topic, project, |c| c.faults = faults).await
}

/// [`start_sandbox`] with the rest of its config set by `setup` (e.g. a black hole).
pub async fn start_sandbox_with(
    dir: &std::path::Path,
    topic: &str,
    project: &str,
    setup: impl FnOnce(&mut push_dispatch_sandbox::SandboxConfig),
) -> (
    push_dispatch_sandbox::Sandbox,
    push_dispatch_sandbox::devkeys::DevCredentials,
) {
    use push_dispatch_sandbox::{Sandbox, SandboxConfig, devkeys};
    let port = free_port();
    let creds = devkeys::ensure(dir, &format!("http://127.0.0.1:{port}/token"), project)
        .expect("dev credentials");
    let mut config = SandboxConfig::local(creds.apns_config(topic), creds.fcm_config(project));
    config.listen = format!("127.0.0.1:{port}").parse().expect("addr");
    setup(&mut config);
    let sandbox = Sandbox::start(config).await.expect("sandbox");
    (sandbox, creds)
}

/// The YAML of one app whose APNs and FCM point at `sandbox`.
pub fn sandbox_app_yaml(
    name: &str,
    sandbox: &push_dispatch_sandbox::Sandbox,
    creds: &push_dispatch_sandbox::devkeys::DevCredentials,
    topic: &str,
    project: &str,
) -> String {
    format!(
        r#"  - name: {name}
    apns:
      endpoint: {url}
      key_file: {key}
      key_id: {kid}
      team_id: {team}
      topic: {topic}
    fcm:
      endpoint: {url}
      project_id: {project}
      credentials_file: {sa}
"#,
        url = sandbox.base_url(),
        key = creds.apns_key_file.display(),
        kid = creds.key_id,
        team = creds.team_id,
        sa = creds.service_account_file.display(),
    )
}

/// How long tests wait for something to happen before failing.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Settings a test may change; the rest of the config is fixed.
#[derive(Clone, Debug)]
pub struct Settings {
    pub max_delivery_attempts: u32,
    pub retry_min_backoff: &'static str,
    pub retry_max_backoff: &'static str,
    pub max_in_process_wait: &'static str,
    pub max_republish: u32,
    pub shutdown_grace: &'static str,
    pub streams: u32,
    /// Options of the `stub:` endpoints of the default app, e.g. `latency=5s`.
    pub stub_options: &'static str,
    /// Replaces the whole `apps:` section (YAML list items, indented by 2).
    pub apps_yaml: Option<String>,
    /// The body of a `feedback:` section (keys indented by 2), if any.
    pub feedback_yaml: Option<String>,
    /// The body of a `results:` section (keys indented by 2), if any.
    pub results_yaml: Option<String>,
    /// `dispatch.concurrency`.
    pub concurrency: u32,
    /// `dispatch.request_timeout`.
    pub request_timeout: &'static str,
    /// `dispatch.circuit.open_for`.
    pub circuit_open_for: &'static str,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            max_delivery_attempts: 5,
            retry_min_backoff: "0s",
            retry_max_backoff: "1s",
            max_in_process_wait: "0s",
            max_republish: 5,
            shutdown_grace: "10s",
            streams: 2,
            stub_options: "",
            apps_yaml: None,
            feedback_yaml: None,
            results_yaml: None,
            concurrency: 512,
            request_timeout: "10s",
            circuit_open_for: "30s",
        }
    }
}

/// One test's world: a project on the emulator, a config file, clients.
pub struct TestEnv {
    pub project: String,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub emulator: String,
    pub clients: Clients,
    pub port: u16,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl TestEnv {
    /// A fresh project named after the test, with a config file written for it.
    pub async fn new(test: &str, settings: Settings) -> TestEnv {
        let emulator = std::env::var("PUBSUB_EMULATOR_HOST").unwrap_or_default();
        assert!(
            !emulator.is_empty(),
            "PUBSUB_EMULATOR_HOST is not set: run the end-to-end tests with `make test`, which starts the emulator"
        );
        let project = format!(
            "e2e-{}-{:08x}",
            test.replace('_', "-"),
            rand::random::<u32>()
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let key = dir.path().join("AuthKey_TESTKEY001.p8");
        std::fs::write(&key, TEST_APNS_KEY).expect("write key");
        let port = free_port();
        let s = &settings;
        let default_apps = format!(
            r#"  - name: default
    apns:
      endpoint: "stub:{stub}"
      key_file: {key}
      key_id: TESTKEY001
      team_id: TESTTEAM01
      topic: com.example.app
    fcm:
      endpoint: "stub:{stub}"
      project_id: example-firebase
  - name: second
    fcm:
      endpoint: "stub:"
      project_id: second-firebase
"#,
            key = key.display(),
            stub = s.stub_options,
        );
        let apps = s.apps_yaml.clone().unwrap_or(default_apps);
        let config = format!(
            r#"
project_id: {project}
allow_insecure_endpoints: true
pubsub:
  max_delivery_attempts: {mda}
  retry_min_backoff: {rmin}
  retry_max_backoff: {rmax}
  ack_deadline: 10s
  streams: {streams}
  max_outstanding_messages: 200
shutdown_grace: {grace}
dispatch:
  max_in_process_wait: {wait}
  max_republish: {max_republish}
  concurrency: {concurrency}
  request_timeout: {request_timeout}
  circuit:
    open_for: {open_for}
telemetry:
  log_format: text
  log_level: debug
server:
  listen: 127.0.0.1:{port}
{feedback}{results}apps:
{apps}
"#,
            results = s
                .results_yaml
                .as_ref()
                .map(|r| format!("results:\n{r}\n"))
                .unwrap_or_default(),
            feedback = s
                .feedback_yaml
                .as_ref()
                .map(|f| format!("feedback:\n{f}\n"))
                .unwrap_or_default(),
            mda = s.max_delivery_attempts,
            rmin = s.retry_min_backoff,
            rmax = s.retry_max_backoff,
            streams = s.streams,
            grace = s.shutdown_grace,
            wait = s.max_in_process_wait,
            max_republish = s.max_republish,
            concurrency = s.concurrency,
            request_timeout = s.request_timeout,
            open_for = s.circuit_open_for,
        );
        let config_path = dir.path().join("config.yaml");
        std::fs::write(&config_path, config).expect("write config");
        let clients = Clients::connect(Some(&emulator))
            .await
            .expect("emulator clients");
        TestEnv {
            project,
            dir,
            config_path,
            emulator,
            clients,
            port,
        }
    }

    /// A `push-dispatch` command with this test's config and emulator.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_push-dispatch"));
        cmd.arg("--config")
            .arg(&self.config_path)
            .args(args)
            .env("PUBSUB_EMULATOR_HOST", &self.emulator)
            .env_remove("RUST_LOG");
        for (k, _) in std::env::vars() {
            if k.starts_with("PUSH_DISPATCH_") {
                cmd.env_remove(k);
            }
        }
        cmd
    }

    /// Runs a command to completion.
    pub fn run(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = self.command(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("run push-dispatch")
    }

    /// `push-dispatch provision`, which must succeed.
    pub fn provision(&self) -> String {
        let out = self.run(&["provision"], &[]);
        assert!(
            out.status.success(),
            "provision failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn topic(&self, name: &str) -> String {
        topic_name(&self.project, name)
    }

    pub fn subscription(&self, name: &str) -> String {
        subscription_name(&self.project, name)
    }

    /// Creates a plain subscription on `topic` (e.g. to watch the feedback topic).
    pub async fn create_subscription(&self, topic: &str, name: &str) -> String {
        self.create_filtered_subscription(topic, name, "").await
    }

    /// Creates a subscription on `topic` with a Pub/Sub `filter` ("" = none).
    pub async fn create_filtered_subscription(
        &self,
        topic: &str,
        name: &str,
        filter: &str,
    ) -> String {
        let sub = self.subscription(name);
        self.clients
            .subscriptions
            .create_subscription()
            .with_request(
                Subscription::new()
                    .set_name(sub.clone())
                    .set_topic(self.topic(topic))
                    .set_filter(filter)
                    .set_ack_deadline_seconds(30),
            )
            .send()
            .await
            .expect("create test subscription");
        sub
    }

    /// Deletes a topic (short name), to make publishes to it fail.
    pub async fn delete_topic(&self, name: &str) {
        self.clients
            .topics
            .delete_topic()
            .set_topic(self.topic(name))
            .send()
            .await
            .expect("delete topic");
    }

    pub async fn get_subscription(&self, name: &str) -> Subscription {
        self.clients
            .subscriptions
            .get_subscription()
            .set_subscription(self.subscription(name))
            .send()
            .await
            .expect("get subscription")
    }

    /// Publishes raw bytes with attributes to `topic`; returns the message id.
    pub async fn publish(&self, topic: &str, data: Vec<u8>, attrs: &[(&str, &str)]) -> String {
        let topic = self.topic(topic);
        let publisher = self
            .clients
            .publisher(&topic, Duration::from_secs(10), Duration::ZERO)
            .await
            .expect("publisher");
        let attrs: HashMap<String, String> = attrs
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect();
        publish_confirmed(&publisher, &topic, data, attrs)
            .await
            .expect("publish")
    }

    /// Publishes a JSON PushRequest to the requests topic.
    pub async fn publish_json(&self, json: &str) -> String {
        self.publish("push-requests", json.as_bytes().to_vec(), &[])
            .await
    }

    /// Starts the worker and waits until `/readyz` answers 200.
    pub async fn start_worker(&self) -> WorkerProcess {
        self.start_worker_with(&[]).await
    }

    /// Like [`TestEnv::start_worker`], with extra environment variables.
    pub async fn start_worker_with(&self, env: &[(&str, &str)]) -> WorkerProcess {
        self.start_worker_on_port(self.port, env, "worker").await
    }

    /// One more worker on this subscription (it does not provision), its
    /// server on a free port of its own, with `extra` environment: for runs
    /// with several workers.
    pub async fn start_another_worker(&self, name: &str, extra: &[(&str, &str)]) -> WorkerProcess {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let mut vars: Vec<(&str, &str)> = vec![
            ("PUSH_DISPATCH_SERVER__LISTEN", listen.as_str()),
            ("PUSH_DISPATCH_PUBSUB__PROVISION", "false"),
        ];
        vars.extend_from_slice(extra);
        self.start_worker_on_port(port, &vars, name).await
    }

    /// A worker whose server listens on `port` (set `PUSH_DISPATCH_SERVER__LISTEN`
    /// to match in `env`), logging to `NAME-….log`.
    pub async fn start_worker_on_port(
        &self,
        port: u16,
        env: &[(&str, &str)],
        name: &str,
    ) -> WorkerProcess {
        let log = self
            .dir
            .path()
            .join(format!("{name}-{}.log", rand::random::<u16>()));
        let file = std::fs::File::create(&log).expect("log file");
        let mut cmd = self.command(&["run"]);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn worker");
        let mut worker = WorkerProcess { child, log, port };
        let start = Instant::now();
        loop {
            if let Ok(r) = http_get(port, "/readyz").await
                && r.0 == 200
            {
                break;
            }
            if let Ok(Some(status)) = worker.child.try_wait() {
                panic!("worker exited with {status}:\n{}", worker.log_text());
            }
            assert!(
                start.elapsed() < DEADLINE,
                "worker not ready within {DEADLINE:?}:\n{}",
                worker.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        worker
    }

    /// Opens one stream on `subscription` (short name) that collects every message.
    pub fn collect(&self, subscription: &str) -> Collector {
        let (tx, rx) = mpsc::channel(10_000);
        let stop = CancellationToken::new();
        let mut stream = self
            .clients
            .subscriber
            .subscribe(self.subscription(subscription))
            .build();
        let token = stream.shutdown_token();
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                let shutdown = tokio::spawn(async move {
                    stop.cancelled().await;
                    token.shutdown().await;
                });
                while let Some(Ok((message, handler))) = stream.next().await {
                    handler.ack();
                    if tx.send(message).await.is_err() {
                        break;
                    }
                }
                shutdown.abort();
            }
        });
        Collector {
            rx,
            stop,
            task: Some(task),
        }
    }

    /// The worker's current metrics text.
    pub async fn metrics(&self) -> String {
        http_get(self.port, "/metrics").await.expect("metrics").1
    }

    /// Waits until the sum of the matching series reaches `at_least`; returns it.
    pub async fn wait_metric(&self, name: &str, labels: &[(&str, &str)], at_least: f64) -> f64 {
        let start = Instant::now();
        loop {
            let text = self.metrics().await;
            let v = metric_value(&text, name, labels);
            if v >= at_least {
                return v;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "{name}{labels:?} stayed at {v} (< {at_least}) for {DEADLINE:?}:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The current value of a metric (sum over matching series).
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_value(&self.metrics().await, name, labels)
    }
}

/// Sums the samples of `name` whose labels include all of `labels`.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut total = 0.0;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (series, value) = match line.rsplit_once(' ') {
            Some(p) => p,
            None => continue,
        };
        let (metric, label_text) = match series.split_once('{') {
            Some((m, rest)) => (m, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if metric != name {
            continue;
        }
        let all = labels
            .iter()
            .all(|(k, v)| label_text.split(',').any(|kv| kv == format!("{k}=\"{v}\"")));
        if all {
            total += value.parse::<f64>().unwrap_or(0.0);
        }
    }
    total
}

/// Minimal HTTP/1.1 GET on loopback: (status, body).
pub async fn http_get(port: u16, path: &str) -> Result<(u16, String), String> {
    let url = format!("http://127.0.0.1:{port}{path}");
    let resp = reqwest::get(&url).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp.text().await.map_err(|e| e.to_string())?;
    Ok((status, body))
}

/// A running worker process; killed when dropped.
pub struct WorkerProcess {
    pub child: Child,
    pub log: PathBuf,
    pub port: u16,
}

impl WorkerProcess {
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM and waits for the exit status (within the deadline).
    pub async fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "worker did not exit after SIGTERM:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- worker log ({}) ----\n{}",
                self.log.display(),
                self.log_text()
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Messages arriving on one subscription.
pub struct Collector {
    rx: mpsc::Receiver<Message>,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Collector {
    /// Waits for exactly `n` messages (fails after the deadline).
    pub async fn take(&mut self, n: usize) -> Vec<Message> {
        let mut out = Vec::with_capacity(n);
        let start = Instant::now();
        while out.len() < n {
            let left = DEADLINE.saturating_sub(start.elapsed());
            match tokio::time::timeout(left, self.rx.recv()).await {
                Ok(Some(m)) => out.push(m),
                Ok(None) => panic!(
                    "subscription stream closed after {} of {n} messages",
                    out.len()
                ),
                Err(_) => panic!(
                    "only {} of {n} messages arrived within {DEADLINE:?}: {out:?}",
                    out.len()
                ),
            }
        }
        out
    }

    /// The next message if one has arrived, without waiting.
    pub fn try_next(&mut self) -> Option<Message> {
        self.rx.try_recv().ok()
    }

    /// Asserts that nothing (more) arrives within `wait`.
    pub async fn expect_nothing(&mut self, wait: Duration) {
        if let Ok(Some(m)) = tokio::time::timeout(wait, self.rx.recv()).await {
            panic!("unexpected message: {m:?}");
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
