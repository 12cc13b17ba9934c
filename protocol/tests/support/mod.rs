//! Helpers shared by the rule tests: a client or server session driven by hand over virtual time.

#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use readyws_protocol::{
    Action, ClientConfig, ClientEvent, ClientSession, ConnId, ConnectionEvent, Data, MessageId,
    ResumeToken, ServerConfig, ServerConnection, ServerPhase, ServerSession, SessionEvent, Time,
};
use serde_json::{Value, json};

/// A `welcome` with test defaults, changed by `overrides`.
pub fn welcome(overrides: Value) -> Value {
    let mut frame = json!({"type": "welcome", "protocol": 1, "server": "test", "phase": "accepting",
        "heartbeat_ms": 1000, "max_frame_bytes": 65536, "max_inflight": 16, "resume_window_ms": 60000});
    merge(&mut frame, overrides);
    frame
}

/// A `connection_ready` for a new session `session_id`.
pub fn ready(session_id: &str) -> Value {
    json!({"type": "connection_ready", "session_id": session_id, "resume_token": format!("tok-{session_id}"),
        "resumed": false, "last_received": 0, "backlog": 0})
}

/// A `connection_ready` resuming `session_id` where the server received up to `last_received`.
pub fn resumed(session_id: &str, last_received: u64) -> Value {
    json!({"type": "connection_ready", "session_id": session_id, "resume_token": format!("tok-{session_id}"),
        "resumed": true, "last_received": last_received, "backlog": 0})
}

pub fn msg(id: u64, data: Value) -> Value {
    json!({"type": "msg", "id": id, "data": data})
}

pub fn data(value: Value) -> Data {
    Data::from_json(value.to_string()).expect("test data is JSON")
}

fn merge(target: &mut Value, overrides: Value) {
    if let (Value::Object(target), Value::Object(overrides)) = (target, overrides) {
        for (key, value) in overrides {
            target.insert(key, value);
        }
    }
}

/// A client session and the connection it is on.
pub struct Client {
    pub session: ClientSession,
    pub conn: ConnId,
    pub now: Time,
}

impl Client {
    /// A session that has asked to open its first socket.
    pub fn connecting(config: ClientConfig) -> Self {
        let mut session = ClientSession::new(config, 1);
        session.connect(Time::ZERO);
        let mut client = Client {
            session,
            conn: ConnId(0),
            now: Time::ZERO,
        };
        client.conn = client.expect_open();
        client
    }

    /// A session whose socket is open and whose `welcome` (with `overrides`) has arrived.
    pub fn welcomed(config: ClientConfig, overrides: Value) -> Self {
        let mut client = Client::connecting(config);
        client.open_socket();
        client.receive(welcome(overrides));
        let hello = client.transmits();
        assert_eq!(hello.len(), 1, "exactly one hello: {hello:?}");
        assert_eq!(hello[0]["type"], "hello");
        let noticed = client.events();
        assert!(
            matches!(noticed.as_slice(), [ClientEvent::Welcome { server, .. }] if server == "test"),
            "the application hears of the welcome: {noticed:?}"
        );
        client
    }

    /// A session that is ready on session `s1`.
    pub fn ready(config: ClientConfig, overrides: Value) -> Self {
        let mut client = Client::welcomed(config, overrides);
        client.receive(ready("s1"));
        client
    }

    pub fn at(&mut self, millis: u64) {
        self.now = Time::from_millis(millis);
    }

    pub fn open_socket(&mut self) {
        self.session
            .handle_connected(self.conn, Some("readyws.v1"), self.now);
    }

    pub fn expect_open(&mut self) -> ConnId {
        match self.actions().as_slice() {
            [Action::Open { conn }] => *conn,
            other => panic!("expected one Open action, got {other:?}"),
        }
    }

    /// Fires the timer at its deadline and moves the clock there.
    pub fn fire_timer(&mut self) {
        let at = self.session.poll_timeout().expect("a timer is armed");
        self.now = at;
        self.session.handle_timeout(at);
    }

    /// Reconnects after a drop: fires the backoff timer and opens the new socket.
    pub fn reconnect(&mut self) {
        self.fire_timer();
        self.conn = self.expect_open();
        self.open_socket();
    }

    pub fn receive(&mut self, frame: Value) {
        self.session
            .handle_text(self.conn, &frame.to_string(), self.now);
    }

    pub fn receive_text(&mut self, text: &str) {
        self.session.handle_text(self.conn, text, self.now);
    }

    pub fn send(&mut self, value: Value) -> MessageId {
        self.session
            .send(data(value), self.now)
            .expect("the outbox has room")
    }

    pub fn transmits(&mut self) -> Vec<Value> {
        std::iter::from_fn(|| self.session.poll_transmit())
            .map(|t| serde_json::from_str(&t.text).expect("frames are JSON"))
            .collect()
    }

    pub fn actions(&mut self) -> Vec<Action> {
        std::iter::from_fn(|| self.session.poll_action()).collect()
    }

    pub fn events(&mut self) -> Vec<ClientEvent> {
        std::iter::from_fn(|| self.session.poll_event()).collect()
    }

    /// The close code of the single Close action now pending.
    pub fn closed_with(&mut self) -> u16 {
        match self.actions().as_slice() {
            [Action::Close { code, .. }] => *code,
            other => panic!("expected one Close action, got {other:?}"),
        }
    }
}

/// A server connection driven by hand.
pub struct Server {
    pub connection: ServerConnection,
    pub config: ServerConfig,
    pub now: Time,
}

pub fn server_config() -> ServerConfig {
    ServerConfig::default()
        .heartbeat(Duration::from_millis(1000))
        .hello_timeout(Duration::from_millis(5000))
        .max_inflight(4)
}

impl Server {
    pub fn open(phase: ServerPhase) -> Self {
        let config = server_config();
        Server {
            connection: ServerConnection::new(config.clone(), phase, Time::ZERO),
            config,
            now: Time::ZERO,
        }
    }

    /// A connection past `hello` and accepted with a new session `s1`.
    pub fn ready() -> Self {
        let mut server = Server::open(ServerPhase::Accepting);
        server.transmits();
        server.receive(json!({"type": "hello", "token": "t"}));
        server.events();
        server.accept_new("s1");
        server.transmits();
        server
    }

    pub fn at(&mut self, millis: u64) {
        self.now = Time::from_millis(millis);
    }

    pub fn new_session(&self, id: &str) -> ServerSession {
        let token = ResumeToken::from_random_bytes(&[7; 16]).expect("16 bytes");
        ServerSession::new(id, token, &self.config)
    }

    pub fn accept_new(&mut self, id: &str) {
        let session = self.new_session(id);
        self.connection.accept(session, false, self.now);
    }

    pub fn receive(&mut self, frame: Value) {
        self.connection.handle_text(&frame.to_string(), self.now);
    }

    pub fn transmits(&mut self) -> Vec<Value> {
        std::iter::from_fn(|| self.connection.poll_transmit())
            .map(|t| serde_json::from_str(&t).expect("frames are JSON"))
            .collect()
    }

    pub fn events(&mut self) -> Vec<ConnectionEvent> {
        std::iter::from_fn(|| self.connection.poll_event()).collect()
    }

    pub fn session_events(&mut self) -> Vec<SessionEvent> {
        std::iter::from_fn(|| self.connection.poll_session_event()).collect()
    }

    pub fn fire_timer(&mut self) {
        let at = self.connection.poll_timeout().expect("a timer is armed");
        self.now = at;
        self.connection.handle_timeout(at);
    }
}
