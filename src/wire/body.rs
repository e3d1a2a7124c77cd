//! The one reader and writer of message-body primitives: NUL-terminated
//! strings, big-endian integers, length-prefixed values (`-1` = NULL), and
//! the typed-message header (`begin` … `finish`).
//!
//! Readers take a cursor (`&mut &[u8]`) over a frame's body, check every
//! length and return `None` rather than trust one; what they return are
//! slices of the body, never copies. Every message family file of `wire`
//! reads and writes through these.

use bytes::{Buf, BufMut, BytesMut};

/// Read a NUL-terminated string from a message body cursor.
pub fn read_cstr<'a>(body: &mut &'a [u8]) -> Option<&'a str> {
    let end = body.iter().position(|&b| b == 0)?;
    let s = std::str::from_utf8(&body[..end]).ok()?;
    body.advance(end + 1);
    Some(s)
}

/// Read a big-endian `i16`.
pub fn get_i16(b: &mut &[u8]) -> Option<i16> {
    let (h, t) = b.split_first_chunk::<2>()?;
    *b = t;
    Some(i16::from_be_bytes(*h))
}

/// Read a big-endian `i32`.
pub fn get_i32(b: &mut &[u8]) -> Option<i32> {
    let (h, t) = b.split_first_chunk::<4>()?;
    *b = t;
    Some(i32::from_be_bytes(*h))
}

/// Read a big-endian `u32` (an OID, a key).
pub fn get_u32(b: &mut &[u8]) -> Option<u32> {
    get_i32(b).map(|v| v as u32)
}

/// Take the next `n` bytes.
pub fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if b.len() < n {
        return None;
    }
    let (h, t) = b.split_at(n);
    *b = t;
    Some(h)
}

/// Read a length-prefixed value (a Bind parameter, a DataRow column):
/// `Some(None)` for NULL (length -1); `None` for any other negative length.
pub fn get_value<'a>(b: &mut &'a [u8]) -> Option<Option<&'a [u8]>> {
    // -1 is NULL; PostgreSQL fails any other negative length
    // ("insufficient data left in message"), so it is malformed here too.
    let len = get_i32(b)?;
    match len {
        -1 => Some(None),
        ..-1 => None,
        _ => take(b, len as usize).map(Some),
    }
}

/// An `i16` count, then that many items read by `item`; a negative count
/// is malformed.
pub fn get_list<'a, T>(
    b: &mut &'a [u8],
    mut item: impl FnMut(&mut &'a [u8]) -> Option<T>,
) -> Option<Vec<T>> {
    let n = get_i16(b)?;
    if n < 0 {
        return None;
    }
    let mut out = Vec::with_capacity(n as usize);
    for _ in 0..n {
        out.push(item(b)?);
    }
    Some(out)
}

/// Write a NUL-terminated string.
pub fn put_cstr(b: &mut BytesMut, s: &str) {
    b.put_slice(s.as_bytes());
    b.put_u8(0);
}

/// Write a length-prefixed value: `-1` for NULL.
pub fn put_value(out: &mut BytesMut, v: Option<&[u8]>) {
    match v {
        None => out.put_i32(-1),
        Some(v) => {
            out.put_i32(v.len() as i32);
            out.put_slice(v);
        }
    }
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

/// A whole message without a body (Sync, Flush, Terminate …).
pub const fn empty_message(tag: u8) -> [u8; 5] {
    [tag, 0, 0, 0, 4]
}
