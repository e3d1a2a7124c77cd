//! Decoders and encoders for the extended-protocol and result messages that
//! the session layer rewrites: Parse, Bind, Describe, Execute, Close,
//! RowDescription, DataRow, ParameterDescription, and one-dimensional arrays.
//! Every decoder checks lengths and returns `None` on malformed input.

use bytes::{BufMut, Bytes, BytesMut};

use crate::crypto::Oid;
use crate::wire::codec::read_cstr;
use crate::wire::msg::{begin, finish, put_cstr};

fn get_i16(b: &mut &[u8]) -> Option<i16> {
    let (h, t) = b.split_first_chunk::<2>()?;
    *b = t;
    Some(i16::from_be_bytes(*h))
}

fn get_i32(b: &mut &[u8]) -> Option<i32> {
    let (h, t) = b.split_first_chunk::<4>()?;
    *b = t;
    Some(i32::from_be_bytes(*h))
}

fn get_u32(b: &mut &[u8]) -> Option<u32> {
    get_i32(b).map(|v| v as u32)
}

fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if b.len() < n {
        return None;
    }
    let (h, t) = b.split_at(n);
    *b = t;
    Some(h)
}

/// Parse ('P').
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseMsg {
    pub name: String,
    pub query: String,
    pub param_types: Vec<Oid>,
}

impl ParseMsg {
    pub fn decode(body: &[u8]) -> Option<ParseMsg> {
        let mut b = body;
        let name = read_cstr(&mut b)?.to_string();
        let query = read_cstr(&mut b)?.to_string();
        let n = get_i16(&mut b)?;
        if n < 0 {
            return None;
        }
        let mut param_types = Vec::with_capacity(n as usize);
        for _ in 0..n {
            param_types.push(get_u32(&mut b)?);
        }
        Some(ParseMsg {
            name,
            query,
            param_types,
        })
    }

    pub fn encode(&self, out: &mut BytesMut) {
        let s = begin(out, b'P');
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
    pub portal: String,
    pub statement: String,
    /// As sent: empty (all text), one (applies to all) or one per parameter.
    pub param_formats: Vec<i16>,
    pub params: Vec<Option<Bytes>>,
    pub result_formats: Vec<i16>,
}

impl BindMsg {
    pub fn decode(body: &Bytes) -> Option<BindMsg> {
        let mut b: &[u8] = body;
        let portal = read_cstr(&mut b)?.to_string();
        let statement = read_cstr(&mut b)?.to_string();
        let nf = get_i16(&mut b)?;
        if nf < 0 {
            return None;
        }
        let mut param_formats = Vec::with_capacity(nf as usize);
        for _ in 0..nf {
            param_formats.push(get_i16(&mut b)?);
        }
        let np = get_i16(&mut b)?;
        if np < 0 {
            return None;
        }
        let mut params = Vec::with_capacity(np as usize);
        for _ in 0..np {
            let len = get_i32(&mut b)?;
            if len < 0 {
                params.push(None);
            } else {
                let start = body.len() - b.len();
                take(&mut b, len as usize)?;
                params.push(Some(body.slice(start..start + len as usize)));
            }
        }
        let nr = get_i16(&mut b)?;
        if nr < 0 {
            return None;
        }
        let mut result_formats = Vec::with_capacity(nr as usize);
        for _ in 0..nr {
            result_formats.push(get_i16(&mut b)?);
        }
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

    pub fn encode(&self, out: &mut BytesMut) {
        let s = begin(out, b'B');
        put_cstr(out, &self.portal);
        put_cstr(out, &self.statement);
        out.put_i16(self.param_formats.len() as i16);
        for f in &self.param_formats {
            out.put_i16(*f);
        }
        out.put_i16(self.params.len() as i16);
        for p in &self.params {
            match p {
                None => out.put_i32(-1),
                Some(v) => {
                    out.put_i32(v.len() as i32);
                    out.put_slice(v);
                }
            }
        }
        out.put_i16(self.result_formats.len() as i16);
        for f in &self.result_formats {
            out.put_i16(*f);
        }
        finish(out, s);
    }
}

/// Describe ('D') or Close ('C'): kind `S` (statement) or `P` (portal), name.
pub fn decode_target(body: &[u8]) -> Option<(u8, String)> {
    let (&kind, mut rest) = body.split_first()?;
    let name = read_cstr(&mut rest)?.to_string();
    matches!(kind, b'S' | b'P').then_some((kind, name))
}

pub fn encode_describe(out: &mut BytesMut, kind: u8, name: &str) {
    let s = begin(out, b'D');
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

pub fn encode_execute(out: &mut BytesMut, portal: &str, max_rows: i32) {
    let s = begin(out, b'E');
    put_cstr(out, portal);
    out.put_i32(max_rows);
    finish(out, s);
}

pub fn encode_flush(out: &mut BytesMut) {
    out.put_slice(&[b'H', 0, 0, 0, 4]);
}

pub fn encode_sync(out: &mut BytesMut) {
    out.put_slice(&[b'S', 0, 0, 0, 4]);
}

pub fn encode_query(out: &mut BytesMut, sql: &str) {
    let s = begin(out, b'Q');
    put_cstr(out, sql);
    finish(out, s);
}

/// One field of a RowDescription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub table_oid: Oid,
    pub attnum: i16,
    pub type_oid: Oid,
    pub type_len: i16,
    pub type_mod: i32,
    pub format: i16,
}

pub fn decode_row_description(body: &[u8]) -> Option<Vec<Field>> {
    let mut b = body;
    let n = get_i16(&mut b)?;
    if n < 0 {
        return None;
    }
    let mut out = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let name = read_cstr(&mut b)?.to_string();
        out.push(Field {
            name,
            table_oid: get_u32(&mut b)?,
            attnum: get_i16(&mut b)?,
            type_oid: get_u32(&mut b)?,
            type_len: get_i16(&mut b)?,
            type_mod: get_i32(&mut b)?,
            format: get_i16(&mut b)?,
        });
    }
    Some(out)
}

pub fn encode_row_description(out: &mut BytesMut, fields: &[Field]) {
    let s = begin(out, b'T');
    out.put_i16(fields.len() as i16);
    for f in fields {
        put_cstr(out, &f.name);
        out.put_u32(f.table_oid);
        out.put_i16(f.attnum);
        out.put_u32(f.type_oid);
        out.put_i16(f.type_len);
        out.put_i32(f.type_mod);
        out.put_i16(f.format);
    }
    finish(out, s);
}

/// DataRow ('D') columns as zero-copy slices of the body (`None` = NULL).
pub fn decode_data_row(body: &Bytes) -> Option<Vec<Option<Bytes>>> {
    let mut b: &[u8] = body;
    let n = get_i16(&mut b)?;
    if n < 0 {
        return None;
    }
    let mut cols = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let len = get_i32(&mut b)?;
        if len < 0 {
            cols.push(None);
        } else {
            let start = body.len() - b.len();
            take(&mut b, len as usize)?;
            cols.push(Some(body.slice(start..start + len as usize)));
        }
    }
    Some(cols)
}

