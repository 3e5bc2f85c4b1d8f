//! Phase 1, route: the longest path prefix whose host and method filters match.

use std::sync::Arc;

use http::Method;

use crate::config::Route;

/// Does `path` fall under `prefix` on a segment boundary (`/api` covers `/api/x`, not `/apix`)?
/// Case-insensitive, so that `/API/x` is held to `/api`'s rules rather than falling through
/// to a broader route on an upstream that ignores case: a mismatch fails closed.
fn under(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    match (path.get(..prefix.len()), path.get(prefix.len()..)) {
        (Some(head), Some(rest)) => head.eq_ignore_ascii_case(prefix) && (rest.is_empty() || rest.starts_with('/')),
        _ => false,
    }
}

/// `routes` is sorted longest prefix first, so the first match is the longest.
pub fn route<'a>(routes: &'a [Arc<Route>], host: Option<&str>, method: &Method, path: &str) -> Option<&'a Arc<Route>> {
    routes.iter().find(|r| {
        under(&r.prefix, path)
            && r.host.as_deref().is_none_or(|h| host.is_some_and(|given| given.eq_ignore_ascii_case(h)))
            && r.methods.as_ref().is_none_or(|ms| ms.contains(method))
    })
}

/// Refuse paths that an upstream could normalise into something else than the route we
/// matched: dot segments (plain or percent-encoded), empty segments (`//`), backslashes,
/// `;` path parameters, and percent-encodings of anything but reserved or non-ASCII bytes
/// (`%61` for `a`, `%2f` for `/`, `%00`). Non-ASCII must decode (escapes and all) to
/// valid UTF-8, which refuses overlong forms (`%C0%AE` for `.`) and surrogates, and must
/// hold no look-alike of a separator that an upstream could fold into one (fullwidth
/// `．／＼`, `∕`, `․`, ...). What we route on is then exactly what the upstream sees.
pub fn is_safe_path(path: &str) -> bool {
    if !path.starts_with('/') || path.contains(['\\', ';']) || path.contains("//") {
        return false;
    }
    let bytes = path.as_bytes();
    let mut non_ascii = false;
    let mut i = 0;
    while i < bytes.len() {
        non_ascii |= bytes[i] >= 0x80;
        if bytes[i] == b'%' {
            let Some(hex) = path.get(i + 1..i + 3) else { return false };
            let Ok(b) = u8::from_str_radix(hex, 16) else { return false };
            // Only escapes that cannot be decoded into path syntax or an unreserved
            // character: non-ASCII bytes and reserved delimiters other than '/'.
            let allowed = b >= 0x80 || b" !\"#$&'()*+,:<=>?@[]^`{|}".contains(&b);
            if !allowed {
                return false;
            }
            non_ascii |= b >= 0x80;
            i += 3;
        } else {
            i += 1;
        }
    }
    if non_ascii && !non_ascii_is_safe(bytes) {
        return false;
    }
    !path.split('/').any(|seg| seg == "." || seg == "..")
}

/// Characters that Unicode compatibility normalisation (NFKC) or a "best fit" code page
/// mapping turns into `.`, `/`, `\`, `;` or `%`: an upstream that folds them would see dot
/// segments or separators we did not route on.
const CONFUSABLES: [char; 16] = [
    '\u{FF0E}', // ．fullwidth full stop
    '\u{FF0F}', // ／fullwidth solidus
    '\u{FF3C}', // ＼fullwidth reverse solidus
    '\u{FF1B}', // ；fullwidth semicolon
    '\u{FF05}', // ％fullwidth percent sign
    '\u{FF61}', // ｡ halfwidth ideographic full stop
    '\u{3002}', // 。ideographic full stop (a label separator in IDNA)
    '\u{2024}', // ․ one dot leader
    '\u{2025}', // ‥ two dot leader (NFKC: "..")
    '\u{FE52}', // ﹒small full stop
    '\u{FE54}', // ﹔small semicolon
    '\u{FE68}', // ﹨small reverse solidus
    '\u{2215}', // ∕ division slash
    '\u{2044}', // ⁄ fraction slash
    '\u{2216}', // ∖ set minus
    '\u{29F5}', // ⧵ reverse solidus operator
];

