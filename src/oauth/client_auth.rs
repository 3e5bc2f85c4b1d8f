//! Client authentication at the token endpoint (RFC 6749 §2.3.1): HTTP Basic
//! (`client_secret_basic`) or body parameters (`client_secret_post`), never both; or the
//! connection's client certificate (RFC 8705 §2: `tls_client_auth`,
//! `self_signed_tls_client_auth`) with `client_id` in the body; or a signed client
//! assertion (`private_key_jwt`, RFC 7523 §2.2), never with a secret. Each client has one
//! method: a certificate client cannot use a secret, nor a secret client a certificate.
//!
//! Secrets are argon2id hashes in config, verified through [`crate::secrets`]; assertions
//! are verified with the client's registered public key ([`crate::tokens::assertion`]) and
//! their `jti` remembered in the store until they expire, so a replay on any replica fails.

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
use crate::store::OnceKind;
use crate::tls::ClientCert;
use crate::tokens::{assertion, now_secs, sha256};

pub use crate::secrets::{DUMMY_HASH, Kind, SecretCache, verify_argon2};

/// Credentials as presented, before any lookup.
pub(crate) struct Presented {
    pub(crate) client_id: String,
    pub(crate) secret: Option<String>,
    pub(crate) basic: bool,
}

/// Parse `Authorization: Basic` if present. Other schemes are not client authentication.
/// Two `Authorization` fields are refused whatever they hold: taking the first would let
/// whoever adds the first (a client, or a proxy in front) choose the client.
pub(crate) fn basic_credentials(headers: &HeaderMap) -> Result<Option<(String, String)>, OAuthError> {
    let mut fields = headers.get_all(header::AUTHORIZATION).iter();
    let Some(value) = fields.next() else { return Ok(None) };
    if fields.next().is_some() {
        return Err(BadRequest::RepeatedHeader("Authorization").into());
    }
    let bad = || OAuthError::InvalidClient { basic: true };
    let value = value.to_str().map_err(|_| bad())?;
    // `Basic` with no credentials at all is a failed Basic authentication, not none.
    if value.trim().eq_ignore_ascii_case("basic") {
        return Err(bad());
    }
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
    if let Some(assertion) = client_assertion(headers, params)? {
        return by_assertion(gw, rt, source, params, assertion).await;
    }
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
                gw.limiter.reserve_client(limits, source, &p.client_id).await.map_err(OAuthError::RateLimited)?;
                gw.secrets.verify_dummy(secret).await;
            }
            return Err(fail);
        }
    };
    match (&client.auth, &p.secret) {
        (ClientAuth::Confidential { secret_hash: hash }, Some(secret)) => {
            gw.limiter.reserve_client(limits, source, &client.id).await.map_err(OAuthError::RateLimited)?;
            if !gw.secrets.verify(Kind::Client, &client.id, secret, hash).await {
                tracing::warn!(security_event = "wrong_client_secret", client_id = %p.client_id, "wrong client secret");
                return Err(fail);
            }
            gw.limiter.release_client(limits, source, &client.id).await;
        }
        (ClientAuth::Public, None) => {}
        // A secret offered by a public client: as for an unknown id.
        (ClientAuth::Public, Some(secret)) => {
            gw.limiter.reserve_client(limits, source, &client.id).await.map_err(OAuthError::RateLimited)?;
            gw.secrets.verify_dummy(secret).await;
            return Err(fail);
        }
        // A confidential client without its secret.
        (ClientAuth::Confidential { .. }, None) => return Err(fail),
        (ClientAuth::TlsClientAuth(name), None) => {
            gw.limiter.reserve_client(limits, source, &client.id).await.map_err(OAuthError::RateLimited)?;
            // Only a certificate that chained to client_ca vouches for a name.
            if !cert.is_some_and(|c| c.chained && carries(c, name)) {
                tracing::warn!(security_event = "wrong_client_certificate", client_id = %client.id, presented = cert.is_some(), "tls_client_auth failed");
                return Err(fail);
            }
            gw.limiter.release_client(limits, source, &client.id).await;
        }
        (ClientAuth::SelfSignedTls { thumbprints }, None) => {
            gw.limiter.reserve_client(limits, source, &client.id).await.map_err(OAuthError::RateLimited)?;
            let matches = cert
                .is_some_and(|c| thumbprints.iter().any(|t| bool::from(t.as_bytes().ct_eq(c.thumbprint.as_bytes()))));
            if !matches {
                tracing::warn!(security_event = "wrong_client_certificate", client_id = %client.id, presented = cert.is_some(), "self_signed_tls_client_auth failed");
                return Err(fail);
            }
            gw.limiter.release_client(limits, source, &client.id).await;
        }
        // A secret offered by a certificate client: as for an unknown id.
        (ClientAuth::TlsClientAuth(_) | ClientAuth::SelfSignedTls { .. }, Some(secret)) => {
            gw.limiter.reserve_client(limits, source, &client.id).await.map_err(OAuthError::RateLimited)?;
            gw.secrets.verify_dummy(secret).await;
            return Err(fail);
        }
        // It signs assertions; a secret (or nothing) is not how it authenticates.
        (ClientAuth::PrivateKeyJwt(_), _) => {
            tracing::debug!(client_id = %client.id, "private_key_jwt client without an assertion");
            return Err(fail);
        }
    }
    Ok(client.clone())
}

