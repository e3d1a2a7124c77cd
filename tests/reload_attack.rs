//! Reload under attack: statements prepared under one policy and run after
//! a reload put another in force, and the files a reload re-reads. Every
//! test that involves protected values ends with the direct scan of the
//! database (and the logs) for the plaintext.

mod common;

use std::time::Duration;

use futures::TryStreamExt;

use common::calmony::{Calmony, POLICY};
use common::http::{metric, scrape};
use common::raw::{Raw, bind, errors, execute, parse, sync, tags};
use common::*;

const WAIT: Duration = Duration::from_secs(60);

fn with_metrics(policy: &str) -> (Calmony, u16) {
    let port = free_port();
    let fx = Calmony::builder()
        .policy(policy)
        .rust_log("trace")
        .extra_yaml(&format!("metrics:\n  listen: 127.0.0.1:{port}\n"))
        .start();
    let port = fx.pv.metrics_port();
    (fx, port)
}

fn write_policy(fx: &Calmony, text: &str) {
    std::fs::write(fx.pv.dir().join("policy.yaml"), text).unwrap();
}

async fn reload(fx: &Calmony, port: u16, n: f64) {
    fx.pv.send_signal("HUP");
    wait_for(WAIT, "the reload", || async {
        metric(&scrape(port), "pgveil_reloads_total") == n
    })
    .await;
}

async fn insert_customer(fx: &Calmony, phone: &str) -> i64 {
    let w = fx.app("calmony_app").await;
    w.query_one(
        "INSERT INTO pay_customers (org_id, email, name, phone) VALUES ($1, $2, $3, $4) RETURNING id",
        &[&7i64, &"rita@example.com", &"Rita", &phone],
    )
    .await
    .unwrap()
    .get(0)
}

/// A COPY TO through tokio-postgres with an already prepared statement:
/// the CopyData payloads, or the error (SQLSTATE, message).
async fn copy_prepared(
    c: &tokio_postgres::Client,
    st: &tokio_postgres::Statement,
) -> Result<Vec<u8>, (String, String)> {
    let stream = c.copy_out(st).await.map_err(|e| (code(&e), err_text(&e)))?;
    futures::pin_mut!(stream);
    let mut out = Vec::new();
    while let Some(b) = stream
        .try_next()
        .await
        .map_err(|e| (code(&e), err_text(&e)))?
    {
        out.extend_from_slice(&b);
    }
    Ok(out)
}

const PHONE_READ: &str = "phone:       { type: text, access: { billing_app: read } }";
const PHONE_SEARCH: &str = "phone:       { type: text, access: { billing_app: search } }";

/// A `COPY … TO STDOUT` prepared while the role may `read` a column, run
/// again after a reload took `read` away (keeping `search`: its plans do
/// not change, so the session moves to the new policy in place): the rows
/// come as ciphertext, as for a SELECT, never decrypted by the old plan.
#[tokio::test]
async fn prepared_copy_to_follows_a_reload_that_takes_read_away() {
    assert!(POLICY.contains(PHONE_READ));
    let (fx, port) = with_metrics(POLICY);
    let phone = "555-0142-sentinel";
    insert_customer(&fx, phone).await;
    let app = fx.app("calmony_app").await;
    let st = app
        .prepare("COPY pay_customers (id, phone) TO STDOUT")
        .await
        .unwrap();
    let before = copy_prepared(&app, &st).await.expect("COPY before");
    assert!(
        String::from_utf8_lossy(&before).contains(phone),
        "a read role gets the COPY decrypted"
    );

    write_policy(&fx, &POLICY.replace(PHONE_READ, PHONE_SEARCH));
    reload(&fx, port, 1.0).await;
    // A statement boundary: the session takes the new policy here.
    app.simple_query("SELECT 1").await.unwrap();
    assert!(!app.is_closed(), "a read-only change keeps the session");

    let after = copy_prepared(&app, &st).await;
    let text = match &after {
        Ok(b) => String::from_utf8_lossy(b).into_owned(),
        Err((_, m)) => m.clone(),
    };
    assert!(
        !text.contains(phone),
        "the COPY prepared under the old policy was decrypted for a role that lost read: {text}"
    );
    // The same statement prepared now agrees: ciphertext (bytea hex).
    let fresh = app
        .prepare("COPY pay_customers (id, phone) TO STDOUT")
        .await
        .unwrap();
    let again = copy_prepared(&app, &fresh).await.expect("COPY again");
    assert_eq!(after.as_deref().ok(), Some(&again[..]));
    assert!(
        String::from_utf8_lossy(&again).contains("\\\\x"),
        "{again:?}"
    );
    fx.assert_no_plaintext(&[phone]).await;
}

const COUNTRY: &str = "      country:     { type: text, access: { billing_app: read } }\n";

