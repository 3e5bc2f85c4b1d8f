//! The one harness every test binary shares (`mod common;` then `use common::*;`): a test
//! PKI, an echoing upstream, a gateway on ephemeral ports with real TLS, an HTTPS client
//! that trusts the test CA, a minimal browser, and the requests and assertions the
//! features share. Submodules: `raw` (a raw HTTP client), `jwt` (reading and crafting
//! tokens), `recorder` (upstreams that show what reached them), `idp` (a test identity
//! provider: discovery, a JWK Set it rotates or breaks, tokens signed with its keys).
#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use portcullis::config::Config;
use portcullis::server::{AcceptedPerWorker, Layout, Server};
use portcullis::state::Gateway;
use serde_json::Value;
use tokio::net::TcpListener;

mod binary;
mod idp;
mod jwt;
mod raw;
mod recorder;
mod ws;
// Each test binary uses some of these; `dead_code` above does not cover re-exports.
#[allow(unused_imports)]
pub use binary::*;
#[allow(unused_imports)]
pub use idp::*;
#[allow(unused_imports)]
pub use jwt::*;
#[allow(unused_imports)]
pub use raw::*;
#[allow(unused_imports)]
pub use recorder::*;
#[allow(unused_imports)]
pub use ws::*;

/// Secret of client `svc` (hash below).
pub const SVC_SECRET: &str = "svc-secret";
pub const SVC_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$NDYTW6/8Jb0QvNtu/HAEsg$50KFYCT9MCJVGUAcSiitFKy6q9BorQxPHViybm55BfY";
/// Secret of the other clients.
pub const OTHER_SECRET: &str = "other-secret";
pub const OTHER_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$bfvdNrf2I4dnZKtN8XZqIA$cVSC4XrogpedQjyCA0MATCnO225EByVri6brmsYzpJ4";

/// Password of users `alice` (and disabled `bob`).
pub const ALICE_PASSWORD: &str = "other-secret";
pub const ALICE_HASH: &str = OTHER_HASH;

/// A CA and a localhost certificate it signed, written into `dir`.
pub struct Pki {
    pub ca_pem: String,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Pki {
    pub fn create(dir: &Path) -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(rcgen::DnType::CommonName, "portcullis test CA");
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let pki = Pki {
            ca_pem: ca_cert.pem(),
            cert_path: dir.join("server.crt.pem"),
            key_path: dir.join("server.key.pem"),
            issuer,
        };
        let (cert, key) = pki.leaf();
        std::fs::write(&pki.cert_path, cert).unwrap();
        std::fs::write(&pki.key_path, key).unwrap();
        pki
    }

    /// A new localhost certificate and key (PEM) from the same CA.
    pub fn leaf(&self) -> (String, String) {
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf_params =
            rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        let leaf = leaf_params.signed_by(&leaf_key, &self.issuer).unwrap();
        (leaf.pem(), leaf_key.serialize_pem())
    }
}

/// What the echo upstream reports about the request it received.
#[derive(Debug, serde::Deserialize)]
pub struct Echo {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub version: String,
    /// Header names lower-cased, every value in order.
    pub headers: Vec<(String, String)>,
    pub body_len: usize,
    pub body_sha256: String,
}

impl Echo {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers.iter().filter(|(n, _)| n == name).map(|(_, v)| v.as_str()).collect()
    }
}

