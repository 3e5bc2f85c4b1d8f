//! Trusted external issuers (issue 16): a test identity provider on loopback serves
//! discovery and a JWK Set; the gateway fetches it in the background, verifies the IdP's
//! tokens on the routes that accept that issuer, follows key rotation through a
//! rate-limited refetch, survives the IdP being down, and applies per-route claim rules.

mod common;

use std::time::Duration;

use common::*;
use portcullis::config::Config;
use serde_json::{Value, json};

/// The audience the test IdP's tokens are for.
const AUD: &str = "https://api.gateway.test";

/// A `[[trusted_issuer]]` named `name` for `idp`, with `extra` lines.
fn issuer_toml(name: &str, idp: &TestIdp, extra: &str) -> String {
    format!(
        r#"
[[trusted_issuer]]
name = "{name}"
issuer = "{iss}"
algorithms = ["ES256", "RS256", "EdDSA"]
audience = ["{AUD}", "https://other.example"]
refresh_min = "1s"
refresh_max = "1s"
refetch_interval = "1s"
timeout = "2s"
{extra}
"#,
        iss = idp.issuer
    )
}

/// Routes: /corp (corp only, scope read), /both (self and corp), plus `extra`.
fn routes(up: &EchoUpstream, extra: &str) -> String {
    format!(
        r#"
[[route]]
prefix = "/corp"
upstream = "http://{up}"
scopes = ["read"]
issuers = ["corp"]

[[route]]
prefix = "/both"
upstream = "http://{up}"
issuers = ["self", "corp"]
{extra}
"#,
        up = up.addr
    )
}

/// The template's 1 s refresh bounds replaced by an hour: only refetches fetch.
fn slow_refresh(text: String) -> String {
    text.replace("refresh_min = \"1s\"\nrefresh_max = \"1s\"\n", "refresh_min = \"1h\"\nrefresh_max = \"1h\"\n")
}

async fn gateway(up: &EchoUpstream, issuers: &str, extra_routes: &str) -> TestGateway {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(dir.path());
    let text = format!("{}{}{}", config_toml(dir.path(), &pki, up.addr, ""), issuers, routes(up, extra_routes));
    TestGateway::start_text(dir, pki, &text).await
}

async fn status(gw: &TestGateway, path: &str, token: &str) -> u16 {
    gw.client().get(gw.url(path)).bearer_auth(token).send().await.unwrap().status().as_u16()
}

async fn verbose(gw: &TestGateway) -> Value {
    reqwest::get(gw.admin_url("/readyz?verbose")).await.unwrap().json().await.unwrap()
}

async fn keys_in_force(gw: &TestGateway, name: &str) -> u64 {
    verbose(gw).await["checks"]["issuers"][name]["keys"].as_u64().unwrap_or(0)
}

async fn wait_for_keys(gw: &TestGateway, name: &str) {
    wait_until(&format!("{name}'s keys fetched"), || async { keys_in_force(gw, name).await > 0 }).await;
}

/// A valid IdP token for `sub` with `extra` claims merged in.
fn idp_token(idp: &TestIdp, key: &IdpKey, sub: &str, extra: Value) -> String {
    let mut c = idp.claims(sub, AUD);
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    key.sign(&c)
}

