//! The proxy path end to end, over real sockets: routing, authentication, scopes, header
//! hygiene, identity headers, upstream failures, streaming bodies, HTTP/2 and plaintext.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::*;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

const CHALLENGE: &str = "Bearer realm=\"portcullis\"";

async fn setup() -> (EchoUpstream, TestGateway) {
    let up = EchoUpstream::start().await;
    let gw = TestGateway::start(up.addr).await;
    (up, gw)
}

async fn svc_token(gw: &TestGateway) -> String {
    gw.token("svc", SVC_SECRET, None).await
}

fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

/// GET `path` over TLS with a bearer token; the echo the upstream sent back.
async fn echo_get(gw: &TestGateway, path: &str, token: &str) -> Echo {
    let resp = gw.client().get(gw.url(path)).bearer_auth(token).send().await.unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap();
    assert_eq!(status, 200, "GET {path}: {text}");
    serde_json::from_str(&text).unwrap()
}

/// The gateway's answer to a refused request: status, WWW-Authenticate, JSON body.
async fn refused(resp: reqwest::Response) -> (u16, Option<String>, Value) {
    let status = resp.status().as_u16();
    let www = resp.headers().get("www-authenticate").map(|v| v.to_str().unwrap().to_string());
    let ctype = resp.headers().get("content-type").map(|v| v.to_str().unwrap().to_string());
    let text = resp.text().await.unwrap();
    assert_eq!(ctype.as_deref(), Some("application/json"), "status {status}, body {text}");
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    (status, www, v)
}

/// The identity headers the gateway sets, each of which must arrive exactly once.
const IDENTITY: [&str; 5] = ["x-auth-client-id", "x-auth-subject", "x-auth-scope", "x-auth-token-id", "x-auth-user"];

fn assert_identity(echo: &Echo, client: &str, subject: &str, scope: &str, jti: &str, user: Option<&str>) {
    assert_eq!(echo.header_all("x-auth-client-id"), vec![client], "{echo:?}");
    assert_eq!(echo.header_all("x-auth-subject"), vec![subject], "{echo:?}");
    assert_eq!(echo.header_all("x-auth-scope"), vec![scope], "{echo:?}");
    assert_eq!(echo.header_all("x-auth-token-id"), vec![jti], "{echo:?}");
    match user {
        Some(u) => assert_eq!(echo.header_all("x-auth-user"), vec![u], "{echo:?}"),
        None => assert!(echo.header_all("x-auth-user").is_empty(), "{echo:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// Raw HTTP/1.1 over a socket: for paths a URL library would normalise and for exact control
// of header names (mixed case, duplicates, hop-by-hop fields).

struct RawResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    fn echo(&self) -> Echo {
        assert_eq!(self.status, 200, "{}", String::from_utf8_lossy(&self.body));
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// Send `head` (request line and header lines, each ending in CRLF, without the blank line;
/// `Connection: close` is the caller's business) and read the whole response.
async fn raw_exchange<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, head: &str, body: &[u8]) -> RawResponse {
    let mut req = head.as_bytes().to_vec();
    req.extend_from_slice(b"\r\n");
    req.extend_from_slice(body);
    s.write_all(&req).await.unwrap();
    s.flush().await.unwrap();
    let mut buf = Vec::new();
    // A TLS peer may close without close_notify after Connection: close; what we read counts.
    let _ = s.read_to_end(&mut buf).await;
    parse_response(&buf)
}

fn parse_response(buf: &[u8]) -> RawResponse {
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(buf)));
    let head = std::str::from_utf8(&buf[..end]).unwrap();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status: u16 = status_line.split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap();
            (n.trim().to_ascii_lowercase(), v.trim().to_string())
        })
        .collect();
    let rest = &buf[end + 4..];
    let chunked = headers.iter().any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = if chunked {
        let mut out = Vec::new();
        let mut at = 0;
        loop {
            let line_end = at + rest[at..].windows(2).position(|w| w == b"\r\n").unwrap();
            let size = usize::from_str_radix(std::str::from_utf8(&rest[at..line_end]).unwrap().trim(), 16).unwrap();
            at = line_end + 2;
            if size == 0 {
                break;
            }
            out.extend_from_slice(&rest[at..at + size]);
            at += size + 2;
        }
        out
    } else {
        match headers.iter().find(|(n, _)| n == "content-length") {
            Some((_, v)) => rest[..v.parse::<usize>().unwrap()].to_vec(),
            None => rest.to_vec(),
        }
    };
    RawResponse { status, headers, body }
}

async fn raw_plain(addr: SocketAddr, head: &str, body: &[u8]) -> RawResponse {
    raw_exchange(TcpStream::connect(addr).await.unwrap(), head, body).await
}

async fn raw_tls(gw: &TestGateway, head: &str, body: &[u8]) -> RawResponse {
    raw_exchange(tls_connect(gw).await, head, body).await
}

// ---------------------------------------------------------------------------------------
// Crafting tokens: the gateway's own key (valid signatures with bad claims) and others.

fn b64(v: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(v)
}

/// The gateway's signing key, read from the file it generated on first start.
fn gateway_key(gw: &TestGateway) -> Ed25519KeyPair {
    let pem = std::fs::read(gw.dir.path().join("k1.pem")).unwrap();
    let der = pem::parse(pem).unwrap();
    Ed25519KeyPair::from_pkcs8(der.contents()).unwrap()
}

fn signing_input(header: &Value, claims: &Value) -> String {
    format!("{}.{}", b64(header.to_string().as_bytes()), b64(claims.to_string().as_bytes()))
}

fn sign_ed25519(key: &Ed25519KeyPair, header: &Value, claims: &Value) -> String {
    let input = signing_input(header, claims);
    let sig = key.sign(input.as_bytes());
    format!("{input}.{}", b64(sig.as_ref()))
}

fn sign_hs256(secret: &[u8], header: &Value, claims: &Value) -> String {
    let input = signing_input(header, claims);
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
    let tag = aws_lc_rs::hmac::sign(&key, input.as_bytes());
    format!("{input}.{}", b64(tag.as_ref()))
}

fn good_header() -> Value {
    json!({"alg": "EdDSA", "typ": "at+jwt", "kid": "k1"})
}

fn good_claims(client: &str, scope: &str) -> Value {
    let now = portcullis::tokens::now_secs();
    json!({
        "iss": ISSUER, "sub": client, "aud": ISSUER, "exp": now + 600, "iat": now,
        "jti": format!("crafted-{}", portcullis::tokens::random_token(8)), "client_id": client, "scope": scope,
    })
}

fn with(mut v: Value, key: &str, value: Value) -> Value {
    v[key] = value;
    v
}

fn without(mut v: Value, key: &str) -> Value {
    v.as_object_mut().unwrap().remove(key);
    v
}

async fn assert_invalid_token(gw: &TestGateway, label: &str, token: &str) {
    let resp = gw.client().get(gw.url("/api/x")).bearer_auth(token).send().await.unwrap();
    let (status, www, v) = refused(resp).await;
    assert_eq!(status, 401, "{label}: {v}");
    let www = www.unwrap_or_else(|| panic!("{label}: no WWW-Authenticate"));
    assert!(www.starts_with(&format!("{CHALLENGE}, error=\"invalid_token\"")), "{label}: {www}");
    assert_eq!(v["error"], "invalid_token", "{label}");
}

// ---------------------------------------------------------------------------------------
// Forwarding a valid request.

