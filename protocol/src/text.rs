//! Error and close-reason texts, built by concatenation instead of `core::fmt`.
//!
//! The browser build links no `Display` machinery when nothing formats: each type's text is
//! written once here (its `message()`), its `Display` writes that text, and the browser client
//! asks for the text directly. Native builds see the same words either way.

use crate::prelude::*;

/// A text under construction: pieces of text and decimal numbers, appended in order.
#[derive(Debug, Default)]
pub(crate) struct Text(String);

impl Text {
    /// A text that starts with `piece`.
    pub(crate) fn from(piece: &str) -> Text {
        Text(piece.to_owned())
    }

    /// The text followed by `piece`.
    pub(crate) fn s(mut self, piece: &str) -> Text {
        self.0.push_str(piece);
        self
    }

    /// The text followed by `n` in decimal.
    pub(crate) fn n(mut self, n: impl Into<u64>) -> Text {
        crate::json::write_u64(&mut self.0, n.into());
        self
    }

    /// The text followed by `n` in decimal.
    pub(crate) fn size(self, n: usize) -> Text {
        // `usize` is at most 64 bits on every target this crate builds for.
        self.n(n as u64)
    }

    /// The finished text.
    pub(crate) fn done(self) -> String {
        self.0
    }
}

/// Implements `Display` by writing the type's `message()`.
macro_rules! display_by_message {
    ($($name:ty),+ $(,)?) => {$(
        impl core::fmt::Display for $name {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                f.write_str(&self.message())
            }
        }
    )+};
}
pub(crate) use display_by_message;

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::format;

    #[test]
    fn numbers_read_as_decimal() {
        for n in [0u64, 7, 10, 4999, u64::MAX] {
            assert_eq!(Text::from("n=").n(n).done(), format!("n={n}"));
        }
    }
}
