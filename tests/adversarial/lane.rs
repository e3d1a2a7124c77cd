//! The pass-through lane (issue 18): a run of extended-protocol messages
//! that touch no protected table goes upstream as one, its answers relayed
//! without a queue entry per message. These send what an attacker would
//! put next to, inside or behind such a run (raw frames, one write each, so
//! pgveil reads them in one piece), check PostgreSQL's answers stay in step
//! and scan the cluster and the logs for the plaintext.

use crate::common::http::{metric, scrape};
use crate::common::raw::{
    self, Raw, bind, describe_portal, describe_statement, errors, execute, parse, rows, sync,
};
use crate::common::*;

const INSERT: &str = "INSERT INTO users (email, name) VALUES ($1, $2)";

/// A Calmony with a metrics listener and an unprotected table `notes`.
fn start() -> (Calmony, u16) {
    let port = free_port();
    let fx = Calmony::builder()
        .extra_sql("CREATE TABLE public.notes (n text); GRANT ALL ON public.notes TO PUBLIC;")
        .extra_yaml(&format!("metrics:\n  listen: 127.0.0.1:{port}\n"))
        .start();
    let mport = fx.pv.metrics_port();
    (fx, mport)
}

/// A Parse, Bind and Execute of `sql` (unnamed, no parameters), then a Sync.
fn stmt(sql: &str) -> Vec<Vec<u8>> {
    vec![parse("", sql), bind("", "", &[]), execute(""), sync()]
}

fn runs(mport: u16) -> f64 {
    metric(&scrape(mport), "pgveil_pass_through_runs_total")
}

