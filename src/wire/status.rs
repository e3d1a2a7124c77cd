//! What the server reports about the session: ReadyForQuery (the
//! transaction status), ParameterStatus (a setting's value) and
//! BackendKeyData (the key a CancelRequest names, which pgveil replaces).

use bytes::{BufMut, Bytes, BytesMut};

use super::body::{begin, finish, get_u32, put_cstr, read_cstr};
use super::tag::be;

/// A ReadyForQuery with transaction status `status` ([`super::tag::txn`]).
pub fn ready_for_query(status: u8) -> Bytes {
    let mut b = BytesMut::with_capacity(6);
    let s = begin(&mut b, be::READY_FOR_QUERY);
    b.put_u8(status);
    finish(&mut b, s);
    b.freeze()
}

/// A ParameterStatus reporting `name` = `value`.
pub fn parameter_status(name: &str, value: &str) -> Bytes {
    let mut b = BytesMut::with_capacity(name.len() + value.len() + 7);
    let s = begin(&mut b, be::PARAMETER_STATUS);
    put_cstr(&mut b, name);
    put_cstr(&mut b, value);
    finish(&mut b, s);
    b.freeze()
}

/// A ParameterStatus body → (name, value), slices of the body.
pub fn decode_parameter_status(body: &[u8]) -> Option<(&str, &str)> {
    let mut b = body;
    Some((read_cstr(&mut b)?, read_cstr(&mut b)?))
}

/// A BackendKeyData with `pid` and `secret`.
pub fn backend_key_data(pid: u32, secret: u32) -> Bytes {
    let mut b = BytesMut::with_capacity(13);
    let s = begin(&mut b, be::BACKEND_KEY_DATA);
    b.put_u32(pid);
    b.put_u32(secret);
    finish(&mut b, s);
    b.freeze()
}

/// A BackendKeyData body → (pid, secret): its first 8 bytes (what follows
/// them is not read).
pub fn decode_backend_key_data(body: &[u8]) -> Option<(u32, u32)> {
    let mut b = body;
    Some((get_u32(&mut b)?, get_u32(&mut b)?))
}
