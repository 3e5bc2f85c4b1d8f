//! What an on-call engineer reads: the access log (request id, client address, host, bytes,
//! upstream), security events, fatal start errors in JSON, the metrics (reload state,
//! certificate expiry, connections, in-flight requests, process_*), the alert rules under
//! promtool, and the forwarding headers an upstream gets from trusted and untrusted peers.

mod common;

use common::*;
use serde_json::Value;
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TRUST_LOOPBACK: &str = "[proxy]\ntrusted_proxies = [\"127.0.0.1\"]\n";

fn is_fresh_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A raw HTTP/1.1 request to the plaintext listener with `headers` (written as given), and
/// the response with the upstream's echo.
async fn plain(gw: &TestGateway, path: &str, headers: &[(&str, &str)]) -> (RawResponse, Echo) {
    let mut head = format!("GET {path} HTTP/1.1\r\nHost: gw.example\r\nConnection: close\r\n");
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    let resp = raw_plain(gw.http, &head, b"").await;
    let echo = resp.echo();
    (resp, echo)
}

// ---------------------------------------------------------------------------------------
// Request id

#[tokio::test]
async fn an_untrusted_callers_request_id_is_replaced_by_a_fresh_one_sent_upstream_and_back() {
    let (_up, gw) = setup().await;
    for headers in [
        vec![],
        vec![("X-Request-Id", "attacker-chosen")],
        vec![("x-request-id", "a"), ("X-REQUEST-ID", "b")],
        vec![("X-Request-Id", "")],
    ] {
        let (resp, echo) = plain(&gw, "/public/rid", &headers).await;
        let sent = echo.header_all("x-request-id");
        assert_eq!(sent.len(), 1, "{headers:?}: {echo:?}");
        assert!(is_fresh_id(sent[0]), "{headers:?}: {sent:?}");
        assert_eq!(resp.header("x-request-id"), Some(sent[0]), "{headers:?}");
    }
    // Every answer carries one, the gateway's own too, and no two are alike.
    let a = raw_plain(gw.http, "GET /nowhere HTTP/1.1\r\nHost: x\r\nConnection: close\r\n", b"").await;
    let b = raw_plain(gw.http, "GET /nowhere HTTP/1.1\r\nHost: x\r\nConnection: close\r\n", b"").await;
    assert_eq!((a.status, b.status), (404, 404));
    let (a, b) = (a.header("x-request-id").unwrap(), b.header("x-request-id").unwrap());
    assert!(is_fresh_id(a) && is_fresh_id(b) && a != b, "{a} {b}");
    // Other spellings of the name never reach the upstream beside ours.
    let (_, echo) = plain(&gw, "/public/rid", &[("X_Request_Id", "spoofed"), ("x.request.id", "spoofed")]).await;
    assert!(!echo.headers.iter().any(|(_, v)| v == "spoofed"), "{echo:?}");
}

