//! WebSocket through the gateway (issue 12.1) and connections that end with their token
//! (issue 12.4): a real WebSocket client and server (tokio-tungstenite) on both sides of
//! the gateway, over HTTP/1.1 (plaintext and TLS) and HTTP/2 extended CONNECT (RFC 8441).

mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};
use http_body_util::StreamBody;
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{WebSocketStream, client_async};

/// An event-stream upstream: `data: <n>` every 100 ms, forever; a path ending `/grpc`
/// labels the stream `application/grpc`.
async fn sse_upstream() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                    let grpc = req.uri().path().ends_with("/grpc");
                    let events = futures_util::stream::unfold(0u64, |n| async move {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        Some((
                            Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from(format!("data: {n}\n\n")))),
                            n + 1,
                        ))
                    });
                    let mut resp = hyper::Response::new(StreamBody::new(events));
                    let ct = if grpc { "application/grpc" } else { "text/event-stream" };
                    resp.headers_mut().insert("content-type", ct.parse().unwrap());
                    Ok::<_, std::convert::Infallible>(resp)
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, task)
}

/// The WebSocket routes, to the WebSocket upstream `ws` and the event stream `sse`.
fn ws_routes(ws: SocketAddr, sse: SocketAddr) -> String {
    format!(
        r#"
[[route]]
prefix = "/ws"
upstream = "http://{ws}"
scopes = ["read"]
websocket = true

[[route]]
prefix = "/wsq"
upstream = "http://{ws}"
scopes = ["read"]
websocket = true
websocket_query_token = true

[[route]]
prefix = "/wsadmin"
upstream = "http://{ws}"
scopes = ["admin"]
websocket = true

[[route]]
prefix = "/wskeep"
upstream = "http://{ws}"
scopes = ["read"]
websocket = true
end_with_token = false

[[route]]
prefix = "/nows"
upstream = "http://{ws}"
scopes = ["read"]

[[route]]
prefix = "/events"
upstream = "http://{sse}"
scopes = ["read"]
"#
    )
}

struct Setup {
    ws: WsUpstream,
    _sse: tokio::task::JoinHandle<()>,
    gw: TestGateway,
}

impl Drop for Setup {
    fn drop(&mut self) {
        self._sse.abort();
    }
}

async fn setup_with(top: &str) -> Setup {
    let ws = WsUpstream::start().await;
    let (sse, sse_task) = sse_upstream().await;
    let echo = EchoUpstream::start().await;
    let gw = TestGateway::start_with(echo.addr, &format!("{top}\n{}", ws_routes(ws.addr, sse))).await;
    // The echo upstream is not used by these tests; its routes just need an address.
    std::mem::forget(echo);
    Setup { ws, _sse: sse_task, gw }
}

async fn setup() -> Setup {
    setup_with("").await
}

fn ws_request(
    gw: &TestGateway,
    path: &str,
    token: Option<&str>,
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    let mut req = format!("ws://127.0.0.1:{}{path}", gw.http.port()).into_client_request().unwrap();
    if let Some(t) = token {
        req.headers_mut().insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    req
}

async fn connect_plain(
    gw: &TestGateway,
    path: &str,
    token: Option<&str>,
) -> Result<WebSocketStream<TcpStream>, WsError> {
    let tcp = TcpStream::connect(gw.http).await.unwrap();
    client_async(ws_request(gw, path, token), tcp).await.map(|(ws, _)| ws)
}

async fn echo_once<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>, text: &str) {
    ws.send(Message::text(text)).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), ws.next()).await.expect("an echo in time");
    assert_eq!(got.unwrap().unwrap(), Message::text(text));
}

/// The status and body of a refused handshake.
fn refusal(e: WsError) -> (u16, http::HeaderMap, String) {
    match e {
        WsError::Http(resp) => {
            let body = resp.body().as_ref().map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default();
            (resp.status().as_u16(), resp.headers().clone(), body)
        }
        other => panic!("expected an HTTP refusal, got {other}"),
    }
}

