//! # readyws-wasm
//!
//! The browser client of the readyws v1 protocol, for JavaScript and TypeScript:
//!
//! ```js
//! import init, { ReadyClient } from "readyws";
//! await init();
//! const client = new ReadyClient("wss://example.com/ws", { tokenProvider: fetchToken });
//! client.on("message", (data) => render(data));
//! await client.send({ text: "hi" }); // resolves once the server acknowledged it
//! ```
//!
//! This crate is a driver and nothing more: every protocol decision is made by
//! `readyws_protocol::ClientSession`. The driver turns browser events into `handle_*` calls and
//! carries out what the session's `poll_*` methods return, with one `WebSocket` at a time and one
//! re-armed timer for the session's next deadline.
//!
//! The browser's realities, each handled on purpose:
//! - credentials travel in `hello`, never in the URL (the session builds `hello`);
//! - every event and wake-up reads `performance.now()` and the session checks each deadline
//!   against it, because timers in hidden tabs fire late, about once a minute;
//! - it runs wherever `globalThis` has `WebSocket`, `setTimeout`, `performance` and `crypto`
//!   (a page, a worker, Node.js, Deno), and never reads `window`;
//! - `visibilitychange` (to visible) and `online` call `ClientSession::handle_wake` where the
//!   host has them (a page; `online` also in a worker): a pending reconnect starts at once, and
//!   a ready connection is probed;
//! - the reconnect jitter is seeded from `crypto.getRandomValues`, so that browsers that lost the
//!   same server do not come back in step;
//! - a replaced socket's handlers are detached and freed with it, so reconnects do not leak;
//! - no `RefCell` borrow is held while application callbacks run, so a callback may call `send`
//!   or `close`.

#![cfg(target_arch = "wasm32")]
#![no_std]
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![deny(clippy::print_stdout, clippy::print_stderr)]

extern crate alloc;

mod js;

use alloc::borrow::ToOwned;
use alloc::rc::{Rc, Weak};
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::{Ref, RefCell, RefMut};
use core::time::Duration;

use js_sys::{Function, Promise};
use readyws_protocol::{
    Action, BackoffConfig, ClientConfig, ClientEvent, ClientSession, ClientState, CloseReason,
    ConnId, Data, MessageId, Outcome, ResetPolicy, SUBPROTOCOL, SendErrorReason, Time,
};
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use web_sys::{CloseEvent, Event, MessageEvent, WebSocket};

use crate::js::{Settle, number, object, ready_error, text};

/// The package build links no standard library: a panic (a bug) traps, with no message to
/// format, and memory comes from talc, which grows the module's memory as `std`'s dlmalloc
/// would, in a quarter of its code.
#[cfg(feature = "bundle")]
#[panic_handler]
fn trap(_: &core::panic::PanicInfo<'_>) -> ! {
    core::arch::wasm32::unreachable()
}

#[cfg(feature = "bundle")]
#[global_allocator]
static ALLOCATOR: talc::wasm::WasmDynamicTalc = talc::wasm::new_wasm_dynamic_allocator();

#[wasm_bindgen(typescript_custom_section)]
const TYPES: &str = r#"
/** Options of `new ReadyClient(url, options)`. Every member is optional. */
export interface ReadyClientOptions {
  /** Credentials sent in `hello` (never in the URL). */
  token?: string;
  /** Called before every connection attempt and when the server asks for fresh credentials;
   *  takes precedence over `token`. */
  tokenProvider?: () => string | Promise<string>;
  /** Default time-to-live of a message that has not been transmitted yet (default: none). */
  messageTtlMs?: number;
  /** Messages held at once, queued and in flight (default 1000). */
  maxPendingMessages?: number;
  /** Bytes of data held at once (default 1 MiB). */
  maxPendingBytes?: number;
  /** After the server lost the session: send unacknowledged messages again ("resend", the
   *  default, at-least-once) or settle them as `session_reset` ("report", at-most-once). */
  resetPolicy?: "resend" | "report";
  /** Reconnect backoff: first delay in [initial, 2 × initial) (default 500). */
  backoffInitialMs?: number;
  /** Reconnect backoff cap (default 30000). */
  backoffMaxMs?: number;
  /** Give up (the client closes, with a "fatal" error) after this many failed attempts in a
   *  row (default: never). */
  maxReconnectAttempts?: number;
  /** How long opening a socket may take (default 10000). */
  connectTimeoutMs?: number;
  /** How long from the socket opening to `connection_ready` while the server is accepting
   *  (default 10000). */
  handshakeTimeoutMs?: number;
  /** How long to wait for `connection_ready` after the server said it is starting
   *  (default 60000). */
  startupTimeoutMs?: number;
}

