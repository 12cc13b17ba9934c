//! Encoding and decoding frames (`docs/PROTOCOL.md` §3–§4).
//!
//! Decoding checks that the text is one JSON value, then reads the object's `type`, then the
//! members that type defines (others are ignored, [FR-2]); `msg.data` is kept as the exact JSON
//! text the sender wrote. Each step has its own error class, so every error names the frame it
//! concerns where the frame can be named at all. No input makes decoding panic.

use crate::prelude::*;
use alloc::borrow::Cow;

use crate::data::Data;
use crate::error::DecodeError;
use crate::frame::{
    Ack, ClientInfo, ConnectionReady, Frame, FrameKind, Goaway, Hello, MAX_RESUME_TOKEN_BYTES,
    MAX_SAFE_INTEGER, MAX_SESSION_ID_BYTES, MIN_MAX_FRAME_BYTES, Msg, Nack, Ping, Pong, Resume,
    ResumeToken, Role, ServerPhase, Welcome,
};
use crate::json::{self, Member};
use crate::text::Text;

/// Encodes `{"type":"msg","id":ID,"data":DATA}` straight from the held data, without a copy of it
/// in a [`Msg`] first: the sending side's hot path.
pub(crate) fn encode_msg(id: u64, data: &Data) -> String {
    let mut out = Writer {
        text: String::with_capacity(data.as_json().len() + 40),
        first: true,
    };
    out.text.push('{');
    out.string("type", FrameKind::Msg.as_str());
    out.integer("id", id);
    out.key("data");
    out.text.push_str(data.as_json());
    out.text.push('}');
    out.text
}

/// Encodes a frame as the text of one WebSocket text frame.
///
/// Members appear in the order of the tables in `docs/PROTOCOL.md` §3.2, `type` first, and
/// optional members that are absent are left out.
pub fn encode(frame: &Frame) -> String {
    if frame.kind().sent_by(Role::Server) {
        encode_by::<true>(frame)
    } else {
        encode_by::<false>(frame)
    }
}

/// [`encode`] for the frames one role sends (`BY_SERVER`: the server's), so that a build with
/// only one of the two sessions (the browser client) links only the encoders it uses. The
/// sessions never build a frame their role may not send; were one to, it would go out as its
/// bare `type`, which the peer refuses as an invalid frame.
pub(crate) fn encode_by<const BY_SERVER: bool>(frame: &Frame) -> String {
    let mut out = Writer::new(frame.kind());
    match frame {
        Frame::Hello(_) if BY_SERVER => {}
        Frame::Welcome(_) | Frame::ConnectionReady(_) | Frame::Goaway(_) if !BY_SERVER => {}
        Frame::Welcome(welcome) => {
            out.integer("protocol", welcome.protocol);
            out.string("server", &welcome.server);
            out.string("phase", welcome.phase.as_str());
            out.integer("heartbeat_ms", welcome.heartbeat_ms);
            out.integer("max_frame_bytes", welcome.max_frame_bytes);
            out.integer("max_inflight", welcome.max_inflight);
            out.integer("resume_window_ms", welcome.resume_window_ms);
        }
        Frame::Hello(hello) => {
            if let Some(token) = &hello.token {
                out.string("token", token);
            }
            if let Some(resume) = &hello.resume {
                out.key("resume");
                out.text.push('{');
                out.first = true;
                out.string("session_id", &resume.session_id);
                out.string("resume_token", resume.resume_token.expose());
                out.integer("last_received", resume.last_received);
                out.text.push('}');
            }
            if let Some(client) = &hello.client {
                out.key("client");
                out.text.push('{');
                out.first = true;
                out.string("sdk", &client.sdk);
                out.string("version", &client.version);
                out.integer("attempt", client.attempt);
                out.text.push('}');
            }
        }
        Frame::ConnectionReady(ready) => {
            out.string("session_id", &ready.session_id);
            out.string("resume_token", ready.resume_token.expose());
            out.key("resumed");
            out.text
                .push_str(if ready.resumed { "true" } else { "false" });
            out.integer("last_received", ready.last_received);
            out.integer("backlog", ready.backlog);
        }
        Frame::Msg(msg) => {
            out.integer("id", msg.id);
            out.key("data");
            out.text.push_str(msg.data.as_json());
        }
        Frame::Ack(ack) => out.integer("id", ack.id),
        Frame::Nack(nack) => {
            out.integer("id", nack.id);
            out.string("code", &nack.code);
            out.string("reason", &nack.reason);
        }
        Frame::Ping(Ping { nonce }) | Frame::Pong(Pong { nonce }) => {
            if let Some(nonce) = nonce {
                out.string("nonce", nonce);
            }
        }
        Frame::Goaway(goaway) => {
            out.integer("code", u64::from(goaway.code));
            out.string("reason", &goaway.reason);
            if let Some(delay) = goaway.retry_after_ms {
                out.integer("retry_after_ms", delay);
            }
        }
    }
    out.text.push('}');
    out.text
}

