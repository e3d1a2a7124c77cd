//! The metrics reference in docs/operations.md is what the exporter
//! serves: after some traffic, the set of metric names and their types on
//! `/metrics` equals the documented table, every metric has HELP text, and
//! the latency histograms have the documented buckets. docs/adoption.md's
//! monitoring table names only metrics that exist.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::calmony::Calmony;
use common::http::scrape;
use common::*;

fn read_repo(path: &str) -> String {
    std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The section of `doc` under `heading` (up to the next heading of the
/// same level).
fn section<'a>(doc: &'a str, heading: &str) -> &'a str {
    let start = doc
        .find(&format!("\n{heading}\n"))
        .unwrap_or_else(|| panic!("no heading {heading:?}"));
    let rest = &doc[start + heading.len() + 2..];
    let level = heading.split(' ').next().unwrap();
    let end = rest.find(&format!("\n{level} ")).unwrap_or(rest.len());
    &rest[..end]
}

/// `| \`name\` | type | …` rows → name → type.
fn documented(table: &str) -> BTreeMap<String, String> {
    table
        .lines()
        .filter_map(|l| {
            let mut cells = l.split('|').map(str::trim).skip(1);
            let name = cells.next()?.strip_prefix('`')?.strip_suffix('`')?;
            let ty = cells.next()?;
            name.starts_with("pgveil_")
                .then(|| (name.to_string(), ty.to_string()))
        })
        .collect()
}

/// `# TYPE name type` lines → name → type; and the names with HELP.
fn served(page: &str) -> (BTreeMap<String, String>, BTreeSet<String>) {
    let mut types = BTreeMap::new();
    let mut help = BTreeSet::new();
    for l in page.lines() {
        if let Some(rest) = l.strip_prefix("# TYPE ") {
            let (name, ty) = rest.split_once(' ').unwrap();
            types.insert(name.to_string(), ty.to_string());
        } else if let Some(rest) = l.strip_prefix("# HELP ") {
            let (name, text) = rest.split_once(' ').unwrap_or((rest, ""));
            if !text.trim().is_empty() {
                help.insert(name.to_string());
            }
        }
    }
    (types, help)
}

/// The `le` bounds of one histogram series (without `+Inf`).
fn buckets(page: &str, name: &str, label: &str) -> Vec<f64> {
    let prefix = format!("{name}_bucket{{{label},le=\"");
    page.lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter_map(|rest| rest.split('"').next())
        .filter(|le| *le != "+Inf")
        .map(|le| le.parse().unwrap())
        .collect()
}

/// The numbers of the documented bucket list `- \`name\`: a, b, c (…)`.
fn documented_buckets(doc: &str, name: &str) -> Vec<f64> {
    let line = doc
        .lines()
        .find(|l| l.starts_with(&format!("- `{name}`:")))
        .unwrap_or_else(|| panic!("docs/operations.md lists no buckets for {name}"));
    line.split_once(':')
        .unwrap()
        .1
        .split('(')
        .next()
        .unwrap()
        .split(',')
        .map(|n| n.trim().parse().unwrap_or_else(|e| panic!("{n:?}: {e}")))
        .collect()
}

#[tokio::test]
async fn documented_metrics_are_what_the_exporter_serves() {
    let fx = Calmony::builder()
        .rust_log("info")
        .extra_yaml(&format!("metrics:\n  listen: 127.0.0.1:{}\n", free_port()))
        .start();
    // Traffic: writes (encryption, key creation), reads (decryption, key
    // cache), a refusal.
    let app = fx.app("calmony_app").await;
    app.execute(
        "INSERT INTO users (email, name) VALUES ($1, $2)",
        &[&"m@example.com", &"M"],
    )
    .await
    .unwrap();
    let r = app
        .query(
            "SELECT name FROM users WHERE email = $1",
            &[&"m@example.com"],
        )
        .await
        .unwrap();
    assert_eq!(r.len(), 1);
    assert!(
        app.simple_query("SELECT max(email) FROM users")
            .await
            .is_err()
    );
    let page = scrape(fx.pv.metrics_port());

    let doc = read_repo("docs/operations.md");
    let table = documented(section(&doc, "## Metrics"));
    let (types, help) = served(&page);
    let pgveil: BTreeMap<String, String> = types
        .into_iter()
        .filter(|(n, _)| n.starts_with("pgveil_"))
        .collect();
    assert_eq!(
        table, pgveil,
        "docs/operations.md's metrics table (left) differs from /metrics (right)"
    );
    for name in pgveil.keys() {
        assert!(help.contains(name), "{name} has no HELP text");
    }
    // Histograms, with the documented buckets.
    for (name, label) in [
        ("pgveil_kms_seconds", "op=\"unwrap\""),
        ("pgveil_crypto_seconds", "op=\"decrypt\""),
    ] {
        assert_eq!(pgveil[name], "histogram");
        assert_eq!(
            buckets(&page, name, label),
            documented_buckets(&doc, name),
            "{name}"
        );
    }
    assert!(page.contains("pgveil_crypto_seconds_count{op=\"encrypt\"} "));

    // Every metric docs/adoption.md tells operators to watch exists.
    let adoption = read_repo("docs/adoption.md");
    let watch = section(&adoption, "## 5. Monitoring");
    for name in watch
        .split('`')
        .filter(|w| w.starts_with("pgveil_"))
        .map(|w| w.split('{').next().unwrap())
    {
        assert!(
            pgveil.contains_key(name),
            "docs/adoption.md names {name}, which /metrics does not serve"
        );
    }
    assert!(
        !watch.contains("not yet updated"),
        "docs/adoption.md still says some metrics are not updated"
    );
}
