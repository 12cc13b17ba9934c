//! # readyws-tests
//!
//! End-to-end suites that join the crates: a seeded fault-injecting relay ([`relay`]) and the
//! chaos run ([`chaos`]) that `tests/` and `cargo xtask chaos` drive. The suites themselves live
//! in `tests/`, one file per promise.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod chaos;
pub mod cluster;
pub mod harness;
pub mod relay;
