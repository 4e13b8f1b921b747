//! Raw request bodies into every RPC of a real server; see
//! `tradewatch_fuzz::harness::grpc`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tradewatch_fuzz::harness::grpc::run(data);
});
