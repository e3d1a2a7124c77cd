//! Reads that could carry protected data past the analysis (issue 14,
//! classes 1, 6 and 7, second review): column aliases and ordinals over
//! `*`, set operations, functions and views that read tables by name,
//! relations filled from protected queries, cursors, views that show a
//! blind index, FROM functions that see earlier FROM items, and field
//! writes. Each attack asserts the refusal (SQLSTATE, no value in the
//! message) and ends with the plaintext scan.

use crate::common::*;

/// Every statement in `sqls` is refused for `c` with one of `codes`, by a
/// message that carries none of `secrets`.
async fn all_refused(
    c: &tokio_postgres::Client,
    who: &str,
    sqls: &[String],
    codes: &[&str],
    secrets: &[&str],
) {
    for sql in sqls {
        assert_refused(c, who, sql, codes, secrets).await;
    }
}

/// A write-only role inserts a guess and tries to compare its blind index
/// with the other rows through every shape that hides the column's name:
/// column aliases and ordinals over `*`, set operations, copies into its
/// own table, cursors, relations filled from a query.
#[tokio::test]
async fn write_only_roles_get_no_blind_index_through_star() {
    let fx = Calmony::builder()
        .extra_sql(
            "GRANT CREATE ON SCHEMA public TO PUBLIC;
             CREATE TABLE public.scratch (a bigint, b bytea, c bytea, d text, e text, f timestamptz);",
        )
        .start();
    let victim = "reads-star-victim-7731@example.com";
    let app = fx.app("calmony_app").await;
    app.execute(
        "INSERT INTO users (email, name) VALUES ($1, 'Star Victim')",
        &[&victim],
    )
    .await
    .unwrap();
    let signup = fx.app("signup").await;
    signup
        .execute("INSERT INTO users (email) VALUES ($1)", &[&victim])
        .await
        .unwrap();
    let sqls: Vec<String> = [
        "SELECT count(*) FROM (SELECT * FROM users) s(a, b, c) GROUP BY c HAVING count(*) > 1",
        "SELECT s.a, encode(s.c, 'hex') FROM (SELECT * FROM users) s(a, b, c)",
        "WITH s(a, b, c) AS (SELECT * FROM users) SELECT encode(c, 'hex') FROM s",
        "SELECT count(*) FROM (SELECT DISTINCT ON (3) * FROM users) s",
        "SELECT * FROM users ORDER BY 3",
        "SELECT * FROM users UNION ALL SELECT * FROM users WHERE false",
        "SELECT * FROM users INTERSECT ALL SELECT * FROM users",
        "INSERT INTO scratch SELECT * FROM users",
        "CREATE TABLE public.scratch2 AS SELECT * FROM users",
        "SELECT * INTO public.scratch3 FROM users",
        "CREATE MATERIALIZED VIEW public.mv_star AS SELECT * FROM users",
        "COPY (SELECT * FROM users) TO STDOUT",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    all_refused(&signup, "signup", &sqls, &["42501", "0A000"], &[victim]).await;
    signup.simple_query("ROLLBACK").await.unwrap();
    // Nothing was copied out.
    let d = fx.direct().await;
    let n: i64 = d
        .query_one("SELECT count(*) FROM public.scratch", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    let made: i64 = d
        .query_one(
            "SELECT count(*) FROM pg_class WHERE relname IN ('scratch2', 'scratch3', 'mv_star')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(made, 0, "a relation was filled from users");
    // A cursor may not carry the blind index at all (a dynamic FETCH in a
    // DO block would read it unmasked).
    let e = signup
        .simple_query("BEGIN; DECLARE c CURSOR FOR SELECT * FROM users; FETCH ALL FROM c")
        .await
        .unwrap_err();
    assert_eq!(code(&e), "42501");
    signup.simple_query("ROLLBACK").await.unwrap();
    // A role that may search reads the same shapes it needs.
    let r = app
        .simple_query("SELECT s.a FROM (SELECT * FROM users) s(a, b, c) ORDER BY 1")
        .await
        .unwrap();
    assert_eq!(simple_rows(&r).len(), 2);
    fx.assert_no_plaintext(&[victim, "Star Victim"]).await;
}

/// Column aliases over `*` name the columns PostgreSQL has in table order:
/// `s.d` is `name`, a protected column, so a comparison with a literal is a
/// lookup pgveil must plan (or refuse), never a plain comparison that sends
/// the literal. Functions in FROM see the items before them (implicit
/// LATERAL) just as PostgreSQL lets them.
#[tokio::test]
async fn aliases_and_from_functions_resolve_columns_as_postgresql_does() {
    let fx = Calmony::start();
    let s1 = "Reads-Derived-Sentinel-5501";
    let s2 = "Reads-Lateral-Sentinel-5502";
    let s3 = "Reads-Lateral-Sub-Sentinel-5503";
    let s4 = "Reads-Notation-Sentinel-5504";
    let dba = fx.app("dba").await;
    let sqls = vec![
        format!("SELECT s.a FROM (SELECT * FROM users) s(a, b, c, d) WHERE s.d = '{s1}'"),
        format!(
            "SELECT g FROM users u, generate_series(1, CASE WHEN u.name = '{s2}' THEN 1 ELSE 0 END) g"
        ),
        format!("SELECT x FROM users u, unnest(ARRAY[u.name = '{s2}']) x"),
        format!("SELECT g FROM users u, generate_series(1, (SELECT 1 WHERE u.name = '{s3}')) g"),
        format!("SELECT id FROM users u WHERE name(u) = '{s4}'"),
    ];
    all_refused(&dba, "dba", &sqls, &["42501", "0A000"], &[s1, s2, s3, s4]).await;
    fx.assert_no_plaintext(&[s1, s2, s3, s4]).await;
}

/// Functions and views that read tables the statement does not name.
#[tokio::test]
async fn functions_that_read_tables_by_name_are_refused() {
    let fx = Calmony::start();
    let app = fx.app("calmony_app").await;
    let victim = "reads-xml-victim-7734@example.com";
    for i in 0..3 {
        app.execute(
            "INSERT INTO users (email, name) VALUES ($1, $2)",
            &[&victim, &format!("Xml Victim {i}")],
        )
        .await
        .unwrap();
    }
    fx.direct()
        .await
        .simple_query("ANALYZE users")
        .await
        .unwrap();
    let secret = "Reads Xml Sentinel 7736";
    for role in ["signup", "dba", "calmony_app"] {
        let c = fx.app(role).await;
        let sqls = vec![
            "SELECT schema_to_xml('public', false, false, '')::text".to_string(),
            "SELECT table_to_xml('users', false, false, '')::text".to_string(),
            "SELECT database_to_xml(false, false, '')::text".to_string(),
            "SELECT query_to_xml('SELECT id, email_bidx FROM users', false, false, '')::text"
                .to_string(),
            format!(
                "SELECT query_to_xml('SELECT id FROM users WHERE name = ''{secret}''', false, false, '')"
            ),
            "SELECT \"query_to_xml\"('SELECT 1', false, false, '')".to_string(),
            "SELECT most_common_vals::text FROM pg_stats WHERE tablename = 'users'".to_string(),
            "SELECT * FROM pg_catalog.pg_stats".to_string(),
        ];
        all_refused(&c, role, &sqls, &["42501", "0A000"], &[secret, victim]).await;
    }
    fx.assert_no_plaintext(&[victim, secret]).await;
}

/// A view that shows a blind index (under its own name or another), read
/// by a role that may not search it or reached through a statement that
/// names another protected table.
#[tokio::test]
async fn blind_indexes_reached_through_views_need_search() {
    let fx = Calmony::builder()
        .extra_sql("CREATE VIEW public.user_dir AS SELECT id, email, email_bidx FROM public.users;")
        .start();
    let victim = "reads-view-victim-7737@example.com";
    let app = fx.app("calmony_app").await;
    app.execute("INSERT INTO users (email) VALUES ($1)", &[&victim])
        .await
        .unwrap();
    let signup = fx.app("signup").await;
    let sqls: Vec<String> = [
        "SELECT * FROM user_dir",
        "SELECT email_bidx FROM user_dir",
        "SELECT d.* FROM user_dir d",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    all_refused(&signup, "signup", &sqls, &["42501"], &[victim]).await;
    // support_agent may search pay_customers.email (whose blind index has
    // the same name) but not users.email.
    let support = fx.app("support_agent").await;
    let sqls = vec![
        "SELECT encode(d.email_bidx, 'hex') FROM user_dir d LEFT JOIN pay_customers p ON false"
            .to_string(),
    ];
    all_refused(&support, "support_agent", &sqls, &["42501"], &[victim]).await;
    // The reading role sees the view as before.
    let r = app
        .simple_query("SELECT email FROM user_dir")
        .await
        .unwrap();
    assert_eq!(simple_rows(&r), vec![vec![Some(victim.to_string())]]);
    fx.assert_no_plaintext(&[victim]).await;
}

/// `name.x` and `name[1]` in a write target are a field or element of
/// column `name` to PostgreSQL (which then rejects the statement and logs
/// it, values included): refused before anything is sent.
#[tokio::test]
async fn field_writes_into_protected_columns_are_refused() {
    let fx = Calmony::start();
    let s1 = "Reads-Field-Sentinel-6601";
    let s2 = "Reads-Field-Sentinel-6602";
    let app = fx.app("calmony_app").await;
    let sqls = vec![
        format!("UPDATE users SET name.x = '{s1}'"),
        format!("INSERT INTO users (name.x) VALUES ('{s2}')"),
        format!("UPDATE users SET plan = 'p', name.x = '{s1}' WHERE id = 1"),
    ];
    all_refused(&app, "calmony_app", &sqls, &["0A000"], &[s1, s2]).await;
    fx.assert_no_plaintext(&[s1, s2]).await;
}

/// Built-ins that run SQL given as a string (`ts_stat`, `ts_rewrite`), also
/// with the names split by `||` so that no protected name appears: refused
/// by name.
#[tokio::test]
async fn functions_that_run_sql_from_a_string_are_refused() {
    let fx = Calmony::start();
    let victim = "reads-tsstat-victim-8811@example.com";
    let app = fx.app("calmony_app").await;
    app.execute(
        "INSERT INTO users (email, name) VALUES ($1, 'Ts Victim')",
        &[&victim],
    )
    .await
    .unwrap();
    let signup = fx.app("signup").await;
    signup
        .execute("INSERT INTO users (email) VALUES ($1)", &[&victim])
        .await
        .unwrap();
    let sqls: Vec<String> = [
        "SELECT word, ndoc FROM ts_stat('SELECT to_tsvector(''simple'', encode(email_bidx, ''hex'')) FROM users') ORDER BY ndoc DESC",
        "SELECT word, ndoc FROM ts_stat('SELECT to_tsvector(''simple'', encode(email_' || 'bidx, ''hex'')) FROM us' || 'ers')",
        "SELECT word FROM pg_catalog.ts_stat('SELECT 1', 'a')",
        "SELECT ts_rewrite('x'::tsquery, 'SELECT ''x''::tsquery, (''b'' || encode(email_bidx, ''hex''))::tsquery FROM users')::text",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    all_refused(&signup, "signup", &sqls, &["0A000", "42501"], &[victim]).await;
    fx.assert_no_plaintext(&[victim]).await;
}

/// Row comparisons with a row subquery compare element by element in
/// PostgreSQL: a literal paired with a protected column must not be sent.
/// EXPLAIN of a write would print the envelope and blind index pgveil
/// computed for the written value.
#[tokio::test]
async fn row_subqueries_and_explain_of_writes_are_refused() {
    let fx = Calmony::start();
    let s1 = "reads-rowcmp-sentinel-8812@example.com";
    let s2 = "reads-rowany-sentinel-8813@example.com";
    let guess = "reads-explain-guess-8814@example.com";
    let app = fx.app("calmony_app").await;
    let sqls = vec![
        format!("SELECT 1/0 WHERE ('{s1}', 1::bigint) = (SELECT email, id FROM users LIMIT 1)"),
        format!("SELECT 1/0 WHERE ('{s2}', 1::bigint) = ANY (SELECT email, id FROM users)"),
        format!("SELECT 1 WHERE ROW('{s1}', 1::bigint) <> ALL (SELECT email, id FROM users)"),
        format!(
            "SELECT 1 WHERE ('{s1}', 1::bigint) IS DISTINCT FROM (SELECT email, id FROM users LIMIT 1)"
        ),
    ];
    all_refused(&app, "calmony_app", &sqls, &["0A000"], &[s1, s2]).await;
    for role in ["signup", "calmony_app"] {
        let c = fx.app(role).await;
        let sqls = vec![
            format!("EXPLAIN (VERBOSE, COSTS OFF) INSERT INTO users (email) VALUES ('{guess}')"),
            format!("EXPLAIN ANALYZE INSERT INTO users (email) VALUES ('{guess}')"),
            format!("EXPLAIN (VERBOSE) UPDATE users SET email = '{guess}' WHERE id = 1"),
        ];
        all_refused(&c, role, &sqls, &["0A000"], &[guess]).await;
    }
    // EXPLAIN of a read still works.
    let r = app
        .simple_query("EXPLAIN SELECT id FROM users WHERE email = 'x@example.com'")
        .await
        .unwrap();
    assert!(!simple_rows(&r).is_empty());
    fx.assert_no_plaintext(&[s1, s2, guess]).await;
}