/// The path with its escapes decoded must be valid UTF-8 without confusables.
fn non_ascii_is_safe(bytes: &[u8]) -> bool {
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            // Checked by the caller: two hex digits follow.
            let Some(b) = std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok())
            else {
                return false;
            };
            decoded.push(b);
            i += 3;
        } else {
            decoded.push(bytes[i]);
            i += 1;
        }
    }
    match std::str::from_utf8(&decoded) {
        Ok(text) => !text.contains(CONFUSABLES),
        Err(_) => false,
    }
}

/// The path the upstream sees: the upstream's base path, then the request path with the
/// route prefix removed when the route says so. `None` when that is `path` itself.
pub fn upstream_path(route: &Route, path: &str) -> Option<String> {
    let stripping = route.strip_prefix && route.prefix != "/";
    if !stripping && route.upstream.base_path.is_empty() {
        return None;
    }
    let rest = if stripping { &path[route.prefix.len().min(path.len())..] } else { path };
    let rest = if rest.is_empty() { "/" } else { rest };
    let mut out = String::with_capacity(route.upstream.base_path.len() + rest.len());
    out.push_str(&route.upstream.base_path);
    out.push_str(rest);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_matches_on_segment_boundary() {
        assert!(under("/api", "/api"));
        assert!(under("/api", "/api/v1"));
        assert!(!under("/api", "/apix"));
        assert!(under("/", "/anything"));
    }

    #[test]
    fn prefix_match_ignores_case() {
        assert!(under("/api", "/API/x"));
        assert!(!under("/api", "/APIx"));
    }

    #[test]
    fn paths_an_upstream_would_normalise_are_unsafe() {
        for p in ["//api/x", "/api//x", "/%61pi/x", "/api;x/secret", "/api/%7e", "/api/%zz", "/api/%4"] {
            assert!(!is_safe_path(p), "{p}");
        }
        for p in ["/api/x%20y", "/api/caf%C3%A9", "/api/a%3Fb", "/"] {
            assert!(is_safe_path(p), "{p}");
        }
    }

    #[test]
    fn overlong_utf8_surrogates_and_confusable_separators_are_unsafe() {
        for p in [
            "/api/%C0%AE%C0%AE/admin",
            "/api/%c0%ae",
            "/api/%C0%AF",
            "/api/%E0%80%AE",
            "/api/%E0%80%AF",
            "/api/%F0%80%80%AE",
            "/api/%C1%9C",
            "/api/%C1%81",
            "/api/%ED%A0%80",
            "/api/%ED%BF%BF",
            "/api/%FF",
            "/api/%FE%FF",
            "/api/%C3",
            "/api/%C3x",
            "/api/%80",
            "/api/%F4%90%80%80",
            "/api/%EF%BC%8E%EF%BC%8E/admin",
            "/api/%ef%bc%8f",
            "/api/%EF%BC%BC",
            "/api/%E2%88%95",
            "/api/%E2%80%A4",
            "/api/%E2%80%A5",
            "/api/．．/admin",
            "/api/a／b",
            "/api/a＼b",
            "/api/a∕b",
            "/api/a․b",
            "/api/a。b",
            "/api/caf%C3a9",
        ] {
            assert!(!is_safe_path(p), "{p}");
        }
        for p in ["/api/caf%C3%A9", "/api/café", "/api/%E2%82%AC", "/api/日本", "/api/%F0%9F%98%80", "/api/a.b"] {
            assert!(is_safe_path(p), "{p}");
        }
    }

    #[test]
    fn dot_segments_and_encoded_separators_are_unsafe() {
        assert!(is_safe_path("/api/v1/items"));
        assert!(!is_safe_path("/api/../admin"));
        assert!(!is_safe_path("/api/%2e%2e/admin"));
        assert!(!is_safe_path("/api/%2E./admin"));
        assert!(!is_safe_path("/api/.%2e/admin"));
        assert!(!is_safe_path("/api/./x"));
        assert!(!is_safe_path("/api%2fadmin"));
        assert!(!is_safe_path("/api\\admin"));
        assert!(!is_safe_path("/api/..;/admin"));
        assert!(!is_safe_path("/api/..;jsessionid=x/admin"));
        assert!(!is_safe_path("/api/%2e%2e%3b/admin"));
        assert!(!is_safe_path("/api/.;x"));
        // `;` path parameters are refused outright: servlet containers strip them before
        // resolving the path, so nothing after a `;` can be trusted to mean what we routed.
        assert!(!is_safe_path("/api/x;jsessionid=1/y"));
        assert!(!is_safe_path("/api/...;/y"));
    }
}
