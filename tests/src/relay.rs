//! A seeded TCP relay that breaks connections the ways networks do.
//!
//! Each connection draws its faults from a generator seeded by the run's seed and the
//! connection's number, so a run's fault plan is repeatable:
//! - every chunk is delayed by a base latency plus jitter, and written in small pieces (a frame,
//!   or the HTTP upgrade, arrives split across many reads);
//! - then one of: a cut after a random number of bytes in one direction (anywhere: inside the HTTP
//!   upgrade, inside a frame, just after `connection_ready`), a stall (both sockets stay open and
//!   silent: half-open), or a cut after a random time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the relay did, for the report.
#[derive(Debug, Default)]
pub struct RelayCounters {
    /// Connections relayed.
    pub connections: AtomicU64,
    /// Connections cut after a number of bytes (possibly mid-frame or mid-handshake).
    pub cut_mid_stream: AtomicU64,
    /// Connections cut after a while.
    pub cut_after_time: AtomicU64,
    /// Connections stalled half-open.
    pub stalled: AtomicU64,
    /// `msg`, `ack` or `nack` frames seen on a connection before its `connection_ready` went by
    /// (either direction) [HS-5]: must stay 0.
    pub messages_before_ready: AtomicU64,
    /// `connection_ready` frames seen, to show the watch is working.
    pub readies_seen: AtomicU64,
}

/// The fault plan of one connection.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// Cut once this many bytes have gone through in the given direction (`true`: upstream).
    CutAfterBytes { bytes: u64, upstream: bool },
    /// Stop forwarding both ways after this long, keeping the sockets open.
    Stall(Duration),
    /// Cut after this long.
    CutAfter(Duration),
}

/// A relay on a loopback port; faults can be switched off to let a run finish.
#[derive(Debug)]
pub struct Relay {
    /// Where clients connect.
    pub address: SocketAddr,
    /// What it did so far.
    pub counters: Arc<RelayCounters>,
    faults: Arc<AtomicBool>,
}

impl Relay {
    /// Starts relaying to `upstream` with faults drawn from `seed`.
    pub async fn start(upstream: SocketAddr, seed: u64) -> std::io::Result<Relay> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let counters = Arc::new(RelayCounters::default());
        let faults = Arc::new(AtomicBool::new(true));
        let (for_task, faults_for_task) = (Arc::clone(&counters), Arc::clone(&faults));
        tokio::spawn(async move {
            let mut number = 0u64;
            while let Ok((client, _)) = listener.accept().await {
                number += 1;
                for_task.connections.fetch_add(1, Ordering::Relaxed);
                let rng =
                    fastrand::Rng::with_seed(seed ^ number.wrapping_mul(0x9e37_79b9_7f4a_7c15));
                let faulty = faults_for_task.load(Ordering::SeqCst);
                let counters = Arc::clone(&for_task);
                tokio::spawn(carry(client, upstream, rng, faulty, counters));
            }
        });
        Ok(Relay {
            address,
            counters,
            faults,
        })
    }

    /// New connections from now on are relayed without faults (latency and splitting remain).
    pub fn stop_faults(&self) {
        self.faults.store(false, Ordering::SeqCst);
    }
}