pub fn sha256_hex(data: &[u8]) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// An upstream that answers every request with a JSON description of it.
/// `/stream/...` instead streams the request body back as it arrives;
/// `/big/<n>` answers with `n` bytes of a repeating pattern;
/// `/slow/<ms>` waits that long before answering.
pub struct EchoUpstream {
    pub addr: SocketAddr,
    /// TCP connections accepted so far (the gateway's pool should keep this low).
    pub accepted: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for EchoUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type EchoBody = http_body_util::combinators::BoxBody<Bytes, hyper::Error>;

async fn echo(req: Request<Incoming>) -> Result<Response<EchoBody>, Infallible> {
    let path = req.uri().path().to_string();
    if path.starts_with("/stream") {
        return Ok(Response::new(req.into_body().boxed()));
    }
    if let Some(n) = path.strip_prefix("/big/") {
        let n: usize = n.parse().unwrap_or(0);
        let chunks = (0..n.div_ceil(65536)).map(move |i| {
            let len = (n - i * 65536).min(65536);
            Ok::<_, hyper::Error>(Frame::data(Bytes::from(vec![(i % 251) as u8; len])))
        });
        let body = StreamBody::new(futures_util::stream::iter(chunks));
        return Ok(Response::new(BodyExt::boxed(body)));
    }
    if let Some(ms) = path.strip_prefix("/slow/") {
        let ms: u64 = ms.parse().unwrap_or(0);
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
    let method = req.method().to_string();
    let query = req.uri().query().map(str::to_string);
    let version = format!("{:?}", req.version());
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(n, v)| (n.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect();
    let body = req.into_body().collect().await.map(|c| c.to_bytes()).unwrap_or_default();
    let out = serde_json::json!({
        "method": method, "path": path, "query": query, "version": version, "headers": headers,
        "body_len": body.len(), "body_sha256": sha256_hex(&body),
    });
    let mut resp = Response::new(Full::new(Bytes::from(out.to_string())).map_err(|n| match n {}).boxed());
    resp.headers_mut().insert("content-type", "application/json".parse().unwrap());
    // A hop-by-hop header the gateway must not pass back.
    resp.headers_mut().insert("keep-alive", "timeout=5".parse().unwrap());
    Ok(resp)
}

impl EchoUpstream {
    pub async fn start() -> EchoUpstream {
        Self::start_on("127.0.0.1:0").await
    }

    pub async fn start_on(addr: &str) -> EchoUpstream {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = accepted.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service_fn(echo))
                        .await;
                });
            }
        });
        EchoUpstream { addr, accepted, task }
    }
}

/// The clients every test configuration has.
pub fn clients_toml() -> String {
    format!(
        r#"
[[client]]
id = "svc"
name = "Service"
secret_hash = "{SVC_HASH}"
grants = ["client_credentials"]
scopes = ["read", "write", "admin"]
default_scopes = ["read"]

[[client]]
id = "linked"
secret_hash = "{OTHER_HASH}"
grants = ["client_credentials"]
scopes = ["read"]
user = "alice"

[[client]]
id = "off"
secret_hash = "{OTHER_HASH}"
grants = ["client_credentials"]
scopes = ["read"]
enabled = false

[[client]]
id = "nogrant"
secret_hash = "{OTHER_HASH}"
grants = ["authorization_code"]
scopes = ["read"]
redirect_uris = ["https://nogrant.test/cb"]

# A confidential web app: code (+ optional PKCE), refresh, password.
[[client]]
id = "webapp"
name = "Web App"
secret_hash = "{SVC_HASH}"
grants = ["authorization_code", "refresh_token", "password"]
scopes = ["read", "write", "profile"]
default_scopes = ["read"]
redirect_uris = ["https://app.test/callback", "http://127.0.0.1:9/cb?x=1"]

# A public SPA / native app: code with PKCE only, refresh, implicit.
[[client]]
id = "spa"
name = "Single Page App"
grants = ["authorization_code", "refresh_token", "implicit"]
scopes = ["read", "profile"]
redirect_uris = ["https://spa.test/cb"]

# The operator's own app: no consent page.
[[client]]
id = "first"
name = "First Party"
secret_hash = "{SVC_HASH}"
grants = ["authorization_code", "refresh_token"]
scopes = ["read"]
redirect_uris = ["https://first.test/cb"]
first_party = true

# client_credentials with refresh tokens, acting as a linked user.
[[client]]
id = "ccr"
secret_hash = "{SVC_HASH}"
grants = ["client_credentials", "refresh_token"]
scopes = ["read"]
user = "robot"
refresh_on_client_credentials = true

# Password grant without refresh tokens.
[[client]]
id = "pwonly"
secret_hash = "{SVC_HASH}"
grants = ["password"]
scopes = ["read"]

[[user]]
username = "alice"
password_hash = "{ALICE_HASH}"
display_name = "Alice"

[[user]]
username = "bob"
password_hash = "{ALICE_HASH}"
enabled = false

# The user "ccr" acts as (a client's user must exist): a service identity, no password.
[[user]]
username = "robot"
"#
    )
}

