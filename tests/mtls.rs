//! Mutual TLS (RFC 8705) over real TLS sockets, with certificates made here: client
//! authentication by a CA-issued certificate's subject DN or SAN (`tls_client_auth`) or by a
//! self-signed certificate's thumbprint (`self_signed_tls_client_auth`); certificate-bound
//! access and refresh tokens, honoured only on a connection presenting that certificate,
//! over HTTP/1.1 and HTTP/2; the identity headers upstreams get; the metadata; and the
//! configurations refused.

mod common;

use std::net::IpAddr;
use std::path::Path;

use base64::Engine;
use common::*;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, SanType, date_time_ymd,
};
use serde_json::Value;

/// A CA for client certificates.
struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        Ca { pem: cert.pem(), issuer: Issuer::new(params, key) }
    }

    fn issue(&self, params: CertificateParams) -> ClientId {
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        ClientId::new(cert.der().to_vec(), cert.pem(), key.serialize_pem())
    }
}

/// A client certificate and its key.
#[derive(Clone)]
struct ClientId {
    pem: String,
    key_pem: String,
    thumbprint: String,
}

impl ClientId {
    fn new(der: Vec<u8>, pem: String, key_pem: String) -> ClientId {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &der);
        let thumbprint = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref());
        ClientId { pem, key_pem, thumbprint }
    }

    fn self_signed(params: CertificateParams) -> ClientId {
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        ClientId::new(cert.der().to_vec(), cert.pem(), key.serialize_pem())
    }

    /// An HTTPS client presenting this certificate.
    fn client(&self, gw: &TestGateway, http2: bool) -> reqwest::Client {
        client_with(gw, Some(self), http2)
    }
}

fn client_with(gw: &TestGateway, id: Option<&ClientId>, http2: bool) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(gw.pki.ca_pem.as_bytes()).unwrap();
    let mut b = reqwest::Client::builder().tls_certs_only([ca]).no_proxy();
    if let Some(id) = id {
        let pem = format!("{}{}", id.pem, id.key_pem);
        b = b.identity(reqwest::Identity::from_pem(pem.as_bytes()).unwrap());
    }
    if http2 {
        b = b.http2_prior_knowledge();
    }
    b.build().unwrap()
}

/// A client certificate with every kind of name tls_client_auth can match.
fn named_params() -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, "Client One");
    p.distinguished_name.push(DnType::OrganizationName, "Example Corp");
    p.subject_alt_names = vec![
        SanType::DnsName("client.example.com".try_into().unwrap()),
        SanType::URI("spiffe://example.com/client".try_into().unwrap()),
        SanType::IpAddress("10.1.2.3".parse::<IpAddr>().unwrap()),
        SanType::Rfc822Name("client@example.com".try_into().unwrap()),
    ];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    p
}

fn plain_params(cn: &str) -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    p
}

struct Setup {
    _up: EchoUpstream,
    gw: TestGateway,
    ca: Ca,
    /// Issued by `ca`, with every name.
    named: ClientId,
    /// The self-signed certificate client `selfie` registered by thumbprint.
    selfie: ClientId,
}

/// The clients of the mTLS tests, appended to the standard ones.
fn mtls_clients(selfie: &ClientId, selfie_file: &Path) -> String {
    format!(
        r#"
[[client]]
id = "dn-client"
token_endpoint_auth_method = "tls_client_auth"
tls_client_auth_subject_dn = "o=example corp, cn=client one"
grants = ["client_credentials"]
scopes = ["read"]

[[client]]
id = "dns-client"
token_endpoint_auth_method = "tls_client_auth"
tls_client_auth_san_dns = "Client.Example.com"
grants = ["client_credentials"]
scopes = ["read"]

[[client]]
id = "uri-client"
token_endpoint_auth_method = "tls_client_auth"
tls_client_auth_san_uri = "spiffe://example.com/client"
grants = ["client_credentials"]
scopes = ["read"]

[[client]]
id = "ip-client"
token_endpoint_auth_method = "tls_client_auth"
tls_client_auth_san_ip = "10.1.2.3"
grants = ["client_credentials"]
scopes = ["read"]

[[client]]
id = "email-client"
token_endpoint_auth_method = "tls_client_auth"
tls_client_auth_san_email = "client@example.com"
grants = ["client_credentials"]
scopes = ["read"]

[[client]]
id = "other-dn"
token_endpoint_auth_method = "tls_client_auth"
tls_client_auth_subject_dn = "CN=Client Two,O=Example Corp"
grants = ["client_credentials"]
scopes = ["read"]

[[client]]
id = "selfie"
token_endpoint_auth_method = "self_signed_tls_client_auth"
certificate_thumbprint = "{thumb}"
grants = ["client_credentials"]
scopes = ["read"]
token_binding = "mtls"

[[client]]
id = "selfie-file"
token_endpoint_auth_method = "self_signed_tls_client_auth"
certificate = "{file}"
grants = ["client_credentials"]
scopes = ["read"]

[[client]]
id = "bound"
secret_hash = "{SVC_HASH}"
grants = ["client_credentials"]
scopes = ["read"]
token_binding = "mtls"

[[client]]
id = "mspa"
grants = ["authorization_code", "refresh_token"]
scopes = ["read"]
redirect_uris = ["https://spa.test/cb"]
token_binding = "mtls"
"#,
        thumb = selfie.thumbprint,
        file = selfie_file.display(),
    )
}

