//! Phase 4, forward: header hygiene, identity headers, and the pooled upstream client.
//! Bodies stream both ways; only an `application/x-www-form-urlencoded` request body is
//! read first (up to the form limit), to take out an `access_token` (RFC 6750 §2.2).

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, Uri, Version};
use http_body::Body as HttpBody;
use http_body_util::{BodyExt, LengthLimitError, Limited};

use super::access_token::{is_form, without_access_token};
use super::error::ProxyError;
use crate::authority::Authority;
use crate::config::Route;
use crate::cookies;
use crate::http::{Body, BoxError};
pub use crate::server::peer::Peer;
use crate::state::Runtime;
use crate::tokens::validate::Principal;
pub use crate::upstream::Upstreams;

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1).
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn is_hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP.contains(&name)
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// The fields a `Connection` header names: hop-by-hop for this message too. Read as bytes,
/// so that another byte in the header cannot hide the names it lists.
fn connection_listed(headers: &HeaderMap) -> Vec<HeaderName> {
    crate::http::connection_tokens(headers)
        // Already hop-by-hop by name (`Connection: keep-alive`, on most answers): not
        // made into a name again.
        .filter(|t| !HOP_BY_HOP.iter().any(|h| t.eq_ignore_ascii_case(h.as_bytes())))
        .filter_map(|t| HeaderName::from_bytes(t).ok())
        .collect()
}

/// Remove the fields `doomed` says go, in one pass over the names (each `remove` hashes
/// its name, so asking for every name that might be there costs more than looking).
fn remove_where(headers: &mut HeaderMap, doomed: impl Fn(&HeaderName) -> bool) {
    // On the stack for the usual few (`Connection` and `Keep-Alive` of an answer).
    let gone: smallvec::SmallVec<[HeaderName; 4]> = headers.keys().filter(|n| doomed(n)).cloned().collect();
    for name in gone {
        headers.remove(name);
    }
}

