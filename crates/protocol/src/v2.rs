//! Open Inference Protocol V2, REST JSON. Field names follow the specification exactly.

use modelship_inference::{DataType, InferRequest, ModelInfo, Tensor, TensorSpec};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::bounded;
use crate::json_tensor::{self, DataJson};
use crate::raw;
use crate::DecodeError;

/// `POST /v2/models/{m}/infer` body, borrowing each input's `data` text from the body (it is
/// decoded from there into typed elements, once its datatype is known).
#[derive(Debug, Deserialize)]
pub struct InferRequestJson<'a> {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default, deserialize_with = "bounded::request_parameters")]
    pub parameters: Option<Map<String, Value>>,
    #[serde(borrow, deserialize_with = "bounded::tensors")]
    pub inputs: Vec<InputJson<'a>>,
    #[serde(default, deserialize_with = "bounded::optional_tensors")]
    pub outputs: Option<Vec<RequestedOutputJson>>,
}

#[derive(Debug, Deserialize)]
pub struct InputJson<'a> {
    #[serde(deserialize_with = "bounded::name")]
    pub name: String,
    #[serde(deserialize_with = "bounded::shape")]
    pub shape: Vec<i64>,
    pub datatype: String,
    #[serde(default, deserialize_with = "bounded::tensor_parameters")]
    pub parameters: Option<Map<String, Value>>,
    /// Absent when the tensor travels in the binary part (`parameters.binary_data_size`).
    #[serde(default, borrow)]
    pub data: Option<&'a RawValue>,
}

#[derive(Debug, Deserialize)]
pub struct RequestedOutputJson {
    #[serde(deserialize_with = "bounded::name")]
    pub name: String,
    #[serde(default, deserialize_with = "bounded::tensor_parameters")]
    pub parameters: Option<Map<String, Value>>,
}

/// The header that carries the length of the JSON part of a body in Triton's binary tensor
/// extension; the tensors' raw bytes follow the JSON.
pub const HEADER_CONTENT_LENGTH: &str = "inference-header-content-length";

/// A decoded infer request, with what the protocol says about the response.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DecodedRequest {
    pub request: InferRequest,
    pub binary_outputs: BinaryOutputs,
    /// `parameters.entities`: entities whose features the server assembles from its store.
    pub entities: Option<Vec<Map<String, Value>>>,
    /// The request's other parameters (e.g. the field a sticky routing key is read from).
    pub parameters: Map<String, Value>,
}

/// Which outputs the client wants as raw bytes rather than JSON (the binary tensor extension):
/// all of them with the request parameter `binary_data_output: true`, or one by one with the
/// output parameter `binary_data` (which also overrides the request-wide choice).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BinaryOutputs {
    pub all: bool,
    pub overrides: Vec<(String, bool)>,
}

impl BinaryOutputs {
    pub fn is_binary(&self, output: &str) -> bool {
        self.overrides.iter().find(|(name, _)| name == output).map_or(self.all, |&(_, binary)| binary)
    }
}

