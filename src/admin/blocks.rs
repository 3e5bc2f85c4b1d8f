//! The blocks API on the admin listener (issue 16.5): an operator stops every token with a
//! given `jti`, or every token for a given `sub`, of one issuer or of any, at once and on
//! every replica, without touching the issuer.
//!
//! - `GET /blocks`: `{"blocks": [...]}`, the blocks in the store (what every replica enforces).
//! - `POST /blocks` with `{"jti" | "sub": "...", "iss"?, "expires_in"?, "reason"?}`: adds (or
//!   replaces) the block; `201` with the block as stored. A block holds until removed
//!   unless `expires_in` (seconds) is given. (A `jti` block used to lapse with the longest
//!   lifetime this configuration issues; but a trusted issuer's token may live longer, and
//!   a lifetime lowered then raised by reloads brings an older, longer-lived token back:
//!   the block would lapse while its token still worked.)
//! - `DELETE /blocks` with `{"jti" | "sub": "...", "iss"?}`: removes it; `404` if there was none.
//!
//! Every request needs `Authorization: Bearer <key>` checked against `[admin] api_key_hash`
//! (argon2id, as client secrets). Without a hash the API is off (`403`), whatever is sent.
//! The scheme is accepted in this one spelling and the key never in the query (a request
//! with a query is refused before anything else), so it stays out of URLs and their logs.
//! Wrong keys are counted per source with the `client_failures` quota (then `429`), and
//! every request also takes a unit of the per-IP quota. Bodies are JSON only, at most
//! 4 KiB, read within 10 s; unknown fields, repeated keys, both or neither of `jti` and
//! `sub`, empty, oversized or untidy values (control or invisible characters, surrounding
//! spaces, a whole JWT) are `400`.

use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body::Body as HttpBody;
use http_body_util::BodyExt;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::http::{Body, json};
use crate::ratelimit::{Endpoint, Throttled};
use crate::secrets::Kind;
use crate::state::{Gateway, Runtime};
use crate::store::{Block, BlockKey, BlockKind, StoreError};
use crate::text::{self, MAX_IDENTITY};
use crate::tokens::now_secs;

pub const PATH: &str = "/blocks";

const MAX_BODY: usize = 4096;
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Longer than any key a person or a generator makes; a longer one is refused unhashed.
const MAX_KEY: usize = 512;
/// `jti` and `sub` values are bounded by [`MAX_IDENTITY`], as in the tokens they name;
/// issuers get more room.
const MAX_ISS: usize = 1024;
const MAX_REASON: usize = 256;
/// Blocks in force at most: each one is held in every replica's memory.
const MAX_BLOCKS: u64 = 100_000;
/// Ten years: `expires_in` beyond it is a mistake (leave it out for a block until removed).
const MAX_EXPIRES_IN: u64 = 10 * 365 * 24 * 3600;

/// Why a blocks API request was refused; `into_response` is the one place it meets the wire.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("the blocks API is off: no [admin] api_key_hash")]
    Disabled,
    #[error("no admin API key")]
    MissingKey,
    #[error("wrong admin API key")]
    BadKey,
    #[error("rate limited")]
    Throttled(Throttled),
    #[error("method not allowed")]
    MethodNotAllowed,
    /// The description goes to the caller only: it may quote what the caller sent.
    #[error("bad request")]
    BadRequest(String),
    #[error("body too large")]
    TooLarge,
    #[error("no such block")]
    NotFound,
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

impl ApiError {
    fn into_response(self) -> Response<Body> {
        let challenge = |extra: &str| format!("Bearer realm=\"portcullis admin\"{extra}");
        let (status, error, description, www) = match &self {
            ApiError::Disabled => (
                StatusCode::FORBIDDEN,
                "access_denied",
                "The blocks API is off: set [admin] api_key_hash to turn it on.".to_string(),
                None,
            ),
            ApiError::MissingKey => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "The blocks API needs the admin key as 'Authorization: Bearer <key>'.".to_string(),
                Some(challenge("")),
            ),
            ApiError::BadKey => (
                StatusCode::UNAUTHORIZED,
                "invalid_token",
                "The admin key is wrong.".to_string(),
                Some(challenge(", error=\"invalid_token\"")),
            ),
            ApiError::Throttled(_) => {
                (StatusCode::TOO_MANY_REQUESTS, "slow_down", "Too many requests; retry later.".to_string(), None)
            }
            ApiError::MethodNotAllowed => {
                (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "Use GET, POST or DELETE.".to_string(), None)
            }
            ApiError::BadRequest(why) => (StatusCode::BAD_REQUEST, "invalid_request", why.clone(), None),
            ApiError::TooLarge => {
                (StatusCode::PAYLOAD_TOO_LARGE, "invalid_request", format!("The body is over {MAX_BODY} bytes."), None)
            }
            ApiError::NotFound => (StatusCode::NOT_FOUND, "not_found", "There is no such block.".to_string(), None),
            ApiError::Store(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "The store cannot answer; nothing was changed. Retry.".to_string(),
                None,
            ),
        };
        let mut resp = json(status, &json!({ "error": error, "error_description": description }));
        let h = resp.headers_mut();
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(www) = www.and_then(|w| HeaderValue::from_str(&w).ok()) {
            h.insert(header::WWW_AUTHENTICATE, www);
        }
        match self {
            ApiError::MethodNotAllowed => {
                h.insert(header::ALLOW, HeaderValue::from_static("GET, POST, DELETE"));
            }
            ApiError::Throttled(t) => {
                h.insert(header::RETRY_AFTER, HeaderValue::from(t.retry_after_secs()));
            }
            _ => {}
        }
        resp
    }
}

