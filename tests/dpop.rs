//! DPoP (RFC 9449): proofs made by a test client with an ES256 and an EdDSA key, at the
//! token endpoint and on the proxy path (cache miss and hit, HTTP/1.1 and HTTP/2), and
//! every bad proof an attacker would try, each refused with the RFC's error.

mod common;

use common::*;
use serde_json::{Value, json};

const NO_LIMITS: &str = "[rate_limit]\nenabled = false\n";

/// A client-credentials token for `svc` with a DPoP proof by `key`: status and body.
async fn dpop_token_request(gw: &TestGateway, proof: Option<&str>) -> (u16, Option<String>, Value) {
    let mut req = gw
        .client()
        .post(gw.url("/oauth/token"))
        .basic_auth("svc", Some(SVC_SECRET))
        .form(&[("grant_type", "client_credentials"), ("scope", "read")]);
    if let Some(p) = proof {
        req = req.header("DPoP", p);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let nonce = resp.headers().get("dpop-nonce").map(|v| v.to_str().unwrap().to_string());
    (status, nonce, resp.json().await.unwrap())
}

async fn dpop_token(gw: &TestGateway, key: &IdpKey) -> String {
    let proof = key.dpop_proof("POST", &gw.url("/oauth/token"), None);
    let (status, _, v) = dpop_token_request(gw, Some(&proof)).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["token_type"], "DPoP", "{v}");
    let token = v["access_token"].as_str().unwrap().to_string();
    assert_eq!(jwt_part(&token, 1)["cnf"]["jkt"], key.thumbprint());
    token
}

