//! Plans for the bulk-insert shapes (`sql::rewrite::bulk`): INSERT … SELECT
//! from UNNEST of arrays and from VALUES, and ON CONFLICT on protected
//! columns. The statement texts marked "recorded" were taken from
//! PostgreSQL 15's `log_statement = all` while Django 5.2.x (psycopg 3.3,
//! client-side and server-side binding) ran `bulk_create` and SQLAlchemy
//! 2.0.x (psycopg 3) ran `insert(t).returning(…, sort_by_parameter_order=True)`
//! with a list of rows, with the protected tables' names put in.

use super::test_support::{analyzer_for, plan_one, reject, rw, shown, unit_policy};
use super::*;

/// The unit tests' policy with `score`, `amount` and `born` (values of
/// several types for the array casts) instead of `dob`.
const POLICY: &str = unit_policy!(
    "      score: { type: int4, access: { app: read } }
      amount: { type: numeric, access: { app: read } }
      born: { type: date, access: { app: read } }
"
);

fn analyzer() -> Analyzer {
    analyzer_for(POLICY)
}

fn ext_typed(sql: &str, role: &str, types: &[Oid]) -> StatementPlan {
    plan_one(
        &analyzer(),
        sql,
        role,
        Mode::Extended { param_types: types },
    )
}

fn ext(sql: &str, role: &str) -> StatementPlan {
    ext_typed(sql, role, &[])
}

fn simple(sql: &str, role: &str) -> StatementPlan {
    plan_one(&analyzer(), sql, role, Mode::Simple)
}

fn email() -> ColumnRef {
    ColumnRef::new("public", "users", "email")
}

fn literals(r: &RewritePlan) -> Vec<(Option<&str>, SlotOp)> {
    r.literals
        .iter()
        .map(|l| (l.value.as_deref(), l.op))
        .collect()
}

// ----- UNNEST of array parameters -----------------------------------------

#[test]
fn django_unnest_of_array_parameters() {
    // Recorded (server-side binding), table and columns renamed.
    let sql = r#"INSERT INTO "users" ("plan", "email", "score") SELECT * FROM UNNEST(($1)::varchar[], ($2)::varchar[], ($3)::integer[]) RETURNING "users"."id""#;
    // psycopg declares int2[] for small integers and leaves str lists unknown.
    let r = rw(ext_typed(sql, "app_user", &[0, 0, 1005]));
    assert_eq!(
        shown(&r),
        r#"INSERT INTO "users" ("plan", "email", "score", email_bidx) SELECT * FROM UNNEST(($1)::varchar[], ($2)::BYTEA[], ($3)::BYTEA[], $4::BYTEA[]) RETURNING "users"."id""#
    );
    assert_eq!(
        r.params,
        vec![
            ParamAction::Copy { orig: 0 },
            ParamAction::EncryptArray {
                orig: 1,
                target: email(),
                tenant: ArrayTenant::None,
                elem: 1043
            },
            ParamAction::EncryptArray {
                orig: 2,
                target: ColumnRef::new("public", "users", "score"),
                tenant: ArrayTenant::None,
                elem: 21
            },
            ParamAction::BlindIndexArray {
                orig: 1,
                target: email(),
                next: false,
                elem: 1043
            },
        ]
    );
    // Parameter descriptions show what PostgreSQL would have inferred.
    assert_eq!(
        r.param_type_overrides,
        vec![(1, PgType::Varchar, true), (2, PgType::Int2, true)]
    );
    assert_eq!(r.parse_param_types, vec![0, 0, 0, 0]);
    assert!(r.touched.contains(&(email(), Use::Write)));
    // The edits are pgveil's; the client's bytes are kept around them.
    assert!(r.edits.iter().all(|e| e.end <= sql.len()));
}

