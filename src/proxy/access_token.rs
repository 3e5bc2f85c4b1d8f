//! The `access_token` request parameter (RFC 6750 §2.2, §2.3): the proxy takes it out of
//! queries and form bodies before forwarding, so a token a caller passes beside its bearer
//! header never reaches an upstream (and cannot be used there as a second credential).
//! Names are matched the way the loosest upstream framework reads them.

use http::header::{self, HeaderMap};

use crate::cookies;

/// Is the request body `application/x-www-form-urlencoded` (RFC 6750 §2.2's form) to any
/// upstream? Read as loosely as the loosest parser: PHP ends the media type at the first
/// `;`, `,` or space, so `application/x-www-form-urlencoded, text/plain` is a form there,
/// and a form is what gets its `access_token` removed (fails closed).
pub(super) fn is_form(headers: &HeaderMap) -> bool {
    headers.get_all(header::CONTENT_TYPE).iter().any(|v| {
        let v = cookies::trim(v.as_bytes());
        let essence = v.split(|&b| matches!(b, b';' | b',' | b' ' | b'\t')).next().unwrap_or_default();
        essence.eq_ignore_ascii_case(b"application/x-www-form-urlencoded")
    })
}

/// `input` (a query or form body) without its `access_token` parameters, the other
/// pieces and their separators kept byte for byte; `None` when there is none. Pieces are
/// separated by `&` and by `;` (which older CGI libraries, Java servlet containers and
/// Python before 3.9.2 also split on). A name is an access token's by
/// [`is_access_token_name`].
pub fn without_access_token(input: &[u8]) -> Option<Vec<u8>> {
    // Fast path: no `%` and no literal `access` (in any case) means nothing to take out.
    if !input.contains(&b'%') && !input.windows(6).any(|w| w.eq_ignore_ascii_case(b"access")) {
        return None;
    }
    let is_token = |piece: &[u8]| {
        let name = piece.split(|&b| b == b'=').next().unwrap_or_default();
        form_urlencoded::parse(name).next().is_some_and(|(k, v)| v.is_empty() && is_access_token_name(&k))
    };
    // Each piece with the separator before it (none for the first).
    let mut pieces: Vec<(Option<u8>, &[u8])> = Vec::new();
    let mut sep = None;
    let mut from = 0;
    for (i, &b) in input.iter().enumerate() {
        if b == b'&' || b == b';' {
            pieces.push((sep, &input[from..i]));
            sep = Some(b);
            from = i + 1;
        }
    }
    pieces.push((sep, &input[from..]));
    if !pieces.iter().any(|(_, p)| is_token(p)) {
        return None;
    }
    let mut out = Vec::with_capacity(input.len());
    for (i, (sep, piece)) in pieces.into_iter().filter(|(_, p)| !is_token(p)).enumerate() {
        if i > 0 {
            out.push(sep.unwrap_or(b'&'));
        }
        out.extend_from_slice(piece);
    }
    Some(out)
}

/// Would a framework read this (decoded) parameter name as `access_token`? Compared
/// without regard to case (RFC 6750 §2.3 names it case-sensitively, but frameworks that
/// read parameters case-insensitively would still see a token), after PHP's mapping of
/// `.`, ` ` and `[` to `_` and its dropping of leading spaces, and with PHP's array form
/// (`access_token[]`, `access_token[x]`) counted too.
pub fn is_access_token_name(name: &str) -> bool {
    let name = name.trim_start_matches(' ');
    let php = |s: &str| {
        s.len() == 12
            && s.bytes().zip(b"access_token".iter()).all(|(a, &b)| {
                let a = if matches!(a, b'.' | b' ' | b'[') { b'_' } else { a };
                a.eq_ignore_ascii_case(&b)
            })
    };
    php(name) || name.split_once('[').is_some_and(|(base, _)| php(base))
}

#[cfg(test)]
mod tests {
    use super::without_access_token;

    fn strip(s: &str) -> Option<String> {
        without_access_token(s.as_bytes()).map(|v| String::from_utf8(v).unwrap())
    }

    #[test]
    fn access_token_is_taken_out_in_every_spelling_and_the_rest_kept_exactly() {
        assert_eq!(strip("a=1&b=%2F+x"), None);
        assert_eq!(strip("a=1&access_token=t&b=%2F+x"), Some("a=1&b=%2F+x".into()));
        assert_eq!(strip("access_token=t"), Some(String::new()));
        assert_eq!(strip("access%5Ftoken=t&a"), Some("a".into()));
        assert_eq!(strip("%61ccess_token=t&a=&"), Some("a=&".into()));
        assert_eq!(strip("ACCESS_TOKEN=t&Access_Token=u&x=access_token"), Some("x=access_token".into()));
        assert_eq!(strip("access_token&access_token=&access_token=a=b"), Some(String::new()));
        // Not the name: a longer name, a prefix, the value.
        assert_eq!(strip("access_tokens=t&my_access_token=t&a=access_token"), None);
        assert_eq!(strip("x=%41"), None);
    }

    /// Review 23.5: `;` separates too, and the names PHP maps to `access_token`.
    #[test]
    fn semicolons_and_php_name_mangling_do_not_hide_a_token() {
        assert_eq!(strip("a=1;access_token=T"), Some("a=1".into()));
        assert_eq!(strip("a=1&access_token=T;b=2&c"), Some("a=1;b=2&c".into()));
        for name in [
            "access.token",
            "access%20token",
            "access+token",
            "access[token",
            "ACCESS.TOKEN",
            "%20access_token",
            "access_token[]",
            "access_token[x]",
            "access%5Btoken",
            "access%2etoken",
        ] {
            assert_eq!(strip(&format!("a=1&{name}=T&b=2")), Some("a=1&b=2".into()), "{name}");
        }
        // Not PHP's access_token: an array `access` with key `token`, longer names.
        assert_eq!(strip("access[token]=T&access_tokenx=1&accessXtoken=2"), None);
    }
}
