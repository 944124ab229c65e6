//! What a sandbox is started with: where it listens, the APNs key and the
//! Firebase project (with its service account) it accepts, the initial
//! fault flags, and the black holes (for the whole instance). Plain data, read from YAML/JSON or built in code
//! ([`SandboxConfig::local`]); [`crate::Sandbox::start`] checks it.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::faults::Faults;

/// Everything a sandbox needs to start: where to listen, which credentials the
/// clients must use, and the initial fault flags.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxConfig {
    /// h2c (HTTP/2 prior knowledge) and HTTP/1.1 listener; port 0 picks a free port.
    pub listen: SocketAddr,
    /// TLS listener (ALPN `h2`, `http/1.1`) with a self-signed leaf certificate, if any.
    #[serde(default)]
    pub tls_listen: Option<SocketAddr>,
    /// Where to write the self-signed certificate as PEM (TLS only), for clients' `ca_file`.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// The APNs provider key and topic the APNs stand-in accepts.
    pub apns: ApnsSandboxConfig,
    /// The Firebase project and service account the FCM and OAuth stand-ins accept.
    pub fcm: FcmSandboxConfig,
    /// Initial fault flags; [`Faults::default`] injects none.
    #[serde(default)]
    pub faults: Faults,
    /// Black hole (`--blackhole`): every listener accepts TCP connections
    /// and holds them open without ever sending a byte (no TLS handshake,
    /// no HTTP/2 preface), as a firewall or an exhausted NAT does. The
    /// control endpoints are unreachable too: inspect in process. For the
    /// whole instance; start one per black-holed app.
    #[serde(default)]
    pub blackhole: bool,
    /// Stream black hole (`--blackhole-streams`): TLS and HTTP/2 complete
    /// normally, but no APNs or FCM request stream is ever answered (OAuth
    /// `/token` and `/sandbox/*` still answer, so that an FCM client gets
    /// its token and a test can look). For the whole instance.
    #[serde(default)]
    pub blackhole_streams: bool,
}

impl SandboxConfig {
    /// A config listening on `127.0.0.1:0` (h2c only, no TLS, no faults).
    pub fn local(apns: ApnsSandboxConfig, fcm: FcmSandboxConfig) -> Self {
        Self {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            tls_listen: None,
            cert_file: None,
            apns,
            fcm,
            faults: Faults::default(),
            blackhole: false,
            blackhole_streams: false,
        }
    }
}

/// The APNs token-auth key the sandbox verifies provider tokens against.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApnsSandboxConfig {
    /// PKCS#8 PEM P-256 private key (`AuthKey_XXXXXXXXXX.p8`); its public key verifies JWTs.
    pub key_file: PathBuf,
    /// The JWT header `kid` the clients must send.
    pub key_id: String,
    /// The JWT claim `iss` the clients must send.
    pub team_id: String,
    /// The app's bundle id; `apns-topic` must be this (plus the push type's suffix).
    pub topic: String,
}

/// The Firebase project and the service account whose assertions `/token` accepts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FcmSandboxConfig {
    /// The only project id `messages:send` accepts (others answer SENDER_ID_MISMATCH).
    pub project_id: String,
    /// Google service-account JSON (`client_email`, `private_key`, `token_uri`, …).
    pub service_account_file: PathBuf,
}
