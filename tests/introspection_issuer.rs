//! Opaque tokens through an introspection issuer (issue 16.3), end to end over loopback:
//! the test IdP (tests/common/idp.rs) hands out opaque tokens and answers RFC 7662
//! introspection about them; the gateway asks it about each token on the routes that
//! accept that issuer, passes the identity on, refuses a revoked token within
//! `max_cache`, answers an IdP fault with 401 (never 5xx) in bounded time, caches
//! negative answers, applies operator blocks, and never sends another issuer's token.

mod common;

use std::time::{Duration, Instant};

use common::*;
use portcullis::config::Config;
use serde_json::{Value, json};

/// The audience the opaque tokens are for.
const AUD: &str = "https://api.gateway.test";

/// An introspection issuer `opaque` for `idp`, with `extra` lines (timeouts and caches).
fn opaque_issuer(idp: &TestIdp, extra: &str) -> String {
    format!(
        r#"
[[trusted_issuer]]
name = "opaque"
kind = "introspection"
issuer = "{iss}"
introspection_endpoint = "{endpoint}"
client_id = "gw"
client_secret = "{IDP_CLIENT_SECRET}"
audience = ["{AUD}", "https://other.example"]
{extra}
"#,
        iss = idp.issuer,
        endpoint = idp.introspection_endpoint(),
    )
}

/// A JWT issuer `corp` for `idp`.
fn jwt_issuer(idp: &TestIdp) -> String {
    format!(
        "\n[[trusted_issuer]]\nname = \"corp\"\nissuer = \"{}\"\njwks_uri = \"{}\"\nalgorithms = [\"ES256\"]\naudience = \"{AUD}\"\n",
        idp.issuer,
        idp.jwks_uri()
    )
}

/// Routes: /op (opaque, scope read), /mixed (self and opaque), /both (corp and opaque),
/// /corp (corp only); /api is the template's (self only).
fn routes(up: &EchoUpstream, with_corp: bool) -> String {
    let mut r = format!(
        r#"
[[route]]
prefix = "/op"
upstream = "http://{up}"
scopes = ["read"]
issuers = ["opaque"]

[[route]]
prefix = "/mixed"
upstream = "http://{up}"
issuers = ["self", "opaque"]
"#,
        up = up.addr
    );
    if with_corp {
        r.push_str(&format!(
            "\n[[route]]\nprefix = \"/both\"\nupstream = \"http://{up}\"\nissuers = [\"corp\", \"opaque\"]\n\n[[route]]\nprefix = \"/corp\"\nupstream = \"http://{up}\"\nissuers = [\"corp\"]\n",
            up = up.addr
        ));
    }
    r
}

async fn gateway(up: &EchoUpstream, issuers: &str, with_corp: bool) -> TestGateway {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(dir.path());
    let text = format!("{}{}{}", config_toml(dir.path(), &pki, up.addr, ""), issuers, routes(up, with_corp))
        .replace("[admin]\n", &format!("[admin]\napi_key_hash = \"{OTHER_HASH}\"\n"));
    TestGateway::start_text(dir, pki, &text).await
}

async fn status(gw: &TestGateway, path: &str, token: &str) -> u16 {
    gw.client().get(gw.url(path)).bearer_auth(token).send().await.unwrap().status().as_u16()
}

/// The refusal of `token` on `path` is 401 `invalid_token` with the RFC 6750 challenge.
async fn assert_refused(gw: &TestGateway, path: &str, token: &str, label: &str) {
    let resp = gw.client().get(gw.url(path)).bearer_auth(token).send().await.unwrap();
    let (status, www, v) = refused(resp).await;
    assert_eq!(status, 401, "{label}: {v}");
    let www = www.unwrap_or_else(|| panic!("{label}: no WWW-Authenticate"));
    assert!(www.starts_with(&format!("{BEARER_CHALLENGE}, error=\"invalid_token\"")), "{label}: {www}");
    assert_eq!(v["error"], "invalid_token", "{label}");
}

fn requests(outcome: &str) -> String {
    format!("portcullis_introspection_requests_total{{issuer=\"opaque\",outcome=\"{outcome}\"}}")
}

