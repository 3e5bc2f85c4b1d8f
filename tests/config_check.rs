//! `portcullis check` refuses what `serve` refuses, warns with `file:line` about what may
//! be a mistake, and the binary's start and reload log the same warnings; a reload never
//! generates or replaces a signing key. Everything here runs the real binary.

mod common;

use common::*;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A configuration in a scratch directory: one plaintext listener, no admin, a store and
/// a key under the directory, and `extra` at the end (clients, routes, ...).
struct Setup {
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("gateway.toml");
        Setup { dir, config }
    }

    fn d(&self) -> String {
        self.dir.path().display().to_string()
    }

    /// The base text with `top` after the issuer and `extra` at the end.
    fn text(&self, top: &str, extra: &str) -> String {
        format!(
            "issuer = \"https://auth.test\"\n{top}\n[[listener]]\naddress = \"127.0.0.1:0\"\ntls = false\n\n\
             [admin]\nenabled = false\n\n[store]\npath = \"{d}/data/store.redb\"\n\n\
             [[key]]\nid = \"k1\"\nfile = \"{d}/k1.pem\"\n{extra}",
            d = self.d()
        )
    }

    fn write(&self, text: &str) {
        std::fs::write(&self.config, text).unwrap();
    }

    /// `portcullis check` on `text`: (success, stdout, stderr).
    fn check(&self, text: &str) -> (bool, String, String) {
        self.write(text);
        let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["check", "--config"])
            .arg(&self.config)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `check` must fail, naming `file:line` of `needle` and saying `reason`.
    fn refused(&self, name: &str, text: &str, needle: &str, reason: &str) {
        let (ok, stdout, stderr) = self.check(text);
        assert!(!ok, "{name}: check accepted it:\n{stdout}{stderr}");
        let at = format!("{}:{}: ", self.config.display(), line_of(text, needle));
        assert!(
            stderr.lines().any(|l| l.starts_with(&at) && !l.contains(": warning: ") && l.contains(reason)),
            "{name}: no refusal {at:?}...{reason:?} in {stderr:?}"
        );
    }

    /// `check` must pass and print a warning at `file:line` of `needle` saying `reason`.
    fn warned(&self, name: &str, text: &str, needle: &str, reason: &str) {
        let (ok, stdout, stderr) = self.check(text);
        assert!(ok, "{name}: check refused it:\n{stderr}");
        assert!(stdout.contains(": OK"), "{name}: {stdout}");
        let at = format!("{}:{}: warning: ", self.config.display(), line_of(text, needle));
        assert!(
            stderr.lines().any(|l| l.starts_with(&at) && l.contains(reason)),
            "{name}: no warning {at:?}...{reason:?} in {stderr:?}"
        );
    }
}

/// The 1-based line of the first `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    let at = text.find(needle).unwrap_or_else(|| panic!("{needle:?} not in the config"));
    text[..at].matches('\n').count() + 1
}

const CLIENT: &str =
    "\n[[client]]\nid = \"svc\"\nsecret_hash = \"$SVC\"\ngrants = [\"client_credentials\"]\nscopes = [\"read\"]\n";

fn client() -> String {
    CLIENT.replace("$SVC", SVC_HASH)
}

// ---------------------------------------------------------------------------------------
// check refuses what serve refuses

