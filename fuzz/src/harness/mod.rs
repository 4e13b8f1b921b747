//! The fuzz harness: everything a caller controls (gRPC request bodies, CSV
//! files, selectors) thrown at a real tradewatch, with the checks every
//! answer and the store must pass. Shared by the cargo-fuzz targets in
//! `fuzz/fuzz_targets/` and by `tests/fuzz.rs`, which runs the same targets
//! on generated inputs for a few seconds in `cargo test`.
#![allow(dead_code)]

pub mod check;
pub mod csv;
pub mod grpc;
pub mod input;
pub mod requests;
pub mod selectors;
pub mod server;
