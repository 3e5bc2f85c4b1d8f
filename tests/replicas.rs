//! Several gateway processes sharing one real Redis server (issue 5): codes, refresh
//! tokens, sessions and revocations are shared; revocations reach every replica's cache.
//!
//! Needs `redis-server` on PATH (`.ci/run` installs Debian's). Without it the tests are skipped
//! (listed at the end of `.ci/run`) locally, but fail when `CI` is set.

mod common;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not start listening on {port}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// A throwaway redis-server on a loopback port, persisting to an append-only file so that
/// a stop and start keeps its data (as a production Redis would).
struct Redis {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Redis {
    /// `None` (with a notice) when redis-server is not installed and we are not in CI.
    fn start() -> Option<Redis> {
        if Command::new("redis-server").arg("--version").output().is_err() {
            skip("replicas", "redis-server not found (install Debian's redis-server)");
            return None;
        }
        let mut r = Redis { port: free_port(), dir: tempfile::tempdir().unwrap(), child: None };
        r.resume();
        Some(r)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn resume(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "yes", "--appendfsync", "always", "--dir"])
            .arg(self.dir.path())
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
    fn start(dir: &Path, name: &str, redis: &Redis, upstream: SocketAddr) -> Replica {
        let (port, admin) = (free_port(), free_port());
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(&config, replica_config(dir, port, admin, &redis.url(), upstream)).unwrap();
        let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["serve", "--config"])
            .arg(&config)
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

    fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.admin)
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn replica_config(dir: &Path, port: u16, admin: u16, redis_url: &str, upstream: SocketAddr) -> String {
    format!(
        r#"
issuer = "{ISSUER}"

[[listener]]
address = "127.0.0.1:{port}"
tls = false

[admin]
address = "127.0.0.1:{admin}"
api_key_hash = "{OTHER_HASH}"

[store]
kind = "redis"
url = "{redis_url}"
key_prefix = "test:"
timeout = "300ms"

[[key]]
id = "k1"
file = "{dir}/k1.pem"
generate = false
{clients}
{routes}
"#,
        dir = dir.display(),
        clients = clients_toml(),
        routes = routes_toml(upstream),
    ) + &std::fs::read_to_string(dir.join("extra.toml")).unwrap_or_default()
}

struct Cluster {
    redis: Redis,
    a: Replica,
    b: Replica,
    dir: tempfile::TempDir,
    http: reqwest::Client,
    _up: EchoUpstream,
}

async fn cluster() -> Option<Cluster> {
    cluster_extra(|_| String::new()).await
}

/// A cluster whose replicas' configs end with what `extra` returns for their directory.
async fn cluster_extra(extra: impl FnOnce(&Path) -> String) -> Option<Cluster> {
    let redis = Redis::start()?;
    let up = EchoUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("extra.toml"), extra(dir.path())).unwrap();
    let pem = portcullis::tokens::keys::generate_ed25519_pem().unwrap();
    std::fs::write(dir.path().join("k1.pem"), pem).unwrap();
    let a = Replica::start(dir.path(), "a", &redis, up.addr);
    let b = Replica::start(dir.path(), "b", &redis, up.addr);
    let http = reqwest::Client::builder().no_proxy().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    Some(Cluster { redis, a, b, dir, http, _up: up })
}

impl Cluster {
    async fn token(&self, on: &Replica, form: &[(&str, &str)], basic: Option<(&str, &str)>) -> (u16, Value) {
        let mut req = self.http.post(on.url("/oauth/token")).form(form);
        if let Some((id, s)) = basic {
            req = req.basic_auth(id, Some(s));
        }
        let resp = req.send().await.unwrap();
        (resp.status().as_u16(), resp.json().await.unwrap_or(Value::Null))
    }

    async fn get_api(&self, on: &Replica, token: &str) -> u16 {
        self.http.get(on.url("/api/x")).bearer_auth(token).send().await.unwrap().status().as_u16()
    }

    async fn password_tokens(&self, on: &Replica) -> (String, String) {
        let form = [("grant_type", "password"), ("username", "alice"), ("password", ALICE_PASSWORD)];
        let (status, v) = self.token(on, &form, Some(("webapp", SVC_SECRET))).await;
        assert_eq!(status, 200, "{v}");
        (v["access_token"].as_str().unwrap().into(), v["refresh_token"].as_str().unwrap().into())
    }

    async fn refresh(&self, on: &Replica, rt: &str) -> (u16, Value) {
        self.token(on, &[("grant_type", "refresh_token"), ("refresh_token", rt)], Some(("webapp", SVC_SECRET))).await
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    }
}

#[tokio::test]
async fn a_token_from_one_replica_works_on_the_other() {
    let Some(c) = cluster().await else { return };
    let (status, v) = c.token(&c.a, &[("grant_type", "client_credentials")], Some(("svc", SVC_SECRET))).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(c.get_api(&c.b, v["access_token"].as_str().unwrap()).await, 200);
}

