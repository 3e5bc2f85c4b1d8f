//! Client certificates on the listeners (`[tls] client_auth`, `client_ca`).
//!
//! rustls' `WebPkiClientVerifier` accepts only certificates that chain to `client_ca`, so a
//! client with a self-signed certificate (RFC 8705 §2.2, `self_signed_tls_client_auth`)
//! would fail the handshake. [`ClientVerifier`] wraps it: in `optional` mode a certificate
//! that does not chain is accepted as long as it is a well-formed X.509 certificate within
//! its validity period. That is safe because accepting a certificate in the handshake
//! proves one thing only, which holds for both kinds: the client holds the certificate's
//! private key — rustls checks the handshake's CertificateVerify signature with the
//! certificate's public key (`verify_tls12_signature` / `verify_tls13_signature`, the same
//! calls as for a chained certificate). What a certificate is *worth* is decided later, per
//! use, from [`ClientCert`](super::ClientCert): only a chained one's names count
//! (`tls_client_auth`); an unchained one authenticates a client only by a thumbprint that
//! client registered (`self_signed_tls_client_auth`), and binds tokens only to itself
//! (`cnf.x5t#S256`), which no other key can satisfy. In `required` mode the wrapper adds
//! nothing: a certificate that does not chain fails the handshake.

use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, Error, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, UnixTime};

pub use crate::config::ClientAuthMode;

/// The listeners' client certificate verifier; see the module documentation.
#[derive(Debug)]
pub struct ClientVerifier {
    /// Chains to `client_ca` (and lets a connection without a certificate through in
    /// optional mode).
    webpki: Arc<dyn ClientCertVerifier>,
    mode: ClientAuthMode,
}

impl ClientVerifier {
    pub fn new(roots: RootCertStore, mode: ClientAuthMode) -> Result<ClientVerifier, String> {
        let builder = WebPkiClientVerifier::builder(Arc::new(roots));
        let builder = if mode == ClientAuthMode::Optional { builder.allow_unauthenticated() } else { builder };
        let webpki = builder.build().map_err(|e| e.to_string())?;
        Ok(ClientVerifier { webpki, mode })
    }

    /// Does `end_entity` (with the intermediates the client sent) chain to `client_ca`
    /// and is it valid now? Asked once per connection after the handshake (also a resumed
    /// one, so a CA removed by a reload stops counting at once).
    pub fn chains(&self, end_entity: &CertificateDer<'_>, intermediates: &[CertificateDer<'_>]) -> bool {
        self.webpki.verify_client_cert(end_entity, intermediates, UnixTime::now()).is_ok()
    }
}

/// A certificate the handshake may accept without a chain: it parses as X.509 in full,
/// and `now` is within its validity period (an expired self-signed certificate is refused
/// like an expired chained one).
fn acceptable_unchained(end_entity: &CertificateDer<'_>, now: UnixTime) -> bool {
    let Ok((rest, cert)) = x509_parser::parse_x509_certificate(end_entity) else { return false };
    let Ok(now) = x509_parser::time::ASN1Time::from_timestamp(i64::try_from(now.as_secs()).unwrap_or(i64::MAX)) else {
        return false;
    };
    rest.is_empty() && cert.validity().is_valid_at(now)
}

impl ClientCertVerifier for ClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mode == ClientAuthMode::Required
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.webpki.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        match self.webpki.verify_client_cert(end_entity, intermediates, now) {
            Ok(v) => Ok(v),
            Err(_) if self.mode == ClientAuthMode::Optional && acceptable_unchained(end_entity, now) => {
                Ok(ClientCertVerified::assertion())
            }
            Err(e) => Err(e),
        }
    }

    /// Possession of the certificate's key, chained or not: checked with its public key.
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}
