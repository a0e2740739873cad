//! Open Inference Protocol V2 over gRPC, as Triton numbers it (package `inference`): the
//! generated messages and their conversion to and from the inference vocabulary. The server
//! crate generates the service over these same types; nothing here does IO.

use modelship_inference::{DataType, InferRequest, Tensor, TensorData};
use serde_json::{Map, Value};

use crate::model_config::{self, ModelConfig};
use crate::statistics::{ModelStatistics, StatisticDuration};
use crate::{DecodeError, raw};

/// The messages generated from `proto/inference.proto`.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/inference.rs"));
}

use pb::infer_parameter::ParameterChoice;

/// A `ModelInferRequest`, decoded: the inference request, the request-level parameters as JSON
/// values (for sticky routing keys, as V2 REST gives them), and the entities to enrich.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DecodedRequest {
    pub request: InferRequest,
    pub parameters: Map<String, Value>,
    pub entities: Option<Vec<Map<String, Value>>>,
}

fn invalid(message: String) -> DecodeError {
    DecodeError(message)
}

/// A `ModelInferRequest` as an inference request: inputs from `raw_input_contents` (one entry
/// per input, in order) or from typed `contents`. With the `entities` parameter, inputs may be
/// empty (the feature store builds them).
pub fn decode(r: pb::ModelInferRequest) -> Result<DecodedRequest, DecodeError> {
    let mut parameters = parameters_json(&r.parameters);
    let entities = match parameters.remove("entities") {
        None => None,
        Some(Value::String(text)) => Some(
            crate::bounded::parse::<Vec<Map<String, Value>>>("entities", &text, crate::bounded::MAX_PARAMETERS_BYTES)
                .map_err(|e| invalid(format!("parameter {e}")))?,
        ),
        Some(_) => return Err(invalid("parameter 'entities' must be a string holding a JSON array of objects".to_owned())),
    };
    if r.inputs.is_empty() && entities.is_none() {
        return Err(invalid("'inputs' is empty; give at least one input tensor".to_owned()));
    }
    if !r.raw_input_contents.is_empty() && r.raw_input_contents.len() != r.inputs.len() {
        return Err(invalid(format!(
            "raw_input_contents has {} entries for {} inputs; give one per input, in the order of 'inputs'",
            r.raw_input_contents.len(),
            r.inputs.len()
        )));
    }
    let mut inputs = Vec::with_capacity(r.inputs.len());
    for (i, input) in r.inputs.into_iter().enumerate() {
        let name = input.name;
        let (datatype, shape) = crate::v2::input_type(&name, &input.datatype, &input.shape)?;
        let tensor = match r.raw_input_contents.get(i) {
            Some(bytes) => raw::tensor(&name, datatype, shape, bytes)?,
            None => {
                let contents = input.contents.unwrap_or_default();
                let data = typed_contents(&name, datatype, contents)?;
                Tensor::new(name, shape, data).map_err(|e| invalid(e.to_string()))?
            }
        };
        inputs.push(tensor);
    }
    let mut outputs = Vec::with_capacity(r.outputs.len());
    for o in r.outputs {
        crate::bounded::check_name(&o.name).map_err(invalid)?;
        if o.parameters.contains_key("classification") {
            return Err(invalid(format!("output '{}': the classification extension is not supported; request the output itself", o.name)));
        }
        outputs.push(o.name);
    }
    let request = InferRequest { id: (!r.id.is_empty()).then_some(r.id), inputs, outputs: (!outputs.is_empty()).then_some(outputs) };
    Ok(DecodedRequest { request, parameters, entities })
}

/// gRPC parameters as the JSON values V2 REST would carry.
fn parameters_json(parameters: &std::collections::HashMap<String, pb::InferParameter>) -> Map<String, Value> {
    parameters
        .iter()
        .filter_map(|(k, p)| {
            let v = match p.parameter_choice.as_ref()? {
                ParameterChoice::BoolParam(b) => Value::Bool(*b),
                ParameterChoice::Int64Param(n) => Value::from(*n),
                ParameterChoice::Uint64Param(n) => Value::from(*n),
                ParameterChoice::DoubleParam(x) => serde_json::Number::from_f64(*x).map_or(Value::Null, Value::Number),
                ParameterChoice::StringParam(s) => Value::String(s.clone()),
            };
            Some((k.clone(), v))
        })
        .collect()
}

