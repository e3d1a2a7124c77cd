//! Statement analysis and rewrite over sqlparser's AST.
//!
//! The walker classifies every expression: a bare reference to a protected
//! column (`Class::Prot`), a parameter, a literal, or anything else
//! (`Class::Plain`). Only a few contexts accept a protected column: the
//! select list and RETURNING (read as is), `IS [NOT] NULL`, `count(col)`,
//! and equality lookups (`=`, `<>`, `IN`, `= ANY`), which are rewritten to
//! the blind-index column. Everything else that sees a protected column is
//! rejected. Expression kinds the walker does not model are checked by a
//! generic visitor that rejects them if they mention a protected column or
//! relation (fail closed).
//!
//! This file holds the walker's core: [`plan_statement`] (the checks before
//! the walk, then the walk, then the plan), the walker [`Cx`] and its state,
//! the types the walk passes around, and the dispatch on the statement
//! (`Cx::top`). The walk itself is split by concern, each an `impl Cx`
//! block in a child module:
//!
//! - `guard`: checks on PostgreSQL's tokens before the walk, and FETCH;
//! - `scope`: name resolution (relations, protected and tenant columns,
//!   whole-row references);
//! - `expr`: the expression walk and the equality lookups;
//! - `select`, `from`: queries, select lists, RETURNING; FROM and joins;
//! - `exposure`: blind indexes and unmappable columns leaving the masked
//!   path;
//! - `insert`, `bulk`, `update`: the writes;
//! - `copy`: COPY (and `copy/options`, COPY options as PostgreSQL reads
//!   them);
//! - `ddl`: DDL refusals;
//! - `plan`: parameter actions, literal slots and the finished plan.
//!
//! Invariant: a statement pgveil changes is the client's text with edits
//! spliced in at PostgreSQL token boundaries (the AST is never printed for
//! sending), and the values pgveil computes reach PostgreSQL only through
//! literal slots and parameters. The one statement it writes itself is the
//! `COPY … FROM STDIN` it sends for a COPY into a protected table (`copy`),
//! built from the table name, columns and options it read.

use std::collections::{HashMap, HashSet};
use std::ops::{ControlFlow, Range};

