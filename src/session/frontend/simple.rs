//! The simple Query: refused, passed through untouched when it names no
//! protected table, or planned statement by statement and sent rewritten
//! (a lone SELECT that decrypts `bytea` as Parse/Bind/Describe/Execute/Sync
//! with binary results). Held whole, never streamed; a protected COPY must
//! be the only COPY of its Query.

use std::sync::Arc;

use bytes::BytesMut;

use super::Frontend;
use super::audit::{audit_info, copy_audit, merge_audit};
use super::refusal::{NOT_UTF8, Refusal, binary_copy_in, raise_sql, refuse};
use crate::session::copy::CopyIn;
use crate::session::{AuditInfo, CatalogEntry, Pending, QueryOp};
use crate::sql::{CopyDirection, CopyPlan, Mode, RewritePlan, StatementPlan, Use};
use crate::wire::codec::Frame;
use crate::wire::query::{encode_describe, encode_execute, encode_query, encode_sync};
use crate::wire::tag::target;

/// PostgreSQL feeds all CopyData after a simple Query to the first COPY
/// FROM STDIN that runs, then the rest to the next: pgveil transforms rows
/// only when a protected COPY FROM is the one COPY of its Query. Likewise
/// a COPY TO STDOUT whose rows pgveil decrypts is the one COPY of its
/// Query, so that its CopyOutResponse is the only one.
fn copy_not_alone(sql: &str, plans: &[StatementPlan]) -> Option<Refusal> {
    let cp = plans.iter().find_map(|p| match p {
        StatementPlan::Copy(cp) if cp.direction == CopyDirection::In || cp.decrypts() => Some(cp),
        _ => None,
    })?;
    let copies = crate::sql::split_statements(sql)
        .into_iter()
        .filter(|r| crate::session::copy::is_copy_statement(&sql[r.clone()]))
        .count();
    (copies > 1).then(|| {
        refuse(
            "0A000",
            format!(
                "pgveil: COPY {} {} must be the only COPY in its query: send each COPY as a query of its own",
                cp.qualified(),
                if cp.direction == CopyDirection::In {
                    "FROM STDIN"
                } else {
                    "TO STDOUT"
                }
            ),
        )
    })
}
/// A planned Query's statements as they are sent
/// ([`Frontend::render_statements`]).
struct Rendered {
    /// Each statement's text, the last one the refusal when `refused`.
    parts: Vec<String>,
    /// What the audit log records of them, merged.
    audit: Option<AuditInfo>,
    /// A statement was refused: the Query ends with it.
    refused: bool,
    /// The rows of the Query's protected COPY FROM, encrypted.
    transform: Option<CopyIn>,
    /// The Query's COPY TO whose rows are decrypted.
    copy_out: Option<Arc<CopyPlan>>,
}

impl Frontend {
    /// Forward a simple Query as the client sent it: the COPY FROM STDIN
    /// statements PostgreSQL will run for it are counted on its tokens.
    pub(super) fn pass_query(
        &mut self,
        f: &Frame,
        text: &str,
        ops: Vec<QueryOp>,
        out: &mut BytesMut,
    ) {
        crate::metrics::hot().statements_passthrough.increment(1);
        let copies = self.open_copies(crate::session::copy::copies_from_stdin(text), None);
        self.exchange.push(Pending::Query {
            protected: false,
            audit: None,
            ops,
            copies,
            copy_out: None,
        });
        self.forward(f, out);
    }

