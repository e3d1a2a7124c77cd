//! pgveil's map of the session's prepared statements and portals that
//! involve protected tables ([`Names`]). A name changes only when
//! PostgreSQL confirms it (the backend's [`Resolution`]s); until then the
//! change waits unresolved, and a name whose meaning depends on an
//! unanswered change is [`View::Ambiguous`]. Never records pass-through
//! statements.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::session::{Exchange, Prepared, Resolution};
use crate::sql::SqlName;

/// The two namespaces PostgreSQL keeps per session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Space {
    Statement,
    Portal,
}

/// A change to a name that pgveil forwarded and PostgreSQL has not answered.
#[derive(Debug)]
struct Change {
    id: u64,
    space: Space,
    name: String,
    /// What the name refers to once it happens (`None`: nothing protected).
    value: Option<Arc<Prepared>>,
    /// The Sync-delimited stretch of messages it was sent in: PostgreSQL
    /// skips every later message of that stretch when it fails, so for
    /// those it has certainly happened. `u64::MAX`: never certain (a SQL
    /// `DEALLOCATE` can fail without skipping what follows).
    segment: u64,
}

/// What a name refers to for the message being handled.
#[derive(Debug)]
pub(super) enum View {
    /// The statement or portal (`None`: nothing protected, or unknown).
    Known(Option<Arc<Prepared>>),
    /// A change still unanswered from an earlier Sync could leave the
    /// name meaning something protected other than what pgveil would
    /// assume: refused.
    Ambiguous,
}

/// pgveil's view of the session's prepared statements and portals that
/// involve protected tables. A name enters or leaves the maps only when
/// PostgreSQL confirms it (ParseComplete, BindComplete, CloseComplete, a
/// Query that ran, a `DEALLOCATE`'s CommandComplete); until then the change
/// waits in `unresolved`. Names that are not in the maps are unprotected or
/// do not exist: their messages are forwarded as they are, so pass-through
/// statements record nothing.
#[derive(Debug, Default)]
pub(super) struct Names {
    statements: HashMap<String, Arc<Prepared>>,
    portals: HashMap<String, Arc<Prepared>>,
    unresolved: VecDeque<Change>,
    next_id: u64,
    /// Syncs sent so far.
    pub(super) segment: u64,
}

pub(super) fn same(a: Option<&Arc<Prepared>>, b: Option<&Arc<Prepared>>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        _ => false,
    }
}

