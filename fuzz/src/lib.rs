//! Fuzz targets for tradewatch; see `docs/fuzzing.md`.

pub mod harness;
