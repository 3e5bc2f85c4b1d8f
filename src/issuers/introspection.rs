//! An RFC 7662 introspection client (issue 16.3), for identity providers whose access
//! tokens are opaque: the gateway asks the provider whether a token is active, as a
//! confidential client (`client_secret_basic`, both halves form-encoded first as RFC 6749
//! §2.3.1 asks), and remembers the answer for a bounded time.
//!
//! - **Cache**: keyed by the token's SHA-256, never the token. An active answer is kept
//!   until the token's `exp` or `max_cache`, whichever comes first, so a revocation at the
//!   provider shows here within `max_cache`; an inactive answer, and a failure, for
//!   `negative_cache` (a flood of one bad token, or of one token during an outage, costs
//!   one request per `negative_cache`). Bounded to `max_entries`.
//! - **Single flight**: concurrent lookups of one token share one request; at most
//!   `max_concurrent` requests are in flight (beyond that, [`IntrospectError::Busy`] at once),
//!   so a flood of distinct tokens cannot turn the gateway into a load generator.
//! - **Fail closed**: an answer is used only if it is `200`, JSON, within
//!   `max_response_bytes` and `timeout`, and a well-formed RFC 7662 object (`active` a
//!   boolean; every other known member, when present, of its type; no repeated member).
//!   An active answer is refused (as [`Inactive`]) when its `iss` differs from the expected
//!   issuer, when `audience` is configured and `aud` lacks it (or is absent), when it is
//!   expired or not yet valid (5 s leeway), or when it describes a refresh token.
//!
//! **An outage answers 401, not 503.** When the provider fails (5xx, timeout, HTML, a
//! huge body), the token can be shown neither good nor bad; the gateway refuses it with
//! `401 invalid_token` like any token it cannot verify. Issue 16 asks that a provider
//! fault never turn into a gateway 5xx, and RFC 6750 has no "cannot verify now" answer
//! that clients handle better: the caller retries (a client that fetches a new token
//! first costs the provider one more request). The outage is visible to the operator in
//! `portcullis_introspection_requests_total{outcome!~"active|inactive"}`, not to callers.
//!
//! **Wiring**: a `[[trusted_issuer]]` with `kind = "introspection"` builds one
//! [`IntrospectionClient`] when the config loads (kept across reloads that leave its
//! settings alone; see `super::IssuerSet::build`), with `issuer` as the required `iss`;
//! the validator checks the configured audiences itself. The validator asks it about a
//! bearer token that is not a JWT (or names this issuer) on a route accepting it;
//! [`Introspected::Active`] becomes the request's principal, on which the operator blocks
//! apply by (`iss`, `jti`) and (`iss`, `sub`); [`Introspected::Inactive`] and every error
//! are `401 invalid_token`. This cache is the only one: verdicts never enter the
//! validator's. `/metrics` appends [`render_metrics`].

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use moka::Expiry;
use moka::sync::Cache;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde::{Deserialize, Deserializer};
use tokio::sync::{OnceCell, Semaphore};

use crate::tokens::{LEEWAY_SECS, now_secs, sha256};

/// Tokens longer than this are not sent anywhere (the validator's own bound).
const MAX_TOKEN_LEN: usize = 8 * 1024;

/// How one introspection client talks to its provider and how long it trusts the answers.
/// Its `Debug` leaves the secret out.
#[derive(Clone)]
pub struct IntrospectionSettings {
    /// The provider's introspection endpoint: `https://`, or `http://` on loopback only.
    pub endpoint: String,
    pub client_id: String,
    pub client_secret: String,
    /// A PEM file of CA certificates trusted besides the platform's.
    pub ca_file: Option<PathBuf>,
    /// For the whole exchange: connect, request, and the answer's last byte.
    pub timeout: Duration,
    pub max_response_bytes: usize,
    /// The longest an active answer is reused (also bounded by the token's `exp`): the
    /// longest a revocation at the provider can go unnoticed. Zero: never reused.
    pub max_cache: Duration,
    /// How long an inactive answer, or a failure, is reused. Zero: never.
    pub negative_cache: Duration,
    /// Cached answers at most (least used forgotten first).
    pub max_entries: u64,
    /// Requests to the provider in flight at most.
    pub max_concurrent: usize,
    /// The `iss` an answer must carry when it carries one.
    pub issuer: Option<String>,
    /// When set, `aud` must be present and contain it.
    pub audience: Option<String>,
}

