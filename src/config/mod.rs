//! Configuration: the TOML schema ([`raw`]) is validated into a [`Config`] that
//! cannot exist in an invalid form, so no later phase re-checks it.
//! Every refusal carries the file and line it came from.

mod raw;
/// Kept at its old path for the tests that call `config::reload::reload`; the
/// reloader itself lives above the config, in [`crate::reload`].
pub use crate::reload;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, Method};
use ipnet::IpNet;
use toml::Spanned;

use raw::{RawAdmin, RawClient, RawConfig, RawKey, RawRateLimit, RawRoute, RawUser};

/// A configuration that was refused: where, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based; 0 when the problem is the file as a whole (e.g. unreadable).
    pub line: usize,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file.display(), self.reason)
        } else {
            write!(f, "{}:{}: {}", self.file.display(), self.line, self.reason)
        }
    }
}

impl std::error::Error for ConfigError {}

/// The grants a client may be allowed. Parsed once, matched everywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GrantType {
    ClientCredentials,
    Password,
    AuthorizationCode,
    RefreshToken,
}

impl GrantType {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "client_credentials" => Some(Self::ClientCredentials),
            "password" => Some(Self::Password),
            "authorization_code" => Some(Self::AuthorizationCode),
            "refresh_token" => Some(Self::RefreshToken),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClientCredentials => "client_credentials",
            Self::Password => "password",
            Self::AuthorizationCode => "authorization_code",
            Self::RefreshToken => "refresh_token",
        }
    }
}

/// Signature algorithms an operator may configure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAlgorithm {
    EdDSA,
    ES256,
    RS256,
    HS256,
}

impl KeyAlgorithm {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "EdDSA" => Some(Self::EdDSA),
            "ES256" => Some(Self::ES256),
            "RS256" => Some(Self::RS256),
            "HS256" => Some(Self::HS256),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Listener {
    pub address: SocketAddr,
    pub tls: bool,
    /// Where it is configured, for errors found after validation (e.g. on reload).
    pub line: usize,
}

#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Generate a self-signed localhost certificate when the files are missing.
    pub dev_certificate: bool,
    /// Where `[tls]` is configured, for errors found when the files are loaded.
    pub line: usize,
    /// `Strict-Transport-Security` for every response on a TLS connection (never on a
    /// plaintext one); off unless configured, and refused with a dev certificate.
    pub hsts: Option<http::HeaderValue>,
}

/// The admin listener (health, readiness, metrics).
#[derive(Debug, Clone)]
pub struct Admin {
    pub address: SocketAddr,
    /// Where it is configured; 0 for the default.
    pub line: usize,
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub max_header_bytes: usize,
    /// The largest response head accepted from an upstream; beyond it, 502.
    pub max_upstream_header_bytes: usize,
    pub max_token_body_bytes: usize,
    pub max_proxy_body_bytes: u64,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub upstream_connect_timeout: Duration,
    pub upstream_timeout: Duration,
    pub tls_handshake_timeout: Duration,
    pub shutdown_grace: Duration,
    pub max_connections: usize,
}

/// A token bucket: `burst` units at once, then `refill_per_sec` units a second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quota {
    pub burst: u32,
    pub refill_per_sec: f64,
}

/// `[rate_limit]`: the token endpoint and the login form (see `crate::ratelimit`).
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimits {
    /// `false` turns every limit off.
    pub enabled: bool,
    /// Requests per source IP, per endpoint.
    pub ip: Quota,
    /// How many requests a failed authentication counts for in the per-IP bucket.
    pub failure_cost: u32,
    /// Failed secret verifications per client id.
    pub client_failures: Quota,
    /// Failed password verifications per username (login form and password grant).
    pub user_failures: Quota,
    /// Keys remembered per bucket kind; read at start only.
    pub max_tracked: u64,
}

#[derive(Debug, Clone)]
pub struct KeyConfig {
    pub id: String,
    pub algorithm: KeyAlgorithm,
    pub file: PathBuf,
    /// Signing-capable; inactive keys only verify.
    pub active: bool,
    /// Create the key file on first start when it is missing.
    pub generate: bool,
    /// Where this `[[key]]` is configured, for errors found when the file is loaded.
    pub line: usize,
}

#[derive(Debug, Clone)]
pub struct Client {
    pub id: String,
    pub name: String,
    /// argon2id PHC string; `None` for a public client.
    pub secret_hash: Option<String>,
    pub grants: HashSet<GrantType>,
    pub scopes: Vec<String>,
    pub default_scopes: Vec<String>,
    pub user: Option<String>,
    pub enabled: bool,
    pub token_lifetime: Duration,
    /// Registered redirect URIs, compared exactly (RFC 9700 §2.1).
    pub redirect_uris: Vec<String>,
    /// Skip the consent page (the operator's own applications).
    pub first_party: bool,
    /// May use `response_type=token` (listed as grant "implicit").
    pub implicit: bool,
    pub refresh_on_client_credentials: bool,
}

impl Client {
    /// A public client has no secret: it may only use authorization_code with PKCE and refresh_token.
    pub fn is_public(&self) -> bool {
        self.secret_hash.is_none()
    }
}

