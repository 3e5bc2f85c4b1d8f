//! A small identity provider on loopback for the trusted-issuer tests: OpenID discovery,
//! a JWK Set it can rotate or break on demand (down, HTML, huge, slow), counters of what
//! was fetched, and tokens signed with its keys (ES256, RS256, EdDSA) by aws-lc-rs. It
//! also hands out opaque tokens and answers RFC 7662 introspection about them at
//! `/introspect` (client `gw`, secret [`IDP_CLIENT_SECRET`]), revocably, counting requests.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::net::TcpListener;

use super::jwt::b64;

/// One signing key of the test IdP.
pub struct IdpKey {
    pub kid: String,
    pub alg: &'static str,
    signer: Signer,
}

enum Signer {
    Es256(EcdsaKeyPair),
    Rs256(aws_lc_rs::rsa::KeyPair),
    Ed(Ed25519KeyPair),
}

impl IdpKey {
    pub fn es256(kid: &str) -> Arc<IdpKey> {
        let kp = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
        Arc::new(IdpKey { kid: kid.into(), alg: "ES256", signer: Signer::Es256(kp) })
    }
    pub fn rs256(kid: &str) -> Arc<IdpKey> {
        let kp = aws_lc_rs::rsa::KeyPair::generate(KeySize::Rsa2048).unwrap();
        Arc::new(IdpKey { kid: kid.into(), alg: "RS256", signer: Signer::Rs256(kp) })
    }
    pub fn ed25519(kid: &str) -> Arc<IdpKey> {
        let kp = Ed25519KeyPair::generate().unwrap();
        Arc::new(IdpKey { kid: kid.into(), alg: "EdDSA", signer: Signer::Ed(kp) })
    }

    /// The public JWK (with `kid`, `alg`, `use`).
    pub fn jwk(&self) -> Value {
        let mut jwk = match &self.signer {
            Signer::Es256(kp) => {
                let p = kp.public_key().as_ref();
                json!({"kty": "EC", "crv": "P-256", "x": b64(&p[1..33]), "y": b64(&p[33..65])})
            }
            Signer::Rs256(kp) => {
                let p = kp.public_key();
                json!({"kty": "RSA", "n": b64(p.modulus().big_endian_without_leading_zero()),
                       "e": b64(p.exponent().big_endian_without_leading_zero())})
            }
            Signer::Ed(kp) => json!({"kty": "OKP", "crv": "Ed25519", "x": b64(kp.public_key().as_ref())}),
        };
        jwk["kid"] = self.kid.clone().into();
        jwk["alg"] = self.alg.into();
        jwk["use"] = "sig".into();
        jwk
    }

    /// The public key as a PEM `PUBLIC KEY` (SubjectPublicKeyInfo).
    pub fn public_pem(&self) -> String {
        use aws_lc_rs::encoding::{AsDer, PublicKeyX509Der};
        let der: PublicKeyX509Der = match &self.signer {
            Signer::Es256(kp) => kp.public_key().as_der().unwrap(),
            Signer::Rs256(kp) => kp.public_key().as_der().unwrap(),
            Signer::Ed(kp) => kp.public_key().as_der().unwrap(),
        };
        pem::encode(&pem::Pem::new("PUBLIC KEY", der.as_ref().to_vec()))
    }

    /// The private key as a PKCS#8 PEM (for a client library that signs with it).
    pub fn private_pem(&self) -> String {
        use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
        let der: Vec<u8> = match &self.signer {
            Signer::Es256(kp) => kp.to_pkcs8v1().unwrap().as_ref().to_vec(),
            Signer::Rs256(kp) => AsDer::<Pkcs8V1Der>::as_der(kp).unwrap().as_ref().to_vec(),
            Signer::Ed(kp) => AsDer::<Pkcs8V1Der>::as_der(kp).unwrap().as_ref().to_vec(),
        };
        pem::encode(&pem::Pem::new("PRIVATE KEY", der))
    }

