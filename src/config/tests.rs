//! Validation by section: defaults, refusals and the line each refusal names.

use std::path::Path;

use super::*;

fn parse(extra: &str) -> Result<Config, ConfigError> {
    let text = format!(
        "issuer = \"https://auth.example\"\n[[listener]]\naddress = \"127.0.0.1:8443\"\ntls = false\n\
         [[key]]\nid = \"k\"\nfile = \"k.pem\"\n{extra}"
    );
    Config::parse(&text, Path::new("gw.toml"))
}

#[test]
fn admin_defaults_to_loopback_and_can_move_or_be_disabled() {
    let a = parse("").unwrap().admin.unwrap();
    assert_eq!(a.address, "127.0.0.1:9901".parse().unwrap());
    let a = parse("[admin]\naddress = \"0.0.0.0:9000\"\n").unwrap().admin.unwrap();
    assert_eq!((a.address, a.line), ("0.0.0.0:9000".parse().unwrap(), 9));
    assert!(parse("[admin]\nenabled = false\n").unwrap().admin.is_none());
}

#[test]
fn the_admin_api_key_hash_is_an_argon2id_hash_and_warned_about_off_loopback() {
    let hash = "$argon2id$v=19$m=19456,t=2,p=1$NDYTW6/8Jb0QvNtu/HAEsg$50KFYCT9MCJVGUAcSiitFKy6q9BorQxPHViybm55BfY";
    assert_eq!(parse("").unwrap().admin.unwrap().api_key_hash, None, "off unless configured");
    let c = parse(&format!("[admin]\napi_key_hash = \"{hash}\"\n")).unwrap();
    assert_eq!(c.admin.as_ref().unwrap().api_key_hash.as_deref(), Some(hash));
    assert!(c.warnings().is_empty(), "{:?}", c.warnings());
    let e = parse("[admin]\naddress = \"127.0.0.1:9901\"\napi_key_hash = \"hunter2\"\n").unwrap_err();
    assert_eq!(e.line, 10);
    assert!(e.reason.contains("api_key_hash is not a PHC string"), "{e}");
    let argon2i = "$argon2i$v=19$m=16,t=2,p=1$c2FsdHNhbHQ$Zm9vYmFyYmF6cXV4";
    let e = parse(&format!("[admin]\napi_key_hash = \"{argon2i}\"\n")).unwrap_err();
    assert!(e.reason.contains("must be an argon2id hash"), "{e}");
    let c = parse(&format!("[admin]\naddress = \"0.0.0.0:9901\"\napi_key_hash = \"{hash}\"\n")).unwrap();
    let w: Vec<String> = c.warnings().iter().map(|w| w.to_string()).collect();
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].starts_with("gw.toml:10: warning: api_key_hash on an admin listener that is not loopback"), "{w:?}");
}

#[test]
fn route_hosts_are_normalised_like_request_authorities() {
    let route =
        |host: &str| format!("[[route]]\nprefix = \"/a\"\nupstream = \"http://127.0.0.1:1\"\nhost = \"{host}\"\n");
    for (given, stored) in
        [("Internal.Example.COM.", "internal.example.com"), ("[0:0::1]", "[::1]"), ("svc_a", "svc_a")]
    {
        let c = parse(&route(given)).unwrap_or_else(|e| panic!("{given}: {e}"));
        assert_eq!(c.routes[0].host.as_deref(), Some(stored), "{given}");
    }
    for bad in ["a@b.example", "b.example:443", "b.example/x", "", " ", "b..example", "ex ample"] {
        let e = parse(&route(bad)).unwrap_err();
        assert!(e.reason.contains("bad route host"), "{bad}: {e}");
    }
    assert!(!parse("").unwrap().routes.iter().any(|r| r.pass_rewrite_headers));
}

#[test]
fn admin_errors_carry_their_line() {
    let e = parse("[admin]\naddress = \"localhost\"\n").unwrap_err();
    assert_eq!((e.line, e.to_string().starts_with("gw.toml:9: bad admin address")), (9, true));
    let e = parse("[admin]\naddress = \"127.0.0.1:8443\"\n").unwrap_err();
    assert_eq!(e.line, 9);
    assert!(e.reason.contains("differ"), "{e}");
    assert_eq!(parse("[admin]\nport = 1\n").unwrap_err().line, 9);
}

