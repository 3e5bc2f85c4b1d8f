//! Where an ES256 cache miss's signature time goes: aws-lc parsing the key on every call
//! (`UnparsedPublicKey`, what jsonwebtoken does), aws-lc with a kept parsed key
//! (`ParsedPublicKey`), the per-key table verifier (`portcullis::tokens::es256`), and
//! jsonwebtoken's whole decode (signature and claims) with and without a table; plus the
//! miss path's other pieces (SHA-256 of the token, base64 and JSON of the claims).
//!
//! Run: `cargo run --release --example es256_speed -- [WHICH|all] [ITERATIONS]`. Wall time
//! is noisy on a shared machine: for a load-independent figure run one WHICH under
//! `valgrind --tool=callgrind` and divide the instructions by ITERATIONS.

use std::hint::black_box;
use std::time::Instant;

use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair, ParsedPublicKey, UnparsedPublicKey,
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use portcullis::tokens::AccessClaims;
use portcullis::tokens::es256::{self, Es256Key};

fn main() {
    let mut args = std::env::args().skip(1);
    let which = args.next().unwrap_or_else(|| "all".into());
    let iters: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(20_000);
    assert!(es256::install(), "table provider in force");
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let mk = || {
        let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("key");
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, doc.as_ref()).expect("key")
    };
    let (kp, plain_kp) = (mk(), mk());
    let public = kp.public_key().as_ref().to_vec();
    assert!(es256::register(&public));
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs();
    let claims = serde_json::json!({
        "iss": "https://bench.test", "sub": "svc", "aud": "https://bench.test", "exp": now + 3600,
        "iat": now, "jti": "0123456789abcdef0123456789abcdef", "client_id": "svc", "scope": "read write",
        "gty": "client-credentials",
    });
    let token_for = |kp: &EcdsaKeyPair| {
        let input =
            format!("{}.{}", B64.encode(r#"{"typ":"at+jwt","alg":"ES256","kid":"k"}"#), B64.encode(claims.to_string()));
        let sig = kp.sign(&rng, input.as_bytes()).expect("sign");
        format!("{input}.{}", B64.encode(sig.as_ref()))
    };
    let (token, plain_token) = (token_for(&kp), token_for(&plain_kp));
    let (input, sig_b64) = token.rsplit_once('.').expect("token");
    let sig = B64.decode(sig_b64).expect("sig");
    let msg = input.as_bytes();
    let table = Es256Key::new(&public).expect("table");
    let parsed = UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &public).parse().expect("parsed");
    let mut validation = Validation::new(Algorithm::ES256);
    validation.set_issuer(&["https://bench.test"]);
    validation.set_audience(&["https://bench.test"]);
    validation.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
    let decoding = DecodingKey::from_ec_der(&public);
    let plain_decoding = DecodingKey::from_ec_der(plain_kp.public_key().as_ref());
    let payload_b64 = input.split('.').nth(1).expect("payload");

    let runs: Vec<(&str, Run)> = vec![
        (
            "aws-lc-unparsed",
            Box::new(|| UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &public).verify(msg, &sig).is_ok()),
        ),
        ("aws-lc-parsed", Box::new(|| verify_parsed(&parsed, msg, &sig))),
        ("table", Box::new(|| table.verify(msg, &sig))),
        ("jwt-decode-table", Box::new(|| jsonwebtoken::decode::<AccessClaims>(&token, &decoding, &validation).is_ok())),
        (
            "jwt-decode-aws-lc",
            Box::new(|| jsonwebtoken::decode::<AccessClaims>(&plain_token, &plain_decoding, &validation).is_ok()),
        ),
        (
            "sha256-token",
            Box::new(|| aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes()).as_ref()[0] < 255),
        ),
        (
            "claims-b64-json",
            Box::new(|| {
                let bytes = B64.decode(payload_b64).expect("b64");
                serde_json::from_slice::<AccessClaims>(&bytes).is_ok()
            }),
        ),
    ];
    for (name, f) in &runs {
        if which != "all" && which != *name {
            continue;
        }
        assert!(f(), "{name} must verify");
        let start = Instant::now();
        for _ in 0..iters {
            black_box(f());
        }
        let per = start.elapsed().as_secs_f64() * 1e6 / f64::from(iters);
        println!("{name:20} {per:8.2} µs/op ({iters} ops)");
    }
}

/// One measured operation: true when it verified.
type Run<'a> = Box<dyn Fn() -> bool + 'a>;

fn verify_parsed(key: &ParsedPublicKey, msg: &[u8], sig: &[u8]) -> bool {
    key.verify_sig(msg, sig).is_ok()
}
