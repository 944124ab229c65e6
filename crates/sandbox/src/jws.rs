//! Compact JWS parsing shared by the APNs provider-token check (ES256) and the
//! OAuth assertion check (RS256).
//!
//! Verification is done by hand on purpose: gcp_auth pads its base64url, which
//! JWT libraries refuse, so decoding here tolerates padding (and only that).

use base64::Engine;
use base64::alphabet::URL_SAFE;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde::de::DeserializeOwned;

const B64URL: GeneralPurpose = GeneralPurpose::new(
    &URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The three parts of a compact JWS, plus the signing input (`header.claims`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Compact<'a> {
    pub signing_input: &'a str,
    pub header: &'a str,
    pub claims: &'a str,
    pub signature: &'a str,
}

/// Splits `header.claims.signature`; `None` unless there are exactly three non-empty parts.
pub(crate) fn split(jwt: &str) -> Option<Compact<'_>> {
    let (signing_input, signature) = jwt.rsplit_once('.')?;
    let (header, claims) = signing_input.split_once('.')?;
    if header.is_empty() || claims.is_empty() || signature.is_empty() || signature.contains('.') {
        return None;
    }
    if claims.contains('.') {
        return None;
    }
    Some(Compact {
        signing_input,
        header,
        claims,
        signature,
    })
}

/// Decodes base64url with or without padding.
pub(crate) fn decode(part: &str) -> Option<Vec<u8>> {
    B64URL.decode(part).ok()
}

/// Decodes a base64url JSON part into `T`.
pub(crate) fn decode_json<T: DeserializeOwned>(part: &str) -> Option<T> {
    serde_json::from_slice(&decode(part)?).ok()
}

/// Encodes base64url without padding (for tokens the sandbox mints).
pub(crate) fn encode(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The JOSE header fields the sandbox looks at.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct Header {
    pub alg: String,
    #[serde(default)]
    pub kid: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_needs_three_parts() {
        assert!(split("a.b.c").is_some());
        assert!(split("a.b").is_none());
        assert!(split("a.b.c.d").is_none());
        assert!(split("a..c").is_none());
        assert_eq!(split("a.b.c").unwrap().signing_input, "a.b");
    }

    #[test]
    fn decode_tolerates_padding() {
        assert_eq!(decode("YQ").unwrap(), b"a");
        assert_eq!(decode("YQ==").unwrap(), b"a");
        assert!(decode("Y!").is_none());
    }
}
