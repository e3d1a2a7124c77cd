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

use std::io::IsTerminal;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_postgres::Client;
use tokio_postgres::types::ToSql;

use crate::config::Config;
use crate::crypto::envelope;
use crate::crypto::{PgType, Storage};
use crate::keys::{KeyError, KeyManager};
use crate::policy::catalog::{CATALOG_QUERY, Catalog, ProtectedAttr};
use crate::policy::{Policy, TablePolicy};
use crate::seal::{ValueCrypto, envelope_to_stored_binary, stored_to_envelope};
use crate::sql::quote_ident;

use super::db;
use super::rotate::KeyStates;

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

/// Counters of one table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
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
    pub elapsed: Duration,
}

impl Summary {
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

/// The policy, the crypto bridge and the key manager, built from a config
/// the same way the proxy builds them.
pub struct Setup {
    pub policy: Arc<Policy>,
    pub crypto: Arc<ValueCrypto>,
}

/// Load the policy and keys of `config` (as `crate::engine::build` does).
pub async fn setup(config: &Config) -> Result<Setup, String> {
    let Some(policy_path) = config.policy_path() else {
        return Err(format!(
            "{}: no `policy:` configured: add `policy: <file>`",
            config.path.display()
        ));
    };
    let policy = Policy::load(&policy_path).map_err(|e| e.to_string())?;
    let keys = key_manager(config).await?;
    let kc = config.keys.as_ref().expect("checked by key_manager");
    let bidx_root = match &kc.blind_index_key {
        Some(r) => Some(
            crate::keys::blind_index_root(r, &config.base_dir)
                .map_err(|e| format!("keys.blind_index_key: {e}"))?,
        ),
        None => None,
    };
    Ok(Setup {
        policy: Arc::new(policy),
        crypto: Arc::new(ValueCrypto::new(keys, bidx_root)),
    })
}

/// The key manager of `config` (keystore + master-key provider).
pub async fn key_manager(config: &Config) -> Result<KeyManager, String> {
    let Some(keys) = &config.keys else {
        return Err(format!(
            "{}: `keys:` is missing: add keys.provider, its master keys and keys.keystore",
            config.path.display()
        ));
    };
    KeyManager::from_config(keys, &config.base_dir)
        .await
        .map_err(|e| format!("keys: {e}"))
}

/// The policy tables selected by `--table`.
pub fn select_tables<'p>(
    policy: &'p Policy,
    table: Option<&str>,
) -> Result<Vec<&'p TablePolicy>, String> {
    let Some(name) = table else {
        return Ok(policy.tables.iter().collect());
    };
    let found: Vec<&TablePolicy> = match name.split_once('.') {
        Some((s, t)) => policy.table(s, t).into_iter().collect(),
        None => policy.tables.iter().filter(|t| t.table == name).collect(),
    };
    match found.len() {
        1 => Ok(found),
        0 => Err(format!(
            "--table {name}: not a protected table of the policy (protected: {})",
            policy
                .tables
                .iter()
                .map(|t| t.qualified())
                .collect::<Vec<_>>()
                .join(", ")
        )),
        _ => Err(format!(
            "--table {name} is ambiguous: write it as schema.table ({})",
            found
                .iter()
                .map(|t| t.qualified())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// Read the catalog of the policy's tables through `client`.
pub async fn load_catalog(policy: &Policy, client: &Client) -> Result<Catalog, String> {
    let names = Catalog::query_param(policy);
    let rows = client
        .query(CATALOG_QUERY.as_str(), &[&names])
        .await
        .map_err(|e| format!("cannot read the database catalog: {}", db::describe(&e)))?;
    let rows: Vec<Vec<Option<String>>> = rows
        .iter()
        .map(|r| {
            (0..r.len())
                .map(|i| r.get::<_, Option<String>>(i))
                .collect()
        })
        .collect();
    Ok(Catalog::from_rows(policy, rows))
}

/// Run `encrypt` or `rotate` over the selected tables. Returns one summary
/// per table; an `Err` is a problem that stopped the run (bad table, no
/// primary key, lost connection…). Rows that failed are in the summaries.
pub async fn run(
    setup: &Setup,
    url: &str,
    opts: &Options,
    out: &mut dyn FnMut(&Summary),
) -> Result<Vec<Summary>, String> {
    let client = connect_worker(url, opts.mode).await?;
    let catalog = load_catalog(&setup.policy, &client).await?;
    let tables = select_tables(&setup.policy, opts.table.as_deref())?;
    let mut summaries = vec![];
    for t in tables {
        let plan = Arc::new(TablePlan::new(t, &catalog, &client).await?);
        let s = plan
            .run(&client, url, &setup.crypto, opts)
            .await
            .map_err(|e| format!("{}: {e}", t.qualified()))?;
        out(&s);
        summaries.push(s);
    }
    Ok(summaries)
}

/// A connection for one worker, with the session settings the backfill
/// relies on (ISO dates for the text form of plaintext values).
async fn connect_worker(url: &str, mode: Mode) -> Result<Client, String> {
    let client = db::connect(url).await?;
    client
        .batch_execute(&format!(
            "SET application_name = '{}'; SET DateStyle = 'ISO, MDY'; SET IntervalStyle = 'postgres'",
            mode.command()
        ))
        .await
        .map_err(|e| db::describe(&e))?;
    Ok(client)
}

/// One protected column with the positions of its values in the SELECT.
struct ColPlan {
    attr: ProtectedAttr,
    bidx: Option<String>,
    next: Option<String>,
}

/// The statements and layout for one table.
struct TablePlan {
    name: String,
    pk: Vec<(String, String)>,
    tenant: Option<String>,
    cols: Vec<ColPlan>,
    /// `SELECT … FROM t AS t` (add a WHERE on the key range).
    select: String,
    /// `ORDER BY` list (qualified key columns).
    order: String,
    update: String,
    estimate: u64,
}

impl TablePlan {
    async fn new(t: &TablePolicy, catalog: &Catalog, client: &Client) -> Result<TablePlan, String> {
        let name = t.qualified();
        let Some(rel) = catalog.relation(&t.schema, &t.table) else {
            return Err(format!(
                "{name}: the table does not exist in this database (or this role cannot see it)"
            ));
        };
        if rel.is_view() {
            return Err(format!(
                "{name} is a view: list and encrypt the base table instead"
            ));
        }
        let mut cols = vec![];
        for c in &t.columns {
            let attr = rel
                .columns
                .iter()
                .find(|x| x.1 == c.name)
                .and_then(|x| catalog.protected_attr(rel.oid, x.0))
                .ok_or_else(|| {
                    format!(
                        "{name}.{}: the column is missing or not bytea/text: run `pgveil policy check --database …` for the fix",
                        c.name
                    )
                })?;
            let has = |col: &str| rel.columns.iter().any(|x| x.1 == col);
            let (bidx, next) = match &c.blind_index {
                Some(b) => {
                    for col in std::iter::once(&b.column).chain(b.next.iter()) {
                        if !has(col) {
                            return Err(format!(
                                "{name}.{col}: blind-index column of {} does not exist: run `pgveil policy check --database …` for the fix",
                                c.name
                            ));
                        }
                    }
                    (Some(b.column.clone()), b.next.clone())
                }
                None => (None, None),
            };
            cols.push(ColPlan {
                attr: attr.clone(),
                bidx,
                next,
            });
        }
        if let Some(tc) = &t.tenant
            && !rel.columns.iter().any(|x| &x.1 == tc)
        {
            return Err(format!("{name}.{tc}: the tenant column does not exist"));
        }
        let qt = format!("{}.{}", quote_ident(&t.schema), quote_ident(&t.table));
        let pk = primary_key(client, rel.oid).await?;
        if pk.is_empty() {
            return Err(format!(
                "{name} has no primary key: {} walks tables in primary-key order to be resumable; \
                 add one (ALTER TABLE {qt} ADD PRIMARY KEY (…)) and run it again",
                "pgveil encrypt/rotate"
            ));
        }
        // SELECT list: pk::text…, tenant::text, then per column: value,
        // bidx IS NULL, next IS NULL.
        let mut sel: Vec<String> = pk
            .iter()
            .map(|(c, _)| format!("{}::text", quote_ident(c)))
            .collect();
        if let Some(tc) = &t.tenant {
            sel.push(format!("{}::text", quote_ident(tc)));
        }
        for c in &cols {
            sel.push(quote_ident(&c.attr.column.column));
            for b in [&c.bidx, &c.next] {
                sel.push(match b {
                    Some(b) => format!("{} IS NULL", quote_ident(b)),
                    None => "false".into(),
                });
            }
        }
        // Qualified, so that ORDER BY names the column, not the `::text`
        // output column of the same name.
        let order: Vec<String> = pk
            .iter()
            .map(|(c, _)| format!("t.{}", quote_ident(c)))
            .collect();
        let order = order.join(", ");
        let base = format!("SELECT {} FROM {qt} AS t", sel.join(", "));
        // UPDATE … FROM unnest(pk text[]…, value[], bidx bytea[], next bytea[]…)
        let mut arrays = vec![];
        let mut names = vec![];
        let mut sets = vec![];
        let mut n = 0;
        let mut param = |ty: &str| {
            n += 1;
            format!("${n}::{ty}[]")
        };
        for (i, _) in pk.iter().enumerate() {
            arrays.push(param("text"));
            names.push(format!("k{i}"));
        }
        for (i, c) in cols.iter().enumerate() {
            let vty = match c.attr.storage {
                Storage::Bytea => "bytea",
                Storage::Text => "text",
            };
            arrays.push(param(vty));
            names.push(format!("v{i}"));
            let qc = quote_ident(&c.attr.column.column);
            sets.push(format!("{qc} = coalesce(v.v{i}, t.{qc})"));
            for (j, b) in [&c.bidx, &c.next].into_iter().enumerate() {
                arrays.push(param("bytea"));
                names.push(format!("b{i}_{j}"));
                if let Some(b) = b {
                    let qb = quote_ident(b);
                    sets.push(format!("{qb} = coalesce(v.b{i}_{j}, t.{qb})"));
                }
            }
        }
        let wher: Vec<String> = pk
            .iter()
            .enumerate()
            .map(|(i, (c, ty))| format!("t.{} = v.k{i}::{ty}", quote_ident(c)))
            .collect();
        let update = format!(
            "UPDATE {qt} AS t SET {} FROM unnest({}) AS v({}) WHERE {}",
            sets.join(", "),
            arrays.join(", "),
            names.join(", "),
            wher.join(" AND ")
        );
        let estimate = estimate_rows(client, rel.oid, &qt).await;
        Ok(TablePlan {
            name,
            pk,
            tenant: t.tenant.clone(),
            cols,
            select: base,
            order,
            update,
            estimate,
        })
    }

    /// `(k1, k2) > ($n::text::type1, …)`-style comparison of the key with
    /// parameters starting at `$first`.
    fn key_cmp(&self, op: &str, first: usize) -> String {
        let params: Vec<String> = self
            .pk
            .iter()
            .enumerate()
            .map(|(i, (_, ty))| format!("${}::text::{ty}", first + i))
            .collect();
        format!("({}) {op} ({})", self.order, params.join(", "))
    }

    /// The last key of the batch after `lo` (`None` when fewer than
    /// `batch` rows remain). An index-only walk, no locks.
    async fn next_bound(
        &self,
        client: &Client,
        lo: Option<&[String]>,
        batch: usize,
    ) -> Result<Option<Vec<String>>, String> {
        let keys: Vec<String> = self
            .pk
            .iter()
            .map(|(c, _)| format!("t.{}::text", quote_ident(c)))
            .collect();
        let from = self.select.split_once(" FROM ").map(|x| x.1).unwrap_or("");
        let mut sql = format!("SELECT {} FROM {from}", keys.join(", "));
        let mut p: Vec<&(dyn ToSql + Sync)> = vec![];
        if let Some(lo) = lo {
            sql += &format!(" WHERE {}", self.key_cmp(">", 1));
            p.extend(lo.iter().map(|k| k as &(dyn ToSql + Sync)));
        }
        let offset = (batch as i64 - 1).max(0);
        sql += &format!(" ORDER BY {} OFFSET ${} LIMIT 1", self.order, p.len() + 1);
        p.push(&offset);
        let row = client
            .query_opt(&sql, &p)
            .await
            .map_err(|e| db::describe(&e))?;
        Ok(row.map(|r| {
            (0..self.pk.len())
                .map(|i| r.get::<_, Option<String>>(i).unwrap_or_default())
                .collect()
        }))
    }

    /// Walk the table: this task finds batch boundaries (cheap key-only
    /// queries) and `jobs` workers, each on its own connection, process the
    /// batches as short transactions in parallel.
    async fn run(
        self: Arc<Self>,
        client: &Client,
        url: &str,
        crypto: &Arc<ValueCrypto>,
        opts: &Options,
    ) -> Result<Summary, String> {
        let started = Instant::now();
        let mut sum = Summary {
            table: self.name.clone(),
            ..Summary::default()
        };
        let progress = Progress::new(&self.name, self.estimate, opts.progress_bar);
        let jobs = opts.jobs.max(1);
        let batch = opts.batch.max(1);
        type Range = (Option<Vec<String>>, Option<Vec<String>>);
        let (range_tx, range_rx) = tokio::sync::mpsc::channel::<Range>(jobs * 2);
        let range_rx = Arc::new(tokio::sync::Mutex::new(range_rx));
        let (done_tx, mut done_rx) =
            tokio::sync::mpsc::unbounded_channel::<Result<Summary, String>>();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut workers = vec![];
        for _ in 0..jobs {
            let (plan, crypto, url, mode) =
                (self.clone(), crypto.clone(), url.to_string(), opts.mode);
            let (rx, tx, stop) = (range_rx.clone(), done_tx.clone(), stop.clone());
            workers.push(tokio::spawn(async move {
                let client = match connect_worker(&url, mode).await {
                    Ok(c) => c,
                    Err(e) => {
                        stop.store(true, std::sync::atomic::Ordering::Relaxed);
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                let mut states = KeyStates::default();
                loop {
                    let next = rx.lock().await.recv().await;
                    let Some((lo, hi)) = next else { break };
                    let r = plan
                        .batch_with_retries(&client, &crypto, mode, &mut states, lo, hi)
                        .await;
                    let failed = r.is_err();
                    let _ = tx.send(r);
                    if failed {
                        stop.store(true, std::sync::atomic::Ordering::Relaxed);
                        break;
                    }
                }
            }));
        }
        drop(done_tx);
        let producer = {
            // Moved in: dropping it at the end tells the workers to finish.
            let range_tx = range_tx;
            let (plan, stop) = (&self, &stop);
            async move {
                let mut lo: Option<Vec<String>> = None;
                loop {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break Ok(());
                    }
                    let hi = plan.next_bound(client, lo.as_deref(), batch).await?;
                    let last = hi.is_none();
                    if range_tx.send((lo.take(), hi.clone())).await.is_err() || last {
                        break Ok(());
                    }
                    lo = hi;
                }
            }
        };
        let collector = async {
            let mut err = None;
            while let Some(r) = done_rx.recv().await {
                match r {
                    Ok(b) => {
                        let n = b.scanned;
                        merge(&mut sum, b);
                        progress.advance(n, &sum);
                    }
                    Err(e) => {
                        err.get_or_insert(e);
                    }
                }
            }
            err
        };
        let (produced, failed): (Result<(), String>, Option<String>) = tokio::join!(
            async {
                let r = producer.await;
                if r.is_err() {
                    stop.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                r
            },
            collector
        );
        // A worker that panicked sent nothing for its batch: the run failed,
        // whatever the others did.
        let mut panicked = None;
        for w in workers {
            if let Err(e) = w.await {
                panicked.get_or_insert(e);
            }
        }
        progress.finish();
        produced?;
        if let Some(e) = failed {
            return Err(e);
        }
        if let Some(e) = panicked {
            return Err(format!(
                "{}: a worker failed ({e}) after {} row(s) were scanned: nothing is lost (each batch is its own transaction); run the command again, and report the failure if it repeats",
                self.name, sum.scanned
            ));
        }
        sum.elapsed = started.elapsed();
        Ok(sum)
    }

    async fn batch_with_retries(
        &self,
        client: &Client,
        crypto: &ValueCrypto,
        mode: Mode,
        states: &mut KeyStates,
        lo: Option<Vec<String>>,
        hi: Option<Vec<String>>,
    ) -> Result<Summary, String> {
        if mode == Mode::Rotate && states.is_empty() {
            states.refresh(&crypto.keys).await?;
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut bsum = Summary::default();
            match self
                .batch(
                    client,
                    crypto,
                    mode,
                    states,
                    lo.as_deref(),
                    hi.as_deref(),
                    &mut bsum,
                )
                .await
            {
                Ok(()) => return Ok(bsum),
                Err(BatchError::Retry(e)) if attempt < 5 => {
                    tracing::info!(table = %self.name, error = %e, "batch conflicted with another transaction: retrying");
                    let _ = client.batch_execute("ROLLBACK").await;
                    tokio::time::sleep(Duration::from_millis(50 * attempt)).await;
                }
                Err(BatchError::Retry(e) | BatchError::Fatal(e)) => {
                    let _ = client.batch_execute("ROLLBACK").await;
                    return Err(e);
                }
            }
        }
    }

    /// One transaction: lock the rows with key in (lo, hi], encrypt, write.
    #[allow(clippy::too_many_arguments)]
    async fn batch(
        &self,
        client: &Client,
        crypto: &ValueCrypto,
        mode: Mode,
        states: &mut KeyStates,
        lo: Option<&[String]>,
        hi: Option<&[String]>,
        sum: &mut Summary,
    ) -> Result<(), BatchError> {
        let mut sql = self.select.clone();
        let mut conds = vec![];
        let mut p: Vec<&(dyn ToSql + Sync)> = vec![];
        if let Some(lo) = lo {
            conds.push(self.key_cmp(">", p.len() + 1));
            p.extend(lo.iter().map(|k| k as &(dyn ToSql + Sync)));
        }
        if let Some(hi) = hi {
            conds.push(self.key_cmp("<=", p.len() + 1));
            p.extend(hi.iter().map(|k| k as &(dyn ToSql + Sync)));
        }
        if !conds.is_empty() {
            sql += &format!(" WHERE {}", conds.join(" AND "));
        }
        sql += &format!(" ORDER BY {} FOR UPDATE", self.order);
        client.batch_execute("BEGIN").await.map_err(classify)?;
        let rows = client.query(&sql, &p).await.map_err(classify)?;
        let npk = self.pk.len();
        let base = npk + usize::from(self.tenant.is_some());
        let mut upd = Update::new(npk, &self.cols);
        for row in &rows {
            sum.scanned += 1;
            let keys: Vec<String> = (0..npk)
                .map(|i| row.get::<_, Option<String>>(i).unwrap_or_default())
                .collect();
            let tenant: Option<String> = self
                .tenant
                .as_ref()
                .and_then(|_| row.get::<_, Option<String>>(npk));
            let outcome = self
                .row(crypto, mode, states, row, base, tenant.as_deref())
                .await;
            match outcome {
                Err(RowFailure { column, reason }) => {
                    sum.failed += 1;
                    sum.failures.push(format!(
                        "{} {}: {column}: {reason}",
                        self.name,
                        pk_text(&self.pk, &keys)
                    ));
                }
                Ok(ch) => {
                    sum.shredded += ch.shredded;
                    if ch.values_encrypted + ch.values_reencrypted > 0 {
                        sum.encrypted += 1;
                    } else if ch.indexes > 0 {
                        sum.indexed += 1;
                    } else {
                        sum.skipped += 1;
                    }
                    sum.values_encrypted += ch.values_encrypted;
                    sum.values_reencrypted += ch.values_reencrypted;
                    sum.indexes_filled += ch.indexes;
                    if ch.changed() {
                        upd.push(&keys, ch);
                    }
                }
            }
        }
        if upd.rows > 0 {
            let params = upd.params();
            let n = client
                .execute(self.update.as_str(), &params)
                .await
                .map_err(classify)?;
            if n != upd.rows {
                return Err(BatchError::Fatal(format!(
                    "the UPDATE matched {n} of {} rows (is the primary key unique and unchanged?)",
                    upd.rows
                )));
            }
        }
        client.batch_execute("COMMIT").await.map_err(classify)?;
        Ok(())
    }

    /// Work out the new stored values of one row.
    async fn row(
        &self,
        crypto: &ValueCrypto,
        mode: Mode,
        states: &mut KeyStates,
        row: &tokio_postgres::Row,
        base: usize,
        tenant: Option<&str>,
    ) -> Result<RowChange, RowFailure> {
        let mut ch = RowChange {
            cols: Vec::with_capacity(self.cols.len()),
            ..RowChange::default()
        };
        if self.tenant.is_some() && tenant.is_none() {
            return Err(RowFailure {
                column: self.tenant.clone().unwrap_or_default(),
                reason: "the tenant column is NULL: set it so the values can be encrypted under that tenant's key".into(),
            });
        }
        for (i, c) in self.cols.iter().enumerate() {
            let at = base + 3 * i;
            let attr = &c.attr;
            let fail = |reason: String| RowFailure {
                column: attr.column.column.clone(),
                reason,
            };
            let stored: Option<&[u8]> = match attr.storage {
                Storage::Bytea => row.get::<_, Option<&[u8]>>(at),
                Storage::Text => row.get::<_, Option<&str>>(at).map(str::as_bytes),
            };
            let need_bidx = c.bidx.is_some() && row.get::<_, bool>(at + 1);
            let need_next = c.next.is_some() && row.get::<_, bool>(at + 2);
            let mut cc = ColChange::default();
            let Some(stored) = stored else {
                ch.cols.push(cc);
                continue;
            };
            let fmt = match attr.storage {
                Storage::Bytea => 1,
                Storage::Text => 0,
            };
            match stored_to_envelope(attr.storage, fmt, stored) {
                None => {
                    // Plaintext: its stored text form, or raw bytes for a
                    // bytea-typed value stored as bytea.
                    let pfmt = match (attr.storage, attr.policy.ty) {
                        (Storage::Bytea, PgType::Bytea) => 1,
                        _ => 0,
                    };
                    let canon = crypto
                        .canonical(attr, pfmt, stored)
                        .map_err(|e| fail(strip_prefix(e.to_string())))?;
                    let env = crypto
                        .encrypt(attr, tenant, &canon)
                        .await
                        .map_err(|e| fail(strip_prefix(e.to_string())))?;
                    cc.value = Some(envelope_to_stored_binary(attr.storage, &env));
                    ch.values_encrypted += 1;
                    if c.bidx.is_some() {
                        cc.bidx = Some(bidx(crypto, attr, false, &canon).map_err(fail)?);
                    }
                    if c.next.is_some() {
                        cc.next = Some(bidx(crypto, attr, true, &canon).map_err(fail)?);
                    }
                }
                Some(env) => {
                    let stale = mode == Mode::Rotate && {
                        let key_ref = envelope::peek_key(&env).map_err(|e| fail(e.to_string()))?;
                        states
                            .is_stale(&crypto.keys, &key_ref)
                            .await
                            .map_err(fail)?
                    };
                    if !(stale || need_bidx || need_next) {
                        ch.cols.push(cc);
                        continue;
                    }
                    let canon = match decrypt(crypto, attr, &env, fmt, stored, tenant).await {
                        Ok(p) => p,
                        Err(Decrypted::Destroyed) => {
                            ch.shredded += 1;
                            ch.cols.push(cc);
                            continue;
                        }
                        Err(Decrypted::Failed(r)) => return Err(fail(r)),
                    };
                    if stale {
                        let env = crypto
                            .encrypt(attr, tenant, &canon)
                            .await
                            .map_err(|e| fail(strip_prefix(e.to_string())))?;
                        cc.value = Some(envelope_to_stored_binary(attr.storage, &env));
                        ch.values_reencrypted += 1;
                    }
                    if need_bidx {
                        cc.bidx = Some(bidx(crypto, attr, false, &canon).map_err(fail)?);
                    }
                    if need_next {
                        cc.next = Some(bidx(crypto, attr, true, &canon).map_err(fail)?);
                    }
                }
            }
            ch.indexes += u64::from(cc.bidx.is_some()) + u64::from(cc.next.is_some());
            ch.cols.push(cc);
        }
        Ok(ch)
    }
}

fn bidx(
    crypto: &ValueCrypto,
    attr: &ProtectedAttr,
    next: bool,
    canon: &[u8],
) -> Result<Vec<u8>, String> {
    crypto
        .blind_index(attr, next, canon)
        .map(|b| b.to_vec())
        .map_err(|e| strip_prefix(e.to_string()))
}

enum Decrypted {
    Destroyed,
    Failed(String),
}

/// Decrypt an envelope read from a row; a shredded key is reported apart.
async fn decrypt(
    crypto: &ValueCrypto,
    attr: &ProtectedAttr,
    env: &[u8],
    fmt: i16,
    stored: &[u8],
    tenant: Option<&str>,
) -> Result<zeroize::Zeroizing<Vec<u8>>, Decrypted> {
    let key_ref = envelope::peek_key(env).map_err(|e| Decrypted::Failed(e.to_string()))?;
    match crypto.keys.decryption_key(&key_ref).await {
        Err(KeyError::KeyDestroyed { .. }) => return Err(Decrypted::Destroyed),
        Err(e) => return Err(Decrypted::Failed(e.to_string())),
        Ok(_) => {}
    }
    crypto
        .decrypt_stored(attr, fmt, stored, tenant)
        .await
        .map_err(|e| Decrypted::Failed(strip_prefix(e.to_string())))
}

/// `ValueError` messages start with "pgveil: " (they go to clients).
fn strip_prefix(s: String) -> String {
    match s.strip_prefix("pgveil: ") {
        Some(r) => r.to_string(),
        None => s,
    }
}

struct RowFailure {
    column: String,
    reason: String,
}

#[derive(Default)]
struct ColChange {
    value: Option<Vec<u8>>,
    bidx: Option<Vec<u8>>,
    next: Option<Vec<u8>>,
}

#[derive(Default)]
struct RowChange {
    cols: Vec<ColChange>,
    values_encrypted: u64,
    values_reencrypted: u64,
    indexes: u64,
    shredded: u64,
}

impl RowChange {
    fn changed(&self) -> bool {
        self.cols
            .iter()
            .any(|c| c.value.is_some() || c.bidx.is_some() || c.next.is_some())
    }
}

/// The arrays bound to the UPDATE.
struct Update {
    rows: u64,
    keys: Vec<Vec<String>>,
    /// Per column: text values (text storage) or bytes.
    text: Vec<Option<Vec<Option<String>>>>,
    bytes: Vec<Option<Vec<Option<Vec<u8>>>>>,
    bidx: Vec<[Vec<Option<Vec<u8>>>; 2]>,
}

impl Update {
    fn new(npk: usize, cols: &[ColPlan]) -> Update {
        Update {
            rows: 0,
            keys: vec![vec![]; npk],
            text: cols
                .iter()
                .map(|c| (c.attr.storage == Storage::Text).then(Vec::new))
                .collect(),
            bytes: cols
                .iter()
                .map(|c| (c.attr.storage == Storage::Bytea).then(Vec::new))
                .collect(),
            bidx: cols.iter().map(|_| [vec![], vec![]]).collect(),
        }
    }

    fn push(&mut self, keys: &[String], ch: RowChange) {
        self.rows += 1;
        for (k, v) in self.keys.iter_mut().zip(keys) {
            k.push(v.clone());
        }
        for (i, c) in ch.cols.into_iter().enumerate() {
            if let Some(t) = &mut self.text[i] {
                t.push(
                    c.value
                        .map(|v| String::from_utf8(v).expect("printable envelope is ASCII")),
                );
            } else if let Some(b) = &mut self.bytes[i] {
                b.push(c.value);
            }
            self.bidx[i][0].push(c.bidx);
            self.bidx[i][1].push(c.next);
        }
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        let mut p: Vec<&(dyn ToSql + Sync)> = vec![];
        for k in &self.keys {
            p.push(k);
        }
        for i in 0..self.bidx.len() {
            match (&self.text[i], &self.bytes[i]) {
                (Some(t), _) => p.push(t),
                (None, Some(b)) => p.push(b),
                (None, None) => unreachable!("every column has a storage"),
            }
            p.push(&self.bidx[i][0]);
            p.push(&self.bidx[i][1]);
        }
        p
    }
}

enum BatchError {
    /// Deadlock or serialization failure: run the batch again.
    Retry(String),
    Fatal(String),
}

fn classify(e: tokio_postgres::Error) -> BatchError {
    let retry = e
        .code()
        .is_some_and(|c| matches!(c.code(), "40P01" | "40001" | "55P03"));
    let msg = db::describe(&e);
    if retry {
        BatchError::Retry(msg)
    } else {
        BatchError::Fatal(msg)
    }
}

fn merge(into: &mut Summary, b: Summary) {
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

/// `(id)=(42)` style, like PostgreSQL's key descriptions.
fn pk_text(pk: &[(String, String)], keys: &[String]) -> String {
    let names: Vec<&str> = pk.iter().map(|(c, _)| c.as_str()).collect();
    format!("({})=({})", names.join(", "), keys.join(", "))
}

/// Primary-key columns (name, type) in key order.
async fn primary_key(client: &Client, oid: u32) -> Result<Vec<(String, String)>, String> {
    let rows = client
        .query(
            "SELECT a.attname::text, pg_catalog.format_type(a.atttypid, a.atttypmod) \
             FROM pg_catalog.pg_index i \
             JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid \
                  AND a.attnum = ANY(i.indkey::int2[]) \
             WHERE i.indrelid = $1::text::oid AND i.indisprimary \
             ORDER BY array_position(i.indkey::int2[], a.attnum)",
            &[&oid.to_string()],
        )
        .await
        .map_err(|e| db::describe(&e))?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Rows to expect: the planner's estimate, or a count when the table was
/// never analyzed.
async fn estimate_rows(client: &Client, oid: u32, qt: &str) -> u64 {
    let est = client
        .query_one(
            "SELECT reltuples::float8 FROM pg_catalog.pg_class WHERE oid = $1::text::oid",
            &[&oid.to_string()],
        )
        .await
        .ok()
        .map(|r| r.get::<_, f64>(0))
        .unwrap_or(-1.0);
    if est >= 1.0 {
        return est as u64;
    }
    client
        .query_one(&format!("SELECT count(*) FROM {qt}"), &[])
        .await
        .map(|r| r.get::<_, i64>(0) as u64)
        .unwrap_or(0)
}

/// Progress: an indicatif bar on a terminal, else a log line every 5 s.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    table: String,
    total: u64,
    started: Instant,
    last_log: std::cell::Cell<Instant>,
}

impl Progress {
    fn new(table: &str, total: u64, bar: bool) -> Progress {
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

    fn advance(&self, n: u64, sum: &Summary) {
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

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// True when progress should be drawn as a bar.
pub fn stderr_is_terminal() -> bool {
    std::io::stderr().is_terminal()
}

/// Print the summaries' failures (at most `max`, no values) and return the
/// exit code: 1 if any row failed.
pub fn report(summaries: &[Summary], max: usize) -> i32 {
    let failed: u64 = summaries.iter().map(|s| s.failed).sum();
    if failed == 0 {
        return 0;
    }
    eprintln!("{failed} row(s) failed and were left unchanged:");
    for f in summaries.iter().flat_map(|s| s.failures.iter()).take(max) {
        eprintln!("  {f}");
    }
    if failed as usize > max {
        eprintln!("  … and {} more", failed as usize - max);
    }
    eprintln!("fix those rows and run the command again (rows already done are skipped)");
    1
}

/// Helper for the CLI: load the config and run.
pub async fn command(config: &Path, url: &str, opts: Options) -> i32 {
    let cfg = match Config::load(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return 1;
        }
    };
    let setup = match setup(&cfg).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    if opts.mode == Mode::Rotate {
        match setup.crypto.keys.rewrap_all().await {
            Ok(0) => {}
            Ok(n) => println!("re-wrapped {n} data key version(s) under the current master key"),
            Err(e) => {
                eprintln!("error: re-wrapping data keys: {e}");
                return 1;
            }
        }
    }
    let res = run(&setup, url, &opts, &mut |s| println!("{s}")).await;
    match res {
        Ok(sums) => report(&sums, 100),
        Err(e) => {
            eprintln!("error: {e}");
            eprintln!("rows already processed are committed; run the command again to continue");
            1
        }
    }
}
