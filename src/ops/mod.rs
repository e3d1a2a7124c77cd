//! Operations: the command line and the commands around the proxy.

pub mod backfill;
pub mod cli;
pub mod db;
pub mod demo;
pub mod preflight;
pub mod rotate;
pub mod shred;
