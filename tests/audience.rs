//! Audience per API (RFC 8707 resource indicators, RFC 9700 §2.3): a token asked for one
//! route's audience works there and nowhere else; the default audience keeps working on
//! routes without one; `resource` is checked at /token (every grant, refresh narrowing
//! only) and bound to the code at /authorize.

mod common;

use common::*;
use serde_json::Value;

const A: &str = "https://a.api.test/";
const B: &str = "https://b.api.test/";
/// An audience on the host the tests reach the gateway by, for RFC 9728 metadata.
const C: &str = "https://localhost/c-api";

/// The test gateway with two more routes, each with its own audience.
async fn start() -> (EchoUpstream, TestGateway) {
    let up = EchoUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(dir.path());
    let mut text = config_toml(dir.path(), &pki, up.addr, "");
    text.push_str(&format!(
        "\n[[route]]\nprefix = \"/a-api\"\nupstream = \"http://{0}\"\nscopes = [\"read\"]\naudience = \"{A}\"\n\
         \n[[route]]\nprefix = \"/b-api\"\nupstream = \"http://{0}\"\nscopes = [\"read\"]\naudience = \"{B}\"\n\
         \n[[route]]\nprefix = \"/c-api\"\nupstream = \"http://{0}\"\nscopes = [\"write\"]\naudience = \"{C}\"\n",
        up.addr
    ));
    let gw = TestGateway::start_text(dir, pki, &text).await;
    (up, gw)
}

async fn status(gw: &TestGateway, path: &str, token: &str) -> (u16, Option<String>) {
    let resp = gw.client().get(gw.url(path)).bearer_auth(token).send().await.unwrap();
    let www = resp.headers().get("www-authenticate").map(|v| v.to_str().unwrap().to_string());
    (resp.status().as_u16(), www)
}

fn token_of(v: &Value) -> String {
    v["access_token"].as_str().unwrap_or_else(|| panic!("no token: {v}")).to_string()
}

#[tokio::test]
async fn a_token_for_one_api_works_there_only() {
    let (_up, gw) = start().await;
    let form = [("grant_type", "client_credentials"), ("resource", A)];
    let (st, v) = token_request(&gw, Some(("svc", SVC_SECRET)), &form).await;
    assert_eq!(st, 200, "{v}");
    let a = token_of(&v);
    assert_eq!(claims(&a)["aud"], A);
    assert_eq!(status(&gw, "/a-api/x", &a).await.0, 200);
    for other in ["/b-api/x", "/api/x"] {
        let (st, www) = status(&gw, other, &a).await;
        assert_eq!(st, 401, "{other}");
        assert!(www.unwrap().contains("error=\"invalid_token\""), "{other}");
    }
    // The default: no resource, the top-level audience; routes without one take it.
    let d = svc_token(&gw).await;
    assert_eq!(claims(&d)["aud"], ISSUER);
    assert_eq!(status(&gw, "/api/x", &d).await.0, 200);
    assert_eq!(status(&gw, "/a-api/x", &d).await.0, 401);
    // Naming the default explicitly is the same.
    let form = [("grant_type", "client_credentials"), ("resource", ISSUER)];
    let (st, v) = token_request(&gw, Some(("svc", SVC_SECRET)), &form).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(status(&gw, "/api/x", &token_of(&v)).await.0, 200);
}

#[tokio::test]
async fn resource_must_name_a_served_audience_exactly() {
    let (_up, gw) = start().await;
    for bad in [
        "https://a.api.test",
        "HTTPS://A.API.TEST/",
        "https://a.api.test/#frag",
        "https://a.api.test/%2e",
        "a.api.test/",
        "/a-api",
        "https://evil.test/",
        "https://a.api.test/ ",
        // RFC 8707 §2: an absolute URI; `resource=` is not "no resource" (the default).
        "",
    ] {
        let form = [("grant_type", "client_credentials"), ("resource", bad)];
        let (st, v) = token_request(&gw, Some(("svc", SVC_SECRET)), &form).await;
        assert_eq!((st, v["error"].as_str()), (400, Some("invalid_target")), "{bad}: {v}");
    }
    // More than one resource: refused like any repeated parameter.
    let form = [("grant_type", "client_credentials"), ("resource", A), ("resource", B)];
    let (st, v) = token_request(&gw, Some(("svc", SVC_SECRET)), &form).await;
    assert_eq!((st, v["error"].as_str()), (400, Some("invalid_request")), "{v}");
}

