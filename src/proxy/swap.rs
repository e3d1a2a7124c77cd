//! How an open session moves to the policy engine of a reloaded
//! configuration. The move happens at a transaction boundary: nothing
//! awaits an answer, the last ReadyForQuery said `I` (idle, outside any
//! transaction block) and no COPY is open; it is the point where the
//! session already re-reads its catalog. So a statement, and a transaction,
//! is served by one policy from start to end, and the catalog query of the
//! new policy (which can differ from the old one's) runs between
//! transactions on the session's own connection.
//!
//! What stays valid across the move: statements the session prepared
//! (named, through the protocol or SQL `PREPARE`) were planned by the old
//! analyzer, and pgveil cannot plan them again (it does not keep their
//! text, and does not track pass-through ones at all). Plans depend on the
//! protected columns and on a role's `write` and `search` capabilities;
//! decryption (`read`) is decided per result by the backend and follows
//! the new policy at once (a prepared `COPY … TO STDOUT` too: its planned
//! decryption is narrowed to what the role may still read when it starts,
//! `Backend::still_readable`). So a session that may hold prepared statements
//! is closed at the boundary (FATAL 57P01, counted in
//! `pgveil_reload_sessions_closed_total`) when the reload changed the
//! protected columns (tables, columns, types, blind indexes, tenants) or
//! its role's `write`/`search` on any of them; every other session, and
//! every change to `read` alone, moves in place. A reload that moved the
//! upstream server (host or port) closes open sessions at the boundary
//! too, as PgBouncer does with server connections.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::shared::Shared;
use crate::policy::Policy;
use crate::session::Engine;

/// The per-session follower of reloads (held by the relay's
/// client-to-server half).
pub struct Follow {
    shared: Arc<Shared>,
    seen: u64,
    /// The PostgreSQL this session is connected to.
    upstream: (String, u16),
    /// The session may hold named prepared statements.
    prepared: bool,
    inbox: Arc<Inbox>,
}

/// Where the client-to-server half leaves the new engine for the
/// server-to-client half, which takes it before it handles the next
/// answers.
#[derive(Default)]
pub struct Inbox {
    ready: AtomicBool,
    engine: Mutex<Option<Arc<Engine>>>,
}

impl Inbox {
    /// The engine to use from now on, if one was left.
    pub fn take(&self) -> Option<Arc<Engine>> {
        if !self.ready.swap(false, Ordering::AcqRel) {
            return None;
        }
        self.engine.lock().expect("engine inbox").take()
    }

    fn put(&self, e: Arc<Engine>) {
        *self.engine.lock().expect("engine inbox") = Some(e);
        self.ready.store(true, Ordering::Release);
    }
}

/// What a session does at a transaction boundary after a reload.
pub enum Step {
    /// Keep going (nothing changed for this session).
    Stay,
    /// Use this engine from the next statement on (after loading its
    /// catalog).
    Adopt(Arc<Engine>),
    /// Close the session with this message.
    Close(&'static str),
}

/// Why a session is closed when a reload changes how its prepared statements are rewritten.
pub const CLOSE_PREPARED: &str = "pgveil: the policy was reloaded and changes how statements this session prepared are rewritten (protected columns, or this role's write or search access, changed): reconnect";
/// Why a session is closed when a reload moves the upstream server.
pub const CLOSE_UPSTREAM: &str =
    "pgveil: a reload moved the upstream server (upstream.host or upstream.port): reconnect";

impl Follow {
    /// Follow the reloads of `shared` from generation `seen`, for a session connected to `upstream`.
    pub fn new(shared: Arc<Shared>, seen: u64, upstream: (String, u16)) -> Follow {
        Follow {
            shared,
            seen,
            upstream,
            prepared: false,
            inbox: Arc::new(Inbox::default()),
        }
    }

    /// Where the backend half takes the engine the client half moved to.
    pub fn inbox(&self) -> Arc<Inbox> {
        self.inbox.clone()
    }

    /// Note a client message: a Parse with a statement name, or any text
    /// that may hold SQL `PREPARE`, may leave a prepared statement behind.
    pub fn observe(&mut self, tag: u8, body: &[u8]) {
        if self.prepared {
            return;
        }
        self.prepared = match tag {
            b'P' => body.first().is_some_and(|&b| b != 0) || mentions_prepare(body),
            b'Q' => mentions_prepare(body),
            _ => false,
        };
    }

