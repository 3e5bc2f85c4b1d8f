//! `[[route]]` and `[proxy]`: what is proxied where, who may pass, and what the
//! upstream is told about the caller.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::Method;
use ipnet::IpNet;
use toml::Spanned;

use super::Validator;
use crate::config::ConfigError;
use crate::config::model::{Access, Client, IdentityHeaders, Route, SELF_ISSUER, TrustedIssuer, Upstream};
use crate::config::raw::{RawHeaders, RawRoute};

impl Validator<'_> {
    pub(super) fn trusted_proxies(&self, raw: &[Spanned<String>]) -> Result<Vec<IpNet>, ConfigError> {
        let mut trusted_proxies = Vec::new();
        for p in raw {
            let s = p.get_ref().trim();
            let net = s.parse::<IpNet>().or_else(|_| s.parse::<IpAddr>().map(IpNet::from)).map_err(|_| {
                self.err(p.span(), format!("bad trusted proxy {s:?}: write an address or CIDR, e.g. \"10.0.0.0/8\""))
            })?;
            // Wider than any private range (10/8, fc00::/7): every such list (0.0.0.0/0, or
            // 0.0.0.0/1 with 128.0.0.0/1) trusts the Internet.
            let widest = if net.addr().is_ipv4() { 8 } else { 7 };
            if net.prefix_len() < widest {
                self.warn(
                    p.span(),
                    format!(
                        "trusted proxy {s:?} trusts far more than your balancers: any client there can set X-Forwarded-For and pick \
                         the address rate limits and logs see; list your balancers only"
                    ),
                );
            }
            trusted_proxies.push(net);
        }
        Ok(trusted_proxies)
    }

    /// The identity header names; never one that means something else on the way (a
    /// hop-by-hop, credential, framing or forwarding header), never one name twice.
    pub(super) fn identity_headers(&self, h: &RawHeaders) -> Result<IdentityHeaders, ConfigError> {
        let mut headers = IdentityHeaders {
            client_id: self.header(&h.client_id, "x-auth-client-id")?,
            subject: self.header(&h.subject, "x-auth-subject")?,
            scope: self.header(&h.scope, "x-auth-scope")?,
            token_id: self.header(&h.token_id, "x-auth-token-id")?,
            user: self.header(&h.user, "x-auth-user")?,
            issuer: self.header(&h.issuer, "x-auth-issuer")?,
            binding: self.header(&h.binding, "x-auth-binding")?,
            cert_thumbprint: self.header(&h.cert_thumbprint, "x-auth-cert-thumbprint")?,
            squeezed: Box::default(),
        };
        headers.squeeze();
        let raw = [&h.client_id, &h.subject, &h.scope, &h.token_id, &h.user, &h.issuer, &h.binding, &h.cert_thumbprint];
        for (i, (name, given)) in headers.all().into_iter().zip(raw).enumerate() {
            let Some(given) = given else { continue };
            if reserved_header(name.as_str()) {
                return Err(self.err(
                    given.span(),
                    format!(
                        "identity header {:?} is a hop-by-hop, credential or forwarding header: the gateway and \
                         upstreams give it another meaning; use a name of its own such as \"x-auth-...\"",
                        given.get_ref()
                    ),
                ));
            }
            if headers.all()[..i].contains(&name) {
                return Err(self.err(given.span(), format!("identity header {:?} is used twice", given.get_ref())));
            }
        }
        Ok(headers)
    }

    /// Every route, longest prefix first (so the first match is the longest); routes
    /// with a host or method filter before the catch-all of the same prefix.
    pub(super) fn routes(
        &self,
        raw: &[Spanned<RawRoute>],
        issuers: &[Arc<TrustedIssuer>],
    ) -> Result<Vec<Arc<Route>>, ConfigError> {
        let mut routes = Vec::new();
        let mut seen = HashSet::new();
        for r in raw {
            let route = self.route(r, issuers)?;
            // Prefixes match without regard to case, so a case variant is the same route.
            let key = (
                route.prefix.to_ascii_lowercase(),
                route.host.clone(),
                route.methods.as_ref().map(|m| format!("{m:?}")),
            );
            if !seen.insert(key) {
                let same = routes.iter().find(|o: &&Arc<Route>| o.prefix.eq_ignore_ascii_case(&route.prefix));
                return Err(match same {
                    Some(o) if o.prefix != route.prefix => self.err(
                        r.get_ref().prefix.span(),
                        format!(
                            "route prefix {:?} differs from {:?} only in case: prefixes match regardless of case, \
                             so this route would never be chosen",
                            route.prefix, o.prefix
                        ),
                    ),
                    _ => self.err(r.span(), format!("duplicate route for prefix {:?}", route.prefix)),
                });
            }
            routes.push(Arc::new(route));
        }
        routes.sort_by(|a, b| {
            b.prefix
                .len()
                .cmp(&a.prefix.len())
                .then_with(|| b.host.is_some().cmp(&a.host.is_some()))
                .then_with(|| b.methods.is_some().cmp(&a.methods.is_some()))
        });
        Ok(routes)
    }

    /// Warn about a scope a route requires that no client may be given: only a token
    /// from outside this configuration could pass (perhaps a client is still to come).
    pub(super) fn unobtainable_route_scopes(&self, raw: &[Spanned<RawRoute>], clients: &HashMap<String, Arc<Client>>) {
        for r in raw {
            // A trusted issuer grants its own scopes.
            if r.get_ref().issuers.as_ref().is_some_and(|l| l.iter().any(|n| n.get_ref() != SELF_ISSUER)) {
                continue;
            }
            // Only enabled clients issue tokens.
            let enabled = || clients.values().filter(|c| c.enabled);
            let scopes = &r.get_ref().scopes;
            for s in scopes {
                if !enabled().any(|c| c.scopes.contains(s.get_ref())) {
                    self.warn(
                        s.span(),
                        format!(
                            "route {:?} requires scope {:?}, which no client may obtain: no token can pass it",
                            r.get_ref().prefix.get_ref(),
                            s.get_ref()
                        ),
                    );
                }
            }
            // Each scope obtainable, but by no one client all together: no one token has them.
            let each = scopes.iter().all(|s| enabled().any(|c| c.scopes.contains(s.get_ref())));
            let together = enabled().any(|c| scopes.iter().all(|s| c.scopes.contains(s.get_ref())));
            if scopes.len() > 1
                && each
                && !together
                && let Some(first) = scopes.first()
            {
                self.warn(
                    first.span(),
                    format!(
                        "route {:?} requires scopes that no one client may obtain together: no token can pass it",
                        r.get_ref().prefix.get_ref()
                    ),
                );
            }
        }
    }

    fn route(&self, r: &Spanned<RawRoute>, issuers: &[Arc<TrustedIssuer>]) -> Result<Route, ConfigError> {
        let r = r.get_ref();
        let p = r.prefix.get_ref();
        if !p.starts_with('/') || p.contains(['?', '#']) || p.split('/').any(|seg| seg == "." || seg == "..") {
            return Err(self.err(
                r.prefix.span(),
                format!("bad route prefix {p:?}: a path starting with '/', without '?', '#' or dot segments"),
            ));
        }
        let prefix = if p.len() > 1 { p.trim_end_matches('/').to_string() } else { p.clone() };
        let prefix = if prefix.is_empty() { "/".to_string() } else { prefix };

        let up = r.upstream.get_ref();
        let url =
            url::Url::parse(up).map_err(|e| self.err(r.upstream.span(), format!("bad upstream URL {up:?}: {e}")))?;
        if !matches!(url.scheme(), "http" | "https" | "h2c") {
            return Err(
                self.err(r.upstream.span(), format!("bad upstream URL {up:?}: scheme must be http, https or h2c"))
            );
        }
        // `h2c://` is HTTP/2 over cleartext with prior knowledge (RFC 9113 §3.3): an
        // `http` upstream spoken to in HTTP/2 from the first byte.
        let h2c = url.scheme() == "h2c";
        // Read as the `http` URL it stands for, so that the host is normalised as one.
        let url = if h2c {
            let as_http = format!("http{}", &url.as_str()["h2c".len()..]);
            url::Url::parse(&as_http)
                .map_err(|e| self.err(r.upstream.span(), format!("bad upstream URL {up:?}: {e}")))?
        } else {
            url
        };
        if url.host_str().is_none()
            || url.query().is_some()
            || url.fragment().is_some()
            || !url.username().is_empty()
            || url.password().is_some()
        {
            return Err(self.err(
                r.upstream.span(),
                format!("bad upstream URL {up:?}: needs a host and no query, fragment or credentials"),
            ));
        }
        let uri: http::Uri =
            url.as_str().parse().map_err(|e| self.err(r.upstream.span(), format!("bad upstream URL {up:?}: {e}")))?;
        let (Some(scheme), Some(authority)) = (uri.scheme().cloned(), uri.authority().cloned()) else {
            return Err(self.err(r.upstream.span(), format!("bad upstream URL {up:?}")));
        };
        let upstream = Upstream::new(scheme, authority, url.path().trim_end_matches('/').to_string(), h2c);

        // Normalised as a request's authority is (lower-case, one trailing dot removed),
        // so that the two compare equal whenever they name the same host.
        let host = match &r.host {
            None => None,
            Some(h) => match crate::authority::Authority::parse(h.get_ref().trim().as_bytes()) {
                Some(a) if a.port().is_none() => Some(a.host().to_string()),
                _ => {
                    return Err(self.err(
                        h.span(),
                        format!("bad route host {:?}: a host name or IP address, without port", h.get_ref()),
                    ));
                }
            },
        };
        let methods = match &r.methods {
            None => None,
            Some(list) => {
                let mut out = Vec::new();
                for m in list {
                    let method = Method::from_bytes(m.get_ref().to_ascii_uppercase().as_bytes())
                        .map_err(|_| self.err(m.span(), format!("bad method {:?}", m.get_ref())))?;
                    // Any token is a valid method, so a typo ("PSOT") would silently allow nothing.
                    if !KNOWN_METHODS.contains(&method.as_str()) {
                        self.warn(
                            m.span(),
                            format!(
                                "method {:?} is not a registered HTTP method (a typo?): requests with any other \
                                 method do not match this route",
                                m.get_ref()
                            ),
                        );
                    }
                    out.push(method);
                }
                Some(out)
            }
        };
        let scopes = self.scopes(&r.scopes)?;
        let access = match (r.public, scopes.is_empty()) {
            (true, true) => Access::Public,
            (true, false) => return Err(self.err(r.prefix.span(), "a public route cannot require scopes")),
            (false, _) => Access::Scopes(scopes),
        };
        let public = access == Access::Public;
        let quota_id = format!(
            "{}|{prefix}|{}",
            host.as_deref().unwrap_or(""),
            methods.as_ref().map(|m| m.iter().map(Method::as_str).collect::<Vec<_>>().join(",")).unwrap_or_default()
        );
        if public
            && let Some(q) = &r.quota
            && q.get_ref().per.get_ref() != "ip"
        {
            return Err(
                self.err(q.get_ref().per.span(), "a public route reads no token: its quota can only be per = \"ip\"")
            );
        }
        let audience = match &r.audience {
            None => None,
            Some(a) => Some(self.resource_uri(a, "audience")?),
        };
        self.websocket_options(r, &access, upstream.h2c)?;
        Ok(Route {
            issuers: self.route_issuers(r, issuers)?,
            claims: self.route_claims(r)?,
            audience,
            prefix,
            host,
            methods,
            upstream,
            access,
            strip_prefix: r.strip_prefix,
            forward_token: r.forward_token,
            pass_rewrite_headers: r.pass_rewrite_headers,
            websocket: r.websocket,
            websocket_query_token: r.websocket_query_token,
            websocket_idle_timeout: match &r.websocket_idle_timeout {
                None => None,
                Some(_) => Some(self.duration(&r.websocket_idle_timeout, Duration::ZERO)?),
            },
            end_with_token: r.end_with_token.unwrap_or(true),
            quota: match &r.quota {
                None => None,
                Some(q) => Some(self.route_quota(q, &quota_id)?),
            },
        })
    }

    /// `websocket_query_token` only means something on a WebSocket route that reads tokens.
    /// A WebSocket goes upstream as an HTTP/1.1 upgrade, which an `h2c://` upstream cannot take.
    fn websocket_options(&self, r: &RawRoute, access: &Access, h2c: bool) -> Result<(), ConfigError> {
        if r.websocket && h2c {
            return Err(self.err(
                r.upstream.span(),
                "websocket = true needs an http:// or https:// upstream: a WebSocket is an HTTP/1.1 upgrade, and \
                 an h2c:// upstream speaks only HTTP/2",
            ));
        }
        if r.websocket_query_token && !r.websocket {
            return Err(self.err(r.prefix.span(), "websocket_query_token needs websocket = true on the route"));
        }
        if r.websocket_query_token && *access == Access::Public {
            return Err(self.err(r.prefix.span(), "websocket_query_token on a public route: it reads no token"));
        }
        if let Some(t) = &r.websocket_idle_timeout
            && !r.websocket
        {
            return Err(self.err(t.span(), "websocket_idle_timeout needs websocket = true on the route"));
        }
        Ok(())
    }

    /// RFC 8707 §2: a resource indicator is an absolute URI without a fragment; clients
    /// name it byte for byte in `resource`, so it is kept exactly as written.
    pub(super) fn resource_uri(&self, v: &Spanned<String>, field: &str) -> Result<String, ConfigError> {
        let s = v.get_ref();
        match url::Url::parse(s) {
            Ok(u) if u.fragment().is_none() && !s.contains('#') && s.trim() == s => Ok(s.clone()),
            _ => Err(self.err(v.span(), format!("bad {field} {s:?}: an absolute URI without fragment"))),
        }
    }
}

