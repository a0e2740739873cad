//! Which models are in memory. With a bound on loaded models (a count, bytes, or both), loading
//! one that would pass it first unloads the least recently used model that may rest (one
//! version, all traffic: nothing under rollout or split by a fleet revision; see
//! [`Served::may_rest`]). A resting model keeps its routing and answers metadata and readiness;
//! the first request that needs it loads it again, waits at most `load_wait`, and is told to
//! retry (503 with `Retry-After`) when the load takes longer. The load goes on, so the retry
//! finds it loaded. One load at a time, and one per model however many requests ask.
//!
//! Writes to the model table go through [`ModelTable::rest`] and [`ModelTable::wake`], compare
//! and swap: a traffic change that lands meanwhile stands.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use modelship_inference::Backend;
use modelship_registry::{ModelRef, NoProgress, Registry};
use tokio::sync::watch;

use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::model::{LoadedModel, ModelSlot, ModelSpec, ModelTable, Served, WarmUp, WarmUpSample};
use crate::serve::Tasks;

/// The bound on loaded models, and how long a request waits for one to load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResidencyLimits {
    /// Models with a version in memory (`server.max_loaded_models`); `None`: no bound.
    pub max_models: Option<usize>,
    /// Their size together ([`LoadedModel::cost_bytes`]; `server.max_loaded_bytes`).
    pub max_bytes: Option<u64>,
    /// The longest a request waits for its model to load before it is told to retry.
    pub load_wait: Duration,
}

/// The default [`ResidencyLimits::load_wait`].
pub const DEFAULT_LOAD_WAIT: Duration = Duration::from_secs(10);

impl Default for ResidencyLimits {
    fn default() -> Self {
        ResidencyLimits { max_models: None, max_bytes: None, load_wait: DEFAULT_LOAD_WAIT }
    }
}

/// Where a resting model's stable version is read again from.
pub enum Origin {
    /// A registry model (by its name there): the version's artifact, checked against its digest.
    Registry { registry: Arc<Registry>, model: String },
    /// A file, read again and loaded only when its contents are those of the version to load:
    /// `base` was served with contents `digest`, and a followed file's later contents are the
    /// version `BASE-DIGEST` ([`file_version`]). `prepare` converts contents
    /// that are not ONNX.
    File { path: PathBuf, digest: String, base: String, prepare: Option<Prepare> },
}

/// How one model is loaded again.
struct Entry {
    spec: ModelSpec,
    origin: Origin,
    backend: Arc<dyn Backend>,
}

/// Why a load asked for by a request did not serve the model.
#[derive(Debug, Clone)]
enum LoadError {
    /// The bound cannot be kept with it loaded: every other loaded model is pinned.
    NoRoom(String),
    /// Its version could not be read, loaded or warmed up (said in full in the log).
    Failed(String),
}

/// The outcome of a load in progress, shared by every request waiting on it: the served state it
/// published (what those requests route on, even if the model rests again meanwhile).
type Outcome = Option<Result<Arc<Served>, LoadError>>;

pub struct Residency {
    inner: Arc<Inner>,
    tasks: Tasks,
    /// Loads in progress, by model.
    waking: Mutex<BTreeMap<String, watch::Receiver<Outcome>>>,
}

/// What a load, run as its own task, shares with the residency.
struct Inner {
    limits: ResidencyLimits,
    models: Arc<ModelTable>,
    metrics: Arc<Metrics>,
    /// The models that may rest, and how each is loaded again. A model not here stays loaded.
    entries: Mutex<BTreeMap<String, Arc<Entry>>>,
    /// Models that must stay loaded while a traffic write is under way, with how many hold each.
    pinned: Mutex<BTreeMap<String, usize>>,
    /// Models with a rollout in progress (from its first step, whatever the step routes).
    rolling_out: Mutex<std::collections::BTreeSet<String>>,
    /// The largest size each loaded version was counted at (a reload that reuses freed memory
    /// shows less growth than the first load did).
    costs: Mutex<BTreeMap<(String, String), u64>>,
    /// One load at a time: the room it makes is its own until it is published.
    admit: tokio::sync::Mutex<()>,
}

/// Keeps a model loaded while it lives ([`Residency::pin`]).
pub struct Pin {
    inner: Arc<Inner>,
    name: String,
}

impl Drop for Pin {
    fn drop(&mut self) {
        let mut pinned = lock(&self.inner.pinned);
        if let Some(n) = pinned.get_mut(&self.name) {
            *n -= 1;
            if *n == 0 {
                pinned.remove(&self.name);
            }
        }
    }
}

