//! Sender-constrained tokens on the proxy path, whatever the TLS setup: a token whose
//! `cnf` binds it is honoured only with proof of its key, a `cnf` the gateway cannot read
//! refuses the token, and upstreams learn the binding from headers no caller can forge.
//! (Certificate-bound tokens over mutual TLS: tests/mtls.rs.)

mod common;

use common::*;
use serde_json::json;

/// `thumbprint(b"cert")`: a well-formed SHA-256 thumbprint.
const T: &str = "BimEMugGayniIjvMI6qVBLVq5Qj6vzQ1UIhpucMZDiI";

#[tokio::test]
async fn bound_tokens_without_their_proof_are_refused_and_bad_cnf_refuses_the_token() {
    let (_up, gw) = setup().await;
    let claims = |cnf: serde_json::Value| with(good_claims("svc", "read"), "cnf", cnf);
    // Bound to a certificate, presented on a connection with none.
    let mtls = signed_with(&gw, good_header(), claims(json!({ "x5t#S256": T })));
    assert_invalid_token(&gw, "mtls-bound, no certificate", &mtls).await;
    // Bound to a DPoP key, sent as Bearer.
    let dpop = signed_with(&gw, good_header(), claims(json!({ "jkt": T })));
    assert_invalid_token(&gw, "dpop-bound as bearer", &dpop).await;
    // A cnf that cannot be read completely is not ignored.
    for (label, cnf) in [
        ("empty", json!({})),
        ("both", json!({ "x5t#S256": T, "jkt": T })),
        ("unknown member", json!({ "x5t#S256": T, "kid": "a" })),
        ("x5t (SHA-1)", json!({ "x5t": T })),
        ("short", json!({ "jkt": &T[..42] })),
        ("not a string", json!({ "jkt": 5 })),
        ("null", json!(null)),
        ("string", json!(T)),
    ] {
        let token = signed_with(&gw, good_header(), claims(cnf));
        assert_invalid_token(&gw, label, &token).await;
    }
    let m = gw.client().get(gw.admin_url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(m.contains(r#"portcullis_bearer_refusals_total{reason="binding_mismatch"} 2"#), "{m}");
    assert!(m.contains(r#"portcullis_bearer_refusals_total{reason="bad_claims"}"#), "{m}");
    // A cache hit is held to the binding too: the same token again.
    assert_invalid_token(&gw, "mtls-bound, again (cache)", &mtls).await;
}

#[tokio::test]
async fn upstreams_learn_the_binding_and_forged_copies_are_stripped() {
    let (_up, gw) = setup().await;
    let token = svc_token(&gw).await;
    let resp = gw
        .client()
        .get(gw.url("/api/x"))
        .bearer_auth(&token)
        .header("x-auth-binding", "mtls")
        .header("x-auth-cert-thumbprint", T)
        .header("X_Auth_Cert_Thumbprint", T)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let echo: Echo = resp.json().await.unwrap();
    assert_eq!(echo.header_all("x-auth-binding"), vec!["none"], "{echo:?}");
    assert!(echo.header_all("x-auth-cert-thumbprint").is_empty(), "{echo:?}");
    assert!(echo.header_all("x_auth_cert_thumbprint").is_empty(), "{echo:?}");
}
