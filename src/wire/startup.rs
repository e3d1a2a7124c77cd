//! The untyped first packet of a connection: SSLRequest, GSSENCRequest,
//! CancelRequest and the StartupMessage, read as PostgreSQL reads them (the
//! user and database names included), and the two pgveil sends itself.

use bytes::{BufMut, Bytes, BytesMut};

use super::body::{put_cstr, read_cstr};

/// Protocol version 3.0, as a StartupMessage carries it.
pub const PROTOCOL_V3: u32 = 196_608;
/// The SSLRequest code.
pub const SSL_REQUEST: u32 = 80_877_103;
/// The GSSENCRequest code.
pub const GSSENC_REQUEST: u32 = 80_877_104;
/// The CancelRequest code.
pub const CANCEL_REQUEST: u32 = 80_877_102;

/// What the untyped first packet of a connection asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FirstPacket {
    /// SSLRequest: TLS wanted.
    SslRequest,
    /// GSSENCRequest: GSSAPI encryption wanted.
    GssEncRequest,
    /// CancelRequest with the key it names.
    Cancel { pid: u32, secret: u32 },
    /// StartupMessage.
    Startup(Startup),
}

/// A StartupMessage: protocol version and parameters, kept in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Startup {
    /// Protocol version (major << 16 | minor).
    pub version: u32,
    /// Parameters as sent, in order.
    pub params: Vec<(String, String)>,
}

impl Startup {
    /// The first value given for `key` (compared exactly).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The user name as PostgreSQL reads it (cut to 63 bytes).
    pub fn user(&self) -> Option<&str> {
        self.get("user").map(pg_name)
    }

    /// The database as PostgreSQL reads it: cut to 63 bytes, and the user
    /// name when it is missing or empty.
    pub fn database(&self) -> Option<&str> {
        self.get("database")
            .filter(|d| !d.is_empty())
            .map(pg_name)
            .or_else(|| self.user())
    }

    /// A key given more than once (compared without case: PostgreSQL
    /// applies the last of `user`, `database`, `options` or a setting,
    /// which pgveil must not read differently).
    pub fn repeated_key(&self) -> Option<&str> {
        self.params.iter().enumerate().find_map(|(i, (k, _))| {
            self.params[..i]
                .iter()
                .any(|(e, _)| e.eq_ignore_ascii_case(k))
                .then_some(k.as_str())
        })
    }

    /// The whole packet, length first.
    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::new();
        b.put_u32(0);
        b.put_u32(self.version);
        for (k, v) in &self.params {
            put_cstr(&mut b, k);
            put_cstr(&mut b, v);
        }
        b.put_u8(0);
        let len = b.len() as u32;
        b[..4].copy_from_slice(&len.to_be_bytes());
        b.freeze()
    }
}

/// A user or database name as PostgreSQL reads it from a StartupMessage:
/// names of 64 bytes or more are cut to NAMEDATALEN - 1 = 63 bytes (here at
/// the character boundary before; a name cut inside a character names no
/// role or database in PostgreSQL either).
pub fn pg_name(s: &str) -> &str {
    if s.len() < 64 {
        return s;
    }
    let mut end = 63;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Parse the untyped first packet (including its 4-byte length).
pub fn parse_first_packet(raw: &[u8]) -> Result<FirstPacket, String> {
    if raw.len() < 8 {
        return Err("startup packet too short".into());
    }
    let code = u32::from_be_bytes([raw[4], raw[5], raw[6], raw[7]]);
    match code {
        SSL_REQUEST => Ok(FirstPacket::SslRequest),
        GSSENC_REQUEST => Ok(FirstPacket::GssEncRequest),
        CANCEL_REQUEST => {
            if raw.len() < 16 {
                return Err("cancel request too short".into());
            }
            Ok(FirstPacket::Cancel {
                pid: u32::from_be_bytes([raw[8], raw[9], raw[10], raw[11]]),
                secret: u32::from_be_bytes([raw[12], raw[13], raw[14], raw[15]]),
            })
        }
        v if v >> 16 == 3 => {
            let mut body = &raw[8..];
            let mut params = Vec::new();
            loop {
                let key = read_cstr(&mut body).ok_or("malformed startup packet")?;
                if key.is_empty() {
                    break;
                }
                let val = read_cstr(&mut body).ok_or("malformed startup packet")?;
                params.push((key.to_string(), val.to_string()));
            }
            Ok(FirstPacket::Startup(Startup { version: v, params }))
        }
        v => Err(format!(
            "unsupported frontend protocol {}.{}: pgveil speaks 3.x",
            v >> 16,
            v & 0xffff
        )),
    }
}

/// A CancelRequest naming `pid` and `secret`.
pub fn cancel_request(pid: u32, secret: u32) -> Bytes {
    let mut b = BytesMut::with_capacity(16);
    b.put_u32(16);
    b.put_u32(CANCEL_REQUEST);
    b.put_u32(pid);
    b.put_u32(secret);
    b.freeze()
}

/// An SSLRequest.
pub fn ssl_request() -> Bytes {
    let mut b = BytesMut::with_capacity(8);
    b.put_u32(8);
    b.put_u32(SSL_REQUEST);
    b.freeze()
}
