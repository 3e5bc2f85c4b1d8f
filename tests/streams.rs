//! HTTP/2 upstreams, gRPC and streams that flow: a real tonic client and server through
//! the gateway (client over TLS with h2 by ALPN, or h2c; upstream over h2c, or TLS with h2
//! by ALPN), gRPC refusals decoded as gRPC statuses, trailers passed through, and an
//! event stream whose first event reaches the client before the upstream sends the next.

mod common;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use futures_util::{Stream, StreamExt};
use http_body_util::StreamBody;
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

/// The one message type both ways: a text.
#[derive(Clone, PartialEq, prost::Message)]
struct Msg {
    #[prost(string, tag = "1")]
    text: String,
}

type Codec = tonic_prost::ProstCodec<Msg, Msg>;
type MsgStream = Pin<Box<dyn Stream<Item = Result<Msg, Status>> + Send>>;

/// A closure as the tower service tonic's server helpers take.
struct Svc<F>(F);

impl<F, Fut, Req, Resp> tower_service::Service<Req> for Svc<F>
where
    F: FnMut(Req) -> Fut,
    Fut: Future<Output = Result<Resp, Status>>,
{
    type Response = Resp;
    type Error = Status;
    type Future = Fut;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, req: Req) -> Fut {
        (self.0)(req)
    }
}

/// The request metadata as `name=value` lines, sorted.
fn metadata_text(m: &tonic::metadata::MetadataMap) -> String {
    let headers = m.clone().into_headers();
    let mut lines: Vec<String> =
        headers.iter().map(|(n, v)| format!("{}={}", n, String::from_utf8_lossy(v.as_bytes()))).collect();
    lines.sort();
    lines.join("\n")
}

/// The gRPC service of the test upstream, by method name (the last path segment, any
/// service): `Unary` answers with the request's metadata; `Count` streams three messages
/// then fails with ABORTED and a custom trailer; `Chat` echoes each message of a bidi
/// stream; `Slow` answers after 5 s.
async fn grpc_service(req: Request<Incoming>) -> Result<Response<tonic::body::Body>, Infallible> {
    let method = req.uri().path().rsplit('/').next().unwrap_or("").to_string();
    let mut grpc = tonic::server::Grpc::new(Codec::default());
    let resp = match method.as_str() {
        "Unary" => {
            let svc = Svc(|r: tonic::Request<Msg>| async move {
                let mut resp = tonic::Response::new(Msg { text: metadata_text(r.metadata()) });
                resp.metadata_mut().insert("x-upstream", MetadataValue::from_static("grpc"));
                Ok(resp)
            });
            grpc.unary(svc, req).await
        }
        "Slow" => {
            let svc = Svc(|_: tonic::Request<Msg>| async move {
                tokio::time::sleep(Duration::from_secs(5)).await;
                Ok(tonic::Response::new(Msg { text: "late".into() }))
            });
            grpc.unary(svc, req).await
        }
        "Count" => {
            let svc = Svc(|r: tonic::Request<Msg>| async move {
                let base = r.into_inner().text;
                let mut trailer = Status::aborted("counted enough");
                trailer.metadata_mut().insert("x-custom-trailer", MetadataValue::from_static("t1"));
                let items: Vec<Result<Msg, Status>> =
                    (1..=3).map(|i| Ok(Msg { text: format!("{base}{i}") })).chain([Err(trailer)]).collect();
                let stream: MsgStream = Box::pin(futures_util::stream::iter(items));
                Ok(tonic::Response::new(stream))
            });
            grpc.server_streaming(svc, req).await
        }
        "Chat" => {
            let svc = Svc(|r: tonic::Request<tonic::Streaming<Msg>>| async move {
                let stream: MsgStream =
                    Box::pin(r.into_inner().map(|m| m.map(|m| Msg { text: format!("echo:{}", m.text) })));
                Ok(tonic::Response::new(stream))
            });
            grpc.streaming(svc, req).await
        }
        _ => Status::unimplemented("no such method").into_http(),
    };
    Ok(resp)
}

