//! Hot reload through the file watcher: configuration, signing keys and TLS certificates,
//! bad configurations refused while the old one keeps serving, and reload under load.

mod common;

use common::*;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// Edit the config file on disk only; the gateway must notice by itself.
fn edit_config(gw: &TestGateway, edit: impl FnOnce(String) -> String) {
    let text = std::fs::read_to_string(&gw.config_path).unwrap();
    let new = edit(text.clone());
    assert_ne!(new, text, "the edit changed nothing");
    write_atomic(&gw.config_path, &new);
}

/// `portcullis gen-key --out <dir>/<name>`: a reload never generates a key.
fn new_key_file(gw: &TestGateway, name: &str) {
    let pem = portcullis::tokens::keys::generate_ed25519_pem().unwrap();
    portcullis::tokens::keys::write_private(&gw.dir.path().join(name), pem.as_bytes()).unwrap();
}

fn signer_kid(gw: &TestGateway) -> String {
    gw.gateway.runtime().keys.signer().kid.clone()
}

// ---------------------------------------------------------------------------------------
// Discovery metadata follows reloads

#[tokio::test]
async fn metadata_document_matches_the_config_in_force_and_follows_reloads() {
    let (_up, gw) = setup().await;
    let resp = gw.client().get(gw.url("/.well-known/oauth-authorization-server")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("application/json"));
    assert!(resp.headers()["cache-control"].to_str().unwrap().contains("max-age="));
    let d: Value = resp.json().await.unwrap();
    assert_eq!(d["issuer"], ISSUER);
    assert_eq!(d["token_endpoint"], format!("{ISSUER}/oauth/token"));
    assert_eq!(d["jwks_uri"], format!("{ISSUER}/.well-known/jwks.json"));
    // Every enabled client of the test config contributes; "off" is disabled and does not.
    assert_eq!(
        d["grant_types_supported"],
        json!(["authorization_code", "client_credentials", "implicit", "password", "refresh_token"])
    );
    assert_eq!(d["response_types_supported"], json!(["code", "token"]));
    assert_eq!(d["authorization_endpoint"], format!("{ISSUER}/oauth/authorize"));
    assert_eq!(
        d["token_endpoint_auth_methods_supported"],
        json!(["client_secret_basic", "client_secret_post", "none"])
    );
    assert_eq!(d["code_challenge_methods_supported"], json!(["S256"]));
    assert_eq!(d["scopes_supported"], json!(["admin", "profile", "read", "write"]));

    // Disable every client but `linked` (client_credentials, read).
    edit_config(&gw, |t| {
        ["svc", "nogrant", "webapp", "spa", "first", "pwonly", "ccr"]
            .iter()
            .fold(t, |t, id| t.replacen(&format!("id = \"{id}\"\n"), &format!("id = \"{id}\"\nenabled = false\n"), 1))
    });
    let client = gw.client();
    let url = gw.url("/.well-known/oauth-authorization-server");
    wait_until("metadata to follow the reload", || {
        let (client, url) = (client.clone(), url.clone());
        async move { get_json(&client, &url).await["response_types_supported"] == json!([]) }
    })
    .await;
    let d = get_json(&client, &url).await;
    assert_eq!(d["grant_types_supported"], json!(["client_credentials"]));
    assert_eq!(d["scopes_supported"], json!(["read"]));
    assert!(d.get("authorization_endpoint").is_none());
}

// ---------------------------------------------------------------------------------------
// Key rotation and reload through the file watcher

