use std::path::Path;
use std::sync::Arc;

use super::*;
use crate::policy::Policy;

pub(super) const POLICY: &str = "\
version: 1
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
      dob: { type: date, access: { app: read } }
  public.pay_customers:
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
";

fn analyzer() -> Analyzer {
    let p = Policy::from_text(Path::new("t.yaml"), POLICY).unwrap();
    Analyzer::new(Arc::new(p))
}

fn ext(sql: &str, role: &str) -> StatementPlan {
    let a = analyzer();
    let mut v = a.plan(sql, role, Mode::Extended { param_types: &[] });
    assert_eq!(v.len(), 1);
    v.pop().unwrap()
}

fn simple(sql: &str, role: &str) -> Vec<StatementPlan> {
    analyzer().plan(sql, role, Mode::Simple)
}

fn rw(p: StatementPlan) -> RewritePlan {
    match p {
        StatementPlan::Rewrite(r) => r,
        other => panic!("expected a rewrite, got {other:?}"),
    }
}

/// The rewritten SQL with literal slots shown as `{i:op}`.
fn shown(r: &RewritePlan) -> String {
    r.render(|i, s| format!("{{{i}:{:?}}}", s.op))
}

fn reject(p: StatementPlan) -> (&'static str, String) {
    match p {
        StatementPlan::Reject { sqlstate, message } => (sqlstate, message),
        other => panic!("expected a rejection, got {other:?}"),
    }
}

fn users_email() -> ColumnRef {
    ColumnRef::new("public", "users", "email")
}

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

// ----- writes --------------------------------------------------------------------

#[test]
fn insert_params_adds_blind_index_column() {
    let r = rw(ext(
        "INSERT INTO users (id, email, name) VALUES ($1, $2, $3) RETURNING id, email",
        "app_user",
    ));
    assert_eq!(
        shown(&r),
        "INSERT INTO users (id, email, name, email_bidx) VALUES ($1, $2, $3, $4) RETURNING id, email"
    );
    let name = ColumnRef::new("public", "users", "name");
    assert_eq!(
        r.params,
        vec![
            ParamAction::Copy { orig: 0 },
            ParamAction::Encrypt {
                orig: 1,
                target: users_email(),
                tenant: TenantSource::None
            },
            ParamAction::Encrypt {
                orig: 2,
                target: name,
                tenant: TenantSource::None
            },
            ParamAction::BlindIndex {
                orig: 1,
                target: users_email(),
                tenant: TenantSource::None,
                array: false
            },
        ]
    );
    assert_eq!(r.parse_param_types, vec![0, 0, 0, 0]);
    assert_eq!(
        r.param_type_overrides,
        vec![(1, PgType::Text, false), (2, PgType::Text, false)]
    );
    assert_eq!(r.kind, StatementKind::Insert);
}

#[test]
fn insert_literals_multi_row_null_default() {
    let r = rw(ext(
        "insert into users (email, dob) values ('a@b.c', '2001-02-03'::date), (NULL, DEFAULT), (DEFAULT, NULL)",
        "app_user",
    ));
    assert_eq!(
        shown(&r),
        "insert into users (email, dob, email_bidx) values ({0:Encrypt}, {1:Encrypt}, {2:BlindIndex}), (NULL, DEFAULT, NULL), (DEFAULT, NULL, DEFAULT)"
    );
    assert_eq!(r.literals[0].value.as_deref(), Some("a@b.c"));
    assert_eq!(r.literals[1].value.as_deref(), Some("2001-02-03"));
    assert_eq!(r.literals[1].target.column, "dob");
    assert_eq!(r.literals[2].value.as_deref(), Some("a@b.c"));
}

#[test]
fn insert_by_unlisted_role_requires_envelopes() {
    let r = rw(ext("insert into users (email) values ($1)", "dba"));
    assert_eq!(shown(&r), "insert into users (email) values ($1)");
    assert_eq!(
        r.params,
        vec![ParamAction::RequireEnvelope {
            orig: 0,
            target: users_email()
        },]
    );
    assert!(r.param_type_overrides.is_empty());
    // The blind index belongs to pgveil: a role without search may not
    // write (or read) it, even next to a copied envelope.
    let (code, _) = reject(ext(
        "insert into users (email, email_bidx) values ($1, $2)",
        "dba",
    ));
    assert_eq!(code, "42501");
    let r = rw(ext("insert into users (email) values ('pgv1:abc')", "dba"));
    assert_eq!(r.literals[0].op, SlotOp::RequireEnvelope);
    // A writer may not supply the blind index.
    let (_, msg) = reject(ext(
        "insert into users (email, email_bidx) values ($1, $2)",
        "app_user",
    ));
    assert!(msg.contains("email_bidx"), "{msg}");
}