/// Answer one request to [`PATH`] from `peer`.
pub async fn handle<B>(gw: &Gateway, req: Request<B>, peer: IpAddr) -> Response<Body>
where
    B: HttpBody<Data = Bytes>,
    B::Error: Into<crate::http::BoxError>,
{
    let rt = gw.runtime_full();
    let method = req.method().clone();
    match serve(gw, &rt, req, peer).await {
        Ok(resp) => resp,
        Err(e) => {
            if matches!(e, ApiError::Throttled(_)) {
                gw.metrics.rate_limited(Endpoint::Admin.as_str());
            }
            tracing::info!(target: "portcullis::admin", %method, path = PATH, source = %peer, error = %e, "blocks API request refused");
            e.into_response()
        }
    }
}

async fn serve<B>(gw: &Gateway, rt: &Runtime, req: Request<B>, peer: IpAddr) -> Result<Response<Body>, ApiError>
where
    B: HttpBody<Data = Bytes>,
    B::Error: Into<crate::http::BoxError>,
{
    if !matches!(*req.method(), Method::GET | Method::POST | Method::DELETE) {
        return Err(ApiError::MethodNotAllowed);
    }
    if req.uri().query().is_some() {
        return Err(ApiError::BadRequest(
            "The blocks API takes no query string: the key goes in Authorization, the block in a JSON body.".into(),
        ));
    }
    let Some(hash) = rt.config.admin.as_ref().and_then(|a| a.api_key_hash.as_deref()) else {
        return Err(ApiError::Disabled);
    };
    let limits = &rt.config.rate_limit;
    gw.limiter.admit(limits, Endpoint::Admin, peer).await.map_err(ApiError::Throttled)?;
    let key = api_key(req.headers())?;
    gw.limiter.reserve_admin(limits, peer).await.map_err(ApiError::Throttled)?;
    let ok = key.len() <= MAX_KEY && gw.secrets.verify(Kind::Admin, "admin", key, hash).await;
    if !ok {
        gw.limiter.failed(limits, Endpoint::Admin, peer).await;
        tracing::warn!(security_event = "admin_key_rejected", source = %peer, "wrong admin API key");
        return Err(ApiError::BadKey);
    }
    gw.limiter.release_admin(limits, peer).await;

    let method = req.method().clone();
    if method == Method::GET {
        let mut all = gw.store.blocks(now_secs()).await?;
        all.sort_by(|a, b| a.key.cmp(&b.key));
        return Ok(ok_json(StatusCode::OK, &json!({ "blocks": all })));
    }
    let body = read_json(req).await?;
    if method == Method::POST {
        let block = new_block(&body)?;
        let held = gw.validator.block_stats();
        if held.jti_blocks + held.sub_blocks >= MAX_BLOCKS {
            return Err(ApiError::BadRequest(format!(
                "There are {MAX_BLOCKS} blocks in force already: remove some first."
            )));
        }
        gw.block(block.clone()).await?;
        tracing::warn!(
            security_event = "block_added",
            kind = block.key.kind.as_str(),
            value = %block.key.value,
            iss = block.key.iss.as_deref().unwrap_or("*"),
            expires_at = block.expires_at,
            source = %peer,
            "operator block added: matching tokens are refused"
        );
        let mut v = serde_json::to_value(&block).unwrap_or(Value::Null);
        // Stored all the same (another replica's config may know the issuer), but an `iss`
        // that matches no issuer this configuration accepts blocks nothing here: a name
        // instead of the URL, or a trailing slash, is the usual slip.
        if let Some(iss) = block.key.iss.as_deref()
            && iss != rt.config.issuer()
            && !rt.issuers.iter().any(|i| i.config.issuer == iss)
        {
            v["warning"] = format!(
                "iss {iss:?} is no issuer this gateway accepts (ours is {:?}; trusted issuers are named by their issuer URL): this block matches nothing here",
                rt.config.issuer()
            )
            .into();
        }
        return Ok(ok_json(StatusCode::CREATED, &v));
    }
    let key = block_key(&body)?;
    if !gw.unblock(&key).await? {
        return Err(ApiError::NotFound);
    }
    tracing::warn!(
        security_event = "block_removed",
        kind = key.kind.as_str(),
        value = %key.value,
        iss = key.iss.as_deref().unwrap_or("*"),
        source = %peer,
        "operator block removed"
    );
    Ok(ok_json(StatusCode::OK, &json!({ "removed": true })))
}

