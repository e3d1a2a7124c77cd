//! Operations: the command line and the commands around the proxy.

pub mod cli;
