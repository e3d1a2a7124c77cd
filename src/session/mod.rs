//! The session layer: what pgveil does to the messages of one connection
//! when a policy is loaded. The proxy (`crate::proxy`) moves bytes; this
//! module decides, per message, whether to forward, rewrite or reject.
//!
//! - `frontend`: client → server (Query, Parse, Bind, COPY data …), plans
//!   statements with `crate::sql` and encrypts parameters and literals.
//! - `backend`: server → client, matches each response to the request that
//!   caused it (a FIFO of [`Pending`] entries), rewrites RowDescription and
//!   ParameterDescription types, decrypts DataRow fields.
//! - `pending`: the FIFO of [`Pending`] replies expected from PostgreSQL,
//!   and the [`Resolution`]s of the frontend's statement/portal map changes.
//! - `values`: the bridge to `crate::crypto` and `crate::keys` (re-exports
//!   `crate::seal`, which the ops commands share).
//! - `engine`: process-wide state, the catalogs per database.
//! - `catalog`: one database's catalog; `plan_cache`: its plan cache.

pub mod backend;
pub mod copy;
pub mod copy_out;
pub mod database;
pub mod engine;
pub mod frontend;
pub mod pending;
mod plan_cache;
pub mod rows;
pub mod values;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

pub use database::CatalogEntry;
pub use engine::Engine;
pub use pending::{Kind, Pending, QueryOp, Resolution};
// Defined where the audit log needs them, which must not depend on sessions.
pub use crate::audit::{AuditInfo, Identity};

use crate::policy::catalog::ProtectedAttr;
use crate::sql::{CopyPlan, RewritePlan};

/// How one result column is transformed for this session.
#[derive(Debug, Clone)]
pub struct Decrypt {
    pub attr: Arc<ProtectedAttr>,
    /// Wire format the client gets the column in (0 text, 1 binary).
    pub format: i16,
    /// Wire format PostgreSQL sends the column in. Differs from `format`
    /// when pgveil asked for binary `bytea` on the client's behalf (a
    /// simple-query SELECT sent as Parse/Bind, see [`Pending::ResultShape`]).
    pub wire: i16,
    /// Result column holding the row's tenant id (tenant tables), with its
    /// SQL type and wire format.
    pub tenant: Option<(usize, String, i16)>,
    /// The column part of the AAD (`envelope::aad_names`), built once per
    /// result column instead of once per value.
    pub aad_names: Arc<[u8]>,
    /// A blind-index column of `attr` shown to a role without `search` on
    /// it: sent as NULL, never decrypted. Its values would let the role
    /// compare a guess it wrote with every other row (an equality oracle).
    pub mask: bool,
}

impl Decrypt {
    /// A column the role reads decrypted, in wire format `format` both
    /// ways, its tenant id (if checked) in result column `tenant`.
    pub fn read(
        attr: Arc<ProtectedAttr>,
        format: i16,
        tenant: Option<(usize, String, i16)>,
    ) -> Decrypt {
        let c = &attr.column;
        let ctx = crate::crypto::ColumnContext::new(&c.schema, &c.table, &c.column, attr.policy.ty);
        let aad_names = crate::crypto::envelope::aad_names(&ctx).into();
        Decrypt {
            attr,
            format,
            wire: format,
            tenant,
            aad_names,
            mask: false,
        }
    }
}

/// The row shape of a result: per column, `Some` when it is decrypted.
pub type Shape = Arc<Vec<Option<Decrypt>>>;

/// A prepared statement as the session knows it.
#[derive(Debug)]
pub struct Prepared {
    /// `None` for statements that touch no protected table (forwarded as is).
    pub plan: Option<Arc<RewritePlan>>,
    /// Literal slots sent as appended parameters (their tenant is a Bind
    /// parameter), in parameter order after the plan's own.
    pub deferred_literals: Vec<usize>,
    /// COPY on a protected table (prepared through the extended protocol).
    pub copy: Option<Arc<CopyPlan>>,
    /// Number of parameters the client declared or used.
    pub client_params: usize,
    /// Parameter type OIDs the client declared in Parse.
    pub declared: Vec<u32>,
}

/// Rows of the catalog query, every column as text.
pub type CatalogRows = Vec<Vec<Option<String>>>;

