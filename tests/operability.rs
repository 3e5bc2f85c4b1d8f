//! Issue 18, points 1 and 3: a store that heals after an I/O failure, readiness that
//! means "send me traffic" (a store outage degrades grants, not the proxy path), and a
//! shutdown that drains before it closes and counts what it cuts. Over real sockets; the
//! store fault and SIGTERM at process level, against the real binary.

mod common;

use common::*;
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

/// A spawned gateway: its binary, the TLS port and the admin address.
struct Spawned {
    bin: Binary,
    port: String,
    admin: String,
    client: reqwest::Client,
}

impl Spawned {
    async fn start(dir: &Path, pki: &Pki, text: &str) -> Spawned {
        let config = dir.join("gateway.toml");
        std::fs::write(&config, text).unwrap();
        Self::wait(Binary::serve(&config), pki).await
    }

    async fn wait(bin: Binary, pki: &Pki) -> Spawned {
        let deadline = tokio::time::Instant::now() + WAIT;
        let https = loop {
            let found = bin
                .json()
                .into_iter()
                .find(|v| v["fields"]["message"] == "listening" && v["fields"]["scheme"] == "https");
            if let Some(v) = found {
                break v["fields"]["address"].as_str().unwrap().to_string();
            }
            assert!(tokio::time::Instant::now() < deadline, "not listening; stderr:\n{}", bin.raw());
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let port = https.rsplit_once(':').unwrap().1.to_string();
        let admin = bin.wait_for("admin listening (/healthz, /readyz, /metrics)").await["address"]
            .as_str()
            .unwrap()
            .to_string();
        Spawned { bin, port, admin, client: https_client(&pki.ca_pem, false) }
    }

    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.port)
    }

    async fn admin(&self, path: &str) -> (u16, String) {
        let resp = reqwest::get(format!("http://{}{path}", self.admin)).await.unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    async fn token(&self) -> String {
        let resp = self
            .client
            .post(self.url("/oauth/token"))
            .basic_auth("svc", Some(SVC_SECRET))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_string()
    }

    async fn revoke(&self, token: &str) -> (u16, Value) {
        let resp = self
            .client
            .post(self.url("/oauth/revoke"))
            .basic_auth("svc", Some(SVC_SECRET))
            .form(&[("token", token)])
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap();
        (status, serde_json::from_str(&body).unwrap_or(Value::Null))
    }

    async fn api(&self, token: &str) -> u16 {
        self.client.get(self.url("/api/x")).bearer_auth(token).send().await.unwrap().status().as_u16()
    }
}

/// A sample's value in Prometheus text, or `None` when the series is absent.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// The readiness detail: status and body.
async fn verbose(client: &reqwest::Client, url: &str) -> (u16, Value) {
    let resp = client.get(url).send().await.unwrap();
    let status = resp.status().as_u16();
    assert_eq!(resp.headers()["content-type"], "application/json");
    (status, resp.json().await.unwrap())
}

// ---------------------------------------------------------------------------------------
// Point 1: the embedded store heals after an I/O failure

