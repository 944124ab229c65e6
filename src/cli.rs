//! Command-line arguments (clap), as SPEC §3 fixes them.

use std::path::PathBuf;

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
    CheckConfig,
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
}
