//! A real browser at /oauth/authorize: headless Chromium, driven over WebDriver by
//! chromedriver, signs in on the gateway's login page, grants consent, and lands on the
//! client's redirect URI with a code; the test exchanges that code (with its PKCE verifier)
//! at /oauth/token and uses the token through the proxy.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them). Without them the
//! test is skipped (listed at the end of `.ci/run`), unless `CI` is set, where it fails. `CHROME_BIN` and
//! `CHROMEDRIVER` override where they are looked for. The login page's screenshot is saved to
//! `target/artifacts/login.png` (with `login-failed.png` and `consent.png` beside it).

mod common;

use std::io::{Read, Write};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use common::*;
use fantoccini::elements::Element;
use fantoccini::error::CmdError;
use fantoccini::{Client, ClientBuilder, Locator};
use futures_util::FutureExt;
use serde_json::{Value, json};

/// Longest wait for any one page or element.
const STEP: Duration = Duration::from_secs(20);
/// Longest the whole browser flow may take before it is failed (and the browser still closed).
const WHOLE_FLOW: Duration = Duration::from_secs(150);
const CLIENT_ID: &str = "browser-app";
/// Markup characters in the name check that the pages escape it and the browser shows it as text.
const CLIENT_NAME: &str = "Tom & Jerry's <Browser> App";
const LOGIN_FAILED: &str = "The username or password is incorrect.";

// ---------------------------------------------------------------------------------------------
// Finding and running Chromium

struct Tools {
    chromium: PathBuf,
    chromedriver: PathBuf,
}

fn find_program(env: &str, names: &[&str]) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(env).filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs: Vec<PathBuf> = std::env::split_paths(&path).chain([PathBuf::from("/usr/bin")]).collect();
    names.iter().flat_map(|n| dirs.iter().map(move |d| d.join(n))).find(|p| p.is_file())
}

impl Tools {
    fn find() -> Option<Tools> {
        let chromium = find_program("CHROME_BIN", &["chromium", "chromium-browser", "google-chrome"]);
        let chromedriver = find_program("CHROMEDRIVER", &["chromedriver"]);
        match (chromium, chromedriver) {
            (Some(chromium), Some(chromedriver)) => Some(Tools { chromium, chromedriver }),
            (chromium, chromedriver) => {
                let msg = format!(
                    "browser test needs chromium ({}) and chromedriver ({}); on Debian: \
                     apt-get install -y chromium chromium-driver",
                    if chromium.is_some() { "found" } else { "missing" },
                    if chromedriver.is_some() { "found" } else { "missing" },
                );
                skip("browser", &msg);
                None
            }
        }
    }
}

