//! Resource-owner grants end to end: /authorize (login, consent, CSRF, sessions), the
//! authorization_code grant with PKCE, implicit, password, refresh rotation, and the
//! attacks on them (redirect URI variations, PKCE downgrades, codes of other clients).

mod common;

use common::*;
use serde_json::Value;

// ---------------------------------------------------------------------------------------
// Attacks on the grants: foreign codes, redirect URI variations, PKCE downgrades.

#[tokio::test]
async fn a_public_clients_code_is_useless_to_another_client_and_burns() {
    let (_up, gw) = setup().await;
    let code = spa_code(&gw).await;
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", "https://spa.test/cb"),
        ("code_verifier", PKCE_VERIFIER),
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
        let mut q = bare_spa_query();
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
    let mut q = bare_spa_query();
    q[4] = ("code_challenge", PKCE_VERIFIER);
    let code = login_and_consent(&mut b, &gw, &q).await.location_param("code").unwrap();
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("client_id", "spa"),
        ("redirect_uri", "https://spa.test/cb"),
        ("code_verifier", PKCE_VERIFIER),
    ];
    let (status, v) = token_request(&gw, None, &form).await;
    assert_eq!((status, v["error"].as_str()), (400, Some("invalid_grant")), "{v}");
    assert!(v["error_description"].as_str().unwrap().contains("code_verifier"));

    // Method spellings other than "S256" are "plain" in disguise.
    for method in ["s256", "plain", "S256 ", "SHA256", ""] {
        let mut q = bare_spa_query();
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
        ("code_challenge", PKCE_CHALLENGE),
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
         &code_verifier={PKCE_VERIFIER}&code_verifier=x"
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

fn spa_query<'a>() -> Vec<(&'a str, &'a str)> {
    vec![
        ("response_type", "code"),
        ("client_id", "spa"),
        ("redirect_uri", "https://spa.test/cb"),
        ("scope", "read,profile"),
        ("state", "xyz-123"),
        ("code_challenge", PKCE_CHALLENGE),
        ("code_challenge_method", "S256"),
    ]
}

#[tokio::test]
async fn public_client_code_flow_with_pkce_end_to_end() {
    let (_up, gw) = setup().await;
    let mut b = Browser::new(&gw);
    let done = login_and_consent(&mut b, &gw, &spa_query()).await;
    let loc = done.location.clone().unwrap();
    assert!(loc.starts_with("https://spa.test/cb?"), "{loc}");
    assert_eq!(done.location_param("state").as_deref(), Some("xyz-123"));
    assert_eq!(done.location_param("iss").as_deref(), Some(ISSUER), "RFC 9207");
    let code = done.location_param("code").unwrap();

    let (status, v) = token_request(
        &gw,
        None,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("client_id", "spa"),
            ("redirect_uri", "https://spa.test/cb"),
            ("code_verifier", PKCE_VERIFIER),
        ],
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["scope"], "read profile");
    assert!(v["refresh_token"].as_str().unwrap().len() >= 43);
    let at = v["access_token"].as_str().unwrap();
    let c = claims(at);
    assert_eq!(c["sub"], "alice");
    assert_eq!(c["client_id"], "spa");

    let echo: Echo = gw.client().get(gw.url("/api/me")).bearer_auth(at).send().await.unwrap().json().await.unwrap();
    assert_eq!(echo.header("x-auth-user"), Some("alice"));
    assert_eq!(echo.header("x-auth-subject"), Some("alice"));
    assert_eq!(echo.header("x-auth-client-id"), Some("spa"));
}

#[tokio::test]
async fn confidential_client_code_flow_and_registered_query_is_kept() {
    let (_up, gw) = setup().await;
    let mut b = Browser::new(&gw);
    let q = [
        ("response_type", "code"),
        ("client_id", "webapp"),
        ("redirect_uri", "http://127.0.0.1:9/cb?x=1"),
        ("state", "s1"),
    ];
    let done = login_and_consent(&mut b, &gw, &q).await;
    let loc = done.location.clone().unwrap();
    assert!(loc.starts_with("http://127.0.0.1:9/cb?x=1&code="), "{loc}");
    let code = done.location_param("code").unwrap();
    let form =
        [("grant_type", "authorization_code"), ("code", code.as_str()), ("redirect_uri", "http://127.0.0.1:9/cb?x=1")];
    let (status, v) = token_request(&gw, Some(("webapp", SVC_SECRET)), &form).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["scope"], "read");
    assert_eq!(api_status(&gw, v["access_token"].as_str().unwrap()).await, 200);
}

