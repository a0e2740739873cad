use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use crate::auth::Credentials;
use crate::health::Health;
use crate::metrics::Metrics;
use crate::model::ModelTable;
use crate::observe::Observations;
use crate::residency::{Residency, ResidencyLimits};
use crate::request_id::RequestIds;
use crate::serve::Tasks;
use crate::shadow::Shadows;

/// The default slowest average a body may arrive at once its first timeout has passed: 16 KiB/s,
/// so the default 16 MiB body limit allows about 17 minutes, and an idle trickle far less.
pub const DEFAULT_MIN_BODY_RATE: u64 = 16 * 1024;

/// Bounds applied to every request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_body_bytes: usize,
    /// The request line and headers together (413-like 431 in JSON past it).
    pub max_header_bytes: usize,
    /// Elements over all input tensors of one request.
    pub max_tensor_elements: usize,
    /// Rows (first dimension) of any input tensor of one request.
    pub max_rows: usize,
    /// Mirrored requests that may run at once; past this, copies are dropped (and counted).
    pub max_shadow_in_flight: usize,
    /// The longest a request body may pause between bytes.
    pub body_read_timeout: std::time::Duration,
    /// The slowest average a body may arrive at once `body_read_timeout` has passed.
    pub min_body_bytes_per_second: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 16 * 1024 * 1024,
            max_header_bytes: 64 * 1024,
            max_tensor_elements: 16 * 1024 * 1024,
            max_rows: 65_536,
            max_shadow_in_flight: 64,
            body_read_timeout: std::time::Duration::from_secs(10),
            min_body_bytes_per_second: DEFAULT_MIN_BODY_RATE,
        }
    }
}

/// The feature store the models share, and the feature service of each model that has a spec.
pub struct FeatureServices {
    pub store: Arc<modelship_features::Store>,
    pub models: std::collections::BTreeMap<String, Arc<modelship_features::FeatureService>>,
}

/// Everything a handler needs. One `Arc`: the framework clones the state for every middleware
/// and handler a request passes through, so a clone is one reference count, not one per field.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// What [`AppState`] shares.
pub struct Shared {
    pub models: Arc<ModelTable>,
    /// Which models are in memory: unloads the least recently used past a bound, and loads a
    /// resting one again when a request needs it.
    pub residency: Arc<Residency>,
    pub health: Arc<Health>,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
    pub shadows: Arc<Shadows>,
    pub observations: Arc<Observations>,
    /// The control token and the inference API keys.
    pub credentials: Arc<Credentials>,
    /// Background work (shadow copies, keep-warm expiry, loops), stopped by the server's shutdown.
    pub tasks: Tasks,
    pub(crate) ids: Arc<RequestIds>,
    /// Per-request numbers for weighted routing and shadow sampling.
    pub(crate) nonces: Arc<AtomicU64>,
    /// The feature store and each model's feature service, once the models loaded (each spec is
    /// checked against its model's signature); readiness follows the store from then on.
    pub features: Arc<std::sync::OnceLock<FeatureServices>>,
    /// The fleet's control store and the model it serves, when this replica is one of several:
    /// labels it cannot join are handed on through it.
    pub fleet: Arc<std::sync::OnceLock<(Arc<dyn crate::control::ControlStore>, String)>>,
    /// The prediction log, when one is configured: what each version answered, kept as data.
    pub predictions: Arc<std::sync::OnceLock<Arc<modelship_predictions::PredictionLog>>>,
    /// Where rollout events are told, when sinks are configured.
    pub notifier: Arc<std::sync::OnceLock<Arc<crate::notify::Notifier>>>,
    /// The OpenTelemetry tracer, when tracing is on.
    pub tracing: Arc<std::sync::OnceLock<Arc<crate::trace::Tracing>>>,
}

impl AppState {
    pub fn new(limits: Limits) -> Self {
        AppState::with_credentials(limits, Credentials::default())
    }

    pub fn with_credentials(limits: Limits, credentials: Credentials) -> Self {
        AppState::with_residency(limits, credentials, ResidencyLimits::default())
    }

    /// The state of a server whose loaded models are bounded by `residency`.
    pub fn with_residency(limits: Limits, credentials: Credentials, residency: ResidencyLimits) -> Self {
        let observations = Arc::new(Observations::default());
        let metrics = Arc::new(Metrics::default());
        let models = Arc::new(ModelTable::new(Arc::clone(&metrics)));
        let tasks = Tasks::default();
        AppState(Arc::new(Shared {
            residency: Arc::new(Residency::new(residency, Arc::clone(&models), Arc::clone(&metrics), tasks.clone())),
            models,
            health: Arc::default(),
            metrics,
            limits,
            shadows: Arc::new(Shadows::new(limits.max_shadow_in_flight, Arc::clone(&observations))),
            observations,
            credentials: Arc::new(credentials),
            tasks,
            ids: Arc::default(),
            nonces: Arc::default(),
            features: Arc::default(),
            fleet: Arc::default(),
            predictions: Arc::default(),
            notifier: Arc::default(),
            tracing: Arc::default(),
        }))
    }
}
