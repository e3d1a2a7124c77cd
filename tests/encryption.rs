//! Transparent encryption through pgveil with the reference policy
//! (`policies/calmony.yaml`) against a real PostgreSQL: every statement shape
//! checks the application's view through pgveil AND that PostgreSQL holds no
//! plaintext (table contents and `pg_dump` are grepped for the sentinels).

mod common;

use std::process::Command;

use common::*;
use tokio_postgres::types::Type;

type Fx = Calmony;

fn setup() -> Fx {
    Calmony::start()
}

/// The fixture with extra top-level YAML appended to the config.
fn setup_with(extra_yaml: &str) -> Fx {
    Calmony::builder().extra_yaml(extra_yaml).start()
}

fn message(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_else(|| e.to_string())
}

#[tokio::test]
async fn insert_params_and_literals_then_read_back_plaintext() {
    let fx = setup();
    let app = fx.app("calmony_app").await;
    // Extended protocol, parameters (tokio-postgres: Describe first, binary results).
    let n = app
        .execute(
            "INSERT INTO users (email, name) VALUES ($1, $2)",
            &[&"zed.param@example.com", &"Zed Paramson"],
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
    // Simple protocol, literals, several rows, DEFAULT, NULL, RETURNING.
    let msgs = app
        .simple_query(
            "INSERT INTO users (email, name, plan) VALUES \
             ('lit.one@example.com', 'Lit One', DEFAULT), (NULL, 'Lit Two', 'pro') RETURNING email, name",
        )
        .await
        .unwrap();
    assert_eq!(
        simple_rows(&msgs),
        vec![
            vec![Some("lit.one@example.com".into()), Some("Lit One".into())],
            vec![None, Some("Lit Two".into())]
        ]
    );
    // Read back, both protocols.
    let rows = app
        .query("SELECT email, name FROM users ORDER BY id", &[])
        .await
        .unwrap();
    let got: Vec<(Option<String>, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        got,
        vec![
            (Some("zed.param@example.com".into()), "Zed Paramson".into()),
            (Some("lit.one@example.com".into()), "Lit One".into()),
            (None, "Lit Two".into()),
        ]
    );
    assert_eq!(rows[0].columns()[0].type_(), &Type::TEXT);
    let msgs = app
        .simple_query("SELECT * FROM users u ORDER BY u.id")
        .await
        .unwrap();
    let r = simple_rows(&msgs);
    assert_eq!(r[0][1].as_deref(), Some("zed.param@example.com"));
    assert_eq!(r[0][3].as_deref(), Some("Zed Paramson"));
    // NULL stays NULL, and so does its blind index.
    let direct = fx.direct().await;
    let row = direct
        .query_one("SELECT email IS NULL, email_bidx IS NULL, name LIKE 'pgv1:%' FROM users WHERE plan = 'pro'", &[])
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0) && row.get::<_, bool>(1) && row.get::<_, bool>(2));
    fx.assert_no_plaintext(&[
        "zed.param@example.com",
        "Zed Paramson",
        "lit.one@example.com",
        "Lit One",
        "Lit Two",
    ])
    .await;
}

