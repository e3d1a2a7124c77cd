//! DataRow: each row of a result is decrypted as its shape says (looked up
//! once per result, then streamed) by the session's [`RowDecryptor`], or
//! forwarded as PostgreSQL's bytes when nothing in it is decrypted. A row
//! that cannot be decrypted fails the statement (`Backend::fail_result`);
//! invariant: no part of such a row, and no plaintext without its audit
//! record under `audit.on_failure: block`, reaches the client.
//!
//! [`RowDecryptor`]: crate::session::rows::RowDecryptor

use bytes::BytesMut;

use super::Backend;
use crate::session::{Kind, Pending, Shape};
use crate::wire::codec::Frame;

/// The refusal while `audit.on_failure: block` holds decryption back.
const AUDIT_BLOCKED: &str = "pgveil: decryption is refused while the audit log cannot be written (audit.on_failure: block): fix audit.path (see pgveil's log), then run the statement again";

impl Backend {
    /// The first DataRow of a result: its shape is looked up in the queue,
    /// then kept for the rows after it.
    pub(super) async fn on_data_row(&mut self, f: Frame, out: &mut BytesMut) {
        if !self.expect(
            &[Kind::Execute, Kind::Query],
            "DataRow without an Execute or Query",
            out,
        ) {
            return;
        }
        let shape = match self.exchange.pending.lock().expect("pending queue").front() {
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

    /// One DataRow of a result whose shape is known (`None`: forwarded).
    pub(super) async fn on_data_row_with(
        &mut self,
        shape: Option<Shape>,
        f: Frame,
        out: &mut BytesMut,
    ) {
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
}
