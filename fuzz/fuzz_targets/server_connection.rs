//! A server connection fed an arbitrary sequence of client frames and timer wake-ups: no panic,
//! whatever arrives, and a connection that closed stays closed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use readyws_protocol::{
    ConnectionEvent, ResumeToken, ServerConfig, ServerConnection, ServerPhase, ServerSession, Time,
};

fuzz_target!(|bytes: &[u8]| {
    let Ok(script) = std::str::from_utf8(bytes) else {
        return;
    };
    let config = ServerConfig::default();
    let mut now = Time::from_millis(0);
    let mut connection = ServerConnection::new(config.clone(), ServerPhase::Accepting, now);
    let mut closed = false;
    for line in script.lines() {
        match line.as_bytes().first() {
            Some(b't') => {
                now = Time::from_millis(now.as_millis() + 5_000);
                connection.handle_timeout(now);
            }
            Some(b'b') => connection.handle_binary(now),
            _ => connection.handle_text(line, now),
        }
        while connection.poll_transmit().is_some() {}
        while let Some(event) = connection.poll_event() {
            match event {
                ConnectionEvent::Hello(_) => {
                    let token = ResumeToken::from_random_bytes(&[7; 16]).expect("16 bytes");
                    connection.accept(ServerSession::new("s", token, &config), false, now);
                }
                ConnectionEvent::Closed { .. } => closed = true,
                _ => {}
            }
        }
        while connection.poll_session_event().is_some() {}
        if closed {
            assert!(connection.is_closed(), "a closed connection reopened");
        }
    }
});
