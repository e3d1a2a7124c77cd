//! `pgveil encrypt` (backfill) and the row pass shared with `pgveil rotate`.
//!
//! A table is walked in primary-key order with keyset pagination
//! (`WHERE (pk) > ($last) ORDER BY pk LIMIT n`). Each batch is one short
//! transaction: `SELECT … FOR UPDATE` locks the rows, pgveil encrypts in
//! memory, and one `UPDATE … FROM unnest($arrays)` writes the changed rows
//! back. A killed run leaves every batch either committed or untouched, and
//! a rerun skips what is already an envelope, so nothing is lost or
//! encrypted twice.
//!
//! Per protected value:
//! - NULL: nothing to do;
//! - plaintext: canonicalised from its stored text form (or raw bytes for a
//!   `type: bytea` column stored as bytea), encrypted under the current data
//!   key of the row's (table, tenant), blind indexes (and `next`) recomputed;
//! - an envelope: skipped; if its blind index (or `next`) is NULL, the value
//!   is decrypted to fill it; in rotate mode, re-encrypted when its data-key
//!   version is retired.
//!
//! Values, plaintext or ciphertext, never appear in messages: failures name
//! the table, the row's primary key and the column.
//!
//! Files: `load` (policy, keys, tables, catalog), `plan` (the statements
//! for one table), `walk` (batches and their workers), `row` (one row's new
//! values), `summary`, `progress`, and `cli` (the command's output).

mod cli;
mod load;
mod plan;
mod progress;
mod row;
mod summary;
mod walk;

pub use cli::{command, report};
pub use load::{Setup, key_manager, load_catalog, select_tables, setup};
pub use progress::stderr_is_terminal;
pub use summary::Summary;
pub use walk::run;

/// What a pass does besides encrypting plaintext and filling missing blind
/// indexes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `pgveil encrypt`.
    Encrypt,
    /// `pgveil rotate`: also re-encrypt values under a retired key version.
    Rotate,
}

impl Mode {
    fn command(self) -> &'static str {
        match self {
            Mode::Encrypt => "pgveil encrypt",
            Mode::Rotate => "pgveil rotate",
        }
    }
}

/// Options of one run.
#[derive(Debug, Clone)]
pub struct Options {
    pub mode: Mode,
    /// `schema.table` or an unambiguous `table`; all policy tables if `None`.
    pub table: Option<String>,
    /// Rows per transaction.
    pub batch: usize,
    /// Batches processed in parallel, each on its own connection.
    pub jobs: usize,
    /// Show a progress bar (else periodic log lines).
    pub progress_bar: bool,
}