/// A resource owner who can log in at /authorize or use the password grant.
#[derive(Debug, Clone)]
pub struct User {
    pub username: String,
    pub password_hash: String,
    pub display_name: String,
    pub enabled: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum StoreConfig {
    Embedded {
        path: PathBuf,
    },
    /// Shared by several replicas.
    Redis {
        url: String,
        key_prefix: String,
        pool_size: usize,
        timeout: Duration,
    },
}

#[derive(Debug, Clone)]
pub struct Route {
    /// Normalised: starts with `/`, no trailing `/` unless it is `/` itself.
    pub prefix: String,
    /// Lower-case host without port.
    pub host: Option<String>,
    pub methods: Option<Vec<Method>>,
    pub upstream: Upstream,
    pub scopes: Vec<String>,
    pub public: bool,
    pub strip_prefix: bool,
    pub forward_token: bool,
    /// Keep the rewrite and method-override headers (`X-Original-URL`, `X-Rewrite-URL`,
    /// `X-HTTP-Method-Override`, `X-Method-Override`, `X-HTTP-Method`) from a trusted
    /// proxy. Off: they are removed whoever sends them.
    pub pass_rewrite_headers: bool,
}

#[derive(Debug, Clone)]
pub struct Upstream {
    /// `http` or `https`.
    pub scheme: http::uri::Scheme,
    pub authority: http::uri::Authority,
    /// Base path without trailing `/` (empty for none).
    pub base_path: String,
}

#[derive(Debug, Clone)]
pub struct IdentityHeaders {
    pub client_id: HeaderName,
    pub subject: HeaderName,
    pub scope: HeaderName,
    pub token_id: HeaderName,
    pub user: HeaderName,
}

impl IdentityHeaders {
    pub fn all(&self) -> [&HeaderName; 5] {
        [&self.client_id, &self.subject, &self.scope, &self.token_id, &self.user]
    }
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub source: PathBuf,
    pub issuer: String,
    pub audience: String,
    pub realm: String,
    pub token_lifetime: Duration,
    pub refresh_token_lifetime: Duration,
    pub session_lifetime: Duration,
    pub listeners: Vec<Listener>,
    pub tls: Option<TlsFiles>,
    pub limits: Limits,
    pub token_path: String,
    pub authorize_path: String,
    /// RFC 7009 token revocation.
    pub revoke_path: String,
    /// RFC 7662 token introspection.
    pub introspect_path: String,
    /// RFC 8414 authorization server metadata.
    pub metadata_path: String,
    /// The public signing keys (RFC 7517 JWK Set).
    pub jwks_path: String,
    /// Plaintext listener for health, readiness and metrics; `None` when disabled.
    pub admin: Option<Admin>,
    pub trusted_proxies: Vec<IpNet>,
    pub upstream_ca: Option<PathBuf>,
    pub headers: IdentityHeaders,
    pub cache_max_tokens: u64,
    pub cache_max_client_secrets: u64,
    pub keys: Vec<KeyConfig>,
    pub clients: HashMap<String, Arc<Client>>,
    /// Sorted longest prefix first, so the first match is the longest.
    pub routes: Vec<Arc<Route>>,
    pub users: HashMap<String, Arc<User>>,
    pub store: StoreConfig,
    pub store_sweep_interval: Duration,
    pub rate_limit: RateLimits,
}

impl Config {
    /// Read and validate a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            line: 0,
            reason: format!("cannot read: {e}"),
        })?;
        Self::parse(&text, path)
    }

    /// Validate configuration text; `path` names it in errors and anchors relative paths.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let v = Validator { text, file: path };
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| v.line_of(s.start)).unwrap_or(0);
            v.err_at(line, e.message().trim_end().to_string())
        })?;
        v.validate(raw)
    }

    pub fn is_trusted_proxy(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        self.trusted_proxies.iter().any(|net| net.contains(&ip))
    }
}

/// Parse a scope list separated by spaces or commas, keeping first occurrences in order.
pub fn split_scopes(s: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for part in s.split([' ', ',']).filter(|p| !p.is_empty()) {
        if !out.iter().any(|o| o == part) {
            out.push(part.to_string());
        }
    }
    out
}

/// RFC 6749 §3.3 scope-token: %x21 / %x23-5B / %x5D-7E.
fn valid_scope_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b))
        && !s.contains(',')
}

struct Validator<'a> {
    text: &'a str,
    file: &'a Path,
}

