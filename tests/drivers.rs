//! The driver matrix: every client driver we support runs the same scenario
//! through pgveil against the reference policy (`policies/calmony.yaml`) on
//! `public.users` and `phi.member_profile`, and the test checks the outcome
//! itself afterwards (plaintext through pgveil, envelopes in PostgreSQL, no
//! sentinel anywhere).
//!
//! The scenario (every driver, values unique to the driver's tag `t`):
//!
//! 1. `insert` with parameters: users `t-ann@`, `t-bob@`, `t-cat@` (role
//!    `calmony_app`); member_profile Dana (`9NN-11-2222`, 1984-02-29, 87)
//!    and Eli (`9NN-33-4444`, 1990-01-15, 12) (role `clinician`).
//! 2. `lookup` by blind index: `email = '  T-BOB@Example.COM '` (trim and
//!    lowercase normalisers), a miss, `ssn = '9NN112222'` (digits only) as
//!    `clinician` (plaintext types back) and as `intake` (search only).
//! 3. `update`: bob's name, cat's email (cat → cat2), Dana's risk score (88).
//! 4. `delete`: ann, Eli.
//! 5. `read_plaintext`: every row as `calmony_app` / `clinician`.
//! 6. `read_ciphertext`: the same as `dba` (unlisted): envelopes (`pv…`
//!    bytes, `pgv1:` text), no plaintext.
//! 7. `transaction_rollback`: BEGIN, insert `t-tx@`, see it, rename bob,
//!    ROLLBACK: neither stands; also an insert into member_profile.
//! 8. `prepared_many`: one prepared INSERT executed 12 times (`t-p0@` …
//!    `t-p11@`) and one prepared lookup executed 12 times, with evidence
//!    that the driver really used a server-side prepared statement.
//! 9. `pipeline_error`: `t-pipe1@`, then a statement pgveil refuses
//!    (`SELECT id FROM users ORDER BY email`, 0A000) or a duplicate key,
//!    then more, sent without waiting where the driver can pipeline. Which
//!    statements stand follows PostgreSQL's rules for the driver's Sync
//!    boundaries (see each test): what was committed or synced before the
//!    error stands, the rest up to the next Sync is skipped.
//! 10. `usable_after_error`: the same session works afterwards; `t-pipe1@`
//!     and `t-pipe3@` are in the table at the end, whatever the driver's
//!     pipeline semantics.
//!
//! Driver programs live under `tests/drivers/` (Python, Node, Java, psql,
//! pgbench) and print one JSON object per step (`{"step": …, "ok": true}`);
//! they exit non-zero on the first mismatch. Run one driver with
//! `cargo test --test drivers <name>`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use tokio_postgres::types::Type;

/// The steps every driver program must report.
const STEPS: &[&str] = &[
    "insert",
    "lookup",
    "update",
    "delete",
    "read_plaintext",
    "read_ciphertext",
    "transaction_rollback",
    "prepared_many",
    "pipeline_error",
    "usable_after_error",
];

/// How many times the prepared statements run.
const PREPARED_RUNS: usize = 12;

/// The values one driver writes. Every one contains the driver's tag; emails
/// contain `@` and names a space, which neither hex nor base64url ever
/// produce, and SSNs are 11 characters long, so the no-plaintext check
/// cannot match ciphertext by chance.
struct Scenario {
    tag: &'static str,
    /// Two digits that make the driver's SSNs unique.
    nn: u8,
}

impl Scenario {
    fn email(&self, who: &str) -> String {
        format!("{}-{who}@example.com", self.tag)
    }

    fn name(&self, what: &str) -> String {
        format!("{} {what}", self.tag)
    }

    /// SSN of Dana (`11-2222`), Eli (`33-4444`) or Fay (`55-6666`).
    fn ssn(&self, mid: &str) -> String {
        format!("9{:02}-{mid}", self.nn)
    }

    /// The rows `public.users` holds after the scenario, in id order: the
    /// pipeline rows are `t-pipe1@` (sent before the error, committed) and
    /// `t-pipe3@` (written after the error, at the latest in step 10).
    fn final_users(&self) -> Vec<(String, String)> {
        let mut v = vec![
            (self.email("bob"), self.name("Bob Updated")),
            (self.email("cat2"), self.name("Cat Example")),
        ];
        for i in 0..PREPARED_RUNS {
            v.push((
                self.email(&format!("p{i}")),
                self.name(&format!("Prepared {i}")),
            ));
        }
        v.push((self.email("pipe1"), self.name("Pipe One")));
        v.push((self.email("pipe3"), self.name("Pipe Three")));
        v
    }

    /// Every plaintext value the scenario sends (written or searched).
    fn sentinels(&self) -> Vec<String> {
        let mut v: Vec<String> = [
            "ann", "bob", "cat", "cat2", "tx", "pipe1", "pipe2", "pipe3", "nobody",
        ]
        .iter()
        .map(|w| self.email(w))
        .collect();
        for n in [
            "Ann Example",
            "Bob Example",
            "Bob Updated",
            "Bob In Tx",
            "Cat Example",
            "Tx Rolled Back",
            "Pipe One",
            "Pipe Two",
            "Pipe Three",
            "Dana Patient",
            "Eli Patient",
            "Fay Rolled Back",
        ] {
            v.push(self.name(n));
        }
        for i in 0..PREPARED_RUNS {
            v.push(self.email(&format!("p{i}")));
            v.push(self.name(&format!("Prepared {i}")));
        }
        for mid in ["11-2222", "33-4444", "55-6666"] {
            let ssn = self.ssn(mid);
            v.push(ssn.replace('-', ""));
            v.push(ssn);
        }
        v
    }
}

