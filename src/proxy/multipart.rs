//! An `access_token` field in a `multipart/form-data` body (RFC 6750 §2.2 names only the
//! urlencoded form, but frameworks read multipart fields the same way). Such bodies are
//! uploads, often far larger than any form limit, so they are not buffered: the body
//! streams through a scanner, and the chunk that names an `access_token` field is never
//! sent — the request fails there (400), and the upstream sees a body that broke off.
//!
//! The scan fails closed rather than parsing MIME: `name=` or `name*=` (after `;`, a space
//! or a tab, in any case) whose value reads as `access_token` (see
//! [`super::access_token::is_access_token_name`]) anywhere in the body refuses it, also inside
//! a file's contents; so do RFC 2231 continuations (`name*0=`) and RFC 2047 encoded words
//! in a name, which some parsers decode and the scan does not. A match split across chunks is found: the last bytes of each chunk
//! are scanned again with the next.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};

use super::access_token::is_access_token_name;
use crate::http::{Body, BoxError};

/// The longest field name looked at; a longer one is judged by its start (PHP's array
/// form `access_token[...]` only needs that).
const MAX_NAME: usize = 256;
/// What is kept of a chunk to be scanned again with the next: `name*=`, spaces, a quote
/// and [`MAX_NAME`] bytes fit.
const CARRY: usize = MAX_NAME + 64;

/// Is the body multipart, as the loosest parser reads a `Content-Type`? Any `multipart/*`
/// (Rack and Commons FileUpload parse `multipart/mixed` and `related` as forms), its media
/// type ended at the first `;`, `,` or blank as PHP ends it (`multipart/form-data,
/// boundary=x`).
pub fn is_multipart_form(headers: &http::HeaderMap) -> bool {
    headers.get_all(http::header::CONTENT_TYPE).iter().any(|v| {
        let v = crate::cookies::trim(v.as_bytes());
        let essence = v.split(|&b| matches!(b, b';' | b',' | b' ' | b'\t')).next().unwrap_or_default();
        essence.len() > 10 && essence[..10].eq_ignore_ascii_case(b"multipart/")
    })
}

/// The error a scanned body fails with; `forward` turns it into a 400.
#[derive(Debug)]
pub struct TokenField;

impl std::fmt::Display for TokenField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("multipart body names an access_token field")
    }
}

impl std::error::Error for TokenField {}

/// `body`, failing with [`TokenField`] before the chunk that names an `access_token` field.
pub fn scanned(body: Body) -> Body {
    http_body_util::BodyExt::boxed(Scanned { inner: body, carry: Vec::new(), finds: names_token_field })
}

/// `body` without a `Content-Type`, failing with [`TokenField`] before the chunk that holds
/// an urlencoded `access_token` parameter: Rack reads such a POST body as a form. Streamed
/// and scanned like a multipart body, not buffered: an untyped body may be any upload.
pub fn scanned_untyped(body: Body) -> Body {
    let finds = |window: &[u8]| super::access_token::without_access_token(window).is_some();
    http_body_util::BodyExt::boxed(Scanned { inner: body, carry: Vec::new(), finds })
}

struct Scanned {
    inner: Body,
    carry: Vec<u8>,
    /// Does a window of the body hold what must not pass?
    finds: fn(&[u8]) -> bool,
}