/// A gRPC upstream: HTTP/2 only, over cleartext (h2c) or TLS offering h2 by ALPN.
async fn grpc_upstream(pki: Option<&Pki>) -> SocketAddr {
    grpc_upstream_on(TcpListener::bind("127.0.0.1:0").await.unwrap(), pki)
}

/// A gRPC upstream on `listener` (see [`grpc_upstream`]); it runs until the test's end.
fn grpc_upstream_on(listener: TcpListener, pki: Option<&Pki>) -> SocketAddr {
    let addr = listener.local_addr().unwrap();
    let tls = pki.map(|pki| {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        portcullis::install_crypto_provider();
        let (cert, key) = pki.leaf();
        let certs = vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()];
        let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
        let mut config = rustls::ServerConfig::builder().with_no_client_auth().with_single_cert(certs, key).unwrap();
        config.alpn_protocols = vec![b"h2".to_vec()];
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    });
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let tls = tls.clone();
            tokio::spawn(async move {
                let builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                let svc = service_fn(grpc_service);
                let _ = match tls {
                    Some(tls) => match tls.accept(stream).await {
                        Ok(s) => builder.serve_connection(TokioIo::new(s), svc).await,
                        Err(_) => return,
                    },
                    None => builder.serve_connection(TokioIo::new(stream), svc).await,
                };
            });
        }
    });
    addr
}

