//! The audit log at run time: SIGHUP reopens it (logrotate's rename and
//! signal), and while it cannot be written `audit.on_failure: block`
//! refuses decryption with 58030 (the default keeps serving and counts the
//! lost records). The file is made unwritable by replacing it with a
//! directory and sending SIGHUP.

mod common;

use std::path::Path;
use std::time::Duration;

use common::calmony::Calmony;
use common::http::{metric, scrape};
use common::*;

const WAIT: Duration = Duration::from_secs(60);

fn records(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// A statement that decrypts (and so writes one audit record).
async fn read_phone(c: &tokio_postgres::Client) -> Result<Option<String>, tokio_postgres::Error> {
    let msgs = c
        .simple_query("SELECT phone FROM pay_customers ORDER BY id")
        .await?;
    Ok(simple_rows(&msgs)[0][0].clone())
}

async fn setup(fx: &Calmony) -> tokio_postgres::Client {
    let app = fx.app("calmony_app").await;
    app.execute(
        "INSERT INTO pay_customers (org_id, email, phone) VALUES ($1, $2, $3)",
        &[&3i64, &"ada@example.com", &"555-0199"],
    )
    .await
    .unwrap();
    app
}

fn with_metrics() -> common::calmony::CalmonyBuilder {
    Calmony::builder()
        .rust_log("info")
        .extra_yaml(&format!("metrics:\n  listen: 127.0.0.1:{}\n", free_port()))
}

#[tokio::test]
async fn sighup_reopens_the_audit_log_after_a_rename() {
    let fx = with_metrics().start();
    let port = fx.pv.metrics_port();
    let app = setup(&fx).await;
    let path = fx.pv.dir().join("audit.jsonl");
    let rotated = fx.pv.dir().join("audit.jsonl.1");
    assert_eq!(read_phone(&app).await.unwrap().as_deref(), Some("555-0199"));
    wait_for(WAIT, "the first record", || async {
        !records(&path).is_empty()
    })
    .await;

    // logrotate: rename, then SIGHUP.
    std::fs::rename(&path, &rotated).unwrap();
    let before = records(&rotated).len();
    fx.pv.send_signal("HUP");
    wait_for(WAIT, "the audit log to be reopened", || async {
        fx.pv.logs().contains("audit log reopened")
    })
    .await;
    assert_eq!(read_phone(&app).await.unwrap().as_deref(), Some("555-0199"));
    wait_for(WAIT, "a record in the new file", || async {
        records(&path).iter().any(|r| r["decrypted"] == true)
    })
    .await;
    assert_eq!(records(&rotated).len(), before, "the rotated file grew");
    let r = &records(&path)[0];
    assert_eq!(r["login_role"], "calmony_app");
    assert_eq!(r["columns"][0], "public.pay_customers.phone");

    // With the default on_failure (continue) an unwritable log loses
    // records, counted, and decryption goes on.
    std::fs::remove_file(&path).unwrap();
    std::fs::create_dir(&path).unwrap();
    fx.pv.send_signal("HUP");
    wait_for(WAIT, "the reopen to fail", || async {
        fx.pv.logs().contains("cannot open the audit log")
    })
    .await;
    assert_eq!(read_phone(&app).await.unwrap().as_deref(), Some("555-0199"));
    wait_for(WAIT, "pgveil_audit_errors_total > 0", || async {
        metric(&scrape(port), "pgveil_audit_errors_total") > 0.0
    })
    .await;
    fx.assert_no_plaintext(&["ada@example.com", "555-0199"])
        .await;
}

#[tokio::test]
async fn on_failure_block_refuses_decryption_while_records_cannot_be_written() {
    let fx = with_metrics().audit_yaml("  on_failure: block\n").start();
    let app = setup(&fx).await;
    let support = fx.app("support_agent").await;
    let path = fx.pv.dir().join("audit.jsonl");
    assert_eq!(read_phone(&app).await.unwrap().as_deref(), Some("555-0199"));

    std::fs::rename(&path, fx.pv.dir().join("audit.jsonl.old")).unwrap();
    std::fs::create_dir(&path).unwrap();
    fx.pv.send_signal("HUP");
    let last = std::sync::Mutex::new(String::new());
    wait_for(WAIT, "decryption to be refused", || async {
        match read_phone(&app).await {
            Err(e) => {
                *last.lock().unwrap() = err_text(&e);
                code(&e) == "58030"
            }
            Ok(_) => false,
        }
    })
    .await;
    let msg = last.into_inner().unwrap();
    assert!(msg.contains("audit.on_failure: block"), "{msg}");
    // Only decryption is held back: writes are encrypted as usual, and a
    // role that reads ciphertext gets it.
    app.execute(
        "INSERT INTO pay_customers (org_id, email, phone) VALUES ($1, $2, $3)",
        &[&3i64, &"bea@example.com", &"555-0200"],
    )
    .await
    .unwrap();
    let ct = support
        .simple_query("SELECT phone FROM pay_customers")
        .await
        .unwrap();
    assert!(
        simple_rows(&ct)[0][0]
            .as_deref()
            .unwrap()
            .starts_with("\\x")
    );
    // Inside a transaction the refusal aborts it, as a decryption error does.
    app.batch_execute("BEGIN").await.unwrap();
    assert_eq!(code(&read_phone(&app).await.unwrap_err()), "58030");
    let e = app.batch_execute("SELECT 1").await.unwrap_err();
    assert_eq!(code(&e), "25P02", "{}", err_text(&e));
    app.batch_execute("ROLLBACK").await.unwrap();

    // The path is usable again: the next refused statement's record
    // reopens it, and decryption resumes.
    std::fs::remove_dir(&path).unwrap();
    wait_for(WAIT, "decryption to resume", || async {
        read_phone(&app).await.is_ok()
    })
    .await;
    assert_eq!(read_phone(&app).await.unwrap().as_deref(), Some("555-0199"));
    let recs = records(&path);
    assert!(
        recs.iter()
            .any(|r| r["outcome"] == "rejected" && r["sqlstate"] == "58030"),
        "{recs:?}"
    );
    assert!(metric(&scrape(fx.pv.metrics_port()), "pgveil_audit_errors_total") > 0.0);
    fx.assert_no_plaintext(&["ada@example.com", "bea@example.com", "555-0199", "555-0200"])
        .await;
}

#[tokio::test]
async fn a_read_that_fails_after_decrypting_rows_is_audited() {
    let fx = Calmony::start();
    let app = fx.app("calmony_app").await;
    for (i, phone) in ["555-0101", "555-0102", "555-0103"].iter().enumerate() {
        app.execute(
            "INSERT INTO pay_customers (org_id, email, phone) VALUES ($1, $2, $3)",
            &[&3i64, &format!("fail{i}@example.com"), phone],
        )
        .await
        .unwrap();
    }
    // Two rows are decrypted and sent, then PostgreSQL fails the third
    // (division by zero): there is no CommandComplete, and the read is
    // audited all the same, as an error.
    // No ORDER BY: the rows go out as the scan makes them (a sort would
    // compute every row before sending one).
    let sql = "SELECT phone, 10 / (3 - id::int) FROM pay_customers";
    for simple in [true, false] {
        let e = if simple {
            app.simple_query(sql).await.map(|_| ()).unwrap_err()
        } else {
            app.query(sql, &[]).await.map(|_| ()).unwrap_err()
        };
        assert_eq!(
            e.as_db_error().map(|d| d.code().code()),
            Some("22012"),
            "{e}"
        );
    }
    let path = fx.pv.dir().join("audit.jsonl");
    wait_for(Duration::from_secs(10), "two error records", || async {
        records(&path)
            .iter()
            .filter(|r| r["outcome"] == "error")
            .count()
            == 2
    })
    .await;
    for r in records(&path).iter().filter(|r| r["outcome"] == "error") {
        assert_eq!(r["decrypted"], true, "{r}");
        assert_eq!(r["rows"], 2, "{r}");
        assert!(
            r["columns"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c == "public.pay_customers.phone"),
            "{r}"
        );
    }
    fx.assert_no_plaintext(&["555-0101", "555-0102", "555-0103"])
        .await;
}