/** Options of one `send`. */
export interface SendOptions {
  /** This message's time-to-live before it is first transmitted. */
  ttlMs?: number;
}

export type ReadyState =
  "idle" | "connecting" | "ready" | "reconnecting" | "awaiting_credentials" | "closed";

/** The payload of the "state" event. */
export interface StateChange {
  state: ReadyState;
  /** Which attempt since the client was last ready ("connecting", "reconnecting"). */
  attempt?: number;
  /** The session carried ("ready"). */
  sessionId?: string;
  /** When the next attempt starts, in `performance.now()` milliseconds ("reconnecting"). */
  reconnectAt?: number;
  /** Why the last connection ended, when one did. */
  reason?: string;
}

/** What went wrong. `send` rejects with one of "refused", "expired", "session_reset",
 *  "closed", "invalid" or "full"; the "error" event carries "protocol", "credentials" or
 *  "fatal". */
export type ReadyErrorKind =
  "refused" | "expired" | "session_reset" | "closed" | "invalid" | "full" |
  "protocol" | "credentials" | "fatal";

/** An `Error` whose `name` is "ReadyError". */
export interface ReadyError extends Error {
  name: "ReadyError";
  kind: ReadyErrorKind;
  /** The refusal code ("too_large", "invalid", …) or the close code. */
  code?: string | number;
  /** The peer's reason, when it gave one. */
  reason?: string;
}

/** The payload of the "reset" event: the server could not resume the session. */
export interface SessionReset {
  previousSessionId: string;
  /** Messages sent again, which may therefore arrive twice. */
  resent: number;
}

/** The answer of `ready()`. */
export interface ReadyInfo {
  sessionId: string;
  resumed: boolean;
}

/** A snapshot of the client, from `stats()`. */
export interface ReadyStats {
  state: ReadyState;
  sessionId: string | null;
  /** Messages accepted by `send` and not settled yet. */
  pending: number;
  /** Of those, the ones transmitted and not acknowledged yet. */
  inFlight: number;
  pendingBytes: number;
  /** The highest server message id received in this session. */
  lastReceived: number;
  /** Connections opened since the client was created. */
  connections: number;
}

export type ReadyEvent = "message" | "state" | "error" | "reset";

export interface ReadyClient {
  /** Each server message's data, once and in order. */
  on(event: "message", callback: (data: any) => void): void;
  /** Every change of the connection state. */
  on(event: "state", callback: (change: StateChange) => void): void;
  /** Protocol violations, missing credentials, and the end of a client that gave up. */
  on(event: "error", callback: (error: ReadyError) => void): void;
  /** The server could not resume the session. */
  on(event: "reset", callback: (reset: SessionReset) => void): void;
  /** Like `on`, for the next event of that kind only. */
  once(event: "message", callback: (data: any) => void): void;
  once(event: "state", callback: (change: StateChange) => void): void;
  once(event: "error", callback: (error: ReadyError) => void): void;
  once(event: "reset", callback: (reset: SessionReset) => void): void;
  /** Removes a listener added with `on` or `once`. */
  off(event: ReadyEvent, callback: (payload: any) => void): void;
}
"#;

#[wasm_bindgen]
extern "C" {
    /// The options of `new ReadyClient(url, options)`: a plain object (see the TypeScript type).
    #[wasm_bindgen(typescript_type = "ReadyClientOptions")]
    pub type ReadyClientOptions;

    /// The options of one `send`: a plain object (see the TypeScript type).
    #[wasm_bindgen(typescript_type = "SendOptions")]
    pub type SendOptions;
}

/// How long `close()` lets in-flight messages finish before the socket is closed.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// A readyws connection to one server that outlives sockets: messages sent before the
/// connection is ready wait for it, are resent after a reconnect until acknowledged, and each
/// `send` settles once.
#[wasm_bindgen]
pub struct ReadyClient {
    shared: Rc<RefCell<Driver>>,
}

