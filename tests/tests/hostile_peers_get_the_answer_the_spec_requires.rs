//! Hostile and broken peers, both ways, from one table each: what a peer sends, and the answer
//! `docs/PROTOCOL.md` requires. Against the reference server, a raw WebSocket plays the broken
//! client; against the native client, a raw WebSocket server plays the broken server. No case may
//! panic, and the well-behaved side loses nothing.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use readyws::{Client, ConnectionState, Data, Outcome};
use readyws_server::{AcceptAll, ServerOptions, UserId};
use readyws_tests::harness::RunningServer;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Socket = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// What the server must do after a case's frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// `goaway` with this code, then a close with the same code.
    Goaway(u16),
    /// `nack` of this id with this code; the connection stays usable.
    Nack(u64, &'static str),
    /// `ack` of at least this id; the connection stays usable.
    Ack(u64),
    /// Nothing: the frame is ignored and the connection stays usable.
    Ignored,
}

/// How far the broken client gets before its frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Right after `welcome`, before `hello`.
    Welcomed,
    /// After `connection_ready`.
    Ready,
}

const SERVER_CASES: &[(&str, Stage, &[&str], Answer)] = &[
    (
        "bad JSON",
        Stage::Ready,
        &["{\"type\":\"msg\",\"id\":1"],
        Answer::Goaway(4010),
    ),
    (
        "not an object",
        Stage::Ready,
        &["[1,2,3]"],
        Answer::Goaway(4010),
    ),
    (
        "id is a string",
        Stage::Ready,
        &[r#"{"type":"msg","id":"1","data":1}"#],
        Answer::Goaway(4010),
    ),
    (
        "id over 2^53 - 1",
        Stage::Ready,
        &[r#"{"type":"msg","id":9007199254740992,"data":1}"#],
        Answer::Goaway(4010),
    ),
    (
        "negative id",
        Stage::Ready,
        &[r#"{"type":"msg","id":-1,"data":1}"#],
        Answer::Goaway(4010),
    ),
    (
        "id with a fraction",
        Stage::Ready,
        &[r#"{"type":"msg","id":1.5,"data":1}"#],
        Answer::Goaway(4010),
    ),
    (
        "a gap in the ids",
        Stage::Ready,
        &[r#"{"type":"msg","id":3,"data":1}"#],
        Answer::Goaway(4010),
    ),
    (
        "the same id twice",
        Stage::Ready,
        &[
            r#"{"type":"msg","id":1,"data":1}"#,
            r#"{"type":"msg","id":1,"data":1}"#,
        ],
        Answer::Ack(1),
    ),
    (
        "ack for an id never sent",
        Stage::Ready,
        &[r#"{"type":"ack","id":99}"#],
        Answer::Goaway(4010),
    ),
    (
        "nack for an id never sent",
        Stage::Ready,
        &[r#"{"type":"nack","id":99,"code":"x","reason":""}"#],
        Answer::Goaway(4010),
    ),
    (
        "a second hello",
        Stage::Ready,
        &[r#"{"type":"hello","token":"hostile"}"#],
        Answer::Goaway(4010),
    ),
    (
        "a welcome from the client",
        Stage::Ready,
        &[
            r#"{"type":"welcome","protocol":1,"server":"x","phase":"accepting","heartbeat_ms":1,"max_frame_bytes":4096,"max_inflight":1,"resume_window_ms":1}"#,
        ],
        Answer::Goaway(4010),
    ),
    (
        "msg before connection_ready",
        Stage::Welcomed,
        &[r#"{"type":"msg","id":1,"data":1}"#],
        Answer::Goaway(4010),
    ),
    (
        "ack before connection_ready",
        Stage::Welcomed,
        &[r#"{"type":"ack","id":1}"#],
        Answer::Goaway(4010),
    ),
    (
        "an unknown type as the first frame",
        Stage::Welcomed,
        &[r#"{"type":"hola"}"#],
        Answer::Goaway(4010),
    ),
    (
        "an unknown type later",
        Stage::Ready,
        &[r#"{"type":"hola"}"#],
        Answer::Ignored,
    ),
    (
        "unknown members",
        Stage::Ready,
        &[r#"{"type":"msg","id":1,"data":1,"extra":[1]}"#],
        Answer::Ack(1),
    ),
    (
        "a msg whose data is missing but id readable",
        Stage::Ready,
        &[r#"{"type":"msg","id":1}"#],
        Answer::Nack(1, "invalid"),
    ),
    (
        "the type twice",
        Stage::Ready,
        &[r#"{"type":"msg","type":"msg","id":1,"data":1}"#],
        Answer::Goaway(4010),
    ),
];

async fn raw_client(url: &str) -> Socket {
    let mut request = url.into_client_request().expect("request");
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "readyws.v1".parse().expect("header"),
    );
    tokio_tungstenite::connect_async(request)
        .await
        .expect("the socket opens")
        .0
}

/// The next text frame as JSON, or the close code (`None` if the stream ended or went quiet).
async fn next(socket: &mut Socket) -> Result<serde_json::Value, Option<u16>> {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), socket.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => {
                return Ok(serde_json::from_str(text.as_str()).expect("the server writes JSON"));
            }
            Ok(Some(Ok(Message::Close(frame)))) => return Err(frame.map(|f| u16::from(f.code))),
            Ok(Some(Ok(_))) => {}
            _ => return Err(None),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_answers_every_broken_client_as_the_spec_requires() {
    let server = RunningServer::start(ServerOptions::default(), AcceptAll).await;
    // A well-behaved client of the same user, connected throughout.
    let bystander = Client::builder(server.ws_url())
        .token("hostile")
        .connect()
        .expect("a valid client configuration");
    bystander.ready().await.expect("ready");
    for (name, stage, frames, answer) in SERVER_CASES {
        let mut socket = raw_client(&server.ws_url()).await;
        assert_eq!(
            next(&mut socket).await.expect("welcome")["type"],
            "welcome",
            "{name}"
        );
        if *stage == Stage::Ready {
            let hello = r#"{"type":"hello","token":"hostile"}"#;
            socket.send(Message::text(hello)).await.expect("sent");
            assert_eq!(
                next(&mut socket).await.expect("ready")["type"],
                "connection_ready",
                "{name}"
            );
        }
        for frame in *frames {
            socket.send(Message::text(*frame)).await.expect("sent");
        }
        match answer {
            Answer::Goaway(code) => {
                let mut goaway = None;
                let close = loop {
                    match next(&mut socket).await {
                        Ok(frame) if frame["type"] == "goaway" => goaway = frame["code"].as_u64(),
                        Ok(_) => {}
                        Err(close) => break close,
                    }
                };
                assert_eq!(goaway, Some(u64::from(*code)), "{name}: goaway");
                assert_eq!(close, Some(*code), "{name}: close code");
            }
            Answer::Nack(id, code) => {
                let frame = loop {
                    let frame = next(&mut socket).await.expect("an answer");
                    if frame["type"] != "ping" {
                        break frame;
                    }
                };
                assert_eq!(frame["type"], "nack", "{name}: {frame}");
                assert_eq!(frame["id"].as_u64(), Some(*id), "{name}");
                assert_eq!(frame["code"], *code, "{name}");
            }
            Answer::Ack(id) => {
                let frame = loop {
                    let frame = next(&mut socket).await.expect("an answer");
                    if frame["type"] == "ack" && frame["id"].as_u64() >= Some(*id) {
                        break frame;
                    }
                    assert_ne!(frame["type"], "goaway", "{name}: {frame}");
                };
                assert_eq!(frame["type"], "ack", "{name}");
            }
            Answer::Ignored => {}
        }
        if !matches!(answer, Answer::Goaway(_)) {
            // Still usable: a ping is answered.
            socket
                .send(Message::text(r#"{"type":"ping","nonce":"still"}"#))
                .await
                .expect("sent");
            let pong = loop {
                let frame = next(&mut socket).await.expect("a pong");
                if frame["type"] == "pong" {
                    break frame;
                }
            };
            assert_eq!(pong["nonce"], "still", "{name}");
        }
    }
    // The bystander lost nothing: a message published to the user reaches it.
    server
        .handle
        .publish(
            &UserId::new("hostile"),
            Data::from_json(r#""after""#).expect("JSON"),
        )
        .await
        .expect("accepted");
    let mut messages = bystander.messages();
    let data = tokio::time::timeout(Duration::from_secs(5), messages.next())
        .await
        .expect("in time")
        .expect("open");
    assert_eq!(data.as_json(), r#""after""#);
    bystander.close(Duration::from_secs(1)).await;
    server.stop().await;
}

const WELCOME: &str = r#"{"type":"welcome","protocol":1,"server":"broken","phase":"accepting","heartbeat_ms":25000,"max_frame_bytes":65536,"max_inflight":16,"resume_window_ms":60000}"#;
const READY: &str = r#"{"type":"connection_ready","session_id":"s1","resume_token":"t","resumed":false,"last_received":0,"backlog":0}"#;

/// What a broken server sends; every case is a protocol violation the client must close with
/// 4010 and then reconnect.
const CLIENT_CASES: &[(&str, &[&str])] = &[
    ("connection_ready before welcome", &[READY]),
    ("a second welcome", &[WELCOME, WELCOME]),
    ("a second connection_ready", &[WELCOME, READY, READY]),
    (
        "msg before connection_ready",
        &[WELCOME, r#"{"type":"msg","id":1,"data":1}"#],
    ),
    (
        "a gap in the ids",
        &[WELCOME, READY, r#"{"type":"msg","id":2,"data":1}"#],
    ),
    (
        "ack for an id never sent",
        &[WELCOME, READY, r#"{"type":"ack","id":99}"#],
    ),
    ("bad JSON", &[WELCOME, READY, "{\"type\":"]),
    ("a hello from the server", &[WELCOME, r#"{"type":"hello"}"#]),
    (
        "resumed: true without a resume",
        &[
            WELCOME,
            r#"{"type":"connection_ready","session_id":"s1","resume_token":"t","resumed":true,"last_received":0,"backlog":0}"#,
        ],
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_closes_every_broken_server_with_4010_and_keeps_its_messages() {
    for (name, frames) in CLIENT_CASES {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("ws://{}/ws", listener.local_addr().expect("address"));
        let client = Client::builder(url)
            .token("victim")
            .backoff(Duration::from_millis(20), Duration::from_millis(100))
            .connect()
            .expect("a valid client configuration");
        // A message the client holds throughout: it must not be settled by the broken server.
        let delivery = client
            .send(Data::from_json(r#""keep me""#).expect("JSON"))
            .await
            .expect("accepted");
        #[allow(clippy::result_large_err)]
        let accept = |_: &Request, mut response: Response| {
            response.headers_mut().insert(
                "Sec-WebSocket-Protocol",
                "readyws.v1".parse().expect("header"),
            );
            Ok(response)
        };
        let (stream, _) = listener.accept().await.expect("the client connects");
        let mut socket = tokio_tungstenite::accept_hdr_async(stream, accept)
            .await
            .expect("handshake");
        for frame in *frames {
            if socket.send(Message::text(*frame)).await.is_err() {
                break;
            }
        }
        let close = loop {
            match tokio::time::timeout(Duration::from_secs(5), socket.next()).await {
                Ok(Some(Ok(Message::Close(frame)))) => break frame.map(|f| u16::from(f.code)),
                Ok(Some(Ok(_))) => {}
                _ => break None,
            }
        };
        assert_eq!(close, Some(4010), "{name}: the client closes with 4010");
        // It comes back (a protocol violation is not the end of the session's life) ...
        let again = tokio::time::timeout(Duration::from_secs(5), listener.accept()).await;
        assert!(again.is_ok(), "{name}: the client reconnects");
        // ... and its message is still waiting, not acknowledged by the broken server.
        assert!(
            !matches!(client.state(), ConnectionState::Closed { .. }),
            "{name}: the client did not give up"
        );
        let closed = client.close(Duration::from_millis(10)).await;
        assert_eq!(
            closed.unsettled.len(),
            1,
            "{name}: the message was never acknowledged"
        );
        assert_eq!(delivery.await, Outcome::Closed, "{name}");
    }
}
