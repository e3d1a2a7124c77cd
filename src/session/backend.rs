//! Server → client: match each response to its request (the [`Pending`]
//! FIFO), show authorized roles the plaintext types, decrypt DataRow fields
//! for roles that may read them, and stream everything else through as the
//! original bytes. Rows are handled one at a time: nothing is buffered.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bytes::BytesMut;

use super::copy_out::{CopyOut, Failure};
use super::messages::{self as m, Field};
use super::rows::RowDecryptor;
use super::{AuditInfo, Decrypt, Identity, Kind, Pending, Shape, Shared};
use crate::crypto::PgType;
use crate::wire::codec::Frame;
use crate::wire::msg;

/// The refusal while `audit.on_failure: block` holds decryption back.
const AUDIT_BLOCKED: &str = "pgveil: decryption is refused while the audit log cannot be written (audit.on_failure: block): fix audit.path (see pgveil's log), then run the statement again";

pub struct Backend {
    pub id: Identity,
    pub shared: Arc<Shared>,
    pub engine: Arc<super::Engine>,
    portal_shapes: HashMap<String, Shape>,
    /// Shape of the rows of the current simple-query statement.
    current: Option<Shape>,
    /// After a decryption failure: drop responses until ReadyForQuery.
    discard_until_ready: bool,
    catalog_rows: Vec<Vec<Option<String>>>,
    catalog_failed: bool,
    rows: u64,
    decrypted_rows: u64,
    decryptor: RowDecryptor,
    /// The row shape of the DataRows streaming now, looked up at the first
    /// one (`Some(None)`: forwarded as they come); reset by any other
    /// message, so the pending queue is read once per result, not per row.
    streaming: Option<Option<Shape>>,
    /// The shape of the first row decrypted since the last
    /// CommandComplete: the columns a FETCH's audit record names (a FETCH
    /// names none itself).
    decrypted_shape: Option<Shape>,
    /// A row failed to decrypt since the last ReadyForQuery.
    row_failed: bool,
    /// The abort was requested when the bad row arrived (inside a block),
    /// not at ReadyForQuery: the client may act on the error first.
    abort_early: bool,
    /// An error in the extended protocol: PostgreSQL skips every message
    /// up to the next Sync (a Query too), and that Sync's ReadyForQuery
    /// ends it.
    skipping: bool,
    /// The COPY FROM STDIN PostgreSQL is in (from its CopyInResponse to
    /// the CommandComplete or ErrorResponse that ends it).
    copy_in: Option<u64>,
    /// The COPYs PostgreSQL started since the queue was last empty, and how
    /// each ended (`Some(true)` completed, `Some(false)` failed): what the
    /// [`Pending::CopySync`] entries of each one mean.
    copies: VecDeque<(u64, Option<bool>)>,
    /// PostgreSQL's answers went out of step with the requests: nothing
    /// more is forwarded (see [`Backend::out_of_step`]).
    broken: bool,
    /// The COPY TO STDOUT streaming now whose rows are decrypted (from its
    /// CopyOutResponse to its CopyDone or error).
    copy_out: Option<CopyOut>,
}

impl Backend {
    pub fn new(id: Identity, shared: Arc<Shared>, engine: Arc<super::Engine>) -> Backend {
        Backend {
            id,
            shared,
            engine,
            portal_shapes: HashMap::new(),
            current: None,
            discard_until_ready: false,
            catalog_rows: Vec::new(),
            catalog_failed: false,
            rows: 0,
            decrypted_rows: 0,
            decrypted_shape: None,
            decryptor: RowDecryptor::default(),
            streaming: None,
            row_failed: false,
            abort_early: false,
            skipping: false,
            copy_in: None,
            copies: VecDeque::new(),
            broken: false,
            copy_out: None,
        }
    }

    /// Serve with a reloaded configuration's engine from the next answer
    /// on (`proxy::swap`: only between transactions). Row shapes kept for
    /// portals were decided by the old policy and are dropped.
    pub fn adopt_engine(&mut self, engine: Arc<super::Engine>) {
        self.engine = engine;
        self.portal_shapes.clear();
        self.current = None;
    }

    /// PostgreSQL reported no transaction (ReadyForQuery `I`): it dropped
    /// every portal the protocol bound, so pgveil forgets them too, in
    /// the order of its other answers (a Bind sent after this Sync is
    /// answered after it). SQL cursors `WITH HOLD` survive; they are not
    /// in the map (see `Frontend::protected_cursors`).
    fn transaction_ended(&mut self) {
        if !self.portal_shapes.is_empty() {
            self.portal_shapes.clear();
        }
        if self.shared.take_bound() {
            self.shared.resolve(super::Resolution::ForgetPortals);
        }
    }

    fn front_is<F: Fn(&Pending) -> bool>(&self, f: F) -> bool {
        self.shared
            .pending
            .lock()
            .expect("pending queue")
            .front()
            .is_some_and(f)
    }

    fn front_kind(&self) -> Option<Kind> {
        self.shared
            .pending
            .lock()
            .expect("pending queue")
            .front()
            .map(Pending::kind)
    }

