//! `COPY … TO STDOUT` through pgveil with the reference policy (issue 15):
//! a role that may `read` a protected column gets it decrypted, in text,
//! CSV and binary format, byte for byte what PostgreSQL would send for a
//! table holding the plaintext (a temporary mirror table in the direct
//! session, dropped before the plaintext scan); every other role gets the
//! bytes PostgreSQL sends. Both protocols: tokio-postgres `copy_out`
//! (Parse/Bind/Execute) and a raw simple Query. Values that no longer
//! decrypt end the COPY with an error and nothing of their row.

mod common;

use bytes::Bytes;
use futures::TryStreamExt;

use common::raw::{self, Raw};
use common::*;

/// What a COPY TO returned: the CopyData payloads, and the error (SQLSTATE
/// and message) if it failed.
#[derive(Debug, Default)]
struct Copied {
    data: Vec<Vec<u8>>,
    error: Option<(String, String)>,
}

impl Raw {
    /// COPY TO sent as a simple Query.
    async fn copy_out(&mut self, sql: &str) -> Copied {
        self.send(&[raw::query(sql)]).await;
        let msgs = self.until_ready().await;
        Copied {
            data: raw::copy_data_of(&msgs),
            error: raw::first_error(&msgs),
        }
    }
}

/// COPY TO through tokio-postgres: the CopyData payloads, or the error.
async fn copy_out(c: &tokio_postgres::Client, sql: &str) -> Copied {
    let stream = match c.copy_out(sql).await {
        Ok(s) => s,
        Err(e) => {
            return Copied {
                data: vec![],
                error: Some((code(&e), err_text(&e))),
            };
        }
    };
    futures::pin_mut!(stream);
    let mut got = Copied::default();
    loop {
        match stream.try_next().await {
            Ok(Some(b)) => got.data.push(b.to_vec()),
            Ok(None) => return got,
            Err(e) => {
                got.error = Some((code(&e), err_text(&e)));
                return got;
            }
        }
    }
}

/// The whole COPY through both protocols: the two must agree.
async fn both(c: &tokio_postgres::Client, raw: &mut Raw, sql: &str) -> Vec<u8> {
    let a = copy_out(c, sql).await;
    assert!(a.error.is_none(), "{sql}: {:?}", a.error);
    let b = raw.copy_out(sql).await;
    assert!(b.error.is_none(), "{sql} (simple Query): {:?}", b.error);
    assert_eq!(a.data, b.data, "{sql}: the two protocols differ");
    a.data.concat()
}

/// Direct to PostgreSQL (the expected bytes).
async fn direct(d: &tokio_postgres::Client, sql: &str) -> Vec<u8> {
    let got = copy_out(d, sql).await;
    assert!(got.error.is_none(), "{sql}: {:?}", got.error);
    got.data.concat()
}

/// Options covering the formats and the options pgveil must respect.
const OPTIONS: &[&str] = &[
    "",
    "(DELIMITER '|', NULL 'nil')",
    "(FORMAT text, HEADER)",
    "(FORMAT csv)",
    "(FORMAT csv, HEADER)",
    "WITH CSV HEADER",
    "(FORMAT csv, DELIMITER ';', QUOTE '''', ESCAPE '\\', NULL 'nil')",
    "(FORMAT csv, DELIMITER '|', FORCE_QUOTE (name))",
    "(FORMAT binary)",
];

/// `users` rows: (id, email, name), values that matter to COPY's formats.
fn user_rows() -> Vec<(i64, Option<&'static str>, &'static str)> {
    vec![
        (1, Some("copy-out-plain-1@example.com"), "CopyOut Plain One"),
        (
            2,
            Some("copy-out,comma-2@example.com"),
            "CopyOut \"Quoted\", Tab\there 2",
        ),
        (
            3,
            Some("copy-out-nl-3@example.com"),
            "CopyOut Line\nBreak\\Back\rCR 3",
        ),
        (4, None, "CopyOut Ünïcødé 名前 😀 4"),
        (5, Some("copy-out-empty-5@example.com"), ""),
        (
            6,
            Some("\\N copy-out-backslash-6@example.com"),
            "CopyOut x|pipe;semi'apos 6",
        ),
        (7, Some("copy-out-dot-7@example.com"), "\\."),
    ]
}

const USER_SENTINELS: &[&str] = &[
    "copy-out-plain-1@example.com",
    "CopyOut Plain One",
    "copy-out,comma-2@example.com",
    "copy-out-nl-3@example.com",
    "Break\\Back",
    "copy-out-backslash-6@example.com",
    "semi'apos",
];