#[tokio::test]
async fn a_trusted_proxys_request_id_is_kept_only_when_it_is_one_well_formed_value() {
    let up = EchoUpstream::start().await;
    let gw = TestGateway::start_with(up.addr, TRUST_LOOPBACK).await;
    let max = "a".repeat(128);
    for good in ["0f8c2a4e-7b1d-4c3e-9a55-1e2f3a4b5c6d", "req_42.b:7", max.as_str()] {
        let (resp, echo) = plain(&gw, "/public/rid", &[("X-Request-Id", good)]).await;
        assert_eq!(echo.header_all("x-request-id"), vec![good]);
        assert_eq!(resp.header("x-request-id"), Some(good));
    }
    let long = "a".repeat(129);
    for bad in [long.as_str(), "a b", "a,b", "a;b", "<script>", "%41", "a\"b"] {
        let (resp, echo) = plain(&gw, "/public/rid", &[("X-Request-Id", bad)]).await;
        let sent = echo.header_all("x-request-id");
        assert!(sent.len() == 1 && is_fresh_id(sent[0]), "{bad:?}: {sent:?}");
        assert_eq!(resp.header("x-request-id"), Some(sent[0]));
    }
    // A Connection header naming it cannot take the id away from the upstream, kept or fresh.
    let (resp, echo) = plain(&gw, "/public/rid", &[("X-Request-Id", "trace-7"), ("Connection", "x-request-id")]).await;
    assert_eq!(echo.header_all("x-request-id"), vec!["trace-7"], "{echo:?}");
    assert_eq!(resp.header("x-request-id"), Some("trace-7"));
    let (_, echo) = plain(&gw, "/public/rid", &[("Connection", "X-Request-Id, keep-alive")]).await;
    let sent = echo.header_all("x-request-id");
    assert!(sent.len() == 1 && is_fresh_id(sent[0]), "{sent:?}");
    // X-Forwarded-Proto from a trusted proxy: kept when it says http or https, once;
    // replaced by this hop's otherwise.
    for (sent, want) in [
        (vec!["https"], "https"),
        (vec!["https, http"], "https, http"),
        (vec!["javascript"], "http"),
        (vec!["https", "https"], "http"),
        (vec!["ftp"], "http"),
    ] {
        let headers: Vec<(&str, &str)> = sent.iter().map(|v| ("X-Forwarded-Proto", *v)).collect();
        let (_, echo) = plain(&gw, "/public/proto", &headers).await;
        assert_eq!(echo.header_all("x-forwarded-proto"), vec![want], "{sent:?}");
    }
    // Two values, in any case, are no value.
    let (_, echo) = plain(&gw, "/public/rid", &[("X-Request-Id", "one"), ("x-request-ID", "two")]).await;
    assert!(is_fresh_id(echo.header_all("x-request-id")[0]), "{echo:?}");
    // HTTP/2: one kept, two split fields replaced.
    let (status, body) = h2_request(&gw, "GET", &gw.url("/public/h2"), &[("x-request-id", b"h2-trace-1")]).await;
    assert_eq!(status, 200);
    let echo: Echo = serde_json::from_slice(&body).unwrap();
    assert_eq!(echo.header_all("x-request-id"), vec!["h2-trace-1"]);
    let (_, body) =
        h2_request(&gw, "GET", &gw.url("/public/h2"), &[("x-request-id", b"a"), ("x-request-id", b"b")]).await;
    let echo: Echo = serde_json::from_slice(&body).unwrap();
    let sent = echo.header_all("x-request-id");
    assert!(sent.len() == 1 && is_fresh_id(sent[0]), "{sent:?}");
}

// ---------------------------------------------------------------------------------------
// Forwarding headers (docs/operations.md, "Forwarding headers")

#[tokio::test]
async fn forwarded_and_x_real_ip_from_an_untrusted_peer_are_replaced_by_this_hops() {
    let (_up, gw) = setup().await;
    let spoofs = [
        ("Forwarded", "for=6.6.6.6;proto=https"),
        ("FORWARDED", "for=\"[2001:db8::6]\""),
        ("X-Real-IP", "6.6.6.6"),
        ("x-real-ip", "7.7.7.7"),
        ("X-Forwarded-For", "6.6.6.6"),
    ];
    let (_, echo) = plain(&gw, "/public/f", &spoofs).await;
    assert_eq!(echo.header_all("forwarded"), vec!["for=127.0.0.1;proto=http"], "{echo:?}");
    assert_eq!(echo.header_all("x-real-ip"), vec!["127.0.0.1"], "{echo:?}");
    assert_eq!(echo.header_all("x-forwarded-for"), vec!["127.0.0.1"], "{echo:?}");
    // Other spellings are not kept either.
    let (_, echo) = plain(&gw, "/public/f", &[("X_Real_IP", "6.6.6.6"), ("Forwarded_", "for=6.6.6.6")]).await;
    assert!(!echo.headers.iter().any(|(_, v)| v.contains("6.6.6.6")), "{echo:?}");
    // HTTP/2 over TLS: the same, with proto=https.
    let h2: [(&str, &[u8]); 3] =
        [("forwarded", b"for=6.6.6.6"), ("forwarded", b"for=7.7.7.7"), ("x-real-ip", b"6.6.6.6")];
    let (status, body) = h2_request(&gw, "GET", &gw.url("/public/h2"), &h2).await;
    assert_eq!(status, 200);
    let echo: Echo = serde_json::from_slice(&body).unwrap();
    assert_eq!(echo.header_all("forwarded"), vec!["for=127.0.0.1;proto=https"], "{echo:?}");
    assert_eq!(echo.header_all("x-real-ip"), vec!["127.0.0.1"], "{echo:?}");
}

