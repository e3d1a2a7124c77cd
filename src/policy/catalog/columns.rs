//! The policy's own tables in the catalog: each protected column, its
//! blind-index columns and the table's tenant column by (table OID,
//! attnum), with the storage the column's type gives; what the policy names
//! and the schema lacks (or types wrongly) becomes a problem and is left
//! out of the maps, so statements on it are refused.

use super::{Catalog, ProtectedAttr};
use crate::crypto::types::Storage;
use crate::policy::{ColumnRef, Policy};

impl Catalog {
    /// Map the protected, blind-index and tenant columns of every policy
    /// table found; note every policy table's name for the pre-check.
    pub(super) fn map_tables(&mut self, policy: &Policy) {
        for t in &policy.tables {
            self.names.insert(t.table.to_lowercase());
            let Some(rel) = self.relations.get(&(t.schema.clone(), t.table.clone())) else {
                self.problems.push(format!(
                    "table {} does not exist (or is not visible to this role)",
                    t.qualified()
                ));
                continue;
            };
            let find = |c: &str| rel.columns.iter().find(|x| x.1 == c);
            for c in &t.columns {
                let cref = ColumnRef::new(&t.schema, &t.table, &c.name);
                let Some((attnum, _, ty)) = find(&c.name) else {
                    self.problems
                        .push(format!("protected column {cref} does not exist"));
                    continue;
                };
                let storage = match ty.as_str() {
                    "bytea" => Storage::Bytea,
                    "text" => Storage::Text,
                    other => {
                        self.problems.push(format!(
                            "protected column {cref} is {other}: it must be bytea or text"
                        ));
                        continue;
                    }
                };
                self.protected.insert(
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
                                self.blind_index.insert((rel.oid, *n), cref.clone());
                            }
                            None => self.problems.push(format!(
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
                        self.tenant
                            .insert((rel.oid, *n), ColumnRef::new(&t.schema, &t.table, tc));
                    }
                    None => self.problems.push(format!(
                        "tenant column {}.{}.{} does not exist",
                        t.schema, t.table, tc
                    )),
                }
            }
        }
    }
}