#[tokio::test]
async fn equality_lookups_use_the_blind_index_with_normalisers() {
    let fx = setup();
    let app = fx.app("calmony_app").await;
    app.execute(
        "INSERT INTO users (email, name) VALUES ($1, 'Alice Mixedcase')",
        &[&"Alice@Example.com "],
    )
    .await
    .unwrap();
    app.batch_execute("INSERT INTO users (email, name) VALUES ('bob@example.com', 'Bob'), ('carol@example.com', 'Carol')")
        .await
        .unwrap();
    // Parameter.
    let r = app
        .query(
            "SELECT name FROM users WHERE email = $1",
            &[&"alice@example.com"],
        )
        .await
        .unwrap();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].get::<_, String>(0), "Alice Mixedcase");
    // Literal, qualified and aliased.
    let m = app
        .simple_query("SELECT u.name FROM users u WHERE u.email = 'ALICE@example.com'")
        .await
        .unwrap();
    assert_eq!(simple_rows(&m), vec![vec![Some("Alice Mixedcase".into())]]);
    // IN and ANY.
    let m = app
        .simple_query("SELECT name FROM users WHERE email IN ('bob@example.com', 'carol@example.com') ORDER BY id")
        .await
        .unwrap();
    assert_eq!(simple_rows(&m).len(), 2);
    let list: Vec<&str> = vec!["bob@example.com", "nobody@example.com"];
    let r = app
        .query("SELECT name FROM users WHERE email = ANY($1)", &[&list])
        .await
        .unwrap();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].get::<_, String>(0), "Bob");
    // <> and NOT IN, IS NULL.
    let r = app
        .query(
            "SELECT count(*) FROM users WHERE email <> $1",
            &[&"bob@example.com"],
        )
        .await
        .unwrap();
    assert_eq!(r[0].get::<_, i64>(0), 2);
    let m = app
        .simple_query("SELECT count(*) FROM users WHERE email NOT IN ('bob@example.com')")
        .await
        .unwrap();
    assert_eq!(simple_rows(&m), vec![vec![Some("2".into())]]);
    let r = app
        .query("SELECT count(*) FROM users WHERE email IS NULL", &[])
        .await
        .unwrap();
    assert_eq!(r[0].get::<_, i64>(0), 0);
    // The same email indexes differently in another column.
    let org: i64 = 7;
    app.execute(
        "INSERT INTO pay_customers (org_id, email, name) VALUES ($1, $2, 'Alice')",
        &[&org, &"alice@example.com"],
    )
    .await
    .unwrap();
    let direct = fx.direct().await;
    let a: Vec<u8> = direct
        .query_one(
            "SELECT email_bidx FROM users WHERE name IS NOT NULL ORDER BY id LIMIT 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let b: Vec<u8> = direct
        .query_one("SELECT email_bidx FROM pay_customers", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(a.len(), 32);
    assert_ne!(a, b, "blind indexes must differ between columns");
    fx.assert_no_plaintext(&["alice@example.com", "Alice Mixedcase", "bob@example.com"])
        .await;
}

#[tokio::test]
async fn update_upsert_and_delete() {
    let fx = setup();
    let app = fx.app("calmony_app").await;
    app.execute(
        "INSERT INTO users (email, name) VALUES ($1, $2)",
        &[&"dora@example.com", &"Dora"],
    )
    .await
    .unwrap();
    let n = app
        .execute(
            "UPDATE users SET name = $1 WHERE email = $2",
            &[&"Dora Updated", &"dora@example.com"],
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
    // Scanned while the row holds these values (a lookup by the email just
    // found it), not after they are overwritten or deleted.
    fx.assert_no_plaintext(&["dora@example.com", "Dora Updated"])
        .await;
    app.batch_execute(
        "UPDATE users SET email = 'dora.new@example.com' WHERE email = 'dora@example.com'",
    )
    .await
    .unwrap();
    let r = app
        .query(
            "SELECT name FROM users WHERE email = $1",
            &[&"dora.new@example.com"],
        )
        .await
        .unwrap();
    assert_eq!(r[0].get::<_, String>(0), "Dora Updated");
    fx.assert_no_plaintext(&["dora.new@example.com"]).await;
    // ON CONFLICT … DO UPDATE SET col = EXCLUDED.col
    let id: i64 = r.len() as i64;
    app.execute(
        "INSERT INTO users (id, email, name) VALUES ($1, $2, $3) \
         ON CONFLICT (id) DO UPDATE SET email = EXCLUDED.email, name = EXCLUDED.name",
        &[&id, &"dora.upsert@example.com", &"Dora Upsert"],
    )
    .await
    .unwrap();
    let r = app
        .query(
            "SELECT name FROM users WHERE email = $1",
            &[&"dora.upsert@example.com"],
        )
        .await
        .unwrap();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].get::<_, String>(0), "Dora Upsert");
    fx.assert_no_plaintext(&["dora.upsert@example.com", "Dora Upsert"])
        .await;
    // SET to NULL.
    app.execute(
        "UPDATE users SET name = NULL WHERE email = $1",
        &[&"dora.upsert@example.com"],
    )
    .await
    .unwrap();
    let n = app
        .execute(
            "DELETE FROM users WHERE email = $1",
            &[&"dora.upsert@example.com"],
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
    let r = app.query("SELECT count(*) FROM users", &[]).await.unwrap();
    assert_eq!(r[0].get::<_, i64>(0), 0);
}

#[tokio::test]
async fn non_text_types_round_trip_in_binary_and_text() {
    let fx = setup();
    let doc = fx.app("clinician").await;
    // Binary parameters of the policy's types (tokio-postgres sends binary).
    let stmt = doc
        .prepare("INSERT INTO phi.member_profile (legal_name, date_of_birth, ssn, risk_score) VALUES ($1, $2, $3, $4)")
        .await
        .unwrap();
    assert_eq!(stmt.params()[1], Type::DATE);
    assert_eq!(stmt.params()[3], Type::INT4);
    let date = chrono_free_date(1984, 2, 29);
    doc.execute(&stmt, &[&"Quentin Quux", &date, &"123-45-6789", &87i32])
        .await
        .unwrap();
    // Text literals of the same values.
    doc.batch_execute(
        "INSERT INTO phi.member_profile (legal_name, date_of_birth, ssn, risk_score) \
         VALUES ('Rita Roe', '1990-01-15', '987654321', 12)",
    )
    .await
    .unwrap();
    // Binary results with plaintext types.
    let r = doc
        .query(
            "SELECT legal_name, date_of_birth, risk_score FROM phi.member_profile WHERE ssn = $1",
            &[&"123456789"],
        )
        .await
        .unwrap();
    assert_eq!(r.len(), 1, "digits_only normaliser finds 123-45-6789");
    assert_eq!(r[0].get::<_, String>(0), "Quentin Quux");
    assert_eq!(r[0].columns()[1].type_(), &Type::DATE);
    assert_eq!(r[0].get::<_, i32>(2), 87);
    // Text results.
    let m = doc
        .simple_query(
            "SELECT date_of_birth, risk_score FROM phi.member_profile WHERE ssn = '987-65-4321'",
        )
        .await
        .unwrap();
    assert_eq!(
        simple_rows(&m),
        vec![vec![Some("1990-01-15".into()), Some("12".into())]]
    );
    // A cast of a parameter or a literal for a protected column is read as
    // that value: encrypted as the policy's type, and it round-trips. (This
    // test used to claim such casts are refused; its `expect_err` was met by
    // the client failing to serialize the parameter, never by pgveil.)
    let cast = doc
        .prepare_typed(
            "INSERT INTO phi.member_profile (legal_name, date_of_birth, ssn, risk_score, note) \
             VALUES ($1, $2::text::date, $3, $4, 'n')",
            &[Type::TEXT, Type::TEXT, Type::TEXT, Type::INT4],
        )
        .await
        .unwrap();
    doc.execute(
        &cast,
        &[&"Quentin Cast", &"1984-02-28", &"555-44-3333", &87i32],
    )
    .await
    .unwrap();
    doc.batch_execute(
        "INSERT INTO phi.member_profile (legal_name, date_of_birth, ssn, risk_score, note) \
         VALUES ('Quentin Literal', '1984-03-01'::text::date, '555-44-2222', 88, 'n')",
    )
    .await
    .unwrap();
    for (ssn, want) in [
        ("555443333", ["Quentin Cast", "1984-02-28", "87"]),
        ("555442222", ["Quentin Literal", "1984-03-01", "88"]),
    ] {
        let m = doc
            .simple_query(&format!(
                "SELECT legal_name, date_of_birth, risk_score FROM phi.member_profile WHERE ssn = '{ssn}'"
            ))
            .await
            .unwrap();
        assert_eq!(
            simple_rows(&m),
            vec![want.iter().map(|v| Some(v.to_string())).collect::<Vec<_>>()]
        );
    }
    fx.assert_no_plaintext(&[
        "Quentin Quux",
        "123-45-6789",
        "123456789",
        "Rita Roe",
        "987654321",
        "Quentin Cast",
        "Quentin Literal",
        "555-44-3333",
        "555-44-2222",
    ])
    .await;
}

/// A date as tokio-postgres' `FromSql`/`ToSql` for DATE without chrono:
/// days since 2000-01-01 in binary.
fn chrono_free_date(y: i32, m: u32, d: u32) -> PgDate {
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = (y - era * 400) as i64;
    let mp = ((m + 9) % 12) as i64;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era as i64 * 146097 + doe - 719468; // since 1970-01-01
    PgDate((days - 10957) as i32)
}

#[derive(Debug)]
struct PgDate(i32);

impl tokio_postgres::types::ToSql for PgDate {
    fn to_sql(
        &self,
        _: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        use bytes::BufMut;
        out.put_i32(self.0);
        Ok(tokio_postgres::types::IsNull::No)
    }
    fn accepts(ty: &Type) -> bool {
        *ty == Type::DATE
    }
    tokio_postgres::types::to_sql_checked!();
}

#[tokio::test]
async fn roles_get_what_the_policy_says() {
    let fx = setup();
    let app = fx.app("calmony_app").await;
    app.execute(
        "INSERT INTO users (email, name) VALUES ($1, $2)",
        &[&"erin@example.com", &"Erin"],
    )
    .await
    .unwrap();

    // write-only role: encrypted writes, no lookups, ciphertext reads.
    let signup = fx.app("signup").await;
    signup
        .execute(
            "INSERT INTO users (email) VALUES ($1)",
            &[&"frank@example.com"],
        )
        .await
        .unwrap();
    let e = signup
        .query(
            "SELECT id FROM users WHERE email = $1",
            &[&"erin@example.com"],
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e), "42501", "{e:?}");
    assert!(
        message(&e).contains("public.users.email"),
        "{}",
        message(&e)
    );
    let r = signup.query("SELECT email FROM users", &[]).await.unwrap();
    assert_eq!(r[0].columns()[0].type_(), &Type::BYTEA);
    let stored: Vec<u8> = r[0].get(0);
    // What the write-only role gets back is the envelope, not the value.
    assert!(
        !scan::blob_contains(&stored, "erin@example.com"),
        "{stored:?}"
    );

    // Unlisted role (a DBA): ciphertext, no oracle, no plaintext writes.
    let dba = fx.app("dba").await;
    let e = dba
        .simple_query("SELECT id FROM users WHERE email = 'erin@example.com'")
        .await
        .unwrap_err();
    assert_eq!(code(&e), "42501");
    let e = dba
        .execute(
            "INSERT INTO users (email) VALUES ($1)",
            &[&"plain@example.com".as_bytes()],
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e), "42501", "{e:?}");
    // INSERT … SELECT into a protected column is refused even when the
    // source is ciphertext (pgveil cannot vouch for values the database
    // computes); a Bind of an existing envelope passes.
    let e = dba
        .execute(
            "INSERT INTO users (email, name) SELECT email, name FROM users WHERE id = 1",
            &[],
        )
        .await
        .expect_err("INSERT … SELECT into a protected column is refused");
    assert_eq!(code(&e), "0A000", "{}", err_text(&e));
    let env: Vec<u8> = dba
        .query_one("SELECT email FROM users WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    dba.execute("UPDATE users SET email = $1 WHERE id = 2", &[&env])
        .await
        .unwrap();
    // SET ROLE to a reader does not widen access.
    dba.batch_execute("RESET ROLE").await.unwrap();
    fx.pg.psql("postgres", "GRANT calmony_app TO dba");
    let dba2 = fx.app("dba").await;
    dba2.batch_execute("SET ROLE calmony_app").await.unwrap();
    let r = dba2
        .query("SELECT email FROM users WHERE id = 1", &[])
        .await
        .unwrap();
    assert_eq!(r[0].columns()[0].type_(), &Type::BYTEA);
    let e = dba2
        .query(
            "SELECT id FROM users WHERE email = $1",
            &[&"erin@example.com"],
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e), "42501");

    // search role on pay_customers.email: lookups yes, plaintext no.
    let org: i64 = 1;
    app.execute(
        "INSERT INTO pay_customers (org_id, email, name) VALUES ($1, $2, $3)",
        &[&org, &"gina@example.com", &"Gina"],
    )
    .await
    .unwrap();
    let support = fx.app("support_agent").await;
    let r = support
        .query(
            "SELECT email, name FROM pay_customers WHERE email = $1",
            &[&"GINA@example.com"],
        )
        .await
        .unwrap();
    assert_eq!(r.len(), 1);
    assert_eq!(
        r[0].columns()[0].type_(),
        &Type::BYTEA,
        "search role sees ciphertext"
    );
    assert_eq!(r[0].get::<_, String>(1), "Gina", "support reads name");
    fx.assert_no_plaintext(&[
        "erin@example.com",
        "frank@example.com",
        "gina@example.com",
        "plain@example.com",
    ])
    .await;
}

