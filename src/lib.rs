//! pgveil: a transparent encrypting PostgreSQL proxy. See ARCHITECTURE.md for
//! the map of these modules and the path of a query through them.

pub mod admin;
pub mod audit;
pub mod auth;
pub mod config;
pub mod crypto;
pub mod engine;
pub mod health;
pub mod keys;
pub mod logging;
pub mod metrics;
pub mod net;
pub mod ops;
pub mod pgclient;
pub mod policy;
pub mod proxy;
pub mod seal;
pub mod session;
pub mod sql;
pub mod wire;
pub mod yaml;
