//! The gateway's own cookies, a byte-level reader of cookie pairs, and a scan for the
//! gateway's names anywhere in a header. Below both the OAuth endpoints (which set and read
//! the cookies) and the proxy (which keeps them from upstreams in both directions).

/// The login session at /authorize.
pub const SESSION_COOKIE: &str = "__Host-portcullis_session";
/// The CSRF token of the login and consent forms.
pub const CSRF_COOKIE: &str = "__Host-portcullis_csrf";
/// Every cookie that is the gateway's alone: never sent to an upstream, never set by one.
pub const GATEWAY_COOKIES: [&str; 2] = [SESSION_COOKIE, CSRF_COOKIE];

/// `bytes` without leading and trailing SP and HTAB.
pub fn trim(bytes: &[u8]) -> &[u8] {
    let ws = |b: &u8| *b == b' ' || *b == b'\t';
    let start = bytes.iter().position(|b| !ws(b)).unwrap_or(bytes.len());
    let end = bytes.iter().rposition(|b| !ws(b)).map_or(start, |i| i + 1);
    &bytes[start..end]
}

/// The pairs of a `Cookie` header value, as bytes: split on `;`, each trimmed of SP and
/// HTAB, empty ones skipped. Nothing is decoded, so nothing can fail to parse.
pub fn raw_pairs(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    bytes.split(|b| *b == b';').map(trim).filter(|p| !p.is_empty())
}

/// The name of a pair: the bytes before its first `=`, trimmed; all of it without `=`.
pub fn pair_name(pair: &[u8]) -> &[u8] {
    match pair.iter().position(|b| *b == b'=') {
        Some(i) => trim(&pair[..i]),
        None => pair,
    }
}

/// The `(name, value)` pairs of a `Cookie` header value (or of several, HTTP/2 style, once
/// joined), as bytes: see [`raw_pairs`] and [`pair_name`]; the value is what follows the
/// first `=`, trimmed (empty without `=`).
pub fn pairs(bytes: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    raw_pairs(bytes).map(|pair| match pair.iter().position(|b| *b == b'=') {
        Some(i) => (trim(&pair[..i]), trim(&pair[i + 1..])),
        None => (pair, &pair[pair.len()..]),
    })
}

/// Is `name` one of the gateway's cookies? ASCII case is ignored (fail closed: a server
/// that reads names case-insensitively must not see a variant of ours either).
pub fn is_gateway_cookie(name: &[u8]) -> bool {
    let name = trim(name);
    GATEWAY_COOKIES.iter().any(|g| g.as_bytes().eq_ignore_ascii_case(name))
}

// Every gateway name starts with `_`: the only bytes [`mentions_gateway_cookie`] looks at twice.
const _: () = assert!(SESSION_COOKIE.as_bytes()[0] == b'_' && CSRF_COOKIE.as_bytes()[0] == b'_');

/// Does a gateway cookie name appear anywhere in `bytes`, in any ASCII case? Whatever comes
/// before or after it (`\xa0`, `"`, `=`, `a=1,`) some cookie parser skips or splits on, so
/// the filters drop any pair or `Set-Cookie` that mentions one (fail closed). A scan: each
/// `_` is a candidate, compared in place; no allocation.
pub fn mentions_gateway_cookie(bytes: &[u8]) -> bool {
    bytes.iter().enumerate().any(|(i, b)| {
        *b == b'_'
            && GATEWAY_COOKIES
                .iter()
                .any(|g| bytes[i..].get(..g.len()).is_some_and(|w| w.eq_ignore_ascii_case(g.as_bytes())))
    })
}