#[test]
fn unnest_with_an_alias_and_an_explicit_projection() {
    let r = rw(ext(
        "insert into users (email, plan) select u.e::text, u.p from unnest($1::text[], $2::text[]) as u(e, p)",
        "app_user",
    ));
    assert_eq!(
        shown(&r),
        "insert into users (email, plan, email_bidx) select u.e::BYTEA, u.p, pgv_email_bidx from unnest($1::BYTEA[], $2::text[], $3::BYTEA[]) as u(e, p, pgv_email_bidx)"
    );
    // A name the alias already uses is not taken twice.
    let r = rw(ext(
        "insert into users (email) select pgv_email_bidx from unnest($1::text[]) as u(pgv_email_bidx)",
        "app_user",
    ));
    assert!(
        shown(&r).contains("as u(pgv_email_bidx, pgv_email_bidx_)"),
        "{}",
        shown(&r)
    );
}

#[test]
fn unnest_with_rotation_writes_both_blind_indexes() {
    let r = rw(ext(
        "insert into rot (ssn) select * from unnest($1::text[])",
        "app_user",
    ));
    assert_eq!(
        shown(&r),
        "insert into rot (ssn, ssn_bidx, ssn_bidx2) select * from unnest($1::BYTEA[], $2::BYTEA[], $3::BYTEA[])"
    );
    let target = ColumnRef::new("public", "rot", "ssn");
    assert_eq!(
        &r.params[1..],
        &[
            ParamAction::BlindIndexArray {
                orig: 0,
                target: target.clone(),
                next: false,
                elem: 25
            },
            ParamAction::BlindIndexArray {
                orig: 0,
                target,
                next: true,
                elem: 25
            },
        ]
    );
}

#[test]
fn unnest_into_a_tenant_table_takes_each_rows_tenant() {
    let r = rw(ext(
        "insert into pay_customers (org_id, email) select * from unnest($1::int8[], $2::text[])",
        "app_user",
    ));
    assert_eq!(
        shown(&r),
        "insert into pay_customers (org_id, email, email_bidx) select * from unnest($1::int8[], $2::BYTEA[], $3::BYTEA[])"
    );
    assert_eq!(r.params[0], ParamAction::Copy { orig: 0 });
    assert_eq!(
        r.params[1],
        ParamAction::EncryptArray {
            orig: 1,
            target: ColumnRef::new("public", "pay_customers", "email"),
            tenant: ArrayTenant::Param(0),
            elem: 25
        }
    );
    // Tenants from an array literal, values from a parameter.
    let r = rw(ext(
        "insert into pay_customers (org_id, email) select * from unnest('{7,NULL, 8}'::int8[], $1::text[])",
        "app_user",
    ));
    assert!(matches!(
        &r.params[0],
        ParamAction::EncryptArray { tenant: ArrayTenant::Elements(t), .. }
            if *t == vec![TenantSource::Literal("7".into()), TenantSource::None, TenantSource::Literal("8".into())]
    ));
    // Tenants as scalar parameters in ARRAY[…].
    let r = rw(ext(
        "insert into pay_customers (org_id, email) select * from unnest(ARRAY[$1, $2]::int8[], $3::text[])",
        "app_user",
    ));
    assert!(matches!(
        &r.params[2],
        ParamAction::EncryptArray { tenant: ArrayTenant::Elements(t), .. }
            if *t == vec![TenantSource::Param(0), TenantSource::Param(1)]
    ));
}

#[test]
fn unnest_parameter_types() {
    // Declared as an array of another integer type: converted at Bind.
    let r = rw(ext_typed(
        "insert into users (score) select * from unnest($1::int4[])",
        "app_user",
        &[1016],
    ));
    assert!(matches!(
        r.params[0],
        ParamAction::EncryptArray { elem: 20, .. }
    ));
    // Declared, without a cast.
    let r = rw(ext_typed(
        "insert into users (email) select * from unnest($1)",
        "app_user",
        &[1009],
    ));
    assert!(matches!(
        r.params[0],
        ParamAction::EncryptArray { elem: 25, .. }
    ));
    // No type at all: PostgreSQL could not infer one either.
    let (_, msg) = reject(ext(
        "insert into users (email) select * from unnest($1)",
        "app_user",
    ));
    assert!(
        msg.contains("$1") && msg.contains("public.users.email"),
        "{msg}"
    );
    // Declared as something that is not an array of the column's type.
    for ty in [25, 1007, 1231] {
        let (_, msg) = reject(ext_typed(
            "insert into users (email) select * from unnest($1::text[])",
            "app_user",
            &[ty],
        ));
        assert!(msg.contains("public.users.email"), "{ty}: {msg}");
    }
}