#[tokio::test]
async fn a_code_from_a_is_exchanged_on_b_and_sessions_are_shared() {
    let Some(c) = cluster().await else { return };
    let mut browser = Browser::with_ca(&Pki::create(c.dir.path()).ca_pem);
    let q = "response_type=code&client_id=webapp&redirect_uri=https%3A%2F%2Fapp.test%2Fcallback&state=s";
    let login = browser.get(&c.a.url(&format!("/oauth/authorize?{q}"))).await;
    assert_eq!(login.status, 200);
    let consent = browser
        .submit_to(&c.a.url("/oauth/authorize"), &login, &[("username", "alice"), ("password", ALICE_PASSWORD)])
        .await;
    assert!(consent.body.contains("Allow access?"), "{}", consent.body);
    // The session made on A is known to B: B shows the consent page, not the login page.
    let on_b = browser.get(&c.b.url(&format!("/oauth/authorize?{q}"))).await;
    assert!(on_b.body.contains("Allow access?"), "{}", on_b.body);
    let done = browser.submit_to(&c.b.url("/oauth/authorize"), &on_b, &[("decision", "allow")]).await;
    let code = done.location_param("code").unwrap();

    let form =
        [("grant_type", "authorization_code"), ("code", code.as_str()), ("redirect_uri", "https://app.test/callback")];
    let (status, v) = c.token(&c.a, &form, Some(("webapp", SVC_SECRET))).await;
    assert_eq!(status, 200, "{v}");
    let (status, v) = c.token(&c.b, &form, Some(("webapp", SVC_SECRET))).await;
    assert_eq!((status, v["error"].as_str()), (400, Some("invalid_grant")), "replay on the other replica");
}

#[tokio::test]
async fn refresh_reuse_across_replicas_revokes_the_family_on_both() {
    // Issue 19.1: strict reuse detection needs the reuse interval off (default 10 s).
    let Some(c) = cluster_with(strict_webapp).await else { return };
    let (at0, rt0) = c.password_tokens(&c.a).await;
    // B validates (and caches) the access token before anything is revoked.
    assert_eq!(c.get_api(&c.b, &at0).await, 200);
    assert_eq!(c.get_api(&c.a, &at0).await, 200);

    let (status, v) = c.refresh(&c.a, &rt0).await;
    assert_eq!(status, 200, "{v}");
    let rt1 = v["refresh_token"].as_str().unwrap().to_string();
    let at1 = v["access_token"].as_str().unwrap().to_string();
    assert_eq!(c.get_api(&c.b, &at1).await, 200);

    let (status, v) = c.refresh(&c.b, &rt0).await;
    assert_eq!((status, v["error_description"].as_str()), (400, Some("The refresh token is invalid.")));
    let (status, _) = c.refresh(&c.a, &rt1).await;
    assert_eq!(status, 400, "the family is revoked for A too");

    // Both replicas had the access tokens cached; the revocation reaches them within a second.
    for (name, replica) in [("a", &c.a), ("b", &c.b)] {
        for at in [&at0, &at1] {
            let took = within(Duration::from_secs(1), async || c.get_api(replica, at).await == 401).await;
            assert!(took.is_some(), "replica {name} still accepts a revoked token after 1 s");
        }
    }
}

#[tokio::test]
async fn two_replicas_racing_for_one_code_yield_exactly_one_success() {
    let Some(c) = cluster().await else { return };
    let mut browser = Browser::with_ca(&Pki::create(c.dir.path()).ca_pem);
    let q = "response_type=code&client_id=first&state=r";
    let login = browser.get(&c.a.url(&format!("/oauth/authorize?{q}"))).await;
    let first = browser
        .submit_to(&c.a.url("/oauth/authorize"), &login, &[("username", "alice"), ("password", ALICE_PASSWORD)])
        .await;
    assert_eq!(first.status, 303, "first-party client skips consent: {}", first.body);
    let mut code = first.location_param("code").unwrap();
    for round in 0..25 {
        if round > 0 {
            // A logged-in session gets a fresh code straight away.
            let page = browser.get(&c.a.url(&format!("/oauth/authorize?{q}"))).await;
            code = page.location_param("code").unwrap();
        }
        let form = [("grant_type", "authorization_code"), ("code", code.as_str())];
        let (ra, rb) = tokio::join!(
            c.token(&c.a, &form, Some(("first", SVC_SECRET))),
            c.token(&c.b, &form, Some(("first", SVC_SECRET)))
        );
        let wins = [ra.0, rb.0].iter().filter(|s| **s == 200).count();
        assert_eq!(wins, 1, "round {round}: {ra:?} {rb:?}");
        assert!([ra.0, rb.0].contains(&400), "round {round}: the loser gets invalid_grant");
    }
}

