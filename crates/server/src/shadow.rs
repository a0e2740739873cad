//! Shadow traffic: a copy of a request run by another version, off the client's path, its answer
//! compared with the one the client got and never returned.
//!
//! The copy is started after the client's answer is ready and runs on the shadow version's own
//! workers, behind its own bound: when the bound (or that version's queue) is full the copy is
//! dropped and counted, never queued. Each comparison pairs the two answers to the same request.
//!
//! While a rollout records, each copy's answer is also the shadow version's evidence
//! ([`Observations::record_shadow`]): its latency, whether it failed, and its score, so a shadow
//! step's drift and error-rate checks judge the candidate on the very requests stable answered.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use modelship_inference::{InferRequest, Tensor, TensorData};
use serde::Serialize;
use tokio::sync::Semaphore;

use crate::metrics::Metrics;
use crate::model::LoadedModel;
use crate::observe::{self, Observations};

/// Running totals of the comparisons of one shadow version against what clients got.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Agreement {
    pub compared: u64,
    /// Requests with the same labels (classifiers), or float outputs within 1e-6 (regressors).
    pub agreed: u64,
    pub dropped: u64,
    pub failed: u64,
    /// Sum over compared requests of the mean absolute difference of float outputs.
    pub abs_diff_sum: f64,
}

impl Agreement {
    pub fn rate(&self) -> Option<f64> {
        (self.compared > 0).then(|| self.agreed as f64 / self.compared as f64)
    }

    pub fn mean_abs_diff(&self) -> Option<f64> {
        (self.compared > 0).then(|| self.abs_diff_sum / self.compared as f64)
    }
}

pub struct Shadows {
    permits: Arc<Semaphore>,
    /// By (model, shadow version).
    stats: Mutex<BTreeMap<(String, String), Agreement>>,
    /// Where the copies' answers go as evidence for rollout checks.
    observations: Arc<Observations>,
}

impl Shadows {
    pub fn new(max_in_flight: usize, observations: Arc<Observations>) -> Self {
        Shadows { permits: Arc::new(Semaphore::new(max_in_flight.max(1))), stats: Mutex::default(), observations }
    }

    pub fn agreement(&self, model: &str, version: &str) -> Agreement {
        self.stats.lock().unwrap_or_else(|p| p.into_inner()).get(&(model.to_owned(), version.to_owned())).cloned().unwrap_or_default()
    }

    /// Starts the comparisons of `model` afresh (its shadow configuration changed).
    pub fn reset(&self, model: &str) {
        self.stats.lock().unwrap_or_else(|p| p.into_inner()).retain(|(m, _), _| m != model);
    }

    fn update(&self, model: &str, version: &str, f: impl FnOnce(&mut Agreement)) {
        let mut stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        f(stats.entry((model.to_owned(), version.to_owned())).or_default());
    }

    /// Whether a copy for `shadow` would be run now. When not, the drop is counted here, so the
    /// caller skips even copying the request.
    pub fn admit(&self, metrics: &Metrics, shadow: &LoadedModel) -> bool {
        if self.permits.available_permits() > 0 && !shadow.is_saturated() {
            return true;
        }
        metrics.shadow_dropped.with_label_values(&[&shadow.name, &shadow.version]).inc();
        self.update(&shadow.name, &shadow.version, |a| a.dropped += 1);
        false
    }

    /// Runs `request` on `shadow` in the background and compares its outputs with `served`;
    /// hands its answer to the prediction log when `log` says it keeps it.
    /// `link`: the request's trace and id, when the request is sampled: the copy gets a span of
    /// its own, linked to the request's.
    pub fn mirror(
        self: &Arc<Self>,
        metrics: &Arc<Metrics>,
        shadow: Arc<LoadedModel>,
        request: InferRequest,
        served: Vec<Tensor>,
        log: Option<ShadowLog>,
        link: Option<(crate::trace::ShadowTrace, String)>,
    ) {
        let labels = [shadow.name.clone(), shadow.version.clone()];
        let Ok(permit) = Arc::clone(&self.permits).try_acquire_owned() else {
            metrics.shadow_dropped.with_label_values(&labels).inc();
            self.update(&labels[0], &labels[1], |a| a.dropped += 1);
            return;
        };
        let (shadows, metrics) = (Arc::clone(self), Arc::clone(metrics));
        tokio::spawn(async move {
            let _permit = permit;
            let inputs = log.as_ref().map(|_| modelship_protocol::v2::tensors_json(&request.inputs));
            let started = Instant::now();
            let result = shadow.infer(request).await;
            let latency = started.elapsed().as_secs_f64();
            if let Some((trace, request_id)) = link {
                use opentelemetry::KeyValue;
                let attributes = vec![
                    KeyValue::new("modelship.model", shadow.name.clone()),
                    KeyValue::new("modelship.version", shadow.version.clone()),
                    KeyValue::new("modelship.role", "shadow"),
                    KeyValue::new("modelship.request_id", request_id),
                    KeyValue::new("modelship.outcome", if result.is_ok() { "answered" } else { "failed" }),
                ];
                trace.record(started, Instant::now(), attributes);
            }
            let evidence = &shadows.observations;
            if let (Some(log), Some(inputs)) = (log, inputs)
                && !matches!(result, Err(crate::error::ApiError::Overloaded { .. }))
            {
                log.keep(&shadow, inputs, &served, &result, latency);
            }
            match result {
                Ok(outputs) => {
                    let (agree, diff) = compare(&served, &outputs);
                    let result = if agree { "agree" } else { "disagree" };
                    metrics.shadow_comparisons.with_label_values(&[&labels[0], &labels[1], result]).inc();
                    metrics.shadow_abs_diff.with_label_values(&labels).observe(diff);
                    shadows.update(&labels[0], &labels[1], |a| {
                        a.compared += 1;
                        a.agreed += u64::from(agree);
                        a.abs_diff_sum += diff;
                    });
                    if evidence.is_recording(&labels[0]) {
                        evidence.record_shadow(&labels[0], &labels[1], false, latency, observe::score_of(&shadow, &outputs));
                    }
                }
                Err(crate::error::ApiError::Overloaded { .. }) => {
                    // Never run: no evidence either way.
                    metrics.shadow_dropped.with_label_values(&labels).inc();
                    shadows.update(&labels[0], &labels[1], |a| a.dropped += 1);
                }
                Err(e) => {
                    tracing::debug!(model = %labels[0], version = %labels[1], error = %e, "shadow request failed");
                    metrics.shadow_comparisons.with_label_values(&[&labels[0], &labels[1], "error"]).inc();
                    shadows.update(&labels[0], &labels[1], |a| a.failed += 1);
                    // The served version answered this very request, so the failure is the
                    // shadow version's, whatever its status would have been.
                    evidence.record_shadow(&labels[0], &labels[1], true, latency, None);
                }
            }
        });
    }
}

