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
    )
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
    let redis = Redis::start()?;
    let up = EchoUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
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
/// within the reuse interval and revokes the family after it, and client not-befores keep
/// the latest time (issue 19.1, 19.8).
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
    };
    store.put_refresh([1; 32], grant).await.unwrap();
    let at = |jti: &str| IssuedAccess { jti: jti.into(), expires_at: now + 600 };
    let next = |new: u8, jti: &str| Rotation {
        new: [new; 32],
        new_expires_at: now + 3600,
        access: at(jti),
        reuse_interval: 10,
    };
    assert!(matches!(store.rotate_refresh([1; 32], "c", next(2, "j1"), now).await.unwrap(), Rotate::Rotated(_)));
    assert!(matches!(store.rotate_refresh([1; 32], "c", next(3, "j2"), now + 10).await.unwrap(), Rotate::Sibling(_)));
    for token in [[2; 32], [3; 32]] {
        let live = store.get_refresh(token, now + 10).await.unwrap().unwrap();
        assert_eq!((live.grant.family.as_str(), live.spent), ("f", false));
    }
    match store.rotate_refresh([1; 32], "c", next(4, "j3"), now + 11).await.unwrap() {
        Rotate::Reused { mut revoked } => {
            revoked.sort_by(|a, b| a.jti.cmp(&b.jti));
            assert_eq!(revoked, vec![at("j1"), at("j2")]);
        }
        other => panic!("outside the interval: {other:?}"),
    }
    assert!(store.get_refresh([3; 32], now + 11).await.unwrap().is_none(), "the sibling died with its family");

    store.put_client_not_before("svc", 70).await.unwrap();
    store.put_client_not_before("svc", 60).await.unwrap();
    store.put_client_not_before("web", 5).await.unwrap();
    let mut all = store.client_not_before().await.unwrap();
    all.sort();
    assert_eq!(all, vec![("svc".to_string(), 70), ("web".to_string(), 5)]);
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