    /// A simple Query: refused, forwarded as sent, or planned statement by
    /// statement and sent rewritten.
    pub(super) async fn on_query(&mut self, f: &Frame, out: &mut BytesMut) {
        let body = f.body();
        let text = &body[..body.len().saturating_sub(1)];
        let entry = self.entry();
        // The map changes this Query makes (none, and no allocation, while
        // the session has nothing protected prepared).
        let ops = self.query_ops(text);
        if let Some(r) = self.sql_execute(text).or_else(|| self.sql_fetch(text)) {
            self.refuse_query(&r, ops, out);
            return;
        }
        let Ok(sql) = std::str::from_utf8(text) else {
            // Not UTF-8 (another client_encoding): the statement cannot be
            // analysed, so it may only go through if even a lossy reading
            // names no protected table.
            let lossy = String::from_utf8_lossy(text);
            if entry.analyzer.may_touch_protected(&lossy) {
                let r = refuse("22021", NOT_UTF8);
                self.refuse_query(&r, ops, out);
            } else {
                self.pass_query(f, &lossy, ops, out);
            }
            return;
        };
        if let Some(r) = self.settle(sql, true) {
            self.refuse_query(&r, ops, out);
            return;
        }
        if !entry.analyzer.may_touch_protected(sql) {
            self.pass_query(f, sql, ops, out);
            return;
        }
        self.await_answers_for(sql).await;
        if let Some(r) = self
            .unsettled_refusal()
            .or_else(|| self.read_differently(sql))
        {
            self.refuse_query(&r, ops, out);
            return;
        }
        self.rewrite_charge = match self.charge_rewrite(sql.len()).await {
            Ok(c) => c,
            Err(r) => {
                self.refuse_query(&r, ops, out);
                return;
            }
        };
        let plans = entry.plan(sql, &self.id.login_role, Mode::Simple);
        if let Some(r) = copy_not_alone(sql, &plans) {
            // Refused whole: no COPY runs, the client's CopyData for it
            // stays here.
            self.refuse_query(&r, ops, out);
            return;
        }
        let rendered = self.render_statements(sql, &plans, &entry).await;
        crate::metrics::hot().statements_rewritten.increment(1);
        self.send_rendered(&plans, rendered, ops, &entry, out);
    }

    /// The text of each statement of a planned Query as it is sent, up to
    /// the first refused one, which becomes the statement that makes
    /// PostgreSQL raise the refusal (and ends the Query there).
    async fn render_statements(
        &mut self,
        sql: &str,
        plans: &[StatementPlan],
        entry: &Arc<CatalogEntry>,
    ) -> Rendered {
        let mut barrier = self.batch_refusal(sql, entry);
        let mut rendered = Rendered {
            parts: Vec::with_capacity(plans.len()),
            audit: None,
            refused: false,
            transform: None,
            copy_out: None,
        };
        for (i, plan) in plans.iter().enumerate() {
            let step = match barrier.take_if(|(at, _)| *at == i) {
                Some((_, r)) => Err(r),
                None => self.render_statement(plan, entry, &mut rendered).await,
            };
            if let Err(r) = step {
                rendered.parts.push(raise_sql(&r));
                self.rejected(&r);
                rendered.refused = true;
                break;
            }
        }
        rendered
    }

    /// One statement of a planned Query into `rendered`: its text as sent,
    /// what the audit log records of it, the COPY it runs.
    async fn render_statement(
        &mut self,
        plan: &StatementPlan,
        entry: &Arc<CatalogEntry>,
        rendered: &mut Rendered,
    ) -> Result<(), Refusal> {
        match plan {
            StatementPlan::Passthrough { sql } => rendered.parts.push(sql.clone()),
            StatementPlan::Rewrite(rp) => {
                let (s, _) = self.render(rp, false).await?;
                merge_audit(&mut rendered.audit, audit_info(rp).as_deref());
                rendered.parts.push(s)
            }
            StatementPlan::Copy(cp) => {
                if cp.direction == CopyDirection::In {
                    if cp.format == crate::sql::CopyFormat::Binary {
                        return Err(binary_copy_in(cp));
                    }
                    rendered.transform =
                        Some(CopyIn::new(cp.clone(), entry.clone(), self.max_message));
                }
                if cp.decrypts() {
                    merge_audit(&mut rendered.audit, copy_audit(cp).as_deref());
                    rendered.copy_out = Some(cp.clone());
                }
                rendered.parts.push(cp.sql.clone());
            }
            StatementPlan::Reject { sqlstate, message } => {
                return Err(refuse(sqlstate, message.clone()));
            }
        }
        Ok(())
    }