#[tokio::test]
async fn unsafe_statements_are_rejected_with_table_column_and_alternative() {
    let fx = setup();
    let app = fx.app("calmony_app").await;
    for (sql, want) in [
        ("SELECT id FROM users ORDER BY email", "0A000"),
        ("SELECT id FROM users WHERE email LIKE 'a%'", "0A000"),
        ("SELECT id FROM users WHERE email > 'a'", "0A000"),
        ("SELECT lower(email) FROM users", "0A000"),
        ("SELECT email::text FROM users", "0A000"),
        ("SELECT max(email) FROM users", "0A000"),
        ("SELECT email, count(*) FROM users GROUP BY email", "0A000"),
        ("SELECT DISTINCT email FROM users", "0A000"),
        ("INSERT INTO users (email) SELECT plan FROM users", "0A000"),
        ("PREPARE p AS SELECT * FROM users WHERE email = $1", "0A000"),
        ("DO $$ BEGIN UPDATE users SET email = 'x'; END $$", "0A000"),
    ] {
        let e = app.simple_query(sql).await.unwrap_err();
        assert_eq!(code(&e), want, "{sql}: {e:?}");
        let m = message(&e);
        assert!(m.contains("users"), "{sql}: message names the table: {m}");
    }
    // Extended protocol too.
    let e = app
        .query("SELECT id FROM users WHERE email LIKE $1", &[&"a%"])
        .await
        .unwrap_err();
    assert_eq!(code(&e), "0A000");
    assert!(message(&e).contains("email"), "{}", message(&e));
    // The session is still usable afterwards.
    app.execute(
        "INSERT INTO users (email) VALUES ($1)",
        &[&"ok@example.com"],
    )
    .await
    .unwrap();

    // Multi-statement: earlier statements stand, later ones do not run,
    // and the transaction state is PostgreSQL's own.
    let e = app
        .batch_execute(
            "INSERT INTO users (email) VALUES ('before@example.com'); \
             SELECT id FROM users ORDER BY email; \
             INSERT INTO users (email) VALUES ('after@example.com')",
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e), "0A000");
    app.batch_execute("BEGIN; INSERT INTO users (email) VALUES ('intx@example.com')")
        .await
        .unwrap();
    let e = app
        .simple_query("SELECT email FROM users ORDER BY email")
        .await
        .unwrap_err();
    assert_eq!(code(&e), "0A000");
    let e = app.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(
        code(&e),
        "25P02",
        "transaction is aborted like after a native error"
    );
    app.batch_execute("ROLLBACK").await.unwrap();
    let r = app
        .query(
            "SELECT count(*) FROM users WHERE email = ANY($1)",
            &[&vec![
                "ok@example.com",
                "after@example.com",
                "intx@example.com",
            ]],
        )
        .await
        .unwrap();
    assert_eq!(r[0].get::<_, i64>(0), 1, "only ok@ remains");
    let logs = fx.pv.logs();
    assert!(logs.contains("statement rejected"), "rejections are logged");
    fx.assert_no_plaintext(&["ok@example.com", "before@example.com", "intx@example.com"])
        .await;
}

#[tokio::test]
async fn tenant_tables_bind_values_to_the_tenant() {
    let fx = setup();
    let app = fx.app("calmony_app").await;
    let (o1, o2): (i64, i64) = (100, 200);
    app.execute(
        "INSERT INTO pay_customers (org_id, email, name, postal_code) VALUES ($1, $2, $3, $4)",
        &[&o1, &"hal@example.com", &"Hal", &"sw1a 1aa"],
    )
    .await
    .unwrap();
    app.batch_execute(
        "INSERT INTO pay_customers (org_id, email, name) VALUES (200, 'ivy@example.com', 'Ivy')",
    )
    .await
    .unwrap();
    let r = app
        .query(
            "SELECT name FROM pay_customers WHERE postal_code = $1",
            &[&"SW1A1AA"],
        )
        .await
        .unwrap();
    assert_eq!(r[0].get::<_, String>(0), "Hal");
    // Update needs the tenant.
    let e = app
        .execute(
            "UPDATE pay_customers SET name = $1 WHERE email = $2",
            &[&"Hal Two", &"hal@example.com"],
        )
        .await
        .unwrap_err();
    assert!(["42501", "0A000"].contains(&code(&e).as_str()), "{e:?}");
    assert!(
        message(&e).contains("org_id"),
        "says how to supply the tenant: {}",
        message(&e)
    );
    app.execute(
        "UPDATE pay_customers SET name = $1 WHERE org_id = $2 AND email = $3",
        &[&"Hal Two", &o1, &"hal@example.com"],
    )
    .await
    .unwrap();
    // A value moved to another tenant's row fails to decrypt.
    let direct = fx.direct().await;
    direct
        .execute("UPDATE pay_customers SET name = (SELECT name FROM pay_customers WHERE org_id = 100) WHERE org_id = 200", &[])
        .await
        .unwrap();
    let r = app
        .query(
            "SELECT org_id, name FROM pay_customers WHERE org_id = $1",
            &[&o1],
        )
        .await
        .unwrap();
    assert_eq!(r[0].get::<_, String>(1), "Hal Two");
    let e = app
        .query(
            "SELECT org_id, name FROM pay_customers WHERE org_id = $1",
            &[&o2],
        )
        .await
        .unwrap_err();
    assert!(message(&e).contains("decrypt"), "{}", message(&e));
    fx.assert_no_plaintext(&["hal@example.com", "Hal Two", "ivy@example.com", "sw1a 1aa"])
        .await;
}

