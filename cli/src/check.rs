//! `readyws check URL`: checks a server that claims readyws v1 against `docs/PROTOCOL.md`.
//!
//! It speaks the protocol frame by frame over a raw WebSocket (not through the readyws client,
//! which would hide a server's mistakes by recovering from them), provokes what it can, and
//! reports each rule as PASS, FAIL (a MUST broken, with what was expected and what came back),
//! WARN (a SHOULD not followed; the run still passes) or SKIP (with why). A reason "cites a rule"
//! when it names one the spec defines, bracketed or not. Frames are judged with the protocol crate's decoder, so "valid" means exactly what the
//! spec's frame tables say.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use readyws_protocol::codec::{decode, encode};
use readyws_protocol::frame::{
    Ack, ClientInfo, ConnectionReady, Hello, Msg, PRE_WELCOME_MAX_FRAME_BYTES, Ping, Resume,
    Welcome,
};
use readyws_protocol::{Data, Frame, ResumeToken, Role, SUBPROTOCOL};
use serde::Serialize;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Bytes, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// `readyws check --help`.
#[derive(clap::Args, Debug)]
pub(crate) struct CheckArgs {
    /// The server's WebSocket endpoint, for example ws://127.0.0.1:8080/ws.
    url: String,
    /// Credentials for `hello` (the server decides what they mean).
    #[arg(long, env = "READYWS_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The server's publish API key: with it, publish-and-hold is checked too.
    #[arg(long, env = "READYWS_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// The user the token authenticates, for the publish check (default: the token itself, as
    /// with `readyws serve --insecure-dev-auth`).
    #[arg(long)]
    user: Option<String>,
    /// The publish endpoint (default: http://HOST:PORT/api/publish of the WebSocket URL).
    #[arg(long)]
    publish_url: Option<String>,
    /// How long to wait for the server's hello timeout ([HS-7]) before failing it.
    #[arg(long, value_name = "MS", default_value_t = 15_000)]
    hello_wait_ms: u64,
    /// Print the results as JSON.
    #[arg(long)]
    json: bool,
}

/// How a rule fared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub(crate) enum Status {
    Pass,
    /// A MUST broken: the run fails.
    Fail,
    /// A SHOULD not followed: reported, the run does not fail.
    Warn,
    Skip,
}

/// The rules `docs/PROTOCOL.md` defines: each prefix with its highest number (the numbers run
/// from 1). A test reads the spec and keeps this in step.
pub(crate) const SPEC_RULES: [(&str, u32); 15] = [
    ("TR", 6),
    ("FR", 12),
    ("HS", 12),
    ("SG", 4),
    ("DL", 13),
    ("OB", 3),
    ("FC", 3),
    ("RS", 8),
    ("CU", 5),
    ("HB", 5),
    ("GA", 6),
    ("RC", 6),
    ("SE", 6),
    ("PB", 4),
    ("AP", 4),
];

/// Whether `id` (such as `FR-8`) is a rule of the spec.
pub(crate) fn rule_exists(id: &str) -> bool {
    let Some((prefix, number)) = id.split_once('-') else {
        return false;
    };
    let Ok(number) = number.parse::<u32>() else {
        return false;
    };
    SPEC_RULES
        .iter()
        .any(|(known, highest)| *known == prefix && (1..=*highest).contains(&number))
}

/// The rule ids a reason cites, bracketed (`[FR-1]`) or not (`FR-1:`): two capitals, a dash,
/// digits, standing alone.
pub(crate) fn cited_rules(reason: &str) -> Vec<String> {
    let bytes = reason.as_bytes();
    let mut cited = Vec::new();
    for start in 0..bytes.len() {
        let alone_before = start == 0 || !bytes[start - 1].is_ascii_alphanumeric();
        let shaped = bytes.len() > start + 3
            && bytes[start].is_ascii_uppercase()
            && bytes[start + 1].is_ascii_uppercase()
            && bytes[start + 2] == b'-'
            && bytes[start + 3].is_ascii_digit();
        if !alone_before || !shaped {
            continue;
        }
        let digits = bytes[start + 3..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        let end = start + 3 + digits;
        if bytes.get(end).is_some_and(|b| b.is_ascii_alphanumeric()) {
            continue;
        }
        cited.push(reason[start..end].to_owned());
    }
    cited
}

/// One line of the report.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct RuleResult {
    pub(crate) rule: &'static str,
    pub(crate) title: &'static str,
    pub(crate) status: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) detail: Option<String>,
}

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What arrived next on a socket.
#[derive(Debug)]
enum Incoming {
    Frame(Frame),
    /// A text frame the decoder refused, with its reason.
    Invalid(String),
    Closed(Option<(u16, String)>),
    Silence,
}

