//! The feature spec and the pure part of enrichment: which feature comes from where, how an
//! entity becomes a store key, and how request fields, stored values and defaults become one row
//! of the model input, in the order of the model's signature.

use std::collections::HashMap;
use std::sync::Arc;

use modelship_inference::{DataType, Signature, Tensor, TensorData};
use serde::Deserialize;
use serde_json::{Map, Value};

/// One entity of a request: its key fields (`customer_id`) and any features it carries itself.
pub type Entity = Map<String, Value>;

/// Where a feature's value comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// A field of the request's entity.
    Request,
    /// The feature store (unless the entity carries the field itself).
    #[default]
    Store,
}

/// A feature's type, as stored and as checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    #[default]
    Float,
    Int,
    Bool,
}

/// How an entity's features are stored under its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Storage {
    /// A Redis hash of field -> value (`HSET key f1 v1 f2 v2`), values as text.
    #[default]
    Hash,
    /// One JSON object per key (`SET key '{"f1": 1.5}'`), values typed.
    Json,
}

/// What to do when features cannot be had.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Fallback {
    /// Answer with an error (503 for the store, 404 for a missing entity).
    #[default]
    Fail,
    /// Use each feature's declared default and say so in the response.
    Defaults,
}

/// One feature as configured.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureDef {
    pub name: String,
    #[serde(default)]
    pub source: Source,
    /// Column in the model input; default: the feature's place in the list.
    #[serde(default)]
    pub position: Option<usize>,
    #[serde(rename = "type", default)]
    pub kind: Kind,
    #[serde(default)]
    pub default: Option<f64>,
    /// The field name in the store, when it differs from `name`.
    #[serde(default)]
    pub field: Option<String>,
}

/// A checked feature, at its position.
#[derive(Debug, Clone, PartialEq)]
pub struct Feature {
    pub name: String,
    pub source: Source,
    pub kind: Kind,
    pub default: Option<f64>,
    pub field: String,
}

impl From<&FeatureDef> for Feature {
    fn from(def: &FeatureDef) -> Self {
        Feature {
            name: def.name.clone(),
            source: def.source,
            kind: def.kind,
            default: def.default,
            field: def.field.clone().unwrap_or_else(|| def.name.clone()),
        }
    }
}

impl Kind {
    /// A value of this kind written as text (a Redis hash field, a CSV cell): floats must be
    /// finite, booleans `true`/`false`/`1`/`0`. `None` when the text is not one.
    pub fn parse_text(self, text: &str) -> Option<f64> {
        let t = text.trim();
        match self {
            Kind::Float => t.parse::<f64>().ok().filter(|v| v.is_finite()),
            Kind::Int => t.parse::<i64>().ok().map(|i| i as f64),
            Kind::Bool => match t {
                "true" | "1" => Some(1.0),
                "false" | "0" => Some(0.0),
                _ => None,
            },
        }
    }
}

/// The key pattern: literal text and `{field}` placeholders filled from the entity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPattern {
    pattern: String,
    parts: Vec<KeyPart>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum KeyPart {
    Literal(String),
    Field(String),
}

