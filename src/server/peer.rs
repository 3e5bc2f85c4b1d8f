//! The connection a request came in on.

use std::net::SocketAddr;
use std::sync::Arc;

use http::HeaderValue;

pub use crate::tls::ClientCert;

/// Where the request came from, as the listener saw it.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    pub tls: bool,
    /// The address as text (IPv4-mapped IPv6 shown as IPv4), made once per connection
    /// for `X-Forwarded-For` and the access log.
    ip: HeaderValue,
    /// `Forwarded` (RFC 7239) naming this hop alone, `for=<ip>;proto=<scheme>`: what the
    /// upstream gets when no trusted proxy came before the peer, made once per connection.
    forwarded: HeaderValue,
    /// The client certificate the TLS handshake proved possession of (`[tls] client_auth`),
    /// the same for every request of the connection, HTTP/1.1 or HTTP/2.
    client_cert: Option<Arc<ClientCert>>,
}

impl Peer {
    pub fn new(addr: SocketAddr, tls: bool) -> Peer {
        let text = addr.ip().to_canonical().to_string();
        // An IP address is always valid header text.
        let ip = HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        let proto = if tls { "https" } else { "http" };
        // An IPv6 node is bracketed and so must be quoted (RFC 7239 §6).
        let node = if addr.ip().to_canonical().is_ipv6() { format!("\"[{text}]\"") } else { text };
        let forwarded = HeaderValue::try_from(format!("for={node};proto={proto}"))
            .unwrap_or_else(|_| HeaderValue::from_static("for=unknown"));
        Peer { addr, tls, ip, forwarded, client_cert: None }
    }

    /// The connection presented `cert` in its TLS handshake.
    pub fn with_client_cert(mut self, cert: Option<Arc<ClientCert>>) -> Peer {
        self.client_cert = cert;
        self
    }

    /// The client certificate of the connection, if one was presented and accepted.
    pub fn client_cert(&self) -> Option<&ClientCert> {
        self.client_cert.as_deref()
    }

    /// The address as header text, for `X-Forwarded-For`.
    pub(crate) fn ip_header(&self) -> &HeaderValue {
        &self.ip
    }

    /// `Forwarded` for this hop alone (see the field).
    pub(crate) fn forwarded_header(&self) -> &HeaderValue {
        &self.forwarded
    }

    pub fn ip_text(&self) -> &str {
        self.ip.to_str().unwrap_or("unknown")
    }
}