#[test]
fn endpoint_paths_default_validate_and_do_not_collide() {
    let c = parse("").unwrap();
    assert_eq!(c.metadata_path, "/.well-known/oauth-authorization-server");
    assert_eq!(c.jwks_path, "/.well-known/jwks.json");
    let e = parse("[endpoints]\njwks = \"keys\"\n").unwrap_err();
    assert_eq!(e.line, 9);
    let e = parse("[endpoints]\nmetadata = \"/x\"\njwks = \"/x\"\n").unwrap_err();
    assert_eq!(e.line, 10, "{e}");
    let e = parse("[endpoints]\ntoken = \"/.well-known/jwks.json\"\n").unwrap_err();
    assert_eq!(e.line, 9, "a default taken by another endpoint points at the one configured: {e}");
}

#[test]
fn rate_limit_defaults_and_errors_carry_their_line() {
    let r = parse("").unwrap().rate_limit;
    assert!(r.enabled);
    assert_eq!(r.ip, Quota { burst: 60, refill_per_sec: 20.0 });
    assert_eq!(r.failure_cost, 5);
    assert_eq!(r.client_failures, Quota { burst: 20, refill_per_sec: 20.0 / 60.0 });
    assert_eq!(r.user_failures, Quota { burst: 10, refill_per_sec: 10.0 / 300.0 });
    let r = parse("[rate_limit]\nip_burst = 5\nip_rate = 1\nip_window = \"1m\"\nfailure_cost = 5\n").unwrap();
    assert_eq!(r.rate_limit.ip, Quota { burst: 5, refill_per_sec: 1.0 / 60.0 });
    assert!(!parse("[rate_limit]\nenabled = false\n").unwrap().rate_limit.enabled);

    let e = parse("[rate_limit]\nip_burst = 0\n").unwrap_err();
    assert_eq!((e.line, e.reason.as_str()), (9, "must be greater than zero"));
    let e = parse("[rate_limit]\nip_burst = 10\n\nfailure_cost = 11\n").unwrap_err();
    assert_eq!(e.line, 11, "{e}");
    assert!(e.reason.contains("must not exceed ip_burst"), "{e}");
    let e = parse("[rate_limit]\nuser_failures_window = \"soon\"\n").unwrap_err();
    assert_eq!(e.line, 9, "{e}");
    let e = parse("[rate_limit]\nclient_failures = 2000000\n").unwrap_err();
    assert_eq!((e.line, e.reason.as_str()), (9, "must be at most 1000000"));
    assert_eq!(parse("[rate_limit]\nper_ip = 1\n").unwrap_err().line, 9);
}

#[test]
fn hsts_is_off_by_default_validated_and_refused_with_a_dev_certificate() {
    let tls = |extra: &str| format!("[tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\n{extra}");
    assert!(parse(&tls("")).unwrap().tls.unwrap().hsts.is_none());
    for ok in ["max-age=31536000; includeSubDomains", "max-age=0", "max-age=63072000; includeSubDomains; preload"] {
        let c = parse(&tls(&format!("hsts = {ok:?}\n"))).unwrap_or_else(|e| panic!("{ok}: {e}"));
        assert_eq!(c.tls.unwrap().hsts.unwrap(), ok);
    }
    for bad in
        ["", "includeSubDomains", "max-age=", "max-age=1y", "max-age=1; max-age=2", "max-age=1;", "max-age=1; nope"]
    {
        let e = parse(&tls(&format!("hsts = {bad:?}\n"))).unwrap_err();
        assert_eq!(e.line, 11, "{bad}: {e}");
        assert!(e.reason.starts_with("bad hsts"), "{bad}: {e}");
    }
    let e = parse(&tls("dev_certificate = true\nhsts = \"max-age=60\"\n")).unwrap_err();
    assert_eq!(e.line, 12, "{e}");
    assert!(e.reason.contains("dev_certificate"), "{e}");
}

#[test]
fn keys_listeners_and_tls_remember_their_lines() {
    let c = parse("[[key]]\nid = \"k2\"\nfile = \"k2.pem\"\n").unwrap();
    assert_eq!(c.keys.iter().map(|k| k.line).collect::<Vec<_>>(), [6, 9]);
    assert_eq!(c.listeners[0].line, 3);
}

const HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$NDYTW6/8Jb0QvNtu/HAEsg$50KFYCT9MCJVGUAcSiitFKy6q9BorQxPHViybm55BfY";

/// The error for `extra` appended to the minimal config (which ends on line 8).
fn refused(extra: &str) -> ConfigError {
    match parse(extra) {
        Ok(_) => panic!("accepted: {extra}"),
        Err(e) => e,
    }
}