#[test]
fn insert_write_only_role_encrypts() {
    let r = rw(ext("insert into users (email) values ($1)", "signup"));
    assert_eq!(
        shown(&r),
        "insert into users (email, email_bidx) values ($1, $2)"
    );
    assert!(matches!(r.params[0], ParamAction::Encrypt { .. }));
}

#[test]
fn insert_tenant_from_row() {
    let r = rw(ext(
        "insert into pay_customers (org_id, email) values ($1, $2), (7, 'x@y')",
        "app_user",
    ));
    assert_eq!(
        shown(&r),
        "insert into pay_customers (org_id, email, email_bidx) values ($1, $2, $3), (7, {0:Encrypt}, {1:BlindIndex})"
    );
    assert_eq!(
        r.params[1],
        ParamAction::Encrypt {
            orig: 1,
            target: ColumnRef::new("public", "pay_customers", "email"),
            tenant: TenantSource::Param(0)
        }
    );
    assert_eq!(r.params[0], ParamAction::Copy { orig: 0 });
    assert_eq!(r.literals[0].tenant, TenantSource::Literal("7".into()));
    let (code, msg) = reject(ext(
        "insert into pay_customers (email) values ($1)",
        "app_user",
    ));
    assert_eq!(code, "0A000");
    assert!(msg.contains("org_id") && msg.contains("tenant"), "{msg}");
    // NULL needs no tenant.
    assert!(matches!(
        ext(
            "insert into pay_customers (email) values (NULL)",
            "app_user"
        ),
        StatementPlan::Rewrite(_)
    ));
}

#[test]
fn insert_rejections() {
    let (_, msg) = reject(ext(
        "insert into users (email) select email from old_users",
        "app_user",
    ));
    assert!(
        msg.contains("INSERT … SELECT") && msg.contains("public.users.email"),
        "{msg}"
    );
    let (_, msg) = reject(ext(
        "insert into users (email) values (lower($1))",
        "app_user",
    ));
    assert!(msg.contains("expression"), "{msg}");
    let (_, msg) = reject(ext("insert into users values ($1, $2)", "app_user"));
    assert!(msg.contains("column list"), "{msg}");
    // Copying ciphertext into another table is fine.
    let r = rw(ext(
        "insert into archive (e) select email from users",
        "dba",
    ));
    assert!(r.unchanged);
}

#[test]
fn insert_on_conflict_do_update_excluded() {
    let r = rw(ext(
        "insert into users (id, email) values ($1, $2) on conflict (email) do update set email = excluded.email, name = excluded.name",
        "app_user",
    ));
    assert_eq!(
        shown(&r),
        "insert into users (id, email, email_bidx) values ($1, $2, $3) on conflict (email_bidx) do update set email = excluded.email, name = excluded.name, email_bidx = EXCLUDED.email_bidx"
    );
    let (_, msg) = reject(ext(
        "insert into pay_customers (org_id, email) values ($1, $2) on conflict (id) do update set email = excluded.email",
        "app_user",
    ));
    assert!(
        msg.contains("ON CONFLICT") && msg.contains("org_id"),
        "{msg}"
    );
    let r = rw(ext(
        "insert into pay_customers (org_id, email) values ($1, $2) on conflict (org_id, email) do update set email = excluded.email",
        "app_user",
    ));
    assert!(
        shown(&r).contains("on conflict (org_id, email_bidx)"),
        "{}",
        shown(&r)
    );
}

#[test]
fn update_set_param_literal_null() {
    let r = rw(ext(
        "UPDATE users SET email = $1, name = 'Bob' WHERE id = $2",
        "app_user",
    ));
    assert_eq!(
        shown(&r),
        "UPDATE users SET email = $1, name = {0:Encrypt}, email_bidx = $3 WHERE id = $2"
    );
    assert_eq!(r.params.len(), 3);
    assert!(matches!(
        r.params[2],
        ParamAction::BlindIndex { orig: 0, .. }
    ));
    let r = rw(ext(
        "update users set email = null where email = $1",
        "app_user",
    ));
    assert_eq!(
        shown(&r),
        "update users set email = null, email_bidx = NULL where email_bidx = $1"
    );
    assert_eq!(r.kind, StatementKind::Update);
}