/// Wait for a close frame (code 1008) within `limit`, after `since`.
async fn expect_policy_close<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    since: Instant,
    limit: Duration,
) -> String {
    loop {
        let next = tokio::time::timeout(limit.saturating_sub(since.elapsed()), ws.next()).await;
        match next.expect("a close frame in time") {
            Some(Ok(Message::Close(Some(frame)))) => {
                assert_eq!(frame.code, CloseCode::Policy, "{frame:?}");
                return frame.reason.to_string();
            }
            Some(Ok(Message::Close(None))) => panic!("a close frame without a code"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("the connection failed instead of closing: {e}"),
            None => panic!("the connection ended without a close frame"),
        }
    }
}

async fn revoke(gw: &TestGateway, token: &str) {
    let resp = gw
        .client()
        .post(gw.url("/oauth/revoke"))
        .basic_auth("svc", Some(SVC_SECRET))
        .form(&[("token", token)])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn echo_over_http1_plaintext_and_tls_with_identity_headers_and_forgeries_stripped() {
    let s = setup().await;
    let token = svc_token(&s.gw).await;
    // Plaintext, with forged identity headers and a gateway cookie.
    let mut req = ws_request(&s.gw, "/ws/echo?x=1", Some(&token));
    req.headers_mut().insert("x-auth-subject", "mallory".parse().unwrap());
    req.headers_mut().insert("x-remote-user", "mallory".parse().unwrap());
    req.headers_mut().insert("cookie", "a=1; __Host-portcullis_session=S".parse().unwrap());
    let tcp = TcpStream::connect(s.gw.http).await.unwrap();
    let (mut ws, resp) = client_async(req, tcp).await.unwrap();
    assert_eq!(resp.status(), 101);
    for i in 0..20 {
        echo_once(&mut ws, &format!("message {i}")).await;
    }
    ws.send(Message::binary(vec![7u8; 200_000])).await.unwrap();
    let big = ws.next().await.unwrap().unwrap();
    assert_eq!(big.into_data().len(), 200_000);
    let seen = s.ws.last();
    assert_eq!(seen.uri, "/ws/echo?x=1");
    assert_eq!(seen.header("x-auth-subject"), Some("svc"));
    assert_eq!(seen.header("x-auth-client-id"), Some("svc"));
    assert!(seen.header("x-remote-user").is_none(), "{seen:?}");
    assert_eq!(seen.header("cookie"), Some("a=1"));
    assert!(seen.header("authorization").is_none(), "the token is not forwarded");
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    ws.close(None).await.unwrap();

    // TLS (ALPN http/1.1).
    let tls = tls_connect(&s.gw).await;
    let mut req = format!("wss://localhost:{}/ws/tls", s.gw.https.port()).into_client_request().unwrap();
    req.headers_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (mut ws, _) = client_async(req, tls).await.unwrap();
    echo_once(&mut ws, "over tls").await;
    assert_eq!(s.ws.last().header("x-forwarded-proto"), Some("https"));
    ws.close(None).await.unwrap();
}

#[tokio::test]
async fn refusals_no_token_bad_token_wrong_scope_and_no_websocket_route() {
    let s = setup().await;
    let token = svc_token(&s.gw).await;
    let (status, headers, _) = refusal(connect_plain(&s.gw, "/ws/a", None).await.unwrap_err());
    assert_eq!(status, 401);
    assert!(headers.get("www-authenticate").unwrap().to_str().unwrap().starts_with("Bearer realm="));
    let (status, headers, _) = refusal(connect_plain(&s.gw, "/ws/a", Some("not.a.token")).await.unwrap_err());
    assert_eq!(status, 401);
    assert!(headers.get("www-authenticate").unwrap().to_str().unwrap().contains("invalid_token"));
    let (status, headers, _) = refusal(connect_plain(&s.gw, "/wsadmin/a", Some(&token)).await.unwrap_err());
    assert_eq!(status, 403);
    assert!(headers.get("www-authenticate").unwrap().to_str().unwrap().contains("insufficient_scope"));
    let (status, _, body) = refusal(connect_plain(&s.gw, "/nows/a", Some(&token)).await.unwrap_err());
    assert_eq!(status, 400);
    assert!(body.contains("does not accept WebSocket"), "{body}");
    assert_eq!(s.ws.count(), 0, "no refused handshake reached the upstream");
}

/// A handshake written by hand over a raw socket; the status line and head of the answer.
async fn raw_handshake(gw: &TestGateway, lines: &[&str]) -> String {
    let mut tcp = TcpStream::connect(gw.http).await.unwrap();
    let mut req = lines.join("\r\n");
    req.push_str("\r\n\r\n");
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf)).await.unwrap().unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test]
async fn malformed_handshakes_are_400_and_never_reach_the_upstream() {
    let s = setup().await;
    let token = svc_token(&s.gw).await;
    let auth = format!("Authorization: Bearer {token}");
    let host = format!("Host: 127.0.0.1:{}", s.gw.http.port());
    let good_key = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==";
    let cases: Vec<(&str, Vec<&str>)> = vec![
        ("short key", vec!["Sec-WebSocket-Key: c2hvcnQ=", "Sec-WebSocket-Version: 13"]),
        ("key not base64", vec!["Sec-WebSocket-Key: !!!!!!!!!!!!!!!!!!!!!!==", "Sec-WebSocket-Version: 13"]),
        ("no key", vec!["Sec-WebSocket-Version: 13"]),
        ("two keys", vec![good_key, good_key, "Sec-WebSocket-Version: 13"]),
        ("version 8", vec![good_key, "Sec-WebSocket-Version: 8"]),
        ("no version", vec![good_key]),
    ];
    for (what, extra) in cases {
        let mut lines = vec!["GET /ws/x HTTP/1.1", &host, &auth, "Upgrade: websocket", "Connection: Upgrade"];
        lines.extend(extra);
        let head = raw_handshake(&s.gw, &lines).await;
        assert!(head.starts_with("HTTP/1.1 400"), "{what}: {head}");
        assert!(head.to_ascii_lowercase().contains("sec-websocket-version: 13"), "{what}: {head}");
    }
    // A POST.
    let head = raw_handshake(
        &s.gw,
        &[
            "POST /ws/x HTTP/1.1",
            &host,
            &auth,
            "Upgrade: websocket",
            "Connection: Upgrade",
            good_key,
            "Sec-WebSocket-Version: 13",
            "Content-Length: 0",
        ],
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    assert_eq!(s.ws.count(), 0);
}

#[tokio::test]
async fn an_upstream_refusal_passes_through_and_an_upstream_close_reaches_the_client() {
    let s = setup().await;
    let token = svc_token(&s.gw).await;
    let (status, headers, body) = refusal(connect_plain(&s.gw, "/ws/refuse", Some(&token)).await.unwrap_err());
    assert_eq!(status, 403);
    // The upstream's body ends with its connection; the gateway frames it chunked, which
    // tungstenite's client shows undecoded.
    assert!(body.contains("upstream says no"), "{body}");
    assert_eq!(headers.get("x-upstream-reason").unwrap(), "closed");

    // The upstream drops the connection mid-stream: the client sees the end, no hang.
    let mut ws = connect_plain(&s.gw, "/ws/drop", Some(&token)).await.unwrap();
    echo_once(&mut ws, "one").await;
    let end = tokio::time::timeout(Duration::from_secs(5), ws.next()).await.expect("the end in time");
    assert!(matches!(end, None | Some(Err(_))), "{end:?}");
}

#[tokio::test]
async fn a_client_half_close_reaches_the_upstream_and_its_answer_comes_back() {
    let s = setup().await;
    let token = svc_token(&s.gw).await;
    let ws = connect_plain(&s.gw, "/ws/half", Some(&token)).await.unwrap();
    // Back to raw bytes: a masked text frame, then the write side shut.
    let mut tcp = ws.into_inner();
    let payload = b"bye";
    let mask = [1u8, 2, 3, 4];
    let mut frame = vec![0x81, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    tcp.write_all(&frame).await.unwrap();
    tcp.shutdown().await.unwrap();
    // The echo still arrives, then the connection ends.
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut got)).await.expect("the end in time").ok();
    assert!(got.starts_with(&[0x81, 3]) && &got[2..5] == b"bye", "{got:?}");
}

