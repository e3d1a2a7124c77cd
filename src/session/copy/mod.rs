//! COPY … FROM STDIN into a protected table: read the client's CopyData
//! stream exactly as PostgreSQL 15 reads it (`copyfromparse.c`: the line
//! reader `CopyReadLineText`, then `CopyReadAttributesText` /
//! `CopyReadAttributesCSV`), encrypt the protected fields, append the
//! blind-index fields, and send the rows on. Fields pgveil does not change
//! are forwarded as the client's bytes, so PostgreSQL reads them as it
//! would have; data PostgreSQL would reject is refused (CopyFail) rather
//! than guessed at. Binary COPY is refused at planning.
//!
//! Each byte is scanned once by the line reader and once by the field
//! splitter; at most one incomplete row (`limits.max_message_bytes`) is
//! held back.
//!
//! This file holds the [`CopyIn`] state machine (records across CopyData
//! messages, the end-of-copy marker, the row limit); beside it: `line` (the
//! line reader), `fields` (the field splitters, shared with COPY TO),
//! `row` (one record encrypted) and `statement` (which statements are
//! COPYs).

use std::sync::Arc;

use bytes::BytesMut;

use super::frontend::Refusal;
use super::{CatalogEntry, Engine};
use crate::sql::CopyPlan;
use crate::wire::body::{begin, finish};

mod fields;
#[cfg(test)]
pub(super) mod fixture;
mod line;
mod row;
mod statement;
#[cfg(test)]
mod tests;

pub(super) use fields::{split_csv, split_text};
use line::{LineReader, Step};
pub use statement::{CopyKind, copies_from_stdin, copy_kind, is_copy_statement};

/// One COPY FROM STDIN into a protected table, from its first CopyData to
/// CopyDone.
pub struct CopyIn {
    plan: Arc<CopyPlan>,
    entry: Arc<CatalogEntry>,
    reader: LineReader,
    /// Bytes of an incomplete record carried to the next CopyData.
    partial: Vec<u8>,
    /// Longest record held back (`limits.max_message_bytes`).
    max_row: usize,
    header_pending: bool,
    /// The end-of-copy marker was seen: PostgreSQL ignores the rest.
    ended: bool,
}

impl CopyIn {
    /// The state before the first CopyData of a COPY planned as `plan`.
    pub fn new(plan: Arc<CopyPlan>, entry: Arc<CatalogEntry>, max_row: usize) -> CopyIn {
        let header_pending = plan.header;
        CopyIn {
            reader: LineReader::new(&plan),
            plan,
            entry,
            partial: Vec::new(),
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
        if self.ended {
            return Ok(());
        }
        let mut buf = std::mem::take(&mut self.partial);
        buf.extend_from_slice(data);
        let mut rows = BytesMut::new();
        let start = self.records(&buf, false, engine, &mut rows).await?;
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
        put_copy_data(out, &rows);
        Ok(())
    }

    /// CopyDone: the end of the data (a last record without a newline is
    /// still a record).
    pub async fn finish(&mut self, engine: &Engine, out: &mut BytesMut) -> Result<(), Refusal> {
        if self.ended {
            return Ok(());
        }
        let buf = std::mem::take(&mut self.partial);
        let mut rows = BytesMut::new();
        self.records(&buf, true, engine, &mut rows).await?;
        put_copy_data(out, &rows);
        Ok(())
    }

    /// Transform every complete record of `buf` into `out`; returns where
    /// the incomplete rest starts.
    async fn records(
        &mut self,
        buf: &[u8],
        eof: bool,
        engine: &Engine,
        out: &mut BytesMut,
    ) -> Result<usize, Refusal> {
        let mut start = 0;
        while !self.ended {
            let step = self
                .reader
                .next(&buf[start..], eof)
                .map_err(|e| self.malformed(e))?;
            match step {
                Step::More => break,
                Step::Line { end, next } => {
                    self.record(&buf[start..start + end], engine, out).await?;
                    start += next;
                    self.reader.reset();
                }
                Step::EndMarker { end } => {
                    if end > 0 || self.header_pending {
                        self.record(&buf[start..start + end], engine, out).await?;
                    }
                    out.extend_from_slice(b"\\.\n");
                    self.ended = true;
                    start = buf.len();
                }
                Step::Eof { end } => {
                    if end > 0 {
                        self.record(&buf[start..start + end], engine, out).await?;
                    }
                    start = buf.len();
                    break;
                }
            }
        }
        Ok(start)
    }

    fn malformed(&self, what: &str) -> Refusal {
        Refusal {
            sqlstate: "22P04",
            message: format!(
                "pgveil: COPY data for {}.{} has {what}: PostgreSQL would reject it, so pgveil does not forward it",
                self.plan.schema, self.plan.table
            ),
        }
    }
}

/// Append `rows` to `out` as one CopyData, unless there are none.
fn put_copy_data(out: &mut BytesMut, rows: &[u8]) {
    if !rows.is_empty() {
        let s = begin(out, b'd');
        out.extend_from_slice(rows);
        finish(out, s);
    }
}
