//! Encoders and decoders for the few protocol messages pgveil reads or
//! writes itself. Everything else is forwarded as raw frames.

use bytes::{BufMut, Bytes, BytesMut};

use super::codec::read_cstr;

pub const PROTOCOL_V3: u32 = 196_608;
pub const SSL_REQUEST: u32 = 80_877_103;
pub const GSSENC_REQUEST: u32 = 80_877_104;
pub const CANCEL_REQUEST: u32 = 80_877_102;

/// What the untyped first packet of a connection asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FirstPacket {
    SslRequest,
    GssEncRequest,
    Cancel { pid: u32, secret: u32 },
    Startup(Startup),
}

/// A StartupMessage: protocol version and parameters, kept in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Startup {
    pub version: u32,
    pub params: Vec<(String, String)>,
}

impl Startup {
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

pub fn put_cstr(b: &mut BytesMut, s: &str) {
    b.put_slice(s.as_bytes());
    b.put_u8(0);
}

/// Begin a typed message; finish with [`finish`].
pub fn begin(b: &mut BytesMut, tag: u8) -> usize {
    let start = b.len();
    b.put_u8(tag);
    b.put_u32(0);
    start
}

/// Patch the length of a message begun at `start`.
pub fn finish(b: &mut BytesMut, start: usize) {
    let len = (b.len() - start - 1) as u32;
    b[start + 1..start + 5].copy_from_slice(&len.to_be_bytes());
}

/// An ErrorResponse ('E') with severity, SQLSTATE and message.
pub fn error_response(severity: &str, code: &str, message: &str) -> Bytes {
    error_response_with(severity, code, message, None)
}

/// An ErrorResponse with an optional hint ('H' field).
pub fn error_response_with(severity: &str, code: &str, message: &str, hint: Option<&str>) -> Bytes {
    let mut b = BytesMut::with_capacity(64 + message.len());
    let s = begin(&mut b, b'E');
    b.put_u8(b'S');
    put_cstr(&mut b, severity);
    b.put_u8(b'V');
    put_cstr(&mut b, severity);
    b.put_u8(b'C');
    put_cstr(&mut b, code);
    b.put_u8(b'M');
    put_cstr(&mut b, message);
    if let Some(h) = hint {
        b.put_u8(b'H');
        put_cstr(&mut b, h);
    }
    b.put_u8(0);
    finish(&mut b, s);
    b.freeze()
}

/// Fields of an ErrorResponse or NoticeResponse body.
pub fn parse_error_fields(body: &[u8]) -> Vec<(u8, String)> {
    let mut out = Vec::new();
    let mut b = body;
    while let Some((&code, rest)) = b.split_first() {
        if code == 0 {
            break;
        }
        b = rest;
        match read_cstr(&mut b) {
            Some(v) => out.push((code, v.to_string())),
            None => break,
        }
    }
    out
}

/// The SQLSTATE of an ErrorResponse body.
pub fn error_code(body: &[u8]) -> Option<String> {
    parse_error_fields(body)
        .into_iter()
        .find(|(c, _)| *c == b'C')
        .map(|(_, v)| v)
}

pub fn ready_for_query(status: u8) -> Bytes {
    let mut b = BytesMut::with_capacity(6);
    let s = begin(&mut b, b'Z');
    b.put_u8(status);
    finish(&mut b, s);
    b.freeze()
}

pub fn parameter_status(name: &str, value: &str) -> Bytes {
    let mut b = BytesMut::with_capacity(name.len() + value.len() + 7);
    let s = begin(&mut b, b'S');
    put_cstr(&mut b, name);
    put_cstr(&mut b, value);
    finish(&mut b, s);
    b.freeze()
}

pub fn backend_key_data(pid: u32, secret: u32) -> Bytes {
    let mut b = BytesMut::with_capacity(13);
    let s = begin(&mut b, b'K');
    b.put_u32(pid);
    b.put_u32(secret);
    finish(&mut b, s);
    b.freeze()
}

pub fn cancel_request(pid: u32, secret: u32) -> Bytes {
    let mut b = BytesMut::with_capacity(16);
    b.put_u32(16);
    b.put_u32(CANCEL_REQUEST);
    b.put_u32(pid);
    b.put_u32(secret);
    b.freeze()
}

pub fn ssl_request() -> Bytes {
    let mut b = BytesMut::with_capacity(8);
    b.put_u32(8);
    b.put_u32(SSL_REQUEST);
    b.freeze()
}

/// An Authentication* message ('R') with a code and extra bytes.
pub fn authentication(code: u32, extra: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(9 + extra.len());
    let s = begin(&mut b, b'R');
    b.put_u32(code);
    b.put_slice(extra);
    finish(&mut b, s);
    b.freeze()
}

pub const AUTH_OK: u32 = 0;
pub const AUTH_CLEARTEXT: u32 = 3;
pub const AUTH_MD5: u32 = 5;
pub const AUTH_SASL: u32 = 10;
pub const AUTH_SASL_CONTINUE: u32 = 11;
pub const AUTH_SASL_FINAL: u32 = 12;

/// The code of an Authentication message body.
pub fn auth_code(body: &[u8]) -> Option<u32> {
    (body.len() >= 4).then(|| u32::from_be_bytes([body[0], body[1], body[2], body[3]]))
}

/// AuthenticationSASL body → mechanism names.
pub fn sasl_mechanisms(body: &[u8]) -> Vec<String> {
    let mut b = &body[4.min(body.len())..];
    let mut out = Vec::new();
    while let Some(m) = read_cstr(&mut b) {
        if m.is_empty() {
            break;
        }
        out.push(m.to_string());
    }
    out
}

/// AuthenticationSASL with the given mechanisms.
pub fn auth_sasl(mechanisms: &[&str]) -> Bytes {
    let mut extra = BytesMut::new();
    for m in mechanisms {
        put_cstr(&mut extra, m);
    }
    extra.put_u8(0);
    authentication(AUTH_SASL, &extra)
}

/// A PasswordMessage-family message ('p') with raw body.
pub fn password_message(body: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + body.len());
    let s = begin(&mut b, b'p');
    b.put_slice(body);
    finish(&mut b, s);
    b.freeze()
}