#[tokio::test]
async fn redis_down_keeps_the_proxy_path_and_grants_recover() {
    let Some(mut c) = cluster().await else { return };
    let (cached, rt) = c.password_tokens(&c.a).await;
    assert_eq!(c.get_api(&c.a, &cached).await, 200);
    // A token B has never seen, minted before the outage.
    let (status, v) = c.token(&c.a, &[("grant_type", "client_credentials")], Some(("svc", SVC_SECRET))).await;
    assert_eq!(status, 200);
    let unseen = v["access_token"].as_str().unwrap().to_string();

    let ready = async |r: &Replica| c.http.get(r.admin_url("/readyz")).send().await.unwrap().status().as_u16();
    assert_eq!(ready(&c.a).await, 200);
    c.redis.stop();
    // Issue 18: a store outage degrades grants, not the proxy path: every replica stays
    // ready (else one Redis outage empties the balancer), the verbose probe says why.
    assert_eq!(ready(&c.a).await, 200, "readiness is about the proxy path");
    let v: Value = c.http.get(c.a.admin_url("/readyz?verbose")).send().await.unwrap().json().await.unwrap();
    assert_eq!(v["checks"]["store"]["ok"], false, "{v}");
    assert_eq!(c.get_api(&c.a, &cached).await, 200, "cached token keeps working");
    assert_eq!(c.get_api(&c.b, &unseen).await, 200, "uncached token is still verified on its own");
    let (status, v) = c.refresh(&c.a, &rt).await;
    assert_eq!((status, v["error"].as_str()), (503, Some("temporarily_unavailable")), "{v}");
    // An operator block cannot be stored either: 503, and nothing changes anywhere.
    let resp = c
        .http
        .post(c.a.admin_url("/blocks"))
        .bearer_auth(OTHER_SECRET)
        .json(&serde_json::json!({"sub": "svc"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.json::<Value>().await.unwrap()["error"], "temporarily_unavailable");
    assert_eq!(c.get_api(&c.a, &cached).await, 200);
    let pw = [("grant_type", "password"), ("username", "alice"), ("password", ALICE_PASSWORD)];
    let (status, _) = c.token(&c.b, &pw, Some(("webapp", SVC_SECRET))).await;
    assert_eq!(status, 503);

    c.redis.resume();
    let recovered = within(Duration::from_secs(10), async || c.refresh(&c.a, &rt).await.0 == 200).await;
    assert!(recovered.is_some(), "grants recover once Redis is back; log A:\n{}", c.log("a"));
    let recovered =
        within(Duration::from_secs(10), async || c.token(&c.b, &pw, Some(("webapp", SVC_SECRET))).await.0 == 200).await;
    assert!(recovered.is_some(), "log B:\n{}", c.log("b"));
    assert_eq!(ready(&c.b).await, 200);
}

/// Issue 11 across replicas: the CSRF key is derived from the shared signing key, so a
/// login or consent form served by one replica is accepted by the other; and a user
/// disabled in each replica's own config (reloaded with SIGHUP) loses every token on
/// both, cached or not, and their refresh tokens.
#[tokio::test]
async fn csrf_tokens_and_a_disabled_user_hold_across_replicas() {
    let Some(c) = cluster().await else { return };
    let mut browser = Browser::with_ca(&Pki::create(c.dir.path()).ca_pem);
    let q = "response_type=code&client_id=webapp&redirect_uri=https%3A%2F%2Fapp.test%2Fcallback&state=s";
    let login = browser.get(&c.a.url(&format!("/oauth/authorize?{q}"))).await;
    assert_eq!(login.status, 200);
    let consent = browser
        .submit_to(&c.b.url("/oauth/authorize"), &login, &[("username", "alice"), ("password", ALICE_PASSWORD)])
        .await;
    assert!(consent.body.contains("Allow access?"), "login form from A refused by B: {}", consent.body);
    let done = browser.submit_to(&c.a.url("/oauth/authorize"), &consent, &[("decision", "allow")]).await;
    assert!(done.location_param("code").is_some(), "consent form from B refused by A: {}", done.body);

    let (at, rt) = c.password_tokens(&c.a).await;
    for r in [&c.a, &c.b, &c.a, &c.b] {
        assert_eq!(c.get_api(r, &at).await, 200);
    }
    for (name, r) in [("a", &c.a), ("b", &c.b)] {
        let path = c.dir.path().join(format!("{name}.toml"));
        let text = std::fs::read_to_string(&path).unwrap();
        let disabled = text.replacen("username = \"alice\"\n", "username = \"alice\"\nenabled = false\n", 1);
        assert_ne!(text, disabled);
        std::fs::write(&path, disabled).unwrap();
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(r.child.id() as i32, libc::SIGHUP) };
    }
    let dead = within(Duration::from_secs(10), async || {
        c.get_api(&c.a, &at).await == 401 && c.get_api(&c.b, &at).await == 401
    })
    .await;
    assert!(dead.is_some(), "a disabled user's cached token still works on a replica");
    let (status, v) = c.refresh(&c.b, &rt).await;
    assert_eq!((status, v["error"].as_str()), (400, Some("invalid_grant")), "{v}");
}

/// Issue 16.5: a block made through one replica's admin listener stops the token on the
/// other within the bound of a revocation (cached there or not), a replica started later
/// loads it from the store, and an unblock reaches every replica the same way.
#[tokio::test]
async fn a_block_on_one_replica_stops_the_token_on_the_others() {
    let Some(c) = cluster().await else { return };
    let (alice, _) = c.password_tokens(&c.a).await;
    let (status, v) = c.token(&c.a, &[("grant_type", "client_credentials")], Some(("svc", SVC_SECRET))).await;
    assert_eq!(status, 200, "{v}");
    let svc = v["access_token"].as_str().unwrap().to_string();
    for r in [&c.a, &c.b] {
        assert_eq!((c.get_api(r, &alice).await, c.get_api(r, &svc).await), (200, 200), "cached on both");
    }
    let admin = async |r: &Replica, method: &str, body: Value| {
        let resp = c
            .http
            .request(method.parse().unwrap(), r.admin_url("/blocks"))
            .bearer_auth(OTHER_SECRET)
            .json(&body)
            .send()
            .await
            .unwrap();
        resp.status().as_u16()
    };

    assert_eq!(admin(&c.a, "POST", serde_json::json!({"sub": "alice"})).await, 201);
    let took = within(Duration::from_secs(1), async || c.get_api(&c.b, &alice).await == 401).await;
    assert!(took.is_some(), "replica b still accepts a blocked subject after 1 s; log b:\n{}", c.log("b"));
    assert_eq!(c.get_api(&c.b, &svc).await, 200, "another subject");
    let jti = claims(&svc)["jti"].as_str().unwrap().to_string();
    assert_eq!(admin(&c.b, "POST", serde_json::json!({"jti": jti})).await, 201);
    let took = within(Duration::from_secs(1), async || c.get_api(&c.a, &svc).await == 401).await;
    assert!(took.is_some(), "replica a still accepts a blocked jti after 1 s");

    // A replica that starts now loads both from the store before serving.
    let late = Replica::start(c.dir.path(), "late", &c.redis, c._up.addr);
    assert_eq!((c.get_api(&late, &alice).await, c.get_api(&late, &svc).await), (401, 401));
    let listed: Value =
        c.http.get(late.admin_url("/blocks")).bearer_auth(OTHER_SECRET).send().await.unwrap().json().await.unwrap();
    assert_eq!(listed["blocks"].as_array().map(Vec::len), Some(2), "{listed}");

    assert_eq!(admin(&c.b, "DELETE", serde_json::json!({"sub": "alice"})).await, 200);
    for (name, r) in [("a", &c.a), ("late", &late)] {
        let took = within(Duration::from_secs(1), async || c.get_api(r, &alice).await == 200).await;
        assert!(took.is_some(), "replica {name} still refuses an unblocked subject after 1 s");
    }
    assert_eq!(c.get_api(&late, &svc).await, 401, "the jti block stays");

    // The audit trail: a WARN security event on the replica that took the request, no token
    // (log lines are written in batches: wait for them).
    let logged = async |name: &str, what: &str| {
        within(Duration::from_secs(5), async || c.log(name).contains(what)).await.is_some()
    };
    assert!(logged("a", "block_added").await && logged("b", "block_removed").await);
    let log = c.log("a");
    let line = log.lines().find(|l| l.contains("block_added")).unwrap_or_else(|| panic!("no block_added in:\n{log}"));
    assert!(line.contains("WARN") && line.contains("security_event"), "{line}");
    assert!(!log.contains(&alice) && !log.contains(&svc), "a token reached the log");
}

/// A replica whose subscription was interrupted may have missed block messages: once it
/// is back it loads every block from the store again.
#[tokio::test]
async fn a_replica_that_missed_block_messages_loads_the_blocks_after_reconnecting() {
    let Some(mut c) = cluster().await else { return };
    let (alice, _) = c.password_tokens(&c.a).await;
    assert_eq!(c.get_api(&c.b, &alice).await, 200);
    // A block stored behind the replicas' backs, never published: a lost message.
    let redis = redis::Client::open(c.redis.url()).unwrap();
    let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
    let key = r#"{"kind":"sub","value":"alice","iss":null}"#;
    let block = r#"{"kind":"sub","value":"alice","iss":null,"expires_at":null,"created_at":0,"reason":null}"#;
    let _: i64 = redis::cmd("HSET").arg("test:blocks").arg(key).arg(block).query_async(&mut conn).await.unwrap();
    assert_eq!(c.get_api(&c.b, &alice).await, 200, "no message, no block yet");

    c.redis.stop();
    // A replica that starts while the store is down says the blocks are not loaded, and
    // loads them once the store is back. (It is not ready meanwhile: its client
    // not-befores are unknown too, and those are required.)
    let late = Replica::start(c.dir.path(), "late", &c.redis, c._up.addr);
    let verbose = async |r: &Replica| -> Value {
        c.http.get(r.admin_url("/readyz?verbose")).send().await.unwrap().json().await.unwrap()
    };
    let v = verbose(&late).await;
    assert_eq!((v["status"].as_str(), &v["checks"]["blocks"]["ok"]), (Some("not ready"), &Value::Bool(false)), "{v}");
    assert_eq!(v["checks"]["blocks"]["required"], false, "{v}");
    c.redis.resume();
    let took = within(Duration::from_secs(10), async || c.get_api(&c.b, &alice).await == 401).await;
    assert!(took.is_some(), "replica b did not load the blocks after reconnecting; log b:\n{}", c.log("b"));
    let took = within(Duration::from_secs(10), async || verbose(&late).await["checks"]["blocks"]["ok"] == true).await;
    assert!(took.is_some(), "the late replica never loaded the blocks; log:\n{}", c.log("late"));
    let took = within(Duration::from_secs(10), async || verbose(&late).await["status"] == "ready").await;
    assert!(took.is_some(), "the late replica never became ready; log:\n{}", c.log("late"));
    assert_eq!(c.get_api(&late, &alice).await, 401);
}

// ---------------------------------------------------------------------------------------
// Issue 19.1: the refresh reuse interval across replicas.

/// The test clients, with `webapp` refreshing strictly (no reuse interval).
fn strict_webapp(config: String) -> String {
    config.replacen("id = \"webapp\"\n", "id = \"webapp\"\nrefresh_reuse_interval = \"0s\"\n", 1)
}

impl Replica {
    /// As [`Replica::start`], with the configuration text passed through `edit`.
    fn start_edited(
        dir: &Path,
        name: &str,
        redis: &Redis,
        upstream: SocketAddr,
        edit: fn(String) -> String,
    ) -> Replica {
        let (port, admin) = (free_port(), free_port());
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(&config, edit(replica_config(dir, port, admin, &redis.url(), upstream))).unwrap();
        let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["serve", "--config"])
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start gateway");
        wait_for_port(port, name);
        Replica { port, admin, child }
    }
}

