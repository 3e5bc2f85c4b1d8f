//! Stock Python OAuth clients (authlib, requests-oauthlib) against the gateway, unmodified:
//! tests/python/clients.py does the talking. `.ci/run` installs the packages; locally the
//! test prints a notice and passes when they are missing (it fails when `CI` is set).

mod common;

use std::process::Command;

use common::*;

fn python_ready() -> bool {
    Command::new("python3")
        .args(["-c", "import authlib, requests, requests_oauthlib"])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[tokio::test]
async fn authlib_and_requests_oauthlib_work_unmodified() {
    if !python_ready() {
        assert!(std::env::var_os("CI").is_none(), "python3 with authlib and requests-oauthlib is required in CI");
        eprintln!("NOTICE: python3 with authlib/requests-oauthlib not found; skipping the Python client test");
        return;
    }
    let up = EchoUpstream::start().await;
    let gw = TestGateway::start(up.addr).await;
    let ca = gw.dir.path().join("ca.pem");
    std::fs::write(&ca, &gw.pki.ca_pem).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/clients.py");
    let base = gw.url("");
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .arg(script)
            .arg(base)
            .arg(&ca)
            .env("REQUESTS_CA_BUNDLE", &ca)
            .env("PYTHONUNBUFFERED", "1")
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "python clients failed:\n{stdout}\n{stderr}");
    assert_eq!(stdout.lines().filter(|l| l.starts_with("ok ")).count(), 11, "{stdout}");
}
