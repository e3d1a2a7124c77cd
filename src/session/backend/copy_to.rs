//! COPY TO STDOUT for a role that reads protected columns: the
//! CopyOutResponse is checked against the plan the Query or Execute at the
//! front carries (narrowed to what the role may still read), each CopyData
//! is transformed by [`CopyOut`] one message at a time, and a COPY that
//! cannot go on ends with an error in place of its row. Invariant: nothing
//! of a row that failed to read or decrypt reaches the client.

use std::sync::Arc;

use bytes::BytesMut;

use super::Backend;
use crate::session::copy_out::{CopyOut, Failure};
use crate::session::{Kind, Pending};
use crate::wire::codec::Frame;
use crate::wire::tag::be;

impl Backend {
    /// COPY responses and the data of a COPY TO STDOUT answer the Query or
    /// Execute at the front.
    pub(super) fn on_copy_message(&mut self, f: &Frame, out: &mut BytesMut) {
        if !self.expect(
            &[Kind::Execute, Kind::Query],
            "a COPY message without an Execute or Query",
            out,
        ) {
            return;
        }
        match f.tag {
            be::COPY_OUT => self.copy_out_started(f, out),
            be::COPY_DONE => self.copy_out_done(f, out),
            _ => out.extend_from_slice(&f.raw),
        }
    }

    /// A CopyOutResponse: a COPY TO STDOUT whose rows are decrypted starts
    /// when the Query or Execute at the front planned one (the only COPY
    /// of its Query). It must announce the format and the number of
    /// columns that were planned.
    fn copy_out_started(&mut self, f: &Frame, out: &mut BytesMut) {
        let plan = match self
            .exchange
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
        match CopyOut::new(plan, &self.exchange.entry()) {
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
    pub(super) async fn on_copy_out_data(&mut self, f: &Frame, out: &mut BytesMut) {
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
}
