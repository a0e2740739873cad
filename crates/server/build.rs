//! With the `grpc` feature: generates the gRPC service of `inference.proto` over the message
//! types the protocol crate generates from the same file (`modelship_protocol::grpc::pb`).

fn main() {
    #[cfg(feature = "grpc")]
    {
        let proto_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../protocol/proto");
        println!("cargo:rerun-if-changed={}", proto_dir.join("inference.proto").display());
        let protoc = protoc_bin_vendored::protoc_bin_path().expect("protoc-bin-vendored has a protoc for this platform");
        // SAFETY: build scripts are single-threaded; nothing reads the environment concurrently.
        #[allow(unsafe_code)]
        unsafe {
            std::env::set_var("PROTOC", protoc)
        };
        tonic_prost_build::configure()
            .build_client(false)
            .extern_path(".inference", "::modelship_protocol::grpc::pb")
            // tonic's prost codec behind a check of what a message would cost to decode.
            .codec_path("crate::grpc::BoundedCodec")
            .compile_protos(&[proto_dir.join("inference.proto")], &[proto_dir])
            .expect("inference.proto compiles");
    }
}