/// A raw connection to the server under test.
struct Conn {
    socket: Socket,
    /// The `max_frame_bytes` in force: 16384 until `welcome` says otherwise.
    limit: usize,
}

impl Conn {
    /// Opens a socket offering `readyws.v1`; returns it with the subprotocol the server chose.
    async fn open(url: &str) -> Result<(Conn, Option<String>), String> {
        let mut request = url
            .into_client_request()
            .map_err(|e| format!("`{url}` is not a WebSocket URL: {e}"))?;
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            SUBPROTOCOL.parse().map_err(|_| "header".to_owned())?,
        );
        let connecting = tokio_tungstenite::connect_async(request);
        let (socket, response) = tokio::time::timeout(Duration::from_secs(10), connecting)
            .await
            .map_err(|_| "the WebSocket did not open within 10 s".to_owned())?
            .map_err(|e| format!("the WebSocket did not open: {e}"))?;
        let selected = response
            .headers()
            .get("Sec-WebSocket-Protocol")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        Ok((
            Conn {
                socket,
                limit: PRE_WELCOME_MAX_FRAME_BYTES,
            },
            selected,
        ))
    }

    async fn send(&mut self, frame: &Frame) -> Result<(), String> {
        self.send_text(encode(frame)).await
    }

    async fn send_text(&mut self, text: String) -> Result<(), String> {
        self.socket
            .send(Message::text(text))
            .await
            .map_err(|e| format!("sending failed: {e}"))
    }

    /// The next readyws frame within `wait`, answering the server's pings on the way unless
    /// `answer_pings` is off.
    async fn next(&mut self, wait: Duration, answer_pings: bool) -> Incoming {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let message = match tokio::time::timeout_at(deadline, self.socket.next()).await {
                Err(_) => return Incoming::Silence,
                Ok(None) | Ok(Some(Err(_))) => return Incoming::Closed(None),
                Ok(Some(Ok(message))) => message,
            };
            match message {
                Message::Text(text) => match decode(text.as_str(), Role::Server, self.limit) {
                    Ok(Frame::Ping(ping)) if answer_pings => {
                        let pong = Frame::Pong(readyws_protocol::frame::Pong { nonce: ping.nonce });
                        let _ = self.send(&pong).await;
                    }
                    Ok(frame) => return Incoming::Frame(frame),
                    Err(error) => return Incoming::Invalid(error.to_string()),
                },
                Message::Close(frame) => {
                    return Incoming::Closed(
                        frame.map(|frame| (u16::from(frame.code), frame.reason.to_string())),
                    );
                }
                Message::Binary(_) => {
                    return Incoming::Invalid("a binary frame from the server".to_owned());
                }
                _ => {}
            }
        }
    }

    /// Waits for `welcome`.
    async fn welcome(&mut self) -> Result<Welcome, String> {
        match self.next(Duration::from_secs(5), false).await {
            Incoming::Frame(Frame::Welcome(welcome)) => {
                self.limit = usize::try_from(welcome.max_frame_bytes).unwrap_or(usize::MAX);
                Ok(welcome)
            }
            other => Err(format!(
                "expected `welcome` first, got {}",
                describe(&other)
            )),
        }
    }

    /// Sends `hello` and waits for `connection_ready` (through a start-up, up to 30 s).
    async fn hello(
        &mut self,
        token: Option<&str>,
        resume: Option<Resume>,
    ) -> Result<ConnectionReady, String> {
        let hello = Frame::Hello(Hello {
            token: token.map(str::to_owned),
            resume,
            client: Some(ClientInfo {
                sdk: "readyws-check".to_owned(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
                attempt: 1,
            }),
        });
        self.send(&hello).await?;
        match self.next(Duration::from_secs(30), true).await {
            Incoming::Frame(Frame::ConnectionReady(ready)) => Ok(ready),
            other => Err(format!(
                "expected `connection_ready`, got {}",
                describe(&other)
            )),
        }
    }

    /// Waits for the server to refuse the connection: `goaway`, then a close with the same code.
    async fn refusal(&mut self, wait: Duration) -> (Option<u16>, Option<u16>, String) {
        let mut goaway = None;
        let mut reason = String::new();
        loop {
            match self.next(wait, true).await {
                Incoming::Frame(Frame::Goaway(frame)) => {
                    goaway = Some(frame.code);
                    reason = frame.reason;
                }
                Incoming::Frame(_) | Incoming::Invalid(_) => {}
                Incoming::Closed(close) => return (goaway, close.map(|(code, _)| code), reason),
                Incoming::Silence => return (goaway, None, reason),
            }
        }
    }

    async fn close(mut self) {
        let _ = self
            .socket
            .close(Some(CloseFrame {
                code: 1000.into(),
                reason: "readyws check done".into(),
            }))
            .await;
    }
}

