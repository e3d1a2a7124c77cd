//! The queue of replies the session expects from PostgreSQL, in request
//! order: a [`Pending`] entry per request the frontend sent (the client's
//! or pgveil's own), which the backend pops to match each answer to the
//! request that caused it, and the [`Resolution`]s of the statement/portal
//! map changes those entries carry.

use std::ops::Range;
use std::sync::Arc;

use super::{AuditInfo, CatalogRows, Prepared};
use crate::sql::CopyPlan;

/// What the server's next response(s) answer, in request order.
#[derive(Debug)]
pub enum Pending {
    /// `op`: the change to pgveil's statement map this Parse makes once
    /// PostgreSQL confirms it (0: none, see [`Resolution`]).
    Parse {
        internal: bool,
        op: u64,
    },
    /// `op`: the portal map change, as for Parse.
    Bind {
        internal: bool,
        op: u64,
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
        /// The COPY FROM STDIN this Execute may start (see
        /// [`Pending::CopySync`]): one id when the portal is a COPY FROM
        /// STDIN or pgveil does not know it, none otherwise.
        copies: Range<u64>,
        /// A COPY TO STDOUT whose rows are decrypted for the role.
        copy_out: Option<Arc<CopyPlan>>,
    },
    /// `op`: the statement or portal map change, as for Parse.
    Close {
        op: u64,
    },
    Sync,
    /// A Sync the client sent while PostgreSQL may be in COPY IN for COPY
    /// `copy` (between the Query or Execute that may start it and the
    /// client's CopyDone or CopyFail). PostgreSQL ignores it if it is in
    /// COPY IN when it reads it, and answers it otherwise: the backend
    /// decides from what the server said about that COPY
    /// (`Backend::settle_front`): never started → a Sync; completed →
    /// ignored; failed → unknowable, the session ends.
    CopySync {
        copy: u64,
    },
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
        /// Map changes the Query makes: dropping the unnamed statement
        /// (PostgreSQL does it when it starts the Query: confirmed
        /// by any answer), and one per SQL `DEALLOCATE name`, in order
        /// (confirmed by its CommandComplete).
        ops: Vec<QueryOp>,
        /// Ids of the COPY FROM STDIN statements of the Query, in order
        /// (as pgveil counted them on PostgreSQL's tokens): a
        /// CopyInResponse beyond them was not planned and ends the session.
        copies: Range<u64>,
        /// The Query's COPY TO STDOUT whose rows are decrypted for the
        /// role: then the only COPY of the Query (taken at its
        /// CopyOutResponse).
        copy_out: Option<Arc<CopyPlan>>,
    },
    /// A run of extended-protocol messages the frontend's pass-through
    /// lane forwarded as one (`frontend::lane`): every answer until its
    /// `syncs`-th ReadyForQuery, relayed by `backend::lane`.
    PassThrough {
        syncs: u32,
    },
    /// The catalog query pgveil runs between statements.
    Catalog {
        done: Option<tokio::sync::oneshot::Sender<Option<CatalogRows>>>,
    },
}

/// A statement/portal map change made by a simple Query.
#[derive(Debug, Clone, Copy)]
pub struct QueryOp {
    pub id: u64,
    /// The CommandComplete tag that confirms it (`DEALLOCATE` for a SQL
    /// `DEALLOCATE name`, `CLOSE CURSOR` for a SQL `CLOSE name`); `None`:
    /// confirmed by the Query running at all.
    pub confirmed_by: Option<&'static str>,
}

impl Pending {
    /// A Query with nothing to confirm.
    pub fn query(protected: bool, audit: Option<Arc<AuditInfo>>) -> Pending {
        Pending::Query {
            protected,
            audit,
            ops: Vec::new(),
            copies: 0..0,
            copy_out: None,
        }
    }

    /// What kind of request this is (for matching answers to requests).
    pub fn kind(&self) -> Kind {
        match self {
            Pending::Parse { .. } => Kind::Parse,
            Pending::Bind { .. } => Kind::Bind,
            Pending::DescribeStatement { .. } => Kind::DescribeStatement,
            Pending::DescribePortal { .. } => Kind::DescribePortal,
            Pending::Execute { .. } => Kind::Execute,
            Pending::Close { .. } => Kind::Close,
            Pending::Sync => Kind::Sync,
            Pending::CopySync { .. } => Kind::CopySync,
            Pending::ResultShape => Kind::ResultShape,
            Pending::Query { .. } => Kind::Query,
            Pending::PassThrough { .. } => Kind::PassThrough,
            Pending::Catalog { .. } => Kind::Catalog,
        }
    }
}

/// The kind of a [`Pending`] entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Parse,
    Bind,
    DescribeStatement,
    DescribePortal,
    Execute,
    Close,
    Sync,
    CopySync,
    ResultShape,
    Query,
    PassThrough,
    Catalog,
}

/// What PostgreSQL answered to a change of the statement/portal maps that
/// the frontend forwarded (see `frontend::Names`), in the order it
/// answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// ParseComplete / BindComplete / CloseComplete (or the Query ran, or
    /// its DEALLOCATE completed): `true`. An error, or a message skipped
    /// after one until Sync: `false`.
    Op(u64, bool),
    /// `DEALLOCATE ALL` (`portals: false`) or `DISCARD ALL` completed: the
    /// named statements are gone (the unnamed one stays).
    ForgetAll { portals: bool },
    /// PostgreSQL dropped every portal the protocol bound: the transaction
    /// ended (ReadyForQuery `I`; protocol portals are never holdable) or a
    /// `CLOSE ALL` completed.
    ForgetPortals,
}
