//! The cnf claim (tokens/binding.rs): the typed and the JSON-value readers agree and round-trip.
//!
//! Input format: see the entry point, `portcullis::fuzzing::peer::cnf`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    portcullis::fuzzing::peer::cnf(data);
});
