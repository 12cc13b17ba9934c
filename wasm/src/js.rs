//! Small bridges to the JavaScript host's objects, so that the driver reads as protocol steps.
//!
//! Everything goes through `globalThis`, never `window`: a page, a dedicated or shared worker,
//! a service worker, Node.js and Deno all have `setTimeout`, `performance`, `crypto` and (Node 22,
//! or Node 20 with `--experimental-websocket`) `WebSocket` there. The wake-up events exist only in
//! some of them (`online` on a page's or worker's global, `visibilitychange` on a page's document)
//! and are listened to only where the host has them.

use alloc::borrow::ToOwned;
use alloc::string::String;

use js_sys::{Function, Object, Promise, Reflect};
use readyws_protocol::Time;
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use web_sys::{EventTarget, WebSocket};

#[wasm_bindgen]
extern "C" {
    /// `globalThis.setTimeout`. The handle is a number in browsers and an object on Node.
    #[wasm_bindgen(js_name = setTimeout)]
    fn global_set_timeout(handler: &Function, delay: i32) -> JsValue;

    /// `globalThis.clearTimeout`: clears a timer armed by [`set_timeout`].
    #[wasm_bindgen(js_name = clearTimeout)]
    pub(crate) fn clear_timeout(handle: &JsValue);

    /// `globalThis.performance.now()`.
    #[wasm_bindgen(js_namespace = performance, js_name = now)]
    fn performance_now() -> f64;

    /// `globalThis.crypto.getRandomValues(bytes)`.
    #[wasm_bindgen(js_namespace = crypto, js_name = getRandomValues, catch)]
    fn get_random_values(bytes: &mut [u8]) -> Result<JsValue, JsValue>;

    /// `globalThis` itself. Read directly rather than through `global()`, which also
    /// probes `self`, `window` and `global` for hosts older than `globalThis` (ES2020), all of
    /// which this client's other requirements exclude.
    #[wasm_bindgen(thread_local_v2, js_name = globalThis)]
    static GLOBAL_THIS: Object;
}

/// The host's global object.
pub(crate) fn global() -> Object {
    GLOBAL_THIS.with(Clone::clone)
}

/// The resolve and reject functions of one promise handed to the application.
pub(crate) struct Settle {
    resolve: Function,
    reject: Function,
}

impl Settle {
    /// A new promise and the means to settle it.
    pub(crate) fn promise() -> (Promise, Settle) {
        let mut functions = None;
        let promise = Promise::new(&mut |resolve, reject| functions = Some((resolve, reject)));
        // The Promise constructor runs its executor synchronously, always; were it not to, the
        // calls below would fail quietly instead of panicking.
        let (resolve, reject) = functions.unwrap_or_else(|| {
            (
                JsValue::UNDEFINED.unchecked_into(),
                JsValue::UNDEFINED.unchecked_into(),
            )
        });
        (promise, Settle { resolve, reject })
    }

    pub(crate) fn resolve(self, value: &JsValue) {
        let _ = self.resolve.call1(&JsValue::NULL, value);
    }

    pub(crate) fn reject(self, error: JsValue) {
        let _ = self.reject.call1(&JsValue::NULL, &error);
    }
}

/// `performance.now()`: monotonic milliseconds since the host started, which keeps counting
/// while timers are throttled.
pub(crate) fn now() -> Time {
    Time::from_millis(performance_now() as u64)
}

/// A seed for the reconnect jitter from `crypto.getRandomValues`.
pub(crate) fn random_seed() -> Result<u64, JsValue> {
    let mut bytes = [0u8; 8];
    get_random_values(&mut bytes).map_err(|_| {
        JsValue::from_str("readyws needs globalThis.crypto.getRandomValues (Web Crypto)")
    })?;
    Ok(u64::from_le_bytes(bytes))
}

/// `JSON.stringify(value)`, with the reason when it refuses (a `BigInt`, a cycle, `undefined`).
pub(crate) fn stringify(value: &JsValue) -> Result<String, String> {
    match js_sys::JSON::stringify(value) {
        Ok(json) => json
            .as_string()
            .ok_or_else(|| "the value has no JSON form (undefined or a function)".to_owned()),
        Err(error) => Err(describe(&error)),
    }
}

/// A JavaScript string.
pub(crate) fn text(value: &str) -> JsValue {
    JsValue::from_str(value)
}

/// `object[key]`, or `undefined`.
pub(crate) fn get(object: &JsValue, key: &str) -> JsValue {
    Reflect::get(object, &text(key)).unwrap_or(JsValue::UNDEFINED)
}

/// `object[key]` when it is a string.
pub(crate) fn string(object: &JsValue, key: &str) -> Option<String> {
    get(object, key).as_string()
}

