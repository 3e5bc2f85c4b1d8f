//! Hostile input end to end (issue 7): rate limits against brute force, token and grant
//! attacks not covered in proxy.rs and user_grants.rs, open redirects, header spoofing,
//! request smuggling, oversized and slow requests, path tricks, and random input from a
//! property-based generator. Each case asserts the exact rejection.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
const IDENTITY: [&str; 5] = ["x-auth-client-id", "x-auth-subject", "x-auth-scope", "x-auth-token-id", "x-auth-user"];

async fn setup() -> (EchoUpstream, TestGateway) {
    let up = EchoUpstream::start().await;
    let gw = TestGateway::start(up.addr).await;
    (up, gw)
}

/// Status, `error` and `WWW-Authenticate` of a GET on /api/x with `token`.
async fn proxied(gw: &TestGateway, token: &str) -> (u16, Value, Option<String>) {
    let resp = gw.client().get(gw.url("/api/x")).bearer_auth(token).send().await.unwrap();
    let status = resp.status().as_u16();
    let www = resp.headers().get("www-authenticate").map(|v| v.to_str().unwrap().to_string());
    (status, resp.json().await.unwrap(), www)
}

async fn assert_invalid_token(gw: &TestGateway, label: &str, token: &str) {
    let (status, v, www) = proxied(gw, token).await;
    assert_eq!((status, v["error"].as_str()), (401, Some("invalid_token")), "{label}: {v}");
    assert!(www.unwrap_or_default().contains("error=\"invalid_token\""), "{label}");
}

fn spa_query<'a>() -> Vec<(&'a str, &'a str)> {
    vec![
        ("response_type", "code"),
        ("client_id", "spa"),
        ("redirect_uri", "https://spa.test/cb"),
        ("state", "s1"),
        ("code_challenge", CHALLENGE),
        ("code_challenge_method", "S256"),
    ]
}

async fn spa_code(gw: &TestGateway) -> String {
    let mut b = Browser::new(gw);
    login_and_consent(&mut b, gw, &spa_query()).await.location_param("code").unwrap()
}

async fn password_tokens(gw: &TestGateway) -> (String, String) {
    let form = [("grant_type", "password"), ("username", "alice"), ("password", ALICE_PASSWORD)];
    let (status, v) = token_request(gw, Some(("webapp", SVC_SECRET)), &form).await;
    assert_eq!(status, 200, "{v}");
    (v["access_token"].as_str().unwrap().to_string(), v["refresh_token"].as_str().unwrap().to_string())
}

/// One sample of a Prometheus counter from the admin listener (0 when absent).
async fn counter(gw: &TestGateway, series: &str) -> f64 {
    let text = reqwest::get(gw.admin_url("/metrics")).await.unwrap().text().await.unwrap();
    text.lines().find_map(|l| l.strip_prefix(series).and_then(|rest| rest.trim().parse().ok())).unwrap_or(0.0)
}

// ---------------------------------------------------------------------------------------
// Rate limits.

/// The gateway's answer when it throttles a token request.
fn assert_slow_down(status: u16, retry_after: Option<&str>, v: &Value, max_secs: u64, label: &str) {
    assert_eq!((status, v["error"].as_str()), (429, Some("slow_down")), "{label}: {v}");
    assert!(v["error_description"].as_str().unwrap().starts_with("Too many requests"), "{label}: {v}");
    let secs: u64 = retry_after.unwrap_or_else(|| panic!("{label}: no Retry-After")).parse().unwrap();
    assert!((1..=max_secs).contains(&secs), "{label}: Retry-After {secs}");
}

async fn token_raw(
    client: &reqwest::Client,
    url: &str,
    basic: (&str, &str),
    headers: &[(&str, &str)],
) -> (u16, Option<String>, Value) {
    let mut req = client.post(url).basic_auth(basic.0, Some(basic.1)).form(&[("grant_type", "client_credentials")]);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let retry = resp.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
    (status, retry, resp.json().await.unwrap())
}

#[tokio::test]
async fn rate_limit_client_secret_brute_force_is_throttled_without_locking_out_other_clients() {
    let up = EchoUpstream::start().await;
    let extra = "[rate_limit]\nclient_failures = 3\nclient_failures_window = \"1h\"\n";
    let gw = TestGateway::start_with(up.addr, extra).await;
    let (c, url) = (gw.client(), gw.url("/oauth/token"));
    // Successes do not count against a client.
    for _ in 0..6 {
        assert_eq!(token_raw(&c, &url, ("svc", SVC_SECRET), &[]).await.0, 200);
    }
    for i in 0..3 {
        let (status, _, v) = token_raw(&c, &url, ("svc", &format!("guess-{i}")), &[]).await;
        assert_eq!((status, v["error"].as_str()), (401, Some("invalid_client")), "guess {i}");
    }
    let (status, retry, v) = token_raw(&c, &url, ("svc", "guess-3"), &[]).await;
    assert_slow_down(status, retry.as_deref(), &v, 1200, "fourth guess");
    // While its secret is under attack the client itself is throttled, before any argon2 work...
    let (status, retry, v) = token_raw(&c, &url, ("svc", SVC_SECRET), &[]).await;
    assert_slow_down(status, retry.as_deref(), &v, 1200, "svc during the attack");
    // ...but no other client is: their budgets are their own.
    assert_eq!(token_raw(&c, &url, ("linked", OTHER_SECRET), &[]).await.0, 200);
    let (status, _, v) = token_raw(&c, &url, ("linked", "wrong"), &[]).await;
    assert_eq!((status, v["error"].as_str()), (401, Some("invalid_client")));
    assert_eq!(token_raw(&c, &url, ("linked", OTHER_SECRET), &[]).await.0, 200);
    assert_eq!(counter(&gw, "portcullis_rate_limited_total{endpoint=\"token\"}").await, 2.0);
}

#[tokio::test]
async fn rate_limit_per_source_ip_counts_a_failure_as_failure_cost_requests() {
    let up = EchoUpstream::start().await;
    let extra = "[rate_limit]\nip_burst = 10\nip_rate = 1\nip_window = \"1h\"\nfailure_cost = 5\n";
    let gw = TestGateway::start_with(up.addr, extra).await;
    let (c, url) = (gw.client(), gw.url("/oauth/token"));
    assert_eq!(token_raw(&c, &url, ("svc", SVC_SECRET), &[]).await.0, 200); // 9 left
    let (status, _, v) = token_raw(&c, &url, ("nobody", "x"), &[]).await; // 4 left
    assert_eq!((status, v["error"].as_str()), (401, Some("invalid_client")));
    for i in 0..4 {
        assert_eq!(token_raw(&c, &url, ("svc", SVC_SECRET), &[]).await.0, 200, "request {i}");
    }
    let started = Instant::now();
    let (status, retry, v) = token_raw(&c, &url, ("svc", SVC_SECRET), &[]).await;
    assert_slow_down(status, retry.as_deref(), &v, 3600, "after the budget");
    let secs: u64 = retry.unwrap().parse().unwrap();
    assert!(secs + started.elapsed().as_secs() + 60 >= 3600, "one unit refills in an hour: {secs}");
    // The plaintext listener is the same source: same bucket.
    let plain = reqwest::Client::builder().no_proxy().build().unwrap();
    let (status, retry, v) = token_raw(&plain, &gw.http_url("/oauth/token"), ("svc", SVC_SECRET), &[]).await;
    assert_slow_down(status, retry.as_deref(), &v, 3600, "plaintext");
    // The login form has its own per-IP bucket.
    let mut b = Browser::new(&gw);
    let q = [("response_type", "code"), ("client_id", "first"), ("state", "s")];
    let login = b.get(&authorize_url(&gw, &q)).await;
    let done = b.submit(&gw, &login, &[("username", "alice"), ("password", ALICE_PASSWORD)]).await;
    assert_eq!(done.status, 303, "{}", done.body);
}

#[tokio::test]
async fn rate_limit_source_ip_comes_from_x_forwarded_for_only_through_a_trusted_proxy() {
    let up = EchoUpstream::start().await;
    let extra = "[proxy]\ntrusted_proxies = [\"127.0.0.2\"]\n\
                 [rate_limit]\nip_burst = 2\nip_rate = 1\nip_window = \"1h\"\nfailure_cost = 1\n";
    let gw = TestGateway::start_with(up.addr, extra).await;
    let url = gw.http_url("/oauth/token");
    let from =
        |ip: &str| reqwest::Client::builder().no_proxy().local_address(ip.parse::<IpAddr>().unwrap()).build().unwrap();
    let (direct, proxy) = (from("127.0.0.1"), from("127.0.0.2"));
    // An untrusted peer's X-Forwarded-For is ignored: every value shares the peer's bucket.
    for (i, xff) in ["198.51.100.1", "198.51.100.2", "198.51.100.3"].iter().enumerate() {
        let (status, _, _) = token_raw(&direct, &url, ("svc", SVC_SECRET), &[("x-forwarded-for", xff)]).await;
        assert_eq!(status, if i < 2 { 200 } else { 429 }, "spoofed {xff}");
    }
    // Through the trusted proxy, each original client has its own bucket.
    for xff in ["198.51.100.1", "198.51.100.1"] {
        assert_eq!(token_raw(&proxy, &url, ("svc", SVC_SECRET), &[("x-forwarded-for", xff)]).await.0, 200);
    }
    let (status, retry, v) = token_raw(&proxy, &url, ("svc", SVC_SECRET), &[("x-forwarded-for", "198.51.100.1")]).await;
    assert_slow_down(status, retry.as_deref(), &v, 3600, "third from 198.51.100.1");
    let xff = [("x-forwarded-for", "6.6.6.6, 198.51.100.2")];
    assert_eq!(token_raw(&proxy, &url, ("svc", SVC_SECRET), &xff).await.0, 200, "nearest untrusted hop counts");
    assert_eq!(token_raw(&proxy, &url, ("svc", SVC_SECRET), &[]).await.0, 200, "the proxy's own requests");
}