#[tokio::test]
async fn key_rotation_keeps_listed_keys_valid_and_removal_rejects_cached_tokens() {
    let (_up, gw) = setup().await;
    let dir = gw.dir.path().display().to_string();
    let old = gw.token("svc", SVC_SECRET, None).await;
    assert_eq!(jwt_part(&old, 0)["kid"], "k1");
    assert_eq!(api_status(&gw, &old).await, 200);
    let hits = cache_hits(&gw).await;
    assert_eq!(api_status(&gw, &old).await, 200, "now answered from the cache");
    assert_eq!(cache_hits(&gw).await, hits + 1.0, "the second use was a cache hit");

    // Step 1: a new key first in the list signs; the old one stays listed and verifies.
    // A reload generates no key: the file is made first, as the runbook says.
    new_key_file(&gw, "k2.pem");
    edit_config(&gw, |t| {
        t.replacen("[[key]]\n", &format!("[[key]]\nid = \"k2\"\nfile = \"{dir}/k2.pem\"\n\n[[key]]\n"), 1)
    });
    wait_until("k2 to sign", || async { signer_kid(&gw) == "k2" }).await;
    let new = gw.token("svc", SVC_SECRET, None).await;
    assert_eq!(jwt_part(&new, 0)["kid"], "k2");
    assert_eq!(api_status(&gw, &new).await, 200);
    assert_eq!(api_status(&gw, &old).await, 200, "a token signed by a still-listed key stays valid");
    let jwks = get_json(&gw.client(), &gw.url("/.well-known/jwks.json")).await;
    let kids: Vec<&str> = jwks["keys"].as_array().unwrap().iter().map(|k| k["kid"].as_str().unwrap()).collect();
    assert_eq!(kids, ["k2", "k1"]);

    // Step 2: k1 retired to verify-only (explicitly), still valid.
    let before = reloads(&gw).0;
    edit_config(&gw, |t| t.replacen("id = \"k1\"\n", "id = \"k1\"\nactive = false\n", 1));
    wait_until("k1 to be verify-only", || async {
        reloads(&gw).0 > before && gw.gateway.runtime().keys.get("k1").is_some() && signer_kid(&gw) == "k2"
    })
    .await;
    let hits = cache_hits(&gw).await;
    assert_eq!(api_status(&gw, &old).await, 200);
    assert_eq!(cache_hits(&gw).await, hits + 1.0, "the old token's verdict is cached");

    // Step 3: k1 removed: its token fails at once although its verdict is cached.
    edit_config(&gw, |t| {
        let start = t.find("[[key]]\nid = \"k1\"").unwrap();
        let end = start + t[start..].find("pem\"\n").unwrap() + 5;
        format!("{}{}", &t[..start], &t[end..])
    });
    wait_until("k1 to be gone", || async { gw.gateway.runtime().keys.get("k1").is_none() }).await;
    let resp = gw.client().get(gw.url("/api/x")).bearer_auth(&old).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert!(resp.headers()["www-authenticate"].to_str().unwrap().contains("error=\"invalid_token\""));
    assert_eq!(api_status(&gw, &new).await, 200, "tokens of the remaining key still pass");
    let jwks = get_json(&gw.client(), &gw.url("/.well-known/jwks.json")).await;
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 1);
}

