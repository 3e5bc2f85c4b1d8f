//! Verifying a JWT of a trusted issuer (`[[trusted_issuer]]`): the key from the issuer's
//! fetched set by `kid`, the algorithm from the configuration (never the token alone),
//! then `iss`, `exp` (required), `nbf`/`iat` with the issuer's leeway, `aud`, and the
//! claim mapping. Called only by the validator, which caches the verdict.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::LEEWAY_SECS;
use super::binding::Binding;
use super::error::TokenError;
use super::principal::{ClaimValue, Principal};
use crate::config::JwsAlgorithm;
use crate::issuers::introspection::{ActiveToken, unique_object};
use crate::issuers::{Found, Issuer};
use crate::text::is_identity;

/// The `iss` a token claims, before anything is verified: it only picks whose keys to
/// verify with. A payload that is not one JSON object, or names `iss` twice, is malformed.
pub(super) fn unverified_iss(token: &str) -> Result<Option<String>, TokenError> {
    #[derive(Deserialize)]
    struct IssOnly {
        iss: Option<String>,
    }
    let payload = token.split('.').nth(1).ok_or(TokenError::Malformed)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload).map_err(|_| TokenError::Malformed)?;
    let c: IssOnly = serde_json::from_slice(&bytes).map_err(|_| TokenError::Malformed)?;
    Ok(c.iss)
}

/// Is `token` shaped as a JWT: is its second dot-separated part base64url of what begins
/// as a JSON object? Such a token is never sent to an introspection endpoint unless its
/// `iss` names that issuer; anything else (an opaque token) may be.
pub(super) fn has_json_payload(token: &str) -> bool {
    token
        .split('.')
        .nth(1)
        .and_then(|p| URL_SAFE_NO_PAD.decode(p).ok())
        .is_some_and(|b| b.trim_ascii_start().first() == Some(&b'{'))
}

fn jws_alg(a: jsonwebtoken::Algorithm) -> Option<JwsAlgorithm> {
    use jsonwebtoken::Algorithm as J;
    Some(match a {
        J::RS256 => JwsAlgorithm::RS256,
        J::RS384 => JwsAlgorithm::RS384,
        J::RS512 => JwsAlgorithm::RS512,
        J::PS256 => JwsAlgorithm::PS256,
        J::PS384 => JwsAlgorithm::PS384,
        J::PS512 => JwsAlgorithm::PS512,
        J::ES256 => JwsAlgorithm::ES256,
        J::ES384 => JwsAlgorithm::ES384,
        J::EdDSA => JwsAlgorithm::EdDSA,
        _ => return None,
    })
}

/// A claim by name, else by dotted path (`realm_access.roles`): names with dots, such as
/// the namespaced claims some IdPs use (`https://example.com/roles`), are found as named.
pub(super) fn lookup<'a>(claims: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    if let Some(v) = claims.get(path) {
        return Some(v);
    }
    let mut parts = path.split('.');
    let mut cur = claims.get(parts.next()?)?;
    for p in parts {
        cur = cur.as_object()?.get(p)?;
    }
    Some(cur)
}

fn number(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| v.as_f64().filter(|f| f.is_finite() && *f >= 0.0).map(|f| f as u64))
}

/// The subject, and each optional identity value the token carries (empty: absent), are
/// tidy ([`crate::text::check`]): the upstream gets them as the issuer wrote them, and an
/// operator can block any subject that gets through (the blocks API takes the same values).
fn identities_ok(subject: &str, optional: &[&str]) -> bool {
    is_identity(subject) && optional.iter().all(|v| v.is_empty() || is_identity(v))
}

/// An RFC 6749 §3.3 scope-token: `1*( %x21 / %x23-5B / %x5D-7E )`, visible ASCII but
/// `"` and `\\`. Anything else (a space, a tab, a newline, U+00A0, U+3000) would let
/// `"x\nread"` be read as two scopes by one reader and as one by another.
fn is_scope_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| matches!(b, 0x21 | 0x23..=0x5B | 0x5D..=0x7E))
}

/// A scope string as RFC 6749 §3.3 writes it: scope-tokens separated by single spaces,
/// split on SP alone (the rule the route's `contains` test applies). Empty: no scopes.
/// `None`: not such a string (a tab or newline, a Unicode space, a doubled, leading or
/// trailing space); the token is refused rather than read one way here and another way
/// upstream.
pub(super) fn scope_string(s: &str) -> Option<&str> {
    (s.is_empty() || s.split(' ').all(is_scope_token)).then_some(s)
}

