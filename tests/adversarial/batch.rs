//! Class 5 of issue 14: catalog and setting changes inside one batch or
//! pipeline. pgveil plans statements before PostgreSQL runs the earlier
//! ones, so DDL is a barrier, renames of protected names are refused, and
//! a settings change in a batch cannot change how a later protected
//! statement is read.

use crate::common::{Calmony, code, err_text};

/// Raw extended-protocol frames (tokio-postgres cannot pipeline DDL and a
/// Parse before one Sync).
mod frames {
    pub fn parse(name: &str, sql: &str) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(name.as_bytes());
        body.push(0);
        body.extend_from_slice(sql.as_bytes());
        body.push(0);
        body.extend_from_slice(&0i16.to_be_bytes());
        msg(b'P', &body)
    }
    pub fn bind(stmt: &str, params: &[&str]) -> Vec<u8> {
        let mut body = vec![0u8]; // unnamed portal
        body.extend_from_slice(stmt.as_bytes());
        body.push(0);
        body.extend_from_slice(&0i16.to_be_bytes());
        body.extend_from_slice(&(params.len() as i16).to_be_bytes());
        for p in params {
            body.extend_from_slice(&(p.len() as i32).to_be_bytes());
            body.extend_from_slice(p.as_bytes());
        }
        body.extend_from_slice(&0i16.to_be_bytes());
        msg(b'B', &body)
    }
    pub fn execute() -> Vec<u8> {
        let mut body = vec![0u8];
        body.extend_from_slice(&0i32.to_be_bytes());
        msg(b'E', &body)
    }
    pub fn sync() -> Vec<u8> {
        msg(b'S', &[])
    }
    /// Connect with trust auth and read up to the first ReadyForQuery.
    pub async fn connect(port: u16, user: &str, db: &str) -> tokio::net::TcpStream {
        use tokio::io::AsyncWriteExt;
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let mut body = 196608i32.to_be_bytes().to_vec();
        for (k, v) in [("user", user), ("database", db)] {
            body.extend_from_slice(k.as_bytes());
            body.push(0);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut m = ((body.len() + 4) as i32).to_be_bytes().to_vec();
        m.extend_from_slice(&body);
        s.write_all(&m).await.unwrap();
        loop {
            let (tag, _) = read(&mut s).await;
            assert_ne!(tag, b'E', "login failed");
            if tag == b'Z' {
                return s;
            }
        }
    }
    pub async fn read(s: &mut tokio::net::TcpStream) -> (u8, Vec<u8>) {
        use tokio::io::AsyncReadExt;
        let tag = s.read_u8().await.unwrap();
        let len = s.read_i32().await.unwrap();
        let mut body = vec![0u8; len as usize - 4];
        s.read_exact(&mut body).await.unwrap();
        (tag, body)
    }
    /// A field of an ErrorResponse body.
    pub fn error_field(body: &[u8], code: u8) -> String {
        let mut i = 0;
        while i < body.len() && body[i] != 0 {
            let end = i + 1 + body[i + 1..].iter().position(|&b| b == 0).unwrap();
            if body[i] == code {
                return String::from_utf8_lossy(&body[i + 1..end]).into_owned();
            }
            i = end + 1;
        }
        String::new()
    }
    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        m.extend_from_slice(body);
        m
    }
}

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
    use tokio::io::AsyncWriteExt;
    let fx = owner_fixture().await;
    let mut s = frames::connect(fx.pv.port(), "calmony_app", "app").await;
    let mut out = Vec::new();
    out.extend(frames::parse(
        "",
        "CREATE VIEW v82 AS SELECT id, name FROM users",
    ));
    out.extend(frames::bind("", &[]));
    out.extend(frames::execute());
    out.extend(frames::parse(
        "",
        "INSERT INTO v82 (id, name) VALUES ($1, $2)",
    ));
    out.extend(frames::bind("", &["82", "batch-pipe-82@example.com"]));
    out.extend(frames::execute());
    out.extend(frames::sync());
    s.write_all(&out).await.unwrap();
    let mut codes = vec![];
    loop {
        let (tag, body) = frames::read(&mut s).await;
        if tag == b'E' {
            codes.push(frames::error_field(&body, b'C'));
            assert!(
                !String::from_utf8_lossy(&body).contains("batch-pipe-82"),
                "value in the error"
            );
        }
        if tag == b'Z' {
            break;
        }
    }
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