#[test]
fn a_client_is_public_without_a_secret_and_confidential_with_one() {
    let c = parse(&format!(
        "[[client]]\nid = \"spa\"\ngrants = [\"authorization_code\"]\nredirect_uris = [\"https://a.example/cb\"]\n\
         [[client]]\nid = \"svc\"\nsecret_hash = \"{HASH}\"\ngrants = [\"client_credentials\"]\n"
    ))
    .unwrap();
    assert_eq!(c.clients["spa"].auth, ClientAuth::Public);
    assert!(c.clients["spa"].is_public());
    assert_eq!(c.clients["svc"].auth, ClientAuth::Confidential { secret_hash: HASH.to_string() });
    assert!(!c.clients["svc"].is_public());
    assert!(!format!("{:?}", c.clients["svc"]).contains(HASH), "the hash stays out of Debug");
}

#[test]
fn a_public_client_cannot_hold_a_grant_that_needs_a_secret() {
    for grant in ["client_credentials", "password"] {
        let e = refused(&format!("[[client]]\nid = \"pub\"\ngrants = [\"refresh_token\", \"{grant}\"]\n"));
        assert_eq!(e.line, 10, "{grant}: {e}");
        assert!(e.reason.contains("needs a confidential client"), "{grant}: {e}");
    }
    let e = refused("[[client]]\nid = \"c\"\nsecret_hash = \"not-a-phc\"\n");
    assert_eq!(e.line, 10);
    assert!(e.reason.contains("secret_hash is not a PHC string"), "{e}");
}

#[test]
fn client_fields_are_checked_against_each_other() {
    let client = |rest: &str| format!("[[client]]\nid = \"c\"\nsecret_hash = \"{HASH}\"\n{rest}");
    let e = refused(&client("scopes = [\"a\"]\ndefault_scopes = [\"b\"]\n"));
    assert_eq!(e.line, 12, "{e}");
    let e = refused(&client("grants = [\"authorization_code\"]\n"));
    assert!(e.reason.contains("redirect_uris"), "{e}");
    let e = refused(&client("grants = [\"implicit\"]\nredirect_uris = [\"http://a.example/cb\"]\n"));
    assert!(e.reason.contains("only allowed for loopback"), "{e}");
    let e = refused(&client("grants = [\"client_credentials\"]\nrefresh_on_client_credentials = true\n"));
    assert!(e.reason.contains("refresh_on_client_credentials"), "{e}");
    let e = refused(&client("user = \"c\"\n"));
    assert!(e.reason.contains("linked user"), "{e}");
    let e = refused(&client("grants = [\"device_code\"]\n"));
    assert_eq!(e.line, 11, "{e}");
    let e = refused(&format!("{}{}", client(""), client("")));
    assert_eq!((e.line, e.reason.as_str()), (12, "duplicate client id \"c\""));
    let c = parse(&client("grants = [\"implicit\"]\nredirect_uris = [\"http://127.0.0.1:9/cb\"]\n")).unwrap();
    assert!(c.clients["c"].implicit && c.clients["c"].grants.is_empty());
}

#[test]
fn users_are_unique_hashed_and_not_client_ids() {
    let user = |name: &str| format!("[[user]]\nusername = \"{name}\"\npassword_hash = \"{HASH}\"\n");
    let c = parse(&user("alice")).unwrap();
    assert_eq!((c.users["alice"].display_name.as_str(), c.users["alice"].enabled), ("alice", true));
    assert!(!format!("{:?}", c.users["alice"]).contains(HASH), "the hash stays out of Debug");
    // Review 23.6: without a password, a linked-only service identity.
    let c = parse("[[user]]\nusername = \"robot\"\n").unwrap();
    assert!(c.users["robot"].password_hash.is_none() && c.users["robot"].enabled);
    let e = refused(&format!("{}{}", user("alice"), user("alice")));
    assert_eq!((e.line, e.reason.as_str()), (12, "duplicate user \"alice\""));
    let e = refused(&format!("[[client]]\nid = \"svc\"\nsecret_hash = \"{HASH}\"\n{}", user("svc")));
    assert_eq!((e.line, e.reason.as_str()), (12, "username \"svc\" is also a client id"));
    let e = refused(
        "[[user]]\nusername = \"bob\"\npassword_hash = \"$argon2i$v=19$m=16,t=2,p=1$c2FsdHNhbHQ$Zm9vYmFyYmF6cXV4\"\n",
    );
    assert_eq!(e.line, 10, "{e}");
    assert!(e.reason.contains("must be an argon2id hash"), "{e}");
}

