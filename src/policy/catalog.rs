//! The live catalog seen through the policy: which (table OID, attnum) pairs
//! are protected columns, blind-index columns and tenant columns, and which
//! view columns expose a protected column unchanged. The proxy runs
//! [`CATALOG_QUERY`] on its upstream connection on connect and after DDL, and
//! maps RowDescription fields (table OID, column number) through
//! [`Catalog::protected_attr`].

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::LazyLock;

use sqlparser::ast::{
    Expr, ObjectNamePart, SelectItem, SetExpr, Statement, TableFactor, TableWithJoins,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use super::ColumnRef;
use super::{ColumnPolicy, Policy};
use crate::crypto::types::{Oid, Storage};

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

/// What an inheritance child or partition of a protected table is planned
/// as: the (schema, table) of the policy table at the root of its lineage,
/// or the refusal message.
pub type ChildOf = Result<(String, String), String>;

/// A protected column as found in the catalog (also used for view columns
/// that expose one: then `oid`/`attnum` are the view's and `column` names
/// the base column).
#[derive(Debug, Clone, PartialEq)]
pub struct ProtectedAttr {
    /// The base table's column (what the envelope is bound to).
    pub column: ColumnRef,
    /// How the base column stores ciphertext.
    pub storage: Storage,
    /// The base column's policy.
    pub policy: ColumnPolicy,
    /// The base table's tenant column, if any.
    pub tenant: Option<String>,
    /// The SQL type of the tenant column (`format_type`), to canonicalise
    /// tenant ids before they select a key (`'042'` and `42` are one tenant
    /// in a `bigint` column).
    pub tenant_type: Option<String>,
}

/// A column of a view (or materialized view) over protected tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewColumn {
    pub name: String,
    /// The base-table column it exposes unchanged, when it does.
    pub base: Option<ColumnRef>,
    /// It is computed from protected data in a way pgveil cannot map to one
    /// base column (a set operation, an expression, a whole-row reference,
    /// a subquery …): it holds or depends on ciphertext, so any write,
    /// lookup or comparison through it is refused, and it reads as stored.
    pub unknown: bool,
}

/// One relation in the catalog result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub oid: Oid,
    pub schema: String,
    pub name: String,
    /// `r`, `p`, `f`, `v` or `m`.
    pub kind: char,
    /// Column names in attnum order (dropped columns omitted).
    pub columns: Vec<(i16, String, String)>,
    /// For views: `pg_get_viewdef`.
    pub viewdef: Option<String>,
    /// The relations it inherits from (`pg_inherits`, also the parent of a
    /// partition), in inheritance order.
    pub parents: Vec<Oid>,
    /// For views: every relation its definition reads (`pg_depend`), in
    /// set operations, subqueries and CTEs too.
    pub reads: Vec<Oid>,
}

impl Relation {
    pub fn is_view(&self) -> bool {
        matches!(self.kind, 'v' | 'm')
    }
    /// Column names in table order.
    pub fn column_names(&self) -> Vec<String> {
        self.columns.iter().map(|c| c.1.clone()).collect()
    }
}

