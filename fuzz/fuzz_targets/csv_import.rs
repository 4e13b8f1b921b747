//! CSV files (native and UN Comtrade layouts) into the importer and a
//! store; see `tradewatch_fuzz::harness::csv`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tradewatch_fuzz::harness::csv::run(data);
});