    /// Resolve the [`Pending::CopySync`] entries at the front of the queue
    /// from what PostgreSQL said about their COPY: one it never started
    /// (the Query or Execute ended without a CopyInResponse for it) was a
    /// Sync PostgreSQL answers; one of a COPY that completed was ignored.
    /// Of a COPY that failed, pgveil cannot know whether PostgreSQL read
    /// the Sync before or after leaving COPY IN: `false`, the session
    /// cannot go on.
    fn settle_front(&mut self) -> bool {
        loop {
            let mut q = self.shared.pending.lock().expect("pending queue");
            let Some(Pending::CopySync { copy }) = q.front() else {
                return true;
            };
            let copy = *copy;
            if self.copy_in == Some(copy) {
                return false;
            }
            match self.copies.iter().find(|c| c.0 == copy).map(|c| c.1) {
                None => {
                    q[0] = Pending::Sync;
                    return true;
                }
                Some(Some(true)) => {
                    q.pop_front();
                }
                Some(_) => return false,
            }
        }
    }

    /// PostgreSQL answered something pgveil did not ask for, or pgveil can
    /// no longer tell which request an answer belongs to: applying or
    /// skipping a state change on a guess could let a protected value
    /// through raw, so the session ends (FATAL to the client; the frontend
    /// closes the upstream connection at the client's next message, and a
    /// client that closes does it too). Nothing PostgreSQL sends after
    /// this reaches the client.
    fn out_of_step(&mut self, what: &'static str, out: &mut BytesMut) {
        if self.broken {
            return;
        }
        self.broken = true;
        self.shared.set_broken();
        metrics::counter!("pgveil_protocol_desync_total").increment(1);
        tracing::error!(
            answer = what,
            "PostgreSQL's answers are out of step with the requests pgveil forwarded; closing the session"
        );
        out.extend_from_slice(&msg::error_response(
            "FATAL",
            "08P01",
            "pgveil: PostgreSQL's answers are out of step with the requests pgveil forwarded (the client sent messages PostgreSQL handles in a way pgveil cannot follow, e.g. Sync inside a COPY that failed); the session is closed",
        ));
    }

    /// Check that the front entry is one of `kinds` (after settling
    /// CopySync entries); otherwise the session ends.
    fn expect(&mut self, kinds: &[Kind], what: &'static str, out: &mut BytesMut) -> bool {
        if !self.settle_front() {
            self.out_of_step("a Sync inside a COPY that failed", out);
            return false;
        }
        match self.front_kind() {
            Some(k) if kinds.contains(&k) => true,
            _ => {
                self.out_of_step(what, out);
                false
            }
        }
    }

    /// Handle one server frame, appending what goes to the client to `out`.
    pub async fn on_frame(&mut self, f: Frame, out: &mut BytesMut) {
        if self.broken {
            return;
        }
        let ends_copy_or_request = !matches!(f.tag, b'D' | b'd' | b'N' | b'S' | b'A');
        self.on_frame_inner(f, out).await;
        // Resolve CopySync entries as soon as their COPY's fate is known,
        // so that the queue is idle when PostgreSQL is (the frontend and
        // the catalog refresh wait for that).
        if ends_copy_or_request && !self.broken && !self.settle_front() {
            self.out_of_step("a Sync inside a COPY that failed", out);
        }
    }

