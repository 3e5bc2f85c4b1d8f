//! The validated configuration: what the gateway reads. Values here have passed
//! [`super::validate`]; where two settings must agree, the type says so (a client is
//! public or has a secret; a route is public or needs a token), so no reader re-checks.
//!
//! Fields are `pub(crate)`. The few that are `pub` are read by the integration tests
//! (`tests/`), which cannot use crate-private items.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, Method};
use ipnet::IpNet;

use super::route_table::RouteTable;

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

    /// Grants in which the client acts with its own credentials, so it must have a
    /// secret (RFC 6749 §4.3, §4.4); a public client is refused them at validation.
    pub(crate) fn needs_confidential_client(self) -> bool {
        matches!(self, Self::ClientCredentials | Self::Password)
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
    pub(crate) fn parse(s: &str) -> Option<Self> {
        match s {
            "EdDSA" => Some(Self::EdDSA),
            "ES256" => Some(Self::ES256),
            "RS256" => Some(Self::RS256),
            "HS256" => Some(Self::HS256),
            _ => None,
        }
    }

    /// The name as the config and JOSE write it, for the log.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::EdDSA => "EdDSA",
            Self::ES256 => "ES256",
            Self::RS256 => "RS256",
            Self::HS256 => "HS256",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Listener {
    pub(crate) address: SocketAddr,
    pub(crate) tls: bool,
    /// Where it is configured, for errors found after validation (e.g. on reload).
    pub(crate) line: usize,
}

/// `[tls] client_auth`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientAuthMode {
    /// No certificate is asked for.
    #[default]
    None,
    /// Asked for, not required; chained or self-signed.
    Optional,
    /// Every connection presents a certificate that chains to `client_ca`.
    Required,
}

#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// `pub`: the tests check that no generated file lands in a served directory.
    pub cert: PathBuf,
    /// `pub`: as `cert`.
    pub key: PathBuf,
    /// Generate a self-signed localhost certificate when the files are missing.
    pub(crate) dev_certificate: bool,
    /// Where `[tls]` is configured, for errors found when the files are loaded.
    pub(crate) line: usize,
    /// `Strict-Transport-Security` for every response on a TLS connection (never on a
    /// plaintext one); off unless configured, and refused with a dev certificate.
    pub(crate) hsts: Option<http::HeaderValue>,
    /// Client certificates asked for on the TLS listeners (RFC 8705).
    pub(crate) client_auth: ClientAuthMode,
    /// The PEM bundle of the CAs client certificates chain to; set unless `client_auth`
    /// is `none`.
    pub(crate) client_ca: Option<PathBuf>,
    /// Where `client_ca` is configured, for errors found when the bundle is loaded.
    pub(crate) client_ca_line: usize,
}

/// The admin listener (health, readiness, metrics, and the blocks API).
#[derive(Debug, Clone)]
pub struct Admin {
    pub(crate) address: SocketAddr,
    /// Where it is configured; 0 for the default.
    pub(crate) line: usize,
    /// The argon2id hash of the key the blocks API wants as `Authorization: Bearer`;
    /// `None`: the blocks API is off (403), whatever is presented.
    pub(crate) api_key_hash: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub(crate) max_header_bytes: usize,
    /// The largest response head accepted from an upstream; beyond it, 502.
    pub(crate) max_upstream_header_bytes: usize,
    pub(crate) max_token_body_bytes: usize,
    pub(crate) max_proxy_body_bytes: u64,
    /// A proxied urlencoded form is read whole (to take out `access_token`) up to this.
    pub(crate) max_proxy_form_bytes: usize,
    pub(crate) header_read_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) upstream_connect_timeout: Duration,
    /// `pub`: the fault tests check that a reload changed it.
    pub upstream_timeout: Duration,
    pub(crate) tls_handshake_timeout: Duration,
    pub(crate) shutdown_grace: Duration,
    /// After SIGTERM, how long /readyz answers 503 while the listeners still accept, so
    /// balancers notice before connections are refused (0: close at once).
    pub(crate) drain_delay: Duration,
    pub(crate) max_connections: usize,
}

/// A token bucket: `burst` units at once, then `refill_per_sec` units a second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quota {
    pub(crate) burst: u32,
    pub(crate) refill_per_sec: f64,
}

