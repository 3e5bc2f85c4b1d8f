//! Entry points for the peer-input parsers added in issue 12/13 (JWS, DPoP proofs, client
//! assertions, `cnf`, certificate DNs, WebSocket handshakes and frames): each takes the
//! fuzzer's bytes, drives the parser as a request would, and asserts what must hold.
//!
//! Where a signature stands in the way, the input's first byte picks a mode: the bytes as
//! they are, or a header and a payload (split at the first `0xff`) signed here with a
//! fixed Ed25519 key, so the checks behind the signature are reached too.

use std::sync::LazyLock;

use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use http::{HeaderName, HeaderValue, Method, Request, Version};
use serde_json::Value;

use crate::config::{Config, DpopSettings, JwsAlgorithm, Route};
use crate::issuers::introspection::unique_object;
use crate::tokens::LEEWAY_SECS;
use crate::tokens::assertion::{self, ClientKey};
use crate::tokens::binding::{Binding, is_thumbprint};
use crate::tokens::dpop::{self, Expect};
use crate::tokens::jws::Jws;

/// The clock of every check here: proofs and assertions are judged at this instant.
pub const NOW: u64 = 1_800_000_000;
/// The client an assertion must be from.
pub const CLIENT: &str = "fuzz-client";
/// The audience an assertion must name.
pub const AUDIENCE: &str = "https://gw.fuzz.test/oauth/token";
/// The request a proof must be for.
pub const HTM: &str = "POST";
pub const HTU: &str = "https://gw.fuzz.test/oauth/token";

static KEY: LazyLock<Ed25519KeyPair> =
    LazyLock::new(|| Ed25519KeyPair::from_seed_unchecked(&[7u8; 32]).expect("a fixed Ed25519 seed"));

/// The fixed key's public JWK.
pub fn public_jwk() -> Value {
    serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": URL_SAFE_NO_PAD.encode(KEY.public_key().as_ref())})
}