impl Residency {
    pub fn new(limits: ResidencyLimits, models: Arc<ModelTable>, metrics: Arc<Metrics>, tasks: Tasks) -> Self {
        let inner = Inner {
            limits,
            models,
            metrics,
            entries: Mutex::default(),
            pinned: Mutex::default(),
            rolling_out: Mutex::default(),
            costs: Mutex::default(),
            admit: tokio::sync::Mutex::new(()),
        };
        Residency { inner: Arc::new(inner), tasks, waking: Mutex::default() }
    }

    fn is_bounded(&self) -> bool {
        self.inner.limits.max_models.is_some() || self.inner.limits.max_bytes.is_some()
    }

    /// `name` may rest, and loads again as `spec` from `origin`. Without a bound nothing rests,
    /// and nothing is kept.
    pub fn register(&self, name: &str, spec: ModelSpec, origin: Origin, backend: Arc<dyn Backend>) {
        if self.is_bounded() {
            lock(&self.inner.entries).insert(name.to_owned(), Arc::new(Entry { spec, origin, backend }));
        }
    }

    /// `name` is no longer served.
    pub fn forget(&self, name: &str) {
        lock(&self.inner.entries).remove(name);
        lock(&self.inner.costs).retain(|(model, _), _| model != name);
        lock(&self.waking).remove(name);
    }

    /// Keeps `name` loaded until the pin is dropped (a traffic write under way).
    pub fn pin(&self, name: &str) -> Pin {
        *lock(&self.inner.pinned).entry(name.to_owned()).or_default() += 1;
        Pin { inner: Arc::clone(&self.inner), name: name.to_owned() }
    }

    /// `name` has a rollout in progress (`true`: kept loaded until it ends) or none.
    pub fn set_rollout(&self, name: &str, active: bool) {
        let mut rolling_out = lock(&self.inner.rolling_out);
        if active {
            rolling_out.insert(name.to_owned());
        } else {
            rolling_out.remove(name);
        }
    }

    /// `name`'s served state for a client's request: loaded again first when it rests, waiting at
    /// most `load_wait` (then `Unloaded`: 503, retry; the load goes on).
    pub async fn resident(&self, name: &str) -> Result<Arc<Served>, ApiError> {
        match self.inner.models.served(name) {
            Err(ApiError::Unloaded(_)) => {}
            other => return other,
        }
        let mut outcome = self.wake(name);
        match tokio::time::timeout(self.inner.limits.load_wait, outcome.wait_for(Option::is_some)).await {
            Err(_) => Err(ApiError::Unloaded(name.to_owned())),
            Ok(done) => Self::answer(name, done.ok().and_then(|d| d.clone()), |_| ApiError::LoadFailed(name.to_owned())),
        }
    }

    /// `name`'s served state for a traffic writer (background work, an operator's change):
    /// loaded again first when it rests, however long that takes; a failure says why in full.
    pub async fn load(&self, name: &str) -> Result<Arc<Served>, ApiError> {
        match self.inner.models.served(name) {
            Err(ApiError::Unloaded(_)) => {}
            other => return other,
        }
        let mut outcome = self.wake(name);
        let done = outcome.wait_for(Option::is_some).await.ok().and_then(|d| d.clone());
        Self::answer(name, done, ApiError::Conflict)
    }

    fn answer(name: &str, done: Outcome, failed: impl FnOnce(String) -> ApiError) -> Result<Arc<Served>, ApiError> {
        match done {
            Some(Ok(served)) => Ok(served),
            Some(Err(LoadError::NoRoom(e))) => Err(ApiError::NoRoom(e)),
            Some(Err(LoadError::Failed(e))) => Err(failed(e)),
            // The load ended without a word: shutdown stopped it.
            None => Err(ApiError::NotReady(name.to_owned())),
        }
    }

    /// The load of `name` in progress, or a new one started.
    fn wake(&self, name: &str) -> watch::Receiver<Outcome> {
        let mut waking = lock(&self.waking);
        // Finished loads (and any whose task ended without an outcome) are not waited on.
        waking.retain(|_, rx| rx.borrow().is_none() && rx.has_changed().is_ok());
        if let Some(rx) = waking.get(name) {
            return rx.clone();
        }
        let (tx, rx) = watch::channel(None);
        waking.insert(name.to_owned(), rx.clone());
        let (name, inner) = (name.to_owned(), Arc::clone(&self.inner));
        // Run as a task: a request that stops waiting does not stop the load.
        self.tasks.spawn("lazy-load", move |_| async move {
            let started = Instant::now();
            let result = inner.load_again(&name, started).await;
            match &result {
                Ok(_) => tracing::info!(model = %name, seconds = started.elapsed().as_secs_f64(), "loaded a resting model again"),
                Err(LoadError::NoRoom(e) | LoadError::Failed(e)) => {
                    let label = if matches!(result, Err(LoadError::NoRoom(_))) { "no_room" } else { "failed" };
                    inner.metrics.model_lazy_loads.with_label_values(&[&name, label]).inc();
                    tracing::warn!(model = %name, error = %e, "cannot load a resting model again");
                }
            }
            let _ = tx.send(Some(result));
        });
        rx
    }