#[test]
fn a_route_is_public_or_needs_a_token_with_its_scopes() {
    let route = |rest: &str| format!("[[route]]\nprefix = \"/a\"\nupstream = \"http://127.0.0.1:1\"\n{rest}");
    assert_eq!(parse(&route("public = true\n")).unwrap().routes[0].access, Access::Public);
    assert_eq!(parse(&route("")).unwrap().routes[0].access, Access::Scopes(vec![]));
    let c = parse(&route("scopes = [\"read\", \"write\", \"read\"]\n")).unwrap();
    assert_eq!(c.routes[0].access, Access::Scopes(vec!["read".into(), "write".into()]));
    let e = refused(&route("public = true\nscopes = [\"read\"]\n"));
    assert_eq!((e.line, e.reason.as_str()), (9, "a public route cannot require scopes"));
    let e = refused(&route("scopes = [\"a b\"]\n"));
    assert_eq!(e.line, 11, "{e}");
}

#[test]
fn routes_are_checked_and_sorted_longest_prefix_first() {
    let route = |prefix: &str, up: &str| format!("[[route]]\nprefix = \"{prefix}\"\nupstream = \"{up}\"\n");
    let c = parse(&format!(
        "{}{}{}",
        route("/", "http://127.0.0.1:1"),
        route("/api/v1/", "https://u.example/base/"),
        route("/api", "http://127.0.0.1:2")
    ))
    .unwrap();
    assert_eq!(c.routes.iter().map(|r| r.prefix.as_str()).collect::<Vec<_>>(), ["/api/v1", "/api", "/"]);
    assert_eq!(c.routes[0].upstream.base_path, "/base");
    assert_eq!(c.routes[0].upstream.scheme, http::uri::Scheme::HTTPS);
    assert!(!c.routes[0].upstream.h2c);
    // h2c: HTTP/2 with prior knowledge, an `http` authority underneath.
    let c = parse(&route("/a", "h2c://Grpc.internal:50051/svc/")).unwrap();
    assert_eq!(c.routes[0].upstream.scheme, http::uri::Scheme::HTTP);
    assert_eq!(c.routes[0].upstream.authority.as_str(), "grpc.internal:50051");
    assert_eq!(c.routes[0].upstream.base_path, "/svc");
    assert!(c.routes[0].upstream.h2c);
    for (prefix, up) in [("api", "http://a"), ("/a/../b", "http://a"), ("/a?x", "http://a")] {
        assert!(refused(&route(prefix, up)).reason.contains("bad route prefix"), "{prefix}");
    }
    for up in ["ftp://a", "http://u:p@a", "http://a/?q", "not a url"] {
        let e = refused(&route("/a", up));
        assert_eq!(e.line, 10, "{up}: {e}");
        assert!(e.reason.contains("bad upstream URL"), "{up}: {e}");
    }
    let e = refused(&format!("{}{}", route("/a", "http://a"), route("/a/", "http://b")));
    assert_eq!((e.line, e.reason.as_str()), (11, "duplicate route for prefix \"/a\""));
}

#[test]
fn listeners_need_tls_files_when_they_serve_tls() {
    let e = Config::parse("issuer = \"https://a.example\"\n[[key]]\nid = \"k\"\nfile = \"k.pem\"\n", Path::new("g"))
        .unwrap_err();
    assert_eq!(e.line, 1);
    assert!(e.reason.contains("no [[listener]]"), "{e}");
    let e = refused("[[listener]]\naddress = \"127.0.0.1:8444\"\n");
    assert_eq!(e.line, 8, "{e}");
    assert!(e.reason.contains("needs a [tls] section"), "{e}");
    let e = refused("[[listener]]\naddress = \"localhost:1\"\n");
    assert!(e.reason.contains("bad listener address"), "{e}");
    let c = parse("[tls]\ncert = \"/abs/c.pem\"\nkey = \"k.pem\"\n").unwrap();
    let tls = c.tls.unwrap();
    assert_eq!((tls.cert.as_path(), tls.key.as_path()), (Path::new("/abs/c.pem"), Path::new("k.pem")));
}

#[test]
fn limits_default_and_refuse_small_or_zero_values() {
    let l = parse("").unwrap().limits;
    assert_eq!((l.max_header_bytes, l.upstream_timeout), (16 * 1024, std::time::Duration::from_secs(30)));
    let e = refused("[limits]\nmax_header_bytes = 4096\n");
    assert_eq!((e.line, e.reason.as_str()), (9, "max_header_bytes must be at least 8192"));
    let e = refused("[limits]\nupstream_timeout = \"0s\"\n");
    assert_eq!((e.line, e.reason.as_str()), (9, "duration must be greater than zero"));
    assert_eq!(refused("[cache]\nmax_tokens = 0\n").line, 9);
}

/// Review 23.14: the request id is the gateway's; an identity header may not take it.
#[test]
fn an_identity_header_named_x_request_id_is_refused() {
    let e = refused("[proxy.headers]\nsubject = \"X-Request-Id\"\n");
    assert_eq!(e.line, 9, "{e:?}");
    assert!(e.reason.contains("forwarding header"), "{}", e.reason);
}

