//! One ONNX Runtime session, owned by one inference worker.

use modelship_inference::{Device, Gpu, InferError, LoadOptions, ModelInfo, Placement, PreparedRequest, Session, Signature, Tensor, TensorSpec};
use ort::ep::{self, ArbitrarilyConfigurableExecutionProvider, ExecutionProvider};
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use ort::session::{HasSelectedOutputs, OutputSelector, RunOptions, SessionInputValue};
use ort::value::{Outlet, ValueType};

use crate::convert;

pub struct OnnxSession {
    session: ort::session::Session,
    info: ModelInfo,
    /// True when the model has outputs that are not in the signature (e.g. a ZipMap): runs then
    /// name the outputs they want so the runtime skips the rest.
    has_skipped_outputs: bool,
}

fn load_error(e: impl std::fmt::Display) -> InferError {
    InferError::Load(e.to_string())
}

impl OnnxSession {
    pub fn load(environment: &ort::environment::Environment, model: &[u8], options: &LoadOptions) -> Result<Self, InferError> {
        // A GPU that cannot be used may leave a CPU session behind (built to tell its failure from
        // the model's): the fall-backs take it rather than load the model once more.
        let on_cpu = |built: Option<ort::session::Session>| -> Result<_, InferError> {
            Ok((match built {
                Some(session) => session,
                None => commit(cpu(environment, options)?, model)?,
            }, Placement::Cpu))
        };
        let (session, placement) = match &options.device {
            Device::Cpu => on_cpu(None)?,
            Device::Cuda(gpu) => match on_gpu(environment, model, options, gpu) {
                Ok(loaded) => loaded,
                Err(GpuError::Unusable { why, cpu }) if gpu.fallback_to_cpu => {
                    tracing::warn!(device = %format!("cuda:{}", gpu.id), reason = %why, "the GPU cannot be used; running on the CPU as model.gpu.fallback_to_cpu asks");
                    on_cpu(cpu)?
                }
                Err(GpuError::Unusable { why, .. }) => {
                    return Err(InferError::Load(format!(
                        "device cuda:{} cannot be used: {why}. Run on the CPU with --device cpu, let modelship choose with --device auto, or set model.gpu.fallback_to_cpu",
                        gpu.id
                    )));
                }
                Err(GpuError::Model(e)) => return Err(e),
            },
            Device::Auto(gpu) => match on_gpu(environment, model, options, gpu) {
                Ok(loaded) => loaded,
                Err(GpuError::Unusable { why, cpu }) => {
                    tracing::info!(reason = %why, "device auto: no usable GPU, running on the CPU");
                    on_cpu(cpu)?
                }
                Err(GpuError::Model(e)) => return Err(e),
            },
        };

        let mut inputs = Vec::new();
        for outlet in session.inputs() {
            match spec(outlet) {
                Some(s) => inputs.push(s),
                None => {
                    return Err(InferError::Load(format!(
                        "input '{}' has type {:?}, which modelship cannot serve (tensors of BOOL, integers, FP16/32/64 or strings only)",
                        outlet.name(),
                        outlet.dtype()
                    )));
                }
            }
        }
        let mut outputs = Vec::new();
        let mut skipped_outputs = Vec::new();
        for outlet in session.outputs() {
            match spec(outlet) {
                Some(s) => outputs.push(s),
                None => skipped_outputs.push(outlet.name().to_owned()),
            }
        }
        if outputs.is_empty() {
            return Err(InferError::Load(format!(
                "none of the model's outputs ({}) is a tensor modelship can return; a classifier exported with skl2onnx needs options={{'zipmap': False}}",
                skipped_outputs.join(", ")
            )));
        }
        let producer = session.metadata().ok().and_then(|m| m.producer()).filter(|p| !p.is_empty());
        let info = ModelInfo {
            signature: Signature { inputs, outputs },
            platform: "onnxruntime_onnx".to_owned(),
            producer,
            opset: None,
            skipped_outputs,
            placement,
        };
        let has_skipped_outputs = !info.skipped_outputs.is_empty();
        Ok(OnnxSession { session, info, has_skipped_outputs })
    }
}

