//! `readyws check URL`: checks a server that claims readyws v1 against `docs/PROTOCOL.md`.
//!
//! It speaks the protocol frame by frame over a raw WebSocket (not through the readyws client,
//! which would hide a server's mistakes by recovering from them), provokes what it can, and
//! reports each rule as PASS, FAIL (a MUST broken, with what was expected and what came back),
//! WARN (a SHOULD not followed; the run still passes) or SKIP (with why). A reason "cites a rule"
//! when it names one the spec defines, bracketed or not. Frames are judged with the protocol crate's decoder, so "valid" means exactly what the
//! spec's frame tables say.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use readyws_protocol::codec::{decode, encode};
use readyws_protocol::frame::{
    Ack, ClientInfo, ConnectionReady, Hello, Msg, PRE_WELCOME_MAX_FRAME_BYTES, Ping, Resume,
    Welcome,
};
use readyws_protocol::{Data, Frame, ResumeToken, Role, SUBPROTOCOL, ServerPhase};
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
    /// The server's publish API key: with it, custody (CU-1, CU-4, CU-5) and the publish API
    /// (PB-1, PB-2, PB-4) are checked too. The mailbox check fills the mailbox of the user
    /// `USER-readyws-check-mailbox` to its bound; those messages expire by the server's TTL.
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