impl core::fmt::Debug for ReadyClient {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ReadyClient")
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

#[wasm_bindgen]
impl ReadyClient {
    /// Creates the client and starts connecting to `url` (`ws://` or `wss://`).
    #[wasm_bindgen(constructor)]
    pub fn new(url: String, options: Option<ReadyClientOptions>) -> Result<ReadyClient, JsValue> {
        // Without one, every attempt would fail the same way and be retried forever.
        if !js::get(&js::global().into(), "WebSocket").is_function() {
            return Err(ready_error(
                "invalid",
                "readyws needs a global WebSocket",
                None,
                None,
            ));
        }
        let options = options.map_or(JsValue::UNDEFINED, JsValue::from);
        let (config, token_provider) = config_from(&options)?;
        let session = ClientSession::new(config, js::random_seed()?);
        let shared = Rc::new_cyclic(|weak: &Weak<RefCell<Driver>>| {
            RefCell::new(Driver::new(url, session, token_provider, weak.clone()))
        });
        driver_mut(&shared).listen_for_wake_ups();
        let now = js::now();
        driver_mut(&shared).session.connect(now);
        drive(&shared);
        Ok(ReadyClient { shared })
    }

    /// Sends `data` (any value `JSON.stringify` accepts). The promise resolves once the server
    /// acknowledged the message and rejects with a `ReadyError` ("refused", "expired",
    /// "session_reset", "closed", "invalid" or "full") when it never will be.
    #[wasm_bindgen(unchecked_return_type = "Promise<void>")]
    pub fn send(&self, data: JsValue, options: Option<SendOptions>) -> Promise {
        let (promise, settle) = Settle::promise();
        let data = match js::stringify(&data)
            .and_then(|json| Data::from_json(json).map_err(|error| error.message()))
        {
            Ok(data) => data,
            Err(problem) => {
                settle.reject(ready_error("invalid", &problem, None, None));
                return promise;
            }
        };
        let ttl = options
            .as_ref()
            .and_then(|options| number(options.as_ref(), "ttlMs"))
            .map(|ms| Duration::from_millis(ms as u64));
        {
            let mut driver = driver_mut(&self.shared);
            let now = js::now();
            let default_ttl = driver.default_ttl;
            match driver.session.send_with_ttl(data, ttl.or(default_ttl), now) {
                Ok(id) => driver.pending.push((id, settle)),
                Err(error) => {
                    let kind = match error.reason {
                        SendErrorReason::Closed => "closed",
                        SendErrorReason::TooLarge { .. } => "refused",
                        _ => "full",
                    };
                    let code = matches!(error.reason, SendErrorReason::TooLarge { .. })
                        .then(|| JsValue::from_str("too_large"));
                    settle.reject(ready_error(kind, &error.reason.message(), code, None));
                    return promise;
                }
            }
        }
        drive(&self.shared);
        promise
    }

    /// Resolves with `{ sessionId, resumed }` once the connection is ready (at once if it is);
    /// rejects with a "closed" `ReadyError` if the client closes first.
    #[wasm_bindgen(unchecked_return_type = "Promise<ReadyInfo>")]
    pub fn ready(&self) -> Promise {
        let (promise, settle) = Settle::promise();
        let mut driver = driver_mut(&self.shared);
        if let Some(info) = driver.ready_info() {
            settle.resolve(&info);
        } else if driver.session.state() == ClientState::Closed {
            settle.reject(ready_error("closed", "the client is closed", None, None));
        } else {
            driver.ready_waiters.push(settle);
        }
        promise
    }

    /// Adds a listener: "message" (each server message's data, once and in order), "state"
    /// (a `StateChange`), "error" (a `ReadyError`) or "reset" (a `SessionReset`).
    #[wasm_bindgen(skip_typescript)]
    pub fn on(&self, event: &str, callback: Function) -> Result<(), JsValue> {
        let mut driver = driver_mut(&self.shared);
        driver.listeners(event)?.0.push((callback, false));
        Ok(())
    }

