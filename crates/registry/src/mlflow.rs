//! Importing a model version from an MLflow model registry over MLflow's REST API.
//!
//! The version is found by number or alias (`registered-models/alias`), its artifact location by
//! `model-versions/get-download-uri`, and the model file inside it (the ONNX file, else the file
//! the `MLmodel` names for the sklearn, xgboost or lightgbm flavor) through the tracking server's
//! artifact proxy (`mlflow-artifacts`, on by default since MLflow 2) or, for a server on this
//! machine without the proxy, a local `file:` location. The run's metrics and the version's tags
//! come along as metrics and labels.

use std::collections::BTreeMap;
use std::io::Read;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use serde_json::Value;

use crate::registry::{Progress, PushRequest};
use crate::RegistryError;

/// Which MLflow version to import.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MlflowVersion {
    Number(String),
    Alias(String),
}

impl MlflowVersion {
    /// `3` or `@champion`.
    pub fn parse(s: &str) -> Self {
        match s.strip_prefix('@') {
            Some(alias) => MlflowVersion::Alias(alias.to_owned()),
            None => MlflowVersion::Number(s.to_owned()),
        }
    }
}

/// A model version fetched from MLflow, ready to push.
pub struct Imported {
    pub request: PushRequest,
    /// The model file: ONNX, or a pickle, XGBoost or LightGBM model to convert.
    pub bytes: Bytes,
    /// MLflow's version number.
    pub mlflow_version: String,
    /// The file's name among the artifacts (`model.onnx`, `model.pkl`...).
    pub file: String,
    /// The scikit-learn version the MLmodel declares (sklearn flavor).
    pub declared_sklearn: Option<String>,
}

pub struct MlflowClient {
    base: String,
    agent: ureq::Agent,
    auth: Option<String>,
    /// The largest ONNX file it downloads (a push's own limit).
    max_bytes: u64,
}

fn err(context: &str, e: impl std::fmt::Display) -> RegistryError {
    RegistryError::Mlflow(format!("{context}: {e}"))
}

