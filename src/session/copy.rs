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

use std::ops::Range;
use std::sync::Arc;

use bytes::BytesMut;

use super::frontend::Refusal;
use super::{CatalogEntry, Engine};
use crate::crypto::Storage;
use crate::seal::{ValueError, stored_to_envelope};
use crate::sql::{CopyField, CopyFormat, CopyPlan, SlotOp};
use crate::wire::msg::{begin, finish};

/// The line ending PostgreSQL fixes from the first line of the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Eol {
    Unknown,
    Nl,
    Cr,
    CrNl,
}

/// What the line reader found at the start of the buffer it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// A record: bytes `..end`; the next record starts at `next`.
    Line { end: usize, next: usize },
    /// The end-of-copy marker `\.`; bytes `..end` before it are a last
    /// record when not empty (text format). Everything after is ignored.
    EndMarker { end: usize },
    /// End of data (CopyDone): bytes `..end` are a last record when not
    /// empty.
    Eof { end: usize },
    /// More bytes are needed to decide.
    More,
}

/// PostgreSQL's `CopyReadLineText`, resumable at any byte.
#[derive(Debug, Clone)]
struct LineReader {
    csv: bool,
    quote: u8,
    /// The escape as the line reader sees it: none when equal to the quote.
    escape: Option<u8>,
    eol: Eol,
    /// Scan position in the current record, and the state there.
    pos: usize,
    in_quote: bool,
    last_was_esc: bool,
    first: bool,
}

impl LineReader {
    fn new(plan: &CopyPlan) -> LineReader {
        let csv = plan.format == CopyFormat::Csv;
        let (quote, escape) = (plan.quote as u8, plan.escape as u8);
        LineReader {
            csv,
            quote,
            escape: (csv && escape != quote).then_some(escape),
            eol: Eol::Unknown,
            pos: 0,
            in_quote: false,
            last_was_esc: false,
            first: true,
        }
    }

    /// Start a new record.
    fn reset(&mut self) {
        self.pos = 0;
        self.in_quote = false;
        self.last_was_esc = false;
        self.first = true;
    }