    /// Adds a listener that runs for the next event of its kind only.
    #[wasm_bindgen(skip_typescript)]
    pub fn once(&self, event: &str, callback: Function) -> Result<(), JsValue> {
        let mut driver = driver_mut(&self.shared);
        driver.listeners(event)?.0.push((callback, true));
        Ok(())
    }

    /// Removes a listener added with `on` or `once`.
    #[wasm_bindgen(skip_typescript)]
    pub fn off(&self, event: &str, callback: &Function) -> Result<(), JsValue> {
        let mut driver = driver_mut(&self.shared);
        driver
            .listeners(event)?
            .0
            .retain(|(listener, _)| !listener.loose_eq(callback));
        Ok(())
    }

    /// Closes the client: messages in flight get a short grace period to be acknowledged, every
    /// message still pending is rejected with "closed", and no reconnect follows. The promise
    /// resolves once the client is closed.
    #[wasm_bindgen(unchecked_return_type = "Promise<void>")]
    pub fn close(&self) -> Promise {
        let (promise, settle) = Settle::promise();
        {
            let mut driver = driver_mut(&self.shared);
            if driver.session.state() == ClientState::Closed {
                settle.resolve(&JsValue::UNDEFINED);
                return promise;
            }
            driver.closed_waiters.push(settle);
            let now = js::now();
            driver.session.close(CLOSE_GRACE, now);
        }
        drive(&self.shared);
        promise
    }

    /// The connection state, as in the "state" event.
    #[wasm_bindgen(unchecked_return_type = "ReadyState")]
    pub fn state(&self) -> String {
        state_name(&driver_ref(&self.shared).session.state()).to_owned()
    }

    /// A snapshot of queues and counters.
    #[wasm_bindgen(unchecked_return_type = "ReadyStats")]
    pub fn stats(&self) -> JsValue {
        let driver = driver_ref(&self.shared);
        let session = &driver.session;
        object(&[
            ("state", text(state_name(&session.state()))),
            (
                "sessionId",
                session.session_id().map_or(JsValue::NULL, text),
            ),
            ("pending", (session.pending() as f64).into()),
            ("inFlight", (session.in_flight() as f64).into()),
            ("pendingBytes", (session.pending_bytes() as f64).into()),
            ("lastReceived", (session.last_received() as f64).into()),
            ("connections", f64::from(driver.connections).into()),
        ])
    }
}

/// Reads the constructor options into a session configuration.
fn config_from(options: &JsValue) -> Result<(ClientConfig, Option<Function>), JsValue> {
    let mut config = ClientConfig::default().sdk("readyws-wasm", env!("CARGO_PKG_VERSION"));
    if !options.is_object() {
        return Ok((config, None));
    }
    if let Some(token) = js::string(options, "token") {
        config = config.token(token);
    }
    if let Some(ttl) = number(options, "messageTtlMs") {
        config = config.default_ttl(Some(Duration::from_millis(ttl as u64)));
    }
    let mut limits = readyws_protocol::OutboxLimits::default();
    if let Some(count) = number(options, "maxPendingMessages") {
        limits.max_messages = count as usize;
    }
    if let Some(bytes) = number(options, "maxPendingBytes") {
        limits.max_bytes = bytes as usize;
    }
    config = config.outbox(limits);
    match js::string(options, "resetPolicy").as_deref() {
        None | Some("resend") => {}
        Some("report") => config = config.reset_policy(ResetPolicy::Report),
        Some(_) => {
            return Err(ready_error(
                "invalid",
                "resetPolicy must be \"resend\" or \"report\"",
                None,
                None,
            ));
        }
    }
    let mut backoff = BackoffConfig::default();
    if let Some(initial) = number(options, "backoffInitialMs") {
        backoff.initial = Duration::from_millis(initial as u64);
    }
    if let Some(max) = number(options, "backoffMaxMs") {
        backoff.max = Duration::from_millis(max as u64);
    }
    if let Some(attempts) = number(options, "maxReconnectAttempts") {
        backoff.max_attempts = Some(attempts as u32);
    }
    config = config.backoff(backoff);
    let millis = |key| number(options, key).map(|ms| Duration::from_millis(ms as u64));
    if let Some(timeout) = millis("connectTimeoutMs") {
        config = config.connect_timeout(timeout);
    }
    if let Some(timeout) = millis("handshakeTimeoutMs") {
        config = config.handshake_timeout(timeout);
    }
    if let Some(timeout) = millis("startupTimeoutMs") {
        config = config.startup_timeout(timeout);
    }
    let provider = js::get(options, "tokenProvider")
        .dyn_into::<Function>()
        .ok();
    Ok((config, provider))
}

fn state_name(state: &ClientState) -> &'static str {
    match state {
        ClientState::Idle => "idle",
        ClientState::Connecting { .. } => "connecting",
        ClientState::Ready { .. } => "ready",
        ClientState::Reconnecting { .. } => "reconnecting",
        ClientState::AwaitingCredentials => "awaiting_credentials",
        _ => "closed",
    }
}

