//! Generates the worker gRPC client from `proto/` with `protox` (pure Rust), so
//! building needs no system `protoc`.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../proto");
    let proto_file = proto_root.join("snakepit/v1/worker.proto");
    println!("cargo:rerun-if-changed={}", proto_file.display());
    let fds = protox::compile([&proto_file], [&proto_root])?;
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .bytes(".")
        .compile_fds(fds)?;
    Ok(())
}
