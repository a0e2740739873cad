//! A fake runtime for in-process tests: the HTTP app, pool, batching, traffic writer and rollout
//! loop run exactly as in production, over a backend whose behaviour the test chooses.
//!
//! A fake model's bytes are its settings, e.g. `scale=2;run_ms=0;load_ms=0;fail=0`: one input
//! `x` (FP32 `[-1, 3]`), outputs `label` (INT64 `[-1]`) and `probabilities` (FP32 `[-1, 2]`),
//! where `p1 = sigmoid(scale * sum(row))`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use modelship_inference::{
    Backend, DataType, InferError, LoadOptions, ModelInfo, PreparedRequest, Session, Signature, Tensor, TensorData, TensorSpec,
};

use crate::metrics::Metrics;
use crate::model::{LoadedModel, ModelSpec, Served};
use crate::pool::{Opportunistic, PoolConfig};
use crate::state::AppState;

pub mod net;

#[derive(Default)]
pub struct FakeBackend {
    /// Runtime calls made, over every session.
    pub calls: Arc<AtomicUsize>,
}

#[derive(Clone, Copy)]
struct Settings {
    scale: f32,
    run: Duration,
    load: Duration,
    fail: bool,
}

fn settings(bytes: &[u8]) -> Result<Settings, InferError> {
    let text = std::str::from_utf8(bytes).map_err(|_| InferError::Load("not a fake model".to_owned()))?;
    let mut s = Settings { scale: 1.0, run: Duration::ZERO, load: Duration::ZERO, fail: false };
    for part in text.split(';').filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').ok_or_else(|| InferError::Load(format!("fake model setting '{part}'")))?;
        let n: f64 = v.parse().map_err(|_| InferError::Load(format!("fake model setting '{part}'")))?;
        match k {
            "scale" => s.scale = n as f32,
            "run_ms" => s.run = Duration::from_secs_f64(n / 1000.0),
            "load_ms" => s.load = Duration::from_secs_f64(n / 1000.0),
            "fail" => s.fail = n != 0.0,
            _ => return Err(InferError::Load(format!("unknown fake model setting '{k}'"))),
        }
    }
    Ok(s)
}

pub fn info() -> ModelInfo {
    ModelInfo {
        signature: Signature {
            inputs: vec![TensorSpec::new("x", DataType::Fp32, vec![-1, 3])],
            outputs: vec![TensorSpec::new("label", DataType::Int64, vec![-1]), TensorSpec::new("probabilities", DataType::Fp32, vec![-1, 2])],
        },
        platform: "fake".to_owned(),
        producer: None,
        opset: None,
        skipped_outputs: vec![],
        placement: Default::default(),
    }
}

struct FakeSession {
    settings: Settings,
    info: ModelInfo,
    calls: Arc<AtomicUsize>,
}

impl Backend for FakeBackend {
    fn name(&self) -> &'static str {
        "fake"
    }

    fn load(&self, model: &[u8], _: &LoadOptions) -> Result<Box<dyn Session>, InferError> {
        let settings = settings(model)?;
        std::thread::sleep(settings.load);
        Ok(Box::new(FakeSession { settings, info: info(), calls: Arc::clone(&self.calls) }))
    }
}

impl Session for FakeSession {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn run(&mut self, request: &PreparedRequest) -> Result<Vec<Tensor>, InferError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        std::thread::sleep(self.settings.run);
        if self.settings.fail {
            return Err(InferError::Runtime("the fake model was told to fail".to_owned()));
        }
        let TensorData::Fp32(x) = request.inputs[0].data() else { return Err(InferError::Runtime("x is not FP32".to_owned())) };
        let rows = request.rows();
        let (mut labels, mut probabilities) = (Vec::with_capacity(rows), Vec::with_capacity(rows * 2));
        for row in x.chunks(3) {
            let p1 = 1.0 / (1.0 + (-self.settings.scale * row.iter().sum::<f32>()).exp());
            labels.push(i64::from(p1 >= 0.5));
            probabilities.extend([1.0 - p1, p1]);
        }
        let all = [
            Tensor::new("label", vec![rows], TensorData::Int64(labels)).map_err(|e| InferError::Runtime(e.to_string()))?,
            Tensor::new("probabilities", vec![rows, 2], TensorData::Fp32(probabilities)).map_err(|e| InferError::Runtime(e.to_string()))?,
        ];
        Ok(request.outputs.iter().map(|&i| all[i].clone()).collect())
    }
}

pub fn spec(name: &str, version: &str, workers: usize, max_queue: usize) -> ModelSpec {
    ModelSpec {
        name: name.to_owned(),
        version: version.to_owned(),
        // Off: tests count the fake's runtime calls, and the probe at load would add three (the
        // pool's own tests cover joining waiting requests).
        pool: PoolConfig { opportunistic: Opportunistic::Off, ..PoolConfig::new(workers, max_queue) },
        // One request: tests count the fake's runtime calls.
        warm_up: crate::model::WarmUp { requests: 1, sample: None },
    }
}

/// Loads a fake model (blocking).
pub fn load(backend: &Arc<FakeBackend>, settings: &str, spec: &ModelSpec, metrics: &Metrics) -> Arc<LoadedModel> {
    let backend: Arc<dyn Backend> = Arc::clone(backend) as Arc<dyn Backend>;
    Arc::new(LoadedModel::load(backend, Arc::from(settings.as_bytes()), spec, metrics).expect("the fake model loads"))
}

/// An app serving one fake model `fraud` version `1`, started and ready.
pub fn app_with(state: AppState, settings: &str) -> (AppState, Arc<FakeBackend>) {
    let backend = Arc::new(FakeBackend::default());
    let model = load(&backend, settings, &spec("fraud", "1", 2, 16), &state.metrics);
    state.models.publish("fraud", Served::single(model));
    state.health.mark_started();
    (state, backend)
}
