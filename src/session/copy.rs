//! COPY … FROM STDIN into a protected table: split the client's CopyData
//! stream into rows (rows may span messages), encrypt the protected fields,
//! append the blind-index fields, and send the rows on. Text and CSV
//! formats; binary COPY is refused at planning.

use std::sync::Arc;

use bytes::BytesMut;

use super::frontend::Refusal;
use super::values::{ValueError, stored_to_envelope};
use super::{CatalogEntry, Engine};
use crate::crypto::Storage;
use crate::sql::{CopyField, CopyFormat, CopyPlan, SlotOp};
use crate::wire::msg::{begin, finish};

pub struct CopyIn {
    plan: Arc<CopyPlan>,
    entry: Arc<CatalogEntry>,
    /// Bytes of an incomplete row carried to the next CopyData.
    partial: Vec<u8>,
    /// CSV: whether the end of `partial` is inside a quoted field (each
    /// byte is scanned once, however many messages a row spans).
    in_quotes: bool,
    /// Longest row held back (`limits.max_message_bytes`).
    max_row: usize,
    header_pending: bool,
    ended: bool,
}

impl CopyIn {
    pub fn new(plan: Arc<CopyPlan>, entry: Arc<CatalogEntry>, max_row: usize) -> CopyIn {
        let header_pending = plan.header;
        CopyIn {
            plan,
            entry,
            partial: Vec::new(),
            in_quotes: false,
            max_row,
            header_pending,
            ended: false,
        }
    }

    /// One CopyData payload from the client.
    pub async fn data(
        &mut self,
        data: &[u8],
        engine: &Engine,
        out: &mut BytesMut,
    ) -> Result<(), Refusal> {
        let mut buf = std::mem::take(&mut self.partial);
        let scanned = buf.len();
        buf.extend_from_slice(data);
        let mut rows = BytesMut::new();
        let mut start = 0;
        let csv = self.plan.format == CopyFormat::Csv;
        let quote = self.plan.quote as u8;
        let mut in_quotes = self.in_quotes;
        for i in scanned..buf.len() {
            let b = buf[i];
            if csv && b == quote {
                in_quotes = !in_quotes;
            } else if b == b'\n' && !in_quotes {
                self.row(&buf[start..i], engine, &mut rows).await?;
                start = i + 1;
            }
        }
        buf.drain(..start);
        if buf.len() > self.max_row {
            return Err(Refusal {
                sqlstate: "54000",
                message: format!(
                    "pgveil: a COPY row for {}.{} is longer than limits.max_message_bytes ({} bytes)",
                    self.plan.schema, self.plan.table, self.max_row
                ),
            });
        }
        self.partial = buf;
        self.in_quotes = in_quotes;
        if !rows.is_empty() {
            let s = begin(out, b'd');
            out.extend_from_slice(&rows);
            finish(out, s);
        }
        Ok(())
    }

