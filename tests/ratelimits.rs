//! Rate limits and route quotas shared by replicas (issue 14): two gateway processes on
//! one throwaway redis-server spend from one budget; with Redis gone each falls back to
//! its own limiter, says so, and shares again once Redis is back. Route quotas on the
//! embedded store, and their `per` variants, are tested in one process.
//!
//! Needs `redis-server` on PATH for the replica tests (skipped without it, failing in CI).

mod common;

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not start listening on {port}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// A throwaway redis-server on a loopback port (no persistence: the tests that stop it
/// only need it to answer again).
struct Redis {
    port: u16,
    child: Option<Child>,
}

impl Redis {
    fn start() -> Option<Redis> {
        if Command::new("redis-server").arg("--version").output().is_err() {
            skip("ratelimits", "redis-server not found (install Debian's redis-server)");
            return None;
        }
        let mut r = Redis { port: free_port(), child: None };
        r.resume();
        Some(r)
    }

    fn resume(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        wait_for_port(self.port, "redis-server");
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One gateway process.
struct Replica {
    port: u16,
    admin: u16,
    child: Child,
}

impl Replica {
    fn start(dir: &Path, name: &str, config: &str) -> Replica {
        let (port, admin) = (free_port(), free_port());
        let path = dir.join(format!("{name}.toml"));
        let text = config.replace("@PORT@", &port.to_string()).replace("@ADMIN@", &admin.to_string());
        std::fs::write(&path, text).unwrap();
        let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["serve", "--config"])
            .arg(&path)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start gateway");
        let mut replica = Replica { port, admin, child };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = replica.child.try_wait() {
                let log = std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default();
                panic!("gateway {name} exited with {status}:\n{log}");
            }
            assert!(Instant::now() < deadline, "gateway {name} did not start listening on {port}");
            std::thread::sleep(Duration::from_millis(25));
        }
        replica
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The rate limits under test: small budgets that do not refill during a test.
const LIMITS: &str = r#"
[rate_limit]
ip_burst = 8
ip_rate = 1
ip_window = "1h"
failure_cost = 1
client_failures = 3
client_failures_window = "1h"
"#;

/// Quota routes: per client, per user, per source address (public), 3 an hour each.
fn quota_routes(upstream: SocketAddr) -> String {
    format!(
        r#"
[[route]]
prefix = "/q/client"
upstream = "http://{upstream}"
scopes = ["read"]
quota = {{ per = "client", rate = 3, window = "1h" }}

[[route]]
prefix = "/q/user"
upstream = "http://{upstream}"
scopes = ["read"]
quota = {{ per = "user", rate = 3, window = "1h" }}

[[route]]
prefix = "/q/ip"
upstream = "http://{upstream}"
public = true
quota = {{ per = "ip", rate = 3, window = "1h" }}
"#
    )
}

fn replica_config(dir: &Path, redis_port: u16, upstream: SocketAddr) -> String {
    format!(
        r#"
issuer = "{ISSUER}"

[[listener]]
address = "127.0.0.1:@PORT@"
tls = false

[admin]
address = "127.0.0.1:@ADMIN@"

[store]
kind = "redis"
url = "redis://127.0.0.1:{redis_port}/"
key_prefix = "rl-test:"
timeout = "300ms"

[[key]]
id = "k1"
file = "{dir}/k1.pem"
generate = false
{LIMITS}
{clients}
{routes}
{quotas}
"#,
        dir = dir.display(),
        clients = clients_toml(),
        routes = routes_toml(upstream),
        quotas = quota_routes(upstream),
    )
}

struct Pair {
    redis: Redis,
    a: Replica,
    b: Replica,
    dir: tempfile::TempDir,
    http: reqwest::Client,
    _up: EchoUpstream,
}

async fn pair() -> Option<Pair> {
    let redis = Redis::start()?;
    let up = EchoUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let pem = portcullis::tokens::keys::generate_ed25519_pem().unwrap();
    std::fs::write(dir.path().join("k1.pem"), pem).unwrap();
    let config = replica_config(dir.path(), redis.port, up.addr);
    let a = Replica::start(dir.path(), "a", &config);
    let b = Replica::start(dir.path(), "b", &config);
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    Some(Pair { redis, a, b, dir, http, _up: up })
}

impl Pair {
    async fn token_status(&self, on: &Replica, form: &[(&str, &str)], basic: Option<(&str, &str)>) -> (u16, Value) {
        let mut req = self.http.post(on.url("/oauth/token")).form(form);
        if let Some((id, s)) = basic {
            req = req.basic_auth(id, Some(s));
        }
        let resp = req.send().await.unwrap();
        (resp.status().as_u16(), resp.json().await.unwrap_or(Value::Null))
    }

    async fn svc_token(&self, on: &Replica) -> String {
        let (status, v) =
            self.token_status(on, &[("grant_type", "client_credentials")], Some(("svc", SVC_SECRET))).await;
        assert_eq!(status, 200, "{v}");
        v["access_token"].as_str().unwrap().to_string()
    }

    async fn get(&self, on: &Replica, path: &str, token: Option<&str>) -> reqwest::Response {
        let mut req = self.http.get(on.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send().await.unwrap()
    }

    async fn metrics(&self, on: &Replica) -> String {
        let url = format!("http://127.0.0.1:{}/metrics", on.admin);
        self.http.get(url).send().await.unwrap().text().await.unwrap()
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    }
}

fn header(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers().get(name).map(|v| v.to_str().unwrap().to_string())
}

/// The value of an unlabelled series in a metrics text.
fn series(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test]
async fn the_per_ip_budget_of_the_token_endpoint_holds_across_replicas() {
    let Some(p) = pair().await else { return };
    // An unknown grant costs one unit and no argon2: eight of them, spread over both
    // replicas, spend the burst of eight. Two replicas must not give sixteen.
    let form = [("grant_type", "bogus")];
    let mut answers = Vec::new();
    for i in 0..12 {
        let on = if i % 2 == 0 { &p.a } else { &p.b };
        answers.push(p.token_status(on, &form, None).await.0);
    }
    assert!(answers[..8].iter().all(|s| *s == 400), "{answers:?}");
    assert!(answers[8..].iter().all(|s| *s == 429), "{answers:?}");
    let resp = p.http.post(p.b.url("/oauth/token")).form(&form).send().await.unwrap();
    assert_eq!(resp.status(), 429);
    let retry: u64 = header(&resp, "retry-after").unwrap().parse().unwrap();
    assert!(retry > 3000 && retry <= 3600, "one unit an hour: {retry}");
    // In Redis the metric says shared, and nothing fell back.
    let m = p.metrics(&p.a).await;
    assert_eq!(series(&m, "portcullis_ratelimit_shared"), Some(1.0), "{m}");
    assert_eq!(series(&m, "portcullis_ratelimit_fallback_total"), Some(0.0), "{m}");
}

#[tokio::test]
async fn the_per_client_failure_budget_holds_across_replicas() {
    let Some(p) = pair().await else { return };
    let form = [("grant_type", "client_credentials")];
    let mut answers = Vec::new();
    for i in 0..4 {
        let on = if i % 2 == 0 { &p.a } else { &p.b };
        answers.push(p.token_status(on, &form, Some(("svc", "wrong"))).await.0);
    }
    // Three failures allowed in all (and the per-IP budget of eight is not what stops it).
    assert_eq!(answers, [401, 401, 401, 429], "{answers:?}");
    // Locked out on both, even with the right secret, for this source.
    for on in [&p.a, &p.b] {
        let (status, v) = p.token_status(on, &form, Some(("svc", SVC_SECRET))).await;
        assert_eq!(status, 429, "{v}");
    }
    // The budgets are keyed by address or by the SHA-256 of a name: a client id (which may
    // be a secret pasted into the wrong field) is never written to Redis in clear.
    let keys = Command::new("redis-cli").args(["-p", &p.redis.port.to_string(), "--scan"]).output();
    if let Ok(out) = keys {
        let keys = String::from_utf8_lossy(&out.stdout).to_string();
        let budgets: Vec<&str> = keys.lines().filter(|k| k.starts_with("rl-test:rl:")).collect();
        assert!(budgets.iter().any(|k| k.starts_with("rl-test:rl:client:")), "{keys}");
        assert!(budgets.contains(&"rl-test:rl:ip:token:127.0.0.1"), "{keys}");
        assert!(!keys.contains("svc"), "{keys}");
    }
}

#[tokio::test]
async fn a_quota_spent_on_one_replica_refuses_on_the_other_with_the_ratelimit_fields() {
    let Some(p) = pair().await else { return };
    let token = p.svc_token(&p.a).await;
    for (i, on) in [&p.a, &p.b, &p.a].into_iter().enumerate() {
        let resp = p.get(on, "/q/client/x", Some(&token)).await;
        assert_eq!(resp.status(), 200, "request {i}");
        assert_eq!(header(&resp, "ratelimit-policy").as_deref(), Some("\"default\";q=3;w=3600"));
        let state = header(&resp, "ratelimit").unwrap();
        assert!(state.starts_with(&format!("\"default\";r={};t=", 2 - i)), "request {i}: {state}");
    }
    let resp = p.get(&p.b, "/q/client/x", Some(&token)).await;
    assert_eq!(resp.status(), 429);
    let retry: u64 = header(&resp, "retry-after").unwrap().parse().unwrap();
    assert!(retry > 1100 && retry <= 1200, "a unit every 20 minutes: {retry}");
    assert_eq!(header(&resp, "ratelimit-policy").as_deref(), Some("\"default\";q=3;w=3600"));
    let state = header(&resp, "ratelimit").unwrap();
    assert!(state.starts_with("\"default\";r=0;t="), "{state}");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"], "too_many_requests");
    // Another client has a budget of its own; a route without a quota sends no fields.
    let (status, v) =
        p.token_status(&p.b, &[("grant_type", "client_credentials")], Some(("linked", OTHER_SECRET))).await;
    assert_eq!(status, 200, "{v}");
    let other = v["access_token"].as_str().unwrap();
    assert_eq!(p.get(&p.a, "/q/client/x", Some(other)).await.status(), 200);
    let plain = p.get(&p.a, "/api/x", Some(&token)).await;
    assert_eq!(plain.status(), 200);
    assert!(header(&plain, "ratelimit").is_none() && header(&plain, "ratelimit-policy").is_none());
    // Counted by route.
    let m = p.metrics(&p.b).await;
    assert!(m.contains("portcullis_quota_rejections_total{route=\"/q/client\"} 1"), "{m}");
}

#[tokio::test]
async fn with_redis_gone_each_replica_limits_alone_says_so_and_shares_again_when_it_is_back() {
    let Some(mut p) = pair().await else { return };
    let token = p.svc_token(&p.a).await;
    assert_eq!(p.get(&p.a, "/q/client/x", Some(&token)).await.status(), 200);
    p.redis.stop();

    // Not fail-open, not fail-closed: the local quota of A (three, none spent here) decides.
    let started = Instant::now();
    let statuses: Vec<u16> = futures_util::future::join_all(
        (0..4).map(|_| async { p.get(&p.a, "/q/client/x", Some(&token)).await.status().as_u16() }),
    )
    .await;
    let mut sorted = statuses.clone();
    sorted.sort();
    assert_eq!(sorted, [200, 200, 200, 429], "{statuses:?}");
    assert!(started.elapsed() < Duration::from_secs(5), "a dead Redis must not stall every request");
    let m = p.metrics(&p.a).await;
    assert_eq!(series(&m, "portcullis_ratelimit_shared"), Some(0.0), "{m}");
    assert!(series(&m, "portcullis_ratelimit_fallback_total").unwrap_or(0.0) >= 4.0, "{m}");
    // Log lines are written by a thread of their own, a moment later.
    let fell_back = "Redis does not answer the rate limiter";
    let deadline = Instant::now() + Duration::from_secs(5);
    while !p.log("a").contains(fell_back) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(p.log("a").matches(fell_back).count(), 1, "logged once per outage:\n{}", p.log("a"));

    // The token endpoint's per-IP limit falls back the same way (B: its own burst of eight).
    let (status, _) = p.token_status(&p.b, &[("grant_type", "bogus")], None).await;
    assert_eq!(status, 400);

    p.redis.resume();
    // Within a few seconds a decision is made in Redis again, and the metric and the log
    // say so.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let _ = p.get(&p.a, "/q/client/x", Some(&token)).await;
        let m = p.metrics(&p.a).await;
        if series(&m, "portcullis_ratelimit_shared") == Some(1.0)
            && p.log("a").contains("Redis answers the rate limiter again")
        {
            break;
        }
        assert!(Instant::now() < deadline, "never shared again:\n{}", p.log("a"));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The Redis here kept nothing (no persistence): the probes that found it again spent
    // at least one unit there. B, past its own retry delay, spends from that same budget:
    // at most one left after its first, where its local limiter would say two.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let resp = p.get(&p.b, "/q/client/x", Some(&token)).await;
    let state = header(&resp, "ratelimit").unwrap();
    let left: u32 = state.split(";r=").nth(1).and_then(|r| r.split(';').next()).unwrap().parse().unwrap();
    assert!(left <= 1, "B does not use the shared budget: {state}");
    for _ in 0..left {
        assert_eq!(p.get(&p.b, "/q/client/x", Some(&token)).await.status(), 200);
    }
    assert_eq!(p.get(&p.b, "/q/client/x", Some(&token)).await.status(), 429);
    assert_eq!(p.get(&p.a, "/q/client/x", Some(&token)).await.status(), 429, "spent for A too");
}

/// The embedded store: quotas per client, per user (a client_credentials token counting
/// as its client) and per source address, in one process.
#[tokio::test]
async fn embedded_store_quotas_per_client_user_and_ip() {
    let up = EchoUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(dir.path());
    let text = config_toml(dir.path(), &pki, up.addr, "") + &quota_routes(up.addr);
    let gw = TestGateway::start_text(dir, pki, &text).await;
    let http = gw.client();
    let get = async |path: &str, token: Option<&str>| {
        let mut req = http.get(gw.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send().await.unwrap()
    };
    let svc = svc_token(&gw).await;

    // Unauthenticated or refused requests spend nothing.
    for _ in 0..5 {
        assert_eq!(get("/q/client/x", None).await.status(), 401);
        assert_eq!(get("/q/client/x", Some("not-a-token")).await.status(), 401);
    }
    for i in 0..3 {
        let resp = get("/q/client/x", Some(&svc)).await;
        assert_eq!(resp.status(), 200, "request {i}");
        assert_eq!(header(&resp, "ratelimit-policy").as_deref(), Some("\"default\";q=3;w=3600"));
    }
    let resp = get("/q/client/x", Some(&svc)).await;
    assert_eq!(resp.status(), 429);
    assert!(header(&resp, "retry-after").is_some());
    // A second token of the same client spends the same budget.
    let svc2 = svc_token(&gw).await;
    assert_eq!(get("/q/client/x", Some(&svc2)).await.status(), 429);

    // per = "user": alice's tokens (password grant of webapp) share her budget; a
    // client_credentials token without a user spends its client's.
    let alice = async || {
        let form = [("grant_type", "password"), ("username", "alice"), ("password", ALICE_PASSWORD)];
        let v: Value = http
            .post(gw.url("/oauth/token"))
            .basic_auth("webapp", Some(SVC_SECRET))
            .form(&form)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["access_token"].as_str().unwrap().to_string()
    };
    let (a1, a2) = (alice().await, alice().await);
    for t in [&a1, &a2, &a1] {
        assert_eq!(get("/q/user/x", Some(t)).await.status(), 200);
    }
    assert_eq!(get("/q/user/x", Some(&a2)).await.status(), 429, "one budget per user, whatever the token");
    for _ in 0..3 {
        assert_eq!(get("/q/user/x", Some(&svc)).await.status(), 200, "svc has no user: its own budget");
    }
    assert_eq!(get("/q/user/x", Some(&svc2)).await.status(), 429);

    // per = "ip" on a public route: the source address.
    for _ in 0..3 {
        assert_eq!(get("/q/ip/x", None).await.status(), 200);
    }
    let resp = get("/q/ip/x", None).await;
    assert_eq!(resp.status(), 429);
    let state = header(&resp, "ratelimit").unwrap();
    assert!(state.starts_with("\"default\";r=0;t="), "{state}");

    // Routes without a quota are untouched.
    let resp = get("/api/x", Some(&svc)).await;
    assert_eq!(resp.status(), 200);
    assert!(header(&resp, "ratelimit").is_none());
    let m = http.get(gw.admin_url("/metrics")).send().await.unwrap().text().await.unwrap();
    for (route, n) in [("/q/client", 2), ("/q/user", 2), ("/q/ip", 1)] {
        assert!(m.contains(&format!("portcullis_quota_rejections_total{{route=\"{route}\"}} {n}")), "{route}: {m}");
    }
    assert!(!m.contains("portcullis_ratelimit_shared"), "no shared limiter on the embedded store");
}