async fn carry(
    client: TcpStream,
    upstream: SocketAddr,
    mut rng: fastrand::Rng,
    faulty: bool,
    counters: Arc<RelayCounters>,
) {
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let latency = Duration::from_millis(rng.u64(0..4));
    let jitter = rng.u64(0..4);
    let fault = faulty.then(|| match rng.u8(0..10) {
        0..=3 => Fault::CutAfterBytes {
            // Small counts land inside the HTTP upgrade or the handshake frames.
            bytes: if rng.bool() {
                rng.u64(1..400)
            } else {
                rng.u64(400..40_000)
            },
            upstream: rng.bool(),
        },
        4..=5 => Fault::Stall(Duration::from_millis(rng.u64(100..1_500))),
        _ => Fault::CutAfter(Duration::from_millis(rng.u64(300..3_000))),
    });
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let (stall, stalled) = watch::channel(false);
    let (cut, cut_rx) = watch::channel(false);
    let budget = |up: bool| match fault {
        Some(Fault::CutAfterBytes { bytes, upstream }) if upstream == up => Some(bytes),
        _ => None,
    };
    let ready = Arc::new(AtomicBool::new(false));
    let pump_up = Pump {
        watch: FrameWatch::new(true, Arc::clone(&ready), Arc::clone(&counters)),
        latency,
        jitter,
        budget: budget(true),
        rng: fastrand::Rng::with_seed(rng.u64(..)),
        stalled: stalled.clone(),
        cut: cut.clone(),
    };
    let pump_down = Pump {
        watch: FrameWatch::new(false, ready, Arc::clone(&counters)),
        latency,
        jitter,
        budget: budget(false),
        rng: fastrand::Rng::with_seed(rng.u64(..)),
        stalled,
        cut: cut.clone(),
    };
    let mut up = tokio::spawn(pump_up.run(client_read, server_write));
    let mut down = tokio::spawn(pump_down.run(server_read, client_write));
    let mut cut_rx = cut_rx;
    match fault {
        None => {
            let _ = tokio::join!(&mut up, &mut down);
        }
        Some(Fault::CutAfterBytes { .. }) => {
            tokio::select! {
                _ = cut_rx.wait_for(|cut| *cut) => {
                    counters.cut_mid_stream.fetch_add(1, Ordering::Relaxed);
                }
                _ = async { let _ = tokio::join!(&mut up, &mut down); } => {}
            }
        }
        Some(Fault::Stall(after)) => {
            tokio::time::sleep(after).await;
            let _ = stall.send(true);
            counters.stalled.fetch_add(1, Ordering::Relaxed);
            // Silent and open until well after every heartbeat has given up on it.
            tokio::time::sleep(Duration::from_secs(20)).await;
        }
        Some(Fault::CutAfter(after)) => {
            tokio::time::sleep(after).await;
            counters.cut_after_time.fetch_add(1, Ordering::Relaxed);
        }
    }
    // Aborting both pumps drops all four halves: both peers see the TCP connection end.
    up.abort();
    down.abort();
}

/// One direction of a relayed connection.
struct Pump {
    watch: FrameWatch,
    latency: Duration,
    jitter: u64,
    /// Bytes this direction may still carry before the connection is cut.
    budget: Option<u64>,
    rng: fastrand::Rng,
    stalled: watch::Receiver<bool>,
    cut: watch::Sender<bool>,
}

impl Pump {
    async fn run(mut self, mut from: OwnedReadHalf, mut to: OwnedWriteHalf) {
        let mut buffer = vec![0u8; 16 * 1024];
        loop {
            let read = match from.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(read) => read,
            };
            let delay = self.latency + Duration::from_millis(self.rng.u64(0..=self.jitter));
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let chunk = &buffer[..read];
            if let Some(budget) = self.budget {
                if (chunk.len() as u64) >= budget {
                    // Deliver exactly up to the cut point, then end the connection.
                    self.watch.feed(&chunk[..budget as usize]);
                    let _ = self.write_split(&mut to, &chunk[..budget as usize]).await;
                    let _ = self.cut.send(true);
                    std::future::pending::<()>().await;
                }
                self.budget = Some(budget - chunk.len() as u64);
            }
            let stalled = *self.stalled.borrow();
            if stalled {
                // A stalled link says nothing more, not even a close.
                std::future::pending::<()>().await;
            }
            // Judged before it is written: `connection_ready` must count as gone by before the
            // client can possibly answer it, however the two pumps are scheduled.
            self.watch.feed(chunk);
            if self.write_split(&mut to, chunk).await.is_err() {
                break;
            }
        }
        let _ = to.shutdown().await;
    }

    /// Writes `bytes` in random pieces of 1 to 512 bytes, each flushed on its own.
    async fn write_split(&mut self, to: &mut OwnedWriteHalf, bytes: &[u8]) -> std::io::Result<()> {
        let mut rest = bytes;
        while !rest.is_empty() {
            let piece = if self.rng.u8(0..4) == 0 {
                self.rng.usize(1..=rest.len().min(512))
            } else {
                rest.len()
            };
            to.write_all(&rest[..piece]).await?;
            to.flush().await?;
            rest = &rest[piece..];
        }
        Ok(())
    }
}

/// Reads the WebSocket frames one direction carries (after the HTTP upgrade) and checks that no
/// `msg`, `ack` or `nack` crosses before `connection_ready` has gone from server to client [HS-5].
struct FrameWatch {
    /// Client to server: frames are masked.
    upstream: bool,
    /// Whether the server's `connection_ready` has been forwarded on this connection.
    ready: Arc<AtomicBool>,
    counters: Arc<RelayCounters>,
    upgraded: bool,
    buffer: Vec<u8>,
}

impl FrameWatch {
    fn new(upstream: bool, ready: Arc<AtomicBool>, counters: Arc<RelayCounters>) -> Self {
        FrameWatch {
            upstream,
            ready,
            counters,
            upgraded: false,
            buffer: Vec::new(),
        }
    }