/// What PostgreSQL holds and what the reading roles get back after a
/// driver ran the scenario; then no sentinel may be anywhere.
async fn verify(fx: &Calmony, s: &Scenario, users: Vec<(String, String)>, extra: &[String]) {
    // Through pgveil, as the reading roles.
    let app = fx.app("calmony_app").await;
    let rows = app
        .query("SELECT email, name FROM users ORDER BY id", &[])
        .await
        .unwrap();
    let got: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(got, users, "users read back as calmony_app");
    let doc = fx.app("clinician").await;
    let m = doc
        .simple_query(
            "SELECT legal_name, date_of_birth, ssn, risk_score FROM phi.member_profile ORDER BY id",
        )
        .await
        .unwrap();
    assert_eq!(
        simple_rows(&m),
        vec![vec![
            Some(s.name("Dana Patient")),
            Some("1984-02-29".into()),
            Some(s.ssn("11-2222")),
            Some("88".into()),
        ]],
        "member_profile read back as clinician"
    );
    // Straight from PostgreSQL: envelopes and 32-byte blind indexes only.
    let d = fx.direct().await;
    let bad: i64 = d
        .query_one(
            "SELECT count(*) FROM users WHERE NOT (substring(email FROM 1 FOR 2) = 'pv'::bytea \
             AND octet_length(email_bidx) = 32 AND name LIKE 'pgv1:%')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(bad, 0, "every users row holds envelopes");
    let bad: i64 = d
        .query_one(
            "SELECT count(*) FROM phi.member_profile WHERE NOT ( \
             substring(legal_name FROM 1 FOR 2) = 'pv'::bytea \
             AND substring(date_of_birth FROM 1 FOR 2) = 'pv'::bytea \
             AND substring(ssn FROM 1 FOR 2) = 'pv'::bytea \
             AND substring(risk_score FROM 1 FOR 2) = 'pv'::bytea \
             AND octet_length(ssn_bidx) = 32)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(bad, 0, "every member_profile row holds envelopes");
    let mut sentinels = s.sentinels();
    sentinels.extend_from_slice(extra);
    let refs: Vec<&str> = sentinels.iter().map(String::as_str).collect();
    fx.assert_no_plaintext(&refs).await;
}

// ---------------------------------------------------------------------------
// Driver programs in other languages
// ---------------------------------------------------------------------------

/// `tests/drivers/<rel>`.
fn driver_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/drivers")
        .join(rel)
}

/// Run a driver program and check its report: exit status 0, one JSON
/// object per line, every step of [`STEPS`] reported with `"ok": true`.
/// Returns the reported steps.
fn run_driver(fx: &Calmony, what: &str, cmd: &mut Command) -> Vec<serde_json::Value> {
    run_program(fx, what, cmd, STEPS)
}

// ---------------------------------------------------------------------------
// Rust: tokio-postgres
// ---------------------------------------------------------------------------

/// tokio-postgres: Parse/Describe/Bind with binary parameters and results,
/// explicitly prepared (named) statements, and real pipelining: futures
/// polled together on one client are sent without waiting, each with its
/// own Sync, so every statement but the failing ones stands.
#[tokio::test]
async fn tokio_postgres() {
    let s = Scenario {
        tag: "tokio-pg",
        nn: 1,
    };
    let fx = Calmony::start();
    let app = fx.app("calmony_app").await;
    let doc = fx.app("clinician").await;

    // 1. insert
    for who in ["ann", "bob", "cat"] {
        let name = s.name(&format!("{}{} Example", who[..1].to_uppercase(), &who[1..]));
        let n = app
            .execute(
                "INSERT INTO users (email, name) VALUES ($1, $2)",
                &[&s.email(who), &name],
            )
            .await
            .unwrap();
        assert_eq!(n, 1);
    }
    let ins_member = doc
        .prepare(
            "INSERT INTO phi.member_profile (legal_name, date_of_birth, ssn, risk_score) \
             VALUES ($1, $2, $3, $4)",
        )
        .await
        .unwrap();
    assert_eq!(
        ins_member.params()[1],
        Type::DATE,
        "plaintext parameter type"
    );
    doc.execute(
        &ins_member,
        &[
            &s.name("Dana Patient"),
            &pg_date(1984, 2, 29),
            &s.ssn("11-2222"),
            &87i32,
        ],
    )
    .await
    .unwrap();
    doc.execute(
        &ins_member,
        &[
            &s.name("Eli Patient"),
            &pg_date(1990, 1, 15),
            &s.ssn("33-4444"),
            &12i32,
        ],
    )
    .await
    .unwrap();

    // 2. lookup by blind index
    let bob_variant = format!(
        "  {} ",
        s.email("bob").to_uppercase().replace("EXAMPLE", "Example")
    );
    let r = app
        .query("SELECT name FROM users WHERE email = $1", &[&bob_variant])
        .await
        .unwrap();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].get::<_, String>(0), s.name("Bob Example"));
    let r = app
        .query(
            "SELECT name FROM users WHERE email = $1",
            &[&s.email("nobody")],
        )
        .await
        .unwrap();
    assert!(r.is_empty());
    let dana_digits = s.ssn("11-2222").replace('-', "");
    let r = doc
        .query(
            "SELECT legal_name, date_of_birth, risk_score FROM phi.member_profile WHERE ssn = $1",
            &[&dana_digits],
        )
        .await
        .unwrap();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].get::<_, String>(0), s.name("Dana Patient"));
    assert_eq!(r[0].columns()[1].type_(), &Type::DATE);
    assert_eq!(r[0].get::<_, PgDate>(1), pg_date(1984, 2, 29));
    assert_eq!(r[0].get::<_, i32>(2), 87);
    let intake = fx.app("intake").await;
    let r = intake
        .query(
            "SELECT id, legal_name FROM phi.member_profile WHERE ssn = $1",
            &[&dana_digits],
        )
        .await
        .unwrap();
    assert_eq!(r.len(), 1, "intake may search");
    assert_eq!(
        r[0].columns()[1].type_(),
        &Type::BYTEA,
        "but reads ciphertext"
    );

    // 3. update
    let n = app
        .execute(
            "UPDATE users SET name = $1 WHERE email = $2",
            &[&s.name("Bob Updated"), &s.email("bob")],
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
    let n = app
        .execute(
            "UPDATE users SET email = $1 WHERE email = $2",
            &[&s.email("cat2"), &s.email("cat")],
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
    let r = app
        .query(
            "SELECT name FROM users WHERE email = $1",
            &[&s.email("cat2")],
        )
        .await
        .unwrap();
    assert_eq!(r[0].get::<_, String>(0), s.name("Cat Example"));
    let n = doc
        .execute(
            "UPDATE phi.member_profile SET risk_score = $1 WHERE ssn = $2",
            &[&88i32, &s.ssn("11-2222")],
        )
        .await
        .unwrap();
    assert_eq!(n, 1);

    // 4. delete
    let n = app
        .execute("DELETE FROM users WHERE email = $1", &[&s.email("ann")])
        .await
        .unwrap();
    assert_eq!(n, 1);
    let n = doc
        .execute(
            "DELETE FROM phi.member_profile WHERE ssn = $1",
            &[&s.ssn("33-4444")],
        )
        .await
        .unwrap();
    assert_eq!(n, 1);

    // 5. read back plaintext
    let r = app
        .query("SELECT email, name FROM users ORDER BY id", &[])
        .await
        .unwrap();
    let got: Vec<(String, String)> = r.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        got,
        vec![
            (s.email("bob"), s.name("Bob Updated")),
            (s.email("cat2"), s.name("Cat Example"))
        ]
    );
    let r = doc
        .query(
            "SELECT legal_name, date_of_birth, ssn, risk_score FROM phi.member_profile",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].get::<_, String>(2), s.ssn("11-2222"));
    assert_eq!(r[0].get::<_, i32>(3), 88);

    // 6. read back ciphertext as an unlisted role
    let dba = fx.app("dba").await;
    let r = dba
        .query("SELECT email, name FROM users ORDER BY id", &[])
        .await
        .unwrap();
    assert_eq!(r.len(), 2);
    assert_eq!(r[0].columns()[0].type_(), &Type::BYTEA);
    for row in &r {
        let email: Vec<u8> = row.get(0);
        let name: String = row.get(1);
        assert_eq!(&email[..2], b"pv");
        assert!(name.starts_with("pgv1:") && !name.contains(' '), "{name}");
    }
    let r = dba
        .query(
            "SELECT legal_name, ssn, risk_score FROM phi.member_profile",
            &[],
        )
        .await
        .unwrap();
    for i in 0..3 {
        assert_eq!(r[0].columns()[i].type_(), &Type::BYTEA);
        assert_eq!(&r[0].get::<_, Vec<u8>>(i)[..2], b"pv");
    }

    // 7. transaction with rollback
    let mut app = app;
    {
        let tx = app.transaction().await.unwrap();
        tx.execute(
            "INSERT INTO users (email, name) VALUES ($1, $2)",
            &[&s.email("tx"), &s.name("Tx Rolled Back")],
        )
        .await
        .unwrap();
        let r = tx
            .query("SELECT name FROM users WHERE email = $1", &[&s.email("tx")])
            .await
            .unwrap();
        assert_eq!(r[0].get::<_, String>(0), s.name("Tx Rolled Back"));
        tx.execute(
            "UPDATE users SET name = $1 WHERE email = $2",
            &[&s.name("Bob In Tx"), &s.email("bob")],
        )
        .await
        .unwrap();
        tx.rollback().await.unwrap();
    }
    let r = app
        .query("SELECT name FROM users WHERE email = $1", &[&s.email("tx")])
        .await
        .unwrap();
    assert!(r.is_empty(), "rolled back");
    let r = app
        .query(
            "SELECT name FROM users WHERE email = $1",
            &[&s.email("bob")],
        )
        .await
        .unwrap();
    assert_eq!(r[0].get::<_, String>(0), s.name("Bob Updated"));
    doc.batch_execute("BEGIN").await.unwrap();
    doc.execute(
        &ins_member,
        &[
            &s.name("Fay Rolled Back"),
            &pg_date(2001, 7, 4),
            &s.ssn("55-6666"),
            &5i32,
        ],
    )
    .await
    .unwrap();
    doc.batch_execute("ROLLBACK").await.unwrap();
    let r = doc
        .query(
            "SELECT count(*) FROM phi.member_profile WHERE ssn = $1",
            &[&s.ssn("55-6666")],
        )
        .await
        .unwrap();
    assert_eq!(r[0].get::<_, i64>(0), 0);

    // 8. prepared statements executed many times (named server statements)
    let ins = app
        .prepare("INSERT INTO users (email, name) VALUES ($1, $2)")
        .await
        .unwrap();
    for i in 0..PREPARED_RUNS {
        app.execute(
            &ins,
            &[
                &s.email(&format!("p{i}")),
                &s.name(&format!("Prepared {i}")),
            ],
        )
        .await
        .unwrap();
    }
    let lookup = app
        .prepare("SELECT name FROM users WHERE email = $1")
        .await
        .unwrap();
    for i in 0..PREPARED_RUNS {
        let r = app
            .query(&lookup, &[&s.email(&format!("P{i}")).to_uppercase()])
            .await
            .unwrap();
        assert_eq!(r[0].get::<_, String>(0), s.name(&format!("Prepared {i}")));
    }
    let r = app
        .query(
            "SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE '%users%'",
            &[],
        )
        .await
        .unwrap();
    assert!(r[0].get::<_, i64>(0) >= 2, "named statements on the server");

    // 9. a pipeline with errors in the middle: one Sync per statement, so
    // only the failing statements fail.
    let bob_id: i64 = fx
        .direct()
        .await
        .query_one("SELECT min(id) FROM users", &[])
        .await
        .unwrap()
        .get(0);
    let (pipe1, pipe2, pipe3) = (s.email("pipe1"), s.email("pipe2"), s.email("pipe3"));
    let (one, two, three) = (s.name("Pipe One"), s.name("Pipe Two"), s.name("Pipe Three"));
    let p1: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&pipe1, &one];
    let p2: [&(dyn tokio_postgres::types::ToSql + Sync); 3] = [&bob_id, &pipe2, &two];
    let p3: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&pipe3, &three];
    // A text parameter that is not UTF-8: pgveil refuses it at Bind.
    let bad = RawText(b"\xff\xfe not utf-8".to_vec());
    let p4: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&bad, &two];
    let (a, b, c, d, e, f, g) = futures::join!(
        app.execute(&ins, &p1),
        app.query(&lookup, &p1[..1]),
        app.query("SELECT id FROM users ORDER BY email", &[]),
        app.execute(
            "INSERT INTO users (id, email, name) VALUES ($1, $2, $3)",
            &p2
        ),
        app.execute(&ins, &p4),
        app.execute(&ins, &p3),
        app.query(&lookup, &p3[..1]),
    );
    assert_eq!(a.unwrap(), 1);
    assert_eq!(b.unwrap()[0].get::<_, String>(0), s.name("Pipe One"));
    assert_eq!(code(&c.unwrap_err()), "0A000", "refused by pgveil at Parse");
    assert_eq!(
        code(&d.unwrap_err()),
        "23505",
        "duplicate key from PostgreSQL"
    );
    let e = e.unwrap_err();
    assert!(
        code(&e).starts_with("22"),
        "refused by pgveil at Bind: {}",
        err_text(&e)
    );
    assert_eq!(f.unwrap(), 1);
    assert_eq!(g.unwrap()[0].get::<_, String>(0), s.name("Pipe Three"));

    // 10. the session is usable afterwards
    let r = app.query(&lookup, &[&s.email("bob")]).await.unwrap();
    assert_eq!(r[0].get::<_, String>(0), s.name("Bob Updated"));

    verify(&fx, &s, s.final_users(), &[]).await;
}