/// Whose requests one budget of a route quota counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaPer {
    /// The token's client (a trusted issuer's token without one: its subject).
    Client,
    /// The token's user; a token without one (client_credentials) counts as its client.
    User,
    /// The source address ([`crate::ratelimit::source_ip`]; IPv6 by /64).
    Ip,
}

impl QuotaPer {
    pub fn as_str(self) -> &'static str {
        match self {
            QuotaPer::Client => "client",
            QuotaPer::User => "user",
            QuotaPer::Ip => "ip",
        }
    }
}

/// A route's request quota, `quota = { per, rate, window, burst }` (issue 14): `burst`
/// requests at once, then `rate` per `window`, per client, user or source address.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteQuota {
    pub(crate) per: QuotaPer,
    pub(crate) rate: u32,
    /// Whole seconds (the `w` of `RateLimit-Policy` is).
    pub(crate) window: Duration,
    /// At least `rate`.
    pub(crate) burst: u32,
    /// Names the route's budgets (host, prefix, methods), so a reload that keeps the
    /// route keeps what its callers spent.
    pub(crate) id: String,
}

impl RouteQuota {
    /// As a token bucket.
    pub fn bucket(&self) -> Quota {
        Quota { burst: self.burst, refill_per_sec: f64::from(self.rate) / self.window.as_secs_f64() }
    }

    /// The `w` of `RateLimit-Policy`: whole seconds to refill the `burst` (= `window`
    /// when `burst` = `rate`), rounded up.
    pub fn policy_window_secs(&self) -> u64 {
        let secs = u64::from(self.burst) * self.window.as_secs();
        secs.div_ceil(u64::from(self.rate.max(1))).max(1)
    }
}

/// `[rate_limit]`: the token endpoint and the login form (see `crate::ratelimit`).
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimits {
    /// `false` turns every limit off.
    pub(crate) enabled: bool,
    /// Requests per source IP, per endpoint.
    pub(crate) ip: Quota,
    /// How many requests a failed authentication counts for in the per-IP bucket.
    pub(crate) failure_cost: u32,
    /// Failed secret verifications per client id.
    pub(crate) client_failures: Quota,
    /// Failed password verifications per username (login form and password grant).
    pub(crate) user_failures: Quota,
    /// Keys remembered per bucket kind; read at start only.
    pub(crate) max_tracked: u64,
}

#[derive(Debug, Clone)]
pub struct KeyConfig {
    pub(crate) id: String,
    pub(crate) algorithm: KeyAlgorithm,
    /// `pub`: the tests check that no key file lands in a served directory.
    pub file: PathBuf,
    /// Signing-capable; inactive keys only verify.
    pub(crate) active: bool,
    /// Create the key file on first start when it is missing. Never for RS256: the
    /// key loader refuses to generate one (validation reads no files).
    pub(crate) generate: bool,
    /// Where this `[[key]]` is configured, for errors found when the file is loaded.
    pub(crate) line: usize,
}

/// How a client proves who it is at the token endpoint.
#[derive(Clone, PartialEq, Eq)]
pub enum ClientAuth {
    /// No secret: identified, not authenticated. Validation allows it only
    /// authorization_code (with PKCE) and refresh_token.
    Public,
    /// Authenticates with a secret, checked against this argon2id PHC string.
    Confidential { secret_hash: String },
    /// Authenticates with a JWT signed by its private key (`private_key_jwt`, RFC 7523
    /// §2.2), verified with the public key this file holds (loaded with the runtime).
    PrivateKeyJwt(AssertionKey),
    /// `tls_client_auth` (RFC 8705 §2.1): a client certificate that chains to `client_ca`
    /// and carries this name.
    TlsClientAuth(TlsName),
    /// `self_signed_tls_client_auth` (RFC 8705 §2.2): a client certificate with one of
    /// these thumbprints (base64url SHA-256 of the DER), chained or not.
    SelfSignedTls { thumbprints: Vec<String> },
}

/// Where a `private_key_jwt` client's public key is, and how long its assertions may live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssertionKey {
    pub(crate) file: PathBuf,
    /// A JWK Set (`jwks_file`), else a PEM `PUBLIC KEY` (`public_key`).
    pub(crate) jwks: bool,
    /// The longest `exp - now` accepted: the replay memory keeps each `jti` that long.
    pub(crate) max_lifetime: Duration,
    /// Where the file is named, for errors found when it is loaded.
    pub(crate) line: usize,
}