/// Issue 18 point 2: a key-path typo applied by reload used to generate a new key under the
/// same kid and turn every outstanding token 401. A reload never generates a key nor
/// replaces the key of a kid in force; it is refused, counted as failed, and says why.
#[tokio::test]
async fn a_reload_never_replaces_the_key_of_a_kid_in_force() {
    let (_up, gw) = setup().await;
    let old = gw.token("svc", SVC_SECRET, None).await;
    assert_eq!(api_status(&gw, &old).await, 200);
    let slot = arc_swap::ArcSwapOption::<portcullis::tls::Acceptor>::empty();
    // A typo in the path: nothing is generated.
    let (_, failed) = reloads(&gw);
    edit_config(&gw, |t| t.replacen("/k1.pem\"", "/k1-next.pem\"", 1));
    wait_until("the typo to be refused", || async { reloads(&gw).1 > failed }).await;
    assert!(!gw.dir.path().join("k1-next.pem").exists(), "a reload generated a key");
    let err = portcullis::config::reload::reload(&gw.gateway, &slot, &gw.config_path).unwrap_err().to_string();
    assert!(err.contains("key k1:") && err.contains("a reload never generates a key"), "{err}");
    // Another key under the same kid: refused too.
    new_key_file(&gw, "k1-next.pem");
    let (_, failed) = reloads(&gw);
    portcullis::config::reload::reload(&gw.gateway, &slot, &gw.config_path).unwrap_err();
    edit_config(&gw, |t| format!("{t}\n"));
    wait_until("the other key to be refused", || async { reloads(&gw).1 > failed }).await;
    let err = portcullis::config::reload::reload(&gw.gateway, &slot, &gw.config_path).unwrap_err().to_string();
    assert!(err.contains("holds another key than the one in force"), "{err}");
    assert!(slot.load().is_none(), "nothing swapped");
    // Every outstanding token still passes, and k1 still signs with its old key.
    assert_eq!(api_status(&gw, &old).await, 200);
    let new = gw.token("svc", SVC_SECRET, None).await;
    assert_eq!(jwt_part(&new, 0)["kid"], "k1");
    assert_eq!(api_status(&gw, &new).await, 200);
    // The same key at another path (moved, or re-encoded) is no change of key: taken.
    std::fs::copy(gw.dir.path().join("k1.pem"), gw.dir.path().join("k1-next.pem")).unwrap();
    let (ok, _) = reloads(&gw);
    edit_config(&gw, |t| format!("{t}\n"));
    wait_until("the moved key to be taken", || async { reloads(&gw).0 > ok }).await;
    assert_eq!(api_status(&gw, &old).await, 200);
}

/// Issue 18 attack, finding 6: a kid could get new material through two reloads — the
/// first removes k1, the second brings k1 back with another key. A token signed by the
/// old k1 is still out there; the process remembers every kid's material since start and
/// refuses the second reload like a replacement in force. The same material back is fine.
#[tokio::test]
async fn a_kid_removed_by_a_reload_never_comes_back_with_other_material() {
    let (_up, gw) = setup().await;
    let dir = gw.dir.path().display().to_string();
    let old = gw.token("svc", SVC_SECRET, None).await;
    assert_eq!(jwt_part(&old, 0)["kid"], "k1");
    // Reload 1: k2 in place of k1.
    new_key_file(&gw, "k2.pem");
    edit_config(&gw, |t| t.replacen("id = \"k1\"", "id = \"k2\"", 1).replacen("/k1.pem\"", "/k2.pem\"", 1));
    wait_until("k2 alone", || async { gw.gateway.runtime().keys.get("k1").is_none() && signer_kid(&gw) == "k2" }).await;
    assert_eq!(api_status(&gw, &old).await, 401);
    // Reload 2: k1 back under other material.
    new_key_file(&gw, "k1-other.pem");
    let (_, failed) = reloads(&gw);
    edit_config(&gw, |t| {
        t.replacen(
            "[[key]]\n",
            &format!("[[key]]\nid = \"k1\"\nfile = \"{dir}/k1-other.pem\"\nactive = false\n\n[[key]]\n"),
            1,
        )
    });
    wait_until("the new k1 to be refused", || async { reloads(&gw).1 > failed }).await;
    let slot = arc_swap::ArcSwapOption::<portcullis::tls::Acceptor>::empty();
    let err = portcullis::config::reload::reload(&gw.gateway, &slot, &gw.config_path).unwrap_err().to_string();
    assert!(err.contains("key k1:") && err.contains("holds another key than the one in force"), "{err}");
    assert!(gw.gateway.runtime().keys.get("k1").is_none(), "k1 took new material");
    let forged = gw.token("svc", SVC_SECRET, None).await;
    assert_eq!(jwt_part(&forged, 0)["kid"], "k2");
    // The original k1 back: the same material, taken, and its token passes again.
    edit_config(&gw, |t| t.replacen("/k1-other.pem\"", "/k1.pem\"", 1));
    wait_until("k1 back", || async { gw.gateway.runtime().keys.get("k1").is_some() }).await;
    assert_eq!(api_status(&gw, &old).await, 200);
}

