//! The statements and row layout for one table ([`TablePlan`]): the keyed
//! `SELECT … FOR UPDATE`, the `UPDATE … FROM unnest(…)` that writes a batch
//! back, the key comparison used for pagination, and the catalog lookups
//! (primary key, row estimate) they need.

use tokio_postgres::Client;

use crate::crypto::Storage;
use crate::ops::db;
use crate::policy::TablePolicy;
use crate::policy::catalog::{Catalog, ProtectedAttr};
use crate::policy::ident::quote_ident;

/// One protected column with the positions of its values in the SELECT.
pub(super) struct ColPlan {
    pub(super) attr: ProtectedAttr,
    pub(super) bidx: Option<String>,
    pub(super) next: Option<String>,
}

/// The statements and layout for one table.
pub(super) struct TablePlan {
    pub(super) name: String,
    pub(super) pk: Vec<(String, String)>,
    pub(super) tenant: Option<String>,
    pub(super) cols: Vec<ColPlan>,
    /// `SELECT … FROM t AS t` (add a WHERE on the key range).
    pub(super) select: String,
    /// `ORDER BY` list (qualified key columns).
    pub(super) order: String,
    pub(super) update: String,
    pub(super) estimate: u64,
}

impl TablePlan {
    pub(super) async fn new(
        t: &TablePolicy,
        catalog: &Catalog,
        client: &Client,
    ) -> Result<TablePlan, String> {
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
    pub(super) fn key_cmp(&self, op: &str, first: usize) -> String {
        let params: Vec<String> = self
            .pk
            .iter()
            .enumerate()
            .map(|(i, (_, ty))| format!("${}::text::{ty}", first + i))
            .collect();
        format!("({}) {op} ({})", self.order, params.join(", "))
    }
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
