//! PostgreSQL protocol v3 framing and the handful of messages pgveil reads
//! or writes itself.

pub mod budget;
pub mod codec;
pub mod msg;
