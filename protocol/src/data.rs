//! The application payload of a `msg` frame.

use crate::prelude::*;
use alloc::sync::Arc;
use core::fmt;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

use crate::json::{self, InvalidJson};

/// One JSON value carried by a `msg` frame, kept as the exact text the sender wrote.
///
/// Keeping the text avoids parsing a payload into a tree the protocol never looks at, and lets
/// the outbox count its size in bytes exactly as it travels. The text is shared, not copied, by
/// clones: a server that holds one message for a user and queues it on each of the user's
/// sessions keeps one payload and a reference per session.
#[derive(Clone)]
pub struct Data(Arc<str>);

impl Data {
    /// Checks that `json` is one JSON value and keeps it as written, without the whitespace
    /// around it.
    pub fn from_json(json: impl Into<String>) -> Result<Self, InvalidJson> {
        let json = json.into();
        let value = json::validate(&json)?;
        if value.len() == json.len() {
            Ok(Data(Arc::from(json)))
        } else {
            Ok(Data(value.into()))
        }
    }

    /// Keeps text that the codec has already checked.
    pub(crate) fn from_validated(json: &str) -> Self {
        Data(json.into())
    }

    /// Serializes `value` as JSON.
    pub fn serialize<T: Serialize + ?Sized>(value: &T) -> Result<Self, serde_json::Error> {
        serde_json::to_string(value).map(|json| Data(Arc::from(json)))
    }

    /// Deserializes the value into `T`.
    pub fn deserialize<'a, T: Deserialize<'a>>(&'a self) -> Result<T, serde_json::Error> {
        serde_json::from_str(&self.0)
    }

    /// The JSON text.
    pub fn as_json(&self) -> &str {
        &self.0
    }

    /// The size of the JSON text in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the JSON text is empty (never, for a valid value).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Serialize for Data {
    /// Writes the JSON text as it is (with `serde_json`; other formats see a raw JSON value).
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let raw: &RawValue = serde_json::from_str(&self.0).map_err(serde::ser::Error::custom)?;
        raw.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Data {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = Box::<RawValue>::deserialize(deserializer)?;
        Data::from_json(raw.get()).map_err(D::Error::custom)
    }
}

impl PartialEq for Data {
    /// Two payloads are equal when their JSON texts are: `{"a":1}` and `{ "a": 1 }` differ.
    fn eq(&self, other: &Self) -> bool {
        // Copies of one payload share their text: no need to read it.
        Arc::ptr_eq(&self.0, &other.0) || self.as_json() == other.as_json()
    }
}

impl Eq for Data {}

impl fmt::Debug for Data {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Data({})", self.as_json())
    }
}