    /// The public JWK's RFC 7638 thumbprint, base64url (a DPoP `jkt`).
    pub fn thumbprint(&self) -> String {
        let jwk = self.jwk();
        let canonical = match jwk["kty"].as_str().unwrap() {
            "EC" => format!(r#"{{"crv":"P-256","kty":"EC","x":{},"y":{}}}"#, jwk["x"], jwk["y"]),
            "RSA" => format!(r#"{{"e":{},"kty":"RSA","n":{}}}"#, jwk["e"], jwk["n"]),
            _ => format!(r#"{{"crv":"Ed25519","kty":"OKP","x":{}}}"#, jwk["x"]),
        };
        b64(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, canonical.as_bytes()).as_ref())
    }

    /// A DPoP proof (RFC 9449 §4.2) for `htm` `htu`, bound to `token` (`ath`) when given,
    /// with `nonce` when given; `edit` changes the header and claims before signing.
    pub fn dpop_proof_with(
        &self,
        htm: &str,
        htu: &str,
        token: Option<&str>,
        nonce: Option<&str>,
        edit: impl FnOnce(&mut Value, &mut Value),
    ) -> String {
        let mut jwk = self.jwk();
        jwk.as_object_mut().unwrap().remove("kid");
        let mut header = json!({"typ": "dpop+jwt", "alg": self.alg, "jwk": jwk});
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let mut claims = json!({"jti": b64(&rand_bytes()), "htm": htm, "htu": htu, "iat": now});
        if let Some(t) = token {
            claims["ath"] = b64(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, t.as_bytes()).as_ref()).into();
        }
        if let Some(n) = nonce {
            claims["nonce"] = n.into();
        }
        edit(&mut header, &mut claims);
        self.sign_text(&header.to_string(), &claims.to_string())
    }

    pub fn dpop_proof(&self, htm: &str, htu: &str, token: Option<&str>) -> String {
        self.dpop_proof_with(htm, htu, token, None, |_, _| {})
    }

    /// The public key bytes as an attacker would find them (for algorithm confusion).
    pub fn public_bytes(&self) -> Vec<u8> {
        match &self.signer {
            Signer::Es256(kp) => kp.public_key().as_ref().to_vec(),
            Signer::Rs256(kp) => kp.public_key().as_ref().to_vec(),
            Signer::Ed(kp) => kp.public_key().as_ref().to_vec(),
        }
    }

    pub fn sign_raw(&self, input: &[u8]) -> Vec<u8> {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        match &self.signer {
            Signer::Es256(kp) => kp.sign(&rng, input).unwrap().as_ref().to_vec(),
            Signer::Rs256(kp) => {
                let mut sig = vec![0u8; kp.public_modulus_len()];
                kp.sign(&aws_lc_rs::signature::RSA_PKCS1_SHA256, &rng, input, &mut sig).unwrap();
                sig
            }
            Signer::Ed(kp) => kp.sign(input).as_ref().to_vec(),
        }
    }

    /// A compact JWS over exactly these header and payload texts.
    pub fn sign_text(&self, header: &str, payload: &str) -> String {
        let input = format!("{}.{}", b64(header.as_bytes()), b64(payload.as_bytes()));
        let sig = self.sign_raw(input.as_bytes());
        format!("{input}.{}", b64(&sig))
    }

    /// A token with the usual header (`typ: JWT`, this key's `alg` and `kid`).
    pub fn sign(&self, claims: &Value) -> String {
        let header = json!({"alg": self.alg, "typ": "JWT", "kid": self.kid});
        self.sign_text(&header.to_string(), &claims.to_string())
    }
}

fn rand_bytes() -> [u8; 16] {
    let mut b = [0u8; 16];
    aws_lc_rs::rand::fill(&mut b).unwrap();
    b
}

/// How the IdP answers JWKS requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Normal,
    /// 503 for everything (discovery too).
    Down,
    /// An HTML error page with 200.
    Html,
    /// A 1 MiB JSON document.
    Huge,
}

struct State {
    keys: Vec<Arc<IdpKey>>,
    mode: Mode,
    cache_control: Option<String>,
    /// Every answer waits this long first.
    delay: Option<std::time::Duration>,
    /// Opaque token → its introspection answer (JSON text) when active.
    opaque: HashMap<String, String>,
    /// When set, `/introspect` answers this status (and no JSON).
    introspect_status: Option<u16>,
    introspections: usize,
}

/// The secret of the gateway's client (`gw`) at the test IdP's introspection endpoint.
pub const IDP_CLIENT_SECRET: &str = "gw-secret+/ with spaces";

