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
/// (`%61` for `a`, `%2f` for `/`, `%00`). What we route on is then exactly what the
/// upstream sees.
pub fn is_safe_path(path: &str) -> bool {
    if !path.starts_with('/') || path.contains(['\\', ';']) || path.contains("//") {
        return false;
    }
    let bytes = path.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let Some(hex) = path.get(i + 1..i + 3) else { return false };
            let Ok(b) = u8::from_str_radix(hex, 16) else { return false };
            // Only escapes that cannot be decoded into path syntax or an unreserved
            // character: non-ASCII bytes and reserved delimiters other than '/'.
            let allowed = b >= 0x80 || b" !\"#$&'()*+,:<=>?@[]^`{|}".contains(&b);
            if !allowed {
                return false;
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    !path.split('/').any(|seg| seg == "." || seg == "..")
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
