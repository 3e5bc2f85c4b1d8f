//! Hostile input end to end: rate limits against brute force, request smuggling, invalid
//! transfer codings, oversized and slow requests, connection limits, and random input from
//! a property-based generator. Each case asserts the exact rejection.

mod common;

use bytes::Bytes;
use common::*;
use futures_util::StreamExt;
use serde_json::Value;
use std::net::IpAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

// ---------------------------------------------------------------------------------------
// Rate limits.

/// The gateway's answer when it throttles a token request.
fn assert_slow_down(status: u16, retry_after: Option<&str>, v: &Value, max_secs: u64, label: &str) {
    assert_eq!((status, v["error"].as_str()), (429, Some("slow_down")), "{label}: {v}");
    assert!(v["error_description"].as_str().unwrap().starts_with("Too many requests"), "{label}: {v}");
    let secs: u64 = retry_after.unwrap_or_else(|| panic!("{label}: no Retry-After")).parse().unwrap();
    assert!((1..=max_secs).contains(&secs), "{label}: Retry-After {secs}");
}

async fn token_raw(
    client: &reqwest::Client,
    url: &str,
    basic: (&str, &str),
    headers: &[(&str, &str)],
) -> (u16, Option<String>, Value) {
    let mut req = client.post(url).basic_auth(basic.0, Some(basic.1)).form(&[("grant_type", "client_credentials")]);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let retry = resp.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
    (status, retry, resp.json().await.unwrap())
}

#[tokio::test]
async fn rate_limit_client_secret_brute_force_is_throttled_without_locking_out_other_clients() {
    let up = EchoUpstream::start().await;
    let extra = "[rate_limit]\nclient_failures = 3\nclient_failures_window = \"1h\"\n";
    let gw = TestGateway::start_with(up.addr, extra).await;
    let (c, url) = (gw.client(), gw.url("/oauth/token"));
    // Successes do not count against a client.
    for _ in 0..6 {
        assert_eq!(token_raw(&c, &url, ("svc", SVC_SECRET), &[]).await.0, 200);
    }
    for i in 0..3 {
        let (status, _, v) = token_raw(&c, &url, ("svc", &format!("guess-{i}")), &[]).await;
        assert_eq!((status, v["error"].as_str()), (401, Some("invalid_client")), "guess {i}");
    }
    let (status, retry, v) = token_raw(&c, &url, ("svc", "guess-3"), &[]).await;
    assert_slow_down(status, retry.as_deref(), &v, 1200, "fourth guess");
    // While its secret is under attack the client itself is throttled, before any argon2 work...
    let (status, retry, v) = token_raw(&c, &url, ("svc", SVC_SECRET), &[]).await;
    assert_slow_down(status, retry.as_deref(), &v, 1200, "svc during the attack");
    // ...but no other client is: their budgets are their own.
    assert_eq!(token_raw(&c, &url, ("linked", OTHER_SECRET), &[]).await.0, 200);
    let (status, _, v) = token_raw(&c, &url, ("linked", "wrong"), &[]).await;
    assert_eq!((status, v["error"].as_str()), (401, Some("invalid_client")));
    assert_eq!(token_raw(&c, &url, ("linked", OTHER_SECRET), &[]).await.0, 200);
    assert_eq!(counter(&gw, "portcullis_rate_limited_total{endpoint=\"token\"}").await, 2.0);
}

#[tokio::test]
async fn rate_limit_per_source_ip_counts_a_failure_as_failure_cost_requests() {
    let up = EchoUpstream::start().await;
    let extra = "[rate_limit]\nip_burst = 10\nip_rate = 1\nip_window = \"1h\"\nfailure_cost = 5\n";
    let gw = TestGateway::start_with(up.addr, extra).await;
    let (c, url) = (gw.client(), gw.url("/oauth/token"));
    assert_eq!(token_raw(&c, &url, ("svc", SVC_SECRET), &[]).await.0, 200); // 9 left
    let (status, _, v) = token_raw(&c, &url, ("nobody", "x"), &[]).await; // 4 left
    assert_eq!((status, v["error"].as_str()), (401, Some("invalid_client")));
    for i in 0..4 {
        assert_eq!(token_raw(&c, &url, ("svc", SVC_SECRET), &[]).await.0, 200, "request {i}");
    }
    let started = Instant::now();
    let (status, retry, v) = token_raw(&c, &url, ("svc", SVC_SECRET), &[]).await;
    assert_slow_down(status, retry.as_deref(), &v, 3600, "after the budget");
    let secs: u64 = retry.unwrap().parse().unwrap();
    assert!(secs + started.elapsed().as_secs() + 60 >= 3600, "one unit refills in an hour: {secs}");
    // The plaintext listener is the same source: same bucket.
    let plain = reqwest::Client::builder().no_proxy().build().unwrap();
    let (status, retry, v) = token_raw(&plain, &gw.http_url("/oauth/token"), ("svc", SVC_SECRET), &[]).await;
    assert_slow_down(status, retry.as_deref(), &v, 3600, "plaintext");
    // The login form has its own per-IP bucket.
    let mut b = Browser::new(&gw);
    let q = [("response_type", "code"), ("client_id", "first"), ("state", "s")];
    let login = b.get(&authorize_url(&gw, &q)).await;
    let done = b.submit(&gw, &login, &[("username", "alice"), ("password", ALICE_PASSWORD)]).await;
    assert_eq!(done.status, 303, "{}", done.body);
}

