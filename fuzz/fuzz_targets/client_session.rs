//! A client session fed an arbitrary sequence of server frames, timer wake-ups and socket events
//! after a valid handshake: no panic, and every message the application sent gets exactly one
//! outcome.
#![no_main]

use std::collections::HashSet;

use libfuzzer_sys::fuzz_target;
use readyws_protocol::{Action, ClientConfig, ClientEvent, ClientSession, Data, Time};

const WELCOME: &str = r#"{"type":"welcome","protocol":1,"server":"fuzz","phase":"accepting","heartbeat_ms":1000,"max_frame_bytes":65536,"max_inflight":4,"resume_window_ms":60000}"#;
const READY: &str = r#"{"type":"connection_ready","session_id":"s","resume_token":"t","resumed":false,"last_received":0,"backlog":0}"#;

fuzz_target!(|bytes: &[u8]| {
    let Ok(script) = std::str::from_utf8(bytes) else {
        return;
    };
    let mut session = ClientSession::new(ClientConfig::default(), 1);
    let mut now = Time::from_millis(0);
    let mut sent = HashSet::new();
    let mut settled = HashSet::new();
    let mut conn = None;
    session.connect(now);
    let drain = |session: &mut ClientSession, conn: &mut Option<_>, settled: &mut HashSet<_>| {
        while let Some(action) = session.poll_action() {
            if let Action::Open { conn: opened } = action {
                *conn = Some(opened);
            }
        }
        while session.poll_transmit().is_some() {}
        while let Some(event) = session.poll_event() {
            if let ClientEvent::Outcome { id, .. } = event {
                assert!(settled.insert(id), "a second outcome for {id:?}");
            }
        }
    };
    drain(&mut session, &mut conn, &mut settled);
    for line in script.lines() {
        let Some(c) = conn else { break };
        match line.as_bytes().first() {
            Some(b'o') => session.handle_connected(c, Some("readyws.v1"), now),
            Some(b'w') => session.handle_text(c, WELCOME, now),
            Some(b'r') => session.handle_text(c, READY, now),
            Some(b's') => {
                if let Ok(id) = session.send(Data::from_json("1").expect("JSON"), now) {
                    sent.insert(id);
                }
            }
            Some(b't') => {
                now = Time::from_millis(now.as_millis() + 700);
                session.handle_timeout(now);
            }
            Some(b'd') => session.handle_disconnected(c, None, now),
            Some(b'c') => session.close(std::time::Duration::from_millis(100), now),
            _ => session.handle_text(c, line, now),
        }
        drain(&mut session, &mut conn, &mut settled);
    }
    assert!(settled.is_subset(&sent), "an outcome for a message never sent");
});
