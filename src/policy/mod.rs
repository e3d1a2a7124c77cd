//! The policy: which columns are protected, how they are looked up, which
//! roles may read them (see `docs/policy.md` and the contract's
//! `policy.example.yaml`).
//!
//! Loading is two-step so that a user sees every problem at once: the YAML is
//! read into a loose tree that keeps duplicate keys ([`node::Node`]), then
//! validated here, each problem with `file:line` and the fix.
//!
//! Submodules: [`catalog`] maps PostgreSQL's table OIDs / attribute numbers
//! to policy columns; [`check`] compares the policy with a live schema;
//! [`ColumnRef`] names one column; [`ident`] quotes identifiers (below
//! `sql`, which re-exports it: the arrow runs `sql` → `policy` only).

pub mod catalog;
pub mod check;
mod column;
pub mod ident;
mod node;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

use crate::crypto::types::{Normalizer, PgType};
use crate::yaml::{self, YamlError, YamlErrors};

pub use catalog::{CATALOG_QUERY, Catalog, ProtectedAttr, ViewColumn};
pub use check::{SchemaProblem, check_schema};
pub use column::ColumnRef;
use node::Node;

/// A loaded, validated policy.
#[derive(Debug, Clone)]
pub struct Policy {
    /// File the policy came from (for messages).
    pub path: PathBuf,
    /// Group name → member login roles.
    pub groups: BTreeMap<String, Vec<String>>,
    /// Protected tables in file order.
    pub tables: Vec<TablePolicy>,
    index: HashMap<(String, String), usize>,
}

/// One protected table.
#[derive(Debug, Clone, PartialEq)]
pub struct TablePolicy {
    /// Its schema.
    pub schema: String,
    /// Its name.
    pub table: String,
    /// Tenant column: values are bound to (and encrypted under the key of)
    /// the row's tenant.
    pub tenant: Option<String>,
    /// Protected columns in file order.
    pub columns: Vec<ColumnPolicy>,
    /// Line of the table's key in the policy file.
    pub line: Option<usize>,
    /// Line of the `tenant:` entry.
    pub tenant_line: Option<usize>,
}

impl TablePolicy {
    /// The protected column `name`, if the table has it.
    pub fn column(&self, name: &str) -> Option<&ColumnPolicy> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// `schema.table`.
    pub fn qualified(&self) -> String {
        format!("{}.{}", self.schema, self.table)
    }

    /// The protected column whose blind index (current or `next`) is `name`,
    /// and whether it is the `next` one.
    pub fn blind_index_owner(&self, name: &str) -> Option<(&ColumnPolicy, bool)> {
        self.columns.iter().find_map(|c| {
            let b = c.blind_index.as_ref()?;
            if b.column == name {
                Some((c, false))
            } else if b.next.as_deref() == Some(name) {
                Some((c, true))
            } else {
                None
            }
        })
    }
}

/// One protected column.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnPolicy {
    /// The column's name.
    pub name: String,
    /// Plaintext type authorized clients see.
    pub ty: PgType,
    /// Its blind index, when equality lookups are allowed.
    pub blind_index: Option<BlindIndexPolicy>,
    /// Principal (role or group) → access level, in file order.
    pub access: Vec<(String, AccessLevel)>,
    /// Line of its entry in the policy file.
    pub line: Option<usize>,
}

/// Blind index of a protected column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlindIndexPolicy {
    /// The `bytea` column holding the index.
    pub column: String,
    /// Normalisers applied (in order) before hashing.
    pub normalize: Vec<Normalizer>,
    /// During blind-index key rotation: a second column written alongside
    /// (dual-write) under the new key. Lookups keep using `column`.
    pub next: Option<String>,
    /// Line of its entry in the policy file.
    pub line: Option<usize>,
}

/// An access level as written in the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AccessLevel {
    /// Writes encrypted, lookups via blind index, reads decrypted.
    Read,
    /// Writes encrypted only; lookups rejected, reads return ciphertext.
    Write,
    /// Writes encrypted, lookups via blind index, reads return ciphertext.
    Search,
}

