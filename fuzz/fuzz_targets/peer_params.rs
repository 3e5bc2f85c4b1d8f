//! The peer-input parsers of issues 16 and 19: `access_token` stripping of queries and
//! form bodies, the multipart field-name scan, and the duplicate-refusing JSON object
//! reader of external JWT payloads and introspection answers (see
//! `portcullis::fuzzing::peer_params`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    portcullis::fuzzing::peer_params(data);
});
