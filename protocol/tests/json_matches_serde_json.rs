//! The codec reads and writes JSON by hand (so that the browser build does not carry a general
//! parser). These tests hold it to `serde_json` and to the frame types' serde derives: the same
//! text is accepted and rejected, the same values come out, and encoding writes byte for byte
//! what `serde_json` writes. Inputs are the conformance vectors and tens of thousands of seeded
//! mutations of them.

use readyws_protocol::codec::{decode, encode};
use readyws_protocol::frame::{ConnectionReady, Goaway, Hello, Msg, Nack, Ping, Pong, Welcome};
use readyws_protocol::{Data, DecodeError, Frame, FrameKind, Role};
use serde::de::DeserializeOwned;
use serde_json::Value;
use serde_json::value::RawValue;

const MUTATIONS_PER_VECTOR: usize = 400;

fn vector_texts() -> Vec<(String, Role)> {
    let vectors: Value =
        serde_json::from_str(readyws_protocol::conformance::FRAMES).expect("frames.json is JSON");
    ["valid", "invalid"]
        .iter()
        .flat_map(|group| vectors[group].as_array().expect("a list").iter())
        .map(|vector| {
            let role = match vector["sender"].as_str() {
                Some("server") => Role::Server,
                _ => Role::Client,
            };
            (vector["text"].as_str().expect("`text`").to_owned(), role)
        })
        .collect()
}

/// A seeded edit of `text` that keeps it UTF-8: delete, insert or repeat a few characters.
fn mutate(text: &str, rng: &mut fastrand::Rng) -> String {
    const PIECES: &[&str] = &[
        "{",
        "}",
        "[",
        "]",
        "\"",
        ",",
        ":",
        "0",
        "1",
        "9",
        "-",
        ".",
        "e",
        "E",
        "+",
        " ",
        "\\",
        "\\u",
        "d83d",
        "\\ude00",
        "n",
        "null",
        "true",
        "false",
        "é",
        "\u{1}",
        "\"id\":2",
        "\"type\":\"ack\"",
        "1.5",
        "1e3",
        "01",
        "-0",
        "9007199254740992",
        "\"x\"",
        "99999999999999999999999",
    ];
    let mut chars: Vec<char> = text.chars().collect();
    for _ in 0..rng.usize(1..=3) {
        let at = rng.usize(0..=chars.len());
        match rng.u8(0..3) {
            0 if at < chars.len() => {
                let end = (at + rng.usize(1..=4)).min(chars.len());
                chars.drain(at..end);
            }
            1 if at < chars.len() => {
                let end = (at + rng.usize(1..=12)).min(chars.len());
                let copy: Vec<char> = chars[at..end].to_vec();
                chars.splice(at..at, copy);
            }
            _ => {
                let piece = PIECES[rng.usize(0..PIECES.len())];
                chars.splice(at..at, piece.chars());
            }
        }
    }
    chars.into_iter().collect()
}

fn corpus() -> Vec<(String, Role)> {
    let mut rng = fastrand::Rng::with_seed(0x5eed_0f15);
    let mut texts = Vec::new();
    for (text, role) in vector_texts() {
        for _ in 0..MUTATIONS_PER_VECTOR {
            texts.push((mutate(&text, &mut rng), role));
        }
        texts.push((text, role));
    }
    texts
}

/// Whether a `\\u` escape of `text` is a surrogate without its other half. Written apart from the
/// codec's own reader, from the escapes' definition (RFC 8259 §7).
fn has_lone_surrogate(text: &str) -> bool {
    let bytes = text.as_bytes();
    let unit = |at: usize| -> Option<u16> {
        let hex = bytes.get(at..at + 6)?;
        if !hex.starts_with(b"\\u") {
            return None;
        }
        u16::from_str_radix(std::str::from_utf8(&hex[2..]).ok()?, 16).ok()
    };
    let mut at = 0;
    while at < bytes.len() {
        if bytes[at] == b'\\' {
            match unit(at) {
                Some(0xd800..=0xdbff) => match unit(at + 6) {
                    Some(0xdc00..=0xdfff) => at += 12,
                    _ => return true,
                },
                Some(0xdc00..=0xdfff) => return true,
                // Any other escape is two characters; `\\uXXXX` six.
                Some(_) => at += 6,
                None => at += 2,
            }
        } else {
            at += 1;
        }
    }
    false
}

