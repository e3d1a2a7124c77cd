//! `COPY … TO STDOUT` for a role that may read protected columns: the rows
//! PostgreSQL sends (ciphertext) reach the client with those columns
//! decrypted, as a SELECT of the same columns shows them, in the COPY's own
//! format. Exports by an authorised job are a normal use; without this they
//! would be the one read path that returns ciphertext to a `read` role.
//!
//! One CopyData in, one CopyData out, nothing held across messages but the
//! parse state (the binary header may arrive in pieces). Each row is read
//! defensively: text and CSV rows are cut and unescaped as PostgreSQL 15's
//! COPY FROM would read them (`copy::split_text` / `copy::split_csv`),
//! laid out as a DataRow body and decrypted by the session's
//! [`RowDecryptor`] (the same keys, associated data, tenant check and
//! renderers as a SELECT); the plaintext is written back escaped or quoted
//! as PostgreSQL's COPY TO writes a value (`CopyAttributeOutText`,
//! `CopyAttributeOutCSV`). A binary tuple already has the layout of a
//! DataRow body and is decrypted into the plaintext types' binary send
//! format. Fields that are not decrypted go out as PostgreSQL's bytes. A
//! row that cannot be read, or a value that does not decrypt, fails the
//! COPY (the caller sends an ErrorResponse): no part of that row goes out.

use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use zeroize::Zeroize;

use super::copy::{split_csv, split_text};
use super::rows::{RowDecryptor, RowError, tenant_type};
use super::{CatalogEntry, Decrypt};
use crate::seal::ValueCrypto;
use crate::sql::{CopyFormat, CopyPlan};
use crate::wire::body::{begin, finish, get_i16, get_value};

/// The signature at the start of binary COPY data.
const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";
/// Signature, flags and header-extension length.
const HEADER_LEN: usize = 19;

/// Why a COPY TO could not go on.
pub enum Failure {
    /// A value failed to decrypt.
    Decrypt(RowError),
    /// PostgreSQL's COPY data could not be read: what was wrong (never a
    /// value).
    Malformed(&'static str),
}

/// Where the binary stream is.
enum Binary {
    /// In the header: bytes of its fixed part seen so far, then the
    /// header extension's bytes still to come.
    Header {
        fixed: [u8; HEADER_LEN],
        seen: usize,
        extension: Option<u32>,
    },
    Tuples,
    /// After the trailer: nothing more may come.
    Ended,
}

/// One COPY TO STDOUT whose rows are decrypted for a read role: its plan, format and position in the stream.
pub struct CopyOut {
    plan: Arc<CopyPlan>,
    shape: Vec<Option<Decrypt>>,
    /// Text and CSV: the next record is the header line.
    header_pending: bool,
    binary: Binary,
    /// A text or CSV row laid out as a DataRow body (ciphertext and
    /// unprotected values only).
    body: Vec<u8>,
    /// The decrypted row; wiped after each row.
    plain: BytesMut,
    /// Rows transformed since [`CopyOut::take_rows`] was last called.
    rows: u64,
}

impl CopyOut {
    /// The transformer for `plan`'s rows; `Err` names a protected column
    /// the catalog no longer has.
    pub fn new(plan: Arc<CopyPlan>, entry: &CatalogEntry) -> Result<CopyOut, String> {
        let format = i16::from(plan.format == CopyFormat::Binary);
        let mut shape = Vec::with_capacity(plan.decrypt.len());
        for d in &plan.decrypt {
            let Some(d) = d else {
                shape.push(None);
                continue;
            };
            let attr = entry
                .column(&d.column)
                .cloned()
                .ok_or_else(|| d.column.to_string())?;
            let tenant = d.tenant_field.map(|i| {
                let ty = tenant_type(entry, &d.column);
                (i, ty, format)
            });
            shape.push(Some(Decrypt::read(attr, format, tenant)));
        }
        Ok(CopyOut::with_shape(plan, shape))
    }

