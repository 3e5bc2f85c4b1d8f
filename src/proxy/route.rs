//! Phase 1, route: the longest path prefix whose host and method filters match.

use std::sync::Arc;

use http::Method;

use crate::config::Route;

/// Does `path` fall under `prefix` on a segment boundary (`/api` covers `/api/x`, not `/apix`)?
fn under(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    path.strip_prefix(prefix).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// `routes` is sorted longest prefix first, so the first match is the longest.
pub fn route<'a>(routes: &'a [Arc<Route>], host: Option<&str>, method: &Method, path: &str) -> Option<&'a Arc<Route>> {
    routes.iter().find(|r| {
        under(&r.prefix, path)
            && r.host.as_deref().is_none_or(|h| host.is_some_and(|given| given.eq_ignore_ascii_case(h)))
            && r.methods.as_ref().is_none_or(|ms| ms.contains(method))
    })
}

/// Refuse paths that could mean something else upstream than the route we matched:
/// dot segments (plain or percent-encoded, also with `;parameters` after them, which
/// servlet containers drop before resolving them), backslashes and encoded slashes.
pub fn is_safe_path(path: &str) -> bool {
    if !path.starts_with('/') || path.contains('\\') {
        return false;
    }
    let lower = path.to_ascii_lowercase();
    if lower.contains("%2f") || lower.contains("%5c") || lower.contains("%00") {
        return false;
    }
    !lower.split('/').any(|seg| {
        let seg = seg.replace("%2e", ".").replace("%3b", ";");
        let seg = seg.split(';').next().unwrap_or_default();
        seg == "." || seg == ".."
    })
}

/// The path the upstream sees: the upstream's base path, then the request path with the
/// route prefix removed when the route says so.
pub fn upstream_path(route: &Route, path: &str) -> String {
    let rest =
        if route.strip_prefix && route.prefix != "/" { &path[route.prefix.len().min(path.len())..] } else { path };
    let rest = if rest.is_empty() { "/" } else { rest };
    let mut out = String::with_capacity(route.upstream.base_path.len() + rest.len());
    out.push_str(&route.upstream.base_path);
    out.push_str(rest);
    out
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
        assert!(is_safe_path("/api/x;jsessionid=1/y"));
        assert!(is_safe_path("/api/...;/y"));
    }
}
