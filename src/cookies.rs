//! The gateway's own cookies, and a byte-level reader of cookie pairs. Below both the
//! OAuth endpoints (which set and read the cookies) and the proxy (which keeps them from
//! upstreams in both directions).

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

/// Does a `Set-Cookie` value set one of the gateway's cookies? Its name is read as bytes up
/// to the first `=` or `;`. A nameless cookie (`=name=value`, or no `=` at all) is sent back
/// by browsers as its bare value, so the name inside that value counts too.
pub fn sets_gateway_cookie(set_cookie: &[u8]) -> bool {
    let nv = set_cookie.split(|b| *b == b';').next().unwrap_or_default();
    let (name, value) = match nv.iter().position(|b| *b == b'=') {
        Some(i) => (trim(&nv[..i]), trim(&nv[i + 1..])),
        None => (&[][..], trim(nv)),
    };
    if is_gateway_cookie(name) {
        return true;
    }
    name.is_empty() && is_gateway_cookie(value.split(|b| *b == b'=').next().unwrap_or_default())
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
    fn set_cookie_naming_a_gateway_cookie_is_recognised_however_encoded() {
        for v in [
            &b"__Host-portcullis_session=\xe9vil; Path=/"[..],
            b"__HOST-PORTCULLIS_CSRF=x",
            b"  __Host-portcullis_session\t=y",
            b"=__Host-portcullis_session=z",
            b"__Host-portcullis_session",
            b"__Host-portcullis_session; Path=/",
            b"__Host-portcullis_session=ok; Domain=\xff",
        ] {
            assert!(sets_gateway_cookie(v), "{:?}", String::from_utf8_lossy(v));
        }
        for v in [
            &b"lang=fran\xe7ais"[..],
            b"ok=1; Path=/__Host-portcullis_session",
            b"",
            b"=",
            b"a=__Host-portcullis_session",
        ] {
            assert!(!sets_gateway_cookie(v), "{:?}", String::from_utf8_lossy(v));
        }
    }
}