#[tokio::test]
async fn code_replay_is_refused_and_revokes_what_the_first_use_issued() {
    let (_up, gw) = setup().await;
    let mut b = Browser::new(&gw);
    let code = login_and_consent(&mut b, &gw, &spa_query()).await.location_param("code").unwrap();
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("client_id", "spa"),
        ("redirect_uri", "https://spa.test/cb"),
        ("code_verifier", PKCE_VERIFIER),
    ];
    let (status, first) = token_request(&gw, None, &form).await;
    assert_eq!(status, 200);
    let at = first["access_token"].as_str().unwrap();
    assert_eq!(api_status(&gw, at).await, 200, "cached as valid first");

    let (status, v) = token_request(&gw, None, &form).await;
    assert_eq!((status, v["error"].as_str()), (400, Some("invalid_grant")), "{v}");
    assert_eq!(api_status(&gw, at).await, 401, "the first use's access token is revoked at once");
    let rt = first["refresh_token"].as_str().unwrap();
    let (status, v) =
        token_request(&gw, None, &[("grant_type", "refresh_token"), ("refresh_token", rt), ("client_id", "spa")]).await;
    assert_eq!((status, v["error_description"].as_str()), (400, Some("The refresh token is invalid.")));
}

#[tokio::test]
async fn pkce_mismatch_missing_verifier_and_downgrade_are_invalid_grant() {
    let (_up, gw) = setup().await;
    for (verifier, what) in [(Some("a".repeat(43)), "mismatch"), (None, "missing")] {
        let mut b = Browser::new(&gw);
        let code = login_and_consent(&mut b, &gw, &spa_query()).await.location_param("code").unwrap();
        let mut form = vec![("grant_type", "authorization_code"), ("code", code.as_str()), ("client_id", "spa")];
        form.push(("redirect_uri", "https://spa.test/cb"));
        if let Some(v) = verifier.as_deref() {
            form.push(("code_verifier", v));
        }
        let (status, v) = token_request(&gw, None, &form).await;
        assert_eq!((status, v["error"].as_str()), (400, Some("invalid_grant")), "{what}: {v}");
        assert!(v["error_description"].as_str().unwrap().contains("code_verifier"), "{what}: {v}");
    }
    // A code obtained without PKCE must not accept a verifier (downgrade protection).
    let mut b = Browser::new(&gw);
    let q = [("response_type", "code"), ("client_id", "webapp"), ("redirect_uri", "https://app.test/callback")];
    let code = login_and_consent(&mut b, &gw, &q).await.location_param("code").unwrap();
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", "https://app.test/callback"),
        ("code_verifier", PKCE_VERIFIER),
    ];
    let (status, v) = token_request(&gw, Some(("webapp", SVC_SECRET)), &form).await;
    assert_eq!((status, v["error"].as_str()), (400, Some("invalid_grant")), "{v}");
}

#[tokio::test]
async fn redirect_uri_must_match_at_authorize_and_at_token() {
    let (_up, gw) = setup().await;
    let mut b = Browser::new(&gw);
    for bad in [
        "https://spa.test/cb/",
        "https://spa.test/cb?x=1",
        "https://SPA.test/cb",
        "https://evil.test/cb",
        "https://spa.test:444/cb",
    ] {
        let mut q = spa_query();
        q[2] = ("redirect_uri", bad);
        let page = b.get(&authorize_url(&gw, &q)).await;
        assert_eq!(page.status, 400, "{bad}");
        assert!(page.location.is_none(), "never redirect to an unregistered URI: {bad}");
        assert!(page.body.contains("redirect URI is not registered"), "{bad}");
    }
    let page = b.get(&authorize_url(&gw, &[("response_type", "code"), ("client_id", "ghost")])).await;
    assert_eq!((page.status, page.location.is_none()), (400, true));

    let code = login_and_consent(&mut b, &gw, &spa_query()).await.location_param("code").unwrap();
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("client_id", "spa"),
        ("redirect_uri", "https://spa.test/other"),
        ("code_verifier", PKCE_VERIFIER),
    ];
    let (status, v) = token_request(&gw, None, &form).await;
    assert_eq!((status, v["error"].as_str()), (400, Some("invalid_grant")), "{v}");
}

