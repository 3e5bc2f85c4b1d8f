//! The per-core runtime model (`--runtime per-core`): one current-thread runtime per
//! worker thread, each with its own `SO_REUSEPORT` socket for every listener. Connections
//! are spread over the workers and served there; the connection limit stays one global
//! limit; shutdown drains every worker; a taken address refuses the start. The whole suite
//! runs under this model with `PORTCULLIS_RUNTIME=per-core` (tests/common).

mod common;

use std::time::Duration;

use common::*;
use portcullis::config::Config;
use portcullis::server::{Layout, RuntimeModel, ServeError, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WORKERS: usize = 2;

async fn per_core(up: &EchoUpstream, extra_limits: &str) -> TestGateway {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(dir.path());
    let text = config_toml(dir.path(), &pki, up.addr, "").replace("[limits]\n", &format!("[limits]\n{extra_limits}"));
    TestGateway::start_layout(dir, pki, &text, Layout::per_core(WORKERS)).await
}

/// One plain HTTP/1.1 request on a connection of its own; the status line's code.
async fn one_request(addr: std::net::SocketAddr, path: &str, token: &str) -> u16 {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut out)).await.expect("answered in time").unwrap();
    let text = String::from_utf8_lossy(&out);
    text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("not an HTTP answer: {text:?}"))
}

const WAIT: Duration = Duration::from_secs(10);

#[test]
fn per_core_is_the_linux_model_and_shared_elsewhere() {
    let l = Layout::per_core(4);
    if cfg!(target_os = "linux") {
        assert_eq!((l.model, l.threads), (RuntimeModel::PerCore, 4));
    } else {
        assert_eq!(l, Layout::shared());
    }
    assert_eq!(Layout::per_core(0).threads.max(1), 1, "never zero workers");
}

/// The kernel spreads new connections over the workers' sockets (by the 4-tuple's hash):
/// 64 connections all on one of two sockets would be a 1-in-2^63 fluke, or a model that
/// does not spread. Each one is served (an authenticated hit, over HTTP and TLS).
#[cfg(target_os = "linux")]
#[tokio::test]
async fn connections_are_spread_over_the_workers_and_served_there() {
    let up = EchoUpstream::start().await;
    let gw = per_core(&up, "").await;
    let token = gw.token("svc", SVC_SECRET, Some("read")).await;
    let before: u64 = gw.accepted.counts().iter().sum();
    for _ in 0..64 {
        assert_eq!(one_request(gw.http, "/api/x", &token).await, 200);
    }
    for _ in 0..8 {
        // A client of its own per request: a new TLS connection each time.
        let resp = gw.client().get(gw.url("/api/x")).bearer_auth(&token).send().await.unwrap();
        assert_eq!(resp.status(), 200);
    }
    let counts = gw.accepted.counts();
    assert_eq!(counts.len(), WORKERS);
    assert!(counts.iter().all(|&n| n > 0), "every worker accepted some: {counts:?}");
    assert!(counts.iter().sum::<u64>() - before >= 72, "{counts:?}");
    // No token, on either worker: still refused.
    for _ in 0..8 {
        assert_eq!(one_request(gw.http, "/api/x", "not-a-token").await, 401);
    }
    gw.shutdown().await;
}

/// `max_connections` is one limit for the process, not one per worker: with a limit of
/// 4 and two workers, 12 idle connections leave exactly 4 open (per-worker limits would
/// leave up to 8), whichever workers they landed on.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn the_connection_limit_is_one_limit_over_every_worker() {
    let up = EchoUpstream::start().await;
    let gw = per_core(&up, "max_connections = 4\nheader_read_timeout = \"30s\"\n").await;
    let mut conns = Vec::new();
    for _ in 0..12 {
        conns.push(tokio::net::TcpStream::connect(gw.http).await.unwrap());
        // Let the accept loop take it (and a refused one close) before the next.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut open = 0;
    for mut c in conns {
        let mut b = [0u8; 1];
        match tokio::time::timeout(Duration::from_millis(500), c.read(&mut b)).await {
            Err(_) => open += 1,
            Ok(Ok(0)) | Ok(Err(_)) => {}
            Ok(Ok(_)) => panic!("an idle connection was sent bytes"),
        }
    }
    assert_eq!(open, 4, "the global limit holds across workers");
    assert_eq!(gw.accepted.counts().iter().sum::<u64>(), 4, "refused connections are not counted as accepted");
    gw.shutdown().await;
}

