//! SQL analysis and rewrite for protected columns. A pure library: no I/O,
//! no keys. The proxy asks [`Analyzer::may_touch_protected`] first (a
//! byte scan, no parse); statements that cannot touch a protected table are
//! forwarded byte for byte. Otherwise [`Analyzer::plan`] parses the text and
//! returns one [`StatementPlan`] per statement: pass it through, send a
//! rewritten statement whose literal and parameter slots the proxy fills with
//! ciphertext / blind indexes, handle a COPY, or reject it (fail closed).
//!
//! See `docs/policy.md` for what SQL works on a protected column.

pub mod array;
pub mod batch;
mod lex;
pub mod pglex;
mod rewrite;
pub mod splice;

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use crate::crypto::types::{Oid, PgType, Storage};
use crate::policy::{Catalog, Policy};

pub use crate::policy::ColumnRef;
pub use crate::policy::ident::quote_ident;
pub use lex::split_statements;
pub use lex::{SqlName, mentions_execute, names_after_execute};

/// How the statement text arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode<'a> {
    /// Simple query: may hold several `;`-separated statements.
    Simple,
    /// Parse message: exactly one statement, with the client's declared
    /// parameter types (0 = unspecified; may be shorter than the number of
    /// parameters used).
    Extended { param_types: &'a [Oid] },
}

/// What to do with one statement.
#[derive(Debug, Clone, PartialEq)]
pub enum StatementPlan {
    /// Forward unchanged (the statement's own text).
    Passthrough { sql: String },
    /// Send the rewritten statement (possibly unchanged text, see
    /// [`RewritePlan::unchanged`]) after filling its slots. Shared: the
    /// plan cache, the prepared statement and its portals hold the same
    /// plan, never a copy of it.
    Rewrite(Arc<RewritePlan>),
    /// COPY involving a protected table (shared like `Rewrite`).
    Copy(Arc<CopyPlan>),
    /// Answer with an ErrorResponse; nothing is sent upstream.
    Reject {
        /// `42501` (insufficient privilege) or `0A000` (not supported).
        sqlstate: &'static str,
        message: String,
    },
}

impl StatementPlan {
    /// The plan that refuses the statement with `r`.
    pub(crate) fn reject(r: Reject) -> StatementPlan {
        StatementPlan::Reject {
            sqlstate: r.sqlstate,
            message: r.message,
        }
    }
}

/// A rejection: SQLSTATE and a message naming table, column and the
/// alternative. Never contains values from the statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    /// [`Reject::PRIVILEGE`] or [`Reject::UNSUPPORTED`].
    pub sqlstate: &'static str,
    /// What is refused and what to do instead (names only).
    pub message: String,
}

impl Reject {
    /// `insufficient_privilege`: the role may not do this with the column.
    pub const PRIVILEGE: &'static str = "42501";
    /// `feature_not_supported`: pgveil cannot prove the statement safe.
    pub const UNSUPPORTED: &'static str = "0A000";

    /// A refusal as not supported (`0A000`).
    pub fn unsupported(message: impl Into<String>) -> Reject {
        Reject {
            sqlstate: Reject::UNSUPPORTED,
            message: message.into(),
        }
    }
    /// A refusal for lack of privilege (`42501`).
    pub fn privilege(message: impl Into<String>) -> Reject {
        Reject {
            sqlstate: Reject::PRIVILEGE,
            message: message.into(),
        }
    }
}

/// A piece of the rewritten statement text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Text(String),
    /// Render [`RewritePlan::literals`]`[i]` as an SQL literal of its result
    /// (e.g. `'\x…'::bytea` or `'pgv1:…'`).
    Literal(usize),
}

