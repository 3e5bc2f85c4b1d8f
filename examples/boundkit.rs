//! A load client for the sender-constrained rows of `benches/load.sh` (issue 13): wrk can
//! neither sign a fresh DPoP proof per request nor present a client certificate, so the
//! bearer, DPoP and mTLS rows all run on this one client, for fairness.
//!
//! `boundkit load --url https://127.0.0.1:PORT/api/hello --mode bearer|dpop|mtls
//!  [--token T] [--basic id:secret] [--cert crt.pem --key key.pem] [--conns C]
//!  [--seconds S]`
//!
//! - `bearer`: `Authorization: Bearer T`.
//! - `dpop`: makes an ES256 key, gets a DPoP-bound token from `/oauth/token`
//!   (client_credentials, `--basic`), then sends every request with `Authorization: DPoP`
//!   and a proof of its own (fresh `jti`, `iat` now, `ath` of the token).
//! - `mtls`: `Authorization: Bearer T` over connections presenting `--cert`/`--key` (T
//!   bound to that certificate, got by the script with curl).
//!
//! C HTTP/1.1 keep-alive connections over TLS (the server certificate is not checked:
//! loopback, the bench's own), one request in flight on each, for S seconds. Prints
//! `requests N`, `ok N` (200s), `seconds`, `rps`.
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use serde_json::json;
use tokio::net::TcpStream;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

fn b64(v: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(v)
}

#[derive(Debug)]
struct AnyServer;
impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::aws_lc_rs::default_provider().signature_verification_algorithms.supported_schemes()
    }
}

struct Dpop {
    key: EcdsaKeyPair,
    header_b64: String,
    rng: SystemRandom,
}

impl Dpop {
    fn new() -> anyhow::Result<Dpop> {
        let key = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)?;
        let p = key.public_key().as_ref();
        let jwk = json!({"kty": "EC", "crv": "P-256", "x": b64(&p[1..33]), "y": b64(&p[33..65])});
        let header = json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": jwk});
        Ok(Dpop { key, header_b64: b64(header.to_string().as_bytes()), rng: SystemRandom::new() })
    }

    fn proof(&self, htm: &str, htu: &str, token: Option<&str>) -> anyhow::Result<String> {
        let mut jti = [0u8; 16];
        aws_lc_rs::rand::fill(&mut jti)?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let mut claims = json!({"jti": b64(&jti), "htm": htm, "htu": htu, "iat": now});
        if let Some(t) = token {
            claims["ath"] = b64(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, t.as_bytes()).as_ref()).into();
        }
        let input = format!("{}.{}", self.header_b64, b64(claims.to_string().as_bytes()));
        let sig = self.key.sign(&self.rng, input.as_bytes())?;
        Ok(format!("{input}.{}", b64(sig.as_ref())))
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(tls: &tokio_rustls::TlsConnector, authority: &str) -> anyhow::Result<Sender> {
    let tcp = TcpStream::connect(authority).await?;
    tcp.set_nodelay(true)?;
    let stream = tls.connect(ServerName::try_from("localhost")?.to_owned(), tcp).await?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

async fn dpop_token(
    tls: &tokio_rustls::TlsConnector,
    base: &str,
    authority: &str,
    basic: &str,
    dpop: &Dpop,
) -> anyhow::Result<String> {
    let url = format!("{base}/oauth/token");
    let mut sender = connect(tls, authority).await?;
    let req = hyper::Request::post(&url)
        .header("host", authority)
        .header("authorization", format!("Basic {}", STANDARD.encode(basic)))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("dpop", dpop.proof("POST", &url, None)?)
        .body(Full::new(Bytes::from_static(b"grant_type=client_credentials&scope=read")))?;
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body)?;
    if status != 200 || v["token_type"] != "DPoP" {
        bail!("token endpoint answered {status}: {v}");
    }
    Ok(v["access_token"].as_str().context("access_token")?.to_string())
}

async fn load(args: &[String]) -> anyhow::Result<()> {
    let url = arg(args, "--url").context("--url")?;
    let mode = arg(args, "--mode").context("--mode")?;
    let conns: usize = arg(args, "--conns").unwrap_or("32".into()).parse()?;
    let seconds: f64 = arg(args, "--seconds").unwrap_or("10".into()).parse()?;
    let uri: hyper::Uri = url.parse()?;
    let authority = uri.authority().context("authority")?.to_string();
    let base = format!("https://{authority}");

    let builder = rustls::ClientConfig::builder().dangerous().with_custom_certificate_verifier(Arc::new(AnyServer));
    let mut config = if mode == "mtls" {
        let cert = arg(args, "--cert").context("--cert")?;
        let key = arg(args, "--key").context("--key")?;
        let certs = CertificateDer::pem_file_iter(&cert)?.collect::<Result<Vec<_>, _>>()?;
        builder.with_client_auth_cert(certs, PrivateKeyDer::from_pem_file(&key)?)?
    } else {
        builder.with_no_client_auth()
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config));

    let dpop = (mode == "dpop").then(Dpop::new).transpose()?.map(Arc::new);
    let token = match &dpop {
        Some(d) => dpop_token(&tls, &base, &authority, &arg(args, "--basic").context("--basic")?, d).await?,
        None => arg(args, "--token").context("--token")?,
    };
    let scheme = if dpop.is_some() { "DPoP" } else { "Bearer" };
    let auth = format!("{scheme} {token}");

    let (total, ok) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut senders = Vec::new();
    for _ in 0..conns {
        senders.push(connect(&tls, &authority).await?);
    }
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    for mut sender in senders {
        let (url, authority, auth, token) = (url.clone(), authority.clone(), auth.clone(), token.clone());
        let (dpop, total, ok) = (dpop.clone(), total.clone(), ok.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let mut req = hyper::Request::get(&url).header("host", &authority).header("authorization", &auth);
                if let Some(d) = &dpop {
                    req = req.header("dpop", d.proof("GET", &url, Some(&token))?);
                }
                let resp = sender.send_request(req.body(Full::new(Bytes::new()))?).await?;
                let status = resp.status();
                resp.into_body().collect().await?;
                total.fetch_add(1, Ordering::Relaxed);
                if status == 200 {
                    ok.fetch_add(1, Ordering::Relaxed);
                }
                sender.ready().await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let secs = start.elapsed().as_secs_f64();
    let (total, ok) = (total.load(Ordering::Relaxed), ok.load(Ordering::Relaxed));
    println!("requests {total}");
    println!("ok {ok}");
    println!("seconds {secs:.3}");
    println!("rps {:.0}", total as f64 / secs);
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    portcullis::install_crypto_provider();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    match args.first().map(String::as_str) {
        Some("load") => rt.block_on(load(&args)),
        _ => bail!("usage: boundkit load --url URL --mode bearer|dpop|mtls ..."),
    }
}