use sqlparser::ast::{
    Expr, Ident, ObjectName, ObjectNamePart, SelectItem, SetExpr, Statement, Value, ValueWithSpan,
    visit_expressions,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use super::pglex;
use super::{
    Analyzer, ColumnRef, CopyPlan, LiteralSlot, ParamAction, Reject, SlotOp, StatementKind,
    StatementPlan, TenantSource, Use, ViewDef, quote_ident,
};
use crate::crypto::types::{Oid, PgType};
use crate::policy::{Access, ColumnPolicy, TablePolicy};

mod bulk;
mod copy;
mod ddl;
mod exposure;
mod expr;
mod from;
mod guard;
mod insert;
mod plan;
mod scope;
mod select;
mod update;

use ddl::in_temp_schema;
pub(crate) use ddl::renames_protected_schema;
pub(crate) use guard::{READS_ANY_TABLE, is_fetch, plain_fetch};
use guard::{keyword_as_relation, names_blind_index, reads_any_table};

/// The walk's result: a plan, or the refusal that becomes the statement's
/// error.
type R<T> = Result<T, Reject>;

/// Plan one statement of `text` (`source`: its byte range in the message)
/// for `role`; `params` are the parameter types declared in Parse (`None`
/// for the simple query protocol).
pub(crate) fn plan_statement(
    an: &Analyzer,
    text: &str,
    source: Range<usize>,
    role: &str,
    params: Option<&[Oid]>,
) -> StatementPlan {
    // The AST below is only worth reasoning about if sqlparser reads the
    // text exactly as PostgreSQL will.
    if pglex::agree(text).is_err() {
        return StatementPlan::reject(Reject::unsupported(format!(
            "pgveil: this statement mentions protected table {} but pgveil cannot be sure PostgreSQL reads its literals, identifiers and comments as pgveil does (string continuation across lines, UESCAPE, over-long identifiers, unterminated quotes or comments, characters PostgreSQL rejects), so it was not sent: send values as bind parameters and write literals plainly",
            mentioned(an, text)
        )));
    }
    if let Some(r) = names_blind_index(an, text, role) {
        return StatementPlan::reject(r);
    }
    if let Some(f) = reads_any_table(text) {
        return StatementPlan::reject(Reject::unsupported(format!(
            "pgveil: {f} reads tables the statement does not name (SQL given as a string, whole tables or schemas, or every column's most common values), so pgveil cannot plan it while a policy protects columns: query the tables with plain SQL, or run it directly on PostgreSQL as a role that may see ciphertext and blind indexes"
        )));
    }
    let mut stmts = match Parser::parse_sql(&PostgreSqlDialect {}, text) {
        Ok(s) => s,
        Err(_) => {
            return StatementPlan::reject(Reject::unsupported(format!(
                "pgveil: this statement mentions protected table {} but pgveil cannot parse it, so it cannot prove it safe: rewrite it in plain SQL (no procedural blocks or vendor syntax) or run it without pgveil on a copy without protected data",
                mentioned(an, text)
            )));
        }
    };
    if stmts.len() != 1 {
        return StatementPlan::reject(Reject::unsupported(
            "pgveil: expected exactly one statement here",
        ));
    }
    let mut stmt = stmts.pop().expect("one statement");
    if let Some(kw) = keyword_as_relation(&stmt) {
        return StatementPlan::reject(Reject::unsupported(format!(
            "pgveil: this statement mentions protected table {} and uses the reserved word {kw} where pgveil's parser reads a table name (PostgreSQL reads it as the keyword: `ONLY users` is table users without its children, not a table named only with alias users), so pgveil cannot be sure which table it writes or reads: leave out ONLY (children and partitions of a protected table are protected as it) or quote the name",
            mentioned(an, text)
        )));
    }
    let mut cx = Cx::new(an, role, params, text);
    cx.before = Some(super::splice::Before::of(text, &mut stmt));
    let res = cx.top(&mut stmt, text, source.clone());
    match res {
        Err(r) => StatementPlan::reject(r),
        Ok(Top::Passthrough) => StatementPlan::Passthrough {
            sql: text.to_string(),
        },
        Ok(Top::Copy(p)) => StatementPlan::Copy(std::sync::Arc::from(p)),
        Ok(Top::Done(kind)) => match cx.finish(&stmt, text, source, kind) {
            Ok(p) => StatementPlan::Rewrite(std::sync::Arc::new(p)),
            Err(r) => StatementPlan::reject(r),
        },
    }
}

/// The first protected name the text mentions (for messages).
fn mentioned(an: &Analyzer, text: &str) -> String {
    for t in &an.policy.tables {
        if super::lex::NameSet::new([t.table.clone()]).matches(text) {
            return t.qualified();
        }
    }
    for (s, t) in an.children.keys() {
        if super::lex::NameSet::new([t.clone()]).matches(text) {
            return format!("{s}.{t} (a child or parent of a protected table)");
        }
    }
    for v in an.views.values() {
        if super::lex::NameSet::new([v.name.clone()]).matches(text) {
            return format!("{}.{} (a view over protected data)", v.schema, v.name);
        }
    }
    "(unknown)".into()
}

/// What the dispatch on a statement decided.
enum Top {
    /// Sent as written: nothing in it reads or writes protected data.
    Passthrough,
    /// A COPY pgveil transforms row by row.
    Copy(Box<CopyPlan>),
    /// Walked (and possibly rewritten): [`Cx::finish`] makes the plan.
    Done(StatementKind),
}

/// How a protected column was reached.
#[derive(Debug, Clone)]
enum Via<'a> {
    /// Directly on its table: the blind index is a sibling column.
    Base,
    /// Through a view over it.
    View(&'a ViewDef),
    /// Through a subquery or CTE output.
    Derived,
}

/// A reference to a protected column, and how it was reached.
#[derive(Debug, Clone)]
struct ProtCol<'a> {
    col: ColumnRef,
    via: Via<'a>,
}

