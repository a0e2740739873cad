//! Wire types of modelship and their translation to and from the inference vocabulary.
//!
//! - [`v2`]: the Open Inference Protocol V2 REST JSON shapes (what Triton, KServe and MLServer speak).
//! - [`v1`]: the seed's simple `POST /v1/predict` API.
//! - [`json_tensor`]: typed decoding of JSON tensor data (nested or flat) for every OIP datatype,
//!   and encoding of output tensors, without going through a generic JSON tree.
//! - [`model_config`], [`statistics`]: Triton's model configuration and statistics extensions.
//! - `grpc` (feature `grpc`): the gRPC messages (Triton's numbering) and their conversion.
//! - [`raw`]: tensors as raw little-endian bytes (the binary tensor extension, gRPC raw contents).
//! - [`admin`]: the admin API's requests and answers, shared by the server and the CLI.
//! - [`lambda`]: AWS Lambda events (API Gateway REST and HTTP APIs, function URLs, direct
//!   invocations) as the HTTP requests they stand for, and the one answer shape they all read.
//!
//! Decoding happens once, here; the server only ever sees [`modelship_inference::InferRequest`].

pub mod admin;
pub mod bounded;
mod error;
#[cfg(feature = "grpc")]
pub mod grpc;
#[cfg(feature = "grpc")]
pub mod grpc_cost;
pub mod json_tensor;
pub mod lambda;
pub mod model_config;
pub mod raw;
pub mod statistics;
#[cfg(feature = "model-repository")]
pub mod triton_config;
pub mod v1;
pub mod v2;

pub use error::DecodeError;

/// The error body of every modelship HTTP API: `{"error": "..."}`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct ErrorBody {
    pub error: String,
}