/// Writes the members of one object; `first` says whether the next member needs no comma.
struct Writer {
    text: String,
    first: bool,
}

impl Writer {
    fn new(kind: FrameKind) -> Self {
        let mut writer = Writer {
            text: String::with_capacity(64),
            first: true,
        };
        writer.text.push('{');
        writer.string("type", kind.as_str());
        writer
    }

    fn key(&mut self, key: &str) {
        if !self.first {
            self.text.push(',');
        }
        self.first = false;
        json::write_string(&mut self.text, key);
        self.text.push(':');
    }

    fn string(&mut self, key: &str, value: &str) {
        self.key(key);
        json::write_string(&mut self.text, value);
    }

    fn integer(&mut self, key: &str, value: u64) {
        self.key(key);
        json::write_u64(&mut self.text, value);
    }
}

/// Decodes one text frame that a peer playing `sender` sent.
///
/// `max_frame_bytes` is the limit in force on the connection. A frame over it is refused with
/// [`DecodeError::TooLarge`], except a `msg` frame whose id can still be read: that one is
/// reported as [`DecodeError::InvalidFrame`] with `msg_id` set, so that the receiver can refuse
/// that one message with a `nack` instead of dropping the connection.
pub fn decode(text: &str, sender: Role, max_frame_bytes: usize) -> Result<Frame, DecodeError> {
    match sender {
        Role::Server => decode_from::<true>(text, max_frame_bytes),
        Role::Client => decode_from::<false>(text, max_frame_bytes),
    }
}

