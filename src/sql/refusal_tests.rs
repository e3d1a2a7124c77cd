//! Shapes the analyzer refuses under the unit tests' policy because
//! PostgreSQL could read them otherwise than sqlparser (reserved words as
//! names, renamed schemas and tables) or because they would show protected
//! data or a blind index another way (whole-row references, views that
//! rename a blind index), and findings of earlier reviews.
//! Refusals name keywords, never values.

use std::path::Path;
use std::sync::Arc;

use super::test_support::{
    analyzer, ext, reject, shown, simple, users_rows, with_catalog, with_users,
};
use super::*;
use crate::policy::Policy;
use crate::policy::catalog::test_rows::cat_row;

#[test]
fn unsupported_statements_are_named_by_keywords_not_values() {
    let (code, msg) = reject(ext(
        "create policy p on users using (email = 'secret-literal-9')",
        "app_user",
    ));
    assert_eq!(code, "0A000");
    assert!(!msg.contains("secret-literal-9"), "{msg}");
}

#[test]
fn renaming_protected_names_is_refused() {
    for sql in [
        "alter table users rename column email to e2",
        "alter table users rename column email_bidx to eb",
        "alter table public.users rename to u2",
    ] {
        let (code, msg) = reject(ext(sql, "app_user"));
        assert_eq!(code, "0A000", "{sql}");
        assert!(msg.contains("policy"), "{msg}");
    }
    assert!(!matches!(
        ext("alter table users rename column plan to plan2", "app_user"),
        StatementPlan::Reject { .. }
    ));
}

#[test]
fn review_findings_are_closed() {
    // `--` comments end at a carriage return, as in PostgreSQL: the
    // statement boundaries are PostgreSQL's.
    let sql = "SELECT text --\r'\n;SELECT '; INSERT INTO users(email) VALUES ($q$alice@example.com$q$); SELECT text ' --'";
    let pieces: Vec<&str> = split_statements(sql).into_iter().map(|r| &sql[r]).collect();
    assert_eq!(pieces.len(), 3, "{pieces:?}");
    assert!(pieces[1].starts_with("INSERT INTO users"), "{pieces:?}");
    let plans = simple(sql, "signup");
    match &plans[1] {
        StatementPlan::Rewrite(r) => assert!(shown(r).contains("{0:Encrypt}"), "{}", shown(r)),
        StatementPlan::Reject { .. } => {}
        other => panic!("{other:?}"),
    }
    // A CTE may not shadow a protected table (PostgreSQL writes the table).
    for sql in [
        "with users as (select 1) insert into users (email) values ('alice@example.com')",
        "with users as (select 1) update users set email = 'x' where id = 1",
    ] {
        let (code, _) = reject(ext(sql, "app_user"));
        assert_eq!(code, "0A000", "{sql}");
    }
    // DDL cannot compute a protected column's value from plaintext.
    for sql in [
        "alter table users alter column email type text using 'alice@example.com'",
        "alter table users add column name text generated always as ('x') stored",
    ] {
        let (code, _) = reject(ext(sql, "app_user"));
        assert_eq!(code, "0A000", "{sql}");
    }
    // COPY TO shows blind indexes only to roles that may search.
    let (code, _) = reject(ext("copy users to stdout", "dba"));
    assert_eq!(code, "42501");
    assert!(!matches!(
        ext("copy users (id, email) to stdout", "dba"),
        StatementPlan::Reject { .. }
    ));
    // A partial index on a blind index could compare rows.
    let (code, _) = reject(ext(
        "create unique index p on users (email_bidx) where id in (1, 999)",
        "dba",
    ));
    assert_eq!(code, "42501");
}