pub struct TestIdp {
    pub addr: SocketAddr,
    /// `http://127.0.0.1:PORT` (loopback http is allowed for an IdP).
    pub issuer: String,
    state: Arc<Mutex<State>>,
    jwks_fetches: Arc<AtomicUsize>,
    metadata_fetches: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestIdp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestIdp {
    pub async fn start(keys: Vec<Arc<IdpKey>>) -> TestIdp {
        Self::start_on(keys, None).await
    }

    /// Over TLS with a certificate for localhost and 127.0.0.1 from `pki`'s CA; the issuer
    /// is `https://localhost:PORT`.
    pub async fn start_tls(keys: Vec<Arc<IdpKey>>, pki: &super::Pki) -> TestIdp {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        portcullis::install_crypto_provider();
        let (cert, key) = pki.leaf();
        let certs = CertificateDer::pem_slice_iter(cert.as_bytes()).collect::<Result<Vec<_>, _>>().unwrap();
        let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
        let config = rustls::ServerConfig::builder().with_no_client_auth().with_single_cert(certs, key).unwrap();
        Self::start_on(keys, Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))).await
    }

    async fn start_on(keys: Vec<Arc<IdpKey>>, tls: Option<tokio_rustls::TlsAcceptor>) -> TestIdp {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let issuer = match tls {
            Some(_) => format!("https://localhost:{}", addr.port()),
            None => format!("http://127.0.0.1:{}", addr.port()),
        };
        let state = Arc::new(Mutex::new(State {
            keys,
            mode: Mode::Normal,
            cache_control: None,
            delay: None,
            opaque: HashMap::new(),
            introspect_status: None,
            introspections: 0,
        }));
        let jwks_fetches = Arc::new(AtomicUsize::new(0));
        let metadata_fetches = Arc::new(AtomicUsize::new(0));
        let (st, jf, mf, iss) = (state.clone(), jwks_fetches.clone(), metadata_fetches.clone(), issuer.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let (st, jf, mf, iss) = (st.clone(), jf.clone(), mf.clone(), iss.clone());
                let tls = tls.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (st, jf, mf, iss) = (st.clone(), jf.clone(), mf.clone(), iss.clone());
                        async move {
                            let delay = st.lock().unwrap().delay;
                            if let Some(d) = delay {
                                tokio::time::sleep(d).await;
                            }
                            if req.uri().path() == "/introspect" {
                                return Ok::<_, Infallible>(introspect(req, &st).await);
                            }
                            Ok::<_, Infallible>(answer(&req, &st, &jf, &mf, &iss))
                        }
                    });
                    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    match tls {
                        Some(tls) => {
                            let Ok(stream) = tls.accept(stream).await else { return };
                            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                        }
                        None => {
                            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                        }
                    }
                });
            }
        });
        TestIdp { addr, issuer, state, jwks_fetches, metadata_fetches, task }
    }

    pub fn publish(&self, keys: Vec<Arc<IdpKey>>) {
        self.state.lock().unwrap().keys = keys;
    }

    pub fn set_mode(&self, mode: Mode) {
        self.state.lock().unwrap().mode = mode;
    }

    pub fn set_delay(&self, d: Option<std::time::Duration>) {
        self.state.lock().unwrap().delay = d;
    }

    pub fn set_cache_control(&self, v: Option<&str>) {
        self.state.lock().unwrap().cache_control = v.map(str::to_string);
    }

    pub fn jwks_fetches(&self) -> usize {
        self.jwks_fetches.load(Ordering::SeqCst)
    }

    pub fn metadata_fetches(&self) -> usize {
        self.metadata_fetches.load(Ordering::SeqCst)
    }

    pub fn jwks_uri(&self) -> String {
        format!("{}/jwks", self.issuer)
    }

    /// `{issuer}/introspect`.
    pub fn introspection_endpoint(&self) -> String {
        format!("{}/introspect", self.issuer)
    }

    /// A new opaque token (one random part, no dots) that introspects as active with
    /// `answer`'s members (`active`, `iss`, `exp` one hour ahead, unless given).
    pub fn opaque_token(&self, answer: Value) -> String {
        let mut a = json!({"active": true, "iss": self.issuer, "exp": portcullis::tokens::now_secs() + 3600});
        for (k, v) in answer.as_object().unwrap() {
            a[k] = v.clone();
        }
        self.opaque_token_text(&a.to_string())
    }

    /// A new opaque token whose introspection answer is exactly `answer` (JSON text the
    /// serializer would not write, such as a member named twice).
    pub fn opaque_token_text(&self, answer: &str) -> String {
        let token = format!("opq_{}", portcullis::tokens::random_token(24));
        self.state.lock().unwrap().opaque.insert(token.clone(), answer.to_string());
        token
    }

    /// The IdP forgets `token`: from now on it introspects as inactive.
    pub fn revoke_opaque(&self, token: &str) {
        self.state.lock().unwrap().opaque.remove(token);
    }

    /// `/introspect` answers `status` (an empty body) from now on; `None`: normally.
    pub fn set_introspect_status(&self, status: Option<u16>) {
        self.state.lock().unwrap().introspect_status = status;
    }

    /// Requests that reached `/introspect`.
    pub fn introspections(&self) -> usize {
        self.state.lock().unwrap().introspections
    }

    /// Claims of a valid token of this IdP for `aud`, valid 10 minutes.
    pub fn claims(&self, sub: &str, aud: &str) -> Value {
        let now = portcullis::tokens::now_secs();
        json!({"iss": self.issuer, "sub": sub, "aud": aud, "exp": now + 600, "iat": now, "nbf": now,
               "jti": format!("idp-{}", portcullis::tokens::random_token(8))})
    }
}

