//! Small HTTP helpers shared by the OAuth endpoints and the proxy path.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, combinators::BoxBody};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The one response body type: fixed bytes for our answers, a stream for proxied ones.
pub type Body = BoxBody<Bytes, BoxError>;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed()
}

/// A JSON response with the given status.
pub fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// A small HTML page (for the few browser-facing answers).
pub fn html(status: StatusCode, body: String) -> Response<Body> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    resp
}

/// Does the request use a transfer coding we do not implement? Only `chunked`, alone and
/// in a single field, is decoded (by hyper); anything else (`gzip, chunked`, `chunked,
/// chunked`, two fields) would reach an upstream re-framed but still coded, so it is
/// refused with 501 (RFC 9112 §6.1) before any endpoint reads the body.
pub fn unsupported_transfer_coding(headers: &http::HeaderMap) -> bool {
    let mut fields = headers.get_all(header::TRANSFER_ENCODING).iter();
    let Some(first) = fields.next() else { return false };
    fields.next().is_some() || !crate::cookies::trim(first.as_bytes()).eq_ignore_ascii_case(b"chunked")
}

/// The tokens of every `Connection` line, trimmed, read as bytes: a byte that is not text
/// beside a name hides no name from the hop-by-hop rule (RFC 9110 §7.6.1).
pub fn connection_tokens(headers: &http::HeaderMap) -> impl Iterator<Item = &[u8]> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(crate::cookies::trim)
}

/// Does every `charset` a `Content-Type` declares name one in which ASCII is itself? Every
/// `charset` followed by `=` anywhere in a `Content-Type` (a parameter's name, `charset*=`,
/// `xcharset=`, or inside another parameter's value: some parsers find it by a substring
/// search) counts. A body in UTF-16, UTF-7 or EBCDIC is refused where the gateway reads it
/// as bytes (the proxy's form scan, the OAuth endpoints), not misread.
pub fn ascii_charsets_only(headers: &http::HeaderMap) -> bool {
    headers.get_all(header::CONTENT_TYPE).iter().all(|v| {
        let v = v.as_bytes();
        (0..v.len().saturating_sub(6)).filter(|&i| v[i..i + 7].eq_ignore_ascii_case(b"charset")).all(|i| {
            let rest = &v[i + 7..];
            // An RFC 2231 continuation (`charset*0=utf-; charset*1=16`, `charset*0*=...`):
            // Python's email, Werkzeug and aiohttp join the pieces. No client splits a
            // charset name, so it is refused rather than joined here.
            if rest.len() > 1 && rest[0] == b'*' && rest[1].is_ascii_digit() {
                return false;
            }
            let rest = rest.strip_prefix(b"*").unwrap_or(rest);
            let rest = crate::cookies::trim(rest);
            let Some(value) = rest.strip_prefix(b"=") else { return true };
            let value = crate::cookies::trim(value);
            let end = value.iter().position(|&b| matches!(b, b';' | b',' | b' ' | b'\t')).unwrap_or(value.len());
            let value = &value[..end];
            is_ascii_charset(value.strip_prefix(b"\"").and_then(|v| v.strip_suffix(b"\"")).unwrap_or(value))
        })
    })
}

/// Is `name` a charset in which every byte below 0x80 that stands alone is its ASCII
/// character, and `&`, `;` and `=` never occur inside a multi-byte character (so the
/// byte-level reading of names and separators is the upstream's)? UTF-8, ASCII, the ISO
/// 8859 and Windows code pages, KOI8, and the East Asian EUC, GB, Big5 and Shift_JIS
/// encodings are; UTF-16/32, UTF-7, ISO-2022 (escape sequences), EBCDIC and anything
/// unknown are not.
pub fn is_ascii_charset(name: &[u8]) -> bool {
    // Blanks around it are ignored by some decoders (Python's codec lookup): not here.
    let name = crate::cookies::trim(name);
    const EXACT: [&[u8]; 14] = [
        b"utf-8",
        b"utf8",
        b"us-ascii",
        b"ascii",
        b"latin1",
        b"cp1252",
        b"gb2312",
        b"gbk",
        b"gb18030",
        b"big5",
        b"shift_jis",
        b"sjis",
        b"windows-31j",
        b"cp932",
    ];
    const FAMILIES: [&[u8]; 5] = [b"iso-8859-", b"windows-125", b"koi8-", b"euc-", b"cp125"];
    EXACT.iter().any(|c| name.eq_ignore_ascii_case(c))
        || FAMILIES.iter().any(|f| {
            name.len() > f.len()
                && name[..f.len()].eq_ignore_ascii_case(f)
                && name[f.len()..].iter().all(|b| b.is_ascii_alphanumeric())
        })
}

/// The request id: taken from a trusted proxy, made by dispatch otherwise; sent upstream
/// and back. Here because both dispatch (which sets it) and the proxy (which keeps it
/// through the header hygiene) name it.
pub const X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_lone_chunked_is_a_supported_transfer_coding() {
        let te = |values: &[&[u8]]| {
            let mut h = http::HeaderMap::new();
            for v in values {
                h.append(header::TRANSFER_ENCODING, HeaderValue::from_bytes(v).unwrap());
            }
            unsupported_transfer_coding(&h)
        };
        assert!(!te(&[]));
        assert!(!te(&[b"chunked"]));
        assert!(!te(&[b" Chunked\t"]));
        for bad in [
            &[&b"gzip, chunked"[..]][..],
            &[b"chunked, chunked"],
            &[b"chunked", b"chunked"],
            &[b"gzip"],
            &[b"chunked;x=1"],
        ] {
            assert!(te(bad), "{bad:?}");
        }
    }
}