#[tokio::test]
async fn rate_limit_login_brute_force_is_throttled_per_username_only() {
    let up = EchoUpstream::start().await;
    let extra = format!(
        "[rate_limit]\nuser_failures = 3\nuser_failures_window = \"1h\"\n\n\
         [[user]]\nusername = \"carol\"\npassword_hash = \"{ALICE_HASH}\"\n"
    );
    let gw = TestGateway::start_with(up.addr, &extra).await;
    let q = [("response_type", "code"), ("client_id", "first"), ("state", "s")];
    let mut b = Browser::new(&gw);
    let mut page = b.get(&authorize_url(&gw, &q)).await;
    for user in ["alice", "mallory"] {
        for i in 0..3 {
            page = b.submit(&gw, &page, &[("username", user), ("password", "guess")]).await;
            assert_eq!(page.status, 401, "{user} guess {i}: {}", page.body);
            assert!(page.body.contains("The username or password is incorrect."));
        }
        // The fourth attempt is refused before the password is checked, right or wrong,
        // and an unknown name is treated exactly like a known one.
        let cookie: Vec<String> = b.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut fields = page.fields();
        fields.retain(|(k, _)| k != "username" && k != "password");
        fields.push(("username".into(), user.into()));
        fields.push(("password".into(), ALICE_PASSWORD.into()));
        let resp = gw
            .client()
            .post(gw.url("/oauth/authorize"))
            .header("cookie", cookie.join("; "))
            .form(&fields)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 429, "{user}");
        let secs: u64 = resp.headers()["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=1200).contains(&secs), "{secs}");
        assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
        let body = resp.text().await.unwrap();
        assert!(body.contains("Too many sign-in attempts"), "{body}");
        assert!(body.contains("name=\"password\""), "the form is shown again: {body}");
    }
    // Carol, from the same address, is not affected.
    let done = b.submit(&gw, &page, &[("username", "carol"), ("password", ALICE_PASSWORD)]).await;
    assert_eq!(done.status, 303, "{}", done.body);
    // The password grant shares the per-username budget.
    let pw = |user| [("grant_type", "password"), ("username", user), ("password", ALICE_PASSWORD)];
    let (status, v) = token_request(&gw, Some(("webapp", SVC_SECRET)), &pw("alice")).await;
    assert_eq!((status, v["error"].as_str()), (429, Some("slow_down")), "{v}");
    let (status, _) = token_request(&gw, Some(("webapp", SVC_SECRET)), &pw("carol")).await;
    assert_eq!(status, 200);
    assert_eq!(counter(&gw, "portcullis_rate_limited_total{endpoint=\"login\"}").await, 2.0);
    assert_eq!(counter(&gw, "portcullis_rate_limited_total{endpoint=\"token\"}").await, 1.0);
}

// ---------------------------------------------------------------------------------------
// Tokens and grants.

#[tokio::test]
async fn token_of_a_deleted_client_is_refused_even_before_it_was_ever_cached() {
    let (_up, gw) = setup().await;
    let token = gw.token("linked", OTHER_SECRET, None).await;
    gw.rewrite_config(|text| {
        let start = text.find("[[client]]\nid = \"linked\"").unwrap();
        let len = text[start + 1..].find("[[client]]").unwrap() + 1;
        let mut out = text.clone();
        out.replace_range(start..start + len, "");
        out
    });
    assert_invalid_token(&gw, "deleted client, first use", &token).await;
    let (status, v) = token_request(&gw, Some(("linked", OTHER_SECRET)), &[("grant_type", "client_credentials")]).await;
    assert_eq!((status, v["error"].as_str()), (401, Some("invalid_client")));
}

#[tokio::test]
async fn tokens_of_a_revoked_refresh_family_stay_refused_across_a_restart() {
    let up = EchoUpstream::start().await;
    let gw = TestGateway::start(up.addr).await;
    let (at0, rt0) = password_tokens(&gw).await;
    let refresh = [("grant_type", "refresh_token"), ("refresh_token", rt0.as_str())];
    let (status, v) = token_request(&gw, Some(("webapp", SVC_SECRET)), &refresh).await;
    assert_eq!(status, 200, "{v}");
    let at1 = v["access_token"].as_str().unwrap().to_string();
    let rt1 = v["refresh_token"].as_str().unwrap().to_string();
    // Reuse of the spent token revokes the family, including an access token never presented.
    let (status, v) = token_request(&gw, Some(("webapp", SVC_SECRET)), &refresh).await;
    assert_eq!((status, v["error"].as_str()), (400, Some("invalid_grant")));
    assert_invalid_token(&gw, "never-cached member of a revoked family", &at1).await;
    let gw = gw.restart().await;
    assert_invalid_token(&gw, "revoked, after restart", &at0).await;
    assert_invalid_token(&gw, "revoked, after restart", &at1).await;
    let form = [("grant_type", "refresh_token"), ("refresh_token", rt1.as_str())];
    let (status, v) = token_request(&gw, Some(("webapp", SVC_SECRET)), &form).await;
    assert_eq!((status, v["error_description"].as_str()), (400, Some("The refresh token is invalid.")));
}

#[tokio::test]
async fn a_public_clients_code_is_useless_to_another_client_and_burns() {
    let (_up, gw) = setup().await;
    let code = spa_code(&gw).await;
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", "https://spa.test/cb"),
        ("code_verifier", VERIFIER),
    ];
    // A confidential client with its own valid credentials and the right verifier.
    let (status, v) = token_request(&gw, Some(("first", SVC_SECRET)), &form).await;
    assert_eq!((status, v["error"].as_str()), (400, Some("invalid_grant")), "{v}");
    // The attempt spent the code: the rightful client cannot use it afterwards either.
    let mut with_id = form.to_vec();
    with_id.push(("client_id", "spa"));
    let (status, v) = token_request(&gw, None, &with_id).await;
    assert_eq!((status, v["error"].as_str()), (400, Some("invalid_grant")), "{v}");
    // And a confidential client's code is useless to a public one naming itself.
    let mut b = Browser::new(&gw);
    let q = [("response_type", "code"), ("client_id", "webapp"), ("redirect_uri", "https://app.test/callback")];
    let code = login_and_consent(&mut b, &gw, &q).await.location_param("code").unwrap();
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("client_id", "spa"),
        ("redirect_uri", "https://app.test/callback"),
    ];
    let (status, v) = token_request(&gw, None, &form).await;
    assert_eq!((status, v["error"].as_str()), (400, Some("invalid_grant")), "{v}");
}

#[tokio::test]
async fn redirect_uri_variations_never_match_and_never_redirect() {
    let (_up, gw) = setup().await;
    let mut b = Browser::new(&gw);
    for bad in [
        "https://spa.test/cb/",
        "https://spa.test/cb?",
        "https://spa.test/cb?x=1",
        "https://spa.test/cb#frag",
        "https://spa.test/CB",
        "HTTPS://spa.test/cb",
        "http://spa.test/cb",
        "https://spa.test:443/cb",
        "https://spa.test:8443/cb",
        "https://user@spa.test/cb",
        "https://spa.test@evil.test/cb",
        "https://evil.test@spa.test/cb",
        "https://spa.test%2f@evil.test/cb",
        "https://spa.test/%63b",
        "https://spa.test/cb%2F",
        "https://spa%2etest/cb",
        "https://spa.test/cb%00",
        "https://spa.test//cb",
        "https://spa.test/x/../cb",
        " https://spa.test/cb",
        "https://spa.test/cb ",
        "https://spa.test.evil.test/cb",
        "//evil.test/cb",
        "javascript:alert(1)//https://spa.test/cb",
    ] {
        let mut q = spa_query();
        q[2] = ("redirect_uri", bad);
        let page = b.get(&authorize_url(&gw, &q)).await;
        assert_eq!(page.status, 400, "{bad}");
        assert!(page.location.is_none(), "never redirect to an unregistered URI: {bad}");
        assert!(page.body.contains("redirect URI is not registered"), "{bad}");
    }
}

#[tokio::test]
async fn redirect_uri_variations_at_the_token_endpoint_are_invalid_grant() {
    let (_up, gw) = setup().await;
    // webapp's registered "http://127.0.0.1:9/cb?x=1" carries a query of its own.
    let registered = "http://127.0.0.1:9/cb?x=1";
    for bad in ["http://127.0.0.1:9/cb?x=1&y=2", "http://127.0.0.1:9/cb?x=%31", "http://localhost:9/cb?x=1"] {
        let mut b = Browser::new(&gw);
        let q = [("response_type", "code"), ("client_id", "webapp"), ("redirect_uri", registered)];
        let done = login_and_consent(&mut b, &gw, &q).await;
        assert!(done.location.as_deref().unwrap().starts_with("http://127.0.0.1:9/cb?x=1&code="));
        let code = done.location_param("code").unwrap();
        let form = [("grant_type", "authorization_code"), ("code", code.as_str()), ("redirect_uri", bad)];
        let (status, v) = token_request(&gw, Some(("webapp", SVC_SECRET)), &form).await;
        assert_eq!((status, v["error"].as_str()), (400, Some("invalid_grant")), "{bad}: {v}");
    }
}

#[tokio::test]
async fn pkce_downgrade_attempts_are_refused() {
    let (_up, gw) = setup().await;
    let mut b = Browser::new(&gw);
    // "plain" smuggled in as S256: the challenge is the verifier itself.
    let mut q = spa_query();
    q[4] = ("code_challenge", VERIFIER);
    let code = login_and_consent(&mut b, &gw, &q).await.location_param("code").unwrap();
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("client_id", "spa"),
        ("redirect_uri", "https://spa.test/cb"),
        ("code_verifier", VERIFIER),
    ];
    let (status, v) = token_request(&gw, None, &form).await;
    assert_eq!((status, v["error"].as_str()), (400, Some("invalid_grant")), "{v}");
    assert!(v["error_description"].as_str().unwrap().contains("code_verifier"));

    // Method spellings other than "S256" are "plain" in disguise.
    for method in ["s256", "plain", "S256 ", "SHA256", ""] {
        let mut q = spa_query();
        q[5] = ("code_challenge_method", method);
        let page = b.get(&authorize_url(&gw, &q)).await;
        assert_eq!(page.status, 302, "{method:?}: {}", page.body);
        assert_eq!(page.location_param("error").as_deref(), Some("invalid_request"), "{method:?}");
        assert!(page.location.unwrap().starts_with("https://spa.test/cb?"), "{method:?}");
    }

    // A confidential client's code made with a challenge still needs the verifier.
    let q = [
        ("response_type", "code"),
        ("client_id", "webapp"),
        ("redirect_uri", "https://app.test/callback"),
        ("code_challenge", CHALLENGE),
        ("code_challenge_method", "S256"),
    ];
    let mut b = Browser::new(&gw);
    let code = login_and_consent(&mut b, &gw, &q).await.location_param("code").unwrap();
    let form =
        [("grant_type", "authorization_code"), ("code", code.as_str()), ("redirect_uri", "https://app.test/callback")];
    let (status, v) = token_request(&gw, Some(("webapp", SVC_SECRET)), &form).await;
    assert_eq!((status, v["error"].as_str()), (400, Some("invalid_grant")), "{v}");

    // Two verifiers (one to match, one to confuse) are a repeated parameter.
    let code = spa_code(&gw).await;
    let body = format!(
        "grant_type=authorization_code&code={code}&client_id=spa&redirect_uri=https%3A%2F%2Fspa.test%2Fcb\
         &code_verifier={VERIFIER}&code_verifier=x"
    );
    let resp = gw
        .client()
        .post(gw.url("/oauth/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"], "invalid_request", "{v}");
}

