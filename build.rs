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
    // Envelopes and payloads are `bytes::Bytes`: decoded from a request
    // they share its buffer, and they pass from store to wire by reference
    // count instead of by copy.
    tonic_prost_build::configure()
        .bytes(".cluebridge.v1.SignedEnvelope")
        .bytes(".cluebridge.v1.SubmitRequest.payload")
        .bytes(".cluebridge.v1.SubmitResponse")
        .compile_fds(descriptors)?;
    Ok(())
}