#[tokio::test]
async fn rate_limit_source_ip_comes_from_x_forwarded_for_only_through_a_trusted_proxy() {
    let up = EchoUpstream::start().await;
    let extra = "[proxy]\ntrusted_proxies = [\"127.0.0.2\"]\n\
                 [rate_limit]\nip_burst = 2\nip_rate = 1\nip_window = \"1h\"\nfailure_cost = 1\n";
    let gw = TestGateway::start_with(up.addr, extra).await;
    let url = gw.http_url("/oauth/token");
    let from =
        |ip: &str| reqwest::Client::builder().no_proxy().local_address(ip.parse::<IpAddr>().unwrap()).build().unwrap();
    let (direct, proxy) = (from("127.0.0.1"), from("127.0.0.2"));
    // An untrusted peer's X-Forwarded-For is ignored: every value shares the peer's bucket.
    for (i, xff) in ["198.51.100.1", "198.51.100.2", "198.51.100.3"].iter().enumerate() {
        let (status, _, _) = token_raw(&direct, &url, ("svc", SVC_SECRET), &[("x-forwarded-for", xff)]).await;
        assert_eq!(status, if i < 2 { 200 } else { 429 }, "spoofed {xff}");
    }
    // Through the trusted proxy, each original client has its own bucket.
    for xff in ["198.51.100.1", "198.51.100.1"] {
        assert_eq!(token_raw(&proxy, &url, ("svc", SVC_SECRET), &[("x-forwarded-for", xff)]).await.0, 200);
    }
    let (status, retry, v) = token_raw(&proxy, &url, ("svc", SVC_SECRET), &[("x-forwarded-for", "198.51.100.1")]).await;
    assert_slow_down(status, retry.as_deref(), &v, 3600, "third from 198.51.100.1");
    let xff = [("x-forwarded-for", "6.6.6.6, 198.51.100.2")];
    assert_eq!(token_raw(&proxy, &url, ("svc", SVC_SECRET), &xff).await.0, 200, "nearest untrusted hop counts");
    assert_eq!(token_raw(&proxy, &url, ("svc", SVC_SECRET), &[]).await.0, 200, "the proxy's own requests");
}

#[tokio::test]
async fn rate_limit_login_brute_force_is_throttled_per_username_only() {
    let up = EchoUpstream::start().await;
    let extra = format!(
        "[rate_limit]\nuser_failures = 3\nuser_failures_window = \"1h\"\n\n\
         [[user]]\nusername = \"carol\"\npassword_hash = \"{ALICE_HASH}\"\n"
    );
    let gw = TestGateway::start_with(up.addr, &extra).await;
    let q = [("response_type", "code"), ("client_id", "first"), ("state", "s")];
    let mut b = Browser::new(&gw);
    let mut page = b.get(&authorize_url(&gw, &q)).await;
    for user in ["alice", "mallory"] {
        for i in 0..3 {
            page = b.submit(&gw, &page, &[("username", user), ("password", "guess")]).await;
            assert_eq!(page.status, 401, "{user} guess {i}: {}", page.body);
            assert!(page.body.contains("The username or password is incorrect."));
        }
        // The fourth attempt is refused before the password is checked, right or wrong,
        // and an unknown name is treated exactly like a known one.
        let cookie: Vec<String> = b.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut fields = page.fields();
        fields.retain(|(k, _)| k != "username" && k != "password");
        fields.push(("username".into(), user.into()));
        fields.push(("password".into(), ALICE_PASSWORD.into()));
        let resp = gw
            .client()
            .post(gw.url("/oauth/authorize"))
            .header("cookie", cookie.join("; "))
            .form(&fields)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 429, "{user}");
        let secs: u64 = resp.headers()["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=1200).contains(&secs), "{secs}");
        assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
        let body = resp.text().await.unwrap();
        assert!(body.contains("Too many sign-in attempts"), "{body}");
        assert!(body.contains("name=\"password\""), "the form is shown again: {body}");
    }
    // Carol, from the same address, is not affected.
    let done = b.submit(&gw, &page, &[("username", "carol"), ("password", ALICE_PASSWORD)]).await;
    assert_eq!(done.status, 303, "{}", done.body);
    // The password grant shares the per-username budget.
    let pw = |user| [("grant_type", "password"), ("username", user), ("password", ALICE_PASSWORD)];
    let (status, v) = token_request(&gw, Some(("webapp", SVC_SECRET)), &pw("alice")).await;
    assert_eq!((status, v["error"].as_str()), (429, Some("slow_down")), "{v}");
    let (status, _) = token_request(&gw, Some(("webapp", SVC_SECRET)), &pw("carol")).await;
    assert_eq!(status, 200);
    assert_eq!(counter(&gw, "portcullis_rate_limited_total{endpoint=\"login\"}").await, 2.0);
    assert_eq!(counter(&gw, "portcullis_rate_limited_total{endpoint=\"token\"}").await, 1.0);
}