/// A session builder with the CPU settings every session shares.
fn cpu(environment: &ort::environment::Environment, options: &LoadOptions) -> Result<SessionBuilder, InferError> {
    let threads = options.intra_op_threads.max(1);
    ort::session::Session::builder(environment)
        .map_err(load_error)?
        .with_optimization_level(GraphOptimizationLevel::Level3)
        .map_err(load_error)?
        .with_intra_threads(threads)
        .map_err(load_error)?
        .with_inter_threads(1)
        .map_err(load_error)?
        // With one intra-op thread there is no pool to keep spinning between runs.
        .with_intra_op_spinning(threads > 1)
        .map_err(load_error)
}

fn commit(mut builder: SessionBuilder, model: &[u8]) -> Result<ort::session::Session, InferError> {
    builder.commit_from_memory(model).map_err(|e| InferError::Load(format!("not a valid ONNX model, or one ONNX Runtime cannot run: {e}")))
}

/// Why a GPU session was not made: the GPU (or the library's GPU support) is not usable, or the
/// model itself is the problem (which the CPU would refuse too).
enum GpuError {
    /// `cpu`: the CPU session built to tell the two apart, when one was.
    Unusable { why: String, cpu: Option<ort::session::Session> },
    Model(InferError),
}

impl GpuError {
    fn unusable(why: String) -> GpuError {
        GpuError::Unusable { why, cpu: None }
    }
}

/// The providers this library was built with (`CUDAExecutionProvider`, `TensorrtExecutionProvider`...).
fn has_provider<E: ExecutionProvider>() -> bool {
    E::is_available().unwrap_or(false)
}

/// A session on the GPU: TensorRT first when asked and present, then CUDA; ONNX Runtime puts on
/// the CPU only the nodes neither provider has a kernel for.
fn on_gpu(environment: &ort::environment::Environment, model: &[u8], options: &LoadOptions, gpu: &Gpu) -> Result<(ort::session::Session, Placement), GpuError> {
    if !has_provider::<ep::CUDA>() {
        return Err(GpuError::unusable(
            "this ONNX Runtime library has no CUDA execution provider (it is the CPU build: install the `onnxruntime-gpu` wheel, or point --ort-lib at its libonnxruntime.so)".to_owned(),
        ));
    }
    let id = i32::try_from(gpu.id).map_err(|_| GpuError::unusable(format!("GPU ordinal {} is out of range", gpu.id)))?;
    let mut cuda = ep::CUDA::default()
        .with_device_id(id)
        .with_arena_extend_strategy(if gpu.arena_same_as_requested { ep::ArenaExtendStrategy::SameAsRequested } else { ep::ArenaExtendStrategy::NextPowerOfTwo })
        .with_cuda_graph(gpu.cuda_graph)
        .with_arbitrary_config("do_copy_in_default_stream", if gpu.separate_copy_stream { "0" } else { "1" });
    if let Some(limit) = gpu.memory_limit {
        cuda = cuda.with_memory_limit(usize::try_from(limit).unwrap_or(usize::MAX));
    }
    let tensorrt = gpu.tensorrt && has_provider::<ep::TensorRT>();
    if gpu.tensorrt && !tensorrt {
        tracing::warn!("model.gpu.tensorrt is set but this ONNX Runtime library has no TensorRT provider; using CUDA alone");
    }
    if tensorrt {
        match commit_on(environment, model, options, vec![tensorrt_provider(model, gpu, id).build().error_on_failure(), cuda.clone().build().error_on_failure()]) {
            Ok(session) => return Ok((session, Placement::TensorRt(gpu.id))),
            Err(GpuError::Model(e)) => return Err(GpuError::Model(e)),
            // TensorRT's own libraries (libnvinfer) are often absent (the CUDA images have none):
            // CUDA alone then, said so.
            Err(GpuError::Unusable { why, .. }) => tracing::warn!(reason = %why, "TensorRT cannot be used; running on CUDA alone"),
        }
    }
    commit_on(environment, model, options, vec![cuda.build().error_on_failure()]).map(|session| (session, Placement::Cuda(gpu.id)))
}

