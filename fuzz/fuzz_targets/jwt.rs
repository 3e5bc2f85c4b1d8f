//! JWT parsing and validation on the proxy path: `Validator::validate` against the keys
//! and clients of fixture/gateway.toml (EdDSA, ES256, RS256 and HS256 keys).
//!
//! Input, one of:
//! - `sign:<kid>\n<header>\n<payload>`: header and payload bytes are base64url-encoded and
//!   signed with the fixture key `<kid>` (whatever the header says), so the fuzzer reaches
//!   the algorithm, typ and claim checks behind a good signature;
//! - `seg:<i>:<kid>\n<bytes>` / `seg64:<i>:<kid>\n<bytes>`: a valid token of key `<kid>`
//!   with segment `<i>` (0 header, 1 payload, 2 signature) replaced by the bytes as they
//!   are / base64url-encoded;
//! - anything else: the token string itself (lossy UTF-8).
#![no_main]

use std::collections::HashMap;
use std::sync::LazyLock;

use base64::Engine;
use libfuzzer_sys::fuzz_target;
use portcullis::fuzzing::Fixture;

static FIXTURE: LazyLock<Fixture> =
    LazyLock::new(|| Fixture::load(concat!(env!("CARGO_MANIFEST_DIR"), "/fixture/gateway.toml").as_ref()));

/// One valid token per key, minted at start (valid for a day; runs are shorter).
static REFERENCE: LazyLock<HashMap<String, String>> = LazyLock::new(|| {
    FIXTURE.kids().into_iter().map(|kid| (FIXTURE.mint(&kid, "svc"), kid)).map(|(t, kid)| (kid, t)).collect()
});

fn token(data: &[u8]) -> Option<String> {
    if let Some(rest) = data.strip_prefix(b"sign:") {
        let mut parts = rest.splitn(3, |&b| b == b'\n');
        let kid = std::str::from_utf8(parts.next()?).ok()?;
        let (header, payload) = (parts.next()?, parts.next().unwrap_or_default());
        return FIXTURE.sign_segments(kid, header, payload);
    }
    let (encode, rest) = match (data.strip_prefix(b"seg:"), data.strip_prefix(b"seg64:")) {
        (Some(rest), _) => (false, rest),
        (_, Some(rest)) => (true, rest),
        _ => return Some(String::from_utf8_lossy(data).into_owned()),
    };
    let (directive, bytes) = match rest.iter().position(|&b| b == b'\n') {
        Some(n) => (&rest[..n], &rest[n + 1..]),
        None => (rest, &[][..]),
    };
    let directive = std::str::from_utf8(directive).ok()?;
    let (index, kid) = directive.split_once(':')?;
    let index: usize = index.parse().ok().filter(|&i| i < 3)?;
    let reference = REFERENCE.get(kid)?;
    let replacement = if encode {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    } else {
        String::from_utf8_lossy(bytes).into_owned()
    };
    let mut segments: Vec<&str> = reference.split('.').collect();
    segments[index] = &replacement;
    Some(segments.join("."))
}

fuzz_target!(|data: &[u8]| {
    if let Some(token) = token(data) {
        let _ = FIXTURE.validate(&token);
    }
});
