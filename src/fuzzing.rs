//! Entry points for the fuzz targets in `fuzz/` (see docs/fuzzing.md). Not part of the
//! gateway's API: hidden from the docs, and nothing in the gateway calls it.
//!
//! Each function drives one parser the way a request reaches it, on input the fuzzer
//! controls, and then checks what must hold whatever the input. A broken invariant panics,
//! which the fuzzer reports as a crash, just like a panic inside the code under test.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use base64::Engine;
use http::{HeaderMap, StatusCode, header};

use crate::config::{Client, Config, ConfigError, GrantType};
use crate::oauth::authorize::{self, ResponseType};
use crate::oauth::client_auth;
use crate::oauth::error::OAuthError;
use crate::oauth::params::Params;
use crate::oauth::token::{self, BodyKind};
use crate::proxy::authenticate;
use crate::proxy::error::ProxyError;
use crate::proxy::forward::Upstreams;
use crate::state::Runtime;
use crate::store::{
    Block, BlockKey, CodeGrant, Hash, IssuedAccess, RefreshGrant, Rotate, Rotation, Session, Store, StoreError,
    StoredRefresh, TakeCode,
};
use crate::tokens::keys::KeySet;
use crate::tokens::validate::{LEEWAY_SECS, TokenError, Validator};
use crate::tokens::{AccessClaims, now_secs};

pub mod forwarding;
pub mod peer;

/// Token endpoint, up to the client lookup: the Content-Type decides form or JSON, the
/// body becomes [`Params`] (a repeated parameter is refused), `grant_type` is parsed, and
/// the client's credentials are taken from HTTP Basic or the body. A refusal is rendered
/// as the wire response it would become.
pub fn token_request(headers: &HeaderMap, body: &[u8]) -> Result<(), OAuthError> {
    let result: Result<(), OAuthError> = (|| {
        let params = match token::body_kind(headers)? {
            BodyKind::Form => Params::from_form(body)?,
            BodyKind::Json => Params::from_json(body)?,
        };
        let grant_name = params.require("grant_type")?;
        let grant =
            GrantType::parse(grant_name).ok_or_else(|| OAuthError::UnsupportedGrantType(grant_name.to_string()))?;
        assert_eq!(grant.as_str(), grant_name);
        let basic = client_auth::basic_credentials(headers)?;
        let presented = client_auth::presented(headers, &params)?;
        assert_eq!(presented.basic, basic.is_some());
        if let Some((id, secret)) = basic {
            assert!(params.get("client_secret").is_none(), "two client authentication methods were accepted");
            assert_eq!(presented.client_id, id);
            assert_eq!(presented.secret.as_deref(), Some(secret.as_str()));
        } else {
            assert_eq!(Some(presented.client_id.as_str()), params.get("client_id"));
        }
        Ok(())
    })();
    if let Err(e) = &result {
        let resp = e.clone().into_response("fuzz");
        assert!(resp.status().is_client_error(), "a malformed token request answered {}", resp.status());
    }
    result
}