#[tokio::test]
async fn code_of_another_client_is_invalid_grant() {
    let (_up, gw) = setup().await;
    let mut b = Browser::new(&gw);
    let code = login_and_consent(&mut b, &gw, &spa_query()).await.location_param("code").unwrap();
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", "https://spa.test/cb"),
        ("code_verifier", PKCE_VERIFIER),
    ];
    let (status, v) = token_request(&gw, Some(("webapp", SVC_SECRET)), &form).await;
    assert_eq!((status, v["error"].as_str()), (400, Some("invalid_grant")), "{v}");
}

#[tokio::test]
async fn authorize_errors_redirect_with_state() {
    let (_up, gw) = setup().await;
    let mut b = Browser::new(&gw);
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (vec![("client_id", "spa"), ("state", "st")], "invalid_request"),
        (vec![("response_type", "magic"), ("client_id", "spa"), ("state", "st")], "unsupported_response_type"),
        (
            vec![
                ("response_type", "token"),
                ("client_id", "webapp"),
                ("redirect_uri", "https://app.test/callback"),
                ("state", "st"),
            ],
            "unauthorized_client",
        ),
        (
            vec![
                ("response_type", "code"),
                ("client_id", "spa"),
                ("scope", "admin"),
                ("state", "st"),
                ("code_challenge", PKCE_CHALLENGE),
                ("code_challenge_method", "S256"),
            ],
            "invalid_scope",
        ),
        (vec![("response_type", "code"), ("client_id", "spa"), ("state", "st")], "invalid_request"),
        (
            vec![
                ("response_type", "code"),
                ("client_id", "spa"),
                ("state", "st"),
                ("code_challenge", PKCE_CHALLENGE),
                ("code_challenge_method", "plain"),
            ],
            "invalid_request",
        ),
        (
            vec![("response_type", "code"), ("client_id", "spa"), ("state", "st"), ("code_challenge", PKCE_CHALLENGE)],
            "invalid_request",
        ),
    ];
    for (q, error) in cases {
        let page = b.get(&authorize_url(&gw, &q)).await;
        assert_eq!(page.status, 302, "{q:?}: {}", page.body);
        assert_eq!(page.location_param("error").as_deref(), Some(error), "{q:?}: {:?}", page.location);
        assert_eq!(page.location_param("state").as_deref(), Some("st"), "{q:?}");
        assert!(page.location_param("error_description").is_some());
    }
}

#[tokio::test]
async fn implicit_flow_returns_the_token_in_the_fragment() {
    let (_up, gw) = setup().await;
    let mut b = Browser::new(&gw);
    let q = [("response_type", "token"), ("client_id", "spa"), ("scope", "read"), ("state", "imp")];
    let done = login_and_consent(&mut b, &gw, &q).await;
    let loc = done.location.clone().unwrap();
    assert!(loc.starts_with("https://spa.test/cb#access_token="), "{loc}");
    assert_eq!(done.location_param("token_type").as_deref(), Some("Bearer"));
    assert_eq!(done.location_param("expires_in").as_deref(), Some("3600"));
    assert_eq!(done.location_param("scope").as_deref(), Some("read"));
    assert_eq!(done.location_param("state").as_deref(), Some("imp"));
    assert!(done.location_param("refresh_token").is_none());
    let at = done.location_param("access_token").unwrap();
    assert_eq!(api_status(&gw, &at).await, 200);
}

#[tokio::test]
async fn denied_consent_redirects_access_denied() {
    let (_up, gw) = setup().await;
    let mut b = Browser::new(&gw);
    let login = b.get(&authorize_url(&gw, &spa_query())).await;
    let consent = b.submit(&gw, &login, &[("username", "alice"), ("password", ALICE_PASSWORD)]).await;
    assert!(
        consent.body.contains("Single Page App") && consent.body.contains("<code>profile</code>"),
        "{}",
        consent.body
    );
    let done = b.submit(&gw, &consent, &[("decision", "deny")]).await;
    assert_eq!(done.status, 303);
    assert_eq!(done.location_param("error").as_deref(), Some("access_denied"));
    assert_eq!(done.location_param("state").as_deref(), Some("xyz-123"));
}