    /// The transformer for `plan`'s rows with the fields' shape.
    fn with_shape(plan: Arc<CopyPlan>, shape: Vec<Option<Decrypt>>) -> CopyOut {
        CopyOut {
            header_pending: plan.header && plan.format != CopyFormat::Binary,
            plan,
            shape,
            binary: Binary::Header {
                fixed: [0; HEADER_LEN],
                seen: 0,
                extension: None,
            },
            body: Vec::new(),
            plain: BytesMut::new(),
            rows: 0,
        }
    }

    /// The COPY plan the rows are decrypted by.
    pub fn plan(&self) -> &CopyPlan {
        &self.plan
    }

    /// Whether a CopyOutResponse body announces the COPY that was planned:
    /// its format (binary or not) and number of columns.
    pub fn matches_response(&self, body: &[u8]) -> bool {
        let binary = self.plan.format == CopyFormat::Binary;
        match body {
            [overall, n0, n1, ..] => {
                *overall == u8::from(binary)
                    && usize::from(u16::from_be_bytes([*n0, *n1])) == self.shape.len()
            }
            _ => false,
        }
    }

    /// Rows transformed since the last call.
    pub fn take_rows(&mut self) -> u64 {
        std::mem::take(&mut self.rows)
    }

    /// One CopyData payload from PostgreSQL: its rows are appended to
    /// `out` as one CopyData. On failure nothing is appended.
    pub async fn data(
        &mut self,
        crypto: &ValueCrypto,
        dec: &mut RowDecryptor,
        payload: &[u8],
        out: &mut BytesMut,
    ) -> Result<(), Failure> {
        let start = begin(out, b'd');
        let done = if self.plan.format == CopyFormat::Binary {
            self.binary(crypto, dec, payload, out).await
        } else {
            self.text(crypto, dec, payload, out).await
        };
        match done {
            Ok(()) => {
                finish(out, start);
                Ok(())
            }
            Err(e) => {
                out[start..].zeroize();
                out.truncate(start);
                Err(e)
            }
        }
    }

    /// CopyDone: binary data must have ended with its trailer.
    pub fn done(&self) -> Result<(), Failure> {
        match (&self.plan.format, &self.binary) {
            (CopyFormat::Binary, Binary::Ended) => Ok(()),
            (CopyFormat::Binary, _) => Err(Failure::Malformed("no binary trailer")),
            _ => Ok(()),
        }
    }

    async fn text(
        &mut self,
        crypto: &ValueCrypto,
        dec: &mut RowDecryptor,
        mut data: &[u8],
        out: &mut BytesMut,
    ) -> Result<(), Failure> {
        let csv = self.plan.format == CopyFormat::Csv;
        let (quote, escape) = (self.plan.quote as u8, self.plan.escape as u8);
        while !data.is_empty() {
            let end = record_end(data, csv, quote, escape)
                .ok_or(Failure::Malformed("a row that does not end in its message"))?;
            let line = &data[..end];
            if std::mem::take(&mut self.header_pending) {
                // Column names: PostgreSQL's bytes.
                out.put_slice(line);
            } else {
                self.text_row(crypto, dec, line, out).await?;
                self.rows += 1;
            }
            out.put_u8(b'\n');
            data = &data[end + 1..];
        }
        Ok(())
    }