pub fn encode_data_row(out: &mut BytesMut, cols: &[Option<Bytes>]) {
    let s = begin(out, b'D');
    out.put_i16(cols.len() as i16);
    for c in cols {
        match c {
            None => out.put_i32(-1),
            Some(v) => {
                out.put_i32(v.len() as i32);
                out.put_slice(v);
            }
        }
    }
    finish(out, s);
}

pub fn decode_parameter_description(body: &[u8]) -> Option<Vec<Oid>> {
    let mut b = body;
    let n = get_i16(&mut b)?;
    if n < 0 {
        return None;
    }
    (0..n).map(|_| get_u32(&mut b)).collect()
}

pub fn encode_parameter_description(out: &mut BytesMut, types: &[Oid]) {
    let s = begin(out, b't');
    out.put_i16(types.len() as i16);
    for t in types {
        out.put_u32(*t);
    }
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
        match it {
            None => b.put_i32(-1),
            Some(v) => {
                b.put_i32(v.len() as i32);
                b.put_slice(v);
            }
        }
    }
    b.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_round_trip() {
        let m = BindMsg {
            portal: "p".into(),
            statement: "s".into(),
            param_formats: vec![0, 1],
            params: vec![Some(Bytes::from_static(b"abc")), None],
            result_formats: vec![1],
        };
        let mut out = BytesMut::new();
        m.encode(&mut out);
        let body = Bytes::copy_from_slice(&out[5..]);
        assert_eq!(BindMsg::decode(&body).unwrap(), m);
        assert_eq!(m.param_format(1), 1);
        // Truncated input is rejected, not trusted.
        assert!(BindMsg::decode(&body.slice(..body.len() - 3)).is_none());
    }

    #[test]
    fn row_description_round_trip() {
        let f = vec![Field {
            name: "email".into(),
            table_oid: 16384,
            attnum: 2,
            type_oid: 17,
            type_len: -1,
            type_mod: -1,
            format: 0,
        }];
        let mut out = BytesMut::new();
        encode_row_description(&mut out, &f);
        assert_eq!(decode_row_description(&out[5..]).unwrap(), f);
    }

    #[test]
    fn arrays() {
        // What pgveil sends upstream reads back in PostgreSQL's reader.
        let bin = encode_binary_array(25, &[Some(b"a".to_vec()), None]);
        let a = crate::sql::array::decode_binary(&bin).unwrap();
        assert_eq!((a.elem_oid, a.items), (25, vec![Some(b"a".to_vec()), None]));
        let empty = encode_binary_array(17, &[]);
        assert!(
            crate::sql::array::decode_binary(&empty)
                .unwrap()
                .items
                .is_empty()
        );
    }
}