/// Routes to `upstream`: /api (read), /admin (admin), /public, /strip (strip_prefix),
/// /tok (forward_token).
pub fn routes_toml(upstream: SocketAddr) -> String {
    format!(
        r#"
[[route]]
prefix = "/api"
upstream = "http://{upstream}"
scopes = ["read"]

[[route]]
prefix = "/admin"
upstream = "http://{upstream}"
scopes = ["admin"]

[[route]]
prefix = "/public"
upstream = "http://{upstream}"
public = true

[[route]]
prefix = "/strip"
upstream = "http://{upstream}/base"
scopes = ["read"]
strip_prefix = true

[[route]]
prefix = "/tok"
upstream = "http://{upstream}"
scopes = ["read"]
forward_token = true

[[route]]
prefix = "/stream"
upstream = "http://{upstream}"
scopes = ["read"]

[[route]]
prefix = "/big"
upstream = "http://{upstream}"
scopes = ["read"]

[[route]]
prefix = "/slow"
upstream = "http://{upstream}"
scopes = ["read"]
"#
    )
}

pub const ISSUER: &str = "https://gateway.test";

/// A full configuration: one TLS listener and one plaintext listener on ephemeral ports.
pub fn config_toml(dir: &Path, pki: &Pki, upstream: SocketAddr, extra: &str) -> String {
    format!(
        r#"
issuer = "{ISSUER}"
{extra}

[[listener]]
address = "127.0.0.1:0"

[[listener]]
address = "127.0.0.1:0"
tls = false

[tls]
cert = "{cert}"
key = "{key}"

[limits]
upstream_timeout = "2s"
upstream_connect_timeout = "1s"
max_proxy_body_bytes = 67108864

[admin]
address = "127.0.0.1:0"

[[key]]
id = "k1"
file = "{dir}/k1.pem"
{clients}
{routes}
"#,
        cert = pki.cert_path.display(),
        key = pki.key_path.display(),
        dir = dir.display(),
        clients = clients_toml(),
        routes = routes_toml(upstream),
    )
}

/// A running gateway (in this process, over real sockets).
pub struct TestGateway {
    pub dir: tempfile::TempDir,
    pub pki: Pki,
    pub https: SocketAddr,
    pub http: SocketAddr,
    /// The admin listener (health, readiness, metrics), plaintext.
    pub admin: SocketAddr,
    pub gateway: Arc<Gateway>,
    pub config_path: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub task: Option<tokio::task::JoinHandle<()>>,
    /// Connections accepted by each worker thread (one entry in the shared model).
    pub accepted: AcceptedPerWorker,
}

/// The runtime model of the in-process gateways: `PORTCULLIS_RUNTIME=per-core` runs them
/// with two per-core workers; anything else, on the test's runtime. It is the binary's own
/// variable: the process-level tests run the binary's default (per core) unless it says
/// `shared`.
pub fn test_layout() -> Layout {
    match std::env::var("PORTCULLIS_RUNTIME").as_deref() {
        Ok("per-core") => Layout::per_core(2),
        _ => Layout::shared(),
    }
}

impl TestGateway {
    /// Start with the default test configuration routing to `upstream`.
    pub async fn start(upstream: SocketAddr) -> TestGateway {
        Self::start_with(upstream, "").await
    }