/// Write the rows through pgveil (encrypted) and into a temporary mirror
/// table `m_users` in the direct session `d` (plaintext).
async fn seed_users(app: &tokio_postgres::Client, d: &tokio_postgres::Client) {
    d.batch_execute("CREATE TEMP TABLE m_users (id bigint, email text, name text)")
        .await
        .unwrap();
    for (id, email, name) in user_rows() {
        app.execute(
            "INSERT INTO users (id, email, name) VALUES ($1, $2, $3)",
            &[&id, &email, &name],
        )
        .await
        .unwrap();
        d.execute(
            "INSERT INTO m_users VALUES ($1, $2, $3)",
            &[&id, &email, &name],
        )
        .await
        .unwrap();
    }
}

#[tokio::test]
async fn a_read_role_gets_what_postgresql_would_send_for_the_plaintext() {
    let fx = Calmony::start();
    let app = fx.app("calmony_app").await;
    let d = fx.direct().await;
    seed_users(&app, &d).await;
    let mut raw = Raw::login_at(fx.pv.port(), "calmony_app").await;
    // SELECT shows the same values (the mirror is right).
    let rows = app
        .query("SELECT id, email, name FROM users ORDER BY id", &[])
        .await
        .unwrap();
    let got: Vec<(i64, Option<String>, String)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let want: Vec<(i64, Option<String>, String)> = user_rows()
        .into_iter()
        .map(|(i, e, n)| (i, e.map(str::to_string), n.to_string()))
        .collect();
    assert_eq!(got, want);
    for opts in OPTIONS {
        for (through, mirror) in [
            (
                format!("COPY users (id, email, name) TO STDOUT {opts}"),
                format!("COPY m_users (id, email, name) TO STDOUT {opts}"),
            ),
            (
                format!("COPY public.users (name, id, email) TO STDOUT {opts}"),
                format!("COPY m_users (name, id, email) TO STDOUT {opts}"),
            ),
            (
                format!(
                    "COPY (SELECT u.id, u.email AS mail, upper(u.plan), u.name FROM users u WHERE u.id > 1 ORDER BY u.id) TO STDOUT {opts}"
                ),
                format!(
                    "COPY (SELECT m.id, m.email AS mail, upper(u.plan), m.name FROM users u JOIN m_users m USING (id) WHERE u.id > 1 ORDER BY u.id) TO STDOUT {opts}"
                ),
            ),
            (
                format!("COPY users TO STDOUT {opts}"),
                format!(
                    "COPY (SELECT u.id, m.email, u.email_bidx, m.name, u.plan, u.created_at FROM users u JOIN m_users m USING (id) ORDER BY u.id) TO STDOUT {opts}"
                ),
            ),
        ] {
            if opts.contains("FORCE_QUOTE") && !through.contains("name") {
                continue;
            }
            let got = both(&app, &mut raw, &through).await;
            let want = direct(&d, &mirror).await;
            assert_eq!(
                String::from_utf8_lossy(&got),
                String::from_utf8_lossy(&want),
                "{through}"
            );
            assert_eq!(got, want, "{through}");
        }
    }
    // Every row is a CopyData of its own, as PostgreSQL sends them.
    let got = copy_out(&app, "COPY users (id, name) TO STDOUT (FORMAT csv)").await;
    assert_eq!(got.data.len(), user_rows().len());
    // The audit log records the decrypting COPYs, with their row counts.
    let text = std::fs::read_to_string(fx.pv.dir().join("audit.jsonl")).unwrap();
    let recs: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let copies: Vec<&serde_json::Value> = recs
        .iter()
        .filter(|r| r["decrypted"] == true && r["command"].as_str().unwrap().starts_with("COPY"))
        .collect();
    assert!(!copies.is_empty(), "no COPY in the audit log: {text}");
    assert!(copies.iter().all(|r| r["login_role"] == "calmony_app"));
    assert!(copies.iter().any(|r| {
        r["rows"] == 7
            && r["columns"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c == "public.users.name")
    }));
    drop(raw);
    d.batch_execute("DROP TABLE m_users").await.unwrap();
    drop(d);
    fx.assert_no_plaintext(USER_SENTINELS).await;
}