#[test]
fn check_refuses_listeners_that_cannot_all_be_bound() {
    let s = Setup::new();
    let listener = |a: &str| format!("[[listener]]\naddress = \"{a}\"\ntls = false\n");
    for (name, first, second) in [
        ("same address", "127.0.0.1:18443", "127.0.0.1:18443"),
        ("v4 wildcard first", "0.0.0.0:18443", "127.0.0.1:18443"),
        ("v4 wildcard second", "127.0.0.1:18443", "0.0.0.0:18443"),
        ("v6 wildcard covers v4", "[::]:18443", "10.1.2.3:18443"),
        ("v4-mapped", "[::ffff:127.0.0.1]:18443", "127.0.0.1:18443"),
    ] {
        let text = s.text("", &format!("{}\n{}", listener(first), listener(second)));
        // The base listener (port 0) overlaps nothing; the second of the pair is named.
        let needle = format!("address = \"{second}\"");
        let at = text.rfind(&needle).unwrap();
        let line = text[..at].matches('\n').count() + 1;
        let (ok, _, stderr) = s.check(&text);
        assert!(!ok, "{name}: accepted");
        assert!(stderr.starts_with(&format!("{}:{line}: ", s.config.display())), "{name}: {stderr}");
        assert!(stderr.contains("overlaps"), "{name}: {stderr}");
    }
    // Different ports, or IPv4 wildcard next to a specific IPv6 address: both bind.
    let text = s.text("", &format!("{}\n{}", listener("0.0.0.0:18443"), listener("127.0.0.1:18444")));
    assert!(s.check(&text).0);
    let text = s.text("", &format!("{}\n{}", listener("0.0.0.0:18443"), listener("[::1]:18443")));
    assert!(s.check(&text).0, "0.0.0.0 does not cover IPv6");
    // The admin listener too.
    let text = s
        .text("", &listener("0.0.0.0:18445"))
        .replace("[admin]\nenabled = false", "[admin]\naddress = \"127.0.0.1:18445\"");
    s.refused("admin overlap", &text, "address = \"127.0.0.1:18445\"", "overlaps");
}

#[test]
fn check_refuses_a_key_file_of_another_algorithm() {
    let s = Setup::new();
    let d = s.d();
    let rsa = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap().serialize_pem();
    let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap().serialize_pem();
    std::fs::write(s.dir.path().join("rsa.pem"), &rsa).unwrap();
    std::fs::write(s.dir.path().join("ec.pem"), &ec).unwrap();
    for (name, alg, file) in [
        ("RSA PEM as ES256", "ES256", "rsa.pem"),
        ("P-256 PEM as EdDSA", "EdDSA", "ec.pem"),
        ("P-256 PEM as RS256", "RS256", "ec.pem"),
        ("PEM as HS256", "HS256", "ec.pem"),
    ] {
        let key = format!("\n[[key]]\nid = \"x\"\nalgorithm = \"{alg}\"\nfile = \"{d}/{file}\"\nactive = false\n");
        s.refused(name, &s.text("", &key), "id = \"x\"", "is not a usable");
    }
    // The right algorithm passes, and check wrote no key: k1 would be generated by serve.
    let key = format!("\n[[key]]\nid = \"x\"\nalgorithm = \"ES256\"\nfile = \"{d}/ec.pem\"\nactive = false\n");
    let (ok, stdout, stderr) = s.check(&s.text("", &key));
    assert!(ok, "{stderr}");
    assert!(stdout.contains("generated on first start"), "{stdout}");
    assert!(!s.dir.path().join("k1.pem").exists(), "check generated a key");
    assert!(!s.dir.path().join("data").exists(), "check created the store directory");
}