#[tokio::test]
async fn a_query_token_is_accepted_only_where_opted_in_stripped_and_not_logged() {
    use tracing_subscriber::fmt::MakeWriter;
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    impl<'a> MakeWriter<'a> for Sink {
        type Writer = Sink;
        fn make_writer(&'a self) -> Sink {
            self.clone()
        }
    }
    let sink = Sink::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(sink.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::DEBUG)
        .finish();
    // Global: the gateway's tasks may run on any thread. The only test here that sets one.
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let s = setup().await;
    let token = svc_token(&s.gw).await;
    let mut ws = connect_plain(&s.gw, &format!("/wsq/q?a=1&access_token={token}&b=2"), None).await.unwrap();
    echo_once(&mut ws, "via query").await;
    let seen = s.ws.last();
    assert_eq!(seen.uri, "/wsq/q?a=1&b=2", "the token is taken out");
    assert_eq!(seen.header("x-auth-client-id"), Some("svc"));
    ws.close(None).await.unwrap();
    // Not on a route without the opt-in.
    let (status, _, _) = refusal(connect_plain(&s.gw, &format!("/ws/q?access_token={token}"), None).await.unwrap_err());
    assert_eq!(status, 401);
    // Not twice, nor beside a header.
    let (status, _, _) = refusal(
        connect_plain(&s.gw, &format!("/wsq/q?access_token={token}&access_token={token}"), None).await.unwrap_err(),
    );
    assert_eq!(status, 400);
    // Nor beside, or as, a name a framework reads as access_token (black-box attack,
    // session 26: `[access_token]` reached the upstream with the token).
    for q in [format!("access_token={token}&[access_token]={token}"), format!("access_token%00={token}")] {
        let (status, _, _) = refusal(connect_plain(&s.gw, &format!("/wsq/q?{q}"), None).await.unwrap_err());
        assert_eq!(status, 400, "{q}");
    }
    let (status, _, _) =
        refusal(connect_plain(&s.gw, &format!("/wsq/q?access_token={token}"), Some(&token)).await.unwrap_err());
    assert_eq!(status, 400);
    // Not a plain GET on the same route: the query token is for handshakes only.
    let resp = reqwest::get(s.gw.http_url(&format!("/wsq/plain?access_token={token}"))).await.unwrap();
    assert_eq!(resp.status(), 401);

    let logged = String::from_utf8_lossy(&sink.0.lock().unwrap()).into_owned();
    assert!(
        logged.lines().any(|l| l.contains("portcullis::access") && l.contains("path=/wsq/q")),
        "the access line is there: {logged}"
    );
    assert!(!logged.contains(&token), "the token is never logged");
}