async fn setup_mode(mode: &str) -> Setup {
    setup_mode_with(mode, "").await
}

/// As [`setup_mode`], with `extra` appended to the config.
async fn setup_mode_with(mode: &str, extra: &str) -> Setup {
    let up = EchoUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(dir.path());
    let ca = Ca::new("client CA");
    let ca_path = dir.path().join("client-ca.pem");
    std::fs::write(&ca_path, &ca.pem).unwrap();
    let named = ca.issue(named_params());
    let selfie = ClientId::self_signed(plain_params("selfie"));
    let selfie_file = dir.path().join("selfie.pem");
    std::fs::write(&selfie_file, &selfie.pem).unwrap();
    let text = config_toml(dir.path(), &pki, up.addr, "")
        .replace("[tls]\n", &format!("[tls]\nclient_auth = \"{mode}\"\nclient_ca = \"{}\"\n", ca_path.display()))
        + &mtls_clients(&selfie, &selfie_file)
        + extra;
    let gw = TestGateway::start_text(dir, pki, &text).await;
    Setup { _up: up, gw, ca, named, selfie }
}

/// client_credentials with `client_id` in the body (no secret) over `client`.
async fn cert_token(gw: &TestGateway, client: &reqwest::Client, client_id: &str) -> (u16, Value) {
    let form = [("grant_type", "client_credentials"), ("client_id", client_id)];
    let resp = client.post(gw.url("/oauth/token")).form(&form).send().await.unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

#[tokio::test]
async fn tls_client_auth_matches_the_subject_dn_and_each_san_kind() {
    let s = setup_mode("optional").await;
    let gw = &s.gw;
    let named = s.named.client(gw, false);
    for id in ["dn-client", "dns-client", "uri-client", "ip-client", "email-client"] {
        let (status, v) = cert_token(gw, &named, id).await;
        assert_eq!(status, 200, "{id}: {v}");
        assert_eq!(v["token_type"], "Bearer");
        // Not bound: these clients do not ask for it.
        assert!(claims(v["access_token"].as_str().unwrap()).get("cnf").is_none(), "{id}");
    }
    // The right CA, another name.
    let (status, v) = cert_token(gw, &named, "other-dn").await;
    assert_eq!((status, v["error"].as_str()), (401, Some("invalid_client")), "{v}");
    // The same names from another CA, or self-signed: they chain to nothing we trust.
    let stranger = Ca::new("other CA").issue(named_params());
    let forged = ClientId::self_signed(named_params());
    for (label, id) in [("other CA", &stranger), ("self-signed", &forged)] {
        let client = id.client(gw, false);
        for cid in ["dn-client", "dns-client"] {
            let (status, v) = cert_token(gw, &client, cid).await;
            assert_eq!((status, v["error"].as_str()), (401, Some("invalid_client")), "{label} {cid}: {v}");
        }
    }
    // No certificate at all; a secret instead of the certificate.
    let (status, _) = cert_token(gw, &gw.client(), "dn-client").await;
    assert_eq!(status, 401);
    let resp = named
        .post(gw.url("/oauth/token"))
        .basic_auth("dn-client", Some(SVC_SECRET))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    // A secret client cannot use a certificate instead of its secret.
    let (status, _) = cert_token(gw, &named, "svc").await;
    assert_eq!(status, 401);
    // ...but keeps working with its secret, certificate or not.
    let resp = named
        .post(gw.url("/oauth/token"))
        .basic_auth("svc", Some(SVC_SECRET))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // Revocation and introspection authenticate the same way.
    let (_, v) = cert_token(gw, &named, "dn-client").await;
    let token = v["access_token"].as_str().unwrap();
    let resp = named
        .post(gw.url("/oauth/introspect"))
        .form(&[("token", token), ("client_id", "dn-client")])
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let v: Value = resp.json().await.unwrap();
    assert_eq!((status.as_u16(), v["active"].as_bool()), (200, Some(true)), "{v}");
    let resp = gw
        .client()
        .post(gw.url("/oauth/revoke"))
        .form(&[("token", token), ("client_id", "dn-client")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401, "no certificate: not authenticated");
    let resp =
        named.post(gw.url("/oauth/revoke")).form(&[("token", token), ("client_id", "dn-client")]).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_invalid_token(gw, "revoked", token).await;
}

#[tokio::test]
async fn self_signed_clients_are_known_by_their_thumbprint() {
    let s = setup_mode("optional").await;
    let gw = &s.gw;
    let selfie = s.selfie.client(gw, false);
    let (status, v) = cert_token(gw, &selfie, "selfie").await;
    assert_eq!(status, 200, "{v}");
    let (status, v) = cert_token(gw, &selfie, "selfie-file").await;
    assert_eq!(status, 200, "{v}");
    // Another self-signed certificate with the same subject; a CA-issued one.
    let twin = ClientId::self_signed(plain_params("selfie")).client(gw, false);
    let named = s.named.client(gw, false);
    for (label, client) in [("twin", &twin), ("CA-issued", &named)] {
        for id in ["selfie", "selfie-file"] {
            let (status, v) = cert_token(gw, client, id).await;
            assert_eq!((status, v["error"].as_str()), (401, Some("invalid_client")), "{label} {id}: {v}");
        }
    }
}

/// Wrong certificates spend the (source, client) failure budget like wrong secrets: after
/// `client_failures` of them, even the right certificate gets 429 for that client.
#[tokio::test]
async fn wrong_certificates_spend_the_client_failure_budget() {
    let limits =
        "\n[rate_limit]\nclient_failures = 3\nclient_failures_window = \"1h\"\nip_burst = 1000\nfailure_cost = 1\n";
    let s = setup_mode_with("optional", limits).await;
    let gw = &s.gw;
    let selfie = s.selfie.client(gw, false);
    for _ in 0..4 {
        assert_eq!(cert_token(gw, &selfie, "selfie").await.0, 200, "successes spend nothing");
    }
    let twin = ClientId::self_signed(plain_params("selfie")).client(gw, false);
    for i in 0..3 {
        let (status, v) = cert_token(gw, &twin, "selfie").await;
        assert_eq!(status, 401, "{i}: {v}");
    }
    let (status, v) = cert_token(gw, &selfie, "selfie").await;
    assert_eq!(status, 429, "{v}");
    assert_eq!(cert_token(gw, &selfie, "selfie-file").await.0, 200, "another client is not locked out");
}

#[tokio::test]
async fn an_expired_certificate_is_refused_at_the_handshake() {
    let s = setup_mode("optional").await;
    let gw = &s.gw;
    for (label, mut params, by_ca) in [("CA-issued", named_params(), true), ("self-signed", plain_params("old"), false)]
    {
        params.not_before = date_time_ymd(2020, 1, 1);
        params.not_after = date_time_ymd(2021, 1, 1);
        let id = if by_ca { s.ca.issue(params) } else { ClientId::self_signed(params) };
        let result = id.client(gw, false).get(gw.url("/public/x")).send().await;
        assert!(result.is_err(), "{label}: an expired certificate was accepted");
    }
    // The listener still serves: without a certificate, and with a good one.
    assert_eq!(gw.client().get(gw.url("/public/x")).send().await.unwrap().status(), 200);
    assert_eq!(s.named.client(gw, false).get(gw.url("/public/x")).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn required_mode_refuses_connections_without_a_ca_issued_certificate() {
    let s = setup_mode("required").await;
    let gw = &s.gw;
    assert!(gw.client().get(gw.url("/public/x")).send().await.is_err(), "no certificate");
    assert!(s.selfie.client(gw, false).get(gw.url("/public/x")).send().await.is_err(), "self-signed");
    let named = s.named.client(gw, true);
    assert_eq!(named.get(gw.url("/public/x")).send().await.unwrap().status(), 200);
    let (status, v) = cert_token(gw, &named, "dns-client").await;
    assert_eq!(status, 200, "{v}");
}

#[tokio::test]
async fn a_bound_token_is_honoured_only_with_its_certificate_over_http1_and_http2() {
    let s = setup_mode("optional").await;
    let gw = &s.gw;
    for http2 in [false, true] {
        let holder = s.named.client(gw, http2);
        let resp = holder
            .post(gw.url("/oauth/token"))
            .basic_auth("bound", Some(SVC_SECRET))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["token_type"], "Bearer", "RFC 8705 §3: still a bearer token on the wire");
        let token = v["access_token"].as_str().unwrap().to_string();
        assert_eq!(claims(&token)["cnf"]["x5t#S256"], s.named.thumbprint.as_str());
        // RFC 8705 §3.2: introspection tells the binding.
        let resp = holder
            .post(gw.url("/oauth/introspect"))
            .basic_auth("bound", Some(SVC_SECRET))
            .form(&[("token", token.as_str())])
            .send()
            .await
            .unwrap();
        let v: Value = resp.json().await.unwrap();
        assert_eq!(
            (v["active"].as_bool(), &v["cnf"]["x5t#S256"]),
            (Some(true), &Value::from(s.named.thumbprint.as_str()))
        );

        // Twice on the same certificate: a miss, then a cache hit.
        for _ in 0..2 {
            let resp = holder
                .get(gw.url("/api/x"))
                .bearer_auth(&token)
                .header("x-auth-binding", "none")
                .header("x-auth-cert-thumbprint", "forged")
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200, "http2={http2}");
            let echo: Echo = resp.json().await.unwrap();
            assert_eq!(echo.header_all("x-auth-binding"), vec!["mtls"], "{echo:?}");
            assert_eq!(echo.header_all("x-auth-cert-thumbprint"), vec![s.named.thumbprint.as_str()]);
        }
        // Another certificate (same CA, same names), a self-signed one, none.
        let other = s.ca.issue(named_params()).client(gw, http2);
        let selfie = s.selfie.client(gw, http2);
        let bare = client_with(gw, None, http2);
        for (label, client) in [("other certificate", &other), ("self-signed", &selfie), ("no certificate", &bare)] {
            let resp = client.get(gw.url("/api/x")).bearer_auth(&token).send().await.unwrap();
            let (status, www, v) = refused(resp).await;
            assert_eq!(status, 401, "{label} http2={http2}: {v}");
            assert_eq!(v["error"], "invalid_token", "{label}");
            assert!(www.unwrap().contains("error=\"invalid_token\""), "{label}");
        }
    }
    // A bound client's token request without a certificate.
    let (status, v) = token_request(gw, Some(("bound", SVC_SECRET)), &[("grant_type", "client_credentials")]).await;
    assert_eq!((status, v["error"].as_str()), (400, Some("invalid_request")), "{v}");
    // A self-signed client's tokens are bound to its certificate too.
    let selfie = s.selfie.client(gw, false);
    let (_, v) = cert_token(gw, &selfie, "selfie").await;
    let token = v["access_token"].as_str().unwrap();
    assert_eq!(claims(token)["cnf"]["x5t#S256"], s.selfie.thumbprint.as_str());
    assert_eq!(selfie.get(gw.url("/api/x")).bearer_auth(token).send().await.unwrap().status(), 200);
    assert_invalid_token(gw, "self-signed bound, no certificate", token).await;
    let m = gw.client().get(gw.admin_url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(m.contains(r#"portcullis_bearer_refusals_total{reason="binding_mismatch"} 7"#), "{m}");
}

#[tokio::test]
async fn a_public_clients_refresh_token_is_bound_to_its_certificate() {
    let s = setup_mode("optional").await;
    let gw = &s.gw;
    let mut query = bare_spa_query();
    query[1] = ("client_id", "mspa");
    let mut b = Browser::new(gw);
    let code = login_and_consent(&mut b, gw, &query).await.location_param("code").unwrap();
    let holder = s.named.client(gw, false);
    let form = [
        ("grant_type", "authorization_code"),
        ("client_id", "mspa"),
        ("code", code.as_str()),
        ("redirect_uri", "https://spa.test/cb"),
        ("code_verifier", PKCE_VERIFIER),
    ];
    let resp = holder.post(gw.url("/oauth/token")).form(&form).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(claims(v["access_token"].as_str().unwrap())["cnf"]["x5t#S256"], s.named.thumbprint.as_str());
    let refresh = v["refresh_token"].as_str().unwrap().to_string();
    let form = [("grant_type", "refresh_token"), ("client_id", "mspa"), ("refresh_token", refresh.as_str())];
    // A thief with the refresh token and another certificate, or none.
    let thief = s.ca.issue(named_params()).client(gw, false);
    let resp = thief.post(gw.url("/oauth/token")).form(&form).send().await.unwrap();
    let status = resp.status();
    let v: Value = resp.json().await.unwrap();
    assert_eq!((status.as_u16(), v["error"].as_str()), (400, Some("invalid_grant")), "{v}");
    let resp = gw.client().post(gw.url("/oauth/token")).form(&form).send().await.unwrap();
    assert_eq!(resp.status(), 400);
    // The holder: a new pair, still bound.
    let resp = holder.post(gw.url("/oauth/token")).form(&form).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(claims(v["access_token"].as_str().unwrap())["cnf"]["x5t#S256"], s.named.thumbprint.as_str());
    let next = v["refresh_token"].as_str().unwrap();
    let form = [("grant_type", "refresh_token"), ("client_id", "mspa"), ("refresh_token", next)];
    let resp = thief.post(gw.url("/oauth/token")).form(&form).send().await.unwrap();
    assert_eq!(resp.status(), 400, "the rotated refresh token keeps the binding");
}

#[tokio::test]
async fn metadata_advertises_the_certificate_methods_and_bound_tokens() {
    let s = setup_mode("optional").await;
    let gw = &s.gw;
    let doc = get_json(&gw.client(), &gw.url("/.well-known/oauth-authorization-server")).await;
    let methods = doc["token_endpoint_auth_methods_supported"].as_array().unwrap();
    for m in ["client_secret_basic", "client_secret_post", "none", "tls_client_auth", "self_signed_tls_client_auth"] {
        assert!(methods.iter().any(|v| v == m), "{m}: {doc}");
    }
    let introspection = doc["introspection_endpoint_auth_methods_supported"].as_array().unwrap();
    assert!(introspection.iter().any(|v| v == "tls_client_auth") && !introspection.iter().any(|v| v == "none"));
    assert_eq!(doc["tls_client_certificate_bound_access_tokens"], true);
    assert!(doc.get("mtls_endpoint_aliases").is_none());
    // Without client certificates on the listeners: neither.
    let (_up, plain) = setup().await;
    let doc = get_json(&plain.client(), &plain.url("/.well-known/oauth-authorization-server")).await;
    assert!(doc.get("tls_client_certificate_bound_access_tokens").is_none(), "{doc}");
    assert!(!doc.to_string().contains("tls_client_auth"), "{doc}");
}

/// The error `Config::parse` gives for `text`: `file:line: reason`.
fn refusal(text: &str) -> String {
    portcullis::config::Config::parse(text, Path::new("/etc/portcullis/gateway.toml")).unwrap_err().to_string()
}

#[test]
fn configurations_that_cannot_work_are_refused_with_their_line() {
    let base = |tls: &str, client: &str| {
        format!(
            "issuer = \"https://gw.test\"\n[[listener]]\naddress = \"127.0.0.1:0\"\n{tls}\n[[key]]\nid = \"k\"\nfile = \"k.pem\"\n\
             generate = true\n{client}\n"
        )
    };
    let tls = |extra: &str| format!("[tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\n{extra}");
    let client = |extra: &str| {
        format!("[[client]]\nid = \"c\"\ngrants = [\"client_credentials\"]\nscopes = [\"read\"]\n{extra}")
    };
    let cases = [
        (base(&tls("client_auth = \"sometimes\"\nclient_ca = \"ca.pem\""), ""), 7, "unknown client_auth"),
        (base(&tls("client_auth = \"optional\""), ""), 7, "client_auth needs client_ca"),
        (base(&tls("client_auth = \"optional\"\nclient_ca = \" \""), ""), 8, "client_ca must name"),
        (
            base(&tls("client_auth = \"optional\"\nclient_ca = \"ca.pem\""), "")
                .replace("address = \"127.0.0.1:0\"\n", "address = \"127.0.0.1:0\"\ntls = false\n"),
            8,
            "client_auth needs a TLS listener",
        ),
        (
            base(
                &tls(""),
                &client("token_endpoint_auth_method = \"tls_client_auth\"\ntls_client_auth_san_dns = \"a\""),
            ),
            16,
            "no listener asks for one",
        ),
        (
            base(&tls(""), &client(&format!("token_binding = \"mtls\"\nsecret_hash = \"{SVC_HASH}\""))),
            16,
            "no listener asks for one",
        ),
        (
            base(
                &tls("client_auth = \"optional\"\nclient_ca = \"ca.pem\""),
                &client(
                    "token_endpoint_auth_method = \"tls_client_auth\"\ntls_client_auth_san_dns = \"a\"\n\
                     tls_client_auth_san_uri = \"https://a\"",
                ),
            ),
            19,
            "exactly one of",
        ),
        (
            base(
                &tls("client_auth = \"optional\"\nclient_ca = \"ca.pem\""),
                &client("token_endpoint_auth_method = \"tls_client_auth\""),
            ),
            17,
            "exactly one of",
        ),
        (
            base(
                &tls("client_auth = \"optional\"\nclient_ca = \"ca.pem\""),
                &client("token_endpoint_auth_method = \"tls_client_auth\"\ntls_client_auth_subject_dn = \"nonsense\""),
            ),
            18,
            "not an RFC 4514",
        ),
        (
            base(
                &tls("client_auth = \"optional\"\nclient_ca = \"ca.pem\""),
                &client(
                    "token_endpoint_auth_method = \"self_signed_tls_client_auth\"\ncertificate_thumbprint = \"abc\"",
                ),
            ),
            18,
            "certificate_thumbprint is the base64url",
        ),
        (
            base(
                &tls("client_auth = \"optional\"\nclient_ca = \"ca.pem\""),
                &client("tls_client_auth_san_dns = \"a.example\""),
            ),
            17,
            "belongs to token_endpoint_auth_method",
        ),
        (
            base(
                &tls("client_auth = \"optional\"\nclient_ca = \"ca.pem\""),
                &client(&format!(
                    "token_endpoint_auth_method = \"tls_client_auth\"\ntls_client_auth_san_dns = \"a\"\nsecret_hash = \"{SVC_HASH}\""
                )),
            ),
            19,
            "has no secret",
        ),
        (
            base(&tls(""), &client(&format!("token_binding = \"tokenbinding\"\nsecret_hash = \"{SVC_HASH}\""))),
            16,
            "unknown token_binding",
        ),
        (
            base(&tls(""), &client("token_endpoint_auth_method = \"private_key_jwt_v2\"")),
            16,
            "unknown token_endpoint_auth_method",
        ),
    ];
    for (text, line, reason) in cases {
        let e = refusal(&text);
        assert!(e.starts_with(&format!("/etc/portcullis/gateway.toml:{line}: ")), "{reason}: {e}\n{text}");
        assert!(e.contains(reason), "{reason}: {e}");
    }
}

#[tokio::test]
async fn an_unreadable_or_empty_client_ca_is_refused_at_its_line_by_check_and_serve() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(dir.path());
    let up = EchoUpstream::start().await;
    for (label, contents) in [("missing", None), ("empty", Some("")), ("not PEM", Some("hello\n"))] {
        let ca = dir.path().join(format!("ca-{}.pem", label.replace(' ', "-")));
        if let Some(c) = contents {
            std::fs::write(&ca, c).unwrap();
        }
        let text = config_toml(dir.path(), &pki, up.addr, "")
            .replace("[tls]\n", &format!("[tls]\nclient_auth = \"optional\"\nclient_ca = \"{}\"\n", ca.display()));
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, &text).unwrap();
        let line = text.lines().position(|l| l.starts_with("client_ca")).unwrap() + 1;
        let config = portcullis::config::Config::load(&path).unwrap();
        let e = portcullis::reload::preflight(&config).unwrap_err().to_string();
        assert!(e.starts_with(&format!("{}:{line}: TLS client CA bundle", path.display())), "{label}: {e}");
        assert!(portcullis::server::Server::bind(config).await.is_err(), "{label}: serve started");
    }
}

#[tokio::test]
async fn a_reloaded_client_ca_takes_effect_for_new_connections() {
    let s = setup_mode("optional").await;
    let gw = &s.gw;
    let ca_path = gw.dir.path().join("client-ca.pem");
    let (status, _) = cert_token(gw, &s.named.client(gw, false), "dns-client").await;
    assert_eq!(status, 200);
    // The bundle now holds another CA only: the same certificate no longer chains, so it
    // names no tls_client_auth client (the reloader watches the bundle like the certificate).
    let other = Ca::new("replacement CA");
    write_atomic(&ca_path, &other.pem);
    wait_until("the client CA bundle reloaded", || async {
        cert_token(gw, &s.named.client(gw, false), "dns-client").await.0 == 401
    })
    .await;
    let (status, v) = cert_token(gw, &other.issue(named_params()).client(gw, false), "dns-client").await;
    assert_eq!(status, 200, "{v}");
}
