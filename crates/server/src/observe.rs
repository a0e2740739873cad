//! What each version did, for rollout analysis: requests, errors, a latency sample and a score
//! sample per version, drained into a window at every analysis. Recording costs nothing until a
//! rollout turns it on.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use modelship_rollout::check::{MAX_SAMPLES, Sample};

/// Predictions kept for joining with labels that arrive later (the oldest are forgotten first).
const REMEMBERED: usize = 100_000;

#[derive(Default)]
pub struct Observations {
    on: AtomicBool,
    samples: Mutex<HashMap<(String, String), Sample>>,
    /// request id -> (model, version, score), for delayed ground truth, and the ids by age.
    predictions: Mutex<(HashMap<String, Prediction>, VecDeque<String>)>,
}

/// Which model and version answered a request, and with what score.
type Prediction = (String, String, f64);

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
    pub fn record(&self, request_id: &str, model: &str, version: &str, failed: bool, latency: f64, score: Option<f64>) {
        if !self.is_recording() {
            return;
        }
        if let Some(score) = score.filter(|s| s.is_finite()) {
            let mut guard = self.predictions.lock().unwrap_or_else(|p| p.into_inner());
            let (by_id, order) = &mut *guard;
            if by_id.insert(request_id.to_owned(), (model.to_owned(), version.to_owned(), score)).is_none() {
                order.push_back(request_id.to_owned());
            }
            while order.len() > REMEMBERED {
                if let Some(old) = order.pop_front() {
                    by_id.remove(&old);
                }
            }
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

    /// Joins a ground-truth label to the prediction made for `request_id`; false when that
    /// prediction is unknown (too old, made while no rollout was running, or never made).
    pub fn label(&self, request_id: &str, label: bool) -> bool {
        let found = self.predictions.lock().unwrap_or_else(|p| p.into_inner()).0.remove(request_id);
        let Some((model, version, score)) = found else { return false };
        let mut samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        let s = samples.entry((model, version)).or_default();
        if s.labelled.len() < MAX_SAMPLES {
            s.labelled.push((score, label));
        }
        true
    }

    /// Takes what `version` of `model` did since the last call.
    pub fn drain(&self, model: &str, version: &str) -> Sample {
        self.samples.lock().unwrap_or_else(|p| p.into_inner()).remove(&(model.to_owned(), version.to_owned())).unwrap_or_default()
    }
}
