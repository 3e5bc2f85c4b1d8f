//! Upgrade requests (WebSocket handshakes) upstream: one fresh HTTP/1.1 connection each.
//! A pooled connection cannot be used: once upgraded it is no longer HTTP, and a refused
//! upgrade's connection is better closed than reused by the next request.

use std::future::poll_fn;

use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use tower_service::Service;

use crate::http::{Body, BoxError};

pub(super) struct Upgrades {
    connector: HttpsConnector<HttpConnector>,
    max_head_bytes: usize,
}

impl Upgrades {
    pub(super) fn new(connector: HttpsConnector<HttpConnector>, max_head_bytes: usize) -> Upgrades {
        Upgrades { connector, max_head_bytes: max_head_bytes.max(8192) }
    }

    /// Connect, send `req`, and return the response head. The connection is driven by a
    /// task of its own, which hands the socket over on a `101` (`with_upgrades`) and
    /// otherwise ends with the response body.
    pub(super) async fn send(
        &self,
        scheme: &Scheme,
        authority: &Authority,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, BoxError> {
        let uri = Uri::builder().scheme(scheme.clone()).authority(authority.clone()).path_and_query("/").build()?;
        let mut connector = self.connector.clone();
        poll_fn(|cx| connector.poll_ready(cx)).await?;
        let stream = connector.call(uri).await?;
        let (mut sender, conn) = http1::Builder::new().max_header_size(self.max_head_bytes).handshake(stream).await?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream upgrade connection ended with an error");
            }
        });
        Ok(sender.send_request(req).await?)
    }
}