/// What the proxy does with a literal or parameter value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SlotOp {
    /// Encrypt the plaintext for the target column (storage per catalog).
    Encrypt,
    /// Blind index of the plaintext under the target's current blind-index key.
    BlindIndex,
    /// Blind index under the `next` key (dual-write during rotation).
    BlindIndexNext,
    /// The role may not write plaintext: the value must already be a
    /// well-formed envelope for the target column; send it unchanged,
    /// otherwise reject at execution time.
    RequireEnvelope,
    /// The value is a one-dimensional array literal of plaintexts (as
    /// [`array::render_text`] writes it): encrypt each element for the
    /// target column with the tenant at its position in
    /// [`LiteralSlot::tenants`]; rendered as an array literal of envelopes
    /// cast to the storage type's array (`bytea[]` or `text[]`).
    EncryptArray,
    /// Each element's blind index, as a `bytea[]` literal.
    BlindIndexArray,
    /// Each element's blind index under the `next` key.
    BlindIndexNextArray,
}

/// Where the tenant id for an encryption comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TenantSource {
    /// Not a tenant table (or not needed: blind indexes are per column).
    None,
    /// A literal in the statement (its string value).
    Literal(String),
    /// The client's parameter (0-based index).
    Param(usize),
}

/// Where the tenant of each element of an array parameter comes from
/// (`UNNEST($1::text[])` into a tenant table): element `i` of the value
/// array is encrypted for the tenant at position `i`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ArrayTenant {
    /// Not a tenant table.
    None,
    /// The elements of the client's array parameter (0-based index).
    Param(usize),
    /// Known per element when the statement was planned (the elements of
    /// an array literal, or scalar parameters in `ARRAY[$1, $2]`).
    Elements(Vec<TenantSource>),
}

/// A literal of the client's statement that the proxy must transform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiteralSlot {
    /// The literal's string value; `None` = NULL.
    pub value: Option<String>,
    /// The protected column it is written to or compared with.
    pub target: ColumnRef,
    /// What the proxy makes of it.
    pub op: SlotOp,
    /// Where the row's tenant comes from (tenant tables).
    pub tenant: TenantSource,
    /// For [`SlotOp::EncryptArray`] into a tenant table: the tenant of each
    /// element (`TenantSource::None` for a row without one, allowed only
    /// where the element is NULL). Empty otherwise.
    pub tenants: Vec<TenantSource>,
}

/// One parameter of the final (rewritten) statement.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ParamAction {
    /// Send the client's parameter `orig` (0-based) unchanged.
    Copy { orig: usize },
    /// Encrypt the client's parameter for `target`.
    Encrypt {
        orig: usize,
        target: ColumnRef,
        tenant: TenantSource,
    },
    /// Blind index of the client's parameter (`array`: each element of an
    /// array parameter, for `= ANY($n)`).
    BlindIndex {
        orig: usize,
        target: ColumnRef,
        tenant: TenantSource,
        array: bool,
    },
    /// Blind index under the `next` key (dual-write during rotation).
    BlindIndexNext { orig: usize, target: ColumnRef },
    /// Encrypt each element of the client's one-dimensional array
    /// parameter for `target` (`UNNEST($n::text[])`): an array of envelopes
    /// in the column's storage type. `elem` is the OID of the element type
    /// the client's array holds (its declared type's, or the one PostgreSQL
    /// would have inferred from the cast).
    EncryptArray {
        orig: usize,
        target: ColumnRef,
        tenant: ArrayTenant,
        elem: Oid,
    },
    /// The blind index of each element of the client's array parameter
    /// (`bytea[]`), under the current or the `next` key.
    BlindIndexArray {
        orig: usize,
        target: ColumnRef,
        next: bool,
        elem: Oid,
    },
    /// The role may not write plaintext: the parameter must be a well-formed
    /// envelope for `target`; send unchanged, otherwise reject at Bind.
    RequireEnvelope { orig: usize, target: ColumnRef },
}

impl ParamAction {
    /// The client's parameter this one is computed from.
    pub fn orig(&self) -> usize {
        match self {
            ParamAction::Copy { orig }
            | ParamAction::Encrypt { orig, .. }
            | ParamAction::BlindIndex { orig, .. }
            | ParamAction::BlindIndexNext { orig, .. }
            | ParamAction::EncryptArray { orig, .. }
            | ParamAction::BlindIndexArray { orig, .. }
            | ParamAction::RequireEnvelope { orig, .. } => *orig,
        }
    }
}

