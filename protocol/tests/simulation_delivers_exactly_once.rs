//! A deterministic simulation of a client session and a server joined by a faulty network,
//! driven by a seed over virtual time.
//!
//! The network delays frames, duplicates some, cuts connections cleanly or silently (half-open),
//! fails connection attempts, and the server redeploys (`goaway` 4000), expires credentials
//! (4101), restarts (every session lost, then a start-up phase behind the readiness gate) and
//! shrinks its frame limit between connections. Over every seed the test checks:
//! - every message accepted by either side ends in exactly one outcome;
//! - an acknowledged message reached the peer's application exactly once; a refused or expired
//!   one never did; no message is ever delivered twice, and each side receives in send order;
//! - no `msg` is transmitted on a connection before its `connection_ready`;
//! - once the faults stop, the client becomes ready and every pending message is settled.
//!
//! `READYWS_SIM_SEEDS=N` sets how many seeds run (default 1000); `READYWS_SIM_SEED=S` replays one.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use readyws_protocol::frame::Hello;
use readyws_protocol::{
    Action, BackoffConfig, ClientConfig, ClientEvent, ClientSession, ConnId, ConnectionEvent, Data,
    DisconnectReason, MessageId, OutboxLimits, Outcome, ResetPolicy, ResumeToken, ServerConfig,
    ServerConnection, ServerPhase, ServerSession, SessionEvent, Time,
};

const ACTIVE_MS: u64 = 12_000;
const QUIET_MS: u64 = 40_000;

#[derive(Debug)]
enum Scheduled {
    ConnectResult {
        conn: u64,
        ok: bool,
    },
    ToServer {
        conn: u64,
        text: String,
    },
    ToClient {
        conn: u64,
        text: String,
    },
    ServerSeesClose {
        conn: u64,
        code: Option<u16>,
    },
    ClientSeesClose {
        conn: u64,
        code: Option<u16>,
        reason: String,
    },
    NewToken,
}

#[derive(Default)]
struct Link {
    server: Option<ServerConnection>,
    /// Frames no longer pass in either direction (a silent or a hard cut).
    cut: bool,
    last_to_server: u64,
    last_to_client: u64,
    ready_sent: bool,
    ready_seen_by_client: bool,
    server_notified: bool,
    client_notified: bool,
}

struct Stored {
    session: ServerSession,
    expires_at: u64,
}

/// What each side's application observed about the messages it sent and received.
#[derive(Default)]
struct Ledger {
    outcomes: HashMap<u64, (Outcome, u64)>,
    counter_of: HashMap<(String, MessageId), u64>,
    received: Vec<u64>,
    /// Whether the sender resends after a session reset ([`ResetPolicy::Resend`]).
    at_least_once: bool,
    last_in_scope: HashMap<String, u64>,
}

impl Ledger {
    /// `session` names the session object whose `send` returned `id` (ids are per object).
    fn accepted(&mut self, session: &str, id: MessageId, counter: u64) {
        self.counter_of.insert((session.to_owned(), id), counter);
    }

    fn outcome(
        &mut self,
        session: &str,
        id: MessageId,
        outcome: Outcome,
        now: u64,
    ) -> Result<(), String> {
        let counter = *self
            .counter_of
            .get(&(session.to_owned(), id))
            .ok_or_else(|| format!("outcome {outcome:?} for unknown message {id:?}"))?;
        if let Some(previous) = self.outcomes.insert(counter, (outcome.clone(), now)) {
            return Err(format!(
                "message #{counter} got a second outcome {outcome:?} after {previous:?}"
            ));
        }
        Ok(())
    }

    /// A delivery to the application, by the receiving session `scope`. Order and uniqueness hold
    /// across all sessions, except for a sender that resends after a reset: then they hold within
    /// each receiving session, and a message may arrive once more in a later session.
    fn receive(&mut self, data: &Data, scope: &str) -> Result<(), String> {
        let counter: u64 = data
            .deserialize::<serde_json::Value>()
            .ok()
            .and_then(|v| v.get("n").and_then(serde_json::Value::as_u64))
            .ok_or_else(|| format!("unexpected payload {data:?}"))?;
        let last = if self.at_least_once {
            self.last_in_scope.get(scope).copied()
        } else {
            self.received.last().copied()
        };
        if let Some(last) = last {
            if counter <= last {
                return Err(format!(
                    "message #{counter} delivered after #{last}: duplicate or out of order"
                ));
            }
        }
        self.last_in_scope.insert(scope.to_owned(), counter);
        self.received.push(counter);
        Ok(())
    }

