//! What each version did, for rollout analysis: requests, errors, and uniform samples of
//! latencies and scores per version, drained into a window at every analysis. Recording costs
//! nothing until a rollout turns it on.
//!
//! The answers clients got are recorded by the request pipeline ([`Observations::record`]); the
//! answers a shadow version gave to mirrored copies by [`crate::shadow`]
//! ([`Observations::record_shadow`]): in a shadow step those are the candidate's evidence.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use modelship_inference::Tensor;
use modelship_rollout::check::Sample;

use crate::control::Feedback;
use crate::model::LoadedModel;

/// Predictions kept for joining with labels that arrive later (the oldest are forgotten first).
pub const REMEMBERED: usize = 100_000;

#[derive(Default)]
pub struct Observations {
    /// The models whose rollout is running: only their requests are recorded. Read without a
    /// lock on every request while any rollout runs; written when one starts or ends.
    recording: arc_swap::ArcSwap<std::collections::HashSet<String>>,
    samples: Mutex<Samples>,
    /// request id -> (model, version, score), for delayed ground truth, and the ids by age.
    predictions: Mutex<(HashMap<String, Prediction>, VecDeque<String>)>,
}

/// The samples by (model, version), and the generator that picks which values they keep
/// (seeded from the system: which requests are kept must not follow any pattern in traffic).
#[derive(Default)]
struct Samples {
    by_version: HashMap<(String, String), Sample>,
    rng: fastrand::Rng,
}

/// Which model and version answered a request, with what score, and whether a label and a
/// reward were joined to it already (each joins once: a retried post counts once).
struct Prediction {
    model: String,
    version: String,
    score: Option<f64>,
    labelled: bool,
    rewarded: bool,
}

impl Observations {
    /// Starts or stops recording `model`'s requests (while its rollout runs); stopping drops
    /// what was kept for it.
    pub fn set_recording(&self, model: &str, on: bool) {
        self.recording.rcu(|current| {
            let mut next = std::collections::HashSet::clone(current);
            if on {
                next.insert(model.to_owned());
            } else {
                next.remove(model);
            }
            next
        });
        if !on {
            self.samples.lock().unwrap_or_else(|p| p.into_inner()).by_version.retain(|(m, _), _| m != model);
        }
    }

    pub fn is_recording(&self, model: &str) -> bool {
        // No rollout running, the common case: one lock-free load and a length check.
        let recording = self.recording.load();
        !recording.is_empty() && recording.contains(model)
    }

    /// One answered request: `failed` for a server-side failure, its latency, and the model's
    /// score for it when it has one (remembered for the label or reward that may come later).
    pub fn record(&self, request_id: &str, model: &str, version: &str, failed: bool, latency: f64, score: Option<f64>) {
        if !self.is_recording(model) {
            return;
        }
        if !failed {
            let mut guard = self.predictions.lock().unwrap_or_else(|p| p.into_inner());
            let (by_id, order) = &mut *guard;
            let prediction = Prediction { model: model.to_owned(), version: version.to_owned(), score: score.filter(|s| s.is_finite()), labelled: false, rewarded: false };
            if by_id.insert(request_id.to_owned(), prediction).is_none() {
                order.push_back(request_id.to_owned());
            }
            while order.len() > REMEMBERED {
                if let Some(old) = order.pop_front() {
                    by_id.remove(&old);
                }
            }
        }
        self.add(model, version, failed, latency, score);
    }

    /// Remembers an answer kept in the prediction log before this process started, so that a
    /// label or a reward posted for it now still joins (`labelled` / `rewarded`: the log holds
    /// one for it already). An answer known here already is left as it is.
    pub fn remember(&self, request_id: &str, model: &str, version: &str, score: Option<f64>, labelled: bool, rewarded: bool) {
        let mut guard = self.predictions.lock().unwrap_or_else(|p| p.into_inner());
        let (by_id, order) = &mut *guard;
        if by_id.contains_key(request_id) {
            return;
        }
        let prediction = Prediction { model: model.to_owned(), version: version.to_owned(), score: score.filter(|s| s.is_finite()), labelled, rewarded };
        by_id.insert(request_id.to_owned(), prediction);
        order.push_back(request_id.to_owned());
        while order.len() > REMEMBERED {
            if let Some(old) = order.pop_front() {
                by_id.remove(&old);
            }
        }
    }