#[tokio::test]
async fn a_trusted_proxys_forwarded_is_rebuilt_from_the_vouched_chain_and_x_real_ip_names_the_client() {
    let up = EchoUpstream::start().await;
    let gw = TestGateway::start_with(up.addr, TRUST_LOOPBACK).await;
    let (_, echo) = plain(
        &gw,
        "/public/f",
        &[
            ("Forwarded", "for=203.0.113.9;proto=https"),
            ("FORWARDED", "For=\"[2001:db8::1]\""),
            ("X-Forwarded-For", "203.0.113.9"),
            ("X-Real-IP", "6.6.6.6"),
            ("x-real-ip", "7.7.7.7"),
        ],
    )
    .await;
    // Review 23.3: rebuilt from the chain X-Forwarded-For vouches for; the caller's
    // Forwarded (which a trusted proxy passes on unchanged) is not kept.
    assert_eq!(echo.header_all("forwarded"), vec!["for=203.0.113.9, for=127.0.0.1;proto=http"], "{echo:?}");
    // The address the gateway acted on: the client the trusted proxy names.
    assert_eq!(echo.header_all("x-real-ip"), vec!["203.0.113.9"], "{echo:?}");
    // Without X-Forwarded-For, the peer itself.
    let (_, echo) = plain(&gw, "/public/f", &[("X-Real-IP", "6.6.6.6")]).await;
    assert_eq!(echo.header_all("x-real-ip"), vec!["127.0.0.1"]);
    assert_eq!(echo.header_all("forwarded"), vec!["for=127.0.0.1;proto=http"]);
    // A Forwarded that the Connection header names is hop-by-hop: not kept.
    let (_, echo) = plain(&gw, "/public/f", &[("Connection", "Forwarded"), ("Forwarded", "for=6.6.6.6")]).await;
    assert_eq!(echo.header_all("forwarded"), vec!["for=127.0.0.1;proto=http"], "{echo:?}");
    // HTTP/2: split fields are one list.
    let h2: [(&str, &[u8]); 3] =
        [("forwarded", b"for=198.51.100.1"), ("forwarded", b"for=198.51.100.2"), ("x-forwarded-for", b"198.51.100.2")];
    let (_, body) = h2_request(&gw, "GET", &gw.url("/public/h2"), &h2).await;
    let echo: Echo = serde_json::from_slice(&body).unwrap();
    assert_eq!(echo.header_all("forwarded"), vec!["for=198.51.100.2, for=127.0.0.1;proto=https"], "{echo:?}");
    assert_eq!(echo.header_all("x-real-ip"), vec!["198.51.100.2"]);
}

// ---------------------------------------------------------------------------------------
// Metrics

async fn metrics_text(gw: &TestGateway) -> String {
    let text = reqwest::get(gw.admin_url("/metrics")).await.unwrap().text().await.unwrap();
    // Valid exposition format, whatever the series.
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
    text
}

fn value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')).and_then(|v| v.parse().ok()))
}

async fn gauge(gw: &TestGateway, series: &str) -> f64 {
    value(&metrics_text(gw).await, series).unwrap_or_else(|| panic!("no {series}"))
}

#[tokio::test]
async fn last_reload_successful_turns_0_on_a_refused_file_and_back_to_1_on_a_good_one() {
    let (_up, gw) = setup().await;
    assert_eq!(gauge(&gw, "portcullis_config_last_reload_successful").await, 1.0);
    let good = std::fs::read_to_string(&gw.config_path).unwrap();
    write_atomic(&gw.config_path, &good.replacen("upstream_timeout = \"2s\"", "upstream_timeout = \"soon\"", 1));
    wait_until("the refused reload", || async { gauge(&gw, "portcullis_config_last_reload_successful").await == 0.0 })
        .await;
    write_atomic(&gw.config_path, &good.replacen("upstream_timeout = \"2s\"", "upstream_timeout = \"3s\"", 1));
    wait_until("the good reload", || async { gauge(&gw, "portcullis_config_last_reload_successful").await == 1.0 })
        .await;
}

