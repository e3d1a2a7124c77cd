//! Adversarial tests: inputs an attacker would send (raw protocol frames
//! where a driver cannot produce them), each followed by a direct scan of
//! the whole cluster, the logs and the audit log for the plaintext
//! (`common::scan`). One file per class of input under `tests/adversarial/`.

mod common;

#[path = "adversarial/batch.rs"]
mod batch;
#[path = "adversarial/bulk.rs"]
mod bulk;
#[path = "adversarial/catalog.rs"]
mod catalog;
#[path = "adversarial/copy.rs"]
mod copy;
#[path = "adversarial/forget.rs"]
mod forget;
#[path = "adversarial/identity.rs"]
mod identity;
#[path = "adversarial/lane.rs"]
mod lane;
#[path = "adversarial/portals.rs"]
mod portals;
#[path = "adversarial/prepared.rs"]
mod prepared;
#[path = "adversarial/reads.rs"]
mod reads;
#[path = "adversarial/reload_pipeline.rs"]
mod reload_pipeline;
#[path = "adversarial/scanner.rs"]
mod scanner;
#[path = "adversarial/splice.rs"]
mod splice;
#[path = "adversarial/streaming.rs"]
mod streaming;
#[path = "adversarial/variants.rs"]
mod variants;