#[test]
fn check_refuses_missing_tls_files_and_upstream_ca() {
    let s = Setup::new();
    let pki = Pki::create(s.dir.path());
    let tls = |cert: &Path, key: &Path, dev: bool| {
        format!(
            "[[listener]]\naddress = \"127.0.0.1:0\"\n\n[tls]\ncert = \"{}\"\nkey = \"{}\"\ndev_certificate = {dev}\n",
            cert.display(),
            key.display()
        )
    };
    let missing = s.dir.path().join("missing.pem");
    s.refused("missing cert", &s.text("", &tls(&missing, &pki.key_path, false)), "[tls]", "TLS certificate");
    s.refused("missing key", &s.text("", &tls(&pki.cert_path, &missing, false)), "[tls]", "TLS key");
    // With dev_certificate, one file of the two present is still refused (serve would not
    // make the other); both missing is fine (serve makes them), and check writes neither.
    s.refused("half a dev pair", &s.text("", &tls(&pki.cert_path, &missing, true)), "[tls]", "TLS key");
    let other = s.dir.path().join("other.pem");
    let (ok, _, stderr) = s.check(&s.text("", &tls(&missing, &other, true)));
    assert!(ok, "{stderr}");
    assert!(!missing.exists() && !other.exists(), "check made a certificate");
    // A certificate file holding a key.
    s.refused("not a cert", &s.text("", &tls(&pki.key_path, &pki.key_path, false)), "[tls]", "TLS certificate");
    assert!(s.check(&s.text("", &tls(&pki.cert_path, &pki.key_path, false))).0);

    let ca = |p: &Path| format!("[proxy]\nupstream_ca = \"{}\"\n", p.display());
    s.refused("missing upstream_ca", &s.text(&ca(&missing), ""), "upstream_ca", "upstream_ca");
    // A CA file with no certificate in it (a key, an empty file) would trust the system
    // roots only: refused.
    std::fs::write(s.dir.path().join("empty-ca.pem"), "").unwrap();
    s.refused(
        "empty upstream_ca",
        &s.text(&ca(&s.dir.path().join("empty-ca.pem")), ""),
        "upstream_ca",
        "no certificate",
    );
    s.refused("key as upstream_ca", &s.text(&ca(&pki.key_path), ""), "upstream_ca", "no certificate");
    std::fs::write(s.dir.path().join("ca.pem"), &pki.ca_pem).unwrap();
    assert!(s.check(&s.text(&ca(&s.dir.path().join("ca.pem")), "")).0);
}

#[test]
fn check_refuses_a_store_that_cannot_be_written_and_creates_nothing() {
    let s = Setup::new();
    let d = s.d();
    std::fs::write(s.dir.path().join("plainfile"), "x").unwrap();
    for (name, path, reason) in [
        ("under a regular file", format!("{d}/plainfile/data/store.redb"), "is not a directory"),
        ("a directory", d.clone(), "is a directory"),
    ] {
        let text = s.text("", "").replace(&format!("path = \"{d}/data/store.redb\""), &format!("path = \"{path}\""));
        s.refused(name, &text, "path = ", reason);
    }
    // And serve refuses the first too: check says nothing serve would not.
    let text =
        s.text("", "").replace(&format!("path = \"{d}/data/store.redb\""), &format!("path = \"{d}/plainfile/x.redb\""));
    s.write(&text);
    let out =
        Command::new(env!("CARGO_BIN_EXE_portcullis")).args(["serve", "--config"]).arg(&s.config).output().unwrap();
    assert!(!out.status.success());
    // A missing directory that serve would create is fine, and check creates none of it.
    let text = s.text("", "").replace("/data/store.redb", "/a/b/store.redb");
    let (ok, _, stderr) = s.check(&text);
    assert!(ok, "{stderr}");
    assert!(!s.dir.path().join("a").exists(), "check created the store directory");
    let leftovers: Vec<_> = std::fs::read_dir(s.dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".portcullis-check"))
        .collect();
    assert!(leftovers.is_empty(), "the write probe was left behind");
}

/// Issue 18 attack, finding 5: `check` accepted three things `serve` refuses — an existing
/// store file that is not a redb file, a dev certificate that cannot be created where it is
/// named, and a key to generate whose directory cannot be made.
#[test]
fn check_refuses_a_foreign_store_file_and_files_serve_could_not_create() {
    let s = Setup::new();
    let d = s.d();
    std::fs::write(s.dir.path().join("plainfile"), "x").unwrap();
    // Not a redb file: refused by check, and by serve.
    std::fs::create_dir_all(s.dir.path().join("data")).unwrap();
    std::fs::write(s.dir.path().join("data/store.redb"), "not a store, but long enough").unwrap();
    let text = s.text("", "");
    s.refused("foreign store file", &text, "path = ", "is not a redb store file");
    let out =
        Command::new(env!("CARGO_BIN_EXE_portcullis")).args(["serve", "--config"]).arg(&s.config).output().unwrap();
    assert!(!out.status.success(), "serve opened a foreign store file");
    std::fs::remove_file(s.dir.path().join("data/store.redb")).unwrap();

    let dev = |cert: &str, key: &str| {
        format!(
            "[[listener]]\naddress = \"127.0.0.1:0\"\n\n[tls]\ncert = \"{cert}\"\nkey = \"{key}\"\ndev_certificate = true\n"
        )
    };
    for (name, cert, key) in [
        ("dev cert under a file", format!("{d}/plainfile/cert.pem"), format!("{d}/certs/key.pem")),
        ("dev key under a file", format!("{d}/certs/cert.pem"), format!("{d}/plainfile/key.pem")),
    ] {
        s.refused(name, &s.text("", &dev(&cert, &key)), "[tls]", "cannot be created");
    }
    assert!(!s.dir.path().join("certs").exists(), "check made a directory");

    let key = s
        .text("", "")
        .replace(&format!("file = \"{d}/k1.pem\""), &format!("file = \"{d}/plainfile/keys/k1.pem\"\ngenerate = true"));
    s.refused("key to generate under a file", &key, "id = \"k1\"", "cannot be generated");
    // What check accepts, serve starts with: the same directories, writable, pass.
    let ok = s.text("", &dev(&format!("{d}/certs/cert.pem"), &format!("{d}/certs/key.pem")));
    let (ok, _, stderr) = s.check(&ok);
    assert!(ok, "{stderr}");
}

