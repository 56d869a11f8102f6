//! Generates the notes service. protoc comes from `protoc-bin-vendored`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/notes.proto");
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    // The descriptor set serves gRPC reflection.
    let descriptors =
        std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("notes_descriptor.bin");
    tonic_prost_build::configure()
        .file_descriptor_set_path(descriptors)
        .compile_with_config(config, &["proto/notes.proto"], &["proto"])?;
    Ok(())
}