fn free_loopback_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// chromedriver on a loopback port, in its own process group. Dropping it asks chromedriver to
/// quit its browsers and exit, then kills whatever of that group is left.
struct ChromeDriver {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl ChromeDriver {
    async fn start(tools: &Tools, dir: &Path) -> ChromeDriver {
        use std::os::unix::process::CommandExt;
        let mut last_error = String::new();
        // A port picked free can be taken before chromedriver binds it: try a few.
        for attempt in 0..3 {
            let port = free_loopback_port();
            let log = dir.join(format!("chromedriver-{attempt}.log"));
            let child = Command::new(&tools.chromedriver)
                .arg(format!("--port={port}"))
                .arg(format!("--log-path={}", log.display()))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", tools.chromedriver.display()));
            let mut driver = ChromeDriver { child, port, log };
            match driver.wait_ready().await {
                Ok(()) => return driver,
                Err(e) => last_error = e,
            }
        }
        panic!("chromedriver did not come up: {last_error}");
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    async fn wait_ready(&mut self) -> Result<(), String> {
        let http = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(2)).build().unwrap();
        let deadline = Instant::now() + STEP;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("chromedriver exited with {status}; log: {}", self.log_tail()));
            }
            if let Ok(resp) = http.get(format!("{}/status", self.url())).send().await
                && let Ok(v) = resp.json::<Value>().await
                && v["value"]["ready"] == true
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(format!("no ready /status within {STEP:?}; log: {}", self.log_tail()))
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// A new browser session: headless Chromium with a fresh profile in `profile`.
    async fn session(&self, tools: &Tools, profile: &Path) -> Client {
        let args = [
            "--headless".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--no-first-run".into(),
            "--disable-dev-shm-usage".into(),
            // The gateway serves the test CA's certificate, which this profile does not trust.
            "--ignore-certificate-errors".into(),
            "--window-size=1000,720".into(),
            format!("--user-data-dir={}", profile.display()),
        ];
        let caps = json!({
            "browserName": "chrome",
            "acceptInsecureCerts": true,
            "pageLoadStrategy": "normal",
            "timeouts": { "pageLoad": STEP.as_millis() as u64, "script": 10_000, "implicit": 0 },
            "goog:chromeOptions": { "binary": tools.chromium, "args": args },
        });
        let Value::Object(caps) = caps else { unreachable!() };
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let mut builder = ClientBuilder::new(connector);
        builder.capabilities(caps);
        let url = self.url();
        let connect = builder.connect(&url);
        match tokio::time::timeout(Duration::from_secs(60), connect).await {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => panic!("cannot start a Chromium session: {e}; chromedriver log: {}", self.log_tail()),
            Err(_) => panic!("Chromium session did not start within 60 s; chromedriver log: {}", self.log_tail()),
        }
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        // chromedriver's /shutdown quits the browsers it started and exits.
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
            let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = s.write_all(b"GET /shutdown HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
            let _ = s.read(&mut [0u8; 512]);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(50));
        }
        // Whatever remains of the group we started (chromedriver, or a browser it left behind).
        let _ =
            Command::new("kill").args(["-KILL", "--", &format!("-{}", self.child.id())]).stderr(Stdio::null()).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// Page helpers: explicit, bounded waits

fn artifacts_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target").join("artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn describe(c: &Client) -> String {
    let url = c.current_url().await.map(|u| u.to_string()).unwrap_or_else(|e| format!("<{e}>"));
    let src: String = c.source().await.unwrap_or_else(|e| format!("<{e}>")).chars().take(2000).collect();
    format!("at {url}\npage source: {src}")
}

async fn wait_for(c: &Client, what: Locator<'_>) -> Element {
    match c.wait().at_most(STEP).for_element(what).await {
        Ok(e) => e,
        Err(e) => panic!("waiting for {what:?}: {e}\n{}", describe(c).await),
    }
}

/// Click `button` and wait until the page it was on has been replaced by the next one.
async fn click_and_wait_for_next_page(c: &Client, button: Element) {
    let old = c.find(Locator::Css("html")).await.unwrap();
    button.click().await.unwrap();
    let deadline = Instant::now() + STEP;
    loop {
        match old.tag_name().await {
            Err(CmdError::Standard(e)) if e.error == fantoccini::error::ErrorStatus::StaleElementReference => break,
            Err(CmdError::Standard(e)) if e.error == fantoccini::error::ErrorStatus::NoSuchElement => break,
            _ if Instant::now() > deadline => panic!("no new page after the click\n{}", describe(c).await),
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

async fn text_of(c: &Client, what: Locator<'_>) -> String {
    wait_for(c, what).await.text().await.unwrap()
}

async fn type_into(c: &Client, id: &str, text: &str) {
    let field = wait_for(c, Locator::Id(id)).await;
    field.clear().await.unwrap();
    field.send_keys(text).await.unwrap();
}

/// Fill in the login form and submit it; returns once the next page is there.
async fn sign_in(c: &Client, username: &str, password: &str) {
    type_into(c, "username", username).await;
    type_into(c, "password", password).await;
    let submit = wait_for(c, Locator::Css("form button[type=submit]")).await;
    click_and_wait_for_next_page(c, submit).await;
}

/// Wait until the browser is on `prefix...` and return the parameters of its query.
async fn wait_for_redirect(c: &Client, prefix: &str) -> (url::Url, Vec<(String, String)>) {
    let deadline = Instant::now() + STEP;
    loop {
        if let Ok(url) = c.current_url().await
            && url.as_str().starts_with(prefix)
        {
            let pairs = url.query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
            return (url, pairs);
        }
        if Instant::now() > deadline {
            panic!("the browser did not come back to {prefix}\n{}", describe(c).await);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn param<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

// ---------------------------------------------------------------------------------------------
// OAuth helpers

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

fn random_b64(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    aws_lc_rs::rand::fill(&mut buf).unwrap();
    b64(&buf)
}

/// A PKCE verifier (43 characters) and its S256 challenge.
fn pkce() -> (String, String) {
    let verifier = random_b64(32);
    let challenge = b64(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes()).as_ref());
    (verifier, challenge)
}

fn authorize_url(gw: &TestGateway, redirect_uri: &str, scope: &str, state: &str, challenge: &str) -> String {
    let mut url = url::Url::parse(&gw.url("/oauth/authorize")).unwrap();
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", CLIENT_ID)
        .append_pair("redirect_uri", redirect_uri)
        .append_pair("scope", scope)
        .append_pair("state", state)
        .append_pair("code_challenge", challenge)
        .append_pair("code_challenge_method", "S256");
    url.into()
}

fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

/// A public client (PKCE required) whose redirect URI is a page on the echo upstream.
fn browser_client_toml(redirect_uri: &str) -> String {
    format!(
        r#"
[[client]]
id = "{CLIENT_ID}"
name = "{name}"
grants = ["authorization_code", "refresh_token"]
scopes = ["read", "write", "profile"]
default_scopes = ["read"]
redirect_uris = ["{redirect_uri}"]
"#,
        name = CLIENT_NAME.replace('\\', "\\\\").replace('"', "\\\""),
    )
}

// ---------------------------------------------------------------------------------------------
// The test

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_signs_in_consents_and_the_code_buys_a_working_token() {
    let Some(tools) = Tools::find() else { return };
    let started = Instant::now();
    let echo = EchoUpstream::start().await;
    let redirect_uri = format!("http://127.0.0.1:{}/cb", echo.addr.port());
    let gw = TestGateway::start_with(echo.addr, &browser_client_toml(&redirect_uri)).await;

    let scratch = tempfile::tempdir().unwrap();
    let profile = scratch.path().join("profile");
    std::fs::create_dir_all(&profile).unwrap();
    let driver = ChromeDriver::start(&tools, scratch.path()).await;
    let browser = driver.session(&tools, &profile).await;

    let flow = tokio::time::timeout(WHOLE_FLOW, flow(&browser, &gw, &redirect_uri));
    let outcome = AssertUnwindSafe(flow).catch_unwind().await;
    if !matches!(outcome, Ok(Ok(()))) {
        // Keep what the browser showed when it went wrong.
        if let Ok(Ok(png)) = tokio::time::timeout(Duration::from_secs(10), browser.screenshot()).await {
            let _ = std::fs::write(artifacts_dir().join("failure.png"), png);
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(10), browser.close()).await;
    drop(driver);
    match outcome {
        Ok(Ok(())) => {
            let _ = writeln!(std::io::stderr(), "browser flow passed in {:.1} s", started.elapsed().as_secs_f64());
        }
        Ok(Err(_)) => panic!("the browser flow did not finish within {WHOLE_FLOW:?}"),
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

async fn flow(c: &Client, gw: &TestGateway, redirect_uri: &str) {
    let state = random_b64(16);
    let (verifier, challenge) = pkce();

    // 1. The login page, as a person first sees it.
    c.goto(&authorize_url(gw, redirect_uri, "read profile", &state, &challenge)).await.unwrap();
    wait_for(c, Locator::Id("username")).await;
    assert_eq!(c.title().await.unwrap(), "Sign in");
    assert_eq!(text_of(c, Locator::Css("h1")).await, "Sign in");
    let intro = text_of(c, Locator::Css("main p.muted")).await;
    assert_eq!(intro, format!("to continue to {CLIENT_NAME}"), "the client's name, shown as text");
    // Labels belong to their fields (accessibility), and the password is masked.
    for id in ["username", "password"] {
        wait_for(c, Locator::Css(&format!("label[for={id}]"))).await;
    }
    let password = wait_for(c, Locator::Id("password")).await;
    assert_eq!(password.attr("type").await.unwrap().as_deref(), Some("password"));
    let png = c.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    std::fs::write(artifacts_dir().join("login.png"), &png).unwrap();

    // 2. A wrong password, and an unknown user: the same message, which does not say which.
    sign_in(c, "alice", "not-her-password").await;
    let wrong_password = text_of(c, Locator::Css("main")).await;
    assert_eq!(text_of(c, Locator::Css(".error[role=alert]")).await, LOGIN_FAILED);
    assert!(wait_for(c, Locator::Id("username")).await.is_displayed().await.unwrap(), "the form is shown again");
    std::fs::write(artifacts_dir().join("login-failed.png"), c.screenshot().await.unwrap()).unwrap();
    sign_in(c, "mallory", "whatever-she-tries").await;
    assert_eq!(text_of(c, Locator::Css(".error[role=alert]")).await, LOGIN_FAILED);
    let unknown_user = text_of(c, Locator::Css("main")).await;
    assert_eq!(wrong_password, unknown_user, "the page must not tell a wrong password from an unknown user");
    for hint in ["exist", "unknown", "not found", "alice", "mallory"] {
        assert!(!unknown_user.to_lowercase().contains(hint), "the page hints at the user ({hint:?}): {unknown_user}");
    }
    let cookies = c.get_all_cookies().await.unwrap();
    assert!(!cookies.iter().any(|k| k.name() == "__Host-portcullis_session"), "no session after failed logins");

    // 3. The right password: the consent page names the client and lists the requested scopes.
    sign_in(c, "alice", ALICE_PASSWORD).await;
    let allow = wait_for(c, Locator::Css("button[name=decision][value=allow]")).await;
    assert_eq!(c.title().await.unwrap(), "Allow access?");
    let consent = text_of(c, Locator::Css("main")).await;
    assert!(consent.contains(CLIENT_NAME), "consent page names the client: {consent}");
    assert!(consent.contains("alice"), "consent page names the user: {consent}");
    let mut listed = Vec::new();
    for li in c.find_all(Locator::Css("main ul li")).await.unwrap() {
        listed.push(li.text().await.unwrap());
    }
    assert_eq!(listed, ["read", "profile"], "exactly the requested scopes, not all the client may have");
    wait_for(c, Locator::Css("button[name=decision][value=deny]")).await;
    std::fs::write(artifacts_dir().join("consent.png"), c.screenshot().await.unwrap()).unwrap();

    // The session cookie the browser now holds.
    let session = c.get_named_cookie("__Host-portcullis_session").await.unwrap();
    assert!(session.secure() == Some(true), "session cookie is Secure");
    assert!(session.http_only() == Some(true), "session cookie is HttpOnly");
    assert_eq!(session.same_site().map(|s| s.to_string()).as_deref(), Some("Lax"));
    assert_eq!(session.path(), Some("/"));

    // 4. Allow: the browser lands on the client's redirect URI with a code and our state.
    click_and_wait_for_next_page(c, allow).await;
    let (landed, pairs) = wait_for_redirect(c, redirect_uri).await;
    assert_eq!(format!("{}://{}{}", landed.scheme(), landed.authority(), landed.path()), redirect_uri);
    assert_eq!(param(&pairs, "state"), Some(state.as_str()), "state echoed: {landed}");
    assert_eq!(param(&pairs, "error"), None, "no error: {landed}");
    let code = param(&pairs, "code").unwrap_or_else(|| panic!("no code in {landed}")).to_string();
    // The redirect URI really is a page: the echo upstream saw the browser's GET of it.
    let echoed = text_of(c, Locator::Css("pre")).await;
    let echoed: Value = serde_json::from_str(&echoed).unwrap_or_else(|e| panic!("{e}: {echoed}"));
    assert_eq!((echoed["method"].as_str(), echoed["path"].as_str()), (Some("GET"), Some("/cb")));

    // 5. The code and the PKCE verifier buy a token at /oauth/token.
    let http = gw.client();
    let resp = http
        .post(gw.url("/oauth/token"))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", redirect_uri),
            ("client_id", CLIENT_ID),
            ("code_verifier", &verifier),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let tokens: Value = resp.json().await.unwrap();
    assert_eq!(tokens["token_type"], "Bearer");
    assert_eq!(tokens["scope"], "read profile");
    assert!(tokens["refresh_token"].is_string(), "{tokens}");
    let access = tokens["access_token"].as_str().unwrap();
    let claims = claims(access);
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["client_id"], CLIENT_ID);
    assert_eq!(claims["scope"], "read profile");

    // 6. The token works on the proxy path, as alice.
    let resp = http.get(gw.url("/api/me")).bearer_auth(access).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let seen: Echo = resp.json().await.unwrap();
    assert_eq!(seen.header("x-auth-subject"), Some("alice"));
    assert_eq!(seen.header("x-auth-user"), Some("alice"));
    assert_eq!(seen.header("x-auth-client-id"), Some(CLIENT_ID));

    // 7. The session is remembered: a second authorization goes straight to consent; Deny
    //    goes back to the client with access_denied and that request's state.
    let state2 = random_b64(16);
    let (_, challenge2) = pkce();
    c.goto(&authorize_url(gw, redirect_uri, "read", &state2, &challenge2)).await.unwrap();
    let deny = wait_for(c, Locator::Css("button[name=decision][value=deny]")).await;
    assert!(c.find(Locator::Id("password")).await.is_err(), "no login form while the session lasts");
    let mut listed = Vec::new();
    for li in c.find_all(Locator::Css("main ul li")).await.unwrap() {
        listed.push(li.text().await.unwrap());
    }
    assert_eq!(listed, ["read"]);
    click_and_wait_for_next_page(c, deny).await;
    let (landed, pairs) = wait_for_redirect(c, redirect_uri).await;
    assert_eq!(param(&pairs, "error"), Some("access_denied"), "{landed}");
    assert_eq!(param(&pairs, "state"), Some(state2.as_str()));
    assert_eq!(param(&pairs, "code"), None);
}
