//! The gateway against its upstreams: failures and timeouts (502/504), streamed bodies and
//! their limits, kept-alive and stale connections, HEAD, and an upstream killed mid-load.

mod common;

use bytes::Bytes;
use common::*;
use futures_util::StreamExt;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

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
    // A pooled connection keeps its timer between requests: one left idle past the
    // timeout serves its next request, and a slow answer on a reused one is a 504 too.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let echo = echo_get(&gw, "/slow/10", &token).await;
    assert_eq!(echo.path, "/slow/10");
    let started = std::time::Instant::now();
    let resp = gw.client().get(gw.url("/slow/5000")).bearer_auth(&token).send().await.unwrap();
    let (status, _, v) = refused(resp).await;
    assert_eq!((status, v["error"].as_str()), (504, Some("gateway_timeout")));
    assert!(started.elapsed() >= std::time::Duration::from_millis(1900), "{:?}", started.elapsed());
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
    // One pool per worker thread in the per-core model: one connection per worker at most.
    let workers = gw.accepted.counts().len();
    assert!(
        (1..=workers).contains(&accepted(&up)),
        "60 sequential requests should share one upstream connection per worker ({workers}), not {}",
        accepted(&up)
    );

    // Concurrent requests open at most one connection each, and all of them are kept.
    let burst = || {
        futures_util::future::join_all((0..8).map(|i| {
            let (gw, token) = (&gw, &token);
            async move { echo_get(gw, &format!("/slow/50?{i}"), token).await }
        }))
    };
    burst().await;
    let after_burst = accepted(&up);
    assert!((2..=8 + workers).contains(&after_burst), "8 concurrent requests opened {after_burst} connections in all");
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

/// An upstream that answers with the request's path, and reads request bodies as real
/// ones do, well or badly: on `/early/...` it answers at once and reads the body afterwards
/// (Node.js does, HTTP/1.1 allows it); on `/cl0/...` it answers without ever reading the
/// body (a static file handler), so the body's bytes are read as the next request.
async fn body_careless_upstream() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else { continue };
            tokio::spawn(async move {
                let mut buf: Vec<u8> = Vec::new();
                let mut chunk = [0u8; 65536];
                loop {
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                    let head = String::from_utf8_lossy(&buf[..end]).to_string();
                    buf.drain(..end);
                    let path = head.split(' ').nth(1).unwrap_or("").to_string();
                    let length: usize = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string())
                        })
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    let answer = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{path}", path.len());
                    if path.contains("/cl0/") {
                        if s.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    let early = path.contains("/early/");
                    if early && s.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                    while buf.len() < length {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    buf.drain(..length);
                    if !early && s.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, task)
}

/// An upstream that answers before reading the request body, while the caller is still
/// uploading it: that connection is not given to the next request (it would wait behind
/// the upload until `upstream_timeout`, a 504), whichever worker it lands on.
#[tokio::test]
async fn a_connection_still_carrying_an_upload_serves_no_other_request() {
    let up = EchoUpstream::start().await;
    let (addr, task) = body_careless_upstream().await;
    let extra = format!("[[route]]\nprefix = \"/early\"\nupstream = \"http://{addr}\"\npublic = true\n");
    let gw = TestGateway::start_with(up.addr, &extra).await;
    // Uploads that stall halfway, each answered at once by the upstream.
    let mut uploads = Vec::new();
    for i in 0..4 {
        let mut s = TcpStream::connect(gw.http).await.unwrap();
        let head = format!("POST /early/upload{i} HTTP/1.1\r\nhost: gw\r\ncontent-length: 1000000\r\n\r\n");
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(&[b'z'; 100]).await.unwrap();
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the gateway closed upload {i}");
            got.extend_from_slice(&chunk[..n]);
        }
        assert!(got.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&got));
        uploads.push(s);
    }
    // Other callers, each on a connection of its own (any worker): their own answer, no 504.
    for i in 0..8 {
        let path = format!("/early/after{i}");
        let resp = reqwest::Client::new().get(gw.http_url(&path)).send().await.unwrap();
        assert_eq!(resp.status(), 200, "request {i} waited behind an upload");
        assert_eq!(resp.text().await.unwrap(), path);
    }
    drop(uploads);
    task.abort();
}

