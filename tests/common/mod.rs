//! Shared integration-test harness: throwaway PostgreSQL clusters, pgveil
//! child processes and TLS certificates.
//!
//! Use it from any file under `tests/` with `mod common;`. Everything here is
//! safe to use from tests running in parallel in one binary (and from several
//! test binaries at once): ports are picked free, directories are temporary,
//! and everything is torn down on `Drop`.
//!
//! ```ignore
//! mod common;
//! use common::*;
//!
//! #[tokio::test]
//! async fn example() {
//!     let pg = PgCluster::start(Hba::Scram);
//!     pg.create_role("app", Some("secret"));
//!     let pv = Pgveil::start(&Pgveil::config_for(&pg));
//!     let c = pv.connect("app", Some("secret"), "postgres").await;
//!     let row = c.query_one("SELECT 1::int4", &[]).await.unwrap();
//!     assert_eq!(row.get::<_, i32>(0), 1);
//! }
//! ```
//!
//! See `docs/testing.md` for the full API.

#![allow(dead_code, unused_imports)]

pub mod calmony;
pub mod certs;
pub mod http;
pub mod moto;
pub mod pg;
pub mod pgveil;
pub mod program;
pub mod raw;
pub mod scan;
pub mod tls;

pub use calmony::Calmony;
pub use certs::{Certs, make_certs};
pub use pg::{Hba, PgCluster, PgOptions, pg_bin_dir, quote_ident, quote_literal, wait_until};
pub use pgveil::{Pgveil, PgveilBuilder, pgveil_bin, pgveil_cmd, write_file};
pub use program::run_program;
pub use tls::RustlsConnector;

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::sync::Mutex;

/// A TCP port on 127.0.0.1 that was free a moment ago. Never returns the same
/// port twice within one process, so parallel tests do not race each other
/// for it (other processes can still take it: callers retry on a clash).
pub fn free_port() -> u16 {
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local_addr").port();
        drop(listener);
        if HANDED_OUT.lock().unwrap().insert(port) {
            return port;
        }
    }
}

