//! TLS termination: rustls with TLS 1.2 and 1.3 only, ALPN h2 then http/1.1, and a
//! self-signed localhost certificate made on first start when the operator allows it.

use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsFiles;
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

/// Load the certificate chain and key into a rustls server configuration.
pub fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = load_certs(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| TlsError::Key { path: files.key.display().to_string(), reason: e.to_string() })?;
    let mut config = ServerConfig::builder_with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
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

mod client_cert;
pub use client_cert::ClientCert;
