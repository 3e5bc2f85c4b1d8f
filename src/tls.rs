//! TLS termination: rustls with TLS 1.2 and 1.3 only, ALPN h2 then http/1.1, and a
//! self-signed localhost certificate made on first start when the operator allows it.

use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use tokio_rustls::TlsAcceptor;

use crate::config::{ClientAuthMode, TlsFiles};
use crate::tokens::keys::write_private;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS certificate {path}: {reason}")]
    Cert { path: String, reason: String },
    #[error("TLS key {path}: {reason}")]
    Key { path: String, reason: String },
    #[error("TLS certificate and key do not form a usable pair: {0}")]
    Config(String),
    #[error("cannot create the dev certificate: {0}")]
    DevCert(String),
    #[error("TLS client CA bundle {path}: {reason}")]
    ClientCa { path: String, reason: String },
}

impl TlsError {
    /// The config line to report it at: `client_ca`'s for the bundle, else `[tls]`'s.
    pub fn line(&self, files: &TlsFiles) -> usize {
        match self {
            TlsError::ClientCa { .. } => files.client_ca_line,
            _ => files.line,
        }
    }
}

/// Make a self-signed certificate for localhost when both files are missing and the
/// config allows it. Returns whether it generated one.
pub fn ensure_dev_certificate(files: &TlsFiles) -> Result<bool, TlsError> {
    if !files.dev_certificate || files.cert.exists() || files.key.exists() {
        return Ok(false);
    }
    let names = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
    let ck = rcgen::generate_simple_self_signed(names).map_err(|e| TlsError::DevCert(e.to_string()))?;
    write_private(&files.key, ck.signing_key.serialize_pem().as_bytes())
        .map_err(|e| TlsError::DevCert(format!("{}: {e}", files.key.display())))?;
    if let Some(dir) = files.cert.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| TlsError::DevCert(format!("{}: {e}", dir.display())))?;
    }
    std::fs::write(&files.cert, ck.cert.pem())
        .map_err(|e| TlsError::DevCert(format!("{}: {e}", files.cert.display())))?;
    tracing::warn!(
        cert = %files.cert.display(),
        key = %files.key.display(),
        "generated a self-signed development certificate for localhost; use a real certificate in production"
    );
    Ok(true)
}

/// What a TLS listener accepts connections with: the rustls configuration and, when
/// client certificates are asked for, the verifier that judges them again after the
/// handshake ([`ClientCert::of_chain`]). Swapped whole by a reload.
pub struct Acceptor {
    pub tls: TlsAcceptor,
    pub clients: Option<Arc<ClientVerifier>>,
}

impl Acceptor {
    /// The client certificate a finished handshake accepted, if any.
    pub fn client_cert(&self, conn: &rustls::ServerConnection) -> Option<Arc<ClientCert>> {
        let verifier = self.clients.as_deref()?;
        let chain = conn.peer_certificates()?;
        let cert = ClientCert::of_chain(chain, verifier);
        if cert.is_none() {
            tracing::debug!("client certificate accepted by the handshake does not parse; ignored");
        }
        cert.map(Arc::new)
    }
}

/// Load the certificate chain and key (and the client CA bundle) into an acceptor.
pub fn acceptor(files: &TlsFiles) -> Result<Acceptor, TlsError> {
    let (config, clients) = server_config_with(files)?;
    Ok(Acceptor { tls: TlsAcceptor::from(config), clients })
}

/// Load the certificate chain and key into a rustls server configuration.
pub fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    server_config_with(files).map(|(config, _)| config)
}

fn server_config_with(files: &TlsFiles) -> Result<(Arc<ServerConfig>, Option<Arc<ClientVerifier>>), TlsError> {
    let certs = load_certs(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| TlsError::Key { path: files.key.display().to_string(), reason: e.to_string() })?;
    let clients = match (files.client_auth, &files.client_ca) {
        (ClientAuthMode::None, _) => None,
        (mode, Some(ca)) => Some(Arc::new(
            ClientVerifier::new(client_roots(ca)?, mode)
                .map_err(|reason| TlsError::ClientCa { path: ca.display().to_string(), reason })?,
        )),
        // Validation refuses this; never serve without the CAs asked for.
        (_, None) => return Err(TlsError::ClientCa { path: String::new(), reason: "client_ca is not set".into() }),
    };
    let builder = ServerConfig::builder_with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12]);
    let builder = match &clients {
        None => builder.with_no_client_auth(),
        Some(v) => builder.with_client_cert_verifier(v.clone()),
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| TlsError::Config(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((Arc::new(config), clients))
}

/// The CA bundle client certificates chain to: at least one certificate, each a usable
/// trust anchor.
fn client_roots(path: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let certs = load_certs(path).map_err(|e| match e {
        TlsError::Cert { path, reason } => TlsError::ClientCa { path, reason },
        other => other,
    })?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs {
        roots.add(cert).map_err(|e| TlsError::ClientCa { path: path.display().to_string(), reason: e.to_string() })?;
    }
    Ok(roots)
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |reason: String| TlsError::Cert { path: path.display().to_string(), reason };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no certificate in file".into()));
    }
    Ok(certs)
}

mod client_auth;
mod client_cert;
pub use client_auth::ClientVerifier;
pub use client_cert::{ClientCert, thumbprint};
