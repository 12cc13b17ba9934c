//! The JSON this protocol needs, read and written by hand (RFC 8259).
//!
//! Frames are small flat objects of strings, integers and booleans, plus one opaque value
//! (`msg.data`) that is kept as text. A general-purpose parser brings a deserializer per frame
//! type and an error machinery the browser build pays for in every download, so the codec uses
//! this reader instead: one validating scan, then typed reads of the members it names. The
//! reader never recurses (nesting is tracked on a heap stack), so no input can overflow the
//! stack; `tests/json_matches_serde_json.rs` checks it against `serde_json` on valid and
//! invalid text alike.

use crate::prelude::*;
use alloc::borrow::Cow;

/// How deeply arrays and objects may nest, the same limit `serde_json` applies.
pub(crate) const MAX_DEPTH: usize = 128;

/// Text that is not one JSON value: where the reader stopped and what it expected there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidJson {
    /// The byte offset at which the text stopped being JSON.
    pub at: usize,
    /// What was wrong there.
    pub problem: &'static str,
}

impl InvalidJson {
    /// The error's text, as its `Display` writes it.
    pub fn message(&self) -> String {
        crate::text::Text::from("invalid JSON at byte ")
            .size(self.at)
            .s(": ")
            .s(self.problem)
            .done()
    }
}

crate::text::display_by_message!(InvalidJson);

impl core::error::Error for InvalidJson {}

/// One member of an object: its key (unescaped) and the exact text of its value.
pub(crate) struct Member<'a> {
    pub(crate) key: Cow<'a, str>,
    pub(crate) value: &'a str,
}

/// Checks that `text` is exactly one JSON value, with optional whitespace around it, and returns
/// the value's text without that whitespace.
pub(crate) fn validate(text: &str) -> Result<&str, InvalidJson> {
    validate_whole(&mut Reader::new(text))
}

/// Like [`validate`], for a whole frame: a lone surrogate escape (`"\ud800"`) is valid JSON
/// grammar (RFC 8259 §8.2) and only noted, since which member holds it decides whether the frame
/// is invalid or one message is [FR-9]. Returns the value's text and whether it holds one.
pub(crate) fn validate_frame(text: &str) -> Result<(&str, bool), InvalidJson> {
    let mut reader = Reader::new(text);
    reader.lone_surrogates = LoneSurrogates::Noted(false);
    let value = validate_whole(&mut reader)?;
    Ok((value, reader.lone_surrogates == LoneSurrogates::Noted(true)))
}

fn validate_whole<'a>(reader: &mut Reader<'a>) -> Result<&'a str, InvalidJson> {
    let text = reader.text;
    reader.whitespace();
    let start = reader.pos;
    reader.skip_value()?;
    let end = reader.pos;
    reader.whitespace();
    if reader.pos != text.len() {
        return Err(reader.error("trailing characters after the JSON value"));
    }
    Ok(cut(text, start..end))
}

/// The members of `object`, a JSON object's text that [`validate`] accepted, in order.
///
/// Returns `None` when `object` is valid JSON but not an object.
/// A whole frame that is a well-formed object, in one pass: its members, and whether it holds a
/// lone surrogate escape (as [`validate_frame`] notes it). `None` for anything else (not an
/// object, or not valid), which the caller then reads the long way, [`validate_frame`] then
/// [`members`], for the same answer and error as always: only the common case is sped up, and
/// the payload, most of a frame's bytes, is scanned once instead of twice.
#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn frame_members(text: &str) -> Option<(Vec<Member<'_>>, bool)> {
    let mut reader = Reader::new(text);
    reader.lone_surrogates = LoneSurrogates::Noted(false);
    let members = object_members(&mut reader).ok()??;
    reader.whitespace();
    (reader.pos == text.len()).then(|| {
        (
            members,
            reader.lone_surrogates == LoneSurrogates::Noted(true),
        )
    })
}

pub(crate) fn members(object: &str) -> Result<Option<Vec<Member<'_>>>, InvalidJson> {
    let mut reader = Reader::new(object);
    // Values are skipped as grammar, as [`validate_frame`] checked them; each typed read (a
    // string, a payload) then checks what it needs.
    reader.lone_surrogates = LoneSurrogates::Noted(false);
    object_members(&mut reader)
}

