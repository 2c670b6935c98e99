//! Generates the protobuf and gRPC code from `proto/` with a pure-Rust
//! compiler (protox), so a fresh machine needs nothing but cargo.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "cluebridge/v1/envelope.proto",
        "cluebridge/v1/broker.proto",
        "cluebridge/v1/peer.proto",
        "cluebridge/v1/admin.proto",
        "cluebridge/v1/audit.proto",
        "cluebridge/v1/rectification.proto",
    ];
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(files, ["proto"])?;
    // Kept for gRPC server reflection (compile_fds does not write it).
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("cluebridge_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
