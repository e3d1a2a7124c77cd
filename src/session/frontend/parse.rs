//! Parse: a statement that names no protected table is recorded (when it
//! replaces a protected one) and forwarded untouched; one that may is
//! planned, its literals encrypted into the text, and the rewritten Parse
//! recorded in the name map, to take effect when PostgreSQL confirms it.
//! Held whole, never streamed.

use std::sync::Arc;

use bytes::BytesMut;

use super::Frontend;
use super::lex::pg_name;
use super::names::{Space, protected};
use super::refusal::{NOT_UTF8, Refusal, binary_copy_in, refuse, unkeyable};
use crate::session::{Pending, Prepared};
use crate::sql::{CopyDirection, Mode, RewritePlan, StatementPlan};
use crate::wire::codec::{Frame, read_cstr};
use crate::wire::query::ParseMsg;

fn client_param_count(rp: &RewritePlan, declared: &[u32]) -> usize {
    rp.params
        .iter()
        .map(|p| p.orig() + 1)
        .max()
        .unwrap_or(0)
        .max(declared.len())
}

fn plan_kind(p: &StatementPlan) -> &'static str {
    match p {
        StatementPlan::Passthrough { .. } => "passthrough",
        StatementPlan::Rewrite(_) => "rewrite",
        StatementPlan::Copy(_) => "copy",
        StatementPlan::Reject { .. } => "reject",
    }
}
impl Frontend {
    /// A Parse: forwarded untouched, refused, or planned and sent with its
    /// statement rewritten.
    pub(super) async fn on_parse(&mut self, f: &Frame, out: &mut BytesMut) {
        if self.parse_hot_path(f, out) {
            return;
        }
        let Some(mut parse) = ParseMsg::decode(f.body()) else {
            self.undecodable_parse(f, out);
            return;
        };
        // Keyed as PostgreSQL keys it (the hot path above refused names it
        // cannot key); the name sent upstream stays the client's.
        let key = pg_name(&parse.name, self.lex.names_unconverted())
            .unwrap_or_default()
            .to_string();
        let entry = self.entry();
        if !entry.analyzer.may_touch_protected(&parse.query) {
            self.pass_parse(&key, f, out);
            return;
        }
        self.await_answers_for(&parse.query).await;
        if let Some(r) = self
            .unsettled_refusal()
            .or_else(|| self.read_differently(&parse.query))
        {
            self.raise(&r, out);
            return;
        }
        self.rewrite_charge = match self.charge_rewrite(parse.query.len()).await {
            Ok(c) => c,
            Err(r) => {
                self.raise(&r, out);
                return;
            }
        };
        let plans = entry.plan(
            &parse.query,
            &self.id.login_role,
            Mode::Extended {
                param_types: &parse.param_types,
            },
        );
        tracing::debug!(
            statement = %parse.name,
            plan = plans.first().map(plan_kind).unwrap_or("none"),
            "parse planned"
        );
        match self.prepare(plans.first(), &parse).await {
            Ok((sql, types, prepared)) => {
                crate::metrics::hot().statements_rewritten.increment(1);
                self.names.drain(&self.exchange);
                let value = self.shared_prepared(prepared);
                let op = self.names.set(Space::Statement, &key, value);
                self.exchange.push(Pending::Parse {
                    internal: false,
                    op,
                });
                ParseMsg {
                    name: std::mem::take(&mut parse.name),
                    query: sql,
                    param_types: types,
                }
                .encode(out);
            }
            Err(r) => {
                self.raise(&r, out);
            }
        }
    }

    /// Hot path: read the name and text in place; a statement that
    /// touches no protected table is recorded and forwarded untouched, and
    /// one that cannot be keyed, follows an unsettled statement or runs a
    /// protected statement or portal through SQL is refused. True when
    /// the Parse was handled here.
    fn parse_hot_path(&mut self, f: &Frame, out: &mut BytesMut) -> bool {
        let mut b = f.body();
        let (Some(name), Some(query)) = (read_cstr(&mut b), read_cstr(&mut b)) else {
            return false;
        };
        let Some(name) = pg_name(name, self.lex.names_unconverted()) else {
            let r = unkeyable("statement");
            self.raise(&r, out);
            return true;
        };
        if let Some(r) = self.settle(query, false) {
            self.raise(&r, out);
            return true;
        }
        if let Some(r) = self
            .sql_execute(query.as_bytes())
            .or_else(|| self.sql_fetch(query.as_bytes()))
        {
            self.raise(&r, out);
            return true;
        }
        if !self.entry().analyzer.may_touch_protected(query) {
            self.pass_parse(name, f, out);
            return true;
        }
        false
    }

