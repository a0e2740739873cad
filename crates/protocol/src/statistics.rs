//! The statistics extension (`GET /v2/models[/{m}[/versions/{v}]]/stats`, gRPC
//! `ModelStatistics`): cumulative counts and nanoseconds per model version, in Triton's shape.
//! perf_analyzer reads it between its measurement windows.

use serde::Serialize;

/// A count and the nanoseconds they took in total.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct StatisticDuration {
    pub count: u64,
    pub ns: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct InferStatistics {
    pub success: StatisticDuration,
    pub fail: StatisticDuration,
    pub queue: StatisticDuration,
    pub compute_input: StatisticDuration,
    pub compute_infer: StatisticDuration,
    pub compute_output: StatisticDuration,
    pub cache_hit: StatisticDuration,
    pub cache_miss: StatisticDuration,
}

/// Runtime calls of one batch size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BatchStatistics {
    pub batch_size: u64,
    pub compute_input: StatisticDuration,
    pub compute_infer: StatisticDuration,
    pub compute_output: StatisticDuration,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModelStatistics {
    pub name: String,
    /// An integer, as Triton's versions are (perf_analyzer parses it as one).
    pub version: String,
    /// Milliseconds since the Unix epoch of the last inference; 0 before any.
    pub last_inference: u64,
    /// Rows inferred.
    pub inference_count: u64,
    /// Runtime calls (a formed batch counts once).
    pub execution_count: u64,
    pub inference_stats: InferStatistics,
    pub batch_stats: Vec<BatchStatistics>,
}

/// `{"model_stats": [...]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatisticsResponse {
    pub model_stats: Vec<ModelStatistics>,
}
