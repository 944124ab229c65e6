//! Command-line arguments (clap), as SPEC §3 fixes them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Pub/Sub worker that sends APNs and FCM pushes and reports dead device tokens.
#[derive(Debug, Parser)]
#[command(name = "push-dispatch", version, about)]
pub struct Cli {
    /// The config file (YAML); `PUSH_DISPATCH_…` variables override its keys.
    #[arg(long, global = true, default_value = "config.yaml")]
    pub config: PathBuf,
    /// What to do; `run` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the worker (the default).
    Run,
    /// Create or update the topics and subscriptions; idempotent.
    Provision {
        /// Only report what would change.
        #[arg(long)]
        dry_run: bool,
    },
    /// Publish one PushRequest to the requests topic and print its message id.
    Send(SendArgs),
    /// Validate the config and the files it names; print the effective config.
    CheckConfig {
        /// Also ask each provider, with one push to a device token that
        /// cannot exist: proves the endpoint, the credentials and the topic
        /// or project (nothing is delivered).
        #[arg(long)]
        online: bool,
    },
    /// Run the local APNs, FCM and OAuth stand-ins (for `make run`, tests, benchmarks).
    Sandbox(SandboxArgs),
    /// Inspect or replay the dead-letter queue.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Snapshot a subscription before a risky deploy; seek back after a bad one.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
}

/// `snapshot` subcommands (disaster recovery; docs/operations.md).
#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Snapshot a subscription: which of its messages are unacked now.
    Create {
        /// The snapshot's name.
        name: String,
        /// The subscription (short name); default: the dispatch subscription.
        #[arg(long)]
        subscription: Option<String>,
    },
    /// Seek a subscription back to a snapshot, or to a time: what was
    /// acked after it is delivered again.
    #[command(group(clap::ArgGroup::new("to").required(true).args(["name", "time"])))]
    Seek {
        /// The snapshot to seek to.
        name: Option<String>,
        /// Or a time (RFC 3339, e.g. 2026-12-03T10:00:00Z): messages
        /// published after it are delivered again, as far as retention keeps them.
        #[arg(long, value_parser = parse_rfc3339)]
        time: Option<std::time::SystemTime>,
        /// The subscription (short name); default: the dispatch subscription.
        #[arg(long)]
        subscription: Option<String>,
    },
    /// List the project's snapshots and when they expire.
    List,
    /// Delete a snapshot.
    Delete {
        /// The snapshot's name.
        name: String,
    },
}

fn parse_rfc3339(s: &str) -> Result<std::time::SystemTime, String> {
    humantime::parse_rfc3339_weak(s).map_err(|e| format!("{e}; write e.g. 2026-12-03T10:00:00Z"))
}

/// `dlq` subcommands.
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Show dead-lettered messages with their reasons and delivery counts (nothing is removed).
    Peek {
        /// At most this many messages.
        #[arg(long, default_value_t = 20)]
        max: usize,
    },
    /// Move dead-lettered messages back onto the requests topic.
    Replay {
        /// At most this many messages.
        #[arg(long, default_value_t = 100)]
        max: usize,
        /// Only messages whose `push_error` is this code (e.g. invalidation_guard).
        #[arg(long, value_name = "CODE")]
        push_error: Option<String>,
        /// Only show what would be replayed.
        #[arg(long)]
        dry_run: bool,
    },
    /// Delete dead-lettered messages for good (after inspecting them with
    /// `peek`): those of one `push_error`, or `--all`.
    #[command(group(clap::ArgGroup::new("which").required(true).args(["push_error", "all"])))]
    Purge {
        /// At most this many messages.
        #[arg(long, default_value_t = 100)]
        max: usize,
        /// Only messages whose `push_error` is this code (e.g. decode_json).
        #[arg(long, value_name = "CODE")]
        push_error: Option<String>,
        /// Every message, whatever its push_error.
        #[arg(long)]
        all: bool,
        /// Only show what would be deleted.
        #[arg(long)]
        dry_run: bool,
    },
}