/// `b64(header).b64(payload).b64(Ed25519 signature)` with the fixed key.
pub fn sign(header: &[u8], payload: &[u8]) -> String {
    let input = format!("{}.{}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(payload));
    let sig = KEY.sign(input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
}

/// Mode byte and the rest: `(raw, header, payload)`.
fn split(data: &[u8]) -> Option<(bool, &[u8], &[u8])> {
    let (&mode, rest) = data.split_first()?;
    match rest.iter().position(|&b| b == 0xff) {
        Some(i) if mode & 1 == 1 => Some((false, &rest[..i], &rest[i + 1..])),
        _ => Some((true, rest, &[])),
    }
}

/// A compact JWS taken apart (`tokens/jws.rs`). Raw mode: the bytes are the token. Parts
/// mode: the header and payload are encoded here, with a dummy signature: the parse must
/// accept exactly the pairs of unique JSON objects whose header has an allowed `alg` and
/// no `crit`; what it accepts reads back as those objects.
pub fn jws(data: &[u8]) {
    let Some((raw, a, b)) = split(data) else { return };
    let all = JwsAlgorithm::ALL;
    if raw {
        let Ok(token) = std::str::from_utf8(a) else { return };
        if let Ok(j) = Jws::parse(token, 4096, &all) {
            assert!(token.len() <= 4096);
            assert_eq!(token.matches('.').count(), 2, "{token:?}");
            assert_eq!(j.header_str("alg"), Some(j.alg.as_str()));
            assert!(!j.header.contains_key("crit"));
            let mut parts = token.split('.');
            let header = URL_SAFE_NO_PAD.decode(parts.next().unwrap_or_default()).expect("the header decoded");
            assert_eq!(unique_object(&header).as_ref(), Some(&j.header));
        }
        return;
    }
    let token = format!("{}.{}.c2ln", URL_SAFE_NO_PAD.encode(a), URL_SAFE_NO_PAD.encode(b));
    let parsed = Jws::parse(&token, usize::MAX, &all);
    let header = unique_object(a);
    let payload = unique_object(b);
    let expect_ok = match (&header, &payload) {
        (Some(h), Some(_)) => {
            h.get("alg").and_then(Value::as_str).is_some_and(|alg| all.iter().any(|x| x.as_str() == alg))
                && !h.contains_key("crit")
        }
        _ => false,
    };
    assert_eq!(parsed.is_ok(), expect_ok, "{:?}", parsed.as_ref().err());
    if let Ok(j) = parsed {
        assert_eq!(Some(&j.header), header.as_ref());
        assert_eq!(Some(&j.claims), payload.as_ref());
    }
}

fn dpop_settings() -> DpopSettings {
    DpopSettings {
        algorithms: JwsAlgorithm::ALL.to_vec(),
        iat_window: std::time::Duration::from_secs(300),
        nonce: false,
    }
}

/// A DPoP proof checked for `POST` [`HTU`] at [`NOW`] (`tokens/dpop.rs`), with and
/// without an access token and key binding. Parts mode signs with the fixed key (its
/// `jwk` put in the header unless the fuzzer gave one). Accepted: every claim says what
/// the request is, the key is the fixed one, and the replay window follows `iat`.
pub fn dpop(data: &[u8]) {
    let Some((raw, a, b)) = split(data) else { return };
    let proof = if raw {
        match std::str::from_utf8(a) {
            Ok(s) => s.to_string(),
            Err(_) => return,
        }
    } else {
        let header = match serde_json::from_slice::<Value>(a) {
            Ok(Value::Object(mut h)) if !h.contains_key("jwk") => {
                h.insert("jwk".into(), public_jwk());
                serde_json::to_vec(&h).unwrap_or_default()
            }
            _ => a.to_vec(),
        };
        sign(&header, b)
    };
    let settings = dpop_settings();
    let ours = URL_SAFE_NO_PAD.encode(crate::tokens::sha256(&canonical_jwk_bytes()));
    let bound = data.first().is_some_and(|m| m & 2 == 2);
    let expect = Expect {
        htm: HTM,
        htu: HTU,
        access_token: bound.then_some("the-access-token"),
        jkt: bound.then_some(ours.as_str()),
        now: NOW,
    };
    let Ok(p) = dpop::verify(&proof, &settings, &expect, None) else { return };
    // Only the fixed key can have signed it (nobody forges Ed25519 by fuzzing).
    assert_eq!(p.jkt, ours, "accepted a proof signed by another key");
    let jws = Jws::parse(&proof, dpop::MAX_PROOF_BYTES, &settings.algorithms).expect("accepted, so it parses");
    assert!(jws.header_str("typ").is_some_and(|t| t.eq_ignore_ascii_case("dpop+jwt")));
    assert_eq!(jws.claim_str("htm"), Some(HTM));
    assert_eq!(jws.claim_str("htu").and_then(dpop::normalise_htu).as_deref(), Some(HTU));
    let iat = jws.claim_secs("iat").expect("an iat");
    assert!(iat.abs_diff(NOW) <= 300);
    assert_eq!(p.remember_until, iat + 301);
    let jti = jws.claim_str("jti").expect("a jti");
    assert!(!jti.is_empty() && jti.len() <= 256);
    if bound {
        let ath = URL_SAFE_NO_PAD.encode(crate::tokens::sha256(b"the-access-token"));
        assert_eq!(jws.claim_str("ath"), Some(ath.as_str()));
    }
}

/// The fixed key's RFC 7638 thumbprint input.
fn canonical_jwk_bytes() -> Vec<u8> {
    format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#, URL_SAFE_NO_PAD.encode(KEY.public_key().as_ref()))
        .into_bytes()
}

static CLIENT_KEY: LazyLock<ClientKey> = LazyLock::new(|| {
    // SubjectPublicKeyInfo of an Ed25519 key (RFC 8410): a fixed prefix, then the key.
    let mut der = vec![0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];
    der.extend_from_slice(KEY.public_key().as_ref());
    let pem = format!("-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n", STANDARD.encode(der));
    ClientKey::from_pem(pem.as_bytes()).expect("the fixed key as a client key")
});

/// A `private_key_jwt` client assertion (`tokens/assertion.rs`) for [`CLIENT`] at
/// [`AUDIENCE`], at [`NOW`]. Parts mode signs with the client's (fixed) key. Accepted: the
/// claims are the client's, for us, in their time bounds; the dummy check (unknown
/// clients) never panics either.
pub fn assertion(data: &[u8]) {
    let Some((raw, a, b)) = split(data) else { return };
    let token = if raw {
        match std::str::from_utf8(a) {
            Ok(s) => s.to_string(),
            Err(_) => return,
        }
    } else {
        sign(a, b)
    };
    let max_lifetime = 300;
    assertion::verify_dummy(&token, CLIENT, &[AUDIENCE], max_lifetime, NOW);
    let unverified = assertion::unverified_client(&token);
    let Ok(v) = assertion::verify(&token, CLIENT, &CLIENT_KEY, &[AUDIENCE], max_lifetime, NOW) else { return };
    assert_eq!(unverified.as_deref(), Some(CLIENT));
    let jws =
        Jws::parse(&token, assertion::MAX_ASSERTION_BYTES, &assertion::ALGORITHMS).expect("accepted, so it parses");
    assert_eq!(jws.claim_str("sub"), Some(CLIENT));
    let exp = jws.claim_secs("exp").expect("an exp");
    assert!(exp + LEEWAY_SECS > NOW && exp <= NOW + max_lifetime + LEEWAY_SECS);
    assert_eq!(v.remember_until, exp + LEEWAY_SECS);
    assert_eq!(jws.claim_str("jti"), Some(v.jti.as_str()));
    match jws.claims.get("aud") {
        Some(Value::String(a)) => assert_eq!(a, AUDIENCE),
        Some(Value::Array(list)) => assert!(!list.is_empty() && list.iter().all(|a| a == AUDIENCE)),
        other => panic!("accepted with aud {other:?}"),
    }
}

/// A `cnf` claim (`tokens/binding.rs`), read as the issuer's token deserialiser reads it
/// and as an introspection answer is read: the two agree, an accepted binding holds a
/// thumbprint, and it serialises back to what reads as itself.
pub fn cnf(data: &[u8]) {
    let typed = serde_json::from_slice::<Binding>(data);
    if let Some(obj) = unique_object(data) {
        let from_value = Binding::from_json(&Value::Object(obj));
        assert_eq!(typed.as_ref().ok(), from_value.as_ref().ok(), "the two readers disagree");
    }
    if let Ok(b) = typed {
        let thumb = b.x5t_s256().or(b.jkt()).expect("a binding has a thumbprint");
        assert!(is_thumbprint(thumb));
        let again: Binding = serde_json::from_str(&serde_json::to_string(&b).expect("serialises")).expect("reads back");
        assert_eq!(again, b);
    }
}

/// Distinguished names (`dn.rs`). Mode 0: a DER `Name`, rendered as a certificate's
/// subject is; what renders is canonical already (reading it as config text gives it
/// back). Mode 1: config text; canonicalising twice changes nothing.
pub fn dn(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else { return };
    if mode & 1 == 0 {
        use x509_parser::prelude::FromDer;
        let Ok((_, name)) = x509_parser::x509::X509Name::from_der(rest) else { return };
        if let Some(s) = crate::dn::of_name(&name) {
            // An empty subject (allowed beside a SAN) renders empty, and matches no
            // configured DN: `canonical` refuses the empty string.
            if s.is_empty() {
                assert_eq!(name.iter().count(), 0, "a non-empty subject rendered empty");
                return;
            }
            assert_eq!(crate::dn::canonical(&s).as_deref(), Some(s.as_str()), "a rendered subject is not canonical");
        }
    } else {
        let Ok(text) = std::str::from_utf8(rest) else { return };
        if let Some(c) = crate::dn::canonical(text) {
            assert_eq!(crate::dn::canonical(&c).as_deref(), Some(c.as_str()), "{text:?}");
        }
    }
}

static WS_ROUTE: LazyLock<Route> = LazyLock::new(|| {
    let text = "issuer = \"https://gw.fuzz.test\"\n[[listener]]\naddress = \"127.0.0.1:0\"\ntls = false\n[store]\npath = \"/nonexistent/ws.redb\"\n\
                [[key]]\nid = \"k\"\nfile = \"/nonexistent/k.pem\"\ngenerate = false\n\
                [[route]]\nprefix = \"/ws\"\nupstream = \"http://127.0.0.1:1\"\nwebsocket = true\n";
    let config = Config::parse(text, std::path::Path::new("/nonexistent/ws.toml")).expect("the WebSocket fixture");
    Route::clone(&config.routes[0])
});

/// WebSocket (`proxy/websocket.rs`). Mode 0: a handshake — the first line
/// `METHOD VERSION` (`1`: HTTP/1.1, `2`: HTTP/2), then `name: value` lines — checked on a
/// WebSocket route: accepted only as a GET/1.1 with one 16-byte key and version 13, or an
/// extended CONNECT. Mode 1: a byte stream split into chunks by the fuzzer: the frame
/// tracker must stop exactly at each frame end an independent reading finds, and never
/// claim a boundary inside a frame.
pub fn websocket(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else { return };
    if mode & 1 == 1 {
        frames(mode, rest);
        return;
    }
    let mut lines = rest.split(|&b| b == b'\n');
    let first = lines.next().unwrap_or_default();
    let mut words = first.split(|&b| b == b' ');
    let Ok(method) = Method::from_bytes(words.next().unwrap_or(b"GET")) else { return };
    let version = if words.next() == Some(b"2") { Version::HTTP_2 } else { Version::HTTP_11 };
    let mut req = Request::new(http_body_util::Empty::<bytes::Bytes>::new());
    *req.method_mut() = method;
    *req.version_mut() = version;
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else { continue };
        let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(&line[..colon]), HeaderValue::from_bytes(line[colon + 1..].trim_ascii()))
        else {
            continue;
        };
        if name.as_str() == "x-protocol" {
            if let Ok(p) = value.to_str() {
                req.extensions_mut().insert(hyper::ext::Protocol::from(p));
            }
            continue;
        }
        req.headers_mut().append(name, value);
    }
    let requested = crate::proxy::websocket::requested(&req);
    match crate::proxy::websocket::check(&req, &WS_ROUTE) {
        Ok(crate::proxy::websocket::Handshake::ExtendedConnect) => {
            assert!(crate::proxy::websocket::is_extended_connect(&req) && requested);
        }
        Ok(crate::proxy::websocket::Handshake::Upgrade { key }) => {
            assert_eq!(req.method(), Method::GET);
            assert_eq!(req.version(), Version::HTTP_11);
            assert_eq!(STANDARD.decode(key.as_bytes()).map(|k| k.len()).ok(), Some(16));
            let versions: Vec<_> = req.headers().get_all("sec-websocket-version").iter().collect();
            assert_eq!(versions, [&HeaderValue::from_static("13")]);
            assert!(!req.headers().contains_key(http::header::TRANSFER_ENCODING));
        }
        Err(e) => {
            let status = e.into_response("fuzz").status();
            assert_eq!(status, http::StatusCode::BAD_REQUEST);
        }
    }
}

