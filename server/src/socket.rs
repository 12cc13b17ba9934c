//! What a connection task needs from a WebSocket, over the two kinds the server accepts: axum's
//! (when [`crate::Server::router`] is mounted in an application) and tokio-tungstenite's on a
//! bare TCP stream (when [`crate::Server::serve`] takes the upgrade itself, see `accept.rs`).

use std::future::Future;
use std::ops::Deref;

use axum::extract::ws::{self as axum_ws, WebSocket};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

/// How much each read from a socket asks for. tungstenite's default, 128 KiB, is zeroed before
/// every read and held by every connection: the benchmark found the zeroing on the profile of
/// each handshake, and it was most of the memory of an idle session. Frames larger than this
/// still arrive, over several reads.
pub(crate) const READ_BUFFER_BYTES: usize = 8 * 1024;

/// One thing read from a socket.
pub(crate) enum Incoming<T> {
    Text(T),
    Binary,
    /// The peer's close frame: code and reason.
    Close(Option<(u16, String)>),
    /// A WebSocket-level ping or pong.
    Control,
}

/// A WebSocket as the connection task drives it: split into a reading half and a writing half,
/// so that a write blocked by a peer that stopped reading never stops the reading, the timers
/// or the commands of its connection.
pub(crate) trait FrameSocket: Send + 'static {
    /// The reading half.
    type Reader: FrameReader;
    /// The writing half.
    type Writer: FrameWriter;

    /// The two halves.
    fn split(self) -> (Self::Reader, Self::Writer);
}

/// The reading half of a WebSocket.
pub(crate) trait FrameReader: Send + 'static {
    /// A received text frame, borrowed as `str` without a copy.
    type Text: Deref<Target = str> + Send;

    /// The next frame; `None` once the socket has ended, an error when it broke.
    fn recv(&mut self)
    -> impl Future<Output = Option<Result<Incoming<Self::Text>, String>>> + Send;
}

/// The writing half of a WebSocket.
pub(crate) trait FrameWriter: Send + 'static {
    /// Queues a text frame without writing it yet.
    fn feed(&mut self, text: String) -> impl Future<Output = Result<(), String>> + Send;

    /// Writes everything queued.
    fn flush(&mut self) -> impl Future<Output = Result<(), String>> + Send;

    /// Sends a close frame.
    fn close(&mut self, code: u16, reason: String) -> impl Future<Output = ()> + Send;
}

impl FrameSocket for WebSocket {
    type Reader = SplitStream<WebSocket>;
    type Writer = SplitSink<WebSocket, axum_ws::Message>;

    fn split(self) -> (Self::Reader, Self::Writer) {
        let (writer, reader) = StreamExt::split(self);
        (reader, writer)
    }
}

impl FrameReader for SplitStream<WebSocket> {
    type Text = axum_ws::Utf8Bytes;

    async fn recv(&mut self) -> Option<Result<Incoming<Self::Text>, String>> {
        let message = self.next().await?;
        Some(match message {
            Ok(axum_ws::Message::Text(text)) => Ok(Incoming::Text(text)),
            Ok(axum_ws::Message::Binary(_)) => Ok(Incoming::Binary),
            Ok(axum_ws::Message::Close(close)) => {
                Ok(Incoming::Close(close.map(|frame| {
                    (frame.code, frame.reason.as_str().to_owned())
                })))
            }
            Ok(axum_ws::Message::Ping(_) | axum_ws::Message::Pong(_)) => Ok(Incoming::Control),
            Err(error) => Err(error.to_string()),
        })
    }
}

impl FrameWriter for SplitSink<WebSocket, axum_ws::Message> {
    async fn feed(&mut self, text: String) -> Result<(), String> {
        SinkExt::feed(self, axum_ws::Message::Text(text.into()))
            .await
            .map_err(|error| error.to_string())
    }

    async fn flush(&mut self) -> Result<(), String> {
        SinkExt::flush(self)
            .await
            .map_err(|error| error.to_string())
    }

    async fn close(&mut self, code: u16, reason: String) {
        let frame = axum_ws::CloseFrame {
            code,
            reason: reason.into(),
        };
        let _ = SinkExt::send(self, axum_ws::Message::Close(Some(frame))).await;
    }
}

impl<S> FrameSocket for WebSocketStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Reader = SplitStream<WebSocketStream<S>>;
    type Writer = SplitSink<WebSocketStream<S>, Message>;

    fn split(self) -> (Self::Reader, Self::Writer) {
        let (writer, reader) = StreamExt::split(self);
        (reader, writer)
    }
}

impl<S> FrameReader for SplitStream<WebSocketStream<S>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Text = tokio_tungstenite::tungstenite::Utf8Bytes;

    async fn recv(&mut self) -> Option<Result<Incoming<Self::Text>, String>> {
        let message = self.next().await?;
        Some(match message {
            Ok(Message::Text(text)) => Ok(Incoming::Text(text)),
            Ok(Message::Binary(_)) => Ok(Incoming::Binary),
            Ok(Message::Close(close)) => {
                Ok(Incoming::Close(close.map(|frame| {
                    (u16::from(frame.code), frame.reason.as_str().to_owned())
                })))
            }
            Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => Ok(Incoming::Control),
            Err(error) => Err(error.to_string()),
        })
    }
}

impl<S> FrameWriter for SplitSink<WebSocketStream<S>, Message>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    async fn feed(&mut self, text: String) -> Result<(), String> {
        SinkExt::feed(self, Message::Text(text.into()))
            .await
            .map_err(|error| error.to_string())
    }

    async fn flush(&mut self) -> Result<(), String> {
        SinkExt::flush(self)
            .await
            .map_err(|error| error.to_string())
    }

    async fn close(&mut self, code: u16, reason: String) {
        let frame = CloseFrame {
            code: code.into(),
            reason: reason.into(),
        };
        let _ = SinkExt::send(self, Message::Close(Some(frame))).await;
    }
}
