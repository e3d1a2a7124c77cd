//! The scanner can see what it claims to: a sentinel planted raw in a
//! `bytea` column of a new table in a new schema of another database, in
//! hex, in base64 and in a text column in another case, is found; an absent
//! one is not.

use base64::Engine as _;

use crate::common::{PgCluster, scan};

#[tokio::test]
async fn scanner_finds_plaintext_in_every_form() {
    let pg = PgCluster::start(crate::common::Hba::Trust);
    pg.create_database("elsewhere");
    let sentinel = "Planted-Sentinel-7731@example.com";
    let b64 = base64::engine::general_purpose::STANDARD.encode(format!("xy{sentinel}"));
    pg.psql(
        "elsewhere",
        &format!(
            "CREATE SCHEMA hidden;
             CREATE TABLE hidden.raw (id int, blob bytea);
             INSERT INTO hidden.raw VALUES (1, '\\x00ff'::bytea || convert_to('{sentinel}', 'UTF8'));
             CREATE TABLE hidden.b64 (v text);
             INSERT INTO hidden.b64 VALUES ('{b64}');
             CREATE TABLE hidden.upper (v text);
             INSERT INTO hidden.upper VALUES (upper('{sentinel}'));
             CREATE TABLE hidden.nested (v bytea[]);
             INSERT INTO hidden.nested VALUES (ARRAY[convert_to('{sentinel}', 'UTF8')]);"
        ),
    );
    let found = scan::find(&pg, &[sentinel, "Never-Written-Sentinel-0042"], &[]).await;
    for place in [
        "elsewhere: hidden.raw",
        "elsewhere: hidden.b64",
        "elsewhere: hidden.upper",
        "elsewhere: hidden.nested",
        "pg_dump of elsewhere",
    ] {
        assert!(
            found.iter().any(|(s, p)| s == sentinel && p == place),
            "not found in {place}: {found:?}"
        );
    }
    assert!(
        !found
            .iter()
            .any(|(s, _)| s == "Never-Written-Sentinel-0042"),
        "{found:?}"
    );
    // Only the raw table: the text rendering shows hex, the scanner must
    // look inside it.
    pg.psql(
        "elsewhere",
        "DROP TABLE hidden.b64, hidden.upper, hidden.nested",
    );
    let found = scan::find(&pg, &[sentinel], &[]).await;
    assert!(
        found.iter().any(|(_, p)| p == "elsewhere: hidden.raw"),
        "{found:?}"
    );
    let hex = format!("log line \\x{}", hex::encode(sentinel));
    assert!(scan::blob_contains(hex.as_bytes(), sentinel));
}
