//! Access tokens: POST /oauth/token with client_credentials (every success form and error
//! case), the bearer check on the proxy path (malformed, forged and badly-claimed tokens,
//! scopes), discovery metadata and the JWKS.

mod common;

use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use common::*;
use serde_json::{Value, json};
use std::path::Path;

// ---------------------------------------------------------------------------------------
// Refusals: RFC 6750 challenges.

#[tokio::test]
async fn missing_token_is_401_with_a_bare_challenge() {
    let (_up, gw) = setup().await;
    let resp = gw.client().get(gw.url("/api/x")).send().await.unwrap();
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let (status, www, v) = refused(resp).await;
    assert_eq!(status, 401);
    assert_eq!(www.as_deref(), Some(BEARER_CHALLENGE));
    assert_eq!(v["error"], "unauthorized");

    // Another scheme is not a bearer token either.
    let resp = gw.client().get(gw.url("/api/x")).basic_auth("svc", Some(SVC_SECRET)).send().await.unwrap();
    let (status, www, _) = refused(resp).await;
    assert_eq!(status, 401);
    assert_eq!(www.as_deref(), Some(BEARER_CHALLENGE));
}

#[tokio::test]
async fn bearer_scheme_is_case_insensitive() {
    let (_up, gw) = setup().await;
    let token = svc_token(&gw).await;
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let resp = gw
            .client()
            .get(gw.url("/api/x"))
            .header("authorization", format!("{scheme} {token}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{scheme}");
    }
}

#[tokio::test]
async fn a_crafted_token_signed_with_the_gateway_key_is_accepted() {
    // The control for the tests below: the crafting itself yields tokens the gateway takes,
    // so each refusal there is about the one thing that was changed.
    let (_up, gw) = setup().await;
    let key = gateway_key(&gw);
    let claims = good_claims("svc", "read");
    let token = sign_ed25519(&key, &good_header(), &claims);
    let echo = echo_get(&gw, "/api/x", &token).await;
    assert_identity(&echo, "svc", "svc", "read", claims["jti"].as_str().unwrap(), None);
    // The media-type form of typ is accepted too (RFC 9068 §2.1).
    let token = sign_ed25519(&key, &with(good_header(), "typ", json!("application/at+jwt")), &claims);
    echo_get(&gw, "/api/x", &token).await;
}

#[tokio::test]
async fn garbage_and_malformed_tokens_are_invalid_token() {
    let (_up, gw) = setup().await;
    let real = svc_token(&gw).await;
    let mut parts: Vec<&str> = real.split('.').collect();
    let cases = [
        ("garbage", "not-a-jwt".to_string()),
        ("three dots of nothing", "a.b.c".to_string()),
        ("base64 noise", "eyJhbGciOiJFZERTQSJ9.e30.AAAA".to_string()),
        ("truncated", real[..real.len() - 10].to_string()),
        ("two parts", parts[..2].join(".")),
        ("no signature", format!("{}.{}.", parts[0], parts[1])),
        ("very long", "A".repeat(9000)),
    ];
    for (label, token) in &cases {
        assert_invalid_token(&gw, label, token).await;
    }
    // A payload altered after signing.
    let mut claims = claims(&real);
    claims["scope"] = json!("read write admin");
    let forged = b64(claims.to_string().as_bytes());
    parts[1] = &forged;
    assert_invalid_token(&gw, "tampered payload", &parts.join(".")).await;
    // The genuine one still works.
    echo_get(&gw, "/api/x", &real).await;
}