    /// One mirrored copy answered (or failed) by `version`: evidence for that version like a
    /// live answer, except that it is never joined with a label, since the label of a request
    /// is the label of the answer its client got.
    pub fn record_shadow(&self, model: &str, version: &str, failed: bool, latency: f64, score: Option<f64>) {
        if self.is_recording(model) {
            self.add(model, version, failed, latency, score);
        }
    }

    fn add(&self, model: &str, version: &str, failed: bool, latency: f64, score: Option<f64>) {
        let mut guard = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        let Samples { by_version, rng } = &mut *guard;
        by_version.entry((model.to_owned(), version.to_owned())).or_default().observe(failed, latency, score, rng);
    }

    /// Joins a ground-truth label to the prediction made for `request_id`; false when that
    /// prediction is unknown (too old, made while no rollout was running, never made, or with no
    /// score to judge).
    pub fn label(&self, request_id: &str, label: bool) -> bool {
        let found = {
            let mut guard = self.predictions.lock().unwrap_or_else(|p| p.into_inner());
            match guard.0.get_mut(request_id) {
                Some(p) if !p.labelled && p.score.is_some() => {
                    p.labelled = true;
                    Some((p.model.clone(), p.version.clone(), p.score.unwrap_or_default()))
                }
                Some(p) if p.labelled => return true,
                _ => None,
            }
        };
        let Some((model, version, score)) = found else { return false };
        let mut guard = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        let Samples { by_version, rng } = &mut *guard;
        by_version.entry((model, version)).or_default().label(score, label, rng);
        true
    }

    /// Joins one piece of feedback, a label ([`Observations::label`]) or a reward
    /// ([`Observations::reward`]), to the answer given to `request_id`; false when that answer is
    /// unknown here.
    pub fn join(&self, request_id: &str, feedback: Feedback) -> bool {
        match feedback {
            Feedback::Label(label) => self.label(request_id, label),
            Feedback::Reward(value) => self.reward(request_id, value),
        }
    }

    /// Joins a business reward (a conversion as 0 or 1, revenue) to the answer given to
    /// `request_id`; false when that answer is unknown (as for [`Observations::label`]). A second
    /// reward for the same answer is taken as already joined and counts once.
    pub fn reward(&self, request_id: &str, value: f64) -> bool {
        let found = {
            let mut guard = self.predictions.lock().unwrap_or_else(|p| p.into_inner());
            match guard.0.get_mut(request_id) {
                Some(p) if !p.rewarded => {
                    p.rewarded = true;
                    Some((p.model.clone(), p.version.clone()))
                }
                Some(_) => return true,
                None => None,
            }
        };
        let Some(key) = found else { return false };
        self.samples.lock().unwrap_or_else(|p| p.into_inner()).by_version.entry(key).or_default().reward(value);
        true
    }

    /// Takes what `version` of `model` did since the last call.
    pub fn drain(&self, model: &str, version: &str) -> Sample {
        let mut guard = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        guard.by_version.remove(&(model.to_owned(), version.to_owned())).unwrap_or_default()
    }
}