/// Remove hop-by-hop headers, including those the `Connection` header names.
pub(super) fn strip_hop_by_hop(headers: &mut HeaderMap) {
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

/// Drop every `Set-Cookie` that mentions a gateway cookie name
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

/// A header name squeezed to its ASCII letters and digits (the bytes of
/// [`crate::text::squeezed_name`], on the stack): `X-Forwarded-For`,
/// `x_forwarded.for` and `XForwardedFor` are all `xforwardedfor`, as some upstream reads
/// them (CGI turns `-` into `_`, some frameworks drop separators). The first 64 such bytes
/// of a longer name: enough for every family below, and a prefix still matches.
struct Squeezed {
    buf: [u8; crate::text::SQUEEZED_MAX],
    len: usize,
}

impl Squeezed {
    fn new(name: &[u8]) -> Squeezed {
        let mut s = Squeezed { buf: [0; crate::text::SQUEEZED_MAX], len: 0 };
        for &b in name.iter().filter(|b| b.is_ascii_alphanumeric()) {
            if s.len == s.buf.len() {
                break;
            }
            s.buf[s.len] = b;
            s.len += 1;
        }
        s
    }

    fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// Standard request headers of no family the header pass removes (a test holds each of
/// them to that): most of a request's headers, looked at without the family checks.
fn is_plain_standard(name: &HeaderName) -> bool {
    const PLAIN: [HeaderName; 14] = [
        header::ACCEPT,
        header::ACCEPT_ENCODING,
        header::ACCEPT_LANGUAGE,
        header::USER_AGENT,
        header::CONTENT_TYPE,
        header::CONTENT_LENGTH,
        header::CACHE_CONTROL,
        header::COOKIE,
        header::IF_NONE_MATCH,
        header::IF_MODIFIED_SINCE,
        header::ORIGIN,
        header::REFERER,
        header::PRAGMA,
        header::RANGE,
    ];
    PLAIN.contains(name)
}

/// Headers about the client's address, certificate, or the scheme, host, port or path
/// prefix of the original request, that some upstream trusts as much as `X-Forwarded-For`,
/// squeezed: every `X-Forwarded-*` (a prefix, not a list), every `X-SSL-*`, and these.
fn is_forwarding_claim(sq: &[u8]) -> bool {
    sq.starts_with(b"xforwarded")
        || sq.starts_with(b"xssl")
        || sq.starts_with(b"forwarded")
        || sq.ends_with(b"forwardedfor")
        // RFC 9440 Client-Cert / Client-Cert-Chain, X-Client-Cert*, X-ARR-SSL, ALB's mTLS.
        || sq.starts_with(b"clientcert")
        || sq.starts_with(b"xclientcert")
        || sq.starts_with(b"xamznmtls")
        || sq.starts_with(b"cfconnectingip")
        || matches!(
            sq,
            b"xarrssl"
                | b"akamaiclientip"
                | b"xazureclientip"
                | b"xazuresocketip"
                | b"xremoteaddress"
                | b"xclientaddr"
                | b"xsourceip"
                | b"xcustomipauthorization"
                | b"xreal"
                | b"xhttps"
                | b"xproto"
                | b"xprotocol"
                | b"xrealip"
                | b"realip"
                | b"xrealipaddress"
                | b"realipaddress"
                | b"remoteaddr"
                | b"xremoteaddr"
                | b"remoteip"
                | b"xremoteip"
                | b"trueclientip"
                | b"clientip"
                | b"xclientip"
                | b"xclusterclientip"
                | b"xoriginatingip"
                | b"xproxyuserip"
                | b"cfconnectingip"
                | b"fastlyclientip"
                | b"xscheme"
                | b"xurlscheme"
                | b"frontendhttps"
                | b"xoriginalhost"
                | b"xhost"
                | b"xenvoyexternaladdress"
                | b"xclientcert"
                | b"sslclientcert"
                | b"xclientverify"
                | b"xclientdn"
                | b"xarrclientcert"
        )
}

/// The spellings of forwarding claims a trusted proxy sends, kept from one: every
/// `x-forwarded-*` and `x-ssl-*` of dash-separated letters and digits, and these. Another
/// spelling of the family (`x_forwarded_for`, `x.forwarded.for`, `xforwardedfor`,
/// `remote-addr`) comes from no proxy, only from a caller, and is removed from everyone.
const FORWARDING_CLAIMS: [&str; 24] = [
    "forwarded",
    "x-real-ip",
    "true-client-ip",
    "client-ip",
    "x-client-ip",
    "x-cluster-client-ip",
    "x-originating-ip",
    "x-remote-ip",
    "x-remote-addr",
    "x-proxyuser-ip",
    "cf-connecting-ip",
    "fastly-client-ip",
    "x-scheme",
    "x-url-scheme",
    "front-end-https",
    "x-original-host",
    "x-host",
    "x-envoy-external-address",
    // ingress-nginx's copy of the client's own X-Forwarded-For.
    "x-original-forwarded-for",
    "x-client-cert",
    "ssl-client-cert",
    "x-client-verify",
    "x-client-dn",
    "x-arr-clientcert",
];

/// A forwarding claim as a trusted proxy spells it.
fn is_canonical_forwarding_claim(name: &str) -> bool {
    let dashed_words = |rest: &str| {
        !rest.is_empty()
            && rest.split('-').all(|w| !w.is_empty() && w.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()))
    };
    FORWARDING_CLAIMS.contains(&name)
        || name.strip_prefix("x-forwarded-").is_some_and(dashed_words)
        || name.strip_prefix("x-ssl-").is_some_and(dashed_words)
}

/// Headers that make some frameworks route or dispatch on something else than the request
/// line, squeezed: another path (IIS, Symfony, Zend, Envoy) or another method (Rails,
/// Express, Spring, ...), which would escape the route's own path and method filters.
fn is_rewrite(sq: &[u8]) -> bool {
    matches!(
        sq,
        b"xmethod"
            | b"xverb"
            | b"xrequestmethod"
            | b"xoriginalrequestmethod"
            | b"methodoverride"
            | b"xrewritepath"
            | b"xrequestpath"
            | b"xoverrideurl"
            | b"xoriginalurlpath"
            | b"xscriptname"
            | b"scriptname"
            | b"xinvokepath"
            | b"xmatchedpath"
            // Next.js's internal-subrequest marker (CVE-2025-29927: middleware skipped).
            | b"xmiddlewaresubrequest"
            | b"xhttphostoverride"
            | b"xhostoverride"
            | b"xoriginalforwardedhost"
            | b"xenvoyoriginalhost"
            | b"xenvoyinternal"
            | b"xoriginalurl"
            | b"xoriginaluri"
            | b"xoriginalpath"
            | b"xoriginalrequesturi"
            | b"xrequesturi"
            | b"xenvoyoriginalpath"
            | b"xrewriteurl"
            | b"xhttpmethodoverride"
            | b"xmethodoverride"
            | b"xhttpmethod"
            | b"xoriginalmethod"
    )
}

/// The spellings of rewrite headers kept from a trusted proxy on a route with
/// `pass_rewrite_headers`; any other spelling of the family is removed from everyone.
const REWRITES: [&str; 11] = [
    "x-original-url",
    "x-original-uri",
    "x-original-path",
    "x-original-request-uri",
    "x-request-uri",
    "x-envoy-original-path",
    "x-rewrite-url",
    "x-http-method-override",
    "x-method-override",
    "x-http-method",
    "x-original-method",
];

/// Headers some upstream takes for an authenticated user, squeezed (besides `X-Auth-*`, see
/// [`is_x_auth`], and the configured identity headers): removed from everyone.
fn is_identity_claim(sq: &[u8]) -> bool {
    const PREFIXES: [&[u8]; 43] = [
        b"xremoteuser",
        b"xremotegroup",
        b"xremoteextra",
        b"xremoterole",
        b"xremotename",
        b"remoteuser",
        b"remotegroup",
        // Azure App Service, Google IAP / Cloud Endpoints / API Gateway, AWS ALB,
        // Cloudflare Access, Pomerium, Authentik, Tailscale, Vouch, Kong, Grafana,
        // mod_auth_openidc, Shibboleth, Kubernetes impersonation.
        b"xmsclientprincipal",
        b"xgoogauthenticateduser",
        b"xgoogiap",
        b"xendpointapiuserinfo",
        b"xapigatewayapiuserinfo",
        b"xamznoidc",
        b"cfaccess",
        b"xpomerium",
        b"xauthentik",
        b"tailscaleuser",
        b"xtailscaleuser",
        b"xvouch",
        b"xconsumer",
        b"xcredential",
        b"xauthenticated",
        b"xwebauth",
        b"oidcclaim",
        b"xshib",
        b"impersonate",
        // kong-oidc, Kong, WSO2, Envoy jwt_authn, Azure App Service tokens.
        b"xuserinfo",
        b"xaccesstoken",
        b"xidtoken",
        b"xanonymousconsumer",
        b"xjwtassertion",
        b"xjwtpayload",
        b"xmstoken",
        // Shibboleth SP, caddy-security, Hasura session variables (every X-Hasura-* is one).
        b"shib",
        b"xtokensubject",
        b"xtokenuser",
        b"xhasura",
        // oauth2-proxy's user headers: in the `X-Forwarded-*` family a trusted proxy keeps,
        // but a claim of who the user is (or the user's token), which only the gateway makes.
        b"xforwardeduser",
        b"xforwardedemail",
        b"xforwardedpreferred",
        b"xforwardedgroup",
        b"xforwardedaccesstoken",
        b"xforwardedidtoken",
    ];
    PREFIXES.iter().any(|p| sq.starts_with(p))
        || matches!(
            sq,
            b"oidcaccesstoken"
                | b"eppn"
                | b"xuserid"
                | b"xuseremail"
                | b"xemail"
                | b"xgroups"
                | b"xroles"
                | b"xprincipal"
                | b"xidentity"
                | b"xproxyuser"
                | b"authuser"
                | b"xsubject"
                | b"xuser"
                | b"xusername"
                | b"remoteemail"
                | b"remotename"
                | b"xremoteemail"
                | b"xauthenticateduser"
                | b"xauthenticateduserid"
                | b"authenticateduser"
                | b"xwebauthuser"
                // Shibboleth SP attribute headers (SAML attributes under their usual ids).
                | b"persistentid"
                | b"affiliation"
                | b"subjectid"
                | b"pairwiseid"
                | b"targetedid"
                | b"unscopedaffiliation"
                | b"entitlement"
        )
}

/// Is the name in the gateway's `X-Auth-*` namespace, in any spelling (`x_auth_user`,
/// `x.auth.user`, `xauth-user`, `XAuthRequestUser`)? Squeezed (letters and digits), it
/// begins `xauth`: a framework that drops separators reads `XAuthSubject` as
/// `X-Auth-Subject`. Names that are other words are left alone (`X-Authorization`,
/// `X-Authorisation`, `X-Author`, `X-Authz`, `X-Authy-*`, `X-Authentication-*`,
/// `X-Authenticity-Token`): APIs use them for their own purposes, and no name the gateway
/// or oauth2-proxy sets (`X-Auth-Subject`, `X-Auth-Request-User`, ...) squeezes to theirs.
fn is_x_auth(sq: &[u8]) -> bool {
    const OTHER_WORDS: [&[u8]; 4] = [b"xauthor", b"xauthz", b"xauthy", b"xauthent"];
    sq.starts_with(b"xauth") && !OTHER_WORDS.iter().any(|w| sq.starts_with(w))
}

/// Is `X-Forwarded-Host` exactly one line whose comma-separated items are all valid
/// authorities?
fn valid_forwarded_host(headers: &HeaderMap) -> bool {
    let mut lines = headers.get_all(X_FORWARDED_HOST).iter();
    match (lines.next(), lines.next()) {
        (Some(v), None) => {
            v.as_bytes().split(|b| *b == b',').all(|item| Authority::parse(cookies::trim(item)).is_some())
        }
        _ => false,
    }
}

/// `Forwarded` (RFC 7239) for the upstream, rebuilt by the gateway: `for=` each address of
/// `chain` (what trusted proxies vouch for in `X-Forwarded-For`: the source, then the
/// trusted hops), then this hop's `for=<peer>;proto=<scheme>`. No caller's `Forwarded` is
/// kept, a trusted proxy's neither (proxies pass a client's on unchanged), so no `host=`
/// or `proto=` the gateway cannot vouch for reaches the upstream.
fn forwarded(chain: &[std::net::IpAddr], peer: &Peer) -> Option<HeaderValue> {
    // The usual case, no trusted proxy: this hop alone, made once per connection.
    if chain.is_empty() {
        return Some(peer.forwarded_header().clone());
    }
    let proto = if peer.tls { "https" } else { "http" };
    // An IPv6 node is bracketed and so must be quoted (RFC 7239 §6).
    let node = |ip: std::net::IpAddr| {
        let ip = ip.to_canonical();
        if ip.is_ipv6() { format!("for=\"[{ip}]\"") } else { format!("for={ip}") }
    };
    let mut value: Vec<String> = chain.iter().map(|ip| node(*ip)).collect();
    value.push(format!("{};proto={proto}", node(peer.addr.ip())));
    HeaderValue::try_from(value.join(", ")).ok()
}

/// Exactly one `X-Forwarded-Proto` line, each comma-separated item `http` or `https`.
fn valid_forwarded_proto(headers: &HeaderMap) -> bool {
    let mut values = headers.get_all(X_FORWARDED_PROTO).iter();
    match (values.next(), values.next()) {
        (Some(v), None) => v.as_bytes().split(|b| *b == b',').all(|item| {
            let item = cookies::trim(item);
            item.eq_ignore_ascii_case(b"http") || item.eq_ignore_ascii_case(b"https")
        }),
        _ => false,
    }
}

/// What the upstream request is for: the header pass keeps a caller's
/// `Sec-WebSocket-Protocol` and `-Extensions` only for the WebSocket handshake the gateway
/// makes, and no other `Sec-WebSocket-*` field ever.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Purpose {
    Plain,
    WebSocket,
}