/// Proxy path, phase 2: the bearer token from the Authorization header(s).
pub fn bearer(headers: &HeaderMap) -> Result<String, ProxyError> {
    match authenticate::bearer(headers) {
        Ok(token) => {
            assert!(!token.is_empty());
            assert!(token.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~+/=".contains(&b)));
            let values: Vec<_> = headers.get_all(header::AUTHORIZATION).iter().collect();
            assert_eq!(values.len(), 1, "a token was taken from several Authorization headers");
            let value = values[0].to_str().expect("a token from a non-ASCII header");
            assert!(value.contains(token));
            Ok(token.to_string())
        }
        Err(e) => {
            let status = e.into_response("fuzz").status();
            assert!(matches!(status, StatusCode::UNAUTHORIZED | StatusCode::BAD_REQUEST), "answered {status}");
            Err(authenticate::bearer(headers).expect_err("bearer() is not deterministic"))
        }
    }
}

/// The `header_hygiene` oracle: which cookie pairs and Set-Cookies mention the gateway's
/// cookies, with the two names spelled out, sharing no code with `crate::cookies`.
mod oracle {
    const OURS: [&[u8]; 2] = [b"__Host-portcullis_session", b"__Host-portcullis_csrf"];

    fn strip(mut b: &[u8]) -> &[u8] {
        while let [b' ' | b'\t', rest @ ..] = b {
            b = rest;
        }
        while let [rest @ .., b' ' | b'\t'] = b {
            b = rest;
        }
        b
    }

    /// Does one of our names appear anywhere in `bytes`, in any ASCII case? (Lower-cased
    /// copies and a window search: slow and obvious.)
    pub fn mentions_ours(bytes: &[u8]) -> bool {
        let hay = bytes.to_ascii_lowercase();
        OURS.iter().any(|o| {
            let needle = o.to_ascii_lowercase();
            hay.windows(needle.len()).any(|w| w == needle.as_slice())
        })
    }

    /// The non-empty `;`-separated pairs of a Cookie value, stripped of SP/HTAB.
    pub fn cookie_pairs(value: &[u8]) -> Vec<&[u8]> {
        value.split(|b| *b == b';').map(strip).filter(|p| !p.is_empty()).collect()
    }

    /// Could a client read this Set-Cookie as setting one of ours? Yes if it mentions one
    /// of our names anywhere (a splitter may cut it at a comma among the attributes).
    pub fn sets_ours(set_cookie: &[u8]) -> bool {
        mentions_ours(set_cookie)
    }
}

/// Proxy header hygiene on peer input: the Cookie filter, the Set-Cookie filter and the
/// authority parser. Input: one item per line, `c:` a Cookie field (several make an
/// HTTP/2-style split Cookie), `s:` a Set-Cookie field from an upstream, `h:` a Host value,
/// `p:` a request path; lines that cannot be header values are skipped, as hyper would
/// never deliver them.
///
/// Invariants: no cookie pair that mentions a gateway cookie name anywhere, in any case,
/// survives the Cookie filter, nor a Set-Cookie that does; every other
/// cookie pair and Set-Cookie is kept, in order, byte for byte; at most one Cookie field
/// goes upstream. An accepted authority is normal (lower-case, no trailing dot, only
/// host characters, port 1..=65535) and parsing it again gives the same. An accepted path,
/// percent-decoded, is UTF-8 with no `\`, `;` or `%` (nothing left to decode twice), no `.`
/// or `..` segment, no empty one but the last, and no non-ASCII character that upper- or lower-cases into ASCII.
pub fn header_hygiene(data: &[u8]) {
    use crate::authority::Authority;
    use crate::proxy::forward;
    use http::HeaderValue;

    let mut headers = HeaderMap::new();
    let mut responses = HeaderMap::new();
    let mut hosts = Vec::new();
    let mut paths = Vec::new();
    for line in data.split(|&b| b == b'\n') {
        let (kind, rest) = line.split_at(line.len().min(2));
        let Ok(v) = HeaderValue::from_bytes(rest) else { continue };
        match kind {
            b"c:" => headers.append(header::COOKIE, v),
            b"s:" => responses.append(header::SET_COOKIE, v),
            b"h:" => {
                hosts.push(v);
                true
            }
            b"p:" => {
                if let Ok(p) = std::str::from_utf8(rest) {
                    paths.push(p.to_string());
                }
                true
            }
            _ => false,
        };
    }

    // The expected results come from the oracle below, written apart from `crate::cookies`
    // (which is under test) so that a bug there cannot hide itself.
    let expected: Vec<Vec<u8>> = headers
        .get_all(header::COOKIE)
        .iter()
        .flat_map(|v| oracle::cookie_pairs(v.as_bytes()))
        .filter(|p| !oracle::mentions_ours(p))
        .map(<[u8]>::to_vec)
        .collect();
    forward::filter_cookies(&mut headers);
    let left: Vec<_> = headers.get_all(header::COOKIE).iter().collect();
    assert!(left.len() <= 1, "{} Cookie fields sent upstream", left.len());
    let kept: Vec<&[u8]> = left.iter().flat_map(|v| oracle::cookie_pairs(v.as_bytes())).collect();
    for pair in &kept {
        assert!(!oracle::mentions_ours(pair), "a gateway cookie reached the upstream: {pair:?}");
    }
    // Dropped only when it cannot be a header value (it always can: the fields were).
    assert_eq!(kept, expected.iter().map(Vec::as_slice).collect::<Vec<_>>(), "a cookie pair was lost or changed");

    let others: Vec<HeaderValue> =
        responses.get_all(header::SET_COOKIE).iter().filter(|v| !oracle::sets_ours(v.as_bytes())).cloned().collect();
    forward::drop_gateway_set_cookies(&mut responses);
    let left: Vec<HeaderValue> = responses.get_all(header::SET_COOKIE).iter().cloned().collect();
    for v in &left {
        assert!(!oracle::sets_ours(v.as_bytes()), "an upstream set a gateway cookie: {v:?}");
    }
    assert_eq!(left, others, "a Set-Cookie was lost or changed");

    for h in hosts {
        let parsed = Authority::from_header(&h);
        assert_eq!(parsed, Authority::parse(h.as_bytes()), "from_header and parse disagree on {h:?}");
        let Some(a) = parsed else { continue };
        let host = a.host();
        assert!(!host.is_empty() && !host.ends_with('.'), "{h:?} -> {host:?}");
        if let Some(ip6) = host.strip_prefix('[') {
            assert!(ip6.ends_with(']'), "{host:?}");
        } else {
            assert!(
                host.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b)),
                "{host:?}"
            );
        }
        assert_ne!(a.port(), Some(0));
        let again = Authority::parse(a.header_value().as_bytes()).expect("a normalised authority is refused");
        assert_eq!(again, a, "normalising {h:?} is not idempotent");
    }

    for p in paths {
        if !crate::proxy::route::is_safe_path(&p) {
            continue;
        }
        // An oracle of its own: decode every escape, then look at what an upstream sees.
        let decoded = percent_encoding::percent_decode_str(&p).collect::<Vec<u8>>();
        let text = std::str::from_utf8(&decoded).unwrap_or_else(|_| panic!("accepted non-UTF-8 path {p:?}"));
        assert!(text.starts_with('/'), "{p:?}");
        assert!(!text.contains(['\\', ';', '%']), "accepted {p:?} decodes to {text:?}");
        let segments: Vec<&str> = text[1..].split('/').collect();
        let inner = &segments[..segments.len() - 1];
        assert!(
            !inner.iter().any(|s| s.is_empty()) && !segments.iter().any(|s| *s == "." || *s == ".."),
            "accepted {p:?} -> {text:?}"
        );
        for c in text.chars().filter(|c| !c.is_ascii()) {
            assert!(
                !c.to_uppercase().chain(c.to_lowercase()).any(|x| x.is_ascii()),
                "accepted {p:?}: {c:?} case-maps into ASCII"
            );
        }
    }
}