/// Does a `Set-Cookie` value set one of the gateway's cookies, or something a client could
/// read as one? It does if it mentions a gateway cookie name anywhere, in any case:
/// `\xa0__Host-…=v`, `"__Host-…"=v`, `==__Host-…`, `x=1, __Host-…=v`, the nameless
/// `=__Host-…=v` (sent back by browsers as its bare value), and after a comma among the
/// attributes (`a=b; Path=/, __Host-…=v`, which a Set-Cookie splitter reads as a second
/// cookie). No upstream has a reason to name our cookies at all.
pub fn sets_gateway_cookie(set_cookie: &[u8]) -> bool {
    mentions_gateway_cookie(set_cookie)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[u8]) -> Vec<&[u8]> {
        pairs(v).map(|(n, _)| n).collect()
    }

    #[test]
    fn pairs_are_read_as_bytes_whatever_the_encoding() {
        let v = "lang=français; __Host-portcullis_session=S;\tb = 2 ;;c;d=e=f".as_bytes();
        let got: Vec<_> = pairs(v).collect();
        assert_eq!(
            got,
            vec![
                (&b"lang"[..], "français".as_bytes()),
                (&b"__Host-portcullis_session"[..], &b"S"[..]),
                (&b"b"[..], &b"2"[..]),
                (&b"c"[..], &b""[..]),
                (&b"d"[..], &b"e=f"[..]),
            ]
        );
        assert_eq!(names(b"a=\xff\x00; \xe9=1"), vec![&b"a"[..], &b"\xe9"[..]]);
        assert_eq!(names(b""), Vec::<&[u8]>::new());
        assert_eq!(names(b" ; ;\t"), Vec::<&[u8]>::new());
    }

    #[test]
    fn gateway_names_are_matched_in_any_case_and_spacing() {
        for n in [&b"__Host-portcullis_session"[..], b"__HOST-PORTCULLIS_CSRF", b" __host-portcullis_session\t"] {
            assert!(is_gateway_cookie(n), "{n:?}");
        }
        for n in [&b"__Host-portcullis_sessio"[..], b"portcullis_session", b"", b"__Host-portcullis_session\xe9"] {
            assert!(!is_gateway_cookie(n), "{n:?}");
        }
    }

    #[test]
    fn gateway_names_are_found_anywhere_in_any_case() {
        for v in [
            &b"__Host-portcullis_session"[..],
            b"a=1;\xa0__Host-portcullis_csrf=ZZ",
            b"\x85__HOST-portcullis_SESSION",
            b"a=1,__Host-portcullis_session=S",
            b"x=__host-portcullis_csrf",
            b"___Host-portcullis_csrfX",
            b"_ga=1; __Host-portcullis_session",
        ] {
            assert!(mentions_gateway_cookie(v), "{:?}", String::from_utf8_lossy(v));
        }
        for v in [
            &b""[..],
            b"_",
            b"_ga=GA1.2; _gid=x",
            b"__Host-portcullis_sessio",
            b"__Host-portcullis_",
            b"portcullis_csrf",
        ] {
            assert!(!mentions_gateway_cookie(v), "{:?}", String::from_utf8_lossy(v));
        }
    }

    #[test]
    fn set_cookie_naming_a_gateway_cookie_is_recognised_however_encoded() {
        for v in [
            &b"__Host-portcullis_session=\xe9vil; Path=/"[..],
            b"__HOST-PORTCULLIS_CSRF=x",
            b"  __Host-portcullis_session\t=y",
            b"=__Host-portcullis_session=z",
            b"__Host-portcullis_session",
            b"__Host-portcullis_session; Path=/",
            b"__Host-portcullis_session=ok; Domain=\xff",
            b"\xa0__Host-portcullis_session=v",
            b"==__Host-portcullis_csrf",
            b"\"__Host-portcullis_session\"=v",
            b"x=1, __Host-portcullis_session=v",
            b"x=1,__host-PORTCULLIS_csrf=v; Path=/",
            b"a=__Host-portcullis_session",
            b"ok=1; Path=/__Host-portcullis_session",
            b"a=b; Path=/, __Host-portcullis_session=v",
            b"a=b; Expires=Wed, 21 Oct 2026 07:28:00 GMT, __Host-portcullis_session=v; Path=/",
            b"a=b;__Host-portcullis_csrf=v",
        ] {
            assert!(sets_gateway_cookie(v), "{:?}", String::from_utf8_lossy(v));
        }
        for v in [
            &b"lang=fran\xe7ais"[..],
            b"ok=1; Path=/",
            b"",
            b"=",
            b"__Host-portcullis_sessio=1",
            b"portcullis_session=1",
        ] {
            assert!(!sets_gateway_cookie(v), "{:?}", String::from_utf8_lossy(v));
        }
    }
}
