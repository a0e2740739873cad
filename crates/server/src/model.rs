//! Loaded model versions and the table of models a server answers for.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use arc_swap::ArcSwap;
use modelship_protocol::admin::AppliedRevision;
use modelship_inference::{Backend, DataType, InferError, InferRequest, ModelInfo, Tensor, TensorData};
use modelship_router::{Role, RouteInput, TrafficTable};
use prometheus::{Histogram, IntCounter};

use crate::error::ApiError;
use crate::metrics::{Endpoint, Metrics};
use crate::pool::{PoolConfig, Refused, WorkerPool};

/// What to load: a model's name and version, and how to run it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSpec {
    pub name: String,
    pub version: String,
    pub pool: PoolConfig,
    /// The requests a version must answer before it serves (Triton's `model_warmup`).
    pub warm_up: WarmUp,
}

/// How a version proves it can answer before any client is routed to it. Every request must
/// succeed; one that fails refuses the version, whatever installs it (startup, a traffic change,
/// a rollout step, alias or file following, a repository load, a fleet revision, a cold start).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WarmUp {
    /// Requests sent, at least 1: the sample first when there is one, then zeros (dynamic
    /// dimensions as 1), then rows drawn to the signature (2 rows where the first dimension is
    /// dynamic: values in [-1, 1], integers 0 or 1, random booleans, short text).
    pub requests: usize,
    /// The model's own inputs (`model.warmup_sample`, a V2 inference request), sent first.
    pub sample: Option<Arc<WarmUpSample>>,
}

/// Sample inputs for the warm-up, and where they came from (for errors and equality).
#[derive(Debug)]
pub struct WarmUpSample {
    pub source: String,
    pub inputs: Vec<Tensor>,
}

impl WarmUpSample {
    /// The inputs of a V2 inference request body (`{"inputs": [...]}`), as clients send it.
    pub fn from_v2_json(source: &str, body: &[u8]) -> Result<Self, String> {
        let decoded = modelship_protocol::v2::decode_request(body, None)
            .map_err(|e| format!("{source} is not a V2 inference request (`{{\"inputs\": [...]}}`): {e}"))?;
        if decoded.request.inputs.is_empty() {
            return Err(format!("{source} holds no inputs"));
        }
        Ok(WarmUpSample { source: source.to_owned(), inputs: decoded.request.inputs })
    }
}

impl PartialEq for WarmUpSample {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Eq for WarmUpSample {}

/// The default [`WarmUp::requests`]: zeros, then drawn rows.
pub const DEFAULT_WARM_UP_REQUESTS: usize = 2;

impl Default for WarmUp {
    fn default() -> Self {
        WarmUp { requests: DEFAULT_WARM_UP_REQUESTS, sample: None }
    }
}

/// One model version, loaded and ready to answer.
/// Where one inference's time went: when it was handed to the pool (after validation), how long
/// it waited for a worker and how long the model ran.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timing {
    pub submitted: Option<Instant>,
    pub queued: std::time::Duration,
    pub inference: std::time::Duration,
}

pub struct LoadedModel {
    pub name: String,
    pub version: String,
    pub info: ModelInfo,
    pub load_seconds: f64,
    /// The ONNX model's size.
    pub model_bytes: u64,
    /// How much resident memory grew while it loaded (approximate when loads overlap).
    pub memory_bytes: Option<u64>,
    pub pool_config: PoolConfig,
    pool: WorkerPool,
    inference_time: Histogram,
    queue_time: Histogram,
    batch_size: Histogram,
    batch_requests: Histogram,
    /// Triton-style counters for the statistics extension.
    pub stats: Statistics,
    /// This version's success counter and latency histogram by role and endpoint, looked up
    /// once each: `with_label_values` hashes its labels and takes a lock on every call.
    answered: [[OnceLock<(IntCounter, Histogram)>; Endpoint::COUNT]; Role::COUNT],
    score_histogram: OnceLock<Histogram>,
    /// `version` as the response header every answer carries (built once, not per response);
    /// `None` for a version name that is not a valid header value.
    pub version_header: Option<http::HeaderValue>,
    /// Milliseconds since the epoch when it finished loading.
    loaded_at_ms: u64,
}

/// Cumulative counts and nanoseconds, as Triton's statistics extension reports them.
#[derive(Default)]
pub struct Statistics {
    pub success: Duration,
    pub fail: Duration,
    pub queue: Duration,
    pub compute_infer: Duration,
    /// Rows inferred.
    pub inference_count: AtomicU64,
    /// Runtime calls (a formed batch counts once).
    pub execution_count: AtomicU64,
    /// Milliseconds since the epoch of the last inference, 0 before any.
    pub last_inference_ms: AtomicU64,
    /// By batch size: runtime calls and their nanoseconds.
    pub batches: Mutex<BTreeMap<usize, (u64, u64)>>,
}

