//! The analyzer's plans under the unit tests' policy: the no-parse
//! pre-check and statement splitting, reads, equality lookups rewritten to
//! blind indexes, what fails closed, views from a catalog, cursors and
//! FETCH, and robustness (truncated statements). Writes are in
//! `write_tests`; shapes refused because PostgreSQL could read them
//! differently, or because they would show a blind index, in
//! `refusal_tests`.

use super::test_support::{
    analyzer, ext, reject, rw, shown, simple, users_email, users_rows, with_catalog,
};
use super::*;
use crate::policy::catalog::test_rows::cat_row;

// ----- pre-check and splitting ---------------------------------------------

#[test]
fn precheck() {
    let a = analyzer();
    assert!(a.may_touch_protected("select * from users where id = 1"));
    assert!(a.may_touch_protected("SELECT * FROM \"USERS\""));
    assert!(a.may_touch_protected("insert into public.pay_customers values (1)"));
    assert!(!a.may_touch_protected("select * from orders where user_id = 1"));
    assert!(!a.may_touch_protected("select * from users_archive"));
}

#[test]
fn unprotected_statements_pass_through_byte_for_byte() {
    let sql = "select  *  from orders where id = $1";
    assert_eq!(
        ext(sql, "app_user"),
        StatementPlan::Passthrough { sql: sql.into() }
    );
    let v = simple("select 1;  select * from orders ;", "app_user");
    assert_eq!(
        v,
        vec![
            StatementPlan::Passthrough {
                sql: "select 1".into()
            },
            StatementPlan::Passthrough {
                sql: "select * from orders".into()
            }
        ]
    );
}

#[test]
fn multi_statement_simple_query_is_judged_per_statement() {
    let v = simple(
        "begin; select name from users; select * from users order by email; commit",
        "app_user",
    );
    assert_eq!(v.len(), 4);
    assert_eq!(
        v[0],
        StatementPlan::Passthrough {
            sql: "begin".into()
        }
    );
    let r = rw(v[1].clone());
    assert!(r.unchanged);
    assert_eq!(shown(&r), "select name from users");
    assert!(matches!(v[2], StatementPlan::Reject { .. }));
    assert_eq!(
        v[3],
        StatementPlan::Passthrough {
            sql: "commit".into()
        }
    );
}

// ----- reads ----------------------------------------------------------------

#[test]
fn plain_reads_are_unchanged_and_audited() {
    let r = rw(ext(
        "SELECT id, email, u.name FROM users u WHERE id = $1",
        "app_user",
    ));
    assert!(r.unchanged);
    assert_eq!(
        shown(&r),
        "SELECT id, email, u.name FROM users u WHERE id = $1"
    );
    assert_eq!(r.params, vec![ParamAction::Copy { orig: 0 }]);
    assert!(r.touched.contains(&(users_email(), Use::Read)));
    assert_eq!(r.kind, StatementKind::Select);
    let r = rw(ext("select * from public.users", "dba"));
    assert!(r.unchanged);
    assert_eq!(r.touched.len(), 3);
    let r = rw(ext(
        "select count(email), count(*) from users where email is not null",
        "dba",
    ));
    assert!(r.unchanged);
}

#[test]
fn reads_through_subqueries_ctes_joins_and_returning() {
    for sql in [
        "with x as (select email from users) select email from x",
        "select s.e from (select email as e from users) s",
        "select u.email, o.total from users u join orders o on o.user_id = u.id",
        "select (select email from users where id = 1)",
        "select email from users union all select email from users",
    ] {
        let r = rw(ext(sql, "app_user"));
        assert!(r.unchanged, "{sql}");
    }
}

// ----- lookups ----------------------------------------------------------------

#[test]
fn equality_with_param_uses_blind_index() {
    let r = rw(ext(
        "SELECT id, name FROM users WHERE email = $1",
        "app_user",
    ));
    assert_eq!(
        shown(&r),
        "SELECT id, name FROM users WHERE email_bidx = $1"
    );
    assert_eq!(
        r.params,
        vec![ParamAction::BlindIndex {
            orig: 0,
            target: users_email(),
            tenant: TenantSource::None,
            array: false
        }]
    );
    assert_eq!(r.param_type_overrides, vec![(0, PgType::Text, false)]);
    assert_eq!(r.parse_param_types, vec![0]);
    assert!(r.touched.contains(&(users_email(), Use::Search)));
}

