//! Development credentials for the sandbox, made in pure Rust (aws-lc-rs), so
//! that `make run` and the tests need no openssl:
//! - an APNs token-auth key, `AuthKey_SANDBOXK01.p8` (PKCS#8 PEM, P-256), with
//!   key id [`DEV_KEY_ID`] and team id [`DEV_TEAM_ID`];
//! - a Google service-account JSON, `service-account.json` (`type`,
//!   `project_id`, `private_key_id`, `private_key` as PKCS#8 PEM RSA-2048,
//!   `client_email`, `token_uri`, …), whose `token_uri` points at the sandbox.
//!
//! [`ensure`] reuses files that exist (keys are never replaced; a service
//! account's `token_uri`, `project_id` and `client_email` are updated in place
//! when they differ), so credentials survive restarts. Files are written
//! atomically, mode 0600 on Unix. Nothing here is a secret worth protecting —
//! the sandbox is the only party that trusts these keys — but they are never
//! logged all the same.
//!
//! The sandbox's port is often known only after it started; the OAuth stand-in
//! therefore accepts assertions whose `aud` is any URL of its own `/token`, and
//! calling [`ensure`] again with the real URL rewrites `token_uri` only.

use std::io::Write;
use std::path::{Path, PathBuf};

use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, RsaKeyPair};
use base64::Engine;
use rustls::pki_types::PrivatePkcs8KeyDer;
use rustls::pki_types::pem::PemObject;
use serde_json::{Map, Value, json};

use crate::config::{ApnsSandboxConfig, FcmSandboxConfig};

/// Key id of the generated APNs key (10 characters, like Apple's).
pub const DEV_KEY_ID: &str = "SANDBOXK01";
/// Team id that goes with the generated APNs key.
pub const DEV_TEAM_ID: &str = "SANDBOXT01";
/// File name of the generated APNs key, Apple's naming.
pub const APNS_KEY_FILE_NAME: &str = "AuthKey_SANDBOXK01.p8";
/// File name of the generated service account.
pub const SERVICE_ACCOUNT_FILE_NAME: &str = "service-account.json";

/// Where the development credentials are and what the clients must send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevCredentials {
    /// The APNs `.p8` key (PKCS#8 PEM, P-256).
    pub apns_key_file: PathBuf,
    /// JWT `kid` for that key.
    pub key_id: String,
    /// JWT `iss` for that key.
    pub team_id: String,
    /// The service-account JSON (for gcp_auth's `CustomServiceAccount::from_file`).
    pub service_account_file: PathBuf,
    /// The service account's `client_email` (the assertion's `iss`).
    pub client_email: String,
}

impl DevCredentials {
    /// The sandbox's APNs config for these credentials and `topic`.
    pub fn apns_config(&self, topic: &str) -> ApnsSandboxConfig {
        ApnsSandboxConfig {
            key_file: self.apns_key_file.clone(),
            key_id: self.key_id.clone(),
            team_id: self.team_id.clone(),
            topic: topic.to_string(),
        }
    }

    /// The sandbox's FCM config for these credentials and `project_id`.
    pub fn fcm_config(&self, project_id: &str) -> FcmSandboxConfig {
        FcmSandboxConfig {
            project_id: project_id.to_string(),
            service_account_file: self.service_account_file.clone(),
        }
    }

    /// An APNs provider token (ES256 JWT) signed with the dev key, issued at `iat`
    /// (seconds since the Unix epoch); for tests and load generators.
    pub fn apns_provider_token(&self, iat: i64) -> Result<String, DevKeysError> {
        apns_provider_token(&self.apns_key_file, &self.key_id, &self.team_id, iat)
    }
}

/// Why development credentials could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum DevKeysError {
    /// The directory could not be created.
    #[error("dev credentials: cannot create directory {path}: {source}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A file could not be read.
    #[error("dev credentials: cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A file could not be written.
    #[error("dev credentials: cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// An existing file is not what it should be.
    #[error("dev credentials: {path} is unusable: {reason} (delete it to get a fresh one)")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The crypto library failed to make or use a key.
    #[error("dev credentials: {0}")]
    Crypto(String),
}

