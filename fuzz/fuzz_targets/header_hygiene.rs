//! Proxy header hygiene: the Cookie and Set-Cookie filters (no gateway cookie crosses to
//! or from an upstream) and the Host / :authority parser.
//!
//! Input: one item per line, `c:` a Cookie field, `s:` an upstream's Set-Cookie, `h:` a
//! Host value (see `portcullis::fuzzing::header_hygiene`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    portcullis::fuzzing::header_hygiene(data);
});
