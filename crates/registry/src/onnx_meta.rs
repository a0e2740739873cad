//! Reads what the registry records about an ONNX file (inputs, outputs, opsets, producer) by
//! decoding the ONNX protobuf directly, so pushing a model needs no runtime.
//!
//! Only the fields used are declared; protobuf skips the rest (weights included) without copying.

use prost::Message;
use serde::{Deserialize, Serialize};

/// One input or output. `datatype` uses the Open Inference Protocol names where one exists
/// (`FP32`, `INT64`, `BYTES`...), else the ONNX name (`BFLOAT16`, `SEQUENCE`, `MAP`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorInfo {
    pub name: String,
    pub datatype: String,
    /// -1 for a dynamic dimension.
    pub shape: Vec<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Opset {
    pub domain: String,
    pub version: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct OnnxMetadata {
    pub inputs: Vec<TensorInfo>,
    pub outputs: Vec<TensorInfo>,
    pub opsets: Vec<Opset>,
    pub ir_version: i64,
    pub producer: Option<String>,
}

#[derive(Clone, PartialEq, Message)]
struct ModelProto {
    #[prost(int64, tag = "1")]
    ir_version: i64,
    #[prost(string, tag = "2")]
    producer_name: String,
    #[prost(string, tag = "3")]
    producer_version: String,
    #[prost(message, optional, tag = "7")]
    graph: Option<GraphProto>,
    #[prost(message, repeated, tag = "8")]
    opset_import: Vec<OperatorSetIdProto>,
}

#[derive(Clone, PartialEq, Message)]
struct OperatorSetIdProto {
    #[prost(string, tag = "1")]
    domain: String,
    #[prost(int64, tag = "2")]
    version: i64,
}

#[derive(Clone, PartialEq, Message)]
struct GraphProto {
    #[prost(message, repeated, tag = "5")]
    initializer: Vec<NamedProto>,
    #[prost(message, repeated, tag = "11")]
    input: Vec<ValueInfoProto>,
    #[prost(message, repeated, tag = "12")]
    output: Vec<ValueInfoProto>,
}

/// A TensorProto reduced to its name (tag 8): initializers listed among graph inputs (IR < 4)
/// are weights, not inputs.
#[derive(Clone, PartialEq, Message)]
struct NamedProto {
    #[prost(string, tag = "8")]
    name: String,
}

#[derive(Clone, PartialEq, Message)]
struct ValueInfoProto {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(message, optional, tag = "2")]
    r#type: Option<TypeProto>,
}

#[derive(Clone, PartialEq, Message)]
struct TypeProto {
    #[prost(message, optional, tag = "1")]
    tensor_type: Option<TensorTypeProto>,
    #[prost(bytes = "vec", optional, tag = "4")]
    sequence_type: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "5")]
    map_type: Option<Vec<u8>>,
}

#[derive(Clone, PartialEq, Message)]
struct TensorTypeProto {
    #[prost(int32, tag = "1")]
    elem_type: i32,
    #[prost(message, optional, tag = "2")]
    shape: Option<TensorShapeProto>,
}

#[derive(Clone, PartialEq, Message)]
struct TensorShapeProto {
    #[prost(message, repeated, tag = "1")]
    dim: Vec<Dimension>,
}

#[derive(Clone, PartialEq, Message)]
struct Dimension {
    #[prost(int64, optional, tag = "1")]
    dim_value: Option<i64>,
    #[prost(string, optional, tag = "2")]
    dim_param: Option<String>,
}

fn elem_type_name(t: i32) -> &'static str {
    match t {
        1 => "FP32",
        2 => "UINT8",
        3 => "INT8",
        4 => "UINT16",
        5 => "INT16",
        6 => "INT32",
        7 => "INT64",
        8 => "BYTES",
        9 => "BOOL",
        10 => "FP16",
        11 => "FP64",
        12 => "UINT32",
        13 => "UINT64",
        14 => "COMPLEX64",
        15 => "COMPLEX128",
        16 => "BFLOAT16",
        _ => "UNKNOWN",
    }
}

