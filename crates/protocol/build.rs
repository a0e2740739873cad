//! With the `grpc` feature: generates the messages of `proto/inference.proto` (the server crate
//! generates the service over these same types), with the `protoc` binary vendored by
//! `protoc-bin-vendored` (no system install needed).

fn main() {
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
