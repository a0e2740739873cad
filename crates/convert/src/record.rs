//! What a conversion was: kept beside the cached ONNX (`conversion.json`), shown by `modelship
//! convert`, and written onto a registry version as labels.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::judge::Verdict;

/// One input column of a model fitted on a DataFrame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Column {
    pub name: String,
    /// `float` or `string`.
    #[serde(rename = "type")]
    pub kind: String,
}

/// Where the proof's rows came from.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SampleInfo {
    /// `given` (the user's) or `drawn` (from the ranges and thresholds the model records).
    pub origin: String,
    pub rows: usize,
    /// Drawn rows: features no estimator recorded a range for (drawn from [-3.3, 3.3]).
    #[serde(default)]
    pub unranged_features: usize,
}

/// A conversion, whole.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Conversion {
    /// `pickle`, `xgboost-json`, `xgboost-ubj`, `lightgbm-text`.
    pub format: String,
    pub format_description: String,
    /// Hex SHA-256 of the original file.
    pub source_digest: String,
    pub source_bytes: u64,
    /// `sklearn`, `xgboost-booster`, `lightgbm-booster`.
    pub kind: String,
    /// `classifier` or `regressor`.
    pub task: String,
    pub estimator: String,
    pub estimators: Vec<String>,
    pub features: usize,
    pub feature_names: Option<Vec<String>>,
    pub columns: Option<Vec<Column>>,
    pub classes: Option<Vec<serde_json::Value>>,
    /// The environment it ran in: `default`, `scikit-learn-1.5.2`, `--python PATH`.
    pub environment: String,
    pub python: String,
    /// Distribution → version, as installed where it ran.
    pub libraries: BTreeMap<String, String>,
    /// The converter and the options that matter for equality: `converter`, `target_opset`,
    /// `zipmap`, `precision`, `thresholds`.
    pub options: serde_json::Value,
    /// `bubblewrap 0.8.0` or `none (--trust-pickle)`.
    pub isolation: String,
    pub sample: SampleInfo,
    pub verdict: Verdict,
    pub seconds: f64,
}

/// The label a registry version's original file is named by: `sha256:<hex>`.
pub const SOURCE_LABEL: &str = "source_digest";

impl Conversion {
    /// `skl2onnx 1.20.0` / `onnxmltools 1.16.0`.
    pub fn converter(&self) -> String {
        let which = self.options.get("converter").and_then(|c| c.as_str()).unwrap_or("");
        let package = which.split('.').next().unwrap_or("");
        match self.libraries.get(package) {
            Some(v) => format!("{package} {v}"),
            None => package.to_owned(),
        }
    }

    /// `ai.onnx=18, ai.onnx.ml=3`.
    pub fn opsets(&self) -> String {
        let Some(map) = self.options.get("target_opset").and_then(|o| o.as_object()) else { return String::new() };
        let mut parts: Vec<String> = map.iter().map(|(k, v)| format!("{}={v}", if k.is_empty() { "ai.onnx" } else { k })).collect();
        parts.sort();
        parts.join(", ")
    }

    /// The options that matter for equality, in words.
    pub fn options_text(&self) -> String {
        let o = &self.options;
        let mut parts = Vec::new();
        if let Some(p) = o.get("precision").and_then(|v| v.as_str()) {
            parts.push(format!("inputs {p}"));
        }
        if let Some(z) = o.get("zipmap").and_then(serde_json::Value::as_bool) {
            parts.push(format!("zipmap={z}"));
        }
        if let Some(t) = o.get("thresholds") {
            let rule = t.get("rule").and_then(|r| r.as_str()).unwrap_or("");
            match t.get("moved").and_then(serde_json::Value::as_u64) {
                Some(moved) => parts.push(format!("tree thresholds {rule} ({moved} moved)")),
                None => parts.push(format!("tree thresholds {rule}")),
            }
        }
        parts.join(", ")
    }

    /// The library that wrote the model and its version: `scikit-learn 1.9.1`, `xgboost 3.2.0`.
    pub fn model_library(&self) -> String {
        let lib = match self.kind.as_str() {
            "xgboost-booster" => "xgboost",
            "lightgbm-booster" => "lightgbm",
            _ if self.estimator.starts_with("xgboost.") => "xgboost",
            _ if self.estimator.starts_with("lightgbm.") => "lightgbm",
            _ => "scikit-learn",
        };
        format!("{lib} {}", self.libraries.get(lib).map(String::as_str).unwrap_or("?"))
    }

