//! Reloading a running pgveil (SIGHUP, `pgveil reload`): access changes
//! reach open connections at their next transaction boundary without
//! dropping them, a broken configuration leaves the running one in force
//! (and is counted), structural changes close only sessions whose prepared
//! statements they would invalidate, and SIGHUP never ends the process.

mod common;

use std::time::Duration;

use common::calmony::{Calmony, POLICY};
use common::http::{metric, scrape};
use common::*;
use tokio_postgres::types::Type;

const WAIT: Duration = Duration::from_secs(60);

/// What a role sees of a protected value.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Plain(String),
    Cipher,
}

/// One protected value through the extended protocol (tokio-postgres
/// prepares a named statement): plaintext comes typed as the policy's
/// type, ciphertext as bytea.
async fn extended(c: &tokio_postgres::Client, sql: &str) -> Seen {
    let row = c
        .query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {}", err_text(&e)));
    if row.columns()[0].type_() == &Type::BYTEA {
        Seen::Cipher
    } else {
        Seen::Plain(row.get(0))
    }
}

/// The same through a simple Query: ciphertext is bytea's hex text.
async fn simple(c: &tokio_postgres::Client, sql: &str) -> Seen {
    let msgs = c
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {}", err_text(&e)));
    let v = simple_rows(&msgs)[0][0].clone().expect("a value");
    if v.starts_with("\\x") {
        Seen::Cipher
    } else {
        Seen::Plain(v)
    }
}

fn with_metrics(rust_log: &str) -> (Calmony, u16) {
    let port = free_port();
    let fx = Calmony::builder()
        .rust_log(rust_log)
        .extra_yaml(&format!("metrics:\n  listen: 127.0.0.1:{port}\n"))
        .start();
    let port = fx.pv.metrics_port();
    (fx, port)
}

fn write_policy(fx: &Calmony, text: &str) {
    std::fs::write(fx.pv.dir().join("policy.yaml"), text).unwrap();
}

async fn wait_metric(port: u16, name: &str, want: f64) {
    wait_for(WAIT, &format!("{name} == {want}"), || async {
        metric(&scrape(port), name) == want
    })
    .await;
}

async fn insert_customer(fx: &Calmony) -> i64 {
    let w = fx.app("calmony_app").await;
    w.query_one(
        "INSERT INTO pay_customers (org_id, email, name, phone) VALUES ($1, $2, $3, $4) RETURNING id",
        &[&7i64, &"rita@example.com", &"Rita", &"555-0100"],
    )
    .await
    .unwrap()
    .get(0)
}

const WIDEN: (&str, &str) = (
    "access: { billing_app: read, support: search }",
    "access: { billing_app: read, support: read }",
);
const NARROW: (&str, &str) = (
    "phone:       { type: text, access: { billing_app: read } }",
    "phone:       { type: text, access: { billing_app: search } }",
);

#[tokio::test]
async fn sighup_applies_access_changes_to_open_connections() {
    // Everything pgveil can log, for the no-plaintext check at the end.
    let (fx, port) = with_metrics("trace");
    insert_customer(&fx).await;
    // Opened before the reload and used on both sides of it.
    let app = fx.app("calmony_app").await;
    let support = fx.app("support_agent").await;
    let phone = "SELECT phone FROM pay_customers";
    let email = "SELECT email FROM pay_customers";
    assert_eq!(extended(&app, phone).await, Seen::Plain("555-0100".into()));
    assert_eq!(simple(&app, phone).await, Seen::Plain("555-0100".into()));
    assert_eq!(extended(&support, email).await, Seen::Cipher);
    assert_eq!(simple(&support, email).await, Seen::Cipher);

    // A transaction open across the reload keeps the old policy to its end.
    app.batch_execute("BEGIN").await.unwrap();
    assert_eq!(simple(&app, phone).await, Seen::Plain("555-0100".into()));

    assert!(POLICY.contains(WIDEN.0) && POLICY.contains(NARROW.0));
    write_policy(
        &fx,
        &POLICY.replace(WIDEN.0, WIDEN.1).replace(NARROW.0, NARROW.1),
    );
    fx.pv.send_signal("HUP");
    wait_metric(port, "pgveil_reloads_total", 1.0).await;

    // Widening: the search role now reads plaintext, on the same client.
    wait_for(WAIT, "support_agent reads email", || async {
        extended(&support, email).await == Seen::Plain("rita@example.com".into())
    })
    .await;
    assert_eq!(
        simple(&support, email).await,
        Seen::Plain("rita@example.com".into())
    );
    // Inside the transaction begun before: still the old policy.
    assert_eq!(simple(&app, phone).await, Seen::Plain("555-0100".into()));
    app.batch_execute("COMMIT").await.unwrap();
    // Narrowing, at the transaction boundary: ciphertext for the read role.
    assert_eq!(simple(&app, phone).await, Seen::Cipher);
    assert_eq!(extended(&app, phone).await, Seen::Cipher);
    // What did not change still works as before.
    assert_eq!(
        extended(&app, email).await,
        Seen::Plain("rita@example.com".into())
    );
    let page = scrape(port);
    assert_eq!(metric(&page, "pgveil_reload_failures_total"), 0.0);
    assert_eq!(metric(&page, "pgveil_reload_sessions_closed_total"), 0.0);
    assert!(!app.is_closed() && !support.is_closed());
    fx.assert_no_plaintext(&["rita@example.com", "555-0100"])
        .await;
}

