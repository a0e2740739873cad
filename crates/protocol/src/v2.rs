//! Open Inference Protocol V2, REST JSON. Field names follow the specification exactly.

use modelship_inference::{DataType, InferRequest, ModelInfo, Tensor, TensorSpec};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::json_tensor::{self, DataJson};
use crate::DecodeError;

/// `POST /v2/models/{m}/infer` body.
#[derive(Debug, Deserialize)]
pub struct InferRequestJson {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub parameters: Option<Map<String, Value>>,
    pub inputs: Vec<InputJson>,
    #[serde(default)]
    pub outputs: Option<Vec<RequestedOutputJson>>,
}

#[derive(Debug, Deserialize)]
pub struct InputJson {
    pub name: String,
    pub shape: Vec<i64>,
    pub datatype: String,
    #[serde(default)]
    pub parameters: Option<Map<String, Value>>,
    pub data: Box<RawValue>,
}

#[derive(Debug, Deserialize)]
pub struct RequestedOutputJson {
    pub name: String,
    #[serde(default)]
    pub parameters: Option<Map<String, Value>>,
}

/// Decodes an infer request body into typed tensors. Every problem message names the input.
pub fn decode_infer_request(body: &[u8]) -> Result<InferRequest, DecodeError> {
    let json: InferRequestJson = serde_json::from_slice(body).map_err(|e| DecodeError::from_json(&e, body))?;
    if json.inputs.is_empty() {
        return Err(DecodeError("'inputs' is empty; give at least one input tensor".to_owned()));
    }
    let mut inputs = Vec::with_capacity(json.inputs.len());
    for input in json.inputs {
        inputs.push(decode_input(input)?);
    }
    let outputs = json.outputs.map(|o| o.into_iter().map(|o| o.name).collect());
    Ok(InferRequest { id: json.id, inputs, outputs })
}

fn decode_input(input: InputJson) -> Result<Tensor, DecodeError> {
    let name = input.name;
    let datatype: DataType = input
        .datatype
        .parse()
        .map_err(|e| DecodeError(format!("input '{name}': {e}")))?;
    let shape = checked_shape(&name, &input.shape)?;
    let decoded = json_tensor::decode(&input.data, datatype, &format!("input '{name}' data"))?;
    Tensor::new(name, shape, decoded.data).map_err(|e| DecodeError(e.to_string()))
}

fn checked_shape(name: &str, shape: &[i64]) -> Result<Vec<usize>, DecodeError> {
    shape
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<Result<_, _>>()
        .map_err(|_| DecodeError(format!("input '{name}': shape {shape:?} has a negative dimension")))
}

/// `POST /v2/models/{m}/infer` response body.
#[derive(Debug, Serialize)]
pub struct InferResponseJson<'a> {
    pub model_name: &'a str,
    pub model_version: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<&'a str>,
    pub outputs: Vec<OutputJson<'a>>,
}

#[derive(Debug, Serialize)]
pub struct OutputJson<'a> {
    pub name: &'a str,
    pub datatype: &'static str,
    pub shape: &'a [usize],
    pub data: DataJson<'a>,
}

/// Encodes an infer response body.
pub fn encode_infer_response(model_name: &str, model_version: &str, id: Option<&str>, outputs: &[Tensor]) -> Vec<u8> {
    let body = InferResponseJson {
        model_name,
        model_version,
        id,
        outputs: outputs
            .iter()
            .map(|t| OutputJson { name: t.name(), datatype: t.datatype().as_str(), shape: t.shape(), data: DataJson(t.data()) })
            .collect(),
    };
    // Serializing owned, finite structures into a Vec cannot fail.
    serde_json::to_vec(&body).unwrap_or_default()
}

/// `GET /v2` body.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ServerMetadata {
    pub name: String,
    pub version: String,
    pub extensions: Vec<String>,
}

/// One tensor in model metadata.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TensorMetadata {
    pub name: String,
    pub datatype: String,
    pub shape: Vec<i64>,
}

impl From<&TensorSpec> for TensorMetadata {
    fn from(spec: &TensorSpec) -> Self {
        TensorMetadata { name: spec.name.clone(), datatype: spec.datatype.as_str().to_owned(), shape: spec.shape.clone() }
    }
}