/// The space-separated scopes: the configured claim, else `scope`, else `scp`; a scope
/// string ([`scope_string`]) or an array of scope-tokens. `None` (the token is refused)
/// when the claim is neither, or when any array item is not one scope-token: an item
/// `"x read"` is not silently dropped, nor split.
fn scopes(claims: &Map<String, Value>, configured: Option<&str>) -> Option<String> {
    let v = match configured {
        Some(c) => lookup(claims, c),
        None => claims.get("scope").or_else(|| claims.get("scp")),
    };
    match v {
        None | Some(Value::Null) => Some(String::new()),
        Some(Value::String(s)) => scope_string(s).map(str::to_string),
        Some(Value::Array(a)) => a
            .iter()
            .map(|item| item.as_str().filter(|s| is_scope_token(s)))
            .collect::<Option<Vec<_>>>()
            .map(|items| items.join(" ")),
        Some(_) => None,
    }
}

/// Verify `token` as one of `issuer`'s. An unknown `kid` makes the issuer refetch its set
/// (rate-limited there) before the token is refused.
pub(super) async fn verify(
    token: &str,
    issuer: &Issuer,
    rule_claims: &[String],
    now: u64,
) -> Result<Principal, TokenError> {
    let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
    if header.crit.is_some() {
        return Err(TokenError::CriticalHeader);
    }
    // Relaxed for IdPs (many send `JWT`, some nothing), but never another JWT kind
    // (an ID token marked as such, a logout or DPoP proof token).
    match header.typ.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None | Some("jwt" | "at+jwt" | "application/at+jwt" | "application/jwt") => {}
        Some(_) => return Err(TokenError::WrongType),
    }
    let cfg = &issuer.config;
    let alg = jws_alg(header.alg).filter(|a| cfg.algorithms.contains(a)).ok_or(TokenError::WrongAlgorithm)?;
    let kid = header.kid.as_deref();
    let find = || match issuer.keys().find(kid, alg) {
        Found::Key(k) => Ok(k.clone()),
        Found::WrongAlgorithm => Err(TokenError::WrongAlgorithm),
        Found::Unknown => Err(TokenError::UnknownKey),
    };
    let key = match find() {
        Err(TokenError::UnknownKey) => {
            issuer.refetch().await;
            find()?
        }
        other => other?,
    };
    let (message, signature) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
    let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| TokenError::Malformed)?;
    if !key.verify(alg, message.as_bytes(), &signature) {
        return Err(TokenError::BadSignature);
    }
    let payload = message.split_once('.').map(|(_, p)| p).ok_or(TokenError::Malformed)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload).map_err(|_| TokenError::Malformed)?;
    // A claim named twice at any depth (`org.team`, `realm_access.roles`) is refused: two
    // parsers would read two tokens.
    let claims = unique_object(&bytes).ok_or(TokenError::Malformed)?;

    if claims.get("iss").and_then(Value::as_str) != Some(cfg.issuer.as_str()) {
        return Err(TokenError::WrongIssuer);
    }
    let leeway = cfg.leeway.as_secs();
    let exp = claims.get("exp").and_then(number).ok_or(TokenError::BadClaims)?;
    if exp.saturating_add(leeway) <= now {
        return Err(TokenError::Expired);
    }
    for name in ["nbf", "iat"] {
        if let Some(v) = claims.get(name)
            && number(v).ok_or(TokenError::BadClaims)? > now.saturating_add(leeway)
        {
            return Err(TokenError::NotYetValid);
        }
    }
    let audience = match claims.get("aud") {
        Some(Value::String(a)) => cfg.audiences.iter().find(|c| *c == a),
        Some(Value::Array(list)) => cfg.audiences.iter().find(|c| list.iter().any(|a| a.as_str() == Some(c.as_str()))),
        _ => None,
    }
    .ok_or(TokenError::WrongAudience)?;
    let subject = lookup(&claims, &cfg.subject_claim).and_then(Value::as_str).ok_or(TokenError::BadClaims)?;
    // Absent is "", but present and not a non-empty string is refused: an ignored
    // `"jti": 42` (or `""`) would make a token no jti block can stop, and the upstream
    // would lose what it was sent. (`azp` is read only when `client_id` is absent.)
    fn text_or_absent(v: Option<&Value>) -> Result<&str, TokenError> {
        match v {
            None => Ok(""),
            Some(Value::String(s)) if !s.is_empty() => Ok(s.as_str()),
            Some(_) => Err(TokenError::BadClaims),
        }
    }
    let client_id = text_or_absent(match &cfg.client_id_claim {
        Some(c) => lookup(&claims, c),
        None => claims.get("client_id").or_else(|| claims.get("azp")),
    })?;
    let scope = scopes(&claims, cfg.scope_claim.as_deref()).ok_or(TokenError::BadClaims)?;
    let jti = text_or_absent(claims.get("jti"))?;
    if !identities_ok(subject, &[client_id, jti]) {
        return Err(TokenError::BadClaims);
    }
    let kept = rule_claims
        .iter()
        .filter_map(|name| lookup(&claims, name).and_then(ClaimValue::from_json).map(|v| (name.as_str().into(), v)))
        .collect();
    // The cache drops a verdict LEEWAY_SECS after `expires_at`: this issuer's leeway instead.
    let expires_at = exp.saturating_add(leeway).saturating_sub(LEEWAY_SECS);
    let key_kid = key.kid.as_deref().unwrap_or("");
    let binding = cnf(claims.get("cnf"))?;
    Principal::build(
        [client_id, subject, &scope, jti, key_kid, audience, issuer.name()],
        kept,
        key.fingerprint,
        expires_at,
    )
    .map(|p| p.bound_to(binding))
    .ok_or(TokenError::BadClaims)
}

