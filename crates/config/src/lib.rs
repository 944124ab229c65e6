//! push-dispatch configuration: the keys of SPEC §4, loaded with figment from
//! `config.yaml` and then `PUSH_DISPATCH_…` environment variables (`__` nests:
//! `PUSH_DISPATCH_PUBSUB__STREAMS=8`), and validated so that every error names
//! the key at fault and how to fix it.
//!
//! Loading ([`Config::load`]) and checking ([`Config::validate`],
//! [`Config::check_files`]) are separate so that `check-config` can report
//! every problem at once instead of the first.
//!
//! The config holds paths to key material, never the key material itself;
//! the one secret it holds, `coordination.redis_url` (its password), is
//! redacted when printed (see [`Config::to_redacted_yaml`]).

mod coordination;
mod env;
mod feedback;
mod results;
mod validate;

pub use coordination::{CoordinationConfig, DedupConfig, RateLimit, RateScope, redact_redis_url};
pub use feedback::{ConsumerSubscription, FeedbackConfig, FeedbackEncoding, GuardConfig};
pub use results::ResultsConfig;

use env::{EnvPairs, apps_index, describe_figment_error, patch_apps};

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytesize::ByteSize;
use figment::Figment;
use figment::providers::{Format, Serialized, Yaml};
use serde::{Deserialize, Serialize};

pub use validate::ConfigIssue;

/// Prefix of the environment variables that override config keys.
pub const ENV_PREFIX: &str = "PUSH_DISPATCH_";
/// The variable every Google SDK honours to target the Pub/Sub emulator.
pub const EMULATOR_ENV: &str = "PUBSUB_EMULATOR_HOST";

/// The whole configuration (SPEC §4).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The Google Cloud project that owns the topics and subscriptions.
    pub project_id: String,
    /// Pub/Sub resources and flow control.
    pub pubsub: PubsubConfig,
    /// How long SIGTERM waits for in-flight work before nacking the rest.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Sending to providers.
    pub dispatch: DispatchConfig,
    /// The TokenInvalidated feedback topic.
    pub feedback: FeedbackConfig,
    /// The optional PushResult topic.
    pub results: ResultsConfig,
    /// Logs, traces.
    pub telemetry: TelemetryConfig,
    /// The health and metrics server.
    pub server: ServerConfig,
    /// The apps push-dispatch sends for; the first is the default.
    pub apps: Vec<AppConfig>,
    /// Allows `stub:` and `http://` provider endpoints and a non-https
    /// `token_uri` (local stand-ins); false in production.
    pub allow_insecure_endpoints: bool,
    /// The fleet's shared state: in-process (null URL) or Redis.
    pub coordination: CoordinationConfig,
    /// Idempotent requests (`request_id`).
    pub dedup: DedupConfig,
}

/// Pub/Sub resources, delivery policy and flow control.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PubsubConfig {
    /// Topic producers publish `PushRequest`s to.
    pub requests_topic: String,
    /// The dispatch subscription push-dispatch pulls from.
    pub subscription: String,
    /// Where poison and exhausted messages go.
    pub dead_letter_topic: String,
    /// A subscription on the dead-letter topic, for `dlq peek` and `dlq replay`.
    pub dead_letter_subscription: String,
    /// DeadLetterPolicy: deliveries before Pub/Sub dead-letters a message (5..=100).
    pub max_delivery_attempts: u32,
    /// RetryPolicy minimum backoff after a nack.
    #[serde(with = "humantime_serde")]
    pub retry_min_backoff: Duration,
    /// RetryPolicy maximum backoff after a nack.
    #[serde(with = "humantime_serde")]
    pub retry_max_backoff: Duration,
    /// The subscription's ack deadline (the client extends leases on top).
    #[serde(with = "humantime_serde")]
    pub ack_deadline: Duration,
    /// Exactly-once delivery on the subscription (confirmed acks).
    pub exactly_once: bool,
    /// Whether `run` creates or updates the resources before pulling.
    pub provision: bool,
    /// Parallel streaming pulls.
    pub streams: u32,
    /// Messages leased at once by the whole process.
    pub max_outstanding_messages: u32,
    /// Bytes leased at once by the whole process.
    pub max_outstanding_bytes: ByteSize,
    /// `host:port` of the Pub/Sub emulator; defaults to `PUBSUB_EMULATOR_HOST`.
    pub emulator_host: Option<String>,
    /// Cloud KMS key (CMEK) for the topics provision creates.
    pub kms_key_name: Option<String>,
}

