//! The proxy's whole request header pass (`forward::upstream_headers`): hop-by-hop and
//! `Connection`-named fields, forwarding claims from trusted and untrusted peers, identity
//! claims in every spelling, WebSocket handshake fields, cookies, and the forwarding
//! headers the gateway vouches for.
//!
//! Input: a flags byte (trusted peer, TLS, IPv6, token-forwarding route, WebSocket
//! handshake, authenticated, no authority), then `name:value` lines (see
//! `portcullis::fuzzing::forwarding`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    portcullis::fuzzing::forwarding::upstream_headers(data);
});