// ----- UNNEST of array literals -------------------------------------------

#[test]
fn django_unnest_of_array_literals() {
    // Recorded (client-side binding, psycopg 3): string lists are untyped
    // literals, integer lists carry psycopg's own cast.
    let sql = r#"INSERT INTO "users" ("plan", "email", "score") SELECT * FROM UNNEST(('{a,b}')::varchar[], ( E'{"a''b\\\\c@x.io","d{e}@x.io",NULL}')::varchar[], ('{3,NULL,40000}'::int4[])::integer[]) RETURNING "users"."id""#;
    let r = rw(simple(sql, "app_user"));
    assert_eq!(
        shown(&r),
        r#"INSERT INTO "users" ("plan", "email", "score", email_bidx) SELECT * FROM UNNEST(('{a,b}')::varchar[], ( {0:EncryptArray})::BYTEA[], ({2:EncryptArray}::BYTEA[])::BYTEA[], {1:BlindIndexArray}) RETURNING "users"."id""#
    );
    // Each slot holds the elements, written back as an array literal.
    assert_eq!(
        literals(&r),
        vec![
            (
                Some(r#"{"a'b\\c@x.io","d{e}@x.io",NULL}"#),
                SlotOp::EncryptArray
            ),
            (
                Some(r#"{"a'b\\c@x.io","d{e}@x.io",NULL}"#),
                SlotOp::BlindIndexArray
            ),
            (Some(r#"{"3",NULL,"40000"}"#), SlotOp::EncryptArray),
        ]
    );
    assert_eq!(
        array::parse_text(r.literals[0].value.as_deref().unwrap()).unwrap(),
        vec![
            Some("a'b\\c@x.io".to_string()),
            Some("d{e}@x.io".to_string()),
            None
        ]
    );
    // psycopg picks int2 for small integers: a value out of its range
    // fails as PostgreSQL's cast would (no value in the message).
    let (code, msg) = reject(simple(
        "insert into users (score) select * from unnest(('{3,40000}'::int2[])::integer[])",
        "app_user",
    ));
    assert_eq!(code, "22P02");
    assert!(msg.contains("int2") && !msg.contains("40000"), "{msg}");
}

#[test]
fn psycopg2_array_constructor_literals() {
    let r = rw(simple(
        "insert into users (email, name) select * from unnest((ARRAY['x@y', NULL, 'it''s'])::varchar[], ARRAY['n1', 'n2', 'n3'])",
        "app_user",
    ));
    assert_eq!(
        shown(&r),
        "insert into users (email, name, email_bidx) select * from unnest(({0:EncryptArray})::BYTEA[], {2:EncryptArray}::BYTEA[], {1:BlindIndexArray})"
    );
    assert_eq!(
        r.literals[0].value.as_deref(),
        Some(r#"{"x@y",NULL,"it's"}"#)
    );
    // An untyped ARRAY of strings is text[]; of numbers it needs a cast.
    let r = rw(simple(
        "insert into users (score) select * from unnest(ARRAY[1, 2]::int4[])",
        "app_user",
    ));
    assert_eq!(r.literals[0].value.as_deref(), Some(r#"{"1","2"}"#));
    let (_, msg) = reject(simple(
        "insert into users (score) select * from unnest(ARRAY[1, 2])",
        "app_user",
    ));
    assert!(msg.contains("public.users.score"), "{msg}");
    // Parameters inside ARRAY[…]: one array parameter instead.
    let (_, msg) = reject(ext(
        "insert into users (email) select * from unnest(ARRAY[$1, $2]::text[])",
        "app_user",
    ));
    assert!(msg.contains("$1") && msg.contains("one parameter"), "{msg}");
}

#[test]
fn literal_tenants_go_with_their_elements() {
    let r = rw(simple(
        "insert into pay_customers (org_id, email) select * from unnest(('{7, 8}'::int2[])::bigint[], ('{a@x,NULL}')::varchar[])",
        "app_user",
    ));
    assert_eq!(r.literals[0].op, SlotOp::EncryptArray);
    assert_eq!(
        r.literals[0].tenants,
        vec![
            TenantSource::Literal("7".into()),
            TenantSource::Literal("8".into())
        ]
    );
    // Tenant parameters in ARRAY[…] cannot go with literal values.
    let (_, msg) = reject(ext(
        "insert into pay_customers (org_id, email) select * from unnest(ARRAY[$1]::int8[], '{a@x}'::text[])",
        "app_user",
    ));
    assert!(msg.contains("both as parameters"), "{msg}");
    // A value without a tenant is refused; a NULL needs none.
    let (_, msg) = reject(simple(
        "insert into pay_customers (org_id, email) select * from unnest('{7,NULL}'::int8[], '{a@x,b@x}'::text[])",
        "app_user",
    ));
    assert!(msg.contains("tenant") && msg.contains("org_id"), "{msg}");
    let (_, msg) = reject(simple(
        "insert into pay_customers (org_id, email) select * from unnest('{7}'::int8[], '{a@x,b@x}'::text[])",
        "app_user",
    ));
    assert!(msg.contains("tenant"), "{msg}");
    // Tenants as a parameter with literal values cannot be paired.
    let (_, msg) = reject(ext(
        "insert into pay_customers (org_id, email) select * from unnest($1::int8[], '{a@x}'::text[])",
        "app_user",
    ));
    assert!(msg.contains("both as parameters"), "{msg}");
    // No tenant column, or a computed one.
    for sql in [
        "insert into pay_customers (email) select * from unnest($1::text[])",
        "insert into pay_customers (org_id, email) select * from unnest(array_fill(7, ARRAY[2]), $1::text[])",
    ] {
        let (_, msg) = reject(ext(sql, "app_user"));
        assert!(
            msg.contains("tenant") && msg.contains("org_id"),
            "{sql}: {msg}"
        );
    }
}

#[test]
fn text_storage_gets_text_arrays() {
    let mut a = analyzer();
    a.storage.insert(
        ColumnRef::new("public", "users", "name"),
        crate::crypto::types::Storage::Text,
    );
    let r = rw(plan_one(
        &a,
        "insert into users (name) select * from unnest($1::text[])",
        "app_user",
        Mode::Extended { param_types: &[] },
    ));
    assert_eq!(
        shown(&r),
        "insert into users (name) select * from unnest($1::text[])"
    );
    let r = rw(plan_one(
        &a,
        "insert into users (name) select * from (values ($1), (NULL)) v",
        "app_user",
        Mode::Extended { param_types: &[] },
    ));
    assert_eq!(
        shown(&r),
        "insert into users (name) select * from (values ($1::TEXT), (NULL::TEXT)) v"
    );
}

#[test]
fn large_array_literals_splice() {
    let items: Vec<String> = (0..600).map(|i| format!("\"u{i}@x.io\"")).collect();
    let sql = format!(
        "insert into users (email, plan) select * from unnest('{{{}}}'::text[], $1::text[]) returning id",
        items.join(",")
    );
    let r = rw(ext(&sql, "app_user"));
    assert_eq!(r.literals.len(), 2);
    assert_eq!(
        array::parse_text(r.literals[0].value.as_deref().unwrap())
            .unwrap()
            .len(),
        600
    );
    // Three edits: the added column, the literal (and its cast), the
    // added argument.
    assert_eq!(r.edits.len(), 3, "{:?}", r.edits);
    assert!(
        r.edits[0].is_empty() && r.edits[2].is_empty(),
        "{:?}",
        r.edits
    );
    assert_eq!(
        shown(&r),
        "insert into users (email, plan, email_bidx) select * from unnest({0:EncryptArray}::BYTEA[], $1::text[], {1:BlindIndexArray}) returning id"
    );
}

// ----- VALUES ---------------------------------------------------------------

#[test]
fn sqlalchemy_insertmanyvalues() {
    // Recorded (psycopg 3), table and columns renamed.
    let sql = "INSERT INTO users (plan, email, score) SELECT p0::VARCHAR, p1::VARCHAR, p2::INTEGER FROM (VALUES ($1::VARCHAR, $2::VARCHAR, $3::INTEGER, 0), ($4::VARCHAR, $5::VARCHAR, $6::INTEGER, 1)) AS imp_sen(p0, p1, p2, sen_counter) ORDER BY sen_counter RETURNING users.id, users.id AS id__1";
    let r = rw(ext_typed(sql, "app_user", &[0, 0, 21, 0, 0, 21]));
    assert_eq!(
        shown(&r),
        "INSERT INTO users (plan, email, score, email_bidx) SELECT p0::VARCHAR, p1::BYTEA, p2::BYTEA, pgv_email_bidx FROM (VALUES ($1::VARCHAR, $2::BYTEA, $3::BYTEA, 0, $7::BYTEA), ($4::VARCHAR, $5::BYTEA, $6::BYTEA, 1, $8::BYTEA)) AS imp_sen(p0, p1, p2, sen_counter, pgv_email_bidx) ORDER BY sen_counter RETURNING users.id, users.id AS id__1"
    );
    assert_eq!(
        r.params[1],
        ParamAction::Encrypt {
            orig: 1,
            target: email(),
            tenant: TenantSource::None
        }
    );
    assert_eq!(
        r.params[6],
        ParamAction::BlindIndex {
            orig: 1,
            target: email(),
            tenant: TenantSource::None,
            array: false
        }
    );
    assert!(
        r.param_type_overrides
            .contains(&(1, PgType::Varchar, false))
    );
    // Literals, NULLs and a tenant per row.
    let r = rw(simple(
        "insert into pay_customers (org_id, email) select p0::BIGINT, p1::VARCHAR from (values (7::BIGINT, 'a@x'::VARCHAR, 0), (8, NULL, 1)) as imp_sen(p0, p1, sen_counter) order by sen_counter",
        "app_user",
    ));
    assert_eq!(
        shown(&r),
        "insert into pay_customers (org_id, email, email_bidx) select p0::BIGINT, p1::BYTEA, pgv_email_bidx from (values (7::BIGINT, {0:Encrypt}::BYTEA, 0, {1:BlindIndex}), (8, NULL::BYTEA, 1, NULL::BYTEA)) as imp_sen(p0, p1, sen_counter, pgv_email_bidx) order by sen_counter"
    );
    assert_eq!(r.literals[0].tenant, TenantSource::Literal("7".into()));
    // SELECT * maps positionally.
    let r = rw(ext(
        "insert into users (email, plan) select * from (values ($1, 'free'), ($2, 'pro')) as v(e, p)",
        "app_user",
    ));
    assert_eq!(
        shown(&r),
        "insert into users (email, plan, email_bidx) select * from (values ($1::BYTEA, 'free', $3::BYTEA), ($2::BYTEA, 'pro', $4::BYTEA)) as v(e, p, pgv_email_bidx)"
    );
}

#[test]
fn values_refusals() {
    for (sql, what) in [
        // Computed by the database.
        (
            "insert into users (email) select lower(e) from (values ($1)) v(e)",
            "not a column",
        ),
        (
            "insert into users (email) select e || 'x' from (values ($1)) v(e)",
            "not a column",
        ),
        (
            "insert into users (email) select * from (values (lower($1))) v(e)",
            "computed",
        ),
        (
            "insert into users (email) select * from (values ((select 'x'))) v(e)",
            "computed",
        ),
        (
            "insert into users (email) select * from (values ((select email from users limit 1))) v(e)",
            "computed",
        ),
        (
            "insert into users (email) select * from (values (DEFAULT)) v(e)",
            "DEFAULT",
        ),
        // Value-changing casts.
        (
            "insert into users (amount) select p0::NUMERIC(10, 2) from (values ($1, 0)) v(p0, n)",
            "NUMERIC(10,2)",
        ),
        (
            "insert into users (email) select p0::VARCHAR(3) from (values ($1, 0)) v(p0, n)",
            "VARCHAR(3)",
        ),
        (
            "insert into users (email) select p0::CHAR(5) from (values ($1)) v(p0)",
            "CHAR(5)",
        ),
        (
            "insert into users (score) select p0::INTEGER from (values ($1::TEXT)) v(p0)",
            "to text",
        ),
        (
            "insert into users (score) select p0::INTEGER from (values ('1'::TEXT)) v(p0)",
            "from text to int4",
        ),
        (
            "insert into users (score) select p0 from (values (1.5)) v(p0)",
            "to numeric",
        ),
        (
            "insert into users (score) select p0 from (values ($1::INT4), ($2::INT8)) v(p0)",
            "different types",
        ),
        // Shapes.
        (
            "insert into users (email) select e from (values ($1, 0)) v(e, n) where n > 0",
            "WHERE",
        ),
        (
            "insert into users (email) select e from (values ($1, 0)) v(e, n) order by e",
            "ORDER BY",
        ),
        (
            "insert into users (email) select e from (values ($1, 0)) v(e, n) limit 1",
            "LIMIT",
        ),
        (
            "insert into users (email) select distinct e from (values ($1)) v(e)",
            "DISTINCT",
        ),
        (
            "insert into users (email) select e from (values ($1)) v(e) group by e",
            "GROUP BY",
        ),
        (
            "insert into users (email, name) select e, e from (values ($1)) v(e)",
            "two columns",
        ),
        (
            "insert into users (email) select * from (values ($1, 2)) v(e, n)",
            "width",
        ),
        (
            "insert into users (email) select e from (values ($1)) v(e), other o",
            "join",
        ),
        (
            "insert into users (email) select e from (values ($1)) v(e) join other o on true",
            "join",
        ),
        (
            "insert into users (email) select e from (select $1 as e) v",
            "subquery",
        ),
        (
            "insert into users (email) select v.column1 from (values ($1)) v",
            "not a column",
        ),
        (
            "insert into users (email) with w as (select 1) select * from (values ($1)) v(e)",
            "WITH",
        ),
        (
            "insert into users (email) select * from (values ($1) union all values ($2)) v(e)",
            "subquery",
        ),
    ] {
        let (code, msg) = reject(ext(sql, "app_user"));
        assert_eq!(code, "0A000", "{sql}: {msg}");
        assert!(msg.contains(what), "{sql}: {msg}");
        assert!(msg.contains("public.users."), "{sql}: {msg}");
    }
}

// ----- refusals ---------------------------------------------------------------

#[test]
fn unnest_refusals_name_table_column_and_alternative() {
    for (sql, what) in [
        // Computed by the database, or read from elsewhere.
        (
            "insert into users (email) select lower(e) from unnest($1::text[]) u(e)",
            "not a column",
        ),
        (
            "insert into users (email) select email from old_users",
            "table",
        ),
        ("insert into users (email) select name from users", "table"),
        (
            "insert into users (email) select * from unnest(ARRAY(select email from old_users))",
            "computed",
        ),
        (
            "insert into users (email) select * from unnest(string_to_array($1, ','))",
            "computed",
        ),
        (
            "insert into users (email) select * from unnest(ARRAY[lower($1)]::text[])",
            "computed",
        ),
        (
            "insert into users (email) select * from unnest(ARRAY[(select 'x')]::text[])",
            "computed",
        ),
        (
            "insert into users (email) select x from old_users o, unnest(o.emails) x",
            "FROM",
        ),
        (
            "insert into users (email) select * from generate_series(1, 2)",
            "function",
        ),
        (
            "insert into users (email) select * from unnest($1::text[]) u(e) where e <> ''",
            "WHERE",
        ),
        (
            "insert into users (email) select * from unnest($1::text[]) u(e) limit 2",
            "LIMIT",
        ),
        (
            "insert into users (email) select * from unnest($1::text[]) with ordinality",
            "ORDINALITY",
        ),
        (
            "insert into users (email) select e from unnest($1::text[], $2::int[]) u(e, n) order by e",
            "ORDER BY",
        ),
        (
            "insert into users (email) select * from unnest($1::text[]) u(e) join old_users o on true",
            "join",
        ),
        (
            "insert into users (email) select * from unnest($1::text[]) union all select 'x'",
            "set operation",
        ),
        // Value-changing or foreign casts.
        (
            "insert into users (email) select * from unnest($1::varchar(3)[])",
            "VARCHAR(3)",
        ),
        (
            "insert into users (email) select * from unnest($1::int4[])",
            "int4",
        ),
        (
            "insert into users (email) select * from unnest($1::bpchar[])",
            "bpchar",
        ),
        (
            "insert into users (email) select * from unnest($1::\"text\"[])",
            "text",
        ),
        (
            "insert into users (email) select e::varchar(3) from unnest($1::text[]) u(e)",
            "VARCHAR(3)",
        ),
        (
            "insert into users (score) select * from unnest($1::int8[])",
            "int8",
        ),
        (
            "insert into users (email) select * from unnest($1::text)",
            "arrays",
        ),
        // Arrays pgveil does not transform.
        (
            "insert into users (email) select * from unnest(ARRAY[ARRAY['a']]::text[])",
            "multi-dimensional",
        ),
        (
            "insert into users (email) select * from unnest('{{a},{b}}'::text[])",
            "multi-dimensional",
        ),
        (
            "insert into users (email) select * from unnest('{a}')",
            "no type",
        ),
        (
            "insert into users (email) select * from unnest(NULL)",
            "no type",
        ),
        // One source column, two targets.
        (
            "insert into users (email, plan) select e, e from unnest($1::text[]) u(e)",
            "two columns",
        ),
        (
            "insert into users (email, plan) select * from unnest($1::text[])",
            "width",
        ),
    ] {
        let (code, msg) = reject(ext(sql, "app_user"));
        assert_eq!(code, "0A000", "{sql}: {msg}");
        assert!(msg.contains(what), "{sql}: {msg}");
        assert!(msg.contains("public.users."), "{sql}: {msg}");
    }
    // A malformed array literal: PostgreSQL's SQLSTATE, no value.
    let (code, msg) = reject(simple(
        "insert into users (email) select * from unnest('{secret@x.io,}'::text[])",
        "app_user",
    ));
    assert_eq!(code, "22P02");
    assert!(!msg.contains("secret"), "{msg}");
}

#[test]
fn roles_without_write_cannot_bulk_insert() {
    let (_, msg) = reject(ext(
        "insert into users (email) select * from unnest($1::text[])",
        "dba",
    ));
    assert!(msg.contains("dba") && msg.contains("VALUES"), "{msg}");
    // Plain columns of a protected table still work as before.
    let r = rw(ext(
        "insert into users (plan) select * from unnest($1::text[])",
        "dba",
    ));
    assert!(r.unchanged);
}

#[test]
fn plain_arguments_may_not_carry_protected_values() {
    let (_, msg) = reject(ext(
        "insert into users (email, plan) select * from unnest($1::text[], ARRAY(select email from users))",
        "app_user",
    ));
    assert!(msg.contains("public.users.email"), "{msg}");
    // The same parameter for a protected and a plain column.
    let (_, msg) = reject(ext(
        "insert into users (email, plan) select * from unnest($1::text[], $1::text[])",
        "app_user",
    ));
    assert!(msg.contains("$1"), "{msg}");
}

// ----- ON CONFLICT ------------------------------------------------------------

#[test]
fn on_conflict_of_bulk_inserts_uses_the_blind_index() {
    // Recorded (Django bulk_create(update_conflicts=True, unique_fields=["email"], update_fields=["name"])).
    let r = rw(ext(
        r#"INSERT INTO "users" ("plan", "email", "name") SELECT * FROM UNNEST(($1)::varchar[], ($2)::varchar[], ($3)::varchar[]) ON CONFLICT("email") DO UPDATE SET "name" = EXCLUDED."name" RETURNING "users"."id""#,
        "app_user",
    ));
    assert!(
        shown(&r).contains(
            r#"ON CONFLICT(email_bidx) DO UPDATE SET "name" = EXCLUDED."name" RETURNING"#
        ),
        "{}",
        shown(&r)
    );
    // Recorded (SQLAlchemy on_conflict_do_update(index_elements=[email], set_=…)).
    let r = rw(ext(
        "INSERT INTO users (plan, email, name) SELECT p0::VARCHAR, p1::VARCHAR, p2::VARCHAR FROM (VALUES ($1::VARCHAR, $2::VARCHAR, $3::VARCHAR, 0), ($4::VARCHAR, $5::VARCHAR, $6::VARCHAR, 1)) AS imp_sen(p0, p1, p2, sen_counter) ORDER BY sen_counter ON CONFLICT (email) DO UPDATE SET email = excluded.email, name = excluded.name RETURNING users.id, users.id AS id__1",
        "app_user",
    ));
    assert!(
        shown(&r).contains("ON CONFLICT (email_bidx) DO UPDATE SET email = excluded.email, name = excluded.name, email_bidx = EXCLUDED.email_bidx RETURNING"),
        "{}",
        shown(&r)
    );
    // During a rotation both indexes follow EXCLUDED.
    let r = rw(ext(
        "insert into rot (ssn) select * from unnest($1::text[]) on conflict (ssn) do update set ssn = excluded.ssn",
        "app_user",
    ));
    assert!(
        shown(&r).ends_with("on conflict (ssn_bidx) do update set ssn = excluded.ssn, ssn_bidx = EXCLUDED.ssn_bidx, ssn_bidx2 = EXCLUDED.ssn_bidx2"),
        "{}",
        shown(&r)
    );
    // Django's ignore_conflicts.
    let r = rw(ext(
        "insert into users (email) select * from unnest($1::text[]) on conflict do nothing",
        "app_user",
    ));
    assert!(shown(&r).ends_with("on conflict do nothing"));
}

#[test]
fn on_conflict_refusals() {
    // A role that cannot compute the blind index.
    let (_, msg) = reject(ext(
        "insert into users (email) values ($1) on conflict (email) do nothing",
        "dba",
    ));
    assert!(msg.contains("ON CONFLICT") && msg.contains("dba"), "{msg}");
    // A value computed from the conflicting row.
    let (_, msg) = reject(ext(
        "insert into users (email) values ($1) on conflict (email_bidx) do update set email = users.email",
        "app_user",
    ));
    assert!(msg.contains("public.users.email"), "{msg}");
    let (_, msg) = reject(ext(
        "insert into users (email, name) values ($1, $2) on conflict (email) do update set name = excluded.email",
        "app_user",
    ));
    assert!(msg.contains("public.users.name"), "{msg}");
    // A column without a blind index cannot be a conflict target.
    let (_, msg) = reject(ext(
        "insert into users (name) select * from unnest($1::text[]) on conflict (name) do nothing",
        "app_user",
    ));
    assert!(
        msg.contains("public.users.name") && msg.contains("blind index"),
        "{msg}"
    );
}

#[test]
fn long_array_constructors_splice_into_the_clients_text() {
    // psycopg2's client-side form of Django's bulk_create.
    let items: Vec<String> = (0..100).map(|i| format!("'u{i}@x.io'")).collect();
    let sql = format!(
        "INSERT INTO \"users\" (\"email\", \"plan\") SELECT * FROM UNNEST((ARRAY[{}])::varchar[], (ARRAY['a'])::varchar[]) RETURNING \"users\".\"id\"",
        items.join(", ")
    );
    let r = rw(simple(&sql, "app_user"));
    assert_eq!(
        shown(&r),
        r#"INSERT INTO "users" ("email", "plan", email_bidx) SELECT * FROM UNNEST(({0:EncryptArray})::BYTEA[], (ARRAY['a'])::varchar[], {1:BlindIndexArray}) RETURNING "users"."id""#
    );
    // One edit for the whole array and its cast.
    assert_eq!(r.edits.len(), 3, "{:?}", r.edits);
    assert!(sql[r.edits[1].clone()].starts_with("ARRAY['u0@x.io'"));
    assert!(sql[r.edits[1].clone()].ends_with("])::varchar"));
}
