//! The model configuration extension (`GET /v2/models/{m}/config`, gRPC `ModelConfig`): the
//! fields of Triton's `ModelConfig` that clients read. `perf_analyzer` and tritonclient's
//! helpers refuse a server without it.
//!
//! Triton's convention: when `max_batch_size > 0` the model takes a batch of rows along the first
//! dimension, and `dims` leave that dimension out; with 0, `dims` are the full shape.

use modelship_inference::{DataType, ModelInfo, TensorSpec};
use serde::Serialize;

/// How the server batches a model, as far as the configuration tells clients.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BatchingFacts {
    /// Rows one request (or one formed batch) may carry; 0 when the model has no batch dimension.
    pub max_batch_size: usize,
    /// Present when the server forms batches from concurrent requests.
    pub dynamic: Option<DynamicBatching>,
    /// Inference workers (Triton's instance count).
    pub instances: usize,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DynamicBatching {
    pub preferred_batch_size: Vec<usize>,
    pub max_queue_delay_microseconds: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModelConfig {
    pub name: String,
    pub platform: String,
    pub backend: String,
    pub max_batch_size: usize,
    pub input: Vec<TensorConfig>,
    pub output: Vec<TensorConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dynamic_batching: Option<DynamicBatching>,
    pub instance_group: Vec<InstanceGroup>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TensorConfig {
    pub name: String,
    /// `TYPE_FP32`, `TYPE_INT64`, ..., `TYPE_STRING`.
    pub data_type: &'static str,
    /// The same type, for encoders that want its number (gRPC).
    #[serde(skip)]
    pub datatype: DataType,
    pub dims: Vec<i64>,
    /// Set when the per-row shape is a scalar: Triton then lists `dims: [1]` reshaped to `[]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reshape: Option<Reshape>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reshape {
    pub shape: Vec<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InstanceGroup {
    pub name: String,
    /// `KIND_CPU` or `KIND_GPU`, where the sessions run.
    pub kind: &'static str,
    pub count: usize,
    /// The GPU's ordinal, for `KIND_GPU`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub gpus: Vec<u32>,
}

/// Triton's name for a datatype (`TYPE_FP32`), and its number in `model_config.proto`.
pub fn triton_type(datatype: DataType) -> (&'static str, i32) {
    match datatype {
        DataType::Bool => ("TYPE_BOOL", 1),
        DataType::Uint8 => ("TYPE_UINT8", 2),
        DataType::Uint16 => ("TYPE_UINT16", 3),
        DataType::Uint32 => ("TYPE_UINT32", 4),
        DataType::Uint64 => ("TYPE_UINT64", 5),
        DataType::Int8 => ("TYPE_INT8", 6),
        DataType::Int16 => ("TYPE_INT16", 7),
        DataType::Int32 => ("TYPE_INT32", 8),
        DataType::Int64 => ("TYPE_INT64", 9),
        DataType::Fp16 => ("TYPE_FP16", 10),
        DataType::Fp32 => ("TYPE_FP32", 11),
        DataType::Fp64 => ("TYPE_FP64", 12),
        DataType::Bytes => ("TYPE_STRING", 13),
    }
}

/// Whether every input and output has a dynamic first dimension: the model takes batches.
pub fn batches_rows(info: &ModelInfo) -> bool {
    let s = &info.signature;
    !s.inputs.is_empty() && s.inputs.iter().chain(&s.outputs).all(TensorSpec::has_batch_dim)
}

impl ModelConfig {
    pub fn new(name: &str, info: &ModelInfo, batching: &BatchingFacts) -> Self {
        let batched = batching.max_batch_size > 0;
        let tensor = |spec: &TensorSpec| {
            let dims = if batched { spec.shape[1..].to_vec() } else { spec.shape.clone() };
            let (dims, reshape) = if dims.is_empty() { (vec![1], Some(Reshape { shape: vec![] })) } else { (dims, None) };
            TensorConfig { name: spec.name.clone(), data_type: triton_type(spec.datatype).0, datatype: spec.datatype, dims, reshape }
        };
        ModelConfig {
            name: name.to_owned(),
            platform: info.platform.clone(),
            backend: info.platform.split('_').next().unwrap_or_default().to_owned(),
            max_batch_size: batching.max_batch_size,
            input: info.signature.inputs.iter().map(tensor).collect(),
            output: info.signature.outputs.iter().map(tensor).collect(),
            dynamic_batching: batching.dynamic.clone(),
            instance_group: vec![InstanceGroup {
                name: name.to_owned(),
                kind: info.placement.triton_kind(),
                count: batching.instances,
                gpus: info.placement.gpu().into_iter().collect(),
            }],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use modelship_inference::Signature;

    #[test]
    fn leaves_the_batch_dimension_out_when_batching() {
        let info = ModelInfo {
            signature: Signature {
                inputs: vec![TensorSpec::new("input", DataType::Fp32, vec![-1, 30])],
                outputs: vec![
                    TensorSpec::new("label", DataType::Int64, vec![-1]),
                    TensorSpec::new("probabilities", DataType::Fp32, vec![-1, 2]),
                ],
            },
            platform: "onnxruntime_onnx".to_owned(),
            ..Default::default()
        };
        assert!(batches_rows(&info));
        let facts = BatchingFacts {
            max_batch_size: 64,
            dynamic: Some(DynamicBatching { preferred_batch_size: vec![16], max_queue_delay_microseconds: 500 }),
            instances: 2,
        };
        let json = serde_json::to_string(&ModelConfig::new("fraud", &info, &facts)).unwrap();
        assert_eq!(
            json,
            r#"{"name":"fraud","platform":"onnxruntime_onnx","backend":"onnxruntime","max_batch_size":64,"input":[{"name":"input","data_type":"TYPE_FP32","dims":[30]}],"output":[{"name":"label","data_type":"TYPE_INT64","dims":[1],"reshape":{"shape":[]}},{"name":"probabilities","data_type":"TYPE_FP32","dims":[2]}],"dynamic_batching":{"preferred_batch_size":[16],"max_queue_delay_microseconds":500},"instance_group":[{"name":"fraud","kind":"KIND_CPU","count":2}]}"#
        );
        let unbatched = ModelConfig::new("fraud", &info, &BatchingFacts { instances: 1, ..Default::default() });
        assert_eq!(unbatched.input[0].dims, vec![-1, 30]);
    }
}