impl HttpBody for Scanned {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let mut window = std::mem::take(&mut this.carry);
                    window.extend_from_slice(data);
                    if (this.finds)(&window) {
                        return Poll::Ready(Some(Err(Box::new(TokenField))));
                    }
                    let keep = window.len().min(CARRY);
                    window.drain(..window.len() - keep);
                    this.carry = window;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Does `buf` hold a `name=` / `name*=` parameter whose value reads as `access_token`?
pub fn names_token_field(buf: &[u8]) -> bool {
    let mut at = 0;
    while let Some(found) = find_name(&buf[at..]) {
        let start = at + found;
        at = start + 4;
        if start > 0 && !matches!(buf[start - 1], b';' | b' ' | b'\t') {
            continue;
        }
        let mut i = at;
        let skip_ws = |i: &mut usize| {
            while *i < buf.len() && matches!(buf[*i], b' ' | b'\t') {
                *i += 1;
            }
        };
        skip_ws(&mut i);
        let extended = buf.get(i) == Some(&b'*');
        if extended {
            i += 1;
            skip_ws(&mut i);
            // RFC 2231 continuations (`name*0=`, `name*0*=`) spell a name in pieces that
            // Werkzeug and Python's email module join; RFC 7578 §4.2 does not use them.
            // Not judged piece by piece: refused.
            if buf.get(i).is_some_and(u8::is_ascii_digit) {
                return true;
            }
        }
        if buf.get(i) != Some(&b'=') {
            continue;
        }
        i += 1;
        // After the `=`, a folded header line too (`name=\r\n "access_token"`: PHP reads it).
        while i < buf.len() && matches!(buf[i], b' ' | b'\t' | b'\r' | b'\n') {
            i += 1;
        }
        let quoted = buf.get(i) == Some(&b'"');
        if quoted {
            i += 1;
        }
        let rest = &buf[i.min(buf.len())..];
        // A quoted value ends at its quote, or at the line's end if the quote is never
        // closed (PHP reads `name="access_token` to the end of the line).
        let end = rest
            .iter()
            .take(MAX_NAME)
            .position(|&b| {
                if quoted {
                    matches!(b, b'"' | b'\r' | b'\n')
                } else {
                    matches!(b, b';' | b'\r' | b'\n' | b' ' | b'\t')
                }
            })
            .unwrap_or(rest.len().min(MAX_NAME));
        let mut value = &rest[..end];
        // RFC 2231 / 5987: charset'language'percent-encoded. A charset in which ASCII is not
        // itself (Django decodes `utf-16be''%00a%00c...`) cannot be judged here: refused.
        if extended && let Some(p) = value.iter().rposition(|&b| b == b'\'') {
            let charset = value.split(|&b| b == b'\'').next().unwrap_or_default();
            if !charset.is_empty() && !super::access_token::is_ascii_charset(charset) {
                return true;
            }
            value = &value[p + 1..];
        }
        let decoded = percent_encoding::percent_decode(value).decode_utf8_lossy();
        // An RFC 2047 encoded word (`=?UTF-8?B?...?=`), which Commons FileUpload decodes in
        // parameter values: its name cannot be judged without decoding it. Refused.
        if is_access_token_name(&decoded) || (decoded.contains("=?") && decoded.contains("?=")) {
            return true;
        }
    }
    false
}

/// The first `name` (any case) in `buf`.
fn find_name(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w.eq_ignore_ascii_case(b"name"))
}

#[cfg(test)]
mod tests {
    use super::names_token_field;

    #[test]
    fn token_fields_in_any_spelling_are_found_and_others_are_not() {
        for part in [
            "Content-Disposition: form-data; name=\"access_token\"\r\n",
            "content-disposition: form-data;name=access_token\r\n",
            "Content-Disposition: form-data; NAME = \"Access.Token\"\r\n",
            "Content-Disposition: form-data; name=\"access_token[]\"\r\n",
            "Content-Disposition: form-data; name*=utf-8''access%5Ftoken\r\n",
            "Content-Disposition: form-data; name=\"access%20token\"\r\n",
            "Content-Disposition: form-data; name=\"access[token\"\r\n",
            // Black-box attack, session 26: continuations, encoded words, NUL, brackets.
            "Content-Disposition: form-data; name*0=\"access\"; name*1=\"_token\"\r\n",
            "Content-Disposition: form-data; name*0*=UTF-8''access%5F; name*1=token\r\n",
            "Content-Disposition: form-data; name=\"=?UTF-8?B?YWNjZXNzX3Rva2Vu?=\"\r\n",
            "Content-Disposition: form-data; name=\"access_token\0\"\r\n",
            "Content-Disposition: form-data; name=\"[access_token]\"\r\n",
            "Content-Disposition: form-data; name=\"access_token]\"\r\n",
            // Second attack: an unclosed quote, a fold after `=`, a name in UTF-16 or EBCDIC.
            "Content-Disposition: form-data; name=\"access_token\r\n\r\nSECRET",
            "Content-Disposition: form-data; name=\r\n \"access_token\"\r\n",
            "Content-Disposition: form-data; name*=utf-16be''%00a%00c%00c%00e%00s%00s\r\n",
            "Content-Disposition: form-data; name*=cp037''%81%83%83\r\n",
        ] {
            assert!(names_token_field(part.as_bytes()), "{part}");
        }
        for part in [
            "Content-Disposition: form-data; name=\"a\"; filename=\"access_token\"\r\n",
            "Content-Disposition: form-data; name=\"access_tokens\"\r\n",
            "Content-Disposition: form-data; name=\"my_access_token\"\r\n",
            "access_token=SECRET",
            "username=access_token",
            "Content-Disposition: form-data; name*=utf-8''file\r\n",
        ] {
            assert!(!names_token_field(part.as_bytes()), "{part}");
        }
    }
}