/// The one name a `tls_client_auth` client's certificate must carry (RFC 8705 §2.1.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsName {
    /// The subject DN, canonical ([`crate::tls::dn`]).
    SubjectDn(String),
    /// A dNSName SAN, lower case.
    SanDns(String),
    SanUri(String),
    SanIp(std::net::IpAddr),
    SanEmail(String),
}

/// The hash stays out of logs and panics, like the secret it stands for.
impl std::fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientAuth::Public => f.write_str("Public"),
            ClientAuth::Confidential { .. } => f.write_str("Confidential"),
            ClientAuth::PrivateKeyJwt(k) => write!(f, "PrivateKeyJwt({})", k.file.display()),
            ClientAuth::TlsClientAuth(name) => write!(f, "TlsClientAuth({name:?})"),
            ClientAuth::SelfSignedTls { thumbprints } => write!(f, "SelfSignedTls({thumbprints:?})"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Client {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) auth: ClientAuth,
    pub(crate) grants: HashSet<GrantType>,
    pub(crate) scopes: Vec<String>,
    pub(crate) default_scopes: Vec<String>,
    pub(crate) user: Option<String>,
    /// `pub`: the reload tests wait for it to change.
    pub enabled: bool,
    /// `pub`: as `enabled`.
    pub token_lifetime: Duration,
    /// Registered redirect URIs, compared exactly (RFC 9700 §2.1).
    pub(crate) redirect_uris: Vec<String>,
    /// Skip the consent page (the operator's own applications).
    pub(crate) first_party: bool,
    /// May use `response_type=token` (listed as grant "implicit").
    pub(crate) implicit: bool,
    pub(crate) refresh_on_client_credentials: bool,
    /// Browser origins (`scheme://host[:port]`, lower case) that may call the token and
    /// revocation endpoints cross-origin.
    pub(crate) cors_origins: Vec<String>,
    /// Within this long after a rotation, the spent refresh token gets a sibling in its
    /// family instead of revoking it (concurrent or retried refreshes); zero: strict.
    pub(crate) refresh_reuse_interval: Duration,
    /// Rotate refresh tokens on use (RFC 9700 §4.14.2); only confidential clients may opt out.
    pub(crate) rotate_refresh_tokens: bool,
    /// May introspect every client's tokens (a resource server); others only their own.
    pub(crate) introspect: bool,
    /// A reload that changes `secret_hash` makes every token issued before it invalid.
    pub(crate) secret_rotation_revokes: bool,
    /// Every token issued to the client is bound to this kind of key.
    pub(crate) token_binding: Option<TokenBinding>,
}

/// What a client's tokens are bound to (`token_binding`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenBinding {
    /// The client certificate of the token request's connection (RFC 8705 §3).
    Mtls,
    /// The key of the token request's DPoP proof (RFC 9449).
    Dpop,
}

impl Client {
    /// A public client has no secret: it may only use authorization_code with PKCE and refresh_token.
    pub fn is_public(&self) -> bool {
        self.auth == ClientAuth::Public
    }
}

/// A resource owner who can log in at /authorize or use the password grant — or, without a
/// password, only be a client's linked user (a service identity that can never log in).
#[derive(Clone)]
pub struct User {
    pub(crate) username: String,
    /// `None`: linked-only; every login and password grant is refused like an unknown user.
    pub(crate) password_hash: Option<String>,
    pub(crate) display_name: String,
    pub(crate) enabled: bool,
}

/// The hash stays out of logs and panics.
impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User")
            .field("username", &self.username)
            .field("display_name", &self.display_name)
            .field("enabled", &self.enabled)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum StoreConfig {
    Embedded {
        path: PathBuf,
    },
    /// Shared by several replicas.
    Redis {
        /// The one server; for a cluster or Sentinel, the first node (what the summary shows).
        url: String,
        key_prefix: String,
        timeout: Duration,
        mode: RedisMode,
        /// PEM roots for `rediss://`; `None`: the system's roots.
        ca_file: Option<PathBuf>,
        /// Replicas that must hold a grant write (code taken, refresh stored or rotated,
        /// revocation) before it is answered; 0: answer on the primary's word.
        replica_acks: u32,
    },
}

/// How the Redis store reaches its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisMode {
    /// One server (`url`).
    Single,
    /// Redis Cluster: seed node URLs, all of one scheme.
    Cluster(Vec<String>),
    /// Redis Sentinel: the sentinels' URLs and the monitored master's name.
    Sentinel { nodes: Vec<String>, service_name: String },
}