/// [`decode`] for frames from one role (`FROM_SERVER`: the server), so that a build with only
/// one of the two sessions (the browser client) links only the readers of the frames it
/// receives.
pub(crate) fn decode_from<const FROM_SERVER: bool>(
    text: &str,
    max_frame_bytes: usize,
) -> Result<Frame, DecodeError> {
    let sender = if FROM_SERVER {
        Role::Server
    } else {
        Role::Client
    };
    // The one-pass read is left out of the browser build, where each byte of code is paid for
    // in the package and a client decodes one connection's frames.
    #[cfg(not(target_arch = "wasm32"))]
    let fast = json::frame_members(text);
    #[cfg(target_arch = "wasm32")]
    let fast = None;
    let (members, lone_surrogate) = match fast {
        Some(read) => read,
        None => {
            let (value, lone_surrogate) =
                json::validate_frame(text).map_err(|error| DecodeError::InvalidJson {
                    detail: error.message(),
                })?;
            let members = json::members(value)
                .map_err(|error| DecodeError::InvalidJson {
                    detail: error.message(),
                })?
                .ok_or(DecodeError::NotAnObject)?;
            (members, lone_surrogate)
        }
    };
    let kind = read_kind(&members, sender)?;
    let object = Object {
        members: &members,
        kind,
        lone_surrogate,
    };
    if text.len() > max_frame_bytes {
        if kind == FrameKind::Msg {
            if let Some(id) = object.readable_msg_id() {
                return Err(DecodeError::InvalidFrame {
                    kind,
                    detail: Text::from("frame of ")
                        .size(text.len())
                        .s(" bytes exceeds the limit of ")
                        .size(max_frame_bytes)
                        .s(" bytes")
                        .done(),
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
    let invalid = |detail: String, msg_id: Option<u64>| DecodeError::InvalidFrame {
        kind,
        detail,
        msg_id,
        too_large: false,
    };
    let frame = object
        .frame::<FROM_SERVER>()
        .map_err(|detail| invalid(detail, object.readable_msg_id()))?;
    validate::<FROM_SERVER>(&frame).map_err(|detail| invalid(detail, None))?;
    Ok(frame)
}

/// Reads the `type` of a frame and checks that `sender` may send it.
fn read_kind(members: &[Member<'_>], sender: Role) -> Result<FrameKind, DecodeError> {
    let missing = |detail: &str| DecodeError::MissingType {
        detail: detail.to_owned(),
    };
    let mut types = members.iter().filter(|member| member.key == "type");
    let Some(member) = types.next() else {
        return Err(missing("the object has no field `type`"));
    };
    if types.next().is_some() {
        return Err(missing("the field `type` appears more than once"));
    }
    if !member.value.starts_with('"') {
        return Err(missing("`type` is not a string"));
    }
    let name = json::string(member.value).map_err(|error| DecodeError::InvalidJson {
        detail: error.message(),
    })?;
    let kind = FrameKind::from_type(&name).ok_or_else(|| DecodeError::UnknownType {
        kind: name.into_owned(),
    })?;
    if !kind.sent_by(sender) {
        return Err(DecodeError::WrongDirection { kind, sender });
    }
    Ok(kind)
}

/// The members of one object, read by name with the JSON type the specification gives them.
///
/// Every reader fails with a sentence that names the member; a member that appears twice is
/// refused ([FR-7]) and `null` for an optional member counts as absent.
struct Object<'m, 'a> {
    members: &'m [Member<'a>],
    kind: FrameKind,
    /// The frame holds an escape that is half a surrogate pair somewhere.
    lone_surrogate: bool,
}

impl<'a> Object<'_, 'a> {
    /// The text of member `name`, if present.
    fn get(&self, name: &str) -> Result<Option<&'a str>, String> {
        let mut found = self.members.iter().filter(|member| member.key == name);
        let first = found.next().map(|member| member.value);
        if found.next().is_some() {
            return Err(Text::from("the field `")
                .s(name)
                .s("` appears more than once")
                .done());
        }
        Ok(first)
    }

    fn required(&self, name: &str) -> Result<&'a str, String> {
        self.get(name)?.ok_or_else(|| {
            Text::from("missing field `")
                .s(name)
                .s("` in `")
                .s(self.kind.as_str())
                .s("`")
                .done()
        })
    }

    /// An opaque payload: any JSON value whose strings all denote text. One with a lone
    /// surrogate is refused here, so that it costs one message a `nack` [FR-9], not the
    /// connection.
    fn data(&self, name: &str) -> Result<Data, String> {
        let text = self.required(name)?;
        if self.lone_surrogate {
            json::validate(text).map_err(|error| {
                Text::from("`")
                    .s(name)
                    .s("` is not valid: ")
                    .s(&error.message())
                    .done()
            })?;
        }
        Ok(Data::from_validated(text))
    }

    fn optional(&self, name: &str) -> Result<Option<&'a str>, String> {
        Ok(self.get(name)?.filter(|value| *value != "null"))
    }

    fn integer(&self, name: &str) -> Result<u64, String> {
        integer(name, self.required(name)?)
    }

    fn string(&self, name: &str) -> Result<String, String> {
        string(name, self.required(name)?)
    }

    fn optional_string(&self, name: &str) -> Result<Option<String>, String> {
        self.optional(name)?
            .map(|value| string(name, value))
            .transpose()
    }

    fn boolean(&self, name: &str) -> Result<bool, String> {
        match self.required(name)? {
            "true" => Ok(true),
            "false" => Ok(false),
            other => Err(wrong_type(name, "a boolean", other)),
        }
    }

    /// Reads the members of the object in member `name`, if present, with `read`.
    fn optional_object<T>(
        &self,
        name: &str,
        read: impl FnOnce(&Object<'_, 'a>) -> Result<T, String>,
    ) -> Result<Option<T>, String> {
        let Some(value) = self.optional(name)? else {
            return Ok(None);
        };
        let members = json::members(value)
            .map_err(|error| error.message())?
            .ok_or_else(|| wrong_type(name, "an object", value))?;
        read(&Object {
            members: &members,
            kind: self.kind,
            lone_surrogate: self.lone_surrogate,
        })
        .map(Some)
    }

    /// The `id` of a `msg` frame whose other members may be invalid, when it is a valid id.
    fn readable_msg_id(&self) -> Option<u64> {
        if self.kind != FrameKind::Msg {
            return None;
        }
        let id = integer("id", self.get("id").ok()??).ok()?;
        (1..=MAX_SAFE_INTEGER).contains(&id).then_some(id)
    }

    /// The frame, read as one from the server (`FROM_SERVER`) or from a client: the kinds the
    /// other role sends have been refused already ([`read_kind`]).
    fn frame<const FROM_SERVER: bool>(&self) -> Result<Frame, String> {
        let sender = if FROM_SERVER {
            Role::Server
        } else {
            Role::Client
        };
        let wrong_direction = || {
            Err(DecodeError::WrongDirection {
                kind: self.kind,
                sender,
            }
            .message())
        };
        Ok(match self.kind {
            FrameKind::Welcome | FrameKind::ConnectionReady | FrameKind::Goaway if !FROM_SERVER => {
                return wrong_direction();
            }
            FrameKind::Hello if FROM_SERVER => return wrong_direction(),
            FrameKind::Welcome => Frame::Welcome(Welcome {
                protocol: self.integer("protocol")?,
                server: self.string("server")?,
                phase: {
                    let phase = self.string("phase")?;
                    ServerPhase::from_wire(&phase).ok_or_else(|| {
                        Text::from("`phase` must be \"starting\" or \"accepting\", got \"")
                            .s(&phase)
                            .s("\"")
                            .done()
                    })?
                },
                heartbeat_ms: self.integer("heartbeat_ms")?,
                max_frame_bytes: self.integer("max_frame_bytes")?,
                max_inflight: self.integer("max_inflight")?,
                resume_window_ms: self.integer("resume_window_ms")?,
            }),
            FrameKind::Hello => Frame::Hello(Hello {
                token: self.optional_string("token")?,
                resume: self.optional_object("resume", |resume| {
                    Ok(Resume {
                        session_id: resume.string("session_id")?,
                        resume_token: ResumeToken::from_wire(resume.string("resume_token")?),
                        last_received: resume.integer("last_received")?,
                    })
                })?,
                client: self.optional_object("client", |client| {
                    Ok(ClientInfo {
                        sdk: client.string("sdk")?,
                        version: client.string("version")?,
                        attempt: client.integer("attempt")?,
                    })
                })?,
            }),
            FrameKind::ConnectionReady => Frame::ConnectionReady(ConnectionReady {
                session_id: self.string("session_id")?,
                resume_token: ResumeToken::from_wire(self.string("resume_token")?),
                resumed: self.boolean("resumed")?,
                last_received: self.integer("last_received")?,
                backlog: self.integer("backlog")?,
            }),
            FrameKind::Msg => Frame::Msg(Msg {
                id: self.integer("id")?,
                data: self.data("data")?,
            }),
            FrameKind::Ack => Frame::Ack(Ack {
                id: self.integer("id")?,
            }),
            FrameKind::Nack => Frame::Nack(Nack {
                id: self.integer("id")?,
                code: self.string("code")?,
                reason: self.string("reason")?,
            }),
            FrameKind::Ping => Frame::Ping(Ping {
                nonce: self.optional_string("nonce")?,
            }),
            FrameKind::Pong => Frame::Pong(Pong {
                nonce: self.optional_string("nonce")?,
            }),
            FrameKind::Goaway => Frame::Goaway(Goaway {
                code: {
                    let code = self.integer("code")?;
                    u16::try_from(code).map_err(|_| code_out_of_range(code))?
                },
                reason: self.string("reason")?,
                retry_after_ms: self
                    .optional("retry_after_ms")?
                    .map(|value| integer("retry_after_ms", value))
                    .transpose()?,
            }),
        })
    }
}

fn integer(name: &str, value: &str) -> Result<u64, String> {
    json::unsigned(value).map_err(|is_number| {
        if is_number {
            Text::from("`")
                .s(name)
                .s("` must be an integer from 0 to ")
                .n(MAX_SAFE_INTEGER)
                .s(" without fraction or exponent, got ")
                .s(value)
                .done()
        } else {
            wrong_type(name, "an integer", value)
        }
    })
}

fn string(name: &str, value: &str) -> Result<String, String> {
    if !value.starts_with('"') {
        return Err(wrong_type(name, "a string", value));
    }
    json::string(value)
        .map(Cow::into_owned)
        .map_err(|error| Text::from("`").s(name).s("`: ").s(&error.message()).done())
}

fn wrong_type(name: &str, expected: &str, value: &str) -> String {
    let got = match value.as_bytes().first() {
        Some(b'"') => "a string",
        Some(b'{') => "an object",
        Some(b'[') => "an array",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        _ => "a number",
    };
    Text::from("`")
        .s(name)
        .s("` must be ")
        .s(expected)
        .s(", got ")
        .s(got)
        .done()
}

/// The value rules that JSON types alone do not express (`docs/PROTOCOL.md` §4), for a frame
/// [`Object::frame`] read from the server (`FROM_SERVER`) or from a client.
fn validate<const FROM_SERVER: bool>(frame: &Frame) -> Result<(), String> {
    match frame {
        // Never read from this role (`Object::frame` refused them).
        Frame::Hello(_) if FROM_SERVER => Ok(()),
        Frame::Welcome(_) | Frame::ConnectionReady(_) | Frame::Goaway(_) if !FROM_SERVER => Ok(()),
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
                return Err(Text::from(
                    "`last_received` must be 0 in a new session (`resumed: false`), got ",
                )
                .n(ready.last_received)
                .done());
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
                return Err(code_out_of_range(goaway.code.into()));
            }
            if let Some(delay) = goaway.retry_after_ms {
                at_most_safe("retry_after_ms", delay)?;
            }
            Ok(())
        }
    }
}

