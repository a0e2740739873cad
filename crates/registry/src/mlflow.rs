//! Importing a model version from an MLflow model registry over MLflow's REST API.
//!
//! The version is found by number or alias (`registered-models/alias`), its artifact location by
//! `model-versions/get-download-uri`, and the ONNX file inside it through the tracking server's
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
    pub bytes: Bytes,
    /// MLflow's version number.
    pub mlflow_version: String,
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
        let bytes = self.download_onnx(artifact_uri, progress)?;

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
        })
    }

    /// The `.onnx` file of a model artifact directory (MLflow's onnx flavor writes `model.onnx`).
    fn download_onnx(&self, artifact_uri: &str, progress: &dyn Progress) -> Result<Bytes, RegistryError> {
        if let Some(local) = artifact_uri.strip_prefix("file://").or_else(|| artifact_uri.starts_with('/').then_some(artifact_uri)) {
            let dir = std::path::Path::new(local);
            let file = std::fs::read_dir(dir)
                .map_err(|e| err(&format!("artifact directory {local}"), e))?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "onnx"))
                .min()
                .ok_or_else(|| err(artifact_uri, "no .onnx file in the model's artifacts"))?;
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
            return Ok(Bytes::from(bytes));
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
        let listing = self.get_json("/api/2.0/mlflow-artifacts/artifacts", &[("path", &path)])?;
        let file = listing
            .get("files")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|f| !f.get("is_dir").and_then(Value::as_bool).unwrap_or(false))
            .filter_map(|f| f.get("path").and_then(Value::as_str))
            .filter(|p| p.ends_with(".onnx"))
            .min_by_key(|p| (*p != "model.onnx", p.to_string()))
            .ok_or_else(|| err(artifact_uri, "no .onnx file in the model's artifacts; is it an ONNX model?"))?
            .to_owned();
        let url_path = format!("/api/2.0/mlflow-artifacts/artifacts/{path}/{file}");
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