/// Rewrite inbound headers for the upstream: hygiene first, then what we vouch for.
///
/// The caller's fields that pass go into a new map sized for them and for ours, in one
/// pass: cheaper than removing the others from the caller's map (a hash and a shift per
/// removal) and growing it for the fields the gateway adds.
pub(crate) fn upstream_headers(
    headers: &mut HeaderMap,
    rt: &Runtime,
    route: &Route,
    principal: Option<&Principal>,
    peer: &Peer,
    authority: Option<&Authority>,
    purpose: Purpose,
) -> Result<(), ProxyError> {
    filter_cookies(headers);
    let ids = &rt.config.headers;
    let trusted = rt.config.is_trusted_proxy(peer.addr.ip());

    let listed = connection_listed(headers);
    // Several X-Forwarded-For lines are one comma-separated list (RFC 9110 §5.3); one the
    // Connection header names is hop-by-hop and not kept.
    let prior_kept = trusted && !listed.contains(&X_FORWARDED_FOR);
    let prior: Vec<&str> = match prior_kept {
        true => headers.get_all(X_FORWARDED_FOR).iter().filter_map(|v| v.to_str().ok()).collect(),
        false => Vec::new(),
    };
    let xff = match prior.is_empty() {
        false => HeaderValue::try_from(format!("{}, {}", prior.join(", "), peer.ip_text())).ok(),
        true => Some(peer.ip_header().clone()),
    };
    // The address the gateway acts on (the rate limits, the access log): the peer, or
    // what trusted proxies vouch for in X-Forwarded-For; `Forwarded` names the same chain.
    let chain = match trusted {
        true => crate::ratelimit::forwarded_chain(&rt.config, peer.addr.ip(), headers),
        false => Vec::new(),
    };
    let forwarded = forwarded(&chain, peer);
    let client = chain.first().copied().unwrap_or_else(|| peer.addr.ip().to_canonical());
    let real_ip = if client == peer.addr.ip().to_canonical() {
        Some(peer.ip_header().clone())
    } else {
        HeaderValue::try_from(client.to_string()).ok()
    };

    let doomed = |name: &HeaderName| {
        let n = name.as_str();
        // Set by dispatch for every request (replacing any the caller sent): ours, so it
        // passes as it is, and a `Connection` naming it cannot take it away.
        if n == "x-request-id" {
            return false;
        }
        if is_hop_by_hop(n) || listed.contains(name) {
            return true;
        }
        let b = n.as_bytes();
        // Once per header, on the stack: the name on its letters and digits only.
        let sq = Squeezed::new(b);
        let sq_bytes = sq.bytes();
        let configured = || ids.squeezed.iter().any(|id| **id == *sq_bytes);
        if is_plain_standard(name) {
            return configured();
        }
        // The handshake's own fields, in any spelling (CGI reads `Sec_WebSocket_Key` as the
        // same field): on a plain request they would only invite an upstream to switch
        // protocols; on the gateway's own handshake (`websocket.rs`, which sets the key and
        // version itself) only the caller's subprotocols and extensions go on, as spelled
        // by the RFC.
        if sq_bytes.starts_with(b"secwebsocket")
            && !(purpose == Purpose::WebSocket && (n == "sec-websocket-protocol" || n == "sec-websocket-extensions"))
        {
            return true;
        }
        // Ours to set: the upstream's own authority, the address we saw, the request id.
        n == "host"
            || n == "x-forwarded-for"
            || n == "forwarded"
            || n == "x-real-ip"
            || (n == "authorization" && !route.forward_token)
            // A DPoP proof goes with the token it is bound to (RFC 9449 §7): only with it.
            || (n == "dpop" && !route.forward_token)
            // httpoxy: CGI makes it HTTP_PROXY, the upstream's outbound proxy.
            || sq_bytes == b"proxy"
            // The request id is the gateway's (set by dispatch); no other spelling beside it.
            || sq_bytes == b"xrequestid"
            // Kept from a trusted proxy in the spellings proxies send; never otherwise.
            || (is_forwarding_claim(sq_bytes) && !(trusted && is_canonical_forwarding_claim(n)))
            || (is_rewrite(sq_bytes) && !(trusted && route.pass_rewrite_headers && REWRITES.contains(&n)))
            // Identity comes only from us: the configured headers, the X-Auth-* namespace
            // and what other gateways use, in every spelling.
            || is_x_auth(sq_bytes)
            || is_identity_claim(sq_bytes)
            || configured()
    };
    let caller = std::mem::take(headers);
    // Ours: forwarding (5), request id, host, identity (up to 8), `te`. Sized by names,
    // not values (an HTTP/2 request may repeat one name tens of thousands of times), and
    // never by a size the map refuses (`with_capacity` would panic).
    let mut kept = HeaderMap::try_with_capacity(caller.keys_len().saturating_add(16)).unwrap_or_default();
    {
        use http::header::Entry;
        // A map's fields come grouped by name, the name given with the first value only.
        let mut current: Option<http::header::OccupiedEntry<'_, HeaderValue>> = None;
        for (name, value) in caller {
            match name {
                Some(name) if doomed(&name) => current = None,
                Some(name) => {
                    current = Some(match kept.entry(name) {
                        Entry::Vacant(v) => v.insert_entry(value),
                        Entry::Occupied(mut o) => {
                            o.append(value);
                            o
                        }
                    })
                }
                None => {
                    if let Some(entry) = current.as_mut() {
                        entry.append(value);
                    }
                }
            }
        }
    }
    let headers = {
        *headers = kept;
        headers
    };

    if let Some(v) = xff {
        headers.insert(X_FORWARDED_FOR, v);
    }
    if let Some(v) = forwarded {
        headers.insert(header::FORWARDED, v);
    }
    if let Some(v) = real_ip {
        headers.insert(X_REAL_IP, v);
    }
    // A trusted proxy's X-Forwarded-Proto is kept only when it is one line naming http or
    // https (a chain of them, comma-separated); anything else is replaced by ours. From
    // anyone else the pass above has removed both (no lookup for them then).
    if !(trusted && valid_forwarded_proto(headers)) {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(if peer.tls { "https" } else { "http" }));
    }
    // A trusted proxy's own X-Forwarded-Host is kept only when it is one line of valid
    // authorities (a comma-separated chain of them); anything else is replaced by ours.
    let theirs = trusted && headers.contains_key(X_FORWARDED_HOST);
    if !(theirs && valid_forwarded_host(headers)) {
        if theirs {
            headers.remove(X_FORWARDED_HOST);
        }
        if let Some(a) = authority {
            headers.insert(X_FORWARDED_HOST, a.header_value().clone());
        }
    }

    if let Some(p) = principal {
        let issuer = if p.is_own() {
            Some(rt.config.issuer())
        } else {
            rt.issuers.by_name(p.issuer_name()).map(|i| i.config.issuer.as_str())
        };
        let v = IdentityValues::of(p, issuer)?;
        // A trusted issuer's token may carry no client id or jti: no header then.
        if let Some(client_id) = v.client_id {
            headers.insert(ids.client_id.clone(), client_id);
        }
        let user = v.subject.clone();
        if let Some(subject) = v.subject {
            headers.insert(ids.subject.clone(), subject);
        }
        if let Some(scope) = v.scope {
            headers.insert(ids.scope.clone(), scope);
        }
        if let Some(token_id) = v.token_id {
            headers.insert(ids.token_id.clone(), token_id);
        }
        // The user is the subject when the token acts for one (the same value).
        if let Some(user) = p.user().and(user) {
            headers.insert(ids.user.clone(), user);
        }
        if let Some(iss) = v.issuer {
            headers.insert(ids.issuer.clone(), iss);
        }
        // Sent for every authenticated request, so an upstream can insist on a
        // sender-constrained token; the binding was enforced by the authenticate phase.
        let binding = p.binding();
        headers.insert(ids.binding.clone(), HeaderValue::from_static(binding.map_or("none", |b| b.kind())));
        if let Some(x5t) = binding.and_then(|b| b.x5t_s256()) {
            let x5t = HeaderValue::from_bytes(x5t.as_bytes())
                .map_err(|_| ProxyError::BadGateway("identity not encodable".into()))?;
            headers.insert(ids.cert_thumbprint.clone(), x5t);
        }
    }
    Ok(())
}