fn ok_json(status: StatusCode, v: &Value) -> Response<Body> {
    let mut resp = json(status, v);
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// The key from exactly one `Authorization: Bearer <key>` (this spelling, one space).
/// Anything else carries no key: 401 with the bare challenge (RFC 6750 §3.1).
fn api_key(headers: &HeaderMap) -> Result<&str, ApiError> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let (Some(value), None) = (values.next(), values.next()) else { return Err(ApiError::MissingKey) };
    let key = value.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")).ok_or(ApiError::MissingKey)?;
    if key.is_empty() || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::MissingKey);
    }
    Ok(key)
}

/// The body of a JSON request, within [`MAX_BODY`] and [`BODY_TIMEOUT`].
async fn read_json<B>(req: Request<B>) -> Result<Bytes, ApiError>
where
    B: HttpBody<Data = Bytes>,
    B::Error: Into<crate::http::BoxError>,
{
    let json_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json")));
    // One Content-Type, in a charset where the JSON's bytes are its text (as at the OAuth
    // endpoints): two, or UTF-16, would be a body read as something else than was sent.
    let one = req.headers().get_all(header::CONTENT_TYPE).iter().nth(1).is_none();
    if !json_type || !one || !crate::http::ascii_charsets_only(req.headers()) {
        return Err(ApiError::BadRequest("The body must be application/json.".into()));
    }
    let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(ApiError::TooLarge);
    }
    let limited = http_body_util::Limited::new(req.into_body(), MAX_BODY);
    match tokio::time::timeout(BODY_TIMEOUT, limited.collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::TooLarge),
        Ok(Err(_)) => Err(ApiError::BadRequest("The body could not be read.".into())),
        Err(_) => Err(ApiError::BadRequest("The body did not arrive in time.".into())),
    }
}

/// `POST /blocks`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BlockRequest {
    jti: Option<String>,
    sub: Option<String>,
    iss: Option<String>,
    expires_in: Option<u64>,
    reason: Option<String>,
}

/// `DELETE /blocks`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UnblockRequest {
    jti: Option<String>,
    sub: Option<String>,
    iss: Option<String>,
}

/// Parse the body as `T` straight from its bytes, so that serde's derive sees (and
/// refuses) a repeated key, which a `Value` would silently collapse. Its message says
/// what was wrong (unknown, repeated or mistyped field, not an object).
fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    // The derive would also read a struct from an array (`["alice"]` as a jti).
    if body.trim_ascii_start().first() != Some(&b'{') {
        return Err(ApiError::BadRequest("The body must be a JSON object.".into()));
    }
    serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(format!("Bad block: {e}.")))
}

fn new_block(body: &[u8]) -> Result<Block, ApiError> {
    let r: BlockRequest = parse(body)?;
    let key = key_of(r.jti, r.sub, r.iss)?;
    if let Some(reason) = &r.reason {
        tidy("reason", reason, MAX_REASON)?;
    }
    let now = now_secs();
    let expires_in = match (r.expires_in, key.kind) {
        (Some(0), _) => return Err(ApiError::BadRequest("expires_in must be at least 1 (seconds).".into())),
        (Some(n), _) if n > MAX_EXPIRES_IN => {
            return Err(ApiError::BadRequest(format!(
                "expires_in is over {MAX_EXPIRES_IN} seconds; leave it out for a block until removed."
            )));
        }
        (Some(n), _) => Some(n),
        // Until removed: no lifetime the gateway knows bounds every token a jti may name.
        (None, _) => None,
    };
    Ok(Block { key, expires_at: expires_in.map(|n| now.saturating_add(n)), created_at: now, reason: r.reason })
}

