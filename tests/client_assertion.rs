//! `private_key_jwt` client authentication (RFC 7523 §2.2, OIDC Core §9) at the token,
//! revocation and introspection endpoints: a good assertion works, and each thing an
//! attacker would try is refused with `invalid_client` (401).

mod common;

use common::*;
use serde_json::{Value, json};

const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
const TOKEN_ENDPOINT: &str = "https://gateway.test/oauth/token";

/// A gateway whose client `signer` authenticates with `key`'s public key as a PEM file
/// (and `jwkset` with a JWK Set of `set_key`).
async fn start(key: &IdpKey, set_key: &IdpKey) -> (EchoUpstream, TestGateway, tempfile::TempDir) {
    start_limited(key, set_key, "enabled = false").await
}

/// As [`start`], with `limits` the body of `[rate_limit]`.
async fn start_limited(key: &IdpKey, set_key: &IdpKey, limits: &str) -> (EchoUpstream, TestGateway, tempfile::TempDir) {
    let keys = tempfile::tempdir().unwrap();
    let pem = keys.path().join("signer.pem");
    std::fs::write(&pem, key.public_pem()).unwrap();
    let jwks = keys.path().join("jwkset.json");
    std::fs::write(&jwks, json!({"keys": [set_key.jwk()]}).to_string()).unwrap();
    let extra = format!(
        r#"
[rate_limit]
{limits}

[[client]]
id = "signer"
token_endpoint_auth_method = "private_key_jwt"
public_key = "{}"
grants = ["client_credentials"]
scopes = ["read"]

[[client]]
id = "jwkset"
token_endpoint_auth_method = "private_key_jwt"
jwks_file = "{}"
grants = ["client_credentials"]
scopes = ["read"]
introspect = true
"#,
        pem.display(),
        jwks.display(),
    );
    let up = EchoUpstream::start().await;
    let gw = TestGateway::start_with(up.addr, &extra).await;
    (up, gw, keys)
}

fn claims(client: &str) -> Value {
    let now = portcullis::tokens::now_secs();
    json!({
        "iss": client, "sub": client, "aud": TOKEN_ENDPOINT, "exp": now + 60, "iat": now,
        "jti": portcullis::tokens::random_token(16),
    })
}

async fn post(gw: &TestGateway, path: &str, form: &[(&str, &str)]) -> (u16, Option<String>, Value) {
    let resp = gw.client().post(gw.url(path)).form(form).send().await.unwrap();
    let status = resp.status().as_u16();
    let www = resp.headers().get("www-authenticate").map(|v| v.to_str().unwrap().to_string());
    (status, www, resp.json().await.unwrap_or(Value::Null))
}

async fn grant(gw: &TestGateway, assertion: &str) -> (u16, Value) {
    let form = [
        ("grant_type", "client_credentials"),
        ("client_assertion_type", ASSERTION_TYPE),
        ("client_assertion", assertion),
    ];
    let (status, _, v) = post(gw, "/oauth/token", &form).await;
    (status, v)
}

async fn assert_refused(gw: &TestGateway, label: &str, assertion: &str) {
    let (status, v) = grant(gw, assertion).await;
    assert_eq!(status, 401, "{label}: {v}");
    assert_eq!(v["error"], "invalid_client", "{label}: {v}");
}