/// A usual active answer for `sub` with scope `read`.
fn reader(sub: &str, jti: &str) -> Value {
    json!({"sub": sub, "client_id": "app", "scope": "read write", "jti": jti, "aud": AUD})
}

#[tokio::test]
async fn an_active_opaque_token_passes_and_a_revocation_shows_within_max_cache() {
    let up = EchoUpstream::start().await;
    let idp = TestIdp::start(vec![]).await;
    let gw = gateway(&up, &opaque_issuer(&idp, "max_cache = \"1s\"\nnegative_cache = \"1s\""), false).await;

    let token = idp.opaque_token(reader("alice", "o-1"));
    let echo = echo_get(&gw, "/op/x", &token).await;
    assert_identity(&echo, "app", "alice", "read write", "o-1", Some("alice"));
    assert_eq!(idp.introspections(), 1);
    // Reused from the client's cache, which is the only cache: the verdict cache is untouched.
    let hits = cache_hits(&gw).await;
    echo_get(&gw, "/op/x", &token).await;
    assert_eq!(idp.introspections(), 1, "answered from the introspection cache");
    assert_eq!(cache_hits(&gw).await, hits, "never in the verdict cache");
    assert!(counter(&gw, "portcullis_introspection_cache_hits_total{issuer=\"opaque\"}").await >= 1.0);
    // The template's own-token entries are the only verdicts cached.
    assert_eq!(counter(&gw, "portcullis_validation_cache_entries").await, 0.0);

    // Revoked at the IdP: refused within max_cache (1 s), with the RFC 6750 challenge.
    idp.revoke_opaque(&token);
    let gone = within(Duration::from_secs(10), async || status(&gw, "/op/x", &token).await == 401).await;
    let took = gone.expect("still accepted 10 s after the revocation");
    assert!(took < Duration::from_secs(5), "took {took:?} with max_cache = 1s");
    assert_refused(&gw, "/op/x", &token, "revoked").await;
    assert!(counter(&gw, &requests("active")).await >= 1.0);
    assert!(counter(&gw, &requests("inactive")).await >= 1.0);

    // A client acting for itself (no sub): the subject is the client, no user.
    let svc = idp.opaque_token(json!({"client_id": "svc-a", "scope": "read", "aud": [AUD, "x"]}));
    let echo = echo_get(&gw, "/op/x", &svc).await;
    assert_eq!(echo.header_all("x-auth-subject"), vec!["svc-a"], "{echo:?}");
    assert_eq!(echo.header_all("x-auth-client-id"), vec!["svc-a"], "{echo:?}");
    assert!(echo.header_all("x-auth-user").is_empty() && echo.header_all("x-auth-token-id").is_empty(), "{echo:?}");
    // aud missing or another API's: refused. Scope missing: 403.
    let no_aud = idp.opaque_token(json!({"sub": "bob", "scope": "read"}));
    assert_refused(&gw, "/op/x", &no_aud, "no aud").await;
    let other_api = idp.opaque_token(json!({"sub": "bob", "scope": "read", "aud": "https://elsewhere"}));
    assert_refused(&gw, "/op/x", &other_api, "other aud").await;
    let no_scope = idp.opaque_token(json!({"sub": "bob", "aud": AUD}));
    assert_eq!(status(&gw, "/op/x", &no_scope).await, 403);
    // Expired per its exp, another iss in the answer, a refresh token: refused.
    let expired = idp.opaque_token(json!({"sub": "bob", "scope": "read", "aud": AUD, "exp": 1000}));
    assert_refused(&gw, "/op/x", &expired, "expired").await;
    let wrong_iss = idp.opaque_token(json!({"sub": "bob", "scope": "read", "aud": AUD, "iss": "https://x.example"}));
    assert_refused(&gw, "/op/x", &wrong_iss, "wrong iss").await;
    let refresh = idp.opaque_token(json!({"sub": "bob", "scope": "read", "aud": AUD, "token_type": "refresh_token"}));
    assert_refused(&gw, "/op/x", &refresh, "refresh token").await;
    // A subject with a control character never reaches a header.
    let evil = idp.opaque_token(json!({"sub": "bob\r\nx-auth-user: root", "scope": "read", "aud": AUD}));
    assert_refused(&gw, "/op/x", &evil, "control character").await;
    // Nor one the upstream would read changed or that looks like another (src/text.rs),
    // in sub, client_id, jti or username.
    for (field, v) in
        [("sub", " bob"), ("sub", "   "), ("client_id", "app\u{85}"), ("jti", "j\u{200b}1"), ("username", "\u{a0}bob")]
    {
        let t = idp.opaque_token(json!({"sub": "bob", "scope": "read", "aud": AUD, field: v}));
        assert_refused(&gw, "/op/x", &t, &format!("{field} = {v:?}")).await;
    }

    // The scope is an RFC 6749 scope string, split on SP alone: a newline, a tab, a
    // Unicode space or a doubled space refuses the answer rather than meet `read`.
    for v in ["x\nread", "x\tread", "x\u{a0}read", "x\u{3000}read", "x  read", "read ", "re\"ad", "r\u{e9}ad read"] {
        let t = idp.opaque_token(json!({"sub": "bob", "scope": v, "aud": AUD}));
        assert_refused(&gw, "/op/x", &t, &format!("scope = {v:?}")).await;
    }
    let spaced = idp.opaque_token(json!({"sub": "bob", "scope": "x read", "aud": AUD}));
    assert_eq!(echo_get(&gw, "/op/x", &spaced).await.header_all("x-auth-scope"), vec!["x read"]);

    // A member named twice at any depth, even one the gateway does not read: refused.
    let answer = |extra: &str| {
        let exp = portcullis::tokens::now_secs() + 3600;
        format!(
            r#"{{"active":true,"iss":"{}","exp":{exp},"sub":"bob","scope":"read","aud":"{AUD}"{extra}}}"#,
            idp.issuer
        )
    };
    assert_eq!(status(&gw, "/op/x", &idp.opaque_token_text(&answer(r#","ext":{"a":1}"#))).await, 200);
    for extra in [r#","sub":"root""#, r#","ext":{"role":"user","role":"admin"}"#, r#","ext":[[{"a":1,"a":2}]]"#] {
        assert_refused(&gw, "/op/x", &idp.opaque_token_text(&answer(extra)), extra).await;
    }

    // /readyz?verbose lists the issuer, not required.
    let v: Value = reqwest::get(gw.admin_url("/readyz?verbose")).await.unwrap().json().await.unwrap();
    let o = &v["checks"]["issuers"]["opaque"];
    assert_eq!(o["kind"], "introspection", "{v}");
    assert_eq!(o["required"], false);
}

#[tokio::test]
async fn a_route_without_the_issuer_never_sends_the_token() {
    let up = EchoUpstream::start().await;
    let idp = TestIdp::start(vec![]).await;
    let key = IdpKey::es256("e1");
    let corp = TestIdp::start(vec![key.clone()]).await;
    let issuers = format!("{}{}", opaque_issuer(&idp, ""), jwt_issuer(&corp));
    let gw = gateway(&up, &issuers, true).await;

    let token = idp.opaque_token(reader("alice", "o-2"));
    // /api accepts only our own tokens, /corp only corp's: refused, the IdP not asked.
    assert_refused(&gw, "/api/x", &token, "self-only route").await;
    assert_eq!(status(&gw, "/corp/x", &token).await, 401);
    assert_eq!(idp.introspections(), 0);
    assert_eq!(status(&gw, "/op/x", &token).await, 200);
    assert_eq!(status(&gw, "/mixed/x", &token).await, 200);
    assert_eq!(idp.introspections(), 1);

    // Our own token on a route with an introspection issuer: verified here, never sent;
    // on a route that accepts only the introspection issuer: refused, never sent.
    let own = svc_token(&gw).await;
    assert_eq!(status(&gw, "/mixed/x", &own).await, 200);
    assert_refused(&gw, "/op/x", &own, "own token on an opaque-only route").await;
    // A JWT issuer's token on a route accepting it and the introspection issuer: verified
    // with its keys, never sent.
    let mut c = corp.claims("carol", AUD);
    c["scope"] = json!("read");
    let jwt = key.sign(&c);
    wait_until("corp keys", || async { status(&gw, "/corp/x", &jwt).await == 200 }).await;
    assert_eq!(status(&gw, "/both/x", &jwt).await, 200);
    // A JWT naming an unknown issuer: refused, never sent.
    c["iss"] = json!("https://unknown.example");
    assert_eq!(status(&gw, "/op/x", &key.sign(&c)).await, 401);
    // A JWT whose iss cannot be read (named twice): refused, never sent.
    let twice = format!(
        "e30.{}.sig",
        base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            format!(r#"{{"iss":"{}","iss":"{ISSUER}"}}"#, idp.issuer)
        )
    );
    assert_refused(&gw, "/op/x", &twice, "iss twice").await;
    assert_eq!(idp.introspections(), 1, "no other issuer's token reached the IdP");

    // A JWT naming the introspection issuer is asked about like an opaque token.
    c["iss"] = json!(idp.issuer);
    assert_eq!(status(&gw, "/op/x", &key.sign(&c)).await, 401, "the IdP does not know it");
    assert_eq!(idp.introspections(), 2);
}

#[tokio::test]
async fn idp_faults_are_401_in_bounded_time_and_negative_answers_are_cached() {
    let up = EchoUpstream::start().await;
    let idp = TestIdp::start(vec![]).await;
    let gw = gateway(&up, &opaque_issuer(&idp, "timeout = \"1s\"\nnegative_cache = \"30s\""), false).await;

    // An unknown token, asked five times: one request (the inactive answer is cached).
    for _ in 0..5 {
        assert_refused(&gw, "/op/x", "opq_nobody-knows-this", "unknown").await;
    }
    assert_eq!(idp.introspections(), 1);

    // The IdP answers 500: 401, not 5xx; the failure is cached for negative_cache.
    idp.set_introspect_status(Some(500));
    let token = idp.opaque_token(reader("alice", "o-3"));
    for _ in 0..3 {
        assert_refused(&gw, "/op/x", &token, "IdP 500").await;
    }
    assert_eq!(idp.introspections(), 2, "one request for three refusals");
    assert!(counter(&gw, &requests("status")).await >= 1.0);

    // The IdP hangs: 401 after the 1 s timeout, not a held request.
    idp.set_introspect_status(None);
    idp.set_delay(Some(Duration::from_secs(5)));
    let slow = idp.opaque_token(reader("alice", "o-4"));
    let started = Instant::now();
    assert_refused(&gw, "/op/x", &slow, "IdP timeout").await;
    assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
    assert!(counter(&gw, &requests("timeout")).await >= 1.0);

    // The IdP recovers: a fresh token passes at once (a failed one waits out negative_cache).
    idp.set_delay(None);
    let fresh = idp.opaque_token(reader("alice", "o-5"));
    assert_eq!(status(&gw, "/op/x", &fresh).await, 200);
    assert_eq!(status(&gw, "/op/x", &token).await, 401, "its failure is still cached");
}

#[tokio::test]
async fn operator_blocks_cover_introspected_tokens_under_the_issuers_iss() {
    let up = EchoUpstream::start().await;
    let idp = TestIdp::start(vec![]).await;
    let gw = gateway(&up, &opaque_issuer(&idp, "max_cache = \"5m\""), false).await;
    let blocks = |method: &'static str, body: Value| {
        reqwest::Client::new()
            .request(method.parse().unwrap(), gw.admin_url("/blocks"))
            .header("authorization", format!("Bearer {OTHER_SECRET}"))
            .json(&body)
            .send()
    };
    let token = idp.opaque_token(reader("mallory", "o-9"));
    assert_eq!(status(&gw, "/op/x", &token).await, 200, "introspected and cached by the client");

    assert_eq!(blocks("POST", json!({"jti": "o-9", "iss": "https://elsewhere.example"})).await.unwrap().status(), 201);
    assert_eq!(status(&gw, "/op/x", &token).await, 200, "another issuer's jti");
    assert_eq!(blocks("POST", json!({"jti": "o-9", "iss": idp.issuer})).await.unwrap().status(), 201);
    assert_refused(&gw, "/op/x", &token, "jti blocked").await;
    assert_eq!(blocks("DELETE", json!({"jti": "o-9", "iss": idp.issuer})).await.unwrap().status(), 200);
    assert_eq!(status(&gw, "/op/x", &token).await, 200);
    assert_eq!(blocks("POST", json!({"sub": "mallory"})).await.unwrap().status(), 201);
    assert_refused(&gw, "/op/x", &token, "subject blocked").await;
    let other = idp.opaque_token(reader("alice", "o-10"));
    assert_eq!(status(&gw, "/op/x", &other).await, 200);
    assert_eq!(idp.introspections(), 2, "blocks are checked on the cached answer");
}

#[tokio::test]
async fn a_reload_keeps_an_unchanged_issuers_client_and_cache() {
    let up = EchoUpstream::start().await;
    let idp = TestIdp::start(vec![]).await;
    let gw = gateway(&up, &opaque_issuer(&idp, "max_cache = \"5m\"\ntimeout = \"2s\""), false).await;
    let token = idp.opaque_token(reader("alice", "o-11"));
    assert_eq!(status(&gw, "/op/x", &token).await, 200);
    let up_addr = up.addr;
    // A new route naming a claim: the issuer's settings are unchanged, so is its client.
    gw.rewrite_config(|t| {
        format!(
            "{t}\n[[route]]\nprefix = \"/extra\"\nupstream = \"http://{up_addr}\"\nissuers = [\"opaque\"]\n[route.claims]\nusername = \"alice@corp\"\n"
        )
    });
    // Claim rules see the RFC 7662 members: username is absent here, so refused (403).
    wait_until("the reload", || async { status(&gw, "/extra/x", &token).await == 403 }).await;
    assert_eq!(status(&gw, "/op/x", &token).await, 200);
    assert_eq!(idp.introspections(), 1, "the cached answer survived the reload");
    assert_eq!(counter(&gw, &requests("active")).await, 1.0, "and the counters");
    let named = idp.opaque_token(json!({"sub": "alice", "username": "alice@corp", "aud": AUD}));
    assert_eq!(status(&gw, "/extra/x", &named).await, 200);

    // A changed setting builds a new client: asked again.
    let before = idp.introspections();
    gw.rewrite_config(|t| t.replace("timeout = \"2s\"", "timeout = \"3s\""));
    wait_until("a new client asks again", || async {
        status(&gw, "/op/x", &token).await == 200 && idp.introspections() > before
    })
    .await;
    assert_eq!(idp.introspections(), before + 1, "once, then from the new client's cache");
}

/// Each refusal names the file and the line.
#[test]
fn config_errors_point_at_the_line() {
    let base = |extra: &str| {
        format!(
            "issuer = \"https://gateway.test\"\n\n[[listener]]\naddress = \"127.0.0.1:0\"\ntls = false\n\n[[key]]\nid = \"k1\"\nfile = \"/nonexistent/k1.pem\"\n{extra}"
        )
    };
    // Lines 11.. : [[trusted_issuer]] at 11, name 12, kind 13, issuer 14, endpoint 15,
    // client_id 16, client_secret 17, audience 18, then `body`.
    let issuer = |name: &str, body: &str| {
        format!(
            "\n[[trusted_issuer]]\nname = \"{name}\"\nkind = \"introspection\"\nissuer = \"https://idp.example\"\nintrospection_endpoint = \"https://idp.example/introspect\"\nclient_id = \"gw\"\nclient_secret = \"s3cret\"\naudience = \"api\"\n{body}"
        )
    };
    let op = |body: &str| issuer("op", body);
    let cases: Vec<(String, &str, usize)> = vec![
        (op("algorithms = [\"RS256\"]"), "algorithms is for kind = \"jwt\"", 19),
        (op("jwks_uri = \"https://idp.example/jwks\""), "jwks_uri is for kind", 19),
        (op("subject_claim = \"uid\""), "subject_claim is for kind", 19),
        (op("refresh_min = \"1m\""), "refresh_min is for kind", 19),
        (op("max_cache = \"2h\""), "max_cache may be at most 1h", 19),
        (op("negative_cache = \"5m\""), "negative_cache may be at most 1m", 19),
        (op("max_cache = \"soon\""), "bad duration", 19),
        (op("").replace("client_secret = \"s3cret\"\n", ""), "client_secret is required", 12),
        (op("").replace("client_id = \"gw\"\n", ""), "client_id is required", 12),
        (op("").replace("introspection_endpoint = \"https://idp.example/introspect\"\n", ""), "introspection_endpoint is required", 12),
        (op("").replace("client_secret = \"s3cret\"", "client_secret = \"\""), "non-empty", 17),
        (op("").replace("https://idp.example/introspect", "http://idp.example/introspect"), "travel in clear", 15),
        (op("").replace("https://idp.example/introspect", "ftp://idp.example/i"), "https", 15),
        (op("").replace("audience = \"api\"\n", ""), "audience is required", 12),
        (op("").replace("\"introspection\"", "\"saml\""), "unknown issuer kind", 13),
        // The introspection keys on a JWT issuer.
        (
            "\n[[trusted_issuer]]\nname = \"j\"\nissuer = \"https://idp.example\"\nalgorithms = [\"RS256\"]\naudience = \"api\"\nmax_cache = \"1m\"\n".into(),
            "max_cache is for kind = \"introspection\"",
            16,
        ),
        (
            "\n[[trusted_issuer]]\nname = \"j\"\nissuer = \"https://idp.example\"\nalgorithms = [\"RS256\"]\naudience = \"api\"\nclient_secret = \"x\"\n".into(),
            "client_secret is for kind = \"introspection\"",
            16,
        ),
        // Two introspection issuers on one route.
        (
            format!(
                "{}{}\n[[route]]\nprefix = \"/x\"\nupstream = \"http://127.0.0.1:1\"\nissuers = [\"op\", \"op2\"]\n",
                op(""),
                issuer("op2", "").replace("https://idp.example", "https://idp2.example")
            ),
            "at most one",
            32,
        ),
    ];
    for (extra, want, line) in cases {
        let text = base(&extra);
        let err = Config::parse(&text, std::path::Path::new("gateway.toml")).expect_err(&extra).to_string();
        assert!(err.contains(want), "want {want:?}, got {err}\n{text}");
        assert!(err.starts_with(&format!("gateway.toml:{line}:")), "want line {line}, got {err}\n{text}");
        assert!(!err.contains("s3cret"), "the secret is never shown: {err}");
    }
    // A good one parses: one introspection issuer beside self on a route; its Debug hides the secret.
    let good = base(&format!(
        "{}\n[[route]]\nprefix = \"/x\"\nupstream = \"http://127.0.0.1:1\"\nissuers = [\"self\", \"op\"]\n",
        op("max_cache = \"0\"\nnegative_cache = \"10s\"\ntimeout = \"2s\"\nca = \"/etc/ssl/idp.pem\"")
    ));
    let cfg = Config::parse(&good, std::path::Path::new("gateway.toml")).unwrap();
    assert!(cfg.trusted_issuers[0].is_introspection());
    let shown = format!("{:?}", cfg.trusted_issuers[0]);
    assert!(!shown.contains("s3cret") && shown.contains("<redacted>"), "{shown}");
    // `check`'s summary names the endpoint and the bounds, never the secret.
    let mut summary = Vec::new();
    cfg.write_summary(&mut summary).unwrap();
    let summary = String::from_utf8(summary).unwrap();
    assert!(
        summary.contains("introspection=https://idp.example/introspect") && summary.contains("max_cache=0s"),
        "{summary}"
    );
    assert!(!summary.contains("s3cret"), "{summary}");
}

/// `check` builds the introspection client as `serve` does: a missing CA is refused.
#[test]
fn check_refuses_a_missing_introspection_ca() {
    let err = issuer_preflight_error(
        r#"name = "op"
kind = "introspection"
issuer = "https://idp.example"
introspection_endpoint = "https://idp.example/introspect"
client_id = "gw"
client_secret = "s3cret"
audience = "api"
ca = "{d}/missing-ca.pem"
"#,
    );
    assert!(err.contains(":12:") && err.contains("missing-ca.pem"), "{err}");
}
