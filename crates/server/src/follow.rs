//! Following a registry alias: when `NAME@ALIAS` moves, load the new version, warm it up and swap
//! it in; requests already running finish on the version they started on.
//!
//! A swap is one atomic replacement in the model table. The old version's workers keep serving
//! what was queued for them and stop when the last request holding the old model ends, so no
//! request fails because of a swap. A version that fails to load leaves the current one serving;
//! the failure is logged, counted and shown in readiness, and that version is not retried until
//! the alias moves again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use modelship_inference::Backend;
use modelship_registry::{ModelRef, NoProgress, Registry};
use prometheus::IntCounterVec;

use crate::model::{LoadedModel, ModelSlot, ModelSpec, Served};
use crate::state::AppState;

/// What to follow and how.
pub struct Follow {
    pub registry: Arc<Registry>,
    pub backend: Arc<dyn Backend>,
    /// The registry model name.
    pub model: String,
    pub alias: String,
    /// How the served model is loaded; `version` is replaced by each new target.
    pub spec: ModelSpec,
    pub poll: Duration,
}

/// Polls the alias until the process ends. `current` is the version being served.
pub async fn follow_alias(state: AppState, follow: Follow, mut current: String) {
    let swaps = state.metrics.model_swaps.clone();
    let mut failed: Option<String> = None;
    let mut ticker = tokio::time::interval(follow.poll);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if state.health.is_draining() {
            return;
        }
        let (registry, model, alias) = (Arc::clone(&follow.registry), follow.model.clone(), follow.alias.clone());
        let target = match tokio::task::spawn_blocking(move || registry.alias_target(&model, &alias)).await {
            Ok(Ok(Some(v))) => v,
            Ok(Ok(None)) => continue,
            Ok(Err(e)) => {
                tracing::warn!(model = %follow.model, alias = %follow.alias, error = %e, "cannot read the alias; keeping the current version");
                continue;
            }
            Err(_) => continue,
        };
        if target == current || failed.as_deref() == Some(target.as_str()) {
            continue;
        }
        match swap_to(&state, &follow, &target).await {
            Ok(seconds) => {
                tracing::info!(
                    model = %follow.spec.name, alias = %follow.alias, from = %current, to = %target, load_seconds = seconds,
                    "alias moved; now serving the new version"
                );
                record(&swaps, &follow.spec.name, "success");
                state.models.set_reload_error(&follow.spec.name, None);
                current = target;
                failed = None;
            }
            Err(e) => {
                tracing::error!(
                    model = %follow.spec.name, alias = %follow.alias, version = %target, error = %e,
                    "alias moved but the new version cannot be served; keeping the current one"
                );
                record(&swaps, &follow.spec.name, "failure");
                state.models.set_reload_error(
                    &follow.spec.name,
                    Some(format!("{}@{} moved to {target}, which failed to load ({e}); still serving {current}", follow.model, follow.alias)),
                );
                failed = Some(target);
            }
        }
    }
}

fn record(swaps: &IntCounterVec, model: &str, result: &str) {
    swaps.with_label_values(&[model, result]).inc();
}

/// Loads, warms and swaps in `version`; returns the load time in seconds.
async fn swap_to(state: &AppState, follow: &Follow, version: &str) -> Result<f64, String> {
    let started = Instant::now();
    let reference = ModelRef::Version(follow.model.clone(), version.to_owned());
    let registry = Arc::clone(&follow.registry);
    let record = tokio::task::spawn_blocking(move || registry.resolve(&reference))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let bytes = follow.registry.artifact(&record, &NoProgress).await.map_err(|e| e.to_string())?;
    let mut spec = follow.spec.clone();
    spec.version = version.to_owned();
    let (backend, metrics, load_spec) = (Arc::clone(&follow.backend), Arc::clone(&state.metrics), spec.clone());
    let model = tokio::task::spawn_blocking(move || LoadedModel::load(backend, bytes.to_vec().into(), &load_spec, &metrics))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    if let Err(e) = model.warm_up().await {
        tracing::warn!(model = %spec.name, version, error = %e, "warm-up request failed; serving anyway");
    }
    let previous = state.models.snapshot().get(&spec.name).cloned();
    let served = Served::single(Arc::new(model));
    state.metrics.publish_traffic(&spec.name, &served);
    state.models.set(&spec.name, ModelSlot::Ready(Arc::new(served)));
    if let Some(ModelSlot::Ready(old)) = previous {
        for model in old.versions.values().filter(|m| m.version != version) {
            state.metrics.forget_version(model);
        }
    }
    Ok(started.elapsed().as_secs_f64())
}