#[test]
fn equality_with_literal_qualified_and_reversed() {
    let r = rw(ext(
        "select * from users u where 'a@b.c' = u.email and u.id > 3",
        "searcher",
    ));
    assert_eq!(
        shown(&r),
        "select * from users u where {0:BlindIndex} = u.email_bidx and u.id > 3"
    );
    assert_eq!(r.literals[0].value.as_deref(), Some("a@b.c"));
    assert_eq!(r.literals[0].target, users_email());
    let r = rw(ext(
        "select * from public.users where public.users.email <> $1::text",
        "app_user",
    ));
    assert_eq!(
        shown(&r),
        "select * from public.users where public.users.email_bidx <> $1"
    );
}

#[test]
fn in_lists_any_and_null() {
    let r = rw(ext(
        "select id from users where email in ($1, 'x', NULL)",
        "app_user",
    ));
    assert_eq!(
        shown(&r),
        "select id from users where email_bidx in ($1, {0:BlindIndex}, NULL)"
    );
    let r = rw(ext(
        "select id from users where email not in ('a', 'b')",
        "app_user",
    ));
    assert_eq!(
        shown(&r),
        "select id from users where email_bidx not in ({0:BlindIndex}, {1:BlindIndex})"
    );
    let r = rw(ext(
        "select id from users where email = any($1)",
        "app_user",
    ));
    assert_eq!(shown(&r), "select id from users where email_bidx = any($1)");
    assert!(matches!(
        r.params[0],
        ParamAction::BlindIndex { array: true, .. }
    ));
    assert_eq!(r.param_type_overrides, vec![(0, PgType::Text, true)]);
    let r = rw(ext(
        "select id from users where email != all(array['a', $1])",
        "app_user",
    ));
    assert_eq!(
        shown(&r),
        "select id from users where email_bidx != all(array[{0:BlindIndex}, $1])"
    );
    let r = rw(ext("select id from users where email is null", "dba"));
    assert!(r.unchanged);
}

#[test]
fn lookups_in_subqueries_ctes_delete_and_update_where() {
    let r = rw(ext(
        "with t as (select id from users where email = $1) select * from orders where user_id in (select id from t)",
        "app_user",
    ));
    assert!(shown(&r).contains("where email_bidx = $1"), "{}", shown(&r));
    let r = rw(ext(
        "delete from users where email = $1 returning id, email",
        "app_user",
    ));
    assert_eq!(
        shown(&r),
        "delete from users where email_bidx = $1 returning id, email"
    );
    assert_eq!(r.kind, StatementKind::Delete);
    let r = rw(ext(
        "select o.* from orders o where exists (select 1 from users u where u.id = o.user_id and u.email = $2) and o.id = $1",
        "app_user",
    ));
    assert!(shown(&r).contains("u.email_bidx = $2"), "{}", shown(&r));
    assert_eq!(r.params[0], ParamAction::Copy { orig: 0 });
}

#[test]
fn self_join_on_same_column_uses_blind_index() {
    let r = rw(ext(
        "select a.id from users a join users b on a.email = b.email",
        "app_user",
    ));
    assert_eq!(
        shown(&r),
        "select a.id from users a join users b on a.email_bidx = b.email_bidx"
    );
    let (code, msg) = reject(ext(
        "select 1 from users u join pay_customers c on u.email = c.email",
        "app_user",
    ));
    assert_eq!(code, "0A000");
    assert!(
        msg.contains("public.users.email") && msg.contains("public.pay_customers.email"),
        "{msg}"
    );
}

#[test]
fn lookups_need_search_access() {
    for role in ["signup", "dba"] {
        let (code, msg) = reject(ext("select id from users where email = $1", role));
        assert_eq!(code, "42501", "{role}");
        assert!(
            msg.contains("public.users.email") && msg.contains(role),
            "{msg}"
        );
    }
    let (code, msg) = reject(ext("select id from users where name = $1", "app_user"));
    assert_eq!(code, "0A000");
    assert!(msg.contains("no blind_index"), "{msg}");
}