impl MlflowClient {
    /// `tracking_uri` is the server's base URL. Credentials come from `MLFLOW_TRACKING_TOKEN` or
    /// `MLFLOW_TRACKING_USERNAME` / `MLFLOW_TRACKING_PASSWORD`, as for MLflow's own clients.
    pub fn new(tracking_uri: &str, token: Option<String>, basic: Option<(String, String)>) -> Result<Self, RegistryError> {
        if !(tracking_uri.starts_with("http://") || tracking_uri.starts_with("https://")) {
            return Err(RegistryError::Config(format!(
                "--tracking-uri '{tracking_uri}' must be the http(s) URL of an MLflow tracking server"
            )));
        }
        let auth = token.map(|t| format!("Bearer {t}")).or_else(|| {
            basic.map(|(u, p)| format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))))
        });
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(10)))
            .timeout_global(Some(Duration::from_secs(600)))
            .build()
            .into();
        Ok(MlflowClient { base: tracking_uri.trim_end_matches('/').to_owned(), agent, auth, max_bytes: crate::registry::DEFAULT_MAX_ARTIFACT_BYTES })
    }

    /// The largest ONNX file it downloads (default [`crate::registry::DEFAULT_MAX_ARTIFACT_BYTES`]).
    pub fn with_max_bytes(mut self, limit: u64) -> Self {
        self.max_bytes = limit;
        self
    }

    fn too_large(&self, what: &str, size: u64) -> RegistryError {
        err(what, format!("the model is over the limit of {} bytes for one artifact; pass --max-size with a larger size if it really is a model (it is {size} bytes or more)", self.max_bytes))
    }

    fn get(&self, path: &str, query: &[(&str, &str)]) -> Result<ureq::http::Response<ureq::Body>, RegistryError> {
        let mut request = self.agent.get(format!("{}{path}", self.base));
        for (k, v) in query {
            request = request.query(*k, *v);
        }
        if let Some(auth) = &self.auth {
            request = request.header("authorization", auth);
        }
        request.call().map_err(|e| err(&format!("cannot reach {}", self.base), e))
    }

    fn get_json(&self, path: &str, query: &[(&str, &str)]) -> Result<Value, RegistryError> {
        let mut response = self.get(path, query)?;
        let status = response.status();
        let text = response.body_mut().read_to_string().map_err(|e| err(path, e))?;
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status.is_success() {
            return Ok(body);
        }
        let message = body.get("message").and_then(Value::as_str).unwrap_or("no details").to_owned();
        Err(match status.as_u16() {
            404 => err(path, format!("not found ({message})")),
            401 | 403 => err(path, format!("access denied ({message}); set MLFLOW_TRACKING_TOKEN or MLFLOW_TRACKING_USERNAME/PASSWORD")),
            code => err(path, format!("HTTP {code}: {message}")),
        })
    }

    /// Fetches `name` at `version` (number or alias): its ONNX artifact and its metadata.
    pub fn fetch(&self, name: &str, version: &MlflowVersion, progress: &dyn Progress) -> Result<Imported, RegistryError> {
        let model_version = match version {
            MlflowVersion::Number(v) => self.get_json("/api/2.0/mlflow/model-versions/get", &[("name", name), ("version", v)])?,
            MlflowVersion::Alias(a) => self.get_json("/api/2.0/mlflow/registered-models/alias", &[("name", name), ("alias", a)])?,
        };
        let mv = model_version.get("model_version").ok_or_else(|| err("model version", "the answer has no model_version"))?;
        let number = mv.get("version").and_then(Value::as_str).ok_or_else(|| err("model version", "no version number"))?.to_owned();
        let uri = self.get_json("/api/2.0/mlflow/model-versions/get-download-uri", &[("name", name), ("version", &number)])?;
        let artifact_uri = uri.get("artifact_uri").and_then(Value::as_str).ok_or_else(|| err("download uri", "missing artifact_uri"))?;
        let (file, bytes, declared_sklearn) = self.download_model(artifact_uri, progress)?;

        let mut metrics = BTreeMap::new();
        if let Some(run_id) = mv.get("run_id").and_then(Value::as_str).filter(|r| !r.is_empty())
            && let Ok(run) = self.get_json("/api/2.0/mlflow/runs/get", &[("run_id", run_id)])
        {
            for m in run.pointer("/run/data/metrics").and_then(Value::as_array).into_iter().flatten() {
                if let (Some(k), Some(v)) = (m.get("key").and_then(Value::as_str), m.get("value").and_then(Value::as_f64)) {
                    metrics.insert(k.to_owned(), v);
                }
            }
        }
        let mut labels = BTreeMap::new();
        for t in mv.get("tags").and_then(Value::as_array).into_iter().flatten() {
            if let (Some(k), Some(v)) = (t.get("key").and_then(Value::as_str), t.get("value").and_then(Value::as_str))
                && !k.starts_with("mlflow.")
            {
                labels.insert(k.to_owned(), v.to_owned());
            }
        }
        labels.insert("mlflow.version".to_owned(), number.clone());
        if let Some(run_id) = mv.get("run_id").and_then(Value::as_str).filter(|r| !r.is_empty()) {
            labels.insert("mlflow.run_id".to_owned(), run_id.to_owned());
        }
        let description = mv.get("description").and_then(Value::as_str).filter(|d| !d.is_empty()).map(str::to_owned);
        Ok(Imported {
            request: PushRequest {
                name: name.to_owned(),
                version: number.clone(),
                metrics,
                labels,
                description,
                source: Some(format!("mlflow:{}#models/{name}/{number}", self.base)),
            },
            bytes,
            mlflow_version: number,
            file,
            declared_sklearn,
        })
    }

    /// The model file of a model artifact directory: its `.onnx` file (MLflow's onnx flavor
    /// writes `model.onnx`), else the file the `MLmodel` names for the sklearn, xgboost or
    /// lightgbm flavor (converted by the caller), with the scikit-learn version it declares.
    fn download_model(&self, artifact_uri: &str, progress: &dyn Progress) -> Result<(String, Bytes, Option<String>), RegistryError> {
        let location = self.location(artifact_uri)?;
        let files = self.list(&location)?;
        if let Some(onnx) = files.iter().filter(|f| f.ends_with(".onnx")).min_by_key(|p| (*p != "model.onnx", p.to_string())) {
            let bytes = self.read_file(&location, onnx, progress)?;
            return Ok((onnx.clone(), bytes, None));
        }
        if !files.iter().any(|f| f == "MLmodel") {
            return Err(err(artifact_uri, "no .onnx file and no MLmodel in the model's artifacts; is it an MLflow model?"));
        }
        let mlmodel = self.read_file(&location, "MLmodel", &crate::registry::NoProgress)?;
        let flavor = model_flavor(&mlmodel).map_err(|why| err(&format!("{artifact_uri}/MLmodel"), why))?;
        if !files.contains(&flavor.file) {
            return Err(err(artifact_uri, format!("the MLmodel names {}, which is not among the artifacts", flavor.file)));
        }
        let bytes = self.read_file(&location, &flavor.file, progress)?;
        Ok((flavor.file, bytes, flavor.sklearn_version))
    }

    fn location(&self, artifact_uri: &str) -> Result<Location, RegistryError> {
        if let Some(local) = artifact_uri.strip_prefix("file://").or_else(|| artifact_uri.starts_with('/').then_some(artifact_uri)) {
            return Ok(Location::Local(std::path::PathBuf::from(local)));
        }
        let path = artifact_uri
            .strip_prefix("mlflow-artifacts:")
            .map(|p| p.trim_start_matches('/'))
            .ok_or_else(|| {
                err(
                    artifact_uri,
                    "artifacts are not served by the tracking server; start it with --serve-artifacts (MLflow's default)",
                )
            })?
            .to_owned();
        Ok(Location::Proxied(path))
    }

    /// The file names directly inside the artifact directory.
    fn list(&self, location: &Location) -> Result<Vec<String>, RegistryError> {
        match location {
            Location::Local(dir) => Ok(std::fs::read_dir(dir)
                .map_err(|e| err(&format!("artifact directory {}", dir.display()), e))?
                .filter_map(Result::ok)
                .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                .collect()),
            Location::Proxied(path) => {
                let listing = self.get_json("/api/2.0/mlflow-artifacts/artifacts", &[("path", path)])?;
                Ok(listing
                    .get("files")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter(|f| !f.get("is_dir").and_then(Value::as_bool).unwrap_or(false))
                    .filter_map(|f| f.get("path").and_then(Value::as_str))
                    .map(|p| p.rsplit('/').next().unwrap_or(p).to_owned())
                    .collect())
            }
        }
    }

    /// One file of the artifact directory, bounded by the size limit. `name` is a plain file
    /// name from the listing (never a path).
    fn read_file(&self, location: &Location, name: &str, progress: &dyn Progress) -> Result<Bytes, RegistryError> {
        if name.is_empty() || name.contains('/') || name.contains('\\') || name == "." || name == ".." {
            return Err(err(name, "not a plain file name"));
        }
        match location {
            Location::Local(dir) => {
                let file = dir.join(name);
                let what = file.display().to_string();
                let meta = std::fs::metadata(&file).map_err(|e| err(&what, e))?;
                if !meta.is_file() {
                    return Err(err(&what, "not a regular file"));
                }
                if meta.len() > self.max_bytes {
                    return Err(self.too_large(&what, meta.len()));
                }
                let mut bytes = Vec::with_capacity(meta.len() as usize);
                std::fs::File::open(&file).and_then(|f| f.take(self.max_bytes + 1).read_to_end(&mut bytes)).map_err(|e| err(&what, e))?;
                if bytes.len() as u64 > self.max_bytes {
                    return Err(self.too_large(&what, bytes.len() as u64));
                }
                Ok(Bytes::from(bytes))
            }
            Location::Proxied(path) => {
                let url_path = format!("/api/2.0/mlflow-artifacts/artifacts/{path}/{name}");
                let mut response = self.get(&url_path, &[])?;
                if !response.status().is_success() {
                    return Err(err(&url_path, format!("HTTP {}", response.status())));
                }
                let total: u64 = response.headers().get("content-length").and_then(|v| v.to_str().ok()?.parse().ok()).unwrap_or(0);
                if total > self.max_bytes {
                    return Err(self.too_large(&url_path, total));
                }
                progress.start("download", total);
                let mut reader = response.body_mut().with_config().limit(u64::MAX).reader();
                let mut bytes = Vec::with_capacity(total as usize);
                let mut buf = vec![0u8; 256 * 1024];
                loop {
                    let n = reader.read(&mut buf).map_err(|e| err(&url_path, e))?;
                    if n == 0 {
                        break;
                    }
                    bytes.extend_from_slice(&buf[..n]);
                    if bytes.len() as u64 > self.max_bytes {
                        return Err(self.too_large(&url_path, bytes.len() as u64));
                    }
                    progress.advance(n as u64);
                }
                progress.finish();
                Ok(Bytes::from(bytes))
            }
        }
    }
}