/// The identity header values of a principal, cut from one buffer (two allocations in
/// all, not one per value). `None` for an empty client id or token id (a trusted issuer's
/// token may carry neither) and for no issuer.
struct IdentityValues {
    client_id: Option<HeaderValue>,
    subject: Option<HeaderValue>,
    scope: Option<HeaderValue>,
    token_id: Option<HeaderValue>,
    issuer: Option<HeaderValue>,
}

impl IdentityValues {
    fn of(p: &Principal, issuer: Option<&str>) -> Result<IdentityValues, ProxyError> {
        let parts = [p.client_id(), p.subject(), p.scope(), p.token_id(), issuer.unwrap_or("")];
        let mut buf = bytes::BytesMut::with_capacity(parts.iter().map(|s| s.len()).sum());
        let mut values = parts.map(|text| {
            buf.extend_from_slice(text.as_bytes());
            let piece = buf.split().freeze();
            HeaderValue::from_maybe_shared(piece)
                .map_err(|_| ProxyError::BadGateway("identity not encodable".into()))
                .map(Some)
        });
        // Empty client id, token id and issuer: no header. Subject and scope are always sent.
        for i in [0, 3, 4] {
            if parts[i].is_empty() {
                values[i] = Ok(None);
            }
        }
        if issuer.is_none() {
            values[4] = Ok(None);
        }
        let [client_id, subject, scope, token_id, issuer] = values;
        Ok(IdentityValues {
            client_id: client_id?,
            subject: subject?,
            scope: scope?,
            token_id: token_id?,
            issuer: issuer?,
        })
    }
}

