//! Phase 1, route: the longest path prefix whose host and method filters match.

use std::sync::Arc;

use http::Method;
use icu_normalizer::ComposingNormalizerBorrowed;

use crate::config::{Route, RouteTable};

/// The longest prefix covering `path` on a segment boundary (`/api` covers `/api/x`, not
/// `/apix`), compared without regard to ASCII case so that `/API/x` is held to `/api`'s
/// rules rather than falling through to a broader route on an upstream that ignores case
/// (a mismatch fails closed), whose host and method filters let the request through.
/// `host` and each route's host are both in [`crate::authority::Authority`]'s normal form
/// (lower-case, no trailing dot), so they compare exactly. An index lookup: see
/// [`RouteTable`]; [`route_linear`] is the plain statement it is tested against.
pub fn route<'a>(
    routes: &'a RouteTable<Route>,
    host: Option<&str>,
    method: &Method,
    path: &str,
) -> Option<&'a Arc<Route>> {
    routes.find(host, method, path)
}

/// Does `path` fall under `prefix` on a segment boundary? Case-insensitive.
#[cfg(any(test, feature = "fuzzing"))]
fn under(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    match (path.get(..prefix.len()), path.get(prefix.len()..)) {
        (Some(head), Some(rest)) => head.eq_ignore_ascii_case(prefix) && (rest.is_empty() || rest.starts_with('/')),
        _ => false,
    }
}

/// [`route`] as a scan: `routes` is sorted longest prefix first, so the first match is the
/// longest. The test oracle of the index (and of the `route` fuzz target); it was the
/// gateway's lookup until it cost more than half the throughput at 10,000 routes.
#[cfg(any(test, feature = "fuzzing"))]
pub fn route_linear<'a>(
    routes: &'a [Arc<Route>],
    host: Option<&str>,
    method: &Method,
    path: &str,
) -> Option<&'a Arc<Route>> {
    routes.iter().find(|r| {
        under(&r.prefix, path)
            && r.host.as_deref().is_none_or(|h| host == Some(h))
            && r.methods.as_ref().is_none_or(|ms| ms.contains(method))
    })
}

/// Refuse paths that an upstream could normalise into something else than the route we
/// matched: dot segments (plain or percent-encoded), empty segments (`//`), backslashes,
/// `;` path parameters, and percent-encodings of anything but reserved or non-ASCII bytes
/// (`%61` for `a`, `%2f` for `/`, `%00`). Non-ASCII must decode (escapes and all) to
/// valid UTF-8, which refuses overlong forms (`%C0%AE` for `.`) and surrogates, must
/// already be in NFKC form, which refuses everything an upstream could fold into other
/// characters (fullwidth `．／＼ａｄｍｉｎ`, `︰`, `…`, `⒈`, `℀`, Greek `;`, ...), and must
/// hold none of the [`BEST_FIT`] look-alikes that NFKC leaves alone (`¥`, `∕`, ...). What
/// we route on is then exactly what the upstream sees. An all-ASCII path (the usual case)
/// never reaches the normaliser.
pub fn is_safe_path(path: &str) -> bool {
    // One pass over the bytes (this runs on every request): separators, escapes, dot
    // segments and whether the normaliser is needed.
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return false;
    }
    let dot_segment = |seg: &[u8]| seg == b"." || seg == b"..";
    let mut non_ascii = false;
    let mut segment = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' | b';' => return false,
            b'/' => {
                if (i > 0 && bytes[i - 1] == b'/') || dot_segment(&bytes[segment..i]) {
                    return false;
                }
                segment = i + 1;
                i += 1;
            }
            b'%' => {
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
            }
            b => {
                non_ascii |= b >= 0x80;
                i += 1;
            }
        }
    }
    if dot_segment(&bytes[segment..]) {
        return false;
    }
    !non_ascii || non_ascii_is_safe(bytes)
}