/// [FR-10] A string denotes text: half a surrogate pair alone is invalid.
#[test]
fn a_lone_surrogate_makes_a_payload_invalid() {
    assert!(
        Data::from_json(r#""\ud800""#).is_err(),
        "a leading half alone"
    );
    assert!(
        Data::from_json(r#""\udc00""#).is_err(),
        "a trailing half alone"
    );
    assert!(
        Data::from_json(r#""\ud800\u0041""#).is_err(),
        "a leading half, then no trailing one"
    );
    assert!(
        Data::from_json(r#"{"a":["x\ud83d"]}"#).is_err(),
        "deep inside a value"
    );
    assert!(
        Data::from_json(r#""\ud83d\ude00""#).is_ok(),
        "a pair is one character"
    );
}

/// [FR-10] In `msg.data` a lone surrogate costs that message a `nack` ([FR-9]); elsewhere the
/// frame is invalid.
#[test]
fn a_msg_whose_data_holds_a_lone_surrogate_is_one_invalid_message_not_an_invalid_frame() {
    match decode(
        r#"{"type":"msg","id":7,"data":["\udc00"]}"#,
        Role::Client,
        1 << 20,
    ) {
        Err(DecodeError::InvalidFrame { msg_id, .. }) => {
            assert_eq!(
                msg_id,
                Some(7),
                "the id is readable: a nack, not a goaway [FR-9]"
            );
        }
        other => panic!("expected an invalid msg, got {other:?}"),
    }
    // Anywhere else it makes the frame invalid.
    assert!(matches!(
        decode(
            r#"{"type":"hello","token":"\ud800"}"#,
            Role::Client,
            1 << 20
        ),
        Err(DecodeError::InvalidFrame { msg_id: None, .. } | DecodeError::InvalidJson { .. })
    ));
    assert!(
        decode(
            r#"{"type":"msg","id":7,"data":"\ud83d\ude00"}"#,
            Role::Client,
            1 << 20
        )
        .is_ok()
    );
}

#[test]
fn a_payload_is_accepted_exactly_when_serde_json_accepts_it() {
    let mut accepted = 0;
    let corpus = corpus();
    for (text, _) in &corpus {
        let ours = Data::from_json(text.as_str());
        // A string with a lone surrogate denotes no text, so readyws refuses it [FR-9]: serde_json
        // lets one through in a raw value, and refuses it in a decoded one.
        let theirs = serde_json::from_str::<&RawValue>(text)
            .ok()
            .filter(|_| !has_lone_surrogate(text));
        match (&ours, &theirs) {
            (Ok(data), Some(raw)) => {
                assert_eq!(data.as_json(), raw.get(), "value text of {text:?}");
                accepted += 1;
            }
            (Err(_), None) => {}
            _ => panic!("{text:?}: ours {ours:?}, serde_json {theirs:?}"),
        }
    }
    assert!(
        accepted > corpus.len() / 10 && accepted < corpus.len() * 9 / 10,
        "the corpus mixes valid and invalid JSON: {accepted} of {} valid",
        corpus.len()
    );
}

/// What the frame type's serde derive reads from `text`, as a frame.
fn serde_read(text: &str, kind: FrameKind) -> Result<Frame, serde_json::Error> {
    fn read<T: DeserializeOwned>(text: &str) -> Result<T, serde_json::Error> {
        serde_json::from_str(text)
    }
    Ok(match kind {
        FrameKind::Welcome => Frame::Welcome(read::<Welcome>(text)?),
        FrameKind::Hello => Frame::Hello(read::<Hello>(text)?),
        FrameKind::ConnectionReady => Frame::ConnectionReady(read::<ConnectionReady>(text)?),
        FrameKind::Msg => Frame::Msg(read::<Msg>(text)?),
        FrameKind::Ack => Frame::Ack(read(text)?),
        FrameKind::Nack => Frame::Nack(read::<Nack>(text)?),
        FrameKind::Ping => Frame::Ping(read::<Ping>(text)?),
        FrameKind::Pong => Frame::Pong(read::<Pong>(text)?),
        FrameKind::Goaway => Frame::Goaway(read::<Goaway>(text)?),
    })
}

#[test]
fn frames_decode_to_what_the_serde_derives_read() {
    let (mut agreed_valid, mut agreed_invalid) = (0, 0);
    for (text, role) in corpus() {
        match decode(&text, role, usize::MAX) {
            Ok(frame) => {
                let theirs = serde_read(&text, frame.kind())
                    .unwrap_or_else(|e| panic!("{text:?}: we accept, serde refuses: {e}"));
                assert_eq!(frame, theirs, "{text:?}");
                agreed_valid += 1;
            }
            Err(DecodeError::InvalidFrame { kind, detail, .. }) => {
                // Either serde refuses it too, or it breaks a value rule that no JSON type
                // expresses; then the frame serde read fails the same way when written again.
                if let Ok(theirs) = serde_read(&text, kind) {
                    assert!(
                        decode(&encode(&theirs), role, usize::MAX).is_err(),
                        "{text:?}: we refuse ({detail}), serde reads a valid {theirs:?}"
                    );
                }
                agreed_invalid += 1;
            }
            Err(DecodeError::InvalidJson { .. }) => {
                // Syntax errors, and strings that name no text (a lone surrogate escape).
                assert!(
                    serde_json::from_str::<Value>(&text).is_err(),
                    "{text:?}: we call it invalid JSON"
                );
            }
            Err(_) => {}
        }
    }
    assert!(agreed_valid > 100, "{agreed_valid} valid frames compared");
    assert!(
        agreed_invalid > 100,
        "{agreed_invalid} invalid frames compared"
    );
}

#[test]
fn encoding_writes_what_serde_json_writes() {
    let mut compared = 0;
    for (text, role) in corpus() {
        if let Ok(frame) = decode(&text, role, usize::MAX) {
            let ours = encode(&frame);
            assert_eq!(ours, serde_json::to_string(&frame).expect("serializes"));
            assert_eq!(decode(&ours, role, usize::MAX).as_ref(), Ok(&frame));
            compared += 1;
        }
    }
    let escapes = Frame::Nack(Nack {
        id: 1,
        code: "c\u{0}\u{8}\u{c}\u{1f}\u{7f}".to_owned(),
        reason: "\"quoted\" \\ back\nslash\r\t é 😀".to_owned(),
    });
    assert_eq!(encode(&escapes), serde_json::to_string(&escapes).unwrap());
    assert!(compared > 100, "{compared} frames compared");
}

/// Long strings are checked many bytes at a time: a quote, an escape (valid or not) or a
/// control character anywhere in a long string, on either side of every 8- and 32-byte
/// boundary, is accepted or rejected as `serde_json` does.
#[test]
fn a_special_byte_anywhere_in_a_long_string_is_seen() {
    for len in [7, 8, 9, 31, 32, 33, 63, 64, 65, 100] {
        for at in 0..len {
            for special in [
                "\"", "\\n", "\\u0041", "\\q", "\u{1}", "\u{1f}", "\u{7f}", "é",
            ] {
                let mut text = "a".repeat(len);
                text.replace_range(at..at + 1, special);
                let json = format!(r#"{{"s":"{text}","n":1}}"#);
                let ours = Data::from_json(json.as_str()).is_ok();
                let theirs = serde_json::from_str::<Value>(&json).is_ok();
                assert_eq!(ours, theirs, "{json:?}");
            }
        }
    }
}