#[test]
fn tenant_table_lookups_need_no_tenant() {
    let r = rw(ext(
        "select * from pay_customers where email = $1",
        "app_user",
    ));
    assert_eq!(
        shown(&r),
        "select * from pay_customers where email_bidx = $1"
    );
}

// ----- fail closed --------------------------------------------------------------

#[test]
fn rejections_name_table_column_and_alternative_without_values() {
    let cases = [
        ("select * from users order by email", "ORDER BY"),
        ("select email from users order by 1", "ORDER BY"),
        ("select email as e from users order by e", "ORDER BY"),
        ("select * from users where email > 'secret-value'", "range"),
        (
            "select * from users where email between 'a' and 'secret-value'",
            "BETWEEN",
        ),
        (
            "select * from users where email like 'secret-value%'",
            "LIKE",
        ),
        (
            "select * from users where email ilike 'secret-value%'",
            "LIKE",
        ),
        (
            "select * from users where email ~ 'secret-value'",
            "regular expression",
        ),
        (
            "select * from users where email similar to 'secret-value'",
            "SIMILAR",
        ),
        ("select lower(email) from users", "function"),
        (
            "select * from users where lower(email) = 'secret-value'",
            "function",
        ),
        ("select email::text from users", "cast"),
        ("select max(email) from users", "aggregate"),
        ("select count(distinct email) from users", "count(DISTINCT"),
        (
            "select email, count(*) from users group by email",
            "GROUP BY",
        ),
        ("select distinct email from users", "DISTINCT"),
        ("select email || 'secret-value' from users", "operator"),
        ("select * from users where email = note", "expression"),
        (
            "select * from users where email = name",
            "public.users.name",
        ),
        (
            "select email from users union select email from users",
            "UNION",
        ),
        (
            "select * from users where email in (select email from users)",
            "IN (SELECT",
        ),
        ("select case email when 'x' then 1 end from users", "CASE"),
        (
            "with x as (select email from users) select * from x where email = 'secret-value'",
            "subquery or CTE",
        ),
    ];
    for (sql, what) in cases {
        let (code, msg) = reject(ext(sql, "app_user"));
        assert_eq!(code, "0A000", "{sql}: {msg}");
        assert!(msg.contains(what), "{sql}: {msg}");
        assert!(msg.contains("public.users.email"), "{sql}: {msg}");
        assert!(!msg.contains("secret-value"), "{sql}: {msg}");
    }
}

#[test]
fn statement_types_that_cannot_be_proven_safe_are_rejected() {
    for sql in [
        "prepare p as select * from users where email = $1",
        "prepare q (text) as insert into users (email) values ($1)",
        "call add_user('users')",
        "do $$ begin insert into users(email) values ('x'); end $$",
        "merge into users u using src s on u.id = s.id when matched then update set email = s.email",
        "select * from users where email = 'x' garbage garbage",
    ] {
        let v = simple(sql, "app_user");
        let (code, msg) = reject(v.into_iter().next().unwrap());
        assert_eq!(code, "0A000", "{sql}");
        assert!(
            msg.contains("public.users") || msg.contains("users"),
            "{sql}: {msg}"
        );
    }
}

#[test]
fn session_and_transaction_statements_pass() {
    for sql in [
        "set role users_admin",
        "SET SESSION AUTHORIZATION users",
        "show search_path",
        "begin",
    ] {
        let v = simple(sql, "app_user");
        assert!(
            matches!(v[0], StatementPlan::Passthrough { .. }),
            "{sql}: {:?}",
            v[0]
        );
    }
}

#[test]
fn ddl_is_allowed_on_columns_but_not_expressions() {
    let r = rw(ext("create index on users (email_bidx)", "dba"));
    assert!(r.unchanged);
    assert_eq!(r.kind, StatementKind::Ddl);
    let r = rw(ext("alter table users add column email_bidx2 bytea", "dba"));
    assert!(r.unchanged);
    let (_, msg) = reject(ext("create index on users (lower(email))", "dba"));
    assert!(msg.contains("public.users.email"), "{msg}");
    let (_, msg) = reject(ext(
        "alter table users alter column email set default 'x'",
        "dba",
    ));
    assert!(msg.contains("DEFAULT"), "{msg}");
}