#[tokio::test]
async fn bad_configs_are_refused_with_file_and_line_and_the_old_one_keeps_serving() {
    let (_up, gw) = setup().await;
    let token = gw.token("svc", SVC_SECRET, None).await;
    let good = std::fs::read_to_string(&gw.config_path).unwrap();
    let line_of = |text: &str, needle: &str| text[..text.find(needle).unwrap()].lines().count() + 1;
    let missing_key = format!("{}/missing-rsa.pem", gw.dir.path().display());
    let cases: Vec<(&str, String, &str, &str)> = vec![
        ("bad duration", good.replacen("upstream_timeout = \"2s\"", "upstream_timeout = \"soon\"", 1), "upstream_timeout", "bad duration"),
        (
            "unloadable key",
            good.replacen(
                "[[key]]\n",
                &format!("[[key]]\nid = \"rs\"\nalgorithm = \"RS256\"\nfile = \"{missing_key}\"\ngenerate = false\nactive = false\n\n[[key]]\n"),
                1,
            ),
            "id = \"rs\"",
            "does not exist",
        ),
        ("listener moved", good.replacen("address = \"127.0.0.1:0\"\ntls = false", "address = \"127.0.0.1:1\"\ntls = false", 1), "address = \"127.0.0.1:1\"\ntls", "restart"),
        ("admin moved", good.replacen("[admin]\naddress = \"127.0.0.1:0\"", "[admin]\naddress = \"127.0.0.1:1\"", 1), "address = \"127.0.0.1:1\"\n\n[[key]]", "restart"),
    ];
    for (name, text, needle, reason) in cases {
        assert_ne!(text, good, "{name}: edit did nothing");
        let (_, failed) = reloads(&gw);
        write_atomic(&gw.config_path, &text);
        wait_until(name, || async { reloads(&gw).1 > failed }).await;

        // The refusal names the file and the line (checked on the reload function itself;
        // the binary test checks the log line).
        let slot = arc_swap::ArcSwapOption::<portcullis::tls::Acceptor>::empty();
        let err = portcullis::config::reload::reload(&gw.gateway, &slot, &gw.config_path).unwrap_err().to_string();
        let want = format!("{}:{}:", gw.config_path.display(), line_of(&text, needle));
        assert!(err.starts_with(&want), "{name}: {err:?} should start with {want:?}");
        assert!(err.contains(reason), "{name}: {err:?} should say {reason:?}");
        assert!(slot.load().is_none(), "{name}: nothing swapped");

        // The old configuration keeps serving: proxy and token endpoint.
        assert_eq!(api_status(&gw, &token).await, 200, "{name}");
        gw.token("svc", SVC_SECRET, None).await;
        assert_eq!(signer_kid(&gw), "k1");
    }
    // A good config after bad ones is taken.
    let (ok, _) = reloads(&gw);
    write_atomic(&gw.config_path, &good.replacen("id = \"svc\"\n", "id = \"svc\"\ntoken_lifetime = \"2h\"\n", 1));
    wait_until("the good config", || async { reloads(&gw).0 > ok }).await;
    let resp = gw
        .client()
        .post(gw.url("/oauth/token"))
        .basic_auth("svc", Some(SVC_SECRET))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.json::<Value>().await.unwrap()["expires_in"], 7200);
}

/// The leaf certificate a new TLS connection is served.
async fn served_certificate(gw: &TestGateway) -> Vec<u8> {
    let tls = tls_connect(gw).await;
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

fn pem_cert_der(pem: &str) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap().to_vec()
}

/// Replace the certificate and key files with a new pair from the same CA.
fn renew_certificate(gw: &TestGateway) -> Vec<u8> {
    let (cert, key) = gw.pki.leaf();
    write_atomic(&gw.pki.key_path, &key);
    write_atomic(&gw.pki.cert_path, &cert);
    pem_cert_der(&cert)
}