/// The members of the object `reader` is at (after optional whitespace), or `None` if it is not
/// at an object; stops after its `}`.
fn object_members<'a>(reader: &mut Reader<'a>) -> Result<Option<Vec<Member<'a>>>, InvalidJson> {
    let object = reader.text;
    reader.whitespace();
    if reader.peek() != Some(b'{') {
        return Ok(None);
    }
    reader.pos += 1;
    let mut members = Vec::new();
    reader.whitespace();
    if reader.peek() == Some(b'}') {
        return Ok(Some(members));
    }
    loop {
        reader.whitespace();
        let key = reader.string()?;
        reader.whitespace();
        reader.expect(b':', "expected `:` after an object key")?;
        reader.whitespace();
        let start = reader.pos;
        reader.skip_value()?;
        members.push(Member {
            key,
            value: cut(object, start..reader.pos),
        });
        reader.whitespace();
        match reader.next() {
            Some(b',') => {}
            Some(b'}') => return Ok(Some(members)),
            _ => return Err(reader.error("expected `,` or `}` in an object")),
        }
    }
}

/// Reads a JSON string's text (with its quotes) into the string it denotes.
pub(crate) fn string(text: &str) -> Result<Cow<'_, str>, InvalidJson> {
    let mut reader = Reader::new(text);
    let value = reader.string()?;
    if reader.pos != text.len() {
        return Err(reader.error("trailing characters after the string"));
    }
    Ok(value)
}

/// Appends `value` to `out` as a JSON string, escaped as `serde_json` escapes it.
pub(crate) fn write_string(out: &mut String, value: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push('"');
    let mut plain_from = 0;
    for (at, byte) in value.bytes().enumerate() {
        let short = match byte {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0x00..=0x1f => "",
            _ => continue,
        };
        out.push_str(cut(value, plain_from..at));
        plain_from = at + 1;
        if short.is_empty() {
            out.push_str("\\u00");
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 0xf)]));
        } else {
            out.push_str(short);
        }
    }
    out.push_str(cut(value, plain_from..value.len()));
    out.push('"');
}

const LEADING_ALONE: &str = "a leading surrogate must be followed by `\\u`";
const LEADING_UNPAIRED: &str = "a leading surrogate must be followed by a trailing one";
const TRAILING_ALONE: &str = "a trailing surrogate without a leading one";

/// Whether `error` is an escape that is half a surrogate pair.
fn is_lone_surrogate(error: &InvalidJson) -> bool {
    [LEADING_ALONE, LEADING_UNPAIRED, TRAILING_ALONE].contains(&error.problem)
}

/// What a reader does with an escape that is half a surrogate pair.
#[derive(Clone, Copy, PartialEq, Eq)]
enum LoneSurrogates {
    /// An error: the string denotes no text.
    Refused,
    /// Accepted as grammar, and whether one was seen.
    Noted(bool),
}

struct Reader<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
    lone_surrogates: LoneSurrogates,
}

impl<'a> Reader<'a> {
    fn new(text: &'a str) -> Self {
        Reader {
            text,
            bytes: text.as_bytes(),
            pos: 0,
            lone_surrogates: LoneSurrogates::Refused,
        }
    }

    fn error(&self, problem: &'static str) -> InvalidJson {
        InvalidJson {
            at: self.pos,
            problem,
        }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let byte = self.peek()?;
        self.pos += 1;
        Some(byte)
    }