/// Configuration text through [`Config::parse`]; a refusal must name a line of the text.
pub fn config(text: &str) -> Result<Config, ConfigError> {
    let path = Path::new("/nonexistent/portcullis-fuzz/gateway.toml");
    let result = Config::parse(text, path);
    if let Err(e) = &result {
        let lines = text.split('\n').count();
        assert!(e.line <= lines, "error on line {} of a {lines}-line text: {e}", e.line);
        assert_eq!(e.file, path);
    }
    result
}

/// A configuration, its keys, a validator and a store: what validation and /authorize
/// read. Built once per fuzzing process from a config file whose key files exist.
pub struct Fixture {
    runtime: Runtime,
    validator: Validator,
    store: FuzzStore,
    executor: tokio::runtime::Runtime,
}

impl Fixture {
    /// Load `path` (a gateway config; relative key paths resolve next to it).
    pub fn load(path: &Path) -> Fixture {
        crate::install_crypto_provider();
        let config = Config::load(path).unwrap_or_else(|e| panic!("fuzz fixture config: {e}"));
        let keys = KeySet::load(&config).unwrap_or_else(|e| panic!("fuzz fixture keys: {e}"));
        let executor = tokio::runtime::Builder::new_current_thread().build().expect("tokio runtime");
        let upstreams = Upstreams::new(&config).unwrap_or_else(|e| panic!("fuzz fixture upstreams: {e}"));
        Fixture {
            runtime: Runtime { config, keys, upstreams, issuers: Default::default(), client_keys: Default::default() },
            validator: Validator::new(1024),
            store: FuzzStore,
            executor,
        }
    }

    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// The kids of the configured keys, in config order.
    pub fn kids(&self) -> Vec<String> {
        self.runtime.config.keys.iter().map(|k| k.id.clone()).collect()
    }

    /// A well-formed access token signed by key `kid` for `client_id`, valid for the
    /// configured default lifetime.
    pub fn mint(&self, kid: &str, client_id: &str) -> String {
        let now = now_secs();
        let claims = AccessClaims {
            iss: self.runtime.config.issuer.clone(),
            sub: client_id.to_string(),
            aud: self.runtime.config.audience.clone(),
            exp: now + self.runtime.config.token_lifetime.as_secs(),
            iat: now,
            jti: crate::tokens::random_token(16),
            client_id: client_id.to_string(),
            scope: "read".into(),
            gty: None,
            cnf: None,
        };
        let key = self.runtime.keys.get(kid).expect("kid of the fixture");
        let header = serde_json::json!({"alg": key.alg, "typ": "at+jwt", "kid": kid});
        self.sign_segments(kid, header.to_string().as_bytes(), serde_json::to_string(&claims).unwrap().as_bytes())
            .expect("signing a fixture token")
    }

    /// The principal of a fresh token of `client_id` (signed by the first key), as the
    /// proxy path's validation makes it.
    pub fn principal(&self, client_id: &str) -> Arc<crate::tokens::validate::Principal> {
        let rt = &self.runtime;
        let token = self.mint(&self.kids()[0], client_id);
        let verdict = self.executor.block_on(self.validator.validate(&token, &rt.keys, &rt.config, &self.store));
        verdict.unwrap_or_else(|e| panic!("the fixture's own token for {client_id}: {e:?}"))
    }

    /// `base64url(header).base64url(payload).signature`, signed by key `kid` whatever the
    /// bytes say: lets the fuzzer reach the claim checks behind the signature.
    pub fn sign_segments(&self, kid: &str, header: &[u8], payload: &[u8]) -> Option<String> {
        let key = self.runtime.keys.get(kid)?;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let message = format!("{}.{}", b64.encode(header), b64.encode(payload));
        let signature = b64.encode(key.sign_raw(message.as_bytes()).ok()?);
        Some(format!("{message}.{signature}"))
    }