#[tokio::test]
async fn wrong_credentials_show_one_message_and_no_session() {
    let (_up, gw) = setup().await;
    let mut b = Browser::new(&gw);
    let login = b.get(&authorize_url(&gw, &spa_query())).await;
    let mut bodies = Vec::new();
    for (u, p) in [("alice", "wrong"), ("nobody", "wrong"), ("bob", ALICE_PASSWORD)] {
        let again = b.submit(&gw, &login, &[("username", u), ("password", p)]).await;
        assert_eq!(again.status, 401, "{u}");
        assert!(again.body.contains("The username or password is incorrect."), "{u}: {}", again.body);
        assert!(!b.cookies.contains_key("__Host-portcullis_session"), "{u}");
        bodies.push(again.body.replace(u, "USER"));
    }
    assert_eq!(bodies[0], bodies[1], "unknown user indistinguishable from wrong password");
}

/// Review 23.6: a `[[user]]` without `password_hash` is a service identity (robot, the
/// linked user of `ccr`): it can never log in nor use the password grant, and is refused
/// exactly like an unknown user, whatever password is sent (also an empty one).
#[tokio::test]
async fn a_user_without_a_password_can_never_log_in() {
    let (_up, gw) = setup().await;
    let mut b = Browser::new(&gw);
    let login = b.get(&authorize_url(&gw, &spa_query())).await;
    let mut bodies = Vec::new();
    for (u, p) in [("nobody", "x"), ("robot", "x"), ("robot", ""), ("robot", ALICE_PASSWORD)] {
        let again = b.submit(&gw, &login, &[("username", u), ("password", p)]).await;
        assert_eq!(again.status, 401, "{u}/{p}");
        assert!(!b.cookies.contains_key("__Host-portcullis_session"), "{u}");
        bodies.push(again.body.replace(u, "USER"));
    }
    assert_eq!(bodies[0], bodies[1], "a linked-only user is indistinguishable from an unknown one");
    let mut answers = Vec::new();
    for (u, p) in [("nobody", "x"), ("robot", "x"), ("robot", ALICE_PASSWORD)] {
        let form = [("grant_type", "password"), ("username", u), ("password", p)];
        answers.push(token_request(&gw, Some(("webapp", SVC_SECRET)), &form).await);
    }
    for (status, v) in &answers {
        assert_eq!((*status, v), (answers[0].0, &answers[0].1), "password grant");
    }
    assert_eq!(answers[0].1["error"], "invalid_grant");
    // The client it is linked to still works.
    let (status, v) = token_request(&gw, Some(("ccr", SVC_SECRET)), &[("grant_type", "client_credentials")]).await;
    assert_eq!(status, 200, "{v}");
}

#[tokio::test]
async fn login_post_without_the_csrf_cookie_or_token_is_refused() {
    let (_up, gw) = setup().await;
    let mut b = Browser::new(&gw);
    let login = b.get(&authorize_url(&gw, &spa_query())).await;
    let mut fields = login.fields();
    fields.push(("username".into(), "alice".into()));
    fields.push(("password".into(), ALICE_PASSWORD.into()));

    let mut no_cookie = Browser::new(&gw);
    let page = no_cookie.post(&gw.url("/oauth/authorize"), &fields).await;
    assert_eq!(page.status, 403, "{}", page.body);

    let forged: Vec<(String, String)> = fields
        .iter()
        .map(|(k, v)| if k == "csrf" { (k.clone(), "A".repeat(43)) } else { (k.clone(), v.clone()) })
        .collect();
    let page = b.post(&gw.url("/oauth/authorize"), &forged).await;
    assert_eq!(page.status, 403);
    let without: Vec<(String, String)> = fields.iter().filter(|(k, _)| k != "csrf").cloned().collect();
    let page = b.post(&gw.url("/oauth/authorize"), &without).await;
    assert_eq!(page.status, 403);
    assert!(!b.cookies.contains_key("__Host-portcullis_session"));
}