/// Makes (or reuses) the APNs key and the service account in `dir`.
///
/// `token_uri` is the sandbox's `/token` URL (e.g. `http://127.0.0.1:8085/token`);
/// `project_id` goes into the service account and its `client_email`.
pub fn ensure(
    dir: &Path,
    token_uri: &str,
    project_id: &str,
) -> Result<DevCredentials, DevKeysError> {
    std::fs::create_dir_all(dir).map_err(|source| DevKeysError::CreateDir {
        path: dir.to_path_buf(),
        source,
    })?;
    let apns_key_file = dir.join(APNS_KEY_FILE_NAME);
    ensure_apns_key(&apns_key_file)?;
    let service_account_file = dir.join(SERVICE_ACCOUNT_FILE_NAME);
    let client_email = ensure_service_account(&service_account_file, token_uri, project_id)?;
    Ok(DevCredentials {
        apns_key_file,
        key_id: DEV_KEY_ID.to_string(),
        team_id: DEV_TEAM_ID.to_string(),
        service_account_file,
        client_email,
    })
}

/// An APNs provider token (ES256 JWT: header `alg`, `kid`; claims `iss`, `iat`)
/// signed with the `.p8` key at `key_file`.
pub fn apns_provider_token(
    key_file: &Path,
    key_id: &str,
    team_id: &str,
    iat: i64,
) -> Result<String, DevKeysError> {
    let pem = read(key_file)?;
    let pair = ec_key(key_file, &pem)?;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = json!({ "alg": "ES256", "kid": key_id });
    let claims = json!({ "iss": team_id, "iat": iat });
    let mut jwt = b64.encode(header.to_string());
    jwt.push('.');
    jwt.push_str(&b64.encode(claims.to_string()));
    let signature = pair
        .sign(&SystemRandom::new(), jwt.as_bytes())
        .map_err(|e| DevKeysError::Crypto(format!("ES256 signing failed: {e}")))?;
    jwt.push('.');
    jwt.push_str(&b64.encode(signature.as_ref()));
    Ok(jwt)
}

fn ensure_apns_key(path: &Path) -> Result<(), DevKeysError> {
    if path.exists() {
        return ec_key(path, &read(path)?).map(|_| ());
    }
    let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
        .map_err(|e| DevKeysError::Crypto(format!("P-256 key generation failed: {e}")))?;
    let der = pair
        .to_pkcs8v1()
        .map_err(|e| DevKeysError::Crypto(format!("P-256 key encoding failed: {e}")))?;
    write_atomically(path, pem("PRIVATE KEY", der.as_ref()).as_bytes())
}

fn ensure_service_account(
    path: &Path,
    token_uri: &str,
    project_id: &str,
) -> Result<String, DevKeysError> {
    let client_email = format!("push-dispatch-sandbox@{project_id}.iam.gserviceaccount.com");
    let mut account = if path.exists() {
        let text = read(path)?;
        let invalid = |reason: String| DevKeysError::Invalid {
            path: path.to_path_buf(),
            reason,
        };
        let value: Value =
            serde_json::from_slice(&text).map_err(|e| invalid(format!("not JSON: {e}")))?;
        let Value::Object(account) = value else {
            return Err(invalid("not a JSON object".into()));
        };
        let key = account
            .get("private_key")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("no `private_key`".into()))?;
        rsa_key(path, key.as_bytes())?;
        account
    } else {
        new_service_account()?
    };
    let wanted = [
        ("token_uri", token_uri),
        ("project_id", project_id),
        ("client_email", client_email.as_str()),
    ];
    let stale = wanted
        .iter()
        .any(|(k, v)| account.get(*k).and_then(Value::as_str) != Some(*v));
    if stale || !path.exists() {
        for (k, v) in wanted {
            account.insert(k.to_string(), Value::String(v.to_string()));
        }
        let text = serde_json::to_string_pretty(&Value::Object(account))
            .map_err(|e| DevKeysError::Crypto(format!("service account encoding failed: {e}")))?;
        write_atomically(path, text.as_bytes())?;
    }
    Ok(client_email)
}

