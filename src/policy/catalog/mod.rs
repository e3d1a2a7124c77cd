//! The live catalog seen through the policy: which (table OID, attnum) pairs
//! are protected columns, blind-index columns and tenant columns, and which
//! view columns expose a protected column unchanged. The proxy runs
//! [`CATALOG_QUERY`] on its upstream connection on connect and after DDL, and
//! maps RowDescription fields (table OID, column number) through
//! [`Catalog::protected_attr`].
//!
//! This file holds the types and [`Catalog::from_rows`], which maps the rows
//! in four steps, one file each: `query` (the query, and its rows read into
//! [`Relation`]s), `columns` (the policy tables' columns), `lineage`
//! (inheritance children and partitions planned as their root, ancestors
//! refused) and `views` (view columns resolved from their definitions).
//! Invariant: what it cannot map with certainty (a view definition it
//! cannot read, a child whose columns differ from its root's, an ancestor
//! of a protected table) is marked unknown or refused, never taken for
//! plain data.

mod columns;
mod lineage;
mod query;
#[cfg(test)]
pub(crate) mod test_rows;
mod views;

use std::collections::{BTreeSet, HashMap};

use super::ColumnRef;
use super::{ColumnPolicy, Policy};
use crate::crypto::types::{Oid, Storage};

pub use query::CATALOG_QUERY;

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
    /// The view's column name.
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
    /// Its `pg_class` OID.
    pub oid: Oid,
    /// Its schema.
    pub schema: String,
    /// Its name.
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
    /// A view or materialized view (`v`, `m`).
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
        let (relations, order) = query::relations(rows);
        let mut cat = Catalog {
            relations,
            ..Default::default()
        };
        cat.map_tables(policy);
        cat.map_children(policy);
        cat.map_ancestors(policy);
        cat.map_views(policy, &order);
        cat
    }
}
