//! Stock OAuth clients work unmodified against the gateway: the Rust `oauth2` crate, and
//! Python's authlib and requests-oauthlib.

mod common;

use common::*;
use oauth2::basic::BasicClient;
use oauth2::{
    AuthType, AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken, HttpRequest, HttpResponse,
    IntrospectionUrl, PkceCodeChallenge, RedirectUrl, ResourceOwnerPassword, ResourceOwnerUsername, RevocationUrl,
    Scope, StandardRevocableToken, TokenIntrospectionResponse, TokenResponse, TokenUrl,
};
use std::process::Command;

/// The library's HTTP hook, served by reqwest with the test CA.
fn transport(
    gw: &TestGateway,
) -> impl Fn(HttpRequest) -> std::pin::Pin<Box<dyn Future<Output = Result<HttpResponse, reqwest::Error>>>> {
    let http = gw.client();
    move |req: HttpRequest| {
        let http = http.clone();
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let resp =
                http.request(parts.method, parts.uri.to_string()).headers(parts.headers).body(body).send().await?;
            let mut out = http::Response::new(Vec::new());
            *out.status_mut() = resp.status();
            *out.headers_mut() = resp.headers().clone();
            *out.body_mut() = resp.bytes().await?.to_vec();
            Ok(out)
        })
    }
}

async fn api(gw: &TestGateway, token: &str) -> u16 {
    gw.client().get(gw.url("/api/x")).bearer_auth(token).send().await.unwrap().status().as_u16()
}

#[tokio::test]
async fn oauth2_crate_client_credentials_revocation_and_introspection() {
    let up = EchoUpstream::start().await;
    let gw = TestGateway::start(up.addr).await;
    let http = transport(&gw);
    let client = BasicClient::new(ClientId::new("svc".into()))
        .set_client_secret(ClientSecret::new(SVC_SECRET.into()))
        .set_token_uri(TokenUrl::new(gw.url("/oauth/token")).unwrap())
        .set_revocation_url(RevocationUrl::new(gw.url("/oauth/revoke")).unwrap())
        .set_introspection_url(IntrospectionUrl::new(gw.url("/oauth/introspect")).unwrap());

    let token = client
        .exchange_client_credentials()
        .add_scope(Scope::new("read".into()))
        .add_scope(Scope::new("write".into()))
        .request_async(&http)
        .await
        .unwrap();
    assert_eq!(token.scopes().unwrap().iter().map(|s| s.as_str()).collect::<Vec<_>>(), ["read", "write"]);
    assert!(token.expires_in().unwrap().as_secs() > 3500);
    let at = token.access_token().secret().clone();
    assert_eq!(api(&gw, &at).await, 200);

    let info = client.introspect(token.access_token()).request_async(&http).await.unwrap();
    assert!(info.active());
    assert_eq!(info.client_id().unwrap().as_str(), "svc");

    client
        .revoke_token(StandardRevocableToken::AccessToken(token.access_token().clone()))
        .unwrap()
        .request_async(&http)
        .await
        .unwrap();
    assert_eq!(api(&gw, &at).await, 401);
    let info = client.introspect(token.access_token()).request_async(&http).await.unwrap();
    assert!(!info.active());

    // The library's error type understands our error responses.
    let bad = BasicClient::new(ClientId::new("svc".into()))
        .set_client_secret(ClientSecret::new("wrong".into()))
        .set_token_uri(TokenUrl::new(gw.url("/oauth/token")).unwrap());
    let err = bad.exchange_client_credentials().request_async(&http).await.unwrap_err();
    assert!(format!("{err:?}").contains("error: invalid_client"), "{err:?}");
}

