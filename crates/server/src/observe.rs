//! What each version did, for rollout analysis: requests, errors, a latency sample and a score
//! sample per version, drained into a window at every analysis. Recording costs nothing until a
//! rollout turns it on.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use modelship_rollout::check::{MAX_SAMPLES, Sample};

#[derive(Default)]
pub struct Observations {
    on: AtomicBool,
    samples: Mutex<HashMap<(String, String), Sample>>,
}

impl Observations {
    pub fn set_recording(&self, on: bool) {
        self.on.store(on, Ordering::Relaxed);
        if !on {
            self.samples.lock().unwrap_or_else(|p| p.into_inner()).clear();
        }
    }

    pub fn is_recording(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    /// One answered request: `failed` for a server-side failure, its latency, and the model's
    /// score for it when it has one.
    pub fn record(&self, model: &str, version: &str, failed: bool, latency: f64, score: Option<f64>) {
        if !self.is_recording() {
            return;
        }
        let mut samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        let s = samples.entry((model.to_owned(), version.to_owned())).or_default();
        s.requests += 1;
        s.errors += u64::from(failed);
        if s.latencies.len() < MAX_SAMPLES {
            s.latencies.push(latency);
        }
        if let Some(score) = score.filter(|s| s.is_finite())
            && s.scores.len() < MAX_SAMPLES
        {
            s.scores.push(score);
        }
    }

    /// Takes what `version` of `model` did since the last call.
    pub fn drain(&self, model: &str, version: &str) -> Sample {
        self.samples.lock().unwrap_or_else(|p| p.into_inner()).remove(&(model.to_owned(), version.to_owned())).unwrap_or_default()
    }
}
