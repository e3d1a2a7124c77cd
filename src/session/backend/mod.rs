//! Server → client: match each response to its request (the [`Pending`]
//! FIFO), show authorized roles the plaintext types, decrypt DataRow fields
//! for roles that may read them, and stream everything else through as the
//! original bytes. Rows are handled one at a time: nothing is buffered.
//!
//! This file holds the [`Backend`]'s state and the per-message dispatcher
//! ([`Backend::on_frame`]); the work per concern lives beside it: `queue`
//! (checking each answer against the pending queue), `describe`
//! (ParameterDescription, RowDescription, result shapes), `data_row`,
//! `copy_to` (COPY TO STDOUT decrypted), `copy_in` (COPY FROM STDIN as
//! PostgreSQL reports it), `complete` (statement completion and its audit
//! record), `ready` (ReadyForQuery), `errors` and `catalog` (pgveil's own
//! catalog query).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bytes::BytesMut;

use super::copy_out::CopyOut;
use super::rows::RowDecryptor;
use super::{Exchange, Identity, Pending, Shape};
use crate::wire::codec::Frame;
use crate::wire::tag::be;

mod catalog;
mod complete;
mod copy_in;
mod copy_to;
mod data_row;
mod describe;
mod errors;
mod lane;
mod queue;
mod ready;
#[cfg(test)]
mod tests;

/// The server → client half of a session: its state between frames.
pub struct Backend {
    pub id: Identity,
    pub exchange: Arc<Exchange>,
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
    /// Inside the answers to a pass-through run (`lane`): the
    /// ReadyForQuery messages still to come before its entry is done.
    lane: u32,
}

impl Backend {
    /// A backend for one session, with nothing in flight.
    pub fn new(id: Identity, exchange: Arc<Exchange>, engine: Arc<super::Engine>) -> Backend {
        Backend {
            id,
            exchange,
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
            lane: 0,
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

    /// Handle one server frame, appending what goes to the client to `out`.
    pub async fn on_frame(&mut self, f: Frame, out: &mut BytesMut) {
        if self.broken {
            return;
        }
        if self.in_lane() {
            self.on_lane_frame(&f, out);
            return;
        }
        let ends_copy_or_request = !matches!(
            f.tag,
            be::DATA_ROW | be::COPY_DATA | be::NOTICE | be::PARAMETER_STATUS | be::NOTIFICATION
        );
        self.on_frame_inner(f, out).await;
        // Resolve CopySync entries as soon as their COPY's fate is known,
        // so that the queue is idle when PostgreSQL is (the frontend and
        // the catalog refresh wait for that).
        if ends_copy_or_request && !self.broken && !self.settle_front() {
            self.out_of_step("a Sync inside a COPY that failed", out);
        }
    }

    async fn on_frame_inner(&mut self, f: Frame, out: &mut BytesMut) {
        if f.tag == be::DATA_ROW
            && !self.discard_until_ready
            && let Some(shape) = &self.streaming
        {
            let shape = shape.clone();
            self.on_data_row_with(shape, f, out).await;
            return;
        }
        if f.tag == be::COPY_DATA && !self.discard_until_ready && self.copy_out.is_some() {
            self.on_copy_out_data(&f, out).await;
            return;
        }
        if matches!(
            f.tag,
            be::COMMAND_COMPLETE | be::ERROR_RESPONSE | be::READY_FOR_QUERY
        ) {
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
        if !self.track_copy_in(&f, out) {
            return;
        }
        if self.discard_until_ready && f.tag != be::READY_FOR_QUERY {
            if f.tag == be::ERROR_RESPONSE {
                // Errors after ours are dropped too; keep the queue in step.
                self.drop_until_sync(out);
            } else {
                self.pop_if_completes(f.tag, out);
            }
            return;
        }
        self.answer(f, out).await;
    }

    /// A frame that answers the request at the front of the queue, by type.
    async fn answer(&mut self, f: Frame, out: &mut BytesMut) {
        match f.tag {
            be::PARSE_COMPLETE | be::BIND_COMPLETE => self.on_parse_or_bind_complete(&f, out),
            be::CLOSE_COMPLETE => self.on_close_complete(&f, out),
            be::PARAMETER_DESCRIPTION => self.on_parameter_description(&f, out),
            be::ROW_DESCRIPTION => self.on_row_description(&f, out),
            be::NO_DATA => self.on_no_data(&f, out),
            be::DATA_ROW => self.on_data_row(f, out).await,
            be::COMMAND_COMPLETE => self.on_command_complete(&f, out),
            be::PORTAL_SUSPENDED => self.on_portal_suspended(&f, out),
            be::EMPTY_QUERY => self.on_empty_query(&f, out),
            // COPY responses and the data of a COPY TO STDOUT answer the
            // Query or Execute at the front.
            be::COPY_IN | be::COPY_OUT | be::COPY_BOTH | be::COPY_DATA | be::COPY_DONE => {
                self.on_copy_message(&f, out)
            }
            // pgveil never forwards a FunctionCall.
            be::FUNCTION_CALL_RESPONSE => self.out_of_step("FunctionCallResponse", out),
            be::ERROR_RESPONSE => self.on_error_response(&f, out),
            be::READY_FOR_QUERY => self.on_ready_for_query(&f, out),
            _ => out.extend_from_slice(&f.raw),
        }
    }
}