#[test]
fn keys_are_generated_only_on_the_very_first_start() {
    let s = Setup::new();
    let text = s.text("", &client());
    // First start: no store yet, so check promises generation and serve would do it.
    let (ok, stdout, stderr) = s.check(&text);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("generated on first start"), "{stdout}");
    // Once the store exists, a missing key file is a typo (or a lost volume), not a new key.
    std::fs::create_dir_all(s.dir.path().join("data")).unwrap();
    std::fs::write(s.dir.path().join("data/store.redb"), "").unwrap();
    s.refused("store exists", &text, "id = \"k1\"", "only on the very first start");
    s.write(&text);
    let out =
        Command::new(env!("CARGO_BIN_EXE_portcullis")).args(["serve", "--config"]).arg(&s.config).output().unwrap();
    assert!(!out.status.success(), "serve generated a key although the store exists");
    assert!(String::from_utf8_lossy(&out.stderr).contains("only on the very first start"));
    assert!(!s.dir.path().join("k1.pem").exists());
    // A shared store means replicas: each would make its own key.
    let redis = text.replace(
        &format!("[store]\npath = \"{}/data/store.redb\"", s.d()),
        "[store]\nkind = \"redis\"\nurl = \"redis://127.0.0.1:1\"",
    );
    s.refused("redis", &redis, "id = \"k1\"", "every replica would generate its own key");
}

// ---------------------------------------------------------------------------------------
// Refusals and warnings about the configuration's own content

#[test]
fn check_refuses_what_is_certainly_wrong() {
    let s = Setup::new();
    // A linked user that does not exist (issue 19 point 4), in any case variant.
    let ghost = format!("{}user = \"ghost\"\n", client());
    s.refused("ghost user", &s.text("", &ghost), "user = \"ghost\"", "is no [[user]]");
    let alice =
        format!("{}user = \"Alice\"\n\n[[user]]\nusername = \"alice\"\npassword_hash = \"{ALICE_HASH}\"\n", client());
    s.refused("user of another case", &s.text("", &alice), "user = \"Alice\"", "is no [[user]]");
    assert!(s.check(&s.text("", &alice.replace("user = \"Alice\"", "user = \"alice\""))).0);

    // A grant set that can issue nothing.
    let refresh_only = client().replace("[\"client_credentials\"]", "[\"refresh_token\"]");
    s.refused("refresh only", &s.text("", &refresh_only), "grants = ", "can issue nothing");
    let twice = client().replace("[\"client_credentials\"]", "[\"refresh_token\", \"refresh_token\"]");
    s.refused("refresh twice", &s.text("", &twice), "grants = ", "can issue nothing");

    // Route prefixes that differ only in case: the second never matches.
    let routes = "\n[[route]]\nprefix = \"/api\"\nupstream = \"http://127.0.0.1:9\"\n\n\
                  [[route]]\nprefix = \"/API/\"\nupstream = \"http://127.0.0.1:9\"\n";
    s.refused(
        "case-variant prefix",
        &s.text("", &format!("{}{routes}", client())),
        "prefix = \"/API/\"",
        "only in case",
    );

    // Identity headers named like credential, hop-by-hop or forwarding headers.
    for (field, name) in [
        ("subject", "authorization"),
        ("user", "Authorization"),
        ("client_id", "cookie"),
        ("scope", "connection"),
        ("token_id", "te"),
        ("subject", "upgrade"),
        ("subject", "Proxy-Authorization"),
        ("subject", "proxy-foo"),
        ("subject", "host"),
        ("subject", "x-forwarded-for"),
        ("subject", "transfer-encoding"),
        // Other spellings of the same headers, and headers an upstream acts on.
        ("subject", "x_forwarded_for"),
        ("subject", "x.forwarded.for"),
        ("user", "X_Real_IP"),
        ("subject", "x-request-id"),
        ("subject", "x-original-url"),
        ("scope", "x-http-method-override"),
    ] {
        let top = format!("[proxy.headers]\n{field} = \"{name}\"\n");
        s.refused(name, &s.text(&top, ""), &format!("\"{name}\""), "hop-by-hop, credential or forwarding");
    }
    let top = "[proxy.headers]\nsubject = \"x-who\"\nuser = \"X-Who\"\n";
    s.refused("one name twice", &s.text(top, ""), "\"X-Who\"", "used twice");
    assert!(s.check(&s.text("[proxy.headers]\nsubject = \"x-who\"\n", "")).0);
}