/// An upstream that speaks HTTP/1.1 only (what an `h2c://` route must not hang on).
async fn http1_only_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            tokio::spawn(async move {
                let svc = service_fn(|_req: Request<Incoming>| async {
                    Ok::<_, Infallible>(Response::new(http_body_util::Full::new(Bytes::from_static(b"h1"))))
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    addr
}

/// An HTTPS upstream that speaks HTTP/1.1 only (ALPN `http/1.1`) and answers with the
/// `te` header it received, or `none`.
fn tls_h1_te_upstream(pki: &Pki) -> SocketAddr {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    portcullis::install_crypto_provider();
    let (cert, key) = pki.leaf();
    let certs = vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()];
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    let mut config = rustls::ServerConfig::builder().with_no_client_auth().with_single_cert(certs, key).unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tls = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let listener = TcpListener::from_std(listener).unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let tls = tls.clone();
            tokio::spawn(async move {
                let Ok(stream) = tls.accept(stream).await else { return };
                let svc = service_fn(|req: Request<Incoming>| async move {
                    let te = req.headers().get("te").map(|v| v.to_str().unwrap_or("?").to_owned());
                    let body = te.unwrap_or_else(|| "none".into());
                    Ok::<_, Infallible>(Response::new(http_body_util::Full::new(Bytes::from(body))))
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    addr
}

/// A gateway with the usual test routes plus gRPC routes: `/h2c.Echo` (scope read, to
/// an h2c upstream), `/tls.Echo` (scope read, to a TLS upstream with h2 by ALPN),
/// `/admin.Echo` (scope admin), `/down.Echo` (nothing listening), `/h1.Echo` (h2c to an
/// HTTP/1.1-only upstream), `/tlsh1` (to an HTTPS upstream that speaks HTTP/1.1 only and
/// echoes `te`), and `/events` (to `events`, an event-stream upstream).
async fn gateway(events: Option<SocketAddr>) -> TestGateway {
    gateway_to(events, grpc_upstream(None).await).await
}

/// [`gateway`] with the h2c routes going to `h2c`.
async fn gateway_to(events: Option<SocketAddr>, h2c: SocketAddr) -> TestGateway {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(dir.path());
    let tls = grpc_upstream(Some(&pki)).await;
    let h1 = http1_only_upstream().await;
    let tls_h1 = tls_h1_te_upstream(&pki);
    let echo = EchoUpstream::start().await;
    let ca = dir.path().join("upstream-ca.pem");
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    let down = free_port();
    let events = events.unwrap_or(echo.addr);
    let extra = format!("[proxy]\nupstream_ca = \"{}\"\n", ca.display());
    let mut text = config_toml(dir.path(), &pki, echo.addr, &extra);
    text.push_str(&format!(
        r#"
[[route]]
prefix = "/h2c.Echo"
upstream = "h2c://{h2c}"
scopes = ["read"]

[[route]]
prefix = "/tls.Echo"
upstream = "https://127.0.0.1:{tls_port}"
scopes = ["read"]

[[route]]
prefix = "/admin.Echo"
upstream = "h2c://{h2c}"
scopes = ["admin"]

[[route]]
prefix = "/down.Echo"
upstream = "h2c://127.0.0.1:{down}"
scopes = ["read"]

[[route]]
prefix = "/h1.Echo"
upstream = "h2c://{h1}"
scopes = ["read"]

[[route]]
prefix = "/tlsh1"
upstream = "https://127.0.0.1:{tls_h1_port}"
scopes = ["read"]

[[route]]
prefix = "/events"
upstream = "http://{events}"
scopes = ["read"]
"#,
        tls_port = tls.port(),
        tls_h1_port = tls_h1.port()
    ));
    // The echo upstream lives as long as the test's runtime (its task is not aborted).
    std::mem::forget(echo);
    TestGateway::start_text(dir, pki, &text).await
}

type Client = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    tonic::body::Body,
>;

/// A tonic client of the gateway: over TLS (h2 by ALPN) or h2c on the plaintext listener.
fn grpc_client(gw: &TestGateway, tls: bool) -> tonic::client::Grpc<Client> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    portcullis::install_crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(gw.pki.ca_pem.as_bytes()).unwrap()).unwrap();
    let config = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    let connector =
        hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config).https_or_http().enable_http2().build();
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new()).http2_only(true).build(connector);
    let origin = if tls { format!("https://localhost:{}", gw.https.port()) } else { gw.http_url("") };
    tonic::client::Grpc::with_origin(client, origin.parse().unwrap())
}

fn with_token<T>(msg: T, token: Option<&str>) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    if let Some(t) = token {
        req.metadata_mut().insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    req
}

async fn unary(
    client: &mut tonic::client::Grpc<Client>,
    path: &'static str,
    req: tonic::Request<Msg>,
) -> Result<tonic::Response<Msg>, Status> {
    client.ready().await.unwrap();
    client.unary(req, http::uri::PathAndQuery::from_static(path), Codec::default()).await
}

#[tokio::test]
async fn unary_calls_carry_identity_metadata_over_every_transport() {
    let gw = gateway(None).await;
    let token = svc_token(&gw).await;
    for (tls, path) in
        [(true, "/h2c.Echo/Unary"), (true, "/tls.Echo/Unary"), (false, "/h2c.Echo/Unary"), (false, "/tls.Echo/Unary")]
    {
        let mut client = grpc_client(&gw, tls);
        let mut req = with_token(Msg { text: "hi".into() }, Some(&token));
        // Forged identity metadata, in two spellings: stripped.
        req.metadata_mut().insert("x-auth-subject", MetadataValue::from_static("root"));
        req.metadata_mut().insert("x-remote-user", MetadataValue::from_static("root"));
        let resp = unary(&mut client, path, req).await.unwrap_or_else(|s| panic!("{path} tls={tls}: {s:?}"));
        assert_eq!(resp.metadata().get("x-upstream").unwrap(), "grpc", "response headers pass through");
        let seen = resp.into_inner().text;
        let lines: Vec<&str> = seen.lines().collect();
        assert!(lines.contains(&"x-auth-subject=svc"), "{path} tls={tls}: {seen}");
        assert!(lines.contains(&"x-auth-client-id=svc"), "{seen}");
        assert!(lines.contains(&"x-auth-scope=read"), "{seen}");
        assert!(lines.contains(&"te=trailers"), "te: trailers reaches a gRPC upstream: {seen}");
        assert!(lines.contains(&"content-type=application/grpc"), "{seen}");
        assert!(!seen.contains("root"), "forged identity stripped: {seen}");
        assert!(!seen.contains("authorization="), "the token is not forwarded: {seen}");
    }
}

#[tokio::test]
async fn server_streaming_and_bidi_flow_and_upstream_trailers_pass_through() {
    let gw = gateway(None).await;
    let token = svc_token(&gw).await;
    for (tls, prefix) in [(true, "/h2c.Echo"), (true, "/tls.Echo"), (false, "/h2c.Echo")] {
        let mut client = grpc_client(&gw, tls);
        client.ready().await.unwrap();
        let path = http::uri::PathAndQuery::try_from(format!("{prefix}/Count")).unwrap();
        let resp =
            client.server_streaming(with_token(Msg { text: "n".into() }, Some(&token)), path, Codec::default()).await;
        let mut stream = resp.unwrap().into_inner();
        for i in 1..=3 {
            assert_eq!(stream.message().await.unwrap().unwrap().text, format!("n{i}"));
        }
        // The upstream's grpc-status, grpc-message and custom trailer, in trailers.
        let status = stream.message().await.unwrap_err();
        assert_eq!(status.code(), Code::Aborted, "{status:?}");
        assert_eq!(status.message(), "counted enough");
        assert_eq!(status.metadata().get("x-custom-trailer").unwrap(), "t1", "{status:?}");

        // Bidi: each message answered before the next is sent.
        let (tx, rx) = tokio::sync::mpsc::channel::<Msg>(1);
        let outbound = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
        client.ready().await.unwrap();
        let path = http::uri::PathAndQuery::try_from(format!("{prefix}/Chat")).unwrap();
        tx.send(Msg { text: "a".into() }).await.unwrap();
        let resp = client.streaming(with_token(outbound, Some(&token)), path, Codec::default()).await;
        let mut inbound = resp.unwrap().into_inner();
        assert_eq!(inbound.message().await.unwrap().unwrap().text, "echo:a");
        tx.send(Msg { text: "b".into() }).await.unwrap();
        assert_eq!(inbound.message().await.unwrap().unwrap().text, "echo:b");
        drop(tx);
        assert!(inbound.message().await.unwrap().is_none(), "an OK end after the client's half-close");
    }
}

#[tokio::test]
async fn refusals_are_grpc_statuses() {
    let gw = gateway(None).await;
    let token = svc_token(&gw).await;
    let mut client = grpc_client(&gw, true);
    let msg = || Msg { text: "x".into() };

    let s = unary(&mut client, "/h2c.Echo/Unary", with_token(msg(), None)).await.unwrap_err();
    assert_eq!(s.code(), Code::Unauthenticated, "{s:?}");
    assert_eq!(s.message(), "a bearer token is required");
    assert!(s.metadata().get("www-authenticate").is_some_and(|v| v.to_str().unwrap().starts_with("Bearer")));

    let s = unary(&mut client, "/h2c.Echo/Unary", with_token(msg(), Some("not.a.token"))).await.unwrap_err();
    assert_eq!(s.code(), Code::Unauthenticated, "{s:?}");
    assert!(s.metadata().get("www-authenticate").unwrap().to_str().unwrap().contains("invalid_token"));

    let s = unary(&mut client, "/admin.Echo/Unary", with_token(msg(), Some(&token))).await.unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
    assert!(s.metadata().get("www-authenticate").unwrap().to_str().unwrap().contains("insufficient_scope"));

    let s = unary(&mut client, "/down.Echo/Unary", with_token(msg(), Some(&token))).await.unwrap_err();
    assert_eq!(s.code(), Code::Unavailable, "{s:?}");

    let s = unary(&mut client, "/h2c.Echo/Slow", with_token(msg(), Some(&token))).await.unwrap_err();
    assert_eq!(s.code(), Code::DeadlineExceeded, "{s:?}");

    let s = unary(&mut client, "/nowhere.Echo/Unary", with_token(msg(), Some(&token))).await.unwrap_err();
    assert_eq!(s.code(), Code::Unimplemented, "{s:?}");

    // The access log and metrics count the refusal, not the wire's 200.
    let metrics = gw.client().get(gw.admin_url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.lines().any(|l| l.contains("status=\"401\"") && l.contains("/h2c.Echo")), "{metrics}");

    // The same refusal to a caller that is not gRPC is the usual HTTP answer.
    let resp = gw.client().post(gw.url("/h2c.Echo/Unary")).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert!(resp.headers().get("grpc-status").is_none());
}

#[tokio::test]
async fn a_shared_http2_connection_the_upstream_closed_is_replaced() {
    // An upstream that serves one connection, closes it (GOAWAY, then the socket), and
    // then serves again on the same port.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    let listener = TcpListener::from_std(listener).unwrap();
    let (close_tx, close_rx) = tokio::sync::oneshot::channel::<()>();
    let first = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(stream), service_fn(grpc_service));
        tokio::pin!(conn);
        tokio::select! {
            _ = conn.as_mut() => {}
            _ = close_rx => {
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
            }
        }
        listener
    });
    let gw = gateway_to(None, addr).await;
    let token = svc_token(&gw).await;
    let mut client = grpc_client(&gw, true);
    let call = || with_token(Msg { text: "x".into() }, Some(&token));
    unary(&mut client, "/h2c.Echo/Unary", call()).await.unwrap();
    close_tx.send(()).unwrap();
    let listener = first.await.unwrap();
    grpc_upstream_on(listener, None);
    for _ in 0..3 {
        unary(&mut client, "/h2c.Echo/Unary", call()).await.unwrap();
    }
}