#[tokio::test]
async fn a_session_skips_login_and_first_party_skips_consent() {
    let (_up, gw) = setup().await;
    let mut b = Browser::new(&gw);
    login_and_consent(&mut b, &gw, &spa_query()).await;
    let again = b.get(&authorize_url(&gw, &spa_query())).await;
    assert_eq!(again.status, 200);
    assert!(again.body.contains("Allow access?") && !again.body.contains("name=\"password\""), "{}", again.body);

    let first = b.get(&authorize_url(&gw, &[("response_type", "code"), ("client_id", "first"), ("state", "f")])).await;
    assert_eq!(first.status, 302, "{}", first.body);
    assert!(first.location.as_deref().unwrap().starts_with("https://first.test/cb?code="));
    assert_eq!(first.location_param("state").as_deref(), Some("f"));
}

#[tokio::test]
async fn password_grant_success_and_errors() {
    let (_up, gw) = setup().await;
    let ok = [("grant_type", "password"), ("username", "alice"), ("password", ALICE_PASSWORD), ("scope", "read write")];
    let (status, v) = token_request(&gw, Some(("webapp", SVC_SECRET)), &ok).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(claims(v["access_token"].as_str().unwrap())["sub"], "alice");
    assert_eq!(v["scope"], "read write");
    assert!(v["refresh_token"].is_string());

    let (status, v) = token_request(&gw, Some(("pwonly", SVC_SECRET)), &ok[..3]).await;
    assert_eq!(status, 200, "{v}");
    assert!(v.get("refresh_token").is_none(), "no refresh_token grant, no refresh token");

    for (user, pass) in [("alice", "nope"), ("nobody", "nope"), ("bob", ALICE_PASSWORD)] {
        let form = [("grant_type", "password"), ("username", user), ("password", pass)];
        let (status, v) = token_request(&gw, Some(("webapp", SVC_SECRET)), &form).await;
        assert_eq!(status, 400, "{user}");
        assert_eq!(v["error"], "invalid_grant");
        assert_eq!(v["error_description"], "The user credentials were incorrect.");
    }
    let (status, v) = token_request(&gw, Some(("svc", SVC_SECRET)), &ok).await;
    assert_eq!((status, v["error"].as_str()), (400, Some("unauthorized_client")));
    let (status, v) =
        token_request(&gw, Some(("webapp", SVC_SECRET)), &[("grant_type", "password"), ("password", "x")]).await;
    assert_eq!((status, v["error"].as_str()), (400, Some("invalid_request")));
    assert!(v["error_description"].as_str().unwrap().contains("'username'"));
}

async fn password_tokens_read_write(gw: &TestGateway) -> (String, String) {
    let form =
        [("grant_type", "password"), ("username", "alice"), ("password", ALICE_PASSWORD), ("scope", "read write")];
    let (status, v) = token_request(gw, Some(("webapp", SVC_SECRET)), &form).await;
    assert_eq!(status, 200, "{v}");
    (v["access_token"].as_str().unwrap().to_string(), v["refresh_token"].as_str().unwrap().to_string())
}

#[tokio::test]
async fn refresh_rotates_and_reuse_revokes_the_family() {
    let (_up, gw) = setup().await;
    // Issue 19.1: strict reuse detection needs the reuse interval off (default 10 s).
    gw.rewrite_config(|t| t.replacen("id = \"webapp\"\n", "id = \"webapp\"\nrefresh_reuse_interval = \"0s\"\n", 1));
    let (at0, rt0) = password_tokens_read_write(&gw).await;
    assert_eq!(api_status(&gw, &at0).await, 200);

    let refresh = |rt: String| {
        let gw = &gw;
        async move {
            token_request(gw, Some(("webapp", SVC_SECRET)), &[("grant_type", "refresh_token"), ("refresh_token", &rt)])
                .await
        }
    };
    let (status, v) = refresh(rt0.clone()).await;
    assert_eq!(status, 200, "{v}");
    let rt1 = v["refresh_token"].as_str().unwrap().to_string();
    let at1 = v["access_token"].as_str().unwrap().to_string();
    assert_ne!(rt1, rt0);
    assert_eq!(v["scope"], "read write");
    assert_eq!(claims(&at1)["sub"], "alice");
    assert_eq!(api_status(&gw, &at1).await, 200);

    // The spent token again: refused, and the whole family with it.
    let (status, v) = refresh(rt0).await;
    assert_eq!((status, v["error"].as_str()), (400, Some("invalid_grant")));
    assert_eq!(v["error_description"], "The refresh token is invalid.");
    let (status, _) = refresh(rt1).await;
    assert_eq!(status, 400, "the newest token of a revoked family is dead too");
    assert_eq!(api_status(&gw, &at0).await, 401);
    assert_eq!(api_status(&gw, &at1).await, 401);
}