#[test]
fn refresh_reuse_interval_is_whole_seconds() {
    let s = Setup::new();
    // The stores count a rotation's time in whole seconds: a fraction would be rounded
    // down in silence ("500ms" acting as "0s").
    for bad in ["500ms", "1500ms", "1s 1ms", "999us"] {
        let text = s.text("", &format!("{}refresh_reuse_interval = \"{bad}\"\n", client()));
        s.refused(bad, &text, "refresh_reuse_interval", "counted in whole seconds");
    }
    for good in ["0", "0s", "1s", "2000ms", "1m"] {
        let text = s.text("", &format!("{}refresh_reuse_interval = \"{good}\"\n", client()));
        let (ok, _, stderr) = s.check(&text);
        assert!(ok, "{good}: {stderr}");
    }
}

#[test]
fn an_issuer_path_must_be_in_normal_form() {
    let s = Setup::new();
    // The endpoints are served under the issuer's path byte for byte, while request paths
    // that need normalising are refused before routing: the issuer's path must not need it.
    for (bad, reason) in [
        ("http://h/a/../tenant1", "dot segment"),
        ("http://h/tenant1/.", "dot segment"),
        ("http://h/..././tenant1", "dot segment"),
        ("http://h/./tenant1", "dot segment"),
        ("http://h/tenant1//x", "empty segment"),
        ("http://h//tenant1", "empty segment"),
        ("http://h/tenant1//", "empty segment"),
        ("http://h//", "empty segment"),
        ("http://h/ten%2Fant1", "percent-encoding"),
        ("http://h/ten%2fant1", "percent-encoding"),
        ("http://h/%74enant1", "percent-encoding"),
        ("http://h/%2e%2e/tenant1", "percent-encoding"),
        ("http://h/ten ant", "space"),
        ("http://h/ten\\\\ant", "outside letters"),
        ("http://h/ten;v=1", "outside letters"),
        ("http://h/ten\\\"ant", "outside letters"),
        ("http://h/tenänt", "outside letters"),
        ("http://h/ten<ant>", "outside letters"),
    ] {
        let text = s.text("", "").replacen("issuer = \"https://auth.test\"", &format!("issuer = \"{bad}\""), 1);
        s.refused(bad, &text, "issuer = ", reason);
    }
    for good in ["http://h", "http://h/", "http://h/tenant1", "http://h/tenant1/", "http://h/a/b-c_d.e~f/g:h@i"] {
        let text = s.text("", "").replacen("issuer = \"https://auth.test\"", &format!("issuer = \"{good}\""), 1);
        let (ok, _, stderr) = s.check(&text);
        assert!(ok, "{good}: {stderr}");
    }
}

