//! Validation: [`super::raw`] in, [`Config`] or a `file:line` error out. One file per
//! section; each turns its raw section into model values. Nothing here reads a file
//! other than the configuration itself: what the named files hold (keys, certificates,
//! CA) is checked once, when they are loaded.

mod clients;
mod dpop;
mod issuers;
mod keys;
mod limits;
mod listeners;
mod mtls;
mod paths;
mod quota;
mod routes;
mod store;

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::HeaderName;
use toml::Spanned;

use super::ConfigError;
use super::ConfigWarning;
use super::model::Config;
use super::raw::{RawConfig, RawStore};

/// The longest duration any setting takes (ten years): every deadline computed from one
/// stays far inside `Instant`'s range.
const MAX_DURATION: Duration = Duration::from_secs(3650 * 86_400);

/// The text being validated, to turn spans into line numbers.
pub(super) struct Validator<'a> {
    pub(super) text: &'a str,
    pub(super) file: &'a Path,
    /// Collected while validating; moved into the [`Config`] at the end.
    pub(super) warnings: std::cell::RefCell<Vec<ConfigWarning>>,
}

impl Validator<'_> {
    pub(super) fn line_of(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end].iter().filter(|&&b| b == b'\n').count() + 1
    }

    pub(super) fn err_at(&self, line: usize, reason: impl Into<String>) -> ConfigError {
        ConfigError { file: self.file.to_path_buf(), line, reason: reason.into() }
    }

    fn err(&self, span: Range<usize>, reason: impl Into<String>) -> ConfigError {
        self.err_at(self.line_of(span.start), reason)
    }

    /// Accept, but tell the operator (see [`ConfigWarning`]).
    fn warn(&self, span: Range<usize>, reason: impl Into<String>) {
        let w = ConfigWarning { file: self.file.to_path_buf(), line: self.line_of(span.start), reason: reason.into() };
        self.warnings.borrow_mut().push(w);
    }

    /// A path from the file, relative to the directory of the configuration.
    fn path(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            return p.to_path_buf();
        }
        match self.file.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.join(p),
            _ => p.to_path_buf(),
        }
    }

    fn duration(&self, v: &Option<Spanned<String>>, default: Duration) -> Result<Duration, ConfigError> {
        let Some(v) = v else { return Ok(default) };
        let d = humantime::parse_duration(v.get_ref().trim()).map_err(|e| {
            self.err(v.span(), format!("bad duration {:?}: {e} (write e.g. \"30s\", \"15m\", \"1h\")", v.get_ref()))
        })?;
        if d.is_zero() {
            return Err(self.err(v.span(), "duration must be greater than zero"));
        }
        // Deadlines are `Instant::now() + d`: a duration of centuries would overflow one.
        if d > MAX_DURATION {
            return Err(self.err(v.span(), format!("duration {:?} is too long: at most 3650d", v.get_ref())));
        }
        Ok(d)
    }

    /// As [`Self::duration`], for settings where zero means "off" (`"0"` or `"0s"`).
    fn duration_or_zero(&self, v: &Option<Spanned<String>>, default: Duration) -> Result<Duration, ConfigError> {
        match v {
            Some(s)
                if s.get_ref().trim() == "0"
                    || humantime::parse_duration(s.get_ref().trim()).is_ok_and(|d| d.is_zero()) =>
            {
                Ok(Duration::ZERO)
            }
            v => self.duration(v, default),
        }
    }

    fn number(&self, v: &Option<Spanned<u64>>, default: u64) -> Result<u64, ConfigError> {
        match v {
            None => Ok(default),
            Some(n) if *n.get_ref() == 0 => Err(self.err(n.span(), "must be greater than zero")),
            Some(n) => Ok(*n.get_ref()),
        }
    }

    fn scopes(&self, list: &[Spanned<String>]) -> Result<Vec<String>, ConfigError> {
        let mut out = Vec::new();
        for s in list {
            if !valid_scope_token(s.get_ref()) {
                return Err(self.err(
                    s.span(),
                    format!(
                        "invalid scope {:?}: scopes are printable ASCII without spaces, commas, quotes or backslashes",
                        s.get_ref()
                    ),
                ));
            }
            if !out.contains(s.get_ref()) {
                out.push(s.get_ref().clone());
            }
        }
        Ok(out)
    }

    fn header(&self, v: &Option<Spanned<String>>, default: &'static str) -> Result<HeaderName, ConfigError> {
        match v {
            None => Ok(HeaderName::from_static(default)),
            Some(v) => HeaderName::from_bytes(v.get_ref().as_bytes())
                .map_err(|_| self.err(v.span(), format!("invalid header name {:?}", v.get_ref()))),
        }
    }

    /// The whole file, section by section, in the order the sections depend on each
    /// other (the admin address must differ from the listeners', users from clients).
    pub(super) fn validate(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let issuer = raw.issuer.get_ref().trim().to_string();
        let issuer_url = url::Url::parse(&issuer)
            .map_err(|e| self.err(raw.issuer.span(), format!("issuer must be an absolute URL: {e}")))?;
        if issuer_url.scheme() != "https" && issuer_url.scheme() != "http" {
            return Err(self.err(raw.issuer.span(), "issuer must be an http(s) URL"));
        }
        // RFC 8414 §2: no query or fragment (the metadata URL is built from the path).
        if issuer.contains(['?', '#']) || !issuer_url.username().is_empty() || issuer_url.password().is_some() {
            return Err(self.err(raw.issuer.span(), "issuer must have no query, fragment or credentials"));
        }
        self.issuer_path(&issuer, &issuer_url, raw.issuer.span())?;
        let audience = match &raw.audience {
            Some(a) if a.get_ref().trim().is_empty() => return Err(self.err(a.span(), "audience must not be empty")),
            Some(a) => a.get_ref().trim().to_string(),
            None => issuer.clone(),
        };
        let loopback_issuer = is_loopback(&issuer_url);
        if issuer_url.scheme() == "http" && !loopback_issuer {
            self.warn(
                raw.issuer.span(),
                "the issuer is http:// on a host other than loopback: clients would send credentials and tokens \
                 in clear to the endpoints it advertises (RFC 8414 requires https)",
            );
        }
        let token_lifetime = self.duration(&raw.token_lifetime, Duration::from_secs(3600))?;
        let refresh_token_lifetime = self.duration(&raw.refresh_token_lifetime, Duration::from_secs(30 * 24 * 3600))?;
        if token_lifetime > refresh_token_lifetime {
            let span = raw.token_lifetime.as_ref().or(raw.refresh_token_lifetime.as_ref()).map(|s| s.span());
            self.warn(
                span.unwrap_or(raw.issuer.span()),
                "token_lifetime is longer than refresh_token_lifetime: refresh tokens expire before the access \
                 tokens they were issued with",
            );
        }

        let listeners = self.listeners(&raw.listeners)?;
        let tls = self.tls(raw.tls.as_ref(), &raw.listeners, loopback_issuer)?;
        let limits = self.limits(&raw.limits)?;
        let endpoints = self.endpoints(&raw.endpoints)?;
        let admin = self.admin(raw.admin.as_ref(), &listeners)?;
        let trusted_proxies = self.trusted_proxies(&raw.proxy.trusted_proxies)?;
        let headers = self.identity_headers(&raw.proxy.headers)?;
        let keys = self.keys(&raw.keys)?;
        let clients = self.clients(&raw.clients, token_lifetime, refresh_token_lifetime)?;
        for c in &raw.clients {
            if let Some(client) = clients.get(c.get_ref().id.get_ref()) {
                self.certificate_clients(c, &client.auth, client.token_binding, tls.as_ref())?;
            }
        }
        let users = self.users(&raw.users, &clients)?;
        self.linked_users(&raw.clients, &users)?;
        let default_store = RawStore::default();
        let raw_store = raw.store.as_ref().map_or(&default_store, |s| s.get_ref());
        let store = self.store(raw_store)?;
        let store_line = match (&raw_store.path, &raw.store) {
            (Some(p), _) => self.line_of(p.span().start),
            (None, Some(s)) => self.line_of(s.span().start),
            (None, None) => 0,
        };
        let trusted_issuers = self.trusted_issuers(&raw.trusted_issuers, &issuer)?;
        let routes = self.routes(&raw.routes, &trusted_issuers)?;
        let mut rule_claims: Vec<String> =
            routes.iter().flat_map(|r| r.claims.iter().map(|c| c.claim.clone())).collect();
        rule_claims.sort();
        rule_claims.dedup();
        self.unobtainable_route_scopes(&raw.routes, &clients);

        let config = Config {
            source: self.file.to_path_buf(),
            issuer,
            audience,
            realm: raw.realm.unwrap_or_else(|| "portcullis".to_string()).replace(['"', '\\'], ""),
            token_lifetime,
            refresh_token_lifetime,
            session_lifetime: self.duration(&raw.session_lifetime, Duration::from_secs(8 * 3600))?,
            listeners,
            tls,
            limits,
            token_path: endpoints.token,
            authorize_path: endpoints.authorize,
            revoke_path: endpoints.revoke,
            introspect_path: endpoints.introspect,
            metadata_path: endpoints.metadata,
            jwks_path: endpoints.jwks,
            admin,
            trusted_proxies,
            upstream_ca: raw.proxy.upstream_ca.as_ref().map(|p| self.path(p.get_ref())),
            upstream_ca_line: raw.proxy.upstream_ca.as_ref().map_or(0, |p| self.line_of(p.span().start)),
            headers,
            cache_max_tokens: self.number(&raw.cache.max_tokens, 100_000)?,
            cache_max_client_secrets: self.number(&raw.cache.max_client_secrets, 10_000)?,
            keys,
            clients,
            routes: crate::config::RouteTable::new(routes, |r| crate::config::RouteKey {
                prefix: &r.prefix,
                host: r.host.as_deref(),
                methods: r.methods.as_deref(),
            }),
            users,
            trusted_issuers,
            rule_claims,
            store,
            store_sweep_interval: self.duration(&raw_store.sweep_interval, Duration::from_secs(60))?,
            store_line,
            rate_limit: self.rate_limit(&raw.rate_limit)?,
            dpop: self.dpop(&raw.dpop)?,
            warnings: Vec::new(),
        };
        self.served_paths(&config, &raw.endpoints, raw.issuer.span())?;
        Ok(Config { warnings: self.warnings.take(), ..config })
    }
}

/// `localhost`, `127.0.0.0/8` or `[::1]`: a local trial.
fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// RFC 6749 §3.3 scope-token: %x21 / %x23-5B / %x5D-7E.
fn valid_scope_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b))
        && !s.contains(',')
}
