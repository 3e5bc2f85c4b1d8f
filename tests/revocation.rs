//! What stops a token working: RFC 7009 revocation and RFC 7662 introspection, revoked
//! refresh families, disabled or deleted clients and users (cached verdicts included).

mod common;

use aws_lc_rs::signature::Ed25519KeyPair;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::*;
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------
// Configuration changes against cached verdicts.

#[tokio::test]
async fn disabled_clients_cached_token_is_refused_at_once() {
    let (_up, gw) = setup().await;
    let token = svc_token(&gw).await;
    echo_get(&gw, "/api/x", &token).await; // now cached
    let hits = cache_hits(&gw).await;

    gw.rewrite_config(|text| {
        let marker = "default_scopes = [\"read\"]\n";
        assert!(text.contains(marker));
        text.replacen(marker, &format!("{marker}enabled = false\n"), 1)
    });
    let resp = gw.client().get(gw.url("/api/x")).bearer_auth(&token).send().await.unwrap();
    let (status, www, v) = refused(resp).await;
    assert_eq!(status, 401);
    assert!(www.unwrap().contains("error=\"invalid_token\""));
    assert_eq!(v["error"], "invalid_token");
    assert_eq!(cache_hits(&gw).await, hits + 1.0, "the refusal was a cache hit");
    // And on the public route nothing changed.
    assert_eq!(gw.client().get(gw.url("/public")).send().await.unwrap().status(), 200);

    // Enabled again, the token issued before it was disabled stays refused (issue 19.8);
    // a new one works.
    gw.rewrite_config(|text| {
        text.replacen("default_scopes = [\"read\"]\nenabled = false\n", "default_scopes = [\"read\"]\n", 1)
    });
    assert_invalid_token(&gw, "issued before the client was disabled", &token).await;
    echo_get(&gw, "/api/x", &svc_token(&gw).await).await;
}

// ---------------------------------------------------------------------------------------
// Revoked refresh families.

