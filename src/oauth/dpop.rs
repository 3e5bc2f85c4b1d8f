//! DPoP at the token endpoint (RFC 9449 §5): the request's one proof, if any, checked for
//! this request (`POST` to the URL the client addressed), its `jti` recorded once in the
//! shared store, and the key thumbprint the issued tokens are bound to.

use http::HeaderMap;

use super::error::OAuthError;
use crate::authority::public_url;
use crate::server::context::Ctx;
use crate::state::Gateway;
use crate::store::OnceKind;
use crate::tokens::dpop::{self, DpopError, Expect};
use crate::tokens::now_secs;

/// The JWK thumbprint (`jkt`) of the request's valid DPoP proof; `None` without a proof.
pub async fn proof(gw: &Gateway, ctx: &Ctx<'_>, headers: &HeaderMap, path: &str) -> Result<Option<String>, OAuthError> {
    let refuse = |e: DpopError| {
        tracing::info!(
            security_event = "bad_dpop_proof",
            reason = e.label(),
            "DPoP proof refused at the token endpoint"
        );
        OAuthError::InvalidDpopProof
    };
    let Some(proof) = dpop::header(headers).map_err(refuse)? else { return Ok(None) };
    let rt = &ctx.rt;
    let settings = &rt.config.dpop;
    let trusted = rt.config.is_trusted_proxy(ctx.peer.addr.ip());
    let htu = public_url(headers, ctx.peer.tls, trusted, ctx.authority.as_ref(), path)
        .and_then(|u| dpop::normalise_htu(&u))
        .ok_or(OAuthError::InvalidDpopProof)?;
    let now = now_secs();
    let nonce_key = settings.nonce.then(|| dpop::nonce_key(rt.keys.csrf_key()));
    let expect = Expect { htm: "POST", htu: &htu, access_token: None, jkt: None, now };
    let verified = match dpop::verify(proof, settings, &expect, nonce_key.as_ref()) {
        Ok(v) => v,
        Err(DpopError::UseNonce) => {
            let key = nonce_key.as_ref().ok_or(OAuthError::InvalidDpopProof)?;
            return Err(OAuthError::UseDpopNonce(dpop::make_nonce(key, settings.iat_window.as_secs(), now)));
        }
        Err(e) => return Err(refuse(e)),
    };
    if !gw.store.first_use(OnceKind::DpopProof, verified.once, verified.remember_until, now).await? {
        return Err(refuse(DpopError::Replay));
    }
    Ok(Some(verified.jkt))
}
