//! What the tokens of one token request are bound to (`token_binding` on the client):
//! the key the request proves possession of, or a refusal when it proves none.

use super::error::{BadRequest, OAuthError};
use crate::config::{Client, TokenBinding};
use crate::server::peer::Peer;
use crate::tokens::binding::Binding;

/// The binding of the tokens issued for this request. A client with `token_binding =
/// "mtls"` binds to the certificate of the request's connection (RFC 8705 §3.1): none
/// presented is `invalid_request`, as the request cannot be honoured as the client is
/// registered. `dpop_jkt` is the thumbprint of the request's valid DPoP proof (checked by
/// `oauth::dpop`): with `"dpop"` it is required (`invalid_dpop_proof` without one); without
/// `token_binding`, a client that sends a proof gets DPoP-bound tokens (RFC 9449 §5).
pub fn requested(client: &Client, peer: &Peer, dpop_jkt: Option<String>) -> Result<Option<Binding>, OAuthError> {
    match client.token_binding {
        None => Ok(dpop_jkt.map(|jkt| Binding::Dpop { jkt: jkt.into() })),
        Some(TokenBinding::Mtls) => match peer.client_cert() {
            Some(cert) => Ok(Some(Binding::Mtls { x5t_s256: cert.thumbprint.clone() })),
            None => Err(BadRequest::ClientCertificateRequired.into()),
        },
        Some(TokenBinding::Dpop) => match dpop_jkt {
            Some(jkt) => Ok(Some(Binding::Dpop { jkt: jkt.into() })),
            None => Err(OAuthError::InvalidDpopProof),
        },
    }
}

/// May a refresh grant bound to `stored` be used by a request proving `presented`? A
/// refresh token bound to a key (a public client's, RFC 8705 §4 / RFC 9449 §5) needs the
/// same key; an unbound one needs nothing more.
pub fn refresh_allowed(stored: Option<&Binding>, presented: Option<&Binding>) -> bool {
    match stored {
        None => true,
        Some(s) => presented == Some(s),
    }
}