#[tokio::test]
async fn valid_token_reaches_upstream_with_identity_headers_and_request_intact() {
    let (_up, gw) = setup().await;
    let token = gw.token("svc", SVC_SECRET, Some("read write")).await;
    let jti = claims_of(&token)["jti"].as_str().unwrap().to_string();
    let body = b"{\"hello\":\"world\"}".to_vec();
    let resp = gw
        .client()
        .post(gw.url("/api/items/a%20b?x=1&y=two%2Fthree&z"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .header("x-custom", "kept")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert!(resp.headers().get("keep-alive").is_none(), "upstream's keep-alive passed back");
    let echo: Echo = resp.json().await.unwrap();
    assert_eq!(echo.method, "POST");
    assert_eq!(echo.path, "/api/items/a%20b");
    assert_eq!(echo.query.as_deref(), Some("x=1&y=two%2Fthree&z"));
    assert_eq!(echo.body_len, body.len());
    assert_eq!(echo.body_sha256, sha256_hex(&body));
    assert_eq!(echo.header("content-type"), Some("application/json"));
    assert_eq!(echo.header("x-custom"), Some("kept"));
    assert_identity(&echo, "svc", "svc", "read write", &jti, None);
    assert!(echo.header("authorization").is_none(), "token forwarded on a route without forward_token");
}

#[tokio::test]
async fn every_method_is_preserved() {
    let (_up, gw) = setup().await;
    let token = svc_token(&gw).await;
    for method in ["GET", "PUT", "DELETE", "PATCH", "OPTIONS", "POST"] {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let resp = gw.client().request(m, gw.url("/api/m")).bearer_auth(&token).body("b").send().await.unwrap();
        assert_eq!(resp.status(), 200, "{method}");
        let echo: Echo = resp.json().await.unwrap();
        assert_eq!(echo.method, method);
        assert_eq!(echo.body_len, 1, "{method}");
    }
    // HEAD has no body to echo, but must still be proxied and authorised.
    let resp = gw.client().head(gw.url("/api/m")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let resp = gw.client().head(gw.url("/api/m")).send().await.unwrap();
    assert_eq!(resp.status(), 401);
}

#[tokio::test]
async fn linked_client_sends_its_user_as_subject_and_user() {
    let (_up, gw) = setup().await;
    let token = gw.token("linked", OTHER_SECRET, None).await;
    let jti = claims_of(&token)["jti"].as_str().unwrap().to_string();
    let echo = echo_get(&gw, "/api/me", &token).await;
    assert_identity(&echo, "linked", "alice", "read", &jti, Some("alice"));
}

#[tokio::test]
async fn authorization_is_forwarded_only_on_forward_token_routes() {
    let (_up, gw) = setup().await;
    let token = svc_token(&gw).await;
    let echo = echo_get(&gw, "/tok/x", &token).await;
    assert_eq!(echo.header_all("authorization"), vec![format!("Bearer {token}")]);
    assert_eq!(echo.header("x-auth-client-id"), Some("svc"));
    let echo = echo_get(&gw, "/api/x", &token).await;
    assert!(echo.header("authorization").is_none());
    let echo = echo_get(&gw, "/strip/x", &token).await;
    assert!(echo.header("authorization").is_none());
}

#[tokio::test]
async fn strip_prefix_maps_onto_the_upstream_base_path() {
    let (_up, gw) = setup().await;
    let token = svc_token(&gw).await;
    let echo = echo_get(&gw, "/strip/x/y?q=1", &token).await;
    assert_eq!(echo.path, "/base/x/y");
    assert_eq!(echo.query.as_deref(), Some("q=1"));
    let echo = echo_get(&gw, "/strip", &token).await;
    assert_eq!(echo.path, "/base/");
    // Without strip_prefix the prefix stays.
    let echo = echo_get(&gw, "/api/x/y", &token).await;
    assert_eq!(echo.path, "/api/x/y");
    // A prefix matches on a segment boundary only.
    let resp = gw.client().get(gw.url("/stripx/y")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(resp.status(), 404);
}

#[tokio::test]
async fn longest_prefix_wins_and_method_filters_apply() {
    let up = EchoUpstream::start().await;
    let extra = format!(
        r#"
[[route]]
prefix = "/api/v2"
upstream = "http://{a}/v2base"
scopes = ["read"]
strip_prefix = true

[[route]]
prefix = "/ro"
upstream = "http://{a}"
methods = ["GET"]
scopes = ["read"]
"#,
        a = up.addr
    );
    let gw = TestGateway::start_with(up.addr, &extra).await;
    let token = svc_token(&gw).await;
    assert_eq!(echo_get(&gw, "/api/v2/items", &token).await.path, "/v2base/items");
    assert_eq!(echo_get(&gw, "/api/v2x/items", &token).await.path, "/api/v2x/items");
    assert_eq!(echo_get(&gw, "/api/v1/items", &token).await.path, "/api/v1/items");
    assert_eq!(echo_get(&gw, "/ro/x", &token).await.method, "GET");
    let resp = gw.client().post(gw.url("/ro/x")).bearer_auth(&token).send().await.unwrap();
    let (status, _, v) = refused(resp).await;
    assert_eq!(status, 404);
    assert_eq!(v["error"], "not_found");
}

// ---------------------------------------------------------------------------------------
// Header hygiene.

#[tokio::test]
async fn spoofed_identity_headers_never_reach_the_upstream() {
    let (_up, gw) = setup().await;
    let token = svc_token(&gw).await;
    let jti = claims_of(&token)["jti"].as_str().unwrap().to_string();
    let head = format!(
        "GET /api/spoof HTTP/1.1\r\n\
         Host: localhost:{port}\r\n\
         X-Auth-Client-Id: admin-client\r\n\
         x-auth-client-id: admin-client-2\r\n\
         X-AUTH-SUBJECT: root\r\n\
         x-Auth-Subject: root2\r\n\
         X-Auth-Scope: admin\r\n\
         X-AUTH-scope: admin write\r\n\
         x-auth-token-id: forged\r\n\
         X-Auth-Token-ID: forged2\r\n\
         X-Auth-User: mallory\r\n\
         X-AUTH-USER: mallory2\r\n\
         Authorization: Bearer {token}\r\n\
         Connection: close\r\n",
        port = gw.https.port()
    );
    let resp = raw_tls(&gw, &head, b"").await;
    let echo = resp.echo();
    // Exactly the gateway's values, once each; svc has no user, so no user header at all.
    assert_identity(&echo, "svc", "svc", "read", &jti, None);

    // The same over the public route: nothing vouched for, nothing passes.
    let head = head.replace("/api/spoof", "/public/spoof");
    let echo = raw_tls(&gw, &head, b"").await.echo();
    for name in IDENTITY {
        assert!(echo.header(name).is_none(), "{name} reached a public upstream: {echo:?}");
    }
    assert!(echo.header("authorization").is_none());
}

#[tokio::test]
async fn underscore_spellings_of_identity_headers_are_dropped() {
    // CGI-style upstreams (WSGI, Rack, PHP) read X_Auth_User and X-Auth-User as the same
    // variable, so an underscore spelling is a spoof of the gateway's header too.
    let (_up, gw) = setup().await;
    let token = svc_token(&gw).await;
    let head = format!(
        "GET /api/underscore HTTP/1.1\r\n\
         Host: localhost\r\n\
         Authorization: Bearer {token}\r\n\
         X_Auth_Client_Id: admin\r\n\
         x_auth_subject: root\r\n\
         X-Auth_Scope: admin\r\n\
         X_AUTH_TOKEN_ID: forged\r\n\
         X_Auth_User: mallory\r\n\
         X_Other_Thing: kept\r\n\
         Connection: close\r\n"
    );
    let echo = raw_tls(&gw, &head, b"").await.echo();
    for (name, _) in &echo.headers {
        let normal = name.replace('_', "-");
        assert!(!IDENTITY.contains(&normal.as_str()) || name == &normal, "{name} reached the upstream: {echo:?}");
    }
    assert_eq!(echo.header_all("x-auth-subject"), vec!["svc"]);
    assert_eq!(echo.header("x_other_thing"), Some("kept"));
}

#[tokio::test]
async fn spoofed_identity_headers_over_http2_are_replaced() {
    let (_up, gw) = setup().await;
    let token = gw.token("linked", OTHER_SECRET, None).await;
    let jti = claims_of(&token)["jti"].as_str().unwrap().to_string();
    let client = https_client(&gw.pki.ca_pem, true);
    let mut req = client.get(gw.url("/api/h2spoof")).bearer_auth(&token);
    for name in IDENTITY {
        req = req.header(name, "forged-1").header(name, "forged-2");
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    let echo: Echo = resp.json().await.unwrap();
    assert_identity(&echo, "linked", "alice", "read", &jti, Some("alice"));
}

#[tokio::test]
async fn hop_by_hop_headers_are_removed_both_ways() {
    let (_up, gw) = setup().await;
    let token = svc_token(&gw).await;
    let head = format!(
        "POST /api/hop HTTP/1.1\r\n\
         Host: localhost:{port}\r\n\
         Authorization: Bearer {token}\r\n\
         Connection: close, X-Drop-Me, x-drop-too\r\n\
         Connection: X-Also-Dropped\r\n\
         X-Drop-Me: 1\r\n\
         X-Drop-Too: 2\r\n\
         X-Also-Dropped: 3\r\n\
         X-Keep-Me: 4\r\n\
         Keep-Alive: timeout=5, max=100\r\n\
         TE: trailers\r\n\
         Upgrade: websocket\r\n\
         Proxy-Authorization: Basic dXNlcjpwYXNz\r\n\
         Proxy-Connection: keep-alive\r\n\
         Content-Length: 5\r\n",
        port = gw.https.port()
    );
    let resp = raw_tls(&gw, &head, b"hello").await;
    assert!(resp.header("keep-alive").is_none(), "upstream's keep-alive passed back: {:?}", resp.headers);
    let echo = resp.echo();
    assert_eq!(echo.body_len, 5);
    assert_eq!(echo.header("x-keep-me"), Some("4"));
    for name in [
        "x-drop-me",
        "x-drop-too",
        "x-also-dropped",
        "keep-alive",
        "te",
        "upgrade",
        "proxy-authorization",
        "proxy-connection",
    ] {
        assert!(echo.header(name).is_none(), "{name} reached the upstream: {echo:?}");
    }
    // Whatever Connection header the upstream sees is the client connector's own, never ours.
    for v in echo.header_all("connection") {
        assert!(!v.to_ascii_lowercase().contains("x-drop"), "caller's Connection forwarded: {v}");
    }
}

#[tokio::test]
async fn forwarded_headers_are_set_by_the_gateway_and_callers_values_replaced() {
    let (up, gw) = setup().await;
    let token = svc_token(&gw).await;
    let resp = gw
        .client()
        .get(gw.url("/api/fwd"))
        .bearer_auth(&token)
        .header("x-forwarded-for", "203.0.113.9")
        .header("X-Forwarded-For", "198.51.100.7")
        .header("x-forwarded-proto", "gopher")
        .header("x-forwarded-host", "evil.example")
        .header("forwarded", "for=203.0.113.9;proto=http;host=evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let echo: Echo = resp.json().await.unwrap();
    assert_eq!(echo.header_all("x-forwarded-for"), vec!["127.0.0.1"]);
    assert_eq!(echo.header_all("x-forwarded-proto"), vec!["https"]);
    assert_eq!(echo.header_all("x-forwarded-host"), vec![format!("localhost:{}", gw.https.port())]);
    assert!(echo.header("forwarded").is_none(), "{echo:?}");
    // The upstream is addressed by its own authority, not the caller's Host.
    assert_eq!(echo.header_all("host"), vec![up.addr.to_string()]);
}

#[tokio::test]
async fn a_trusted_proxy_keeps_its_forwarded_headers() {
    let up = EchoUpstream::start().await;
    let gw = TestGateway::start_with(up.addr, "[proxy]\ntrusted_proxies = [\"127.0.0.1\"]\n").await;
    let token = svc_token(&gw).await;
    let resp = gw
        .client()
        .get(gw.url("/api/fwd"))
        .bearer_auth(&token)
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-forwarded-proto", "http")
        .header("x-forwarded-host", "api.example")
        .send()
        .await
        .unwrap();
    let echo: Echo = resp.json().await.unwrap();
    assert_eq!(echo.header_all("x-forwarded-for"), vec!["203.0.113.9, 127.0.0.1"]);
    assert_eq!(echo.header_all("x-forwarded-proto"), vec!["http"]);
    assert_eq!(echo.header_all("x-forwarded-host"), vec!["api.example"]);
    // Even a trusted proxy's X-Forwarded-Host must be authorities (a chain of them is kept);
    // anything else, or two lines, is replaced by the host the gateway saw.
    for (sent, seen) in [
        (&["api.example, edge.example:8443"][..], "api.example, edge.example:8443"),
        (&["evil.com/x?y"], "localhost"),
        (&["a@internal.example"], "localhost"),
        (&["api.example", "other.example"], "localhost"),
    ] {
        let mut req = gw.client().get(gw.url("/api/fwd")).bearer_auth(&token);
        for v in sent {
            req = req.header("x-forwarded-host", *v);
        }
        let echo: Echo = req.send().await.unwrap().json().await.unwrap();
        let got = echo.header_all("x-forwarded-host");
        assert_eq!(got.len(), 1, "{sent:?}: {got:?}");
        assert!(got[0].starts_with(seen), "{sent:?}: {got:?}");
    }
    // A chain split over several header lines is one list (RFC 9110 §5.3).
    let resp = gw
        .client()
        .get(gw.url("/api/fwd"))
        .bearer_auth(&token)
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-forwarded-for", "10.0.0.1, 10.0.0.2")
        .send()
        .await
        .unwrap();
    let echo: Echo = resp.json().await.unwrap();
    assert_eq!(echo.header_all("x-forwarded-for"), vec!["203.0.113.9, 10.0.0.1, 10.0.0.2, 127.0.0.1"]);
    // Identity headers are never trusted, whoever the peer is.
    let resp =
        gw.client().get(gw.url("/api/fwd")).bearer_auth(&token).header("x-auth-subject", "root").send().await.unwrap();
    let echo: Echo = resp.json().await.unwrap();
    assert_eq!(echo.header_all("x-auth-subject"), vec!["svc"]);
}

// ---------------------------------------------------------------------------------------
// Refusals: RFC 6750 challenges.

#[tokio::test]
async fn missing_token_is_401_with_a_bare_challenge() {
    let (_up, gw) = setup().await;
    let resp = gw.client().get(gw.url("/api/x")).send().await.unwrap();
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let (status, www, v) = refused(resp).await;
    assert_eq!(status, 401);
    assert_eq!(www.as_deref(), Some(CHALLENGE));
    assert_eq!(v["error"], "unauthorized");

    // Another scheme is not a bearer token either.
    let resp = gw.client().get(gw.url("/api/x")).basic_auth("svc", Some(SVC_SECRET)).send().await.unwrap();
    let (status, www, _) = refused(resp).await;
    assert_eq!(status, 401);
    assert_eq!(www.as_deref(), Some(CHALLENGE));
}

#[tokio::test]
async fn bearer_scheme_is_case_insensitive() {
    let (_up, gw) = setup().await;
    let token = svc_token(&gw).await;
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let resp = gw
            .client()
            .get(gw.url("/api/x"))
            .header("authorization", format!("{scheme} {token}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{scheme}");
    }
}

#[tokio::test]
async fn a_crafted_token_signed_with_the_gateway_key_is_accepted() {
    // The control for the tests below: the crafting itself yields tokens the gateway takes,
    // so each refusal there is about the one thing that was changed.
    let (_up, gw) = setup().await;
    let key = gateway_key(&gw);
    let claims = good_claims("svc", "read");
    let token = sign_ed25519(&key, &good_header(), &claims);
    let echo = echo_get(&gw, "/api/x", &token).await;
    assert_identity(&echo, "svc", "svc", "read", claims["jti"].as_str().unwrap(), None);
    // The media-type form of typ is accepted too (RFC 9068 §2.1).
    let token = sign_ed25519(&key, &with(good_header(), "typ", json!("application/at+jwt")), &claims);
    echo_get(&gw, "/api/x", &token).await;
}

#[tokio::test]
async fn garbage_and_malformed_tokens_are_invalid_token() {
    let (_up, gw) = setup().await;
    let real = svc_token(&gw).await;
    let mut parts: Vec<&str> = real.split('.').collect();
    let cases = [
        ("garbage", "not-a-jwt".to_string()),
        ("three dots of nothing", "a.b.c".to_string()),
        ("base64 noise", "eyJhbGciOiJFZERTQSJ9.e30.AAAA".to_string()),
        ("truncated", real[..real.len() - 10].to_string()),
        ("two parts", parts[..2].join(".")),
        ("no signature", format!("{}.{}.", parts[0], parts[1])),
        ("very long", "A".repeat(9000)),
    ];
    for (label, token) in &cases {
        assert_invalid_token(&gw, label, token).await;
    }
    // A payload altered after signing.
    let mut claims = claims_of(&real);
    claims["scope"] = json!("read write admin");
    let forged = b64(claims.to_string().as_bytes());
    parts[1] = &forged;
    assert_invalid_token(&gw, "tampered payload", &parts.join(".")).await;
    // The genuine one still works.
    echo_get(&gw, "/api/x", &real).await;
}

#[tokio::test]
async fn signature_attacks_are_invalid_token() {
    let (_up, gw) = setup().await;
    let key = gateway_key(&gw);
    let claims = good_claims("svc", "read admin");

    // Same kid, a different Ed25519 key.
    let other = Ed25519KeyPair::generate().unwrap();
    assert_invalid_token(&gw, "wrong key, same kid", &sign_ed25519(&other, &good_header(), &claims)).await;

    // alg none, with and without a signature part.
    let none = with(good_header(), "alg", json!("none"));
    let unsigned = signing_input(&none, &claims);
    assert_invalid_token(&gw, "alg none", &format!("{unsigned}.")).await;
    let none_sig = format!("{unsigned}.{}", b64(b"sig"));
    assert_invalid_token(&gw, "alg none with signature", &none_sig).await;
    let none_lower = signing_input(&with(good_header(), "alg", json!("None")), &claims);
    assert_invalid_token(&gw, "alg None", &format!("{none_lower}.")).await;

    // Algorithm confusion: HS256 keyed with the public key (raw bytes, and its SPKI PEM/DER).
    let public = key.public_key().as_ref().to_vec();
    let hs = with(good_header(), "alg", json!("HS256"));
    assert_invalid_token(&gw, "HS256 with raw public key", &sign_hs256(&public, &hs, &claims)).await;
    let mut spki = hex_bytes("302a300506032b6570032100");
    spki.extend_from_slice(&public);
    let spki_pem = pem::encode(&pem::Pem::new("PUBLIC KEY", spki.clone()));
    assert_invalid_token(&gw, "HS256 with SPKI PEM", &sign_hs256(spki_pem.as_bytes(), &hs, &claims)).await;
    assert_invalid_token(&gw, "HS256 with SPKI DER", &sign_hs256(&spki, &hs, &claims)).await;

    // The right key under a name the gateway does not know, or none at all.
    let unknown = with(good_header(), "kid", json!("k9"));
    assert_invalid_token(&gw, "unknown kid", &sign_ed25519(&key, &unknown, &claims)).await;
    let no_kid = without(good_header(), "kid");
    assert_invalid_token(&gw, "no kid", &sign_ed25519(&key, &no_kid, &claims)).await;

    // An EdDSA signature claimed as another asymmetric algorithm.
    let es = with(good_header(), "alg", json!("ES256"));
    assert_invalid_token(&gw, "alg ES256 on an Ed25519 key", &sign_ed25519(&key, &es, &claims)).await;
}

fn hex_bytes(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

#[tokio::test]
async fn validly_signed_tokens_with_bad_claims_are_invalid_token() {
    let (_up, gw) = setup().await;
    let key = gateway_key(&gw);
    let now = portcullis::tokens::now_secs();
    let c = || good_claims("svc", "read");
    let h = good_header;
    let cases: Vec<(&str, Value, Value)> = vec![
        ("expired", h(), with(with(c(), "exp", json!(now - 3600)), "iat", json!(now - 7200))),
        ("expired just past leeway", h(), with(c(), "exp", json!(now - 60))),
        ("wrong issuer", h(), with(c(), "iss", json!("https://evil.test"))),
        ("wrong audience", h(), with(c(), "aud", json!("https://other.test"))),
        ("typ JWT", with(h(), "typ", json!("JWT")), c()),
        ("no typ", without(h(), "typ"), c()),
        ("not yet valid (nbf)", h(), with(c(), "nbf", json!(now + 3600))),
        ("issued in the future", h(), with(c(), "iat", json!(now + 3600))),
        ("no exp", h(), without(c(), "exp")),
        ("no iss", h(), without(c(), "iss")),
        ("no aud", h(), without(c(), "aud")),
        ("no jti", h(), without(c(), "jti")),
        ("no client_id", h(), without(c(), "client_id")),
        ("empty sub", h(), with(c(), "sub", json!(""))),
        ("unknown client", h(), with(with(c(), "client_id", json!("ghost")), "sub", json!("ghost"))),
        ("disabled client", h(), with(with(c(), "client_id", json!("off")), "sub", json!("off"))),
    ];
    for (label, header, claims) in &cases {
        assert_invalid_token(&gw, label, &sign_ed25519(&key, header, claims)).await;
    }
    // Expiry has its own description.
    let token = sign_ed25519(&key, &h(), &with(c(), "exp", json!(now - 3600)));
    let resp = gw.client().get(gw.url("/api/x")).bearer_auth(&token).send().await.unwrap();
    let (_, www, v) = refused(resp).await;
    assert_eq!(v["error_description"], "The access token expired");
    assert!(www.unwrap().contains("error_description=\"The access token expired\""));
}

#[tokio::test]
async fn insufficient_scope_is_403_naming_the_required_scope() {
    let (_up, gw) = setup().await;
    let token = svc_token(&gw).await;
    let resp = gw.client().get(gw.url("/admin/users")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let (status, www, v) = refused(resp).await;
    assert_eq!(status, 403);
    assert_eq!(www.as_deref(), Some(r#"Bearer realm="portcullis", error="insufficient_scope", scope="admin""#));
    assert_eq!(v["error"], "insufficient_scope");
    assert_eq!(v["scope"], "admin");

    let admin = gw.token("svc", SVC_SECRET, Some("admin")).await;
    let echo = echo_get(&gw, "/admin/users", &admin).await;
    assert_eq!(echo.header("x-auth-scope"), Some("admin"));
    // admin alone does not include read.
    let resp = gw.client().get(gw.url("/api/x")).bearer_auth(&admin).send().await.unwrap();
    let (status, www, _) = refused(resp).await;
    assert_eq!(status, 403);
    assert!(www.unwrap().ends_with(r#"scope="read""#));
}

#[tokio::test]
async fn public_route_needs_no_token_and_strips_spoofed_identity() {
    let (_up, gw) = setup().await;
    let mut req = gw.client().get(gw.url("/public/page?a=b"));
    for name in IDENTITY {
        req = req.header(name, "forged");
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let echo: Echo = resp.json().await.unwrap();
    assert_eq!(echo.path, "/public/page");
    assert_eq!(echo.query.as_deref(), Some("a=b"));
    for name in IDENTITY {
        assert!(echo.header(name).is_none(), "{name}: {echo:?}");
    }
    // Even a garbage token does not matter on a public route, and is not passed on.
    let resp = gw.client().get(gw.url("/public")).bearer_auth("garbage").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let echo: Echo = resp.json().await.unwrap();
    assert!(echo.header("authorization").is_none());
}

#[tokio::test]
async fn no_route_is_404_json() {
    let (_up, gw) = setup().await;
    let token = svc_token(&gw).await;
    for path in ["/nowhere", "/", "/apix"] {
        let resp = gw.client().get(gw.url(path)).bearer_auth(&token).send().await.unwrap();
        let (status, www, v) = refused(resp).await;
        assert_eq!(status, 404, "{path}");
        assert!(www.is_none());
        assert_eq!(v["error"], "not_found", "{path}");
    }
    // Prefixes match case-insensitively, so a case variant is held to the route's rules
    // (here: a token with `read`) instead of slipping past it.
    let resp = gw.client().get(gw.url("/API/x")).send().await.unwrap();
    assert_eq!(resp.status(), 401);
}

#[tokio::test]
async fn gateway_cookies_and_client_ip_headers_never_reach_the_upstream() {
    let (_up, gw) = setup().await;
    let token = svc_token(&gw).await;
    let resp = gw
        .client()
        .get(gw.url("/api/c"))
        .bearer_auth(&token)
        .header("cookie", "a=1; __Host-portcullis_session=SECRET; b=2; __Host-portcullis_csrf=C")
        .header("x-real-ip", "1.2.3.4")
        .header("true-client-ip", "1.2.3.4")
        .send()
        .await
        .unwrap();
    let echo: Echo = resp.json().await.unwrap();
    assert_eq!(echo.header("cookie"), Some("a=1; b=2"));
    assert!(echo.header("x-real-ip").is_none() && echo.header("true-client-ip").is_none(), "{echo:?}");
    let resp = gw
        .client()
        .get(gw.url("/api/c"))
        .bearer_auth(&token)
        .header("cookie", "__Host-portcullis_session=SECRET")
        .send()
        .await
        .unwrap();
    let echo: Echo = resp.json().await.unwrap();
    assert!(echo.header("cookie").is_none(), "{echo:?}");
}

#[tokio::test]
async fn paths_an_upstream_could_normalise_differently_are_refused() {
    let (_up, gw) = setup().await;
    for path in ["//api/x", "/%61pi/x", "/api;x/y", "/api//x"] {
        let resp =
            raw_plain(gw.http, &format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"), b"").await;
        assert_eq!(resp.status, 400, "{path}");
    }
}

#[tokio::test]
async fn unsafe_paths_are_400_and_never_forwarded() {
    let (_up, gw) = setup().await;
    let token = gw.token("svc", SVC_SECRET, Some("read admin")).await;
    for path in [
        "/api/../admin",
        "/api/%2e%2e/admin",
        "/api/%2E%2E/admin",
        "/api/.%2e/admin",
        "/api/./x",
        "/api%2fx",
        "/api/x%2F..%2Fadmin",
        "/api/x%5c..%5cadmin",
        "/api/x%00",
    ] {
        let head =
            format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n");
        let resp = raw_plain(gw.http, &head, b"").await;
        assert_eq!(resp.status, 400, "{path}: {}", String::from_utf8_lossy(&resp.body));
        assert_eq!(resp.header("content-type"), Some("application/json"), "{path}");
        assert_eq!(resp.json()["error"], "invalid_request", "{path}");
    }
    // Over TLS too, and without a token (the path check comes first).
    let resp = raw_tls(&gw, "GET /public/../api/x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n", b"").await;
    assert_eq!(resp.status, 400);
}

// ---------------------------------------------------------------------------------------
// Configuration changes against cached verdicts.

#[tokio::test]
async fn disabled_clients_cached_token_is_refused_at_once() {
    let (_up, gw) = setup().await;
    let token = svc_token(&gw).await;
    echo_get(&gw, "/api/x", &token).await; // now cached

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
    // And on the public route nothing changed.
    assert_eq!(gw.client().get(gw.url("/public")).send().await.unwrap().status(), 200);

    // Enabled again, the same token is good again (its verdict was never about the client).
    gw.rewrite_config(|text| {
        text.replacen("default_scopes = [\"read\"]\nenabled = false\n", "default_scopes = [\"read\"]\n", 1)
    });
    echo_get(&gw, "/api/x", &token).await;
}

#[tokio::test]
async fn deleted_clients_cached_token_is_refused_at_once() {
    let (_up, gw) = setup().await;
    let token = gw.token("linked", OTHER_SECRET, None).await;
    echo_get(&gw, "/api/x", &token).await; // now cached
    gw.rewrite_config(|text| {
        let start = text.find("[[client]]\nid = \"linked\"").unwrap();
        let len = text[start + 1..].find("[[client]]").unwrap() + 1;
        let mut out = text.clone();
        out.replace_range(start..start + len, "");
        assert!(!out.contains("\"linked\""));
        out
    });
    assert_invalid_token(&gw, "deleted client", &token).await;
    // Other clients' tokens are unaffected.
    let svc = svc_token(&gw).await;
    echo_get(&gw, "/api/x", &svc).await;
}

// ---------------------------------------------------------------------------------------
// Upstream failures.

/// A port on which nothing listens (bound, then released).
async fn closed_port() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    addr
}

#[tokio::test]
async fn upstream_down_is_502_json_and_the_gateway_keeps_serving() {
    let up = EchoUpstream::start().await;
    let down = closed_port().await;
    let extra = format!("[[route]]\nprefix = \"/down\"\nupstream = \"http://{down}\"\nscopes = [\"read\"]\n");
    let gw = TestGateway::start_with(up.addr, &extra).await;
    let token = svc_token(&gw).await;
    for _ in 0..3 {
        let resp = gw.client().post(gw.url("/down/x")).bearer_auth(&token).body("payload").send().await.unwrap();
        let (status, www, v) = refused(resp).await;
        assert_eq!(status, 502);
        assert!(www.is_none());
        assert_eq!(v["error"], "bad_gateway");
        assert!(v["error_description"].is_string());
        // The detail (addresses, OS errors) stays in the log.
        assert!(!v.to_string().contains(&down.port().to_string()), "{v}");
    }
    echo_get(&gw, "/api/after", &token).await;
    let resp = https_client(&gw.pki.ca_pem, true).get(gw.url("/down/x")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(resp.status(), 502);
}

#[tokio::test]
async fn upstream_that_resets_is_502() {
    let up = EchoUpstream::start().await;
    // Accepts, reads a little, and closes without answering.
    let rude = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let rude_addr = rude.local_addr().unwrap();
    let rude_task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = rude.accept().await else { continue };
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            drop(s);
        }
    });
    let extra = format!("[[route]]\nprefix = \"/rude\"\nupstream = \"http://{rude_addr}\"\nscopes = [\"read\"]\n");
    let gw = TestGateway::start_with(up.addr, &extra).await;
    let token = svc_token(&gw).await;
    let resp = gw.client().get(gw.url("/rude/x")).bearer_auth(&token).send().await.unwrap();
    let (status, _, v) = refused(resp).await;
    assert_eq!(status, 502);
    assert_eq!(v["error"], "bad_gateway");
    echo_get(&gw, "/api/after", &token).await;
    rude_task.abort();
}

#[tokio::test]
async fn upstream_slower_than_the_timeout_is_504_json() {
    let (_up, gw) = setup().await;
    let token = svc_token(&gw).await;
    // upstream_timeout is 2s in the test config.
    let started = std::time::Instant::now();
    let resp = gw.client().get(gw.url("/slow/5000")).bearer_auth(&token).send().await.unwrap();
    let elapsed = started.elapsed();
    let (status, www, v) = refused(resp).await;
    assert_eq!(status, 504);
    assert!(www.is_none());
    assert_eq!(v["error"], "gateway_timeout");
    assert!(elapsed < std::time::Duration::from_millis(4500), "timed out only after {elapsed:?}");
    // A quick answer on the same route is fine.
    let echo = echo_get(&gw, "/slow/10", &token).await;
    assert_eq!(echo.path, "/slow/10");
}

// ---------------------------------------------------------------------------------------
// Bodies, protocols, listeners.

const BIG: usize = 20 * 1024 * 1024;

fn big_body() -> Vec<u8> {
    (0..BIG).map(|i| (i % 253) as u8 ^ (i >> 16) as u8).collect()
}

/// The bytes the echo upstream's `/big/<n>` sends.
fn big_pattern(n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n.div_ceil(65536) {
        let len = (n - i * 65536).min(65536);
        out.extend(std::iter::repeat_n((i % 251) as u8, len));
    }
    out
}

async fn large_bodies_over(client: reqwest::Client, gw: &TestGateway, version: reqwest::Version) {
    let token = svc_token(gw).await;
    let body = big_body();
    let digest = sha256_hex(&body);

    // Request body in, the upstream streams it straight back out.
    let resp = client.post(gw.url("/stream/up")).bearer_auth(&token).body(body.clone()).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), version);
    let back = resp.bytes().await.unwrap();
    assert_eq!(back.len(), BIG);
    assert_eq!(sha256_hex(&back), digest);

    // A chunked upload of unknown length, read whole by the upstream.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = body.chunks(100_000).map(|c| Ok(c.to_vec())).collect();
    let stream = futures_util::stream::iter(chunks);
    let resp = client
        .put(gw.url("/api/upload"))
        .bearer_auth(&token)
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let echo: Echo = resp.json().await.unwrap();
    assert_eq!(echo.method, "PUT");
    assert_eq!(echo.body_len, BIG);
    assert_eq!(echo.body_sha256, digest);

    // A large response body.
    let resp = client.get(gw.url(&format!("/big/{BIG}"))).bearer_auth(&token).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let got = resp.bytes().await.unwrap();
    assert_eq!(got.len(), BIG);
    assert_eq!(sha256_hex(&got), sha256_hex(&big_pattern(BIG)));
}

#[tokio::test]
async fn large_bodies_stream_through_intact_over_http1() {
    let (_up, gw) = setup().await;
    let ca = reqwest::Certificate::from_pem(gw.pki.ca_pem.as_bytes()).unwrap();
    let client = reqwest::Client::builder().tls_certs_only([ca]).no_proxy().http1_only().build().unwrap();
    large_bodies_over(client, &gw, reqwest::Version::HTTP_11).await;
}

#[tokio::test]
async fn large_bodies_stream_through_intact_over_http2() {
    let (_up, gw) = setup().await;
    large_bodies_over(https_client(&gw.pki.ca_pem, true), &gw, reqwest::Version::HTTP_2).await;
}

#[tokio::test]
async fn body_over_the_proxy_limit_is_413() {
    let up = EchoUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(dir.path());
    let text = config_toml(dir.path(), &pki, up.addr, "")
        .replace("max_proxy_body_bytes = 67108864", "max_proxy_body_bytes = 1024");
    let gw = TestGateway::start_text(dir, pki, &text).await;
    let token = svc_token(&gw).await;
    let resp = gw.client().post(gw.url("/api/x")).bearer_auth(&token).body(vec![b'a'; 2048]).send().await.unwrap();
    let (status, _, v) = refused(resp).await;
    assert_eq!(status, 413);
    assert_eq!(v["error"], "payload_too_large");
    // The same without a declared length: refused once the limit is crossed, never
    // delivered to the upstream as if complete.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = (0..4).map(|_| Ok(vec![b'a'; 512])).collect();
    let resp = gw
        .client()
        .post(gw.url("/api/x"))
        .bearer_auth(&token)
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    let (status, _, v) = refused(resp).await;
    assert_eq!(status, 413, "{v}");
    assert_eq!(v["error"], "payload_too_large");
    // At the limit is fine.
    let resp = gw.client().post(gw.url("/api/x")).bearer_auth(&token).body(vec![b'a'; 1024]).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let echo: Echo = resp.json().await.unwrap();
    assert_eq!(echo.body_len, 1024);
}

#[tokio::test]
async fn http2_over_tls_is_proxied() {
    let (_up, gw) = setup().await;
    let token = svc_token(&gw).await;
    let jti = claims_of(&token)["jti"].as_str().unwrap().to_string();
    let client = https_client(&gw.pki.ca_pem, true);
    let resp = client.post(gw.url("/strip/h2?x=y")).bearer_auth(&token).body("over h2").send().await.unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("keep-alive").is_none());
    let echo: Echo = resp.json().await.unwrap();
    assert_eq!(echo.method, "POST");
    assert_eq!(echo.path, "/base/h2");
    assert_eq!(echo.query.as_deref(), Some("x=y"));
    assert_eq!(echo.version, "HTTP/1.1");
    assert_eq!(echo.body_len, 7);
    assert_eq!(echo.body_sha256, sha256_hex(b"over h2"));
    assert_identity(&echo, "svc", "svc", "read", &jti, None);
    assert_eq!(echo.header_all("x-forwarded-proto"), vec!["https"]);
    assert_eq!(echo.header_all("x-forwarded-host"), vec![format!("localhost:{}", gw.https.port())]);

    // Refusals over HTTP/2 look the same.
    let resp = client.get(gw.url("/api/x")).send().await.unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    let (status, www, _) = refused(resp).await;
    assert_eq!(status, 401);
    assert_eq!(www.as_deref(), Some(CHALLENGE));
    // Default client negotiates h2 by ALPN as well.
    let resp = gw.client().get(gw.url("/api/x")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
}

#[tokio::test]
async fn http2_cookie_fields_reach_an_http1_upstream_as_one_header() {
    // RFC 9113 §8.2.3: HTTP/2 may split Cookie into several fields; they must be joined
    // with "; " before the request goes out over HTTP/1.1.
    let (_up, gw) = setup().await;
    let token = svc_token(&gw).await;
    let client = https_client(&gw.pki.ca_pem, true);
    let resp = client
        .get(gw.url("/api/cookies"))
        .bearer_auth(&token)
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    let echo: Echo = resp.json().await.unwrap();
    assert_eq!(echo.header_all("cookie"), vec!["a=1; b=2"]);
}

#[tokio::test]
async fn plaintext_listener_serves_the_proxy_path() {
    let (_up, gw) = setup().await;
    let token = svc_token(&gw).await;
    let jti = claims_of(&token)["jti"].as_str().unwrap().to_string();
    let plain = reqwest::Client::builder().no_proxy().build().unwrap();
    let resp = plain
        .get(gw.http_url("/api/plain?q=1"))
        .bearer_auth(&token)
        .header("x-forwarded-proto", "https")
        .header("x-auth-client-id", "forged")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("keep-alive").is_none());
    let echo: Echo = resp.json().await.unwrap();
    assert_eq!(echo.path, "/api/plain");
    assert_eq!(echo.query.as_deref(), Some("q=1"));
    assert_eq!(echo.header_all("x-forwarded-proto"), vec!["http"]);
    assert_eq!(echo.header_all("x-forwarded-for"), vec!["127.0.0.1"]);
    assert_eq!(echo.header_all("x-forwarded-host"), vec![format!("127.0.0.1:{}", gw.http.port())]);
    assert_identity(&echo, "svc", "svc", "read", &jti, None);

    let resp = plain.get(gw.http_url("/admin/x")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(resp.status(), 403);
    let resp = plain.get(gw.http_url("/api/x")).send().await.unwrap();
    assert_eq!(resp.status(), 401);
}

// ---------------------------------------------------------------------------------------
// Upstream connections: kept alive, reused, replaced when stale, closed when abandoned.

fn accepted(up: &EchoUpstream) -> usize {
    up.accepted.load(std::sync::atomic::Ordering::SeqCst)
}

#[tokio::test]
async fn upstream_connections_are_kept_alive_and_reused() {
    let (up, gw) = setup().await;
    let token = svc_token(&gw).await;
    for i in 0..20 {
        echo_get(&gw, &format!("/api/seq/{i}"), &token).await;
        // A response without a body (HEAD) and a large streamed one free the connection too.
        let head = gw.client().head(gw.url("/api/head")).bearer_auth(&token).send().await.unwrap();
        assert_eq!(head.status(), 200);
        let big = gw.client().get(gw.url("/big/300000")).bearer_auth(&token).send().await.unwrap();
        assert_eq!(big.bytes().await.unwrap().len(), 300_000);
    }
    assert_eq!(accepted(&up), 1, "60 sequential requests should share one upstream connection");

    // Concurrent requests open at most one connection each, and all of them are kept.
    let burst = || {
        futures_util::future::join_all((0..8).map(|i| {
            let (gw, token) = (&gw, &token);
            async move { echo_get(gw, &format!("/slow/50?{i}"), token).await }
        }))
    };
    burst().await;
    let after_burst = accepted(&up);
    assert!((2..=9).contains(&after_burst), "8 concurrent requests opened {after_burst} connections in all");
    burst().await;
    for i in 0..10 {
        echo_get(&gw, &format!("/api/again/{i}"), &token).await;
    }
    // The second burst may find one or two connections still on their way back to the pool.
    assert!(accepted(&up) <= after_burst + 2, "{} connections after reuse, {after_burst} before", accepted(&up));
}

/// An upstream that answers one request per connection and then, `close_after` later,
/// closes it without saying so (no `Connection: close`): every idle connection the gateway
/// keeps goes stale.
async fn one_shot_upstream(
    close_after: std::time::Duration,
) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>, tokio::task::JoinHandle<()>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c = count.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else { continue };
            c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
                tokio::time::sleep(close_after).await;
                let _ = s.shutdown().await;
            });
        }
    });
    (addr, count, task)
}

#[tokio::test]
async fn stale_idle_upstream_connections_are_replaced_without_failing_requests() {
    stale_connections_are_replaced(std::time::Duration::ZERO).await;
}

/// The close arrives while the connection sits idle in the pool (as with an upstream whose
/// keep-alive timeout is shorter than the gateway's), not while the response is read.
#[tokio::test]
async fn upstream_connections_closed_while_idle_are_replaced_without_failing_requests() {
    stale_connections_are_replaced(std::time::Duration::from_millis(30)).await;
}

async fn stale_connections_are_replaced(close_after: std::time::Duration) {
    let up = EchoUpstream::start().await;
    let (addr, count, task) = one_shot_upstream(close_after).await;
    let extra = format!("[[route]]\nprefix = \"/once\"\nupstream = \"http://{addr}\"\nscopes = [\"read\"]\n");
    let gw = TestGateway::start_with(up.addr, &extra).await;
    let token = svc_token(&gw).await;
    for i in 0..10 {
        let resp = gw.client().get(gw.url(&format!("/once/{i}"))).bearer_auth(&token).send().await.unwrap();
        assert_eq!(resp.status(), 200, "request {i}");
        assert_eq!(resp.text().await.unwrap(), "ok");
        // Let the upstream's close arrive before the next request, as it would between
        // requests that are not back to back.
        tokio::time::sleep(close_after + std::time::Duration::from_millis(30)).await;
    }
    assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 10);
    task.abort();
}

#[tokio::test]
async fn an_abandoned_response_closes_its_upstream_connection_and_the_next_request_works() {
    let (up, gw) = setup().await;
    let token = svc_token(&gw).await;
    for _ in 0..3 {
        let mut resp = gw.client().get(gw.url("/big/20000000")).bearer_auth(&token).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        // Read a little of 20 MB, then walk away.
        let first = resp.chunk().await.unwrap().unwrap();
        assert!(!first.is_empty());
        drop(resp);
        echo_get(&gw, "/api/after", &token).await;
    }
    // The abandoned connections were not reused (their responses were unfinished).
    assert!(accepted(&up) >= 2, "{}", accepted(&up));
}

// ---------------------------------------------------------------------------------------
// HEAD: headers only, on both protocols, for every answer the gateway builds itself.

/// One request over a fresh HTTP/2 connection (ALPN h2) with a raw h2 client: the response
/// head, whether its HEADERS frame ended the stream, and every DATA byte that followed.
async fn h2_exchange(
    gw: &TestGateway,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> (http::response::Parts, bool, Vec<u8>) {
    let tls = tls_connect_alpn(gw, &[b"h2"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut send, conn) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut req = http::Request::builder().method(method).uri(gw.url(path));
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let (resp, _) = send.send_request(req.body(()).unwrap(), true).unwrap();
    let resp = resp.await.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let (parts, mut body) = resp.into_parts();
    let ended = body.is_end_stream();
    let mut data = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap_or_else(|e| panic!("{method} {path}: stream error {e}"));
        let _ = body.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
    }
    (parts, ended, data)
}

/// The paths to HEAD and the status each answers with.
async fn head_cases(gw: &TestGateway, dead_route: bool) -> Vec<(&'static str, Option<String>, u16)> {
    let token = svc_token(gw).await;
    let mut cases = vec![
        ("/.well-known/jwks.json", None, 200),
        ("/.well-known/oauth-authorization-server", None, 200),
        ("/oauth/token", None, 405),
        ("/api/x", None, 401),
        ("/admin/x", Some(token.clone()), 403),
        ("/nowhere", Some(token.clone()), 404),
        // Proxied: the upstream's HEAD answer has no body already.
        ("/api/head", Some(token.clone()), 200),
    ];
    if dead_route {
        cases.push(("/dead/x", Some(token), 502));
    }
    cases
}

/// The test gateway plus a `/dead` route to a closed port (for 502 answers).
async fn gateway_with_dead_route() -> (EchoUpstream, TestGateway) {
    let up = EchoUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(dir.path());
    let dead = "[[route]]\nprefix = \"/dead\"\nupstream = \"http://127.0.0.1:1\"\nscopes = [\"read\"]\n";
    let text = format!("{}\n{dead}", config_toml(dir.path(), &pki, up.addr, ""));
    let gw = TestGateway::start_text(dir, pki, &text).await;
    (up, gw)
}

#[tokio::test]
async fn head_over_http2_sends_headers_only() {
    let (_up, gw) = gateway_with_dead_route().await;
    for (path, token, status) in head_cases(&gw, true).await {
        let (get, _, get_body) = h2_exchange(&gw, "GET", path, token.as_deref()).await;
        assert_eq!(get.status, status, "GET {path}");
        let (head, ended, body) = h2_exchange(&gw, "HEAD", path, token.as_deref()).await;
        assert_eq!(head.status, status, "HEAD {path}");
        assert!(body.is_empty(), "HEAD {path} sent a body over HTTP/2: {:?}", String::from_utf8_lossy(&body));
        assert!(ended, "HEAD {path}: the HEADERS frame must end the stream");
        // What GET would send (our bodies have a known size); a proxied one is the upstream's.
        if path != "/api/head" {
            let len = head.headers.get("content-length").map(|v| v.to_str().unwrap().to_string());
            assert_eq!(len, Some(get_body.len().to_string()), "HEAD {path}");
        }
        assert_eq!(head.headers.get("content-type"), get.headers.get("content-type"), "HEAD {path}");
    }
}

#[tokio::test]
async fn head_over_http1_sends_headers_only() {
    let (_up, gw) = gateway_with_dead_route().await;
    for (path, token, status) in head_cases(&gw, true).await {
        let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
        let head = format!("HEAD {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n");
        let mut s = tls_connect(&gw).await;
        s.write_all(format!("{head}\r\n").as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf).await;
        let end = buf.windows(4).position(|w| w == b"\r\n\r\n").expect("a response head") + 4;
        let text = String::from_utf8_lossy(&buf[..end]);
        assert!(text.starts_with(&format!("HTTP/1.1 {status} ")), "HEAD {path}: {text}");
        assert!(buf[end..].is_empty(), "HEAD {path} sent a body: {:?}", String::from_utf8_lossy(&buf[end..]));
    }
}

// ---------------------------------------------------------------------------------------
// ALPN decides the protocol on TLS: no sniffing of the first bytes there.

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// Offer `alpn`, send `bytes`, and read what comes back until the gateway closes. A
/// gateway that neither answers nor closes within 5 s fails the test.
async fn tls_bytes(gw: &TestGateway, alpn: &[&[u8]], bytes: &[u8]) -> (Option<Vec<u8>>, Vec<u8>) {
    let (negotiated, buf, _) = tls_bytes_and_end(gw, alpn, bytes).await;
    (negotiated, buf)
}

/// [`tls_bytes`], with how the read ended: `Ok` on a TLS close_notify, or the error.
async fn tls_bytes_and_end(
    gw: &TestGateway,
    alpn: &[&[u8]],
    bytes: &[u8],
) -> (Option<Vec<u8>>, Vec<u8>, std::io::Result<usize>) {
    let mut s = tls_connect_alpn(gw, alpn).await;
    let negotiated = s.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    s.write_all(bytes).await.unwrap();
    s.flush().await.unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    let Ok(end) = read else {
        panic!("the gateway neither answered nor closed: {:?}", String::from_utf8_lossy(&buf));
    };
    (negotiated, buf, end)
}

#[tokio::test]
async fn h2_by_alpn_is_never_served_http1() {
    let (_up, gw) = setup().await;
    let (alpn, buf) = tls_bytes(&gw, &[b"h2"], b"GET /.well-known/jwks.json HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
    assert!(!buf.starts_with(b"HTTP/"), "answered HTTP/1.x on an h2 connection: {:?}", String::from_utf8_lossy(&buf));
    // If anything came back, it is HTTP/2 frames (a GOAWAY), not an HTTP/1 message.
    if buf.len() >= 9 {
        assert!(matches!(buf[3], 0x04 | 0x07), "first frame type {:#x}", buf[3]);
    }
}

#[tokio::test]
async fn http1_by_alpn_or_no_alpn_is_never_served_h2() {
    let (_up, gw) = setup().await;
    for alpn in [&[&b"http/1.1"[..]][..], &[]] {
        let (negotiated, buf, end) = tls_bytes_and_end(&gw, alpn, H2_PREFACE).await;
        assert_eq!(negotiated.as_deref(), alpn.first().copied());
        // An HTTP/2 server answers the preface with a SETTINGS frame (type 4). The HTTP/1.1
        // server (hyper) reads it as an HTTP/2.0 request line it does not speak, and closes
        // the connection without a byte: no SETTINGS, no response. A stall fails above
        // (read timeout); a close is a TCP FIN without TLS close_notify.
        assert!(buf.is_empty(), "ALPN {alpn:?}: answered the h2 preface with {buf:?}");
        match end {
            Ok(_) => {}
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "ALPN {alpn:?}: {e}"),
        }
        // And HTTP/1.1 itself works there.
        let (_, buf) = tls_bytes(
            &gw,
            alpn,
            b"GET /.well-known/jwks.json HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(buf.starts_with(b"HTTP/1.1 200 "), "ALPN {alpn:?}: {:?}", String::from_utf8_lossy(&buf));
    }
}

#[tokio::test]
async fn plaintext_listener_still_takes_h2_prior_knowledge() {
    let (_up, gw) = setup().await;
    let mut s = TcpStream::connect(gw.http).await.unwrap();
    s.write_all(H2_PREFACE).await.unwrap();
    let mut head = [0u8; 9];
    tokio::time::timeout(std::time::Duration::from_secs(5), s.read_exact(&mut head)).await.unwrap().unwrap();
    assert_eq!(head[3], 0x04, "a SETTINGS frame first: {head:?}");
}

// ---------------------------------------------------------------------------------------
// Strict-Transport-Security: opt-in, TLS connections only.

#[tokio::test]
async fn hsts_is_sent_on_tls_responses_only_when_configured() {
    const HSTS: &str = "max-age=31536000; includeSubDomains";
    let up = EchoUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(dir.path());
    let text = config_toml(dir.path(), &pki, up.addr, "").replace("[limits]", &format!("hsts = {HSTS:?}\n\n[limits]"));
    let gw = TestGateway::start_text(dir, pki, &text).await;
    let token = svc_token(&gw).await;
    let sts = |resp: &reqwest::Response| {
        resp.headers()
            .get_all("strict-transport-security")
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    for http2 in [false, true] {
        let client = https_client(&gw.pki.ca_pem, http2);
        for (path, auth, status) in [
            ("/.well-known/jwks.json", false, 200),
            ("/api/x", true, 200),
            ("/api/x", false, 401),
            ("/nowhere", true, 404),
        ] {
            let mut req = client.get(gw.url(path));
            if auth {
                req = req.bearer_auth(&token);
            }
            let resp = req.send().await.unwrap();
            assert_eq!(resp.status(), status, "{path}");
            assert_eq!(sts(&resp), vec![HSTS], "{path} over TLS (h2: {http2})");
        }
        let resp =
            client.post(gw.url("/oauth/token")).form(&[("grant_type", "client_credentials")]).send().await.unwrap();
        assert_eq!(resp.status(), 401);
        assert_eq!(sts(&resp), vec![HSTS], "/oauth/token over TLS");
    }
    // Never on the plaintext listener, ours or proxied.
    let plain = reqwest::Client::builder().no_proxy().build().unwrap();
    for (path, auth) in [("/.well-known/jwks.json", false), ("/api/x", true), ("/api/x", false)] {
        let mut req = plain.get(gw.http_url(path));
        if auth {
            req = req.bearer_auth(&token);
        }
        let resp = req.send().await.unwrap();
        assert!(sts(&resp).is_empty(), "{path} over plaintext: {:?}", sts(&resp));
    }
}

#[tokio::test]
async fn hsts_is_off_by_default() {
    let (_up, gw) = setup().await;
    let token = svc_token(&gw).await;
    for path in ["/.well-known/jwks.json", "/api/x"] {
        let resp = gw.client().get(gw.url(path)).bearer_auth(&token).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert!(resp.headers().get("strict-transport-security").is_none(), "{path}");
    }
}