/// The emails and names of `users` as `calmony_app` (read) sees them.
async fn users(fx: &Calmony) -> Vec<(String, String)> {
    let c = fx.app("calmony_app").await;
    c.query("SELECT email, name FROM users ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// What `users` holds as stored, straight from PostgreSQL.
async fn stored_emails(fx: &Calmony) -> Vec<Vec<u8>> {
    let d = fx.direct().await;
    d.query("SELECT email FROM users ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protected_statements_in_the_same_write_as_a_pass_through_run_are_encrypted() {
    let (fx, mport) = start();
    let (e1, n1) = ("attack-lane-7001@example.com", "Lane Sentinel 7002");
    let (e2, n2) = ("attack-lane-7003@example.com", "Lane Sentinel 7004");
    let (e3, n3) = ("attack-lane-7005@example.com", "Lane Sentinel 7006");
    let mut c = Raw::login(fx.pv.addr(), "calmony_app").await;
    let before = runs(mport);
    // One write: a run on `notes` (the lane's), then the unnamed
    // statement parsed again as the encrypting INSERT inside the same
    // stretch and in the next ones, a named one, and a Bind of it after
    // another pass-through stretch.
    c.send(&[
        parse("", "INSERT INTO notes VALUES ($1)"),
        bind("", "", &["note one"]),
        describe_portal(""),
        execute(""),
        sync(),
        parse("", "SELECT n FROM notes WHERE n = $1"),
        bind("", "", &["note one"]),
        execute(""),
        parse("", INSERT),
        bind("", "", &[e1, n1]),
        execute(""),
        sync(),
        parse("s", INSERT),
        sync(),
        parse("", "SELECT count(*) FROM notes"),
        bind("", "", &[]),
        execute(""),
        sync(),
        bind("", "s", &[e2, n2]),
        execute(""),
        sync(),
    ])
    .await;
    let mut all = Vec::new();
    for _ in 0..5 {
        all.extend(c.until_ready().await);
    }
    assert!(
        errors(&all).is_empty(),
        "{:?} ({})",
        errors(&all),
        raw::tags(&all)
    );
    assert!(
        runs(mport) > before,
        "the first stretch went through the lane"
    );
    // The session stays in step: "s" is the INSERT.
    let m = c
        .send_ready(&[bind("", "s", &[e3, n3]), execute(""), sync()])
        .await;
    assert!(errors(&m).is_empty(), "{:?}", errors(&m));
    assert_eq!(
        users(&fx).await,
        vec![
            (e1.to_string(), n1.to_string()),
            (e2.to_string(), n2.to_string()),
            (e3.to_string(), n3.to_string())
        ]
    );
    for s in stored_emails(&fx).await {
        for e in [e1, e2, e3] {
            assert!(!s.windows(e.len()).any(|w| w == e.as_bytes()));
        }
    }
    fx.assert_no_plaintext(&[e1, n1, e2, n2, e3, n3]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_from_before_the_stretch_takes_the_per_message_path() {
    let (fx, mport) = start();
    let mut c = Raw::login(fx.pv.addr(), "calmony_app").await;
    // A pass-through COPY FROM STDIN, prepared before (pgveil records
    // nothing for it).
    let m = c
        .send_ready(&[parse("c", "COPY notes FROM STDIN"), sync()])
        .await;
    assert!(errors(&m).is_empty(), "{:?}", errors(&m));
    // Parse "c" again: it fails (the name is taken), so PostgreSQL skips
    // the rest of that stretch; the Bind of "c" in the next stretch runs
    // the COPY. The lane takes the first stretch only: the second names a
    // statement it did not see parsed there.
    let before = runs(mport);
    c.send(&[
        parse("c", "SELECT 1"),
        bind("", "c", &[]),
        execute(""),
        sync(),
        bind("", "c", &[]),
        execute(""),
        sync(),
    ])
    .await;
    let m = c.until_ready().await;
    let errs = errors(&m);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].1, "42P05", "{errs:?}");
    assert!(runs(mport) > before);
    // The COPY starts: PostgreSQL ignored the Sync behind the Execute.
    let mut seen = Vec::new();
    loop {
        let msg = c.next().await.expect("connection open");
        let tag = msg.0;
        seen.push(msg);
        if tag == b'G' {
            break;
        }
        assert_ne!(tag, b'Z', "no COPY: {}", raw::tags(&seen));
    }
    c.send(&[
        raw::copy_data(b"copied through the window\n"),
        raw::copy_done(),
        sync(),
    ])
    .await;
    let m = c.until_ready().await;
    assert!(
        errors(&m).is_empty(),
        "{:?} ({})",
        errors(&m),
        raw::tags(&m)
    );
    // In step: a protected INSERT right after is encrypted.
    let (e, n) = ("attack-lane-7011@example.com", "Lane Sentinel 7012");
    let m = c
        .send_ready(&[
            parse("", INSERT),
            bind("", "", &[e, n]),
            execute(""),
            sync(),
        ])
        .await;
    assert!(errors(&m).is_empty(), "{:?}", errors(&m));
    let d = fx.direct().await;
    let notes: Vec<String> = d
        .query("SELECT n FROM notes", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(notes, vec!["copied through the window".to_string()]);
    assert_eq!(users(&fx).await, vec![(e.to_string(), n.to_string())]);
    fx.assert_no_plaintext(&[e, n]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_around_protected_names_and_odd_frames_take_the_per_message_path() {
    let (fx, mport) = start();
    let (e, n) = ("attack-lane-7021@example.com", "Lane Sentinel 7022");
    let mut c = Raw::login(fx.pv.addr(), "calmony_app").await;
    // A protected statement exists: no lane while it does, and its Bind
    // behind unprotected stretches in the same write is encrypted.
    let m = c.send_ready(&[parse("s", INSERT), sync()]).await;
    assert!(errors(&m).is_empty(), "{:?}", errors(&m));
    let before = runs(mport);
    c.send(&[
        parse("", "SELECT 1"),
        bind("", "", &[]),
        execute(""),
        sync(),
        bind("", "s", &[e, n]),
        execute(""),
        sync(),
    ])
    .await;
    let mut m = c.until_ready().await;
    m.extend(c.until_ready().await);
    assert!(errors(&m).is_empty(), "{:?}", errors(&m));
    assert_eq!(
        runs(mport),
        before,
        "no lane while a protected statement exists"
    );
    let m = c.send_ready(&[raw::close_statement("s"), sync()]).await;
    assert!(errors(&m).is_empty(), "{:?}", errors(&m));

    // Frames the lane does not read as PostgreSQL would, or does not
    // take: each run (a Sync after it) goes through the per-message path,
    // which answers as before (PostgreSQL's error, then ReadyForQuery).
    let odd: Vec<Vec<Vec<u8>>> = vec![
        // A Sync with a body: PostgreSQL fails it and answers it (it has
        // ended the skip of an error when it reads the body).
        vec![
            parse("", "SELECT 1"),
            bind("", "", &[]),
            execute(""),
            raw::frame(b'S', b"x"),
        ],
        // A Describe with bytes after the name.
        vec![parse("", "SELECT 1"), raw::frame(b'D', b"Sx\0y")],
        // An Execute without its row limit.
        vec![
            parse("", "SELECT 1"),
            bind("", "", &[]),
            raw::frame(b'E', b"\0"),
        ],
        // A Parse whose parameter count says more than it holds.
        vec![raw::frame(b'P', b"\0SELECT 1\0\0\x02\0\0\0\x19")],
        // A Describe of a statement not parsed in the stretch.
        vec![describe_statement("nope")],
        // A Bind of a statement not parsed in the stretch.
        vec![bind("", "nope", &[]), execute("")],
    ];
    for mut frames in odd {
        let before = runs(mport);
        if frames.last().is_none_or(|f| f[0] != b'S') {
            frames.push(sync());
        }
        let m = c.send_ready(&frames).await;
        assert_eq!(errors(&m).len(), 1, "{:?} ({})", errors(&m), raw::tags(&m));
        assert_eq!(runs(mport), before, "taken: {}", raw::tags(&m));
    }
    // Still in step, and a protected INSERT is encrypted.
    let (e2, n2) = ("attack-lane-7023@example.com", "Lane Sentinel 7024");
    let m = c
        .send_ready(&[
            parse("", INSERT),
            bind("", "", &[e2, n2]),
            execute(""),
            sync(),
        ])
        .await;
    assert!(errors(&m).is_empty(), "{:?}", errors(&m));
    // A plain run after it takes the lane (the unnamed statement is
    // protected until PostgreSQL confirms the new one: not yet).
    let m = c.send_ready(&stmt("SELECT 2")).await;
    assert_eq!(rows(&m), vec![vec![Some("2".to_string())]]);
    let before = runs(mport);
    let m = c.send_ready(&stmt("SELECT 3")).await;
    assert_eq!(rows(&m), vec![vec![Some("3".to_string())]]);
    assert!(
        runs(mport) > before,
        "the lane once nothing protected is left"
    );
    assert_eq!(
        users(&fx).await,
        vec![
            (e.to_string(), n.to_string()),
            (e2.to_string(), n2.to_string())
        ]
    );
    fx.assert_no_plaintext(&[e, n, e2, n2]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_the_lane_must_not_take_are_judged_per_message() {
    let (fx, mport) = start();
    let (e, n) = ("attack-lane-7031@example.com", "Lane Sentinel 7032");
    let mut c = Raw::login(fx.pv.addr(), "calmony_app").await;
    // A settings change, then a protected statement behind it in the same
    // write: refused as before (it would be planned on the old settings).
    let before = runs(mport);
    c.send(&[
        parse("", "SET search_path = pg_catalog, public"),
        bind("", "", &[]),
        execute(""),
        sync(),
        parse("", INSERT),
        bind("", "", &[e, n]),
        execute(""),
        sync(),
    ])
    .await;
    let mut m = c.until_ready().await;
    m.extend(c.until_ready().await);
    let errs = errors(&m);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].1, "0A000", "{errs:?}");
    assert!(!errs[0].2.contains(e) && !errs[0].2.contains(n));
    assert_eq!(runs(mport), before);
    // DDL in the lane: the catalog is read again before the next
    // protected statement (this table is not one the policy names).
    let before = runs(mport);
    let m = c
        .send_ready(&stmt("CREATE TEMP TABLE lane_ddl (x int)"))
        .await;
    assert!(errors(&m).is_empty(), "{:?}", errors(&m));
    assert!(runs(mport) > before);
    let m = c
        .send_ready(&[
            parse("", INSERT),
            bind("", "", &[e, n]),
            execute(""),
            sync(),
        ])
        .await;
    assert!(errors(&m).is_empty(), "{:?}", errors(&m));
    // SQL that names a protected table through PREPARE or a cursor, and
    // a COPY: never the lane's (the cursor last: a session that declared
    // one over protected tables takes the per-message path from then on).
    for sql in [
        "PREPARE p1(text) AS INSERT INTO users (email) VALUES ($1)",
        "COPY notes TO STDOUT",
        "DECLARE cur CURSOR WITH HOLD FOR SELECT email FROM users",
    ] {
        let before = runs(mport);
        let m = c.send_ready(&stmt(sql)).await;
        assert_eq!(runs(mport), before, "{sql}: {}", raw::tags(&m));
    }
    let before = runs(mport);
    let m = c.send_ready(&stmt("SELECT 4")).await;
    assert_eq!(rows(&m), vec![vec![Some("4".to_string())]]);
    assert_eq!(
        runs(mport),
        before,
        "no lane once a protected cursor may exist"
    );
    assert_eq!(users(&fx).await, vec![(e.to_string(), n.to_string())]);
    fx.assert_no_plaintext(&[e, n]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_while_postgresql_skips_to_a_sync_keeps_the_queue_in_step() {
    let (fx, mport) = start();
    let (e, n) = ("attack-lane-7041@example.com", "Lane Sentinel 7042");
    let mut c = Raw::login(fx.pv.addr(), "calmony_app").await;
    // An error without a Sync: PostgreSQL answers it at once and skips
    // everything up to the next Sync, with nothing left in flight.
    c.send(&[parse("", "SELEC 1"), raw::flush()]).await;
    let m = c.next().await.expect("the error");
    assert_eq!(m.0, b'E', "{m:?}");
    // A run sent then is skipped up to its Sync: one ReadyForQuery, no
    // rows. The lane does not take it (PostgreSQL's skip is not over).
    let before = runs(mport);
    let m = c.send_ready(&stmt("SELECT 1")).await;
    assert!(rows(&m).is_empty(), "{}", raw::tags(&m));
    assert_eq!(runs(mport), before);
    // Still in step: a simple Query, then a named protected statement
    // behind a slow one in one pipeline, then a Bind of it.
    let m = c.send_ready(&[raw::query("SELECT 5")]).await;
    assert_eq!(
        rows(&m),
        vec![vec![Some("5".to_string())]],
        "{}",
        raw::tags(&m)
    );
    c.send(&[
        parse("s", INSERT),
        parse("z", "SELECT pg_sleep(0.5)"),
        bind("", "z", &[]),
        execute(""),
        sync(),
    ])
    .await;
    c.send(&[bind("", "s", &[e, n]), execute(""), sync()]).await;
    let mut m = c.until_ready().await;
    m.extend(c.until_ready().await);
    assert!(
        errors(&m).is_empty(),
        "{:?} ({})",
        errors(&m),
        raw::tags(&m)
    );
    assert_eq!(users(&fx).await, vec![(e.to_string(), n.to_string())]);
    fx.assert_no_plaintext(&[e, n]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_block_through_the_lane_reports_its_status() {
    let (fx, mport) = start();
    let mut c = Raw::login(fx.pv.addr(), "calmony_app").await;
    let before = runs(mport);
    c.send(
        &[
            stmt("BEGIN"),
            stmt("INSERT INTO notes VALUES ('in a block')"),
            stmt("SELECT 1/0"),
            stmt("SELECT 1"),
            stmt("ROLLBACK"),
        ]
        .concat(),
    )
    .await;
    let mut status = Vec::new();
    for _ in 0..5 {
        let m = c.until_ready().await;
        status.push(m.last().unwrap().1[0]);
    }
    assert_eq!(status, b"TTEEI", "the statuses PostgreSQL reported");
    assert!(runs(mport) > before);
    let d = fx.direct().await;
    let n: i64 = d
        .query_one("SELECT count(*) FROM notes", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "rolled back");
}
