//! Operations commands against a real PostgreSQL, through the pgveil binary:
//! `pgveil encrypt` (backfill, resumability after kill -9, tables without a
//! primary key), `pgveil keys rotate` + `pgveil rotate` under concurrent
//! traffic (then the old version destroyed), `blind_index.next` filling, and
//! `pgveil shred` with the keystore in its own database: a dump of the data
//! database taken before the shred and restored afterwards stays unreadable
//! for the shredded tenant only.

mod common;

use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ::pgveil::crypto::envelope;
use common::*;

use common::calmony::POLICY;

type Fx = Calmony;

/// The reference fixture with `policy`, extra schema SQL and a key cache TTL.
fn setup_with(policy: &str, extra_sql: &str, cache_ttl: &str) -> Fx {
    Calmony::builder()
        .policy(policy)
        .extra_sql(extra_sql)
        .cache_ttl(cache_ttl)
        .rust_log("info")
        .start()
}

fn setup() -> Fx {
    setup_with(POLICY, "", "300s")
}

impl Calmony {
    fn db_url(&self, db: &str) -> String {
        self.pg.url("postgres", db)
    }

    fn encrypt(&self, extra: &[&str]) -> Output {
        let url = self.db_url("app");
        let mut args = vec!["encrypt", "--database", &url];
        args.extend_from_slice(extra);
        self.run(&args)
    }
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn assert_ok(o: &Output) -> String {
    assert_eq!(o.status.code(), Some(0), "{}", text(o));
    text(o)
}

/// (key version, tenant) of a stored bytea envelope.
fn version_of(env: &[u8]) -> u32 {
    envelope::peek_key(env).expect("an envelope").version
}

fn version_of_text(s: &str) -> u32 {
    version_of(&envelope::from_text(s).expect("a printable envelope"))
}

#[tokio::test]
async fn backfill_encrypts_plaintext_in_place_and_is_idempotent() {
    let fx = setup();
    // Plaintext as it is before adoption: text form in bytea columns
    // (convert_to), text columns as they were.
    fx.pg.psql(
        "app",
        "INSERT INTO users (email, name) SELECT convert_to('user' || i || '@Example.com', 'UTF8'), 'Person ' || i \
           FROM generate_series(1, 2500) i;
         INSERT INTO users (email, name) VALUES (NULL, 'Nomail Person');
         INSERT INTO phi.member_profile (legal_name, date_of_birth, ssn, risk_score, note) VALUES
           (convert_to('Quentin Sentinel', 'UTF8'), convert_to('1987-06-05', 'UTF8'),
            convert_to('123-45-6789', 'UTF8'), convert_to('42', 'UTF8'), 'kept'),
           (convert_to('Rita Sentinel', 'UTF8'), convert_to('2001-12-31', 'UTF8'),
            convert_to('987-65-4321', 'UTF8'), convert_to('-7', 'UTF8'), 'kept');
         INSERT INTO pay_customers (org_id, email, name, postal_code) VALUES
           (10, convert_to('tenant.ten@example.com', 'UTF8'), convert_to('Tenant Ten', 'UTF8'), convert_to('ab1 2cd', 'UTF8')),
           (20, convert_to('tenant.twenty@example.com', 'UTF8'), convert_to('Tenant Twenty', 'UTF8'), NULL);",
    );
    // A row written through pgveil before the backfill (already encrypted),
    // and one whose blind index is missing (must be filled by decrypting).
    let app = fx.app("calmony_app").await;
    app.execute(
        "INSERT INTO users (email, name) VALUES ($1, $2)",
        &[&"through.proxy@example.com", &"Proxy Written"],
    )
    .await
    .unwrap();
    app.execute(
        "INSERT INTO users (email, name) VALUES ($1, $2)",
        &[&"lost.index@example.com", &"Lost Index"],
    )
    .await
    .unwrap();
    let direct = fx.direct().await;
    direct
        .execute(
            "UPDATE users SET email_bidx = NULL WHERE id = (SELECT max(id) FROM users)",
            &[],
        )
        .await
        .unwrap();

    let out = fx.encrypt(&["--batch", "700"]);
    let t = assert_ok(&out);
    assert!(
        t.contains(
            "public.users: scanned 2503, encrypted 2501, indexed only 1, skipped 1, failed 0"
        ),
        "{t}"
    );
    assert!(
        t.contains("phi.member_profile: scanned 2, encrypted 2"),
        "{t}"
    );
    assert!(
        t.contains("public.pay_customers: scanned 2, encrypted 2"),
        "{t}"
    );

    // PostgreSQL holds no plaintext.
    let plain = direct
        .query_one(
            "SELECT count(*) FROM users WHERE (email IS NOT NULL AND substring(email from 1 for 2) <> 'pv'::bytea) \
             OR name NOT LIKE 'pgv1:%' OR (email IS NOT NULL AND email_bidx IS NULL)",
            &[],
        )
        .await
        .unwrap()
        .get::<_, i64>(0);
    assert_eq!(plain, 0);
    // Through pgveil: the originals, and blind-index lookups.
    let rows = app
        .query("SELECT email, name FROM users ORDER BY id", &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), 2503);
    for (i, r) in rows.iter().take(2500).enumerate() {
        assert_eq!(
            r.get::<_, Option<String>>(0).as_deref(),
            Some(format!("user{}@Example.com", i + 1).as_str())
        );
        assert_eq!(r.get::<_, String>(1), format!("Person {}", i + 1));
    }
    assert_eq!(rows[2500].get::<_, Option<String>>(0), None);
    assert_eq!(rows[2500].get::<_, String>(1), "Nomail Person");
    for (email, name) in [
        ("USER77@example.com", "Person 77"),
        ("through.proxy@example.com", "Proxy Written"),
        ("lost.index@example.com", "Lost Index"),
    ] {
        let r = app
            .query("SELECT name FROM users WHERE email = $1", &[&email])
            .await
            .unwrap();
        assert_eq!(r.len(), 1, "lookup of {email}");
        assert_eq!(r[0].get::<_, String>(0), name);
    }
    let clin = fx.app("clinician").await;
    let msgs = clin
        .simple_query(
            "SELECT legal_name, date_of_birth, risk_score FROM phi.member_profile ORDER BY id",
        )
        .await
        .unwrap();
    let got: Vec<Vec<String>> = msgs
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => {
                Some((0..3).map(|i| r.get(i).unwrap().to_string()).collect())
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        got,
        vec![
            vec!["Quentin Sentinel", "1987-06-05", "42"],
            vec!["Rita Sentinel", "2001-12-31", "-7"]
        ]
    );
    let r = app
        .query(
            "SELECT org_id, name FROM pay_customers WHERE email = $1",
            &[&"Tenant.Twenty@example.com"],
        )
        .await
        .unwrap();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].get::<_, i64>(0), 20);
    assert_eq!(r[0].get::<_, String>(1), "Tenant Twenty");
    // Tenant values are bound to their tenant's key.
    let envs = direct
        .query(
            "SELECT org_id, email FROM pay_customers ORDER BY org_id",
            &[],
        )
        .await
        .unwrap();
    for r in &envs {
        let k = envelope::peek_key(r.get::<_, &[u8]>(1)).unwrap();
        assert_eq!(k.tenant, Some(r.get::<_, i64>(0).to_string()));
    }
    // Every value read back above is stored and logged only encrypted.
    fx.assert_no_plaintext(&[
        "user77@example.com",
        "through.proxy@example.com",
        "Proxy Written",
        "lost.index@example.com",
        "Quentin Sentinel",
        "Rita Sentinel",
        "1987-06-05",
        "2001-12-31",
        "tenant.twenty@example.com",
        "Tenant Twenty",
    ])
    .await;

    // Idempotent: a second run changes nothing.
    let before: String = direct
        .query_one(
            "SELECT md5(string_agg(t::text, '' ORDER BY id)) FROM users t",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let t = assert_ok(&fx.encrypt(&["--table", "users"]));
    assert!(
        t.contains(
            "public.users: scanned 2503, encrypted 0, indexed only 0, skipped 2503, failed 0"
        ),
        "{t}"
    );
    assert!(!t.contains("member_profile"), "--table limits the run: {t}");
    let after: String = direct
        .query_one(
            "SELECT md5(string_agg(t::text, '' ORDER BY id)) FROM users t",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(before, after);
}

#[tokio::test]
async fn backfill_reports_failed_rows_by_key_without_values() {
    let fx = setup();
    fx.pg.psql(
        "app",
        "INSERT INTO phi.member_profile (id, legal_name, risk_score) VALUES
           (1, convert_to('Good Row', 'UTF8'), convert_to('5', 'UTF8')),
           (2, convert_to('Bad Row', 'UTF8'), convert_to('notanumber-zz9', 'UTF8')),
           (3, convert_to('Also Good', 'UTF8'), NULL);
         INSERT INTO pay_customers (id, org_id, email) VALUES (5, 1, convert_to('x@example.com', 'UTF8'));
         ALTER TABLE pay_customers ALTER COLUMN org_id DROP NOT NULL;
         INSERT INTO pay_customers (id, org_id, email) VALUES (6, NULL, convert_to('y@example.com', 'UTF8'));",
    );
    let out = fx.encrypt(&[]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("phi.member_profile (id)=(2): risk_score"), "{t}");
    assert!(t.contains("public.pay_customers (id)=(6): org_id"), "{t}");
    assert!(t.contains("2 row(s) failed"), "{t}");
    assert!(!t.contains("notanumber") && !t.contains("Bad Row"), "{t}");
    // The failed rows are untouched, the others encrypted.
    let direct = fx.direct().await;
    let r = direct
        .query(
            "SELECT id, substring(legal_name from 1 for 2) = 'pv'::bytea FROM phi.member_profile ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    let got: Vec<(i64, bool)> = r.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(got, vec![(1, true), (2, false), (3, true)]);
}

#[tokio::test]
async fn backfill_refuses_tables_without_a_primary_key_and_bad_usage() {
    let fx = setup();
    fx.pg.psql(
        "app",
        "ALTER TABLE pay_webhook_endpoints DROP CONSTRAINT pay_webhook_endpoints_pkey;
         INSERT INTO pay_webhook_endpoints (url, secret) VALUES ('https://h', convert_to('whsec_1', 'UTF8'));",
    );
    let out = fx.encrypt(&["--table", "pay_webhook_endpoints"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.contains("public.pay_webhook_endpoints has no primary key")
            && t.contains("ADD PRIMARY KEY"),
        "{t}"
    );
    let out = fx.encrypt(&["--table", "nosuchtable"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("not a protected table"),
        "{}",
        text(&out)
    );
    // Usage errors exit 2.
    let out = fx.run(&["encrypt"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let out = fx.encrypt(&["--batch", "0"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));

    // pgveil's own address is refused (it reports itself at login): the
    // command must reach PostgreSQL directly.
    for cmd in ["encrypt", "rotate"] {
        let out = fx.run(&[cmd, "--database", &fx.url("postgres")]);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert!(text(&out).contains("is a pgveil"), "{}", text(&out));
    }
    let out = fx.run(&["policy", "check", "--database", &fx.url("postgres")]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("is a pgveil"), "{}", text(&out));
    // Passwords never appear in messages, whatever the connection-string form.
    for db in [
        "host=127.0.0.1 port=1 user=x dbname=app password=hunter2",
        "host=127.0.0.1 port=1 user=x password = 'hun ter2' dbname=app",
        "postgres://x:hunter2@127.0.0.1:1/app",
        "postgres://x@127.0.0.1:1/app?password=hunter2",
    ] {
        let out = fx.run(&["encrypt", "--database", db]);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert!(text(&out).contains("cannot connect"), "{}", text(&out));
        assert!(
            !text(&out).contains("hunter2") && !text(&out).contains("hun ter2"),
            "{}",
            text(&out)
        );
    }
    // --password-file is read (and its failure named).
    let out = fx.run(&[
        "encrypt",
        "--database",
        &format!("postgres://postgres@127.0.0.1:{}/app", fx.pg.port()),
        "--password-file",
        "/nonexistent/pgveil-password",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("--password-file /nonexistent/pgveil-password"),
        "{}",
        text(&out)
    );
}

#[tokio::test]
async fn backfill_killed_mid_run_completes_on_rerun_without_loss() {
    let fx = setup();
    const N: i64 = 60_000;
    fx.pg.psql(
        "app",
        &format!(
            "INSERT INTO users (email, name) SELECT convert_to('k' || i || '@example.com', 'UTF8'), 'Killed ' || i \
               FROM generate_series(1, {N}) i; ANALYZE users;"
        ),
    );
    let direct = fx.direct().await;
    let url = fx.db_url("app");
    let mut child = fx
        .cmd(&["encrypt", "--database", &url, "--batch", "200"])
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let n = count_encrypted(&direct).await;
        if n >= 2_000 {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "encrypt finished before it could be killed"
        );
        assert!(Instant::now() < deadline, "encrypt made no progress");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // A COMMIT the killed process had already sent still lands: count once
    // its backends are gone (only `direct` is left on the database).
    assert!(
        wait_until(Duration::from_secs(60), || fx.pg.backend_count("app") == 1),
        "the killed encrypt's backends did not go away"
    );
    let partial = count_encrypted(&direct).await;
    assert!(partial > 0 && partial < N, "killed at {partial} of {N}");
    // Rerun: finishes, skipping what was done.
    let t = assert_ok(&fx.encrypt(&["--batch", "5000"]));
    assert!(
        t.contains(&format!(
            "public.users: scanned {N}, encrypted {}",
            N - partial
        )),
        "{t}"
    );
    assert_eq!(count_encrypted(&direct).await, N);
    // Every row decrypts to its original (a value encrypted twice would
    // read back as an envelope).
    let app = fx.app("calmony_app").await;
    let rows = app
        .query("SELECT id, email, name FROM users ORDER BY id", &[])
        .await
        .unwrap();
    assert_eq!(rows.len() as i64, N);
    for r in &rows {
        let id: i64 = r.get(0);
        assert_eq!(r.get::<_, String>(1), format!("k{id}@example.com"));
        assert_eq!(r.get::<_, String>(2), format!("Killed {id}"));
    }
}

/// A worker whose connection PostgreSQL ends mid-run (an operator's
/// `pg_terminate_backend`, a failover) fails the run: exit status 1, a
/// message naming the table, and never "done" — nothing is silently
/// skipped, and the rerun finishes the table.
#[tokio::test]
async fn a_worker_losing_its_connection_fails_the_run() {
    let fx = setup();
    const N: i64 = 60_000;
    fx.pg.psql(
        "app",
        &format!(
            "INSERT INTO users (email, name) SELECT convert_to('w' || i || '@example.com', 'UTF8'), 'Worker ' || i \
               FROM generate_series(1, {N}) i; ANALYZE users;"
        ),
    );
    let direct = fx.direct().await;
    let url = fx.db_url("app");
    let child = fx
        .cmd(&["encrypt", "--database", &url, "--batch", "200"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while count_encrypted(&direct).await < 1_000 {
        assert!(Instant::now() < deadline, "encrypt made no progress");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let killed: i64 = direct
        .query_one(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
               WHERE application_name = 'pgveil encrypt' AND pid <> pg_backend_pid()) t",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let out = child.wait_with_output().unwrap();
    let t = text(&out);
    assert!(killed > 0, "no worker connection was found to end: {t}");
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.contains("public.users"),
        "the message names the table: {t}"
    );
    assert!(
        !t.contains("Worker 1") && !t.contains("@example.com"),
        "{t}"
    );
    // The rerun completes what the failed run left.
    assert_ok(&fx.encrypt(&["--batch", "5000"]));
    assert_eq!(count_encrypted(&direct).await, N);
}

/// Rows of `users` whose email is an envelope.
async fn count_encrypted(c: &tokio_postgres::Client) -> i64 {
    c.query_one(
        "SELECT count(*) FROM users WHERE substring(email from 1 for 2) = 'pv'::bytea",
        &[],
    )
    .await
    .unwrap()
    .get::<_, i64>(0)
}

#[tokio::test]
async fn rotation_under_concurrent_traffic_then_old_version_destroyed() {
    let fx = setup_with(POLICY, "", "1s");
    let app = fx.app("calmony_app").await;
    for i in 0..300 {
        app.execute(
            "INSERT INTO users (email, name) VALUES ($1, $2)",
            &[&format!("rot{i}@example.com"), &format!("Rot {i}")],
        )
        .await
        .unwrap();
    }
    let direct = fx.direct().await;
    let versions = |rows: &[tokio_postgres::Row]| -> Vec<(u32, u32)> {
        rows.iter()
            .map(|r| (version_of(r.get::<_, &[u8]>(0)), version_of_text(r.get(1))))
            .collect()
    };
    let rows = direct
        .query("SELECT email, name FROM users", &[])
        .await
        .unwrap();
    assert!(versions(&rows).iter().all(|v| *v == (1, 1)));

    // Concurrent writer and reader through pgveil for the whole rotation.
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let reads = Arc::new(AtomicU64::new(0));
    let writer = {
        let (stop, written) = (stop.clone(), written.clone());
        let c = fx.app("calmony_app").await;
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                c.execute(
                    "INSERT INTO users (email, name) VALUES ($1, $2)",
                    &[&format!("live{i}@example.com"), &format!("Live {i}")],
                )
                .await
                .expect("write during rotation");
                // Updates of old rows too.
                c.execute(
                    "UPDATE users SET name = $1 WHERE email = $2",
                    &[
                        &format!("Rot {} updated", i % 300),
                        &format!("rot{}@example.com", i % 300),
                    ],
                )
                .await
                .expect("update during rotation");
                i += 1;
                written.store(i, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            i
        })
    };
    let reader = {
        let (stop, reads) = (stop.clone(), reads.clone());
        let c = fx.app("calmony_app").await;
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let k = i % 300;
                let r = c
                    .query(
                        "SELECT name FROM users WHERE email = $1",
                        &[&format!("rot{k}@example.com")],
                    )
                    .await
                    .expect("read during rotation");
                assert_eq!(r.len(), 1);
                let name: String = r[0].get(0);
                assert!(name.starts_with(&format!("Rot {k}")), "read back {name:?}");
                let all = c
                    .query("SELECT email, name FROM users ORDER BY id LIMIT 50", &[])
                    .await
                    .expect("scan during rotation");
                assert_eq!(all.len(), 50);
                i += 1;
                reads.store(i, Ordering::Relaxed);
            }
        })
    };

    // Rotate once both have made progress, so the rotation really happens
    // under traffic.
    wait_for(
        Duration::from_secs(60),
        "writer and reader to start",
        || {
            let (w, r) = (written.clone(), reads.clone());
            async move { w.load(Ordering::Relaxed) >= 5 && r.load(Ordering::Relaxed) >= 5 }
        },
    )
    .await;
    let t = assert_ok(&fx.run(&["keys", "rotate", "--table", "public.users"]));
    assert!(t.contains("v2"), "{t}");
    // pgveil switches to v2 once its cached key expires (keys.cache_ttl 1s):
    // wait until the writer's newest row is under v2.
    wait_for(Duration::from_secs(60), "new writes under v2", || {
        let direct = &direct;
        async move {
            let r = direct
                .query_one(
                    "SELECT email, name FROM users ORDER BY id DESC LIMIT 1",
                    &[],
                )
                .await
                .unwrap();
            version_of(r.get::<_, &[u8]>(0)) == 2
        }
    })
    .await;
    let url = fx.db_url("app");
    let t = assert_ok(&fx.run(&[
        "rotate",
        "--database",
        &url,
        "--table",
        "users",
        "--batch",
        "64",
    ]));
    assert!(t.contains("public.users: scanned"), "{t}");
    // Traffic goes on after the rewrite before it stops.
    let (w0, r0) = (
        written.load(Ordering::Relaxed),
        reads.load(Ordering::Relaxed),
    );
    wait_for(Duration::from_secs(60), "traffic after the rewrite", || {
        let (w, r) = (written.clone(), reads.clone());
        async move { w.load(Ordering::Relaxed) >= w0 + 5 && r.load(Ordering::Relaxed) >= r0 + 5 }
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let n_written = writer.await.unwrap();
    reader.await.unwrap();
    assert!(n_written > 10, "writer made {n_written} writes");
    assert!(reads.load(Ordering::Relaxed) > 10);

    // Every value is under v2.
    let rows = direct
        .query("SELECT email, name FROM users", &[])
        .await
        .unwrap();
    let v = versions(&rows);
    assert!(
        v.iter().all(|v| *v == (2, 2)),
        "versions left: {:?}",
        v.iter().filter(|v| **v != (2, 2)).count()
    );
    let keys = assert_ok(&fx.run(&["keys", "list"]));
    assert!(
        keys.contains("retired") && keys.contains("current"),
        "{keys}"
    );

    // Retire v1 for good: destroy it in the keystore, drop every cache.
    fx.pg.psql(
        "pgveil_keys",
        "UPDATE pgveil_data_keys SET wrapped = NULL, destroyed_at = now() WHERE version = 1",
    );
    let mut pv = fx.pv;
    pv.restart();
    let c = pv.connect("calmony_app", None, "app").await;
    let rows = c
        .query("SELECT email, name FROM users ORDER BY id", &[])
        .await
        .unwrap();
    assert_eq!(rows.len() as u64, 300 + n_written);
    for r in &rows {
        let email: String = r.get(0);
        let name: String = r.get(1);
        if let Some(i) = email
            .strip_prefix("rot")
            .and_then(|s| s.strip_suffix("@example.com"))
        {
            assert!(
                name == format!("Rot {i}") || name == format!("Rot {i} updated"),
                "{email}: {name}"
            );
        } else {
            let i = email
                .strip_prefix("live")
                .and_then(|s| s.strip_suffix("@example.com"))
                .unwrap();
            assert_eq!(name, format!("Live {i}"));
        }
    }
    let r = c
        .query(
            "SELECT name FROM users WHERE email = $1",
            &[&"rot7@example.com"],
        )
        .await
        .unwrap();
    assert_eq!(r.len(), 1);
}

#[tokio::test]
async fn rotate_fills_the_next_blind_index_column() {
    let policy = POLICY.replace(
        "blind_index: { column: email_bidx, normalize: [trim, lowercase] }\n        access: { billing_app: read, signup: write }",
        "blind_index: { column: email_bidx, normalize: [trim, lowercase], next: email_bidx_next }\n        access: { billing_app: read, signup: write }",
    );
    assert_ne!(policy, POLICY);
    let fx = setup_with(
        &policy,
        "ALTER TABLE users ADD COLUMN email_bidx_next bytea;",
        "300s",
    );
    // Rows from before the next column existed, and one written by pgveil
    // (dual-write) to compare with.
    fx.pg.psql(
        "app",
        "INSERT INTO users (email, name) SELECT convert_to('n' || i || '@example.com', 'UTF8'), 'N ' || i \
           FROM generate_series(1, 300) i;",
    );
    let t = assert_ok(&fx.encrypt(&[]));
    assert!(
        t.contains("public.users: scanned 300, encrypted 300"),
        "{t}"
    );
    let direct = fx.direct().await;
    direct
        .execute("UPDATE users SET email_bidx_next = NULL", &[])
        .await
        .unwrap();
    let app = fx.app("calmony_app").await;
    app.execute(
        "INSERT INTO users (email, name) VALUES ($1, 'Dual')",
        &[&"N42@example.com"],
    )
    .await
    .unwrap();
    let url = fx.db_url("app");
    let t = assert_ok(&fx.run(&["rotate", "--database", &url]));
    assert!(
        t.contains("public.users: scanned 301, encrypted 0, indexed only 300, skipped 1"),
        "{t}"
    );
    let r = direct
        .query(
            "SELECT count(*) FILTER (WHERE email_bidx_next IS NULL), \
                    count(DISTINCT email_bidx_next) FILTER (WHERE name IS NOT NULL) FROM users",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(r[0].get::<_, i64>(0), 0);
    assert_eq!(r[0].get::<_, i64>(1), 300);
    // The filled index equals pgveil's own dual-write for the same email.
    let r = direct
        .query(
            "SELECT email_bidx_next FROM users WHERE email_bidx = (SELECT email_bidx FROM users WHERE id = 301) ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(r.len(), 2);
    assert_eq!(r[0].get::<_, Vec<u8>>(0), r[1].get::<_, Vec<u8>>(0));

    // Step 4: promote the new column; lookups now use it and still find
    // every row (backfilled and dual-written).
    drop(app);
    let promoted = POLICY.replace(
        "blind_index: { column: email_bidx, normalize: [trim, lowercase] }",
        "blind_index: { column: email_bidx_next, normalize: [trim, lowercase] }",
    );
    std::fs::write(fx.pv.dir().join("policy.yaml"), promoted).unwrap();
    direct
        .execute("UPDATE users SET email_bidx = NULL", &[])
        .await
        .unwrap();
    let mut fx = fx;
    fx.pv.restart();
    let app = fx.app("calmony_app").await;
    for (email, want) in [("n7@example.com", 1i64), ("N42@EXAMPLE.com", 2)] {
        let r = app
            .query_one("SELECT count(*) FROM users WHERE email = $1", &[&email])
            .await
            .unwrap();
        assert_eq!(r.get::<_, i64>(0), want, "{email} after promotion");
    }
}

#[tokio::test]
async fn shred_makes_a_tenant_unreadable_in_a_restored_dump_only() {
    let fx = setup_with(POLICY, "", "1s");
    let app = fx.app("calmony_app").await;
    for (org, email, name) in [
        (1i64, "alpha.one@example.com", "Alpha One"),
        (1, "alpha.two@example.com", "Alpha Two"),
        (2, "beta.one@example.com", "Beta One"),
    ] {
        app.execute(
            "INSERT INTO pay_customers (org_id, email, name) VALUES ($1, $2, $3)",
            &[&org, &email, &name],
        )
        .await
        .unwrap();
    }
    drop(app);
    // The keystore is its own database: the data database's dump has no keys.
    let dump = fx.pv.dir().join("app.dump");
    let out = Command::new(fx.pg.bin("pg_dump"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &fx.pg.port().to_string(),
            "-U",
            "postgres",
            "-Fc",
            "-f",
        ])
        .arg(&dump)
        .arg("app")
        .env_remove("PGPASSWORD")
        .output()
        .unwrap();
    assert!(out.status.success(), "pg_dump: {}", text(&out));
    let tables = fx.pg.psql(
        "app",
        "SELECT string_agg(tablename, ',') FROM pg_tables WHERE tablename LIKE 'pgveil%'",
    );
    assert_eq!(tables.trim(), "", "no keystore table in the data database");

    // Unknown tenant: exit 1, nothing destroyed.
    let out = fx.run(&["shred", "--tenant", "999"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("has no data keys"), "{}", text(&out));

    let t = assert_ok(&fx.run(&["keys", "list", "--tenant", "1"]));
    assert!(
        t.contains("public.pay_customers") && t.contains("current"),
        "{t}"
    );
    // A dry run says what would become unreadable and changes nothing;
    // without a terminal and without --yes, shred refuses.
    let t = assert_ok(&fx.run(&["shred", "--tenant", "1", "--dry-run"]));
    assert!(
        t.contains(
            "1 live data key version(s) of 1 table(s) would be destroyed (public.pay_customers)"
        ) && t.contains("dry run: nothing changed"),
        "{t}"
    );
    let out = fx.run(&["shred", "--tenant", "1"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("pass --yes"), "{}", text(&out));
    let t = assert_ok(&fx.run(&["keys", "list", "--tenant", "1"]));
    assert!(t.contains("current"), "nothing shredded yet: {t}");
    let t = assert_ok(&fx.run(&["shred", "--tenant", "1", "--yes"]));
    assert!(t.contains("destroyed 1 data key version"), "{t}");
    let t = assert_ok(&fx.run(&["keys", "list", "--tenant", "1"]));
    assert!(t.contains("destroyed") && !t.contains("current"), "{t}");
    let t = assert_ok(&fx.run(&["keys", "list", "--tenant", "2"]));
    assert!(t.contains("current"), "{t}");
    // Shredding again is not an error.
    let t = assert_ok(&fx.run(&["shred", "--tenant", "1", "--yes"]));
    assert!(t.contains("already shredded"), "{t}");

    // Restore the pre-shred dump into a new database.
    fx.pg.create_database("app_restored");
    let out = Command::new(fx.pg.bin("pg_restore"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &fx.pg.port().to_string(),
            "-U",
            "postgres",
            "-d",
            "app_restored",
        ])
        .arg(&dump)
        .env_remove("PGPASSWORD")
        .output()
        .unwrap();
    assert!(out.status.success(), "pg_restore: {}", text(&out));
    // pgveil drops cached keys after keys.cache_ttl (1 s here): wait until
    // tenant 1 fails to decrypt on a fresh session.
    wait_for(
        Duration::from_secs(60),
        "tenant 1's key to leave the cache",
        || {
            let pv = &fx.pv;
            async move {
                let c = pv.connect("calmony_app", None, "app").await;
                c.query("SELECT email FROM pay_customers WHERE org_id = 1", &[])
                    .await
                    .is_err()
            }
        },
    )
    .await;
    for db in ["app_restored", "app"] {
        let c = fx.pv.connect("calmony_app", None, db).await;
        let r = c
            .query(
                "SELECT email, name FROM pay_customers WHERE org_id = 2",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(r.len(), 1, "{db}");
        assert_eq!(r[0].get::<_, String>(0), "beta.one@example.com");
        assert_eq!(r[0].get::<_, String>(1), "Beta One");
        let e = c
            .query(
                "SELECT email, name FROM pay_customers WHERE org_id = 1",
                &[],
            )
            .await
            .expect_err("tenant 1 is shredded");
        assert_eq!(code(&e), "39000", "{db}: {}", err_text(&e));
        let msg = err_text(&e);
        assert!(msg.contains("key destroyed"), "{db}: {msg}");
        assert!(!msg.contains("alpha"), "{msg}");
        // Lookups by blind index still find tenant 2 only.
        let r = c
            .query(
                "SELECT name FROM pay_customers WHERE email = $1",
                &[&"beta.one@example.com"],
            )
            .await
            .unwrap();
        assert_eq!(r.len(), 1);
    }
}
