//! `grpc_request`: a `ModelInferRequest` as protobuf bytes, decoded with the generated message
//! and converted into an inference request as the gRPC server does (the `entities` parameter,
//! when there is one, lets the inputs be empty: the features build them).
//!
//! Needs the protocol crate's `grpc` feature (see `fuzz/Cargo.toml`).

use modelship_protocol::grpc::{self, pb};
use prost::Message;

pub fn run(data: &[u8]) {
    let Ok(request) = pb::ModelInferRequest::decode(data) else { return };
    let _ = grpc::decode(request);
}
