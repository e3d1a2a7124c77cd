//! The catalog query and its rows. [`CATALOG_QUERY`] is for pgveil's own
//! connections (`policy check`, `encrypt`: the tables as `$1`);
//! [`Catalog::simple_query`] runs inside a client's session (settings
//! pinned, names in hex) and its rows are decoded by
//! [`Catalog::from_hex_rows`]. Both answer every column as text, one row
//! per column of every relation involved; [`relations`] reads them into
//! [`Relation`]s. What those relations mean through the policy is mapped in
//! the sibling files.

use std::collections::HashMap;
use std::sync::LazyLock;

use super::{Catalog, Relation};
use crate::crypto::types::Oid;
use crate::policy::Policy;

/// One query returning, for every protected table named in `$1`, every
/// table that inherits from one or is a partition of one (recursively),
/// every table it or they inherit from or are a partition of (upward, not
/// down again into siblings: writes and reads through an ancestor reach the
/// protected rows), and every view or materialized view that
/// (transitively) reads one of those,
/// all of its columns as plain text: `oid, attnum, schema, relname,
/// relkind, attname, format_type, viewdef, parents, reads` (`viewdef` only
/// on attnum 1 of views, `parents` — the `pg_inherits` parents as an OID
/// array literal — only on attnum 1, `reads` — every relation a view's rule
/// depends on, from `pg_depend`, as an OID array literal — only on attnum 1
/// of views).
///
/// `$1` is a `text[]` of `schema.table` names: pass
/// [`Catalog::query_param`]. This form is for pgveil's own connections
/// (`policy check`, `encrypt`); the proxy runs [`Catalog::simple_query`]
/// instead, which is immune to the client's session settings.
///
/// Every name is qualified with `pg_catalog.`, every operator is written
/// `OPERATOR(pg_catalog.…)` and temporary relations are left out, so that
/// neither the session's `search_path` nor objects it created (temporary
/// views, operators, types) change the answer.
pub static CATALOG_QUERY: LazyLock<String> = LazyLock::new(|| {
    catalog_sql(
        "pg_catalog.concat(n.nspname, '.', c.relname) OPERATOR(pg_catalog.=) ANY ($1::pg_catalog.text[])",
        false,
    )
});

