//! The fuzz targets' kept inputs (`fuzz/`), replayed through the same harnesses the fuzzer runs:
//! none may panic.

#[path = "../../../fuzz/harness/replay.rs"]
mod replay;

#[path = "../../../fuzz/harness/v2_json.rs"]
mod v2_json;

#[path = "../../../fuzz/harness/binary_tensor.rs"]
mod binary_tensor;

#[test]
fn v2_json_inputs_decode_without_panicking() {
    replay::replay(env!("CARGO_MANIFEST_DIR"), "v2_json", v2_json::run);
}

#[test]
fn binary_tensor_inputs_decode_without_panicking() {
    replay::replay(env!("CARGO_MANIFEST_DIR"), "binary_tensor", binary_tensor::run);
}

#[cfg(feature = "grpc")]
#[path = "../../../fuzz/harness/grpc_request.rs"]
mod grpc_request;

#[cfg(feature = "grpc")]
#[test]
fn grpc_request_inputs_convert_without_panicking() {
    replay::replay(env!("CARGO_MANIFEST_DIR"), "grpc_request", grpc_request::run);
}