#[tokio::test]
async fn oauth2_crate_password_grant_in_the_body_and_refresh() {
    let up = EchoUpstream::start().await;
    let gw = TestGateway::start(up.addr).await;
    // Issue 19.1: strict reuse detection needs the reuse interval off (default 10 s).
    gw.rewrite_config(|t| t.replacen("id = \"webapp\"\n", "id = \"webapp\"\nrefresh_reuse_interval = \"0s\"\n", 1));
    let http = transport(&gw);
    let client = BasicClient::new(ClientId::new("webapp".into()))
        .set_client_secret(ClientSecret::new(SVC_SECRET.into()))
        .set_auth_type(AuthType::RequestBody)
        .set_token_uri(TokenUrl::new(gw.url("/oauth/token")).unwrap());
    let token = client
        .exchange_password(
            &ResourceOwnerUsername::new("alice".into()),
            &ResourceOwnerPassword::new(ALICE_PASSWORD.into()),
        )
        .request_async(&http)
        .await
        .unwrap();
    let refresh = token.refresh_token().unwrap().clone();
    let next = client.exchange_refresh_token(&refresh).request_async(&http).await.unwrap();
    assert_ne!(next.refresh_token().unwrap().secret(), refresh.secret());
    assert_eq!(api(&gw, next.access_token().secret()).await, 200);
    let reused = client.exchange_refresh_token(&refresh).request_async(&http).await;
    assert!(format!("{:?}", reused.unwrap_err()).contains("error: invalid_grant"));
}

#[tokio::test]
async fn oauth2_crate_authorization_code_with_pkce_as_a_public_client() {
    let up = EchoUpstream::start().await;
    let gw = TestGateway::start(up.addr).await;
    let http = transport(&gw);
    let client = BasicClient::new(ClientId::new("spa".into()))
        .set_auth_uri(AuthUrl::new(gw.url("/oauth/authorize")).unwrap())
        .set_token_uri(TokenUrl::new(gw.url("/oauth/token")).unwrap())
        .set_redirect_uri(RedirectUrl::new("https://spa.test/cb".into()).unwrap());
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let (url, csrf) = client
        .authorize_url(CsrfToken::new_random)
        .add_scope(Scope::new("read".into()))
        .add_scope(Scope::new("profile".into()))
        .set_pkce_challenge(challenge)
        .url();

    let mut browser = Browser::new(&gw);
    let login = browser.get(url.as_str()).await;
    assert_eq!(login.status, 200, "{}", login.body);
    let consent = browser.submit(&gw, &login, &[("username", "alice"), ("password", ALICE_PASSWORD)]).await;
    let done = browser.submit(&gw, &consent, &[("decision", "allow")]).await;
    assert_eq!(done.location_param("state").as_deref(), Some(csrf.secret().as_str()));
    let code = done.location_param("code").unwrap();

    let token = client
        .exchange_code(AuthorizationCode::new(code))
        .set_pkce_verifier(verifier)
        .request_async(&http)
        .await
        .unwrap();
    assert_eq!(token.scopes().unwrap().len(), 2);
    assert!(token.refresh_token().is_some());
    assert_eq!(api(&gw, token.access_token().secret()).await, 200);
}

fn python_ready() -> bool {
    Command::new("python3")
        .args(["-c", "import authlib, requests, requests_oauthlib"])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[tokio::test]
async fn authlib_and_requests_oauthlib_work_unmodified() {
    if !python_ready() {
        skip(
            "clients::authlib_and_requests_oauthlib_work_unmodified",
            "python3 with authlib and requests-oauthlib not found",
        );
        return;
    }
    let up = EchoUpstream::start().await;
    // A private_key_jwt client (RFC 7523) with an RSA key, authlib's default algorithm.
    let keys = tempfile::tempdir().unwrap();
    let key = IdpKey::rs256("authlib");
    let (public, private) = (keys.path().join("pkjwt.pem"), keys.path().join("pkjwt-private.pem"));
    std::fs::write(&public, key.public_pem()).unwrap();
    std::fs::write(&private, key.private_pem()).unwrap();
    let extra = format!(
        "[[client]]\nid = \"pkjwt\"\ntoken_endpoint_auth_method = \"private_key_jwt\"\npublic_key = \"{}\"\n\
         grants = [\"client_credentials\"]\nscopes = [\"read\"]\n\
         # authlib signs assertions for an hour.\nmax_assertion_lifetime = \"1h\"\n",
        public.display()
    );
    let gw = TestGateway::start_with(up.addr, &extra).await;
    let ca = gw.dir.path().join("ca.pem");
    std::fs::write(&ca, &gw.pki.ca_pem).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/clients.py");
    let base = gw.url("");
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .arg(script)
            .arg(base)
            .arg(&ca)
            .arg(&private)
            .env("REQUESTS_CA_BUNDLE", &ca)
            .env("PYTHONUNBUFFERED", "1")
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "python clients failed:\n{stdout}\n{stderr}");
    assert_eq!(stdout.lines().filter(|l| l.starts_with("ok ")).count(), 14, "{stdout}");
}
