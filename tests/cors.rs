//! CORS for browser clients on another origin: the token and revocation endpoints and the
//! discovery documents answer the origins a client lists in `cors_origins`, echoing the
//! one origin exactly; anything else gets no CORS header (the browser refuses).

mod common;

use common::*;

const SPA: &str = "https://spa.example";
const DEV: &str = "http://localhost:3000";

async fn start() -> (EchoUpstream, TestGateway) {
    let up = EchoUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(dir.path());
    let mut text = config_toml(dir.path(), &pki, up.addr, "");
    text.push_str(&format!(
        "\n[[client]]\nid = \"browser\"\ngrants = [\"authorization_code\", \"refresh_token\"]\nscopes = [\"read\"]\n\
         redirect_uris = [\"https://spa.example/cb\"]\ncors_origins = [\"{SPA}\", \"{DEV}\"]\n"
    ));
    let gw = TestGateway::start_text(dir, pki, &text).await;
    (up, gw)
}

fn header(resp: &reqwest::Response, name: &str) -> Option<String> {
    let all: Vec<_> = resp.headers().get_all(name).iter().map(|v| v.to_str().unwrap().to_string()).collect();
    (!all.is_empty()).then(|| all.join(", "))
}

async fn preflight(client: &reqwest::Client, url: &str, origins: &[&str]) -> reqwest::Response {
    let mut req = client
        .request(reqwest::Method::OPTIONS, url)
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "authorization, content-type");
    for o in origins {
        req = req.header("origin", *o);
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn a_listed_origin_gets_a_preflight_answer_with_its_own_origin() {
    let (_up, gw) = start().await;
    for client in [gw.client(), https_client(&gw.pki.ca_pem, true)] {
        for path in ["/oauth/token", "/oauth/revoke"] {
            for origin in [SPA, DEV] {
                let resp = preflight(&client, &gw.url(path), &[origin]).await;
                assert_eq!(resp.status(), 204, "{path} {origin}");
                assert_eq!(header(&resp, "access-control-allow-origin").as_deref(), Some(origin));
                assert_eq!(header(&resp, "access-control-allow-methods").as_deref(), Some("POST"));
                let allowed = header(&resp, "access-control-allow-headers").unwrap();
                assert!(allowed.contains("authorization") && allowed.contains("content-type"), "{allowed}");
                assert!(header(&resp, "access-control-max-age").is_some());
                assert!(header(&resp, "vary").unwrap().contains("Origin"));
                assert_eq!(header(&resp, "access-control-allow-credentials"), None);
            }
        }
    }
}

#[tokio::test]
async fn an_unlisted_origin_gets_no_cors_header() {
    let (_up, gw) = start().await;
    let client = gw.client();
    for origins in [
        vec!["https://evil.example"],
        vec!["https://spa.example.evil.com"],
        vec!["https://evil.com/https://spa.example"],
        vec!["https://SPA.example"],
        vec!["https://spa.example/"],
        vec!["https://spa.example:443"],
        vec!["http://spa.example"],
        vec!["null"],
        vec!["*"],
        vec![SPA, "https://evil.example"],
        vec![],
    ] {
        let resp = preflight(&client, &gw.url("/oauth/token"), &origins).await;
        assert_eq!(resp.status(), 204, "{origins:?}");
        assert_eq!(header(&resp, "access-control-allow-origin"), None, "{origins:?}");
        assert_eq!(header(&resp, "access-control-allow-methods"), None, "{origins:?}");
    }
    // Introspection is for servers, not browsers: no preflight answer.
    let resp = preflight(&client, &gw.url("/oauth/introspect"), &[SPA]).await;
    assert_eq!(resp.status(), 405);
    assert_eq!(header(&resp, "access-control-allow-origin"), None);
}

#[tokio::test]
async fn token_answers_carry_the_origin_of_their_own_client_only() {
    let (_up, gw) = start().await;
    let client = gw.client();
    // The SPA's own request, refused or not, is readable by its page.
    let resp = client
        .post(gw.url("/oauth/token"))
        .header("origin", SPA)
        .form(&[("grant_type", "refresh_token"), ("client_id", "browser"), ("refresh_token", "nope")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(header(&resp, "access-control-allow-origin").as_deref(), Some(SPA));
    assert!(header(&resp, "vary").unwrap().contains("Origin"));
    // Another client's tokens are not handed to this origin's scripts.
    let resp = client
        .post(gw.url("/oauth/token"))
        .header("origin", SPA)
        .basic_auth("svc", Some(SVC_SECRET))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "access-control-allow-origin"), None);
    // Nor to an unlisted origin.
    let resp = client
        .post(gw.url("/oauth/token"))
        .header("origin", "https://evil.example")
        .form(&[("grant_type", "refresh_token"), ("client_id", "browser"), ("refresh_token", "nope")])
        .send()
        .await
        .unwrap();
    assert_eq!(header(&resp, "access-control-allow-origin"), None);
}

#[tokio::test]
async fn discovery_documents_answer_any_listed_origin() {
    let (_up, gw) = start().await;
    let client = gw.client();
    for path in ["/.well-known/oauth-authorization-server", "/.well-known/jwks.json"] {
        for origin in [SPA, DEV] {
            let resp = client.get(gw.url(path)).header("origin", origin).send().await.unwrap();
            assert_eq!(resp.status(), 200, "{path}");
            assert_eq!(header(&resp, "access-control-allow-origin").as_deref(), Some(origin), "{path}");
            assert!(header(&resp, "vary").unwrap().contains("Origin"), "{path}");
        }
        let resp = client.get(gw.url(path)).header("origin", "https://evil.example").send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(header(&resp, "access-control-allow-origin"), None, "{path}");
        // Cacheable, so the answer must say it depends on Origin even without one.
        let resp = client.get(gw.url(path)).send().await.unwrap();
        assert!(header(&resp, "vary").unwrap().contains("Origin"), "{path}");
        let mut req = client.request(reqwest::Method::OPTIONS, gw.url(path)).header("origin", DEV);
        req = req.header("access-control-request-method", "GET");
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 204);
        assert_eq!(header(&resp, "access-control-allow-origin").as_deref(), Some(DEV));
    }
}