    async fn on_frame_inner(&mut self, f: Frame, out: &mut BytesMut) {
        if f.tag == b'D'
            && !self.discard_until_ready
            && let Some(shape) = &self.streaming
        {
            let shape = shape.clone();
            self.on_data_row_with(shape, f, out).await;
            return;
        }
        if f.tag == b'd' && !self.discard_until_ready && self.copy_out.is_some() {
            self.on_copy_out_data(&f, out).await;
            return;
        }
        if matches!(f.tag, b'C' | b'E' | b'Z') {
            self.copy_out = None;
        }
        self.streaming = None;
        if !self.settle_front() {
            self.out_of_step("a Sync inside a COPY that failed", out);
            return;
        }
        if self.front_is(|p| matches!(p, Pending::Catalog { .. })) {
            self.on_catalog_frame(&f);
            return;
        }
        // COPY IN as PostgreSQL reports it: CopyInResponse starts it,
        // CommandComplete or ErrorResponse ends it.
        match f.tag {
            b'C' | b'E' => {
                if let Some(id) = self.copy_in.take()
                    && let Some(c) = self.copies.iter_mut().find(|c| c.0 == id)
                {
                    c.1 = Some(f.tag == b'C');
                }
            }
            b'G' if !self.copy_started(out) => return,
            _ => {}
        }
        if self.discard_until_ready && f.tag != b'Z' {
            if f.tag == b'E' {
                // Errors after ours are dropped too; keep the queue in step.
                self.drop_until_sync(out);
            } else {
                self.pop_if_completes(f.tag, out);
            }
            return;
        }
        match f.tag {
            b'1' | b'2' => {
                let (kind, what) = if f.tag == b'1' {
                    (Kind::Parse, "ParseComplete without a Parse")
                } else {
                    (Kind::Bind, "BindComplete without a Bind")
                };
                if !self.expect(&[kind], what, out) {
                    return;
                }
                let internal = matches!(
                    self.shared.pop_as(true),
                    Some(
                        Pending::Parse { internal: true, .. }
                            | Pending::Bind { internal: true, .. }
                    )
                );
                if !internal {
                    out.extend_from_slice(&f.raw);
                }
            }
            b'3' => {
                if !self.expect(&[Kind::Close], "CloseComplete without a Close", out) {
                    return;
                }
                self.shared.pop_as(true);
                out.extend_from_slice(&f.raw);
            }
            b't' => {
                if !self.expect(
                    &[Kind::DescribeStatement],
                    "ParameterDescription without a Describe",
                    out,
                ) {
                    return;
                }
                self.on_parameter_description(&f, out)
            }
            b'T' => {
                if !self.expect(
                    &[
                        Kind::DescribeStatement,
                        Kind::DescribePortal,
                        Kind::ResultShape,
                        Kind::Query,
                    ],
                    "RowDescription without a Describe or Query",
                    out,
                ) {
                    return;
                }
                self.on_row_description(&f, out)
            }
            b'n' => {
                if !self.expect(
                    &[
                        Kind::DescribeStatement,
                        Kind::DescribePortal,
                        Kind::ResultShape,
                    ],
                    "NoData without a Describe",
                    out,
                ) {
                    return;
                }
                let internal = match self.shared.pop() {
                    // A simple Query that returns no rows sends no
                    // RowDescription.
                    Some(Pending::ResultShape) => true,
                    Some(Pending::DescribePortal {
                        portal, internal, ..
                    }) => {
                        self.portal_shapes.remove(&portal);
                        internal
                    }
                    _ => false,
                };
                if !internal {
                    out.extend_from_slice(&f.raw);
                }
            }
            b'D' => {
                if !self.expect(
                    &[Kind::Execute, Kind::Query],
                    "DataRow without an Execute or Query",
                    out,
                ) {
                    return;
                }
                self.on_data_row(f, out).await
            }
            b'C' => {
                if !self.expect(
                    &[Kind::Execute, Kind::Query],
                    "CommandComplete without an Execute or Query",
                    out,
                ) {
                    return;
                }
                self.current = None;
                self.finish_statement(&f);
                out.extend_from_slice(&f.raw);
            }
            b's' => {
                if !self.expect(&[Kind::Execute], "PortalSuspended without an Execute", out) {
                    return;
                }
                self.suspend_statement();
                self.shared.pop();
                out.extend_from_slice(&f.raw);
            }
            b'I' => {
                if !self.expect(
                    &[Kind::Execute, Kind::Query],
                    "EmptyQueryResponse without an Execute or Query",
                    out,
                ) {
                    return;
                }
                if self.front_is(|p| matches!(p, Pending::Execute { .. })) {
                    self.shared.pop();
                }
                out.extend_from_slice(&f.raw);
            }
            // COPY responses and the data of a COPY TO STDOUT answer the
            // Query or Execute at the front.
            b'G' | b'H' | b'W' | b'd' | b'c' => {
                if !self.expect(
                    &[Kind::Execute, Kind::Query],
                    "a COPY message without an Execute or Query",
                    out,
                ) {
                    return;
                }
                match f.tag {
                    b'H' => self.copy_out_started(&f, out),
                    b'c' => self.copy_out_done(&f, out),
                    _ => out.extend_from_slice(&f.raw),
                }
            }
            // pgveil never forwards a FunctionCall.
            b'V' => self.out_of_step("FunctionCallResponse", out),
            b'E' => {
                if self.front_is(|p| !matches!(p, Pending::Query { .. } | Pending::Sync)) {
                    self.drop_until_sync(out);
                    if self.broken {
                        return;
                    }
                }
                self.current = None;
                match without_rejection_context(f.body()) {
                    Some(body) => {
                        out.extend_from_slice(b"E");
                        out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
                        out.extend_from_slice(&body);
                    }
                    None => out.extend_from_slice(&f.raw),
                }
            }
            b'Z' => {
                let mut st = f.body().first().copied().unwrap_or(b'I');
                // The client got an error inside a transaction block: it is
                // told the block failed, as after any error, until the
                // frontend has made PostgreSQL agree (at the next
                // statement; a bare Sync before it changes nothing).
                // If the abort was requested when the row failed, the
                // frontend may already have carried it out (the client
                // answered the error with ROLLBACK before this arrived):
                // then it is not requested again.
                let failed = std::mem::take(&mut self.row_failed);
                let early = std::mem::take(&mut self.abort_early);
                if (self.shared.must_abort() || (failed && !early)) && st == b'T' {
                    self.shared.set_must_abort();
                    st = b'E';
                }
                self.shared.set_tx_status(st);
                self.discard_until_ready = false;
                self.current = None;
                if std::mem::take(&mut self.skipping) {
                    // Everything up to the Sync was skipped, including what
                    // the client sent after the error reached pgveil.
                    loop {
                        if !self.settle_front() {
                            self.out_of_step("a Sync inside a COPY that failed", out);
                            return;
                        }
                        match self.shared.pop_as(false) {
                            Some(Pending::Sync) => break,
                            Some(_) => {}
                            None => {
                                self.out_of_step("ReadyForQuery without a Sync", out);
                                return;
                            }
                        }
                    }
                } else {
                    if !self.expect(
                        &[Kind::Sync, Kind::Query],
                        "ReadyForQuery without a Sync or Query",
                        out,
                    ) {
                        return;
                    }
                    self.shared.pop();
                }
                if self.shared.is_idle() && self.copy_in.is_none() {
                    // No CopySync can refer to a COPY seen so far.
                    self.copies.clear();
                }
                if st == b'I' {
                    self.transaction_ended();
                }
                out.extend_from_slice(&[b'Z', 0, 0, 0, 5, st]);
            }
            _ => out.extend_from_slice(&f.raw),
        }
    }