    fn expect(&mut self, byte: u8, problem: &'static str) -> Result<(), InvalidJson> {
        if self.peek() == Some(byte) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.error(problem))
        }
    }

    fn whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    /// Skips one value of any kind, checking its syntax, without recursion.
    fn skip_value(&mut self) -> Result<(), InvalidJson> {
        // The closing byte of every array or object that is open, innermost last.
        let mut open: Vec<u8> = Vec::new();
        loop {
            // A value starts here.
            self.whitespace();
            match self.peek() {
                Some(b'{') | Some(b'[') => {
                    if open.len() >= MAX_DEPTH - 1 {
                        return Err(self.error("arrays and objects nest too deeply"));
                    }
                    let closer = if self.peek() == Some(b'{') {
                        b'}'
                    } else {
                        b']'
                    };
                    self.pos += 1;
                    self.whitespace();
                    if self.peek() == Some(closer) {
                        self.pos += 1;
                    } else {
                        open.push(closer);
                        if closer == b'}' {
                            self.object_key()?;
                        }
                        continue;
                    }
                }
                Some(b'"') => {
                    self.skip_string()?;
                }
                Some(b't') => self.literal("true")?,
                Some(b'f') => self.literal("false")?,
                Some(b'n') => self.literal("null")?,
                Some(b'-' | b'0'..=b'9') => self.skip_number()?,
                Some(_) => return Err(self.error("expected a JSON value")),
                None => return Err(self.error("the text ends where a value should start")),
            }
            // A value ended: close every container that ends here, or move to the next element.
            loop {
                let Some(&closer) = open.last() else {
                    return Ok(());
                };
                self.whitespace();
                match self.next() {
                    Some(b',') => {
                        if closer == b'}' {
                            self.whitespace();
                            self.object_key()?;
                        }
                        break;
                    }
                    Some(byte) if byte == closer => {
                        open.pop();
                    }
                    None => return Err(self.error("the text ends inside an array or object")),
                    Some(_) if closer == b'}' => {
                        self.pos -= 1;
                        return Err(self.error("expected `,` or `}` in an object"));
                    }
                    Some(_) => {
                        self.pos -= 1;
                        return Err(self.error("expected `,` or `]` in an array"));
                    }
                }
            }
        }
    }

    /// Skips `"key":` inside an object.
    fn object_key(&mut self) -> Result<(), InvalidJson> {
        self.whitespace();
        if self.peek() != Some(b'"') {
            return Err(self.error("expected a string key in an object"));
        }
        self.skip_string()?;
        self.whitespace();
        self.expect(b':', "expected `:` after an object key")
    }

    fn literal(&mut self, word: &'static str) -> Result<(), InvalidJson> {
        if self.bytes[self.pos..].starts_with(word.as_bytes()) {
            self.pos += word.len();
            Ok(())
        } else {
            Err(self.error("expected `true`, `false` or `null`"))
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.pos;
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
        self.pos - start
    }

    fn skip_number(&mut self) -> Result<(), InvalidJson> {
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => {
                self.pos += 1;
                if let Some(b'0'..=b'9') = self.peek() {
                    return Err(self.error("a number may not have a leading zero"));
                }
            }
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(self.error("expected a digit")),
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            if self.digits() == 0 {
                return Err(self.error("expected a digit after the decimal point"));
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            if self.digits() == 0 {
                return Err(self.error("expected a digit in the exponent"));
            }
        }
        Ok(())
    }

    /// Skips a string, checking its escapes, and returns whether it had any.
    fn skip_string(&mut self) -> Result<bool, InvalidJson> {
        self.expect(b'"', "expected a string")?;
        let mut escaped = false;
        loop {
            self.skip_plain();
            match self.next() {
                Some(b'"') => return Ok(escaped),
                Some(b'\\') => {
                    escaped = true;
                    match self.next() {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => {}
                        // A lone surrogate denotes no character: such a string cannot be
                        // turned into text by any peer, so the value is invalid [FR-9].
                        Some(b'u') => match (self.code_point(), self.lone_surrogates) {
                            (Ok(_), _) => {}
                            // The escape's hex digits are read: the string goes on after them.
                            (Err(error), LoneSurrogates::Noted(_)) if is_lone_surrogate(&error) => {
                                self.lone_surrogates = LoneSurrogates::Noted(true);
                            }
                            (Err(error), _) => return Err(error),
                        },
                        _ => {
                            self.pos -= 1;
                            return Err(self.error("invalid escape in a string"));
                        }
                    }
                }
                Some(0x00..=0x1f) => {
                    self.pos -= 1;
                    return Err(self.error("control character in a string"));
                }
                Some(_) => {}
                None => return Err(self.error("the text ends inside a string")),
            }
        }
    }

    /// Skips the bytes of a string that need no attention: anything but `"`, `\\` and control
    /// characters. Payload strings are mostly such bytes, so they are taken 32 at a time, then
    /// eight, then one by one up to the byte that needs attention.
    fn skip_plain(&mut self) {
        const ONES: u64 = 0x0101_0101_0101_0101;
        const HIGHS: u64 = 0x8080_8080_8080_8080;
        // Nonzero when some byte of `word` is zero (the usual bit trick; exact for "any").
        let has_zero = |word: u64| word.wrapping_sub(ONES) & !word & HIGHS;
        // Nonzero when some byte of `word` is a quote, a backslash or a control character (a
        // byte below 0x20 has its three high bits clear).
        let special = |word: u64| {
            has_zero(word ^ (ONES * u64::from(b'"')))
                | has_zero(word ^ (ONES * u64::from(b'\\')))
                | has_zero(word & (ONES * 0xe0))
        };
        let word_at = |chunk: &[u8], at: usize| {
            let mut word = [0u8; 8];
            word.copy_from_slice(&chunk[at..at + 8]);
            u64::from_le_bytes(word)
        };
        // Four words per test, one branch for 32 bytes: `Data::from_json` of a 1 KiB string
        // took 200 ns with one branch per eight bytes, and takes 108 ns so. Not in the browser
        // build, which is over its size budget: this loop added 116 bytes to its gzipped package.
        #[cfg(not(target_arch = "wasm32"))]
        while let Some(chunk) = self.bytes.get(self.pos..self.pos + 32) {
            let any = special(word_at(chunk, 0))
                | special(word_at(chunk, 8))
                | special(word_at(chunk, 16))
                | special(word_at(chunk, 24));
            if any != 0 {
                break;
            }
            self.pos += 32;
        }
        while let Some(chunk) = self.bytes.get(self.pos..self.pos + 8) {
            if special(word_at(chunk, 0)) != 0 {
                break;
            }
            self.pos += 8;
        }
        while let Some(&byte) = self.bytes.get(self.pos) {
            if byte == b'"' || byte == b'\\' || byte < 0x20 {
                return;
            }
            self.pos += 1;
        }
    }

    fn hex4(&mut self) -> Result<u16, InvalidJson> {
        let mut value = 0u16;
        for _ in 0..4 {
            let digit = match self.peek() {
                Some(byte @ b'0'..=b'9') => byte - b'0',
                Some(byte @ b'a'..=b'f') => byte - b'a' + 10,
                Some(byte @ b'A'..=b'F') => byte - b'A' + 10,
                _ => return Err(self.error("expected four hex digits after `\\u`")),
            };
            self.pos += 1;
            value = value << 4 | u16::from(digit);
        }
        Ok(value)
    }

    /// Reads a string into the text it denotes, borrowing when it has no escapes.
    fn string(&mut self) -> Result<Cow<'a, str>, InvalidJson> {
        let start = self.pos;
        if !self.skip_string()? {
            return Ok(Cow::Borrowed(cut(self.text, start + 1..self.pos - 1)));
        }
        let end = self.pos;
        self.pos = start + 1;
        let mut out = String::with_capacity(end - start);
        let mut plain_from = self.pos;
        while self.pos < end - 1 {
            if self.bytes[self.pos] != b'\\' {
                self.pos += 1;
                continue;
            }
            out.push_str(cut(self.text, plain_from..self.pos));
            self.pos += 1;
            let escape = self.bytes[self.pos];
            self.pos += 1;
            out.push(match escape {
                b'b' => '\u{8}',
                b'f' => '\u{c}',
                b'n' => '\n',
                b'r' => '\r',
                b't' => '\t',
                b'u' => self.unicode_escape()?,
                other => char::from(other),
            });
            plain_from = self.pos;
        }
        out.push_str(cut(self.text, plain_from..end - 1));
        self.pos = end;
        Ok(Cow::Owned(out))
    }

    /// Decodes the code point after `\u`, joining a surrogate pair written as two escapes.
    fn unicode_escape(&mut self) -> Result<char, InvalidJson> {
        let code = self.code_point()?;
        char::from_u32(code).ok_or_else(|| self.error("invalid code point"))
    }

    /// Reads the escape after `\u` (and its trailing half, for a surrogate pair) as one code
    /// point; a surrogate without its other half is an error.
    fn code_point(&mut self) -> Result<u32, InvalidJson> {
        let first = self.hex4()?;
        match first {
            0xd800..=0xdbff => {
                if self.bytes.get(self.pos..self.pos + 2) != Some(b"\\u".as_slice()) {
                    return Err(self.error(LEADING_ALONE));
                }
                self.pos += 2;
                let second = self.hex4()?;
                if !(0xdc00..=0xdfff).contains(&second) {
                    return Err(self.error(LEADING_UNPAIRED));
                }
                Ok(0x10000 + ((u32::from(first) - 0xd800) << 10) + (u32::from(second) - 0xdc00))
            }
            0xdc00..=0xdfff => Err(self.error(TRAILING_ALONE)),
            other => Ok(u32::from(other)),
        }
    }
}