/// A count and a sum of nanoseconds.
#[derive(Default)]
pub struct Duration {
    pub count: AtomicU64,
    pub ns: AtomicU64,
}

impl Duration {
    fn add(&self, d: std::time::Duration) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.ns.fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
    }

    pub fn get(&self) -> (u64, u64) {
        (self.count.load(Ordering::Relaxed), self.ns.load(Ordering::Relaxed))
    }
}

impl LoadedModel {
    /// Loads `model` (blocking: call it off the reactor) and registers its metrics.
    pub fn load(backend: Arc<dyn Backend>, model: Arc<[u8]>, spec: &ModelSpec, metrics: &Metrics) -> Result<Self, InferError> {
        let started = Instant::now();
        let (resident_before, model_bytes) = (resident_bytes(), model.len() as u64);
        let (pool, info) = WorkerPool::start(backend, model, &spec.pool, &format!("infer-{}", spec.name))?;
        let memory_bytes = resident_before.zip(resident_bytes()).map(|(before, after)| after.saturating_sub(before));
        if spec.pool.batching.is_some() && !modelship_protocol::model_config::batches_rows(&info) {
            return Err(InferError::Load(format!(
                "dynamic batching needs a dynamic first dimension on every input and output, and model '{}' has none on at least one ({}); turn dynamic batching off for it",
                spec.name,
                info.signature.inputs.iter().chain(&info.signature.outputs).map(|t| format!("{} {:?}", t.name, t.shape)).collect::<Vec<_>>().join(", ")
            )));
        }
        let load_seconds = started.elapsed().as_secs_f64();
        let labels = [spec.name.as_str(), spec.version.as_str()];
        metrics.model_load_seconds.with_label_values(&labels).set(load_seconds);
        if let Some(bytes) = memory_bytes {
            metrics.model_memory_bytes.with_label_values(&labels).set(i64::try_from(bytes).unwrap_or(i64::MAX));
        }
        metrics
            .model_info
            .with_label_values(&[&spec.name, &spec.version, &info.platform, &info.placement.to_string(), &pool.workers().to_string()])
            .set(1);
        Ok(LoadedModel {
            name: spec.name.clone(),
            version: spec.version.clone(),
            info,
            load_seconds,
            model_bytes,
            memory_bytes,
            pool_config: spec.pool.clone(),
            pool,
            inference_time: metrics.inference_duration.with_label_values(&labels),
            queue_time: metrics.queue_duration.with_label_values(&labels),
            batch_size: metrics.batch_size.with_label_values(&labels),
            batch_requests: metrics.batch_requests.with_label_values(&labels),
            stats: Statistics::default(),
            answered: Default::default(),
            score_histogram: OnceLock::new(),
            version_header: http::HeaderValue::from_str(&spec.version).ok(),
            loaded_at_ms: now_ms(),
        })
    }

    /// Loads `model` off the reactor and runs its warm-up ([`LoadedModel::warm_up`]): a version
    /// serves only once it has answered. A model that cannot be loaded, or loads but cannot
    /// answer, is a conflict ("`what` cannot be loaded: ...", "`what` cannot answer: ..."), and
    /// the caller keeps what it serves.
    pub async fn load_warm(
        backend: Arc<dyn Backend>,
        model: Arc<[u8]>,
        spec: ModelSpec,
        metrics: Arc<Metrics>,
        what: &str,
    ) -> Result<Arc<LoadedModel>, ApiError> {
        let warm_up = spec.warm_up.clone();
        let loaded = tokio::task::spawn_blocking(move || LoadedModel::load(backend, model, &spec, &metrics))
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?
            .map_err(|e| ApiError::Conflict(format!("{what} cannot be loaded: {e}")))?;
        if let Err(e) = loaded.warm_up(&warm_up).await {
            tracing::warn!(model = %loaded.name, version = %loaded.version, error = %e, "warm-up failed; the version is refused");
            return Err(ApiError::Conflict(format!("{what} cannot answer, so it is not served: {e}")));
        }
        Ok(Arc::new(loaded))
    }

    /// Validates `request` against the model, runs it ([`WorkerPool::run`]: inline when the model
    /// is tiny and the request alone, else on a worker) and returns the outputs.
    pub async fn infer(&self, request: InferRequest) -> Result<Vec<Tensor>, ApiError> {
        self.run(request, true, None).await
    }

    /// [`LoadedModel::infer`], saying where the time went (for the request's trace).
    pub async fn infer_timed(&self, request: InferRequest, timing: &mut Timing) -> Result<Vec<Tensor>, ApiError> {
        self.run(request, true, Some(timing)).await
    }

