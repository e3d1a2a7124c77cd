//! The proxy: listener, sessions, TLS on both legs, cancel routing, the
//! steady-state relay, and reloading a running instance.

pub mod cancel;
pub mod login;
pub mod pidfile;
pub mod relay;
pub mod reload;
pub mod server;
pub mod shared;
pub mod swap;

pub use server::{run, serve};
pub use shared::Shared;