/// `text[range]` for a range whose ends the reader found at ASCII bytes, which are always char
/// boundaries. `get` instead of indexing keeps the panicking path, and the formatting code it
/// brings, out of the browser build; were an end ever wrong, the result would be empty text,
/// not a crash.
pub(crate) fn cut(text: &str, range: core::ops::Range<usize>) -> &str {
    text.get(range).unwrap_or_default()
}

/// Appends `value` in decimal.
pub(crate) fn write_u64(out: &mut String, mut value: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    for &digit in &digits[at..] {
        out.push(char::from(digit));
    }
}

/// Reads an integer member: digits only (no sign, fraction or exponent), at most `u64::MAX`.
///
/// `Err(true)` means the value is a number of another form, `Err(false)` that it is not a number.
pub(crate) fn unsigned(value: &str) -> Result<u64, bool> {
    let bytes = value.as_bytes();
    if !matches!(bytes.first(), Some(b'-' | b'0'..=b'9')) {
        return Err(false);
    }
    let mut result = 0u64;
    for &byte in bytes {
        if !byte.is_ascii_digit() {
            return Err(true);
        }
        result = result
            .checked_mul(10)
            .and_then(|r| r.checked_add(u64::from(byte - b'0')))
            .ok_or(true)?;
    }
    Ok(result)
}