/// Characters that NFKC leaves alone but that a "best fit" code page mapping (or a
/// look-alike-folding upstream) turns into `.`, `/` or `\`: an upstream that folds them
/// would see dot segments or separators we did not route on. Everything that NFKC itself
/// folds (fullwidth `．／＼；％`, `․`, `‥`, `﹒`, ...) is refused by the NFKC check.
const BEST_FIT: [char; 7] = [
    '\u{00A5}', // ¥ yen sign (Shift_JIS best fit: `\`)
    '\u{20A9}', // ₩ won sign (EUC-KR best fit: `\`)
    '\u{2215}', // ∕ division slash
    '\u{2216}', // ∖ set minus
    '\u{2044}', // ⁄ fraction slash
    '\u{29F5}', // ⧵ reverse solidus operator
    '\u{3002}', // 。ideographic full stop (a label separator in IDNA)
];

/// The path with its escapes decoded must be valid UTF-8, in NFKC form, without a
/// [`BEST_FIT`] look-alike. Anything else fails closed.
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
        Ok(text) => {
            !text.contains(BEST_FIT)
                && !text.chars().any(|c| !c.is_ascii() && (folds_to_ascii(c) || crate::text::invisible(c)))
                && ComposingNormalizerBorrowed::new_nfkc().is_normalized(text)
        }
        Err(_) => false,
    }
}

