//! What the audit log records of a statement on protected tables: the
//! tables and columns a rewritten statement searches or reads, or a COPY
//! TO decrypts, merged over the statements of one simple Query. Names
//! only, never values.

use std::sync::Arc;

use crate::session::AuditInfo;
use crate::sql::{CopyPlan, RewritePlan, Use};

pub(super) fn audit_info(rp: &RewritePlan) -> Option<Arc<AuditInfo>> {
    let mut tables: Vec<String> = Vec::new();
    let mut columns: Vec<String> = Vec::new();
    let mut searched = false;
    let mut reads = false;
    for (c, u) in &rp.touched {
        match u {
            Use::Search => searched = true,
            Use::Read => reads = true,
            Use::Write => continue,
        }
        let t = format!("{}.{}", c.schema, c.table);
        if !tables.contains(&t) {
            tables.push(t);
        }
        let col = c.to_string();
        if !columns.contains(&col) {
            columns.push(col);
        }
    }
    // A FETCH names no column: the backend records the ones it decrypted.
    let fetch = rp.kind == crate::sql::StatementKind::Fetch;
    (searched || reads || fetch).then(|| {
        Arc::new(AuditInfo {
            tables,
            columns,
            searched,
            decrypted: false,
        })
    })
}

/// What the audit log records for a COPY TO whose rows are decrypted: the
/// columns decrypted.
pub(super) fn copy_audit(cp: &CopyPlan) -> Option<Arc<AuditInfo>> {
    let mut tables: Vec<String> = Vec::new();
    let mut columns: Vec<String> = Vec::new();
    for d in cp.decrypt.iter().flatten() {
        let t = format!("{}.{}", d.column.schema, d.column.table);
        if !tables.contains(&t) {
            tables.push(t);
        }
        let c = d.column.to_string();
        if !columns.contains(&c) {
            columns.push(c);
        }
    }
    (!columns.is_empty()).then(|| {
        Arc::new(AuditInfo {
            tables,
            columns,
            searched: false,
            decrypted: false,
        })
    })
}

pub(super) fn merge_audit(acc: &mut Option<AuditInfo>, add: Option<&AuditInfo>) {
    let Some(add) = add else { return };
    match acc {
        None => *acc = Some(add.clone()),
        Some(a) => {
            for t in &add.tables {
                if !a.tables.contains(t) {
                    a.tables.push(t.clone());
                }
            }
            for c in &add.columns {
                if !a.columns.contains(c) {
                    a.columns.push(c.clone());
                }
            }
            a.searched |= add.searched;
        }
    }
}