#[tokio::test]
async fn refresh_scope_may_narrow_not_widen_and_only_for_its_client() {
    let (_up, gw) = setup().await;
    let (_, rt0) = password_tokens_read_write(&gw).await;
    let form = [("grant_type", "refresh_token"), ("refresh_token", rt0.as_str()), ("scope", "read profile")];
    let (status, v) = token_request(&gw, Some(("webapp", SVC_SECRET)), &form).await;
    assert_eq!((status, v["error"].as_str()), (400, Some("invalid_scope")), "widening");

    let form = [("grant_type", "refresh_token"), ("refresh_token", rt0.as_str()), ("client_id", "spa")];
    let (status, v) = token_request(&gw, None, &form).await;
    assert_eq!((status, v["error"].as_str()), (400, Some("invalid_grant")), "another client: {v}");

    let form = [("grant_type", "refresh_token"), ("refresh_token", rt0.as_str()), ("scope", "read")];
    let (status, v) = token_request(&gw, Some(("webapp", SVC_SECRET)), &form).await;
    assert_eq!(status, 200, "narrowing after refused attempts still works: {v}");
    assert_eq!(v["scope"], "read");
    // The narrowed refresh keeps the original grant: it may ask for write again.
    let rt1 = v["refresh_token"].as_str().unwrap();
    let form = [("grant_type", "refresh_token"), ("refresh_token", rt1), ("scope", "write")];
    let (status, v) = token_request(&gw, Some(("webapp", SVC_SECRET)), &form).await;
    assert_eq!((status, v["scope"].as_str()), (200, Some("write")));
}

#[tokio::test]
async fn refresh_tokens_survive_a_gateway_restart() {
    let up = EchoUpstream::start().await;
    let gw = TestGateway::start(up.addr).await;
    let (_, rt0) = password_tokens_read_write(&gw).await;
    let gw = gw.restart().await;
    let form = [("grant_type", "refresh_token"), ("refresh_token", rt0.as_str())];
    let (status, v) = token_request(&gw, Some(("webapp", SVC_SECRET)), &form).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(api_status(&gw, v["access_token"].as_str().unwrap()).await, 200);
}

#[tokio::test]
async fn refresh_loses_a_scope_the_operator_took_from_the_client() {
    let (_up, gw) = setup().await;
    let (_, rt0) = password_tokens_read_write(&gw).await;
    gw.rewrite_config(|t| {
        t.replacen("scopes = [\"read\", \"write\", \"profile\"]", "scopes = [\"read\", \"profile\"]", 1)
    });
    let form = [("grant_type", "refresh_token"), ("refresh_token", rt0.as_str()), ("scope", "write")];
    let (status, v) = token_request(&gw, Some(("webapp", SVC_SECRET)), &form).await;
    assert_eq!((status, v["error"].as_str()), (400, Some("invalid_scope")), "{v}");
    let form = [("grant_type", "refresh_token"), ("refresh_token", rt0.as_str())];
    let (status, v) = token_request(&gw, Some(("webapp", SVC_SECRET)), &form).await;
    assert_eq!((status, v["scope"].as_str()), (200, Some("read")), "{v}");
}