/// Typed `contents` into tensor data, with a range check where the wire type is wider.
fn typed_contents(name: &str, datatype: DataType, c: pb::InferTensorContents) -> Result<TensorData, DecodeError> {
    fn narrow<W: Copy + std::fmt::Display, T: TryFrom<W>>(name: &str, datatype: DataType, v: Vec<W>) -> Result<Vec<T>, DecodeError> {
        v.into_iter()
            .enumerate()
            .map(|(i, x)| T::try_from(x).map_err(|_| invalid(format!("input '{name}': element {i} ({x}) is out of range for {datatype}"))))
            .collect()
    }
    Ok(match datatype {
        DataType::Bool => TensorData::Bool(c.bool_contents),
        DataType::Uint8 => TensorData::Uint8(narrow(name, datatype, c.uint_contents)?),
        DataType::Uint16 => TensorData::Uint16(narrow(name, datatype, c.uint_contents)?),
        DataType::Uint32 => TensorData::Uint32(c.uint_contents),
        DataType::Uint64 => TensorData::Uint64(c.uint64_contents),
        DataType::Int8 => TensorData::Int8(narrow(name, datatype, c.int_contents)?),
        DataType::Int16 => TensorData::Int16(narrow(name, datatype, c.int_contents)?),
        DataType::Int32 => TensorData::Int32(c.int_contents),
        DataType::Int64 => TensorData::Int64(c.int64_contents),
        DataType::Fp16 => {
            return Err(invalid(format!("input '{name}': FP16 has no typed contents in the protocol; send it in raw_input_contents")));
        }
        DataType::Fp32 => TensorData::Fp32(c.fp32_contents),
        DataType::Fp64 => TensorData::Fp64(c.fp64_contents),
        DataType::Bytes => TensorData::Bytes(c.bytes_contents),
    })
}

/// Outputs as `raw_output_contents` (what Triton answers and its clients read), with the
/// response parameters (`feature_defaults` as a JSON string, gRPC parameters being scalars).
pub fn encode(model_name: &str, model_version: &str, id: String, outputs: &[Tensor], feature_defaults: Option<&Value>) -> pb::ModelInferResponse {
    let mut parameters = std::collections::HashMap::new();
    if let Some(d) = feature_defaults {
        parameters.insert("feature_defaults".to_owned(), pb::InferParameter { parameter_choice: Some(ParameterChoice::StringParam(d.to_string())) });
    }
    pb::ModelInferResponse {
        model_name: model_name.to_owned(),
        model_version: model_version.to_owned(),
        id,
        parameters,
        outputs: outputs
            .iter()
            .map(|t| pb::model_infer_response::InferOutputTensor {
                name: t.name().to_owned(),
                datatype: t.datatype().as_str().to_owned(),
                shape: t.shape().iter().map(|&d| d as i64).collect(),
                parameters: Default::default(),
                contents: None,
            })
            .collect(),
        raw_output_contents: outputs.iter().map(|t| raw::encode(t.data()).into_owned()).collect(),
    }
}

/// Model metadata as its message.
pub fn metadata_message(m: crate::v2::ModelMetadata) -> pb::ModelMetadataResponse {
    let tensor = |t: crate::v2::TensorMetadata| pb::model_metadata_response::TensorMetadata { name: t.name, datatype: t.datatype, shape: t.shape };
    pb::ModelMetadataResponse {
        name: m.name,
        versions: m.versions,
        platform: m.platform,
        inputs: m.inputs.into_iter().map(tensor).collect(),
        outputs: m.outputs.into_iter().map(tensor).collect(),
    }
}

/// The model configuration extension's answer as its message.
pub fn config_message(c: ModelConfig) -> pb::ModelConfig {
    let data_type = |t: &model_config::TensorConfig| model_config::triton_type(t.datatype).1;
    let reshape = |r: Option<model_config::Reshape>| r.map(|r| pb::ModelTensorReshape { shape: r.shape });
    pb::ModelConfig {
        name: c.name,
        platform: c.platform,
        backend: c.backend,
        max_batch_size: c.max_batch_size as i32,
        input: c
            .input
            .into_iter()
            .map(|t| pb::ModelInput { data_type: data_type(&t), name: t.name, dims: t.dims, reshape: reshape(t.reshape) })
            .collect(),
        output: c
            .output
            .into_iter()
            .map(|t| pb::ModelOutput { data_type: data_type(&t), name: t.name, dims: t.dims, reshape: reshape(t.reshape) })
            .collect(),
        instance_group: c
            .instance_group
            .into_iter()
            .map(|g| pb::ModelInstanceGroup {
                name: g.name,
                count: g.count as i32,
                kind: if g.kind == "KIND_GPU" { pb::model_instance_group::Kind::Gpu } else { pb::model_instance_group::Kind::Cpu } as i32,
                gpus: g.gpus.iter().map(|&id| id as i32).collect(),
            })
            .collect(),
        scheduling_choice: c.dynamic_batching.map(|d| {
            pb::model_config::SchedulingChoice::DynamicBatching(pb::ModelDynamicBatching {
                preferred_batch_size: d.preferred_batch_size.iter().map(|&n| n as i32).collect(),
                max_queue_delay_microseconds: d.max_queue_delay_microseconds,
            })
        }),
    }
}