#[test]
fn params_only_in_extended_mode() {
    let v = simple("select * from users where email = $1", "app_user");
    let (code, _) = reject(v[0].clone());
    assert_eq!(code, "0A000");
}

#[test]
fn views_from_catalog() {
    let mut rows = users_rows(&[
        ("id", "bigint"),
        ("email", "bytea"),
        ("email_bidx", "bytea"),
        ("name", "text"),
        ("dob", "text"),
    ]);
    rows.extend([
        cat_row(
            "2",
            "1",
            "people",
            "v",
            "id",
            "bigint",
            Some("SELECT users.id, users.email, users.email_bidx FROM users"),
            None,
        ),
        cat_row("2", "2", "people", "v", "email", "bytea", None, None),
        cat_row("2", "3", "people", "v", "email_bidx", "bytea", None, None),
        cat_row(
            "3",
            "1",
            "names",
            "v",
            "name",
            "text",
            Some("SELECT users.name FROM users"),
            None,
        ),
    ]);
    let a = with_catalog(rows);
    assert!(a.may_touch_protected("select * from people"));
    let v = a.plan(
        "select id from people where email = $1",
        "app_user",
        Mode::Extended { param_types: &[] },
    );
    assert_eq!(
        shown(&rw(v[0].clone())),
        "select id from people where email_bidx = $1"
    );
    let v = a.plan(
        "select * from names order by name",
        "app_user",
        Mode::Simple,
    );
    assert!(reject(v[0].clone()).1.contains("public.users.name"));
    // INSERT without a column list: columns come from the catalog.
    let v = a.plan(
        "insert into users values ($1, $2)",
        "app_user",
        Mode::Extended { param_types: &[20] },
    );
    let r = rw(v[0].clone());
    assert_eq!(
        shown(&r),
        "insert into users (id, email, email_bidx) values ($1, $2, $3)"
    );
    assert_eq!(r.parse_param_types, vec![20, 0, 0]);
}

#[test]
fn marker_collision_is_avoided() {
    let r = rw(ext(
        "select '__pgv_slot_0' from users where email = 'x'",
        "app_user",
    ));
    assert_eq!(
        shown(&r),
        "select '__pgv_slot_0' from users where email_bidx = {0:BlindIndex}"
    );
}

#[test]
fn declare_cursor_is_analyzed() {
    let v = simple(
        "declare c cursor for select email from users where email = 'x'",
        "app_user",
    );
    let r = rw(v[0].clone());
    assert!(
        shown(&r).contains("email_bidx = {0:BlindIndex}"),
        "{}",
        shown(&r)
    );
    let v = simple(
        "declare c cursor for select * from users order by email",
        "app_user",
    );
    assert!(matches!(v[0], StatementPlan::Reject { .. }));
}