/// Circuit breaker settings (SPEC §5.8).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CircuitConfig {
    /// Share of provider-level failures that opens the circuit.
    pub failure_ratio: f64,
    /// Requests needed before the circuit may open.
    pub min_requests: u32,
    /// How long the circuit stays open before probing.
    #[serde(with = "humantime_serde")]
    pub open_for: Duration,
}

/// Sending to providers.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DispatchConfig {
    /// Sends in flight for the whole process.
    pub concurrency: u32,
    /// Timeout of one provider request.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Longest backoff waited in process before handing back to Pub/Sub.
    #[serde(with = "humantime_serde")]
    pub max_in_process_wait: Duration,
    /// How long a target waits after an FCM `QUOTA_EXCEEDED` that came
    /// without `Retry-After` (FCM's advice: at least a minute). A
    /// `Retry-After` from FCM is honoured as given instead.
    #[serde(with = "humantime_serde")]
    pub quota_wait: Duration,
    /// `push_attempt` limit for republished remainders.
    pub max_republish: u32,
    /// Share of `concurrency` one app and platform may hold (its bulkhead).
    pub provider_share: f64,
    /// Smallest bulkhead of one app and platform, in sends.
    pub provider_min: u32,
    /// Longest wait for which a message is parked (its lease kept) before
    /// it is nacked; longer waits republish the targets with `push_not_before`.
    #[serde(with = "humantime_serde")]
    pub max_park: Duration,
    /// How often a request may be put off only to wait (rate limit, open
    /// circuit, Retry-After) before it is dead-lettered.
    pub max_deferrals: u32,
    /// Circuit breaker per provider and app.
    pub circuit: CircuitConfig,
}

/// Log output format.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line, in Cloud Logging's structured format.
    Json,
    /// Human-readable lines for local runs.
    Text,
}

/// OTLP transport.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OtlpProtocol {
    /// OTLP/gRPC (port 4317 by convention).
    Grpc,
    /// OTLP/HTTP with protobuf bodies (port 4318; `/v1/traces` is appended).
    Http,
}

/// How OTLP requests authenticate.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OtlpAuth {
    /// No credentials (a collector in the cluster).
    None,
    /// A Google OAuth bearer from Application Default Credentials (scope
    /// `trace.append`), for `https://telemetry.googleapis.com` over HTTP.
    Google,
}

/// Logs and traces.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// `json` (Cloud Logging) or `text`.
    pub log_format: LogFormat,
    /// A tracing filter: `info`, `debug`, `push_dispatch=debug,info`, …
    pub log_level: String,
    /// OTLP endpoint for traces, e.g. `http://otel-collector:4317`; null disables export.
    pub otlp_endpoint: Option<String>,
    /// `grpc` or `http`.
    pub otlp_protocol: OtlpProtocol,
    /// `none` or `google`.
    pub otlp_auth: OtlpAuth,
    /// Share of root traces sampled.
    pub sample_ratio: f64,
}

/// The HTTP server for probes and metrics.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address of `/healthz`, `/readyz` and `/metrics`.
    pub listen: SocketAddr,
}

/// One app: a bundle id / Firebase project pair that requests name in `app`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    /// The name requests use in `app`.
    pub name: String,
    /// APNs settings; absent disables APNs for this app.
    #[serde(default)]
    pub apns: Option<ApnsConfig>,
    /// FCM settings; absent disables FCM for this app.
    #[serde(default)]
    pub fcm: Option<FcmConfig>,
}

/// APNs token-auth settings of an app.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ApnsConfig {
    /// `https://api.push.apple.com`, `https://api.sandbox.push.apple.com`, or a
    /// local stand-in (`http://` means h2c).
    pub endpoint: String,
    /// The `.p8` signing key from the Apple developer account.
    pub key_file: PathBuf,
    /// The key's 10-character id (`kid`).
    pub key_id: String,
    /// The 10-character team id (`iss`).
    pub team_id: String,
    /// The app's bundle id (`apns-topic`).
    pub topic: String,
    /// `production` or `sandbox`, as feedback events name it; null = derived
    /// from the endpoint host (`api.push.apple.com` is production).
    #[serde(default)]
    pub environment: Option<ApnsEnvironment>,
    /// HTTP/2 connections to APNs.
    #[serde(default = "default_apns_connections")]
    pub connections: u32,
    /// An extra root CA (a sandbox with TLS).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Pushes per second (`N` for this pod, or `{per_second, scope: pod |
    /// fleet, fallback_per_second}`); null = unlimited.
    #[serde(default)]
    pub rate_limit: Option<RateLimit>,
}

