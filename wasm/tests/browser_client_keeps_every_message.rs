//! The browser client in headless Chromium against a real `readyws serve --echo`, behind a proxy
//! that the tests steer (`cargo xtask test` starts both and passes their addresses in
//! `READYWS_BROWSER_WS` and `READYWS_BROWSER_CONTROL`). Each test uses its own user, so the echo
//! of a message comes back to the client that sent it and to no other.

#![cfg(target_arch = "wasm32")]

use std::cell::RefCell;
use std::rc::Rc;

use js_sys::{Function, Promise, Reflect};
use readyws_wasm::ReadyClient;
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;
use wasm_bindgen_test::{wasm_bindgen_test, wasm_bindgen_test_configure};

wasm_bindgen_test_configure!(run_in_browser);

thread_local! {
    static SERVER_IN_USE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The test runner starts async tests concurrently, but these tests stop and restart the one
/// server they share: each holds this for its whole run.
struct Exclusive;

impl Exclusive {
    async fn take() -> Exclusive {
        while SERVER_IN_USE.with(|in_use| in_use.replace(true)) {
            sleep(10).await;
        }
        Exclusive
    }
}

impl Drop for Exclusive {
    fn drop(&mut self) {
        SERVER_IN_USE.with(|in_use| in_use.set(false));
    }
}

const NOT_SET: &str = "the browser tests run under `cargo xtask test`, which starts the server";

fn setting(value: Option<&'static str>) -> &'static str {
    match value {
        Some(value) => value,
        None => panic!("{NOT_SET}"),
    }
}

fn ws_url() -> String {
    setting(option_env!("READYWS_BROWSER_WS")).to_owned()
}

/// Asks the test harness to break the network or the server, and waits until it has.
async fn control(request: &str) {
    let url = format!(
        "{}{request}",
        setting(option_env!("READYWS_BROWSER_CONTROL"))
    );
    let window = web_sys::window().expect("a window");
    let response = JsFuture::from(window.fetch_with_str(&url))
        .await
        .expect("the harness answers");
    let response: web_sys::Response = response.unchecked_into();
    assert!(response.ok(), "the harness did {request}");
}

async fn sleep(ms: i32) {
    let promise = Promise::new(&mut |resolve, _| {
        web_sys::window()
            .expect("a window")
            .set_timeout_with_callback_and_timeout_and_arguments_0(&resolve, ms)
            .expect("a timer");
    });
    JsFuture::from(promise).await.expect("timers resolve");
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let started = js_sys::Date::now();
    while !done() {
        assert!(
            js_sys::Date::now() - started < 15_000.0,
            "gave up after 15 s waiting for {what}"
        );
        sleep(20).await;
    }
}

fn json(text: &str) -> JsValue {
    js_sys::JSON::parse(text).expect("valid JSON in the test")
}

fn member(value: &JsValue, key: &str) -> JsValue {
    Reflect::get(value, &key.into()).unwrap_or(JsValue::UNDEFINED)
}

/// A client for a user of its own, with a short reconnect backoff and any `extra` options.
fn client(name: &str, extra: &str) -> ReadyClient {
    let user = format!("{name}-{}", (js_sys::Math::random() * 1e9) as u64);
    let options = json(&format!(
        r#"{{"token":"{user}","backoffInitialMs":50,"backoffMaxMs":400{extra}}}"#
    ));
    ReadyClient::new(ws_url(), Some(options.unchecked_into())).expect("a client")
}

/// Everything `client` emits as `event`, in order.
fn collect(client: &ReadyClient, event: &str) -> Rc<RefCell<Vec<JsValue>>> {
    let items = Rc::new(RefCell::new(Vec::new()));
    let sink = Rc::clone(&items);
    let callback = Closure::<dyn FnMut(JsValue)>::new(move |value| sink.borrow_mut().push(value));
    client
        .on(event, callback.as_ref().unchecked_ref::<Function>().clone())
        .expect("a known event");
    // The listener lives as long as the test page.
    callback.forget();
    items
}

/// The `n` of every `{"n": …}` message received.
fn numbers(received: &Rc<RefCell<Vec<JsValue>>>) -> Vec<u32> {
    received
        .borrow()
        .iter()
        .map(|message| member(message, "n").as_f64().expect("an n") as u32)
        .collect()
}

fn send_number(client: &ReadyClient, n: u32) -> Promise {
    client.send(json(&format!(r#"{{"n":{n}}}"#)), None)
}

fn stat(client: &ReadyClient, key: &str) -> f64 {
    member(&client.stats(), key).as_f64().expect("a number")
}

async fn acknowledged(sends: Vec<Promise>) {
    for send in sends {
        JsFuture::from(send)
            .await
            .unwrap_or_else(|error| panic!("expected an ack, got {error:?}"));
    }
}

/// The `ReadyError` a send was rejected with.
async fn rejection(send: Promise) -> JsValue {
    let error = JsFuture::from(send)
        .await
        .expect_err("the send was expected to fail");
    assert_eq!(
        member(&error, "name").as_string().as_deref(),
        Some("ReadyError")
    );
    assert!(error.is_instance_of::<js_sys::Error>(), "a real Error");
    error
}

fn kind(error: &JsValue) -> String {
    member(error, "kind").as_string().unwrap_or_default()
}

#[wasm_bindgen_test]
async fn messages_sent_before_the_socket_opens_arrive_after_connection_ready_in_order() {
    let _server = Exclusive::take().await;
    let client = client("before-open", "");
    let received = collect(&client, "message");
    let sends: Vec<Promise> = (0..5).map(|n| send_number(&client, n)).collect();
    assert_eq!(client.state(), "connecting", "nothing is open yet");
    assert_eq!(stat(&client, "pending"), 5.0, "all five are held");
    acknowledged(sends).await;
    wait_until("five echoes", || received.borrow().len() == 5).await;
    assert_eq!(numbers(&received), vec![0, 1, 2, 3, 4]);
    assert_eq!(stat(&client, "pending"), 0.0);
    JsFuture::from(client.close()).await.expect("closes");
}

#[wasm_bindgen_test]
async fn a_slowly_starting_server_gets_the_messages_once_it_is_ready() {
    let _server = Exclusive::take().await;
    control("/restart?startup_delay_ms=1500").await;
    let client = client("slow-start", "");
    let received = collect(&client, "message");
    let sends: Vec<Promise> = (0..3).map(|n| send_number(&client, n)).collect();
    sleep(700).await;
    assert_ne!(client.state(), "ready", "the server is still starting");
    assert_eq!(
        stat(&client, "pending"),
        3.0,
        "held while the server starts"
    );
    assert!(received.borrow().is_empty());
    acknowledged(sends).await;
    wait_until("three echoes", || received.borrow().len() == 3).await;
    assert_eq!(numbers(&received), vec![0, 1, 2]);
    assert_eq!(stat(&client, "connections"), 1.0, "no reconnect was needed");
    JsFuture::from(client.close()).await.expect("closes");
    control("/restart").await;
}

#[wasm_bindgen_test]
async fn a_dropped_connection_resumes_without_loss_or_duplicates() {
    let _server = Exclusive::take().await;
    let client = client("dropped", "");
    let received = collect(&client, "message");
    JsFuture::from(client.ready()).await.expect("ready");
    let mut sends: Vec<Promise> = (0..10).map(|n| send_number(&client, n)).collect();
    control("/drop").await;
    sends.extend((10..20).map(|n| send_number(&client, n)));
    acknowledged(sends).await;
    wait_until("twenty echoes", || received.borrow().len() >= 20).await;
    sleep(200).await;
    assert_eq!(numbers(&received), (0..20).collect::<Vec<_>>());
    assert!(
        stat(&client, "connections") >= 2.0,
        "the client reconnected"
    );
    let info = JsFuture::from(client.ready()).await.expect("ready again");
    assert_eq!(
        member(&info, "resumed"),
        JsValue::TRUE,
        "the session resumed"
    );
    JsFuture::from(client.close()).await.expect("closes");
}

#[wasm_bindgen_test]
async fn a_server_restart_that_lost_the_session_is_reported_and_unacked_messages_are_sent_again() {
    let _server = Exclusive::take().await;
    let client = client("restarted", "");
    let received = collect(&client, "message");
    let resets = collect(&client, "reset");
    JsFuture::from(client.ready()).await.expect("ready");
    control("/stall").await;
    let sends: Vec<Promise> = (0..3).map(|n| send_number(&client, n)).collect();
    wait_until("three messages in flight", || {
        stat(&client, "inFlight") == 3.0
    })
    .await;
    control("/restart").await;
    acknowledged(sends).await;
    wait_until("the reset event", || !resets.borrow().is_empty()).await;
    let reset = resets.borrow()[0].clone();
    assert_eq!(member(&reset, "resent").as_f64(), Some(3.0));
    assert!(member(&reset, "previousSessionId").is_string());
    wait_until("three echoes", || received.borrow().len() >= 3).await;
    sleep(200).await;
    assert_eq!(numbers(&received), vec![0, 1, 2]);
    JsFuture::from(client.close()).await.expect("closes");
}

#[wasm_bindgen_test]
async fn send_may_be_called_from_inside_a_message_callback() {
    let _server = Exclusive::take().await;
    let client = Rc::new(client("reentrant", ""));
    let received = collect(&client, "message");
    let replies = Rc::new(RefCell::new(Vec::<Promise>::new()));
    let (inner, sink) = (Rc::clone(&client), Rc::clone(&replies));
    let callback = Closure::<dyn FnMut(JsValue)>::new(move |message: JsValue| {
        if member(&message, "n").as_f64() == Some(1.0) {
            sink.borrow_mut().push(send_number(&inner, 2));
        }
    });
    client
        .on(
            "message",
            callback.as_ref().unchecked_ref::<Function>().clone(),
        )
        .expect("a known event");
    acknowledged(vec![send_number(&client, 1)]).await;
    wait_until("the reply's echo", || received.borrow().len() == 2).await;
    assert_eq!(numbers(&received), vec![1, 2]);
    let reply = replies.borrow_mut().pop().expect("the callback sent");
    acknowledged(vec![reply]).await;
    client
        .off("message", callback.as_ref().unchecked_ref())
        .expect("removed");
    JsFuture::from(client.close()).await.expect("closes");
}

#[wasm_bindgen_test]
async fn refused_expired_and_closed_messages_reject_with_typed_errors() {
    let _server = Exclusive::take().await;
    // The server's frame limit is 64 KiB: a bigger message is refused, never sent.
    let client = client("refused", "");
    let big = "x".repeat(70_000);
    let error = rejection(client.send(json(&format!(r#"{{"big":"{big}"}}"#)), None)).await;
    assert_eq!(kind(&error), "refused");
    assert_eq!(
        member(&error, "code").as_string().as_deref(),
        Some("too_large")
    );
    acknowledged(vec![send_number(&client, 1)]).await;
    JsFuture::from(client.close()).await.expect("closes");

    control("/stop").await;
    let client = self::client("expired", "");
    let ttl = json(r#"{"ttlMs":300}"#);
    let error = rejection(client.send(json(r#"{"n":1}"#), Some(ttl.unchecked_into()))).await;
    assert_eq!(kind(&error), "expired");

    let waiting = send_number(&client, 2);
    let closed = client.close();
    let error = rejection(waiting).await;
    assert_eq!(kind(&error), "closed");
    JsFuture::from(closed).await.expect("closes");
    let error = rejection(send_number(&client, 3)).await;
    assert_eq!(kind(&error), "closed", "a closed client refuses at once");
    control("/restart").await;
}

#[wasm_bindgen_test]
async fn an_async_token_provider_supplies_the_credentials() {
    let _server = Exclusive::take().await;
    let user = format!("provided-{}", (js_sys::Math::random() * 1e9) as u64);
    let calls = Rc::new(RefCell::new(0));
    let counter = Rc::clone(&calls);
    let provider = Closure::<dyn FnMut() -> Promise>::new(move || {
        *counter.borrow_mut() += 1;
        Promise::resolve(&JsValue::from_str(&user))
    });
    let options = json(r#"{"backoffInitialMs":50}"#);
    Reflect::set(&options, &"tokenProvider".into(), provider.as_ref()).expect("set");
    let client = ReadyClient::new(ws_url(), Some(options.unchecked_into())).expect("a client");
    let received = collect(&client, "message");
    acknowledged(vec![send_number(&client, 7)]).await;
    wait_until("the echo", || received.borrow().len() == 1).await;
    assert_eq!(numbers(&received), vec![7]);
    assert_eq!(*calls.borrow(), 1, "asked once per connection");
    JsFuture::from(client.close()).await.expect("closes");
    drop(provider);
}

#[wasm_bindgen_test]
async fn the_online_event_ends_a_long_backoff_at_once() {
    let _server = Exclusive::take().await;
    // A backoff of at least 20 s: without the wake-up the client would still be waiting when
    // this test gives up.
    let options = r#","backoffInitialMs":20000,"backoffMaxMs":60000"#;
    let user = format!("online-{}", (js_sys::Math::random() * 1e9) as u64);
    let client = ReadyClient::new(
        ws_url(),
        Some(json(&format!(r#"{{"token":"{user}"{options}}}"#)).unchecked_into()),
    )
    .expect("a client");
    JsFuture::from(client.ready()).await.expect("ready");
    control("/stop").await;
    wait_until("the client to wait before reconnecting", || {
        client.state() == "reconnecting"
    })
    .await;
    control("/restart").await;
    let window = web_sys::window().expect("a window");
    let online = web_sys::Event::new("online").expect("an event");
    window.dispatch_event(&online).expect("dispatched");
    let started = js_sys::Date::now();
    wait_until("the client to be ready again", || client.state() == "ready").await;
    assert!(
        js_sys::Date::now() - started < 5_000.0,
        "the reconnect did not wait out the backoff"
    );
    acknowledged(vec![send_number(&client, 1)]).await;
    JsFuture::from(client.close()).await.expect("closes");
}

/// How many connections the harness's proxy has open.
async fn open_connections() -> u32 {
    let url = format!(
        "{}/connections",
        setting(option_env!("READYWS_BROWSER_CONTROL"))
    );
    let window = web_sys::window().expect("a window");
    let response: web_sys::Response = JsFuture::from(window.fetch_with_str(&url))
        .await
        .expect("the harness answers")
        .unchecked_into();
    let text = JsFuture::from(response.text().expect("a body"))
        .await
        .expect("text");
    text.as_string()
        .and_then(|text| text.parse().ok())
        .expect("a count")
}

#[wasm_bindgen_test]
async fn a_client_freed_without_close_releases_its_socket() {
    let _server = Exclusive::take().await;
    // Every earlier test closed its clients; their sockets may still be closing.
    let started = js_sys::Date::now();
    while open_connections().await > 0 {
        assert!(
            js_sys::Date::now() - started < 10_000.0,
            "earlier sockets stay open"
        );
        sleep(50).await;
    }
    let client = client("freed", "");
    JsFuture::from(client.ready()).await.expect("ready");
    assert_eq!(open_connections().await, 1);
    drop(client);
    let started = js_sys::Date::now();
    while open_connections().await > 0 {
        assert!(
            js_sys::Date::now() - started < 10_000.0,
            "the freed client's socket is still open after 10 s"
        );
        sleep(50).await;
    }
    // Its listeners are gone too: a wake-up event reaches no freed closure.
    let window = web_sys::window().expect("a window");
    let online = web_sys::Event::new("online").expect("an event");
    window.dispatch_event(&online).expect("dispatched");
}
