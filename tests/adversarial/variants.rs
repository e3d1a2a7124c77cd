//! Variants from the fourth attacker review (classes 6 and 7): protected
//! columns reached by position where pgveil's analysis saw no column name:
//! `u.*` of an enclosing query, row constructors, `*` over relations whose
//! width pgveil does not know, VALUES, JOIN … USING.
//! Each attack asserts the refusal (SQLSTATE, no value in the message), and
//! the test ends with the plaintext scan.

use crate::common::*;

async fn refused(c: &tokio_postgres::Client, who: &str, sql: &str, secrets: &[&str]) {
    assert_refused(c, who, sql, &["42501", "0A000"], secrets).await;
}

/// `u.*` inside a LATERAL subquery (or a row constructor) expands to every
/// column of `u` in table order, so the subquery's column aliases and the
/// row's `fN` fields name protected columns and blind indexes by position.
/// A role without `search` groups rows by blind index (an equality
/// oracle) or reads the blind index; a reading role compares a protected
/// column with a literal, which would go to PostgreSQL as plain text.
#[tokio::test]
async fn outer_star_in_lateral_subqueries_and_row_fields_name_protected_columns() {
    let fx = Calmony::start();
    let victim = "variants-lateral-victim-4411@example.com";
    let app = fx.app("calmony_app").await;
    for _ in 0..2 {
        app.execute(
            "INSERT INTO users (email, name) VALUES ($1, 'Lateral Victim')",
            &[&victim],
        )
        .await
        .unwrap();
    }
    // users: id, email, email_bidx, name, plan, created_at.
    let oracles = [
        "SELECT x.c, count(*) FROM users u, LATERAL (SELECT u.*) x(a, b, c) GROUP BY x.c",
        "SELECT count(DISTINCT x.c) FROM users u, LATERAL (SELECT u.*) x(a, b, c)",
        "SELECT count(DISTINCT c) FROM users u JOIN LATERAL (SELECT u.*) x(a, b, c) ON true",
        "SELECT count(DISTINCT c) FROM users u, LATERAL (SELECT u.* LIMIT 1) x(a, b, c)",
        "SELECT count(DISTINCT c) FROM users u, LATERAL (SELECT u.* UNION ALL SELECT u.*) x(a, b, c)",
        "SELECT count(DISTINCT c) FROM users, LATERAL (SELECT users.*) x(a, b, c)",
        "SELECT x.c FROM users u, LATERAL (SELECT u.*) x(a, b, c)",
        "SELECT (ROW(u.*)).f3 FROM users u",
        "SELECT count(*) FROM users u GROUP BY (ROW(u.*)).f3",
        "SELECT count(DISTINCT (ROW(u.*, 1)).f3) FROM users u",
    ];
    for who in ["dba", "signup"] {
        let c = fx.app(who).await;
        for sql in oracles {
            refused(&c, who, sql, &[victim]).await;
        }
    }
    let s_email = "variants-lateral-lookup-4412@example.com";
    let s_name = "Variants Lateral Name 4413";
    let lookups = [
        format!(
            "SELECT u.id FROM users u, LATERAL (SELECT u.*) x(a, b, c) WHERE x.b = '{s_email}'"
        ),
        format!(
            "SELECT u.id FROM users u, LATERAL (SELECT u.*) x(a, b, c, d) WHERE d = '{s_name}'"
        ),
        format!("SELECT u.id FROM users u WHERE (ROW(u.*)).f4 = '{s_name}'"),
        format!("SELECT u.id FROM users u WHERE (ROW(u.*)).f2 = '{s_email}'"),
    ];
    for sql in &lookups {
        refused(&app, "calmony_app", sql, &[s_email, s_name]).await;
    }
    fx.assert_no_plaintext(&[victim, s_email, s_name]).await;
}

