//! The session layer: what pgveil does to the messages of one connection
//! when a policy is loaded. The proxy (`crate::proxy`) moves bytes; this
//! module decides, per message, whether to forward, rewrite or reject.
//!
//! - `frontend`: client → server (Query, Parse, Bind, COPY data …), plans
//!   statements with `crate::sql` and encrypts parameters and literals.
//! - `backend`: server → client, matches each response to the request that
//!   caused it (a FIFO of [`Pending`] entries), rewrites RowDescription and
//!   ParameterDescription types, decrypts DataRow fields.
//! - `values`: the bridge to `crate::crypto` and `crate::keys`.
//! - `catalog`: the per-database catalog and plan cache.

pub mod backend;
pub mod catalog;
pub mod copy;
pub mod frontend;
pub mod messages;
pub mod rows;
pub mod values;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

pub use catalog::{CatalogEntry, Engine};

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

/// What the server's next response(s) answer, in request order.
#[derive(Debug)]
pub enum Pending {
    Parse {
        internal: bool,
    },
    Bind {
        internal: bool,
    },
    /// ParameterDescription + RowDescription/NoData for a statement.
    DescribeStatement {
        prepared: Option<Arc<Prepared>>,
    },
    /// RowDescription/NoData for a portal. `internal`: injected by pgveil to
    /// learn the row shape; swallowed.
    DescribePortal {
        portal: String,
        protected: bool,
        internal: bool,
    },
    Execute {
        portal: String,
        protected: bool,
        audit: Option<Arc<AuditInfo>>,
    },
    Close,
    Sync,
    /// RowDescription/NoData of the portal of a simple-query SELECT that
    /// pgveil sends as Parse/Bind/Describe/Execute/Sync, with binary
    /// results for the protected `bytea` columns it decrypts (see
    /// `Frontend::binary_result_formats`). The client gets it with text
    /// format codes, as for a simple Query.
    ResultShape,
    /// A simple Query: every response until ReadyForQuery.
    Query {
        protected: bool,
        audit: Option<Arc<AuditInfo>>,
    },
    /// FunctionCall ('F'): FunctionCallResponse, then ReadyForQuery.
    FunctionCall,
    /// The catalog query pgveil runs between statements.
    Catalog {
        done: Option<tokio::sync::oneshot::Sender<Option<CatalogRows>>>,
    },
}

/// What the audit log records for a statement that reads or searches
/// protected data (never values).
#[derive(Debug, Clone)]
pub struct AuditInfo {
    pub tables: Vec<String>,
    pub columns: Vec<String>,
    pub searched: bool,
    pub decrypted: bool,
}

/// State shared by the two directions of one session.
pub struct Shared {
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
}

impl Shared {
    pub fn new(entry: Arc<CatalogEntry>) -> Shared {
        Shared {
            pending: Mutex::new(VecDeque::new()),
            entry: Mutex::new(entry),
            tx_status: AtomicU8::new(b'I'),
            must_abort: AtomicBool::new(false),
        }
    }

    pub fn push(&self, p: Pending) {
        self.pending.lock().expect("pending queue").push_back(p);
    }

    pub fn pop(&self) -> Option<Pending> {
        self.pending.lock().expect("pending queue").pop_front()
    }

    pub fn is_idle(&self) -> bool {
        self.pending.lock().expect("pending queue").is_empty()
    }

    pub fn set_tx_status(&self, s: u8) {
        self.tx_status.store(s, Ordering::Relaxed);
    }

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
    pub fn tx_idle(&self) -> bool {
        self.tx_status.load(Ordering::Relaxed) == b'I'
    }

    pub fn entry(&self) -> Arc<CatalogEntry> {
        self.entry.lock().expect("catalog entry").clone()
    }

    pub fn set_entry(&self, e: Arc<CatalogEntry>) {
        *self.entry.lock().expect("catalog entry") = e;
    }
}

/// Facts about the session that both directions need.
#[derive(Debug, Clone)]
pub struct Identity {
    pub login_role: String,
    pub database: String,
    pub client_addr: String,
}
