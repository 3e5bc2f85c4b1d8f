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