/// `*` over a relation whose columns pgveil does not know (a FROM function,
/// VALUES, a plain table) shifts every later column by its width; so does
/// the merged USING column of a join. Column aliases, ordinals and set
/// operations then name protected columns pgveil took for plain ones.
#[tokio::test]
async fn relations_of_unknown_width_shift_the_positions_of_protected_columns() {
    let fx = Calmony::builder()
        .extra_sql("CREATE TABLE public.blobs (k bigint, v bytea);")
        .start();
    let victim = "variants-shift-victim-4421@example.com";
    let app = fx.app("calmony_app").await;
    for _ in 0..2 {
        app.execute(
            "INSERT INTO users (email, name) VALUES ($1, 'Shift Victim')",
            &[&victim],
        )
        .await
        .unwrap();
    }
    // users: id, email, email_bidx, name, plan, created_at; the fifth
    // column after two of unknown width is email_bidx.
    let oracles = [
        "SELECT x.e, count(*) FROM (SELECT * FROM blobs b, users u) x(a, b, c, d, e) GROUP BY x.e",
        "SELECT x.e, count(*) FROM (SELECT * FROM generate_series(1, 1) WITH ORDINALITY g, users u) x(a, b, c, d, e) GROUP BY x.e",
        "SELECT x.e, count(*) FROM (SELECT g.*, u.* FROM generate_series(1, 1) WITH ORDINALITY g, users u) x(a, b, c, d, e) GROUP BY x.e",
        "SELECT count(*) FROM (SELECT DISTINCT ON (5) * FROM (VALUES (1, 2)) p, users u) s",
        "WITH t(a, b, c, d, e) AS (SELECT * FROM (VALUES (1, 2)) p, users u) SELECT count(DISTINCT e) FROM t",
    ];
    for who in ["dba", "signup"] {
        let c = fx.app(who).await;
        for sql in oracles {
            refused(&c, who, sql, &[victim]).await;
        }
    }
    let s1 = "variants-shift-lookup-4422@example.com";
    let s2 = "variants-shift-lookup-4423@example.com";
    let s3 = "variants-shift-lookup-4424@example.com";
    let lookups = [
        // a = g, b = h, c = ordinality, d = id, e = email.
        format!(
            "SELECT x.d FROM (SELECT * FROM generate_series(1, 1) g, generate_series(1, 1) WITH ORDINALITY h, users u) x(a, b, c, d, e) WHERE x.e = '{s1}'"
        ),
        // The second column of the union is email.
        format!(
            "SELECT x.a FROM (SELECT * FROM blobs UNION ALL SELECT id, email FROM users) x(a, b) WHERE x.b = '{s2}'"
        ),
        // USING (id) shows id once: the eighth column is p.email.
        format!(
            "SELECT x.c1 FROM (SELECT * FROM users u JOIN pay_customers p USING (id)) x(c1, c2, c3, c4, c5, c6, c7, c8) WHERE x.c8 = '{s3}'"
        ),
    ];
    for sql in &lookups {
        refused(&app, "calmony_app", sql, &[s1, s2, s3]).await;
    }
    fx.assert_no_plaintext(&[victim, s1, s2, s3]).await;
}

/// A write naming a column the protected table does not have (a quoted
/// name in the wrong case, a typo) fails in PostgreSQL, which logs the
/// failing statement with its values by default: pgveil refuses it with
/// PostgreSQL's SQLSTATE before anything is sent, in the simple and the
/// extended protocol, for INSERT, UPDATE and ON CONFLICT DO UPDATE.
#[tokio::test]
async fn writes_to_columns_a_protected_table_does_not_have_are_refused_before_sending() {
    let fx = Calmony::start();
    let app = fx.app("calmony_app").await;
    let s = [
        "variants-typo-one-5511@example.com",
        "variants-typo-two-5512@example.com",
        "variants-typo-three-5513@example.com",
        "variants-typo-four-5514@example.com",
    ];
    let simple = [
        format!(
            "INSERT INTO users (\"Email\", name) VALUES ('{}', 'n')",
            s[0]
        ),
        format!("UPDATE users SET \"NAME\" = '{}' WHERE id = 1", s[1]),
        format!(
            "INSERT INTO users (email, name) VALUES ('a@example.com', 'n') ON CONFLICT (id) DO UPDATE SET emial = '{}'",
            s[2]
        ),
    ];
    for sql in &simple {
        let e = app.simple_query(sql).await.unwrap_err();
        assert_eq!(code(&e), "42703", "{sql}: {}", err_text(&e));
        let text = err_text(&e);
        assert!(
            text.contains("pgveil: column"),
            "refused by PostgreSQL, not pgveil: {text}"
        );
        assert!(!s.iter().any(|v| text.contains(v)), "{text}");
    }
    let e = app
        .execute(
            "INSERT INTO users (\"Email\", name) VALUES ($1, $2)",
            &[&s[3], &"n"],
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e), "42703", "{}", err_text(&e));
    assert!(err_text(&e).contains("pgveil: column"), "{}", err_text(&e));
    // The right names still work on the same connection.
    app.execute(
        "INSERT INTO users (email, name) VALUES ($1, $2)",
        &[&"variants-typo-ok@example.com", &"n"],
    )
    .await
    .unwrap();
    fx.assert_no_plaintext(&s).await;
}