    /// A CopyInResponse: PostgreSQL started the next COPY FROM STDIN of the
    /// Query or Execute at the front. One pgveil did not count there (its
    /// data would be forwarded raw, or with another COPY's plan) ends the
    /// session.
    fn copy_started(&mut self, out: &mut BytesMut) -> bool {
        if !self.settle_front() {
            self.out_of_step("a Sync inside a COPY that failed", out);
            return false;
        }
        let ids = match self.shared.pending.lock().expect("pending queue").front() {
            Some(Pending::Query { copies, .. } | Pending::Execute { copies, .. }) => copies.clone(),
            _ => 0..0,
        };
        let started = self.copies.iter().filter(|c| ids.contains(&c.0)).count() as u64;
        let id = ids.start + started;
        if self.copy_in.is_some() || id >= ids.end {
            self.out_of_step("a CopyInResponse for a COPY pgveil did not plan", out);
            return false;
        }
        self.copies.push_back((id, None));
        self.copy_in = Some(id);
        true
    }

    /// While discarding, keep the queue in step with what the server answers.
    fn pop_if_completes(&mut self, tag: u8, out: &mut BytesMut) {
        let want: &[Kind] = match tag {
            b'1' => &[Kind::Parse],
            b'2' => &[Kind::Bind],
            b'3' => &[Kind::Close],
            b'n' => &[
                Kind::DescribeStatement,
                Kind::DescribePortal,
                Kind::ResultShape,
            ],
            b's' => &[Kind::Execute],
            _ => &[],
        };
        if !want.is_empty() {
            if !self.expect(want, "an answer without its request", out) {
                return;
            }
            // PostgreSQL went on: its statements and portals changed.
            self.shared.pop_as(matches!(tag, b'1' | b'2' | b'3'));
            return;
        }
        let pop = match tag {
            b'C' | b'I' => self.front_is(|p| matches!(p, Pending::Execute { .. })),
            b'T' => self.front_is(|p| {
                matches!(
                    p,
                    Pending::DescribePortal { .. }
                        | Pending::DescribeStatement { .. }
                        | Pending::ResultShape
                )
            }),
            _ => false,
        };
        if pop {
            self.shared.pop();
        }
    }

    /// An error in the extended protocol: the server skips to Sync, and
    /// none of the skipped messages changes a statement or portal. (An
    /// error of a Query at the front skips nothing.)
    fn drop_until_sync(&mut self, out: &mut BytesMut) {
        if self.front_is(|p| matches!(p, Pending::Sync | Pending::Query { .. })) {
            return;
        }
        // pgveil's own Parse/Bind/Describe/Execute/Sync for a simple-query
        // SELECT (`Pending::ResultShape`): its Execute and Sync are the
        // `Query` entry behind it, which the ReadyForQuery pops.
        let own_select = {
            let q = self.shared.pending.lock().expect("pending queue");
            q.iter()
                .take_while(|p| !matches!(p, Pending::Sync | Pending::Query { .. }))
                .any(|p| matches!(p, Pending::ResultShape))
        };
        if own_select {
            while self.front_is(|p| !matches!(p, Pending::Query { .. })) {
                self.shared.pop_as(false);
            }
            return;
        }
        self.skipping = true;
        loop {
            if !self.settle_front() {
                self.out_of_step("a Sync inside a COPY that failed", out);
                return;
            }
            if !self.front_is(|p| !matches!(p, Pending::Sync)) {
                return;
            }
            self.shared.pop_as(false);
        }
    }

    fn on_catalog_frame(&mut self, f: &Frame) {
        match f.tag {
            b'D' => {
                let body = f.raw.slice(5..);
                if let Some(cols) = m::decode_data_row(&body) {
                    self.catalog_rows.push(
                        cols.into_iter()
                            .map(|c| c.map(|b| String::from_utf8_lossy(&b).into_owned()))
                            .collect(),
                    );
                }
            }
            b'E' => self.catalog_failed = true,
            b'Z' => {
                if let Some(Pending::Catalog { done }) = self.shared.pop() {
                    let rows = std::mem::take(&mut self.catalog_rows);
                    let failed = std::mem::take(&mut self.catalog_failed);
                    if let Some(done) = done {
                        let _ = done.send(if failed { None } else { Some(rows) });
                    }
                }
            }
            _ => {}
        }
    }