/// The socket of one connection attempt, with the handlers it keeps alive.
struct Socket {
    conn: ConnId,
    socket: WebSocket,
    _on_event: Closure<dyn FnMut(JsValue)>,
}

impl Drop for Socket {
    /// Detaches the handlers before their closures are freed: a late event on this socket then
    /// reaches nothing instead of a freed closure.
    fn drop(&mut self) {
        self.socket.set_onopen(None);
        self.socket.set_onmessage(None);
        self.socket.set_onclose(None);
        self.socket.set_onerror(None);
    }
}

/// The application's callbacks for one event, each with whether it runs only once.
#[derive(Default)]
struct Listeners(Vec<(Function, bool)>);

impl Listeners {
    /// The callbacks to run for one event; the `once` ones leave the list.
    fn for_event(&mut self) -> Vec<Function> {
        let calls = self
            .0
            .iter()
            .map(|(callback, _)| callback.clone())
            .collect();
        self.0.retain(|(_, once)| !once);
        calls
    }
}

/// The state behind a [`ReadyClient`]: the session and the browser resources that drive it.
struct Driver {
    url: String,
    session: ClientSession,
    token_provider: Option<Function>,
    default_ttl: Option<Duration>,
    this: Weak<RefCell<Driver>>,
    socket: Option<Socket>,
    connections: u32,
    /// The timer armed for the session's next deadline, and that deadline.
    timer: Option<(JsValue, Time)>,
    on_timer: Closure<dyn FnMut(JsValue)>,
    on_wake: Closure<dyn FnMut(JsValue)>,
    pending: Vec<(MessageId, Settle)>,
    ready_waiters: Vec<Settle>,
    closed_waiters: Vec<Settle>,
    on_message: Listeners,
    on_state: Listeners,
    on_error: Listeners,
    on_reset: Listeners,
    last_state: Option<ClientState>,
    last_disconnect: Option<String>,
    /// Whether the current connection's `connection_ready` resumed the session.
    resumed: bool,
    /// Whether the current socket reached the open state: a socket that closes before it
    /// never connected, which the session hears as a failed attempt.
    socket_open: bool,
}

impl Drop for Driver {
    /// A client freed without `close()` (its JS object collected, or `free()` called) leaves no
    /// listener, timer or socket behind that would call into freed closures.
    fn drop(&mut self) {
        self.stop_listening();
    }
}

/// An application callback to run once the driver is no longer borrowed.
type Call = (Vec<Function>, JsValue);

impl Driver {
    fn new(
        url: String,
        session: ClientSession,
        token_provider: Option<Function>,
        this: Weak<RefCell<Driver>>,
    ) -> Self {
        let timer_target = this.clone();
        let on_timer = Closure::<dyn FnMut(JsValue)>::new(move |_: JsValue| {
            if let Some(shared) = timer_target.upgrade() {
                {
                    let mut driver = driver_mut(&shared);
                    driver.timer = None;
                    driver.session.handle_timeout(js::now());
                }
                drive(&shared);
            }
        });
        let wake_target = this.clone();
        let on_wake = Closure::<dyn FnMut(JsValue)>::new(move |_: JsValue| {
            if !js::page_visible() {
                return;
            }
            if let Some(shared) = wake_target.upgrade() {
                driver_mut(&shared).session.handle_wake(js::now());
                drive(&shared);
            }
        });
        Driver {
            url,
            default_ttl: None,
            session,
            token_provider,
            this,
            socket: None,
            connections: 0,
            timer: None,
            on_timer,
            on_wake,
            pending: Vec::new(),
            ready_waiters: Vec::new(),
            closed_waiters: Vec::new(),
            on_message: Listeners::default(),
            on_state: Listeners::default(),
            on_error: Listeners::default(),
            on_reset: Listeners::default(),
            last_state: None,
            last_disconnect: None,
            resumed: false,
            socket_open: false,
        }
    }