#[tokio::test]
async fn tokens_of_a_revoked_refresh_family_stay_refused_across_a_restart() {
    let up = EchoUpstream::start().await;
    let gw = TestGateway::start(up.addr).await;
    // Issue 19.1: strict reuse detection needs the reuse interval off (default 10 s).
    gw.rewrite_config(|t| t.replacen("id = \"webapp\"\n", "id = \"webapp\"\nrefresh_reuse_interval = \"0s\"\n", 1));
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

/// A client deleted or disabled in the file (written in place, noticed by the watcher): its
/// tokens fail on the very next request, the cached ones (answered from the cache, yet
/// refused: the cache answers to the config in force) and one never presented before; the
/// deleted client gets no new token; other clients' tokens keep working. This merges three
/// tests that each checked one part (proxy.rs, attacks.rs and ops.rs before the regrouping).
#[tokio::test]
async fn a_deleted_or_disabled_clients_tokens_are_refused_at_once_cached_or_not() {
    let (_up, gw) = setup().await;
    let svc = gw.token("svc", SVC_SECRET, None).await;
    let linked = gw.token("linked", OTHER_SECRET, None).await;
    let never_presented = gw.token("linked", OTHER_SECRET, None).await;
    let bystander = gw.token("ccr", SVC_SECRET, None).await;
    for t in [&svc, &linked, &bystander] {
        assert_eq!(api_status(&gw, t).await, 200);
        assert_eq!(api_status(&gw, t).await, 200);
    }
    let hits_before = gw.gateway.validator.stats().await.hits;
    assert!(hits_before >= 3, "the second uses were cache hits");

    // Plain in-place write this time (truncate + write), as `echo >` or many editors do.
    let text = std::fs::read_to_string(&gw.config_path).unwrap();
    let start = text.find("[[client]]\nid = \"linked\"").unwrap();
    let end = start + text[start..].find("user = \"alice\"\n").unwrap() + "user = \"alice\"\n".len();
    let text =
        format!("{}{}", &text[..start], &text[end..]).replacen("id = \"svc\"\n", "id = \"svc\"\nenabled = false\n", 1);
    assert!(!text.contains("\"linked\""));
    std::fs::write(&gw.config_path, text).unwrap();
    wait_until("svc disabled and linked deleted", || async {
        let rt = gw.gateway.runtime();
        rt.config.clients.get("svc").is_some_and(|c| !c.enabled) && !rt.config.clients.contains_key("linked")
    })
    .await;
    assert_invalid_token(&gw, "disabled client, cached", &svc).await;
    assert_invalid_token(&gw, "deleted client, cached", &linked).await;
    assert!(gw.gateway.validator.stats().await.hits >= hits_before + 2, "answered from the cache");
    assert_invalid_token(&gw, "deleted client, first use", &never_presented).await;
    let (status, v) = token_request(&gw, Some(("linked", OTHER_SECRET)), &[("grant_type", "client_credentials")]).await;
    assert_eq!((status, v["error"].as_str()), (401, Some("invalid_client")));
    // Other clients' tokens are unaffected.
    echo_get(&gw, "/api/x", &bystander).await;
}

async fn post(gw: &TestGateway, path: &str, basic: Option<(&str, &str)>, form: &[(&str, &str)]) -> (u16, Value) {
    let mut req = gw.client().post(gw.url(path)).form(form);
    if let Some((id, secret)) = basic {
        req = req.basic_auth(id, Some(secret));
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    if status == 200 {
        assert_eq!(resp.headers()["cache-control"], "no-store", "{path}");
    }
    let text = resp.text().await.unwrap();
    (status, if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap() })
}

#[tokio::test]
async fn a_revoked_access_token_fails_on_the_very_next_request_although_cached() {
    let (_up, gw) = setup().await;
    let token = gw.token("svc", SVC_SECRET, None).await;
    assert_eq!(api_status(&gw, &token).await, 200);
    let hits = cache_hits(&gw).await;
    assert_eq!(api_status(&gw, &token).await, 200, "now served from the cache");
    assert_eq!(cache_hits(&gw).await, hits + 1.0, "the second use was a cache hit");

    let (status, body) = post(&gw, "/oauth/revoke", Some(("svc", SVC_SECRET)), &[("token", &token)]).await;
    assert_eq!((status, body), (200, Value::Null));
    assert_eq!(api_status(&gw, &token).await, 401);
    // Revoking again, or something unknown, is still 200 (RFC 7009 §2.2).
    for t in [token.as_str(), "not-a-token", "a.b.c"] {
        let (status, _) = post(&gw, "/oauth/revoke", Some(("svc", SVC_SECRET)), &[("token", t)]).await;
        assert_eq!(status, 200, "{t}");
    }
    // The revocation is in the store: a restart does not bring the token back.
    let gw = gw.restart().await;
    assert_eq!(api_status(&gw, &token).await, 401);
}

#[tokio::test]
async fn revoking_a_refresh_token_revokes_its_family_and_access_tokens() {
    let (_up, gw) = setup().await;
    let (at0, rt0) = password_tokens(&gw).await;
    let form = [("grant_type", "refresh_token"), ("refresh_token", rt0.as_str())];
    let (_, v) = post(&gw, "/oauth/token", Some(("webapp", SVC_SECRET)), &form).await;
    let (at1, rt1) =
        (v["access_token"].as_str().unwrap().to_string(), v["refresh_token"].as_str().unwrap().to_string());
    assert_eq!(api_status(&gw, &at0).await, 200);
    assert_eq!(api_status(&gw, &at1).await, 200);

    let form = [("token", rt1.as_str()), ("token_type_hint", "refresh_token")];
    let (status, _) = post(&gw, "/oauth/revoke", Some(("webapp", SVC_SECRET)), &form).await;
    assert_eq!(status, 200);
    assert_eq!(api_status(&gw, &at0).await, 401);
    assert_eq!(api_status(&gw, &at1).await, 401);
    let form = [("grant_type", "refresh_token"), ("refresh_token", rt1.as_str())];
    let (status, v) = post(&gw, "/oauth/token", Some(("webapp", SVC_SECRET)), &form).await;
    assert_eq!((status, v["error"].as_str()), (400, Some("invalid_grant")));
}

#[tokio::test]
async fn a_client_may_revoke_only_its_own_tokens_and_must_authenticate() {
    let (_up, gw) = setup().await;
    let token = gw.token("svc", SVC_SECRET, None).await;
    let (_, rt) = password_tokens(&gw).await;
    for t in [&token, &rt] {
        let (status, v) = post(&gw, "/oauth/revoke", Some(("linked", OTHER_SECRET)), &[("token", t)]).await;
        assert_eq!((status, v["error"].as_str()), (400, Some("invalid_request")), "{v}");
    }
    assert_eq!(api_status(&gw, &token).await, 200, "still valid");
    let (status, v) = post(&gw, "/oauth/revoke", None, &[("token", &token)]).await;
    assert_eq!((status, v["error"].as_str()), (401, Some("invalid_client")));
    let (status, v) = post(&gw, "/oauth/revoke", Some(("svc", "wrong")), &[("token", &token)]).await;
    assert_eq!((status, v["error"].as_str()), (401, Some("invalid_client")));
    let (status, v) = post(&gw, "/oauth/revoke", Some(("svc", SVC_SECRET)), &[]).await;
    assert_eq!((status, v["error"].as_str()), (400, Some("invalid_request")));
    assert_eq!(api_status(&gw, &token).await, 200);
}

#[tokio::test]
async fn introspection_of_valid_expired_revoked_and_foreign_tokens() {
    let (_up, gw) = setup().await;
    // Issue 19.2: reading another client's tokens needs the resource-server flag.
    gw.rewrite_config(|t| t.replacen("id = \"svc\"\n", "id = \"svc\"\nintrospect = true\n", 1));
    let rs = Some(("svc", SVC_SECRET));
    let token = gw.token("linked", OTHER_SECRET, None).await;
    let (status, v) = post(&gw, "/oauth/introspect", rs, &[("token", &token)]).await;
    assert_eq!(status, 200);
    assert_eq!(v["active"], true);
    assert_eq!(v["token_type"], "Bearer");
    assert_eq!(v["client_id"], "linked");
    assert_eq!(v["sub"], "alice");
    // Issue 19.4: a linked-user token was authorized by no user: `gty`, not `username`.
    assert_eq!(v["gty"], "client_credentials");
    assert!(v.get("username").is_none(), "{v}");
    assert_eq!(v["scope"], "read");
    assert_eq!(v["iss"], ISSUER);
    assert_eq!(v["aud"], ISSUER);
    assert!(v["exp"].as_u64().unwrap() > v["iat"].as_u64().unwrap());
    assert!(v["jti"].as_str().unwrap().len() >= 16);

    let now = portcullis::tokens::now_secs();
    let expired = signed_with(
        &gw,
        good_header(),
        json!({"iss": ISSUER, "aud": ISSUER, "sub": "svc", "client_id": "svc", "scope": "read",
               "jti": "expired-1", "iat": now - 7200, "exp": now - 3600}),
    );
    let foreign_key = Ed25519KeyPair::generate().unwrap();
    let mut foreign = gw.token("svc", SVC_SECRET, None).await;
    let sig_at = foreign.rfind('.').unwrap();
    foreign.truncate(sig_at + 1);
    foreign.push_str(&URL_SAFE_NO_PAD.encode(foreign_key.sign(foreign.as_bytes()).as_ref()));
    for t in [expired.as_str(), foreign.as_str(), "garbage", "a.b.c"] {
        let (status, v) = post(&gw, "/oauth/introspect", rs, &[("token", t)]).await;
        assert_eq!((status, v), (200, json!({"active": false})), "{t}");
    }

    post(&gw, "/oauth/revoke", Some(("linked", OTHER_SECRET)), &[("token", &token)]).await;
    let (_, v) = post(&gw, "/oauth/introspect", rs, &[("token", &token)]).await;
    assert_eq!(v, json!({"active": false}), "revoked");

    // A disabled client's tokens are inactive.
    let t2 = gw.token("svc", SVC_SECRET, None).await;
    gw.rewrite_config(|t| t.replacen("id = \"svc\"\n", "id = \"svc\"\nenabled = false\n", 1));
    let (_, v) = post(&gw, "/oauth/introspect", Some(("webapp", SVC_SECRET)), &[("token", &t2)]).await;
    assert_eq!(v, json!({"active": false}));
}

#[tokio::test]
async fn refresh_tokens_are_introspectable_by_their_client_only_and_public_clients_may_not_introspect() {
    let (_up, gw) = setup().await;
    let (_, rt) = password_tokens(&gw).await;
    let (status, v) = post(&gw, "/oauth/introspect", Some(("webapp", SVC_SECRET)), &[("token", &rt)]).await;
    assert_eq!(status, 200);
    assert_eq!(v["active"], true);
    assert_eq!(v["token_type"], "refresh_token");
    assert_eq!(v["client_id"], "webapp");
    assert_eq!(v["sub"], "alice");
    let (_, v) = post(&gw, "/oauth/introspect", Some(("svc", SVC_SECRET)), &[("token", &rt)]).await;
    assert_eq!(v, json!({"active": false}));
    // Once rotated away it is no longer active (presenting it would revoke its family).
    let (status, _) = post(
        &gw,
        "/oauth/token",
        Some(("webapp", SVC_SECRET)),
        &[("grant_type", "refresh_token"), ("refresh_token", &rt)],
    )
    .await;
    assert_eq!(status, 200);
    let (_, v) = post(&gw, "/oauth/introspect", Some(("webapp", SVC_SECRET)), &[("token", &rt)]).await;
    assert_eq!(v, json!({"active": false}), "spent");
    let (status, v) = post(&gw, "/oauth/introspect", None, &[("token", &rt), ("client_id", "spa")]).await;
    assert_eq!((status, v["error"].as_str()), (401, Some("invalid_client")));
}

#[tokio::test]
async fn revocations_are_counted_and_metadata_lists_the_endpoints() {
    let (_up, gw) = setup().await;
    let token = gw.token("svc", SVC_SECRET, None).await;
    post(&gw, "/oauth/revoke", Some(("svc", SVC_SECRET)), &[("token", &token)]).await;
    let (_, rt) = password_tokens(&gw).await;
    // The family's one access token is revoked with it: 2 access tokens in all.
    post(&gw, "/oauth/revoke", Some(("webapp", SVC_SECRET)), &[("token", &rt)]).await;
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let metrics = http.get(gw.admin_url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(
        metrics.contains("portcullis_revocations_total{kind=\"access_token\",reason=\"revoke_endpoint\"} 2"),
        "{metrics}"
    );
    assert!(metrics.contains("portcullis_revocations_total{kind=\"refresh_family\",reason=\"revoke_endpoint\"} 1"));
    let ready = http.get(gw.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);

    let d: Value =
        gw.client().get(gw.url("/.well-known/oauth-authorization-server")).send().await.unwrap().json().await.unwrap();
    assert_eq!(d["revocation_endpoint"], format!("{ISSUER}/oauth/revoke"));
    assert_eq!(d["introspection_endpoint"], format!("{ISSUER}/oauth/introspect"));
}

async fn exchange(gw: &TestGateway, code: &str) -> (u16, Value) {
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code),
        ("client_id", "spa"),
        ("redirect_uri", "https://spa.test/cb"),
        ("code_verifier", PKCE_VERIFIER),
    ];
    post(gw, "/oauth/token", None, &form).await
}