#[tokio::test]
async fn other_roles_get_the_bytes_postgresql_sends() {
    let fx = Calmony::start();
    let app = fx.app("calmony_app").await;
    let d = fx.direct().await;
    seed_users(&app, &d).await;
    d.batch_execute("DROP TABLE m_users").await.unwrap();
    for role in ["signup", "dba", "support_agent"] {
        let c = fx.app(role).await;
        let mut raw = Raw::login_at(fx.pv.port(), role).await;
        for opts in OPTIONS {
            for sql in [
                format!("COPY users (id, email, name) TO STDOUT {opts}"),
                format!("COPY (SELECT id, email, name FROM users ORDER BY id) TO STDOUT {opts}"),
            ] {
                if opts.contains("FORCE_QUOTE") && !sql.contains("name") {
                    continue;
                }
                let got = both(&c, &mut raw, &sql).await;
                assert_eq!(got, direct(&d, &sql).await, "{role}: {sql}");
            }
        }
        // Blind indexes stay refused to roles that may not search.
        for sql in [
            "COPY users TO STDOUT",
            "COPY (SELECT email_bidx FROM users) TO STDOUT",
        ] {
            let got = copy_out(&c, sql).await;
            let (code, msg) = got.error.unwrap_or_else(|| panic!("{role}: {sql} ran"));
            assert_eq!(code, "42501", "{role}: {sql}: {msg}");
            assert!(got.data.is_empty());
        }
    }
    fx.assert_no_plaintext(USER_SENTINELS).await;
}

#[tokio::test]
async fn tenant_tables_and_other_types() {
    let fx = Calmony::start();
    let app = fx.app("calmony_app").await;
    let d = fx.direct().await;
    d.batch_execute(
        "CREATE TEMP TABLE m_cust (id bigint, org_id bigint, email text, name text);
         CREATE TEMP TABLE m_prof (id bigint, legal_name text, date_of_birth date, risk_score int4)",
    )
    .await
    .unwrap();
    let cust: Vec<(i64, i64, Option<&str>, Option<&str>)> = vec![
        (
            1,
            10,
            Some("tenant-ten-1@example.com"),
            Some("Tenant Ten One"),
        ),
        (2, 20, Some("tenant-twenty-2@example.com"), None),
        (3, 10, None, Some("Tenant Ten, \"Three\"")),
        (
            4,
            30,
            Some("tenant-thirty-4@example.com"),
            Some("Tenant Thirty Four"),
        ),
    ];
    for (id, org, email, name) in &cust {
        app.execute(
            "INSERT INTO pay_customers (id, org_id, email, name) VALUES ($1, $2, $3, $4)",
            &[id, org, email, name],
        )
        .await
        .unwrap();
        d.execute(
            "INSERT INTO m_cust VALUES ($1, $2, $3, $4)",
            &[id, org, email, name],
        )
        .await
        .unwrap();
    }
    let clinician = fx.app("clinician").await;
    clinician
        .batch_execute(
            "INSERT INTO phi.member_profile (id, legal_name, date_of_birth, risk_score) VALUES
             (1, 'Profile Legal One', '1980-02-29', 42),
             (2, NULL, '2001-12-31', '-7'),
             (3, 'Profile Legal Three', NULL, NULL)",
        )
        .await
        .unwrap();
    d.batch_execute(
        "INSERT INTO m_prof VALUES
         (1, 'Profile Legal One', '1980-02-29', 42),
         (2, NULL, '2001-12-31', -7),
         (3, 'Profile Legal Three', NULL, NULL)",
    )
    .await
    .unwrap();
    let mut raw = Raw::login_at(fx.pv.port(), "calmony_app").await;
    let mut raw_support = Raw::login_at(fx.pv.port(), "support_agent").await;
    let mut raw_clinician = Raw::login_at(fx.pv.port(), "clinician").await;
    let support = fx.app("support_agent").await;
    for opts in ["", "(FORMAT csv, HEADER)", "(FORMAT binary)"] {
        for (through, mirror) in [
            // With the tenant column (each envelope checked against it),
            // and without (the envelope's own tenant, as a SELECT).
            (
                format!("COPY pay_customers (id, org_id, email, name) TO STDOUT {opts}"),
                format!("COPY m_cust (id, org_id, email, name) TO STDOUT {opts}"),
            ),
            (
                format!("COPY pay_customers (id, email, name) TO STDOUT {opts}"),
                format!("COPY m_cust (id, email, name) TO STDOUT {opts}"),
            ),
            (
                format!(
                    "COPY (SELECT c.name, c.org_id AS tenant, c.email FROM pay_customers c WHERE c.org_id <> 30 ORDER BY c.id) TO STDOUT {opts}"
                ),
                format!(
                    "COPY (SELECT c.name, c.org_id AS tenant, c.email FROM m_cust c WHERE c.org_id <> 30 ORDER BY c.id) TO STDOUT {opts}"
                ),
            ),
        ] {
            let got = both(&app, &mut raw, &through).await;
            assert_eq!(got, direct(&d, &mirror).await, "{through}");
        }
        // support_agent reads name and only searches email: ciphertext.
        let sql = format!("COPY pay_customers (id, org_id, email, name) TO STDOUT {opts}");
        let got = both(&support, &mut raw_support, &sql).await;
        let want = direct(
            &d,
            &format!(
                "COPY (SELECT c.id, c.org_id, c.email, m.name FROM pay_customers c JOIN m_cust m USING (id) ORDER BY c.id) TO STDOUT {opts}"
            ),
        )
        .await;
        assert_eq!(got, want, "support_agent: {sql}");
        // date and int4: their text and binary forms.
        let got = both(
            &clinician,
            &mut raw_clinician,
            &format!(
                "COPY phi.member_profile (id, legal_name, date_of_birth, risk_score) TO STDOUT {opts}"
            ),
        )
        .await;
        let want = direct(
            &d,
            &format!("COPY m_prof (id, legal_name, date_of_birth, risk_score) TO STDOUT {opts}"),
        )
        .await;
        assert_eq!(got, want, "member_profile {opts}");
        // Zero rows: an empty result, and (binary) the header and trailer
        // only.
        for (through, mirror) in [
            (
                format!(
                    "COPY (SELECT id, email, name FROM pay_customers WHERE false) TO STDOUT {opts}"
                ),
                format!("COPY (SELECT id, email, name FROM m_cust WHERE false) TO STDOUT {opts}"),
            ),
            (
                format!(
                    "COPY pay_payment_methods (id, billing_name, billing_email) TO STDOUT {opts}"
                ),
                format!(
                    "COPY (SELECT id, ''::text AS billing_name, ''::text AS billing_email FROM pay_payment_methods) TO STDOUT {opts}"
                ),
            ),
        ] {
            let got = both(&app, &mut raw, &through).await;
            assert_eq!(got, direct(&d, &mirror).await, "{through}");
        }
    }
    drop((raw, raw_support, raw_clinician));
    d.batch_execute("DROP TABLE m_cust; DROP TABLE m_prof")
        .await
        .unwrap();
    drop(d);
    fx.assert_no_plaintext(&[
        "tenant-ten-1@example.com",
        "Tenant Ten One",
        "tenant-twenty-2@example.com",
        "Tenant Thirty Four",
        "Profile Legal One",
        "Profile Legal Three",
    ])
    .await;
}