#[test]
fn same_param_for_write_and_lookup_gets_a_second_number() {
    let r = rw(ext(
        "update users set email = $1 where email = $1",
        "app_user",
    ));
    assert_eq!(
        shown(&r),
        "update users set email = $1, email_bidx = $2 where email_bidx = $2"
    );
    assert!(matches!(r.params[0], ParamAction::Encrypt { orig: 0, .. }));
    assert!(matches!(
        r.params[1],
        ParamAction::BlindIndex { orig: 0, .. }
    ));
}

#[test]
fn param_used_protected_and_plain_is_rejected() {
    let (code, msg) = reject(ext(
        "select * from users where email = $1 or note = $1",
        "app_user",
    ));
    assert_eq!(code, "0A000");
    assert!(msg.contains("$1"), "{msg}");
    let (_, msg) = reject(ext("update users set email = $1, dob = $1", "app_user"));
    assert!(msg.contains("different types"), "{msg}");
}

#[test]
fn update_tenant_table_needs_tenant_in_where() {
    let r = rw(ext(
        "update pay_customers c set email = $1 where c.org_id = $2 and id = $3",
        "app_user",
    ));
    assert_eq!(
        r.params[0],
        ParamAction::Encrypt {
            orig: 0,
            target: ColumnRef::new("public", "pay_customers", "email"),
            tenant: TenantSource::Param(1)
        }
    );
    let (_, msg) = reject(ext(
        "update pay_customers set email = $1 where id = $2",
        "app_user",
    ));
    assert!(msg.contains("WHERE org_id ="), "{msg}");
    let (_, msg) = reject(ext(
        "update pay_customers set org_id = 3 where id = 1",
        "app_user",
    ));
    assert!(msg.contains("tenant column"), "{msg}");
    let r = rw(ext(
        "update pay_customers set email = 'a' where org_id = 'acme'",
        "app_user",
    ));
    assert_eq!(r.literals[0].tenant, TenantSource::Literal("acme".into()));
}

#[test]
fn blind_index_rotation_dual_writes() {
    let r = rw(ext("insert into rot (ssn) values ($1)", "app_user"));
    assert_eq!(
        shown(&r),
        "insert into rot (ssn, ssn_bidx, ssn_bidx2) values ($1, $2, $3)"
    );
    assert!(matches!(
        r.params[2],
        ParamAction::BlindIndexNext { orig: 0, .. }
    ));
    let r = rw(ext("update rot set ssn = '1' where ssn = '2'", "app_user"));
    assert_eq!(
        shown(&r),
        "update rot set ssn = {0:Encrypt}, ssn_bidx = {1:BlindIndex}, ssn_bidx2 = {2:BlindIndexNext} where ssn_bidx = {3:BlindIndex}"
    );
}

#[test]
fn copy_plans() {
    let a = analyzer();
    let v = a.plan(
        "COPY users (id, email) FROM STDIN WITH (FORMAT csv, HEADER true)",
        "app_user",
        Mode::Simple,
    );
    let StatementPlan::Copy(c) = &v[0] else {
        panic!("{v:?}")
    };
    assert_eq!(c.direction, CopyDirection::In);
    assert_eq!(c.format, CopyFormat::Csv);
    assert!(c.header);
    assert_eq!(c.delimiter, ',');
    assert_eq!(
        c.columns.as_deref(),
        Some(&["id".to_string(), "email".to_string()][..])
    );
    assert_eq!(c.fields[0], CopyField::Plain);
    assert_eq!(
        c.fields[1],
        CopyField::Encrypt {
            target: users_email(),
            tenant_field: None
        }
    );
    assert_eq!(c.appended, vec![(SlotOp::BlindIndex, 1, users_email())]);
    assert!(
        c.sql.contains("(id, email, email_bidx) FROM STDIN"),
        "{}",
        c.sql
    );
    let v = a.plan("copy users (id, email) to stdout", "app_user", Mode::Simple);
    assert!(matches!(&v[0], StatementPlan::Copy(c) if c.direction == CopyDirection::Out));
    let v = a.plan("copy users from stdin", "app_user", Mode::Simple);
    assert!(reject(v[0].clone()).1.contains("column list"));
    let v = a.plan("copy users (email) from '/tmp/x'", "app_user", Mode::Simple);
    assert!(reject(v[0].clone()).1.contains("STDIN"));
    let v = a.plan(
        "copy users (email) from stdin (format binary)",
        "app_user",
        Mode::Simple,
    );
    assert!(reject(v[0].clone()).1.contains("binary"));
    let v = a.plan(
        "copy pay_customers (org_id, email) from stdin",
        "app_user",
        Mode::Simple,
    );
    let StatementPlan::Copy(c) = &v[0] else {
        panic!("{v:?}")
    };
    assert!(matches!(
        &c.fields[1],
        CopyField::Encrypt {
            tenant_field: Some(0),
            ..
        }
    ));
    assert_eq!(c.delimiter, '\t');
    assert_eq!(c.null, "\\N");
    let v = a.plan("copy users (email) from stdin", "dba", Mode::Simple);
    let StatementPlan::Copy(c) = &v[0] else {
        panic!("{v:?}")
    };
    assert!(matches!(c.fields[0], CopyField::RequireEnvelope { .. }));
    assert!(c.appended.is_empty());
}

