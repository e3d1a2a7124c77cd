//! The plan a walk builds, and its output: parameter actions (a client
//! parameter rewritten in place, or a parameter pgveil appends), literal
//! slots for the values pgveil encrypts or blind-indexes, parameter type
//! overrides, the columns the statement touches, and the finished
//! [`RewritePlan`] with the rewrite spliced into the client's own text.
//!
//! Invariant: the text a [`RewritePlan`] sends is the client's, with
//! pgveil's edits at PostgreSQL token boundaries (`super::splice`); the AST
//! is never printed for sending, and the values pgveil computes go into the
//! plan's literal slots and parameters, never into the text it splices.

use std::ops::Range;

use sqlparser::ast::{Expr, Statement};

use super::{Cx, R, internal, mentioned, placeholder};
use crate::crypto::types::PgType;
use crate::sql::{
    ColumnRef, LiteralSlot, ParamAction, Reject, RewritePlan, Segment, SlotOp, StatementKind,
    TenantSource, Use, array, splice,
};

impl<'a> Cx<'a> {
    pub(super) fn param_protected(&mut self, orig: usize, action: ParamAction) -> String {
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

    pub(super) fn param_append(&mut self, action: ParamAction) -> String {
        self.changed = true;
        if let Some(&i) = self.extra.get(&action) {
            return format!("${}", i + 1);
        }
        let i = self.n_client + self.appended.len();
        self.appended.push(action.clone());
        self.extra.insert(action, i);
        format!("${}", i + 1)
    }

    pub(super) fn override_type(&mut self, orig: usize, ty: PgType, array: bool) -> R<()> {
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

    pub(super) fn slot(
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
    pub(super) fn slot_array(
        &mut self,
        items: &[Option<String>],
        target: &ColumnRef,
        op: SlotOp,
        tenants: Vec<TenantSource>,
    ) -> Expr {
        let e = self.slot(
            Some(array::render_text(items)),
            target,
            op,
            TenantSource::None,
        );
        self.literals.last_mut().expect("just pushed").tenants = tenants;
        e
    }

    pub(super) fn touch(&mut self, c: &ColumnRef, u: Use) {
        if !self.touched.iter().any(|(x, y)| x == c && *y == u) {
            self.touched.push((c.clone(), u));
        }
    }

    pub(super) fn param_index(&mut self, s: &str) -> R<usize> {
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

    pub(super) fn finish(
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
    pub(super) fn spliced(&mut self, text: &str, stmt: &Statement) -> R<String> {
        let before = self.before.as_ref().ok_or_else(internal)?;
        match splice::splice_printed(text, before, stmt) {
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
