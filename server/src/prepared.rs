//! The TCP stream of `Server::serve`'s connections, with two adjustments the accept loop needs.
//!
//! - The first bytes, read to choose between the WebSocket path and the HTTP router, are served
//!   again to whoever reads the stream next (tungstenite or hyper).
//! - On the WebSocket path, the `101 Switching Protocols` response is held back until the
//!   connection task flushes `welcome`, so that both leave in one write and reach the client in
//!   one read: the client does not wait a second time, for a `welcome` that follows on its own.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

#[derive(Debug)]
pub(crate) struct Prepared {
    stream: TcpStream,
    read_ahead: Vec<u8>,
    read_from: usize,
    /// Written bytes not yet handed to the stream.
    held: Vec<u8>,
    /// Hold a `101` response until [`Prepared::release`]; other responses (refusals) go at once.
    hold_switch: bool,
}

impl Prepared {
    /// `read_ahead`: bytes already read from `stream`. `hold_switch`: hold a `101` response.
    pub(crate) fn new(stream: TcpStream, read_ahead: Vec<u8>, hold_switch: bool) -> Self {
        Prepared {
            stream,
            read_ahead,
            read_from: 0,
            held: Vec::new(),
            hold_switch,
        }
    }

    /// From now on, the next flush writes what was held.
    pub(crate) fn release(&mut self) {
        self.hold_switch = false;
    }

    fn holding(&self) -> bool {
        self.hold_switch && !self.held.is_empty()
    }

    /// Hands held bytes to the stream until they are gone or the stream is full.
    fn poll_write_held(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.held.is_empty() {
            match Pin::new(&mut self.stream).poll_write(cx, &self.held) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(written)) => {
                    self.held.drain(..written);
                }
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for Prepared {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let ahead = this.read_ahead.get(this.read_from..).unwrap_or_default();
        if ahead.is_empty() {
            return Pin::new(&mut this.stream).poll_read(cx, buf);
        }
        let taken = ahead.len().min(buf.remaining());
        buf.put_slice(&ahead[..taken]);
        this.read_from += taken;
        if this.read_from == this.read_ahead.len() {
            this.read_ahead = Vec::new();
            this.read_from = 0;
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Prepared {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let starts_switch = this.hold_switch && buf.starts_with(b"HTTP/1.1 101");
        if this.holding() || starts_switch {
            this.held.extend_from_slice(buf);
            return Poll::Ready(Ok(buf.len()));
        }
        if !this.held.is_empty() {
            // Behind held bytes: join them, so that both leave in one write.
            this.held.extend_from_slice(buf);
            return match this.poll_write_held(cx) {
                Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
                // Accepted either way: what is left goes at the next write or flush.
                _ => Poll::Ready(Ok(buf.len())),
            };
        }
        Pin::new(&mut this.stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.holding() {
            return Poll::Ready(Ok(()));
        }
        match this.poll_write_held(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut this.stream).poll_flush(cx),
            other => other,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.hold_switch = false;
        match this.poll_write_held(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut this.stream).poll_shutdown(cx),
            other => other,
        }
    }
}