fn block_key(body: &[u8]) -> Result<BlockKey, ApiError> {
    let r: UnblockRequest = parse(body)?;
    key_of(r.jti, r.sub, r.iss)
}

fn key_of(jti: Option<String>, sub: Option<String>, iss: Option<String>) -> Result<BlockKey, ApiError> {
    let (kind, value) = match (jti, sub) {
        (Some(v), None) => (BlockKind::Jti, v),
        (None, Some(v)) => (BlockKind::Sub, v),
        _ => return Err(ApiError::BadRequest("Name exactly one of jti and sub.".into())),
    };
    tidy(kind.as_str(), &value, MAX_IDENTITY)?;
    // A whole JWT pasted where its jti or sub belongs: refused, and so never logged.
    if value.starts_with("eyJ") && value.matches('.').count() == 2 {
        return Err(ApiError::BadRequest(format!("The {} looks like a whole token; give its claim.", kind.as_str())));
    }
    if let Some(iss) = &iss {
        tidy("iss", iss, MAX_ISS)?;
    }
    Ok(BlockKey { kind, value, iss })
}

/// Refuse what cannot be a claim an operator meant, by the rule a trusted issuer's token
/// is held to ([`text::check`]): every subject a token can carry can be blocked, and no
/// block names a value no token can carry.
fn tidy(field: &str, v: &str, max: usize) -> Result<(), ApiError> {
    text::check(v, max).map_err(|why| ApiError::BadRequest(format!("{field} {why}.")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&[u8]]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(header::AUTHORIZATION, HeaderValue::from_bytes(v).unwrap());
        }
        h
    }

    #[test]
    fn the_key_comes_only_from_one_bearer_header_in_its_one_spelling() {
        assert_eq!(api_key(&headers(&[b"Bearer k3y"])).ok(), Some("k3y"));
        for bad in [
            &[][..],
            &[&b"bearer k3y"[..]][..],
            &[&b"BEARER k3y"[..]][..],
            &[&b"Basic azN5Og=="[..]][..],
            &[&b"Bearer"[..]][..],
            &[&b"Bearer "[..]][..],
            &[&b"Bearer  k3y"[..]][..],
            &[&b"Bearer k3y x"[..]][..],
            &[&b"Bearer k\xffy"[..]][..],
            &[&b"Bearer k3y"[..], &b"Bearer k3y"[..]][..],
        ] {
            assert!(matches!(api_key(&headers(bad)), Err(ApiError::MissingKey)), "{bad:?}");
        }
    }

    #[test]
    fn block_requests_name_one_tidy_claim() {
        let key = |v: Value| block_key(v.to_string().as_bytes()).map_err(|e| format!("{e:?}"));
        assert_eq!(
            key(json!({"sub": "alice", "iss": "https://idp"})).unwrap(),
            BlockKey { kind: BlockKind::Sub, value: "alice".into(), iss: Some("https://idp".into()) }
        );
        assert_eq!(key(json!({"jti": "j-1"})).unwrap().kind, BlockKind::Jti);
        for bad in [
            json!({}),
            json!({"jti": "a", "sub": "b"}),
            json!({"jti": ""}),
            json!({"jti": " a"}),
            json!({"sub": "a\u{0}"}),
            json!({"sub": "a\nb"}),
            json!({"sub": "ali\u{200B}ce"}),
            json!({"sub": "\u{202E}ecila"}),
            json!({"sub": "a\u{E0041}b"}),
            json!({"sub": "al\u{2028}ice"}),
            json!({"jti": "x".repeat(MAX_IDENTITY + 1)}),
            json!({"jti": "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJhIn0.c2ln"}),
            json!({"jti": 5}),
            json!({"jti": "a", "scope": "x"}),
            json!({"jti": "a", "iss": ""}),
            json!(["jti", "a"]),
            json!(["alice"]),
            json!([null, "alice"]),
        ] {
            assert!(key(bad.clone()).is_err(), "{bad}");
        }
        let raw = |body: &str| block_key(body.as_bytes()).map_err(|e| format!("{e:?}"));
        let twice = raw(r#"{"sub": "alice", "sub": "mallory"}"#).unwrap_err();
        assert!(twice.contains("duplicate field"), "{twice}");
        assert!(raw(r#"{"sub": "alice", "iss": "a", "iss": "b"}"#).is_err());
        assert!(raw(r#"{"sub": "alice"} trailing"#).is_err());
        assert!(raw(r#"{"sub": "\ud800"}"#).is_err(), "a lone surrogate is no text");
    }
}