    /// One text or CSV row (without its newline).
    async fn text_row(
        &mut self,
        crypto: &ValueCrypto,
        dec: &mut RowDecryptor,
        line: &[u8],
        out: &mut BytesMut,
    ) -> Result<(), Failure> {
        let plan = &*self.plan;
        let delim = plan.delimiter as u8;
        let null = plan.null.as_bytes();
        let (quote, escape) = (plan.quote as u8, plan.escape as u8);
        let fields = match plan.format {
            CopyFormat::Csv => split_csv(line, delim, quote, escape, null)
                .map(|f| f.into_iter().map(|(f, _)| f).collect::<Vec<_>>()),
            _ => split_text(line, delim, null),
        }
        .map_err(|_| Failure::Malformed("a row pgveil cannot read"))?;
        if fields.len() != self.shape.len() {
            return Err(Failure::Malformed(
                "a row with another number of fields than the COPY has columns",
            ));
        }
        self.body.clear();
        self.body
            .extend_from_slice(&(fields.len() as i16).to_be_bytes());
        for f in &fields {
            match &f.value {
                None => self.body.extend_from_slice(&(-1i32).to_be_bytes()),
                Some(v) => {
                    self.body.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    self.body.extend_from_slice(v);
                }
            }
        }
        self.plain.clear();
        let decrypted = dec
            .decrypt_fields(crypto, &self.shape, &self.body, &mut self.plain)
            .await;
        let result = match decrypted {
            Ok(true) => {
                let single = fields.len() == 1;
                let mut at = 2;
                for (i, f) in fields.iter().enumerate() {
                    if i > 0 {
                        out.put_u8(delim);
                    }
                    let len =
                        i32::from_be_bytes(self.plain[at..at + 4].try_into().expect("four bytes"));
                    at += 4;
                    let len = usize::try_from(len).ok();
                    match (&self.shape[i], len) {
                        (Some(_), Some(n)) => {
                            let v = &self.plain[at..at + n];
                            match plan.format {
                                CopyFormat::Csv => {
                                    put_csv(v, plan, plan.force_quote.contains(&i), single, out)
                                }
                                _ => put_text(v, delim, null, out),
                            }
                        }
                        _ => out.put_slice(&line[f.raw.clone()]),
                    }
                    at += len.unwrap_or(0);
                }
                Ok(())
            }
            Ok(false) => Err(Failure::Malformed("a row pgveil cannot read")),
            Err(e) => Err(Failure::Decrypt(e)),
        };
        self.plain[..].zeroize();
        self.plain.clear();
        result
    }

