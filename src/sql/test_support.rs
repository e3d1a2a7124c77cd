//! What the analyzer's unit tests share (`tests`, `bulk_tests`,
//! `review_tests`, `copy_out_tests`): the unit tests' policy and the macro
//! that writes it, analyzers over it with or without a catalog, rows of the
//! catalog query, and the unwrapping of plans. Test code only.

use std::path::Path;
use std::sync::Arc;

use super::*;
use crate::policy::Policy;
use crate::policy::catalog::test_rows::cat_row;

/// The unit tests' policy text with `$users` (YAML at column level) as the
/// columns of `public.users` after `email` (blind index, searchable by
/// `searcher`) and `name`; then `public.pay_customers` (tenant `org_id`)
/// and `public.rot` (blind-index rotation to `ssn_bidx2`).
macro_rules! unit_policy {
    ($users:literal) => {
        concat!(
            "version: 1
groups:
  app: [app_user]
tables:
  public.users:
    columns:
      email:
        type: text
        blind_index: { column: email_bidx, normalize: [trim, lowercase] }
        access: { app: read, signup: write, searcher: search }
      name: { type: text, access: { app: read } }
",
            $users,
            "  public.pay_customers:
    tenant: org_id
    columns:
      email:
        type: text
        blind_index: { column: email_bidx, normalize: [trim, lowercase] }
        access: { app: read }
  public.rot:
    columns:
      ssn:
        type: text
        blind_index: { column: ssn_bidx, next: ssn_bidx2 }
        access: { app: read }
"
        )
    };
}
pub(super) use unit_policy;

/// The unit tests' policy: `public.users` has `email`, `name` and `dob`.
pub(super) const POLICY: &str = unit_policy!("      dob: { type: date, access: { app: read } }\n");

/// An analyzer for [`POLICY`], without a catalog.
pub(super) fn analyzer() -> Analyzer {
    analyzer_for(POLICY)
}

/// The plan of `sql` as a Parse without declared parameter types, under
/// [`POLICY`].
pub(super) fn ext(sql: &str, role: &str) -> StatementPlan {
    plan_one(&analyzer(), sql, role, Mode::Extended { param_types: &[] })
}

/// The plans of `sql` as a simple Query, under [`POLICY`].
pub(super) fn simple(sql: &str, role: &str) -> Vec<StatementPlan> {
    analyzer().plan(sql, role, Mode::Simple)
}

/// `public.users.email`.
pub(super) fn users_email() -> ColumnRef {
    ColumnRef::new("public", "users", "email")
}

/// An analyzer for the policy `text`, without a catalog.
pub(super) fn analyzer_for(text: &str) -> Analyzer {
    let p = Policy::from_text(Path::new("t.yaml"), text).unwrap();
    Analyzer::new(Arc::new(p))
}

/// The catalog rows of table `public.users` (OID 1) with `columns` (name,
/// type) in attnum order.
pub(super) fn users_rows(columns: &[(&str, &str)]) -> Vec<Vec<Option<String>>> {
    columns
        .iter()
        .enumerate()
        .map(|(i, (c, ty))| cat_row("1", &(i + 1).to_string(), "users", "r", c, ty, None, None))
        .collect()
}

/// An analyzer for [`POLICY`] over the catalog these `rows` describe.
pub(super) fn with_catalog(rows: Vec<Vec<Option<String>>>) -> Analyzer {
    let p = Arc::new(Policy::from_text(Path::new("t.yaml"), POLICY).unwrap());
    let cat = crate::policy::Catalog::from_rows(&p, rows);
    Analyzer::with_catalog(p, &cat)
}

/// An analyzer for [`POLICY`] whose catalog has table `public.users` (OID
/// 1) with `columns` (name, type) in attnum order.
pub(super) fn with_users(columns: &[(&str, &str)]) -> Analyzer {
    with_catalog(users_rows(columns))
}

/// The plan of `sql`, which must be one statement.
pub(super) fn plan_one(a: &Analyzer, sql: &str, role: &str, mode: Mode<'_>) -> StatementPlan {
    let mut v = a.plan(sql, role, mode);
    assert_eq!(v.len(), 1);
    v.pop().unwrap()
}

/// The rewrite `p` must be.
pub(super) fn rw(p: StatementPlan) -> RewritePlan {
    match p {
        StatementPlan::Rewrite(r) => std::sync::Arc::unwrap_or_clone(r),
        other => panic!("expected a rewrite, got {other:?}"),
    }
}

/// The refusal `p` must be: (SQLSTATE, message).
pub(super) fn reject(p: StatementPlan) -> (&'static str, String) {
    match p {
        StatementPlan::Reject { sqlstate, message } => (sqlstate, message),
        other => panic!("expected a rejection, got {other:?}"),
    }
}

/// The rewritten SQL with literal slots shown as `{i:op}`.
pub(super) fn shown(r: &RewritePlan) -> String {
    r.render(|i, s| format!("{{{i}:{:?}}}", s.op))
}
