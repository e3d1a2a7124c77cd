//! Statements sent behind one that may change the catalog (DDL, DO, CALL,
//! EXECUTE) or how text is read (SET, DISCARD, RESET) before its result
//! arrived (`sql::batch`): pgveil would plan them against the old catalog
//! or settings, so they are refused, within a pipeline and within one
//! simple Query.

use super::Frontend;
use super::refusal::{Refusal, refuse};
use crate::session::CatalogEntry;
use crate::sql::batch;

impl Frontend {
    /// Take note of a statement (or a simple query's statements) before it
    /// is handled: whether it follows an unsettled statement, and whether
    /// it is one itself. A few tokens per statement; the `;` search only
    /// runs on simple queries.
    pub(super) fn settle(&mut self, sql: &str, simple: bool) -> Option<Refusal> {
        // Settled once every earlier request has been answered and, after
        // DDL, the catalog has been re-read (which happens between
        // statements outside a transaction block: inside one, statements
        // after DDL on protected tables wait for COMMIT or ROLLBACK).
        if self.exchange.is_idle() {
            self.settle_idle();
        }
        self.behind_unsettled = self.unsettled;
        let effect = self.statement_effect(sql, simple);
        self.unsettled = self.unsettled.max(effect);
        (self.behind_unsettled == batch::Effect::Catalog && !batch::may_follow_ddl(sql))
            .then(|| {
                refuse(
                    "0A000",
                    "pgveil: a statement was sent before the result of an earlier statement that can change the catalog (DDL, DO, CALL or EXECUTE): pgveil would plan it against the old catalog, so it refuses; wait for the earlier statement's result (Sync) before sending more",
                )
            })
    }

    /// With nothing in flight: what was unsettled is settled, unless it
    /// was DDL whose catalog has not been re-read yet.
    pub(super) fn settle_idle(&mut self) {
        if self.unsettled != batch::Effect::Catalog || !self.engine.is_stale(&self.entry()) {
            self.unsettled = batch::Effect::None;
        }
    }

    /// What a statement (a simple query's statements: `simple`) leaves
    /// unsettled until its result arrives.
    pub(super) fn statement_effect(&self, sql: &str, simple: bool) -> batch::Effect {
        let effect = if simple && sql.contains(';') {
            crate::sql::split_statements(sql)
                .into_iter()
                .map(|r| batch::effect(&sql[r]))
                .max()
                .unwrap_or(batch::Effect::None)
        } else {
            batch::effect(sql)
        };
        // DDL that names no protected table (or view over one) cannot
        // change what pgveil protects; code (DO, CALL, EXECUTE) might.
        if effect == batch::Effect::Catalog
            && !self.entry().analyzer.may_touch_protected(sql)
            && !batch::runs_code(sql)
        {
            return batch::Effect::None;
        }
        effect
    }

    /// A statement on protected tables sent behind one that may change
    /// settings, before that one's result arrived.
    pub(super) fn unsettled_refusal(&self) -> Option<Refusal> {
        (self.behind_unsettled == batch::Effect::Settings).then(|| {
            refuse(
                "0A000",
                "pgveil: a statement on protected tables was sent before the result of an earlier statement that changes how statements are read (SET of search_path, role, session authorization, client_encoding or standard_conforming_strings; DISCARD; RESET): pgveil would plan it against the old settings, so it refuses; wait for the earlier statement's result (Sync) before sending it",
            )
        })
    }

    /// Within one simple query: the first statement that follows a DDL
    /// statement (anything but transaction control), or that touches
    /// protected tables after a settings change, is refused with the
    /// rest of the query.
    pub(super) fn batch_refusal(
        &self,
        sql: &str,
        entry: &CatalogEntry,
    ) -> Option<(usize, Refusal)> {
        let ranges = crate::sql::split_statements(sql);
        if ranges.len() < 2 {
            return None;
        }
        let mut after = batch::Effect::None;
        for (i, r) in ranges.iter().enumerate() {
            let text = &sql[r.clone()];
            match after {
                batch::Effect::Catalog if !batch::may_follow_ddl(text) => {
                    return Some((
                        i,
                        refuse(
                            "0A000",
                            format!(
                                "pgveil: statement {} of this query follows a statement that can change the catalog (DDL, DO, CALL or EXECUTE) in the same query; pgveil plans every statement against the catalog as it was before the query, so it refuses the query: send statements that read or write data in a query of their own after the DDL",
                                i + 1
                            ),
                        ),
                    ));
                }
                batch::Effect::Settings if entry.analyzer.may_touch_protected(text) => {
                    return Some((
                        i,
                        refuse(
                            "0A000",
                            format!(
                                "pgveil: statement {} of this query touches protected tables after a statement that changes how statements are read (search_path, role, session authorization, client_encoding or standard_conforming_strings) in the same query: send that change in a query of its own first",
                                i + 1
                            ),
                        ),
                    ));
                }
                _ => {}
            }
            let mut e = batch::effect(text);
            if e == batch::Effect::None && batch::calls_set_config(text) {
                e = batch::Effect::Settings;
            }
            after = after.max(e);
        }
        None
    }
}