/// Review 23.4: proxied forms have their own limit, 1 MiB by default (or the body limit,
/// if lower), never above the body limit.
#[test]
fn max_proxy_form_bytes_defaults_to_a_mebibyte_within_the_body_limit() {
    assert_eq!(parse("").unwrap().limits.max_proxy_form_bytes, 1024 * 1024);
    let l = parse("[limits]\nmax_proxy_body_bytes = 4096\n").unwrap().limits;
    assert_eq!(l.max_proxy_form_bytes, 4096);
    let e = refused("[limits]\nmax_proxy_body_bytes = 4096\nmax_proxy_form_bytes = 8192\n");
    assert_eq!((e.line, e.reason.as_str()), (10, "max_proxy_form_bytes must not exceed max_proxy_body_bytes"));
    assert_eq!(refused("[limits]\nmax_proxy_form_bytes = 0\n").line, 9);
}

#[test]
fn keys_are_named_once_and_one_signs_without_reading_any_file() {
    let c = parse("[[key]]\nid = \"rs\"\nalgorithm = \"RS256\"\nfile = \"/nonexistent/rs.pem\"\ngenerate = false\n")
        .unwrap();
    assert_eq!((c.keys[1].algorithm, c.keys[1].generate), (KeyAlgorithm::RS256, false));
    // A missing RS256 file that would have to be generated is refused at check, as serve would.
    let e = refused("[[key]]\nid = \"rs\"\nalgorithm = \"RS256\"\nfile = \"/nonexistent/rs.pem\"\n");
    assert_eq!(e.line, 8, "{e}");
    assert!(e.reason.contains("RS256 keys are not generated"), "{e}");
    let e = refused("[[key]]\nid = \"k\"\nfile = \"k2.pem\"\n");
    assert_eq!((e.line, e.reason.as_str()), (9, "duplicate key id \"k\""));
    let e = refused("[[key]]\nid = \"k2\"\nalgorithm = \"none\"\nfile = \"k2.pem\"\n");
    assert_eq!(e.line, 10, "{e}");
    let e = Config::parse(
        "issuer = \"https://a.example\"\n[[listener]]\naddress = \"127.0.0.1:1\"\ntls = false\n\
         [[key]]\nid = \"k\"\nfile = \"k.pem\"\nactive = false\n",
        Path::new("gw.toml"),
    )
    .unwrap_err();
    assert_eq!(e.line, 5, "{e}");
    assert!(e.reason.contains("no active key"), "{e}");
}

#[test]
fn the_store_is_embedded_unless_redis_is_named() {
    assert_eq!(parse("").unwrap().store, StoreConfig::Embedded { path: "data/portcullis.redb".into() });
    let c = parse("[store]\nkind = \"redis\"\nurl = \"redis://r:6379\"\n").unwrap();
    assert!(matches!(c.store, StoreConfig::Redis { ref key_prefix, .. } if key_prefix == "portcullis:"));
    let e = refused("[store]\nkind = \"redis\"\n");
    assert_eq!(e.line, 9, "{e}");
    let e = refused("[store]\nurl = \"redis://r\"\n");
    assert_eq!((e.line, e.reason.as_str()), (9, "url is for kind = \"redis\""));
    let e = refused("[store]\nkind = \"redis\"\nurl = \"http://r\"\n");
    assert_eq!(e.line, 10, "{e}");
    assert!(refused("[store]\nkind = \"etcd\"\n").reason.contains("unknown store kind"));
}

#[test]
fn the_summary_names_what_would_be_served() {
    let c = parse(
        "[[route]]\nprefix = \"/p\"\nupstream = \"http://127.0.0.1:1\"\npublic = true\n\
         [[route]]\nprefix = \"/s\"\nupstream = \"http://127.0.0.1:1\"\nscopes = [\"read\"]\n",
    )
    .unwrap();
    let mut out = Vec::new();
    c.write_summary(&mut out).unwrap();
    let out = String::from_utf8(out).unwrap();
    assert!(out.starts_with("issuer    https://auth.example\n"), "{out}");
    assert!(out.contains("key       k EdDSA k.pem (generated on first start)"), "{out}");
    assert!(out.contains("route     /p -> http://127.0.0.1:1 public"), "{out}");
    assert!(out.contains("route     /s -> http://127.0.0.1:1 scopes=[read]"), "{out}");
}

