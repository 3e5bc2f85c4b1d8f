//! One file per grant; each validates its request, then issues.

pub mod client_credentials;

use super::error::OAuthError;
use crate::config::{Client, split_scopes};

/// RFC 6749 §3.3: the requested scopes (space or comma separated), or the client's
/// defaults when absent; each one must be among the client's allowed scopes.
pub fn resolve_scopes(client: &Client, requested: Option<&str>) -> Result<Vec<String>, OAuthError> {
    let Some(requested) = requested else { return Ok(client.default_scopes.clone()) };
    let scopes = split_scopes(requested);
    if scopes.is_empty() {
        return Ok(client.default_scopes.clone());
    }
    if let Some(bad) = scopes.iter().find(|s| !client.scopes.contains(s)) {
        return Err(OAuthError::InvalidScope(bad.clone()));
    }
    Ok(scopes)
}
