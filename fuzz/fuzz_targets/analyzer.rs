//! See `fuzz/src/lib.rs` (`pgveil_fuzz::analyzer`) for the input layout and
//! what is checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pgveil_fuzz::analyzer(data));