impl KeyPattern {
    pub fn parse(pattern: &str) -> Result<Self, String> {
        let unopened = || format!("features.key '{pattern}' has a '}}' without its '{{'");
        let mut parts = Vec::new();
        let mut rest = pattern;
        while let Some(open) = rest.find('{') {
            let literal = &rest[..open];
            if literal.contains('}') {
                return Err(unopened());
            }
            if !literal.is_empty() {
                parts.push(KeyPart::Literal(literal.to_owned()));
            }
            let after = &rest[open + 1..];
            let close = after.find('}').ok_or_else(|| format!("features.key '{pattern}' has a '{{' without its '}}'"))?;
            let field = &after[..close];
            if field.is_empty() || !field.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("features.key '{pattern}': placeholder '{{{field}}}' must be a field name of letters, digits and _"));
            }
            parts.push(KeyPart::Field(field.to_owned()));
            rest = &after[close + 1..];
        }
        if rest.contains('}') {
            return Err(unopened());
        }
        if !rest.is_empty() {
            parts.push(KeyPart::Literal(rest.to_owned()));
        }
        if !parts.iter().any(|p| matches!(p, KeyPart::Field(_))) {
            return Err(format!(
                "features.key '{pattern}' has no placeholder; name the entity field in braces, e.g. features:customer:{{customer_id}}"
            ));
        }
        Ok(KeyPattern { pattern: pattern.to_owned(), parts })
    }

    /// The fields an entity must carry.
    pub fn fields(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            KeyPart::Field(f) => Some(f.as_str()),
            KeyPart::Literal(_) => None,
        })
    }

    /// The key of entity `index`. Key values are short, plain identifiers (letters, digits,
    /// `_ - . @`), so a request can never address keys outside the pattern.
    pub fn key(&self, index: usize, entity: &Entity) -> Result<String, FeatureError> {
        let mut key = String::with_capacity(self.pattern.len() + 16);
        for part in &self.parts {
            match part {
                KeyPart::Literal(l) => key.push_str(l),
                KeyPart::Field(f) => {
                    let value = match entity.get(f) {
                        Some(Value::String(s)) => s.clone(),
                        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => n.to_string(),
                        Some(other) => {
                            return Err(FeatureError::BadEntity(format!(
                                "entity {index}: '{f}' is {other}; key fields must be strings or integers"
                            )));
                        }
                        None => {
                            return Err(FeatureError::BadEntity(format!(
                                "entity {index} has no '{f}', which the key pattern {} needs",
                                self.pattern
                            )));
                        }
                    };
                    let plain = !value.is_empty()
                        && value.len() <= 256
                        && value.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '@'));
                    if !plain {
                        return Err(FeatureError::BadEntity(format!(
                            "entity {index}: '{f}' must be 1 to 256 letters, digits or _ - . @"
                        )));
                    }
                    key.push_str(&value);
                }
            }
        }
        Ok(key)
    }
}

/// Why a request could not be enriched. The server maps each to a status.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FeatureError {
    /// The request's entities are malformed (400).
    #[error("{0}")]
    BadEntity(String),
    /// No features are stored under the entity's key (404).
    #[error("no features are stored under key '{key}' (entity {entity}); load them (`modelship features load`) or check the entity id")]
    EntityNotFound { entity: usize, key: String },
    /// The entity exists but lacks a feature that has no default (404).
    #[error("key '{key}' has no field '{field}' (feature '{feature}'; read from the store itself, past the cache) and the feature has no default; load it (`modelship features load`) or give the feature a default")]
    MissingFeature { key: String, feature: String, field: String },
    /// The store cannot be reached in time (503).
    #[error("the feature store is unavailable: {0}")]
    StoreUnavailable(String),
    /// A stored value is not of the feature's type (502: the store's data is wrong, not the request).
    #[error("key '{key}': feature '{feature}' is stored as {value}, which is not {expected}; fix the stored data")]
    BadStoredValue { key: String, feature: String, value: String, expected: &'static str },
}

/// Entity `entity` got the defaults of `features`, for `reason`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Defaulted {
    pub entity: usize,
    pub features: Vec<String>,
    pub reason: String,
}

/// What one key holds, as read from the store.
#[derive(Debug, Clone, PartialEq)]
pub enum Stored {
    /// A hash's fields, as text.
    Hash(HashMap<String, String>),
    /// A JSON object's fields.
    Json(Map<String, Value>),
    /// A JSON value that is not an object (a data error, reported when a feature is read).
    NotAnObject(String),
}

/// The values a fetch returned: per key, what is stored (`None`: nothing is) or the store error.
pub type Fetched = Result<HashMap<String, Option<Arc<Stored>>>, String>;