fn code_out_of_range(code: u64) -> String {
    Text::from("`code` must be between 4000 and 4999, got ")
        .n(code)
        .done()
}

fn message_id(field: &str, id: u64) -> Result<(), String> {
    if (1..=MAX_SAFE_INTEGER).contains(&id) {
        Ok(())
    } else {
        Err(Text::from("`")
            .s(field)
            .s("` must be between 1 and ")
            .n(MAX_SAFE_INTEGER)
            .s(", got ")
            .n(id)
            .done())
    }
}

fn at_least(field: &str, value: u64, least: u64) -> Result<(), String> {
    at_most_safe(field, value)?;
    if value < least {
        return Err(Text::from("`")
            .s(field)
            .s("` must be at least ")
            .n(least)
            .s(", got ")
            .n(value)
            .done());
    }
    Ok(())
}

fn at_most_safe(field: &str, value: u64) -> Result<(), String> {
    if value > MAX_SAFE_INTEGER {
        return Err(Text::from("`")
            .s(field)
            .s("` must be at most ")
            .n(MAX_SAFE_INTEGER)
            .s(", got ")
            .n(value)
            .done());
    }
    Ok(())
}

fn session_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_SESSION_ID_BYTES {
        return Err(Text::from("`session_id` must be 1 to ")
            .size(MAX_SESSION_ID_BYTES)
            .s(" bytes, got ")
            .size(id.len())
            .done());
    }
    Ok(())
}

fn resume_token(token: &str) -> Result<(), String> {
    if token.is_empty() || token.len() > MAX_RESUME_TOKEN_BYTES {
        return Err(Text::from("`resume_token` must be 1 to ")
            .size(MAX_RESUME_TOKEN_BYTES)
            .s(" bytes, got ")
            .size(token.len())
            .done());
    }
    Ok(())
}
