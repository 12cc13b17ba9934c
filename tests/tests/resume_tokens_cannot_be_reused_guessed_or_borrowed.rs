//! Security of resumption: the server issues a new resume token at every resume, and once the
//! client has resumed with the new one, every older token resumes nothing (until then the last
//! one it presented still works, since the `connection_ready` carrying the new one may have been
//! lost); a guessed token resumes nothing; and a session is bound to its user, whatever token
//! another user presents.

use readyws_server::{AcceptAll, ServerOptions};
use readyws_tests::harness::{RunningServer, handshake};
use serde_json::Value;

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
