//! Planning of `COPY … TO STDOUT` whose rows pgveil decrypts for roles
//! that may read (the session's `copy_out` transforms the rows).

use super::test_support::{POLICY, analyzer_for, plan_one};
use super::*;

fn analyzer() -> Analyzer {
    let mut a = analyzer_for(POLICY);
    let cols = |c: &[&str]| c.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    a.table_columns.insert(
        ("public".into(), "users".into()),
        cols(&["id", "email", "email_bidx", "name", "dob"]),
    );
    a.table_columns.insert(
        ("public".into(), "pay_customers".into()),
        cols(&["id", "org_id", "email", "email_bidx"]),
    );
    a
}

fn plan(sql: &str, role: &str) -> StatementPlan {
    plan_one(&analyzer(), sql, role, Mode::Simple)
}

fn copy(sql: &str, role: &str) -> CopyPlan {
    match plan(sql, role) {
        StatementPlan::Copy(c) => std::sync::Arc::unwrap_or_clone(c),
        other => panic!("{sql}: expected a COPY plan, got {other:?}"),
    }
}

fn reject(sql: &str, role: &str) -> (&'static str, String) {
    match plan(sql, role) {
        StatementPlan::Reject { sqlstate, message } => (sqlstate, message),
        other => panic!("{sql}: expected a rejection, got {other:?}"),
    }
}

fn col(t: &str, c: &str) -> ColumnRef {
    ColumnRef::new("public", t, c)
}

fn dec(t: &str, c: &str, tenant_field: Option<usize>) -> Option<CopyDecrypt> {
    Some(CopyDecrypt {
        column: col(t, c),
        tenant_field,
    })
}

#[test]
fn table_copies_decrypt_the_columns_the_role_reads() {
    let c = copy("copy users (id, email, name) to stdout", "app_user");
    assert!(c.decrypts());
    assert_eq!(
        c.decrypt,
        vec![
            None,
            dec("users", "email", None),
            dec("users", "name", None)
        ]
    );
    assert_eq!(c.sql, "copy users (id, email, name) to stdout");
    // Without a list: the table's columns in catalog order.
    let c = copy("COPY public.users TO STDOUT", "app_user");
    assert_eq!(
        c.decrypt,
        vec![
            None,
            dec("users", "email", None),
            None,
            dec("users", "name", None),
            dec("users", "dob", None)
        ]
    );
    // Roles without read get the rows as stored.
    for role in ["signup", "dba"] {
        let c = copy("copy users (id, email, name) to stdout", role);
        assert!(!c.decrypts(), "{role}");
    }
    // A server file gets ciphertext: nothing passes pgveil.
    let c = copy("copy users (id, email) to '/tmp/x'", "app_user");
    assert!(!c.decrypts());
}

#[test]
fn table_copies_keep_the_blind_index_rule() {
    let (code, _) = reject("copy users to stdout", "signup");
    assert_eq!(code, "42501");
    let (code, _) = reject("copy users (id, email_bidx) to stdout", "dba");
    assert_eq!(code, "42501");
    // A role that may search sees it as stored.
    let c = copy("copy users (email, email_bidx) to stdout", "app_user");
    assert_eq!(c.decrypt, vec![dec("users", "email", None), None]);
}

