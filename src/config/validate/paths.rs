//! The paths the gateway answers itself: the issuer's path must be in the normal form the
//! request-path rules accept (the endpoints are served under it), and no two endpoints,
//! in any of the forms they are served at, may share a path.

use std::ops::Range;

use super::super::ConfigError;
use super::super::model::{Config, RESOURCE_METADATA_PATH, issuer_path_of};
use super::super::raw::RawEndpoints;
use super::Validator;

impl Validator<'_> {
    /// The issuer's path, as written: segments of letters, digits and `-._~!$&'()*+,=:@`,
    /// none empty (`//`) or of dots only (`.`, `..`), no percent-encoding, no spaces; one
    /// trailing `/` is allowed (RFC 8414 §3.1 removes it). The endpoints are served under
    /// this path byte for byte, while a request path that is not in normal form is
    /// refused before routing: a path needing normalisation would be served literally,
    /// at a URL that no careful client sends and an intermediary may rewrite.
    pub(super) fn issuer_path(&self, issuer: &str, parsed: &url::Url, span: Range<usize>) -> Result<(), ConfigError> {
        let path = issuer_path_of(issuer);
        let refuse = |why: &str| {
            self.err(span.clone(), format!("issuer path {path:?} {why}: an issuer path is served literally"))
        };
        if let Some(b) = path.bytes().find(|&b| !is_path_byte(b)) {
            return Err(match b {
                b'%' => refuse("has a percent-encoding; write the characters themselves"),
                b' ' => refuse("has a space"),
                _ => refuse("has a character outside letters, digits and -._~!$&'()*+,=:@"),
            });
        }
        // `trim_end_matches` took every trailing '/': more than one left an empty segment.
        let written = issuer.split_once("://").map_or("", |(_, rest)| rest);
        if written.ends_with("//") || path.split('/').skip(1).any(str::is_empty) {
            return Err(refuse("has an empty segment (//)"));
        }
        if path.split('/').skip(1).any(|seg| seg.bytes().all(|b| b == b'.')) {
            return Err(refuse("has a dot segment (. or ..)"));
        }
        // Fail closed on anything else the URL parser would read differently (a '\' in the
        // authority, say): the path it sees must be the path we serve.
        if parsed.path().trim_end_matches('/') != path {
            return Err(refuse("is not in normal form"));
        }
        Ok(())
    }

    /// No request path may reach two endpoints: each configured path, the same under the
    /// issuer's path, and the path-inserted metadata URL are compared all with all (the
    /// first in [`Config::served_paths`] order would win, hiding the other). None may fall
    /// under the protected-resource metadata prefix either.
    pub(super) fn served_paths(
        &self,
        config: &Config,
        raw: &RawEndpoints,
        issuer_span: Range<usize>,
    ) -> Result<(), ConfigError> {
        let line_of = |key: &str| {
            let raw = match key {
                "token" => &raw.token,
                "authorize" => &raw.authorize,
                "revoke" => &raw.revoke,
                "introspect" => &raw.introspect,
                "metadata" => &raw.metadata,
                _ => &raw.jwks,
            };
            raw.as_ref().map(|p| self.line_of(p.span().start))
        };
        let issuer_line = self.line_of(issuer_span.start);
        let served = config.served_paths();
        for (i, (a, path)) in served.iter().enumerate() {
            if path == RESOURCE_METADATA_PATH || path.starts_with(&format!("{RESOURCE_METADATA_PATH}/")) {
                return Err(self.err_at(
                    line_of(a).unwrap_or(issuer_line),
                    format!(
                        "the {a} endpoint would be served at {path:?}, under {RESOURCE_METADATA_PATH} where \
                         protected-resource metadata is (RFC 9728)"
                    ),
                ));
            }
            if let Some((b, _)) = served[i + 1..].iter().find(|(b, p)| p == path && b != a) {
                let line = line_of(a).or(line_of(b)).unwrap_or(issuer_line);
                return Err(self.err_at(
                    line,
                    format!(
                        "the {a} and {b} endpoints would both be served at {path:?} (issuer path {:?}): \
                         one would hide the other",
                        config.issuer_path()
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// RFC 3986 pchar without percent-encoding and without `;` (path parameters, which the
/// request-path rules refuse): unreserved, the other sub-delims, `:` and `@`; and `/`.
fn is_path_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,=:@/".contains(&b)
}
