//! Class 5 of issue 14: catalog and setting changes inside one batch or
//! pipeline. pgveil plans statements before PostgreSQL runs the earlier
//! ones, so DDL is a barrier, renames of protected names are refused, and
//! a settings change in a batch cannot change how a later protected
//! statement is read.

use crate::common::{Calmony, code, err_text};

async fn owner_fixture() -> Calmony {
    let fx = Calmony::start();
    // The attacker owns the table (as an application's migration role
    // often does), so PostgreSQL lets it rename columns.
    fx.pg.psql(
        "app",
        "ALTER TABLE public.users OWNER TO calmony_app; GRANT CREATE ON SCHEMA public TO calmony_app;
         ALTER SCHEMA public OWNER TO calmony_app;",
    );
    fx
}

#[tokio::test]
async fn renaming_protected_names_is_refused() {
    let fx = owner_fixture().await;
    let c = fx.app("calmony_app").await;
    for sql in [
        "ALTER TABLE users RENAME COLUMN name TO n2",
        "ALTER TABLE users RENAME COLUMN email_bidx TO eb",
        "ALTER TABLE public.users RENAME TO users_old",
        "ALTER TABLE users RENAME COLUMN name TO n2; INSERT INTO users (id, n2) VALUES (80, 'batch-rename-80@example.com'); ALTER TABLE users RENAME COLUMN n2 TO name",
        // The policy names tables by schema: renaming the schema would
        // move public.users out of it.
        "ALTER SCHEMA public RENAME TO old_public",
        "ALTER SCHEMA \"public\" RENAME TO old_public; INSERT INTO old_public.users (id, name) VALUES (80, 'batch-rename-80@example.com')",
    ] {
        let e = c.simple_query(sql).await.expect_err(sql);
        assert_eq!(code(&e), "0A000", "{sql}: {}", err_text(&e));
        assert!(err_text(&e).contains("policy"), "{}", err_text(&e));
        assert!(
            !err_text(&e).contains("batch-rename-80"),
            "{}",
            err_text(&e)
        );
    }
    let d = fx.direct().await;
    let cols: i64 = d
        .query_one(
            "SELECT count(*) FROM information_schema.columns WHERE table_name = 'users' AND column_name IN ('name', 'email_bidx')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(cols, 2);
    let schemas: i64 = d
        .query_one(
            "SELECT count(*) FROM pg_namespace WHERE nspname = 'public'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(schemas, 1, "schema public was renamed");
    fx.assert_no_plaintext(&["batch-rename-80@example.com"])
        .await;
}

#[tokio::test]
async fn ddl_is_a_barrier_in_a_simple_query() {
    let fx = owner_fixture().await;
    let c = fx.app("calmony_app").await;
    let e = c
        .simple_query(
            "CREATE VIEW v81 AS SELECT id, name FROM users; INSERT INTO v81 (id, name) VALUES (81, 'batch-view-81@example.com')",
        )
        .await
        .expect_err("refused");
    assert_eq!(code(&e), "0A000", "{}", err_text(&e));
    assert!(err_text(&e).contains("statement 2"), "{}", err_text(&e));
    // The whole query rolled back: the view does not exist either.
    let d = fx.direct().await;
    let n: i64 = d
        .query_one("SELECT count(*) FROM pg_class WHERE relname = 'v81'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    // Sent on its own, the DDL runs; the next query is planned with the
    // re-read catalog, which knows the view is over a protected column.
    c.simple_query("CREATE VIEW v81 AS SELECT id, name FROM users")
        .await
        .unwrap();
    let e = c
        .simple_query("INSERT INTO v81 (id, name) VALUES (81, 'batch-view-81@example.com')")
        .await
        .expect_err("writes through the view are refused");
    assert_eq!(code(&e), "0A000", "{}", err_text(&e));
    assert!(err_text(&e).contains("v81"), "{}", err_text(&e));
    // Inside a transaction block the catalog is only re-read after COMMIT:
    // data statements after DDL on protected tables wait for it.
    c.simple_query("BEGIN").await.unwrap();
    c.simple_query("CREATE VIEW v81b AS SELECT id, name FROM users")
        .await
        .unwrap();
    let e = c
        .simple_query("INSERT INTO v81b (id, name) VALUES (81, 'batch-view-81@example.com')")
        .await
        .expect_err("refused until COMMIT");
    assert_eq!(code(&e), "0A000", "{}", err_text(&e));
    c.simple_query("ROLLBACK").await.unwrap();
    fx.assert_no_plaintext(&["batch-view-81@example.com"]).await;
}

#[tokio::test]
async fn ddl_is_a_barrier_in_a_pipeline() {
    use crate::common::raw::{Raw, bind, errors, execute, parse, sync};
    let fx = owner_fixture().await;
    let mut r = Raw::login_at(fx.pv.port(), "calmony_app").await;
    r.send(&[
        parse("", "CREATE VIEW v82 AS SELECT id, name FROM users"),
        bind("", "", &[]),
        execute(""),
        parse("", "INSERT INTO v82 (id, name) VALUES ($1, $2)"),
        bind("", "", &["82", "batch-pipe-82@example.com"]),
        execute(""),
        sync(),
    ])
    .await;
    let got = r.until_ready().await;
    for (_, body) in got.iter().filter(|m| m.0 == b'E') {
        assert!(
            !String::from_utf8_lossy(body).contains("batch-pipe-82"),
            "value in the error"
        );
    }
    let codes: Vec<String> = errors(&got).into_iter().map(|e| e.1).collect();
    assert_eq!(codes, vec!["0A000".to_string()]);
    let d = fx.direct().await;
    let n: i64 = d
        .query_one("SELECT count(*) FROM users WHERE id = 82", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    fx.assert_no_plaintext(&["batch-pipe-82@example.com"]).await;
}

#[tokio::test]
async fn settings_changes_in_a_batch_are_a_barrier() {
    let fx = owner_fixture().await;
    let c = fx.app("calmony_app").await;
    fx.pg.psql(
        "app",
        "CREATE SCHEMA decoy; CREATE TABLE decoy.users (id bigint, email text, email_bidx bytea, name text, plan text); GRANT ALL ON SCHEMA decoy TO PUBLIC; GRANT ALL ON decoy.users TO PUBLIC;",
    );
    for sql in [
        "SET search_path = decoy, public; INSERT INTO users (id, email) VALUES (83, 'batch-path-83@example.com')",
        "SELECT set_config('search_path', 'decoy', false); INSERT INTO users (id, email) VALUES (84, 'batch-setcfg-84@example.com')",
        "SET standard_conforming_strings = off; INSERT INTO users (id, plan, email) VALUES (85, 'a\\', 'batch-scs-85@example.com')",
        "SET client_encoding = 'SJIS'; INSERT INTO users (id, email) VALUES (86, 'batch-enc-86@example.com')",
    ] {
        let e = c.simple_query(sql).await.expect_err(sql);
        assert_eq!(code(&e), "0A000", "{sql}: {}", err_text(&e));
        assert!(!err_text(&e).contains("@example.com"), "{}", err_text(&e));
    }
    fx.assert_no_plaintext(&[
        "batch-path-83@example.com",
        "batch-setcfg-84@example.com",
        "batch-scs-85@example.com",
        "batch-enc-86@example.com",
    ])
    .await;
}
