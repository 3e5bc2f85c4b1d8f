//! Micro-benches of the token hot paths, per signing algorithm (EdDSA, ES256, RS256,
//! HS256): issuance, validation on a cache hit and on a miss (full signature
//! verification); the same for an ES256 token of a trusted external issuer (its JWK Set
//! served on loopback); and client secret verification with and without the verification
//! cache.
//!
//! Run: `cargo bench --bench tokens` (one group: `cargo bench --bench tokens -- validate/miss`).

use std::hint::black_box;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use portcullis::config::Config;
use portcullis::oauth::client_auth::{Kind, SecretCache};
use portcullis::store::Store;
use portcullis::store::embedded::EmbeddedStore;
use portcullis::tokens::issue::{Grant, issue};
use portcullis::tokens::keys::KeySet;
use portcullis::tokens::now_secs;
use portcullis::tokens::validate::Validator;

const SECRET_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$NDYTW6/8Jb0QvNtu/HAEsg$50KFYCT9MCJVGUAcSiitFKy6q9BorQxPHViybm55BfY";

fn config(dir: &std::path::Path, alg: &str) -> Config {
    let file = dir.join(format!("k-{alg}.pem"));
    if alg == "RS256" && !file.exists() {
        // The gateway does not generate RSA keys.
        let pem = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).expect("RSA key").serialize_pem();
        std::fs::write(&file, pem).expect("write RSA key");
    }
    let text = format!(
        r#"
issuer = "https://bench.test"
[[listener]]
address = "127.0.0.1:0"
tls = false
[[key]]
id = "k"
algorithm = "{alg}"
file = "{dir}/k-{alg}.pem"
[[client]]
id = "svc"
secret_hash = "{SECRET_HASH}"
grants = ["client_credentials"]
scopes = ["read", "write"]
"#,
        dir = dir.display()
    );
    Config::parse(&text, &dir.join("bench.toml")).expect("bench config")
}

fn mint(keys: &KeySet, config: &Config) -> String {
    let scopes = vec!["read".to_string(), "write".to_string()];
    let grant = Grant {
        issuer: config.issuer(),
        audience: config.audience(),
        client_id: "svc",
        subject: "svc",
        scopes: &scopes,
        lifetime_secs: 3600,
        binding: None,
    };
    issue(keys, &grant, now_secs()).expect("sign").access_token
}

fn benches(c: &mut Criterion) {
    portcullis::install_crypto_provider();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(&dir.path().join("bench.redb")).expect("store");
    let store: &dyn Store = &store;

    for alg in ["EdDSA", "ES256", "RS256", "HS256"] {
        let config = config(dir.path(), alg);
        let keys = KeySet::load(&config).expect("keys");

        c.bench_function(&format!("issue/{alg}"), |b| b.iter(|| black_box(mint(&keys, &config))));

        let validator = Validator::new(100_000);
        let token = mint(&keys, &config);
        rt.block_on(validator.validate(&token, &keys, &config, store)).expect("valid");
        c.bench_function(&format!("validate/hit/{alg}"), |b| {
            b.to_async(&rt)
                .iter(|| async { black_box(validator.validate(&token, &keys, &config, store).await.is_ok()) })
        });

        let (keys_ref, config_ref) = (&keys, &config);
        c.bench_function(&format!("validate/miss/{alg}"), |b| {
            b.to_async(&rt).iter_batched(
                || (Validator::new(16), mint(&keys, &config)),
                |(v, t)| async move { black_box(v.validate(&t, keys_ref, config_ref, store).await.is_ok()) },
                BatchSize::SmallInput,
            )
        });
    }

    external(c, &rt, dir.path(), store);

    // With the verification cache (a hit: one HMAC and a constant-time compare) and
    // without it (argon2id, deliberately slow).
    let cache = SecretCache::new(1000);
    rt.block_on(cache.verify(Kind::Client, "svc", "svc-secret", SECRET_HASH));
    c.bench_function("client_secret/cached", |b| {
        b.to_async(&rt).iter(|| async { black_box(cache.verify(Kind::Client, "svc", "svc-secret", SECRET_HASH).await) })
    });
    let mut slow = c.benchmark_group("client_secret");
    slow.sample_size(10);
    slow.bench_function("argon2id", |b| {
        b.iter(|| black_box(portcullis::oauth::client_auth::verify_argon2("svc-secret", SECRET_HASH)))
    });
    slow.finish();
}

