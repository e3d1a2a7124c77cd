//! The audit log's writer thread: owns the file, writes each record with
//! one `write` (flushed to the OS), rotates by size, reopens on request
//! (SIGHUP, for logrotate) and after a failure, and keeps the log's
//! `failing` flag, which `audit.on_failure: block` turns into refused
//! decryption. Sessions never touch the file: they hand records over a
//! bounded channel, so a slow disk cannot stall the async workers.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, Sender};
use std::time::{Duration, Instant};

use super::State;

/// Where and how records are written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The log file; rotated copies are `path.1`, `path.2`, …
    pub path: PathBuf,
    /// Rotate before a write would take the file past this size.
    pub max_bytes: u64,
    /// Rotated files kept; older ones are deleted.
    pub keep: u32,
}

/// What sessions and the reload machinery ask of the writer.
pub enum Cmd {
    /// One JSON line, newline included.
    Line(Vec<u8>),
    /// Close and reopen `path` (logrotate renamed it and sent SIGHUP).
    Reopen,
    /// New settings from a reload (then reopen).
    Reconfigure(Settings),
    /// Answer once everything sent before is written.
    Flush(Sender<()>),
    /// Stop (everything sent before is written).
    Stop,
}

/// How often the same failure is logged again while it lasts.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// The writer thread's state: the open file and its length, and the shared failure flag.
pub struct Writer {
    settings: Settings,
    file: Option<(File, u64)>,
    state: Arc<State>,
    last_complaint: Option<Instant>,
}

impl Writer {
    /// A writer appending to `file`, already `len` bytes long.
    pub fn new(settings: Settings, file: File, len: u64, state: Arc<State>) -> Writer {
        Writer {
            settings,
            file: Some((file, len)),
            state,
            last_complaint: None,
        }
    }

    /// Serve commands until told to stop (or every sender is gone).
    pub fn run(mut self, rx: Receiver<Cmd>) {
        while let Ok(cmd) = rx.recv() {
            match cmd {
                Cmd::Line(line) => self.write(&line),
                Cmd::Reopen => self.reopen(),
                Cmd::Reconfigure(s) => {
                    self.settings = s;
                    self.reopen();
                }
                Cmd::Flush(ack) => {
                    let _ = ack.send(());
                }
                Cmd::Stop => return,
            }
        }
    }

    fn write(&mut self, line: &[u8]) {
        if self.file.is_none() && !self.open() {
            self.lost("audit log cannot be opened: records are being lost");
            return;
        }
        let (_, len) = self.file.as_ref().expect("opened above");
        if *len > 0 && len + line.len() as u64 > self.settings.max_bytes {
            match rotate(&self.settings) {
                Ok(f) => self.file = Some((f, 0)),
                Err(e) => {
                    tracing::error!(error = %e, path = %self.settings.path.display(), "audit log rotation failed");
                }
            }
        }
        let (f, len) = self.file.as_mut().expect("opened above");
        match f.write_all(line).and_then(|()| f.flush()) {
            Ok(()) => {
                *len += line.len() as u64;
                if self.state.failing.swap(false, Ordering::AcqRel) {
                    tracing::warn!(path = %self.settings.path.display(), "audit log is written again");
                    self.last_complaint = None;
                }
            }
            Err(e) => {
                // Reopened at the next record: the file may be back by then.
                self.file = None;
                let e = e.to_string();
                self.lost(&format!("audit log write failed: {e}"));
            }
        }
    }

    /// A record could not be written: count it, mark the log failing, and
    /// say so (once a minute while it lasts).
    fn lost(&mut self, what: &str) {
        metrics::counter!("pgveil_audit_errors_total").increment(1);
        let first = !self.state.failing.swap(true, Ordering::AcqRel);
        if first || self.last_complaint.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
            tracing::error!(path = %self.settings.path.display(), block = self.state.block.load(Ordering::Acquire), "{what}");
            self.last_complaint = Some(Instant::now());
        }
    }

    fn reopen(&mut self) {
        self.file = None;
        if self.open() {
            tracing::info!(path = %self.settings.path.display(), "audit log reopened");
        } else {
            self.state.failing.store(true, Ordering::Release);
        }
    }

    /// Open `path` for appending; `false` (logged) if it cannot be.
    fn open(&mut self) -> bool {
        match open_append(&self.settings.path) {
            Ok((f, len)) => {
                self.file = Some((f, len));
                self.state.failing.store(false, Ordering::Release);
                true
            }
            Err(e) => {
                if self.last_complaint.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
                    tracing::error!(error = %e, path = %self.settings.path.display(), "cannot open the audit log");
                    self.last_complaint = Some(Instant::now());
                }
                false
            }
        }
    }
}

/// Open (creating it and its directory) for appending; the file's length.
pub fn open_append(path: &Path) -> std::io::Result<(File, u64)> {
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir)?;
    }
    let f = OpenOptions::new().create(true).append(true).open(path)?;
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    Ok((f, meta.len()))
}

/// `path` → `path.1` → … → `path.keep` (the oldest deleted), then a new
/// `path`.
fn rotate(s: &Settings) -> std::io::Result<File> {
    let name = |i: u32| {
        let mut p = s.path.clone().into_os_string();
        p.push(format!(".{i}"));
        PathBuf::from(p)
    };
    if s.keep > 0 {
        let _ = std::fs::remove_file(name(s.keep));
        for i in (1..s.keep).rev() {
            let _ = std::fs::rename(name(i), name(i + 1));
        }
        std::fs::rename(&s.path, name(1))?;
    } else {
        std::fs::remove_file(&s.path)?;
    }
    open_append(&s.path).map(|(f, _)| f)
}