#[tokio::test]
async fn a_signed_assertion_authenticates_and_each_attack_is_refused() {
    let key = IdpKey::es256("c1");
    let set_key = IdpKey::ed25519("e1");
    let (_up, gw, _keys) = start(&key, &set_key).await;

    // The good case, with aud the token endpoint, then the issuer, then in an array.
    let good = key.sign(&claims("signer"));
    let (status, v) = grant(&gw, &good).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(api_status(&gw, v["access_token"].as_str().unwrap()).await, 200);
    for aud in [json!(ISSUER), json!([ISSUER, TOKEN_ENDPOINT]), json!([TOKEN_ENDPOINT])] {
        let (status, v) = grant(&gw, &key.sign(&with(claims("signer"), "aud", aud.clone()))).await;
        assert_eq!(status, 200, "aud {aud}: {v}");
    }
    // client_id in the body, agreeing with the assertion, is fine.
    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", "signer"),
        ("client_assertion_type", ASSERTION_TYPE),
        ("client_assertion", &key.sign(&claims("signer"))),
    ];
    assert_eq!(post(&gw, "/oauth/token", &form).await.0, 200);

    // Replayed: the same assertion a second time.
    assert_refused(&gw, "replay", &good).await;

    // Another audience, or none.
    let now = portcullis::tokens::now_secs();
    for aud in [
        json!("https://gateway.test/oauth/token/"),
        json!("https://evil.test"),
        json!(["x"]),
        json!(7),
        json!(["https://x", TOKEN_ENDPOINT]),
        json!([TOKEN_ENDPOINT, 7]),
        json!([]),
    ] {
        assert_refused(&gw, &format!("aud {aud}"), &key.sign(&with(claims("signer"), "aud", aud))).await;
    }
    let mut no_aud = claims("signer");
    no_aud.as_object_mut().unwrap().remove("aud");
    assert_refused(&gw, "no aud", &key.sign(&no_aud)).await;
    // Expired, no exp, too long-lived, from the future.
    assert_refused(&gw, "expired", &key.sign(&with(claims("signer"), "exp", json!(now - 60)))).await;
    let mut no_exp = claims("signer");
    no_exp.as_object_mut().unwrap().remove("exp");
    assert_refused(&gw, "no exp", &key.sign(&no_exp)).await;
    assert_refused(&gw, "one hour", &key.sign(&with(claims("signer"), "exp", json!(now + 3600)))).await;
    assert_refused(&gw, "exp as text", &key.sign(&with(claims("signer"), "exp", json!((now + 60).to_string())))).await;
    assert_refused(&gw, "nbf ahead", &key.sign(&with(claims("signer"), "nbf", json!(now + 120)))).await;
    // No jti.
    let mut no_jti = claims("signer");
    no_jti.as_object_mut().unwrap().remove("jti");
    assert_refused(&gw, "no jti", &key.sign(&no_jti)).await;
    // iss or sub not the client.
    assert_refused(&gw, "sub", &key.sign(&with(claims("signer"), "sub", json!("jwkset")))).await;
    assert_refused(&gw, "iss", &key.sign(&with(claims("signer"), "iss", json!("jwkset")))).await;
    // The body names another client than the assertion.
    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", "jwkset"),
        ("client_assertion_type", ASSERTION_TYPE),
        ("client_assertion", &key.sign(&claims("signer"))),
    ];
    assert_eq!(post(&gw, "/oauth/token", &form).await.0, 401);
    // Signed by another key; by the other client's key; HS256 with the public key as the
    // secret (algorithm confusion); alg none.
    let other = IdpKey::es256("c1");
    assert_refused(&gw, "wrong key", &other.sign(&claims("signer"))).await;
    assert_refused(&gw, "other client's key", &set_key.sign(&claims("signer"))).await;
    let hs = sign_hs256(key.public_pem().as_bytes(), &json!({"alg": "HS256", "typ": "JWT"}), &claims("signer"));
    assert_refused(&gw, "HS256", &hs).await;
    let none = format!("{}.", signing_input(&json!({"alg": "none"}), &claims("signer")));
    assert_refused(&gw, "alg none", &none).await;
    // The signature of a good assertion over other claims.
    let good2 = key.sign(&claims("signer"));
    let sig = good2.rsplit('.').next().unwrap();
    let forged =
        format!("{}.{sig}", signing_input(&json!({"alg": "ES256", "typ": "JWT", "kid": "c1"}), &claims("signer")));
    assert_refused(&gw, "forged claims", &forged).await;
    // Another kind of JWT.
    let header = json!({"alg": "ES256", "typ": "dpop+jwt"}).to_string();
    assert_refused(&gw, "typ dpop+jwt", &key.sign_text(&header, &claims("signer").to_string())).await;
    // Oversized.
    let big = with(claims("signer"), "pad", json!("x".repeat(5000)));
    assert_refused(&gw, "oversized", &key.sign(&big)).await;
    // Garbage.
    assert_refused(&gw, "garbage", "not.a.jwt").await;
    // A kid that is not a string (RFC 7515 §4.1.4), on the JWK Set client whose key has one.
    for kid in [json!(7), json!(null), json!(["e1"])] {
        let header = json!({"alg": "EdDSA", "typ": "JWT", "kid": kid}).to_string();
        let a = set_key.sign_text(&header, &claims("jwkset").to_string());
        assert_refused(&gw, &format!("kid {kid}"), &a).await;
    }

    // A wrong assertion type is invalid_client; an assertion with a secret, two methods.
    let form = [
        ("grant_type", "client_credentials"),
        ("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:saml2-bearer"),
        ("client_assertion", &key.sign(&claims("signer"))),
    ];
    assert_eq!(post(&gw, "/oauth/token", &form).await.0, 401);
    let form = [
        ("grant_type", "client_credentials"),
        ("client_secret", "x"),
        ("client_assertion_type", ASSERTION_TYPE),
        ("client_assertion", &key.sign(&claims("signer"))),
    ];
    let (status, _, v) = post(&gw, "/oauth/token", &form).await;
    assert_eq!((status, v["error"].as_str()), (400, Some("invalid_request")), "{v}");
    // The client cannot fall back to a secret, nor to nothing.
    let (status, www, v) = post(
        &gw,
        "/oauth/token",
        &[("grant_type", "client_credentials"), ("client_id", "signer"), ("client_secret", "x")],
    )
    .await;
    assert_eq!((status, v["error"].as_str()), (401, Some("invalid_client")), "{v}");
    assert!(www.is_some());
    // A secret client cannot be authenticated by an assertion (it has no key).
    assert_refused(&gw, "secret client", &key.sign(&claims("svc"))).await;
}