/// A JWK Set answered by a thread on loopback to every connection (HTTP/1.1, then close).
fn serve_jwks(body: String) -> std::net::SocketAddr {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
            let _ = conn.write_all(head.as_bytes());
            let _ = conn.write_all(body.as_bytes());
        }
    });
    addr
}

/// An ES256 token of a trusted issuer: hit and miss, beside our own token's hit under the
/// same configuration (trusted issuers present).
fn external(c: &mut Criterion, rt: &tokio::runtime::Runtime, dir: &std::path::Path, store: &dyn Store) {
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use portcullis::issuers::IssuerSet;

    let kp = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).expect("EC key");
    let p = kp.public_key().as_ref();
    let jwk = serde_json::json!({"kty": "EC", "crv": "P-256", "kid": "e1", "alg": "ES256",
        "x": B64.encode(&p[1..33]), "y": B64.encode(&p[33..65])});
    let addr = serve_jwks(serde_json::json!({ "keys": [jwk] }).to_string());
    let idp = format!("http://{addr}");
    let text = format!(
        r#"
issuer = "https://bench.test"
[[listener]]
address = "127.0.0.1:0"
tls = false
[[key]]
id = "k"
algorithm = "ES256"
file = "{dir}/k-ES256.pem"
[[client]]
id = "svc"
secret_hash = "{SECRET_HASH}"
grants = ["client_credentials"]
scopes = ["read", "write"]
[[trusted_issuer]]
name = "idp"
issuer = "{idp}"
jwks_uri = "{idp}/jwks"
algorithms = ["ES256"]
audience = "https://bench.test/api"
refresh_min = "1h"
"#,
        dir = dir.display()
    );
    let config = Config::parse(&text, &dir.join("bench-ext.toml")).expect("bench config");
    let keys = KeySet::load(&config).expect("keys");
    let issuers = IssuerSet::build(&config, None).expect("issuers");
    rt.block_on(async {
        issuers.start();
        while issuers.by_name("idp").is_none_or(|i| i.keys().is_empty()) {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    });
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let mint_external = || {
        let now = now_secs();
        let header = B64.encode(br#"{"alg":"ES256","typ":"JWT","kid":"e1"}"#);
        let claims = serde_json::json!({"iss": idp, "sub": "alice", "aud": "https://bench.test/api",
            "exp": now + 3600, "iat": now, "azp": "app", "scope": "read write",
            "jti": portcullis::tokens::random_token(12)});
        let input = format!("{header}.{}", B64.encode(claims.to_string()));
        let sig = kp.sign(&rng, input.as_bytes()).expect("sign");
        format!("{input}.{}", B64.encode(sig.as_ref()))
    };
    let accepts = |n: &str| n == "self" || n == "idp";
    let (keys, config, issuers) = (&keys, &config, &issuers);

    let validator = Validator::new(100_000);
    let token = mint_external();
    rt.block_on(validator.validate_for(&token, keys, Some(issuers), &accepts, config, store)).expect("valid");
    c.bench_function("validate/hit/external-ES256", |b| {
        b.to_async(rt).iter(|| async {
            black_box(validator.validate_for(&token, keys, Some(issuers), &accepts, config, store).await.is_ok())
        })
    });
    let own = mint(keys, config);
    rt.block_on(validator.validate_for(&own, keys, Some(issuers), &accepts, config, store)).expect("valid");
    c.bench_function("validate/hit/own-ES256-with-issuers", |b| {
        b.to_async(rt).iter(|| async {
            black_box(validator.validate_for(&own, keys, Some(issuers), &accepts, config, store).await.is_ok())
        })
    });
    c.bench_function("validate/miss/external-ES256", |b| {
        b.to_async(rt).iter_batched(
            || (Validator::new(16), mint_external()),
            |(v, t)| async move {
                black_box(v.validate_for(&t, keys, Some(issuers), &accepts, config, store).await.is_ok())
            },
            BatchSize::SmallInput,
        )
    });
}

criterion_group!(tokens, benches);
criterion_main!(tokens);
