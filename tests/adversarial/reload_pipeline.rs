//! Reload and a client that always has a request outstanding (review): a
//! session moves to a reloaded policy only when nothing it sent awaits an
//! answer, so a client that sends its next Query before it reads the
//! answer to the previous one (each in its own implicit transaction) must
//! still stop getting plaintext of a column its role may no longer read.

use std::time::Duration;

use crate::common::http::{metric, scrape};
use crate::common::raw::{Raw, errors, query, rows};
use crate::common::*;

const NAME: &str = "Pipelined Reader Name 6620";
const READ: &str = "      name: { type: text, access: { billing_app: read } }";
const GONE: &str = "      name: { type: text, access: { support: read } }";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_always_pipelines_follows_a_reload_that_takes_read_away() {
    let port = free_port();
    let fx = Calmony::builder()
        .rust_log("info")
        .extra_yaml(&format!("metrics:\n  listen: 127.0.0.1:{port}\n"))
        .start();
    let mport = fx.pv.metrics_port();
    assert!(calmony::POLICY.contains(READ));
    let app = fx.app("calmony_app").await;
    app.execute(
        "INSERT INTO users (email, name) VALUES ($1, $2)",
        &[&"pipelined.reader-6620@example.com", &NAME],
    )
    .await
    .unwrap();

    let q = || query("SELECT pg_sleep(0.15); SELECT name FROM users ORDER BY id");
    let mut c = Raw::login(fx.pv.addr(), "calmony_app").await;
    c.send(&[q()]).await;
    let mut after_reload: Vec<String> = Vec::new();
    let mut reloaded_at: Option<usize> = None;
    for i in 0..30 {
        // The next request goes out before the answer to the last one.
        c.send(&[q()]).await;
        let m = c.until_ready().await;
        assert!(errors(&m).is_empty(), "{i}: {:?}", errors(&m));
        let names: Vec<String> = rows(&m).into_iter().flatten().flatten().collect();
        if i == 0 {
            assert!(names.iter().any(|n| n == NAME), "read before: {names:?}");
        }
        if i == 3 {
            std::fs::write(
                fx.pv.dir().join("policy.yaml"),
                calmony::POLICY.replace(READ, GONE),
            )
            .unwrap();
            fx.pv.send_signal("HUP");
            wait_for(Duration::from_secs(60), "the reload", || async {
                metric(&scrape(mport), "pgveil_reloads_total") == 1.0
            })
            .await;
            reloaded_at = Some(i);
        }
        // Answers to requests sent after the reload completed.
        if reloaded_at.is_some_and(|r| i >= r + 2) {
            after_reload.extend(names);
        }
    }
    c.until_ready().await;
    assert!(!after_reload.is_empty());
    assert!(
        !after_reload.iter().any(|n| n == NAME),
        "plaintext of a column the role may no longer read, {} answers after the reload",
        after_reload.iter().filter(|n| *n == NAME).count()
    );
}