/// State shared by the two directions of one session.
pub struct Exchange {
    pub pending: Mutex<VecDeque<Pending>>,
    /// The database's catalog as this session last loaded it.
    entry: Mutex<Arc<CatalogEntry>>,
    /// Transaction status of the last ReadyForQuery (`I`, `T` or `E`).
    tx_status: AtomicU8,
    /// A value failed to decrypt inside a transaction block: the client was
    /// told the statement failed (and its transaction with it), but
    /// PostgreSQL ran it and its transaction is still good. The next
    /// statement must abort it (see `Frontend::abort_transaction`), so that
    /// a COMMIT cannot make the writes before the failure stand.
    must_abort: AtomicBool,
    /// Answers to the frontend's map changes. The frontend owns its maps of
    /// prepared statements and portals without a lock; the backend only
    /// appends here, and only for changes that involve protected
    /// statements (pass-through statements create none), so the hot path
    /// takes no lock beyond the pending queue's. The frontend drains this
    /// when it next needs its maps, after one atomic load says there is
    /// something to drain.
    resolutions: Mutex<Vec<Resolution>>,
    has_resolutions: AtomicBool,
    /// PostgreSQL confirmed a Bind that changed the frontend's portal map
    /// since the transaction last ended: at the next ReadyForQuery `I` the
    /// frontend must forget its portals (see [`Resolution::ForgetPortals`]).
    bound: AtomicBool,
    /// PostgreSQL answered something pgveil did not ask for (its answers
    /// are out of step with the requests): the backend told the client
    /// (FATAL) and drops everything after; the frontend ends the session
    /// at the client's next message.
    broken: AtomicBool,
    /// PostgreSQL reported an error in the extended protocol and skips
    /// every message up to the next Sync (from that ErrorResponse to the
    /// Sync's ReadyForQuery): with nothing in flight, what the client
    /// sends next is still skipped, and a catalog query would be too.
    skipping: AtomicBool,
    /// `Pending::PassThrough` entries in the queue: the backend looks at
    /// the queue for one only when there is one (no lock per answer
    /// otherwise).
    lanes: AtomicUsize,
}

impl Exchange {
    /// The exchange of a session that starts with the catalog `entry`, nothing in flight, outside a transaction.
    pub fn new(entry: Arc<CatalogEntry>) -> Exchange {
        Exchange {
            pending: Mutex::new(VecDeque::new()),
            entry: Mutex::new(entry),
            tx_status: AtomicU8::new(b'I'),
            must_abort: AtomicBool::new(false),
            skipping: AtomicBool::new(false),
            lanes: AtomicUsize::new(0),
            resolutions: Mutex::new(Vec::new()),
            has_resolutions: AtomicBool::new(false),
            bound: AtomicBool::new(false),
            broken: AtomicBool::new(false),
        }
    }

    /// Record PostgreSQL's answer to a map change.
    pub fn resolve(&self, r: Resolution) {
        if matches!(r, Resolution::Op(0, _)) {
            return;
        }
        self.resolutions.lock().expect("resolutions").push(r);
        self.has_resolutions.store(true, Ordering::Release);
    }

