//! GET /.well-known/oauth-authorization-server (RFC 8414 §3): what this server supports,
//! derived from the configuration in force, so it never advertises a grant or scope that
//! no enabled client can use and follows every reload.

use std::collections::BTreeSet;

use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use serde_json::{Value, json};

use crate::config::{Config, GrantType};
use crate::http::{Body, json};
use crate::server::context::Ctx;

/// How long clients may cache the discovery documents. Short, so a reload (a new grant,
/// a new key published ahead of its use) is seen within minutes.
const MAX_AGE: &str = "public, max-age=300";

/// Why a discovery request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DiscoveryError {
    /// The discovery documents are read-only: GET and HEAD.
    #[error("method not allowed")]
    MethodNotAllowed,
}

impl DiscoveryError {
    /// The one place a discovery failure becomes a response.
    pub fn into_response(self) -> Response<Body> {
        match self {
            DiscoveryError::MethodNotAllowed => {
                let mut resp = json(
                    StatusCode::METHOD_NOT_ALLOWED,
                    &json!({"error": "invalid_request", "error_description": "This endpoint accepts GET only."}),
                );
                resp.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
                resp
            }
        }
    }
}

/// GET or HEAD; anything else is refused.
pub fn check_method<B>(req: &Request<B>) -> Result<(), DiscoveryError> {
    if req.method() == Method::GET || req.method() == Method::HEAD {
        Ok(())
    } else {
        Err(DiscoveryError::MethodNotAllowed)
    }
}

/// A cacheable JSON document.
pub fn document_response(value: &Value) -> Response<Body> {
    let mut resp = json(StatusCode::OK, value);
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static(MAX_AGE));
    resp
}

pub fn handle<B>(ctx: &Ctx<'_>, req: &Request<B>) -> Response<Body> {
    match check_method(req) {
        Ok(()) => document_response(&document(&ctx.rt.config)),
        Err(e) => e.into_response(),
    }
}

/// An endpoint's absolute URL: the issuer, then the configured path.
pub fn endpoint_url(config: &Config, path: &str) -> String {
    format!("{}{path}", config.issuer.trim_end_matches('/'))
}

/// The RFC 8414 §2 metadata for `config`.
pub fn document(config: &Config) -> Value {
    let enabled = || config.clients.values().filter(|c| c.enabled);
    let mut grants: BTreeSet<&str> = enabled().flat_map(|c| c.grants.iter().map(|g| g.as_str())).collect();
    let implicit = enabled().any(|c| c.implicit);
    if implicit {
        // RFC 7591 §2 lists "implicit" among grant_types values.
        grants.insert("implicit");
    }
    let scopes: BTreeSet<&str> = enabled().flat_map(|c| c.scopes.iter().map(String::as_str)).collect();
    let mut auth_methods = vec!["client_secret_basic", "client_secret_post"];
    if enabled().any(|c| c.is_public()) {
        // Public clients identify themselves with client_id alone (RFC 7591 §2).
        auth_methods.push("none");
    }
    // RFC 8705 §2.1.1 / §2.2.1: the certificate methods, where a client uses them.
    let (tls, self_signed) = certificate_methods(config);
    if tls {
        auth_methods.push("tls_client_auth");
    }
    if self_signed {
        auth_methods.push("self_signed_tls_client_auth");
    }
    // Introspection is for confidential clients only: every method but none.
    let introspection_methods: Vec<&str> = auth_methods.iter().copied().filter(|m| *m != "none").collect();
    let key_jwt = enabled().any(|c| matches!(c.auth, crate::config::ClientAuth::PrivateKeyJwt(_)));
    let mut introspection_methods = introspection_methods;
    if key_jwt {
        auth_methods.push("private_key_jwt");
        introspection_methods.push("private_key_jwt");
    }
    let mut response_types = Vec::new();
    if enabled().any(|c| c.grants.contains(&GrantType::AuthorizationCode)) {
        response_types.push("code");
    }
    if implicit {
        response_types.push("token");
    }
    let mut doc = json!({
        "issuer": config.issuer,
        "token_endpoint": endpoint_url(config, &config.token_path),
        "jwks_uri": endpoint_url(config, &config.jwks_path),
        "revocation_endpoint": endpoint_url(config, &config.revoke_path),
        "revocation_endpoint_auth_methods_supported": auth_methods,
        "introspection_endpoint": endpoint_url(config, &config.introspect_path),
        "introspection_endpoint_auth_methods_supported": introspection_methods,
        "grant_types_supported": grants,
        "response_types_supported": response_types,
        "token_endpoint_auth_methods_supported": auth_methods,
        "code_challenge_methods_supported": ["S256"],
        "scopes_supported": scopes,
    });
    // RFC 9449 §5.1: any client may send DPoP proofs.
    doc["dpop_signing_alg_values_supported"] =
        json!(config.dpop.algorithms.iter().map(|a| a.as_str()).collect::<Vec<_>>());
    if key_jwt {
        let algs: Vec<&str> = crate::tokens::assertion::ALGORITHMS.iter().map(|a| a.as_str()).collect();
        doc["token_endpoint_auth_signing_alg_values_supported"] = json!(algs);
        doc["revocation_endpoint_auth_signing_alg_values_supported"] = json!(algs);
        doc["introspection_endpoint_auth_signing_alg_values_supported"] = json!(algs);
    }
    // RFC 8705 §3.3: certificate-bound access tokens are issued (and enforced) when the
    // listeners ask for client certificates. No mtls_endpoint_aliases (§5): the endpoints
    // are the same, as optional client authentication serves every client on one host.
    if config.tls.as_ref().is_some_and(|t| t.client_auth != crate::config::ClientAuthMode::None) {
        doc["tls_client_certificate_bound_access_tokens"] = Value::Bool(true);
    }
    if !response_types_empty(&doc) {
        doc["authorization_endpoint"] = Value::String(endpoint_url(config, &config.authorize_path));
        // RFC 9207: authorization responses carry `iss`.
        doc["authorization_response_iss_parameter_supported"] = Value::Bool(true);
    }
    doc
}

