//! The measurements the parent process takes itself: time to ready and throughput, each next to
//! its raw tokio-tungstenite baseline, trials interleaved so that drift of the machine hits both.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use readyws::{Client, Data, OutboxLimits, Outcome};
use tokio_tungstenite::tungstenite::Message;

use crate::common::{RawFrame, payload, raw_ack, raw_msg};

/// Trials at the start of a series that warm caches and are not counted.
const WARM_UP: usize = 20;

/// Time from creating a readyws `Client` to `connection_ready`, and from starting a raw
/// tokio-tungstenite connect to the answer of one request sent on it.
pub(crate) async fn time_to_ready(
    readyws_url: &str,
    raw_url: &str,
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

        let started = Instant::now();
        let (mut socket, _) = tokio_tungstenite::connect_async(raw_url)
            .await
            .map_err(|e| format!("raw connect: {e}"))?;
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
        let raw_elapsed = started.elapsed();
        let _ = socket.close(None).await;
        if n >= WARM_UP {
            readyws.push(elapsed);
            raw.push(raw_elapsed);
        }
    }
    Ok((readyws, raw))
}

/// Messages per second, each a 1 KiB JSON object acknowledged by the server: the readyws client
/// through `Client::send` until every `Delivery` resolved `Acked`.
pub(crate) async fn readyws_upload(url: &str, messages: usize, run: usize) -> Result<f64, String> {
    let client = Client::builder(url)
        .token(format!("upload-{run}"))
        .queue(OutboxLimits {
            max_messages: messages + 1,
            max_bytes: 64 << 20,
            max_message_bytes: 4096,
        })
        .connect()
        .expect("a valid client configuration");
    client
        .ready()
        .await
        .map_err(|r| format!("not ready: {r}"))?;
    let started = Instant::now();
    let mut deliveries = Vec::with_capacity(messages);
    for seq in 1..=messages as u64 {
        let data = Data::from_json(payload(seq)).map_err(|e| e.to_string())?;
        deliveries.push(client.send(data).await.map_err(|e| e.to_string())?);
    }
    for delivery in deliveries {
        let outcome = delivery.await;
        if outcome != Outcome::Acked {
            return Err(format!("a message ended {outcome:?}"));
        }
    }
    let rate = messages as f64 / started.elapsed().as_secs_f64();
    client.close(Duration::from_secs(1)).await;
    Ok(rate)
}

/// The same with raw tokio-tungstenite: `msg` frames sent one `send` each, every `ack` parsed.
pub(crate) async fn raw_upload(url: &str, messages: usize) -> Result<f64, String> {
    let (socket, _) = tokio_tungstenite::connect_async(url)
        .await
        .map_err(|e| format!("raw connect: {e}"))?;
    let (mut write, mut read) = socket.split();
    let started = Instant::now();
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
    let rate = messages as f64 / started.elapsed().as_secs_f64();
    let write = sending.await.map_err(|e| e.to_string())?;
    if let Ok(mut socket) = write.reunite(read) {
        let _ = socket.close(None).await;
    }
    Ok(rate)
}

/// Messages per second from the server to the readyws client, each acknowledged: the server
/// publishes them (asked by one message), the client counts them off its message stream.
pub(crate) async fn readyws_download(
    url: &str,
    messages: usize,
    run: usize,
) -> Result<f64, String> {
    let client = Client::builder(url)
        .token(format!("download-{run}"))
        .connect()
        .expect("a valid client configuration");
    let mut stream = client.messages();
    client
        .ready()
        .await
        .map_err(|r| format!("not ready: {r}"))?;
    let started = Instant::now();
    let request = Data::from_json(format!(r#"{{"bench":"send","count":{messages}}}"#))
        .map_err(|e| e.to_string())?;
    client.send(request).await.map_err(|e| e.to_string())?;
    let mut received = 0;
    while received < messages {
        match stream.next().await {
            Some(_) => received += 1,
            None => return Err("the message stream ended".to_owned()),
        }
    }
    let rate = messages as f64 / started.elapsed().as_secs_f64();
    client.close(Duration::from_secs(1)).await;
    Ok(rate)
}

/// The same with raw tokio-tungstenite: every `msg` parsed and answered with its `ack`.
pub(crate) async fn raw_download(url: &str, messages: usize) -> Result<f64, String> {
    let (mut socket, _) = tokio_tungstenite::connect_async(url)
        .await
        .map_err(|e| format!("raw connect: {e}"))?;
    let started = Instant::now();
    let request = format!(r#"{{"type":"send","count":{messages}}}"#);
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
                socket
                    .send(Message::Text(raw_ack(frame.id).into()))
                    .await
                    .map_err(|e| e.to_string())?;
            }
            other => return Err(format!("raw socket ended: {other:?}")),
        }
    }
    let rate = messages as f64 / started.elapsed().as_secs_f64();
    let _ = socket.close(None).await;
    Ok(rate)
}
