//! Where an issuer publishes its keys: OpenID Connect Discovery 1.0 §4
//! (`{issuer}/.well-known/openid-configuration`), then RFC 8414 §3
//! (`/.well-known/oauth-authorization-server` inserted before the issuer's path). The
//! metadata must name exactly the configured issuer (OIDC Discovery §4.3, RFC 8414 §3.3:
//! otherwise one IdP could speak for another), and its `jwks_uri` must be https
//! (http only on loopback).

use serde_json::Value;

use super::fetch::{FetchError, Fetcher};

/// The metadata URLs to try for `issuer`, in order.
pub fn metadata_urls(issuer: &str) -> Vec<String> {
    let trimmed = issuer.trim_end_matches('/');
    let mut out = vec![format!("{trimmed}/.well-known/openid-configuration")];
    if let Ok(url) = url::Url::parse(issuer) {
        let path = url.path().trim_end_matches('/');
        let origin = url.origin().ascii_serialization();
        out.push(format!("{origin}/.well-known/oauth-authorization-server{path}"));
    }
    out
}

/// The `jwks_uri` the issuer's metadata names.
pub async fn jwks_uri(fetcher: &Fetcher, issuer: &str) -> Result<String, FetchError> {
    let mut last = FetchError::Discovery("no metadata URL".into());
    for url in metadata_urls(issuer) {
        match fetcher.get(&url).await {
            Ok(doc) => match read(&doc.body, issuer) {
                Ok(uri) => return Ok(uri),
                Err(why) => last = FetchError::Discovery(format!("{url}: {why}")),
            },
            Err(e) => last = FetchError::Discovery(format!("{url}: {e}")),
        }
    }
    Err(last)
}

fn read(body: &[u8], issuer: &str) -> Result<String, String> {
    let doc: Value = serde_json::from_slice(body).map_err(|_| "not JSON".to_string())?;
    let obj = doc.as_object().ok_or("not a JSON object")?;
    match obj.get("issuer").and_then(Value::as_str) {
        Some(i) if i == issuer => {}
        Some(_) => return Err("its \"issuer\" is not the configured issuer".into()),
        None => return Err("no \"issuer\"".into()),
    }
    let uri = obj.get("jwks_uri").and_then(Value::as_str).ok_or("no \"jwks_uri\"")?;
    let parsed = url::Url::parse(uri).map_err(|_| "jwks_uri is not an absolute URL".to_string())?;
    let loopback = match parsed.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => return Err("jwks_uri has no host".into()),
    };
    match parsed.scheme() {
        "https" => Ok(uri.to_string()),
        "http" if loopback => Ok(uri.to_string()),
        _ => Err("jwks_uri is not https".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_checks() {
        assert_eq!(
            metadata_urls("https://idp.example/realms/corp"),
            vec![
                "https://idp.example/realms/corp/.well-known/openid-configuration".to_string(),
                "https://idp.example/.well-known/oauth-authorization-server/realms/corp".to_string(),
            ]
        );
        let iss = "https://idp.example";
        let doc = |i: &str, j: &str| format!(r#"{{"issuer": "{i}", "jwks_uri": "{j}"}}"#);
        assert_eq!(read(doc(iss, "https://idp.example/k").as_bytes(), iss).unwrap(), "https://idp.example/k");
        assert!(read(doc("https://evil.example", "https://idp.example/k").as_bytes(), iss).is_err());
        assert!(read(doc(iss, "http://idp.example/k").as_bytes(), iss).is_err());
        assert!(read(doc(iss, "http://127.0.0.1:9/k").as_bytes(), iss).is_ok());
        assert!(read(b"<html>", iss).is_err());
    }
}
