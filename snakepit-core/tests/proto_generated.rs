//! `src/generated/snakepit.v1.rs` is the Rust side of `proto/snakepit/v1/worker.proto`,
//! checked in so that building the crate needs no protobuf compiler, no build script
//! and none of their dependencies. This test regenerates it (protox + tonic-prost-build,
//! dev-dependencies only) and fails when the checked-in file is stale:
//!
//!     UPDATE_GENERATED=1 cargo test -p snakepit-core --test proto_generated
//!
//! rewrites it.

use std::path::{Path, PathBuf};
use std::process::Command;

const CLIENT_MARKER: &str = "/// Generated client implementations.\npub mod worker_client {";

fn generate(out_dir: &Path) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("proto");
    let fds = protox::compile([root.join("snakepit/v1/worker.proto")], [&root])
        .unwrap_or_else(|e| panic!("proto/ does not compile: {e}"));
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .bytes(".")
        .out_dir(out_dir)
        .compile_fds(fds)
        .unwrap_or_else(|e| panic!("code generation failed: {e}"));
    let raw = std::fs::read_to_string(out_dir.join("snakepit.v1.rs")).expect("generated file");
    assert!(
        raw.contains(CLIENT_MARKER),
        "tonic-prost-build changed how it writes the client module; update CLIENT_MARKER"
    );
    // The messages serve both transports; the tonic client only the `grpc` feature.
    let gated = raw.replacen(
        CLIENT_MARKER,
        &format!("#[cfg(feature = \"grpc\")]\n{CLIENT_MARKER}"),
        1,
    );
    let text = format!(
        "// @generated from proto/snakepit/v1/worker.proto by tests/proto_generated.rs\n\
         // (UPDATE_GENERATED=1 cargo test -p snakepit-core --test proto_generated). Do not edit.\n\n{gated}"
    );
    // As `cargo fmt` leaves it, so the two never fight over the file.
    let path = out_dir.join("formatted.rs");
    std::fs::write(&path, text).expect("write");
    let status = Command::new(std::env::var("RUSTFMT").unwrap_or_else(|_| "rustfmt".into()))
        .args(["--edition", "2021"])
        .arg(&path)
        .status()
        .expect("rustfmt (part of the toolchain; `rustup component add rustfmt`)");
    assert!(status.success(), "rustfmt failed on the generated code");
    std::fs::read_to_string(&path).expect("read back")
}

#[test]
fn checked_in_code_matches_the_proto() {
    let out = std::env::temp_dir().join(format!("snakepit-proto-gen-{}", std::process::id()));
    std::fs::create_dir_all(&out).expect("temp dir");
    let fresh = generate(&out);
    let _ = std::fs::remove_dir_all(&out);
    let checked_in: PathBuf =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("src/generated/snakepit.v1.rs");
    if std::env::var_os("UPDATE_GENERATED").is_some() {
        std::fs::write(&checked_in, &fresh).expect("write the checked-in file");
        return;
    }
    let current = std::fs::read_to_string(&checked_in).unwrap_or_default();
    assert!(
        current == fresh,
        "{} is stale (proto/ or the generator changed): run \
         UPDATE_GENERATED=1 cargo test -p snakepit-core --test proto_generated",
        checked_in.display()
    );
}
