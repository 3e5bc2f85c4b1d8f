//! The client certificate of a connection, as the gateway uses it: its thumbprint (the
//! key of certificate-bound tokens, RFC 8705 §3.1), whether it chained to `client_ca`, and
//! the names `tls_client_auth` matches (RFC 8705 §2.1.2).

use std::net::IpAddr;

use rustls_pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;

use super::client_auth::ClientVerifier;

/// What a TLS handshake proved about the client: it holds the private key of this
/// certificate (its CertificateVerify signature checked out).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert {
    /// base64url (unpadded) SHA-256 of the leaf certificate's DER: `cnf.x5t#S256`.
    pub thumbprint: Box<str>,
    /// The certificate chained to a `[tls] client_ca` root and is valid now: only then do
    /// its names mean anything (`tls_client_auth`).
    pub chained: bool,
    /// The subject DN in the canonical RFC 4514 form of [`crate::dn`]; `None` when an
    /// attribute could not be read (it then matches no configured DN).
    pub subject_dn: Option<Box<str>>,
    /// dNSName SANs, lower case.
    pub san_dns: Box<[Box<str>]>,
    /// uniformResourceIdentifier SANs, as written.
    pub san_uri: Box<[Box<str>]>,
    pub san_ip: Box<[IpAddr]>,
    /// rfc822Name SANs, as written.
    pub san_email: Box<[Box<str>]>,
}

/// base64url (unpadded) SHA-256 of a certificate's DER (RFC 8705 §3.1).
pub fn thumbprint(der: &[u8]) -> String {
    use base64::Engine;
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref())
}

impl ClientCert {
    /// The leaf of a chain the handshake accepted; `None` if it does not parse (it then
    /// counts as no certificate at all: nothing bound to it and no client authenticated).
    ///
    /// The leaf must be within its validity period now: a resumed TLS session carries the
    /// certificate of its first handshake without verifying it again, so an (unchained,
    /// self-signed) certificate that has expired since would otherwise keep working.
    pub fn of_chain(chain: &[CertificateDer<'_>], verifier: &ClientVerifier) -> Option<ClientCert> {
        let (leaf, intermediates) = chain.split_first()?;
        let (_, cert) = x509_parser::parse_x509_certificate(leaf).ok()?;
        if !cert.validity().is_valid() {
            return None;
        }
        let (mut dns, mut uri, mut ip, mut email) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        // A SAN extension that does not parse (or is repeated) makes the certificate unusable.
        if let Some(san) = cert.subject_alternative_name().ok()? {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(d) => dns.push(d.to_ascii_lowercase().into_boxed_str()),
                    GeneralName::URI(u) => uri.push((*u).into()),
                    GeneralName::RFC822Name(e) => email.push((*e).into()),
                    GeneralName::IPAddress(b) => match b.len() {
                        4 => ip.push(IpAddr::from(<[u8; 4]>::try_from(*b).ok()?)),
                        16 => ip.push(IpAddr::from(<[u8; 16]>::try_from(*b).ok()?)),
                        _ => return None,
                    },
                    _ => {}
                }
            }
        }
        Some(ClientCert {
            thumbprint: thumbprint(leaf).into(),
            chained: verifier.chains(leaf, intermediates),
            subject_dn: crate::dn::of_name(cert.subject()).map(String::into_boxed_str),
            san_dns: dns.into(),
            san_uri: uri.into(),
            san_ip: ip.into(),
            san_email: email.into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::client_auth::ClientAuthMode;

    fn self_signed(not_after: (i32, u8, u8)) -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["client.test".to_string()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2000, 1, 1);
        params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
        params.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn an_expired_leaf_counts_as_no_certificate() {
        let ca = self_signed((2999, 1, 1));
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca).unwrap();
        let verifier = ClientVerifier::new(roots, ClientAuthMode::Optional).unwrap();
        let valid = ClientCert::of_chain(&[self_signed((2999, 1, 1))], &verifier);
        assert!(valid.is_some_and(|c| !c.chained));
        // As on a resumed session, where the handshake verifier does not run again.
        assert_eq!(ClientCert::of_chain(&[self_signed((2001, 1, 1))], &verifier), None);
    }
}