#[test]
fn no_two_endpoints_share_a_served_path() {
    let s = Setup::new();
    let tenant = |endpoints: &str| {
        s.text("", &format!("\n[endpoints]\n{endpoints}\n")).replacen(
            "issuer = \"https://auth.test\"",
            "issuer = \"http://127.0.0.1/tenant1\"",
            1,
        )
    };
    for (endpoints, needle, reason) in [
        // The plain token path is the revocation endpoint the metadata advertises.
        ("token = \"/tenant1/oauth/revoke\"", "token = ", "token and revoke endpoints would both be served"),
        // The JWK Set at the RFC 8414 metadata URL (appended form) ...
        (
            "jwks = \"/tenant1/.well-known/oauth-authorization-server\"",
            "jwks = ",
            "jwks and metadata endpoints would both be served",
        ),
        // ... and at the path-inserted form.
        (
            "jwks = \"/.well-known/oauth-authorization-server/tenant1\"",
            "jwks = ",
            "jwks and metadata endpoints would both be served",
        ),
        // A prefixed path equal to another's plain one.
        (
            "introspect = \"/i\"\nrevoke = \"/tenant1/i\"",
            "revoke = ",
            "revoke and introspect endpoints would both be served",
        ),
        // Under the RFC 9728 protected-resource metadata prefix.
        ("jwks = \"/.well-known/oauth-protected-resource\"", "jwks = ", "protected-resource metadata"),
        ("token = \"/.well-known/oauth-protected-resource/x\"", "token = ", "protected-resource metadata"),
    ] {
        s.refused(endpoints, &tenant(endpoints), needle, reason);
    }
    // Without an issuer path the prefixed forms do not exist: the same paths are fine.
    let plain = s.text("", "\n[endpoints]\ntoken = \"/tenant1/oauth/revoke\"\n");
    assert!(s.check(&plain).0);

    // `check` prints every path an endpoint is served at, the issuer-prefixed ones too.
    let (ok, stdout, stderr) = s.check(&tenant(""));
    assert!(ok, "{stderr}");
    assert!(stdout.contains("token     POST /oauth/token /tenant1/oauth/token\n"), "{stdout}");
    assert!(
        stdout.contains(
            "metadata  GET  /.well-known/oauth-authorization-server /tenant1/.well-known/oauth-authorization-server \
             /.well-known/oauth-authorization-server/tenant1\n"
        ),
        "{stdout}"
    );
}

