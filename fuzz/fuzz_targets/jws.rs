//! Compact JWS parsing (tokens/jws.rs), raw and from fuzzer-built header/payload parts.
//!
//! Input format: see the entry point, `portcullis::fuzzing::peer::jws`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    portcullis::fuzzing::peer::jws(data);
});
