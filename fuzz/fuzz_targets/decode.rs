//! Any text, decoded as either side's frame: no panic, and every frame that decodes encodes to
//! text that decodes to the same frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use readyws_protocol::codec::{decode, encode};
use readyws_protocol::{Data, Role};

fuzz_target!(|bytes: &[u8]| {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    for role in [Role::Client, Role::Server] {
        if let Ok(frame) = decode(text, role, 1 << 20) {
            let again = encode(&frame);
            assert_eq!(decode(&again, role, 1 << 20).as_ref(), Ok(&frame), "{again}");
        }
        let _ = decode(text, role, 64);
    }
    if let Ok(data) = Data::from_json(text) {
        assert_eq!(Data::from_json(data.as_json()).as_ref(), Ok(&data));
    }
});