    fn check(&self, side: &str) -> Result<(), String> {
        let received: HashSet<u64> = self.received.iter().copied().collect();
        for counter in self.counter_of.values() {
            let Some((outcome, _)) = self.outcomes.get(counter) else {
                return Err(format!("{side} message #{counter} never got an outcome"));
            };
            let delivered = received.contains(counter);
            match outcome {
                Outcome::Acked if !delivered => {
                    return Err(format!(
                        "{side} message #{counter} acked but never delivered"
                    ));
                }
                Outcome::Refused { .. } | Outcome::Expired if delivered => {
                    return Err(format!(
                        "{side} message #{counter} delivered but reported {outcome:?}"
                    ));
                }
                _ => {}
            }
        }
        for counter in &received {
            if !self.outcomes.contains_key(counter)
                && !self.counter_of.values().any(|c| c == counter)
            {
                return Err(format!("{side} delivered #{counter}, which was never sent"));
            }
        }
        Ok(())
    }
}

struct Sim {
    rng: fastrand::Rng,
    now: u64,
    seq: u64,
    queue: BTreeMap<(u64, u64), Scheduled>,
    client: ClientSession,
    links: HashMap<u64, Link>,
    current_conn: Option<u64>,
    stored: HashMap<String, Stored>,
    /// `hello`s waiting for the server's start-up to finish.
    pending_hellos: HashMap<u64, Hello>,
    /// The session the server application sends to: the user's most recent one.
    user_session: Option<String>,
    next_session: u64,
    next_counter: u64,
    accepted_token: String,
    client_token_epoch: u64,
    server_config: ServerConfig,
    starting_until: Option<u64>,
    client_ledger: Ledger,
    server_ledger: Ledger,
    faults: bool,
    log: Vec<String>,
    coverage: Coverage,
}

/// How often each path of interest was taken, so that the test fails if the simulation stops
/// exercising one.
#[derive(Debug, Default, Clone, Copy)]
struct Coverage {
    resumed: u64,
    new_sessions: u64,
    session_resets: u64,
    acked: u64,
    refused_by_nack: u64,
    refused_locally: u64,
    expired: u64,
    reset_outcomes: u64,
    duplicates_dropped: u64,
    takeovers: u64,
    startup_goaways: u64,
    credential_refreshes: u64,
    heartbeat_timeouts: u64,
    violations: u64,
}

impl Coverage {
    fn add(&mut self, other: Coverage) {
        self.resumed += other.resumed;
        self.new_sessions += other.new_sessions;
        self.session_resets += other.session_resets;
        self.acked += other.acked;
        self.refused_by_nack += other.refused_by_nack;
        self.refused_locally += other.refused_locally;
        self.expired += other.expired;
        self.reset_outcomes += other.reset_outcomes;
        self.duplicates_dropped += other.duplicates_dropped;
        self.takeovers += other.takeovers;
        self.startup_goaways += other.startup_goaways;
        self.credential_refreshes += other.credential_refreshes;
        self.heartbeat_timeouts += other.heartbeat_timeouts;
        self.violations += other.violations;
    }

    fn missing(&self) -> Vec<&'static str> {
        let counts = [
            ("resumed sessions", self.resumed),
            ("new sessions", self.new_sessions),
            ("session resets", self.session_resets),
            ("acked messages", self.acked),
            ("messages refused by nack", self.refused_by_nack),
            ("messages refused locally", self.refused_locally),
            ("expired messages", self.expired),
            ("session-reset outcomes", self.reset_outcomes),
            ("duplicate msg frames dropped", self.duplicates_dropped),
            ("session takeovers", self.takeovers),
            ("start-up goaways", self.startup_goaways),
            ("credential refreshes", self.credential_refreshes),
            ("heartbeat timeouts", self.heartbeat_timeouts),
            ("protocol violations", self.violations),
        ];
        counts
            .iter()
            .filter(|(_, n)| *n == 0)
            .map(|(name, _)| *name)
            .collect()
    }
}

