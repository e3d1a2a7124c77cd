//! Operations: the command line and the commands around the proxy.

pub mod cli;
pub mod db;
pub mod demo;
pub mod engine;