    /// Find the end of the record that starts at `buf[0]`. `eof`: no more
    /// bytes will come.
    fn next(&mut self, buf: &[u8], eof: bool) -> Result<Step, &'static str> {
        let n = buf.len();
        let mut i = self.pos;
        loop {
            if i >= n {
                self.pos = i;
                return Ok(if eof {
                    Step::Eof { end: n }
                } else {
                    Step::More
                });
            }
            let saved = (self.in_quote, self.last_was_esc);
            let more = move |s: &mut LineReader| {
                (s.in_quote, s.last_was_esc) = saved;
                s.pos = i;
                Ok(Step::More)
            };
            let c = buf[i];
            if self.csv {
                if self.in_quote && Some(c) == self.escape {
                    self.last_was_esc = !self.last_was_esc;
                }
                if c == self.quote && !self.last_was_esc {
                    self.in_quote = !self.in_quote;
                }
                if Some(c) != self.escape {
                    self.last_was_esc = false;
                }
            }
            let unquoted = !self.csv || !self.in_quote;
            if c == b'\r' && unquoted {
                match self.eol {
                    Eol::Unknown | Eol::CrNl => {
                        if i + 1 >= n && !eof {
                            return more(self);
                        }
                        if buf.get(i + 1) == Some(&b'\n') {
                            self.eol = Eol::CrNl;
                            return Ok(Step::Line {
                                end: i,
                                next: i + 2,
                            });
                        }
                        if self.eol == Eol::CrNl {
                            return Err("a carriage return in the data where lines end with CRLF");
                        }
                        self.eol = Eol::Cr;
                    }
                    Eol::Nl => {
                        return Err("a carriage return in the data where lines end with LF");
                    }
                    Eol::Cr => {}
                }
                return Ok(Step::Line {
                    end: i,
                    next: i + 1,
                });
            }
            if c == b'\n' && unquoted {
                if matches!(self.eol, Eol::Cr | Eol::CrNl) {
                    return Err("a newline in the data where lines end with CR");
                }
                self.eol = Eol::Nl;
                return Ok(Step::Line {
                    end: i,
                    next: i + 1,
                });
            }
            if c == b'\\' && (!self.csv || self.first) {
                if i + 1 >= n {
                    if !eof {
                        return more(self);
                    }
                    self.pos = n;
                    return Ok(Step::Eof { end: n });
                }
                if buf[i + 1] == b'.' {
                    match self.end_marker(buf, i, eof) {
                        Marker::End => return Ok(Step::EndMarker { end: i }),
                        Marker::More => return more(self),
                        Marker::Error(e) => return Err(e),
                        // CSV: `\.` followed by data is data.
                        Marker::Data => {}
                    }
                } else if !self.csv {
                    // Text: the byte after a backslash is never special.
                    i += 1;
                }
            }
            self.first = false;
            i += 1;
        }
    }

    /// `\.` at `buf[i]`: is it the end-of-copy marker?
    fn end_marker(&mut self, buf: &[u8], i: usize, eof: bool) -> Marker {
        let n = buf.len();
        let mut j = i + 2;
        let bad = |csv: bool, e: &'static str| {
            if csv { Marker::Data } else { Marker::Error(e) }
        };
        if self.eol == Eol::CrNl {
            if j >= n && !eof {
                return Marker::More;
            }
            let c = buf.get(j).copied().unwrap_or(0);
            j += 1;
            if c == b'\n' {
                return bad(
                    self.csv,
                    "an end-of-copy marker that does not match the line endings",
                );
            }
            if c != b'\r' {
                return bad(self.csv, "a corrupt end-of-copy marker");
            }
        }
        if j >= n && !eof {
            return Marker::More;
        }
        let c = buf.get(j).copied().unwrap_or(0);
        if c != b'\r' && c != b'\n' {
            return bad(self.csv, "a corrupt end-of-copy marker");
        }
        if (matches!(self.eol, Eol::Nl | Eol::CrNl) && c != b'\n')
            || (self.eol == Eol::Cr && c != b'\r')
        {
            return Marker::Error("an end-of-copy marker that does not match the line endings");
        }
        Marker::End
    }
}

enum Marker {
    End,
    Data,
    More,
    Error(&'static str),
}

/// One field of a record: its bytes as the client sent them and its value
/// as PostgreSQL reads it (`None` = NULL).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Field {
    pub raw: Range<usize>,
    pub value: Option<Vec<u8>>,
}

/// PostgreSQL's `CopyReadAttributesText`.
pub(super) fn split_text(line: &[u8], delim: u8, null: &[u8]) -> Result<Vec<Field>, &'static str> {
    let mut out = vec![];
    let mut i = 0;
    loop {
        let start = i;
        let mut value = Vec::new();
        let mut non_ascii = false;
        let mut found_delim = false;
        let mut end;
        loop {
            end = i;
            let Some(&c) = line.get(i) else { break };
            i += 1;
            if c == delim {
                found_delim = true;
                break;
            }
            if c != b'\\' {
                value.push(c);
                continue;
            }
            let Some(&c) = line.get(i) else { break };
            i += 1;
            let v = match c {
                b'0'..=b'7' => {
                    let mut v = u32::from(c - b'0');
                    for _ in 0..2 {
                        match line.get(i) {
                            Some(d @ b'0'..=b'7') => {
                                v = (v << 3) + u32::from(d - b'0');
                                i += 1;
                            }
                            _ => break,
                        }
                    }
                    let v = (v & 0xff) as u8;
                    non_ascii |= v == 0 || v >= 0x80;
                    v
                }
                b'x' => match line.get(i).and_then(|d| (*d as char).to_digit(16)) {
                    Some(d) => {
                        i += 1;
                        let mut v = d;
                        if let Some(d) = line.get(i).and_then(|d| (*d as char).to_digit(16)) {
                            i += 1;
                            v = (v << 4) + d;
                        }
                        let v = v as u8;
                        non_ascii |= v == 0 || v >= 0x80;
                        v
                    }
                    None => b'x',
                },
                b'b' => 8,
                b'f' => 12,
                b'n' => b'\n',
                b'r' => b'\r',
                b't' => b'\t',
                b'v' => 11,
                other => other,
            };
            value.push(v);
        }
        let raw = start..end;
        let value = if &line[raw.clone()] == null {
            None
        } else {
            if non_ascii && !valid_text(&value) {
                return Err("an escape that makes invalid UTF-8 or a zero byte");
            }
            Some(value)
        };
        out.push(Field { raw, value });
        if !found_delim {
            return Ok(out);
        }
    }
}

