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

use std::collections::{HashMap, HashSet};
use std::ops::{ControlFlow, Range};

use sqlparser::ast::{
    Expr, Ident, ObjectName, ObjectNamePart, SelectItem, SetExpr, Statement, Value, ValueWithSpan,
    visit_expressions, visit_relations,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use super::{
    Analyzer, ColumnRef, CopyPlan, LiteralSlot, ParamAction, Reject, RewritePlan, Segment, SlotOp,
    StatementKind, StatementPlan, TenantSource, Use, ViewDef, quote_ident,
};
use super::{pglex, splice};
use crate::crypto::types::{Oid, PgType};
use crate::policy::{Access, ColumnPolicy, TablePolicy};

mod bulk;
mod copy;
mod ddl;
mod exposure;
mod expr;
mod from;
mod insert;
mod scope;
mod select;
mod update;

use ddl::in_temp_schema;
pub(crate) use ddl::renames_protected_schema;

type R<T> = Result<T, Reject>;

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
    cx.before = Some(stmt.clone());
    let res = cx.top(&mut stmt, text, source.clone());
    match res {
        Err(r) => StatementPlan::reject(r),
        Ok(Top::Passthrough) => StatementPlan::Passthrough {
            sql: text.to_string(),
        },
        Ok(Top::Copy(p)) => StatementPlan::Copy(*p),
        Ok(Top::Done(kind)) => match cx.finish(&stmt, text, source, kind) {
            Ok(p) => StatementPlan::Rewrite(p),
            Err(r) => StatementPlan::reject(r),
        },
    }
}

/// Functions and views that read tables the statement does not name: the
/// XML and text-search functions run SQL given as a string (`ts_stat`,
/// `ts_rewrite`, `query_to_xml`) or dump whole tables, schemas and
/// databases; `dblink` runs SQL on another connection; the file functions
/// read relation files; the statistics views show the most common values
/// (blind indexes among them) of every column. Statements naming one are analysed
/// (the no-parse pre-check matches them like protected names) and refused.
pub(crate) const READS_ANY_TABLE: &[&str] = &[
    "query_to_xml",
    "query_to_xmlschema",
    "query_to_xml_and_xmlschema",
    "table_to_xml",
    "table_to_xmlschema",
    "table_to_xml_and_xmlschema",
    "schema_to_xml",
    "schema_to_xmlschema",
    "schema_to_xml_and_xmlschema",
    "database_to_xml",
    "database_to_xmlschema",
    "database_to_xml_and_xmlschema",
    "cursor_to_xml",
    "cursor_to_xmlschema",
    "ts_stat",
    "ts_rewrite",
    "pg_read_file",
    "pg_read_binary_file",
    "lo_import",
    "lo_export",
    "dblink",
    "dblink_exec",
    "dblink_open",
    "dblink_send_query",
    "pg_stats",
    "pg_stats_ext",
    "pg_stats_ext_exprs",
    "pg_statistic",
    "pg_statistic_ext_data",
];

/// The first of [`READS_ANY_TABLE`] the text names as an identifier (on
/// PostgreSQL's tokens, quoted or not).
fn reads_any_table(text: &str) -> Option<String> {
    pglex::tokens(text).iter().find_map(|t| {
        let name = match t.kind {
            // (`get`: a token pgveil's lexer cut inside a character, as in
            // junk after a number, names nothing.)
            pglex::Kind::Ident => text.get(t.span.clone())?.to_ascii_lowercase(),
            pglex::Kind::QuotedIdent | pglex::Kind::UnicodeIdent => {
                pglex::value(text, t).unwrap_or_default()
            }
            _ => return None,
        };
        READS_ANY_TABLE.contains(&name.as_str()).then_some(name)
    })
}