/// Poll `cond` every 50 ms until it holds; panic naming `what` after
/// `timeout`. The timeout only keeps a hang from stalling the suite: use a
/// generous one, it is not a performance claim.
pub async fn wait_for<F, Fut>(timeout: std::time::Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if cond().await {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Connect with tokio-postgres without TLS and spawn the connection task.
/// Panics with the error if the connection fails.
pub async fn connect_to(
    port: u16,
    user: &str,
    password: Option<&str>,
    db: &str,
) -> tokio_postgres::Client {
    try_connect_to(port, user, password, db)
        .await
        .unwrap_or_else(|e| panic!("connect to 127.0.0.1:{port} as {user}/{db}: {e:?}"))
}

/// Like [`connect_to`] but returns the error (for tests that expect one).
pub async fn try_connect_to(
    port: u16,
    user: &str,
    password: Option<&str>,
    db: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let cfg = pg_config(port, user, password, db);
    let (client, conn) = cfg.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// A tokio-postgres config for 127.0.0.1:`port` with sslmode disable.
pub fn pg_config(
    port: u16,
    user: &str,
    password: Option<&str>,
    db: &str,
) -> tokio_postgres::Config {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host("127.0.0.1")
        .port(port)
        .user(user)
        .dbname(db)
        .ssl_mode(tokio_postgres::config::SslMode::Disable)
        .connect_timeout(std::time::Duration::from_secs(20));
    if let Some(pw) = password {
        cfg.password(pw);
    }
    cfg
}

/// Connect with tokio-postgres over TLS (rustls, trusting `ca_pem`), with
/// `sslmode=require`. Spawns the connection task.
pub async fn connect_tls_to(
    port: u16,
    user: &str,
    password: Option<&str>,
    db: &str,
    ca_pem: &std::path::Path,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let mut cfg = pg_config(port, user, password, db);
    cfg.ssl_mode(tokio_postgres::config::SslMode::Require);
    let (client, conn) = cfg.connect(RustlsConnector::with_ca(ca_pem)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// The last `max` bytes of a file, lossily decoded (for panic messages).
pub(crate) fn tail(path: &std::path::Path, max: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let start = bytes.len().saturating_sub(max);
            String::from_utf8_lossy(&bytes[start..]).into_owned()
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// Full text of a tokio-postgres error: SQLSTATE and message of a server
/// error (its `Display` only says "db error"), else the error chain.
pub fn err_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {} ({})", db.severity(), db.message(), db.code().code()),
        None => {
            let mut s = e.to_string();
            let mut src = std::error::Error::source(e);
            while let Some(inner) = src {
                s += &format!(": {inner}");
                src = inner.source();
            }
            s
        }
    }
}

/// A tokio-postgres client whose connection task forwards asynchronous
/// messages (NOTICE, NOTIFY) to `messages` and records the latest
/// ParameterStatus values in `params`.
pub struct Session {
    pub client: tokio_postgres::Client,
    pub messages: tokio::sync::mpsc::UnboundedReceiver<tokio_postgres::AsyncMessage>,
    pub params: std::sync::Arc<Mutex<std::collections::HashMap<String, String>>>,
    /// The connection task: `abort()` it to drop the socket without sending
    /// Terminate (a client that disappears).
    pub task: tokio::task::JoinHandle<()>,
}

impl Session {
    /// Latest ParameterStatus value reported by the server.
    pub fn param(&self, name: &str) -> Option<String> {
        self.params.lock().unwrap().get(name).cloned()
    }

    /// Wait up to `timeout` for the next asynchronous message.
    pub async fn next_message(
        &mut self,
        timeout: std::time::Duration,
    ) -> Option<tokio_postgres::AsyncMessage> {
        tokio::time::timeout(timeout, self.messages.recv())
            .await
            .ok()
            .flatten()
    }
}

/// ParameterStatus names that [`Session::params`] tracks.
pub const TRACKED_PARAMS: &[&str] = &[
    "application_name",
    "client_encoding",
    "DateStyle",
    "IntervalStyle",
    "integer_datetimes",
    "is_superuser",
    "server_encoding",
    "server_version",
    "session_authorization",
    "standard_conforming_strings",
    "TimeZone",
];

/// Connect with `cfg` (TLS through [`RustlsConnector`] trusting `ca_pem` when
/// given, else NoTls) and drive the connection in a task that reports
/// asynchronous messages and parameter changes.
pub async fn connect_session(
    cfg: &tokio_postgres::Config,
    ca_pem: Option<&std::path::Path>,
) -> Result<Session, tokio_postgres::Error> {
    match ca_pem {
        Some(ca) => {
            let (client, conn) = cfg.connect(RustlsConnector::with_ca(ca)).await?;
            Ok(drive(client, conn))
        }
        None => {
            let (client, conn) = cfg.connect(tokio_postgres::NoTls).await?;
            Ok(drive(client, conn))
        }
    }
}

fn drive<S, T>(client: tokio_postgres::Client, conn: tokio_postgres::Connection<S, T>) -> Session
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use futures::StreamExt;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let params = std::sync::Arc::new(Mutex::new(std::collections::HashMap::new()));
    let p2 = params.clone();
    let mut conn = conn;
    let task = tokio::spawn(async move {
        let mut stream = futures::stream::poll_fn(move |cx| {
            let r = conn.poll_message(cx);
            let mut p = p2.lock().unwrap();
            for name in TRACKED_PARAMS {
                if let Some(v) = conn.parameter(name) {
                    p.insert(name.to_string(), v.to_string());
                }
            }
            r
        });
        while let Some(m) = stream.next().await {
            match m {
                Ok(m) => {
                    let _ = tx.send(m);
                }
                Err(_) => break,
            }
        }
    });
    Session {
        client,
        messages: rx,
        params,
        task,
    }
}

/// The rows of a simple-query result as optional strings.
pub fn simple_rows(msgs: &[tokio_postgres::SimpleQueryMessage]) -> Vec<Vec<Option<String>>> {
    msgs.iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
            }
            _ => None,
        })
        .collect()
}

/// The SQLSTATE of an error (or its debug form when it has none).
pub fn code(e: &tokio_postgres::Error) -> String {
    e.code()
        .map(|c| c.code().to_string())
        .unwrap_or_else(|| format!("{e:?}"))
}

/// `sql` is refused for `c` with one of `codes`, by a message that carries
/// none of `secrets`; rows it returned instead are shown in the panic.
pub async fn assert_refused(
    c: &tokio_postgres::Client,
    who: &str,
    sql: &str,
    codes: &[&str],
    secrets: &[&str],
) {
    match c.simple_query(sql).await {
        Ok(msgs) => panic!("BYPASS: {who} ran {sql}\n  rows: {:?}", simple_rows(&msgs)),
        Err(e) => {
            let got = code(&e);
            assert!(
                codes.contains(&got.as_str()),
                "{who}: {sql}: {}",
                err_text(&e)
            );
            let msg = err_text(&e);
            for s in secrets {
                assert!(!msg.contains(s), "the refusal shows a value: {msg}");
            }
        }
    }
}