/// TensorRT's provider. Engines take minutes to build, so they are cached: in `gpu.engine_cache`
/// (the server's state directory: a pod's /tmp is small), else the temporary directory, each
/// model's under a prefix of its own bytes' digest, so that a retrained version with the same
/// graph never picks up the engine of the weights before it.
fn tensorrt_provider(model: &[u8], gpu: &Gpu, id: i32) -> ep::TensorRT {
    use sha2::Digest as _;
    let cache = gpu.engine_cache.clone().unwrap_or_else(|| std::env::temp_dir().join("modelship-tensorrt"));
    let cache = cache.to_string_lossy();
    let digest = hex::encode(&sha2::Sha256::digest(model)[..8]);
    let mut trt = ep::TensorRT::default()
        .with_device_id(id)
        .with_engine_cache(true)
        .with_engine_cache_path(&cache)
        .with_engine_cache_prefix(format!("model-{digest}"))
        .with_timing_cache(true)
        .with_timing_cache_path(&cache);
    if let Some(limit) = gpu.memory_limit {
        trt = trt.with_max_workspace_size(usize::try_from(limit).unwrap_or(usize::MAX));
    }
    trt
}

/// A session with `providers` registered (each must register), or why not: a CPU session is
/// tried on failure, to tell a model ONNX Runtime cannot run from a GPU it cannot use.
fn commit_on(environment: &ort::environment::Environment, model: &[u8], options: &LoadOptions, providers: Vec<ep::ExecutionProviderDispatch>) -> Result<ort::session::Session, GpuError> {
    let names: Vec<&str> = providers.iter().map(|p| p.name()).collect();
    let names = names.join(" and ");
    let mut builder = cpu(environment, options)
        .map_err(GpuError::Model)?
        .with_execution_providers(providers)
        .map_err(|e| GpuError::unusable(format!("registering {names} failed: {e}")))?;
    match builder.commit_from_memory(model) {
        Ok(session) => Ok(session),
        Err(e) => {
            let message = e.to_string();
            match commit(cpu(environment, options).map_err(GpuError::Model)?, model) {
                Ok(cpu) => Err(GpuError::Unusable { why: format!("ONNX Runtime could not start the model on {names}: {message}"), cpu: Some(cpu) }),
                Err(model_error) => Err(GpuError::Model(model_error)),
            }
        }
    }
}

fn spec(outlet: &Outlet) -> Option<TensorSpec> {
    match outlet.dtype() {
        ValueType::Tensor { ty, shape, .. } => {
            Some(TensorSpec::new(outlet.name(), convert::datatype(*ty)?, shape.to_vec()))
        }
        _ => None,
    }
}

impl Session for OnnxSession {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn run(&mut self, request: &PreparedRequest) -> Result<Vec<Tensor>, InferError> {
        let values = request
            .inputs
            .iter()
            .map(convert::input_value)
            .collect::<Result<Vec<SessionInputValue<'_>>, _>>()?;
        let signature = &self.info.signature;
        let wanted = |i: usize| &signature.outputs[i];
        let selected: RunOptions<HasSelectedOutputs>;
        let outputs = if self.has_skipped_outputs || request.outputs.len() < signature.outputs.len() {
            let selector = request
                .outputs
                .iter()
                .fold(OutputSelector::no_default(), |s, &i| s.with(wanted(i).name.clone()));
            selected = RunOptions::new().map_err(|e| InferError::Runtime(e.to_string()))?.with_outputs(selector);
            self.session.run_with_options(values.as_slice(), &selected)
        } else {
            self.session.run(values.as_slice())
        }
        .map_err(|e| InferError::Runtime(e.to_string()))?;
        request
            .outputs
            .iter()
            .map(|&i| {
                let spec = wanted(i);
                let value = outputs
                    .get(spec.name.as_str())
                    .ok_or_else(|| InferError::Runtime(format!("the runtime returned no output '{}'", spec.name)))?;
                convert::output_tensor(&spec.name, spec.datatype, value)
            })
            .collect()
    }
}