impl std::fmt::Debug for IntrospectionSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntrospectionSettings")
            .field("endpoint", &self.endpoint)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .field("ca_file", &self.ca_file)
            .field("timeout", &self.timeout)
            .field("max_response_bytes", &self.max_response_bytes)
            .field("max_cache", &self.max_cache)
            .field("negative_cache", &self.negative_cache)
            .field("max_entries", &self.max_entries)
            .field("max_concurrent", &self.max_concurrent)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish()
    }
}

impl IntrospectionSettings {
    /// Settings with the defaults: 5 s timeout, 64 KiB answers, active answers reused up
    /// to 60 s, inactive ones 5 s, 100,000 entries, 64 requests in flight.
    pub fn new(endpoint: &str, client_id: &str, client_secret: &str) -> IntrospectionSettings {
        IntrospectionSettings {
            endpoint: endpoint.to_string(),
            client_id: client_id.to_string(),
            client_secret: client_secret.to_string(),
            ca_file: None,
            timeout: Duration::from_secs(5),
            max_response_bytes: 64 * 1024,
            max_cache: Duration::from_secs(60),
            negative_cache: Duration::from_secs(5),
            max_entries: 100_000,
            max_concurrent: 64,
            issuer: None,
            audience: None,
        }
    }
}

/// Why settings cannot make a client.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("introspection endpoint {0:?}: {1}")]
    Endpoint(String, &'static str),
    #[error("introspection client_id and client_secret must not be empty")]
    Credentials,
    #[error("introspection ca_file {0}: {1}")]
    CaFile(String, String),
}

/// Why no answer could be used; the token is then refused like an invalid one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IntrospectError {
    #[error("the introspection endpoint did not answer in time")]
    Timeout,
    #[error("the introspection endpoint answered HTTP {0}")]
    Status(u16),
    #[error("the introspection answer is not JSON")]
    NotJson,
    #[error("the introspection answer is over the size limit")]
    TooLarge,
    #[error("the introspection answer is not a well-formed RFC 7662 object")]
    Malformed,
    #[error("the introspection endpoint is unreachable: {0}")]
    Transport(String),
    #[error("too many introspection requests in flight")]
    Busy,
}

/// Why a token is not active. Each is `401 invalid_token`; the reason is for logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inactive {
    /// The provider said `"active": false`.
    NotActive,
    Expired,
    NotYetValid,
    WrongIssuer,
    WrongAudience,
    /// The provider describes a refresh token, which is no bearer token.
    NotAccessToken,
    /// Empty or longer than 8 KiB: not sent to the provider.
    Unusable,
}

/// What the provider said about an active token (RFC 7662 §2.2), as checked.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ActiveToken {
    pub sub: Option<String>,
    pub client_id: Option<String>,
    /// Space-separated, as sent.
    pub scope: Option<String>,
    /// `aud` as a list, whether sent as a string or an array.
    pub aud: Vec<String>,
    pub iss: Option<String>,
    pub jti: Option<String>,
    pub username: Option<String>,
    pub exp: Option<u64>,
    /// The confirmation claim (RFC 8705 §3.2, RFC 9449 §6.2), as sent: the validator
    /// reads it strictly and enforces the binding.
    pub cnf: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Introspected {
    Active(Arc<ActiveToken>),
    Inactive(Inactive),
}

type Outcome = Result<Introspected, IntrospectError>;

/// One cached outcome and how long it is kept.
#[derive(Clone)]
struct Cached {
    outcome: Outcome,
    ttl: Duration,
}

struct PerEntry;

