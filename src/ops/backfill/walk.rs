//! Walking the tables: [`run`] over the selected ones, and per table the
//! producer of batch bounds (keyset pagination), the `jobs` workers that run
//! each batch as one short transaction (retried on deadlock or serialization
//! failure), and the arrays bound to each batch's UPDATE.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_postgres::Client;
use tokio_postgres::types::ToSql;

use super::load::{Setup, load_catalog, select_tables};
use super::plan::{ColPlan, TablePlan};
use super::progress::Progress;
use super::row::{RowChange, RowFailure};
use super::summary::{Summary, merge};
use super::{Mode, Options};
use crate::crypto::Storage;
use crate::ops::db;
use crate::ops::rotate::KeyStates;
use crate::seal::ValueCrypto;
use crate::sql::quote_ident;

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

impl TablePlan {
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
        // Only the workers hold the receiving end: when every one of them
        // has ended (an error, a panic), the channel closes and a producer
        // waiting for room in it stops, instead of waiting forever for a
        // reader that will not come.
        drop(range_rx);
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

/// `(id)=(42)` style, like PostgreSQL's key descriptions.
fn pk_text(pk: &[(String, String)], keys: &[String]) -> String {
    let names: Vec<&str> = pk.iter().map(|(c, _)| c.as_str()).collect();
    format!("({})=({})", names.join(", "), keys.join(", "))
}