/// A cluster whose replicas run `edit`ed configurations.
async fn cluster_with(edit: fn(String) -> String) -> Option<Cluster> {
    let redis = Redis::start()?;
    let up = EchoUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let pem = portcullis::tokens::keys::generate_ed25519_pem().unwrap();
    std::fs::write(dir.path().join("k1.pem"), pem).unwrap();
    let a = Replica::start_edited(dir.path(), "a", &redis, up.addr, edit);
    let b = Replica::start_edited(dir.path(), "b", &redis, up.addr, edit);
    let http = reqwest::Client::builder().no_proxy().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    Some(Cluster { redis, a, b, dir, http, _up: up })
}

/// One refresh token presented to both replicas at once (the default reuse interval):
/// both answer 200 with different refresh tokens of one family, every token works on both
/// replicas, and the family is not revoked.
#[tokio::test]
async fn concurrent_refreshes_on_two_replicas_both_succeed_within_the_reuse_interval() {
    let Some(c) = cluster().await else { return };
    for round in 0..5 {
        let (at0, rt0) = c.password_tokens(&c.a).await;
        let (ra, rb) = tokio::join!(c.refresh(&c.a, &rt0), c.refresh(&c.b, &rt0));
        assert_eq!((ra.0, rb.0), (200, 200), "round {round}: {ra:?} {rb:?}");
        let rt_a = ra.1["refresh_token"].as_str().unwrap();
        let rt_b = rb.1["refresh_token"].as_str().unwrap();
        assert_ne!(rt_a, rt_b);
        for at in [at0.as_str(), ra.1["access_token"].as_str().unwrap(), rb.1["access_token"].as_str().unwrap()] {
            assert_eq!((c.get_api(&c.a, at).await, c.get_api(&c.b, at).await), (200, 200), "round {round}");
        }
        assert_eq!(c.refresh(&c.b, rt_a).await.0, 200, "round {round}: A's successor rotates on B");
        assert_eq!(c.refresh(&c.a, rt_b).await.0, 200, "round {round}: B's sibling rotates on A");
    }
}