/// SIGTERM's path in-process: requests in flight on every worker finish, then every
/// worker stops listening, and `run` returns only once every worker thread has ended.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn shutdown_drains_every_worker_then_stops_them_all() {
    let up = EchoUpstream::start().await;
    let gw = per_core(&up, "").await;
    let token = gw.token("svc", SVC_SECRET, Some("read")).await;
    let mut in_flight = Vec::new();
    for _ in 0..16 {
        let (client, url, token) = (gw.client(), gw.url("/slow/800"), token.clone());
        in_flight
            .push(tokio::spawn(async move { client.get(url).bearer_auth(token).send().await.map(|r| r.status()) }));
    }
    // Let the requests reach the upstream, on both workers.
    let spread = async {
        while gw.accepted.counts().iter().filter(|&&n| n > 0).count() < WORKERS {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(WAIT, spread).await.expect("connections on every worker");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (https, http) = (gw.https, gw.http);
    tokio::time::timeout(WAIT, gw.shutdown()).await.expect("shutdown ends");
    for r in in_flight {
        assert_eq!(r.await.unwrap().expect("the in-flight request completes"), 200);
    }
    for addr in [https, http] {
        // Every worker's socket is closed: no connect succeeds, whichever socket it hashes to.
        for _ in 0..16 {
            assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "{addr} still listening");
        }
    }
}

/// An address already taken fails the start with the address and the reason, whether the
/// holder is a plain listener or one with SO_REUSEPORT (which would otherwise silently
/// join the group and take a share of the connections).
#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_taken_address_refuses_the_start() {
    let up = EchoUpstream::start().await;
    let plain = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let reuse = tokio::net::TcpSocket::new_v4().unwrap();
    reuse.set_reuseport(true).unwrap();
    reuse.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let reuse = reuse.listen(16).unwrap();
    for taken in [plain.local_addr().unwrap(), reuse.local_addr().unwrap()] {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::create(dir.path());
        let text = config_toml(dir.path(), &pki, up.addr, "").replacen("127.0.0.1:0", &taken.to_string(), 1);
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, text).unwrap();
        let config = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
        let err = match Server::bind_with(config, Layout::per_core(WORKERS)).await {
            Ok(_) => panic!("{taken} is taken, yet the start succeeded"),
            Err(e) => e,
        };
        assert!(matches!(err, ServeError::Bind { addr, .. } if addr == taken), "{err}");
        let text = err.to_string();
        assert!(text.contains(&format!("cannot listen on {taken}")) && text.contains("in use"), "{text}");
    }
}

/// A certificate swapped by a reload is what every worker's new connections get: the
/// acceptor is shared, not copied per worker.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_config_reload_reaches_every_worker() {
    let up = EchoUpstream::start().await;
    let gw = per_core(&up, "").await;
    let token = gw.token("svc", SVC_SECRET, Some("read")).await;
    assert_eq!(one_request(gw.http, "/api/x", &token).await, 200);
    // The /api route now requires a scope the token lacks: refused on every worker.
    gw.rewrite_config(|t| t.replace("scopes = [\"read\"]", "scopes = [\"write\"]"));
    let before = gw.accepted.counts();
    for _ in 0..32 {
        assert_eq!(one_request(gw.http, "/api/x", &token).await, 403);
    }
    let after = gw.accepted.counts();
    assert!(
        after.iter().zip(&before).all(|(a, b)| a > b),
        "both workers served the new config: {before:?} → {after:?}"
    );
    gw.shutdown().await;
}
