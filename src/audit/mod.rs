//! Audit log: one JSON line per statement that decrypted or searched
//! protected data, and one per rejected statement. Names and counts only,
//! never values. Records go over a bounded channel to a dedicated writer
//! thread (`writer`), which flushes each one, rotates by size
//! (`audit.max_bytes`, keeping `audit.keep` old files as `<path>.1` …
//! `<path>.N`) and reopens the file on SIGHUP. While records cannot be
//! written, `audit.on_failure: block` makes the backend refuse decryption
//! ([`AuditLog::refuses_decryption`]).

mod writer;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::Serialize;

use crate::config::{Audit, AuditOnFailure};
use writer::{Cmd, Settings, Writer};

/// What the audit log records for a statement that reads or searches
/// protected data (never values).
#[derive(Debug, Clone)]
pub struct AuditInfo {
    /// Protected tables involved, as `schema.table`.
    pub tables: Vec<String>,
    /// Protected columns searched or decrypted, as `schema.table.column`.
    pub columns: Vec<String>,
    /// The statement searched protected columns (equality or blind index).
    pub searched: bool,
    /// Rows were decrypted for the client (set when the result is counted).
    pub decrypted: bool,
}

/// Who a session is, as PostgreSQL confirmed it (the audit log records
/// every statement by it; both directions of the session carry it).
#[derive(Debug, Clone)]
pub struct Identity {
    /// Role the client logged in as.
    pub login_role: String,
    /// Database the session is connected to.
    pub database: String,
    /// Client's address and port.
    pub client_addr: String,
}

/// Records queued for the writer before new ones are dropped (and counted).
const QUEUE: usize = 8192;

/// Shared between the senders and the writer thread.
struct State {
    /// The last record could not be written (or queued).
    failing: AtomicBool,
    /// `audit.on_failure: block`.
    block: AtomicBool,
}

/// Handle on the audit log: queues records for its writer thread and reports whether writes are failing.
pub struct AuditLog {
    tx: SyncSender<Cmd>,
    state: Arc<State>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

#[derive(Serialize)]
struct Record<'a> {
    time: String,
    login_role: &'a str,
    client_addr: &'a str,
    database: &'a str,
    tables: &'a [String],
    columns: &'a [String],
    searched: bool,
    decrypted: bool,
    command: &'a str,
    rows: u64,
    outcome: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    sqlstate: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
}

fn settings(path: &Path, cfg: &Audit) -> Settings {
    Settings {
        path: path.to_path_buf(),
        max_bytes: cfg.max_bytes.unwrap_or(100 << 20),
        keep: cfg.keep.unwrap_or(5),
    }
}

