//! The model repository extension (Triton's `RepositoryIndex`, `RepositoryModelLoad`,
//! `RepositoryModelUnload`) over the registry: the repository is the registry, loading a model
//! serves it under its registry name beside the server's own model, unloading stops serving it.
//!
//! These operations change what the server serves, so they are control operations: REST serves
//! them on the admin listener only, gRPC only with the admin bearer token.

use std::sync::Arc;

use modelship_inference::Backend;
use modelship_registry::{ModelRef, NoProgress, Registry};
use serde::Serialize;

use crate::error::ApiError;
use crate::model::{LoadedModel, ModelSlot, ModelSpec, Served};
use crate::pool::PoolConfig;
use crate::state::AppState;

/// One row of the repository index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IndexEntry {
    pub name: String,
    /// The served version when loaded; else the version a load would serve.
    pub version: String,
    /// `READY`, `LOADING`, `UNAVAILABLE`.
    pub state: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

pub struct Repository {
    registry: Option<Arc<Registry>>,
    backend: Arc<dyn Backend>,
    /// How models loaded through the repository run.
    pool: PoolConfig,
    /// The model the server was started with: served by the traffic machinery, never unloaded here.
    primary: String,
    /// One load or unload at a time.
    lock: tokio::sync::Mutex<()>,
}

/// Refuses Triton's load overrides (`config`, `file:...`): models come from the registry only.
pub fn refuse_overrides<'a>(mut parameters: impl Iterator<Item = &'a str>) -> Result<(), ApiError> {
    match parameters.find(|k| *k == "config" || k.starts_with("file:")) {
        None => Ok(()),
        Some(key) => Err(ApiError::Invalid(format!(
            "parameter '{key}' is not supported: models are loaded from the registry (push them with `modelship models push`)"
        ))),
    }
}

/// The alias a load serves when no version is asked for and the model has it.
pub const DEFAULT_ALIAS: &str = "production";

impl Repository {
    pub fn new(registry: Option<Arc<Registry>>, backend: Arc<dyn Backend>, pool: PoolConfig, primary: String) -> Self {
        Repository { registry, backend, pool, primary, lock: tokio::sync::Mutex::new(()) }
    }

    fn registry(&self) -> Result<&Arc<Registry>, ApiError> {
        self.registry.as_ref().ok_or_else(|| {
            ApiError::Conflict("this server has no model registry to load from; start it with --registry DIR".to_owned())
        })
    }

    /// Every model the registry holds and every model served, with its state; `ready_only`
    /// keeps the served ones.
    pub async fn index(&self, state: &AppState, ready_only: bool) -> Result<Vec<IndexEntry>, ApiError> {
        let mut entries: std::collections::BTreeMap<String, IndexEntry> = std::collections::BTreeMap::new();
        if let Some(registry) = &self.registry {
            let records = registry.list(None).await.map_err(|e| ApiError::Internal(format!("cannot read the registry: {e}")))?;
            for r in records {
                // The newest version is listed last; keep it as the one a plain load would take.
                entries.insert(
                    r.name.clone(),
                    IndexEntry { name: r.name, version: r.version, state: "UNAVAILABLE".to_owned(), reason: "not loaded".to_owned() },
                );
            }
        }
        for (name, slot) in state.models.snapshot().iter() {
            let (version, st, reason) = match slot {
                ModelSlot::Ready(served) => (served.table.stable.clone(), "READY", String::new()),
                ModelSlot::Loading { version } => (version.clone(), "LOADING", String::new()),
                ModelSlot::Failed { version, error } => (version.clone(), "UNAVAILABLE", error.clone()),
            };
            entries.insert(name.clone(), IndexEntry { name: name.clone(), version, state: st.to_owned(), reason });
        }
        Ok(entries.into_values().filter(|e| !ready_only || e.state == "READY").collect())
    }

    /// Serves registry model `name`: `version` when given, else its `production` alias when it
    /// has one, else its newest version. Loading a model already served replaces it (the new
    /// version is loaded and warmed before the swap). The server's own model is already served.
    pub async fn load(&self, state: &AppState, name: &str, version: Option<&str>) -> Result<String, ApiError> {
        let _one_at_a_time = self.lock.lock().await;
        if name == self.primary {
            return state.models.served(name).map(|s| s.table.stable.clone());
        }
        let registry = Arc::clone(self.registry()?);
        let reference = match version {
            Some(v) => ModelRef::parse(&format!("{name}:{v}")),
            None => ModelRef::parse(name),
        }
        ?;
        let record = match (&reference, registry.alias_target(reference.name(), DEFAULT_ALIAS).await) {
            (ModelRef::Latest(n), Ok(Some(v))) => registry.resolve(&ModelRef::Version(n.clone(), v)).await?,
            _ => registry.resolve(&reference).await?,
        };
        let bytes = registry.artifact(&record, &NoProgress).await?;
        let spec = ModelSpec { name: name.to_owned(), version: record.version.clone(), pool: self.pool.clone() };
        let replaced = state.models.served(name).ok();
        if replaced.is_none() {
            state.models.set(name, ModelSlot::Loading { version: record.version.clone() });
        }
        let what = format!("version {} of '{name}'", record.version);
        let model = match LoadedModel::load_warm(Arc::clone(&self.backend), bytes.to_vec().into(), spec, Arc::clone(&state.metrics), &what).await {
            Ok(model) => model,
            Err(e) => {
                if replaced.is_none() {
                    state.models.set(name, ModelSlot::Failed { version: record.version.clone(), error: e.to_string() });
                }
                return Err(e);
            }
        };
        let served = Served::single(model);
        state.metrics.publish_traffic(name, &served);
        state.models.set(name, ModelSlot::Ready(Arc::new(served)));
        if let Some(old) = replaced {
            for m in old.versions.values().filter(|m| m.version != record.version) {
                state.metrics.forget_version(m);
            }
        }
        tracing::info!(model = %name, version = %record.version, "model loaded through the repository API");
        Ok(record.version)
    }

    /// Stops serving `name`. In-flight requests finish on the version they hold.
    pub async fn unload(&self, state: &AppState, name: &str) -> Result<(), ApiError> {
        let _one_at_a_time = self.lock.lock().await;
        if name == self.primary {
            return Err(ApiError::Conflict(format!(
                "'{name}' is the model this server was started with; stop the server to stop serving it, or change its traffic with `modelship traffic`"
            )));
        }
        match state.models.remove(name) {
            None => Err(ApiError::UnknownModel { name: name.to_owned(), available: state.models.names() }),
            Some(slot) => {
                if let ModelSlot::Ready(served) = slot {
                    for m in served.versions.values() {
                        state.metrics.forget_version(m);
                    }
                }
                tracing::info!(model = %name, "model unloaded through the repository API");
                Ok(())
            }
        }
    }
}
