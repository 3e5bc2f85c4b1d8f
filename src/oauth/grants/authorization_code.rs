//! RFC 6749 §4.1.3 with PKCE (RFC 7636): exchange a code for tokens, exactly once.

use base64::Engine;
use subtle::ConstantTimeEq;

use super::{Issue, issue_tokens, new_family};
use crate::config::{Client, GrantType};
use crate::oauth::error::OAuthError;
use crate::oauth::params::Params;
use crate::oauth::token::TokenResponse;
use crate::oauth::users;
use crate::state::{Gateway, Runtime};
use crate::store::TakeCode;
use crate::tokens::sha256;

fn invalid_code() -> OAuthError {
    OAuthError::InvalidGrant(
        "The provided authorization grant is invalid, expired, revoked, does not match the redirection URI used in the authorization request, or was issued to another client. Check the \"code\" parameter.".into(),
    )
}

/// RFC 7636 §4.1: 43-128 characters of [A-Z a-z 0-9 - . _ ~].
pub fn valid_verifier(v: &str) -> bool {
    (43..=128).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
}

/// RFC 7636 §4.6: BASE64URL(SHA256(verifier)) == challenge, compared in constant time.
fn pkce_matches(verifier: &str, challenge: &str) -> bool {
    let computed = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha256(verifier.as_bytes()));
    bool::from(computed.as_bytes().ct_eq(challenge.as_bytes()))
}

pub async fn grant(
    gw: &Gateway,
    rt: &Runtime,
    client: &Client,
    params: &Params,
    now: u64,
) -> Result<TokenResponse, OAuthError> {
    let code = params.require("code")?;
    let family = new_family();
    // The code is spent from here on, whatever follows: a failed exchange burns it.
    let grant = match gw.store.take_code(sha256(code.as_bytes()), &family, now).await? {
        TakeCode::Unknown => return Err(invalid_code()),
        TakeCode::Replayed { revoked } => {
            tracing::warn!(client_id = %client.id, revoked = revoked.len(), "authorization code replayed; its tokens are revoked");
            gw.revoke_access(&revoked).await;
            gw.metrics.revoked("refresh_family", "code_replay", 1);
            gw.metrics.revoked("access_token", "code_replay", revoked.len() as u64);
            return Err(invalid_code());
        }
        TakeCode::Taken(grant) => grant,
    };
    if grant.client_id != client.id {
        return Err(invalid_code());
    }
    // §4.1.3: redirect_uri must be identical when the authorization request had one.
    match params.get("redirect_uri") {
        Some(given) if given != grant.redirect_uri => {
            return Err(OAuthError::InvalidGrant(
                "The redirect URI does not match. Check the \"redirect_uri\" parameter.".into(),
            ));
        }
        None if grant.redirect_uri_given => return Err(OAuthError::missing("redirect_uri")),
        _ => {}
    }
    match (&grant.code_challenge, params.get("code_verifier")) {
        (Some(challenge), Some(verifier)) if valid_verifier(verifier) && pkce_matches(verifier, challenge) => {}
        (Some(_), _) => {
            return Err(OAuthError::InvalidGrant(
                "The PKCE code verifier does not match. Check the \"code_verifier\" parameter.".into(),
            ));
        }
        // RFC 9700 §2.1.1: a verifier without a challenge is a downgrade attempt.
        (None, Some(_)) => {
            return Err(OAuthError::InvalidGrant(
                "No PKCE challenge was made for this code. Check the \"code_verifier\" parameter.".into(),
            ));
        }
        (None, None) if client.is_public() => return Err(invalid_code()),
        (None, None) => {}
    }
    if !users::is_active(rt, &grant.user) {
        return Err(invalid_code());
    }
    let refresh = client.grants.contains(&GrantType::RefreshToken);
    let what = Issue {
        client,
        subject: &grant.user,
        user: Some(&grant.user),
        scopes: &grant.scopes,
        refresh_scopes: &grant.scopes,
        family: Some(&family),
        new_refresh: refresh,
        rotated_refresh: None,
    };
    issue_tokens(gw, rt, what, now).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc7636_appendix_b_example() {
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        assert!(valid_verifier(verifier));
        assert!(pkce_matches(verifier, "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"));
        assert!(!pkce_matches(verifier, "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cN"));
        assert!(!valid_verifier("short"));
    }
}
