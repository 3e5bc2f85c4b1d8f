//! The connection a request came in on.

use std::net::SocketAddr;

use http::HeaderValue;

/// Where the request came from, as the listener saw it.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    pub tls: bool,
    /// The address as text (IPv4-mapped IPv6 shown as IPv4), made once per connection
    /// for `X-Forwarded-For` and the access log.
    ip: HeaderValue,
}

impl Peer {
    pub fn new(addr: SocketAddr, tls: bool) -> Peer {
        let text = addr.ip().to_canonical().to_string();
        // An IP address is always valid header text.
        let ip = HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        Peer { addr, tls, ip }
    }

    /// The address as header text, for `X-Forwarded-For`.
    pub(crate) fn ip_header(&self) -> &HeaderValue {
        &self.ip
    }

    pub fn ip_text(&self) -> &str {
        self.ip.to_str().unwrap_or("unknown")
    }
}
