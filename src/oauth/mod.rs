//! The OAuth 2.0 endpoints the gateway answers itself.

pub mod authorize;
pub mod client_auth;
pub mod error;
pub mod grants;
pub mod introspect;
pub mod jwks;
pub mod metadata;
pub mod pages;
pub mod params;
pub mod revoke;
pub mod token;
pub mod users;

/// Who an endpoint request came from (the authenticated or named client), for the access log.
#[derive(Debug, Default)]
pub struct Caller {
    pub client_id: Option<String>,
}