/// Statement kind (for metrics, audit and catalog refresh after DDL).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StatementKind {
    Select,
    Insert,
    Update,
    Delete,
    Copy,
    Explain,
    /// SQL `FETCH` from a cursor (see [`RewritePlan::fetch`]).
    Fetch,
    /// SQL `DECLARE … CURSOR FOR` a SELECT on protected tables.
    Declare,
    /// DDL mentioning a protected table: refresh the catalog afterwards.
    Ddl,
    Other,
}

/// How a statement uses a protected column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Use {
    Read,
    Search,
    Write,
}

/// A rewritten statement.
#[derive(Debug, Clone, PartialEq)]
pub struct RewritePlan {
    /// What kind of statement it is.
    pub kind: StatementKind,
    /// The statement to send, as text pieces and literal slots.
    pub sql: Vec<Segment>,
    /// The literals the proxy transforms, by slot number.
    pub literals: Vec<LiteralSlot>,
    /// Final statement's parameters: `$n` is `params[n-1]`. Empty in simple
    /// mode.
    pub params: Vec<ParamAction>,
    /// For ParameterDescription to authorized clients: client parameter
    /// (0-based) → plaintext type (and whether an array of it).
    pub param_type_overrides: Vec<(usize, PgType, bool)>,
    /// OIDs to send upstream in Parse for the final parameters (0 = let the
    /// server infer, as for every rewritten parameter).
    pub parse_param_types: Vec<Oid>,
    /// Protected columns the statement reads, searches or writes (audit).
    pub touched: Vec<(ColumnRef, Use)>,
    /// True when `sql` is the original text byte for byte.
    pub unchanged: bool,
    /// The byte ranges of the statement's text (relative to `source`)
    /// that pgveil replaced or inserted at, in order; every other byte of
    /// `sql` is the client's (`splice`).
    pub edits: Vec<Range<usize>>,
    /// Byte range of this statement in the text given to `plan`.
    pub source: Range<usize>,
    /// For a plain SELECT without `*` (no set operation, no INTO): per
    /// output column, the protected column it shows unchanged, `None` for
    /// anything else. A hint for asking PostgreSQL for binary `bytea`
    /// before the RowDescription arrives; the RowDescription is checked.
    pub result_columns: Option<Vec<Option<ColumnRef>>>,
}

impl RewritePlan {
    /// SQL `FETCH` (any direction and count; `MOVE` returns no rows): sent
    /// as written, and marked protected so that its result is shaped like a
    /// SELECT's. PostgreSQL describes a FETCH's columns with the table and
    /// column they come from (the cursor's target list, also after a WITH
    /// HOLD cursor outlives its transaction), so the backend decrypts the
    /// columns this role may read and masks the blind indexes it may not
    /// search exactly as for the SELECT the cursor runs. The cursor's query
    /// itself was planned (and refused or rewritten) at DECLARE.
    pub fn fetch(text: &str, source: Range<usize>) -> RewritePlan {
        RewritePlan {
            kind: StatementKind::Fetch,
            sql: vec![Segment::Text(text.to_string())],
            literals: vec![],
            params: vec![],
            param_type_overrides: vec![],
            parse_param_types: vec![],
            touched: vec![],
            unchanged: true,
            edits: vec![],
            source,
            result_columns: None,
        }
    }

    /// Render the statement, turning each literal slot into SQL text with
    /// `literal(index, slot)`.
    pub fn render(&self, mut literal: impl FnMut(usize, &LiteralSlot) -> String) -> String {
        let mut out = String::new();
        for s in &self.sql {
            match s {
                Segment::Text(t) => out.push_str(t),
                Segment::Literal(i) => out.push_str(&literal(*i, &self.literals[*i])),
            }
        }
        out
    }
}

/// COPY data format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyFormat {
    Text,
    Csv,
    Binary,
}

