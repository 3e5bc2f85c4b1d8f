//! Crafting JWTs: decoding a token's parts, and signing headers and claims of our choice
//! with the gateway's own key (valid signatures over bad claims) or with an HMAC secret.

use aws_lc_rs::signature::Ed25519KeyPair;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

use super::{ISSUER, TestGateway};

/// Part `i` of a JWT (0 the header, 1 the claims), decoded.
pub fn jwt_part(token: &str, i: usize) -> Value {
    let part = token.split('.').nth(i).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

pub fn b64(v: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(v)
}

/// The gateway's signing key, read from the file it generated on first start.
pub fn gateway_key(gw: &TestGateway) -> Ed25519KeyPair {
    let pem = std::fs::read(gw.dir.path().join("k1.pem")).unwrap();
    let der = pem::parse(pem).unwrap();
    Ed25519KeyPair::from_pkcs8(der.contents()).unwrap()
}

pub fn signing_input(header: &Value, claims: &Value) -> String {
    format!("{}.{}", b64(header.to_string().as_bytes()), b64(claims.to_string().as_bytes()))
}

pub fn sign_ed25519(key: &Ed25519KeyPair, header: &Value, claims: &Value) -> String {
    let input = signing_input(header, claims);
    let sig = key.sign(input.as_bytes());
    format!("{input}.{}", b64(sig.as_ref()))
}

pub fn sign_hs256(secret: &[u8], header: &Value, claims: &Value) -> String {
    let input = signing_input(header, claims);
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
    let tag = aws_lc_rs::hmac::sign(&key, input.as_bytes());
    format!("{input}.{}", b64(tag.as_ref()))
}

pub fn good_header() -> Value {
    json!({"alg": "EdDSA", "typ": "at+jwt", "kid": "k1"})
}

pub fn good_claims(client: &str, scope: &str) -> Value {
    let now = portcullis::tokens::now_secs();
    json!({
        "iss": ISSUER, "sub": client, "aud": ISSUER, "exp": now + 600, "iat": now,
        "jti": format!("crafted-{}", portcullis::tokens::random_token(8)), "client_id": client, "scope": scope,
    })
}

pub fn with(mut v: Value, key: &str, value: Value) -> Value {
    v[key] = value;
    v
}

pub fn without(mut v: Value, key: &str) -> Value {
    v.as_object_mut().unwrap().remove(key);
    v
}

/// A token signed by the gateway's own key with the given header and claims.
pub fn signed_with(gw: &TestGateway, header: Value, claims: Value) -> String {
    sign_ed25519(&gateway_key(gw), &header, &claims)
}

/// The claims of a JWT, decoded (not verified).
pub fn claims(token: &str) -> Value {
    jwt_part(token, 1)
}

/// The header of a JWT, decoded.
pub fn jwt_header(token: &str) -> Value {
    jwt_part(token, 0)
}
