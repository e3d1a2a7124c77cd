//! The proxy: listener, sessions, TLS on both legs, cancel routing, and the
//! steady-state relay.

pub mod cancel;
pub mod relay;
pub mod server;
pub mod session;
pub mod stream;
pub mod tls;
pub mod upstream;

pub use server::{Shared, run, serve};
