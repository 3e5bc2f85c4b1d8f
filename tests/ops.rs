//! Operating the gateway, end to end over real sockets: discovery metadata and JWKS,
//! key rotation, hot reload through the file watcher (config, keys, TLS), reload under
//! load, the admin listener and its metrics, and (against the real binary) SIGHUP and
//! the JSON access log.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine;
use common::*;
use serde_json::{Value, json};

/// Upper bound for anything that waits on a file-watch event or a process.
const WAIT: Duration = Duration::from_secs(10);

async fn setup() -> (EchoUpstream, TestGateway) {
    let up = EchoUpstream::start().await;
    let gw = TestGateway::start(up.addr).await;
    (up, gw)
}

/// Poll `cond` until it holds; panic after [`WAIT`].
async fn wait_until<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if cond().await {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Replace a file the way careful tools do: write beside it, then rename over it.
fn write_atomic(path: &Path, contents: &str) {
    let tmp = path.with_extension(format!("tmp{}", rand_suffix()));
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn rand_suffix() -> u64 {
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Edit the config file on disk only; the gateway must notice by itself.
fn edit_config(gw: &TestGateway, edit: impl FnOnce(String) -> String) {
    let text = std::fs::read_to_string(&gw.config_path).unwrap();
    let new = edit(text.clone());
    assert_ne!(new, text, "the edit changed nothing");
    write_atomic(&gw.config_path, &new);
}

fn reloads(gw: &TestGateway) -> (u64, u64) {
    gw.gateway.metrics.reloads()
}

fn signer_kid(gw: &TestGateway) -> String {
    gw.gateway.runtime().keys.signer().kid.clone()
}

fn jwt_part(token: &str, i: usize) -> Value {
    let part = token.split('.').nth(i).unwrap();
    serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

async fn get_api(gw: &TestGateway, token: &str) -> u16 {
    gw.client().get(gw.url("/api/x")).bearer_auth(token).send().await.unwrap().status().as_u16()
}

async fn get_json(client: &reqwest::Client, url: &str) -> Value {
    let resp = client.get(url).send().await.unwrap();
    assert_eq!(resp.status(), 200, "{url}");
    resp.json().await.unwrap()
}

// ---------------------------------------------------------------------------------------
// Discovery

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

#[tokio::test]
async fn endpoint_paths_are_configurable() {
    let up = EchoUpstream::start().await;
    let gw = TestGateway::start_with(
        up.addr,
        "[endpoints]\ntoken = \"/auth/token\"\nmetadata = \"/auth/meta\"\njwks = \"/auth/keys\"\n",
    )
    .await;
    let client = gw.client();
    let d = get_json(&client, &gw.url("/auth/meta")).await;
    assert_eq!(d["token_endpoint"], format!("{ISSUER}/auth/token"));
    assert_eq!(d["jwks_uri"], format!("{ISSUER}/auth/keys"));
    let jwks = get_json(&client, &gw.url("/auth/keys")).await;
    assert_eq!(jwks["keys"][0]["kid"], "k1");
    // The default paths are now ordinary (unrouted) proxy paths.
    let resp = client.get(gw.url("/.well-known/jwks.json")).send().await.unwrap();
    assert_eq!(resp.status(), 404);
}

#[tokio::test]
async fn discovery_endpoints_are_read_only() {
    let (_up, gw) = setup().await;
    for path in ["/.well-known/oauth-authorization-server", "/.well-known/jwks.json"] {
        let resp = gw.client().post(gw.url(path)).body("x").send().await.unwrap();
        assert_eq!(resp.status(), 405, "{path}");
        assert_eq!(resp.headers()["allow"], "GET, HEAD");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["error"], "invalid_request");
        let resp = gw.client().head(gw.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), 200, "HEAD {path}");
    }
}

/// An RS256 private key (PKCS#8 PEM); the gateway does not generate RSA keys.
fn rsa_pem() -> String {
    rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap().serialize_pem()
}

/// Sign a JWT with a PEM private key file, as the named key would.
fn sign_with(alg: jsonwebtoken::Algorithm, kid: &str, pem_file: &Path) -> String {
    use jsonwebtoken::{EncodingKey, Header};
    let pem = std::fs::read(pem_file).unwrap();
    let key = match alg {
        jsonwebtoken::Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem).unwrap(),
        jsonwebtoken::Algorithm::ES256 => EncodingKey::from_ec_pem(&pem).unwrap(),
        _ => EncodingKey::from_rsa_pem(&pem).unwrap(),
    };
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_string());
    jsonwebtoken::encode(&header, &json!({"sub": "x", "exp": 4_000_000_000u64}), &key).unwrap()
}

