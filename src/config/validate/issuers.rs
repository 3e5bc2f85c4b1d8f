//! `[[trusted_issuer]]`, and what routes say about issuers and claims (`issuers`,
//! `[route.claims]`). The CA file an issuer names is read when its client is built
//! (`crate::issuers`), not here.

use std::sync::Arc;
use std::time::Duration;

use toml::Spanned;

use super::{Validator, is_loopback};
use crate::config::ConfigError;
use crate::config::model::{ClaimRule, ClaimTest, JwksSource, JwsAlgorithm, SELF_ISSUER, TrustedIssuer};
use crate::config::raw::{RawRoute, RawTrustedIssuer};

/// Leeway beyond this is a clock problem to fix, not to paper over.
const MAX_LEEWAY: Duration = Duration::from_secs(300);
/// A JWK Set larger than this is refused whatever the configuration says.
const MAX_JWKS_BYTES: u64 = 16 * 1024 * 1024;

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
            if out.iter().any(|o| o.issuer == i.issuer) {
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
        if name == SELF_ISSUER {
            return Err(
                self.err(r.name.span(), format!("issuer name {SELF_ISSUER:?} is reserved for the gateway itself"))
            );
        }
        match r.kind.as_ref().map(|k| k.get_ref().as_str()) {
            None | Some("jwt") => {}
            Some("introspection") => {
                return Err(self.err(
                    r.kind.as_ref().map_or(r.name.span(), |k| k.span()),
                    "kind = \"introspection\" (opaque tokens, RFC 7662) is not supported yet; only \"jwt\"",
                ));
            }
            Some(other) => return Err(self.err(r.name.span(), format!("unknown issuer kind {other:?}: use \"jwt\""))),
        }
        for (key, v) in [
            ("introspection_endpoint", &r.introspection_endpoint),
            ("client_id", &r.client_id),
            ("client_secret", &r.client_secret),
        ] {
            if let Some(v) = v {
                return Err(self.err(
                    v.span(),
                    format!("{key}: introspection of opaque tokens is not supported yet; trusted issuers are JWT only"),
                ));
            }
        }

        let issuer = r.issuer.get_ref().trim().to_string();
        let url = self.idp_url(&r.issuer, "issuer")?;
        if url.query().is_some() {
            return Err(self.err(r.issuer.span(), "issuer must have no query"));
        }
        if issuer == own_issuer {
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

        let Some(algs) = &r.algorithms else {
            return Err(self.err(
                r.name.span(),
                "algorithms is required (e.g. [\"RS256\"]): the algorithm is never taken from the token",
            ));
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
        if algorithms.is_empty() {
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
                Some(s) if s.get_ref().trim().is_empty() || s.get_ref().trim() != s.get_ref() => {
                    Err(self.err(s.span(), format!("{field} must be a claim name or dotted path")))
                }
                Some(s) => Ok(Some(s.get_ref().clone())),
            }
        };
        let refresh_min = self.duration(&r.refresh_min, Duration::from_secs(60))?;
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
            connect_timeout: self.duration(&r.connect_timeout, Duration::from_secs(2))?,
            timeout: self.duration(&r.timeout, Duration::from_secs(5))?,
            refresh_min,
            refresh_max,
            refetch_interval: self.duration(&r.refetch_interval, Duration::from_secs(30))?,
            max_jwks_bytes: usize::try_from(max_jwks_bytes).unwrap_or(usize::MAX),
            line,
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
            "http" => Err(self.err(
                v.span(),
                format!("{field} {s:?} is http:// off loopback: keys fetched in clear could be replaced; use https"),
            )),
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
            if claim.is_empty() || claim.starts_with('.') || claim.ends_with('.') || claim.contains("..") {
                return Err(bad(claim, "a claim name or dotted path"));
            }
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
                                .map(scalar_text)
                                .collect::<Option<Vec<_>>>()
                                .filter(|v| !v.is_empty())
                                .ok_or_else(|| bad(claim, "one_of takes a non-empty list of strings"))?;
                            ClaimTest::OneOf(values)
                        }
                        "contains" => {
                            ClaimTest::Contains(scalar_text(arg).ok_or_else(|| bad(claim, "contains takes a string"))?)
                        }
                        _ => return Err(bad(claim, &format!("unknown test {op:?}"))),
                    }
                }
                v => ClaimTest::Equals(scalar_text(v).ok_or_else(|| bad(claim, "not a value to compare with"))?),
            };
            rules.push(ClaimRule { claim: claim.clone(), test });
        }
        Ok(rules)
    }
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
