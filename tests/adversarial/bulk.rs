//! Bulk inserts as ORMs send them (issue 15): `INSERT … SELECT * FROM
//! UNNEST(arrays)` (Django 5.2 `bulk_create` on PostgreSQL) and `INSERT …
//! SELECT … FROM (VALUES …) AS imp_sen(…) ORDER BY sen_counter` (SQLAlchemy
//! 2.0 `insertmanyvalues`), with parameters in text and binary format and
//! with literals, into plain, text-stored and tenant tables, and their
//! `ON CONFLICT` upserts on a unique blind index. The statement texts were
//! recorded from PostgreSQL 15's `log_statement = all` while Django 5.2.x
//! and SQLAlchemy 2.0.x (psycopg 3.3) ran against a scratch cluster, with
//! the reference schema's names put in. Every refused variant and forged
//! array is followed by a direct look at the table and the plaintext scan
//! of the cluster, pgveil's log and the audit log.

use crate::common::raw::{self, Raw, errors, execute, rows, sync};
use crate::common::*;

/// A unique blind index, as `unique=True` on an encrypted field needs.
const UNIQUE_BIDX: &str = "CREATE UNIQUE INDEX users_email_bidx_key ON public.users (email_bidx);";

fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    v.extend_from_slice(body);
    v
}

fn cstr(b: &mut Vec<u8>, s: &str) {
    b.extend_from_slice(s.as_bytes());
    b.push(0);
}

/// Parse with declared parameter types (psycopg declares `int2[]` for
/// lists of small integers and leaves lists of strings unspecified).
fn parse_typed(sql: &str, types: &[u32]) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, "");
    cstr(&mut b, sql);
    b.extend_from_slice(&(types.len() as u16).to_be_bytes());
    for t in types {
        b.extend_from_slice(&t.to_be_bytes());
    }
    frame(b'P', &b)
}

/// A parameter: its format and its value.
type Param = (i16, Option<Vec<u8>>);

/// Bind of the unnamed statement with one format per parameter.
fn bind_formats(params: &[Param]) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, "");
    cstr(&mut b, "");
    b.extend_from_slice(&(params.len() as u16).to_be_bytes());
    for (f, _) in params {
        b.extend_from_slice(&f.to_be_bytes());
    }
    b.extend_from_slice(&(params.len() as u16).to_be_bytes());
    for (_, v) in params {
        match v {
            None => b.extend_from_slice(&(-1i32).to_be_bytes()),
            Some(v) => {
                b.extend_from_slice(&(v.len() as i32).to_be_bytes());
                b.extend_from_slice(v);
            }
        }
    }
    b.extend_from_slice(&0u16.to_be_bytes());
    frame(b'B', &b)
}

/// A binary array: header fields as given (so they can lie), then elements.
fn binary_array(
    ndim: i32,
    flags: i32,
    elem: u32,
    dims: &[(i32, i32)],
    items: &[Option<&[u8]>],
) -> Vec<u8> {
    let mut b = Vec::new();
    for x in [ndim, flags] {
        b.extend_from_slice(&x.to_be_bytes());
    }
    b.extend_from_slice(&elem.to_be_bytes());
    for (d, l) in dims {
        b.extend_from_slice(&d.to_be_bytes());
        b.extend_from_slice(&l.to_be_bytes());
    }
    for it in items {
        match it {
            None => b.extend_from_slice(&(-1i32).to_be_bytes()),
            Some(v) => {
                b.extend_from_slice(&(v.len() as i32).to_be_bytes());
                b.extend_from_slice(v);
            }
        }
    }
    b
}

fn db_message(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_else(|| e.to_string())
}

async fn count(d: &tokio_postgres::Client, sql: &str) -> i64 {
    d.query_one(sql, &[]).await.unwrap().get(0)
}

