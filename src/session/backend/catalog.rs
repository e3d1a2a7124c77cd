//! The answers to pgveil's own catalog query (`Pending::Catalog`), sent on
//! the session's connection between statements: its rows are collected as
//! text and handed to the waiting reload when its ReadyForQuery arrives;
//! invariant: none of these answers reaches the client.

use super::Backend;
use crate::session::Pending;
use crate::wire::codec::Frame;
use crate::wire::result::decode_data_row;
use crate::wire::tag::be;

impl Backend {
    /// One frame answering the catalog query at the front of the queue.
    pub(super) fn on_catalog_frame(&mut self, f: &Frame) {
        match f.tag {
            be::DATA_ROW => {
                let body = f.raw.slice(5..);
                if let Some(cols) = decode_data_row(&body) {
                    self.catalog_rows.push(
                        cols.into_iter()
                            .map(|c| c.map(|b| String::from_utf8_lossy(&b).into_owned()))
                            .collect(),
                    );
                }
            }
            be::ERROR_RESPONSE => self.catalog_failed = true,
            be::READY_FOR_QUERY => {
                if let Some(Pending::Catalog { done }) = self.exchange.pop() {
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
}