/// A non-ASCII character whose upper or lower case holds an ASCII one: `ı` (→ `I`), `İ`
/// (→ `i̇`), `ß` (→ `SS`), ... NFKC keeps them, but Java's `equalsIgnoreCase`, JavaScript's
/// and Python's case mappings read `/admın` as `/admin`: a path our ASCII-case-insensitive
/// prefix match would send to another route than the upstream's comparison means.
fn folds_to_ascii(c: char) -> bool {
    c.to_uppercase().any(|u| u.is_ascii()) || c.to_lowercase().any(|l| l.is_ascii())
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

    /// A small deterministic generator (xorshift64*): the same cases on every run.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
            items[self.below(items.len())]
        }

        /// `s` with each ASCII letter's case flipped at random.
        fn case_variant(&mut self, s: &str) -> String {
            s.chars()
                .map(|c| match self.below(3) {
                    0 => c.to_ascii_uppercase(),
                    1 => c.to_ascii_lowercase(),
                    _ => c,
                })
                .collect()
        }
    }

    const SEGMENTS: [&str; 12] =
        ["api", "API", "Api", "apix", "v1", "V1", "x", "items", "a%20b", "caf\u{e9}", "CAF\u{c9}", "-"];
    const HOSTS: [&str; 4] = ["a.example", "b.example", "127.0.0.1", "[::1]"];
    const METHOD_SETS: [&str; 4] = ["[\"GET\"]", "[\"POST\", \"PUT\"]", "[\"get\", \"DELETE\"]", "[\"PATCH\"]"];

    /// A config of up to 24 routes: nested prefixes from [`SEGMENTS`] (case variants,
    /// trailing slashes, `/`), some with a host, some with methods.
    fn route_set(rng: &mut Rng) -> Option<crate::config::Config> {
        let mut text = String::from(
            "issuer = \"https://auth.example\"\n[[listener]]\naddress = \"127.0.0.1:8443\"\ntls = false\n\
             [[key]]\nid = \"k\"\nfile = \"k.pem\"\n",
        );
        for i in 0..1 + rng.below(24) {
            let depth = rng.below(4);
            let mut prefix = String::new();
            for _ in 0..depth {
                prefix.push('/');
                let seg = rng.pick(&SEGMENTS);
                prefix.push_str(&rng.case_variant(seg));
            }
            if prefix.is_empty() || rng.below(6) == 0 {
                prefix.push('/');
            }
            text.push_str(&format!("[[route]]\nprefix = \"{prefix}\"\nupstream = \"http://127.0.0.1:{}\"\n", 1000 + i));
            if rng.below(3) == 0 {
                let host = rng.pick(&HOSTS);
                // Also as written in a config: upper case, a trailing dot.
                let host = match rng.below(3) {
                    0 if !host.starts_with('[') => format!("{}.", host.to_ascii_uppercase()),
                    _ => host.to_string(),
                };
                text.push_str(&format!("host = \"{host}\"\n"));
            }
            if rng.below(3) == 0 {
                text.push_str(&format!("methods = {}\n", rng.pick(&METHOD_SETS)));
            }
        }
        // Two routes that differ only in case, or a duplicate: refused, as the scan never
        // saw such a set either.
        crate::config::Config::parse(&text, std::path::Path::new("gw.toml")).ok()
    }

    fn request_path(rng: &mut Rng) -> String {
        match rng.below(12) {
            0 => String::new(),
            1 => "/".into(),
            2 => "*".into(),
            3 => "api".into(),
            _ => {
                let mut path = String::new();
                for _ in 0..1 + rng.below(5) {
                    path.push('/');
                    let seg = rng.pick(&SEGMENTS);
                    let seg = rng.case_variant(seg);
                    // Prefix-of-segment and segment-of-prefix tricks.
                    match rng.below(8) {
                        0 => path.extend(seg.chars().take(seg.chars().count().saturating_sub(1))),
                        1 => path.push_str(&format!("{seg}x")),
                        2 => {}
                        _ => path.push_str(&seg),
                    }
                }
                if rng.below(5) == 0 {
                    path.push('/');
                }
                path
            }
        }
    }

    /// The index answers exactly as the linear scan, route for route, on thousands of
    /// random route sets and requests.
    #[test]
    fn the_index_answers_as_the_linear_scan() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let methods = [Method::GET, Method::POST, Method::PUT, Method::DELETE, Method::PATCH, Method::HEAD];
        let hosts = [None, Some("a.example"), Some("b.example"), Some("c.example"), Some("127.0.0.1"), Some("[::1]")];
        let (mut sets, mut lookups, mut found) = (0, 0, 0);
        while sets < 3000 {
            let Some(config) = route_set(&mut rng) else { continue };
            sets += 1;
            for _ in 0..40 {
                let path = request_path(&mut rng);
                let host = hosts[rng.below(hosts.len())];
                let method = &methods[rng.below(methods.len())];
                let want = route_linear(&config.routes, host, method, &path);
                let got = route(&config.routes, host, method, &path);
                assert!(
                    match (want, got) {
                        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                        (None, None) => true,
                        _ => false,
                    },
                    "{method} {host:?} {path:?}: scan {:?}, index {:?}, routes {:#?}",
                    want.map(|r| (&r.prefix, &r.host, &r.methods)),
                    got.map(|r| (&r.prefix, &r.host, &r.methods)),
                    config.routes.iter().map(|r| (&r.prefix, &r.host, &r.methods)).collect::<Vec<_>>()
                );
                lookups += 1;
                found += usize::from(want.is_some());
            }
        }
        // Not a vacuous comparison: both answers are common.
        assert!(found > lookups / 5 && found < lookups * 4 / 5, "{found} of {lookups} found");
    }

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

    /// The one-pass [`is_safe_path`] against the rule as it was first written (several
    /// scans), on every path of up to four bytes from an alphabet of the bytes that matter
    /// and on generated longer ones: the same answer for each.
    #[test]
    fn the_one_pass_path_check_answers_as_the_plain_rule() {
        fn plain(path: &str) -> bool {
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
                    if !(b >= 0x80 || b" !\"#$&'()*+,:<=>?@[]^`{|}".contains(&b)) {
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
        let alphabet = ["/", ".", "a", "%", "2", "F", "e", ";", "\\", "\u{FF0E}", "\u{00A5}", "%C3", "%41"];
        let mut paths = vec![String::new()];
        for _ in 0..4 {
            let longer: Vec<String> =
                paths.iter().flat_map(|p| alphabet.iter().map(move |a| format!("{p}{a}"))).collect();
            paths.extend(longer);
            paths.sort();
            paths.dedup();
        }
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        for _ in 0..20_000 {
            let mut p = String::from("/");
            for _ in 0..12 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                p.push_str(alphabet[(state % alphabet.len() as u64) as usize]);
            }
            paths.push(p);
        }
        for p in &paths {
            assert_eq!(is_safe_path(p), plain(p), "{p:?}");
        }
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

    /// `/api/a{text}b`, literally and with every non-ASCII byte percent-encoded.
    fn both_forms(text: &str) -> [String; 2] {
        let encoded: String =
            text.bytes().map(|b| if b.is_ascii() { char::from(b).to_string() } else { format!("%{b:02X}") }).collect();
        [format!("/api/a{text}b"), format!("/api/a{encoded}b")]
    }

    #[test]
    fn characters_that_normalise_into_others_are_unsafe() {
        let mut texts: Vec<String> = [
            "\u{FE30}",                                   // ︰ NFKC ".."
            "\u{2026}",                                   // … NFKC "..."
            "\u{FE19}",                                   // ︙ NFKC "..."
            "\u{1F100}",                                  // 🄀 NFKC "0."
            "\u{2100}",                                   // ℀ NFKC "a/c"
            "\u{2101}",                                   // ℁ NFKC "a/s"
            "\u{2105}",                                   // ℅ NFKC "c/o"
            "\u{2106}",                                   // ℆ NFKC "c/u"
            "\u{037E}",                                   // ; Greek question mark, NFC ";"
            "\u{FE14}",                                   // ︔ NFKC ";"
            "\u{FE6A}",                                   // ﹪ NFKC "%"
            "\u{00A5}",                                   // ¥ best fit for `\`
            "\u{20A9}",                                   // ₩ best fit for `\`
            "\u{2216}",                                   // ∖
            "\u{2044}",                                   // ⁄
            "\u{29F5}",                                   // ⧵
            "\u{FF0E}",                                   // ．
            "\u{FF61}",                                   // ｡
            "\u{FE52}",                                   // ﹒
            "\u{FE68}",                                   // ﹨
            "/\u{FF41}\u{FF44}\u{FF4D}\u{FF49}\u{FF4E}/", // /ａｄｍｉｎ/ NFKC "/admin/"
            "e\u{0301}",                                  // decomposed é: NFC composes it
            "adm\u{0131}n",                               // ı: upper case I
            "ADM\u{0130}N",                               // İ: lower case i + dot
            "acce\u{00DF}",                               // ß: upper case SS
            "\u{200B}..",                                 // zero-width space before ..
            "..\u{200B}",                                 // and after
            ".\u{00AD}.",                                 // soft hyphen
            "\u{0085}",                                   // NEL
            "\u{2028}",                                   // line separator
            "\u{FEFF}",                                   // byte-order mark
        ]
        .iter()
        .map(|t| t.to_string())
        .collect();
        texts.extend(('\u{2488}'..='\u{249B}').map(String::from)); // ⒈..⒛ NFKC "1."..."20."
        for text in &texts {
            for p in both_forms(text) {
                assert!(!is_safe_path(&p), "{p}");
            }
        }
        assert!(!is_safe_path("/\u{FF41}\u{FF44}\u{FF4D}\u{FF49}\u{FF4E}/x"));
        assert!(!is_safe_path("/%EF%BD%81%EF%BD%84%EF%BD%8D%EF%BD%89%EF%BD%8E/x"));
        // Already NFKC: still served.
        for p in ["/api/caf%C3%A9", "/api/caf\u{E9}", "/api/%E6%97%A5%E6%9C%AC", "/api/\u{65E5}\u{672C}", "/api/%CE%B1"]
        {
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