impl Sim {
    fn new(seed: u64) -> Self {
        let mut rng = fastrand::Rng::with_seed(seed);
        let client_config = ClientConfig::default()
            .token("token-0")
            .outbox(OutboxLimits {
                max_messages: 64,
                max_bytes: 64 * 1024,
                max_message_bytes: 7000,
            })
            .backoff(BackoffConfig {
                initial: Duration::from_millis(20),
                max: Duration::from_millis(800),
                max_attempts: None,
            })
            .connect_timeout(Duration::from_millis(800))
            .handshake_timeout(Duration::from_millis(1500))
            .startup_timeout(Duration::from_millis(4000));
        // Even seeds run the report policy (exactly once), odd ones the default resend policy
        // (at least once across a lost session, exactly once within each session).
        let at_least_once = seed % 2 == 1;
        let client_config = client_config.reset_policy(if at_least_once {
            ResetPolicy::Resend
        } else {
            ResetPolicy::Report
        });
        let server_config = ServerConfig::default()
            .heartbeat(Duration::from_millis(400))
            .max_inflight(rng.u64(1..=8))
            .resume_window(Duration::from_millis(rng.u64(1000..=6000)))
            .hello_timeout(Duration::from_millis(1000))
            .outbox(OutboxLimits {
                max_messages: 64,
                max_bytes: 64 * 1024,
                max_message_bytes: 7000,
            });
        let client = ClientSession::new(client_config, rng.u64(..));
        Sim {
            rng,
            now: 0,
            seq: 0,
            queue: BTreeMap::new(),
            client,
            links: HashMap::new(),
            current_conn: None,
            stored: HashMap::new(),
            pending_hellos: HashMap::new(),
            user_session: None,
            next_session: 1,
            next_counter: 1,
            accepted_token: "token-0".to_owned(),
            client_token_epoch: 0,
            server_config,
            starting_until: None,
            client_ledger: Ledger {
                at_least_once,
                ..Ledger::default()
            },
            server_ledger: Ledger::default(),
            faults: true,
            log: Vec::new(),
            coverage: Coverage::default(),
        }
    }

    fn time(&self) -> Time {
        Time::from_millis(self.now)
    }

    fn schedule(&mut self, at: u64, event: Scheduled) {
        self.seq += 1;
        self.queue.insert((at, self.seq), event);
    }

    fn latency(&mut self) -> u64 {
        if self.faults {
            self.rng.u64(0..=60)
        } else {
            self.rng.u64(0..=5)
        }
    }