#[tokio::test]
async fn signature_attacks_are_invalid_token() {
    let (_up, gw) = setup().await;
    let key = gateway_key(&gw);
    let claims = good_claims("svc", "read admin");

    // Same kid, a different Ed25519 key.
    let other = Ed25519KeyPair::generate().unwrap();
    assert_invalid_token(&gw, "wrong key, same kid", &sign_ed25519(&other, &good_header(), &claims)).await;

    // alg none, with and without a signature part.
    let none = with(good_header(), "alg", json!("none"));
    let unsigned = signing_input(&none, &claims);
    assert_invalid_token(&gw, "alg none", &format!("{unsigned}.")).await;
    let none_sig = format!("{unsigned}.{}", b64(b"sig"));
    assert_invalid_token(&gw, "alg none with signature", &none_sig).await;
    let none_lower = signing_input(&with(good_header(), "alg", json!("None")), &claims);
    assert_invalid_token(&gw, "alg None", &format!("{none_lower}.")).await;

    // Algorithm confusion: HS256 keyed with the public key (raw bytes, and its SPKI PEM/DER).
    let public = key.public_key().as_ref().to_vec();
    let hs = with(good_header(), "alg", json!("HS256"));
    assert_invalid_token(&gw, "HS256 with raw public key", &sign_hs256(&public, &hs, &claims)).await;
    let mut spki = hex_bytes("302a300506032b6570032100");
    spki.extend_from_slice(&public);
    let spki_pem = pem::encode(&pem::Pem::new("PUBLIC KEY", spki.clone()));
    assert_invalid_token(&gw, "HS256 with SPKI PEM", &sign_hs256(spki_pem.as_bytes(), &hs, &claims)).await;
    assert_invalid_token(&gw, "HS256 with SPKI DER", &sign_hs256(&spki, &hs, &claims)).await;

    // The right key under a name the gateway does not know, or none at all.
    let unknown = with(good_header(), "kid", json!("k9"));
    assert_invalid_token(&gw, "unknown kid", &sign_ed25519(&key, &unknown, &claims)).await;
    let no_kid = without(good_header(), "kid");
    assert_invalid_token(&gw, "no kid", &sign_ed25519(&key, &no_kid, &claims)).await;

    // An EdDSA signature claimed as another asymmetric algorithm.
    let es = with(good_header(), "alg", json!("ES256"));
    assert_invalid_token(&gw, "alg ES256 on an Ed25519 key", &sign_ed25519(&key, &es, &claims)).await;
}