/// Which way a COPY's rows go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyDirection {
    /// `COPY … FROM STDIN`: the proxy transforms each data row.
    In,
    /// `COPY … TO`: ciphertext streams out like a SELECT result.
    Out,
}

/// What to do with one field of each incoming COPY row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyField {
    Plain,
    /// Encrypt; the tenant id (if the table has one) is the field at
    /// `tenant_field` of the same row.
    Encrypt {
        target: ColumnRef,
        tenant_field: Option<usize>,
    },
    RequireEnvelope {
        target: ColumnRef,
    },
}

/// A field of the rows a `COPY … TO STDOUT` sends that pgveil decrypts
/// for the role (it may `read` the column).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyDecrypt {
    /// The protected column the field shows unchanged.
    pub column: ColumnRef,
    /// The field holding the row's tenant id (tenant tables), when the
    /// COPY sends the tenant column: the envelope must be bound to it.
    /// Without it the envelope's own tenant is used, as for a SELECT.
    pub tenant_field: Option<usize>,
}

/// A COPY on a protected table.
#[derive(Debug, Clone, PartialEq)]
pub struct CopyPlan {
    /// The table's schema.
    pub schema: String,
    /// The table.
    pub table: String,
    /// The client's columns in data order (expanded from the catalog when
    /// the statement listed none; `None` when that was impossible, which
    /// only happens for COPY TO).
    pub columns: Option<Vec<String>>,
    /// Text, CSV or binary.
    pub format: CopyFormat,
    /// Field delimiter.
    pub delimiter: char,
    /// NULL marker (`\N` for text, empty for CSV by default).
    pub null: String,
    /// CSV `HEADER`: the first line names the columns.
    pub header: bool,
    /// CSV quote character.
    pub quote: char,
    /// CSV escape character.
    pub escape: char,
    /// FROM STDIN or TO.
    pub direction: CopyDirection,
    /// Statement to send upstream: for COPY FROM, the blind-index columns
    /// are appended to the column list.
    pub sql: String,
    /// Per client field (COPY FROM only).
    pub fields: Vec<CopyField>,
    /// Fields the proxy appends to every row, in order: (op, index of the
    /// client field it is computed from, target protected column).
    pub appended: Vec<(SlotOp, usize, ColumnRef)>,
    /// Names of the appended columns, in order (COPY FROM only).
    pub appended_columns: Vec<String>,
    /// CSV `FORCE_NOT_NULL` / `FORCE_NULL`: indexes of client fields.
    pub force_not_null: Vec<usize>,
    /// CSV `FORCE_NULL`: indexes of client fields.
    pub force_null: Vec<usize>,
    /// COPY TO STDOUT: per field of each row, what pgveil decrypts for the
    /// role. Empty when it decrypts nothing: the rows go out as PostgreSQL
    /// sends them (ciphertext).
    pub decrypt: Vec<Option<CopyDecrypt>>,
    /// CSV `FORCE_QUOTE` of a decrypting COPY TO: indexes of fields.
    pub force_quote: Vec<usize>,
    /// The statement's byte range in the client's message.
    pub source: Range<usize>,
}

impl CopyPlan {
    /// Whether the rows of this COPY TO STDOUT are decrypted for the role.
    pub fn decrypts(&self) -> bool {
        self.direction == CopyDirection::Out && self.decrypt.iter().any(Option::is_some)
    }

    /// `schema.table` for messages (for `COPY (query)`, the table of the
    /// first column decrypted).
    pub fn qualified(&self) -> String {
        format!("{}.{}", self.schema, self.table)
    }
}

/// A view over protected tables, as the analyzer sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ViewDef {
    /// The view's schema.
    pub schema: String,
    /// The view's name.
    pub name: String,
    /// Its columns in order, each with the base column it shows unchanged.
    pub columns: Vec<(String, Option<ColumnRef>)>,
    /// Columns computed from protected data in a way pgveil cannot map
    /// (see [`crate::policy::ViewColumn::unknown`]).
    pub unknown: Vec<String>,
    /// The protected columns whose blind index the view's rows may carry
    /// (see [`crate::policy::Catalog::view_blind_indexes`]): an unknown
    /// column is shown as stored only to a role that may search them all.
    pub blind_indexes: Vec<ColumnRef>,
}