/// Statements prepared while a column was not protected, run after a
/// reload protects it: neither the named one (the session is closed) nor
/// the unnamed one (PostgreSQL dropped it: pgveil's catalog query at the
/// swap is a simple Query) may write the value in plaintext.
#[tokio::test]
async fn statements_prepared_before_a_column_is_protected_never_write_it_in_plaintext() {
    assert!(POLICY.contains(COUNTRY));
    let unprotected = POLICY.replace(COUNTRY, "");
    let (fx, port) = with_metrics(&unprotected);
    let insert = "INSERT INTO pay_customers (org_id, country) VALUES ($1, $2)";

    let named = fx.app("calmony_app").await;
    let st = named
        .prepare_typed(
            insert,
            &[
                tokio_postgres::types::Type::INT8,
                tokio_postgres::types::Type::BYTEA,
            ],
        )
        .await
        .unwrap();
    let mut raw = Raw::login_at(fx.pv.port(), "calmony_app").await;
    let got = raw.send_ready(&[parse("", insert), sync()]).await;
    assert!(errors(&got).is_empty(), "{:?}", errors(&got));

    write_policy(&fx, POLICY);
    reload(&fx, port, 1.0).await;

    let named_value = "country-named-sentinel";
    let e = named
        .execute(&st, &[&7i64, &named_value.as_bytes()])
        .await
        .unwrap_err();
    assert_eq!(code(&e), "57P01", "{}", err_text(&e));
    assert!(err_text(&e).contains("reconnect"), "{}", err_text(&e));

    let unnamed_value = "country-unnamed-sentinel";
    let got = raw
        .send_ready(&[bind("", "", &["7", unnamed_value]), execute(""), sync()])
        .await;
    let (_, code, msg) = errors(&got).first().cloned().expect("the Bind must fail");
    assert_eq!(code, "26000", "{msg}");
    assert!(!tags(&got).contains('C'), "{}", tags(&got));

    // The column is protected now: a write the new policy plans is
    // encrypted, on the same connection.
    let through = raw
        .send_ready(&[
            parse("", insert),
            bind("", "", &["7", "country-after-sentinel"]),
            execute(""),
            sync(),
        ])
        .await;
    assert!(errors(&through).is_empty(), "{:?}", errors(&through));
    let d = fx.direct().await;
    let n: i64 = d
        .query_one(
            "SELECT count(*) FROM pay_customers WHERE country IS NOT NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    fx.assert_no_plaintext(&[named_value, unnamed_value, "country-after-sentinel"])
        .await;
}

/// The pid file lives in a directory others may write to: a symlink
/// planted at the name pgveil writes through must not make it overwrite
/// another file, and `pgveil reload` must not signal whatever process a
/// file others could have replaced names.
#[tokio::test]
async fn pid_file_in_a_shared_directory_is_not_followed_nor_trusted() {
    use std::os::unix::fs::PermissionsExt;
    let victim_dir = tempfile::tempdir().unwrap();
    let victim = victim_dir.path().join("victim.conf");
    std::fs::write(&victim, "precious\n").unwrap();
    let builder = PgveilBuilder::new();
    let run = builder.dir().join("run");
    std::fs::create_dir_all(&run).unwrap();
    std::os::unix::fs::symlink(&victim, run.join("pgveil.pid.tmp")).unwrap();
    let pg = PgCluster::start(Hba::Trust);
    let pv = builder.start(&format!(
        "{}pid_file: run/pgveil.pid\n",
        Pgveil::config_for(&pg)
    ));
    assert_eq!(
        std::fs::read_to_string(&victim).unwrap(),
        "precious\n",
        "pgveil wrote its pid file through a planted symlink"
    );
    let pid_file = run.join("pgveil.pid");
    let meta = std::fs::symlink_metadata(&pid_file).unwrap();
    assert!(meta.file_type().is_file(), "the pid file is a symlink");
    assert_eq!(meta.permissions().mode() & 0o022, 0, "{meta:?}");
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap().trim(),
        pv.pid().unwrap().to_string()
    );

    // Another user replaces the file in a world-writable directory with
    // the pid of a process of theirs choosing.
    let mut decoy = std::process::Command::new("sleep")
        .arg("600")
        .spawn()
        .unwrap();
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::remove_file(&pid_file).unwrap();
    std::fs::write(&pid_file, format!("{}\n", decoy.id())).unwrap();
    let out = pgveil_cmd()
        .args(["reload", "--config"])
        .arg(pv.config_path())
        .env_remove("PGVEIL_CONFIG")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    std::thread::sleep(Duration::from_millis(200));
    let decoy_alive = decoy.try_wait().unwrap().is_none();
    let _ = decoy.kill();
    let _ = decoy.wait();
    assert!(
        decoy_alive,
        "pgveil reload sent SIGHUP to the decoy process"
    );
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("pid_file"), "{stderr}");

    // A pid file naming a live process that is not pgveil (a stale file
    // whose pid was reused), in a private directory: not signalled either.
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut other = std::process::Command::new("sleep")
        .arg("600")
        .spawn()
        .unwrap();
    std::fs::remove_file(&pid_file).unwrap();
    std::fs::write(&pid_file, format!("{}\n", other.id())).unwrap();
    let out = pgveil_cmd()
        .args(["reload", "--config"])
        .arg(pv.config_path())
        .env_remove("PGVEIL_CONFIG")
        .output()
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let other_alive = other.try_wait().unwrap().is_none();
    let _ = other.kill();
    let _ = other.wait();
    assert!(
        other_alive,
        "pgveil reload signalled a process that is not pgveil"
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not pgveil"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