/// Issue 18.1 at process level: the store file cannot grow (a file-size limit set on the
/// running gateway, as a full disk would) — revocation answers 503 while it lasts, readiness
/// stays 200 but the verbose probe and the metrics show the store down; once the limit is
/// lifted the store reopens itself, and the same revocation succeeds without a restart.
#[tokio::test]
async fn embedded_store_io_failure_refuses_revocation_then_heals_without_restart() {
    let up = EchoUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(dir.path());
    let gw = Spawned::start(dir.path(), &pki, &config_toml(dir.path(), &pki, up.addr, "")).await;
    let store = dir.path().join("data/portcullis.redb");
    assert!(store.exists());
    let before = gw.token().await;
    assert_eq!(gw.revoke(&before).await.0, 200, "healthy store: revocation works");
    assert_eq!(gw.admin("/readyz").await, (200, "ready\n".to_string()));

    // The disk is "full": no write beyond the first 4 KiB of any file.
    gw.bin.limit_file_size(4096);
    let token = gw.token().await;
    let (status, v) = gw.revoke(&token).await;
    assert_eq!((status, v["error"].as_str()), (503, Some("temporarily_unavailable")), "{v}\n{}", gw.bin.raw());
    // Again (now the "previous I/O error" state): still 503, never a 200 that wrote nothing.
    let (status, _) = gw.revoke(&token).await;
    assert_eq!(status, 503);
    let pw = [("grant_type", "password"), ("username", "alice"), ("password", ALICE_PASSWORD)];
    let resp =
        gw.client.post(gw.url("/oauth/token")).basic_auth("webapp", Some(SVC_SECRET)).form(&pw).send().await.unwrap();
    assert_eq!(resp.status(), 503, "a grant that writes");

    // Readiness: the proxy path still serves, so the replica stays in the balancer...
    assert_eq!(gw.admin("/readyz").await.0, 200);
    assert_eq!(gw.api(&token).await, 200, "the proxy path keeps serving");
    // ...and says what is degraded to whoever asks.
    let http = reqwest::Client::new();
    let (status, v) = verbose(&http, &format!("http://{}/readyz?verbose", gw.admin)).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["status"], "ready");
    assert_eq!(v["checks"]["store"]["ok"], false, "{v}");
    assert_eq!(v["checks"]["store"]["required"], false);
    assert_eq!(v["checks"]["store"]["kind"], "embedded");
    assert!(v["checks"]["store"]["detail"].as_str().unwrap().contains("I/O"), "{v}");
    // Nothing reopens while the disk refuses writes: every probe over several seconds
    // says down (the free-pages case of finding 4 is the test at the end of this file).
    for _ in 0..15 {
        let (_, text) = gw.admin("/metrics").await;
        assert_eq!(metric(&text, "portcullis_store_up{store=\"embedded\"}"), Some(0.0), "{text}");
        assert_eq!(metric(&text, "portcullis_store_reopens_total{store=\"embedded\"}"), Some(0.0), "{text}");
        assert_eq!(gw.revoke(&token).await.0, 503);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Space is freed: the store reopens itself and the revocation goes through.
    gw.bin.limit_file_size(libc::RLIM_INFINITY);
    let healed = within(Duration::from_secs(30), async || gw.revoke(&token).await.0 == 200).await;
    assert!(healed.is_some(), "the store did not heal; stderr:\n{}", gw.bin.raw());
    assert_eq!(gw.api(&token).await, 401, "revoked once the store is back");
    assert_eq!(gw.api(&before).await, 401, "revoked before the fault: still revoked");
    let (status, v) = verbose(&http, &format!("http://{}/readyz?verbose", gw.admin)).await;
    assert_eq!((status, &v["checks"]["store"]["ok"]), (200, &Value::Bool(true)), "{v}");
    let (_, text) = gw.admin("/metrics").await;
    assert_eq!(metric(&text, "portcullis_store_up{store=\"embedded\"}"), Some(1.0), "{text}");
    assert!(metric(&text, "portcullis_store_reopens_total{store=\"embedded\"}").unwrap() >= 1.0, "{text}");
    gw.bin.wait_for("store file reopened after an I/O failure; accepting writes again").await;
}

// ---------------------------------------------------------------------------------------
// Point 2: readiness that means "send me traffic"