impl AccessLevel {
    /// The level as written in the policy.
    pub fn name(self) -> &'static str {
        match self {
            AccessLevel::Read => "read",
            AccessLevel::Write => "write",
            AccessLevel::Search => "search",
        }
    }

    /// The capabilities this level grants.
    pub fn capabilities(self) -> Access {
        match self {
            AccessLevel::Read => Access {
                write: true,
                search: true,
                read_plaintext: true,
            },
            AccessLevel::Search => Access {
                write: true,
                search: true,
                read_plaintext: false,
            },
            AccessLevel::Write => Access {
                write: true,
                search: false,
                read_plaintext: false,
            },
        }
    }
}

/// What a role may do with one protected column: capability flags, because
/// the levels are not totally ordered. A role listed several times (directly
/// and through groups) gets the union of the capabilities.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Access {
    /// pgveil encrypts the role's writes (otherwise only well-formed
    /// envelopes may be written).
    pub write: bool,
    /// `=`/`IN` lookups are rewritten to the blind index (otherwise rejected).
    pub search: bool,
    /// Results are decrypted (otherwise ciphertext is returned).
    pub read_plaintext: bool,
}

impl Access {
    /// Everything either grants.
    pub fn union(self, o: Access) -> Access {
        Access {
            write: self.write || o.write,
            search: self.search || o.search,
            read_plaintext: self.read_plaintext || o.read_plaintext,
        }
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = vec![];
        if self.read_plaintext {
            parts.push("read plaintext");
        }
        if self.search {
            parts.push("search");
        }
        if self.write {
            parts.push("write");
        }
        if parts.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&parts.join(", "))
        }
    }
}

impl Policy {
    /// Read and validate a policy file.
    pub fn load(path: &Path) -> Result<Policy, YamlErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| YamlError {
            file: path.to_path_buf(),
            line: None,
            message: format!("cannot read policy: {e}"),
        })?;
        Policy::from_text(path, &text)
    }

    /// Validate policy text that came from `path`.
    pub fn from_text(path: &Path, text: &str) -> Result<Policy, YamlErrors> {
        let root: Node = yaml::from_str(path, text)?;
        let mut v = Validator {
            path,
            text,
            errors: vec![],
        };
        let policy = v.policy(&root);
        if v.errors.is_empty() {
            Ok(policy)
        } else {
            v.errors.sort_by_key(|e| e.line.unwrap_or(0));
            Err(YamlErrors(v.errors))
        }
    }

    /// The policy of `schema.table`, if protected.
    pub fn table(&self, schema: &str, table: &str) -> Option<&TablePolicy> {
        self.index
            .get(&(schema.to_string(), table.to_string()))
            .map(|&i| &self.tables[i])
    }

    /// Protected tables named `table` in any schema (for unqualified names).
    pub fn tables_named<'a>(&'a self, table: &'a str) -> impl Iterator<Item = &'a TablePolicy> {
        self.tables.iter().filter(move |t| t.table == table)
    }

    /// The capabilities of login role `role` on a protected column, resolving
    /// groups; `None` if the column is not protected or the role is not listed
    /// (directly or through a group).
    pub fn access(&self, role: &str, schema: &str, table: &str, column: &str) -> Option<Access> {
        let col = self.table(schema, table)?.column(column)?;
        self.column_access(role, col)
    }

    /// Like [`Policy::access`] for an already looked-up column.
    pub fn column_access(&self, role: &str, col: &ColumnPolicy) -> Option<Access> {
        let mut out: Option<Access> = None;
        for (principal, level) in &col.access {
            let applies = match self.groups.get(principal) {
                Some(members) => members.iter().any(|m| m == role),
                None => principal == role,
            };
            if applies {
                let caps = level.capabilities();
                out = Some(out.map_or(caps, |a| a.union(caps)));
            }
        }
        out
    }
}

const TOP_KEYS: &[&str] = &["version", "groups", "tables"];
const TABLE_KEYS: &[&str] = &["tenant", "columns"];
const COLUMN_KEYS: &[&str] = &["type", "blind_index", "access"];
const BIDX_KEYS: &[&str] = &["column", "normalize", "next"];

struct Validator<'a> {
    path: &'a Path,
    text: &'a str,
    errors: Vec<YamlError>,
}