#[allow(clippy::too_many_arguments)]
pub async fn forward<B>(
    rt: &Runtime,
    upstreams: &Upstreams,
    route: &Route,
    principal: Option<&Principal>,
    req: Request<B>,
    peer: &Peer,
    authority: Option<&Authority>,
    request_lease: Option<super::lifetime::Lease>,
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

    let uri = upstream_target(route, &parts.uri)?;
    // Any framing (Content-Length, chunked, HTTP/2 DATA frames): a body that has not ended.
    let form = is_form(&parts.headers) && !body.is_end_stream();
    let has_body = !body.is_end_stream();
    let multipart = has_body && super::multipart::is_multipart_form(&parts.headers);
    // No media type (none, or a blank one): Rack reads a POST body as a form; it is
    // scanned for `access_token`.
    let untyped = has_body
        && parts.method == http::Method::POST
        && parts.headers.get_all(header::CONTENT_TYPE).iter().all(|v| cookies::trim(v.as_bytes()).is_empty());
    if (form || multipart || untyped) && !super::access_token::is_readable_form(&parts.headers) {
        return Err(ProxyError::UnreadableForm);
    }
    // One body, one media type (RFC 9110 §8.3): with two, the upstream may read the body as
    // the type this check did not (a multipart body sent as a form too).
    if has_body && parts.headers.get_all(header::CONTENT_TYPE).iter().nth(1).is_some() {
        return Err(ProxyError::BadRequestBody);
    }

    // gRPC needs `te: trailers` (RFC 9113 §8.2.2 lets HTTP/2 carry that value alone): kept
    // only where HTTP/2 carries it (`Upstreams::sends_te`).
    let up = &route.upstream;
    let te_trailers =
        parts.headers.contains_key(header::TE)
            && upstreams.sends_te(&up.scheme, &up.authority, up.h2c, super::lifetime::is_grpc(&parts.headers))
            && parts.headers.get_all(header::TE).iter().any(|v| {
                v.as_bytes().split(|b| *b == b',').any(|t| cookies::trim(t).eq_ignore_ascii_case(b"trailers"))
            });
    upstream_headers(&mut parts.headers, rt, route, principal, peer, authority, Purpose::Plain)?;
    if te_trailers {
        parts.headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    parts.headers.insert(header::HOST, route.upstream.host.clone());
    parts.uri = uri;
    parts.version = Version::HTTP_11;

    let body = if form {
        let bytes = read_form(body, limits).await?;
        let bytes = match without_access_token(&bytes) {
            Some(kept) => {
                parts.headers.insert(header::CONTENT_LENGTH, HeaderValue::from(kept.len()));
                bytes::Bytes::from(kept)
            }
            None => bytes,
        };
        crate::http::full(bytes)
    } else if !has_body {
        // Nothing to read (a GET): an empty body of no size, so no box is allocated for
        // the limits and wrappers a body that streams goes through.
        http_body_util::Empty::new().map_err(|never| match never {}).boxed()
    } else {
        let body = body.map_err(|e| BoxError::from(InboundBodyError(e.into())));
        let body = Limited::new(body, limits.max_proxy_body_bytes.try_into().unwrap_or(usize::MAX)).boxed();
        let body = WithoutTrailers(body).boxed();
        // A streamed request body ends with its token (the client→upstream direction).
        let body = match request_lease {
            Some(lease) if !body.is_end_stream() => super::lifetime::EndsWithToken::wrap_request(body, lease),
            _ => body,
        };
        if multipart {
            super::multipart::scanned(body)
        } else if untyped {
            super::multipart::scanned_untyped(body)
        } else {
            body
        }
    };
    let req = Request::from_parts(parts, body);

    let upstream = &route.upstream;
    let traffic = match principal {
        Some(_) => crate::upstream::Traffic::Authenticated,
        None => crate::upstream::Traffic::Public,
    };
    let sent =
        upstreams.send(&upstream.scheme, &upstream.authority, upstream.h2c, traffic, req, limits.upstream_timeout);
    let resp = match sent.await {
        Err(e) if caused_by::<crate::upstream::UpstreamTimeout>(&*e) => return Err(ProxyError::GatewayTimeout),
        // An undeclared body crossed the limit while being sent: the caller's fault, not the upstream's.
        Err(e) if caused_by::<LengthLimitError>(&*e) => return Err(ProxyError::PayloadTooLarge),
        Err(e) if caused_by::<super::multipart::TokenField>(&*e) => return Err(ProxyError::TokenInBody),
        Err(e) if caused_by::<InboundBodyError>(&*e) => return Err(ProxyError::BadRequestBody),
        Err(e) => return Err(ProxyError::BadGateway(error_chain(&*e))),
        Ok(resp) => resp,
    };
    // A 101 to a request the gateway did not upgrade: nothing could follow it (HTTP/1.1 a
    // bare 101 then EOF; HTTP/2 forbids it), so it is the upstream's fault, like a wrong
    // WebSocket accept.
    if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS {
        return Err(ProxyError::BadGateway("a 101 to a request that was not an upgrade".into()));
    }
    // Both framings (RFC 9112 §6.3: a sign of response splitting, to be handled as an
    // error): the body hyper read is chunked, and passing the Content-Length on would cut
    // it for an HTTP/1.1 client and make the HTTP/2 answer malformed. Fails closed.
    if resp.headers().contains_key(header::TRANSFER_ENCODING) && resp.headers().contains_key(header::CONTENT_LENGTH) {
        return Err(ProxyError::BadGateway("an answer with both Transfer-Encoding and Content-Length".into()));
    }
    let (mut parts, body) = resp.into_parts();
    // The client's connection is ours, not the upstream's: an HTTP/1.0 upstream must not
    // make an HTTP/1.1 client's response HTTP/1.0 (and close its connection). hyper
    // answers an HTTP/1.0 client in HTTP/1.0 whatever this says.
    parts.version = Version::HTTP_11;
    response_hygiene(&mut parts.headers);
    // Trailers are headers too (HTTP/2 gRPC): the same filter as the response head.
    let body = body.map_err(BoxError::from).map_frame(|frame| match frame.into_trailers() {
        Ok(mut trailers) => {
            trailer_hygiene(&mut trailers);
            http_body::Frame::trailers(trailers)
        }
        Err(frame) => frame,
    });
    Ok(Response::from_parts(parts, body.boxed()))
}

/// What an upstream's response head and trailers lose on the way to the client: the
/// hop-by-hop fields and `Set-Cookie`s of the gateway's own cookies.
pub(super) fn response_hygiene(headers: &mut HeaderMap) {
    strip_hop_by_hop(headers);
    drop_gateway_set_cookies(headers);
}

/// What an upstream's response trailers lose besides [`response_hygiene`]'s fields: the
/// fields a trailer may not carry (RFC 9110 §6.5.1: framing, routing, authentication,
/// response control, content metadata), which a client could otherwise read as the
/// answer's own (a second `Content-Length`, a `Location`), the gateway's `X-Request-Id`
/// (the client has it in the head; a second one from the upstream would contradict it)
/// and the identity namespace, in any spelling. Only trailers pay for this walk.
fn trailer_hygiene(trailers: &mut HeaderMap) {
    response_hygiene(trailers);
    const NOT_IN_TRAILERS: [HeaderName; 18] = [
        header::CONTENT_LENGTH,
        header::CONTENT_TYPE,
        header::CONTENT_ENCODING,
        header::CONTENT_RANGE,
        header::CONTENT_LANGUAGE,
        header::CONTENT_LOCATION,
        header::HOST,
        header::LOCATION,
        header::AUTHORIZATION,
        header::WWW_AUTHENTICATE,
        header::CACHE_CONTROL,
        header::EXPIRES,
        header::DATE,
        header::AGE,
        header::VARY,
        header::RETRY_AFTER,
        header::ETAG,
        header::LAST_MODIFIED,
    ];
    remove_where(trailers, |n| {
        let sq = Squeezed::new(n.as_str().as_bytes());
        NOT_IN_TRAILERS.contains(n) || sq.bytes() == b"xrequestid" || is_x_auth(sq.bytes())
    });
}

/// A request body without its trailers. Request trailers are never forwarded: they would
/// reach the upstream past every rule of [`upstream_headers`] (identity names, the token,
/// forwarding headers, the gateway's cookies), and gRPC clients do not send them. Only
/// the trailers frame is dropped; the data and the body's end go through unchanged.
struct WithoutTrailers<B>(B);

impl<B> HttpBody for WithoutTrailers<B>
where
    B: HttpBody<Data = bytes::Bytes> + Unpin,
{
    type Data = bytes::Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, B::Error>>> {
        let inner = &mut self.get_mut().0;
        loop {
            match std::pin::Pin::new(&mut *inner).poll_frame(cx) {
                std::task::Poll::Ready(Some(Ok(frame))) if frame.is_trailers() => continue,
                other => return other,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.0.size_hint()
    }
}

/// The request target the upstream gets, in origin-form: the connection already says
/// which upstream this is. When the route maps the path unchanged, the request's own
/// (already parsed) target is reused. RFC 6750 §2.3: a token in the query is a
/// credential, whatever the route forwards: taken out, the rest kept byte for byte.
pub(super) fn upstream_target(route: &Route, uri: &Uri) -> Result<Uri, ProxyError> {
    let kept = uri.query().and_then(|q| without_access_token(q.as_bytes()));
    Ok(match (super::route::upstream_path(route, uri.path()), uri.path_and_query()) {
        (None, Some(unchanged)) if kept.is_none() => Uri::from(unchanged.clone()),
        (mapped, _) => {
            let path = uri.path();
            let mut target = mapped.unwrap_or_else(|| if path.is_empty() { "/" } else { path }.to_string());
            // A query of nothing but tokens goes away with its `?`.
            let query = match &kept {
                Some(kept) => (!kept.is_empty()).then(|| String::from_utf8_lossy(kept)),
                None => uri.query().map(std::borrow::Cow::Borrowed),
            };
            if let Some(q) = query {
                target.push('?');
                target.push_str(&q);
            }
            Uri::try_from(target).map_err(|_| ProxyError::UnsafePath)?
        }
    })
}

/// Read a form body whole, within `max_proxy_form_bytes` and `upstream_timeout` (the bound
/// of the proxied exchange it is part of; the header read timeout is for headers): a form
/// that cannot be inspected is refused (413), never passed unread.
async fn read_form<B>(body: B, limits: &crate::config::Limits) -> Result<bytes::Bytes, ProxyError>
where
    B: HttpBody<Data = bytes::Bytes> + Send,
    B::Error: Into<BoxError>,
{
    let limited = Limited::new(body, limits.max_proxy_form_bytes);
    match tokio::time::timeout(limits.upstream_timeout, limited.collect()).await {
        Err(_) => Err(ProxyError::BadRequestBody),
        Ok(Err(e)) if caused_by::<LengthLimitError>(&*e) => Err(ProxyError::PayloadTooLarge),
        Ok(Err(_)) => Err(ProxyError::BadRequestBody),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
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
            b"a=b; Path=/, __Host-portcullis_session=v",
            b"q=1; Path=/",
        ] {
            h.append(header::SET_COOKIE, HeaderValue::from_bytes(v).unwrap());
        }
        drop_gateway_set_cookies(&mut h);
        let left: Vec<&[u8]> = h.get_all(header::SET_COOKIE).iter().map(HeaderValue::as_bytes).collect();
        assert_eq!(left, vec![&b"ok=1"[..], b"b=\xe9", b"q=1; Path=/"]);
    }

    #[test]
    fn forwarding_and_rewrite_families_match_every_spelling() {
        let claim = |n: &str| is_forwarding_claim(Squeezed::new(n.as_bytes()).bytes());
        for n in [
            "x-forwarded-for",
            "x_forwarded_for",
            "x-forwarded-prefix",
            "x_forwarded-anything",
            "x-forwarded",
            "xforwardedfor",
            "x.forwarded.for",
            "x-_forwarded-for",
            "forwarded",
            "forwarded_",
            "_forwarded",
            "forwarded-for",
            "x-original-forwarded-for",
            "x_real_ip",
            "real-ip",
            "x-real-ip-address",
            "remote-addr",
            "client-ip",
            "client_ip",
            "front-end-https",
            "x-scheme",
            "true_client_ip",
            "x-client-cert",
            "x-ssl-client-cert",
            "x-forwarded-client-cert",
            "forwarded-proto",
            "client-cert",
            "client-cert-chain",
            "x-client-certificate",
            "x-arr-ssl",
            "x-amzn-mtls-clientcert",
            "akamai-client-ip",
            "cf-connecting-ipv6",
            "x-source-ip",
            "x-https",
        ] {
            assert!(claim(n), "{n}");
        }
        for n in ["x-request-id", "cookie", "x-real-ipv6", "x-authorization", "proxy", "x-goog-api-key"] {
            assert!(!claim(n), "{n}");
        }
        let rewrite = |n: &str| is_rewrite(Squeezed::new(n.as_bytes()).bytes());
        for n in [
            "x-original-url",
            "x_rewrite_url",
            "x-http-method-override",
            "x_method_override",
            "x-http-method",
            "x.http.method",
            "x-envoy-original-path",
            "x-original-request-uri",
            "x-request-uri",
            "x-middleware-subrequest",
            "x-script-name",
            "x-verb",
            "x-host-override",
        ] {
            assert!(rewrite(n), "{n}");
        }
        assert!(!rewrite("x-http-methods"));
        // Every canonical spelling is in its family.
        for n in FORWARDING_CLAIMS {
            assert!(claim(n) && is_canonical_forwarding_claim(n), "{n}");
        }
        for n in REWRITES {
            assert!(rewrite(n), "{n}");
        }
    }

    #[test]
    fn trusted_proxies_keep_only_canonical_spellings() {
        for n in ["x-forwarded-for", "x-forwarded-client-cert", "x-forwarded-port", "x-ssl-client-verify", "x-real-ip"]
        {
            assert!(is_canonical_forwarding_claim(n), "{n}");
        }
        for n in [
            "x_forwarded_for",
            "x.forwarded.for",
            "xforwardedfor",
            "x-forwardedfor",
            "x-forwarded-",
            "x-forwarded--for",
            "x-forwarded-.for",
            "x-_forwarded-for",
            "forwarded_",
            "remote-addr",
            "real-ip",
            "x-real-ip-address",
        ] {
            assert!(!is_canonical_forwarding_claim(n), "{n}");
        }
    }

    /// The names [`is_plain_standard`] lets skip the family checks are in no family: were
    /// one added to a family, this fails until it leaves that list.
    #[test]
    fn plain_standard_names_are_in_no_family() {
        for name in [
            "accept",
            "accept-encoding",
            "accept-language",
            "user-agent",
            "content-type",
            "content-length",
            "cache-control",
            "cookie",
            "if-none-match",
            "if-modified-since",
            "origin",
            "referer",
            "pragma",
            "range",
        ] {
            let name = HeaderName::from_static(name);
            assert!(is_plain_standard(&name), "{name}");
            let sq = Squeezed::new(name.as_str().as_bytes());
            let sq = sq.bytes();
            assert!(
                !(is_hop_by_hop(name.as_str())
                    || is_forwarding_claim(sq)
                    || is_rewrite(sq)
                    || is_x_auth(sq)
                    || is_identity_claim(sq)
                    || sq == b"proxy"
                    || sq == b"xrequestid"
                    || matches!(
                        name.as_str(),
                        "host" | "x-forwarded-for" | "forwarded" | "x-real-ip" | "authorization" | "dpop"
                    )),
                "{name}"
            );
        }
        assert!(!is_plain_standard(&HeaderName::from_static("x-forwarded-for")));
        assert!(!is_plain_standard(&HeaderName::from_static("x-auth-user")));
    }

    #[test]
    fn identity_names_are_matched_in_every_spelling() {
        let x_auth = |n: &str| is_x_auth(Squeezed::new(n.as_bytes()).bytes());
        for n in [
            "x-auth-user",
            "x_auth_user",
            "x.auth.user",
            "x-auth-foo",
            "x-auth-request-user",
            "xauth-user",
            "x--auth",
            // Separators dropped, as some frameworks do (black-box attack, session 26).
            "xauthrequestuser",
            "x-authrequestuser",
            "xauthrequest-user",
            "x-authrequest-email",
            "x-authfoo",
            "xauthtoken",
            "xauthsubject",
        ] {
            assert!(x_auth(n), "{n}");
        }
        for n in [
            "x-authorization",
            "x-authz",
            "authorization",
            "auth-x",
            "x-oauth-user",
            "x_authorization_token",
            "x-authorisation",
            "x-author",
            "x-authy-signature",
            "x-authentication-info",
            "x-authenticity-token",
        ] {
            assert!(!x_auth(n), "{n}");
        }
        let id = |n: &str| is_identity_claim(Squeezed::new(n.as_bytes()).bytes());
        for n in [
            "x-remote-user",
            "remote-user",
            "x-user",
            "x-authenticated-user",
            "x_remote_group",
            "remote_groups",
            "x-userinfo",
            "x-access-token",
            "x-id-token",
            "x-anonymous-consumer",
            "x-jwt-assertion",
            "x-jwt-payload",
            "x-ms-token-aad-access-token",
            "x-ms-token-aad-id-token",
            "shib-session-id",
            "shib-identity-provider",
            "persistent-id",
            "affiliation",
            "x-token-subject",
            "x-token-user-email",
            "x-hasura-user-id",
            "x-hasura-role",
            // Review: every Hasura session variable, more Shibboleth attributes.
            "x-hasura-org-id",
            "x-hasura-allowed-roles",
            "x_hasura_default_role",
            "x-hasura-admin-secret",
            "subject-id",
            "pairwise-id",
            "targeted-id",
            "unscoped-affiliation",
            "entitlement",
            "subject_id",
            "x-ms-client-principal-name",
            "x-goog-authenticated-user-email",
            "x-goog-iap-jwt-assertion",
            "x-amzn-oidc-identity",
            "cf-access-authenticated-user-email",
            "x-pomerium-claim-email",
            "x-consumer-username",
            "x-authenticated-scope",
            "x-webauth-groups",
            "oidc-claim-sub",
            "impersonate-user",
            "x-user-id",
            "x-roles",
            // oauth2-proxy's, which a trusted proxy's X-Forwarded-* family would keep.
            "x-forwarded-user",
            "x_forwarded_email",
            "x-forwarded-preferred-username",
            "x-forwarded-groups",
            "x-forwarded-access-token",
            "x.forwarded.id.token",
        ] {
            assert!(id(n), "{n}");
        }
        for n in [
            "x-user-agent",
            "user-agent",
            "x-request-id",
            "x-goog-api-key",
            "x-client-id",
            "x-scope",
            "x-has-more",
            "subject",
            "x-entitlements-version",
            "x-target-id",
            "x-forwarded-for",
            "x-forwarded-host",
            "x-forwarded-proto",
            "x-forwarded-prefix",
            "x-forwarded-client-cert",
        ] {
            assert!(!id(n), "{n}");
        }
        // Configured names compare squeezed, up to 64 letters and digits.
        // (`IdentityHeaders::squeezed`, made with `text::squeezed_name`).
        let sq = Squeezed::new(b"my_identity.header");
        let configured = |name: &[u8]| *crate::text::squeezed_name(name) == *sq.bytes();
        assert!(configured(b"my-identity-header") && !configured(b"my-identity-headers"));
        let long = "a-".repeat(70);
        assert_eq!(Squeezed::new(long.as_bytes()).bytes().len(), 64);
        assert_eq!(*crate::text::squeezed_name("a".repeat(80).as_bytes()), *Squeezed::new(long.as_bytes()).bytes());
    }
}

/// Header hygiene as a whole, on plain header maps: what leaves in each direction.
#[cfg(test)]
mod hygiene_tests {
    use super::*;

    fn headers(fields: &[(&str, &[u8])]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in fields {
            h.append(HeaderName::from_bytes(n.as_bytes()).unwrap(), HeaderValue::from_bytes(v).unwrap());
        }
        h
    }

    fn names(h: &HeaderMap) -> Vec<&str> {
        let mut n: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        n.sort_unstable();
        n
    }

    #[test]
    fn hop_by_hop_fields_and_the_ones_connection_names_are_removed() {
        let mut h = headers(&[
            ("connection", b"Keep-Alive, X-Custom ,x-other"),
            ("keep-alive", b"timeout=5"),
            ("proxy-connection", b"keep-alive"),
            ("proxy-authenticate", b"Basic"),
            ("proxy-authorization", b"Basic eDp5"),
            ("te", b"trailers"),
            ("trailer", b"x-checksum"),
            ("transfer-encoding", b"chunked"),
            ("upgrade", b"websocket"),
            ("x-custom", b"1"),
            ("x-other", b"2"),
            ("x-kept", b"3"),
            ("content-type", b"text/plain"),
            ("set-cookie", b"a=1"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(names(&h), ["content-type", "set-cookie", "x-kept"]);
    }

    #[test]
    fn every_connection_line_counts_and_a_bad_token_hides_no_other() {
        let mut h = headers(&[
            ("connection", b"close"),
            ("connection", b"not a name, x-one"),
            ("connection", b"x-two,\xff, x-three"),
            ("x-one", b"1"),
            ("x-two", b"2"),
            ("x-three", b"3"),
            ("x-kept", b"4"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(names(&h), ["x-kept"]);
        // Nothing hop-by-hop: nothing changes.
        let mut h = headers(&[("accept", b"*/*"), ("x-connection", b"close"), ("te-x", b"1")]);
        strip_hop_by_hop(&mut h);
        assert_eq!(names(&h), ["accept", "te-x", "x-connection"]);
    }

    #[test]
    fn the_hop_by_hop_list_is_exact() {
        for n in ["connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"] {
            assert!(is_hop_by_hop(n), "{n}");
        }
        for n in ["x-connection", "connections", "trailers", "upgrade-insecure-requests", "host", "cookie"] {
            assert!(!is_hop_by_hop(n), "{n}");
        }
    }

    #[test]
    fn a_forwarded_host_is_kept_only_as_one_line_of_valid_authorities() {
        let valid = |fields: &[&[u8]]| {
            let pairs: Vec<(&str, &[u8])> = fields.iter().map(|v| ("x-forwarded-host", *v)).collect();
            valid_forwarded_host(&headers(&pairs))
        };
        assert!(valid(&[b"app.example"]));
        assert!(valid(&[b"app.example:8443, edge.example"]));
        assert!(!valid(&[]), "absent");
        assert!(!valid(&[b"a.example", b"b.example"]), "two lines");
        assert!(!valid(&[b"a.example,,b.example"]), "an empty item");
        assert!(!valid(&[b"a example"]), "a space inside");
        assert!(!valid(&[b"evil.example/path"]), "a path");
        assert!(!valid(&[b"user@evil.example"]), "userinfo");
    }

    #[test]
    fn set_cookies_of_others_survive_in_order() {
        let mut h = headers(&[
            ("set-cookie", b"a=1; Path=/"),
            ("set-cookie", b"__Host-portcullis_session=S; Secure"),
            ("set-cookie", b"b=2"),
        ]);
        drop_gateway_set_cookies(&mut h);
        let kept: Vec<&[u8]> = h.get_all(header::SET_COOKIE).iter().map(HeaderValue::as_bytes).collect();
        assert_eq!(kept, [&b"a=1; Path=/"[..], b"b=2"]);
    }

    #[test]
    fn forwarded_names_the_vouched_chain_then_this_hop_and_quotes_ipv6() {
        let v4 = Peer::new("192.0.2.7:5000".parse().unwrap(), false);
        let v6 = Peer::new("[2001:db8::1]:5000".parse().unwrap(), true);
        let mapped = Peer::new("[::ffff:192.0.2.8]:5000".parse().unwrap(), true);
        let fwd = |chain: &[&str], p: &Peer| {
            let chain: Vec<std::net::IpAddr> = chain.iter().map(|a| a.parse().unwrap()).collect();
            forwarded(&chain, p).unwrap().to_str().unwrap().to_string()
        };
        assert_eq!(fwd(&[], &v4), "for=192.0.2.7;proto=http");
        assert_eq!(fwd(&[], &v6), "for=\"[2001:db8::1]\";proto=https");
        assert_eq!(fwd(&[], &mapped), "for=192.0.2.8;proto=https");
        assert_eq!(fwd(&["203.0.113.9", "::1"], &v4), "for=203.0.113.9, for=\"[::1]\", for=192.0.2.7;proto=http");
    }

    #[test]
    fn cookies_without_ours_are_left_alone_and_no_cookie_is_invented() {
        let mut h = headers(&[("accept", b"*/*")]);
        filter_cookies(&mut h);
        assert!(!h.contains_key(header::COOKIE));
        let mut h = headers(&[("cookie", b"a=1; b=2")]);
        filter_cookies(&mut h);
        assert_eq!(h.get(header::COOKIE).unwrap().as_bytes(), b"a=1; b=2");
    }
}