/// One output column of a query, subquery, CTE or `*` expansion.
#[derive(Debug, Clone, Default)]
struct OutCol<'a> {
    /// The output's name (its alias, or a bare column's name), if any.
    name: Option<String>,
    /// It is this protected column.
    prot: Option<ProtCol<'a>>,
    /// It is the blind index (current or `next`) of this protected column.
    bidx: Option<ColumnRef>,
    /// It is the tenant column of its protected table, unchanged (the row's
    /// tenant id, which a COPY TO checks envelopes against).
    tenant_of: Option<ColumnRef>,
    /// A view column pgveil cannot map: it may hold any protected data.
    unknown: bool,
    /// Stands for the rest of a `*` over a protected table whose column
    /// list pgveil does not know (no catalog): zero or more columns, so
    /// positions after it (ordinals, column aliases) are unknown.
    many: bool,
    /// Stands for `*` over a relation pgveil does not know the columns of
    /// (a plain table, a FROM function, an unqualified name it cannot
    /// resolve): zero or more unprotected columns, so the positions of the
    /// outputs after it are unknown.
    opaque: bool,
}

/// What a relation in scope is.
#[derive(Debug, Clone)]
enum RelKind<'a> {
    /// A policy table (or a child or partition of one, planned as it).
    Table(&'a TablePolicy),
    /// A view over protected data.
    View(&'a ViewDef),
    /// A subquery or CTE, by its output columns.
    Derived(std::rc::Rc<Vec<OutCol<'a>>>),
    /// Anything else: no protected data pgveil knows of.
    Plain,
}

/// A relation of a FROM list (or a write's target).
#[derive(Debug, Clone)]
struct Rel<'a> {
    /// Alias if given (then the only name that qualifies its columns).
    alias: Option<String>,
    /// Its schema, when known (a policy table's, or written).
    schema: Option<String>,
    /// Its own name (empty for a subquery).
    name: String,
    kind: RelKind<'a>,
}

/// One level of name scope: the relations of a FROM list and the CTEs of a
/// WITH. Scopes are passed innermost last; names resolve innermost first.
#[derive(Debug, Clone, Default)]
struct Scope<'a> {
    rels: Vec<Rel<'a>>,
    ctes: Vec<(String, RelKind<'a>)>,
}

/// What an expression is, as far as the walk cares.
#[derive(Debug, Clone)]
enum Class<'a> {
    /// Anything without protected data (computed, a plain column).
    Plain,
    /// A bare reference to a protected column.
    Prot(ProtCol<'a>),
    /// Client parameter `$n` (0-based index).
    Param(usize),
    /// A literal (`None`: NULL).
    Lit(Option<String>),
    /// The `DEFAULT` keyword.
    Default,
}

/// A value written to a protected column.
#[derive(Debug, Clone)]
enum WVal {
    Param(usize),
    Lit(String),
    Null,
    Default,
}

/// The walker: one per statement planned. It reads the policy and catalog
/// through `an` and collects the plan as it walks (and rewrites) the AST.
struct Cx<'a> {
    /// The policy, views, children and table columns the plan is made for.
    an: &'a Analyzer,
    /// The login role whose access the plan applies.
    role: &'a str,
    /// Extended query protocol (Parse): `$n` parameters are allowed.
    extended: bool,
    /// The parameter types Parse declared.
    client_types: &'a [Oid],
    /// The client's parameters (declared, or the highest `$n` used):
    /// parameters pgveil appends are numbered after them.
    n_client: usize,
    /// The placeholder prefix of literal slots, chosen not to occur in the
    /// client's text.
    marker: String,
    /// Literal values pgveil encrypts or blind-indexes, by slot number.
    literals: Vec<LiteralSlot>,
    /// Parameters pgveil appends (blind indexes of client parameters).
    appended: Vec<ParamAction>,
    /// Client parameters (0-based) whose value pgveil replaces in place.
    inplace: HashMap<usize, ParamAction>,
    /// Each appended action's parameter index, so it is appended once.
    extra: HashMap<ParamAction, usize>,
    /// Client parameters used as plain values (a parameter may not be
    /// both plain and protected).
    plain_params: HashSet<usize>,
    /// Client parameter → plaintext type (and array) for
    /// ParameterDescription.
    overrides: Vec<(usize, PgType, bool)>,
    /// Protected columns read, searched or written (audit).
    touched: Vec<(ColumnRef, Use)>,
    /// The walk changed the AST: the statement is spliced.
    changed: bool,
    /// [`RewritePlan::result_columns`](super::RewritePlan) of a plain
    /// SELECT.
    result_columns: Option<Vec<Option<ColumnRef>>>,
    /// The statement as parsed, before the rewrite changed it: the edits
    /// are spliced into the client's text from its difference with the
    /// rewritten AST (`super::splice`).
    before: Option<super::splice::Before>,
    /// Spans of the client's text the splice replaced.
    edits: Vec<Range<usize>>,
    /// Set by `top` for a plain SELECT statement and taken by the first
    /// `select`: only that select list may show view columns pgveil cannot
    /// map (as stored); everywhere else they are refused.
    outer_select: bool,
}