    /// Start with `extra` top-level TOML inserted after `issuer`.
    pub async fn start_with(upstream: SocketAddr, extra: &str) -> TestGateway {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::create(dir.path());
        let text = config_toml(dir.path(), &pki, upstream, extra);
        Self::start_text(dir, pki, &text).await
    }

    pub async fn start_text(dir: tempfile::TempDir, pki: Pki, text: &str) -> TestGateway {
        Self::start_layout(dir, pki, text, test_layout()).await
    }

    /// Start `text` with its listeners spread as `layout` says.
    pub async fn start_layout(dir: tempfile::TempDir, pki: Pki, text: &str, layout: Layout) -> TestGateway {
        let config_path = dir.path().join("gateway.toml");
        std::fs::write(&config_path, text).unwrap();
        let config = Config::load(&config_path).unwrap_or_else(|e| panic!("{e}"));
        let server = Server::bind_with(config, layout).await.unwrap();
        let accepted = server.accepted_per_worker();
        let addrs = server.local_addrs();
        let https = addrs.iter().find(|(_, tls)| *tls).map(|(a, _)| *a).unwrap();
        let http = addrs.iter().find(|(_, tls)| !*tls).map(|(a, _)| *a).unwrap();
        let admin = server.admin_addr().expect("the test config enables [admin]");
        let gateway = server.gateway();
        let (stop, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.run(
            async move {
                let _ = rx.await;
            },
            std::future::pending(),
        ));
        TestGateway { dir, pki, https, http, admin, gateway, config_path, stop: Some(stop), task: Some(task), accepted }
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.https.port())
    }

    pub fn http_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http.port())
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    pub fn client(&self) -> reqwest::Client {
        https_client(&self.pki.ca_pem, false)
    }

    /// Re-read the configuration file after `edit` changed its text, and apply it.
    pub fn rewrite_config(&self, edit: impl FnOnce(String) -> String) {
        let text = std::fs::read_to_string(&self.config_path).unwrap();
        std::fs::write(&self.config_path, edit(text)).unwrap();
        let config = Config::load(&self.config_path).unwrap_or_else(|e| panic!("{e}"));
        self.gateway.apply(config).unwrap();
    }

    /// Obtain a token with client_credentials over Basic auth; panics on failure.
    pub async fn token(&self, client_id: &str, secret: &str, scope: Option<&str>) -> String {
        let mut form = vec![("grant_type", "client_credentials")];
        if let Some(s) = scope {
            form.push(("scope", s));
        }
        let resp = self
            .client()
            .post(self.url("/oauth/token"))
            .basic_auth(client_id, Some(secret))
            .form(&form)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "token request failed: {}", resp.text().await.unwrap());
        let v: serde_json::Value = resp.json().await.unwrap();
        v["access_token"].as_str().unwrap().to_string()
    }

    /// Stop this gateway and start a new one on the same directory (config, keys, store
    /// file). Ports change.
    pub async fn restart(mut self) -> TestGateway {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        let scratch = tempfile::tempdir().unwrap();
        let pki = std::mem::replace(&mut self.pki, Pki::create(scratch.path()));
        let text = std::fs::read_to_string(&self.config_path).unwrap();
        // The store file may be opened by one gateway at a time: release ours first.
        drop(self);
        TestGateway::start_text(dir, pki, &text).await
    }

    /// Stop accepting and wait for in-flight requests to finish.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
/// A raw TLS connection to the gateway's TLS listener (HTTP/1.1 by ALPN), trusting the
/// test CA: for requests a URL library would not send as written.
pub async fn tls_connect(gw: &TestGateway) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    tls_connect_alpn(gw, &[b"http/1.1"]).await
}

/// A raw TLS connection offering exactly `alpn` (none when empty).
pub async fn tls_connect_alpn(
    gw: &TestGateway,
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    tls_connect_late(gw, alpn, std::time::Duration::ZERO).await
}

