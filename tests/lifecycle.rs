//! Start-up and shutdown: graceful shutdown lets in-flight requests finish and refuses new
//! connections; the CLI checks configs with file:line errors and makes hashes and keys.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_requests_then_stops_listening() {
    let up = EchoUpstream::start().await;
    let gw = TestGateway::start(up.addr).await;
    let token = gw.token("svc", SVC_SECRET, None).await;
    let (client, url) = (gw.client(), gw.url("/slow/800"));
    let in_flight = tokio::spawn(async move { client.get(url).bearer_auth(token).send().await.map(|r| r.status()) });
    // Let the request reach the upstream before shutting down.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let addr = gw.https;
    gw.shutdown().await;
    let status = in_flight.await.unwrap().expect("the in-flight request completes");
    assert_eq!(status, 200);
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "no longer listening");
}

fn portcullis(args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut input = child.stdin.take().unwrap();
        if let Some(s) = stdin {
            input.write_all(s.as_bytes()).unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn check_accepts_the_shipped_config_and_refuses_bad_ones_with_file_and_line() {
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/gateway.toml");
    let (code, out, err) = portcullis(&["check", "--config", shipped], None);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("OK") && out.contains("client    demo ") && out.contains("route     /api"), "{out}");

    let dir = tempfile::tempdir().unwrap();
    let base = std::fs::read_to_string(shipped).unwrap();
    let cases = [
        (
            "unknown key",
            base.replacen("realm = \"portcullis\"", "realm = \"portcullis\"\ncolour = \"blue\"", 1),
            "unknown field `colour`",
        ),
        ("bad duration", base.replacen("token_lifetime = \"1h\"", "token_lifetime = \"soon\"", 1), "bad duration"),
        (
            "bad url",
            base.replacen("upstream = \"http://127.0.0.1:9000\"", "upstream = \"not a url\"", 1),
            "bad upstream URL",
        ),
        ("duplicate client", base.replacen("id = \"demo-web\"", "id = \"demo\"", 1), "duplicate client id"),
        (
            "route without upstream",
            base.replacen("upstream = \"http://127.0.0.1:9000\"\nscopes", "scopes", 1),
            "missing field `upstream`",
        ),
    ];
    for (name, text, reason) in cases {
        assert_ne!(text, base, "{name}: the edit must change the file");
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, &text).unwrap();
        let (code, _, err) = portcullis(&["check", "--config", path.to_str().unwrap()], None);
        assert_eq!(code, 1, "{name}");
        let prefix = format!("{}:", path.display());
        let first = err.lines().next().unwrap_or("");
        assert!(first.starts_with(&prefix), "{name}: {err}");
        let line: usize = first[prefix.len()..].split(':').next().unwrap().parse().unwrap_or(0);
        assert!(line > 0, "{name}: no line number in {first}");
        assert!(first.contains(reason), "{name}: {first}");
    }
}

#[test]
fn hash_secret_and_gen_key_produce_usable_material() {
    let (code, out, _) = portcullis(&["hash-secret"], Some("s3cret\n"));
    assert_eq!(code, 0);
    let phc = out.trim();
    assert!(phc.starts_with("$argon2id$"), "{phc}");
    assert!(portcullis::oauth::client_auth::verify_argon2("s3cret", phc));
    assert!(!portcullis::oauth::client_auth::verify_argon2("s3cret\n", phc), "the trailing newline is not part of it");
    let (code, _, err) = portcullis(&["hash-secret"], Some(""));
    assert_eq!(code, 1, "{err}");

    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k.pem");
    let (code, _, err) = portcullis(&["gen-key", "--out", key.to_str().unwrap()], None);
    assert_eq!(code, 0, "{err}");
    let pem = std::fs::read_to_string(&key).unwrap();
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    }
    let (code, _, _) = portcullis(&["gen-key", "--out", key.to_str().unwrap()], None);
    assert_eq!(code, 1, "never overwrites an existing key");
}