    /// Send a planned Query's statements: a lone SELECT that decrypts
    /// `bytea` as Parse/Bind/Describe/Execute/Sync with binary results,
    /// anything else as one Query (with the COPY windows it opens).
    fn send_rendered(
        &mut self,
        plans: &[StatementPlan],
        rendered: Rendered,
        ops: Vec<QueryOp>,
        entry: &CatalogEntry,
        out: &mut BytesMut,
    ) {
        let Rendered {
            parts,
            audit,
            refused,
            transform,
            copy_out,
        } = rendered;
        if let ([StatementPlan::Rewrite(rp)], [sql], false) = (plans, &parts[..], refused)
            && self.exchange.is_idle()
            && transform.is_none()
            && let Some(result_formats) = self.binary_result_formats(rp, entry)
        {
            // One round trip, as the simple Query would have been.
            self.parse_bind_unnamed(sql.clone(), result_formats, out);
            encode_describe(out, target::PORTAL, "");
            self.exchange.push(Pending::ResultShape);
            encode_execute(out, "", 0);
            encode_sync(out);
            self.exchange.push(Pending::Query {
                protected: true,
                audit: audit.map(Arc::new),
                ops,
                copies: 0..0,
                copy_out: None,
            });
            return;
        }
        // The COPYs PostgreSQL will run, counted on the text sent (a
        // refusal ends the Query before any COPY after it). A protected
        // COPY is the only COPY of its Query (`copy_not_alone`), so its
        // rows are the data of the one COPY window.
        let sent = parts.join(";\n");
        let n = crate::session::copy::copies_from_stdin(&sent);
        if transform.is_some() && n != 1 {
            let r = refuse(
                "0A000",
                "pgveil: the COPY statements of this query could not be matched to their data: send each COPY as a query of its own",
            );
            self.refuse_query(&r, ops, out);
            return;
        }
        let copies = self.open_copies(n, transform);
        self.exchange.push(Pending::Query {
            protected: true,
            audit: audit.map(Arc::new),
            ops,
            copies,
            copy_out,
        });
        encode_query(out, &sent);
    }

    /// The result formats for a simple-query SELECT to run as Parse, Bind,
    /// Describe, Execute, Sync: binary for the protected `bytea` columns
    /// this role decrypts, text for the rest; `None` to send it as it came.
    /// PostgreSQL spends more time writing bytea as hex than reading the
    /// row, and hex doubles the bytes that cross the socket and that pgveil
    /// decodes.
    ///
    /// Only for a plain SELECT whose output columns the analyzer can map
    /// ([`RewritePlan::result_columns`]): the formats must be known at Bind,
    /// before the RowDescription; the backend side checks the
    /// RowDescription against them. The extended protocol runs one
    /// statement as a simple Query would (same implicit transaction, same
    /// errors; PostgreSQL drops the unnamed statement and portal on a
    /// simple Query anyway), and the client sees the simple Query's
    /// messages: RowDescription, DataRows in text, CommandComplete,
    /// ReadyForQuery.
    pub(super) fn binary_result_formats(
        &self,
        rp: &RewritePlan,
        entry: &CatalogEntry,
    ) -> Option<Vec<i16>> {
        // A lookup through a blind index returns a few rows, and the
        // extended protocol costs PostgreSQL more per statement than it
        // saves on a few values (about 8% of a one-row lookup's throughput).
        if rp.kind != crate::sql::StatementKind::Select
            || rp.touched.iter().any(|(_, u)| *u == Use::Search)
        {
            return None;
        }
        let policy = &self.engine.policy;
        let formats: Vec<i16> = rp
            .result_columns
            .as_ref()?
            .iter()
            .map(|c| {
                let binary = c.as_ref().and_then(|c| entry.column(c)).is_some_and(|a| {
                    a.storage == crate::crypto::Storage::Bytea
                        && policy
                            .column_access(&self.id.login_role, &a.policy)
                            .is_some_and(|x| x.read_plaintext)
                });
                i16::from(binary)
            })
            .collect();
        formats.contains(&1).then_some(formats)
    }
}
