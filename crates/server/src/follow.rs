//! Following a registry alias (when `NAME@ALIAS` moves) or a served file (when its contents
//! change, the volume-mount workflow): load the new version, warm it up and swap it in through
//! the traffic writer; requests already running finish on the version they started on.
//!
//! A swap is one atomic replacement in the model table. The old version's workers keep serving
//! what was queued for them and stop when the last request holding the old model ends, so no
//! request fails because of a swap. A version that fails to load leaves the current one serving;
//! the failure is logged, counted and shown in readiness, and that version is not retried until
//! the alias moves again. A registry that cannot be reached leaves the current version serving
//! (readiness says so, the server stays ready); a version served under the alias is recorded in
//! the registry's kept copies, when it keeps them, for a start without the registry.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use modelship_registry::Registry;
use prometheus::IntCounterVec;

use crate::model::LoadedModel;
use crate::state::AppState;
use crate::traffic::Traffic;

pub use crate::residency::{Prepare, digest, file_version};

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

/// Polls the alias until the process ends, and serves what it names: whenever the alias names
/// another version than the stable one in force (moved by `models alias`, by another tool, or by
/// a replica that committed the move but not yet its revision), that version becomes stable.
/// Moves this server made itself (a promotion moves the alias first) find it stable already.
pub async fn follow_alias(state: AppState, follow: Follow) {
    let swaps = state.metrics.model_swaps.clone();
    let name = follow.traffic.spec.name.clone();
    // The version that failed to load, and what readiness says of it.
    let mut failed: Option<(String, String)> = None;
    // Cut off from the registry: the version served goes on serving, readiness says why.
    let mut unreachable = false;
    // The version this host recorded as served (kept for a start without the registry), and when
    // a failed recording is tried again (backing off: each try may download the artifact).
    let mut recorded: Option<String> = None;
    let (mut record_at, mut record_backoff) = (Instant::now(), follow.poll);
    let reference = modelship_registry::ModelRef::Alias(follow.model.clone(), follow.alias.clone());
    let mut ticker = tokio::time::interval(follow.poll);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if state.health.is_draining() {
            return;
        }
        // The routing first, then the alias: a server moves the alias before it commits the
        // revision, so an alias read after the routing is never older than that routing.
        let Ok((table, seen)) = state.models.routing(&name) else { continue };
        let target = match follow.registry.alias_target(&follow.model, &follow.alias).await {
            Ok(target) => {
                if std::mem::take(&mut unreachable) {
                    tracing::info!(model = %follow.model, alias = %follow.alias, "the registry answers again");
                    // What readiness said before the outage, if anything.
                    state.models.set_reload_error(&name, failed.as_ref().map(|(_, note)| note.clone()));
                }
                match target {
                    Some(v) => v,
                    None => continue,
                }
            }
            Err(e) => {
                // Logged once per outage; readiness says it at every poll (another writer of the
                // note, such as a traffic change, may have cleared it meanwhile).
                if !std::mem::replace(&mut unreachable, true) {
                    tracing::warn!(model = %follow.model, alias = %follow.alias, error = %e, "cannot read the alias; keeping the current version until the registry answers");
                }
                state.models.set_reload_error(
                    &name,
                    Some(format!("cannot reach the registry to read {reference} ({e}); serving {}, the version it last named", table.stable)),
                );
                continue;
            }
        };
        let current = table.stable;
        if target == current {
            if failed.take().is_some() {
                state.models.set_reload_error(&name, None);
            }
            // Served and answering: the copy a start without the registry falls back on.
            if recorded.as_deref() != Some(current.as_str()) && Instant::now() >= record_at {
                match follow.registry.record_served(&reference, &current).await {
                    Ok(_) => {
                        recorded = Some(current);
                        record_backoff = follow.poll;
                    }
                    Err(e) => {
                        tracing::warn!(model = %follow.model, version = %current, error = %e, retry_s = record_backoff.as_secs_f64(), "cannot keep a copy of the served version; a start without the registry will not find it");
                        record_at = Instant::now() + record_backoff;
                        record_backoff = (record_backoff * 2).min(Duration::from_secs(600));
                    }
                }
            }
            continue;
        }
        if failed.as_ref().is_some_and(|(version, _)| *version == target) {
            continue;
        }
        match swap_to(&state, &follow, &target, seen).await {
            // Nothing committed: another replica did, or the routing changed since it was read
            // (the next poll decides again).
            Ok(None) => {}
            Ok(Some(seconds)) => {
                tracing::info!(
                    model = %name, alias = %follow.alias, from = %current, to = %target, load_seconds = seconds,
                    "alias moved; now serving the new version"
                );
                record(&swaps, &name, "success");
                state.models.set_reload_error(&name, None);
                failed = None;
            }
            Err(e) => {
                tracing::error!(
                    model = %name, alias = %follow.alias, version = %target, error = %e,
                    "alias moved but the new version cannot be served; keeping the current one"
                );
                record(&swaps, &name, "failure");
                // A version that cannot be served is not tried again until the alias moves; a
                // control store or a registry store that did not answer (a download cut off) is
                // tried again at the next poll.
                use crate::error::ApiError;
                let retried = matches!(e, ApiError::ControlStoreUnavailable(_) | ApiError::Registry(modelship_registry::RegistryError::Store(_)));
                let note = if retried {
                    format!("{}@{} moved to {target}, which cannot be fetched or recorded yet ({e}); still serving {current}", follow.model, follow.alias)
                } else {
                    format!("{}@{} moved to {target}, which failed to load ({e}); still serving {current}", follow.model, follow.alias)
                };
                state.models.set_reload_error(&name, Some(note.clone()));
                if !retried {
                    failed = Some((target, note));
                }
            }
        }
    }
}