#[tokio::test]
async fn client_credentials_refresh_works_for_a_linked_user() {
    let (_up, gw) = setup().await;
    let (status, v) = token_request(&gw, Some(("ccr", SVC_SECRET)), &[("grant_type", "client_credentials")]).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(claims(v["access_token"].as_str().unwrap())["sub"], "robot");
    let rt = v["refresh_token"].as_str().unwrap();
    let (status, v) =
        token_request(&gw, Some(("ccr", SVC_SECRET)), &[("grant_type", "refresh_token"), ("refresh_token", rt)]).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(claims(v["access_token"].as_str().unwrap())["sub"], "robot");
    assert_eq!(claims(v["access_token"].as_str().unwrap())["gty"], "client_credentials");
    assert_eq!(api_status(&gw, v["access_token"].as_str().unwrap()).await, 200);
}

fn field(page: &Page, name: &str) -> String {
    page.fields().into_iter().find(|(k, _)| k == name).map(|(_, v)| v).unwrap_or_else(|| panic!("no {name} field"))
}

/// Issue 11: the CSRF token is bound to the login session (or, before login, to the nonce
/// cookie) with a server key, so a cookie and form value planted together by a sibling
/// origin or an upstream are refused, and the pre-login token is useless after login.
#[tokio::test]
async fn a_planted_csrf_pair_or_the_pre_login_token_cannot_forge_consent() {
    let (_up, gw) = setup().await;
    let mut b = Browser::new(&gw);
    let login = b.get(&authorize_url(&gw, &spa_query())).await;
    let pre_login = field(&login, "csrf");
    let consent = b.submit(&gw, &login, &[("username", "alice"), ("password", ALICE_PASSWORD)]).await;
    assert!(consent.body.contains("Allow access?"), "{}", consent.body);
    assert_ne!(field(&consent, "csrf"), pre_login, "a fresh CSRF token at login");

    // The pre-login token (still the value the browser's CSRF cookie was issued with) is refused.
    let page = b.submit(&gw, &consent, &[("decision", "allow"), ("csrf", &pre_login)]).await;
    assert_eq!(page.status, 403, "pre-login CSRF accepted after login: {:?}", page.location);

    // A cookie planted next to the genuine session, and a form value equal to it.
    let planted = "P".repeat(43);
    b.cookies.insert("__Host-portcullis_csrf".into(), planted.clone());
    let page = b.submit(&gw, &consent, &[("decision", "allow"), ("csrf", &planted)]).await;
    assert_eq!(page.status, 403, "planted CSRF pair accepted at consent: {:?}", page.location);

    // The same at the login step: a matching pair the gateway never bound is refused.
    let mut fresh = Browser::new(&gw);
    fresh.cookies.insert("__Host-portcullis_csrf".into(), planted.clone());
    let mut fields = login.fields();
    fields.retain(|(k, _)| k != "csrf");
    fields.extend([
        ("csrf".to_string(), planted.clone()),
        ("username".to_string(), "alice".to_string()),
        ("password".to_string(), ALICE_PASSWORD.to_string()),
    ]);
    let page = fresh.post(&gw.url("/oauth/authorize"), &fields).await;
    assert_eq!(page.status, 403, "planted CSRF pair accepted at login");
    assert!(!fresh.cookies.contains_key("__Host-portcullis_session"));

    // The genuine, session-bound form still works.
    let done = b.submit(&gw, &consent, &[("decision", "allow")]).await;
    assert_eq!(done.status, 303, "{}", done.body);
    assert!(done.location_param("code").is_some());
}

/// Issue 11: the gateway reads its own cookies as bytes too. A browser that also holds a
/// UTF-8 cookie (which any upstream on the host may set) still logs in and consents; a
/// duplicated gateway cookie proves nothing and is refused.
#[tokio::test]
async fn a_non_ascii_cookie_beside_ours_does_not_hide_them_and_a_duplicate_is_refused() {
    let (_up, gw) = setup().await;
    let mut b = Browser::new(&gw);
    b.cookies.insert("lang".into(), "français".into());
    let login = b.get(&authorize_url(&gw, &spa_query())).await;
    let consent = b.submit(&gw, &login, &[("username", "alice"), ("password", ALICE_PASSWORD)]).await;
    assert!(consent.body.contains("Allow access?"), "{}", consent.body);

    // The session cookie twice (same value, other case of the name is another cookie):
    // ambiguous, so the consent form is not honoured.
    let session = b.cookies["__Host-portcullis_session"].clone();
    let mut twice = Browser::new(&gw);
    twice.cookies.insert("__Host-portcullis_session".into(), format!("{session}; __Host-portcullis_session={session}"));
    let page = twice.submit(&gw, &consent, &[("decision", "allow")]).await;
    assert_ne!(page.status, 303, "consent with a duplicated session cookie: {:?}", page.location);

    let done = b.submit(&gw, &consent, &[("decision", "allow")]).await;
    assert_eq!(done.status, 303, "{}", done.body);
    assert!(done.location_param("code").is_some());
}

