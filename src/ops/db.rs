//! Database connections for the operations commands (`encrypt`, `rotate`,
//! `policy check --database`): [`crate::pgclient`] (TLS with `sslmode`,
//! passwords, redaction) plus the refusal to run through a pgveil.

use std::path::PathBuf;

/// Where an ops command takes a password from when its connection string
/// has none (set once by the CLI from `--password-file`).
static PASSWORD_FILE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Use the first line of `path` as the password of connection strings that
/// carry none.
pub fn set_password_file(path: PathBuf) {
    let _ = PASSWORD_FILE.set(path);
}

pub use crate::pgclient::{describe, redact};

/// Connect with a libpq-style connection string (URL or key=value, with
/// `sslmode` up to `verify-full`); the connection task runs in the
/// background. Errors name the host, never the password. A server that
/// reports itself as pgveil is refused: the operations read and write
/// stored ciphertext and must reach PostgreSQL directly.
pub async fn connect(url: &str) -> Result<tokio_postgres::Client, String> {
    connect_to(url, false).await
}

/// As [`connect`], but a pgveil is fine (the demo's application client).
pub async fn connect_through_pgveil(url: &str) -> Result<tokio_postgres::Client, String> {
    connect_to(url, true).await
}

async fn connect_to(url: &str, pgveil_ok: bool) -> Result<tokio_postgres::Client, String> {
    let target =
        crate::pgclient::parse(url, "--database", PASSWORD_FILE.get().map(PathBuf::as_path))?;
    let (client, conn) = crate::pgclient::connect(&target).await?;
    if let Some(v) = conn.parameter(crate::proxy::login::PGVEIL_PARAMETER)
        && !pgveil_ok
    {
        return Err(format!(
            "{} is a pgveil ({v}), not PostgreSQL: operations commands read and write stored ciphertext themselves; give --database the address of the PostgreSQL server pgveil connects to (its `upstream:`)",
            target.shown
        ));
    }
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::warn!(error = %e, "database connection closed");
        }
    });
    Ok(client)
}