    /// The proxy path's validation of `token`, twice (a miss, then a possible cache hit):
    /// both verdicts must agree, and an accepted token must say what the config demands.
    pub fn validate(&self, token: &str) -> Result<(), TokenError> {
        let rt = &self.runtime;
        let clients = &rt.config.clients;
        let before = now_secs();
        let first = self.executor.block_on(self.validator.validate(token, &rt.keys, &rt.config, &self.store));
        let second = self.executor.block_on(self.validator.validate(token, &rt.keys, &rt.config, &self.store));
        if now_secs() == before {
            match (&first, &second) {
                (Ok(a), Ok(b)) => assert_eq!(a.token_id(), b.token_id()),
                (Err(a), Err(b)) => assert_eq!(a, b, "a cached verdict differs"),
                _ => panic!("verdicts differ: {:?} then {:?}", first.as_ref().err(), second.as_ref().err()),
            }
        }
        let principal = first?;
        // Accepted: the signed claims must be the configured ones. (Parsed as the validator
        // parses them: a claim it ignores may even hold invalid UTF-8, since serde skips it
        // unchecked; only our own keys can sign such a payload.)
        let payload = token.split('.').nth(1).expect("an accepted token has a payload");
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).expect("base64url payload");
        let claims: AccessClaims = serde_json::from_slice(&payload).expect("JSON payload");
        assert_eq!(claims.iss, rt.config.issuer, "accepted with a foreign issuer");
        assert_eq!(claims.aud, rt.config.audience, "accepted with a foreign audience");
        assert_eq!(claims.jti, principal.token_id());
        assert!(principal.expires_at().saturating_add(LEEWAY_SECS) > before, "accepted after expiry");
        let client = clients.get(principal.client_id()).expect("accepted for an unknown client");
        assert!(client.enabled, "accepted for a disabled client");
        assert!(!principal.token_id().starts_with("revoked"), "accepted a revoked token");
        let header = jsonwebtoken::decode_header(token).expect("accepted with a bad header");
        let key = rt.keys.get(header.kid.as_deref().expect("accepted without kid")).expect("accepted unknown kid");
        assert_eq!(header.alg, key.alg, "accepted under another algorithm than its key's");
        Ok(())
    }

    /// GET /authorize from the query string to the validated request, or to the response
    /// that refuses it. What is accepted must be what the client registered; a refusal
    /// either shows a page or goes back to a registered redirect URI, never elsewhere.
    pub fn authorize_query(&self, query: &[u8]) -> Result<(), StatusCode> {
        let rt = &self.runtime;
        let Ok(params) = Params::from_form(query) else { return Err(StatusCode::BAD_REQUEST) };
        match authorize::parse_request(rt, &params) {
            Ok(req) => {
                check_accepted(rt, &params, &req);
                Ok(())
            }
            Err(refusal) => {
                let resp = refusal.into_response(false);
                let status = resp.status();
                if status == StatusCode::FOUND {
                    let location = resp.headers().get(header::LOCATION).expect("a redirect without Location");
                    let location = location.to_str().expect("Location is not ASCII");
                    let client = params.get("client_id").and_then(|id| rt.config.clients.get(id));
                    let client = client.expect("redirected for an unknown client");
                    let registered = client.redirect_uris.iter().any(|r| {
                        location.strip_prefix(r.as_str()).is_some_and(|rest| rest.starts_with(['?', '&', '#']))
                    });
                    assert!(registered, "redirected to an unregistered place: {location}");
                    assert!(location.contains("error="), "a refusal redirect without error: {location}");
                } else {
                    assert_eq!(status, StatusCode::BAD_REQUEST, "refused with {status}");
                }
                Err(status)
            }
        }
    }
}

fn check_accepted(rt: &Runtime, params: &Params, req: &authorize::AuthRequest) {
    let client: &Arc<Client> = rt
        .config
        .clients
        .get(params.get("client_id").expect("accepted without client_id"))
        .expect("accepted an unknown client");
    assert!(Arc::ptr_eq(client, &req.client));
    assert!(client.enabled, "accepted a disabled client");
    assert!(client.redirect_uris.contains(&req.redirect_uri), "accepted an unregistered redirect URI");
    assert_eq!(req.redirect_uri_given, params.get("redirect_uri").is_some());
    for s in &req.scopes {
        assert!(client.scopes.contains(s) || client.default_scopes.contains(s), "granted scope {s:?}");
    }
    match req.response_type {
        ResponseType::Code => {
            assert!(client.grants.contains(&GrantType::AuthorizationCode));
            assert_eq!(params.get("response_type"), Some("code"));
            if client.is_public() {
                assert!(req.code_challenge.is_some(), "a public client without PKCE");
            }
            if let Some(c) = &req.code_challenge {
                assert_eq!(params.get("code_challenge_method"), Some("S256"));
                assert!((43..=128).contains(&c.len()));
            }
        }
        ResponseType::Token => {
            assert!(client.implicit);
            assert_eq!(params.get("response_type"), Some("token"));
            assert!(req.code_challenge.is_none());
        }
    }
    assert_eq!(req.state.as_deref(), params.get("state"));
}

/// A store that holds nothing: a jti starting with `revoked` is revoked, every other
/// operation is unavailable (validation only asks `is_revoked`).
struct FuzzStore;

fn unavailable<T>() -> Result<T, StoreError> {
    Err(StoreError::Unavailable("fuzzing store".into()))
}