    fn listen_for_wake_ups(&mut self) {
        js::add_listener(js::global_target(), "online", &self.on_wake);
        js::add_listener(js::document_target(), "visibilitychange", &self.on_wake);
    }

    /// Releases every browser resource: listeners, the timer, and the socket (closed).
    fn stop_listening(&mut self) {
        js::remove_listener(js::global_target(), "online", &self.on_wake);
        js::remove_listener(js::document_target(), "visibilitychange", &self.on_wake);
        if let Some((handle, _)) = self.timer.take() {
            js::clear_timeout(&handle);
        }
        if let Some(socket) = self.socket.take() {
            js::close_socket(&socket.socket, 1000, "");
        }
    }

    fn listeners(&mut self, event: &str) -> Result<&mut Listeners, JsValue> {
        match event {
            "message" => Ok(&mut self.on_message),
            "state" => Ok(&mut self.on_state),
            "error" => Ok(&mut self.on_error),
            "reset" => Ok(&mut self.on_reset),
            _ => Err(ready_error(
                "invalid",
                "events are \"message\", \"state\", \"error\" and \"reset\"",
                None,
                None,
            )),
        }
    }

    fn ready_info(&self) -> Option<JsValue> {
        if !self.session.is_ready() {
            return None;
        }
        let session_id = self.session.session_id()?;
        Some(object(&[
            ("sessionId", text(session_id)),
            ("resumed", self.resumed.into()),
        ]))
    }

    /// Carries out everything the session asks for and returns the callbacks to run.
    fn step(&mut self, calls: &mut Vec<Call>) {
        while let Some(action) = self.session.poll_action() {
            match action {
                Action::Open { conn } => self.open(conn),
                Action::Close { conn, code, reason } => {
                    if let Some(socket) = self.socket.take_if(|socket| socket.conn == conn) {
                        js::close_socket(&socket.socket, code, &reason);
                    }
                }
            }
        }
        // A driver keeps no socket the session has moved on from.
        if self.socket.as_ref().map(|socket| socket.conn) != self.session.connection() {
            if let Some(socket) = self.socket.take() {
                js::close_socket(&socket.socket, 1000, "");
            }
        }
        while let Some(transmit) = self.session.poll_transmit() {
            if let Some(socket) = self.socket.as_ref().filter(|s| s.conn == transmit.conn) {
                // A failed write shows up as the socket's close event, which the session hears.
                let _ = socket.socket.send_with_str(&transmit.text);
            }
        }
        while let Some(event) = self.session.poll_event() {
            self.event(event, calls);
        }
        let state = self.session.state();
        if self.last_state.as_ref() != Some(&state) {
            calls.push((self.on_state.for_event(), self.state_change(&state)));
            self.last_state = Some(state);
        }
        self.arm_timer();
    }

    fn state_change(&self, state: &ClientState) -> JsValue {
        let mut members = vec![("state", text(state_name(state)))];
        match state {
            ClientState::Connecting { attempt } => {
                members.push(("attempt", f64::from(*attempt).into()));
            }
            ClientState::Reconnecting { at, attempt } => {
                members.push(("attempt", f64::from(*attempt).into()));
                members.push(("reconnectAt", (at.as_millis() as f64).into()));
            }
            ClientState::Ready { session_id } => members.push(("sessionId", text(session_id))),
            _ => {}
        }
        if let Some(reason) = &self.last_disconnect {
            members.push(("reason", text(reason)));
        }
        object(&members)
    }