#[tokio::test]
async fn ten_thousand_rows_stream_one_copydata_each() {
    let fx = Calmony::start();
    let app = fx.app("calmony_app").await;
    const N: usize = 12_000;
    let sink = app
        .copy_in::<_, Bytes>("COPY users (id, email, name) FROM STDIN")
        .await
        .unwrap();
    futures::pin_mut!(sink);
    let mut chunk = String::new();
    for i in 1..=N {
        chunk += &format!("{i}\tstream-{i}@example.com\tStream Person {i}\n");
        if chunk.len() > 60_000 {
            futures::SinkExt::send(&mut sink, Bytes::from(std::mem::take(&mut chunk)))
                .await
                .unwrap();
        }
    }
    futures::SinkExt::send(&mut sink, Bytes::from(chunk))
        .await
        .unwrap();
    assert_eq!(sink.finish().await.unwrap(), N as u64);
    let started = std::time::Instant::now();
    let got = copy_out(&app, "COPY users (id, email, name) TO STDOUT").await;
    let took = started.elapsed();
    assert!(got.error.is_none(), "{:?}", got.error);
    assert_eq!(got.data.len(), N);
    for (i, row) in got.data.iter().enumerate() {
        let i = i + 1;
        assert_eq!(
            row,
            format!("{i}\tstream-{i}@example.com\tStream Person {i}\n").as_bytes()
        );
    }
    eprintln!("COPY TO of {N} rows (2 protected columns, debug build): {took:?}");
    let mut raw = Raw::login_at(fx.pv.port(), "calmony_app").await;
    let got = raw
        .copy_out("COPY (SELECT id, name FROM users ORDER BY id) TO STDOUT (FORMAT binary)")
        .await;
    assert!(got.error.is_none(), "{:?}", got.error);
    // The header with the first row, then a row each, then the trailer.
    assert_eq!(got.data.len(), N + 1);
    assert_eq!(got.data[N], vec![0xff, 0xff]);
    let last = &got.data[N - 1];
    assert!(last.ends_with(format!("Stream Person {N}").as_bytes()));
    fx.assert_no_plaintext(&["stream-1@example.com", "Stream Person 11999"])
        .await;
}

