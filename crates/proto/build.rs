//! Generates the `push.v1` types from `proto/push/v1/push.proto` at build time.
//!
//! protox parses the .proto in pure Rust (no system `protoc`), prost writes the
//! structs, and pbjson writes serde impls that follow the proto3 JSON mapping
//! (camelCase names, enum value names, `"3.5s"` durations, RFC 3339 timestamps).
//!
//! JSON decoding is forward compatible, as binary protobuf is by design: a
//! producer built from a newer `push.proto` may send fields and enum values
//! this build does not know. Unknown fields are skipped, and unknown enum
//! names read as the `_UNSPECIFIED` value (a target of an unknown platform
//! is then dead-lettered alone, as in binary), instead of turning every such
//! message into poison.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let file = root.join("push/v1/push.proto");
    println!("cargo:rerun-if-changed={}", file.display());

    let fds = protox::compile([&file], [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptor_path = out.join("push_descriptor.bin");
    std::fs::write(&descriptor_path, prost::Message::encode_to_vec(&fds))?;

    let mut config = prost_build::Config::new();
    config
        .compile_well_known_types()
        .extern_path(".google.protobuf", "::pbjson_types");
    config.compile_fds(fds)?;

    let descriptors = std::fs::read(&descriptor_path)?;
    pbjson_build::Builder::new()
        .register_descriptors(&descriptors)?
        .ignore_unknown_fields()
        .ignore_unknown_enum_variants()
        .build(&[".push.v1"])?;
    Ok(())
}