    fn feed(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
        if !self.upgraded {
            let Some(end) = self.buffer.windows(4).position(|w| w == b"\r\n\r\n") else {
                return;
            };
            self.buffer.drain(..end + 4);
            self.upgraded = true;
        }
        while let Some((opcode, payload, used)) = parse_frame(&self.buffer) {
            if opcode == 1 {
                self.judge(&payload);
            }
            self.buffer.drain(..used);
        }
    }

    fn judge(&self, payload: &[u8]) {
        let Ok(frame) = serde_json::from_slice::<serde_json::Value>(payload) else {
            return;
        };
        match frame["type"].as_str() {
            Some("connection_ready") if !self.upstream => {
                self.ready.store(true, Ordering::SeqCst);
                self.counters.readies_seen.fetch_add(1, Ordering::Relaxed);
            }
            Some("msg" | "ack" | "nack") if !self.ready.load(Ordering::SeqCst) => {
                self.counters
                    .messages_before_ready
                    .fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }
}

/// One complete WebSocket frame at the start of `bytes`: its opcode, unmasked payload, and the
/// bytes it took. `None` until the frame is complete.
fn parse_frame(bytes: &[u8]) -> Option<(u8, Vec<u8>, usize)> {
    let first = *bytes.first()?;
    let second = *bytes.get(1)?;
    let masked = second & 0x80 != 0;
    let (length, mut at) = match second & 0x7f {
        126 => (
            u64::from(u16::from_be_bytes([*bytes.get(2)?, *bytes.get(3)?])),
            4,
        ),
        127 => {
            let raw: [u8; 8] = bytes.get(2..10)?.try_into().ok()?;
            (u64::from_be_bytes(raw), 10)
        }
        short => (u64::from(short), 2),
    };
    let mask: Option<[u8; 4]> = if masked {
        let key = bytes.get(at..at + 4)?.try_into().ok()?;
        at += 4;
        Some(key)
    } else {
        None
    };
    let end = at.checked_add(usize::try_from(length).ok()?)?;
    let mut payload = bytes.get(at..end)?.to_vec();
    if let Some(key) = mask {
        for (index, byte) in payload.iter_mut().enumerate() {
            *byte ^= key[index % 4];
        }
    }
    Some((first & 0x0f, payload, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(text: &str, mask: Option<[u8; 4]>) -> Vec<u8> {
        let mut bytes = vec![0x81];
        let length = text.len();
        let mask_bit = if mask.is_some() { 0x80 } else { 0 };
        if length < 126 {
            bytes.push(mask_bit | length as u8);
        } else {
            bytes.push(mask_bit | 126);
            bytes.extend_from_slice(&(length as u16).to_be_bytes());
        }
        let mut payload = text.as_bytes().to_vec();
        if let Some(key) = mask {
            bytes.extend_from_slice(&key);
            for (index, byte) in payload.iter_mut().enumerate() {
                *byte ^= key[index % 4];
            }
        }
        bytes.extend_from_slice(&payload);
        bytes
    }

    #[test]
    fn a_msg_before_connection_ready_is_counted_and_one_after_is_not() {
        let counters = Arc::new(RelayCounters::default());
        let ready = Arc::new(AtomicBool::new(false));
        let mut up = FrameWatch::new(true, Arc::clone(&ready), Arc::clone(&counters));
        let mut down = FrameWatch::new(false, ready, Arc::clone(&counters));
        up.feed(b"GET /ws HTTP/1.1\r\n\r\n");
        down.feed(b"HTTP/1.1 101 Switching Protocols\r\n\r\n");
        let early = frame(r#"{"type":"msg","id":1,"data":1}"#, Some([1, 2, 3, 4]));
        // Split across feeds, as the relay's pieces arrive.
        up.feed(&early[..5]);
        up.feed(&early[5..]);
        assert_eq!(counters.messages_before_ready.load(Ordering::Relaxed), 1);
        let long = format!(
            r#"{{"type":"connection_ready","session_id":"s","resume_token":"{}","resumed":false,"last_received":0,"backlog":0}}"#,
            "t".repeat(200)
        );
        down.feed(&frame(&long, None));
        assert_eq!(counters.readies_seen.load(Ordering::Relaxed), 1);
        up.feed(&frame(
            r#"{"type":"msg","id":1,"data":1}"#,
            Some([9, 8, 7, 6]),
        ));
        assert_eq!(counters.messages_before_ready.load(Ordering::Relaxed), 1);
    }
}