impl Expiry<[u8; 32], Cached> for PerEntry {
    fn expire_after_create(&self, _: &[u8; 32], v: &Cached, _: Instant) -> Option<Duration> {
        Some(v.ttl)
    }
}

/// Outcome labels of `portcullis_introspection_requests_total`, in counter order.
const OUTCOMES: [&str; 9] =
    ["active", "inactive", "timeout", "status", "not_json", "too_large", "malformed", "transport", "busy"];

/// Requests to the provider by outcome, cache hits, and lookups that joined one in flight.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IntrospectionStats {
    /// By the labels of [`OUTCOMES`].
    pub requests: [u64; 9],
    pub cache_hits: u64,
    pub joined: u64,
}

impl IntrospectionStats {
    /// Requests that ended with `outcome` (a label of `portcullis_introspection_requests_total`).
    pub fn requests(&self, outcome: &str) -> u64 {
        OUTCOMES.iter().position(|o| *o == outcome).map_or(0, |i| self.requests[i])
    }
}

#[derive(Default)]
struct Counters {
    requests: [AtomicU64; 9],
    cache_hits: AtomicU64,
    joined: AtomicU64,
}

/// Asks one provider's introspection endpoint; see the module documentation.
pub struct IntrospectionClient {
    settings: IntrospectionSettings,
    uri: http::Uri,
    authorization: HeaderValue,
    http: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    cache: Cache<[u8; 32], Cached>,
    inflight: Mutex<HashMap<[u8; 32], Arc<OnceCell<Outcome>>>>,
    permits: Semaphore,
    counters: Counters,
}