#[tokio::test]
async fn jwks_file_client_revokes_and_introspects_with_assertions_and_metadata_says_so() {
    let key = IdpKey::es256("c1");
    let set_key = IdpKey::ed25519("e1");
    let (_up, gw, _keys) = start(&key, &set_key).await;
    let (status, v) = grant(&gw, &set_key.sign(&claims("jwkset"))).await;
    assert_eq!(status, 200, "{v}");
    let token = v["access_token"].as_str().unwrap().to_string();

    // aud is the issuer or the token endpoint at every endpoint (OIDC Core §9).
    let introspect = |assertion: String, token: String| {
        let gw = &gw;
        async move {
            let form = [
                ("token", token.as_str()),
                ("client_assertion_type", ASSERTION_TYPE),
                ("client_assertion", assertion.as_str()),
            ];
            post(gw, "/oauth/introspect", &form).await
        }
    };
    let (status, _, v) = introspect(set_key.sign(&claims("jwkset")), token.clone()).await;
    assert_eq!((status, v["active"].as_bool()), (200, Some(true)), "{v}");
    let replayed = set_key.sign(&claims("jwkset"));
    assert_eq!(introspect(replayed.clone(), token.clone()).await.0, 200);
    assert_eq!(introspect(replayed, token.clone()).await.0, 401, "replay at introspection");
    // Without kid the set's one key for the algorithm is used; an unknown kid is refused.
    let header = json!({"alg": "EdDSA", "kid": "nope"}).to_string();
    let (status, _, _) = introspect(set_key.sign_text(&header, &claims("jwkset").to_string()), token.clone()).await;
    assert_eq!(status, 401);
    let header = json!({"alg": "EdDSA"}).to_string();
    let (status, _, _) = introspect(set_key.sign_text(&header, &claims("jwkset").to_string()), token.clone()).await;
    assert_eq!(status, 200);

    let form = [
        ("token", token.as_str()),
        ("client_assertion_type", ASSERTION_TYPE),
        ("client_assertion", &set_key.sign(&claims("jwkset"))),
    ];
    assert_eq!(post(&gw, "/oauth/revoke", &form).await.0, 200);
    assert_eq!(api_status(&gw, &token).await, 401);

    let meta: Value =
        gw.client().get(gw.url("/.well-known/oauth-authorization-server")).send().await.unwrap().json().await.unwrap();
    for field in ["token_endpoint_auth_methods_supported", "introspection_endpoint_auth_methods_supported"] {
        assert!(meta[field].as_array().unwrap().contains(&json!("private_key_jwt")), "{field}: {meta}");
    }
    let algs = meta["token_endpoint_auth_signing_alg_values_supported"].as_array().unwrap();
    assert!(algs.contains(&json!("ES256")) && algs.contains(&json!("EdDSA")) && !algs.contains(&json!("HS256")));
}