/// Where a version's artifacts are.
enum Location {
    /// A directory on this machine (`file:` locations).
    Local(std::path::PathBuf),
    /// Behind the tracking server's artifact proxy.
    Proxied(String),
}

/// The model file an `MLmodel` names, for the flavors modelship converts.
#[derive(Debug, PartialEq, Eq)]
struct Flavor {
    file: String,
    sklearn_version: Option<String>,
}

#[derive(serde::Deserialize)]
struct MlModel {
    #[serde(default)]
    flavors: BTreeMap<String, serde_yaml_ng::Value>,
}

/// Reads an `MLmodel` (YAML): the sklearn flavor's `pickled_model`, or the xgboost or lightgbm
/// flavor's `data`.
fn model_flavor(mlmodel: &[u8]) -> Result<Flavor, String> {
    let doc: MlModel = serde_yaml_ng::from_slice(mlmodel).map_err(|e| format!("not a readable MLmodel: {e}"))?;
    let text = |v: &serde_yaml_ng::Value, key: &str| v.get(key).and_then(|x| x.as_str()).map(str::to_owned);
    let plain = |f: String| -> Result<String, String> {
        if f.is_empty() || f.contains('/') || f.contains('\\') || f == ".." || f == "." {
            Err(format!("the model file {f:?} is not a plain file name"))
        } else {
            Ok(f)
        }
    };
    if let Some(sk) = doc.flavors.get("sklearn")
        && let Some(file) = text(sk, "pickled_model")
    {
        return Ok(Flavor { file: plain(file)?, sklearn_version: text(sk, "sklearn_version") });
    }
    for flavor in ["xgboost", "lightgbm"] {
        if let Some(f) = doc.flavors.get(flavor)
            && let Some(file) = text(f, "data")
        {
            return Ok(Flavor { file: plain(file)?, sklearn_version: None });
        }
    }
    let names: Vec<&str> = doc.flavors.keys().map(String::as_str).collect();
    Err(format!(
        "no flavor modelship takes (onnx, sklearn, xgboost, lightgbm); it has {}: log the model with mlflow.onnx, or export it to ONNX yourself",
        if names.is_empty() { "none".to_owned() } else { names.join(", ") }
    ))
}

