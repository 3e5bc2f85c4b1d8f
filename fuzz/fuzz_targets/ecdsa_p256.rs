//! The ES256 table verifier (`portcullis::tokens::es256`) against aws-lc: every input is
//! judged by both and they must agree (`es256_diff::fuzz_one` says how the input is read:
//! a fixed key with fuzzed message and signature, near-valid signatures, fuzzed keys).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| portcullis::tokens::es256_diff::fuzz_one(data));
