//! # readyws
//!
//! A tokio WebSocket client for readyws servers (`docs/PROTOCOL.md`): `send` works at any time,
//! messages wait until the server says the connection is ready, survive reconnects, and each one
//! ends acknowledged by the server or reported with the reason it was not.
//!
//! ```no_run
//! use futures_util::StreamExt;
//! use readyws::{Client, Data, Outcome};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let client = Client::builder("ws://127.0.0.1:8080/ws").token("alice").connect()?;
//! // No need to wait for the connection: the message is held until it is ready.
//! let delivery = client.send(Data::serialize(&serde_json::json!({"text": "hi"}))?).await?;
//! assert_eq!(delivery.await, Outcome::Acked);
//! let mut messages = client.messages();
//! while let Some(message) = messages.next().await {
//!     println!("server says {}", message.as_json());
//! }
//! client.close(std::time::Duration::from_secs(5)).await;
//! # Ok(()) }
//! ```
//!
//! The protocol itself — handshake, ids, acknowledgements, resend, backoff — lives in
//! `readyws-protocol`; this crate is the tokio driver of its [`ClientSession`], one task per
//! client, and the handle you hold.

#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![deny(clippy::print_stdout, clippy::print_stderr)]

mod builder;
mod deliveries;
mod driver;
mod stats;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

pub use builder::{BuildError, ClientBuilder, DEFAULT_MESSAGE_BUFFER, Overflow};
use driver::Core;
pub use readyws_protocol::{
    BackoffConfig, ClientSession, CloseReason, Data, DisconnectReason, MessageId, OutboxLimits,
    Outcome, ResetPolicy, SendError, SendErrorReason,
};
pub use stats::Stats;

/// The server could not resume the client's session and started a new one [RS-5].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionReset {
    /// The session that was lost.
    pub previous_session_id: String,
    /// Messages transmitted in the lost session and not acknowledged, sent again in the new one
    /// ([`ResetPolicy::Resend`]): each may reach the server's application twice. With
    /// [`ResetPolicy::Report`] they end as [`Outcome::SessionReset`] instead, and this is 0.
    pub resent: usize,
}

/// The connection's state, as [`Client::state`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectionState {
    /// Opening a socket or in the handshake.
    Connecting {
        /// Attempt number since the client was last ready, from 1.
        attempt: u32,
    },
    /// Ready: messages flow.
    Ready {
        /// The session the connection carries.
        session_id: String,
        /// Whether it continues the previous session (`false` after a reset).
        resumed: bool,
        /// When the server lost the previous session: what that meant for the messages
        /// [RS-5]. `None` on a first connect or a resume.
        reset: Option<SessionReset>,
    },
    /// Waiting before the next attempt.
    Reconnecting {
        /// Attempt number the next try will have.
        attempt: u32,
        /// How long until it starts.
        delay: Duration,
        /// Why the last connection ended.
        reason: DisconnectReason,
    },
    /// Waiting for fresh credentials after a 41xx refusal.
    AwaitingCredentials {
        /// The refusal's code.
        code: u16,
    },
    /// Ended for good.
    Closed {
        /// Why.
        reason: CloseReason,
    },
}

/// What [`Client::close`] reports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CloseReport {
    /// Messages acknowledged while the close waited.
    pub acked_during_close: usize,
    /// Messages that could not be confirmed before the deadline (each also ended as
    /// [`Outcome::Closed`] on its [`Delivery`]).
    pub unsettled: Vec<MessageId>,
}

pub(crate) enum Command {
    SetToken(Option<String>),
    Close {
        grace: Duration,
        done: oneshot::Sender<CloseReport>,
    },
}

/// A readyws client: a cheap handle, [`Clone`] to share between tasks. When the last clone is
/// dropped the session closes.
#[derive(Clone, Debug)]
pub struct Client {
    handle: Arc<Handle>,
}

/// What every clone of a [`Client`] shares.
#[derive(Debug)]
pub(crate) struct Handle {
    pub(crate) core: Arc<Core>,
    pub(crate) commands: mpsc::UnboundedSender<Command>,
    pub(crate) state: watch::Receiver<ConnectionState>,
    pub(crate) messages: Mutex<Option<mpsc::Receiver<Data>>>,
    pub(crate) stats: Arc<Mutex<Stats>>,
    pub(crate) overflow: Overflow,
    pub(crate) default_ttl: Option<Duration>,
}

impl Client {
    pub(crate) fn new(handle: Handle) -> Self {
        Client {
            handle: Arc::new(handle),
        }
    }

    /// Starts configuring a client for `url` (`ws://` or `wss://`).
    pub fn builder(url: impl Into<String>) -> ClientBuilder {
        ClientBuilder::new(url.into())
    }

    /// Sends a message, with the default time-to-live. Accepted at any time, before the first
    /// connection too; the returned [`Delivery`] resolves to how it ended. When the queue is full
    /// it fails at once with the message handed back ([`Overflow::Error`], the default) or waits
    /// for room ([`Overflow::Wait`]).
    pub async fn send(&self, data: Data) -> Result<Delivery, SendError> {
        self.send_with_ttl(data, self.handle.default_ttl).await
    }