/// Issue 18.3: with Redis unreachable every replica used to answer /readyz 503 at once,
/// although the proxy path works; readiness now does not follow the store's health. But
/// issue 23.2: a replica that never read the client not-befores would honour a re-enabled
/// client's old tokens, so until it has, /readyz is 503 and the verbose probe (by query or
/// by Accept) names `client_resets` (required) and the store (not required) as the reasons.
/// Grants that write answer 503, tokens keep working.
#[tokio::test]
async fn redis_unreachable_degrades_grants_and_readiness_waits_for_client_resets() {
    let up = EchoUpstream::start().await;
    let port = free_port();
    let store = format!("[store]\nkind = \"redis\"\nurl = \"redis://127.0.0.1:{port}/\"\ntimeout = \"200ms\"\n");
    // With a shared store no replica generates a key: it is made once, as `gen-key` would.
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(dir.path());
    let pem = portcullis::tokens::keys::generate_ed25519_pem().unwrap();
    portcullis::tokens::keys::write_private(&dir.path().join("k1.pem"), pem.as_bytes()).unwrap();
    let text = config_toml(dir.path(), &pki, up.addr, &store);
    let gw = TestGateway::start_text(dir, pki, &text).await;
    let http = reqwest::Client::new();
    let resp = http.get(gw.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.text().await.unwrap(), "not ready: starting\n");
    assert_eq!(http.head(gw.admin_url("/readyz")).send().await.unwrap().status(), 503);

    for (label, req) in [
        ("?verbose", http.get(gw.admin_url("/readyz?verbose"))),
        ("?verbose=1", http.get(gw.admin_url("/readyz?verbose=1"))),
        ("Accept", http.get(gw.admin_url("/readyz")).header("accept", "text/html, Application/JSON;q=0.9")),
    ] {
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 503, "{label}");
        assert_eq!(resp.headers()["content-type"], "application/json", "{label}");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["status"], "not ready", "{label}: {v}");
        for check in ["config", "keys", "listeners", "draining"] {
            assert_eq!(v["checks"][check]["ok"], true, "{label} {check}: {v}");
            assert_eq!(v["checks"][check]["required"], true, "{label} {check}: {v}");
        }
        let resets = &v["checks"]["client_resets"];
        assert_eq!((&resets["ok"], &resets["required"]), (&false.into(), &true.into()), "{label}: {v}");
        let store = &v["checks"]["store"];
        assert_eq!((&store["ok"], &store["required"], &store["kind"]), (&false.into(), &false.into(), &"redis".into()));
        assert!(store["detail"].as_str().is_some_and(|d| !d.is_empty()), "{label}: {v}");
    }
    // `verbose=0` asks for the plain probe.
    let resp = http.get(gw.admin_url("/readyz?verbose=0")).send().await.unwrap();
    assert_eq!(resp.text().await.unwrap(), "not ready: starting\n");

    // The proxy path: a token that needs no store is issued and works.
    let token = gw.token("svc", SVC_SECRET, None).await;
    assert_eq!(api_status(&gw, &token).await, 200);
    let pw = [("grant_type", "password"), ("username", "alice"), ("password", ALICE_PASSWORD)];
    let (status, v) = token_request(&gw, Some(("webapp", SVC_SECRET)), &pw).await;
    assert_eq!((status, v["error"].as_str()), (503, Some("temporarily_unavailable")), "{v}");
    let text = http.get(gw.admin_url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert_eq!(metric(&text, "portcullis_store_up{store=\"redis\"}"), Some(0.0), "{text}");
}