impl AuditLog {
    /// Open `path` (creating it and its directory) and start the writer.
    pub fn open(path: &Path, cfg: &Audit) -> std::io::Result<AuditLog> {
        let (file, len) = writer::open_append(path)?;
        let state = Arc::new(State {
            failing: AtomicBool::new(false),
            block: AtomicBool::new(cfg.on_failure == AuditOnFailure::Block),
        });
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        let w = Writer::new(settings(path, cfg), file, len, state.clone());
        let thread = std::thread::Builder::new()
            .name("pgveil-audit".into())
            .spawn(move || w.run(rx))?;
        Ok(AuditLog {
            tx,
            state,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Check that a reload's `audit.path` can be opened, without
    /// changing anything.
    pub fn check_path(path: &Path) -> std::io::Result<()> {
        writer::open_append(path).map(drop)
    }

    /// `audit.on_failure: block` and records cannot be written now:
    /// decryption must be refused.
    pub fn refuses_decryption(&self) -> bool {
        self.state.block.load(Ordering::Acquire) && self.state.failing.load(Ordering::Acquire)
    }

    /// Whether the last record could not be written.
    pub fn is_failing(&self) -> bool {
        self.state.failing.load(Ordering::Acquire)
    }

    /// Reopen the file (SIGHUP: logrotate renamed it).
    pub fn reopen(&self) {
        self.send(Cmd::Reopen);
    }

    /// A reload's settings (path, rotation, `on_failure`); the file is
    /// reopened.
    pub fn reconfigure(&self, path: &Path, cfg: &Audit) {
        self.state
            .block
            .store(cfg.on_failure == AuditOnFailure::Block, Ordering::Release);
        self.send(Cmd::Reconfigure(settings(path, cfg)));
    }

    /// Wait until every record sent so far is written.
    pub fn flush(&self) {
        let (ack, done) = std::sync::mpsc::channel();
        if self.send_blocking(Cmd::Flush(ack)) {
            let _ = done.recv();
        }
    }

    /// Write what is queued and stop the writer (at shutdown; records
    /// sent after it are counted as lost).
    pub fn close(&self) {
        self.send_blocking(Cmd::Stop);
        if let Some(t) = self.thread.lock().expect("audit thread").take() {
            let _ = t.join();
        }
    }

    /// Queue a command without waiting; a full queue loses a record.
    fn send(&self, cmd: Cmd) {
        match self.tx.try_send(cmd) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                metrics::counter!("pgveil_audit_errors_total").increment(1);
                if !self.state.failing.swap(true, Ordering::AcqRel) {
                    tracing::error!(
                        "audit log queue is full (the disk is too slow?): records are being lost"
                    );
                }
            }
        }
    }

    /// Queue a command, waiting for room (never from an async worker).
    fn send_blocking(&self, cmd: Cmd) -> bool {
        self.tx.send(cmd).is_ok()
    }

    /// A statement that read or searched protected data.
    pub fn record(&self, id: &Identity, info: &AuditInfo, command: &str, rows: u64, outcome: &str) {
        self.write(&Record {
            time: now(),
            login_role: &id.login_role,
            client_addr: &id.client_addr,
            database: &id.database,
            tables: &info.tables,
            columns: &info.columns,
            searched: info.searched,
            decrypted: info.decrypted,
            command,
            rows,
            outcome,
            sqlstate: None,
            reason: None,
        });
    }

    /// A statement pgveil refused. `reason` names tables and columns only.
    pub fn rejected(&self, id: &Identity, sqlstate: &str, reason: &str) {
        self.write(&Record {
            time: now(),
            login_role: &id.login_role,
            client_addr: &id.client_addr,
            database: &id.database,
            tables: &[],
            columns: &[],
            searched: false,
            decrypted: false,
            command: "",
            rows: 0,
            outcome: "rejected",
            sqlstate: Some(sqlstate),
            reason: Some(reason),
        });
    }

    fn write(&self, r: &Record<'_>) {
        let Ok(mut line) = serde_json::to_vec(r) else {
            return;
        };
        line.push(b'\n');
        self.send(Cmd::Line(line));
    }
}

/// RFC 3339 UTC timestamp with milliseconds.
fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_json_lines_and_rotates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let cfg = Audit {
            path: crate::yaml::EnvString(path.display().to_string()),
            max_bytes: Some(300),
            keep: Some(2),
            on_failure: AuditOnFailure::Continue,
        };
        let log = AuditLog::open(&path, &cfg).unwrap();
        let id = Identity {
            login_role: "app".into(),
            database: "db".into(),
            client_addr: "127.0.0.1:5".into(),
        };
        let info = AuditInfo {
            tables: vec!["public.users".into()],
            columns: vec!["public.users.email".into()],
            searched: true,
            decrypted: true,
        };
        for _ in 0..5 {
            log.record(&id, &info, "SELECT 1", 1, "ok");
        }
        log.rejected(&id, "42501", "no");
        log.flush();
        let text = std::fs::read_to_string(&path).unwrap();
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(v["login_role"], "app");
        }
        assert!(dir.path().join("audit.jsonl.1").exists());
        assert!(!dir.path().join("audit.jsonl.3").exists());
    }
}