#[tokio::test]
async fn revocation_closes_an_open_websocket_with_1008_within_a_second_or_so() {
    let s = setup().await;
    let token = svc_token(&s.gw).await;
    let mut ws = connect_plain(&s.gw, "/ws/live", Some(&token)).await.unwrap();
    echo_once(&mut ws, "before").await;
    // Another connection on a route that opted out stays open.
    let mut kept = connect_plain(&s.gw, "/wskeep/live", Some(&token)).await.unwrap();
    echo_once(&mut kept, "before").await;
    let revoked_at = Instant::now();
    revoke(&s.gw, &token).await;
    let reason = expect_policy_close(&mut ws, revoked_at, Duration::from_secs(5)).await;
    assert_eq!(reason, "token revoked");
    eprintln!("closed {:?} after the revocation", revoked_at.elapsed());
    assert_eq!(counter(&s.gw, "portcullis_connections_ended_total{reason=\"revoked\"}").await, 1.0);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    echo_once(&mut kept, "after").await;
}

#[tokio::test]
async fn expiry_closes_an_open_websocket() {
    let s = setup_with(r#"token_lifetime = "2s""#).await;
    let token = svc_token(&s.gw).await;
    let mut ws = connect_plain(&s.gw, "/ws/expiring", Some(&token)).await.unwrap();
    echo_once(&mut ws, "still valid").await;
    // Two seconds of life and the validator's leeway (5 s): the bound is generous.
    let reason = expect_policy_close(&mut ws, Instant::now(), Duration::from_secs(15)).await;
    assert_eq!(reason, "token expired");
}

#[tokio::test]
async fn websocket_over_http2_extended_connect_is_bridged_to_an_http1_upgrade() {
    let s = setup().await;
    let token = svc_token(&s.gw).await;
    let tls = tls_connect_alpn(&s.gw, &[b"h2"]).await;
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await.unwrap();
    tokio::spawn(conn);
    // One plain request first: the server's SETTINGS (ENABLE_CONNECT_PROTOCOL) arrive with it.
    let warm = http::Request::get(format!("https://localhost:{}/nows/warm", s.gw.https.port()))
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let _ = sender.send_request(warm).await.unwrap();
    let connect = |path: &str, token: &str| {
        let mut req = http::Request::builder()
            .method(http::Method::CONNECT)
            .uri(format!("https://localhost:{}{path}", s.gw.https.port()))
            .header("sec-websocket-version", "13")
            .header("authorization", format!("Bearer {token}"))
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        req.extensions_mut().insert(hyper::ext::Protocol::from_static("websocket"));
        req
    };
    let mut resp = sender.send_request(connect("/ws/h2", &token)).await.unwrap();
    assert_eq!(resp.status(), 200);
    let upgraded = hyper::upgrade::on(&mut resp).await.unwrap();
    let mut ws = WebSocketStream::from_raw_socket(
        TokioIo::new(upgraded),
        tokio_tungstenite::tungstenite::protocol::Role::Client,
        None,
    )
    .await;
    echo_once(&mut ws, "over h2").await;
    let seen = s.ws.last();
    assert_eq!(seen.uri, "/ws/h2");
    assert_eq!(seen.header("x-auth-client-id"), Some("svc"));
    assert_eq!(seen.header("upgrade"), Some("websocket"));

    // Refused like any request, on the same connection.
    let resp = sender.send_request(connect("/ws/h2", "bad")).await.unwrap();
    assert_eq!(resp.status(), 401);
    let resp = sender.send_request(connect("/nows/h2", &token)).await.unwrap();
    assert_eq!(resp.status(), 400);

    // And ended with the token.
    let at = Instant::now();
    revoke(&s.gw, &token).await;
    assert_eq!(expect_policy_close(&mut ws, at, Duration::from_secs(5)).await, "token revoked");
}

#[tokio::test]
async fn an_event_stream_is_cut_when_its_token_is_revoked_and_grpc_gets_status_16() {
    let s = setup().await;
    let token = svc_token(&s.gw).await;
    let resp = s.gw.client().get(s.gw.url("/events/sse")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.bytes_stream();
    let first = tokio::time::timeout(Duration::from_secs(5), body.next()).await.unwrap().unwrap().unwrap();
    assert!(first.starts_with(b"data: 0"), "{first:?}");

    // A gRPC-labelled stream over HTTP/2 (raw h2, to see the trailers).
    let tls = tls_connect_alpn(&s.gw, &[b"h2"]).await;
    let (h2, conn) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(conn);
    let mut h2 = h2.ready().await.unwrap();
    let req = http::Request::get(format!("https://localhost:{}/events/grpc", s.gw.https.port()))
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (resp, _) = h2.send_request(req, true).unwrap();
    let resp = resp.await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut grpc = resp.into_body();
    let _ = grpc.data().await.unwrap().unwrap();

    // Past the quiet start, then revoked.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let at = Instant::now();
    revoke(&s.gw, &token).await;
    let cut = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match body.next().await {
                Some(Ok(_)) => continue,
                Some(Err(_)) => return true,
                None => return false,
            }
        }
    })
    .await
    .expect("the stream ends in time");
    assert!(cut, "an aborted body, not a clean end");
    eprintln!("event stream cut {:?} after the revocation", at.elapsed());
    let trailers = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(d) = grpc.data().await {
            d.unwrap();
        }
        grpc.trailers().await.unwrap()
    })
    .await
    .expect("the gRPC stream ends in time")
    .expect("trailers");
    assert_eq!(trailers.get("grpc-status").unwrap(), "16");
    assert_eq!(trailers.get("grpc-message").unwrap(), "token revoked");
    assert!(counter(&s.gw, "portcullis_connections_ended_total{reason=\"revoked\"}").await >= 2.0);
}