/// Readiness fails while draining (and says so in both forms); the store being healthy
/// does not make a draining replica ready.
#[tokio::test]
async fn draining_is_not_ready_in_plain_and_verbose_form() {
    let (_up, gw) = setup().await;
    let http = reqwest::Client::new();
    let (status, v) = verbose(&http, &gw.admin_url("/readyz?verbose")).await;
    assert_eq!(status, 200);
    assert_eq!((&v["status"], &v["checks"]["store"]["ok"]), (&"ready".into(), &true.into()), "{v}");
    let text = http.get(gw.admin_url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert_eq!(metric(&text, "portcullis_store_up{store=\"embedded\"}"), Some(1.0), "{text}");

    gw.gateway.set_serving(false);
    let resp = http.get(gw.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.text().await.unwrap(), "not ready: draining\n");
    let (status, v) = verbose(&http, &gw.admin_url("/readyz?verbose")).await;
    assert_eq!(status, 503);
    assert_eq!(v["status"], "not ready");
    assert_eq!(v["checks"]["draining"]["ok"], false, "{v}");
    assert_eq!(v["checks"]["store"]["ok"], true, "{v}");
    gw.gateway.set_serving(true);
}

// ---------------------------------------------------------------------------------------
// Point 3: drain on shutdown

/// Issue 18.3 at process level: SIGTERM turns /readyz 503 first while the listeners still
/// accept (a request sent after readiness failed is served), then the listeners close; a
/// request still running when the grace period ends is cut, and the cut is logged with
/// its count.
#[tokio::test]
async fn sigterm_drains_then_closes_and_counts_what_the_grace_period_cuts() {
    let up = EchoUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(dir.path());
    let text = config_toml(dir.path(), &pki, up.addr, "")
        .replace("[limits]\n", "[limits]\ndrain_delay = \"3s\"\nshutdown_grace = \"1s\"\n")
        .replace("upstream_timeout = \"2s\"", "upstream_timeout = \"60s\"");
    let gw = Spawned::start(dir.path(), &pki, &text).await;
    let token = gw.token().await;
    // A request that outlives any grace period: in flight when SIGTERM arrives.
    let slow = {
        let (client, url, token) = (gw.client.clone(), gw.url("/slow/60000"), token.clone());
        tokio::spawn(async move { client.get(url).bearer_auth(token).send().await.map(|r| r.status().as_u16()) })
    };
    wait_until("the slow request to reach the upstream", || async { accepted(&up) >= 1 }).await;

    gw.bin.signal(libc::SIGTERM);
    let drained = within(WAIT, async || gw.admin("/readyz").await == (503, "not ready: draining\n".into())).await;
    assert!(drained.is_some(), "/readyz did not turn 503; stderr:\n{}", gw.bin.raw());
    // Readiness failed, the listeners still accept: a balancer that has not yet noticed
    // loses nothing. A fresh client, so a fresh connection.
    let fresh = https_client(&pki.ca_pem, false);
    let status = fresh.get(gw.url("/api/x")).bearer_auth(&token).send().await.unwrap().status();
    assert_eq!(status, 200, "a new connection during the drain delay is served");

    let cut = gw.bin.wait_for("grace period over; cutting the requests still running").await;
    assert_eq!(cut["requests"], 1, "{cut}");
    gw.bin.wait_for("stopped").await;
    let order = |m: &str| gw.bin.position(m).unwrap_or_else(|| panic!("no {m:?}; stderr:\n{}", gw.bin.raw()));
    assert!(
        order("draining: /readyz answers 503; still accepting until the drain delay ends")
            < order("shutting down: no new connections, finishing in-flight requests")
    );
    let slow = slow.await.unwrap();
    assert!(!matches!(slow, Ok(200)), "the cut request did not complete: {slow:?}");
}

/// A second stop signal means now: a drain delay and a grace period of an hour each end at
/// once, and the request still running is cut (and logged as such).
#[tokio::test]
async fn a_second_stop_signal_ends_the_drain_and_the_grace_period_at_once() {
    let up = EchoUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(dir.path());
    let text = config_toml(dir.path(), &pki, up.addr, "")
        .replace("[limits]\n", "[limits]\ndrain_delay = \"1h\"\nshutdown_grace = \"1h\"\n")
        .replace("upstream_timeout = \"2s\"", "upstream_timeout = \"60s\"");
    let gw = Spawned::start(dir.path(), &pki, &text).await;
    let token = gw.token().await;
    let slow = {
        let (client, url, token) = (gw.client.clone(), gw.url("/slow/60000"), token.clone());
        tokio::spawn(async move { client.get(url).bearer_auth(token).send().await.map(|r| r.status().as_u16()) })
    };
    wait_until("the slow request to reach the upstream", || async { accepted(&up) >= 1 }).await;
    gw.bin.signal(libc::SIGTERM);
    gw.bin.wait_for("draining: /readyz answers 503; still accepting until the drain delay ends").await;
    gw.bin.signal(libc::SIGINT);
    gw.bin.wait_for("second stop signal: ending the drain delay and the grace period now").await;
    let cut = gw.bin.wait_for("grace period over; cutting the requests still running").await;
    assert_eq!(cut["requests"], 1, "{cut}");
    gw.bin.wait_for("stopped").await;
    assert!(!matches!(slow.await.unwrap(), Ok(200)));
}

/// In process: the cut requests are counted in `portcullis_requests_cut_total`, and a
/// streamed response still running counts as a request in flight.
#[tokio::test]
async fn requests_cut_at_the_end_of_the_grace_period_are_counted() {
    let up = EchoUpstream::start().await;
    let gw = gateway_with_limits(up.addr, "", "shutdown_grace = \"300ms\"\n").await;
    gw.rewrite_config(|t| t.replace("upstream_timeout = \"2s\"", "upstream_timeout = \"60s\""));
    let gateway = gw.gateway.clone();
    let token = gw.token("svc", SVC_SECRET, None).await;
    let client = gw.client();
    let slow = tokio::spawn({
        let (client, url, token) = (client.clone(), gw.url("/slow/60000"), token.clone());
        async move { client.get(url).bearer_auth(token).send().await.map(|r| r.status().as_u16()) }
    });
    // A streamed upload echoed back: its response head is out, its body still running.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(1);
    let body = reqwest::Body::wrap_stream(tokio_stream_from(rx));
    let streaming = client.post(gw.url("/stream/x")).bearer_auth(&token).body(body).send();
    tx.send(Ok(bytes::Bytes::from_static(b"first"))).await.unwrap();
    let resp = streaming.await.unwrap();
    assert_eq!(resp.status(), 200);
    wait_until("both requests in flight", || async { gateway.in_flight() >= 2 }).await;
    assert_eq!(gateway.requests_cut(), 0);

    gw.shutdown().await;
    assert_eq!(gateway.requests_cut(), 2);
    let req = http::Request::get("/metrics").body(()).unwrap();
    let resp = portcullis::admin::handle(&gateway, &req).await;
    let text = http_body_util::BodyExt::collect(resp.into_body()).await.unwrap().to_bytes();
    let text = String::from_utf8(text.to_vec()).unwrap();
    assert_eq!(metric(&text, "portcullis_requests_cut_total"), Some(2.0), "{text}");
    assert!(!matches!(slow.await.unwrap(), Ok(200)));
    drop(tx);
}

/// A stream of the chunks sent on `rx`.
fn tokio_stream_from(
    rx: tokio::sync::mpsc::Receiver<Result<bytes::Bytes, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<bytes::Bytes, std::io::Error>> {
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) })
}