/// Django (server-side binding) and SQLAlchemy through tokio-postgres
/// (binary arrays) and raw frames (text arrays, as psycopg sends them);
/// rows found by blind-index equality and read back decrypted; the
/// ORMs' upserts on the unique blind index.
#[tokio::test]
async fn orm_bulk_inserts_with_parameters_then_upserts() {
    let fx = Calmony::builder().extra_sql(UNIQUE_BIDX).start();
    let app = fx.app("calmony_app").await;
    let s1 = "bulk.one@example.com";
    let s2 = r#"bulk"two\,{x}'@example.com"#;
    let n1 = "Bulk Name One";
    let n2 = r#"Bulk "Name", {Two}\"#;
    // Django 5.2 bulk_create, server-side binding (recorded).
    let django = r#"INSERT INTO "users" ("email", "name", "plan") SELECT * FROM UNNEST(($1)::varchar[], ($2)::varchar[], ($3)::varchar[]) RETURNING "users"."id""#;
    let emails: Vec<Option<&str>> = vec![Some(s1), None, Some(s2)];
    let names: Vec<Option<&str>> = vec![Some(n1), Some("Bulk Null Email"), Some(n2)];
    let plans: Vec<Option<&str>> = vec![Some("free"), Some("pro"), Some("free")];
    let ids = app
        .query(django, &[&emails, &names, &plans])
        .await
        .unwrap_or_else(|e| panic!("{}", err_text(&e)));
    assert_eq!(ids.len(), 3);
    // Found by blind-index equality (normalised), read back in plaintext.
    for (probe, want) in [("  BULK.one@Example.com ", n1), (s2, n2)] {
        let r = app
            .query("SELECT name FROM users WHERE email = $1", &[&probe])
            .await
            .unwrap();
        assert_eq!(r.len(), 1, "{probe}");
        assert_eq!(r[0].get::<_, String>(0), want);
    }
    let r = app
        .query("SELECT email, name FROM users ORDER BY id", &[])
        .await
        .unwrap();
    let got: Vec<(Option<String>, String)> = r.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        got,
        vec![
            (Some(s1.into()), n1.into()),
            (None, "Bulk Null Email".into()),
            (Some(s2.into()), n2.into()),
        ]
    );
    // What PostgreSQL holds: envelopes, a blind index exactly where there
    // is a value, printable envelopes in the text-stored column.
    let d = fx.direct().await;
    assert_eq!(
        count(&d, "SELECT count(*) FROM users WHERE (email IS NULL) <> (email_bidx IS NULL) OR name NOT LIKE 'pgv1:%' OR length(email_bidx) <> 32").await,
        0
    );
    // The element-wise blind index is the one a plain INSERT computes: the
    // unique index rejects the same value inserted with VALUES.
    let e = app
        .execute(
            "INSERT INTO users (email, name) VALUES ($1, 'Dup')",
            &[&"Bulk.One@example.com"],
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e), "23505", "{}", err_text(&e));

    // psycopg's own server-side form: text arrays, declared types.
    let s3 = "bulk.three@example.com";
    let s4 = "bulk four, with \"quotes\"@example.com";
    let mut r = Raw::login(fx.pv.addr(), "calmony_app").await;
    r.send(&[
        parse_typed(django, &[0, 0, 0]),
        bind_formats(&[
            (
                0,
                Some(
                    format!(r#"{{"{s3}","bulk four, with \"quotes\"@example.com",NULL}}"#)
                        .into_bytes(),
                ),
            ),
            (0, Some(br#"{Bulk Three,"Bulk \\Four",Bulk Five}"#.to_vec())),
            (0, Some(b"{free,free,pro}".to_vec())),
        ]),
        execute(""),
        sync(),
    ])
    .await;
    let msgs = r.until_ready().await;
    assert!(errors(&msgs).is_empty(), "{:?}", errors(&msgs));
    assert_eq!(rows(&msgs).len(), 3);
    for (probe, want) in [(s3, "Bulk Three"), (s4, "Bulk \\Four")] {
        let r = app
            .query("SELECT name FROM users WHERE email = $1", &[&probe])
            .await
            .unwrap();
        assert_eq!(r.len(), 1, "{probe}");
        assert_eq!(r[0].get::<_, String>(0), want);
    }

    // SQLAlchemy 2.0 insertmanyvalues with sort_by_parameter_order (recorded).
    let s5 = "bulk.five@example.com";
    let s6 = "bulk.six@example.com";
    let sa = "INSERT INTO users (email, name, plan) SELECT p0::VARCHAR, p1::VARCHAR, p2::VARCHAR FROM (VALUES ($1::VARCHAR, $2::VARCHAR, $3::VARCHAR, 0), ($4::VARCHAR, $5::VARCHAR, $6::VARCHAR, 1)) AS imp_sen(p0, p1, p2, sen_counter) ORDER BY sen_counter RETURNING users.id, users.id AS id__1";
    let r = app
        .query(
            sa,
            &[&s5, &"Bulk Six Name", &"free", &s6, &"Bulk Seven", &"pro"],
        )
        .await
        .unwrap_or_else(|e| panic!("{}", err_text(&e)));
    let ids: Vec<i64> = r.iter().map(|r| r.get(0)).collect();
    assert!(ids[0] < ids[1], "RETURNING keeps the parameter order");
    let r = app
        .query("SELECT name FROM users WHERE email = $1", &[&s6])
        .await
        .unwrap();
    assert_eq!(r[0].get::<_, String>(0), "Bulk Seven");

    // Django bulk_create(update_conflicts=True, unique_fields=["email"],
    // update_fields=["name"]) (recorded): the conflict is on the blind
    // index, so another spelling of the same address updates the row.
    let upsert = r#"INSERT INTO "users" ("email", "name", "plan") SELECT * FROM UNNEST(($1)::varchar[], ($2)::varchar[], ($3)::varchar[]) ON CONFLICT("email") DO UPDATE SET "name" = EXCLUDED."name" RETURNING "users"."id""#;
    let e2: Vec<Option<&str>> = vec![Some("BULK.ONE@example.com"), Some("bulk.eight@example.com")];
    let n2v: Vec<Option<&str>> = vec![Some("Bulk Renamed"), Some("Bulk Eight")];
    let p2v: Vec<Option<&str>> = vec![Some("free"), Some("free")];
    app.query(upsert, &[&e2, &n2v, &p2v])
        .await
        .unwrap_or_else(|e| panic!("{}", err_text(&e)));
    let r = app
        .query("SELECT email, name FROM users WHERE email = $1", &[&s1])
        .await
        .unwrap();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].get::<_, String>(0), s1, "the email was not updated");
    assert_eq!(r[0].get::<_, String>(1), "Bulk Renamed");
    // SQLAlchemy on_conflict_do_update(index_elements=[email],
    // set_={email: excluded.email, name: excluded.name}) (recorded): the
    // email changes spelling and its blind index follows.
    let sa_upsert = "INSERT INTO users (email, name, plan) SELECT p0::VARCHAR, p1::VARCHAR, p2::VARCHAR FROM (VALUES ($1::VARCHAR, $2::VARCHAR, $3::VARCHAR, 0)) AS imp_sen(p0, p1, p2, sen_counter) ORDER BY sen_counter ON CONFLICT (email) DO UPDATE SET email = excluded.email, name = excluded.name RETURNING users.id, users.id AS id__1";
    app.query(
        sa_upsert,
        &[&"Bulk.Five@Example.com", &"Bulk Five Again", &"pro"],
    )
    .await
    .unwrap_or_else(|e| panic!("{}", err_text(&e)));
    let r = app
        .query("SELECT email, name FROM users WHERE email = $1", &[&s5])
        .await
        .unwrap();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].get::<_, String>(0), "Bulk.Five@Example.com");
    assert_eq!(r[0].get::<_, String>(1), "Bulk Five Again");
    // Django ignore_conflicts.
    let ignore = r#"INSERT INTO "users" ("email", "name", "plan") SELECT * FROM UNNEST(($1)::varchar[], ($2)::varchar[], ($3)::varchar[]) ON CONFLICT DO NOTHING"#;
    let n = app
        .execute(
            ignore,
            &[
                &vec![Some(s3)],
                &vec![Some("Bulk Ignored")],
                &vec![Some("free")],
            ],
        )
        .await
        .unwrap();
    assert_eq!(n, 0);
    assert_eq!(count(&d, "SELECT count(*) FROM users").await, 9);
    fx.assert_no_plaintext(&[
        s1,
        s2,
        s3,
        s4,
        s5,
        s6,
        n1,
        n2,
        "Bulk Null Email",
        "Bulk Three",
        "Bulk Five",
        "Bulk Six Name",
        "Bulk Seven",
        "Bulk Renamed",
        "Bulk Eight",
        "bulk.eight@",
        "Bulk Ignored",
    ])
    .await;
}

