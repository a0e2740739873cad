//! `grpc_request`: a `ModelInferRequest` as protobuf bytes, as the gRPC server takes it: the
//! codec's look at what it would cost to decode (`grpc_cost`), then the generated message's
//! decoding, then the conversion into an inference request (the `entities` parameter, when there
//! is one, lets the inputs be empty: the features build them).
//!
//! Needs the protocol crate's `grpc` feature (see `fuzz/Cargo.toml`).

use modelship_protocol::grpc::{self, pb};
use modelship_protocol::grpc_cost;
use prost::Message;

pub fn run(data: &[u8]) {
    if grpc_cost::check_infer_request(data).is_err() {
        return;
    }
    let Ok(request) = pb::ModelInferRequest::decode(data) else { return };
    let _ = grpc::decode(request);
}