/// An unquoted reserved keyword (PostgreSQL's reserved and
/// type-or-function-name keywords, which can never be an unquoted table,
/// schema or column name: [`super::lex::is_reserved`]) that sqlparser took
/// for (part of) a relation name. PostgreSQL's grammar never reads one as a name, so such a
/// statement means something else to PostgreSQL: `UPDATE ONLY users SET …`
/// is, to sqlparser, an update of a table `ONLY` aliased `users`.
fn keyword_as_relation(stmt: &Statement) -> Option<String> {
    let mut hit = None;
    let _ = visit_relations(stmt, |n| {
        for part in &n.0 {
            if let ObjectNamePart::Identifier(i) = part
                && i.quote_style.is_none()
                && super::lex::is_reserved(&i.value.to_ascii_lowercase())
            {
                hit = Some(i.value.to_ascii_uppercase());
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    });
    hit
}

/// Blind-index columns belong to pgveil: the client's statement may name
/// one (in any position: select list, WHERE, column lists, RETURNING,
/// ON CONFLICT, USING …) only if the role has `search` on its column.
/// Otherwise a role could write a guess and compare its blind index with
/// other rows: an equality oracle. pgveil's own rewrite adds such names
/// after this check. Checked on PostgreSQL's tokens, so no syntax escapes
/// it; an unrelated column that happens to share the name is refused too.
fn names_blind_index(an: &Analyzer, text: &str, role: &str) -> Option<Reject> {
    // The policy tables whose columns the text reaches: those it names,
    // the tables of the views it names (their blind indexes, from
    // pg_depend), the roots of the children it names; every table when a
    // named relation is one pgveil refuses, or nothing is named.
    let names = |n: &str| super::lex::NameSet::new([n.to_string()]).matches(text);
    let mut tables: Vec<&TablePolicy> = an
        .policy
        .tables
        .iter()
        .filter(|t| names(&t.table))
        .collect();
    let mut everything = false;
    for v in an.views.values().filter(|v| names(&v.name)) {
        for c in &v.blind_indexes {
            if let Some(t) = an.policy.table(&c.schema, &c.table) {
                tables.push(t);
            }
        }
        everything |= !v.unknown.is_empty() && v.blind_indexes.is_empty();
    }
    for (_, verdict) in an.children.iter().filter(|((_, n), _)| names(n)) {
        match verdict {
            Ok((rs, rt)) => tables.extend(an.policy.table(rs, rt)),
            Err(_) => everything = true,
        }
    }
    if everything || tables.is_empty() {
        tables = an.policy.tables.iter().collect();
    }
    let toks = pglex::tokens(text);
    let word = |i: usize| {
        toks.get(i)
            .filter(|t| t.kind == pglex::Kind::Ident)
            .map(|t| text[t.span.clone()].to_ascii_lowercase())
            .unwrap_or_default()
    };
    // DDL that only declares structure on the column (an index, a
    // constraint, dropping it) reads no value; ALTER … USING could copy
    // values into a readable column, views and CREATE … AS could show them.
    let structural = match (word(0).as_str(), word(1).as_str(), word(2).as_str()) {
        // A partial index's predicate could compare rows: not exempt.
        ("create", "index", _) | ("create", "unique", "index") => !toks.iter().any(|t| {
            t.kind == pglex::Kind::Ident && text[t.span.clone()].eq_ignore_ascii_case("where")
        }),
        ("drop", _, _) | ("comment", _, _) => true,
        ("alter", "table" | "index", _) => !toks.iter().any(|t| {
            t.kind == pglex::Kind::Ident && text[t.span.clone()].eq_ignore_ascii_case("using")
        }),
        _ => false,
    };
    if structural {
        return None;
    }
    for t in toks.iter() {
        let t = t.clone();
        let name = match t.kind {
            pglex::Kind::Ident => text[t.span.clone()].to_ascii_lowercase(),
            pglex::Kind::QuotedIdent | pglex::Kind::UnicodeIdent => {
                pglex::value(text, &t).unwrap_or_default()
            }
            _ => continue,
        };
        for tp in &tables {
            if let Some((cp, _)) = tp.blind_index_owner(&name)
                && !an.policy.column_access(role, cp).is_some_and(|a| a.search)
            {
                return Some(Reject::privilege(format!(
                    "pgveil: {}.{}.{name} is the blind index of protected column {}.{}.{}, which role {role} may not search: only pgveil and roles with search access may use it; look the value up with = on {} itself (pgveil rewrites it) from a role with search access",
                    tp.schema, tp.table, tp.schema, tp.table, cp.name, cp.name
                )));
            }
        }
    }
    None
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

enum Top {
    Passthrough,
    Copy(Box<CopyPlan>),
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

#[derive(Debug, Clone)]
struct ProtCol<'a> {
    col: ColumnRef,
    via: Via<'a>,
}

/// One output column of a query, subquery, CTE or `*` expansion.
#[derive(Debug, Clone, Default)]
struct OutCol<'a> {
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
}

#[derive(Debug, Clone)]
enum RelKind<'a> {
    Table(&'a TablePolicy),
    View(&'a ViewDef),
    Derived(std::rc::Rc<Vec<OutCol<'a>>>),
    Plain,
}

#[derive(Debug, Clone)]
struct Rel<'a> {
    /// Alias if given (then the only name that qualifies its columns).
    alias: Option<String>,
    schema: Option<String>,
    name: String,
    kind: RelKind<'a>,
}

#[derive(Debug, Clone, Default)]
struct Scope<'a> {
    rels: Vec<Rel<'a>>,
    ctes: Vec<(String, RelKind<'a>)>,
}

#[derive(Debug, Clone)]
enum Class<'a> {
    Plain,
    Prot(ProtCol<'a>),
    Param(usize),
    Lit(Option<String>),
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

struct Cx<'a> {
    an: &'a Analyzer,
    role: &'a str,
    extended: bool,
    client_types: &'a [Oid],
    n_client: usize,
    marker: String,
    literals: Vec<LiteralSlot>,
    appended: Vec<ParamAction>,
    inplace: HashMap<usize, ParamAction>,
    extra: HashMap<ParamAction, usize>,
    plain_params: HashSet<usize>,
    overrides: Vec<(usize, PgType, bool)>,
    touched: Vec<(ColumnRef, Use)>,
    changed: bool,
    result_columns: Option<Vec<Option<ColumnRef>>>,
    /// The statement as parsed, before the rewrite changed it: the edits
    /// are spliced into the client's text from its difference with the
    /// rewritten AST (`super::splice`).
    before: Option<Statement>,
    /// Spans of the client's text the splice replaced.
    edits: Vec<Range<usize>>,
    /// Set by `top` for a plain SELECT statement and taken by the first
    /// `select`: only that select list may show view columns pgveil cannot
    /// map (as stored); everywhere else they are refused.
    outer_select: bool,
}

fn norm(id: &Ident) -> String {
    if id.quote_style.is_some() {
        id.value.clone()
    } else {
        id.value.to_ascii_lowercase()
    }
}

fn name_parts(n: &ObjectName) -> Vec<String> {
    n.0.iter()
        .map(|p| match p {
            ObjectNamePart::Identifier(i) => norm(i),
            other => other.to_string(),
        })
        .collect()
}

fn make_ident(name: &str) -> Ident {
    if quote_ident(name).starts_with('"') {
        Ident::with_quote('"', name)
    } else {
        Ident::new(name)
    }
}

fn placeholder(s: String) -> Expr {
    Expr::Value(ValueWithSpan::from(Value::Placeholder(s)))
}

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

    // ----- parameters and slots ------------------------------------------

    fn param_protected(&mut self, orig: usize, action: ParamAction) -> String {
        self.changed = true;
        match self.inplace.get(&orig) {
            None => {
                self.inplace.insert(orig, action);
                format!("${}", orig + 1)
            }
            Some(a) if *a == action => format!("${}", orig + 1),
            Some(_) => self.param_append(action),
        }
    }

    fn param_append(&mut self, action: ParamAction) -> String {
        self.changed = true;
        if let Some(&i) = self.extra.get(&action) {
            return format!("${}", i + 1);
        }
        let i = self.n_client + self.appended.len();
        self.appended.push(action.clone());
        self.extra.insert(action, i);
        format!("${}", i + 1)
    }

    fn override_type(&mut self, orig: usize, ty: PgType, array: bool) -> R<()> {
        match self.overrides.iter().find(|o| o.0 == orig) {
            Some(o) if (o.1, o.2) != (ty, array) => Err(Reject::unsupported(format!(
                "pgveil: parameter ${} is used for protected values of different types: pass it as separate parameters",
                orig + 1
            ))),
            Some(_) => Ok(()),
            None => {
                self.overrides.push((orig, ty, array));
                Ok(())
            }
        }
    }

    fn slot(
        &mut self,
        value: Option<String>,
        target: &ColumnRef,
        op: SlotOp,
        tenant: TenantSource,
    ) -> Expr {
        self.changed = true;
        let i = self.literals.len();
        self.literals.push(LiteralSlot {
            value,
            target: target.clone(),
            op,
            tenant,
            tenants: vec![],
        });
        placeholder(format!("{}{}", self.marker, i))
    }

    /// A slot for a whole array literal of plaintexts (`op` one of the
    /// array operations), with the tenant of each element.
    fn slot_array(
        &mut self,
        items: &[Option<String>],
        target: &ColumnRef,
        op: SlotOp,
        tenants: Vec<TenantSource>,
    ) -> Expr {
        let e = self.slot(
            Some(super::array::render_text(items)),
            target,
            op,
            TenantSource::None,
        );
        self.literals.last_mut().expect("just pushed").tenants = tenants;
        e
    }

    fn touch(&mut self, c: &ColumnRef, u: Use) {
        if !self.touched.iter().any(|(x, y)| x == c && *y == u) {
            self.touched.push((c.clone(), u));
        }
    }

    fn param_index(&mut self, s: &str) -> R<usize> {
        let n = s
            .strip_prefix('$')
            .and_then(|d| d.parse::<usize>().ok())
            .filter(|n| *n >= 1)
            .ok_or_else(|| {
                Reject::unsupported(
                    "pgveil: only $n parameters are supported in statements on protected tables",
                )
            })?;
        if !self.extended {
            return Err(Reject::unsupported(
                "pgveil: parameters ($n) are only valid with the extended query protocol",
            ));
        }
        Ok(n - 1)
    }

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

    fn unsupported_on(&self, p: &ProtCol, what: &str, alt: &str) -> Reject {
        Reject::unsupported(format!(
            "pgveil: {what} on protected column {} is not supported: {alt}",
            p.col
        ))
    }

    fn col_policy(&self, c: &ColumnRef) -> (&'a TablePolicy, &'a ColumnPolicy) {
        let t = self
            .an
            .policy
            .table(&c.schema, &c.table)
            .expect("resolved column belongs to a policy table");
        let cp = t.column(&c.column).expect("resolved column is protected");
        (t, cp)
    }

    fn access(&self, cp: &ColumnPolicy) -> Access {
        self.an
            .policy
            .column_access(self.role, cp)
            .unwrap_or_default()
    }

    // ----- statements -----------------------------------------------------

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

    // ----- output -------------------------------------------------------------

    fn finish(
        &mut self,
        stmt: &Statement,
        text: &str,
        source: Range<usize>,
        kind: StatementKind,
    ) -> R<RewritePlan> {
        for (orig, action) in &self.inplace {
            if self.plain_params.contains(orig) {
                return Err(Reject::unsupported(format!(
                    "pgveil: parameter ${} is used both for protected column {} and elsewhere: pass the value as two separate parameters",
                    orig + 1,
                    action_target(action)
                        .map(|c| c.to_string())
                        .unwrap_or_default()
                )));
            }
        }
        let mut params = vec![];
        let mut parse_types = vec![];
        if self.extended {
            for i in 0..self.n_client {
                match self.inplace.get(&i) {
                    Some(a) => {
                        params.push(a.clone());
                        parse_types.push(0);
                    }
                    None => {
                        params.push(ParamAction::Copy { orig: i });
                        parse_types.push(self.client_types.get(i).copied().unwrap_or(0));
                    }
                }
            }
            for a in &self.appended {
                params.push(a.clone());
                parse_types.push(0);
            }
        }
        let sql = if self.changed {
            let out = self.spliced(text, stmt)?;
            split_markers(&out, &self.marker, self.literals.len())?
        } else {
            vec![Segment::Text(text.to_string())]
        };
        self.overrides.sort_by_key(|o| o.0);
        Ok(RewritePlan {
            kind,
            sql,
            literals: std::mem::take(&mut self.literals),
            params,
            param_type_overrides: std::mem::take(&mut self.overrides),
            parse_param_types: parse_types,
            touched: std::mem::take(&mut self.touched),
            unchanged: !self.changed,
            edits: std::mem::take(&mut self.edits),
            source,
            result_columns: self.result_columns.take(),
        })
    }
}

impl Cx<'_> {
    /// The client's text with the rewrite of `stmt` spliced in; never a
    /// print of the client's statement.
    fn spliced(&mut self, text: &str, stmt: &Statement) -> R<String> {
        let before = self.before.as_ref().ok_or_else(internal)?;
        match splice::splice_statement(text, before, stmt) {
            Some((out, edits)) => {
                self.edits = edits.into_iter().map(|e| e.span).collect();
                Ok(out)
            }
            None => Err(Reject::unsupported(format!(
                "pgveil: the rewrite of this statement on protected table {} could not be applied to the statement's own text exactly, so it was not sent: simplify it (one statement, values as bind parameters, no comments inside the changed parts)",
                mentioned(self.an, text)
            ))),
        }
    }
}

/// Up to two leading words of a statement that are plain keywords (ASCII
/// letters and `_`), upper-cased; never a literal or an identifier in
/// quotes.
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

/// The statement is a SQL `FETCH` (its first token, as PostgreSQL reads
/// it; comments and whitespace before it do not count).
pub(crate) fn is_fetch(text: &str) -> bool {
    pglex::tokens(text).first().is_some_and(|t| {
        t.kind == pglex::Kind::Ident && text[t.span.clone()].eq_ignore_ascii_case("fetch")
    })
}

/// The FETCH is exactly PostgreSQL's `FETCH [direction] [count] [FROM |
/// IN] cursor_name` (direction NEXT, PRIOR, FIRST, LAST, ABSOLUTE n,
/// RELATIVE n, n, ALL, FORWARD [n | ALL], BACKWARD [n | ALL]), read on
/// PostgreSQL's tokens: nothing else (a literal, a second statement, an
/// unterminated comment) can ride along to the server.
pub(crate) fn plain_fetch(text: &str) -> bool {
    let toks = pglex::tokens(text);
    let word = |i: usize| -> Option<String> {
        let t = toks.get(i)?;
        (t.kind == pglex::Kind::Ident).then(|| text[t.span.clone()].to_ascii_lowercase())
    };
    let is_op = |i: usize, op: &str| {
        toks.get(i)
            .is_some_and(|t| t.kind == pglex::Kind::Op && &text[t.span.clone()] == op)
    };
    // A signed integer count at i: its length in tokens.
    let count = |i: usize| -> Option<usize> {
        let n = usize::from(is_op(i, "-") || is_op(i, "+"));
        let t = toks.get(i + n)?;
        (t.kind == pglex::Kind::Number && text[t.span.clone()].bytes().all(|b| b.is_ascii_digit()))
            .then_some(n + 1)
    };
    if word(0).as_deref() != Some("fetch") {
        return false;
    }
    let mut i = 1;
    match word(i).as_deref() {
        Some("next" | "prior" | "first" | "last" | "all") => i += 1,
        Some("absolute" | "relative") => match count(i + 1) {
            Some(n) => i += 1 + n,
            None => return false,
        },
        Some("forward" | "backward") => {
            i += 1;
            if word(i).as_deref() == Some("all") {
                i += 1;
            } else if let Some(n) = count(i) {
                i += n;
            }
        }
        _ => {
            if let Some(n) = count(i) {
                i += n;
            }
        }
    }
    if matches!(word(i).as_deref(), Some("from" | "in")) {
        i += 1;
    }
    let name = toks.get(i).is_some_and(|t| {
        matches!(
            t.kind,
            pglex::Kind::Ident | pglex::Kind::QuotedIdent | pglex::Kind::UnicodeIdent
        )
    });
    let end = i + 1 == toks.len() || (i + 2 == toks.len() && is_op(i + 1, ";"));
    name && end
}

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

fn action_target(a: &ParamAction) -> Option<&ColumnRef> {
    match a {
        ParamAction::Copy { .. } => None,
        ParamAction::Encrypt { target, .. }
        | ParamAction::BlindIndex { target, .. }
        | ParamAction::BlindIndexNext { target, .. }
        | ParamAction::EncryptArray { target, .. }
        | ParamAction::BlindIndexArray { target, .. }
        | ParamAction::RequireEnvelope { target, .. } => Some(target),
    }
}

fn split_markers(out: &str, marker: &str, n: usize) -> R<Vec<Segment>> {
    let mut segs = vec![];
    let mut seen = vec![false; n];
    let mut rest = out;
    while let Some(p) = rest.find(marker) {
        let after = &rest[p + marker.len()..];
        let digits = after.bytes().take_while(|b| b.is_ascii_digit()).count();
        let idx: usize = after[..digits].parse().map_err(|_| internal())?;
        if idx >= n || seen[idx] {
            return Err(internal());
        }
        seen[idx] = true;
        if p > 0 {
            segs.push(Segment::Text(rest[..p].to_string()));
        }
        segs.push(Segment::Literal(idx));
        rest = &after[digits..];
    }
    if !rest.is_empty() {
        segs.push(Segment::Text(rest.to_string()));
    }
    if seen.iter().any(|s| !s) {
        return Err(internal());
    }
    Ok(segs)
}

fn internal() -> Reject {
    Reject::unsupported("pgveil: internal error while rewriting this statement; it was not sent")
}
