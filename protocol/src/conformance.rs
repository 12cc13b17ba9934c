//! The language-neutral conformance vectors of `docs/PROTOCOL.md` §16, as the JSON texts of the
//! files in this crate's `conformance/` folder. They live inside the crate so that its tests run
//! from the published package, and so that a Rust implementation of either role can run them
//! without a copy of the repository. Nothing here is linked into a build that does not read it.

/// `frames.json`: valid frames of every type with their members, and invalid ones with the
/// error class each must fail with.
pub const FRAMES: &str = include_str!("../conformance/frames.json");

/// `transcripts.json`: single-connection scenarios for each role, as steps in and expected
/// frames, closes and events out.
pub const TRANSCRIPTS: &str = include_str!("../conformance/transcripts.json");

/// `servers.json`: whole-server scenarios that span connections (resume, takeover, custody of
/// held messages, the start-up gate).
pub const SERVERS: &str = include_str!("../conformance/servers.json");