/// Django with client-side binding (psycopg 3's `'{…}'` literals with
/// E-strings, psycopg's own `::int2[]` casts) and psycopg2's `ARRAY[…]`
/// form, in a simple Query; an integer column and a searchable column of
/// another table.
#[tokio::test]
async fn orm_bulk_inserts_with_literals() {
    let fx = Calmony::start();
    let app = fx.app("calmony_app").await;
    // Recorded (psycopg 3 ClientCursor): quotes, backslashes, braces,
    // commas and NULL elements inside the literals.
    let sql = r#"INSERT INTO "users" ("email", "name", "plan") SELECT * FROM UNNEST(( E'{"lit''one\\\\x@example.com","lit{two},@example.com",NULL}')::varchar[], ('{"Lit, One","Lit \"Two\"","Lit Three"}')::varchar[], ('{free,pro,free}')::varchar[]) RETURNING "users"."id""#;
    let msgs = app
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{}", err_text(&e)));
    assert_eq!(simple_rows(&msgs).len(), 3);
    // psycopg2 (ARRAY[…]).
    let sql2 = "INSERT INTO \"users\" (\"email\", \"name\", \"plan\") SELECT * FROM UNNEST((ARRAY['lit.four@example.com', 'lit.five@example.com', 'lit.six@example.com', 'lit.seven@example.com', 'lit.eight@example.com', 'lit.nine@example.com'])::varchar[], (ARRAY['Lit Four', 'Lit Five', 'Lit Six', 'Lit Seven', 'Lit Eight', 'Lit Nine'])::varchar[], (ARRAY['free', 'free', 'free', 'free', 'free', 'free'])::varchar[]) RETURNING \"users\".\"id\"";
    let msgs = app
        .simple_query(sql2)
        .await
        .unwrap_or_else(|e| panic!("{}", err_text(&e)));
    assert_eq!(simple_rows(&msgs).len(), 6);
    for (probe, want) in [
        ("lit'one\\x@example.com", "Lit, One"),
        ("LIT{two},@example.com", "Lit \"Two\""),
        ("lit.nine@example.com", "Lit Nine"),
    ] {
        let r = app
            .query("SELECT name FROM users WHERE email = $1", &[&probe])
            .await
            .unwrap();
        assert_eq!(r.len(), 1, "{probe}");
        assert_eq!(r[0].get::<_, String>(0), want);
    }
    let r = app
        .simple_query("SELECT name FROM users WHERE email IS NULL")
        .await
        .unwrap();
    assert_eq!(simple_rows(&r), vec![vec![Some("Lit Three".to_string())]]);
    // An integer column, through psycopg's int2 cast and Django's
    // integer[]; a searchable column; SQLAlchemy's VALUES with literals.
    let clin = fx.app("clinician").await;
    let msgs = clin
        .simple_query(
            "INSERT INTO phi.member_profile (legal_name, ssn, risk_score) SELECT * FROM UNNEST(('{Lit Patient A,Lit Patient B}')::varchar[], ('{123-45-6789,987-65-4321}')::varchar[], ('{17,NULL}'::int2[])::integer[]) RETURNING id",
        )
        .await
        .unwrap_or_else(|e| panic!("{}", err_text(&e)));
    assert_eq!(simple_rows(&msgs).len(), 2);
    clin.simple_query(
        "INSERT INTO phi.member_profile (legal_name, ssn, risk_score) SELECT p0::VARCHAR, p1::VARCHAR, p2::INTEGER FROM (VALUES ('Lit Patient C'::VARCHAR, '555-12-3456'::VARCHAR, 42::INTEGER, 0)) AS imp_sen(p0, p1, p2, sen_counter) ORDER BY sen_counter",
    )
    .await
    .unwrap_or_else(|e| panic!("{}", err_text(&e)));
    let r = clin
        .query(
            "SELECT legal_name, risk_score FROM phi.member_profile WHERE ssn = $1",
            &[&"123456789"],
        )
        .await
        .unwrap();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].get::<_, String>(0), "Lit Patient A");
    assert_eq!(r[0].get::<_, i32>(1), 17);
    let r = clin
        .query(
            "SELECT risk_score FROM phi.member_profile WHERE ssn = '555123456'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(r[0].get::<_, i32>(0), 42);
    // psycopg's int2 for a value out of its range fails as PostgreSQL
    // would, without showing the value.
    let e = clin
        .simple_query("INSERT INTO phi.member_profile (risk_score) SELECT * FROM UNNEST(('{3,40123}'::int2[])::integer[])")
        .await
        .unwrap_err();
    assert_eq!(code(&e), "22P02", "{}", err_text(&e));
    assert!(!db_message(&e).contains("40123"));
    fx.assert_no_plaintext(&[
        "lit'one",
        "lit{two}",
        "Lit, One",
        "Lit \"Two\"",
        "Lit Three",
        "lit.four@",
        "lit.nine@",
        "Lit Four",
        "Lit Nine",
        "Lit Patient",
        "123-45-6789",
        "987-65-4321",
        "555-12-3456",
    ])
    .await;
}