impl Validator<'_> {
    fn line(&self, path: &[&str]) -> Option<usize> {
        yaml::locate(self.text, path)
    }

    fn err(&mut self, line: Option<usize>, message: String) {
        self.errors.push(YamlError {
            file: self.path.to_path_buf(),
            line,
            message,
        });
    }

    /// Check a mapping's keys: duplicates and unknown keys. Returns the
    /// entries with duplicates removed (first wins).
    fn map<'n>(
        &mut self,
        node: &'n Node,
        path: &[&str],
        allowed: Option<&[&str]>,
        what: &str,
    ) -> Vec<(&'n str, &'n Node)> {
        let Node::Map(entries) = node else {
            let line = self.line(path);
            self.err(
                line,
                format!(
                    "{what} must be a mapping (`key: value` lines), found {}",
                    node.kind()
                ),
            );
            return vec![];
        };
        let mut seen = HashSet::new();
        let mut out = vec![];
        for (k, v) in entries {
            let mut kp: Vec<&str> = path.to_vec();
            kp.push(k);
            if !seen.insert(k.as_str()) {
                let line = node::locate_nth(self.text, &kp, 2).or_else(|| self.line(&kp));
                self.err(
                    line,
                    format!(
                        "duplicate key `{k}` in {what} (each key may appear once: merge the two entries)"
                    ),
                );
                continue;
            }
            if let Some(allowed) = allowed
                && !allowed.contains(&k.as_str())
            {
                let line = self.line(&kp);
                let hint = suggest(k, allowed)
                    .map(|s| format!("did you mean `{s}`? "))
                    .unwrap_or_default();
                self.err(
                    line,
                    format!(
                        "unknown key `{k}` in {what}: {hint}allowed keys are {} (remove it or fix its spelling)",
                        allowed.join(", ")
                    ),
                );
                continue;
            }
            out.push((k.as_str(), v));
        }
        out
    }

    fn scalar<'n>(&mut self, node: &'n Node, path: &[&str], what: &str) -> Option<&'n str> {
        match node {
            Node::Scalar(s) => Some(s),
            other => {
                let line = self.line(path);
                self.err(
                    line,
                    format!("{what} must be a single value, found {}", other.kind()),
                );
                None
            }
        }
    }

    fn policy(&mut self, root: &Node) -> Policy {
        let mut policy = Policy {
            path: self.path.to_path_buf(),
            groups: BTreeMap::new(),
            tables: vec![],
            index: HashMap::new(),
        };
        if let Node::Null = root {
            self.err(
                None,
                "the policy is empty: start with `version: 1` and a `tables:` mapping".into(),
            );
            return policy;
        }
        let top = self.map(root, &[], Some(TOP_KEYS), "the policy");
        let get = |k: &str| top.iter().find(|(n, _)| *n == k).map(|(_, v)| *v);
        match get("version") {
            None => self.err(
                Some(1),
                "missing `version: 1` at the top of the policy".into(),
            ),
            Some(v) => {
                if let Some(s) = self.scalar(v, &["version"], "`version`")
                    && s != "1"
                {
                    let line = self.line(&["version"]);
                    self.err(
                        line,
                        format!("unsupported policy version {s:?}: this pgveil reads `version: 1`"),
                    );
                }
            }
        }
        if let Some(g) = get("groups") {
            policy.groups = self.groups(g);
        }
        match get("tables") {
            None => self.err(
                None,
                "missing `tables:`: list the protected tables as `schema.table:` entries".into(),
            ),
            Some(t) => self.tables(t, &mut policy),
        }
        policy
    }

    fn groups(&mut self, node: &Node) -> BTreeMap<String, Vec<String>> {
        let mut out = BTreeMap::new();
        if let Node::Null = node {
            return out;
        }
        for (name, members) in self.map(node, &["groups"], None, "`groups`") {
            let path = ["groups", name];
            let list = match members {
                Node::Seq(items) => items,
                Node::Scalar(_) | Node::Map(_) | Node::Null => {
                    let line = self.line(&path);
                    self.err(
                        line,
                        format!(
                            "group `{name}` must be a list of roles, e.g. `{name}: [role_a, role_b]`"
                        ),
                    );
                    continue;
                }
            };
            let mut roles = vec![];
            for m in list {
                if let Some(r) = self.scalar(m, &path, &format!("a member of group `{name}`")) {
                    roles.push(r.to_string());
                }
            }
            out.insert(name.to_string(), roles);
        }
        out
    }

    fn tables(&mut self, node: &Node, policy: &mut Policy) {
        if let Node::Null = node {
            return;
        }
        for (key, tnode) in self.map(node, &["tables"], None, "`tables`") {
            let path = ["tables", key];
            let line = self.line(&path);
            let parts: Vec<&str> = key.split('.').collect();
            if parts.len() != 2 || parts.iter().any(|p| p.is_empty()) {
                let fix = if parts.len() == 1 {
                    format!("write it as `public.{key}` (or the table's schema)")
                } else {
                    "write it as `schema.table`".to_string()
                };
                self.err(
                    line,
                    format!("table `{key}` is not schema-qualified: {fix}"),
                );
                continue;
            }
            let (schema, table) = (parts[0].to_string(), parts[1].to_string());
            let entries = self.map(tnode, &path, Some(TABLE_KEYS), &format!("table `{key}`"));
            let mut tp = TablePolicy {
                schema,
                table,
                tenant: None,
                columns: vec![],
                line,
                tenant_line: None,
            };
            for (k, v) in &entries {
                if *k == "tenant" {
                    tp.tenant = self
                        .scalar(v, &["tables", key, "tenant"], "`tenant`")
                        .map(str::to_string);
                    tp.tenant_line = self.line(&["tables", key, "tenant"]);
                }
            }
            match entries.iter().find(|(k, _)| *k == "columns") {
                None => self.err(
                    line,
                    format!("table `{key}` has no `columns:`: list its protected columns"),
                ),
                Some((_, cols)) => self.columns(key, cols, &mut tp),
            }
            self.table_rules(key, &tp);
            policy
                .index
                .insert((tp.schema.clone(), tp.table.clone()), policy.tables.len());
            policy.tables.push(tp);
        }
    }

    fn columns(&mut self, key: &str, node: &Node, tp: &mut TablePolicy) {
        let cpath = ["tables", key, "columns"];
        let entries = self.map(node, &cpath, None, &format!("the columns of `{key}`"));
        if entries.is_empty() && matches!(node, Node::Map(_) | Node::Null) {
            let line = self.line(&cpath);
            self.err(
                line,
                format!("table `{key}` lists no columns: protect at least one column or remove the table"),
            );
        }
        for (name, cnode) in entries {
            let path = ["tables", key, "columns", name];
            let line = self.line(&path);
            let what = format!("column `{key}.{name}`");
            let e = self.map(cnode, &path, Some(COLUMN_KEYS), &what);
            let get = |k: &str| e.iter().find(|(n, _)| *n == k).map(|(_, v)| *v);
            let ty = match get("type") {
                None => {
                    self.err(
                        line,
                        format!(
                            "{what} has no `type:`: give its plaintext type (one of {})",
                            PgType::ALL.map(|t| t.name()).join(", ")
                        ),
                    );
                    None
                }
                Some(t) => {
                    let tpath = ["tables", key, "columns", name, "type"];
                    self.scalar(t, &tpath, "`type`")
                        .and_then(|s| match s.parse() {
                            Ok(t) => Some(t),
                            Err(msg) => {
                                let l = self.line(&tpath);
                                self.err(l, format!("{what}: {msg}"));
                                None
                            }
                        })
                }
            };
            let blind_index = get("blind_index").and_then(|b| self.blind_index(key, name, b));
            let access = get("access")
                .map(|a| self.access(key, name, a))
                .unwrap_or_default();
            if let Some(ty) = ty {
                tp.columns.push(ColumnPolicy {
                    name: name.to_string(),
                    ty,
                    blind_index,
                    access,
                    line,
                });
            }
        }
    }

    fn blind_index(&mut self, key: &str, col: &str, node: &Node) -> Option<BlindIndexPolicy> {
        let path = ["tables", key, "columns", col, "blind_index"];
        let line = self.line(&path);
        let what = format!("the blind_index of `{key}.{col}`");
        let e = self.map(node, &path, Some(BIDX_KEYS), &what);
        let get = |k: &str| e.iter().find(|(n, _)| *n == k).map(|(_, v)| *v);
        let column = match get("column") {
            None => {
                self.err(
                    line,
                    format!("{what} has no `column:`: name the bytea column that holds it, e.g. `column: {col}_bidx`"),
                );
                return None;
            }
            Some(c) => self.scalar(c, &path, "`column`")?.to_string(),
        };
        let mut normalize = vec![];
        match get("normalize") {
            None | Some(Node::Null) => {}
            Some(Node::Seq(items)) => {
                for it in items {
                    if let Some(s) = self.scalar(it, &path, "a normaliser") {
                        match s.parse::<Normalizer>() {
                            Ok(n) => normalize.push(n),
                            Err(msg) => self.err(line, format!("{what}: {msg}")),
                        }
                    }
                }
            }
            Some(other) => self.err(
                line,
                format!(
                    "{what}: `normalize` must be a list such as [trim, lowercase], found {}",
                    other.kind()
                ),
            ),
        }
        let next = match get("next") {
            None | Some(Node::Null) => None,
            Some(n) => self.scalar(n, &path, "`next`").map(str::to_string),
        };
        if next.as_deref() == Some(column.as_str()) {
            self.err(
                line,
                format!(
                    "{what}: `next` must name a different column than `column` (e.g. `{column}_v2`)"
                ),
            );
        }
        Some(BlindIndexPolicy {
            column,
            normalize,
            next,
            line,
        })
    }

    fn access(&mut self, key: &str, col: &str, node: &Node) -> Vec<(String, AccessLevel)> {
        let path = ["tables", key, "columns", col, "access"];
        let mut out = vec![];
        if let Node::Null = node {
            return out;
        }
        let what = format!("the access of `{key}.{col}`");
        for (principal, lvl) in self.map(node, &path, None, &what) {
            let Some(s) = self.scalar(lvl, &path, "an access level") else {
                continue;
            };
            let level = match s {
                "read" => AccessLevel::Read,
                "write" => AccessLevel::Write,
                "search" => AccessLevel::Search,
                other => {
                    let line = self.line(&path);
                    self.err(
                        line,
                        format!(
                            "{what}: unknown access level {other:?} for `{principal}`: use read, write or search"
                        ),
                    );
                    continue;
                }
            };
            out.push((principal.to_string(), level));
        }
        out
    }

    /// Cross-column rules of one table.
    fn table_rules(&mut self, key: &str, tp: &TablePolicy) {
        let protected: HashSet<&str> = tp.columns.iter().map(|c| c.name.as_str()).collect();
        if let Some(t) = &tp.tenant
            && protected.contains(t.as_str())
        {
            self.err(
                tp.tenant_line,
                format!(
                    "table `{key}`: tenant column `{t}` is itself protected; the tenant id must stay plaintext (remove `{t}` from `columns` or choose another tenant column)"
                ),
            );
        }
        let mut bidx_seen: HashMap<&str, &str> = HashMap::new();
        for c in &tp.columns {
            let Some(b) = &c.blind_index else { continue };
            for bcol in std::iter::once(&b.column).chain(b.next.iter()) {
                if protected.contains(bcol.as_str()) {
                    self.err(
                        b.line,
                        format!(
                            "table `{key}`: blind-index column `{bcol}` of `{}` is also a protected column; give the blind index its own bytea column, e.g. `{}_bidx`",
                            c.name, c.name
                        ),
                    );
                }
                if tp.tenant.as_deref() == Some(bcol.as_str()) {
                    self.err(
                        b.line,
                        format!(
                            "table `{key}`: blind-index column `{bcol}` of `{}` is the tenant column; give the blind index its own bytea column",
                            c.name
                        ),
                    );
                }
                if let Some(prev) = bidx_seen.insert(bcol.as_str(), c.name.as_str()) {
                    self.err(
                        b.line,
                        format!(
                            "table `{key}`: blind-index column `{bcol}` is used by both `{prev}` and `{}`; each protected column needs its own",
                            c.name
                        ),
                    );
                }
            }
        }
    }
}

use crate::yaml::suggest;

#[cfg(test)]
mod tests;