/// Who may pass a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// Anyone: no token is read, and none is required.
    Public,
    /// A valid access token carrying every one of these scopes (none: any valid token).
    Scopes(Vec<String>),
}

#[derive(Debug, Clone)]
pub struct Route {
    /// Normalised: starts with `/`, no trailing `/` unless it is `/` itself.
    /// `pub`: the reload tests look for a new route by it.
    pub prefix: String,
    /// Lower-case host without port.
    pub(crate) host: Option<String>,
    pub(crate) methods: Option<Vec<Method>>,
    pub(crate) upstream: Upstream,
    pub(crate) access: Access,
    pub(crate) strip_prefix: bool,
    pub(crate) forward_token: bool,
    /// Keep the rewrite and method-override headers (`X-Original-URL`, `X-Rewrite-URL`,
    /// `X-HTTP-Method-Override`, `X-Method-Override`, `X-HTTP-Method`) from a trusted
    /// proxy. Off: they are removed whoever sends them.
    pub(crate) pass_rewrite_headers: bool,
    /// Proxy WebSocket handshakes (RFC 6455 upgrades, RFC 8441 extended CONNECT) and
    /// splice the connections; off, a WebSocket upgrade is refused (400).
    pub(crate) websocket: bool,
    /// Accept the token of a WebSocket handshake as the `access_token` query parameter
    /// (RFC 6750 §2.3): browsers cannot set `Authorization` on a WebSocket. Opt-in.
    pub(crate) websocket_query_token: bool,
    /// No byte either way for this long closes an upgraded connection (pings count);
    /// `None`: the listener's `idle_timeout`. See [`Route::websocket_idle`].
    pub(crate) websocket_idle_timeout: Option<Duration>,
    /// End an upgraded connection or a streamed response body once its token expires or
    /// is revoked, blocked, or its client or user disabled (default on).
    pub(crate) end_with_token: bool,
    /// The `aud` a token must carry here (RFC 8707 resource); `None`: the top-level audience.
    pub(crate) audience: Option<String>,
    /// Whose tokens pass: [`SELF_ISSUER`] and `[[trusted_issuer]]` names (default: ours only).
    pub(crate) issuers: Vec<String>,
    /// Claim values a token must carry here besides its scopes; all must hold.
    pub(crate) claims: Vec<ClaimRule>,
    /// A request quota, checked after authentication; `None`: the quota code is skipped.
    pub(crate) quota: Option<RouteQuota>,
}

impl Route {
    /// Does this route take tokens of the issuer called `name` ([`SELF_ISSUER`]: ours)?
    pub fn accepts(&self, name: &str) -> bool {
        self.issuers.iter().any(|i| i == name)
    }

    pub fn claim_rules(&self) -> &[ClaimRule] {
        &self.claims
    }

    /// How long an upgraded connection on this route may stay silent both ways.
    pub fn websocket_idle(&self, limits: &Limits) -> Duration {
        self.websocket_idle_timeout.unwrap_or(limits.idle_timeout)
    }
}

/// The name routes use for the gateway's own issuer in `issuers`.
pub const SELF_ISSUER: &str = "self";

/// One `[route.claims]` entry: a claim (a name, else a dotted path) and what it must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRule {
    pub claim: String,
    pub test: ClaimTest,
}

/// What a claim must hold. Values are compared as text (numbers and booleans as JSON writes them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimTest {
    /// A string claim equal to it, or an array claim that is exactly `[it]`.
    Equals(String),
    /// A string claim equal to one of them, or an array claim with an element among them.
    OneOf(Vec<String>),
    /// An array claim with it as an element, or a string claim with it as a space-separated word.
    Contains(String),
}

/// JWS algorithms a trusted issuer may be configured with (RFC 7518 §3.1, RFC 8037):
/// asymmetric only — `none` and the HMAC family (a shared secret) are never accepted
/// from an external issuer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JwsAlgorithm {
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
}

impl JwsAlgorithm {
    pub const ALL: [JwsAlgorithm; 9] = [
        Self::RS256,
        Self::RS384,
        Self::RS512,
        Self::PS256,
        Self::PS384,
        Self::PS512,
        Self::ES256,
        Self::ES384,
        Self::EdDSA,
    ];

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == s)
    }

    /// The JOSE name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RS256 => "RS256",
            Self::RS384 => "RS384",
            Self::RS512 => "RS512",
            Self::PS256 => "PS256",
            Self::PS384 => "PS384",
            Self::PS512 => "PS512",
            Self::ES256 => "ES256",
            Self::ES384 => "ES384",
            Self::EdDSA => "EdDSA",
        }
    }
}