#[test]
fn fetch_is_planned_as_a_protected_result_and_sent_as_written() {
    for sql in [
        "FETCH 1 FROM c",
        "fetch c",
        "FETCH 5 c",
        "FETCH RELATIVE -2 FROM \"Users\"",
        "/* x */ FETCH BACKWARD ALL IN c",
    ] {
        let v = simple(sql, "app_user");
        let StatementPlan::Rewrite(r) = &v[0] else {
            panic!("{sql}: {:?}", v[0]);
        };
        assert_eq!(r.kind, StatementKind::Fetch, "{sql}");
        assert!(r.unchanged && r.edits.is_empty() && r.params.is_empty());
        assert_eq!(shown(r), sql);
    }
    // Anything but the plain grammar, and any prepared FETCH, is refused:
    // a literal riding along would reach PostgreSQL (and its log).
    for sql in [
        "FETCH ALL FROM c\nINSERT INTO users (email) VALUES ('x@example.com')",
        "FETCH ALL FROM c /* ; UPDATE users SET email = 'x'",
        "FETCH 'x' FROM c",
        "FETCH ABSOLUTE FROM c",
    ] {
        let v = simple(sql, "app_user");
        assert!(
            v.iter().any(|p| matches!(
                p,
                StatementPlan::Reject {
                    sqlstate: "0A000",
                    ..
                }
            )),
            "{sql}: {v:?}"
        );
    }
    let v = ext("FETCH 1 FROM c", "app_user");
    assert!(
        matches!(
            v,
            StatementPlan::Reject {
                sqlstate: "0A000",
                ..
            }
        ),
        "{v:?}"
    );
    // The word elsewhere costs a parse, not a refusal or an edit.
    for sql in [
        "SELECT id FROM orders FETCH FIRST 1 ROWS ONLY",
        "SELECT 'fetch'",
        "MOVE ABSOLUTE 0 IN c",
    ] {
        let v = simple(sql, "app_user");
        match &v[0] {
            StatementPlan::Passthrough { sql: s } => assert_eq!(s, sql),
            StatementPlan::Rewrite(r) => {
                assert!(r.unchanged && r.kind != StatementKind::Fetch, "{sql}");
                assert_eq!(shown(r), sql);
            }
            p => panic!("{sql}: {p:?}"),
        }
    }
    // Protected tables with FETCH FIRST are analysed as any SELECT.
    let v = simple(
        "SELECT name FROM users WHERE email = 'x' FETCH FIRST 1 ROWS ONLY",
        "app_user",
    );
    let r = rw(v[0].clone());
    assert_eq!(r.kind, StatementKind::Select);
    assert!(shown(&r).contains("email_bidx = {0:BlindIndex}"));
}

/// Whether `sql` has a word that is the name of a protected table of
/// the unit policy (identifiers compared case-insensitively, quotes ignored).
fn names_protected_table(sql: &str) -> bool {
    sql.to_lowercase()
        .split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .any(|w| matches!(w, "users" | "pay_customers" | "rot"))
}

