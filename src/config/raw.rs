//! The TOML schema exactly as an operator writes it. Nothing here is trusted:
//! `super::validate` turns it into a [`super::Config`] or a `file:line` error.

use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub issuer: Spanned<String>,
    pub audience: Option<Spanned<String>>,
    pub realm: Option<String>,
    pub token_lifetime: Option<Spanned<String>>,
    pub refresh_token_lifetime: Option<Spanned<String>>,
    pub session_lifetime: Option<Spanned<String>>,
    #[serde(default, rename = "listener")]
    pub listeners: Vec<Spanned<RawListener>>,
    pub tls: Option<Spanned<RawTls>>,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub endpoints: RawEndpoints,
    pub admin: Option<Spanned<RawAdmin>>,
    #[serde(default)]
    pub proxy: RawProxy,
    #[serde(default)]
    pub cache: RawCache,
    #[serde(default, rename = "key")]
    pub keys: Vec<Spanned<RawKey>>,
    #[serde(default, rename = "client")]
    pub clients: Vec<Spanned<RawClient>>,
    #[serde(default, rename = "route")]
    pub routes: Vec<Spanned<RawRoute>>,
    #[serde(default, rename = "user")]
    pub users: Vec<Spanned<RawUser>>,
    /// `[[trusted_issuer]]`: external identity providers whose JWTs routes may accept
    /// (`[[issuer]]` cannot be used: TOML keeps `issuer` for our own issuer's URL).
    #[serde(default, rename = "trusted_issuer")]
    pub trusted_issuers: Vec<Spanned<RawTrustedIssuer>>,
    pub store: Option<Spanned<RawStore>>,
    #[serde(default)]
    pub rate_limit: RawRateLimit,
    #[serde(default)]
    pub dpop: RawDpop,
}