#[tokio::test]
async fn request_smuggling_attempts_are_refused_and_nothing_reaches_the_upstream_twice() {
    let (rec, gw) = recorded_gateway("").await;
    let smuggled = "GET /public/smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    // Each refused outright with 400 before anything is forwarded.
    let refused = [
        (
            "duplicate differing Content-Length",
            format!(
                "POST /public/a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: {}\r\n\r\nhello{smuggled}",
                5 + smuggled.len()
            ),
        ),
        (
            "Content-Length list",
            format!("POST /public/b HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 50\r\n\r\nhello{smuggled}"),
        ),
        (
            "negative Content-Length",
            format!("POST /public/c HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n{smuggled}"),
        ),
        (
            "signed Content-Length",
            format!("POST /public/d HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\nhello{smuggled}"),
        ),
        ("obsolete line folding", format!("GET /public/e HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n b\r\n\r\n{smuggled}")),
        (
            "folded Transfer-Encoding",
            format!(
                "POST /public/f HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\r\n chunked\r\nContent-Length: 5\r\n\r\nhello{smuggled}"
            ),
        ),
        (
            "Transfer-Encoding not chunked",
            format!(
                "POST /public/g HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\nContent-Length: 5\r\n\r\nhello{smuggled}"
            ),
        ),
        (
            "chunked not last",
            format!(
                "POST /public/h HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "Transfer-Encoding in HTTP/1.0",
            format!("POST /public/i HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"),
        ),
        (
            "space before the colon",
            format!(
                "POST /public/j HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\nContent-Length: 5\r\n\r\nhello{smuggled}"
            ),
        ),
        ("bare CR in a header", format!("GET /public/k HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n{smuggled}")),
        ("NUL in a header", format!("GET /public/l HTTP/1.1\r\nHost: x\r\nX-A: a\0b\r\n\r\n{smuggled}")),
    ];
    for (what, req) in &refused {
        let got = raw_bytes(gw.http, req.as_bytes()).await;
        assert_eq!(statuses(&got), vec![400], "{what}: {}", String::from_utf8_lossy(&got));
    }
    assert!(rec.paths().is_empty(), "refused requests reached the upstream: {:?}", rec.paths());

    // Content-Length and Transfer-Encoding together (in either order): RFC 9112 §6.3 lets
    // a server reject or go by Transfer-Encoding alone and then close the connection. hyper
    // does the latter: the chunked body (empty here) is forwarded once, never what follows it.
    for (i, order) in
        ["Content-Length: 7\r\nTransfer-Encoding: chunked", "Transfer-Encoding: chunked\r\nContent-Length: 7"]
            .iter()
            .enumerate()
    {
        let req = format!("POST /public/clte{i} HTTP/1.1\r\nHost: x\r\n{order}\r\n\r\n0\r\n\r\n{smuggled}");
        let got = raw_bytes(gw.http, req.as_bytes()).await;
        assert_eq!(statuses(&got), vec![200], "{order}: {}", String::from_utf8_lossy(&got));
        assert!(head_of(&got).contains("connection: close"), "{}", head_of(&got));
    }
    let seen = rec.seen();
    assert_eq!(seen.iter().map(|s| s.path.as_str()).collect::<Vec<_>>(), ["/public/clte0", "/public/clte1"]);
    for s in &seen {
        assert_eq!(s.body_len, Some(0), "{s:?}");
        assert!(
            !s.headers.iter().any(|(n, _)| n == "content-length" || n == "transfer-encoding") || s.body_len == Some(0)
        );
    }
}

#[tokio::test]
async fn invalid_chunked_bodies_are_400_not_blamed_on_the_upstream() {
    let (rec, gw) = recorded_gateway("").await;
    for (i, chunks) in [
        "zz\r\nabc\r\n0\r\n\r\n",
        "-1\r\nabc\r\n0\r\n\r\n",
        "fffffffffffffffffffff\r\nabc\r\n0\r\n\r\n",
        "3\r\nabcdef\r\n0\r\n\r\n",
    ]
    .iter()
    .enumerate()
    {
        for path in [format!("/public/chunk{i}"), "/oauth/token".to_string()] {
            let req = format!(
                "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n\
                 Transfer-Encoding: chunked\r\n\r\n{chunks}"
            );
            let got = raw_bytes(gw.http, req.as_bytes()).await;
            assert_eq!(statuses(&got), vec![400], "{path} {chunks:?}: {}", String::from_utf8_lossy(&got));
            let body = String::from_utf8_lossy(&got).split("\r\n\r\n").nth(1).unwrap_or("").to_string();
            assert!(body.contains("\"invalid_request\""), "{path} {chunks:?}: {body}");
        }
    }
    // Whatever reached the upstream reached it at most once.
    let mut paths = rec.paths();
    let n = paths.len();
    paths.dedup();
    assert_eq!(paths.len(), n, "{paths:?}");
}

#[tokio::test]
async fn oversized_headers_are_431_and_oversized_bodies_413() {
    let (rec, gw) = recorded_gateway("").await;
    let token = gw.token("svc", SVC_SECRET, None).await;
    // One huge header, and very many small ones (default limit 16 KiB).
    let huge = format!("GET /public/huge HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(20 * 1024));
    let many: String = (0..400).map(|i| format!("X-H{i}: v\r\n")).collect();
    let many = format!("GET /public/many HTTP/1.1\r\nHost: x\r\n{many}\r\n");
    for (what, req) in [("huge header", huge), ("many headers", many)] {
        let got = raw_bytes(gw.http, req.as_bytes()).await;
        assert_eq!(statuses(&got), vec![431], "{what}: {}", String::from_utf8_lossy(&got));
    }
    // Over TLS and HTTP/2 as well.
    let h2 = https_client(&gw.pki.ca_pem, true);
    let resp = h2.get(gw.url("/public/h2")).header("x-big", "a".repeat(20 * 1024)).send().await.unwrap();
    assert_eq!((resp.version(), resp.status().as_u16()), (reqwest::Version::HTTP_2, 431));
    let resp = gw.client().get(gw.url("/public/tls")).header("x-big", "a".repeat(20 * 1024)).send().await.unwrap();
    assert_eq!(resp.status(), 431);
    assert!(rec.paths().is_empty(), "{:?}", rec.paths());

    // Bodies: token endpoint (16 KiB) declared or chunked, login form, proxy (64 MiB here).
    let big = "a=".to_string() + &"b".repeat(20 * 1024);
    let c = gw.client();
    let form = |r: reqwest::RequestBuilder| r.header("content-type", "application/x-www-form-urlencoded");
    let declared = form(c.post(gw.url("/oauth/token"))).body(big.clone()).send().await.unwrap();
    assert_eq!(declared.status(), 413);
    assert_eq!(declared.json::<Value>().await.unwrap()["error"], "invalid_request");
    let stream = futures_util::stream::iter((0..20).map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![b'a'; 1024]))));
    let chunked = form(c.post(gw.url("/oauth/token"))).body(reqwest::Body::wrap_stream(stream)).send().await.unwrap();
    assert_eq!(chunked.status(), 413, "undeclared length");
    let login = form(c.post(gw.url("/oauth/authorize"))).body(big).send().await.unwrap();
    assert_eq!(login.status(), 413);
    assert!(login.text().await.unwrap().starts_with("<!doctype html>"));
    // A declared length the body never delivers: the gateway refuses on the header alone.
    let got = raw_bytes(
        gw.http,
        format!(
            "POST /api/declared HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Length: {}\r\n\r\n",
            64 * 1024 * 1024 + 1
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(statuses(&got), vec![413], "{}", String::from_utf8_lossy(&got));
    assert!(rec.paths().is_empty(), "{:?}", rec.paths());
}

#[tokio::test]
async fn slowloris_headers_are_cut_off_after_the_header_read_timeout() {
    let (rec, gw) = recorded_gateway("header_read_timeout = \"1s\"\ntls_handshake_timeout = \"1s\"\n").await;
    // Plaintext: a request line, then one header byte every 100 ms, forever.
    let mut s = TcpStream::connect(gw.http).await.unwrap();
    let cut = dribble_a_head_until_cut(&mut s).await;
    assert!(cut >= Duration::from_millis(900), "cut after {cut:?}, before the timeout");
    eprintln!("slowloris (plaintext) cut after {cut:?}");

    // Over TLS: a completed handshake, then headers that never end.
    let mut tls = tls_connect(&gw).await;
    let started = Instant::now();
    tls.write_all(b"GET /public/slow HTTP/1.1\r\nHost: x\r\nX-Slow: a").await.unwrap();
    tls.flush().await.unwrap();
    let mut buf = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(15), tls.read_to_end(&mut buf)).await;
    assert!(r.is_ok(), "TLS slowloris still connected after 15 s");
    assert!(started.elapsed() >= Duration::from_millis(900), "{:?}", started.elapsed());

    // The HTTP/2 preface, a byte every 1.5 s (within the 2 s idle timeout): no request ever
    // starts, so no header timeout of HTTP/1.1 or HTTP/2 applies, and the idle timer is reset
    // by every byte. The first request must arrive within header_read_timeout all the same.
    let mut s = TcpStream::connect(gw.http).await.unwrap();
    let started = Instant::now();
    let mut cut = None;
    let mut preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".iter();
    let mut last_write: Option<Instant> = None;
    while started.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let due = last_write.is_none_or(|t| t.elapsed() >= Duration::from_millis(1500));
        let wrote = match if due { preface.next() } else { None } {
            Some(b) => {
                last_write = Some(Instant::now());
                s.write_all(&[*b]).await.is_ok()
            }
            None => true,
        };
        let mut probe = [0u8; 256];
        let closed = loop {
            // Skip the server's SETTINGS frame once the preface is complete.
            match tokio::time::timeout(Duration::from_millis(1), s.read(&mut probe)).await {
                Ok(Ok(0) | Err(_)) => break true,
                Ok(Ok(_)) => continue,
                Err(_) => break false,
            }
        };
        if !wrote || closed {
            cut = Some(started.elapsed());
            break;
        }
    }
    let cut = cut.expect("a slow HTTP/2 preface held the connection for 10 s");
    eprintln!("slow HTTP/2 preface cut after {cut:?}");
    assert!(cut >= Duration::from_millis(900), "cut after {cut:?}");

    // A TLS handshake that never completes is cut after tls_handshake_timeout.
    let mut s = TcpStream::connect(gw.https).await.unwrap();
    s.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
    let r = tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut Vec::new())).await;
    assert!(r.is_ok(), "half a TLS handshake still connected after 15 s");
    assert!(rec.paths().is_empty());
    // And the gateway still serves.
    assert_eq!(gw.client().get(gw.url("/public/ok")).send().await.unwrap().status(), 200);
}