/// Tenant tables: each element is encrypted for the tenant at its
/// position (array parameter, array literal), and a value without a
/// tenant is refused before anything is written.
#[tokio::test]
async fn bulk_inserts_into_tenant_tables() {
    let fx = Calmony::start();
    let app = fx.app("calmony_app").await;
    let sql = r#"INSERT INTO "pay_customers" ("org_id", "email", "name") SELECT * FROM UNNEST(($1)::bigint[], ($2)::varchar[], ($3)::varchar[]) RETURNING "pay_customers"."id""#;
    let orgs: Vec<Option<i64>> = vec![Some(7), Some(8), Some(7)];
    let emails: Vec<Option<&str>> = vec![
        Some("tenant.a@example.com"),
        Some("tenant.b@example.com"),
        None,
    ];
    let names: Vec<Option<&str>> =
        vec![Some("Cust Alpha"), Some("Cust Bravo"), Some("Cust Charlie")];
    app.query(sql, &[&orgs, &emails, &names])
        .await
        .unwrap_or_else(|e| panic!("{}", err_text(&e)));
    // Literals (Django client-side: psycopg's int2 cast, Django's bigint).
    app.simple_query(
        r#"INSERT INTO "pay_customers" ("org_id", "email", "name") SELECT * FROM UNNEST(('{9,8}'::int2[])::bigint[], ('{tenant.d@example.com,tenant.e@example.com}')::varchar[], ('{Cust Delta,Cust Echo}')::varchar[]) RETURNING "pay_customers"."id""#,
    )
    .await
    .unwrap_or_else(|e| panic!("{}", err_text(&e)));
    // With the tenant column in the result pgveil checks each envelope's
    // tenant against its row's: every row reads back.
    let r = app
        .query(
            "SELECT org_id, email, name FROM pay_customers ORDER BY id",
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("{}", err_text(&e)));
    let got: Vec<(i64, Option<String>, String)> =
        r.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
    assert_eq!(
        got,
        vec![
            (7, Some("tenant.a@example.com".into()), "Cust Alpha".into()),
            (8, Some("tenant.b@example.com".into()), "Cust Bravo".into()),
            (7, None, "Cust Charlie".into()),
            (9, Some("tenant.d@example.com".into()), "Cust Delta".into()),
            (8, Some("tenant.e@example.com".into()), "Cust Echo".into()),
        ]
    );
    // An envelope moved to another tenant's row no longer decrypts there.
    let d = fx.direct().await;
    d.execute(
        "UPDATE pay_customers SET name = (SELECT name FROM pay_customers WHERE org_id = 9) WHERE org_id = 8",
        &[],
    )
    .await
    .unwrap();
    let e = app
        .query(
            "SELECT org_id, name FROM pay_customers WHERE org_id = 8",
            &[],
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e), "39000", "{}", err_text(&e));
    let before = count(&d, "SELECT count(*) FROM pay_customers").await;
    // A value whose tenant is NULL, or missing (a shorter tenant array).
    for orgs in [vec![Some(7i64), None], vec![Some(7i64)]] {
        let emails: Vec<Option<&str>> =
            vec![Some("tenant.x@example.com"), Some("tenant.y@example.com")];
        let names: Vec<Option<&str>> = vec![Some("Cust Xray"), Some("Cust Yankee")];
        let e = app.query(sql, &[&orgs, &emails, &names]).await.unwrap_err();
        assert_eq!(code(&e), "42501", "{}", err_text(&e));
        assert!(!db_message(&e).contains("tenant.y"));
    }
    assert_eq!(
        count(&d, "SELECT count(*) FROM pay_customers").await,
        before
    );
    fx.assert_no_plaintext(&[
        "tenant.a@",
        "tenant.b@",
        "tenant.d@",
        "tenant.e@",
        "tenant.x@",
        "tenant.y@",
        "Cust Alpha",
        "Cust Bravo",
        "Cust Charlie",
        "Cust Delta",
        "Cust Echo",
        "Cust Xray",
        "Cust Yankee",
    ])
    .await;
}