#[test]
fn listeners_that_cannot_all_be_bound_are_refused_at_the_second() {
    let two = |a: &str, b: &str| {
        parse(&format!("[[listener]]\naddress = \"{a}\"\ntls = false\n[[listener]]\naddress = \"{b}\"\ntls = false\n"))
    };
    for (a, b) in [("0.0.0.0:9", "127.0.0.1:9"), ("127.0.0.1:9", "[::]:9"), ("[::ffff:10.0.0.1]:9", "10.0.0.1:9")] {
        let e = two(a, b).unwrap_err();
        assert_eq!(e.line, 12, "{a} {b}: {e}");
        assert!(e.reason.contains("overlaps"), "{e}");
    }
    for (a, b) in [("0.0.0.0:9", "[::1]:9"), ("127.0.0.1:9", "127.0.0.2:9"), ("127.0.0.1:0", "127.0.0.1:0")] {
        two(a, b).unwrap_or_else(|e| panic!("{a} {b}: {e}"));
    }
}

#[test]
fn warnings_carry_their_line_and_refusals_stay_refusals() {
    let c = parse("[proxy]\ntrusted_proxies = [\"::/0\"]\n[[route]]\nprefix = \"/a\"\nupstream = \"http://127.0.0.1:1\"\nmethods = [\"PSOT\"]\n")
        .unwrap();
    let lines: Vec<usize> = c.warnings().iter().map(|w| w.line).collect();
    assert_eq!(lines, [9, 13], "{:?}", c.warnings());
    assert!(c.warnings()[0].to_string().starts_with("gw.toml:9: warning: "));
    let e = parse("[[client]]\nid = \"c\"\nsecret_hash = \"$argon2id$v=19$m=19456,t=2,p=1$NDYTW6/8Jb0QvNtu/HAEsg$50KFYCT9MCJVGUAcSiitFKy6q9BorQxPHViybm55BfY\"\ngrants = [\"client_credentials\"]\nuser = \"ghost\"\n")
        .unwrap_err();
    assert_eq!(e.line, 12, "{e}");
}

#[test]
fn drain_delay_may_be_zero_and_a_timeout_past_the_last_latency_bucket_is_warned_about() {
    let l = parse("[limits]\ndrain_delay = \"0s\"\n").unwrap().limits;
    assert!(l.drain_delay.is_zero());
    assert_eq!(parse("[limits]\ndrain_delay = \"5s\"\n").unwrap().limits.drain_delay.as_secs(), 5);
    assert!(parse("[limits]\nupstream_timeout = \"10m\"\n").unwrap().warnings().is_empty());
    let c = parse("[limits]\nupstream_timeout = \"11m\"\n").unwrap();
    assert_eq!(c.warnings().iter().map(|w| w.line).collect::<Vec<_>>(), [9], "{:?}", c.warnings());
    assert!(c.warnings()[0].reason.contains("+Inf"), "{:?}", c.warnings());
    assert!(parse("[limits]\ndrain_delay = \"10m\"\n").unwrap().warnings().is_empty());
    let c = parse("[limits]\ndrain_delay = \"3650d\"\n").unwrap();
    assert_eq!(c.warnings().iter().map(|w| w.line).collect::<Vec<_>>(), [9], "{:?}", c.warnings());
    assert!(c.warnings()[0].reason.contains("second SIGTERM"), "{:?}", c.warnings());
}

#[test]
fn a_redis_store_takes_one_server_a_cluster_or_sentinels() {
    use crate::config::RedisMode;
    let c = parse("[store]\nkind = \"redis\"\ncluster = [\"redis://a:7000\", \"redis://b:7001\"]\nreplica_acks = 1\n")
        .unwrap();
    let StoreConfig::Redis { mode, url, replica_acks, .. } = c.store else { panic!("not redis") };
    assert_eq!(mode, RedisMode::Cluster(vec!["redis://a:7000".into(), "redis://b:7001".into()]));
    assert_eq!((url.as_str(), replica_acks), ("redis://a:7000", 1));
    let c = parse("[store]\nkind = \"redis\"\nsentinel = [\"redis://s:26379\"]\nservice_name = \"gw\"\n").unwrap();
    assert!(matches!(c.store, StoreConfig::Redis { mode: RedisMode::Sentinel { ref service_name, .. }, .. }
        if service_name == "gw"));
    // A list mixing schemes: the line of the odd one out.
    let e = refused("[store]\nkind = \"redis\"\ncluster = [\n\"rediss://a:7000\",\n\"redis://b:7001\",\n]\n");
    assert_eq!(e.line, 12, "{e}");
    assert!(e.reason.contains("mix schemes"), "{e}");
    let e = refused("[store]\nkind = \"redis\"\ncluster = []\n");
    assert!(e.reason.contains("at least one node"), "{e}");
    let e = refused("[store]\nkind = \"redis\"\ncluster = [\"http://a:7000\"]\n");
    assert_eq!(e.line, 10, "{e}");
    let e = refused("[store]\nkind = \"redis\"\nurl = \"redis://a\"\ncluster = [\"redis://a:7000\"]\n");
    assert!(e.reason.contains("one of url, cluster"), "{e}");
    let e = refused("[store]\nkind = \"redis\"\nsentinel = [\"redis://s:26379\"]\n");
    assert!(e.reason.contains("needs service_name"), "{e}");
    let e = refused("[store]\nkind = \"redis\"\nurl = \"redis://a\"\nservice_name = \"gw\"\n");
    assert_eq!((e.line, e.reason.as_str()), (11, "service_name is for sentinel = [...]"));
    let e = refused("[store]\ncluster = [\"redis://a:7000\"]\n");
    assert_eq!((e.line, e.reason.as_str()), (9, "cluster is for kind = \"redis\""));
    let e = refused("[store]\nkind = \"redis\"\nurl = \"redis://a\"\nca_file = \"ca.pem\"\n");
    assert!(e.reason.contains("for rediss://"), "{e}");
    let e = refused("[store]\nkind = \"redis\"\nurl = \"rediss://a\"\nca_file = \"/nonexistent/ca.pem\"\n");
    assert_eq!(e.line, 11, "{e}");
    assert!(e.reason.contains("/nonexistent/ca.pem"), "{e}");
}

