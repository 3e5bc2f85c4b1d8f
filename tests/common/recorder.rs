//! Upstreams that show what reached them: a recorder (path, headers, trailers, body length
//! of every request) and a fixed upstream that answers any request with the same bytes.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{Pki, TestGateway, config_toml};

// ---------------------------------------------------------------------------------------
// Raw HTTP/1.1 on the plaintext listener, and an upstream that records what it receives.

/// What the recording upstream saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub trailers: Vec<(String, String)>,
    pub body_len: Option<usize>,
}

/// An upstream that records every request (path, headers, trailers) and answers 200.
pub struct Recorder {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub task: tokio::task::JoinHandle<()>,
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Recorder {
    pub async fn start() -> Recorder {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let log = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let log = log.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let log = log.clone();
                        async move {
                            let path = req.uri().path().to_string();
                            let headers = req
                                .headers()
                                .iter()
                                .map(|(n, v)| (n.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
                                .collect();
                            let idx = {
                                let mut l = log.lock().unwrap();
                                l.push(Seen { path, headers, trailers: vec![], body_len: None });
                                l.len() - 1
                            };
                            if let Ok(c) = req.into_body().collect().await {
                                let trailers = c
                                    .trailers()
                                    .map(|t| {
                                        t.iter()
                                            .map(|(n, v)| (n.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
                                            .collect()
                                    })
                                    .unwrap_or_default();
                                let mut l = log.lock().unwrap();
                                l[idx].trailers = trailers;
                                l[idx].body_len = Some(c.to_bytes().len());
                            }
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from_static(
                                b"ok",
                            ))))
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Recorder { addr, seen, task }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn paths(&self) -> Vec<String> {
        self.seen().into_iter().map(|s| s.path).collect()
    }
}

/// A gateway in front of a recording upstream, with a short idle timeout so that raw
/// connections end soon after their last response.
pub async fn recorded_gateway(extra_limits: &str) -> (Recorder, TestGateway) {
    let rec = Recorder::start().await;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(dir.path());
    let text = config_toml(dir.path(), &pki, rec.addr, "")
        .replace("[limits]\n", &format!("[limits]\nidle_timeout = \"2s\"\n{extra_limits}"));
    let gw = TestGateway::start_text(dir, pki, &text).await;
    (rec, gw)
}

// ---------------------------------------------------------------------------------------
// Issue 11: filters that failed open. Every check must take the refusing branch when it
// cannot parse what it is given.

/// An upstream that answers whatever it is sent with `response`, then closes.
pub struct Fixed {
    pub addr: SocketAddr,
    pub task: tokio::task::JoinHandle<()>,
}

impl Drop for Fixed {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn fixed_upstream(response: Vec<u8>) -> Fixed {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let response = Arc::new(response);
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else { continue };
            let response = response.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let _ = s.write_all(&response).await;
                let _ = s.shutdown().await;
            });
        }
    });
    Fixed { addr, task }
}
