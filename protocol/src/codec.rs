//! Encoding and decoding frames (`docs/PROTOCOL.md` §3–§4).
//!
//! Decoding reads a frame in two passes: first only its `type` (every other field is skipped
//! unparsed), then the fields of that type. The first pass lets every error name the frame it
//! concerns and lets a receiver skip types it does not know; the second keeps `msg.data` as the
//! exact JSON text the sender wrote. No input makes either pass panic.

use core::fmt;

use serde::Deserialize;
use serde::de::{self, DeserializeOwned, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::error::DecodeError;
use crate::frame::{
    Ack, ConnectionReady, Frame, FrameKind, Goaway, Hello, MAX_RESUME_TOKEN_BYTES,
    MAX_SAFE_INTEGER, MAX_SESSION_ID_BYTES, MIN_MAX_FRAME_BYTES, Msg, Nack, Ping, Pong, Role,
    Welcome,
};

/// Encodes a frame as the text of one WebSocket text frame.
pub fn encode(frame: &Frame) -> String {
    // The frame types hold only strings, integers, booleans, options and JSON text that was
    // validated when it was made, so serde_json has nothing it could refuse.
    serde_json::to_string(frame).expect("readyws frames always serialize to JSON")
}

/// Decodes one text frame that a peer playing `sender` sent.
///
/// `max_frame_bytes` is the limit in force on the connection. A frame over it is refused with
/// [`DecodeError::TooLarge`] before it is parsed, except a `msg` frame whose id can still be read:
/// that one is reported as [`DecodeError::InvalidFrame`] with `msg_id` set, so that the receiver
/// can refuse that one message with a `nack` instead of dropping the connection.
pub fn decode(text: &str, sender: Role, max_frame_bytes: usize) -> Result<Frame, DecodeError> {
    let kind = read_kind(text, sender)?;
    if text.len() > max_frame_bytes {
        if kind == FrameKind::Msg {
            if let Some(id) = read_msg_id(text) {
                return Err(DecodeError::InvalidFrame {
                    kind,
                    detail: format!(
                        "frame of {} bytes exceeds the limit of {max_frame_bytes} bytes",
                        text.len()
                    ),
                    msg_id: Some(id),
                    too_large: true,
                });
            }
        }
        return Err(DecodeError::TooLarge {
            len: text.len(),
            max: max_frame_bytes,
        });
    }
    let frame = match kind {
        FrameKind::Welcome => Frame::Welcome(fields::<Welcome>(text, kind)?),
        FrameKind::Hello => Frame::Hello(fields::<Hello>(text, kind)?),
        FrameKind::ConnectionReady => {
            Frame::ConnectionReady(fields::<ConnectionReady>(text, kind)?)
        }
        FrameKind::Msg => match fields::<Msg>(text, kind) {
            Ok(msg) => Frame::Msg(msg),
            Err(DecodeError::InvalidFrame { kind, detail, .. }) => {
                return Err(DecodeError::InvalidFrame {
                    kind,
                    detail,
                    msg_id: read_msg_id(text),
                    too_large: false,
                });
            }
            Err(other) => return Err(other),
        },
        FrameKind::Ack => Frame::Ack(fields::<Ack>(text, kind)?),
        FrameKind::Nack => Frame::Nack(fields::<Nack>(text, kind)?),
        FrameKind::Ping => Frame::Ping(fields::<Ping>(text, kind)?),
        FrameKind::Pong => Frame::Pong(fields::<Pong>(text, kind)?),
        FrameKind::Goaway => Frame::Goaway(fields::<Goaway>(text, kind)?),
    };
    validate(&frame).map_err(|detail| DecodeError::InvalidFrame {
        kind,
        detail,
        msg_id: None,
        too_large: false,
    })?;
    Ok(frame)
}

/// Reads only the `type` of a frame and checks that `sender` may send it.
fn read_kind(text: &str, sender: Role) -> Result<FrameKind, DecodeError> {
    let shape = serde_json::from_str::<Shape>(text).map_err(|error| DecodeError::InvalidJson {
        detail: error.to_string(),
    })?;
    let missing = |detail: &str| DecodeError::MissingType {
        detail: detail.to_owned(),
    };
    let name = match shape {
        Shape::NotAnObject => return Err(DecodeError::NotAnObject),
        Shape::Object(TypeShape::Absent) => return Err(missing("the object has no field `type`")),
        Shape::Object(TypeShape::NotAString) => return Err(missing("`type` is not a string")),
        Shape::Object(TypeShape::Repeated) => {
            return Err(missing("the field `type` appears more than once"));
        }
        Shape::Object(TypeShape::Text(name)) => name,
    };
    let kind = FrameKind::from_type(&name).ok_or(DecodeError::UnknownType { kind: name })?;
    if !kind.sent_by(sender) {
        return Err(DecodeError::WrongDirection { kind, sender });
    }
    Ok(kind)
}

/// Reads a `msg` frame's `id` alone, for a receiver that must refuse the rest of it.
fn read_msg_id(text: &str) -> Option<u64> {
    #[derive(Deserialize)]
    struct IdOnly {
        id: u64,
    }
    let id = serde_json::from_str::<IdOnly>(text).ok()?.id;
    (1..=MAX_SAFE_INTEGER).contains(&id).then_some(id)
}

fn fields<T: DeserializeOwned>(text: &str, kind: FrameKind) -> Result<T, DecodeError> {
    serde_json::from_str::<T>(text).map_err(|error| DecodeError::InvalidFrame {
        kind,
        detail: error.to_string(),
        msg_id: None,
        too_large: false,
    })
}

/// The value rules that JSON types alone do not express (`docs/PROTOCOL.md` §4).
fn validate(frame: &Frame) -> Result<(), String> {
    match frame {
        Frame::Welcome(welcome) => {
            at_least("heartbeat_ms", welcome.heartbeat_ms, 1)?;
            at_least(
                "max_frame_bytes",
                welcome.max_frame_bytes,
                MIN_MAX_FRAME_BYTES,
            )?;
            at_least("max_inflight", welcome.max_inflight, 1)?;
            at_most_safe("resume_window_ms", welcome.resume_window_ms)?;
            at_most_safe("protocol", welcome.protocol)
        }
        Frame::Hello(hello) => {
            if let Some(resume) = &hello.resume {
                session_id(&resume.session_id)?;
                resume_token(resume.resume_token.expose())?;
                at_most_safe("resume.last_received", resume.last_received)?;
            }
            if let Some(client) = &hello.client {
                at_most_safe("client.attempt", client.attempt)?;
            }
            Ok(())
        }
        Frame::ConnectionReady(ready) => {
            session_id(&ready.session_id)?;
            resume_token(ready.resume_token.expose())?;
            at_most_safe("last_received", ready.last_received)?;
            at_most_safe("backlog", ready.backlog)?;
            if !ready.resumed && ready.last_received != 0 {
                return Err(format!(
                    "`last_received` must be 0 in a new session (`resumed: false`), got {}",
                    ready.last_received
                ));
            }
            Ok(())
        }
        Frame::Msg(msg) => message_id("id", msg.id),
        Frame::Ack(ack) => message_id("id", ack.id),
        Frame::Nack(nack) => {
            message_id("id", nack.id)?;
            if nack.code.is_empty() {
                return Err("`code` must not be empty".to_owned());
            }
            Ok(())
        }
        Frame::Ping(_) | Frame::Pong(_) => Ok(()),
        Frame::Goaway(goaway) => {
            if !(4000..=4999).contains(&goaway.code) {
                return Err(format!(
                    "`code` must be between 4000 and 4999, got {}",
                    goaway.code
                ));
            }
            if let Some(delay) = goaway.retry_after_ms {
                at_most_safe("retry_after_ms", delay)?;
            }
            Ok(())
        }
    }
}

fn message_id(field: &str, id: u64) -> Result<(), String> {
    if (1..=MAX_SAFE_INTEGER).contains(&id) {
        Ok(())
    } else {
        Err(format!(
            "`{field}` must be between 1 and {MAX_SAFE_INTEGER}, got {id}"
        ))
    }
}

fn at_least(field: &str, value: u64, least: u64) -> Result<(), String> {
    at_most_safe(field, value)?;
    if value < least {
        return Err(format!("`{field}` must be at least {least}, got {value}"));
    }
    Ok(())
}

fn at_most_safe(field: &str, value: u64) -> Result<(), String> {
    if value > MAX_SAFE_INTEGER {
        return Err(format!(
            "`{field}` must be at most {MAX_SAFE_INTEGER}, got {value}"
        ));
    }
    Ok(())
}

fn session_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_SESSION_ID_BYTES {
        return Err(format!(
            "`session_id` must be 1 to {MAX_SESSION_ID_BYTES} bytes, got {}",
            id.len()
        ));
    }
    Ok(())
}

