//! The expression walk: every expression is classified ([`Class`]) as a
//! bare reference to a protected column, a parameter, a literal, `DEFAULT`,
//! or anything else.
//!
//! Only a few contexts accept a protected column: `IS [NOT] NULL`,
//! `count(col)`, and the equality lookups (`=`, `<>`, `IN (…)`, `= ANY`),
//! which are rewritten to the blind-index column with the compared value
//! turned into its blind index (a parameter action or a literal slot).
//! Every other operator, function, cast or construct that sees a protected
//! column is refused, naming the column and the alternative. Expression
//! kinds the walker does not model go through [`Cx::generic`], which refuses
//! them if they mention a protected column, a blind index, a whole row or a
//! protected relation (fail closed).

use std::ops::ControlFlow;

use sqlparser::ast::{
    BinaryOperator, Expr, Function, FunctionArg, FunctionArgExpr, FunctionArguments, Value,
    visit_expressions, visit_relations,
};

use super::{Class, Cx, ProtCol, R, RelKind, Scope, Via, name_parts, placeholder, strip_nested};
use crate::crypto::types::PgType;
use crate::sql::{ColumnRef, ParamAction, Reject, SlotOp, TenantSource, Use, ViewDef};

impl<'a> Cx<'a> {
    pub(super) fn expr(&mut self, e: &mut Expr, sc: &[Scope<'a>]) -> R<Class<'a>> {
        match e {
            Expr::Identifier(i)
                if i.quote_style.is_none() && i.value.eq_ignore_ascii_case("default") =>
            {
                Ok(Class::Default)
            }
            Expr::Identifier(_) | Expr::CompoundIdentifier(_) if self.unknown_ref(e, sc).is_some() => {
                let (v, col) = self.unknown_ref(e, sc).expect("checked");
                Err(Self::unknown_reject(v, &col))
            }
            Expr::Identifier(_) | Expr::CompoundIdentifier(_) if self.view_bidx_ref(e, sc).is_some() => {
                Err(self.view_bidx_ref(e, sc).expect("checked"))
            }
            Expr::Identifier(_) | Expr::CompoundIdentifier(_) => match self.expr_resolve(e, sc) {
                Some(p) => Ok(Class::Prot(p)),
                None => match self.whole_row(e, sc) {
                    Some(rel) => Err(Self::whole_row_reject(&rel)),
                    None => Ok(Class::Plain),
                },
            },
            Expr::Value(v) => self.value(&v.value),
            Expr::TypedString(ts) => match self.value(&ts.value.value)? {
                Class::Lit(s) => Ok(Class::Lit(s)),
                _ => Ok(Class::Plain),
            },
            Expr::Nested(inner) => self.expr(inner, sc),
            Expr::Cast { expr, .. } => match self.expr(expr, sc)? {
                Class::Prot(p) => Err(self.unsupported_on(
                    &p,
                    "a cast",
                    "the value is ciphertext in the database; read the column and convert it in the application",
                )),
                c @ (Class::Param(_) | Class::Lit(_)) => Ok(c),
                _ => Ok(Class::Plain),
            },
            Expr::IsNull(inner) | Expr::IsNotNull(inner) => {
                match self.expr(inner, sc)? {
                    Class::Prot(_) => {}
                    c => self.plain(c, "", "")?,
                }
                Ok(Class::Plain)
            }
            Expr::BinaryOp { left, op, right } => self.binary(left, op.clone(), right, sc),
            Expr::InList { expr, list, .. } => {
                let c = self.expr(expr, sc)?;
                if let Class::Prot(p) = c {
                    let target = self.lookup_col(&p, expr, "IN (…)")?;
                    let ty = self.col_policy(&p.col).1.ty;
                    for item in list.iter_mut() {
                        let ic = self.expr(item, sc)?;
                        self.lookup_value(&target, ty, item, ic, false, &p)?;
                    }
                } else {
                    self.plain(c, "", "")?;
                    for item in list.iter_mut() {
                        let ic = self.expr(item, sc)?;
                        if let Class::Prot(ref p) = ic {
                            return Err(self.unsupported_on(
                                p,
                                "IN with a protected column in the list",
                                "compare the protected column itself with values: col IN ($1, $2)",
                            ));
                        }
                        self.plain(ic, "", "")?;
                    }
                }
                Ok(Class::Plain)
            }
            Expr::AnyOp { left, compare_op, right, .. } | Expr::AllOp { left, compare_op, right } => {
                let c = self.expr(left, sc)?;
                let Class::Prot(p) = c else {
                    self.plain(c, "", "")?;
                    let rc = self.expr(right, sc)?;
                    self.plain(rc, "ANY/ALL", "compare the protected column itself: col = ANY($1)")?;
                    return Ok(Class::Plain);
                };
                if !matches!(compare_op, BinaryOperator::Eq | BinaryOperator::NotEq) {
                    let (w, alt) = op_words(compare_op);
                    return Err(self.unsupported_on(&p, w, alt));
                }
                let target = self.lookup_col(&p, left, "= ANY(…)")?;
                let ty = self.col_policy(&p.col).1.ty;
                let r = strip_nested(right);
                if let Expr::Array(arr) = r {
                    for el in arr.elem.iter_mut() {
                        let ec = self.expr(el, sc)?;
                        self.lookup_value(&target, ty, el, ec, false, &p)?;
                    }
                } else {
                    let rc = self.expr(r, sc)?;
                    self.lookup_value(&target, ty, r, rc, true, &p)?;
                }
                Ok(Class::Plain)
            }
            Expr::InSubquery { expr, subquery, .. } => {
                let c = self.expr(expr, sc)?;
                if let Class::Prot(p) = c {
                    return Err(self.unsupported_on(
                        &p,
                        "IN (SELECT …)",
                        "look the values up first, then use col IN ($1, …) or col = ANY($1)",
                    ));
                }
                self.plain(c, "", "")?;
                let outs = self.query(subquery, sc)?;
                if let Some(p) = outs.iter().find_map(|o| o.prot.clone()) {
                    return Err(self.unsupported_on(
                        &p,
                        "comparing with a subquery that returns it",
                        "compare an unprotected key column instead",
                    ));
                }
                Ok(Class::Plain)
            }
            Expr::Between { expr, low, high, .. } => {
                for x in [expr, low, high] {
                    let c = self.expr(x, sc)?;
                    self.plain(
                        c,
                        "BETWEEN",
                        "ciphertext has no order; filter in the application after reading, or use an unprotected column",
                    )?;
                }
                Ok(Class::Plain)
            }
            Expr::Like { expr, pattern, escape_char, .. }
            | Expr::ILike { expr, pattern, escape_char, .. } => {
                let c = self.expr(expr, sc)?;
                self.plain(
                    c,
                    "LIKE/ILIKE",
                    "pattern matching needs plaintext; match in the application after reading, or look up the exact value with =",
                )?;
                let c = self.expr(pattern, sc)?;
                self.plain(c, "LIKE/ILIKE", "use an unprotected column as the pattern")?;
                if let Some(esc) = escape_char {
                    let c = self.expr(esc, sc)?;
                    self.plain(c, "", "")?;
                }
                Ok(Class::Plain)
            }
            Expr::SimilarTo { expr, pattern, escape_char, .. } => {
                let c = self.expr(expr, sc)?;
                self.plain(
                    c,
                    "SIMILAR TO",
                    "pattern matching needs plaintext; match in the application after reading",
                )?;
                let c = self.expr(pattern, sc)?;
                self.plain(c, "SIMILAR TO", "use an unprotected column as the pattern")?;
                if let Some(esc) = escape_char {
                    let c = self.expr(esc, sc)?;
                    self.plain(c, "", "")?;
                }
                Ok(Class::Plain)
            }
            Expr::UnaryOp { expr, .. } => {
                let c = self.expr(expr, sc)?;
                self.plain(c, "an operator", "compute with the value in the application after reading it")?;
                Ok(Class::Plain)
            }
            Expr::IsDistinctFrom(a, b) | Expr::IsNotDistinctFrom(a, b) => {
                for x in [a, b] {
                    let c = self.expr(x, sc)?;
                    self.plain(c, "IS [NOT] DISTINCT FROM", "use = or IS NULL")?;
                }
                Ok(Class::Plain)
            }
            Expr::IsTrue(x) | Expr::IsFalse(x) | Expr::IsNotTrue(x) | Expr::IsNotFalse(x)
            | Expr::IsUnknown(x) | Expr::IsNotUnknown(x) => {
                let c = self.expr(x, sc)?;
                self.plain(c, "a boolean test", "it holds ciphertext, not a boolean")?;
                Ok(Class::Plain)
            }
            Expr::Function(f) => self.function(f, sc),
            Expr::Case { operand, conditions, else_result, .. } => {
                if let Some(o) = operand {
                    let c = self.expr(o, sc)?;
                    self.plain(c, "CASE", "read the column and decide in the application")?;
                }
                for w in conditions.iter_mut() {
                    let c = self.expr(&mut w.condition, sc)?;
                    self.plain(c, "CASE", "read the column and decide in the application")?;
                    let c = self.expr(&mut w.result, sc)?;
                    self.plain(c, "CASE", "select the column directly")?;
                }
                if let Some(x) = else_result {
                    let c = self.expr(x, sc)?;
                    self.plain(c, "CASE", "select the column directly")?;
                }
                Ok(Class::Plain)
            }
            Expr::Exists { subquery, .. } => {
                self.query(subquery, sc)?;
                Ok(Class::Plain)
            }
            Expr::Subquery(q) => {
                let outs = self.query(q, sc)?;
                match outs.as_slice() {
                    [o] if !o.many => {
                        if o.bidx.is_some() || o.unknown {
                            // A blind index or an unmappable column as a
                            // value: only as plain as its role may see.
                            self.exported(&outs, "a subquery used as a value")?;
                        }
                        Ok(match &o.prot {
                            Some(p) => Class::Prot(ProtCol {
                                col: p.col.clone(),
                                via: Via::Derived,
                            }),
                            None => Class::Plain,
                        })
                    }
                    _ => {
                        // A row subquery: PostgreSQL compares it element by
                        // element with a row constructor (`(x, y) = (SELECT
                        // email, id …)`, also under ANY/ALL), which pgveil
                        // does not plan.
                        if let Some(p) = outs.iter().find_map(|o| o.prot.clone()) {
                            return Err(self.unsupported_on(
                                &p,
                                "a row subquery that returns it",
                                "compare the protected column on its own: col = $1, or look the rows up first",
                            ));
                        }
                        self.exported(&outs, "a row subquery")?;
                        Ok(Class::Plain)
                    }
                }
            }
            Expr::Tuple(items) => {
                for it in items.iter_mut() {
                    let c = self.expr(it, sc)?;
                    self.plain(
                        c,
                        "a row comparison",
                        "compare the protected column on its own: col = $1 AND other = $2",
                    )?;
                }
                Ok(Class::Plain)
            }
            Expr::Array(arr) => {
                for el in arr.elem.iter_mut() {
                    let c = self.expr(el, sc)?;
                    self.plain(c, "an array constructor", "select the column directly")?;
                }
                Ok(Class::Plain)
            }
            other => {
                self.generic(&*other, sc)?;
                Ok(Class::Plain)
            }
        }
    }

    pub(super) fn value(&mut self, v: &Value) -> R<Class<'a>> {
        Ok(match v {
            Value::Placeholder(s) => Class::Param(self.param_index(s)?),
            Value::Null => Class::Lit(None),
            Value::Number(n, _) => Class::Lit(Some(n.to_string())),
            Value::SingleQuotedString(s)
            | Value::EscapedStringLiteral(s)
            | Value::UnicodeStringLiteral(s)
            | Value::NationalStringLiteral(s) => Class::Lit(Some(s.clone())),
            Value::DollarQuotedString(d) => Class::Lit(Some(d.value.clone())),
            Value::Boolean(b) => Class::Lit(Some(b.to_string())),
            _ => Class::Plain,
        })
    }

    /// Fail-closed check of an expression kind the walker does not model.
    pub(super) fn generic<V: sqlparser::ast::Visit>(
        &mut self,
        node: &V,
        sc: &[Scope<'a>],
    ) -> R<()> {
        let mut params = vec![];
        let mut found: Option<ProtCol<'a>> = None;
        let mut unknown: Option<(&'a ViewDef, String)> = None;
        let mut whole: Option<String> = None;
        let mut bidx: Option<Reject> = None;
        let _ = visit_expressions(node, |x| {
            match x {
                Expr::Identifier(_) | Expr::CompoundIdentifier(_) => {
                    if let Some(u) = self.unknown_ref(x, sc) {
                        unknown = Some(u);
                        return ControlFlow::Break(());
                    }
                    if let Some(r) = self.view_bidx_ref(x, sc) {
                        bidx = Some(r);
                        return ControlFlow::Break(());
                    }
                    if let Some(p) = self.expr_resolve(x, sc) {
                        found = Some(p);
                        return ControlFlow::Break(());
                    }
                    if let Some(rel) = self.whole_row(x, sc) {
                        whole = Some(rel);
                        return ControlFlow::Break(());
                    }
                }
                Expr::QualifiedWildcard(..) => {
                    if let Some(rel) = self.whole_row(x, sc) {
                        whole = Some(rel);
                        return ControlFlow::Break(());
                    }
                }
                // `f(u.*)`, `ROW(u.*)` as an argument: not an expression
                // to the visitor, but every column of `u` to PostgreSQL
                // (`(ROW(u.*)).f3` is u's third column).
                Expr::Function(f) => {
                    if let FunctionArguments::List(list) = &f.args {
                        for a in &list.args {
                            let fe = match a {
                                FunctionArg::Unnamed(fe) => fe,
                                FunctionArg::Named { arg, .. }
                                | FunctionArg::ExprNamed { arg, .. } => arg,
                            };
                            if let FunctionArgExpr::QualifiedWildcard(n) = fe
                                && let Some(rel) = self
                                    .whole_row(&Expr::QualifiedWildcard(n.clone(), sqlparser::ast::helpers::attached_token::AttachedToken::empty()), sc)
                            {
                                whole = Some(rel);
                                return ControlFlow::Break(());
                            }
                        }
                    }
                }
                Expr::Value(v) => {
                    if let Value::Placeholder(s) = &v.value {
                        params.push(s.clone());
                    }
                }
                _ => {}
            }
            ControlFlow::Continue(())
        });
        if let Some((v, col)) = unknown {
            return Err(Self::unknown_reject(v, &col));
        }
        if let Some(r) = bidx {
            return Err(r);
        }
        if let Some(rel) = whole {
            return Err(Self::whole_row_reject(&rel));
        }
        if let Some(p) = found {
            return Err(self.unsupported_on(
                &p,
                "this expression",
                "pgveil only allows selecting the column, = / IN / ANY lookups, IS NULL and count(); compute in the application after reading",
            ));
        }
        let mut rel = None;
        let _ = visit_relations(node, |n| {
            if self.is_protected_relation(n, sc) {
                rel = Some(n.to_string());
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        });
        if let Some(r) = rel {
            return Err(Reject::unsupported(format!(
                "pgveil: protected table {r} is used inside an expression pgveil cannot analyze: move the subquery to FROM or WHERE in plain form"
            )));
        }
        for p in params {
            let i = self.param_index(&p)?;
            self.plain_params.insert(i);
        }
        Ok(())
    }

    pub(super) fn binary(
        &mut self,
        left: &mut Expr,
        op: BinaryOperator,
        right: &mut Expr,
        sc: &[Scope<'a>],
    ) -> R<Class<'a>> {
        let lc = self.expr(left, sc)?;
        let rc = self.expr(right, sc)?;
        let is_eq = matches!(op, BinaryOperator::Eq | BinaryOperator::NotEq);
        match (lc, rc) {
            (Class::Prot(a), Class::Prot(b)) => {
                if !is_eq {
                    let (w, alt) = op_words(&op);
                    return Err(self.unsupported_on(&a, w, alt));
                }
                if a.col != b.col {
                    return Err(Reject::unsupported(format!(
                        "pgveil: comparing protected columns {} and {} is not supported: their blind indexes use different keys; compare an unprotected key instead",
                        a.col, b.col
                    )));
                }
                self.lookup_col(&a, left, "a join on the column")?;
                self.lookup_col(&b, right, "a join on the column")?;
                Ok(Class::Plain)
            }
            (Class::Prot(p), v) if is_eq => {
                let target = self.lookup_col(&p, left, "an equality lookup")?;
                let ty = self.col_policy(&p.col).1.ty;
                self.lookup_value(&target, ty, right, v, false, &p)?;
                Ok(Class::Plain)
            }
            (v, Class::Prot(p)) if is_eq => {
                let target = self.lookup_col(&p, right, "an equality lookup")?;
                let ty = self.col_policy(&p.col).1.ty;
                self.lookup_value(&target, ty, left, v, false, &p)?;
                Ok(Class::Plain)
            }
            (Class::Prot(p), _) | (_, Class::Prot(p)) => {
                let (w, alt) = op_words(&op);
                Err(self.unsupported_on(&p, w, alt))
            }
            (l, r) => {
                self.plain(l, "", "")?;
                self.plain(r, "", "")?;
                Ok(Class::Plain)
            }
        }
    }

    /// Check search access and rename a protected column reference to its
    /// blind index. Returns the protected column (the blind index's target).
    pub(super) fn lookup_col(&mut self, p: &ProtCol<'a>, e: &mut Expr, what: &str) -> R<ColumnRef> {
        let (_, cp) = self.col_policy(&p.col);
        let access = self.access(cp);
        if !access.search {
            return Err(Reject::privilege(format!(
                "pgveil: role {} may not search protected column {} ({what}): the policy grants it {access}; equality lookups need `read` or `search` access. Look rows up by an unprotected column instead",
                self.role, p.col
            )));
        }
        let Some(b) = &cp.blind_index else {
            return Err(self.unsupported_on(
                p,
                what,
                "the column has no blind_index in the policy; add one, or look rows up by an unprotected column",
            ));
        };
        let new_name = match &p.via {
            Via::Base => b.column.clone(),
            Via::View(v) => {
                let bref = ColumnRef::new(&p.col.schema, &p.col.table, &b.column);
                match v.columns.iter().find(|c| c.1.as_ref() == Some(&bref)) {
                    Some(c) => c.0.clone(),
                    None => {
                        return Err(Reject::unsupported(format!(
                            "pgveil: {what} on protected column {} through view {}.{} is not supported: the view does not expose its blind index {}; add it to the view or query the table",
                            p.col, v.schema, v.name, b.column
                        )));
                    }
                }
            }
            Via::Derived => {
                return Err(self.unsupported_on(
                    p,
                    &format!("{what} through a subquery or CTE"),
                    "filter on the table itself, inside the subquery",
                ));
            }
        };
        Self::rename(e, &new_name);
        self.changed = true;
        self.touch(&p.col, Use::Search);
        Ok(p.col.clone())
    }

    pub(super) fn lookup_value(
        &mut self,
        target: &ColumnRef,
        ty: PgType,
        e: &mut Expr,
        c: Class<'a>,
        array: bool,
        p: &ProtCol,
    ) -> R<()> {
        match c {
            Class::Param(orig) => {
                let ph = self.param_protected(
                    orig,
                    ParamAction::BlindIndex {
                        orig,
                        target: target.clone(),
                        tenant: TenantSource::None,
                        array,
                    },
                );
                self.override_type(orig, ty, array)?;
                *e = placeholder(ph);
                Ok(())
            }
            Class::Lit(Some(s)) if !array => {
                *e = self.slot(Some(s), target, SlotOp::BlindIndex, TenantSource::None);
                Ok(())
            }
            Class::Lit(None) => Ok(()),
            Class::Lit(Some(_)) => Err(self.unsupported_on(
                p,
                "= ANY with an array literal",
                "use col = ANY($1) with an array parameter, or col IN ('a', 'b')",
            )),
            _ => Err(self.unsupported_on(
                p,
                "comparing with an expression",
                "compare with a literal or a parameter ($n), which pgveil turns into a blind-index lookup",
            )),
        }
    }

    pub(super) fn function(&mut self, f: &mut Function, sc: &[Scope<'a>]) -> R<Class<'a>> {
        let fname = name_parts(&f.name).last().cloned().unwrap_or_default();
        let is_count = fname == "count";
        // FILTER, OVER, WITHIN GROUP and the like: fail closed.
        if f.filter.is_some() || f.over.is_some() || !f.within_group.is_empty() {
            let mut probe = f.clone();
            probe.args = FunctionArguments::None;
            self.generic(&probe, sc)?;
        }
        match &mut f.args {
            FunctionArguments::None => {}
            FunctionArguments::Subquery(q) => {
                let outs = self.query(q, sc)?;
                if let Some(p) = outs.iter().find_map(|o| o.prot.clone()) {
                    return Err(self.unsupported_on(
                        &p,
                        &format!("function {fname}()"),
                        "read the column and compute in the application",
                    ));
                }
            }
            FunctionArguments::List(list) => {
                let distinct = matches!(
                    list.duplicate_treatment,
                    Some(sqlparser::ast::DuplicateTreatment::Distinct)
                );
                if !list.clauses.is_empty() {
                    let probe = list.clauses.clone();
                    self.generic(&probe, sc)?;
                }
                let n = list.args.len();
                for a in list.args.iter_mut() {
                    let fe = match a {
                        FunctionArg::Unnamed(fe) => fe,
                        FunctionArg::Named { arg, .. } | FunctionArg::ExprNamed { arg, .. } => arg,
                    };
                    match fe {
                        FunctionArgExpr::Expr(x) => {
                            let c = self.expr(x, sc)?;
                            if let Class::Prot(p) = &c {
                                if is_count && n == 1 && !distinct {
                                    continue;
                                }
                                let (what, alt) = if is_count {
                                    (
                                        "count(DISTINCT …)",
                                        "ciphertexts of equal values differ; count distinct values of its blind index column instead",
                                    )
                                } else if matches!(
                                    fname.as_str(),
                                    "min" | "max" | "sum" | "avg" | "string_agg" | "array_agg"
                                ) {
                                    (
                                        "an aggregate other than count",
                                        "read the values and aggregate in the application",
                                    )
                                } else {
                                    (
                                        "a function call",
                                        "read the column and compute in the application",
                                    )
                                };
                                return Err(self.unsupported_on(
                                    p,
                                    &format!("{what} ({fname})"),
                                    alt,
                                ));
                            }
                            self.plain(c, "", "")?;
                        }
                        FunctionArgExpr::QualifiedWildcard(n) => {
                            let parts = name_parts(n);
                            let protected_rel = sc.iter().rev().any(|s| {
                                s.rels.iter().any(|r| {
                                    Self::rel_matches(r, &parts)
                                        && !matches!(r.kind, RelKind::Plain)
                                })
                            });
                            if protected_rel && !is_count {
                                return Err(Reject::unsupported(format!(
                                    "pgveil: function {fname}() over all columns of {n}, which include protected columns, is not supported: list the columns you need"
                                )));
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
        Ok(Class::Plain)
    }
}

fn op_words(op: &BinaryOperator) -> (&'static str, &'static str) {
    use BinaryOperator as B;
    match op {
        B::Lt | B::Gt | B::LtEq | B::GtEq => (
            "a range comparison",
            "ciphertext has no order; filter in the application after reading, or compare an unprotected column",
        ),
        B::PGLikeMatch | B::PGILikeMatch | B::PGNotLikeMatch | B::PGNotILikeMatch => (
            "LIKE",
            "pattern matching needs plaintext; match in the application after reading, or look up the exact value with =",
        ),
        B::PGRegexMatch | B::PGRegexIMatch | B::PGRegexNotMatch | B::PGRegexNotIMatch => (
            "a regular expression match",
            "match in the application after reading, or look up the exact value with =",
        ),
        _ => (
            "an operator",
            "compute with the value in the application after reading it",
        ),
    }
}