#[tokio::test]
async fn copy_from_stdin_encrypts_text_and_csv() {
    let fx = setup();
    let app = fx.app("calmony_app").await;
    use futures::SinkExt;
    let sink = app
        .copy_in("COPY users (email, name, plan) FROM STDIN")
        .await
        .unwrap();
    futures::pin_mut!(sink);
    sink.send(bytes::Bytes::from_static(
        b"jo@example.com\tJo Copy\tfree\nkim@exa",
    ))
    .await
    .unwrap();
    sink.send(bytes::Bytes::from_static(
        b"mple.com\tKim\\tTab\tpro\n\\N\tNully\tfree\n",
    ))
    .await
    .unwrap();
    assert_eq!(sink.finish().await.unwrap(), 3);
    // CSV through psql's \copy.
    let csv = fx.pv.dir().join("rows.csv");
    std::fs::write(&csv, "email,name\nlee@example.com,\"Lee, Comma\"\n").unwrap();
    let out = Command::new(fx.pg.bin("psql"))
        .args([
            "-X",
            "-v",
            "ON_ERROR_STOP=1",
            &fx.pv.url("calmony_app", "app"),
            "-c",
            &format!(
                "\\copy users (email, name) FROM '{}' WITH (FORMAT csv, HEADER true)",
                csv.display()
            ),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = app
        .query(
            "SELECT name FROM users WHERE email = ANY($1) ORDER BY id",
            &[&vec![
                "jo@example.com",
                "kim@example.com",
                "lee@example.com",
            ]],
        )
        .await
        .unwrap();
    let names: Vec<String> = r.iter().map(|r| r.get(0)).collect();
    assert_eq!(names, vec!["Jo Copy", "Kim\tTab", "Lee, Comma"]);
    fx.assert_no_plaintext(&[
        "jo@example.com",
        "Jo Copy",
        "kim@example.com",
        "lee@example.com",
        "Lee, Comma",
    ])
    .await;
}

#[tokio::test]
async fn joins_subqueries_ctes_and_views_decrypt() {
    let fx = setup();
    fx.pg.psql(
        "app",
        "CREATE VIEW public.user_directory AS SELECT id, email, name FROM public.users;
         GRANT ALL ON public.user_directory TO PUBLIC;",
    );
    let app = fx.app("calmony_app").await;
    app.execute(
        "INSERT INTO users (email, name) VALUES ($1, $2)",
        &[&"mo@example.com", &"Mo"],
    )
    .await
    .unwrap();
    let org: i64 = 3;
    app.execute(
        "INSERT INTO pay_customers (org_id, email, name) VALUES ($1, $2, $3)",
        &[&org, &"mo@example.com", &"Mo Customer"],
    )
    .await
    .unwrap();
    let r = app
        .query(
            "SELECT u.name, c.name FROM users u JOIN pay_customers c ON c.id = u.id WHERE u.email = $1",
            &[&"mo@example.com"],
        )
        .await
        .unwrap();
    assert_eq!(
        (r[0].get::<_, String>(0), r[0].get::<_, String>(1)),
        ("Mo".into(), "Mo Customer".into())
    );
    let r = app
        .query(
            "WITH x AS (SELECT name FROM users WHERE email = $1) SELECT name FROM x",
            &[&"mo@example.com"],
        )
        .await
        .unwrap();
    assert_eq!(r[0].get::<_, String>(0), "Mo");
    let r = app
        .query("SELECT s.n FROM (SELECT name AS n FROM users) s", &[])
        .await
        .unwrap();
    assert_eq!(r[0].get::<_, String>(0), "Mo");
    let r = app
        .query("SELECT name FROM user_directory", &[])
        .await
        .unwrap();
    assert_eq!(r[0].get::<_, String>(0), "Mo");
    fx.assert_no_plaintext(&["mo@example.com", "Mo Customer"])
        .await;
}

#[tokio::test]
async fn unprotected_statements_pass_through_untouched() {
    let fx = setup();
    fx.pg.psql(
        "app",
        "CREATE TABLE public.notes (id int, body text); GRANT ALL ON public.notes TO PUBLIC;",
    );
    let app = fx.app("calmony_app").await;
    app.batch_execute("INSERT INTO notes VALUES (1, 'hello')")
        .await
        .unwrap();
    let r = app
        .query("SELECT body FROM notes WHERE id = $1", &[&1i32])
        .await
        .unwrap();
    assert_eq!(r[0].get::<_, String>(0), "hello");
    // Plain text in an unprotected table is stored as is.
    let direct = fx.direct().await;
    let r = direct
        .query_one("SELECT body FROM notes", &[])
        .await
        .unwrap();
    assert_eq!(r.get::<_, String>(0), "hello");
}

#[tokio::test]
async fn psql_script_through_pgveil() {
    let fx = setup();
    let script = fx.pv.dir().join("script.sql");
    std::fs::write(
        &script,
        "INSERT INTO users (email, name) VALUES ('nia@example.com', 'Nia Script');\n\
         UPDATE users SET name = 'Nia Updated' WHERE email = 'NIA@example.com';\n\
         SELECT name FROM users WHERE email = 'nia@example.com';\n",
    )
    .unwrap();
    let out = Command::new(fx.pg.bin("psql"))
        .args([
            "-X",
            "-At",
            "-v",
            "ON_ERROR_STOP=1",
            &fx.pv.url("calmony_app", "app"),
            "-f",
        ])
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("Nia Updated"));
    fx.assert_no_plaintext(&["nia@example.com", "Nia Script", "Nia Updated"])
        .await;
}

#[tokio::test]
async fn audit_log_records_decryption_and_search_without_values() {
    let fx = setup();
    let app = fx.app("calmony_app").await;
    app.execute(
        "INSERT INTO users (email, name) VALUES ($1, $2)",
        &[&"oz@example.com", &"Oz"],
    )
    .await
    .unwrap();
    app.query(
        "SELECT name FROM users WHERE email = $1",
        &[&"oz@example.com"],
    )
    .await
    .unwrap();
    let e = app
        .simple_query("SELECT id FROM users ORDER BY email")
        .await
        .expect_err("ORDER BY a protected column is refused");
    assert_eq!(code(&e), "0A000", "{}", err_text(&e));
    // The audit writer is a thread of its own: the records may land a
    // moment after the answers.
    let mut recs: Vec<serde_json::Value> = Vec::new();
    for _ in 0..50 {
        let text = std::fs::read_to_string(fx.pv.dir().join("audit.jsonl")).unwrap_or_default();
        recs = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        if recs.iter().any(|r| r["decrypted"] == true)
            && recs.iter().any(|r| r["outcome"] == "rejected")
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let read = recs
        .iter()
        .find(|r| r["decrypted"] == true)
        .expect("a decryption record");
    assert_eq!(read["login_role"], "calmony_app");
    assert_eq!(read["database"], "app");
    assert_eq!(read["rows"], 1);
    assert!(
        read["columns"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c == "public.users.email")
    );
    assert!(recs.iter().any(|r| r["outcome"] == "rejected"));
    fx.assert_no_plaintext(&["oz@example.com"]).await;
}

/// Python drivers (psycopg 3 in its three statement modes, asyncpg with
/// binary formats and its statement cache) doing insert, lookup, update,
/// delete and read on `public.users` and `phi.member_profile`.
#[tokio::test]
async fn python_drivers_psycopg_and_asyncpg() {
    let fx = setup();
    let script = r#"
import asyncio, datetime, sys
import psycopg, asyncpg

url_app, url_doc = sys.argv[1], sys.argv[2]

def psycopg_round(mode, n):
    kw = {}
    if mode == "prepare_true":
        kw = {"prepare": True}
    conn = psycopg.connect(url_app, autocommit=True)
    if mode == "no_prepare":
        conn.prepare_threshold = None
    email = f"py{n}@example.com"
    conn.execute("INSERT INTO users (email, name) VALUES (%s, %s)", (email.upper(), f"Py Name {n}"), **kw)
    for _ in range(6):  # past psycopg's prepare threshold
        row = conn.execute("SELECT name FROM users WHERE email = %s", (email,), **kw).fetchone()
        assert row == (f"Py Name {n}",), row
    conn.execute("UPDATE users SET name = %s WHERE email = %s", (f"Py Upd {n}", email), **kw)
    assert conn.execute("SELECT name FROM users WHERE email = %s", (email,)).fetchone() == (f"Py Upd {n}",)
    # transaction with rollback
    with conn.transaction(force_rollback=True):
        conn.execute("DELETE FROM users WHERE email = %s", (email,), **kw)
        assert conn.execute("SELECT count(*) FROM users WHERE email = %s", (email,)).fetchone() == (0,)
    assert conn.execute("SELECT count(*) FROM users WHERE email = %s", (email,)).fetchone() == (1,)
    conn.execute("DELETE FROM users WHERE email = %s", (email,), **kw)
    assert conn.execute("SELECT count(*) FROM users WHERE email = %s", (email,)).fetchone() == (0,)
    # A row that stays, for the plaintext scan afterwards.
    kept = f"py{n}.kept@example.com"
    conn.execute("INSERT INTO users (email, name) VALUES (%s, %s)", (kept, f"Py Kept {n}"), **kw)
    assert conn.execute("SELECT name FROM users WHERE email = %s", (kept,)).fetchone() == (f"Py Kept {n}",)
    conn.close()

for i, mode in enumerate(["default", "prepare_true", "no_prepare"]):
    psycopg_round(mode, i)

doc = psycopg.connect(url_doc, autocommit=True)
doc.execute("INSERT INTO phi.member_profile (legal_name, date_of_birth, ssn, risk_score) VALUES (%s, %s, %s, %s)",
            ("Psy Copg", datetime.date(1970, 5, 6), "111-22-3333", 42))
row = doc.execute("SELECT legal_name, date_of_birth, risk_score FROM phi.member_profile WHERE ssn = %s", ("111223333",)).fetchone()
assert row == ("Psy Copg", datetime.date(1970, 5, 6), 42), row
doc.close()

async def apg():
    conn = await asyncpg.connect(url_doc)
    await conn.execute("INSERT INTO phi.member_profile (legal_name, date_of_birth, ssn, risk_score) VALUES ($1, $2, $3, $4)",
                       "Async Pg", datetime.date(1999, 12, 31), "444-55-6666", -7)
    stmt = await conn.prepare("SELECT legal_name, date_of_birth, risk_score FROM phi.member_profile WHERE ssn = $1")
    for _ in range(5):
        r = await stmt.fetchrow("444556666")
        assert tuple(r) == ("Async Pg", datetime.date(1999, 12, 31), -7), r
    await conn.execute("UPDATE phi.member_profile SET risk_score = $1 WHERE ssn = $2", 8, "444556666")
    r = await conn.fetchrow("SELECT risk_score FROM phi.member_profile WHERE ssn = $1", "444-55-6666")
    assert r[0] == 8
    try:
        async with conn.transaction():
            await conn.execute("DELETE FROM phi.member_profile WHERE ssn = $1", "444556666")
            raise RuntimeError("rollback")
    except RuntimeError:
        pass
    assert await conn.fetchval("SELECT count(*) FROM phi.member_profile WHERE ssn = $1", "444556666") == 1
    await conn.execute("DELETE FROM phi.member_profile WHERE ssn = $1", "444556666")
    assert await conn.fetchval("SELECT count(*) FROM phi.member_profile WHERE ssn = $1", "444556666") == 0
    # A row that stays, for the plaintext scan afterwards.
    await conn.execute("INSERT INTO phi.member_profile (legal_name, date_of_birth, ssn, risk_score) VALUES ($1, $2, $3, $4)",
                       "Async Kept", datetime.date(1999, 12, 30), "777-88-9999", 5)
    r = await conn.fetchrow("SELECT legal_name FROM phi.member_profile WHERE ssn = $1", "777889999")
    assert r[0] == "Async Kept", r
    await conn.close()

asyncio.run(apg())
print("python drivers ok")
"#;
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(fx.pv.url("calmony_app", "app"))
        .arg(fx.pv.url("clinician", "app"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python drivers failed:\n{}\n{}\n--- pgveil ---\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        fx.pv.logs()
    );
    // Only values still stored (the script read each back): the deleted
    // ones could not be found whatever pgveil did.
    fx.assert_no_plaintext(&[
        "py0.kept@example.com",
        "py1.kept@example.com",
        "py2.kept@example.com",
        "Py Kept",
        "Psy Copg",
        "111-22-3333",
        "Async Kept",
        "777-88-9999",
    ])
    .await;
}

#[tokio::test]
async fn catalog_is_reloaded_after_ddl_through_pgveil() {
    let fx = setup();
    let app = fx.app("calmony_app").await;
    app.execute(
        "INSERT INTO users (email, name) VALUES ($1, $2)",
        &[&"pia@example.com", &"Pia"],
    )
    .await
    .unwrap();
    // A view created through pgveil after the session loaded its catalog.
    let admin = fx.pv.connect("postgres", None, "app").await;
    admin
        .batch_execute("CREATE VIEW public.people AS SELECT id, name FROM public.users; GRANT SELECT ON public.people TO PUBLIC")
        .await
        .unwrap();
    let r = app.query("SELECT name FROM people", &[]).await.unwrap();
    assert_eq!(
        r[0].get::<_, String>(0),
        "Pia",
        "the new view's column is decrypted"
    );
    assert_eq!(r[0].columns()[0].type_(), &Type::TEXT);
}

#[tokio::test]
async fn policy_check_reports_schema_problems_with_fixes() {
    let fx = setup();
    let ok = fx.run(&[
        "policy",
        "check",
        "--database",
        &fx.pg.url("postgres", "app"),
    ]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let out = String::from_utf8_lossy(&ok.stdout);
    assert!(
        out.contains("checked: config, policy, secrets, keystore and master key, schema"),
        "{out}"
    );
    // --json: one object.
    let j = fx.run(&["policy", "check", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&j.stdout).unwrap();
    assert_eq!(v["ok"], true, "{v}");
    // Secrets missing (the key variables unset): every problem at once,
    // keystore check skipped only with --offline.
    let bad = pgveil_cmd()
        .args(["policy", "check", "--json", "--config"])
        .arg(fx.pv.config_path())
        .env_remove("PGVEIL_TEST_MASTER_KEY")
        .env_remove("PGVEIL_TEST_BIDX_KEY")
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&bad.stdout).unwrap();
    let problems = v["problems"].to_string();
    assert!(
        problems.contains("PGVEIL_TEST_MASTER_KEY") && problems.contains("PGVEIL_TEST_BIDX_KEY"),
        "{v}"
    );
    // An unreachable keystore is a problem unless --offline.
    let cfg = std::fs::read_to_string(fx.pv.config_path()).unwrap();
    let port = fx.pg.port().to_string();
    let moved = fx.pv.dir().join("unreachable.yaml");
    std::fs::write(
        &moved,
        cfg.replace(
            &format!("127.0.0.1:{port}/pgveil_keys"),
            "127.0.0.1:1/pgveil_keys",
        ),
    )
    .unwrap();
    let check = |offline: bool| {
        let mut c = pgveil_cmd();
        c.args(["policy", "check", "--config"])
            .arg(&moved)
            .env("PGVEIL_TEST_MASTER_KEY", common::calmony::MASTER_KEY)
            .env("PGVEIL_TEST_BIDX_KEY", common::calmony::BIDX_KEY)
            .env_remove("PGVEIL_CONFIG");
        if offline {
            c.arg("--offline");
        }
        c.output().unwrap()
    };
    let out = check(false);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("keystore:") && err.contains("--offline"),
        "{err}"
    );
    let out = check(true);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    fx.pg.psql("app", "ALTER TABLE public.users DROP COLUMN email_bidx; ALTER TABLE phi.member_profile ALTER COLUMN ssn TYPE text USING 'x'");
    let bad = fx.run(&[
        "policy",
        "check",
        "--database",
        &fx.pg.url("postgres", "app"),
    ]);
    assert_eq!(bad.status.code(), Some(1));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("policy.yaml:"), "file:line: {err}");
    assert!(err.contains("ALTER TABLE"), "the fix: {err}");
    assert!(err.contains("email_bidx"), "{err}");
}

/// Sentinels written through every path (params, literals, update, COPY,
/// lookups, rejected statements, values that fail validation) never appear
/// in pgveil's trace logs, the audit log, the metrics output, the keystore,
/// the PostgreSQL data directory or the server log.
#[tokio::test]
async fn no_plaintext_anywhere_at_trace_level() {
    // The harness moves the metrics port if another process took it.
    let fx = setup_with(&format!("metrics:\n  listen: 127.0.0.1:{}\n", free_port()));
    let mport = fx.pv.metrics_port();
    let app = fx.app("calmony_app").await;
    let doc = fx.app("clinician").await;
    app.execute(
        "INSERT INTO users (email, name) VALUES ($1, $2)",
        &[&"s1-sentinel@example.com", &"Sentinel-One"],
    )
    .await
    .unwrap();
    app.batch_execute(
        "INSERT INTO users (email, name) VALUES ('s2-sentinel@example.com', 'Sentinel-Two')",
    )
    .await
    .unwrap();
    app.execute(
        "UPDATE users SET name = $1 WHERE email = $2",
        &[&"Sentinel-Three", &"s1-sentinel@example.com"],
    )
    .await
    .unwrap();
    app.query(
        "SELECT name FROM users WHERE email = ANY($1)",
        &[&vec!["s2-sentinel@example.com"]],
    )
    .await
    .unwrap();
    use futures::SinkExt;
    let sink = app
        .copy_in("COPY users (email, name) FROM STDIN")
        .await
        .unwrap();
    futures::pin_mut!(sink);
    sink.send(bytes::Bytes::from_static(
        b"s4-sentinel@example.com\tSentinel-Four\n",
    ))
    .await
    .unwrap();
    sink.finish().await.unwrap();
    // What was written is there, decrypted (Sentinel-One was overwritten by
    // Sentinel-Three).
    let rows = app
        .query("SELECT email, name FROM users ORDER BY id", &[])
        .await
        .unwrap();
    let got: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        got,
        vec![
            ("s1-sentinel@example.com".into(), "Sentinel-Three".into()),
            ("s2-sentinel@example.com".into(), "Sentinel-Two".into()),
            ("s4-sentinel@example.com".into(), "Sentinel-Four".into()),
        ]
    );
    // Errors: a rejected lookup, an invalid value, a non-envelope write.
    let e = app
        .simple_query("SELECT id FROM users WHERE email LIKE 's5-sentinel%'")
        .await
        .expect_err("LIKE on a blind-indexed column is refused");
    assert_eq!(code(&e), "0A000", "{}", err_text(&e));
    assert!(!err_text(&e).contains("s5-sentinel"), "{}", err_text(&e));
    let e = doc
        .simple_query("INSERT INTO phi.member_profile (risk_score, ssn) VALUES ('Sentinel-Six', '999-00-1111')")
        .await
        .expect_err("a non-integer risk score is invalid");
    assert_eq!(code(&e), "22P02", "{}", err_text(&e));
    assert!(
        !err_text(&e).contains("Sentinel-Six") && !err_text(&e).contains("999-00-1111"),
        "{}",
        err_text(&e)
    );
    let dba = fx.app("dba").await;
    let e = dba
        .simple_query("INSERT INTO users (email) VALUES ('s7-sentinel@example.com')")
        .await
        .expect_err("a plaintext write by a role without access is refused");
    assert_eq!(code(&e), "42501", "{}", err_text(&e));
    assert!(!err_text(&e).contains("s7-sentinel"), "{}", err_text(&e));
    let metrics = reqwest_free_get(mport, "/metrics");
    assert!(
        metrics.contains("pgveil_values_encrypted_total"),
        "{metrics}"
    );
    fx.pg.psql("app", "CHECKPOINT");
    fx.pg.psql("pgveil_keys", "CHECKPOINT");
    let sentinels = [
        "s1-sentinel",
        "Sentinel-One",
        "s2-sentinel",
        "Sentinel-Two",
        "Sentinel-Three",
        "s4-sentinel",
        "Sentinel-Four",
        "s5-sentinel",
        "Sentinel-Six",
        "999-00-1111",
        "s7-sentinel",
    ];
    // Every file of the data directory (heap, WAL, …).
    let mut stack = vec![fx.pg.data_dir().to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p) {
                // Lossy text keeps every ASCII run intact; std's (optimised)
                // substring search keeps this fast in debug builds.
                let text = String::from_utf8_lossy(&bytes);
                for s in sentinels {
                    assert!(!text.contains(s), "{s} found in {}", p.display());
                }
            }
        }
    }
    // The cluster (every database, the keystore's included, and pg_dump),
    // the logs, the audit log and the metrics page.
    let logs = fx.pv.logs();
    let audit = std::fs::read(fx.pv.dir().join("audit.jsonl")).unwrap_or_default();
    scan::assert_absent(
        &fx.pg,
        &sentinels,
        &[
            ("pgveil's log", logs.as_bytes()),
            ("the audit log", &audit),
            ("the metrics page", metrics.as_bytes()),
        ],
    )
    .await;
}