/// An upstream that leaves a request body unread takes it for the next request on that
/// connection (CL.0 desync), and its answer goes to whoever sends the next request there.
/// A caller without a token, on a public route, can make that happen; it must not reach
/// requests on authenticated routes: they never share a connection with public ones.
#[tokio::test]
async fn a_public_callers_desync_never_reaches_authenticated_requests() {
    let up = EchoUpstream::start().await;
    let (addr, task) = body_careless_upstream().await;
    let extra = format!(
        "[[route]]\nprefix = \"/pubcl\"\nupstream = \"http://{addr}\"\npublic = true\n\n\
         [[route]]\nprefix = \"/apicl\"\nupstream = \"http://{addr}\"\nscopes = [\"read\"]\n"
    );
    let gw = TestGateway::start_with(up.addr, &extra).await;
    let token = svc_token(&gw).await;
    let client = reqwest::Client::new();
    // Warm an authenticated connection, so both kinds have one to reuse.
    let warm = client.get(gw.http_url("/apicl/warm")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(warm.text().await.unwrap(), "/apicl/warm");
    for round in 0..5 {
        // The smuggled request's answer lands on the connection the public POST used.
        let smuggled = "GET /apicl/smuggled HTTP/1.1\r\nhost: x\r\n\r\n";
        let attack = client.post(gw.http_url(&format!("/pubcl/cl0/{round}"))).body(smuggled).send().await.unwrap();
        assert_eq!(attack.status(), 200);
        let _ = attack.bytes().await;
        for i in 0..4 {
            let path = format!("/apicl/victim/{round}/{i}");
            let resp = reqwest::Client::new().get(gw.http_url(&path)).bearer_auth(&token).send().await.unwrap();
            assert_eq!(resp.status(), 200);
            let body = resp.text().await.unwrap();
            assert_eq!(body, path, "an authenticated request got another request's answer");
        }
    }
    task.abort();
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
// A hostile upstream.

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

// Black-box finding (stop 31): an answer with both framings went out with its
// Content-Length and the chunked body hyper decoded: cut short for an HTTP/1.1 client, a
// malformed HTTP/2 response (DATA longer than content-length) for an HTTP/2 one.
#[tokio::test]
async fn fail_closed_an_upstream_answer_with_both_transfer_encoding_and_content_length_is_502() {
    let both = fixed_upstream(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n5\r\nhello\r\n0\r\n\r\n".to_vec(),
    )
    .await;
    let gw = TestGateway::start(both.addr).await;
    for (client, url) in [
        (gw.client(), gw.http_url("/public/both")),
        (gw.client(), gw.url("/public/both")),
        (https_client(&gw.pki.ca_pem, true), gw.url("/public/both")),
    ] {
        let resp = client.get(&url).send().await.unwrap();
        assert_eq!(resp.status(), 502, "{url} {:?}", resp.version());
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["error"], "bad_gateway", "{url}");
    }
}

// ---------------------------------------------------------------------------------------
// An upstream that can be killed outright: listener and every open connection.

struct KillableUpstream {
    addr: SocketAddr,
    kill: tokio::sync::watch::Sender<bool>,
}

impl KillableUpstream {
    async fn start_on(addr: SocketAddr) -> KillableUpstream {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (kill, killed) = tokio::sync::watch::channel(false);
        let mut stop = killed.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    _ = stop.wait_for(|k| *k) => return, // drops the listener
                };
                let Ok((stream, _)) = accepted else { continue };
                let mut stop = killed.clone();
                tokio::spawn(async move {
                    let svc = service_fn(|_req: hyper::Request<hyper::body::Incoming>| async {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from_static(b"ok"))))
                    });
                    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let conn = builder.serve_connection(TokioIo::new(stream), svc);
                    // Killed: the connection is dropped mid-whatever, as a crashed process would.
                    tokio::select! {
                        _ = conn => {}
                        _ = stop.wait_for(|k| *k) => {}
                    }
                });
            }
        });
        KillableUpstream { addr, kill }
    }

    /// Stop listening and drop every connection at once; returns once the port refuses.
    async fn kill(&self) {
        let _ = self.kill.send(true);
        let closed = within(Duration::from_secs(10), async || TcpStream::connect(self.addr).await.is_err()).await;
        assert!(closed.is_some(), "the killed upstream still accepts");
    }
}