/// The Redis store itself (what both replicas share): a spent refresh token gets a sibling
/// within the reuse interval and revokes the family after it, operator blocks (issue 16.5),
/// and client not-befores keep the latest time (issue 19.1, 19.8).
#[tokio::test]
async fn redis_store_reuse_interval_and_client_not_before() {
    use portcullis::store::redis::RedisStore;
    use portcullis::store::{IssuedAccess, RefreshGrant, Rotate, Rotation, Store};
    let Some(redis) = Redis::start() else { return };
    let store = RedisStore::new(&redis.url(), "unit:", Duration::from_secs(2)).unwrap();
    let now = portcullis::tokens::now_secs();
    let grant = RefreshGrant {
        family: "f".into(),
        client_id: "c".into(),
        subject: "alice".into(),
        user: Some("alice".into()),
        scopes: vec!["read".into()],
        expires_at: now + 3600,
        issued_at: now,
        audience: None,
        binding: None,
    };
    store.put_refresh([1; 32], grant).await.unwrap();
    let at = |jti: &str| IssuedAccess { jti: jti.into(), expires_at: now + 600 };
    let within = |new: u8, jti: &str, reuse_interval: u64| Rotation {
        new: [new; 32],
        new_expires_at: now + 3600,
        access: at(jti),
        reuse_interval,
    };
    let next = |new: u8, jti: &str| within(new, jti, 10);
    // Review 23.15: the interval runs on Redis's clock, not the calling replica's: a replica
    // 100 s ahead still gets a sibling at once, and one that lags still sees the interval
    // end (2 s here; 3.5 s waited).
    assert!(matches!(store.rotate_refresh([1; 32], "c", within(2, "j1", 2), now).await.unwrap(), Rotate::Rotated(_)));
    let ahead = store.rotate_refresh([1; 32], "c", within(3, "j2", 2), now + 100).await.unwrap();
    assert!(matches!(ahead, Rotate::Sibling(_)), "{ahead:?}");
    for token in [[2; 32], [3; 32]] {
        let live = store.get_refresh(token, now).await.unwrap().unwrap();
        assert_eq!((live.grant.family.as_str(), live.spent), ("f", false));
    }
    tokio::time::sleep(Duration::from_millis(3500)).await;
    match store.rotate_refresh([1; 32], "c", within(4, "j3", 2), now).await.unwrap() {
        Rotate::Reused { mut revoked } => {
            revoked.sort_by(|a, b| a.jti.cmp(&b.jti));
            assert_eq!(revoked, vec![at("j1"), at("j2")]);
        }
        other => panic!("outside the interval: {other:?}"),
    }
    assert!(store.get_refresh([3; 32], now).await.unwrap().is_none(), "the sibling died with its family");

    // Review 23.16: at most MAX_SIBLINGS siblings per spent token; one more is reuse.
    let mut capped = issued_grant(now, "capped");
    capped.client_id = "c".into();
    store.put_refresh([30; 32], capped).await.unwrap();
    assert!(matches!(store.rotate_refresh([30; 32], "c", next(31, "s0"), now).await.unwrap(), Rotate::Rotated(_)));
    for i in 0..portcullis::store::MAX_SIBLINGS as u8 {
        let r = store.rotate_refresh([30; 32], "c", next(32 + i, "s"), now + 1).await.unwrap();
        assert!(matches!(r, Rotate::Sibling(_)), "sibling {i}: {r:?}");
    }
    let r = store.rotate_refresh([30; 32], "c", next(40, "s9"), now + 1).await.unwrap();
    assert!(matches!(r, Rotate::Reused { .. }), "{r:?}");
    assert!(store.get_refresh([31; 32], now + 1).await.unwrap().is_none(), "the family is revoked");

    // Issue 23.1: the rotation judges the stored not-before itself, whatever a replica
    // remembers: a token issued at or before it is refused and left as it was.
    let issued = |family: &str, at: u64| RefreshGrant {
        family: family.into(),
        client_id: "web".into(),
        subject: "alice".into(),
        user: Some("alice".into()),
        scopes: vec!["read".into()],
        expires_at: now + 3600,
        issued_at: at,
        audience: None,
        binding: None,
    };
    store.put_refresh([7; 32], issued("old", 100)).await.unwrap();
    store.put_refresh([8; 32], issued("new", 101)).await.unwrap();
    store.put_client_not_before("web", 100).await.unwrap();
    assert_eq!(store.rotate_refresh([7; 32], "web", next(9, "j4"), now).await.unwrap(), Rotate::ClientReset);
    assert!(!store.get_refresh([7; 32], now).await.unwrap().unwrap().spent, "nothing changed");
    assert!(store.get_refresh([9; 32], now).await.unwrap().is_none(), "no successor");
    assert!(matches!(store.rotate_refresh([8; 32], "web", next(10, "j5"), now).await.unwrap(), Rotate::Rotated(_)));

    // Operator blocks: kept, replaced by the same key, lapsed ones left out (and pruned),
    // removed once.
    use portcullis::store::{Block, BlockKey, BlockKind};
    let key = |kind, value: &str, iss: Option<&str>| BlockKey { kind, value: value.into(), iss: iss.map(Into::into) };
    let block = |key: BlockKey, expires_at| Block { key, expires_at, created_at: now, reason: Some("t".into()) };
    store.put_block(block(key(BlockKind::Sub, "alice", None), None)).await.unwrap();
    store.put_block(block(key(BlockKind::Sub, "alice", Some("https://idp")), Some(now - 1))).await.unwrap();
    store.put_block(block(key(BlockKind::Jti, "j1", None), Some(now + 5))).await.unwrap();
    store.put_block(block(key(BlockKind::Jti, "j1", None), Some(now + 500))).await.unwrap();
    let mut live = store.blocks(now).await.unwrap();
    live.sort_by(|a, b| a.key.cmp(&b.key));
    assert_eq!(
        live,
        vec![block(key(BlockKind::Jti, "j1", None), Some(now + 500)), block(key(BlockKind::Sub, "alice", None), None)]
    );
    assert!(store.delete_block(&key(BlockKind::Sub, "alice", None)).await.unwrap());
    assert!(!store.delete_block(&key(BlockKind::Sub, "alice", None)).await.unwrap());
    assert!(!store.delete_block(&key(BlockKind::Sub, "alice", Some("https://idp"))).await.unwrap(), "pruned on read");
    assert_eq!(store.blocks(now).await.unwrap().len(), 1);

    store.put_client_not_before("svc", 70).await.unwrap();
    store.put_client_not_before("svc", 60).await.unwrap();
    store.put_client_not_before("web", 5).await.unwrap();
    let mut all = store.client_not_before().await.unwrap();
    all.sort();
    assert_eq!(all, vec![("svc".to_string(), 70), ("web".to_string(), 100)]);
    // Review 23.10: a bad value is skipped, the others still load.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut raw = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("HSET").arg("unit:clientnb").arg("bad").arg("soon").query_async(&mut raw).await.unwrap();
    let mut all = store.client_not_before().await.unwrap();
    all.sort();
    assert_eq!(all, vec![("svc".to_string(), 70), ("web".to_string(), 100)]);
    store.ping().await.expect("still connected");
}