/// GET over plain TCP (no HTTP client dependency in the tests).
fn reqwest_free_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// Pipelined statements (tokio-postgres sends them without waiting) with a
/// refused one in the middle: every other statement gets its own answer.
#[tokio::test]
async fn pipelined_statements_with_a_refusal_in_the_middle() {
    let fx = setup();
    let app = fx.app("calmony_app").await;
    app.execute(
        "INSERT INTO users (email, name) VALUES ($1, $2)",
        &[&"quin@example.com", &"Quin"],
    )
    .await
    .unwrap();
    let lookup = app
        .prepare("SELECT name FROM users WHERE email = $1")
        .await
        .unwrap();
    let insert = app
        .prepare("INSERT INTO users (email, name) VALUES ($1, $2)")
        .await
        .unwrap();
    let (a, b, c, d) = futures::join!(
        app.query(&lookup, &[&"quin@example.com"]),
        app.query("SELECT id FROM users WHERE email LIKE $1", &[&"q%"]),
        app.execute(&insert, &[&"rae@example.com", &"Rae"]),
        app.query(&lookup, &[&"rae@example.com"]),
    );
    assert_eq!(a.unwrap()[0].get::<_, String>(0), "Quin");
    assert_eq!(code(&b.unwrap_err()), "0A000");
    assert_eq!(c.unwrap(), 1);
    assert_eq!(d.unwrap()[0].get::<_, String>(0), "Rae");
    // Many in flight at once.
    let futs: Vec<_> = (0..50)
        .map(|_| app.query(&lookup, &[&"quin@example.com"]))
        .collect();
    for r in futures::future::join_all(futs).await {
        assert_eq!(r.unwrap()[0].get::<_, String>(0), "Quin");
    }
    fx.assert_no_plaintext(&["quin@example.com", "rae@example.com"])
        .await;
}

