//! The rules across connections (`readyws-hub`), as three server instances over one shared
//! store run them, driven by arbitrary interleavings read from the input: publishes, attaches,
//! resumes and takeovers, turns with acknowledgements, connection ends, crashes, refused
//! commits, store outages and clock steps. After every step the custody books balance and live
//! sessions hold their copies; at the end nothing is held for ever. The world is the one the
//! hub's simulation test runs from 1,000 seeds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use readyws_hub::OverflowPolicy;

// The seeded half of the world is the test's.
#[allow(dead_code)]
#[path = "../../hub/tests/world/mod.rs"]
mod world;

fuzz_target!(|bytes: &[u8]| {
    let Some((&policy, choices)) = bytes.split_first() else {
        return;
    };
    let overflow = if policy & 1 == 0 {
        OverflowPolicy::RejectNew
    } else {
        OverflowPolicy::DropOldest
    };
    world::run(world::Choices::bytes(choices), overflow, usize::MAX, 0);
});
