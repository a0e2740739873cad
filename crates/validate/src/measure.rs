//! What the binary measured, summarized: latency percentiles of timed runs, and the memory a
//! Deployment should request for a number of workers.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Timed runs of one batch size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub batch: usize,
    pub runs: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub mean_ms: f64,
    pub max_ms: f64,
}

/// The `q` quantile of sorted values by the nearest-rank method: the smallest value with at
/// least `q` of the values at or below it (so p99 of 100 runs is the 99th, not an interpolation).
pub fn nearest_rank(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

impl Latency {
    pub fn from_runs(batch: usize, runs: &[Duration]) -> Option<Latency> {
        let mut ms: Vec<f64> = runs.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        ms.sort_by(f64::total_cmp);
        Some(Latency {
            batch,
            runs: ms.len(),
            p50_ms: nearest_rank(&ms, 0.50)?,
            p99_ms: nearest_rank(&ms, 0.99)?,
            mean_ms: ms.iter().sum::<f64>() / ms.len() as f64,
            max_ms: *ms.last()?,
        })
    }
}

/// The process's resident memory at three moments: ONNX Runtime with the model loaded once
/// (`loaded`), what one more loaded session added (`per_worker`: the server gives each worker its
/// own), and the peak while running above that (`working`: a run's buffers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Memory {
    pub loaded_bytes: u64,
    pub per_worker_bytes: u64,
    pub working_bytes: u64,
}

/// What a `modelship serve` process holds beyond ONNX Runtime and its sessions (its HTTP, gRPC and
/// admin listeners, the control store, metrics, buffers): 10.0 MiB measured with the fraud model
/// and the default features, 12.4 MiB with every feature (BENCHMARKS.md, "Validate's gates"),
/// rounded up. `validate` runs no server, so it adds this.
pub const SERVER_BYTES: u64 = 16 << 20;

/// A Deployment's memory for `workers` inference workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sizing {
    pub workers: usize,
    /// The server, the model loaded `workers` times, each running at once.
    pub request_bytes: u64,
    /// The request and half again: the HTTP server's own buffers, bursts of large requests.
    pub limit_bytes: u64,
}

impl Memory {
    pub fn size(&self, workers: usize) -> Sizing {
        let workers = workers.max(1);
        let extra = workers as u64 - 1;
        let request = SERVER_BYTES + self.loaded_bytes + extra * self.per_worker_bytes + workers as u64 * self.working_bytes;
        Sizing { workers, request_bytes: request, limit_bytes: request + request.div_ceil(2) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let hundred: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!((nearest_rank(&hundred, 0.5), nearest_rank(&hundred, 0.99), nearest_rank(&hundred, 1.0)), (Some(50.0), Some(99.0), Some(100.0)));
        let ten: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!((nearest_rank(&ten, 0.5), nearest_rank(&ten, 0.99)), (Some(5.0), Some(10.0)), "p99 of 10 runs is the slowest");
        assert_eq!((nearest_rank(&[7.0], 0.0), nearest_rank(&[], 0.5)), (Some(7.0), None));
    }

    #[test]
    fn latency_of_runs_in_any_order() {
        let runs: Vec<Duration> = [3, 1, 2, 10].iter().map(|&ms| Duration::from_millis(ms)).collect();
        let l = Latency::from_runs(1, &runs).unwrap();
        assert_eq!((l.runs, l.p50_ms, l.p99_ms, l.mean_ms, l.max_ms), (4, 2.0, 10.0, 4.0, 10.0));
        assert_eq!(Latency::from_runs(1, &[]), None);
    }

    #[test]
    fn memory_for_workers() {
        let m = Memory { loaded_bytes: 100 << 20, per_worker_bytes: 10 << 20, working_bytes: 1 << 20 };
        assert_eq!(m.size(1), Sizing { workers: 1, request_bytes: (16 + 101) << 20, limit_bytes: ((16 + 101) << 20) + ((16 + 101) << 19) });
        assert_eq!(m.size(4).request_bytes, (16 + 100 + 30 + 4) << 20);
        assert_eq!(m.size(0).workers, 1);
    }
}