#[tokio::test]
async fn disabling_the_client_by_a_reload_closes_its_websocket() {
    let s = setup().await;
    let token = svc_token(&s.gw).await;
    let mut ws = connect_plain(&s.gw, "/ws/client", Some(&token)).await.unwrap();
    echo_once(&mut ws, "enabled").await;
    let at = Instant::now();
    s.gw.rewrite_config(|t| t.replacen("id = \"svc\"\n", "id = \"svc\"\nenabled = false\n", 1));
    assert_eq!(expect_policy_close(&mut ws, at, Duration::from_secs(5)).await, "client disabled");
    assert_eq!(counter(&s.gw, "portcullis_connections_ended_total{reason=\"client_disabled\"}").await, 1.0);
}

#[tokio::test]
async fn an_operator_block_of_the_subject_closes_its_websocket() {
    use portcullis::store::{Block, BlockKey, BlockKind};
    let s = setup().await;
    let token = svc_token(&s.gw).await;
    let mut ws = connect_plain(&s.gw, "/ws/blocked", Some(&token)).await.unwrap();
    echo_once(&mut ws, "not yet").await;
    let at = Instant::now();
    let key = BlockKey { kind: BlockKind::Sub, value: "svc".into(), iss: None };
    s.gw.gateway.block(Block { key, expires_at: None, created_at: 0, reason: None }).await.unwrap();
    assert_eq!(expect_policy_close(&mut ws, at, Duration::from_secs(5)).await, "token blocked");
}

#[tokio::test]
async fn upgraded_connections_are_bounded_by_max_connections() {
    let ws = WsUpstream::start().await;
    let (sse, sse_task) = sse_upstream().await;
    let echo = EchoUpstream::start().await;
    let gw = gateway_with_limits(echo.addr, &ws_routes(ws.addr, sse), "max_connections = 2\n").await;
    let token = svc_token(&gw).await;
    let mut first = connect_plain(&gw, "/ws/1", Some(&token)).await.unwrap();
    let mut second = connect_plain(&gw, "/ws/2", Some(&token)).await.unwrap();
    echo_once(&mut first, "1").await;
    echo_once(&mut second, "2").await;
    // Both left their listener slots, so a third gets through the listener, and is refused.
    let (status, _, _) = refusal(connect_plain(&gw, "/ws/3", Some(&token)).await.unwrap_err());
    assert_eq!(status, 503);
    first.close(None).await.unwrap();
    while first.next().await.is_some() {}
    drop(first);
    wait_until("a place frees up", || {
        let (gw, token) = (&gw, token.clone());
        async move { connect_plain(gw, "/ws/4", Some(&token)).await.is_ok() }
    })
    .await;
    sse_task.abort();
}

/// A WebSocket upstream that pushes 64 KiB binary messages as fast as it can, and reports
/// each text message it receives and, at last, `closed` when its connection ends.
async fn flooding_upstream() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let Ok((stream, _)) = listener.accept().await else { return };
        let Ok(ws) = tokio_tungstenite::accept_async(stream).await else { return };
        let (mut sink, mut stream) = ws.split();
        let flood = tokio::spawn(async move {
            let chunk = Bytes::from(vec![7u8; 64 * 1024]);
            while sink.send(Message::Binary(chunk.clone())).await.is_ok() {}
        });
        while let Some(Ok(msg)) = stream.next().await {
            if let Message::Text(t) = msg {
                let _ = tx.send(t.to_string());
            }
        }
        flood.abort();
        let _ = tx.send("closed".to_string());
    });
    (addr, rx)
}

#[tokio::test]
async fn a_client_that_stops_reading_is_still_cut_off_when_its_token_is_revoked() {
    let (up, mut seen) = flooding_upstream().await;
    let echo = EchoUpstream::start().await;
    let routes =
        format!("[[route]]\nprefix = \"/flood\"\nupstream = \"http://{up}\"\nscopes = [\"read\"]\nwebsocket = true\n");
    let gw = TestGateway::start_with(echo.addr, &routes).await;
    let token = svc_token(&gw).await;
    // The client never reads: the upstream's pushes fill every buffer on the way.
    let mut ws = connect_plain(&gw, "/flood/x", Some(&token)).await.unwrap();
    ws.send(Message::text("before")).await.unwrap();
    assert_eq!(tokio::time::timeout(Duration::from_secs(5), seen.recv()).await.unwrap().unwrap(), "before");
    tokio::time::sleep(Duration::from_millis(500)).await;
    revoke(&gw, &token).await;
    let revoked_at = Instant::now();
    // Past the lease's next check: what the client sends now must not reach the upstream.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), ws.send(Message::text("after"))).await;
    let next = tokio::time::timeout(Duration::from_secs(10), seen.recv()).await;
    assert_eq!(next.expect("the upstream's connection is closed in time").as_deref(), Some("closed"));
    eprintln!("upstream closed {:?} after the revocation", revoked_at.elapsed());
    assert_eq!(counter(&gw, "portcullis_connections_ended_total{reason=\"revoked\"}").await, 1.0);
    drop(echo);
}

