//! Compiles the protos with protox (pure Rust, no system `protoc`).

use std::path::PathBuf;

use prost::Message;

const API_PROTOS: &[&str] = &["tradewatch/v1/trade.proto", "tradewatch/v1/milestones.proto"];
/// Error-detail messages the API returns; registered with reflection so
/// grpcurl can print a `google.rpc.BadRequest`.
const DETAIL_PROTOS: &[&str] = &["google/rpc/error_details.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);

    let api = protox::compile(API_PROTOS, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(api)?;

    let all: Vec<&str> = API_PROTOS.iter().chain(DETAIL_PROTOS).copied().collect();
    let reflection = protox::compile(all, ["proto"])?;
    std::fs::write(
        out_dir.join("tradewatch_descriptor.bin"),
        reflection.encode_to_vec(),
    )?;
    Ok(())
}
