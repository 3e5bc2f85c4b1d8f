//! RFC 6749 §4.1.3 with PKCE (RFC 7636): exchange a code for tokens, exactly once.

use base64::Engine;
use subtle::ConstantTimeEq;

use super::revocation::{Reason, Revoke, revoke};
use super::{Issue, TokenResponse, issue_tokens, new_family};
use crate::config::{Client, GrantType};
use crate::oauth::error::{BadGrant, BadRequest, OAuthError};
use crate::oauth::params::Params;
use crate::oauth::users;
use crate::state::{Gateway, Runtime};
use crate::store::{CodeGrant, TakeCode};
use crate::tokens::binding::Binding;
use crate::tokens::sha256;

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
    binding: Option<&Binding>,
    now: u64,
) -> Result<TokenResponse, OAuthError> {
    let code = params.require("code")?;
    let family = new_family();
    // The code is spent from here on, whatever follows: a failed exchange burns it.
    let grant = match gw.store.take_code(sha256(code.as_bytes()), &family, now).await? {
        TakeCode::Unknown => return Err(BadGrant::Code.into()),
        TakeCode::Replayed { revoked } => {
            tracing::warn!(security_event = "code_replay", client_id = %client.id, revoked = revoked.len(), "authorization code replayed; its tokens are revoked");
            revoke(gw, Revoke::Revoked(revoked), Reason::CodeReplay).await?;
            return Err(BadGrant::Code.into());
        }
        TakeCode::Taken(grant) => grant,
    };
    check_code(&grant, &client.id, client.is_public(), params.get("redirect_uri"), params.get("code_verifier"))?;
    if !users::is_active(rt, &grant.user) {
        return Err(BadGrant::Code.into());
    }
    // A code issued before its client was disabled, removed or had its secret rotated
    // (`secret_rotation_revokes`) is void like the tokens the client held then: enabling
    // it again must not let an outstanding code mint a new family (black-box, stop 34).
    if gw.validator.check_not_before(&client.id, grant.issued_at).is_err() {
        tracing::info!(client_id = %client.id, "authorization code issued before its client's reset refused");
        return Err(BadGrant::Code.into());
    }
    let audience = crate::oauth::audience::within_grant(&rt.config, grant.audience.as_deref(), params)?;
    let refresh = client.grants.contains(&GrantType::RefreshToken);
    let what = Issue {
        client,
        subject: &grant.user,
        user: Some(&grant.user),
        scopes: &grant.scopes,
        refresh_scopes: &grant.scopes,
        family: Some(&family),
        new_refresh: refresh,
        audience: audience.as_deref(),
        gty: None,
        binding,
    };
    issue_tokens(gw, rt, what, now).await
}

/// The checks on a taken code that need no I/O: it was issued to this client (§4.1.3), to
/// this `redirect_uri` if the authorization request named one, and with the PKCE challenge
/// this `verifier` answers (RFC 7636 §4.6); a public client must have used PKCE.
pub fn check_code(
    grant: &CodeGrant,
    client_id: &str,
    public: bool,
    redirect_uri: Option<&str>,
    verifier: Option<&str>,
) -> Result<(), OAuthError> {
    if grant.client_id != client_id {
        return Err(BadGrant::Code.into());
    }
    // §4.1.3: redirect_uri must be identical when the authorization request had one.
    match redirect_uri {
        Some(given) if given != grant.redirect_uri => return Err(BadGrant::RedirectUri.into()),
        None if grant.redirect_uri_given => return Err(BadRequest::Missing("redirect_uri").into()),
        _ => {}
    }
    match (&grant.code_challenge, verifier) {
        (Some(challenge), Some(verifier)) if valid_verifier(verifier) && pkce_matches(verifier, challenge) => Ok(()),
        (Some(_), _) => Err(BadGrant::CodeVerifier.into()),
        // RFC 9700 §2.1.1: a verifier without a challenge is a downgrade attempt.
        (None, Some(_)) => Err(BadGrant::UnexpectedVerifier.into()),
        (None, None) if public => Err(BadGrant::Code.into()),
        (None, None) => Ok(()),
    }
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

    const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
    const URI: &str = "https://app.example/cb";

    fn code(challenge: Option<&str>, redirect_uri_given: bool) -> CodeGrant {
        CodeGrant {
            client_id: "app".into(),
            redirect_uri: URI.into(),
            redirect_uri_given,
            scopes: vec!["read".into()],
            user: "alice".into(),
            code_challenge: challenge.map(str::to_string),
            expires_at: 0,
            audience: None,
            issued_at: 0,
        }
    }

    #[test]
    fn a_code_binds_its_client() {
        let c = code(Some(CHALLENGE), false);
        assert_eq!(check_code(&c, "app", true, None, Some(VERIFIER)), Ok(()));
        assert_eq!(check_code(&c, "other", true, None, Some(VERIFIER)), Err(BadGrant::Code.into()));
    }

    #[test]
    fn a_code_binds_its_redirect_uri_when_one_was_given() {
        let given = code(Some(CHALLENGE), true);
        assert_eq!(check_code(&given, "app", true, Some(URI), Some(VERIFIER)), Ok(()));
        let other = Some("https://app.example/cb/");
        assert_eq!(check_code(&given, "app", true, other, Some(VERIFIER)), Err(BadGrant::RedirectUri.into()));
        let missing = Err(BadRequest::Missing("redirect_uri").into());
        assert_eq!(check_code(&given, "app", true, None, Some(VERIFIER)), missing);
        // Not named in the authorization request: may be omitted, but must match if sent.
        let implied = code(Some(CHALLENGE), false);
        assert_eq!(check_code(&implied, "app", true, None, Some(VERIFIER)), Ok(()));
        assert_eq!(check_code(&implied, "app", true, other, Some(VERIFIER)), Err(BadGrant::RedirectUri.into()));
    }

    #[test]
    fn pkce_verifier_must_answer_the_challenge() {
        let c = code(Some(CHALLENGE), false);
        let wrong = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXK";
        for verifier in [None, Some(wrong), Some("short"), Some(CHALLENGE)] {
            assert_eq!(
                check_code(&c, "app", false, None, verifier),
                Err(BadGrant::CodeVerifier.into()),
                "{verifier:?}"
            );
        }
    }

    #[test]
    fn no_challenge_means_no_verifier_and_a_confidential_client() {
        let c = code(None, false);
        assert_eq!(check_code(&c, "app", false, None, None), Ok(()));
        assert_eq!(check_code(&c, "app", false, None, Some(VERIFIER)), Err(BadGrant::UnexpectedVerifier.into()));
        assert_eq!(check_code(&c, "app", true, None, None), Err(BadGrant::Code.into()));
    }
}
