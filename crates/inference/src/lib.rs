//! The inference vocabulary every other modelship crate speaks.
//!
//! Nothing here knows about HTTP, JSON, gRPC or ONNX Runtime: wire formats are decoded into these
//! types by `modelship-protocol`, and runtimes implement [`Backend`] in their own crates. A request
//! is validated once against the model's [`Signature`] (see [`Signature::prepare`]) and everything
//! after that point may rely on its invariants.

mod backend;
mod datatype;
mod error;
mod request;
mod signature;
mod tensor;

pub use backend::{Backend, Device, Gpu, LoadOptions, Placement, Session};
pub use datatype::DataType;
pub use error::InferError;
pub use request::{InferRequest, InferResponse, PreparedRequest};
pub use signature::{ModelInfo, Signature, TensorSpec};
pub use tensor::{Tensor, TensorData, concat_rows, element_count};