fn issued_grant(now: u64, family: &str) -> portcullis::store::RefreshGrant {
    portcullis::store::RefreshGrant {
        family: family.into(),
        client_id: "web".into(),
        subject: "alice".into(),
        user: Some("alice".into()),
        scopes: vec!["read".into()],
        expires_at: now + 3600,
        issued_at: now,
        audience: None,
        binding: None,
    }
}

/// Issue 23.1: a client disabled on one replica only (B reloaded, A not yet) reaches the
/// other through the store: A refuses the client's older access tokens (cached there) and
/// its refresh tokens, and does not rotate them into fresh tokens valid everywhere.
#[tokio::test]
async fn a_client_reset_on_one_replica_reaches_the_other() {
    let Some(c) = cluster().await else { return };
    let (at, rt) = c.password_tokens(&c.a).await;
    assert_eq!((c.get_api(&c.a, &at).await, c.get_api(&c.b, &at).await), (200, 200));
    let path = c.dir.path().join("b.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let disabled = text.replacen("id = \"webapp\"\n", "id = \"webapp\"\nenabled = false\n", 1);
    assert_ne!(text, disabled);
    std::fs::write(&path, disabled).unwrap();
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(c.b.child.id() as i32, libc::SIGHUP) };
    let dead = within(Duration::from_secs(10), async || c.get_api(&c.a, &at).await == 401).await;
    assert!(dead.is_some(), "A, where the client is still enabled, never heard of B's reset:\n{}", c.log("a"));
    let (status, v) = c.refresh(&c.a, &rt).await;
    assert_eq!((status, v["error"].as_str()), (400, Some("invalid_grant")), "{v}");
    // A's own new tokens for the client (still enabled there) are not void from birth.
    let (fresh, _) = c.password_tokens(&c.a).await;
    assert_eq!(c.get_api(&c.a, &fresh).await, 200);
}