#[test]
fn websocket_options_default_off_and_the_query_token_needs_a_websocket_route_with_a_token() {
    let route = |extra: &str| format!("[[route]]\nprefix = \"/ws\"\nupstream = \"http://127.0.0.1:1\"\n{extra}");
    let r = &parse(&route("")).unwrap().routes[0];
    assert!(!r.websocket && !r.websocket_query_token && r.end_with_token);
    let r =
        &parse(&route("websocket = true\nwebsocket_query_token = true\nend_with_token = false\n")).unwrap().routes[0];
    assert!(r.websocket && r.websocket_query_token && !r.end_with_token);
    let e = refused(&route("websocket_query_token = true\n"));
    assert_eq!((e.line, e.reason.as_str()), (9, "websocket_query_token needs websocket = true on the route"));
    let e = refused(&route("public = true\nwebsocket = true\nwebsocket_query_token = true\n"));
    assert_eq!(e.line, 9);
    assert!(e.reason.contains("public route"), "{e}");
    let e = refused("[[route]]\nprefix = \"/ws\"\nupstream = \"h2c://127.0.0.1:1\"\nwebsocket = true\n");
    assert_eq!(e.line, 10, "{e}");
    assert!(e.reason.contains("h2c:// upstream speaks only HTTP/2"), "{e}");
}

#[test]
fn the_websocket_idle_timeout_defaults_to_the_listeners_and_needs_a_websocket_route() {
    let route = |extra: &str| format!("[[route]]\nprefix = \"/ws\"\nupstream = \"http://127.0.0.1:1\"\n{extra}");
    let c = parse(&route("websocket = true\n")).unwrap();
    assert_eq!(c.routes[0].websocket_idle(&c.limits), c.limits.idle_timeout);
    let c = parse(&route("websocket = true\nwebsocket_idle_timeout = \"5m\"\n")).unwrap();
    assert_eq!(c.routes[0].websocket_idle(&c.limits), std::time::Duration::from_secs(300));
    let e = refused(&route("websocket_idle_timeout = \"5s\"\n"));
    assert_eq!((e.line, e.reason.as_str()), (11, "websocket_idle_timeout needs websocket = true on the route"));
    let e = refused(&route("websocket = true\nwebsocket_idle_timeout = \"0s\"\n"));
    assert_eq!((e.line, e.reason.as_str()), (12, "duration must be greater than zero"));
    let e = refused(&route("websocket = true\nwebsocket_idle_timeout = \"soon\"\n"));
    assert_eq!(e.line, 12, "{e}");
    // A deadline of centuries would overflow `Instant`: refused, like every duration over ten years.
    let e = refused(&route("websocket = true\nwebsocket_idle_timeout = \"500000000y\"\n"));
    assert_eq!((e.line, e.reason.as_str()), (12, "duration \"500000000y\" is too long: at most 3650d"));
    assert!(parse(&route("websocket = true\nwebsocket_idle_timeout = \"3650d\"\n")).is_ok());
}