#[tokio::test]
async fn h2c_to_an_http1_only_upstream_is_a_502_not_a_hang() {
    let gw = gateway(None).await;
    let token = svc_token(&gw).await;
    let started = std::time::Instant::now();
    let resp = gw.client().get(gw.url("/h1.Echo/x")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(resp.status(), 502);
    // Well within upstream_timeout (2 s): the upstream's answer to the preface ends it.
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    let mut client = grpc_client(&gw, true);
    let s = unary(&mut client, "/h1.Echo/Unary", with_token(Msg::default(), Some(&token))).await.unwrap_err();
    assert_eq!(s.code(), Code::Unavailable, "{s:?}");
}

#[tokio::test]
async fn plain_http_over_h2_upstreams_keeps_bodies_and_statuses() {
    // Not gRPC: an ordinary request to an h2c route, a body up and the upstream's answer back.
    let gw = gateway(None).await;
    let token = svc_token(&gw).await;
    let resp = gw.client().post(gw.url("/h2c.Echo/Nothing")).bearer_auth(&token).body("x").send().await.unwrap();
    // tonic's answer to an unknown method: HTTP 200 with grpc-status 12 in the headers.
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["grpc-status"], "12");
    assert_eq!(resp.version(), http::Version::HTTP_2, "the client side is HTTP/2 by ALPN");

    // An HTTP/1.1 upstream gets no `te`, `trailers` or not (hop-by-hop), as before.
    for client in [gw.client(), https_client(&gw.pki.ca_pem, true)] {
        let resp = client.get(gw.url("/api/x")).bearer_auth(&token).header("te", "trailers").send().await.unwrap();
        let echo: Echo = resp.json().await.unwrap();
        assert!(echo.header("te").is_none(), "{echo:?}");
        assert_eq!(echo.version, "HTTP/1.1", "{echo:?}");
    }
}

