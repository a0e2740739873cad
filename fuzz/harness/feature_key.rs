//! `feature_key`: the feature store's key pattern and feature spec, fed what a config file and a
//! request can hold.
//!
//! The input is a key pattern, a newline, then a JSON object (any part may be missing):
//! `{"entities": [...], "features": [...], "shape": [-1, 3], "datatype": "FP32", "storage": "hash",
//! "on_store_error": "fail", "on_missing_entity": "defaults", "stored": {"key": {...}}}`.
//! The pattern is parsed and every entity's key built; with `features`, the spec is checked
//! against a model with one input of `shape` and `datatype`, and the entities are planned and
//! assembled from `stored` (no `stored`: the store is down).

use std::collections::HashMap;
use std::sync::Arc;

use modelship_features::spec::{Fallback, FeatureDef, KeyPattern, SpecConfig, Storage, Stored};
use modelship_features::{Entity, FeatureSpec};
use modelship_inference::{DataType, Signature, TensorSpec};
use serde::Deserialize;
use serde_json::{Map, Value};

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Case {
    entities: Vec<Entity>,
    features: Vec<FeatureDef>,
    shape: Option<Vec<i64>>,
    datatype: Option<String>,
    storage: Storage,
    on_store_error: Fallback,
    on_missing_entity: Fallback,
    stored: Option<Map<String, Value>>,
}

pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (pattern, rest) = text.split_once('\n').unwrap_or((text, ""));
    let case: Case = if rest.trim().is_empty() { Case::default() } else { serde_json::from_str(rest).unwrap_or_default() };
    if let Ok(key) = KeyPattern::parse(pattern) {
        // What parses is literal text and placeholders, each brace in a pair.
        let fields = key.fields().count();
        assert!(fields > 0, "{pattern:?} has a placeholder");
        assert_eq!((pattern.matches('{').count(), pattern.matches('}').count()), (fields, fields), "{pattern:?}: braces pair up");
        for (i, entity) in case.entities.iter().enumerate() {
            let _ = key.key(i, entity);
        }
    }
    if !case.features.is_empty() {
        spec(pattern, case);
    }
}

fn spec(pattern: &str, case: Case) {
    let datatype = case.datatype.as_deref().and_then(|d| d.parse().ok()).unwrap_or(DataType::Fp32);
    let shape = case.shape.unwrap_or_else(|| vec![-1, case.features.len() as i64]);
    let signature = Signature { inputs: vec![TensorSpec::new("input", datatype, shape)], outputs: vec![] };
    let config = SpecConfig {
        input: None,
        key: Some(pattern.to_owned()),
        storage: case.storage,
        features: case.features,
        on_store_error: case.on_store_error,
        on_missing_entity: case.on_missing_entity,
    };
    let Ok(spec) = FeatureSpec::new(&config, &signature) else { return };
    let Ok(plan) = spec.plan(&case.entities) else { return };
    let fetched = match case.stored {
        None => Err("connection refused".to_owned()),
        Some(stored) => Ok(plan.keys_to_fetch().into_iter().map(|k| {
            let value = stored.get(&k).and_then(|v| self::stored(spec.storage, v));
            (k, value)
        }).collect::<HashMap<_, _>>()),
    };
    if let Ok((tensor, _)) = spec.assemble(&plan, &fetched) {
        assert_eq!(tensor.shape(), [case.entities.len(), spec.features.len()], "one row per entity, one column per feature");
    }
}

/// What the store would hand back for a key holding `v`, in the spec's storage form: a hash's
/// fields as text, or the JSON text as the store client reads it.
fn stored(storage: Storage, v: &Value) -> Option<Arc<Stored>> {
    let stored = match (storage, v) {
        (_, Value::Null) => return None,
        (Storage::Hash, Value::Object(fields)) => Stored::Hash(
            fields.iter().map(|(k, v)| (k.clone(), v.as_str().map_or_else(|| v.to_string(), str::to_owned))).collect(),
        ),
        (Storage::Hash, other) => Stored::Hash(HashMap::from([("value".to_owned(), other.to_string())])),
        (Storage::Json, Value::Object(fields)) => Stored::Json(fields.clone()),
        (Storage::Json, other) => Stored::NotAnObject(other.to_string()),
    };
    Some(Arc::new(stored))
}
