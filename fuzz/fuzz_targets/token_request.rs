//! Token endpoint request parsing: Content-Type → form or JSON body → parameters (a
//! repeated one is refused) → grant_type → client credentials from HTTP Basic or the body.
//!
//! Input: `<Content-Type>\n<Authorization>\n<body>`. An empty (or unrepresentable)
//! header line means the header is absent; the body is every byte after the second newline.
#![no_main]

use http::{HeaderMap, HeaderValue, header};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(3, |&b| b == b'\n');
    let content_type = parts.next().unwrap_or_default();
    let authorization = parts.next().unwrap_or_default();
    let body = parts.next().unwrap_or_default();
    let mut headers = HeaderMap::new();
    for (name, value) in [(header::CONTENT_TYPE, content_type), (header::AUTHORIZATION, authorization)] {
        if let (false, Ok(v)) = (value.is_empty(), HeaderValue::from_bytes(value)) {
            headers.insert(name, v);
        }
    }
    let _ = portcullis::fuzzing::token_request(&headers, body);
});