/// Arguments of `sandbox`.
#[derive(Debug, Args)]
pub struct SandboxArgs {
    /// h2c (and HTTP/1.1) address for APNs, FCM, OAuth and /sandbox/*.
    #[arg(long, default_value = "127.0.0.1:9443")]
    pub listen: SocketAddr,
    /// Also serve TLS here, with a self-signed certificate written to DIR/sandbox-cert.pem.
    #[arg(long)]
    pub tls_listen: Option<SocketAddr>,
    /// Where the development credentials (APNs key, service account) are kept or made.
    #[arg(long, default_value = ".dev")]
    pub dir: PathBuf,
    /// The bundle id APNs accepts.
    #[arg(long, default_value = "com.example.app")]
    pub topic: String,
    /// The Firebase project FCM accepts.
    #[arg(long, default_value = "example-firebase-project")]
    pub fcm_project: String,
    /// Fault: share of accepted requests answered 500/503 instead (0..1).
    #[arg(long, default_value_t = 0.0)]
    pub failure_rate: f64,
    /// Fault: share of accepted requests answered 429 instead (0..1).
    #[arg(long, default_value_t = 0.0)]
    pub retry_after_rate: f64,
    /// Fault: latency added to every answer, e.g. 20ms.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub latency: Option<Duration>,
    /// Fault: HTTP/2 GOAWAY after every N requests on a connection.
    #[arg(long)]
    pub goaway_every: Option<u32>,
    /// Fault: `Retry-After` seconds on FCM 429s (random and `quota-`).
    #[arg(long, default_value_t = 30)]
    pub retry_after_secs: u32,
    /// Fault: expire every APNs provider token seen so far, again every
    /// DURATION (as Apple does to a token past 60 minutes, or one it revoked).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub expire_provider_tokens_every: Option<Duration>,
    /// Black hole: accept TCP connections and never send a byte (no TLS,
    /// no HTTP/2), like a firewall or an exhausted NAT.
    #[arg(long)]
    pub blackhole: bool,
    /// Black hole for streams: complete TLS and HTTP/2, never answer an
    /// APNs or FCM request.
    #[arg(long)]
    pub blackhole_streams: bool,
    /// Fault: the OAuth token endpoint accepts each request and never answers
    /// (a hung identity provider); APNs and FCM are unaffected.
    #[arg(long)]
    pub oauth_hang: bool,
}

/// A target platform on the command line.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum PlatformArg {
    /// Apple Push Notification service.
    Apns,
    /// Firebase Cloud Messaging.
    Fcm,
}

/// Arguments of `send`.
#[derive(Debug, Args)]
pub struct SendArgs {
    /// The request as proto3 JSON (a file, or - for standard input); other flags then only override.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Platform of the --token targets.
    #[arg(long, value_enum)]
    pub platform: Option<PlatformArg>,
    /// A device token (repeat for several devices).
    #[arg(long = "token")]
    pub tokens: Vec<String>,
    /// Notification title.
    #[arg(long)]
    pub title: Option<String>,
    /// Notification body.
    #[arg(long)]
    pub body: Option<String>,
    /// Custom data, `key=value` (repeatable).
    #[arg(long = "data", value_name = "KEY=VALUE")]
    pub data: Vec<String>,
    /// The configured app; the default app when omitted.
    #[arg(long)]
    pub app: Option<String>,
    /// The producer's request id; random when omitted.
    #[arg(long)]
    pub request_id: Option<String>,
    /// The recipient (opaque user id).
    #[arg(long)]
    pub recipient: Option<String>,
    /// Publish binary protobuf instead of JSON.
    #[arg(long)]
    pub binary: bool,
    /// How long the push stays deliverable, e.g. `30s`, `1h` (ttl).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub ttl: Option<std::time::Duration>,
    /// Delivery priority.
    #[arg(long, value_enum)]
    pub priority: Option<PriorityArg>,
    /// Collapse key: the device shows only the newest push with the same key.
    #[arg(long)]
    pub collapse_key: Option<String>,
    /// Publish even if the worker would dead-letter the request (unknown
    /// app, malformed token, …): for testing the dead-letter path.
    #[arg(long)]
    pub no_check: bool,
}

/// `--priority`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum PriorityArg {
    /// Delivered at once, waking the device (APNs 10, FCM HIGH).
    High,
    /// May be batched to save power (APNs 5, FCM NORMAL).
    Normal,
}
