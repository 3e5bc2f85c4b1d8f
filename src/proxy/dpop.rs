//! DPoP on the proxy path (RFC 9449 §7): a token sent with the `DPoP` scheme comes with a
//! proof for this very request — its method, the URL the client addressed (without
//! query), and the token itself (`ath`) — on every request, cache hit or not. The proof's
//! `jti` is recorded once in the shared store, so a replay on any replica fails.

use http::HeaderMap;

use super::error::ProxyError;
use crate::authority::{Authority, public_url};
use crate::server::peer::Peer;
use crate::state::{Gateway, Runtime};
use crate::store::OnceKind;
use crate::tokens::dpop::{self, DpopError, Expect};
use crate::tokens::now_secs;
use crate::tokens::validate::TokenError;

/// What the request looks like, for the proof to match.
pub struct Request<'a> {
    pub headers: &'a HeaderMap,
    pub method: &'a str,
    pub path: &'a str,
    pub peer: &'a Peer,
    pub authority: Option<&'a Authority>,
}

/// Check the request's proof for `token`, bound to the key whose thumbprint is `jkt` (the
/// token's `cnf.jkt`, validated already).
pub async fn verify(gw: &Gateway, rt: &Runtime, req: &Request<'_>, token: &str, jkt: &str) -> Result<(), ProxyError> {
    let settings = &rt.config.dpop;
    let refuse = |e: DpopError| {
        gw.metrics.bearer_refused(match e {
            DpopError::Replay => "dpop_replay",
            _ => "dpop_proof",
        });
        tracing::info!(security_event = "bad_dpop_proof", reason = e.label(), "DPoP proof refused");
        ProxyError::InvalidDpopProof(e)
    };
    let proof = dpop::header(req.headers)
        .map_err(refuse)?
        .ok_or_else(|| refuse(DpopError::Jws(crate::tokens::jws::JwsError::Malformed)))?;
    let trusted = rt.config.is_trusted_proxy(req.peer.addr.ip());
    let htu = public_url(req.headers, req.peer.tls, trusted, req.authority, req.path)
        .and_then(|u| dpop::normalise_htu(&u))
        .ok_or_else(|| refuse(DpopError::Url))?;
    let now = now_secs();
    let nonce_key = settings.nonce.then(|| dpop::nonce_key(rt.keys.csrf_key()));
    let expect = Expect { htm: req.method, htu: &htu, access_token: Some(token), jkt: Some(jkt), now };
    let verified = match dpop::verify(proof, settings, &expect, nonce_key.as_ref()) {
        Ok(v) => v,
        Err(DpopError::UseNonce) => {
            let key = nonce_key.as_ref().ok_or_else(|| refuse(DpopError::UseNonce))?;
            return Err(ProxyError::UseDpopNonce(dpop::make_nonce(key, settings.iat_window.as_secs(), now)));
        }
        Err(DpopError::KeyMismatch) => {
            gw.metrics.bearer_refused("binding_mismatch");
            tracing::info!(security_event = "dpop_key_mismatch", "DPoP proof by another key than the token's");
            return Err(ProxyError::InvalidDpopToken(TokenError::BindingMismatch));
        }
        Err(e) => return Err(refuse(e)),
    };
    let first =
        gw.store.first_use(OnceKind::DpopProof, verified.once, verified.remember_until, now).await.map_err(|e| {
            // Fail closed: without the replay memory a proof cannot be accepted.
            tracing::warn!(error = %e, "DPoP replay memory unavailable");
            ProxyError::DpopUnavailable
        })?;
    if !first {
        return Err(refuse(DpopError::Replay));
    }
    Ok(())
}