#[tokio::test]
async fn te_trailers_never_reaches_an_https_upstream_that_speaks_http1() {
    // Before the gateway has seen the upstream answer, a plain request's `te: trailers`
    // stays home; only a gRPC request (which needs HTTP/2) carries it, and once the upstream
    // has answered over HTTP/1.1 nothing does.
    let gw = gateway(None).await;
    let token = svc_token(&gw).await;
    let get = |grpc: bool| {
        let mut req = gw.client().get(gw.url("/tlsh1/x")).bearer_auth(&token).header("te", "trailers");
        if grpc {
            req = req.header("content-type", "application/grpc");
        }
        req.send()
    };
    for (grpc, te) in [(false, "none"), (false, "none"), (true, "none"), (false, "none")] {
        let resp = get(grpc).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.text().await.unwrap(), te, "grpc={grpc}");
    }
}

/// An upstream answering with an event stream whose events are sent when the test says
/// so: for each request it hands the test a gate; each `()` on it lets the next event out,
/// and the stream ends when the gate is dropped.
async fn gated_event_upstream() -> (SocketAddr, tokio::sync::mpsc::Receiver<tokio::sync::mpsc::Sender<()>>) {
    let (gates_tx, gates_rx) = tokio::sync::mpsc::channel::<tokio::sync::mpsc::Sender<()>>(4);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let gates = gates_tx.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |_req: Request<Incoming>| {
                    let gates = gates.clone();
                    async move {
                        let (tx, rx) = tokio::sync::mpsc::channel::<()>(1);
                        let _ = gates.send(tx).await;
                        let events = futures_util::stream::unfold((rx, 0u32), |(mut rx, n)| async move {
                            // The first event goes at once; each next one waits for the gate.
                            if n > 0 {
                                rx.recv().await?;
                            }
                            let frame = Frame::data(Bytes::from(format!("data: event {n}\n\n")));
                            Some((Ok::<_, Infallible>(frame), (rx, n + 1)))
                        });
                        let mut resp = Response::new(StreamBody::new(events));
                        resp.headers_mut().insert("content-type", "text/event-stream".parse().unwrap());
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    (addr, gates_rx)
}

#[tokio::test]
async fn an_event_stream_reaches_the_client_event_by_event() {
    let (events, mut gates) = gated_event_upstream().await;
    let gw = gateway(Some(events)).await;
    let token = svc_token(&gw).await;
    for http2 in [false, true] {
        let client = https_client(&gw.pki.ca_pem, http2);
        let mut resp = client.get(gw.url("/events")).bearer_auth(&token).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        let gate = gates.recv().await.unwrap();
        // The upstream has sent event 0 only; event 1 waits for the gate, opened only
        // once event 0 has arrived here. A buffering gateway never gets past this line.
        let first = tokio::time::timeout(Duration::from_secs(20), resp.chunk()).await;
        let first = first.expect("the first event arrives while the upstream holds the second").unwrap().unwrap();
        assert_eq!(&first[..], b"data: event 0\n\n", "http2={http2}");
        gate.send(()).await.unwrap();
        let second = tokio::time::timeout(Duration::from_secs(20), resp.chunk()).await.unwrap().unwrap().unwrap();
        assert_eq!(&second[..], b"data: event 1\n\n");
        drop(gate);
        let rest = tokio::time::timeout(Duration::from_secs(20), resp.bytes()).await.unwrap().unwrap();
        assert!(rest.is_empty(), "the stream ends when the upstream's does");
    }
}

#[tokio::test]
async fn a_stream_lasts_past_the_upstream_timeout_and_the_idle_timeout_while_bytes_move() {
    // upstream_timeout bounds the wait for the response head only; the idle timeout (1 s
    // here) does not cut a response that keeps sending.
    let (events, mut gates) = gated_event_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(dir.path());
    let text = config_toml(dir.path(), &pki, events, "")
        .replace("[limits]\n", "[limits]\nidle_timeout = \"1s\"\n")
        .replace("upstream_timeout = \"2s\"", "upstream_timeout = \"1s\"")
        + &format!("\n[[route]]\nprefix = \"/events\"\nupstream = \"http://{events}\"\nscopes = [\"read\"]\n");
    let gw = TestGateway::start_text(dir, pki, &text).await;
    let token = svc_token(&gw).await;
    let mut resp = gw.client().get(gw.url("/events")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let gate = gates.recv().await.unwrap();
    let started = std::time::Instant::now();
    let mut n = 0;
    // An event every 250 ms for 3 s: three idle timeouts and three upstream timeouts long.
    while started.elapsed() < Duration::from_secs(3) {
        let chunk = tokio::time::timeout(Duration::from_secs(10), resp.chunk()).await.unwrap().unwrap().unwrap();
        assert_eq!(chunk, Bytes::from(format!("data: event {n}\n\n")));
        n += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
        gate.send(()).await.unwrap();
    }
    assert!(n >= 8, "{n} events");
    drop(gate);
    // The event the last gate let out, then the end.
    let rest = resp.bytes().await.unwrap();
    assert_eq!(rest, Bytes::from(format!("data: event {n}\n\n")), "the stream ends cleanly when the upstream's does");
}

/// An h2c upstream that tells the test the request trailers it got (names, `-` when none)
/// and answers with trailers of its own: one to keep, the gateway's cookie and another.
/// (HTTP/2 cannot carry hop-by-hop fields at all: the h2 crate refuses to send them.)
async fn trailer_upstream() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<String>) {
    use http_body_util::BodyExt;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let tx = tx.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let tx = tx.clone();
                    async move {
                        let collected = req.into_body().collect().await.unwrap();
                        let names = match collected.trailers() {
                            Some(t) => t.iter().map(|(n, v)| format!("{n}={}", v.to_str().unwrap_or("?"))).collect(),
                            None => vec!["-".to_string()],
                        };
                        let _ = tx.send(names.join("\n"));
                        let mut trailers = http::HeaderMap::new();
                        trailers.insert("x-kept", "1".parse().unwrap());
                        trailers.append("set-cookie", "__Host-portcullis_session=evil; Path=/".parse().unwrap());
                        trailers.append("set-cookie", "theirs=1".parse().unwrap());
                        // Fields a trailer may not carry, the gateway's request id and the
                        // identity namespace (black-box finding, stop 31).
                        for (name, value) in [
                            ("x-request-id", "upstream-trailer"),
                            ("x_request_id", "upstream-trailer"),
                            ("content-length", "5"),
                            ("host", "evil"),
                            ("location", "/evil"),
                            ("x-auth-subject", "trailer"),
                            ("x_auth_client_id", "trailer"),
                        ] {
                            trailers.append(http::HeaderName::from_static(name), value.parse().unwrap());
                        }
                        let frames: Vec<Result<Frame<Bytes>, Infallible>> =
                            vec![Ok(Frame::data(Bytes::from_static(b"ok"))), Ok(Frame::trailers(trailers))];
                        Ok::<_, Infallible>(Response::new(StreamBody::new(futures_util::stream::iter(frames))))
                    }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, rx)
}

#[tokio::test]
async fn request_trailers_never_reach_the_upstream_and_response_trailers_are_filtered() {
    use http_body_util::BodyExt;
    let (up, mut seen) = trailer_upstream().await;
    let gw = gateway_to(None, up).await;
    let token = svc_token(&gw).await;

    // HTTP/2 client trailers: forged identity, a credential, a forwarding header, our cookie.
    let stream = tokio::net::TcpStream::connect(gw.http).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let mut forged = http::HeaderMap::new();
    forged.insert("x-auth-client-id", "root".parse().unwrap());
    forged.insert("authorization", "Bearer x".parse().unwrap());
    forged.insert("x-forwarded-for", "1.2.3.4".parse().unwrap());
    forged.insert("cookie", "__Host-portcullis_session=S".parse().unwrap());
    let frames: Vec<Result<Frame<Bytes>, Infallible>> =
        vec![Ok(Frame::data(Bytes::from_static(b"body"))), Ok(Frame::trailers(forged))];
    let req = Request::post(gw.http_url("/h2c.Echo/T"))
        .header("authorization", format!("Bearer {token}"))
        .body(StreamBody::new(futures_util::stream::iter(frames)))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let got = resp.into_body().collect().await.unwrap();
    let trailers = got.trailers().cloned().expect("the upstream's trailers reach the client");
    assert_eq!(trailers["x-kept"], "1");
    let cookies: Vec<_> = trailers.get_all("set-cookie").iter().collect();
    assert_eq!(cookies, ["theirs=1"], "the gateway's cookie is not set from a trailer");
    let names: Vec<&str> = trailers.keys().map(|n| n.as_str()).collect();
    assert_eq!(names.len(), 2, "only x-kept and set-cookie pass: {names:?}");
    assert_eq!(seen.recv().await.unwrap(), "-", "HTTP/2 request trailers are dropped");

    // HTTP/1.1 chunked trailers to the same h2c route.
    let mut s = tokio::net::TcpStream::connect(gw.http).await.unwrap();
    let head = format!(
        "POST /h2c.Echo/T HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nTransfer-Encoding: chunked\r\n\
         Trailer: X-Auth-Client-Id\r\nConnection: close\r\n\r\n4\r\nbody\r\n0\r\nX-Auth-Client-Id: root\r\n\
         Authorization: Bearer x\r\n\r\n"
    );
    tokio::io::AsyncWriteExt::write_all(&mut s, head.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tokio::io::AsyncReadExt::read_to_end(&mut s, &mut out)).await;
    assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 200"), "{}", String::from_utf8_lossy(&out));
    assert_eq!(seen.recv().await.unwrap(), "-", "HTTP/1.1 request trailers are dropped");
}
