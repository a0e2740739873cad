use crate::{InferError, ModelInfo, PreparedRequest, Tensor};

/// Knobs a backend applies when it creates a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadOptions {
    /// Threads one inference may use. 1 is right for small models under concurrent load:
    /// parallelism then comes from running several requests at once.
    pub intra_op_threads: usize,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions { intra_op_threads: 1 }
    }
}

/// The port to a model runtime: turns model bytes into sessions. One backend value is shared by
/// the whole process; it creates one [`Session`] per inference worker.
pub trait Backend: Send + Sync + 'static {
    /// A short name for logs and metrics, e.g. `onnxruntime`.
    fn name(&self) -> &'static str;

    /// Creates a session from a serialized model. Errors are [`InferError::Load`] with a message
    /// a user can act on (not ONNX, truncated, unsupported operator...).
    fn load(&self, model: &[u8], options: &LoadOptions) -> Result<Box<dyn Session>, InferError>;
}

/// A loaded model, used by one thread at a time. `run` is blocking and CPU-bound: it is called
/// off the async reactor, except for a model the server measured as running in microseconds
/// (see the server's worker pool), where a thread hand-off would cost more than the run.
pub trait Session: Send {
    fn info(&self) -> &ModelInfo;

    /// Runs a request validated against `info().signature` and returns the outputs selected by
    /// `request.outputs`, in that order.
    fn run(&mut self, request: &PreparedRequest) -> Result<Vec<Tensor>, InferError>;
}
