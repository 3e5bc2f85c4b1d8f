//! Access tokens: signing keys, issuance and validation (RFC 9068 JWTs), and the operator
//! blocks validation enforces.

pub mod assertion;
pub mod binding;
mod blocks;
mod breaker;
pub mod cache;
mod client_reset;
pub mod dpop;
mod error;
pub mod es256;
#[doc(hidden)]
pub mod es256_diff;
mod external;
pub mod issue;
pub mod jws;
pub mod keys;
mod principal;
pub mod validate;

/// Clock-skew allowance in seconds for exp, nbf and iat, applied the same on a hit and a miss.
pub const LEEWAY_SECS: u64 = 5;

use serde::{Deserialize, Serialize};

/// The claims of an RFC 9068 access token, as signed and as verified.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccessClaims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub exp: u64,
    pub iat: u64,
    pub jti: String,
    pub client_id: String,
    #[serde(default)]
    pub scope: String,
    /// The grant that minted it, when no user consented (`client_credentials`, also when
    /// `sub` is the client's linked user): RFC 9700 §4.15. Auth0's claim name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gty: Option<String>,
    /// The key the token is bound to (RFC 7800 `cnf`; RFC 8705 §3.1, RFC 9449 §6.1),
    /// parsed strictly: a `cnf` that is not exactly one known member refuses the token.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "binding::present")]
    pub cnf: Option<binding::Binding>,
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// SHA-256 of some bytes; the cache key of a token and the stored form of opaque secrets.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// `n` random bytes from the system CSPRNG, base64url without padding.
pub fn random_token(n: usize) -> String {
    use base64::Engine;
    let mut buf = vec![0u8; n];
    // aws-lc's RNG only fails if the OS RNG is unusable; a zeroed id would be worse than an abort.
    if aws_lc_rs::rand::fill(&mut buf).is_err() {
        panic!("system random number generator failed");
    }
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf)
}