/// SASLInitialResponse ('p'): mechanism, then length-prefixed data.
pub fn sasl_initial_response(mechanism: &str, data: &[u8]) -> Bytes {
    let mut body = BytesMut::new();
    put_cstr(&mut body, mechanism);
    body.put_i32(data.len() as i32);
    body.put_slice(data);
    password_message(&body)
}

/// Parse a SASLInitialResponse body → (mechanism, data).
pub fn parse_sasl_initial_response(body: &[u8]) -> Option<(String, Vec<u8>)> {
    let mut b = body;
    let mech = read_cstr(&mut b)?.to_string();
    if b.len() < 4 {
        return None;
    }
    let n = i32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    let data = &b[4..];
    if n < 0 {
        return Some((mech, Vec::new()));
    }
    (data.len() == n as usize).then(|| (mech, data.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_round_trip() {
        let s = Startup {
            version: PROTOCOL_V3,
            params: vec![
                ("user".into(), "alice".into()),
                ("database".into(), "app".into()),
                ("application_name".into(), "x".into()),
            ],
        };
        let raw = s.encode();
        assert_eq!(parse_first_packet(&raw).unwrap(), FirstPacket::Startup(s));
    }

    #[test]
    fn startup_names_as_postgres_reads_them() {
        let s = |params: &[(&str, &str)]| Startup {
            version: PROTOCOL_V3,
            params: params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        let dup = s(&[
            ("user", "calmony_app"),
            ("database", "app"),
            ("user", "dba"),
        ]);
        assert_eq!(dup.repeated_key(), Some("user"));
        let dup = s(&[("database", "a"), ("user", "u"), ("DataBase", "b")]);
        assert_eq!(dup.repeated_key(), Some("DataBase"));
        let dup = s(&[("user", "u"), ("options", "-c role=a"), ("options", "")]);
        assert_eq!(dup.repeated_key(), Some("options"));
        let one = s(&[("user", "u"), ("database", ""), ("application_name", "x")]);
        assert_eq!(one.repeated_key(), None);
        // An empty database is the user's, as in PostgreSQL.
        assert_eq!(one.database(), Some("u"));
        let long = "r".repeat(70);
        let one = s(&[("user", &long), ("database", &format!("{long}x"))]);
        assert_eq!(one.user(), Some(&long[..63]));
        assert_eq!(one.database(), Some(&long[..63]));
        // Cut at the character boundary before byte 63.
        let wide = format!("{}é", "a".repeat(62));
        assert_eq!(pg_name(&wide), &wide[..62]);
        assert_eq!(pg_name("app"), "app");
    }

    #[test]
    fn first_packets() {
        assert_eq!(
            parse_first_packet(&ssl_request()).unwrap(),
            FirstPacket::SslRequest
        );
        assert_eq!(
            parse_first_packet(&cancel_request(7, 9)).unwrap(),
            FirstPacket::Cancel { pid: 7, secret: 9 }
        );
        let mut v = vec![0, 0, 0, 8];
        v.extend_from_slice(&1234u32.to_be_bytes());
        assert!(parse_first_packet(&v).is_err());
    }

    #[test]
    fn error_fields() {
        let e = error_response_with("ERROR", "42501", "no", Some("do this"));
        let fields = parse_error_fields(&e[5..]);
        assert!(fields.contains(&(b'C', "42501".into())));
        assert!(fields.contains(&(b'H', "do this".into())));
        assert_eq!(error_code(&e[5..]).as_deref(), Some("42501"));
    }

    #[test]
    fn sasl() {
        let m = auth_sasl(&["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]);
        assert_eq!(auth_code(&m[5..]), Some(AUTH_SASL));
        assert_eq!(
            sasl_mechanisms(&m[5..]),
            vec!["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]
        );
        let p = sasl_initial_response("SCRAM-SHA-256", b"n,,n=,r=abc");
        assert_eq!(
            parse_sasl_initial_response(&p[5..]).unwrap(),
            ("SCRAM-SHA-256".into(), b"n,,n=,r=abc".to_vec())
        );
    }
}