/// The statistics extension's answer for one version as its message.
pub fn statistics_message(m: ModelStatistics) -> pb::ModelStatistics {
    let d = |d: StatisticDuration| Some(pb::StatisticDuration { count: d.count, ns: d.ns });
    let i = m.inference_stats;
    pb::ModelStatistics {
        name: m.name,
        version: m.version,
        last_inference: m.last_inference,
        inference_count: m.inference_count,
        execution_count: m.execution_count,
        inference_stats: Some(pb::InferStatistics {
            success: d(i.success),
            fail: d(i.fail),
            queue: d(i.queue),
            compute_input: d(i.compute_input),
            compute_infer: d(i.compute_infer),
            compute_output: d(i.compute_output),
            cache_hit: d(i.cache_hit),
            cache_miss: d(i.cache_miss),
        }),
        batch_stats: m
            .batch_stats
            .into_iter()
            .map(|b| pb::InferBatchStatistics {
                batch_size: b.batch_size,
                compute_input: d(b.compute_input),
                compute_infer: d(b.compute_infer),
                compute_output: d(b.compute_output),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn param(s: &str) -> pb::InferParameter {
        pb::InferParameter { parameter_choice: Some(ParameterChoice::StringParam(s.to_owned())) }
    }

    fn input(name: &str, datatype: &str, shape: Vec<i64>) -> pb::model_infer_request::InferInputTensor {
        pb::model_infer_request::InferInputTensor { name: name.to_owned(), datatype: datatype.to_owned(), shape, ..Default::default() }
    }

    #[test]
    fn decodes_raw_and_typed_inputs_with_parameters() {
        let mut typed = input("b", "INT32", vec![2]);
        typed.contents = Some(pb::InferTensorContents { int_contents: vec![1, -2], ..Default::default() });
        let r = pb::ModelInferRequest {
            id: "r1".to_owned(),
            inputs: vec![typed],
            parameters: [("user".to_owned(), param("u-7"))].into(),
            ..Default::default()
        };
        let d = decode(r).unwrap();
        assert_eq!(d.request.id.as_deref(), Some("r1"));
        assert_eq!(d.request.inputs[0].data(), &TensorData::Int32(vec![1, -2]));
        assert_eq!(d.parameters.get("user"), Some(&Value::String("u-7".to_owned())));

        let raw = pb::ModelInferRequest {
            inputs: vec![input("a", "FP32", vec![1])],
            raw_input_contents: vec![1.5f32.to_le_bytes().to_vec().into()],
            ..Default::default()
        };
        assert_eq!(decode(raw).unwrap().request.inputs[0].data(), &TensorData::Fp32(vec![1.5]));
    }

    #[test]
    fn names_each_problem() {
        let err = |r: pb::ModelInferRequest| decode(r).unwrap_err().to_string();
        assert_eq!(err(pb::ModelInferRequest::default()), "'inputs' is empty; give at least one input tensor");
        let mut narrow = input("x", "INT8", vec![1]);
        narrow.contents = Some(pb::InferTensorContents { int_contents: vec![300], ..Default::default() });
        assert_eq!(err(pb::ModelInferRequest { inputs: vec![narrow], ..Default::default() }), "input 'x': element 0 (300) is out of range for INT8");
        let two = pb::ModelInferRequest {
            inputs: vec![input("a", "FP32", vec![1]), input("b", "FP32", vec![1])],
            raw_input_contents: vec![vec![0; 4].into()],
            ..Default::default()
        };
        assert_eq!(err(two), "raw_input_contents has 1 entries for 2 inputs; give one per input, in the order of 'inputs'");
        let bad_entities = pb::ModelInferRequest { parameters: [("entities".to_owned(), param("{"))].into(), ..Default::default() };
        assert!(err(bad_entities).starts_with("parameter 'entities' must be a JSON array of objects"));
        let entities_only = pb::ModelInferRequest { parameters: [("entities".to_owned(), param(r#"[{"id":"c1"}]"#))].into(), ..Default::default() };
        assert_eq!(decode(entities_only).unwrap().entities.unwrap().len(), 1);
    }
}