/// hyper's HTTP/1.1 header read timeout is kept by the connection's tick: it must hold for
/// every head of a keep-alive connection, not only its first, even while bytes keep the
/// idle timeout away.
#[tokio::test]
async fn a_later_head_of_a_keep_alive_connection_is_cut_after_the_header_read_timeout() {
    let (rec, gw) = recorded_gateway("header_read_timeout = \"1s\"\n").await;
    let mut s = TcpStream::connect(gw.http).await.unwrap();
    // Three whole requests first, each answered on the same connection.
    for _ in 0..3 {
        s.write_all(b"GET /public/first HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let head = read_head(&mut s).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let len: usize = head
            .lines()
            .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
            .expect("a sized answer");
        let mut body = vec![0u8; len];
        s.read_exact(&mut body).await.unwrap();
    }
    // Then a head that never ends, a field every 100 ms (well within the 2 s idle timeout).
    let cut = dribble_a_head_until_cut(&mut s).await;
    assert!(cut >= Duration::from_millis(900), "cut after {cut:?}, before the timeout");
    assert_eq!(rec.paths(), vec!["/public/first"; 3], "the unfinished head reached the upstream");
    // The same over TLS.
    let mut tls = tls_connect(&gw).await;
    tls.write_all(b"GET /public/first HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    tls.flush().await.unwrap();
    let mut first = [0u8; 12];
    tls.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    let started = Instant::now();
    tls.write_all(b"GET /public/slow HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let mut cut = None;
    while started.elapsed() < Duration::from_secs(15) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if tls.write_all(b"X-Slow: a\r\n").await.is_err() || tls.flush().await.is_err() {
            cut = Some(started.elapsed());
            break;
        }
        let mut probe = [0u8; 4096];
        // Skip what is left of the first answer.
        let closed = loop {
            match tokio::time::timeout(Duration::from_millis(1), tls.read(&mut probe)).await {
                Ok(Ok(0) | Err(_)) => break true,
                Ok(Ok(_)) => continue,
                Err(_) => break false,
            }
        };
        if closed {
            cut = Some(started.elapsed());
            break;
        }
    }
    let cut = cut.expect("a TLS keep-alive head held the connection for 15 s");
    assert!(cut >= Duration::from_millis(900), "cut after {cut:?}, before the timeout");
    assert_eq!(gw.client().get(gw.url("/public/ok")).send().await.unwrap().status(), 200);
}

/// The time for the first request starts when the TLS handshake is done, not at the
/// accept: a slow but legal handshake does not eat into it (a black-box finding against the
/// first version of the connection's tick, which timed it from the accept).
#[tokio::test]
async fn a_slow_tls_handshake_leaves_the_first_request_its_whole_header_read_timeout() {
    let (rec, gw) = recorded_gateway("header_read_timeout = \"2s\"\ntls_handshake_timeout = \"3s\"\n").await;
    // The handshake starts 1.5 s after the accept; the request comes 1 s after it ends,
    // 2.5 s after the accept (past 2 s from the accept, well within 2 s of the handshake).
    let mut tls = tls_connect_late(&gw, &[b"http/1.1"], Duration::from_millis(1500)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    tls.write_all(b"GET /public/late HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut got)).await;
    assert!(got.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&got));
    assert_eq!(rec.paths(), vec!["/public/late"]);
}

/// A request line, then a header field every 100 ms, for ever: how long until the gateway
/// closes the connection (at most 15 s).
async fn dribble_a_head_until_cut(s: &mut TcpStream) -> Duration {
    let started = Instant::now();
    s.write_all(b"GET /public/slow HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if s.write_all(b"X-Slow: a\r\n").await.is_err() {
            return started.elapsed();
        }
        let mut probe = [0u8; 64];
        if let Ok(Ok(0) | Err(_)) = tokio::time::timeout(Duration::from_millis(1), s.read(&mut probe)).await {
            return started.elapsed();
        }
        assert!(started.elapsed() < Duration::from_secs(15), "still connected after 15 s");
    }
}

/// The head of an answer, as text, read a byte at a time up to its blank line.
async fn read_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        assert_eq!(s.read(&mut b).await.unwrap(), 1, "closed in a head: {}", String::from_utf8_lossy(&head));
        head.push(b[0]);
    }
    String::from_utf8(head).unwrap()
}

