//! Generates the gRPC code of package `t2t.v1` with tonic-prost-build, using the protoc binary
//! shipped by `protoc-bin-vendored` so that no system protoc is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);
    println!("cargo:rerun-if-changed=proto");
    // The encoded descriptors, for gRPC reflection (grpcurl with no .proto at hand).
    let descriptors = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("t2t_v1.bin");
    tonic_prost_build::configure()
        .file_descriptor_set_path(descriptors)
        .compile_protos(
            &["proto/t2t/v1/socket.proto", "proto/t2t/v1/operator.proto"],
            &["proto"],
        )?;
    Ok(())
}