/// A raw TLS connection offering exactly `alpn`, whose handshake starts `delay` after the
/// TCP connection is made (a slow client).
pub async fn tls_connect_late(
    gw: &TestGateway,
    alpn: &[&[u8]],
    delay: std::time::Duration,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    portcullis::install_crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(gw.pki.ca_pem.as_bytes()).unwrap()).unwrap();
    let mut config = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(gw.https).await.unwrap();
    tokio::time::sleep(delay).await;
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    connector.connect(name, tcp).await.unwrap()
}

/// An HTTPS client trusting the test CA; `http2_only` forces HTTP/2 (ALPN still negotiates).
pub fn https_client(ca_pem: &str, http2_only: bool) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap();
    let mut b = reqwest::Client::builder().tls_certs_only([ca]).no_proxy();
    if http2_only {
        b = b.http2_prior_knowledge();
    }
    b.build().unwrap()
}

/// A minimal browser: keeps cookies, never follows redirects.
pub struct Browser {
    http: reqwest::Client,
    pub cookies: HashMap<String, String>,
}

pub struct Page {
    pub status: u16,
    pub location: Option<String>,
    pub body: String,
}

impl Page {
    /// Hidden and other named inputs of the page's form.
    pub fn fields(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for chunk in self.body.split("<input").skip(1) {
            let attr = |name: &str| {
                let key = format!("{name}=\"");
                chunk.find(&key).map(|i| {
                    let rest = &chunk[i + key.len()..];
                    unescape(&rest[..rest.find('"').unwrap_or(0)])
                })
            };
            if let (Some(n), Some(v)) = (attr("name"), attr("value")) {
                out.push((n, v));
            }
        }
        out
    }

    pub fn location_param(&self, key: &str) -> Option<String> {
        let loc = self.location.as_deref()?;
        let query = loc.split_once('?').map(|(_, q)| q.split('#').next().unwrap_or(q)).unwrap_or("");
        let fragment = loc.split_once('#').map(|(_, f)| f).unwrap_or("");
        form_urlencoded::parse(query.as_bytes())
            .chain(form_urlencoded::parse(fragment.as_bytes()))
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.into_owned())
    }
}

fn unescape(s: &str) -> String {
    s.replace("&quot;", "\"").replace("&#39;", "'").replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
}

impl Browser {
    pub fn new(gw: &TestGateway) -> Browser {
        Browser::with_ca(&gw.pki.ca_pem)
    }

    pub fn with_ca(ca_pem: &str) -> Browser {
        let ca = reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap();
        let http = reqwest::Client::builder()
            .tls_certs_only([ca])
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .unwrap();
        Browser { http, cookies: HashMap::new() }
    }

    pub async fn send(&mut self, req: reqwest::RequestBuilder) -> Page {
        let cookie: Vec<String> = self.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let req = if cookie.is_empty() { req } else { req.header("cookie", cookie.join("; ")) };
        let resp = req.send().await.unwrap();
        for sc in resp.headers().get_all("set-cookie") {
            let sc = sc.to_str().unwrap();
            assert!(
                sc.contains("HttpOnly") && sc.contains("Secure") && sc.contains("SameSite=Lax"),
                "cookie flags: {sc}"
            );
            let (pair, _) = sc.split_once(';').unwrap();
            let (k, v) = pair.split_once('=').unwrap();
            self.cookies.insert(k.to_string(), v.to_string());
        }
        let status = resp.status().as_u16();
        let location = resp.headers().get("location").map(|v| v.to_str().unwrap().to_string());
        Page { status, location, body: resp.text().await.unwrap() }
    }

    pub async fn get(&mut self, url: &str) -> Page {
        let req = self.http.get(url);
        self.send(req).await
    }