    /// [`LoadedModel::infer`]; `record` false leaves metrics and statistics alone (a warm-up is
    /// not a client's request).
    async fn run(&self, request: InferRequest, record: bool, timing: Option<&mut Timing>) -> Result<Vec<Tensor>, ApiError> {
        let started = Instant::now();
        let prepared = self.info.signature.prepare(request)?;
        // Read only for a traced request: every other one skips the clock.
        let submitted = timing.is_some().then(Instant::now);
        let rows = prepared.rows() as u64;
        // A warm-up runs on a worker and leaves the time estimate to clients' requests.
        let output = if record { self.pool.run(prepared).await } else { self.pool.run_unmeasured(prepared).await };
        let output = output.map_err(|refused| match refused {
            Refused::QueueFull(full) => ApiError::Overloaded { model: self.name.clone(), queued: full.queued },
            Refused::WorkerGone => ApiError::Internal("the inference worker stopped before answering".to_owned()),
        })?;
        if let Some(timing) = timing {
            *timing = Timing { submitted, queued: output.queued, inference: output.inference };
        }
        if !record {
            return Ok(output.result?);
        }
        self.queue_time.observe(output.queued.as_secs_f64());
        self.inference_time.observe(output.inference.as_secs_f64());
        let stats = &self.stats;
        // Per request, as Triton counts them: each request is charged its batch's compute time.
        stats.queue.add(output.queued);
        stats.compute_infer.add(output.inference);
        if let Some(formed) = output.formed {
            self.batch_size.observe(formed.rows as f64);
            self.batch_requests.observe(formed.requests as f64);
            stats.execution_count.fetch_add(1, Ordering::Relaxed);
            let mut batches = stats.batches.lock().unwrap_or_else(|p| p.into_inner());
            let entry = batches.entry(formed.rows).or_default();
            entry.0 += 1;
            entry.1 += output.inference.as_nanos() as u64;
        }
        stats.last_inference_ms.store(now_ms(), Ordering::Relaxed);
        match &output.result {
            Ok(_) => {
                stats.success.add(started.elapsed());
                stats.inference_count.fetch_add(rows, Ordering::Relaxed);
            }
            Err(_) => stats.fail.add(started.elapsed()),
        }
        Ok(output.result?)
    }

    /// The counter and histogram of this version's successful requests routed as `role` on
    /// `endpoint` (`modelship_requests_total{status="200"}`, `modelship_request_duration_seconds`).
    /// This version's score histogram (`modelship_prediction_score`).
    pub fn score_metric(&self, metrics: &Metrics) -> &Histogram {
        self.score_histogram.get_or_init(|| metrics.prediction_score.with_label_values(&[self.name.as_str(), self.version.as_str()]))
    }

    pub fn answered_metrics(&self, metrics: &Metrics, role: Role, endpoint: Endpoint) -> &(IntCounter, Histogram) {
        self.answered[role.index()][endpoint.index()].get_or_init(|| {
            let (name, version, role, endpoint) = (self.name.as_str(), self.version.as_str(), role.as_str(), endpoint.label());
            (
                metrics.requests.with_label_values(&[name, version, role, endpoint, "200"]),
                metrics.request_duration.with_label_values(&[name, version, role, endpoint]),
            )
        })
    }

    /// This version's counters, as the statistics extension reports them. Input and output
    /// conversion are not timed apart from inference: they carry compute_infer's count with 0 ns
    /// (clients check that the three counts agree).
    pub fn statistics(&self, served: Option<&Served>) -> modelship_protocol::statistics::ModelStatistics {
        use modelship_protocol::statistics::{BatchStatistics, InferStatistics, ModelStatistics, StatisticDuration};
        let s = &self.stats;
        let d = |d: &Duration| {
            let (count, ns) = d.get();
            StatisticDuration { count, ns }
        };
        // compute_infer is read once: input and output carry its count, and clients (Triton's
        // perf_analyzer) refuse statistics whose three counts differ, which two reads racing a
        // request would give.
        let compute_infer = d(&s.compute_infer);
        let untimed = StatisticDuration { count: compute_infer.count, ns: 0 };
        let batches = s.batches.lock().unwrap_or_else(|p| p.into_inner()).clone();
        ModelStatistics {
            name: self.name.clone(),
            version: self.triton_version(served),
            last_inference: s.last_inference_ms.load(Ordering::Relaxed),
            inference_count: s.inference_count.load(Ordering::Relaxed),
            execution_count: s.execution_count.load(Ordering::Relaxed),
            inference_stats: InferStatistics {
                success: d(&s.success),
                fail: d(&s.fail),
                queue: d(&s.queue),
                compute_input: untimed,
                compute_infer,
                compute_output: untimed,
                ..Default::default()
            },
            batch_stats: batches
                .into_iter()
                .map(|(size, (count, ns))| BatchStatistics {
                    batch_size: size as u64,
                    compute_input: StatisticDuration { count, ns: 0 },
                    compute_infer: StatisticDuration { count, ns },
                    compute_output: StatisticDuration { count, ns: 0 },
                })
                .collect(),
        }
    }