#[test]
fn check_warns_with_file_and_line_about_what_may_be_deliberate() {
    let s = Setup::new();
    let d = s.d();
    let base = client();
    s.warned(
        "trust everyone v4",
        &s.text("[proxy]\ntrusted_proxies = [\"10.0.0.1\", \"0.0.0.0/0\"]\n", &base),
        "trusted_proxies",
        "trusts far more than your balancers",
    );
    // Two halves of the Internet are the Internet.
    s.warned(
        "trust everyone in two halves",
        &s.text("[proxy]\ntrusted_proxies = [\"0.0.0.0/1\", \"128.0.0.0/1\"]\n", &base),
        "trusted_proxies",
        "trusts far more than your balancers",
    );
    s.warned(
        "trust everyone v6",
        &s.text("[proxy]\ntrusted_proxies = [\"::/0\"]\n", &base),
        "trusted_proxies",
        "trusts far more than your balancers",
    );
    // http issuer on a non-loopback host; loopback is a local trial and passes quietly.
    let text = s.text("", &base).replace("https://auth.test", "http://auth.example.com");
    s.warned("http issuer", &text, "issuer", "http://");
    let (_, _, stderr) = s.check(&s.text("", &base).replace("https://auth.test", "http://127.0.0.1:8080"));
    assert!(!stderr.contains("warning"), "{stderr}");
    // Lifetimes.
    s.warned(
        "lifetimes",
        &s.text("token_lifetime = \"2d\"\nrefresh_token_lifetime = \"1d\"\n", &base),
        "token_lifetime",
        "longer than refresh_token_lifetime",
    );
    // A route scope no client may obtain.
    let route = "\n[[route]]\nprefix = \"/api\"\nupstream = \"http://127.0.0.1:9\"\nscopes = [\"read\", \"admin\"]\n";
    s.warned("unobtainable scope", &s.text("", &format!("{base}{route}")), "\"admin\"", "no client may obtain");
    // Only a disabled client has it: the same.
    let ops =
        "\n[[client]]\nid = \"ops\"\nsecret_hash = \"$SVC\"\ngrants = [\"client_credentials\"]\nscopes = [\"admin\"]\n"
            .replace("$SVC", SVC_HASH);
    let disabled = ops.replace("id = \"ops\"\n", "id = \"ops\"\nenabled = false\n");
    s.warned(
        "disabled holder",
        &s.text("", &format!("{base}{disabled}{route}")),
        "scopes = [\"read\", \"admin\"]",
        "no client may obtain",
    );
    // Each scope has a client, but no one client has both: no token carries both.
    s.warned(
        "scopes split across clients",
        &s.text("", &format!("{base}{ops}{route}")),
        "scopes = [\"read\", \"admin\"]",
        "no one client may obtain together",
    );
    // A client with no grant at all.
    let idle = "\n[[client]]\nid = \"idle\"\nsecret_hash = \"$SVC\"\ngrants = []\nscopes = [\"read\"]\n"
        .replace("$SVC", SVC_HASH);
    s.warned("no grants", &s.text("", &format!("{base}{idle}")), "\"idle\"", "has no grants");
    // A method nobody sends.
    let route = "\n[[route]]\nprefix = \"/api\"\nupstream = \"http://127.0.0.1:9\"\nmethods = [\"GET\", \"PSOT\"]\n";
    s.warned("PSOT", &s.text("", &format!("{base}{route}")), "\"PSOT\"", "not a registered HTTP method");
    // A signing key others can read.
    let key = s.dir.path().join("k1.pem");
    std::fs::write(&key, portcullis::tokens::keys::generate_ed25519_pem().unwrap()).unwrap();
    set_mode(&key, 0o644);
    s.warned("key mode", &s.text("", &base), &format!("file = \"{d}/k1.pem\""), "readable by group or others");
    set_mode(&key, 0o600);
    let (_, _, stderr) = s.check(&s.text("", &base));
    assert!(!stderr.contains("warning"), "{stderr}");
    // dev_certificate next to real files, on a real host name.
    let pki = Pki::create(s.dir.path());
    let tls = format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n\n[tls]\ncert = \"{}\"\nkey = \"{}\"\ndev_certificate = true\n",
        pki.cert_path.display(),
        pki.key_path.display()
    );
    let text = s.text("", &format!("{base}{tls}")).replace("https://auth.test", "https://auth.example.com");
    s.warned("dev cert", &text, "[tls]", "dev_certificate = true");
}

#[test]
fn deprecated_grants_are_warned_about_per_client() {
    let s = Setup::new();
    let clients = format!(
        "{}\n[[client]]\nid = \"legacy\"\nsecret_hash = \"{SVC_HASH}\"\ngrants = [\"password\", \"refresh_token\"]\nscopes = [\"read\"]\n\
         \n[[client]]\nid = \"spa\"\ngrants = [\"authorization_code\", \"implicit\"]\nscopes = [\"read\"]\nredirect_uris = [\"https://spa.test/cb\"]\n",
        client()
    );
    let text = s.text("", &clients);
    s.warned("password", &text, "[\"password\"", "client \"legacy\": the password grant is deprecated (RFC 9700 §2.4");
    s.warned("implicit", &text, "\"implicit\"]", "client \"spa\": the implicit grant is deprecated (RFC 9700 §2.1.2");
    let (_, _, stderr) = s.check(&s.text("", &client()));
    assert!(!stderr.contains("deprecated"), "{stderr}");
}