/// Plans statements against a policy (and, optionally, the catalog: views
/// over protected tables and table column orders).
#[derive(Debug, Clone)]
pub struct Analyzer {
    /// The policy it plans for.
    pub(crate) policy: Arc<Policy>,
    /// Views by (schema, name).
    pub(crate) views: HashMap<(String, String), ViewDef>,
    /// Column order of protected tables (from the catalog).
    pub(crate) table_columns: HashMap<(String, String), Vec<String>>,
    /// Inheritance children and partitions of protected tables: (schema,
    /// name) → the policy table they are planned as, or the refusal.
    pub(crate) children: HashMap<(String, String), crate::policy::catalog::ChildOf>,
    /// How each protected column stores ciphertext (from the catalog;
    /// `bytea` when unknown: a rewrite that names the wrong storage type
    /// fails in PostgreSQL, it never stores plaintext).
    pub(crate) storage: HashMap<ColumnRef, Storage>,
    names: lex::NameSet,
}

impl Analyzer {
    /// An analyzer for `policy` without a catalog (no views, no column
    /// orders).
    pub fn new(policy: Arc<Policy>) -> Analyzer {
        let names = lex::NameSet::new(
            policy
                .tables
                .iter()
                .map(|t| t.table.clone())
                .chain(rewrite::READS_ANY_TABLE.iter().map(|n| n.to_string()))
                .chain(fetch_word(&policy)),
        );
        Analyzer {
            policy,
            views: HashMap::new(),
            table_columns: HashMap::new(),
            children: HashMap::new(),
            storage: HashMap::new(),
            names,
        }
    }

    /// An analyzer that also knows the views over protected tables and the
    /// tables' column order (for `INSERT` / `COPY` without a column list).
    pub fn with_catalog(policy: Arc<Policy>, catalog: &Catalog) -> Analyzer {
        let mut a = Analyzer::new(policy);
        for ((schema, name), cols) in &catalog.views {
            a.views.insert(
                (schema.clone(), name.clone()),
                ViewDef {
                    schema: schema.clone(),
                    name: name.clone(),
                    columns: cols
                        .iter()
                        .map(|c| (c.name.clone(), c.base.clone()))
                        .collect(),
                    unknown: cols
                        .iter()
                        .filter(|c| c.unknown)
                        .map(|c| c.name.clone())
                        .collect(),
                    blind_indexes: catalog
                        .view_blind_indexes
                        .get(&(schema.clone(), name.clone()))
                        .cloned()
                        .unwrap_or_default(),
                },
            );
        }
        a.children = catalog.children.clone();
        for attr in catalog.protected.values() {
            a.storage.insert(attr.column.clone(), attr.storage);
        }
        for t in &a.policy.tables {
            if let Some(rel) = catalog.relation(&t.schema, &t.table) {
                a.table_columns
                    .insert((t.schema.clone(), t.table.clone()), rel.column_names());
            }
        }
        let mut names: Vec<String> = a.policy.tables.iter().map(|t| t.table.clone()).collect();
        names.extend(a.views.keys().map(|(_, n)| n.clone()));
        names.extend(a.children.keys().map(|(_, n)| n.clone()));
        names.extend(rewrite::READS_ANY_TABLE.iter().map(|n| n.to_string()));
        names.extend(fetch_word(&a.policy));
        a.names = lex::NameSet::new(names);
        a
    }

    /// The policy it plans for.
    pub fn policy(&self) -> &Arc<Policy> {
        &self.policy
    }