    /// The version as Triton's statistics extension reports it: an integer (perf_analyzer parses
    /// it as one). An integer version is itself; any other is its 1-based position among the
    /// versions of `served` (in the order of `versions`), else 1.
    pub fn triton_version(&self, served: Option<&Served>) -> String {
        if self.version.parse::<u64>().is_ok() {
            return self.version.clone();
        }
        let position = served.and_then(|s| s.versions.keys().position(|v| *v == self.version)).unwrap_or(0);
        (position + 1).to_string()
    }

    /// What the model configuration extension tells clients about batching.
    pub fn batching_facts(&self) -> modelship_protocol::model_config::BatchingFacts {
        use modelship_protocol::model_config::{BatchingFacts, DynamicBatching, batches_rows};
        let batching = self.pool_config.batching.as_ref();
        BatchingFacts {
            max_batch_size: match batching {
                Some(b) => b.max_batch_size,
                None if batches_rows(&self.info) => crate::pool::DEFAULT_MAX_BATCH_SIZE,
                None => 0,
            },
            // Joining only the requests already waiting is Triton's dynamic batching with no delay.
            dynamic: batching
                .map(|b| DynamicBatching {
                    preferred_batch_size: b.preferred_batch_sizes.clone(),
                    max_queue_delay_microseconds: b.max_queue_delay.as_micros() as u64,
                })
                .or_else(|| self.pool.joins_waiting().then(DynamicBatching::default)),
            instances: self.workers(),
        }
    }

    pub fn queued(&self) -> usize {
        self.pool.queued()
    }

    /// The queue's bound (`model.max_queue`).
    pub fn queue_capacity(&self) -> usize {
        self.pool.capacity()
    }

    /// When a client's request last ran on it, else when it loaded (milliseconds since the epoch):
    /// what least-recently-used eviction orders by.
    pub fn last_used_ms(&self) -> u64 {
        self.stats.last_inference_ms.load(Ordering::Relaxed).max(self.loaded_at_ms)
    }

    /// What it counts as against a bound on loaded bytes: the resident growth its load caused or
    /// the model's size, whichever is larger (a load that reuses freed memory shows little growth).
    pub fn cost_bytes(&self) -> u64 {
        self.memory_bytes.unwrap_or(0).max(self.model_bytes)
    }

    /// Whether a request of `rows` rows would run on the calling thread now (tests).
    #[cfg(test)]
    pub(crate) fn runs_inline(&self, rows: usize) -> bool {
        self.pool.runs_inline(rows)
    }

    pub fn workers(&self) -> usize {
        self.pool.workers()
    }

    /// Whether the queue is full (a request now would be refused).
    pub fn is_saturated(&self) -> bool {
        self.pool.is_full()
    }

    /// See [`WorkerPool::set_background`].
    pub fn set_background(&self, background: bool) {
        self.pool.set_background(background);
    }

    /// Sends the warm-up requests `plan` asks for ([`WarmUp`]), one after another; the first
    /// failure is the answer ("warm-up request 2 of 3 (rows drawn to the signature): ..."). Also
    /// spares the first real request the runtime's lazy initialisation.
    pub async fn warm_up(&self, plan: &WarmUp) -> Result<(), String> {
        let requests = plan.requests.max(1);
        let mut rng = fastrand::Rng::with_seed(0x5eed);
        for i in 0..requests {
            let (what, inputs) = match (i, &plan.sample) {
                (0, Some(sample)) => (format!("the sample from {}", sample.source), Ok(sample.inputs.clone())),
                (0, None) | (1, Some(_)) => ("zeros".to_owned(), self.drawn_inputs(zeros, false)),
                _ => ("rows drawn to the signature".to_owned(), self.drawn_inputs(|datatype, n| drawn(datatype, n, &mut rng), true)),
            };
            let inputs = inputs.map_err(|e| format!("warm-up request {} of {requests} ({what}) cannot be built: {e}", i + 1))?;
            if let Err(e) = self.run(InferRequest { id: None, inputs, outputs: None }, false, None).await {
                return Err(format!("warm-up request {} of {requests} ({what}) failed: {e}", i + 1));
            }
        }
        Ok(())
    }

