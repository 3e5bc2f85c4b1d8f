//! Minting RFC 9068 access tokens with the active signing key.

use serde::Serialize;

use super::binding::Binding;
use super::keys::KeySet;
pub use super::keys::SignError;
use super::random_token;

/// A signed access token and what the token response reports about it.
pub struct IssuedToken {
    pub access_token: String,
    pub jti: String,
    pub expires_in: u64,
    pub expires_at: u64,
    pub scope: String,
    /// `Bearer`, or `DPoP` for a DPoP-bound token (RFC 9449 §5); a certificate-bound
    /// token is a `Bearer` token (RFC 8705 §3).
    pub token_type: &'static str,
}

/// What a grant decided; the token says exactly this.
pub struct Grant<'a> {
    pub issuer: &'a str,
    pub audience: &'a str,
    pub client_id: &'a str,
    pub subject: &'a str,
    pub scopes: &'a [String],
    pub lifetime_secs: u64,
    /// The key the token is bound to (`cnf`), when the client is sender-constrained.
    pub binding: Option<&'a Binding>,
}

/// The claims as signed: [`super::AccessClaims`], borrowed.
#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    exp: u64,
    iat: u64,
    jti: &'a str,
    client_id: &'a str,
    scope: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    gty: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cnf: Option<&'a Binding>,
}

/// Sign an access token for `grant` at time `now`.
pub fn issue(keys: &KeySet, grant: &Grant<'_>, now: u64) -> Result<IssuedToken, SignError> {
    issue_with_gty(keys, grant, None, now)
}

/// As [`issue`], with the `gty` claim for tokens no user consented to
/// (see [`super::AccessClaims::gty`]).
pub fn issue_with_gty(keys: &KeySet, grant: &Grant<'_>, gty: Option<&str>, now: u64) -> Result<IssuedToken, SignError> {
    let scope = grant.scopes.join(" ");
    let jti = random_token(16);
    let exp = now + grant.lifetime_secs;
    let claims = Claims {
        iss: grant.issuer,
        sub: grant.subject,
        aud: grant.audience,
        exp,
        iat: now,
        jti: &jti,
        client_id: grant.client_id,
        scope: &scope,
        gty,
        cnf: grant.binding,
    };
    let access_token = keys.signer().sign_jwt(&claims)?;
    let token_type = match grant.binding {
        Some(Binding::Dpop { .. }) => "DPoP",
        _ => "Bearer",
    };
    Ok(IssuedToken { access_token, jti, expires_in: grant.lifetime_secs, expires_at: exp, scope, token_type })
}
