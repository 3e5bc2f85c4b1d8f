//! The client certificate of a connection, as the gateway uses it: its thumbprint (the
//! key of certificate-bound tokens, RFC 8705 §3.1), whether it chained to `client_ca`, and
//! the names `tls_client_auth` matches (RFC 8705 §2.1.2).

use std::net::IpAddr;

/// What a TLS handshake proved about the client: it holds the private key of this
/// certificate (its CertificateVerify signature checked out).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert {
    /// base64url (unpadded) SHA-256 of the leaf certificate's DER: `cnf.x5t#S256`.
    pub thumbprint: Box<str>,
    /// The certificate chained to a `[tls] client_ca` root and was within its validity
    /// period: only then do its names mean anything (`tls_client_auth`).
    pub chained: bool,
    /// The subject DN in RFC 4514 string form, as [`super::dn`] normalises it.
    pub subject_dn: Box<str>,
    pub san_dns: Box<[Box<str>]>,
    pub san_uri: Box<[Box<str>]>,
    pub san_ip: Box<[IpAddr]>,
    pub san_email: Box<[Box<str>]>,
}