/// The `client_assertion` of a request that uses one (both parameters present; the type
/// RFC 7523's). An assertion with a secret or HTTP Basic is two methods at once.
fn client_assertion<'p>(headers: &HeaderMap, params: &'p Params) -> Result<Option<&'p str>, OAuthError> {
    let (kind, assertion) = (params.get("client_assertion_type"), params.get("client_assertion"));
    if kind.is_none() && assertion.is_none() {
        return Ok(None);
    }
    if params.get("client_secret").is_some() || basic_credentials(headers)?.is_some() {
        return Err(BadRequest::TwoClientAuthMethods.into());
    }
    let kind = kind.ok_or(BadRequest::Missing("client_assertion_type"))?;
    let assertion = assertion.ok_or(BadRequest::Missing("client_assertion"))?;
    if kind != assertion::ASSERTION_TYPE {
        return Err(OAuthError::InvalidClient { basic: false });
    }
    Ok(Some(assertion))
}

/// `private_key_jwt`: the client named by `client_id` (else by the assertion's `iss`)
/// must use it; the assertion is checked (at most one signature verification), then its
/// `jti` is recorded once in the shared store. Like a secret, each assertion reserves one
/// failure of the (source, client) budget before it is verified; an id that names no
/// enabled `private_key_jwt` client is charged alike and costs a dummy verification.
async fn by_assertion(
    gw: &Gateway,
    rt: &Runtime,
    source: IpAddr,
    params: &Params,
    assertion: &str,
) -> Result<Arc<Client>, OAuthError> {
    let fail = OAuthError::InvalidClient { basic: false };
    let id = match params.get("client_id") {
        Some(id) => id.to_string(),
        None => assertion::unverified_client(assertion).ok_or(fail.clone())?,
    };
    let config = &rt.config;
    let limits = &config.rate_limit;
    let token_endpoint = super::metadata::endpoint_url(config, &config.token_path);
    let audiences = [config.issuer(), token_endpoint.as_str()];
    let now = now_secs();
    gw.limiter.reserve_client(limits, source, &id).await.map_err(OAuthError::RateLimited)?;
    let known = match (config.clients.get(&id), rt.client_keys.get(&id)) {
        (Some(c), Some(key)) if c.enabled => match &c.auth {
            ClientAuth::PrivateKeyJwt(k) => Some((c, key, k.max_lifetime.as_secs())),
            _ => None,
        },
        _ => None,
    };
    let Some((client, key, max_lifetime)) = known else {
        tracing::debug!("client assertion for no enabled private_key_jwt client");
        assertion::verify_dummy(assertion, &id, &audiences, DUMMY_MAX_LIFETIME, now);
        return Err(fail);
    };
    let verified = assertion::verify(assertion, &client.id, key, &audiences, max_lifetime, now).map_err(|e| {
        tracing::warn!(security_event = "bad_client_assertion", client_id = %client.id, reason = %e, "client assertion refused");
        fail.clone()
    })?;
    let once = sha256(format!("{}\0{}", client.id, verified.jti).as_bytes());
    if !gw.store.first_use(OnceKind::ClientAssertion, once, verified.remember_until, now).await? {
        tracing::warn!(security_event = "client_assertion_replay", client_id = %client.id, "client assertion replayed");
        return Err(fail);
    }
    gw.limiter.release_client(limits, source, &client.id).await;
    Ok(client.clone())
}

/// The lifetime a dummy verification allows: the default of `max_lifetime`, so an
/// assertion for an unknown id passes the same claim checks a known client's would.
const DUMMY_MAX_LIFETIME: u64 = 300;

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
        // A bare scheme is a failed Basic authentication, not an absent one.
        for bare in ["Basic", "basic ", " BASIC"] {
            assert_eq!(basic_credentials(&basic(bare)), Err(OAuthError::InvalidClient { basic: true }), "{bare:?}");
        }
    }

    #[test]
    fn two_authorization_fields_are_refused_whatever_they_hold() {
        let good = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("svc:s"));
        for second in [good.as_str(), "Bearer abc", "Basic !!!"] {
            let mut h = basic(&good);
            h.append(header::AUTHORIZATION, second.parse().unwrap());
            assert_eq!(basic_credentials(&h), Err(BadRequest::RepeatedHeader("Authorization").into()), "{second}");
        }
    }
}