/// Whether an enabled client uses `tls_client_auth`, `self_signed_tls_client_auth`.
fn certificate_methods(config: &Config) -> (bool, bool) {
    use crate::config::ClientAuth;
    let enabled = || config.clients.values().filter(|c| c.enabled);
    (
        enabled().any(|c| matches!(c.auth, ClientAuth::TlsClientAuth(_))),
        enabled().any(|c| matches!(c.auth, ClientAuth::SelfSignedTls { .. })),
    )
}

/// Where RFC 9728 protected-resource metadata is served: this, then the resource's path.
pub use crate::config::RESOURCE_METADATA_PATH;

/// RFC 9728 §3: the metadata of the protected resource whose identifier (an audience:
/// the default or a route's) has host `host` and a path that, inserted after the
/// well-known prefix, gives `path` (§3.1). `None` when no audience fits: the request then
/// goes on to the routes. The `resource` in the answer is the audience exactly (§3.3).
pub fn protected_resource(config: &Config, host: Option<&str>, path: &str) -> Option<Value> {
    let rest = path.strip_prefix(RESOURCE_METADATA_PATH)?;
    let audience = config.audiences().into_iter().find(|aud| {
        url::Url::parse(aud).is_ok_and(|u| {
            u.host_str().is_some_and(|h| host.is_some_and(|req| h.eq_ignore_ascii_case(req)))
                && u.path().trim_end_matches('/') == rest
                && u.query().is_none()
        })
    })?;
    let scopes: BTreeSet<&str> = config
        .routes
        .iter()
        .filter(|r| config.route_audience(r) == audience)
        .filter_map(|r| match &r.access {
            crate::config::Access::Scopes(s) => Some(s.iter().map(String::as_str)),
            crate::config::Access::Public => None,
        })
        .flatten()
        .collect();
    Some(json!({
        "resource": audience,
        "authorization_servers": [config.issuer],
        "bearer_methods_supported": ["header"],
        "scopes_supported": scopes,
    }))
}

/// GET /.well-known/oauth-protected-resource[/path] for a document [`protected_resource`] found.
pub fn handle_resource<B>(req: &Request<B>, doc: &Value) -> Response<Body> {
    match check_method(req) {
        Ok(()) => document_response(doc),
        Err(e) => e.into_response(),
    }
}

