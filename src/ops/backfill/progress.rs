//! Progress of a table's pass: an indicatif bar when stderr is a terminal,
//! else a log line on stderr every 5 s.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use super::summary::Summary;

/// Progress: an indicatif bar on a terminal, else a log line every 5 s.
pub(super) struct Progress {
    bar: Option<indicatif::ProgressBar>,
    table: String,
    total: u64,
    started: Instant,
    last_log: std::cell::Cell<Instant>,
}

impl Progress {
    pub(super) fn new(table: &str, total: u64, bar: bool) -> Progress {
        let bar = bar.then(|| {
            let b = indicatif::ProgressBar::new(total.max(1));
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{prefix} [{bar:30}] {human_pos}/{human_len} rows  {per_sec}  ETA {eta}",
                )
                .expect("static template")
                .progress_chars("=> "),
            );
            b.set_prefix(table.to_string());
            b
        });
        Progress {
            bar,
            table: table.to_string(),
            total,
            started: Instant::now(),
            last_log: std::cell::Cell::new(Instant::now()),
        }
    }

    pub(super) fn advance(&self, n: u64, sum: &Summary) {
        if let Some(b) = &self.bar {
            if sum.scanned > b.length().unwrap_or(0) {
                b.set_length(sum.scanned);
            }
            b.inc(n);
            return;
        }
        if self.last_log.get().elapsed() < Duration::from_secs(5) {
            return;
        }
        self.last_log.set(Instant::now());
        let secs = self.started.elapsed().as_secs_f64();
        let rate = sum.scanned as f64 / secs.max(1e-3);
        let total = self.total.max(sum.scanned);
        let eta = if rate > 0.0 {
            format!("{:.0} s", (total - sum.scanned) as f64 / rate)
        } else {
            "?".into()
        };
        eprintln!(
            "{}: {}/{} rows ({:.1}%), {:.0} rows/s, ETA {eta}; encrypted {}, skipped {}, failed {}",
            self.table,
            sum.scanned,
            total,
            100.0 * sum.scanned as f64 / total.max(1) as f64,
            rate,
            sum.encrypted,
            sum.skipped,
            sum.failed
        );
    }

    pub(super) fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// True when progress should be drawn as a bar.
pub fn stderr_is_terminal() -> bool {
    std::io::stderr().is_terminal()
}