/// PostgreSQL's `CopyReadAttributesCSV` (before FORCE_NULL and
/// FORCE_NOT_NULL, which apply per column). Each field comes with whether
/// it was quoted.
pub(super) fn split_csv(
    line: &[u8],
    delim: u8,
    quote: u8,
    escape: u8,
    null: &[u8],
) -> Result<Vec<(Field, bool)>, &'static str> {
    let mut out = vec![];
    let mut i = 0;
    loop {
        let start = i;
        let mut value = Vec::new();
        let mut quoted = false;
        let mut found_delim = false;
        let mut end;
        'field: loop {
            // Not in quotes.
            loop {
                end = i;
                let Some(&c) = line.get(i) else {
                    break 'field;
                };
                i += 1;
                if c == delim {
                    found_delim = true;
                    break 'field;
                }
                if c == quote {
                    quoted = true;
                    break;
                }
                value.push(c);
            }
            // In quotes.
            loop {
                let Some(&c) = line.get(i) else {
                    return Err("an unterminated quoted CSV field");
                };
                i += 1;
                if c == escape
                    && let Some(&next) = line.get(i)
                    && (next == escape || next == quote)
                {
                    value.push(next);
                    i += 1;
                    continue;
                }
                if c == quote {
                    break;
                }
                value.push(c);
            }
        }
        let raw = start..end;
        let value = (quoted || &line[raw.clone()] != null).then_some(value);
        out.push((Field { raw, value }, quoted));
        if !found_delim {
            return Ok(out);
        }
    }
}

/// Text PostgreSQL accepts from a UTF8 client: valid UTF-8 without zero
/// bytes.
fn valid_text(b: &[u8]) -> bool {
    !b.contains(&0) && std::str::from_utf8(b).is_ok()
}