/// GET /api/x with `Authorization: <scheme> <token>` and these DPoP headers: status,
/// WWW-Authenticate, DPoP-Nonce and the body.
async fn call(
    client: &reqwest::Client,
    url: &str,
    scheme: &str,
    token: &str,
    proofs: &[&str],
) -> (u16, Option<String>, Option<String>, Value) {
    let mut req = client.get(url).header("authorization", format!("{scheme} {token}"));
    for p in proofs {
        req = req.header("DPoP", *p);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let h = |n: &str| resp.headers().get(n).map(|v| v.to_str().unwrap().to_string());
    let (www, nonce) = (h("www-authenticate"), h("dpop-nonce"));
    (status, www, nonce, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn dpop_bound_tokens_work_with_es256_and_eddsa_over_http1_and_http2() {
    let (_up, gw) = setup_with(NO_LIMITS).await;
    let url = gw.url("/api/x");
    for key in [IdpKey::es256("k"), IdpKey::ed25519("k")] {
        let token = dpop_token(&gw, &key).await;
        for client in [gw.client(), https_client(&gw.pki.ca_pem, true)] {
            // The first is a cache miss (or a hit after the other client), then hits.
            for _ in 0..2 {
                let proof = key.dpop_proof("GET", &url, Some(&token));
                let (status, www, _, v) = call(&client, &url, "DPoP", &token, &[&proof]).await;
                assert_eq!(status, 200, "{} {www:?} {v}", key.alg);
            }
        }
        // The proof is spent here: the upstream never sees it (nor the token).
        let proof = key.dpop_proof("GET", &gw.url("/api/echo"), Some(&token));
        let resp = gw
            .client()
            .get(gw.url("/api/echo"))
            .header("authorization", format!("DPoP {token}"))
            .header("DPoP", &proof)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let echo: Echo = resp.json().await.unwrap();
        assert!(echo.header("dpop").is_none() && echo.header("authorization").is_none(), "{echo:?}");
        assert_eq!(echo.header("x-auth-binding"), Some("dpop"));
        // The query is not part of htu (RFC 9449 §4.3 item 9): a proof for the URL without
        // it passes for the URL with it.
        let proof = key.dpop_proof("GET", &url, Some(&token));
        let (status, ..) = call(&gw.client(), &format!("{url}?a=1"), "DPoP", &token, &[&proof]).await;
        assert_eq!(status, 200);
        // A DPoP-bound token sent as a bearer token is refused, with or without a proof.
        let proof = key.dpop_proof("GET", &url, Some(&token));
        for proofs in [vec![], vec![proof.as_str()]] {
            let (status, www, _, v) = call(&gw.client(), &url, "Bearer", &token, &proofs).await;
            assert_eq!((status, v["error"].as_str()), (401, Some("invalid_token")), "{www:?}");
        }
    }
    let meta: Value =
        gw.client().get(gw.url("/.well-known/oauth-authorization-server")).send().await.unwrap().json().await.unwrap();
    assert_eq!(meta["dpop_signing_alg_values_supported"], json!(["ES256", "EdDSA", "RS256", "PS256"]));
}

async fn setup_with(extra: &str) -> (EchoUpstream, TestGateway) {
    let up = EchoUpstream::start().await;
    let gw = TestGateway::start_with(up.addr, extra).await;
    (up, gw)
}

/// Refused on the proxy path with `invalid_dpop_proof` and the DPoP challenge.
async fn assert_bad_proof(gw: &TestGateway, label: &str, token: &str, proofs: &[&str]) {
    let (status, www, _, v) = call(&gw.client(), &gw.url("/api/x"), "DPoP", token, proofs).await;
    assert_eq!(status, 401, "{label}: {v}");
    assert_eq!(v["error"], "invalid_dpop_proof", "{label}: {v}");
    let www = www.unwrap_or_default();
    assert!(www.starts_with("DPoP error=\"invalid_dpop_proof\", algs=\"ES256 EdDSA"), "{label}: {www}");
}

#[tokio::test]
async fn every_bad_proof_is_refused_on_the_proxy_path() {
    let (_up, gw) = setup_with(NO_LIMITS).await;
    let key = IdpKey::es256("k");
    let token = dpop_token(&gw, &key).await;
    let url = gw.url("/api/x");
    let port = gw.https.port();
    let now = portcullis::tokens::now_secs();
    let p = |edit: &dyn Fn(&mut Value, &mut Value)| key.dpop_proof_with("GET", &url, Some(&token), None, edit);

    assert_bad_proof(&gw, "no proof", &token, &[]).await;
    // alg none, HS256 (keyed with the public key), an alg the key cannot make.
    let none = p(&|h, _| h["alg"] = "none".into());
    let none = format!("{}.", none.rsplit_once('.').unwrap().0);
    assert_bad_proof(&gw, "alg none", &token, &[&none]).await;
    let mut claims = jwt_part(&p(&|_, _| {}), 1);
    claims["jti"] = "hs".into();
    let hs =
        sign_hs256(key.public_pem().as_bytes(), &json!({"alg": "HS256", "typ": "dpop+jwt", "jwk": key.jwk()}), &claims);
    assert_bad_proof(&gw, "HS256", &token, &[&hs]).await;
    assert_bad_proof(&gw, "alg EdDSA with an EC key", &token, &[&p(&|h, _| h["alg"] = "EdDSA".into())]).await;
    // typ, a private key in jwk, no jwk, a symmetric jwk.
    assert_bad_proof(&gw, "typ JWT", &token, &[&p(&|h, _| h["typ"] = "JWT".into())]).await;
    assert_bad_proof(&gw, "private jwk", &token, &[&p(&|h, _| h["jwk"]["d"] = "AAAA".into())]).await;
    assert_bad_proof(&gw, "no jwk", &token, &[&p(&|h, _| drop(h.as_object_mut().unwrap().remove("jwk")))]).await;
    assert_bad_proof(&gw, "oct jwk", &token, &[&p(&|h, _| h["jwk"] = json!({"kty": "oct", "k": "c2VjcmV0"}))]).await;
    // htu: scheme, host, port, path; and one that is no URL.
    for htu in [
        format!("http://localhost:{port}/api/x"),
        format!("https://evil.test:{port}/api/x"),
        format!("https://localhost:{}/api/x", port + 1),
        "https://localhost/api/x".to_string(),
        format!("https://localhost:{port}/api/y"),
        format!("https://localhost:{port}/api/x/"),
        format!("https://localhost:{port}/API/x"),
        "/api/x".to_string(),
    ] {
        assert_bad_proof(&gw, &format!("htu {htu}"), &token, &[&p(&|_, c| c["htu"] = htu.clone().into())]).await;
    }
    // Equivalent spellings of the right URL pass (scheme and host case, the default port
    // is not ours here, so only case).
    let upper = format!("HTTPS://LOCALHOST:{port}/api/x");
    let (status, ..) = call(&gw.client(), &url, "DPoP", &token, &[&p(&|_, c| c["htu"] = upper.clone().into())]).await;
    assert_eq!(status, 200, "scheme and host case are not significant");
    // htm.
    assert_bad_proof(&gw, "htm POST", &token, &[&p(&|_, c| c["htm"] = "POST".into())]).await;
    assert_bad_proof(&gw, "htm get", &token, &[&p(&|_, c| c["htm"] = "get".into())]).await;
    // iat outside the window (60 s), either way; missing.
    assert_bad_proof(&gw, "iat old", &token, &[&p(&|_, c| c["iat"] = (now - 120).into())]).await;
    assert_bad_proof(&gw, "iat ahead", &token, &[&p(&|_, c| c["iat"] = (now + 120).into())]).await;
    assert_bad_proof(&gw, "iat text", &token, &[&p(&|_, c| c["iat"] = now.to_string().into())]).await;
    // jti (RFC 9449 §4.2): empty, missing, not a string, too long. (A black-box report of
    // an accepted empty jti was its own helper replacing "" with a random one.)
    assert_bad_proof(&gw, "jti empty", &token, &[&p(&|_, c| c["jti"] = "".into())]).await;
    assert_bad_proof(&gw, "no jti", &token, &[&p(&|_, c| drop(c.as_object_mut().unwrap().remove("jti")))]).await;
    assert_bad_proof(&gw, "jti number", &token, &[&p(&|_, c| c["jti"] = 7.into())]).await;
    assert_bad_proof(&gw, "jti too long", &token, &[&p(&|_, c| c["jti"] = "j".repeat(257).into())]).await;
    // ath: missing, or for another token.
    let other = dpop_token(&gw, &key).await;
    assert_bad_proof(&gw, "no ath", &token, &[&p(&|_, c| drop(c.as_object_mut().unwrap().remove("ath")))]).await;
    assert_bad_proof(&gw, "ath of another token", &token, &[&key.dpop_proof("GET", &url, Some(&other))]).await;
    // Replayed jti; two proofs; an oversized proof; a signature over other claims.
    let once = key.dpop_proof("GET", &url, Some(&token));
    assert_eq!(call(&gw.client(), &url, "DPoP", &token, &[&once]).await.0, 200);
    assert_bad_proof(&gw, "replay", &token, &[&once]).await;
    let (a, b) = (key.dpop_proof("GET", &url, Some(&token)), key.dpop_proof("GET", &url, Some(&token)));
    assert_bad_proof(&gw, "two DPoP headers", &token, &[&a, &b]).await;
    assert_bad_proof(&gw, "oversized", &token, &[&p(&|_, c| c["pad"] = "x".repeat(5000).into())]).await;
    let sig = a.rsplit('.').next().unwrap();
    let forged = format!("{}.{sig}", p(&|_, c| c["jti"] = "forged".into()).rsplit_once('.').unwrap().0);
    assert_bad_proof(&gw, "forged", &token, &[&forged]).await;
    // A proof by another key than the token's (everything else right): invalid_token.
    let thief = IdpKey::es256("t");
    let (status, www, _, v) =
        call(&gw.client(), &url, "DPoP", &token, &[&thief.dpop_proof("GET", &url, Some(&token))]).await;
    assert_eq!((status, v["error"].as_str()), (401, Some("invalid_token")), "{www:?}");
    assert!(www.unwrap().starts_with("DPoP error=\"invalid_token\""));
    // A bearer token sent with the DPoP scheme and a proof: it names no key, so refused.
    let bearer = svc_token(&gw).await;
    let (status, ..) = call(&gw.client(), &url, "DPoP", &bearer, &[&key.dpop_proof("GET", &url, Some(&bearer))]).await;
    assert_eq!(status, 401);
    // A bearer token with a stray DPoP header, sent as Bearer: the header is ignored
    // (RFC 9449 §7.2 leaves it to the server; the token is a bearer token either way).
    let (status, ..) =
        call(&gw.client(), &url, "Bearer", &bearer, &[&key.dpop_proof("GET", &url, Some(&bearer))]).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn every_bad_proof_is_refused_at_the_token_endpoint() {
    let (_up, gw) = setup_with(NO_LIMITS).await;
    let key = IdpKey::ed25519("k");
    let url = gw.url("/oauth/token");
    let now = portcullis::tokens::now_secs();
    let p = |edit: &dyn Fn(&mut Value, &mut Value)| key.dpop_proof_with("POST", &url, None, None, edit);
    let bad = |label: &'static str, proofs: Vec<String>| {
        let gw = &gw;
        async move {
            let mut req = gw
                .client()
                .post(gw.url("/oauth/token"))
                .basic_auth("svc", Some(SVC_SECRET))
                .form(&[("grant_type", "client_credentials")]);
            for p in &proofs {
                req = req.header("DPoP", p);
            }
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            let v: Value = resp.json().await.unwrap();
            assert_eq!((status, v["error"].as_str()), (400, Some("invalid_dpop_proof")), "{label}: {v}");
        }
    };
    bad("htm GET", vec![p(&|_, c| c["htm"] = "GET".into())]).await;
    bad("htu path", vec![p(&|_, c| c["htu"] = gw.url("/oauth/tokens").into())]).await;
    bad("htu plain http", vec![p(&|_, c| c["htu"] = url.replace("https:", "http:").into())]).await;
    bad("iat old", vec![p(&|_, c| c["iat"] = (now - 600).into())]).await;
    bad("private jwk", vec![p(&|h, _| h["jwk"]["d"] = "AAAA".into())]).await;
    bad("alg none", vec![format!("{}.", p(&|h, _| h["alg"] = "none".into()).rsplit_once('.').unwrap().0)]).await;
    bad("two proofs", vec![p(&|_, _| {}), p(&|_, _| {})]).await;
    bad("garbage", vec!["x".into()]).await;
    let once = p(&|_, _| {});
    assert_eq!(dpop_token_request(&gw, Some(&once)).await.0, 200);
    bad("replay", vec![once]).await;
    // The same proof sent to the plain listener: another URL (scheme and port).
    let resp = gw
        .client()
        .post(gw.http_url("/oauth/token"))
        .basic_auth("svc", Some(SVC_SECRET))
        .header("DPoP", p(&|_, _| {}))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    // Without a proof: a bearer token, as before.
    let (status, _, v) = dpop_token_request(&gw, None).await;
    assert_eq!((status, v["token_type"].as_str()), (200, Some("Bearer")));
}

#[tokio::test]
async fn nonces_when_turned_on() {
    let (_up, gw) = setup_with(&format!("{NO_LIMITS}\n[dpop]\nnonce = true\n")).await;
    let key = IdpKey::es256("k");
    let token_url = gw.url("/oauth/token");
    // §8: the first proof has no nonce; the answer carries one.
    let (status, nonce, v) = dpop_token_request(&gw, Some(&key.dpop_proof("POST", &token_url, None))).await;
    assert_eq!((status, v["error"].as_str()), (400, Some("use_dpop_nonce")), "{v}");
    let nonce = nonce.expect("DPoP-Nonce");
    let bad = key.dpop_proof_with("POST", &token_url, None, Some("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"), |_, _| {});
    assert_eq!(dpop_token_request(&gw, Some(&bad)).await.2["error"], "use_dpop_nonce");
    let proof = key.dpop_proof_with("POST", &token_url, None, Some(&nonce), |_, _| {});
    let (status, _, v) = dpop_token_request(&gw, Some(&proof)).await;
    assert_eq!(status, 200, "{v}");
    let token = v["access_token"].as_str().unwrap().to_string();
    // §9: the same at the resource, as a 401 with the DPoP challenge.
    let url = gw.url("/api/x");
    let (status, www, fresh, v) =
        call(&gw.client(), &url, "DPoP", &token, &[&key.dpop_proof("GET", &url, Some(&token))]).await;
    assert_eq!((status, v["error"].as_str()), (401, Some("use_dpop_nonce")), "{v}");
    assert!(www.unwrap().starts_with("DPoP error=\"use_dpop_nonce\""));
    let fresh = fresh.expect("DPoP-Nonce");
    let proof = key.dpop_proof_with("GET", &url, Some(&token), Some(&fresh), |_, _| {});
    assert_eq!(call(&gw.client(), &url, "DPoP", &token, &[&proof]).await.0, 200);
}

/// POST /oauth/token as the public client `spa` with `form` and these DPoP proofs.
async fn spa_token(gw: &TestGateway, form: &[(&str, &str)], proof: Option<String>) -> (u16, Value) {
    let mut req = gw.client().post(gw.url("/oauth/token")).form(form);
    if let Some(p) = proof {
        req = req.header("DPoP", p);
    }
    let resp = req.send().await.unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

#[tokio::test]
async fn a_public_clients_refresh_token_is_bound_to_its_dpop_key() {
    let (_up, gw) = setup_with(NO_LIMITS).await;
    let key = IdpKey::ed25519("k");
    let url = gw.url("/oauth/token");
    let code = spa_code(&gw).await;
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("client_id", "spa"),
        ("redirect_uri", "https://spa.test/cb"),
        ("code_verifier", PKCE_VERIFIER),
    ];
    let (status, v) = spa_token(&gw, &form, Some(key.dpop_proof("POST", &url, None))).await;
    assert_eq!((status, v["token_type"].as_str()), (200, Some("DPoP")), "{v}");
    let refresh = v["refresh_token"].as_str().unwrap().to_string();
    let form = [("grant_type", "refresh_token"), ("refresh_token", refresh.as_str()), ("client_id", "spa")];
    // Without a proof, or with another key's: refused (and the token stays usable).
    let (status, v) = spa_token(&gw, &form, None).await;
    assert_eq!((status, v["error"].as_str()), (400, Some("invalid_grant")), "{v}");
    let thief = IdpKey::ed25519("t");
    let (status, v) = spa_token(&gw, &form, Some(thief.dpop_proof("POST", &url, None))).await;
    assert_eq!((status, v["error"].as_str()), (400, Some("invalid_grant")), "{v}");
    // With the key: a new DPoP-bound pair.
    let (status, v) = spa_token(&gw, &form, Some(key.dpop_proof("POST", &url, None))).await;
    assert_eq!((status, v["token_type"].as_str()), (200, Some("DPoP")), "{v}");
    let token = v["access_token"].as_str().unwrap();
    assert_eq!(jwt_part(token, 1)["cnf"]["jkt"], key.thumbprint());
}

#[tokio::test]
async fn token_binding_dpop_makes_a_proof_mandatory() {
    let (_up, gw) = setup_with(NO_LIMITS).await;
    gw.rewrite_config(|t| t.replacen("id = \"svc\"\n", "id = \"svc\"\ntoken_binding = \"dpop\"\n", 1));
    let (status, _, v) = dpop_token_request(&gw, None).await;
    assert_eq!((status, v["error"].as_str()), (400, Some("invalid_dpop_proof")), "{v}");
    let key = IdpKey::es256("k");
    let token = dpop_token(&gw, &key).await;
    let url = gw.url("/api/x");
    assert_eq!(call(&gw.client(), &url, "DPoP", &token, &[&key.dpop_proof("GET", &url, Some(&token))]).await.0, 200);
}

#[tokio::test]
async fn behind_a_trusted_proxy_htu_is_the_forwarded_url() {
    let (_up, gw) = setup_with(&format!("{NO_LIMITS}\n[proxy]\ntrusted_proxies = [\"127.0.0.1/32\"]\n")).await;
    let key = IdpKey::es256("k");
    let token = dpop_token(&gw, &key).await;
    let url = gw.http_url("/api/x");
    let send = |htu: String, proto: &'static str| {
        let (gw, key, token, url) = (&gw, &key, &token, &url);
        async move {
            let proof = key.dpop_proof("GET", &htu, Some(token));
            let resp = gw
                .client()
                .get(url)
                .header("authorization", format!("DPoP {token}"))
                .header("DPoP", proof)
                .header("x-forwarded-proto", proto)
                // The client wrote the first item; the trusted proxy appended the last.
                .header("x-forwarded-host", "evil.test, API.example.com")
                .send()
                .await
                .unwrap();
            resp.status().as_u16()
        }
    };
    assert_eq!(send("https://api.example.com/api/x".into(), "https").await, 200);
    assert_eq!(send("https://api.example.com:443/api/x".into(), "https").await, 200);
    assert_eq!(send("https://api.example.com/api/x".into(), "http").await, 401);
    assert_eq!(send("https://api.example.com/api/x".into(), "https, http").await, 401, "the last proto counts");
    assert_eq!(send("https://api.example.com/api/x".into(), "http, https").await, 200);
    assert_eq!(send("https://evil.test/api/x".into(), "https").await, 401, "the client's own item is not read");
    assert_eq!(send(url.clone(), "https").await, 401, "the gateway's own URL is not what the client addressed");
}

/// RFC 3986 §6.2.2: the request path and the proof's htu match however escapes of
/// unreserved characters and the case of escapes' hex are spelled on either side.
#[tokio::test]
async fn htu_and_path_are_compared_after_percent_encoding_normalisation() {
    let (_up, gw) = setup_with(NO_LIMITS).await;
    let key = IdpKey::es256("k");
    let token = dpop_token(&gw, &key).await;
    // (The proxy refuses a request path with escaped unreserved characters before any
    // token check; the proof's htu may still spell them so.)
    let cases =
        [("/api/~", "/api/%7E"), ("/api/~", "/api/%7e"), ("/api/a%3ab", "/api/a%3Ab"), ("/api/a%3Ab", "/api/a%3ab")];
    for (path, htu_path) in cases {
        let url = gw.http_url(path);
        let htu = gw.http_url(htu_path);
        let proof = key.dpop_proof("GET", &htu, Some(&token));
        let (status, www, _, v) = call(&gw.client(), &url, "DPoP", &token, &[&proof]).await;
        assert_eq!(status, 200, "{path} with htu {htu_path}: {www:?} {v}");
    }
    // Another path is still another path.
    let proof = key.dpop_proof("GET", &gw.http_url("/api/%7Ey"), Some(&token));
    assert_eq!(call(&gw.client(), &gw.http_url("/api/~"), "DPoP", &token, &[&proof]).await.0, 401);
}
