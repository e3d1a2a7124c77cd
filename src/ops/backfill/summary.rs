//! The counters of one table's pass ([`Summary`]), how they print, and how a
//! batch's counters add up into the table's.

use std::time::Duration;

/// Counters of one table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// The table, as `schema.table`.
    pub table: String,
    /// Rows read.
    pub scanned: u64,
    /// Rows in which at least one value was encrypted or re-encrypted.
    pub encrypted: u64,
    /// Rows in which only blind indexes were filled.
    pub indexed: u64,
    /// Rows that needed nothing.
    pub skipped: u64,
    /// Rows left unchanged because a value could not be processed.
    pub failed: u64,
    /// Values encrypted from plaintext.
    pub values_encrypted: u64,
    /// Values re-encrypted under the current key version.
    pub values_reencrypted: u64,
    /// Blind-index values written (current and `next`).
    pub indexes_filled: u64,
    /// Values under a destroyed (shredded) key: left as they are.
    pub shredded: u64,
    /// `pk=…: column: reason` for failed rows (no values).
    pub failures: Vec<String>,
    /// Wall-clock time of the pass.
    pub elapsed: Duration,
}

impl Summary {
    /// Rows read per second of `elapsed` (0 before any time passed).
    pub fn rate(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s > 0.0 {
            self.scanned as f64 / s
        } else {
            0.0
        }
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: scanned {}, encrypted {}, indexed only {}, skipped {}, failed {} rows \
             ({} values encrypted, {} re-encrypted, {} blind indexes filled",
            self.table,
            self.scanned,
            self.encrypted,
            self.indexed,
            self.skipped,
            self.failed,
            self.values_encrypted,
            self.values_reencrypted,
            self.indexes_filled,
        )?;
        if self.shredded > 0 {
            write!(
                f,
                ", {} under destroyed keys left as they are",
                self.shredded
            )?;
        }
        write!(
            f,
            ") in {:.1} s, {:.0} rows/s",
            self.elapsed.as_secs_f64(),
            self.rate()
        )
    }
}

pub(super) fn merge(into: &mut Summary, b: Summary) {
    into.scanned += b.scanned;
    into.encrypted += b.encrypted;
    into.indexed += b.indexed;
    into.skipped += b.skipped;
    into.failed += b.failed;
    into.values_encrypted += b.values_encrypted;
    into.values_reencrypted += b.values_reencrypted;
    into.indexes_filled += b.indexes_filled;
    into.shredded += b.shredded;
    into.failures.extend(b.failures);
}
