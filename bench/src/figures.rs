//! The measurements the parent process takes itself: time to ready and throughput, each next to
//! its raw tokio-tungstenite baselines, trials interleaved so that drift of the machine hits both.
//! Every throughput run also reads the CPU time of the client (this process) and of the server
//! process over the transfer ([`Meter`]).

use std::time::{Duration, Instant};

use futures_util::{FutureExt, SinkExt, StreamExt};
use readyws::{Client, Data, Outcome, Overflow};
use serde::Serialize;
use tokio_tungstenite::tungstenite::Message;

use crate::common::{RawFrame, cpu_time, payload, raw_ack, raw_msg};

/// Frames the pipelined baseline writes before each flush: 64 KiB of messages, a burst as large
/// as readyws's own writes reach under load.
pub(crate) const PIPELINE_BURST: u64 = 64;

/// What one throughput run measured.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub(crate) struct Sample {
    /// Messages per second.
    pub(crate) rate: f64,
    /// CPU time (user + system) of the client process per message, in microseconds.
    pub(crate) client_cpu_us: f64,
    /// The same of the server process.
    pub(crate) server_cpu_us: f64,
}

impl Sample {
    /// Client and server CPU per message, in microseconds.
    pub(crate) fn cpu_us(&self) -> f64 {
        self.client_cpu_us + self.server_cpu_us
    }
}

/// The clock and both processes' CPU counters at the start of a transfer.
pub(crate) struct Meter {
    client: String,
    server: String,
    client_cpu: Duration,
    server_cpu: Duration,
    started: Instant,
}

impl Meter {
    /// Starts measuring: `client` and `server` are process ids (`self` for this process).
    pub(crate) fn start(client: &str, server: &str) -> Meter {
        Meter {
            client: client.to_owned(),
            server: server.to_owned(),
            client_cpu: cpu_time(client),
            server_cpu: cpu_time(server),
            started: Instant::now(),
        }
    }

    /// The figures of `messages` moved since [`Meter::start`].
    pub(crate) fn stop(self, messages: usize) -> Sample {
        let elapsed = self.started.elapsed().as_secs_f64();
        let per_message = |spent: Duration| spent.as_secs_f64() * 1e6 / messages.max(1) as f64;
        Sample {
            rate: messages as f64 / elapsed,
            client_cpu_us: per_message(cpu_time(&self.client).saturating_sub(self.client_cpu)),
            server_cpu_us: per_message(cpu_time(&self.server).saturating_sub(self.server_cpu)),
        }
    }
}

/// Trials at the start of a series that warm caches and are not counted.
const WARM_UP: usize = 20;

/// Time from creating a readyws `Client` to `connection_ready`, and, with `raw_url`, alternating
/// with it, from starting a raw tokio-tungstenite connect to the answer of one request sent on it.
pub(crate) async fn time_to_ready(
    readyws_url: &str,
    raw_url: Option<&str>,
    trials: usize,
) -> Result<(Vec<Duration>, Vec<Duration>), String> {
    let mut readyws = Vec::with_capacity(trials);
    let mut raw = Vec::with_capacity(trials);
    for n in 0..trials + WARM_UP {
        let started = Instant::now();
        let client = Client::builder(readyws_url)
            .token(format!("ready-{n}"))
            .connect()
            .expect("a valid client configuration");
        client
            .ready()
            .await
            .map_err(|reason| format!("a client closed before ready: {reason}"))?;
        let elapsed = started.elapsed();
        client.close(Duration::ZERO).await;

        let raw_elapsed = match raw_url {
            Some(url) => Some(raw_round_trip(url).await?),
            None => None,
        };
        if n >= WARM_UP {
            readyws.push(elapsed);
            raw.extend(raw_elapsed);
        }
    }
    Ok((readyws, raw))
}

/// A raw tokio-tungstenite connect and one request's answer, timed.
async fn raw_round_trip(url: &str) -> Result<Duration, String> {
    let started = Instant::now();
    let mut socket = raw_connect(url).await?;
    socket
        .send(Message::Text(raw_msg(1, "{}").into()))
        .await
        .map_err(|e| format!("raw send: {e}"))?;
    match socket.next().await {
        Some(Ok(Message::Text(text)))
            if serde_json::from_str::<RawFrame<'_>>(text.as_str())
                .is_ok_and(|f| f.kind == "ack") => {}
        other => return Err(format!("the raw server answered {other:?}")),
    }
    let elapsed = started.elapsed();
    let _ = socket.close(None).await;
    Ok(elapsed)
}

