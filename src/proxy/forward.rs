//! Phase 4, forward: header hygiene, identity headers, and the pooled upstream client.
//! Bodies stream both ways; nothing is buffered.

use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, Uri, Version};
use http_body::Body as HttpBody;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper_rustls::HttpsConnectorBuilder;
use hyper_util::client::legacy::connect::HttpConnector;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use super::error::ProxyError;
use super::pool::Pool;
use crate::authority::Authority;
use crate::config::{Config, Route};
use crate::cookies;
use crate::http::{Body, BoxError};
use crate::state::Runtime;
use crate::tokens::validate::Principal;

/// The kept-alive connections to every upstream, HTTP and HTTPS (rustls, platform roots
/// plus an optional operator CA).
pub struct Upstreams {
    pool: Arc<Pool>,
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
            for cert in certs {
                roots.add(cert).map_err(|e| format!("upstream_ca {}: {e}", ca.display()))?;
            }
        }
        let tls = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(config.limits.upstream_connect_timeout));
        let https =
            HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http().enable_http1().wrap_connector(http);
        let max_head = config.limits.max_upstream_header_bytes;
        Ok(Upstreams { pool: Pool::new(https, std::time::Duration::from_secs(90), 256, max_head) })
    }
}

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1).
fn is_hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The fields a `Connection` header names: hop-by-hop for this message too. Read as bytes,
/// so that another byte in the header cannot hide the names it lists.
fn connection_listed(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .filter_map(|t| HeaderName::from_bytes(cookies::trim(t)).ok())
        .collect()
}

/// Remove the fields `doomed` says go, in one pass over the names (each `remove` hashes
/// its name, so asking for every name that might be there costs more than looking).
fn remove_where(headers: &mut HeaderMap, doomed: impl Fn(&HeaderName) -> bool) {
    let gone: Vec<HeaderName> = headers.keys().filter(|n| doomed(n)).cloned().collect();
    for name in gone {
        headers.remove(name);
    }
}

/// Remove hop-by-hop headers, including those the `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed = connection_listed(headers);
    remove_where(headers, |n| is_hop_by_hop(n.as_str()) || listed.contains(n));
}

/// The gateway's own cookies (the login session and its CSRF token) are for the gateway
/// alone: an upstream must neither read them (it could replay the session at /authorize)
/// nor set them (session fixation).
///
/// Pairs are read as bytes (see [`cookies::raw_pairs`]): a pair in which a gateway cookie
/// name appears anywhere, in any case ([`cookies::mentions_gateway_cookie`]), is dropped,
/// since some parser reads `\xa0__Host-…=v` or `a=1,__Host-…=v` as ours; every other pair
/// is kept byte for byte. HTTP/2 may split `Cookie` into several fields; an HTTP/1.1
/// upstream gets them as one, joined with "; " (RFC 9113 §8.2.3). If the result could not
/// be a header value, no Cookie is sent at all.
pub(crate) fn filter_cookies(headers: &mut HeaderMap) {
    let mut fields = headers.get_all(header::COOKIE).iter();
    let Some(first) = fields.next() else { return };
    // The common case, one field naming none of ours: a scan, no allocation.
    if fields.next().is_none() && !cookies::mentions_gateway_cookie(first.as_bytes()) {
        return;
    }
    let mut kept: Vec<u8> = Vec::new();
    for field in headers.get_all(header::COOKIE) {
        for pair in cookies::raw_pairs(field.as_bytes()) {
            if cookies::mentions_gateway_cookie(pair) {
                continue;
            }
            if !kept.is_empty() {
                kept.extend_from_slice(b"; ");
            }
            kept.extend_from_slice(pair);
        }
    }
    match HeaderValue::from_bytes(&kept) {
        Ok(v) if !kept.is_empty() => {
            headers.insert(header::COOKIE, v);
        }
        _ => {
            headers.remove(header::COOKIE);
        }
    }
}

/// Drop every `Set-Cookie` whose name=value part mentions a gateway cookie name
/// ([`cookies::sets_gateway_cookie`]), however the rest is encoded.
pub(crate) fn drop_gateway_set_cookies(headers: &mut HeaderMap) {
    if !headers.get_all(header::SET_COOKIE).iter().any(|v| cookies::sets_gateway_cookie(v.as_bytes())) {
        return;
    }
    let kept: Vec<HeaderValue> = headers
        .get_all(header::SET_COOKIE)
        .iter()
        .filter(|v| !cookies::sets_gateway_cookie(v.as_bytes()))
        .cloned()
        .collect();
    headers.remove(header::SET_COOKIE);
    for v in kept {
        headers.append(header::SET_COOKIE, v);
    }
}

