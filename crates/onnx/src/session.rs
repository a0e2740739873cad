//! One ONNX Runtime session, owned by one inference worker.

use modelship_inference::{InferError, LoadOptions, ModelInfo, PreparedRequest, Session, Signature, Tensor, TensorSpec};
use ort::session::builder::GraphOptimizationLevel;
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
        let threads = options.intra_op_threads.max(1);
        let session = ort::session::Session::builder(environment)
            .map_err(load_error)?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(load_error)?
            .with_intra_threads(threads)
            .map_err(load_error)?
            .with_inter_threads(1)
            .map_err(load_error)?
            // With one intra-op thread there is no pool to keep spinning between runs.
            .with_intra_op_spinning(threads > 1)
            .map_err(load_error)?
            .commit_from_memory(model)
            .map_err(|e| InferError::Load(format!("not a valid ONNX model, or one ONNX Runtime cannot run: {e}")))?;

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
        };
        let has_skipped_outputs = !info.skipped_outputs.is_empty();
        Ok(OnnxSession { session, info, has_skipped_outputs })
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
