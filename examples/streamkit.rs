//! Upstreams and a client for the stream rows of `benches/load.sh` (issue 12).
//!
//! - `ws-echo --listen ADDR`: a WebSocket echo server (tokio-tungstenite), every message
//!   sent back as it came.
//! - `ws-client --url ws://HOST:PORT/PATH [--token T] [--messages N] [--size B]
//!   [--window W]`: opens ONE WebSocket connection, sends N binary messages of B bytes
//!   keeping at most W unanswered, checks every echo, and prints `msgs_per_s N` and
//!   `messages N` on stdout.
//! - `grpc-upstream --listen ADDR`: a gRPC server over h2c (tonic's server helpers on
//!   hyper's HTTP/2 connection, message types written by hand: no protoc) whose every
//!   method is a unary echo of one `string text = 1` message.
//! - `grpc-body --text T --out FILE`: the 5-byte-prefixed request message h2load sends.
use std::convert::Infallible;
use std::future::Future;
use std::task::{Context, Poll};
use std::time::Instant;

use anyhow::{Context as _, bail};
use futures_util::{SinkExt, StreamExt};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

#[derive(Clone, PartialEq, prost::Message)]
struct Msg {
    #[prost(string, tag = "1")]
    text: String,
}
type Codec = tonic_prost::ProstCodec<Msg, Msg>;

struct Svc<F>(F);
impl<F, Fut, Req, Resp> tower_service::Service<Req> for Svc<F>
where
    F: FnMut(Req) -> Fut,
    Fut: Future<Output = Result<Resp, tonic::Status>>,
{
    type Response = Resp;
    type Error = tonic::Status;
    type Future = Fut;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), tonic::Status>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, req: Req) -> Fut {
        (self.0)(req)
    }
}

async fn grpc_service(req: Request<Incoming>) -> Result<Response<tonic::body::Body>, Infallible> {
    let mut grpc = tonic::server::Grpc::new(Codec::default());
    let svc = Svc(|r: tonic::Request<Msg>| async move { Ok(tonic::Response::new(r.into_inner())) });
    Ok(grpc.unary(svc, req).await)
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

async fn ws_echo(listen: &str) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            let Ok(ws) = tokio_tungstenite::accept_async(stream).await else { return };
            let (mut tx, mut rx) = ws.split();
            while let Some(Ok(msg)) = rx.next().await {
                if msg.is_binary() || msg.is_text() {
                    if tx.send(msg).await.is_err() {
                        break;
                    }
                } else if msg.is_close() {
                    break;
                }
            }
        });
    }
}

async fn ws_client(args: &[String]) -> anyhow::Result<()> {
    let url = arg(args, "--url").context("--url")?;
    let n: usize = arg(args, "--messages").unwrap_or("100000".into()).parse()?;
    let size: usize = arg(args, "--size").unwrap_or("64".into()).parse()?;
    let window: usize = arg(args, "--window").unwrap_or("1".into()).parse()?;
    let mut req = url.as_str().into_client_request()?;
    if let Some(t) = arg(args, "--token") {
        req.headers_mut().insert("authorization", format!("Bearer {t}").parse()?);
    }
    let host = req.uri().authority().context("host")?.as_str().to_string();
    let stream = TcpStream::connect(&host).await?;
    stream.set_nodelay(true)?;
    let (ws, resp) = tokio_tungstenite::client_async(req, stream).await?;
    if resp.status() != 101 {
        bail!("handshake answered {}", resp.status());
    }
    let (mut tx, mut rx) = ws.split();
    let payload = vec![0x5a_u8; size];
    let start = Instant::now();
    let (mut sent, mut got) = (0usize, 0usize);
    while got < n {
        while sent < n && sent - got < window {
            tx.feed(Message::binary(payload.clone())).await?;
            sent += 1;
        }
        tx.flush().await?;
        match rx.next().await {
            Some(Ok(m)) if m.is_binary() && m.len() == size => got += 1,
            Some(Ok(m)) if m.is_ping() || m.is_pong() => {}
            other => bail!("after {got} echoes: {other:?}"),
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let _ = tx.send(Message::Close(None)).await;
    println!("messages {got}");
    println!("seconds {secs:.3}");
    println!("msgs_per_s {:.0}", got as f64 / secs);
    Ok(())
}

async fn grpc_upstream(listen: &str) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            let builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            let _ = builder.serve_connection(TokioIo::new(stream), service_fn(grpc_service)).await;
        });
    }
}

fn grpc_body(args: &[String]) -> anyhow::Result<()> {
    use prost::Message as _;
    let text = arg(args, "--text").unwrap_or("hello".into());
    let out = arg(args, "--out").context("--out")?;
    let msg = Msg { text }.encode_to_vec();
    let mut body = vec![0u8];
    body.extend_from_slice(&u32::try_from(msg.len())?.to_be_bytes());
    body.extend_from_slice(&msg);
    std::fs::write(out, body)?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    match args.first().map(String::as_str) {
        Some("ws-echo") => rt.block_on(ws_echo(&arg(&args, "--listen").context("--listen")?)),
        Some("ws-client") => rt.block_on(ws_client(&args)),
        Some("grpc-upstream") => rt.block_on(grpc_upstream(&arg(&args, "--listen").context("--listen")?)),
        Some("grpc-body") => grpc_body(&args),
        _ => bail!("usage: streamkit ws-echo|ws-client|grpc-upstream|grpc-body ..."),
    }
}
