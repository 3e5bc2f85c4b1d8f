//! Client authentication at the token endpoint (RFC 6749 §2.3.1): HTTP Basic
//! (`client_secret_basic`) or body parameters (`client_secret_post`), never both; or the
//! connection's client certificate (RFC 8705 §2: `tls_client_auth`,
//! `self_signed_tls_client_auth`) with `client_id` in the body. Each client has one method:
//! a certificate client cannot use a secret, nor a secret client a certificate.
//!
//! Secrets are argon2id hashes in config, verified through [`crate::secrets`].

use std::net::IpAddr;
use std::sync::Arc;

use base64::Engine;
use http::{HeaderMap, header};
use percent_encoding::percent_decode_str;

use super::error::{BadRequest, OAuthError};
use super::params::Params;
use subtle::ConstantTimeEq;

use crate::config::{Client, ClientAuth, TlsName};
use crate::state::{Gateway, Runtime};
use crate::tls::ClientCert;

pub use crate::secrets::{DUMMY_HASH, Kind, SecretCache, verify_argon2};

/// Credentials as presented, before any lookup.
pub(crate) struct Presented {
    pub(crate) client_id: String,
    pub(crate) secret: Option<String>,
    pub(crate) basic: bool,
}

/// Parse `Authorization: Basic` if present. Other schemes are not client authentication.
pub(crate) fn basic_credentials(headers: &HeaderMap) -> Result<Option<(String, String)>, OAuthError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else { return Ok(None) };
    let bad = || OAuthError::InvalidClient { basic: true };
    let value = value.to_str().map_err(|_| bad())?;
    let Some((scheme, rest)) = value.split_once(' ') else { return Ok(None) };
    if !scheme.eq_ignore_ascii_case("basic") {
        return Ok(None);
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(rest.trim()).map_err(|_| bad())?;
    let decoded = String::from_utf8(decoded).map_err(|_| bad())?;
    let (id, secret) = decoded.split_once(':').ok_or_else(bad)?;
    // RFC 6749 §2.3.1: both halves are form-url-encoded before Basic encoding.
    let unform = |s: &str| percent_decode_str(&s.replace('+', " ")).decode_utf8().map(|c| c.into_owned());
    Ok(Some((unform(id).map_err(|_| bad())?, unform(secret).map_err(|_| bad())?)))
}

pub(crate) fn presented(headers: &HeaderMap, params: &Params) -> Result<Presented, OAuthError> {
    match basic_credentials(headers)? {
        Some((id, secret)) => {
            if params.get("client_secret").is_some() {
                return Err(BadRequest::TwoClientAuthMethods.into());
            }
            if params.get("client_id").is_some_and(|body_id| body_id != id) {
                return Err(BadRequest::Invalid("client_id".into()).into());
            }
            Ok(Presented { client_id: id, secret: Some(secret), basic: true })
        }
        None => {
            let client_id = params.get("client_id").ok_or(OAuthError::InvalidClient { basic: false })?;
            Ok(Presented {
                client_id: client_id.to_string(),
                secret: params.get("client_secret").map(str::to_string),
                basic: false,
            })
        }
    }
}