fn describe(incoming: &Incoming) -> String {
    match incoming {
        Incoming::Frame(frame) => format!("`{}`", frame.kind()),
        Incoming::Invalid(why) => format!("an invalid frame ({why})"),
        Incoming::Closed(Some((code, reason))) => format!("a close {code} ({reason})"),
        Incoming::Closed(None) => "the connection ending".to_owned(),
        Incoming::Silence => "nothing".to_owned(),
    }
}

fn msg(id: u64, data: &str) -> Frame {
    Frame::Msg(Msg {
        id,
        data: Data::from_json(data).unwrap_or_else(|_| Data::from_json("null").expect("null")),
    })
}

/// Collects results as the checks run.
#[derive(Default)]
struct Report {
    results: Vec<RuleResult>,
}

impl Report {
    /// A MUST: not following it is a FAIL.
    fn record(&mut self, rule: &'static str, title: &'static str, outcome: Result<(), String>) {
        self.judge(rule, title, outcome, Status::Fail);
    }

    /// A SHOULD: not following it is a WARN.
    fn record_should(
        &mut self,
        rule: &'static str,
        title: &'static str,
        outcome: Result<(), String>,
    ) {
        self.judge(rule, title, outcome, Status::Warn);
    }

    fn judge(
        &mut self,
        rule: &'static str,
        title: &'static str,
        outcome: Result<(), String>,
        unmet: Status,
    ) {
        let (status, detail) = match outcome {
            Ok(()) => (Status::Pass, None),
            Err(detail) => (unmet, Some(detail)),
        };
        self.results.push(RuleResult {
            rule,
            title,
            status,
            detail,
        });
    }

    fn skip(&mut self, rule: &'static str, title: &'static str, why: &str) {
        self.results.push(RuleResult {
            rule,
            title,
            status: Status::Skip,
            detail: Some(why.to_owned()),
        });
    }
}

