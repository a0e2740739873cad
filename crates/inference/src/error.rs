use crate::DataType;

/// Why a request could not be answered by a model. Each variant is something the caller can act
/// on; the server maps them to HTTP and gRPC statuses in one table.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InferError {
    #[error("input '{input}': {reason}")]
    InvalidInput { input: String, reason: String },
    #[error("unknown input '{input}'; the model's inputs are: {}", .expected.join(", "))]
    UnknownInput { input: String, expected: Vec<String> },
    #[error("missing input '{input}' ({datatype} {shape:?}); every model input must be given")]
    MissingInput { input: String, datatype: DataType, shape: Vec<i64> },
    #[error("input '{input}' is given more than once")]
    DuplicateInput { input: String },
    #[error("input '{input}' has datatype {got} but the model expects {expected}")]
    DatatypeMismatch { input: String, expected: DataType, got: DataType },
    #[error("input '{input}' has shape {got:?} but the model expects {expected:?} (-1 = any size)")]
    ShapeMismatch { input: String, expected: Vec<i64>, got: Vec<usize> },
    #[error("unknown output '{output}'; the model's outputs are: {}", .available.join(", "))]
    UnknownOutput { output: String, available: Vec<String> },
    #[error("output '{output}' is requested more than once")]
    DuplicateOutput { output: String },
    /// The model file could not be loaded (missing, truncated, not ONNX, unsupported operators).
    #[error("cannot load model: {0}")]
    Load(String),
    /// The runtime failed while running a valid request.
    #[error("inference failed: {0}")]
    Runtime(String),
}

impl InferError {
    /// True when the request itself was wrong (a 4xx), false for server-side failures.
    pub fn is_client_error(&self) -> bool {
        !matches!(self, InferError::Load(_) | InferError::Runtime(_))
    }
}