/// The APNs environment a device token belongs to.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ApnsEnvironment {
    /// `api.push.apple.com`.
    Production,
    /// `api.sandbox.push.apple.com` (development builds).
    Sandbox,
}

impl ApnsEnvironment {
    /// `production` or `sandbox`.
    pub fn as_str(self) -> &'static str {
        match self {
            ApnsEnvironment::Production => "production",
            ApnsEnvironment::Sandbox => "sandbox",
        }
    }

    /// The environment an endpoint's host implies: production for Apple's
    /// production host, sandbox for anything else.
    pub fn of_endpoint(endpoint: &str) -> ApnsEnvironment {
        let host = endpoint
            .split("://")
            .nth(1)
            .unwrap_or(endpoint)
            .split(['/', ':'])
            .next()
            .unwrap_or("");
        if host == "api.push.apple.com" {
            ApnsEnvironment::Production
        } else {
            ApnsEnvironment::Sandbox
        }
    }
}

impl ApnsConfig {
    /// The effective environment: `environment`, else derived from the endpoint.
    pub fn effective_environment(&self) -> ApnsEnvironment {
        self.environment
            .unwrap_or_else(|| ApnsEnvironment::of_endpoint(&self.endpoint))
    }
}

/// FCM HTTP v1 settings of an app.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FcmConfig {
    /// `https://fcm.googleapis.com` or a local stand-in.
    #[serde(default = "default_fcm_endpoint")]
    pub endpoint: String,
    /// The Firebase project id.
    pub project_id: String,
    /// A service-account JSON; null = Application Default Credentials.
    #[serde(default)]
    pub credentials_file: Option<PathBuf>,
    /// HTTP/2 connections to FCM.
    #[serde(default = "default_fcm_connections")]
    pub connections: u32,
    /// An extra root CA (a sandbox with TLS).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Pushes per second (`N` for this pod: project quota ÷ replicas; or
    /// `{per_second, scope: fleet}` for the project); null = unlimited.
    #[serde(default)]
    pub rate_limit: Option<RateLimit>,
}

fn default_apns_connections() -> u32 {
    2
}

fn default_fcm_connections() -> u32 {
    2
}

fn default_fcm_endpoint() -> String {
    "https://fcm.googleapis.com".into()
}

impl Default for Config {
    fn default() -> Self {
        Config {
            project_id: "local-project".into(),
            pubsub: PubsubConfig::default(),
            shutdown_grace: Duration::from_secs(30),
            dispatch: DispatchConfig::default(),
            feedback: FeedbackConfig::default(),
            results: ResultsConfig::default(),
            telemetry: TelemetryConfig::default(),
            server: ServerConfig::default(),
            apps: Vec::new(),
            allow_insecure_endpoints: false,
            coordination: CoordinationConfig::default(),
            dedup: DedupConfig::default(),
        }
    }
}

impl Default for PubsubConfig {
    fn default() -> Self {
        PubsubConfig {
            requests_topic: "push-requests".into(),
            subscription: "push-requests-dispatch".into(),
            dead_letter_topic: "push-requests-dlq".into(),
            dead_letter_subscription: "push-requests-dlq-inspect".into(),
            max_delivery_attempts: 20,
            retry_min_backoff: Duration::from_secs(10),
            retry_max_backoff: Duration::from_secs(600),
            ack_deadline: Duration::from_secs(60),
            exactly_once: false,
            provision: true,
            streams: 4,
            max_outstanding_messages: 1000,
            max_outstanding_bytes: ByteSize::mib(64),
            emulator_host: None,
            kms_key_name: None,
        }
    }
}

impl Default for DispatchConfig {
    fn default() -> Self {
        DispatchConfig {
            concurrency: 512,
            request_timeout: Duration::from_secs(10),
            max_in_process_wait: Duration::from_secs(5),
            quota_wait: Duration::from_secs(60),
            max_republish: 5,
            provider_share: 0.25,
            provider_min: 8,
            max_park: Duration::from_secs(60),
            max_deferrals: 10,
            circuit: CircuitConfig::default(),
        }
    }
}