    /// One tensor per input, filled by `fill`: dynamic dimensions 1, or 2 for a dynamic first
    /// dimension when `two_rows`.
    fn drawn_inputs(&self, mut fill: impl FnMut(DataType, usize) -> TensorData, two_rows: bool) -> Result<Vec<Tensor>, InferError> {
        self.info
            .signature
            .inputs
            .iter()
            .map(|spec| {
                let shape: Vec<usize> = spec
                    .shape
                    .iter()
                    .enumerate()
                    .map(|(axis, &d)| usize::try_from(d).unwrap_or(if axis == 0 && two_rows { 2 } else { 1 }).max(1))
                    .collect();
                let n: usize = shape.iter().product();
                Tensor::new(spec.name.clone(), shape, fill(spec.datatype, n))
            })
            .collect()
    }
}

/// `n` values of `datatype` such as real inputs hold: floats in [-1, 1], integers 0 or 1
/// (valid as indices and flags), booleans, short lowercase words.
fn drawn(datatype: DataType, n: usize, rng: &mut fastrand::Rng) -> TensorData {
    let float = |rng: &mut fastrand::Rng| rng.f64() * 2.0 - 1.0;
    match datatype {
        DataType::Bool => TensorData::Bool((0..n).map(|_| rng.bool()).collect()),
        DataType::Uint8 => TensorData::Uint8((0..n).map(|_| rng.u8(0..=1)).collect()),
        DataType::Uint16 => TensorData::Uint16((0..n).map(|_| rng.u16(0..=1)).collect()),
        DataType::Uint32 => TensorData::Uint32((0..n).map(|_| rng.u32(0..=1)).collect()),
        DataType::Uint64 => TensorData::Uint64((0..n).map(|_| rng.u64(0..=1)).collect()),
        DataType::Int8 => TensorData::Int8((0..n).map(|_| rng.i8(0..=1)).collect()),
        DataType::Int16 => TensorData::Int16((0..n).map(|_| rng.i16(0..=1)).collect()),
        DataType::Int32 => TensorData::Int32((0..n).map(|_| rng.i32(0..=1)).collect()),
        DataType::Int64 => TensorData::Int64((0..n).map(|_| rng.i64(0..=1)).collect()),
        DataType::Fp16 => TensorData::Fp16((0..n).map(|_| half::f16::from_f64(float(rng))).collect()),
        DataType::Fp32 => TensorData::Fp32((0..n).map(|_| float(rng) as f32).collect()),
        DataType::Fp64 => TensorData::Fp64((0..n).map(|_| float(rng)).collect()),
        DataType::Bytes => {
            TensorData::Bytes((0..n).map(|_| (0..rng.usize(1..=8)).map(|_| rng.lowercase() as u8).collect()).collect())
        }
    }
}

fn zeros(datatype: DataType, n: usize) -> TensorData {
    match datatype {
        DataType::Bool => TensorData::Bool(vec![false; n]),
        DataType::Uint8 => TensorData::Uint8(vec![0; n]),
        DataType::Uint16 => TensorData::Uint16(vec![0; n]),
        DataType::Uint32 => TensorData::Uint32(vec![0; n]),
        DataType::Uint64 => TensorData::Uint64(vec![0; n]),
        DataType::Int8 => TensorData::Int8(vec![0; n]),
        DataType::Int16 => TensorData::Int16(vec![0; n]),
        DataType::Int32 => TensorData::Int32(vec![0; n]),
        DataType::Int64 => TensorData::Int64(vec![0; n]),
        DataType::Fp16 => TensorData::Fp16(vec![half::f16::ZERO; n]),
        DataType::Fp32 => TensorData::Fp32(vec![0.0; n]),
        DataType::Fp64 => TensorData::Fp64(vec![0.0; n]),
        DataType::Bytes => TensorData::Bytes(vec![Vec::new(); n]),
    }
}

/// One model name as served: the loaded versions and the routing table between them. Replaced
/// whole (never mutated) when the table or the set of loaded versions changes.
pub struct Served {
    pub table: TrafficTable,
    /// The routing revision this table came from (0 before any traffic change).
    pub revision: u64,
    /// Every loaded version: those the table routes to, plus warm ones kept for rollback.
    pub versions: BTreeMap<String, Arc<LoadedModel>>,
}

impl Served {
    /// One version, all traffic.
    pub fn single(model: Arc<LoadedModel>) -> Self {
        let version = model.version.clone();
        Served { table: TrafficTable::new(version.clone()), revision: 0, versions: BTreeMap::from([(version, model)]) }
    }

    pub fn stable(&self) -> Option<&Arc<LoadedModel>> {
        self.versions.get(&self.table.stable)
    }

    /// A loaded version by name, or an error listing the loaded ones.
    pub fn version(&self, name: &str, version: &str) -> Result<Arc<LoadedModel>, ApiError> {
        self.versions.get(version).cloned().ok_or_else(|| ApiError::UnknownVersion {
            name: name.to_owned(),
            version: version.to_owned(),
            available: self.versions.keys().cloned().collect(),
        })
    }