    fn on_parameter_description(&mut self, f: &Frame, out: &mut BytesMut) {
        let prepared = match self.shared.pending.lock().expect("pending queue").front() {
            Some(Pending::DescribeStatement { prepared }) => prepared.clone(),
            _ => None,
        };
        let plan = prepared.as_ref().and_then(|p| p.plan.clone());
        tracing::debug!(
            known = prepared.is_some(),
            rewritten = plan.is_some(),
            "parameter description"
        );
        let (Some(plan), Some(server)) = (plan, m::decode_parameter_description(f.body())) else {
            out.extend_from_slice(&f.raw);
            return;
        };
        let n = prepared.as_ref().map(|p| p.client_params).unwrap_or(0);
        let declared = prepared.as_ref().map(|p| &p.declared[..]).unwrap_or(&[]);
        let mut types = vec![0u32; n];
        for (i, t) in types.iter_mut().enumerate() {
            // A type the client declared in Parse is what PostgreSQL would
            // report, and what the client will send (Bind converts it to
            // the policy's type); drivers such as pgjdbc insist on it.
            if let Some(&d) = declared.get(i).filter(|&&d| d != 0) {
                *t = d;
            } else if let Some(&(_, ty, array)) =
                plan.param_type_overrides.iter().find(|o| o.0 == i)
            {
                *t = if array { ty.array_oid() } else { ty.oid() };
            } else if let Some(j) = plan
                .params
                .iter()
                .position(|a| matches!(a, crate::sql::ParamAction::Copy { orig } if *orig == i))
                .or_else(|| plan.params.iter().position(|a| a.orig() == i))
            {
                *t = server.get(j).copied().unwrap_or(0);
            }
        }
        m::encode_parameter_description(out, &types);
    }

    fn on_row_description(&mut self, f: &Frame, out: &mut BytesMut) {
        if self.front_is(|p| matches!(p, Pending::ResultShape)) {
            self.on_result_shape(f, out);
            return;
        }
        let front = self
            .shared
            .pending
            .lock()
            .expect("pending queue")
            .front()
            .map(|p| match p {
                Pending::DescribeStatement { prepared } => (
                    0u8,
                    prepared
                        .as_ref()
                        .is_some_and(|p| p.plan.is_some() || p.copy.is_some()),
                    String::new(),
                    false,
                ),
                Pending::DescribePortal {
                    portal,
                    protected,
                    internal,
                } => (1u8, *protected, portal.clone(), *internal),
                Pending::Query { protected, .. } => (2u8, *protected, String::new(), false),
                _ => (3u8, false, String::new(), false),
            });
        let Some((kind, protected, portal, internal)) = front else {
            out.extend_from_slice(&f.raw);
            return;
        };
        if kind <= 1 {
            self.shared.pop();
        }
        if !protected {
            if kind == 1 {
                self.portal_shapes.remove(&portal);
            }
            if kind == 2 {
                self.current = None;
            }
            if !internal {
                out.extend_from_slice(&f.raw);
            }
            return;
        }
        let Some(mut fields) = m::decode_row_description(f.body()) else {
            out.extend_from_slice(&f.raw);
            return;
        };
        let shape = self.shape(&mut fields);
        match kind {
            1 => {
                self.portal_shapes.insert(portal, shape.clone());
            }
            2 => self.current = Some(shape.clone()),
            _ => {}
        }
        if internal {
            return;
        }
        if shape.iter().any(Option::is_some) {
            m::encode_row_description(out, &fields);
        } else {
            out.extend_from_slice(&f.raw);
        }
    }

    /// The portal RowDescription of a simple-query SELECT that pgveil sent
    /// as Parse/Bind with binary results for protected `bytea` columns
    /// (`Frontend::binary_result_formats`). Every binary column must be one
    /// this role gets decrypted: the client asked for text, and pgveil
    /// renders only what it decrypts. Anything else (the table changed
    /// after the statement was analysed) ends the statement with an error
    /// before any row reaches the client.
    fn on_result_shape(&mut self, f: &Frame, out: &mut BytesMut) {
        self.shared.pop();
        let fields = m::decode_row_description(f.body());
        let Some(mut fields) = fields else {
            self.result_changed(out);
            return;
        };
        let mut shape = self.shape_of(&mut fields);
        for (field, d) in fields.iter_mut().zip(shape.iter_mut()) {
            match (field.format, d) {
                (0, _) => {}
                (1, Some(d)) if d.attr.storage == crate::crypto::Storage::Bytea => {
                    d.wire = 1;
                    d.format = 0;
                    field.format = 0;
                }
                _ => {
                    self.result_changed(out);
                    return;
                }
            }
        }
        m::encode_row_description(out, &fields);
        self.current = Some(Arc::new(shape));
    }

    fn result_changed(&mut self, out: &mut BytesMut) {
        tracing::warn!("a result's columns differ from the statement's analysis; statement failed");
        out.extend_from_slice(&msg::error_response(
            "ERROR",
            "0A000",
            "pgveil: the columns of this result differ from what pgveil analysed (the table changed?): run the statement again",
        ));
        self.current = None;
        self.discard_until_ready = true;
    }

    /// Which fields this role gets decrypted, rewriting their types to the
    /// policy's plaintext types.
    fn shape(&self, fields: &mut [Field]) -> Shape {
        Arc::new(self.shape_of(fields))
    }

