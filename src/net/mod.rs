//! Connections on either leg, below both `proxy` and `auth`: the
//! plain-or-TLS [`stream::Stream`], the rustls configuration of both legs
//! (`tls`), and opening the connection to PostgreSQL (`upstream`). pgveil's
//! own client connections (`pgclient`) use the same TLS client settings.

pub mod stream;
pub mod tls;
pub mod upstream;
