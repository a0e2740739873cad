//! With the `grpc` feature: generates the messages of `proto/inference.proto` (the server crate
//! generates the service over these same types), with the `protoc` binary vendored by
//! `protoc-bin-vendored` (no system install needed). With `model-repository`: the descriptor set
//! of `proto/model_config.proto`, which `config.pbtxt` files are read against.

fn main() {
    #[cfg(feature = "model-repository")]
    {
        println!("cargo:rerun-if-changed=proto/model_config.proto");
        let protoc = protoc_bin_vendored::protoc_bin_path().expect("protoc-bin-vendored has a protoc for this platform");
        let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("model_config.bin");
        let status = std::process::Command::new(protoc)
            .arg("--include_imports")
            .arg(format!("--descriptor_set_out={}", out.display()))
            .args(["--proto_path=proto", "proto/model_config.proto"])
            .status()
            .expect("protoc runs");
        assert!(status.success(), "proto/model_config.proto compiles");
    }
    #[cfg(feature = "grpc")]
    {
        println!("cargo:rerun-if-changed=proto/inference.proto");
        let protoc = protoc_bin_vendored::protoc_bin_path().expect("protoc-bin-vendored has a protoc for this platform");
        // SAFETY: build scripts are single-threaded; nothing reads the environment concurrently.
        #[allow(unsafe_code)]
        unsafe {
            std::env::set_var("PROTOC", protoc)
        };
        tonic_prost_build::configure()
            .build_client(false)
            .build_server(false)
            .bytes(".inference.ModelInferRequest.raw_input_contents")
            .compile_protos(&["proto/inference.proto"], &["proto"])
            .expect("proto/inference.proto compiles");
    }
}