    /// The version (and role) that answers, and the version that gets a mirrored copy.
    pub fn route(&self, name: &str, input: &RouteInput<'_>) -> Result<Routed, ApiError> {
        let decision = self.table.route(name, input);
        let model = self.version(name, decision.version)?;
        let shadow = decision.shadow.and_then(|v| self.versions.get(v).cloned());
        Ok(Routed { model, role: decision.role, shadow })
    }
}

/// Where one request goes.
pub struct Routed {
    pub model: Arc<LoadedModel>,
    pub role: Role,
    pub shadow: Option<Arc<LoadedModel>>,
}

/// The state of one model name on this server.
#[derive(Clone)]
pub enum ModelSlot {
    Loading { version: String },
    Ready(Arc<Served>),
    Failed { version: String, error: String },
    /// Unloaded to stay within the bound on loaded models ([`crate::residency`]): its routing
    /// stays in force, and its stable version loads again on the next request that needs it.
    Resting(Arc<Resting>),
}

/// What is kept of a model unloaded to save memory: enough to answer its metadata and readiness
/// and to load it again as it was.
pub struct Resting {
    pub table: TrafficTable,
    pub revision: u64,
    /// The stable version's signature.
    pub info: ModelInfo,
    /// What it counted as against the bound on loaded bytes ([`LoadedModel::cost_bytes`]).
    pub cost_bytes: u64,
}

impl Resting {
    /// Its routing in force, with nothing loaded: what a traffic write that loads what it routes
    /// to starts from.
    pub fn unloaded(&self) -> Served {
        Served { table: self.table.clone(), revision: self.revision, versions: BTreeMap::new() }
    }
}

impl Served {
    /// Whether it may be unloaded to save memory: one version loaded, routed all traffic (no
    /// candidate or shadow: nothing under rollout, nothing a fleet revision splits).
    pub fn may_rest(&self) -> bool {
        self.table.candidate.is_none() && self.table.shadow.is_none() && self.versions.len() == 1
    }

    /// The most recent use of any of its versions ([`LoadedModel::last_used_ms`]).
    pub fn last_used_ms(&self) -> u64 {
        self.versions.values().map(|m| m.last_used_ms()).max().unwrap_or(0)
    }

    pub fn cost_bytes(&self) -> u64 {
        self.versions.values().map(|m| m.cost_bytes()).sum()
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// This process's resident memory (`VmRSS` of `/proc/self/status`), where it can be read.
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: u64 = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb * 1024)
}

/// Models by name. Read on every request, written rarely: readers take a snapshot without locks.
///
/// The one writer of the table: every change (a model loading, failing, a new routing table or
/// version set published, a model unloaded) goes through [`ModelTable::loading`],
/// [`ModelTable::failed`], [`ModelTable::publish`], [`ModelTable::publish_if`] or
/// [`ModelTable::unload`], whoever asks (traffic changes, the repository API, file and alias
/// following, fleet revisions, Lambda's cold start). Each write is serialized and publishes what
/// follows from it: the routing metrics of the new table, and the per-version metrics of the
/// versions it no longer holds dropped.
pub struct ModelTable {
    slots: ArcSwap<BTreeMap<String, ModelSlot>>,
    metrics: Arc<Metrics>,
    /// Serializes writes, so the table and its metrics change together.
    writing: Mutex<()>,
    /// The last failed attempt to replace a serving model, by name, until a later one succeeds.
    reload_errors: std::sync::Mutex<BTreeMap<String, String>>,
    /// The model the server was started with: what `/v1/predict` answers with when others are
    /// served beside it (loaded through the repository API).
    primary: OnceLock<String>,
    /// Each model's revisions as this server began routing by them (the last
    /// [`APPLIED_KEPT`]), written under `writing`.
    applied: std::sync::Mutex<BTreeMap<String, std::collections::VecDeque<AppliedRevision>>>,
}

/// Revisions kept per model in [`ModelTable::applied`].
const APPLIED_KEPT: usize = 100;