/// The catalog query with `filter` selecting the protected tables; with
/// `hex`, every name and text value is returned as the hex digits of its
/// UTF-8 bytes (so the answer reads the same whatever `client_encoding`).
fn catalog_sql(filter: &str, hex: bool) -> String {
    let out = |e: &str| {
        if hex {
            format!("pg_catalog.encode(pg_catalog.convert_to({e}, 'UTF8'), 'hex')")
        } else {
            e.to_string()
        }
    };
    format!(
        "WITH RECURSIVE rels(oid, up) AS (
    SELECT c.oid, false FROM pg_catalog.pg_class c
    JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
    WHERE c.relkind OPERATOR(pg_catalog.=) ANY ('{{r,p,f,v,m}}'::pg_catalog.\"char\"[])
      AND c.relpersistence OPERATOR(pg_catalog.<>) 't'
      AND {filter}
  UNION
    SELECT x.oid, x.up FROM rels CROSS JOIN LATERAL (
        SELECT r.ev_class, false FROM pg_catalog.pg_depend d
        JOIN pg_catalog.pg_rewrite r ON r.oid OPERATOR(pg_catalog.=) d.objid
        WHERE d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass
          AND d.refobjid OPERATOR(pg_catalog.=) rels.oid
          AND d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_rewrite'::pg_catalog.regclass
          AND r.ev_class OPERATOR(pg_catalog.<>) rels.oid
      UNION ALL
        SELECT i.inhrelid, false FROM pg_catalog.pg_inherits i
        WHERE i.inhparent OPERATOR(pg_catalog.=) rels.oid AND NOT rels.up
      UNION ALL
        SELECT i.inhparent, true FROM pg_catalog.pg_inherits i
        WHERE i.inhrelid OPERATOR(pg_catalog.=) rels.oid
    ) x(oid, up)
)
SELECT c.oid::pg_catalog.text, a.attnum::pg_catalog.text,
       {nsp}, {rel}, c.relkind::pg_catalog.text, {att},
       {ty},
       CASE WHEN c.relkind OPERATOR(pg_catalog.=) ANY ('{{v,m}}'::pg_catalog.\"char\"[])
             AND a.attnum OPERATOR(pg_catalog.=) 1
            THEN {def} END,
       CASE WHEN a.attnum OPERATOR(pg_catalog.=) 1 THEN
         (SELECT pg_catalog.array_agg(i.inhparent ORDER BY i.inhseqno)
            FROM pg_catalog.pg_inherits i
           WHERE i.inhrelid OPERATOR(pg_catalog.=) c.oid)::pg_catalog.text END,
       CASE WHEN c.relkind OPERATOR(pg_catalog.=) ANY ('{{v,m}}'::pg_catalog.\"char\"[])
             AND a.attnum OPERATOR(pg_catalog.=) 1 THEN
         (SELECT pg_catalog.array_agg(DISTINCT d.refobjid)
            FROM pg_catalog.pg_depend d
            JOIN pg_catalog.pg_rewrite r ON r.oid OPERATOR(pg_catalog.=) d.objid
           WHERE d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_rewrite'::pg_catalog.regclass
             AND d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass
             AND r.ev_class OPERATOR(pg_catalog.=) c.oid
             AND d.refobjid OPERATOR(pg_catalog.<>) c.oid)::pg_catalog.text END
FROM (SELECT DISTINCT rels.oid FROM rels) rels
JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) rels.oid
JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
JOIN pg_catalog.pg_attribute a ON a.attrelid OPERATOR(pg_catalog.=) c.oid
 AND a.attnum OPERATOR(pg_catalog.>) 0 AND NOT a.attisdropped
WHERE c.relpersistence OPERATOR(pg_catalog.<>) 't'
ORDER BY c.oid, a.attnum",
        nsp = out("n.nspname::pg_catalog.text"),
        rel = out("c.relname::pg_catalog.text"),
        att = out("a.attname::pg_catalog.text"),
        ty = out("pg_catalog.format_type(a.atttypid, a.atttypmod)"),
        def = out("pg_catalog.pg_get_viewdef(c.oid)"),
    )
}

/// Session settings pinned for the catalog query when it runs inside a
/// client's session (simple protocol: one implicit transaction, so `SET
/// LOCAL` ends with it). With `search_path` = `pg_catalog, pg_temp`,
/// `pg_get_viewdef` qualifies every relation outside `pg_catalog` with its
/// schema, so view definitions do not depend on the client's path either.
const PIN_SESSION: &str = "SET LOCAL search_path = pg_catalog, pg_temp; \
SET LOCAL statement_timeout = 0; SET LOCAL lock_timeout = 0; \
SET LOCAL quote_all_identifiers = off; ";

impl Catalog {
    /// The `$1` of [`CATALOG_QUERY`]: `schema.table` of every protected table.
    pub fn query_param(policy: &Policy) -> Vec<String> {
        policy.tables.iter().map(|t| t.qualified()).collect()
    }

    /// The catalog query for the simple-query protocol, run inside a
    /// client's session: session settings that change how it reads are
    /// pinned with `SET LOCAL` for its implicit transaction, the table names
    /// are inlined as hex (the text is pure ASCII, so `client_encoding` and
    /// `standard_conforming_strings` cannot change it), and the answer's
    /// names are hex too. Build a catalog from its rows with
    /// [`Catalog::from_hex_rows`].
    pub fn simple_query(policy: &Policy) -> String {
        let hex_name = |s: &str| hex::encode(s.as_bytes());
        let items: Vec<String> = policy
            .tables
            .iter()
            .map(|t| format!("{}.{}", hex_name(&t.schema), hex_name(&t.table)))
            .collect();
        let filter = format!(
            "pg_catalog.concat(pg_catalog.encode(pg_catalog.convert_to(n.nspname::pg_catalog.text, 'UTF8'), 'hex'), '.', \
             pg_catalog.encode(pg_catalog.convert_to(c.relname::pg_catalog.text, 'UTF8'), 'hex')) \
             OPERATOR(pg_catalog.=) ANY ('{{{}}}'::pg_catalog.text[])",
            items.join(",")
        );
        format!("{PIN_SESSION}{}", catalog_sql(&filter, true))
    }

    /// [`Catalog::from_rows`] for the rows of [`Catalog::simple_query`]:
    /// the name and text columns arrive as hex of their UTF-8 bytes. A row
    /// that does not decode is dropped (its relation then looks absent, and
    /// statements on it are refused).
    pub fn from_hex_rows(policy: &Policy, rows: Vec<Vec<Option<String>>>) -> Catalog {
        let decode = |v: Option<String>| -> Result<Option<String>, ()> {
            match v {
                None => Ok(None),
                Some(h) => {
                    let b = hex::decode(h.as_bytes()).map_err(|_| ())?;
                    String::from_utf8(b).map(Some).map_err(|_| ())
                }
            }
        };
        let rows = rows
            .into_iter()
            .filter_map(|row| {
                row.into_iter()
                    .enumerate()
                    .map(|(i, v)| match i {
                        2 | 3 | 5 | 6 | 7 => decode(v),
                        _ => Ok(v),
                    })
                    .collect::<Result<Vec<_>, ()>>()
                    .ok()
            })
            .collect();
        Catalog::from_rows(policy, rows)
    }
}

/// Relations by (schema, name).
type Relations = HashMap<(String, String), Relation>;

/// The relations in the rows of the catalog query (one row per column), by
/// (schema, name), and their keys in the order the rows first name them.
/// A row whose OID, attnum, names or kind are missing or unreadable is
/// skipped.
pub(super) fn relations(rows: Vec<Vec<Option<String>>>) -> (Relations, Vec<(String, String)>) {
    let mut relations: Relations = HashMap::new();
    let mut order: Vec<(String, String)> = vec![];
    for row in rows {
        let get = |i: usize| row.get(i).cloned().flatten();
        let (Some(oid), Some(attnum), Some(schema), Some(name), Some(kind), Some(att), ty) = (
            get(0).and_then(|s| s.parse::<Oid>().ok()),
            get(1).and_then(|s| s.parse::<i16>().ok()),
            get(2),
            get(3),
            get(4).and_then(|s| s.chars().next()),
            get(5),
            get(6).unwrap_or_default(),
        ) else {
            continue;
        };
        let key = (schema.clone(), name.clone());
        let rel = relations.entry(key.clone()).or_insert_with(|| {
            order.push(key.clone());
            Relation {
                oid,
                schema,
                name,
                kind,
                columns: vec![],
                viewdef: None,
                parents: vec![],
                reads: vec![],
            }
        });
        rel.columns.push((attnum, att, ty));
        if let Some(def) = get(7) {
            rel.viewdef = Some(def);
        }
        let oids = |p: String| -> Vec<Oid> {
            p.trim_matches(|c| c == '{' || c == '}')
                .split(',')
                .filter_map(|x| x.trim().parse::<Oid>().ok())
                .collect()
        };
        if let Some(p) = get(8) {
            rel.parents = oids(p);
        }
        if let Some(p) = get(9) {
            rel.reads = oids(p);
        }
    }
    (relations, order)
}