    /// As [`send`](Self::send), with this message's own time-to-live: if it cannot be
    /// transmitted within `ttl`, it ends as [`Outcome::Expired`].
    pub async fn send_with_ttl(
        &self,
        mut data: Data,
        ttl: Option<Duration>,
    ) -> Result<Delivery, SendError> {
        // The session is shared with the driver task: accepting a message is a call under a
        // lock, not a round trip to that task, which only needs a nudge to transmit it.
        let accept = |data: Data| {
            let accepted = self.handle.core.accept(data, ttl);
            if accepted.is_ok() {
                self.handle.core.wake.notify_one();
            }
            accepted
        };
        let waits = |error: &SendError| {
            self.handle.overflow == Overflow::Wait
                && matches!(
                    error.reason,
                    SendErrorReason::QueueFullCount { .. } | SendErrorReason::QueueFullBytes { .. }
                )
        };
        loop {
            let error = match accept(data) {
                Err(error) if waits(&error) => error,
                other => return other,
            };
            // Only a sender that found the queue full waits for room: registered first and
            // then tried again, so that room freed in between is not missed.
            let room = self.handle.core.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            let error = match accept(error.into_data()) {
                Err(error) if waits(&error) => error,
                other => return other,
            };
            data = error.into_data();
            room.await;
        }
    }

    /// Sends and waits for the outcome: `Ok` once acknowledged, the outcome otherwise.
    pub async fn send_and_wait(&self, data: Data) -> Result<(), Failed> {
        let delivery = self
            .send(data)
            .await
            .map_err(|e| Failed::NotAccepted(e.reason))?;
        match delivery.await {
            Outcome::Acked => Ok(()),
            other => Err(Failed::Outcome(other)),
        }
    }

    /// The messages the server sends, in order, each once. The stream can be taken once; a second
    /// call returns a stream that ends at once.
    pub fn messages(&self) -> Messages {
        let receiver = driver::lock(&self.handle.messages).take();
        Messages { receiver }
    }

    /// The connection state now.
    pub fn state(&self) -> ConnectionState {
        self.handle.state.borrow().clone()
    }

    /// A receiver that sees every state change.
    pub fn watch_state(&self) -> watch::Receiver<ConnectionState> {
        self.handle.state.clone()
    }

    /// Waits until the connection is ready; returns the close reason if the client ended first.
    pub async fn ready(&self) -> Result<(), CloseReason> {
        let mut state = self.handle.state.clone();
        loop {
            match &*state.borrow_and_update() {
                ConnectionState::Ready { .. } => return Ok(()),
                ConnectionState::Closed { reason } => return Err(reason.clone()),
                _ => {}
            }
            if state.changed().await.is_err() {
                return Err(CloseReason::Requested);
            }
        }
    }

    /// Replaces the credentials used from the next connection attempt on (and resumes after a
    /// 41xx refusal when no token provider is configured). With a token provider, the provider's
    /// answer before each attempt takes precedence.
    pub fn set_token(&self, token: impl Into<String>) {
        let _ = self
            .handle
            .commands
            .send(Command::SetToken(Some(token.into())));
    }

    /// The figures an operator asks for.
    pub fn stats(&self) -> Stats {
        driver::lock(&self.handle.stats).clone()
    }

    /// Ends the session: messages still unacknowledged get up to `grace` to finish (the client
    /// keeps reconnecting meanwhile); those left are reported.
    pub async fn close(&self, grace: Duration) -> CloseReport {
        let (done, report) = oneshot::channel();
        if self
            .handle
            .commands
            .send(Command::Close { grace, done })
            .is_err()
        {
            return CloseReport::default();
        }
        report.await.unwrap_or_default()
    }
}

/// Why [`Client::send_and_wait`] did not end acknowledged.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Failed {
    /// The message was not accepted.
    #[error("not accepted: {0}")]
    NotAccepted(SendErrorReason),
    /// It ended otherwise than acknowledged.
    #[error("not acknowledged: {0:?}")]
    Outcome(Outcome),
}

/// How one accepted message ended; await it.
#[derive(Debug)]
pub struct Delivery {
    id: MessageId,
    outcome: oneshot::Receiver<Outcome>,
}

impl Delivery {
    /// The message's id, as in [`CloseReport::unsettled`].
    pub fn id(&self) -> MessageId {
        self.id
    }
}

impl Future for Delivery {
    type Output = Outcome;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        Pin::new(&mut self.outcome)
            .poll(cx)
            .map(|result| result.unwrap_or(Outcome::Closed))
    }
}

/// The server's messages, as a [`futures_core::Stream`]. It holds at most
/// [`ClientBuilder::message_buffer`] messages; while it is full the client reads nothing more
/// from the server, whose window then keeps the rest.
#[derive(Debug)]
pub struct Messages {
    receiver: Option<mpsc::Receiver<Data>>,
}

impl futures_core::Stream for Messages {
    type Item = Data;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Data>> {
        match self.receiver.as_mut() {
            Some(receiver) => receiver.poll_recv(cx),
            None => Poll::Ready(None),
        }
    }
}

/// The README's example, compiled as a doctest so that it cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
