//! `[[route]]` and `[proxy]`: what is proxied where, who may pass, and what the
//! upstream is told about the caller.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;

use http::Method;
use ipnet::IpNet;
use toml::Spanned;

use super::Validator;
use crate::config::ConfigError;
use crate::config::model::{Access, IdentityHeaders, Route, Upstream};
use crate::config::raw::{RawHeaders, RawRoute};

impl Validator<'_> {
    pub(super) fn trusted_proxies(&self, raw: &[Spanned<String>]) -> Result<Vec<IpNet>, ConfigError> {
        let mut trusted_proxies = Vec::new();
        for p in raw {
            let s = p.get_ref().trim();
            let net = s.parse::<IpNet>().or_else(|_| s.parse::<IpAddr>().map(IpNet::from)).map_err(|_| {
                self.err(p.span(), format!("bad trusted proxy {s:?}: write an address or CIDR, e.g. \"10.0.0.0/8\""))
            })?;
            trusted_proxies.push(net);
        }
        Ok(trusted_proxies)
    }

    pub(super) fn identity_headers(&self, h: &RawHeaders) -> Result<IdentityHeaders, ConfigError> {
        Ok(IdentityHeaders {
            client_id: self.header(&h.client_id, "x-auth-client-id")?,
            subject: self.header(&h.subject, "x-auth-subject")?,
            scope: self.header(&h.scope, "x-auth-scope")?,
            token_id: self.header(&h.token_id, "x-auth-token-id")?,
            user: self.header(&h.user, "x-auth-user")?,
        })
    }

    /// Every route, longest prefix first (so the first match is the longest); routes
    /// with a host or method filter before the catch-all of the same prefix.
    pub(super) fn routes(&self, raw: &[Spanned<RawRoute>]) -> Result<Vec<Arc<Route>>, ConfigError> {
        let mut routes = Vec::new();
        let mut seen = HashSet::new();
        for r in raw {
            let route = self.route(r)?;
            let key = (route.prefix.clone(), route.host.clone(), route.methods.as_ref().map(|m| format!("{m:?}")));
            if !seen.insert(key) {
                return Err(self.err(r.span(), format!("duplicate route for prefix {:?}", route.prefix)));
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

    fn route(&self, r: &Spanned<RawRoute>) -> Result<Route, ConfigError> {
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
        if url.scheme() != "http" && url.scheme() != "https" {
            return Err(self.err(r.upstream.span(), format!("bad upstream URL {up:?}: scheme must be http or https")));
        }
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
        let upstream = Upstream { scheme, authority, base_path: url.path().trim_end_matches('/').to_string() };

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
        let audience = match &r.audience {
            None => None,
            Some(a) => Some(self.resource_uri(a, "audience")?),
        };
        Ok(Route {
            audience,
            prefix,
            host,
            methods,
            upstream,
            access,
            strip_prefix: r.strip_prefix,
            forward_token: r.forward_token,
            pass_rewrite_headers: r.pass_rewrite_headers,
        })
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
