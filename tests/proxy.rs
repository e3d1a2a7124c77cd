//! Proxy core (issue 2): pgveil without a policy must be invisible. The
//! tests run the same operations through pgveil and directly against the
//! same cluster and compare the results, for md5, SCRAM and TLS connections.
//!
//! About SCRAM and TLS: with TLS on the client leg *and* on the upstream leg,
//! plain relaying of SCRAM cannot work (the client's proof is bound to the
//! client-side TLS session only through channel binding, which a terminating
//! proxy cannot carry; verifying SCRAM in pgveil with the user's verifier is
//! issue 8). So the TLS variants here are: TLS on both legs with md5, and a
//! TLS client leg with SCRAM relayed to a plain upstream. SCRAM with both
//! legs plain is its own variant.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use futures::{SinkExt, TryStreamExt, future};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_postgres::error::SqlState;
use tokio_postgres::{AsyncMessage, NoTls, SimpleQueryMessage};

const USER: &str = "app";
const PW: &str = "app-Pw-1";
const DB: &str = "appdb";

// ---------------------------------------------------------------------------
// Harness self-checks: direct connections, no pgveil involved.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn harness_cluster_auth_methods() {
    for hba in [Hba::Trust, Hba::Password, Hba::Md5, Hba::Scram] {
        let pg = PgCluster::start(hba);
        pg.create_role("app", Some("s3cret"));
        let c = pg.connect("app", Some("s3cret"), "postgres").await;
        let row = c
            .query_one("SELECT current_user::text, 40 + 2", &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), "app");
        assert_eq!(row.get::<_, i32>(1), 42);
        if hba != Hba::Trust {
            let err = try_connect_to(pg.port(), "app", Some("wrong"), "postgres")
                .await
                .err()
                .unwrap_or_else(|| panic!("{hba:?}: a wrong password was accepted"));
            assert_eq!(
                err.code(),
                Some(&SqlState::INVALID_PASSWORD),
                "{hba:?}: {err}"
            );
        }
        let stored = pg.psql(
            "postgres",
            "SELECT left(rolpassword, 3) FROM pg_authid WHERE rolname = 'app'",
        );
        match hba {
            Hba::Md5 => assert_eq!(stored.trim(), "md5"),
            // PostgreSQL 15's default password_encryption.
            Hba::Scram | Hba::Trust | Hba::Password => assert_eq!(stored.trim(), "SCR"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn harness_cluster_tls_hostssl_only() {
    let certs_dir = tempfile::tempdir().unwrap();
    let certs = make_certs(certs_dir.path());
    let pg = PgCluster::start_with(PgOptions {
        hba: Hba::Scram,
        tls: Some((
            certs.server_cert_path.clone(),
            certs.server_key_path.clone(),
        )),
        hostssl_only: true,
        extra_conf: vec!["max_connections = 50".into()],
    });
    pg.create_role("app", Some("pw"));
    // Plain TCP is refused for ordinary users...
    let err = try_connect_to(pg.port(), "app", Some("pw"), "postgres")
        .await
        .expect_err("non-TLS login must be refused by hostssl");
    let text = err_text(&err);
    assert!(text.contains("no encryption"), "{text}");
    // ... TLS works (and verifies the certificate chain and host name) ...
    let c = connect_tls_to(pg.port(), "app", Some("pw"), "postgres", &certs.ca_pem_path)
        .await
        .unwrap();
    let ssl: bool = c
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(ssl);
    // ... and the superuser can always set up over plain TCP.
    assert_eq!(pg.psql("postgres", "SHOW max_connections").trim(), "50");
}

// ---------------------------------------------------------------------------
// Test environments: one cluster, one pgveil, certificates.
// ---------------------------------------------------------------------------

/// How the two legs are secured and authenticated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// md5, plain TCP on both legs.
    Md5,
    /// SCRAM-SHA-256, plain TCP on both legs.
    Scram,
    /// TLS on both legs: `client_tls: require`, `upstream.tls: verify-full`
    /// against a cluster that only accepts `hostssl`; md5 (SCRAM cannot be
    /// relayed across two TLS legs, see the file comment / issue 8).
    TlsMd5,
    /// TLS client leg (`client_tls: require`), SCRAM relayed to a plain
    /// upstream.
    TlsScramPlainUpstream,
    /// Trust, plain: for the raw-protocol tests.
    Trust,
}

impl Kind {
    fn client_tls(self) -> bool {
        matches!(self, Kind::TlsMd5 | Kind::TlsScramPlainUpstream)
    }
    fn upstream_tls(self) -> bool {
        self == Kind::TlsMd5
    }
    fn hba(self) -> Hba {
        match self {
            Kind::Md5 | Kind::TlsMd5 => Hba::Md5,
            Kind::Scram | Kind::TlsScramPlainUpstream => Hba::Scram,
            Kind::Trust => Hba::Trust,
        }
    }
}

/// Where to connect: pgveil or the cluster directly, with TLS when `ca` is
/// set (trusting that CA, checking the host name).
#[derive(Clone, Debug)]
struct Target {
    port: u16,
    ca: Option<PathBuf>,
}

impl Target {
    fn config(&self, user: &str, password: Option<&str>, db: &str) -> tokio_postgres::Config {
        let mut cfg = pg_config(self.port, user, password, db);
        if self.ca.is_some() {
            cfg.ssl_mode(tokio_postgres::config::SslMode::Require);
        }
        cfg
    }

    async fn session(&self) -> Session {
        self.session_with(&self.config(USER, Some(PW), DB)).await
    }

    async fn session_with(&self, cfg: &tokio_postgres::Config) -> Session {
        connect_session(cfg, self.ca.as_deref())
            .await
            .unwrap_or_else(|e| panic!("connect to {self:?}: {}", err_text(&e)))
    }

    /// libpq connection string for psql / pgbench.
    fn conninfo(&self, sslmode: &str) -> String {
        let mut s = format!(
            "host=127.0.0.1 port={} user={USER} dbname={DB} sslmode={sslmode} connect_timeout=20",
            self.port
        );
        if let Some(ca) = &self.ca {
            s += &format!(" sslrootcert={}", ca.display());
        }
        s
    }

    async fn cancel(&self, token: &tokio_postgres::CancelToken) {
        let r = match &self.ca {
            Some(ca) => token.cancel_query(RustlsConnector::with_ca(ca)).await,
            None => token.cancel_query(NoTls).await,
        };
        r.unwrap_or_else(|e| panic!("cancel via {self:?}: {}", err_text(&e)));
    }
}

struct Env {
    kind: Kind,
    certs: Certs,
    pv: Pgveil,
    pg: PgCluster,
    _certs_dir: tempfile::TempDir,
}

impl Env {
    fn start(kind: Kind) -> Env {
        Self::start_with(kind, "", Vec::new())
    }

    /// `extra_yaml` is appended to the pgveil config; `extra_conf` goes to
    /// postgresql.conf.
    fn start_with(kind: Kind, extra_yaml: &str, extra_conf: Vec<String>) -> Env {
        let certs_dir = tempfile::tempdir().unwrap();
        let certs = make_certs(certs_dir.path());
        let pg = PgCluster::start_with(PgOptions {
            hba: kind.hba(),
            tls: kind.upstream_tls().then(|| {
                (
                    certs.server_cert_path.clone(),
                    certs.server_key_path.clone(),
                )
            }),
            hostssl_only: kind.upstream_tls(),
            extra_conf,
        });
        pg.create_role(USER, Some(PW));
        pg.create_database_owned(DB, USER);

        let mut yaml = format!(
            "listen: 127.0.0.1:{}\nupstream:\n  host: 127.0.0.1\n  port: {}\n",
            free_port(),
            pg.port()
        );
        if kind.upstream_tls() {
            yaml += &format!(
                "  tls: verify-full\n  ca_file: {}\n",
                certs.ca_pem_path.display()
            );
        } else {
            yaml += "  tls: disable\n";
        }
        if kind.client_tls() {
            yaml += &format!(
                "client_tls:\n  mode: require\n  cert_file: {}\n  key_file: {}\n",
                certs.server_cert_path.display(),
                certs.server_key_path.display()
            );
        } else {
            yaml += "client_tls:\n  mode: disable\n";
        }
        yaml += extra_yaml;
        let pv = Pgveil::start(&yaml);
        Env {
            kind,
            certs,
            pv,
            pg,
            _certs_dir: certs_dir,
        }
    }

    fn proxy(&self) -> Target {
        Target {
            port: self.pv.port(),
            ca: self
                .kind
                .client_tls()
                .then(|| self.certs.ca_pem_path.clone()),
        }
    }

    fn direct(&self) -> Target {
        Target {
            port: self.pg.port(),
            ca: self
                .kind
                .upstream_tls()
                .then(|| self.certs.ca_pem_path.clone()),
        }
    }
}

fn code(e: &tokio_postgres::Error) -> String {
    match e.code() {
        Some(c) => c.code().to_string(),
        None => format!("(no SQLSTATE: {})", err_text(e)),
    }
}

/// Compare two transcripts line by line with a readable failure.
fn assert_same(what: &str, direct: &[String], proxied: &[String]) {
    for (i, (d, p)) in direct.iter().zip(proxied).enumerate() {
        assert_eq!(
            d, p,
            "{what}: line {i} differs (left: direct, right: pgveil)"
        );
    }
    assert_eq!(
        direct.len(),
        proxied.len(),
        "{what}: transcript lengths differ (direct {}, pgveil {})",
        direct.len(),
        proxied.len()
    );
}

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

// ---------------------------------------------------------------------------
// tokio-postgres: the same scenario direct and through pgveil.
// ---------------------------------------------------------------------------

/// Everything the issue lists for a driver, recorded as a transcript.
async fn scenario(t: &Target) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();

    // Startup parameters: application_name, options, database.
    let mut cfg = t.config(USER, Some(PW), DB);
    cfg.application_name("pgveil-test-app")
        .options("-c statement_timeout=4321 -c search_path=public");
    let Session {
        client: c,
        mut messages,
        params,
        task: _task,
    } = t.session_with(&cfg).await;
    let row = c
        .query_one(
            "SELECT current_user::text, current_database()::text, current_setting('application_name'), \
             current_setting('statement_timeout'), current_setting('search_path'), \
             (SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid())",
            &[],
        )
        .await
        .unwrap();
    out.push(format!(
        "startup: {:?}",
        (
            row.get::<_, String>(0),
            row.get::<_, String>(1),
            row.get::<_, String>(2),
            row.get::<_, String>(3),
            row.get::<_, String>(4),
            row.get::<_, bool>(5),
        )
    ));

    // ParameterStatus: initial values, then a change by SET.
    {
        let p = params.lock().unwrap().clone();
        for name in TRACKED_PARAMS {
            out.push(format!("param {name} = {:?}", p.get(*name)));
        }
    }
    c.batch_execute("SET application_name = 'changed-by-set'")
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let v = params.lock().unwrap().get("application_name").cloned();
        if v.as_deref() == Some("changed-by-set") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "ParameterStatus for application_name never arrived (last {v:?})"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    out.push("param application_name changed by SET".into());

    // A table with many types, filled by a prepared statement in one
    // pipeline (all Bind/Execute before awaiting anything).
    c.batch_execute(
        "CREATE TEMP TABLE items (id int4 PRIMARY KEY, i2 int2, i8 int8, f8 float8, ok bool, \
         name text, data bytea, tags text[])",
    )
    .await
    .unwrap();
    let ins = c
        .prepare("INSERT INTO items VALUES ($1, $2, $3, $4, $5, $6, $7, $8)")
        .await
        .unwrap();
    type RowVals = (
        i32,
        Option<i16>,
        Option<i64>,
        Option<f64>,
        Option<bool>,
        Option<String>,
        Option<Vec<u8>>,
        Option<Vec<String>>,
    );
    let rows: Vec<RowVals> = (0..200)
        .map(|i: i32| {
            let null = i % 11 == 0;
            let mut data: Vec<u8> = (0..=255u8).collect();
            data.rotate_left((i % 256) as usize);
            (
                i,
                (!null).then_some((i * 7 - 500) as i16),
                (!null).then_some(i as i64 * 1_000_000_007 - 3),
                (!null).then_some(i as f64 / 3.0),
                (!null).then_some(i % 2 == 0),
                (!null).then(|| {
                    if i % 7 == 0 {
                        String::new()
                    } else {
                        format!("héllo ✓ \"quoted\" \\ back\tslash {i}")
                    }
                }),
                (!null).then_some(data),
                (!null).then(|| vec![format!("t{i}"), "a,b".into(), "{x}".into()]),
            )
        })
        .collect();
    let (cr, insr) = (&c, &ins);
    let inserted = future::try_join_all(rows.iter().map(|r| async move {
        cr.execute(insr, &[&r.0, &r.1, &r.2, &r.3, &r.4, &r.5, &r.6, &r.7])
            .await
    }))
    .await
    .unwrap();
    out.push(format!(
        "pipelined inserts: {}",
        inserted.iter().sum::<u64>()
    ));

    // Binary results through a named statement.
    let all = c
        .query("SELECT * FROM items ORDER BY id", &[])
        .await
        .unwrap();
    let read: Vec<RowVals> = all
        .iter()
        .map(|r| {
            (
                r.get(0),
                r.get(1),
                r.get(2),
                r.get(3),
                r.get(4),
                r.get(5),
                r.get(6),
                r.get(7),
            )
        })
        .collect();
    assert_eq!(read, rows, "binary results differ from what was inserted");
    out.push(format!("binary rows: {} ok", read.len()));

    // Text results (simple protocol), several statements in one Query.
    let msgs = c
        .simple_query(
            "SELECT id, name, data, tags, f8 FROM items WHERE id < 15 ORDER BY id; \
             SELECT 1 AS one, NULL AS nothing, 'x'::text AS x; \
             UPDATE items SET ok = NOT ok WHERE id < 10; \
             SHOW search_path",
        )
        .await
        .unwrap();
    for m in &msgs {
        out.push(simple_msg(m));
    }

    // An error in the middle of a multi-statement simple query: earlier
    // statements stand (implicit transaction is rolled back as a whole).
    let e = c
        .simple_query("INSERT INTO items (id) VALUES (1000); SELECT 1/0; INSERT INTO items (id) VALUES (1001)")
        .await
        .unwrap_err();
    out.push(format!("multi-statement error: {}", code(&e)));
    let n: i64 = c
        .query_one("SELECT count(*) FROM items WHERE id >= 1000", &[])
        .await
        .unwrap()
        .get(0);
    out.push(format!("rows after failed multi-statement: {n}"));

    // Unnamed statements (query_typed), ad-hoc statements, and a named
    // statement executed many times in one pipeline.
    let r = c
        .query_typed_one(
            "SELECT $1::int8 * 2, $2::text || '!'",
            &[
                (&21i64, tokio_postgres::types::Type::INT8),
                (&"hi", tokio_postgres::types::Type::TEXT),
            ],
        )
        .await
        .unwrap();
    out.push(format!(
        "unnamed: {} {}",
        r.get::<_, i64>(0),
        r.get::<_, String>(1)
    ));
    let sel = c
        .prepare("SELECT name, i8 FROM items WHERE id = $1")
        .await
        .unwrap();
    let ids: Vec<i32> = (1..60).collect();
    let (cr, selr) = (&c, &sel);
    let res = future::try_join_all(
        ids.iter()
            .map(|id| async move { cr.query_opt(selr, &[id]).await }),
    )
    .await
    .unwrap();
    let got: Vec<String> = res
        .iter()
        .map(|r| {
            let r = r.as_ref().unwrap();
            format!(
                "{:?}/{:?}",
                r.get::<_, Option<String>>(0),
                r.get::<_, Option<i64>>(1)
            )
        })
        .collect();
    out.push(format!(
        "named x59 pipelined: {}",
        sha(got.join("|").as_bytes())
    ));

    // Errors in the middle of a pipeline: each request has its own Sync, so
    // the neighbours succeed...
    let div = c.prepare("SELECT 10 / $1::int4").await.unwrap();
    let (a, b, d) = tokio::join!(
        c.query_one(&div, &[&2i32]),
        c.query_one(&div, &[&0i32]),
        c.query_one(&div, &[&5i32])
    );
    out.push(format!(
        "pipeline error: {} / {} / {}",
        a.map(|r| r.get::<_, i32>(0).to_string())
            .unwrap_or_else(|e| code(&e)),
        b.map(|r| r.get::<_, i32>(0).to_string())
            .unwrap_or_else(|e| code(&e)),
        d.map(|r| r.get::<_, i32>(0).to_string())
            .unwrap_or_else(|e| code(&e)),
    ));
    // ... except inside a transaction block, where everything after the
    // error fails with 25P02 until ROLLBACK.
    // (Statements are prepared first so the pipeline order is fixed.)
    let ins_id = c
        .prepare("INSERT INTO items (id) VALUES ($1)")
        .await
        .unwrap();
    let count = c.prepare("SELECT count(*) FROM items").await.unwrap();
    c.batch_execute("BEGIN").await.unwrap();
    let (a, b, d) = tokio::join!(
        c.execute(&ins_id, &[&2000i32]),
        c.execute(&ins_id, &[&1i32]),
        c.query_one(&count, &[])
    );
    out.push(format!(
        "pipeline error in transaction: {} / {} / {}",
        a.map(|n| n.to_string()).unwrap_or_else(|e| code(&e)),
        b.map(|n| n.to_string()).unwrap_or_else(|e| code(&e)),
        d.map(|r| r.get::<_, i64>(0).to_string())
            .unwrap_or_else(|e| code(&e)),
    ));
    c.batch_execute("ROLLBACK").await.unwrap();
    let n: i64 = c
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .unwrap()
        .get(0);
    out.push(format!("count after rollback: {n}"));

    // Named portals with a row limit (Execute n / PortalSuspended).
    {
        let mut c2 = t.session().await;
        c2.client
            .batch_execute("CREATE TEMP TABLE nums AS SELECT g AS n FROM generate_series(1, 95) g")
            .await
            .unwrap();
        let tx = c2.client.transaction().await.unwrap();
        let st = tx
            .prepare("SELECT n FROM nums WHERE n % $1 = 0 ORDER BY n")
            .await
            .unwrap();
        let portal = tx.bind(&st, &[&1i32]).await.unwrap();
        let mut batches = Vec::new();
        loop {
            let rows = tx.query_portal(&portal, 40).await.unwrap();
            if rows.is_empty() {
                break;
            }
            batches.push(format!(
                "{}..{}",
                rows[0].get::<_, i32>(0),
                rows[rows.len() - 1].get::<_, i32>(0)
            ));
        }
        tx.commit().await.unwrap();
        out.push(format!("portal batches: {batches:?}"));
    }

    // COPY IN (text format with escapes) and COPY OUT (text, CSV, binary).
    c.batch_execute("CREATE TEMP TABLE copy_t (id int4, txt text, b bytea)")
        .await
        .unwrap();
    let sink = c
        .copy_in::<_, Bytes>("COPY copy_t FROM STDIN")
        .await
        .unwrap();
    futures::pin_mut!(sink);
    let mut chunk = String::new();
    for i in 0..20_000 {
        let txt = match i % 5 {
            0 => "\\N".to_string(),
            1 => format!("tab\\there\\nnewline {i}"),
            2 => format!("ünïcødé {i}"),
            3 => String::new(),
            _ => "x".repeat(i % 300),
        };
        chunk += &format!(
            "{i}\t{txt}\t\\\\x{:08x}\n",
            (i as u32).wrapping_mul(2_654_435_761)
        );
        if chunk.len() > 60_000 {
            sink.send(Bytes::from(std::mem::take(&mut chunk)))
                .await
                .unwrap();
        }
    }
    sink.send(Bytes::from(chunk)).await.unwrap();
    let copied = sink.finish().await.unwrap();
    out.push(format!("copy in: {copied}"));
    for (label, sql) in [
        ("text", "COPY (SELECT * FROM copy_t ORDER BY id) TO STDOUT"),
        (
            "csv",
            "COPY (SELECT * FROM copy_t ORDER BY id) TO STDOUT WITH (FORMAT csv, HEADER)",
        ),
        (
            "binary",
            "COPY (SELECT * FROM copy_t ORDER BY id) TO STDOUT WITH (FORMAT binary)",
        ),
    ] {
        let stream = c.copy_out(sql).await.unwrap();
        let chunks: Vec<Bytes> = stream.try_collect().await.unwrap();
        let all: Vec<u8> = chunks.concat();
        out.push(format!(
            "copy out {label}: {} bytes {}",
            all.len(),
            sha(&all)
        ));
    }
    // A COPY IN that fails on bad data leaves the session usable.
    let sink = c
        .copy_in::<_, Bytes>("COPY copy_t FROM STDIN")
        .await
        .unwrap();
    futures::pin_mut!(sink);
    let bad = async {
        sink.send(Bytes::from_static(
            b"1\tok\t\\\\x00\nnot-a-number\tx\t\\\\x00\n",
        ))
        .await?;
        sink.finish().await
    }
    .await;
    out.push(format!(
        "copy in bad data: {}",
        bad.map(|n| n.to_string()).unwrap_or_else(|e| code(&e))
    ));
    let n: i64 = c
        .query_one("SELECT count(*) FROM copy_t", &[])
        .await
        .unwrap()
        .get(0);
    out.push(format!("copy_t rows after failed copy: {n}"));

    // NOTICE.
    c.batch_execute("DO $$ BEGIN RAISE NOTICE 'hello %', 42; RAISE WARNING 'careful'; END $$")
        .await
        .unwrap();
    for _ in 0..2 {
        match messages.recv().await {
            Some(AsyncMessage::Notice(n)) => out.push(format!(
                "notice: {} {} {}",
                n.severity(),
                n.code().code(),
                n.message()
            )),
            other => panic!("expected a notice, got {other:?}"),
        }
    }

    // LISTEN / NOTIFY, from another session and from this one.
    c.batch_execute("LISTEN pgveil_chan").await.unwrap();
    let other = t.session().await;
    other
        .client
        .batch_execute("NOTIFY pgveil_chan, 'from another session'")
        .await
        .unwrap();
    c.batch_execute("SELECT pg_notify('pgveil_chan', 'from myself')")
        .await
        .unwrap();
    let mut notes = Vec::new();
    while notes.len() < 2 {
        match tokio::time::timeout(Duration::from_secs(10), messages.recv()).await {
            Ok(Some(AsyncMessage::Notification(n))) => {
                notes.push(format!("{}:{}", n.channel(), n.payload()))
            }
            Ok(other) => panic!("expected a notification, got {other:?}"),
            Err(_) => panic!("notification did not arrive within 10 s (got {notes:?})"),
        }
    }
    notes.sort();
    out.push(format!("notifications: {notes:?}"));
    drop(other);

    // Cancel: a long query is cancelled with 57014 (not run to its end) and
    // the session stays usable. The cancel is sent once another session
    // sees the statement running.
    let token = c.cancel_token();
    let watcher = t.session().await;
    let (r, ()) = tokio::join!(c.simple_query("SELECT pg_sleep(30)"), async {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let n: i64 = watcher
                .client
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity \
                     WHERE state = 'active' AND query = 'SELECT pg_sleep(30)'",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            if n == 1 {
                break;
            }
            assert!(Instant::now() < deadline, "pg_sleep(30) never started");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        t.cancel(&token).await;
    });
    drop(watcher);
    let e = r.expect_err("pg_sleep(30) was not cancelled");
    out.push(format!("cancel: {}", code(&e)));
    let one: i32 = c.query_one("SELECT 1", &[]).await.unwrap().get(0);
    out.push(format!("after cancel: {one}"));

    // Many parallel sessions, each with its own settings, interleaved.
    let sessions = future::join_all((0..20).map(|_| t.session())).await;
    let results = future::try_join_all(sessions.iter().enumerate().map(|(i, s)| async move {
        s.client
            .batch_execute(&format!("SET pgveil.test_marker = 'session-{i}'"))
            .await?;
        let st = s
            .client
            .prepare("SELECT current_setting('pgveil.test_marker'), $1::int4 * 3, pg_backend_pid()")
            .await?;
        let mut acc = Vec::new();
        for k in 0..10i32 {
            let r = s.client.query_one(&st, &[&k]).await?;
            acc.push((
                r.get::<_, String>(0),
                r.get::<_, i32>(1),
                r.get::<_, i32>(2),
            ));
        }
        Ok::<_, tokio_postgres::Error>(acc)
    }))
    .await
    .unwrap();
    let mut pids = std::collections::BTreeSet::new();
    for (i, acc) in results.iter().enumerate() {
        for (k, (marker, tripled, pid)) in acc.iter().enumerate() {
            assert_eq!(marker, &format!("session-{i}"), "sessions crossed");
            assert_eq!(*tripled, k as i32 * 3);
            pids.insert(*pid);
        }
    }
    out.push(format!(
        "parallel sessions: {} distinct backends",
        pids.len()
    ));
    out
}