/// `[dpop]`: how DPoP proofs (RFC 9449) are checked.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDpop {
    pub algorithms: Option<Vec<Spanned<String>>>,
    pub iat_window: Option<Spanned<String>>,
    pub nonce: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    pub enabled: Option<bool>,
    pub ip_burst: Option<Spanned<u64>>,
    pub ip_rate: Option<Spanned<u64>>,
    pub ip_window: Option<Spanned<String>>,
    pub failure_cost: Option<Spanned<u64>>,
    pub client_failures: Option<Spanned<u64>>,
    pub client_failures_window: Option<Spanned<String>>,
    pub user_failures: Option<Spanned<u64>>,
    pub user_failures_window: Option<Spanned<String>>,
    pub max_tracked: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUser {
    pub username: Spanned<String>,
    pub password_hash: Option<Spanned<String>>,
    pub display_name: Option<String>,
    pub enabled: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    pub kind: Option<Spanned<String>>,
    pub path: Option<Spanned<String>>,
    pub sweep_interval: Option<Spanned<String>>,
    pub url: Option<Spanned<String>>,
    pub key_prefix: Option<String>,
    pub pool_size: Option<Spanned<u64>>,
    pub timeout: Option<Spanned<String>>,
    /// Redis Cluster seed nodes, instead of `url`.
    pub cluster: Option<Spanned<Vec<Spanned<String>>>>,
    /// Redis Sentinel nodes, instead of `url`; with `service_name`.
    pub sentinel: Option<Spanned<Vec<Spanned<String>>>>,
    pub service_name: Option<Spanned<String>>,
    /// PEM roots that a `rediss://` server's certificate must chain to.
    pub ca_file: Option<Spanned<String>>,
    /// Replicas that must acknowledge a grant write (`WAIT`) before it is answered.
    pub replica_acks: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    pub address: Spanned<String>,
    pub tls: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert: String,
    pub key: String,
    #[serde(default)]
    pub dev_certificate: bool,
    /// The Strict-Transport-Security value sent on TLS connections (off when absent).
    pub hsts: Option<Spanned<String>>,
    /// `none` (default), `optional` or `required`: client certificates (RFC 8705).
    pub client_auth: Option<Spanned<String>>,
    /// The PEM bundle of CAs client certificates chain to.
    pub client_ca: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub max_header_bytes: Option<Spanned<u64>>,
    pub max_upstream_header_bytes: Option<Spanned<u64>>,
    pub max_token_body_bytes: Option<Spanned<u64>>,
    pub max_proxy_body_bytes: Option<Spanned<u64>>,
    pub max_proxy_form_bytes: Option<Spanned<u64>>,
    pub header_read_timeout: Option<Spanned<String>>,
    pub idle_timeout: Option<Spanned<String>>,
    pub upstream_connect_timeout: Option<Spanned<String>>,
    pub upstream_timeout: Option<Spanned<String>>,
    pub tls_handshake_timeout: Option<Spanned<String>>,
    pub shutdown_grace: Option<Spanned<String>>,
    pub drain_delay: Option<Spanned<String>>,
    pub max_connections: Option<Spanned<u64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEndpoints {
    pub token: Option<Spanned<String>>,
    pub authorize: Option<Spanned<String>>,
    pub revoke: Option<Spanned<String>>,
    pub introspect: Option<Spanned<String>>,
    pub metadata: Option<Spanned<String>>,
    pub jwks: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub address: Option<Spanned<String>>,
    pub enabled: Option<bool>,
    pub api_key_hash: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProxy {
    #[serde(default)]
    pub trusted_proxies: Vec<Spanned<String>>,
    pub upstream_ca: Option<Spanned<String>>,
    #[serde(default)]
    pub headers: RawHeaders,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHeaders {
    pub client_id: Option<Spanned<String>>,
    pub subject: Option<Spanned<String>>,
    pub scope: Option<Spanned<String>>,
    pub token_id: Option<Spanned<String>>,
    pub user: Option<Spanned<String>>,
    pub issuer: Option<Spanned<String>>,
    /// The kind of key the token is bound to: `mtls`, `dpop` or `none`.
    pub binding: Option<Spanned<String>>,
    /// The `x5t#S256` of a certificate-bound token's client certificate.
    pub cert_thumbprint: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCache {
    pub max_tokens: Option<Spanned<u64>>,
    pub max_client_secrets: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKey {
    pub id: Spanned<String>,
    pub algorithm: Option<Spanned<String>>,
    pub file: Spanned<String>,
    pub active: Option<bool>,
    pub generate: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClient {
    pub id: Spanned<String>,
    pub name: Option<String>,
    pub secret_hash: Option<Spanned<String>>,
    #[serde(default)]
    pub grants: Vec<Spanned<String>>,
    #[serde(default)]
    pub scopes: Vec<Spanned<String>>,
    pub default_scopes: Option<Vec<Spanned<String>>>,
    pub user: Option<Spanned<String>>,
    pub enabled: Option<bool>,
    pub token_lifetime: Option<Spanned<String>>,
    #[serde(default)]
    pub redirect_uris: Vec<Spanned<String>>,
    pub first_party: Option<bool>,
    pub refresh_on_client_credentials: Option<bool>,
    /// Browser origins allowed to call the token and revocation endpoints (CORS).
    #[serde(default)]
    pub cors_origins: Vec<Spanned<String>>,
    /// How long a rotated refresh token may be presented again ("0s": never).
    pub refresh_reuse_interval: Option<Spanned<String>>,
    /// `false`: the refresh token is not rotated (confidential clients only).
    pub rotate_refresh_tokens: Option<Spanned<bool>>,
    /// A resource server: may introspect tokens of every client.
    pub introspect: Option<bool>,
    /// A changed `secret_hash` revokes the client's tokens issued before the change.
    pub secret_rotation_revokes: Option<bool>,
    /// `private_key_jwt`: the client's public keys as a JWK Set file.
    pub jwks_file: Option<Spanned<String>>,
    /// `private_key_jwt`: the client's public key as a PEM file.
    pub public_key: Option<Spanned<String>>,
    /// `private_key_jwt`: the longest lifetime (`exp` - now) of an assertion.
    pub max_assertion_lifetime: Option<Spanned<String>>,
    /// `"mtls"` or `"dpop"`: the client's tokens are sender-constrained (RFC 8705 §3,
    /// RFC 9449).
    pub token_binding: Option<Spanned<String>>,
    /// RFC 8414/7591 name of how the client authenticates: `client_secret_basic`,
    /// `client_secret_post`, `none`, `tls_client_auth`, `self_signed_tls_client_auth`,
    /// `private_key_jwt`.
    pub token_endpoint_auth_method: Option<Spanned<String>>,
    /// `tls_client_auth` (RFC 8705 §2.1.2): exactly one of these.
    pub tls_client_auth_subject_dn: Option<Spanned<String>>,
    pub tls_client_auth_san_dns: Option<Spanned<String>>,
    pub tls_client_auth_san_uri: Option<Spanned<String>>,
    pub tls_client_auth_san_ip: Option<Spanned<String>>,
    pub tls_client_auth_san_email: Option<Spanned<String>>,
    /// `self_signed_tls_client_auth` (RFC 8705 §2.2): the certificate (a PEM file) or its
    /// SHA-256 thumbprint (base64url), one or both.
    pub certificate: Option<Spanned<String>>,
    pub certificate_thumbprint: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub prefix: Spanned<String>,
    pub host: Option<Spanned<String>>,
    pub methods: Option<Vec<Spanned<String>>>,
    pub upstream: Spanned<String>,
    #[serde(default)]
    pub scopes: Vec<Spanned<String>>,
    #[serde(default)]
    pub public: bool,
    #[serde(default)]
    pub strip_prefix: bool,
    #[serde(default)]
    pub forward_token: bool,
    #[serde(default)]
    pub pass_rewrite_headers: bool,
    /// WebSocket handshakes (RFC 6455, RFC 8441) are proxied and their connections spliced.
    #[serde(default)]
    pub websocket: bool,
    /// A WebSocket handshake may carry its token as the `access_token` query parameter.
    #[serde(default)]
    pub websocket_query_token: bool,
    /// An upgraded connection with no byte either way for this long is closed; default the
    /// listener's `idle_timeout`.
    pub websocket_idle_timeout: Option<Spanned<String>>,
    /// Long connections (WebSocket, streamed bodies) end when their token stops being
    /// valid; default true.
    pub end_with_token: Option<bool>,
    /// The `aud` this route's tokens must carry (RFC 8707); the top-level `audience` when absent.
    pub audience: Option<Spanned<String>>,
    /// Whose tokens the route accepts: `"self"` and `[[trusted_issuer]]` names.
    pub issuers: Option<Vec<Spanned<String>>>,
    /// Claim rules: claim name (or dotted path) → a value, or `{ one_of = [...] }`, or
    /// `{ contains = "..." }`. Checked by hand for clear messages.
    pub claims: Option<Spanned<toml::Table>>,
    /// A request quota: `{ per = "client" | "user" | "ip", rate, window, burst }`.
    pub quota: Option<Spanned<RawQuota>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawQuota {
    pub per: Spanned<String>,
    pub rate: Spanned<u64>,
    pub window: Option<Spanned<String>>,
    pub burst: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTrustedIssuer {
    pub name: Spanned<String>,
    pub issuer: Spanned<String>,
    /// `jwt` (the default) or `introspection`.
    pub kind: Option<Spanned<String>>,
    pub jwks_uri: Option<Spanned<String>>,
    pub algorithms: Option<Vec<Spanned<String>>>,
    /// One string or a list.
    pub audience: Option<Spanned<toml::Value>>,
    pub leeway: Option<Spanned<String>>,
    pub subject_claim: Option<Spanned<String>>,
    pub client_id_claim: Option<Spanned<String>>,
    pub scope_claim: Option<Spanned<String>>,
    pub ca: Option<Spanned<String>>,
    pub connect_timeout: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    pub refresh_min: Option<Spanned<String>>,
    pub refresh_max: Option<Spanned<String>>,
    pub refetch_interval: Option<Spanned<String>>,
    pub max_jwks_bytes: Option<Spanned<u64>>,
    /// `kind = "introspection"` (RFC 7662, opaque tokens): where and as whom to ask, and
    /// how long answers are reused.
    pub introspection_endpoint: Option<Spanned<String>>,
    pub client_id: Option<Spanned<String>>,
    pub client_secret: Option<Spanned<String>>,
    pub max_cache: Option<Spanned<String>>,
    pub negative_cache: Option<Spanned<String>>,
}