fn record(swaps: &IntCounterVec, model: &str, result: &str) {
    swaps.with_label_values(&[model, result]).inc();
}

/// Switches to `version` (loaded and warmed by the traffic writer, the old one kept warm for a
/// rollback) unless the routing changed since revision `seen`; returns the time it took in
/// seconds, or `None` when this replica committed nothing.
async fn swap_to(state: &AppState, follow: &Follow, version: &str, seen: u64) -> Result<Option<f64>, crate::error::ApiError> {
    let started = Instant::now();
    // Who moved it, from the registry's alias history, so the revision says so too.
    let by = match follow.registry.history(&follow.model).await {
        Ok(moves) => moves
            .iter()
            .rev()
            .find(|m| m.alias == follow.alias)
            .filter(|m| m.version.as_deref() == Some(version))
            .map(|m| format!(" (by {})", m.actor))
            .unwrap_or_default(),
        Err(_) => String::new(),
    };
    let reason = format!("{}@{} moved to {version}{by}", follow.model, follow.alias);
    if follow.traffic.switch_to(state, version, seen, "registry", &reason).await?.is_none() {
        tracing::debug!(model = %follow.model, alias = %follow.alias, version, "nothing committed: another replica committed the move, or the routing changed since the alias was read");
        return Ok(None);
    }
    Ok(Some(started.elapsed().as_secs_f64()))
}


/// A served file to follow.
pub struct FollowFile {
    /// For a file that is not ONNX: how its contents become ONNX.
    pub prepare: Option<Prepare>,
    /// The new contents become a version through the traffic writer, like an alias move.
    pub traffic: Arc<Traffic>,
    pub path: PathBuf,
    /// The configured version; changed contents are served as `BASE-DIGEST` (the first 12 hex
    /// digits of their SHA-256), so responses and metrics tell the contents apart.
    pub base_version: String,
    pub poll: Duration,
}

/// The largest followed file read (as `serve` reads a model file at startup).
const MAX_FILE_BYTES: u64 = 4 << 30;

/// A file's size and modification time: an unchanged stamp is not read again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
}