/// The checked spec.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureSpec {
    /// The model input the features build.
    pub input: String,
    pub datatype: DataType,
    pub key: KeyPattern,
    pub storage: Storage,
    /// By position: `features[i]` is column `i` of the input.
    pub features: Vec<Feature>,
    pub on_store_error: Fallback,
    pub on_missing_entity: Fallback,
}

/// Every part of the configuration, as given.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SpecConfig {
    pub input: Option<String>,
    pub key: Option<String>,
    pub storage: Storage,
    pub features: Vec<FeatureDef>,
    pub on_store_error: Fallback,
    pub on_missing_entity: Fallback,
}

impl FeatureSpec {
    /// Checks `config` against the model's `signature`; every problem is reported.
    pub fn new(config: &SpecConfig, signature: &Signature) -> Result<Self, Vec<String>> {
        let mut problems = Vec::new();
        let key = match config.key.as_deref() {
            None => {
                problems.push("features.key is missing: the key pattern of an entity, e.g. features:customer:{customer_id}".to_owned());
                None
            }
            Some(k) => KeyPattern::parse(k).map_err(|e| problems.push(e)).ok(),
        };
        let input = match (&config.input, signature.inputs.as_slice()) {
            (Some(name), _) => match signature.input(name) {
                Some((_, spec)) => Some(spec),
                None => {
                    problems.push(format!("features.input '{name}' is not a model input; the model's inputs are: {}", signature.input_names().join(", ")));
                    None
                }
            },
            (None, [only]) => Some(only),
            (None, _) => {
                problems.push(format!(
                    "features.input is missing and the model has {} inputs ({}); name the one the features build",
                    signature.inputs.len(),
                    signature.input_names().join(", ")
                ));
                None
            }
        };
        if config.features.is_empty() {
            problems.push("features.features is empty: list the model's features with their source (request or store)".to_owned());
        }
        let count = config.features.len();
        if let Some(spec) = input {
            let fits = spec.shape.len() == 2 && spec.shape[0] < 0 && (spec.shape[1] < 0 || spec.shape[1] as usize == count);
            if !fits {
                problems.push(format!(
                    "model input '{}' has shape {:?}; features build a [N, {count}] input (one row per entity, one column per feature)",
                    spec.name, spec.shape
                ));
            }
            if !matches!(spec.datatype, DataType::Fp32 | DataType::Fp64 | DataType::Int32 | DataType::Int64) {
                problems.push(format!("model input '{}' is {}; features can build FP32, FP64, INT32 or INT64 inputs", spec.name, spec.datatype));
            }
        }
        let mut slots: Vec<Option<Feature>> = vec![None; count];
        let mut names = std::collections::HashSet::new();
        for (i, def) in config.features.iter().enumerate() {
            if !names.insert(def.name.as_str()) {
                problems.push(format!("feature '{}' is listed twice", def.name));
            }
            let position = def.position.unwrap_or(i);
            if position >= count {
                problems.push(format!("feature '{}' has position {position}, past the last column ({})", def.name, count.saturating_sub(1)));
                continue;
            }
            if let Some(spec) = input
                && matches!(spec.datatype, DataType::Int32 | DataType::Int64)
                && def.kind == Kind::Float
            {
                problems.push(format!("feature '{}' is a float but model input '{}' is {}; declare it type: int", def.name, spec.name, spec.datatype));
            }
            if let (Some(d), Kind::Int) = (def.default, def.kind)
                && d.fract() != 0.0
            {
                problems.push(format!("feature '{}' is an int but its default {d} is not", def.name));
            }
            if let Some(taken) = slots[position].replace(Feature::from(def)) {
                problems.push(format!("features '{}' and '{}' both have position {position}", taken.name, def.name));
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let (Some(key), Some(input)) = (key, input) else { return Err(problems) };
        Ok(FeatureSpec {
            input: input.name.clone(),
            datatype: input.datatype,
            key,
            storage: config.storage,
            features: slots.into_iter().map(|s| s.expect("every position is filled: positions are unique and below count")).collect(),
            on_store_error: config.on_store_error,
            on_missing_entity: config.on_missing_entity,
        })
    }

    /// Reads what the entities carry and which keys must be fetched.
    pub fn plan(&self, entities: &[Entity]) -> Result<Plan, FeatureError> {
        if entities.is_empty() {
            return Err(FeatureError::BadEntity("'entities' is empty; give at least one entity".to_owned()));
        }
        let mut rows = Vec::with_capacity(entities.len());
        for (index, entity) in entities.iter().enumerate() {
            let mut values = Vec::with_capacity(self.features.len());
            let mut needs_store = false;
            for f in &self.features {
                let given = match entity.get(&f.name) {
                    None | Some(Value::Null) => None,
                    Some(v) => Some(request_value(index, f, v)?),
                };
                match (given, f.source) {
                    (Some(v), _) => values.push(Some(v)),
                    (None, Source::Store) => {
                        needs_store = true;
                        values.push(None);
                    }
                    (None, Source::Request) => match f.default {
                        Some(d) => values.push(Some(d)),
                        None => {
                            return Err(FeatureError::BadEntity(format!(
                                "entity {index} has no '{}', a request feature with no default",
                                f.name
                            )));
                        }
                    },
                }
            }
            let key = if needs_store { Some(self.key.key(index, entity)?) } else { None };
            rows.push(RowPlan { key, values });
        }
        Ok(Plan { rows })
    }

    /// Fills each row from what was fetched (or the defaults, as the fallbacks allow) and builds
    /// the input tensor.
    pub fn assemble(&self, plan: &Plan, fetched: &Fetched) -> Result<(Tensor, Vec<Defaulted>), FeatureError> {
        let mut defaulted = Vec::new();
        let mut data: Vec<f64> = Vec::with_capacity(plan.rows.len() * self.features.len());
        for (index, row) in plan.rows.iter().enumerate() {
            let mut used: Vec<String> = Vec::new();
            let mut reason = String::new();
            let stored: Option<&Stored> = match (&row.key, fetched) {
                (None, _) => None,
                (Some(_), Err(e)) => {
                    if self.on_store_error == Fallback::Fail {
                        return Err(FeatureError::StoreUnavailable(e.clone()));
                    }
                    reason = format!("feature store unavailable: {e}");
                    None
                }
                (Some(key), Ok(found)) => match found.get(key).and_then(|s| s.as_deref()) {
                    Some(s) => Some(s),
                    None => {
                        if self.on_missing_entity == Fallback::Fail {
                            return Err(FeatureError::EntityNotFound { entity: index, key: key.clone() });
                        }
                        reason = format!("no features stored under key '{key}'");
                        None
                    }
                },
            };
            for (f, given) in self.features.iter().zip(&row.values) {
                if let Some(v) = given {
                    data.push(*v);
                    continue;
                }
                let key = row.key.as_deref().unwrap_or_default();
                let value = match stored {
                    Some(s) => stored_value(key, f, s)?,
                    None => None,
                };
                match (value, f.default) {
                    (Some(v), _) => data.push(v),
                    (None, Some(d)) => {
                        if stored.is_some() {
                            reason = "some fields are not stored".to_owned();
                        }
                        used.push(f.name.clone());
                        data.push(d);
                    }
                    (None, None) if stored.is_some() => {
                        return Err(FeatureError::MissingFeature { key: key.to_owned(), feature: f.name.clone(), field: f.field.clone() });
                    }
                    (None, None) => {
                        // Only reached with a fallback to defaults: the feature has none.
                        return Err(if reason.starts_with("feature store") {
                            FeatureError::StoreUnavailable(format!("{reason}; and feature '{}' has no default to fall back to", f.name))
                        } else {
                            FeatureError::EntityNotFound { entity: index, key: key.to_owned() }
                        });
                    }
                }
            }
            if !used.is_empty() {
                defaulted.push(Defaulted { entity: index, features: used, reason });
            }
        }
        let shape = vec![plan.rows.len(), self.features.len()];
        let data = match self.datatype {
            DataType::Fp32 => TensorData::Fp32(data.iter().map(|&v| v as f32).collect()),
            DataType::Fp64 => TensorData::Fp64(data),
            DataType::Int32 => TensorData::Int32(data.iter().map(|&v| v as i32).collect()),
            _ => TensorData::Int64(data.iter().map(|&v| v as i64).collect()),
        };
        let tensor = Tensor::new(self.input.clone(), shape, data).map_err(|e| FeatureError::BadEntity(e.to_string()))?;
        Ok((tensor, defaulted))
    }
}

/// One entity's values and key, before the fetch.
#[derive(Debug, Clone, PartialEq)]
pub struct RowPlan {
    key: Option<String>,
    values: Vec<Option<f64>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    rows: Vec<RowPlan>,
}

impl Plan {
    /// Every distinct key some row needs, in first-seen order.
    pub fn keys_to_fetch(&self) -> Vec<String> {
        let mut seen = std::collections::HashSet::new();
        self.rows.iter().filter_map(|r| r.key.clone()).filter(|k| seen.insert(k.clone())).collect()
    }
}

/// A request field's value for feature `f`.
fn request_value(index: usize, f: &Feature, v: &Value) -> Result<f64, FeatureError> {
    let bad = || FeatureError::BadEntity(format!("entity {index}: '{}' is {v}, not {}", f.name, kind_name(f.kind)));
    match (f.kind, v) {
        (Kind::Float, Value::Number(n)) => n.as_f64().ok_or_else(bad),
        (Kind::Int, Value::Number(n)) => n.as_i64().map(|i| i as f64).ok_or_else(bad),
        (Kind::Bool, Value::Bool(b)) => Ok(f64::from(u8::from(*b))),
        _ => Err(bad()),
    }
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Float => "a number",
        Kind::Int => "an integer",
        Kind::Bool => "true or false",
    }
}

/// Feature `f` of what `key` holds: `None` when the field is absent.
fn stored_value(key: &str, f: &Feature, stored: &Stored) -> Result<Option<f64>, FeatureError> {
    let bad = |value: String| FeatureError::BadStoredValue { key: key.to_owned(), feature: f.name.clone(), value, expected: kind_name(f.kind) };
    match stored {
        Stored::NotAnObject(raw) => Err(FeatureError::BadStoredValue {
            key: key.to_owned(),
            feature: f.name.clone(),
            value: raw.clone(),
            expected: "a JSON object of features",
        }),
        Stored::Hash(fields) => {
            let Some(text) = fields.get(&f.field) else { return Ok(None) };
            f.kind.parse_text(text).map(Some).ok_or_else(|| bad(format!("'{}'", text.chars().take(64).collect::<String>())))
        }
        Stored::Json(fields) => {
            let Some(v) = fields.get(&f.field) else { return Ok(None) };
            if v.is_null() {
                return Ok(None);
            }
            let parsed = match (f.kind, v) {
                (Kind::Float, Value::Number(n)) => n.as_f64(),
                (Kind::Int, Value::Number(n)) => n.as_i64().map(|i| i as f64),
                (Kind::Bool, Value::Bool(b)) => Some(f64::from(u8::from(*b))),
                _ => None,
            };
            parsed.map(Some).ok_or_else(|| bad(v.to_string().chars().take(64).collect()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use modelship_inference::TensorSpec;
    use serde_json::json;

    fn signature(cols: i64, datatype: DataType) -> Signature {
        Signature { inputs: vec![TensorSpec::new("input", datatype, vec![-1, cols])], outputs: vec![] }
    }

    fn config() -> SpecConfig {
        let defs: Vec<FeatureDef> = serde_json::from_value(json!([
            {"name": "amount", "source": "request", "position": 2},
            {"name": "avg_30d", "position": 0},
            {"name": "txn_count", "type": "int", "position": 1, "default": 0},
        ]))
        .unwrap();
        SpecConfig { key: Some("features:customer:{customer_id}".to_owned()), features: defs, ..Default::default() }
    }

    fn entity(v: Value) -> Entity {
        v.as_object().unwrap().clone()
    }

    fn hash(pairs: &[(&str, &str)]) -> Option<Arc<Stored>> {
        Some(Arc::new(Stored::Hash(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())))
    }

    #[test]
    fn builds_rows_in_the_signature_order() {
        let spec = FeatureSpec::new(&config(), &signature(3, DataType::Fp32)).unwrap();
        let entities = [entity(json!({"customer_id": "c1", "amount": 12.5})), entity(json!({"customer_id": 7, "amount": 1, "avg_30d": 3.0}))];
        let plan = spec.plan(&entities).unwrap();
        assert_eq!(plan.keys_to_fetch(), vec!["features:customer:c1", "features:customer:7"]);
        let fetched = HashMap::from([
            ("features:customer:c1".to_owned(), hash(&[("avg_30d", "40.25"), ("txn_count", "3")])),
            ("features:customer:7".to_owned(), hash(&[("txn_count", "9"), ("avg_30d", "999")])),
        ]);
        let (tensor, defaulted) = spec.assemble(&plan, &Ok(fetched)).unwrap();
        assert_eq!(tensor.shape(), &[2, 3]);
        // avg_30d, txn_count, amount; entity 1 carries its own avg_30d, which wins.
        assert_eq!(tensor.data(), &TensorData::Fp32(vec![40.25, 3.0, 12.5, 3.0, 9.0, 1.0]));
        assert!(defaulted.is_empty());
    }

    #[test]
    fn falls_back_or_fails_as_configured() {
        let spec = FeatureSpec::new(&config(), &signature(3, DataType::Fp64)).unwrap();
        let plan = spec.plan(&[entity(json!({"customer_id": "c1", "amount": 1.0}))]).unwrap();
        let err = spec.assemble(&plan, &Err("timed out after 50 ms".to_owned())).unwrap_err();
        assert_eq!(err.to_string(), "the feature store is unavailable: timed out after 50 ms");
        let err = spec.assemble(&plan, &Ok(HashMap::from([("features:customer:c1".to_owned(), None)]))).unwrap_err();
        assert!(matches!(err, FeatureError::EntityNotFound { entity: 0, .. }), "{err}");
        // A field that is not stored takes its default; one without a default is an error.
        let (t, d) = spec.assemble(&plan, &Ok(HashMap::from([("features:customer:c1".to_owned(), hash(&[("avg_30d", "2")]))]))).unwrap();
        assert_eq!(t.data(), &TensorData::Fp64(vec![2.0, 0.0, 1.0]));
        assert_eq!(d, vec![Defaulted { entity: 0, features: vec!["txn_count".to_owned()], reason: "some fields are not stored".to_owned() }]);
        let err = spec.assemble(&plan, &Ok(HashMap::from([("features:customer:c1".to_owned(), hash(&[("txn_count", "2")]))]))).unwrap_err();
        assert_eq!(
            err.to_string(),
            "key 'features:customer:c1' has no field 'avg_30d' (feature 'avg_30d'; read from the store itself, past the cache) and the feature has no default; load it (`modelship features load`) or give the feature a default"
        );

        let mut lenient = config();
        lenient.on_store_error = Fallback::Defaults;
        lenient.on_missing_entity = Fallback::Defaults;
        lenient.features[1].default = Some(-1.0);
        let spec = FeatureSpec::new(&lenient, &signature(3, DataType::Fp64)).unwrap();
        let (t, d) = spec.assemble(&plan, &Err("connection refused".to_owned())).unwrap();
        assert_eq!(t.data(), &TensorData::Fp64(vec![-1.0, 0.0, 1.0]));
        assert_eq!(d[0].features, vec!["avg_30d", "txn_count"]);
        assert_eq!(d[0].reason, "feature store unavailable: connection refused");
        let (_, d) = spec.assemble(&plan, &Ok(HashMap::from([("features:customer:c1".to_owned(), None)]))).unwrap();
        assert_eq!(d[0].reason, "no features stored under key 'features:customer:c1'");
    }

    #[test]
    fn names_bad_entities_and_bad_stored_data() {
        let spec = FeatureSpec::new(&config(), &signature(3, DataType::Fp32)).unwrap();
        let err = |e: Value| spec.plan(&[entity(e)]).unwrap_err().to_string();
        assert_eq!(err(json!({"amount": 1})), "entity 0 has no 'customer_id', which the key pattern features:customer:{customer_id} needs");
        assert_eq!(err(json!({"customer_id": "c1"})), "entity 0 has no 'amount', a request feature with no default");
        assert_eq!(err(json!({"customer_id": "c1", "amount": "12"})), "entity 0: 'amount' is \"12\", not a number");
        assert_eq!(err(json!({"customer_id": "*", "amount": 1})), "entity 0: 'customer_id' must be 1 to 256 letters, digits or _ - . @");
        assert_eq!(err(json!({"customer_id": "a:b", "amount": 1})), "entity 0: 'customer_id' must be 1 to 256 letters, digits or _ - . @");
        assert_eq!(spec.plan(&[]).unwrap_err().to_string(), "'entities' is empty; give at least one entity");

        let plan = spec.plan(&[entity(json!({"customer_id": "c1", "amount": 1}))]).unwrap();
        let bad = |stored: Stored| spec.assemble(&plan, &Ok(HashMap::from([("features:customer:c1".to_owned(), Some(Arc::new(stored)))]))).unwrap_err().to_string();
        assert_eq!(
            bad(Stored::Hash(HashMap::from([("avg_30d".to_owned(), "lots".to_owned())]))),
            "key 'features:customer:c1': feature 'avg_30d' is stored as 'lots', which is not a number; fix the stored data"
        );
        assert_eq!(
            bad(Stored::Json(entity(json!({"avg_30d": 1.5, "txn_count": 2.5})))),
            "key 'features:customer:c1': feature 'txn_count' is stored as 2.5, which is not an integer; fix the stored data"
        );
        assert!(bad(Stored::NotAnObject("[1,2]".to_owned())).contains("not a JSON object of features"));
    }

    #[test]
    fn checks_the_spec_against_the_model() {
        let problems = |c: &SpecConfig, cols: i64, dt: DataType| FeatureSpec::new(c, &signature(cols, dt)).unwrap_err();
        assert_eq!(problems(&config(), 4, DataType::Fp32), vec![
            "model input 'input' has shape [-1, 4]; features build a [N, 3] input (one row per entity, one column per feature)".to_owned()
        ]);
        assert!(problems(&config(), 3, DataType::Int64).iter().any(|p| p.contains("'avg_30d' is a float")));
        let mut c = config();
        c.features[0].position = Some(0);
        c.key = Some("features:{".to_owned());
        let p = problems(&c, 3, DataType::Fp32);
        assert!(p.iter().any(|p| p.contains("both have position 0")), "{p:?}");
        assert!(p.iter().any(|p| p.contains("without its '}'")), "{p:?}");
        for stray in ["features:}{customer_id}", "features:{customer_id}}"] {
            c.key = Some(stray.to_owned());
            assert!(problems(&c, 3, DataType::Fp32).iter().any(|p| p.contains("has a '}' without its '{'")), "{stray}");
        }
        c.key = Some("features:static".to_owned());
        assert!(problems(&c, 3, DataType::Fp32).iter().any(|p| p.contains("has no placeholder")));
    }
}
