//! The `access_token` request parameter (RFC 6750 §2.2, §2.3): the proxy takes it out of
//! queries and form bodies before forwarding, so a token a caller passes beside its bearer
//! header never reaches an upstream (and cannot be used there as a second credential).
//! Names are matched the way the loosest upstream framework reads them.

use http::header::{self, HeaderMap};

use crate::cookies;
pub use crate::text::is_access_token_name;

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

/// Can the gateway read a form (urlencoded or multipart) body as an upstream would, to
/// take out or refuse its `access_token`? Not when it is compressed (`Content-Encoding`
/// other than `identity`: ASP.NET Core, Jetty and `mod_deflate` can inflate request bodies)
/// or in a charset where `access_token` is not its ASCII bytes (UTF-16, UTF-7, EBCDIC...).
/// Such a body is refused, not forwarded unread.
pub(super) fn is_readable_form(headers: &HeaderMap) -> bool {
    let identity = headers.get_all(header::CONTENT_ENCODING).iter().all(|v| {
        v.as_bytes().split(|&b| b == b',').all(|c| {
            let c = cookies::trim(c);
            c.is_empty() || c.eq_ignore_ascii_case(b"identity")
        })
    });
    identity && crate::http::ascii_charsets_only(headers)
}

/// `input` (a query or form body) without its `access_token` parameters, the other
/// pieces and their separators kept byte for byte; `None` when there is none. Pieces are
/// separated by `&` and by `;` (which older CGI libraries, Java servlet containers and
/// Python before 3.9.2 also split on). A name is an access token's by
/// [`is_access_token_name`].
pub fn without_access_token(input: &[u8]) -> Option<Vec<u8>> {
    if !holds_access_token(input) {
        return None;
    }
    let mut out = Vec::with_capacity(input.len());
    let mut first = true;
    for piece in input.split(|&b| b == b'&' || b == b';') {
        if is_token_piece(piece) {
            continue;
        }
        // A kept piece other than the first goes with its own separator (the byte before it).
        let at = piece.as_ptr() as usize - input.as_ptr() as usize;
        if !first && let Some(&sep) = at.checked_sub(1).and_then(|i| input.get(i)) {
            out.push(sep);
        }
        first = false;
        out.extend_from_slice(piece);
    }
    Some(out)
}

/// Does `input` (a query or form body) hold an `access_token` parameter? No allocation on
/// the way; the untyped body scan calls it per chunk.
pub fn holds_access_token(input: &[u8]) -> bool {
    // Fast path: ASCII without `%` and without a literal `access` (in any case) means
    // nothing to take out (non-ASCII may spell it in look-alikes).
    if input.is_ascii() && !input.contains(&b'%') && !input.windows(6).any(|w| w.eq_ignore_ascii_case(b"access")) {
        return false;
    }
    input.split(|&b| b == b'&' || b == b';').any(is_token_piece)
}

