//! The analyzer's plans for writes under the unit tests' policy: INSERT
//! (parameters, literals, envelopes, tenants, ON CONFLICT), UPDATE,
//! parameters used twice, blind-index rotation, and COPY plans.

use super::test_support::{analyzer, ext, reject, rw, shown, users_email};
use super::*;

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