impl Drop for KillableUpstream {
    fn drop(&mut self) {
        let _ = self.kill.send(true);
    }
}

/// One proxied request of the load: when it started and what came back.
struct Sample {
    started: Instant,
    finished: Instant,
    outcome: Result<u16, String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_killed_and_restarted_mid_load_is_502_while_down_then_recovers() {
    const WORKERS: usize = 8;
    const MAX_REQUESTS: usize = 20_000;
    let up = KillableUpstream::start_on("127.0.0.1:0".parse().unwrap()).await;
    let addr = up.addr;
    let gw = TestGateway::start(addr).await;
    let token = gw.token("svc", SVC_SECRET, None).await;

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let (stop, sent, samples, token) = (stop.clone(), sent.clone(), samples.clone(), token.clone());
        let url = gw.url(&format!("/api/load/{w}"));
        let client = reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(gw.pki.ca_pem.as_bytes()).unwrap()])
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        workers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) && sent.fetch_add(1, Ordering::Relaxed) < MAX_REQUESTS {
                let started = Instant::now();
                let outcome = match client.get(&url).bearer_auth(&token).send().await {
                    Ok(r) => {
                        let status = r.status().as_u16();
                        match r.bytes().await {
                            Ok(body) if status == 502 => {
                                let v: Value = serde_json::from_slice(&body).unwrap_or_default();
                                if v["error"] == "bad_gateway" { Ok(502) } else { Err(format!("502 body {v}")) }
                            }
                            Ok(_) => Ok(status),
                            Err(e) => Err(format!("body: {e}")),
                        }
                    }
                    Err(e) => Err(e.to_string()),
                };
                samples.lock().unwrap().push(Sample { started, finished: Instant::now(), outcome });
            }
        }));
    }
    let count = |pred: &dyn Fn(&Sample) -> bool| samples.lock().unwrap().iter().filter(|s| pred(s)).count();

    let up_ok = within(Duration::from_secs(20), async || count(&|s| s.outcome == Ok(200)) >= 200).await;
    assert!(up_ok.is_some(), "load did not get going");
    up.kill().await;
    let killed = Instant::now();
    let down =
        within(Duration::from_secs(20), async || count(&|s| s.started > killed && s.outcome == Ok(502)) >= 200).await;
    assert!(down.is_some(), "no 502s while the upstream was down");
    let restarted_at = Instant::now();
    let up2 = KillableUpstream::start_on(addr).await;
    // Full recovery: a long run of successes among requests started after the restart.
    let recovered = within(Duration::from_secs(20), async || {
        let all = samples.lock().unwrap();
        let after: Vec<_> = all.iter().filter(|s| s.started > restarted_at).collect();
        after.len() >= 300 && after[after.len() - 300..].iter().all(|s| s.outcome == Ok(200))
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        tokio::time::timeout(Duration::from_secs(20), w).await.expect("a worker is stuck").unwrap();
    }
    assert!(recovered.is_some(), "no full recovery after the restart");

    let all = samples.lock().unwrap();
    let errors: Vec<_> = all.iter().filter_map(|s| s.outcome.as_ref().err()).collect();
    assert!(
        errors.is_empty(),
        "{} requests got no clean answer, e.g. {:?}",
        errors.len(),
        &errors[..errors.len().min(3)]
    );
    let odd: Vec<_> = all.iter().filter(|s| !matches!(s.outcome, Ok(200 | 502))).map(|s| &s.outcome).collect();
    assert!(odd.is_empty(), "only 200 and 502 expected: {odd:?}");
    let while_down: Vec<_> = all
        .iter()
        .filter(|s| s.started > killed && s.finished < restarted_at && s.outcome != Ok(502))
        .map(|s| (s.started - killed, &s.outcome))
        .collect();
    assert!(while_down.is_empty(), "requests made while the upstream was down must all be 502: {while_down:?}");
    eprintln!(
        "upstream kill/restart: {} requests, {} x 502, recovered {:?} after the restart",
        all.len(),
        all.iter().filter(|s| s.outcome == Ok(502)).count(),
        recovered.unwrap()
    );
    assert!(!gw.task.as_ref().unwrap().is_finished(), "the gateway stopped");
    drop(up2);
}