    /// CopyDone: a last row without a newline is still a row.
    pub async fn finish(&mut self, engine: &Engine, out: &mut BytesMut) -> Result<(), Refusal> {
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            let mut rows = BytesMut::new();
            self.row(&line, engine, &mut rows).await?;
            let s = begin(out, b'd');
            out.extend_from_slice(&rows);
            finish(out, s);
        }
        Ok(())
    }

    async fn row(
        &mut self,
        line: &[u8],
        engine: &Engine,
        out: &mut BytesMut,
    ) -> Result<(), Refusal> {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if self.ended {
            return Ok(());
        }
        if self.header_pending {
            self.header_pending = false;
            out.extend_from_slice(line);
            out.extend_from_slice(b"\n");
            return Ok(());
        }
        if self.plan.format == CopyFormat::Text && line == b"\\." {
            self.ended = true;
            out.extend_from_slice(b"\\.\n");
            return Ok(());
        }
        let fields = match self.plan.format {
            CopyFormat::Csv => split_csv(line, &self.plan),
            _ => split_text(line, &self.plan),
        }
        .ok_or_else(|| Refusal {
            sqlstate: "22P04",
            message: format!(
                "pgveil: malformed COPY data for {}.{}",
                self.plan.schema, self.plan.table
            ),
        })?;
        let mut outf: Vec<Option<Vec<u8>>> =
            Vec::with_capacity(fields.len() + self.plan.appended.len());
        // Field values, decoded; `None` = NULL.
        for (i, f) in fields.iter().enumerate() {
            let spec = self.plan.fields.get(i).unwrap_or(&CopyField::Plain);
            let v = match (spec, f) {
                (_, None) => None,
                (CopyField::Plain, Some(v)) => Some(v.clone()),
                (
                    CopyField::Encrypt {
                        target,
                        tenant_field,
                    },
                    Some(v),
                ) => {
                    let attr = self.attr(target)?;
                    let tenant = match tenant_field {
                        Some(t) => match fields.get(*t).cloned().flatten() {
                            Some(t) => Some(String::from_utf8_lossy(&t).into_owned()),
                            None => {
                                return Err(Refusal {
                                    sqlstate: "42501",
                                    message: format!(
                                        "pgveil: {target} is encrypted per tenant: every COPY row needs its tenant column"
                                    ),
                                });
                            }
                        },
                        None => None,
                    };
                    let canonical = engine.crypto.canonical(&attr, 0, v)?;
                    let env = engine
                        .crypto
                        .encrypt(&attr, tenant.as_deref(), &canonical)
                        .await?;
                    Some(stored_text(attr.storage, &env))
                }
                (CopyField::RequireEnvelope { target }, Some(v)) => {
                    let attr = self.attr(target)?;
                    if stored_to_envelope(attr.storage, 0, v).is_none() {
                        return Err(ValueError::NotEnvelope {
                            column: attr.column.to_string(),
                        }
                        .into());
                    }
                    Some(v.clone())
                }
            };
            outf.push(v);
        }
        for (op, src, target) in &self.plan.appended {
            let attr = self.attr(target)?;
            let v = match fields.get(*src).cloned().flatten() {
                None => None,
                Some(v) => {
                    let canonical = engine.crypto.canonical(&attr, 0, &v)?;
                    let idx = engine.crypto.blind_index(
                        &attr,
                        *op == SlotOp::BlindIndexNext,
                        &canonical,
                    )?;
                    Some(format!("\\x{}", hex::encode(idx)).into_bytes())
                }
            };
            outf.push(v);
        }
        match self.plan.format {
            CopyFormat::Csv => join_csv(&outf, &self.plan, out),
            _ => join_text(&outf, &self.plan, out),
        }
        Ok(())
    }

    fn attr(
        &self,
        c: &crate::sql::ColumnRef,
    ) -> Result<Arc<crate::policy::catalog::ProtectedAttr>, Refusal> {
        self.entry.column(c).cloned().ok_or_else(|| Refusal {
            sqlstate: "0A000",
            message: format!(
                "pgveil: protected column {c} is not in the database catalog as the policy expects: run `pgveil policy check --database …`"
            ),
        })
    }
}

/// The text form of an envelope as the column stores it.
fn stored_text(storage: Storage, env: &[u8]) -> Vec<u8> {
    match storage {
        Storage::Bytea => format!("\\x{}", hex::encode(env)).into_bytes(),
        Storage::Text => crate::crypto::envelope::to_text(env).into_bytes(),
    }
}

/// Split a text-format COPY line into decoded fields.
fn split_text(line: &[u8], plan: &CopyPlan) -> Option<Vec<Option<Vec<u8>>>> {
    let delim = plan.delimiter as u8;
    let null = plan.null.as_bytes();
    let mut out = Vec::new();
    for raw in line.split(|&b| b == delim) {
        // A delimiter inside a field is always escaped, so a plain split is
        // right once escapes are decoded per field — except `\<delim>`.
        out.push(raw.to_vec());
    }
    // Re-join fields whose delimiter was escaped (`\<delim>`).
    let mut joined: Vec<Vec<u8>> = Vec::new();
    for f in out {
        match joined.last_mut() {
            Some(prev) if ends_with_odd_backslashes(prev) => {
                prev.push(delim);
                prev.extend_from_slice(&f);
            }
            _ => joined.push(f),
        }
    }
    joined
        .into_iter()
        .map(|f| {
            if f == null {
                Some(None)
            } else {
                unescape_text(&f).map(Some)
            }
        })
        .collect()
}

fn ends_with_odd_backslashes(b: &[u8]) -> bool {
    b.iter().rev().take_while(|&&c| c == b'\\').count() % 2 == 1
}

fn unescape_text(f: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(f.len());
    let mut i = 0;
    while i < f.len() {
        if f[i] != b'\\' {
            out.push(f[i]);
            i += 1;
            continue;
        }
        let c = *f.get(i + 1)?;
        i += 2;
        match c {
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(11),
            b'0'..=b'7' => {
                let mut v = (c - b'0') as u32;
                for _ in 0..2 {
                    match f.get(i) {
                        Some(d @ b'0'..=b'7') => {
                            v = v * 8 + (d - b'0') as u32;
                            i += 1;
                        }
                        _ => break,
                    }
                }
                out.push(v as u8);
            }
            b'x' => {
                let mut v = 0u32;
                let mut n = 0;
                while n < 2 {
                    match f.get(i).and_then(|d| (*d as char).to_digit(16)) {
                        Some(d) => {
                            v = v * 16 + d;
                            i += 1;
                            n += 1;
                        }
                        None => break,
                    }
                }
                if n == 0 {
                    out.push(b'x');
                } else {
                    out.push(v as u8);
                }
            }
            other => out.push(other),
        }
    }
    Some(out)
}