/// Headers about the client's address, the scheme, host, port or path prefix of the
/// original request, that some upstream trusts as much as `X-Forwarded-For`: every
/// `X-Forwarded-*` (a prefix, not a list) and these. Kept only from a trusted proxy.
const FORWARDING_CLAIMS: [&[u8]; 20] = [
    b"forwarded",
    b"x-forwarded",
    b"x-real-ip",
    b"true-client-ip",
    b"client-ip",
    b"x-client-ip",
    b"x-cluster-client-ip",
    b"x-originating-ip",
    b"x-remote-ip",
    b"x-remote-addr",
    b"x-proxyuser-ip",
    b"cf-connecting-ip",
    b"fastly-client-ip",
    b"x-scheme",
    b"x-url-scheme",
    b"front-end-https",
    b"x-original-host",
    b"x-host",
    b"x-envoy-external-address",
    // ingress-nginx's copy of the client's own X-Forwarded-For.
    b"x-original-forwarded-for",
];

/// Headers that make some frameworks route or dispatch on something else than the request
/// line: another path (IIS, Symfony, Zend) or another method (Rails, Express, Spring, ...),
/// which would escape the route's own path and method filters. Kept only from a trusted
/// proxy on a route with `pass_rewrite_headers`.
const REWRITES: [&[u8]; 7] = [
    b"x-original-url",
    b"x-original-uri",
    b"x-rewrite-url",
    b"x-http-method-override",
    b"x-method-override",
    b"x-http-method",
    b"x-original-method",
];

/// Any spelling, `_` for `-`, of a forwarding claim.
fn is_forwarding_claim(name: &[u8]) -> bool {
    const PREFIX: &[u8] = b"x-forwarded-";
    (name.len() > PREFIX.len() && same_when_dashed(&name[..PREFIX.len()], PREFIX))
        || FORWARDING_CLAIMS.iter().any(|c| same_when_dashed(name, c))
}

/// Any spelling, `_` for `-`, of a rewrite or method-override header.
fn is_rewrite(name: &[u8]) -> bool {
    REWRITES.iter().any(|c| same_when_dashed(name, c))
}

/// `a` and `b` name the same header once `_` is read as `-` — CGI-style upstreams (WSGI,
/// Rack, PHP) see `X_Auth_User` as `X-Auth-User`.
/// Both are lower-case, as a `HeaderName` is.
fn same_when_dashed(a: &[u8], b: &[u8]) -> bool {
    let dash = |c: u8| if c == b'_' { b'-' } else { c };
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| dash(*x) == dash(*y))
}

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

    pub fn ip_text(&self) -> &str {
        self.ip.to_str().unwrap_or("unknown")
    }
}

/// Rewrite inbound headers for the upstream: hygiene first, then what we vouch for.
fn upstream_headers(
    headers: &mut HeaderMap,
    rt: &Runtime,
    route: &Route,
    principal: Option<&Principal>,
    peer: &Peer,
    authority: Option<&Authority>,
) -> Result<(), ProxyError> {
    filter_cookies(headers);
    let ids = &rt.config.headers;
    let trusted = rt.config.is_trusted_proxy(peer.addr.ip());

    let listed = connection_listed(headers);
    // Several X-Forwarded-For lines are one comma-separated list (RFC 9110 §5.3); one the
    // Connection header names is hop-by-hop and not kept.
    let prior_kept = trusted && !listed.contains(&X_FORWARDED_FOR);
    let xff = match headers.get_all(X_FORWARDED_FOR).iter().filter_map(|v| v.to_str().ok()).collect::<Vec<_>>() {
        prior if prior_kept && !prior.is_empty() => {
            HeaderValue::try_from(format!("{}, {}", prior.join(", "), peer.ip_text())).ok()
        }
        _ => Some(peer.ip.clone()),
    };

    remove_where(headers, |name| {
        let n = name.as_str();
        let b = n.as_bytes();
        // No proxy sends an underscore spelling of these: it can only come from the
        // caller, and a CGI-style upstream would read it as the real one.
        let underscored = b.contains(&b'_');
        is_hop_by_hop(n)
            || listed.contains(name)
            // Ours to set: the upstream's own authority, the address we saw.
            || n == "host"
            || n == "x-forwarded-for"
            || (n == "authorization" && !route.forward_token)
            || ((!trusted || underscored) && is_forwarding_claim(b))
            || ((!trusted || underscored || !route.pass_rewrite_headers) && is_rewrite(b))
            // Identity headers, and their underscore spellings, come only from us.
            || ids.all().iter().any(|id| same_when_dashed(id.as_str().as_bytes(), b))
    });

    if let Some(v) = xff {
        headers.insert(X_FORWARDED_FOR, v);
    }
    if !headers.contains_key(X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(if peer.tls { "https" } else { "http" }));
    }
    if !headers.contains_key(X_FORWARDED_HOST)
        && let Some(a) = authority
    {
        headers.insert(X_FORWARDED_HOST, a.header_value().clone());
    }

    if let Some(p) = principal {
        let value = |s: &str| {
            HeaderValue::from_bytes(s.as_bytes()).map_err(|_| ProxyError::BadGateway("identity not encodable".into()))
        };
        headers.insert(ids.client_id.clone(), value(p.client_id())?);
        headers.insert(ids.subject.clone(), value(p.subject())?);
        headers.insert(ids.scope.clone(), value(p.scope())?);
        headers.insert(ids.token_id.clone(), value(p.token_id())?);
        if let Some(user) = p.user() {
            headers.insert(ids.user.clone(), value(user)?);
        }
    }
    Ok(())
}