/// Verify `token` with the JWK of `kid` from a JWK Set, as a resource server would.
fn verify_with_jwks(jwks: &Value, kid: &str, token: &str) -> Value {
    let jwk_json = jwks["keys"].as_array().unwrap().iter().find(|k| k["kid"] == kid).unwrap();
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(jwk_json.clone()).unwrap();
    let key = jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap();
    let alg: jsonwebtoken::Algorithm = jwk_json["alg"].as_str().unwrap().parse().unwrap();
    let mut v = jsonwebtoken::Validation::new(alg);
    v.validate_aud = false;
    v.set_required_spec_claims(&["exp"]);
    jsonwebtoken::decode::<Value>(token, &key, &v).unwrap_or_else(|e| panic!("{kid}: {e}")).claims
}

#[tokio::test]
async fn jwks_publishes_every_listed_public_key_and_never_hs256() {
    let up = EchoUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(dir.path());
    std::fs::write(dir.path().join("rs1.pem"), rsa_pem()).unwrap();
    let d = dir.path().display();
    // Verify-only keys listed before k1; k1 (the only active one) signs.
    let extra = format!(
        "[[key]]\nid = \"es1\"\nalgorithm = \"ES256\"\nfile = \"{d}/es1.pem\"\nactive = false\n\
         [[key]]\nid = \"rs1\"\nalgorithm = \"RS256\"\nfile = \"{d}/rs1.pem\"\nactive = false\ngenerate = false\n\
         [[key]]\nid = \"hs1\"\nalgorithm = \"HS256\"\nfile = \"{d}/hs1.key\"\nactive = false\n"
    );
    let text = config_toml(dir.path(), &pki, up.addr, &extra);
    let gw = TestGateway::start_text(dir, pki, &text).await;

    let jwks = get_json(&gw.client(), &gw.url("/.well-known/jwks.json")).await;
    let keys = jwks["keys"].as_array().unwrap();
    let kids: Vec<&str> = keys.iter().map(|k| k["kid"].as_str().unwrap()).collect();
    assert_eq!(kids, ["es1", "rs1", "k1"], "HS256 is never published");
    for k in keys {
        assert_eq!(k["use"], "sig");
        assert!(k.get("d").is_none() && k.get("k").is_none(), "no private or secret material: {k}");
    }
    assert_eq!(keys[0]["kty"], "EC");
    assert_eq!(keys[0]["crv"], "P-256");
    assert_eq!(keys[0]["alg"], "ES256");
    assert!(keys[0]["x"].is_string() && keys[0]["y"].is_string());
    assert_eq!(keys[1]["kty"], "RSA");
    assert_eq!(keys[1]["alg"], "RS256");
    assert_eq!(keys[1]["e"], "AQAB");
    assert_eq!(keys[2]["kty"], "OKP");
    assert_eq!(keys[2]["crv"], "Ed25519");
    assert_eq!(keys[2]["alg"], "EdDSA");

    // The published keys verify what the private halves signed.
    let gw_token = gw.token("svc", SVC_SECRET, None).await;
    assert_eq!(verify_with_jwks(&jwks, "k1", &gw_token)["client_id"], "svc");
    let dir = gw.dir.path();
    for (alg, kid, file) in
        [(jsonwebtoken::Algorithm::ES256, "es1", "es1.pem"), (jsonwebtoken::Algorithm::RS256, "rs1", "rs1.pem")]
    {
        let t = sign_with(alg, kid, &dir.join(file));
        assert_eq!(verify_with_jwks(&jwks, kid, &t)["sub"], "x");
    }
}