/// Issue 11: a disabled or deleted user's tokens stop working on the next request, cached
/// or not, introspect inactive, and neither their refresh tokens nor their codes redeem.
#[tokio::test]
async fn a_disabled_or_deleted_users_tokens_fail_at_once_and_their_grants_die() {
    let (_up, gw) = setup().await;
    // Issue 19.2: reading another client's tokens needs the resource-server flag.
    gw.rewrite_config(|t| t.replacen("id = \"svc\"\n", "id = \"svc\"\nintrospect = true\n", 1));
    let rs = Some(("svc", SVC_SECRET));
    let (at, rt) = password_tokens(&gw).await;
    let code = spa_code(&gw).await;
    assert_eq!(api_status(&gw, &at).await, 200);
    let hits = cache_hits(&gw).await;
    assert_eq!(api_status(&gw, &at).await, 200, "now served from the cache");
    assert_eq!(cache_hits(&gw).await, hits + 1.0, "the second use was a cache hit");
    let uncached = password_tokens(&gw).await.0;

    gw.rewrite_config(|t| t.replacen("username = \"alice\"\n", "username = \"alice\"\nenabled = false\n", 1));
    assert_eq!(api_status(&gw, &at).await, 401, "cached token of a disabled user");
    assert_eq!(api_status(&gw, &uncached).await, 401, "uncached token of a disabled user");
    let (_, v) = post(&gw, "/oauth/introspect", rs, &[("token", &at)]).await;
    assert_eq!(v, json!({"active": false}), "access token of a disabled user");
    let (_, v) = post(&gw, "/oauth/introspect", Some(("webapp", SVC_SECRET)), &[("token", &rt)]).await;
    assert_eq!(v, json!({"active": false}), "refresh token of a disabled user");
    let (status, v) = exchange(&gw, &code).await;
    assert_eq!((status, v["error"].as_str()), (400, Some("invalid_grant")), "code of a disabled user: {v}");
    let refresh = [("grant_type", "refresh_token"), ("refresh_token", rt.as_str())];
    let (status, v) = post(&gw, "/oauth/token", Some(("webapp", SVC_SECRET)), &refresh).await;
    assert_eq!((status, v["error"].as_str()), (400, Some("invalid_grant")), "refresh of a disabled user: {v}");

    // The rule follows the config: enabled again, the user's other tokens work again...
    gw.rewrite_config(|t| t.replacen("username = \"alice\"\nenabled = false\n", "username = \"alice\"\n", 1));
    assert_eq!(api_status(&gw, &uncached).await, 200);
    // ...but a refresh family presented while its user was disabled stays dead, with the
    // access tokens it issued.
    let (status, v) = post(&gw, "/oauth/token", Some(("webapp", SVC_SECRET)), &refresh).await;
    assert_eq!((status, v["error"].as_str()), (400, Some("invalid_grant")), "refresh family after re-enabling: {v}");
    assert_eq!(api_status(&gw, &at).await, 401, "access token of a family that died");
    // ...and deleted, they fail the same way.
    let code = spa_code(&gw).await;
    let block = format!("[[user]]\nusername = \"alice\"\npassword_hash = \"{ALICE_HASH}\"\ndisplay_name = \"Alice\"\n");
    gw.rewrite_config(|t| {
        assert!(t.contains(&block));
        // A client may not name a user that does not exist (issue 19 point 4): unlink it too.
        t.replacen(&block, "", 1).replacen("user = \"alice\"\n", "", 1)
    });
    assert_eq!(api_status(&gw, &uncached).await, 401, "cached token of a deleted user");
    let (_, v) = post(&gw, "/oauth/introspect", rs, &[("token", &uncached)]).await;
    assert_eq!(v, json!({"active": false}), "access token of a deleted user");
    let (status, v) = exchange(&gw, &code).await;
    assert_eq!((status, v["error"].as_str()), (400, Some("invalid_grant")), "code of a deleted user: {v}");
    let (status, v) = post(&gw, "/oauth/token", Some(("webapp", SVC_SECRET)), &refresh).await;
    assert_eq!((status, v["error"].as_str()), (400, Some("invalid_grant")), "refresh of a deleted user: {v}");
    // Client-only tokens are untouched.
    let svc = gw.token("svc", SVC_SECRET, None).await;
    assert_eq!(api_status(&gw, &svc).await, 200);
}