// ---------------------------------------------------------------------------
// Rust: sqlx
// ---------------------------------------------------------------------------

/// sqlx (no macros, no TLS, no extra type crates): statements are prepared
/// on first use and kept in the connection's statement cache (named
/// `sqlx_s_n`), parameters and results are binary; `persistent(false)` uses
/// the unnamed statement. sqlx has no pipelining API (every query waits for
/// its ReadyForQuery), so the pipeline item is the closest thing: one simple
/// Query (`raw_sql`) holding several statements with a refused one in the
/// middle.
#[tokio::test]
async fn sqlx() {
    use sqlx::{Connection, Row};
    let s = Scenario { tag: "sqlx", nn: 2 };
    let fx = Calmony::start();
    let connect = |role: &str| {
        let opts = sqlx::postgres::PgConnectOptions::new_without_pgpass()
            .host("127.0.0.1")
            .port(fx.pv.port())
            .username(role)
            .database("app")
            .ssl_mode(sqlx::postgres::PgSslMode::Disable);
        async move { sqlx::PgConnection::connect_with(&opts).await.unwrap() }
    };
    let mut app = connect("calmony_app").await;
    let mut doc = connect("clinician").await;
    const INS_USER: &str = "INSERT INTO users (email, name) VALUES ($1, $2)";
    const INS_MEMBER: &str = "INSERT INTO phi.member_profile (legal_name, date_of_birth, ssn, risk_score) VALUES ($1, $2, $3, $4)";
    const LOOKUP: &str = "SELECT name FROM users WHERE email = $1";
    async fn names(c: &mut sqlx::PgConnection, sql: &'static str, email: &str) -> Vec<String> {
        sqlx::query(sql)
            .bind(email)
            .fetch_all(c)
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<String, _>(0))
            .collect()
    }

    // 1. insert
    for (who, name) in [
        ("ann", "Ann Example"),
        ("bob", "Bob Example"),
        ("cat", "Cat Example"),
    ] {
        let r = sqlx::query(INS_USER)
            .bind(s.email(who))
            .bind(s.name(name))
            .execute(&mut app)
            .await
            .unwrap();
        assert_eq!(r.rows_affected(), 1);
    }
    for (name, date, ssn, risk) in [
        ("Dana Patient", pg_date(1984, 2, 29), "11-2222", 87i32),
        ("Eli Patient", pg_date(1990, 1, 15), "33-4444", 12),
    ] {
        sqlx::query(INS_MEMBER)
            .bind(s.name(name))
            .bind(date)
            .bind(s.ssn(ssn))
            .bind(risk)
            .execute(&mut doc)
            .await
            .unwrap();
    }

    // 2. lookup
    let bob_variant = format!(
        "  {} ",
        s.email("bob").to_uppercase().replace("EXAMPLE", "Example")
    );
    assert_eq!(
        names(&mut app, LOOKUP, &bob_variant).await,
        vec![s.name("Bob Example")]
    );
    assert!(names(&mut app, LOOKUP, &s.email("nobody")).await.is_empty());
    let r = sqlx::query(LOOKUP)
        .bind(s.email("bob"))
        .persistent(false)
        .fetch_all(&mut app)
        .await
        .unwrap();
    assert_eq!(
        r[0].get::<String, _>(0),
        s.name("Bob Example"),
        "unnamed statement"
    );
    let digits = s.ssn("11-2222").replace('-', "");
    let r = sqlx::query(
        "SELECT legal_name, date_of_birth, risk_score FROM phi.member_profile WHERE ssn = $1",
    )
    .bind(&digits)
    .fetch_one(&mut doc)
    .await
    .unwrap();
    assert_eq!(r.get::<String, _>(0), s.name("Dana Patient"));
    assert_eq!(r.get::<PgDate, _>(1), pg_date(1984, 2, 29));
    assert_eq!(r.get::<i32, _>(2), 87);
    let mut intake = connect("intake").await;
    let r = sqlx::query("SELECT id, legal_name FROM phi.member_profile WHERE ssn = $1")
        .bind(&digits)
        .fetch_all(&mut intake)
        .await
        .unwrap();
    assert_eq!(r.len(), 1, "intake may search");
    assert_eq!(
        &r[0].get::<Vec<u8>, _>(1)[..2],
        b"pv",
        "but reads ciphertext"
    );

    // 3. update
    let n = sqlx::query("UPDATE users SET name = $1 WHERE email = $2")
        .bind(s.name("Bob Updated"))
        .bind(s.email("bob"))
        .execute(&mut app)
        .await
        .unwrap()
        .rows_affected();
    assert_eq!(n, 1);
    let n = sqlx::query("UPDATE users SET email = $1 WHERE email = $2")
        .bind(s.email("cat2"))
        .bind(s.email("cat"))
        .execute(&mut app)
        .await
        .unwrap()
        .rows_affected();
    assert_eq!(n, 1);
    assert_eq!(
        names(&mut app, LOOKUP, &s.email("cat2")).await,
        vec![s.name("Cat Example")]
    );
    let n = sqlx::query("UPDATE phi.member_profile SET risk_score = $1 WHERE ssn = $2")
        .bind(88i32)
        .bind(s.ssn("11-2222"))
        .execute(&mut doc)
        .await
        .unwrap()
        .rows_affected();
    assert_eq!(n, 1);

    // 4. delete
    let n = sqlx::query("DELETE FROM users WHERE email = $1")
        .bind(s.email("ann"))
        .execute(&mut app)
        .await
        .unwrap()
        .rows_affected();
    assert_eq!(n, 1);
    let n = sqlx::query("DELETE FROM phi.member_profile WHERE ssn = $1")
        .bind(s.ssn("33-4444"))
        .execute(&mut doc)
        .await
        .unwrap()
        .rows_affected();
    assert_eq!(n, 1);

    // 5. read back plaintext
    let r = sqlx::query("SELECT email, name FROM users ORDER BY id")
        .fetch_all(&mut app)
        .await
        .unwrap();
    let got: Vec<(String, String)> = r.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        got,
        vec![
            (s.email("bob"), s.name("Bob Updated")),
            (s.email("cat2"), s.name("Cat Example"))
        ]
    );
    let r =
        sqlx::query("SELECT legal_name, date_of_birth, ssn, risk_score FROM phi.member_profile")
            .fetch_one(&mut doc)
            .await
            .unwrap();
    assert_eq!(r.get::<String, _>(2), s.ssn("11-2222"));
    assert_eq!(r.get::<i32, _>(3), 88);

    // 6. read back ciphertext as an unlisted role
    let mut dba = connect("dba").await;
    let r = sqlx::query("SELECT email, name FROM users ORDER BY id")
        .fetch_all(&mut dba)
        .await
        .unwrap();
    assert_eq!(r.len(), 2);
    for row in &r {
        assert_eq!(&row.get::<Vec<u8>, _>(0)[..2], b"pv");
        let name: String = row.get(1);
        assert!(name.starts_with("pgv1:") && !name.contains(' '), "{name}");
    }
    let r =
        sqlx::query("SELECT legal_name, date_of_birth, ssn, risk_score FROM phi.member_profile")
            .fetch_one(&mut dba)
            .await
            .unwrap();
    for i in 0..4 {
        assert_eq!(&r.get::<Vec<u8>, _>(i)[..2], b"pv");
    }

    // 7. transaction with rollback
    {
        let mut tx = app.begin().await.unwrap();
        sqlx::query(INS_USER)
            .bind(s.email("tx"))
            .bind(s.name("Tx Rolled Back"))
            .execute(&mut *tx)
            .await
            .unwrap();
        assert_eq!(
            names(&mut tx, LOOKUP, &s.email("tx")).await,
            vec![s.name("Tx Rolled Back")]
        );
        sqlx::query("UPDATE users SET name = $1 WHERE email = $2")
            .bind(s.name("Bob In Tx"))
            .bind(s.email("bob"))
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.rollback().await.unwrap();
    }
    assert!(names(&mut app, LOOKUP, &s.email("tx")).await.is_empty());
    assert_eq!(
        names(&mut app, LOOKUP, &s.email("bob")).await,
        vec![s.name("Bob Updated")]
    );
    {
        let mut tx = doc.begin().await.unwrap();
        sqlx::query(INS_MEMBER)
            .bind(s.name("Fay Rolled Back"))
            .bind(pg_date(2001, 7, 4))
            .bind(s.ssn("55-6666"))
            .bind(5i32)
            .execute(&mut *tx)
            .await
            .unwrap();
        // Dropped without commit: rolled back.
    }
    let n: i64 = sqlx::query("SELECT count(*) FROM phi.member_profile WHERE ssn = $1")
        .bind(s.ssn("55-6666"))
        .fetch_one(&mut doc)
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);

    // 8. the statement cache: each text is parsed once, then executed
    for i in 0..PREPARED_RUNS {
        sqlx::query(INS_USER)
            .bind(s.email(&format!("p{i}")))
            .bind(s.name(&format!("Prepared {i}")))
            .execute(&mut app)
            .await
            .unwrap();
    }
    for i in 0..PREPARED_RUNS {
        let email = s.email(&format!("P{i}")).to_uppercase();
        assert_eq!(
            names(&mut app, LOOKUP, &email).await,
            vec![s.name(&format!("Prepared {i}"))]
        );
    }
    let named: i64 = sqlx::query(
        "SELECT count(*) FROM pg_prepared_statements WHERE name LIKE 'sqlx_s_%' AND statement LIKE '%users%'",
    )
    .fetch_one(&mut app)
    .await
    .unwrap()
    .get(0);
    assert!(named >= 2, "named server statements: {named}");

    // 9. several statements in one simple Query, a refused one in the middle
    let e = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "BEGIN; INSERT INTO users (email, name) VALUES ('{}', '{}'); COMMIT; \
         SELECT id FROM users ORDER BY email; \
         INSERT INTO users (email, name) VALUES ('{}', '{}')",
        s.email("pipe1"),
        s.name("Pipe One"),
        s.email("pipe2"),
        s.name("Pipe Two")
    )))
    .execute(&mut app)
    .await
    .unwrap_err();
    let db = e.as_database_error().expect("a server error");
    assert_eq!(db.code().as_deref(), Some("0A000"), "{db}");
    assert_eq!(
        names(&mut app, LOOKUP, &s.email("pipe1")).await,
        vec![s.name("Pipe One")]
    );
    assert!(names(&mut app, LOOKUP, &s.email("pipe2")).await.is_empty());
    let e = sqlx::query("SELECT id FROM users ORDER BY email")
        .fetch_all(&mut app)
        .await
        .unwrap_err();
    assert_eq!(
        e.as_database_error().unwrap().code().as_deref(),
        Some("0A000")
    );

    // 10. usable afterwards
    sqlx::query(INS_USER)
        .bind(s.email("pipe3"))
        .bind(s.name("Pipe Three"))
        .execute(&mut app)
        .await
        .unwrap();
    assert_eq!(
        names(&mut app, LOOKUP, &s.email("pipe3")).await,
        vec![s.name("Pipe Three")]
    );
    for c in [app, doc, intake, dba] {
        c.close().await.unwrap();
    }

    verify(&fx, &s, s.final_users(), &[]).await;
}