/// An identifier as PostgreSQL folds it: lower case unless quoted.
fn norm(id: &Ident) -> String {
    if id.quote_style.is_some() {
        id.value.clone()
    } else {
        id.value.to_ascii_lowercase()
    }
}

/// The folded parts of a qualified name.
fn name_parts(n: &ObjectName) -> Vec<String> {
    n.0.iter()
        .map(|p| match p {
            ObjectNamePart::Identifier(i) => norm(i),
            other => other.to_string(),
        })
        .collect()
}

/// An identifier for `name`, quoted when PostgreSQL needs it quoted.
fn make_ident(name: &str) -> Ident {
    if quote_ident(name).starts_with('"') {
        Ident::with_quote('"', name)
    } else {
        Ident::new(name)
    }
}

/// A placeholder expression (`$n` or a literal slot's marker).
fn placeholder(s: String) -> Expr {
    Expr::Value(ValueWithSpan::from(Value::Placeholder(s)))
}

/// `NULL`.
fn null_expr() -> Expr {
    Expr::Value(ValueWithSpan::from(Value::Null))
}

/// Strip parentheses.
fn strip_nested(e: &mut Expr) -> &mut Expr {
    match e {
        Expr::Nested(inner) => strip_nested(inner),
        other => other,
    }
}

impl<'a> Cx<'a> {
    /// A walker for a statement of `text` (`params`: as for
    /// [`plan_statement`]).
    fn new(an: &'a Analyzer, role: &'a str, params: Option<&'a [Oid]>, text: &str) -> Cx<'a> {
        let mut marker = String::from("__pgv_slot_");
        while text.contains(marker.as_str()) {
            marker.push('x');
        }
        Cx {
            an,
            role,
            extended: params.is_some(),
            client_types: params.unwrap_or(&[]),
            n_client: params.map_or(0, |p| p.len()),
            marker,
            literals: vec![],
            appended: vec![],
            inplace: HashMap::new(),
            extra: HashMap::new(),
            plain_params: HashSet::new(),
            overrides: vec![],
            touched: vec![],
            changed: false,
            result_columns: None,
            before: None,
            edits: vec![],
            outer_select: false,
        }
    }

    /// `c` used where a protected column is not allowed: refused as `what`
    /// (with the alternative `alt`) if it is one; a parameter is marked
    /// plain.
    fn plain(&mut self, c: Class<'a>, what: &str, alt: &str) -> R<()> {
        match c {
            Class::Prot(p) => Err(self.unsupported_on(&p, what, alt)),
            Class::Param(i) => {
                self.plain_params.insert(i);
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// The refusal of `what` on protected column `p`, with the alternative.
    fn unsupported_on(&self, p: &ProtCol, what: &str, alt: &str) -> Reject {
        Reject::unsupported(format!(
            "pgveil: {what} on protected column {} is not supported: {alt}",
            p.col
        ))
    }

    /// The policy of a resolved protected column.
    fn col_policy(&self, c: &ColumnRef) -> (&'a TablePolicy, &'a ColumnPolicy) {
        let t = self
            .an
            .policy
            .table(&c.schema, &c.table)
            .expect("resolved column belongs to a policy table");
        let cp = t.column(&c.column).expect("resolved column is protected");
        (t, cp)
    }

    /// The role's access to a protected column (none if not granted).
    fn access(&self, cp: &ColumnPolicy) -> Access {
        self.an
            .policy
            .column_access(self.role, cp)
            .unwrap_or_default()
    }

    /// Walk a whole statement: number the parameters, then dispatch on its
    /// kind (queries, writes, COPY, EXPLAIN, DECLARE, DDL; statements that
    /// cannot carry protected data pass; the rest is refused).
    fn top(&mut self, stmt: &mut Statement, text: &str, source: Range<usize>) -> R<Top> {
        // Highest $n used, so appended parameters come after the client's.
        let mut max = 0usize;
        let mut used = HashSet::new();
        let _ = visit_expressions(&*stmt, |e| {
            if let Expr::Value(v) = e
                && let Value::Placeholder(s) = &v.value
                && let Some(n) = s.strip_prefix('$').and_then(|d| d.parse::<usize>().ok())
                && n >= 1
            {
                max = max.max(n);
                used.insert(n);
            }
            ControlFlow::<()>::Continue(())
        });
        // PostgreSQL needs a type for every parameter up to the highest:
        // from its use in the statement or declared in Parse. A statement
        // with more gaps than declared types cannot be prepared; refusing it
        // here also keeps a plan proportional to the message (`$2000000000`
        // would otherwise make two billion parameter slots).
        if max > used.len() + self.client_types.len() {
            return Err(Reject::unsupported(format!(
                "pgveil: this statement uses ${max} but not every parameter below it, and Parse declares {} parameter types: PostgreSQL could not determine the others' types (declare them in Parse, or number the parameters without gaps)",
                self.client_types.len()
            )));
        }
        self.n_client = self.n_client.max(max);
        let kind = match stmt {
            Statement::Query(q) => {
                if let SetExpr::Select(sel) = q.body.as_ref()
                    && let Some(into) = &sel.into
                {
                    let probe = q.clone();
                    let in_temp = into.targets.iter().any(|t| {
                        t.to_string()
                            .trim_start_matches('"')
                            .to_ascii_lowercase()
                            .starts_with("pg_temp")
                    });
                    self.refuse_temporary(
                        into.temporary || in_temp,
                        "table (SELECT … INTO)",
                        &*probe,
                        &[],
                    )?;
                }
                self.outer_select = q.with.is_none()
                    && matches!(q.body.as_ref(), SetExpr::Select(sel) if sel.into.is_none());
                let outs = self.query(q, &[])?;
                if matches!(q.body.as_ref(), SetExpr::Select(s) if s.into.is_some()) {
                    Self::no_protected_copy(&outs, "SELECT … INTO")?;
                }
                if let SetExpr::Select(s) = q.body.as_ref()
                    && s.into.is_none()
                    && outs.len() == s.projection.len()
                    && s.projection.iter().all(|i| {
                        matches!(
                            i,
                            SelectItem::UnnamedExpr(_) | SelectItem::ExprWithAlias { .. }
                        )
                    })
                {
                    self.result_columns = Some(
                        outs.iter()
                            .map(|o| o.prot.as_ref().map(|p| p.col.clone()))
                            .collect(),
                    );
                }
                StatementKind::Select
            }
            Statement::Insert(_) => {
                self.dml(stmt, &[])?;
                StatementKind::Insert
            }
            Statement::Update(_) => {
                self.dml(stmt, &[])?;
                StatementKind::Update
            }
            Statement::Delete(_) => {
                self.dml(stmt, &[])?;
                StatementKind::Delete
            }
            Statement::Copy { .. } => return self.copy(stmt, text, source),
            Statement::Explain { statement, .. } => {
                match statement.as_mut() {
                    Statement::Query(q) => {
                        self.query(q, &[])?;
                    }
                    s @ (Statement::Insert(_) | Statement::Update(_) | Statement::Delete(_)) => {
                        self.dml(s, &[])?;
                        // EXPLAIN VERBOSE prints the values pgveil computed
                        // (the guess's blind index among them) as text,
                        // which no result masking reaches; EXPLAIN ANALYZE
                        // would also run the write.
                        if let Some((c, _)) = self.touched.iter().find(|(_, u)| *u == Use::Write) {
                            return Err(Reject::unsupported(format!(
                                "pgveil: EXPLAIN of a statement that writes protected column {c} is not supported: its output would show the envelope and blind index pgveil computed; EXPLAIN the statement on a copy without protected data, or explain the SELECT that finds the rows"
                            )));
                        }
                    }
                    _ => {
                        return Err(Reject::unsupported(format!(
                            "pgveil: EXPLAIN of this statement on protected table {} is not supported",
                            mentioned(self.an, text)
                        )));
                    }
                }
                StatementKind::Explain
            }
            Statement::Declare { stmts } => {
                for d in stmts.iter_mut() {
                    match &mut d.for_query {
                        Some(q) if d.assignment.is_none() => {
                            // The rules of the SELECT it runs (a FETCH from
                            // the cursor is shaped by its row description,
                            // see `RewritePlan::fetch`), and no blind index
                            // a role may not search: a cursor is also read
                            // where no row description reaches pgveil
                            // (dynamic FETCH in a function or DO block) or
                            // through a portal description PostgreSQL fixed
                            // before the cursor was redeclared.
                            let outs = self.query(q, &[])?;
                            for o in &outs {
                                if let Some(p) = &o.bidx
                                    && !self.searches_all(std::slice::from_ref(p))
                                {
                                    return Err(Reject::privilege(format!(
                                        "pgveil: a cursor (DECLARE … CURSOR FOR) would carry the blind index of protected column {p}, which role {} may not search: list the columns you need without it (instead of `*`)",
                                        self.role
                                    )));
                                }
                            }
                        }
                        _ => {
                            return Err(Reject::unsupported(format!(
                                "pgveil: this DECLARE mentions protected table {} and is not supported: declare a cursor FOR a SELECT",
                                mentioned(self.an, text)
                            )));
                        }
                    }
                }
                StatementKind::Declare
            }
            Statement::CreateView(v) => {
                let probe = v.query.clone();
                self.refuse_temporary(
                    v.temporary || in_temp_schema(&v.name),
                    "view",
                    &*probe,
                    &[],
                )?;
                let outs = self.query(&mut v.query, &[])?;
                if v.materialized {
                    Self::no_protected_copy(&outs, "CREATE MATERIALIZED VIEW")?;
                }
                StatementKind::Ddl
            }
            Statement::CreateTable(ct) => {
                let probe = ct.clone();
                let parents: Vec<ObjectName> = ct
                    .inherits
                    .iter()
                    .flatten()
                    .chain(ct.partition_of.iter())
                    .cloned()
                    .collect();
                self.refuse_temporary(
                    ct.temporary || in_temp_schema(&ct.name),
                    "table",
                    &probe,
                    &parents,
                )?;
                if let Some(q) = &mut ct.query {
                    let outs = self.query(q, &[])?;
                    Self::no_protected_copy(&outs, "CREATE TABLE … AS")?;
                } else {
                    let probe = ct.clone();
                    self.ddl_exprs(&probe)?;
                }
                StatementKind::Ddl
            }
            Statement::AlterTable(at) => {
                self.alter_table(at)?;
                StatementKind::Ddl
            }
            Statement::CreateIndex(_)
            | Statement::Drop { .. }
            | Statement::Truncate(_)
            | Statement::Grant(_)
            | Statement::Revoke(_)
            | Statement::Comment { .. }
            | Statement::Analyze(_)
            | Statement::Vacuum(_)
            | Statement::Lock(_)
            | Statement::AlterIndex { .. }
            | Statement::RenameTable(_) => {
                let probe = stmt.clone();
                self.ddl_exprs(&probe)?;
                StatementKind::Ddl
            }
            Statement::Set(_)
            | Statement::ShowVariable { .. }
            | Statement::StartTransaction { .. }
            | Statement::Commit { .. }
            | Statement::Rollback { .. }
            | Statement::Savepoint { .. }
            | Statement::ReleaseSavepoint { .. }
            | Statement::Discard { .. }
            | Statement::Deallocate { .. }
            | Statement::Reset(_)
            | Statement::LISTEN { .. }
            | Statement::UNLISTEN { .. }
            | Statement::NOTIFY { .. } => return Ok(Top::Passthrough),
            Statement::Prepare { .. } | Statement::Execute { .. } => {
                return Err(Reject::unsupported(format!(
                    "pgveil: SQL-level PREPARE/EXECUTE on protected table {} is not supported: use the extended query protocol (your driver's prepared statements) instead",
                    mentioned(self.an, text)
                )));
            }
            Statement::Call(_) => {
                return Err(Reject::unsupported(format!(
                    "pgveil: CALL in a statement that mentions protected table {} is not supported: pgveil cannot see what the procedure writes; write through INSERT/UPDATE instead",
                    mentioned(self.an, text)
                )));
            }
            Statement::CreateFunction(_)
            | Statement::CreateProcedure { .. }
            | Statement::CreateTrigger(_) => {
                return Err(Reject::unsupported(format!(
                    "pgveil: a function, procedure or trigger body that mentions protected table {} is not supported: pgveil cannot see the values inside it, and PostgreSQL would store them as written; send the statements themselves through pgveil (Sequelize's findOrCreate creates such a function: use findCreateFind, see docs/orm.md)",
                    mentioned(self.an, text)
                )));
            }
            Statement::Merge(_) => {
                return Err(Reject::unsupported(format!(
                    "pgveil: MERGE on protected table {} is not supported: use INSERT … ON CONFLICT or UPDATE",
                    mentioned(self.an, text)
                )));
            }
            _ => {
                // Name the statement by its leading keywords only: a print
                // of the statement could carry a literal.
                let kw = leading_keywords(text);
                return Err(Reject::unsupported(format!(
                    "pgveil: {kw} statements that mention protected table {} are not supported: pgveil cannot prove them safe",
                    mentioned(self.an, text)
                )));
            }
        };
        Ok(Top::Done(kind))
    }

    /// INSERT / UPDATE / DELETE, also inside a CTE. Returns RETURNING outputs.
    fn dml(&mut self, stmt: &mut Statement, sc: &[Scope<'a>]) -> R<Vec<OutCol<'a>>> {
        match stmt {
            Statement::Insert(ins) => self.insert(ins, sc),
            Statement::Update(up) => self.update(up, sc),
            Statement::Delete(del) => self.delete(del, sc),
            _ => Err(Reject::unsupported(
                "pgveil: unsupported data-modifying statement",
            )),
        }
    }
}

impl Cx<'_> {
    /// [`write_target`], and the column must exist in the table as the
    /// catalog knows it: a write to a column PostgreSQL does not have
    /// (`"Email"` for `email`, a typo) fails there, and PostgreSQL logs
    /// the failing statement with its values, so pgveil refuses it before
    /// any value is sent. A table whose columns pgveil has not loaded is
    /// left to PostgreSQL.
    fn written_column(&self, n: &ObjectName, t: &TablePolicy) -> R<String> {
        let qualified = t.qualified();
        let c = write_target(n, &qualified)?;
        if let Some(cols) = self
            .an
            .table_columns
            .get(&(t.schema.clone(), t.table.clone()))
            && !cols.contains(&c)
        {
            return Err(Reject {
                sqlstate: "42703",
                message: format!(
                    "pgveil: column {c} of protected table {qualified} does not exist (the statement was not sent, so its values did not reach PostgreSQL or its log): check the name; unquoted names are lower-cased, quoted ones are taken as written"
                ),
            });
        }
        Ok(c)
    }
}

/// The column a write target (an INSERT column list entry, an UPDATE SET
/// target) names. PostgreSQL reads `a.b` and `a[1]` there as field or
/// element `b` of column `a` (never as a qualified name): pgveil does not
/// write into parts of columns of a protected table, so any such target is
/// refused rather than guessed.
fn write_target(n: &ObjectName, table: &str) -> R<String> {
    match name_parts(n).as_slice() {
        [c] => Ok(c.clone()),
        parts => Err(Reject::unsupported(format!(
            "pgveil: writing a field or element of column {} of protected table {table} ({} written with a dot) is not supported: write whole columns",
            parts.first().cloned().unwrap_or_default(),
            parts.join(".")
        ))),
    }
}

/// Up to two leading words of a statement that are plain keywords (ASCII
/// letters and `_`), upper-cased; never a literal or an identifier in
/// quotes.
fn leading_keywords(text: &str) -> String {
    let mut words = vec![];
    for t in pglex::tokens(text).into_iter().take(2) {
        let w = &text[t.span];
        if t.kind != pglex::Kind::Ident || !w.bytes().all(|c| c.is_ascii_alphabetic() || c == b'_')
        {
            break;
        }
        words.push(w.to_ascii_uppercase());
    }
    if words.is_empty() {
        "these".into()
    } else {
        words.join(" ")
    }
}

/// A refusal for a state the walk should never reach.
fn internal() -> Reject {
    Reject::unsupported("pgveil: internal error while rewriting this statement; it was not sent")
}
