//! Configuration parsing and validation: `Config::parse` on arbitrary text.
//!
//! Input: the text of a gateway.toml (invalid UTF-8 is skipped: the loader refuses it
//! before parsing).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = portcullis::fuzzing::config(text);
    }
});
