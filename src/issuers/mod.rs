//! Tokens of identity providers other than this gateway (issue 16).
//! - [`introspection`]: an RFC 7662 client for issuers of opaque tokens.

pub mod introspection;
