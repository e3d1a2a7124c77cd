//! COPY on protected tables and queries.
//!
//! `COPY t (…) FROM STDIN` into a protected table becomes a [`CopyPlan`]
//! whose fields pgveil encrypts row by row (or checks to be envelopes), with
//! the blind-index columns appended to the column list and every option
//! restated as pgveil read it. COPY from a server file or program, binary
//! COPY into a protected table and COPY into a view over protected data are
//! refused. `COPY … TO` may show a blind-index column only to a role that
//! may search it, and is decrypted for roles that read plaintext when it
//! goes to STDOUT (a plan for `session::copy_out`).

mod options;

use std::ops::Range;

use sqlparser::ast::{CopySource, CopyTarget, Statement};

use self::options::{CopyOpts, copy_options, options_text, plain_option_literals};
use super::{Cx, OutCol, R, RelKind, Top, make_ident, name_parts, norm};
use crate::sql::{
    ColumnRef, CopyDecrypt, CopyDirection, CopyField, CopyFormat, CopyPlan, Reject, SlotOp,
    StatementKind, Use,
};

/// The plan of a COPY under options `o`, before its columns are known.
fn copy_plan(
    schema: &str,
    table: &str,
    o: &CopyOpts,
    direction: CopyDirection,
    text: &str,
    source: Range<usize>,
) -> CopyPlan {
    CopyPlan {
        schema: schema.to_string(),
        table: table.to_string(),
        columns: None,
        format: o.format,
        delimiter: o.delimiter,
        null: o.null.clone(),
        header: o.header,
        quote: o.quote,
        escape: o.escape,
        direction,
        sql: text.to_string(),
        fields: vec![],
        appended: vec![],
        appended_columns: vec![],
        force_not_null: vec![],
        force_null: vec![],
        decrypt: vec![],
        force_quote: vec![],
        source,
    }
}