    fn shape_of(&self, fields: &mut [Field]) -> Vec<Option<Decrypt>> {
        let entry = self.shared.entry();
        let policy = &self.engine.policy;
        let role = &self.id.login_role;
        // Tenant columns present in this result, by table OID.
        let tenants: Vec<(u32, usize, i16)> = fields
            .iter()
            .enumerate()
            .filter(|(_, f)| entry.catalog.tenant.contains_key(&(f.table_oid, f.attnum)))
            .map(|(i, f)| (f.table_oid, i, f.format))
            .collect();
        fields
            .iter_mut()
            .map(|f| {
                if f.table_oid == 0 {
                    return None;
                }
                if let Some(owner) = entry.catalog.blind_index.get(&(f.table_oid, f.attnum)) {
                    let attr = entry.column(owner)?;
                    if policy
                        .column_access(role, &attr.policy)
                        .is_some_and(|a| a.search)
                    {
                        return None;
                    }
                    return Some(Decrypt {
                        attr: attr.clone(),
                        format: f.format,
                        wire: f.format,
                        tenant: None,
                        aad_names: Arc::from(&[][..]),
                        mask: true,
                    });
                }
                let attr = entry.by_attr.get(&(f.table_oid, f.attnum))?;
                let access = policy.column_access(role, &attr.policy)?;
                if !access.read_plaintext {
                    return None;
                }
                f.type_oid = attr.policy.ty.oid();
                f.type_len = type_len(attr.policy.ty);
                f.type_mod = -1;
                let tenant = tenants
                    .iter()
                    .find(|t| t.0 == f.table_oid)
                    .map(|&(_, i, fmt)| {
                        let ty = entry
                            .tenant_types
                            .get(&(attr.column.schema.clone(), attr.column.table.clone()))
                            .cloned()
                            .unwrap_or_else(|| "text".into());
                        (i, ty, fmt)
                    });
                Some(Decrypt::read(attr.clone(), f.format, tenant))
            })
            .collect()
    }

    async fn on_data_row(&mut self, f: Frame, out: &mut BytesMut) {
        let shape = match self.shared.pending.lock().expect("pending queue").front() {
            Some(Pending::Execute {
                portal,
                protected: true,
                ..
            }) => self.portal_shapes.get(portal).cloned(),
            Some(Pending::Query {
                protected: true, ..
            }) => self.current.clone(),
            _ => None,
        };
        let shape = shape.filter(|s| s.iter().any(Option::is_some));
        self.streaming = Some(shape.clone());
        self.on_data_row_with(shape, f, out).await;
    }

    async fn on_data_row_with(&mut self, shape: Option<Shape>, f: Frame, out: &mut BytesMut) {
        self.rows += 1;
        let Some(shape) = shape else {
            out.extend_from_slice(&f.raw);
            return;
        };
        if let Some(log) = &self.engine.audit
            && log.refuses_decryption()
            && shape.iter().flatten().any(|d| !d.mask)
        {
            // `audit.on_failure: block`: no plaintext without its record.
            tracing::warn!(
                "decryption refused: the audit log cannot be written (audit.on_failure: block)"
            );
            log.rejected(&self.id, "58030", AUDIT_BLOCKED);
            self.fail_result("58030", AUDIT_BLOCKED, out);
            return;
        }
        match self
            .decryptor
            .decrypt_row(&self.engine.crypto, &shape, &f.raw[5..], out)
            .await
        {
            Ok(true) => {
                if self.decrypted_rows == 0 {
                    self.decrypted_shape = Some(shape.clone());
                }
                self.decrypted_rows += 1;
            }
            // Malformed, or not as many fields as the result's
            // description: pgveil's view of the result is not
            // PostgreSQL's, so nothing of the row goes out.
            Ok(false) => {
                tracing::warn!(
                    "a row from PostgreSQL does not match its result's description; statement failed"
                );
                self.fail_result(
                    "08P01",
                    "pgveil: a row PostgreSQL sent does not match the description of its result, so pgveil did not forward it: run the statement again",
                    out,
                );
            }
            Err(e) => {
                metrics::counter!("pgveil_decrypt_errors_total").increment(1);
                tracing::warn!(column = %e.column, error = %e.error, "decryption failed");
                self.fail_result(e.error.sqlstate(), &e.error.to_string(), out);
            }
        }
    }

    /// A CopyOutResponse: a COPY TO STDOUT whose rows are decrypted starts
    /// when the Query or Execute at the front planned one (the only COPY
    /// of its Query). It must announce the format and the number of
    /// columns that were planned.
    fn copy_out_started(&mut self, f: &Frame, out: &mut BytesMut) {
        let plan = match self
            .shared
            .pending
            .lock()
            .expect("pending queue")
            .front_mut()
        {
            Some(Pending::Query { copy_out, .. }) => copy_out.take(),
            Some(Pending::Execute { copy_out, .. }) => copy_out.take(),
            _ => None,
        };
        let Some(plan) = plan.and_then(|p| self.still_readable(p)) else {
            out.extend_from_slice(&f.raw);
            return;
        };
        match CopyOut::new(plan, &self.shared.entry()) {
            Ok(c) if c.matches_response(f.body()) => {
                out.extend_from_slice(&f.raw);
                self.copy_out = Some(c);
            }
            Ok(c) => {
                tracing::warn!(
                    table = %c.plan().qualified(),
                    "a COPY's columns differ from the statement's analysis; statement failed"
                );
                self.fail_result(
                    "0A000",
                    "pgveil: the columns of this COPY differ from what pgveil analysed (the table changed?): run it again",
                    out,
                );
            }
            Err(column) => {
                tracing::warn!(%column, "a protected column of a COPY is not in the catalog");
                self.fail_result(
                    "0A000",
                    &format!(
                        "pgveil: protected column {column} is not in the database catalog as the policy expects: run `pgveil policy check --database …`"
                    ),
                    out,
                );
            }
        }
    }