impl Default for CircuitConfig {
    fn default() -> Self {
        CircuitConfig {
            failure_ratio: 0.5,
            min_requests: 50,
            open_for: Duration::from_secs(30),
        }
    }
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            log_format: LogFormat::Json,
            log_level: "info".into(),
            otlp_endpoint: None,
            otlp_protocol: OtlpProtocol::Grpc,
            otlp_auth: OtlpAuth::None,
            sample_ratio: 0.1,
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
        }
    }
}

/// The config could not be loaded or is invalid.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file is missing.
    #[error(
        "config file {path} does not exist; pass --config PATH, or copy config.yaml from the repository"
    )]
    MissingFile {
        /// The path that was tried.
        path: PathBuf,
    },
    /// A key has the wrong type, is unknown, or the YAML is malformed.
    #[error("{0}")]
    Parse(String),
    /// One or more keys have invalid values.
    #[error("invalid config:\n{}", .0.iter().map(|i| format!("  - {i}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<ConfigIssue>),
}

impl Config {
    /// Loads `path` (YAML), then `PUSH_DISPATCH_…` variables from `env`, fills
    /// `pubsub.emulator_host` from `PUBSUB_EMULATOR_HOST`, and validates.
    ///
    /// `env` is a list of `(name, value)` pairs so that tests need not touch
    /// the process environment; pass `std::env::vars()` in the binary.
    pub fn load(
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let config = Config::load_unvalidated(path, env)?;
        let issues = config.validate();
        if issues.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid(issues))
        }
    }

    /// Like [`Config::load`], without [`Config::validate`].
    pub fn load_unvalidated(
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        if !path.exists() {
            return Err(ConfigError::MissingFile {
                path: path.to_path_buf(),
            });
        }
        let env: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX) || k == EMULATOR_ENV)
            .collect();
        let emulator = env
            .iter()
            .find(|(k, _)| k == EMULATOR_ENV)
            .map(|(_, v)| v.clone())
            .filter(|v| !v.is_empty());
        // figment's Env provider reads the process environment; to keep loading
        // testable we feed it the given pairs through a Serialized provider.
        let base =
            Figment::from(Serialized::defaults(Config::default())).merge(Yaml::file_exact(path));
        // `PUSH_DISPATCH_APPS__0__FCM__RATE_LIMIT` changes one key of the first
        // app: figment would read `apps.0` as a map replacing the whole list,
        // so indexed keys are applied onto the file's list here.
        let (indexed, plain): (Vec<_>, Vec<_>) =
            env.into_iter().partition(|(k, _)| apps_index(k).is_some());
        let mut figment = base.clone();
        if !indexed.is_empty() {
            let apps = patch_apps(&base, &indexed)?;
            figment = figment.merge(Serialized::default("apps", apps));
        }
        let mut config: Config = figment
            .merge(EnvPairs(plain))
            .extract()
            .map_err(|e| ConfigError::Parse(describe_figment_error(&e, path)))?;
        if config.pubsub.emulator_host.is_none() {
            config.pubsub.emulator_host = emulator;
        }
        Ok(config)
    }

    /// Every invalid value, each naming its key and the fix. Empty when valid.
    pub fn validate(&self) -> Vec<ConfigIssue> {
        validate::validate(self)
    }

    /// Checks that the files the config names exist and hold what they
    /// should (APNs `.p8` key, CA files, FCM service-account JSON), without
    /// ever printing their contents.
    pub fn check_files(&self) -> Vec<ConfigIssue> {
        validate::check_files(self)
    }

    /// The effective config as YAML. It holds only paths to secrets, never
    /// their contents, and the Redis URL's password is replaced by `***`,
    /// so it is safe to print.
    pub fn to_redacted_yaml(&self) -> String {
        let mut shown = self.clone();
        shown.coordination.redis_url = shown
            .coordination
            .redis_url
            .as_deref()
            .map(redact_redis_url);
        serde_yaml::to_string(&shown).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }

    /// The default app (the first one).
    pub fn default_app(&self) -> Option<&AppConfig> {
        self.apps.first()
    }
}