/// The IANA HTTP method registry (RFC 9110, WebDAV, PATCH, QUERY) and PURGE, which
/// caches use: anything else in a route's `methods` is most likely a typo.
const KNOWN_METHODS: &[&str] = &[
    "GET",
    "HEAD",
    "POST",
    "PUT",
    "DELETE",
    "CONNECT",
    "OPTIONS",
    "TRACE",
    "PATCH",
    "QUERY",
    "PURGE",
    "ACL",
    "BASELINE-CONTROL",
    "BIND",
    "CHECKIN",
    "CHECKOUT",
    "COPY",
    "LABEL",
    "LINK",
    "LOCK",
    "MERGE",
    "MKACTIVITY",
    "MKCALENDAR",
    "MKCOL",
    "MKREDIRECTREF",
    "MKWORKSPACE",
    "MOVE",
    "ORDERPATCH",
    "PROPFIND",
    "PROPPATCH",
    "REBIND",
    "REPORT",
    "SEARCH",
    "UNBIND",
    "UNCHECKOUT",
    "UNLINK",
    "UNLOCK",
    "UPDATE",
    "UPDATEREDIRECTREF",
    "VERSION-CONTROL",
];

/// Header names an identity header may not take: hop-by-hop (RFC 9110 §7.6.1), credentials
/// and cookies, message framing, and the forwarding headers the gateway itself manages.
fn reserved_header(name: &str) -> bool {
    const RESERVED: &[&str] = &[
        "authorization",
        "www-authenticate",
        "cookie",
        "set-cookie",
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "content-type",
        "content-encoding",
        "expect",
        "forwarded",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-real-ip",
        // The gateway sets it on every request (dispatch), for tracing.
        "x-request-id",
        "via",
        // Rewrite and method-override headers: an upstream would act on them.
        "x-original-url",
        "x-rewrite-url",
        "x-http-method-override",
        "x-method-override",
        "x-http-method",
    ];
    // Compared on letters and digits only: `X_Forwarded_For` or `x.real.ip` is the same
    // header to CGI-style servers (which map `_` and `-` alike) and to the proxy's hygiene.
    let squeeze =
        |n: &str| n.bytes().filter(u8::is_ascii_alphanumeric).map(|b| b.to_ascii_lowercase()).collect::<Vec<u8>>();
    let squeezed = squeeze(name);
    RESERVED.iter().any(|r| squeeze(r) == squeezed) || squeezed.starts_with(b"proxy") || name.starts_with(':')
}