    /// `plan` with only the fields this role may still read under the
    /// policy in force: a COPY prepared (and planned) before a reload that
    /// took `read` away sends those fields as PostgreSQL does
    /// (ciphertext), as a SELECT's rows are shaped per result. `None` when
    /// nothing is left to decrypt.
    fn still_readable(&self, plan: Arc<crate::sql::CopyPlan>) -> Option<Arc<crate::sql::CopyPlan>> {
        let policy = &self.engine.policy;
        let role = &self.id.login_role;
        let reads = |c: &crate::sql::ColumnRef| {
            policy
                .access(role, &c.schema, &c.table, &c.column)
                .is_some_and(|a| a.read_plaintext)
        };
        if plan.decrypt.iter().flatten().all(|d| reads(&d.column)) {
            return Some(plan);
        }
        let mut narrowed = (*plan).clone();
        for d in &mut narrowed.decrypt {
            if d.as_ref().is_some_and(|d| !reads(&d.column)) {
                *d = None;
            }
        }
        narrowed.decrypts().then(|| Arc::new(narrowed))
    }

    /// One CopyData of a COPY TO STDOUT whose rows are decrypted.
    async fn on_copy_out_data(&mut self, f: &Frame, out: &mut BytesMut) {
        let Some(mut c) = self.copy_out.take() else {
            return;
        };
        let done = c
            .data(&self.engine.crypto, &mut self.decryptor, f.body(), out)
            .await;
        let n = c.take_rows();
        self.rows += n;
        self.decrypted_rows += n;
        match done {
            Ok(()) => self.copy_out = Some(c),
            Err(e) => self.copy_out_failed(&c, e, out),
        }
    }

    /// CopyDone of a COPY TO STDOUT whose rows are decrypted: its data
    /// must have ended where PostgreSQL's format ends.
    fn copy_out_done(&mut self, f: &Frame, out: &mut BytesMut) {
        if let Some(c) = self.copy_out.take()
            && let Err(e) = c.done()
        {
            self.copy_out_failed(&c, e, out);
            return;
        }
        out.extend_from_slice(&f.raw);
    }

    /// The COPY TO cannot go on: the client gets an error in place of the
    /// row (as when PostgreSQL fails a COPY midway), nothing of it.
    fn copy_out_failed(&mut self, c: &CopyOut, e: Failure, out: &mut BytesMut) {
        match e {
            Failure::Decrypt(e) => {
                metrics::counter!("pgveil_decrypt_errors_total").increment(1);
                tracing::warn!(column = %e.column, error = %e.error, "decryption failed");
                self.fail_result(e.error.sqlstate(), &e.error.to_string(), out);
            }
            Failure::Malformed(what) => {
                let table = c.plan().qualified();
                tracing::warn!(%table, problem = what, "COPY data from PostgreSQL could not be read");
                self.fail_result(
                    "22P04",
                    &format!(
                        "pgveil: the COPY data PostgreSQL sent for {table} has {what}: pgveil could not decrypt it, so the COPY was ended"
                    ),
                    out,
                );
            }
        }
    }

    /// A row of the current result cannot reach the client (a value failed
    /// to decrypt): the statement fails for the client with this error,
    /// like a PostgreSQL error at that row. The rest of its answers are
    /// dropped up to ReadyForQuery, and a transaction block it ran in is
    /// made to fail on PostgreSQL too.
    fn fail_result(&mut self, sqlstate: &str, message: &str, out: &mut BytesMut) {
        self.row_failed = true;
        // Inside a transaction block, request the abort now: the
        // client can send its next statement as soon as it reads
        // this error, before PostgreSQL's ReadyForQuery arrives.
        if self.shared.tx_in_block() {
            self.shared.set_must_abort();
            self.abort_early = true;
        }
        out.extend_from_slice(&msg::error_response("ERROR", sqlstate, message));
        self.discard_until_ready = true;
        self.streaming = None;
        self.decryptor.end_statement();
        self.pop_if_completes(b'C', out);
    }

    /// CommandComplete: audit, catalog invalidation after DDL, and the
    /// end of an Execute.
    fn finish_statement(&mut self, f: &Frame) {
        let tag = std::str::from_utf8(f.body())
            .unwrap_or("")
            .trim_end_matches('\0');
        let first = tag.split(' ').next().unwrap_or("");
        if matches!(
            first,
            "CREATE" | "ALTER" | "DROP" | "COMMENT" | "GRANT" | "REVOKE" | "TRUNCATE"
        ) && !tag.starts_with("CREATE ROLE")
        {
            self.engine.invalidate();
        }
        let audit = {
            let mut q = self.shared.pending.lock().expect("pending queue");
            match q.front_mut() {
                Some(Pending::Query { ops, .. })
                    if tag == "DEALLOCATE" || tag == "CLOSE CURSOR" =>
                {
                    // A lone `DEALLOCATE name` or `CLOSE name` completed
                    // (see `Frontend::query_ops`).
                    if let Some(i) = ops.iter().position(|o| o.confirmed_by == Some(tag)) {
                        let o = ops.remove(i);
                        self.shared.resolve(super::Resolution::Op(o.id, true));
                    }
                    None
                }
                Some(Pending::Execute { audit, .. }) | Some(Pending::Query { audit, .. }) => {
                    audit.clone()
                }
                _ => None,
            }
        };
        match tag {
            "DEALLOCATE ALL" => self
                .shared
                .resolve(super::Resolution::ForgetAll { portals: false }),
            "DISCARD ALL" => {
                self.portal_shapes.clear();
                self.shared
                    .resolve(super::Resolution::ForgetAll { portals: true })
            }
            // CLOSE ALL drops every portal but the one running it, the
            // protocol's too, however it was sent.
            "CLOSE CURSOR ALL" => {
                self.portal_shapes.clear();
                self.shared.resolve(super::Resolution::ForgetPortals)
            }
            _ => {}
        }
        self.record_audit(audit, tag);
        self.decryptor.end_statement();
        if self.front_is(|p| matches!(p, Pending::Execute { .. })) {
            self.shared.pop();
        }
    }