/// What cannot be proven to be the application's values is refused with
/// the table, the column and the alternative, never a value; nothing
/// reaches the table.
#[tokio::test]
async fn refused_bulk_shapes_write_nothing() {
    let fx = Calmony::start();
    let app = fx.app("calmony_app").await;
    let d = fx.direct().await;
    d.batch_execute(
        "CREATE TABLE public.staging (e text); INSERT INTO public.staging VALUES ('refused.staged@example.com');",
    )
    .await
    .unwrap();
    for sql in [
        // Computed by the database.
        "INSERT INTO users (email, plan) SELECT lower(e), 'free' FROM UNNEST('{refused.lower@example.com}'::text[]) u(e)",
        "INSERT INTO users (email) SELECT e || '' FROM UNNEST('{refused.concat@example.com}'::text[]) u(e)",
        "INSERT INTO users (email) SELECT * FROM UNNEST(string_to_array('refused.split@example.com', ','))",
        "INSERT INTO users (email) SELECT * FROM (VALUES (upper('refused.values@example.com'))) v(e)",
        "INSERT INTO users (email) SELECT * FROM (VALUES ((SELECT 'refused.subquery@example.com'))) v(e)",
        // Another table, a join, a filter.
        "INSERT INTO users (email) SELECT e FROM staging",
        "INSERT INTO users (email) SELECT * FROM UNNEST(ARRAY(SELECT e FROM staging))",
        "INSERT INTO users (email) SELECT u.e FROM UNNEST('{refused.join@example.com}'::text[]) u(e) JOIN staging s ON true",
        "INSERT INTO users (email) SELECT e FROM UNNEST('{refused.where@example.com}'::text[]) u(e) WHERE e <> ''",
        // Casts that change values or types.
        "INSERT INTO users (email) SELECT * FROM UNNEST('{refused.varchar@example.com}'::varchar(5)[])",
        "INSERT INTO users (email) SELECT * FROM UNNEST('{refused.char@example.com}'::char(40)[])",
        // Arrays pgveil does not transform.
        "INSERT INTO users (email) SELECT * FROM UNNEST('{{refused.multi@example.com}}'::text[])",
        "INSERT INTO users (email) SELECT * FROM UNNEST(ARRAY[ARRAY['refused.nested@example.com']]::text[])",
        // One value into two columns.
        "INSERT INTO users (email, plan) SELECT e, e FROM UNNEST('{refused.twice@example.com}'::text[]) u(e)",
    ] {
        let e = app.simple_query(sql).await.unwrap_err();
        assert_eq!(code(&e), "0A000", "{sql}: {}", err_text(&e));
        let m = db_message(&e);
        assert!(m.contains("public.users.email"), "{sql}: {m}");
        assert!(
            !m.contains("refused."),
            "{sql}: the message shows a value: {m}"
        );
    }
    // A malformed literal: PostgreSQL's SQLSTATE, no value.
    let e = app
        .simple_query("INSERT INTO users (email) SELECT * FROM UNNEST('{refused.malformed@example.com,}'::text[])")
        .await
        .unwrap_err();
    assert_eq!(code(&e), "22P02", "{}", err_text(&e));
    assert!(!db_message(&e).contains("refused."));
    // A role that may only copy ciphertext.
    let dba = fx.app("dba").await;
    let e = dba
        .simple_query(
            "INSERT INTO users (email) SELECT * FROM UNNEST('{refused.dba@example.com}'::text[])",
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e), "0A000", "{}", err_text(&e));
    let e = dba
        .simple_query("INSERT INTO users (email) VALUES ('pgv1:x') ON CONFLICT (email) DO NOTHING")
        .await
        .unwrap_err();
    assert_eq!(code(&e), "0A000", "{}", err_text(&e));
    // A parameter whose value is an array of the wrong type, bound.
    let e = app
        .query(
            "INSERT INTO users (email) SELECT * FROM UNNEST($1::int4[])",
            &[&vec![1i32]],
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e), "0A000", "{}", err_text(&e));
    assert_eq!(count(&d, "SELECT count(*) FROM users").await, 0);
    fx.assert_no_plaintext(&[
        "refused.lower",
        "refused.concat",
        "refused.split",
        "refused.values",
        "refused.subquery",
        "refused.join",
        "refused.where",
        "refused.varchar",
        "refused.char",
        "refused.multi",
        "refused.nested",
        "refused.twice",
        "refused.malformed",
        "refused.dba",
    ])
    .await;
}

