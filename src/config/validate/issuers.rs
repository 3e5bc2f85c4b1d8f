//! `[[trusted_issuer]]`, and what routes say about issuers and claims (`issuers`,
//! `[route.claims]`). The CA file an issuer names is read when its client is built
//! (`crate::issuers`), not here.

use std::sync::Arc;
use std::time::Duration;

use toml::Spanned;

use super::{Validator, is_loopback};
use crate::config::ConfigError;
use crate::config::model::{ClaimRule, ClaimTest, Introspection, JwksSource, JwsAlgorithm, SELF_ISSUER, TrustedIssuer};
use crate::config::raw::{RawRoute, RawTrustedIssuer};

/// Leeway beyond this is a clock problem to fix, not to paper over.
const MAX_LEEWAY: Duration = Duration::from_secs(300);
/// A JWK Set larger than this is refused whatever the configuration says.
const MAX_JWKS_BYTES: u64 = 16 * 1024 * 1024;
/// An active introspection answer is reused at most this long (issue 16.3): a revocation
/// at the IdP must show within it.
const MAX_INTROSPECTION_CACHE: Duration = Duration::from_secs(3600);
/// `refresh_min` and `refetch_interval` at least this: how often an IdP may be asked.
const MIN_FETCH_INTERVAL: Duration = Duration::from_secs(1);
/// An inactive answer or a failure is reused at most this long.
const MAX_NEGATIVE_CACHE: Duration = Duration::from_secs(60);