/// Where a trusted issuer's keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    /// A configured `jwks_uri`.
    Uri(String),
    /// OpenID Connect discovery, then RFC 8414 metadata, under the issuer URL.
    Discovery,
}

/// How an introspection issuer (`kind = "introspection"`) is asked about its opaque
/// tokens (RFC 7662). Its `Debug` leaves the secret out.
#[derive(Clone, PartialEq, Eq)]
pub struct Introspection {
    /// `https://`, or `http://` on loopback.
    pub(crate) endpoint: String,
    pub(crate) client_id: String,
    pub(crate) client_secret: String,
    /// The longest an active answer is reused: how late a revocation at the IdP can show.
    pub(crate) max_cache: Duration,
    /// How long an inactive answer, or a failure, is reused.
    pub(crate) negative_cache: Duration,
}

impl std::fmt::Debug for Introspection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Introspection")
            .field("endpoint", &self.endpoint)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .field("max_cache", &self.max_cache)
            .field("negative_cache", &self.negative_cache)
            .finish()
    }
}

/// A `[[trusted_issuer]]`: an identity provider whose tokens routes may accept — JWTs
/// verified with its published keys, or (with `introspection`) opaque tokens it is asked about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedIssuer {
    /// What routes call it in `issuers`.
    pub name: String,
    /// The exact `iss` of its tokens.
    pub issuer: String,
    pub(crate) jwks: JwksSource,
    /// Never taken from the token.
    pub(crate) algorithms: Vec<JwsAlgorithm>,
    /// A token's `aud` must contain one of these.
    pub(crate) audiences: Vec<String>,
    pub(crate) leeway: Duration,
    pub(crate) subject_claim: String,
    /// `None`: `client_id`, else `azp`.
    pub(crate) client_id_claim: Option<String>,
    /// `None`: `scope` (a string), else `scp` (an array or a string).
    pub(crate) scope_claim: Option<String>,
    /// A PEM CA to trust for the IdP's TLS besides the system roots.
    pub(crate) ca: Option<PathBuf>,
    pub(crate) connect_timeout: Duration,
    /// The whole of one fetch: connect, headers and body.
    pub(crate) timeout: Duration,
    /// The bounds a `Cache-Control: max-age` is clamped to.
    pub(crate) refresh_min: Duration,
    pub(crate) refresh_max: Duration,
    /// At most one fetch for an unknown `kid` per this long.
    pub(crate) refetch_interval: Duration,
    pub(crate) max_jwks_bytes: usize,
    /// Set for `kind = "introspection"`: then the JWKS settings above are unused.
    pub(crate) introspection: Option<Introspection>,
    pub(crate) line: usize,
}

impl TrustedIssuer {
    /// Equal in everything but where it is written: a reload keeps its fetched keys.
    pub fn same_settings(&self, other: &TrustedIssuer) -> bool {
        let mut a = self.clone();
        a.line = other.line;
        a == *other
    }

    /// An issuer of opaque tokens, asked about each by introspection.
    pub fn is_introspection(&self) -> bool {
        self.introspection.is_some()
    }
}

#[derive(Debug, Clone)]
pub struct Upstream {
    /// `http` or `https`.
    pub(crate) scheme: http::uri::Scheme,
    pub(crate) authority: http::uri::Authority,
    /// Base path without trailing `/` (empty for none).
    pub(crate) base_path: String,
    /// `h2c://`: HTTP/2 with prior knowledge over cleartext (`scheme` is then `http`). An
    /// `https` upstream speaks what ALPN picks (h2 or http/1.1); an `http` one HTTP/1.1.
    pub(crate) h2c: bool,
    /// The `Host` every forwarded request carries: the authority without its scheme's
    /// default port. Made once here, not once per request.
    pub(crate) host: http::HeaderValue,
}

