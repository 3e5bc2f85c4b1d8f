//! One bounded HTTPS GET to an identity provider: connect and whole-request timeouts, a
//! body size cap (declared or streamed), the `Cache-Control: max-age` of the answer.
//! Config-free: the caller passes the bounds.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnectorBuilder;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// Why a fetch brought nothing usable. The label is the metric's `outcome`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    #[error("unreachable: {0}")]
    Unreachable(String),
    #[error("no answer within the timeout")]
    Timeout,
    #[error("answered HTTP {0}")]
    Status(u16),
    #[error("document larger than {0} bytes")]
    TooLarge(usize),
    #[error("bad document: {0}")]
    BadDocument(String),
    #[error("no key in the set fits the configured algorithms")]
    NoUsableKeys,
    #[error("discovery failed: {0}")]
    Discovery(String),
}

impl FetchError {
    pub fn label(&self) -> &'static str {
        match self {
            FetchError::Unreachable(_) => "unreachable",
            FetchError::Timeout => "timeout",
            FetchError::Status(_) => "http_status",
            FetchError::TooLarge(_) => "too_large",
            FetchError::BadDocument(_) => "bad_document",
            FetchError::NoUsableKeys => "no_usable_keys",
            FetchError::Discovery(_) => "discovery_failed",
        }
    }
}

/// What a successful GET returned.
pub struct Fetched {
    pub body: Bytes,
    /// `Cache-Control: max-age`, when given (and not `no-store` / `no-cache`).
    pub max_age: Option<Duration>,
}

/// An HTTP(S) client for one issuer: the system roots plus an optional CA.
pub struct Fetcher {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>,
    timeout: Duration,
    max_bytes: usize,
}

impl Fetcher {
    pub fn new(
        ca: Option<&Path>,
        connect_timeout: Duration,
        timeout: Duration,
        max_bytes: usize,
    ) -> Result<Self, String> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        if let Some(ca) = ca {
            let certs = CertificateDer::pem_file_iter(ca)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("ca {}: {e}", ca.display()))?;
            if certs.is_empty() {
                return Err(format!("ca {}: no certificate in the file", ca.display()));
            }
            for cert in certs {
                roots.add(cert).map_err(|e| format!("ca {}: {e}", ca.display()))?;
            }
        }
        let tls = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(connect_timeout));
        let https =
            HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http().enable_http1().wrap_connector(http);
        let client = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(1).build(https);
        Ok(Fetcher { client, timeout, max_bytes })
    }

    /// GET `url`; 200 only, redirects not followed (a redirect could lead anywhere).
    pub async fn get(&self, url: &str) -> Result<Fetched, FetchError> {
        match tokio::time::timeout(self.timeout, self.get_inner(url)).await {
            Ok(r) => r,
            Err(_) => Err(FetchError::Timeout),
        }
    }

    async fn get_inner(&self, url: &str) -> Result<Fetched, FetchError> {
        let req = Request::get(url)
            .header(header::ACCEPT, "application/json, application/jwk-set+json")
            .header(header::USER_AGENT, concat!("portcullis/", env!("CARGO_PKG_VERSION")))
            .body(Empty::new())
            .map_err(|e| FetchError::Unreachable(format!("bad URL: {e}")))?;
        let resp = self.client.request(req).await.map_err(|e| FetchError::Unreachable(error_chain(&e)))?;
        if resp.status() != StatusCode::OK {
            return Err(FetchError::Status(resp.status().as_u16()));
        }
        let declared = resp
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.max_bytes as u64) {
            return Err(FetchError::TooLarge(self.max_bytes));
        }
        let max_age = max_age(resp.headers());
        let body = Limited::new(resp.into_body(), self.max_bytes)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    FetchError::TooLarge(self.max_bytes)
                } else {
                    FetchError::Unreachable(format!("body: {e}"))
                }
            })?
            .to_bytes();
        Ok(Fetched { body, max_age })
    }
}

/// The error and its sources on one line (hyper's top-level error says little).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// `max-age` of `Cache-Control`; none with `no-store` or `no-cache`.
fn max_age(headers: &http::HeaderMap) -> Option<Duration> {
    let mut age = None;
    for v in headers.get_all(header::CACHE_CONTROL) {
        let Ok(v) = v.to_str() else { continue };
        for d in v.split(',').map(str::trim) {
            let lower = d.to_ascii_lowercase();
            if lower == "no-store" || lower == "no-cache" {
                return None;
            }
            if let Some(n) = lower.strip_prefix("max-age=") {
                age = n.trim_matches('"').parse::<u64>().ok().map(Duration::from_secs);
            }
        }
    }
    age
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_control() {
        let mut h = http::HeaderMap::new();
        assert_eq!(max_age(&h), None);
        h.insert(header::CACHE_CONTROL, "public, max-age=300".parse().unwrap());
        assert_eq!(max_age(&h), Some(Duration::from_secs(300)));
        h.insert(header::CACHE_CONTROL, "max-age=300, no-cache".parse().unwrap());
        assert_eq!(max_age(&h), None);
        h.insert(header::CACHE_CONTROL, "max-age=abc".parse().unwrap());
        assert_eq!(max_age(&h), None);
    }
}
