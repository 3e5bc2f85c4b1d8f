//! GET /oauth/authorize: the query string through to the validated authorization request,
//! or the page or redirect that refuses it, against the clients of fixture/gateway.toml.
//!
//! Input: the raw query string (without the `?`).
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use portcullis::fuzzing::Fixture;

static FIXTURE: LazyLock<Fixture> =
    LazyLock::new(|| Fixture::load(concat!(env!("CARGO_MANIFEST_DIR"), "/fixture/gateway.toml").as_ref()));

fuzz_target!(|data: &[u8]| {
    let _ = FIXTURE.authorize_query(data);
});