    /// The statement as the name map records it: the one recorded for the
    /// last Parse when this one prepares the same plan the same way (a
    /// driver that parses the unnamed statement again for every execution
    /// then changes nothing in the map: the name keeps the same value, so
    /// there is no change to wait for, see `Names::set`). Only for plans
    /// whose text carries no encrypted literal (each Parse encrypts those
    /// anew) and statements that are no COPY.
    fn shared_prepared(&mut self, p: Prepared) -> Option<Arc<Prepared>> {
        let reusable = p.copy.is_none()
            && p.deferred_literals.is_empty()
            && p.plan.as_ref().is_some_and(|rp| rp.literals.is_empty());
        if reusable
            && let Some(m) = &self.prepared_memo
            && let (Some(a), Some(b)) = (&m.plan, &p.plan)
            && Arc::ptr_eq(a, b)
            && m.client_params == p.client_params
            && m.declared == p.declared
        {
            return Some(m.clone());
        }
        let value = protected(p);
        if reusable {
            self.prepared_memo = value.clone();
        }
        value
    }

    /// Forward a Parse that names no protected table: `name` then means
    /// nothing protected, once PostgreSQL confirms it.
    fn pass_parse(&mut self, name: &str, f: &Frame, out: &mut BytesMut) {
        crate::metrics::hot().statements_passthrough.increment(1);
        let op = self.names.set(Space::Statement, name, None);
        self.exchange.push(Pending::Parse {
            internal: false,
            op,
        });
        self.forward(f, out);
    }

    /// A Parse that does not decode (malformed, or not UTF-8): it cannot
    /// be analysed. If even a lossy reading names no protected table,
    /// PostgreSQL judges it; otherwise it is refused here and never goes
    /// upstream.
    fn undecodable_parse(&mut self, f: &Frame, out: &mut BytesMut) {
        let lossy = String::from_utf8_lossy(f.body());
        let suspect = self.entry().analyzer.may_touch_protected(&lossy)
            || (crate::sql::mentions_execute(&lossy) && self.names.any_statement());
        if !suspect {
            self.exchange.push(Pending::Parse {
                internal: false,
                op: 0,
            });
            self.forward(f, out);
            return;
        }
        let r = if std::str::from_utf8(f.body()).is_err() {
            refuse("22021", NOT_UTF8)
        } else {
            refuse("08P01", "pgveil: invalid Parse message")
        };
        // The client's statement never reaches PostgreSQL: its name
        // keeps what it had.
        self.raise(&r, out);
    }

    /// What a planned Parse sends and records, by its (first) plan: the
    /// statement text, the parameter types and the statement as pgveil
    /// prepared it.
    async fn prepare(
        &mut self,
        plan: Option<&StatementPlan>,
        parse: &ParseMsg,
    ) -> Result<(String, Vec<u32>, Prepared), Refusal> {
        match plan {
            None | Some(StatementPlan::Passthrough { .. }) => Ok((
                parse.query.clone(),
                parse.param_types.clone(),
                Prepared {
                    plan: None,
                    deferred_literals: vec![],
                    copy: None,
                    client_params: parse.param_types.len(),
                    declared: parse.param_types.clone(),
                },
            )),
            Some(StatementPlan::Rewrite(rp)) => match self.render(rp, true).await {
                Ok((sql, deferred)) => Ok((
                    sql,
                    rp.parse_param_types
                        .iter()
                        .copied()
                        .chain(deferred.iter().map(|_| 0))
                        .collect(),
                    Prepared {
                        client_params: client_param_count(rp, &parse.param_types),
                        declared: parse.param_types.clone(),
                        plan: Some(rp.clone()),
                        copy: None,
                        deferred_literals: deferred,
                    },
                )),
                Err(r) => Err(r),
            },
            Some(StatementPlan::Copy(cp)) => {
                if cp.direction == CopyDirection::In && cp.format == crate::sql::CopyFormat::Binary
                {
                    Err(binary_copy_in(cp))
                } else {
                    Ok((
                        cp.sql.clone(),
                        Vec::new(),
                        Prepared {
                            plan: None,
                            deferred_literals: vec![],
                            copy: Some(cp.clone()),
                            client_params: 0,
                            declared: vec![],
                        },
                    ))
                }
            }
            Some(StatementPlan::Reject { sqlstate, message }) => {
                Err(refuse(sqlstate, message.clone()))
            }
        }
    }
}