/// Decodes an infer request body: all JSON, or (with `json_length` from
/// [`HEADER_CONTENT_LENGTH`]) a JSON header followed by the raw bytes of the inputs that declare
/// `parameters.binary_data_size`, in the order the inputs are listed.
pub fn decode_request(body: &[u8], json_length: Option<usize>) -> Result<DecodedRequest, DecodeError> {
    let (header, mut binary) = match json_length {
        None => (body, &[][..]),
        Some(n) if n <= body.len() => body.split_at(n),
        Some(n) => {
            return Err(DecodeError(format!(
                "the {HEADER_CONTENT_LENGTH} header says {n} bytes of JSON but the body has only {}",
                body.len()
            )));
        }
    };
    let mut json: InferRequestJson = serde_json::from_slice(header).map_err(|e| DecodeError::from_json(&e, header))?;
    let entities = match json.parameters.as_mut().and_then(|p| p.remove("entities")) {
        None => None,
        Some(Value::Array(items)) => Some(
            items
                .into_iter()
                .enumerate()
                .map(|(i, e)| match e {
                    Value::Object(map) => Ok(map),
                    other => Err(DecodeError(format!("parameters.entities[{i}] is {other}; each entity is an object of its key fields"))),
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
        Some(other) => return Err(DecodeError(format!("parameters.entities must be an array of objects, not {other}"))),
    };
    if json.inputs.is_empty() && entities.is_none() {
        return Err(DecodeError("'inputs' is empty; give at least one input tensor".to_owned()));
    }
    let mut inputs = Vec::with_capacity(json.inputs.len());
    for input in json.inputs {
        let size = binary_data_size(&input.name, input.parameters.as_ref())?;
        let raw = match size {
            None => None,
            Some(_) if json_length.is_none() => {
                return Err(DecodeError(format!(
                    "input '{}' declares binary_data_size but the request has no {HEADER_CONTENT_LENGTH} header",
                    input.name
                )));
            }
            Some(n) if n > binary.len() => {
                return Err(DecodeError(format!(
                    "input '{}' declares binary_data_size {n} but only {} bytes of binary data remain",
                    input.name,
                    binary.len()
                )));
            }
            Some(n) => {
                let (mine, rest) = binary.split_at(n);
                binary = rest;
                Some(mine)
            }
        };
        inputs.push(decode_input(input, raw)?);
    }
    if !binary.is_empty() {
        return Err(DecodeError(format!(
            "{} bytes of binary data follow the JSON but no input claims them (set binary_data_size on the inputs)",
            binary.len()
        )));
    }
    let mut binary_outputs = BinaryOutputs { all: bool_parameter(json.parameters.as_ref(), "binary_data_output", "binary_data_output")?.unwrap_or(false), overrides: vec![] };
    let outputs = match json.outputs {
        None => None,
        Some(requested) => {
            let mut names = Vec::with_capacity(requested.len());
            for o in requested {
                if o.parameters.as_ref().is_some_and(|p| p.contains_key("classification")) {
                    return Err(DecodeError(format!(
                        "output '{}': the classification extension is not supported; request the output itself",
                        o.name
                    )));
                }
                if let Some(b) = bool_parameter(o.parameters.as_ref(), "binary_data", &format!("output '{}' binary_data", o.name))? {
                    binary_outputs.overrides.push((o.name.clone(), b));
                }
                names.push(o.name);
            }
            Some(names)
        }
    };
    let parameters = json.parameters.unwrap_or_default();
    Ok(DecodedRequest { request: InferRequest { id: json.id, inputs, outputs }, binary_outputs, entities, parameters })
}

/// `parameters.binary_data_size` of an input, checked.
fn binary_data_size(input: &str, parameters: Option<&Map<String, Value>>) -> Result<Option<usize>, DecodeError> {
    match parameters.and_then(|p| p.get("binary_data_size")) {
        None => Ok(None),
        Some(v) => v.as_u64().and_then(|n| usize::try_from(n).ok()).map(Some).ok_or_else(|| {
            DecodeError(format!("input '{input}': binary_data_size must be a non-negative integer, not {v}"))
        }),
    }
}

/// A boolean parameter `key` of `parameters`; `what` names it in the error.
fn bool_parameter(parameters: Option<&Map<String, Value>>, key: &str, what: &str) -> Result<Option<bool>, DecodeError> {
    match parameters.and_then(|p| p.get(key)) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(DecodeError(format!("{what} must be true or false, not {other}"))),
    }
}

fn decode_input(input: InputJson<'_>, raw: Option<&[u8]>) -> Result<Tensor, DecodeError> {
    let name = input.name;
    let (datatype, shape) = input_type(&name, &input.datatype, &input.shape)?;
    match (raw, input.data) {
        (Some(bytes), None) => raw::tensor(&name, datatype, shape, bytes),
        (Some(_), Some(_)) => Err(DecodeError(format!(
            "input '{name}' has both 'data' and binary_data_size; send its elements one way"
        ))),
        (None, None) => Err(DecodeError(format!("input '{name}' has no 'data' (and no binary_data_size)"))),
        (None, Some(data)) => {
            let expected = shape.iter().try_fold(1usize, |n, d| n.checked_mul(*d)).unwrap_or(0);
            let decoded = json_tensor::decode(data, datatype, &format_args!("input '{name}' data"), expected)?;
            Tensor::new(name, shape, decoded.data).map_err(|e| DecodeError(e.to_string()))
        }
    }
}

/// An input's declared datatype and shape, checked (REST and gRPC declare them alike).
pub fn input_type(name: &str, datatype: &str, shape: &[i64]) -> Result<(DataType, Vec<usize>), DecodeError> {
    // gRPC's names and shapes come here without the JSON decoder's bounds.
    crate::bounded::check_name(name).map_err(DecodeError)?;
    let datatype: DataType = datatype.parse().map_err(|e| DecodeError(format!("input '{name}': {e}")))?;
    if shape.len() > crate::bounded::MAX_SHAPE_DIMS {
        return Err(DecodeError(format!("input '{name}': a shape has at most {} dimensions, not {}", crate::bounded::MAX_SHAPE_DIMS, shape.len())));
    }
    let shape = shape
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<Result<_, _>>()
        .map_err(|_| DecodeError(format!("input '{name}': shape {shape:?} has a negative dimension")))?;
    Ok((datatype, shape))
}

/// `POST /v2/models/{m}/infer` response body.
#[derive(Debug, Serialize)]
pub struct InferResponseJson<'a> {
    pub model_name: &'a str,
    pub model_version: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<&'a str>,
    /// Response parameters (`feature_defaults` when entities got default features).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameters: Option<&'a Value>,
    pub outputs: Vec<OutputJson<'a>>,
}

#[derive(Debug, Serialize)]
pub struct OutputJson<'a> {
    pub name: &'a str,
    pub datatype: &'static str,
    pub shape: &'a [usize],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameters: Option<BinarySize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<DataJson<'a>>,
}