/// The score a rollout watches for drift: the first value of the model's prediction output
/// (for a binary classifier, the probability of class 1 of the first row).
pub(crate) fn score_of(model: &LoadedModel, outputs: &[Tensor]) -> Option<f64> {
    let index = modelship_protocol::v1::prediction_output(&model.info.signature)?;
    let name = &model.info.signature.outputs[index].name;
    let tensor = outputs.iter().find(|t| t.name() == name)?;
    // The first row's value as `/v1/predict` answers it (the last column of a [N, K] output:
    // a classifier's positive class), read in place: this runs on every answered request.
    let i = match tensor.shape() {
        [_, k] if *k != 1 => k.checked_sub(1)?,
        _ => 0,
    };
    match tensor.data() {
        // f32's shortest representation, as V2 prints it, not the widened digits.
        modelship_inference::TensorData::Fp32(v) => v.get(i).and_then(|x| x.to_string().parse::<f64>().ok()),
        modelship_inference::TensorData::Bytes(_) | modelship_inference::TensorData::Bool(_) => None,
        other => other.get_f64(i),
    }
    .filter(|v| v.is_finite())
}

#[cfg(test)]
mod tests {
    use super::*;
    use modelship_rollout::check::MAX_SAMPLES;

    #[test]
    fn a_long_window_is_sampled_uniformly() {
        // Latencies that grow through the window (a slow leak, a warming cache): the sample must
        // see the whole window, not its first minutes.
        const N: u32 = 200_000;
        let o = Observations::default();
        o.set_recording("m", true);
        for i in 0..N {
            let x = f64::from(i) / f64::from(N);
            o.record(&i.to_string(), "m", "1", false, x, Some(x));
        }
        let s = o.drain("m", "1");
        assert_eq!((s.requests, s.latencies.seen(), s.latencies.values().len(), s.scores.seen()), (200_000, 200_000, MAX_SAMPLES, 200_000));
        let grid: Vec<f64> = (0..10_000).map(|i| f64::from(i) / 10_000.0).collect();
        for values in [s.latencies.values(), s.scores.values()] {
            let mean = values.iter().sum::<f64>() / values.len() as f64;
            let (_, p) = modelship_rollout::stats::ks(values, &grid).unwrap();
            assert!((mean - 0.5).abs() < 0.015 && p > 0.001, "mean {mean}, KS p = {p}");
        }
        assert_eq!(o.drain("m", "1"), Sample::default(), "drained");
    }

    #[test]
    fn shadow_answers_are_evidence_but_never_labelled() {
        let o = Observations::default();
        o.record_shadow("m", "2", false, 0.01, Some(0.3));
        assert_eq!(o.drain("m", "2"), Sample::default(), "nothing is recorded while no rollout runs");
        o.set_recording("m", true);
        o.record("req-1", "m", "1", false, 0.01, Some(0.9));
        o.record_shadow("m", "2", false, 0.02, Some(0.3));
        o.record_shadow("m", "2", true, 0.03, None);
        // The label joins the answer the client got (version 1), not the shadow's.
        assert!(o.label("req-1", true));
        let (stable, shadow) = (o.drain("m", "1"), o.drain("m", "2"));
        assert_eq!((stable.requests, stable.labelled.values()), (1, &[(0.9, true)][..]));
        assert_eq!((shadow.requests, shadow.errors, shadow.scores.values(), shadow.labelled.seen()), (2, 1, &[0.3][..], 0));
        assert_eq!(shadow.latencies.values(), [0.02, 0.03]);
    }

    #[test]
    fn a_reward_joins_the_answer_once_and_a_label_needs_a_score() {
        let o = Observations::default();
        o.set_recording("m", true);
        o.record("a", "m", "1", false, 0.01, Some(0.9));
        o.record("b", "m", "2", false, 0.01, None);
        o.record("c", "m", "2", true, 0.01, None);
        assert!(o.reward("a", 1.0) && o.reward("b", 0.0) && o.reward("b", 1.0), "a second reward counts as joined");
        assert!(!o.reward("c", 1.0), "a failed request got no answer to reward");
        assert!(!o.label("b", true), "no score to judge");
        assert!(o.label("a", true) && o.label("a", false));
        let (one, two) = (o.drain("m", "1"), o.drain("m", "2"));
        assert_eq!((one.sums.reward.n, one.sums.reward.sum, one.labelled.seen(), one.sums.correct.n), (1, 1.0, 1, 1));
        assert_eq!((two.sums.reward.n, two.sums.reward.sum), (1, 0.0));
    }
}