    /// Fast pre-check, no parse: could `sql` mention a protected table or a
    /// view over one (or rename the schema of a protected table: the word
    /// SCHEMA counts too)? False positives are possible, false negatives
    /// are not (names inside strings, comments and quoted identifiers
    /// count).
    pub fn may_touch_protected(&self, sql: &str) -> bool {
        self.names.matches(sql) || SCHEMA_WORD.matches(sql)
    }

    /// Plan every statement in `sql` for login role `role`.
    pub fn plan(&self, sql: &str, role: &str, mode: Mode<'_>) -> Vec<StatementPlan> {
        match mode {
            Mode::Simple => split_statements(sql)
                .into_iter()
                .map(|r| self.plan_one(sql, r, role, None))
                .collect(),
            Mode::Extended { param_types } => {
                let ranges = split_statements(sql);
                if ranges.len() > 1 {
                    if self.may_touch_protected(sql) {
                        return vec![StatementPlan::Reject {
                            sqlstate: Reject::UNSUPPORTED,
                            message:
                                "pgveil: a prepared statement must contain exactly one statement"
                                    .into(),
                        }];
                    }
                    return vec![StatementPlan::Passthrough {
                        sql: sql.to_string(),
                    }];
                }
                let r = ranges.into_iter().next().unwrap_or(0..0);
                // Extended mode keeps the exact text of a lone statement.
                let r = if self.may_touch_protected(sql) {
                    r
                } else {
                    0..sql.len()
                };
                vec![self.plan_one(sql, r, role, Some(param_types))]
            }
        }
    }

    fn plan_one(
        &self,
        full: &str,
        r: Range<usize>,
        role: &str,
        params: Option<&[Oid]>,
    ) -> StatementPlan {
        let text = &full[r.clone()];
        if !self.names.matches(text) {
            // Only the word SCHEMA (or nothing) matched: the one statement
            // of that kind pgveil refuses is a rename of a protected
            // table's schema, which would move the table out of the policy.
            if SCHEMA_WORD.matches(text)
                && let Some(r) = rewrite::renames_protected_schema(self, text)
            {
                return StatementPlan::reject(r);
            }
            return StatementPlan::Passthrough {
                sql: text.to_string(),
            };
        }
        if rewrite::is_fetch(text) {
            return match (rewrite::plain_fetch(text), params) {
                (false, _) => StatementPlan::reject(Reject::unsupported(
                    "pgveil: this FETCH is not of the form FETCH [direction] [count] [FROM | IN] cursor, so pgveil cannot be sure what PostgreSQL reads: write it plainly, one statement per FETCH",
                )),
                // A prepared FETCH's columns are fixed at Bind, its rows read
                // at Execute from whatever cursor then has the name.
                (true, Some(_)) => StatementPlan::reject(Reject::unsupported(
                    "pgveil: a prepared FETCH is not supported (PostgreSQL describes its rows when it is bound, but reads the cursor when it runs): send FETCH as a simple query (psycopg's text cursors do), or read a protocol portal with a row limit (your driver's fetch size)",
                )),
                (true, None) => StatementPlan::Rewrite(Arc::new(RewritePlan::fetch(text, r))),
            };
        }
        rewrite::plan_statement(self, text, r, role, params)
    }
}

/// The word FETCH joins the pre-check while a policy protects anything: a
/// SQL `FETCH` from a cursor declared over protected tables names no table,
/// but its rows are protected data. It is planned as the cursor's SELECT
/// would be at result time (see [`RewritePlan::fetch`]).
fn fetch_word(policy: &Policy) -> Option<String> {
    (!policy.tables.is_empty()).then(|| "fetch".to_string())
}

/// The word SCHEMA, for the pre-check (see [`Analyzer::may_touch_protected`]).
static SCHEMA_WORD: std::sync::LazyLock<lex::NameSet> =
    std::sync::LazyLock::new(|| lex::NameSet::new(["schema".to_string()]));

#[cfg(test)]
mod bulk_tests;
#[cfg(test)]
mod copy_out_tests;
#[cfg(test)]
mod refusal_tests;
#[cfg(test)]
mod review_tests;
#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod write_tests;