/// `{"binary_data_size": n}`: the output's bytes follow the JSON.
#[derive(Debug, Serialize)]
pub struct BinarySize {
    pub binary_data_size: usize,
}

/// Encodes an infer response body. When some outputs go as raw bytes, they follow the JSON in
/// output order and the JSON's length is returned, for the [`HEADER_CONTENT_LENGTH`] header.
pub fn encode_response(
    model_name: &str,
    model_version: &str,
    id: Option<&str>,
    outputs: &[Tensor],
    binary: &BinaryOutputs,
    parameters: Option<&Value>,
) -> (Vec<u8>, Option<usize>) {
    let mut raw_parts = Vec::new();
    let json_outputs = outputs
        .iter()
        .map(|t| {
            let (parameters, data) = if binary.is_binary(t.name()) {
                let bytes = raw::encode(t.data());
                let size = bytes.len();
                raw_parts.push(bytes);
                (Some(BinarySize { binary_data_size: size }), None)
            } else {
                (None, Some(DataJson(t.data())))
            };
            OutputJson { name: t.name(), datatype: t.datatype().as_str(), shape: t.shape(), parameters, data }
        })
        .collect();
    let body = InferResponseJson { model_name, model_version, id, parameters, outputs: json_outputs };
    // Serializing owned, finite structures into a Vec cannot fail.
    let mut out = serde_json::to_vec(&body).unwrap_or_default();
    if raw_parts.is_empty() {
        return (out, None);
    }
    let json_length = out.len();
    out.reserve(raw_parts.iter().map(|p| p.len()).sum());
    for part in raw_parts {
        out.extend_from_slice(&part);
    }
    (out, Some(json_length))
}