fn stamp(path: &std::path::Path) -> Option<Stamp> {
    std::fs::metadata(path).ok().map(|m| Stamp { len: m.len(), modified: m.modified().ok() })
}

/// Polls the file until the process ends. `current` is the digest of the contents being served.
///
/// A file caught half-written fails to load (and is not retried with the same contents); the
/// completed file has another stamp and digest and is loaded on a later poll. A missing file
/// (between a delete and a rename) keeps the current version serving.
pub async fn follow_file(state: AppState, follow: FollowFile, mut current: String) {
    let name = follow.traffic.spec.name.clone();
    let swaps = state.metrics.model_swaps.clone();
    let mut seen = stamp(&follow.path);
    let mut failed: Option<String> = None;
    let mut ticker = tokio::time::interval(follow.poll);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if state.health.is_draining() {
            return;
        }
        let now = stamp(&follow.path);
        if now.is_none() || now == seen {
            continue;
        }
        let path = follow.path.clone();
        // Bounded like any model file: a file grown past it is not read.
        let read = move || -> std::io::Result<Vec<u8>> {
            use std::io::Read as _;
            let mut bytes = Vec::new();
            std::fs::File::open(&path)?.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes)?;
            if bytes.len() as u64 > MAX_FILE_BYTES {
                return Err(std::io::Error::other(format!("over {MAX_FILE_BYTES} bytes")));
            }
            Ok(bytes)
        };
        let bytes = match tokio::task::spawn_blocking(read).await {
            Ok(Ok(bytes)) => bytes,
            Ok(Err(e)) => {
                tracing::warn!(model = %name, path = %follow.path.display(), error = %e, "cannot read the model file; keeping the current version");
                continue;
            }
            Err(_) => continue,
        };
        seen = now;
        let digest = digest(&bytes);
        if digest == current || failed.as_deref() == Some(digest.as_str()) {
            continue;
        }
        let version = file_version(&follow.base_version, &digest);
        let started = Instant::now();
        let prepared = match &follow.prepare {
            None => Ok(bytes),
            Some(prepare) => {
                let prepare = Arc::clone(prepare);
                tokio::task::spawn_blocking(move || prepare(bytes)).await.unwrap_or_else(|e| Err(e.to_string()))
            }
        };
        let swapped = match prepared {
            Ok(bytes) => swap_file(&state, &follow, bytes, &version).await,
            Err(e) => Err(e),
        };
        match swapped {
            Ok(()) => {
                tracing::info!(
                    model = %name, path = %follow.path.display(), version = %version, load_seconds = started.elapsed().as_secs_f64(),
                    "the model file changed; now serving its new contents"
                );
                record(&swaps, &name, "success");
                state.models.set_reload_error(&name, None);
                current = digest;
                failed = None;
            }
            Err(e) => {
                tracing::error!(
                    model = %name, path = %follow.path.display(), version = %version, error = %e,
                    "the model file changed but cannot be served; keeping the current version"
                );
                record(&swaps, &name, "failure");
                state.models.set_reload_error(
                    &name,
                    Some(format!("{} changed (as version {version}) but failed to load ({e}); still serving the previous contents", follow.path.display())),
                );
                failed = Some(digest);
            }
        }
    }
}

async fn swap_file(state: &AppState, follow: &FollowFile, bytes: Vec<u8>, version: &str) -> Result<(), String> {
    let traffic = &follow.traffic;
    let mut spec = traffic.spec.clone();
    spec.version = version.to_owned();
    let what = format!("the new contents of {}", follow.path.display());
    let model = LoadedModel::load_warm(Arc::clone(&traffic.backend), bytes.into(), spec, Arc::clone(&state.metrics), &what)
        .await
        .map_err(|e| e.to_string())?;
    let reason = format!("{} changed (sha256 {})", follow.path.display(), &version[follow.base_version.len() + 1..]);
    traffic.adopt(state, model, "file", &reason).await.map(|_| ()).map_err(|e| e.to_string())
}