/// The other store fault in the same health model: the store file moved away while running
/// degrades the store (verbose probe, metric, 503 on revocation, readiness kept), and moving
/// it back heals it without a restart.
#[tokio::test]
async fn store_file_moved_away_and_back_degrades_then_heals_in_the_same_model() {
    let (_up, gw) = setup().await;
    let http = reqwest::Client::new();
    let store = gw.dir.path().join("data/portcullis.redb");
    let aside = gw.dir.path().join("data/aside.redb");
    let revoke = async |token: &str| {
        gw.client()
            .post(gw.url("/oauth/revoke"))
            .basic_auth("svc", Some(SVC_SECRET))
            .form(&[("token", token)])
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    let store_ok = async || verbose(&http, &gw.admin_url("/readyz?verbose")).await.1["checks"]["store"]["ok"] == true;
    let token = gw.token("svc", SVC_SECRET, None).await;

    std::fs::rename(&store, &aside).unwrap();
    assert!(within(WAIT, async || !store_ok().await).await.is_some(), "the store stayed ok");
    assert_eq!(revoke(&token).await, 503);
    assert_eq!(http.get(gw.admin_url("/readyz")).send().await.unwrap().status(), 200);
    let text = http.get(gw.admin_url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert_eq!(metric(&text, "portcullis_store_up{store=\"embedded\"}"), Some(0.0), "{text}");

    std::fs::rename(&aside, &store).unwrap();
    assert!(within(WAIT, async || store_ok().await).await.is_some(), "the store did not heal");
    assert_eq!(revoke(&token).await, 200);
    assert_eq!(api_status(&gw, &token).await, 401);
}

// ---------------------------------------------------------------------------------------
// Issue 18 attack findings

/// Finding 1: a token checked while the store could not answer was cached as valid, and
/// that verdict outlived the store's recovery — a token revoked before a restart worked on
/// after the disk was freed. Now such a verdict is never cached, and the store answering
/// again clears the cache: the next request after the recovery is refused.
#[tokio::test]
async fn a_verdict_reached_without_the_store_does_not_outlive_its_recovery() {
    let up = EchoUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(dir.path());
    let text = config_toml(dir.path(), &pki, up.addr, "");
    let gw = Spawned::start(dir.path(), &pki, &text).await;
    let revoked = gw.token().await;
    assert_eq!(gw.revoke(&revoked).await.0, 200);
    drop(gw);
    // A new process: the revocation is in the store only, not in its memory.
    let gw = Spawned::start(dir.path(), &pki, &text).await;
    gw.bin.limit_file_size(4096);
    let other = gw.token().await;
    assert_eq!(gw.revoke(&other).await.0, 503, "{}", gw.bin.raw());
    // Documented degraded behaviour: judged on its own while the store cannot answer.
    for _ in 0..3 {
        assert_eq!(gw.api(&revoked).await, 200);
    }
    gw.bin.limit_file_size(libc::RLIM_INFINITY);
    let healed = within(Duration::from_secs(30), async || gw.revoke(&other).await.0 == 200).await;
    assert!(healed.is_some(), "the store did not heal; stderr:\n{}", gw.bin.raw());
    assert_eq!(gw.api(&revoked).await, 401, "revoked in the store: refused once it answers");
    assert_eq!(gw.api(&other).await, 401);
    // Finding 7: the outage is logged once, not once per request (lines are written in
    // batches: wait for the last one expected).
    gw.bin
        .wait_for("revocation check unavailable; judging tokens on their own, uncached, until the store answers")
        .await;
    gw.bin.wait_for("store answering again; validation cache cleared").await;
    let lines = gw.bin.json();
    let count =
        |m: &str| lines.iter().filter(|v| v["fields"]["message"].as_str().is_some_and(|x| x.starts_with(m))).count();
    assert_eq!(count("revocation check unavailable"), 1, "{}", gw.bin.raw());
    assert_eq!(count("store operation failed"), 0, "{}", gw.bin.raw());
}

/// Finding 3: under `ulimit -f` the process died of SIGXFSZ at the write that crossed the
/// limit (exit 153, no log line). It ignores the signal itself now: the write fails, the
/// request gets a 503 and the process lives on.
#[tokio::test]
async fn a_file_size_limit_fails_writes_instead_of_killing_the_process() {
    let up = EchoUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(dir.path());
    let text = config_toml(dir.path(), &pki, up.addr, "");
    // A first start makes the store file; the limit then sits at its size, so the next
    // pages it writes past that cross it.
    drop(Spawned::start(dir.path(), &pki, &text).await);
    let size = std::fs::metadata(dir.path().join("data/portcullis.redb")).unwrap().len();
    let config = dir.path().join("gateway.toml");
    let mut gw = Spawned::wait(Binary::serve_limited(&config, size / 1024), &pki).await;
    let mut refused = None;
    for i in 0..40 {
        let token = gw.token().await;
        let (status, v) = gw.revoke(&token).await;
        if status != 200 {
            assert_eq!((status, v["error"].as_str()), (503, Some("temporarily_unavailable")), "{v}");
            refused = Some(i);
            break;
        }
    }
    assert!(refused.is_some(), "the store never reached the limit");
    assert!(gw.bin.exited().is_none(), "the process died; stderr:\n{}", gw.bin.raw());
    assert_eq!(gw.admin("/healthz").await.0, 200);
    gw.bin.wait_for("store I/O failed; grants and revocation answer 503 until the store file is reopened (retrying with backoff)").await;
}

/// Finding 4: a file-size limit at the store file's own size — the file cannot grow, yet
/// has free pages inside. A reopen, and a health probe's small write, fit in those pages,
/// so the store used to report itself up between failing requests (flapping, and an alert
/// on `store_up == 0 for 1m` never fired). Now nothing reopens until a scratch file next
/// to the store takes a real write: down on every probe, until the limit is lifted.
#[tokio::test]
async fn a_disk_that_takes_no_new_blocks_keeps_the_store_down_without_flapping() {
    let up = EchoUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(dir.path());
    let gw = Spawned::start(dir.path(), &pki, &config_toml(dir.path(), &pki, up.addr, "")).await;
    let store = dir.path().join("data/portcullis.redb");
    // Some history, so the file holds freed pages.
    for _ in 0..10 {
        let token = gw.token().await;
        assert_eq!(gw.revoke(&token).await.0, 200);
    }
    gw.bin.limit_file_size(std::fs::metadata(&store).unwrap().len());
    let mut failed = false;
    // Bounded by time, not attempts: the token and revocation endpoints rate-limit (429).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while tokio::time::Instant::now() < deadline {
        let resp = gw
            .client
            .post(gw.url("/oauth/token"))
            .basic_auth("svc", Some(SVC_SECRET))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .unwrap();
        if resp.status() == 429 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        }
        let token = resp.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_string();
        match gw.revoke(&token).await.0 {
            200 => {}
            429 => tokio::time::sleep(Duration::from_millis(500)).await,
            status => {
                assert_eq!(status, 503);
                failed = true;
                break;
            }
        }
    }
    assert!(failed, "the store never needed to grow; stderr:\n{}", gw.bin.raw());
    for _ in 0..15 {
        let (_, text) = gw.admin("/metrics").await;
        assert_eq!(metric(&text, "portcullis_store_up{store=\"embedded\"}"), Some(0.0), "{text}");
        assert_eq!(metric(&text, "portcullis_store_reopens_total{store=\"embedded\"}"), Some(0.0), "{text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    gw.bin.limit_file_size(libc::RLIM_INFINITY);
    let healed = within(Duration::from_secs(30), async || {
        gw.admin("/metrics").await.1.contains("portcullis_store_up{store=\"embedded\"} 1")
    })
    .await;
    assert!(healed.is_some(), "the store did not heal; stderr:\n{}", gw.bin.raw());
    let (_, text) = gw.admin("/metrics").await;
    assert_eq!(metric(&text, "portcullis_store_up{store=\"embedded\"}"), Some(1.0), "{text}");
}

/// Hardening: a token in a path parameter (`;access_token=`) is refused by the path check,
/// and the access line of that refusal names the path with the token's value redacted.
#[tokio::test]
async fn a_token_in_a_path_parameter_never_reaches_the_access_log() {
    let up = EchoUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(dir.path());
    let text = config_toml(dir.path(), &pki, up.addr, "");
    let gw = Spawned::start(dir.path(), &pki, &text).await;
    let token = gw.token().await;
    // Review: superscript and doubled `=` (NFKC reads `=` in each), escaped as a client sends them.
    for path in [
        format!("/api/x;access_token={token}"),
        format!("/api/y;Access%5Ftoken={token};z=1"),
        format!("/api/s;access_token%E2%81%BC{token}"),
        format!("/api/d;access_token%E2%A9%B5{token};z=1"),
    ] {
        let resp = gw.client.get(gw.url(&path)).send().await.unwrap();
        assert!(resp.status().is_client_error(), "{path}: {}", resp.status());
    }
    let logged = |p: &'static str| {
        let bin = &gw.bin;
        async move { bin.wait_line(p, |v| v["target"] == "portcullis::access" && v["fields"]["path"] == p).await }
    };
    logged("/api/x;access_token=[redacted]").await;
    logged("/api/y;Access%5Ftoken=[redacted];z=1").await;
    logged("/api/s;[redacted]").await;
    logged("/api/d;[redacted];z=1").await;
    assert!(!gw.bin.raw().contains(&token), "the token is never logged:\n{}", gw.bin.raw());
    // The signature alone neither.
    let signature = token.rsplit('.').next().unwrap();
    assert!(!gw.bin.raw().contains(signature));
}