pub async fn forward<B>(
    rt: &Runtime,
    upstreams: &Upstreams,
    route: &Route,
    principal: Option<&Principal>,
    req: Request<B>,
    peer: &Peer,
    authority: Option<&Authority>,
) -> Result<Response<Body>, ProxyError>
where
    B: HttpBody<Data = bytes::Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    let limits = &rt.config.limits;
    let (mut parts, body) = req.into_parts();
    let declared =
        parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_proxy_body_bytes) {
        return Err(ProxyError::PayloadTooLarge);
    }

    // Origin-form: the connection already says which upstream this is. When the route
    // maps the path unchanged, the request's own (already parsed) target is reused.
    let uri = match (super::route::upstream_path(route, parts.uri.path()), parts.uri.path_and_query()) {
        (None, Some(unchanged)) => Uri::from(unchanged.clone()),
        (mapped, _) => {
            let path = parts.uri.path();
            let mut target = mapped.unwrap_or_else(|| if path.is_empty() { "/" } else { path }.to_string());
            if let Some(q) = parts.uri.query() {
                target.push('?');
                target.push_str(q);
            }
            Uri::try_from(target).map_err(|_| ProxyError::UnsafePath)?
        }
    };

    upstream_headers(&mut parts.headers, rt, route, principal, peer, authority)?;
    parts.headers.insert(header::HOST, upstream_host(&route.upstream.scheme, &route.upstream.authority));
    parts.uri = uri;
    parts.version = Version::HTTP_11;

    let body = body.map_err(|e| BoxError::from(InboundBodyError(e.into())));
    let body = Limited::new(body, limits.max_proxy_body_bytes.try_into().unwrap_or(usize::MAX)).boxed();
    let req = Request::from_parts(parts, body);

    let upstream = &route.upstream;
    let sent = upstreams.pool.send(&upstream.scheme, &upstream.authority, req);
    let resp = match tokio::time::timeout(limits.upstream_timeout, sent).await {
        Err(_) => return Err(ProxyError::GatewayTimeout),
        // An undeclared body crossed the limit while being sent: the caller's fault, not the upstream's.
        Ok(Err(e)) if caused_by::<LengthLimitError>(&*e) => return Err(ProxyError::PayloadTooLarge),
        Ok(Err(e)) if caused_by::<InboundBodyError>(&*e) => return Err(ProxyError::BadRequestBody),
        Ok(Err(e)) => return Err(ProxyError::BadGateway(error_chain(&*e))),
        Ok(Ok(resp)) => resp,
    };
    let (mut parts, body) = resp.into_parts();
    // The client's connection is ours, not the upstream's: an HTTP/1.0 upstream must not
    // make an HTTP/1.1 client's response HTTP/1.0 (and close its connection). hyper
    // answers an HTTP/1.0 client in HTTP/1.0 whatever this says.
    parts.version = Version::HTTP_11;
    strip_hop_by_hop(&mut parts.headers);
    drop_gateway_set_cookies(&mut parts.headers);
    Ok(Response::from_parts(parts, body.map_err(BoxError::from).boxed()))
}

/// The `Host` an upstream gets: its own authority, without the scheme's default port.
fn upstream_host(scheme: &http::uri::Scheme, authority: &http::uri::Authority) -> HeaderValue {
    let default_port = if *scheme == http::uri::Scheme::HTTPS { 443 } else { 80 };
    let host = match authority.port_u16() {
        Some(port) if port == default_port => authority.host(),
        _ => authority.as_str(),
    };
    // An `Authority` is valid header text.
    HeaderValue::from_str(host).unwrap_or_else(|_| HeaderValue::from_static("localhost"))
}

/// Marks a failure of the caller's request body, so that it is not blamed on the upstream.
#[derive(Debug)]
struct InboundBodyError(BoxError);

impl std::fmt::Display for InboundBodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "request body: {}", self.0)
    }
}

impl std::error::Error for InboundBodyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

