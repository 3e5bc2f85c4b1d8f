//! Minting RFC 9068 access tokens with the active signing key.

use jsonwebtoken::Header;

use super::keys::KeySet;
use super::{AccessClaims, random_token};

/// A signed access token and what the token response reports about it.
pub struct IssuedToken {
    pub access_token: String,
    pub jti: String,
    pub expires_in: u64,
    pub expires_at: u64,
    pub scope: String,
}

#[derive(Debug, thiserror::Error)]
#[error("signing failed: {0}")]
pub struct SignError(#[from] jsonwebtoken::errors::Error);

/// What a grant decided; the token says exactly this.
pub struct Grant<'a> {
    pub issuer: &'a str,
    pub audience: &'a str,
    pub client_id: &'a str,
    pub subject: &'a str,
    pub scopes: &'a [String],
    pub lifetime_secs: u64,
}

/// Sign an access token for `grant` at time `now`.
pub fn issue(keys: &KeySet, grant: &Grant<'_>, now: u64) -> Result<IssuedToken, SignError> {
    let key = keys.signer();
    let mut header = Header::new(key.alg);
    header.typ = Some("at+jwt".to_string());
    header.kid = Some(key.kid.clone());
    let scope = grant.scopes.join(" ");
    let claims = AccessClaims {
        iss: grant.issuer.to_string(),
        sub: grant.subject.to_string(),
        aud: grant.audience.to_string(),
        exp: now + grant.lifetime_secs,
        iat: now,
        jti: random_token(16),
        client_id: grant.client_id.to_string(),
        scope,
    };
    let access_token = jsonwebtoken::encode(&header, &claims, &key.encoding)?;
    Ok(IssuedToken {
        access_token,
        jti: claims.jti,
        expires_in: grant.lifetime_secs,
        expires_at: claims.exp,
        scope: claims.scope,
    })
}