// ---------------------------------------------------------------------------------------
// RFC 8252 §7.3: a loopback IP redirect URI matches on any port; nothing else relaxes.

#[tokio::test]
async fn loopback_redirect_uris_accept_any_port_and_nothing_that_only_looks_like_one() {
    let up = EchoUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(dir.path());
    let mut text = config_toml(dir.path(), &pki, up.addr, "");
    text.push_str(
        "\n[[client]]\nid = \"native\"\ngrants = [\"authorization_code\"]\nscopes = [\"read\"]\n\
         redirect_uris = [\"http://127.0.0.1/cb\", \"http://[::1]/cb\", \"http://localhost/cb\"]\n",
    );
    let gw = TestGateway::start_text(dir, pki, &text).await;
    let query = |uri: &str| {
        authorize_url(
            &gw,
            &[
                ("response_type", "code"),
                ("client_id", "native"),
                ("redirect_uri", uri),
                ("code_challenge", PKCE_CHALLENGE),
                ("code_challenge_method", "S256"),
            ],
        )
    };
    for good in ["http://127.0.0.1:49152/cb", "http://127.0.0.1/cb", "http://[::1]:1/cb", "http://localhost/cb"] {
        let page = Browser::new(&gw).get(&query(good)).await;
        assert_eq!(page.status, 200, "{good}: {}", page.body);
        assert!(page.body.contains("name=\"password\""), "{good}");
    }
    // A code issued to the port-bearing URI is bound to exactly it.
    let mut b = Browser::new(&gw);
    let pairs = [
        ("response_type", "code"),
        ("client_id", "native"),
        ("redirect_uri", "http://127.0.0.1:50123/cb"),
        ("code_challenge", PKCE_CHALLENGE),
        ("code_challenge_method", "S256"),
    ];
    let done = login_and_consent(&mut b, &gw, &pairs).await;
    assert!(done.location.as_deref().unwrap().starts_with("http://127.0.0.1:50123/cb?code="));
    let code = done.location_param("code").unwrap();
    let form = [
        ("grant_type", "authorization_code"),
        ("client_id", "native"),
        ("code", &code),
        ("redirect_uri", "http://127.0.0.1:50124/cb"),
        ("code_verifier", PKCE_VERIFIER),
    ];
    let (status, v) = token_request(&gw, None, &form).await;
    assert_eq!((status, v["error"].as_str()), (400, Some("invalid_grant")), "{v}");
    for bad in [
        "http://127.0.0.1.evil.com:1234/cb",
        "http://127.0.0.1:1234@evil.com/cb",
        "http://127.0.0.1@evil.com/cb",
        "http://evil.com@127.0.0.1:1234/cb",
        "http://127.1:1234/cb",
        "http://0x7f.0.0.1:1234/cb",
        "http://%31%32%37.0.0.1:1234/cb",
        "HTTP://127.0.0.1:1234/cb",
        "http://127.0.0.1:1234/CB",
        "http://127.0.0.1:1234/cb/",
        "http://127.0.0.1:1234/cb?x=1",
        "http://127.0.0.1:1234/%63b",
        "http://127.0.0.1:0/cb",
        "http://127.0.0.1:99999/cb",
        "http://[::1]:1234/cb/../cb",
        "http://[0:0:0:0:0:0:0:1]:1234/cb",
        "https://127.0.0.1:1234/cb",
        "http://localhost:1234/cb",
    ] {
        let page = Browser::new(&gw).get(&query(bad)).await;
        assert_eq!(page.status, 400, "{bad}: {}", page.body);
        assert!(page.location.is_none(), "{bad}");
    }
}
