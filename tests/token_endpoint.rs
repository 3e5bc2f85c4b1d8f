//! POST /oauth/token with client_credentials: every success form and every error case.

mod common;

use base64::Engine;
use common::*;
use serde_json::Value;

async fn setup() -> (EchoUpstream, TestGateway) {
    let up = EchoUpstream::start().await;
    let gw = TestGateway::start(up.addr).await;
    (up, gw)
}

fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

fn header(token: &str) -> Value {
    let h = token.split('.').next().unwrap();
    serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(h).unwrap()).unwrap()
}

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
    let h = header(token);
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

const FORM: &str = "application/x-www-form-urlencoded";

#[tokio::test]
async fn every_error_case_has_its_status_and_code() {
    let (_up, gw) = setup().await;
    let svc = Some(("svc", SVC_SECRET));
    #[allow(clippy::type_complexity)]
    let cases: Vec<(&str, Option<&str>, String, Option<(&str, &str)>, u16, &str, &str)> = vec![
        ("missing grant_type", Some(FORM), "scope=read".into(), svc, 400, "invalid_request", "\"grant_type\""),
        ("unknown grant type", Some(FORM), "grant_type=magic".into(), svc, 400, "unsupported_grant_type", "\"magic\""),
        (
            "duplicated parameter",
            Some(FORM),
            "grant_type=client_credentials&grant_type=client_credentials".into(),
            svc,
            400,
            "invalid_request",
            "\"grant_type\"",
        ),
        (
            "duplicated scope",
            Some(FORM),
            "grant_type=client_credentials&scope=read&scope=write".into(),
            svc,
            400,
            "invalid_request",
            "\"scope\"",
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
            "\"root\"",
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
            "\"grant_type\"",
        ),
        (
            "json nested value",
            Some("application/json"),
            "{\"grant_type\":\"client_credentials\",\"scope\":[\"read\"]}".into(),
            svc,
            400,
            "invalid_request",
            "\"scope\"",
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

#[tokio::test]
async fn a_verified_secret_is_remembered_and_a_wrong_one_never_is() {
    let (_up, gw) = setup().await;
    for _ in 0..3 {
        gw.token("svc", SVC_SECRET, None).await;
    }
    let (status, _, _) = raw(&gw, Some(FORM), "grant_type=client_credentials", Some(("svc", "bad"))).await;
    assert_eq!(status, 401);
    // Secret rotation: the cached verification is tied to the hash it was made against.
    gw.rewrite_config(|t| t.replacen(SVC_HASH, OTHER_HASH, 1));
    let (status, _, _) = raw(&gw, Some(FORM), "grant_type=client_credentials", Some(("svc", SVC_SECRET))).await;
    assert_eq!(status, 401, "the old secret must stop working after rotation");
    gw.token("svc", OTHER_SECRET, None).await;
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
