//! Bearer token extraction on the proxy path (RFC 6750 §2.1).
//!
//! Input: one Authorization header value per line (none for empty input); lines that
//! cannot be a header value are skipped, as hyper would never deliver them.
#![no_main]

use http::{HeaderMap, HeaderValue, header};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut headers = HeaderMap::new();
    if !data.is_empty() {
        for line in data.split(|&b| b == b'\n') {
            if let Ok(v) = HeaderValue::from_bytes(line) {
                headers.append(header::AUTHORIZATION, v);
            }
        }
    }
    let _ = portcullis::fuzzing::bearer(&headers);
});