/// Runs every check against `args.url`.
pub(crate) async fn check(args: &CheckArgs) -> Vec<RuleResult> {
    let mut report = Report::default();
    let token = args.token.as_deref();

    // TR-1, HS-1, the welcome table, HS-4: one clean handshake.
    let (mut conn, selected) = match Conn::open(&args.url).await {
        Ok(opened) => opened,
        Err(problem) => {
            report.record(
                "TR-1",
                "the server selects the subprotocol readyws.v1",
                Err(problem),
            );
            return report.results;
        }
    };
    report.record(
        "TR-1",
        "the server selects the subprotocol readyws.v1",
        if selected.as_deref() == Some(SUBPROTOCOL) {
            Ok(())
        } else {
            Err(format!(
                "expected Sec-WebSocket-Protocol: {SUBPROTOCOL}, got {}",
                selected.as_deref().unwrap_or("none")
            ))
        },
    );
    let first = conn.next(Duration::from_secs(5), false).await;
    let welcome = match first {
        Incoming::Frame(Frame::Welcome(welcome)) => {
            report.record(
                "HS-1",
                "`welcome` is the first frame, sent unprompted",
                Ok(()),
            );
            report.record("§3.2", "`welcome` has every member, in range", Ok(()));
            welcome
        }
        Incoming::Invalid(why) if why.contains("welcome") => {
            report.record(
                "HS-1",
                "`welcome` is the first frame, sent unprompted",
                Ok(()),
            );
            report.record("§3.2", "`welcome` has every member, in range", Err(why));
            return skip_rest(report, "no valid `welcome`");
        }
        other => {
            report.record(
                "HS-1",
                "`welcome` is the first frame, sent unprompted",
                Err(format!(
                    "expected `welcome` within 5 s, got {}",
                    describe(&other)
                )),
            );
            return skip_rest(report, "no `welcome`");
        }
    };
    conn.limit = usize::try_from(welcome.max_frame_bytes).unwrap_or(usize::MAX);
    let ready = match conn.hello(token, None).await {
        Ok(ready) => {
            report.record(
                "HS-4",
                "`hello` is answered with a valid `connection_ready`",
                if ready.resumed {
                    Err("a hello without resume got `resumed: true`".to_owned())
                } else {
                    Ok(())
                },
            );
            ready
        }
        Err(problem) => {
            report.record(
                "HS-4",
                "`hello` is answered with a valid `connection_ready`",
                Err(problem),
            );
            return skip_rest(report, "no `connection_ready`");
        }
    };

    // HB-5: the server answers a ping with the same nonce.
    let nonce = "readyws-check-1".to_owned();
    let mut answered = Err("no `pong` within 5 s".to_owned());
    if conn
        .send(&Frame::Ping(Ping {
            nonce: Some(nonce.clone()),
        }))
        .await
        .is_ok()
    {
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            match conn.next(until - Instant::now(), true).await {
                Incoming::Frame(Frame::Pong(pong)) => {
                    answered = if pong.nonce.as_deref() == Some(nonce.as_str()) {
                        Ok(())
                    } else {
                        Err(format!(
                            "expected `pong` with nonce {nonce:?}, got nonce {:?}",
                            pong.nonce
                        ))
                    };
                    break;
                }
                Incoming::Frame(_) => {}
                other => {
                    answered = Err(format!("expected `pong`, got {}", describe(&other)));
                    break;
                }
            }
        }
    }
    report.record(
        "HB-5",
        "the server answers `ping` with the same nonce",
        answered,
    );

    // DL-7 and DL-4: a message is acknowledged, and so is its duplicate.
    let outcome = match conn.send(&msg(1, r#"{"check":1}"#)).await {
        Ok(()) => settled(&mut conn, 1).await,
        Err(problem) => Err(problem),
    };
    report.record("DL-7", "a `msg` is acknowledged", outcome);
    let outcome = match conn.send(&msg(1, r#"{"check":1}"#)).await {
        Ok(()) => settled(&mut conn, 1).await,
        Err(problem) => Err(problem),
    };
    report.record(
        "DL-4",
        "a duplicate `msg` is acknowledged again, not treated as an error",
        outcome,
    );

    // FR-6: an oversized `msg` whose id is readable is refused with `nack` too_large, and the
    // connection carries on.
    let limit = welcome.max_frame_bytes;
    if limit > 8 << 20 {
        report.skip(
            "FR-6",
            "an oversized `msg` is refused with `nack` too_large",
            "max_frame_bytes is over 8 MiB",
        );
    } else {
        let padding = "x".repeat(limit as usize + 1);
        let text = format!(r#"{{"type":"msg","id":2,"data":"{padding}"}}"#);
        let outcome = match conn.send_text(text).await {
            Ok(()) => match next_settlement(&mut conn).await {
                Incoming::Frame(Frame::Nack(nack)) if nack.id == 2 && nack.code == "too_large" => {
                    Ok(())
                }
                other => Err(format!(
                    "expected `nack` id 2 code too_large, got {}",
                    describe(&other)
                )),
            },
            Err(problem) => Err(problem),
        };
        report.record(
            "FR-6",
            "an oversized `msg` is refused with `nack` too_large",
            outcome,
        );
    }

    // HB-1: the server pings within its heartbeat interval.
    let interval = Duration::from_millis(welcome.heartbeat_ms);
    if interval > Duration::from_secs(60) {
        report.skip(
            "HB-1",
            "the server pings every heartbeat_ms",
            "heartbeat_ms is over 60 s",
        );
    } else {
        let wait = interval + interval / 2 + Duration::from_secs(1);
        let until = Instant::now() + wait;
        let mut outcome = Err(format!("no `ping` within {} ms", wait.as_millis()));
        while Instant::now() < until {
            match conn.next(until - Instant::now(), false).await {
                Incoming::Frame(Frame::Ping(ping)) => {
                    let _ = conn
                        .send(&Frame::Pong(readyws_protocol::frame::Pong {
                            nonce: ping.nonce,
                        }))
                        .await;
                    outcome = Ok(());
                    break;
                }
                Incoming::Frame(_) => {}
                other => {
                    outcome = Err(format!("expected `ping`, got {}", describe(&other)));
                    break;
                }
            }
        }
        report.record("HB-1", "the server pings every heartbeat_ms", outcome);
    }

    // The connection drops (no close frame) with message 3 unacknowledged. Before resuming it,
    // two hellos that must not resume it: a wrong resume token [RS-3], and another user [SE-3].
    let _ = conn.send(&msg(3, r#"{"check":3}"#)).await;
    drop(conn);
    let resume_of = |token_text: &str, last_received: u64| Resume {
        session_id: ready.session_id.clone(),
        resume_token: ResumeToken::from_wire(token_text),
        last_received,
    };
    let wrong = format!("{}-wrong", ready.resume_token.expose());
    let outcome = not_resumed(&args.url, token, resume_of(&wrong, 0)).await;
    report.record(
        "RS-3",
        "a wrong `resume_token` does not resume the session",
        outcome,
    );
    match token {
        Some(token) => {
            let other = format!("{token}-other-user");
            let outcome = not_resumed(
                &args.url,
                Some(&other),
                resume_of(ready.resume_token.expose(), 0),
            )
            .await;
            report.record("SE-3", "another user cannot resume the session", outcome);
        }
        None => report.skip(
            "SE-3",
            "another user cannot resume the session",
            "needs --token (the check derives another user from it)",
        ),
    }

    // RS-3 and DL-9: the session resumes, and the message sent again is acknowledged once.
    let outcome = async {
        let (mut conn, _) = Conn::open(&args.url).await?;
        conn.welcome().await?;
        let resume = resume_of(ready.resume_token.expose(), 0);
        let again = conn.hello(token, Some(resume)).await?;
        if !again.resumed || again.session_id != ready.session_id {
            return Err(format!(
                "expected `resumed: true` on session {}, got resumed: {} on {}",
                ready.session_id, again.resumed, again.session_id
            ));
        }
        if !(2..=3).contains(&again.last_received) {
            return Err(format!(
                "expected `last_received` 2 or 3 (ids 1 and 2 were settled), got {}",
                again.last_received
            ));
        }
        conn.send(&msg(3, r#"{"check":3}"#)).await?;
        let outcome = settled(&mut conn, 3).await;
        conn.close().await;
        outcome
    }
    .await;
    report.record(
        "RS-3",
        "a dropped session resumes, and a message sent again is acknowledged",
        outcome,
    );

    // RS-4: a resume position above anything the server sent is refused with 4010.
    let outcome = async {
        let (mut conn, _) = Conn::open(&args.url).await?;
        conn.welcome().await?;
        let fresh = conn.hello(token, None).await?;
        drop(conn);
        let (mut conn, _) = Conn::open(&args.url).await?;
        conn.welcome().await?;
        let hello = Frame::Hello(Hello {
            token: token.map(str::to_owned),
            resume: Some(Resume {
                session_id: fresh.session_id.clone(),
                resume_token: ResumeToken::from_wire(fresh.resume_token.expose()),
                last_received: 1_000_000,
            }),
            client: None,
        });
        conn.send(&hello).await?;
        let (goaway, close, _) = conn.refusal(Duration::from_secs(5)).await;
        if goaway == Some(4010) || close == Some(4010) {
            Ok(())
        } else {
            Err(format!(
                "expected `goaway` 4010 for last_received 1000000 in a session that sent nothing, got goaway {goaway:?}, close {close:?}"
            ))
        }
    }
    .await;
    report.record(
        "RS-4",
        "an impossible resume position is refused with 4010",
        outcome,
    );

    // HB-4: a client silent for 2 × heartbeat_ms is dropped with `goaway` 4004.
    let silence = Duration::from_millis(welcome.heartbeat_ms.saturating_mul(2));
    if silence > Duration::from_secs(60) {
        report.skip(
            "HB-4",
            "a silent client is dropped with `goaway` 4004",
            "2 × heartbeat_ms is over 60 s",
        );
    } else {
        let outcome = async {
            let (mut conn, _) = Conn::open(&args.url).await?;
            conn.welcome().await?;
            conn.hello(token, None).await?;
            // Pings go unanswered from here on.
            let wait = silence + silence / 2 + Duration::from_secs(2);
            let until = Instant::now() + wait;
            loop {
                let left = until.saturating_duration_since(Instant::now());
                match conn.next(left, false).await {
                    Incoming::Frame(Frame::Goaway(goaway)) if goaway.code == 4004 => return Ok(()),
                    // What the server sends (pings, an echo of an earlier step's message) is no
                    // word from the client: the client's silence goes on.
                    Incoming::Frame(frame) if !matches!(frame, Frame::Goaway(_)) => {}
                    other => {
                        return Err(format!(
                            "expected `goaway` 4004 after {} ms of silence, got {}",
                            silence.as_millis(),
                            describe(&other)
                        ));
                    }
                }
            }
        }
        .await;
        report.record(
            "HB-4",
            "a silent client is dropped with `goaway` 4004",
            outcome,
        );
    }

    // HS-6 and GA-1: `msg` before `connection_ready` is a violation: `goaway` 4010, then a close
    // with the same code.
    match Conn::open(&args.url).await {
        Ok((mut conn, _)) => {
            let outcome = async {
                conn.welcome().await?;
                conn.send(&msg(1, "1")).await?;
                let (goaway, close, _) = conn.refusal(Duration::from_secs(5)).await;
                Ok::<_, String>((goaway, close))
            }
            .await;
            match outcome {
                Ok((goaway, close)) => {
                    report.record(
                        "HS-6",
                        "`msg` before `connection_ready` ends the connection with 4010",
                        if goaway == Some(4010) || close == Some(4010) {
                            Ok(())
                        } else {
                            Err(format!(
                                "expected `goaway` 4010, got goaway {goaway:?}, close {close:?}"
                            ))
                        },
                    );
                    report.record(
                        "GA-1",
                        "`goaway` precedes a close with the same code",
                        if goaway.is_some() && goaway == close {
                            Ok(())
                        } else {
                            Err(format!(
                                "expected a `goaway` and then a close with its code, got goaway {goaway:?}, close {close:?}"
                            ))
                        },
                    );
                }
                Err(problem) => {
                    report.record(
                        "HS-6",
                        "`msg` before `connection_ready` ends the connection with 4010",
                        Err(problem),
                    );
                }
            }
        }
        Err(problem) => report.record(
            "HS-6",
            "`msg` before `connection_ready` ends the connection with 4010",
            Err(problem),
        ),
    }

    // TR-3: a binary frame after readiness is a violation.
    let outcome = async {
        let (mut conn, _) = Conn::open(&args.url).await?;
        conn.welcome().await?;
        conn.hello(token, None).await?;
        conn.socket
            .send(Message::Binary(Bytes::from_static(b"\x00\x01")))
            .await
            .map_err(|e| e.to_string())?;
        let (goaway, close, _) = conn.refusal(Duration::from_secs(5)).await;
        if goaway == Some(4010) || close == Some(4010) {
            Ok(())
        } else {
            Err(format!(
                "expected 4010 for a binary frame, got goaway {goaway:?}, close {close:?}"
            ))
        }
    }
    .await;
    report.record(
        "TR-3",
        "a binary frame is a protocol violation (4010)",
        outcome,
    );

    // FR-8: invalid JSON is a violation, and the reason cites the rule broken.
    let outcome = async {
        let (mut conn, _) = Conn::open(&args.url).await?;
        conn.welcome().await?;
        conn.hello(token, None).await?;
        conn.send_text("{not json".to_owned()).await?;
        let (goaway, close, reason) = conn.refusal(Duration::from_secs(5)).await;
        if goaway != Some(4010) && close != Some(4010) {
            return Err(format!(
                "expected 4010 for invalid JSON, got goaway {goaway:?}, close {close:?}"
            ));
        }
        Ok(reason)
    }
    .await;
    let cited = outcome.as_ref().ok().map(|reason| {
        let cited = cited_rules(reason);
        if cited.iter().any(|id| rule_exists(id)) {
            Ok(())
        } else if cited.is_empty() {
            Err(format!("the reason cites no rule: {reason:?}"))
        } else {
            Err(format!(
                "the reason cites {} but the spec defines no such rule: {reason:?}",
                cited.join(", ")
            ))
        }
    });
    report.record(
        "FR-8",
        "an invalid frame ends the connection with 4010",
        outcome.map(|_| ()),
    );
    if let Some(cited) = cited {
        report.record_should(
            "FR-8",
            "the `goaway` reason cites the rule broken (SHOULD)",
            cited,
        );
    }

    // HS-7: a socket that never says hello is closed with `goaway` 4001.
    let wait = Duration::from_millis(args.hello_wait_ms);
    let outcome = async {
        let (mut conn, _) = Conn::open(&args.url).await?;
        conn.welcome().await?;
        let (goaway, close, _) = conn.refusal(wait).await;
        if goaway == Some(4001) {
            Ok(())
        } else {
            Err(format!(
                "expected `goaway` 4001 within {} ms of silence, got goaway {goaway:?}, close {close:?}",
                wait.as_millis()
            ))
        }
    }
    .await;
    report.record(
        "HS-7",
        "a socket without `hello` is closed with `goaway` 4001",
        outcome,
    );

    // CU-1 and CU-3: a message published while the user has no connection is held and delivered
    // on the next connection.
    match (&args.api_key, args.user.as_deref().or(token)) {
        (Some(key), Some(user)) => {
            let outcome = publish_and_hold(args, key, user, token).await;
            report.record(
                "CU-1",
                "a message published while the user is away is held and delivered",
                outcome,
            );
        }
        _ => report.skip(
            "CU-1",
            "a message published while the user is away is held and delivered",
            "needs --api-key, and --token or --user",
        ),
    }
    report.results
}

/// Says `hello` with `resume` and expects a new session (`resumed: false`) or a refusal.
async fn not_resumed(url: &str, token: Option<&str>, resume: Resume) -> Result<(), String> {
    let (mut conn, _) = Conn::open(url).await?;
    conn.welcome().await?;
    let session_id = resume.session_id.clone();
    let result = match conn.hello(token, Some(resume)).await {
        Ok(ready) if ready.resumed || ready.session_id == session_id => Err(format!(
            "expected a new session or a refusal, got `resumed: {}` on {}",
            ready.resumed, ready.session_id
        )),
        // A new session, or a refusal (`goaway`): either way the session was not handed over.
        Ok(_) | Err(_) => Ok(()),
    };
    // Close with 1000 ends whatever new session this opened, never the one under test.
    conn.close().await;
    result
}

/// Waits until message `id` is settled: an `ack` of `id` or above, or a `nack` of `id`. Older
/// settlements on the way (an `ack` below `id`, a `nack` of another id replayed after
/// `connection_ready` by [DL-8]) are passed over.
async fn settled(conn: &mut Conn, id: u64) -> Result<(), String> {
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let left = until.saturating_duration_since(Instant::now());
        match conn.next(left, true).await {
            Incoming::Frame(Frame::Ack(ack)) if ack.id >= id => return Ok(()),
            Incoming::Frame(Frame::Nack(nack)) if nack.id == id => return Ok(()),
            Incoming::Frame(Frame::Ack(_) | Frame::Nack(_) | Frame::Msg(_) | Frame::Pong(_)) => {}
            other => {
                return Err(format!(
                    "expected `ack` with id ≥ {id}, got {}",
                    describe(&other)
                ));
            }
        }
    }
}

/// The next `ack` or `nack` (or whatever ends the wait).
async fn next_settlement(conn: &mut Conn) -> Incoming {
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let left = until.saturating_duration_since(Instant::now());
        match conn.next(left, true).await {
            Incoming::Frame(Frame::Msg(_) | Frame::Pong(_)) => {}
            other => return other,
        }
    }
}

fn skip_rest(mut report: Report, why: &str) -> Vec<RuleResult> {
    for (rule, title) in [
        ("HB-5", "the server answers `ping` with the same nonce"),
        ("DL-7", "a `msg` is acknowledged"),
        (
            "FR-6",
            "an oversized `msg` is refused with `nack` too_large",
        ),
        (
            "RS-3",
            "a dropped session resumes, and a message sent again is acknowledged",
        ),
    ] {
        report.skip(rule, title, why);
    }
    report.results
}

async fn publish_and_hold(
    args: &CheckArgs,
    key: &str,
    user: &str,
    token: Option<&str>,
) -> Result<(), String> {
    let endpoint = match &args.publish_url {
        Some(url) => url.clone(),
        None => {
            let rest = args
                .url
                .split_once("://")
                .map(|(_, rest)| rest)
                .ok_or("the URL has no scheme")?;
            let authority = rest.split('/').next().unwrap_or(rest);
            format!("http://{authority}/api/publish")
        }
    };
    let marker = format!("readyws-check-{}", std::process::id());
    let data = format!(r#"{{"held":"{marker}"}}"#);
    let accepted = crate::publish::post(&endpoint, key, user, &data).await?;
    if !accepted.0 {
        return Err(format!("the publish API refused: {}", accepted.1));
    }
    let (mut conn, _) = Conn::open(&args.url).await?;
    conn.welcome().await?;
    let ready = conn.hello(token, None).await?;
    if ready.backlog == 0 {
        return Err("expected `backlog` ≥ 1 in `connection_ready`, got 0".to_owned());
    }
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        match conn.next(until - Instant::now(), true).await {
            Incoming::Frame(Frame::Msg(message)) => {
                let _ = conn.send(&Frame::Ack(Ack { id: message.id })).await;
                if message.data.as_json().contains(&marker) {
                    conn.close().await;
                    return Ok(());
                }
            }
            Incoming::Frame(_) => {}
            other => return Err(format!("expected the held `msg`, got {}", describe(&other))),
        }
    }
    Err("the held message did not arrive within 5 s".to_owned())
}

/// Runs the checks and prints the report; `Ok(true)` when nothing failed.
pub(crate) async fn run(args: CheckArgs) -> Result<bool, String> {
    let results = check(&args).await;
    let failed = results.iter().filter(|r| r.status == Status::Fail).count();
    let warned = results.iter().filter(|r| r.status == Status::Warn).count();
    if args.json {
        let json = serde_json::to_string_pretty(&results).map_err(|e| e.to_string())?;
        println!("{json}");
    } else {
        println!("readyws check {}", args.url);
        for result in &results {
            let status = match result.status {
                Status::Pass => "PASS",
                Status::Fail => "FAIL",
                Status::Warn => "WARN",
                Status::Skip => "SKIP",
            };
            println!("{status}  {:<6} {}", result.rule, result.title);
            if let Some(detail) = &result.detail {
                println!("            {detail}");
            }
        }
        let passed = results.iter().filter(|r| r.status == Status::Pass).count();
        let skipped = results.len() - passed - failed - warned;
        println!("{passed} passed, {failed} failed, {warned} warned (SHOULD), {skipped} skipped");
    }
    Ok(failed == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule_table_is_the_specs() {
        let spec =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/PROTOCOL.md"))
                .expect("the spec");
        let mut highest: std::collections::BTreeMap<String, u32> = Default::default();
        for defined in spec.split("**[").skip(1) {
            let Some((id, _)) = defined.split_once("]**") else {
                continue;
            };
            let Some((prefix, number)) = id.split_once('-') else {
                continue;
            };
            let Ok(number) = number.parse::<u32>() else {
                continue;
            };
            let entry = highest.entry(prefix.to_owned()).or_default();
            *entry = (*entry).max(number);
        }
        let table: std::collections::BTreeMap<String, u32> = SPEC_RULES
            .iter()
            .map(|(prefix, number)| ((*prefix).to_owned(), *number))
            .collect();
        assert_eq!(table, highest);
    }

    #[test]
    fn citations_are_read_with_or_without_brackets_and_must_exist() {
        assert_eq!(cited_rules("[FR-1] frame is not valid JSON"), ["FR-1"]);
        assert_eq!(cited_rules("FR-1: frame is not valid JSON"), ["FR-1"]);
        assert_eq!(cited_rules("see HS-6 and DL-12."), ["HS-6", "DL-12"]);
        assert!(cited_rules("XFR-1 or FR-1a or utf-8").is_empty());
        assert!(rule_exists("FR-10"));
        assert!(!rule_exists("XX-99"));
        assert!(rule_exists("FR-11"));
        assert!(!rule_exists("FR-12"));
        assert!(!rule_exists("FR-0"));
    }
}