#[async_trait]
impl Store for FuzzStore {
    async fn put_code(&self, _: Hash, _: CodeGrant) -> Result<(), StoreError> {
        unavailable()
    }
    async fn take_code(&self, _: Hash, _: &str, _: u64) -> Result<TakeCode, StoreError> {
        unavailable()
    }
    async fn put_refresh(&self, _: Hash, _: RefreshGrant) -> Result<(), StoreError> {
        unavailable()
    }
    async fn get_refresh(&self, _: Hash, _: u64) -> Result<Option<StoredRefresh>, StoreError> {
        unavailable()
    }
    async fn rotate_refresh(&self, _: Hash, _: &str, _: Rotation, _: u64) -> Result<Rotate, StoreError> {
        unavailable()
    }
    async fn put_client_not_before(&self, _: &str, _: u64) -> Result<(), StoreError> {
        unavailable()
    }
    async fn client_not_before(&self) -> Result<Vec<(String, u64)>, StoreError> {
        Ok(Vec::new())
    }
    async fn add_access(&self, _: &str, _: IssuedAccess) -> Result<(), StoreError> {
        unavailable()
    }
    async fn revoke_family(&self, _: &str) -> Result<Vec<IssuedAccess>, StoreError> {
        unavailable()
    }
    async fn revoke_access(&self, _: IssuedAccess) -> Result<(), StoreError> {
        unavailable()
    }
    async fn is_revoked(&self, jti: &str) -> Result<bool, StoreError> {
        Ok(jti.starts_with("revoked"))
    }
    async fn put_session(&self, _: Hash, _: Session) -> Result<(), StoreError> {
        unavailable()
    }
    async fn get_session(&self, _: Hash, _: u64) -> Result<Option<Session>, StoreError> {
        unavailable()
    }
    async fn sweep(&self, _: u64) -> Result<u64, StoreError> {
        unavailable()
    }
    async fn first_use(&self, _: crate::store::OnceKind, _: Hash, _: u64, _: u64) -> Result<bool, StoreError> {
        unavailable()
    }
    async fn put_block(&self, _: Block) -> Result<(), StoreError> {
        unavailable()
    }
    async fn delete_block(&self, _: &BlockKey) -> Result<bool, StoreError> {
        unavailable()
    }
    async fn blocks(&self, _: u64) -> Result<Vec<Block>, StoreError> {
        Ok(Vec::new())
    }
    async fn ping(&self) -> Result<(), StoreError> {
        unavailable()
    }
}

/// The peer-input parsers added for issues 16 and 19, on one input each: the proxy's
/// `access_token` stripping of a query or form body, the multipart field-name scan, and
/// the duplicate-refusing JSON object reader that external JWT payloads and introspection
/// answers go through. Invariants: stripping never keeps a piece whose name reads as
/// `access_token` and never adds a byte that was not in the input; a body with a literal
/// `name="access_token"` is found by the scan; an object the strict reader accepts is one
/// serde_json reads too, with the same members.
pub fn peer_params(data: &[u8]) {
    use crate::proxy::access_token::{is_access_token_name, without_access_token};
    if let Some(kept) = without_access_token(data) {
        assert!(kept.len() <= data.len(), "stripping grew the input");
        for piece in kept.split(|b| *b == b'&' || *b == b';') {
            let name = piece.split(|&b| b == b'=').next().unwrap_or_default();
            let survives =
                form_urlencoded::parse(name).next().is_some_and(|(k, v)| v.is_empty() && is_access_token_name(&k));
            assert!(!survives, "an access_token piece survived: {piece:?}");
            assert!(
                data.windows(piece.len().max(1)).any(|w| w == piece) || piece.is_empty(),
                "a piece not in the input"
            );
        }
    }
    if let Ok(path) = std::str::from_utf8(data) {
        logged_path_keeps_no_token(path);
    }
    let found = crate::proxy::multipart::names_token_field(data);
    let literal: &[u8] = b"; name=\"access_token\"";
    if data.windows(literal.len()).any(|w| w == literal) {
        assert!(found, "a literal access_token field was missed");
    }
    // Unquoted, ended by any byte that ends a token (a tspecial, a blank, a control or
    // non-ASCII byte), as Werkzeug and Python read it.
    let unquoted: &[u8] = b"; name=access_token";
    let ends_token = |b: Option<&u8>| b.is_none_or(|b| !b.is_ascii_graphic() || b"()<>@,;:\\\"/[]?={}".contains(b));
    if data.windows(unquoted.len()).enumerate().any(|(i, w)| w == unquoted && ends_token(data.get(i + unquoted.len())))
    {
        assert!(found, "an unquoted access_token field was missed");
    }
    // An extended name whose text, after its second `'`, is `access'_token` (Werkzeug and
    // Python's email module read it there), ended as above.
    let extended: &[u8] = b"; name*=utf-8'en'access'_token";
    if data.windows(extended.len()).enumerate().any(|(i, w)| w == extended && ends_token(data.get(i + extended.len())))
    {
        assert!(found, "an extended access_token field was missed");
    }
    if let Some(members) = crate::issuers::introspection::unique_object(data) {
        let loose: serde_json::Value =
            serde_json::from_slice(data).expect("the strict reader accepted what serde_json refuses");
        let obj = loose.as_object().expect("the strict reader accepted a non-object");
        assert_eq!(obj.len(), members.len(), "member counts differ");
    }
}