#[test]
fn a_table_whose_columns_are_unknown_is_not_decrypted_blind() {
    let a = analyzer_for(POLICY);
    let v = a.plan("copy rot to stdout", "app_user", Mode::Simple);
    match &v[0] {
        StatementPlan::Reject { sqlstate, message } => {
            assert_eq!(*sqlstate, "0A000");
            assert!(message.contains("public.rot") && message.contains("list them"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn tenant_tables_check_the_row_tenant_when_the_copy_sends_it() {
    let c = copy("copy pay_customers (org_id, email) to stdout", "app_user");
    assert_eq!(
        c.decrypt,
        vec![None, dec("pay_customers", "email", Some(0))]
    );
    // Without it, the envelope's own tenant (as for a SELECT).
    let c = copy("copy pay_customers (id, email) to stdout", "app_user");
    assert_eq!(c.decrypt, vec![None, dec("pay_customers", "email", None)]);
    let c = copy(
        "copy (select c.email, c.org_id from pay_customers c) to stdout",
        "app_user",
    );
    assert_eq!(
        c.decrypt,
        vec![dec("pay_customers", "email", Some(1)), None]
    );
    // Through a subquery and aliases.
    let c = copy(
        "copy (select s.o, s.e from (select email as e, org_id as o from pay_customers) s) to stdout",
        "app_user",
    );
    assert_eq!(
        c.decrypt,
        vec![None, dec("pay_customers", "email", Some(0))]
    );
    // `*` with the catalog's columns.
    let c = copy("copy (select * from pay_customers) to stdout", "app_user");
    assert_eq!(
        c.decrypt,
        vec![None, None, dec("pay_customers", "email", Some(1)), None]
    );
    // An expression over the tenant column is not the tenant id.
    let c = copy(
        "copy (select org_id + 1 as org_id, email from pay_customers) to stdout",
        "app_user",
    );
    assert_eq!(c.decrypt, vec![None, dec("pay_customers", "email", None)]);
}

#[test]
fn query_copies_decrypt_what_a_select_would() {
    let c = copy(
        "copy (select id, email, upper(plan), name as n from users where id > 3) to stdout",
        "app_user",
    );
    assert_eq!(
        c.decrypt,
        vec![
            None,
            dec("users", "email", None),
            None,
            dec("users", "name", None)
        ]
    );
    assert_eq!((c.schema.as_str(), c.table.as_str()), ("public", "users"));
    assert_eq!(c.direction, CopyDirection::Out);
    // For other roles (and to a file) a query COPY is planned as before.
    for (sql, role) in [
        ("copy (select id, email from users) to stdout", "signup"),
        ("copy (select id, email from users) to '/tmp/x'", "app_user"),
        ("copy (select id from users) to stdout", "app_user"),
    ] {
        assert!(
            matches!(plan(sql, role), StatementPlan::Rewrite(_)),
            "{sql} as {role}"
        );
    }
    // Blind indexes and lookups stay refused.
    let (code, _) = reject("copy (select email_bidx from users) to stdout", "signup");
    assert_eq!(code, "42501");
    let (code, _) = reject(
        "copy (select name from users where email = 'a@b.c') to stdout",
        "app_user",
    );
    assert_eq!(code, "0A000");
}

#[test]
fn options_are_recorded_as_postgresql_reads_them() {
    let c = copy(
        "copy users (id, email) to stdout (format csv, delimiter ';', header, null 'NULL', quote '''', escape '\\', force_quote (email))",
        "app_user",
    );
    assert_eq!(c.format, CopyFormat::Csv);
    assert_eq!(
        (c.delimiter, c.quote, c.escape, c.header),
        (';', '\'', '\\', true)
    );
    assert_eq!(c.null, "NULL");
    assert_eq!(c.force_quote, vec![1]);
    let c = copy(
        "copy users (id, email) to stdout with csv header force quote email",
        "app_user",
    );
    assert_eq!(
        (c.format, c.delimiter, c.header),
        (CopyFormat::Csv, ',', true)
    );
    assert_eq!((c.quote, c.escape, c.null.as_str()), ('"', '"', ""));
    assert_eq!(c.force_quote, vec![1]);
    let c = copy(
        "copy users (id, email) to stdout (format binary)",
        "app_user",
    );
    assert_eq!(c.format, CopyFormat::Binary);
    let c = copy("copy users (id, email) to stdout", "app_user");
    assert_eq!(
        (c.format, c.delimiter, c.null.as_str()),
        (CopyFormat::Text, '\t', "\\N")
    );
}

#[test]
fn options_pgveil_could_read_differently_are_refused_when_it_decrypts() {
    for sql in [
        "copy users (id, email) to stdout (format csv, delimiter E';')",
        "copy users (id, email) to stdout (null U&'x')",
        "copy (select email from users) to stdout (null $$x$$)",
    ] {
        let (code, m) = reject(sql, "app_user");
        assert_eq!(code, "0A000", "{sql}");
        assert!(m.contains("plain"), "{sql}: {m}");
    }
    // Not decrypted for signup: planned as before.
    for sql in [
        "copy users (id, email) to stdout (format csv, delimiter E';')",
        "copy users (id, email) to stdout (null U&'x')",
    ] {
        assert!(
            !matches!(plan(sql, "signup"), StatementPlan::Reject { .. }),
            "{sql}"
        );
    }
    let (code, m) = reject(
        "copy users (id, email) to stdout (encoding 'LATIN1')",
        "app_user",
    );
    assert_eq!(code, "0A000");
    assert!(m.contains("ENCODING"));
    copy(
        "copy users (id, email) to stdout (encoding 'utf8')",
        "app_user",
    );
    // Literals of the query are the query's.
    copy(
        "copy (select email from users where plan = E'pro') to stdout",
        "app_user",
    );
}
