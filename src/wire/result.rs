//! The server's descriptions and rows that the session layer reads or
//! rewrites: RowDescription, DataRow and ParameterDescription.
//!
//! Decoders check every length and return `None` on malformed input; a
//! DataRow's columns are slices of its body, never copies.

use bytes::{BufMut, Bytes, BytesMut};

use super::body::{
    begin, finish, get_i16, get_i32, get_list, get_u32, get_value, put_cstr, put_value, read_cstr,
};
use super::tag::be;
use crate::crypto::Oid;

/// One field of a RowDescription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// Column name (or alias).
    pub name: String,
    /// The table's OID when the column is a table's, else 0.
    pub table_oid: Oid,
    /// The column's attribute number when it is a table's, else 0.
    pub attnum: i16,
    /// The column's type OID.
    pub type_oid: Oid,
    /// `pg_type.typlen`.
    pub type_len: i16,
    /// `pg_attribute.atttypmod`.
    pub type_mod: i32,
    /// Format code (0 text, 1 binary).
    pub format: i16,
}

/// Read a RowDescription body.
pub fn decode_row_description(body: &[u8]) -> Option<Vec<Field>> {
    let mut b = body;
    get_list(&mut b, |b| {
        Some(Field {
            name: read_cstr(b)?.to_string(),
            table_oid: get_u32(b)?,
            attnum: get_i16(b)?,
            type_oid: get_u32(b)?,
            type_len: get_i16(b)?,
            type_mod: get_i32(b)?,
            format: get_i16(b)?,
        })
    })
}

/// Append a RowDescription of `fields`.
pub fn encode_row_description(out: &mut BytesMut, fields: &[Field]) {
    let s = begin(out, be::ROW_DESCRIPTION);
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

/// DataRow ('D') columns, each slice of the body made a `T` by `value`
/// (`None` = NULL).
fn data_row_with<'a, T>(
    body: &'a [u8],
    mut value: impl FnMut(&'a [u8]) -> T,
) -> Option<Vec<Option<T>>> {
    let mut b = body;
    get_list(&mut b, |b| Some(get_value(b)?.map(&mut value)))
}

/// DataRow ('D') columns as slices of the body (`None` = NULL).
pub fn data_row_values(body: &[u8]) -> Option<Vec<Option<&[u8]>>> {
    data_row_with(body, |v| v)
}

/// DataRow ('D') columns as zero-copy slices of the body (`None` = NULL).
pub fn decode_data_row(body: &Bytes) -> Option<Vec<Option<Bytes>>> {
    data_row_with(body, |v| body.slice_ref(v))
}

/// Append a DataRow of `cols`.
pub fn encode_data_row(out: &mut BytesMut, cols: &[Option<Bytes>]) {
    let s = begin(out, be::DATA_ROW);
    out.put_i16(cols.len() as i16);
    for c in cols {
        put_value(out, c.as_deref());
    }
    finish(out, s);
}

/// Read a ParameterDescription body: the parameter type OIDs.
pub fn decode_parameter_description(body: &[u8]) -> Option<Vec<Oid>> {
    let mut b = body;
    get_list(&mut b, get_u32)
}

/// Append a ParameterDescription of `types`.
pub fn encode_parameter_description(out: &mut BytesMut, types: &[Oid]) {
    let s = begin(out, be::PARAMETER_DESCRIPTION);
    out.put_i16(types.len() as i16);
    for t in types {
        out.put_u32(*t);
    }
    finish(out, s);
}
