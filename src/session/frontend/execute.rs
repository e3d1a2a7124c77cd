//! Execute: forwarded as the client sent it, behind pgveil's own Describe
//! of the portal when its rows are shaped (its statement was planned, or
//! it may be a SQL cursor over protected tables) and the client did not
//! describe it right before: the rows are shaped by PostgreSQL's
//! description of the portal the name means at that moment, never by what
//! pgveil remembers of it. Also the audit record and the COPY window an
//! Execute may open.

use std::ops::Range;
use std::sync::Arc;

use bytes::BytesMut;

use super::Frontend;
use super::audit::{audit_info, copy_audit};
use super::lex::pg_name;
use super::names::{Space, View};
use super::refusal::{Refusal, ambiguous, unkeyable};
use crate::session::copy::CopyIn;
use crate::session::{AuditInfo, Pending, Prepared};
use crate::sql::{CopyDirection, CopyPlan, RewritePlan};
use crate::wire::codec::Frame;
use crate::wire::query::{decode_execute, encode_describe};
use crate::wire::tag::target;

impl Frontend {
    /// An Execute. `described`: the portal the client's previous message
    /// described, when it was described as protected.
    pub(super) fn on_execute(&mut self, f: &Frame, described: Option<&str>, out: &mut BytesMut) {
        let (portal, prepared) = match self.execute_target(f) {
            Ok(target) => target,
            Err(r) => {
                self.raise(&r, out);
                return;
            }
        };
        let copy_out = prepared
            .as_ref()
            .and_then(|p| p.copy.clone())
            .filter(|c| c.decrypts());
        // A portal pgveil did not bind may be a SQL cursor over
        // protected tables: its rows are shaped as a FETCH's would
        // be (an unknown portal makes the Describe below fail as
        // the Execute would have).
        let cursor = prepared.is_none() && self.protected_cursors;
        // The rows are shaped by PostgreSQL's description of the
        // portal the name refers to now, asked right before it
        // runs (nothing can run in between), not by what pgveil
        // remembers of it: a name pgveil keeps after PostgreSQL
        // dropped its portal (a CLOSE in a function, a rolled-back
        // savepoint) and then reused for a cursor still gets that
        // cursor's shape.
        let shaped = cursor || prepared.as_ref().is_some_and(|p| p.plan.is_some());
        let plan_audit = prepared
            .as_ref()
            .and_then(|p| p.plan.as_ref())
            .and_then(|p| self.plan_audit(p));
        let audit = execute_audit(plan_audit, copy_out.as_deref(), shaped);
        if shaped && described != Some(portal.as_str()) {
            encode_describe(out, target::PORTAL, &portal);
            self.exchange.push(Pending::DescribePortal {
                portal: portal.clone(),
                protected: true,
                internal: true,
            });
        }
        let protected = prepared.is_some() || cursor;
        let copies = self.execute_copies(prepared.as_deref());
        self.exchange.push(Pending::Execute {
            portal,
            protected,
            audit,
            copies,
            copy_out,
        });
        out.extend_from_slice(&f.raw);
    }

    /// The portal an Execute names, keyed as PostgreSQL keys it, and what
    /// pgveil knows of it (`None`: nothing protected, or unknown); refused
    /// when the name cannot be read or keyed, or its meaning depends on an
    /// unanswered change.
    fn execute_target(&mut self, f: &Frame) -> Result<(String, Option<Arc<Prepared>>), Refusal> {
        let Some((portal, _)) = decode_execute(f.body()) else {
            return Err(unkeyable("portal"));
        };
        let Some(portal) = pg_name(&portal, self.lex.names_unconverted()).map(str::to_string)
        else {
            return Err(unkeyable("portal"));
        };
        self.names.drain(&self.exchange);
        match self.names.view(Space::Portal, &portal) {
            View::Known(p) => Ok((portal, p)),
            View::Ambiguous => Err(ambiguous("portal", &portal)),
        }
    }

    /// The COPY window an Execute may open: a portal pgveil does not know
    /// may be a COPY FROM STDIN of an unprotected table (pass-through
    /// statements are not recorded), PostgreSQL tells at its answer; a
    /// protected COPY FROM has its rows encrypted.
    fn execute_copies(&mut self, prepared: Option<&Prepared>) -> Range<u64> {
        match prepared {
            None => self.open_copies(1, None),
            Some(p) => match &p.copy {
                Some(copy) if copy.direction == CopyDirection::In => {
                    let t = CopyIn::new(copy.clone(), self.entry(), self.max_message);
                    self.open_copies(1, Some(t))
                }
                _ => 0..0,
            },
        }
    }
}

/// What the audit log records of an Execute: what its statement searches or
/// reads, or what its COPY TO decrypts; for rows it shapes without either,
/// an empty record that the backend fills from the rows' shape.
fn execute_audit(
    plan_audit: Option<Arc<AuditInfo>>,
    copy_out: Option<&CopyPlan>,
    shaped: bool,
) -> Option<Arc<AuditInfo>> {
    let audit = plan_audit.or_else(|| copy_out.and_then(copy_audit));
    if shaped && audit.is_none() {
        // What it decrypts is recorded from the rows' shape.
        return Some(Arc::new(AuditInfo {
            tables: vec![],
            columns: vec![],
            searched: false,
            decrypted: false,
        }));
    }
    audit
}

impl Frontend {
    /// The audit record of a plan (`audit_info`), built once while the
    /// same plan is executed again: plans are shared from the plan cache,
    /// so the same `Arc` means the same plan, and the record is a function
    /// of the plan alone (the backend copies it before adding to it).
    fn plan_audit(&mut self, plan: &Arc<RewritePlan>) -> Option<Arc<AuditInfo>> {
        if let Some((p, a)) = &self.audit_memo
            && Arc::ptr_eq(p, plan)
        {
            return a.clone();
        }
        let a = audit_info(plan);
        self.audit_memo = Some((plan.clone(), a.clone()));
        a
    }
}