#[tokio::test]
async fn certificate_expiry_is_exported_per_tls_listener() {
    let (_up, gw) = setup().await;
    let text = metrics_text(&gw).await;
    let label = format!("{{listener=\"{}\"}}", gw.https);
    let not_after = value(&text, &format!("portcullis_tls_cert_not_after_timestamp_seconds{label}")).unwrap();
    let left = value(&text, &format!("portcullis_tls_cert_expiry_seconds{label}")).unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    assert!(left > 0.0 && (not_after - now - left).abs() < 5.0, "{not_after} {left}");
    // The certificate's own notAfter.
    let expected = portcullis::metrics::certificate_not_after(&gw.pki.cert_path).unwrap();
    assert_eq!(not_after, expected as f64);
    // The plaintext listener has no certificate.
    assert!(!text.contains(&format!("listener=\"{}\"", gw.http)), "{text}");
}

#[tokio::test]
async fn open_connections_and_in_flight_requests_are_gauges() {
    let (_up, gw) = setup().await;
    let conns = "portcullis_open_connections";
    let flying = "portcullis_requests_in_flight";
    assert_eq!(gauge(&gw, flying).await, 0.0);
    let before = gauge(&gw, conns).await;
    // A request whose body is half sent: in flight until the rest arrives.
    let mut s = tokio::net::TcpStream::connect(gw.http).await.unwrap();
    s.write_all(b"POST /public/slowbody HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\nConnection: close\r\n\r\n12345")
        .await
        .unwrap();
    wait_until("one connection open", || async { gauge(&gw, conns).await == before + 1.0 }).await;
    wait_until("one request in flight", || async { gauge(&gw, flying).await == 1.0 }).await;
    s.write_all(b"67890").await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    assert_eq!(statuses(&buf), vec![200]);
    drop(s);
    wait_until("no request in flight", || async { gauge(&gw, flying).await == 0.0 }).await;
    wait_until("the connection closed", || async { gauge(&gw, conns).await == before }).await;
}

#[tokio::test]
async fn process_metrics_and_latency_buckets_past_the_upstream_timeout_are_exported() {
    let (_up, gw) = setup().await;
    assert_eq!(plain(&gw, "/public/lat", &[]).await.0.status, 200);
    let text = metrics_text(&gw).await;
    for name in ["process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds", "process_max_fds"] {
        assert!(value(&text, name).is_some_and(|v| v >= 0.0), "{name}: {text}");
        assert!(text.contains(&format!("# TYPE {name} ")), "{name}");
    }
    assert!(value(&text, "process_resident_memory_bytes").unwrap() > 0.0);
    assert!(value(&text, "process_open_fds").unwrap() > 0.0);
    let start = value(&text, "process_start_time_seconds").unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    assert!(start > now - 24.0 * 3600.0 && start <= now + 1.0, "{start}");
    // Buckets beyond the 30 s default upstream_timeout, up to 10 minutes.
    for le in ["30", "60", "600"] {
        let series = format!("portcullis_upstream_latency_seconds_bucket{{route=\"/public\",le=\"{le}\"}}");
        assert_eq!(value(&text, &series), Some(1.0), "{series}: {text}");
    }
}

// ---------------------------------------------------------------------------------------
// Alert rules under promtool