#[tokio::test]
async fn discovery_then_tokens_pass_with_identity_from_the_mapped_claims() {
    let up = EchoUpstream::start().await;
    let key = IdpKey::es256("e1");
    let idp = TestIdp::start(vec![key.clone()]).await;
    let gw = gateway(&up, &issuer_toml("corp", &idp, r#"scope_claim = "realm_access.roles""#), "").await;
    wait_for_keys(&gw, "corp").await;
    assert!(idp.metadata_fetches() >= 1, "no jwks_uri configured: discovery was used");

    let token = idp_token(
        &idp,
        &key,
        "alice@corp",
        json!({"azp": "corp-app", "realm_access": {"roles": ["read", "billing"]}, "jti": "j-1"}),
    );
    let echo = echo_get(&gw, "/corp/x", &token).await;
    // client id from azp (no client_id claim), scopes from the dotted path, the user is the subject.
    assert_identity(&echo, "corp-app", "alice@corp", "read billing", "j-1", Some("alice@corp"));
    // The issuer tells it apart from a token of ours for a client or user of the same name.
    assert_eq!(echo.header_all("x-auth-issuer"), vec![idp.issuer.as_str()], "{echo:?}");
    // A second request is a cache hit.
    let hits = cache_hits(&gw).await;
    echo_get(&gw, "/corp/x", &token).await;
    assert_eq!(cache_hits(&gw).await, hits + 1.0);

    // aud as a list containing one configured audience passes; another audience does not.
    let listed = idp_token(&idp, &key, "bob", json!({"aud": ["x", AUD], "realm_access": {"roles": ["read"]}}));
    assert_eq!(status(&gw, "/corp/x", &listed).await, 200);
    let other = idp_token(&idp, &key, "bob", json!({"aud": "https://elsewhere", "realm_access": {"roles": ["read"]}}));
    assert_eq!(status(&gw, "/corp/x", &other).await, 401);
    // Without the required scope: 403 insufficient_scope.
    let noscope = idp_token(&idp, &key, "bob", json!({}));
    assert_eq!(status(&gw, "/corp/x", &noscope).await, 403);
    // exp is required; nbf in the future is refused; expired beyond the leeway is refused.
    let mut c = idp.claims("bob", AUD);
    c["realm_access"] = json!({"roles": ["read"]});
    c.as_object_mut().unwrap().remove("exp");
    assert_eq!(status(&gw, "/corp/x", &key.sign(&c)).await, 401, "no exp");
    let now = portcullis::tokens::now_secs();
    let mut c = idp.claims("bob", AUD);
    c["realm_access"] = json!({"roles": ["read"]});
    c["nbf"] = json!(now + 3600);
    assert_eq!(status(&gw, "/corp/x", &key.sign(&c)).await, 401, "nbf ahead");
    c["nbf"] = json!(now);
    c["exp"] = json!(now - 3600);
    assert_eq!(status(&gw, "/corp/x", &key.sign(&c)).await, 401, "expired");
    // Within the default 30 s leeway, an IdP token just past exp still passes.
    c["exp"] = json!(now - 10);
    assert_eq!(status(&gw, "/corp/x", &key.sign(&c)).await, 200, "within leeway");
}

#[tokio::test]
async fn key_rotation_is_followed_within_one_refetch_and_removed_keys_stop() {
    let up = EchoUpstream::start().await;
    let k1 = IdpKey::rs256("r1");
    let idp = TestIdp::start(vec![k1.clone()]).await;
    let jwks = format!(r#"jwks_uri = "{}""#, idp.jwks_uri());
    let gw = gateway(&up, &slow_refresh(issuer_toml("corp", &idp, &jwks)), "").await;
    wait_for_keys(&gw, "corp").await;
    assert_eq!(idp.metadata_fetches(), 0, "jwks_uri configured: no discovery");
    let old = idp_token(&idp, &k1, "alice", json!({"scope": "read"}));
    assert_eq!(status(&gw, "/corp/x", &old).await, 200);

    // The IdP rotates: k2 replaces k1. Refresh is an hour away; the new kid triggers a fetch.
    let k2 = IdpKey::es256("e2");
    idp.publish(vec![k2.clone()]);
    tokio::time::sleep(Duration::from_millis(1100)).await; // past refetch_interval
    let before = idp.jwks_fetches();
    let new = idp_token(&idp, &k2, "alice", json!({"scope": "read"}));
    assert_eq!(status(&gw, "/corp/x", &new).await, 200, "new kid works at once");
    assert_eq!(idp.jwks_fetches(), before + 1, "exactly one refetch");
    // k1 is gone from the set: its cached verdict is no longer served.
    assert_eq!(status(&gw, "/corp/x", &old).await, 401, "removed key stops verifying");
}

#[tokio::test]
async fn idp_down_at_start_the_gateway_serves_and_catches_up() {
    let up = EchoUpstream::start().await;
    let key = IdpKey::ed25519("d1");
    let idp = TestIdp::start(vec![key.clone()]).await;
    idp.set_mode(Mode::Down);
    let gw = gateway(&up, &issuer_toml("corp", &idp, ""), "").await;

    // Ready all the same: a down IdP must not take replicas out of rotation.
    let plain = reqwest::get(gw.admin_url("/readyz")).await.unwrap();
    assert_eq!(plain.status(), 200);
    wait_until("a failed fetch is reported", || async {
        verbose(&gw).await["checks"]["issuers"]["corp"]["detail"].as_str().is_some_and(|d| d.contains("no keys"))
    })
    .await;
    let v = verbose(&gw).await;
    assert_eq!(v["checks"]["issuers"]["corp"]["ok"], false, "{v}");
    assert_eq!(v["checks"]["issuers"]["corp"]["required"], false, "{v}");
    assert_eq!(v["status"], "ready", "{v}");
    assert!(
        counter(&gw, "portcullis_issuer_jwks_fetches_total{issuer=\"corp\",outcome=\"discovery_failed\"}").await >= 1.0
    );
    assert_eq!(counter(&gw, "portcullis_issuer_keys{issuer=\"corp\"}").await, 0.0);

    // Our own tokens work; the IdP's are refused (401, never 5xx).
    let own = svc_token(&gw).await;
    assert_eq!(status(&gw, "/api/x", &own).await, 200);
    assert_eq!(status(&gw, "/both/x", &own).await, 200);
    let theirs = idp_token(&idp, &key, "alice", json!({"scope": "read"}));
    assert_eq!(status(&gw, "/corp/x", &theirs).await, 401);

    // The IdP comes back: within the retry backoff (refresh_min 1 s) its tokens pass.
    idp.set_mode(Mode::Normal);
    wait_until("the IdP's token passes", || async { status(&gw, "/corp/x", &theirs).await == 200 }).await;
    assert_eq!(counter(&gw, "portcullis_issuer_keys{issuer=\"corp\"}").await, 1.0);
    assert!(counter(&gw, "portcullis_issuer_jwks_last_success_timestamp_seconds{issuer=\"corp\"}").await > 0.0);
}

#[tokio::test]
async fn jwks_outage_after_a_fetch_keeps_the_cached_keys() {
    let up = EchoUpstream::start().await;
    let key = IdpKey::es256("e1");
    let idp = TestIdp::start(vec![key.clone()]).await;
    let gw = gateway(&up, &issuer_toml("corp", &idp, ""), "").await;
    wait_for_keys(&gw, "corp").await;
    idp.set_mode(Mode::Down);
    let fails = "portcullis_issuer_jwks_fetches_total{issuer=\"corp\",outcome=\"http_status\"}";
    wait_until("a refresh failed", || async { counter(&gw, fails).await >= 1.0 }).await;
    // Fresh tokens (never cached) still verify with the last good set.
    for i in 0..3 {
        let t = idp_token(&idp, &key, &format!("user{i}"), json!({"scope": "read"}));
        assert_eq!(status(&gw, "/corp/x", &t).await, 200);
    }
    assert_eq!(keys_in_force(&gw, "corp").await, 1);
    let detail = verbose(&gw).await["checks"]["issuers"]["corp"]["detail"].as_str().unwrap_or("").to_string();
    assert!(detail.contains("last good key set"), "{detail}");
}

#[tokio::test]
async fn a_slow_idp_times_out_and_holds_no_request_for_long() {
    let up = EchoUpstream::start().await;
    let key = IdpKey::es256("e1");
    let idp = TestIdp::start(vec![key.clone()]).await;
    idp.set_delay(Some(Duration::from_secs(30)));
    let jwks = format!("jwks_uri = \"{}\"", idp.jwks_uri());
    let gw = gateway(&up, &issuer_toml("corp", &idp, &jwks).replace("timeout = \"2s\"", "timeout = \"1s\""), "").await;
    let series = "portcullis_issuer_jwks_fetches_total{issuer=\"corp\",outcome=\"timeout\"}";
    wait_until("a fetch timed out", || async { counter(&gw, series).await >= 1.0 }).await;
    // A token of the slow IdP waits at most for one bounded fetch, then is refused.
    let started = std::time::Instant::now();
    assert_eq!(status(&gw, "/corp/x", &idp_token(&idp, &key, "alice", json!({"scope": "read"}))).await, 401);
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    assert_eq!(status(&gw, "/api/x", &svc_token(&gw).await).await, 200);
    // Back to normal speed: its tokens pass.
    idp.set_delay(None);
    let t = idp_token(&idp, &key, "alice", json!({"scope": "read"}));
    wait_until("the IdP's token passes", || async { status(&gw, "/corp/x", &t).await == 200 }).await;
}

#[tokio::test]
async fn a_kid_flood_causes_at_most_one_fetch_per_interval() {
    let up = EchoUpstream::start().await;
    let key = IdpKey::es256("e1");
    let idp = TestIdp::start(vec![key.clone()]).await;
    let jwks = format!("jwks_uri = \"{}\"", idp.jwks_uri());
    let text = slow_refresh(issuer_toml("corp", &idp, &jwks))
        .replace("refetch_interval = \"1s\"", "refetch_interval = \"1m\"");
    let gw = gateway(&up, &text, "").await;
    wait_for_keys(&gw, "corp").await;
    let start = idp.jwks_fetches();
    assert_eq!(start, 1);
    let client = gw.client();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let header = json!({"alg": "ES256", "typ": "JWT", "kid": format!("flood-{i}")});
        let t = key.sign_text(&header.to_string(), &idp.claims("x", AUD).to_string());
        let (client, url) = (client.clone(), gw.url("/corp/x"));
        tasks.push(tokio::spawn(async move { client.get(url).bearer_auth(t).send().await.unwrap().status().as_u16() }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 401);
    }
    // The first fetch was within the minute: the flood fetched nothing.
    assert_eq!(idp.jwks_fetches(), start, "no refetch within refetch_interval");
}

#[tokio::test]
async fn concurrent_unknown_kids_share_one_fetch() {
    let up = EchoUpstream::start().await;
    let key = IdpKey::es256("e1");
    let idp = TestIdp::start(vec![key.clone()]).await;
    let jwks = format!("jwks_uri = \"{}\"", idp.jwks_uri());
    let text = slow_refresh(issuer_toml("corp", &idp, &jwks));
    let gw = gateway(&up, &text, "").await;
    wait_for_keys(&gw, "corp").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let start = idp.jwks_fetches();
    let client = gw.client();
    let mut tasks = Vec::new();
    for i in 0..50 {
        let header = json!({"alg": "ES256", "kid": format!("flood-{i}")});
        let t = key.sign_text(&header.to_string(), &idp.claims("x", AUD).to_string());
        let (client, url) = (client.clone(), gw.url("/corp/x"));
        tasks.push(tokio::spawn(async move { client.get(url).bearer_auth(t).send().await.unwrap().status().as_u16() }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 401);
    }
    assert_eq!(idp.jwks_fetches(), start + 1, "50 concurrent misses, one fetch");
}

#[tokio::test]
async fn bad_jwks_documents_are_refused_and_counted() {
    let up = EchoUpstream::start().await;
    let key = IdpKey::es256("e1");
    let html = TestIdp::start(vec![key.clone()]).await;
    html.set_mode(Mode::Html);
    let huge = TestIdp::start(vec![key.clone()]).await;
    huge.set_mode(Mode::Huge);
    let mismatch = TestIdp::start(vec![key.clone()]).await;
    let uri = |i: &TestIdp| format!("jwks_uri = \"{}\"", i.jwks_uri());
    let issuers = format!(
        "{}{}{}",
        issuer_toml("html", &html, &uri(&html)),
        issuer_toml("huge", &huge, &format!("{}\nmax_jwks_bytes = 65536", uri(&huge))),
        issuer_toml("corp", &mismatch, &uri(&mismatch)).replace(r#"["ES256", "RS256", "EdDSA"]"#, r#"["RS256"]"#),
    );
    let up_addr = up.addr;
    let routes = format!(
        r#"
[[route]]
prefix = "/ext"
upstream = "http://{up_addr}"
issuers = ["html", "huge", "corp"]
"#
    );
    let gw = gateway(&up, &issuers, &routes).await;
    for (name, outcome) in [("html", "bad_document"), ("huge", "too_large"), ("corp", "no_usable_keys")] {
        let series = format!("portcullis_issuer_jwks_fetches_total{{issuer=\"{name}\",outcome=\"{outcome}\"}}");
        wait_until(&series, || async { counter(&gw, &series).await >= 1.0 }).await;
        assert_eq!(keys_in_force(&gw, name).await, 0, "{name}");
    }
    for idp in [&html, &huge, &mismatch] {
        let t = idp_token(idp, &key, "alice", json!({}));
        assert_eq!(status(&gw, "/ext/x", &t).await, 401);
    }
    // Our own tokens are unaffected.
    assert_eq!(status(&gw, "/api/x", &svc_token(&gw).await).await, 200);
}

#[tokio::test]
async fn routes_accept_only_the_issuers_they_name() {
    let up = EchoUpstream::start().await;
    let key = IdpKey::es256("e1");
    let idp = TestIdp::start(vec![key.clone()]).await;
    let gw = gateway(&up, &issuer_toml("corp", &idp, ""), "").await;
    wait_for_keys(&gw, "corp").await;
    let own = gw.token("svc", SVC_SECRET, Some("read")).await;
    let theirs = idp_token(&idp, &key, "alice", json!({"scope": "read"}));

    assert_eq!(status(&gw, "/corp/x", &theirs).await, 200);
    assert_eq!(status(&gw, "/both/x", &theirs).await, 200);
    assert_eq!(status(&gw, "/both/x", &own).await, 200);
    // A route for corp only refuses our own token, and the default route refuses corp's,
    // also once each verdict is cached.
    for _ in 0..2 {
        let resp = gw.client().get(gw.url("/corp/x")).bearer_auth(&own).send().await.unwrap();
        let (s, www, v) = refused(resp).await;
        assert_eq!((s, v["error"].as_str()), (401, Some("invalid_token")));
        assert!(www.unwrap().contains("error=\"invalid_token\""));
        assert_invalid_token(&gw, "corp token on a self-only route", &theirs).await;
    }
    // An unknown iss is 401, whatever it is signed with; so is a token signed by another key.
    let mut c = idp.claims("alice", AUD);
    c["iss"] = json!("https://unknown.example");
    assert_eq!(status(&gw, "/both/x", &key.sign(&c)).await, 401);
    let stranger = IdpKey::es256("e1");
    assert_eq!(status(&gw, "/corp/x", &idp_token(&idp, &stranger, "alice", json!({"scope": "read"}))).await, 401);
    // Each refusal is counted by its reason.
    assert!(counter(&gw, "portcullis_bearer_refusals_total{reason=\"wrong_issuer\"}").await >= 1.0);
    assert!(counter(&gw, "portcullis_bearer_refusals_total{reason=\"bad_signature\"}").await >= 1.0);
}

#[tokio::test]
async fn algorithm_confusion_and_malformed_tokens_are_refused() {
    let up = EchoUpstream::start().await;
    let rsa = IdpKey::rs256("r1");
    let ec = IdpKey::es256("e1");
    let idp = TestIdp::start(vec![rsa.clone(), ec.clone()]).await;
    let gw = gateway(&up, &issuer_toml("corp", &idp, ""), "").await;
    wait_for_keys(&gw, "corp").await;
    let claims = || {
        let mut c = idp.claims("alice", AUD);
        c["scope"] = json!("read");
        c
    };
    assert_eq!(status(&gw, "/corp/x", &rsa.sign(&claims())).await, 200, "the genuine token");

    // HS256 "signed" with the RSA public key (as DER and as its JWK text).
    let hs = json!({"alg": "HS256", "typ": "JWT", "kid": "r1"});
    for secret in [rsa.public_bytes(), rsa.jwk().to_string().into_bytes()] {
        assert_eq!(status(&gw, "/corp/x", &sign_hs256(&secret, &hs, &claims())).await, 401, "HS256 confusion");
    }
    // alg none, unsigned.
    let none = format!("{}.{}.", b64(br#"{"alg":"none","kid":"r1"}"#), b64(claims().to_string().as_bytes()));
    assert_eq!(status(&gw, "/corp/x", &none).await, 401, "alg none");
    // The EC key named with RS256 (both are configured algorithms).
    let rs_on_ec = ec.sign_text(&json!({"alg": "RS256", "kid": "e1"}).to_string(), &claims().to_string());
    assert_eq!(status(&gw, "/corp/x", &rs_on_ec).await, 401, "EC key used with RS256");
    // ES256 claimed for the RSA key's kid.
    let es_on_rsa = ec.sign_text(&json!({"alg": "ES256", "kid": "r1"}).to_string(), &claims().to_string());
    assert_eq!(status(&gw, "/corp/x", &es_on_rsa).await, 401, "kid of another key");
    // crit is refused; a typ of another JWT kind is refused; JWT and none are fine.
    let crit = rsa.sign_text(&json!({"alg": "RS256", "kid": "r1", "crit": ["exp"]}).to_string(), &claims().to_string());
    assert_eq!(status(&gw, "/corp/x", &crit).await, 401, "crit");
    let logout =
        rsa.sign_text(&json!({"alg": "RS256", "kid": "r1", "typ": "logout+jwt"}).to_string(), &claims().to_string());
    assert_eq!(status(&gw, "/corp/x", &logout).await, 401, "typ logout+jwt");
    let untyped = rsa.sign_text(&json!({"alg": "RS256", "kid": "r1"}).to_string(), &claims().to_string());
    assert_eq!(status(&gw, "/corp/x", &untyped).await, 200, "no typ");
    // iss twice in the JSON: first ours-looking, then corp's (or the reverse).
    let c = claims();
    let body = c.to_string();
    let (theirs, ours) = (format!(r#""iss":"{}""#, idp.issuer), format!(r#""iss":"{ISSUER}""#));
    assert!(body.contains(&theirs));
    for dup in [format!("{{{ours},{}", &body[1..]), format!("{{{theirs},{}", body[1..].replace(&theirs, &ours))] {
        let t = rsa.sign_text(&json!({"alg": "RS256", "kid": "r1"}).to_string(), &dup);
        assert_eq!(status(&gw, "/both/x", &t).await, 401, "duplicate iss: {dup}");
    }
    // A subject with a control character never reaches an upstream (401, not 502).
    let mut c = claims();
    c["sub"] = json!("alice\nX-Evil: 1");
    assert_eq!(status(&gw, "/corp/x", &rsa.sign(&c)).await, 401);
    // And nothing above was a 5xx for our own tokens meanwhile.
    assert_eq!(status(&gw, "/api/x", &svc_token(&gw).await).await, 200);
}

/// Identity values that an upstream would read changed (padded, blank) or that look like
/// another value (controls, invisible, bidi, tag characters): 401, never forwarded. The
/// blocks API refuses the same spellings (tests/blocks.rs), so what passes can be blocked.
#[tokio::test]
async fn untidy_identity_values_are_refused() {
    let up = EchoUpstream::start().await;
    let key = IdpKey::es256("e1");
    let idp = TestIdp::start(vec![key.clone()]).await;
    let gw = gateway(&up, &issuer_toml("corp", &idp, ""), "").await;
    wait_for_keys(&gw, "corp").await;
    let token = |claim: &str, v: Value| idp_token(&idp, &key, "alice", json!({"scope": "read", claim: v}));
    let echo =
        echo_get(&gw, "/corp/x", &idp_token(&idp, &key, "alice", json!({"scope": "read", "azp": "app", "jti": "j-1"})))
            .await;
    assert_identity(&echo, "app", "alice", "read", "j-1", Some("alice"));
    let untidy = [
        " alice",
        "alice ",
        "   ",
        "alice\u{85}",
        "\u{a0}alice",
        "al\u{200b}ice",
        "al\u{202e}ice",
        "al\u{2028}ice",
        "a\u{e0041}b",
        "al\u{feff}ice",
        "al\u{9b}ice",
    ];
    for v in untidy {
        for claim in ["sub", "client_id", "azp", "jti"] {
            let t = token(claim, json!(v));
            assert_eq!(status(&gw, "/corp/x", &t).await, 401, "{claim} = {v:?}");
        }
    }
    assert_eq!(status(&gw, "/corp/x", &token("jti", json!("x".repeat(257)))).await, 401, "oversized jti");
    // An identity claim that is there but not text is refused, not ignored (black-box
    // attack, stop 34: a numeric jti passed without one, so no jti block could stop it).
    for v in [json!(42), json!(true), json!(["x"]), json!({}), json!(null), json!("")] {
        for claim in ["jti", "client_id", "azp"] {
            assert_eq!(status(&gw, "/corp/x", &token(claim, v.clone())).await, 401, "{claim} = {v}");
        }
    }
    assert_eq!(status(&gw, "/corp/x", &token("sub", json!(""))).await, 401, "empty sub");
    drop(gw);

    // A mapped subject claim is held to the same rule.
    let gw = gateway(&up, &issuer_toml("corp", &idp, r#"subject_claim = "ext.user""#), "").await;
    wait_for_keys(&gw, "corp").await;
    let echo = echo_get(&gw, "/corp/x", &token("ext", json!({"user": "bob"}))).await;
    assert_eq!(echo.header_all("x-auth-subject"), vec!["bob"], "{echo:?}");
    for v in [" bob", "   ", "b\u{200d}ob", "bob\u{85}"] {
        assert_eq!(status(&gw, "/corp/x", &token("ext", json!({ "user": v }))).await, 401, "ext.user = {v:?}");
    }
}

/// RFC 6749 §3.3: scopes are scope-tokens (visible ASCII but `"` and `\\`) separated by
/// single spaces. A scope string split by another reader on a newline, a tab or a Unicode
/// space (`"x\u{a0}read"`) would meet `scopes = ["read"]` here and reach the upstream as
/// one scope, or the reverse: any such spelling is refused (401), in a string or in any
/// item of an array claim (`scp`, a mapped `realm_access.roles`).
#[tokio::test]
async fn scopes_are_scope_tokens_split_on_spaces_only() {
    let up = EchoUpstream::start().await;
    let key = IdpKey::es256("e1");
    let idp = TestIdp::start(vec![key.clone()]).await;
    let gw = gateway(&up, &issuer_toml("corp", &idp, ""), "").await;
    wait_for_keys(&gw, "corp").await;
    let t = |extra: Value| idp_token(&idp, &key, "alice", extra);
    let echo = echo_get(&gw, "/corp/x", &t(json!({"scope": "x read"}))).await;
    assert_eq!(echo.header_all("x-auth-scope"), vec!["x read"], "{echo:?}");
    let echo = echo_get(&gw, "/corp/x", &t(json!({"scp": ["x", "read"]}))).await;
    assert_eq!(echo.header_all("x-auth-scope"), vec!["x read"], "{echo:?}");
    let bad = [
        "x\nread",
        "x\tread",
        "x\rread",
        "x\u{b}read",
        "x\u{c}read",
        "x\u{a0}read",
        "x\u{3000}read",
        "x\u{2003}read",
        "x\u{85}read",
        "x\u{2028}read",
        "x  read",
        " read",
        "read ",
        "read\n",
        "re\"ad",
        "re\\ad",
        "r\u{e9}ad read",
    ];
    for v in bad {
        assert_eq!(status(&gw, "/corp/x", &t(json!({ "scope": v }))).await, 401, "scope = {v:?}");
        assert_eq!(status(&gw, "/corp/x", &t(json!({ "scp": ["read", v] }))).await, 401, "scp item {v:?}");
    }
    for v in [json!(["read", "x read"]), json!(["read", ""]), json!(["read", 1]), json!(["read", ["x"]]), json!(7)] {
        assert_eq!(status(&gw, "/corp/x", &t(json!({ "scp": v }))).await, 401, "scp = {v}");
    }
    assert_eq!(status(&gw, "/corp/x", &t(json!({"scope": {"read": true}}))).await, 401, "scope object");
    drop(gw);

    // A mapped array claim is held to the same rule: one bad item refuses the token.
    let gw = gateway(&up, &issuer_toml("corp", &idp, r#"scope_claim = "realm_access.roles""#), "").await;
    wait_for_keys(&gw, "corp").await;
    let roles = |r: Value| t(json!({"realm_access": { "roles": r }}));
    assert_eq!(status(&gw, "/corp/x", &roles(json!(["read", "billing"]))).await, 200);
    for v in ["two words", "x\u{a0}read", "x\nread", ""] {
        assert_eq!(status(&gw, "/corp/x", &roles(json!(["read", v]))).await, 401, "role {v:?}");
    }
}

/// A member named twice at any depth of the payload is refused (401), not read as the
/// last (or first) one: `{"org":{"team":"blue","team":"red"}}` must not meet
/// `"org.team" = "red"`, nor a doubled `realm_access.roles` the route's scopes. Nesting
/// beyond 32 levels is refused too.
#[tokio::test]
async fn a_member_named_twice_at_any_depth_is_refused() {
    let up = EchoUpstream::start().await;
    let key = IdpKey::es256("e1");
    let idp = TestIdp::start(vec![key.clone()]).await;
    let a = up.addr;
    let team = format!(
        r#"
[[route]]
prefix = "/red"
upstream = "http://{a}"
issuers = ["corp"]
[route.claims]
"org.team" = "red"
"#
    );
    let gw = gateway(&up, &issuer_toml("corp", &idp, r#"scope_claim = "realm_access.roles""#), &team).await;
    wait_for_keys(&gw, "corp").await;
    // The usual claims, then `members` written as is.
    let raw = |members: &str| {
        let base = idp.claims("alice", AUD).to_string();
        let header = json!({"alg": key.alg, "typ": "JWT", "kid": key.kid}).to_string();
        key.sign_text(&header, &format!("{},{members}}}", &base[..base.len() - 1]))
    };
    assert_eq!(status(&gw, "/red/x", &raw(r#""org":{"team":"red"}"#)).await, 200);
    assert_eq!(status(&gw, "/red/x", &raw(r#""org":{"team":"blue","team":"red"}"#)).await, 401, "last wins");
    assert_eq!(status(&gw, "/red/x", &raw(r#""org":{"team":"red","team":"blue"}"#)).await, 401, "first wins");
    assert_eq!(status(&gw, "/red/x", &raw(r#""org":{"team":"blue","t\u0065am":"red"}"#)).await, 401, "escaped");
    assert_eq!(status(&gw, "/corp/x", &raw(r#""realm_access":{"roles":["read"]}"#)).await, 200);
    let roles = r#""realm_access":{"roles":["x"],"roles":["read"]}"#;
    assert_eq!(status(&gw, "/corp/x", &raw(roles)).await, 401, "doubled roles");
    // Anywhere, also in a claim nothing reads.
    let unread = r#""realm_access":{"roles":["read"]},"ext":[{"a":1,"a":1}]"#;
    assert_eq!(status(&gw, "/corp/x", &raw(unread)).await, 401, "unread claim");
    let deep = |n: usize| format!(r#""realm_access":{{"roles":["read"]}},"x":{}1{}"#, "[".repeat(n), "]".repeat(n));
    assert_eq!(status(&gw, "/corp/x", &raw(&deep(30))).await, 200, "31 levels");
    assert_eq!(status(&gw, "/corp/x", &raw(&deep(40))).await, 401, "41 levels");
}

#[tokio::test]
async fn claim_rules_exact_one_of_contains_and_missing() {
    let up = EchoUpstream::start().await;
    let key = IdpKey::es256("e1");
    let idp = TestIdp::start(vec![key.clone()]).await;
    let a = up.addr;
    let rules = format!(
        r#"
[[route]]
prefix = "/tenant"
upstream = "http://{a}"
issuers = ["corp"]
[route.claims]
tenant = "acme"

[[route]]
prefix = "/billing"
upstream = "http://{a}"
issuers = ["corp"]
[route.claims]
"org.groups" = {{ contains = "billing" }}
region = {{ one_of = ["eu", "us"] }}

[[route]]
prefix = "/machines"
upstream = "http://{a}"
scopes = ["read"]
issuers = ["self", "corp"]
[route.claims]
gty = "client_credentials"
"#
    );
    let gw = gateway(&up, &issuer_toml("corp", &idp, ""), &rules).await;
    wait_for_keys(&gw, "corp").await;
    let t = |extra: Value| idp_token(&idp, &key, "alice", extra);

    assert_eq!(status(&gw, "/tenant/x", &t(json!({"tenant": "acme"}))).await, 200);
    assert_eq!(status(&gw, "/tenant/x", &t(json!({"tenant": ["acme"]}))).await, 200, "one-element array");
    assert_eq!(status(&gw, "/tenant/x", &t(json!({"tenant": ["acme", "evil"]}))).await, 403, "array of two");
    assert_eq!(status(&gw, "/tenant/x", &t(json!({"tenant": "acme-evil"}))).await, 403);
    assert_eq!(status(&gw, "/tenant/x", &t(json!({"tenant": {"name": "acme"}}))).await, 403, "object");

    let resp = gw.client().get(gw.url("/tenant/x")).bearer_auth(t(json!({}))).send().await.unwrap();
    let (s, www, v) = refused(resp).await;
    assert_eq!((s, v["error"].as_str()), (403, Some("insufficient_scope")), "missing claim: {v}");
    assert_eq!(www.as_deref(), Some("Bearer realm=\"portcullis\", error=\"insufficient_scope\""));

    let ok = json!({"org": {"groups": ["ops", "billing"]}, "region": "eu"});
    assert_eq!(status(&gw, "/billing/x", &t(ok)).await, 200);
    assert_eq!(
        status(&gw, "/billing/x", &t(json!({"org": {"groups": "billing ops"}, "region": ["x", "us"]}))).await,
        200
    );
    assert_eq!(status(&gw, "/billing/x", &t(json!({"org": {"groups": ["billing-admin"]}, "region": "eu"}))).await, 403);
    assert_eq!(status(&gw, "/billing/x", &t(json!({"org": {"groups": ["billing"]}, "region": "asia"}))).await, 403);
    assert_eq!(status(&gw, "/billing/x", &t(json!({"org": {"groups": ["billing"]}}))).await, 403, "region missing");

    // Our own tokens carry gty for client_credentials; a linked-user token too.
    let own = gw.token("svc", SVC_SECRET, Some("read")).await;
    assert_eq!(status(&gw, "/machines/x", &own).await, 200);
    // The IdP's token has no gty.
    assert_eq!(status(&gw, "/machines/x", &t(json!({"scope": "read"}))).await, 403);
}

#[tokio::test]
async fn a_reload_keeps_the_keys_of_unchanged_issuers() {
    let up = EchoUpstream::start().await;
    let key = IdpKey::es256("e1");
    let idp = TestIdp::start(vec![key.clone()]).await;
    let text = slow_refresh(issuer_toml("corp", &idp, &format!("jwks_uri = \"{}\"", idp.jwks_uri())));
    let gw = gateway(&up, &text, "").await;
    wait_for_keys(&gw, "corp").await;
    let token = idp_token(&idp, &key, "alice", json!({"scope": "read"}));
    assert_eq!(status(&gw, "/corp/x", &token).await, 200);
    let fetched = idp.jwks_fetches();
    let up_addr = up.addr;
    gw.rewrite_config(|t| format!("{t}\n[[route]]\nprefix = \"/extra\"\nupstream = \"http://{up_addr}\"\n"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(idp.jwks_fetches(), fetched, "unchanged issuer: no new fetch");
    assert_eq!(keys_in_force(&gw, "corp").await, 1);
    assert_eq!(status(&gw, "/corp/x", &token).await, 200);
    // A changed setting starts that issuer afresh (and fetches again).
    gw.rewrite_config(|t| t.replace("timeout = \"2s\"", "timeout = \"3s\""));
    wait_until("the changed issuer fetched", || async { idp.jwks_fetches() > fetched }).await;
    wait_for_keys(&gw, "corp").await;
    assert_eq!(status(&gw, "/corp/x", &token).await, 200);
    // Renamed (the routes follow): the token cached under the old name is judged again,
    // not refused until it expires.
    gw.rewrite_config(|t| t.replace("name = \"corp\"", "name = \"corp2\"").replace("\"corp\"]", "\"corp2\"]"));
    wait_for_keys(&gw, "corp2").await;
    assert_eq!(status(&gw, "/corp/x", &token).await, 200);
}

#[tokio::test]
async fn an_idp_over_tls_is_trusted_through_its_configured_ca_only() {
    let up = EchoUpstream::start().await;
    let key = IdpKey::es256("e1");
    let scratch = tempfile::tempdir().unwrap();
    let idp_pki = Pki::create(scratch.path());
    let idp = TestIdp::start_tls(vec![key.clone()], &idp_pki).await;
    let ca = scratch.path().join("idp-ca.pem");
    std::fs::write(&ca, &idp_pki.ca_pem).unwrap();
    // The same IdP twice: through its CA, and (as 127.0.0.1, also in its certificate)
    // without, where the system roots do not know the test CA.
    let trusted = issuer_toml("corp", &idp, &format!("ca = \"{}\"", ca.display()));
    let untrusted = format!(
        "\n[[trusted_issuer]]\nname = \"noca\"\nissuer = \"https://127.0.0.1:{}\"\nalgorithms = [\"ES256\"]\naudience = \"{AUD}\"\nrefresh_min = \"1s\"\n",
        idp.addr.port()
    );
    let gw = gateway(&up, &format!("{trusted}{untrusted}"), "").await;
    wait_for_keys(&gw, "corp").await;
    assert_eq!(status(&gw, "/corp/x", &idp_token(&idp, &key, "alice", json!({"scope": "read"}))).await, 200);
    let series = "portcullis_issuer_jwks_fetches_total{issuer=\"noca\",outcome=\"discovery_failed\"}";
    wait_until("the CA-less issuer failed", || async { counter(&gw, series).await >= 1.0 }).await;
    assert_eq!(keys_in_force(&gw, "noca").await, 0);
}

/// Each refusal names the file and the line.
#[test]
fn config_errors_point_at_the_line() {
    let base = |extra: &str| {
        format!(
            r#"issuer = "https://gateway.test"

[[listener]]
address = "127.0.0.1:0"
tls = false

[[key]]
id = "k1"
file = "/nonexistent/k1.pem"
{extra}"#
        )
    };
    let issuer = |body: &str| {
        format!(
            "\n[[trusted_issuer]]\nname = \"corp\"\nissuer = \"https://idp.example\"\nalgorithms = [\"RS256\"]\naudience = \"api\"\n{body}"
        )
    };
    let cases: Vec<(String, &str, usize)> = vec![
        (
            format!(
                "{}\n[[route]]\nprefix = \"/x\"\nupstream = \"http://127.0.0.1:1\"\nissuers = [\"nope\"]\n",
                issuer("")
            ),
            "unknown issuer \"nope\"",
            20,
        ),
        (issuer("").replace("[\"RS256\"]", "[\"HS256\"]"), "HMAC", 14),
        (issuer("").replace("[\"RS256\"]", "[\"none\"]"), "unsigned", 14),
        (issuer("").replace("[\"RS256\"]", "[\"RS255\"]"), "not allowed", 14),
        (issuer("").replace("algorithms = [\"RS256\"]\n", ""), "algorithms is required", 12),
        (issuer("").replace("audience = \"api\"\n", ""), "audience is required", 12),
        (issuer("jwks_uri = \"http://idp.example/jwks\""), "off loopback", 16),
        (issuer("").replace("https://idp.example", "http://idp.example"), "off loopback", 13),
        (issuer("").replace("https://idp.example", "https://gateway.test"), "own issuer", 13),
        (
            format!("{}{}", issuer(""), issuer("").replace("https://idp.example", "https://idp2.example")),
            "duplicate trusted issuer name",
            18,
        ),
        (format!("{}{}", issuer(""), issuer("").replace("\"corp\"", "\"corp2\"")), "already trusted", 19),
        (issuer("").replace("\"corp\"", "\"self\""), "reserved", 12),
        (issuer("kind = \"introspection\""), "algorithms is for kind = \"jwt\"", 14),
        (issuer("introspection_endpoint = \"https://idp.example/introspect\""), "is for kind = \"introspection\"", 16),
        (issuer("refresh_min = \"2h\""), "refresh_min", 16),
        // Our own issuer spelled otherwise (case, trailing '/', default port): still ours.
        (issuer("").replace("https://idp.example", "HTTPS://Gateway.TEST/"), "own issuer", 13),
        (issuer("").replace("https://idp.example", "https://gateway.test:443"), "own issuer", 13),
        (format!("{}{}", issuer(""), issuer("").replace("\"corp\"", "\"corp2\"").replace("https://idp.example", "https://IDP.example/")), "already trusted", 19),
        (issuer("").replace("\"corp\"", "\"SELF\""), "reserved", 12),
        (issuer("").replace("\"corp\"", "\"Self\""), "reserved", 12),
        (issuer("refetch_interval = \"500ms\""), "refetch_interval must be at least 1s", 16),
        (issuer("refresh_min = \"999ms\""), "refresh_min must be at least 1s", 16),
        (issuer("connect_timeout = \"6s\""), "connect_timeout must not exceed timeout", 16),
        (issuer("timeout = \"1s\"\nconnect_timeout = \"2s\""), "connect_timeout must not exceed timeout", 17),
        (issuer("subject_claim = \".\""), "no empty segment", 16),
        (issuer("client_id_claim = \"a..b\""), "no empty segment", 16),
        (issuer("scope_claim = \".roles\""), "no empty segment", 16),
        (issuer("scope_claim = \"realm_access.\""), "no empty segment", 16),
        (
            "\n[[route]]\nprefix = \"/x\"\nupstream = \"http://127.0.0.1:1\"\n[route.claims]\ntenant = { within = \"a\" }\n"
                .to_string(),
            "unknown test",
            14,
        ),
        (
            "\n[[route]]\nprefix = \"/x\"\nupstream = \"http://127.0.0.1:1\"\npublic = true\nissuers = [\"self\"]\n"
                .to_string(),
            "public route",
            12,
        ),
    ];
    for (extra, want, line) in cases {
        let text = base(&extra);
        let err = Config::parse(&text, std::path::Path::new("gateway.toml")).expect_err(&extra).to_string();
        assert!(err.contains(want), "want {want:?}, got {err}\n{text}");
        assert!(err.starts_with(&format!("gateway.toml:{line}:")), "want line {line}, got {err}\n{text}");
    }
    // Claim rules: a path with an empty segment, or an empty value to compare with.
    let rules = [
        (r#"".x" = "a""#, "no empty segment"),
        (r#""." = "a""#, "no empty segment"),
        (r#""a..b" = "a""#, "no empty segment"),
        (r#""org." = { contains = "a" }"#, "no empty segment"),
        (r#"tenant = """#, "not a value to compare with"),
        (r#"groups = { contains = "" }"#, "contains takes a non-empty string"),
        (r#"region = { one_of = ["eu", ""] }"#, "one_of takes a non-empty list of non-empty strings"),
    ];
    for (rule, want) in rules {
        let text =
            base(&format!("\n[[route]]\nprefix = \"/x\"\nupstream = \"http://127.0.0.1:1\"\n[route.claims]\n{rule}\n"));
        let err = Config::parse(&text, std::path::Path::new("gateway.toml")).expect_err(rule).to_string();
        assert!(err.contains(want) && err.starts_with("gateway.toml:14:"), "{rule}: want {want:?} at 14, got {err}");
    }
    // A short timeout alone is fine: the connect timeout defaults to at most it.
    let short = base(&issuer("timeout = \"1s\"\nrefresh_min = \"1s\"\nrefetch_interval = \"1s\""));
    assert_eq!(Config::parse(&short, std::path::Path::new("gateway.toml")).unwrap().trusted_issuers.len(), 1);
    // A good one parses, with claims and issuers on a route.
    let good = base(&format!(
        "{}\n[[route]]\nprefix = \"/x\"\nupstream = \"http://127.0.0.1:1\"\nissuers = [\"self\", \"corp\"]\n[route.claims]\ntenant = \"acme\"\nadmin = true\n",
        issuer("")
    ));
    let cfg = Config::parse(&good, std::path::Path::new("gateway.toml")).unwrap();
    assert_eq!(cfg.trusted_issuers.len(), 1);
    assert!(cfg.routes[0].accepts("corp") && cfg.routes[0].accepts("self"));
}

/// `check` refuses an issuer CA it cannot read, as `serve` would.
#[test]
fn check_refuses_a_missing_issuer_ca() {
    let err = issuer_preflight_error(
        r#"name = "corp"
issuer = "https://idp.example"
algorithms = ["RS256"]
audience = "api"
ca = "{d}/missing-ca.pem"
"#,
    );
    assert!(err.contains(":12:") && err.contains("missing-ca.pem"), "{err}");
}

/// Operator blocks (issue 16.5) cover a trusted issuer's tokens under its `iss`: a cached
/// verdict is refused at once, a block for another issuer leaves the token alone, an
/// any-issuer block of the subject catches it too.
#[tokio::test]
async fn operator_blocks_cover_a_trusted_issuers_tokens_cached_or_not() {
    let up = EchoUpstream::start().await;
    let key = IdpKey::es256("e1");
    let idp = TestIdp::start(vec![key.clone()]).await;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(dir.path());
    let text =
        format!("{}{}{}", config_toml(dir.path(), &pki, up.addr, ""), issuer_toml("corp", &idp, ""), routes(&up, ""))
            .replace("[admin]\n", &format!("[admin]\napi_key_hash = \"{OTHER_HASH}\"\n"));
    let gw = TestGateway::start_text(dir, pki, &text).await;
    wait_for_keys(&gw, "corp").await;
    let blocks = |method: &'static str, body: Value| {
        reqwest::Client::new()
            .request(method.parse().unwrap(), gw.admin_url("/blocks"))
            .header("authorization", format!("Bearer {OTHER_SECRET}"))
            .json(&body)
            .send()
    };
    let token = idp_token(&idp, &key, "mallory", json!({"scope": "read", "jti": "ext-1"}));
    assert_eq!(status(&gw, "/corp/x", &token).await, 200, "verified and cached");

    // A block of the same jti under another issuer does not touch it.
    assert_eq!(
        blocks("POST", json!({"jti": "ext-1", "iss": "https://elsewhere.example"})).await.unwrap().status(),
        201
    );
    assert_eq!(status(&gw, "/corp/x", &token).await, 200);
    // Under its own issuer: refused at once, although its verdict is cached.
    assert_eq!(blocks("POST", json!({"jti": "ext-1", "iss": idp.issuer})).await.unwrap().status(), 201);
    assert_eq!(status(&gw, "/corp/x", &token).await, 401);
    assert_eq!(blocks("DELETE", json!({"jti": "ext-1", "iss": idp.issuer})).await.unwrap().status(), 200);
    assert_eq!(status(&gw, "/corp/x", &token).await, 200);

    // An any-issuer subject block: this token and a fresh one (a cache miss) are refused.
    assert_eq!(blocks("POST", json!({"sub": "mallory"})).await.unwrap().status(), 201);
    assert_eq!(status(&gw, "/corp/x", &token).await, 401);
    let fresh = idp_token(&idp, &key, "mallory", json!({"scope": "read", "jti": "ext-2"}));
    assert_eq!(status(&gw, "/corp/x", &fresh).await, 401);
    let other = idp_token(&idp, &key, "alice", json!({"scope": "read", "jti": "ext-3"}));
    assert_eq!(status(&gw, "/corp/x", &other).await, 200);
}

/// An IdP that answers with a well-formed set holding no usable key (emptied after a
/// compromise) is taken at its word: its keys stop verifying, cached verdicts included.
/// Garbage instead of a set keeps the last good one (see the outage test).
#[tokio::test]
async fn an_emptied_key_set_stops_every_key_of_that_issuer() {
    let up = EchoUpstream::start().await;
    let key = IdpKey::es256("e1");
    let idp = TestIdp::start(vec![key.clone()]).await;
    let gw = gateway(&up, &issuer_toml("corp", &idp, &format!("jwks_uri = \"{}\"", idp.jwks_uri())), "").await;
    wait_for_keys(&gw, "corp").await;
    let token = idp_token(&idp, &key, "alice", json!({"scope": "read"}));
    assert_eq!(status(&gw, "/corp/x", &token).await, 200, "verified and cached");
    idp.set_mode(Mode::Html);
    let fetched = idp.jwks_fetches();
    wait_until("a garbage answer fetched", || async { idp.jwks_fetches() > fetched }).await;
    assert_eq!(status(&gw, "/corp/x", &token).await, 200, "garbage keeps the last good set");
    idp.set_mode(Mode::Normal);
    idp.publish(vec![]);
    wait_until("the emptied set taken", || async { keys_in_force(&gw, "corp").await == 0 }).await;
    assert_eq!(status(&gw, "/corp/x", &token).await, 401);
    assert_eq!(status(&gw, "/corp/x", &idp_token(&idp, &key, "bob", json!({"scope": "read"}))).await, 401);
    let v = verbose(&gw).await;
    assert!(v["checks"]["issuers"]["corp"]["detail"].as_str().unwrap_or("").contains("no keys in force"), "{v}");
    // Keys published again are fetched again.
    idp.publish(vec![key.clone()]);
    wait_for_keys(&gw, "corp").await;
    assert_eq!(status(&gw, "/corp/x", &token).await, 200);
}