#[tokio::test]
async fn a_reload_reads_the_key_again_and_a_replay_survives_a_restart() {
    let key = IdpKey::es256("c1");
    let set_key = IdpKey::ed25519("e1");
    let (_up, gw, keys) = start(&key, &set_key).await;
    let first = key.sign(&claims("signer"));
    assert_eq!(grant(&gw, &first).await.0, 200);

    let next = IdpKey::es256("c2");
    std::fs::write(keys.path().join("signer.pem"), next.public_pem()).unwrap();
    gw.rewrite_config(|t| t);
    assert_refused(&gw, "old key after reload", &key.sign(&claims("signer"))).await;
    assert_eq!(grant(&gw, &next.sign(&claims("signer"))).await.0, 200);

    // A key file that is no key: the reload is refused with the line naming it.
    std::fs::write(keys.path().join("signer.pem"), "not a key").unwrap();
    let config = portcullis::config::Config::load(&gw.config_path).unwrap();
    let err = portcullis::reload::preflight(&config).unwrap_err().to_string();
    assert!(err.contains("gateway.toml:") && err.contains("signer"), "{err}");
    std::fs::write(keys.path().join("signer.pem"), next.public_pem()).unwrap();

    // The embedded store keeps the jti on disk: a restart does not forget it.
    let replayed = next.sign(&claims("signer"));
    assert_eq!(grant(&gw, &replayed).await.0, 200);
    let gw = gw.restart().await;
    assert_refused(&gw, "replay after restart", &replayed).await;
}

/// Bad assertions spend the (source, client) failure budget like wrong secrets: after
/// `client_failures` of them even a good one gets 429; good ones spend nothing; an unknown
/// client id is charged alike (no existence oracle through the 429).
#[tokio::test]
async fn bad_assertions_spend_the_client_failure_budget() {
    let key = IdpKey::es256("c1");
    let set_key = IdpKey::ed25519("e1");
    let limits = "client_failures = 3\nclient_failures_window = \"1h\"\nip_burst = 1000\nfailure_cost = 1";
    let (_up, gw, _keys) = start_limited(&key, &set_key, limits).await;
    for _ in 0..5 {
        assert_eq!(grant(&gw, &key.sign(&claims("signer"))).await.0, 200);
    }
    let other = IdpKey::es256("c1");
    for i in 0..3 {
        assert_refused(&gw, &format!("wrong key {i}"), &other.sign(&claims("signer"))).await;
    }
    let (status, v) = grant(&gw, &key.sign(&claims("signer"))).await;
    assert_eq!(status, 429, "{v}");
    // Another client from the same source is not locked out.
    assert_eq!(grant(&gw, &set_key.sign(&claims("jwkset"))).await.0, 200);
    // An id that names no client: three 401s, then 429, as for a known one.
    for i in 0..3 {
        assert_refused(&gw, &format!("ghost {i}"), &other.sign(&claims("ghost"))).await;
    }
    assert_eq!(grant(&gw, &other.sign(&claims("ghost"))).await.0, 429);
}