#[test]
fn views_from_catalog() {
    let p = Arc::new(Policy::from_text(Path::new("t.yaml"), POLICY).unwrap());
    let row = |oid: &str, att: &str, t: &str, k: &str, c: &str, ty: &str, def: Option<&str>| {
        vec![
            Some(oid.into()),
            Some(att.into()),
            Some("public".into()),
            Some(t.into()),
            Some(k.into()),
            Some(c.into()),
            Some(ty.into()),
            def.map(str::to_string),
        ]
    };
    let rows = vec![
        row("1", "1", "users", "r", "id", "bigint", None),
        row("1", "2", "users", "r", "email", "bytea", None),
        row("1", "3", "users", "r", "email_bidx", "bytea", None),
        row("1", "4", "users", "r", "name", "text", None),
        row("1", "5", "users", "r", "dob", "text", None),
        row(
            "2",
            "1",
            "people",
            "v",
            "id",
            "bigint",
            Some("SELECT users.id, users.email, users.email_bidx FROM users"),
        ),
        row("2", "2", "people", "v", "email", "bytea", None),
        row("2", "3", "people", "v", "email_bidx", "bytea", None),
        row(
            "3",
            "1",
            "names",
            "v",
            "name",
            "text",
            Some("SELECT users.name FROM users"),
        ),
    ];
    let cat = crate::policy::Catalog::from_rows(&p, rows);
    let a = Analyzer::with_catalog(p, &cat);
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
/// [`POLICY`] (identifiers compared case-insensitively, quotes ignored).
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
    let p = Arc::new(Policy::from_text(Path::new("t.yaml"), POLICY).unwrap());
    let row = |att: &str, c: &str| {
        vec![
            Some("1".into()),
            Some(att.into()),
            Some("public".into()),
            Some("users".into()),
            Some("r".into()),
            Some(c.into()),
            Some("bytea".into()),
            None,
        ]
    };
    let rows = ["id", "email", "email_bidx", "name", "dob", "plan"]
        .iter()
        .enumerate()
        .map(|(i, c)| row(&(i + 1).to_string(), c))
        .collect();
    let cat = crate::policy::Catalog::from_rows(&p, rows);
    let a = Analyzer::with_catalog(p, &cat);
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
    let p = Arc::new(Policy::from_text(Path::new("t.yaml"), POLICY).unwrap());
    let row = |oid: &str, att: &str, t: &str, k: &str, c: &str, ty: &str, def: Option<&str>| {
        vec![
            Some(oid.into()),
            Some(att.into()),
            Some("public".into()),
            Some(t.into()),
            Some(k.into()),
            Some(c.into()),
            Some(ty.into()),
            def.map(str::to_string),
        ]
    };
    let rows = vec![
        row("1", "1", "users", "r", "id", "bigint", None),
        row("1", "2", "users", "r", "email", "bytea", None),
        row("1", "3", "users", "r", "email_bidx", "bytea", None),
        row(
            "2",
            "1",
            "hv",
            "v",
            "id",
            "bigint",
            Some("SELECT users.id, users.email_bidx AS h FROM users"),
        ),
        row("2", "2", "hv", "v", "h", "bytea", None),
    ];
    let cat = crate::policy::Catalog::from_rows(&p, rows);
    let a = Analyzer::with_catalog(p, &cat);
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