/// Authenticate the client of a token request against the configuration in force.
/// A public client (no secret configured) is identified, not authenticated; grants
/// that need a confidential client are refused to public ones by validation.
/// A client with too many recent failures from `source` (the address the request came
/// from) is refused there before its secret is verified; the same client calling from
/// another address is not, so knowing a client id is not enough to lock it out.
///
/// An unknown or disabled client id that comes with a secret is treated like a known one
/// with a wrong secret: the same failure budget (keyed by the id as given) and a dummy
/// argon2 verification, so neither the answer, the 429 nor the time taken tells which ids exist.
pub async fn authenticate(
    gw: &Gateway,
    rt: &Runtime,
    source: IpAddr,
    headers: &HeaderMap,
    params: &Params,
    cert: Option<&ClientCert>,
) -> Result<Arc<Client>, OAuthError> {
    let p = presented(headers, params)?;
    let fail = OAuthError::InvalidClient { basic: p.basic };
    let limits = &rt.config.rate_limit;
    let client = match rt.config.clients.get(&p.client_id) {
        Some(c) if c.enabled => c,
        known => {
            if known.is_some() {
                tracing::debug!(client_id = %p.client_id, "disabled client");
            } else {
                // Not the presented id: people paste secrets into the wrong field.
                tracing::debug!("unknown client");
            }
            if let Some(secret) = &p.secret {
                gw.limiter.reserve_client(limits, source, &p.client_id).map_err(OAuthError::RateLimited)?;
                gw.secrets.verify_dummy(secret).await;
            }
            return Err(fail);
        }
    };
    match (&client.auth, &p.secret) {
        (ClientAuth::Confidential { secret_hash: hash }, Some(secret)) => {
            gw.limiter.reserve_client(limits, source, &client.id).map_err(OAuthError::RateLimited)?;
            if !gw.secrets.verify(Kind::Client, &client.id, secret, hash).await {
                tracing::warn!(security_event = "wrong_client_secret", client_id = %p.client_id, "wrong client secret");
                return Err(fail);
            }
            gw.limiter.release_client(limits, source, &client.id);
        }
        (ClientAuth::Public, None) => {}
        // A secret offered by a public client: as for an unknown id.
        (ClientAuth::Public, Some(secret)) => {
            gw.limiter.reserve_client(limits, source, &client.id).map_err(OAuthError::RateLimited)?;
            gw.secrets.verify_dummy(secret).await;
            return Err(fail);
        }
        // A confidential client without its secret.
        (ClientAuth::Confidential { .. }, None) => return Err(fail),
        (ClientAuth::TlsClientAuth(name), None) => {
            // Only a certificate that chained to client_ca vouches for a name.
            if !cert.is_some_and(|c| c.chained && carries(c, name)) {
                tracing::warn!(security_event = "wrong_client_certificate", client_id = %client.id, presented = cert.is_some(), "tls_client_auth failed");
                return Err(fail);
            }
        }
        (ClientAuth::SelfSignedTls { thumbprints }, None) => {
            let matches = cert
                .is_some_and(|c| thumbprints.iter().any(|t| bool::from(t.as_bytes().ct_eq(c.thumbprint.as_bytes()))));
            if !matches {
                tracing::warn!(security_event = "wrong_client_certificate", client_id = %client.id, presented = cert.is_some(), "self_signed_tls_client_auth failed");
                return Err(fail);
            }
        }
        // A secret offered by a certificate client: as for an unknown id.
        (ClientAuth::TlsClientAuth(_) | ClientAuth::SelfSignedTls { .. }, Some(secret)) => {
            gw.limiter.reserve_client(limits, source, &client.id).map_err(OAuthError::RateLimited)?;
            gw.secrets.verify_dummy(secret).await;
            return Err(fail);
        }
    }
    Ok(client.clone())
}

/// Does `cert` carry the name a `tls_client_auth` client registered (RFC 8705 §2.1.2)?
/// The subject DN in canonical form ([`crate::dn`]), a DNS name without regard to case,
/// URIs and email addresses exactly, IP addresses as addresses.
fn carries(cert: &ClientCert, name: &TlsName) -> bool {
    match name {
        TlsName::SubjectDn(dn) => cert.subject_dn.as_deref() == Some(dn.as_str()),
        TlsName::SanDns(d) => cert.san_dns.iter().any(|c| **c == **d),
        TlsName::SanUri(u) => cert.san_uri.iter().any(|c| **c == **u),
        TlsName::SanIp(ip) => cert.san_ip.contains(ip),
        TlsName::SanEmail(e) => cert.san_email.iter().any(|c| **c == **e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, v.parse().unwrap());
        h
    }

    #[test]
    fn basic_halves_are_form_decoded() {
        let enc = base64::engine::general_purpose::STANDARD.encode("my%20app:s%3Acret+x");
        let got = basic_credentials(&basic(&format!("basic {enc}"))).unwrap().unwrap();
        assert_eq!(got, ("my app".to_string(), "s:cret x".to_string()));
    }

    #[test]
    fn garbage_basic_is_invalid_client() {
        assert_eq!(basic_credentials(&basic("Basic !!!")), Err(OAuthError::InvalidClient { basic: true }));
        assert_eq!(basic_credentials(&basic("Bearer abc")), Ok(None));
    }
}