/// `object[key]` when it is a finite number of at least zero.
pub(crate) fn number(object: &JsValue, key: &str) -> Option<f64> {
    get(object, key)
        .as_f64()
        .filter(|value| value.is_finite() && *value >= 0.0)
}

/// A plain object with these members.
pub(crate) fn object(members: &[(&str, JsValue)]) -> JsValue {
    let object = Object::new();
    for (key, value) in members {
        let _ = Reflect::set(&object, &text(key), value);
    }
    object.into()
}

/// An `Error` named "ReadyError" with a `kind`, and a `code` and `reason` where there are some.
pub(crate) fn ready_error(
    kind: &str,
    message: &str,
    code: Option<JsValue>,
    reason: Option<&str>,
) -> JsValue {
    let error = js_sys::Error::new(message);
    error.set_name("ReadyError");
    let _ = Reflect::set(&error, &text("kind"), &text(kind));
    if let Some(code) = code {
        let _ = Reflect::set(&error, &text("code"), &code);
    }
    if let Some(reason) = reason {
        let _ = Reflect::set(&error, &text("reason"), &text(reason));
    }
    error.into()
}

/// A readable account of a thrown value.
pub(crate) fn describe(error: &JsValue) -> String {
    if let Some(error) = error.dyn_ref::<js_sys::Error>() {
        return String::from(error.message());
    }
    error
        .as_string()
        .unwrap_or_else(|| "an unknown JavaScript error".to_owned())
}

pub(crate) fn console_error(message: &str) {
    web_sys::console::error_1(&text(message));
}

/// Whether the page is visible (always true outside a document: a worker, Node).
pub(crate) fn page_visible() -> bool {
    !get(&get(&global(), "document"), "hidden").is_truthy()
}

/// `value` as an event target, when it is one.
fn event_target(value: JsValue) -> Option<EventTarget> {
    get(&value, "addEventListener")
        .is_function()
        .then(|| value.unchecked_into())
}

/// `globalThis`, where it takes listeners (a page's window, a worker's global; not Node's).
pub(crate) fn global_target() -> Option<EventTarget> {
    event_target(global().into())
}

/// The document of a page; none in a worker or on Node.
pub(crate) fn document_target() -> Option<EventTarget> {
    event_target(get(&global(), "document"))
}

pub(crate) fn add_listener<T: ?Sized>(
    target: Option<EventTarget>,
    event: &str,
    closure: &Closure<T>,
) {
    if let Some(target) = target {
        let _ = target.add_event_listener_with_callback(event, closure.as_ref().unchecked_ref());
    }
}

pub(crate) fn remove_listener<T: ?Sized>(
    target: Option<EventTarget>,
    event: &str,
    closure: &Closure<T>,
) {
    if let Some(target) = target {
        let _ = target.remove_event_listener_with_callback(event, closure.as_ref().unchecked_ref());
    }
}

/// Arms a timer; the handle clears it.
pub(crate) fn set_timeout<T: ?Sized>(closure: &Closure<T>, delay_ms: u64) -> JsValue {
    let delay = i32::try_from(delay_ms).unwrap_or(i32::MAX);
    global_set_timeout(closure.as_ref().unchecked_ref(), delay)
}

/// Closes a socket with a protocol close code. Browsers accept only 1000 and 3000–4999 from a
/// page; anything else closes with 1000.
pub(crate) fn close_socket(socket: &WebSocket, code: u16, reason: &str) {
    let code = if code == 1000 || (3000..=4999).contains(&code) {
        code
    } else {
        1000
    };
    if socket.close_with_code_and_reason(code, reason).is_err() {
        let _ = socket.close();
    }
}

/// Calls the application's token provider and hands `then` its token, or why there is none.
/// A provider may answer with a string or with a promise of one.
pub(crate) fn fresh_token(
    provider: &Function,
    then: impl FnOnce(Result<String, String>) + 'static,
) {
    let answer = match provider.call0(&JsValue::NULL) {
        Ok(answer) => answer,
        Err(error) => return then(Err(describe(&error))),
    };
    // One self-freeing callback serves both outcomes, bound to `true` (a token) or `false`
    // (a failure): exactly one of them runs, so nothing is left behind per fetch.
    let settle = Closure::once_into_js(move |fulfilled: JsValue, value: JsValue| {
        then(if fulfilled.is_truthy() {
            value
                .as_string()
                .ok_or_else(|| "the token provider did not give a string".to_owned())
        } else {
            Err(describe(&value))
        });
    });
    let settle: &Function = settle.unchecked_ref();
    let on_token = settle.bind1(&JsValue::NULL, &JsValue::TRUE);
    let on_failure = settle.bind1(&JsValue::NULL, &JsValue::FALSE);
    let promise: JsValue = Promise::resolve(&answer).into();
    if let Ok(then) = get(&promise, "then").dyn_into::<Function>() {
        let _ = then.call2(&promise, &on_token, &on_failure);
    }
}