impl Validator<'_> {
    pub(super) fn trusted_issuers(
        &self,
        raw: &[Spanned<RawTrustedIssuer>],
        own_issuer: &str,
    ) -> Result<Vec<Arc<TrustedIssuer>>, ConfigError> {
        let mut out: Vec<Arc<TrustedIssuer>> = Vec::new();
        for r in raw {
            let i = self.trusted_issuer(r, own_issuer)?;
            if out.iter().any(|o| o.name == i.name) {
                return Err(self.err(r.get_ref().name.span(), format!("duplicate trusted issuer name {:?}", i.name)));
            }
            if out.iter().any(|o| same_issuer(&o.issuer, &i.issuer)) {
                return Err(self.err(
                    r.get_ref().issuer.span(),
                    format!("issuer {:?} is already trusted under another name: one iss picks one issuer", i.issuer),
                ));
            }
            out.push(Arc::new(i));
        }
        Ok(out)
    }

    fn trusted_issuer(&self, r: &Spanned<RawTrustedIssuer>, own_issuer: &str) -> Result<TrustedIssuer, ConfigError> {
        let r = r.get_ref();
        let line = self.line_of(r.name.span().start);
        let name = r.name.get_ref().trim();
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
            return Err(
                self.err(r.name.span(), format!("bad issuer name {name:?}: use letters, digits, '-', '_' or '.'"))
            );
        }
        // Any case: `SELF` in a route's issuers would read as the gateway to a person.
        if name.eq_ignore_ascii_case(SELF_ISSUER) {
            return Err(self.err(
                r.name.span(),
                format!("issuer name {name:?} is reserved for the gateway itself ({SELF_ISSUER:?}, in any case)"),
            ));
        }
        let introspecting = match r.kind.as_ref().map(|k| k.get_ref().as_str()) {
            None | Some("jwt") => false,
            Some("introspection") => true,
            Some(other) => {
                return Err(self.err(
                    r.kind.as_ref().map_or(r.name.span(), |k| k.span()),
                    format!("unknown issuer kind {other:?}: use \"jwt\" or \"introspection\""),
                ));
            }
        };
        // Each kind's own keys, refused on the other: a key that does nothing would mislead.
        let jwt_only = [
            ("jwks_uri", r.jwks_uri.as_ref().map(|v| v.span())),
            ("algorithms", r.algorithms.as_ref().map(|v| v.first().map_or(r.name.span(), |a| a.span()))),
            ("leeway", r.leeway.as_ref().map(|v| v.span())),
            ("subject_claim", r.subject_claim.as_ref().map(|v| v.span())),
            ("client_id_claim", r.client_id_claim.as_ref().map(|v| v.span())),
            ("scope_claim", r.scope_claim.as_ref().map(|v| v.span())),
            ("connect_timeout", r.connect_timeout.as_ref().map(|v| v.span())),
            ("refresh_min", r.refresh_min.as_ref().map(|v| v.span())),
            ("refresh_max", r.refresh_max.as_ref().map(|v| v.span())),
            ("refetch_interval", r.refetch_interval.as_ref().map(|v| v.span())),
            ("max_jwks_bytes", r.max_jwks_bytes.as_ref().map(|v| v.span())),
        ];
        let introspection_only = [
            ("introspection_endpoint", r.introspection_endpoint.as_ref().map(|v| v.span())),
            ("client_id", r.client_id.as_ref().map(|v| v.span())),
            ("client_secret", r.client_secret.as_ref().map(|v| v.span())),
            ("max_cache", r.max_cache.as_ref().map(|v| v.span())),
            ("negative_cache", r.negative_cache.as_ref().map(|v| v.span())),
        ];
        let (misplaced, why) = if introspecting {
            (
                &jwt_only[..],
                "is for kind = \"jwt\": an introspection issuer's tokens are judged by the IdP, and RFC 7662 \
                 names their members (sub, client_id, scope); it takes only timeout",
            )
        } else {
            (&introspection_only[..], "is for kind = \"introspection\" (opaque tokens, RFC 7662)")
        };
        if let Some((key, Some(span))) = misplaced.iter().find(|(_, s)| s.is_some()) {
            return Err(self.err(span.clone(), format!("{key} {why}")));
        }

        let issuer = r.issuer.get_ref().trim().to_string();
        let url = self.idp_url(&r.issuer, "issuer")?;
        if url.query().is_some() {
            return Err(self.err(r.issuer.span(), "issuer must have no query"));
        }
        if same_issuer(&issuer, own_issuer) {
            return Err(self.err(
                r.issuer.span(),
                "this is the gateway's own issuer: its tokens are always accepted (as \"self\"); do not list it",
            ));
        }
        let jwks = match &r.jwks_uri {
            Some(u) => {
                self.idp_url(u, "jwks_uri")?;
                JwksSource::Uri(u.get_ref().trim().to_string())
            }
            None => JwksSource::Discovery,
        };

        let algs = match &r.algorithms {
            Some(a) => a.as_slice(),
            None if introspecting => &[],
            None => {
                return Err(self.err(
                    r.name.span(),
                    "algorithms is required (e.g. [\"RS256\"]): the algorithm is never taken from the token",
                ));
            }
        };
        let mut algorithms = Vec::new();
        for a in algs {
            let s = a.get_ref();
            let alg = JwsAlgorithm::parse(s).ok_or_else(|| {
                let why = if s.eq_ignore_ascii_case("none") {
                    "unsigned tokens are never accepted".to_string()
                } else if s.to_ascii_uppercase().starts_with("HS") {
                    "HMAC needs a secret shared with the issuer; an external issuer must sign with a public key"
                        .to_string()
                } else {
                    let names: Vec<_> = JwsAlgorithm::ALL.iter().map(|a| a.as_str()).collect();
                    format!("use {}", names.join(", "))
                };
                self.err(a.span(), format!("algorithm {s:?} not allowed for a trusted issuer: {why}"))
            })?;
            if !algorithms.contains(&alg) {
                algorithms.push(alg);
            }
        }
        if algorithms.is_empty() && !introspecting {
            return Err(self.err(r.name.span(), "algorithms must name at least one algorithm"));
        }

        let audiences = match &r.audience {
            None => {
                return Err(self.err(
                    r.name.span(),
                    "audience is required: without it a token the IdP issued for any other application would pass",
                ));
            }
            Some(v) => {
                let list: Vec<&toml::Value> = match v.get_ref() {
                    toml::Value::Array(a) => a.iter().collect(),
                    one => vec![one],
                };
                let mut out = Vec::new();
                for item in list {
                    match item.as_str().map(str::trim) {
                        Some(s) if !s.is_empty() => out.push(s.to_string()),
                        _ => return Err(self.err(v.span(), "audience must be a non-empty string or a list of them")),
                    }
                }
                if out.is_empty() {
                    return Err(self.err(v.span(), "audience must name at least one audience"));
                }
                out
            }
        };

        let leeway = self.duration_or_zero(&r.leeway, Duration::from_secs(30))?;
        if leeway > MAX_LEEWAY {
            return Err(self.err(r.leeway.as_ref().map_or(r.name.span(), |l| l.span()), "leeway may be at most 5m"));
        }
        let claim = |v: &Option<Spanned<String>>, field: &str| -> Result<Option<String>, ConfigError> {
            match v {
                None => Ok(None),
                Some(s) if s.get_ref().trim() != s.get_ref() || !is_claim_path(s.get_ref()) => Err(self.err(
                    s.span(),
                    format!("{field} must be a claim name or dotted path, with no empty segment (\".\", \"a..b\")"),
                )),
                Some(s) => Ok(Some(s.get_ref().clone())),
            }
        };
        let refresh_min = self.duration(&r.refresh_min, Duration::from_secs(60))?;
        let refetch_interval = self.duration(&r.refetch_interval, Duration::from_secs(30))?;
        // Below a second, an IdP would be fetched from as often as tokens (or clocks) tick.
        for (key, v, d) in
            [("refresh_min", &r.refresh_min, refresh_min), ("refetch_interval", &r.refetch_interval, refetch_interval)]
        {
            if d < MIN_FETCH_INTERVAL {
                let span = v.as_ref().map_or(r.name.span(), |s| s.span());
                return Err(self.err(span, format!("{key} must be at least 1s: it bounds how often the IdP is asked")));
            }
        }
        let timeout = self.duration(&r.timeout, Duration::from_secs(5))?;
        // Unset: 2s, or the whole timeout when that is shorter.
        let connect_timeout = self.duration(&r.connect_timeout, Duration::from_secs(2).min(timeout))?;
        if connect_timeout > timeout {
            let span = r.connect_timeout.as_ref().map_or(r.name.span(), |s| s.span());
            return Err(
                self.err(span, "connect_timeout must not exceed timeout (the whole request, connecting included)")
            );
        }
        let refresh_max = self.duration(&r.refresh_max, Duration::from_secs(3600))?;
        if refresh_min > refresh_max {
            let span = r.refresh_min.as_ref().or(r.refresh_max.as_ref()).map_or(r.name.span(), |s| s.span());
            return Err(self.err(span, "refresh_min must not exceed refresh_max"));
        }
        let max_jwks_bytes = self.number(&r.max_jwks_bytes, 256 * 1024)?;
        if max_jwks_bytes > MAX_JWKS_BYTES {
            let span = r.max_jwks_bytes.as_ref().map_or(r.name.span(), |s| s.span());
            return Err(self.err(span, "max_jwks_bytes may be at most 16777216"));
        }
        Ok(TrustedIssuer {
            name: name.to_string(),
            issuer,
            jwks,
            algorithms,
            audiences,
            leeway,
            subject_claim: claim(&r.subject_claim, "subject_claim")?.unwrap_or_else(|| "sub".into()),
            client_id_claim: claim(&r.client_id_claim, "client_id_claim")?,
            scope_claim: claim(&r.scope_claim, "scope_claim")?,
            ca: r.ca.as_ref().map(|p| self.path(p.get_ref())),
            connect_timeout,
            timeout,
            refresh_min,
            refresh_max,
            refetch_interval,
            max_jwks_bytes: usize::try_from(max_jwks_bytes).unwrap_or(usize::MAX),
            introspection: if introspecting { Some(self.introspection(r)?) } else { None },
            line,
        })
    }

    /// The settings of `kind = "introspection"`: the endpoint, the gateway's credentials
    /// there, and the cache bounds.
    fn introspection(&self, r: &RawTrustedIssuer) -> Result<Introspection, ConfigError> {
        let missing = |key: &str| {
            self.err(
                r.name.span(),
                format!("{key} is required for kind = \"introspection\" (the gateway asks the IdP as a client)"),
            )
        };
        let endpoint = r.introspection_endpoint.as_ref().ok_or_else(|| missing("introspection_endpoint"))?;
        self.idp_url(endpoint, "introspection_endpoint")?;
        let credential = |v: &Option<Spanned<String>>, key: &str| -> Result<String, ConfigError> {
            let v = v.as_ref().ok_or_else(|| missing(key))?;
            let s = v.get_ref();
            if s.is_empty() || s.chars().any(char::is_control) {
                return Err(self.err(v.span(), format!("{key} must be non-empty, without control characters")));
            }
            Ok(s.clone())
        };
        let client_id = credential(&r.client_id, "client_id")?;
        let client_secret = credential(&r.client_secret, "client_secret")?;
        let max_cache = self.duration_or_zero(&r.max_cache, Duration::from_secs(60))?;
        if max_cache > MAX_INTROSPECTION_CACHE {
            return Err(self.err(
                r.max_cache.as_ref().map_or(r.name.span(), |s| s.span()),
                "max_cache may be at most 1h: it is how late a revocation at the IdP may show here",
            ));
        }
        let negative_cache = self.duration_or_zero(&r.negative_cache, Duration::from_secs(5))?;
        if negative_cache > MAX_NEGATIVE_CACHE {
            return Err(self.err(
                r.negative_cache.as_ref().map_or(r.name.span(), |s| s.span()),
                "negative_cache may be at most 1m: an IdP failure is remembered that long, refusing good tokens",
            ));
        }
        Ok(Introspection {
            endpoint: endpoint.get_ref().trim().to_string(),
            client_id,
            client_secret,
            max_cache,
            negative_cache,
        })
    }

    /// An identity provider URL: absolute, https (http only on loopback, for trials and
    /// tests), no credentials or fragment.
    fn idp_url(&self, v: &Spanned<String>, field: &str) -> Result<url::Url, ConfigError> {
        let s = v.get_ref().trim();
        let url =
            url::Url::parse(s).map_err(|e| self.err(v.span(), format!("{field} must be an absolute URL: {e}")))?;
        if url.host().is_none() || s.contains('#') || !url.username().is_empty() || url.password().is_some() {
            return Err(self.err(v.span(), format!("{field} needs a host and no fragment or credentials")));
        }
        match url.scheme() {
            "https" => Ok(url),
            "http" if is_loopback(&url) => Ok(url),
            "http" => {
                let why = if field == "introspection_endpoint" {
                    "the client secret and every token would travel in clear"
                } else {
                    "keys fetched in clear could be replaced"
                };
                Err(self.err(v.span(), format!("{field} {s:?} is http:// off loopback: {why}; use https")))
            }
            _ => Err(self.err(v.span(), format!("{field} must be an https URL"))),
        }
    }

    /// A route's `issuers`: `"self"` or trusted issuer names, at least one.
    pub(super) fn route_issuers(&self, r: &RawRoute, known: &[Arc<TrustedIssuer>]) -> Result<Vec<String>, ConfigError> {
        let Some(list) = &r.issuers else { return Ok(vec![SELF_ISSUER.to_string()]) };
        if r.public {
            return Err(self.err(r.prefix.span(), "a public route reads no token: issuers does not apply"));
        }
        let mut out = Vec::new();
        for n in list {
            let name = n.get_ref();
            if name != SELF_ISSUER && !known.iter().any(|i| &i.name == name) {
                return Err(self.err(
                    n.span(),
                    format!("unknown issuer {name:?}: use \"self\" or the name of a [[trusted_issuer]]"),
                ));
            }
            if !out.contains(name) {
                out.push(name.clone());
            }
        }
        let introspected: Vec<&str> =
            known.iter().filter(|i| i.is_introspection() && out.contains(&i.name)).map(|i| i.name.as_str()).collect();
        if introspected.len() > 1 {
            // At the second one named.
            let span = list.iter().filter(|n| introspected.contains(&n.get_ref().as_str())).nth(1).map(|n| n.span());
            return Err(self.err(
                span.unwrap_or(r.prefix.span()),
                format!(
                    "issuers names {} introspection issuers ({}): an opaque token says nothing of its issuer, so a \
                     route may ask at most one",
                    introspected.len(),
                    introspected.join(", ")
                ),
            ));
        }
        if out.is_empty() {
            return Err(self.err(r.prefix.span(), "issuers must name at least one issuer"));
        }
        Ok(out)
    }

    /// `[route.claims]`: `name = "value"` (also a number or boolean), `name = { one_of = [...] }`
    /// or `name = { contains = "..." }`.
    pub(super) fn route_claims(&self, r: &RawRoute) -> Result<Vec<ClaimRule>, ConfigError> {
        let Some(table) = &r.claims else { return Ok(Vec::new()) };
        if r.public {
            return Err(self.err(r.prefix.span(), "a public route reads no token: claims does not apply"));
        }
        let bad = |claim: &str, why: &str| {
            self.err(
                table.span(),
                format!(
                    "claim rule {claim:?}: {why}; write claim = \"value\", {{ one_of = [\"a\", \"b\"] }} or \
                     {{ contains = \"value\" }}"
                ),
            )
        };
        let mut rules = Vec::new();
        for (claim, value) in table.get_ref() {
            if !is_claim_path(claim) {
                return Err(bad(claim, "a claim name or dotted path, with no empty segment"));
            }
            // An empty value would match a claim that says nothing (`""`, `"a  b"` holds an
            // empty word): it is a mistake, never a requirement.
            let text = |v: &toml::Value| scalar_text(v).filter(|t| !t.is_empty());
            let test = match value {
                toml::Value::Table(t) => {
                    let mut entries = t.iter();
                    let (Some((op, arg)), None) = (entries.next(), entries.next()) else {
                        return Err(bad(claim, "a table holds exactly one of one_of or contains"));
                    };
                    match op.as_str() {
                        "one_of" => {
                            let list = arg.as_array().ok_or_else(|| bad(claim, "one_of takes a list"))?;
                            let values = list
                                .iter()
                                .map(text)
                                .collect::<Option<Vec<_>>>()
                                .filter(|v| !v.is_empty())
                                .ok_or_else(|| bad(claim, "one_of takes a non-empty list of non-empty strings"))?;
                            ClaimTest::OneOf(values)
                        }
                        "contains" => ClaimTest::Contains(
                            text(arg).ok_or_else(|| bad(claim, "contains takes a non-empty string"))?,
                        ),
                        _ => return Err(bad(claim, &format!("unknown test {op:?}"))),
                    }
                }
                v => ClaimTest::Equals(text(v).ok_or_else(|| bad(claim, "not a value to compare with (empty)"))?),
            };
            rules.push(ClaimRule { claim: claim.clone(), test });
        }
        Ok(rules)
    }
}

/// A claim name or dotted path: no empty segment (`""`, `"."`, `"a..b"`, `".a"`, `"a."`),
/// which no token's claim could be found under.
fn is_claim_path(path: &str) -> bool {
    path.split('.').all(|segment| !segment.is_empty())
}

/// Two spellings of one issuer URL: scheme and host compared without case, a default port
/// dropped, trailing `/` ignored (`https://GW.example/` is `https://gw.example`). Not a URL:
/// compared trimmed.
fn same_issuer(a: &str, b: &str) -> bool {
    let norm = |s: &str| match url::Url::parse(s.trim()) {
        Ok(u) => u.as_str().trim_end_matches('/').to_string(),
        Err(_) => s.trim().trim_end_matches('/').to_string(),
    };
    norm(a) == norm(b)
}

/// A string, integer or boolean as the text a claim is compared with.
fn scalar_text(v: &toml::Value) -> Option<String> {
    match v {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}