#[tokio::test]
async fn tls_certificate_files_are_reloaded_for_new_connections() {
    let (_up, gw) = setup().await;
    let first = pem_cert_der(&std::fs::read_to_string(&gw.pki.cert_path).unwrap());
    assert_eq!(served_certificate(&gw).await, first);
    // A connection opened before the change keeps working after it.
    let kept = gw.client();
    let token = gw.token("svc", SVC_SECRET, None).await;
    assert_eq!(kept.get(gw.url("/api/a")).bearer_auth(&token).send().await.unwrap().status(), 200);

    let next = renew_certificate(&gw);
    assert_ne!(next, first);
    wait_until("new connections to get the new certificate", || async { served_certificate(&gw).await == next }).await;
    assert_eq!(kept.get(gw.url("/api/b")).bearer_auth(&token).send().await.unwrap().status(), 200);
    assert_eq!(gw.client().get(gw.url("/api/c")).bearer_auth(&token).send().await.unwrap().status(), 200);
}

// ---------------------------------------------------------------------------------------
// Reload under load

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failures: std::sync::Mutex<Vec<String>>,
}

impl Tally {
    fn record(&self, what: &str, result: Result<u16, reqwest::Error>) {
        match result {
            Ok(200) => {
                self.ok.fetch_add(1, Ordering::Relaxed);
            }
            Ok(status) => self.failures.lock().unwrap().push(format!("{what}: status {status}")),
            Err(e) => self.failures.lock().unwrap().push(format!("{what}: {e:?}")),
        }
    }
}