impl Names {
    fn map(&mut self, space: Space) -> &mut HashMap<String, Arc<Prepared>> {
        match space {
            Space::Statement => &mut self.statements,
            Space::Portal => &mut self.portals,
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.statements.is_empty() && self.portals.is_empty() && self.unresolved.is_empty()
    }

    /// Apply PostgreSQL's answers (in the order it gave them).
    pub(super) fn drain(&mut self, exchange: &Exchange) {
        for r in exchange.take_resolutions() {
            self.apply(r);
        }
    }

    pub(super) fn apply(&mut self, r: Resolution) {
        match r {
            Resolution::Op(id, ok) => {
                // Answers come in the order the changes were sent; a change
                // older than this answer without one of its own did not
                // happen.
                while self.unresolved.front().is_some_and(|c| c.id <= id) {
                    let c = self.unresolved.pop_front().expect("front");
                    if c.id == id && ok {
                        match c.value {
                            Some(v) => self.map(c.space).insert(c.name, v),
                            None => self.map(c.space).remove(&c.name),
                        };
                    }
                }
            }
            Resolution::ForgetAll { portals } => {
                // `DEALLOCATE ALL` and `DISCARD ALL` drop the named
                // prepared statements only: PostgreSQL keeps the unnamed
                // one (a simple Query drops it itself, see `query_ops`),
                // and a Bind of it must still be rewritten.
                self.statements.retain(|name, _| name.is_empty());
                if portals {
                    self.portals.clear();
                }
            }
            Resolution::ForgetPortals => self.portals.clear(),
        }
    }

    /// Record a change that happens when PostgreSQL confirms it; returns
    /// its id for the pending entry (0: nothing changes, nothing to wait
    /// for).
    pub(super) fn set(&mut self, space: Space, name: &str, value: Option<Arc<Prepared>>) -> u64 {
        self.set_in(space, name, value, self.segment)
    }

    pub(super) fn set_in(
        &mut self,
        space: Space,
        name: &str,
        value: Option<Arc<Prepared>>,
        segment: u64,
    ) -> u64 {
        let map = self.known(space);
        let pending = !self.unresolved.is_empty()
            && self
                .unresolved
                .iter()
                .any(|c| c.space == space && c.name == name);
        let now = if map.is_empty() { None } else { map.get(name) };
        // A protected portal is recorded even when the map already holds
        // it: a ReadyForQuery `I` still on its way may make pgveil forget
        // the name, and only the confirmation of this Bind (an answer
        // after that one) puts it back.
        let rebound = space == Space::Portal && value.is_some();
        if !pending && !rebound && same(now, value.as_ref()) {
            return 0;
        }
        self.next_id += 1;
        self.unresolved.push_back(Change {
            id: self.next_id,
            space,
            name: name.to_string(),
            value,
            segment,
        });
        self.next_id
    }

    /// What `name` may refer to for a message sent now: the value assumed
    /// if every change so far happens, and the others it could have.
    pub(super) fn possible(
        &self,
        space: Space,
        name: &str,
    ) -> (Option<Arc<Prepared>>, Vec<Arc<Prepared>>) {
        let map = self.known(space);
        let mut current = if map.is_empty() {
            None
        } else {
            map.get(name).cloned()
        };
        let mut others: Vec<Arc<Prepared>> = Vec::new();
        for c in self
            .unresolved
            .iter()
            .filter(|c| c.space == space && c.name == name)
        {
            if c.segment == self.segment {
                // If it failed, PostgreSQL skips this message too.
                others.clear();
            } else {
                others.extend(current.take());
            }
            current = c.value.clone();
        }
        (current, others)
    }

    pub(super) fn view(&self, space: Space, name: &str) -> View {
        let (current, others) = self.possible(space, name);
        if others
            .iter()
            .all(|o| current.as_ref().is_some_and(|c| Arc::ptr_eq(c, o)))
        {
            View::Known(current)
        } else {
            View::Ambiguous
        }
    }

    /// Whether `name` may be a statement pgveil prepared with a rewrite
    /// (known, or still waiting for PostgreSQL's answer).
    pub(super) fn may_be_protected(&self, name: &SqlName) -> bool {
        match name {
            SqlName::Ident(n) => {
                let (current, others) = self.possible(Space::Statement, n);
                current.is_some() || !others.is_empty()
            }
            SqlName::Unknown => self.any_statement(),
        }
    }

    /// Whether `name` may be a portal pgveil bound for a statement on
    /// protected tables (known, or still waiting for PostgreSQL's answer).
    pub(super) fn may_be_protected_portal(&self, name: &str) -> bool {
        let (current, others) = self.possible(Space::Portal, name);
        current.is_some() || !others.is_empty()
    }

    /// Whether some portal may be one pgveil bound for a statement on
    /// protected tables (known, or still waiting for PostgreSQL's answer).
    pub(super) fn any_portal(&self) -> bool {
        self.any(Space::Portal)
    }

    /// Whether some statement may be one pgveil prepared with a rewrite
    /// (known, or still waiting for PostgreSQL's answer).
    pub(super) fn any_statement(&self) -> bool {
        self.any(Space::Statement)
    }

    fn any(&self, space: Space) -> bool {
        !self.known(space).is_empty()
            || self
                .unresolved
                .iter()
                .any(|c| c.space == space && c.value.is_some())
    }

    /// The names PostgreSQL confirmed in `space`.
    fn known(&self, space: Space) -> &HashMap<String, Arc<Prepared>> {
        match space {
            Space::Statement => &self.statements,
            Space::Portal => &self.portals,
        }
    }
}

/// A prepared statement is protected when pgveil rewrites its text or its
/// COPY data; the others are not recorded.
pub(super) fn protected(p: Prepared) -> Option<Arc<Prepared>> {
    (p.plan.is_some() || p.copy.is_some()).then(|| Arc::new(p))
}
