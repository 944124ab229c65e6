//! TLS for the sandbox: a self-signed *leaf* certificate (basicConstraints
//! CA:FALSE, SAN 127.0.0.1, ::1 and localhost, serverAuth) made at start with
//! rcgen, and a rustls server config (aws-lc-rs provider) offering ALPN `h2`
//! then `http/1.1`.
//!
//! The certificate is its own trust anchor: clients pass its PEM as `ca_file`.
//! It must be a leaf, because webpki refuses a CA certificate as end entity.

use std::sync::Arc;

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::ServerConfig;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::TlsAcceptor;

use crate::error::SandboxError;

/// A TLS acceptor and the PEM of the certificate it presents.
pub(crate) struct TlsMaterial {
    pub acceptor: TlsAcceptor,
    pub cert_pem: String,
}

/// Makes a fresh self-signed leaf certificate and the acceptor presenting it.
pub(crate) fn self_signed() -> Result<TlsMaterial, SandboxError> {
    let err = |what: &str, e: &dyn std::fmt::Display| SandboxError::Tls(format!("{what}: {e}"));
    let key = KeyPair::generate().map_err(|e| err("generate key", &e))?;
    let mut params = CertificateParams::new(vec![
        "127.0.0.1".to_string(),
        "::1".to_string(),
        "localhost".to_string(),
    ])
    .map_err(|e| err("certificate parameters", &e))?;
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, "push-dispatch sandbox");
    params.distinguished_name = name;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params
        .self_signed(&key)
        .map_err(|e| err("self-sign certificate", &e))?;

    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| err("protocol versions", &e))?
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .map_err(|e| err("server certificate", &e))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsMaterial {
        acceptor: TlsAcceptor::from(Arc::new(config)),
        cert_pem: cert.pem(),
    })
}