/// Whether `id` (such as `FR-8`) is a rule of the spec.
pub(crate) fn rule_exists(id: &str) -> bool {
    readyws_protocol::rules::rule_exists(id)
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
        tag: &str,
    ) -> Result<ConnectionReady, String> {
        let hello = Frame::Hello(Hello {
            token: token.map(str::to_owned),
            resume,
            client: Some(client_info(tag)),
        });
        self.send(&hello).await?;
        match self.next(Duration::from_secs(30), true).await {
            Incoming::Frame(Frame::ConnectionReady(ready)) => Ok(ready),
            Incoming::Frame(Frame::Goaway(goaway))
                if (4100..4200).contains(&goaway.code) && token.is_none() =>
            {
                Err(format!(
                    "expected `connection_ready`, got `goaway` {} ({:?}): the server wants credentials; pass --token",
                    goaway.code, goaway.reason
                ))
            }
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
                Incoming::Closed(close) => {
                    // Without a `goaway`, the close frame's reason is the one to read.
                    if goaway.is_none() {
                        if let Some((_, text)) = &close {
                            reason.clone_from(text);
                        }
                    }
                    return (goaway, close.map(|(code, _)| code), reason);
                }
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

/// `hello.client` for the check named `tag`, carried as build metadata of the version so that
/// a server's log tells the checks apart.
fn client_info(tag: &str) -> ClientInfo {
    ClientInfo {
        sdk: "readyws-check".to_owned(),
        version: format!("{}+{tag}", env!("CARGO_PKG_VERSION")),
        attempt: 1,
    }
}

fn describe(incoming: &Incoming) -> String {
    match incoming {
        Incoming::Frame(Frame::Goaway(goaway)) => {
            format!("`goaway` {} ({:?})", goaway.code, goaway.reason)
        }
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

/// How a check ended, short of passing.
enum Unmet {
    /// The rule is not followed: FAIL for a MUST, WARN for a SHOULD.
    Broken(String),
    /// The rule could not be checked, and why.
    Skipped(String),
}

impl From<String> for Unmet {
    fn from(problem: String) -> Self {
        Unmet::Broken(problem)
    }
}

type Outcome = Result<(), Unmet>;

/// Whether breaking a rule fails the run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Level {
    Must,
    Should,
}

/// What every check may read: the arguments and the server's first `welcome`.
struct Ctx {
    url: String,
    token: Option<String>,
    api_key: Option<String>,
    /// The user the token authenticates, for publishing.
    user: Option<String>,
    publish_url: String,
    hello_wait: Duration,
    welcome: Welcome,
}

impl Ctx {
    fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// A connection made ready; `tag` names the check in `hello.client.version`, so that a log
    /// (or a test's faulty proxy) can tell the checks apart.
    async fn ready(&self, tag: &str) -> Result<(Conn, ConnectionReady), String> {
        let (mut conn, _) = Conn::open(&self.url).await?;
        conn.welcome().await?;
        let ready = conn.hello(self.token(), None, tag).await?;
        Ok((conn, ready))
    }

    /// A new connection asking to resume `ready`'s session with `token` and `last_received`.
    async fn resume(
        &self,
        tag: &str,
        ready: &ConnectionReady,
        token: &str,
        last_received: u64,
    ) -> Result<(Conn, Result<ConnectionReady, String>), String> {
        self.resume_as(tag, self.token(), ready, token, last_received)
            .await
    }

    async fn resume_as(
        &self,
        tag: &str,
        credentials: Option<&str>,
        ready: &ConnectionReady,
        token: &str,
        last_received: u64,
    ) -> Result<(Conn, Result<ConnectionReady, String>), String> {
        let (mut conn, _) = Conn::open(&self.url).await?;
        conn.welcome().await?;
        let resume = Resume {
            session_id: ready.session_id.clone(),
            resume_token: ResumeToken::from_wire(token),
            last_received,
        };
        let answer = conn.hello(credentials, Some(resume), tag).await;
        Ok((conn, answer))
    }

    fn publishing(&self) -> Result<(&str, &str), Unmet> {
        match (self.api_key.as_deref(), self.user.as_deref()) {
            (Some(key), Some(user)) => Ok((key, user)),
            _ => Err(Unmet::Skipped(
                "needs --api-key, and --token or --user".to_owned(),
            )),
        }
    }
}

type Running<'a> = Pin<Box<dyn Future<Output = Outcome> + 'a>>;

/// One rule the checker judges: its id, what it says, how binding it is, and the steps that
/// provoke it. Each check opens its own connections, so that one server fault shows in one row.
struct RuleCheck {
    rule: &'static str,
    title: &'static str,
    level: Level,
    /// The check mostly waits for one of the server's timers (a heartbeat, the hello timeout):
    /// it runs beside the others rather than after them, so that a server with its default
    /// timers is checked in about the longest wait, not their sum.
    waits: bool,
    run: for<'a> fn(&'a Ctx) -> Running<'a>,
}

/// Makes a table entry from an `async fn(&Ctx) -> Outcome`.
macro_rules! rule {
    (waits $rule:literal, $level:ident, $title:literal, $check:ident) => {
        RuleCheck {
            waits: true,
            ..rule!($rule, $level, $title, $check)
        }
    };
    ($rule:literal, $level:ident, $title:literal, $check:ident) => {
        RuleCheck {
            rule: $rule,
            title: $title,
            level: Level::$level,
            waits: false,
            run: {
                fn run(ctx: &Ctx) -> Running<'_> {
                    Box::pin($check(ctx))
                }
                run
            },
        }
    };
}

/// The rules checked once the server has made one connection ready, in the order they run.
const CHECKS: &[RuleCheck] = &[
    rule!(
        "HB-5",
        Must,
        "the server answers `ping` with the same nonce",
        ping_is_answered
    ),
    rule!("DL-7", Must, "a `msg` is acknowledged", msg_is_acknowledged),
    rule!(
        "DL-4",
        Must,
        "a duplicate `msg` is acknowledged again, not treated as an error",
        duplicate_is_acknowledged
    ),
    rule!(
        "DL-3",
        Must,
        "a `msg` past a gap in ids is a protocol violation (4010)",
        gap_is_a_violation
    ),
    rule!(
        "DL-5",
        Must,
        "an `ack` above anything sent is a protocol violation (4010)",
        ack_out_of_range_is_a_violation
    ),
    rule!(
        "FR-3",
        Must,
        "a frame of an unknown type after `hello` is ignored",
        unknown_type_is_ignored
    ),
    rule!(
        "FR-4",
        Must,
        "a frame of the other direction (`welcome` from a client) is a violation (4010)",
        wrong_direction_is_a_violation
    ),
    rule!(
        "FR-6",
        Must,
        "an oversized `msg` is refused with `nack` too_large",
        oversized_msg_is_refused
    ),
    rule!(
        "TR-3",
        Must,
        "a binary frame is a protocol violation (4010)",
        binary_is_a_violation
    ),
    rule!(
        "FR-8",
        Must,
        "an invalid frame ends the connection with 4010",
        invalid_frame_is_a_violation
    ),
    rule!(
        "FR-8",
        Should,
        "the `goaway` reason cites the rule broken (SHOULD)",
        reason_cites_a_rule
    ),
    rule!(
        "HS-3",
        Must,
        "a second `hello` is a protocol violation (4010)",
        second_hello_is_a_violation
    ),
    rule!(
        "HS-6",
        Must,
        "`msg` before `connection_ready` ends the connection with 4010, not a `nack`",
        early_msg_is_a_violation
    ),
    rule!(
        "GA-1",
        Must,
        "`goaway` precedes a close with the same code",
        goaway_precedes_close
    ),
    rule!(
        waits "HB-1",
        Must,
        "the server pings every heartbeat_ms",
        server_pings
    ),
    rule!(
        waits "HB-4",
        Must,
        "a silent client is dropped with `goaway` 4004",
        silent_client_is_dropped
    ),
    rule!(
        waits "HS-7",
        Must,
        "a socket without `hello` is closed with `goaway` 4001",
        hello_timeout
    ),
    rule!(
        "RS-3",
        Must,
        "a wrong `resume_token` does not resume the session",
        wrong_token_does_not_resume
    ),
    rule!(
        "SE-3",
        Must,
        "another user cannot resume the session",
        other_user_does_not_resume
    ),
    rule!(
        "RS-3",
        Must,
        "a dropped session resumes, and a message sent again is acknowledged",
        dropped_session_resumes
    ),
    rule!(
        "RS-4",
        Must,
        "an impossible resume position is refused with 4010",
        impossible_position_is_refused
    ),
    rule!(
        "RS-7",
        Must,
        "a resume of a session still carried elsewhere takes it over: `goaway` 4203 on the old connection",
        takeover
    ),
    rule!(
        "RS-8",
        Must,
        "a resume token older than the one the client last presented resumes nothing",
        older_tokens_resume_nothing
    ),
    rule!(
        "RS-8",
        Should,
        "the token presented still resumes until the client uses the new one (SHOULD)",
        presented_token_still_resumes
    ),
    rule!(
        "DL-8",
        Must,
        "after a resume the server sends its `nack` again, then `ack {last_received}`",
        refusals_are_replayed
    ),
    rule!(
        "CU-1",
        Must,
        "a message published while the user is away is held and delivered",
        held_message_is_delivered
    ),
    rule!(
        "CU-4",
        Must,
        "a message for a user reaches every live session of that user",
        every_session_gets_a_copy
    ),
    rule!(
        "PB-1",
        Must,
        "the publish API refuses a wrong key with 401 `unauthorized`",
        wrong_key_is_refused
    ),
    rule!(
        "PB-2",
        Must,
        "the publish API refuses a body without `user` and `data` with 400 `bad_body`",
        bad_body_is_refused
    ),
    rule!(
        "PB-4",
        Must,
        "an accepted publish answers 202 with `delivered`, `held` and `dropped_oldest`",
        accepted_publish_answers
    ),
    rule!(
        "CU-5",
        Must,
        "a user's held messages are bounded, and the publisher is told past the bound",
        mailbox_is_bounded
    ),
];

/// Collects results as the checks run.
#[derive(Default)]
struct Report {
    results: Vec<RuleResult>,
}

impl Report {
    fn push(
        &mut self,
        rule: &'static str,
        title: &'static str,
        status: Status,
        detail: Option<String>,
    ) {
        self.results.push(RuleResult {
            rule,
            title,
            status,
            detail,
        });
    }

    /// A MUST: not following it is a FAIL.
    fn record(&mut self, rule: &'static str, title: &'static str, outcome: Result<(), String>) {
        self.judge(rule, title, Level::Must, outcome.map_err(Unmet::Broken));
    }

    fn judge(&mut self, rule: &'static str, title: &'static str, level: Level, outcome: Outcome) {
        match outcome {
            Ok(()) => self.push(rule, title, Status::Pass, None),
            Err(Unmet::Broken(detail)) => {
                let status = match level {
                    Level::Must => Status::Fail,
                    Level::Should => Status::Warn,
                };
                self.push(rule, title, status, Some(detail));
            }
            Err(Unmet::Skipped(why)) => self.push(rule, title, Status::Skip, Some(why)),
        }
    }

    fn skip(&mut self, rule: &'static str, title: &'static str, why: &str) {
        self.push(rule, title, Status::Skip, Some(why.to_owned()));
    }

    fn skip_table(&mut self, why: &str) {
        for check in CHECKS {
            self.skip(check.rule, check.title, why);
        }
    }
}

const SG_2: &str =
    "a starting server holds the connection, answers `ping`, and makes it ready once started";
const SG_3: &str =
    "a server that gives up on its start-up sends `goaway` 4002 with `retry_after_ms`";

/// The publish endpoint next to a WebSocket URL.
fn publish_endpoint(args: &CheckArgs) -> String {
    if let Some(url) = &args.publish_url {
        return url.clone();
    }
    let rest = args
        .url
        .split_once("://")
        .map_or(args.url.as_str(), |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap_or(rest);
    format!("http://{authority}/api/publish")
}

/// Runs every check against the server at `args.url`.
pub(crate) async fn check(args: &CheckArgs) -> Vec<RuleResult> {
    let mut report = Report::default();
    let token = args.token.as_deref();

    // SG-2 and SG-3 first: a server started with a start-up delay is starting only now.
    startup_gate(args, &mut report).await;

    // TR-1, HS-1, the welcome table, HS-4: one clean handshake, which every later check needs.
    let (mut conn, selected) = match Conn::open(&args.url).await {
        Ok(opened) => opened,
        Err(problem) => {
            report.record(
                "TR-1",
                "the server selects the subprotocol readyws.v1",
                Err(problem),
            );
            report.skip_table("the WebSocket did not open");
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
            report.skip_table("no valid `welcome`");
            return report.results;
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
            report.skip_table("no `welcome`");
            return report.results;
        }
    };
    conn.limit = usize::try_from(welcome.max_frame_bytes).unwrap_or(usize::MAX);
    let title = "`hello` is answered with a valid `connection_ready`";
    match conn.hello(token, None, "HS-4").await {
        Ok(ready) if ready.resumed => {
            report.record(
                "HS-4",
                title,
                Err("a hello without resume got `resumed: true`".to_owned()),
            );
            report.skip_table("no valid `connection_ready`");
            return report.results;
        }
        Ok(_) => report.record("HS-4", title, Ok(())),
        Err(problem) => {
            report.record("HS-4", title, Err(problem));
            report.skip_table("no `connection_ready`");
            return report.results;
        }
    }
    conn.close().await;

    let ctx = Ctx {
        url: args.url.clone(),
        token: args.token.clone(),
        api_key: args.api_key.clone(),
        user: args.user.clone().or_else(|| args.token.clone()),
        publish_url: publish_endpoint(args),
        hello_wait: Duration::from_millis(args.hello_wait_ms),
        welcome,
    };
    // The checks that wait on the server's timers run beside the others, which run one after
    // another; the report keeps the table's order.
    let waiting = futures_util::future::join_all(
        CHECKS
            .iter()
            .filter(|check| check.waits)
            .map(|check| (check.run)(&ctx)),
    );
    let one_by_one = async {
        let mut outcomes = Vec::new();
        for check in CHECKS.iter().filter(|check| !check.waits) {
            outcomes.push((check.run)(&ctx).await);
        }
        outcomes
    };
    let (waited, sequential) = tokio::join!(waiting, one_by_one);
    let (mut waited, mut sequential) = (waited.into_iter(), sequential.into_iter());
    for check in CHECKS {
        let next = if check.waits {
            waited.next()
        } else {
            sequential.next()
        };
        if let Some(outcome) = next {
            report.judge(check.rule, check.title, check.level, outcome);
        }
    }
    report.results
}

/// [SG-2] and [SG-3], when the first socket finds the server starting.
async fn startup_gate(args: &CheckArgs, report: &mut Report) {
    let not_starting = "the server was not starting (start it with a start-up delay, e.g. `readyws serve --startup-delay-ms 3000`)";
    let Ok((mut conn, _)) = Conn::open(&args.url).await else {
        report.skip("SG-2", SG_2, "the WebSocket did not open");
        report.skip("SG-3", SG_3, "the WebSocket did not open");
        return;
    };
    let starting = match conn.welcome().await {
        Ok(welcome) => welcome.phase == ServerPhase::Starting,
        Err(_) => false,
    };
    if !starting {
        report.skip("SG-2", SG_2, not_starting);
        report.skip("SG-3", SG_3, not_starting);
        conn.close().await;
        return;
    }
    let hello = Frame::Hello(Hello {
        token: args.token.clone(),
        resume: None,
        client: Some(client_info("SG-2")),
    });
    let nonce = "readyws-check-starting".to_owned();
    let sent = async {
        conn.send(&hello).await?;
        conn.send(&Frame::Ping(Ping {
            nonce: Some(nonce.clone()),
        }))
        .await
    }
    .await;
    if let Err(problem) = sent {
        report.record("SG-2", SG_2, Err(problem));
        report.skip("SG-3", SG_3, "the starting connection failed");
        return;
    }
    let mut answered = false;
    let until = Instant::now() + Duration::from_secs(120);
    loop {
        let left = until.saturating_duration_since(Instant::now());
        match conn.next(left, true).await {
            Incoming::Frame(Frame::Pong(pong)) => answered |= pong.nonce.as_deref() == Some(&nonce),
            Incoming::Frame(Frame::ConnectionReady(_)) => {
                report.record(
                    "SG-2",
                    SG_2,
                    if answered {
                        Ok(())
                    } else {
                        Err("the `ping` sent while starting got no `pong`".to_owned())
                    },
                );
                report.skip(
                    "SG-3",
                    SG_3,
                    "start-up completed before the server gave up (give it a start-up wait shorter than its delay to check this)",
                );
                conn.close().await;
                return;
            }
            Incoming::Frame(Frame::Goaway(goaway)) if goaway.code == 4002 => {
                report.skip("SG-2", SG_2, "the server gave up on its start-up ([SG-3])");
                let retry = goaway.retry_after_ms;
                report.record(
                    "SG-3",
                    SG_3,
                    match retry {
                        Some(_) => Ok(()),
                        None => Err("`goaway` 4002 without `retry_after_ms`".to_owned()),
                    },
                );
                wait_until_started(args, Duration::from_millis(retry.unwrap_or(1000))).await;
                return;
            }
            Incoming::Frame(_) => {}
            other => {
                report.record(
                    "SG-2",
                    SG_2,
                    Err(format!(
                        "expected `connection_ready` or `goaway` 4002 while starting, got {}",
                        describe(&other)
                    )),
                );
                report.skip("SG-3", SG_3, "the starting connection failed");
                return;
            }
        }
    }
}

/// After a `goaway` 4002: waits `retry_after`, then until a `welcome` says "accepting" (at most
/// two minutes), so that the other checks meet a started server.
async fn wait_until_started(args: &CheckArgs, retry_after: Duration) {
    tokio::time::sleep(retry_after).await;
    let until = Instant::now() + Duration::from_secs(120);
    while Instant::now() < until {
        if let Ok((mut conn, _)) = Conn::open(&args.url).await {
            let accepting = conn
                .welcome()
                .await
                .is_ok_and(|welcome| welcome.phase == ServerPhase::Accepting);
            conn.close().await;
            if accepting {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Expects the server to end `conn` with `code`, by `goaway` or by the close frame.
async fn violation(mut conn: Conn, code: u16, what: &str) -> Outcome {
    let (goaway, close, _) = conn.refusal(Duration::from_secs(5)).await;
    if goaway == Some(code) || close == Some(code) {
        Ok(())
    } else {
        Err(Unmet::Broken(format!(
            "expected {code} for {what}, got goaway {goaway:?}, close {close:?}"
        )))
    }
}

async fn ping_is_answered(ctx: &Ctx) -> Outcome {
    let (mut conn, _) = ctx.ready("HB-5").await?;
    let nonce = "readyws-check-1".to_owned();
    conn.send(&Frame::Ping(Ping {
        nonce: Some(nonce.clone()),
    }))
    .await?;
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let left = until.saturating_duration_since(Instant::now());
        match conn.next(left, true).await {
            Incoming::Frame(Frame::Pong(pong)) => {
                conn.close().await;
                return if pong.nonce.as_deref() == Some(nonce.as_str()) {
                    Ok(())
                } else {
                    Err(Unmet::Broken(format!(
                        "expected `pong` with nonce {nonce:?}, got nonce {:?}",
                        pong.nonce
                    )))
                };
            }
            Incoming::Frame(_) => {}
            other => {
                return Err(Unmet::Broken(format!(
                    "expected `pong` within 5 s, got {}",
                    describe(&other)
                )));
            }
        }
    }
}

async fn msg_is_acknowledged(ctx: &Ctx) -> Outcome {
    let (mut conn, _) = ctx.ready("DL-7").await?;
    conn.send(&msg(1, r#"{"check":"DL-7"}"#)).await?;
    settled(&mut conn, 1).await?;
    conn.close().await;
    Ok(())
}

async fn duplicate_is_acknowledged(ctx: &Ctx) -> Outcome {
    let (mut conn, _) = ctx.ready("DL-4").await?;
    conn.send(&msg(1, r#"{"check":"DL-4"}"#)).await?;
    settled(&mut conn, 1).await?;
    conn.send(&msg(1, r#"{"check":"DL-4"}"#)).await?;
    settled(&mut conn, 1)
        .await
        .map_err(|problem| format!("after the duplicate: {problem}"))?;
    conn.close().await;
    Ok(())
}

async fn gap_is_a_violation(ctx: &Ctx) -> Outcome {
    let (mut conn, _) = ctx.ready("DL-3").await?;
    conn.send(&msg(2, r#"{"check":"DL-3"}"#)).await?;
    violation(conn, 4010, "`msg` id 2 while id 1 was expected").await
}

async fn ack_out_of_range_is_a_violation(ctx: &Ctx) -> Outcome {
    let (mut conn, _) = ctx.ready("DL-5").await?;
    conn.send(&Frame::Ack(Ack { id: 1_000_000 })).await?;
    violation(conn, 4010, "`ack` id 1000000").await
}

async fn unknown_type_is_ignored(ctx: &Ctx) -> Outcome {
    let (mut conn, _) = ctx.ready("FR-3").await?;
    conn.send_text(r#"{"type":"x-readyws-check-later","check":"FR-3"}"#.to_owned())
        .await?;
    conn.send(&Frame::Ping(Ping {
        nonce: Some("FR-3".to_owned()),
    }))
    .await?;
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let left = until.saturating_duration_since(Instant::now());
        match conn.next(left, true).await {
            Incoming::Frame(Frame::Pong(_)) => {
                conn.close().await;
                return Ok(());
            }
            Incoming::Frame(frame) if !matches!(frame, Frame::Goaway(_)) => {}
            other => {
                return Err(Unmet::Broken(format!(
                    "expected the connection to go on (a `pong`), got {}",
                    describe(&other)
                )));
            }
        }
    }
}

async fn wrong_direction_is_a_violation(ctx: &Ctx) -> Outcome {
    let (mut conn, _) = ctx.ready("FR-4").await?;
    let welcome = encode(&Frame::Welcome(ctx.welcome.clone()));
    conn.send_text(welcome).await?;
    violation(conn, 4010, "a `welcome` sent by the client").await
}

async fn oversized_msg_is_refused(ctx: &Ctx) -> Outcome {
    let limit = ctx.welcome.max_frame_bytes;
    if limit > 8 << 20 {
        return Err(Unmet::Skipped("max_frame_bytes is over 8 MiB".to_owned()));
    }
    let (mut conn, _) = ctx.ready("FR-6").await?;
    conn.send(&msg(1, r#"{"check":"FR-6"}"#)).await?;
    settled(&mut conn, 1).await?;
    let padding = "x".repeat(limit as usize + 1);
    conn.send_text(format!(r#"{{"type":"msg","id":2,"data":"{padding}"}}"#))
        .await?;
    match next_settlement(&mut conn).await {
        Incoming::Frame(Frame::Nack(nack)) if nack.id == 2 && nack.code == "too_large" => {
            conn.close().await;
            Ok(())
        }
        other => Err(Unmet::Broken(format!(
            "expected `nack` id 2 code too_large, got {}",
            describe_settlement(&other)
        ))),
    }
}

async fn binary_is_a_violation(ctx: &Ctx) -> Outcome {
    let (mut conn, _) = ctx.ready("TR-3").await?;
    conn.socket
        .send(Message::Binary(Bytes::from_static(b"\x00\x01")))
        .await
        .map_err(|e| e.to_string())?;
    violation(conn, 4010, "a binary frame").await
}

/// Sends a frame that is not JSON on a ready connection; returns the refusal.
async fn invalid_json_refusal(ctx: &Ctx, tag: &str) -> Result<String, Unmet> {
    let (mut conn, _) = ctx.ready(tag).await?;
    conn.send_text("{not json".to_owned()).await?;
    let (goaway, close, reason) = conn.refusal(Duration::from_secs(5)).await;
    if goaway != Some(4010) && close != Some(4010) {
        return Err(Unmet::Broken(format!(
            "expected 4010 for invalid JSON, got goaway {goaway:?}, close {close:?}"
        )));
    }
    Ok(reason)
}

async fn invalid_frame_is_a_violation(ctx: &Ctx) -> Outcome {
    invalid_json_refusal(ctx, "FR-8").await.map(|_| ())
}

async fn reason_cites_a_rule(ctx: &Ctx) -> Outcome {
    let reason = invalid_json_refusal(ctx, "FR-8-reason")
        .await
        .map_err(|unmet| match unmet {
            Unmet::Broken(_) => Unmet::Skipped("no refusal to read (see FR-8 above)".to_owned()),
            skipped => skipped,
        })?;
    let cited = cited_rules(&reason);
    if cited.iter().any(|id| rule_exists(id)) {
        Ok(())
    } else if cited.is_empty() {
        Err(Unmet::Broken(format!(
            "the reason cites no rule: {reason:?}"
        )))
    } else {
        Err(Unmet::Broken(format!(
            "the reason cites {} but the spec defines no such rule: {reason:?}",
            cited.join(", ")
        )))
    }
}

async fn second_hello_is_a_violation(ctx: &Ctx) -> Outcome {
    let (mut conn, _) = ctx.ready("HS-3").await?;
    let hello = Frame::Hello(Hello {
        token: ctx.token.clone(),
        resume: None,
        client: Some(client_info("HS-3")),
    });
    conn.send(&hello).await?;
    violation(conn, 4010, "a second `hello`").await
}

/// Sends `msg` before `hello`; returns the `goaway` and close codes, or the `nack` that came.
async fn early_msg(ctx: &Ctx, tag: &str) -> Result<(Option<u16>, Option<u16>), Unmet> {
    let (mut conn, _) = Conn::open(&ctx.url).await?;
    conn.welcome().await?;
    conn.send(&msg(1, &format!(r#"{{"check":"{tag}"}}"#)))
        .await?;
    let mut goaway = None;
    loop {
        match conn.next(Duration::from_secs(5), true).await {
            Incoming::Frame(Frame::Nack(_)) => {
                return Err(Unmet::Broken(
                    "the early `msg` got a `nack`: the client would drop a message it may resend"
                        .to_owned(),
                ));
            }
            Incoming::Frame(Frame::Goaway(frame)) => goaway = Some(frame.code),
            Incoming::Frame(_) | Incoming::Invalid(_) => {}
            Incoming::Closed(close) => return Ok((goaway, close.map(|(code, _)| code))),
            Incoming::Silence => return Ok((goaway, None)),
        }
    }
}

async fn early_msg_is_a_violation(ctx: &Ctx) -> Outcome {
    let (goaway, close) = early_msg(ctx, "HS-6").await?;
    if goaway == Some(4010) || close == Some(4010) {
        Ok(())
    } else {
        Err(Unmet::Broken(format!(
            "expected `goaway` 4010, got goaway {goaway:?}, close {close:?}"
        )))
    }
}

async fn goaway_precedes_close(ctx: &Ctx) -> Outcome {
    let (goaway, close) = early_msg(ctx, "GA-1").await?;
    if goaway.is_some() && goaway == close {
        Ok(())
    } else {
        Err(Unmet::Broken(format!(
            "expected a `goaway` and then a close with its code, got goaway {goaway:?}, close {close:?}"
        )))
    }
}

async fn server_pings(ctx: &Ctx) -> Outcome {
    let interval = Duration::from_millis(ctx.welcome.heartbeat_ms);
    if interval > Duration::from_secs(60) {
        return Err(Unmet::Skipped("heartbeat_ms is over 60 s".to_owned()));
    }
    let (mut conn, _) = ctx.ready("HB-1").await?;
    let wait = interval + interval / 2 + Duration::from_secs(1);
    let until = Instant::now() + wait;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        match conn.next(left, false).await {
            Incoming::Frame(Frame::Ping(_)) => {
                conn.close().await;
                return Ok(());
            }
            Incoming::Frame(_) => {}
            Incoming::Silence => {
                return Err(Unmet::Broken(format!(
                    "no `ping` within {} ms",
                    wait.as_millis()
                )));
            }
            other => {
                return Err(Unmet::Broken(format!(
                    "expected `ping`, got {}",
                    describe(&other)
                )));
            }
        }
    }
}

async fn silent_client_is_dropped(ctx: &Ctx) -> Outcome {
    let silence = Duration::from_millis(ctx.welcome.heartbeat_ms.saturating_mul(2));
    if silence > Duration::from_secs(60) {
        return Err(Unmet::Skipped("2 × heartbeat_ms is over 60 s".to_owned()));
    }
    let (mut conn, _) = ctx.ready("HB-4").await?;
    // Pings go unanswered from here on.
    let until = Instant::now() + silence + silence / 2 + Duration::from_secs(2);
    loop {
        let left = until.saturating_duration_since(Instant::now());
        match conn.next(left, false).await {
            Incoming::Frame(Frame::Goaway(goaway)) if goaway.code == 4004 => return Ok(()),
            // What the server sends (pings, an echo of an earlier message) is no word from the
            // client: the client's silence goes on.
            Incoming::Frame(frame) if !matches!(frame, Frame::Goaway(_)) => {}
            other => {
                return Err(Unmet::Broken(format!(
                    "expected `goaway` 4004 after {} ms of silence, got {}",
                    silence.as_millis(),
                    describe(&other)
                )));
            }
        }
    }
}

async fn hello_timeout(ctx: &Ctx) -> Outcome {
    let (mut conn, _) = Conn::open(&ctx.url).await?;
    conn.welcome().await?;
    let (goaway, close, _) = conn.refusal(ctx.hello_wait).await;
    if goaway == Some(4001) {
        Ok(())
    } else {
        Err(Unmet::Broken(format!(
            "expected `goaway` 4001 within {} ms of silence, got goaway {goaway:?}, close {close:?}",
            ctx.hello_wait.as_millis()
        )))
    }
}

/// Expects a `hello` with `resume` to get a new session or a refusal, never the session.
async fn not_resumed(answer: (Conn, Result<ConnectionReady, String>), session_id: &str) -> Outcome {
    let (conn, answer) = answer;
    let result = match answer {
        Ok(ready) if ready.resumed || ready.session_id == session_id => {
            Err(Unmet::Broken(format!(
                "expected a new session or a refusal, got `resumed: {}` on {}",
                ready.resumed, ready.session_id
            )))
        }
        // A new session, or a refusal (`goaway`): either way the session was not handed over.
        Ok(_) | Err(_) => Ok(()),
    };
    // Close with 1000 ends whatever new session this opened, never the one under test.
    conn.close().await;
    result
}

async fn wrong_token_does_not_resume(ctx: &Ctx) -> Outcome {
    let (conn, ready) = ctx.ready("RS-3-setup").await?;
    drop(conn);
    let wrong = format!("{}-wrong", ready.resume_token.expose());
    let answer = ctx.resume("RS-3-wrong", &ready, &wrong, 0).await?;
    not_resumed(answer, &ready.session_id).await
}

async fn other_user_does_not_resume(ctx: &Ctx) -> Outcome {
    let Some(token) = ctx.token() else {
        return Err(Unmet::Skipped(
            "needs --token (the check derives another user from it)".to_owned(),
        ));
    };
    let (conn, ready) = ctx.ready("SE-3-setup").await?;
    drop(conn);
    let other = format!("{token}-other-user");
    let answer = ctx
        .resume_as("SE-3", Some(&other), &ready, ready.resume_token.expose(), 0)
        .await?;
    not_resumed(answer, &ready.session_id).await
}

/// The session resumed: `resumed: true` on the same id.
fn resumed_on(
    answer: Result<ConnectionReady, String>,
    session_id: &str,
) -> Result<ConnectionReady, Unmet> {
    let again = answer?;
    if !again.resumed || again.session_id != session_id {
        return Err(Unmet::Broken(format!(
            "expected `resumed: true` on session {session_id}, got resumed: {} on {}",
            again.resumed, again.session_id
        )));
    }
    Ok(again)
}

async fn dropped_session_resumes(ctx: &Ctx) -> Outcome {
    let (mut conn, ready) = ctx.ready("RS-3-setup").await?;
    conn.send(&msg(1, r#"{"check":"RS-3"}"#)).await?;
    settled(&mut conn, 1).await?;
    // The connection drops (no close frame) with message 2 maybe unacknowledged.
    let _ = conn.send(&msg(2, r#"{"check":"RS-3"}"#)).await;
    drop(conn);
    let (mut conn, answer) = ctx
        .resume("RS-3-resume", &ready, ready.resume_token.expose(), 0)
        .await?;
    let again = resumed_on(answer, &ready.session_id)?;
    if !(1..=2).contains(&again.last_received) {
        return Err(Unmet::Broken(format!(
            "expected `last_received` 1 or 2 (id 1 was acknowledged), got {}",
            again.last_received
        )));
    }
    conn.send(&msg(2, r#"{"check":"RS-3"}"#)).await?;
    settled(&mut conn, 2).await?;
    conn.close().await;
    Ok(())
}

async fn impossible_position_is_refused(ctx: &Ctx) -> Outcome {
    let (conn, fresh) = ctx.ready("RS-4-setup").await?;
    drop(conn);
    let (conn, answer) = ctx
        .resume("RS-4", &fresh, fresh.resume_token.expose(), 1_000_000)
        .await?;
    match answer {
        Ok(ready) => Err(Unmet::Broken(format!(
            "expected `goaway` 4010 for last_received 1000000 in a session that sent nothing, got `connection_ready` (resumed: {})",
            ready.resumed
        ))),
        Err(problem) if problem.contains("4010") => {
            drop(conn);
            Ok(())
        }
        Err(problem) => Err(Unmet::Broken(format!(
            "expected `goaway` 4010 for last_received 1000000: {problem}"
        ))),
    }
}

async fn takeover(ctx: &Ctx) -> Outcome {
    let (mut old, ready) = ctx.ready("RS-7-old").await?;
    let (new, answer) = ctx
        .resume("RS-7-new", &ready, ready.resume_token.expose(), 0)
        .await?;
    resumed_on(answer, &ready.session_id)?;
    let (goaway, close, _) = old.refusal(Duration::from_secs(5)).await;
    new.close().await;
    if goaway == Some(4203) {
        Ok(())
    } else {
        Err(Unmet::Broken(format!(
            "expected `goaway` 4203 on the connection taken over, got goaway {goaway:?}, close {close:?}"
        )))
    }
}

/// Resumes `ready`'s session with `token`, drops the connection, and returns the new
/// `connection_ready`.
async fn resume_and_drop(
    ctx: &Ctx,
    tag: &str,
    ready: &ConnectionReady,
    token: &str,
) -> Result<ConnectionReady, Unmet> {
    let (conn, answer) = ctx.resume(tag, ready, token, 0).await?;
    let again = resumed_on(answer, &ready.session_id)?;
    drop(conn);
    Ok(again)
}

async fn older_tokens_resume_nothing(ctx: &Ctx) -> Outcome {
    let (conn, first) = ctx.ready("RS-8-setup").await?;
    drop(conn);
    let t1 = first.resume_token.expose().to_owned();
    let second = resume_and_drop(ctx, "RS-8-second", &first, &t1).await?;
    let t2 = second.resume_token.expose().to_owned();
    if t2 == t1 {
        // Without rotation there is no older token to refuse.
        return Ok(());
    }
    // The client presents the new token: from now on the first one is older than both.
    resume_and_drop(ctx, "RS-8-third", &first, &t2).await?;
    let answer = ctx.resume("RS-8-old", &first, &t1, 0).await?;
    not_resumed(answer, &first.session_id).await
}

async fn presented_token_still_resumes(ctx: &Ctx) -> Outcome {
    let (conn, first) = ctx.ready("RS-8-setup").await?;
    drop(conn);
    let t1 = first.resume_token.expose().to_owned();
    // The `connection_ready` carrying a new token is "lost": the client still holds t1.
    resume_and_drop(ctx, "RS-8-lost", &first, &t1).await?;
    resume_and_drop(ctx, "RS-8-again", &first, &t1)
        .await
        .map(|_| ())
        .map_err(|unmet| match unmet {
            Unmet::Broken(problem) => Unmet::Broken(format!(
                "the token presented in the last resume no longer resumes: {problem}"
            )),
            skipped => skipped,
        })
}

async fn refusals_are_replayed(ctx: &Ctx) -> Outcome {
    let limit = ctx.welcome.max_frame_bytes;
    if limit > 8 << 20 {
        return Err(Unmet::Skipped("max_frame_bytes is over 8 MiB".to_owned()));
    }
    let (mut conn, ready) = ctx.ready("DL-8-setup").await?;
    conn.send(&msg(1, r#"{"check":"DL-8"}"#)).await?;
    settled(&mut conn, 1).await?;
    let padding = "x".repeat(limit as usize + 1);
    conn.send_text(format!(r#"{{"type":"msg","id":2,"data":"{padding}"}}"#))
        .await?;
    match next_settlement(&mut conn).await {
        Incoming::Frame(Frame::Nack(nack)) if nack.id == 2 => {}
        other => {
            return Err(Unmet::Skipped(format!(
                "no `nack` to replay: the oversized `msg` 2 got {} (see FR-6)",
                describe_settlement(&other)
            )));
        }
    }
    drop(conn);
    let (mut conn, answer) = ctx
        .resume("DL-8", &ready, ready.resume_token.expose(), 0)
        .await?;
    resumed_on(answer, &ready.session_id)?;
    let mut replayed = false;
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let left = until.saturating_duration_since(Instant::now());
        match conn.next(left, true).await {
            Incoming::Frame(Frame::Nack(nack)) if nack.id == 2 => replayed = true,
            Incoming::Frame(Frame::Ack(ack)) if ack.id >= 2 => {
                conn.close().await;
                return if replayed {
                    Ok(())
                } else {
                    Err(Unmet::Broken(format!(
                        "`ack` {} came without the `nack` of id 2 before it",
                        ack.id
                    )))
                };
            }
            Incoming::Frame(_) => {}
            other => {
                return Err(Unmet::Broken(format!(
                    "expected `nack` 2 and then `ack` 2, got {}",
                    describe(&other)
                )));
            }
        }
    }
}

/// A marker unique to this run and check, to find a published message among others.
fn marker(tag: &str) -> String {
    format!("readyws-check-{tag}-{}", std::process::id())
}

async fn publish(ctx: &Ctx, key: &str, user: &str, data: &str) -> Result<(u16, String), Unmet> {
    let body = serde_json::json!({"user": user, "data": data}).to_string();
    Ok(crate::publish::exchange(&ctx.publish_url, key, &body).await?)
}

/// Receives until a `msg` whose data holds `marker` arrives (acknowledging every `msg`).
async fn receive_marked(conn: &mut Conn, marker: &str) -> Result<(), String> {
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let left = until.saturating_duration_since(Instant::now());
        match conn.next(left, true).await {
            Incoming::Frame(Frame::Msg(message)) => {
                let _ = conn.send(&Frame::Ack(Ack { id: message.id })).await;
                if message.data.as_json().contains(marker) {
                    return Ok(());
                }
            }
            Incoming::Frame(_) => {}
            Incoming::Silence => {
                return Err("the published message did not arrive within 5 s".to_owned());
            }
            other => {
                return Err(format!(
                    "expected the published `msg`, got {}",
                    describe(&other)
                ));
            }
        }
    }
}

async fn held_message_is_delivered(ctx: &Ctx) -> Outcome {
    let (key, user) = ctx.publishing()?;
    let marker = marker("CU-1");
    let (status, body) = publish(ctx, key, user, &marker).await?;
    if status != 202 {
        return Err(Unmet::Broken(format!(
            "the publish API answered {status}: {body}"
        )));
    }
    let (mut conn, ready) = ctx.ready("CU-1").await?;
    if ready.backlog == 0 {
        return Err(Unmet::Broken(
            "expected `backlog` ≥ 1 in `connection_ready`, got 0".to_owned(),
        ));
    }
    receive_marked(&mut conn, &marker).await?;
    conn.close().await;
    Ok(())
}

async fn every_session_gets_a_copy(ctx: &Ctx) -> Outcome {
    let (key, user) = ctx.publishing()?;
    let (mut first, _) = ctx.ready("CU-4-first").await?;
    let (mut second, _) = ctx.ready("CU-4-second").await?;
    let marker = marker("CU-4");
    let (status, body) = publish(ctx, key, user, &marker).await?;
    if status != 202 {
        return Err(Unmet::Broken(format!(
            "the publish API answered {status}: {body}"
        )));
    }
    receive_marked(&mut first, &marker)
        .await
        .map_err(|problem| format!("first session: {problem}"))?;
    receive_marked(&mut second, &marker)
        .await
        .map_err(|problem| format!("second session: {problem}"))?;
    first.close().await;
    second.close().await;
    Ok(())
}

/// The `error` member of a refusal's JSON body.
fn error_code(body: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(body).ok()?;
    value["error"].as_str().map(str::to_owned)
}

async fn wrong_key_is_refused(ctx: &Ctx) -> Outcome {
    let (key, user) = ctx.publishing()?;
    let body = serde_json::json!({"user": user, "data": marker("PB-1")}).to_string();
    let wrong = format!("{key}-wrong");
    let (status, answer) = crate::publish::exchange(&ctx.publish_url, &wrong, &body).await?;
    if status == 401 && error_code(&answer).as_deref() == Some("unauthorized") {
        Ok(())
    } else {
        Err(Unmet::Broken(format!(
            "expected 401 {{\"error\":\"unauthorized\"}} for a wrong key, got {status}: {answer}"
        )))
    }
}

async fn bad_body_is_refused(ctx: &Ctx) -> Outcome {
    let (key, _) = ctx.publishing()?;
    let (status, answer) =
        crate::publish::exchange(&ctx.publish_url, key, r#"{"data":"no user"}"#).await?;
    if status == 400 && error_code(&answer).as_deref() == Some("bad_body") {
        Ok(())
    } else {
        Err(Unmet::Broken(format!(
            "expected 400 {{\"error\":\"bad_body\"}} for a body without `user`, got {status}: {answer}"
        )))
    }
}

async fn accepted_publish_answers(ctx: &Ctx) -> Outcome {
    let (key, user) = ctx.publishing()?;
    let (mut conn, _) = ctx.ready("PB-4").await?;
    let marker = marker("PB-4");
    let (status, body) = publish(ctx, key, user, &marker).await?;
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    let shaped = answer["delivered"].as_u64().is_some_and(|live| live >= 1)
        && answer["held"] == false
        && answer["dropped_oldest"].as_u64().is_some();
    if status != 202 || !shaped {
        return Err(Unmet::Broken(format!(
            "expected 202 with `delivered` ≥ 1, `held: false` and `dropped_oldest` for a user with a live session, got {status}: {body}"
        )));
    }
    receive_marked(&mut conn, &marker).await?;
    conn.close().await;
    Ok(())
}

/// How many publishes the mailbox check makes before it concludes the bound is beyond reach.
const MAILBOX_PROBE: usize = 5000;

async fn mailbox_is_bounded(ctx: &Ctx) -> Outcome {
    let (key, user) = ctx.publishing()?;
    // A user of its own, so that no other check meets a full mailbox; what it holds expires by
    // the server's time-to-live.
    let user = format!("{user}-readyws-check-mailbox");
    for n in 1..=MAILBOX_PROBE {
        let (status, body) = publish(ctx, key, &user, &n.to_string()).await?;
        match status {
            202 => {
                let answer: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                if answer["dropped_oldest"]
                    .as_u64()
                    .is_some_and(|dropped| dropped > 0)
                {
                    return Ok(());
                }
            }
            429 | 503 if error_code(&body).is_some() => return Ok(()),
            _ => {
                return Err(Unmet::Broken(format!(
                    "publish {n} answered {status}: {body}; expected 202, or 429/503 with an `error` at the bound"
                )));
            }
        }
    }
    Err(Unmet::Skipped(format!(
        "no bound reached in {MAILBOX_PROBE} publishes of one user"
    )))
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

/// `describe`, with the code of a `nack` named.
fn describe_settlement(incoming: &Incoming) -> String {
    match incoming {
        Incoming::Frame(Frame::Nack(nack)) => format!("`nack` id {} code {}", nack.id, nack.code),
        Incoming::Frame(Frame::Ack(ack)) => format!("`ack` id {}", ack.id),
        other => describe(other),
    }
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
    fn citations_are_read_with_or_without_brackets_and_must_exist() {
        assert_eq!(cited_rules("[FR-1] frame is not valid JSON"), ["FR-1"]);
        assert_eq!(cited_rules("FR-1: frame is not valid JSON"), ["FR-1"]);
        assert_eq!(cited_rules("see HS-6 and DL-12."), ["HS-6", "DL-12"]);
        assert!(cited_rules("XFR-1 or FR-1a or utf-8").is_empty());
        assert!(rule_exists("FR-10"));
        assert!(!rule_exists("XX-99"));
        assert!(rule_exists("FR-11"));
        assert!(rule_exists("FR-12"));
        assert!(!rule_exists("FR-13"));
        assert!(!rule_exists("FR-0"));
    }
}
