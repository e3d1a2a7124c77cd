//! One COPY FROM record, as pgveil sends it on: the header line names the
//! columns PostgreSQL will read, each protected field is encrypted (or
//! checked to be an envelope already), the blind-index fields are
//! appended, and every value pgveil writes is escaped or quoted so that
//! PostgreSQL reads it back exactly, never as NULL. Fields pgveil does not
//! change are the client's bytes. Invariant: no protected field goes out
//! as the client sent it unless it is an envelope.

use std::sync::Arc;

use bytes::BytesMut;

use super::CopyIn;
use super::fields::{Field, split_csv, split_text, valid_text};
use crate::seal::{Form, Sent, ValueError, stored_to_envelope};
use crate::session::Engine;
use crate::session::frontend::Refusal;
use crate::sql::{CopyField, CopyFormat, CopyPlan, SlotOp};

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

impl CopyIn {
    /// One record (without its line ending).
    pub(super) async fn record(
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
        if std::mem::take(&mut self.header_pending) {
            // PostgreSQL skips the header line (HEADER MATCH is refused at
            // planning): send one naming the columns it will read.
            return self.header_line(&plan, out);
        }
        let fields = self.fields(&plan, line)?;
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
                    let tenant = row_tenant(target, tenant_field, &fields)?;
                    let stored = engine
                        .crypto
                        .seal(&attr, tenant.as_deref(), Sent::Text(v), Form::Text)
                        .await?;
                    self.put_value(&stored, Target::Field(i), out)?;
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
        self.put_appended(&plan, &fields, engine, out)?;
        out.extend_from_slice(b"\n");
        Ok(())
    }

    /// The header line pgveil sends: the columns PostgreSQL will read.
    fn header_line(&self, plan: &CopyPlan, out: &mut BytesMut) -> Result<(), Refusal> {
        let delim = plan.delimiter as u8;
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
        Ok(())
    }

    /// The fields of a record as PostgreSQL reads them (CSV: after
    /// FORCE_NOT_NULL and FORCE_NULL), as many as the column list has.
    fn fields(&self, plan: &CopyPlan, line: &[u8]) -> Result<Vec<Field>, Refusal> {
        let delim = plan.delimiter as u8;
        let null = plan.null.as_bytes();
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
        Ok(fields)
    }

    /// The blind-index fields appended to a record, from the fields they
    /// index.
    fn put_appended(
        &self,
        plan: &CopyPlan,
        fields: &[Field],
        engine: &Engine,
        out: &mut BytesMut,
    ) -> Result<(), Refusal> {
        let delim = plan.delimiter as u8;
        let null = plan.null.as_bytes();
        for (op, src, target) in &plan.appended {
            out.extend_from_slice(&[delim]);
            let attr = self.attr(target)?;
            match fields.get(*src).and_then(|f| f.value.as_ref()) {
                None => out.extend_from_slice(null),
                Some(v) => {
                    let idx =
                        engine
                            .crypto
                            .index(&attr, *op == SlotOp::BlindIndexNext, Sent::Text(v))?;
                    let text = format!("\\x{}", hex::encode(idx));
                    self.put_value(text.as_bytes(), Target::Appended, out)?;
                }
            }
        }
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

/// The tenant id of a record for a field encrypted per tenant: the value
/// of its tenant field, which every row must have.
fn row_tenant(
    target: &crate::sql::ColumnRef,
    tenant_field: &Option<usize>,
    fields: &[Field],
) -> Result<Option<String>, Refusal> {
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
    Ok(tenant)
}