#[tokio::test]
async fn refresh_token_presented_by_another_client_is_refused_and_left_intact() {
    let (_up, gw) = setup().await;
    let (at0, rt0) = password_tokens(&gw).await;
    let form = [("grant_type", "refresh_token"), ("refresh_token", rt0.as_str())];
    // "first" is confidential and allowed refresh_token; the token is webapp's.
    let (status, v) = token_request(&gw, Some(("first", SVC_SECRET)), &form).await;
    assert_eq!((status, v["error_description"].as_str()), (400, Some("The refresh token is invalid.")), "{v}");
    // The thief's attempt neither spent the token nor revoked the family.
    assert_eq!(proxied(&gw, &at0).await.0, 200);
    let (status, v) = token_request(&gw, Some(("webapp", SVC_SECRET)), &form).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(proxied(&gw, &at0).await.0, 200);
}

#[tokio::test]
async fn error_paths_never_redirect_to_an_unregistered_uri() {
    let (_up, gw) = setup().await;
    let mut b = Browser::new(&gw);
    let evil = "https://evil.test/cb";
    let cases: Vec<Vec<(&str, &str)>> = vec![
        vec![("response_type", "code"), ("client_id", "ghost"), ("redirect_uri", evil)],
        vec![("response_type", "code"), ("redirect_uri", evil)],
        vec![("response_type", "magic"), ("client_id", "spa"), ("redirect_uri", evil)],
        vec![("client_id", "spa"), ("redirect_uri", evil)],
        vec![("response_type", "code"), ("client_id", "spa"), ("redirect_uri", evil), ("scope", "admin")],
        vec![("response_type", "code"), ("client_id", "spa"), ("redirect_uri", evil)],
        vec![("response_type", "token"), ("client_id", "webapp"), ("redirect_uri", evil)],
        vec![("response_type", "code"), ("client_id", "off"), ("redirect_uri", evil)],
        vec![
            ("response_type", "code"),
            ("client_id", "spa"),
            ("redirect_uri", "https://spa.test/cb"),
            ("redirect_uri", evil),
        ],
        vec![("response_type", "code"), ("client_id", "webapp")],
        vec![("response_type", "code"), ("client_id", "spa"), ("redirect_uri", "javascript:alert(1)")],
        vec![("response_type", "code"), ("client_id", "spa"), ("redirect_uri", "data:text/html,hi")],
    ];
    for q in &cases {
        for post in [false, true] {
            let page = if post {
                let fields: Vec<(String, String)> = q
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .chain([("action".into(), "login".into())])
                    .collect();
                b.post(&gw.url("/oauth/authorize"), &fields).await
            } else {
                b.get(&authorize_url(&gw, q)).await
            };
            assert!(page.location.is_none(), "{q:?} (post {post}) redirected to {:?}", page.location);
            assert!(matches!(page.status, 400 | 403), "{q:?} (post {post}): {}", page.status);
            assert!(page.body.starts_with("<!doctype html>"), "{q:?}");
        }
    }
    // On a registered URI, an error goes back there, and caller text cannot break out of
    // the query string or into the headers.
    let q = [
        ("response_type", "magic\r\nSet-Cookie: x=1"),
        ("client_id", "spa"),
        ("redirect_uri", "https://spa.test/cb"),
        ("state", "s\r\nLocation: https://evil.test/#"),
    ];
    let page = b.get(&authorize_url(&gw, &q)).await;
    assert_eq!(page.status, 302);
    let loc = page.location.unwrap();
    assert!(loc.starts_with("https://spa.test/cb?error=unsupported_response_type"), "{loc}");
    assert!(!loc.contains('\r') && !loc.contains('\n'), "{loc}");
    assert!(!b.cookies.contains_key("x"));
}

// ---------------------------------------------------------------------------------------
// Raw HTTP/1.1 on the plaintext listener, and an upstream that records what it receives.

/// What the recording upstream saw of one request.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    headers: Vec<(String, String)>,
    trailers: Vec<(String, String)>,
    body_len: Option<usize>,
}