fn caused_by<T: std::error::Error + 'static>(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.is::<T>() {
            return true;
        }
        cur = err.source();
    }
    false
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cookie_headers(fields: &[&[u8]]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for f in fields {
            h.append(header::COOKIE, HeaderValue::from_bytes(f).unwrap());
        }
        h
    }

    fn filtered(fields: &[&[u8]]) -> Vec<Vec<u8>> {
        let mut h = cookie_headers(fields);
        filter_cookies(&mut h);
        h.get_all(header::COOKIE).iter().map(|v| v.as_bytes().to_vec()).collect()
    }

    #[test]
    fn gateway_cookies_are_dropped_whatever_the_header_holds() {
        assert_eq!(filtered(&[b"lang=fran\xe7ais; __Host-portcullis_session=S"]), vec![b"lang=fran\xe7ais".to_vec()]);
        assert_eq!(
            filtered(&["a=1;__HOST-portcullis_CSRF=c ;\tb=\"é\"".as_bytes()]),
            vec!["a=1; b=\"é\"".as_bytes().to_vec()]
        );
        assert_eq!(filtered(&[b"__Host-portcullis_session"]), Vec::<Vec<u8>>::new());
        assert_eq!(filtered(&[b"__Host-portcullis_session=S; __Host-portcullis_csrf=C"]), Vec::<Vec<u8>>::new());
        // HTTP/2 split fields: joined, then filtered.
        assert_eq!(
            filtered(&[b"a=1", b"__Host-portcullis_session=S", b"b=\xff; __host-portcullis_csrf=x"]),
            vec![b"a=1; b=\xff".to_vec()]
        );
        assert_eq!(filtered(&[b"a=1", b"b=2"]), vec![b"a=1; b=2".to_vec()]);
        // Untouched, byte for byte, when none of ours is there.
        assert_eq!(filtered(&[b" a=1 ;b=\xe9 "]), vec![b" a=1 ;b=\xe9 ".to_vec()]);
        // Other bytes before the name, a comma instead of ';', the name in a value: the
        // whole pair goes.
        for v in [
            &b"a=1;\xa0__Host-portcullis_csrf=ZZ"[..],
            b"a=1;\x85__Host-portcullis_csrf=ZZ",
            b"a=1; !__HOST-portcullis_session=S",
            b"a=1; \"__Host-portcullis_session\"=S",
            b"a=1; b=2,__Host-portcullis_session=S",
            b"a=1; x=__host-portcullis_csrf",
        ] {
            assert_eq!(filtered(&[v]), vec![b"a=1".to_vec()], "{:?}", String::from_utf8_lossy(v));
        }
        assert_eq!(filtered(&[b"a=1,__Host-portcullis_session=S"]), Vec::<Vec<u8>>::new());
    }

    #[test]
    fn connection_names_are_read_even_beside_non_ascii_bytes() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_bytes(b"close, X-Forwarded-For ,\xe9").unwrap());
        assert_eq!(connection_listed(&h), vec![HeaderName::from_static("close"), X_FORWARDED_FOR]);
    }

    #[test]
    fn set_cookies_naming_gateway_cookies_are_dropped() {
        let mut h = HeaderMap::new();
        for v in [
            &b"__Host-portcullis_session=\xe9vil"[..],
            b"ok=1",
            b"=__host-portcullis_csrf=x",
            b"\xa0__Host-portcullis_session=v",
            b"==__Host-portcullis_csrf",
            b"\"__Host-portcullis_session\"=v",
            b"x=1, __Host-portcullis_session=v",
            b"b=\xe9",
            b"p=1; Path=/__Host-portcullis_session",
        ] {
            h.append(header::SET_COOKIE, HeaderValue::from_bytes(v).unwrap());
        }
        drop_gateway_set_cookies(&mut h);
        let left: Vec<&[u8]> = h.get_all(header::SET_COOKIE).iter().map(HeaderValue::as_bytes).collect();
        assert_eq!(left, vec![&b"ok=1"[..], b"b=\xe9", b"p=1; Path=/__Host-portcullis_session"]);
    }

    #[test]
    fn forwarding_and_rewrite_families_match_every_spelling() {
        for n in [
            "x-forwarded-for",
            "x_forwarded_for",
            "x-forwarded-prefix",
            "x_forwarded-anything",
            "x-forwarded",
            "forwarded",
            "x_real_ip",
            "client-ip",
            "client_ip",
            "front-end-https",
            "x-scheme",
            "true_client_ip",
        ] {
            assert!(is_forwarding_claim(n.as_bytes()), "{n}");
        }
        for n in ["x-forwarded-", "x-forwardedfor", "forwarded-for", "x-request-id", "cookie", "x-real-ipv6"] {
            assert!(!is_forwarding_claim(n.as_bytes()), "{n}");
        }
        for n in ["x-original-url", "x_rewrite_url", "x-http-method-override", "x_method_override", "x-http-method"] {
            assert!(is_rewrite(n.as_bytes()), "{n}");
        }
        assert!(!is_rewrite(b"x-http-methods"));
    }
}