#[tokio::test]
async fn an_upstream_101_to_a_plain_request_is_a_502_and_handshake_fields_are_not_forwarded() {
    // An upstream that answers every request with a bare 101, then closes.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let _ = s
                .write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n")
                .await;
        }
    });
    let echo = EchoUpstream::start().await;
    let routes = format!("[[route]]\nprefix = \"/sw\"\nupstream = \"http://{up}\"\nscopes = [\"read\"]\n");
    let gw = TestGateway::start_with(echo.addr, &routes).await;
    let token = svc_token(&gw).await;
    for client in [gw.client(), https_client(&gw.pki.ca_pem, true)] {
        let resp = client.get(gw.url("/sw/x")).bearer_auth(&token).send().await.unwrap();
        assert_eq!(resp.status(), 502, "{:?}", resp.version());
    }
    // No `Connection: upgrade`: not an upgrade, and the handshake's fields do not go up.
    let resp = gw
        .client()
        .get(gw.url("/api/x"))
        .bearer_auth(&token)
        .header("upgrade", "websocket")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .header("sec-websocket-version", "13")
        .send()
        .await
        .unwrap();
    let echo_seen: Echo = resp.json().await.unwrap();
    assert!(echo_seen.header("sec-websocket-key").is_none(), "{echo_seen:?}");
    assert!(echo_seen.header("sec-websocket-version").is_none(), "{echo_seen:?}");
    assert!(echo_seen.header("upgrade").is_none(), "{echo_seen:?}");
    drop(echo);
}

// ---------------------------------------------------------------------------------------
// Idle upgraded connections (issue 12: idle policy).

/// A WebSocket upstream that echoes text and reports each text it gets and, at last,
/// `closed` when its connection ends (by the gateway, or a close frame).
async fn reporting_upstream() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else { return };
                while let Some(Ok(msg)) = ws.next().await {
                    if let Message::Text(t) = &msg {
                        let _ = tx.send(t.to_string());
                        if ws.send(msg).await.is_err() {
                            break;
                        }
                    }
                }
                let _ = tx.send("closed".to_string());
            });
        }
    });
    (addr, rx)
}

fn idle_routes(up: SocketAddr) -> String {
    format!(
        r#"
[[route]]
prefix = "/quiet"
upstream = "http://{up}"
scopes = ["read"]
websocket = true
websocket_idle_timeout = "1s"

[[route]]
prefix = "/wsr"
upstream = "http://{up}"
scopes = ["read"]
websocket = true
"#
    )
}

