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

use modelship_registry::Registry;
use modelship_router::Change;
use prometheus::IntCounterVec;

use crate::state::AppState;
use crate::traffic::Traffic;

/// What to follow and how.
pub struct Follow {
    pub registry: Arc<Registry>,
    /// Alias moves become traffic revisions (a blue-green switch), like any other change.
    pub traffic: Arc<Traffic>,
    /// The registry model name.
    pub model: String,
    pub alias: String,
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
                    model = %follow.traffic.spec.name, alias = %follow.alias, from = %current, to = %target, load_seconds = seconds,
                    "alias moved; now serving the new version"
                );
                record(&swaps, &follow.traffic.spec.name, "success");
                state.models.set_reload_error(&follow.traffic.spec.name, None);
                current = target;
                failed = None;
            }
            Err(e) => {
                tracing::error!(
                    model = %follow.traffic.spec.name, alias = %follow.alias, version = %target, error = %e,
                    "alias moved but the new version cannot be served; keeping the current one"
                );
                record(&swaps, &follow.traffic.spec.name, "failure");
                state.models.set_reload_error(
                    &follow.traffic.spec.name,
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

/// Switches to `version` (loaded and warmed by the traffic writer, the old one kept warm for a
/// rollback); returns the time it took in seconds.
async fn swap_to(state: &AppState, follow: &Follow, version: &str) -> Result<f64, String> {
    let started = Instant::now();
    let reason = format!("{}@{} moved to {version}", follow.model, follow.alias);
    follow
        .traffic
        .change(state, Change::Switch { version: version.to_owned() }, "registry", &reason)
        .await
        .map_err(|e| e.to_string())?;
    Ok(started.elapsed().as_secs_f64())
}