#[test]
fn private_key_jwt_clients_name_one_key_file_and_no_secret() {
    let client = |body: &str| format!("[[client]]\nid = \"c\"\ngrants = [\"client_credentials\"]\n{body}");
    let c = parse(&client("token_endpoint_auth_method = \"private_key_jwt\"\npublic_key = \"c.pem\"\n")).unwrap();
    match &c.clients["c"].auth {
        ClientAuth::PrivateKeyJwt(k) => {
            assert!(!k.jwks && k.file.ends_with("c.pem") && k.max_lifetime.as_secs() == 300 && k.line == 12, "{k:?}")
        }
        other => panic!("{other:?}"),
    }
    assert!(!c.clients["c"].is_public());
    for (body, why, line) in [
        ("token_endpoint_auth_method = \"private_key_jwt\"\n", "exactly one of jwks_file and public_key", 11),
        (
            "token_endpoint_auth_method = \"private_key_jwt\"\npublic_key = \"a\"\njwks_file = \"b\"\n",
            "exactly one",
            11,
        ),
        (
            &format!(
                "token_endpoint_auth_method = \"private_key_jwt\"\npublic_key = \"a\"\nsecret_hash = \"{HASH}\"\n"
            ),
            "takes no secret_hash",
            13,
        ),
        ("public_key = \"a\"\n", "public_key needs token_endpoint_auth_method", 11),
        (
            "token_endpoint_auth_method = \"private_key_jwt\"\npublic_key = \"a\"\nmax_assertion_lifetime = \"2h\"\n",
            "at most 1h",
            13,
        ),
        ("token_endpoint_auth_method = \"client_secret_jwt\"\n", "unknown token_endpoint_auth_method", 11),
        ("token_endpoint_auth_method = \"client_secret_basic\"\n", "secret_hash", 11),
    ] {
        let e = parse(&client(body)).unwrap_err();
        assert!(e.reason.contains(why), "{body}: {e}");
        assert_eq!(e.line, line, "{body}: {e}");
    }
}

#[test]
fn dpop_settings_have_defaults_and_refuse_what_is_not_asymmetric() {
    let d = parse("").unwrap().dpop;
    assert_eq!(d.algorithms.len(), 4);
    assert_eq!((d.iat_window.as_secs(), d.nonce), (60, false));
    let d = parse("[dpop]\nalgorithms = [\"EdDSA\"]\niat_window = \"30s\"\nnonce = true\n").unwrap().dpop;
    assert_eq!((d.algorithms, d.iat_window.as_secs(), d.nonce), (vec![JwsAlgorithm::EdDSA], 30, true));
    for (bad, why) in [
        ("algorithms = [\"HS256\"]", "not supported"),
        ("algorithms = [\"none\"]", "not supported"),
        ("iat_window = \"1h\"", "at most 10m"),
        ("iat_window = \"1500ms\"", "whole seconds"),
        ("color = 1", "unknown field"),
    ] {
        let e = parse(&format!("[dpop]\n{bad}\n")).unwrap_err();
        assert!(e.reason.contains(why), "{bad}: {e}");
    }
}

#[test]
fn a_redis_url_with_options_or_a_cluster_node_with_a_database_is_refused() {
    let e = refused("[store]\nkind = \"redis\"\ncluster = [\n\"redis://a:7000\",\n\"redis://b:7001/3\",\n]\n");
    assert_eq!(e.line, 12, "{}", e.reason);
    assert!(e.reason.contains("database 0"), "{}", e.reason);
    assert!(parse("[store]\nkind = \"redis\"\ncluster = [\"redis://a:7000/0\"]\n").is_ok());
    let e = refused("[store]\nkind = \"redis\"\nurl = \"rediss://a:6380/#insecure\"\n");
    assert!((e.line, e.reason.contains("fragment")) == (10, true), "{}: {}", e.line, e.reason);
    let e = refused("[store]\nkind = \"redis\"\nurl = \"rediss://a:6380/?insecure=true\"\n");
    assert!((e.line, e.reason.contains("query")) == (10, true), "{}: {}", e.line, e.reason);
    let e = refused("[store]\nkind = \"redis\"\nsentinel = [\"redis://s:26379/#insecure\"]\nservice_name = \"g\"\n");
    assert_eq!(e.line, 10, "{}", e.reason);
    assert!(parse("[store]\nkind = \"redis\"\nurl = \"redis://a:6379/2\"\n").is_ok());
}

#[test]
fn the_store_timeout_is_checked_with_the_embedded_store_too() {
    for bad in ["-1s", "", "0s", "3651d", "99999999999999999999d"] {
        let e = refused(&format!("[store]\nkind = \"embedded\"\ntimeout = \"{bad}\"\n"));
        assert_eq!(e.line, 10, "{bad:?}: {e}");
    }
    assert!(parse("[store]\nkind = \"embedded\"\ntimeout = \"2s\"\n").is_ok());
}
