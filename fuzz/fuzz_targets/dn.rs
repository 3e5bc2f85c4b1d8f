//! Distinguished names (dn.rs): DER subjects render canonically; config text canonicalises idempotently.
//!
//! Input format: see the entry point, `portcullis::fuzzing::peer::dn`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    portcullis::fuzzing::peer::dn(data);
});