/// What a value pgveil writes stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// A column name in the header line (PostgreSQL skips the line).
    Header,
    /// Client field `i`.
    Field(usize),
    /// A field pgveil appends (blind index).
    Appended,
}

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

    /// One record (without its line ending).
    async fn record(
        &mut self,
        line: &[u8],
        engine: &Engine,
        out: &mut BytesMut,
    ) -> Result<(), Refusal> {
        if !valid_text(line) {
            return Err(
                self.malformed("bytes that are not a valid text (UTF-8 without zero bytes)")
            );
        }
        let plan = self.plan.clone();
        let delim = plan.delimiter as u8;
        let null = plan.null.as_bytes();
        if std::mem::take(&mut self.header_pending) {
            // PostgreSQL skips the header line (HEADER MATCH is refused at
            // planning): send one naming the columns it will read.
            let names = plan
                .columns
                .iter()
                .flatten()
                .chain(plan.appended_columns.iter());
            for (i, name) in names.enumerate() {
                if i > 0 {
                    out.extend_from_slice(&[delim]);
                }
                self.put_value(name.as_bytes(), Target::Header, out)?;
            }
            out.extend_from_slice(b"\n");
            return Ok(());
        }
        let fields: Vec<Field> = match plan.format {
            CopyFormat::Csv => {
                let mut f = split_csv(line, delim, plan.quote as u8, plan.escape as u8, null)
                    .map_err(|e| self.malformed(e))?;
                for &i in &plan.force_not_null {
                    if let Some((f, _)) = f.get_mut(i)
                        && f.value.is_none()
                    {
                        f.value = Some(null.to_vec());
                    }
                }
                for &i in &plan.force_null {
                    if let Some((f, _)) = f.get_mut(i)
                        && f.value.as_deref() == Some(null)
                    {
                        f.value = None;
                    }
                }
                f.into_iter().map(|(f, _)| f).collect()
            }
            _ => split_text(line, delim, null).map_err(|e| self.malformed(e))?,
        };
        if fields.len() != plan.fields.len() {
            return Err(self.malformed(if fields.len() > plan.fields.len() {
                "a row with more fields than the column list"
            } else {
                "a row with fewer fields than the column list"
            }));
        }
        for (i, (spec, f)) in plan.fields.iter().zip(&fields).enumerate() {
            if i > 0 {
                out.extend_from_slice(&[delim]);
            }
            let raw = &line[f.raw.clone()];
            match (spec, &f.value) {
                (CopyField::Plain, _) | (_, None) => out.extend_from_slice(raw),
                (
                    CopyField::Encrypt {
                        target,
                        tenant_field,
                    },
                    Some(v),
                ) => {
                    let attr = self.attr(target)?;
                    let tenant = match tenant_field {
                        Some(t) => match fields.get(*t).and_then(|f| f.value.as_ref()) {
                            Some(t) => Some(String::from_utf8_lossy(t).into_owned()),
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
                    self.put_value(&stored_text(attr.storage, &env), Target::Field(i), out)?;
                }
                (CopyField::RequireEnvelope { target }, Some(v)) => {
                    let attr = self.attr(target)?;
                    if stored_to_envelope(attr.storage, 0, v).is_none() {
                        return Err(ValueError::NotEnvelope {
                            column: attr.column.to_string(),
                        }
                        .into());
                    }
                    out.extend_from_slice(raw);
                }
            }
        }
        for (op, src, target) in &plan.appended {
            out.extend_from_slice(&[delim]);
            let attr = self.attr(target)?;
            match fields.get(*src).and_then(|f| f.value.as_ref()) {
                None => out.extend_from_slice(null),
                Some(v) => {
                    let canonical = engine.crypto.canonical(&attr, 0, v)?;
                    let idx = engine.crypto.blind_index(
                        &attr,
                        *op == SlotOp::BlindIndexNext,
                        &canonical,
                    )?;
                    let text = format!("\\x{}", hex::encode(idx));
                    self.put_value(text.as_bytes(), Target::Appended, out)?;
                }
            }
        }
        out.extend_from_slice(b"\n");
        Ok(())
    }

    /// Write a non-NULL value so that PostgreSQL reads back exactly `v`
    /// (never as NULL).
    fn put_value(&self, v: &[u8], target: Target, out: &mut BytesMut) -> Result<(), Refusal> {
        let plan = &self.plan;
        let delim = plan.delimiter as u8;
        let null = plan.null.as_bytes();
        let at = out.len();
        match plan.format {
            CopyFormat::Csv => {
                if matches!(target, Target::Field(i) if plan.force_null.contains(&i)) && v == null {
                    return Err(self.malformed("a value that FORCE_NULL would read as NULL"));
                }
                let (quote, escape) = (plan.quote as u8, plan.escape as u8);
                out.extend_from_slice(&[quote]);
                for &b in v {
                    if b == quote || b == escape {
                        out.extend_from_slice(&[escape]);
                    }
                    out.extend_from_slice(&[b]);
                }
                out.extend_from_slice(&[quote]);
            }
            _ => {
                for &b in v {
                    match b {
                        b'\\' => out.extend_from_slice(b"\\\\"),
                        b'\n' => out.extend_from_slice(b"\\n"),
                        b'\r' => out.extend_from_slice(b"\\r"),
                        b if b == delim => out.extend_from_slice(&[b'\\', b]),
                        b => out.extend_from_slice(&[b]),
                    }
                }
                if target != Target::Header && &out[at..] == null {
                    return Err(self.malformed("a value that reads as the NULL string"));
                }
            }
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

fn put_copy_data(out: &mut BytesMut, rows: &[u8]) {
    if !rows.is_empty() {
        let s = begin(out, b'd');
        out.extend_from_slice(rows);
        finish(out, s);
    }
}

/// The text form of an envelope as the column stores it.
fn stored_text(storage: Storage, env: &[u8]) -> Vec<u8> {
    match storage {
        Storage::Bytea => format!("\\x{}", hex::encode(env)).into_bytes(),
        Storage::Text => crate::crypto::envelope::to_text(env).into_bytes(),
    }
}

/// What a statement (as `sql::split_statements` cuts it) is to COPY, read
/// on PostgreSQL's tokens (`sql::pglex`: comments, strings, quoted
/// identifiers and dollar quotes as PostgreSQL ends them; a `--` comment
/// ends at `\n` or `\r`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyKind {
    NotCopy,
    /// `COPY … FROM STDIN`: PostgreSQL reads CopyData from the client.
    FromStdin,
    /// Any other COPY (`TO`, `FROM 'file'`, `FROM PROGRAM`).
    Other,
}

/// How PostgreSQL reads `stmt`'s COPY, if it is one. A token the lexer
/// does not model exactly counts as a COPY FROM STDIN (the cautious
/// reading: more COPYs, never fewer).
pub fn copy_kind(stmt: &str) -> CopyKind {
    use crate::sql::pglex::{Kind, Tokens};
    let mut t = Tokens::new(stmt);
    match t.next() {
        Some(first) if first.kind == Kind::Unsure => return CopyKind::FromStdin,
        Some(first)
            if first.kind == Kind::Ident
                && stmt[first.span.clone()].eq_ignore_ascii_case("copy") => {}
        _ => return CopyKind::NotCopy,
    }
    let mut depth = 0i32;
    let mut unsure = false;
    let cautious = |unsure: bool, k: CopyKind| if unsure { CopyKind::FromStdin } else { k };
    while let Some(tok) = t.next() {
        let text = &stmt[tok.span.clone()];
        match tok.kind {
            Kind::Unsure => unsure = true,
            Kind::Op if text == "(" => depth += 1,
            Kind::Op if text == ")" => depth -= 1,
            // `COPY (query) TO …` has its FROM inside the parentheses.
            Kind::Ident if depth == 0 && text.eq_ignore_ascii_case("to") => {
                return cautious(unsure, CopyKind::Other);
            }
            Kind::Ident if depth == 0 && text.eq_ignore_ascii_case("from") => {
                return match t.next() {
                    Some(n)
                        if n.kind == Kind::Ident
                            && stmt[n.span.clone()].eq_ignore_ascii_case("stdin") =>
                    {
                        CopyKind::FromStdin
                    }
                    Some(n) if n.kind == Kind::Unsure => CopyKind::FromStdin,
                    _ => cautious(unsure, CopyKind::Other),
                };
            }
            _ => {}
        }
    }
    cautious(unsure, CopyKind::Other)
}

/// Whether a statement is a COPY of any kind.
pub fn is_copy_statement(stmt: &str) -> bool {
    copy_kind(stmt) != CopyKind::NotCopy
}

/// How many COPY … FROM STDIN statements PostgreSQL runs for a simple
/// Query with this text, in order (a byte scan for the word first: most
/// queries hold none).
pub fn copies_from_stdin(sql: &str) -> usize {
    if !sql
        .as_bytes()
        .windows(4)
        .any(|w| w.eq_ignore_ascii_case(b"copy"))
    {
        return 0;
    }
    crate::sql::split_statements(sql)
        .into_iter()
        .filter(|r| copy_kind(&sql[r.clone()]) == CopyKind::FromStdin)
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(format: CopyFormat) -> CopyPlan {
        let csv = format == CopyFormat::Csv;
        CopyPlan {
            schema: "public".into(),
            table: "t".into(),
            columns: None,
            format,
            delimiter: if csv { ',' } else { '\t' },
            null: if csv { String::new() } else { "\\N".into() },
            header: false,
            quote: '"',
            escape: if csv { '"' } else { '\\' },
            direction: crate::sql::CopyDirection::In,
            sql: String::new(),
            fields: vec![],
            appended: vec![],
            appended_columns: vec![],
            force_not_null: vec![],
            force_null: vec![],
            decrypt: vec![],
            force_quote: vec![],
            source: 0..0,
        }
    }

    /// Records as the reader cuts `data` (fed in pieces of `chunk` bytes),
    /// and whether it ended at `\.`.
    fn lines(p: &CopyPlan, data: &[u8], chunk: usize) -> Result<(Vec<Vec<u8>>, bool), String> {
        let mut r = LineReader::new(p);
        let mut buf = Vec::new();
        let mut out = vec![];
        let mut fed = 0;
        loop {
            let eof = fed >= data.len();
            if !eof {
                let n = chunk.min(data.len() - fed);
                buf.extend_from_slice(&data[fed..fed + n]);
                fed += n;
            }
            let mut start = 0;
            loop {
                match r.next(&buf[start..], eof).map_err(str::to_string)? {
                    Step::More => break,
                    Step::Line { end, next } => {
                        out.push(buf[start..start + end].to_vec());
                        start += next;
                        r.reset();
                    }
                    Step::EndMarker { end } => {
                        if end > 0 {
                            out.push(buf[start..start + end].to_vec());
                        }
                        return Ok((out, true));
                    }
                    Step::Eof { end } => {
                        if end > 0 {
                            out.push(buf[start..start + end].to_vec());
                        }
                        return Ok((out, false));
                    }
                }
            }
            buf.drain(..start);
            if eof {
                unreachable!("the reader always answers at end of data");
            }
        }
    }

    fn same_in_every_chunking(p: &CopyPlan, data: &[u8]) -> Result<(Vec<Vec<u8>>, bool), String> {
        let whole = lines(p, data, data.len().max(1));
        for chunk in 1..=4 {
            assert_eq!(lines(p, data, chunk), whole, "chunk {chunk}: {data:?}");
        }
        whole
    }

    fn v(s: &[&str]) -> Vec<Vec<u8>> {
        s.iter().map(|s| s.as_bytes().to_vec()).collect()
    }

    #[test]
    fn text_line_endings_are_fixed_by_the_first_line() {
        let p = plan(CopyFormat::Text);
        assert_eq!(
            same_in_every_chunking(&p, b"a\nb\n"),
            Ok((v(&["a", "b"]), false))
        );
        assert_eq!(
            same_in_every_chunking(&p, b"a\r\nb\r\n"),
            Ok((v(&["a", "b"]), false))
        );
        assert_eq!(
            same_in_every_chunking(&p, b"a\rb\r"),
            Ok((v(&["a", "b"]), false))
        );
        assert_eq!(
            same_in_every_chunking(&p, b"a\nb"),
            Ok((v(&["a", "b"]), false))
        );
        // A different ending later is an error, as in PostgreSQL.
        assert!(same_in_every_chunking(&p, b"a\r\nb\nc").is_err());
        assert!(same_in_every_chunking(&p, b"a\nb\r\n").is_err());
        assert!(same_in_every_chunking(&p, b"a\rb\n").is_err());
        assert!(same_in_every_chunking(&p, b"a\r\nb\rc\r\n").is_err());
    }

    #[test]
    fn text_backslash_escapes_the_next_byte_even_a_newline() {
        let p = plan(CopyFormat::Text);
        assert_eq!(
            same_in_every_chunking(&p, b"a\\\nb\nc\n"),
            Ok((v(&["a\\\nb", "c"]), false))
        );
        assert_eq!(
            same_in_every_chunking(&p, b"a\\\\\nb\n"),
            Ok((v(&["a\\\\", "b"]), false))
        );
        // `\\.` is a backslash and a period, not the end marker.
        assert_eq!(
            same_in_every_chunking(&p, b"\\\\.\nb\n"),
            Ok((v(&["\\\\.", "b"]), false))
        );
    }

    #[test]
    fn text_end_marker() {
        let p = plan(CopyFormat::Text);
        assert_eq!(
            same_in_every_chunking(&p, b"a\n\\.\nplaintext-after\n"),
            Ok((v(&["a"]), true))
        );
        assert_eq!(
            same_in_every_chunking(&p, b"a\r\n\\.\r\nz"),
            Ok((v(&["a"]), true))
        );
        // Data before `\.` on its line is a last row (PostgreSQL 15).
        assert_eq!(
            same_in_every_chunking(&p, b"a\nb\\.\nc\n"),
            Ok((v(&["a", "b"]), true))
        );
        assert!(same_in_every_chunking(&p, b"a\n\\.x\n").is_err());
        assert!(same_in_every_chunking(&p, b"a\r\n\\.\n").is_err());
        assert!(same_in_every_chunking(&p, b"a\n\\.\r").is_err());
    }

    #[test]
    fn csv_quoted_newlines_and_end_marker() {
        let p = plan(CopyFormat::Csv);
        assert_eq!(
            same_in_every_chunking(&p, b"\"a\nb\",c\r\nd\r\n"),
            Ok((v(&["\"a\nb\",c", "d"]), false))
        );
        assert_eq!(
            same_in_every_chunking(&p, b"\"a\r\n\\.\r\nb\",c\r\n\\.\r\n"),
            Ok((v(&["\"a\r\n\\.\r\nb\",c"]), true))
        );
        // `\.` with more on its line is data in CSV.
        assert_eq!(
            same_in_every_chunking(&p, b"\\.x,1\n\\.\nz\n"),
            Ok((v(&["\\.x,1"]), true))
        );
        // Only the first byte of a record can start the marker.
        assert_eq!(
            same_in_every_chunking(&p, b"x\\.\ny\n"),
            Ok((v(&["x\\.", "y"]), false))
        );
    }

    #[test]
    fn csv_escape_other_than_quote() {
        let mut p = plan(CopyFormat::Csv);
        p.escape = '\\';
        // `\"` does not close the quoted field; `\\` before a quote does not
        // escape it.
        let data = b"\"a\\\"\nb\",1\n\"c\\\\\",2\n";
        let (l, _) = same_in_every_chunking(&p, data).unwrap();
        assert_eq!(l, v(&["\"a\\\"\nb\",1", "\"c\\\\\",2"]));
        let f = split_csv(&l[0], b',', b'"', b'\\', b"").unwrap();
        assert_eq!(f[0].0.value.as_deref(), Some(&b"a\"\nb"[..]));
        let f = split_csv(&l[1], b',', b'"', b'\\', b"").unwrap();
        assert_eq!(f[0].0.value.as_deref(), Some(&b"c\\"[..]));
    }

    #[test]
    fn text_fields_decode_as_postgresql() {
        let f = split_text(
            b"a\\tb\t\\N\tc\\\\d\tx\\\ty\t\\101\\x41\\x4g\\xz\\q\tend\\",
            b'\t',
            b"\\N",
        )
        .unwrap();
        let vals: Vec<Option<&[u8]>> = f.iter().map(|f| f.value.as_deref()).collect();
        assert_eq!(
            vals,
            vec![
                Some(&b"a\tb"[..]),
                None,
                Some(&b"c\\d"[..]),
                Some(&b"x\ty"[..]),
                Some(&b"AA\x04gxzq"[..]),
                Some(&b"end"[..]),
            ]
        );
        // The trailing lone backslash is not part of the raw field.
        assert_eq!(f[5].raw.len(), 3);
        // NULL is the raw text: an escaped form of it is a value.
        let f = split_text(b"\\\\N", b'\t', b"\\N").unwrap();
        assert_eq!(f[0].value.as_deref(), Some(&b"\\N"[..]));
        // Escapes that make invalid UTF-8 or NUL are refused.
        assert!(split_text(b"\\000", b'\t', b"\\N").is_err());
        assert!(split_text(b"\\xff", b'\t', b"\\N").is_err());
        assert!(split_text(b"\\xc3\\xa9", b'\t', b"\\N").is_ok());
    }

    #[test]
    fn csv_fields_decode_as_postgresql() {
        let f = split_csv(b"a,\"b,\"\"c\"\"\",,\"\",x\"y\"z", b',', b'"', b'"', b"").unwrap();
        let vals: Vec<Option<&[u8]>> = f.iter().map(|(f, _)| f.value.as_deref()).collect();
        assert_eq!(
            vals,
            vec![
                Some(&b"a"[..]),
                Some(&b"b,\"c\""[..]),
                None,
                Some(&b""[..]),
                Some(&b"xyz"[..]),
            ]
        );
        assert!(split_csv(b"\"abc", b',', b'"', b'"', b"").is_err());
    }

    #[test]
    fn copy_statements_are_recognised() {
        assert!(is_copy_statement("COPY t FROM STDIN"));
        assert!(is_copy_statement(
            "/* a /* nested */ c */ -- x\n copy t from stdin"
        ));
        assert!(is_copy_statement("Copy(t)"));
        assert!(!is_copy_statement("copyright"));
        assert!(!is_copy_statement("SELECT 'COPY'"));
        // A `--` comment ends at a carriage return too, as in PostgreSQL.
        for hidden in [
            "-- c\rCOPY t FROM STDIN",
            "--\r\ncopy t from stdin",
            "-- a\r--b\rCOPY t FROM STDIN",
        ] {
            assert_eq!(copy_kind(hidden), CopyKind::FromStdin, "{hidden:?}");
        }
        assert_eq!(copy_kind("-- COPY t FROM STDIN"), CopyKind::NotCopy);
        assert_eq!(
            copy_kind("/* COPY t FROM STDIN */ SELECT 1"),
            CopyKind::NotCopy
        );
        assert_eq!(
            copy_kind("COPY t (a, b) FROM stdin WITH (FORMAT csv)"),
            CopyKind::FromStdin
        );
        assert_eq!(copy_kind("COPY stdin FROM STDIN"), CopyKind::FromStdin);
        assert_eq!(
            copy_kind("COPY (SELECT a FROM t) TO STDOUT"),
            CopyKind::Other
        );
        assert_eq!(copy_kind("COPY t FROM '/tmp/f'"), CopyKind::Other);
        assert_eq!(copy_kind("COPY t TO STDOUT"), CopyKind::Other);
        assert_eq!(copy_kind("COPY \"from\" FROM STDIN"), CopyKind::FromStdin);
    }

    #[test]
    fn copies_are_counted_on_postgresql_tokens() {
        assert_eq!(copies_from_stdin("SELECT 1"), 0);
        assert_eq!(
            copies_from_stdin(
                "-- hidden\rCOPY scratch (t) FROM STDIN; COPY users (name) FROM STDIN"
            ),
            2
        );
        assert_eq!(
            copies_from_stdin("SELECT 'COPY t FROM STDIN; x'; COPY t FROM STDIN"),
            1
        );
        assert_eq!(copies_from_stdin("SELECT $$;COPY t FROM STDIN$$"), 0);
        assert_eq!(
            copies_from_stdin("COPY a FROM STDIN;COPY b TO STDOUT;copy c from stdin"),
            2
        );
    }

    /// The reader cuts any input the same however it is split into
    /// messages, in one pass (property over generated inputs).
    #[test]
    fn reader_is_independent_of_message_boundaries() {
        let alphabet: &[u8] = b"a,\t\"\\.\r\nN";
        let mut seed = 0x2545F4914F6CDD1Du64;
        for format in [CopyFormat::Text, CopyFormat::Csv] {
            let p = plan(format);
            for _ in 0..3000 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let len = (seed % 14) as usize;
                let data: Vec<u8> = (0..len)
                    .map(|k| alphabet[((seed >> (k * 4 % 60)) as usize + k) % alphabet.len()])
                    .collect();
                let whole = lines(&p, &data, data.len().max(1));
                for chunk in 1..=3 {
                    assert_eq!(lines(&p, &data, chunk), whole, "{data:?}");
                }
            }
        }
    }
}