/// Wait for a close frame with `code` within `limit`; its reason.
async fn expect_close<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    code: CloseCode,
    limit: Duration,
) -> String {
    let at = Instant::now();
    loop {
        let next = tokio::time::timeout(limit.saturating_sub(at.elapsed()), ws.next()).await;
        match next.expect("a close frame in time") {
            Some(Ok(Message::Close(Some(frame)))) => {
                assert_eq!(frame.code, code, "{frame:?}");
                return frame.reason.to_string();
            }
            Some(Ok(Message::Close(None))) => panic!("a close frame without a code"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("the connection failed instead of closing: {e}"),
            None => panic!("the connection ended without a close frame"),
        }
    }
}

#[tokio::test]
async fn a_websocket_silent_both_ways_is_closed_after_its_idle_timeout_and_frees_its_place() {
    let (up, mut seen) = reporting_upstream().await;
    let echo = EchoUpstream::start().await;
    let gw = gateway_with_limits(echo.addr, &idle_routes(up), "max_connections = 2\n").await;
    let token = svc_token(&gw).await;
    let mut first = connect_plain(&gw, "/quiet/1", Some(&token)).await.unwrap();
    let mut second = connect_plain(&gw, "/quiet/2", Some(&token)).await.unwrap();
    echo_once(&mut first, "1").await;
    let last_byte = Instant::now();
    echo_once(&mut second, "2").await;
    // At max_connections: the next handshake is refused.
    let (status, _, _) = refusal(connect_plain(&gw, "/quiet/3", Some(&token)).await.unwrap_err());
    assert_eq!(status, 503);
    // Nothing moves: both are closed with 1001 after the route's 1 s (checked every
    // quarter of it), and their upstream sockets with them.
    assert_eq!(expect_close(&mut first, CloseCode::Away, Duration::from_secs(10)).await, "idle timeout");
    let closed_after = last_byte.elapsed();
    eprintln!("closed {closed_after:?} after the last byte");
    assert!(closed_after >= Duration::from_millis(800), "closed too early: {closed_after:?}");
    assert_eq!(expect_close(&mut second, CloseCode::Away, Duration::from_secs(10)).await, "idle timeout");
    for expected in ["1", "2", "closed", "closed"] {
        let got = tokio::time::timeout(Duration::from_secs(10), seen.recv()).await.expect("in time");
        assert_eq!(got.as_deref(), Some(expected));
    }
    // Their places are free: a new WebSocket is accepted at max_connections.
    wait_until("the places are given back", || async { gw.gateway.upgraded.load(Ordering::Acquire) == 0 }).await;
    let mut third = connect_plain(&gw, "/quiet/4", Some(&token)).await.unwrap();
    echo_once(&mut third, "4").await;
    assert_eq!(counter(&gw, "portcullis_connections_ended_total{reason=\"idle\"}").await, 2.0);
    drop(echo);
}

#[tokio::test]
async fn a_websocket_kept_alive_by_pings_is_not_closed_for_idleness() {
    let (up, mut seen) = reporting_upstream().await;
    let echo = EchoUpstream::start().await;
    let gw = TestGateway::start_with(echo.addr, &idle_routes(up)).await;
    let token = svc_token(&gw).await;
    let mut ws = connect_plain(&gw, "/quiet/pinged", Some(&token)).await.unwrap();
    echo_once(&mut ws, "start").await;
    // Three and a half idle timeouts of pings every 300 ms (the upstream answers pongs):
    // control frames are bytes too.
    let until = Instant::now() + Duration::from_millis(3500);
    let mut pongs = 0;
    while Instant::now() < until {
        ws.send(Message::Ping(Bytes::from_static(b"hi"))).await.unwrap();
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await.expect("a pong in time") {
            Some(Ok(Message::Pong(_))) => pongs += 1,
            other => panic!("expected a pong, got {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(pongs >= 5, "{pongs}");
    echo_once(&mut ws, "still open").await;
    assert_eq!(seen.recv().await.as_deref(), Some("start"));
    assert_eq!(seen.recv().await.as_deref(), Some("still open"));
    assert_eq!(counter(&gw, "portcullis_connections_ended_total{reason=\"idle\"}").await, 0.0);
    drop(echo);
}

/// A masked text frame, as a client sends it (RFC 6455 §5.3).
fn client_text_frame(text: &str) -> Bytes {
    let mask = [0x12u8, 0x34, 0x56, 0x78];
    let mut f = vec![0x81, 0x80 | u8::try_from(text.len()).unwrap()];
    f.extend_from_slice(&mask);
    f.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    Bytes::from(f)
}

#[tokio::test]
async fn a_reset_extended_connect_stream_or_a_dead_h2_connection_frees_its_place_and_upstream_at_once() {
    let (up, mut seen) = reporting_upstream().await;
    let echo = EchoUpstream::start().await;
    // The default idle timeout (60 s): nothing here may wait for it.
    let gw = TestGateway::start_with(echo.addr, &idle_routes(up)).await;
    let token = svc_token(&gw).await;
    let port = gw.https.port();
    let tls = tls_connect_alpn(&gw, &[b"h2"]).await;
    let (h2, conn) = h2::client::handshake(tls).await.unwrap();
    let conn = tokio::spawn(conn);
    let mut h2 = h2.ready().await.unwrap();
    // A plain request first: the server's SETTINGS (ENABLE_CONNECT_PROTOCOL) come with it.
    let (warm, _) = h2
        .send_request(http::Request::get(format!("https://localhost:{port}/public/")).body(()).unwrap(), true)
        .unwrap();
    let _ = warm.await;
    let open = |h2: &mut h2::client::SendRequest<Bytes>, path: &str| {
        let mut req = http::Request::builder()
            .method(http::Method::CONNECT)
            .uri(format!("https://localhost:{port}{path}"))
            .header("sec-websocket-version", "13")
            .header("authorization", format!("Bearer {token}"))
            .body(())
            .unwrap();
        req.extensions_mut().insert(h2::ext::Protocol::from_static("websocket"));
        h2.send_request(req, false).unwrap()
    };

    // RST_STREAM (CANCEL) on an open WebSocket stream.
    let (resp, mut stream) = open(&mut h2, "/wsr/reset");
    assert_eq!(resp.await.unwrap().status(), 200);
    stream.send_data(client_text_frame("hello"), false).unwrap();
    assert_eq!(tokio::time::timeout(Duration::from_secs(5), seen.recv()).await.unwrap().as_deref(), Some("hello"));
    assert_eq!(gw.gateway.upgraded.load(Ordering::Acquire), 1);
    let reset_at = Instant::now();
    stream.send_reset(h2::Reason::CANCEL);
    let got = tokio::time::timeout(Duration::from_secs(5), seen.recv()).await;
    assert_eq!(got.expect("the upstream socket is closed promptly").as_deref(), Some("closed"));
    eprintln!("upstream closed {:?} after the reset", reset_at.elapsed());
    wait_until("the place is given back", || async { gw.gateway.upgraded.load(Ordering::Acquire) == 0 }).await;

    // The whole HTTP/2 connection dying under an open stream.
    let (resp, mut stream) = open(&mut h2, "/wsr/dies");
    assert_eq!(resp.await.unwrap().status(), 200);
    stream.send_data(client_text_frame("again"), false).unwrap();
    assert_eq!(tokio::time::timeout(Duration::from_secs(5), seen.recv()).await.unwrap().as_deref(), Some("again"));
    let died_at = Instant::now();
    conn.abort();
    drop((h2, stream));
    let got = tokio::time::timeout(Duration::from_secs(5), seen.recv()).await;
    assert_eq!(got.expect("the upstream socket is closed promptly").as_deref(), Some("closed"));
    eprintln!("upstream closed {:?} after the connection died", died_at.elapsed());
    wait_until("the place is given back", || async { gw.gateway.upgraded.load(Ordering::Acquire) == 0 }).await;
    assert_eq!(counter(&gw, "portcullis_connections_ended_total{reason=\"idle\"}").await, 0.0);
    drop(echo);
}

/// A WebSocket upstream that takes a half-close calmly: once the gateway's side ends
/// (FIN) it reports `eof` and keeps its socket open, silent, as a server may. Only the
/// gateway can then end the splice.
async fn half_close_tolerant_upstream() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut kept = Vec::new();
        while let Ok((mut s, _)) = listener.accept().await {
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && s.read(&mut byte).await.unwrap_or(0) == 1 {
                head.push(byte[0]);
            }
            let head = String::from_utf8_lossy(&head).to_string();
            let key = head
                .lines()
                .find_map(|l| l.strip_prefix("sec-websocket-key: ").or_else(|| l.strip_prefix("Sec-WebSocket-Key: ")))
                .unwrap_or("")
                .trim()
                .to_string();
            let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
            let answer = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
            );
            s.write_all(answer.as_bytes()).await.unwrap();
            let tx = tx.clone();
            let (mut rd, wr) = s.into_split();
            kept.push(wr);
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while rd.read(&mut buf).await.unwrap_or(0) > 0 {}
                let _ = tx.send("eof".to_string());
                // `rd` dropped here; the write half stays open in `kept`.
            });
        }
    });
    (addr, rx)
}