/// A simple-query SELECT that reads protected `bytea` columns runs upstream
/// as Parse/Bind/Describe/Execute/Sync with binary results for those
/// columns (PostgreSQL then sends the envelope's bytes, not hex), while the
/// client still sees a simple Query: text values, errors and transaction
/// states as PostgreSQL gives them. Statements whose columns pgveil cannot
/// map (`*`) stay simple.
#[tokio::test]
async fn simple_query_selects_read_bytea_in_binary_from_postgresql() {
    let fx = setup();
    let direct = fx.direct().await;
    for role in ["calmony_worker", "clinician", "dba"] {
        direct
            .batch_execute(&format!("ALTER ROLE {role} SET log_statement = 'all'"))
            .await
            .unwrap();
    }
    let app = fx.app("calmony_app").await;
    let mut ids = Vec::new();
    for (email, name) in [
        ("one-binsentinel@example.com", Some("Bin-Sentinel One")),
        ("two-binsentinel@example.com", None),
        ("three-binsentinel@example.com", Some("Bin-Sentinel Three")),
    ] {
        let row = app
            .query_one(
                "INSERT INTO users (email, name) VALUES ($1, $2) RETURNING id",
                &[&email, &name],
            )
            .await
            .unwrap();
        ids.push(row.get::<_, i64>(0));
    }
    let doc = fx.app("clinician").await;
    doc.execute(
        "INSERT INTO phi.member_profile (legal_name, date_of_birth, ssn, risk_score) VALUES ($1, $2, $3, $4)",
        &[&"Bin-Sentinel Member", &chrono_free_date(1984, 2, 29), &"123-45-6789", &42i32],
    )
    .await
    .unwrap();

    // bytea (email) and text (name) storage in one result, with a NULL.
    let reader = fx.app("calmony_worker").await;
    let sql = format!(
        "SELECT id, email, name FROM users WHERE id >= {} ORDER BY id",
        ids[0]
    );
    let rows = simple_rows(&reader.simple_query(&sql).await.unwrap());
    assert_eq!(
        rows,
        vec![
            vec![
                Some(ids[0].to_string()),
                Some("one-binsentinel@example.com".into()),
                Some("Bin-Sentinel One".into())
            ],
            vec![
                Some(ids[1].to_string()),
                Some("two-binsentinel@example.com".into()),
                None
            ],
            vec![
                Some(ids[2].to_string()),
                Some("three-binsentinel@example.com".into()),
                Some("Bin-Sentinel Three".into())
            ],
        ]
    );
    // Non-text plaintext types are rendered as PostgreSQL's text output.
    let rows = simple_rows(
        &doc.simple_query("SELECT legal_name, date_of_birth, risk_score FROM phi.member_profile WHERE id = (SELECT max(id) FROM phi.member_profile)")
            .await
            .unwrap(),
    );
    assert_eq!(
        rows,
        vec![vec![
            Some("Bin-Sentinel Member".into()),
            Some("1984-02-29".into()),
            Some("42".into())
        ]]
    );
    // A tenant table: each value is opened with the row's tenant id, which
    // comes in the same (text) result.
    app.execute(
        "INSERT INTO pay_customers (org_id, email, name) VALUES (7, $1, $2), (8, $3, $4)",
        &[
            &"seven-binsentinel@example.com",
            &"Bin-Sentinel Seven",
            &"eight-binsentinel@example.com",
            &"Bin-Sentinel Eight",
        ],
    )
    .await
    .unwrap();
    let rows = simple_rows(
        &reader
            .simple_query("SELECT org_id, email, name FROM pay_customers WHERE org_id IN (7, 8) ORDER BY org_id")
            .await
            .unwrap(),
    );
    assert_eq!(
        rows,
        vec![
            vec![
                Some("7".into()),
                Some("seven-binsentinel@example.com".into()),
                Some("Bin-Sentinel Seven".into())
            ],
            vec![
                Some("8".into()),
                Some("eight-binsentinel@example.com".into()),
                Some("Bin-Sentinel Eight".into())
            ],
        ]
    );
    // PostgreSQL ran them through the extended protocol.
    let pglog = std::fs::read_to_string(fx.pg.log_path()).unwrap();
    assert!(
        pglog.contains(&format!("execute <unnamed>: {sql}")),
        "not run as Parse/Bind:\n{pglog}"
    );

    // An error at Parse: the client gets it, then ReadyForQuery; the
    // session goes on.
    let e = reader
        .simple_query("SELECT email, no_such_column FROM users")
        .await
        .unwrap_err();
    assert_eq!(code(&e), "42703", "{e}");
    // An error after some rows were sent, inside a transaction block: the
    // block is aborted exactly as PostgreSQL aborts it.
    reader.batch_execute("BEGIN").await.unwrap();
    let e = reader
        .simple_query(&format!(
            "SELECT email, 1 / (id - {}) FROM users WHERE id >= {} ORDER BY id",
            ids[1], ids[0]
        ))
        .await
        .unwrap_err();
    assert_eq!(code(&e), "22012", "{e}");
    let e = reader.simple_query(&sql).await.unwrap_err();
    assert_eq!(code(&e), "25P02", "{e}");
    reader.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(
        simple_rows(&reader.simple_query(&sql).await.unwrap()).len(),
        3
    );
    // Several statements in one Query keep the simple protocol.
    let msgs = reader
        .simple_query(&format!("SELECT 1; {sql}"))
        .await
        .unwrap();
    assert_eq!(simple_rows(&msgs).len(), 4);
    // A subquery and a CTE map their columns too; `*` is sent as it came
    // (its columns are not all known to pgveil) and decrypts as before.
    for q in [
        format!(
            "SELECT x.email FROM (SELECT id, email FROM users) x WHERE x.id = {}",
            ids[0]
        ),
        format!(
            "WITH u AS (SELECT id, email FROM users) SELECT email FROM u WHERE id = {}",
            ids[0]
        ),
        format!("SELECT * FROM users WHERE id = {}", ids[0]),
    ] {
        let rows = simple_rows(&reader.simple_query(&q).await.unwrap());
        let want = "one-binsentinel@example.com".to_string();
        assert!(rows[0].contains(&Some(want)), "{q}: {rows:?}");
    }
    // A blind-index lookup returns few rows: it stays a simple Query.
    let rows = simple_rows(
        &reader
            .simple_query("SELECT id, name FROM users WHERE email = 'ONE-binsentinel@example.com'")
            .await
            .unwrap(),
    );
    assert_eq!(
        rows,
        vec![vec![
            Some(ids[0].to_string()),
            Some("Bin-Sentinel One".into())
        ]]
    );
    let pglog = std::fs::read_to_string(fx.pg.log_path()).unwrap();
    assert!(
        pglog.contains("statement: SELECT id, name FROM users WHERE email_bidx"),
        "{pglog}"
    );
    assert!(
        pglog.contains("execute <unnamed>: SELECT x.email FROM (SELECT id, email FROM users) x")
    );
    assert!(pglog.contains(&format!(
        "statement: SELECT * FROM users WHERE id = {}",
        ids[0]
    )));

    // A role without read access gets the stored ciphertext, hex as
    // PostgreSQL writes it, over the simple protocol as sent.
    let dba = fx.app("dba").await;
    let rows = simple_rows(
        &dba.simple_query(&format!("SELECT email FROM users WHERE id = {}", ids[0]))
            .await
            .unwrap(),
    );
    let stored = rows[0][0].clone().unwrap();
    assert!(stored.starts_with("\\x7076"), "{stored}");
    let pglog = std::fs::read_to_string(fx.pg.log_path()).unwrap();
    assert!(pglog.contains(&format!(
        "statement: SELECT email FROM users WHERE id = {}",
        ids[0]
    )));
    fx.assert_no_plaintext(&["binsentinel", "Bin-Sentinel"])
        .await;
}