#[test]
fn the_shipped_example_config_checks_clean() {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("gateway.toml");
    let text = std::fs::read_to_string(&shipped).unwrap();
    // Checked from a copy, so that nothing lands in the source tree.
    let s = Setup::new();
    let (ok, stdout, stderr) = s.check(&text);
    assert!(ok, "{stderr}");
    assert!(!stderr.contains("warning"), "the example config draws warnings:\n{stderr}");
    assert!(!stdout.contains("password") && !stdout.contains("implicit"), "deprecated grants are left out:\n{stdout}");
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

// ---------------------------------------------------------------------------------------
// The binary: warnings at start and on reload, keys and issuer on reload

/// `portcullis serve`, its stderr collected.
struct Serve {
    child: std::process::Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Serve {
    fn spawn(config: &Path) -> Serve {
        let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["serve", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Serve { child, lines }
    }

    fn hup(&self) {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: kill(2) on our own child's pid; no memory is shared.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    }

    /// The first line (after `from`) with every one of `parts`; panics after a while.
    fn wait_line(&self, from: usize, parts: &[&str]) -> (usize, String) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            {
                let lines = self.lines.lock().unwrap();
                if let Some((i, l)) =
                    lines.iter().enumerate().skip(from).find(|(_, l)| parts.iter().all(|p| l.contains(p)))
                {
                    return (i, l.clone());
                }
            }
            assert!(Instant::now() < deadline, "no line with {parts:?} in:\n{}", self.lines.lock().unwrap().join("\n"));
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    fn count(&self) -> usize {
        self.lines.lock().unwrap().len()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_binary_logs_warnings_at_start_and_on_reload_and_keeps_its_keys() {
    let s = Setup::new();
    let d = s.d();
    let legacy = format!(
        "\n[[client]]\nid = \"legacy\"\nsecret_hash = \"{SVC_HASH}\"\ngrants = [\"password\"]\nscopes = [\"read\"]\n"
    );
    let text = s.text("", &format!("{}{legacy}", client()));
    s.write(&text);
    let gw = Serve::spawn(&s.config);
    gw.wait_line(0, &["listening"]);
    let at = format!("{}:{}: warning: ", s.config.display(), line_of(&text, "[\"password\"]"));
    gw.wait_line(0, &["WARN", &at, "password grant is deprecated"]);
    let original = std::fs::read(s.dir.path().join("k1.pem")).unwrap();

    // A typo in the key path: refused at ERROR, nothing generated, the key stays.
    let typo = text.replace(&format!("{d}/k1.pem"), &format!("{d}/k1-typo.pem"));
    let from = gw.count();
    s.write(&typo);
    gw.hup();
    let (_, l) = gw.wait_line(from, &["ERROR", "configuration refused", "k1-typo.pem", "never generates"]);
    assert!(l.contains(&format!("{}:{}:", s.config.display(), line_of(&typo, "id = \"k1\""))), "{l}");
    assert!(!s.dir.path().join("k1-typo.pem").exists(), "a reload generated a key");

    // Another key under the same id: refused as well.
    let other = s.dir.path().join("k1-other.pem");
    std::fs::write(&other, portcullis::tokens::keys::generate_ed25519_pem().unwrap()).unwrap();
    set_mode(&other, 0o600);
    let from = gw.count();
    s.write(&text.replace(&format!("{d}/k1.pem"), &other.display().to_string()));
    gw.hup();
    gw.wait_line(from, &["ERROR", "configuration refused", "holds another key than the one in force"]);

    // The same key moved to another path (a copy) is no change of key: taken.
    let copy = s.dir.path().join("k1-copy.pem");
    std::fs::write(&copy, &original).unwrap();
    set_mode(&copy, 0o600);
    let from = gw.count();
    s.write(&text.replace(&format!("{d}/k1.pem"), &copy.display().to_string()));
    gw.hup();
    gw.wait_line(from, &["configuration reloaded"]);

    // A new issuer is taken, with a WARN that says what it costs; the warnings of the
    // configuration put in force are logged again.
    let from = gw.count();
    s.write(&text.replace("https://auth.test", "https://auth2.test"));
    gw.hup();
    let (i, _) =
        gw.wait_line(from, &["WARN", "issuer changed by reload", "every outstanding access token stops validating"]);
    gw.wait_line(from, &["WARN", "password grant is deprecated"]);
    gw.wait_line(i, &["configuration reloaded"]);
}