    async fn binary(
        &mut self,
        crypto: &ValueCrypto,
        dec: &mut RowDecryptor,
        mut data: &[u8],
        out: &mut BytesMut,
    ) -> Result<(), Failure> {
        if let Binary::Header {
            fixed,
            seen,
            extension,
        } = &mut self.binary
        {
            // The header carries no values: forwarded as it comes.
            let n = (HEADER_LEN - *seen).min(data.len());
            fixed[*seen..*seen + n].copy_from_slice(&data[..n]);
            out.put_slice(&data[..n]);
            *seen += n;
            data = &data[n..];
            if *seen < HEADER_LEN {
                return Ok(());
            }
            let left = match extension {
                Some(left) => left,
                None => {
                    if fixed[..11] != SIGNATURE[..] {
                        return Err(Failure::Malformed(
                            "a binary header that is not PostgreSQL's",
                        ));
                    }
                    let flags = u32::from_be_bytes(fixed[11..15].try_into().expect("4 bytes"));
                    // Bits 16-31 change the tuples' layout (16: OIDs).
                    if flags & 0xffff_0000 != 0 {
                        return Err(Failure::Malformed(
                            "a binary header with flags pgveil does not read",
                        ));
                    }
                    extension.insert(u32::from_be_bytes(
                        fixed[15..19].try_into().expect("4 bytes"),
                    ))
                }
            };
            let n = (*left as usize).min(data.len());
            out.put_slice(&data[..n]);
            *left -= n as u32;
            data = &data[n..];
            if *left > 0 {
                return Ok(());
            }
            self.binary = Binary::Tuples;
        }
        while !data.is_empty() {
            if matches!(self.binary, Binary::Ended) {
                return Err(Failure::Malformed("data after the binary trailer"));
            }
            let count = data
                .get(..2)
                .map(|b| i16::from_be_bytes([b[0], b[1]]))
                .ok_or(Failure::Malformed("a row that does not end in its message"))?;
            if count == -1 {
                out.put_slice(&data[..2]);
                data = &data[2..];
                self.binary = Binary::Ended;
                continue;
            }
            if usize::try_from(count).ok() != Some(self.shape.len()) {
                return Err(Failure::Malformed(
                    "a row with another number of fields than the COPY has columns",
                ));
            }
            let len = tuple_len(data)
                .ok_or(Failure::Malformed("a row that does not end in its message"))?;
            match dec
                .decrypt_fields(crypto, &self.shape, &data[..len], out)
                .await
            {
                Ok(true) => {}
                Ok(false) => return Err(Failure::Malformed("a row pgveil cannot read")),
                Err(e) => return Err(Failure::Decrypt(e)),
            }
            self.rows += 1;
            data = &data[len..];
        }
        Ok(())
    }
}

/// Where the first record of `data` ends (its newline): PostgreSQL's COPY
/// TO ends every row with `\n`; in CSV a quoted field may hold newlines.
/// `None`: no complete record.
fn record_end(data: &[u8], csv: bool, quote: u8, escape: u8) -> Option<usize> {
    if !csv {
        // A newline in a text value is written `\n`: the first byte 10
        // ends the row.
        return data.iter().position(|&b| b == b'\n');
    }
    let mut in_quote = false;
    let mut i = 0;
    while i < data.len() {
        let c = data[i];
        if in_quote {
            if c == escape
                && escape != quote
                && data.get(i + 1).is_some_and(|&n| n == quote || n == escape)
            {
                i += 2;
                continue;
            }
            if c == quote {
                in_quote = false;
            }
        } else if c == quote {
            in_quote = true;
        } else if c == b'\n' {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// The length of the binary tuple at the start of `data` (field count,
/// then each field's length and bytes), if it is all there.
fn tuple_len(data: &[u8]) -> Option<usize> {
    let mut b = data;
    let n = get_i16(&mut b)?;
    for _ in 0..n.max(0) {
        get_value(&mut b)?;
    }
    Some(data.len() - b.len())
}

/// A value as PostgreSQL's text COPY writes it (`CopyAttributeOutText`):
/// backslash, the delimiter and the control characters with a C escape
/// are backslash-escaped. One thing more: a value that would then read
/// as the NULL string (`NULL 'x'` and the value `x`) has its first byte
/// written in octal, so that it reads back as the value. (An empty value
/// under `NULL ''` has no other spelling; it is written empty, as
/// PostgreSQL writes it.)
fn put_text(v: &[u8], delim: u8, null: &[u8], out: &mut BytesMut) {
    let at = out.len();
    escape_text(v, delim, out);
    if !v.is_empty() && out[at..] == *null {
        out.truncate(at);
        out.put_slice(format!("\\{:03o}", v[0]).as_bytes());
        escape_text(&v[1..], delim, out);
    }
}

fn escape_text(v: &[u8], delim: u8, out: &mut BytesMut) {
    let mut start = 0;
    for (i, &b) in v.iter().enumerate() {
        let esc = match b {
            8 => b'b',
            12 => b'f',
            b'\n' => b'n',
            b'\r' => b'r',
            b'\t' => b't',
            11 => b'v',
            b'\\' => b'\\',
            b if b == delim => b,
            _ => continue,
        };
        out.put_slice(&v[start..i]);
        out.put_slice(&[b'\\', esc]);
        start = i + 1;
    }
    out.put_slice(&v[start..]);
}

/// A value as PostgreSQL's CSV COPY writes it (`CopyAttributeOutCSV`):
/// quoted when `FORCE_QUOTE` names it, when it equals the NULL string,
/// when it holds the delimiter, the quote, CR or LF, or when it is `\.`
/// alone in a one-column row; inside quotes the quote and the escape are
/// escaped.
fn put_csv(v: &[u8], plan: &CopyPlan, force: bool, single: bool, out: &mut BytesMut) {
    let (delim, quote, escape) = (plan.delimiter as u8, plan.quote as u8, plan.escape as u8);
    let quoted = force
        || v == plan.null.as_bytes()
        || (single && v == b"\\.")
        || v.iter()
            .any(|&c| c == delim || c == quote || c == b'\n' || c == b'\r');
    if !quoted {
        out.put_slice(v);
        return;
    }
    out.put_u8(quote);
    let mut start = 0;
    for (i, &b) in v.iter().enumerate() {
        if b == quote || b == escape {
            out.put_slice(&v[start..i]);
            out.put_u8(escape);
            start = i;
        }
    }
    out.put_slice(&v[start..]);
    out.put_u8(quote);
}

#[cfg(test)]
#[path = "copy_out_tests.rs"]
mod tests;
