//! Generates the worker contract's messages from `proto/` with `protox` (pure Rust), so
//! building needs no system `protoc`; the tonic client too with the `grpc` feature. The manifest directory is read when the script
//! runs, not baked in when it is compiled: checkouts sharing one `CARGO_TARGET_DIR`
//! may reuse each other's compiled build script.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .ok_or("CARGO_MANIFEST_DIR is not set: run this build script through cargo")?;
    let proto_root = PathBuf::from(manifest_dir).join("../proto");
    let proto_file = proto_root.join("snakepit/v1/worker.proto");
    println!("cargo:rerun-if-changed={}", proto_file.display());
    let fds = protox::compile([&proto_file], [&proto_root])?;
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(std::env::var_os("CARGO_FEATURE_GRPC").is_some())
        .bytes(".")
        .compile_fds(fds)?;
    Ok(())
}