impl Validator<'_> {
    fn line_of(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end].iter().filter(|&&b| b == b'\n').count() + 1
    }

    fn err_at(&self, line: usize, reason: impl Into<String>) -> ConfigError {
        ConfigError { file: self.file.to_path_buf(), line, reason: reason.into() }
    }

    fn err(&self, span: Range<usize>, reason: impl Into<String>) -> ConfigError {
        self.err_at(self.line_of(span.start), reason)
    }

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

    /// `[tls] hsts`: `max-age=<seconds>`, then optionally `includeSubDomains` and `preload`,
    /// separated by `;` (RFC 6797). Refused with `dev_certificate`: a browser that saw the
    /// header would refuse the host once the self-signed certificate is not trusted.
    fn hsts(&self, t: &raw::RawTls) -> Result<Option<http::HeaderValue>, ConfigError> {
        let Some(v) = &t.hsts else { return Ok(None) };
        let bad = |why: &str| {
            self.err(
                v.span(),
                format!("bad hsts {:?}: {why} (write e.g. \"max-age=31536000; includeSubDomains\")", v.get_ref()),
            )
        };
        let mut max_age = None;
        let mut seen = Vec::new();
        for part in v.get_ref().split(';').map(str::trim) {
            let name = part.split('=').next().unwrap_or("").trim().to_ascii_lowercase();
            if seen.contains(&name) {
                return Err(bad("a directive appears twice"));
            }
            match name.as_str() {
                "max-age" => {
                    let value = part.split_once('=').map(|(_, v)| v.trim()).unwrap_or("");
                    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                        return Err(bad("max-age needs a number of seconds"));
                    }
                    max_age = Some(value.parse::<u64>().map_err(|_| bad("max-age is too large"))?);
                }
                "includesubdomains" | "preload" if !part.contains('=') => {}
                "" => return Err(bad("an empty directive")),
                _ => return Err(bad("directives are max-age, includeSubDomains and preload")),
            }
            seen.push(name);
        }
        if max_age.is_none() {
            return Err(bad("max-age is required"));
        }
        if t.dev_certificate {
            return Err(self.err(
                v.span(),
                "hsts cannot be used with dev_certificate = true: browsers would then refuse the \
                 self-signed certificate for max-age seconds; use a real certificate",
            ));
        }
        let value = http::HeaderValue::from_str(v.get_ref().trim()).map_err(|_| bad("not a valid header value"))?;
        Ok(Some(value))
    }

    fn duration(&self, v: &Option<Spanned<String>>, default: Duration) -> Result<Duration, ConfigError> {
        let Some(v) = v else { return Ok(default) };
        let d = humantime::parse_duration(v.get_ref().trim()).map_err(|e| {
            self.err(v.span(), format!("bad duration {:?}: {e} (write e.g. \"30s\", \"15m\", \"1h\")", v.get_ref()))
        })?;
        if d.is_zero() {
            return Err(self.err(v.span(), "duration must be greater than zero"));
        }
        Ok(d)
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

    fn validate(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let issuer = raw.issuer.get_ref().trim().to_string();
        let issuer_url = url::Url::parse(&issuer)
            .map_err(|e| self.err(raw.issuer.span(), format!("issuer must be an absolute URL: {e}")))?;
        if issuer_url.scheme() != "https" && issuer_url.scheme() != "http" {
            return Err(self.err(raw.issuer.span(), "issuer must be an http(s) URL"));
        }
        let audience = match &raw.audience {
            Some(a) if a.get_ref().trim().is_empty() => return Err(self.err(a.span(), "audience must not be empty")),
            Some(a) => a.get_ref().trim().to_string(),
            None => issuer.clone(),
        };
        let token_lifetime = self.duration(&raw.token_lifetime, Duration::from_secs(3600))?;

        if raw.listeners.is_empty() {
            return Err(self.err_at(1, "no [[listener]]: at least one listener address is required"));
        }
        let mut listeners = Vec::new();
        for l in &raw.listeners {
            let l = l.get_ref();
            let address: SocketAddr = l.address.get_ref().parse().map_err(|_| {
                self.err(
                    l.address.span(),
                    format!("bad listener address {:?}: write ip:port, e.g. \"127.0.0.1:8443\"", l.address.get_ref()),
                )
            })?;
            listeners.push(Listener {
                address,
                tls: l.tls.unwrap_or(true),
                line: self.line_of(l.address.span().start),
            });
        }
        let tls = match raw.tls.as_ref() {
            None => None,
            Some(spanned) => {
                let t = spanned.get_ref();
                Some(TlsFiles {
                    cert: self.path(&t.cert),
                    key: self.path(&t.key),
                    dev_certificate: t.dev_certificate,
                    line: self.line_of(spanned.span().start),
                    hsts: self.hsts(t)?,
                })
            }
        };
        if tls.is_none()
            && let Some(l) = raw.listeners.iter().find(|l| l.get_ref().tls.unwrap_or(true))
        {
            return Err(
                self.err(l.span(), "a TLS listener needs a [tls] section with cert and key (or set tls = false)")
            );
        }

        let rl = &raw.limits;
        let limits = Limits {
            max_header_bytes: self.number(&rl.max_header_bytes, 16 * 1024)? as usize,
            max_upstream_header_bytes: self.number(&rl.max_upstream_header_bytes, 64 * 1024)? as usize,
            max_token_body_bytes: self.number(&rl.max_token_body_bytes, 16 * 1024)? as usize,
            max_proxy_body_bytes: self.number(&rl.max_proxy_body_bytes, 10 * 1024 * 1024)?,
            header_read_timeout: self.duration(&rl.header_read_timeout, Duration::from_secs(10))?,
            idle_timeout: self.duration(&rl.idle_timeout, Duration::from_secs(60))?,
            upstream_connect_timeout: self.duration(&rl.upstream_connect_timeout, Duration::from_secs(5))?,
            upstream_timeout: self.duration(&rl.upstream_timeout, Duration::from_secs(30))?,
            tls_handshake_timeout: self.duration(&rl.tls_handshake_timeout, Duration::from_secs(10))?,
            shutdown_grace: self.duration(&rl.shutdown_grace, Duration::from_secs(30))?,
            max_connections: self.number(&rl.max_connections, 10_000)? as usize,
        };
        if limits.max_header_bytes < 8192
            && let Some(v) = &rl.max_header_bytes
        {
            return Err(self.err(v.span(), "max_header_bytes must be at least 8192"));
        }
        if limits.max_upstream_header_bytes < 8192
            && let Some(v) = &rl.max_upstream_header_bytes
        {
            return Err(self.err(v.span(), "max_upstream_header_bytes must be at least 8192"));
        }

        let token_path = self.endpoint(&raw.endpoints.token, "/oauth/token")?;
        let authorize_path = self.endpoint(&raw.endpoints.authorize, "/oauth/authorize")?;
        let revoke_path = self.endpoint(&raw.endpoints.revoke, "/oauth/revoke")?;
        let introspect_path = self.endpoint(&raw.endpoints.introspect, "/oauth/introspect")?;
        let metadata_path = self.endpoint(&raw.endpoints.metadata, "/.well-known/oauth-authorization-server")?;
        let jwks_path = self.endpoint(&raw.endpoints.jwks, "/.well-known/jwks.json")?;
        let named = [
            (&raw.endpoints.token, &token_path),
            (&raw.endpoints.authorize, &authorize_path),
            (&raw.endpoints.revoke, &revoke_path),
            (&raw.endpoints.introspect, &introspect_path),
            (&raw.endpoints.metadata, &metadata_path),
            (&raw.endpoints.jwks, &jwks_path),
        ];
        for (i, (raw_a, a)) in named.iter().enumerate() {
            if let Some((raw_b, b)) = named[i + 1..].iter().find(|(_, b)| b == a) {
                // At least one of the two was configured, or the defaults would differ.
                let line = raw_b.as_ref().or(raw_a.as_ref()).map(|p| self.line_of(p.span().start)).unwrap_or(1);
                return Err(self.err_at(line, format!("endpoint path {b:?} is used by two endpoints")));
            }
        }
        let admin = self.admin(raw.admin.as_ref(), &listeners)?;

        let mut trusted_proxies = Vec::new();
        for p in &raw.proxy.trusted_proxies {
            let s = p.get_ref().trim();
            let net = s.parse::<IpNet>().or_else(|_| s.parse::<IpAddr>().map(IpNet::from)).map_err(|_| {
                self.err(p.span(), format!("bad trusted proxy {s:?}: write an address or CIDR, e.g. \"10.0.0.0/8\""))
            })?;
            trusted_proxies.push(net);
        }
        let h = &raw.proxy.headers;
        let headers = IdentityHeaders {
            client_id: self.header(&h.client_id, "x-auth-client-id")?,
            subject: self.header(&h.subject, "x-auth-subject")?,
            scope: self.header(&h.scope, "x-auth-scope")?,
            token_id: self.header(&h.token_id, "x-auth-token-id")?,
            user: self.header(&h.user, "x-auth-user")?,
        };

        let keys = self.keys(&raw.keys)?;
        let clients = self.clients(&raw.clients, token_lifetime)?;
        let users = self.users(&raw.users)?;
        // A name that is both a user and a client would make a user's token and the
        // client's own token indistinguishable to upstreams.
        if let Some(u) = raw.users.iter().find(|u| clients.contains_key(u.get_ref().username.get_ref())) {
            let name = u.get_ref().username.get_ref();
            return Err(self.err(u.get_ref().username.span(), format!("username {name:?} is also a client id")));
        }
        let store = self.store(&raw.store)?;
        let mut routes = Vec::new();
        let mut seen = HashSet::new();
        for r in &raw.routes {
            let route = self.route(r)?;
            let key = (route.prefix.clone(), route.host.clone(), route.methods.as_ref().map(|m| format!("{m:?}")));
            if !seen.insert(key) {
                return Err(self.err(r.span(), format!("duplicate route for prefix {:?}", route.prefix)));
            }
            routes.push(Arc::new(route));
        }
        // Longest prefix first; routes with a host or method filter before the catch-all of the same prefix.
        routes.sort_by(|a, b| {
            b.prefix
                .len()
                .cmp(&a.prefix.len())
                .then_with(|| b.host.is_some().cmp(&a.host.is_some()))
                .then_with(|| b.methods.is_some().cmp(&a.methods.is_some()))
        });

        Ok(Config {
            source: self.file.to_path_buf(),
            issuer,
            audience,
            realm: raw.realm.unwrap_or_else(|| "portcullis".to_string()).replace(['"', '\\'], ""),
            token_lifetime,
            refresh_token_lifetime: self.duration(&raw.refresh_token_lifetime, Duration::from_secs(30 * 24 * 3600))?,
            session_lifetime: self.duration(&raw.session_lifetime, Duration::from_secs(8 * 3600))?,
            listeners,
            tls,
            limits,
            token_path,
            authorize_path,
            revoke_path,
            introspect_path,
            metadata_path,
            jwks_path,
            admin,
            trusted_proxies,
            upstream_ca: raw.proxy.upstream_ca.as_deref().map(|p| self.path(p)),
            headers,
            cache_max_tokens: self.number(&raw.cache.max_tokens, 100_000)?,
            cache_max_client_secrets: self.number(&raw.cache.max_client_secrets, 10_000)?,
            keys,
            clients,
            routes,
            users,
            store,
            store_sweep_interval: self.duration(&raw.store.sweep_interval, Duration::from_secs(60))?,
            rate_limit: self.rate_limit(&raw.rate_limit)?,
        })
    }

    /// `[rate_limit]`, defaulting to: per IP a burst of 60 then 20/s, a failure counting
    /// as 5 requests; 20 failed authentications per client a minute; 10 failed logins per
    /// username in 5 minutes.
    fn rate_limit(&self, r: &RawRateLimit) -> Result<RateLimits, ConfigError> {
        const MAX: u64 = 1_000_000;
        let count = |v: &Option<Spanned<u64>>, default: u64| -> Result<u32, ConfigError> {
            let n = self.number(v, default)?;
            match v {
                Some(s) if n > MAX => Err(self.err(s.span(), format!("must be at most {MAX}"))),
                _ => Ok(u32::try_from(n.min(MAX)).unwrap_or(u32::MAX)),
            }
        };
        let quota = |burst: u32, rate: u32, window: Duration| Quota {
            burst,
            refill_per_sec: f64::from(rate) / window.as_secs_f64(),
        };
        let ip_burst = count(&r.ip_burst, 60)?;
        let ip = quota(ip_burst, count(&r.ip_rate, 20)?, self.duration(&r.ip_window, Duration::from_secs(1))?);
        let failure_cost = count(&r.failure_cost, 5)?;
        if failure_cost > ip_burst
            && let Some(v) = r.failure_cost.as_ref().or(r.ip_burst.as_ref())
        {
            return Err(
                self.err(v.span(), format!("failure_cost ({failure_cost}) must not exceed ip_burst ({ip_burst})"))
            );
        }
        let failures = |n: &Option<Spanned<u64>>, default_n: u64, w: &Option<Spanned<String>>, default_w: u64| {
            let n = count(n, default_n)?;
            Ok::<_, ConfigError>(quota(n, n, self.duration(w, Duration::from_secs(default_w))?))
        };
        Ok(RateLimits {
            enabled: r.enabled.unwrap_or(true),
            ip,
            failure_cost,
            client_failures: failures(&r.client_failures, 20, &r.client_failures_window, 60)?,
            user_failures: failures(&r.user_failures, 10, &r.user_failures_window, 300)?,
            max_tracked: self.number(&r.max_tracked, 100_000)?,
        })
    }

    fn store(&self, raw: &raw::RawStore) -> Result<StoreConfig, ConfigError> {
        match raw.kind.as_ref().map(|k| (k.get_ref().as_str(), k.span())) {
            None | Some(("embedded", _)) => {
                if let Some(u) = &raw.url {
                    return Err(self.err(u.span(), "url is for kind = \"redis\""));
                }
                Ok(StoreConfig::Embedded { path: self.path(raw.path.as_deref().unwrap_or("data/portcullis.redb")) })
            }
            Some(("redis", span)) => {
                let url = raw
                    .url
                    .as_ref()
                    .ok_or_else(|| self.err(span.clone(), "a redis store needs url = \"redis://host:port\""))?;
                let parsed =
                    url::Url::parse(url.get_ref()).map_err(|e| self.err(url.span(), format!("bad redis url: {e}")))?;
                if !matches!(parsed.scheme(), "redis" | "rediss") || parsed.host_str().is_none() {
                    return Err(self.err(url.span(), "redis url must be redis://host[:port][/db] or rediss://..."));
                }
                Ok(StoreConfig::Redis {
                    url: url.get_ref().clone(),
                    key_prefix: raw.key_prefix.clone().unwrap_or_else(|| "portcullis:".to_string()),
                    pool_size: self.number(&raw.pool_size, 4)? as usize,
                    timeout: self.duration(&raw.timeout, Duration::from_secs(1))?,
                })
            }
            Some((other, span)) => {
                Err(self.err(span, format!("unknown store kind {other:?}: use \"embedded\" or \"redis\"")))
            }
        }
    }

    fn users(&self, raw: &[Spanned<RawUser>]) -> Result<HashMap<String, Arc<User>>, ConfigError> {
        let mut users = HashMap::new();
        for u in raw {
            let u = u.get_ref();
            let name = u.username.get_ref();
            if name.is_empty() || name.chars().any(|c| c.is_control()) || name.len() > 256 {
                return Err(self.err(u.username.span(), "username must be 1-256 printable characters"));
            }
            if users.contains_key(name) {
                return Err(self.err(u.username.span(), format!("duplicate user {name:?}")));
            }
            let password_hash = self.argon2id(&u.password_hash, "password_hash")?;
            let user = User {
                username: name.clone(),
                password_hash,
                display_name: u.display_name.clone().unwrap_or_else(|| name.clone()),
                enabled: u.enabled.unwrap_or(true),
            };
            users.insert(name.clone(), Arc::new(user));
        }
        Ok(users)
    }

    fn argon2id(&self, h: &Spanned<String>, field: &str) -> Result<String, ConfigError> {
        let parsed = argon2::PasswordHash::new(h.get_ref()).map_err(|e| {
            self.err(h.span(), format!("{field} is not a PHC string ({e}): make one with `portcullis hash-secret`"))
        })?;
        if parsed.algorithm.as_str() != "argon2id" {
            return Err(
                self.err(h.span(), format!("{field} must be an argon2id hash: make one with `portcullis hash-secret`"))
            );
        }
        Ok(h.get_ref().clone())
    }

    /// RFC 6749 §3.1.2: absolute, no fragment; plain http only for loopback (RFC 8252 §7.3).
    fn redirect_uri(&self, v: &Spanned<String>) -> Result<String, ConfigError> {
        let s = v.get_ref();
        let url = url::Url::parse(s).map_err(|e| self.err(v.span(), format!("bad redirect_uri {s:?}: {e}")))?;
        if url.fragment().is_some() {
            return Err(self.err(v.span(), format!("bad redirect_uri {s:?}: a fragment is not allowed")));
        }
        if url.scheme() == "http" && !matches!(url.host_str(), Some("localhost" | "127.0.0.1" | "[::1]")) {
            return Err(
                self.err(v.span(), format!("bad redirect_uri {s:?}: http is only allowed for loopback; use https"))
            );
        }
        Ok(s.clone())
    }

    /// An endpoint path: absolute, without query or fragment.
    fn endpoint(&self, v: &Option<Spanned<String>>, default: &str) -> Result<String, ConfigError> {
        match v {
            None => Ok(default.to_string()),
            Some(p) if !p.get_ref().starts_with('/') || p.get_ref().contains(['?', '#', ' ']) => {
                Err(self.err(p.span(), "endpoint paths start with '/' and have no query, fragment or spaces"))
            }
            Some(p) => Ok(p.get_ref().clone()),
        }
    }

    /// The admin listener: on 127.0.0.1:9901 unless moved or disabled; never shared
    /// with a gateway listener, since it is plaintext and unauthenticated.
    fn admin(&self, raw: Option<&Spanned<RawAdmin>>, listeners: &[Listener]) -> Result<Option<Admin>, ConfigError> {
        let default = SocketAddr::from(([127, 0, 0, 1], 9901));
        let Some(raw) = raw else { return Ok(Some(Admin { address: default, line: 0 })) };
        let a = raw.get_ref();
        if a.enabled == Some(false) {
            return Ok(None);
        }
        let Some(addr) = &a.address else {
            return Ok(Some(Admin { address: default, line: self.line_of(raw.span().start) }));
        };
        let line = self.line_of(addr.span().start);
        let address: SocketAddr = addr.get_ref().parse().map_err(|_| {
            self.err(
                addr.span(),
                format!("bad admin address {:?}: write ip:port, e.g. \"127.0.0.1:9901\"", addr.get_ref()),
            )
        })?;
        if address.port() != 0 && listeners.iter().any(|l| l.address == address) {
            return Err(self.err(addr.span(), "the admin address must differ from every [[listener]] address"));
        }
        Ok(Some(Admin { address, line }))
    }

    fn keys(&self, raw: &[Spanned<RawKey>]) -> Result<Vec<KeyConfig>, ConfigError> {
        if raw.is_empty() {
            return Err(self.err_at(1, "no [[key]]: at least one signing key is required"));
        }
        let mut keys: Vec<KeyConfig> = Vec::new();
        for k in raw {
            let span = k.span();
            let k = k.get_ref();
            let id = k.id.get_ref().trim();
            if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
                return Err(self.err(k.id.span(), format!("bad key id {id:?}: use letters, digits, '-', '_' or '.'")));
            }
            if keys.iter().any(|o| o.id == id) {
                return Err(self.err(k.id.span(), format!("duplicate key id {id:?}")));
            }
            let algorithm = match &k.algorithm {
                None => KeyAlgorithm::EdDSA,
                Some(a) => KeyAlgorithm::parse(a.get_ref()).ok_or_else(|| {
                    self.err(a.span(), format!("unknown algorithm {:?}: use EdDSA, ES256, RS256 or HS256", a.get_ref()))
                })?,
            };
            let generate = k.generate.unwrap_or(true);
            if generate && algorithm == KeyAlgorithm::RS256 && !self.path(k.file.get_ref()).exists() {
                return Err(self.err(span, "RS256 keys are not generated: create the PEM file (e.g. openssl genpkey -algorithm RSA) or set generate = false"));
            }
            keys.push(KeyConfig {
                id: id.to_string(),
                algorithm,
                file: self.path(k.file.get_ref()),
                active: k.active.unwrap_or(true),
                generate,
                line: self.line_of(k.id.span().start),
            });
        }
        if !keys.iter().any(|k| k.active) {
            return Err(
                self.err(raw[0].span(), "no active key: at least one [[key]] must have active = true to sign tokens")
            );
        }
        Ok(keys)
    }

    fn clients(
        &self,
        raw: &[Spanned<RawClient>],
        default_lifetime: Duration,
    ) -> Result<HashMap<String, Arc<Client>>, ConfigError> {
        let mut clients = HashMap::new();
        for c in raw {
            let span = c.span();
            let c = c.get_ref();
            let id = c.id.get_ref();
            if id.is_empty() || id.chars().any(|ch| ch.is_control()) {
                return Err(self.err(c.id.span(), "client id must be non-empty printable text"));
            }
            if clients.contains_key(id) {
                return Err(self.err(c.id.span(), format!("duplicate client id {id:?}")));
            }
            let secret_hash = c.secret_hash.as_ref().map(|h| self.argon2id(h, "secret_hash")).transpose()?;
            let mut grants = HashSet::new();
            let mut implicit = false;
            for g in &c.grants {
                if g.get_ref() == "implicit" {
                    implicit = true;
                    continue;
                }
                let grant = GrantType::parse(g.get_ref()).ok_or_else(|| {
                    self.err(g.span(), format!("unknown grant {:?}: use client_credentials, password, authorization_code, refresh_token or implicit", g.get_ref()))
                })?;
                if secret_hash.is_none() && matches!(grant, GrantType::ClientCredentials | GrantType::Password) {
                    return Err(self.err(
                        g.span(),
                        format!("grant {:?} needs a confidential client: set secret_hash", g.get_ref()),
                    ));
                }
                grants.insert(grant);
            }
            let scopes = self.scopes(&c.scopes)?;
            let default_scopes = match &c.default_scopes {
                None => scopes.clone(),
                Some(list) => {
                    let d = self.scopes(list)?;
                    if let Some(bad) = list.iter().find(|s| !scopes.contains(s.get_ref())) {
                        return Err(self.err(
                            bad.span(),
                            format!("default scope {:?} is not in the client's scopes", bad.get_ref()),
                        ));
                    }
                    d
                }
            };
            let user = match &c.user {
                Some(u) if u.get_ref().trim().is_empty() => return Err(self.err(u.span(), "user must not be empty")),
                Some(u) => Some(u.get_ref().clone()),
                None => None,
            };
            if user.as_deref() == Some(id.as_str()) {
                return Err(self.err(span, "a client's linked user must differ from its id"));
            }
            if c.refresh_on_client_credentials == Some(true) && !grants.contains(&GrantType::RefreshToken) {
                return Err(self.err(span, "refresh_on_client_credentials needs \"refresh_token\" in grants"));
            }
            let redirect_uris = c.redirect_uris.iter().map(|r| self.redirect_uri(r)).collect::<Result<Vec<_>, _>>()?;
            if redirect_uris.is_empty() && (implicit || grants.contains(&GrantType::AuthorizationCode)) {
                return Err(self.err(span, "authorization_code and implicit need at least one redirect_uris entry"));
            }
            let client = Client {
                id: id.clone(),
                name: c.name.clone().unwrap_or_else(|| id.clone()),
                secret_hash,
                grants,
                scopes,
                default_scopes,
                user,
                enabled: c.enabled.unwrap_or(true),
                token_lifetime: self.duration(&c.token_lifetime, default_lifetime)?,
                redirect_uris,
                first_party: c.first_party.unwrap_or(false),
                implicit,
                refresh_on_client_credentials: c.refresh_on_client_credentials.unwrap_or(false),
            };
            clients.insert(id.clone(), Arc::new(client));
        }
        Ok(clients)
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
        if r.public && !scopes.is_empty() {
            return Err(self.err(r.prefix.span(), "a public route cannot require scopes"));
        }
        Ok(Route {
            prefix,
            host,
            methods,
            upstream,
            scopes,
            public: r.public,
            strip_prefix: r.strip_prefix,
            forward_token: r.forward_token,
            pass_rewrite_headers: r.pass_rewrite_headers,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &str) -> Result<Config, ConfigError> {
        let text = format!(
            "issuer = \"https://auth.example\"\n[[listener]]\naddress = \"127.0.0.1:8443\"\ntls = false\n\
             [[key]]\nid = \"k\"\nfile = \"k.pem\"\n{extra}"
        );
        Config::parse(&text, Path::new("gw.toml"))
    }

    #[test]
    fn admin_defaults_to_loopback_and_can_move_or_be_disabled() {
        let a = parse("").unwrap().admin.unwrap();
        assert_eq!(a.address, "127.0.0.1:9901".parse().unwrap());
        let a = parse("[admin]\naddress = \"0.0.0.0:9000\"\n").unwrap().admin.unwrap();
        assert_eq!((a.address, a.line), ("0.0.0.0:9000".parse().unwrap(), 9));
        assert!(parse("[admin]\nenabled = false\n").unwrap().admin.is_none());
    }

    #[test]
    fn route_hosts_are_normalised_like_request_authorities() {
        let route =
            |host: &str| format!("[[route]]\nprefix = \"/a\"\nupstream = \"http://127.0.0.1:1\"\nhost = \"{host}\"\n");
        for (given, stored) in
            [("Internal.Example.COM.", "internal.example.com"), ("[0:0::1]", "[::1]"), ("svc_a", "svc_a")]
        {
            let c = parse(&route(given)).unwrap_or_else(|e| panic!("{given}: {e}"));
            assert_eq!(c.routes[0].host.as_deref(), Some(stored), "{given}");
        }
        for bad in ["a@b.example", "b.example:443", "b.example/x", "", " ", "b..example", "ex ample"] {
            let e = parse(&route(bad)).unwrap_err();
            assert!(e.reason.contains("bad route host"), "{bad}: {e}");
        }
        assert!(!parse("").unwrap().routes.iter().any(|r| r.pass_rewrite_headers));
    }

    #[test]
    fn admin_errors_carry_their_line() {
        let e = parse("[admin]\naddress = \"localhost\"\n").unwrap_err();
        assert_eq!((e.line, e.to_string().starts_with("gw.toml:9: bad admin address")), (9, true));
        let e = parse("[admin]\naddress = \"127.0.0.1:8443\"\n").unwrap_err();
        assert_eq!(e.line, 9);
        assert!(e.reason.contains("differ"), "{e}");
        assert_eq!(parse("[admin]\nport = 1\n").unwrap_err().line, 9);
    }

    #[test]
    fn endpoint_paths_default_validate_and_do_not_collide() {
        let c = parse("").unwrap();
        assert_eq!(c.metadata_path, "/.well-known/oauth-authorization-server");
        assert_eq!(c.jwks_path, "/.well-known/jwks.json");
        let e = parse("[endpoints]\njwks = \"keys\"\n").unwrap_err();
        assert_eq!(e.line, 9);
        let e = parse("[endpoints]\nmetadata = \"/x\"\njwks = \"/x\"\n").unwrap_err();
        assert_eq!(e.line, 10, "{e}");
        let e = parse("[endpoints]\ntoken = \"/.well-known/jwks.json\"\n").unwrap_err();
        assert_eq!(e.line, 9, "a default taken by another endpoint points at the one configured: {e}");
    }

    #[test]
    fn rate_limit_defaults_and_errors_carry_their_line() {
        let r = parse("").unwrap().rate_limit;
        assert!(r.enabled);
        assert_eq!(r.ip, Quota { burst: 60, refill_per_sec: 20.0 });
        assert_eq!(r.failure_cost, 5);
        assert_eq!(r.client_failures, Quota { burst: 20, refill_per_sec: 20.0 / 60.0 });
        assert_eq!(r.user_failures, Quota { burst: 10, refill_per_sec: 10.0 / 300.0 });
        let r = parse("[rate_limit]\nip_burst = 5\nip_rate = 1\nip_window = \"1m\"\nfailure_cost = 5\n").unwrap();
        assert_eq!(r.rate_limit.ip, Quota { burst: 5, refill_per_sec: 1.0 / 60.0 });
        assert!(!parse("[rate_limit]\nenabled = false\n").unwrap().rate_limit.enabled);

        let e = parse("[rate_limit]\nip_burst = 0\n").unwrap_err();
        assert_eq!((e.line, e.reason.as_str()), (9, "must be greater than zero"));
        let e = parse("[rate_limit]\nip_burst = 10\n\nfailure_cost = 11\n").unwrap_err();
        assert_eq!(e.line, 11, "{e}");
        assert!(e.reason.contains("must not exceed ip_burst"), "{e}");
        let e = parse("[rate_limit]\nuser_failures_window = \"soon\"\n").unwrap_err();
        assert_eq!(e.line, 9, "{e}");
        let e = parse("[rate_limit]\nclient_failures = 2000000\n").unwrap_err();
        assert_eq!((e.line, e.reason.as_str()), (9, "must be at most 1000000"));
        assert_eq!(parse("[rate_limit]\nper_ip = 1\n").unwrap_err().line, 9);
    }

    #[test]
    fn hsts_is_off_by_default_validated_and_refused_with_a_dev_certificate() {
        let tls = |extra: &str| format!("[tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\n{extra}");
        assert!(parse(&tls("")).unwrap().tls.unwrap().hsts.is_none());
        for ok in ["max-age=31536000; includeSubDomains", "max-age=0", "max-age=63072000; includeSubDomains; preload"] {
            let c = parse(&tls(&format!("hsts = {ok:?}\n"))).unwrap_or_else(|e| panic!("{ok}: {e}"));
            assert_eq!(c.tls.unwrap().hsts.unwrap(), ok);
        }
        for bad in
            ["", "includeSubDomains", "max-age=", "max-age=1y", "max-age=1; max-age=2", "max-age=1;", "max-age=1; nope"]
        {
            let e = parse(&tls(&format!("hsts = {bad:?}\n"))).unwrap_err();
            assert_eq!(e.line, 11, "{bad}: {e}");
            assert!(e.reason.starts_with("bad hsts"), "{bad}: {e}");
        }
        let e = parse(&tls("dev_certificate = true\nhsts = \"max-age=60\"\n")).unwrap_err();
        assert_eq!(e.line, 12, "{e}");
        assert!(e.reason.contains("dev_certificate"), "{e}");
    }

    #[test]
    fn keys_listeners_and_tls_remember_their_lines() {
        let c = parse("[[key]]\nid = \"k2\"\nfile = \"k2.pem\"\n").unwrap();
        assert_eq!(c.keys.iter().map(|k| k.line).collect::<Vec<_>>(), [6, 9]);
        assert_eq!(c.listeners[0].line, 3);
    }
}
