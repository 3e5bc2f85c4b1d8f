//! A WebSocket upstream (tokio-tungstenite) for the tests of issue 12: it echoes, and
//! records each handshake it saw.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};

/// What a WebSocket upstream saw of each handshake: its target and headers.
#[derive(Clone, Debug)]
pub struct Seen {
    pub uri: String,
    pub headers: Vec<(String, String)>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// A WebSocket upstream: echoes every message; a path ending `/refuse` answers 403 with a
/// body; `/drop` closes the TCP connection after its first message, without a close frame.
pub struct WsUpstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for WsUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl WsUpstream {
    pub async fn start() -> WsUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let log = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let log = log.clone();
                tokio::spawn(async move {
                    let path = Arc::new(Mutex::new(String::new()));
                    let p = path.clone();
                    // tungstenite's callback signature, large error variant and all.
                    #[allow(clippy::result_large_err)]
                    let callback = move |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
                        let headers = req
                            .headers()
                            .iter()
                            .map(|(n, v)| (n.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
                            .collect();
                        log.lock().unwrap().push(Seen { uri: req.uri().to_string(), headers });
                        *p.lock().unwrap() = req.uri().path().to_string();
                        if req.uri().path().ends_with("/refuse") {
                            let mut refusal = ErrorResponse::new(Some("upstream says no".to_string()));
                            *refusal.status_mut() = http::StatusCode::FORBIDDEN;
                            refusal.headers_mut().insert("x-upstream-reason", "closed".parse().unwrap());
                            return Err(refusal);
                        }
                        Ok(resp)
                    };
                    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else { return };
                    let drop_after_one = path.lock().unwrap().ends_with("/drop");
                    while let Some(Ok(msg)) = ws.next().await {
                        match msg {
                            Message::Text(_) | Message::Binary(_) => {
                                if ws.send(msg).await.is_err() {
                                    return;
                                }
                                if drop_after_one {
                                    // Straight to TCP: no close frame.
                                    drop(ws);
                                    return;
                                }
                            }
                            Message::Close(_) => {
                                let _ = ws.close(None).await;
                                return;
                            }
                            _ => {}
                        }
                    }
                });
            }
        });
        WsUpstream { addr, seen, task }
    }

    pub fn last(&self) -> Seen {
        self.seen.lock().unwrap().last().cloned().expect("the upstream saw a handshake")
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}