#[tokio::test]
async fn values_that_do_not_decrypt_end_the_copy_with_nothing_of_their_row() {
    let fx = Calmony::start();
    let app = fx.app("calmony_app").await;
    // The moved values' rows come before their source rows in id order, so
    // their plaintext cannot have gone out legitimately before the error.
    app.batch_execute(
        "INSERT INTO pay_customers (id, org_id, email) VALUES
           (1, 1, 'moved-good-before-1@example.com'),
           (2, 2, 'moved-target-2@example.com'),
           (3, 1, 'moved-victim-tenant-3@example.com');
         INSERT INTO pay_payment_methods (id, billing_name, billing_email) VALUES
           (1, 'Moved Good Name', 'moved-good-1@example.com'),
           (2, 'Moved Target Name', 'moved-target-2@example.com'),
           (3, 'Moved Victim Name', 'moved-victim-column-3@example.com');",
    )
    .await
    .unwrap();
    let d = fx.direct().await;
    d.batch_execute(
        // Tenant 1's envelope into tenant 2's row, same column.
        "UPDATE pay_customers SET email = (SELECT email FROM pay_customers WHERE id = 3) WHERE id = 2;
         -- Another column's envelope, same row shape.
         UPDATE pay_payment_methods SET billing_name = (SELECT billing_email FROM pay_payment_methods WHERE id = 3) WHERE id = 2;",
    )
    .await
    .unwrap();
    let mut raw = Raw::login_at(fx.pv.port(), "calmony_app").await;
    let victims = [
        "moved-victim-tenant-3@example.com",
        "moved-victim-column-3@example.com",
    ];
    for opts in ["", "(FORMAT csv)", "(FORMAT binary)"] {
        for sql in [
            format!(
                "COPY (SELECT id, org_id, email FROM pay_customers ORDER BY id) TO STDOUT {opts}"
            ),
            format!(
                "COPY (SELECT id, billing_name FROM pay_payment_methods ORDER BY id) TO STDOUT {opts}"
            ),
        ] {
            for got in [copy_out(&app, &sql).await, raw.copy_out(&sql).await] {
                let (code, msg) = got.error.unwrap_or_else(|| panic!("{sql}: no error"));
                assert_eq!(code, "39000", "{sql}: {msg}");
                assert!(msg.contains("cannot decrypt"), "{sql}: {msg}");
                let all = got.data.concat();
                for v in victims {
                    assert!(
                        !all.windows(v.len()).any(|w| w == v.as_bytes()),
                        "{sql}: the moved value went out"
                    );
                    assert!(!msg.contains(v));
                }
                // The row before went out, the failing row did not.
                assert!(
                    got.data
                        .iter()
                        .all(|r| !r.starts_with(b"2\t") && !r.starts_with(b"2,"))
                );
            }
        }
    }
    // With the tenant column left out, the envelope's own tenant is used,
    // as a SELECT does (docs/threat-model.md).
    let got = copy_out(
        &app,
        "COPY (SELECT id, email FROM pay_customers ORDER BY id) TO STDOUT",
    )
    .await;
    assert!(got.error.is_none(), "{:?}", got.error);
    // Inside a transaction block the failure fails the block.
    app.batch_execute("BEGIN").await.unwrap();
    let got = copy_out(
        &app,
        "COPY pay_payment_methods (id, billing_name) TO STDOUT",
    )
    .await;
    assert_eq!(got.error.unwrap().0, "39000");
    let e = app.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(code(&e), "25P02", "{}", err_text(&e));
    app.batch_execute("ROLLBACK").await.unwrap();
    // A value written around pgveil is not an envelope.
    d.batch_execute("INSERT INTO users (id, name) VALUES (9, 'written-around-pgveil')")
        .await
        .unwrap();
    let got = copy_out(&app, "COPY users (id, name) TO STDOUT (FORMAT csv)").await;
    let (code, msg) = got.error.unwrap();
    assert_eq!(code, "39000");
    assert!(msg.contains("not a pgveil envelope"), "{msg}");
    assert!(got.data.is_empty());
    // A decrypting COPY TO is the only COPY of its Query.
    let got = raw
        .copy_out("COPY (SELECT id, email FROM pay_customers WHERE id = 1) TO STDOUT; COPY pay_payment_methods (id) TO STDOUT")
        .await;
    let (code, msg) = got.error.unwrap();
    assert_eq!(code, "0A000", "{msg}");
    assert!(msg.contains("only COPY"), "{msg}");
    assert!(got.data.is_empty());
    // The session goes on.
    let r = copy_out(
        &app,
        "COPY (SELECT id, email FROM pay_customers WHERE id = 1) TO STDOUT",
    )
    .await;
    assert_eq!(r.data.concat(), b"1\tmoved-good-before-1@example.com\n");
    let r = raw
        .copy_out("COPY (SELECT id, billing_email FROM pay_payment_methods WHERE id = 1) TO STDOUT")
        .await;
    assert_eq!(r.data.concat(), b"1\tmoved-good-1@example.com\n");
    // pgveil's log names the column, never the value.
    let logs = fx.pv.logs();
    assert!(logs.contains("decryption failed"), "no warning logged");
    fx.assert_no_plaintext(&[
        "moved-good-before-1@example.com",
        "moved-target-2@example.com",
        "moved-victim-tenant-3@example.com",
        "moved-victim-column-3@example.com",
        "Moved Victim Name",
    ])
    .await;
}