fn simple_msg(m: &SimpleQueryMessage) -> String {
    match m {
        SimpleQueryMessage::Row(r) => {
            let vals: Vec<Option<&str>> = (0..r.len()).map(|i| r.get(i)).collect();
            format!("row {vals:?}")
        }
        SimpleQueryMessage::CommandComplete(n) => format!("complete {n}"),
        SimpleQueryMessage::RowDescription(cols) => {
            let names: Vec<&str> = cols.iter().map(|c| c.name()).collect();
            format!("columns {names:?}")
        }
        _ => "other".into(),
    }
}

async fn tokio_postgres_same_as_direct(kind: Kind) {
    let env = Env::start(kind);
    let direct = scenario(&env.direct()).await;
    let proxied = scenario(&env.proxy()).await;
    assert_same(&format!("tokio-postgres {kind:?}"), &direct, &proxied);
    // The TLS variants really used TLS where configured.
    let startup = &proxied[0];
    assert!(
        startup.ends_with(&format!("{})", kind.upstream_tls())),
        "upstream TLS state: {startup}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres_md5() {
    tokio_postgres_same_as_direct(Kind::Md5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres_scram() {
    tokio_postgres_same_as_direct(Kind::Scram).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres_tls_both_legs_md5() {
    tokio_postgres_same_as_direct(Kind::TlsMd5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres_tls_client_scram_plain_upstream() {
    // Our rustls connector offers tls-server-end-point channel binding: if
    // pgveil advertised SCRAM-SHA-256-PLUS the client would pick it and the
    // login would fail, so this also checks that PLUS is never advertised.
    tokio_postgres_same_as_direct(Kind::TlsScramPlainUpstream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_is_rejected_through_pgveil() {
    for kind in [Kind::Md5, Kind::Scram] {
        let env = Env::start(kind);
        let err = try_connect_to(env.pv.port(), USER, Some("not-the-password"), DB)
            .await
            .err()
            .unwrap_or_else(|| panic!("{kind:?}: wrong password accepted through pgveil"));
        assert_eq!(
            err.code(),
            Some(&SqlState::INVALID_PASSWORD),
            "{kind:?}: {}",
            err_text(&err)
        );
        // And the proxy keeps serving.
        let c = env.pv.connect(USER, Some(PW), DB).await;
        c.simple_query("SELECT 1").await.unwrap();
    }
}

// ---------------------------------------------------------------------------
// psql: a multi-statement script with \copy in and out.
// ---------------------------------------------------------------------------

const PSQL_SCRIPT: &str = r#"
CREATE TEMP TABLE p (id int, name text, amount numeric(12,2));
INSERT INTO p SELECT g, 'name ' || g, g * 1.5 FROM generate_series(1, 1000) g;
SELECT count(*), sum(amount) FROM p;
SELECT 1 AS one \; SELECT 2 AS two \; SELECT 'three' AS three;
\copy p FROM 'in.csv' WITH (FORMAT csv)
SELECT count(*), sum(amount), max(name) FROM p;
SELECT 1/0;
SELECT 'after the error' AS still_running;
BEGIN;
UPDATE p SET amount = amount + 1 WHERE id <= 10;
SELECT sum(amount) FROM p WHERE id <= 10;
ROLLBACK;
SELECT sum(amount) FROM p WHERE id <= 10;
\copy (SELECT * FROM p ORDER BY id, name) TO 'out.csv' WITH (FORMAT csv, HEADER)
\copy p TO 'out.txt'
DO $$ BEGIN RAISE NOTICE 'notice from psql %', 7; END $$;
SELECT current_user, current_database(), (SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()) AS upstream_ssl;
"#;

fn psql_input_csv() -> String {
    let mut s = String::new();
    for i in 0..5000 {
        s += &format!("{},\"quoted, \"\"name\"\" {i}\",{}.25\n", 2000 + i, i);
    }
    s += "9999,,\n";
    s
}

/// Run the script in a fresh directory; returns (stdout, stderr, out.csv,
/// out.txt).
fn run_psql_script(pg: &PgCluster, conninfo: &str) -> (String, String, String, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("script.sql"), PSQL_SCRIPT).unwrap();
    std::fs::write(dir.path().join("in.csv"), psql_input_csv()).unwrap();
    let out = psql_cmd(pg, conninfo)
        .current_dir(dir.path())
        .args(["-f", "script.sql"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "psql failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let read = |n: &str| std::fs::read_to_string(dir.path().join(n)).unwrap_or_default();
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        read("out.csv"),
        read("out.txt"),
    )
}

fn psql_cmd(pg: &PgCluster, conninfo: &str) -> Command {
    let mut cmd = Command::new(pg.bin("psql"));
    for (k, _) in std::env::vars() {
        if k.starts_with("PG") {
            cmd.env_remove(k);
        }
    }
    cmd.env("PGPASSWORD", PW)
        .args(["-X", "-v", "ON_ERROR_STOP=0", "-d", conninfo])
        .stdin(Stdio::null());
    cmd
}

fn psql_same_as_direct(kind: Kind, sslmode: &str) {
    let env = Env::start(kind);
    // The direct leg uses TLS only where the cluster serves it.
    let direct_target = env.direct();
    let direct_mode = if direct_target.ca.is_some() {
        sslmode
    } else {
        "prefer"
    };
    let direct = run_psql_script(&env.pg, &direct_target.conninfo(direct_mode));
    let proxied = run_psql_script(&env.pg, &env.proxy().conninfo(sslmode));
    assert!(direct.1.contains("division by zero"), "{}", direct.1);
    assert!(direct.1.contains("notice from psql 7"), "{}", direct.1);
    assert!(
        direct.2.lines().count() > 6000,
        "out.csv: {}",
        direct.2.len()
    );
    assert_eq!(
        direct.0, proxied.0,
        "psql stdout differs ({kind:?}, {sslmode})"
    );
    assert_eq!(
        direct.1, proxied.1,
        "psql stderr differs ({kind:?}, {sslmode})"
    );
    assert_eq!(
        direct.2, proxied.2,
        "\\copy out (csv) differs ({kind:?}, {sslmode})"
    );
    assert_eq!(
        direct.3, proxied.3,
        "\\copy out (text) differs ({kind:?}, {sslmode})"
    );
    if kind.client_tls() {
        // libpq really negotiated TLS with pgveil.
        let out = psql_cmd(&env.pg, &env.proxy().conninfo(sslmode))
            .args(["-At", "-c", "\\conninfo"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("SSL connection"), "{text}");
    }
}

#[test]
fn psql_md5() {
    psql_same_as_direct(Kind::Md5, "prefer");
}

#[test]
fn psql_scram() {
    psql_same_as_direct(Kind::Scram, "prefer");
}

#[test]
fn psql_tls_require() {
    psql_same_as_direct(Kind::TlsMd5, "require");
}

#[test]
fn psql_tls_verify_full() {
    psql_same_as_direct(Kind::TlsMd5, "verify-full");
}

#[test]
fn psql_tls_verify_full_scram_plain_upstream() {
    psql_same_as_direct(Kind::TlsScramPlainUpstream, "verify-full");
}

#[test]
fn psql_verify_full_rejects_unknown_ca() {
    let env = Env::start(Kind::TlsMd5);
    let other_dir = tempfile::tempdir().unwrap();
    let other = make_certs(other_dir.path());
    let conninfo = format!(
        "host=127.0.0.1 port={} user={USER} dbname={DB} sslmode=verify-full sslrootcert={}",
        env.pv.port(),
        other.ca_pem_path.display()
    );
    let out = psql_cmd(&env.pg, &conninfo)
        .args(["-c", "SELECT 1"])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "verify-full accepted a certificate from another CA"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("certificate verify failed"), "{err}");
    // client_tls: require refuses a plain connection.
    let conninfo = format!(
        "host=127.0.0.1 port={} user={USER} dbname={DB} sslmode=disable",
        env.pv.port()
    );
    let out = psql_cmd(&env.pg, &conninfo)
        .args(["-c", "SELECT 1"])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "client_tls: require let a plain connection in"
    );
}

// ---------------------------------------------------------------------------
// pgbench: init plus 10 s runs in simple, extended and prepared mode.
// ---------------------------------------------------------------------------

fn pgbench(pg: &PgCluster, conninfo: &str, args: &[&str]) -> Output {
    let mut cmd = Command::new(pg.bin("pgbench"));
    for (k, _) in std::env::vars() {
        if k.starts_with("PG") {
            cmd.env_remove(k);
        }
    }
    // pgbench takes the connection from libpq environment variables.
    for part in conninfo.split_whitespace() {
        let (k, v) = part.split_once('=').unwrap();
        let var = match k {
            "host" => "PGHOST",
            "port" => "PGPORT",
            "user" => "PGUSER",
            "dbname" => "PGDATABASE",
            "sslmode" => "PGSSLMODE",
            "sslrootcert" => "PGSSLROOTCERT",
            "connect_timeout" => "PGCONNECT_TIMEOUT",
            other => panic!("unexpected conninfo key {other}"),
        };
        cmd.env(var, v);
    }
    cmd.env("PGPASSWORD", PW).args(args).stdin(Stdio::null());
    cmd.output().unwrap()
}

fn pgbench_ok(pg: &PgCluster, conninfo: &str, args: &[&str]) -> String {
    let out = pgbench(pg, conninfo, args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "pgbench {args:?} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    stdout + &stderr
}

/// `(processed, failed)` from pgbench's summary.
fn pgbench_counts(report: &str) -> (u64, u64) {
    let grab = |prefix: &str| -> u64 {
        report
            .lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.split('/').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {prefix:?} in pgbench output:\n{report}"))
    };
    (
        grab("number of transactions actually processed:"),
        grab("number of failed transactions:"),
    )
}

/// The pgbench tables' contents, as one hash per table.
fn pgbench_digest(pg: &PgCluster, db: &str) -> String {
    pg.psql(
        db,
        "SELECT (SELECT md5(string_agg(aid || ':' || bid || ':' || abalance || ':' || filler, ',' ORDER BY aid)) FROM pgbench_accounts), \
                (SELECT md5(string_agg(tid || ':' || bid || ':' || tbalance, ',' ORDER BY tid)) FROM pgbench_tellers), \
                (SELECT md5(string_agg(bid || ':' || bbalance, ',' ORDER BY bid)) FROM pgbench_branches), \
                (SELECT count(*) FROM pgbench_history)",
    )
}

fn pgbench_modes(kind: Kind) {
    let env = Env::start(kind);
    let sslmode = if kind.client_tls() {
        "require"
    } else {
        "prefer"
    };
    let proxy = env.proxy().conninfo(sslmode);
    // Init through pgveil (uses COPY FROM STDIN) and directly into a second
    // database: the resulting tables must be identical.
    env.pg.create_database_owned("appdb_direct", USER);
    pgbench_ok(&env.pg, &proxy, &["-i", "-s", "1", "-q"]);
    let direct = env
        .direct()
        .conninfo(if kind.upstream_tls() {
            "require"
        } else {
            "prefer"
        })
        .replace(&format!("dbname={DB}"), "dbname=appdb_direct");
    pgbench_ok(&env.pg, &direct, &["-i", "-s", "1", "-q"]);
    assert_eq!(
        pgbench_digest(&env.pg, DB),
        pgbench_digest(&env.pg, "appdb_direct"),
        "pgbench -i through pgveil produced different tables"
    );

    // The three protocol modes at once, 10 s each.
    let reports: Vec<(String, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = ["simple", "extended", "prepared"]
            .into_iter()
            .map(|mode| {
                let proxy = proxy.clone();
                let pg = &env.pg;
                s.spawn(move || {
                    let r = pgbench_ok(
                        pg,
                        &proxy,
                        &["-n", "-M", mode, "-c", "2", "-j", "1", "-T", "10"],
                    );
                    (mode.to_string(), r)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut total = 0;
    for (mode, report) in &reports {
        let (processed, failed) = pgbench_counts(report);
        assert!(
            processed > 0,
            "{kind:?} -M {mode}: no transactions:\n{report}"
        );
        assert_eq!(
            failed, 0,
            "{kind:?} -M {mode}: failed transactions:\n{report}"
        );
        total += processed;
    }
    // Every transaction left a consistent trace: balances add up.
    let check = env.pg.psql(
        DB,
        "SELECT (SELECT count(*) FROM pgbench_history), \
                (SELECT sum(abalance) FROM pgbench_accounts) = (SELECT sum(delta) FROM pgbench_history), \
                (SELECT sum(tbalance) FROM pgbench_tellers) = (SELECT sum(delta) FROM pgbench_history), \
                (SELECT sum(bbalance) FROM pgbench_branches) = (SELECT sum(delta) FROM pgbench_history)",
    );
    assert_eq!(
        check.trim(),
        format!("{total}|t|t|t"),
        "{kind:?}: {reports:?}"
    );
}

#[test]
fn pgbench_md5() {
    pgbench_modes(Kind::Md5);
}

#[test]
fn pgbench_scram() {
    pgbench_modes(Kind::Scram);
}

#[test]
fn pgbench_tls() {
    pgbench_modes(Kind::TlsMd5);
}

// ---------------------------------------------------------------------------
// Robustness: bad frames, vanishing clients, GSS, cancel routing, shutdown.
// ---------------------------------------------------------------------------

/// A raw protocol-3.0 StartupMessage.
fn startup_message(user: &str, db: &str) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&196_608i32.to_be_bytes());
    for (k, v) in [("user", user), ("database", db)] {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut msg = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    msg.extend_from_slice(&body);
    msg
}

/// Read one backend message: (tag, body).
async fn read_msg(s: &mut tokio::net::TcpStream) -> std::io::Result<(u8, Vec<u8>)> {
    let tag = s.read_u8().await?;
    let len = s.read_i32().await?;
    let mut body = vec![0; (len - 4) as usize];
    s.read_exact(&mut body).await?;
    Ok((tag, body))
}

/// Log in over a raw socket (trust auth) and read up to ReadyForQuery.
async fn raw_login(s: &mut tokio::net::TcpStream) {
    s.write_all(&startup_message(USER, DB)).await.unwrap();
    let (tag, body) = read_msg(s).await.unwrap();
    assert_eq!(
        (tag, &body[..]),
        (b'R', &[0, 0, 0, 0][..]),
        "expected AuthenticationOk, got {:?} {:?}",
        tag as char,
        String::from_utf8_lossy(&body)
    );
    loop {
        let (tag, _) = read_msg(s).await.unwrap();
        if tag == b'Z' {
            break;
        }
    }
}

/// Read until EOF or error (with a timeout): the connection must be closed
/// by pgveil. Returns what was received.
async fn expect_closed(s: &mut tokio::net::TcpStream, what: &str) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Err(_) => panic!("{what}: connection still open after 10 s (got {got:?})"),
            Ok(Ok(0)) | Ok(Err(_)) => return got,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_message_closes_only_that_connection() {
    let env = Env::start_with(Kind::Md5, "limits:\n  max_message_bytes: 4096\n", vec![]);
    let proxy = env.proxy();

    // A bystander with an open transaction.
    let a = proxy.session().await;
    a.client
        .batch_execute("BEGIN; CREATE TEMP TABLE keep (v int); INSERT INTO keep VALUES (7)")
        .await
        .unwrap();

    // 1 MB query: that connection gets an error and is closed.
    let b = proxy.session().await;
    let big = format!("SELECT '{}'", "x".repeat(1 << 20));
    let err = b
        .client
        .simple_query(&big)
        .await
        .expect_err("a 1 MB message went through a 4096-byte limit");
    // pgveil answers with a protocol-violation error before closing; the
    // client may instead see the socket reset under it (it is still sending
    // 1 MB when pgveil closes). Those are the only two acceptable outcomes.
    match err.code() {
        Some(code) => assert_eq!(code, &SqlState::PROTOCOL_VIOLATION, "{}", err_text(&err)),
        None => assert!(
            err.is_closed()
                || std::error::Error::source(&err)
                    .and_then(|e| e.downcast_ref::<std::io::Error>())
                    .is_some(),
            "neither 08P01 nor a closed connection: {}",
            err_text(&err)
        ),
    }
    eprintln!("oversized message: client saw {}", err_text(&err));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !b.client.is_closed() {
        assert!(Instant::now() < deadline, "oversized connection not closed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A raw client announcing a 2 GiB message and one with an impossible
    // length (< 4) are closed too, without pgveil allocating for them.
    for (label, frame) in [
        ("2 GiB length", [b'Q', 0x7f, 0xff, 0xff, 0xff]),
        ("length 2", [b'Q', 0, 0, 0, 2]),
    ] {
        let mut s = tokio::net::TcpStream::connect(env.pv.addr()).await.unwrap();
        s.write_all(&startup_message(USER, DB)).await.unwrap();
        // md5: answer nothing, just send the bad frame after the challenge.
        let (tag, _) = read_msg(&mut s).await.unwrap();
        assert_eq!(tag, b'R');
        s.write_all(&frame).await.unwrap();
        expect_closed(&mut s, label).await;
    }

    // The bystander and new sessions are fine.
    let v: i32 = a
        .client
        .query_one("SELECT v FROM keep", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, 7);
    a.client.batch_execute("COMMIT").await.unwrap();
    let c = proxy.session().await;
    let r = c
        .client
        .query_one("SELECT 'still up'::text", &[])
        .await
        .unwrap();
    assert_eq!(r.get::<_, String>(0), "still up");
    // Up to the limit works: a 3000-byte query.
    let ok = format!("SELECT length('{}')", "y".repeat(3000));
    c.client.simple_query(&ok).await.unwrap();

    let logs = env.pv.logs();
    assert!(
        logs.to_lowercase().contains("protocol"),
        "no log line about the protocol violation:\n{logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gssenc_and_ssl_requests_answered_n() {
    let env = Env::start(Kind::Trust);
    // GSSENCRequest: 'N', then a normal startup on the same connection.
    let mut s = tokio::net::TcpStream::connect(env.pv.addr()).await.unwrap();
    s.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30])
        .await
        .unwrap();
    assert_eq!(
        s.read_u8().await.unwrap(),
        b'N',
        "GSSENCRequest not answered N"
    );
    raw_login(&mut s).await;
    // A query on the raw connection, then Terminate.
    let q = b"SELECT 41 + 1\0";
    let mut msg = vec![b'Q'];
    msg.extend_from_slice(&((q.len() + 4) as i32).to_be_bytes());
    msg.extend_from_slice(q);
    s.write_all(&msg).await.unwrap();
    let mut saw_row = false;
    loop {
        let (tag, body) = read_msg(&mut s).await.unwrap();
        if tag == b'D' {
            assert!(body.ends_with(b"42"), "{body:?}");
            saw_row = true;
        }
        if tag == b'Z' {
            break;
        }
    }
    assert!(saw_row);
    s.write_all(&[b'X', 0, 0, 0, 4]).await.unwrap();
    expect_closed(&mut s, "after Terminate").await;

    // SSLRequest with client_tls disabled: 'N', then plain startup works.
    let mut s = tokio::net::TcpStream::connect(env.pv.addr()).await.unwrap();
    s.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
        .await
        .unwrap();
    assert_eq!(
        s.read_u8().await.unwrap(),
        b'N',
        "SSLRequest not answered N"
    );
    raw_login(&mut s).await;

    // GSSENCRequest then SSLRequest (what libpq does with gssencmode=prefer).
    let mut s = tokio::net::TcpStream::connect(env.pv.addr()).await.unwrap();
    s.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30])
        .await
        .unwrap();
    assert_eq!(s.read_u8().await.unwrap(), b'N');
    s.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
        .await
        .unwrap();
    assert_eq!(s.read_u8().await.unwrap(), b'N');
    raw_login(&mut s).await;

    // A garbage startup packet closes only that connection.
    let mut s = tokio::net::TcpStream::connect(env.pv.addr()).await.unwrap();
    s.write_all(&[0, 0, 0, 3, 1, 2, 3, 4]).await.unwrap();
    expect_closed(&mut s, "garbage startup").await;
    let c = env.pv.connect(USER, None, DB).await;
    c.simple_query("SELECT 1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vanished_clients_release_their_backends() {
    // client_connection_check_interval lets PostgreSQL notice a closed
    // socket during pg_sleep: this checks that pgveil closes the upstream
    // side when the client goes away.
    let env = Env::start_with(
        Kind::Md5,
        "",
        vec!["client_connection_check_interval = 500".into()],
    );
    let proxy = env.proxy();
    let baseline = env.pg.backend_count(DB);

    let idle = proxy.session().await;
    idle.client.simple_query("SELECT 1").await.unwrap();

    let in_tx = proxy.session().await;
    in_tx
        .client
        .batch_execute("CREATE TABLE locked (id int PRIMARY KEY); INSERT INTO locked VALUES (1)")
        .await
        .unwrap();
    in_tx
        .client
        .batch_execute("BEGIN; SELECT * FROM locked FOR UPDATE")
        .await
        .unwrap();

    let copying = proxy.session().await;
    copying
        .client
        .batch_execute("CREATE TEMP TABLE sink (v text)")
        .await
        .unwrap();
    let sink = copying
        .client
        .copy_in::<_, Bytes>("COPY sink FROM STDIN")
        .await
        .unwrap();
    let mut sink = Box::pin(sink);
    sink.send(Bytes::from_static(b"half\nof a cop"))
        .await
        .unwrap();
    // Flush it out (feed+flush) without finishing.
    futures::SinkExt::flush(&mut sink).await.unwrap();

    let sleeping = proxy.session().await;
    let sleeper_client = sleeping.client;
    let sleep_task = tokio::spawn(async move {
        let _ = sleeper_client.simple_query("SELECT pg_sleep(60)").await;
        sleeper_client
    });

    assert!(
        wait_until_async(Duration::from_secs(10), || env.pg.backend_count(DB)
            == baseline + 4)
        .await,
        "expected 4 more backends, have {} (baseline {baseline})",
        env.pg.backend_count(DB)
    );

    // Drop every socket without Terminate.
    idle.task.abort();
    in_tx.task.abort();
    copying.task.abort();
    sleeping.task.abort();
    assert!(
        wait_until_async(Duration::from_secs(15), || env.pg.backend_count(DB)
            == baseline)
        .await,
        "backends not released: {} left (baseline {baseline}); pg_stat_activity:\n{}",
        env.pg.backend_count(DB),
        env.pg.psql(
            "postgres",
            "SELECT pid, state, query FROM pg_stat_activity WHERE backend_type = 'client backend'"
        )
    );
    sleep_task.abort();

    // The row lock was released with the backend.
    let c = proxy.session().await;
    c.client
        .batch_execute("SET lock_timeout = '2s'; BEGIN; SELECT * FROM locked FOR UPDATE; COMMIT")
        .await
        .unwrap();
}

async fn wait_until_async(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_reaches_only_the_right_backend() {
    let env = Env::start(Kind::Scram);
    let proxy = env.proxy();
    let a = proxy.session().await;
    let b = proxy.session().await;
    let (token_a, token_b) = (a.client.cancel_token(), b.client.cancel_token());
    let mut pids = vec![];
    for c in [&a, &b] {
        let r = c
            .client
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .unwrap();
        pids.push(r.get::<_, i32>(0));
    }
    let (a_pid, b_pid) = (pids[0], pids[1]);
    let running = |pid: i32| {
        env.pg
            .psql(
                DB,
                &format!(
                    "SELECT count(*) FROM pg_stat_activity WHERE pid = {pid} \
                     AND state = 'active' AND query = 'SELECT pg_sleep(60)'"
                ),
            )
            .trim()
            == "1"
    };
    let ta = tokio::spawn(async move { (a.client.simple_query("SELECT pg_sleep(60)").await, a) });
    let tb = tokio::spawn(async move { (b.client.simple_query("SELECT pg_sleep(60)").await, b) });
    assert!(
        wait_until_async(Duration::from_secs(30), || running(a_pid) && running(b_pid)).await,
        "both sleeps never ran"
    );

    // A forged CancelRequest (unknown key) must cancel nothing.
    let mut s = tokio::net::TcpStream::connect(env.pv.addr()).await.unwrap();
    let mut m = vec![0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e];
    m.extend_from_slice(&12345i32.to_be_bytes());
    m.extend_from_slice(&678_910i32.to_be_bytes());
    s.write_all(&m).await.unwrap();
    expect_closed(&mut s, "cancel request").await;

    // A's cancel reaches A only: A fails with 57014 (a pg_sleep(60) that was
    // not cancelled would succeed), B is still running.
    proxy.cancel(&token_a).await;
    let (ra, _a) = ta.await.unwrap();
    let err = ra.expect_err("A was not cancelled");
    assert_eq!(
        err.code(),
        Some(&SqlState::QUERY_CANCELED),
        "{}",
        err_text(&err)
    );
    assert!(running(b_pid), "B stopped running when A was cancelled");
    // B was running until its own cancel.
    proxy.cancel(&token_b).await;
    let (rb, _b) = tb.await.unwrap();
    let err = rb.expect_err("B was not cancelled by its own token");
    assert_eq!(
        err.code(),
        Some(&SqlState::QUERY_CANCELED),
        "{}",
        err_text(&err)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_sessions_and_refuses_new_ones() {
    let mut env = Env::start_with(Kind::Md5, "shutdown_timeout: 20s\n", vec![]);
    let proxy = env.proxy();
    let a = proxy.session().await;
    let in_flight = tokio::spawn(async move {
        let r = a.client.simple_query("SELECT pg_sleep(2), 'done'").await;
        (r.map(|m| m.iter().map(simple_msg).collect::<Vec<_>>()), a)
    });
    // SIGTERM once the statement is running in PostgreSQL.
    assert!(
        wait_until_async(Duration::from_secs(30), || {
            env.pg
                .psql(
                    DB,
                    "SELECT count(*) FROM pg_stat_activity \
                     WHERE state = 'active' AND query LIKE 'SELECT pg\\_sleep(2), %'",
                )
                .trim()
                == "1"
        })
        .await,
        "the in-flight statement never ran"
    );
    env.pv.send_signal("TERM");

    // New connections are refused (the deadline only guards against a hang).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match try_connect_to(env.pv.port(), USER, Some(PW), DB).await {
            Err(_) => break,
            Ok(_) => assert!(
                Instant::now() < deadline,
                "still accepting new sessions after SIGTERM"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The in-flight statement finishes normally.
    let (r, a) = in_flight.await.unwrap();
    let msgs = r.unwrap_or_else(|e| panic!("in-flight query failed: {}", err_text(&e)));
    assert!(msgs.iter().any(|m| m.contains("done")), "{msgs:?}");
    assert!(
        env.pv.is_running(),
        "pgveil exited before its session ended"
    );

    // When the last session ends, pgveil exits cleanly.
    drop(a);
    let status = env
        .pv
        .wait_exit(Duration::from_secs(10))
        .expect("pgveil did not exit after its last session ended");
    assert!(status.success(), "exit status {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_timeout_closes_lingering_sessions() {
    let mut env = Env::start_with(Kind::Md5, "shutdown_timeout: 1s\n", vec![]);
    let a = env.proxy().session().await;
    a.client.simple_query("SELECT 1").await.unwrap();
    let started = Instant::now();
    env.pv.send_signal("INT");
    let status = env
        .pv
        .wait_exit(Duration::from_secs(30))
        .expect("pgveil did not exit after shutdown_timeout");
    eprintln!(
        "exit {:?} after SIGINT (shutdown_timeout 1s)",
        started.elapsed()
    );
    assert!(status.success(), "exit status {status}");
    // The idle session's upstream backend goes away too.
    assert!(
        wait_until_async(Duration::from_secs(10), || env.pg.backend_count(DB) == 0).await,
        "upstream backend left behind"
    );
    assert!(a.client.simple_query("SELECT 1").await.is_err());
}

#[test]
fn minimal_config_with_libpq_defaults() {
    // `Pgveil::config_for` has no client_tls section (default mode prefer,
    // no certificate): libpq's default sslmode=prefer must still get in.
    let pg = PgCluster::start(Hba::Md5);
    pg.create_role(USER, Some(PW));
    pg.create_database_owned(DB, USER);
    let pv = Pgveil::start(&Pgveil::config_for(&pg));
    let conninfo = format!("host=127.0.0.1 port={} user={USER} dbname={DB}", pv.port());
    let out = psql_cmd(&pg, &conninfo)
        .args(["-At", "-c", "SELECT current_user, 6 * 7"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "app|42");
}
