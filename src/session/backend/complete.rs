//! The answers that complete a request: ParseComplete, BindComplete and
//! CloseComplete confirm a statement or portal change (the frontend's map
//! takes it only then), CommandComplete, PortalSuspended and
//! EmptyQueryResponse end an Execute or a Query's statement. Completion
//! writes the audit record of what the statement searched or decrypted,
//! invalidates the catalog after DDL and resolves the SQL that names
//! protocol objects (`DEALLOCATE`, `CLOSE`, `DISCARD ALL`). Invariant:
//! audit records name columns and tables, never values.

use std::sync::Arc;

use bytes::BytesMut;

use super::Backend;
use crate::session::{AuditInfo, Kind, Pending, Resolution};
use crate::wire::codec::Frame;
use crate::wire::tag::be;

impl Backend {
    /// ParseComplete or BindComplete: PostgreSQL confirmed the statement or
    /// portal; pgveil's own (`internal`) are not forwarded.
    pub(super) fn on_parse_or_bind_complete(&mut self, f: &Frame, out: &mut BytesMut) {
        let (kind, what) = if f.tag == be::PARSE_COMPLETE {
            (Kind::Parse, "ParseComplete without a Parse")
        } else {
            (Kind::Bind, "BindComplete without a Bind")
        };
        if !self.expect(&[kind], what, out) {
            return;
        }
        let internal = matches!(
            self.exchange.pop_as(true),
            Some(Pending::Parse { internal: true, .. } | Pending::Bind { internal: true, .. })
        );
        if !internal {
            out.extend_from_slice(&f.raw);
        }
    }

    /// CloseComplete: PostgreSQL closed the statement or portal.
    pub(super) fn on_close_complete(&mut self, f: &Frame, out: &mut BytesMut) {
        if !self.expect(&[Kind::Close], "CloseComplete without a Close", out) {
            return;
        }
        self.exchange.pop_as(true);
        out.extend_from_slice(&f.raw);
    }

    /// CommandComplete of an Execute or of a Query's statement.
    pub(super) fn on_command_complete(&mut self, f: &Frame, out: &mut BytesMut) {
        if !self.expect(
            &[Kind::Execute, Kind::Query],
            "CommandComplete without an Execute or Query",
            out,
        ) {
            return;
        }
        self.current = None;
        self.finish_statement(f);
        out.extend_from_slice(&f.raw);
    }

    /// PortalSuspended: an Execute reached its row limit.
    pub(super) fn on_portal_suspended(&mut self, f: &Frame, out: &mut BytesMut) {
        if !self.expect(&[Kind::Execute], "PortalSuspended without an Execute", out) {
            return;
        }
        self.suspend_statement();
        self.exchange.pop();
        out.extend_from_slice(&f.raw);
    }

    /// EmptyQueryResponse of an Execute or of a Query's empty statement.
    pub(super) fn on_empty_query(&mut self, f: &Frame, out: &mut BytesMut) {
        if !self.expect(
            &[Kind::Execute, Kind::Query],
            "EmptyQueryResponse without an Execute or Query",
            out,
        ) {
            return;
        }
        if self.front_is(|p| matches!(p, Pending::Execute { .. })) {
            self.exchange.pop();
        }
        out.extend_from_slice(&f.raw);
    }

    /// CommandComplete: audit, catalog invalidation after DDL, and the
    /// end of an Execute.
    fn finish_statement(&mut self, f: &Frame) {
        let tag = command_tag(f.body());
        self.invalidate_after_ddl(tag);
        let audit = {
            let mut q = self.exchange.pending.lock().expect("pending queue");
            match q.front_mut() {
                Some(Pending::Query { ops, .. })
                    if tag == "DEALLOCATE" || tag == "CLOSE CURSOR" =>
                {
                    // A lone `DEALLOCATE name` or `CLOSE name` completed
                    // (see `Frontend::query_ops`).
                    if let Some(i) = ops.iter().position(|o| o.confirmed_by == Some(tag)) {
                        let o = ops.remove(i);
                        self.exchange.resolve(Resolution::Op(o.id, true));
                    }
                    None
                }
                Some(Pending::Execute { audit, .. }) | Some(Pending::Query { audit, .. }) => {
                    audit.clone()
                }
                _ => None,
            }
        };
        self.forget_after(tag);
        self.record_audit(audit, tag, "ok");
        self.decryptor.end_statement();
        if self.front_is(|p| matches!(p, Pending::Execute { .. })) {
            self.exchange.pop();
        }
    }

