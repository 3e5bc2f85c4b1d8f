//! portcullis: an OAuth 2.0 enforcing reverse-proxy gateway.
//!
//! A request enters through [`server`], which dispatches it either to an OAuth endpoint
//! ([`oauth`]) or through the proxy phases ([`proxy`]): route → authenticate → authorize →
//! forward. [`state::Gateway`] holds what every request reads.
// The connection future (TLS, hyper, dispatch, the proxy phases) nests deeply enough that
// proving it `Send` (hyper-util's client inside) passes the default depth of 128.
#![recursion_limit = "256"]

pub mod admin;
pub mod authority;
pub mod config;
pub mod cookies;
pub mod dn;
/// Entry points for `fuzz/` (its Cargo.toml enables the `fuzzing` feature); its unit tests
/// run in `cargo test --lib`. Not part of a normal build.
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod issuers;
pub mod logging;
pub mod metrics;
pub mod oauth;
pub mod proxy;
pub mod ratelimit;
pub mod reload;
pub mod secrets;
pub mod server;
pub mod state;
pub mod text;
pub mod tls;
pub mod tokens;
pub mod upstream;

/// Install the process-wide rustls crypto provider (aws-lc-rs). Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}
pub mod store;
