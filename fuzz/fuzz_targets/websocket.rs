//! WebSocket handshake validation and the frame tracker (proxy/websocket.rs).
//!
//! Input format: see the entry point, `portcullis::fuzzing::peer::websocket`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    portcullis::fuzzing::peer::websocket(data);
});