    /// After DDL (a CommandComplete `tag` that may have changed tables,
    /// columns or grants): the catalog is read again before the next
    /// statement is planned.
    pub(super) fn invalidate_after_ddl(&self, tag: &str) {
        let first = tag.split(' ').next().unwrap_or("");
        if matches!(
            first,
            "CREATE" | "ALTER" | "DROP" | "COMMENT" | "GRANT" | "REVOKE" | "TRUNCATE"
        ) && !tag.starts_with("CREATE ROLE")
        {
            self.engine.invalidate();
        }
    }

    /// The statements and portals SQL dropped however it was sent
    /// (`DEALLOCATE ALL`, `DISCARD ALL`, `CLOSE ALL`), by its
    /// CommandComplete `tag`.
    pub(super) fn forget_after(&mut self, tag: &str) {
        match tag {
            "DEALLOCATE ALL" => self
                .exchange
                .resolve(Resolution::ForgetAll { portals: false }),
            "DISCARD ALL" => {
                self.portal_shapes.clear();
                self.exchange
                    .resolve(Resolution::ForgetAll { portals: true })
            }
            // CLOSE ALL drops every portal but the one running it, the
            // protocol's too, however it was sent.
            "CLOSE CURSOR ALL" => {
                self.portal_shapes.clear();
                self.exchange.resolve(Resolution::ForgetPortals)
            }
            _ => {}
        }
    }

    /// PortalSuspended: an Execute with a row limit ended before the
    /// portal did. What it decrypted is audited now: the client may never
    /// run the portal to its end.
    fn suspend_statement(&mut self) {
        let audit = self.front_audit();
        self.record_audit(audit, "SUSPENDED", "ok");
    }

    /// The audit record of the Execute or Query at the front of the queue.
    fn front_audit(&self) -> Option<Arc<AuditInfo>> {
        match self.exchange.pending.lock().expect("pending queue").front() {
            Some(Pending::Execute { audit, .. }) | Some(Pending::Query { audit, .. }) => {
                audit.clone()
            }
            _ => None,
        }
    }

    /// A statement that decrypted rows failed before its end (an error
    /// from PostgreSQL, or a row pgveil could not decrypt): its audit
    /// record is written now, outcome `error`, with the rows the client
    /// got; it has no CommandComplete that would write it.
    pub(super) fn audit_failed_read(&mut self) {
        if self.decrypted_rows == 0 {
            return;
        }
        let audit = self.front_audit();
        self.record_audit(audit, "ERROR", "error");
    }

    /// One audit record for the rows since the last record, when they
    /// searched or decrypted protected data.
    fn record_audit(&mut self, audit: Option<Arc<AuditInfo>>, tag: &str, outcome: &str) {
        if let Some(a) = audit
            && (a.searched || self.decrypted_rows > 0)
            && let Some(log) = &self.engine.audit
        {
            let mut info: AuditInfo = (*a).clone();
            info.decrypted = self.decrypted_rows > 0;
            // The columns it decrypted, as its rows' shape says, are
            // recorded whatever the plan named (a FETCH names none; a
            // portal name pgveil kept after PostgreSQL dropped it may name
            // other ones).
            if let Some(shape) = &self.decrypted_shape {
                for d in shape.iter().flatten().filter(|d| !d.mask) {
                    let c = &d.attr.column;
                    let t = format!("{}.{}", c.schema, c.table);
                    if !info.tables.contains(&t) {
                        info.tables.push(t);
                    }
                    let col = c.to_string();
                    if !info.columns.contains(&col) {
                        info.columns.push(col);
                    }
                }
            }
            log.record(&self.id, &info, tag, self.rows, outcome);
        }
        self.reset_counts();
    }

    /// The rows counted for the next audit record start again.
    pub(super) fn reset_counts(&mut self) {
        self.rows = 0;
        self.decrypted_rows = 0;
        self.decrypted_shape = None;
    }
}

/// A CommandComplete body's tag (`INSERT 0 1`, `CREATE TABLE`).
pub(super) fn command_tag(body: &[u8]) -> &str {
    std::str::from_utf8(body)
        .unwrap_or("")
        .trim_end_matches('\0')
}