/// Issue 23.2: a replica started while Redis is down does not know the client not-befores
/// (a re-enabled client's old tokens would pass), so it is not ready until it has read
/// them; once Redis answers it becomes ready without a restart.
#[tokio::test]
async fn a_replica_is_not_ready_until_it_has_read_the_client_not_befores() {
    let Some(mut redis) = Redis::start() else { return };
    redis.stop();
    let up = EchoUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let pem = portcullis::tokens::keys::generate_ed25519_pem().unwrap();
    std::fs::write(dir.path().join("k1.pem"), pem).unwrap();
    let a = Replica::start(dir.path(), "a", &redis, up.addr);
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let readyz = async || http.get(a.admin_url("/readyz")).send().await.map(|r| r.status().as_u16()).unwrap_or(0);
    assert!(within(Duration::from_secs(10), async || readyz().await == 503).await.is_some());
    let v: Value = http.get(a.admin_url("/readyz?verbose")).send().await.unwrap().json().await.unwrap();
    assert_eq!(v["checks"]["client_resets"]["ok"], false, "{v}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(readyz().await, 503, "still unknown, still not ready");
    redis.resume();
    assert!(within(Duration::from_secs(10), async || readyz().await == 200).await.is_some(), "never ready");
    let v: Value = http.get(a.admin_url("/readyz?verbose")).send().await.unwrap().json().await.unwrap();
    assert_eq!(v["checks"]["client_resets"]["ok"], true, "{v}");
}

/// Issue 18 attack, finding 1 with Redis: a replica that checked a token while Redis hung
/// (SIGSTOP, shorter than the feed's silence timeout, so no re-subscribe follows) cached it
/// as valid, and a token revoked in Redis worked on after Redis came back. Such a verdict
/// is never cached now: the first request after the hang is refused.
#[tokio::test]
async fn a_token_checked_while_redis_hangs_is_refused_once_it_answers() {
    let Some(c) = cluster().await else { return };
    let (status, v) = c.token(&c.a, &[("grant_type", "client_credentials")], Some(("svc", SVC_SECRET))).await;
    assert_eq!(status, 200, "{v}");
    let token = v["access_token"].as_str().unwrap().to_string();
    let resp = c
        .http
        .post(c.a.url("/oauth/revoke"))
        .basic_auth("svc", Some(SVC_SECRET))
        .form(&[("token", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // A replica started after the revocation: it is in Redis only, not in its memory.
    let late = Replica::start(c.dir.path(), "late", &c.redis, c._up.addr);
    let store_ok = async || {
        let v: Value = c.http.get(late.admin_url("/readyz?verbose")).send().await.unwrap().json().await.unwrap();
        v["checks"]["store"]["ok"] == true
    };
    assert!(within(Duration::from_secs(10), store_ok).await.is_some(), "log:\n{}", c.log("late"));
    let pid = libc::pid_t::try_from(c.redis.child.as_ref().unwrap().id()).unwrap();
    // SAFETY: kill(2) on the test's own redis-server child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    let during = c.get_api(&late, &token).await;
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    assert_eq!(during, 200, "judged on its own while Redis cannot answer");
    let refused = within(Duration::from_secs(10), async || c.get_api(&late, &token).await == 401).await;
    assert!(refused.is_some(), "a revoked token kept working after Redis came back");
    // And from then on.
    for _ in 0..3 {
        assert_eq!(c.get_api(&late, &token).await, 401);
    }
}

/// The WebSocket upstream of the test below (the config edit is a plain `fn`).
static WS_UPSTREAM: std::sync::OnceLock<SocketAddr> = std::sync::OnceLock::new();

fn with_ws_route(config: String) -> String {
    let ws = WS_UPSTREAM.get().expect("the WebSocket upstream is started first");
    format!(
        "{config}\n[[route]]\nprefix = \"/ws\"\nupstream = \"http://{ws}\"\nscopes = [\"read\"]\nwebsocket = true\n"
    )
}

/// Issue 12.4: a token revoked on replica a ends the WebSocket it opened on replica b,
/// with a close frame 1008, within about a second (the bound is generous).
#[tokio::test]
async fn a_revocation_on_one_replica_closes_a_websocket_held_on_the_other() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    let ws_up = WsUpstream::start().await;
    WS_UPSTREAM.set(ws_up.addr).unwrap();
    let Some(c) = cluster_with(with_ws_route).await else { return };
    let (status, v) = c.token(&c.a, &[("grant_type", "client_credentials")], Some(("svc", SVC_SECRET))).await;
    assert_eq!(status, 200, "{v}");
    let token = v["access_token"].as_str().unwrap().to_string();
    let mut req = format!("ws://127.0.0.1:{}/ws/held", c.b.port).into_client_request().unwrap();
    req.headers_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", c.b.port)).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(req, tcp).await.unwrap();
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hello"));

    let resp = c
        .http
        .post(c.a.url("/oauth/revoke"))
        .basic_auth("svc", Some(SVC_SECRET))
        .form(&[("token", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let at = Instant::now();
    let close = loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => break frame,
            Ok(Some(Ok(_))) => continue,
            other => panic!("no close frame from replica b: {other:?}; log b:\n{}", c.log("b")),
        }
    };
    let frame = close.expect("a close code");
    assert_eq!((frame.code, frame.reason.as_str()), (CloseCode::Policy, "token revoked"));
    eprintln!("closed on b {:?} after the revocation on a", at.elapsed());
}

/// RFC 9449 §11.1 and RFC 7523 §3: a DPoP proof and a client assertion are single use on
/// every replica (the replay memory is the shared store). Behind one balancer replicas share
/// the URL clients address; here the Host header plays that part.
#[tokio::test]
async fn dpop_proofs_and_client_assertions_replayed_on_the_other_replica_are_refused() {
    let signer = IdpKey::es256("c");
    let public = signer.public_pem();
    let Some(c) = cluster_extra(|dir| {
        std::fs::write(dir.join("pkjwt.pem"), &public).unwrap();
        format!(
            "\n[[client]]\nid = \"pkjwt\"\ntoken_endpoint_auth_method = \"private_key_jwt\"\npublic_key = \"{}\"\n\
             grants = [\"client_credentials\"]\nscopes = [\"read\"]\n",
            dir.join("pkjwt.pem").display()
        )
    })
    .await
    else {
        return;
    };
    let host = "api.test";
    let key = IdpKey::ed25519("d");
    let token_proof = key.dpop_proof("POST", &format!("http://{host}/oauth/token"), None);
    let token_request = |on: &Replica, proof: &str| {
        c.http
            .post(on.url("/oauth/token"))
            .header("host", host)
            .header("DPoP", proof)
            .basic_auth("svc", Some(SVC_SECRET))
            .form(&[("grant_type", "client_credentials")])
            .send()
    };
    let resp = token_request(&c.a, &token_proof).await.unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["token_type"], "DPoP");
    let token = v["access_token"].as_str().unwrap().to_string();
    let resp = token_request(&c.b, &token_proof).await.unwrap();
    assert_eq!(resp.status(), 400, "token proof replayed on b");

    let proof = key.dpop_proof("GET", &format!("http://{host}/api/x"), Some(&token));
    let call = |on: &Replica| {
        c.http
            .get(on.url("/api/x"))
            .header("host", host)
            .header("authorization", format!("DPoP {token}"))
            .header("DPoP", &proof)
            .send()
    };
    assert_eq!(call(&c.a).await.unwrap().status(), 200);
    let resp = call(&c.b).await.unwrap();
    assert_eq!(resp.status(), 401, "resource proof replayed on b");
    assert!(resp.headers()["www-authenticate"].to_str().unwrap().starts_with("DPoP error=\"invalid_dpop_proof\""));

    let now = portcullis::tokens::now_secs();
    let assertion = signer.sign(&serde_json::json!({
        "iss": "pkjwt", "sub": "pkjwt", "aud": ISSUER, "exp": now + 60, "jti": "once-only",
    }));
    let form = [
        ("grant_type", "client_credentials"),
        ("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"),
        ("client_assertion", assertion.as_str()),
    ];
    let (status, v) = c.token(&c.a, &form, None).await;
    assert_eq!(status, 200, "{v}");
    let (status, v) = c.token(&c.b, &form, None).await;
    assert_eq!((status, v["error"].as_str()), (401, Some("invalid_client")), "assertion replayed on b: {v}");
}

/// A metric of `replica`'s `/metrics` (0 when absent).
async fn replica_metric(c: &Cluster, replica: &Replica, series: &str) -> f64 {
    let text = c.http.get(replica.admin_url("/metrics")).send().await.unwrap().text().await.unwrap();
    text.lines().find_map(|l| l.strip_prefix(series).and_then(|rest| rest.trim().parse().ok())).unwrap_or(0.0)
}

/// Hardening: a hung Redis (SIGSTOP) costs the revocation check of an uncached token the
/// store timeout once; then the breaker answers the check at once — the same verdict a
/// timeout gives — with one probe a second, until Redis answers again.
#[tokio::test]
async fn while_redis_hangs_the_revocation_check_costs_the_timeout_once_then_answers_at_once() {
    let Some(c) = cluster_with(|t| t.replace("timeout = \"300ms\"", "timeout = \"2s\"")).await else { return };
    let store_timeout = Duration::from_secs(2);
    let (status, v) = c.token(&c.a, &[("grant_type", "client_credentials")], Some(("svc", SVC_SECRET))).await;
    assert_eq!(status, 200, "{v}");
    let token = v["access_token"].as_str().unwrap().to_string();
    let pid = libc::pid_t::try_from(c.redis.child.as_ref().unwrap().id()).unwrap();
    // SAFETY: kill(2) on the test's own redis-server child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    let timed = async || {
        let at = Instant::now();
        let status = c.get_api(&c.a, &token).await;
        (status, at.elapsed())
    };
    // The first uncached check waits for the store (the verdict is never cached, so every
    // request of the outage is uncached).
    let (first, took) = timed().await;
    let mut later = Vec::new();
    for _ in 0..6 {
        later.push(timed().await);
    }
    let skipped = replica_metric(&c, &c.a, "portcullis_revocation_check_skipped_total").await;
    let open = replica_metric(&c, &c.a, "portcullis_revocation_check_breaker_open").await;
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    eprintln!("first {took:?}, then {:?}", later.iter().map(|(_, t)| *t).collect::<Vec<_>>());
    assert_eq!(first, 200, "judged on its own while Redis cannot answer (as after a timeout)");
    assert!(took >= store_timeout / 2, "the first check waited for the store: {took:?}");
    assert!(later.iter().all(|(s, _)| *s == 200), "{later:?}");
    // One probe a second may wait for the store again; the others answer at once.
    let fast = later.iter().filter(|(_, t)| *t < store_timeout / 2).count();
    assert!(fast >= later.len() - 2, "{later:?}");
    assert!(skipped >= fast as f64, "{skipped} skipped, {fast} fast");
    assert_eq!(open, 1.0);

    // Redis answers again: the breaker closes (a probe gets an answer), logged once, and
    // checks are made again.
    let closed = within(Duration::from_secs(15), async || {
        let (status, t) = timed().await;
        status == 200
            && t < store_timeout / 2
            && replica_metric(&c, &c.a, "portcullis_revocation_check_breaker_open").await == 0.0
    })
    .await;
    assert!(closed.is_some(), "log:\n{}", c.log("a"));
    let recovered = "revocation check: the store answers again";
    let logged = within(Duration::from_secs(10), async || c.log("a").contains(recovered)).await;
    assert!(logged.is_some(), "log:\n{}", c.log("a"));
    // A token revoked in the store is refused by its check again.
    let resp = c
        .http
        .post(c.b.url("/oauth/revoke"))
        .basic_auth("svc", Some(SVC_SECRET))
        .form(&[("token", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(within(Duration::from_secs(10), async || c.get_api(&c.a, &token).await == 401).await.is_some());
    let log = c.log("a");
    assert_eq!(log.matches(recovered).count(), 1, "logged once:\n{log}");
}