#[tokio::test]
async fn a_refresh_keeps_the_audience_of_its_grant() {
    let (_up, gw) = start().await;
    let form = [("grant_type", "password"), ("username", "alice"), ("password", ALICE_PASSWORD), ("resource", A)];
    let (st, v) = token_request(&gw, Some(("webapp", SVC_SECRET)), &form).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(claims(&token_of(&v))["aud"], A);
    let refresh = v["refresh_token"].as_str().unwrap().to_string();
    // Widening to another audience (or the default) is refused, and spends nothing.
    for other in [B, ISSUER, ""] {
        let form = [("grant_type", "refresh_token"), ("refresh_token", &refresh), ("resource", other)];
        let (st, v) = token_request(&gw, Some(("webapp", SVC_SECRET)), &form).await;
        assert_eq!((st, v["error"].as_str()), (400, Some("invalid_target")), "{other}: {v}");
    }
    let form = [("grant_type", "refresh_token"), ("refresh_token", &refresh)];
    let (st, v) = token_request(&gw, Some(("webapp", SVC_SECRET)), &form).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(claims(&token_of(&v))["aud"], A);
    let next = v["refresh_token"].as_str().unwrap().to_string();
    let form = [("grant_type", "refresh_token"), ("refresh_token", &next), ("resource", A)];
    let (st, v) = token_request(&gw, Some(("webapp", SVC_SECRET)), &form).await;
    assert_eq!(st, 200, "{v}");
    let t = token_of(&v);
    assert_eq!(claims(&t)["aud"], A);
    assert_eq!(status(&gw, "/a-api/x", &t).await.0, 200);
    assert_eq!(status(&gw, "/api/x", &t).await.0, 401);
}

#[tokio::test]
async fn authorize_binds_the_resource_to_the_code() {
    let (_up, gw) = start().await;
    let mut query = bare_spa_query();
    query.push(("resource", A));
    let mut b = Browser::new(&gw);
    let code = login_and_consent(&mut b, &gw, &query).await.location_param("code").unwrap();
    let exchange = |code: String, resource: Option<&'static str>| {
        let gw = &gw;
        async move {
            let mut form = vec![
                ("grant_type", "authorization_code".to_string()),
                ("client_id", "spa".into()),
                ("code", code),
                ("redirect_uri", "https://spa.test/cb".into()),
                ("code_verifier", PKCE_VERIFIER.into()),
            ];
            if let Some(r) = resource {
                form.push(("resource", r.into()));
            }
            let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
            token_request(gw, None, &form).await
        }
    };
    // Another audience at the exchange: refused (the code is spent either way).
    let (st, v) = exchange(code, Some(B)).await;
    assert_eq!((st, v["error"].as_str()), (400, Some("invalid_target")), "{v}");

    let code = login_and_consent(&mut Browser::new(&gw), &gw, &query).await.location_param("code").unwrap();
    let (st, v) = exchange(code, None).await;
    assert_eq!(st, 200, "{v}");
    let t = token_of(&v);
    assert_eq!(claims(&t)["aud"], A);
    assert_eq!(status(&gw, "/a-api/x", &t).await.0, 200);
    assert_eq!(status(&gw, "/b-api/x", &t).await.0, 401);

    // An unknown or empty resource goes back to the client as invalid_target.
    for bad in ["https://evil.test/", ""] {
        let mut query = bare_spa_query();
        query.push(("resource", bad));
        let page = Browser::new(&gw).get(&authorize_url(&gw, &query)).await;
        assert_eq!(page.status, 302, "{bad:?}: {}", page.body);
        assert_eq!(page.location_param("error").as_deref(), Some("invalid_target"), "{bad:?}");
    }
}

#[tokio::test]
async fn protected_resource_metadata_names_the_audience_and_the_issuer() {
    let (_up, gw) = start().await;
    let client = gw.client();
    let doc = get_json(&client, &gw.url("/.well-known/oauth-protected-resource/c-api")).await;
    assert_eq!(doc["resource"], C);
    assert_eq!(doc["authorization_servers"], serde_json::json!([ISSUER]));
    assert_eq!(doc["scopes_supported"], serde_json::json!(["write"]));
    assert_eq!(doc["bearer_methods_supported"], serde_json::json!(["header"]));
    // Another host's resources are not described here (the default is on gateway.test).
    for path in ["/.well-known/oauth-protected-resource", "/.well-known/oauth-protected-resource/a-api"] {
        let resp = client.get(gw.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), 404, "{path}");
    }
    let resp = client.post(gw.url("/.well-known/oauth-protected-resource/c-api")).send().await.unwrap();
    assert_eq!(resp.status(), 405);
}

#[tokio::test]
async fn a_reload_that_changes_a_route_audience_stops_its_old_tokens_there() {
    let (_up, gw) = start().await;
    let form = [("grant_type", "client_credentials"), ("resource", A)];
    let (st, v) = token_request(&gw, Some(("svc", SVC_SECRET)), &form).await;
    assert_eq!(st, 200, "{v}");
    let a = token_of(&v);
    assert_eq!(status(&gw, "/a-api/x", &a).await.0, 200, "cached as valid");
    gw.rewrite_config(|text| text.replace(&format!("audience = \"{A}\""), "audience = \"https://a2.api.test/\""));
    let (st, www) = status(&gw, "/a-api/x", &a).await;
    assert_eq!(st, 401);
    assert!(www.unwrap().contains("invalid_token"));
    // And A is no longer an audience anyone can ask for.
    let (st, v) = token_request(&gw, Some(("svc", SVC_SECRET)), &form).await;
    assert_eq!((st, v["error"].as_str()), (400, Some("invalid_target")), "{v}");
}
