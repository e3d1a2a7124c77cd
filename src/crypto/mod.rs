//! Crypto core: envelope format, canonical plaintext encoding, blind index.
//! See docs/crypto.md.

pub mod types;

pub use types::{Normalizer, Oid, PgType, Storage};