#[tokio::test]
async fn a_reset_stream_ends_the_splice_even_when_the_upstream_keeps_its_half_open() {
    let (up, mut seen) = half_close_tolerant_upstream().await;
    let echo = EchoUpstream::start().await;
    let routes =
        format!("[[route]]\nprefix = \"/calm\"\nupstream = \"http://{up}\"\nscopes = [\"read\"]\nwebsocket = true\n");
    // The default idle timeout (60 s): nothing here may wait for it.
    let gw = TestGateway::start_with(echo.addr, &routes).await;
    let token = svc_token(&gw).await;
    let port = gw.https.port();
    let tls = tls_connect_alpn(&gw, &[b"h2"]).await;
    let (h2, conn) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(conn);
    let mut h2 = h2.ready().await.unwrap();
    let (warm, _) = h2
        .send_request(http::Request::get(format!("https://localhost:{port}/public/")).body(()).unwrap(), true)
        .unwrap();
    let _ = warm.await;
    let mut open = |path: &str| {
        let mut req = http::Request::builder()
            .method(http::Method::CONNECT)
            .uri(format!("https://localhost:{port}{path}"))
            .header("sec-websocket-version", "13")
            .header("authorization", format!("Bearer {token}"))
            .body(())
            .unwrap();
        req.extensions_mut().insert(h2::ext::Protocol::from_static("websocket"));
        h2.send_request(req, false).unwrap()
    };

    // An orderly END_STREAM is a half-close: passed on, and the splice stays.
    let (resp, mut calm) = open("/calm/half");
    assert_eq!(resp.await.unwrap().status(), 200);
    calm.send_data(client_text_frame("bye"), true).unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), seen.recv()).await.unwrap();
    assert_eq!(got.as_deref(), Some("eof"));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(gw.gateway.upgraded.load(Ordering::Acquire), 1, "a half-close is not a reset");

    // RST_STREAM (CANCEL): hyper reads it as an end of stream too, yet it ends everything.
    let (resp, mut reset) = open("/calm/reset");
    assert_eq!(resp.await.unwrap().status(), 200);
    reset.send_data(client_text_frame("hi"), false).unwrap();
    wait_until("both open", || async { gw.gateway.upgraded.load(Ordering::Acquire) == 2 }).await;
    let at = Instant::now();
    reset.send_reset(h2::Reason::CANCEL);
    let got = tokio::time::timeout(Duration::from_secs(5), seen.recv()).await.unwrap();
    assert_eq!(got.as_deref(), Some("eof"));
    wait_until("the reset stream's place is given back", || async { gw.gateway.upgraded.load(Ordering::Acquire) == 1 })
        .await;
    eprintln!("place given back {:?} after the reset", at.elapsed());
    assert!(at.elapsed() < Duration::from_secs(5), "{:?}", at.elapsed());
    drop(echo);
}