/// The request a shadow copy mirrors, for the prediction log: kept beside the answer its client
/// got (same request id, the served version named).
pub struct ShadowLog {
    pub log: Arc<modelship_predictions::PredictionLog>,
    pub request_id: String,
    pub revision: u64,
    pub served_version: String,
}

impl ShadowLog {
    fn keep(self, shadow: &LoadedModel, inputs: String, served: &[Tensor], result: &Result<Vec<Tensor>, crate::error::ApiError>, latency: f64) {
        let (status, outputs, error, agreed, score) = match result {
            Ok(outputs) => (200, Some(modelship_protocol::v2::tensors_json(outputs)), None, Some(compare(served, outputs).0), observe::score_of(shadow, outputs)),
            Err(e) => (i64::from(e.status_and_code().0.as_u16()), None, Some(crate::error::clip(&e.to_string(), crate::error::MAX_LOGGED_BYTES).into_owned()), None, None),
        };
        self.log.record(modelship_predictions::Prediction {
            request_id: self.request_id,
            time: modelship_predictions::now_ms(),
            model: shadow.name.clone(),
            version: shadow.version.clone(),
            revision: i64::try_from(self.revision).ok(),
            role: "shadow".to_owned(),
            status,
            latency_ms: latency * 1000.0,
            inputs: Some(inputs),
            entities: None,
            outputs,
            score,
            error,
            served_version: Some(self.served_version),
            agreed,
            replica: self.log.replica().map(str::to_owned),
        });
    }
}

/// Whether two answers agree, and the mean absolute difference of their float outputs.
///
/// When the model has label-like outputs (integers, strings, booleans: a classifier's class),
/// agreement means the same labels; scores then only feed the difference. A model with float
/// outputs only (a regressor) agrees when every value is within 1e-6.
pub fn compare(served: &[Tensor], shadow: &[Tensor]) -> (bool, f64) {
    let (mut labels_seen, mut labels_equal, mut floats_close, mut complete) = (false, true, true, true);
    let (mut diff_sum, mut diff_n) = (0.0f64, 0usize);
    for s in served {
        let Some(t) = shadow.iter().find(|t| t.name() == s.name()).filter(|t| t.shape() == s.shape()) else {
            complete = false;
            continue;
        };
        match s.data() {
            TensorData::Fp16(_) | TensorData::Fp32(_) | TensorData::Fp64(_) => {
                for i in 0..s.data().len() {
                    if let (Some(a), Some(b)) = (s.data().get_f64(i), t.data().get_f64(i)) {
                        let d = (a - b).abs();
                        diff_sum += d;
                        diff_n += 1;
                        floats_close &= d <= 1e-6;
                    }
                }
            }
            labels => {
                labels_seen = true;
                labels_equal &= labels == t.data();
            }
        }
    }
    let agree = complete && if labels_seen { labels_equal } else { floats_close };
    (agree, if diff_n == 0 { 0.0 } else { diff_sum / diff_n as f64 })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str, data: TensorData) -> Tensor {
        let n = data.len();
        Tensor::new(name, vec![n], data).unwrap()
    }

    #[test]
    fn compares_labels_exactly_and_scores_by_difference() {
        let a = [t("label", TensorData::Int64(vec![1, 0])), t("p", TensorData::Fp32(vec![0.9, 0.2]))];
        assert_eq!(compare(&a, &a), (true, 0.0));
        let other_label = [t("label", TensorData::Int64(vec![1, 1])), t("p", TensorData::Fp32(vec![0.9, 0.2]))];
        assert!(!compare(&a, &other_label).0);
        // Same classes, other scores: agreement, with the difference measured.
        let shifted = [t("label", TensorData::Int64(vec![1, 0])), t("p", TensorData::Fp32(vec![0.8, 0.3]))];
        let (agree, diff) = compare(&a, &shifted);
        assert!(agree && (diff - 0.1).abs() < 1e-6, "{diff}");
        // A regressor agrees within 1e-6 only.
        let r = [t("y", TensorData::Fp32(vec![1.0]))];
        assert!(compare(&r, &r).0);
        assert!(!compare(&r, &[t("y", TensorData::Fp32(vec![1.1]))]).0);
        assert!(!compare(&a, &a[..1]).0, "a missing output disagrees");
    }
}