/// An upstream that records every request (path, headers, trailers) and answers 200.
struct Recorder {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Recorder {
    async fn start() -> Recorder {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let log = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let log = log.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let log = log.clone();
                        async move {
                            let path = req.uri().path().to_string();
                            let headers = req
                                .headers()
                                .iter()
                                .map(|(n, v)| (n.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
                                .collect();
                            let idx = {
                                let mut l = log.lock().unwrap();
                                l.push(Seen { path, headers, trailers: vec![], body_len: None });
                                l.len() - 1
                            };
                            if let Ok(c) = req.into_body().collect().await {
                                let trailers = c
                                    .trailers()
                                    .map(|t| {
                                        t.iter()
                                            .map(|(n, v)| (n.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
                                            .collect()
                                    })
                                    .unwrap_or_default();
                                let mut l = log.lock().unwrap();
                                l[idx].trailers = trailers;
                                l[idx].body_len = Some(c.to_bytes().len());
                            }
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from_static(
                                b"ok",
                            ))))
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Recorder { addr, seen, task }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn paths(&self) -> Vec<String> {
        self.seen().into_iter().map(|s| s.path).collect()
    }
}

/// Write `bytes` on a fresh connection and read until the gateway closes it (bounded by
/// the test gateway's short idle timeout, with a generous cap).
async fn raw(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), async {
        let mut chunk = [0u8; 8192];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the gateway kept the connection open: {:?}", String::from_utf8_lossy(&buf));
    buf
}

/// The status codes of every response in `buf`, in order.
fn statuses(buf: &[u8]) -> Vec<u16> {
    let text = String::from_utf8_lossy(buf);
    text.match_indices("HTTP/1.")
        .filter(|(i, _)| *i == 0 || text[..*i].ends_with('\n'))
        .filter_map(|(i, _)| text.get(i + 9..i + 12).and_then(|s| s.parse().ok()))
        .collect()
}

fn head_of(buf: &[u8]) -> String {
    let text = String::from_utf8_lossy(buf);
    text.split("\r\n\r\n").next().unwrap_or("").to_ascii_lowercase()
}

/// A gateway in front of a recording upstream, with a short idle timeout so that raw
/// connections end soon after their last response.
async fn recorded_gateway(extra_limits: &str) -> (Recorder, TestGateway) {
    let rec = Recorder::start().await;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(dir.path());
    let text = config_toml(dir.path(), &pki, rec.addr, "")
        .replace("[limits]\n", &format!("[limits]\nidle_timeout = \"2s\"\n{extra_limits}"));
    let gw = TestGateway::start_text(dir, pki, &text).await;
    (rec, gw)
}

#[tokio::test]
async fn identity_header_spoofing_variants_never_reach_the_upstream() {
    let (rec, gw) = recorded_gateway("").await;
    let token = gw.token("svc", SVC_SECRET, None).await;
    let spoofs = "X-Auth-User: mallory\r\nx-auth-subject: root\r\nX-AUTH-SCOPE: admin\r\n\
                  X-Auth-Client-Id: admin\r\nX-Auth-Client-Id: admin2\r\nx-auth-token-id: forged\r\n";
    let cases = [
        // HTTP/1.0, no Host.
        format!("GET /api/v10 HTTP/1.0\r\nAuthorization: Bearer {token}\r\n{spoofs}\r\n"),
        // The Connection header names our headers: they are ours to set all the same.
        format!(
            "GET /api/conn HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
             Connection: close, X-Auth-Subject, x-auth-client-id\r\n{spoofs}\r\n"
        ),
        // Spoofed values in trailers of a chunked body, declared in a Trailer header.
        format!(
            "POST /api/trailers HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\
             Transfer-Encoding: chunked\r\nTrailer: X-Auth-User, X-Auth-Subject\r\n\r\n\
             3\r\nabc\r\n0\r\nX-Auth-User: mallory\r\nX-Auth-Subject: root\r\n\r\n"
        ),
        // Empty and whitespace-only spoofed values.
        format!(
            "GET /api/empty HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\
             X-Auth-User:\r\nX-Auth-Subject:    \r\n\r\n"
        ),
    ];
    for (i, req) in cases.iter().enumerate() {
        let got = raw(gw.http, req.as_bytes()).await;
        assert_eq!(statuses(&got), vec![200], "case {i}: {}", String::from_utf8_lossy(&got));
    }
    let seen = rec.seen();
    assert_eq!(seen.len(), cases.len(), "{seen:?}");
    for s in &seen {
        let values =
            |name: &str| s.headers.iter().filter(|(n, _)| n == name).map(|(_, v)| v.as_str()).collect::<Vec<_>>();
        assert_eq!(values("x-auth-subject"), vec!["svc"], "{s:?}");
        assert_eq!(values("x-auth-client-id"), vec!["svc"], "{s:?}");
        assert_eq!(values("x-auth-scope"), vec!["read"], "{s:?}");
        assert_eq!(values("x-auth-token-id").len(), 1, "{s:?}");
        assert!(values("x-auth-token-id")[0] != "forged");
        assert!(values("x-auth-user").is_empty(), "svc has no user: {s:?}");
        for (name, _) in &s.trailers {
            assert!(!IDENTITY.contains(&name.as_str()), "identity header in trailers: {s:?}");
        }
    }
    let trailers = seen.iter().find(|s| s.path == "/api/trailers").unwrap();
    assert_eq!(trailers.body_len, Some(3));
}

#[tokio::test]
async fn request_smuggling_attempts_are_refused_and_nothing_reaches_the_upstream_twice() {
    let (rec, gw) = recorded_gateway("").await;
    let smuggled = "GET /public/smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    // Each refused outright with 400 before anything is forwarded.
    let refused = [
        (
            "duplicate differing Content-Length",
            format!(
                "POST /public/a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: {}\r\n\r\nhello{smuggled}",
                5 + smuggled.len()
            ),
        ),
        (
            "Content-Length list",
            format!("POST /public/b HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 50\r\n\r\nhello{smuggled}"),
        ),
        (
            "negative Content-Length",
            format!("POST /public/c HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n{smuggled}"),
        ),
        (
            "signed Content-Length",
            format!("POST /public/d HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\nhello{smuggled}"),
        ),
        ("obsolete line folding", format!("GET /public/e HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n b\r\n\r\n{smuggled}")),
        (
            "folded Transfer-Encoding",
            format!(
                "POST /public/f HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\r\n chunked\r\nContent-Length: 5\r\n\r\nhello{smuggled}"
            ),
        ),
        (
            "Transfer-Encoding not chunked",
            format!(
                "POST /public/g HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\nContent-Length: 5\r\n\r\nhello{smuggled}"
            ),
        ),
        (
            "chunked not last",
            format!(
                "POST /public/h HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "Transfer-Encoding in HTTP/1.0",
            format!("POST /public/i HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"),
        ),
        (
            "space before the colon",
            format!(
                "POST /public/j HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\nContent-Length: 5\r\n\r\nhello{smuggled}"
            ),
        ),
        ("bare CR in a header", format!("GET /public/k HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n{smuggled}")),
        ("NUL in a header", format!("GET /public/l HTTP/1.1\r\nHost: x\r\nX-A: a\0b\r\n\r\n{smuggled}")),
    ];
    for (what, req) in &refused {
        let got = raw(gw.http, req.as_bytes()).await;
        assert_eq!(statuses(&got), vec![400], "{what}: {}", String::from_utf8_lossy(&got));
    }
    assert!(rec.paths().is_empty(), "refused requests reached the upstream: {:?}", rec.paths());

    // Content-Length and Transfer-Encoding together (in either order): RFC 9112 §6.3 lets
    // a server reject or go by Transfer-Encoding alone and then close the connection. hyper
    // does the latter: the chunked body (empty here) is forwarded once, never what follows it.
    for (i, order) in
        ["Content-Length: 7\r\nTransfer-Encoding: chunked", "Transfer-Encoding: chunked\r\nContent-Length: 7"]
            .iter()
            .enumerate()
    {
        let req = format!("POST /public/clte{i} HTTP/1.1\r\nHost: x\r\n{order}\r\n\r\n0\r\n\r\n{smuggled}");
        let got = raw(gw.http, req.as_bytes()).await;
        assert_eq!(statuses(&got), vec![200], "{order}: {}", String::from_utf8_lossy(&got));
        assert!(head_of(&got).contains("connection: close"), "{}", head_of(&got));
    }
    let seen = rec.seen();
    assert_eq!(seen.iter().map(|s| s.path.as_str()).collect::<Vec<_>>(), ["/public/clte0", "/public/clte1"]);
    for s in &seen {
        assert_eq!(s.body_len, Some(0), "{s:?}");
        assert!(
            !s.headers.iter().any(|(n, _)| n == "content-length" || n == "transfer-encoding") || s.body_len == Some(0)
        );
    }
}

#[tokio::test]
async fn invalid_chunked_bodies_are_400_not_blamed_on_the_upstream() {
    let (rec, gw) = recorded_gateway("").await;
    for (i, chunks) in [
        "zz\r\nabc\r\n0\r\n\r\n",
        "-1\r\nabc\r\n0\r\n\r\n",
        "fffffffffffffffffffff\r\nabc\r\n0\r\n\r\n",
        "3\r\nabcdef\r\n0\r\n\r\n",
    ]
    .iter()
    .enumerate()
    {
        for path in [format!("/public/chunk{i}"), "/oauth/token".to_string()] {
            let req = format!(
                "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n\
                 Transfer-Encoding: chunked\r\n\r\n{chunks}"
            );
            let got = raw(gw.http, req.as_bytes()).await;
            assert_eq!(statuses(&got), vec![400], "{path} {chunks:?}: {}", String::from_utf8_lossy(&got));
            let body = String::from_utf8_lossy(&got).split("\r\n\r\n").nth(1).unwrap_or("").to_string();
            assert!(body.contains("\"invalid_request\""), "{path} {chunks:?}: {body}");
        }
    }
    // Whatever reached the upstream reached it at most once.
    let mut paths = rec.paths();
    let n = paths.len();
    paths.dedup();
    assert_eq!(paths.len(), n, "{paths:?}");
}

#[tokio::test]
async fn oversized_headers_are_431_and_oversized_bodies_413() {
    let (rec, gw) = recorded_gateway("").await;
    let token = gw.token("svc", SVC_SECRET, None).await;
    // One huge header, and very many small ones (default limit 16 KiB).
    let huge = format!("GET /public/huge HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(20 * 1024));
    let many: String = (0..400).map(|i| format!("X-H{i}: v\r\n")).collect();
    let many = format!("GET /public/many HTTP/1.1\r\nHost: x\r\n{many}\r\n");
    for (what, req) in [("huge header", huge), ("many headers", many)] {
        let got = raw(gw.http, req.as_bytes()).await;
        assert_eq!(statuses(&got), vec![431], "{what}: {}", String::from_utf8_lossy(&got));
    }
    // Over TLS and HTTP/2 as well.
    let h2 = https_client(&gw.pki.ca_pem, true);
    let resp = h2.get(gw.url("/public/h2")).header("x-big", "a".repeat(20 * 1024)).send().await.unwrap();
    assert_eq!((resp.version(), resp.status().as_u16()), (reqwest::Version::HTTP_2, 431));
    let resp = gw.client().get(gw.url("/public/tls")).header("x-big", "a".repeat(20 * 1024)).send().await.unwrap();
    assert_eq!(resp.status(), 431);
    assert!(rec.paths().is_empty(), "{:?}", rec.paths());

    // Bodies: token endpoint (16 KiB) declared or chunked, login form, proxy (64 MiB here).
    let big = "a=".to_string() + &"b".repeat(20 * 1024);
    let c = gw.client();
    let form = |r: reqwest::RequestBuilder| r.header("content-type", "application/x-www-form-urlencoded");
    let declared = form(c.post(gw.url("/oauth/token"))).body(big.clone()).send().await.unwrap();
    assert_eq!(declared.status(), 413);
    assert_eq!(declared.json::<Value>().await.unwrap()["error"], "invalid_request");
    let stream = futures_util::stream::iter((0..20).map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![b'a'; 1024]))));
    let chunked = form(c.post(gw.url("/oauth/token"))).body(reqwest::Body::wrap_stream(stream)).send().await.unwrap();
    assert_eq!(chunked.status(), 413, "undeclared length");
    let login = form(c.post(gw.url("/oauth/authorize"))).body(big).send().await.unwrap();
    assert_eq!(login.status(), 413);
    assert!(login.text().await.unwrap().starts_with("<!doctype html>"));
    // A declared length the body never delivers: the gateway refuses on the header alone.
    let got = raw(
        gw.http,
        format!(
            "POST /api/declared HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Length: {}\r\n\r\n",
            64 * 1024 * 1024 + 1
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(statuses(&got), vec![413], "{}", String::from_utf8_lossy(&got));
    assert!(rec.paths().is_empty(), "{:?}", rec.paths());
}

#[tokio::test]
async fn slowloris_headers_are_cut_off_after_the_header_read_timeout() {
    let (rec, gw) = recorded_gateway("header_read_timeout = \"1s\"\ntls_handshake_timeout = \"1s\"\n").await;
    // Plaintext: a request line, then one header byte every 100 ms, forever.
    let mut s = TcpStream::connect(gw.http).await.unwrap();
    let started = Instant::now();
    s.write_all(b"GET /public/slow HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let cut = loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if s.write_all(b"X-Slow: a\r\n").await.is_err() {
            break started.elapsed();
        }
        let mut probe = [0u8; 64];
        if let Ok(Ok(0) | Err(_)) = tokio::time::timeout(Duration::from_millis(1), s.read(&mut probe)).await {
            break started.elapsed();
        }
        assert!(started.elapsed() < Duration::from_secs(15), "still connected after 15 s");
    };
    assert!(cut >= Duration::from_millis(900), "cut after {cut:?}, before the timeout");
    eprintln!("slowloris (plaintext) cut after {cut:?}");

    // Over TLS: a completed handshake, then headers that never end.
    let mut tls = tls_connect(&gw).await;
    let started = Instant::now();
    tls.write_all(b"GET /public/slow HTTP/1.1\r\nHost: x\r\nX-Slow: a").await.unwrap();
    tls.flush().await.unwrap();
    let mut buf = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(15), tls.read_to_end(&mut buf)).await;
    assert!(r.is_ok(), "TLS slowloris still connected after 15 s");
    assert!(started.elapsed() >= Duration::from_millis(900), "{:?}", started.elapsed());

    // The HTTP/2 preface, a byte every 1.5 s (within the 2 s idle timeout): no request ever
    // starts, so no header timeout of HTTP/1.1 or HTTP/2 applies, and the idle timer is reset
    // by every byte. The first request must arrive within header_read_timeout all the same.
    let mut s = TcpStream::connect(gw.http).await.unwrap();
    let started = Instant::now();
    let mut cut = None;
    let mut preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".iter();
    let mut last_write: Option<Instant> = None;
    while started.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let due = last_write.is_none_or(|t| t.elapsed() >= Duration::from_millis(1500));
        let wrote = match if due { preface.next() } else { None } {
            Some(b) => {
                last_write = Some(Instant::now());
                s.write_all(&[*b]).await.is_ok()
            }
            None => true,
        };
        let mut probe = [0u8; 256];
        let closed = loop {
            // Skip the server's SETTINGS frame once the preface is complete.
            match tokio::time::timeout(Duration::from_millis(1), s.read(&mut probe)).await {
                Ok(Ok(0) | Err(_)) => break true,
                Ok(Ok(_)) => continue,
                Err(_) => break false,
            }
        };
        if !wrote || closed {
            cut = Some(started.elapsed());
            break;
        }
    }
    let cut = cut.expect("a slow HTTP/2 preface held the connection for 10 s");
    eprintln!("slow HTTP/2 preface cut after {cut:?}");
    assert!(cut >= Duration::from_millis(900), "cut after {cut:?}");

    // A TLS handshake that never completes is cut after tls_handshake_timeout.
    let mut s = TcpStream::connect(gw.https).await.unwrap();
    s.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
    let r = tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut Vec::new())).await;
    assert!(r.is_ok(), "half a TLS handshake still connected after 15 s");
    assert!(rec.paths().is_empty());
    // And the gateway still serves.
    assert_eq!(gw.client().get(gw.url("/public/ok")).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn path_tricks_never_reach_a_route_they_should_not() {
    let (rec, gw) = recorded_gateway("").await;
    // svc's default token has "read": /api yes, /admin no.
    let token = gw.token("svc", SVC_SECRET, None).await;
    let cases: [(&str, u16); 21] = [
        ("/api/../admin", 400),
        ("/api/%2e%2e/admin", 400),
        ("/api/%2E%2e/admin", 400),
        ("/api/.%2e/admin", 400),
        ("/api/x/../../admin", 400),
        ("/api/..", 400),
        ("/api/..;/admin", 400),
        ("/api/..;jsessionid=1/admin", 400),
        ("/api/%2e%2e%3b/admin", 400),
        ("/api/%2e%2e%2fadmin", 400),
        ("/api%2f..%2fadmin", 400),
        ("/api/..%5cadmin", 400),
        ("/strip/../admin", 400),
        ("/public/../admin", 400),
        ("//admin", 400),
        ("//admin/x", 400),
        ("///api/../admin", 400),
        // Prefixes match case-insensitively: held to /api's rules (read), forwarded as is.
        ("/API/x", 200),
        ("/admin", 403),
        ("/admin/x", 403),
        // An encoded '%' could be decoded twice by a careless upstream: refused too.
        ("/api/%252e%252e/admin", 400),
    ];
    for (path, expected) in cases {
        let req =
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n");
        let got = raw(gw.http, req.as_bytes()).await;
        assert_eq!(statuses(&got), vec![expected], "{path}: {}", String::from_utf8_lossy(&got));
    }
    // Absolute-form targets are checked the same way.
    let req = format!(
        "GET http://localhost/api/../admin HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    );
    assert_eq!(statuses(&raw(gw.http, req.as_bytes()).await), vec![400]);
    // Only the case variant was forwarded, under /api where it belongs.
    assert_eq!(rec.paths(), vec!["/API/x".to_string()]);
}

// ---------------------------------------------------------------------------------------
// Random input from a property-based generator.

mod random {
    use base64::Engine;
    use proptest::prelude::*;
    use proptest::strategy::ValueTree;
    use proptest::test_runner::{Config, TestRunner};

    /// `n` values from `strategy`, reproducibly.
    pub fn sample<S: Strategy>(strategy: S, n: usize, seed: u8) -> Vec<S::Value> {
        let config = Config { rng_seed: proptest::test_runner::RngSeed::Fixed(u64::from(seed)), ..Config::default() };
        let mut runner = TestRunner::new(config);
        (0..n).map(|_| strategy.new_tree(&mut runner).unwrap().current()).collect()
    }

    fn text() -> BoxedStrategy<String> {
        prop_oneof![
            3 => "[a-zA-Z0-9_.~-]{0,24}",
            2 => ".{0,40}",
            1 => "[%&=+;,:/ ?#\\[\\]@!$'()*\"{}\\\\]{0,16}",
            1 => Just(String::new()),
        ]
        .boxed()
    }

    fn known_or(known: &'static [&'static str]) -> BoxedStrategy<String> {
        let known: Vec<String> = known.iter().map(|s| s.to_string()).collect();
        prop_oneof![2 => proptest::sample::select(known), 3 => text()].boxed()
    }

    /// A token request: body, Content-Type, Authorization.
    #[derive(Debug, Clone)]
    pub struct TokenInput {
        pub body: Vec<u8>,
        pub content_type: Option<String>,
        pub authorization: Option<String>,
    }

    pub fn token_input() -> impl Strategy<Value = TokenInput> {
        let key = known_or(&[
            "grant_type",
            "client_id",
            "client_secret",
            "scope",
            "code",
            "redirect_uri",
            "code_verifier",
            "refresh_token",
            "username",
            "password",
        ]);
        let value = known_or(&[
            "client_credentials",
            "password",
            "authorization_code",
            "refresh_token",
            "svc",
            "webapp",
            "spa",
            "read",
            "alice",
        ]);
        let pairs = proptest::collection::vec((key, value), 0..8);
        let body = prop_oneof![
            3 => pairs.clone().prop_map(|p| {
                let mut s = form_urlencoded::Serializer::new(String::new());
                s.extend_pairs(p);
                s.finish().into_bytes()
            }),
            2 => pairs.prop_map(|p| {
                let mut map = serde_json::Map::new();
                for (k, v) in p {
                    map.insert(k, serde_json::Value::String(v));
                }
                serde_json::Value::Object(map).to_string().into_bytes()
            }),
            1 => "[{}\\[\\]\":,0-9a-z_ ]{0,80}".prop_map(String::into_bytes),
            1 => proptest::collection::vec(any::<u8>(), 0..200),
        ];
        let content_type = proptest::option::of(known_or(&[
            "application/x-www-form-urlencoded",
            "application/json",
            "application/json; charset=utf-8",
            "APPLICATION/X-WWW-FORM-URLENCODED; charset=utf-8",
            "text/plain",
            "multipart/form-data; boundary=x",
        ]));
        let authorization = proptest::option::of(prop_oneof![
            ("[ -~]{0,20}", "[ -~]{0,20}").prop_map(|(id, secret)| {
                format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}")))
            }),
            "(Basic|basic|BASIC|Bearer) [ -~]{0,40}",
            "[ -~]{0,40}",
        ]);
        (body, content_type, authorization).prop_map(|(body, content_type, authorization)| TokenInput {
            body,
            content_type,
            authorization,
        })
    }

    /// A raw /authorize query string.
    pub fn authorize_query() -> impl Strategy<Value = String> {
        let key = known_or(&[
            "response_type",
            "client_id",
            "redirect_uri",
            "scope",
            "state",
            "code_challenge",
            "code_challenge_method",
        ]);
        let value = known_or(&[
            "code",
            "token",
            "spa",
            "webapp",
            "first",
            "https://spa.test/cb",
            "https://app.test/callback",
            "https://evil.test/cb",
            "read",
            "S256",
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
        ]);
        let encoded = proptest::collection::vec((key, value), 0..8).prop_map(|p| {
            let mut s = form_urlencoded::Serializer::new(String::new());
            s.extend_pairs(p);
            s.finish()
        });
        // Also raw junk that reqwest would not encode for us: stray '%', bad escapes.
        prop_oneof![4 => encoded, 1 => "[a-z=&%0-9A-F_.+-]{0,60}"]
    }

    /// An Authorization header for the proxy path.
    pub fn bearer() -> impl Strategy<Value = String> {
        let part = "[A-Za-z0-9_-]{0,40}";
        prop_oneof![
            3 => (part, part, part).prop_map(|(a, b, c)| format!("Bearer {a}.{b}.{c}")),
            2 => (any::<Vec<u8>>(), any::<Vec<u8>>()).prop_map(|(h, p)| {
                                let e = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
                format!("Bearer {}.{}.{}", e(&h), e(&p), e(b"sig"))
            }),
            2 => "(Bearer|bearer|BEARER|Basic|Token|) ?[ -~]{0,60}",
            1 => "[ -~]{0,80}",
        ]
    }
}

/// The gateway answered on its own: a well-formed JSON or HTML error (or success).
fn well_formed(status: u16, content_type: &str, body: &[u8], label: &str) {
    assert!(status < 500, "{label}: {status} {}", String::from_utf8_lossy(body));
    if content_type.starts_with("application/json") {
        let v: Value = serde_json::from_slice(body).unwrap_or_else(|e| panic!("{label}: bad JSON ({e})"));
        assert!(v["error"].is_string() || v["access_token"].is_string(), "{label}: {v}");
    } else if content_type.starts_with("text/html") {
        assert!(body.starts_with(b"<!doctype html>"), "{label}");
    } else {
        assert!(body.is_empty(), "{label}: {status} {content_type:?} {}", String::from_utf8_lossy(body));
        assert!(matches!(status, 302 | 303), "{label}: {status} without a body type");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_inputs_never_5xx_and_the_gateway_keeps_serving() {
    const N: usize = 10_000;
    let up = EchoUpstream::start().await;
    let gw = TestGateway::start_with(up.addr, "[rate_limit]\nenabled = false\n").await;
    let client = reqwest::Client::builder().no_proxy().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let started = Instant::now();

    let token_url = gw.http_url("/oauth/token");
    let token_inputs = random::sample(random::token_input(), N, 1);
    let token_run = futures_util::stream::iter(token_inputs)
        .map(|input| {
            let (client, url) = (&client, &token_url);
            async move {
                let mut req = client.post(url).body(input.body.clone());
                if let Some(ct) = &input.content_type {
                    req = req.header("content-type", ct.as_str());
                }
                if let Some(a) = &input.authorization {
                    req = req.header("authorization", a.as_str());
                }
                // Values reqwest cannot put on the wire are skipped, not sent.
                let Ok(req) = req.build() else { return };
                let resp = client.execute(req).await.unwrap_or_else(|e| panic!("{input:?}: {e}"));
                let status = resp.status().as_u16();
                let ct =
                    resp.headers().get("content-type").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
                assert_eq!(ct, "application/json", "{input:?}");
                well_formed(status, &ct, &resp.bytes().await.unwrap(), &format!("{input:?}"));
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<()>>();

    let authorize_queries = random::sample(random::authorize_query(), N, 2);
    let authorize_run = futures_util::stream::iter(authorize_queries)
        .map(|q| {
            let (client, gw) = (&client, &gw);
            async move {
                let url = gw.http_url(&format!("/oauth/authorize?{q}"));
                let resp = client.get(&url).send().await.unwrap_or_else(|e| panic!("{q}: {e}"));
                let status = resp.status().as_u16();
                let ct =
                    resp.headers().get("content-type").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
                if let Some(loc) = resp.headers().get("location") {
                    // Only ever back to a URI registered for the named client.
                    let loc = loc.to_str().unwrap();
                    let registered = [
                        "https://spa.test/cb",
                        "https://app.test/callback",
                        "http://127.0.0.1:9/cb?x=1",
                        "https://first.test/cb",
                    ];
                    assert!(
                        registered.iter().any(|r| loc.starts_with(&format!("{r}?"))
                            || loc.starts_with(&format!("{r}#"))
                            || loc.starts_with(&format!("{r}&"))),
                        "{q}: redirected to {loc}"
                    );
                }
                well_formed(status, &ct, &resp.bytes().await.unwrap(), &q);
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<()>>();

    let bearers = random::sample(random::bearer(), N, 3);
    let api_url = gw.http_url("/api/x");
    let bearer_run = futures_util::stream::iter(bearers)
        .map(|b| {
            let (client, url) = (&client, &api_url);
            async move {
                let Ok(req) = client.get(url).header("authorization", b.as_str()).build() else { return };
                let resp = client.execute(req).await.unwrap_or_else(|e| panic!("{b}: {e}"));
                let status = resp.status().as_u16();
                assert!(matches!(status, 400 | 401), "{b}: {status}");
                let ct =
                    resp.headers().get("content-type").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
                well_formed(status, &ct, &resp.bytes().await.unwrap(), &b);
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<()>>();

    tokio::join!(token_run, authorize_run, bearer_run);
    eprintln!("{} random requests in {:?}", 3 * N, started.elapsed());

    // Still serving: a token, then a proxied request with it.
    let token = gw.token("svc", SVC_SECRET, None).await;
    let resp = gw.client().get(gw.url("/api/after")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(!gw.task.as_ref().unwrap().is_finished());
}

// ---------------------------------------------------------------------------------------
// Issue 11: client enumeration, crit headers, token lifetime.

/// Status, body bytes and `WWW-Authenticate` of a client_credentials request.
async fn token_answer(gw: &TestGateway, id: &str, secret: &str) -> (u16, String, Option<String>) {
    let resp = gw
        .client()
        .post(gw.url("/oauth/token"))
        .basic_auth(id, Some(secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let www = resp.headers().get("www-authenticate").map(|v| v.to_str().unwrap().to_string());
    (status, resp.text().await.unwrap(), www)
}

/// An unknown client id and a known one with a wrong secret get the same bytes back, and
/// the same 429 once the per-client failure budget is spent (timing is not asserted here:
/// the unknown id runs a dummy argon2 verification, see client_auth.rs).
#[tokio::test]
async fn unknown_client_ids_answer_and_throttle_like_wrong_secrets() {
    let up = EchoUpstream::start().await;
    let extra = "[rate_limit]\nclient_failures = 3\nclient_failures_window = \"1h\"\n";
    let gw = TestGateway::start_with(up.addr, extra).await;
    let mut first = Vec::new();
    for id in ["svc", "no-such-client"] {
        let dummy_before = gw.gateway.secrets.dummy_runs();
        for i in 0..3 {
            let answer = token_answer(&gw, id, &format!("guess-{i}")).await;
            assert_eq!(answer.0, 401, "{id} guess {i}: {}", answer.1);
            if i == 0 {
                first.push(answer);
            }
        }
        let (c, url) = (gw.client(), gw.url("/oauth/token"));
        let (status, retry, v) = token_raw(&c, &url, (id, "guess-3"), &[]).await;
        assert_slow_down(status, retry.as_deref(), &v, 1200, id);
        // The unknown id paid for an argon2 verification each time it was not throttled.
        let dummies = gw.gateway.secrets.dummy_runs() - dummy_before;
        assert_eq!(dummies, if id == "svc" { 0 } else { 3 }, "{id}: dummy verifications");
    }
    assert_eq!(first[0], first[1], "known and unknown client ids answered differently");
    // A public client offered a secret answers the same way too.
    assert_eq!(token_answer(&gw, "spa", "guess").await, first[0]);
}

/// A token signed by the gateway's own key with the given header and claims.
fn signed_with(gw: &TestGateway, header: Value, claims: Value) -> String {
    use aws_lc_rs::signature::Ed25519KeyPair;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let pem = std::fs::read(gw.dir.path().join("k1.pem")).unwrap();
    let key = Ed25519KeyPair::from_pkcs8(pem::parse(pem).unwrap().contents()).unwrap();
    let input =
        format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(key.sign(input.as_bytes()).as_ref()))
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
// Issue 11: filters that failed open. Every check must take the refusing branch when it
// cannot parse what it is given.

/// An upstream that answers whatever it is sent with `response`, then closes.
struct Fixed {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Fixed {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn fixed_upstream(response: Vec<u8>) -> Fixed {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let response = Arc::new(response);
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else { continue };
            let response = response.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let _ = s.write_all(&response).await;
                let _ = s.shutdown().await;
            });
        }
    });
    Fixed { addr, task }
}

/// The JSON body of a single raw response from the echo upstream.
fn echo_of(buf: &[u8]) -> Echo {
    assert_eq!(statuses(buf), vec![200], "{}", String::from_utf8_lossy(buf));
    let at = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    serde_json::from_slice(&buf[at..]).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(buf)))
}

/// One HTTP/2 request over TLS (ALPN h2) with a target and header bytes no URL library
/// would send as written; the status and body.
async fn h2_request(gw: &TestGateway, method: &str, uri: &str, headers: &[(&str, &[u8])]) -> (u16, Vec<u8>) {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    portcullis::install_crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(gw.pki.ca_pem.as_bytes()).unwrap()).unwrap();
    let mut config = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(gw.https).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await.unwrap();
    tokio::spawn(conn);
    let mut req = hyper::Request::builder().method(method).uri(uri);
    for (n, v) in headers {
        req = req.header(*n, http::HeaderValue::from_bytes(v).unwrap());
    }
    let resp = send.send_request(req.body(http_body_util::Empty::<Bytes>::new()).unwrap()).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes().to_vec();
    (status, body)
}

#[tokio::test]
async fn fail_closed_gateway_cookies_never_reach_the_upstream_whatever_the_cookie_header_holds() {
    let up = EchoUpstream::start().await;
    let gw = TestGateway::start(up.addr).await;
    let cases: [&[u8]; 12] = [
        // Not visible ASCII: to_str() failed and the whole header went through.
        "Cookie: lang=français; __Host-portcullis_session=SECRET; __Host-portcullis_csrf=CSRF\r\n".as_bytes(),
        b"Cookie: lang=fran\xe7ais; __Host-portcullis_session=SECRET\r\n",
        // Other cases, whitespace, no '=', an empty pair.
        "Cookie: lang=français;__HOST-PORTCULLIS_SESSION=SECRET;\t__host-portcullis_csrf =CSRF;;\r\n".as_bytes(),
        "Cookie: lang=français; __Host-portcullis_session\r\n".as_bytes(),
        // The same cookie twice, and Cookie split over several lines.
        "Cookie: lang=français\r\nCookie: __Host-portcullis_session=SECRET\r\nCookie: __Host-portcullis_session=S2\r\n"
            .as_bytes(),
        b"Cookie: __Host-portcullis_session=SECRET\r\nCookie: lang=fran\xc3\xa7ais; x=\"quoted\"\r\n",
        // Another byte before the name, which Node's `cookie` (`.trim()`), Python and others
        // skip; a comma for a ';'; quotes; the name inside another pair.
        b"Cookie: lang=fran\xc3\xa7ais;\xa0__Host-portcullis_csrf=ZZ\r\n",
        b"Cookie: lang=fran\xc3\xa7ais; \x85__Host-portcullis_session=SECRET\r\n",
        b"Cookie: lang=fran\xc3\xa7ais; !__HOST-portcullis_session=SECRET\r\n",
        b"Cookie: lang=fran\xc3\xa7ais; a=1,__Host-portcullis_session=SECRET\r\n",
        b"Cookie: lang=fran\xc3\xa7ais; \"__Host-portcullis_csrf\"=CSRF\r\n",
        b"Cookie: lang=fran\xc3\xa7ais; x=y=__Host-portcullis_session=SECRET\r\n",
    ];
    for (i, cookie) in cases.iter().enumerate() {
        let mut req = b"GET /public/cookie HTTP/1.1\r\nHost: x\r\nConnection: close\r\n".to_vec();
        req.extend_from_slice(cookie);
        req.extend_from_slice(b"\r\n");
        let echo = echo_of(&raw(gw.http, &req).await);
        let cookies = echo.header_all("cookie");
        assert_eq!(cookies.len(), 1, "case {i}: {echo:?}");
        assert!(!cookies[0].to_ascii_lowercase().contains("portcullis"), "case {i}: {cookies:?}");
        assert!(cookies[0].starts_with("lang=fran"), "case {i}: {cookies:?}");
    }
    // HTTP/2 may split Cookie into one field per pair (RFC 9113 §8.2.3).
    let client = https_client(&gw.pki.ca_pem, true);
    let resp = client
        .get(gw.url("/public/cookie"))
        .header("cookie", http::HeaderValue::from_bytes("lang=français".as_bytes()).unwrap())
        .header("cookie", "__Host-portcullis_session=SECRET")
        .header("cookie", "a=1; __Host-portcullis_csrf=CSRF")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    let echo: Echo = resp.json().await.unwrap();
    assert_eq!(echo.header_all("cookie"), vec!["lang=français; a=1"], "{echo:?}");
    let (status, body) = h2_request(
        &gw,
        "GET",
        &gw.url("/public/cookie"),
        &[("cookie", b"lang=fran\xe7ais"), ("cookie", b"__Host-portcullis_session=SECRET")],
    )
    .await;
    assert_eq!(status, 200);
    let echo: Echo = serde_json::from_slice(&body).unwrap();
    let cookies = echo.header_all("cookie");
    assert!(cookies.len() == 1 && !cookies[0].contains("portcullis"), "{echo:?}");
}

#[tokio::test]
async fn fail_closed_an_upstream_cannot_set_the_gateways_cookies() {
    let up = fixed_upstream(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\
          Set-Cookie: __Host-portcullis_session=\xe9vil; Path=/; Secure\r\n\
          Set-Cookie: __Host-portcullis_session=evil; Path=/; Secure; Domain=\xe9\r\n\
          Set-Cookie: __HOST-PORTCULLIS_CSRF=x; Path=/\r\n\
          Set-Cookie:  __Host-portcullis_session\t=y\r\n\
          Set-Cookie: =__Host-portcullis_session=z\r\n\
          Set-Cookie: \xa0__Host-portcullis_session=v; Path=/\r\n\
          Set-Cookie: ==__Host-portcullis_csrf\r\n\
          Set-Cookie: \"__Host-portcullis_session\"=v\r\n\
          Set-Cookie: x=1, __Host-portcullis_session=v\r\n\
          Set-Cookie: x=\x85__host-PORTCULLIS_csrf=v\r\n\
          Set-Cookie: a=b; Path=/, __Host-portcullis_session=v\r\n\
          Set-Cookie: a=b; Expires=Wed, 21 Oct 2026 07:28:00 GMT, __Host-portcullis_csrf=v; Path=/\r\n\
          Set-Cookie: lang=fran\xe7ais; Path=/\r\n\
          Set-Cookie: ok=1\r\n\
          Connection: close\r\n\r\nok"
            .to_vec(),
    )
    .await;
    let gw = TestGateway::start(up.addr).await;
    let got = raw(gw.http, b"GET /public/set HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    assert_eq!(statuses(&got), vec![200], "{}", String::from_utf8_lossy(&got));
    let head = head_of(&got);
    assert!(!head.contains("portcullis"), "{head}");
    assert!(head.contains("set-cookie: ok=1"), "{head}");
    assert!(head.contains("set-cookie: lang=fran"), "{head}");
}

fn host_routes(up: SocketAddr) -> String {
    format!(
        r#"
[[route]]
prefix = "/hosted"
host = "Internal.Example.COM."
upstream = "http://{up}"
scopes = ["admin"]

[[route]]
prefix = "/hosted"
upstream = "http://{up}"
public = true
"#
    )
}

#[tokio::test]
async fn fail_closed_host_is_normalised_once_and_malformed_hosts_are_400() {
    let up = EchoUpstream::start().await;
    let gw = TestGateway::start_with(up.addr, &host_routes(up.addr)).await;
    let get = |host: &str| format!("GET /hosted/x HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    // The host-filtered route (a token needed: 401), never the weaker one of the same prefix.
    for host in [
        "internal.example.com",
        "internal.example.com.",
        "INTERNAL.EXAMPLE.COM",
        "Internal.Example.Com.:8080",
        "internal.example.com:0443",
    ] {
        let got = raw(gw.http, get(host).as_bytes()).await;
        assert_eq!(statuses(&got), vec![401], "{host}: {}", String::from_utf8_lossy(&got));
    }
    for host in [
        "a@internal.example.com",
        "internal.example.com@evil.com",
        "evil.com/x?y",
        "evil.com#x",
        "internal.example.com..",
        ".internal.example.com",
        "internal.example.com:",
        "internal.example.com:99999",
        "internal.example.com:123456",
        "internal.example.com:8o",
        "internal%2eexample.com",
        "internal.example.com\\x",
        "[::1",
        "[fe80::1%25eth0]",
        "[not-an-ip]",
        "",
    ] {
        let got = raw(gw.http, get(host).as_bytes()).await;
        assert_eq!(statuses(&got), vec![400], "{host:?}: {}", String::from_utf8_lossy(&got));
    }
    // Two Host headers (RFC 9112 §3.2), the same or different.
    for second in ["internal.example.com", "other.example"] {
        let req = format!(
            "GET /hosted/x HTTP/1.1\r\nHost: internal.example.com\r\nHost: {second}\r\nConnection: close\r\n\r\n"
        );
        let got = raw(gw.http, req.as_bytes()).await;
        assert_eq!(statuses(&got), vec![400], "{second}: {}", String::from_utf8_lossy(&got));
    }
    // X-Forwarded-Host carries the normalised authority.
    for (host, forwarded) in
        [("Localhost.:8080", "localhost:8080"), ("[::1]:8443", "[::1]:8443"), ("127.0.0.1", "127.0.0.1")]
    {
        let echo = echo_of(&raw(gw.http, get(host).replace("/hosted/x", "/public/h").as_bytes()).await);
        assert_eq!(echo.header_all("x-forwarded-host"), vec![forwarded], "{host}");
    }
    // HTTP/2: the :authority goes through the same parser.
    let port = gw.https.port();
    for (authority, status) in [
        ("internal.example.com.".to_string(), 401),
        ("INTERNAL.example.com".to_string(), 401),
        (format!("internal.example.com.:{port}"), 401),
        ("a@internal.example.com".to_string(), 400),
        (format!("a:b@internal.example.com:{port}"), 400),
    ] {
        let (got, body) = h2_request(&gw, "GET", &format!("https://{authority}/hosted/x"), &[]).await;
        assert_eq!(got, status, "{authority}: {}", String::from_utf8_lossy(&body));
    }
    // :authority and Host must agree.
    let (got, _) = h2_request(&gw, "GET", "https://localhost/hosted/x", &[("host", b"internal.example.com")]).await;
    assert_eq!(got, 400);
}

const FORWARDING_CLAIMS: [&str; 47] = [
    "X-Forwarded-For",
    "X_Forwarded_For",
    "X-Forwarded-Proto",
    "x_forwarded_proto",
    "X-Forwarded-Host",
    "X_Forwarded-Host",
    "X-Forwarded-Port",
    "X-Forwarded-Prefix",
    "X-Forwarded-Server",
    "X-Forwarded-Scheme",
    "X-Forwarded-Ssl",
    "X-Forwarded-Anything-New",
    "X_Forwarded_Whatever",
    "Forwarded",
    "X-Real-IP",
    "X_Real_IP",
    "True-Client-IP",
    "True_Client_IP",
    "Client-IP",
    "Client_IP",
    "X-Client-IP",
    "X-Cluster-Client-IP",
    "Front-End-Https",
    "Front_End_Https",
    "X-Scheme",
    "X_Scheme",
    "X-Original-Forwarded-For",
    "X_Original_Forwarded_For",
    // Other spellings an upstream reads once it drops separators or loosens names.
    "Forwarded-For",
    "Remote-Addr",
    "Real-IP",
    "X-Real-Ip-Address",
    "XForwardedFor",
    "X.Forwarded.For",
    "x-_forwarded-for",
    "Forwarded_",
    "_Forwarded",
    // Client certificates, as a TLS-terminating proxy passes them on.
    "X-Client-Cert",
    "X-SSL-Client-Cert",
    "X-Forwarded-Client-Cert",
    "Client-Cert",
    "Client-Cert-Chain",
    "X-ARR-SSL",
    "Akamai-Client-IP",
    "CF-Connecting-IPv6",
    "Forwarded-Proto",
    "X-Https",
];

/// The spellings of forwarding claims a trusted proxy keeps; every other name in
/// `FORWARDING_CLAIMS` is removed whoever sends it.
const CANONICAL_CLAIMS: [&str; 20] = [
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-server",
    "x-forwarded-scheme",
    "x-forwarded-ssl",
    "x-forwarded-anything-new",
    "forwarded",
    "x-real-ip",
    "true-client-ip",
    "client-ip",
    "x-client-ip",
    "x-cluster-client-ip",
    "front-end-https",
    "x-scheme",
    "x-original-forwarded-for",
    "x-client-cert",
    "x-ssl-client-cert",
    "x-forwarded-client-cert",
];

/// Identity claims other gateways make (the `X-Auth-*` namespace is the gateway's in any
/// spelling), and httpoxy's `Proxy`: removed from everyone, trusted or not.
const IDENTITY_CLAIMS: [&str; 19] = [
    "Proxy",
    "X-Remote-User",
    "Remote-User",
    "X-User",
    "X-Auth-Request-User",
    "X-Authenticated-User",
    "X-Auth-Foo",
    "X_Auth_Foo",
    "X.Auth.Bar",
    "x-auth-subject",
    "X_AUTH.USER",
    "X-MS-Client-Principal-Name",
    "X-Goog-Authenticated-User-Email",
    "X-Amzn-Oidc-Identity",
    "Cf-Access-Jwt-Assertion",
    "X-Consumer-Username",
    "X-WebAuth-Groups",
    "Impersonate-User",
    "X-User-Id",
];

const REWRITES: [&str; 17] = [
    "X-Original-URL",
    "X_Original_URL",
    "X-Rewrite-URL",
    "X_Rewrite_Url",
    "X-HTTP-Method-Override",
    "X_HTTP_Method_Override",
    "X-Method-Override",
    "x_method_override",
    "X-HTTP-Method",
    "X_HTTP_Method",
    "X-Envoy-Original-Path",
    "X-Original-Request-URI",
    "X-Request-URI",
    "X-Middleware-Subrequest",
    "X-Script-Name",
    "X-Verb",
    "X-Host-Override",
];

fn spoofing_request(path: &str) -> String {
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: gw.example\r\nConnection: close\r\n");
    for name in FORWARDING_CLAIMS.iter().chain(&REWRITES).chain(&IDENTITY_CLAIMS) {
        let value = if name.to_ascii_lowercase().contains("method") { "DELETE" } else { "/admin" };
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    // An API's own credential header, not the gateway's namespace.
    req.push_str("X-Authorization: api-key\r\n\r\n");
    req
}

fn rewrite_routes(up: SocketAddr) -> String {
    format!(
        r#"
[[route]]
prefix = "/getonly"
methods = ["GET"]
upstream = "http://{up}"
public = true

[[route]]
prefix = "/legacy"
upstream = "http://{up}"
public = true
pass_rewrite_headers = true
"#
    )
}

#[tokio::test]
async fn fail_closed_forwarding_and_rewrite_headers_from_untrusted_peers_never_reach_the_upstream() {
    let up = EchoUpstream::start().await;
    let gw = TestGateway::start_with(up.addr, &rewrite_routes(up.addr)).await;
    for path in ["/public/f", "/getonly/f", "/legacy/f"] {
        let echo = echo_of(&raw(gw.http, spoofing_request(path).as_bytes()).await);
        assert_eq!(echo.method, "GET");
        let dashed = |n: &str| n.replace('_', "-");
        let names: Vec<String> = echo.headers.iter().map(|(n, _)| dashed(n)).collect();
        for name in FORWARDING_CLAIMS.iter().chain(&REWRITES).chain(&IDENTITY_CLAIMS) {
            let name = dashed(&name.to_ascii_lowercase());
            let expected =
                usize::from(matches!(name.as_str(), "x-forwarded-for" | "x-forwarded-proto" | "x-forwarded-host"));
            assert_eq!(names.iter().filter(|n| **n == name).count(), expected, "{path} {name}: {echo:?}");
        }
        // The gateway's own values, not the caller's.
        assert_eq!(echo.header_all("x-forwarded-for"), vec!["127.0.0.1"], "{path}");
        assert_eq!(echo.header_all("x-forwarded-proto"), vec!["http"], "{path}");
        assert_eq!(echo.header_all("x-forwarded-host"), vec!["gw.example"], "{path}");
        assert_eq!(echo.header_all("x-authorization"), vec!["api-key"], "{path}");
    }
}

#[tokio::test]
async fn fail_closed_rewrite_headers_pass_only_from_trusted_proxies_on_routes_that_opt_in() {
    let up = EchoUpstream::start().await;
    let extra = format!("[proxy]\ntrusted_proxies = [\"127.0.0.1\"]\n{}", rewrite_routes(up.addr));
    let gw = TestGateway::start_with(up.addr, &extra).await;
    // A trusted proxy keeps its forwarding headers as proxies spell them, nothing else of
    // the family, no identity claim, and not the rewrite family.
    let echo = echo_of(&raw(gw.http, spoofing_request("/getonly/f").as_bytes()).await);
    assert_eq!(echo.header_all("x-forwarded-port"), vec!["/admin"]);
    for name in FORWARDING_CLAIMS.iter().chain(&REWRITES).chain(&IDENTITY_CLAIMS) {
        let name = name.to_ascii_lowercase();
        let expected = usize::from(CANONICAL_CLAIMS.contains(&name.as_str()) || name == "x-forwarded-for");
        assert_eq!(echo.headers.iter().filter(|(n, _)| *n == name).count(), expected, "{name}: {echo:?}");
    }
    assert_eq!(echo.header_all("x-authorization"), vec!["api-key"]);
    // Unless the route opts in, and then only in the usual spelling.
    let echo = echo_of(&raw(gw.http, spoofing_request("/legacy/f").as_bytes()).await);
    assert_eq!(echo.header_all("x-http-method-override"), vec!["DELETE"]);
    assert_eq!(echo.header_all("x-original-url"), vec!["/admin"]);
    assert_eq!(echo.header_all("x-envoy-original-path"), vec!["/admin"]);
    assert_eq!(echo.header_all("x-request-uri"), vec!["/admin"]);
    for name in ["x_original_url", "x_http_method_override", "x_rewrite_url", "proxy", "x-remote-user"] {
        assert!(echo.header(name).is_none(), "{name}: {echo:?}");
    }
    // A Connection header that names X-Forwarded-For still does beside a non-ASCII byte:
    // the trusted proxy's chain is hop-by-hop then, and not kept.
    let req = b"GET /getonly/c HTTP/1.1\r\nHost: x\r\nConnection: close\r\nConnection: X-Forwarded-For, \xe9\r\n\
                X-Forwarded-For: 203.0.113.9\r\n\r\n";
    let echo = echo_of(&raw(gw.http, req).await);
    assert_eq!(echo.header_all("x-forwarded-for"), vec!["127.0.0.1"], "{echo:?}");
}

#[tokio::test]
async fn fail_closed_transfer_codings_other_than_a_lone_final_chunked_are_501() {
    let (rec, gw) = recorded_gateway("").await;
    for te in [
        "Transfer-Encoding: gzip, chunked",
        "Transfer-Encoding: chunked, chunked",
        "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
        "Transfer-Encoding: identity, chunked",
        "Transfer-Encoding: x-custom ,chunked",
    ] {
        for path in ["/public/te", "/oauth/token"] {
            let req = format!(
                "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n{te}\r\n\r\n0\r\n\r\n"
            );
            let got = raw(gw.http, req.as_bytes()).await;
            assert_eq!(statuses(&got), vec![501], "{path} {te:?}: {}", String::from_utf8_lossy(&got));
            assert!(String::from_utf8_lossy(&got).contains("\"error\""), "{path} {te:?}");
        }
    }
    assert!(rec.paths().is_empty(), "{:?}", rec.paths());
    // A lone chunked, in any case, is fine.
    let req = "POST /public/ok HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
    assert_eq!(statuses(&raw(gw.http, req.as_bytes()).await), vec![200]);
}

#[tokio::test]
async fn fail_closed_an_upstream_response_head_over_the_limit_is_502() {
    let mut resp = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Big: ".to_vec();
    resp.extend(std::iter::repeat_n(b'a', 100 * 1024));
    resp.extend_from_slice(b"\r\n\r\nok");
    let big = fixed_upstream(resp).await;
    let echo = EchoUpstream::start().await;
    let route = format!("[[route]]\nprefix = \"/echo\"\nupstream = \"http://{}\"\npublic = true\n", echo.addr);
    let gw = TestGateway::start_with(big.addr, &route).await;
    // HTTP/1.1 to the client: an HTTP/2 client would refuse such a head on its own.
    let resp = gw.client().get(gw.http_url("/public/big")).send().await.unwrap();
    assert_eq!(resp.status(), 502);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"], "bad_gateway");
    let resp = gw.client().get(gw.http_url("/echo/after")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn fail_closed_trace_is_405_unless_a_route_lists_it() {
    let up = EchoUpstream::start().await;
    let route = format!(
        "[[route]]\nprefix = \"/traced\"\nmethods = [\"GET\", \"TRACE\"]\nupstream = \"http://{}\"\npublic = true\n",
        up.addr
    );
    let gw = TestGateway::start_with(up.addr, &route).await;
    let got = raw(gw.http, b"TRACE /public/t HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    assert_eq!(statuses(&got), vec![405], "{}", String::from_utf8_lossy(&got));
    let head = head_of(&got);
    assert!(head.contains("allow: ") && !head.contains("trace"), "{head}");
    assert!(String::from_utf8_lossy(&got).contains("\"method_not_allowed\""));
    let (status, _) = h2_request(&gw, "TRACE", &gw.url("/public/t"), &[]).await;
    assert_eq!(status, 405);
    let got = raw(gw.http, b"TRACE /traced/t HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    assert_eq!(echo_of(&got).method, "TRACE");
}

#[tokio::test]
async fn fail_closed_overlong_utf8_and_non_nfkc_or_look_alike_paths_are_400() {
    let (rec, gw) = recorded_gateway("").await;
    for path in [
        "/public/%C0%AE%C0%AE/admin",
        // Case mappings into ASCII (Java equalsIgnoreCase, JS/Python upper()) and invisibles.
        "/public/adm%C4%B1n/x",
        "/public/ADM%C4%B0N/x",
        "/public/acce%C3%9F",
        "/public/%E2%80%8B../x",
        "/public/.%C2%AD./x",
        "/public/%C2%85",
        "/public/%c0%af",
        "/public/%E0%80%AE%E0%80%AE/admin",
        "/public/%C1%9C",
        "/public/%ED%A0%80",
        "/public/%FF",
        "/public/%EF%BC%8E%EF%BC%8E/admin",
        "/public/%ef%bc%8f",
        "/public/%EF%BC%BC",
        "/public/%E2%88%95",
        "/public/%E2%80%A4",
        // Not NFKC: an upstream that normalises folds them into `..`, `admin`, `;`.
        "/public/%EF%B8%B0/admin",
        "/public/%EF%BD%81%EF%BD%84%EF%BD%8D%EF%BD%89%EF%BD%8E/x",
        "/public/x%CD%BEy",
        // Best-fit backslash that NFKC leaves alone.
        "/public/a%C2%A5b",
    ] {
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let got = raw(gw.http, req.as_bytes()).await;
        assert_eq!(statuses(&got), vec![400], "{path}: {}", String::from_utf8_lossy(&got));
    }
    // Literal fullwidth dots are refused too (or never parsed as a target at all).
    for path in ["/public/．．/admin", "/public/︰/admin", "/public/ａｄｍｉｎ/x", "/public/x\u{037E}y"] {
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let got = raw(gw.http, req.as_bytes()).await;
        assert_eq!(statuses(&got), vec![400], "{path}: {}", String::from_utf8_lossy(&got));
    }
    assert!(rec.paths().is_empty(), "{:?}", rec.paths());
    let got = raw(gw.http, b"GET /public/caf%C3%A9 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    assert_eq!(statuses(&got), vec![200]);
    let got = raw(gw.http, b"GET /public/%E6%97%A5%E6%9C%AC HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    assert_eq!(statuses(&got), vec![200]);
}

/// Read one response (head and Content-Length body) from a kept-alive connection.
async fn read_one(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse().unwrap())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return String::from_utf8_lossy(&buf).into_owned();
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk)).await.unwrap().unwrap();
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test]
async fn fail_closed_the_clients_connection_keeps_the_gateways_http_version() {
    let up = fixed_upstream(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec()).await;
    let gw = TestGateway::start(up.addr).await;
    let mut s = TcpStream::connect(gw.http).await.unwrap();
    for i in 0..2 {
        s.write_all(format!("GET /public/v{i} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).await.unwrap();
        let got = read_one(&mut s).await;
        assert!(got.starts_with("HTTP/1.1 200"), "request {i}: {got}");
        assert!(got.ends_with("ok"), "request {i}: {got}");
    }
}

/// Black-box finding: `trace`, `tRaCe`, `connect` and IIS's `TRACK` skipped the TRACE
/// refusal, and a lower-case `delete` skipped a route's method filter for a broader route
/// (upstreams that read methods case-insensitively then performed it). Any method with a
/// lower-case letter is refused before routing; TRACK is held to TRACE's rule.
#[tokio::test]
async fn fail_closed_lower_case_methods_and_track_are_405() {
    let up = EchoUpstream::start().await;
    // /strict takes DELETE only with the admin scope; a broader public route covers the rest.
    let route = format!(
        "[[route]]\nprefix = \"/strict\"\nmethods = [\"DELETE\"]\nupstream = \"http://{0}\"\nscopes = [\"admin\"]\n\
         [[route]]\nprefix = \"/strict\"\nupstream = \"http://{0}\"\npublic = true\n",
        up.addr
    );
    let gw = TestGateway::start_with(up.addr, &route).await;
    for method in ["trace", "tRaCe", "connect", "delete", "Delete", "get", "TRACK"] {
        let req = format!("{method} /strict/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let got = raw(gw.http, req.as_bytes()).await;
        assert_eq!(statuses(&got), vec![405], "{method}: {}", String::from_utf8_lossy(&got));
        let (status, _) = h2_request(&gw, method, &gw.url("/strict/x"), &[]).await;
        assert_eq!(status, 405, "{method} over HTTP/2");
    }
    // The upper-case DELETE still needs the admin scope; GET still reaches the public route.
    let got = raw(gw.http, b"DELETE /strict/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    assert_eq!(statuses(&got), vec![401]);
    let got = raw(gw.http, b"GET /strict/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    assert_eq!(echo_of(&got).method, "GET");
}

/// Black-box finding: an HTTP/1.1 request without a Host header was routed (RFC 9112 §3.2:
/// 400), at the OAuth endpoints too; HTTP/1.0 may omit it. Two Host headers are 400 at every
/// endpoint, not only on the proxy path.
#[tokio::test]
async fn fail_closed_http11_without_host_or_with_two_is_400_everywhere() {
    let up = EchoUpstream::start().await;
    let gw = TestGateway::start(up.addr).await;
    for path in ["/public/x", "/.well-known/jwks.json", "/oauth/token"] {
        let got = raw(gw.http, format!("GET {path} HTTP/1.1\r\nConnection: close\r\n\r\n").as_bytes()).await;
        assert_eq!(statuses(&got), vec![400], "no Host, {path}: {}", String::from_utf8_lossy(&got));
        let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        let got = raw(gw.http, req.as_bytes()).await;
        assert_eq!(statuses(&got), vec![400], "two Hosts, {path}: {}", String::from_utf8_lossy(&got));
    }
    let got = raw(gw.http, b"GET /public/x HTTP/1.0\r\n\r\n").await;
    assert_eq!(echo_of(&got).path, "/public/x", "HTTP/1.0 may omit Host");
    // Second black-box pass: the OAuth endpoints took any Host value; HTTP/2 with neither
    // `:authority` nor `host` was served (RFC 9113 §8.3.1: malformed).
    for path in ["/.well-known/jwks.json", "/oauth/token", "/public/x"] {
        for host in ["a@evil.com", "evil.com/x?y", "", "x, y"] {
            let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
            let got = raw(gw.http, req.as_bytes()).await;
            assert_eq!(statuses(&got), vec![400], "Host {host:?}, {path}: {}", String::from_utf8_lossy(&got));
        }
        let (status, _) = h2_request(&gw, "GET", path, &[]).await;
        assert_eq!(status, 400, "HTTP/2 without :authority or host, {path}");
        let (status, _) = h2_request(&gw, "GET", &gw.url(path), &[("host", b"other.example")]).await;
        assert_eq!(status, 400, "HTTP/2 host differs from :authority, {path}");
    }
}
