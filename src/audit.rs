//! Audit log: one JSON line per statement that decrypted or searched
//! protected data, and one per rejected statement. Names and counts only,
//! never values. Flushed per record; rotated by size (`audit.max_bytes`,
//! keeping `audit.keep` old files as `<path>.1` … `<path>.N`).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use serde::Serialize;

use crate::session::{AuditInfo, Identity};

pub struct AuditLog {
    path: PathBuf,
    max_bytes: u64,
    keep: u32,
    inner: Mutex<(File, u64)>,
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

impl AuditLog {
    pub fn open(
        path: &Path,
        max_bytes: Option<u64>,
        keep: Option<u32>,
    ) -> std::io::Result<AuditLog> {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)?;
        }
        let f = OpenOptions::new().create(true).append(true).open(path)?;
        let len = f.metadata()?.len();
        Ok(AuditLog {
            path: path.to_path_buf(),
            max_bytes: max_bytes.unwrap_or(100 << 20),
            keep: keep.unwrap_or(5),
            inner: Mutex::new((f, len)),
        })
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
        let mut g = self.inner.lock().expect("audit log");
        if g.1 + line.len() as u64 > self.max_bytes && g.1 > 0 {
            match self.rotate() {
                Ok(f) => *g = (f, 0),
                Err(e) => tracing::error!(error = %e, "audit log rotation failed"),
            }
        }
        match g.0.write_all(&line).and_then(|_| g.0.flush()) {
            Ok(()) => g.1 += line.len() as u64,
            Err(e) => {
                metrics::counter!("pgveil_audit_errors_total").increment(1);
                tracing::error!(error = %e, "audit log write failed");
            }
        }
    }

    fn rotate(&self) -> std::io::Result<File> {
        let name = |i: u32| {
            let mut p = self.path.clone().into_os_string();
            p.push(format!(".{i}"));
            PathBuf::from(p)
        };
        if self.keep > 0 {
            let _ = std::fs::remove_file(name(self.keep));
            for i in (1..self.keep).rev() {
                let _ = std::fs::rename(name(i), name(i + 1));
            }
            std::fs::rename(&self.path, name(1))?;
        } else {
            std::fs::remove_file(&self.path)?;
        }
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
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
        let log = AuditLog::open(&path, Some(300), Some(2)).unwrap();
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
        let text = std::fs::read_to_string(&path).unwrap();
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(v["login_role"], "app");
        }
        assert!(dir.path().join("audit.jsonl.1").exists());
        assert!(!dir.path().join("audit.jsonl.3").exists());
    }
}
