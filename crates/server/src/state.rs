use std::sync::Arc;

use crate::health::Health;
use crate::metrics::Metrics;
use crate::model::ModelTable;
use crate::request_id::RequestIds;

/// Bounds applied to every request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_body_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_body_bytes: 16 * 1024 * 1024 }
    }
}

/// Everything a handler needs, cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub models: Arc<ModelTable>,
    pub health: Arc<Health>,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
    pub(crate) ids: Arc<RequestIds>,
}

impl AppState {
    pub fn new(limits: Limits) -> Self {
        AppState {
            models: Arc::default(),
            health: Arc::default(),
            metrics: Arc::default(),
            limits,
            ids: Arc::default(),
        }
    }
}
