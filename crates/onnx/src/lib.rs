//! The ONNX Runtime backend: the only crate that links ONNX Runtime (through `ort`).
//!
//! ONNX Runtime's shared library is loaded at run time (`ort`'s `load-dynamic`), so the binary
//! builds without downloading anything and runs with the library from the `onnxruntime` Python
//! wheel, a system package, or a file shipped beside the binary. [`library`] finds it and says
//! exactly what is missing when it cannot.

mod convert;
pub mod library;
mod session;

use std::path::{Path, PathBuf};

use modelship_inference::{Backend, InferError, LoadOptions, Session};

pub use library::LibraryError;

/// The lowest ONNX Runtime release whose C API this build uses (`ort`'s `api-22` feature).
pub const MIN_ORT_VERSION: &str = "1.22";
/// The release the project is tested with and that its setup scripts install.
pub const TESTED_ORT_VERSION: &str = "1.31.1";

/// ONNX Runtime, loaded and initialised once per process.
pub struct OnnxBackend {
    // Sessions are created in this environment; holding it keeps it alive for the process.
    environment: ort::environment::Environment,
    library: PathBuf,
}

impl OnnxBackend {
    /// Loads ONNX Runtime from `explicit` when given, otherwise from the first place
    /// [`library::locate`] finds it.
    pub fn new(explicit: Option<&Path>) -> Result<Self, LibraryError> {
        let library = library::locate(explicit)?;
        let builder = ort::init_from(&library).map_err(|e| LibraryError::Unusable {
            path: library.clone(),
            reason: e.to_string(),
        })?;
        let environment = builder
            .with_name("modelship")
            .with_telemetry(false)
            .build()
            .map_err(|e| LibraryError::Unusable { path: library.clone(), reason: e.to_string() })?;
        Ok(OnnxBackend { environment, library })
    }

    /// The shared library in use.
    pub fn library(&self) -> &Path {
        &self.library
    }
}

impl Backend for OnnxBackend {
    fn name(&self) -> &'static str {
        "onnxruntime"
    }

    fn load(&self, model: &[u8], options: &LoadOptions) -> Result<Box<dyn Session>, InferError> {
        Ok(Box::new(session::OnnxSession::load(&self.environment, model, options)?))
    }
}
