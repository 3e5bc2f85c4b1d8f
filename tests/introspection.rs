//! Who may introspect (issue 19.2), linked-user tokens (19.4) and the smaller token-side
//! points of 19.8: challenges on every 401, client disable and secret rotation against
//! outstanding tokens, and the per-source lockout of client-secret guesses.

mod common;

use common::*;
use serde_json::{Value, json};

/// `rs`: a resource server allowed to introspect every client's tokens.
fn resource_server() -> String {
    format!(
        "[[client]]\nid = \"rs\"\nsecret_hash = \"{SVC_HASH}\"\ngrants = [\"client_credentials\"]\nscopes = [\"read\"]\nintrospect = true\n"
    )
}

async fn start() -> (EchoUpstream, TestGateway) {
    let up = EchoUpstream::start().await;
    let gw = TestGateway::start_with(up.addr, &resource_server()).await;
    (up, gw)
}

/// POST `form` to `path` as `as_client` (Basic), status and JSON body.
async fn post_as(gw: &TestGateway, path: &str, as_client: (&str, &str), form: &[(&str, &str)]) -> (u16, Value) {
    let resp =
        gw.client().post(gw.url(path)).basic_auth(as_client.0, Some(as_client.1)).form(form).send().await.unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

async fn introspect(gw: &TestGateway, as_client: (&str, &str), token: &str) -> Value {
    let (status, v) = post_as(gw, "/oauth/introspect", as_client, &[("token", token)]).await;
    assert_eq!(status, 200, "{v}");
    v
}

async fn password_tokens(gw: &TestGateway) -> (String, String) {
    let form = [("grant_type", "password"), ("username", "alice"), ("password", ALICE_PASSWORD)];
    let (status, v) = token_request(gw, Some(("webapp", SVC_SECRET)), &form).await;
    assert_eq!(status, 200, "{v}");
    (v["access_token"].as_str().unwrap().to_string(), v["refresh_token"].as_str().unwrap().to_string())
}

// ---------------------------------------------------------------------------------------
// 19.2: who may introspect.

/// A client without `introspect = true` reads its own tokens only; another client's token
/// is `{"active": false}` (RFC 7662 §2.2) whichever way it asks: Basic or body credentials,
/// form or JSON, with any `token_type_hint`, over HTTP/2. The resource server reads all.
#[tokio::test]
async fn only_a_resource_server_reads_other_clients_tokens() {
    let (_up, gw) = start().await;
    let svc = svc_token(&gw).await;
    let (alice_at, alice_rt) = password_tokens(&gw).await;

    let v = introspect(&gw, ("rs", SVC_SECRET), &svc).await;
    assert_eq!((v["active"].as_bool(), v["client_id"].as_str()), (Some(true), Some("svc")));
    let v = introspect(&gw, ("rs", SVC_SECRET), &alice_at).await;
    assert_eq!((v["active"].as_bool(), v["username"].as_str()), (Some(true), Some("alice")));
    // Refresh tokens stay with their client, even for a resource server.
    assert_eq!(introspect(&gw, ("rs", SVC_SECRET), &alice_rt).await, json!({"active": false}));

    // Its own tokens: yes.
    assert_eq!(introspect(&gw, ("webapp", SVC_SECRET), &alice_at).await["active"], true);
    assert_eq!(introspect(&gw, ("svc", SVC_SECRET), &svc).await["active"], true);

    // Another client's: inactive, in every form an attacker might try.
    let inactive = json!({"active": false});
    assert_eq!(introspect(&gw, ("webapp", SVC_SECRET), &svc).await, inactive);
    for hint in ["access_token", "refresh_token", "ACCESS_TOKEN", "bogus"] {
        let (status, v) =
            post_as(&gw, "/oauth/introspect", ("webapp", SVC_SECRET), &[("token", &svc), ("token_type_hint", hint)])
                .await;
        assert_eq!((status, v), (200, inactive.clone()), "hint {hint}");
    }
    let body = [("token", svc.as_str()), ("client_id", "webapp"), ("client_secret", SVC_SECRET)];
    let resp = gw.client().post(gw.url("/oauth/introspect")).form(&body).send().await.unwrap();
    assert_eq!(resp.json::<Value>().await.unwrap(), inactive, "body credentials");
    let resp = gw
        .client()
        .post(gw.url("/oauth/introspect"))
        .json(&json!({"token": svc, "client_id": "webapp", "client_secret": SVC_SECRET}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.json::<Value>().await.unwrap(), inactive, "JSON body");
    let h2 = https_client(&gw.pki.ca_pem, true);
    let resp = h2
        .post(gw.url("/oauth/introspect"))
        .basic_auth("svc", Some(SVC_SECRET))
        .form(&[("token", alice_at.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.json::<Value>().await.unwrap(), inactive, "HTTP/2");
    // The permission follows the config in force.
    gw.rewrite_config(|t| t.replacen("introspect = true\n", "introspect = false\n", 1));
    assert_eq!(introspect(&gw, ("rs", SVC_SECRET), &svc).await, inactive, "permission withdrawn by reload");
}

// ---------------------------------------------------------------------------------------
// 19.8: every 401 of the token, revoke and introspect endpoints carries a challenge.

/// RFC 9110 §15.5.2: also when the credentials came in the body, or none came at all.
#[tokio::test]
async fn every_401_from_token_revoke_and_introspect_carries_www_authenticate() {
    let (_up, gw) = start().await;
    for path in ["/oauth/token", "/oauth/revoke", "/oauth/introspect"] {
        let cases: [(&str, Vec<(&str, &str)>); 4] = [
            ("wrong secret in the body", vec![("client_id", "svc"), ("client_secret", "wrong")]),
            ("unknown client in the body", vec![("client_id", "nobody"), ("client_secret", "x")]),
            ("no credentials", vec![]),
            ("public client", vec![("client_id", "spa")]),
        ];
        for (label, creds) in cases {
            if path != "/oauth/introspect" && label == "public client" {
                continue; // a public client may use the token and revoke endpoints
            }
            let mut form = creds;
            form.push(("grant_type", "client_credentials"));
            form.push(("token", "x"));
            let resp = gw.client().post(gw.url(path)).form(&form).send().await.unwrap();
            let (status, www, v) = refused(resp).await;
            assert_eq!((status, v["error"].as_str()), (401, Some("invalid_client")), "{path}: {label}");
            let www = www.unwrap_or_else(|| panic!("{path}: {label}: no WWW-Authenticate"));
            assert!(www.starts_with("Basic realm="), "{path}: {label}: {www}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// 19.4: tokens of a client acting as its linked user.

/// The test config's "robot" user block, enabled or not.
fn robot_user(enabled: bool) -> String {
    let disabled = if enabled { "" } else { "enabled = false\n" };
    format!("username = \"robot\"\n{disabled}")
}

async fn client_credentials(gw: &TestGateway, client: (&str, &str)) -> (u16, Value) {
    token_request(gw, Some(client), &[("grant_type", "client_credentials")]).await
}

/// A linked-user token says `gty: client_credentials` in the JWT and in introspection (no
/// `username`: no user authorized it); a token the user consented to has no `gty`.
#[tokio::test]
async fn linked_user_tokens_are_marked_and_consented_ones_are_not() {
    let (_up, gw) = start().await;
    let linked = gw.token("linked", OTHER_SECRET, None).await;
    let c = claims(&linked);
    assert_eq!((c["sub"].as_str(), c["gty"].as_str()), (Some("alice"), Some("client_credentials")));
    let v = introspect(&gw, ("rs", SVC_SECRET), &linked).await;
    assert_eq!((v["active"].as_bool(), v["gty"].as_str()), (Some(true), Some("client_credentials")));
    assert!(v.get("username").is_none(), "{v}");

    let (consented, rt) = password_tokens(&gw).await;
    assert!(claims(&consented).get("gty").is_none());
    let v = introspect(&gw, ("rs", SVC_SECRET), &consented).await;
    assert_eq!((v["username"].as_str(), v.get("gty")), (Some("alice"), None));
    let v = introspect(&gw, ("webapp", SVC_SECRET), &rt).await;
    assert_eq!((v["token_type"].as_str(), v["username"].as_str()), (Some("refresh_token"), Some("alice")));
    // A plain client_credentials token is marked too: whatever `sub` is, no user consented.
    assert_eq!(claims(&svc_token(&gw).await)["gty"], "client_credentials");
}

/// No tokens for a client whose linked user is disabled (a removed or unknown one is refused
/// by the config); the outstanding ones stop working; a linked refresh family dies with the
/// user's block.
#[tokio::test]
async fn no_linked_user_tokens_while_the_user_is_not_active() {
    let (_up, gw) = start().await;
    let before = gw.token("linked", OTHER_SECRET, None).await;
    assert_eq!(api_status(&gw, &before).await, 200);

    gw.rewrite_config(|t| t.replacen("username = \"alice\"\n", "username = \"alice\"\nenabled = false\n", 1));
    let (status, v) = client_credentials(&gw, ("linked", OTHER_SECRET)).await;
    assert_eq!((status, v["error"].as_str()), (400, Some("invalid_grant")), "disabled user: {v}");
    assert!(!v["error_description"].as_str().unwrap().contains('"'));
    assert_eq!(api_status(&gw, &before).await, 401, "a disabled user's tokens stop working");

    // A removed linked user: the config naming it is refused (tests/config_check.rs), so
    // the disabled state above is what stays in force.

    // `ccr` acts as "robot" (a [[user]] of the test config).
    let (status, v) = client_credentials(&gw, ("ccr", SVC_SECRET)).await;
    assert_eq!(status, 200, "{v}");
    let (at, rt) = (v["access_token"].as_str().unwrap().to_string(), v["refresh_token"].as_str().unwrap().to_string());
    gw.rewrite_config(|t| t.replacen(&robot_user(true), &robot_user(false), 1));
    let refresh = [("grant_type", "refresh_token"), ("refresh_token", rt.as_str())];
    let (status, _) = token_request(&gw, Some(("ccr", SVC_SECRET)), &refresh).await;
    assert_eq!(status, 400, "refresh while the linked user is disabled");
    gw.rewrite_config(|t| t.replacen(&robot_user(false), &robot_user(true), 1));
    let (status, _) = token_request(&gw, Some(("ccr", SVC_SECRET)), &refresh).await;
    assert_eq!(status, 400, "the family met the block and stays dead");
    assert_eq!(api_status(&gw, &at).await, 401);
}

/// Review 23.7: one holder rule for the proxy path, introspection and the refresh grant.
/// After `ccr`'s linked user moves from robot to alice (both active), robot's tokens stop
/// everywhere: the access token on the proxy path (cached) and in introspection, the
/// refresh token in introspection and at the token endpoint.
#[tokio::test]
async fn a_moved_link_stops_the_old_users_tokens_everywhere() {
    let (_up, gw) = start().await;
    let (status, v) = client_credentials(&gw, ("ccr", SVC_SECRET)).await;
    assert_eq!(status, 200, "{v}");
    let (at, rt) = (v["access_token"].as_str().unwrap().to_string(), v["refresh_token"].as_str().unwrap().to_string());
    assert_eq!(api_status(&gw, &at).await, 200);
    assert_eq!(introspect(&gw, ("ccr", SVC_SECRET), &rt).await["active"], true);
    assert_eq!(introspect(&gw, ("rs", SVC_SECRET), &at).await["active"], true);

    gw.rewrite_config(|t| t.replacen("user = \"robot\"\n", "user = \"alice\"\n", 1));
    assert_eq!(api_status(&gw, &at).await, 401, "robot's cached access token");
    assert_eq!(introspect(&gw, ("rs", SVC_SECRET), &at).await["active"], false);
    assert_eq!(introspect(&gw, ("ccr", SVC_SECRET), &rt).await["active"], false, "robot's refresh token");
    let refresh = [("grant_type", "refresh_token"), ("refresh_token", rt.as_str())];
    let (status, v) = token_request(&gw, Some(("ccr", SVC_SECRET)), &refresh).await;
    assert_eq!((status, v["error"].as_str()), (400, Some("invalid_grant")), "{v}");
    // The client itself works on, now as alice.
    let (status, v) = client_credentials(&gw, ("ccr", SVC_SECRET)).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(api_status(&gw, v["access_token"].as_str().unwrap()).await, 200);
}

// ---------------------------------------------------------------------------------------
// 19.8: client-secret guesses lock out their source, not the client.

/// After `client_failures` wrong secrets from one source, that source gets 429 (even with
/// the right secret, and from elsewhere in its IPv6 /64), while the client calling from
/// another address still authenticates — at all three endpoints that authenticate clients.
#[tokio::test]
async fn failed_secret_guesses_lock_out_the_source_not_the_client() {
    let up = EchoUpstream::start().await;
    let extra = "[proxy]\ntrusted_proxies = [\"127.0.0.1\"]\n\
                 [rate_limit]\nclient_failures = 3\nclient_failures_window = \"1h\"\n";
    let gw = TestGateway::start_with(up.addr, extra).await;
    let from = |ip: &str, secret: &str, path: &str| {
        gw.client()
            .post(gw.url(path))
            .header("x-forwarded-for", ip)
            .basic_auth("svc", Some(secret))
            .form(&[("grant_type", "client_credentials"), ("token", "x")])
    };
    for (attacker, neighbour) in [("203.0.113.7", None), ("2001:db8::7", Some("2001:db8::8"))] {
        for i in 0..3 {
            let status = from(attacker, "guess", "/oauth/token").send().await.unwrap().status();
            assert_eq!(status, 401, "{attacker} guess {i}");
        }
        for path in ["/oauth/token", "/oauth/revoke", "/oauth/introspect"] {
            let status = from(attacker, SVC_SECRET, path).send().await.unwrap().status();
            assert_eq!(status, 429, "{attacker} is locked out at {path}, right secret or not");
            if let Some(n) = neighbour {
                assert_eq!(from(n, SVC_SECRET, path).send().await.unwrap().status(), 429, "{n}: same /64");
            }
            let status = from("198.51.100.1", SVC_SECRET, path).send().await.unwrap().status();
            assert_eq!(status, 200, "the client from its own address at {path}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// 19.8: a client disabled (or its secret rotated) does not get its old tokens back.

/// Disable `svc`, enable it again: its access tokens from before stay refused (cached or
/// not, on the proxy path and in introspection, across a restart), and a refresh token of
/// `webapp` from before its disable no longer redeems; new tokens work at once.
#[tokio::test]
async fn re_enabling_a_client_does_not_revive_its_earlier_tokens() {
    let (_up, gw) = start().await;
    let cached = svc_token(&gw).await;
    let uncached = svc_token(&gw).await;
    assert_eq!(api_status(&gw, &cached).await, 200);
    let (web_at, web_rt) = password_tokens(&gw).await;
    // An authorization code still outstanding at the reset (black-box attack, stop 34: it
    // was exchanged afterwards for a new access token and a new refresh family).
    let code = spa_code(&gw).await;

    let toggle = |id: &str, enabled: bool| {
        let (from, to) = (format!("id = \"{id}\"\n"), format!("id = \"{id}\"\nenabled = false\n"));
        gw.rewrite_config(|t| if enabled { t.replacen(&to, &from, 1) } else { t.replacen(&from, &to, 1) });
    };
    toggle("svc", false);
    toggle("webapp", false);
    toggle("spa", false);
    assert_eq!(api_status(&gw, &cached).await, 401);
    toggle("svc", true);
    toggle("webapp", true);
    toggle("spa", true);
    let (status, v) = exchange_spa_code(&gw, &code).await;
    assert_eq!((status, v["error"].as_str()), (400, Some("invalid_grant")), "a code from before the reset: {v}");
    let (status, v) = exchange_spa_code(&gw, &spa_code(&gw).await).await;
    assert_eq!(status, 200, "a code issued after the reset, even in its second: {v}");
    assert_invalid_token(&gw, "cached before the disable", &cached).await;
    assert_invalid_token(&gw, "never presented before the disable", &uncached).await;
    assert_invalid_token(&gw, "webapp's access token", &web_at).await;
    assert_eq!(introspect(&gw, ("rs", SVC_SECRET), &uncached).await, json!({"active": false}));
    assert_eq!(introspect(&gw, ("webapp", SVC_SECRET), &web_rt).await, json!({"active": false}));
    let refresh = [("grant_type", "refresh_token"), ("refresh_token", web_rt.as_str())];
    let (status, v) = token_request(&gw, Some(("webapp", SVC_SECRET)), &refresh).await;
    assert_eq!((status, v["error"].as_str()), (400, Some("invalid_grant")));
    // New tokens work at once, even in the second of the reset.
    let fresh = svc_token(&gw).await;
    assert_eq!(api_status(&gw, &fresh).await, 200);

    // A restart remembers (the not-before is in the store).
    let gw = gw.restart().await;
    assert_invalid_token(&gw, "after a restart", &uncached).await;
    assert_eq!(api_status(&gw, &fresh).await, 200);
}

async fn exchange_spa_code(gw: &TestGateway, code: &str) -> (u16, Value) {
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", "https://spa.test/cb"),
        ("code_verifier", PKCE_VERIFIER),
        ("client_id", "spa"),
    ];
    token_request(gw, None, &form).await
}

/// `secret_rotation_revokes = true`: a reload that changes `secret_hash` voids the tokens
/// issued before it; without it (the default) they keep working until they expire.
#[tokio::test]
async fn rotating_a_secret_revokes_the_clients_tokens_where_configured() {
    let (_up, gw) = start().await;
    let svc_before = svc_token(&gw).await;
    let rs_before = gw.token("rs", SVC_SECRET, None).await;
    assert_eq!(api_status(&gw, &svc_before).await, 200);
    assert_eq!(api_status(&gw, &rs_before).await, 200);
    let svc_hash = format!("id = \"svc\"\nname = \"Service\"\nsecret_hash = \"{SVC_HASH}\"\n");
    let rs_hash = format!("id = \"rs\"\nsecret_hash = \"{SVC_HASH}\"\n");
    gw.rewrite_config(|t| {
        assert!(t.contains(&svc_hash) && t.contains(&rs_hash));
        t.replacen(&svc_hash, &svc_hash.replace(SVC_HASH, OTHER_HASH), 1).replacen(
            &rs_hash,
            &format!("{}secret_rotation_revokes = true\n", rs_hash.replace(SVC_HASH, OTHER_HASH)),
            1,
        )
    });
    assert_eq!(api_status(&gw, &svc_before).await, 200, "default: tokens outlive a secret rotation");
    assert_invalid_token(&gw, "rotated with secret_rotation_revokes", &rs_before).await;
    let rs_after = gw.token("rs", OTHER_SECRET, None).await;
    assert_eq!(api_status(&gw, &rs_after).await, 200, "the new secret's tokens work at once");
}

/// `introspect = true` on a public client is a config mistake: it could never authenticate.
#[tokio::test]
async fn a_public_client_may_not_be_a_resource_server() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(dir.path());
    let up = EchoUpstream::start().await;
    let public = "[[client]]\nid = \"pubrs\"\ngrants = [\"authorization_code\"]\nscopes = [\"read\"]\n\
                  redirect_uris = [\"https://pub.test/cb\"]\nintrospect = true\n";
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, config_toml(dir.path(), &pki, up.addr, public)).unwrap();
    let Err(err) = portcullis::config::Config::load(&path) else { panic!("a public client may not introspect") };
    let err = err.to_string();
    assert!(err.contains("introspect") && err.contains("gateway.toml:"), "{err}");
}
