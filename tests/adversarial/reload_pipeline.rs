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

/// A table the first policy does not know, which the reload protects.
const NOTES: &str = "tables:\n  public.notes:\n    columns:\n      body: { type: text, access: { billing_app: read } }\n";

/// A pass-through statement prepared as the unnamed statement while its
/// table was not in the policy, bound after a reload protects the table,
/// with a Bind large enough to stream: the session must move to the new
/// policy (whose catalog query drops the unnamed statement) before the
/// Bind goes upstream, so its value is never written in plaintext.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_bind_at_the_boundary_after_a_reload_is_not_streamed_under_the_old_policy() {
    let port = free_port();
    let fx = Calmony::builder()
        .rust_log("info")
        .extra_sql("CREATE TABLE public.notes (id serial PRIMARY KEY, body text); GRANT ALL ON public.notes, public.notes_id_seq TO PUBLIC;")
        .extra_yaml(&format!(
            "metrics:\n  listen: 127.0.0.1:{port}\nlimits:\n  max_message_bytes: 268435456\n  max_buffered_bytes: 16777216\n"
        ))
        .start();
    let mport = fx.pv.metrics_port();
    let insert = "INSERT INTO notes (body) VALUES ($1)";
    let mut c = Raw::login(fx.pv.addr(), "calmony_app").await;
    c.send(&[
        crate::common::raw::parse("", insert),
        crate::common::raw::sync(),
    ])
    .await;
    let m = c.until_ready().await;
    assert!(errors(&m).is_empty(), "{:?}", errors(&m));

    assert!(calmony::POLICY.contains("\ntables:\n"));
    std::fs::write(
        fx.pv.dir().join("policy.yaml"),
        calmony::POLICY.replacen("\ntables:\n", &format!("\n{NOTES}"), 1),
    )
    .unwrap();
    fx.pv.send_signal("HUP");
    wait_for(Duration::from_secs(60), "the reload", || async {
        metric(&scrape(mport), "pgveil_reloads_total") == 1.0
    })
    .await;

    let sentinel = "notes-streamed-sentinel-7781";
    let value = format!("{sentinel}{}", "y".repeat(300 << 10));
    let msgs = [
        crate::common::raw::bind("", "", &[&value]),
        crate::common::raw::execute(""),
        crate::common::raw::sync(),
    ]
    .concat();
    // The Bind's head first, so that pgveil sees a large message arrive.
    use tokio::io::AsyncWriteExt;
    c.s.write_all(&msgs[..4096]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    c.s.write_all(&msgs[4096..]).await.unwrap();
    let m = c.until_ready().await;
    println!(
        "after the reload: {:?}; streamed messages: {}",
        errors(&m),
        metric(&scrape(mport), "pgveil_streamed_messages_total")
    );
    let d = fx.direct().await;
    let plain: i64 = d
        .query_one(
            "SELECT count(*) FROM notes WHERE body LIKE 'notes-streamed%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    // The scan reads every row: the padding is not kept.
    d.execute("DELETE FROM notes", &[]).await.unwrap();
    assert_eq!(plain, 0, "the large Bind wrote the value in plaintext");
    fx.assert_no_plaintext(&[sentinel]).await;
}