impl IntrospectionClient {
    pub fn new(settings: IntrospectionSettings) -> Result<IntrospectionClient, SettingsError> {
        let uri = endpoint_uri(&settings.endpoint)?;
        if settings.client_id.is_empty() || settings.client_secret.is_empty() {
            return Err(SettingsError::Credentials);
        }
        let mut roots = rustls::RootCertStore::empty();
        roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        if let Some(ca) = &settings.ca_file {
            let shown = ca.display().to_string();
            let certs = CertificateDer::pem_file_iter(ca)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| SettingsError::CaFile(shown.clone(), e.to_string()))?;
            if certs.is_empty() {
                return Err(SettingsError::CaFile(shown, "no certificate in the file".into()));
            }
            for cert in certs {
                roots.add(cert).map_err(|e| SettingsError::CaFile(shown.clone(), e.to_string()))?;
            }
        }
        crate::install_crypto_provider();
        let tls = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
        let mut connector = HttpConnector::new();
        connector.enforce_http(false);
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(settings.timeout));
        let https =
            HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http().enable_http1().wrap_connector(connector);
        let http = Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(60)).build(https);
        // RFC 6749 §2.3.1: each half form-encoded, then Basic.
        let form = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        let pair = format!("{}:{}", form(&settings.client_id), form(&settings.client_secret));
        let basic = base64::engine::general_purpose::STANDARD.encode(pair);
        let mut authorization =
            HeaderValue::from_str(&format!("Basic {basic}")).map_err(|_| SettingsError::Credentials)?;
        authorization.set_sensitive(true);
        let cache = Cache::builder().max_capacity(settings.max_entries).expire_after(PerEntry).build();
        let permits = Semaphore::new(settings.max_concurrent.max(1));
        Ok(IntrospectionClient {
            settings,
            uri,
            authorization,
            http,
            cache,
            inflight: Mutex::default(),
            permits,
            counters: Counters::default(),
        })
    }

    /// Is `token` active, according to the provider (or a cached answer)?
    pub async fn introspect(&self, token: &str) -> Result<Introspected, IntrospectError> {
        if token.is_empty() || token.len() > MAX_TOKEN_LEN {
            return Ok(Introspected::Inactive(Inactive::Unusable));
        }
        let digest = sha256(token.as_bytes());
        if let Some(hit) = self.cache.get(&digest) {
            self.counters.cache_hits.fetch_add(1, Ordering::Relaxed);
            return hit.outcome;
        }
        let cell = self.inflight.lock().unwrap_or_else(|e| e.into_inner()).entry(digest).or_default().clone();
        // Leaves the in-flight map however this lookup ends, a cancelled one too.
        let _leave = Leave { map: &self.inflight, digest, cell: cell.clone() };
        let mut asked = false;
        let outcome = cell
            .get_or_init(|| async {
                asked = true;
                // The lookup that went before may have finished between our miss and here.
                if let Some(hit) = self.cache.get(&digest) {
                    return hit.outcome;
                }
                let outcome = self.fetch(token).await;
                self.remember(digest, &outcome);
                outcome
            })
            .await
            .clone();
        if !asked {
            self.counters.joined.fetch_add(1, Ordering::Relaxed);
        }
        outcome
    }

    /// Lookups under way (distinct tokens).
    pub fn in_flight(&self) -> usize {
        self.inflight.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Counters for `/metrics`.
    pub fn stats(&self) -> IntrospectionStats {
        let c = &self.counters;
        IntrospectionStats {
            requests: std::array::from_fn(|i| c.requests[i].load(Ordering::Relaxed)),
            cache_hits: c.cache_hits.load(Ordering::Relaxed),
            joined: c.joined.load(Ordering::Relaxed),
        }
    }

    /// Keep an outcome for as long as the settings allow.
    fn remember(&self, digest: [u8; 32], outcome: &Outcome) {
        let ttl = match outcome {
            Ok(Introspected::Active(t)) => {
                let left = t.exp.map_or(u64::MAX, |exp| exp.saturating_sub(now_secs()));
                self.settings.max_cache.min(Duration::from_secs(left))
            }
            // Not the provider's doing: the next lookup may find a free slot.
            Err(IntrospectError::Busy) => Duration::ZERO,
            Ok(Introspected::Inactive(_)) | Err(_) => self.settings.negative_cache,
        };
        if !ttl.is_zero() {
            self.cache.insert(digest, Cached { outcome: outcome.clone(), ttl });
        }
    }

    /// One request to the provider, counted by outcome.
    async fn fetch(&self, token: &str) -> Outcome {
        let outcome = match self.permits.try_acquire() {
            Ok(_permit) => match tokio::time::timeout(self.settings.timeout, self.exchange(token)).await {
                Ok(outcome) => outcome,
                Err(_) => Err(IntrospectError::Timeout),
            },
            Err(_) => Err(IntrospectError::Busy),
        };
        let label = match &outcome {
            Ok(Introspected::Active(_)) => 0,
            Ok(Introspected::Inactive(_)) => 1,
            Err(IntrospectError::Timeout) => 2,
            Err(IntrospectError::Status(_)) => 3,
            Err(IntrospectError::NotJson) => 4,
            Err(IntrospectError::TooLarge) => 5,
            Err(IntrospectError::Malformed) => 6,
            Err(IntrospectError::Transport(_)) => 7,
            Err(IntrospectError::Busy) => 8,
        };
        self.counters.requests[label].fetch_add(1, Ordering::Relaxed);
        if let Err(e) = &outcome {
            tracing::warn!(endpoint = %self.uri, error = %e, "token introspection failed; the token is refused");
        }
        outcome
    }

    async fn exchange(&self, token: &str) -> Outcome {
        let body = form_urlencoded::Serializer::new(String::new())
            .append_pair("token", token)
            .append_pair("token_type_hint", "access_token")
            .finish();
        let req = Request::builder()
            .method(Method::POST)
            .uri(self.uri.clone())
            .header(header::AUTHORIZATION, self.authorization.clone())
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::ACCEPT, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| IntrospectError::Transport(e.to_string()))?;
        let resp = self.http.request(req).await.map_err(|e| IntrospectError::Transport(transport(&e)))?;
        if resp.status() != StatusCode::OK {
            return Err(IntrospectError::Status(resp.status().as_u16()));
        }
        let json = resp.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| {
            let media = v.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
            media == "application/json" || (media.starts_with("application/") && media.ends_with("+json"))
        });
        if !json {
            return Err(IntrospectError::NotJson);
        }
        let max = self.settings.max_response_bytes;
        let declared = resp.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max as u64) {
            return Err(IntrospectError::TooLarge);
        }
        let bytes = match Limited::new(resp.into_body(), max).collect().await {
            Ok(body) => body.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => return Err(IntrospectError::TooLarge),
            Err(e) => return Err(IntrospectError::Transport(e.to_string())),
        };
        judge(&self.settings, &bytes, now_secs())
    }
}