    /// Unloads the least recently used models that may rest, other than `keep`, until the loaded
    /// ones are within the bound (after a load or a traffic change added versions). False when
    /// it could not get there: every other loaded model is pinned (said in the log).
    pub fn settle(&self, keep: &str) -> bool {
        if !self.is_bounded() {
            self.inner.loaded();
            return true;
        }
        match self.inner.make_room(keep, None) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(model = %keep, error = %e, "over the bound on loaded models");
                false
            }
        }
    }
}

impl Inner {
    /// What `name`'s loaded versions count as: each the largest it was ever counted at.
    fn cost(&self, name: &str, served: &Served) -> u64 {
        let mut costs = lock(&self.costs);
        served
            .versions
            .values()
            .map(|m| {
                let cost = costs.entry((name.to_owned(), m.version.clone())).or_default();
                *cost = (*cost).max(m.cost_bytes());
                *cost
            })
            .sum()
    }

    /// The models loaded now and their size together, published to the loaded-model gauges.
    fn loaded(&self) -> (Vec<(String, Arc<Served>)>, u64) {
        let loaded: Vec<(String, Arc<Served>)> = self
            .models
            .snapshot()
            .iter()
            .filter_map(|(name, slot)| match slot {
                ModelSlot::Ready(served) => Some((name.clone(), Arc::clone(served))),
                _ => None,
            })
            .collect();
        let bytes: u64 = loaded.iter().map(|(n, s)| self.cost(n, s)).sum();
        self.metrics.models_loaded.set(i64::try_from(loaded.len()).unwrap_or(i64::MAX));
        self.metrics.models_loaded_bytes.set(i64::try_from(bytes).unwrap_or(i64::MAX));
        (loaded, bytes)
    }

    /// Makes room for `name`, reads its stable version again, loads and warms it, and swaps it in.
    async fn load_again(&self, name: &str, started: Instant) -> Result<Arc<Served>, LoadError> {
        let _one_at_a_time = self.admit.lock().await;
        let resting = match self.models.slot(name) {
            Some(ModelSlot::Resting(r)) => r,
            // Loaded meanwhile (a traffic write came first), or no longer served.
            _ => return self.models.served(name).map_err(|e| LoadError::Failed(e.to_string())),
        };
        let Some(entry) = lock(&self.entries).get(name).cloned() else {
            return Err(LoadError::Failed(format!("model '{name}' is not in memory and this server cannot load it again; restart it")));
        };
        let version = resting.table.stable.clone();
        let incoming = lock(&self.costs).get(&(name.to_owned(), version.clone())).copied().unwrap_or(0).max(resting.cost_bytes).max(1);
        self.make_room(name, Some(incoming)).map_err(LoadError::NoRoom)?;
        let failed = |e: ApiError| LoadError::Failed(e.to_string());
        let (bytes, warm_up) = fetch(&entry.origin, &version, &entry.spec.warm_up).await.map_err(failed)?;
        let spec = ModelSpec { version: version.clone(), warm_up, ..entry.spec.clone() };
        let what = format!("version {version} of '{name}'");
        let model = LoadedModel::load_warm(Arc::clone(&entry.backend), bytes, spec, Arc::clone(&self.metrics), &what).await.map_err(failed)?;
        let next = Served { table: resting.table.clone(), revision: resting.revision, versions: BTreeMap::from([(version, model)]) };
        // Counted before it is published: a client answered by it finds it counted.
        self.metrics.model_lazy_loads.with_label_values(&[name, "loaded"]).inc();
        self.metrics.model_lazy_load_seconds.with_label_values(&[name]).observe(started.elapsed().as_secs_f64());
        let served = match self.models.wake(name, &resting, next) {
            Some(served) => served,
            // A traffic write replaced the resting slot meanwhile: it stands.
            None => self.models.served(name).map_err(failed)?,
        };
        let _ = self.make_room(name, None);
        Ok(served)
    }