fn response_types_empty(doc: &Value) -> bool {
    doc["response_types_supported"].as_array().is_none_or(|a| a.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str =
        "$argon2id$v=19$m=19456,t=2,p=1$NDYTW6/8Jb0QvNtu/HAEsg$50KFYCT9MCJVGUAcSiitFKy6q9BorQxPHViybm55BfY";

    fn config(extra: &str) -> Config {
        let text = format!(
            r#"
issuer = "https://auth.example/"
[[listener]]
address = "127.0.0.1:0"
tls = false
[[key]]
id = "k"
file = "/nonexistent/k.pem"
[[client]]
id = "a"
secret_hash = "{HASH}"
grants = ["client_credentials"]
scopes = ["write", "read"]
[[client]]
id = "off"
secret_hash = "{HASH}"
grants = ["password"]
scopes = ["secret"]
enabled = false
{extra}
"#
        );
        Config::parse(&text, std::path::Path::new("t.toml")).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn protected_resource_metadata_is_found_by_host_and_path() {
        let c = config(
            "[[route]]\nprefix = \"/o\"\nupstream = \"http://127.0.0.1:1\"\nscopes = [\"orders\"]\n\
             audience = \"https://api.example/orders/\"\n",
        );
        let d = protected_resource(&c, Some("api.example"), "/.well-known/oauth-protected-resource/orders").unwrap();
        assert_eq!(d["resource"], "https://api.example/orders/");
        assert_eq!(d["authorization_servers"], json!(["https://auth.example/"]));
        assert_eq!(d["scopes_supported"], json!(["orders"]));
        // The default audience (the issuer here) at the root of its host.
        let d = protected_resource(&c, Some("auth.example"), "/.well-known/oauth-protected-resource").unwrap();
        assert_eq!(d["resource"], "https://auth.example/");
        assert!(
            protected_resource(&c, Some("other.example"), "/.well-known/oauth-protected-resource/orders").is_none()
        );
        assert!(protected_resource(&c, Some("api.example"), "/.well-known/oauth-protected-resource/order").is_none());
        assert!(protected_resource(&c, Some("api.example"), "/.well-known/oauth-protected-resourcex/orders").is_none());
    }

    #[test]
    fn lists_only_what_enabled_clients_use() {
        let d = document(&config(""));
        assert_eq!(d["issuer"], "https://auth.example/");
        assert_eq!(d["token_endpoint"], "https://auth.example/oauth/token");
        assert_eq!(d["jwks_uri"], "https://auth.example/.well-known/jwks.json");
        assert_eq!(d["grant_types_supported"], json!(["client_credentials"]));
        assert_eq!(d["scopes_supported"], json!(["read", "write"]));
        assert_eq!(d["response_types_supported"], json!([]));
        assert_eq!(d["token_endpoint_auth_methods_supported"], json!(["client_secret_basic", "client_secret_post"]));
    }

    #[test]
    fn a_public_code_client_adds_code_and_none() {
        let d = document(&config(
            "[[client]]\nid = \"spa\"\ngrants = [\"authorization_code\", \"refresh_token\"]\nscopes = [\"profile\"]\n\
             redirect_uris = [\"https://spa.example/cb\"]\n\
             [endpoints]\ntoken = \"/t\"\njwks = \"/keys\"\n",
        ));
        assert_eq!(d["grant_types_supported"], json!(["authorization_code", "client_credentials", "refresh_token"]));
        assert_eq!(d["response_types_supported"], json!(["code"]));
        assert_eq!(d["token_endpoint_auth_methods_supported"][2], "none");
        assert_eq!(d["scopes_supported"], json!(["profile", "read", "write"]));
        assert_eq!(d["token_endpoint"], "https://auth.example/t");
        assert_eq!(d["jwks_uri"], "https://auth.example/keys");
        assert_eq!(d["authorization_endpoint"], "https://auth.example/oauth/authorize");
    }

    #[test]
    fn an_implicit_client_adds_token_and_no_code_client_means_no_authorization_endpoint() {
        assert!(document(&config("")).get("authorization_endpoint").is_none());
        let d = document(&config(
            "[[client]]\nid = \"imp\"\ngrants = [\"implicit\"]\nscopes = [\"read\"]\nredirect_uris = [\"https://i.example/cb\"]\n",
        ));
        assert_eq!(d["response_types_supported"], json!(["token"]));
        assert_eq!(d["grant_types_supported"], json!(["client_credentials", "implicit"]));
        assert_eq!(d["authorization_endpoint"], "https://auth.example/oauth/authorize");
    }
}
