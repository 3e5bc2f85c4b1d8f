//! Which requests reach which upstream: route prefixes, strip_prefix and methods, public
//! routes, paths and hosts that are refused before routing, and the listeners and HTTP
//! versions the proxy path is served on.

mod common;

use common::*;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

// ---------------------------------------------------------------------------------------
// Forwarding a valid request.

#[tokio::test]
async fn valid_token_reaches_upstream_with_identity_headers_and_request_intact() {
    let (_up, gw) = setup().await;
    let token = gw.token("svc", SVC_SECRET, Some("read write")).await;
    let jti = claims(&token)["jti"].as_str().unwrap().to_string();
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

#[tokio::test]
async fn public_route_needs_no_token_and_strips_spoofed_identity() {
    let (_up, gw) = setup().await;
    let mut req = gw.client().get(gw.url("/public/page?a=b"));
    for name in IDENTITY_HEADERS {
        req = req.header(name, "forged");
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let echo: Echo = resp.json().await.unwrap();
    assert_eq!(echo.path, "/public/page");
    assert_eq!(echo.query.as_deref(), Some("a=b"));
    for name in IDENTITY_HEADERS {
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

#[tokio::test]
async fn http2_over_tls_is_proxied() {
    let (_up, gw) = setup().await;
    let token = svc_token(&gw).await;
    let jti = claims(&token)["jti"].as_str().unwrap().to_string();
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
    assert_eq!(www.as_deref(), Some(BEARER_CHALLENGE));
    // Default client negotiates h2 by ALPN as well.
    let resp = gw.client().get(gw.url("/api/x")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
}

#[tokio::test]
async fn plaintext_listener_serves_the_proxy_path() {
    let (_up, gw) = setup().await;
    let token = svc_token(&gw).await;
    let jti = claims(&token)["jti"].as_str().unwrap().to_string();
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
// Hostile paths, hosts and methods: refused before any route is chosen.

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
        let got = raw_bytes(gw.http, req.as_bytes()).await;
        assert_eq!(statuses(&got), vec![expected], "{path}: {}", String::from_utf8_lossy(&got));
    }
    // Absolute-form targets are checked the same way.
    let req = format!(
        "GET http://localhost/api/../admin HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    );
    assert_eq!(statuses(&raw_bytes(gw.http, req.as_bytes()).await), vec![400]);
    // Only the case variant was forwarded, under /api where it belongs.
    assert_eq!(rec.paths(), vec!["/API/x".to_string()]);
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
        let got = raw_bytes(gw.http, get(host).as_bytes()).await;
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
        let got = raw_bytes(gw.http, get(host).as_bytes()).await;
        assert_eq!(statuses(&got), vec![400], "{host:?}: {}", String::from_utf8_lossy(&got));
    }
    // Two Host headers (RFC 9112 §3.2), the same or different.
    for second in ["internal.example.com", "other.example"] {
        let req = format!(
            "GET /hosted/x HTTP/1.1\r\nHost: internal.example.com\r\nHost: {second}\r\nConnection: close\r\n\r\n"
        );
        let got = raw_bytes(gw.http, req.as_bytes()).await;
        assert_eq!(statuses(&got), vec![400], "{second}: {}", String::from_utf8_lossy(&got));
    }
    // X-Forwarded-Host carries the normalised authority.
    for (host, forwarded) in
        [("Localhost.:8080", "localhost:8080"), ("[::1]:8443", "[::1]:8443"), ("127.0.0.1", "127.0.0.1")]
    {
        let echo = echo_of(&raw_bytes(gw.http, get(host).replace("/hosted/x", "/public/h").as_bytes()).await);
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

#[tokio::test]
async fn fail_closed_trace_is_405_unless_a_route_lists_it() {
    let up = EchoUpstream::start().await;
    let route = format!(
        "[[route]]\nprefix = \"/traced\"\nmethods = [\"GET\", \"TRACE\"]\nupstream = \"http://{}\"\npublic = true\n",
        up.addr
    );
    let gw = TestGateway::start_with(up.addr, &route).await;
    let got = raw_bytes(gw.http, b"TRACE /public/t HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    assert_eq!(statuses(&got), vec![405], "{}", String::from_utf8_lossy(&got));
    let head = head_of(&got);
    assert!(head.contains("allow: ") && !head.contains("trace"), "{head}");
    assert!(String::from_utf8_lossy(&got).contains("\"method_not_allowed\""));
    let (status, _) = h2_request(&gw, "TRACE", &gw.url("/public/t"), &[]).await;
    assert_eq!(status, 405);
    let got = raw_bytes(gw.http, b"TRACE /traced/t HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
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
        let got = raw_bytes(gw.http, req.as_bytes()).await;
        assert_eq!(statuses(&got), vec![400], "{path}: {}", String::from_utf8_lossy(&got));
    }
    // Literal fullwidth dots are refused too (or never parsed as a target at all).
    for path in ["/public/．．/admin", "/public/︰/admin", "/public/ａｄｍｉｎ/x", "/public/x\u{037E}y"] {
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let got = raw_bytes(gw.http, req.as_bytes()).await;
        assert_eq!(statuses(&got), vec![400], "{path}: {}", String::from_utf8_lossy(&got));
    }
    assert!(rec.paths().is_empty(), "{:?}", rec.paths());
    let got = raw_bytes(gw.http, b"GET /public/caf%C3%A9 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    assert_eq!(statuses(&got), vec![200]);
    let got =
        raw_bytes(gw.http, b"GET /public/%E6%97%A5%E6%9C%AC HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    assert_eq!(statuses(&got), vec![200]);
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
        let got = raw_bytes(gw.http, req.as_bytes()).await;
        assert_eq!(statuses(&got), vec![405], "{method}: {}", String::from_utf8_lossy(&got));
        let (status, _) = h2_request(&gw, method, &gw.url("/strict/x"), &[]).await;
        assert_eq!(status, 405, "{method} over HTTP/2");
    }
    // The upper-case DELETE still needs the admin scope; GET still reaches the public route.
    let got = raw_bytes(gw.http, b"DELETE /strict/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    assert_eq!(statuses(&got), vec![401]);
    let got = raw_bytes(gw.http, b"GET /strict/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
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
        let got = raw_bytes(gw.http, format!("GET {path} HTTP/1.1\r\nConnection: close\r\n\r\n").as_bytes()).await;
        assert_eq!(statuses(&got), vec![400], "no Host, {path}: {}", String::from_utf8_lossy(&got));
        let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        let got = raw_bytes(gw.http, req.as_bytes()).await;
        assert_eq!(statuses(&got), vec![400], "two Hosts, {path}: {}", String::from_utf8_lossy(&got));
    }
    let got = raw_bytes(gw.http, b"GET /public/x HTTP/1.0\r\n\r\n").await;
    assert_eq!(echo_of(&got).path, "/public/x", "HTTP/1.0 may omit Host");
    // Second black-box pass: the OAuth endpoints took any Host value; HTTP/2 with neither
    // `:authority` nor `host` was served (RFC 9113 §8.3.1: malformed).
    for path in ["/.well-known/jwks.json", "/oauth/token", "/public/x"] {
        for host in ["a@evil.com", "evil.com/x?y", "", "x, y"] {
            let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
            let got = raw_bytes(gw.http, req.as_bytes()).await;
            assert_eq!(statuses(&got), vec![400], "Host {host:?}, {path}: {}", String::from_utf8_lossy(&got));
        }
        let (status, _) = h2_request(&gw, "GET", path, &[]).await;
        assert_eq!(status, 400, "HTTP/2 without :authority or host, {path}");
        let (status, _) = h2_request(&gw, "GET", &gw.url(path), &[("host", b"other.example")]).await;
        assert_eq!(status, 400, "HTTP/2 host differs from :authority, {path}");
    }
}

// ---------------------------------------------------------------------------------------
// RFC 8414 §3.1: an issuer with a path serves its endpoints where the metadata says, and
// both well-known forms; the OAuth endpoints take precedence over a route on that path.

#[tokio::test]
async fn an_issuer_path_serves_the_endpoints_and_both_well_known_forms() {
    let up = EchoUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(dir.path());
    let issuer = "https://gateway.test/tenant1";
    let mut text = config_toml(dir.path(), &pki, up.addr, "")
        .replace(&format!("issuer = \"{ISSUER}\""), &format!("issuer = \"{issuer}\""));
    text.push_str(&format!("\n[[route]]\nprefix = \"/tenant1\"\nupstream = \"http://{}\"\npublic = true\n", up.addr));
    let gw = TestGateway::start_text(dir, pki, &text).await;
    let client = gw.client();

    for path in [
        "/.well-known/oauth-authorization-server/tenant1",
        "/tenant1/.well-known/oauth-authorization-server",
        "/.well-known/oauth-authorization-server",
    ] {
        let doc = get_json(&client, &gw.url(path)).await;
        assert_eq!(doc["issuer"], issuer, "{path}");
        assert_eq!(doc["token_endpoint"], format!("{issuer}/oauth/token"), "{path}");
        assert_eq!(doc["jwks_uri"], format!("{issuer}/.well-known/jwks.json"), "{path}");
    }
    // Every advertised endpoint answers under the issuer's path (the gateway, not the route).
    let resp = client
        .post(gw.url("/tenant1/oauth/token"))
        .basic_auth("svc", Some(SVC_SECRET))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: serde_json::Value = resp.json().await.unwrap();
    let token = v["access_token"].as_str().unwrap().to_string();
    assert_eq!(claims(&token)["iss"], issuer);
    let jwks = get_json(&client, &gw.url("/tenant1/.well-known/jwks.json")).await;
    assert!(jwks["keys"].as_array().is_some_and(|k| !k.is_empty()));
    for path in ["/tenant1/oauth/revoke", "/tenant1/oauth/introspect"] {
        let resp = client
            .post(gw.url(path))
            .basic_auth("svc", Some(SVC_SECRET))
            .form(&[("token", token.as_str())])
            .send()
            .await
            .unwrap();
        // Who may introspect is another rule; here only that the gateway answered, not the route.
        assert_ne!(resp.status(), 404, "{path}");
        let body = resp.text().await.unwrap();
        assert!(!body.contains("\"body_sha256\""), "{path} was proxied: {body}");
    }
    let page = Browser::new(&gw)
        .get(&gw.url(&format!(
            "/tenant1/oauth/authorize?response_type=code&client_id=webapp&redirect_uri={}&state=s",
            "https%3A%2F%2Fapp.test%2Fcallback"
        )))
        .await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("action=\"/tenant1/oauth/authorize\""), "{}", page.body);
    // Anything else under the prefix is the route's; look-alike prefixes are not ours.
    for path in ["/tenant1/other", "/tenant1/oauth/token/x", "/tenant1/oauth/tokens"] {
        let resp = client.get(gw.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        let echo: Echo = resp.json().await.unwrap();
        assert_eq!(echo.path, path);
    }
    for path in ["/tenant1x/oauth/token", "/.well-known/oauth-authorization-server/tenant2"] {
        let resp = client.get(gw.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), 404, "{path}");
    }
}

#[test]
fn an_issuer_with_a_query_or_fragment_is_refused() {
    for issuer in ["https://gw.test/t?x=1", "https://gw.test/t#f", "https://gw.test/?", "https://u:p@gw.test/t"] {
        let text = format!(
            "issuer = \"{issuer}\"\n[[listener]]\naddress = \"127.0.0.1:0\"\ntls = false\n\
             [[key]]\nid = \"k\"\nfile = \"/nonexistent/k.pem\"\n"
        );
        let e = portcullis::config::Config::parse(&text, std::path::Path::new("t.toml")).unwrap_err().to_string();
        assert!(e.starts_with("t.toml:1:") && e.contains("issuer"), "{issuer}: {e}");
    }
}

#[tokio::test]
async fn an_endpoint_path_that_begins_with_the_issuer_path_is_served_as_configured_and_as_advertised() {
    let up = EchoUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(dir.path());
    let text = config_toml(dir.path(), &pki, up.addr, "[endpoints]\ntoken = \"/t1/oauth/token\"\n")
        .replace(&format!("issuer = \"{ISSUER}\""), "issuer = \"https://gateway.test/t1\"");
    let gw = TestGateway::start_text(dir, pki, &text).await;
    let doc = get_json(&gw.client(), &gw.url("/.well-known/oauth-authorization-server/t1")).await;
    assert_eq!(doc["token_endpoint"], "https://gateway.test/t1/t1/oauth/token");
    for path in ["/t1/oauth/token", "/t1/t1/oauth/token"] {
        let resp = gw
            .client()
            .post(gw.url(path))
            .basic_auth("svc", Some(SVC_SECRET))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{path}");
    }
}
