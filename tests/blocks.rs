//! Operator blocks through the admin listener (issue 16.5): a blocked `jti` or `sub` is
//! refused at once, cached or not, until unblocked; blocks survive a restart; the API
//! wants its key, in one form only, and refuses garbage. (Across replicas: tests/replicas.rs.)

mod common;

use common::*;
use serde_json::{Value, json};

/// The admin API key of these tests (its hash is the test clients' `OTHER_HASH`).
const ADMIN_KEY: &str = OTHER_SECRET;

/// A gateway whose admin listener has the blocks API on; `extra` as in `start_with`.
async fn gateway(extra: &str) -> (EchoUpstream, TestGateway) {
    let up = EchoUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(dir.path());
    let text = config_toml(dir.path(), &pki, up.addr, extra)
        .replace("[admin]\n", &format!("[admin]\napi_key_hash = \"{OTHER_HASH}\"\n"));
    let gw = TestGateway::start_text(dir, pki, &text).await;
    (up, gw)
}

/// An admin API request with `key` (`None`: no Authorization) and an optional JSON body.
async fn api(gw: &TestGateway, method: &str, key: Option<&str>, body: Option<Value>) -> (u16, Value) {
    let mut req = reqwest::Client::new().request(method.parse().unwrap(), gw.admin_url("/blocks"));
    if let Some(k) = key {
        req = req.header("authorization", format!("Bearer {k}"));
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    assert_eq!(resp.headers()["cache-control"], "no-store");
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn block(gw: &TestGateway, body: Value) -> Value {
    let (status, v) = api(gw, "POST", Some(ADMIN_KEY), Some(body)).await;
    assert_eq!(status, 201, "{v}");
    v
}

async fn unblock(gw: &TestGateway, body: Value) -> u16 {
    api(gw, "DELETE", Some(ADMIN_KEY), Some(body)).await.0
}

async fn list(gw: &TestGateway) -> Vec<Value> {
    let (status, v) = api(gw, "GET", Some(ADMIN_KEY), None).await;
    assert_eq!(status, 200, "{v}");
    v["blocks"].as_array().unwrap().clone()
}

fn jti(token: &str) -> String {
    claims(token)["jti"].as_str().unwrap().to_string()
}

/// Introspected by `svc` (`introspect` is not needed for its own tokens).
async fn active(gw: &TestGateway, token: &str) -> bool {
    let resp = gw
        .client()
        .post(gw.url("/oauth/introspect"))
        .basic_auth("svc", Some(SVC_SECRET))
        .form(&[("token", token)])
        .send()
        .await
        .unwrap();
    let v: Value = resp.json().await.unwrap();
    v["active"].as_bool().unwrap()
}

#[tokio::test]
async fn a_blocked_jti_is_refused_at_once_even_cached_and_works_again_when_unblocked() {
    let (_up, gw) = gateway("").await;
    let (blocked, other) = (svc_token(&gw).await, svc_token(&gw).await);
    assert_eq!((api_status(&gw, &blocked).await, api_status(&gw, &other).await), (200, 200));
    let hits = cache_hits(&gw).await;

    let v = block(&gw, json!({"jti": jti(&blocked), "reason": "INC-1: leaked in a log"})).await;
    assert_eq!((v["kind"].as_str(), v["value"].as_str()), (Some("jti"), Some(jti(&blocked).as_str())), "{v}");
    assert_eq!(v["iss"], Value::Null);
    // A jti block holds until removed by default (black-box attack, stop 34: it lapsed
    // after the longest lifetime this configuration issues, while a token issued under a
    // longer one before a reload, or a trusted issuer's, still worked).
    assert_eq!(v["expires_at"], Value::Null, "{v}");

    assert_invalid_token(&gw, "blocked jti, cached verdict", &blocked).await;
    assert!(cache_hits(&gw).await > hits, "the refusal came from a cache hit");
    assert_eq!(api_status(&gw, &other).await, 200, "another token of the same client");
    assert!(!active(&gw, &blocked).await, "introspection agrees");
    assert!(active(&gw, &other).await);
    let metric = "portcullis_blocked_requests_total{kind=\"jti\"}";
    assert_eq!(counter(&gw, metric).await, 1.0);
    assert_eq!(counter(&gw, "portcullis_blocks{kind=\"jti\"}").await, 1.0);

    let listed = list(&gw).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["reason"], "INC-1: leaked in a log");

    assert_eq!(unblock(&gw, json!({"jti": jti(&blocked)})).await, 200);
    assert_eq!(api_status(&gw, &blocked).await, 200, "unblocked");
    assert!(active(&gw, &blocked).await);
    assert_eq!(unblock(&gw, json!({"jti": jti(&blocked)})).await, 404, "nothing left to remove");
    assert!(list(&gw).await.is_empty());
    assert_eq!(counter(&gw, "portcullis_blocks{kind=\"jti\"}").await, 0.0);
    let ready = get_json(&reqwest::Client::new(), &gw.admin_url("/readyz?verbose")).await;
    assert_eq!(
        (&ready["checks"]["blocks"]["ok"], &ready["checks"]["blocks"]["required"]),
        (&true.into(), &false.into())
    );
}

#[tokio::test]
async fn a_blocked_sub_refuses_every_token_of_that_subject_and_only_those() {
    let (_up, gw) = gateway("").await;
    // alice's own token (password grant) and one of the client that acts as her.
    let (alice, alice_refresh) = password_tokens(&gw).await;
    let linked = gw.token("linked", OTHER_SECRET, None).await;
    let svc = svc_token(&gw).await;
    // Refresh tokens are introspected by the client they were issued to.
    let refresh_active = async |gw: &TestGateway| {
        let resp = gw
            .client()
            .post(gw.url("/oauth/introspect"))
            .basic_auth("webapp", Some(SVC_SECRET))
            .form(&[("token", alice_refresh.as_str())])
            .send()
            .await
            .unwrap();
        resp.json::<Value>().await.unwrap()["active"].as_bool().unwrap()
    };
    assert!(refresh_active(&gw).await);
    for t in [&alice, &linked, &svc] {
        assert_eq!(api_status(&gw, t).await, 200);
    }

    // Scoped to another issuer: not ours, so our tokens pass.
    let v = block(&gw, json!({"sub": "alice", "iss": "https://idp.example"})).await;
    assert_eq!(api_status(&gw, &alice).await, 200, "a block for another issuer");
    // Stored, but the answer says it matches no issuer this gateway accepts.
    assert!(v["warning"].as_str().is_some_and(|w| w.contains("matches nothing here")), "{v}");
    // Our issuer, exactly; a sub block holds until removed by default.
    let v = block(&gw, json!({"sub": "alice", "iss": ISSUER})).await;
    assert_eq!(v["expires_at"], Value::Null, "{v}");
    assert_eq!(v.get("warning"), None, "{v}");
    assert_invalid_token(&gw, "alice", &alice).await;
    assert_invalid_token(&gw, "client acting as alice", &linked).await;
    // Her refresh token introspects inactive too (black-box attack, stop 34: active).
    assert!(!refresh_active(&gw).await, "a blocked subject's refresh token");
    assert_eq!(api_status(&gw, &svc).await, 200, "another subject");
    let fresh = gw.token("linked", OTHER_SECRET, None).await;
    assert_invalid_token(&gw, "a token issued after the block", &fresh).await;
    assert_eq!(counter(&gw, "portcullis_blocked_requests_total{kind=\"sub\"}").await, 3.0);

    // Removing needs the same key: the block scoped to another issuer is a different one.
    assert_eq!(unblock(&gw, json!({"sub": "alice"})).await, 404, "no any-issuer block exists");
    assert_eq!(unblock(&gw, json!({"sub": "alice", "iss": ISSUER})).await, 200);
    assert_eq!(api_status(&gw, &alice).await, 200);
    assert!(refresh_active(&gw).await, "unblocked");
    assert_eq!(list(&gw).await.len(), 1, "the other issuer's block stays");

    // Any issuer, with an expiry in seconds.
    let v = block(&gw, json!({"sub": "alice", "expires_in": 60})).await;
    assert_eq!(v["expires_at"].as_u64().unwrap() - v["created_at"].as_u64().unwrap(), 60);
    assert_invalid_token(&gw, "any-issuer block", &alice).await;
    // Case and look-alikes do not match: values compare byte for byte.
    block(&gw, json!({"sub": "SVC"})).await;
    assert_eq!(api_status(&gw, &svc).await, 200);
}

#[tokio::test]
async fn blocks_survive_a_restart_of_the_embedded_store() {
    let (_up, gw) = gateway("").await;
    let (alice, _) = password_tokens(&gw).await;
    let svc = svc_token(&gw).await;
    block(&gw, json!({"sub": "alice"})).await;
    block(&gw, json!({"jti": jti(&svc)})).await;
    let gw = gw.restart().await;
    assert_invalid_token(&gw, "sub block after restart", &alice).await;
    assert_invalid_token(&gw, "jti block after restart", &svc).await;
    assert_eq!(list(&gw).await.len(), 2);
    assert_eq!(api_status(&gw, &svc_token(&gw).await).await, 200);
}

#[tokio::test]
async fn the_blocks_api_is_off_without_a_key_hash() {
    let (_up, gw) = setup().await;
    let body = json!({"sub": "alice"});
    for key in [None, Some(ADMIN_KEY), Some("")] {
        let (status, v) = api(&gw, "POST", key, Some(body.clone())).await;
        assert_eq!((status, v["error"].as_str()), (403, Some("access_denied")), "{v}");
    }
    let (status, _) = api(&gw, "GET", Some(ADMIN_KEY), None).await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn the_blocks_api_wants_its_key_in_one_form_only() {
    let extra = "[rate_limit]\nclient_failures = 4\nclient_failures_window = \"1h\"\nip_burst = 1000\n";
    let (_up, gw) = gateway(extra).await;
    let http = reqwest::Client::new();
    let body = json!({"sub": "mallory"});
    let send = async |auth: Option<&str>, query: &str| {
        let mut req = http.post(gw.admin_url(&format!("/blocks{query}"))).json(&body);
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let www = resp.headers().get("www-authenticate").map(|v| v.to_str().unwrap().to_string());
        let v: Value = resp.json().await.unwrap();
        (status, www, v)
    };
    let right = format!("Bearer {ADMIN_KEY}");
    // No key, another scheme, the scheme in another case, the key alone: no key at all.
    for auth in [
        None,
        Some(format!("Basic {}", b64(format!("admin:{ADMIN_KEY}").as_bytes()))),
        Some(format!("bearer {ADMIN_KEY}")),
        Some(format!("BEARER {ADMIN_KEY}")),
        Some(ADMIN_KEY.to_string()),
        Some(format!("Bearer  {ADMIN_KEY}")),
    ] {
        let (status, www, v) = send(auth.as_deref(), "").await;
        assert_eq!((status, v["error"].as_str()), (401, Some("unauthorized")), "{auth:?}: {v}");
        assert_eq!(www.as_deref(), Some("Bearer realm=\"portcullis admin\""), "{auth:?}");
    }
    // The key in the query, alone or as well: refused before anything is checked.
    for query in [format!("?access_token={ADMIN_KEY}"), format!("?key={ADMIN_KEY}"), "?".to_string(), "?x".to_string()]
    {
        let (status, _, v) = send(Some(&right), &query).await;
        assert_eq!((status, v["error"].as_str()), (400, Some("invalid_request")), "{query}: {v}");
    }
    assert!(list(&gw).await.is_empty(), "nothing was stored so far");
    // Wrong keys: 401 invalid_token, and after client_failures of them, 429 even for the right one.
    for wrong in ["Bearer wrong", "Bearer other-secreT", &format!("Bearer {}", "k".repeat(4096))] {
        let (status, www, v) = send(Some(wrong), "").await;
        assert_eq!((status, v["error"].as_str()), (401, Some("invalid_token")), "{v}");
        assert!(www.unwrap().contains("error=\"invalid_token\""));
    }
    let (status, _, v) = send(Some(&right), "").await;
    assert_eq!(status, 201, "{v}");
    let (status, _, _) = send(Some("Bearer wrong"), "").await;
    assert_eq!(status, 401);
    let (status, _, _) = send(Some("Bearer wrong"), "").await;
    assert_eq!(status, 429, "locked out after 4 wrong keys (the right one gave its unit back)");
    let resp = http.get(gw.admin_url("/blocks")).bearer_auth(ADMIN_KEY).send().await.unwrap();
    assert_eq!(resp.status(), 429, "the right key too, from this source");
    assert!(resp.headers().contains_key("retry-after"));
    assert_eq!(counter(&gw, "portcullis_rate_limited_total{endpoint=\"admin\"}").await, 2.0);
    let resp = http.put(gw.admin_url("/blocks")).bearer_auth(ADMIN_KEY).send().await.unwrap();
    assert_eq!(resp.status(), 405);
    assert_eq!(resp.headers()["allow"], "GET, POST, DELETE");
}

#[tokio::test]
async fn garbage_block_requests_are_refused_and_change_nothing() {
    let (_up, gw) = gateway("").await;
    let http = reqwest::Client::new();
    let raw = async |content_type: &str, body: Vec<u8>| {
        let resp = http
            .post(gw.admin_url("/blocks"))
            .bearer_auth(ADMIN_KEY)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let v: Value = resp.json().await.unwrap();
        assert!(v["error"].is_string(), "{v}");
        status
    };
    let j = "application/json";
    assert_eq!(raw("application/x-www-form-urlencoded", b"sub=alice".to_vec()).await, 400);
    assert_eq!(raw("text/plain", br#"{"sub":"alice"}"#.to_vec()).await, 400);
    // A body in a charset where its bytes are not its text, and two Content-Types
    // (black-box notes, stop 34: both were read as UTF-8 JSON).
    assert_eq!(raw("application/json; charset=utf-16", br#"{"sub":"alice"}"#.to_vec()).await, 400);
    let two = http
        .post(gw.admin_url("/blocks"))
        .bearer_auth(ADMIN_KEY)
        .header("content-type", "application/json")
        .header("content-type", "text/plain")
        .body(r#"{"sub":"alice"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(two.status(), 400);
    assert_eq!(raw(j, b"not json".to_vec()).await, 400);
    assert_eq!(raw(j, br#"{"sub":"alice","sub":"bob"}"#.to_vec()).await, 400, "duplicate key");
    assert_eq!(raw(j, br#"{"sub":"alice","admin":true}"#.to_vec()).await, 400, "unknown field");
    assert_eq!(raw(j, br#"{"sub":"alice","jti":"x"}"#.to_vec()).await, 400, "both");
    assert_eq!(raw(j, br#"{"iss":"https://idp"}"#.to_vec()).await, 400, "neither");
    assert_eq!(raw(j, br#"{"sub":"ali\u0000ce"}"#.to_vec()).await, 400, "control character");
    assert_eq!(raw(j, br#"{"sub":"alice\u200b"}"#.to_vec()).await, 400, "zero-width space");
    assert_eq!(raw(j, br#"{"sub":"alice "}"#.to_vec()).await, 400, "trailing space");
    // The rule trusted issuers' tokens are held to (src/text.rs): tag characters, C1
    // controls, line separators, padding of any Unicode space.
    for (body, why) in [
        (r#"{"sub":"a\udb40\udc41b"}"#, "tag character U+E0041"),
        (r#"{"sub":"a\udb40\udc01b"}"#, "language tag U+E0001"),
        (r#"{"jti":"j\u0085x"}"#, "C1 control NEL"),
        (r#"{"sub":"al\u2028ice"}"#, "line separator"),
        (r#"{"sub":"\u00a0alice"}"#, "leading no-break space"),
        (r#"{"sub":"alice\u3000"}"#, "trailing ideographic space"),
        (r#"{"sub":"alice","iss":"https://idp\u2066"}"#, "bidi isolate in iss"),
    ] {
        assert_eq!(raw(j, body.as_bytes().to_vec()).await, 400, "{why}");
    }
    assert_eq!(raw(j, br#"{"sub":"\ud800"}"#.to_vec()).await, 400, "lone surrogate");
    assert_eq!(raw(j, br#"{"sub":"alice","expires_in":0}"#.to_vec()).await, 400);
    assert_eq!(raw(j, br#"{"sub":"alice","expires_in":-5}"#.to_vec()).await, 400);
    assert_eq!(raw(j, br#"{"sub":"alice","expires_in":1e99}"#.to_vec()).await, 400);
    assert_eq!(raw(j, br#"{"sub":"alice","expires_in":18446744073709551615}"#.to_vec()).await, 400);
    let long = format!(r#"{{"jti":"{}"}}"#, "a".repeat(257));
    assert_eq!(raw(j, long.into_bytes()).await, 400, "oversized id");
    let token = svc_token(&gw).await;
    assert_eq!(raw(j, format!(r#"{{"jti":"{token}"}}"#).into_bytes()).await, 400, "a whole token");
    let huge = format!(r#"{{"sub":"alice","reason":"{}"}}"#, "r".repeat(10_000));
    assert_eq!(raw(j, huge.into_bytes()).await, 413);
    assert!(list(&gw).await.is_empty(), "nothing was stored");
    assert_eq!(api_status(&gw, &token).await, 200);
}

/// 1,000 random requests from a property-based generator (methods, Authorization forms,
/// content types, JSON-ish bodies of the API's own fields and values, raw bytes): never a
/// 5xx, always a JSON answer with `no-store`, and a stored block only from a well-formed
/// request with the right key.
#[tokio::test]
async fn random_requests_get_a_clear_json_answer_and_never_a_5xx() {
    use proptest::prelude::*;
    use proptest::strategy::ValueTree;
    use proptest::test_runner::{Config, RngSeed, TestRunner};

    let (_up, gw) = gateway("[rate_limit]\nenabled = false\n").await;
    let field = proptest::sample::select(vec!["jti", "sub", "iss", "expires_in", "reason", "admin", "JTI", ""]);
    let value = prop_oneof![
        3 => "[a-zA-Z0-9_.:/-]{0,12}".prop_map(Value::String),
        1 => ".{0,20}".prop_map(Value::String),
        1 => any::<i64>().prop_map(|n| json!(n)),
        1 => any::<u64>().prop_map(|n| json!(n)),
        1 => Just(Value::Null),
        1 => Just(json!([])),
        1 => Just(json!({"jti": "nested"})),
    ];
    let object = proptest::collection::vec((field, value), 0..4).prop_map(|pairs| {
        // Written by hand, so a field may repeat.
        let inner: Vec<String> = pairs.iter().map(|(k, v)| format!("{}:{v}", Value::String(k.to_string()))).collect();
        format!("{{{}}}", inner.join(",")).into_bytes()
    });
    let good = (proptest::sample::select(vec!["jti", "sub"]), "[a-z0-9]{1,10}")
        .prop_map(|(k, v)| format!(r#"{{"{k}":"{v}","reason":"r"}}"#).into_bytes());
    let body = prop_oneof![4 => object, 3 => good, 1 => proptest::collection::vec(any::<u8>(), 0..64)];
    let method = proptest::sample::select(vec!["GET", "POST", "POST", "DELETE", "PUT", "PATCH"]);
    let auth = proptest::sample::select(vec![
        Some(format!("Bearer {ADMIN_KEY}")),
        Some(format!("Bearer {ADMIN_KEY}")),
        Some("Bearer wrong".to_string()),
        Some(format!("bearer {ADMIN_KEY}")),
        Some(format!("Basic {ADMIN_KEY}")),
        None,
    ]);
    let content_type = proptest::sample::select(vec![
        Some("application/json"),
        Some("application/json; charset=utf-8"),
        Some("text/plain"),
        None,
    ]);
    let query = proptest::sample::select(vec!["", "", "", "?key=x", "?"]);
    let strategy = (method, auth, content_type, body, query);
    let mut runner = TestRunner::new(Config { rng_seed: RngSeed::Fixed(16), ..Config::default() });
    let http = reqwest::Client::new();
    let mut created = 0;
    for _ in 0..1000 {
        let (method, auth, ctype, body, query) = strategy.new_tree(&mut runner).unwrap().current();
        let mut req =
            http.request(method.parse().unwrap(), gw.admin_url(&format!("/blocks{query}"))).body(body.clone());
        if let Some(a) = &auth {
            req = req.header("authorization", a);
        }
        if let Some(c) = ctype {
            req = req.header("content-type", c);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let label = format!("{method} {auth:?} {ctype:?} {query} {}", String::from_utf8_lossy(&body));
        assert!(status < 500, "{label}: {status}");
        assert_eq!(resp.headers()["content-type"], "application/json", "{label}");
        assert_eq!(resp.headers()["cache-control"], "no-store", "{label}");
        let v: Value = resp.json().await.unwrap_or_else(|e| panic!("{label}: not JSON ({e})"));
        if status == 201 {
            created += 1;
            let right = auth.as_deref() == Some(format!("Bearer {ADMIN_KEY}").as_str());
            assert!(method == "POST" && right && query.is_empty(), "{label}: {v}");
            assert!(v["value"].as_str().is_some_and(|s| !s.is_empty() && !s.chars().any(char::is_control)), "{v}");
        } else if status != 200 {
            assert!(v["error"].is_string(), "{label}: {v}");
        }
    }
    assert!(created > 5, "the generator should also make good blocks ({created})");
    assert_eq!(api_status(&gw, &svc_token(&gw).await).await, 200, "the proxy path is unharmed");
}