// ---------------------------------------------------------------------------------------
// Random input from a property-based generator.

mod random {
    use base64::Engine;
    use proptest::prelude::*;
    use proptest::strategy::ValueTree;
    use proptest::test_runner::{Config, TestRunner};

    /// `n` values from `strategy`, reproducibly.
    pub fn sample<S: Strategy>(strategy: S, n: usize, seed: u8) -> Vec<S::Value> {
        let config = Config { rng_seed: proptest::test_runner::RngSeed::Fixed(u64::from(seed)), ..Config::default() };
        let mut runner = TestRunner::new(config);
        (0..n).map(|_| strategy.new_tree(&mut runner).unwrap().current()).collect()
    }

    fn text() -> BoxedStrategy<String> {
        prop_oneof![
            3 => "[a-zA-Z0-9_.~-]{0,24}",
            2 => ".{0,40}",
            1 => "[%&=+;,:/ ?#\\[\\]@!$'()*\"{}\\\\]{0,16}",
            1 => Just(String::new()),
        ]
        .boxed()
    }

    fn known_or(known: &'static [&'static str]) -> BoxedStrategy<String> {
        let known: Vec<String> = known.iter().map(|s| s.to_string()).collect();
        prop_oneof![2 => proptest::sample::select(known), 3 => text()].boxed()
    }

    /// A token request: body, Content-Type, Authorization.
    #[derive(Debug, Clone)]
    pub struct TokenInput {
        pub body: Vec<u8>,
        pub content_type: Option<String>,
        pub authorization: Option<String>,
    }

    pub fn token_input() -> impl Strategy<Value = TokenInput> {
        let key = known_or(&[
            "grant_type",
            "client_id",
            "client_secret",
            "scope",
            "code",
            "redirect_uri",
            "code_verifier",
            "refresh_token",
            "username",
            "password",
        ]);
        let value = known_or(&[
            "client_credentials",
            "password",
            "authorization_code",
            "refresh_token",
            "svc",
            "webapp",
            "spa",
            "read",
            "alice",
        ]);
        let pairs = proptest::collection::vec((key, value), 0..8);
        let body = prop_oneof![
            3 => pairs.clone().prop_map(|p| {
                let mut s = form_urlencoded::Serializer::new(String::new());
                s.extend_pairs(p);
                s.finish().into_bytes()
            }),
            2 => pairs.prop_map(|p| {
                let mut map = serde_json::Map::new();
                for (k, v) in p {
                    map.insert(k, serde_json::Value::String(v));
                }
                serde_json::Value::Object(map).to_string().into_bytes()
            }),
            1 => "[{}\\[\\]\":,0-9a-z_ ]{0,80}".prop_map(String::into_bytes),
            1 => proptest::collection::vec(any::<u8>(), 0..200),
        ];
        let content_type = proptest::option::of(known_or(&[
            "application/x-www-form-urlencoded",
            "application/json",
            "application/json; charset=utf-8",
            "APPLICATION/X-WWW-FORM-URLENCODED; charset=utf-8",
            "text/plain",
            "multipart/form-data; boundary=x",
        ]));
        let authorization = proptest::option::of(prop_oneof![
            ("[ -~]{0,20}", "[ -~]{0,20}").prop_map(|(id, secret)| {
                format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}")))
            }),
            "(Basic|basic|BASIC|Bearer) [ -~]{0,40}",
            "[ -~]{0,40}",
        ]);
        (body, content_type, authorization).prop_map(|(body, content_type, authorization)| TokenInput {
            body,
            content_type,
            authorization,
        })
    }

    /// A raw /authorize query string.
    pub fn authorize_query() -> impl Strategy<Value = String> {
        let key = known_or(&[
            "response_type",
            "client_id",
            "redirect_uri",
            "scope",
            "state",
            "code_challenge",
            "code_challenge_method",
        ]);
        let value = known_or(&[
            "code",
            "token",
            "spa",
            "webapp",
            "first",
            "https://spa.test/cb",
            "https://app.test/callback",
            "https://evil.test/cb",
            "read",
            "S256",
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
        ]);
        let encoded = proptest::collection::vec((key, value), 0..8).prop_map(|p| {
            let mut s = form_urlencoded::Serializer::new(String::new());
            s.extend_pairs(p);
            s.finish()
        });
        // Also raw junk that reqwest would not encode for us: stray '%', bad escapes.
        prop_oneof![4 => encoded, 1 => "[a-z=&%0-9A-F_.+-]{0,60}"]
    }

    /// An Authorization header for the proxy path.
    pub fn bearer() -> impl Strategy<Value = String> {
        let part = "[A-Za-z0-9_-]{0,40}";
        prop_oneof![
            3 => (part, part, part).prop_map(|(a, b, c)| format!("Bearer {a}.{b}.{c}")),
            2 => (any::<Vec<u8>>(), any::<Vec<u8>>()).prop_map(|(h, p)| {
                                let e = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
                format!("Bearer {}.{}.{}", e(&h), e(&p), e(b"sig"))
            }),
            2 => "(Bearer|bearer|BEARER|Basic|Token|) ?[ -~]{0,60}",
            1 => "[ -~]{0,80}",
        ]
    }
}

