//! A compact JWS (RFC 7515 §7.1) presented to us by a client — a `private_key_jwt` client
//! assertion or a DPoP proof — taken apart before any key is touched: bounded in size,
//! three base64url parts, a header and a payload that are each one JSON object with no
//! member named twice, an asymmetric `alg` (never `none`, never HMAC) and no `crit`.
//! The signature is checked later, once, by the caller with the key the checks chose.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};

use crate::config::JwsAlgorithm;
use crate::issuers::introspection::unique_object;
use crate::issuers::jwks::PublicKey;

/// Why a JWS was refused before its signature was checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JwsError {
    #[error("larger than allowed")]
    TooLarge,
    #[error("not a compact JWS")]
    Malformed,
    /// `none`, an HMAC algorithm, or one not allowed here.
    #[error("algorithm not allowed")]
    Algorithm,
    /// RFC 7515 §4.1.11: we understand no extension, so a `crit` header is refused.
    #[error("critical header")]
    Critical,
}

/// A JWS whose shape and algorithm passed; its signature is not yet verified.
pub struct Jws<'a> {
    pub header: Map<String, Value>,
    pub claims: Map<String, Value>,
    pub alg: JwsAlgorithm,
    /// `header.payload`, what the signature covers.
    signing_input: &'a str,
    signature: Vec<u8>,
}

impl<'a> Jws<'a> {
    /// Take `token` apart; `allowed` are the algorithms acceptable here.
    pub fn parse(token: &'a str, max_len: usize, allowed: &[JwsAlgorithm]) -> Result<Jws<'a>, JwsError> {
        if token.len() > max_len {
            return Err(JwsError::TooLarge);
        }
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err(JwsError::Malformed);
        };
        let object = |part: &str| {
            let bytes = URL_SAFE_NO_PAD.decode(part).map_err(|_| JwsError::Malformed)?;
            unique_object(&bytes).ok_or(JwsError::Malformed)
        };
        let header = object(h)?;
        let alg = header.get("alg").and_then(Value::as_str).ok_or(JwsError::Malformed)?;
        let alg = JwsAlgorithm::parse(alg).filter(|a| allowed.contains(a)).ok_or(JwsError::Algorithm)?;
        if header.contains_key("crit") {
            return Err(JwsError::Critical);
        }
        let claims = object(p)?;
        let signature = URL_SAFE_NO_PAD.decode(s).map_err(|_| JwsError::Malformed)?;
        Ok(Jws { header, claims, alg, signing_input: &token[..h.len() + 1 + p.len()], signature })
    }

    /// A header member as text.
    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.header.get(name).and_then(Value::as_str)
    }

    /// A claim as text.
    pub fn claim_str(&self, name: &str) -> Option<&str> {
        self.claims.get(name).and_then(Value::as_str)
    }

    /// A claim as a whole number of seconds (a JSON integer; fractions are refused).
    pub fn claim_secs(&self, name: &str) -> Option<u64> {
        self.claims.get(name).and_then(Value::as_u64)
    }

    /// The one signature verification.
    pub fn verify(&self, key: &PublicKey) -> bool {
        key.verify(self.alg, self.signing_input.as_bytes(), &self.signature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        URL_SAFE_NO_PAD.encode(s)
    }

    #[test]
    fn refuses_bad_shapes_and_algorithms() {
        let all = JwsAlgorithm::ALL;
        let ok = format!("{}.{}.{}", b64(r#"{"alg":"ES256"}"#), b64(r#"{"a":1}"#), b64("sig"));
        assert!(Jws::parse(&ok, 1000, &all).is_ok());
        assert_eq!(Jws::parse(&ok, 10, &all).err(), Some(JwsError::TooLarge));
        assert_eq!(Jws::parse(&ok, 1000, &[JwsAlgorithm::EdDSA]).err(), Some(JwsError::Algorithm));
        for alg in ["none", "HS256", "es256", ""] {
            let t = format!("{}.{}.{}", b64(&format!(r#"{{"alg":"{alg}"}}"#)), b64("{}"), b64("s"));
            assert_eq!(Jws::parse(&t, 1000, &all).err(), Some(JwsError::Algorithm), "{alg}");
        }
        let crit = format!("{}.{}.{}", b64(r#"{"alg":"ES256","crit":["x"]}"#), b64("{}"), b64("s"));
        assert_eq!(Jws::parse(&crit, 1000, &all).err(), Some(JwsError::Critical));
        let twice = format!("{}.{}.{}", b64(r#"{"alg":"ES256","alg":"none"}"#), b64("{}"), b64("s"));
        assert_eq!(Jws::parse(&twice, 1000, &all).err(), Some(JwsError::Malformed));
        let dup_claim = format!("{}.{}.{}", b64(r#"{"alg":"ES256"}"#), b64(r#"{"a":1,"a":2}"#), b64("s"));
        assert_eq!(Jws::parse(&dup_claim, 1000, &all).err(), Some(JwsError::Malformed));
        for bad in ["a.b", "a.b.c.d", "..", "e30.e30.!!"] {
            assert!(Jws::parse(bad, 1000, &all).is_err(), "{bad}");
        }
    }
}