/// Messages per second, each a 1 KiB JSON object acknowledged by the server: the readyws client
/// through `Client::send` until every `Delivery` resolved `Acked`. The client has its default
/// queue (1,000 messages, 1 MiB) and waits for room when it is full, as an application sending a
/// stream would: a queue deep enough for the whole run held 100 MB of payloads alive, each one in
/// memory fresh from the kernel, and cost the client a quarter more CPU per message.
pub(crate) async fn readyws_upload(
    url: &str,
    server: &str,
    messages: usize,
    run: usize,
) -> Result<Sample, String> {
    let client = Client::builder(url)
        .token(format!("upload-{run}"))
        .overflow(Overflow::Wait)
        .connect()
        .expect("a valid client configuration");
    client
        .ready()
        .await
        .map_err(|r| format!("not ready: {r}"))?;
    let meter = Meter::start("self", server);
    let acked = |outcome: Outcome| match outcome {
        Outcome::Acked => Ok(()),
        other => Err(format!("a message ended {other:?}")),
    };
    // Outcomes are taken as they come, oldest first, so that only the deliveries of messages
    // still queued are alive.
    let mut deliveries = std::collections::VecDeque::new();
    for seq in 1..=messages as u64 {
        let data = Data::from_json(payload(seq)).map_err(|e| e.to_string())?;
        deliveries.push_back(client.send(data).await.map_err(|e| e.to_string())?);
        while let Some(outcome) = deliveries.front_mut().and_then(|d| d.now_or_never()) {
            deliveries.pop_front();
            acked(outcome)?;
        }
    }
    for delivery in deliveries {
        acked(delivery.await)?;
    }
    let sample = meter.stop(messages);
    client.close(Duration::from_secs(1)).await;
    Ok(sample)
}

/// The naive baseline with raw tokio-tungstenite: `msg` frames sent one `send` (a write and a
/// flush) each, every `ack` parsed.
pub(crate) async fn naive_upload(
    url: &str,
    server: &str,
    messages: usize,
) -> Result<Sample, String> {
    let socket = raw_connect(url).await?;
    let (mut write, mut read) = socket.split();
    let meter = Meter::start("self", server);
    let sending = tokio::spawn(async move {
        for id in 1..=messages as u64 {
            let text = raw_msg(id, &payload(id));
            if write.send(Message::Text(text.into())).await.is_err() {
                break;
            }
        }
        write
    });
    let mut acked = 0;
    while acked < messages as u64 {
        match read.next().await {
            Some(Ok(Message::Text(text))) => {
                let frame = serde_json::from_str::<RawFrame<'_>>(text.as_str())
                    .map_err(|e| format!("raw ack: {e}"))?;
                acked = acked.max(frame.id);
            }
            other => return Err(format!("raw socket ended: {other:?}")),
        }
    }
    let sample = meter.stop(messages);
    let write = sending.await.map_err(|e| e.to_string())?;
    if let Ok(mut socket) = write.reunite(read) {
        let _ = socket.close(None).await;
    }
    Ok(sample)
}