/// Issue 11: revocation and introspection authenticate clients like the token endpoint,
/// so a flood from one source is throttled like it (429 with Retry-After).
#[tokio::test]
async fn revoke_and_introspect_are_rate_limited_per_source_ip() {
    let up = EchoUpstream::start().await;
    let extra = "[rate_limit]\nip_burst = 5\nip_rate = 1\nip_window = \"1h\"\n";
    let gw = TestGateway::start_with(up.addr, extra).await;
    for path in ["/oauth/revoke", "/oauth/introspect"] {
        let mut throttled = None;
        for i in 0..8 {
            let resp = gw
                .client()
                .post(gw.url(path))
                .basic_auth("svc", Some(SVC_SECRET))
                .form(&[("token", "not-a-token")])
                .send()
                .await
                .unwrap();
            if resp.status() == 429 {
                let retry = resp.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
                let v: Value = resp.json().await.unwrap();
                assert_eq!(v["error"], "slow_down", "{path}");
                throttled = Some((i, retry));
                break;
            }
            assert_eq!(resp.status(), 200, "{path} request {i}");
        }
        let (i, retry) = throttled.unwrap_or_else(|| panic!("{path}: never throttled"));
        assert_eq!(i, 5, "{path}: the burst is 5");
        let secs: u64 = retry.unwrap_or_else(|| panic!("{path}: no Retry-After")).parse().unwrap();
        assert!((1..=3600).contains(&secs), "{path}: Retry-After {secs}");
    }
}