/// Removes a lookup's cell from the in-flight map when the lookup ends (also when its
/// caller went away mid-request), unless a newer lookup already replaced it: the map holds
/// only lookups under way.
struct Leave<'a> {
    map: &'a Mutex<HashMap<[u8; 32], Arc<OnceCell<Outcome>>>>,
    digest: [u8; 32],
    cell: Arc<OnceCell<Outcome>>,
}

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.get(&self.digest).is_some_and(|c| Arc::ptr_eq(c, &self.cell)) {
            map.remove(&self.digest);
        }
    }
}

/// A transport error with its causes (hyper's own message is only "client error (Connect)").
fn transport(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let _ = write!(out, ": {s}");
        source = s.source();
    }
    out
}

/// `https://`, or `http://` on a loopback address or `localhost`; no credentials or fragment.
fn endpoint_uri(endpoint: &str) -> Result<http::Uri, SettingsError> {
    let bad = |why| SettingsError::Endpoint(endpoint.to_string(), why);
    let url = url::Url::parse(endpoint).map_err(|_| bad("not an absolute URL"))?;
    if !url.username().is_empty() || url.password().is_some() || url.fragment().is_some() {
        return Err(bad("credentials and fragments are not allowed"));
    }
    let loopback = match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => return Err(bad("no host")),
    };
    match url.scheme() {
        "https" => {}
        "http" if loopback => {}
        "http" => return Err(bad("plain http is allowed on loopback only: the client secret would travel in clear")),
        _ => return Err(bad("the scheme must be https")),
    }
    url.as_str().parse().map_err(|_| bad("not a valid request URI"))
}

/// An RFC 7662 §2.2 answer. Unknown members are ignored (providers add their own); a
/// known one of the wrong type, or any member twice, fails the whole answer.
#[derive(Deserialize)]
struct Answer {
    active: bool,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    client_id: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    token_type: Option<String>,
    #[serde(default, deserialize_with = "numeric_date")]
    exp: Option<u64>,
    #[serde(default, deserialize_with = "numeric_date")]
    nbf: Option<u64>,
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    aud: Option<Audience>,
    #[serde(default)]
    iss: Option<String>,
    #[serde(default)]
    jti: Option<String>,
    /// Kept as sent, `null` included (which the validator refuses): see [`ActiveToken::cnf`].
    #[serde(default, deserialize_with = "present")]
    cnf: Option<serde_json::Value>,
}

/// A member that is present, whatever its value (serde reads `null` as absent otherwise).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<serde_json::Value>, D::Error> {
    serde::Deserialize::deserialize(d).map(Some)
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

/// RFC 7519 NumericDate: seconds, possibly fractional (rounded down); never negative.
fn numeric_date<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let n: Option<serde_json::Number> = Option::deserialize(d)?;
    let Some(n) = n else { return Ok(None) };
    if let Some(v) = n.as_u64() {
        return Ok(Some(v));
    }
    match n.as_f64() {
        Some(f) if (0.0..1.8e19).contains(&f) => Ok(Some(f as u64)),
        _ => Err(serde::de::Error::custom("not a NumericDate")),
    }
}

/// Objects and arrays nested deeper than this, in a token payload or an introspection
/// answer, are refused: no claim a rule reads lies that deep, and a bound keeps a hostile
/// document from costing more than its bytes.
pub(crate) const MAX_JSON_DEPTH: usize = 32;