/// The ceiling with raw tokio-tungstenite: `push` frames fed into the socket and flushed once per
/// [`PIPELINE_BURST`], parsed by the server, never acknowledged but for one `ack` of the `end`
/// frame that follows the last.
pub(crate) async fn pipelined_upload(
    url: &str,
    server: &str,
    messages: usize,
) -> Result<Sample, String> {
    let mut socket = raw_connect(url).await?;
    let meter = Meter::start("self", server);
    let count = messages as u64;
    for id in 1..=count {
        let text = raw_push(id, &payload(id));
        socket
            .feed(Message::Text(text.into()))
            .await
            .map_err(|e| format!("raw feed: {e}"))?;
        if id % PIPELINE_BURST == 0 {
            socket
                .flush()
                .await
                .map_err(|e| format!("raw flush: {e}"))?;
        }
    }
    let end = format!(r#"{{"type":"end","id":{count}}}"#);
    socket
        .send(Message::Text(end.into()))
        .await
        .map_err(|e| format!("raw send: {e}"))?;
    match socket.next().await {
        Some(Ok(Message::Text(text))) => {
            let frame = serde_json::from_str::<RawFrame<'_>>(text.as_str())
                .map_err(|e| format!("raw ack: {e}"))?;
            if frame.kind != "ack" || frame.id != count {
                return Err(format!("the raw server answered the end with `{text}`"));
            }
        }
        other => return Err(format!("raw socket ended: {other:?}")),
    }
    let sample = meter.stop(messages);
    let _ = socket.close(None).await;
    Ok(sample)
}

/// `{"type":"push","id":N,"data":…}`: a `msg` frame of the pipelined baseline, which the raw server
/// parses and does not acknowledge.
pub(crate) fn raw_push(id: u64, data: &str) -> String {
    format!(r#"{{"type":"push","id":{id},"data":{data}}}"#)
}

/// Messages per second from the server to the readyws client, each acknowledged: the server
/// publishes them (asked by one message), the client counts them off its message stream.
pub(crate) async fn readyws_download(
    url: &str,
    server: &str,
    messages: usize,
    run: usize,
) -> Result<Sample, String> {
    let client = Client::builder(url)
        .token(format!("download-{run}"))
        .connect()
        .expect("a valid client configuration");
    let mut stream = client.messages();
    client
        .ready()
        .await
        .map_err(|r| format!("not ready: {r}"))?;
    let meter = Meter::start("self", server);
    let request = Data::from_json(format!(r#"{{"bench":"send","count":{messages}}}"#))
        .map_err(|e| e.to_string())?;
    client.send(request).await.map_err(|e| e.to_string())?;
    let mut received = 0;
    while received < messages {
        match stream.next().await {
            // The payloads start with `{"seq"`: only the server's failure report is a `bench`.
            Some(data) if data.as_json().starts_with(r#"{"bench""#) => {
                return Err(format!("the server failed to publish: {}", data.as_json()));
            }
            Some(_) => received += 1,
            None => return Err("the message stream ended".to_owned()),
        }
    }
    let sample = meter.stop(messages);
    client.close(Duration::from_secs(1)).await;
    Ok(sample)
}

/// The naive baseline with raw tokio-tungstenite: the server sends with one `send` per frame, the
/// client parses every `msg` and answers it with its `ack`, one `send` each.
pub(crate) async fn naive_download(
    url: &str,
    server: &str,
    messages: usize,
) -> Result<Sample, String> {
    raw_download(url, server, messages, false).await
}

/// The ceiling the other way: one request makes the raw server feed the frames and flush once
/// per [`PIPELINE_BURST`]; the client parses every one and acknowledges none.
pub(crate) async fn pipelined_download(
    url: &str,
    server: &str,
    messages: usize,
) -> Result<Sample, String> {
    raw_download(url, server, messages, true).await
}

/// One request for `messages` frames (`pipe`: fed and flushed per burst, or `send`: one `send`
/// each), every one parsed, and acknowledged unless `pipelined`.
async fn raw_download(
    url: &str,
    server: &str,
    messages: usize,
    pipelined: bool,
) -> Result<Sample, String> {
    let mut socket = raw_connect(url).await?;
    let meter = Meter::start("self", server);
    let kind = if pipelined { "pipe" } else { "send" };
    let request = format!(r#"{{"type":"{kind}","count":{messages}}}"#);
    socket
        .send(Message::Text(request.into()))
        .await
        .map_err(|e| e.to_string())?;
    let mut received = 0;
    while received < messages {
        match socket.next().await {
            Some(Ok(Message::Text(text))) => {
                let frame = serde_json::from_str::<RawFrame<'_>>(text.as_str())
                    .map_err(|e| format!("raw msg: {e}"))?;
                received += 1;
                if !pipelined {
                    socket
                        .send(Message::Text(raw_ack(frame.id).into()))
                        .await
                        .map_err(|e| e.to_string())?;
                }
            }
            other => return Err(format!("raw socket ended: {other:?}")),
        }
    }
    let sample = meter.stop(messages);
    let _ = socket.close(None).await;
    Ok(sample)
}

/// Fields in each command of [`redis_hold_and_release`]. With [`HOLD_IN_FLIGHT`], the fastest
/// shape of those tried on the benchmark machine (1,000 × 4, 1,000 × 1, 4,000 × 2, 256 × 16):
/// several commands under way let Redis put them on disk with one `fsync`.
pub(crate) const HOLD_BATCH: usize = 256;
/// Commands of [`redis_hold_and_release`] under way at once on its one connection.
pub(crate) const HOLD_IN_FLIGHT: usize = 16;

/// Redis alone doing the part of custody that touches the disk, for the same messages: each
/// 1 KiB payload written as a field of one hash (`HSET`), then deleted (`HDEL`), in commands of
/// [`HOLD_BATCH`] fields, [`HOLD_IN_FLIGHT`] under way at once, on the run's own `redis-server`
/// (the one readyws's figures on Redis use). Messages per second over both: the store's own
/// ceiling for holding each message until it is acknowledged, with no WebSocket and no rules.
pub(crate) async fn redis_hold_and_release(
    url: &str,
    messages: usize,
    run: usize,
) -> Result<f64, String> {
    let client = redis::Client::open(url).map_err(|e| format!("redis client: {e}"))?;
    let connection = client
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| format!("connecting to redis: {e}"))?;
    let key = format!("bench:hold:{run}");
    let ids: Vec<u64> = (1..=messages as u64).collect();
    let started = Instant::now();
    for deleting in [false, true] {
        let commands: Vec<redis::Cmd> = ids
            .chunks(HOLD_BATCH)
            .map(|chunk| {
                let mut command = redis::cmd(if deleting { "HDEL" } else { "HSET" });
                command.arg(&key);
                for id in chunk {
                    command.arg(format!("m:{id}"));
                    if !deleting {
                        command.arg(payload(*id));
                    }
                }
                command
            })
            .collect();
        let mut replies = futures_util::stream::iter(commands)
            .map(|command| {
                let mut connection = connection.clone();
                async move { command.query_async::<redis::Value>(&mut connection).await }
            })
            .buffer_unordered(HOLD_IN_FLIGHT);
        while let Some(reply) = replies.next().await {
            reply.map_err(|e| format!("redis: {e}"))?;
        }
    }
    Ok(messages as f64 / started.elapsed().as_secs_f64())
}

/// Messages in flight of the hand-acknowledged baseline: readyws's default window.
pub(crate) const ACKED_WINDOW: u64 = 256;

/// Raw tokio-tungstenite with acknowledgements done by hand, as lean as they come: one task feeds
/// `hold` frames up to [`ACKED_WINDOW`] unacknowledged, flushing once per burst, keeps each
/// payload until the server's cumulative `ack` covers it, and reads the acks between bursts.
pub(crate) async fn acked_upload(
    url: &str,
    server: &str,
    messages: usize,
) -> Result<Sample, String> {
    let mut socket = raw_connect(url).await?;
    let meter = Meter::start("self", server);
    let count = messages as u64;
    // Each payload is kept until acknowledged, as a sender that can send it again must.
    let mut kept: std::collections::VecDeque<(u64, String)> = std::collections::VecDeque::new();
    let (mut next, mut acked, mut settled) = (1u64, 0u64, 0u64);
    while acked < count {
        let mut fed = 0;
        while next <= count && next - acked <= ACKED_WINDOW && fed < PIPELINE_BURST {
            let data = payload(next);
            let text = format!(r#"{{"type":"hold","id":{next},"data":{data}}}"#);
            kept.push_back((next, data));
            socket
                .feed(Message::Text(text.into()))
                .await
                .map_err(|e| format!("raw feed: {e}"))?;
            next += 1;
            fed += 1;
        }
        if fed > 0 {
            socket
                .flush()
                .await
                .map_err(|e| format!("raw flush: {e}"))?;
        }
        let mut wait = next > count || next - acked > ACKED_WINDOW;
        while let Some(frame) = arrived_or_awaited(&mut socket, wait).await {
            wait = false;
            match frame {
                Some(Ok(Message::Text(text))) => {
                    let frame = serde_json::from_str::<RawFrame<'_>>(text.as_str())
                        .map_err(|e| format!("raw ack: {e}"))?;
                    acked = acked.max(frame.id);
                    while kept.front().is_some_and(|(id, _)| *id <= acked) {
                        kept.pop_front();
                        settled += 1;
                    }
                }
                other => return Err(format!("raw socket ended: {other:?}")),
            }
            if acked >= count {
                break;
            }
        }
    }
    let sample = meter.stop(settled as usize);
    let _ = socket.close(None).await;
    Ok(sample)
}

/// The readyws client session (the sans-IO state machine of `readyws-protocol`) driven by the
/// application's own task on a raw tokio-tungstenite socket: what the native client does, with
/// no task of its own between the application and the socket.
pub(crate) async fn session_upload(
    url: &str,
    server: &str,
    messages: usize,
) -> Result<Sample, String> {
    use readyws_protocol::{
        Action, ClientConfig, ClientEvent, ClientSession, SUBPROTOCOL, SendErrorReason, Time,
    };
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let epoch = Instant::now();
    let now = || Time::from_millis(u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX));
    let mut session = ClientSession::new(ClientConfig::default().token("session-upload"), 7);
    session.connect(now());
    let Some(Action::Open { conn }) = session.poll_action() else {
        return Err("the session did not ask for a socket".to_owned());
    };
    let mut request = url.into_client_request().map_err(|e| e.to_string())?;
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        SUBPROTOCOL.parse().map_err(|_| "subprotocol")?,
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    session.handle_connected(conn, Some(SUBPROTOCOL), now());
    let mut meter = None;
    let count = messages as u64;
    let (mut next, mut settled) = (1u64, 0u64);
    let mut ready = false;
    while settled < count {
        let mut full = false;
        if ready {
            while next <= count {
                let data = Data::from_json(payload(next)).map_err(|e| e.to_string())?;
                match session.send(data, now()) {
                    Ok(_) => next += 1,
                    Err(e)
                        if matches!(
                            e.reason,
                            SendErrorReason::QueueFullCount { .. }
                                | SendErrorReason::QueueFullBytes { .. }
                        ) =>
                    {
                        full = true;
                        break;
                    }
                    Err(e) => return Err(e.to_string()),
                }
            }
        }
        let mut fed = false;
        while let Some(transmit) = session.poll_transmit() {
            socket
                .feed(Message::Text(transmit.text.into()))
                .await
                .map_err(|e| format!("feed: {e}"))?;
            fed = true;
        }
        if fed {
            socket.flush().await.map_err(|e| format!("flush: {e}"))?;
        }
        while let Some(event) = session.poll_event() {
            match event {
                ClientEvent::Ready { .. } => {
                    ready = true;
                    meter = Some(Meter::start("self", server));
                }
                ClientEvent::Outcome { outcome, .. } => {
                    if outcome != Outcome::Acked {
                        return Err(format!("a message ended {outcome:?}"));
                    }
                    settled += 1;
                }
                _ => {}
            }
        }
        if settled >= count {
            break;
        }
        let mut wait = !ready || full || next > count;
        while let Some(frame) = arrived_or_awaited(&mut socket, wait).await {
            wait = false;
            match frame {
                Some(Ok(Message::Text(text))) => session.handle_text(conn, text.as_str(), now()),
                other => return Err(format!("socket ended: {other:?}")),
            }
        }
    }
    let sample = meter.ok_or("never ready")?.stop(messages);
    let _ = socket.close(None).await;
    Ok(sample)
}

/// The next item of `stream`: waited for when `wait`, otherwise only one that has already
/// arrived (`None` when none has), so that a sender reads what is there between its bursts.
async fn arrived_or_awaited<S: futures_util::Stream + Unpin>(
    stream: &mut S,
    wait: bool,
) -> Option<Option<S::Item>> {
    if wait {
        Some(stream.next().await)
    } else {
        stream.next().now_or_never()
    }
}

/// A raw tokio-tungstenite socket of a baseline, opened on `url`.
type RawSocket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens a baseline's socket: a plain `connect_async`, as the baselines' users would write it.
async fn raw_connect(url: &str) -> Result<RawSocket, String> {
    tokio_tungstenite::connect_async(url)
        .await
        .map(|(socket, _)| socket)
        .map_err(|e| format!("raw connect: {e}"))
}