    fn event(&mut self, event: ClientEvent, calls: &mut Vec<Call>) {
        match event {
            ClientEvent::Ready {
                session_id,
                resumed,
                ..
            } => {
                self.last_disconnect = None;
                self.resumed = resumed;
                let info = object(&[
                    ("sessionId", text(&session_id)),
                    ("resumed", resumed.into()),
                ]);
                for waiter in self.ready_waiters.drain(..) {
                    waiter.resolve(&info);
                }
            }
            ClientEvent::SessionReset {
                previous_session_id,
                resent,
            } => {
                let reset = object(&[
                    ("previousSessionId", text(&previous_session_id)),
                    ("resent", (resent as f64).into()),
                ]);
                calls.push((self.on_reset.for_event(), reset));
            }
            ClientEvent::Message { data } => match js_sys::JSON::parse(data.as_json()) {
                Ok(value) => calls.push((self.on_message.for_event(), value)),
                Err(error) => calls.push((self.on_error.for_event(), error)),
            },
            ClientEvent::Outcome { id, outcome } => {
                let Some(at) = self.pending.iter().position(|(pending, _)| *pending == id) else {
                    return;
                };
                let (_, settle) = self.pending.swap_remove(at);
                match outcome {
                    Outcome::Acked => settle.resolve(&JsValue::UNDEFINED),
                    Outcome::Refused { code, reason } => settle.reject(ready_error(
                        "refused",
                        &reason,
                        Some(text(&code)),
                        Some(&reason),
                    )),
                    Outcome::Expired => settle.reject(ready_error(
                        "expired",
                        "the message's time-to-live ran out before it could be sent",
                        None,
                        None,
                    )),
                    Outcome::SessionReset => settle.reject(ready_error(
                        "session_reset",
                        "the server lost the session while the message was unacknowledged",
                        None,
                        None,
                    )),
                    _ => settle.reject(ready_error(
                        "closed",
                        "the client closed before the message was acknowledged",
                        None,
                        None,
                    )),
                }
            }
            ClientEvent::Disconnected { reason, .. } => {
                let reason = reason.message();
                if reason.contains("[") {
                    // A protocol violation by the server cites the rule it broke.
                    calls.push((
                        self.on_error.for_event(),
                        ready_error("protocol", &reason, None, None),
                    ));
                }
                self.last_disconnect = Some(reason);
            }
            ClientEvent::CredentialsRequired { code, reason } => {
                if self.token_provider.is_none() {
                    calls.push((
                        self.on_error.for_event(),
                        ready_error("credentials", &reason, Some(f64::from(code).into()), None),
                    ));
                } else {
                    self.refresh_token();
                }
            }
            ClientEvent::Closed { reason } => {
                let requested = matches!(reason, CloseReason::Requested);
                let message = reason.message();
                if !requested {
                    calls.push((
                        self.on_error.for_event(),
                        ready_error("fatal", &message, None, None),
                    ));
                }
                for waiter in self.ready_waiters.drain(..) {
                    waiter.reject(ready_error("closed", &message, None, None));
                }
                for waiter in self.closed_waiters.drain(..) {
                    waiter.resolve(&JsValue::UNDEFINED);
                }
                self.stop_listening();
            }
            _ => {}
        }
    }

    /// Opens the socket of attempt `conn`, asking the token provider first when there is one.
    fn open(&mut self, conn: ConnId) {
        if self.token_provider.is_some() {
            self.with_fresh_token(move |driver, token| match token {
                Ok(token) => {
                    driver.session.set_token(Some(token), js::now());
                    if driver.session.connection() == Some(conn) {
                        driver.open_socket(conn);
                    }
                }
                Err(problem) => driver.session.handle_connect_failed(
                    conn,
                    ["the token provider failed: ", &problem].concat(),
                    js::now(),
                ),
            });
        } else {
            self.open_socket(conn);
        }
    }

    /// After the server asked for fresh credentials: ask the provider, then hand the token over.
    fn refresh_token(&mut self) {
        self.with_fresh_token(|driver, token| {
            let now = js::now();
            match token {
                Ok(token) => driver.session.set_token(Some(token), now),
                // The session keeps waiting for credentials; the application hears why.
                Err(problem) => js::console_error(&problem),
            }
        });
    }

    /// Calls the token provider and runs `then` with its answer, once the driver is free.
    fn with_fresh_token(
        &mut self,
        then: impl FnOnce(&mut Driver, Result<String, String>) + 'static,
    ) {
        let Some(provider) = self.token_provider.clone() else {
            return;
        };
        let this = self.this.clone();
        js::fresh_token(&provider, move |token| {
            if let Some(shared) = this.upgrade() {
                then(&mut driver_mut(&shared), token);
                drive(&shared);
            }
        });
    }