#[cfg(test)]
mod flavor_tests {
    use super::*;

    #[test]
    fn the_model_file_of_each_flavor() {
        let sk = b"flavors:\n  python_function:\n    loader_module: mlflow.sklearn\n  sklearn:\n    pickled_model: model.pkl\n    serialization_format: cloudpickle\n    sklearn_version: 1.9.1\n";
        assert_eq!(model_flavor(sk).unwrap(), Flavor { file: "model.pkl".into(), sklearn_version: Some("1.9.1".into()) });
        let xgb = b"flavors:\n  xgboost:\n    data: model.xgb\n    model_class: xgboost.sklearn.XGBClassifier\n";
        assert_eq!(model_flavor(xgb).unwrap(), Flavor { file: "model.xgb".into(), sklearn_version: None });
        let lgb = b"flavors:\n  lightgbm:\n    data: model.lgb\n";
        assert_eq!(model_flavor(lgb).unwrap().file, "model.lgb");
        let torch = b"flavors:\n  pytorch:\n    model_data: data\n";
        assert!(model_flavor(torch).unwrap_err().contains("it has pytorch"));
        let escape = b"flavors:\n  sklearn:\n    pickled_model: ../../etc/passwd\n";
        assert!(model_flavor(escape).unwrap_err().contains("not a plain file name"));
    }
}
