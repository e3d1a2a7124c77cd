//! FROM items and joins: the relations of a query's scope ([`Rel`]) and the
//! checks on their join conditions.
//!
//! Column aliases on a protected relation, aliased parenthesized joins over
//! one, `JOIN … USING` a protected column and NATURAL JOIN involving a
//! protected table are refused: pgveil could not tell which column a name
//! then refers to. A function in FROM and FROM items the walker does not
//! model are checked fail closed.

use sqlparser::ast::{JoinConstraint, JoinOperator, TableFactor, TableWithJoins};

use super::{Cx, R, Rel, RelKind, Scope, name_parts, norm};
use crate::sql::Reject;

impl<'a> Cx<'a> {
    pub(super) fn factor(
        &mut self,
        tf: &mut TableFactor,
        sc: &[Scope<'a>],
        into: &mut Vec<Rel<'a>>,
    ) -> R<()> {
        if let TableFactor::Table {
            name,
            alias,
            args: Some(_),
            ..
        } = tf
        {
            // A function in FROM is implicitly LATERAL: its arguments see
            // the FROM items before it.
            let alias = alias.as_ref().map(|a| norm(&a.name));
            let name = name_parts(name).last().cloned().unwrap_or_default();
            let probe = tf.clone();
            return self.opaque_factor(&probe, alias, name, sc, into);
        }
        match tf {
            TableFactor::Table { name, alias, .. } => {
                let parts = name_parts(name);
                let (schema, tname, kind) = self.table_kind(&parts, sc)?;
                if let Some(a) = alias
                    && !a.columns.is_empty()
                    && !matches!(kind, RelKind::Plain)
                {
                    return Err(Reject::unsupported(format!(
                        "pgveil: column aliases on protected relation {name} are not supported: alias the columns in the select list instead"
                    )));
                }
                into.push(Rel {
                    alias: alias.as_ref().map(|a| norm(&a.name)),
                    schema,
                    name: tname,
                    kind,
                });
            }
            TableFactor::Derived {
                lateral,
                subquery,
                alias,
                ..
            } => {
                let inner_sc = if *lateral {
                    lateral_scope(sc, into)
                } else {
                    sc.to_vec()
                };
                let mut outs = self.query(subquery, &inner_sc)?;
                Self::positions_known(
                    &outs,
                    alias.as_ref().is_some_and(|a| !a.columns.is_empty()),
                )?;
                if let Some(a) = alias {
                    for (i, c) in a.columns.iter().enumerate() {
                        if let Some(o) = outs.get_mut(i) {
                            o.name = Some(norm(&c.name));
                        }
                    }
                }
                into.push(Rel {
                    alias: alias.as_ref().map(|a| norm(&a.name)),
                    schema: None,
                    name: String::new(),
                    kind: RelKind::Derived(std::rc::Rc::new(outs)),
                });
            }
            TableFactor::NestedJoin {
                table_with_joins,
                alias,
            } => {
                let mut inner = vec![];
                self.twj(table_with_joins, sc, &mut inner)?;
                if alias.is_some() && inner.iter().any(|r| !matches!(r.kind, RelKind::Plain)) {
                    return Err(Reject::unsupported(
                        "pgveil: an aliased parenthesized join over protected tables is not supported: alias the tables inside it",
                    ));
                }
                into.extend(inner);
            }
            other => {
                let probe = other.clone();
                self.opaque_factor(&probe, None, String::new(), sc, into)?;
            }
        }
        Ok(())
    }

    /// A FROM item the walker does not model (a function in FROM, and any
    /// other kind it has no case for): checked fail closed as a whole,
    /// seeing the FROM items before it, and in the scope as a plain
    /// relation called `alias` / `name`.
    fn opaque_factor(
        &mut self,
        probe: &TableFactor,
        alias: Option<String>,
        name: String,
        sc: &[Scope<'a>],
        into: &mut Vec<Rel<'a>>,
    ) -> R<()> {
        let fsc = lateral_scope(sc, into);
        self.generic(probe, &fsc)?;
        into.push(Rel {
            alias,
            schema: None,
            name,
            kind: RelKind::Plain,
        });
        Ok(())
    }

    /// Collect the relations of one FROM item and check its join conditions.
    pub(super) fn twj(
        &mut self,
        t: &mut TableWithJoins,
        sc: &[Scope<'a>],
        into: &mut Vec<Rel<'a>>,
    ) -> R<()> {
        let start = into.len();
        self.factor(&mut t.relation, sc, into)?;
        for j in t.joins.iter_mut() {
            self.factor(&mut j.relation, sc, into)?;
            let constraint = match &mut j.join_operator {
                JoinOperator::Join(c)
                | JoinOperator::Inner(c)
                | JoinOperator::Left(c)
                | JoinOperator::LeftOuter(c)
                | JoinOperator::Right(c)
                | JoinOperator::RightOuter(c)
                | JoinOperator::FullOuter(c)
                | JoinOperator::CrossJoin(c) => c,
                other => {
                    let probe = other.clone();
                    self.generic(&probe, sc)?;
                    continue;
                }
            };
            match constraint {
                JoinConstraint::On(e) => {
                    let jsc = lateral_scope(sc, into);
                    let c = self.expr(e, &jsc)?;
                    self.plain(c, "a join condition", "compare an unprotected key column")?;
                }
                JoinConstraint::Using(cols) => {
                    for c in cols.iter() {
                        let col = name_parts(c).last().cloned().unwrap_or_default();
                        if let Some(p) = into.iter().find_map(|r| self.column_in(r, &col)) {
                            return Err(self.unsupported_on(
                                &p,
                                "JOIN … USING",
                                "join with ON on the blind-index column, or on an unprotected key",
                            ));
                        }
                    }
                    // PostgreSQL's `*` over the join shows each USING
                    // column once, first: the join's columns are not its
                    // relations' columns one after the other. A relation of
                    // unknown width in front makes their positions unknown.
                    if into[start..]
                        .iter()
                        .any(|r| !matches!(r.kind, RelKind::Plain))
                    {
                        into.insert(
                            start,
                            Rel {
                                alias: None,
                                schema: None,
                                name: String::new(),
                                kind: RelKind::Plain,
                            },
                        );
                    }
                }
                JoinConstraint::Natural => {
                    if into.iter().any(|r| !matches!(r.kind, RelKind::Plain)) {
                        return Err(Reject::unsupported(
                            "pgveil: NATURAL JOIN involving a protected table is not supported: use JOIN … ON with explicit columns",
                        ));
                    }
                }
                JoinConstraint::None => {}
            }
        }
        Ok(())
    }
}

/// The scope `sc` with the FROM items collected so far as its innermost
/// level: what a LATERAL item, a function in FROM or a join condition sees.
fn lateral_scope<'a>(sc: &[Scope<'a>], into: &[Rel<'a>]) -> Vec<Scope<'a>> {
    let mut out = sc.to_vec();
    out.push(Scope {
        rels: into.to_vec(),
        ctes: vec![],
    });
    out
}