/// The frame ends of `stream` read independently of the tracker (RFC 6455 §5.2), and
/// whether the stream ends inside a frame.
fn frame_ends(stream: &[u8]) -> Vec<usize> {
    let mut ends = Vec::new();
    let mut at = 0usize;
    while at + 2 <= stream.len() {
        let len7 = stream[at + 1] & 0x7f;
        let ext = match len7 {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if stream[at + 1] & 0x80 != 0 { 4 } else { 0 };
        let head = 2 + ext + mask;
        if at + head > stream.len() {
            break;
        }
        let len = match len7 {
            126 => u64::from(u16::from_be_bytes([stream[at + 2], stream[at + 3]])),
            127 => u64::from_be_bytes(stream[at + 2..at + 10].try_into().unwrap_or([0xff; 8])),
            n => u64::from(n),
        };
        let end = (at as u64).saturating_add(head as u64).saturating_add(len);
        if end > stream.len() as u64 {
            break;
        }
        at = end as usize;
        ends.push(at);
    }
    ends
}

fn frames(mode: u8, stream: &[u8]) {
    let ends = frame_ends(stream);
    // Byte by byte with `feed`, then in chunks of the fuzzer's size with `advance`.
    let mut f = crate::proxy::websocket::Frames::default();
    for (i, b) in stream.iter().enumerate() {
        f.feed(std::slice::from_ref(b));
        assert_eq!(f.at_boundary(), ends.binary_search(&(i + 1)).is_ok(), "after byte {i}");
    }
    let chunk = usize::from(mode >> 1).max(1);
    let mut f = crate::proxy::websocket::Frames::default();
    let mut at = 0;
    let mut seen = Vec::new();
    while at < stream.len() {
        let n = f.advance(&stream[at..(at + chunk).min(stream.len())]);
        assert!(n > 0, "advance took nothing");
        at += n;
        if f.at_boundary() {
            seen.push(at);
        }
    }
    assert_eq!(seen, ends, "boundaries claimed where no frame ends, or missed");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator (xorshift), so the runs repeat.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn bytes(&mut self, max: usize) -> Vec<u8> {
            let n = (self.next() as usize) % (max + 1);
            (0..n).map(|_| self.next() as u8).collect()
        }
        /// `seed` with a few random byte edits, insertions and deletions.
        fn mutate(&mut self, seed: &[u8]) -> Vec<u8> {
            let mut v = seed.to_vec();
            for _ in 0..(self.next() % 4) {
                let i = if v.is_empty() { 0 } else { (self.next() as usize) % v.len() };
                match self.next() % 3 {
                    0 if !v.is_empty() => v[i] = self.next() as u8,
                    1 => v.insert(i, self.next() as u8),
                    _ if !v.is_empty() => {
                        v.remove(i);
                    }
                    _ => {}
                }
            }
            v
        }
    }

    /// Parts-mode input: mode byte, header, 0xff, payload.
    fn parts(mode: u8, header: &str, payload: &str) -> Vec<u8> {
        [&[mode][..], header.as_bytes(), &[0xff], payload.as_bytes()].concat()
    }

    fn good_proof_claims(iat: u64) -> String {
        let ath = URL_SAFE_NO_PAD.encode(crate::tokens::sha256(b"the-access-token"));
        format!(r#"{{"htm":"POST","htu":"{HTU}","iat":{iat},"jti":"j1","ath":"{ath}"}}"#)
    }

    fn good_assertion_claims() -> String {
        format!(r#"{{"iss":"{CLIENT}","sub":"{CLIENT}","aud":"{AUDIENCE}","exp":{},"jti":"a1"}}"#, NOW + 60)
    }

    /// The seeds of each target (also written to fuzz/seeds/ by hand) reach acceptance.
    #[test]
    fn the_seeds_are_accepted_where_they_should_be() {
        let proof = sign(
            serde_json::json!({"typ": "dpop+jwt", "alg": "EdDSA", "jwk": public_jwk()}).to_string().as_bytes(),
            good_proof_claims(NOW).as_bytes(),
        );
        let settings = dpop_settings();
        let expect = Expect { htm: HTM, htu: HTU, access_token: None, jkt: None, now: NOW };
        assert!(dpop::verify(&proof, &settings, &expect, None).is_ok());
        let a = sign(br#"{"alg":"EdDSA"}"#, good_assertion_claims().as_bytes());
        assert!(assertion::verify(&a, CLIENT, &CLIENT_KEY, &[AUDIENCE], 300, NOW).is_ok());
        assert!(
            crate::proxy::websocket::check(
                &Request::get("/ws")
                    .header("upgrade", "websocket")
                    .header("connection", "upgrade")
                    .header("sec-websocket-version", "13")
                    .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
                    .body(http_body_util::Empty::<bytes::Bytes>::new())
                    .unwrap(),
                &WS_ROUTE
            )
            .is_ok()
        );
    }

    /// The committed seeds of each target (fuzz/seeds/<target>/) hold.
    #[test]
    fn the_committed_seeds_hold() {
        type Target = fn(&[u8]);
        let targets: [(&str, Target); 6] = [
            ("jws", jws),
            ("dpop", dpop),
            ("assertion", assertion),
            ("cnf", cnf),
            ("dn", dn),
            ("websocket", websocket),
        ];
        for (name, target) in targets {
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds").join(name);
            let mut n = 0;
            for seed in std::fs::read_dir(&dir).unwrap() {
                target(&std::fs::read(seed.unwrap().path()).unwrap());
                n += 1;
            }
            assert!(n >= 3, "{name}: {n} seeds");
        }
    }

    /// Without cargo-fuzz: each entry point over a few thousand random and mutated inputs.
    #[test]
    fn every_entry_point_holds_over_random_and_mutated_inputs() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let proof_header = serde_json::json!({"typ": "dpop+jwt", "alg": "EdDSA"}).to_string();
        type Target = fn(&[u8]);
        let seeds: Vec<(Target, Vec<Vec<u8>>)> = vec![
            (jws, vec![
                parts(1, r#"{"alg":"ES256"}"#, r#"{"a":1}"#),
                parts(1, r#"{"alg":"EdDSA","crit":[]}"#, "{}"),
                b"\0eyJhbGciOiJFUzI1NiJ9.e30.c2ln".to_vec(),
            ]),
            (dpop, vec![
                parts(1, &proof_header, &good_proof_claims(NOW)),
                parts(3, &proof_header, &good_proof_claims(NOW - 299)),
                parts(1, &proof_header, &good_proof_claims(NOW + 301)),
            ]),
            (assertion, vec![
                parts(1, r#"{"alg":"EdDSA","typ":"JWT"}"#, &good_assertion_claims()),
                parts(1, r#"{"alg":"EdDSA","kid":7}"#, &good_assertion_claims()),
            ]),
            (cnf, vec![
                br#"{"jkt":"0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"}"#.to_vec(),
                br#"{"x5t#S256":"0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"}"#.to_vec(),
                br#"{"jkt":"0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I","jkt":"x"}"#.to_vec(),
            ]),
            (dn, vec![
                b"\x01CN=Alice+O=Example,C=DE".to_vec(),
                b"\x01cn=#0c03616263,2.5.4.3=x\\2cy".to_vec(),
                // SEQUENCE { SET { SEQUENCE { OID 2.5.4.3, UTF8String "ab" } } }
                vec![0, 0x30, 0x0d, 0x31, 0x0b, 0x30, 0x09, 0x06, 0x03, 0x55, 0x04, 0x03, 0x0c, 0x02, b'a', b'b'],
            ]),
            (websocket, vec![
                b"\0GET 1\nupgrade: websocket\nconnection: upgrade\nsec-websocket-version: 13\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==".to_vec(),
                b"\0CONNECT 2\nsec-websocket-version: 13\nx-protocol: websocket".to_vec(),
                [&[7u8][..], &[0x82, 0x03, 1, 2, 3, 0x81, 0xfe, 0x00, 0x02, 1, 2, 3, 4, 9, 9, 0x88, 0x00]].concat(),
            ]),
        ];
        for (target, seeds) in &seeds {
            for _ in 0..3000 {
                let input = match rng.next() % 3 {
                    0 => rng.bytes(64),
                    _ => {
                        let seed = &seeds[(rng.next() as usize) % seeds.len()];
                        rng.mutate(seed)
                    }
                };
                target(&input);
            }
            for s in seeds {
                target(s);
            }
        }
    }
}