/// The access log's path redaction: no piece of what it logs, percent-decoded until it
/// stops changing, still holds an `=` and the name `access_token` (in any spelling a
/// framework reads as it), unless its value is the `[redacted]` put there; and a path that
/// never mentions the name comes out unchanged.
fn logged_path_keeps_no_token(path: &str) {
    let logged = crate::logging::redact_tokens(path);
    // Every decoding of `s` until it stops changing (at most `rounds`), and whether it stopped.
    let decodings = |s: &str, rounds: usize| {
        let mut all = vec![s.to_ascii_lowercase()];
        for _ in 0..rounds {
            let last = all.last().map(String::as_str).unwrap_or_default();
            let next = percent_encoding::percent_decode_str(last).decode_utf8_lossy().to_ascii_lowercase();
            if next == last {
                return (all, true);
            }
            all.push(next);
        }
        (all, false)
    };
    // The name on its letters and digits, in any case and look-alike (`text::is_access_token_name`).
    let mentions = |t: &str| crate::text::folded_alphanumerics(t).collect::<String>().contains("accesstoken");
    let (whole, settled) = decodings(path, 8);
    if settled && !whole.iter().any(|t| mentions(t)) {
        assert_eq!(logged, path, "a path without a token was changed");
    }
    for piece in logged.split(['/', ';', '&', '?']) {
        if piece == "[redacted]" || piece.ends_with("=[redacted]") {
            continue;
        }
        let (texts, _) = decodings(piece, 8);
        for text in &texts {
            assert!(
                // `=`, or any character NFKC reads as holding one (`＝`, `﹦`, `⁼`, `₌`, `⩴`...).
                !(unicode_normalization::UnicodeNormalization::nfkc(text.as_str()).any(|c| c == '=') && mentions(text)),
                "a token parameter reached the log: {piece:?} of {path:?}"
            );
        }
    }
}