fn join_text(fields: &[Option<Vec<u8>>], plan: &CopyPlan, out: &mut BytesMut) {
    let delim = plan.delimiter as u8;
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(&[delim]);
        }
        match f {
            None => out.extend_from_slice(plan.null.as_bytes()),
            Some(v) => {
                for &b in v {
                    match b {
                        b'\\' => out.extend_from_slice(b"\\\\"),
                        b'\n' => out.extend_from_slice(b"\\n"),
                        b'\r' => out.extend_from_slice(b"\\r"),
                        b'\t' if delim == b'\t' => out.extend_from_slice(b"\\t"),
                        b if b == delim => {
                            out.extend_from_slice(b"\\");
                            out.extend_from_slice(&[b]);
                        }
                        b => out.extend_from_slice(&[b]),
                    }
                }
            }
        }
    }
    out.extend_from_slice(b"\n");
}

/// Split a CSV line (quotes already balanced) into fields. An unquoted
/// field equal to the NULL string is NULL.
fn split_csv(line: &[u8], plan: &CopyPlan) -> Option<Vec<Option<Vec<u8>>>> {
    let (delim, quote, escape) = (plan.delimiter as u8, plan.quote as u8, plan.escape as u8);
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        let mut field = Vec::new();
        let mut quoted = false;
        if line.get(i) == Some(&quote) {
            quoted = true;
            i += 1;
            loop {
                let c = *line.get(i)?;
                if c == escape && line.get(i + 1) == Some(&quote) {
                    field.push(quote);
                    i += 2;
                } else if c == escape && escape != quote && line.get(i + 1) == Some(&escape) {
                    field.push(escape);
                    i += 2;
                } else if c == quote {
                    i += 1;
                    break;
                } else {
                    field.push(c);
                    i += 1;
                }
            }
        }
        while let Some(&c) = line.get(i) {
            if c == delim {
                break;
            }
            field.push(c);
            i += 1;
        }
        if !quoted && field == plan.null.as_bytes() {
            out.push(None);
        } else {
            out.push(Some(field));
        }
        if line.get(i) == Some(&delim) {
            i += 1;
        } else {
            break;
        }
    }
    Some(out)
}

fn join_csv(fields: &[Option<Vec<u8>>], plan: &CopyPlan, out: &mut BytesMut) {
    let (delim, quote, escape) = (plan.delimiter as u8, plan.quote as u8, plan.escape as u8);
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(&[delim]);
        }
        match f {
            None => out.extend_from_slice(plan.null.as_bytes()),
            Some(v) => {
                out.extend_from_slice(&[quote]);
                for &b in v {
                    if b == quote || b == escape {
                        out.extend_from_slice(&[escape]);
                    }
                    out.extend_from_slice(&[b]);
                }
                out.extend_from_slice(&[quote]);
            }
        }
    }
    out.extend_from_slice(b"\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(format: CopyFormat) -> CopyPlan {
        CopyPlan {
            schema: "public".into(),
            table: "t".into(),
            columns: None,
            format,
            delimiter: if format == CopyFormat::Csv { ',' } else { '\t' },
            null: if format == CopyFormat::Csv {
                String::new()
            } else {
                "\\N".into()
            },
            header: false,
            quote: '"',
            escape: '"',
            direction: crate::sql::CopyDirection::In,
            sql: String::new(),
            fields: vec![],
            appended: vec![],
            source: 0..0,
        }
    }

    #[test]
    fn text_fields_round_trip() {
        let p = plan(CopyFormat::Text);
        let f = split_text(b"a\\tb\t\\N\tc\\\\d\tx\\\ty", &p).unwrap();
        assert_eq!(
            f,
            vec![
                Some(b"a\tb".to_vec()),
                None,
                Some(b"c\\d".to_vec()),
                Some(b"x\ty".to_vec())
            ]
        );
        let mut out = BytesMut::new();
        join_text(&f, &p, &mut out);
        assert_eq!(split_text(out.strip_suffix(b"\n").unwrap(), &p).unwrap(), f);
    }

    #[test]
    fn csv_fields_round_trip() {
        let p = plan(CopyFormat::Csv);
        let f = split_csv(b"a,\"b,\"\"c\"\"\",,\"\"", &p).unwrap();
        assert_eq!(
            f,
            vec![
                Some(b"a".to_vec()),
                Some(b"b,\"c\"".to_vec()),
                None,
                Some(b"".to_vec())
            ]
        );
        let mut out = BytesMut::new();
        join_csv(&f, &p, &mut out);
        assert_eq!(split_csv(out.strip_suffix(b"\n").unwrap(), &p).unwrap(), f);
    }
}