    /// Whether a reload happened since this session last looked.
    pub fn due(&self) -> bool {
        self.shared.generation() != self.seen
    }

    /// At a transaction boundary: what to do about the configuration now
    /// in force, for a session of `role` whose engine is `current`.
    pub fn step(&mut self, current: &Arc<Engine>, role: &str) -> Step {
        self.seen = self.shared.generation();
        let live = self.shared.live();
        if (live.upstream.host.as_str(), live.upstream.port)
            != (self.upstream.0.as_str(), self.upstream.1)
        {
            return Step::Close(CLOSE_UPSTREAM);
        }
        let Some(next) = live.engine.clone() else {
            // A reload never removes the policy (it needs a restart).
            return Step::Stay;
        };
        if Arc::ptr_eq(&next, current) {
            return Step::Stay;
        }
        if self.prepared
            && (structure(&current.policy) != structure(&next.policy)
                || capabilities(&current.policy, role) != capabilities(&next.policy, role))
        {
            return Step::Close(CLOSE_PREPARED);
        }
        self.inbox.put(next.clone());
        Step::Adopt(next)
    }
}

/// ASCII-case-insensitive search for `prepare`.
fn mentions_prepare(body: &[u8]) -> bool {
    body.windows(7).any(|w| w.eq_ignore_ascii_case(b"prepare"))
}

/// What plans depend on, apart from access: the protected tables and
/// columns with their types, blind indexes and tenant columns (not their
/// lines in the file).
fn structure(p: &Policy) -> BTreeMap<(String, String), String> {
    p.tables
        .iter()
        .map(|t| {
            let cols: Vec<String> = t
                .columns
                .iter()
                .map(|c| {
                    format!(
                        "{}:{:?}:{:?}",
                        c.name,
                        c.ty,
                        c.blind_index
                            .as_ref()
                            .map(|b| (&b.column, &b.normalize, &b.next))
                    )
                })
                .collect();
            (
                (t.schema.clone(), t.table.clone()),
                format!("{:?}|{}", t.tenant, cols.join(",")),
            )
        })
        .collect()
}

/// `role`'s `write` and `search` on every protected column (what plans
/// depend on; `read` is decided per result).
fn capabilities(p: &Policy, role: &str) -> BTreeMap<String, (bool, bool)> {
    let mut out = BTreeMap::new();
    for t in &p.tables {
        for c in &t.columns {
            let a = p.column_access(role, c).unwrap_or_default();
            out.insert(
                format!("{}.{}.{}", t.schema, t.table, c.name),
                (a.write, a.search),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "version: 1\ngroups:\n  app: [alice]\ntables:\n  public.t:\n    columns:\n      email:\n        type: text\n        blind_index: { column: email_bidx }\n        access: { app: read, bob: search }\n";

    fn policy(text: &str) -> Policy {
        Policy::from_text(std::path::Path::new("p.yaml"), text).unwrap()
    }

    #[test]
    fn read_changes_keep_structure_and_capabilities() {
        let a = policy(BASE);
        // bob: search -> read adds read only; a comment moves lines.
        let b = policy(&format!(
            "# moved\n{}",
            BASE.replace("bob: search", "bob: read")
        ));
        assert_eq!(structure(&a), structure(&b));
        assert_eq!(capabilities(&a, "bob"), capabilities(&b, "bob"));
        assert_eq!(capabilities(&a, "alice"), capabilities(&b, "alice"));
        // alice read -> write loses search.
        let c = policy(&BASE.replace("app: read", "app: write"));
        assert_ne!(capabilities(&a, "alice"), capabilities(&c, "alice"));
        // a new blind-index column (rotation) changes the structure.
        let d = policy(&BASE.replace(
            "{ column: email_bidx }",
            "{ column: email_bidx, next: email_bidx2 }",
        ));
        assert_ne!(structure(&a), structure(&d));
    }

    #[test]
    fn prepared_statements_are_noticed() {
        assert!(mentions_prepare(b"PrePare s AS SELECT 1\0"));
        assert!(!mentions_prepare(b"SELECT 1\0"));
    }
}
