//! The one plaintext scanner every no-plaintext claim goes through.
//!
//! It reads what an attacker with the database (or its backups and logs)
//! would read: every row of every relation of every database in the cluster
//! (system catalogs aside), `bytea` columns as their raw bytes and every
//! column also as its text rendering, `pg_dump` of every database,
//! PostgreSQL's log, and whatever else the caller hands it (pgveil's log,
//! the audit log, the metrics page). A sentinel counts as found when it
//! appears case-insensitively in raw bytes or text, inside any `\x…` hex run
//! (bytea rendered as text, also nested in arrays and rows), hex-encoded, or
//! base64-encoded at any alignment.
//!
//! ```ignore
//! let found = scan::find(&pg, &["alice@example.com"], &[("pgveil log", logs.as_bytes())]).await;
//! assert!(found.is_empty(), "{found:?}");
//! ```

use std::process::Command;

use base64::Engine as _;

use super::pg::{PgCluster, quote_ident};

/// Where a sentinel was seen: (sentinel, place).
pub type Finding = (String, String);

/// Every database of the cluster that accepts connections.
async fn databases(pg: &PgCluster) -> Vec<String> {
    let c = pg.connect("postgres", None, "postgres").await;
    c.query(
        "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY 1",
        &[],
    )
    .await
    .expect("list databases")
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// The forms a sentinel may take in stored or logged bytes, all lowercase
/// where case is meaningless: the text itself, its hex, and its base64 at
/// the three possible alignments (only the part of the encoding that does
/// not depend on neighbouring bytes).
fn needles(sentinel: &str) -> Vec<(Vec<u8>, bool)> {
    let mut out = vec![];
    let lower = sentinel.to_lowercase();
    // (needle, compare case-insensitively)
    out.push((lower.clone().into_bytes(), true));
    for form in [sentinel.to_string(), lower.clone(), sentinel.to_uppercase()] {
        out.push((hex::encode(form.as_bytes()).into_bytes(), true));
        let b = form.as_bytes();
        for k in 0..3usize {
            let mut padded = vec![0u8; k];
            padded.extend_from_slice(b);
            let enc = base64::engine::general_purpose::STANDARD.encode(&padded);
            let start = k.div_ceil(3) * 4;
            let end = (padded.len() / 3) * 4;
            if end > start + 4 {
                for alphabet in [
                    enc[start..end].to_string(),
                    enc[start..end].replace('+', "-").replace('/', "_"),
                ] {
                    out.push((alphabet.into_bytes(), false));
                }
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

fn contains(hay: &[u8], needle: &[u8], fold: bool) -> bool {
    if needle.is_empty() || hay.len() < needle.len() {
        return false;
    }
    if fold {
        hay.windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle))
    } else {
        hay.windows(needle.len()).any(|w| w == needle)
    }
}

/// Decode every `\x<hex>` run (bytea as text, possibly with the backslash
/// doubled inside row or array literals) into raw bytes.
fn hex_runs(text: &[u8]) -> Vec<Vec<u8>> {
    let mut out = vec![];
    let mut i = 0;
    while i + 1 < text.len() {
        if text[i] == b'\\' && text[i + 1] == b'x' {
            let mut j = i + 2;
            while j < text.len() && text[j].is_ascii_hexdigit() {
                j += 1;
            }
            let run = &text[i + 2..i + 2 + (j - i - 2) / 2 * 2];
            if let Ok(bytes) = hex::decode(run) {
                out.push(bytes);
            }
            i = j;
        } else {
            i += 1;
        }
    }
    out
}

/// Whether `sentinel` appears in `blob` in any form (see the module doc).
pub fn blob_contains(blob: &[u8], sentinel: &str) -> bool {
    let n = needles(sentinel);
    let hit = |hay: &[u8]| n.iter().any(|(needle, fold)| contains(hay, needle, *fold));
    hit(blob) || hex_runs(blob).iter().any(|b| hit(b))
}

/// Everything the cluster holds, relation by relation: (place, bytes).
pub async fn cluster_blobs(pg: &PgCluster) -> Vec<(String, Vec<u8>)> {
    let mut blobs = vec![];
    for db in databases(pg).await {
        let c = pg.connect("postgres", None, &db).await;
        let rels = c
            .query(
                "SELECT n.nspname, c.relname, c.oid::int8 FROM pg_class c \
                 JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.relkind IN ('r', 'm') \
                   AND n.nspname <> 'information_schema' \
                   AND n.nspname !~ '^pg_(catalog|toast)' \
                   AND (c.relpersistence <> 't' OR n.oid = pg_my_temp_schema()) \
                 ORDER BY 1, 2",
                &[],
            )
            .await
            .expect("list relations");
        for r in rels {
            let (schema, name, oid): (String, String, i64) = (r.get(0), r.get(1), r.get(2));
            let rel = format!("{}.{}", quote_ident(&schema), quote_ident(&name));
            let place = format!("{db}: {schema}.{name}");
            let mut bytes = vec![];
            // The text rendering of each whole row, as raw bytes (the
            // database's encoding may not be UTF-8).
            for row in c
                .query(&format!("SELECT textsend(t::text) FROM ONLY {rel} t"), &[])
                .await
                .unwrap_or_else(|e| panic!("scan {place}: {e}"))
            {
                bytes.extend_from_slice(&row.get::<_, Option<Vec<u8>>>(0).unwrap_or_default());
                bytes.push(b'\n');
            }
            // Raw bytes of every bytea column.
            let cols = c
                .query(
                    "SELECT attname FROM pg_attribute WHERE attrelid = $1::int8::oid \
                     AND attnum > 0 AND NOT attisdropped AND atttypid = 'bytea'::regtype",
                    &[&oid],
                )
                .await
                .expect("list bytea columns");
            for col in cols {
                let col: String = col.get(0);
                for row in c
                    .query(
                        &format!("SELECT {} FROM ONLY {rel}", quote_ident(&col)),
                        &[],
                    )
                    .await
                    .unwrap_or_else(|e| panic!("scan {place}.{col}: {e}"))
                {
                    if let Some(v) = row.get::<_, Option<Vec<u8>>>(0) {
                        bytes.extend_from_slice(&v);
                        bytes.push(0);
                    }
                }
            }
            blobs.push((place, bytes));
        }
        let dump = Command::new(pg.bin("pg_dump"))
            .args(["-h", "127.0.0.1", "-p", &pg.port().to_string()])
            .args(["-U", "postgres", &db])
            .env_remove("PGPASSWORD")
            .env_remove("PGSERVICE")
            .output()
            .expect("run pg_dump");
        assert!(
            dump.status.success(),
            "pg_dump {db}: {}",
            String::from_utf8_lossy(&dump.stderr)
        );
        blobs.push((format!("pg_dump of {db}"), dump.stdout));
    }
    blobs.push((
        "the PostgreSQL log".into(),
        std::fs::read(pg.log_path()).unwrap_or_default(),
    ));
    blobs
}

/// Every place (in the cluster, its dumps and log, and `extra`) where one of
/// `sentinels` appears.
pub async fn find(pg: &PgCluster, sentinels: &[&str], extra: &[(&str, &[u8])]) -> Vec<Finding> {
    let mut blobs = cluster_blobs(pg).await;
    blobs.extend(extra.iter().map(|(p, b)| (p.to_string(), b.to_vec())));
    let mut found = vec![];
    for s in sentinels {
        assert!(
            s.len() >= 6,
            "sentinel {s:?} is too short to be searched for without false hits"
        );
        for (place, blob) in &blobs {
            if blob_contains(blob, s) {
                found.push((s.to_string(), place.clone()));
            }
        }
    }
    found
}

/// Panic naming every place where a sentinel appears.
pub async fn assert_absent(pg: &PgCluster, sentinels: &[&str], extra: &[(&str, &[u8])]) {
    let found = find(pg, sentinels, extra).await;
    assert!(found.is_empty(), "plaintext found: {found:?}");
}

/// Panic unless every sentinel appears somewhere (used by tests to prove a
/// sentinel was really written before they claim it is absent elsewhere).
pub async fn assert_present(pg: &PgCluster, sentinels: &[&str]) {
    let found = find(pg, sentinels, &[]).await;
    for s in sentinels {
        assert!(
            found.iter().any(|(f, _)| f == s),
            "sentinel {s:?} was never stored"
        );
    }
}
