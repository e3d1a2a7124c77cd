//! The live catalog seen through the policy: which (table OID, attnum) pairs
//! are protected columns, blind-index columns and tenant columns, and which
//! view columns expose a protected column unchanged. The proxy runs
//! [`CATALOG_QUERY`] on its upstream connection on connect and after DDL, and
//! maps RowDescription fields (table OID, column number) through
//! [`Catalog::protected_attr`].

use std::collections::{BTreeSet, HashMap};

use sqlparser::ast::{
    Expr, ObjectNamePart, SelectItem, SetExpr, Statement, TableFactor, TableWithJoins,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use super::{ColumnPolicy, Policy};
use crate::crypto::types::{Oid, Storage};
use crate::sql::ColumnRef;

/// One query returning, for every protected table named in `$1` and every
/// view or materialized view that (transitively) reads one, all of its
/// columns as plain text: `oid, attnum, schema, relname, relkind, attname,
/// format_type, viewdef` (`viewdef` only on attnum 1 of views).
///
/// `$1` is a `text[]` of `schema.table` names: pass
/// [`Catalog::query_param`], or run [`Catalog::simple_query`] which inlines
/// it for the simple-query protocol.
pub const CATALOG_QUERY: &str = "\
WITH RECURSIVE rels(oid) AS (
    SELECT c.oid FROM pg_catalog.pg_class c
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p', 'f', 'v', 'm')
      AND (n.nspname || '.' || c.relname) = ANY($1::text[])
  UNION
    SELECT r.ev_class FROM rels
    JOIN pg_catalog.pg_depend d
      ON d.refclassid = 'pg_catalog.pg_class'::regclass AND d.refobjid = rels.oid
     AND d.classid = 'pg_catalog.pg_rewrite'::regclass
    JOIN pg_catalog.pg_rewrite r ON r.oid = d.objid AND r.ev_class <> rels.oid
)
SELECT c.oid::text, a.attnum::text, n.nspname::text, c.relname::text, c.relkind::text,
       a.attname::text, pg_catalog.format_type(a.atttypid, a.atttypmod),
       CASE WHEN c.relkind IN ('v', 'm') AND a.attnum = 1
            THEN pg_catalog.pg_get_viewdef(c.oid) END
FROM rels
JOIN pg_catalog.pg_class c ON c.oid = rels.oid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY c.oid, a.attnum";

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
}

/// A column of a view (or materialized view) over protected tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewColumn {
    pub name: String,
    /// The base-table column it exposes unchanged, when it does.
    pub base: Option<ColumnRef>,
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
    /// Views over protected tables: (schema, name) → columns.
    pub views: HashMap<(String, String), Vec<ViewColumn>>,
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

    /// [`CATALOG_QUERY`] with `$1` inlined as an array literal, for the
    /// simple-query protocol.
    pub fn simple_query(policy: &Policy) -> String {
        let items: Vec<String> = Catalog::query_param(policy)
            .iter()
            .map(|n| format!("'{}'", n.replace('\'', "''")))
            .collect();
        let arr = format!("ARRAY[{}]::text[]", items.join(", "));
        CATALOG_QUERY.replace("$1::text[]", &arr)
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
                }
            });
            rel.columns.push((attnum, att, ty));
            if let Some(def) = get(7) {
                rel.viewdef = Some(def);
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

    fn base_attr(&self, base: &ColumnRef) -> Option<ProtectedAttr> {
        let rel = self.relation(&base.schema, &base.table)?;
        let (attnum, _, _) = rel.columns.iter().find(|c| c.1 == base.column)?;
        self.protected.get(&(rel.oid, *attnum)).cloned()
    }

    /// Resolve which columns of a view expose a base column (protected,
    /// blind-index or tenant) unchanged, by parsing `pg_get_viewdef`.
    fn resolve_view(&self, policy: &Policy, rel: &Relation) -> Vec<ViewColumn> {
        let mut out: Vec<ViewColumn> = rel
            .columns
            .iter()
            .map(|c| ViewColumn {
                name: c.1.clone(),
                base: None,
            })
            .collect();
        let Some(def) = &rel.viewdef else { return out };
        let Ok(stmts) = Parser::parse_sql(&PostgreSqlDialect {}, def) else {
            return out;
        };
        let Some(Statement::Query(q)) = stmts.first() else {
            return out;
        };
        let SetExpr::Select(sel) = q.body.as_ref() else {
            return out;
        };
        // alias → (schema, table)
        let mut rels: Vec<(String, (String, String))> = vec![];
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
                    _ => return,
                };
                let alias = alias
                    .as_ref()
                    .map(|a| a.name.value.clone())
                    .unwrap_or_else(|| table.clone());
                rels.push((alias, (schema, table)));
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
        for (i, item) in sel.projection.iter().enumerate() {
            let e = match item {
                SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => e,
                _ => continue,
            };
            let (qual, col) = match e {
                Expr::Identifier(id) => (None, id.value.clone()),
                Expr::CompoundIdentifier(ids) if ids.len() >= 2 => (
                    Some(ids[ids.len() - 2].value.clone()),
                    ids[ids.len() - 1].value.clone(),
                ),
                _ => continue,
            };
            let candidates: Vec<&(String, String)> = rels
                .iter()
                .filter(|(a, _)| qual.as_ref().is_none_or(|q| q == a))
                .map(|(_, t)| t)
                .collect();
            let mut found = None;
            for (s, t) in candidates {
                if let Some(b) = self.column_origin(policy, s, t, &col) {
                    found = Some(b);
                    break;
                }
            }
            if let Some(vc) = out.get_mut(i) {
                vc.base = found;
            }
        }
        out
    }

    /// If `schema.table.col` is (or exposes) a protected, blind-index or
    /// tenant column, its base column.
    fn column_origin(&self, policy: &Policy, s: &str, t: &str, col: &str) -> Option<ColumnRef> {
        if let Some(tp) = policy.table(s, t) {
            let is_known = tp.column(col).is_some()
                || tp.blind_index_owner(col).is_some()
                || tp.tenant.as_deref() == Some(col);
            return is_known.then(|| ColumnRef::new(s, t, col));
        }
        let cols = self.views.get(&(s.to_string(), t.to_string()))?;
        cols.iter().find(|c| c.name == col)?.base.clone()
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
