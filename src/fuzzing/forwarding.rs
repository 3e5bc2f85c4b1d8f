//! The proxy's whole request header pass (`forward::upstream_headers`) on a caller's
//! fields: what reaches an upstream, judged by rules written here apart from `forward.rs`,
//! so that a gap there cannot hide itself.
//!
//! Input: a flags byte, then one field per line, `name:value` (split at the first `:`);
//! a line whose name or value could not be a header field is skipped, as hyper would never
//! deliver it. Flags: bit 0 the peer is a trusted proxy, bit 1 TLS, bit 2 IPv6 peer, bit 3
//! the route forwards the token (`/tok`), bit 4 the gateway's own WebSocket handshake, bit 5
//! an authenticated request (a principal; else a public one), bit 6 no authority.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, LazyLock};

use http::{HeaderMap, HeaderName, HeaderValue};

use super::{Fixture, oracle};
use crate::authority::Authority;
use crate::proxy::forward::{self, Peer, Purpose};
use crate::tokens::validate::Principal;

static FIXTURE: LazyLock<Fixture> =
    LazyLock::new(|| Fixture::load(concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/fixture/gateway.toml").as_ref()));
/// One principal for every authenticated input (a signature per input would slow the fuzzer).
static PRINCIPAL: LazyLock<Arc<Principal>> = LazyLock::new(|| FIXTURE.principal("svc"));

/// The headers that describe one connection (RFC 9110 §7.6.1, and the two legacy ones).
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

/// Names of the fields the gateway sets on every request for the upstream.
const FORWARDING: [&str; 5] = ["x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "forwarded", "x-real-ip"];

/// Letters and digits only, lower case: how a loose framework may read a name.
fn squeeze(name: &str) -> String {
    name.bytes().filter(u8::is_ascii_alphanumeric).map(|b| char::from(b.to_ascii_lowercase())).collect()
}

/// Lower-case words of letters and digits joined by single dashes: how proxies spell names.
fn dashed_words(name: &str) -> bool {
    name.split('-').all(|w| !w.is_empty() && w.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()))
}

/// A name no family of the header pass can match: made only of letters that none of their
/// words has in full (no a, e, i, o, u, r, s, t...). Such a field must pass unchanged.
fn bystander(name: &str) -> bool {
    name.bytes().all(|b| b"bkqvwz0123456789-".contains(&b))
}

/// The address as `Forwarded` names a node: IPv6 bracketed and quoted (RFC 7239 §6).
fn node(ip: IpAddr) -> String {
    let ip = ip.to_canonical();
    if ip.is_ipv6() { format!("for=\"[{ip}]\"") } else { format!("for={ip}") }
}

pub fn upstream_headers(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else { return };
    let bit = |n: u8| flags & (1 << n) != 0;
    let (trusted, tls, v6, forward_token, websocket, authenticated, no_authority) =
        (bit(0), bit(1), bit(2), bit(3), bit(4), bit(5), bit(6));
    let fixture = &*FIXTURE;
    let rt = fixture.runtime();
    let ip: IpAddr = match (trusted, v6) {
        (true, false) => [10, 0, 0, 7].into(),
        (false, false) => [192, 0, 2, 1].into(),
        (true, true) => "2001:db8:7::1".parse().expect("an address"),
        (false, true) => "2001:db8:9::1".parse().expect("an address"),
    };
    assert_eq!(rt.config.is_trusted_proxy(ip), trusted, "the fixture's trusted_proxies");
    let peer = Peer::new(SocketAddr::new(ip, 40000), tls);
    let prefix = if forward_token { "/tok" } else { "/api" };
    let route = rt.config.routes.iter().find(|r| r.prefix == prefix).expect("the fixture's routes");
    let authority = (!no_authority).then(|| Authority::parse(b"gw.fuzz.test").expect("an authority"));
    let principal = authenticated.then(|| PRINCIPAL.clone());
    let purpose = if websocket { Purpose::WebSocket } else { Purpose::Plain };

    let mut headers = HeaderMap::new();
    for line in rest.split(|&b| b == b'\n').take(128) {
        let Some(colon) = line.iter().position(|&b| b == b':') else { continue };
        let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(&line[..colon]), HeaderValue::from_bytes(&line[colon + 1..]))
        else {
            continue;
        };
        headers.append(name, value);
    }
    let sent = headers.clone();
    // What `Connection` names, as a recipient reads it: every line, split on commas, OWS
    // trimmed, any case; bytes that are not text hide no name beside them.
    let listed: Vec<String> = sent
        .get_all(http::header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(|t| String::from_utf8_lossy(t).trim_matches([' ', '\t']).to_ascii_lowercase())
        .collect();
    let xff_listed = listed.iter().any(|t| t == "x-forwarded-for");

    if forward::upstream_headers(&mut headers, rt, route, principal.as_deref(), &peer, authority.as_ref(), purpose)
        .is_err()
    {
        return;
    }

    let ids = &rt.config.headers;
    let identity: Vec<&str> = [
        &ids.client_id,
        &ids.subject,
        &ids.scope,
        &ids.token_id,
        &ids.user,
        &ids.issuer,
        &ids.binding,
        &ids.cert_thumbprint,
    ]
    .iter()
    .map(|n| n.as_str())
    .collect();
    for name in headers.keys() {
        let n = name.as_str();
        let sq = squeeze(n);
        let count = headers.get_all(name).iter().count();
        assert!(!HOP_BY_HOP.contains(&n), "hop-by-hop {n} reached the upstream");
        // The fields the gateway sets itself go on whatever `Connection` names.
        let ours = n == "x-request-id" || FORWARDING.contains(&n) || (authenticated && identity.contains(&n));
        assert!(ours || !listed.iter().any(|t| t == n), "{n}, named in Connection, reached the upstream");
        assert_ne!(n, "host", "the caller's Host reached the upstream");
        assert_ne!(sq, "proxy", "{n} (httpoxy) reached the upstream");
        if !forward_token {
            assert!(n != "authorization" && n != "dpop", "{n} reached an upstream whose route keeps the token");
        }
        if sq.starts_with("secwebsocket") {
            assert!(
                websocket && (n == "sec-websocket-protocol" || n == "sec-websocket-extensions"),
                "{n} reached the upstream of a {} request",
                if websocket { "WebSocket" } else { "plain" }
            );
        }
        // Identity: only the gateway's own names, once each, and only for a principal.
        let x_auth =
            sq.starts_with("xauth") && !["xauthor", "xauthz", "xauthy", "xauthent"].iter().any(|w| sq.starts_with(w));
        if x_auth || identity.iter().any(|id| squeeze(id) == sq) {
            assert!(authenticated && identity.contains(&n), "identity claim {n} reached the upstream");
            assert_eq!(count, 1, "{n} sent {count} times");
        }
        for claim in
            ["xremoteuser", "remoteuser", "xforwardeduser", "xforwardedemail", "xforwardedaccesstoken", "xuser"]
        {
            assert_ne!(sq, claim, "identity claim {n} reached the upstream");
        }
        // Forwarding claims: from anyone else only the gateway's own; from a trusted proxy
        // only in the spelling proxies send.
        if sq.starts_with("xforwarded") || sq.starts_with("forwarded") || sq == "xrealip" {
            match trusted {
                false => assert!(FORWARDING.contains(&n), "{n} from an untrusted peer reached the upstream"),
                true => assert!(dashed_words(n), "{n}, a spelling no proxy sends, reached the upstream"),
            }
        }
    }

    // The fields the gateway vouches for: one each, telling the same story.
    let one = |n: &str| -> String {
        let values: Vec<&HeaderValue> = headers.get_all(n).iter().collect();
        assert_eq!(values.len(), 1, "{n}: {values:?}");
        String::from_utf8_lossy(values[0].as_bytes()).into_owned()
    };
    let (xff, real_ip, forwarded, proto) =
        (one("x-forwarded-for"), one("x-real-ip"), one("forwarded"), one("x-forwarded-proto"));
    let scheme = if tls { "https" } else { "http" };
    let this_hop = format!("{};proto={scheme}", node(ip));
    let ip_text = ip.to_canonical().to_string();
    assert!(forwarded.ends_with(&this_hop), "Forwarded {forwarded:?} does not end with this hop");
    assert!(xff == ip_text || xff.ends_with(&format!(", {ip_text}")), "X-Forwarded-For {xff:?} lost this hop");
    // X-Real-IP is the first node of Forwarded.
    let first = forwarded.split(',').next().unwrap_or("").trim();
    let first = first.split(';').next().unwrap_or("");
    assert_eq!(node(real_ip.parse().expect("X-Real-IP is an address")), first, "X-Real-IP against {forwarded:?}");
    if !trusted || xff_listed {
        assert_eq!(xff, ip_text, "X-Forwarded-For vouches for what it may not");
        assert_eq!(real_ip, ip_text, "X-Real-IP vouches for what it may not");
        assert_eq!(forwarded, this_hop, "Forwarded vouches for what it may not");
    }
    if !trusted {
        assert_eq!(proto, scheme);
        match &authority {
            Some(_) => assert_eq!(one("x-forwarded-host"), "gw.fuzz.test"),
            None => assert!(headers.get("x-forwarded-host").is_none()),
        }
    }
    assert!(
        proto
            .split(',')
            .all(|p| ["http", "https"].contains(&p.trim_matches([' ', '\t']).to_ascii_lowercase().as_str())),
        "X-Forwarded-Proto {proto:?}"
    );

    // Cookies: at most one field, none of the gateway's.
    let cookies: Vec<&HeaderValue> = headers.get_all(http::header::COOKIE).iter().collect();
    assert!(cookies.len() <= 1, "{} Cookie fields", cookies.len());
    for pair in cookies.iter().flat_map(|v| oracle::cookie_pairs(v.as_bytes())) {
        assert!(!oracle::mentions_ours(pair), "a gateway cookie reached the upstream: {pair:?}");
    }

    // Loses nothing: a field no family can match passes whole, in order.
    for name in sent.keys().filter(|n| bystander(n.as_str()) && !listed.iter().any(|t| t == n.as_str())) {
        let before: Vec<&HeaderValue> = sent.get_all(name).iter().collect();
        let after: Vec<&HeaderValue> = headers.get_all(name).iter().collect();
        assert_eq!(before, after, "{name} was changed on the way");
    }
}