/// A large result (many reads from PostgreSQL, rows of three tenants
/// interleaved, so three data keys fetched as the session meets them)
/// reaches the client whole and in order, with each tenant's plaintext,
/// through both protocols. A row that fails in the middle ends the result
/// like a PostgreSQL error would: the rows before it arrive, then 39000;
/// inside a transaction block the block is failed on PostgreSQL too (25P02
/// for the next statement, COMMIT rolls back). PostgreSQL holds no
/// plaintext; pgveil logs none.
#[tokio::test]
async fn large_results_stream_in_order_and_fail_at_the_bad_row() {
    const ROWS: usize = 3000;
    let fx = setup();
    let app = fx.app("calmony_app").await;
    let row = |i: usize| {
        (
            (i % 3 + 1) as i64,
            format!("bigrow{i:05}@example.com"),
            format!("Big Person {i:05}"),
        )
    };
    let sink = app
        .copy_in("COPY pay_customers (org_id, email, name) FROM STDIN")
        .await
        .unwrap();
    let mut data = String::new();
    for i in 0..ROWS {
        let (org, email, name) = row(i);
        data.push_str(&format!("{org}\t{email}\t{name}\n"));
    }
    futures::pin_mut!(sink);
    use futures::SinkExt;
    sink.send(bytes::Bytes::from(data)).await.unwrap();
    assert_eq!(sink.finish().await.unwrap(), ROWS as u64);

    let select = "SELECT id, org_id, email, name FROM pay_customers ORDER BY id";
    // Extended protocol, binary results.
    let rows = app.query(select, &[]).await.unwrap();
    assert_eq!(rows.len(), ROWS);
    for (i, r) in rows.iter().enumerate() {
        let (org, email, name) = row(i);
        assert_eq!(r.get::<_, i64>(1), org, "row {i}");
        assert_eq!(r.get::<_, String>(2), email, "row {i}");
        assert_eq!(r.get::<_, String>(3), name, "row {i}");
    }
    // Simple protocol, text results.
    let msgs = app.simple_query(select).await.unwrap();
    let texts: Vec<_> = msgs
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        })
        .collect();
    assert_eq!(texts.len(), ROWS);
    for (i, r) in texts.iter().enumerate() {
        let (_, email, name) = row(i);
        assert_eq!(r.get(2), Some(email.as_str()), "row {i}");
        assert_eq!(r.get(3), Some(name.as_str()), "row {i}");
    }

    // Row 2001 (id order) gets the name of another tenant's row: it cannot
    // be decrypted for its own tenant.
    let direct = fx.direct().await;
    let ids: Vec<i64> = direct
        .query("SELECT id FROM pay_customers ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let bad = 2000;
    direct
        .execute(
            "UPDATE pay_customers SET name = (SELECT name FROM pay_customers WHERE id = $2) WHERE id = $1",
            &[&ids[bad], &ids[bad + 1]],
        )
        .await
        .unwrap();
    // Inside a transaction block, after a write that must not survive.
    let insert = "INSERT INTO pay_customers (org_id, email, name) VALUES (7, $1, 'Doomed')";
    app.batch_execute("BEGIN").await.unwrap();
    app.execute(insert, &[&"doomed1@example.com"])
        .await
        .unwrap();
    let stream = app
        .query_raw(select, std::iter::empty::<&str>())
        .await
        .unwrap();
    futures::pin_mut!(stream);
    use futures::StreamExt;
    let mut seen = 0;
    let err = loop {
        match stream.next().await {
            Some(Ok(r)) => {
                let (_, email, _) = row(seen);
                assert_eq!(r.get::<_, String>(2), email, "row {seen}");
                seen += 1;
            }
            Some(Err(e)) => break e,
            None => panic!("the result ended without the error after {seen} rows"),
        }
    };
    assert_eq!(seen, bad, "every row before the failing one arrives");
    assert_eq!(code(&err), "39000", "{err:?}");
    assert!(message(&err).contains("name"), "{}", message(&err));
    // As after any error in a transaction block: PostgreSQL's transaction
    // is aborted too (pgveil makes it so), the next statement fails with
    // 25P02 and COMMIT rolls back.
    let e = app.query("SELECT 1", &[]).await.unwrap_err();
    assert_eq!(code(&e), "25P02", "{e:?}");
    let e = app.simple_query("SELECT 2").await.unwrap_err();
    assert_eq!(code(&e), "25P02", "{e:?}");
    let done = app.simple_query("COMMIT").await.unwrap();
    assert!(
        matches!(
            &done[..],
            [tokio_postgres::SimpleQueryMessage::CommandComplete(0)]
        ),
        "{done:?}"
    );
    // The same when COMMIT is the first statement after the failure: it
    // rolls back, as PostgreSQL answers a COMMIT of a failed transaction.
    app.batch_execute("BEGIN").await.unwrap();
    app.execute(insert, &[&"doomed2@example.com"])
        .await
        .unwrap();
    let e = app.query(select, &[]).await.unwrap_err();
    assert_eq!(code(&e), "39000", "{e:?}");
    app.batch_execute("COMMIT").await.unwrap();
    // And ROLLBACK (to a savepoint, too) is let through.
    app.batch_execute("BEGIN; SAVEPOINT s").await.unwrap();
    let e = app.query(select, &[]).await.unwrap_err();
    assert_eq!(code(&e), "39000", "{e:?}");
    app.batch_execute("ROLLBACK TO SAVEPOINT s").await.unwrap();
    let one = app.query("SELECT 1", &[]).await.unwrap();
    assert_eq!(one[0].get::<_, i32>(0), 1);
    app.batch_execute("ROLLBACK").await.unwrap();
    let n: i64 = direct
        .query_one("SELECT count(*) FROM pay_customers WHERE org_id = 7", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "a write before the failure was committed");
    // Outside a transaction block nothing changes: the next statement runs.
    let e = app.query(select, &[]).await.unwrap_err();
    assert_eq!(code(&e), "39000", "{e:?}");
    let one = app.query("SELECT 1", &[]).await.unwrap();
    assert_eq!(one[0].get::<_, i32>(0), 1);
    let r = app
        .query(
            "SELECT name FROM pay_customers WHERE id = $1",
            &[&ids[bad + 2]],
        )
        .await
        .unwrap();
    assert_eq!(r[0].get::<_, String>(0), row(bad + 2).2);

    let logs = fx.pv.logs();
    assert!(logs.contains("decryption failed"), "{logs}");
    for i in [0, bad - 1, bad, bad + 1, ROWS - 1] {
        let (_, email, name) = row(i);
        assert!(
            !logs.contains(&email) && !logs.contains(&name),
            "row {i} in the log"
        );
    }
    fx.assert_no_plaintext(&[
        "bigrow00000@example.com",
        "Big Person 02999",
        "doomed1@example.com",
    ])
    .await;
}
