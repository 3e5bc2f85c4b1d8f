//! DPoP proofs (tokens/dpop.rs) for one request at a fixed clock, raw or signed here.
//!
//! Input format: see the entry point, `portcullis::fuzzing::peer::dpop`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    portcullis::fuzzing::peer::dpop(data);
});
