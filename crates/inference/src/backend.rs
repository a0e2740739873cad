use crate::{InferError, ModelInfo, PreparedRequest, Tensor};

/// Knobs a backend applies when it creates a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadOptions {
    /// Threads one inference may use. 1 is right for small models under concurrent load:
    /// parallelism then comes from running several requests at once.
    pub intra_op_threads: usize,
    /// Where the session runs.
    pub device: Device,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions { intra_op_threads: 1, device: Device::Cpu }
    }
}

/// Where a model's sessions run (`--device`, `model.device`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Device {
    #[default]
    Cpu,
    /// The GPU when one works, else the CPU (and the log says why).
    Auto(Gpu),
    /// The GPU: a session that cannot use it fails to load, unless `fallback_to_cpu`.
    Cuda(Gpu),
}

/// One GPU and how a session uses it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Gpu {
    /// The CUDA device ordinal (`cuda:N`).
    pub id: u32,
    /// The ceiling of the session's device memory arena, in bytes (none: the whole card).
    pub memory_limit: Option<u64>,
    /// Grow the arena by what is asked rather than by powers of two (less memory, more
    /// allocations).
    pub arena_same_as_requested: bool,
    /// TensorRT first, CUDA for what it leaves (only where the library has TensorRT).
    pub tensorrt: bool,
    /// Where TensorRT keeps the engines it builds (the server's state directory); none: the
    /// temporary directory.
    pub engine_cache: Option<std::path::PathBuf>,
    /// Capture the graph once and replay it (fixed input shapes only).
    pub cuda_graph: bool,
    /// Copy inputs and outputs on a stream of their own instead of the compute stream.
    pub separate_copy_stream: bool,
    /// An explicit `cuda` device that cannot be used falls back to the CPU (logged) instead of
    /// failing the load.
    pub fallback_to_cpu: bool,
}

impl Device {
    /// `cpu`, `auto`, `auto:N`, `cuda` or `cuda:N`, with `gpu`'s settings for the GPU kinds.
    pub fn parse(text: &str, gpu: Gpu) -> Result<Device, String> {
        let with_id = |id: u32| Gpu { id, ..gpu.clone() };
        match text {
            "cpu" => Ok(Device::Cpu),
            "auto" => Ok(Device::Auto(gpu.clone())),
            _ if text.starts_with("auto:") => match text["auto:".len()..].parse::<u32>() {
                Ok(id) => Ok(Device::Auto(with_id(id))),
                Err(_) => Err(format!("device '{text}' is not one of cpu, auto, auto:N, cuda, cuda:N (N the GPU's ordinal, e.g. cuda:0)")),
            },
            "cuda" | "gpu" => Ok(Device::Cuda(gpu.clone())),
            _ => match text.strip_prefix("cuda:").map(str::parse::<u32>) {
                Some(Ok(id)) => Ok(Device::Cuda(with_id(id))),
                _ => Err(format!("device '{text}' is not one of cpu, auto, auto:N, cuda, cuda:N (N the GPU's ordinal, e.g. cuda:0)")),
            },
        }
    }

    /// The GPU settings, for the GPU kinds.
    pub fn gpu(&self) -> Option<&Gpu> {
        match self {
            Device::Cpu => None,
            Device::Auto(g) | Device::Cuda(g) => Some(g),
        }
    }
}

/// Where a loaded session actually runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Placement {
    #[default]
    Cpu,
    Cuda(u32),
    /// TensorRT, with CUDA for the nodes TensorRT does not take.
    TensorRt(u32),
}

impl Placement {
    /// Triton's `instance_group` kind.
    pub fn triton_kind(self) -> &'static str {
        match self {
            Placement::Cpu => "KIND_CPU",
            Placement::Cuda(_) | Placement::TensorRt(_) => "KIND_GPU",
        }
    }

    pub fn gpu(self) -> Option<u32> {
        match self {
            Placement::Cpu => None,
            Placement::Cuda(id) | Placement::TensorRt(id) => Some(id),
        }
    }
}

impl std::fmt::Display for Placement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Placement::Cpu => f.write_str("cpu"),
            Placement::Cuda(id) => write!(f, "cuda:{id}"),
            Placement::TensorRt(id) => write!(f, "tensorrt:{id}"),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse_as_the_flag_documents() {
        let gpu = Gpu { memory_limit: Some(1 << 30), ..Gpu::default() };
        let cases: [(&str, Result<Device, &str>); 8] = [
            ("auto:1", Ok(Device::Auto(Gpu { id: 1, ..gpu.clone() }))),
            ("cpu", Ok(Device::Cpu)),
            ("auto", Ok(Device::Auto(gpu.clone()))),
            ("cuda", Ok(Device::Cuda(gpu.clone()))),
            ("cuda:2", Ok(Device::Cuda(Gpu { id: 2, ..gpu.clone() }))),
            ("cuda:-1", Err("device 'cuda:-1' is not one of cpu, auto, auto:N, cuda, cuda:N")),
            ("tpu", Err("device 'tpu' is not one of")),
            ("CUDA", Err("device 'CUDA' is not one of")),
        ];
        for (text, want) in cases {
            match (Device::parse(text, gpu.clone()), want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{text}"),
                (Err(got), Err(want)) => assert!(got.starts_with(want), "{text}: {got}"),
                (got, want) => panic!("{text}: {got:?}, wanted {want:?}"),
            }
        }
    }

    #[test]
    fn placements_read_as_triton_and_people_name_them() {
        assert_eq!((Placement::Cpu.to_string(), Placement::Cpu.triton_kind()), ("cpu".to_owned(), "KIND_CPU"));
        assert_eq!((Placement::Cuda(1).to_string(), Placement::Cuda(1).triton_kind()), ("cuda:1".to_owned(), "KIND_GPU"));
        assert_eq!(Placement::TensorRt(0).to_string(), "tensorrt:0");
    }
}
