//! Micro-benches of the token hot paths, per signing algorithm (EdDSA, ES256, RS256,
//! HS256): issuance, validation on a cache hit and on a miss (full signature
//! verification); and client secret verification with and without the verification cache.
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

criterion_group!(tokens, benches);
criterion_main!(tokens);
