//! Selectors, groupings, orders and limits into Aggregate and ListRecords;
//! see `tradewatch_fuzz::harness::selectors`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tradewatch_fuzz::harness::selectors::run(data);
});