impl<'a> Cx<'a> {
    pub(super) fn copy(
        &mut self,
        stmt: &mut Statement,
        text: &str,
        source: Range<usize>,
    ) -> R<Top> {
        let Statement::Copy {
            source: src,
            to,
            target,
            options,
            legacy_options,
            ..
        } = stmt
        else {
            unreachable!("copy() is called on COPY");
        };
        let direction = if *to {
            CopyDirection::Out
        } else {
            CopyDirection::In
        };
        let (table_name, columns) = match src {
            CopySource::Query(q) => {
                let outs = self.query(q, &[])?;
                self.exported(&outs, "COPY (query) TO")?;
                if self.changed {
                    return Err(Reject::unsupported(
                        "pgveil: COPY (SELECT …) with lookups on protected columns is not supported: run the SELECT instead",
                    ));
                }
                let decrypt = self.copy_decrypt(&outs);
                let first = decrypt.iter().flatten().next().map(|d| d.column.clone());
                let Some(first) = first.filter(|_| matches!(target, CopyTarget::Stdout)) else {
                    return Ok(Top::Done(StatementKind::Copy));
                };
                let o = copy_options(
                    options,
                    legacy_options,
                    false,
                    &format!("{}.{}", first.schema, first.table),
                )?;
                let mut plan = copy_plan(&first.schema, &first.table, &o, direction, text, source);
                let names: Vec<Option<String>> = outs.iter().map(|o| o.name.clone()).collect();
                self.decrypting_copy_to(&mut plan, &o, text, &names, decrypt)?;
                return Ok(Top::Copy(Box::new(plan)));
            }
            CopySource::Table {
                table_name,
                columns,
            } => (table_name, columns),
        };
        let table_sql = table_name.to_string();
        let (_, _, kind) = self.table_kind(&name_parts(table_name), &[])?;
        let t = match kind {
            RelKind::Table(t) => t,
            // A view over protected columns: PostgreSQL would route the rows
            // through its INSTEAD OF trigger or rule, where pgveil cannot
            // encrypt them.
            RelKind::View(v) if direction == CopyDirection::In => {
                return Err(Reject::unsupported(format!(
                    "pgveil: COPY into view {}.{} is not supported: it shows protected columns and pgveil encrypts only rows copied into the protected table itself; COPY into the base table with a column list",
                    v.schema, v.name
                )));
            }
            RelKind::View(_) => return Ok(Top::Done(StatementKind::Copy)),
            _ => return Ok(Top::Passthrough),
        };
        let qualified = t.qualified();
        let strict = direction == CopyDirection::In;
        if strict {
            plain_option_literals(text, &qualified)?;
        }
        let o = copy_options(options, legacy_options, strict, &qualified)?;
        let mut cols: Option<Vec<String>> = if columns.is_empty() {
            self.an
                .table_columns
                .get(&(t.schema.clone(), t.table.clone()))
                .cloned()
        } else {
            Some(columns.iter().map(norm).collect())
        };
        let mut plan = copy_plan(&t.schema, &t.table, &o, direction, text, source);
        if direction == CopyDirection::Out {
            // CopyData is not masked like DataRows: blind-index columns go
            // out only to roles that may search them.
            for c in cols.iter().flatten().chain(
                cols.is_none()
                    .then(|| {
                        t.columns
                            .iter()
                            .filter_map(|c| c.blind_index.as_ref().map(|b| &b.column))
                    })
                    .into_iter()
                    .flatten(),
            ) {
                if let Some((cp, _)) = t.blind_index_owner(c)
                    && !self
                        .an
                        .policy
                        .column_access(self.role, cp)
                        .is_some_and(|a| a.search)
                {
                    return Err(Reject::privilege(format!(
                        "pgveil: COPY {qualified} TO would show blind-index column {c}, which role {} may not search: list the columns without it, e.g. COPY {qualified} (id, …) TO STDOUT",
                        self.role
                    )));
                }
            }
            for c in &t.columns {
                self.touch(&ColumnRef::new(&t.schema, &t.table, &c.name), Use::Read);
            }
            let reads = t.columns.iter().any(|c| self.access(c).read_plaintext);
            if reads && matches!(target, CopyTarget::Stdout) {
                // The rows go out decrypted, as a SELECT of the columns
                // would show them.
                let Some(list) = &cols else {
                    return Err(Reject::unsupported(format!(
                        "pgveil: COPY {qualified} TO STDOUT would be decrypted for role {}, but pgveil does not know the table's columns: list them, e.g. COPY {qualified} (id, …) TO STDOUT",
                        self.role
                    )));
                };
                let tenant_field = t
                    .tenant
                    .as_ref()
                    .and_then(|tc| list.iter().position(|c| c == tc));
                let decrypt = list
                    .iter()
                    .map(|c| {
                        let cp = t.column(c)?;
                        self.access(cp).read_plaintext.then(|| CopyDecrypt {
                            column: ColumnRef::new(&t.schema, &t.table, c),
                            tenant_field,
                        })
                    })
                    .collect();
                let names: Vec<Option<String>> = list.iter().cloned().map(Some).collect();
                self.decrypting_copy_to(&mut plan, &o, text, &names, decrypt)?;
            }
            plan.columns = cols;
            return Ok(Top::Copy(Box::new(plan)));
        }
        if !matches!(target, CopyTarget::Stdin) {
            return Err(Reject::unsupported(format!(
                "pgveil: COPY {qualified} FROM a server file or program is not supported: it would store plaintext; use COPY … FROM STDIN through pgveil"
            )));
        }
        if o.format == CopyFormat::Binary {
            return Err(Reject::unsupported(format!(
                "pgveil: binary COPY into protected table {qualified} is not supported: use FORMAT text or csv"
            )));
        }
        let Some(list) = cols.take() else {
            return Err(Reject::unsupported(format!(
                "pgveil: COPY into protected table {qualified} needs a column list: COPY {qualified} (col, …) FROM STDIN"
            )));
        };
        for (name, given, into) in [
            (
                "FORCE_NOT_NULL",
                &o.force_not_null,
                &mut plan.force_not_null,
            ),
            ("FORCE_NULL", &o.force_null, &mut plan.force_null),
        ] {
            for c in given {
                let Some(i) = list.iter().position(|l| l == c) else {
                    return Err(Reject::unsupported(format!(
                        "pgveil: COPY option {name} of protected table {qualified} names column {c}, which is not in the COPY column list: name only listed columns"
                    )));
                };
                into.push(i);
            }
        }
        let tenant_field = t
            .tenant
            .as_ref()
            .and_then(|tc| list.iter().position(|c| c == tc));
        let mut appended_cols: Vec<String> = vec![];
        for (i, c) in list.iter().enumerate() {
            if let Some((owner, _)) = t.blind_index_owner(c)
                && self.access(owner).write
            {
                return Err(Reject::unsupported(format!(
                    "pgveil: column {qualified}.{c} is the blind index of {} and is maintained by pgveil: remove it from the COPY column list",
                    owner.name
                )));
            }
            let Some(cp) = t.column(c) else {
                plan.fields.push(CopyField::Plain);
                continue;
            };
            let cref = ColumnRef::new(&t.schema, &t.table, c);
            self.touch(&cref, Use::Write);
            if self.access(cp).write {
                if let Some(tc) = &t.tenant
                    && tenant_field.is_none()
                {
                    return Err(Reject::unsupported(format!(
                        "pgveil: COPY into {qualified} writes protected column {cref} but the tenant column {tc} is not in the column list: add it"
                    )));
                }
                plan.fields.push(CopyField::Encrypt {
                    target: cref.clone(),
                    tenant_field,
                });
                if let Some(b) = &cp.blind_index {
                    plan.appended.push((SlotOp::BlindIndex, i, cref.clone()));
                    appended_cols.push(b.column.clone());
                    if let Some(n) = &b.next {
                        plan.appended
                            .push((SlotOp::BlindIndexNext, i, cref.clone()));
                        appended_cols.push(n.clone());
                    }
                }
            } else {
                plan.fields
                    .push(CopyField::RequireEnvelope { target: cref });
            }
        }
        // The statement PostgreSQL runs states every option exactly as
        // pgveil read it (and the blind-index columns pgveil appends).
        let cols: Vec<String> = list
            .iter()
            .chain(appended_cols.iter())
            .map(|c| make_ident(c).to_string())
            .collect();
        let lit = |s: &str| format!("'{}'", s.replace('\'', "''"));
        let mut with = vec![format!(
            "FORMAT {}",
            if o.format == CopyFormat::Csv {
                "csv"
            } else {
                "text"
            }
        )];
        if o.freeze {
            with.push("FREEZE".into());
        }
        with.push(format!("DELIMITER {}", lit(&o.delimiter.to_string())));
        with.push(format!("NULL {}", lit(&o.null)));
        if o.header {
            with.push("HEADER".into());
        }
        if o.format == CopyFormat::Csv {
            with.push(format!("QUOTE {}", lit(&o.quote.to_string())));
            with.push(format!("ESCAPE {}", lit(&o.escape.to_string())));
            for (name, idx) in [
                ("FORCE_NOT_NULL", &plan.force_not_null),
                ("FORCE_NULL", &plan.force_null),
            ] {
                if !idx.is_empty() {
                    let names: Vec<String> = idx.iter().map(|&i| cols[i].clone()).collect();
                    with.push(format!("{name} ({})", names.join(", ")));
                }
            }
        }
        if o.utf8 {
            with.push("ENCODING 'UTF8'".into());
        }
        plan.sql = format!(
            "COPY {table_sql} ({}) FROM STDIN WITH ({})",
            cols.join(", "),
            with.join(", ")
        );
        plan.columns = Some(list);
        plan.appended_columns = appended_cols;
        Ok(Top::Copy(Box::new(plan)))
    }