impl ModelTable {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        ModelTable { slots: ArcSwap::default(), metrics, writing: Mutex::new(()), reload_errors: Default::default(), primary: OnceLock::new(), applied: Default::default() }
    }

    /// The revisions of `name` this server began routing by, oldest first, and when.
    pub fn applied(&self, name: &str) -> Vec<AppliedRevision> {
        self.applied.lock().unwrap_or_else(|p| p.into_inner()).get(name).map(|a| a.iter().copied().collect()).unwrap_or_default()
    }

    /// Names the server's own model (once; later calls change nothing).
    pub fn set_primary(&self, name: &str) {
        let _ = self.primary.set(name.to_owned());
    }

    pub fn set_reload_error(&self, name: &str, error: Option<String>) {
        let mut errors = self.reload_errors.lock().unwrap_or_else(|p| p.into_inner());
        match error {
            Some(e) => errors.insert(name.to_owned(), e),
            None => errors.remove(name),
        };
    }

    pub fn reload_errors(&self) -> BTreeMap<String, String> {
        self.reload_errors.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// `name` is being loaded at `version` (readiness waits for it).
    pub fn loading(&self, name: &str, version: &str) {
        let _one_writer = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        self.set(name, ModelSlot::Loading { version: version.to_owned() });
    }

    /// `name` could not be loaded at `version`; the versions it served, if any, are dropped.
    pub fn failed(&self, name: &str, version: &str, error: String) {
        let _one_writer = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        let previous = self.set(name, ModelSlot::Failed { version: version.to_owned(), error });
        self.after_write(name, previous.as_ref(), None);
    }

    /// Serves `next` for `name` from now on: its routing is published to the metrics, and the
    /// versions the previous table held that `next` does not are forgotten there.
    pub fn publish(&self, name: &str, next: impl Into<Arc<Served>>) -> Arc<Served> {
        let _one_writer = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        self.publish_locked(name, next.into())
    }

    /// [`ModelTable::publish`], only while `name` still serves `expected` (compare and swap);
    /// false when another write came first, which then stands.
    pub fn publish_if(&self, name: &str, expected: &Arc<Served>, next: impl Into<Arc<Served>>) -> bool {
        let _one_writer = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.slots.load();
        if !matches!(current.get(name), Some(ModelSlot::Ready(s)) if Arc::ptr_eq(s, expected)) {
            return false;
        }
        self.publish_locked(name, next.into());
        true
    }

    /// The body of both publishes. Only under `writing`.
    fn publish_locked(&self, name: &str, next: Arc<Served>) -> Arc<Served> {
        let previous = self.set(name, ModelSlot::Ready(Arc::clone(&next)));
        if !matches!(&previous, Some(ModelSlot::Ready(p)) if p.revision == next.revision) {
            let at_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
            let mut applied = self.applied.lock().unwrap_or_else(|p| p.into_inner());
            let log = applied.entry(name.to_owned()).or_default();
            if log.len() == APPLIED_KEPT {
                log.pop_front();
            }
            log.push_back(AppliedRevision { revision: next.revision, at_ms });
        }
        self.after_write(name, previous.as_ref(), Some(&next));
        next
    }

    /// Stops serving `name`; returns what it was. In-flight requests finish on the version they hold.
    pub fn unload(&self, name: &str) -> Option<ModelSlot> {
        let _one_writer = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        let mut removed = None;
        self.slots.rcu(|current| {
            let mut next = BTreeMap::clone(current);
            removed = next.remove(name);
            next
        });
        self.after_write(name, removed.as_ref(), None);
        removed
    }

    /// Unloads `name`'s one loaded version to save memory, while it still serves `expected`
    /// (compare and swap): its routing stays in force ([`ModelSlot::Resting`]). In-flight
    /// requests finish on the version they hold; the memory is freed when the last one ends.
    pub fn rest(&self, name: &str, expected: &Arc<Served>) -> bool {
        let _one_writer = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.slots.load();
        if !matches!(current.get(name), Some(ModelSlot::Ready(s)) if Arc::ptr_eq(s, expected)) {
            return false;
        }
        let Some(stable) = expected.stable() else { return false };
        let resting = Resting {
            table: expected.table.clone(),
            revision: expected.revision,
            info: stable.info.clone(),
            cost_bytes: expected.cost_bytes(),
        };
        self.set(name, ModelSlot::Resting(Arc::new(resting)));
        // The routing is unchanged (its gauges stay); only the versions' own metrics go.
        for gone in expected.versions.values() {
            self.metrics.forget_version(name, &gone.version, &gone.info, gone.workers());
        }
        true
    }

    /// Serves `next` for `name`, loaded again, while it still rests as `expected` (compare and
    /// swap); `None` when another write came first, which then stands.
    pub fn wake(&self, name: &str, expected: &Arc<Resting>, next: Served) -> Option<Arc<Served>> {
        let _one_writer = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.slots.load();
        if !matches!(current.get(name), Some(ModelSlot::Resting(r)) if Arc::ptr_eq(r, expected)) {
            return None;
        }
        Some(self.publish_locked(name, Arc::new(next)))
    }

    /// Replaces `name`'s slot; returns the one it replaced. Only under `writing`.
    fn set(&self, name: &str, slot: ModelSlot) -> Option<ModelSlot> {
        let mut previous = None;
        self.slots.rcu(|current| {
            let mut next = BTreeMap::clone(current);
            previous = next.insert(name.to_owned(), slot.clone());
            next
        });
        previous
    }

    /// Publishes `next`'s routing to the metrics (none left for a version `previous` routed to)
    /// and drops the per-version metrics of the versions `previous` served that `next` does not.
    fn after_write(&self, name: &str, previous: Option<&ModelSlot>, next: Option<&Served>) {
        let previous = match previous {
            Some(ModelSlot::Ready(previous)) => Some(previous),
            _ => None,
        };
        match (next, previous) {
            (Some(next), _) => {
                let versions = next.versions.keys().chain(previous.into_iter().flat_map(|p| p.versions.keys()));
                self.metrics.publish_traffic(name, &next.table, next.revision, versions.map(String::as_str));
            }
            // Unloaded or failed: no routing of it is left to report.
            (None, Some(previous)) => self.metrics.forget_traffic(name, previous.versions.keys().map(String::as_str)),
            (None, None) => {}
        }
        let Some(previous) = previous else { return };
        for gone in previous.versions.values().filter(|m| next.is_none_or(|n| !n.versions.contains_key(&m.version))) {
            self.metrics.forget_version(name, &gone.version, &gone.info, gone.workers());
        }
    }

    /// The statistics extension's answer, the same over REST and gRPC: every loaded version of
    /// every ready model (no name), of model `name`, or of one of its versions.
    pub fn statistics(&self, name: Option<&str>, version: Option<&str>) -> Result<Vec<modelship_protocol::statistics::ModelStatistics>, ApiError> {
        let served: Vec<Arc<Served>> = match name {
            None => self
                .slots
                .load()
                .values()
                .filter_map(|slot| match slot {
                    ModelSlot::Ready(served) => Some(Arc::clone(served)),
                    _ => None,
                })
                .collect(),
            // A resting model has no version loaded, so nothing counted.
            Some(name) if matches!(self.slot(name), Some(ModelSlot::Resting(_))) => Vec::new(),
            Some(name) => vec![self.served(name)?],
        };
        let mut stats = Vec::new();
        for s in &served {
            // A version means something only for a named model.
            match name.and(version) {
                Some(v) => stats.push(s.version(name.unwrap_or_default(), v)?.statistics(Some(s))),
                None => stats.extend(s.versions.values().map(|m| m.statistics(Some(s)))),
            }
        }
        Ok(stats)
    }

    /// The slot of `name`, whatever its state.
    pub fn slot(&self, name: &str) -> Option<ModelSlot> {
        self.slots.load().get(name).cloned()
    }

    /// The routing in force for `name` and its revision, whether it is loaded or resting.
    pub fn routing(&self, name: &str) -> Result<(TrafficTable, u64), ApiError> {
        match self.slot(name) {
            Some(ModelSlot::Resting(r)) => Ok((r.table.clone(), r.revision)),
            _ => self.served(name).map(|s| (s.table.clone(), s.revision)),
        }
    }

    pub fn snapshot(&self) -> Arc<BTreeMap<String, ModelSlot>> {
        self.slots.load_full()
    }

    pub fn names(&self) -> Vec<String> {
        self.slots.load().keys().cloned().collect()
    }

    /// True when at least one model is declared and every declared model is loaded (or resting:
    /// it answered before, and loads again on demand).
    pub fn all_ready(&self) -> bool {
        let slots = self.slots.load();
        !slots.is_empty() && slots.values().all(|s| matches!(s, ModelSlot::Ready(_) | ModelSlot::Resting(_)))
    }

    /// The served state of model `name`.
    pub fn served(&self, name: &str) -> Result<Arc<Served>, ApiError> {
        let slots = self.slots.load();
        match slots.get(name) {
            None => Err(ApiError::UnknownModel { name: name.to_owned(), available: slots.keys().cloned().collect() }),
            Some(ModelSlot::Ready(served)) => Ok(Arc::clone(served)),
            Some(ModelSlot::Resting(_)) => Err(ApiError::Unloaded(name.to_owned())),
            Some(ModelSlot::Loading { .. } | ModelSlot::Failed { .. }) => Err(ApiError::NotReady(name.to_owned())),
        }
    }

    /// The loaded model `name`: at `version` when one is asked for, else its stable version.
    pub fn get(&self, name: &str, version: Option<&str>) -> Result<Arc<LoadedModel>, ApiError> {
        let served = self.served(name)?;
        match version {
            Some(v) => served.version(name, v),
            None => served.version(name, &served.table.stable),
        }
    }

    /// The model `/v1/predict` answers with: the server's own model, else the only one.
    pub fn single_name(&self) -> Result<String, ApiError> {
        if let Some(primary) = self.primary.get() {
            return Ok(primary.clone());
        }
        let names = self.names();
        match names.as_slice() {
            [only] => Ok(only.clone()),
            _ => Err(ApiError::Invalid(format!(
                "/v1/predict answers for a server's own model, and this one has none among {}: use /v2/models/{{model}}/infer",
                names.join(", ")
            ))),
        }
    }
}