/// RFC 7662: `gw` authenticates with Basic (both halves form-encoded); the answer is the
/// token's, or `{"active": false}`.
async fn introspect(req: Request<Incoming>, state: &Mutex<State>) -> Response<Full<Bytes>> {
    use base64::Engine;
    let respond = |status: u16, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
        r.headers_mut().insert("content-type", "application/json".parse().unwrap());
        r
    };
    let form = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("gw:{}", form(IDP_CLIENT_SECRET)));
    let authorized =
        req.headers().get("authorization").and_then(|v| v.to_str().ok()) == Some(&format!("Basic {basic}"));
    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let mut st = state.lock().unwrap();
    st.introspections += 1;
    if let Some(status) = st.introspect_status {
        return respond(status, String::new());
    }
    if !authorized {
        return respond(401, json!({"error": "invalid_client"}).to_string());
    }
    let token = form_urlencoded::parse(&body).find(|(k, _)| k == "token").map(|(_, v)| v.into_owned());
    match token.and_then(|t| st.opaque.get(&t).cloned()) {
        Some(a) => respond(200, a),
        None => respond(200, json!({"active": false}).to_string()),
    }
}

fn answer(
    req: &Request<Incoming>,
    state: &Mutex<State>,
    jwks_fetches: &AtomicUsize,
    metadata_fetches: &AtomicUsize,
    issuer: &str,
) -> Response<Full<Bytes>> {
    let st = state.lock().unwrap();
    let respond = |status: u16, body: String, cc: Option<&str>| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
        if let Some(cc) = cc {
            r.headers_mut().insert("cache-control", cc.parse().unwrap());
        }
        r
    };
    let path = req.uri().path();
    match path {
        "/.well-known/openid-configuration" => {
            metadata_fetches.fetch_add(1, Ordering::SeqCst);
            if st.mode == Mode::Down {
                return respond(503, "down".into(), None);
            }
            respond(200, json!({"issuer": issuer, "jwks_uri": format!("{issuer}/jwks")}).to_string(), None)
        }
        "/jwks" => {
            jwks_fetches.fetch_add(1, Ordering::SeqCst);
            match st.mode {
                Mode::Down => respond(503, "down".into(), None),
                Mode::Html => respond(200, "<html><body>Service maintenance</body></html>".into(), None),
                Mode::Huge => {
                    let pad = "x".repeat(1 << 20);
                    respond(200, json!({"keys": [], "pad": pad}).to_string(), None)
                }
                Mode::Normal => {
                    let keys: Vec<Value> = st.keys.iter().map(|k| k.jwk()).collect();
                    respond(200, json!({ "keys": keys }).to_string(), st.cache_control.as_deref())
                }
            }
        }
        _ => respond(404, "not found".into(), None),
    }
}

/// `portcullis check`'s preflight on a minimal config with one `[[trusted_issuer]]` made of
/// `issuer_lines` (`{d}` in them names a fresh directory, which holds nothing): the error
/// it gives. The table starts on line 12.
pub fn issuer_preflight_error(issuer_lines: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let text = format!(
        "issuer = \"https://gateway.test\"\n[[listener]]\naddress = \"127.0.0.1:0\"\ntls = false\n[store]\n\
         path = \"{d}/store.redb\"\n[[key]]\nid = \"k1\"\nfile = \"{d}/k1.pem\"\n\n[[trusted_issuer]]\n{}",
        issuer_lines.replace("{d}", &d)
    );
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, &text).unwrap();
    let cfg = portcullis::config::Config::load(&path).unwrap();
    portcullis::reload::preflight(&cfg).unwrap_err().to_string()
}
