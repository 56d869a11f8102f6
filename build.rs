//! Generates the gRPC service of the tonic integration tests. protoc comes
//! from the `protoc-bin-vendored` crate, so nothing is installed by hand.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The tonic tests speak the tonic-notes example's protocol.
    println!("cargo:rerun-if-changed=examples/tonic-notes/proto/notes.proto");
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure().compile_with_config(
        config,
        &["examples/tonic-notes/proto/notes.proto"],
        &["examples/tonic-notes/proto"],
    )?;
    Ok(())
}
