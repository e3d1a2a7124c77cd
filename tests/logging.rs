//! `log.format: json` and `--log-format json`: every line pgveil writes on
//! stderr is one JSON object, events inside a session carry the fields of
//! its spans (`conn`: id, peer; `session`: role, db), and no value reaches
//! the log even at trace level.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::calmony::Calmony;
use common::*;

fn parse_lines(logs: &str) -> Vec<serde_json::Value> {
    logs.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}"));
            assert!(v.is_object(), "not an object: {l}");
            assert!(v["timestamp"].is_string() && v["level"].is_string(), "{l}");
            v
        })
        .collect()
}

#[tokio::test]
async fn json_log_lines_carry_span_fields_and_no_values() {
    // trace: everything pgveil could log.
    let fx = Calmony::builder()
        .extra_yaml("log:\n  format: json\n")
        .start();
    let app = fx.app("calmony_app").await;
    app.execute(
        "INSERT INTO users (email, name) VALUES ($1, $2)",
        &[&"json-sentinel@example.com", &"Jason Sentinel"],
    )
    .await
    .unwrap();
    app.simple_query(
        "INSERT INTO users (email, name) VALUES ('literal-sentinel@example.com', 'Lit Sentinel')",
    )
    .await
    .unwrap();
    let rows = app
        .query(
            "SELECT name FROM users WHERE email = $1",
            &[&"json-sentinel@example.com"],
        )
        .await
        .unwrap();
    assert_eq!(rows[0].get::<_, String>(0), "Jason Sentinel");
    // A refused statement logs at info with its reason.
    let e = app
        .simple_query("SELECT id FROM users WHERE email LIKE 'json-sentinel%'")
        .await
        .unwrap_err();
    assert_eq!(code(&e), "0A000");
    drop(app);

    let lines = parse_lines(&fx.pv.logs());
    assert!(lines.len() > 5, "only {} lines", lines.len());
    let in_session = lines
        .iter()
        .find(|v| {
            v["spans"].as_array().is_some_and(|spans| {
                spans.iter().any(|s| {
                    s["name"] == "session" && s["role"] == "calmony_app" && s["db"] == "app"
                }) && spans
                    .iter()
                    .any(|s| s["name"] == "conn" && s["id"].is_number() && s["peer"].is_string())
            })
        })
        .unwrap_or_else(|| panic!("no event inside a session span:\n{}", fx.pv.logs()));
    assert_eq!(in_session["span"]["name"], "session");
    // The refusal, logged inside the session: who and where.
    let rejected = lines
        .iter()
        .find(|v| v["fields"]["message"] == "statement rejected")
        .expect("the refusal was not logged");
    assert_eq!(rejected["fields"]["sqlstate"], "0A000");
    assert!(
        rejected["spans"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == "session" && s["role"] == "calmony_app"),
        "{rejected}"
    );
    fx.assert_no_plaintext(&[
        "json-sentinel@example.com",
        "Jason Sentinel",
        "literal-sentinel@example.com",
        "Lit Sentinel",
    ])
    .await;
}

/// The command-line flag, for deployments that keep one config file.
#[test]
fn log_format_flag_overrides_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pgveil.yaml");
    let port = free_port();
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:{port}\nupstream:\n  host: 127.0.0.1\n  port: 1\n  tls: disable\nlog:\n  format: text\n"
        ),
    )
    .unwrap();
    let mut child = pgveil_cmd()
        .args(["serve", "--log-format", "json", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            if tx.send(line.unwrap_or_default()).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    let listening = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let v: serde_json::Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
                let done = v["fields"]["message"] == "pgveil listening";
                seen.push(v);
                if done {
                    break true;
                }
            }
            Err(_) => break false,
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(listening, "no 'pgveil listening' line: {seen:?}");
}
