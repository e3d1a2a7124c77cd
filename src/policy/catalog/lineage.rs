//! Inheritance and partitioning around protected tables. A child or
//! partition of a policy table whose columns are the root's is planned as
//! that table (its columns mapped under its own OID to the root's policy
//! columns); one with other columns, or below two policy tables, is refused.
//! Every ancestor of a protected relation is refused: pgveil cannot know
//! which descendant a row written or read through it reaches.

use std::collections::{HashMap, HashSet};

use super::Catalog;
use crate::crypto::types::Oid;
use crate::policy::Policy;

impl Catalog {
    /// Resolve every inheritance child or partition in the result to the
    /// policy table at the root of its lineage, and copy that table's
    /// protected, blind-index and tenant columns onto it by name. A child
    /// whose columns are not exactly the root's (names and order: `INSERT`
    /// and `COPY` without a column list depend on it), or that descends
    /// from two protected tables, is refused instead.
    pub(super) fn map_children(&mut self, policy: &Policy) {
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
    pub(super) fn map_ancestors(&mut self, policy: &Policy) {
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

    /// (schema, name) of every relation returned, by OID.
    fn keys_by_oid(&self) -> HashMap<Oid, (String, String)> {
        self.relations
            .values()
            .map(|r| (r.oid, (r.schema.clone(), r.name.clone())))
            .collect()
    }
}