/// Truncated and mangled statements never panic the analyzer, and anything
/// that mentions a protected table is either planned or rejected: never
/// passed through.
#[test]
fn truncated_statements_never_panic() {
    let a = analyzer();
    let stmts = [
        "INSERT INTO users (id, email, name) VALUES ($1, $2, $3) ON CONFLICT (email) DO UPDATE SET email = EXCLUDED.email RETURNING id, email",
        "with t as (select id, email from users where email = any($1)) select * from t join orders o on o.user_id = t.id where o.total > 3 order by o.id limit 5",
        "update pay_customers c set email = 'x' from orgs o where c.org_id = o.id and o.name = $1 and c.email in ('a', $2)",
        "copy users (id, email) from stdin with (format csv, delimiter ';', null 'N', quote '\"')",
        "select u.*, (select count(*) from orders where user_id = u.id) from users u where exists (select 1 from rot where rot.ssn = u.email)",
    ];
    for s in stmts {
        for cut in 0..=s.len() {
            if !s.is_char_boundary(cut) {
                continue;
            }
            let piece = &s[..cut];
            for mode in [
                Mode::Simple,
                Mode::Extended {
                    param_types: &[0, 25],
                },
            ] {
                for role in ["app_user", "dba", "signup"] {
                    let plans = a.plan(piece, role, mode);
                    for p in plans {
                        match &p {
                            StatementPlan::Rewrite(r) => {
                                let n = r.literals.len();
                                let used = r
                                    .sql
                                    .iter()
                                    .filter(|s| matches!(s, Segment::Literal(_)))
                                    .count();
                                assert_eq!(n, used, "{piece}");
                            }
                            // A pass-through must not name a protected table.
                            StatementPlan::Passthrough { sql } => assert!(
                                !names_protected_table(sql),
                                "passed through unexamined as {role} ({mode:?}): {piece:?}"
                            ),
                            StatementPlan::Copy(_) | StatementPlan::Reject { .. } => {}
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn lateral_correlated_and_returning_aliases() {
    let r = rw(ext(
        "select o.id, x.e from orders o cross join lateral (select u.email as e from users u where u.id = o.user_id and u.email = $1) x",
        "app_user",
    ));
    assert!(shown(&r).contains("u.email_bidx = $1"), "{}", shown(&r));
    let (_, msg) = reject(ext(
        "select o.id from orders o, lateral (select email from users u where u.id = o.user_id) x order by x.email",
        "app_user",
    ));
    assert!(msg.contains("ORDER BY"), "{msg}");
    let r = rw(ext(
        "insert into users (email) values ($1) returning email as e, id",
        "app_user",
    ));
    assert!(r.touched.contains(&(users_email(), Use::Read)));
    let (_, msg) = reject(ext(
        "select lower(e) from (select email as e from users) s",
        "app_user",
    ));
    assert!(msg.contains("public.users.email"), "{msg}");
}

#[test]
fn parameter_gaps_beyond_declared_types_are_refused() {
    // Found by fuzzing (fuzz target `analyzer`): a huge `$n` made the plan
    // hold one parameter slot per number below it (out of memory).
    let a = analyzer();
    let sql = "select id from users where email = $1444444444 and name is not null";
    let v = a.plan(
        sql,
        "app_user",
        Mode::Extended {
            param_types: &[23, 2950],
        },
    );
    let (code, msg) = reject(v[0].clone());
    assert_eq!(code, "0A000");
    assert!(msg.contains("$1444444444"), "{msg}");
    // PostgreSQL cannot type $1 here either.
    reject(ext("select id from users where email = $2", "app_user"));
    // Gaps covered by declared types, and parameters used out of order.
    let v = a.plan(
        "select id from users where email = $3",
        "app_user",
        Mode::Extended {
            param_types: &[25, 25, 0],
        },
    );
    assert_eq!(rw(v[0].clone()).params.len(), 3);
    let r = rw(ext(
        "select id from users where email = $2 and id = $1",
        "app_user",
    ));
    assert_eq!(r.params.len(), 2);
}

#[test]
fn result_columns_map_plain_selects_only() {
    let name = ColumnRef::new("public", "users", "name");
    let cols = |sql: &str| {
        let mut v = simple(sql, "calmony_app");
        assert_eq!(v.len(), 1, "{sql}");
        rw(v.pop().unwrap()).result_columns
    };
    assert_eq!(
        cols("SELECT id, email, name AS n FROM users WHERE plan = 'pro'"),
        Some(vec![None, Some(users_email()), Some(name.clone())])
    );
    assert_eq!(
        cols("SELECT u.email FROM (SELECT email FROM users) u"),
        Some(vec![Some(users_email())])
    );
    assert_eq!(
        cols("WITH x AS (SELECT id, email FROM users) SELECT email, id FROM x"),
        Some(vec![Some(users_email()), None])
    );
    // Not every column known, or not one result.
    assert_eq!(cols("SELECT * FROM users"), None);
    assert_eq!(cols("SELECT users.*, 1 FROM users"), None);
    assert_eq!(
        cols("SELECT email FROM users UNION ALL SELECT email FROM users"),
        None
    );
}

#[test]
fn blind_index_columns_belong_to_pgveil() {
    for (sql, role) in [
        ("select email_bidx from users", "signup"),
        (
            "insert into users (id, email) values (1, $1) returning (select count(*) from users x where x.email_bidx = users.email_bidx)",
            "signup",
        ),
        (
            "select u1.id from users u1 join users u2 on u1.\"email_bidx\" = u2.email_bidx",
            "dba",
        ),
        ("update users set email_bidx = $1", "signup"),
        (
            "insert into users (id, email_bidx) values (1, $1)",
            "signup",
        ),
        ("select id from rot where ssn_bidx2 = $1", "dba"),
        (
            "select id from users join pay_customers using (email_bidx)",
            "searcher",
        ),
    ] {
        let (code, msg) = reject(ext(sql, role));
        assert_eq!(code, "42501", "{sql}");
        assert!(msg.contains("_bidx"), "{msg}");
    }
    // Roles that may search may name it; pgveil's own rewrite adds it.
    assert!(!matches!(
        ext("select email_bidx from users", "searcher"),
        StatementPlan::Reject { .. }
    ));
    let r = rw(ext("select id from users where email = $1", "searcher"));
    assert!(shown(&r).contains("email_bidx = $1"), "{}", shown(&r));
}