#[test]
fn the_shipped_alert_rules_pass_promtool_check_and_their_unit_tests() {
    let promtool = std::env::var("PROMTOOL").unwrap_or_else(|_| "promtool".into());
    if std::process::Command::new(&promtool).arg("--version").output().is_err() {
        skip(
            "observability::the_shipped_alert_rules_pass_promtool_check_and_their_unit_tests",
            "promtool not found (Debian package prometheus)",
        );
        return;
    }
    let ops = Path::new(env!("CARGO_MANIFEST_DIR")).join("ops");
    for args in [["check", "rules", "alerts.yml"], ["test", "rules", "alerts.test.yml"]] {
        let out = std::process::Command::new(&promtool).args(args).current_dir(&ops).output().unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The documented alert is the shipped one.
    let docs = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/operations.md")).unwrap();
    assert!(docs.contains("portcullis_config_last_reload_successful == 0"));
    assert!(!docs.contains("increase(portcullis_config_reloads_total{result=\"failed\"}[15m]) > 0"));
}

// ---------------------------------------------------------------------------------------
// The binary: access log fields, security events, fatal errors in JSON

fn security_event(v: &Value, name: &str) -> bool {
    v["level"] == "WARN" && v["fields"]["security_event"] == name
}

#[tokio::test]
async fn the_access_line_names_request_id_client_host_bytes_and_upstream_and_security_events_are_warnings() {
    let up = EchoUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(dir.path());
    let config_path = dir.path().join("gateway.toml");
    let extra =
        format!("{TRUST_LOOPBACK}[rate_limit]\nip_burst = 3\nfailure_cost = 1\nip_rate = 1\nip_window = \"1h\"\n");
    // webapp rotates strictly here, so a second use of its refresh token is reuse at once.
    let text = config_toml(dir.path(), &pki, up.addr, &extra).replacen(
        "id = \"webapp\"\n",
        "id = \"webapp\"\nrefresh_reuse_interval = \"0s\"\n",
        1,
    );
    std::fs::write(&config_path, text).unwrap();
    let config = config_path.to_str().unwrap();
    let bin = Binary::run(&["--log-format", "json", "serve", "--config", config]);
    let listening = |scheme: &'static str| {
        move |v: &Value| v["fields"]["message"] == "listening" && v["fields"]["scheme"] == scheme
    };
    let http =
        bin.wait_line("listening http", listening("http")).await["fields"]["address"].as_str().unwrap().to_string();
    let https =
        bin.wait_line("listening https", listening("https")).await["fields"]["address"].as_str().unwrap().to_string();
    let https_port = https.rsplit_once(':').unwrap().1.to_string();
    let url = |p: &str| format!("https://localhost:{https_port}{p}");

    // A proxied POST through a trusted balancer that names its client and a request id.
    let head = "POST /public/obs?secret=1 HTTP/1.1\r\nHost: app.example\r\nConnection: close\r\n\
                X-Forwarded-For: 203.0.113.9\r\nX-Request-Id: trace-42\r\nContent-Length: 11\r\n";
    let resp = raw_plain(http.parse().unwrap(), head, b"hello world").await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("x-request-id"), Some("trace-42"));
    let line = bin
        .wait_line("the access line", |v| v["target"] == "portcullis::access" && v["fields"]["path"] == "/public/obs")
        .await;
    let f = &line["fields"];
    assert_eq!(f["request_id"], "trace-42", "{f}");
    assert_eq!((f["peer"].as_str(), f["client"].as_str()), (Some("127.0.0.1"), Some("203.0.113.9")), "{f}");
    assert_eq!((f["method"].as_str(), f["host"].as_str()), (Some("POST"), Some("app.example")), "{f}");
    assert_eq!(f["bytes_in"], 11, "{f}");
    assert_eq!(f["bytes_out"].as_u64(), Some(resp.body.len() as u64), "{f}");
    assert_eq!(f["complete"], true, "{f}");
    assert_eq!(f["upstream"].as_str(), Some(up.addr.to_string().as_str()), "{f}");
    assert_eq!((f["route"].as_str(), f["status"].as_u64()), (Some("/public"), Some(200)), "{f}");

    // Security events, each a WARN with its reason.
    let c = https_client(&pki.ca_pem, false);
    let token = |form: Vec<(&'static str, String)>, client: &'static str, secret: &'static str, from: &'static str| {
        c.post(url("/oauth/token")).basic_auth(client, Some(secret)).header("x-forwarded-for", from).form(&form).send()
    };
    let resp = token(vec![("grant_type", "client_credentials".into())], "svc", "wrong", "198.51.100.1").await.unwrap();
    assert_eq!(resp.status(), 401);
    bin.wait_line("wrong client secret", |v| {
        security_event(v, "wrong_client_secret") && v["fields"]["client_id"] == "svc"
    })
    .await;

    let form =
        vec![("grant_type", "password".into()), ("username", "alice".into()), ("password", ALICE_PASSWORD.into())];
    let v: Value = token(form, "webapp", SVC_SECRET, "198.51.100.2").await.unwrap().json().await.unwrap();
    let refresh = v["refresh_token"].as_str().unwrap().to_string();
    for (from, want) in [("198.51.100.3", 200), ("198.51.100.4", 400)] {
        let form = vec![("grant_type", "refresh_token".into()), ("refresh_token", refresh.clone())];
        assert_eq!(token(form, "webapp", SVC_SECRET, from).await.unwrap().status(), want);
    }
    bin.wait_line("refresh reuse", |v| security_event(v, "refresh_token_reuse")).await;

    // Review 23.12: seven refusals in a row, one throttled spell, one line (checked below).
    for _ in 0..10 {
        let _ = token(vec![("grant_type", "client_credentials".into())], "svc", SVC_SECRET, "198.51.100.5").await;
    }
    bin.wait_line("rate limit", |v| security_event(v, "rate_limited") && v["fields"]["source"] == "198.51.100.5").await;

    // The login form posts the authorization request with it, and a forged CSRF token.
    let mut form = bare_spa_query();
    form.extend([("action", "login"), ("username", "alice"), ("password", "x"), ("csrf", "forged")]);
    let resp =
        c.post(url("/oauth/authorize")).header("x-forwarded-for", "198.51.100.6").form(&form).send().await.unwrap();
    assert!(resp.status().is_client_error(), "{}", resp.status());
    bin.wait_line("CSRF failure", |v| security_event(v, "csrf_failure")).await;
    // Everything logged before the CSRF line has been read by now.
    let spells = bin
        .json()
        .iter()
        .filter(|v| security_event(v, "rate_limited") && v["fields"]["source"] == "198.51.100.5")
        .count();
    assert_eq!(spells, 1, "one rate_limited line per throttled spell, not per refusal");

    // Review 23.13: a replayed authorization code is a security event.
    let mut browser = Browser::with_ca(&pki.ca_pem);
    let q = "response_type=code&client_id=webapp&redirect_uri=https%3A%2F%2Fapp.test%2Fcallback&state=s";
    let login = browser.get(&url(&format!("/oauth/authorize?{q}"))).await;
    let consent = browser
        .submit_to(&url("/oauth/authorize"), &login, &[("username", "alice"), ("password", ALICE_PASSWORD)])
        .await;
    let done = browser.submit_to(&url("/oauth/authorize"), &consent, &[("decision", "allow")]).await;
    let code = done.location_param("code").unwrap_or_else(|| panic!("no code: {}", done.body));
    let exchange = vec![
        ("grant_type", "authorization_code".to_string()),
        ("code", code),
        ("redirect_uri", "https://app.test/callback".to_string()),
    ];
    assert_eq!(token(exchange.clone(), "webapp", SVC_SECRET, "198.51.100.8").await.unwrap().status(), 200);
    assert_eq!(token(exchange, "webapp", SVC_SECRET, "198.51.100.8").await.unwrap().status(), 400);
    bin.wait_line("code replay", |v| security_event(v, "code_replay") && v["fields"]["client_id"] == "webapp").await;

    // A client that leaves in the middle of a large body: its line says so, with what was sent.
    let form = vec![("grant_type", "client_credentials".into())];
    let v: Value = token(form, "svc", SVC_SECRET, "198.51.100.7").await.unwrap().json().await.unwrap();
    let bearer = v["access_token"].as_str().unwrap().to_string();
    let mut s = tokio::net::TcpStream::connect(&http).await.unwrap();
    let req = format!("GET /big/50000000 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {bearer}\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut got = vec![0u8; 200_000];
    s.read_exact(&mut got).await.unwrap();
    drop(s);
    let line = bin
        .wait_line("the cut line", |v| v["target"] == "portcullis::access" && v["fields"]["path"] == "/big/50000000")
        .await;
    let f = &line["fields"];
    assert_eq!((f["status"].as_u64(), f["complete"].as_bool()), (Some(200), Some(false)), "{f}");
    assert!(f["bytes_out"].as_u64().is_some_and(|n| n < 50_000_000), "{f}");

    // A client that leaves before the upstream has answered: the request reached the
    // upstream, so it is in the log too (as 499, nothing sent), not lost with its future.
    let mut s = tokio::net::TcpStream::connect(&http).await.unwrap();
    let req = format!("DELETE /slow/3000 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {bearer}\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(s);
    let line = bin
        .wait_line("the unanswered line", |v| {
            v["target"] == "portcullis::access" && v["fields"]["path"] == "/slow/3000"
        })
        .await;
    let f = &line["fields"];
    assert_eq!((f["status"].as_u64(), f["complete"].as_bool()), (Some(499), Some(false)), "{f}");
    assert_eq!((f["method"].as_str(), f["bytes_out"].as_u64()), (Some("DELETE"), Some(0)), "{f}");
    assert_eq!(f["route"].as_str(), Some("-"), "{f}");

    // No Rust debug formatting, and no secret, anywhere.
    for l in bin.lines() {
        assert!(!l.contains("Some(") && !l.contains("None"), "{l}");
        for secret in [SVC_SECRET, ALICE_PASSWORD, refresh.as_str(), bearer.as_str()] {
            assert!(!l.contains(secret), "{secret:?} in {l}");
        }
    }
}

#[tokio::test]
async fn a_fatal_start_error_is_one_json_line_under_log_format_json() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.toml");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["--log-format", "json", "serve", "--config"])
        .arg(&missing)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(!lines.is_empty());
    for l in &lines {
        let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert_eq!(v["level"], "ERROR", "{l}");
        assert!(v["fields"]["error"].as_str().is_some_and(|e| e.contains("missing.toml")), "{l}");
    }
    // And a bind failure (the address is taken) too.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let up = EchoUpstream::start().await;
    let pki = Pki::create(dir.path());
    let text = config_toml(dir.path(), &pki, up.addr, "").replacen(
        "address = \"127.0.0.1:0\"",
        &format!("address = \"{}\"", taken.local_addr().unwrap()),
        1,
    );
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["--log-format", "json", "serve", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<Value> =
        stderr.lines().map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect();
    assert!(
        errors.iter().any(
            |v| v["level"] == "ERROR" && v["fields"]["error"].as_str().is_some_and(|e| e.contains("cannot listen"))
        ),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_rate_limited_token_request_is_counted_under_the_grant_it_asked_for() {
    let up = EchoUpstream::start().await;
    let extra = "[rate_limit]\nip_burst = 2\nfailure_cost = 1\nip_rate = 1\nip_window = \"1h\"\n";
    let gw = TestGateway::start_with(up.addr, extra).await;
    let _ = gw.token("svc", SVC_SECRET, None).await;
    let _ = gw.token("svc", SVC_SECRET, None).await;
    let (status, v) = token_request(&gw, Some(("svc", SVC_SECRET)), &[("grant_type", "client_credentials")]).await;
    assert_eq!((status, v["error"].as_str()), (429, Some("slow_down")), "{v}");
    let form = [("grant_type", "password"), ("username", "alice"), ("password", ALICE_PASSWORD)];
    let (status, _) = token_request(&gw, Some(("webapp", SVC_SECRET)), &form).await;
    assert_eq!(status, 429);
    let text = metrics_text(&gw).await;
    let series = |grant: &str| format!("portcullis_token_requests_total{{grant=\"{grant}\",outcome=\"slow_down\"}}");
    assert_eq!(value(&text, &series("client_credentials")), Some(1.0), "{text}");
    assert_eq!(value(&text, &series("password")), Some(1.0), "{text}");
    assert_eq!(value(&text, &series("none")), None, "{text}");
}

/// Review 23.11: X-Forwarded-For items with ports (Azure Application Gateway writes
/// `ip:port`, IPv6 as `[ip]:port`) name the client like plain addresses.
#[tokio::test]
async fn forwarded_for_items_with_ports_name_the_client() {
    let up = EchoUpstream::start().await;
    let gw = TestGateway::start_with(up.addr, TRUST_LOOPBACK).await;
    for (xff, client, fwd) in [
        ("203.0.113.9:5678", "203.0.113.9", "for=203.0.113.9, for=127.0.0.1;proto=http"),
        ("[2001:db8::9]:443", "2001:db8::9", "for=\"[2001:db8::9]\", for=127.0.0.1;proto=http"),
    ] {
        let (_, echo) = plain(&gw, "/public/f", &[("X-Forwarded-For", xff)]).await;
        assert_eq!(echo.header_all("x-real-ip"), vec![client], "{xff}: {echo:?}");
        assert_eq!(echo.header_all("forwarded"), vec![fwd], "{xff}: {echo:?}");
    }
}