#[test]
fn whole_row_references_to_protected_relations_are_refused() {
    let a = with_users(&[
        ("id", "bytea"),
        ("email", "bytea"),
        ("email_bidx", "bytea"),
        ("name", "bytea"),
        ("dob", "bytea"),
        ("plan", "bytea"),
    ]);
    for sql in [
        "SELECT u FROM users u",
        "SELECT users FROM users",
        "SELECT public.users FROM public.users",
        "SELECT to_jsonb(u) FROM users u",
        "SELECT to_jsonb(u)->>'email_bidx' FROM users u",
        "SELECT row_to_json(users) FROM users",
        "SELECT u::text FROM users u",
        "SELECT (u).email FROM users u",
        "SELECT id FROM users u WHERE (u).email = 'x@example.com'",
        "SELECT u.to_jsonb FROM users u",
        "SELECT users.row_to_json FROM users",
        "SELECT id FROM users u WHERE u.to_jsonb ->> 'email' = 'x@example.com'",
        "SELECT ROW(u.*) FROM users u",
        "SELECT ARRAY[u.*] FROM users u",
        "SELECT (u.*)::text FROM users u",
        "SELECT count(u) FROM users u",
        "SELECT id FROM users u WHERE u = u",
        "SELECT t FROM (SELECT email FROM users) t",
        "WITH t AS (SELECT * FROM users) SELECT to_json(t) FROM t",
        "SELECT (SELECT u FROM users u LIMIT 1)",
        "UPDATE users u SET plan = 'x' RETURNING u",
        "DELETE FROM users u RETURNING to_jsonb(u)",
        "INSERT INTO users (id) VALUES (1) RETURNING users",
        "SELECT id FROM users u ORDER BY u",
    ] {
        for role in ["app_user", "signup", "dba"] {
            let v = a.plan(sql, role, Mode::Simple);
            let (code, msg) = reject(v[0].clone());
            assert!(code == "0A000" || code == "42501", "{sql}: {code} {msg}");
            assert!(!msg.contains("x@example.com"), "{msg}");
        }
    }
    // Columns, qualified or not, and u.* in the select list still work.
    for sql in [
        "SELECT u.id, u.email FROM users u",
        "SELECT u.plan FROM users u WHERE u.id = 1",
        "SELECT plan FROM users",
        "SELECT u.* FROM users u",
        "SELECT count(*) FROM users u",
    ] {
        let v = a.plan(sql, "app_user", Mode::Simple);
        assert!(
            !matches!(v[0], StatementPlan::Reject { .. }),
            "{sql}: {:?}",
            v[0]
        );
    }
}

#[test]
fn reserved_words_read_as_table_names_are_refused() {
    // sqlparser reads `ONLY users` as a table ONLY aliased users;
    // PostgreSQL reads table users without its children.
    for sql in [
        "UPDATE ONLY users SET email = 'x@example.com'",
        "UPDATE ONLY users SET name = 'Secret Name' WHERE id = 1",
        "DELETE FROM ONLY users WHERE email = 'x@example.com'",
        "SELECT id FROM ONLY users WHERE email = 'x@example.com'",
        "SELECT id FROM ONLY public.users WHERE email = 'x@example.com'",
    ] {
        for role in ["app_user", "signup", "dba"] {
            let (code, msg) = reject(ext(sql, role));
            assert_eq!(code, "0A000", "{sql}: {msg}");
            assert!(
                msg.contains("ONLY") || msg.contains("cannot parse"),
                "{sql}: {msg}"
            );
            assert!(
                !msg.contains("x@example.com") && !msg.contains("Secret"),
                "{msg}"
            );
        }
    }
    // Statements sqlparser reads with ONLY as a keyword still plan.
    for sql in ["TRUNCATE ONLY users", "LOCK TABLE ONLY users"] {
        assert!(
            !matches!(ext(sql, "app_user"), StatementPlan::Reject { .. }),
            "{sql}"
        );
    }
}

#[test]
fn views_cannot_show_a_blind_index_under_another_name() {
    let mut rows = users_rows(&[
        ("id", "bigint"),
        ("email", "bytea"),
        ("email_bidx", "bytea"),
    ]);
    rows.extend([
        cat_row(
            "2",
            "1",
            "hv",
            "v",
            "id",
            "bigint",
            Some("SELECT users.id, users.email_bidx AS h FROM users"),
            None,
        ),
        cat_row("2", "2", "hv", "v", "h", "bytea", None, None),
    ]);
    let a = with_catalog(rows);
    for sql in [
        "select h from hv",
        "select * from hv",
        "select hv.* from hv",
        "select id from hv where h = $1",
        "select count(*) from hv a join hv b on a.h = b.h",
        "select md5(h) from hv",
    ] {
        for role in ["signup", "dba"] {
            let v = a.plan(sql, role, Mode::Extended { param_types: &[] });
            let (code, msg) = reject(v[0].clone());
            assert_eq!(code, "42501", "{sql}: {msg}");
            assert!(
                msg.contains("public.hv.h") && msg.contains("public.users.email"),
                "{msg}"
            );
        }
        // A role that may search reads it.
        let v = a.plan(sql, "searcher", Mode::Extended { param_types: &[] });
        assert!(
            !matches!(v[0], StatementPlan::Reject { .. }),
            "{sql}: {:?}",
            v[0]
        );
    }
}