fn hex_bytes(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

#[tokio::test]
async fn validly_signed_tokens_with_bad_claims_are_invalid_token() {
    let (_up, gw) = setup().await;
    let key = gateway_key(&gw);
    let now = portcullis::tokens::now_secs();
    let c = || good_claims("svc", "read");
    let h = good_header;
    let cases: Vec<(&str, Value, Value)> = vec![
        ("expired", h(), with(with(c(), "exp", json!(now - 3600)), "iat", json!(now - 7200))),
        ("expired just past leeway", h(), with(c(), "exp", json!(now - 60))),
        ("wrong issuer", h(), with(c(), "iss", json!("https://evil.test"))),
        ("wrong audience", h(), with(c(), "aud", json!("https://other.test"))),
        ("typ JWT", with(h(), "typ", json!("JWT")), c()),
        ("no typ", without(h(), "typ"), c()),
        ("not yet valid (nbf)", h(), with(c(), "nbf", json!(now + 3600))),
        ("issued in the future", h(), with(c(), "iat", json!(now + 3600))),
        ("no exp", h(), without(c(), "exp")),
        ("no iss", h(), without(c(), "iss")),
        ("no aud", h(), without(c(), "aud")),
        ("no jti", h(), without(c(), "jti")),
        ("no client_id", h(), without(c(), "client_id")),
        ("empty sub", h(), with(c(), "sub", json!(""))),
        ("unknown client", h(), with(with(c(), "client_id", json!("ghost")), "sub", json!("ghost"))),
        ("disabled client", h(), with(with(c(), "client_id", json!("off")), "sub", json!("off"))),
    ];
    for (label, header, claims) in &cases {
        assert_invalid_token(&gw, label, &sign_ed25519(&key, header, claims)).await;
    }
    // Expiry has its own description.
    let token = sign_ed25519(&key, &h(), &with(c(), "exp", json!(now - 3600)));
    let resp = gw.client().get(gw.url("/api/x")).bearer_auth(&token).send().await.unwrap();
    let (_, www, v) = refused(resp).await;
    assert_eq!(v["error_description"], "The access token expired");
    assert!(www.unwrap().contains("error_description=\"The access token expired\""));
}

#[tokio::test]
async fn insufficient_scope_is_403_naming_the_required_scope() {
    let (_up, gw) = setup().await;
    let token = svc_token(&gw).await;
    let resp = gw.client().get(gw.url("/admin/users")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let (status, www, v) = refused(resp).await;
    assert_eq!(status, 403);
    assert_eq!(www.as_deref(), Some(r#"Bearer realm="portcullis", error="insufficient_scope", scope="admin""#));
    assert_eq!(v["error"], "insufficient_scope");
    assert_eq!(v["scope"], "admin");

    let admin = gw.token("svc", SVC_SECRET, Some("admin")).await;
    let echo = echo_get(&gw, "/admin/users", &admin).await;
    assert_eq!(echo.header("x-auth-scope"), Some("admin"));
    // admin alone does not include read.
    let resp = gw.client().get(gw.url("/api/x")).bearer_auth(&admin).send().await.unwrap();
    let (status, www, _) = refused(resp).await;
    assert_eq!(status, 403);
    assert!(www.unwrap().ends_with(r#"scope="read""#));
}

async fn introspected(gw: &TestGateway, token: &str) -> Value {
    let resp = gw
        .client()
        .post(gw.url("/oauth/introspect"))
        .basic_auth("svc", Some(SVC_SECRET))
        .form(&[("token", token)])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

// ---------------------------------------------------------------------------------------
// Tokens signed by our own key that are still refused.

/// RFC 7515 §4.1.11: a `crit` header names extensions we do not understand, so the token
/// is refused; and no token may claim a longer life than the configuration issues.
#[tokio::test]
async fn tokens_with_crit_or_an_overlong_lifetime_are_refused_even_when_signed_by_our_key() {
    let (_up, gw) = setup().await;
    let now = portcullis::tokens::now_secs();
    let claims = |jti: &str, iat: Option<u64>, exp: u64| {
        let mut c = serde_json::json!({"iss": ISSUER, "aud": ISSUER, "sub": "svc", "client_id": "svc",
                                       "scope": "read", "jti": jti, "exp": exp});
        if let Some(iat) = iat {
            c["iat"] = iat.into();
        }
        c
    };
    let header = serde_json::json!({"alg": "EdDSA", "typ": "at+jwt", "kid": "k1"});
    // The control: a token of ours, minted by hand, is accepted.
    let good = signed_with(&gw, header.clone(), claims("hand-made", Some(now), now + 600));
    assert_eq!(proxied(&gw, &good).await.0, 200);
    assert_eq!(introspected(&gw, &good).await["active"], true);

    let mut crit = header.clone();
    crit["crit"] = serde_json::json!(["exp"]);
    let ten_years = 10 * 365 * 86_400;
    let cases = [
        ("crit header", signed_with(&gw, crit, claims("crit", Some(now), now + 600))),
        ("ten-year lifetime", signed_with(&gw, header.clone(), claims("long", Some(now), now + ten_years))),
        ("missing iat", signed_with(&gw, header.clone(), claims("no-iat", None, now + 600))),
    ];
    for (label, token) in &cases {
        assert_invalid_token(&gw, label, token).await;
        assert_eq!(introspected(&gw, token).await, serde_json::json!({"active": false}), "{label}");
    }
}

// ---------------------------------------------------------------------------------------
// Discovery: metadata, endpoint paths, the JWKS.

#[tokio::test]
async fn endpoint_paths_are_configurable() {
    let up = EchoUpstream::start().await;
    let gw = TestGateway::start_with(
        up.addr,
        "[endpoints]\ntoken = \"/auth/token\"\nmetadata = \"/auth/meta\"\njwks = \"/auth/keys\"\n",
    )
    .await;
    let client = gw.client();
    let d = get_json(&client, &gw.url("/auth/meta")).await;
    assert_eq!(d["token_endpoint"], format!("{ISSUER}/auth/token"));
    assert_eq!(d["jwks_uri"], format!("{ISSUER}/auth/keys"));
    let jwks = get_json(&client, &gw.url("/auth/keys")).await;
    assert_eq!(jwks["keys"][0]["kid"], "k1");
    // The default paths are now ordinary (unrouted) proxy paths.
    let resp = client.get(gw.url("/.well-known/jwks.json")).send().await.unwrap();
    assert_eq!(resp.status(), 404);
}

#[tokio::test]
async fn discovery_endpoints_are_read_only() {
    let (_up, gw) = setup().await;
    for path in ["/.well-known/oauth-authorization-server", "/.well-known/jwks.json"] {
        let resp = gw.client().post(gw.url(path)).body("x").send().await.unwrap();
        assert_eq!(resp.status(), 405, "{path}");
        assert_eq!(resp.headers()["allow"], "GET, HEAD");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["error"], "invalid_request");
        let resp = gw.client().head(gw.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), 200, "HEAD {path}");
    }
}

/// An RS256 private key (PKCS#8 PEM); the gateway does not generate RSA keys.
fn rsa_pem() -> String {
    rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap().serialize_pem()
}

/// Sign a JWT with a PEM private key file, as the named key would.
fn sign_with(alg: jsonwebtoken::Algorithm, kid: &str, pem_file: &Path) -> String {
    use jsonwebtoken::{EncodingKey, Header};
    let pem = std::fs::read(pem_file).unwrap();
    let key = match alg {
        jsonwebtoken::Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem).unwrap(),
        jsonwebtoken::Algorithm::ES256 => EncodingKey::from_ec_pem(&pem).unwrap(),
        _ => EncodingKey::from_rsa_pem(&pem).unwrap(),
    };
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_string());
    jsonwebtoken::encode(&header, &json!({"sub": "x", "exp": 4_000_000_000u64}), &key).unwrap()
}

/// Verify `token` with the JWK of `kid` from a JWK Set, as a resource server would.
fn verify_with_jwks(jwks: &Value, kid: &str, token: &str) -> Value {
    let jwk_json = jwks["keys"].as_array().unwrap().iter().find(|k| k["kid"] == kid).unwrap();
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(jwk_json.clone()).unwrap();
    let key = jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap();
    let alg: jsonwebtoken::Algorithm = jwk_json["alg"].as_str().unwrap().parse().unwrap();
    let mut v = jsonwebtoken::Validation::new(alg);
    v.validate_aud = false;
    v.set_required_spec_claims(&["exp"]);
    jsonwebtoken::decode::<Value>(token, &key, &v).unwrap_or_else(|e| panic!("{kid}: {e}")).claims
}

#[tokio::test]
async fn jwks_publishes_every_listed_public_key_and_never_hs256() {
    let up = EchoUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(dir.path());
    std::fs::write(dir.path().join("rs1.pem"), rsa_pem()).unwrap();
    let d = dir.path().display();
    // Verify-only keys listed before k1; k1 (the only active one) signs.
    let extra = format!(
        "[[key]]\nid = \"es1\"\nalgorithm = \"ES256\"\nfile = \"{d}/es1.pem\"\nactive = false\n\
         [[key]]\nid = \"rs1\"\nalgorithm = \"RS256\"\nfile = \"{d}/rs1.pem\"\nactive = false\ngenerate = false\n\
         [[key]]\nid = \"hs1\"\nalgorithm = \"HS256\"\nfile = \"{d}/hs1.key\"\nactive = false\n"
    );
    let text = config_toml(dir.path(), &pki, up.addr, &extra);
    let gw = TestGateway::start_text(dir, pki, &text).await;

    let jwks = get_json(&gw.client(), &gw.url("/.well-known/jwks.json")).await;
    let keys = jwks["keys"].as_array().unwrap();
    let kids: Vec<&str> = keys.iter().map(|k| k["kid"].as_str().unwrap()).collect();
    assert_eq!(kids, ["es1", "rs1", "k1"], "HS256 is never published");
    for k in keys {
        assert_eq!(k["use"], "sig");
        assert!(k.get("d").is_none() && k.get("k").is_none(), "no private or secret material: {k}");
    }
    assert_eq!(keys[0]["kty"], "EC");
    assert_eq!(keys[0]["crv"], "P-256");
    assert_eq!(keys[0]["alg"], "ES256");
    assert!(keys[0]["x"].is_string() && keys[0]["y"].is_string());
    assert_eq!(keys[1]["kty"], "RSA");
    assert_eq!(keys[1]["alg"], "RS256");
    assert_eq!(keys[1]["e"], "AQAB");
    assert_eq!(keys[2]["kty"], "OKP");
    assert_eq!(keys[2]["crv"], "Ed25519");
    assert_eq!(keys[2]["alg"], "EdDSA");

    // The published keys verify what the private halves signed.
    let gw_token = gw.token("svc", SVC_SECRET, None).await;
    assert_eq!(verify_with_jwks(&jwks, "k1", &gw_token)["client_id"], "svc");
    let dir = gw.dir.path();
    for (alg, kid, file) in
        [(jsonwebtoken::Algorithm::ES256, "es1", "es1.pem"), (jsonwebtoken::Algorithm::RS256, "rs1", "rs1.pem")]
    {
        let t = sign_with(alg, kid, &dir.join(file));
        assert_eq!(verify_with_jwks(&jwks, kid, &t)["sub"], "x");
    }
}

// ---------------------------------------------------------------------------------------
// POST /oauth/token with client_credentials: every success form and every error case.

#[tokio::test]
async fn form_body_with_basic_auth_issues_an_rfc9068_token() {
    let (_up, gw) = setup().await;
    let resp = gw
        .client()
        .post(gw.url("/oauth/token"))
        .basic_auth("svc", Some(SVC_SECRET))
        .form(&[("grant_type", "client_credentials"), ("scope", "read write")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["cache-control"], "no-store");
    assert_eq!(resp.headers()["pragma"], "no-cache");
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("application/json"));
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["token_type"], "Bearer");
    assert_eq!(v["expires_in"], 3600);
    assert_eq!(v["scope"], "read write");
    assert!(v.get("refresh_token").is_none());
    let now = portcullis::tokens::now_secs();
    let expires = v["expires"].as_u64().unwrap();
    assert!(expires >= now + 3590 && expires <= now + 3610, "expires {expires} vs now {now}");

    let token = v["access_token"].as_str().unwrap();
    let h = jwt_header(token);
    assert_eq!(h["typ"], "at+jwt");
    assert_eq!(h["alg"], "EdDSA");
    assert_eq!(h["kid"], "k1");
    let c = claims(token);
    assert_eq!(c["iss"], ISSUER);
    assert_eq!(c["aud"], ISSUER);
    assert_eq!(c["sub"], "svc");
    assert_eq!(c["client_id"], "svc");
    assert_eq!(c["scope"], "read write");
    assert_eq!(c["exp"].as_u64().unwrap(), expires);
    assert!(c["iat"].as_u64().unwrap() <= now + 1);
    assert!(c["jti"].as_str().unwrap().len() >= 16);
}

#[tokio::test]
async fn json_body_with_client_secret_post_and_comma_scopes() {
    let (_up, gw) = setup().await;
    let resp = gw
        .client()
        .post(gw.url("/oauth/token"))
        .json(&serde_json::json!({
            "grant_type": "client_credentials", "client_id": "svc", "client_secret": SVC_SECRET, "scope": "write,read"
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["scope"], "write read");
    assert!(v["expires"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn absent_scope_gives_the_client_default_and_linked_user_is_the_subject() {
    let (_up, gw) = setup().await;
    let t = gw.token("svc", SVC_SECRET, None).await;
    assert_eq!(claims(&t)["scope"], "read");
    let t = gw.token("linked", OTHER_SECRET, None).await;
    let c = claims(&t);
    assert_eq!(c["sub"], "alice");
    assert_eq!(c["client_id"], "linked");
}

/// POST a raw body with a content type, optional Basic; return (status, json, headers).
async fn raw(
    gw: &TestGateway,
    ctype: Option<&str>,
    body: impl Into<reqwest::Body>,
    basic: Option<(&str, &str)>,
) -> (u16, Value, reqwest::header::HeaderMap) {
    let mut req = gw.client().post(gw.url("/oauth/token")).body(body);
    if let Some(ct) = ctype {
        req = req.header("content-type", ct);
    }
    if let Some((id, secret)) = basic {
        req = req.basic_auth(id, Some(secret));
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let v: Value = resp.json().await.unwrap_or(Value::Null);
    (status, v, headers)
}

/// name, content type, body, Basic credentials, status, error code, description fragment.
type Case<'a> = (&'a str, Option<&'a str>, String, Option<(&'a str, &'a str)>, u16, &'a str, &'a str);

const FORM: &str = "application/x-www-form-urlencoded";

#[tokio::test]
async fn every_error_case_has_its_status_and_code() {
    let (_up, gw) = setup().await;
    let svc = Some(("svc", SVC_SECRET));
    let cases: Vec<Case> = vec![
        ("missing grant_type", Some(FORM), "scope=read".into(), svc, 400, "invalid_request", "\'grant_type\'"),
        ("unknown grant type", Some(FORM), "grant_type=magic".into(), svc, 400, "unsupported_grant_type", "\'magic\'"),
        (
            "duplicated parameter",
            Some(FORM),
            "grant_type=client_credentials&grant_type=client_credentials".into(),
            svc,
            400,
            "invalid_request",
            "\'grant_type\'",
        ),
        (
            "duplicated scope",
            Some(FORM),
            "grant_type=client_credentials&scope=read&scope=write".into(),
            svc,
            400,
            "invalid_request",
            "\'scope\'",
        ),
        (
            "wrong content type",
            Some("text/plain"),
            "grant_type=client_credentials".into(),
            svc,
            400,
            "invalid_request",
            "Content-Type",
        ),
        ("no content type", None, "grant_type=client_credentials".into(), svc, 400, "invalid_request", "Content-Type"),
        // A charset in which ASCII is not itself: read as bytes, the body is not the
        // client's (black-box note, stop 34: it was parsed as UTF-8).
        (
            "utf-16 form",
            Some("application/x-www-form-urlencoded; charset=utf-16"),
            "grant_type=client_credentials".into(),
            svc,
            400,
            "invalid_request",
            "Content-Type",
        ),
        (
            "utf-16 by RFC 2231 continuation",
            Some("application/x-www-form-urlencoded; charset*0=utf-16"),
            "grant_type=client_credentials".into(),
            svc,
            400,
            "invalid_request",
            "Content-Type",
        ),
        (
            "utf-7 json",
            Some("application/json; charset=\"UTF-7\""),
            "{\"grant_type\":\"client_credentials\"}".into(),
            svc,
            400,
            "invalid_request",
            "Content-Type",
        ),
        (
            "unknown client",
            Some(FORM),
            "grant_type=client_credentials&client_id=nobody&client_secret=x".into(),
            None,
            401,
            "invalid_client",
            "",
        ),
        (
            "wrong secret (post)",
            Some(FORM),
            "grant_type=client_credentials&client_id=svc&client_secret=wrong".into(),
            None,
            401,
            "invalid_client",
            "",
        ),
        (
            "no client authentication",
            Some(FORM),
            "grant_type=client_credentials".into(),
            None,
            401,
            "invalid_client",
            "",
        ),
        (
            "client id without secret",
            Some(FORM),
            "grant_type=client_credentials&client_id=svc".into(),
            None,
            401,
            "invalid_client",
            "",
        ),
        (
            "disabled client",
            Some(FORM),
            format!("grant_type=client_credentials&client_id=off&client_secret={OTHER_SECRET}"),
            None,
            401,
            "invalid_client",
            "",
        ),
        (
            "grant not allowed",
            Some(FORM),
            format!("grant_type=client_credentials&client_id=nogrant&client_secret={OTHER_SECRET}"),
            None,
            400,
            "unauthorized_client",
            "grant_type",
        ),
        (
            "scope not allowed",
            Some(FORM),
            "grant_type=client_credentials&scope=read%20root".into(),
            svc,
            400,
            "invalid_scope",
            "\'root\'",
        ),
        (
            "both auth methods",
            Some(FORM),
            format!("grant_type=client_credentials&client_id=svc&client_secret={SVC_SECRET}"),
            svc,
            400,
            "invalid_request",
            "client_secret",
        ),
        ("malformed json", Some("application/json"), "{\"grant_type\":".into(), svc, 400, "invalid_request", ""),
        ("json array", Some("application/json"), "[\"grant_type\"]".into(), svc, 400, "invalid_request", ""),
        (
            "json duplicate",
            Some("application/json"),
            "{\"grant_type\":\"client_credentials\",\"grant_type\":\"x\"}".into(),
            svc,
            400,
            "invalid_request",
            "\'grant_type\'",
        ),
        (
            "json nested value",
            Some("application/json"),
            "{\"grant_type\":\"client_credentials\",\"scope\":[\"read\"]}".into(),
            svc,
            400,
            "invalid_request",
            "\'scope\'",
        ),
    ];
    for (name, ctype, body, basic, status, code, needle) in cases {
        let (got, v, _) = raw(&gw, ctype, body, basic).await;
        assert_eq!(got, status, "{name}: {v}");
        assert_eq!(v["error"], code, "{name}: {v}");
        let desc = v["error_description"].as_str().unwrap_or_else(|| panic!("{name}: no description: {v}"));
        assert!(desc.contains(needle), "{name}: description {desc:?} lacks {needle:?}");
    }
}

#[tokio::test]
async fn wrong_basic_secret_is_401_with_a_basic_challenge() {
    let (_up, gw) = setup().await;
    let (status, v, headers) = raw(&gw, Some(FORM), "grant_type=client_credentials", Some(("svc", "nope"))).await;
    assert_eq!(status, 401);
    assert_eq!(v["error"], "invalid_client");
    assert!(headers["www-authenticate"].to_str().unwrap().starts_with("Basic realm="));
    assert_eq!(headers["cache-control"], "no-store");
}

#[tokio::test]
async fn oversized_body_is_refused_with_413() {
    let (_up, gw) = setup().await;
    let body = format!("grant_type=client_credentials&pad={}", "x".repeat(64 * 1024));
    let (status, v, _) = raw(&gw, Some(FORM), body, Some(("svc", SVC_SECRET))).await;
    assert_eq!(status, 413);
    assert_eq!(v["error"], "invalid_request");

    // The same without a Content-Length: a streamed (chunked) body is cut at the limit too.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = (0..64).map(|_| Ok(vec![b'x'; 1024])).collect();
    let stream = futures_util::stream::iter(chunks);
    let (status, v, _) = raw(&gw, Some(FORM), reqwest::Body::wrap_stream(stream), Some(("svc", SVC_SECRET))).await;
    assert_eq!(status, 413, "{v}");
}

#[tokio::test]
async fn get_on_the_token_endpoint_is_405() {
    let (_up, gw) = setup().await;
    let resp = gw.client().get(gw.url("/oauth/token")).send().await.unwrap();
    assert_eq!(resp.status(), 405);
    assert_eq!(resp.headers()["allow"], "POST");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"], "invalid_request");
}

/// The secret cache observed directly: a verification answered from the cache completes on
/// its first poll, while a real argon2 run goes to the blocking pool and cannot (it takes
/// tens of milliseconds; the future is polled once, right after the work was queued).
async fn answered_from_the_secret_cache(gw: &TestGateway, id: &str, secret: &str, hash: &str) -> bool {
    use futures_util::FutureExt;
    let kind = portcullis::oauth::client_auth::Kind::Client;
    gw.gateway.secrets.verify(kind, id, secret, hash).now_or_never() == Some(true)
}

#[tokio::test]
async fn a_verified_secret_is_remembered_and_a_wrong_one_never_is() {
    let (_up, gw) = setup().await;
    assert!(!answered_from_the_secret_cache(&gw, "svc", SVC_SECRET, SVC_HASH).await, "nothing verified yet");
    for _ in 0..3 {
        gw.token("svc", SVC_SECRET, None).await;
    }
    assert!(answered_from_the_secret_cache(&gw, "svc", SVC_SECRET, SVC_HASH).await, "the verified secret");
    let (status, _, _) = raw(&gw, Some(FORM), "grant_type=client_credentials", Some(("svc", "bad"))).await;
    assert_eq!(status, 401);
    assert!(!answered_from_the_secret_cache(&gw, "svc", "bad", SVC_HASH).await, "a wrong secret");
    // Secret rotation: the cached verification is tied to the hash it was made against.
    gw.rewrite_config(|t| t.replacen(SVC_HASH, OTHER_HASH, 1));
    assert!(!answered_from_the_secret_cache(&gw, "svc", SVC_SECRET, OTHER_HASH).await, "another hash");
    let (status, _, _) = raw(&gw, Some(FORM), "grant_type=client_credentials", Some(("svc", SVC_SECRET))).await;
    assert_eq!(status, 401, "the old secret must stop working after rotation");
    gw.token("svc", OTHER_SECRET, None).await;
    assert!(answered_from_the_secret_cache(&gw, "svc", OTHER_SECRET, OTHER_HASH).await, "the new secret");
}

#[tokio::test]
async fn plaintext_listener_serves_the_token_endpoint_too() {
    let (_up, gw) = setup().await;
    let resp = reqwest::Client::new()
        .post(gw.http_url("/oauth/token"))
        .basic_auth("svc", Some(SVC_SECRET))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

/// Black-box attack, stop 34: two `Authorization` fields at an OAuth endpoint acted as the
/// client of the first (`Basic svc` then `Basic other` got svc's token; good secret then
/// wrong secret passed), and two `Content-Type`s were read as the first. Both are singleton
/// fields (RFC 9110 §5.3) and a client uses one authentication method (RFC 6749 §2.3):
/// refused with 400 invalid_request at /token, /revoke and /introspect, over HTTP/1.1, TLS
/// and HTTP/2; and a bare `Basic` with no credentials is a failed Basic authentication.
#[tokio::test]
async fn fail_closed_repeated_authorization_or_content_type_is_400_at_every_oauth_endpoint() {
    use base64::Engine;
    let (_up, gw) = setup().await;
    let b64 = |id: &str, secret: &str| {
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}")))
    };
    let (svc, other, wrong) = (b64("svc", SVC_SECRET), b64("other", OTHER_SECRET), b64("svc", "wrong"));
    let plain = reqwest::Client::builder().no_proxy().build().unwrap();
    let clients = [
        ("HTTP/1.1", plain, gw.http_url("")),
        ("TLS", gw.client(), gw.url("")),
        ("HTTP/2", https_client(&gw.pki.ca_pem, true), gw.url("")),
    ];
    let token = svc_token(&gw).await;
    for (proto, client, base) in &clients {
        for (path, body) in [
            ("/oauth/token", "grant_type=client_credentials".to_string()),
            ("/oauth/revoke", format!("token={token}")),
            ("/oauth/introspect", format!("token={token}")),
        ] {
            for (what, fields, ctypes) in [
                ("two clients", vec![svc.as_str(), other.as_str()], vec![FORM]),
                ("good then wrong secret", vec![svc.as_str(), wrong.as_str()], vec![FORM]),
                ("Basic then Bearer", vec![svc.as_str(), "Bearer abc"], vec![FORM]),
                ("two content types", vec![svc.as_str()], vec![FORM, "application/json"]),
                ("the same content type twice", vec![svc.as_str()], vec![FORM, FORM]),
            ] {
                let mut req = client.post(format!("{base}{path}")).body(body.clone());
                for f in &fields {
                    req = req.header("authorization", *f);
                }
                for ct in &ctypes {
                    req = req.header("content-type", *ct);
                }
                let resp = req.send().await.unwrap();
                let status = resp.status().as_u16();
                let v: Value = resp.json().await.unwrap_or(Value::Null);
                assert_eq!(status, 400, "{proto} {path} {what}: {v}");
                assert_eq!(v["error"], "invalid_request", "{proto} {path} {what}: {v}");
                let header = if ctypes.len() > 1 { "Content-Type" } else { "Authorization" };
                assert!(v["error_description"].as_str().unwrap_or("").contains(header), "{proto} {path} {what}: {v}");
            }
            // `Basic` alone beside body credentials: a failed Basic authentication.
            let body = format!("{body}&client_id=svc&client_secret={SVC_SECRET}");
            let resp = client
                .post(format!("{base}{path}"))
                .header("authorization", "Basic")
                .header("content-type", FORM)
                .body(body)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 401, "{proto} {path} bare Basic");
            let v: Value = resp.json().await.unwrap();
            assert_eq!(v["error"], "invalid_client", "{proto} {path} bare Basic: {v}");
        }
    }
    // The login and consent forms: two Content-Types are not a form.
    let resp = gw
        .client()
        .post(gw.url("/oauth/authorize"))
        .header("content-type", FORM)
        .header("content-type", "application/json")
        .body("username=alice")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 415);
    // One of each still works, also with a charset in which ASCII is itself (Apache
    // HttpClient's forms declare ISO-8859-1).
    for ct in [
        FORM,
        "application/x-www-form-urlencoded; charset=UTF-8",
        "application/x-www-form-urlencoded; charset=ISO-8859-1",
    ] {
        let (status, v, _) = raw(&gw, Some(ct), "grant_type=client_credentials", Some(("svc", SVC_SECRET))).await;
        assert_eq!(status, 200, "{ct}: {v}");
    }
}
