//! The client side: kept-alive connections to the upstreams, built from the config in force.

mod pool;
mod upgrade;

use std::sync::Arc;

use http::uri::{Authority, Scheme};
use http::{Request, Response};
use hyper_rustls::HttpsConnectorBuilder;
use hyper_util::client::legacy::connect::HttpConnector;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::config::Config;
use crate::http::{Body, BoxError};
use pool::Pool;
pub use pool::UpstreamBody;

/// The kept-alive connections to every upstream, HTTP and HTTPS (rustls, platform roots
/// plus an optional operator CA).
pub struct Upstreams {
    pool: Arc<Pool>,
    /// HTTP/1.1 only (ALPN `http/1.1`): upgrades (WebSocket) each get a fresh connection.
    upgrades: upgrade::Upgrades,
}

impl Upstreams {
    pub fn new(config: &Config) -> Result<Upstreams, String> {
        let mut roots = rustls::RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        roots.add_parsable_certificates(native.certs);
        if let Some(ca) = &config.upstream_ca {
            let certs = CertificateDer::pem_file_iter(ca)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("upstream_ca {}: {e}", ca.display()))?;
            // A file with no certificate would trust only the system roots: not what the
            // operator meant, and upstreams on a private CA would fail later, per request.
            if certs.is_empty() {
                return Err(format!(
                    "upstream_ca {}: no certificate in the file (PEM `BEGIN CERTIFICATE`)",
                    ca.display()
                ));
            }
            for cert in certs {
                roots.add(cert).map_err(|e| format!("upstream_ca {}: {e}", ca.display()))?;
            }
        }
        let tls = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(config.limits.upstream_connect_timeout));
        // Upgrades offer only http/1.1 by ALPN: a WebSocket handshake is an HTTP/1.1
        // request, and an upstream that picked h2 would fail it.
        let http1_only = HttpsConnectorBuilder::new()
            .with_tls_config(tls.clone())
            .https_or_http()
            .enable_http1()
            .wrap_connector(http.clone());
        let https = HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_all_versions()
            .wrap_connector(http);
        let max_head = config.limits.max_upstream_header_bytes;
        let upgrades = upgrade::Upgrades::new(http1_only, max_head);
        Ok(Upstreams { pool: Pool::new(https, std::time::Duration::from_secs(90), 256, max_head), upgrades })
    }

    /// Send `req` to `authority` over a kept-alive connection, or a new one: HTTP/2 with
    /// prior knowledge when `h2c`, over TLS what ALPN picks (h2 or http/1.1), else HTTP/1.1.
    pub(crate) async fn send(
        &self,
        scheme: &Scheme,
        authority: &Authority,
        h2c: bool,
        req: Request<Body>,
    ) -> Result<Response<UpstreamBody>, BoxError> {
        self.pool.send(scheme, authority, h2c, req).await
    }

    /// Send an upgrade request (a WebSocket handshake) on a fresh HTTP/1.1 connection of
    /// its own, never a pooled one; an upgraded answer's connection is taken with
    /// `hyper::upgrade::on`, any other answer's body streams from it and then it closes.
    pub(crate) async fn send_upgrade(
        &self,
        scheme: &Scheme,
        authority: &Authority,
        req: Request<Body>,
    ) -> Result<Response<hyper::body::Incoming>, BoxError> {
        self.upgrades.send(scheme, authority, req).await
    }
}