fn new_service_account() -> Result<Map<String, Value>, DevKeysError> {
    let pair = RsaKeyPair::generate(KeySize::Rsa2048)
        .map_err(|e| DevKeysError::Crypto(format!("RSA key generation failed: {e}")))?;
    let der: Pkcs8V1Der<'_> = pair
        .as_der()
        .map_err(|e| DevKeysError::Crypto(format!("RSA key encoding failed: {e}")))?;
    let key_id: String = rand::random::<[u8; 20]>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let account = json!({
        "type": "service_account",
        "private_key_id": key_id,
        "private_key": pem("PRIVATE KEY", der.as_ref()),
        "client_id": "100000000000000000000",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
        "universe_domain": "googleapis.com",
    });
    match account {
        Value::Object(map) => Ok(map),
        _ => Err(DevKeysError::Crypto(
            "service account encoding failed".into(),
        )),
    }
}

fn read(path: &Path) -> Result<Vec<u8>, DevKeysError> {
    std::fs::read(path).map_err(|source| DevKeysError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn ec_key(path: &Path, pem: &[u8]) -> Result<EcdsaKeyPair, DevKeysError> {
    let invalid = |reason: String| DevKeysError::Invalid {
        path: path.to_path_buf(),
        reason,
    };
    let der = PrivatePkcs8KeyDer::from_pem_slice(pem)
        .map_err(|e| invalid(format!("not a PKCS#8 PEM key: {e}")))?;
    EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der.secret_pkcs8_der())
        .map_err(|e| invalid(format!("not a P-256 key: {e}")))
}

fn rsa_key(path: &Path, pem: &[u8]) -> Result<RsaKeyPair, DevKeysError> {
    let invalid = |reason: String| DevKeysError::Invalid {
        path: path.to_path_buf(),
        reason,
    };
    let der = PrivatePkcs8KeyDer::from_pem_slice(pem)
        .map_err(|e| invalid(format!("`private_key` is not a PKCS#8 PEM key: {e}")))?;
    RsaKeyPair::from_pkcs8(der.secret_pkcs8_der())
        .map_err(|e| invalid(format!("`private_key` is not an RSA key: {e}")))
}

/// PEM with 64-column lines.
fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Writes `contents` to a temporary file beside `path`, then renames it.
fn write_atomically(path: &Path, contents: &[u8]) -> Result<(), DevKeysError> {
    let err = |source| DevKeysError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&tmp).map_err(err)?;
    file.write_all(contents).map_err(err)?;
    file.sync_all().map_err(err)?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ensure_creates_then_reuses_and_updates_token_uri() {
        let dir = tempfile::tempdir().unwrap();
        let first = ensure(dir.path(), "http://127.0.0.1:1/token", "proj-a").unwrap();
        let key_before = std::fs::read(&first.apns_key_file).unwrap();
        let sa_before: Value =
            serde_json::from_slice(&std::fs::read(&first.service_account_file).unwrap()).unwrap();
        assert_eq!(sa_before["type"], "service_account");
        assert_eq!(sa_before["token_uri"], "http://127.0.0.1:1/token");
        assert_eq!(sa_before["client_email"], first.client_email.as_str());

        let second = ensure(dir.path(), "http://127.0.0.1:2/token", "proj-a").unwrap();
        assert_eq!(std::fs::read(&second.apns_key_file).unwrap(), key_before);
        let sa_after: Value =
            serde_json::from_slice(&std::fs::read(&second.service_account_file).unwrap()).unwrap();
        assert_eq!(sa_after["token_uri"], "http://127.0.0.1:2/token");
        assert_eq!(sa_after["private_key"], sa_before["private_key"]);
        assert_eq!(sa_after["private_key_id"], sa_before["private_key_id"]);
    }

    #[test]
    fn refuses_a_corrupt_key_instead_of_replacing_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(APNS_KEY_FILE_NAME), "junk").unwrap();
        let err = ensure(dir.path(), "http://x/token", "p").unwrap_err();
        assert!(matches!(err, DevKeysError::Invalid { .. }), "{err}");
    }

    #[test]
    fn provider_token_has_three_parts() {
        let dir = tempfile::tempdir().unwrap();
        let creds = ensure(dir.path(), "http://x/token", "p").unwrap();
        let jwt = creds.apns_provider_token(1_700_000_000).unwrap();
        assert_eq!(jwt.split('.').count(), 3);
    }
}
