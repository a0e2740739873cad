//! The seed's simple API: `POST /v1/predict` with `{"features": [[...], ...]}` answered by
//! `{"prediction": [...], "model_version": "..."}`.
//!
//! `features` feeds the model's only input, an `[N, F]` matrix (one row may also be sent flat).
//! `prediction` comes from the model's probability output when it has one (for a binary
//! classifier, the probability of class 1 per row, as the seed returns), otherwise from its
//! first numeric output.

use modelship_inference::{InferRequest, Signature, Tensor, TensorData};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

use crate::json_tensor;
use crate::DecodeError;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PredictRequestJson {
    #[serde(default)]
    pub features: Option<Box<RawValue>>,
    /// Entities whose features the server assembles from its feature store.
    #[serde(default, deserialize_with = "crate::bounded::entities")]
    pub entities: Option<Vec<serde_json::Map<String, Value>>>,
    /// Request parameters (e.g. the field a sticky routing key is read from), as in V2.
    #[serde(default, deserialize_with = "crate::bounded::request_parameters")]
    pub parameters: Option<serde_json::Map<String, Value>>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct PredictResponseJson {
    pub prediction: Value,
    pub model_version: String,
    /// Entities answered with default features, and why (only when some were).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub defaults_used: Option<Value>,
}

/// A predict body, parsed once: raw feature rows (typed against the model's input once the
/// request is routed, see [`rows_request`]), or entities to enrich.
#[derive(Debug)]
pub enum Predict {
    Rows(Box<RawValue>),
    Entities(Vec<serde_json::Map<String, Value>>),
}

/// A decoded predict body and its request parameters.
#[derive(Debug)]
pub struct DecodedPredict {
    pub predict: Predict,
    pub parameters: serde_json::Map<String, Value>,
}

/// Decodes a predict body: `{"features": [[...]]}` or `{"entities": [{...}, ...]}`, with optional
/// `parameters`.
pub fn decode_predict(body: &[u8]) -> Result<DecodedPredict, DecodeError> {
    let json: PredictRequestJson = serde_json::from_slice(body).map_err(|e| DecodeError::from_json(&e, body))?;
    let parameters = json.parameters.unwrap_or_default();
    let predict = match (json.features, json.entities) {
        (Some(features), None) => Predict::Rows(features),
        (None, Some(entities)) => Predict::Entities(entities),
        (Some(_), Some(_)) => return Err(DecodeError("give 'features' (rows) or 'entities' (to look up), not both".to_owned())),
        (None, None) => {
            return Err(DecodeError(
                "give 'features' ([[f1, f2, ...], ...]) or 'entities' ([{\"customer_id\": \"...\"}, ...] with a feature store)".to_owned(),
            ));
        }
    };
    Ok(DecodedPredict { predict, parameters })
}

/// Output names that hold class probabilities: `/v1/predict` answers from the first such output.
pub const PROBABILITY_NAMES: [&str; 4] = ["probabilities", "probability", "output_probability", "predict_proba"];

/// The index of the output `/v1/predict` reports.
pub fn prediction_output(signature: &Signature) -> Option<usize> {
    let outputs = &signature.outputs;
    outputs
        .iter()
        .position(|o| PROBABILITY_NAMES.contains(&o.name.as_str()))
        .or_else(|| outputs.iter().position(|o| o.datatype.is_float()))
        .or_else(|| outputs.iter().position(|o| o.datatype != modelship_inference::DataType::Bytes))
}

/// A request for the prediction output, with no inputs yet (the feature store adds the input
/// built from the entities).
pub fn entity_request(signature: &Signature) -> InferRequest {
    let outputs = prediction_output(signature).map(|i| vec![signature.outputs[i].name.clone()]);
    InferRequest { id: None, inputs: vec![], outputs }
}

/// `features` rows as a request for the model's single `[N, F]` input and its prediction output.
pub fn rows_request(features: &RawValue, signature: &Signature) -> Result<InferRequest, DecodeError> {
    let [input] = signature.inputs.as_slice() else {
        return Err(DecodeError(format!(
            "/v1/predict feeds a model with exactly one input, but this model has {} ({}); use /v2/models/{{model}}/infer",
            signature.inputs.len(),
            signature.input_names().join(", ")
        )));
    };
    if input.shape.len() != 2 {
        return Err(DecodeError(format!(
            "/v1/predict needs a model input of shape [N, F], but '{}' has shape {:?}; use /v2/models/{{model}}/infer",
            input.name, input.shape
        )));
    }
    let decoded = json_tensor::decode(features, input.datatype, &"features", 0)?;
    let shape = match decoded.nesting.as_slice() {
        [rows, cols] => vec![*rows, *cols],
        [cols] => vec![1, *cols],
        _ => {
            return Err(DecodeError(
                "features: expected an array of rows ([[f1, f2, ...], ...]) or one row ([f1, f2, ...])".to_owned(),
            ));
        }
    };
    if shape[0] == 0 || decoded.data.is_empty() {
        return Err(DecodeError("features: no rows given".to_owned()));
    }
    let tensor = Tensor::new(input.name.clone(), shape, decoded.data).map_err(|e| DecodeError(e.to_string()))?;
    let outputs = prediction_output(signature).map(|i| vec![signature.outputs[i].name.clone()]);
    Ok(InferRequest { id: None, inputs: vec![tensor], outputs })
}

/// The `prediction` value for an output tensor of shape `[N]`, `[N, 1]`, `[N, 2]` (binary
/// probabilities: the second column) or `[N, K]` (one list per row).
pub fn prediction_value(output: &Tensor) -> Value {
    let data = output.data();
    let at = |i: usize| -> Value {
        match data {
            TensorData::Bytes(v) => Value::String(String::from_utf8_lossy(&v[i]).into_owned()),
            TensorData::Bool(v) => Value::Bool(v[i]),
            TensorData::Int64(v) => Value::from(v[i]),
            TensorData::Int32(v) => Value::from(v[i]),
            TensorData::Uint64(v) => Value::from(v[i]),
            // Widening f32 to f64 would print digits the model never produced (0.054461777 as
            // 0.0544617772102356); go through f32's shortest representation instead, as V2 does.
            TensorData::Fp32(v) => v[i].to_string().parse::<f64>().map_or(Value::Null, Value::from),
            other => other.get_f64(i).map(Value::from).unwrap_or(Value::Null),
        }
    };
    match output.shape() {
        [_, 2] if output.datatype().is_float() => Value::Array((0..data.len() / 2).map(|r| at(2 * r + 1)).collect()),
        [rows, k] if *k != 1 => Value::Array((0..*rows).map(|r| Value::Array((0..*k).map(|c| at(r * k + c)).collect())).collect()),
        _ => Value::Array((0..data.len()).map(at).collect()),
    }
}

/// The predict response body; `defaults_used` lists the entities answered with default features.
pub fn encode_predict_response(model_version: &str, output: &Tensor, defaults_used: Option<Value>) -> Vec<u8> {
    let body = PredictResponseJson { prediction: prediction_value(output), model_version: model_version.to_owned(), defaults_used };
    serde_json::to_vec(&body).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use modelship_inference::{DataType, TensorSpec};

    fn classifier() -> Signature {
        Signature {
            inputs: vec![TensorSpec::new("input", DataType::Fp32, vec![-1, 3])],
            outputs: vec![
                TensorSpec::new("label", DataType::Int64, vec![-1]),
                TensorSpec::new("probabilities", DataType::Fp32, vec![-1, 2]),
            ],
        }
    }

    fn check(body: &str) -> String {
        match decode_predict(body.as_bytes()).and_then(|d| match d.predict {
            Predict::Rows(rows) => rows_request(&rows, &classifier()).map(Ok),
            Predict::Entities(e) => Ok(Err(e)),
        }) {
            Ok(Err(e)) => format!("entities {e:?}"),
            Ok(Ok(r)) => format!("ok {:?} {:?} outputs={:?}", r.inputs[0].shape(), r.inputs[0].data(), r.outputs),
            Err(e) => format!("error: {e}"),
        }
    }

    #[test]
    fn decodes_rows_and_single_row() {
        assert_eq!(check(r#"{"features": [[1, 2, 3], [4, 5, 6]]}"#), r#"ok [2, 3] Fp32([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]) outputs=Some(["probabilities"])"#);
        assert_eq!(check(r#"{"features": [1, 2, 3]}"#), r#"ok [1, 3] Fp32([1.0, 2.0, 3.0]) outputs=Some(["probabilities"])"#);
    }

    #[test]
    fn names_each_problem() {
        let cases = [
            (r#"{"feature": [[1, 2, 3]]}"#, "error: invalid request: unknown field `feature`, expected one of `features`, `entities`, `parameters` at line 1 column 10"),
            (r#"{}"#, "error: give 'features' ([[f1, f2, ...], ...]) or 'entities' ([{\"customer_id\": \"...\"}, ...] with a feature store)"),
            (r#"{"features": [[1]], "entities": []}"#, "error: give 'features' (rows) or 'entities' (to look up), not both"),
            (r#"{"features": [[1, 2], [3]]}"#, "error: features: ragged array: arrays at depth 2 have lengths 2 and 1"),
            (r#"{"features": [[[1]]]}"#, "error: features: expected an array of rows ([[f1, f2, ...], ...]) or one row ([f1, f2, ...])"),
            (r#"{"features": []}"#, "error: features: no rows given"),
            (r#"{"features": [["a", 1, 2]]}"#, "error: features: element 0 is a string, which is not a valid FP32 value"),
        ];
        for (body, want) in cases {
            assert_eq!(check(body), want, "{body}");
        }
    }

    #[test]
    fn prediction_shapes() {
        let t = |shape: Vec<usize>, data| Tensor::new("o", shape, data).unwrap();
        assert_eq!(prediction_value(&t(vec![2, 2], TensorData::Fp32(vec![0.75, 0.25, 0.5, 0.5]))).to_string(), "[0.25,0.5]");
        assert_eq!(prediction_value(&t(vec![2], TensorData::Int64(vec![0, 1]))).to_string(), "[0,1]");
        assert_eq!(prediction_value(&t(vec![2, 1], TensorData::Fp64(vec![1.5, 2.5]))).to_string(), "[1.5,2.5]");
        assert_eq!(prediction_value(&t(vec![1, 3], TensorData::Fp64(vec![0.25, 0.25, 0.5]))).to_string(), "[[0.25,0.25,0.5]]");
    }

    #[test]
    fn picks_the_probability_output() {
        assert_eq!(prediction_output(&classifier()), Some(1));
        let regressor = Signature { inputs: vec![], outputs: vec![TensorSpec::new("variable", DataType::Fp32, vec![-1, 1])] };
        assert_eq!(prediction_output(&regressor), Some(0));
    }
}
