//! private_key_jwt client assertions (tokens/assertion.rs) at a fixed clock, raw or signed here.
//!
//! Input format: see the entry point, `portcullis::fuzzing::peer::assertion`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    portcullis::fuzzing::peer::assertion(data);
});
