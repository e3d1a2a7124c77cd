//! The client's requests that the session layer reads or writes: Query,
//! and the extended protocol's Parse, Bind, Describe, Execute, Close, Sync
//! and Flush (plus Terminate), and the one-dimensional binary arrays pgveil
//! sends as Bind parameters.
//!
//! Decoders check every length and return `None` on malformed input; a
//! Bind's parameters are zero-copy slices of its body.

use bytes::{BufMut, Bytes, BytesMut};

use super::body::{
    begin, empty_message, finish, get_i16, get_i32, get_list, get_u32, get_value, put_cstr,
    put_value, read_cstr,
};
use super::tag::{fe, target};
use crate::crypto::Oid;

/// A whole Sync message.
pub const SYNC_MESSAGE: [u8; 5] = empty_message(fe::SYNC);
/// A whole Flush message.
pub const FLUSH_MESSAGE: [u8; 5] = empty_message(fe::FLUSH);
/// A whole Terminate message.
pub const TERMINATE_MESSAGE: [u8; 5] = empty_message(fe::TERMINATE);

/// Parse ('P').
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseMsg {
    /// Statement name (empty: the unnamed statement).
    pub name: String,
    /// The statement text.
    pub query: String,
    /// Declared parameter types (0: unspecified).
    pub param_types: Vec<Oid>,
}

impl ParseMsg {
    /// Read a Parse body.
    pub fn decode(body: &[u8]) -> Option<ParseMsg> {
        let mut b = body;
        let name = read_cstr(&mut b)?.to_string();
        let query = read_cstr(&mut b)?.to_string();
        let param_types = get_list(&mut b, get_u32)?;
        Some(ParseMsg {
            name,
            query,
            param_types,
        })
    }

    /// Append the whole message to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        let s = begin(out, fe::PARSE);
        put_cstr(out, &self.name);
        put_cstr(out, &self.query);
        out.put_i16(self.param_types.len() as i16);
        for t in &self.param_types {
            out.put_u32(*t);
        }
        finish(out, s);
    }
}

/// Bind ('B').
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindMsg {
    /// Portal name (empty: the unnamed portal).
    pub portal: String,
    /// Statement name.
    pub statement: String,
    /// As sent: empty (all text), one (applies to all) or one per parameter.
    pub param_formats: Vec<i16>,
    /// Parameter values, slices of the message (`None` = NULL).
    pub params: Vec<Option<Bytes>>,
    /// Result column format codes, as sent.
    pub result_formats: Vec<i16>,
}

/// Format codes after their `i16` count.
fn put_formats(out: &mut BytesMut, formats: &[i16]) {
    out.put_i16(formats.len() as i16);
    for f in formats {
        out.put_i16(*f);
    }
}

impl BindMsg {
    /// Read a Bind body; the parameters stay slices of `body`.
    pub fn decode(body: &Bytes) -> Option<BindMsg> {
        let mut b: &[u8] = body;
        let portal = read_cstr(&mut b)?.to_string();
        let statement = read_cstr(&mut b)?.to_string();
        let param_formats = get_list(&mut b, get_i16)?;
        let params = get_list(&mut b, |b| Some(get_value(b)?.map(|v| body.slice_ref(v))))?;
        let result_formats = get_list(&mut b, get_i16)?;
        Some(BindMsg {
            portal,
            statement,
            param_formats,
            params,
            result_formats,
        })
    }

    /// Format code of parameter `i` (0 text, 1 binary).
    pub fn param_format(&self, i: usize) -> i16 {
        match self.param_formats.len() {
            0 => 0,
            1 => self.param_formats[0],
            _ => self.param_formats.get(i).copied().unwrap_or(0),
        }
    }

    /// Append the whole message to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        let s = begin(out, fe::BIND);
        put_cstr(out, &self.portal);
        put_cstr(out, &self.statement);
        put_formats(out, &self.param_formats);
        out.put_i16(self.params.len() as i16);
        for p in &self.params {
            put_value(out, p.as_deref());
        }
        put_formats(out, &self.result_formats);
        finish(out, s);
    }
}

/// Describe ('D') or Close ('C'): kind `S` (statement) or `P` (portal), name.
pub fn decode_target(body: &[u8]) -> Option<(u8, String)> {
    let (&kind, mut rest) = body.split_first()?;
    let name = read_cstr(&mut rest)?.to_string();
    matches!(kind, target::STATEMENT | target::PORTAL).then_some((kind, name))
}

/// Append a Describe of `kind` ([`target`]) `name`.
pub fn encode_describe(out: &mut BytesMut, kind: u8, name: &str) {
    let s = begin(out, fe::DESCRIBE);
    out.put_u8(kind);
    put_cstr(out, name);
    finish(out, s);
}

/// Execute ('E'): portal name and row limit.
pub fn decode_execute(body: &[u8]) -> Option<(String, i32)> {
    let mut b = body;
    let portal = read_cstr(&mut b)?.to_string();
    let max = get_i32(&mut b)?;
    Some((portal, max))
}

/// Append an Execute of `portal` (`max_rows` 0: all).
pub fn encode_execute(out: &mut BytesMut, portal: &str, max_rows: i32) {
    let s = begin(out, fe::EXECUTE);
    put_cstr(out, portal);
    out.put_i32(max_rows);
    finish(out, s);
}

/// Append a Flush.
pub fn encode_flush(out: &mut BytesMut) {
    out.put_slice(&FLUSH_MESSAGE);
}

/// Append a Sync.
pub fn encode_sync(out: &mut BytesMut) {
    out.put_slice(&SYNC_MESSAGE);
}

/// Append a simple Query.
pub fn encode_query(out: &mut BytesMut, sql: &str) {
    let s = begin(out, fe::QUERY);
    put_cstr(out, sql);
    finish(out, s);
}

/// A one-dimensional array in binary format.
pub fn encode_binary_array(elem_oid: Oid, items: &[Option<Vec<u8>>]) -> Bytes {
    let mut b = BytesMut::new();
    if items.is_empty() {
        b.put_i32(0);
        b.put_i32(0);
        b.put_u32(elem_oid);
        return b.freeze();
    }
    b.put_i32(1);
    b.put_i32(items.iter().any(Option::is_none) as i32);
    b.put_u32(elem_oid);
    b.put_i32(items.len() as i32);
    b.put_i32(1);
    for it in items {
        put_value(&mut b, it.as_deref());
    }
    b.freeze()
}