/// A trusted issuer's `cnf` (in its JWT or its introspection answer) binds the token
/// exactly as ours does: the proxy path enforces it the same way. One that is not exactly
/// `x5t#S256` or `jkt` refuses the token: it would otherwise pass as a bearer token
/// although its issuer meant it to be sender-constrained.
fn cnf(v: Option<&Value>) -> Result<Option<Binding>, TokenError> {
    match v {
        None => Ok(None),
        Some(v) => Binding::from_json(v).map(Some).map_err(|_| TokenError::BadBinding),
    }
}

/// The verdict on a token `issuer` (an introspection issuer) called active. Its `aud` must
/// hold one of the issuer's audiences (absent: refused, as for JWTs); the subject is `sub`,
/// else `client_id` (RFC 7662 makes `sub` optional: a client acting for itself); identity
/// values that are not tidy ([`crate::text::check`]) and a `scope` that is not an RFC 6749
/// scope string ([`scope_string`]) are refused. Route rules see the RFC 7662 members the answer
/// carries: `sub`, `client_id`, `scope`, `aud` (a list), `iss`, `jti`, `username`.
/// `expires_at` is `exp` capped at `max_cache` from now: nothing vouches for the token
/// beyond that in the cache; a connection it opened lasts to `exp` ([`Principal::lease_until`]).
pub(super) fn from_introspection(
    t: &ActiveToken,
    issuer: &Issuer,
    rule_claims: &[String],
    now: u64,
) -> Result<Principal, TokenError> {
    let cfg = &issuer.config;
    let audience = cfg.audiences.iter().find(|a| t.aud.contains(a)).ok_or(TokenError::WrongAudience)?;
    let client_id = t.client_id.as_deref().unwrap_or("");
    let subject = t
        .sub
        .as_deref()
        .filter(|s| !s.is_empty())
        .or(Some(client_id).filter(|c| !c.is_empty()))
        .ok_or(TokenError::BadClaims)?;
    let scope = scope_string(t.scope.as_deref().unwrap_or("")).ok_or(TokenError::BadClaims)?;
    let jti = t.jti.as_deref().unwrap_or("");
    let username = t.username.as_deref().unwrap_or("");
    if !identities_ok(subject, &[client_id, jti, username]) {
        return Err(TokenError::BadClaims);
    }
    let kept = rule_claims
        .iter()
        .filter_map(|name| {
            let text = |v: &Option<String>| v.as_deref().map(|s| ClaimValue::Text(s.into()));
            let v = match name.as_str() {
                "sub" => text(&t.sub),
                "client_id" => text(&t.client_id),
                "scope" => text(&t.scope),
                "iss" => text(&t.iss),
                "jti" => text(&t.jti),
                "username" => text(&t.username),
                "aud" => Some(ClaimValue::List(t.aud.iter().map(|a| a.as_str().into()).collect())),
                _ => None,
            }?;
            Some((name.as_str().into(), v))
        })
        .collect();
    let max_cache = cfg.introspection.as_ref().map_or(0, |i| i.max_cache.as_secs());
    let expires_at = t.exp.unwrap_or(u64::MAX).min(now.saturating_add(max_cache));
    let binding = cnf(t.cnf.as_ref())?;
    Principal::build([client_id, subject, scope, jti, "", audience, issuer.name()], kept, [0; 32], expires_at)
        .map(|p| p.bound_to(binding))
        // A connection lasts to the token's `exp` (no `exp`: no further than the cache).
        .map(|p| p.lasting_until(t.exp.unwrap_or(expires_at)))
        .ok_or(TokenError::BadClaims)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_claims_and_paths() {
        let enc = |s: &str| format!("e30.{}.sig", URL_SAFE_NO_PAD.encode(s));
        assert_eq!(unverified_iss(&enc(r#"{"iss":"a"}"#)), Ok(Some("a".into())));
        assert_eq!(unverified_iss(&enc(r#"{"iss":"a","iss":"b"}"#)), Err(TokenError::Malformed));
        assert_eq!(unverified_iss(&enc(r#"[1]"#)), Err(TokenError::Malformed));
        assert!(has_json_payload(&enc(r#"{"iss":"a","iss":"b"}"#)) && has_json_payload(&enc(" {}")));
        for opaque in ["opq_abc", "a.b.c", "", &enc("[1]"), "x.e30", "x.e30=.y"] {
            assert_eq!(has_json_payload(opaque), opaque == "x.e30", "{opaque}");
        }
        let m: Map<String, Value> = serde_json::from_str(
            r#"{"realm_access":{"roles":["a","b c","d"]},"https://x.example/t":"acme","scp":["r","w"]}"#,
        )
        .unwrap();
        assert_eq!(lookup(&m, "realm_access.roles").unwrap().as_array().unwrap().len(), 3);
        assert_eq!(lookup(&m, "https://x.example/t").unwrap(), "acme");
        assert!(lookup(&m, "realm_access.nope").is_none());
        assert_eq!(scopes(&m, None).as_deref(), Some("r w"));
        assert_eq!(scopes(&m, Some("realm_access.roles")), None, "an item with a space refuses the token");
    }

    #[test]
    fn scopes_are_rfc6749_scope_tokens_split_on_sp() {
        let of = |json: &str| scopes(&serde_json::from_str(json).unwrap(), None);
        assert_eq!(of(r#"{"scope":"read write:x !#[]~"}"#).as_deref(), Some("read write:x !#[]~"));
        assert_eq!(of(r#"{"scope":""}"#).as_deref(), Some(""));
        assert_eq!(of(r#"{}"#).as_deref(), Some(""));
        assert_eq!(of(r#"{"scp":["read","write"]}"#).as_deref(), Some("read write"));
        assert_eq!(of(r#"{"scp":[]}"#).as_deref(), Some(""));
        for bad in [
            "x\nread",
            "x\tread",
            "x\rread",
            "x\u{000b}read",
            "x\u{000c}read",
            "x\u{00a0}read",
            "x\u{3000}read",
            "x\u{2003}read",
            "x\u{0085}read",
            "x\u{2028}read",
            "x  read",
            " read",
            "read ",
            " ",
            "r\"x",
            "r\\x",
            "r\u{007f}x",
            "r\u{0000}x",
            "lecture\u{00e9}",
        ] {
            let m = |v: Value| v.as_object().cloned().unwrap();
            assert_eq!(scopes(&m(serde_json::json!({ "scope": bad })), None), None, "{bad:?}");
            assert_eq!(scopes(&m(serde_json::json!({ "scp": ["ok", bad] })), None), None, "[{bad:?}]");
        }
        for bad in [
            r#"{"scp":["read",""]}"#,
            r#"{"scp":["read",5]}"#,
            r#"{"scp":["read",null]}"#,
            r#"{"scope":5}"#,
            r#"{"scope":{"a":"read"}}"#,
            r#"{"scp":[["read"]]}"#,
        ] {
            assert_eq!(of(bad), None, "{bad}");
        }
        assert_eq!(scope_string("a b"), Some("a b"));
        assert_eq!(scope_string("a\u{a0}b"), None);
    }
}
