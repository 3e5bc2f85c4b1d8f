//! A raw HTTP client for requests a URL library would not send as written: HTTP/1.1 over a
//! plain or TLS socket (mixed-case or duplicate header names, hop-by-hop fields, odd paths,
//! pipelined or smuggled bytes) and one-off HTTP/2 requests with arbitrary pseudo-headers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{Echo, TestGateway, tls_connect};

pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    pub fn echo(&self) -> Echo {
        assert_eq!(self.status, 200, "{}", String::from_utf8_lossy(&self.body));
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// Send `head` (request line and header lines, each ending in CRLF, without the blank line;
/// `Connection: close` is the caller's business) and read the whole response.
pub async fn raw_exchange<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, head: &str, body: &[u8]) -> RawResponse {
    let mut req = head.as_bytes().to_vec();
    req.extend_from_slice(b"\r\n");
    req.extend_from_slice(body);
    s.write_all(&req).await.unwrap();
    s.flush().await.unwrap();
    let mut buf = Vec::new();
    // A TLS peer may close without close_notify after Connection: close; what we read counts.
    let _ = s.read_to_end(&mut buf).await;
    parse_response(&buf)
}

pub fn parse_response(buf: &[u8]) -> RawResponse {
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(buf)));
    let head = std::str::from_utf8(&buf[..end]).unwrap();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status: u16 = status_line.split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap();
            (n.trim().to_ascii_lowercase(), v.trim().to_string())
        })
        .collect();
    let rest = &buf[end + 4..];
    let chunked = headers.iter().any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = if chunked {
        let mut out = Vec::new();
        let mut at = 0;
        loop {
            let line_end = at + rest[at..].windows(2).position(|w| w == b"\r\n").unwrap();
            let size = usize::from_str_radix(std::str::from_utf8(&rest[at..line_end]).unwrap().trim(), 16).unwrap();
            at = line_end + 2;
            if size == 0 {
                break;
            }
            out.extend_from_slice(&rest[at..at + size]);
            at += size + 2;
        }
        out
    } else {
        match headers.iter().find(|(n, _)| n == "content-length") {
            Some((_, v)) => rest[..v.parse::<usize>().unwrap()].to_vec(),
            None => rest.to_vec(),
        }
    };
    RawResponse { status, headers, body }
}

pub async fn raw_plain(addr: SocketAddr, head: &str, body: &[u8]) -> RawResponse {
    raw_exchange(TcpStream::connect(addr).await.unwrap(), head, body).await
}

pub async fn raw_tls(gw: &TestGateway, head: &str, body: &[u8]) -> RawResponse {
    raw_exchange(tls_connect(gw).await, head, body).await
}

/// Raw bytes, not a request head: write `bytes` on a fresh connection and read until the gateway closes it (bounded by
/// the test gateway's short idle timeout, with a generous cap).
pub async fn raw_bytes(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), async {
        let mut chunk = [0u8; 8192];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the gateway kept the connection open: {:?}", String::from_utf8_lossy(&buf));
    buf
}

/// The status codes of every response in `buf`, in order.
pub fn statuses(buf: &[u8]) -> Vec<u16> {
    let text = String::from_utf8_lossy(buf);
    text.match_indices("HTTP/1.")
        .filter(|(i, _)| *i == 0 || text[..*i].ends_with('\n'))
        .filter_map(|(i, _)| text.get(i + 9..i + 12).and_then(|s| s.parse().ok()))
        .collect()
}

pub fn head_of(buf: &[u8]) -> String {
    let text = String::from_utf8_lossy(buf);
    text.split("\r\n\r\n").next().unwrap_or("").to_ascii_lowercase()
}

/// The JSON body of a single raw response from the echo upstream.
pub fn echo_of(buf: &[u8]) -> Echo {
    assert_eq!(statuses(buf), vec![200], "{}", String::from_utf8_lossy(buf));
    let at = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    serde_json::from_slice(&buf[at..]).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(buf)))
}

/// One HTTP/2 request over TLS (ALPN h2) with a target and header bytes no URL library
/// would send as written; the status and body.
pub async fn h2_request(gw: &TestGateway, method: &str, uri: &str, headers: &[(&str, &[u8])]) -> (u16, Vec<u8>) {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    portcullis::install_crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(gw.pki.ca_pem.as_bytes()).unwrap()).unwrap();
    let mut config = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(gw.https).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await.unwrap();
    tokio::spawn(conn);
    let mut req = hyper::Request::builder().method(method).uri(uri);
    for (n, v) in headers {
        req = req.header(*n, http::HeaderValue::from_bytes(v).unwrap());
    }
    let resp = send.send_request(req.body(http_body_util::Empty::<Bytes>::new()).unwrap()).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes().to_vec();
    (status, body)
}