#[tokio::test]
async fn a_bad_origin_in_the_config_is_refused_with_its_line() {
    for bad in ["https://spa.example/path", "spa.example", "*", "null", "ftp://spa.example", "https://u@spa.example"] {
        let text = format!(
            "issuer = \"https://gw.test\"\n[[listener]]\naddress = \"127.0.0.1:0\"\ntls = false\n\
             [[key]]\nid = \"k\"\nfile = \"/nonexistent/k.pem\"\n\
             [[client]]\nid = \"b\"\ngrants = [\"authorization_code\"]\nscopes = [\"read\"]\n\
             redirect_uris = [\"https://spa.example/cb\"]\ncors_origins = [\"{bad}\"]\n"
        );
        let e = portcullis::config::Config::parse(&text, std::path::Path::new("t.toml")).unwrap_err().to_string();
        assert!(e.contains("t.toml:") && e.contains("cors_origins"), "{bad}: {e}");
    }
}

/// The gateway answers no CORS for the APIs behind routes, and a preflight on a protected
/// route is 401 (it carries no token). The documented way out: a public route on the same
/// prefix for `OPTIONS` alone, so the upstream answers the preflight; every other method
/// still needs a token.
#[tokio::test]
async fn a_public_options_route_lets_the_upstream_answer_preflights_only() {
    let up = EchoUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(dir.path());
    let mut text = config_toml(dir.path(), &pki, up.addr, "");
    text.push_str(&format!(
        "\n[[route]]\nprefix = \"/orders\"\nupstream = \"http://{0}\"\nscopes = [\"read\"]\n\
         \n[[route]]\nprefix = \"/orders\"\nupstream = \"http://{0}\"\npublic = true\nmethods = [\"OPTIONS\"]\n",
        up.addr
    ));
    let gw = TestGateway::start_text(dir, pki, &text).await;
    for client in [gw.client(), https_client(&gw.pki.ca_pem, true)] {
        let resp = preflight(&client, &gw.url("/orders/1"), &[SPA]).await;
        assert_eq!(resp.status(), 200, "the upstream answers the preflight");
        let resp = preflight(&client, &gw.url("/api/x"), &[SPA]).await;
        assert_eq!(resp.status(), 401, "a protected route without the OPTIONS route");
        assert_eq!(header(&resp, "access-control-allow-origin"), None);
        for method in [reqwest::Method::GET, reqwest::Method::POST, reqwest::Method::DELETE] {
            let resp = client.request(method.clone(), gw.url("/orders/1")).header("origin", SPA).send().await.unwrap();
            assert_eq!(resp.status(), 401, "{method}");
        }
        let token = svc_token(&gw).await;
        let resp = client.get(gw.url("/orders/1")).bearer_auth(&token).send().await.unwrap();
        assert_eq!(resp.status(), 200);
    }
}
