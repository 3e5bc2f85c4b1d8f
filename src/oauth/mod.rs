//! The OAuth 2.0 endpoints the gateway answers itself.

pub mod client_auth;
pub mod error;
pub mod grants;
pub mod jwks;
pub mod metadata;
pub mod params;
pub mod token;