    fn open_socket(&mut self, conn: ConnId) {
        let socket = match WebSocket::new_with_str(&self.url, SUBPROTOCOL) {
            Ok(socket) => socket,
            Err(error) => {
                let detail = js::describe(&error);
                self.session.handle_connect_failed(conn, detail, js::now());
                return;
            }
        };
        self.connections += 1;
        self.socket_open = false;
        // One handler for the socket's three events keeps one closure per socket.
        let target = self.this.clone();
        let opened = socket.clone();
        let on_event = Closure::<dyn FnMut(JsValue)>::new(move |event: JsValue| {
            let event: Event = event.unchecked_into();
            with_driver(&target, |driver| {
                let now = js::now();
                match event.type_().as_str() {
                    "open" => {
                        driver.socket_open = true;
                        let protocol = opened.protocol();
                        driver
                            .session
                            .handle_connected(conn, Some(protocol.as_str()), now);
                    }
                    "message" => match event.unchecked_ref::<MessageEvent>().data().as_string() {
                        Some(frame) => driver.session.handle_text(conn, &frame, now),
                        None => driver.session.handle_binary(conn, now),
                    },
                    _ if !driver.socket_open => {
                        driver.session.handle_connect_failed(
                            conn,
                            "the socket could not be opened",
                            now,
                        );
                    }
                    _ => {
                        let event: &CloseEvent = event.unchecked_ref();
                        let code = event.code();
                        // 1005 and 1006 mean no close frame arrived; only a real one has a code.
                        let reason = event.reason();
                        let close =
                            (code != 1005 && code != 1006).then_some((code, reason.as_str()));
                        driver.session.handle_disconnected(conn, close, now);
                    }
                }
            });
        });
        let handler = Some(on_event.as_ref().unchecked_ref());
        socket.set_onopen(handler);
        socket.set_onmessage(handler);
        socket.set_onclose(handler);
        self.socket = Some(Socket {
            conn,
            socket,
            _on_event: on_event,
        });
    }

    /// Keeps one timer, armed for the session's next deadline.
    fn arm_timer(&mut self) {
        let deadline = self.session.poll_timeout();
        if self.timer.as_ref().map(|(_, at)| *at) == deadline {
            return;
        }
        if let Some((handle, _)) = self.timer.take() {
            js::clear_timeout(&handle);
        }
        if let Some(at) = deadline {
            let delay = at.as_millis().saturating_sub(js::now().as_millis());
            let handle = js::set_timeout(&self.on_timer, delay);
            self.timer = Some((handle, at));
        }
    }
}

/// Runs `update` on the driver behind `target`, then drives the session.
fn with_driver(target: &Weak<RefCell<Driver>>, update: impl FnOnce(&mut Driver)) {
    if let Some(shared) = target.upgrade() {
        update(&mut driver_mut(&shared));
        drive(&shared);
    }
}

/// Drains the session's outputs, then runs application callbacks with no borrow held, so that a
/// callback may call back into the client.
/// The driver, to change. The browser runs one task at a time and no call of the driver reaches
/// back into it, so the cell is never borrowed already; were it to be, this traps, as a panic
/// would, without the text a panic's message would link in.
fn driver_mut(shared: &RefCell<Driver>) -> RefMut<'_, Driver> {
    shared
        .try_borrow_mut()
        .unwrap_or_else(|_| core::arch::wasm32::unreachable())
}

/// The driver, to read ([`driver_mut`]).
fn driver_ref(shared: &RefCell<Driver>) -> Ref<'_, Driver> {
    shared
        .try_borrow()
        .unwrap_or_else(|_| core::arch::wasm32::unreachable())
}

fn drive(shared: &Rc<RefCell<Driver>>) {
    loop {
        let mut calls = Vec::new();
        driver_mut(shared).step(&mut calls);
        if calls.is_empty() {
            return;
        }
        for (listeners, payload) in calls {
            for listener in listeners {
                if let Err(error) = listener.call1(&JsValue::NULL, &payload) {
                    js::console_error(&js::describe(&error));
                }
            }
        }
    }
}