    pub async fn post(&mut self, url: &str, fields: &[(String, String)]) -> Page {
        let req = self.http.post(url).form(fields);
        self.send(req).await
    }

    /// Submit the page's form with some fields set or replaced.
    pub async fn submit(&mut self, gw: &TestGateway, page: &Page, set: &[(&str, &str)]) -> Page {
        self.submit_to(&gw.url("/oauth/authorize"), page, set).await
    }

    pub async fn submit_to(&mut self, url: &str, page: &Page, set: &[(&str, &str)]) -> Page {
        let mut fields: Vec<(String, String)> =
            page.fields().into_iter().filter(|(k, _)| !set.iter().any(|(s, _)| s == k)).collect();
        fields.extend(set.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        self.post(url, &fields).await
    }
}

/// The /authorize URL with `pairs` as its query.
pub fn authorize_url(gw: &TestGateway, pairs: &[(&str, &str)]) -> String {
    let mut ser = form_urlencoded::Serializer::new(String::new());
    ser.extend_pairs(pairs);
    gw.url(&format!("/oauth/authorize?{}", ser.finish()))
}

/// Log in as alice and allow: returns the final redirect page.
pub async fn login_and_consent(b: &mut Browser, gw: &TestGateway, query: &[(&str, &str)]) -> Page {
    let login = b.get(&authorize_url(gw, query)).await;
    assert_eq!(login.status, 200, "{}", login.body);
    assert!(login.body.contains("name=\"password\""), "login page expected: {}", login.body);
    let consent = b.submit(gw, &login, &[("username", "alice"), ("password", ALICE_PASSWORD)]).await;
    assert_eq!(consent.status, 200, "{}", consent.body);
    assert!(consent.body.contains("Allow access?"), "{}", consent.body);
    let done = b.submit(gw, &consent, &[("decision", "allow")]).await;
    assert_eq!(done.status, 303, "{}", done.body);
    done
}

/// POST /oauth/token with `form` (and Basic credentials if given): status and JSON body.
pub async fn token_request(
    gw: &TestGateway,
    basic: Option<(&str, &str)>,
    form: &[(&str, &str)],
) -> (u16, serde_json::Value) {
    let mut req = gw.client().post(gw.url("/oauth/token")).form(form);
    if let Some((id, secret)) = basic {
        req = req.basic_auth(id, Some(secret));
    }
    let resp = req.send().await.unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

// ---------------------------------------------------------------------------------------
// Requests and assertions every feature uses.

/// An echo upstream and a gateway with the default test configuration in front of it.
pub async fn setup() -> (EchoUpstream, TestGateway) {
    let up = EchoUpstream::start().await;
    let gw = TestGateway::start(up.addr).await;
    (up, gw)
}

/// A token of client `svc` with its default scope.
pub async fn svc_token(gw: &TestGateway) -> String {
    gw.token("svc", SVC_SECRET, None).await
}

/// The status of a GET on /api/x (scope `read`) with `token`.
pub async fn api_status(gw: &TestGateway, token: &str) -> u16 {
    gw.client().get(gw.url("/api/x")).bearer_auth(token).send().await.unwrap().status().as_u16()
}

/// GET `path` over TLS with a bearer token; the echo the upstream sent back.
pub async fn echo_get(gw: &TestGateway, path: &str, token: &str) -> Echo {
    let resp = gw.client().get(gw.url(path)).bearer_auth(token).send().await.unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap();
    assert_eq!(status, 200, "GET {path}: {text}");
    serde_json::from_str(&text).unwrap()
}

/// The gateway's answer to a refused request: status, WWW-Authenticate, JSON body.
pub async fn refused(resp: reqwest::Response) -> (u16, Option<String>, Value) {
    let status = resp.status().as_u16();
    let www = resp.headers().get("www-authenticate").map(|v| v.to_str().unwrap().to_string());
    let ctype = resp.headers().get("content-type").map(|v| v.to_str().unwrap().to_string());
    let text = resp.text().await.unwrap();
    assert_eq!(ctype.as_deref(), Some("application/json"), "status {status}, body {text}");
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    (status, www, v)
}

/// The start of every bearer `WWW-Authenticate` challenge the gateway sends.
pub const BEARER_CHALLENGE: &str = "Bearer realm=\"portcullis\"";

/// A GET on /api/x with `token` is 401 `invalid_token`, in the JSON body and the challenge.
pub async fn assert_invalid_token(gw: &TestGateway, label: &str, token: &str) {
    let resp = gw.client().get(gw.url("/api/x")).bearer_auth(token).send().await.unwrap();
    let (status, www, v) = refused(resp).await;
    assert_eq!(status, 401, "{label}: {v}");
    let www = www.unwrap_or_else(|| panic!("{label}: no WWW-Authenticate"));
    assert!(www.starts_with(&format!("{BEARER_CHALLENGE}, error=\"invalid_token\"")), "{label}: {www}");
    assert_eq!(v["error"], "invalid_token", "{label}");
}

/// Status, `error` and `WWW-Authenticate` of a GET on /api/x with `token`.
pub async fn proxied(gw: &TestGateway, token: &str) -> (u16, Value, Option<String>) {
    let resp = gw.client().get(gw.url("/api/x")).bearer_auth(token).send().await.unwrap();
    let status = resp.status().as_u16();
    let www = resp.headers().get("www-authenticate").map(|v| v.to_str().unwrap().to_string());
    (status, resp.json().await.unwrap(), www)
}

/// The identity headers the gateway sets, each of which must arrive exactly once.
pub const IDENTITY_HEADERS: [&str; 5] =
    ["x-auth-client-id", "x-auth-subject", "x-auth-scope", "x-auth-token-id", "x-auth-user"];

pub fn assert_identity(echo: &Echo, client: &str, subject: &str, scope: &str, jti: &str, user: Option<&str>) {
    assert_eq!(echo.header_all("x-auth-client-id"), vec![client], "{echo:?}");
    assert_eq!(echo.header_all("x-auth-subject"), vec![subject], "{echo:?}");
    assert_eq!(echo.header_all("x-auth-scope"), vec![scope], "{echo:?}");
    assert_eq!(echo.header_all("x-auth-token-id"), vec![jti], "{echo:?}");
    match user {
        Some(u) => assert_eq!(echo.header_all("x-auth-user"), vec![u], "{echo:?}"),
        None => assert!(echo.header_all("x-auth-user").is_empty(), "{echo:?}"),
    }
}

/// TCP connections the echo upstream accepted so far.
pub fn accepted(up: &EchoUpstream) -> usize {
    up.accepted.load(std::sync::atomic::Ordering::SeqCst)
}

// ---------------------------------------------------------------------------------------
// OAuth flows: PKCE (RFC 7636 appendix B's pair), a code for the public client, tokens.

/// The RFC 7636 appendix B verifier and its S256 challenge.
pub const PKCE_VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";

pub const PKCE_CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

/// /authorize for the public client `spa` with PKCE and state `s1`, no scope.
pub fn bare_spa_query<'a>() -> Vec<(&'a str, &'a str)> {
    vec![
        ("response_type", "code"),
        ("client_id", "spa"),
        ("redirect_uri", "https://spa.test/cb"),
        ("state", "s1"),
        ("code_challenge", PKCE_CHALLENGE),
        ("code_challenge_method", "S256"),
    ]
}

/// A code for `spa` after alice logged in and allowed.
pub async fn spa_code(gw: &TestGateway) -> String {
    let mut b = Browser::new(gw);
    login_and_consent(&mut b, gw, &bare_spa_query()).await.location_param("code").unwrap()
}

/// Access and refresh token of alice through `webapp`'s password grant, default scope.
pub async fn password_tokens(gw: &TestGateway) -> (String, String) {
    let form = [("grant_type", "password"), ("username", "alice"), ("password", ALICE_PASSWORD)];
    let (status, v) = token_request(gw, Some(("webapp", SVC_SECRET)), &form).await;
    assert_eq!(status, 200, "{v}");
    (v["access_token"].as_str().unwrap().to_string(), v["refresh_token"].as_str().unwrap().to_string())
}

// ---------------------------------------------------------------------------------------
// Metrics.

/// One sample of a Prometheus counter from the admin listener (0 when absent).
pub async fn counter(gw: &TestGateway, series: &str) -> f64 {
    let text = reqwest::get(gw.admin_url("/metrics")).await.unwrap().text().await.unwrap();
    text.lines().find_map(|l| l.strip_prefix(series).and_then(|rest| rest.trim().parse().ok())).unwrap_or(0.0)
}

/// Bearer tokens answered from the validation cache so far, as /metrics reports them.
pub async fn cache_hits(gw: &TestGateway) -> f64 {
    counter(gw, "portcullis_validation_cache_hits_total").await
}

/// GET `url`, expect 200, the JSON body.
pub async fn get_json(client: &reqwest::Client, url: &str) -> Value {
    let resp = client.get(url).send().await.unwrap();
    assert_eq!(resp.status(), 200, "{url}");
    resp.json().await.unwrap()
}

// ---------------------------------------------------------------------------------------
// Waiting for the file watcher, reloads and processes.

/// Upper bound for anything that waits on a file-watch event or a process.
pub const WAIT: Duration = Duration::from_secs(10);

/// Poll `cond` until it holds; panic after [`WAIT`].
pub async fn wait_until<F, Fut>(what: &str, mut cond: F)
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

/// Poll `check` every 20 ms for up to `limit`; how long it took, if it ever held.
pub async fn within(limit: Duration, mut check: impl AsyncFnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() <= limit {
        if check().await {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// Replace a file the way careful tools do: write beside it, then rename over it.
pub fn write_atomic(path: &Path, contents: &str) {
    let tmp = path.with_extension(format!("tmp{}", rand_suffix()));
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A process-unique number for scratch file names.
pub fn rand_suffix() -> u64 {
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Reloads applied and refused so far.
pub fn reloads(gw: &TestGateway) -> (u64, u64) {
    gw.gateway.metrics.reloads()
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A config with the default test listeners, `limits` added to `[limits]`.
pub async fn gateway_with_limits(upstream: SocketAddr, extra: &str, limits: &str) -> TestGateway {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(dir.path());
    let text = config_toml(dir.path(), &pki, upstream, extra).replace("[limits]\n", &format!("[limits]\n{limits}"));
    TestGateway::start_text(dir, pki, &text).await
}

// ---------------------------------------------------------------------------------------
// Tests that need a tool this machine may lack (redis-server, chromium, Python packages).

/// Is this a CI run? `CI` set to anything but empty, `0` or `false` (any case). Every suite
/// reads it this way, so `CI=false` is a local run everywhere.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && !v.eq_ignore_ascii_case("false"))
}

/// The list of skipped tests, one line each, that `.ci/run` prints after the totals.
pub fn skips_file() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("skipped-tests.txt")
}

/// Skip `test` for want of a tool: in CI that fails the test instead. Elsewhere the notice
/// goes straight to stderr (past the harness's capture, so a person sees it) and into
/// [`skips_file`], which `.ci/run` prints at the end.
pub fn skip(test: &str, reason: &str) {
    use std::io::Write;
    assert!(!in_ci(), "{test}: {reason} (CI is set, so this fails instead of skipping)");
    let line = format!("SKIPPED {test}: {reason}");
    let _ = writeln!(std::io::stderr(), "{line}");
    let file = std::fs::OpenOptions::new().create(true).append(true).open(skips_file());
    if let Ok(mut f) = file {
        let _ = writeln!(f, "{line}");
    }
}
