//! Why a sandbox could not start. Config problems name the key (and the
//! file) to fix.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Why a sandbox could not start.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// A config value is unusable; the message names the key.
    #[error("sandbox config `{key}`: {reason}")]
    Config {
        /// The config key, e.g. `apns.topic`.
        key: &'static str,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// A listener could not be bound.
    #[error("sandbox: cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The APNs `.p8` key could not be read or is not a PKCS#8 P-256 key.
    #[error("sandbox config `apns.key_file` ({path}): {reason}")]
    ApnsKey {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The service-account JSON could not be read or lacks a usable RSA key.
    #[error("sandbox config `fcm.service_account_file` ({path}): {reason}")]
    ServiceAccount {
        /// The service-account file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The TLS certificate or server config could not be built.
    #[error("sandbox TLS setup: {0}")]
    Tls(String),
    /// The certificate PEM could not be written to `cert_file`.
    #[error("sandbox: cannot write certificate to {path}: {source}")]
    WriteCert {
        /// The `cert_file` path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}