// ---------------------------------------------------------------------------
// Python: psycopg 3 and asyncpg (tests/drivers/python/matrix.py)
// ---------------------------------------------------------------------------

/// `python3` with psycopg and asyncpg importable, or a panic that says how
/// to install them.
fn python() -> Command {
    let probe = Command::new("python3")
        .args(["-c", "import psycopg, asyncpg"])
        .output();
    match probe {
        Ok(o) if o.status.success() => Command::new("python3"),
        Ok(o) => panic!(
            "the Python drivers are not installed ({}): run \
             `python3 -m pip install 'psycopg[binary]' asyncpg` (or .ci/run)",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => {
            panic!("python3 is not installed ({e}): run `apt-get install python3 python3-pip`")
        }
    }
}

async fn python_driver(mode: &str, s: Scenario) {
    let fx = Calmony::start();
    let report = run_driver(
        &fx,
        mode,
        python().arg(driver_path("python/matrix.py")).args([
            mode,
            s.tag,
            &s.nn.to_string(),
            &fx.pv.port().to_string(),
        ]),
    );
    let prepared = report
        .iter()
        .find(|r| r["step"] == "prepared_many")
        .unwrap();
    let named = prepared["server_prepared"].as_i64().unwrap();
    if mode == "psycopg-noprepare" {
        assert_eq!(named, 0, "prepare_threshold=None must not prepare");
    } else {
        assert!(
            named >= 2,
            "{mode}: server-side prepared statements: {named}"
        );
    }
    verify(&fx, &s, s.final_users(), &[]).await;
}

/// psycopg 3 with its defaults: text parameters and results (binary ones
/// for one insert and one read), server-side prepared from the 5th
/// execution of a text (`prepare_threshold` 5), and `conn.pipeline()` with
/// an explicit `sync()` before the refused statement: what was synced
/// stands, the statement after the refusal is skipped up to the pipeline's
/// final Sync.
#[tokio::test]
async fn psycopg_default() {
    python_driver(
        "psycopg-default",
        Scenario {
            tag: "psycopg-dflt",
            nn: 11,
        },
    )
    .await;
}

/// psycopg 3 with `prepare=True` on every execute: named statements from
/// the first execution.
#[tokio::test]
async fn psycopg_prepare_true() {
    python_driver(
        "psycopg-prepare",
        Scenario {
            tag: "psycopg-prep",
            nn: 12,
        },
    )
    .await;
}

/// psycopg 3 with `prepare_threshold=None`: only unnamed statements.
#[tokio::test]
async fn psycopg_prepare_threshold_none() {
    python_driver(
        "psycopg-noprepare",
        Scenario {
            tag: "psycopg-noprep",
            nn: 13,
        },
    )
    .await;
}

/// asyncpg: binary parameters and results for every type, the statement
/// cache (named `__asyncpg_stmt_n__`), `prepare()`, and `executemany` as
/// the pipeline (Bind/Execute per row, one Sync: atomic, so a duplicate key
/// in the middle leaves nothing behind).
#[tokio::test]
async fn asyncpg() {
    python_driver(
        "asyncpg",
        Scenario {
            tag: "asyncpg",
            nn: 14,
        },
    )
    .await;
}

// ---------------------------------------------------------------------------
// Node: node-postgres (tests/drivers/node)
// ---------------------------------------------------------------------------

/// node-postgres 8 from the npm registry (the version in
/// `tests/drivers/node/package-lock.json`): text parameters with
/// unspecified types, text results, named prepared statements
/// (`{name, text, values}`), simple queries without parameters. It does not
/// pipeline (one query at a time), so the pipeline item is one simple Query
/// with several statements and a refused one in the middle.
#[tokio::test]
async fn node_postgres() {
    let s = Scenario {
        tag: "node-pg",
        nn: 21,
    };
    let dir = driver_path("node");
    assert!(
        command_exists("node"),
        "Node.js is not installed: run `apt-get install nodejs npm` (or .ci/run)"
    );
    assert!(
        dir.join("node_modules/pg/package.json").exists(),
        "node-postgres is not installed in {}: run `npm ci --prefix tests/drivers/node` (or .ci/run)",
        dir.display()
    );
    let fx = Calmony::start();
    run_driver(
        &fx,
        "node-postgres",
        Command::new("node")
            .current_dir(&dir)
            .arg("matrix.js")
            .args([s.tag, &s.nn.to_string(), &fx.pv.port().to_string()]),
    );
    verify(&fx, &s, s.final_users(), &[]).await;
}

fn command_exists(name: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

// ---------------------------------------------------------------------------
// Java: PostgreSQL JDBC from Debian (tests/drivers/java/Matrix.java)
// ---------------------------------------------------------------------------

const JDBC_JAR: &str = "/usr/share/java/postgresql.jar";

/// `Matrix.java` compiled against the Debian JDBC jar, once per source
/// version: the classes go to a directory under Cargo's test scratch space
/// (`target/tmp`) named by a hash of the source and the jar, so parallel
/// tests and later runs reuse them. Returns the directory (the classpath is
/// `dir:JDBC_JAR`).
fn compile_jdbc_matrix() -> PathBuf {
    static CLASSES: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    assert!(
        Path::new(JDBC_JAR).exists(),
        "the PostgreSQL JDBC driver is not installed ({JDBC_JAR}): run \
         `apt-get install libpostgresql-jdbc-java` (or .ci/run)"
    );
    assert!(
        command_exists("javac") && command_exists("java"),
        "no JDK: run `apt-get install default-jdk-headless` (or .ci/run)"
    );
    CLASSES
        .get_or_init(|| {
            use std::hash::{Hash, Hasher};
            let source = std::fs::read(driver_path("java/Matrix.java")).unwrap();
            let mut h = std::collections::hash_map::DefaultHasher::new();
            source.hash(&mut h);
            std::fs::metadata(JDBC_JAR).unwrap().len().hash(&mut h);
            let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
            let dir = tmp.join(format!("jdbc-matrix-{:016x}", h.finish()));
            if dir.join("Matrix.class").exists() {
                return dir;
            }
            let work = tempfile::Builder::new()
                .prefix("jdbc-matrix-build-")
                .tempdir_in(tmp)
                .unwrap();
            let out = Command::new("javac")
                .args(["-nowarn", "-d"])
                .arg(work.path())
                .args(["-cp", JDBC_JAR])
                .arg(driver_path("java/Matrix.java"))
                .output()
                .expect("run javac");
            assert!(
                out.status.success(),
                "javac Matrix.java:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            // If another process won the race, its classes are the same
            // (and `work` is removed when dropped).
            let _ = std::fs::rename(work.path(), &dir);
            dir
        })
        .clone()
}

fn java(classes: &Path) -> Command {
    let mut c = Command::new("java");
    c.args(["-Xshare:auto", "-XX:TieredStopAtLevel=1", "-cp"])
        .arg(format!("{}:{JDBC_JAR}", classes.display()));
    c
}

/// pgjdbc with its defaults: `setString` declares varchar, `setInt` sends
/// binary int4, `setObject(LocalDate)` declares date; the first four
/// executions of a PreparedStatement use the unnamed statement, from the
/// 5th on a named server statement (`S_n`, `isUseServerPrepare()`, and
/// `pg_prepared_statements` on the same connection), with binary results
/// for known types. The pipeline is `executeBatch` (every statement sent
/// before any result is read, one Sync): a Statement batch with a refused
/// statement in the middle and a PreparedStatement batch with a duplicate
/// key in the middle; in autocommit mode each batch is one implicit
/// transaction, so nothing of a failed batch stands, exactly as against
/// PostgreSQL directly.
#[tokio::test]
async fn jdbc() {
    let s = Scenario {
        tag: "jdbc",
        nn: 31,
    };
    let classes = compile_jdbc_matrix();
    let fx = Calmony::start();
    let report = run_driver(
        &fx,
        "jdbc",
        java(&classes)
            .arg("Matrix")
            .args([s.tag, &s.nn.to_string(), &fx.pv.port().to_string()]),
    );
    let prepared = report
        .iter()
        .find(|r| r["step"] == "prepared_many")
        .unwrap();
    assert!(prepared["server_prepared"].as_i64().unwrap() >= 2);
    assert!(
        report.iter().any(|r| r["step"] == "fetch_size"),
        "setFetchSize reads reported"
    );
    verify(&fx, &s, s.final_users(), &[]).await;
}

// ---------------------------------------------------------------------------
// psql (tests/drivers/psql/matrix.sql)
// ---------------------------------------------------------------------------

/// psql 15: the simple protocol only (literals, interpolated client-side
/// and encrypted by pgveil in the statement text), `\connect` between
/// roles. SQL-level PREPARE on a protected table is refused by design, and
/// psql 15 has neither `\bind` nor `\startpipeline`: the prepared item is
/// the same insert and lookup executed 12 times with new literals, the
/// pipeline item one simple Query with several statements (`\;`).
#[tokio::test]
async fn psql() {
    let s = Scenario {
        tag: "psql",
        nn: 41,
    };
    let fx = Calmony::start();
    let out = Command::new(fx.pg.bin("psql"))
        .current_dir(driver_path("psql"))
        .env_remove("PGPASSWORD")
        .env_remove("PGSSLMODE")
        .args(["-X", "-At", "-v", "ON_ERROR_STOP=1"])
        .args(["-v", &format!("tag={}", s.tag)])
        .args(["-v", &format!("TAG={}", s.tag.to_uppercase())])
        .args(["-v", &format!("nn={}", s.nn)])
        .args(["-f", "matrix.sql", &fx.url("calmony_app")])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "psql failed:\n{stdout}\n{stderr}\n--- pgveil ---\n{}",
        fx.pv.logs()
    );
    let got: Vec<&str> = stdout
        .lines()
        .filter(|l| !l.starts_with("You are now connected"))
        .collect();
    let want = psql_transcript(&s);
    let steps = |lines: &[&str]| -> Vec<(String, Vec<String>)> {
        let mut out: Vec<(String, Vec<String>)> = Vec::new();
        for l in lines {
            match l.strip_prefix("== ") {
                Some(step) => out.push((step.to_string(), Vec::new())),
                None => out
                    .last_mut()
                    .expect("output starts with a step")
                    .1
                    .push(l.to_string()),
            }
        }
        out
    };
    let (got, want) = (
        steps(&got),
        steps(&want.iter().map(String::as_str).collect::<Vec<_>>()),
    );
    assert_eq!(
        got.iter().map(|g| &g.0).collect::<Vec<_>>(),
        want.iter().map(|w| &w.0).collect::<Vec<_>>(),
        "steps\n{stdout}\n{stderr}"
    );
    for ((step, g), (_, w)) in got.iter().zip(&want) {
        assert!(
            g.len() == w.len() && g.iter().zip(w).all(|(g, w)| glob(w, g)),
            "psql step {step}:\n got: {g:#?}\nwant: {w:#?}"
        );
    }
    for s in STEPS {
        assert!(got.iter().any(|g| g.0 == *s), "step {s} missing");
    }
    // Exactly the two refusals the script provokes, nothing else.
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(errors.len(), 2, "{stderr}");
    assert!(
        errors[0].contains("PREPARE/EXECUTE on protected table public.users"),
        "{stderr}"
    );
    assert!(
        errors[1].contains("ORDER BY on protected column public.users.email"),
        "{stderr}"
    );
    verify(&fx, &s, s.final_users(), &[]).await;
}

/// What `psql -At` prints for `matrix.sql` (`*` matches any text).
fn psql_transcript(s: &Scenario) -> Vec<String> {
    let (e, n) = (|w: &str| s.email(w), |w: &str| s.name(w));
    let mut v: Vec<String> = Vec::new();
    let mut add = |lines: &[&str]| v.extend(lines.iter().map(|l| l.to_string()));
    add(&["== insert", "INSERT 0 3", "INSERT 0 2", "== lookup"]);
    add(&[
        &n("Bob Example"),
        "0",
        &format!("{}|1984-02-29|87", n("Dana Patient")),
    ]);
    add(&[
        "\\x7076*",
        "== update",
        "UPDATE 1",
        "UPDATE 1",
        &n("Cat Example"),
        "UPDATE 1",
    ]);
    add(&["== delete", "DELETE 1", "DELETE 1", "== read_plaintext"]);
    add(&[&format!("{}|{}", e("bob"), n("Bob Updated"))]);
    add(&[&format!("{}|{}", e("cat2"), n("Cat Example"))]);
    add(&[&format!(
        "{}|1984-02-29|{}|88",
        n("Dana Patient"),
        s.ssn("11-2222")
    )]);
    add(&["== read_ciphertext", "\\x7076*|pgv1:*", "\\x7076*|pgv1:*"]);
    add(&[
        "\\x7076*|\\x7076*|\\x7076*|\\x7076*",
        "== transaction_rollback",
    ]);
    add(&[
        "BEGIN",
        "INSERT 0 1",
        &n("Tx Rolled Back"),
        "UPDATE 1",
        "ROLLBACK",
        "0",
    ]);
    add(&[
        &n("Bob Updated"),
        "BEGIN",
        "INSERT 0 1",
        "ROLLBACK",
        "0",
        "== prepared_many",
    ]);
    for i in 0..PREPARED_RUNS {
        add(&["INSERT 0 1", &n(&format!("Prepared {i}"))]);
    }
    add(&[
        "== pipeline_error",
        "BEGIN",
        "INSERT 0 1",
        "COMMIT",
        &n("Pipe One"),
        "0",
    ]);
    add(&[
        "== usable_after_error",
        "INSERT 0 1",
        &n("Pipe Three"),
        "== done",
    ]);
    v
}

/// `pattern` matches `text`, where `*` in the pattern matches any run of
/// characters.
fn glob(pattern: &str, text: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == text,
        Some((head, rest)) => {
            let Some(t) = text.strip_prefix(head) else {
                return false;
            };
            (0..=t.len()).any(|i| t.is_char_boundary(i) && glob(rest, &t[i..]))
        }
    }
}

// ---------------------------------------------------------------------------
// pgbench (tests/drivers/pgbench/*.sql)
// ---------------------------------------------------------------------------

/// pgbench 15 with custom scripts through pgveil: `-M extended` for the
/// scenario, `-M prepared -t 12` for the prepared item (named statements
/// parsed once per connection), and `\startpipeline … \endpipeline` in
/// both modes with a refused statement in the middle. Checks are divisions
/// by zero that abort the client when they do not hold; values read back
/// are printed by `\shell echo RESULT …`. pgbench cannot build a different
/// string per transaction, so the 12 prepared rounds insert the same value;
/// and it aborts a client on any error other than a serialization failure
/// or deadlock, so "usable afterwards" is a new pgbench run.
#[tokio::test]
async fn pgbench() {
    let s = Scenario {
        tag: "pgbench",
        nn: 51,
    };
    let fx = Calmony::start();
    let (e, n) = (|w: &str| s.email(w), |w: &str| s.name(w));
    let vars: Vec<(String, String)> = [
        ("e_ann", e("ann")),
        ("e_bob", e("bob")),
        ("e_cat", e("cat")),
        ("e_cat2", e("cat2")),
        ("e_nobody", e("nobody")),
        ("e_tx", e("tx")),
        ("n_ann", n("Ann Example")),
        ("n_bob", n("Bob Example")),
        ("n_cat", n("Cat Example")),
        ("n_bob_upd", n("Bob Updated")),
        ("n_bob_tx", n("Bob In Tx")),
        ("n_tx", n("Tx Rolled Back")),
        (
            "bob_variant",
            format!(
                "  {} ",
                e("bob").to_uppercase().replace("EXAMPLE", "Example")
            ),
        ),
        ("n_dana", n("Dana Patient")),
        ("dob_dana", "1984-02-29".into()),
        ("ssn_dana", s.ssn("11-2222")),
        ("ssn_dana_digits", s.ssn("11-2222").replace('-', "")),
        ("n_eli", n("Eli Patient")),
        ("dob_eli", "1990-01-15".into()),
        ("ssn_eli", s.ssn("33-4444")),
        ("n_fay", n("Fay Rolled Back")),
        ("dob_fay", "2001-07-04".into()),
        ("ssn_fay", s.ssn("55-6666")),
        ("risk", "88".into()),
        ("e_p", e("p")),
        ("n_p", n("Prepared")),
        ("e_p_upper", e("p").to_uppercase()),
        ("e_pipe1", e("pipe1")),
        ("n_pipe1", n("Pipe One")),
        ("e_pipe2", e("pipe2")),
        ("n_pipe2", n("Pipe Two")),
        ("e_pipe3", e("pipe3")),
        ("n_pipe3", n("Pipe Three")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    // One pgbench run: (exit code, RESULT lines, stderr).
    let run = |role: &str, args: &[&str], over: &[(&str, String)]| {
        let mut c = Command::new(fx.pg.bin("pgbench"));
        c.current_dir(driver_path("pgbench"))
            .env_remove("PGPASSWORD")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &fx.pv.port().to_string(),
                "-U",
                role,
                "-n",
            ]);
        for (k, v) in &vars {
            let v = over.iter().find(|o| o.0 == k).map(|o| &o.1).unwrap_or(v);
            c.arg("-D").arg(format!("{k}={v}"));
        }
        let out = c.args(args).arg("app").output().expect("run pgbench");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let results: Vec<String> = stdout
            .lines()
            .filter_map(|l| l.strip_prefix("RESULT "))
            .map(str::to_string)
            .collect();
        (
            out.status.code(),
            results,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let ok = |(code, results, stderr): (Option<i32>, Vec<String>, String), what: &str| {
        assert_eq!(
            code,
            Some(0),
            "pgbench {what}:\n{results:#?}\n{stderr}\n{}",
            fx.pv.logs()
        );
        results
    };
    let step = |name: &str| format!("step {name}");

    // Steps 1–5 and 7 on users (extended protocol, parameters).
    let r = ok(
        run(
            "calmony_app",
            &["-M", "extended", "-t", "1", "-f", "users.sql"],
            &[],
        ),
        "users.sql",
    );
    assert_eq!(
        r,
        vec![
            step("insert"),
            step("lookup"),
            n("Bob Example"),
            step("update"),
            n("Cat Example"),
            step("delete"),
            step("read_plaintext"),
            format!("{} {}", e("bob"), n("Bob Updated")),
            format!("{} {}", e("cat2"), n("Cat Example")),
            step("transaction_rollback"),
            n("Tx Rolled Back"),
            n("Bob Updated"),
        ]
    );
    // The same on member_profile.
    let r = ok(
        run(
            "clinician",
            &["-M", "extended", "-t", "1", "-f", "member.sql"],
            &[],
        ),
        "member.sql",
    );
    assert_eq!(
        r,
        vec![
            step("insert"),
            step("lookup"),
            format!("{} 1984-02-29 87", n("Dana Patient")),
            step("update"),
            step("delete"),
            step("read_plaintext"),
            format!("{} 1984-02-29 {} 88", n("Dana Patient"), s.ssn("11-2222")),
            step("transaction_rollback"),
        ]
    );
    // A search role finds the row and reads ciphertext.
    let r = ok(
        run(
            "intake",
            &["-M", "extended", "-t", "1", "-f", "intake.sql"],
            &[],
        ),
        "intake.sql",
    );
    assert_eq!(r[0], "1");
    assert!(r[1].starts_with("x7076"), "{r:?}");
    // 6. ciphertext for the unlisted role.
    let r = ok(
        run("dba", &["-M", "extended", "-t", "1", "-f", "dba.sql"], &[]),
        "dba.sql",
    );
    assert_eq!(r.len(), 4);
    assert!(
        r[0].starts_with("x7076") && r[1].starts_with("pgv1:"),
        "{r:?}"
    );
    assert!(
        r[2].starts_with("x7076") && r[3].starts_with("x7076"),
        "{r:?}"
    );
    // 8. prepared statements executed 12 times on one connection.
    let r = ok(
        run(
            "calmony_app",
            &["-M", "prepared", "-t", "12", "-f", "prepared.sql"],
            &[],
        ),
        "prepared.sql",
    );
    assert_eq!(r.len(), 12);
    for (i, line) in r.iter().enumerate() {
        let (count, rest) = line.split_once(' ').unwrap();
        assert_eq!(count, (i + 1).to_string(), "{r:#?}");
        let (name, named) = rest.rsplit_once(' ').unwrap();
        assert_eq!(name, n("Prepared"));
        assert!(
            named.parse::<u32>().unwrap() >= 4,
            "named statements: {r:#?}"
        );
    }
    // 9. a pipeline with a refused statement in the middle: the client
    // aborts (exit 2) with pgveil's refusal; in -M prepared the statements
    // are prepared before the pipeline, so the refusal comes at prepare
    // time and the pipeline then fails on the statement that does not
    // exist, as with any statement PostgreSQL cannot prepare.
    let refusal = "ORDER BY on protected column public.users.email";
    let (code, _, stderr) = run(
        "calmony_app",
        &["-M", "extended", "-t", "1", "-f", "pipeline.sql"],
        &[],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains(refusal) && stderr.contains("aborted"),
        "{stderr}"
    );
    let (code, _, stderr) = run(
        "calmony_app",
        &["-M", "prepared", "-t", "1", "-f", "pipeline.sql"],
        &[("e_pipe1", e("pipe0")), ("n_pipe1", n("Pipe Zero"))],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains(refusal), "{stderr}");
    assert!(
        stderr.contains("prepared statement \"P_3\" does not exist"),
        "{stderr}"
    );
    // 10. usable afterwards: a pipeline that works; pipe1 stands, pipe2 not.
    let r = ok(
        run(
            "calmony_app",
            &["-M", "prepared", "-t", "1", "-f", "after.sql"],
            &[],
        ),
        "after.sql",
    );
    assert_eq!(r, vec![n("Pipe Three")]);

    let mut users = vec![(e("bob"), n("Bob Updated")), (e("cat2"), n("Cat Example"))];
    users.extend(std::iter::repeat_n((e("p"), n("Prepared")), PREPARED_RUNS));
    users.push((e("pipe1"), n("Pipe One")));
    users.push((e("pipe0"), n("Pipe Zero")));
    users.push((e("pipe3"), n("Pipe Three")));
    verify(
        &fx,
        &s,
        users,
        &[e("p"), n("Prepared"), e("pipe0"), n("Pipe Zero")],
    )
    .await;
}

// ---------------------------------------------------------------------------
// Regression: ParameterDescription repeats declared parameter types
// ---------------------------------------------------------------------------

/// PostgreSQL answers Describe (statement) with the parameter types the
/// client declared in Parse; pgveil used to answer with the policy's type
/// for a protected parameter (`text` where the client declared `varchar`,
/// `int4` where it declared `int8`). A non-zero declared type now wins and
/// Bind converts the value to the policy's type.
#[tokio::test]
async fn parameter_description_keeps_declared_types() {
    let fx = Calmony::start();
    let app = fx.app("calmony_app").await;
    let st = app
        .prepare_typed(
            "INSERT INTO users (email, name, plan) VALUES ($1, $2, $3)",
            &[Type::VARCHAR, Type::VARCHAR, Type::VARCHAR],
        )
        .await
        .unwrap();
    assert_eq!(
        st.params(),
        &[Type::VARCHAR, Type::VARCHAR, Type::VARCHAR],
        "declared types, as PostgreSQL reports them (plan is unprotected and already right)"
    );
    let doc = fx.app("clinician").await;
    let st = doc
        .prepare_typed(
            "INSERT INTO phi.member_profile (ssn, risk_score) VALUES ($1, $2) RETURNING id",
            &[Type::VARCHAR, Type::INT8],
        )
        .await
        .unwrap_or_else(|e| panic!("{}", err_text(&e)));
    assert_eq!(st.params(), &[Type::VARCHAR, Type::INT8]);
    // The values are sent in the declared types and stored as the policy's.
    let id: i64 = doc
        .query_one(&st, &[&"declared-ssn-771", &42i64])
        .await
        .unwrap_or_else(|e| panic!("{}", err_text(&e)))
        .get(0);
    let row = doc
        .query_one(
            "SELECT ssn, risk_score FROM phi.member_profile WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap_or_else(|e| panic!("{}", err_text(&e)));
    assert_eq!(row.get::<_, &str>(0), "declared-ssn-771");
    assert_eq!(row.get::<_, i32>(1), 42);
    fx.assert_no_plaintext(&["declared-ssn-771"]).await;
}

/// The same regression as pgjdbc users met it: a PreparedStatement batch
/// with the driver's defaults (`setString` declares varchar) into a
/// protected column. pgjdbc describes the statement before the batch and
/// threw `IllegalArgumentException: Can't change resolved type for param: 1
/// from 1043 to 25`.
#[tokio::test]
async fn jdbc_prepared_batch_with_default_settings() {
    let s = Scenario {
        tag: "jdbc-batch",
        nn: 32,
    };
    let classes = compile_jdbc_matrix();
    let fx = Calmony::start();
    let out = java(&classes)
        .arg("Matrix")
        .args([
            s.tag,
            &s.nn.to_string(),
            &fx.pv.port().to_string(),
            "batch-default",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "JDBC batch with default settings failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A `text` parameter with arbitrary bytes (binary format), to send what a
/// `&str` cannot.
#[derive(Debug)]
struct RawText(Vec<u8>);

impl tokio_postgres::types::ToSql for RawText {
    fn to_sql(
        &self,
        _: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        out.extend_from_slice(&self.0);
        Ok(tokio_postgres::types::IsNull::No)
    }
    fn accepts(ty: &Type) -> bool {
        *ty == Type::TEXT
    }
    tokio_postgres::types::to_sql_checked!();
}

/// A DATE for tokio-postgres without chrono: days since 2000-01-01.
#[derive(Debug, PartialEq, Eq)]
struct PgDate(i32);

fn pg_date(y: i32, m: u32, d: u32) -> PgDate {
    PgDate(days_since_2000(y, m, d))
}

/// Days from 2000-01-01 to the civil date (Howard Hinnant's algorithm).
fn days_since_2000(y: i32, m: u32, d: u32) -> i32 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = (y - era * 400) as i64;
    let mp = ((m + 9) % 12) as i64;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era as i64 * 146097 + doe - 719468; // since 1970-01-01
    (days - 10957) as i32
}

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

impl<'a> tokio_postgres::types::FromSql<'a> for PgDate {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(PgDate(i32::from_be_bytes(raw.try_into()?)))
    }
    fn accepts(ty: &Type) -> bool {
        *ty == Type::DATE
    }
}

impl sqlx::Type<sqlx::Postgres> for PgDate {
    fn type_info() -> sqlx::postgres::PgTypeInfo {
        sqlx::postgres::PgTypeInfo::with_oid(sqlx::postgres::types::Oid(1082))
    }
    fn compatible(ty: &sqlx::postgres::PgTypeInfo) -> bool {
        ty.oid() == Some(sqlx::postgres::types::Oid(1082))
    }
}

impl sqlx::Encode<'_, sqlx::Postgres> for PgDate {
    fn encode_by_ref(
        &self,
        buf: &mut sqlx::postgres::PgArgumentBuffer,
    ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        buf.extend(&self.0.to_be_bytes());
        Ok(sqlx::encode::IsNull::No)
    }
}

impl sqlx::Decode<'_, sqlx::Postgres> for PgDate {
    fn decode(value: sqlx::postgres::PgValueRef<'_>) -> Result<Self, sqlx::error::BoxDynError> {
        assert_eq!(value.format(), sqlx::postgres::PgValueFormat::Binary);
        Ok(PgDate(i32::from_be_bytes(value.as_bytes()?.try_into()?)))
    }
}