/// Binary arrays whose header lies (element count, dimensions, element
/// type, flags, lengths) and malformed text arrays: refused at Bind, the
/// session goes on, nothing is written.
#[tokio::test]
async fn forged_arrays_are_refused_at_bind() {
    let fx = Calmony::start();
    let sql = "INSERT INTO users (email, plan) SELECT * FROM UNNEST($1::text[], $2::text[])";
    let v: &[u8] = b"forged.secret@example.com";
    let plans = (0i16, Some(b"{free,free}".to_vec()));
    let cases: Vec<(&str, Param, &str)> = vec![
        (
            "more elements claimed than sent",
            (
                1,
                Some(binary_array(1, 0, 25, &[(3, 1)], &[Some(v), Some(v)])),
            ),
            "22P02",
        ),
        (
            "fewer elements claimed than sent",
            (
                1,
                Some(binary_array(1, 0, 25, &[(1, 1)], &[Some(v), Some(v)])),
            ),
            "22P02",
        ),
        (
            "a huge element count",
            (
                1,
                Some(binary_array(1, 0, 25, &[(i32::MAX, 1)], &[Some(v)])),
            ),
            "22P02",
        ),
        (
            "two dimensions",
            (
                1,
                Some(binary_array(2, 0, 25, &[(1, 1), (1, 1)], &[Some(v)])),
            ),
            "0A000",
        ),
        (
            "another element type",
            (1, Some(binary_array(1, 0, 17, &[(1, 1)], &[Some(v)]))),
            "42804",
        ),
        (
            "bad flags",
            (1, Some(binary_array(1, 7, 25, &[(1, 1)], &[Some(v)]))),
            "22P02",
        ),
        (
            "a length past the end",
            (
                1,
                Some({
                    let mut b = binary_array(1, 0, 25, &[(1, 1)], &[]);
                    b.extend_from_slice(&1000i32.to_be_bytes());
                    b.extend_from_slice(v);
                    b
                }),
            ),
            "22P02",
        ),
        (
            "invalid UTF-8 in an element",
            (
                1,
                Some(binary_array(
                    1,
                    0,
                    25,
                    &[(1, 1)],
                    &[Some(b"forged.secret\xff")],
                )),
            ),
            "22P02",
        ),
        (
            "a text array with two dimensions",
            (0, Some(b"{{forged.secret@example.com}}".to_vec())),
            "0A000",
        ),
        (
            "a malformed text array",
            (0, Some(b"{forged.secret@example.com,,x}".to_vec())),
            "22P02",
        ),
    ];
    let mut r = Raw::login(fx.pv.addr(), "calmony_app").await;
    for (what, p, sqlstate) in cases {
        r.send(&[
            parse_typed(sql, &[]),
            bind_formats(&[p, plans.clone()]),
            execute(""),
            sync(),
        ])
        .await;
        let msgs = r.until_ready().await;
        let errs = errors(&msgs);
        assert_eq!(errs.len(), 1, "{what}: {errs:?} ({})", raw::tags(&msgs));
        assert_eq!(errs[0].1, sqlstate, "{what}: {errs:?}");
        assert!(
            !errs[0].2.contains("forged"),
            "{what}: the error shows a value"
        );
    }
    // The session still works, with an honest array.
    r.send(&[
        parse_typed(sql, &[]),
        bind_formats(&[
            (
                1,
                Some(binary_array(
                    1,
                    1,
                    25,
                    &[(2, 1)],
                    &[Some(b"forged.honest@example.com"), None],
                )),
            ),
            plans,
        ]),
        execute(""),
        sync(),
    ])
    .await;
    let msgs = r.until_ready().await;
    assert!(errors(&msgs).is_empty(), "{:?}", errors(&msgs));
    let d = fx.direct().await;
    assert_eq!(count(&d, "SELECT count(*) FROM users").await, 2);
    assert_eq!(count(&d, "SELECT count(email_bidx) FROM users").await, 1);
    fx.assert_no_plaintext(&["forged.secret", "forged.honest"])
        .await;
}