fn resume_token(token: &str) -> Result<(), String> {
    if token.is_empty() || token.len() > MAX_RESUME_TOKEN_BYTES {
        return Err(format!(
            "`resume_token` must be 1 to {MAX_RESUME_TOKEN_BYTES} bytes, got {}",
            token.len()
        ));
    }
    Ok(())
}

/// What the first decoding pass learns: whether the frame is an object, and its `type`.
enum Shape {
    NotAnObject,
    Object(TypeShape),
}

/// What the first pass found in the `type` field of an object.
enum TypeShape {
    Absent,
    NotAString,
    Repeated,
    Text(String),
}

impl<'de> Deserialize<'de> for Shape {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ShapeVisitor)
    }
}

struct ShapeVisitor;

impl<'de> Visitor<'de> for ShapeVisitor {
    type Value = Shape;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Shape, A::Error> {
        let mut kind = TypeShape::Absent;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if key != "type" {
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            let value = map.next_value::<TypeField>()?;
            kind = match (kind, value) {
                (TypeShape::Absent, TypeField::Text(text)) => TypeShape::Text(text),
                (TypeShape::Absent, TypeField::Other) => TypeShape::NotAString,
                // Keep reading to the end so that a syntax error later on is still reported.
                _ => TypeShape::Repeated,
            };
        }
        Ok(Shape::Object(kind))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Shape, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Shape::NotAnObject)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Shape, E> {
        Ok(Shape::NotAnObject)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Shape, E> {
        Ok(Shape::NotAnObject)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Shape, E> {
        Ok(Shape::NotAnObject)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Shape, E> {
        Ok(Shape::NotAnObject)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Shape, E> {
        Ok(Shape::NotAnObject)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Shape, E> {
        Ok(Shape::NotAnObject)
    }
}

/// The value of a `type` field: a string, or anything else (which counts as no `type`).
enum TypeField {
    Text(String),
    Other,
}

impl<'de> Deserialize<'de> for TypeField {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TypeFieldVisitor;
        impl<'de> Visitor<'de> for TypeFieldVisitor {
            type Value = TypeField;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<TypeField, E> {
                Ok(TypeField::Text(text.to_owned()))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TypeField, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(TypeField::Other)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<TypeField, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(TypeField::Other)
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<TypeField, E> {
                Ok(TypeField::Other)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<TypeField, E> {
                Ok(TypeField::Other)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<TypeField, E> {
                Ok(TypeField::Other)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<TypeField, E> {
                Ok(TypeField::Other)
            }
            fn visit_unit<E: de::Error>(self) -> Result<TypeField, E> {
                Ok(TypeField::Other)
            }
        }
        deserializer.deserialize_any(TypeFieldVisitor)
    }
}