    fn payload(&mut self, size: usize) -> (u64, Data) {
        let counter = self.next_counter;
        self.next_counter += 1;
        let pad = "x".repeat(size);
        let data = Data::from_json(format!(r#"{{"n":{counter},"pad":"{pad}"}}"#))
            .expect("the payload is valid JSON");
        (counter, data)
    }

    fn run(&mut self) -> Result<(), String> {
        self.client.connect(self.time());
        let mut next_app_action = 0;
        let mut next_fault = self.rng.u64(200..=1500);
        loop {
            self.drain()?;
            if self.now >= ACTIVE_MS && self.faults {
                self.faults = false;
                self.log.push(format!("{} faults stop", self.now));
            }
            if self.now >= ACTIVE_MS + QUIET_MS {
                break;
            }
            // Find the next instant anything happens.
            let mut next = ACTIVE_MS + QUIET_MS;
            if let Some(((at, _), _)) = self.queue.first_key_value() {
                next = next.min(*at);
            }
            if let Some(at) = self.client.poll_timeout() {
                next = next.min(at.as_millis());
            }
            for link in self.links.values() {
                if let Some(at) = link
                    .server
                    .as_ref()
                    .and_then(ServerConnection::poll_timeout)
                {
                    next = next.min(at.as_millis());
                }
            }
            for stored in self.stored.values() {
                next = next.min(stored.expires_at);
            }
            if let Some(at) = self.starting_until {
                next = next.min(at);
            }
            if self.faults {
                next = next.min(next_app_action).min(next_fault);
            } else if self.now < ACTIVE_MS + 1000 {
                next = next.min(ACTIVE_MS + 1000);
            }
            self.now = next.max(self.now);
            let now = self.time();

            while let Some(entry) = self.queue.first_entry() {
                if entry.key().0 > self.now {
                    break;
                }
                let event = entry.remove();
                self.deliver(event)?;
                self.drain()?;
            }
            if self.client.poll_timeout().is_some_and(|at| at <= now) {
                self.client.handle_timeout(now);
            }
            let due: Vec<u64> = self
                .links
                .iter()
                .filter(|(_, l)| {
                    l.server
                        .as_ref()
                        .and_then(ServerConnection::poll_timeout)
                        .is_some_and(|at| at <= now)
                })
                .map(|(conn, _)| *conn)
                .collect();
            for conn in due {
                if let Some(server) = self.links.get_mut(&conn).and_then(|l| l.server.as_mut()) {
                    server.handle_timeout(now);
                }
            }
            self.expire_sessions()?;
            if self.starting_until.is_some_and(|at| at <= self.now) {
                self.finish_startup();
            }
            if self.faults && self.now >= next_app_action {
                self.app_action()?;
                next_app_action = self.now + self.rng.u64(5..=120);
            }
            if self.faults && self.now >= next_fault {
                self.fault()?;
                next_fault = self.now + self.rng.u64(300..=2500);
            }
        }
        self.drain()?;
        // Liveness: with the network healthy again, everything settles.
        if !self.client.is_ready() {
            return Err(format!(
                "client not ready after the quiet period: {:?}",
                self.client.state()
            ));
        }
        if self.client.pending() != 0 {
            return Err(format!(
                "{} client messages still pending after the quiet period",
                self.client.pending()
            ));
        }
        if let Some(id) = &self.user_session {
            let pending = self.server_session_pending(id);
            if pending != 0 {
                return Err(format!(
                    "{pending} server messages still pending after the quiet period"
                ));
            }
        }
        // End everything, so that every message has its outcome, then check the ledgers.
        self.client.close(Duration::ZERO, self.time());
        for conn in self.links.keys().copied().collect::<Vec<_>>() {
            self.end_attached_session(conn)?;
        }
        for (_, mut stored) in std::mem::take(&mut self.stored) {
            stored.session.end();
            self.drain_session(&mut stored.session)?;
        }
        self.drain()?;
        self.client_ledger.check("client")?;
        self.server_ledger.check("server")?;
        Ok(())
    }

    fn server_session_pending(&self, id: &str) -> usize {
        if let Some(stored) = self.stored.get(id) {
            return stored.session.pending();
        }
        self.links
            .values()
            .filter_map(|l| l.server.as_ref()?.session())
            .filter(|s| s.id() == id)
            .map(ServerSession::pending)
            .sum()
    }

    fn app_action(&mut self) -> Result<(), String> {
        let now = self.time();
        match self.rng.u8(0..10) {
            0..=4 => {
                let size = if self.rng.u8(0..20) == 0 {
                    self.rng.usize(3000..6500)
                } else {
                    self.rng.usize(0..200)
                };
                let (counter, data) = self.payload(size);
                let ttl =
                    (self.rng.u8(0..6) == 0).then(|| Duration::from_millis(self.rng.u64(1..=400)));
                if let Ok(id) = self.client.send_with_ttl(data, ttl, now) {
                    self.client_ledger.accepted("", id, counter);
                }
            }
            5..=8 => {
                let Some(target) = self.user_session.clone() else {
                    return Ok(());
                };
                let size = self.rng.usize(0..200);
                let (counter, data) = self.payload(size);
                let session = if let Some(stored) = self.stored.get_mut(&target) {
                    Some(&mut stored.session)
                } else {
                    self.links
                        .values_mut()
                        .filter_map(|l| l.server.as_mut()?.session_mut())
                        .find(|s| s.id() == target)
                };
                if let Some(session) = session {
                    if let Ok(id) = session.send(data, None, now) {
                        self.server_ledger.accepted(&target, id, counter);
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn fault(&mut self) -> Result<(), String> {
        let now = self.time();
        let roll = self.rng.u8(0..100);
        let conn = self.current_conn;
        self.log
            .push(format!("{} fault roll {roll} on {conn:?}", self.now));
        match roll {
            0..=29 => {
                // A hard cut: both ends hear of it.
                if let Some(conn) = conn {
                    self.cut(conn, true);
                }
            }
            30..=49 => {
                // A silent cut: a half-open connection that only heartbeats can detect.
                if let Some(link) = conn.and_then(|c| self.links.get_mut(&c)) {
                    link.cut = true;
                }
            }
            50..=64 => {
                // A deploy: the server asks the client to come back later, and the next instance may
                // allow smaller frames; sessions survive in the shared store.
                let limit = if self.rng.bool() { 4096 } else { 8192 };
                self.server_config = self.server_config.clone().max_frame_bytes(limit);
                if let Some(server) = conn
                    .and_then(|c| self.links.get_mut(&c))
                    .and_then(|l| l.server.as_mut())
                {
                    let retry = Duration::from_millis(self.rng.u64(10..=300));
                    server.goaway(4000, "deploying", Some(retry), now);
                }
            }
            65..=74 => {
                // Credentials expire: the next hello is refused until the client refreshes.
                self.accepted_token = format!("token-{}", self.client_token_epoch + 1);
                if let Some(server) = conn
                    .and_then(|c| self.links.get_mut(&c))
                    .and_then(|l| l.server.as_mut())
                {
                    server.goaway(4101, "token expired", None, now);
                }
            }
            75..=84 => {
                // The server restarts: every session is lost; new sockets wait behind the gate.
                self.log.push(format!("{} server restart", self.now));
                for conn in self.links.keys().copied().collect::<Vec<_>>() {
                    self.cut(conn, true);
                    self.end_attached_session(conn)?;
                    if let Some(link) = self.links.get_mut(&conn) {
                        link.server = None;
                    }
                }
                for (_, mut stored) in std::mem::take(&mut self.stored) {
                    stored.session.end();
                    self.drain_session(&mut stored.session)?;
                }
                self.user_session = None;
                self.starting_until = Some(self.now + self.rng.u64(100..=3000));
                let limit = if self.rng.bool() { 4096 } else { 8192 };
                self.server_config = self.server_config.clone().max_frame_bytes(limit);
            }
            _ => {
                // A frame is duplicated on the wire.
                if let Some(conn) = conn {
                    let at = self.now;
                    self.schedule(
                        at,
                        Scheduled::ToServer {
                            conn,
                            text: r#"{"type":"ping","nonce":"dup"}"#.to_owned(),
                        },
                    );
                }
            }
        }
        Ok(())
    }

    /// Ends `conn` for both ends, each told after a delay, when `notify` says so.
    fn cut(&mut self, conn: u64, notify: bool) {
        let (to_server, to_client) = (self.latency(), self.latency());
        let Some(link) = self.links.get_mut(&conn) else {
            return;
        };
        if link.cut && !notify {
            return;
        }
        link.cut = true;
        if notify {
            let at_server = (self.now + to_server).max(link.last_to_server);
            let at_client = (self.now + to_client).max(link.last_to_client);
            if !link.server_notified {
                link.server_notified = true;
                self.seq += 1;
                self.queue.insert(
                    (at_server, self.seq),
                    Scheduled::ServerSeesClose { conn, code: None },
                );
            }
            if !link.client_notified {
                link.client_notified = true;
                self.seq += 1;
                self.queue.insert(
                    (at_client, self.seq),
                    Scheduled::ClientSeesClose {
                        conn,
                        code: None,
                        reason: String::new(),
                    },
                );
            }
        }
    }

    fn finish_startup(&mut self) {
        self.starting_until = None;
        let waiting: Vec<u64> = self
            .links
            .iter()
            .filter(|(_, l)| {
                l.server
                    .as_ref()
                    .is_some_and(|s| !s.is_ready() && !s.is_closed())
            })
            .map(|(c, _)| *c)
            .collect();
        for conn in waiting {
            if self.rng.u8(0..4) == 0 {
                // The gate gives up on this socket instead, telling it when to return.
                let now = self.time();
                if let Some(server) = self.links.get_mut(&conn).and_then(|l| l.server.as_mut()) {
                    server.goaway(
                        4002,
                        "startup took too long",
                        Some(Duration::from_millis(200)),
                        now,
                    );
                }
            } else {
                self.try_accept(conn);
            }
        }
    }

    fn deliver(&mut self, event: Scheduled) -> Result<(), String> {
        let now = self.time();
        match event {
            Scheduled::ConnectResult { conn, ok } => {
                if !ok {
                    self.client
                        .handle_connect_failed(ConnId(conn), "refused", now);
                    return Ok(());
                }
                let phase = if self.starting_until.is_some() {
                    ServerPhase::Starting
                } else {
                    ServerPhase::Accepting
                };
                let link = Link {
                    server: Some(ServerConnection::new(
                        self.server_config.clone(),
                        phase,
                        now,
                    )),
                    ..Link::default()
                };
                self.links.insert(conn, link);
                self.current_conn = Some(conn);
                self.client
                    .handle_connected(ConnId(conn), Some("readyws.v1"), now);
            }
            Scheduled::ToServer { conn, text } => {
                let Some(link) = self.links.get_mut(&conn) else {
                    return Ok(());
                };
                if link.cut && !text.contains("\"nonce\":\"dup\"") {
                    return Ok(());
                }
                if let Some(server) = link.server.as_mut() {
                    let before = server.session().map_or(0, ServerSession::last_received);
                    server.handle_text(&text, now);
                    let after = server.session().map_or(0, ServerSession::last_received);
                    if text.starts_with(r#"{"type":"msg""#) && before == after && server.is_ready()
                    {
                        self.coverage.duplicates_dropped += 1;
                    }
                }
            }
            Scheduled::ToClient { conn, text } => {
                let Some(link) = self.links.get_mut(&conn) else {
                    return Ok(());
                };
                if link.cut {
                    return Ok(());
                }
                if text.contains("\"type\":\"connection_ready\"") {
                    link.ready_seen_by_client = true;
                }
                self.client.handle_text(ConnId(conn), &text, now);
            }
            Scheduled::ServerSeesClose { conn, code } => {
                if let Some(server) = self.links.get_mut(&conn).and_then(|l| l.server.as_mut()) {
                    server.handle_closed(code.map(|c| (c, "")), now);
                }
            }
            Scheduled::ClientSeesClose { conn, code, reason } => {
                self.client.handle_disconnected(
                    ConnId(conn),
                    code.map(|c| (c, reason.as_str())),
                    now,
                );
            }
            Scheduled::NewToken => {
                self.client_token_epoch += 1;
                let token = format!("token-{}", self.client_token_epoch);
                self.client.set_token(Some(token), now);
            }
        }
        Ok(())
    }

    fn drain(&mut self) -> Result<(), String> {
        loop {
            let mut progress = false;
            while let Some(action) = self.client.poll_action() {
                progress = true;
                match action {
                    Action::Open { conn } => {
                        let ok = !self.faults || self.rng.u8(0..10) != 0;
                        let at = self.now + self.latency();
                        self.schedule(at, Scheduled::ConnectResult { conn: conn.0, ok });
                    }
                    Action::Close { conn, code, .. } => {
                        let delay = self.latency();
                        if let Some(link) = self.links.get_mut(&conn.0) {
                            link.client_notified = true;
                            if !link.cut && !link.server_notified {
                                link.server_notified = true;
                                let at = (self.now + delay).max(link.last_to_server);
                                self.seq += 1;
                                self.queue.insert(
                                    (at, self.seq),
                                    Scheduled::ServerSeesClose {
                                        conn: conn.0,
                                        code: Some(code),
                                    },
                                );
                            }
                        }
                    }
                }
            }
            while let Some(transmit) = self.client.poll_transmit() {
                progress = true;
                let conn = transmit.conn.0;
                let delay = self.latency();
                let duplicate = self.faults && self.rng.u8(0..50) == 0;
                let Some(link) = self.links.get_mut(&conn) else {
                    continue;
                };
                if transmit.text.starts_with(r#"{"type":"msg""#) && !link.ready_seen_by_client {
                    return Err(format!(
                        "client sent a msg on connection {conn} before connection_ready"
                    ));
                }
                let at = (self.now + delay).max(link.last_to_server);
                link.last_to_server = at;
                self.seq += 1;
                self.queue.insert(
                    (at, self.seq),
                    Scheduled::ToServer {
                        conn,
                        text: transmit.text.clone(),
                    },
                );
                if duplicate {
                    self.seq += 1;
                    self.queue.insert(
                        (at, self.seq),
                        Scheduled::ToServer {
                            conn,
                            text: transmit.text,
                        },
                    );
                }
            }
            while let Some(event) = self.client.poll_event() {
                progress = true;
                match event {
                    ClientEvent::Message { data } => self.server_ledger.receive(&data, "client")?,
                    ClientEvent::Outcome { id, outcome } => {
                        match &outcome {
                            Outcome::Acked => self.coverage.acked += 1,
                            Outcome::Refused { reason, .. } if reason.contains("peer's limit") => {
                                self.coverage.refused_locally += 1;
                            }
                            Outcome::Refused { .. } => self.coverage.refused_by_nack += 1,
                            Outcome::Expired => self.coverage.expired += 1,
                            Outcome::SessionReset => self.coverage.reset_outcomes += 1,
                            _ => {}
                        }
                        self.client_ledger.outcome("", id, outcome, self.now)?;
                    }
                    ClientEvent::SessionReset { .. } => self.coverage.session_resets += 1,
                    ClientEvent::CredentialsRequired { .. } => {
                        self.coverage.credential_refreshes += 1;
                        let at = self.now + self.rng.u64(0..=200);
                        self.schedule(at, Scheduled::NewToken);
                    }
                    ClientEvent::Closed { reason } if self.now < ACTIVE_MS + QUIET_MS => {
                        return Err(format!("client session closed: {reason}"));
                    }
                    ClientEvent::Ready {
                        session_id,
                        resumed,
                        ..
                    } => {
                        if resumed {
                            self.coverage.resumed += 1;
                        } else {
                            self.coverage.new_sessions += 1;
                        }
                        self.log.push(format!(
                            "{} client ready {session_id} resumed={resumed}",
                            self.now
                        ));
                    }
                    ClientEvent::Disconnected { reason, .. } => {
                        match &reason {
                            DisconnectReason::HeartbeatTimeout => {
                                self.coverage.heartbeat_timeouts += 1
                            }
                            DisconnectReason::ProtocolViolation(_) => self.coverage.violations += 1,
                            DisconnectReason::Goaway { code: 4002, .. } => {
                                self.coverage.startup_goaways += 1
                            }
                            DisconnectReason::Goaway { code: 4010, .. } => {
                                self.coverage.violations += 1
                            }
                            _ => {}
                        }
                        self.log
                            .push(format!("{} client disconnected: {reason}", self.now));
                    }
                    _ => {}
                }
            }
            let conns: Vec<u64> = self.links.keys().copied().collect();
            for conn in conns {
                progress |= self.drain_server(conn)?;
            }
            if !progress {
                return Ok(());
            }
        }
    }

    fn drain_server(&mut self, conn: u64) -> Result<bool, String> {
        let mut progress = false;
        let mut hellos = Vec::new();
        let mut closed = None;
        let session_id: String;
        let mut session_events = Vec::new();
        {
            let latency = if self.faults { 60 } else { 5 };
            let Some(link) = self.links.get_mut(&conn) else {
                return Ok(false);
            };
            let Some(server) = link.server.as_mut() else {
                return Ok(false);
            };
            while let Some(text) = server.poll_transmit() {
                progress = true;
                if text.starts_with(r#"{"type":"connection_ready""#) {
                    link.ready_sent = true;
                }
                if text.starts_with(r#"{"type":"msg""#) && !link.ready_sent {
                    return Err(format!(
                        "server sent a msg on connection {conn} before connection_ready"
                    ));
                }
                let at = (self.now + self.rng.u64(0..=latency)).max(link.last_to_client);
                link.last_to_client = at;
                if self.faults && self.rng.u8(0..50) == 0 {
                    // The frame arrives twice.
                    self.seq += 1;
                    let copy = Scheduled::ToClient {
                        conn,
                        text: text.clone(),
                    };
                    self.queue.insert((at, self.seq), copy);
                }
                self.seq += 1;
                self.queue
                    .insert((at, self.seq), Scheduled::ToClient { conn, text });
            }
            if let Some((code, reason)) = server.poll_close() {
                progress = true;
                if !link.cut && !link.client_notified {
                    link.client_notified = true;
                    let at = (self.now + self.rng.u64(0..=latency)).max(link.last_to_client);
                    self.seq += 1;
                    self.queue.insert(
                        (at, self.seq),
                        Scheduled::ClientSeesClose {
                            conn,
                            code: Some(code),
                            reason,
                        },
                    );
                }
                link.server_notified = true;
            }
            while let Some(event) = server.poll_event() {
                progress = true;
                match event {
                    ConnectionEvent::Hello(hello) => hellos.push(hello),
                    ConnectionEvent::Closed { session_ended, .. } => closed = Some(session_ended),
                    _ => {}
                }
            }
            session_id = server
                .session()
                .map(|s| s.id().to_owned())
                .unwrap_or_default();
            session_events.extend(std::iter::from_fn(|| server.poll_session_event()));
        }
        progress |= !session_events.is_empty();
        self.record(&session_id, session_events)?;
        for hello in hellos {
            self.handle_hello(conn, hello);
        }
        if let Some(session_ended) = closed {
            let session = self
                .links
                .get_mut(&conn)
                .and_then(|l| l.server.as_mut())
                .and_then(ServerConnection::take_session);
            if let Some(mut session) = session {
                if session_ended {
                    session.end();
                    self.drain_session(&mut session)?;
                } else {
                    let expires_at = self.now + self.server_config.resume_window.as_millis() as u64;
                    self.stored.insert(
                        session.id().to_owned(),
                        Stored {
                            session,
                            expires_at,
                        },
                    );
                }
            }
        }
        Ok(progress)
    }

    /// Ends the session attached to `conn`'s server connection, if any, recording its outcomes.
    fn end_attached_session(&mut self, conn: u64) -> Result<(), String> {
        let session = self
            .links
            .get_mut(&conn)
            .and_then(|l| l.server.as_mut())
            .and_then(ServerConnection::take_session);
        if let Some(mut session) = session {
            session.end();
            self.drain_session(&mut session)?;
        }
        Ok(())
    }

    fn drain_session(&mut self, session: &mut ServerSession) -> Result<(), String> {
        let events: Vec<SessionEvent> = std::iter::from_fn(|| session.poll_event()).collect();
        self.record(session.id(), events)
    }

    /// Enters a server session's events in the ledgers.
    fn record(&mut self, session_id: &str, events: Vec<SessionEvent>) -> Result<(), String> {
        for event in events {
            match event {
                SessionEvent::Message { data, .. } => {
                    self.client_ledger.receive(&data, session_id)?;
                }
                SessionEvent::Outcome { id, outcome } => {
                    self.server_ledger
                        .outcome(session_id, id, outcome, self.now)?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn handle_hello(&mut self, conn: u64, hello: Hello) {
        let now = self.time();
        if hello.token.as_deref() != Some(self.accepted_token.as_str()) {
            if let Some(server) = self.links.get_mut(&conn).and_then(|l| l.server.as_mut()) {
                server.goaway(4101, "token expired", None, now);
            }
            return;
        }
        // Park the decision until start-up completes, like the readiness gate does.
        self.pending_hellos.insert(conn, hello);
        if self.starting_until.is_none() {
            self.try_accept(conn);
        }
    }

    fn try_accept(&mut self, conn: u64) {
        let Some(hello) = self.pending_hellos.remove(&conn) else {
            return;
        };
        let now = self.time();
        let mut resumed_session = None;
        if let Some(resume) = &hello.resume {
            if self
                .stored
                .get(&resume.session_id)
                .is_some_and(|s| s.session.matches(resume))
            {
                resumed_session = self.stored.remove(&resume.session_id).map(|s| s.session);
            } else {
                // Still attached to an older connection: take it over.
                let holder = self.links.iter().find_map(|(c, l)| {
                    let session = l.server.as_ref()?.session()?;
                    (session.matches(resume) && *c != conn).then_some(*c)
                });
                if let Some(old) = holder {
                    let old_server = self.links.get_mut(&old).and_then(|l| l.server.as_mut());
                    if let Some(old_server) = old_server {
                        self.coverage.takeovers += 1;
                        let taken = old_server.take_session();
                        old_server.goaway(4203, "session taken over", None, now);
                        resumed_session = taken;
                    }
                }
            }
        }
        let resumed = resumed_session.is_some();
        let session = resumed_session.unwrap_or_else(|| {
            let id = format!("s{}", self.next_session);
            self.next_session += 1;
            let token =
                ResumeToken::from_random_bytes(&self.rng.u128(..).to_le_bytes()).expect("16 bytes");
            ServerSession::new(id, token, &self.server_config)
        });
        self.user_session = Some(session.id().to_owned());
        if let Some(server) = self.links.get_mut(&conn).and_then(|l| l.server.as_mut()) {
            server.accept(session, resumed, now);
        }
    }

    fn expire_sessions(&mut self) -> Result<(), String> {
        let expired: Vec<String> = self
            .stored
            .iter()
            .filter(|(_, s)| s.expires_at <= self.now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            if let Some(mut stored) = self.stored.remove(&id) {
                stored.session.end();
                self.drain_session(&mut stored.session)?;
            }
        }
        Ok(())
    }
}

fn run_seed(seed: u64) -> Result<Coverage, String> {
    let mut sim = Sim::new(seed);
    match sim.run() {
        Ok(()) => Ok(sim.coverage),
        Err(error) => {
            let tail: Vec<&String> = sim.log.iter().rev().take(12).collect();
            Err(format!("{error}\n  last events: {tail:#?}"))
        }
    }
}

#[test]
fn every_message_is_delivered_once_in_order_or_its_sender_is_told() {
    if let Ok(seed) = std::env::var("READYWS_SIM_SEED") {
        let seed: u64 = seed.parse().expect("READYWS_SIM_SEED is a number");
        if let Err(error) = run_seed(seed) {
            panic!("seed {seed} failed: {error}");
        }
        return;
    }
    let seeds: u64 = std::env::var("READYWS_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    let mut failures = Vec::new();
    let mut coverage = Coverage::default();
    for seed in 0..seeds {
        match run_seed(seed) {
            Ok(covered) => coverage.add(covered),
            Err(error) => failures.push(format!("seed {seed}: {error}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {seeds} seeds failed (replay one with READYWS_SIM_SEED=<seed>):\n{}",
        failures.len(),
        failures
            .iter()
            .take(5)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    if seeds >= 100 {
        let missing = coverage.missing();
        assert!(
            missing.is_empty(),
            "the simulation never exercised: {missing:?} ({coverage:?})"
        );
    }
}