    /// Per output column of `COPY (query) TO`: the protected column this
    /// role gets decrypted, and where the row's tenant id is (the first
    /// output that shows its table's tenant column unchanged).
    fn copy_decrypt(&self, outs: &[OutCol<'a>]) -> Vec<Option<CopyDecrypt>> {
        outs.iter()
            .map(|o| {
                let p = o.prot.as_ref()?;
                let (_, cp) = self.col_policy(&p.col);
                if !self.access(cp).read_plaintext {
                    return None;
                }
                let tenant_field = outs.iter().position(|t| {
                    t.tenant_of
                        .as_ref()
                        .is_some_and(|t| t.schema == p.col.schema && t.table == p.col.table)
                });
                Some(CopyDecrypt {
                    column: p.col.clone(),
                    tenant_field,
                })
            })
            .collect()
    }

    /// A COPY TO STDOUT whose rows pgveil decrypts (`decrypt`, per field;
    /// `names`: the fields' column names). pgveil parses the rows under the
    /// statement's options, so they must read as PostgreSQL reads them
    /// (plain `'…'` strings), and the plaintext it writes is UTF8.
    fn decrypting_copy_to(
        &self,
        plan: &mut CopyPlan,
        o: &CopyOpts,
        text: &str,
        names: &[Option<String>],
        decrypt: Vec<Option<CopyDecrypt>>,
    ) -> R<()> {
        let qualified = plan.qualified();
        plain_option_literals(options_text(text), &qualified)?;
        if let Some(e) = &o.encoding
            && e != "utf8"
            && e != "unicode"
        {
            return Err(Reject::unsupported(format!(
                "pgveil: COPY option ENCODING other than UTF8 is not supported for a COPY TO that pgveil decrypts (protected columns of {qualified}): the plaintext is UTF8; leave out ENCODING"
            )));
        }
        if o.format == CopyFormat::Csv {
            // PostgreSQL takes the first column of the name.
            plan.force_quote = o
                .force_quote
                .iter()
                .filter_map(|c| names.iter().position(|n| n.as_deref() == Some(c)))
                .collect();
        }
        plan.decrypt = decrypt;
        Ok(())
    }
}