/// Is this `&`/`;`-separated piece an `access_token` parameter (by its name)?
fn is_token_piece(piece: &[u8]) -> bool {
    let name = piece.split(|&b| b == b'=').next().unwrap_or_default();
    form_urlencoded::parse(name).next().is_some_and(|(k, v)| v.is_empty() && is_access_token_name(&k))
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
        // An array `access` with key `token` squeezes to the name: taken out too (fails
        // closed); longer names stay.
        assert_eq!(
            strip("access[token]=T&access_tokenx=1&accessXtoken=2"),
            Some("access_tokenx=1&accessXtoken=2".into())
        );
    }

    #[test]
    fn compressed_or_non_ascii_forms_are_not_readable() {
        use http::header::{CONTENT_ENCODING, CONTENT_TYPE, HeaderMap, HeaderValue};
        let form = |ct: &'static str, ce: Option<&'static str>| {
            let mut h = HeaderMap::new();
            h.insert(CONTENT_TYPE, HeaderValue::from_static(ct));
            if let Some(ce) = ce {
                h.insert(CONTENT_ENCODING, HeaderValue::from_static(ce));
            }
            super::is_readable_form(&h)
        };
        let urlencoded = "application/x-www-form-urlencoded";
        assert!(form(urlencoded, None));
        assert!(form(urlencoded, Some("identity")));
        assert!(form("application/x-www-form-urlencoded; charset=UTF-8", None));
        assert!(form("application/x-www-form-urlencoded; charset=\"utf-8\"", None));
        assert!(form("multipart/form-data; boundary=x", None));
        assert!(!form("application/x-www-form-urlencoded; xcharset=utf-16le", None));
        assert!(!form("application/x-www-form-urlencoded; x=charset=UTF-16LE", None));
        assert!(!form("application/x-www-form-urlencoded; charset = \"utf-16\"", None));
        // RFC 2231 continuations, which Python's email, Werkzeug and aiohttp join (black-box
        // attack, stop 34: `charset*0=utf-16` passed every charset check as no charset).
        for ct in [
            "application/x-www-form-urlencoded; charset*0=utf-16",
            "application/x-www-form-urlencoded; charset*0=utf-; charset*1=16",
            "application/x-www-form-urlencoded; charset*0*=utf-8''utf-16",
            "application/x-www-form-urlencoded; CHARSET*0=cp037",
            "application/x-www-form-urlencoded; charset*00=utf-16",
        ] {
            assert!(!form(ct, None), "{ct}");
        }
        for cs in ["windows-1251", "ISO-8859-2", "KOI8-R", "EUC-JP", "Shift_JIS", "GBK", "Big5", "iso-8859-15"] {
            let ct: &'static str =
                Box::leak(format!("application/x-www-form-urlencoded; charset={cs}").into_boxed_str());
            assert!(form(ct, None), "{cs}");
        }
        for ce in ["gzip", "GZIP", "deflate", "br", "identity, gzip", "x-gzip"] {
            assert!(!form(urlencoded, Some(ce)), "{ce}");
            assert!(!form("multipart/form-data; boundary=x", Some(ce)), "{ce}");
        }
        for cs in ["utf-16le", "UTF-16", "utf-7", "cp037", "utf-32", "\"utf-16le\"", "utf-8; charset*=utf-8''utf-16le"]
        {
            let ct: &'static str =
                Box::leak(format!("application/x-www-form-urlencoded; charset={cs}").into_boxed_str());
            assert!(!form(ct, None), "{cs}");
        }
    }

    /// Black-box attack, session 26: names PHP (NUL), Rack (brackets) and Unicode-aware
    /// case-insensitive comparisons read as `access_token`.
    #[test]
    fn names_other_frameworks_read_as_access_token_are_taken_out() {
        for name in [
            "access_token%00",
            "access_token%00junk",
            "[access_token]",
            "%5Baccess_token%5D",
            "access_token]",
            "]access_token",
            "acce%C5%BFs_token",
            "access_to%E2%84%AAen",
            "%EF%BD%81ccess_token",
            "access%C1%9Ftoken",
            "accessToken",
            "access-token",
            // Second attack: IIS %u escapes, capital sharp s, NFKC compatibility letters.
            "%u0061ccess_token",
            "%U0061%U0063cess_token",
            "ACCE%E1%BA%9E_TOKEN",
            "%F0%9D%90%9Access_token",
            "a%E3%8F%84ess_token",
            "%E1%B5%83ccess_token",
        ] {
            assert_eq!(strip(&format!("a=1&{name}=T&b=2")), Some("a=1&b=2".into()), "{name}");
        }
        // Raw UTF-8 look-alikes in a form body (no `%`, no ASCII `access`).
        assert_eq!(strip("a=1&acce\u{17f}s_token=T"), Some("a=1".into()));
        assert_eq!(strip("a=1&\u{ff41}\u{ff43}\u{ff43}\u{ff45}\u{ff53}\u{ff53}_token=T"), Some("a=1".into()));
        assert_eq!(strip("a=1&accesstokens=T&access_token_id=2"), None);
    }
}