#[tokio::test]
async fn broken_configurations_leave_the_running_one_in_force() {
    let (mut fx, port) = with_metrics("info");
    insert_customer(&fx).await;
    let app = fx.app("calmony_app").await;
    let phone = "SELECT phone FROM pay_customers";
    assert_eq!(extended(&app, phone).await, Seen::Plain("555-0100".into()));

    // A syntax error.
    write_policy(
        &fx,
        &POLICY.replace(NARROW.0, "phone: { type: text, access: [broken"),
    );
    fx.pv.send_signal("HUP");
    wait_metric(port, "pgveil_reload_failures_total", 1.0).await;
    assert!(fx.pv.is_running(), "SIGHUP ended pgveil");
    let logs = fx.pv.logs();
    assert!(logs.contains("reload refused"), "{logs}");
    assert!(
        logs.contains("policy.yaml:"),
        "the error names file:line: {logs}"
    );
    assert_eq!(extended(&app, phone).await, Seen::Plain("555-0100".into()));

    // A column the table does not have (valid YAML, checked against the
    // catalog pgveil loaded).
    let unknown = POLICY.replace(
        NARROW.0,
        &format!(
            "{}\n      fax:         {{ type: text, access: {{ billing_app: read }} }}",
            NARROW.1
        ),
    );
    write_policy(&fx, &unknown);
    fx.pv.send_signal("HUP");
    wait_metric(port, "pgveil_reload_failures_total", 2.0).await;
    assert!(
        fx.pv
            .logs()
            .contains("protected column public.pay_customers.fax does not exist"),
        "{}",
        fx.pv.logs()
    );
    // Neither the narrowing next to it: the old policy serves, old and
    // new connections alike.
    assert_eq!(extended(&app, phone).await, Seen::Plain("555-0100".into()));
    let fresh = fx.app("calmony_app").await;
    assert_eq!(simple(&fresh, phone).await, Seen::Plain("555-0100".into()));

    // `pgveil reload` says so too, through the metrics listener.
    let out = fx.run(&["reload"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("policy.yaml:"), "{stderr}");
    assert!(stderr.contains("fax does not exist"), "{stderr}");
    assert_eq!(metric(&scrape(port), "pgveil_reload_failures_total"), 3.0);

    // Fixed: `pgveil reload` applies it.
    write_policy(&fx, &POLICY.replace(NARROW.0, NARROW.1));
    let out = fx.run(&["reload"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"policy\""));
    assert_eq!(metric(&scrape(port), "pgveil_reloads_total"), 1.0);
    assert_eq!(extended(&app, phone).await, Seen::Cipher);
    assert_eq!(simple(&fresh, phone).await, Seen::Cipher);
    assert!(fx.pv.is_running());
}

#[tokio::test]
async fn structural_changes_close_only_sessions_with_prepared_statements() {
    let (fx, port) = with_metrics("info");
    let id = insert_customer(&fx).await;
    // Simple queries only: nothing prepared that a new policy could
    // invalidate.
    let plain = fx.app("calmony_app").await;
    assert_eq!(
        simple(&plain, "SELECT phone FROM pay_customers").await,
        Seen::Plain("555-0100".into())
    );
    let prepared = fx.app("calmony_app").await;
    let st = prepared
        .prepare("SELECT phone FROM pay_customers WHERE id = $1")
        .await
        .unwrap();
    let row = prepared.query_one(&st, &[&id]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), "555-0100");

    // `country` is no longer protected: which statements are rewritten
    // changes (a structural change).
    let line = "      country:     { type: text, access: { billing_app: read } }\n";
    assert!(POLICY.contains(line));
    write_policy(&fx, &POLICY.replace(line, ""));
    fx.pv.send_signal("HUP");
    wait_metric(port, "pgveil_reloads_total", 1.0).await;

    // The session with a prepared statement is closed at its next
    // statement boundary (57P01), instead of running a plan of the old
    // policy.
    let e = prepared.query_one(&st, &[&id]).await.unwrap_err();
    assert_eq!(code(&e), "57P01", "{}", err_text(&e));
    assert!(err_text(&e).contains("reconnect"), "{}", err_text(&e));
    assert_eq!(
        metric(&scrape(port), "pgveil_reload_sessions_closed_total"),
        1.0
    );
    // The other one moves to the new policy in place.
    assert_eq!(
        simple(&plain, "SELECT phone FROM pay_customers").await,
        Seen::Plain("555-0100".into())
    );
    assert!(!plain.is_closed());
    // New connections prepare under the new policy.
    let again = fx.app("calmony_app").await;
    let st = again
        .prepare("SELECT phone FROM pay_customers WHERE id = $1")
        .await
        .unwrap();
    let row = again.query_one(&st, &[&id]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), "555-0100");
}

