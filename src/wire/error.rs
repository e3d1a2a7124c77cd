//! ErrorResponse and NoticeResponse: the ErrorResponses pgveil writes itself
//! (its refusals before the relay, login failures as PostgreSQL words them)
//! and the fields it reads of PostgreSQL's (the SQLSTATE, the severity).

use bytes::{BufMut, Bytes, BytesMut};

use super::body::{begin, finish, put_cstr, read_cstr};
use super::tag::{be, field};

/// An ErrorResponse ('E') with severity, SQLSTATE and message.
pub fn error_response(severity: &str, code: &str, message: &str) -> Bytes {
    error_response_with(severity, code, message, None)
}

/// An ErrorResponse with an optional hint ('H' field).
pub fn error_response_with(severity: &str, code: &str, message: &str, hint: Option<&str>) -> Bytes {
    error_response_fields(&[
        (field::SEVERITY, Some(severity)),
        (field::SEVERITY_NONLOCALIZED, Some(severity)),
        (field::CODE, Some(code)),
        (field::MESSAGE, Some(message)),
        (field::HINT, hint),
    ])
}

/// An ErrorResponse of the given fields ([`field`] codes), in order; a
/// field whose value is `None` is left out.
pub fn error_response_fields(fields: &[(u8, Option<&str>)]) -> Bytes {
    let text: usize = fields.iter().filter_map(|(_, v)| v.map(str::len)).sum();
    let mut b = BytesMut::with_capacity(32 + text);
    let s = begin(&mut b, be::ERROR_RESPONSE);
    for (code, value) in fields {
        if let Some(v) = value {
            b.put_u8(*code);
            put_cstr(&mut b, v);
        }
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
        .find(|(c, _)| *c == field::CODE)
        .map(|(_, v)| v)
}