/// A connection waiting for its upstream's answer is not idle: an answer that comes within
/// `upstream_timeout` reaches the client even when `idle_timeout` is shorter (a black-box
/// finding: the connection was closed under the request, with no answer at all), over
/// HTTP/1.1, TLS and HTTP/2.
#[tokio::test]
async fn a_slow_answer_within_the_upstream_timeout_outlasts_a_shorter_idle_timeout() {
    let up = EchoUpstream::start().await;
    // upstream_timeout is 3 s; the answer takes 1.8 s; idle_timeout is 1 s (the tick: 250 ms).
    let gw = gateway_with_limits(up.addr, "", "idle_timeout = \"1s\"\n").await;
    gw.rewrite_config(|t| t.replace("upstream_timeout = \"2s\"", "upstream_timeout = \"3s\""));
    assert_eq!(gw.gateway.runtime().config.limits.upstream_timeout, Duration::from_secs(3));
    let token = svc_token(&gw).await;
    let h2 = https_client(&gw.pki.ca_pem, true);
    for (client, url) in
        [(gw.client(), gw.http_url("/slow/1800")), (gw.client(), gw.url("/slow/1800")), (h2, gw.url("/slow/1800"))]
    {
        let resp = client.get(&url).bearer_auth(&token).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{url}");
        let echo: Echo = resp.json().await.unwrap();
        assert_eq!(echo.path, "/slow/1800");
    }
    // An idle connection is still closed: a raw one that sent nothing after its answer.
    let mut s = TcpStream::connect(gw.http).await.unwrap();
    s.write_all(format!("GET /api/x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    assert!(r.is_ok(), "an idle connection stayed open");
    assert!(buf.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf));
}

#[tokio::test]
async fn upstream_that_accepts_but_never_answers_is_504_within_the_timeout() {
    // Accepts, then holds every connection without reading or writing a byte.
    let hole = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hole_addr = hole.local_addr().unwrap();
    let held: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
    let keep = held.clone();
    let accept = tokio::spawn(async move {
        while let Ok((s, _)) = hole.accept().await {
            keep.lock().unwrap().push(s);
        }
    });
    let up = EchoUpstream::start().await;
    let extra = format!("[[route]]\nprefix = \"/hole\"\nupstream = \"http://{hole_addr}\"\nscopes = [\"read\"]\n");
    let gw = gateway_with_limits(up.addr, &extra, "").await;
    let gw = {
        // The common config has upstream_timeout = "2s"; make it 1 s.
        let text = std::fs::read_to_string(&gw.config_path)
            .unwrap()
            .replace("upstream_timeout = \"2s\"", "upstream_timeout = \"1s\"");
        gw.rewrite_config(|_| text);
        gw
    };
    assert_eq!(gw.gateway.runtime().config.limits.upstream_timeout, Duration::from_secs(1));
    let token = gw.token("svc", SVC_SECRET, None).await;
    let client = gw.client();
    let started = Instant::now();
    let results = futures_util::stream::iter(0..20)
        .map(|i| {
            let (client, token, url) = (&client, &token, gw.url(&format!("/hole/{i}")));
            async move {
                let t = Instant::now();
                let resp = client.get(&url).bearer_auth(token).send().await.unwrap();
                let status = resp.status().as_u16();
                let v: Value = resp.json().await.unwrap();
                (status, v["error"].as_str().unwrap_or_default().to_string(), t.elapsed())
            }
        })
        .buffer_unordered(20)
        .collect::<Vec<_>>()
        .await;
    for (status, error, took) in &results {
        assert_eq!((*status, error.as_str()), (504, "gateway_timeout"));
        assert!(*took >= Duration::from_millis(950) && *took < Duration::from_secs(5), "answered after {took:?}");
    }
    assert!(started.elapsed() < Duration::from_secs(8), "20 concurrent timeouts took {:?}", started.elapsed());
    assert!(!held.lock().unwrap().is_empty(), "the black hole accepted nothing");
    // Nothing else is held up.
    let resp = client.get(gw.url("/api/after")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    accept.abort();
}