#[tokio::test]
async fn pgveil_reload_signals_the_pid_file() {
    let fx = Calmony::builder()
        .rust_log("info")
        .extra_yaml("pid_file: run/pgveil.pid\n")
        .start();
    insert_customer(&fx).await;
    let app = fx.app("calmony_app").await;
    let phone = "SELECT phone FROM pay_customers";
    assert_eq!(simple(&app, phone).await, Seen::Plain("555-0100".into()));
    let pid_file = fx.pv.dir().join("run/pgveil.pid");
    let pid: u32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(Some(pid), fx.pv.pid());

    write_policy(&fx, &POLICY.replace(NARROW.0, NARROW.1));
    let out = fx.run(&["reload"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("pid {pid}")));
    wait_for(WAIT, "the narrowing to apply", || async {
        simple(&app, phone).await == Seen::Cipher
    })
    .await;
    assert!(fx.pv.logs().contains("configuration reloaded"));

    // Removed at a clean stop.
    let mut fx = fx;
    assert!(fx.pv.stop().success());
    assert!(!pid_file.exists(), "pid file left behind");
}

/// Both legs' TLS files are read again: the certificate pgveil presents to
/// clients (new handshakes get the new one, an open TLS session keeps
/// working) and the CA it checks PostgreSQL's certificate with.
#[tokio::test]
async fn tls_files_of_both_legs_are_reloaded() {
    let old = tempfile::tempdir().unwrap();
    let new = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    let (a, b, wrong) = (
        make_certs(old.path()),
        make_certs(new.path()),
        make_certs(other.path()),
    );
    let pg = PgCluster::start_with(PgOptions {
        tls: Some((a.server_cert_path.clone(), a.server_key_path.clone())),
        hostssl_only: true,
        ..PgOptions::default()
    });
    pg.create_role("app", None);
    let builder = Pgveil::builder();
    let d = builder.dir().to_path_buf();
    let copy = |from: &std::path::Path, to: &str| std::fs::copy(from, d.join(to)).unwrap();
    copy(&a.server_cert_path, "tls.crt");
    copy(&a.server_key_path, "tls.key");
    // Upstream checked against a CA that did not sign PostgreSQL's
    // certificate: no session can start.
    copy(&wrong.ca_pem_path, "upstream-ca.pem");
    let metrics = free_port();
    let pv = builder.start(&format!(
        "listen: 127.0.0.1:{}\nupstream:\n  host: 127.0.0.1\n  port: {}\n  tls: verify-full\n  ca_file: upstream-ca.pem\n\
         client_tls:\n  mode: require\n  cert_file: tls.crt\n  key_file: tls.key\n\
         metrics:\n  listen: 127.0.0.1:{metrics}\n",
        free_port(),
        pg.port()
    ));
    let port = pv.metrics_port();
    let Err(e) = connect_tls_to(pv.port(), "app", None, "postgres", &a.ca_pem_path).await else {
        panic!("PostgreSQL's certificate is not trusted yet");
    };
    assert!(
        err_text(&e).contains("TLS handshake with PostgreSQL"),
        "{}",
        err_text(&e)
    );

    // The right upstream CA.
    copy(&a.ca_pem_path, "upstream-ca.pem");
    pv.send_signal("HUP");
    wait_metric(port, "pgveil_reloads_total", 1.0).await;
    let before = connect_tls_to(pv.port(), "app", None, "postgres", &a.ca_pem_path)
        .await
        .unwrap_or_else(|e| panic!("{}", err_text(&e)));
    before.simple_query("SELECT 1").await.unwrap();

    // A new client certificate, signed by another CA.
    copy(&b.server_cert_path, "tls.crt");
    copy(&b.server_key_path, "tls.key");
    pv.send_signal("HUP");
    wait_metric(port, "pgveil_reloads_total", 2.0).await;
    let after = connect_tls_to(pv.port(), "app", None, "postgres", &b.ca_pem_path)
        .await
        .unwrap_or_else(|e| panic!("{}", err_text(&e)));
    after.simple_query("SELECT 1").await.unwrap();
    assert!(
        connect_tls_to(pv.port(), "app", None, "postgres", &a.ca_pem_path)
            .await
            .is_err(),
        "the old certificate is still presented"
    );
    before.simple_query("SELECT 1").await.unwrap();

    // A key that does not match the certificate: refused, the running one
    // stays.
    copy(&a.server_key_path, "tls.key");
    pv.send_signal("HUP");
    wait_metric(port, "pgveil_reload_failures_total", 1.0).await;
    assert!(pv.logs().contains("pgveil.yaml:"), "{}", pv.logs());
    let still = connect_tls_to(pv.port(), "app", None, "postgres", &b.ca_pem_path)
        .await
        .unwrap_or_else(|e| panic!("{}", err_text(&e)));
    still.simple_query("SELECT 1").await.unwrap();
}
