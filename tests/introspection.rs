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