/// `GET /v2/models/{m}[/versions/{v}]` body.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ModelMetadata {
    pub name: String,
    pub versions: Vec<String>,
    pub platform: String,
    pub inputs: Vec<TensorMetadata>,
    pub outputs: Vec<TensorMetadata>,
}

impl ModelMetadata {
    pub fn new(name: &str, versions: Vec<String>, info: &ModelInfo) -> Self {
        ModelMetadata {
            name: name.to_owned(),
            versions,
            platform: info.platform.clone(),
            inputs: info.signature.inputs.iter().map(TensorMetadata::from).collect(),
            outputs: info.signature.outputs.iter().map(TensorMetadata::from).collect(),
        }
    }
}

/// `GET /v2/models/{m}/ready` body (an extension to the specification's empty body, as Triton
/// and KServe send one too).
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ModelReady {
    pub name: String,
    pub version: String,
    pub ready: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(body: &str) -> String {
        match decode_infer_request(body.as_bytes()) {
            Ok(r) => format!(
                "ok id={:?} inputs={:?} outputs={:?}",
                r.id,
                r.inputs.iter().map(|t| format!("{} {} {:?}", t.name(), t.datatype(), t.shape())).collect::<Vec<_>>(),
                r.outputs
            ),
            Err(e) => format!("error: {e}"),
        }
    }

    #[test]
    fn decodes_requests() {
        assert_eq!(
            check(r#"{"id":"r1","inputs":[{"name":"x","shape":[2,2],"datatype":"FP32","data":[[1,2],[3,4]]}],"outputs":[{"name":"y"}]}"#),
            r#"ok id=Some("r1") inputs=["x FP32 [2, 2]"] outputs=Some(["y"])"#
        );
        assert_eq!(
            check(r#"{"inputs":[{"name":"s","shape":[],"datatype":"INT64","data":[5]}]}"#),
            r#"ok id=None inputs=["s INT64 []"] outputs=None"#
        );
    }

    #[test]
    fn names_each_problem() {
        let cases = [
            ("", "error: empty request body; send a JSON object"),
            ("{", "error: malformed JSON: EOF while parsing an object at line 1 column 1"),
            (r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[NaN]}]}"#, "error: malformed JSON: NaN and Infinity are not valid JSON numbers; send finite numbers (expected value at line 1 column 62)"),
            (r#"{"inputs":[]}"#, "error: 'inputs' is empty; give at least one input tensor"),
            (r#"{"input":[]}"#, "error: invalid request: missing field `inputs` at line 1 column 12"),
            (r#"{"inputs":[{"name":"x","shape":[1],"data":[1]}]}"#, "error: invalid request: missing field `datatype` at line 1 column 46"),
            (r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FLOAT32","data":[1]}]}"#, "error: input 'x': unknown datatype 'FLOAT32' (expected one of BOOL, UINT8, UINT16, UINT32, UINT64, INT8, INT16, INT32, INT64, FP16, FP32, FP64, BYTES)"),
            (r#"{"inputs":[{"name":"x","shape":[-1],"datatype":"FP32","data":[1]}]}"#, "error: input 'x': shape [-1] has a negative dimension"),
            (r#"{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":[1,2]}]}"#, "error: input 'x': shape [1, 3] needs 3 elements but 2 were given"),
            (r#"{"inputs":[{"name":"x","shape":[2],"datatype":"FP32","data":[[1],[2,3]]}]}"#, "error: input 'x' data: ragged array: arrays at depth 2 have lengths 1 and 2"),
        ];
        for (body, want) in cases {
            assert_eq!(check(body), want, "{body}");
        }
    }

    #[test]
    fn encodes_responses() {
        let outputs = vec![
            Tensor::new("label", vec![1], modelship_inference::TensorData::Int64(vec![1])).unwrap(),
            Tensor::new("p", vec![1, 2], modelship_inference::TensorData::Fp32(vec![0.25, 0.75])).unwrap(),
        ];
        let body = encode_infer_response("fraud", "1", Some("r1"), &outputs);
        assert_eq!(
            String::from_utf8(body).unwrap(),
            r#"{"model_name":"fraud","model_version":"1","id":"r1","outputs":[{"name":"label","datatype":"INT64","shape":[1],"data":[1]},{"name":"p","datatype":"FP32","shape":[1,2],"data":[0.25,0.75]}]}"#
        );
    }
}
