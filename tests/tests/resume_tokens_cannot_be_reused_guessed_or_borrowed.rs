//! Security of resumption: the server issues a new resume token at every resume, and once the
//! client has resumed with the new one, every older token resumes nothing (until then the last
//! one it presented still works, since the `connection_ready` carrying the new one may have been
//! lost); a guessed token resumes nothing; and a session is bound to its user, whatever token
//! another user presents.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use readyws_server::{AcceptAll, ServerOptions};
use readyws_tests::harness::RunningServer;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// One handshake over a raw socket: `hello` with `token` and maybe a resume; returns
/// `connection_ready` (the socket is then dropped without a close frame, keeping the session).
async fn handshake(url: &str, token: &str, resume: Option<(&str, &str)>) -> Value {
    let mut request = url.into_client_request().expect("request");
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "readyws.v1".parse().expect("header"),
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("the socket opens");
    let mut hello = json!({"type": "hello", "token": token});
    if let Some((session_id, resume_token)) = resume {
        hello["resume"] = json!({
            "session_id": session_id,
            "resume_token": resume_token,
            "last_received": 0,
        });
    }
    loop {
        let message = tokio::time::timeout(Duration::from_secs(5), socket.next())
            .await
            .expect("a frame in time")
            .expect("open")
            .expect("valid");
        let Message::Text(text) = message else {
            continue;
        };
        let frame: Value = serde_json::from_str(text.as_str()).expect("JSON");
        match frame["type"].as_str() {
            Some("welcome") => socket
                .send(Message::text(hello.to_string()))
                .await
                .expect("sent"),
            Some("connection_ready") => return frame,
            _ => {}
        }
    }
}

fn fields(ready: &Value) -> (String, String, bool) {
    (
        ready["session_id"].as_str().expect("id").to_owned(),
        ready["resume_token"].as_str().expect("token").to_owned(),
        ready["resumed"].as_bool().expect("resumed"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_used_token_a_guessed_token_and_another_users_token_resume_nothing() {
    let server = RunningServer::start(ServerOptions::default(), AcceptAll).await;
    let url = server.ws_url();
    let (session, first_token, _) = fields(&handshake(&url, "alice", None).await);

    // Resuming with the first token works, and hands out a new one.
    let (resumed_id, second_token, resumed) =
        fields(&handshake(&url, "alice", Some((&session, &first_token))).await);
    assert!(resumed && resumed_id == session, "the session resumes");
    assert_ne!(
        second_token, first_token,
        "the token is rotated at the resume"
    );

    // Until alice uses the new token, the one she presented still resumes (its answer may have
    // been lost); that resume re-keys the session again.
    let (id, second_token, resumed) =
        fields(&handshake(&url, "alice", Some((&session, &first_token))).await);
    assert!(
        resumed && id == session,
        "the last token presented still resumes"
    );

    // Alice moves on to the newest token ...
    let (id, third_token, resumed) =
        fields(&handshake(&url, "alice", Some((&session, &second_token))).await);
    assert!(resumed && id == session, "the newest token resumes");
    assert_ne!(third_token, second_token);

    // ... and the first one, replayed, resumes nothing.
    let (id, _, resumed) = fields(&handshake(&url, "alice", Some((&session, &first_token))).await);
    assert!(
        !resumed && id != session,
        "a superseded token starts a new session"
    );

    // Nor does a guess.
    let guess = "0123456789abcdef0123456789abcdef";
    let (id, _, resumed) = fields(&handshake(&url, "alice", Some((&session, guess))).await);
    assert!(
        !resumed && id != session,
        "a guessed token starts a new session"
    );

    // Nor does another user holding the current token.
    let (id, _, resumed) =
        fields(&handshake(&url, "mallory", Some((&session, &third_token))).await);
    assert!(
        !resumed && id != session,
        "another user starts a new session"
    );

    // The owner with the current token still resumes it.
    let (id, fourth_token, resumed) =
        fields(&handshake(&url, "alice", Some((&session, &third_token))).await);
    assert!(
        resumed && id == session,
        "the owner resumes with the current token"
    );
    assert_ne!(fourth_token, third_token);
    server.stop().await;
}