// ---------------------------------------------------------------------------------------
// Key rotation and reload through the file watcher

#[tokio::test]
async fn key_rotation_keeps_listed_keys_valid_and_removal_rejects_cached_tokens() {
    let (_up, gw) = setup().await;
    let dir = gw.dir.path().display().to_string();
    let old = gw.token("svc", SVC_SECRET, None).await;
    assert_eq!(jwt_part(&old, 0)["kid"], "k1");
    assert_eq!(get_api(&gw, &old).await, 200);
    assert_eq!(get_api(&gw, &old).await, 200, "now answered from the cache");

    // Step 1: a new key first in the list signs; the old one stays listed and verifies.
    edit_config(&gw, |t| {
        t.replacen("[[key]]\n", &format!("[[key]]\nid = \"k2\"\nfile = \"{dir}/k2.pem\"\n\n[[key]]\n"), 1)
    });
    wait_until("k2 to sign", || async { signer_kid(&gw) == "k2" }).await;
    let new = gw.token("svc", SVC_SECRET, None).await;
    assert_eq!(jwt_part(&new, 0)["kid"], "k2");
    assert_eq!(get_api(&gw, &new).await, 200);
    assert_eq!(get_api(&gw, &old).await, 200, "a token signed by a still-listed key stays valid");
    let jwks = get_json(&gw.client(), &gw.url("/.well-known/jwks.json")).await;
    let kids: Vec<&str> = jwks["keys"].as_array().unwrap().iter().map(|k| k["kid"].as_str().unwrap()).collect();
    assert_eq!(kids, ["k2", "k1"]);

    // Step 2: k1 retired to verify-only (explicitly), still valid.
    edit_config(&gw, |t| t.replacen("id = \"k1\"\n", "id = \"k1\"\nactive = false\n", 1));
    wait_until("k1 to be verify-only", || async { gw.gateway.runtime().keys.get("k1").is_some_and(|k| !k.active) })
        .await;
    assert_eq!(get_api(&gw, &old).await, 200);

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
    assert_eq!(get_api(&gw, &new).await, 200, "tokens of the remaining key still pass");
    let jwks = get_json(&gw.client(), &gw.url("/.well-known/jwks.json")).await;
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn a_replaced_key_file_under_the_same_kid_voids_cached_verdicts() {
    let (_up, gw) = setup().await;
    let old = gw.token("svc", SVC_SECRET, None).await;
    assert_eq!(get_api(&gw, &old).await, 200);
    // Same kid, new key material (a new file, generated on reload).
    edit_config(&gw, |t| t.replacen("/k1.pem\"", "/k1-next.pem\"", 1));
    wait_until("the new k1 file to be in force", || async { gw.dir.path().join("k1-next.pem").exists() }).await;
    wait_until("the old k1 token to be refused", || async { get_api(&gw, &old).await == 401 }).await;
    let new = gw.token("svc", SVC_SECRET, None).await;
    assert_eq!(jwt_part(&new, 0)["kid"], "k1");
    assert_eq!(get_api(&gw, &new).await, 200);
}

#[tokio::test]
async fn disabled_or_deleted_client_cached_token_is_rejected_right_after_file_reload() {
    let (_up, gw) = setup().await;
    let svc = gw.token("svc", SVC_SECRET, None).await;
    let linked = gw.token("linked", OTHER_SECRET, None).await;
    for t in [&svc, &linked] {
        assert_eq!(get_api(&gw, t).await, 200);
        assert_eq!(get_api(&gw, t).await, 200);
    }
    let hits_before = gw.gateway.validator.stats().await.hits;
    assert!(hits_before >= 2, "the second uses were cache hits");

    // Plain in-place write this time (truncate + write), as `echo >` or many editors do.
    let text = std::fs::read_to_string(&gw.config_path).unwrap();
    let start = text.find("[[client]]\nid = \"linked\"").unwrap();
    let end = start + text[start..].find("user = \"alice\"\n").unwrap() + "user = \"alice\"\n".len();
    let text =
        format!("{}{}", &text[..start], &text[end..]).replacen("id = \"svc\"\n", "id = \"svc\"\nenabled = false\n", 1);
    std::fs::write(&gw.config_path, text).unwrap();
    wait_until("svc disabled and linked deleted", || async {
        let rt = gw.gateway.runtime();
        rt.config.clients.get("svc").is_some_and(|c| !c.enabled) && !rt.config.clients.contains_key("linked")
    })
    .await;
    for t in [&svc, &linked] {
        let resp = gw.client().get(gw.url("/api/x")).bearer_auth(t).send().await.unwrap();
        assert_eq!(resp.status(), 401);
        assert!(resp.headers()["www-authenticate"].to_str().unwrap().contains("invalid_token"));
    }
    // Answered from the cache, yet refused: the cache answers to the config in force.
    assert!(gw.gateway.validator.stats().await.hits >= hits_before + 2);
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
        let slot = arc_swap::ArcSwapOption::<tokio_rustls::TlsAcceptor>::empty();
        let err = portcullis::config::reload::reload(&gw.gateway, &slot, &gw.config_path).unwrap_err().to_string();
        let want = format!("{}:{}:", gw.config_path.display(), line_of(&text, needle));
        assert!(err.starts_with(&want), "{name}: {err:?} should start with {want:?}");
        assert!(err.contains(reason), "{name}: {err:?} should say {reason:?}");
        assert!(slot.load().is_none(), "{name}: nothing swapped");

        // The old configuration keeps serving: proxy and token endpoint.
        assert_eq!(get_api(&gw, &token).await, 200, "{name}");
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
    edit_config(&gw, |t| t.replacen("id = \"k1\"\n", "id = \"k1\"\nactive = false\n", 1));
    wait_until("k1 verify-only", || async { gw.gateway.runtime().keys.get("k1").is_some_and(|k| !k.active) }).await;
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
// Admin listener and metrics

#[tokio::test]
async fn admin_listener_serves_health_readiness_and_nothing_else() {
    let (_up, gw) = setup().await;
    let c = reqwest::Client::new();
    let resp = c.get(gw.admin_url("/healthz")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "ok\n");
    assert_eq!(c.get(gw.admin_url("/readyz")).send().await.unwrap().status(), 200);
    assert_eq!(c.get(gw.admin_url("/nope")).send().await.unwrap().status(), 404);
    assert_eq!(c.get(gw.admin_url("/api/x")).send().await.unwrap().status(), 404, "no proxying on admin");
    let resp = c.post(gw.admin_url("/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), 405);
    // The admin endpoints are not on the gateway listeners.
    let resp = gw.client().get(gw.url("/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), 404);

    // Draining: not ready, still healthy.
    gw.gateway.set_serving(false);
    assert_eq!(c.get(gw.admin_url("/readyz")).send().await.unwrap().status(), 503);
    assert_eq!(c.get(gw.admin_url("/healthz")).send().await.unwrap().status(), 200);
    gw.gateway.set_serving(true);
}

/// Every line is a `# HELP`/`# TYPE` comment or `name{labels} value`, names are ours,
/// and every sample's family was declared with a TYPE.
fn check_exposition_format(text: &str) {
    let mut typed = std::collections::HashSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kind, name) = (parts.next().unwrap(), parts.next().unwrap());
            assert!(kind == "HELP" || kind == "TYPE", "{line}");
            assert!(name.starts_with("portcullis_"), "{line}");
            if kind == "TYPE" {
                assert!(["counter", "gauge", "histogram"].contains(&parts.next().unwrap()), "{line}");
                typed.insert(name.to_string());
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value: {line}"));
        value.parse::<f64>().unwrap_or_else(|_| panic!("bad value: {line}"));
        let name = series.split('{').next().unwrap();
        assert!(name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'), "{line}");
        let family =
            ["_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s)).filter(|f| typed.contains(*f));
        assert!(typed.contains(name) || family.is_some(), "undeclared family: {line}");
        if let Some(labels) = series.strip_prefix(name) {
            assert!(labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')), "{line}");
        }
    }
}

async fn scrape(gw: &TestGateway) -> prometheus_parse::Scrape {
    let resp = reqwest::Client::new().get(gw.admin_url("/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    let text = resp.text().await.unwrap();
    check_exposition_format(&text);
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap()
}

/// The value of a counter or gauge series; 0 when the series does not exist yet.
fn sample(s: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let found = s.samples.iter().find(|x| {
        x.metric == name && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)) && x.labels.len() == labels.len()
    });
    match found.map(|x| &x.value) {
        None => 0.0,
        Some(prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v)) => *v,
        Some(prometheus_parse::Value::Untyped(v)) => *v,
        Some(other) => panic!("{name}: unexpected {other:?}"),
    }
}

/// Observations in a histogram series (its +Inf bucket); 0 when absent.
fn histogram_count(s: &prometheus_parse::Scrape, name: &str, route: &str) -> f64 {
    s.samples
        .iter()
        .find(|x| x.metric == name && x.labels.get("route") == Some(route))
        .map(|x| match &x.value {
            prometheus_parse::Value::Histogram(buckets) => {
                buckets.iter().find(|b| b.less_than.is_infinite()).map(|b| b.count).unwrap_or(0.0)
            }
            other => panic!("{name}: unexpected {other:?}"),
        })
        .unwrap_or(0.0)
}

#[tokio::test]
async fn metrics_parse_and_the_counters_move_as_expected() {
    let (_up, gw) = setup().await;
    let before = scrape(&gw).await;
    let c = gw.client();

    let token = gw.token("svc", SVC_SECRET, None).await;
    let refused = c
        .post(gw.url("/oauth/token"))
        .basic_auth("svc", Some(SVC_SECRET))
        .form(&[("grant_type", "client_credentials"), ("scope", "root")])
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    let bad_grant = c.post(gw.url("/oauth/token")).form(&[("grant_type", "magic")]).send().await.unwrap();
    assert_eq!(bad_grant.status(), 400);
    assert_eq!(get_api(&gw, &token).await, 200); // miss
    assert_eq!(get_api(&gw, &token).await, 200); // hit
    assert_eq!(c.get(gw.url("/api/x")).send().await.unwrap().status(), 401);
    assert_eq!(c.get(gw.url("/admin/x")).bearer_auth(&token).send().await.unwrap().status(), 403);
    assert_eq!(c.get(gw.url("/nowhere")).send().await.unwrap().status(), 404);
    assert_eq!(c.get(gw.url("/.well-known/jwks.json")).send().await.unwrap().status(), 200);

    // One refused and one accepted reload.
    let good = std::fs::read_to_string(&gw.config_path).unwrap();
    write_atomic(&gw.config_path, &good.replacen("issuer = ", "issuer = 42 #", 1));
    wait_until("the refused reload", || async { reloads(&gw).1 >= 1 }).await;
    write_atomic(&gw.config_path, &good.replacen("id = \"svc\"\n", "id = \"svc\"\ntoken_lifetime = \"2h\"\n", 1));
    wait_until("the accepted reload", || async { reloads(&gw).0 >= 1 }).await;

    let after = scrape(&gw).await;
    let delta = |name: &str, labels: &[(&str, &str)]| sample(&after, name, labels) - sample(&before, name, labels);
    let req = "portcullis_requests_total";
    assert_eq!(delta(req, &[("route", "/api"), ("status", "200")]), 2.0);
    assert_eq!(delta(req, &[("route", "/api"), ("status", "401")]), 1.0);
    assert_eq!(delta(req, &[("route", "/admin"), ("status", "403")]), 1.0);
    assert_eq!(delta(req, &[("route", "unmatched"), ("status", "404")]), 1.0);
    assert_eq!(delta(req, &[("route", "oauth:token"), ("status", "200")]), 1.0);
    assert_eq!(delta(req, &[("route", "oauth:token"), ("status", "400")]), 2.0);
    assert_eq!(delta(req, &[("route", "oauth:jwks"), ("status", "200")]), 1.0);
    let tok = "portcullis_token_requests_total";
    assert_eq!(delta(tok, &[("grant", "client_credentials"), ("outcome", "issued")]), 1.0);
    assert_eq!(delta(tok, &[("grant", "client_credentials"), ("outcome", "invalid_scope")]), 1.0);
    assert_eq!(delta(tok, &[("grant", "none"), ("outcome", "unsupported_grant_type")]), 1.0);
    assert_eq!(delta("portcullis_validation_cache_misses_total", &[]), 1.0, "the first use of the token");
    assert_eq!(delta("portcullis_validation_cache_hits_total", &[]), 2.0, "the second /api and the /admin use");
    assert!(sample(&after, "portcullis_validation_cache_entries", &[]) >= 1.0);
    assert_eq!(
        histogram_count(&after, "portcullis_upstream_latency_seconds", "/api")
            - histogram_count(&before, "portcullis_upstream_latency_seconds", "/api"),
        2.0
    );
    assert_eq!(
        histogram_count(&after, "portcullis_upstream_latency_seconds", "/admin"),
        0.0,
        "refused before upstream"
    );
    assert_eq!(delta("portcullis_config_reloads_total", &[("result", "failed")]), 1.0);
    assert_eq!(delta("portcullis_config_reloads_total", &[("result", "ok")]), 1.0);
    assert!(sample(&after, "portcullis_config_last_reload_success_timestamp_seconds", &[]) > 1.7e9);
    assert_eq!(sample(&after, "portcullis_build_info", &[("version", env!("CARGO_PKG_VERSION"))]), 1.0);
}

// ---------------------------------------------------------------------------------------
// The real binary: SIGHUP and the JSON access log

/// The gateway binary as a child process, its stderr collected line by line.
struct Binary {
    child: std::process::Child,
    lines: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Binary {
    fn spawn(config: &Path) -> Binary {
        use std::io::BufRead;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["--log-format", "json", "serve", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let lines = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Binary { child, lines }
    }

    fn signal(&self, sig: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: kill(2) on our own child's pid; no memory is shared.
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
    }

    fn raw(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// The JSON log lines (anything else, e.g. a panic message, is skipped here).
    fn json(&self) -> Vec<Value> {
        self.raw().iter().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }

    fn access(&self) -> Vec<Value> {
        self.json().into_iter().filter(|v| v["target"] == "portcullis::access").map(|v| v["fields"].clone()).collect()
    }

    /// Wait for a line whose message is `message` and that satisfies `also`.
    async fn wait_for(&self, message: &str, also: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(v) = self.json().into_iter().find(|v| v["fields"]["message"] == message && also(&v["fields"])) {
                return v["fields"].clone();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no {message:?} line; stderr so far:\n{}",
                self.raw().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn the_binary_logs_one_json_access_line_per_request_without_secrets_and_reloads_on_sighup() {
    let up = EchoUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(dir.path());
    let config_path = dir.path().join("gateway.toml");
    let good = config_toml(dir.path(), &pki, up.addr, "");
    std::fs::write(&config_path, &good).unwrap();
    let bin = Binary::spawn(&config_path);

    let https = bin.wait_for("listening", |f| f["scheme"] == "https").await["address"].as_str().unwrap().to_string();
    let port = https.rsplit_once(':').unwrap().1.to_string();
    let url = |p: &str| format!("https://localhost:{port}{p}");
    let admin = bin.wait_for("admin listening (/healthz, /readyz, /metrics)", |_| true).await["address"]
        .as_str()
        .unwrap()
        .to_string();
    let c = https_client(&pki.ca_pem, false);

    // Six requests, each with something that must never reach the log.
    let resp = c
        .post(url("/oauth/token"))
        .basic_auth("svc", Some(SVC_SECRET))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let token = resp.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_string();
    let code = "the-authorization-code-value";
    let resp =
        c.get(url(&format!("/api/x?access_token={token}&code={code}"))).bearer_auth(&token).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(c.get(url("/admin/x")).bearer_auth(&token).send().await.unwrap().status(), 403);
    assert_eq!(c.get(url("/nowhere")).send().await.unwrap().status(), 404);
    assert_eq!(c.get(url("/.well-known/jwks.json")).send().await.unwrap().status(), 200);
    let password = "wrong-password-xyz";
    let resp = c
        .post(url("/oauth/token"))
        .form(&[("grant_type", "client_credentials"), ("client_id", "svc"), ("client_secret", password)])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    // Admin requests are not access-logged at info.
    assert_eq!(reqwest::get(format!("http://{admin}/healthz")).await.unwrap().status(), 200);

    wait_until("six access lines", || async { bin.access().len() >= 6 }).await;
    let access = bin.access();
    assert_eq!(access.len(), 6, "one line per request: {access:#?}");
    let seen: Vec<(String, u64, String)> = access
        .iter()
        .map(|f| {
            assert!(f["latency_us"].is_u64(), "{f}");
            assert!(f["peer"].is_string() && f["method"].is_string() && f["path"].is_string(), "{f}");
            (
                f["route"].as_str().unwrap().to_string(),
                f["status"].as_u64().unwrap(),
                f["client_id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want = [
        ("oauth:token", 200, "svc"),
        ("/api", 200, "svc"),
        ("/admin", 403, "svc"),
        ("unmatched", 404, "-"),
        ("oauth:jwks", 200, "-"),
        ("oauth:token", 401, "-"),
    ];
    let want: Vec<(String, u64, String)> = want.iter().map(|(r, s, c)| (r.to_string(), *s, c.to_string())).collect();
    assert_eq!(seen, want);
    assert_eq!(access[1]["path"], "/api/x", "the query string is never logged");

    // SIGHUP reloads although no file changed.
    bin.signal(libc::SIGHUP);
    bin.wait_for("configuration reloaded", |f| f["trigger"] == "Signal").await;

    // A bad config on disk: refused with file:line, and the old one keeps serving.
    let bad = good.replacen("upstream_timeout = \"2s\"", "upstream_timeout = \"soon\"", 1);
    let line = bad[..bad.find("upstream_timeout").unwrap()].lines().count() + 1;
    write_atomic(&config_path, &bad);
    let want_prefix = format!("{}:{line}:", config_path.display());
    let refused = bin
        .wait_for("configuration refused; the previous one keeps serving", |f| {
            f["error"].as_str().is_some_and(|e| e.starts_with(&want_prefix))
        })
        .await;
    assert!(refused["error"].as_str().unwrap().contains("bad duration"), "{refused}");
    assert_eq!(c.get(url("/api/y")).bearer_auth(&token).send().await.unwrap().status(), 200);

    // SIGTERM: graceful stop.
    bin.signal(libc::SIGTERM);
    bin.wait_for("stopped", |_| true).await;

    let basic = base64::engine::general_purpose::STANDARD.encode(format!("svc:{SVC_SECRET}"));
    for line in bin.raw() {
        for secret in [token.as_str(), SVC_SECRET, code, password, basic.as_str()] {
            assert!(!line.contains(secret), "secret {secret:?} in log line {line}");
        }
    }
}

/// Run the binary with `args`, its stdout a pipe whose reading end is already closed (as
/// under `| head -1` once head has its line): every subcommand that prints must end
/// quietly, without a panic or a backtrace.
fn run_into_closed_pipe(args: &[&str], stdin: &[u8]) -> std::process::Output {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::from(writer))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let _ = input.write_all(stdin);
    drop(input);
    child.wait_with_output().unwrap()
}

#[test]
fn cli_output_into_a_closed_pipe_ends_quietly() {
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/gateway.toml");
    let cases: [(&[&str], &[u8]); 5] = [
        (&["check", "--config", config], b""),
        (&["hash-secret"], b"s3cret\n"),
        (&["gen-key"], b""),
        (&["--help"], b""),
        (&["--version"], b""),
    ];
    for (args, stdin) in cases {
        let out = run_into_closed_pipe(args, stdin);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(!stderr.contains("backtrace"), "{args:?}: {stderr}");
        assert_ne!(out.status.code(), Some(101), "{args:?}: {stderr}");
        assert!(out.status.success(), "{args:?}: {:?} {stderr}", out.status);
    }
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() { todo.push(path) } else { out.push(path) }
        }
    }
    out
}

#[test]
fn the_quick_start_demo_upstream_serves_no_gateway_secret() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).canonicalize().unwrap();
    let readme = std::fs::read_to_string(repo.join("README.md")).unwrap();
    let commands: Vec<&str> = readme.lines().filter(|l| l.contains("http.server")).collect();
    assert!(!commands.is_empty(), "the README quick start starts a demo upstream");
    for line in commands {
        let args: Vec<&str> = line.split('#').next().unwrap().split_whitespace().collect();
        let value = |flag: &str| args.iter().position(|a| *a == flag).and_then(|i| args.get(i + 1)).copied();
        // Loopback only: not the whole network.
        assert_eq!(value("--bind"), Some("127.0.0.1"), "{line}");
        // A directory of its own: not the checkout with certs/, keys/ and data/ in it.
        let dir = value("--directory").unwrap_or_else(|| panic!("no --directory: {line}"));
        let served = repo.join(dir).canonicalize().unwrap_or_else(|e| panic!("{dir}: {e}"));
        assert!(!repo.starts_with(&served), "{line} serves the checkout");
        for file in files_under(&served) {
            let name = file.to_string_lossy().to_string();
            assert!(![".pem", ".key", ".redb", ".der"].iter().any(|ext| name.ends_with(ext)), "{name}");
            let text = std::fs::read(&file).unwrap();
            assert!(!String::from_utf8_lossy(&text).contains("PRIVATE KEY"), "{name}");
        }
        // And none of the example config's generated files lands there.
        let config = portcullis::config::Config::load(&repo.join("gateway.toml")).unwrap_or_else(|e| panic!("{e}"));
        let tls = config.tls.as_ref().unwrap();
        let mut secrets = vec![tls.cert.clone(), tls.key.clone()];
        secrets.extend(config.keys.iter().map(|k| k.file.clone()));
        if let portcullis::config::StoreConfig::Embedded { path } = &config.store {
            secrets.push(path.clone());
        }
        for s in secrets {
            let s = if s.is_absolute() { s } else { repo.join(s) };
            assert!(!s.starts_with(&served), "{} is under the demo directory {dir}", s.display());
        }
    }
}

#[test]
fn readme_and_docs_point_only_inside_the_repository() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![repo.join("README.md")];
    files.extend(files_under(&repo.join("docs")));
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        assert!(!text.contains("../shared"), "{} points into ../shared, which a clone does not have", f.display());
    }
}
