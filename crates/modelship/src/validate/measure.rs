//! Measuring on this machine: every row predicted, runs timed, the process's memory read.

use std::time::{Duration, Instant};

use anyhow::Context;
use modelship_inference::{PreparedRequest, Session};

use super::data::{Feeds, row_predictions};

/// Rows per run when predicting a whole data file with a batched model.
const CHUNK: usize = 256;

/// The prediction of every row, in order.
pub fn predict(session: &mut dyn Session, feeds: &Feeds, rows: &[Vec<String>]) -> anyhow::Result<Vec<f64>> {
    let chunk = if feeds.batched { CHUNK } else { 1 };
    let mut predictions = Vec::with_capacity(rows.len());
    for (n, part) in rows.chunks(chunk).enumerate() {
        let refs: Vec<&[String]> = part.iter().map(Vec::as_slice).collect();
        let first = n * chunk;
        let request = session.info().signature.prepare(feeds.request(&refs, first)?).with_context(|| format!("rows {}-{}", first + 1, first + part.len()))?;
        let outputs = session.run(&request).with_context(|| format!("the model failed on rows {}-{}", first + 1, first + part.len()))?;
        let output = outputs.first().context("the model returned no output")?;
        let values = row_predictions(output)?;
        anyhow::ensure!(values.len() == part.len(), "output '{}' gave {} predictions for {} rows", output.name(), values.len(), part.len());
        predictions.extend(values);
    }
    Ok(predictions)
}

/// `runs` timed runs cycling through `requests`, after `warmup` untimed ones.
pub fn time_runs(session: &mut dyn Session, requests: &[PreparedRequest], runs: usize, warmup: usize) -> anyhow::Result<Vec<Duration>> {
    anyhow::ensure!(!requests.is_empty(), "no request to time");
    for request in requests.iter().cycle().take(warmup) {
        session.run(request).context("the model failed while warming up")?;
    }
    let mut times = Vec::with_capacity(runs);
    for request in requests.iter().cycle().take(runs) {
        let started = Instant::now();
        session.run(request).context("the model failed during a timed run")?;
        times.push(started.elapsed());
    }
    Ok(times)
}

/// The process's memory, from `/proc/self` (Linux).
pub mod memory {
    fn status_kib(field: &str) -> Option<u64> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find(|l| l.starts_with(field))?;
        line[field.len()..].trim().trim_end_matches("kB").trim().parse().ok()
    }

    /// Resident memory now, in bytes.
    pub fn resident() -> Option<u64> {
        status_kib("VmRSS:").map(|k| k * 1024)
    }

    /// The most resident memory since the start, or since the last [`reset_peak`].
    pub fn peak() -> Option<u64> {
        status_kib("VmHWM:").map(|k| k * 1024)
    }

    /// Starts a new peak from the resident memory now (`5` to `clear_refs`, Linux 4.0 or
    /// newer); false when the kernel refused.
    pub fn reset_peak() -> bool {
        std::fs::write("/proc/self/clear_refs", "5").is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::memory;

    #[test]
    fn memory_grows_and_the_peak_resets() {
        let before = memory::resident().expect("Linux /proc");
        assert!(memory::reset_peak(), "clear_refs");
        let start = memory::peak().unwrap();
        let block = vec![1u8; 64 << 20];
        assert!(memory::resident().unwrap() > before + (32 << 20), "64 MiB touched shows");
        drop(std::hint::black_box(block));
        assert!(memory::peak().unwrap() >= start + (32 << 20), "the peak kept it");
    }
}
