//! Mutual TLS: `[tls] client_auth` and `client_ca`, and the clients that authenticate with
//! a certificate (`tls_client_auth`, `self_signed_tls_client_auth`, RFC 8705 §2) or bind
//! their tokens to one (`token_binding = "mtls"`).

use std::net::IpAddr;
use std::path::PathBuf;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use toml::Spanned;

use super::Validator;
use crate::config::ConfigError;
use crate::config::model::{ClientAuth, ClientAuthMode, TlsFiles, TlsName, TokenBinding};
use crate::config::raw::{RawClient, RawListener, RawTls};

/// 43 base64url characters that are exactly 32 bytes: a SHA-256 thumbprint.
fn is_thumbprint(s: &str) -> bool {
    s.len() == 43 && URL_SAFE_NO_PAD.decode(s).is_ok_and(|b| b.len() == 32 && URL_SAFE_NO_PAD.encode(&b) == s)
}

/// What `[tls]` says about client certificates.
pub(super) struct ClientCerts {
    pub mode: ClientAuthMode,
    pub ca: Option<PathBuf>,
    pub ca_line: usize,
}

impl Validator<'_> {
    /// `client_auth` and `client_ca`: a mode other than `none` needs the CA bundle (read
    /// when the TLS configuration is loaded, and refused there at `client_ca`'s line if it
    /// is unreadable or holds no certificate) and a TLS listener to ask on.
    pub(super) fn client_certs(
        &self,
        t: &RawTls,
        listeners: &[Spanned<RawListener>],
    ) -> Result<ClientCerts, ConfigError> {
        let mode = match &t.client_auth {
            None => ClientAuthMode::None,
            Some(m) => match m.get_ref().as_str() {
                "none" => ClientAuthMode::None,
                "optional" => ClientAuthMode::Optional,
                "required" => ClientAuthMode::Required,
                other => {
                    return Err(self.err(
                        m.span(),
                        format!("unknown client_auth {other:?}: use \"none\", \"optional\" or \"required\""),
                    ));
                }
            },
        };
        let ca_line = t.client_ca.as_ref().map_or(0, |c| self.line_of(c.span().start));
        let ca = match (&t.client_ca, mode) {
            (Some(c), _) if c.get_ref().trim().is_empty() => {
                return Err(self.err(c.span(), "client_ca must name a PEM file of CA certificates"));
            }
            (Some(c), ClientAuthMode::None) => {
                self.warn(c.span(), "client_ca is ignored while client_auth is \"none\": no certificate is asked for");
                None
            }
            (Some(c), _) => Some(self.path(c.get_ref())),
            (None, ClientAuthMode::None) => None,
            (None, _) => {
                let span = t.client_auth.as_ref().map(|m| m.span()).unwrap_or_default();
                return Err(self.err(
                    span,
                    "client_auth needs client_ca: the PEM bundle of the CAs client certificates are issued by",
                ));
            }
        };
        if mode != ClientAuthMode::None
            && !listeners.iter().any(|l| l.get_ref().tls.unwrap_or(true))
            && let Some(m) = &t.client_auth
        {
            return Err(self.err(
                m.span(),
                "client_auth needs a TLS listener: every [[listener]] has tls = false, so no certificate can be asked for",
            ));
        }
        Ok(ClientCerts { mode, ca, ca_line })
    }

    /// How the client authenticates: from `token_endpoint_auth_method` and the keys that
    /// go with it; without it, a secret if `secret_hash` is set, else none (public).
    pub(super) fn client_auth_method(&self, c: &RawClient, secret: Option<String>) -> Result<ClientAuth, ConfigError> {
        let id = c.id.get_ref();
        let names = [
            (&c.tls_client_auth_subject_dn, "tls_client_auth_subject_dn"),
            (&c.tls_client_auth_san_dns, "tls_client_auth_san_dns"),
            (&c.tls_client_auth_san_uri, "tls_client_auth_san_uri"),
            (&c.tls_client_auth_san_ip, "tls_client_auth_san_ip"),
            (&c.tls_client_auth_san_email, "tls_client_auth_san_email"),
        ];
        let given: Vec<_> = names.iter().filter_map(|(v, n)| v.as_ref().map(|v| (v, *n))).collect();
        let self_signed: Vec<_> =
            [(&c.certificate, "certificate"), (&c.certificate_thumbprint, "certificate_thumbprint")]
                .into_iter()
                .filter_map(|(v, n)| v.as_ref().map(|v| (v, n)))
                .collect();
        let method = c.token_endpoint_auth_method.as_ref();
        let name = method.map(|m| m.get_ref().as_str());
        // Keys of another method are a mistake, not something to ignore.
        let stray = match name {
            Some("tls_client_auth") => self_signed.first(),
            Some("self_signed_tls_client_auth") => given.first(),
            _ => given.first().or(self_signed.first()),
        };
        if let Some((v, n)) = stray {
            return Err(self.err(
                v.span(),
                format!(
                    "client {id:?}: {n} belongs to token_endpoint_auth_method = {:?}",
                    if n.starts_with("tls_") { "tls_client_auth" } else { "self_signed_tls_client_auth" }
                ),
            ));
        }
        let certificate_method = matches!(name, Some("tls_client_auth" | "self_signed_tls_client_auth"));
        if certificate_method && let Some(h) = &c.secret_hash {
            return Err(self.err(
                h.span(),
                format!(
                    "client {id:?}: a client that authenticates with a certificate has no secret (RFC 8705 §2): remove \
                     secret_hash, or the token_endpoint_auth_method"
                ),
            ));
        }
        match (name, secret) {
            (None, None) => Ok(ClientAuth::Public),
            (None, Some(secret_hash)) => Ok(ClientAuth::Confidential { secret_hash }),
            (Some("client_secret_basic" | "client_secret_post"), Some(secret_hash)) => {
                Ok(ClientAuth::Confidential { secret_hash })
            }
            (Some("none"), None) => Ok(ClientAuth::Public),
            (Some("tls_client_auth"), _) => {
                let [(v, n)] = given.as_slice() else {
                    let span = given.get(1).map(|(v, _)| v.span()).or(method.map(|m| m.span())).unwrap_or_default();
                    return Err(self.err(
                        span,
                        format!(
                            "client {id:?}: tls_client_auth needs exactly one of tls_client_auth_subject_dn, _san_dns, \
                             _san_uri, _san_ip, _san_email (RFC 8705 §2.1.2)"
                        ),
                    ));
                };
                Ok(ClientAuth::TlsClientAuth(self.tls_name(v, n)?))
            }
            (Some("self_signed_tls_client_auth"), _) => {
                let mut thumbprints = Vec::new();
                if let Some(t) = &c.certificate_thumbprint {
                    let t = t.get_ref().trim();
                    if !is_thumbprint(t) {
                        return Err(self.err(
                            c.certificate_thumbprint.as_ref().map(|t| t.span()).unwrap_or_default(),
                            "certificate_thumbprint is the base64url (unpadded) SHA-256 of the certificate's DER, 43 \
                             characters",
                        ));
                    }
                    thumbprints.push(t.to_string());
                }
                if let Some(p) = &c.certificate {
                    thumbprints.push(self.certificate_file(p)?);
                }
                if thumbprints.is_empty() {
                    return Err(self.err(
                        method.map(|m| m.span()).unwrap_or_default(),
                        format!(
                            "client {id:?}: self_signed_tls_client_auth needs certificate or certificate_thumbprint"
                        ),
                    ));
                }
                Ok(ClientAuth::SelfSignedTls { thumbprints })
            }
            (Some(m @ ("client_secret_basic" | "client_secret_post")), None) => Err(self.err(
                method.map(|m| m.span()).unwrap_or_default(),
                format!("client {id:?}: token_endpoint_auth_method = {m:?} needs secret_hash"),
            )),
            (Some("none"), Some(_)) => Err(self.err(
                method.map(|m| m.span()).unwrap_or_default(),
                format!("client {id:?}: token_endpoint_auth_method = \"none\" (a public client) has no secret_hash"),
            )),
            (Some(other), _) => Err(self.err(
                method.map(|m| m.span()).unwrap_or_default(),
                format!(
                    "unknown token_endpoint_auth_method {other:?}: use client_secret_basic, client_secret_post, none, \
                     tls_client_auth or self_signed_tls_client_auth"
                ),
            )),
        }
    }

    fn tls_name(&self, v: &Spanned<String>, key: &str) -> Result<TlsName, ConfigError> {
        let s = v.get_ref().trim();
        let bad = |why: &str| self.err(v.span(), format!("{key} {s:?}: {why}"));
        if s.is_empty() {
            return Err(bad("must not be empty"));
        }
        Ok(match key {
            "tls_client_auth_subject_dn" => TlsName::SubjectDn(
                crate::dn::canonical(s)
                    .ok_or_else(|| bad("not an RFC 4514 distinguished name, e.g. \"CN=client,O=Example\""))?,
            ),
            "tls_client_auth_san_dns" => TlsName::SanDns(s.to_ascii_lowercase()),
            "tls_client_auth_san_uri" => {
                url::Url::parse(s).map_err(|_| bad("not an absolute URI"))?;
                TlsName::SanUri(s.to_string())
            }
            "tls_client_auth_san_ip" => TlsName::SanIp(s.parse::<IpAddr>().map_err(|_| bad("not an IP address"))?),
            _ => {
                if !s.contains('@') {
                    return Err(bad("not an email address"));
                }
                TlsName::SanEmail(s.to_string())
            }
        })
    }

    /// The thumbprint of the certificate in a PEM file, read when the config is loaded.
    fn certificate_file(&self, p: &Spanned<String>) -> Result<String, ConfigError> {
        use rustls_pki_types::CertificateDer;
        use rustls_pki_types::pem::PemObject;
        let path = self.path(p.get_ref());
        let mut certs = CertificateDer::pem_file_iter(&path)
            .map_err(|e| self.err(p.span(), format!("certificate {}: {e}", path.display())))?;
        let cert = match certs.next() {
            Some(Ok(c)) => c,
            Some(Err(e)) => return Err(self.err(p.span(), format!("certificate {}: {e}", path.display()))),
            None => return Err(self.err(p.span(), format!("certificate {}: no certificate in file", path.display()))),
        };
        if certs.next().is_some() {
            return Err(
                self.err(p.span(), format!("certificate {}: one certificate only (the client's)", path.display()))
            );
        }
        Ok(URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &cert).as_ref()))
    }

    /// A client that needs a certificate (to authenticate, or to bind its tokens to) needs
    /// a listener that asks for one.
    pub(super) fn certificate_clients(
        &self,
        c: &Spanned<RawClient>,
        auth: &ClientAuth,
        binding: Option<TokenBinding>,
        tls: Option<&TlsFiles>,
    ) -> Result<(), ConfigError> {
        let asks = tls.is_some_and(|t| t.client_auth != ClientAuthMode::None);
        let needs = matches!(auth, ClientAuth::TlsClientAuth(_) | ClientAuth::SelfSignedTls { .. })
            || binding == Some(TokenBinding::Mtls);
        if needs && !asks {
            let raw = c.get_ref();
            let span = raw
                .token_endpoint_auth_method
                .as_ref()
                .filter(|_| !matches!(auth, ClientAuth::Public | ClientAuth::Confidential { .. }))
                .or(raw.token_binding.as_ref())
                .map_or(c.span(), |s| s.span());
            return Err(self.err(
                span,
                format!(
                    "client {:?} needs a client certificate, but no listener asks for one: set [tls] client_auth = \
                     \"optional\" (or \"required\") and client_ca",
                    raw.id.get_ref()
                ),
            ));
        }
        if let ClientAuth::SelfSignedTls { .. } = auth
            && tls.is_some_and(|t| t.client_auth == ClientAuthMode::Required)
        {
            self.warn(
                c.span(),
                format!(
                    "client {:?}: with client_auth = \"required\" only certificates issued by client_ca pass the \
                     handshake; a self-signed one needs client_auth = \"optional\"",
                    c.get_ref().id.get_ref()
                ),
            );
        }
        Ok(())
    }
}