/// The second review's shapes, planned without a catalog (so `*` over a
/// protected table has unknown columns): each is refused, and the no-parse
/// pre-check sends each to the analyzer.
#[test]
fn second_review_shapes_are_refused_without_a_catalog() {
    let p = Policy::from_text(
        Path::new("calmony.yaml"),
        include_str!("../../policies/calmony.yaml"),
    )
    .unwrap();
    let a = Analyzer::new(Arc::new(p));
    for (sql, role) in [
        (
            "SELECT s.a FROM (SELECT * FROM users) s(a, b, c, d) WHERE s.d = 'Alice Sentinel'",
            "dba",
        ),
        (
            "SELECT s.a, encode(s.c, 'hex') FROM (SELECT * FROM users) s(a, b, c)",
            "signup",
        ),
        (
            "SELECT count(*) FROM (SELECT * FROM users) s(a, b, c) WHERE s.c = (SELECT x.c FROM (SELECT * FROM users) x(a, b, c, d, e, f) ORDER BY x.f DESC LIMIT 1)",
            "signup",
        ),
        (
            "WITH s(a, b, c) AS (SELECT * FROM users) SELECT encode(c, 'hex') FROM s",
            "signup",
        ),
        (
            "WITH s(a, b, c) AS (SELECT * FROM users) SELECT count(*) FROM s GROUP BY c HAVING count(*) > 1",
            "signup",
        ),
        (
            "SELECT count(*) FROM (SELECT DISTINCT ON (3) * FROM users) s",
            "signup",
        ),
        ("SELECT * FROM users ORDER BY 3", "signup"),
        ("SELECT * FROM users ORDER BY 4", "dba"),
        (
            "SELECT * FROM users UNION ALL SELECT * FROM users WHERE false",
            "signup",
        ),
        ("INSERT INTO tmp_copy SELECT * FROM users", "signup"),
        (
            "SELECT query_to_xml('SELECT id, email_bidx FROM users', true, false, '')",
            "signup",
        ),
        (
            "SELECT query_to_xml('SELECT id FROM users WHERE name = ''Alice Sentinel''', true, false, '')",
            "dba",
        ),
        ("SELECT table_to_xml('users', true, false, '')", "signup"),
        ("SELECT schema_to_xml('public', true, false, '')", "signup"),
        (
            "SELECT most_common_vals::text FROM pg_stats WHERE tablename = 'users' AND attname = 'email_bidx'",
            "signup",
        ),
        (
            "SELECT g FROM users u, generate_series(1, CASE WHEN u.name = 'Alice Sentinel' THEN 1 ELSE 0 END) g",
            "dba",
        ),
        (
            "SELECT x FROM users u, unnest(ARRAY[u.name = 'Alice Sentinel']) x",
            "dba",
        ),
        ("UPDATE users SET name.x = 'Alice Sentinel'", "calmony_app"),
        (
            "INSERT INTO users (name.x) VALUES ('Alice Sentinel')",
            "calmony_app",
        ),
        (
            "SELECT id FROM users u WHERE name(u) = 'Alice Sentinel'",
            "dba",
        ),
        (
            "SELECT g FROM users u, generate_series(1, (SELECT 1 WHERE u.name = 'Alice Sentinel')) g",
            "dba",
        ),
    ] {
        assert!(a.may_touch_protected(sql), "pre-check: {sql}");
        for p in a.plan(sql, role, Mode::Simple) {
            let (code, msg) = reject(p);
            assert!(code == "0A000" || code == "42501", "{sql}: {code}");
            assert!(!msg.contains("Alice Sentinel"), "{msg}");
        }
    }
}

#[test]
fn renaming_the_schema_of_a_protected_table_is_refused() {
    let a = analyzer();
    for sql in [
        "ALTER SCHEMA public RENAME TO old_public",
        "alter schema \"public\" rename to x",
        "BEGIN; ALTER SCHEMA public RENAME TO x",
    ] {
        assert!(a.may_touch_protected(sql), "{sql}");
        let v = a.plan(sql, "app_user", Mode::Simple);
        let (code, msg) = reject(v.last().unwrap().clone());
        assert_eq!(code, "0A000", "{sql}");
        assert!(msg.contains("schema public"), "{msg}");
    }
    // Other schema statements pass through untouched.
    for sql in [
        "CREATE SCHEMA reporting",
        "ALTER SCHEMA reporting RENAME TO reports",
        "ALTER SCHEMA public OWNER TO app",
        "SELECT * FROM information_schema.tables",
    ] {
        let v = a.plan(sql, "app_user", Mode::Simple);
        assert_eq!(
            v,
            vec![StatementPlan::Passthrough { sql: sql.into() }],
            "{sql}"
        );
    }
}