    /// PortalSuspended: an Execute with a row limit ended before the
    /// portal did. What it decrypted is audited now: the client may never
    /// run the portal to its end.
    fn suspend_statement(&mut self) {
        let audit = match self.shared.pending.lock().expect("pending queue").front() {
            Some(Pending::Execute { audit, .. }) => audit.clone(),
            _ => None,
        };
        self.record_audit(audit, "SUSPENDED");
    }

    /// One audit record for the rows since the last record, when they
    /// searched or decrypted protected data.
    fn record_audit(&mut self, audit: Option<Arc<AuditInfo>>, tag: &str) {
        if let Some(a) = audit
            && (a.searched || self.decrypted_rows > 0)
            && let Some(log) = &self.engine.audit
        {
            let mut info: AuditInfo = (*a).clone();
            info.decrypted = self.decrypted_rows > 0;
            // The columns it decrypted, as its rows' shape says, are
            // recorded whatever the plan named (a FETCH names none; a
            // portal name pgveil kept after PostgreSQL dropped it may name
            // other ones).
            if let Some(shape) = &self.decrypted_shape {
                for d in shape.iter().flatten().filter(|d| !d.mask) {
                    let c = &d.attr.column;
                    let t = format!("{}.{}", c.schema, c.table);
                    if !info.tables.contains(&t) {
                        info.tables.push(t);
                    }
                    let col = c.to_string();
                    if !info.columns.contains(&col) {
                        info.columns.push(col);
                    }
                }
            }
            log.record(&self.id, &info, tag, self.rows, "ok");
        }
        self.rows = 0;
        self.decrypted_rows = 0;
        self.decrypted_shape = None;
    }
}

/// A refusal is raised by PostgreSQL from an injected `DO` block so that it
/// lands at the right point of a pipeline; its CONTEXT line ("PL/pgSQL
/// function inline_code_block line 1 at RAISE") describes that mechanism,
/// not the client's statement. Returns the ErrorResponse body without it
/// for pgveil's own messages, `None` for every other error.
fn without_rejection_context(body: &[u8]) -> Option<Vec<u8>> {
    let fields: Vec<&[u8]> = body
        .split(|&b| b == 0)
        .take_while(|f| !f.is_empty())
        .collect();
    let is_ours = fields
        .iter()
        .any(|f| f[0] == b'M' && f[1..].starts_with(b"pgveil: "));
    let context = |f: &&[u8]| f[0] == b'W' && f.ends_with(b"inline_code_block line 1 at RAISE");
    if !is_ours || !fields.iter().any(context) {
        return None;
    }
    let mut out = Vec::with_capacity(body.len());
    for f in fields.iter().filter(|f| !context(f)) {
        out.extend_from_slice(f);
        out.push(0);
    }
    out.push(0);
    Some(out)
}

/// `typlen` of a plaintext type, for RowDescription.
fn type_len(t: PgType) -> i16 {
    match t {
        PgType::Int2 => 2,
        PgType::Int4 | PgType::Date => 4,
        PgType::Int8 | PgType::Timestamp | PgType::Timestamptz => 8,
        PgType::Bool => 1,
        PgType::Uuid => 16,
        _ => -1,
    }
}

#[cfg(test)]
mod tests {
    use super::without_rejection_context;

    fn body(fields: &[&str]) -> Vec<u8> {
        let mut b = Vec::new();
        for f in fields {
            b.extend_from_slice(f.as_bytes());
            b.push(0);
        }
        b.push(0);
        b
    }

    #[test]
    fn refusals_lose_the_do_block_context_only() {
        let ours = body(&[
            "SERROR",
            "C42501",
            "Mpgveil: ordering by public.users.email is not possible",
            "WPL/pgSQL function inline_code_block line 1 at RAISE",
            "Rexec_stmt_raise",
        ]);
        assert_eq!(
            without_rejection_context(&ours).unwrap(),
            body(&[
                "SERROR",
                "C42501",
                "Mpgveil: ordering by public.users.email is not possible",
                "Rexec_stmt_raise",
            ])
        );
        let theirs = body(&[
            "SERROR",
            "CP0001",
            "Mmine",
            "WPL/pgSQL function inline_code_block line 1 at RAISE",
        ]);
        assert!(without_rejection_context(&theirs).is_none());
        assert!(without_rejection_context(&body(&["SERROR", "Mpgveil: x"])).is_none());
    }
}