/// The gateway answered on its own: a well-formed JSON or HTML error (or success).
fn well_formed(status: u16, content_type: &str, body: &[u8], label: &str) {
    assert!(status < 500, "{label}: {status} {}", String::from_utf8_lossy(body));
    if content_type.starts_with("application/json") {
        let v: Value = serde_json::from_slice(body).unwrap_or_else(|e| panic!("{label}: bad JSON ({e})"));
        assert!(v["error"].is_string() || v["access_token"].is_string(), "{label}: {v}");
    } else if content_type.starts_with("text/html") {
        assert!(body.starts_with(b"<!doctype html>"), "{label}");
    } else {
        assert!(body.is_empty(), "{label}: {status} {content_type:?} {}", String::from_utf8_lossy(body));
        assert!(matches!(status, 302 | 303), "{label}: {status} without a body type");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_inputs_never_5xx_and_the_gateway_keeps_serving() {
    const N: usize = 10_000;
    let up = EchoUpstream::start().await;
    let gw = TestGateway::start_with(up.addr, "[rate_limit]\nenabled = false\n").await;
    let client = reqwest::Client::builder().no_proxy().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let started = Instant::now();

    let token_url = gw.http_url("/oauth/token");
    let token_inputs = random::sample(random::token_input(), N, 1);
    let token_run = futures_util::stream::iter(token_inputs)
        .map(|input| {
            let (client, url) = (&client, &token_url);
            async move {
                let mut req = client.post(url).body(input.body.clone());
                if let Some(ct) = &input.content_type {
                    req = req.header("content-type", ct.as_str());
                }
                if let Some(a) = &input.authorization {
                    req = req.header("authorization", a.as_str());
                }
                // Values reqwest cannot put on the wire are skipped, not sent.
                let Ok(req) = req.build() else { return };
                let resp = client.execute(req).await.unwrap_or_else(|e| panic!("{input:?}: {e}"));
                let status = resp.status().as_u16();
                let ct =
                    resp.headers().get("content-type").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
                assert_eq!(ct, "application/json", "{input:?}");
                well_formed(status, &ct, &resp.bytes().await.unwrap(), &format!("{input:?}"));
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<()>>();

    let authorize_queries = random::sample(random::authorize_query(), N, 2);
    let authorize_run = futures_util::stream::iter(authorize_queries)
        .map(|q| {
            let (client, gw) = (&client, &gw);
            async move {
                let url = gw.http_url(&format!("/oauth/authorize?{q}"));
                let resp = client.get(&url).send().await.unwrap_or_else(|e| panic!("{q}: {e}"));
                let status = resp.status().as_u16();
                let ct =
                    resp.headers().get("content-type").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
                if let Some(loc) = resp.headers().get("location") {
                    // Only ever back to a URI registered for the named client.
                    let loc = loc.to_str().unwrap();
                    let registered = [
                        "https://spa.test/cb",
                        "https://app.test/callback",
                        "http://127.0.0.1:9/cb?x=1",
                        "https://first.test/cb",
                    ];
                    assert!(
                        registered.iter().any(|r| loc.starts_with(&format!("{r}?"))
                            || loc.starts_with(&format!("{r}#"))
                            || loc.starts_with(&format!("{r}&"))),
                        "{q}: redirected to {loc}"
                    );
                }
                well_formed(status, &ct, &resp.bytes().await.unwrap(), &q);
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<()>>();

    let bearers = random::sample(random::bearer(), N, 3);
    let api_url = gw.http_url("/api/x");
    let bearer_run = futures_util::stream::iter(bearers)
        .map(|b| {
            let (client, url) = (&client, &api_url);
            async move {
                let Ok(req) = client.get(url).header("authorization", b.as_str()).build() else { return };
                let resp = client.execute(req).await.unwrap_or_else(|e| panic!("{b}: {e}"));
                let status = resp.status().as_u16();
                assert!(matches!(status, 400 | 401), "{b}: {status}");
                let ct =
                    resp.headers().get("content-type").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
                well_formed(status, &ct, &resp.bytes().await.unwrap(), &b);
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<()>>();

    tokio::join!(token_run, authorize_run, bearer_run);
    eprintln!("{} random requests in {:?}", 3 * N, started.elapsed());

    // Still serving: a token, then a proxied request with it.
    let token = gw.token("svc", SVC_SECRET, None).await;
    let resp = gw.client().get(gw.url("/api/after")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(!gw.task.as_ref().unwrap().is_finished());
}

// ---------------------------------------------------------------------------------------
// Client enumeration.

/// Status, body bytes and `WWW-Authenticate` of a client_credentials request.
async fn token_answer(gw: &TestGateway, id: &str, secret: &str) -> (u16, String, Option<String>) {
    let resp = gw
        .client()
        .post(gw.url("/oauth/token"))
        .basic_auth(id, Some(secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let www = resp.headers().get("www-authenticate").map(|v| v.to_str().unwrap().to_string());
    (status, resp.text().await.unwrap(), www)
}

/// An unknown client id and a known one with a wrong secret get the same bytes back, and
/// the same 429 once the per-client failure budget is spent (timing is not asserted here:
/// the unknown id runs a dummy argon2 verification, see client_auth.rs).
#[tokio::test]
async fn unknown_client_ids_answer_and_throttle_like_wrong_secrets() {
    let up = EchoUpstream::start().await;
    let extra = "[rate_limit]\nclient_failures = 3\nclient_failures_window = \"1h\"\n";
    let gw = TestGateway::start_with(up.addr, extra).await;
    let mut first = Vec::new();
    for id in ["svc", "no-such-client"] {
        let dummy_before = gw.gateway.secrets.dummy_runs();
        for i in 0..3 {
            let answer = token_answer(&gw, id, &format!("guess-{i}")).await;
            assert_eq!(answer.0, 401, "{id} guess {i}: {}", answer.1);
            if i == 0 {
                first.push(answer);
            }
        }
        let (c, url) = (gw.client(), gw.url("/oauth/token"));
        let (status, retry, v) = token_raw(&c, &url, (id, "guess-3"), &[]).await;
        assert_slow_down(status, retry.as_deref(), &v, 1200, id);
        // The unknown id paid for an argon2 verification each time it was not throttled.
        let dummies = gw.gateway.secrets.dummy_runs() - dummy_before;
        assert_eq!(dummies, if id == "svc" { 0 } else { 3 }, "{id}: dummy verifications");
    }
    assert_eq!(first[0], first[1], "known and unknown client ids answered differently");
    // A public client offered a secret answers the same way too.
    assert_eq!(token_answer(&gw, "spa", "guess").await, first[0]);
}

#[tokio::test]
async fn fail_closed_transfer_codings_other_than_a_lone_final_chunked_are_501() {
    let (rec, gw) = recorded_gateway("").await;
    for te in [
        "Transfer-Encoding: gzip, chunked",
        "Transfer-Encoding: chunked, chunked",
        "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
        "Transfer-Encoding: identity, chunked",
        "Transfer-Encoding: x-custom ,chunked",
    ] {
        for path in ["/public/te", "/oauth/token"] {
            let req = format!(
                "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n{te}\r\n\r\n0\r\n\r\n"
            );
            let got = raw_bytes(gw.http, req.as_bytes()).await;
            assert_eq!(statuses(&got), vec![501], "{path} {te:?}: {}", String::from_utf8_lossy(&got));
            assert!(String::from_utf8_lossy(&got).contains("\"error\""), "{path} {te:?}");
        }
    }
    assert!(rec.paths().is_empty(), "{:?}", rec.paths());
    // A lone chunked, in any case, is fine.
    let req = "POST /public/ok HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
    assert_eq!(statuses(&raw_bytes(gw.http, req.as_bytes()).await), vec![200]);
}

/// Read one response (head and Content-Length body) from a kept-alive connection.
async fn read_one(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse().unwrap())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return String::from_utf8_lossy(&buf).into_owned();
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk)).await.unwrap().unwrap();
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test]
async fn fail_closed_the_clients_connection_keeps_the_gateways_http_version() {
    let up = fixed_upstream(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec()).await;
    let gw = TestGateway::start(up.addr).await;
    let mut s = TcpStream::connect(gw.http).await.unwrap();
    for i in 0..2 {
        s.write_all(format!("GET /public/v{i} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).await.unwrap();
        let got = read_one(&mut s).await;
        assert!(got.starts_with("HTTP/1.1 200"), "request {i}: {got}");
        assert!(got.ends_with("ok"), "request {i}: {got}");
    }
}

// ---------------------------------------------------------------------------------------
// More idle connections than the gateway admits.

/// Raise this process's open-file limit to its hard limit; the new soft limit.
fn raise_nofile_limit() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain libc calls on a stack value.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
    }
    lim.rlim_cur
}

/// Until the gateway has accepted `n` connections, not just let the kernel queue them: per
/// core (PORTCULLIS_RUNTIME=per-core) each worker's socket has a queue of its own, and a
/// later connection could be taken before an earlier one still queued on the other.
async fn until_accepted(gw: &TestGateway, n: usize) {
    let accepted = async {
        while gw.accepted.counts().iter().sum::<u64>() < n as u64 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), accepted).await.expect("the held connections are accepted");
}

/// Did the gateway close this connection (EOF or reset) within `wait`?
async fn closed_within(s: &mut TcpStream, wait: Duration) -> bool {
    let mut buf = [0u8; 16];
    matches!(tokio::time::timeout(wait, s.read(&mut buf)).await, Ok(Ok(0) | Err(_)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_beyond_max_connections_are_refused_cleanly_and_freed() {
    const MAX: usize = 200;
    // 10,000 is the number; fewer if this machine's descriptor limit is lower
    // (each connection costs this process one descriptor, the admitted ones two).
    let total = 10_000.min(raise_nofile_limit().saturating_sub(2 * MAX as u64 + 1_000) as usize);
    assert!(total > 2 * MAX, "descriptor limit too low for this test");
    let up = EchoUpstream::start().await;
    // Silent connections are closed after header_read_timeout (no first request): keep them
    // for the length of the test.
    let limits = format!("max_connections = {MAX}\nheader_read_timeout = \"120s\"\n");
    let gw = gateway_with_limits(up.addr, "", &limits).await;
    let started = Instant::now();

    // The first MAX are admitted and held (they send nothing).
    let mut held = Vec::new();
    for _ in 0..MAX {
        held.push(TcpStream::connect(gw.http).await.unwrap());
    }
    until_accepted(&gw, MAX).await;
    // Every one beyond is accepted and closed at once, without a byte.
    let extra = futures_util::stream::iter(0..total - MAX)
        .map(|_| async {
            let mut s = TcpStream::connect(gw.http).await.unwrap();
            let closed = closed_within(&mut s, Duration::from_secs(10)).await;
            (s, closed)
        })
        .buffer_unordered(128)
        .collect::<Vec<_>>()
        .await;
    let refused = extra.iter().filter(|(_, closed)| *closed).count();
    assert_eq!(refused, total - MAX, "connections beyond max_connections must be closed");
    // While full, a real request is refused too, promptly.
    let plain = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(10)).build().unwrap();
    let r = plain.get(gw.http_url("/public/full")).send().await;
    assert!(r.is_err(), "a request got through while full: {:?}", r.map(|r| r.status()));
    // None of the admitted ones was closed meanwhile.
    let mut still_open = 0;
    for s in held.iter_mut().take(10) {
        still_open += usize::from(!closed_within(s, Duration::from_millis(50)).await);
    }
    assert_eq!(still_open, 10);
    eprintln!("{total} connections ({MAX} admitted) in {:?}", started.elapsed());
    drop(extra);

    // Once some idle ones go away, requests are served again.
    held.truncate(MAX - 20);
    let served = within(
        Duration::from_secs(10),
        async || matches!(plain.get(gw.http_url("/public/after")).send().await, Ok(r) if r.status() == 200),
    )
    .await;
    assert!(served.is_some(), "not served after idle connections were dropped");
    drop(held);
    assert!(!gw.task.as_ref().unwrap().is_finished());
}

#[tokio::test]
async fn idle_timeout_frees_the_slots_of_idle_connections() {
    const MAX: usize = 20;
    let up = EchoUpstream::start().await;
    let gw = gateway_with_limits(up.addr, "", &format!("max_connections = {MAX}\nidle_timeout = \"2s\"\n")).await;
    let opened = Instant::now();
    let mut held = Vec::new();
    for _ in 0..MAX {
        held.push(TcpStream::connect(gw.http).await.unwrap());
    }
    until_accepted(&gw, MAX).await;
    let mut extra = TcpStream::connect(gw.http).await.unwrap();
    assert!(closed_within(&mut extra, Duration::from_secs(5)).await, "the gateway admitted more than max_connections");
    // The gateway closes each idle one after idle_timeout...
    for s in &mut held {
        assert!(closed_within(s, Duration::from_secs(15)).await, "an idle connection outlived the idle timeout");
    }
    let took = opened.elapsed();
    assert!(took >= Duration::from_millis(1900), "closed after {took:?}, before the idle timeout");
    // ...and its slot serves a real request, while the idle sockets are still open here.
    let plain = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(10)).build().unwrap();
    let served = within(
        Duration::from_secs(5),
        async || matches!(plain.get(gw.http_url("/public/after")).send().await, Ok(r) if r.status() == 200),
    )
    .await;
    assert!(served.is_some());
    drop(held);
}