/// During a blind-index key rotation every row gets both indexes, equal to
/// what a plain INSERT writes for the same value.
#[tokio::test]
async fn bulk_inserts_dual_write_during_rotation() {
    let policy = calmony::POLICY.replace(
        "blind_index: { column: email_bidx, normalize: [trim, lowercase] }\n        access: { billing_app: read, signup: write }",
        "blind_index: { column: email_bidx, normalize: [trim, lowercase], next: email_bidx_next }\n        access: { billing_app: read, signup: write }",
    );
    assert_ne!(policy, calmony::POLICY);
    let fx = Calmony::builder()
        .policy(&policy)
        .extra_sql("ALTER TABLE users ADD COLUMN email_bidx_next bytea;")
        .start();
    let app = fx.app("calmony_app").await;
    app.execute(
        "INSERT INTO users (email, plan) SELECT * FROM UNNEST($1::text[], $2::text[])",
        &[
            &vec![Some("rot.one@example.com"), None],
            &vec![Some("ref"), Some("ref")],
        ],
    )
    .await
    .unwrap_or_else(|e| panic!("{}", err_text(&e)));
    app.simple_query("INSERT INTO users (email, plan) SELECT * FROM UNNEST('{rot.two@example.com}'::text[], '{ref}'::text[])")
        .await
        .unwrap_or_else(|e| panic!("{}", err_text(&e)));
    app.simple_query("INSERT INTO users (email, plan) SELECT * FROM (VALUES ('rot.three@example.com', 'ref')) v(e, p)")
        .await
        .unwrap_or_else(|e| panic!("{}", err_text(&e)));
    for e in [
        "rot.one@example.com",
        "rot.two@example.com",
        "rot.three@example.com",
    ] {
        app.execute(
            "INSERT INTO users (email, plan) VALUES ($1, 'plain')",
            &[&e],
        )
        .await
        .unwrap();
    }
    let d = fx.direct().await;
    assert_eq!(
        count(&d, "SELECT count(*) FROM users WHERE plan = 'ref' AND (email IS NULL) <> (email_bidx_next IS NULL)").await,
        0
    );
    assert_eq!(
        count(&d, "SELECT count(*) FROM users r JOIN users p ON p.plan = 'plain' AND r.plan = 'ref' AND p.email_bidx = r.email_bidx AND p.email_bidx_next = r.email_bidx_next").await,
        3
    );
    fx.assert_no_plaintext(&["rot.one@", "rot.two@", "rot.three@"])
        .await;
}
