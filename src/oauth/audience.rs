//! RFC 8707 resource indicators: which audience (`aud`) a token is issued for.
//!
//! A token is for exactly one audience: the top-level `audience` unless the client names
//! another with `resource`, which must be one of the routes' audiences (or the default),
//! compared byte for byte. At most one `resource` per request: a repeated parameter is
//! `invalid_request` like any other (RFC 6749 §3.1). A code or refresh token stays bound
//! to the audience of its grant; a later request may name it again, never another.

use super::error::OAuthError;
use super::params::Params;
use crate::config::Config;

/// The audience `resource` asks for: `None` when absent (the default audience). A value
/// that is not an absolute URI without fragment, or that no route serves, is
/// `invalid_target` (RFC 8707 §2); so is `resource=` (empty is no URI, and reading it as
/// absent would hand out the default audience to a client that asked for another).
pub fn requested(config: &Config, params: &Params) -> Result<Option<String>, OAuthError> {
    let Some(resource) = params.get_even_empty("resource") else { return Ok(None) };
    check(config, resource).map(|a| Some(a.to_string()))
}

/// `resource` as given, if it is well-formed and one of the audiences `config` serves.
/// The default audience is accepted as configured, also when it is not an absolute URI
/// (`audience = "my-api"`), as [`within_grant`] accepts it: naming the default changes
/// nothing.
fn check<'a>(config: &Config, resource: &'a str) -> Result<&'a str, OAuthError> {
    if resource == config.audience() {
        return Ok(resource);
    }
    let absolute = url::Url::parse(resource).is_ok_and(|u| u.fragment().is_none()) && !resource.contains('#');
    if !absolute || !config.audiences().contains(&resource) {
        return Err(OAuthError::InvalidTarget);
    }
    Ok(resource)
}

/// The audience for a token from a grant bound to `bound` (a code's or a refresh
/// token's): `resource` may repeat it (or the default, when the grant had none) but not
/// widen to another. An audience no longer served is refused too.
pub fn within_grant(config: &Config, bound: Option<&str>, params: &Params) -> Result<Option<String>, OAuthError> {
    if let Some(b) = bound {
        check(config, b)?;
    }
    match params.get_even_empty("resource") {
        None => Ok(bound.map(str::to_string)),
        Some(r) if r == bound.unwrap_or(config.audience()) => Ok(bound.map(str::to_string)),
        Some(_) => Err(OAuthError::InvalidTarget),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        let text = r#"
issuer = "https://auth.example"
audience = "https://default.example"
[[listener]]
address = "127.0.0.1:0"
tls = false
[[key]]
id = "k"
file = "/nonexistent/k.pem"
[[route]]
prefix = "/a"
upstream = "http://127.0.0.1:1"
audience = "https://api-a.example/"
"#;
        Config::parse(text, std::path::Path::new("t.toml")).unwrap_or_else(|e| panic!("{e}"))
    }

    fn params(body: &str) -> Params {
        Params::from_form(body.as_bytes()).unwrap()
    }

    #[test]
    fn resource_must_be_a_served_absolute_uri_named_exactly() {
        let c = config();
        assert_eq!(requested(&c, &params("")), Ok(None));
        assert_eq!(
            requested(&c, &params("resource=https://api-a.example/")),
            Ok(Some("https://api-a.example/".into()))
        );
        assert_eq!(
            requested(&c, &params("resource=https://default.example")),
            Ok(Some("https://default.example".into()))
        );
        for bad in [
            "https://api-a.example",
            "https://API-A.example/",
            "https://api-a.example/%2e",
            "https://api-a.example/#x",
            "https%3A%2F%2Fapi-b.example%2F",
            "api-a.example/",
            "/a",
            "https://other.example/",
            "",
        ] {
            let body = format!("resource={}", form_urlencoded::byte_serialize(bad.as_bytes()).collect::<String>());
            assert_eq!(requested(&c, &params(&body)), Err(OAuthError::InvalidTarget), "{bad}");
        }
        // More than one resource: refused as a repeated parameter.
        assert!(Params::from_form(b"resource=a&resource=b").is_err());
    }

    #[test]
    fn a_grant_keeps_its_audience() {
        let c = config();
        let a = Some("https://api-a.example/");
        assert_eq!(within_grant(&c, a, &params("")), Ok(a.map(str::to_string)));
        assert_eq!(within_grant(&c, a, &params("resource=https://api-a.example/")), Ok(a.map(str::to_string)));
        assert_eq!(within_grant(&c, a, &params("resource=https://default.example")), Err(OAuthError::InvalidTarget));
        assert_eq!(within_grant(&c, None, &params("resource=https://default.example")), Ok(None));
        assert_eq!(within_grant(&c, None, &params("resource=https://api-a.example/")), Err(OAuthError::InvalidTarget));
        assert_eq!(within_grant(&c, Some("https://gone.example/"), &params("")), Err(OAuthError::InvalidTarget));
        assert_eq!(within_grant(&c, a, &params("resource=")), Err(OAuthError::InvalidTarget));
        assert_eq!(within_grant(&c, None, &params("resource=")), Err(OAuthError::InvalidTarget));
    }

    /// Review 23.14: a default audience that is not an absolute URI may be named as
    /// `resource` at issuance as at refresh.
    #[test]
    fn a_relative_default_audience_is_accepted_alike_everywhere() {
        let text = "issuer = \"https://auth.example\"\naudience = \"my-api\"\n[[listener]]\naddress = \"127.0.0.1:0\"\n\
                    tls = false\n[[key]]\nid = \"k\"\nfile = \"/nonexistent/k.pem\"\n";
        let c = Config::parse(text, std::path::Path::new("t.toml")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(requested(&c, &params("resource=my-api")), Ok(Some("my-api".into())));
        assert_eq!(within_grant(&c, None, &params("resource=my-api")), Ok(None));
        assert_eq!(within_grant(&c, Some("my-api"), &params("")), Ok(Some("my-api".into())));
        assert_eq!(requested(&c, &params("resource=other")), Err(OAuthError::InvalidTarget));
    }
}