    /// The registry version's labels: where it came from and how it was proven.
    pub fn labels(&self) -> BTreeMap<String, String> {
        let mut l = BTreeMap::new();
        l.insert("source_format".to_owned(), self.format.clone());
        l.insert(SOURCE_LABEL.to_owned(), format!("sha256:{}", self.source_digest));
        l.insert("source_model".to_owned(), format!("{} (loaded with {})", self.estimator.rsplit('.').next().unwrap_or(&self.estimator), self.model_library()));
        l.insert("converter".to_owned(), self.converter());
        l.insert("converter_opset".to_owned(), self.opsets());
        l.insert("converter_options".to_owned(), self.options_text());
        let libs: Vec<String> = ["scikit-learn", "xgboost", "lightgbm", "onnx", "numpy"]
            .iter()
            .filter_map(|k| self.libraries.get(*k).map(|v| format!("{k} {v}")))
            .collect();
        l.insert("converter_libraries".to_owned(), libs.join(", "));
        l.insert("conversion_sandbox".to_owned(), self.isolation.clone());
        l.insert("equality_rows".to_owned(), format!("{} {}", self.verdict.rows, self.sample.origin));
        l.insert("equality_max_abs_diff".to_owned(), format!("{:.3e}", self.verdict.max_abs_diff));
        l.insert("equality_tolerance".to_owned(), format!("{:e}", self.verdict.tolerance.absolute));
        l
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::judge::Tolerance;

    #[test]
    fn labels_say_where_it_came_from_and_how_it_was_proven() {
        let c = Conversion {
            format: "pickle".into(),
            format_description: "Python pickle".into(),
            source_digest: "ab".repeat(32),
            source_bytes: 10,
            kind: "sklearn".into(),
            task: "classifier".into(),
            estimator: "xgboost.sklearn.XGBClassifier".into(),
            estimators: vec![],
            features: 4,
            feature_names: None,
            columns: None,
            classes: Some(vec![0.into(), 1.into()]),
            environment: "default".into(),
            python: "3.11.7".into(),
            libraries: [("xgboost", "3.2.0"), ("skl2onnx", "1.20.0"), ("scikit-learn", "1.9.1"), ("numpy", "2.4.6")].iter().map(|(a, b)| ((*a).to_owned(), (*b).to_owned())).collect(),
            options: serde_json::json!({"converter": "skl2onnx.convert_sklearn", "target_opset": {"": 18, "ai.onnx.ml": 3}, "precision": "float32", "zipmap": false, "thresholds": {"rule": "exact for float32 inputs", "moved": 3}}),
            isolation: "bubblewrap 0.8.0".into(),
            sample: SampleInfo { origin: "drawn".into(), rows: 1000, unranged_features: 0 },
            verdict: Verdict { rows: 1000, tolerance: Tolerance::default(), max_abs_diff: 1.19e-7, rows_outside: 0, worst: vec![] },
            seconds: 2.0,
        };
        let l = c.labels();
        let get = |k: &str| l.get(k).cloned().unwrap_or_default();
        assert_eq!(get("source_digest"), format!("sha256:{}", "ab".repeat(32)));
        assert_eq!(get("source_model"), "XGBClassifier (loaded with xgboost 3.2.0)");
        assert_eq!(get("converter"), "skl2onnx 1.20.0");
        assert_eq!(get("converter_opset"), "ai.onnx.ml=3, ai.onnx=18");
        assert_eq!(get("converter_options"), "inputs float32, zipmap=false, tree thresholds exact for float32 inputs (3 moved)");
        assert_eq!(get("converter_libraries"), "scikit-learn 1.9.1, xgboost 3.2.0, numpy 2.4.6");
        assert_eq!(get("equality_rows"), "1000 drawn");
        assert_eq!(get("equality_max_abs_diff"), "1.190e-7");
        assert_eq!(get("conversion_sandbox"), "bubblewrap 0.8.0");
    }
}