impl Upstream {
    pub(crate) fn new(
        scheme: http::uri::Scheme,
        authority: http::uri::Authority,
        base_path: String,
        h2c: bool,
    ) -> Upstream {
        let default_port = if scheme == http::uri::Scheme::HTTPS { 443 } else { 80 };
        let host = match authority.port_u16() {
            Some(port) if port == default_port => authority.host(),
            _ => authority.as_str(),
        };
        // An `Authority` is valid header text.
        let host = http::HeaderValue::from_str(host).unwrap_or_else(|_| http::HeaderValue::from_static("localhost"));
        Upstream { scheme, authority, base_path, h2c, host }
    }
}

#[derive(Debug, Clone)]
pub struct IdentityHeaders {
    pub(crate) client_id: HeaderName,
    pub(crate) subject: HeaderName,
    pub(crate) scope: HeaderName,
    pub(crate) token_id: HeaderName,
    pub(crate) user: HeaderName,
    /// The issuer URL of the token (ours or a trusted issuer's): with trusted issuers, a
    /// client or user named alike at two issuers is told apart only by it.
    pub(crate) issuer: HeaderName,
    /// What the token is bound to: `mtls`, `dpop` or `none` (sender-constrained tokens).
    pub(crate) binding: HeaderName,
    /// The client certificate thumbprint (`x5t#S256`) of a certificate-bound token.
    pub(crate) cert_thumbprint: HeaderName,
    /// Each of the names above on its ASCII letters and digits (the first 64 of them), as
    /// the proxy's header pass compares every request header to them: made once here,
    /// not once per header of every request.
    pub(crate) squeezed: Box<[Box<[u8]>]>,
}

impl IdentityHeaders {
    pub fn all(&self) -> [&HeaderName; 8] {
        [
            &self.client_id,
            &self.subject,
            &self.scope,
            &self.token_id,
            &self.user,
            &self.issuer,
            &self.binding,
            &self.cert_thumbprint,
        ]
    }

    /// [`IdentityHeaders::squeezed`] made from the names.
    pub(crate) fn squeeze(&mut self) {
        self.squeezed = self.all().iter().map(|n| crate::text::squeezed_name(n.as_str().as_bytes())).collect();
    }
}

/// `[dpop]` (RFC 9449): the proofs accepted at the token endpoint and on the proxy path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DpopSettings {
    /// Asymmetric only; the proof's `alg` must be one of them.
    pub(crate) algorithms: Vec<JwsAlgorithm>,
    /// A proof's `iat` may be this far from now, either way; its `jti` is remembered as long.
    pub(crate) iat_window: Duration,
    /// Require a server nonce in every proof (RFC 9449 §8, §9).
    pub(crate) nonce: bool,
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub(crate) source: PathBuf,
    pub(crate) issuer: String,
    pub(crate) audience: String,
    pub(crate) realm: String,
    pub(crate) token_lifetime: Duration,
    pub(crate) refresh_token_lifetime: Duration,
    pub(crate) session_lifetime: Duration,
    pub(crate) listeners: Vec<Listener>,
    /// `pub`: read by the tests (generated files must not be served).
    pub tls: Option<TlsFiles>,
    /// `pub`: read by the fault tests after a reload.
    pub limits: Limits,
    pub(crate) token_path: String,
    pub(crate) authorize_path: String,
    /// RFC 7009 token revocation.
    pub(crate) revoke_path: String,
    /// RFC 7662 token introspection.
    pub(crate) introspect_path: String,
    /// RFC 8414 authorization server metadata.
    pub(crate) metadata_path: String,
    /// The public signing keys (RFC 7517 JWK Set).
    pub(crate) jwks_path: String,
    /// Plaintext listener for health, readiness and metrics; `None` when disabled.
    pub(crate) admin: Option<Admin>,
    pub(crate) trusted_proxies: Vec<IpNet>,
    pub(crate) upstream_ca: Option<PathBuf>,
    pub(crate) upstream_ca_line: usize,
    pub(crate) headers: IdentityHeaders,
    pub(crate) cache_max_tokens: u64,
    pub(crate) cache_max_client_secrets: u64,
    /// `pub`: read by the tests (key files must not be served).
    pub keys: Vec<KeyConfig>,
    /// `pub`: the reload tests watch clients change.
    pub clients: HashMap<String, Arc<Client>>,
    /// Sorted longest prefix first, so the first match is the longest; indexed for the
    /// proxy's lookup ([`RouteTable::find`]). `pub`: the reload tests watch routes change.
    pub routes: RouteTable<Route>,
    pub(crate) users: HashMap<String, Arc<User>>,
    /// `[[trusted_issuer]]`, in file order.
    pub trusted_issuers: Vec<Arc<TrustedIssuer>>,
    /// Every claim some route's rules name, sorted and once each: only these are kept
    /// in a cached verdict.
    pub(crate) rule_claims: Vec<String>,
    /// `pub`: read by the tests (the store file must not be served).
    pub store: StoreConfig,
    /// Where `[store]` (its `path`, if given) is configured; 0 for the default.
    pub(crate) store_line: usize,
    pub(crate) store_sweep_interval: Duration,
    pub(crate) rate_limit: RateLimits,
    /// `[dpop]`: how DPoP proofs are checked.
    pub(crate) dpop: DpopSettings,
    /// What validation accepted but doubts (see [`super::ConfigWarning`]).
    pub(crate) warnings: Vec<super::ConfigWarning>,
}