/// `tensors` as a V2 JSON array of `{name, datatype, shape, data}`: what a request's `inputs` or a
/// response's `outputs` holds, so a logged request can be sent again as it was.
pub fn tensors_json(tensors: &[Tensor]) -> String {
    let json: Vec<OutputJson<'_>> = tensors
        .iter()
        .map(|t| OutputJson { name: t.name(), datatype: t.datatype().as_str(), shape: t.shape(), parameters: None, data: Some(DataJson(t.data())) })
        .collect();
    // Serializing owned, finite structures cannot fail; a non-finite float is written as null.
    serde_json::to_string(&json).unwrap_or_default()
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
        match decode_request(body.as_bytes(), None).map(|d| d.request) {
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
        let (body, _) = encode_response("fraud", "1", Some("r1"), &outputs, &BinaryOutputs::default(), None);
        assert_eq!(
            String::from_utf8(body).unwrap(),
            r#"{"model_name":"fraud","model_version":"1","id":"r1","outputs":[{"name":"label","datatype":"INT64","shape":[1],"data":[1]},{"name":"p","datatype":"FP32","shape":[1,2],"data":[0.25,0.75]}]}"#
        );
    }

    #[test]
    fn decodes_binary_inputs_after_the_json() {
        let json = br#"{"inputs":[{"name":"a","shape":[2],"datatype":"FP32","parameters":{"binary_data_size":8}},{"name":"b","shape":[1],"datatype":"INT64","data":[7]},{"name":"c","shape":[1],"datatype":"BYTES","parameters":{"binary_data_size":6}}],"parameters":{"binary_data_output":true},"outputs":[{"name":"y","parameters":{"binary_data":false}},{"name":"z"}]}"#;
        let mut body = json.to_vec();
        body.extend_from_slice(&1.5f32.to_le_bytes());
        body.extend_from_slice(&(-2.0f32).to_le_bytes());
        body.extend_from_slice(b"\x02\0\0\0hi");
        let d = decode_request(&body, Some(json.len())).unwrap();
        assert_eq!(d.request.inputs[0].data(), &modelship_inference::TensorData::Fp32(vec![1.5, -2.0]));
        assert_eq!(d.request.inputs[1].data(), &modelship_inference::TensorData::Int64(vec![7]));
        assert_eq!(d.request.inputs[2].data(), &modelship_inference::TensorData::Bytes(vec![b"hi".to_vec()]));
        assert!(!d.binary_outputs.is_binary("y") && d.binary_outputs.is_binary("z"));

        let err = |body: &[u8], n: Option<usize>| decode_request(body, n).unwrap_err().to_string();
        assert_eq!(err(json, None), "input 'a' declares binary_data_size but the request has no inference-header-content-length header");
        assert_eq!(err(&body[..body.len() - 1], Some(json.len())), "input 'c' declares binary_data_size 6 but only 5 bytes of binary data remain");
        let mut extra = body.clone();
        extra.push(0);
        assert_eq!(err(&extra, Some(json.len())), "1 bytes of binary data follow the JSON but no input claims them (set binary_data_size on the inputs)");
        assert_eq!(err(&body, Some(body.len() + 1)), format!("the inference-header-content-length header says {} bytes of JSON but the body has only {}", body.len() + 1, body.len()));
        let both = br#"{"inputs":[{"name":"a","shape":[1],"datatype":"FP32","data":[1],"parameters":{"binary_data_size":4}}]}"#;
        let mut b = both.to_vec();
        b.extend_from_slice(&[0; 4]);
        assert_eq!(err(&b, Some(both.len())), "input 'a' has both 'data' and binary_data_size; send its elements one way");
        let bad = br#"{"inputs":[{"name":"a","shape":[1],"datatype":"FP32","parameters":{"binary_data_size":-4}}]}"#;
        assert_eq!(err(bad, Some(bad.len())), "input 'a': binary_data_size must be a non-negative integer, not -4");
    }

    #[test]
    fn encodes_binary_outputs_after_the_json() {
        let outputs = vec![
            Tensor::new("label", vec![1], modelship_inference::TensorData::Int64(vec![1])).unwrap(),
            Tensor::new("p", vec![2], modelship_inference::TensorData::Fp32(vec![0.25, 0.75])).unwrap(),
        ];
        let binary = BinaryOutputs { all: false, overrides: vec![("p".to_owned(), true)] };
        let (body, json_length) = encode_response("m", "1", None, &outputs, &binary, None);
        let n = json_length.unwrap();
        assert_eq!(
            std::str::from_utf8(&body[..n]).unwrap(),
            r#"{"model_name":"m","model_version":"1","outputs":[{"name":"label","datatype":"INT64","shape":[1],"data":[1]},{"name":"p","datatype":"FP32","shape":[2],"parameters":{"binary_data_size":8}}]}"#
        );
        assert_eq!(&body[n..], [0.25f32.to_le_bytes(), 0.75f32.to_le_bytes()].concat());
    }
}