/// The catalog mapped through the policy.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    /// (table or view OID, attnum) → protected column.
    pub protected: HashMap<(Oid, i16), ProtectedAttr>,
    /// (table OID, attnum) → the protected column whose blind index (current
    /// or `next`) lives there.
    pub blind_index: HashMap<(Oid, i16), ColumnRef>,
    /// (table OID, attnum) → tenant column of a protected table.
    pub tenant: HashMap<(Oid, i16), ColumnRef>,
    /// Every relation returned, by (schema, name).
    pub relations: HashMap<(String, String), Relation>,
    /// Tables that inherit from a protected table or are partitions of one
    /// (at any depth), and are not in the policy themselves: (schema, name)
    /// → the policy table they are planned as, or why they are refused.
    /// A mapped child's columns are in `protected`, `blind_index` and
    /// `tenant` under its own OID with the policy table's column (so values
    /// written through it carry the parent's associated data and decrypt
    /// when read through the parent, and the other way round).
    pub children: HashMap<(String, String), ChildOf>,
    /// Views over protected tables: (schema, name) → columns.
    pub views: HashMap<(String, String), Vec<ViewColumn>>,
    /// Views over protected tables: (schema, name) → the protected columns
    /// whose blind index the view's rows may carry (its relations' blind
    /// indexes, through views and children; every blind index of the policy
    /// when it reads a relation pgveil refuses). A column pgveil cannot map
    /// may hold any of them.
    pub view_blind_indexes: HashMap<(String, String), Vec<ColumnRef>>,
    /// Lower-cased names of protected tables and views over them (for the
    /// analyzer's fast pre-check).
    pub names: BTreeSet<String>,
    /// Mismatches between policy and schema (missing column, wrong type).
    /// The affected columns are left out of `protected`; `pgveil policy
    /// check --database` explains how to fix them.
    pub problems: Vec<String>,
}

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

    /// Look up a RowDescription field.
    pub fn protected_attr(&self, table_oid: Oid, attnum: i16) -> Option<&ProtectedAttr> {
        self.protected.get(&(table_oid, attnum))
    }

    /// The relation `schema.name`, if returned by the query.
    pub fn relation(&self, schema: &str, name: &str) -> Option<&Relation> {
        self.relations.get(&(schema.to_string(), name.to_string()))
    }

    /// Build from the rows of [`CATALOG_QUERY`] (all columns as text).
    pub fn from_rows(policy: &Policy, rows: Vec<Vec<Option<String>>>) -> Catalog {
        let mut cat = Catalog::default();
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
            let rel = cat.relations.entry(key.clone()).or_insert_with(|| {
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
        // Base tables.
        for t in &policy.tables {
            cat.names.insert(t.table.to_lowercase());
            let Some(rel) = cat.relations.get(&(t.schema.clone(), t.table.clone())) else {
                cat.problems.push(format!(
                    "table {} does not exist (or is not visible to this role)",
                    t.qualified()
                ));
                continue;
            };
            let find = |c: &str| rel.columns.iter().find(|x| x.1 == c);
            for c in &t.columns {
                let cref = ColumnRef::new(&t.schema, &t.table, &c.name);
                let Some((attnum, _, ty)) = find(&c.name) else {
                    cat.problems
                        .push(format!("protected column {cref} does not exist"));
                    continue;
                };
                let storage = match ty.as_str() {
                    "bytea" => Storage::Bytea,
                    "text" => Storage::Text,
                    other => {
                        cat.problems.push(format!(
                            "protected column {cref} is {other}: it must be bytea or text"
                        ));
                        continue;
                    }
                };
                cat.protected.insert(
                    (rel.oid, *attnum),
                    ProtectedAttr {
                        column: cref.clone(),
                        storage,
                        policy: c.clone(),
                        tenant: t.tenant.clone(),
                        tenant_type: t
                            .tenant
                            .as_ref()
                            .and_then(|tc| find(tc))
                            .map(|(_, _, ty)| ty.clone()),
                    },
                );
                if let Some(b) = &c.blind_index {
                    for bcol in std::iter::once(&b.column).chain(b.next.iter()) {
                        match find(bcol) {
                            Some((n, _, _)) => {
                                cat.blind_index.insert((rel.oid, *n), cref.clone());
                            }
                            None => cat.problems.push(format!(
                                "blind-index column {}.{}.{} does not exist",
                                t.schema, t.table, bcol
                            )),
                        }
                    }
                }
            }
            if let Some(tc) = &t.tenant {
                match find(tc) {
                    Some((n, _, _)) => {
                        cat.tenant
                            .insert((rel.oid, *n), ColumnRef::new(&t.schema, &t.table, tc));
                    }
                    None => cat.problems.push(format!(
                        "tenant column {}.{}.{} does not exist",
                        t.schema, t.table, tc
                    )),
                }
            }
        }
        cat.map_children(policy);
        cat.map_ancestors(policy);
        // Views, possibly over other views: resolve until nothing changes.
        let view_keys: Vec<(String, String)> = order
            .iter()
            .filter(|k| cat.relations[*k].is_view())
            .cloned()
            .collect();
        for _ in 0..=view_keys.len() {
            let mut changed = false;
            for k in &view_keys {
                let cols = cat.resolve_view(policy, &cat.relations[k]);
                if cat.views.get(k) != Some(&cols) {
                    cat.views.insert(k.clone(), cols);
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        for k in &view_keys {
            let b = cat.blind_indexes_read(policy, k, 0);
            cat.view_blind_indexes.insert(k.clone(), b);
        }
        for k in &view_keys {
            let rel = &cat.relations[k];
            cat.names.insert(rel.name.to_lowercase());
            let Some(cols) = cat.views.get(k) else {
                continue;
            };
            for (i, vc) in cols.iter().enumerate() {
                let Some(base) = &vc.base else { continue };
                let Some(attr) = cat.base_attr(base) else {
                    continue;
                };
                let attnum = rel.columns.get(i).map(|c| c.0).unwrap_or(i as i16 + 1);
                cat.protected.insert((rel.oid, attnum), attr);
            }
        }
        cat
    }

    /// Resolve every inheritance child or partition in the result to the
    /// policy table at the root of its lineage, and copy that table's
    /// protected, blind-index and tenant columns onto it by name. A child
    /// whose columns are not exactly the root's (names and order: `INSERT`
    /// and `COPY` without a column list depend on it), or that descends
    /// from two protected tables, is refused instead.
    fn map_children(&mut self, policy: &Policy) {
        let by_oid = self.keys_by_oid();
        let is_policy = |k: &(String, String)| policy.table(&k.0, &k.1).is_some();
        // The policy tables a relation descends from (itself if it is one).
        fn roots(
            cat: &Catalog,
            by_oid: &HashMap<Oid, (String, String)>,
            is_policy: &dyn Fn(&(String, String)) -> bool,
            key: &(String, String),
            depth: usize,
            out: &mut HashSet<(String, String)>,
        ) {
            if depth > 64 {
                return;
            }
            if is_policy(key) {
                out.insert(key.clone());
                return;
            }
            let Some(rel) = cat.relations.get(key) else {
                return;
            };
            for p in &rel.parents {
                if let Some(pk) = by_oid.get(p) {
                    roots(cat, by_oid, is_policy, pk, depth + 1, out);
                }
            }
        }
        let keys: Vec<(String, String)> = self
            .relations
            .iter()
            .filter(|(k, r)| !r.is_view() && !r.parents.is_empty() && !is_policy(k))
            .map(|(k, _)| k.clone())
            .collect();
        for key in keys {
            let mut found = HashSet::new();
            roots(self, &by_oid, &is_policy, &key, 0, &mut found);
            let child = format!("{}.{}", key.0, key.1);
            let verdict = match found.len() {
                0 => continue,
                1 => {
                    let root = found.into_iter().next().expect("one root");
                    let rq = format!("{}.{}", root.0, root.1);
                    let same = match (self.relations.get(&key), self.relations.get(&root)) {
                        (Some(c), Some(r)) => c.column_names() == r.column_names(),
                        _ => false,
                    };
                    if same {
                        Ok(root)
                    } else {
                        Err(format!(
                            "pgveil: table {child} inherits from (or is a partition of) protected table {rq} but its columns are not exactly {rq}'s, so pgveil cannot plan it as {rq}: add {child} to the policy, or give it {rq}'s columns in the same order"
                        ))
                    }
                }
                _ => {
                    let mut names: Vec<String> =
                        found.iter().map(|r| format!("{}.{}", r.0, r.1)).collect();
                    names.sort();
                    Err(format!(
                        "pgveil: table {child} inherits from several protected tables ({}): add {child} to the policy",
                        names.join(" and ")
                    ))
                }
            };
            if let Ok(root) = &verdict {
                let (Some(c), Some(r)) = (self.relations.get(&key), self.relations.get(root))
                else {
                    continue;
                };
                let (coid, roid) = (c.oid, r.oid);
                let pairs: Vec<(i16, i16)> = c
                    .columns
                    .iter()
                    .filter_map(|(ca, name, _)| {
                        r.columns
                            .iter()
                            .find(|(_, rn, _)| rn == name)
                            .map(|(ra, _, _)| (*ca, *ra))
                    })
                    .collect();
                for (ca, ra) in pairs {
                    if let Some(a) = self.protected.get(&(roid, ra)).cloned() {
                        self.protected.insert((coid, ca), a);
                    }
                    if let Some(b) = self.blind_index.get(&(roid, ra)).cloned() {
                        self.blind_index.insert((coid, ca), b);
                    }
                    if let Some(t) = self.tenant.get(&(roid, ra)).cloned() {
                        self.tenant.insert((coid, ca), t);
                    }
                }
            }
            self.names.insert(key.1.to_lowercase());
            self.children.insert(key, verdict);
        }
    }

    /// Refuse every ancestor of a protected relation (the tables a policy
    /// table or one of its children inherits from or is a partition of, at
    /// any depth). Rows written through an ancestor are routed into the
    /// protected partition (`INSERT`), or reached in it (`UPDATE`, `DELETE`,
    /// `MERGE` without `ONLY`), and reads through it show the protected
    /// rows' ciphertext and blind indexes under the ancestor's own column
    /// numbers. pgveil cannot know which descendant a row reaches, so it
    /// plans nothing through an ancestor: statements naming one are refused,
    /// and views over one have only columns pgveil cannot map. A policy
    /// table that is an ancestor of another policy table is refused the same
    /// way (the two would bind the same rows to two tables' associated data).
    fn map_ancestors(&mut self, policy: &Policy) {
        let by_oid = self.keys_by_oid();
        let is_policy = |k: &(String, String)| policy.table(&k.0, &k.1).is_some();
        // The protected relations: policy tables and their children.
        let protected: Vec<(String, String)> = self
            .relations
            .keys()
            .filter(|k| is_policy(k) || self.children.contains_key(*k))
            .cloned()
            .collect();
        // ancestor → the protected relation below it (for the message).
        let mut found: HashMap<(String, String), (String, String)> = HashMap::new();
        for below in &protected {
            let mut stack: Vec<(Oid, usize)> = self.relations[below]
                .parents
                .iter()
                .map(|p| (*p, 0))
                .collect();
            while let Some((oid, depth)) = stack.pop() {
                let Some(key) = by_oid.get(&oid) else {
                    continue;
                };
                if depth > 64 {
                    continue;
                }
                // A child's own parents inside the protected lineage are
                // planned as the root already; only the root's ancestors,
                // and policy tables above another policy table, are refused.
                let in_lineage = self.children.contains_key(key);
                let policy_above_policy = is_policy(key) && is_policy(below);
                if (!in_lineage && !is_policy(key)) || policy_above_policy {
                    found.entry(key.clone()).or_insert_with(|| below.clone());
                }
                if let Some(rel) = self.relations.get(key) {
                    stack.extend(rel.parents.iter().map(|p| (*p, depth + 1)));
                }
            }
        }
        for (anc, below) in found {
            let a = format!("{}.{}", anc.0, anc.1);
            let b = format!("{}.{}", below.0, below.1);
            let msg = if is_policy(&anc) {
                format!(
                    "pgveil: protected table {a} is a parent of protected table {b} (inheritance or partitioning): the two would bind the same rows to different tables, so pgveil plans neither through {a}: list only the root of the tree ({a}) in the policy; its children and partitions are protected as it"
                )
            } else {
                format!(
                    "pgveil: table {a} is a parent of protected table {b} (inheritance or partitioning): rows written or read through {a} reach {b}'s protected columns, which pgveil cannot plan through {a}: add {a} to the policy with {b}'s columns (its children and partitions are then protected as it), or name {b} directly"
                )
            };
            self.problems
                .push(msg.trim_start_matches("pgveil: ").to_string());
            self.names.insert(anc.1.to_lowercase());
            self.children.insert(anc, Err(msg));
        }
    }

    /// The protected columns whose blind index rows of `key` may carry:
    /// its own (a policy table), its root's (a planned child), those of
    /// everything a view reads, and every one in the policy for a relation
    /// pgveil refuses (a child it cannot plan, an ancestor) or a view whose
    /// reads it does not know.
    fn blind_indexes_read(
        &self,
        policy: &Policy,
        key: &(String, String),
        depth: usize,
    ) -> Vec<ColumnRef> {
        let all = || -> Vec<ColumnRef> {
            policy
                .tables
                .iter()
                .flat_map(|t| {
                    t.columns
                        .iter()
                        .filter(|c| c.blind_index.is_some())
                        .map(|c| ColumnRef::new(&t.schema, &t.table, &c.name))
                })
                .collect()
        };
        let own = |t: &super::TablePolicy| -> Vec<ColumnRef> {
            t.columns
                .iter()
                .filter(|c| c.blind_index.is_some())
                .map(|c| ColumnRef::new(&t.schema, &t.table, &c.name))
                .collect()
        };
        if depth > 64 {
            return all();
        }
        if let Some(t) = policy.table(&key.0, &key.1) {
            return match self.children.get(key) {
                Some(Err(_)) => all(),
                _ => own(t),
            };
        }
        match self.children.get(key) {
            Some(Ok((rs, rt))) => return policy.table(rs, rt).map(own).unwrap_or_else(all),
            Some(Err(_)) => return all(),
            None => {}
        }
        let Some(rel) = self.relations.get(key) else {
            return vec![];
        };
        if !rel.is_view() {
            return vec![];
        }
        if rel.reads.is_empty() {
            return all();
        }
        let mut out: Vec<ColumnRef> = vec![];
        for oid in &rel.reads {
            let Some(r) = self.relations.values().find(|r| r.oid == *oid) else {
                // Not returned: it holds no protected data.
                continue;
            };
            let k = (r.schema.clone(), r.name.clone());
            for c in self.blind_indexes_read(policy, &k, depth + 1) {
                if !out.contains(&c) {
                    out.push(c);
                }
            }
        }
        out
    }

    /// (schema, name) of every relation returned, by OID.
    fn keys_by_oid(&self) -> HashMap<Oid, (String, String)> {
        self.relations
            .values()
            .map(|r| (r.oid, (r.schema.clone(), r.name.clone())))
            .collect()
    }

    fn base_attr(&self, base: &ColumnRef) -> Option<ProtectedAttr> {
        let rel = self.relation(&base.schema, &base.table)?;
        let (attnum, _, _) = rel.columns.iter().find(|c| c.1 == base.column)?;
        self.protected.get(&(rel.oid, *attnum)).cloned()
    }

    /// Resolve which columns of a view expose a base column (protected,
    /// blind-index or tenant) unchanged, by parsing `pg_get_viewdef`, and
    /// which are computed from protected data in a way that cannot be mapped
    /// (those are `unknown`). Whatever cannot be analysed is unknown.
    fn resolve_view(&self, policy: &Policy, rel: &Relation) -> Vec<ViewColumn> {
        let all_unknown = || -> Vec<ViewColumn> {
            rel.columns
                .iter()
                .map(|c| ViewColumn {
                    name: c.1.clone(),
                    base: None,
                    unknown: true,
                })
                .collect()
        };
        let mut out: Vec<ViewColumn> = rel
            .columns
            .iter()
            .map(|c| ViewColumn {
                name: c.1.clone(),
                base: None,
                unknown: false,
            })
            .collect();
        let Some(def) = &rel.viewdef else {
            return all_unknown();
        };
        let Ok(stmts) = Parser::parse_sql(&PostgreSqlDialect {}, def) else {
            return all_unknown();
        };
        let Some(Statement::Query(q)) = stmts.first() else {
            return all_unknown();
        };
        let SetExpr::Select(sel) = q.body.as_ref() else {
            // UNION / INTERSECT / EXCEPT / VALUES: no column maps to one base.
            return all_unknown();
        };
        if q.with.is_some() {
            return all_unknown();
        }
        // alias → (schema, table)
        let mut rels: Vec<(String, (String, String))> = vec![];
        let mut opaque_from = false;
        let mut add = |tf: &TableFactor| {
            if let TableFactor::Table { name, alias, .. } = tf {
                let parts: Vec<String> = name
                    .0
                    .iter()
                    .filter_map(|p| match p {
                        ObjectNamePart::Identifier(i) => Some(i.value.clone()),
                        _ => None,
                    })
                    .collect();
                let (schema, table) = match parts.as_slice() {
                    [t] => (self.guess_schema(t, &rel.schema), t.clone()),
                    [s, t] => (s.clone(), t.clone()),
                    _ => {
                        opaque_from = true;
                        return;
                    }
                };
                let alias = alias
                    .as_ref()
                    .map(|a| a.name.value.clone())
                    .unwrap_or_else(|| table.clone());
                rels.push((alias, (schema, table)));
            } else {
                opaque_from = true;
            }
        };
        let walk = |twj: &TableWithJoins, add: &mut dyn FnMut(&TableFactor)| {
            add(&twj.relation);
            for j in &twj.joins {
                add(&j.relation);
            }
        };
        for twj in &sel.from {
            walk(twj, &mut add);
        }
        if opaque_from {
            // A subquery, function or nested join in FROM: unknown shapes.
            return all_unknown();
        }
        // Names that carry protected data in this view's FROM: protected
        // (or unknown) columns, and the aliases of relations holding them
        // (a whole-row reference carries every column).
        let mut hot_cols: HashSet<String> = HashSet::new();
        let mut hot_rels: HashSet<String> = HashSet::new();
        for (alias, (s, t)) in &rels {
            let cols = self.hot_columns(policy, s, t);
            if !cols.is_empty() {
                hot_rels.insert(alias.clone());
                hot_rels.insert(t.clone());
            }
            hot_cols.extend(cols);
        }
        for (i, item) in sel.projection.iter().enumerate() {
            let e = match item {
                SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => e,
                _ => {
                    if let Some(vc) = out.get_mut(i) {
                        vc.unknown = true;
                    }
                    continue;
                }
            };
            let simple = match e {
                Expr::Identifier(id) => Some((None, id.value.clone())),
                Expr::CompoundIdentifier(ids) if ids.len() >= 2 => Some((
                    Some(ids[ids.len() - 2].value.clone()),
                    ids[ids.len() - 1].value.clone(),
                )),
                _ => None,
            };
            let mut origin = Origin::Plain;
            if let Some((qual, col)) = simple {
                let candidates: Vec<&(String, String)> = rels
                    .iter()
                    .filter(|(a, _)| qual.as_ref().is_none_or(|q| q == a))
                    .map(|(_, t)| t)
                    .collect();
                for (s, t) in candidates {
                    match self.column_origin(policy, s, t, &col) {
                        Origin::Plain => {}
                        o => {
                            origin = o;
                            break;
                        }
                    }
                }
                if qual.is_none() && matches!(origin, Origin::Plain) && hot_rels.contains(&col) {
                    // A bare relation name: the whole row.
                    origin = Origin::Unknown;
                }
            } else if expr_mentions(e, &hot_cols, &hot_rels) {
                origin = Origin::Unknown;
            }
            if let Some(vc) = out.get_mut(i) {
                match origin {
                    Origin::Base(b) => vc.base = Some(b),
                    Origin::Unknown => vc.unknown = true,
                    Origin::Plain => {}
                }
            }
        }
        out
    }

    /// Names of the columns of `schema.table` that hold protected data
    /// (mapped or unknown).
    fn hot_columns(&self, policy: &Policy, s: &str, t: &str) -> Vec<String> {
        let (s, t) = match self.children.get(&(s.to_string(), t.to_string())) {
            Some(Ok((rs, rt))) => (rs.as_str(), rt.as_str()),
            Some(Err(_)) => {
                return self
                    .relation(s, t)
                    .map(Relation::column_names)
                    .unwrap_or_default();
            }
            None => (s, t),
        };
        if let Some(tp) = policy.table(s, t) {
            return tp.columns.iter().map(|c| c.name.clone()).collect();
        }
        let Some(cols) = self.views.get(&(s.to_string(), t.to_string())) else {
            return vec![];
        };
        cols.iter()
            .filter(|c| {
                c.unknown
                    || c.base.as_ref().is_some_and(|b| {
                        policy
                            .table(&b.schema, &b.table)
                            .is_some_and(|tp| tp.column(&b.column).is_some())
                    })
            })
            .map(|c| c.name.clone())
            .collect()
    }

    /// Whether `schema.table.col` is (or exposes) a protected, blind-index or
    /// tenant column (its base column), or protected data pgveil cannot map.
    fn column_origin(&self, policy: &Policy, s: &str, t: &str, col: &str) -> Origin {
        let (s, t) = match self.children.get(&(s.to_string(), t.to_string())) {
            Some(Ok((rs, rt))) => (rs.as_str(), rt.as_str()),
            Some(Err(_)) => return Origin::Unknown,
            None => (s, t),
        };
        if let Some(tp) = policy.table(s, t) {
            let is_known = tp.column(col).is_some()
                || tp.blind_index_owner(col).is_some()
                || tp.tenant.as_deref() == Some(col);
            return if is_known {
                Origin::Base(ColumnRef::new(s, t, col))
            } else {
                Origin::Plain
            };
        }
        let Some(cols) = self.views.get(&(s.to_string(), t.to_string())) else {
            return Origin::Plain;
        };
        match cols.iter().find(|c| c.name == col) {
            Some(c) if c.unknown => Origin::Unknown,
            Some(ViewColumn { base: Some(b), .. }) => Origin::Base(b.clone()),
            _ => Origin::Plain,
        }
    }

    fn guess_schema(&self, table: &str, own: &str) -> String {
        let cands: Vec<&String> = self
            .relations
            .keys()
            .filter(|(_, n)| n == table)
            .map(|(s, _)| s)
            .collect();
        match cands.as_slice() {
            [one] => (*one).clone(),
            many if many.iter().any(|s| *s == own) => own.to_string(),
            _ => "public".to_string(),
        }
    }
}

/// Where a view column comes from.
enum Origin {
    Base(ColumnRef),
    Unknown,
    Plain,
}

/// Whether `e` mentions one of `cols` (as a column) or `rels` (as a whole
/// row or qualifier), or holds a subquery (whose relations the view's FROM
/// does not show): then it may compute on protected data.
fn expr_mentions(e: &Expr, cols: &HashSet<String>, rels: &HashSet<String>) -> bool {
    use std::ops::ControlFlow;
    if cols.is_empty() && rels.is_empty() {
        return false;
    }
    let r = sqlparser::ast::visit_expressions(e, |x| {
        let hit = match x {
            Expr::Identifier(i) => cols.contains(&i.value) || rels.contains(&i.value),
            Expr::CompoundIdentifier(ids) => ids
                .last()
                .is_some_and(|i| cols.contains(&i.value) || rels.contains(&i.value)),
            Expr::Subquery(_)
            | Expr::Exists { .. }
            | Expr::InSubquery { .. }
            | Expr::Wildcard(_)
            | Expr::QualifiedWildcard(..) => true,
            _ => false,
        };
        if hit {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    });
    r.is_break()
}