fn tensor_info(v: &ValueInfoProto) -> TensorInfo {
    let (datatype, shape) = match &v.r#type {
        Some(TypeProto { tensor_type: Some(t), .. }) => (
            elem_type_name(t.elem_type).to_owned(),
            t.shape
                .as_ref()
                .map(|s| s.dim.iter().map(|d| d.dim_value.filter(|&n| n >= 0).unwrap_or(-1)).collect())
                .unwrap_or_default(),
        ),
        Some(TypeProto { sequence_type: Some(_), .. }) => ("SEQUENCE".to_owned(), vec![]),
        Some(TypeProto { map_type: Some(_), .. }) => ("MAP".to_owned(), vec![]),
        _ => ("UNKNOWN".to_owned(), vec![]),
    };
    TensorInfo { name: v.name.clone(), datatype, shape }
}

/// Decodes `bytes` as an ONNX model; the error says why it is not one.
pub fn read(bytes: &[u8]) -> Result<OnnxMetadata, String> {
    if bytes.is_empty() {
        return Err("the file is empty".to_owned());
    }
    let model = ModelProto::decode(bytes).map_err(|e| format!("protobuf decoding failed ({e}); the file is truncated or not ONNX"))?;
    let graph = model.graph.ok_or("it has no graph")?;
    if model.ir_version <= 0 || model.opset_import.is_empty() {
        return Err("it has no IR version or opset imports".to_owned());
    }
    let weights: std::collections::HashSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let inputs: Vec<TensorInfo> =
        graph.input.iter().filter(|i| !weights.contains(i.name.as_str())).map(tensor_info).collect();
    let outputs: Vec<TensorInfo> = graph.output.iter().map(tensor_info).collect();
    if outputs.is_empty() {
        return Err("its graph has no outputs".to_owned());
    }
    let producer = Some(format!("{} {}", model.producer_name, model.producer_version).trim().to_owned()).filter(|p| !p.is_empty());
    Ok(OnnxMetadata {
        inputs,
        outputs,
        opsets: model
            .opset_import
            .iter()
            .map(|o| Opset { domain: if o.domain.is_empty() { "ai.onnx".to_owned() } else { o.domain.clone() }, version: o.version })
            .collect(),
        ir_version: model.ir_version,
        producer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(path: &str) -> Vec<u8> {
        std::fs::read(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(path)).unwrap()
    }

    #[test]
    fn reads_a_skl2onnx_classifier() {
        let meta = read(&fixture("examples/models/fraud.onnx")).unwrap();
        assert_eq!(meta.inputs, vec![TensorInfo { name: "input".into(), datatype: "FP32".into(), shape: vec![-1, 30] }]);
        assert_eq!(
            meta.outputs,
            vec![
                TensorInfo { name: "label".into(), datatype: "INT64".into(), shape: vec![-1] },
                TensorInfo { name: "probabilities".into(), datatype: "FP32".into(), shape: vec![-1, 2] },
            ]
        );
        assert!(meta.opsets.iter().any(|o| o.domain == "ai.onnx.ml" && o.version >= 1), "{:?}", meta.opsets);
        assert!(meta.opsets.iter().any(|o| o.domain == "ai.onnx" && o.version >= 13), "{:?}", meta.opsets);
        assert!(meta.producer.unwrap().starts_with("skl2onnx"));
    }

    #[test]
    fn excludes_initializers_and_reads_scalars() {
        let meta = read(&fixture("testdata/models/slow.onnx")).unwrap();
        assert_eq!(meta.inputs, vec![TensorInfo { name: "iterations".into(), datatype: "INT64".into(), shape: vec![] }]);
        let meta = read(&fixture("testdata/models/dtypes.onnx")).unwrap();
        assert_eq!(meta.inputs.len(), 13);
        assert_eq!(meta.inputs[12], TensorInfo { name: "in_bytes".into(), datatype: "BYTES".into(), shape: vec![-1] });
    }

    #[test]
    fn refuses_what_is_not_onnx() {
        let bytes = fixture("examples/models/fraud.onnx");
        assert!(read(&bytes[..bytes.len() / 2]).unwrap_err().contains("truncated or not ONNX"));
        assert!(read(b"").unwrap_err().contains("empty"));
        assert!(read(b"name,value\na,1\n").is_err());
    }
}
