//! The authentication exchange's messages: the server's Authentication*
//! requests ('R', with their codes) and the client's PasswordMessage family
//! ('p': password, SASLInitialResponse, SASLResponse), as `auth` relays or
//! terminates them.

use bytes::{BufMut, Bytes, BytesMut};

use super::body::{begin, finish, get_i32, get_u32, put_cstr, read_cstr};
use super::tag::{be, fe};

/// AuthenticationOk.
pub const AUTH_OK: u32 = 0;
/// AuthenticationCleartextPassword.
pub const AUTH_CLEARTEXT: u32 = 3;
/// AuthenticationMD5Password.
pub const AUTH_MD5: u32 = 5;
/// AuthenticationSASL: the mechanisms follow.
pub const AUTH_SASL: u32 = 10;
/// AuthenticationSASLContinue: server-first-message.
pub const AUTH_SASL_CONTINUE: u32 = 11;
/// AuthenticationSASLFinal: server-final-message.
pub const AUTH_SASL_FINAL: u32 = 12;

/// An Authentication* message ('R') with a code and extra bytes.
pub fn authentication(code: u32, extra: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(9 + extra.len());
    let s = begin(&mut b, be::AUTHENTICATION);
    b.put_u32(code);
    b.put_slice(extra);
    finish(&mut b, s);
    b.freeze()
}

/// The code of an Authentication message body.
pub fn auth_code(body: &[u8]) -> Option<u32> {
    let mut b = body;
    get_u32(&mut b)
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
    let s = begin(&mut b, fe::PASSWORD);
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
    let n = get_i32(&mut b)?;
    let data = b;
    if n < 0 {
        return Some((mech, Vec::new()));
    }
    (data.len() == n as usize).then(|| (mech, data.to_vec()))
}
