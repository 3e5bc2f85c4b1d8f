//! Route lookup: the route index against the linear scan it replaced, on route sets and
//! requests from the input.
//!
//! Input (UTF-8), one item per line: `r <prefix> [<host>|-] [<METHOD,...>|-]` declares a
//! route, `q <METHOD> <host>|- <path>` looks one up; see `portcullis::fuzzing::route`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = portcullis::fuzzing::route(data);
});