/// Route lookup: the index ([`crate::config::RouteTable`]) against the linear scan it
/// replaced ([`crate::proxy::route::route_linear`]). Input, one item per line:
/// `r <prefix> [<host>|-] [<METHOD,METHOD>|-]` declares a route (validated as a config
/// would be; a set the validator refuses is skipped), `q <METHOD> <host>|- <path>` asks
/// for one (any path, not only those `is_safe_path` lets through). Both must name the same
/// route, or none. Returns how many lookups were compared.
pub fn route(data: &[u8]) -> usize {
    let Ok(text) = std::str::from_utf8(data) else { return 0 };
    let mut config = String::from(
        "issuer = \"https://auth.example\"\n[[listener]]\naddress = \"127.0.0.1:8443\"\ntls = false\n\
         [[key]]\nid = \"k\"\nfile = \"k.pem\"\n",
    );
    // TOML literal strings: no escapes, so any text without `'` or a control character.
    let literal = |s: &str| (!s.contains('\'') && !s.chars().any(char::is_control)).then(|| format!("'{s}'"));
    let mut queries = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let mut words = line.split(' ');
        match (words.next(), words.next(), words.next(), words.next()) {
            (Some("r"), Some(prefix), host, methods) => {
                let Some(prefix) = literal(prefix) else { return 0 };
                config.push_str(&format!("[[route]]\nprefix = {prefix}\nupstream = \"http://127.0.0.1:{}\"\n", n + 1));
                if let Some(h) = host.filter(|h| *h != "-") {
                    let Some(h) = literal(h) else { return 0 };
                    config.push_str(&format!("host = {h}\n"));
                }
                if let Some(ms) = methods.filter(|m| *m != "-") {
                    let list: Option<Vec<String>> = ms.split(',').map(literal).collect();
                    let Some(list) = list else { return 0 };
                    config.push_str(&format!("methods = [{}]\n", list.join(", ")));
                }
            }
            (Some("q"), Some(method), Some(host), path) => {
                let Ok(method) = http::Method::from_bytes(method.as_bytes()) else { continue };
                let host = (host != "-").then_some(host);
                // The rest of the line, spaces included.
                let path = path.map(|p| line.splitn(4, ' ').nth(3).unwrap_or(p)).unwrap_or("");
                queries.push((method, host, path));
            }
            _ => {}
        }
    }
    let Ok(config) = Config::parse(&config, Path::new("/nonexistent/portcullis-fuzz/gateway.toml")) else { return 0 };
    for (method, host, path) in &queries {
        let (host, path) = (*host, *path);
        let want = crate::proxy::route::route_linear(&config.routes, host, method, path);
        let got = crate::proxy::route::route(&config.routes, host, method, path);
        let same = match (want, got) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        assert!(
            same,
            "{method} {host:?} {path:?}: the scan chose {:?}, the index {:?}",
            want.map(|r| (&r.prefix, &r.host, &r.methods)),
            got.map(|r| (&r.prefix, &r.host, &r.methods))
        );
    }
    queries.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/fixture/gateway.toml");
    /// 2100-01-01: seed tokens stay valid.
    const FAR_FUTURE: u64 = 4_102_444_800;

    #[test]
    fn fixture_accepts_its_own_tokens_and_refuses_tampering() {
        let f = Fixture::load(Path::new(FIXTURE));
        for kid in f.kids() {
            let token = f.mint(&kid, "svc");
            assert_eq!(f.validate(&token), Ok(()), "kid {kid}");
            let tampered = format!("{}x", &token[..token.len() - 1]);
            assert!(f.validate(&tampered).is_err());
        }
        assert_eq!(f.validate(&f.mint("ed", "off")), Err(TokenError::ClientDisabled));
        // Found through the jwt target: exp near u64::MAX overflowed `exp + leeway` (a panic
        // with overflow checks). Such a token is now refused (issue 11: no lifetime beyond
        // the configured maximum), without overflowing on the way.
        let claims = format!(
            r#"{{"iss":"https://gw.fuzz.test","sub":"s","aud":"https://api.fuzz.test","exp":{},"iat":0,"jti":"j","client_id":"svc"}}"#,
            u64::MAX
        );
        let header = br#"{"alg":"EdDSA","typ":"at+jwt","kid":"ed"}"#;
        let token = f.sign_segments("ed", header, claims.as_bytes()).unwrap();
        assert_eq!(f.validate(&token), Err(TokenError::LifetimeTooLong));
        assert!(f.authorize_query(b"response_type=token&client_id=web&redirect_uri=https://app.fuzz.test/cb").is_ok());
        assert_eq!(f.authorize_query(b"response_type=code&client_id=web"), Err(StatusCode::BAD_REQUEST));
        assert_eq!(f.authorize_query(b"response_type=code&client_id=conf&scope=nope"), Err(StatusCode::FOUND));
    }

    #[test]
    fn entry_points_refuse_garbage() {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
        h.insert(header::AUTHORIZATION, "Basic c3ZjOnM=".parse().unwrap());
        assert!(token_request(&h, br#"{"grant_type":"client_credentials"}"#).is_ok());
        assert!(token_request(&h, br#"{"grant_type":"client_credentials","client_secret":"s"}"#).is_err());
        assert!(bearer(&h).is_err());
        assert!(config("issuer = 1").is_err());
    }

    #[test]
    fn peer_params_hold_on_attacker_inputs() {
        for seed in std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/peer_params")).unwrap() {
            peer_params(&std::fs::read(seed.unwrap().path()).unwrap());
        }
        for input in [
            &b""[..],
            b"a=1;access_token=t&access.token=u&access_token[]=v&b=%2",
            b"--x\r\nContent-Disposition: form-data; name=\"access_token\"\r\n\r\nt",
            br#"{"a":{"b":1,"b":2}}"#,
            br#"{"a":[{"x":1}],"c":"\u0061"}"#,
            b"{\"a\":",
            // Third attack: a fullwidth `=` in a path parameter, a blank in an extended
            // name's charset.
            "/api/x;access_token\u{ff1d}t;b".as_bytes(),
            b"/api/x;access_token%EF%BC%9Dt",
            b"--x\r\nContent-Disposition: form-data; name*=utf-8 ''access_token\r\n\r\nt",
            // Review: the other NFKC forms of `=` in a path parameter, raw and escaped; names
            // read as a run of token characters.
            "/api/x;access_token\u{207c}t;b".as_bytes(),
            "/api/x;access_token\u{2a75}t;b".as_bytes(),
            b"/api/x;access_token%E2%82%8Ct",
            b"/api/x;access_token%e2%a9%b6t",
            b"--x\r\nContent-Disposition: form-data; name=access_token(x\r\n\r\nt",
            b"--x\r\nContent-Disposition: form-data; name*=utf-8''access_token x\r\n\r\nt",
            b"--x\r\nContent-Disposition: form-data; name*0*=utf-8''acc x; name*1=ess_token\r\n\r\nt",
            // Review: an extended name read after its second `'`.
            b"--x\r\nContent-Disposition: form-data; name*=utf-8'en'access'_token\r\n\r\nt",
            b"--x\r\nContent-Disposition: form-data; name*0*=utf-8'en'access'; name*1*=_token\r\n\r\nt",
        ] {
            peer_params(input);
        }
    }

    #[test]
    fn header_hygiene_holds_on_attacker_inputs() {
        for seed in std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/header_hygiene")).unwrap()
        {
            header_hygiene(&std::fs::read(seed.unwrap().path()).unwrap());
        }
        header_hygiene(b"");
        header_hygiene(b"c:\nc:;;\ns:\nh:");
    }

    #[test]
    fn upstream_headers_hold_on_attacker_inputs() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/upstream_headers");
        for seed in std::fs::read_dir(dir).unwrap() {
            forwarding::upstream_headers(&std::fs::read(seed.unwrap().path()).unwrap());
        }
        forwarding::upstream_headers(b"");
        for flags in 0..128u8 {
            forwarding::upstream_headers(&[flags]);
        }
    }

    /// The fuzz target's rules on many mixes of the names attackers use, in every
    /// combination of peer, protocol, route and principal (a fixed seed: reproducible).
    #[test]
    fn upstream_headers_hold_on_a_sweep_of_spellings() {
        const NAMES: [&str; 42] = [
            "X-Forwarded-For",
            "x_forwarded_for",
            "X-Forwarded-Proto",
            "X-Forwarded-Host",
            "X-Forwarded-Port",
            "X-Forwarded-User",
            "X_Forwarded_Email",
            "X-Forwarded-Access-Token",
            "Forwarded",
            "Forwarded_",
            "X-Real-IP",
            "X_Real_IP",
            "True-Client-IP",
            "X-Auth-Subject",
            "X-Auth-Client-Id",
            "x.auth.user",
            "XAuthScope",
            "X-Auth-Foo",
            "xauth-request-user",
            "X-Remote-User",
            "Remote-User",
            "X-User",
            "Authorization",
            "DPoP",
            "Proxy",
            "Host",
            "Cookie",
            "Connection",
            "Connection",
            "Keep-Alive",
            "TE",
            "Upgrade",
            "Sec-WebSocket-Key",
            "Sec_WebSocket_Protocol",
            "Sec-WebSocket-Protocol",
            "Sec-WebSocket-Extensions",
            "X-Request-Id",
            "X_Request_Id",
            "X-SSL-Client-Cert",
            "bkz",
            "b-9",
            "Accept",
        ];
        const VALUES: [&[u8]; 14] = [
            b"203.0.113.9",
            b"6.6.6.6, 10.0.0.3",
            b"[2001:db8::9]:443",
            b"2001:db8:7::5",
            b"https",
            b"http, https",
            b"for=6.6.6.6;proto=https",
            b"X-Forwarded-For",
            b"close, x-real-ip, X-Auth-Subject",
            b"bkz, b-9",
            b"a=1; __Host-portcullis_session=s",
            b"root",
            b"\xe9, x-forwarded-for",
            b"",
        ];
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let mut input = vec![(next() % 128) as u8];
            for _ in 0..(next() % 10) {
                let name = NAMES[(next() % NAMES.len() as u64) as usize];
                let value = VALUES[(next() % VALUES.len() as u64) as usize];
                input.extend_from_slice(name.as_bytes());
                input.push(b':');
                input.extend_from_slice(value);
                input.push(b'\n');
            }
            forwarding::upstream_headers(&input);
        }
    }

    #[test]
    fn header_hygiene_oracle_knows_the_gateway_cookies() {
        for v in [
            "__Host-portcullis_session=v",
            "__host-PORTCULLIS_csrf=v; Path=/",
            " \t__Host-portcullis_session \t= v",
            "=__Host-portcullis_session=v",
            "= __HOST-portcullis_csrf=v; Secure",
            "\t=\t__Host-portcullis_session",
            "__Host-portcullis_csrf",
            "\u{a0}__Host-portcullis_session=v",
            "==__Host-portcullis_csrf",
            "\"__Host-portcullis_session\"=v",
            "x=1, __Host-portcullis_session=v",
            "x=__Host-portcullis_session",
            "=ok=__Host-portcullis_session",
            "__Host-portcullis_sessionx=1",
        ] {
            assert!(oracle::sets_ours(v.as_bytes()), "{v:?}");
        }
        for v in ["ok=1", "ok=1; Path=/", "__Host-portcullis_sessio=1", "portcullis_csrf", ""] {
            assert!(!oracle::sets_ours(v.as_bytes()), "{v:?}");
        }
        let pairs = oracle::cookie_pairs(
            b"a=1;\t__host-portcullis_csrf =x;;b; =__Host-portcullis_session=v;\xa0__Host-portcullis_csrf",
        );
        assert_eq!(
            pairs,
            [
                &b"a=1"[..],
                b"__host-portcullis_csrf =x",
                b"b",
                b"=__Host-portcullis_session=v",
                b"\xa0__Host-portcullis_csrf"
            ]
        );
        let ours: Vec<bool> = pairs.iter().map(|p| oracle::mentions_ours(p)).collect();
        assert_eq!(ours, [false, true, false, true, true]);
    }

    /// Writes the signed-token seeds of the `jwt` fuzz target (fuzz/seeds/jwt/token-*).
    /// Run: `cargo test --lib fuzzing::tests::write_jwt_seeds -- --ignored`.
    #[test]
    #[ignore]
    fn write_jwt_seeds() {
        let f = Fixture::load(Path::new(FIXTURE));
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/jwt");
        std::fs::create_dir_all(&dir).unwrap();
        let rt = f.runtime();
        let claims = |client: &str, sub: &str, jti: &str, scope: &str| {
            serde_json::json!({
                "iss": rt.config.issuer, "sub": sub, "aud": rt.config.audience, "exp": FAR_FUTURE,
                "iat": 1_764_000_000u64, "jti": jti, "client_id": client, "scope": scope,
            })
            .to_string()
        };
        let header = |alg: &str, kid: &str| serde_json::json!({"alg": alg, "typ": "at+jwt", "kid": kid}).to_string();
        let seeds = [
            ("ed", header("EdDSA", "ed"), claims("svc", "alice", "seed-ed", "read write")),
            ("es", header("ES256", "es"), claims("svc", "svc", "seed-es", "read")),
            ("rs", header("RS256", "rs"), claims("web", "bob", "seed-rs", "profile")),
            ("hs", header("HS256", "hs"), claims("conf", "carol", "seed-hs", "admin:all")),
            ("ed", header("EdDSA", "ed"), claims("off", "off", "seed-disabled", "read")),
            ("ed", header("EdDSA", "ed"), claims("svc", "svc", "revoked-seed", "read")),
            ("hs", header("HS256", "ed"), claims("svc", "svc", "seed-confused", "read")),
        ];
        for (n, (kid, h, c)) in seeds.iter().enumerate() {
            let token = f.sign_segments(kid, h.as_bytes(), c.as_bytes()).unwrap();
            std::fs::write(dir.join(format!("token-{n}-{kid}")), token).unwrap();
        }
    }

    #[test]
    fn route_seeds_compare_the_index_with_the_scan() {
        for seed in std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/route")).unwrap() {
            let seed = seed.unwrap().path();
            assert!(route(&std::fs::read(&seed).unwrap()) > 0, "{}: a set the validator refuses", seed.display());
        }
        assert_eq!(route(b"r /a\nr /A\nq GET - /a"), 0, "case variants of one prefix are refused");
        assert_eq!(route(b"r /a'b\nq GET - /a"), 0);
    }
}