/// `bytes` as one JSON object in which no object, at any depth, names a member twice, and
/// nothing nests deeper than [`MAX_JSON_DEPTH`]; else `None`. A member given twice
/// (`{"org":{"team":"blue","team":"red"}}`) means one thing to a parser that keeps the
/// first and another to one that keeps the last: such a document is refused, not read
/// either way. One pass; each object's names are checked in its own map (no quadratic
/// cost). Names are compared decoded (`"a"` and `"\u0061"` are the same name).
pub(crate) fn unique_object(bytes: &[u8]) -> Option<serde_json::Map<String, serde_json::Value>> {
    use serde::de::DeserializeSeed;
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = Unique(MAX_JSON_DEPTH).deserialize(&mut de).ok()?;
    de.end().ok()?;
    match value {
        serde_json::Value::Object(m) => Some(m),
        _ => None,
    }
}

/// A JSON value with unique member names at every depth; the `usize` is how many more
/// levels of objects or arrays may open.
struct Unique(usize);

impl<'de> serde::de::DeserializeSeed<'de> for Unique {
    type Value = serde_json::Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<serde_json::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Unique {
    type Value = serde_json::Value;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value with unique member names")
    }
    fn visit_bool<E>(self, b: bool) -> Result<serde_json::Value, E> {
        Ok(b.into())
    }
    fn visit_i64<E>(self, n: i64) -> Result<serde_json::Value, E> {
        Ok(n.into())
    }
    fn visit_u64<E>(self, n: u64) -> Result<serde_json::Value, E> {
        Ok(n.into())
    }
    fn visit_f64<E: serde::de::Error>(self, n: f64) -> Result<serde_json::Value, E> {
        serde_json::Number::from_f64(n).map(serde_json::Value::Number).ok_or_else(|| E::custom("not a finite number"))
    }
    fn visit_str<E>(self, s: &str) -> Result<serde_json::Value, E> {
        Ok(s.into())
    }
    fn visit_string<E>(self, s: String) -> Result<serde_json::Value, E> {
        Ok(s.into())
    }
    fn visit_unit<E>(self) -> Result<serde_json::Value, E> {
        Ok(serde_json::Value::Null)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<serde_json::Value, A::Error> {
        let inner = self.0.checked_sub(1).ok_or_else(|| serde::de::Error::custom("nested too deep"))?;
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(Unique(inner))? {
            out.push(v);
        }
        Ok(serde_json::Value::Array(out))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<serde_json::Value, A::Error> {
        let inner = self.0.checked_sub(1).ok_or_else(|| serde::de::Error::custom("nested too deep"))?;
        let mut out = serde_json::Map::new();
        while let Some(name) = map.next_key::<String>()? {
            if out.contains_key(&name) {
                return Err(serde::de::Error::custom("a member is named twice"));
            }
            let v = map.next_value_seed(Unique(inner))?;
            out.insert(name, v);
        }
        Ok(serde_json::Value::Object(out))
    }
}

/// What an answer means for the token at `now`.
fn judge(settings: &IntrospectionSettings, body: &[u8], now: u64) -> Outcome {
    // serde's derive would also read a struct from an array (`[true]`): only an object is one.
    if body.trim_ascii_start().first() != Some(&b'{') {
        return Err(IntrospectError::Malformed);
    }
    // No member twice at any depth (in providers' own members too), nothing too deep.
    let members = unique_object(body).ok_or(IntrospectError::Malformed)?;
    let a: Answer =
        serde_json::from_value(serde_json::Value::Object(members)).map_err(|_| IntrospectError::Malformed)?;
    if !a.active {
        return Ok(Introspected::Inactive(Inactive::NotActive));
    }
    if a.token_type.as_deref().is_some_and(|t| t.eq_ignore_ascii_case("refresh_token")) {
        return Ok(Introspected::Inactive(Inactive::NotAccessToken));
    }
    if let (Some(want), Some(got)) = (&settings.issuer, &a.iss)
        && want != got
    {
        return Ok(Introspected::Inactive(Inactive::WrongIssuer));
    }
    let aud = match a.aud {
        None => Vec::new(),
        Some(Audience::One(one)) => vec![one],
        Some(Audience::Many(many)) => many,
    };
    if let Some(want) = &settings.audience
        && !aud.contains(want)
    {
        return Ok(Introspected::Inactive(Inactive::WrongAudience));
    }
    if a.exp.is_some_and(|exp| exp.saturating_add(LEEWAY_SECS) <= now) {
        return Ok(Introspected::Inactive(Inactive::Expired));
    }
    if a.nbf.is_some_and(|nbf| nbf > now.saturating_add(LEEWAY_SECS)) {
        return Ok(Introspected::Inactive(Inactive::NotYetValid));
    }
    Ok(Introspected::Active(Arc::new(ActiveToken {
        sub: a.sub,
        client_id: a.client_id,
        scope: a.scope,
        aud,
        iss: a.iss,
        jti: a.jti,
        username: a.username,
        exp: a.exp,
        cnf: a.cnf,
    })))
}

/// The introspection series for `/metrics`, one label set per provider (`issuer`).
pub fn render_metrics(out: &mut String, clients: &[(&str, IntrospectionStats)]) {
    let escape = |v: &str| v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
    let _ = writeln!(
        out,
        "# HELP portcullis_introspection_requests_total Token introspection requests to identity providers, by issuer and outcome.\n# TYPE portcullis_introspection_requests_total counter"
    );
    for (issuer, s) in clients {
        for (label, n) in OUTCOMES.iter().zip(s.requests) {
            let _ = writeln!(
                out,
                "portcullis_introspection_requests_total{{issuer=\"{}\",outcome=\"{label}\"}} {n}",
                escape(issuer)
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP portcullis_introspection_cache_hits_total Token introspections answered from the cache, by issuer.\n# TYPE portcullis_introspection_cache_hits_total counter"
    );
    for (issuer, s) in clients {
        let _ = writeln!(
            out,
            "portcullis_introspection_cache_hits_total{{issuer=\"{}\"}} {}",
            escape(issuer),
            s.cache_hits
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> IntrospectionSettings {
        IntrospectionSettings::new("https://idp.example/introspect", "rs", "s")
    }

    #[test]
    fn endpoints_are_https_or_loopback_http() {
        for good in ["https://idp.example/i", "http://127.0.0.1:9/i", "http://[::1]/i", "http://localhost:8/i"] {
            assert!(endpoint_uri(good).is_ok(), "{good}");
        }
        for bad in [
            "http://idp.example/i",
            "http://127.0.0.1.evil.example/i",
            "ftp://idp.example/i",
            "https://u:p@idp.example/i",
            "https://idp.example/i#x",
            "/introspect",
            "",
        ] {
            assert!(endpoint_uri(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn answers_are_judged_strictly() {
        let s =
            IntrospectionSettings { issuer: Some("https://idp".into()), audience: Some("api".into()), ..settings() };
        let now = 1_000_000;
        let judge = |body: &str| judge(&s, body.as_bytes(), now);
        let active = judge(r#"{"active":true,"sub":"a","aud":["x","api"],"exp":1000100,"iss":"https://idp","x":{}}"#);
        match active {
            Ok(Introspected::Active(t)) => {
                assert_eq!((t.sub.as_deref(), t.exp, t.aud.len()), (Some("a"), Some(1_000_100), 2));
            }
            other => panic!("{other:?}"),
        }
        let inactive = |r: &str| match judge(r) {
            Ok(Introspected::Inactive(why)) => Some(why),
            _ => None,
        };
        assert_eq!(inactive(r#"{"active":false}"#), Some(Inactive::NotActive));
        assert_eq!(inactive(r#"{"active":true,"aud":"api","iss":"https://evil"}"#), Some(Inactive::WrongIssuer));
        assert_eq!(inactive(r#"{"active":true,"aud":"other"}"#), Some(Inactive::WrongAudience));
        assert_eq!(inactive(r#"{"active":true}"#), Some(Inactive::WrongAudience), "aud required when configured");
        assert_eq!(inactive(r#"{"active":true,"aud":"api","exp":999995}"#), Some(Inactive::Expired));
        assert_eq!(inactive(r#"{"active":true,"aud":"api","nbf":1000006}"#), Some(Inactive::NotYetValid));
        assert_eq!(
            inactive(r#"{"active":true,"aud":"api","token_type":"refresh_token"}"#),
            Some(Inactive::NotAccessToken)
        );
        assert!(matches!(judge(r#"{"active":true,"aud":"api","exp":1000000.5}"#), Ok(Introspected::Active(_))));
        for malformed in [
            r#"{"active":"true","aud":"api"}"#,
            r#"{"aud":"api"}"#,
            r#"{"active":true,"active":false}"#,
            r#"{"active":true,"aud":"api","ext":{"role":"user","role":"admin"}}"#,
            r#"{"active":true,"aud":"api","ext":[{"a":1,"\u0061":2}]}"#,
            r#"{"active":true,"aud":"api"} {}"#,
            r#"{"active":true,"aud":"api","exp":"soon"}"#,
            r#"{"active":true,"aud":"api","exp":-1}"#,
            r#"{"active":true,"aud":["api",5]}"#,
            r#"{"active":true,"aud":"api","sub":7}"#,
            r#"[true]"#,
            "",
            "<html>",
        ] {
            assert_eq!(judge(malformed), Err(IntrospectError::Malformed), "{malformed}");
        }
    }

    #[test]
    fn json_names_are_unique_at_every_depth_and_nesting_is_bounded() {
        let ok = |t: &str| unique_object(t.as_bytes()).is_some();
        assert!(ok(r#"{"a":{"b":[{"c":1},{"c":2}],"d":{"c":3}},"c":1.5,"n":null,"t":true}"#));
        for dup in [
            r#"{"a":1,"a":2}"#,
            r#"{"org":{"team":"blue","team":"red"}}"#,
            r#"{"realm_access":{"roles":["x"],"roles":["admin"]}}"#,
            r#"{"a":[[{"x":{"y":1,"y":1}}]]}"#,
            r#"{"a":1,"\u0061":2}"#,
        ] {
            assert!(!ok(dup), "{dup}");
        }
        for not_object in ["[]", "1", "\"x\"", "", "{", "{} {}", "{\"a\":1,}"] {
            assert!(!ok(not_object), "{not_object}");
        }
        let nest = |n: usize| format!("{}1{}", "{\"a\":".repeat(n), "}".repeat(n));
        assert!(ok(&nest(MAX_JSON_DEPTH)) && !ok(&nest(MAX_JSON_DEPTH + 1)));
        let arrays = |n: usize| format!("{{\"a\":{}{}}}", "[".repeat(n), "]".repeat(n));
        assert!(ok(&arrays(MAX_JSON_DEPTH - 1)) && !ok(&arrays(MAX_JSON_DEPTH)));
        // Many names in one object: a map per object, no quadratic blow-up.
        let wide = format!("{{{}}}", (0..50_000).map(|i| format!("\"k{i}\":{i}")).collect::<Vec<_>>().join(","));
        assert!(ok(&wide));
        assert!(!ok(&wide.replacen("\"k1\"", "\"k0\"", 1)));
    }

    #[test]
    fn credentials_are_form_encoded_before_basic() {
        let c =
            IntrospectionClient::new(IntrospectionSettings::new("https://idp.example/i", "rs:1", "s+e/c%r t")).unwrap();
        let basic = c.authorization.to_str().unwrap().strip_prefix("Basic ").unwrap().to_string();
        let pair = base64::engine::general_purpose::STANDARD.decode(basic).unwrap();
        assert_eq!(String::from_utf8(pair).unwrap(), "rs%3A1:s%2Be%2Fc%25r+t");
        assert!(c.authorization.is_sensitive());
        let shown = format!("{:?}", c.settings);
        assert!(!shown.contains("s+e/c%r t") && shown.contains("<redacted>"), "{shown}");
        let empty = IntrospectionClient::new(IntrospectionSettings::new("https://idp.example/i", "rs", ""));
        assert!(matches!(empty, Err(SettingsError::Credentials)));
    }
}
