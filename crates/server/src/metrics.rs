//! Prometheus metrics: every metric modelship exports is declared here, in one place.

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Latency buckets from 50 µs to 10 s: single-row tree models answer in tens of microseconds,
/// large networks in seconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

pub struct Metrics {
    registry: Registry,
    /// The GPUs' utilisation and memory, read at each scrape where NVML is present.
    gpus: crate::gpu::GpuMetrics,
    /// Requests by model, version, endpoint and HTTP status code.
    pub requests: IntCounterVec,
    /// Failed requests by model, version, endpoint and stable error code.
    pub errors: IntCounterVec,
    /// Whole request, from the first byte read to the response built.
    pub request_duration: HistogramVec,
    /// Inference alone, inside a worker.
    pub inference_duration: HistogramVec,
    /// Time a request waited for a worker.
    pub queue_duration: HistogramVec,
    /// Rows per runtime call: the batch sizes dynamic batching formed (1 per request without it).
    pub batch_size: HistogramVec,
    /// Requests joined into one runtime call.
    pub batch_requests: HistogramVec,
    pub in_flight: IntGaugeVec,
    /// `in_flight` by endpoint, each looked up once (see [`Metrics::in_flight_at`]).
    in_flight_at: [std::sync::OnceLock<prometheus::IntGauge>; Endpoint::COUNT],
    pub queue_length: IntGaugeVec,
    /// The queue's bound per version (`modelship_queue_length` over it is how full it is).
    pub queue_capacity: IntGaugeVec,
    /// 1 while the server answers /health/ready with 200, read at each scrape.
    pub ready: prometheus::IntGauge,
    /// 1 while the shared control store answers this replica's beats (absent with the embedded one).
    pub control_store_up: IntGaugeVec,
    /// The model's score per answered request (its first output's first value), by version.
    pub prediction_score: HistogramVec,
    /// Rollouts this replica saw end, by outcome (promoted, rolled_back).
    pub rollouts_finished: IntCounterVec,
    pub model_load_seconds: GaugeVec,
    /// How much resident memory grew while a version loaded (approximate when loads overlap).
    pub model_memory_bytes: IntGaugeVec,
    pub model_info: IntGaugeVec,
    /// Replacements of a served model by a new version (alias moves), by result.
    pub model_swaps: IntCounterVec,
    /// Shadow comparisons by model, shadow version and result (agree, disagree, error).
    pub shadow_comparisons: IntCounterVec,
    /// Mirrored requests dropped because the shadow's bound or queue was full.
    pub shadow_dropped: IntCounterVec,
    /// Mean absolute difference of float outputs, shadow vs served, per request.
    pub shadow_abs_diff: HistogramVec,
    /// Share of live traffic per version and role, in basis points.
    pub traffic_weight: IntGaugeVec,
    /// The routing revision in force.
    pub traffic_revision: IntGaugeVec,
    /// 1 for the phase the model's rollout is in.
    pub rollout_phase: IntGaugeVec,
    /// The rollout's current step (1-based).
    pub rollout_step: IntGaugeVec,
    /// When the rollout's current step (or hold, after a resume or the fleet's settling) began.
    pub rollout_step_started: GaugeVec,
    /// Each rollout check's latest value.
    pub rollout_check_value: GaugeVec,
    /// Each rollout check's latest verdict: 2 proven, 1 pass, 0 inconclusive, -1 fail.
    pub rollout_check_verdict: IntGaugeVec,
    /// Models unloaded to stay within the bound on loaded models, by model.
    pub model_evictions: IntCounterVec,
    /// Loads of an unloaded model asked for by a request, by model and result.
    pub model_lazy_loads: IntCounterVec,
    /// How long a load asked for by a request took (fetch, load, warm-up), by model.
    pub model_lazy_load_seconds: HistogramVec,
    /// Models with at least one version in memory.
    pub models_loaded: prometheus::IntGauge,
    /// What the loaded models are counted as against `server.max_loaded_bytes`.
    pub models_loaded_bytes: prometheus::IntGauge,
    /// Runtime sessions this process holds, read from the pools at each scrape.
    sessions_in_memory: prometheus::IntGauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
            let m = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            r.register(Box::new(m.clone())).expect("unique metric");
            m
        }
        fn histogram(r: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
            let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
            let m = HistogramVec::new(opts, labels).expect("valid metric");
            r.register(Box::new(m.clone())).expect("unique metric");
            m
        }
        fn gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
            let m = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            r.register(Box::new(m.clone())).expect("unique metric");
            m
        }
        let model_load_seconds = GaugeVec::new(
            Opts::new("modelship_model_load_seconds", "Seconds it took to load the model version (all workers)"),
            &["model", "version"],
        )
        .expect("valid metric");
        registry.register(Box::new(model_load_seconds.clone())).expect("unique metric");
        let model_memory_bytes = IntGaugeVec::new(
            Opts::new("modelship_model_memory_bytes", "How much the server's resident memory grew while the model version loaded (approximate when loads overlap)"),
            &["model", "version"],
        )
        .expect("valid metric");
        registry.register(Box::new(model_memory_bytes.clone())).expect("unique metric");
        let plain_gauge = |name: &str, help: &str| {
            let g = prometheus::IntGauge::new(name, help).expect("valid metric");
            registry.register(Box::new(g.clone())).expect("unique metric");
            g
        };
        let models_loaded = plain_gauge("modelship_models_loaded", "Models with at least one version in memory");
        let models_loaded_bytes = plain_gauge(
            "modelship_models_loaded_bytes",
            "The loaded models' size as counted against server.max_loaded_bytes (each version's file size or resident growth at load, whichever is larger)",
        );
        let sessions_in_memory = plain_gauge(
            "modelship_sessions_in_memory",
            "Runtime sessions this process holds, every model and worker together (one per worker of each loaded version)",
        );
        let lazy_load_seconds = {
            let opts = HistogramOpts::new(
                "modelship_model_lazy_load_seconds",
                "Seconds a load asked for by a request took: fetch, load and warm-up",
            )
            .buckets(vec![0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]);
            let m = HistogramVec::new(opts, &["model"]).expect("valid metric");
            registry.register(Box::new(m.clone())).expect("unique metric");
            m
        };
        Metrics {
            requests: counter(
                &registry,
                "modelship_requests_total",
                "Requests by model, version, endpoint and HTTP status code",
                &["model", "version", "role", "endpoint", "code"],
            ),
            errors: counter(
                &registry,
                "modelship_request_errors_total",
                "Failed requests by model, version, endpoint and error code",
                &["model", "version", "endpoint", "error"],
            ),
            request_duration: histogram(
                &registry,
                "modelship_request_duration_seconds",
                "Whole request latency, body read to response built",
                &["model", "version", "role", "endpoint"],
            ),
            inference_duration: histogram(
                &registry,
                "modelship_inference_duration_seconds",
                "Inference latency inside a worker",
                &["model", "version"],
            ),
            queue_duration: histogram(
                &registry,
                "modelship_queue_duration_seconds",
                "Time requests waited for an inference worker",
                &["model", "version"],
            ),
            batch_size: {
                let opts = HistogramOpts::new("modelship_batch_size", "Rows per runtime call (the batch sizes dynamic batching formed)")
                    .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0]);
                let m = HistogramVec::new(opts, &["model", "version"]).expect("valid metric");
                registry.register(Box::new(m.clone())).expect("unique metric");
                m
            },
            batch_requests: {
                let opts = HistogramOpts::new("modelship_batch_requests", "Requests joined into one runtime call by dynamic batching")
                    .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0]);
                let m = HistogramVec::new(opts, &["model", "version"]).expect("valid metric");
                registry.register(Box::new(m.clone())).expect("unique metric");
                m
            },
            in_flight: gauge(&registry, "modelship_requests_in_flight", "Requests being handled", &["endpoint"]),
            in_flight_at: Default::default(),
            queue_length: gauge(
                &registry,
                "modelship_queue_length",
                "Requests waiting for an inference worker",
                &["model", "version"],
            ),
            queue_capacity: gauge(&registry, "modelship_queue_capacity", "Requests a version's queue holds before it answers 429 (model.max_queue)", &["model", "version"]),
            ready: plain_gauge("modelship_ready", "1 while the server is ready (/health/ready answers 200), 0 otherwise"),
            control_store_up: gauge(&registry, "modelship_control_store_up", "1 while the shared control store answers this replica's beats", &["store"]),
            prediction_score: {
                let opts = HistogramOpts::new("modelship_prediction_score", "The model's score per answered request: its first output's first value (a probability for a classifier)")
                    .buckets(vec![0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0]);
                let m = HistogramVec::new(opts, &["model", "version"]).expect("valid metric");
                registry.register(Box::new(m.clone())).expect("unique metric");
                m
            },
            rollouts_finished: counter(&registry, "modelship_rollouts_finished_total", "Rollouts this replica saw end since it started, by outcome (promoted, rolled_back)", &["model", "outcome"]),
            model_load_seconds,
            model_memory_bytes,
            model_info: gauge(
                &registry,
                "modelship_model_info",
                "1 for each model version being served, with its details as labels (device: cpu, cuda:N, tensorrt:N)",
                &["model", "version", "platform", "device", "workers"],
            ),
            model_swaps: counter(
                &registry,
                "modelship_model_swaps_total",
                "Replacements of a served model by a new version, by result (success, failure)",
                &["model", "result"],
            ),
            shadow_comparisons: counter(
                &registry,
                "modelship_shadow_comparisons_total",
                "Shadow answers compared with the served answer to the same request, by result (agree, disagree, error)",
                &["model", "version", "result"],
            ),
            shadow_dropped: counter(
                &registry,
                "modelship_shadow_dropped_total",
                "Mirrored requests dropped because the shadow's bound or queue was full",
                &["model", "version"],
            ),
            shadow_abs_diff: {
                let opts = HistogramOpts::new(
                    "modelship_shadow_abs_diff",
                    "Mean absolute difference of float outputs between the shadow and the served answer, per request",
                )
                .buckets(vec![0.0, 1e-6, 1e-4, 1e-3, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0]);
                let m = HistogramVec::new(opts, &["model", "version"]).expect("valid metric");
                registry.register(Box::new(m.clone())).expect("unique metric");
                m
            },
            traffic_weight: gauge(
                &registry,
                "modelship_traffic_weight_bp",
                "Share of live traffic per version and role, in basis points (10000 = 100%)",
                &["model", "version", "role"],
            ),
            traffic_revision: gauge(&registry, "modelship_traffic_revision", "The routing revision in force", &["model"]),
            rollout_phase: gauge(&registry, "modelship_rollout_phase", "1 for the phase the model's rollout is in", &["model", "phase"]),
            rollout_step: gauge(&registry, "modelship_rollout_step", "The rollout's current step, from 1", &["model"]),
            rollout_step_started: {
                let m = GaugeVec::new(
                    Opts::new("modelship_rollout_step_started_timestamp_seconds", "When the rollout's current step began (Unix seconds; a resume or the fleet's settling starts it again)"),
                    &["model"],
                )
                .expect("valid metric");
                registry.register(Box::new(m.clone())).expect("unique metric");
                m
            },
            rollout_check_value: {
                let m = GaugeVec::new(Opts::new("modelship_rollout_check_value", "Each rollout check's latest value"), &["model", "check"])
                    .expect("valid metric");
                registry.register(Box::new(m.clone())).expect("unique metric");
                m
            },
            rollout_check_verdict: gauge(
                &registry,
                "modelship_rollout_check_verdict",
                "Each rollout check's latest verdict: 2 proven (always valid, in the candidate's favour), 1 pass, 0 inconclusive, -1 fail",
                &["model", "check"],
            ),
            model_evictions: counter(
                &registry,
                "modelship_model_evictions_total",
                "Models unloaded to stay within server.max_loaded_models or server.max_loaded_bytes",
                &["model"],
            ),
            model_lazy_loads: counter(
                &registry,
                "modelship_model_lazy_loads_total",
                "Loads of an unloaded model asked for by a request, by result (loaded, failed, no_room)",
                &["model", "result"],
            ),
            model_lazy_load_seconds: lazy_load_seconds,
            models_loaded,
            models_loaded_bytes,
            sessions_in_memory,
            gpus: crate::gpu::GpuMetrics::new(&registry),
            registry,
        }
    }

    /// Publishes the weights and revision of `model`'s routing table, over `versions`, the
    /// versions it holds loaded.
    pub fn publish_traffic<'a>(&self, model: &str, table: &modelship_router::TrafficTable, revision: u64, versions: impl Iterator<Item = &'a str>) {
        for v in versions {
            for role in ["stable", "candidate", "shadow"] {
                let _ = self.traffic_weight.remove_label_values(&[model, v, role]);
            }
        }
        for (version, role, bp) in table.weights() {
            self.traffic_weight.with_label_values(&[model, version, role.as_str()]).set(i64::from(bp.get()));
        }
        if let Some(s) = &table.shadow {
            self.traffic_weight.with_label_values(&[model, &s.version, "shadow"]).set(i64::from(s.percent.get()));
        }
        self.traffic_revision.with_label_values(&[model]).set(revision as i64);
    }

    /// Drops `model`'s routing gauges (weights of `versions`, the revision): it is not served any more.
    pub fn forget_traffic<'a>(&self, model: &str, versions: impl Iterator<Item = &'a str>) {
        for v in versions {
            for role in ["stable", "candidate", "shadow"] {
                let _ = self.traffic_weight.remove_label_values(&[model, v, role]);
            }
        }
        let _ = self.traffic_revision.remove_label_values(&[model]);
    }

    /// The in-flight gauge of `endpoint`: `with_label_values` hashes and locks on every call.
    pub fn in_flight_at(&self, endpoint: Endpoint) -> &prometheus::IntGauge {
        self.in_flight_at[endpoint.index()].get_or_init(|| self.in_flight.with_label_values(&[endpoint.label()]))
    }

    /// Drops the per-version gauges of a version no longer served.
    pub fn forget_version(&self, model: &str, version: &str, info: &modelship_inference::ModelInfo, workers: usize) {
        let workers = workers.to_string();
        let _ = self.model_info.remove_label_values(&[model, version, &info.platform, &info.placement.to_string(), &workers]);
        let _ = self.model_load_seconds.remove_label_values(&[model, version]);
        let _ = self.model_memory_bytes.remove_label_values(&[model, version]);
        let _ = self.queue_length.remove_label_values(&[model, version]);
        let _ = self.queue_capacity.remove_label_values(&[model, version]);
        let _ = self.prediction_score.remove_label_values(&[model, version]);
    }

    /// The registry, for metrics other crates declare (the feature store's).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        self.sessions_in_memory.set(i64::try_from(crate::pool::sessions_in_memory()).unwrap_or(i64::MAX));
        self.gpus.refresh();
        let mut out = Vec::with_capacity(16 * 1024);
        // Encoding gathered families into a Vec cannot fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

/// Where a request came in: the `endpoint` label of metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    V1Predict,
    V2Infer,
    GrpcInfer,
    /// An invocation without a listener (the Lambda adapter, tests).
    Direct,
    /// A chunk of rows scored by `modelship predict`.
    Batch,
}

impl Endpoint {
    /// How many endpoints there are: [`Endpoint::index`] is below it.
    pub const COUNT: usize = 5;

    /// A dense index, for tables by endpoint.
    pub fn index(self) -> usize {
        match self {
            Endpoint::V1Predict => 0,
            Endpoint::V2Infer => 1,
            Endpoint::GrpcInfer => 2,
            Endpoint::Direct => 3,
            Endpoint::Batch => 4,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Endpoint::V1Predict => "v1_predict",
            Endpoint::V2Infer => "v2_infer",
            Endpoint::GrpcInfer => "grpc_infer",
            Endpoint::Direct => "direct",
            Endpoint::Batch => "batch",
        }
    }
}