    /// Unloads least-recently-used models (those registered and not pinned, never `keep`) until
    /// the loaded ones, with `incoming` (the size of `keep`, about to load and counted as one
    /// more), fit the bound; publishes the loaded-model gauges. Unloads nothing when unloading
    /// every model it may would not be enough.
    fn make_room(&self, keep: &str, incoming: Option<u64>) -> Result<(), String> {
        let limits = self.limits;
        let mut checked = false;
        loop {
            let (loaded, resident_bytes) = self.loaded();
            let count = loaded.len() + usize::from(incoming.is_some());
            let bytes = resident_bytes + incoming.unwrap_or(0);
            let fits = |count: usize, bytes: u64| limits.max_models.is_none_or(|max| count <= max) && limits.max_bytes.is_none_or(|max| bytes <= max);
            if fits(count, bytes) {
                return Ok(());
            }
            let candidates: Vec<(String, Arc<Served>)> = {
                let (entries, pinned, rolling_out) = (lock(&self.entries), lock(&self.pinned), lock(&self.rolling_out));
                loaded
                    .into_iter()
                    .filter(|(name, served)| {
                        name != keep
                            && served.may_rest()
                            && entries.contains_key(name.as_str())
                            && !pinned.contains_key(name.as_str())
                            && !rolling_out.contains(name.as_str())
                    })
                    .collect()
            };
            if !checked {
                // Resting every candidate must be enough, or none rests.
                let freed: u64 = candidates.iter().map(|(n, s)| self.cost(n, s)).sum();
                if !fits(count - candidates.len(), bytes - freed) {
                    let bound = match (limits.max_models, limits.max_bytes) {
                        (Some(max), _) if count - candidates.len() > max => format!("server.max_loaded_models ({max})"),
                        (_, Some(max)) => format!("server.max_loaded_bytes ({max} bytes; {} needed)", bytes - freed),
                        _ => "the bound on loaded models".to_owned(),
                    };
                    return Err(format!(
                        "no room to load model '{keep}': with every other model that may be unloaded unloaded, it would still pass {bound}; the others are under rollout, split, kept warm or being changed. Retry later, or raise the bound"
                    ));
                }
                checked = true;
            }
            let Some((name, served)) = candidates.into_iter().min_by_key(|(_, served)| served.last_used_ms()) else {
                return Err(format!("no room to load model '{keep}': no loaded model may be unloaded now; retry later"));
            };
            if self.models.rest(&name, &served) {
                self.metrics.model_evictions.with_label_values(&[name.as_str()]).inc();
                tracing::info!(model = %name, idle_ms = now_ms().saturating_sub(served.last_used_ms()), "unloaded the least recently used model to stay within the bound on loaded models");
            }
        }
    }
}

/// The bytes of `version` and what it must answer before it serves.
pub(crate) async fn fetch(origin: &Origin, version: &str, base: &WarmUp) -> Result<(Arc<[u8]>, WarmUp), ApiError> {
    match origin {
        Origin::Registry { registry, model } => {
            let record = registry.resolve(&ModelRef::Version(model.clone(), version.to_owned())).await?;
            let bytes = registry.artifact(&record, &NoProgress).await?;
            let warm_up = warm_up_for(registry, &record, base).await?;
            Ok((bytes.to_vec().into(), warm_up))
        }
        Origin::File { path, digest, base: base_version, prepare } => {
            let bytes = tokio::fs::read(path)
                .await
                .map_err(|e| ApiError::Conflict(format!("cannot read the model file {} again: {e}", path.display())))?;
            let now = self::digest(&bytes);
            let same = (version == base_version && &now == digest) || version == self::file_version(base_version, &now);
            if !same {
                return Err(ApiError::Conflict(format!(
                    "the model file {} no longer holds version {version} (its contents are now sha256 {now}); a resting model loads only what it served: a followed file's new contents are served once the follower sees them, else restart the server",
                    path.display()
                )));
            }
            let bytes = match prepare {
                None => bytes,
                Some(prepare) => {
                    let prepare = Arc::clone(prepare);
                    tokio::task::spawn_blocking(move || prepare(bytes))
                        .await
                        .map_err(|e| ApiError::Internal(e.to_string()))?
                        .map_err(ApiError::Conflict)?
                }
            };
            Ok((bytes.into(), base.clone()))
        }
    }
}

/// What the registry version `record` must answer before it serves: `base`, with the version's
/// own warm-up sample first when the registry holds one (`models push --warmup-sample`).
pub async fn warm_up_for(registry: &Registry, record: &modelship_registry::VersionRecord, base: &WarmUp) -> Result<WarmUp, ApiError> {
    match registry.warmup_sample(record).await? {
        None => Ok(base.clone()),
        Some(bytes) => {
            let source = format!("the warm-up sample of {}:{}", record.name, record.version);
            let sample = WarmUpSample::from_v2_json(&source, &bytes).map_err(ApiError::Conflict)?;
            Ok(WarmUp { sample: Some(Arc::new(sample)), ..base.clone() })
        }
    }
}

/// Turns a followed file's new contents into an ONNX model, on a blocking thread: the binary
/// converts other formats (pickles, XGBoost, LightGBM) there, in a sandboxed child process, never
/// in this one.
pub type Prepare = Arc<dyn Fn(Vec<u8>) -> Result<Vec<u8>, String> + Send + Sync>;

/// The hex SHA-256 of a model's bytes.
pub fn digest(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(bytes))
}

/// The version name of contents with `digest`, served from a file configured as `base`.
pub fn file_version(base: &str, digest: &str) -> String {
    format!("{base}-{}", &digest[..12.min(digest.len())])
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