/// Throughput of COPY TO through pgveil: 100,000 rows of one protected
/// `bytea` column decrypted for a read role, against a plain table of the
/// same plaintext through pgveil and PostgreSQL directly. Ignored by
/// default; run with the release binary:
/// `cargo build --release && PGVEIL_TEST_BIN=target/release/pgveil cargo test --test copy_out throughput -- --ignored --nocapture`
/// (figures in docs/benchmarks.md).
#[tokio::test]
#[ignore]
async fn throughput() {
    const N: usize = 100_000;
    let fx = Calmony::builder()
        .extra_sql("CREATE TABLE public.plain_t (id bigint, email text); GRANT ALL ON public.plain_t TO PUBLIC")
        .rust_log("info")
        .start();
    let app = fx.app("calmony_app").await;
    let mut data = String::new();
    for i in 1..=N {
        data += &format!("{i}\tthroughput-person-{i:06}@example.com\n");
    }
    for (c, sql) in [
        (&app, "COPY users (id, email) FROM STDIN"),
        (&app, "COPY plain_t (id, email) FROM STDIN"),
    ] {
        let sink = c.copy_in::<_, Bytes>(sql).await.unwrap();
        futures::pin_mut!(sink);
        for part in data.as_bytes().chunks(60_000) {
            futures::SinkExt::send(&mut sink, Bytes::copy_from_slice(part))
                .await
                .unwrap();
        }
        assert_eq!(sink.finish().await.unwrap(), N as u64);
    }
    let d = fx.direct().await;
    let dba = fx.app("dba").await;
    for fmt in ["", " (FORMAT csv)", " (FORMAT binary)"] {
        for (label, c, sql) in [
            (
                "read role, decrypted",
                &app,
                "COPY users (id, email) TO STDOUT",
            ),
            (
                "plain table via pgveil",
                &app,
                "COPY plain_t (id, email) TO STDOUT",
            ),
            (
                "unlisted role, ciphertext",
                &dba,
                "COPY users (id, email) TO STDOUT",
            ),
            (
                "plain table direct",
                &d,
                "COPY plain_t (id, email) TO STDOUT",
            ),
            ("ciphertext direct", &d, "COPY users (id, email) TO STDOUT"),
        ] {
            let sql = format!("{sql}{fmt}");
            let mut times = vec![];
            let mut bytes = 0;
            for _ in 0..5 {
                let t = std::time::Instant::now();
                let got = copy_out(c, &sql).await;
                times.push(t.elapsed());
                assert!(got.error.is_none(), "{sql}: {:?}", got.error);
                assert_eq!(got.data.len(), N + usize::from(fmt.contains("binary")));
                bytes = got.data.iter().map(Vec::len).sum::<usize>();
            }
            times.sort();
            let median = times[times.len() / 2];
            eprintln!(
                "{fmt:>16} {label:<28} median {:>7.1} ms  {:>8.0} rows/s  {:>6.1} MB/s out ({} bytes)",
                median.as_secs_f64() * 1e3,
                N as f64 / median.as_secs_f64(),
                bytes as f64 / median.as_secs_f64() / 1e6,
                bytes
            );
        }
    }
}
