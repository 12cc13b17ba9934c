//! The application payload of a `msg` frame.

use core::fmt;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// One JSON value carried by a `msg` frame, kept as the exact text the sender wrote.
///
/// Keeping the text avoids parsing a payload into a tree the protocol never looks at, and lets
/// the outbox count its size in bytes exactly as it travels.
#[derive(Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Data(Box<RawValue>);

impl Data {
    /// Checks that `json` is one JSON value and keeps it as written.
    pub fn from_json(json: impl Into<String>) -> Result<Self, serde_json::Error> {
        RawValue::from_string(json.into()).map(Data)
    }

    /// Serializes `value` as JSON.
    pub fn serialize<T: Serialize + ?Sized>(value: &T) -> Result<Self, serde_json::Error> {
        serde_json::value::to_raw_value(value).map(Data)
    }

    /// Deserializes the value into `T`.
    pub fn deserialize<'a, T: Deserialize<'a>>(&'a self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.0.get())
    }

    /// The JSON text.
    pub fn as_json(&self) -> &str {
        self.0.get()
    }

    /// The size of the JSON text in bytes.
    pub fn len(&self) -> usize {
        self.0.get().len()
    }

    /// Whether the JSON text is empty (never, for a valid value).
    pub fn is_empty(&self) -> bool {
        self.0.get().is_empty()
    }
}

impl PartialEq for Data {
    /// Two payloads are equal when their JSON texts are: `{"a":1}` and `{ "a": 1 }` differ.
    fn eq(&self, other: &Self) -> bool {
        self.as_json() == other.as_json()
    }
}

impl Eq for Data {}

impl fmt::Debug for Data {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Data({})", self.as_json())
    }
}