    /// Record the answer to every map change `p` carries: `confirmed` for
    /// ParseComplete/BindComplete/CloseComplete and a Query's end, else
    /// (an error, or skipped after one) they did not happen. A Query's
    /// pending DEALLOCATEs did not complete.
    pub fn resolve_entry(&self, p: &Pending, confirmed: bool) {
        match p {
            Pending::Bind { op, .. } if confirmed && *op != 0 => {
                self.bound.store(true, Ordering::Relaxed);
                self.resolve(Resolution::Op(*op, confirmed))
            }
            Pending::Parse { op, .. } | Pending::Bind { op, .. } | Pending::Close { op } => {
                self.resolve(Resolution::Op(*op, confirmed))
            }
            Pending::Query { ops, .. } => {
                for o in ops {
                    self.resolve(Resolution::Op(o.id, confirmed && o.confirmed_by.is_none()));
                }
            }
            Pending::PassThrough { .. } => {
                self.lanes.fetch_sub(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }

    /// Whether a Bind changed the portal map since the last call (one
    /// atomic load on the hot path when none did).
    pub fn take_bound(&self) -> bool {
        self.bound.load(Ordering::Relaxed) && self.bound.swap(false, Ordering::Relaxed)
    }

    /// The answers recorded since the last call.
    pub fn take_resolutions(&self) -> Vec<Resolution> {
        if !self.has_resolutions.load(Ordering::Acquire) {
            return Vec::new();
        }
        let mut r = self.resolutions.lock().expect("resolutions");
        self.has_resolutions.store(false, Ordering::Release);
        std::mem::take(&mut *r)
    }

    /// Expect the answer to a request just forwarded (in request order).
    pub fn push(&self, p: Pending) {
        if matches!(p, Pending::PassThrough { .. }) {
            self.lanes.fetch_add(1, Ordering::Relaxed);
        }
        self.pending.lock().expect("pending queue").push_back(p);
    }

    /// Whether a pass-through run's entry is in the queue.
    pub fn lane_pending(&self) -> bool {
        self.lanes.load(Ordering::Relaxed) > 0
    }

    /// Pop the front entry; the map changes it carries did not happen
    /// (error or skipped), unless it is a Query (see [`Exchange::pop_as`]).
    pub fn pop(&self) -> Option<Pending> {
        let p = self.pending.lock().expect("pending queue").pop_front();
        if let Some(p) = &p {
            self.resolve_entry(p, matches!(p, Pending::Query { .. }));
        }
        p
    }

    /// Pop the front entry; `confirmed`: PostgreSQL confirmed its map
    /// change.
    pub fn pop_as(&self, confirmed: bool) -> Option<Pending> {
        let p = self.pending.lock().expect("pending queue").pop_front();
        if let Some(p) = &p {
            self.resolve_entry(p, confirmed);
        }
        p
    }

    /// The session is out of step with PostgreSQL and must end.
    pub fn set_broken(&self) {
        self.broken.store(true, Ordering::Release);
    }

    /// The backend found PostgreSQL's answers out of step: the session is closing.
    pub fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Acquire)
    }

    /// Nothing forwarded is waiting for its answer.
    pub fn is_idle(&self) -> bool {
        self.pending.lock().expect("pending queue").is_empty()
    }

    /// Whether PostgreSQL answers everything in flight without more from
    /// the client: the last request is a Sync or a simple Query (it flushes
    /// its answers at each ReadyForQuery), or nothing is in flight.
    pub fn answers_will_come(&self) -> bool {
        self.pending
            .lock()
            .expect("pending queue")
            .back()
            .is_none_or(|p| matches!(p.kind(), Kind::Sync | Kind::Query | Kind::PassThrough))
    }

    /// Whether PostgreSQL is skipping messages up to a Sync after an
    /// error (see `skipping`).
    pub fn is_skipping(&self) -> bool {
        self.skipping.load(Ordering::Acquire)
    }

    /// The backend saw PostgreSQL start (`true`) or end such a skip.
    pub fn set_skipping(&self, on: bool) {
        self.skipping.store(on, Ordering::Release);
    }

    /// Record the transaction status of the last ReadyForQuery.
    pub fn set_tx_status(&self, s: u8) {
        self.tx_status.store(s, Ordering::Relaxed);
    }

    /// A value failed to decrypt inside a transaction block: the frontend must make PostgreSQL abort it.
    pub fn set_must_abort(&self) {
        self.must_abort.store(true, Ordering::Release);
    }

    /// Whether the next statement must abort the transaction.
    pub fn must_abort(&self) -> bool {
        self.must_abort.load(Ordering::Acquire)
    }

    /// Whether the transaction must be aborted (and forget it: the caller
    /// does it).
    pub fn take_must_abort(&self) -> bool {
        self.must_abort.swap(false, Ordering::AcqRel)
    }

    /// Whether the session is outside any transaction block.
    /// Whether the last ReadyForQuery said "in a transaction block".
    pub fn tx_in_block(&self) -> bool {
        self.tx_status.load(Ordering::Relaxed) == b'T'
    }

    /// The last ReadyForQuery said: outside a transaction block.
    pub fn tx_idle(&self) -> bool {
        self.tx_status.load(Ordering::Relaxed) == b'I'
    }

    /// The catalog entry this session plans with.
    pub fn entry(&self) -> Arc<CatalogEntry> {
        self.entry.lock().expect("catalog entry").clone()
    }

    /// Plan with the catalog entry `e` from now on (after a catalog reload).
    pub fn set_entry(&self, e: Arc<CatalogEntry>) {
        *self.entry.lock().expect("catalog entry") = e;
    }
}
