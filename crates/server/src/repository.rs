//! The model repository extension (Triton's `RepositoryIndex`, `RepositoryModelLoad`,
//! `RepositoryModelUnload`) over the registry: the repository is the registry, loading a model
//! serves it under its registry name beside the models the server was started with, unloading stops serving it.
//!
//! These operations change what the server serves, so they are control operations: REST serves
//! them on the admin listener only, gRPC only with the admin bearer token.

use std::sync::Arc;

use modelship_inference::Backend;
use modelship_registry::{ModelRef, NoProgress, Registry};
use serde::Serialize;

use crate::error::ApiError;
use crate::model::{LoadedModel, ModelSlot, ModelSpec, Served, WarmUp};
use crate::pool::PoolConfig;
use crate::residency::Origin;
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
    /// What each must answer before it serves (no sample: the server's sample is its own model's).
    warm_up: WarmUp,
    /// The models the server was started with: their versions change through the traffic
    /// writer (switch, rollout), never through a repository load or unload.
    configured: Vec<String>,
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
    pub fn new(registry: Option<Arc<Registry>>, backend: Arc<dyn Backend>, pool: PoolConfig, warm_up: WarmUp, configured: Vec<String>) -> Self {
        let warm_up = WarmUp { sample: None, ..warm_up };
        Repository { registry, backend, pool, warm_up, configured, lock: tokio::sync::Mutex::new(()) }
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
        let refused = state.models.reload_errors();
        if let Some(registry) = &self.registry {
            let records = registry.list(None).await.map_err(|e| ApiError::Internal(format!("cannot read the registry: {e}")))?;
            for r in records {
                // The newest version is listed last; keep it as the one a plain load would take.
                entries.insert(
                    r.name.clone(),
                    IndexEntry {
                        reason: refused.get(&r.name).cloned().unwrap_or_else(|| "not loaded".to_owned()),
                        name: r.name,
                        version: r.version,
                        state: "UNAVAILABLE".to_owned(),
                    },
                );
            }
        }
        for (name, slot) in state.models.snapshot().iter() {
            let (version, st, reason) = match slot {
                ModelSlot::Ready(served) => (served.table.stable.clone(), "READY", String::new()),
                // Triton's index has no state for it: it answers (loading again on demand).
                ModelSlot::Resting(r) => (r.table.stable.clone(), "READY", "unloaded to save memory; loads again on its next request".to_owned()),
                ModelSlot::Loading { version } => (version.clone(), "LOADING", String::new()),
                ModelSlot::Failed { version, error } => (version.clone(), "UNAVAILABLE", error.clone()),
            };
            entries.insert(name.clone(), IndexEntry { name: name.clone(), version, state: st.to_owned(), reason });
        }
        Ok(entries.into_values().filter(|e| !ready_only || e.state == "READY").collect())
    }

    /// Serves registry model `name`: `version` when given, else its `production` alias when it
    /// has one, else its newest version. Loading a model already served replaces it (the new
    /// version is loaded and warmed before the swap). The models the server was started with are served already.
    pub async fn load(&self, state: &AppState, name: &str, version: Option<&str>) -> Result<String, ApiError> {
        let _one_at_a_time = self.lock.lock().await;
        if self.configured.iter().any(|c| c == name) {
            // Its versions change through the traffic writer (switch, rollout), never here.
            let stable = state.models.routing(name)?.0.stable;
            return match version {
                Some(v) if v != stable => Err(ApiError::Conflict(format!(
                    "'{name}' is a model this server was started with, served at version {stable}; a repository load cannot change its version: use `modelship traffic switch {name} {v}` (or a rollout)"
                ))),
                _ => Ok(stable),
            };
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
        let warm_up = crate::residency::warm_up_for(&registry, &record, &self.warm_up).await?;
        let spec = ModelSpec { name: name.to_owned(), version: record.version.clone(), pool: self.pool.clone(), warm_up };
        let registered = ModelSpec { warm_up: self.warm_up.clone(), ..spec.clone() };
        // A model resting to save memory is replaced like a loaded one (it stays served meanwhile).
        let replaced = matches!(state.models.slot(name), Some(ModelSlot::Ready(_) | ModelSlot::Resting(_)));
        if !replaced {
            state.models.loading(name, &record.version);
        }
        let what = format!("version {} of '{name}'", record.version);
        let model = match LoadedModel::load_warm(Arc::clone(&self.backend), bytes.to_vec().into(), spec, Arc::clone(&state.metrics), &what).await {
            Ok(model) => model,
            Err(e) => {
                // The refusal is reported (readiness `errors`, the index's reason), but never
                // takes the server out of readiness: its other models serve on.
                if !replaced {
                    state.models.unload(name);
                }
                state.models.set_reload_error(name, Some(format!("version {} refused: {e}", record.version)));
                return Err(e);
            }
        };
        state.models.set_reload_error(name, None);
        let origin = Origin::Registry { registry: Arc::clone(&registry), model: name.to_owned() };
        state.residency.register(name, registered, origin, Arc::clone(&self.backend));
        state.models.publish(name, Served::single(model));
        state.residency.settle(name);
        tracing::info!(model = %name, version = %record.version, "model loaded through the repository API");
        Ok(record.version)
    }

    /// Stops serving `name`. In-flight requests finish on the version they hold.
    pub async fn unload(&self, state: &AppState, name: &str) -> Result<(), ApiError> {
        let _one_at_a_time = self.lock.lock().await;
        if self.configured.iter().any(|c| c == name) {
            return Err(ApiError::Conflict(format!(
                "'{name}' is a model this server was started with; stop the server to stop serving it, or change its traffic with `modelship traffic`"
            )));
        }
        match state.models.unload(name) {
            None => Err(ApiError::UnknownModel { name: name.to_owned(), available: state.models.names() }),
            Some(_) => {
                state.residency.forget(name);
                state.residency.settle(name);
                tracing::info!(model = %name, "model unloaded through the repository API");
                Ok(())
            }
        }
    }
}