impl Config {
    pub fn is_trusted_proxy(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        self.trusted_proxies.iter().any(|net| net.contains(&ip))
    }

    /// The file this configuration was read from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// The `iss` of every token issued, and the one accepted.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The issuer's path without its trailing `/` (`/tenant1` for `https://host/tenant1/`),
    /// empty for none: the OAuth endpoints are served under it too (RFC 8414 §3.1).
    /// Validation refused an issuer with a query or fragment, so all after the host is path.
    pub fn issuer_path(&self) -> &str {
        issuer_path_of(&self.issuer)
    }

    /// Every path the gateway answers itself, with the `[endpoints]` key that serves it,
    /// in the order dispatch tries them: the configured paths, then (with an issuer path)
    /// the same under it, then the metadata at the path-inserted well-known URL (RFC 8414
    /// §3.1). Validation refused a path served by two endpoints, so each path has one.
    pub fn served_paths(&self) -> Vec<(&'static str, String)> {
        let plain = [
            ("token", &self.token_path),
            ("authorize", &self.authorize_path),
            ("revoke", &self.revoke_path),
            ("introspect", &self.introspect_path),
            ("metadata", &self.metadata_path),
            ("jwks", &self.jwks_path),
        ];
        let mut out: Vec<(&'static str, String)> = plain.iter().map(|(k, p)| (*k, p.to_string())).collect();
        let prefix = self.issuer_path();
        if !prefix.is_empty() {
            out.extend(plain.iter().map(|(k, p)| (*k, format!("{prefix}{p}"))));
            out.push(("metadata", format!("{}{prefix}", self.metadata_path)));
        }
        out
    }

    /// The `aud` of every token issued, and the one accepted.
    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// The `aud` a token must carry on `route`: its own audience, else the default.
    pub fn route_audience<'a>(&'a self, route: &'a Route) -> &'a str {
        route.audience.as_deref().unwrap_or(&self.audience)
    }

    /// Every audience a token may be issued for: the default, then each route's, once.
    pub fn audiences(&self) -> Vec<&str> {
        let mut out = vec![self.audience.as_str()];
        for a in self.routes.iter().filter_map(|r| r.audience.as_deref()) {
            if !out.contains(&a) {
                out.push(a);
            }
        }
        out
    }

    /// The claims route rules name (see [`Config::rule_claims`]).
    pub fn rule_claims(&self) -> &[String] {
        &self.rule_claims
    }

    /// The DPoP proof algorithms, space-separated: the `algs` of a DPoP challenge.
    pub fn dpop_algs(&self) -> String {
        self.dpop.algorithms.iter().map(|a| a.as_str()).collect::<Vec<_>>().join(" ")
    }

    /// How many validated tokens the verdict cache holds; read at start.
    pub fn cache_max_tokens(&self) -> u64 {
        self.cache_max_tokens
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

/// The path of `issuer` without its trailing `/`, empty for none (see [`Config::issuer_path`]).
pub(crate) fn issuer_path_of(issuer: &str) -> &str {
    // Read on every request (dispatch): a byte scan, not a substring searcher's set-up.
    let after_scheme = issuer.as_bytes().windows(3).position(|w| w == b"://").map_or("", |i| &issuer[i + 3..]);
    after_scheme.find('/').map_or("", |i| after_scheme[i..].trim_end_matches('/'))
}

/// RFC 9728 §3.1: protected-resource metadata is served under this well-known prefix
/// (by audience and host, so no endpoint path may fall under it).
pub const RESOURCE_METADATA_PATH: &str = "/.well-known/oauth-protected-resource";