/// One client's loop: proxied requests on a kept-alive connection, a token request now
/// and then (whose token it then uses), and a fresh connection (a new TLS handshake)
/// now and then.
async fn load_worker(
    id: usize,
    gw_url: impl Fn(&str) -> String,
    ca_pem: String,
    mut token: String,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) {
    let client = https_client(&ca_pem, false);
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        if n.is_multiple_of(10) {
            let resp = client
                .post(gw_url("/oauth/token"))
                .basic_auth("svc", Some(SVC_SECRET))
                .form(&[("grant_type", "client_credentials")])
                .send()
                .await;
            match resp {
                Ok(r) if r.status() == 200 => match r.json::<Value>().await {
                    Ok(v) => {
                        token = v["access_token"].as_str().unwrap_or_default().to_string();
                        tally.record("token", Ok(200));
                    }
                    Err(e) => tally.record("token body", Err(e)),
                },
                other => tally.record("token", other.map(|r| r.status().as_u16())),
            }
        } else if n.is_multiple_of(7) {
            let fresh = https_client(&ca_pem, false);
            let r = fresh.get(gw_url(&format!("/api/fresh/{id}/{n}"))).bearer_auth(&token).send().await;
            tally.record("fresh connection", r.map(|r| r.status().as_u16()));
        } else {
            let r = client.get(gw_url(&format!("/api/load/{id}/{n}"))).bearer_auth(&token).send().await;
            let r = match r {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    // Read the whole body: a response cut short is a failure too.
                    resp.bytes().await.map(|_| status)
                }
                Err(e) => Err(e),
            };
            tally.record("proxy", r);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_drops_and_fails_no_request() {
    // All the load comes from one address: lift its token endpoint rate limit, so that only
    // a reload could fail a request.
    let up = EchoUpstream::start().await;
    let gw = TestGateway::start_with(up.addr, "[rate_limit]\nip_burst = 100000\nip_rate = 100000\n").await;
    let token = gw.token("svc", SVC_SECRET, None).await;
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let mut workers = Vec::new();
    for id in 0..4 {
        let port = gw.https.port();
        let url = move |p: &str| format!("https://localhost:{port}{p}");
        workers.push(tokio::spawn(load_worker(
            id,
            url,
            gw.pki.ca_pem.clone(),
            token.clone(),
            stop.clone(),
            tally.clone(),
        )));
    }
    let dir = gw.dir.path().display().to_string();
    // Let some requests run against each configuration.
    let settle = || async {
        let base = tally.ok.load(Ordering::Relaxed);
        wait_until("requests to flow", || async { tally.ok.load(Ordering::Relaxed) >= base + 20 }).await;
    };
    settle().await;

    // 1. Rotation: a new signing key first, the old one kept.
    new_key_file(&gw, "k2.pem");
    edit_config(&gw, |t| {
        t.replacen("[[key]]\n", &format!("[[key]]\nid = \"k2\"\nfile = \"{dir}/k2.pem\"\n\n[[key]]\n"), 1)
    });
    wait_until("k2 to sign", || async { signer_kid(&gw) == "k2" }).await;
    settle().await;
    // 2. A client setting.
    edit_config(&gw, |t| t.replacen("id = \"svc\"\n", "id = \"svc\"\ntoken_lifetime = \"2h\"\n", 1));
    wait_until("the new lifetime", || async {
        gw.gateway.runtime().config.clients.get("svc").is_some_and(|c| c.token_lifetime == Duration::from_secs(7200))
    })
    .await;
    settle().await;
    // 3. A new TLS certificate.
    let next = renew_certificate(&gw);
    wait_until("the new certificate", || async { served_certificate(&gw).await == next }).await;
    settle().await;
    // 4. A new route.
    edit_config(&gw, |t| format!("{t}\n[[route]]\nprefix = \"/extra\"\nupstream = \"http://127.0.0.1:9\"\n"));
    wait_until("the new route", || async { gw.gateway.runtime().config.routes.iter().any(|r| r.prefix == "/extra") })
        .await;
    settle().await;
    // 5. The old key retired to verify-only.
    let before = reloads(&gw).0;
    edit_config(&gw, |t| t.replacen("id = \"k1\"\n", "id = \"k1\"\nactive = false\n", 1));
    wait_until("k1 verify-only", || async {
        reloads(&gw).0 > before && gw.gateway.runtime().keys.get("k1").is_some() && signer_kid(&gw) == "k2"
    })
    .await;
    settle().await;

    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let failures = tally.failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} failed requests, first ones: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    let (ok_reloads, failed_reloads) = reloads(&gw);
    assert!(ok_reloads >= 5, "reloads ok={ok_reloads} failed={failed_reloads}");
    let total = tally.ok.load(Ordering::Relaxed);
    assert!(total > 100, "only {total} requests ran");
    eprintln!("reload under load: {total} requests, none failed, {ok_reloads} reloads ({failed_reloads} refused)");
}

// ---------------------------------------------------------------------------------------
// Issue 18 point 2, certificates: a reload generates no dev certificate either

#[tokio::test]
async fn a_reload_never_generates_a_dev_certificate_for_missing_tls_files() {
    let (_up, gw) = setup().await;
    let served = served_certificate(&gw).await;
    let d = gw.dir.path().display().to_string();
    let (_, failed) = reloads(&gw);
    edit_config(&gw, |t| {
        t.replacen(&gw.pki.cert_path.display().to_string(), &format!("{d}/typo.crt.pem"), 1)
            .replacen(&gw.pki.key_path.display().to_string(), &format!("{d}/typo.key.pem"), 1)
            .replacen("[tls]\n", "[tls]\ndev_certificate = true\n", 1)
    });
    wait_until("the missing TLS files to be refused", || async { reloads(&gw).1 > failed }).await;
    assert!(!gw.dir.path().join("typo.crt.pem").exists(), "a reload generated a certificate");
    assert!(!gw.dir.path().join("typo.key.pem").exists(), "a reload generated a key");
    let slot = arc_swap::ArcSwapOption::<portcullis::tls::Acceptor>::empty();
    let err = portcullis::config::reload::reload(&gw.gateway, &slot, &gw.config_path).unwrap_err().to_string();
    assert!(err.contains("a reload never generates a certificate"), "{err}");
    assert_eq!(served_certificate(&gw).await, served, "the certificate in force keeps serving");
}
